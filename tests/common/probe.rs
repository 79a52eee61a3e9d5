//! Probes of a running agent from outside: its HTTP endpoint (`/readyz`, `/metrics`) and a
//! small file system to fill up under its `state_dir`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A tmpfs mounted on a fresh directory, unmounted on drop.
pub struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    pub fn mount(size: &str) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(status.success(), "mount -t tmpfs needs root");
        SmallFs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write a file until the file system refuses more; returns its path.
    pub fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// `GET path` on the agent's HTTP endpoint: (status code, body); code 0 with the error as the
/// body while nothing listens (an agent still starting).
pub async fn get(port: u16, path: &str) -> (u16, String) {
    let mut conn = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(c) => c,
        Err(e) => return (0, e.to_string()),
    };
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    conn.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The sum of the samples of metric family `name` whose labels contain `label`.
pub fn metric_sum(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The agent's HTTP endpoint on `live`, served with `opts` on a free loopback port: its address,
/// what stops it and its task.
pub async fn serve_http(
    live: std::sync::Arc<smeltwatch::live::LiveState>,
    opts: smeltwatch::http::HttpOptions,
) -> (
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<Result<(), smeltwatch::http::HttpError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(smeltwatch::http::serve(listener, live, opts, stop.clone()));
    (addr, stop, server)
}

/// The readiness verdict on `snap` is not ready, with a reason that contains `reason`.
pub fn assert_not_ready_for(snap: &smeltwatch::http::snapshot::Snapshot, reason: &str) {
    let verdict = smeltwatch::http::snapshot::readiness(snap, &Default::default());
    assert!(!verdict.ready);
    assert!(
        verdict.reasons.iter().any(|r| r.contains(reason)),
        "{:?}",
        verdict.reasons
    );
}
