//! Whether the pipeline makes progress, and what its stores lost: the truth behind `/readyz`, the
//! systemd watchdog and the `smeltwatch_store_*` metrics.
//!
//! # Decisions
//! - **Progress, not liveness.** A task that still exists but waits forever (a store that never
//!   answers, a channel that never drains) is as dead as one that ended. Each stage reports when
//!   it made progress: a poller by its cycle counter, the fan-out by marking the burst it works
//!   on. A stage with no progress for `stall_after` (top-level key, default 60 s) is stalled:
//!   `/readyz` answers 503 naming it and the watchdog is no longer fed, so systemd restarts the
//!   service. A poller's limit is at least three of its shortest poll intervals, so a source
//!   polled once a minute is not taken for stalled between two polls.
//! - **A failing store is isolated, not waited for.** The fan-out gives a store one short retry
//!   round; if it still fails the store is marked failing, the records it could not take are
//!   counted as lost with the store and the reason, and while it keeps failing it is tried once
//!   per backoff (100 ms doubling to 5 s), each refused burst counted the same way. A failing store
//!   makes `/readyz` answer 503 until one of its writes succeeds again.
//! - Counters live here, not in the stores, so that what the fan-out gave up on is counted even
//!   when the store's own counters cannot be written (a full disk).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::defaults;

/// Shortest `stall_after` taken: below it a busy machine's scheduling would look like a stall.
pub const MIN_STALL_AFTER: Duration = Duration::from_millis(10);

/// Progress and losses of one running agent.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    stall_after: Duration,
    /// Milliseconds since `epoch` plus one when the fan-out began the burst it works on; 0 while
    /// it waits for input.
    fan_out_busy_since_ms: AtomicU64,
    pollers: Mutex<Vec<PollerProgress>>,
    stores: Mutex<BTreeMap<String, StoreState>>,
    /// Poll batches the fan-out could not store before the end of the grace period at shutdown.
    undrained_at_shutdown: AtomicU64,
    /// Damaged spool files moved aside at start, by (uplink, reason).
    spools_set_aside: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Uplinks not started because their spool could not be opened, with the error.
    spools_not_opened: Mutex<BTreeMap<String, String>>,
}

#[derive(Debug)]
struct PollerProgress {
    name: String,
    limit: Duration,
    cycles: u64,
    changed: Instant,
}

#[derive(Debug, Default)]
struct StoreState {
    /// Records lost, by reason.
    lost: BTreeMap<&'static str, u64>,
    /// The error of the last failed write while the store is failing.
    failing: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(defaults::STALL_AFTER)
    }
}

impl Health {
    /// Stages without progress for `stall_after` (at least [`MIN_STALL_AFTER`]) count as stalled.
    pub fn new(stall_after: Duration) -> Health {
        Health {
            epoch: Instant::now(),
            stall_after: stall_after.max(MIN_STALL_AFTER),
            fan_out_busy_since_ms: AtomicU64::new(0),
            pollers: Mutex::new(Vec::new()),
            stores: Mutex::new(BTreeMap::new()),
            undrained_at_shutdown: AtomicU64::new(0),
            spools_set_aside: Mutex::new(BTreeMap::new()),
            spools_not_opened: Mutex::new(BTreeMap::new()),
        }
    }

    /// The damaged spool file of `uplink` was moved aside at start for `reason`.
    pub fn spool_set_aside(&self, uplink: &str, reason: &'static str) {
        *lock(&self.spools_set_aside)
            .entry((uplink.to_owned(), reason))
            .or_default() += 1;
    }

    /// `uplink` was not started: its spool could not be opened (`error`). It stays a problem of
    /// this run ([`Health::problems`]); a restart tries again.
    pub fn spool_not_opened(&self, uplink: &str, error: &str) {
        lock(&self.spools_not_opened).insert(uplink.to_owned(), error.to_owned());
    }

    /// Watch the poller `name`, whose shortest poll interval is `shortest_poll`.
    pub fn watch_poller(&self, name: &str, shortest_poll: Duration) {
        let limit = self.stall_after.max(shortest_poll.saturating_mul(3));
        self.pollers_lock().push(PollerProgress {
            name: name.to_owned(),
            limit,
            cycles: 0,
            changed: Instant::now(),
        });
    }

    /// The fan-out began work on a burst.
    pub fn fan_out_busy(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.fan_out_busy_since_ms.store(ms + 1, Ordering::Relaxed);
    }

    /// The fan-out finished its burst and waits for input.
    pub fn fan_out_idle(&self) {
        self.fan_out_busy_since_ms.store(0, Ordering::Relaxed);
    }

    /// `count` records that `store` did not keep, for `reason`.
    pub fn lost(&self, store: &str, reason: &'static str, count: u64) {
        if count == 0 {
            return;
        }
        let mut stores = self.stores_lock();
        *stores
            .entry(store.to_owned())
            .or_default()
            .lost
            .entry(reason)
            .or_default() += count;
    }

    /// `store` refused a write with `error`: it is failing until [`Health::store_ok`].
    pub fn store_failing(&self, store: &str, error: &str) {
        self.stores_lock()
            .entry(store.to_owned())
            .or_default()
            .failing = Some(error.to_owned());
    }

    /// A write to `store` succeeded.
    pub fn store_ok(&self, store: &str) {
        if let Some(s) = self.stores_lock().get_mut(store) {
            s.failing = None;
        }
    }

    /// Records lost by `store` so far, all reasons.
    pub fn lost_total(&self, store: &str) -> u64 {
        self.stores_lock()
            .get(store)
            .map_or(0, |s| s.lost.values().sum())
    }

    /// Count batches left undrained when the grace period ended.
    pub fn undrained(&self, batches: u64) {
        self.undrained_at_shutdown
            .fetch_add(batches, Ordering::Relaxed);
    }

    /// Batches left undrained at shutdown.
    pub fn undrained_total(&self) -> u64 {
        self.undrained_at_shutdown.load(Ordering::Relaxed)
    }

    /// Update the pollers' progress from their cycle counters (`(name, cycles)`, in the order
    /// they were watched) and return why the pipeline is not healthy: stalled stages and failing
    /// stores. Empty when all is well.
    pub fn problems(&self, cycles: &[(String, u64)]) -> Vec<String> {
        let mut out = self.stalls(cycles);
        for (uplink, err) in lock(&self.spools_not_opened).iter() {
            out.push(format!(
                "uplink {uplink:?} not started: its spool cannot be opened ({err})"
            ));
        }
        for (store, s) in self.stores_lock().iter() {
            if let Some(err) = &s.failing {
                out.push(format!(
                    "{store} store failing ({err}): {} records lost",
                    s.lost.values().sum::<u64>()
                ));
            }
        }
        out
    }

    /// The stalled stages among [`Health::problems`]: what stops the watchdog. A failing store is
    /// not one (it is isolated and acquisition goes on; a restart would not mend a full disk).
    pub fn stalls(&self, cycles: &[(String, u64)]) -> Vec<String> {
        let now = Instant::now();
        let mut out = Vec::new();
        for p in self.pollers_lock().iter_mut() {
            if let Some((_, c)) = cycles.iter().find(|(n, _)| *n == p.name)
                && *c != p.cycles
            {
                p.cycles = *c;
                p.changed = now;
            }
            let idle = now.saturating_duration_since(p.changed);
            if idle > p.limit {
                out.push(format!(
                    "source {:?} has completed no poll cycle for {} s",
                    p.name,
                    idle.as_secs()
                ));
            }
        }
        let busy = self.fan_out_busy_since_ms.load(Ordering::Relaxed);
        if busy > 0 {
            let since = Duration::from_millis(busy - 1);
            let busy_for = self.epoch.elapsed().saturating_sub(since);
            if busy_for > self.stall_after {
                out.push(format!(
                    "fan-out has been stuck on one burst for {} s",
                    busy_for.as_secs()
                ));
            }
        }
        out
    }

    /// Prometheus text of the counters kept here.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let stores = self.stores_lock();
        out.push_str(
            "# HELP smeltwatch_store_lost_records_total Records a store did not keep, by store and reason.\n\
             # TYPE smeltwatch_store_lost_records_total counter\n",
        );
        for (store, s) in stores.iter() {
            for (reason, n) in &s.lost {
                let _ = writeln!(
                    out,
                    "smeltwatch_store_lost_records_total{{store=\"{}\",reason=\"{reason}\"}} {n}",
                    escape(store)
                );
            }
        }
        out.push_str(
            "# HELP smeltwatch_store_failing Whether a store's last write failed (1) or not (0).\n\
             # TYPE smeltwatch_store_failing gauge\n",
        );
        for (store, s) in stores.iter() {
            let _ = writeln!(
                out,
                "smeltwatch_store_failing{{store=\"{}\"}} {}",
                escape(store),
                u8::from(s.failing.is_some())
            );
        }
        drop(stores);
        out.push_str(
            "# HELP smeltwatch_spool_set_aside_total Damaged spool files moved aside at start (an empty spool took their place), by uplink and reason.\n\
             # TYPE smeltwatch_spool_set_aside_total counter\n",
        );
        for ((uplink, reason), n) in lock(&self.spools_set_aside).iter() {
            let _ = writeln!(
                out,
                "smeltwatch_spool_set_aside_total{{uplink=\"{}\",reason=\"{reason}\"}} {n}",
                escape(uplink)
            );
        }
        out.push_str(
            "# HELP smeltwatch_spool_open_failed Uplinks not started because their spool could not be opened (1).\n\
             # TYPE smeltwatch_spool_open_failed gauge\n",
        );
        for uplink in lock(&self.spools_not_opened).keys() {
            let _ = writeln!(
                out,
                "smeltwatch_spool_open_failed{{uplink=\"{}\"}} 1",
                escape(uplink)
            );
        }
        out
    }

    fn pollers_lock(&self) -> std::sync::MutexGuard<'_, Vec<PollerProgress>> {
        self.pollers
            .lock()
            .expect("health lock is never poisoned: holders do not panic")
    }

    fn stores_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StoreState>> {
        self.stores
            .lock()
            .expect("health lock is never poisoned: holders do not panic")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock()
        .expect("health lock is never poisoned: holders do not panic")
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"")
}

/// When a failing store is tried again: the isolation of [`Health`]'s module docs.
#[derive(Debug, Clone)]
pub(crate) struct StoreGate {
    name: String,
    /// `Some` while failing: when the next probe is due.
    next_try: Option<tokio::time::Instant>,
    backoff: Duration,
}

/// First wait before a failing store is probed again.
const PROBE_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two probes of a failing store.
const PROBE_MAX: Duration = Duration::from_secs(5);
/// Attempts of one write while the store is not yet failing (the first one included).
pub(crate) const ATTEMPTS_WHEN_HEALTHY: u32 = 3;
/// Longest a single store call may take before it counts as failed.
pub(crate) const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl StoreGate {
    pub(crate) fn new(name: String) -> StoreGate {
        StoreGate {
            name,
            next_try: None,
            backoff: PROBE_MIN,
        }
    }

    /// The store's name in counters and reasons.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// How many attempts a write gets now: 0 while a failing store's probe is not due.
    pub(crate) fn attempts(&self) -> u32 {
        match self.next_try {
            None => ATTEMPTS_WHEN_HEALTHY,
            Some(at) if tokio::time::Instant::now() >= at => 1,
            Some(_) => 0,
        }
    }

    /// The write succeeded.
    pub(crate) fn ok(&mut self, health: &Health) {
        if self.next_try.take().is_some() {
            tracing::info!(store = %self.name, "store writes again");
        }
        self.backoff = PROBE_MIN;
        health.store_ok(&self.name);
    }

    /// The write failed after its attempts.
    pub(crate) fn failed(&mut self, health: &Health, error: &str) {
        if self.next_try.is_none() {
            tracing::error!(store = %self.name, "store failing, its records are counted as lost until it writes again: {error}");
        } else {
            self.backoff = (self.backoff * 2).min(PROBE_MAX);
        }
        self.next_try = Some(tokio::time::Instant::now() + self.backoff);
        health.store_failing(&self.name, error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poller_whose_cycles_stop_is_stalled_after_its_limit() {
        let h = Health::new(Duration::from_millis(30));
        h.watch_poller("bus", Duration::from_millis(1));
        assert!(h.problems(&[("bus".into(), 1)]).is_empty());
        std::thread::sleep(Duration::from_millis(40));
        let p = h.problems(&[("bus".into(), 1)]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("\"bus\""), "{p:?}");
        // Progress clears it.
        assert!(h.problems(&[("bus".into(), 2)]).is_empty());
    }

    #[test]
    fn a_slow_poll_class_lengthens_the_limit() {
        let h = Health::new(Duration::from_millis(1));
        h.watch_poller("slow", Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
        assert!(h.problems(&[("slow".into(), 0)]).is_empty());
    }

    #[test]
    fn a_stuck_fan_out_and_a_failing_store_are_reported_and_counted() {
        let h = Health::new(Duration::from_millis(20));
        h.fan_out_busy();
        assert!(h.problems(&[]).is_empty());
        std::thread::sleep(Duration::from_millis(30));
        assert!(h.problems(&[])[0].contains("fan-out"));
        h.fan_out_idle();
        assert!(h.problems(&[]).is_empty());

        h.lost("history", "disk_full", 3);
        h.store_failing("history", "disk full");
        let p = h.problems(&[]);
        assert_eq!(p, ["history store failing (disk full): 3 records lost"]);
        let text = h.render_metrics();
        assert!(text.contains(
            "smeltwatch_store_lost_records_total{store=\"history\",reason=\"disk_full\"} 3"
        ));
        assert!(text.contains("smeltwatch_store_failing{store=\"history\"} 1"));
        h.store_ok("history");
        assert!(h.problems(&[]).is_empty());
        assert_eq!(h.lost_total("history"), 3);
    }

    #[test]
    fn spools_set_aside_are_counted_and_one_not_opened_is_a_problem() {
        let h = Health::default();
        h.spool_set_aside("plant", "corrupt");
        h.spool_set_aside("plant", "corrupt");
        h.spool_not_opened("scada", "schema version 9");
        let text = h.render_metrics();
        assert!(
            text.contains(
                "smeltwatch_spool_set_aside_total{uplink=\"plant\",reason=\"corrupt\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("smeltwatch_spool_open_failed{uplink=\"scada\"} 1"),
            "{text}"
        );
        assert_eq!(
            h.problems(&[]),
            ["uplink \"scada\" not started: its spool cannot be opened (schema version 9)"]
        );
        assert!(h.stalls(&[]).is_empty(), "the watchdog is still fed");
    }
}
