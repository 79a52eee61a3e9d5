//! Start-up of a `type = "hj212"` uplink: the HJ 212 TCP client to the regulator's platform,
//! reading its spool and answering history requests from the history store.
//!
//! The uplink's own counters ([`TcpStats`]) are mapped onto the [`UplinkStatus`] the status
//! displays show for every uplink: connected after a connection was made, disconnected with the
//! reason after a link error.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Hj212Config, UplinkConfig};
use crate::publish::hj212_tcp::{HistorySource, Hj212TcpConfig, Hj212TcpUplink, TcpStats};
use crate::publish::mqtt::{LinkState, UplinkStatus};
use crate::spool::SpoolHandle;

/// Spawn the HJ 212 TCP uplink of `uplink` on `tracker`; returns its status for the displays.
pub(super) fn start(
    uplink: &UplinkConfig,
    cfg: &Hj212Config,
    spool: SpoolHandle,
    history: Option<Arc<dyn HistorySource>>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> watch::Receiver<UplinkStatus> {
    let mut tcp = Hj212TcpConfig::new(cfg.platform.to_string(), cfg.station.clone());
    tcp.mn_by_subject = cfg.mn_by_stack.iter().cloned().collect();
    tcp.over_time = cfg.over_time;
    tcp.re_count = cfg.re_count;
    tcp.reconnect_min = cfg.reconnect_min;
    tcp.reconnect_max = cfg.reconnect_max;
    let mut client = Hj212TcpUplink::new(tcp, cfg.table.clone(), spool);
    match history {
        Some(h) => client = client.with_history(h),
        None => tracing::warn!(
            uplink = %uplink.name,
            "HJ 212 uplink without a history store (no [calc]): history requests are refused"
        ),
    }
    let stats = client.stats();
    let (status_tx, status_rx) = watch::channel(UplinkStatus {
        state: LinkState::Connecting,
        in_flight: 0,
        acked_total: 0,
        rejected_total: 0,
        connects: 0,
        last_error: None,
        backlog_records: 0,
        backlog_oldest: None,
        replay_rate_per_s: 0,
    });
    tracker.spawn(follow_stats(stats, status_tx));
    let name = uplink.name.clone();
    tracker.spawn(async move {
        if let Err(e) = client.run(stop).await {
            tracing::error!(uplink = %name, "HJ 212 uplink stopped: {e}");
        }
    });
    status_rx
}

/// Mirror the TCP uplink's counters into an [`UplinkStatus`] until the uplink ends.
async fn follow_stats(mut stats: watch::Receiver<TcpStats>, status: watch::Sender<UplinkStatus>) {
    let mut seen = TcpStats::default();
    loop {
        let now = stats.borrow_and_update().clone();
        status.send_modify(|s| {
            if now.connects > seen.connects {
                s.state = LinkState::Connected;
            }
            if now.last_error != seen.last_error
                && let Some(e) = &now.last_error
            {
                s.state = LinkState::Disconnected(e.clone());
            }
            s.connects = now.connects;
            s.acked_total = now.delivered + now.skipped;
            s.last_error.clone_from(&now.last_error);
        });
        seen = now;
        if stats.changed().await.is_err() {
            return;
        }
    }
}
