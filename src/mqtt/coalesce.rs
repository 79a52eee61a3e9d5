//! The uplinks' TCP stream: what rumqttc flushes is written when its event loop next reads, so a
//! burst of PUBLISHes leaves in one write instead of one write each.
//!
//! rumqttc's codec flushes its buffer to the socket whenever the buffer passes 8 KiB, and once
//! more at the end of each batch of requests. A poll slot hands the event loop one PUBLISH per
//! device, each larger than that (a batch of 100 readings is 11 kB of JSON), so every PUBLISH would
//! be a write of its own, and each write would wake the broker again (docs/PERFORMANCE.md, "one
//! write per PUBLISH").
//!
//! The event loop reads whenever nothing else is ready: after a batch of requests, after a
//! keep-alive PINGREQ, while it waits for CONNACK, PUBACKs or the TLS handshake. That read first
//! writes what is pending. Nothing waits on a flush for anything but such a read, so deferring the
//! write to it adds no wait. Bytes not yet written are bounded: past [`HIGH_WATER`] a write or a
//! flush writes them out before it returns (and waits for the socket as a plain stream would).
//! Shutting the stream down writes the rest, and so does dropping it where the socket takes it at
//! once: rumqttc drops the connection right after its DISCONNECT.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rumqttc::NetworkOptions;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Unwritten bytes past which a write or flush writes them out at once: a few poll batches.
pub const HIGH_WATER: usize = 64 * 1024;

/// Connect to `addr` (`host:port`, each resolved address in turn) with rumqttc's socket options.
pub async fn connect(addr: String, network: NetworkOptions) -> io::Result<CoalescingStream> {
    let tcp = rumqttc::default_socket_connect(addr, network).await?;
    Ok(CoalescingStream::new(tcp))
}

/// A TCP stream whose flushes are written on the next read (see the module docs).
#[derive(Debug)]
pub struct CoalescingStream {
    inner: TcpStream,
    /// Bytes accepted and not yet written, from `written` on.
    pending: Vec<u8>,
    written: usize,
}

impl CoalescingStream {
    /// Wrap a connected stream.
    pub fn new(inner: TcpStream) -> Self {
        CoalescingStream {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }

    fn unwritten(&self) -> usize {
        self.pending.len() - self.written
    }

    /// Write everything pending; `Pending` (with the task registered for the socket) while the
    /// socket takes no more.
    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for CoalescingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A socket that takes no more now is polled again when it does: the task is registered
        // for it, and reads on meanwhile (a PUBACK may be what frees the broker to read).
        if let Poll::Ready(Err(e)) = this.poll_write_pending(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CoalescingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.unwritten() >= HIGH_WATER {
            ready!(this.poll_write_pending(cx))?;
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unwritten() >= HIGH_WATER {
            ready!(this.poll_write_pending(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl Drop for CoalescingStream {
    fn drop(&mut self) {
        while self.written < self.pending.len() {
            match self.inner.try_write(&self.pending[self.written..]) {
                Ok(n) if n > 0 => self.written += n,
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair on a free port: our stream and the peer's end.
    async fn pair() -> (CoalescingStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (
            CoalescingStream::new(ours.expect("connect")),
            theirs.expect("accept").0,
        )
    }

    /// Everything the peer can read now (a loopback write is in its buffer when `write` returns).
    fn readable_now(peer: &TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match peer.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("peer read: {e}"),
            }
        }
        got
    }

    #[tokio::test]
    async fn flushed_writes_leave_together_when_the_stream_is_next_read() {
        let (mut ours, peer) = pair().await;
        for frame in [b"first ".as_slice(), b"second ", b"third"] {
            ours.write_all(frame).await.expect("write");
            ours.flush().await.expect("flush");
        }
        assert!(
            readable_now(&peer).is_empty(),
            "nothing is written before a read"
        );
        // The event loop's read, polled once: the broker sent nothing, so it waits, having
        // written the burst.
        let mut buf = [0u8; 16];
        let mut buf = ReadBuf::new(&mut buf);
        let read =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut ours).poll_read(cx, &mut buf)))
                .await;
        assert!(read.is_pending(), "nothing to read yet");
        peer.readable().await.expect("peer readable");
        assert_eq!(readable_now(&peer), b"first second third");
    }

    #[tokio::test]
    async fn past_the_high_water_mark_a_flush_writes_without_a_read() {
        let (mut ours, peer) = pair().await;
        let big = vec![7u8; HIGH_WATER];
        ours.write_all(&big).await.expect("write");
        ours.flush().await.expect("flush");
        peer.readable().await.expect("peer readable");
        let mut got = readable_now(&peer);
        while got.len() < HIGH_WATER {
            peer.readable().await.expect("peer readable");
            got.extend(readable_now(&peer));
        }
        assert_eq!(got, big);
    }

    #[tokio::test]
    async fn shutdown_and_drop_write_what_is_pending() {
        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"offline").await.expect("write");
        ours.flush().await.expect("flush");
        ours.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.expect("read to the end");
        assert_eq!(got, b"offline");

        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"DISCONNECT").await.expect("write");
        ours.flush().await.expect("flush");
        drop(ours);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.expect("read to the end");
        assert_eq!(got, b"DISCONNECT");
    }

    #[tokio::test]
    async fn a_read_returns_what_the_peer_sent_after_writing() {
        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"PUBLISH").await.expect("write");
        ours.flush().await.expect("flush");
        peer.write_all(b"PUBACK").await.expect("peer write");
        let mut buf = [0u8; 6];
        ours.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"PUBACK");
        let mut got = [0u8; 7];
        peer.read_exact(&mut got).await.expect("peer read");
        assert_eq!(&got, b"PUBLISH");
    }
}
