//! Driving pollers directly: a configuration that must load, a pty pair for a serial line, the
//! readings of a batch, and the batches that arrive on a poller's channel.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use smeltwatch::config::{self, Config};
use smeltwatch::model::{Quality, ReadingBatch, Value};
use tokio::sync::mpsc;
use tokio_serial::SerialStream;

/// `toml` parsed as if read from `file`; fails the test with the problems and the text when it
/// is refused.
pub fn parse(toml: &str, file: &str) -> Config {
    match config::parse(toml, Path::new(file)) {
        Ok(c) => c,
        Err(e) => panic!("test configuration is invalid:\n{e}\n---\n{toml}"),
    }
}

/// The value and quality of `point` in `batch`; fails the test when the batch has no such
/// reading.
pub fn reading_of<'a>(batch: &'a ReadingBatch, point: &str) -> (&'a Option<Value>, Quality) {
    let r = batch
        .readings
        .iter()
        .find(|r| &*r.point == point)
        .unwrap_or_else(|| panic!("no reading for {point} in {batch:?}"));
    (&r.value, r.quality)
}

/// A pty pair standing for a serial line: (the master end, which a simulator serves; the slave
/// end, which must live as long as the test reads; the slave's path, for `[sources.serial]`).
pub fn pty_pair() -> (SerialStream, SerialStream, String) {
    use tokio_serial::SerialPort as _;
    let (master, slave) = SerialStream::pair().expect("a pty pair");
    let path = slave.name().expect("the pty slave has a path");
    (master, slave, path)
}

/// The first batch on `rx`, within 10 s (`what` says which when it does not come).
pub async fn first_batch_within_10s(
    rx: &mut mpsc::Receiver<ReadingBatch>,
    what: &str,
) -> ReadingBatch {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect(what)
        .unwrap()
}

/// A reading's value as a number; fails the test when it has none.
pub fn float(v: &Option<Value>) -> f64 {
    v.as_ref().and_then(Value::as_f64).expect("a numeric value")
}

/// Receive batches, grouped by device, until `done` says enough, with an overall deadline so
/// that a broken poller fails the test instead of hanging it.
pub async fn collect(
    rx: &mut mpsc::Receiver<ReadingBatch>,
    mut done: impl FnMut(&BTreeMap<String, Vec<ReadingBatch>>) -> bool,
) -> BTreeMap<String, Vec<ReadingBatch>> {
    let mut by_device: BTreeMap<String, Vec<ReadingBatch>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&by_device) {
        let batch = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("batches stopped arriving")
            .expect("pollers ended");
        by_device
            .entry(batch.device.to_string())
            .or_default()
            .push(batch);
    }
    by_device
}
