//! The fan-out: the one task between acquisition and the spools. It takes the pollers' batches
//! and the uplinks' events, runs the calculators and the derived points on them, keeps the live
//! state current, stores closed windows in the history store and seals regulated records into
//! the ledger, then appends every record to each spool whose uplink carries its stream.
//!
//! Batches that arrive together are appended in one transaction per spool (group commit, up to
//! [`MAX_BATCHES_PER_APPEND`]); a spool or history store that keeps failing is isolated
//! ([`crate::live::health`]): what it refuses is counted as lost, and acquisition goes on.

pub mod calc_state;
mod derived_stage;
pub(crate) mod regulated;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Stream, TopicTemplates};
use crate::live::{LiveState, health};
use crate::model::{ReadingBatch, Record, Timestamp};
use crate::spool::{AppendFailed, Decoded, NewRecord, SpoolHandle};

/// How often the calculators are asked to close windows whose data stopped.
const CALC_FLUSH_EVERY: Duration = Duration::from_secs(10);
/// Largest number of batches appended to the spools in one transaction. The spool serves one
/// command at a time, so an uplink's read waits for the append in progress: a short transaction
/// lets fresh data out sooner, at the same CPU (docs/PERFORMANCE.md, "fresh data waited behind
/// 512-batch spool transactions"). Sources poll in slots of as many devices
/// ([`crate::config::PollSlots`]), so that a slot's batches make one append.
pub(crate) const MAX_BATCHES_PER_APPEND: usize = crate::config::DEVICES_PER_POLL_SLOT;
/// How long fan-out waits for more batches after the first of a burst before it appends them (up
/// to [`MAX_BATCHES_PER_APPEND`]): group commit. A source reads its devices one after the other,
/// so its batches trickle in over tens of milliseconds; the wait joins them into one transaction
/// (one fsync under `synchronous = full`) instead of one each (docs/PERFORMANCE.md, "spread
/// sources made a transaction of nearly every batch").
const APPEND_LINGER: Duration = Duration::from_millis(5);
/// After this many waits in a row that gathered nothing, fan-out stops waiting ([`Linger`])...
const LINGER_FRUITLESS: u32 = 8;
/// ...except on every this many bursts, to notice when batches trickle in again.
const LINGER_PROBE_EVERY: u32 = 16;

/// What the fan-out reads: the pollers' batches (it ends when they are all gone) and the events the
/// uplinks produce (device write attempts).
pub(crate) struct FanInputs {
    pub(crate) batches: mpsc::Receiver<ReadingBatch>,
    pub(crate) events: mpsc::Receiver<Record>,
}

/// Where fan-out sends the records of the streams an uplink carries.
pub(crate) struct FanTarget {
    pub(crate) spool: SpoolHandle,
    /// Whether the spool is failing, and when to try it again ([`health`]).
    pub(crate) gate: health::StoreGate,
    pub(crate) streams: Vec<Stream>,
    pub(crate) topics: TopicTemplates,
    /// The uplink reads records with their decoded form (`SpoolHandle::read_after_decoded`): hand
    /// each unsealed record over beside its body, so that it is not parsed back.
    pub(crate) hand_over_decoded: bool,
}

/// What the fan-out works with besides its inputs and targets.
struct FanContext {
    site: String,
    live: Arc<LiveState>,
    regulator: regulated::Regulator,
    /// Fired when a stop's grace period ended: store nothing more, count what is left.
    drain_deadline: CancellationToken,
}

impl FanContext {
    /// Seal, store in history and append to the spools. The records are used up: the poll
    /// batches move into the decoded forms that the uplinks share. Returns whether any of them was
    /// something other than a poll batch (the calculators save their snapshot after those).
    async fn hand_on(&mut self, targets: &mut [FanTarget], records: &mut Vec<Record>) -> bool {
        if records.is_empty() {
            return false;
        }
        if self.drain_deadline.is_cancelled() {
            count_undrained(&self.live, targets, records);
            return any_derived(records);
        }
        let seals = tokio::select! {
            seals = self.regulator.process(records) => seals,
            _ = self.drain_deadline.cancelled() => {
                count_undrained(&self.live, targets, records);
                return any_derived(records);
            }
        };
        let derived = any_derived(records);
        route(
            targets,
            &self.site,
            std::mem::take(records),
            &seals,
            &self.live.health,
            &self.drain_deadline,
        )
        .await;
        derived
    }
}

/// Whether `records` hold anything other than poll batches.
fn any_derived(records: &[Record]) -> bool {
    records.iter().any(|r| !matches!(r, Record::Batch(_)))
}

/// Count `records` as lost at shutdown, once for every spool that would have taken them.
fn count_undrained(live: &LiveState, targets: &[FanTarget], records: &[Record]) {
    let batches = records
        .iter()
        .filter(|r| matches!(r, Record::Batch(_)))
        .count();
    live.health.undrained(batches as u64);
    for t in targets {
        let n = records
            .iter()
            .filter(|r| t.streams.contains(&r.stream()))
            .count();
        live.health.lost(t.gate.name(), "shutdown", n as u64);
    }
}

/// Everything the fan-out task owns.
pub(crate) struct FanOut {
    pub(crate) inputs: FanInputs,
    pub(crate) targets: Vec<FanTarget>,
    pub(crate) site: String,
    pub(crate) live: Arc<LiveState>,
    pub(crate) calc: Option<calc_state::CalcStage>,
    pub(crate) derived: Option<crate::derived::Engine>,
    pub(crate) regulator: regulated::Regulator,
    /// Records that go first (the ledger's configuration change, the spools' own events).
    pub(crate) initial: Vec<Record>,
    pub(crate) drain_deadline: CancellationToken,
}

/// Route poll batches to every uplink's spool that carries the `live` stream.
///
/// Batches that arrive together are appended in one transaction per spool, up to
/// [`MAX_BATCHES_PER_APPEND`]: under load this turns many small fsyncs into few larger ones. A
/// spool or history store that keeps failing is isolated ([`health`]): what it refuses is
/// counted as lost, and acquisition goes on. `initial` records (the configuration change of the
/// ledger) go first. Closed windows are stored in the history store and regulated records sealed
/// into the ledger before they reach a spool.
pub(crate) async fn fan_out(fan: FanOut) {
    let FanOut {
        inputs,
        mut targets,
        site,
        live,
        mut calc,
        mut derived,
        regulator,
        mut initial,
        drain_deadline,
    } = fan;
    let FanInputs {
        batches: mut rx,
        mut events,
    } = inputs;
    let mut cx = FanContext {
        site,
        live: live.clone(),
        regulator,
        drain_deadline,
    };
    if !initial.is_empty() {
        publish_derived(&live, &initial);
        cx.hand_on(&mut targets, &mut initial).await;
    }
    let mut burst = Vec::with_capacity(MAX_BATCHES_PER_APPEND);
    let mut lingering = Linger::default();
    // Windows must close even when their data stops (a dead stack analyser still owes the
    // platform an invalid hour), so the calculators are also flushed on a timer.
    let mut flush_tick = tokio::time::interval(CALC_FLUSH_EVERY);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Derived points with a clock period are evaluated on this tick (their period is ≥ 1 s).
    let periodic = derived.as_ref().is_some_and(|d| d.has_periodic());
    let mut derived_tick = tokio::time::interval(Duration::from_secs(1));
    derived_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut records: Vec<Record> = Vec::new();
        live.health.fan_out_idle();
        tokio::select! {
            n = rx.recv_many(&mut burst, MAX_BATCHES_PER_APPEND) => {
                if n == 0 {
                    break;
                }
                live.health.fan_out_busy();
                lingering.gather(&mut rx, &mut burst).await;
                remember_latest(&live, &burst);
                for batch in burst.drain(..) {
                    let derived = calc.as_mut().map(|c| c.on_batch(&batch)).unwrap_or_default();
                    records.push(Record::Batch(batch));
                    records.extend(derived);
                }
            }
            _ = flush_tick.tick(), if calc.is_some() => {
                live.health.fan_out_busy();
                if let Some(c) = calc.as_mut() {
                    records = c.flush(Timestamp::now());
                }
            }
            // Events from the uplinks (device write attempts) and about the agent itself
            // ([`Agent::report`]); the branch sleeps once they are all gone.
            Some(event) = events.recv() => {
                live.health.fan_out_busy();
                records.push(event);
            }
            _ = derived_tick.tick(), if periodic => live.health.fan_out_busy(),
        }
        if let Some(d) = derived.as_mut() {
            derived_stage::run(d, calc.as_mut(), &live, &mut records);
        }
        publish_derived(&live, &records);
        live.completeness.received(&records);
        records.extend(live.completeness.tick(Timestamp::now()).await);
        let derived = cx.hand_on(&mut targets, &mut records).await;
        if let Some(c) = calc.as_mut() {
            c.saved_after_derived(derived).await;
        }
    }
    finish(&mut cx, &mut targets, calc.as_mut()).await;
}

/// After the pollers are gone: the calculators' open windows closed and handed on, the hour in
/// progress reported as partial (after a restart it continues), and what the grace period could
/// not store counted.
async fn finish(
    cx: &mut FanContext,
    targets: &mut [FanTarget],
    calc: Option<&mut calc_state::CalcStage>,
) {
    let live = cx.live.clone();
    live.health.fan_out_busy();
    if let Some(c) = calc {
        let mut records = c.flush(Timestamp::now());
        publish_derived(&live, &records);
        live.completeness.received(&records);
        let derived = cx.hand_on(targets, &mut records).await;
        c.saved_after_derived(derived).await;
    }
    let mut partial = live.completeness.partial(Timestamp::now());
    cx.hand_on(targets, &mut partial).await;
    let undrained = live.health.undrained_total();
    if undrained > 0 {
        tracing::error!(
            "{undrained} poll batches could not be stored within the grace period and are lost"
        );
    }
    live.health.fan_out_idle();
}

/// Group commit that waits only where waiting gathers something. A source reading many devices
/// behind one gateway sends its batches in a trickle, and [`APPEND_LINGER`] joins them into one
/// append. Where every device is its own connection, the sources are spread over the interval
/// (each a few tens of milliseconds from the next) and the wait gathers nothing: it only costs a
/// timer wake-up per batch. So after [`LINGER_FRUITLESS`] waits in a row that gathered nothing,
/// a burst takes only what has already arrived, and every [`LINGER_PROBE_EVERY`]th burst waits
/// again to notice when batches trickle in again.
#[derive(Debug, Default)]
struct Linger {
    fruitless: u32,
    skipped: u32,
}

impl Linger {
    async fn gather(
        &mut self,
        rx: &mut mpsc::Receiver<ReadingBatch>,
        burst: &mut Vec<ReadingBatch>,
    ) {
        if self.fruitless >= LINGER_FRUITLESS {
            self.skipped = self.skipped.wrapping_add(1);
            if !self.skipped.is_multiple_of(LINGER_PROBE_EVERY) {
                while burst.len() < MAX_BATCHES_PER_APPEND {
                    match rx.try_recv() {
                        Ok(batch) => burst.push(batch),
                        Err(_) => break,
                    }
                }
                return;
            }
        }
        let before = burst.len();
        linger(rx, burst).await;
        self.fruitless = if burst.len() > before {
            0
        } else {
            self.fruitless.saturating_add(1)
        };
    }
}

/// Adds to `burst` what arrives within [`APPEND_LINGER`], until it holds
/// [`MAX_BATCHES_PER_APPEND`] batches or the channel closes (see [`APPEND_LINGER`]).
///
/// One timer for the whole wait: a `timeout` per batch would enter the timer wheel again for
/// every batch that arrives.
async fn linger(rx: &mut mpsc::Receiver<ReadingBatch>, burst: &mut Vec<ReadingBatch>) {
    let until = tokio::time::sleep(APPEND_LINGER);
    tokio::pin!(until);
    while burst.len() < MAX_BATCHES_PER_APPEND {
        let room = MAX_BATCHES_PER_APPEND - burst.len();
        tokio::select! {
            biased;
            received = rx.recv_many(burst, room) => if received == 0 { return },
            () = &mut until => return,
        }
    }
}

/// Keep the latest reading of every point for the status displays and the HTTP API, and the
/// trends.
pub(crate) fn remember_latest(live: &LiveState, batches: &[ReadingBatch]) {
    let mut latest = live
        .latest
        .lock()
        .expect("live state lock is never poisoned: holders do not panic");
    for batch in batches {
        latest.update(batch);
    }
    drop(latest);
    live.series.record_batches(batches);
}

/// Hand computed metrics, events and aggregates to the live feed (dashboard, SSE) and the trends.
fn publish_derived(live: &LiveState, records: &[Record]) {
    live.series.record(records);
    for r in records {
        if !matches!(r, Record::Batch(_)) {
            live.records.send(r.clone());
        }
    }
}

/// Append `records` to the spool of every uplink that carries their stream; a sealed record
/// (`seals[i]`, see [`regulated`]) carries its seal in the spool body.
///
/// Each record moves into an `Arc`, which is the decoded form handed over with it: every uplink
/// that takes decoded forms shares the fan-out's own, with no copy of its readings.
async fn route(
    targets: &mut [FanTarget],
    site: &str,
    records: Vec<Record>,
    seals: &[Option<crate::ledger::LedgerRecord>],
    health: &health::Health,
    drain_deadline: &CancellationToken,
) {
    let created = Timestamp::now();
    let records: Vec<Arc<Record>> = records.into_iter().map(Arc::new).collect();
    for target in targets.iter_mut() {
        let mut new = Vec::with_capacity(records.len());
        let mut decoded = Vec::new();
        for (i, record) in records.iter().enumerate() {
            let stream = record.stream();
            if !target.streams.contains(&stream) {
                continue;
            }
            let seal = seals.get(i).and_then(Option::as_ref);
            let body = match seal {
                Some(seal) => crate::ledger::capture::sealed_body(seal),
                None => crate::codec::body::encode(record),
            };
            if target.hand_over_decoded {
                // Poll batches are the bulk of the traffic. A sealed record's payload carries its
                // seal, which only the body has. Whether a form may stand in for its body is the
                // uplink's call (`Record::is_batch_exact_in_json`).
                let hand_over = seal.is_none() && matches!(**record, Record::Batch(_));
                decoded.push(hand_over.then(|| Arc::clone(record) as Decoded));
            }
            new.push(NewRecord {
                stream,
                topic: crate::codec::topic::topic_for(&target.topics, site, record),
                body,
                created,
            });
        }
        if !new.is_empty() {
            tokio::select! {
                () = append_or_count(target, new, decoded, health) => {}
                _ = drain_deadline.cancelled() => {}
            }
        }
    }
}

/// Append to the target's spool: a few quick retries while it is healthy, one probe per backoff
/// while it fails ([`health::StoreGate`]). What it does not take is counted as lost with the
/// reason (`disk_full` when even the spool's own disk-full drops made no room, `io_error`,
/// `timeout`, `closed`, `store_failing` while the probe is not due). A failed append gives the
/// records back, so nothing is copied for the retry.
async fn append_or_count(
    target: &mut FanTarget,
    mut records: Vec<NewRecord>,
    mut decoded: Vec<Option<Decoded>>,
    health: &health::Health,
) {
    let count = records.len() as u64;
    let attempts = target.gate.attempts();
    let mut delay = Duration::from_millis(100);
    let mut last = (String::from("failing, probe not due"), "store_failing");
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        let call = target.spool.try_append_decoded(records, decoded);
        let result = match tokio::time::timeout(health::STORE_CALL_TIMEOUT, call).await {
            Ok(result) => result,
            Err(_) => {
                last = (
                    format!("no answer within {:?}", health::STORE_CALL_TIMEOUT),
                    "timeout",
                );
                // The records went with the call: nothing left to retry.
                target.gate.failed(health, &last.0);
                health.lost(target.gate.name(), last.1, count);
                return;
            }
        };
        match result {
            Ok(_) => {
                target.gate.ok(health);
                return;
            }
            Err(failed) => {
                let reason = match failed.error {
                    crate::spool::SpoolError::DiskFull { .. } => "disk_full",
                    crate::spool::SpoolError::Closed => "closed",
                    _ => "io_error",
                };
                last = (failed.error.to_string(), reason);
                let AppendFailed {
                    records: r,
                    decoded: d,
                    ..
                } = *failed;
                (records, decoded) = (r, d);
                if reason == "closed" {
                    break;
                }
            }
        }
    }
    if attempts > 0 {
        target.gate.failed(health, &last.0);
    }
    health.lost(target.gate.name(), last.1, count);
}

#[cfg(test)]
mod tests;
