//! Supervision of the uplink tasks, the same for every uplink kind (MQTT, Sparkplug, HJ 212).
//!
//! An uplink task ends on its own only on a fault it cannot ride out by reconnecting (its spool
//! closed or failing under it), or when it panics. A plant's feed must not stop for good on one
//! such fault while its status still shows the last connection state, so every uplink runs under
//! [`supervise`]:
//! - after an error (or a panic, turned into one by [`contain`]) the status turns
//!   [`LinkState::Failed`] with the error and the next restart (which `/readyz` reports as not
//!   ready and `/metrics` shows as `smeltwatch_uplink_state{state="failed"}`), its `restarts`
//!   counter grows (`smeltwatch_uplink_restarts_total`), an `uplink_failed` event is raised and an
//!   error line logged;
//! - the task is started again after a backoff: `reconnect_min` doubling to `reconnect_max`, back
//!   to `reconnect_min` after a run that made progress (the attempt says so) or lasted
//!   [`STABLE_RUN`];
//! - cancellation stops it: an attempt that ends after the stop token fired is not restarted,
//!   whatever its outcome, and the backoff wait ends at once.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

use crate::model::{Event, EventKind, EventPhase, Record, Timestamp, Value};
use crate::uplink::backoff::Backoff;
use crate::uplink::{LinkState, UplinkStatus};

/// A run at least this long counts as having worked: the next failure restarts after the
/// shortest backoff again, so a fault once a day is not met with the longest wait.
pub(super) const STABLE_RUN: Duration = Duration::from_secs(60);

/// Why an attempt failed: its task panicked, or the uplink's run ended with its own error `E`.
///
/// A small enum rather than a boxed `dyn Error`: the supervisor only formats the failure, but a
/// panic (a bug) stays told apart from an error (a fault around the uplink) without downcasting,
/// and each uplink's error type reaches it unchanged, without an allocation.
#[derive(Debug)]
pub(super) enum Failure<E> {
    /// The attempt's task panicked (see [`contain`]).
    Panicked(JoinError),
    /// The run returned an error.
    Failed(E),
}

impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Panicked(e) => write!(f, "panicked: {e}"),
            Failure::Failed(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Failure<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::Panicked(e) => Some(e),
            Failure::Failed(e) => e.source(),
        }
    }
}

/// The outcome of one attempt: `Ok` when it stopped because it was told to, the failure
/// otherwise; and whether the run made progress (delivered something), which resets the backoff.
pub(super) type Outcome<E> = (Result<(), Failure<E>>, bool);

/// Who is supervised and where its failures show.
pub(super) struct Supervised {
    /// Uplink name: the event's subject and the log's `uplink` field.
    pub(super) name: String,
    /// Uplink kind for the log (`MQTT`, `Sparkplug`, `HJ 212`).
    pub(super) kind: &'static str,
    /// The uplink's status, shared with the task that runs it.
    pub(super) status: Arc<watch::Sender<UplinkStatus>>,
    /// The fan-out's side entrance for the `uplink_failed` events.
    pub(super) events: mpsc::Sender<Record>,
    /// Shortest and longest wait before a restart.
    pub(super) backoff: (Duration, Duration),
}

/// Run `task` as a task of its own, so that a panic ends this attempt only and is reported as
/// its failure.
pub(super) async fn contain<T: Send + 'static, E>(
    task: impl Future<Output = T> + Send + 'static,
) -> Result<T, Failure<E>> {
    tokio::spawn(task).await.map_err(Failure::Panicked)
}

/// Run `attempt` until it ends without an error or `stop` is cancelled; after an error mark the
/// status failed, count the restart, raise `uplink_failed` and start again after the backoff (see
/// the module documentation).
pub(super) async fn supervise<F, Fut, E>(who: Supervised, mut attempt: F, stop: CancellationToken)
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = Outcome<E>>,
    E: fmt::Display,
{
    let Supervised {
        name,
        kind,
        status,
        events,
        backoff: (min, max),
    } = who;
    let mut backoff = Backoff::new(min, max);
    let mut failures: u64 = 0;
    loop {
        let started = tokio::time::Instant::now();
        let (outcome, progressed) = attempt(stop.clone()).await;
        let why = match outcome {
            Ok(()) => return,
            Err(_) if stop.is_cancelled() => return,
            Err(why) => why.to_string(),
        };
        if progressed || started.elapsed() >= STABLE_RUN {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        failures += 1;
        tracing::error!(uplink = %name, restart_in = ?delay, "{kind} uplink failed: {why}");
        let reason = format!(
            "{why}; restart {failures} in {}",
            humantime::format_duration(delay)
        );
        status.send_modify(|s| {
            s.state = LinkState::Failed(reason.clone());
            s.last_error = Some(why.clone());
            s.restarts += 1;
        });
        let event = Record::Event(Event {
            kind: EventKind::UplinkFailed,
            subject: Arc::from(name.as_str()),
            phase: EventPhase::Instant,
            ts: Timestamp::now(),
            attributes: vec![
                (Arc::from("failures"), Value::UInt(failures)),
                (
                    Arc::from("restart_in_ms"),
                    Value::UInt(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
                ),
            ],
            message: format!("uplink {name} failed ({why}); restarting"),
        });
        if events.try_send(event).is_err() {
            tracing::warn!(uplink = %name, "event channel full or closed; uplink_failed not recorded");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        status.send_modify(|s| s.state = LinkState::Connecting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected() -> UplinkStatus {
        UplinkStatus {
            state: LinkState::Connected,
            connects: 1,
            ..UplinkStatus::default()
        }
    }

    fn who(
        status: Arc<watch::Sender<UplinkStatus>>,
        events: mpsc::Sender<Record>,
        backoff: (u64, u64),
    ) -> Supervised {
        Supervised {
            name: "province".into(),
            kind: "HJ 212",
            status,
            events,
            backoff: (
                Duration::from_secs(backoff.0),
                Duration::from_secs(backoff.1),
            ),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_task_is_restarted_with_a_doubling_backoff_and_shows_failed() {
        let (status_tx, mut status) = watch::channel(connected());
        let (events_tx, mut events) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let (runs_tx, mut runs) = mpsc::unbounded_channel();
        let mut n = 0;
        let attempt = move |_stop: CancellationToken| {
            n += 1;
            let _ = runs_tx.send(started.elapsed());
            let outcome = if n < 4 {
                Err(Failure::Failed("spool: disk full"))
            } else {
                Ok(())
            };
            async move { (outcome, false) }
        };
        let task = tokio::spawn(supervise(
            who(Arc::new(status_tx), events_tx, (1, 3)),
            attempt,
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
        assert_eq!(status.borrow().restarts, 3);
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

    /// An attempt that panics, then one that connects and runs until the stop: the status shows
    /// the panic as a failure, then the state the new run reports; the stop ends the run and the
    /// supervisor without another restart.
    #[tokio::test(start_paused = true)]
    async fn a_panic_is_restarted_the_next_run_recovers_and_the_stop_ends_it() {
        let (status_tx, mut status) = watch::channel(connected());
        let status_tx = Arc::new(status_tx);
        let (events_tx, _events) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let attempt = {
            let status = status_tx.clone();
            let runs = runs.clone();
            move |stop: CancellationToken| {
                let n = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let status = status.clone();
                async move {
                    let run = contain(async move {
                        assert!(n > 0, "first run: the spool handle went away");
                        status.send_modify(|s| s.state = LinkState::Connected);
                        stop.cancelled().await;
                        Ok::<(), &str>(())
                    })
                    .await;
                    (run.and_then(|r| r.map_err(Failure::Failed)), false)
                }
            }
        };
        let task = tokio::spawn(supervise(
            who(status_tx, events_tx, (1, 3)),
            attempt,
            stop.clone(),
        ));
        let failed = status
            .wait_for(|s| matches!(s.state, LinkState::Failed(_)))
            .await
            .unwrap()
            .clone();
        assert!(
            matches!(&failed.state, LinkState::Failed(r) if r.contains("panicked") && r.contains("restart 1")),
            "{:?}",
            failed.state
        );
        assert_eq!(failed.restarts, 1);
        // Restarted after the backoff; the new run is connected.
        status
            .wait_for(|s| s.state == LinkState::Connected)
            .await
            .unwrap();
        stop.cancel();
        task.await.unwrap();
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(status.borrow().restarts, 1);
    }

    /// A run that fails after the stop fired is not restarted, and the backoff wait ends with the
    /// stop.
    #[tokio::test(start_paused = true)]
    async fn no_restart_after_the_stop() {
        let (status_tx, status) = watch::channel(connected());
        let (events_tx, _events) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let attempt = {
            let runs = runs.clone();
            move |stop: CancellationToken| {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    stop.cancelled().await;
                    (Err(Failure::Failed("spool closed")), false)
                }
            }
        };
        let task = tokio::spawn(supervise(
            who(Arc::new(status_tx), events_tx, (3600, 3600)),
            attempt,
            stop.clone(),
        ));
        tokio::task::yield_now().await;
        stop.cancel();
        let started = tokio::time::Instant::now();
        task.await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(status.borrow().restarts, 0);
        assert_eq!(status.borrow().state, LinkState::Connected);
    }
}
