//! The connection of a poller to its source, kept the same way whatever the protocol: one
//! attempt at a time within a timeout, a failed one followed by the reconnect [`Backoff`], the
//! outage logged once when it starts and once when it ends, and the end of every exchange kept
//! for the gap before the next.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{Instant, sleep_until, timeout};

use super::{Backoff, PollerStats};
use crate::config::HostPort;

/// Why a poller has no connection to its source: it tells apart what happened to the link, so
/// the log and the breaker see the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The last attempt failed and its backoff has not run out: no attempt was made.
    #[error("reconnect backoff")]
    Backoff,
    /// The TCP connection was refused or failed.
    #[error(transparent)]
    Tcp(SharedError<io::Error>),
    /// The serial port could not be opened or set up.
    #[error(transparent)]
    Serial(SharedError<io::Error>),
    /// No connection within the source's timeout (at least 1 s).
    #[error("connect timed out")]
    TimedOut,
}

/// An error that can be cloned and compared, for the error types that must be (a Modbus write's
/// outcome is a public `Clone + Eq` type) around one that is neither (`io::Error`, tokio-modbus's
/// errors). The error itself is kept, shared in an `Arc`, so its kind, OS code and source stay
/// readable; two are equal when their messages are, which is all a caller can tell apart.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SharedError<E: std::error::Error + 'static>(Arc<E>);

impl<E: std::error::Error + 'static> SharedError<E> {
    /// The error.
    pub fn get(&self) -> &E {
        &self.0
    }
}

impl<E: std::error::Error + 'static> Clone for SharedError<E> {
    fn clone(&self) -> Self {
        SharedError(self.0.clone())
    }
}

impl<E: std::error::Error + 'static> From<E> for SharedError<E> {
    fn from(e: E) -> Self {
        SharedError(Arc::new(e))
    }
}

impl<E: std::error::Error + 'static> PartialEq for SharedError<E> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl<E: std::error::Error + 'static> Eq for SharedError<E> {}

/// A (re)connecting link to one source, holding the protocol's connection `C` while it is up.
pub(crate) struct Link<C> {
    conn: Option<C>,
    /// When the next connect attempt may go after a failed one.
    backoff: Backoff,
    /// End of the previous exchange, for the gap before the next.
    last_exchange: Option<Instant>,
    /// Whether the last connect attempt failed (to log state changes once).
    down: bool,
    stats: Arc<PollerStats>,
}

impl<C> Link<C> {
    /// A link with no connection yet, reconnecting with a backoff from `reconnect_min` up to
    /// `reconnect_max`; connects are counted in `stats`.
    pub(crate) fn new(
        reconnect_min: Duration,
        reconnect_max: Duration,
        stats: Arc<PollerStats>,
    ) -> Self {
        Link {
            conn: None,
            backoff: Backoff::new(reconnect_min, reconnect_max),
            last_exchange: None,
            down: false,
            stats,
        }
    }

    /// Connect with `attempt` unless connected already. The attempt is given `limit` (at least
    /// 1 s) and is not made while the backoff of a failed one runs. `source` and `peer` name the
    /// link in the log, where an outage shows once when it starts and once when it ends.
    pub(crate) async fn connect(
        &mut self,
        source: &str,
        peer: &(dyn fmt::Display + Sync),
        limit: Duration,
        attempt: impl Future<Output = Result<C, ConnectError>>,
    ) -> Result<(), ConnectError> {
        if self.conn.is_some() {
            return Ok(());
        }
        if !self.backoff.ready() {
            return Err(ConnectError::Backoff);
        }
        let reason = match timeout(limit.max(Duration::from_secs(1)), attempt).await {
            Ok(Ok(conn)) => {
                self.conn = Some(conn);
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                self.backoff.succeeded();
                if self.down {
                    tracing::info!(source = %source, "connected to {peer}");
                } else {
                    tracing::debug!(source = %source, "connected to {peer}");
                }
                self.down = false;
                return Ok(());
            }
            Ok(Err(e)) => e,
            Err(_) => ConnectError::TimedOut,
        };
        if !self.down {
            tracing::warn!(source = %source, "cannot connect to {peer}: {reason}");
        }
        self.down = true;
        self.backoff.failed();
        Err(reason)
    }

    /// The connection once `gap` has passed since the end of the previous exchange. Call after
    /// [`connect`](Self::connect) succeeded.
    pub(crate) async fn after_gap(&mut self, gap: Duration) -> &mut C {
        if let Some(last) = self.last_exchange
            && !gap.is_zero()
        {
            sleep_until(last + gap).await;
        }
        self.conn.as_mut().expect("connect succeeded")
    }

    /// An exchange has just ended (answered or not): the next one keeps its gap from now.
    pub(crate) fn exchanged(&mut self) {
        self.last_exchange = Some(Instant::now());
    }

    /// Drop the connection (a late reply dies with it); the next exchange connects anew.
    pub(crate) fn drop_connection(&mut self) {
        self.conn = None;
    }

    /// The connection, if any, taken out of the link (to close it).
    pub(crate) fn take(&mut self) -> Option<C> {
        self.conn.take()
    }
}

/// A TCP connection to `addr` with Nagle's algorithm off (a request goes out whole at once).
pub async fn connect_tcp(addr: &HostPort) -> io::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect((addr.host.as_str(), addr.port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> ConnectError {
        ConnectError::Tcp(io::Error::from(io::ErrorKind::ConnectionRefused).into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_connect_waits_its_backoff_and_a_hanging_one_times_out() {
        let stats = Arc::new(PollerStats::default());
        let mut link: Link<u8> = Link::new(
            Duration::from_secs(1),
            Duration::from_secs(4),
            stats.clone(),
        );
        let limit = Duration::ZERO;
        let failed = link.connect("s", &"peer", limit, async { Err(refused()) });
        assert_eq!(failed.await, Err(refused()));
        let early = link.connect("s", &"peer", limit, async { Ok(7) });
        assert_eq!(early.await, Err(ConnectError::Backoff));
        tokio::time::advance(Duration::from_millis(1250)).await;
        assert_eq!(
            link.connect("s", &"peer", limit, async { Ok(7) }).await,
            Ok(())
        );
        assert_eq!(stats.connects.load(Ordering::Relaxed), 1);
        assert_eq!(*link.after_gap(Duration::ZERO).await, 7);

        link.drop_connection();
        let started = Instant::now();
        let hanging = link.connect("s", &"peer", limit, std::future::pending());
        assert_eq!(hanging.await, Err(ConnectError::TimedOut));
        assert_eq!(started.elapsed(), Duration::from_secs(1), "at least 1 s");
    }

    #[test]
    fn shared_errors_compare_by_message_and_read_as_the_error() {
        assert_eq!(refused(), refused());
        let other = ConnectError::Tcp(io::Error::other("no route").into());
        assert_ne!(refused(), other);
        assert_eq!(other.to_string(), "no route");
    }
}
