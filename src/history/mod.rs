//! The history store: every closed aggregate window the calculators produce, the potlines' daily
//! and monthly figures, and the ledger's chain, in one SQLite file.
//!
//! # Why
//! A regulator's platform asks for windows it missed (HJ 212 2051/2061/2031 with `BeginTime` and
//! `EndTime`), possibly days later and after the gateway restarted. The spools cannot answer: a
//! record leaves its spool once delivered. So the fan-out also writes every closed window here,
//! and the HJ 212 uplink reads them back through [`HistorySource`]. The ledger keeps its chain in
//! the same file, so the chain continues across restarts and every signed record can be exported
//! again.
//!
//! # Invariants
//! - One window of one quantity of one subject is stored once: storing it again (a recomputed
//!   window) replaces it, keeping the order of the other quantities.
//! - Windows come back in the order they were stored within a window (the packet's item order),
//!   windows ordered by start, then subject.
//! - Retention is per period; day retention also applies to monthly windows, to the potlines'
//!   figures and to ledger records. The last ledger record is never pruned: it is the chain's head.
//! - WAL, `synchronous = FULL`: what was stored survives a power cut.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::config::HistoryConfig;
use crate::ledger::LedgerRecord;
use crate::model::{Aggregate, MetricBatch, Period, Record, Timestamp};

/// Stored closed windows, for a regulator platform's history requests: [`HistoryStore`]
/// implements it, the HJ 212 uplink reads the windows through it.
pub trait HistorySource: Send + Sync {
    /// The closed windows of `period` whose start lies in `begin..=end`, oldest first, each as the
    /// aggregates of one subject and window. Called on a blocking thread.
    fn windows(&self, period: Period, begin: Timestamp, end: Timestamp) -> Vec<Vec<Aggregate>>;
}

/// How often old rows are pruned (at most).
const PRUNE_EVERY_MS: i64 = 3_600_000;

/// A history store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// SQLite failed on the file.
    #[error("history store {path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The directory of the file could not be created.
    #[error("history store {path}: cannot create its directory: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A stored row is not what this build wrote.
    #[error("history store {path}: unreadable row: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The history store (see the module documentation). Cheap to share behind an `Arc`; every
/// method blocks on SQLite, so async callers use `spawn_blocking`.
#[derive(Debug)]
pub struct HistoryStore {
    path: PathBuf,
    cfg: HistoryConfig,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    last_prune_ms: i64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY,
    period TEXT NOT NULL,
    subject TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    quantity TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (period, subject, start_ms, quantity)
);
CREATE INDEX IF NOT EXISTS windows_by_start ON windows (period, start_ms);
CREATE TABLE IF NOT EXISTS figures (
    id INTEGER PRIMARY KEY,
    calc TEXT NOT NULL,
    line TEXT NOT NULL,
    period TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (calc, line, period, ts_ms)
);
CREATE TABLE IF NOT EXISTS ledger (
    chain TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stored_ms INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (chain, seq)
);
";

/// The `period` label of a potline figures batch (`day` or `month`), when it is one.
pub fn figures_period(batch: &MetricBatch) -> Option<&str> {
    let first = batch.metrics.first()?;
    let label = |key: &str| {
        first
            .labels
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| &**v)
    };
    let period = label("period")?;
    label("line")?;
    matches!(period, "day" | "month").then_some(period)
}

fn line_of(batch: &MetricBatch) -> Option<&str> {
    batch
        .metrics
        .first()?
        .labels
        .iter()
        .find(|(k, _)| &**k == "line")
        .map(|(_, v)| &**v)
}

impl HistoryStore {
    /// Open (or create) the store described by `cfg`.
    pub fn open(cfg: &HistoryConfig) -> Result<HistoryStore, HistoryError> {
        let path = cfg.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| HistoryError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let err = |source| HistoryError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(HistoryStore {
            path: path.clone(),
            cfg: cfg.clone(),
            inner: Mutex::new(Inner {
                conn,
                last_prune_ms: i64::MIN,
            }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sqlite(&self) -> impl Fn(rusqlite::Error) -> HistoryError + '_ {
        move |source| HistoryError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// A stored `what` (a window, figures, a ledger record) that does not parse back, as
    /// [`HistoryError::Corrupt`].
    fn corrupt<E: std::fmt::Display>(&self, what: &'static str) -> impl Fn(E) -> HistoryError + '_ {
        move |e| HistoryError::Corrupt {
            path: self.path.clone(),
            reason: format!("{what}: {e}"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Store the closed windows and potline figures among `records`, and the ledger records, in
    /// one transaction; then prune what is older than its retention (at most hourly, by `now`).
    /// Other records are ignored. Returns how many windows and figures were stored.
    pub fn store(
        &self,
        records: &[Record],
        sealed: &[LedgerRecord],
        now: Timestamp,
    ) -> Result<usize, HistoryError> {
        let err = self.sqlite();
        let mut inner = self.lock();
        let tx = inner.conn.transaction().map_err(&err)?;
        let mut stored = 0;
        {
            let mut window = tx
                .prepare_cached(
                    "INSERT INTO windows (period, subject, start_ms, end_ms, quantity, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (period, subject, start_ms, quantity)
                     DO UPDATE SET end_ms = excluded.end_ms, body = excluded.body",
                )
                .map_err(&err)?;
            let mut figures = tx
                .prepare_cached(
                    "INSERT INTO figures (calc, line, period, ts_ms, body) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (calc, line, period, ts_ms) DO UPDATE SET body = excluded.body",
                )
                .map_err(&err)?;
            for record in records {
                match record {
                    Record::Aggregate(a) => {
                        let body = serde_json::to_string(a).expect("an aggregate serialises");
                        window
                            .execute(params![
                                a.period.as_str(),
                                &*a.subject,
                                a.start.0,
                                a.end.0,
                                &*a.quantity,
                                body
                            ])
                            .map_err(&err)?;
                        stored += 1;
                    }
                    Record::Metrics(m) => {
                        let (Some(period), Some(line)) = (figures_period(m), line_of(m)) else {
                            continue;
                        };
                        let body = serde_json::to_string(m).expect("a metric batch serialises");
                        figures
                            .execute(params![&*m.calc, line, period, m.ts.0, body])
                            .map_err(&err)?;
                        stored += 1;
                    }
                    Record::Batch(_) | Record::Event(_) => {}
                }
            }
            let mut ledger = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO ledger (chain, seq, stored_ms, record) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(&err)?;
            for r in sealed {
                let seq = i64::try_from(r.seq).unwrap_or(i64::MAX);
                ledger
                    .execute(params![r.stream, seq, now.0, r.to_json()])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)?;
        if now.0.saturating_sub(inner.last_prune_ms) >= PRUNE_EVERY_MS {
            inner.last_prune_ms = now.0;
            drop(inner);
            self.prune(now)?;
        }
        Ok(stored)
    }

    /// Delete windows, figures and ledger records older than their retention at `now` (the
    /// chain's last record stays). Returns the number of rows deleted.
    pub fn prune(&self, now: Timestamp) -> Result<usize, HistoryError> {
        let err = self.sqlite();
        let inner = self.lock();
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let cutoff = |d: Duration| now.0.saturating_sub(ms(d));
        let mut deleted = 0;
        for (period, retention) in [
            (Period::Minute, self.cfg.minute_retention),
            (Period::Hour, self.cfg.hour_retention),
            (Period::Day, self.cfg.day_retention),
            (Period::Month, self.cfg.day_retention),
        ] {
            deleted += inner
                .conn
                .execute(
                    "DELETE FROM windows WHERE period = ?1 AND end_ms < ?2",
                    params![period.as_str(), cutoff(retention)],
                )
                .map_err(&err)?;
        }
        let day = cutoff(self.cfg.day_retention);
        deleted += inner
            .conn
            .execute("DELETE FROM figures WHERE ts_ms < ?1", params![day])
            .map_err(&err)?;
        deleted += inner
            .conn
            .execute(
                "DELETE FROM ledger WHERE stored_ms < ?1
                 AND seq < (SELECT MAX(seq) FROM ledger AS l WHERE l.chain = ledger.chain)",
                params![day],
            )
            .map_err(&err)?;
        Ok(deleted)
    }

    /// The stored windows of `period` whose start lies in `begin..=end`: see [`HistorySource`].
    pub fn windows_between(
        &self,
        period: Period,
        begin: Timestamp,
        end: Timestamp,
    ) -> Result<Vec<Vec<Aggregate>>, HistoryError> {
        let aggregates: Vec<Aggregate> = self.select_texts(
            "SELECT body FROM windows WHERE period = ?1 AND start_ms BETWEEN ?2 AND ?3
             ORDER BY start_ms, subject, id",
            params![period.as_str(), begin.0, end.0],
            |body| serde_json::from_str(body).map_err(self.corrupt("window")),
        )?;
        let mut out: Vec<Vec<Aggregate>> = Vec::new();
        for a in aggregates {
            match out.last_mut() {
                Some(w) if w[0].subject == a.subject && w[0].start == a.start => w.push(a),
                _ => out.push(vec![a]),
            }
        }
        Ok(out)
    }

    /// The potlines' daily or monthly figures (`period` = `day` or `month`) with their instant
    /// in `begin..=end`, in time order.
    pub fn figures_between(
        &self,
        period: &str,
        begin: Timestamp,
        end: Timestamp,
    ) -> Result<Vec<MetricBatch>, HistoryError> {
        self.select_texts(
            "SELECT body FROM figures WHERE period = ?1 AND ts_ms BETWEEN ?2 AND ?3
             ORDER BY ts_ms, line, id",
            params![period, begin.0, end.0],
            |body| serde_json::from_str(body).map_err(self.corrupt("figures")),
        )
    }

    /// The last record of ledger chain `chain`, to resume it after a restart.
    pub fn ledger_head(&self, chain: &str) -> Result<Option<LedgerRecord>, HistoryError> {
        let err = self.sqlite();
        let inner = self.lock();
        let text: Option<String> = inner
            .conn
            .query_row(
                "SELECT record FROM ledger WHERE chain = ?1 ORDER BY seq DESC LIMIT 1",
                params![chain],
                |r| r.get(0),
            )
            .optional()
            .map_err(&err)?;
        text.map(|t| LedgerRecord::from_json(&t).map_err(self.corrupt("ledger record")))
            .transpose()
    }

    /// Every stored record of ledger chain `chain`, in seq order (for re-export).
    pub fn ledger_records(&self, chain: &str) -> Result<Vec<LedgerRecord>, HistoryError> {
        self.select_texts(
            "SELECT record FROM ledger WHERE chain = ?1 ORDER BY seq",
            params![chain],
            |text| LedgerRecord::from_json(text).map_err(self.corrupt("ledger record")),
        )
    }

    /// Runs `sql`, which selects one text column, and parses each row's text with `parse`.
    fn select_texts<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        parse: impl Fn(&str) -> Result<T, HistoryError>,
    ) -> Result<Vec<T>, HistoryError> {
        let err = self.sqlite();
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(sql).map_err(&err)?;
        let rows = stmt
            .query_map(params, |r| r.get::<_, String>(0))
            .map_err(&err)?;
        rows.map(|row| parse(&row.map_err(&err)?)).collect()
    }
}

impl HistorySource for HistoryStore {
    fn windows(&self, period: Period, begin: Timestamp, end: Timestamp) -> Vec<Vec<Aggregate>> {
        self.windows_between(period, begin, end)
            .unwrap_or_else(|e| {
                tracing::error!("history request: {e}");
                Vec::new()
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{Metric, Quality};

    const H: i64 = 3_600_000;
    const T0: i64 = 1_740_790_800_000;

    fn cfg(dir: &Path) -> HistoryConfig {
        HistoryConfig {
            path: dir.join("history.db"),
            minute_retention: Duration::from_secs(3600),
            hour_retention: Duration::from_secs(86_400),
            day_retention: Duration::from_secs(30 * 86_400),
        }
    }

    fn agg(subject: &str, quantity: &str, period: Period, start: i64, avg: f64) -> Aggregate {
        let len = match period {
            Period::Minute => 60_000,
            Period::Hour => H,
            Period::Day => 24 * H,
            Period::Month => 31 * 24 * H,
        };
        Aggregate {
            subject: Arc::from(subject),
            quantity: Arc::from(quantity),
            unit: Arc::from("mg/m3"),
            period,
            start: Timestamp(start),
            end: Timestamp(start + len),
            avg: Some(avg),
            min: Some(avg - 1.0),
            max: Some(avg + 1.0),
            total: None,
            total_unit: None,
            samples: 60,
            expected: 60,
            valid: true,
            quality: Quality::Good,
            substituted: 0,
        }
    }

    #[test]
    fn windows_come_back_grouped_in_stored_order_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<Record> = vec![
            Record::Aggregate(agg("gtc1_stack", "so2_mg_m3", Period::Hour, T0, 80.0)),
            Record::Aggregate(agg("gtc1_stack", "nox_mg_m3", Period::Hour, T0, 40.0)),
            Record::Aggregate(agg("gtc1_stack", "so2_mg_m3", Period::Minute, T0, 81.0)),
            Record::Aggregate(agg("gtc1_stack", "so2_mg_m3", Period::Hour, T0 + H, 82.0)),
            Record::Aggregate(agg("gtc1_stack", "nox_mg_m3", Period::Hour, T0 + H, 42.0)),
            Record::Aggregate(agg(
                "gtc1_stack",
                "so2_mg_m3",
                Period::Hour,
                T0 + 2 * H,
                83.0,
            )),
        ];
        {
            let store = HistoryStore::open(&cfg(dir.path())).unwrap();
            assert_eq!(store.store(&records, &[], Timestamp(T0)).unwrap(), 6);
        }
        let store = HistoryStore::open(&cfg(dir.path())).unwrap();
        let w = store
            .windows_between(Period::Hour, Timestamp(T0), Timestamp(T0 + H))
            .unwrap();
        assert_eq!(w.len(), 2, "the third hour starts after EndTime");
        let q: Vec<Vec<(&str, Option<f64>)>> = w
            .iter()
            .map(|w| w.iter().map(|a| (&*a.quantity, a.avg)).collect())
            .collect();
        assert_eq!(
            q,
            vec![
                vec![("so2_mg_m3", Some(80.0)), ("nox_mg_m3", Some(40.0))],
                vec![("so2_mg_m3", Some(82.0)), ("nox_mg_m3", Some(42.0))],
            ]
        );
        let minutes = store.windows(Period::Minute, Timestamp(T0), Timestamp(T0));
        assert_eq!(minutes.len(), 1);
        assert_eq!(minutes[0][0].avg, Some(81.0));
    }

    #[test]
    fn a_window_stored_again_replaces_the_old_values() {
        let dir = tempfile::tempdir().unwrap();
        let store = HistoryStore::open(&cfg(dir.path())).unwrap();
        let first = Record::Aggregate(agg("s", "so2_mg_m3", Period::Hour, T0, 80.0));
        let again = Record::Aggregate(agg("s", "so2_mg_m3", Period::Hour, T0, 99.0));
        store.store(&[first], &[], Timestamp(T0)).unwrap();
        store.store(&[again], &[], Timestamp(T0)).unwrap();
        let w = store
            .windows_between(Period::Hour, Timestamp(T0), Timestamp(T0))
            .unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].len(), 1);
        assert_eq!(w[0][0].avg, Some(99.0));
    }

    #[test]
    fn retention_is_per_period_and_keeps_the_ledger_head() {
        let dir = tempfile::tempdir().unwrap();
        let store = HistoryStore::open(&cfg(dir.path())).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let mut chain = crate::ledger::Chain::new("site", "regulated");
        let sealed = vec![chain.append(&key, "a"), chain.append(&key, "b")];
        store
            .store(
                &[
                    Record::Aggregate(agg("s", "so2_mg_m3", Period::Minute, T0, 1.0)),
                    Record::Aggregate(agg("s", "so2_mg_m3", Period::Hour, T0, 2.0)),
                    Record::Aggregate(agg("s", "so2_mg_m3", Period::Day, T0, 3.0)),
                ],
                &sealed,
                Timestamp(T0),
            )
            .unwrap();
        // Two days later: the minute (1 h) and the hour (1 day) are gone, the day (30 days) stays.
        let deleted = store.prune(Timestamp(T0 + 48 * H)).unwrap();
        assert_eq!(deleted, 2);
        let all = |p| {
            store
                .windows_between(p, Timestamp(0), Timestamp(i64::MAX))
                .unwrap()
        };
        assert!(all(Period::Minute).is_empty());
        assert!(all(Period::Hour).is_empty());
        assert_eq!(all(Period::Day).len(), 1);
        // Forty days later the day is gone, and only the chain's head remains of the ledger.
        store.prune(Timestamp(T0 + 40 * 24 * H)).unwrap();
        assert!(all(Period::Day).is_empty());
        let head = store.ledger_head("regulated").unwrap().unwrap();
        assert_eq!(head, sealed[1]);
        assert_eq!(
            store.ledger_records("regulated").unwrap(),
            vec![sealed[1].clone()]
        );
    }

    #[test]
    fn potline_figures_of_days_and_months_are_kept_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = HistoryStore::open(&cfg(dir.path())).unwrap();
        let batch = |period: &str, ts: i64| MetricBatch {
            calc: Arc::from("potline"),
            ts: Timestamp(ts),
            metrics: vec![Metric {
                name: Arc::from("ac_energy_kwh"),
                value: Some(1234.5),
                unit: Arc::from("kWh"),
                quality: Quality::Good,
                ts: Timestamp(ts),
                labels: vec![
                    (Arc::from("line"), Arc::from("potline1")),
                    (Arc::from("period"), Arc::from(period)),
                ],
            }],
        };
        let stored = store
            .store(
                &[
                    Record::Metrics(batch("day", T0)),
                    Record::Metrics(batch("month", T0)),
                    Record::Metrics(batch("ytd", T0)),
                ],
                &[],
                Timestamp(T0),
            )
            .unwrap();
        assert_eq!(stored, 2, "year-to-date figures are not closed periods");
        let days = store
            .figures_between("day", Timestamp(T0), Timestamp(T0))
            .unwrap();
        assert_eq!(days, vec![batch("day", T0)]);
    }
}
