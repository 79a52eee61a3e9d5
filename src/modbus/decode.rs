//! Decoding registers and bits into typed values (pure: no I/O, no clocks).
//!
//! [`apply_request`] turns the response of one planned [`ReadRequest`] into one [`Reading`] per
//! point it serves; [`decode_registers`] and [`decode_bit`] decode a single point. Nothing here
//! panics on bad input: a response too short for a point yields `(None, CommFail)`.
//!
//! # Byte orders
//! A value of `n` bytes is written big-endian as `A B C D …` (A most significant). Each register
//! (word) carries two bytes. The four orders, following mbpoll, Kepware and pymodbus 3
//! (`convert_from_registers(word_order="little")` reverses the whole register list):
//!
//! | order | meaning | 16-bit `AB` | 32-bit `ABCD` | 64-bit `ABCDEFGH` |
//! |---|---|---|---|---|
//! | `ABCD` | high word first, high byte first (Modbus big-endian) | `[AB]` | `[AB, CD]` | `[AB, CD, EF, GH]` |
//! | `CDAB` | low word first, high byte first ("word swap") | `[AB]` | `[CD, AB]` | `[GH, EF, CD, AB]` |
//! | `BADC` | high word first, low byte first ("byte swap") | `[BA]` | `[BA, DC]` | `[BA, DC, FE, HG]` |
//! | `DCBA` | low word first, low byte first (little-endian) | `[BA]` | `[DC, BA]` | `[HG, FE, DC, BA]` |
//!
//! For 64-bit values `CDAB` reverses all four words (words 3, 2, 1, 0), as pymodbus does; devices
//! that swap only within 32-bit halves (`CDAB GHEF`) are not supported.
//!
//! Bit `n` of a register (`bool` with `bit = Some(n)`, 0 = least significant) is taken from the
//! register's 16-bit value decoded under the point's order: as received under `ABCD`/`CDAB`,
//! byte-swapped under `BADC`/`DCBA`. A `bool` without a bit index in a register area is true when
//! the register is non-zero.
//!
//! ASCII text keeps the registers in address order under every order (text is a byte stream, not a
//! number): each register holds two characters, high byte first under `ABCD`/`CDAB`, low byte first
//! under `BADC`/`DCBA`. The text ends at the first NUL; trailing spaces are trimmed. Bytes that are
//! not printable ASCII (below 0x20 or above 0x7E) are replaced with U+FFFD and the value is marked
//! `out_of_range`, so an operator sees a garbled string for what it is.
//!
//! # Scale, offset and quality
//! Integers with `scale == 1` and `offset == 0` stay [`Value::Int`] / [`Value::UInt`]; otherwise
//! the value is [`Value::Float`]`(raw × scale + offset)`. NaN or infinite results have no value
//! (`None`, JSON cannot carry them) and quality `out_of_range`. A finite value outside
//! `point.range` keeps its value with quality `out_of_range`. Booleans and text are never scaled
//! or range-checked.

use std::sync::Arc;

use crate::config::model::{ByteOrder, DataType, DeviceConfig, PointConfig};
use crate::modbus::plan::ReadRequest;
use crate::model::{Quality, Reading, Timestamp, Value};

/// The payload of one successful read, as the poller received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestData<'a> {
    /// Registers of a holding/input read (FC 3/4), in address order.
    Registers(&'a [u16]),
    /// Bits of a coil/discrete-input read (FC 1/2), in address order.
    Bits(&'a [bool]),
}

/// Decodes every point `req` serves from its response and appends one [`Reading`] per point to
/// `out`, in the order of `req.points`, all stamped `ts`.
///
/// A response that does not cover a point (short frame, or bits for a register read) yields that
/// point with `(None, CommFail)`; a slot whose index is not a point of `device` is skipped.
pub fn apply_request(
    device: &DeviceConfig,
    req: &ReadRequest,
    data: RequestData<'_>,
    ts: Timestamp,
    out: &mut Vec<Reading>,
) {
    out.reserve(req.points.len());
    for slot in &req.points {
        let Some(point) = device.points.get(slot.point) else {
            continue;
        };
        let offset = usize::from(slot.offset);
        let (value, quality) = match data {
            RequestData::Registers(words) if !req.area.is_bits() => {
                let width = usize::from(point.width());
                match words.get(offset..offset + width) {
                    Some(w) => decode_registers(point, w),
                    None => (None, Quality::CommFail),
                }
            }
            RequestData::Bits(bits) if req.area.is_bits() => match bits.get(offset) {
                Some(&bit) => decode_bit(point, bit),
                None => (None, Quality::CommFail),
            },
            _ => (None, Quality::CommFail),
        };
        out.push(Reading {
            point: Arc::clone(&point.name),
            value,
            unit: Arc::clone(&point.unit),
            quality,
            ts,
        });
    }
}

/// Decodes one coil or discrete input. Scale, offset and range do not apply to bits.
pub fn decode_bit(_point: &PointConfig, bit: bool) -> (Option<Value>, Quality) {
    (Some(Value::Bool(bit)), Quality::Good)
}

/// Decodes one register-area point from its registers (`words` must hold at least
/// `point.width()` registers; extra ones are ignored, fewer give `(None, CommFail)`).
pub fn decode_registers(point: &PointConfig, words: &[u16]) -> (Option<Value>, Quality) {
    let width = usize::from(point.data_type.registers());
    let Some(words) = words.get(..width) else {
        return (None, Quality::CommFail);
    };
    let order = point.byte_order;
    match point.data_type {
        DataType::Bool { bit } => {
            let word = word16(words[0], order);
            let on = match bit {
                Some(n) => n < 16 && (word >> n) & 1 == 1,
                None => word != 0,
            };
            (Some(Value::Bool(on)), Quality::Good)
        }
        DataType::U16 => unsigned(point, u64::from(word16(words[0], order))),
        DataType::I16 => signed(point, i64::from(word16(words[0], order) as i16)),
        DataType::U32 => unsigned(point, assemble(words, order)),
        DataType::I32 => signed(point, i64::from(assemble(words, order) as u32 as i32)),
        DataType::U64 => unsigned(point, assemble(words, order)),
        DataType::I64 => signed(point, assemble(words, order) as i64),
        DataType::F32 => float(
            point,
            f64::from(f32::from_bits(assemble(words, order) as u32)),
        ),
        DataType::F64 => float(point, f64::from_bits(assemble(words, order))),
        DataType::Ascii { .. } => ascii(words, order),
    }
}

/// A register's 16-bit value under `order` (byte-swapped for `BADC`/`DCBA`).
pub fn word16(word: u16, order: ByteOrder) -> u16 {
    match order {
        ByteOrder::Abcd | ByteOrder::Cdab => word,
        ByteOrder::Badc | ByteOrder::Dcba => word.swap_bytes(),
    }
}

/// The big-endian integer (`A` most significant) that 1 to 4 `words` hold under `order`, as in
/// the module's table. More than 4 words keep only the low 64 bits.
pub fn assemble(words: &[u16], order: ByteOrder) -> u64 {
    let push = |acc: u64, &w: &u16| (acc << 16) | u64::from(word16(w, order));
    match order {
        ByteOrder::Abcd | ByteOrder::Badc => words.iter().fold(0, push),
        ByteOrder::Cdab | ByteOrder::Dcba => words.iter().rev().fold(0, push),
    }
}

/// Registers from bytes as they travel in a Modbus frame (big-endian pairs); an odd trailing byte
/// is ignored.
pub fn words_from_bytes(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect()
}

/// The two characters of one register under `order`, in text order.
pub fn register_chars(word: u16, order: ByteOrder) -> [u8; 2] {
    word16(word, order).to_be_bytes()
}

fn identity(point: &PointConfig) -> bool {
    point.scale == 1.0 && point.offset == 0.0
}

fn unsigned(point: &PointConfig, raw: u64) -> (Option<Value>, Quality) {
    if identity(point) {
        checked(point, Value::UInt(raw), raw as f64)
    } else {
        float(point, raw as f64)
    }
}

fn signed(point: &PointConfig, raw: i64) -> (Option<Value>, Quality) {
    if identity(point) {
        checked(point, Value::Int(raw), raw as f64)
    } else {
        float(point, raw as f64)
    }
}

/// Applies scale and offset (skipped at identity so that the raw float is kept bit for bit) and
/// checks finiteness and range.
fn float(point: &PointConfig, raw: f64) -> (Option<Value>, Quality) {
    let x = if identity(point) {
        raw
    } else {
        raw * point.scale + point.offset
    };
    if !x.is_finite() {
        return (None, Quality::OutOfRange);
    }
    checked(point, Value::Float(x), x)
}

fn checked(point: &PointConfig, value: Value, x: f64) -> (Option<Value>, Quality) {
    let quality = match point.range {
        Some((lo, hi)) if !(lo..=hi).contains(&x) => Quality::OutOfRange,
        _ => Quality::Good,
    };
    (Some(value), quality)
}

fn ascii(words: &[u16], order: ByteOrder) -> (Option<Value>, Quality) {
    let mut text = String::with_capacity(words.len() * 2);
    let mut clean = true;
    'words: for &w in words {
        for b in register_chars(w, order) {
            match b {
                0 => break 'words,
                0x20..=0x7E => text.push(char::from(b)),
                _ => {
                    clean = false;
                    text.push(char::REPLACEMENT_CHARACTER);
                }
            }
        }
    }
    text.truncate(text.trim_end_matches(' ').len());
    let quality = if clean {
        Quality::Good
    } else {
        Quality::OutOfRange
    };
    (Some(Value::Text(text)), quality)
}
