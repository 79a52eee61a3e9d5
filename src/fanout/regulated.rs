//! The regulated-records stage of the fan-out: closed windows go into the history store, and
//! regulated records are sealed into the site's ledger chain, before any spool sees them.
//!
//! # Why here
//! A record must get one chain position, whatever uplinks carry it, and the chain must never fork
//! across restarts. So sealing happens once, in the fan-out, and the chain's head is written to
//! the history store in the same transaction as the records it seals, before the records are
//! appended to the spools. After a restart the chain resumes from that head. A crash between the
//! two leaves sealed records in the history store that no uplink sent: a gap the verifier names,
//! never a fork.
//!
//! Regulated are (by `[ledger] regulated`): hourly and daily stack aggregates, the potlines' daily
//! and monthly energy (`potline`) and PFC (`emissions`) figures; and every configuration the agent
//! starts with (`config_change` events with the SHA-256 of the file), at start and on reload.
//!
//! # When the history store fails
//! The fan-out never waits on it (see [`super::health`]): after a short retry round the store is
//! marked failing and probed once per backoff. The chain is rolled back to where it stood before
//! the failed write, so no seal exists that its head in the store does not cover and a restart
//! cannot fork it. Regulated records of a failed write are held back (up to
//! [`MAX_HELD_BACK`] records, oldest kept) and sealed with the next write that succeeds; windows
//! and figures that are not sealed go on to the spools and are counted as lost to the history
//! store (`store="history"`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ed25519_dalek::SigningKey;

use crate::config::{Config, Regulated};
use crate::history::HistorySource;
use crate::history::{HistoryStore, figures_period};
use crate::ledger::capture::{REGULATED_CHAIN, payload_of};
use crate::ledger::{Chain, LedgerRecord};
use crate::model::{Event, EventKind, EventPhase, Period, Record, Timestamp, Value};

use crate::live::health::{Health, STORE_CALL_TIMEOUT, StoreGate};

/// Most regulated records held back while the history store fails (a day of hourly aggregates
/// of a dozen stacks is about 300): beyond it the oldest are counted as lost.
pub(crate) const MAX_HELD_BACK: usize = 10_000;
/// The store's name in counters and `/readyz`.
const STORE: &str = "history";

/// The history store and the ledger of a running agent.
pub(crate) struct Regulator {
    history: Option<Arc<HistoryStore>>,
    ledger: Option<Sealer>,
    gate: StoreGate,
    health: Arc<Health>,
    /// Regulated records held back while the store fails, oldest first.
    held_back: Vec<Record>,
}

struct Sealer {
    key: SigningKey,
    chain: Chain,
    regulated: Vec<Regulated>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("next_seq", &self.chain.next_seq())
            .field("regulated", &self.regulated)
            .finish_non_exhaustive()
    }
}

impl Regulator {
    /// Open the history store (when there are calculators or a ledger) and load the site key and
    /// the chain's head (when there is a ledger). Refuses a key that group or others can read.
    pub(crate) fn open(cfg: &Config) -> anyhow::Result<Regulator> {
        let history = if cfg.calc.is_some() || cfg.ledger.is_some() {
            let store = HistoryStore::open(&cfg.history).context("[history]")?;
            tracing::info!(file = %store.path().display(), "history store open");
            Some(Arc::new(store))
        } else {
            None
        };
        let ledger = match (&cfg.ledger, &history) {
            (Some(l), Some(store)) => {
                let key = crate::ledger::load_signing_key(&l.key_file)
                    .with_context(|| "ledger.key_file".to_string())?;
                let chain = match store.ledger_head(REGULATED_CHAIN)? {
                    Some(head) if head.site == cfg.site => Chain::resume(&head),
                    Some(head) => anyhow::bail!(
                        "{}: the ledger chain belongs to site {:?}, the configuration says {:?}",
                        store.path().display(),
                        head.site,
                        cfg.site
                    ),
                    None => Chain::new(cfg.site.clone(), REGULATED_CHAIN),
                };
                tracing::info!(
                    next_seq = chain.next_seq(),
                    "ledger: signing regulated records"
                );
                Some(Sealer {
                    key,
                    chain,
                    regulated: l.regulated.clone(),
                })
            }
            _ => None,
        };
        Ok(Regulator::new(history, ledger))
    }

    fn new(history: Option<Arc<HistoryStore>>, ledger: Option<Sealer>) -> Regulator {
        Regulator {
            history,
            ledger,
            gate: StoreGate::new(STORE.to_owned()),
            health: Arc::default(),
            held_back: Vec::new(),
        }
    }

    /// Count losses and failures in `health`.
    pub(crate) fn with_health(mut self, health: Arc<Health>) -> Regulator {
        self.health = health;
        self
    }

    /// The store the HJ 212 uplinks answer history requests from.
    pub(crate) fn history_source(&self) -> Option<Arc<dyn HistorySource>> {
        self.history.clone().map(|h| h as Arc<dyn HistorySource>)
    }

    /// The store itself, for the trends older than their ring (`/api/v1/series`).
    pub(crate) fn history_store(&self) -> Option<Arc<HistoryStore>> {
        self.history.clone()
    }

    /// The record of the configuration this agent starts with, when the ledger is on.
    pub(crate) fn config_change(&self, cfg: &Config) -> Option<Record> {
        self.ledger.as_ref()?;
        let bytes = match std::fs::read(&cfg.path) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(config = %cfg.path.display(), "ledger: cannot read the configuration to record it: {e}");
                return None;
            }
        };
        let digest = crate::ledger::to_hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        Some(Record::Event(Event {
            kind: EventKind::ConfigChange,
            subject: Arc::from(cfg.site.as_str()),
            phase: EventPhase::Instant,
            ts: Timestamp::now(),
            attributes: vec![(Arc::from("config_sha256"), Value::Text(digest.clone()))],
            message: format!("configuration in effect: sha256 {digest}"),
        }))
    }

    fn is_regulated(&self, record: &Record) -> bool {
        let Some(sealer) = &self.ledger else {
            return false;
        };
        let wanted = |r| sealer.regulated.contains(&r);
        match record {
            Record::Aggregate(a) => match a.period {
                Period::Minute => wanted(Regulated::StackMinute),
                Period::Hour => wanted(Regulated::StackHour),
                Period::Day => wanted(Regulated::StackDay),
                Period::Month => wanted(Regulated::StackMonth),
            },
            Record::Metrics(m) if matches!(&*m.calc, "potline" | "emissions") => {
                match figures_period(m) {
                    Some("day") => wanted(Regulated::PotlineDay),
                    Some("month") => wanted(Regulated::PotlineMonth),
                    _ => false,
                }
            }
            Record::Event(e) => e.kind == EventKind::ConfigChange,
            Record::Metrics(_) | Record::Batch(_) => false,
        }
    }

    /// Seal the regulated records among `records` and store the windows, figures and seals in
    /// the history store. Returns one entry per record of `records` as it is on return: its seal,
    /// or `None`. Held-back records go first once the store writes again; while it fails the
    /// regulated ones are taken out of `records` and held back (module docs).
    pub(crate) async fn process(&mut self, records: &mut Vec<Record>) -> Vec<Option<LedgerRecord>> {
        if self.history.is_some() && !self.held_back.is_empty() && self.gate.attempts() > 0 {
            let mut all = std::mem::take(&mut self.held_back);
            all.append(records);
            *records = all;
        }
        let before = self.ledger.as_ref().map(|s| s.chain.clone());
        let mut seals = Vec::with_capacity(records.len());
        for record in records.iter() {
            let seal = if self.is_regulated(record) {
                let sealer = self.ledger.as_mut().expect("is_regulated needs a ledger");
                Some(sealer.chain.append(&sealer.key, payload_of(record)))
            } else {
                None
            };
            seals.push(seal);
        }
        let Some(store) = &self.history else {
            return seals;
        };
        let kept: Vec<Record> = records
            .iter()
            .filter(|r| goes_to_history(r))
            .cloned()
            .collect();
        let sealed: Vec<LedgerRecord> = seals.iter().flatten().cloned().collect();
        if kept.is_empty() && sealed.is_empty() {
            return seals;
        }
        // Retention is measured on the clock the records were made by: the newest window's end or
        // figure's time. On a plant that is the wall clock; under `[calc.simulated_time]` it is the
        // plant's clock, by which windows a year in the past are this hour's, not expired ones.
        let now = kept
            .iter()
            .filter_map(|r| match r {
                Record::Aggregate(a) => Some(a.end),
                Record::Metrics(m) => Some(m.ts),
                Record::Batch(_) | Record::Event(_) => None,
            })
            .max()
            .unwrap_or_else(Timestamp::now);
        let stored = self
            .store_with_retries(store.clone(), kept, sealed, now)
            .await;
        let Err((error, reason)) = stored else {
            return seals;
        };
        self.hold_back(records, &seals, before, &error, reason);
        vec![None; records.len()]
    }

    /// Store `kept` and `sealed` in the history store, trying as often as the gate allows (with a
    /// doubling pause between tries). On failure returns the last error and its loss reason.
    async fn store_with_retries(
        &mut self,
        store: Arc<HistoryStore>,
        kept: Vec<Record>,
        sealed: Vec<LedgerRecord>,
        now: Timestamp,
    ) -> Result<(), (String, &'static str)> {
        let (kept, sealed) = (Arc::new(kept), Arc::new(sealed));
        let mut delay = Duration::from_millis(100);
        let mut last_error = (String::from("failing, probe not due"), "store_failing");
        for attempt in 0..self.gate.attempts() {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            let (store, k, s) = (store.clone(), kept.clone(), sealed.clone());
            let call = tokio::task::spawn_blocking(move || store.store(&k, &s, now));
            match tokio::time::timeout(STORE_CALL_TIMEOUT, call).await {
                Ok(Ok(Ok(_))) => {
                    self.gate.ok(&self.health);
                    return Ok(());
                }
                Ok(Ok(Err(e))) => {
                    let text = format!("{e:#}");
                    let reason = if text.contains("full") {
                        "disk_full"
                    } else {
                        "io_error"
                    };
                    last_error = (text, reason);
                }
                Ok(Err(e)) => last_error = (format!("store task failed: {e}"), "io_error"),
                Err(_) => {
                    last_error = (
                        format!("no answer within {STORE_CALL_TIMEOUT:?}"),
                        "timeout",
                    );
                }
            }
        }
        Err(last_error)
    }

    /// The history store refused: undo the seals (the store's head does not cover them), hold the
    /// sealed records back (bounded by [`MAX_HELD_BACK`]) and count the unsealed windows lost.
    fn hold_back(
        &mut self,
        records: &mut Vec<Record>,
        seals: &[Option<LedgerRecord>],
        before: Option<Chain>,
        error: &str,
        reason: &'static str,
    ) {
        if self.gate.attempts() > 0 {
            self.gate.failed(&self.health, error);
        }
        if let (Some(sealer), Some(chain)) = (self.ledger.as_mut(), before) {
            sealer.chain = chain;
        }
        let mut unsealed_kept = 0u64;
        let mut routed = Vec::with_capacity(records.len());
        for (record, seal) in records.drain(..).zip(seals) {
            if seal.is_some() {
                self.held_back.push(record);
            } else {
                unsealed_kept += u64::from(goes_to_history(&record));
                routed.push(record);
            }
        }
        *records = routed;
        if self.held_back.len() > MAX_HELD_BACK {
            let over = self.held_back.len() - MAX_HELD_BACK;
            self.held_back.drain(..over);
            self.health.lost(STORE, "held_back_full", over as u64);
        }
        self.health.lost(STORE, reason, unsealed_kept);
    }
}

/// Whether the history store keeps `record`: closed windows and period figures.
fn goes_to_history(record: &Record) -> bool {
    match record {
        Record::Aggregate(_) => true,
        Record::Metrics(m) => figures_period(m).is_some(),
        Record::Batch(_) | Record::Event(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::capture::CONFIG_CHANGE;
    use crate::model::{Aggregate, Metric, MetricBatch, Quality};

    fn aggregate(period: Period) -> Record {
        Record::Aggregate(Aggregate {
            subject: Arc::from("gtc1_stack"),
            quantity: Arc::from("so2_mg_m3"),
            unit: Arc::from("mg/m3"),
            period,
            start: Timestamp(0),
            end: Timestamp(60_000),
            avg: Some(1.0),
            min: Some(1.0),
            max: Some(1.0),
            total: None,
            total_unit: None,
            samples: 1,
            expected: 1,
            valid: true,
            quality: Quality::Good,
            substituted: 0,
        })
    }

    fn figures(calc: &str, period: &str) -> Record {
        Record::Metrics(MetricBatch {
            calc: Arc::from(calc),
            ts: Timestamp(60_000),
            metrics: vec![Metric {
                name: Arc::from("ac_energy_kwh"),
                value: Some(1.0),
                unit: Arc::from("kWh"),
                quality: Quality::Good,
                ts: Timestamp(60_000),
                labels: vec![
                    (Arc::from("line"), Arc::from("potline1")),
                    (Arc::from("period"), Arc::from(period)),
                ],
            }],
        })
    }

    fn event(kind: &str) -> Record {
        Record::Event(Event {
            kind: EventKind::from_name(kind),
            subject: Arc::from("s"),
            phase: EventPhase::Instant,
            ts: Timestamp(1),
            attributes: Vec::new(),
            message: String::new(),
        })
    }

    fn regulator(regulated: &[Regulated]) -> Regulator {
        Regulator::new(
            None,
            Some(Sealer {
                key: SigningKey::from_bytes(&[3; 32]),
                chain: Chain::new("site", REGULATED_CHAIN),
                regulated: regulated.to_vec(),
            }),
        )
    }

    #[tokio::test]
    async fn regulated_records_are_sealed_in_order_and_others_are_not() {
        let records = vec![
            aggregate(Period::Minute),
            aggregate(Period::Hour),
            figures("potline", "day"),
            figures("emissions", "month"),
            figures("potline", "ytd"),
            figures("anode_effect", "day"),
            aggregate(Period::Day),
            event("anode_effect"),
            event(CONFIG_CHANGE),
        ];
        let mut r = regulator(&Regulated::DEFAULT);
        let seals = r.process(&mut records.clone()).await;
        let seqs: Vec<Option<u64>> = seals.iter().map(|s| s.as_ref().map(|s| s.seq)).collect();
        assert_eq!(
            seqs,
            vec![
                None,
                Some(1),
                Some(2),
                Some(3),
                None,
                None,
                Some(4),
                None,
                Some(5)
            ]
        );
        // Each seal signs the record's canonical JSON and links to the one before.
        let sealed: Vec<&LedgerRecord> = seals.iter().flatten().collect();
        assert_eq!(sealed[0].payload, payload_of(&records[1]));
        for pair in sealed.windows(2) {
            assert_eq!(pair[1].prev, pair[0].hash);
        }
        let key = SigningKey::from_bytes(&[3; 32]).verifying_key();
        let owned: Vec<LedgerRecord> = sealed.into_iter().cloned().collect();
        let report = crate::ledger::verify(&key, &owned);
        assert!(report.ok, "{report}");

        // Only what is listed: minute windows when asked for, no potline figures.
        let mut r = regulator(&[Regulated::StackMinute]);
        let seals = r.process(&mut records.clone()).await;
        let sealed: Vec<usize> = (0..records.len()).filter(|&i| seals[i].is_some()).collect();
        assert_eq!(sealed, vec![0, 8]);
    }

    #[tokio::test]
    async fn without_a_ledger_nothing_is_sealed() {
        let mut r = Regulator::new(None, None);
        let seals = r
            .process(&mut vec![aggregate(Period::Hour), event(CONFIG_CHANGE)])
            .await;
        assert_eq!(seals, vec![None, None]);
    }

    #[tokio::test]
    async fn retention_runs_on_the_records_clock_so_simulated_hours_are_kept() {
        // Windows of a simulated plant, made long before the wall clock's now (1970 here): the
        // first store of a run prunes, and must not take them for expired.
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::HistoryConfig {
            path: dir.path().join("history.db"),
            minute_retention: Duration::from_secs(3600),
            hour_retention: Duration::from_secs(86_400),
            day_retention: Duration::from_secs(30 * 86_400),
        };
        let store = Arc::new(HistoryStore::open(&cfg).unwrap());
        let mut r = Regulator::new(Some(store.clone()), None);
        r.process(&mut vec![aggregate(Period::Hour)]).await;
        let hours = store
            .windows_between(Period::Hour, Timestamp(0), Timestamp(0))
            .unwrap();
        assert_eq!(hours.len(), 1, "the hour was pruned by the wall clock");
    }
}
