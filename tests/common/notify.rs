//! The systemd notify socket, played by the test: `smeltwatch run` gets its path in
//! `NOTIFY_SOCKET` and sends its readiness, status and watchdog pings there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixDatagram;

pub struct NotifySocket {
    /// What `NOTIFY_SOCKET` must name.
    pub path: PathBuf,
    sock: UnixDatagram,
}

impl NotifySocket {
    /// A datagram socket bound at `dir/notify`.
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket { path, sock }
    }

    /// The next notification as text, past the start-up time extensions (`EXTEND_TIMEOUT_USEC=`)
    /// each spool open sends; fails the test after `within`.
    pub async fn next(&self, within: Duration) -> String {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = tokio::time::timeout(within, self.sock.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("a notification within {within:?}"))
                .unwrap();
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !msg.starts_with("EXTEND_TIMEOUT_USEC=") {
                return msg;
            }
        }
    }

    /// Like [`NotifySocket::next`], also past watchdog pings (`WATCHDOG=1`).
    pub async fn next_non_watchdog(&self, within: Duration) -> String {
        loop {
            let msg = self.next(within).await;
            if msg != "WATCHDOG=1" {
                return msg;
            }
        }
    }

    /// Every notification already queued, in order, without waiting (start-up time extensions
    /// and watchdog pings included).
    pub fn queued(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.try_recv(&mut buf) {
            notes.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        notes
    }
}
