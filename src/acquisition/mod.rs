//! What every poller shares, whatever its protocol: the deadline schedule, the circuit breaker
//! and the reconnect backoff.
//!
//! The Modbus poller ([`crate::modbus::poller`]) and the DL/T 645 poller
//! ([`crate::dlt645::poller`]) keep the same guarantees because they use the same pieces:
//! - [`Schedule`]: jobs on fixed grids that never drift, late deadlines skipped and counted,
//!   wall times that follow a stepped clock;
//! - [`Breaker`]: a device (or a part of one) that fails `threshold` times in a row is left
//!   alone and probed once per interval;
//! - [`Backoff`]: exponential reconnect delays with ±25 % jitter;
//! - [`open_serial`]: a local serial port with its line settings.

mod backoff;
mod breaker;
mod schedule;
mod serial;

pub use backoff::Backoff;
pub use breaker::{Breaker, Transition};
pub use schedule::Schedule;
pub use serial::open_serial;
