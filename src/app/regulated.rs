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

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ed25519_dalek::SigningKey;

use crate::config::{Config, Regulated};
use crate::history::{HistoryStore, figures_period};
use crate::ledger::capture::{CONFIG_CHANGE, REGULATED_CHAIN, payload_of};
use crate::ledger::{Chain, LedgerRecord};
use crate::model::{Event, EventPhase, Period, Record, Timestamp, Value};
use crate::publish::hj212_tcp::HistorySource;

/// The history store and the ledger of a running agent.
pub(super) struct Regulator {
    history: Option<Arc<HistoryStore>>,
    ledger: Option<Sealer>,
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
    pub(super) fn open(cfg: &Config) -> anyhow::Result<Regulator> {
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
        Ok(Regulator { history, ledger })
    }

    /// The store the HJ 212 uplinks answer history requests from.
    pub(super) fn history_source(&self) -> Option<Arc<dyn HistorySource>> {
        self.history.clone().map(|h| h as Arc<dyn HistorySource>)
    }

    /// The record of the configuration this agent starts with, when the ledger is on.
    pub(super) fn config_change(&self, cfg: &Config) -> Option<Record> {
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
            kind: Arc::from(CONFIG_CHANGE),
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
            },
            Record::Metrics(m) if matches!(&*m.calc, "potline" | "emissions") => {
                match figures_period(m) {
                    Some("day") => wanted(Regulated::PotlineDay),
                    Some("month") => wanted(Regulated::PotlineMonth),
                    _ => false,
                }
            }
            Record::Event(e) => &*e.kind == CONFIG_CHANGE,
            Record::Metrics(_) | Record::Batch(_) => false,
        }
    }

    /// Seal the regulated records among `records` and store the windows, figures and seals in
    /// the history store (retrying while it fails: acquisition backs up rather than forking the
    /// chain). Returns one entry per record: its seal, or `None`.
    pub(super) async fn process(&mut self, records: &[Record]) -> Vec<Option<LedgerRecord>> {
        let mut seals = Vec::with_capacity(records.len());
        for record in records {
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
            .filter(|r| matches!(r, Record::Aggregate(_) | Record::Metrics(_)))
            .cloned()
            .collect();
        let sealed: Vec<LedgerRecord> = seals.iter().flatten().cloned().collect();
        if kept.is_empty() && sealed.is_empty() {
            return seals;
        }
        let (kept, sealed) = (Arc::new(kept), Arc::new(sealed));
        let mut delay = Duration::from_millis(100);
        loop {
            let (store, k, s) = (store.clone(), kept.clone(), sealed.clone());
            let result =
                tokio::task::spawn_blocking(move || store.store(&k, &s, Timestamp::now())).await;
            match result {
                Ok(Ok(_)) => return seals,
                Ok(Err(e)) => tracing::error!("history store failed, retrying in {delay:?}: {e}"),
                Err(e) => tracing::error!("history store task failed, retrying in {delay:?}: {e}"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}
