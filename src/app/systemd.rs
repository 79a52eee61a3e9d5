//! systemd integration: readiness, status and the watchdog over `$NOTIFY_SOCKET` (sd_notify(3)).
//!
//! The protocol is one datagram of `KEY=VALUE` lines to a Unix socket whose path is in
//! `NOTIFY_SOCKET` (a leading `@` means the abstract namespace). Without that variable (not started
//! by systemd with `Type=notify`) every call is a no-op.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go, if anywhere.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: Option<std::path::PathBuf>,
    abstract_name: Option<Vec<u8>>,
}

impl Notifier {
    /// From the environment (`NOTIFY_SOCKET`).
    pub fn from_env() -> Self {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(path) => Self::for_socket(&path.to_string_lossy()),
            None => Notifier {
                socket: None,
                abstract_name: None,
            },
        }
    }

    /// For an explicit socket path (`@name` for the abstract namespace).
    pub fn for_socket(path: &str) -> Self {
        match path.strip_prefix('@') {
            Some(name) => Notifier {
                socket: None,
                abstract_name: Some(name.as_bytes().to_vec()),
            },
            None => Notifier {
                socket: Some(path.into()),
                abstract_name: None,
            },
        }
    }

    /// Whether a notify socket is configured.
    pub fn enabled(&self) -> bool {
        self.socket.is_some() || self.abstract_name.is_some()
    }

    /// Send one notification (`READY=1`, `WATCHDOG=1`, `RELOADING=1`, `STATUS=…`).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        if let Some(path) = &self.socket {
            sock.send_to(state.as_bytes(), path)?;
        } else if let Some(name) = &self.abstract_name {
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
            }
            #[cfg(not(target_os = "linux"))]
            let _ = name;
        }
        Ok(())
    }

    /// Notify, logging (not failing) on error: systemd going away must not stop the agent.
    pub fn notify_or_log(&self, state: &str) {
        if self.enabled()
            && let Err(e) = self.notify(state)
        {
            tracing::warn!("systemd notification {state:?} failed: {e}");
        }
    }
}

/// The watchdog period systemd expects (`WATCHDOG_USEC`, only if `WATCHDOG_PID` is ours or unset).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::for_socket(path.to_str().unwrap());
        assert!(n.enabled());
        n.notify("READY=1\nSTATUS=polling 3 sources").unwrap();
        let mut buf = [0u8; 128];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=polling 3 sources");
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        let n = Notifier {
            socket: None,
            abstract_name: None,
        };
        assert!(!n.enabled());
        n.notify_or_log("READY=1");
    }
}
