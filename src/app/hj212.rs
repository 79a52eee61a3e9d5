//! Start-up and supervision of a `type = "hj212"` uplink: the HJ 212 TCP client to the
//! regulator's platform, reading its spool and answering history requests from the history store.
//!
//! The uplink's own counters ([`TcpStats`]) are mapped onto the [`UplinkStatus`] the status
//! displays show for every uplink: connected after a connection was made, disconnected with the
//! reason after a link error, `failed` while the task is down.
//!
//! # Supervision
//! The client ends on its own only when its spool fails. A regulator's feed must not stop for
//! good on one SQLite error, so the task is supervised: after an error the status turns
//! `failed` (which `/readyz` reports and `/metrics` shows as `smeltwatch_uplink_state`), an
//! `uplink_failed` event is raised, and the client is started again after a backoff
//! (`reconnect_min` doubling to `reconnect_max`, reset by a run that delivered something). A
//! panic is handled the same way with a freshly built client that continues the same counters.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::completeness::Completeness;
use crate::config::{Config, Hj212Config, UplinkConfig};
use crate::model::{Event, EventPhase, Record, Timestamp, Value};
use crate::publish::hj212_tcp::{HistorySource, Hj212TcpConfig, Hj212TcpUplink, TcpStats};
use crate::publish::mqtt::{LinkState, UplinkStatus};
use crate::spool::SpoolHandle;

/// What the HJ 212 uplink reports to the rest of the agent.
pub(super) struct Wiring {
    /// The fan-out's side entrance for events.
    pub(super) events: mpsc::Sender<Record>,
    /// Values delivered per uplink.
    pub(super) completeness: Arc<Completeness>,
    /// The MN of each subject with its own monitoring point ([`mn_by_subject`]).
    pub(super) mn_by_subject: HashMap<String, String>,
}

/// The MN each subject's data goes out under: `mn_by_stack` names stacks, whose windows carry
/// the stack's name, while live data (2011) carries the name of the CEMS device that measured
/// it. Each device a `[[calc.stacks]]` entry reads (its `device` glob) therefore takes its
/// stack's MN too; without that, a stack's real-time data would be reported under the site's
/// MN, as another monitoring point's. A key that names a device directly keeps working.
pub(super) fn mn_by_subject(h: &Hj212Config, cfg: &Config) -> HashMap<String, String> {
    let mut map: HashMap<String, String> = h.mn_by_stack.iter().cloned().collect();
    let stacks = cfg.calc.iter().flat_map(|c| c.stacks.iter());
    for stack in stacks {
        let Some(mn) = h.mn_by_stack.iter().find(|(s, _)| *s == stack.name) else {
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
            .with_completeness(wiring.completeness.clone());
        if let Some(h) = &history {
            client = client.with_history(h.clone());
        }
        client
    };
    let client = build();
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
        dead_letters: 0,
        commands_dropped_total: 0,
        unconfirmed_total: 0,
    });
    let status_tx = Arc::new(status_tx);
    tracker.spawn(follow_stats(stats, status_tx.clone()));
    let backoff = (cfg.reconnect_min, cfg.reconnect_max);
    let name = uplink.name.clone();
    let shared = client.stats_sender();
    // The client between attempts: taken by an attempt, put back when it ends without a panic.
    let slot = Arc::new(std::sync::Mutex::new(Some(client)));
    let attempt = move |stop: CancellationToken| {
        let taken = slot.lock().map(|mut s| s.take()).unwrap_or(None);
        let mut c = taken.unwrap_or_else(|| build().with_stats(shared.clone()));
        let slot = slot.clone();
        async move {
            let sent = |s: &TcpStats| s.delivered + s.unconfirmed;
            let before = sent(&c.stats().borrow());
            // A task of its own, so that a panic ends this attempt only.
            let run = tokio::spawn(async move {
                let r = c.run_once(&stop).await;
                (c, r)
            });
            match run.await {
                Ok((c, r)) => {
                    let progressed = sent(&c.stats().borrow()) > before;
                    if let Ok(mut s) = slot.lock() {
                        *s = Some(c);
                    }
                    (r.map_err(|e| e.to_string()), progressed)
                }
                Err(e) => (Err(format!("panicked: {e}")), false),
            }
        }
    };
    tracker.spawn(supervise(
        name,
        attempt,
        status_tx,
        wiring.events,
        backoff,
        stop,
    ));
    status_rx
}

/// Run `attempt` until it ends without an error or `stop` is cancelled; after an error mark the
/// status `failed`, raise `uplink_failed` and start again after the backoff (see the module
/// documentation). `attempt` returns the outcome and whether the run delivered anything.
async fn supervise<F, Fut>(
    name: String,
    mut attempt: F,
    status: Arc<watch::Sender<UplinkStatus>>,
    events: mpsc::Sender<Record>,
    (min, max): (Duration, Duration),
    stop: CancellationToken,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = (Result<(), String>, bool)>,
{
    let mut backoff = min;
    let mut failures: u64 = 0;
    loop {
        let (outcome, progressed) = attempt(stop.clone()).await;
        let why = match outcome {
            Ok(()) => return,
            Err(_) if stop.is_cancelled() => return,
            Err(why) => why,
        };
        if progressed {
            backoff = min;
        }
        failures += 1;
        tracing::error!(uplink = %name, restart_in = ?backoff, "HJ 212 uplink failed: {why}");
        let reason = format!(
            "{why}; restart {failures} in {}",
            humantime::format_duration(backoff)
        );
        status.send_modify(|s| {
            s.state = LinkState::Failed(reason.clone());
            s.last_error = Some(why.clone());
        });
        let event = Record::Event(Event {
            kind: Arc::from("uplink_failed"),
            subject: Arc::from(name.as_str()),
            phase: EventPhase::Instant,
            ts: Timestamp::now(),
            attributes: vec![
                (Arc::from("failures"), Value::UInt(failures)),
                (
                    Arc::from("restart_in_ms"),
                    Value::UInt(u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX)),
                ),
            ],
            message: format!("uplink {name} failed ({why}); restarting"),
        });
        if events.try_send(event).is_err() {
            tracing::warn!(uplink = %name, "event channel full or closed; uplink_failed not recorded");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(max);
        status.send_modify(|s| s.state = LinkState::Connecting);
    }
}

/// Mirror the TCP uplink's counters into an [`UplinkStatus`] until the uplink ends.
async fn follow_stats(
    mut stats: watch::Receiver<TcpStats>,
    status: Arc<watch::Sender<UplinkStatus>>,
) {
    let mut seen = TcpStats::default();
    loop {
        let now = stats.borrow_and_update().clone();
        status.send_modify(|s| {
            if now.connects > seen.connects {
                s.state = LinkState::Connected;
            }
            if now.last_error != seen.last_error
                && now.parked == seen.parked
                && let Some(e) = &now.last_error
            {
                s.state = LinkState::Disconnected(e.clone());
            }
            s.connects = now.connects;
            s.acked_total = now.delivered + now.skipped;
            s.unconfirmed_total = now.unconfirmed;
            s.rejected_total = now.encode_failed;
            s.last_error.clone_from(&now.last_error);
        });
        seen = now;
        if stats.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failing_task_is_restarted_with_a_doubling_backoff_and_shows_failed() {
        let (status_tx, mut status) = watch::channel(UplinkStatus {
            state: LinkState::Connected,
            in_flight: 0,
            acked_total: 0,
            rejected_total: 0,
            connects: 1,
            last_error: None,
            backlog_records: 0,
            backlog_oldest: None,
            replay_rate_per_s: 0,
            dead_letters: 0,
            commands_dropped_total: 0,
            unconfirmed_total: 0,
        });
        let (events_tx, mut events) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let (runs_tx, mut runs) = mpsc::unbounded_channel();
        let mut n = 0;
        let attempt = move |_stop: CancellationToken| {
            n += 1;
            let _ = runs_tx.send(started.elapsed());
            let outcome = if n < 4 {
                Err("spool: disk full".to_owned())
            } else {
                Ok(())
            };
            async move { (outcome, false) }
        };
        let task = tokio::spawn(supervise(
            "province".into(),
            attempt,
            Arc::new(status_tx),
            events_tx,
            (Duration::from_secs(1), Duration::from_secs(3)),
            stop.clone(),
        ));
        // The first failure shows at once.
        let first = status
            .wait_for(|s| matches!(s.state, LinkState::Failed(_)))
            .await
            .unwrap()
            .clone();
        let LinkState::Failed(reason) = &first.state else {
            unreachable!()
        };
        assert!(
            reason.contains("disk full") && reason.contains("restart 1"),
            "{reason}"
        );
        task.await.unwrap();
        let mut at = Vec::new();
        while let Ok(t) = runs.try_recv() {
            at.push(t.as_secs());
        }
        // Runs at 0, then after 1 s, 2 s and 3 s (capped).
        assert_eq!(at, vec![0, 1, 3, 6]);
        let mut kinds = Vec::new();
        while let Ok(Record::Event(e)) = events.try_recv() {
            kinds.push((e.kind.to_string(), e.subject.to_string()));
        }
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        assert!(
            kinds
                .iter()
                .all(|(k, s)| k == "uplink_failed" && s == "province")
        );
    }
}
