//! Start-up and supervision of a `type = "hj212"` uplink: the HJ 212 TCP client to the
//! regulator's platform, reading its spool and answering history requests from the history store.
//!
//! The uplink reports the [`UplinkStatus`] the status displays show for every uplink itself
//! ([`Hj212TcpUplink::status`]); its supervisor marks it `failed` while the task is down.
//!
//! # Supervision
//! The client ends on its own only when its spool fails; it runs under [`super::supervise`] like
//! every uplink (a run that delivered something resets the backoff). A panic is handled the same
//! way with a freshly built client that continues the same counters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::completeness::Completeness;
use crate::config::{Config, Hj212Config, UplinkConfig};
use crate::history::HistorySource;
use crate::model::Record;
use crate::spool::SpoolHandle;
use crate::uplink::UplinkStatus;
use crate::uplink::hj212::{Hj212TcpConfig, Hj212TcpUplink, TcpStats};

use super::supervise::{self, Failure, Supervised};

/// What the HJ 212 uplink reports to the rest of the agent.
pub(super) struct Wiring {
    /// The fan-out's side entrance for events.
    pub(super) events: mpsc::Sender<Record>,
    /// Values delivered per uplink.
    pub(super) completeness: Arc<Completeness>,
    /// How long the packet on the wire may wait for its 9014 after the stop.
    pub(super) grace: Duration,
    /// The MN of each subject with its own monitoring point ([`mn_by_subject`]).
    pub(super) mn_by_subject: HashMap<String, String>,
    /// Acquisition to the platform's 9014 of each delivered record.
    pub(super) publish_latency: Arc<crate::histogram::Histogram>,
}

/// The MN each subject's data goes out under: `mn_by_stack` names stacks, whose windows carry
/// the stack's name, while live data (2011) carries the name of the CEMS device that measured
/// it. Each device a `[[calc.stacks]]` entry reads (its `device` glob) therefore takes its
/// stack's MN too; without that, a stack's real-time data would be reported under the site's
/// MN, as another monitoring point's. A key that names a device directly keeps working.
pub(super) fn mn_by_subject(
    mn_by_stack: &[(String, String)],
    cfg: &Config,
) -> HashMap<String, String> {
    let mut map: HashMap<String, String> = mn_by_stack.iter().cloned().collect();
    let stacks = cfg.calc.iter().flat_map(|c| c.stacks.iter());
    for stack in stacks {
        let Some(mn) = mn_by_stack.iter().find(|(s, _)| *s == stack.name) else {
            continue;
        };
        for source in &cfg.sources {
            for device in &source.devices {
                let full = format!("{}/{}", source.name, device.name);
                if crate::calc::glob_match(&stack.device, &full)
                    || crate::calc::glob_match(&stack.device, &device.name)
                {
                    map.entry(device.name.to_string())
                        .or_insert_with(|| mn.1.clone());
                }
            }
        }
    }
    map
}

/// Spawn the HJ 212 TCP uplink of `uplink` on `tracker`; returns its status for the displays.
pub(super) fn start(
    uplink: &UplinkConfig,
    cfg: &Hj212Config,
    spool: SpoolHandle,
    history: Option<Arc<dyn HistorySource>>,
    wiring: Wiring,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> watch::Receiver<UplinkStatus> {
    let mut tcp = Hj212TcpConfig::new(cfg.platform.to_string(), cfg.station.clone());
    tcp.mn_by_subject = wiring.mn_by_subject.clone();
    tcp.over_time = cfg.over_time;
    tcp.re_count = cfg.re_count;
    tcp.reconnect_min = cfg.reconnect_min;
    tcp.reconnect_max = cfg.reconnect_max;
    tcp.max_wait = cfg.max_wait;
    tcp.name = uplink.name.clone();
    tcp.shutdown_grace = wiring.grace;
    if history.is_none() {
        tracing::warn!(
            uplink = %uplink.name,
            "HJ 212 uplink without a history store (no [calc]): history requests are refused"
        );
    }
    let table = cfg.table.clone();
    let events = wiring.events.clone();
    let build = move || {
        let mut client = Hj212TcpUplink::new(tcp.clone(), table.clone(), spool.clone())
            .with_events(events.clone())
            .with_completeness(wiring.completeness.clone())
            .with_publish_latency(wiring.publish_latency.clone());
        if let Some(h) = &history {
            client = client.with_history(h.clone());
        }
        client
    };
    let client = build();
    let status_rx = client.status();
    let status_tx = client.status_sender();
    let backoff = (cfg.reconnect_min, cfg.reconnect_max);
    let name = uplink.name.clone();
    let shared = client.stats_sender();
    let shared_status = status_tx.clone();
    // The client between attempts: taken by an attempt, put back when it ends without a panic.
    let slot = Arc::new(std::sync::Mutex::new(Some(client)));
    let attempt = move |stop: CancellationToken| {
        let taken = slot.lock().map(|mut s| s.take()).unwrap_or(None);
        let mut c = taken.unwrap_or_else(|| {
            build()
                .with_stats(shared.clone())
                .with_status(shared_status.clone())
        });
        let slot = slot.clone();
        async move {
            let sent = |s: &TcpStats| s.delivered + s.unconfirmed;
            let before = sent(&c.stats().borrow());
            let run = supervise::contain(async move {
                let r = c.run_once(&stop).await;
                (c, r)
            });
            match run.await {
                Ok((c, r)) => {
                    let progressed = sent(&c.stats().borrow()) > before;
                    if let Ok(mut s) = slot.lock() {
                        *s = Some(c);
                    }
                    (r.map_err(Failure::Failed), progressed)
                }
                Err(panicked) => (Err(panicked), false),
            }
        }
    };
    let who = Supervised {
        name,
        kind: "HJ 212",
        status: status_tx,
        events: wiring.events,
        backoff,
    };
    tracker.spawn(supervise::supervise(who, attempt, stop));
    status_rx
}
