//! Replies gathered per wake-up: while two or more requests to devices await their replies, the
//! runtime, about to sleep, first waits until [`GATHER_WINDOW`] after its last wake-up, so that
//! replies arriving meanwhile are taken in one wake-up instead of one each.
//!
//! Why: in a poll slot every connection sends its request at once, and the replies come back one
//! after another, tens of microseconds apart (a device server answering its connections in turn,
//! a switch, the network's jitter). The runtime took each one in a wake-up of its own (the
//! kernel's `epoll_wait` returning, a context switch in and out), and a wake-up costs more than
//! reading and decoding a reply: at 20 devices on 20 connections the worker slept and woke 23-28
//! times a second, about 20 of them for replies. Holding the sleep back for up to a millisecond
//! after the last wake-up brings that to 10-12, and the agent's CPU per point down by a tenth
//! (docs/PERFORMANCE.md, "replies gathered per wake-up").
//!
//! What it costs: a reply waits at most [`GATHER_WINDOW`] longer before it is read. With one
//! request in flight nothing is held back: requests that follow each other on one connection
//! (devices behind a gateway, a serial bus) would only be slowed, and a lone request has nothing
//! to gather. The hold is a blocking sleep of the runtime's thread, which is what the runtime
//! does anyway when it has nothing to run; a task woken from another thread meanwhile (a spool
//! reply) also waits at most the window.
//!
//! The count is the process's, not the thread's: with several workers a task may start its
//! request on one and take the reply on another.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long after a wake-up the runtime holds back its next sleep while replies are awaited.
pub const GATHER_WINDOW: Duration = Duration::from_millis(1);

/// Requests that await their reply, in the whole process.
static AWAITED: AtomicU32 = AtomicU32::new(0);

std::thread_local! {
    /// When this runtime thread last woke up.
    static WOKE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// One request awaiting its reply, for as long as it lives: taken just before the request is
/// sent, dropped when the reply is in, the request failed or timed out, or the exchange was
/// cancelled.
#[derive(Debug)]
#[must_use = "the request counts as awaited only while this lives"]
pub(crate) struct Awaiting(());

impl Awaiting {
    pub(crate) fn start() -> Self {
        AWAITED.fetch_add(1, Ordering::Relaxed);
        Awaiting(())
    }
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        AWAITED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long to hold back a sleep `since` the last wake-up with `awaited` requests in flight.
fn hold(awaited: u32, since: Duration) -> Option<Duration> {
    (awaited >= 2)
        .then(|| GATHER_WINDOW.checked_sub(since))
        .flatten()
        .filter(|d| !d.is_zero())
}

/// The runtime's hook before its thread sleeps (`on_thread_park`).
pub fn before_park() {
    let Some(woke) = WOKE.get() else { return };
    if let Some(d) = hold(AWAITED.load(Ordering::Relaxed), woke.elapsed()) {
        std::thread::sleep(d);
    }
}

/// The runtime's hook after its thread wakes up (`on_thread_unpark`).
pub fn after_unpark() {
    WOKE.set(Some(Instant::now()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleep_is_held_back_only_while_two_replies_are_awaited_within_the_window() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        assert_eq!(hold(0, us(10)), None);
        assert_eq!(hold(1, us(10)), None, "one request has nothing to gather");
        assert_eq!(hold(2, us(10)), Some(us(990)));
        assert_eq!(hold(20, us(999)), Some(us(1)));
        assert_eq!(hold(20, ms(1)), None, "the window has passed");
        assert_eq!(hold(20, ms(5)), None);
        assert_eq!(hold(20, Duration::ZERO), Some(GATHER_WINDOW));
    }
}
