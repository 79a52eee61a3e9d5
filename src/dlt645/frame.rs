//! DL/T 645 frames: encoding requests and replies, decoding a byte stream, interpreting replies.
//!
//! The decoder takes bytes as they come from a serial line or a serial server: it skips wake-up
//! `FE` bytes and any other noise before a frame, waits for a frame to be complete, and rejects a
//! frame whose checksum is wrong. It never trusts the replying address: [`Frame::address`] is
//! what the meter sent, and the caller compares it with the meter it asked (a reply from the
//! wrong meter on a shared bus must be discarded, not taken).

use std::fmt;

use crate::model::Quality;

// A meter's edition, address and data identifiers are what its configuration declares
// (`dlt645::config`); the codec adds their wire forms and re-exports them beside the frames.
pub use super::config::{Address, AddressError, DataId, DataIdError, Edition};

/// Frame start byte.
pub const START: u8 = 0x68;
/// Frame end byte.
pub const END: u8 = 0x16;
/// Wake-up byte sent ahead of a request.
pub const WAKE_UP: u8 = 0xFE;
/// What every data byte carries on the wire on top of its value.
pub const DATA_OFFSET: u8 = 0x33;
/// Bytes of a frame besides its data: 68, 6 address bytes, 68, C, L, CS, 16.
pub const OVERHEAD: usize = 12;
/// Wake-up bytes sent ahead of each request (the standard's four).
pub const WAKE_UP_COUNT: usize = 4;

/// Control code bit: the frame comes from the meter.
const DIR_REPLY: u8 = 0x80;
/// Control code bit: abnormal reply (the data is one error word).
const ABNORMAL: u8 = 0x40;
/// Control code bit: follow-up frames remain.
const MORE: u8 = 0x20;
/// Control code bits of the function.
const FUNCTION: u8 = 0x1F;

impl Edition {
    /// Control code of a read request.
    pub fn read_control(self) -> u8 {
        match self {
            Edition::Dlt2007 => 0x11,
            Edition::Dlt1997 => 0x01,
        }
    }

    /// Control code of a follow-up read request.
    pub fn follow_up_control(self) -> u8 {
        match self {
            Edition::Dlt2007 => 0x12,
            Edition::Dlt1997 => 0x02,
        }
    }
}

impl Address {
    /// The "any meter" address of the address read (`AA AA AA AA AA AA`).
    pub const ANY: Address = Address([0xAA; 6]);
}

impl DataId {
    /// Bytes as sent (DI0 first), before the +33h.
    pub fn wire(self) -> Vec<u8> {
        match self {
            DataId::V2007(v) => v.to_le_bytes().to_vec(),
            DataId::V1997(v) => v.to_le_bytes().to_vec(),
        }
    }

    /// From the first bytes of a data field (DI0 first); `None` when it is too short.
    pub fn from_wire(edition: Edition, data: &[u8]) -> Option<DataId> {
        match edition {
            Edition::Dlt2007 => {
                let b: [u8; 4] = data.get(..4)?.try_into().ok()?;
                Some(DataId::V2007(u32::from_le_bytes(b)))
            }
            Edition::Dlt1997 => {
                let b: [u8; 2] = data.get(..2)?.try_into().ok()?;
                Some(DataId::V1997(u16::from_le_bytes(b)))
            }
        }
    }
}

/// One frame, its data already without the +33h.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The address field as received (for a reply: the meter that answered).
    pub address: Address,
    /// The control code.
    pub control: u8,
    /// The data field, each byte with 33h taken off.
    pub data: Vec<u8>,
}

impl Frame {
    /// The frame's bytes with `wake_up` leading `FE`s. Data longer than 255 bytes cannot be
    /// framed and is cut there (no request or reply of ours comes near it).
    pub fn encode(&self, wake_up: usize) -> Vec<u8> {
        let data = &self.data[..self.data.len().min(255)];
        let mut out = Vec::with_capacity(wake_up + OVERHEAD + data.len());
        out.extend(std::iter::repeat_n(WAKE_UP, wake_up));
        let start = out.len();
        out.push(START);
        out.extend_from_slice(&self.address.0);
        out.push(START);
        out.push(self.control);
        out.push(data.len() as u8);
        out.extend(data.iter().map(|b| b.wrapping_add(DATA_OFFSET)));
        out.push(checksum(&out[start..]));
        out.push(END);
        out
    }

    /// Whether the frame comes from a meter.
    pub fn is_reply(&self) -> bool {
        self.control & DIR_REPLY != 0
    }
}

/// Modulo-256 sum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b))
}

/// A read request for `di` to `address`, with the standard's wake-up bytes.
pub fn read_request(address: Address, di: DataId) -> Vec<u8> {
    Frame {
        address,
        control: di.edition().read_control(),
        data: di.wire(),
    }
    .encode(WAKE_UP_COUNT)
}

/// A follow-up read request: 2007 sends the DI and the sequence number of the frame wanted,
/// 1997 the DI alone.
pub fn follow_up_request(address: Address, di: DataId, seq: u8) -> Vec<u8> {
    let mut data = di.wire();
    if di.edition() == Edition::Dlt2007 {
        data.push(seq);
    }
    Frame {
        address,
        control: di.edition().follow_up_control(),
        data,
    }
    .encode(WAKE_UP_COUNT)
}

/// The address read of 2007 (13h) to [`Address::ANY`]: the one meter on the line answers with
/// its address. Only for a meter alone on its bus (commissioning).
pub fn address_request() -> Vec<u8> {
    Frame {
        address: Address::ANY,
        control: 0x13,
        data: Vec::new(),
    }
    .encode(WAKE_UP_COUNT)
}

/// Why bytes did not make a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A complete frame whose checksum does not match: nothing in it can be trusted.
    #[error("bad checksum from {address}: frame says {got:02X}, bytes sum to {computed:02X}")]
    Checksum {
        /// The address field as received (untrusted).
        address: Address,
        /// Checksum byte in the frame.
        got: u8,
        /// Checksum of the bytes received.
        computed: u8,
    },
}

/// A decoder over a byte stream: feed it with [`Decoder::extend`], take frames with
/// [`Decoder::next_frame`].
///
/// Bytes before a `68 … 68` header (wake-up bytes, line noise, the tail of a broken frame) are
/// dropped. A header whose end byte is not `16` where its length puts it was a false start: one
/// byte is dropped and the search goes on. A frame with the right shape and a wrong checksum is
/// dropped whole and reported. The buffer never holds more than one frame's worth of bytes
/// beyond what has been fed since the last frame, so noise cannot grow it without bound.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Append received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Forget everything buffered (before a new request: a late reply to the previous one must
    /// not be taken for the next).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Bytes buffered and not yet part of a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, an error for a frame with a bad checksum, or `None` when more
    /// bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame, FrameError>> {
        loop {
            let Some(start) = self.buf.iter().position(|b| *b == START) else {
                self.buf.clear();
                return None;
            };
            self.buf.drain(..start);
            if self.buf.len() < 10 {
                return None;
            }
            if self.buf[7] != START {
                self.buf.drain(..1);
                continue;
            }
            let len = OVERHEAD + usize::from(self.buf[9]);
            if self.buf.len() < len {
                return None;
            }
            if self.buf[len - 1] != END {
                self.buf.drain(..1);
                continue;
            }
            let frame: Vec<u8> = self.buf.drain(..len).collect();
            let address = Address(frame[1..7].try_into().expect("six bytes"));
            let computed = checksum(&frame[..len - 2]);
            let got = frame[len - 2];
            if computed != got {
                return Some(Err(FrameError::Checksum {
                    address,
                    got,
                    computed,
                }));
            }
            let data = frame[10..len - 2]
                .iter()
                .map(|b| b.wrapping_sub(DATA_OFFSET))
                .collect();
            return Some(Ok(Frame {
                address,
                control: frame[8],
                data,
            }));
        }
    }
}

/// The error word of an abnormal reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorWord {
    /// The edition, which names the bits.
    pub edition: Edition,
    /// The word as received.
    pub bits: u8,
}

impl ErrorWord {
    /// Names of the bits set, from the standard's error word tables.
    pub fn reasons(self) -> Vec<&'static str> {
        let names: [&str; 8] = match self.edition {
            Edition::Dlt2007 => [
                "other error",
                "no requested data",
                "password wrong or not authorised",
                "baud rate cannot be changed",
                "too many year time zones",
                "too many daily time periods",
                "too many tariffs",
                "reserved bit 7",
            ],
            Edition::Dlt1997 => [
                "illegal data",
                "data identifier wrong",
                "password wrong",
                "reserved bit 3",
                "too many year time zones",
                "too many daily time periods",
                "too many tariffs",
                "reserved bit 7",
            ],
        };
        (0..8)
            .filter(|bit| self.bits & (1 << bit) != 0)
            .map(|bit| names[bit])
            .collect()
    }

    /// The quality of the points of the refused read: the meter answered and said no, like a
    /// Modbus exception (the link is healthy, the value is not there).
    pub fn quality(self) -> Quality {
        Quality::DeviceException
    }
}

impl fmt::Display for ErrorWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reasons = self.reasons();
        if reasons.is_empty() {
            write!(f, "error word {:02X}h", self.bits)
        } else {
            write!(f, "error word {:02X}h ({})", self.bits, reasons.join(", "))
        }
    }
}

/// What a meter's frame means, for the request it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A normal read reply: the DI it answers and the value bytes after it.
    Data {
        /// The DI echoed by the meter.
        di: DataId,
        /// Value bytes (lowest first), without the DI.
        value: Vec<u8>,
        /// Whether follow-up frames remain (B1h/A1h).
        more: bool,
    },
    /// An abnormal reply: the meter refused.
    Error(ErrorWord),
    /// The answer to the address read: the meter's address.
    Address(Address),
}

/// Why a frame is not the reply to a read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A request on the line (the echo of our own, or another master's).
    #[error("a request (control {0:02X}h), not a reply")]
    NotAReply(u8),
    /// A reply to a function we did not ask for.
    #[error("unexpected control code {0:02X}h")]
    UnexpectedControl(u8),
    /// The data field is too short for what the control code says.
    #[error("data field of {0} bytes is too short")]
    Short(usize),
}

/// Interprets `frame` as a meter's reply under `edition`.
pub fn interpret(edition: Edition, frame: &Frame) -> Result<Reply, ReplyError> {
    let c = frame.control;
    if !frame.is_reply() {
        return Err(ReplyError::NotAReply(c));
    }
    let function = c & FUNCTION;
    let read = function == edition.read_control() || function == edition.follow_up_control();
    if c & ABNORMAL != 0 {
        if !read {
            return Err(ReplyError::UnexpectedControl(c));
        }
        let bits = *frame.data.first().ok_or(ReplyError::Short(0))?;
        return Ok(Reply::Error(ErrorWord { edition, bits }));
    }
    if edition == Edition::Dlt2007 && function == 0x13 {
        let wire: [u8; 6] = frame
            .data
            .get(..6)
            .and_then(|d| d.try_into().ok())
            .ok_or(ReplyError::Short(frame.data.len()))?;
        return Ok(Reply::Address(Address(wire)));
    }
    if !read {
        return Err(ReplyError::UnexpectedControl(c));
    }
    let di = DataId::from_wire(edition, &frame.data).ok_or(ReplyError::Short(frame.data.len()))?;
    Ok(Reply::Data {
        di,
        value: frame.data[edition.di_len()..].to_vec(),
        more: c & MORE != 0,
    })
}

/// A meter's reply frame to a read of `di`: `value` after the DI, follow-up flag `more`.
pub fn data_reply(address: Address, di: DataId, value: &[u8], more: bool) -> Frame {
    let mut data = di.wire();
    data.extend_from_slice(value);
    let mut control = di.edition().read_control() | DIR_REPLY;
    if more {
        control |= MORE;
    }
    Frame {
        address,
        control,
        data,
    }
}

/// A meter's abnormal reply to a read under `edition`.
pub fn error_reply(address: Address, edition: Edition, bits: u8) -> Frame {
    Frame {
        address,
        control: edition.read_control() | DIR_REPLY | ABNORMAL,
        data: vec![bits],
    }
}

/// A 2007 meter's answer to the address read.
pub fn address_reply(address: Address) -> Frame {
    Frame {
        address,
        control: 0x13 | DIR_REPLY,
        data: address.0.to_vec(),
    }
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
