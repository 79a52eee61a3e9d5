//! The agent's state files (`calc-state.json`, `completeness.json`) are written off the runtime's
//! threads: a disk that makes `open`, `write` or `fsync` wait must not stall the other tasks.
//!
//! The temporary file each save writes first is made a FIFO: opening it for writing blocks until a
//! reader comes, as a slow disk would block. The save runs on a single-threaded runtime beside
//! another task; that task can only run (and then read the FIFO, which releases the write) if the
//! save left the runtime's thread free.
#![cfg(unix)]

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use smeltwatch::calc::{CalcConfig, Pipeline, PipelineSnapshot};
use smeltwatch::completeness::{Completeness, STATE_FILE, State};
use smeltwatch::fanout::calc_state::{CALC_STATE_FILE, CalcStage};
use smeltwatch::model::Timestamp;

/// Runs `save` on a single-threaded runtime while `tmp` is a FIFO nobody reads. Returns whether
/// another task of the runtime ran while the save waited (that task then reads the FIFO), and
/// the bytes written. A save that blocks the runtime's only thread is released by a watchdog
/// thread after 5 s, so that the test fails instead of hanging.
fn runtime_free_while_saving(tmp: &Path, save: impl Future<Output = ()>) -> (bool, Vec<u8>) {
    let made = std::process::Command::new("mkfifo")
        .arg(tmp)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let released = Arc::new(AtomicBool::new(false));
    std::thread::spawn({
        let (tmp, released) = (tmp.to_owned(), released.clone());
        move || {
            std::thread::sleep(Duration::from_secs(5));
            if !released.swap(true, Ordering::SeqCst) {
                let _ = std::fs::read(&tmp);
            }
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tmp.to_owned();
    rt.block_on(async move {
        let other_task = async {
            tokio::task::yield_now().await;
            let free = !released.swap(true, Ordering::SeqCst);
            let bytes = if free {
                tokio::task::spawn_blocking(move || std::fs::read(&tmp))
                    .await
                    .expect("reader")
                    .expect("read the FIFO")
            } else {
                Vec::new()
            };
            (free, bytes)
        };
        tokio::join!(save, other_task).1
    })
}

#[test]
fn saving_the_calculator_snapshot_leaves_the_runtime_free() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg: CalcConfig =
        toml::from_str("gwp = \"ar5\"\ngrid_factor = \"qinghai-2022\"\nutc_offset_hours = 8\n")
            .expect("calc config parses");
    let stage = CalcStage::open(Pipeline::new(&cfg).expect("pipeline"), dir.path());
    let tmp = dir.path().join(format!("{CALC_STATE_FILE}.tmp"));
    let (free, bytes) = runtime_free_while_saving(&tmp, stage.save());
    assert!(
        free,
        "the runtime's thread was blocked until the snapshot's file could be written"
    );
    let _: PipelineSnapshot = serde_json::from_slice(&bytes).expect("a whole snapshot");
}

#[test]
fn a_completeness_checkpoint_leaves_the_runtime_free() {
    let dir = tempfile::tempdir().expect("temp dir");
    let toml = format!(
        "site = \"state\"\nstate_dir = \"{}\"\n",
        dir.path().display()
    );
    let cfg = smeltwatch::config::parse(&toml, &dir.path().join("a.toml")).expect("config");
    let ledger = Completeness::open(&cfg, Timestamp::now());
    let tmp = dir.path().join(format!("{STATE_FILE}.tmp"));
    let (free, bytes) = runtime_free_while_saving(&tmp, ledger.checkpoint());
    assert!(
        free,
        "the runtime's thread was blocked until the completeness file could be written"
    );
    let _: State = serde_json::from_slice(&bytes).expect("a whole state");
}
