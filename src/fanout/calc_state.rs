//! The calculator stage as the fan-out runs it: the pure [`Pipeline`] plus its open state kept in
//! `calc-state.json` under the state directory, so that a restart mid-hour or mid-day resumes the
//! open windows instead of losing them.
//!
//! When the file is written: after every burst that produced calculator records (a window closed,
//! an event), every `flush` (the fan-out's timer) and at shutdown. It is written to a temporary file, synced
//! and renamed over the old one on the blocking pool ([`StateFile`]), so a power cut leaves the old
//! or the new snapshot, never half of one, and a slow disk does not stall the runtime. What a crash can still do (docs/METRICS.md, "Restarts"): samples taken after the last
//! write are lost (they count as missing), and windows closed after the last write are emitted
//! again after the restart (same subject, quantity and start: consumers drop duplicates as they
//! do for the spool's at-least-once delivery). A clean stop loses nothing and repeats nothing.

use std::path::Path;

use crate::calc::{Pipeline, PipelineSnapshot};
use crate::model::{ReadingBatch, Record, Timestamp};
use crate::state_file::StateFile;

/// File name of the snapshot in the state directory.
pub const CALC_STATE_FILE: &str = "calc-state.json";

/// The pipeline and where its open state lives.
#[derive(Debug)]
pub struct CalcStage {
    pipeline: Pipeline,
    file: StateFile,
    /// A flush happened since the last save: save even if it produced nothing.
    save_due: bool,
}

impl CalcStage {
    /// Wrap `pipeline`, resuming from the snapshot in `state_dir` if there is a usable one. A
    /// snapshot that cannot be read or parsed is logged and set aside (renamed `.bad`), never
    /// silently dropped.
    pub fn open(mut pipeline: Pipeline, state_dir: &Path) -> Self {
        let path = state_dir.join(CALC_STATE_FILE);
        match load(&path) {
            Ok(None) => {}
            Ok(Some(snap)) => {
                let latest = snap.latest;
                if pipeline.restore(snap) {
                    tracing::info!(file = %path.display(), latest = ?latest, "calculators resumed their open windows");
                } else {
                    tracing::warn!(file = %path.display(), "calculator snapshot of another format version; starting empty");
                }
            }
            Err(e) => {
                let bad = path.with_extension("json.bad");
                tracing::error!(file = %path.display(), moved_to = %bad.display(), "cannot read the calculator snapshot, starting empty: {e}");
                let _ = std::fs::rename(&path, &bad);
            }
        }
        CalcStage {
            pipeline,
            file: StateFile::new(path),
            save_due: false,
        }
    }

    /// The calculators, e.g. for a look at their snapshot.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Feed one batch (the caller saves with [`CalcStage::saved_after`] once the records are
    /// handed on).
    pub fn on_batch(&mut self, batch: &ReadingBatch) -> Vec<Record> {
        self.pipeline.on_batch(batch)
    }

    /// Close windows whose end passed (the caller saves with [`CalcStage::saved_after`]).
    pub fn flush(&mut self, now: Timestamp) -> Vec<Record> {
        self.save_due = true;
        self.pipeline.flush(now)
    }

    /// Call once `records` are in the spools: saves the state if a flush happened or the
    /// calculators produced any of them (a window closed, an event). Saving after the hand-on,
    /// not before, means a crash in between repeats records rather than losing them.
    pub async fn saved_after(&mut self, records: &[Record]) {
        self.saved_after_derived(super::any_derived(records)).await;
    }

    /// [`saved_after`](Self::saved_after), told only whether the records held anything other
    /// than poll batches: the fan-out's records move on into the spools (their decoded forms).
    pub async fn saved_after_derived(&mut self, derived: bool) {
        if self.save_due || derived {
            self.save_due = false;
            self.save().await;
        }
    }

    /// Write the snapshot now (logged, not fatal, when the disk refuses). The snapshot is taken
    /// when this is called; the write runs on the blocking pool.
    pub async fn save(&self) {
        let written = match serde_json::to_vec(&self.pipeline.snapshot()) {
            Ok(body) => self.file.write(body).await,
            Err(e) => Err(std::io::Error::other(e)),
        };
        if let Err(e) = written {
            tracing::error!(file = %self.file.path().display(), "cannot save the calculator snapshot: {e}");
        }
    }
}

/// Read a snapshot; `Ok(None)` when there is none.
pub fn load(path: &Path) -> std::io::Result<Option<PipelineSnapshot>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
