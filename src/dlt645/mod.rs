//! DL/T 645: the energy meters of Chinese plants (feeders, auxiliaries, substations), read over
//! an RS-485 bus or a transparent serial server, beside Modbus.
//!
//! # Wire format (both editions)
//! ```text
//!  FE FE FE FE   68  A0 A1 A2 A3 A4 A5  68  C   L   D0 … D(L-1)  CS  16
//!  wake-up       │   address, BCD,      │   │   │   data, each   │   end
//!  (optional)    │   low byte first     │   │   │   byte + 33h   checksum: sum of 68 … D(L-1),
//!                start                  start │   length            modulo 256
//!                                           control code
//! ```
//! - The address is twelve decimal digits, two per byte, the lowest two first:
//!   meter `000003430163` is sent `63 01 43 03 00 00`. `AA AA AA AA AA AA` is the "any meter"
//!   address a meter alone on its bus answers the address read (2007, control 13h) to.
//! - Control code: D7 = direction (1 from the meter), D6 = abnormal reply, D5 = more frames
//!   follow, D4–D0 = function. Reads are 11h (2007) and 01h (1997); a meter answers 91h/81h,
//!   B1h/A1h when follow-up frames remain (read with 12h/02h), D1h/C1h with one error word.
//! - The data field starts with the data identifier (DI): four bytes in 2007 (`00 01 00 00` is
//!   total forward active energy, sent `00 00 01 00` before the +33h), two in 1997 (`90 10`,
//!   sent `10 90`). Values follow the DI, lowest byte first.
//! - Values are BCD with implied decimals fixed per DI by the standard (`XXXXXX.XX` kWh,
//!   `XXX.X` V, `XXX.XXX` A); power, current and power factor carry their sign in the top bit of
//!   their most significant byte; times are `YYMMDDhhmm`; a maximum demand is its value followed
//!   by its time.
//!
//! # Layout
//! - [`config`]: meter buses, meters and point maps in the configuration, validated, with what
//!   a meter map declares: the [`Edition`], meter [`Address`]es, [`DataId`]s and value
//!   [`Format`]s, and their parsing from text. They are configuration vocabulary, so the codec
//!   builds on them rather than the configuration reaching into the codec.
//! - [`frame`]: the pure codec: requests, a decoder over a byte stream, the meaning of a reply,
//!   and the wire forms of addresses and data identifiers.
//! - [`format`]: value formats (`XXXXXX.XX`, `sXX.XXXX`, `YYMMDDhhmm`, `demand`) read from and
//!   written to bytes.
//! - [`probe`]: `smeltwatch probe --dlt645`, for commissioning.
//! - [`poller`]: one task per bus, on the schedule, breaker and backoff every poller shares
//!   ([`crate::acquisition`]).
//!
//! `frame` and `format` do no I/O: the simulator and the poller own their sockets and ports.

pub mod config;
pub mod format;
pub mod frame;
pub mod poller;
pub mod probe;

pub use config::{Address, AddressError, DataId, DataIdError, Edition, Format, FormatParseError};
pub use format::FormatError;
pub use frame::{Decoder, ErrorWord, Frame, FrameError, Reply, ReplyError};
