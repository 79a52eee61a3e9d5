//! State files (`calc-state.json`, `completeness.json`) replaced whole, off the async workers.
//!
//! A write goes to `<name>.tmp`, is synced, renamed over the file, and the directory is synced, so
//! that a power cut leaves the old or the new content, never half of one, and the rename itself
//! survives. `fsync` can take a long time on a busy or failing disk (seconds on an SD card), so it
//! runs on tokio's blocking pool: an async worker that waited for it would stall every task
//! scheduled on it (pollers, uplinks, the HTTP server).
//!
//! Writes land in the order they were asked for: [`StateFile::write`] takes a ticket when it is
//! called, and a write whose ticket is older than the one that last landed is skipped, so a
//! snapshot never replaces a later one that finished first. The file's lock is held by the
//! blocking thread for the whole write, so two writes never share the temporary file.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// One state file and the order of its writes.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    order: Arc<WriteOrder>,
}

#[derive(Debug, Default)]
struct WriteOrder {
    /// The last ticket handed out.
    issued: AtomicU64,
    /// The ticket of the content on disk (0: none written by this process).
    landed: Mutex<u64>,
}

impl StateFile {
    /// The file at `path`; nothing is read or written yet.
    pub fn new(path: PathBuf) -> Self {
        StateFile {
            path,
            order: Arc::new(WriteOrder::default()),
        }
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replace the file with `bytes` on the blocking pool. The write is queued when this is
    /// called (not when the future is first polled) and completes even if the future is dropped;
    /// awaiting it gives the outcome. A write overtaken by a later one that already landed does
    /// nothing and reports `Ok`. Needs a tokio runtime.
    pub fn write(
        &self,
        bytes: Vec<u8>,
    ) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
        let ticket = self.order.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let order = self.order.clone();
        let path = self.path.clone();
        let job = tokio::task::spawn_blocking(move || {
            // A panic while writing leaves at worst a stale temporary file: the lock stays usable.
            let mut landed = order.landed.lock().unwrap_or_else(PoisonError::into_inner);
            if *landed > ticket {
                return Ok(());
            }
            replace(&path, &bytes)?;
            *landed = ticket;
            Ok(())
        });
        async move { job.await.map_err(std::io::Error::other)? }
    }
}

/// Temporary file, fsync, rename, fsync of the directory.
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_write_asked_for_wins_whatever_order_they_finish_in() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state.json"));
        // Sixty-four writes queued at once run on several blocking threads.
        let writes: Vec<_> = (0..64)
            .map(|i| file.write(format!("{{\"n\":{i}}}").into_bytes()))
            .collect();
        for w in writes.into_iter().rev() {
            w.await.unwrap();
        }
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "{\"n\":63}");
        assert!(!dir.path().join("state.json.tmp").exists());
        // A later write replaces it again.
        file.write(b"{\"n\":64}".to_vec()).await.unwrap();
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "{\"n\":64}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_sees_a_whole_content_or_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state.json"));
        let contents: Vec<String> = (0..40).map(|i| format!("{i:04}").repeat(50_000)).collect();
        file.write(contents[0].clone().into_bytes()).await.unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = std::thread::spawn({
            let (path, stop, contents) = (file.path().to_owned(), stop.clone(), contents.clone());
            move || {
                let mut reads = 0;
                while !stop.load(Ordering::SeqCst) {
                    let seen = std::fs::read_to_string(&path).unwrap();
                    assert!(
                        contents.contains(&seen),
                        "a partial file of {} bytes",
                        seen.len()
                    );
                    reads += 1;
                }
                reads
            }
        });
        for c in &contents[1..] {
            file.write(c.clone().into_bytes()).await.unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), contents[39]);
    }

    #[tokio::test]
    async fn a_failed_write_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("missing").join("state.json"));
        let err = file.write(b"{}".to_vec()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
