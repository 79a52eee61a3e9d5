//! Start-up of a `type = "sparkplug"` uplink: the edge node over its own spool, with DCMD writes
//! going to the sources' pollers and write events to the fan-out.
//!
//! The uplink reports the [`UplinkStatus`] every uplink reports itself
//! ([`SparkplugUplink::uplink_status`]). It runs under [`super::supervise`] like every uplink (a
//! run that acked spool records resets the backoff).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::sparkplug::{EdgeNodeModel, node_metrics};
use crate::completeness::Completeness;
use crate::config::{Config, SparkplugConfig, Stream, UplinkConfig};
use crate::modbus::write::DeviceWriters;
use crate::model::Record;
use crate::spool::SpoolHandle;
use crate::uplink::UplinkStatus;
use crate::uplink::sparkplug::{DeviceWriteGate, SparkplugSettings, SparkplugUplink};

use super::supervise::{self, Failure, Supervised};

/// What the Sparkplug uplink needs from the rest of the agent.
pub(crate) struct Wiring<'a> {
    /// Every device's source write queue.
    pub(crate) writers: &'a DeviceWriters,
    /// The fan-out's side entrance for events.
    pub(crate) events: &'a mpsc::Sender<Record>,
    /// Spawns the uplink so that shutdown waits for it.
    pub(crate) tracker: &'a TaskTracker,
    /// Cancelled when the uplinks are to stop.
    pub(crate) stop: &'a CancellationToken,
    /// How long the NDEATH, DISCONNECT and queued device writes may take after the stop.
    pub(crate) grace: Duration,
    /// Where the values the uplink delivered are counted.
    pub(crate) completeness: &'a Arc<Completeness>,
    /// Acquisition to the proof of delivery of each reading batch.
    pub(crate) publish_latency: &'a Arc<crate::histogram::Histogram>,
}

/// The Sparkplug identity of the uplink.
fn ids(spb: &SparkplugConfig) -> SparkplugSettings {
    SparkplugSettings {
        group_id: spb.group_id.clone(),
        edge_node_id: spb.edge_node_id.clone(),
        primary_host_id: spb.primary_host_id.clone(),
    }
}

/// What the edge node declares: the devices (configured and `live` derived) when the uplink
/// carries the `live` stream, the node metrics when it carries `metrics`; nothing it would never
/// send data for.
fn model(cfg: &Config, uplink: &UplinkConfig) -> EdgeNodeModel {
    let mut model = EdgeNodeModel::default();
    if uplink.streams.contains(&Stream::Live) {
        model = EdgeNodeModel::from_sources(&cfg.sources).with_derived(&cfg.derived);
    }
    if uplink.streams.contains(&Stream::Metrics) {
        model = model.with_node_metrics(node_metrics(&cfg.derived, cfg.calc.as_ref()));
    }
    model
}

/// What [`start`] can refuse, checked without a spool (see [`super::preflight`]).
pub(crate) fn preflight(uplink: &UplinkConfig, spb: &SparkplugConfig) -> anyhow::Result<()> {
    SparkplugUplink::preflight(&uplink.name, &spb.mqtt, &ids(spb))
        .with_context(|| format!("uplink {:?}", uplink.name))
}

/// Build and spawn the uplink; returns its status as the displays know it.
pub(crate) fn start(
    cfg: &Config,
    uplink: &UplinkConfig,
    spb: &SparkplugConfig,
    spool: SpoolHandle,
    wiring: Wiring<'_>,
) -> anyhow::Result<watch::Receiver<UplinkStatus>> {
    let ids = ids(spb);
    let edge = SparkplugUplink::new(&uplink.name, &spb.mqtt, ids, model(cfg, uplink), spool)
        .with_context(|| format!("uplink {:?}", uplink.name))?
        .with_device_writes(DeviceWriteGate {
            enabled: spb.device_writes,
            max_command_age: spb.max_command_age,
            writers: wiring.writers.clone(),
            events: wiring.events.clone(),
        })
        .with_completeness(wiring.completeness.clone())
        .with_publish_latency(wiring.publish_latency.clone())
        .with_shutdown_grace(wiring.grace);
    tracing::info!(
        uplink = %uplink.name,
        broker = %spb.mqtt.broker,
        group_id = %spb.group_id,
        edge_node_id = %spb.edge_node_id,
        primary_host = spb.primary_host_id.as_deref().unwrap_or("-"),
        device_writes = spb.device_writes,
        "Sparkplug uplink ready"
    );
    let status = edge.uplink_status();
    let status_tx = edge.status_sender();
    let edge = Arc::new(edge);
    let attempt = move |stop: CancellationToken| {
        let edge = edge.clone();
        async move {
            let acked = edge.status().borrow().acked_total;
            let run = supervise::contain({
                let edge = edge.clone();
                async move { edge.run_once(&stop).await }
            })
            .await;
            let progressed = edge.status().borrow().acked_total > acked;
            (run.and_then(|r| r.map_err(Failure::Failed)), progressed)
        }
    };
    let who = Supervised {
        name: uplink.name.clone(),
        kind: "Sparkplug",
        status: status_tx,
        events: wiring.events.clone(),
        backoff: (spb.mqtt.reconnect_min, spb.mqtt.reconnect_max),
    };
    wiring
        .tracker
        .spawn(supervise::supervise(who, attempt, wiring.stop.clone()));
    Ok(status)
}
