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
//! For 64-bit values `CDAB` reverses all four words (words 3, 2, 1, 0): pymodbus 3's
//! `convert_from_registers` does exactly `registers.reverse()` for `word_order="little"`, and
//! mbpoll/Kepware's "low word first" means the same. Devices that swap only within 32-bit halves
//! (`EFGH ABCD` → `[CD, AB, GH, EF]`) are not supported. pymodbus 3 has no byte swap; `BADC` and
//! `DCBA` are the swapped-bytes variants of pymodbus 2's `byteorder=Endian.Little` and Kepware's
//! "first byte low".
//!
//! Bit `n` of a register (`bool` with `bit = Some(n)`, 0 = least significant) is taken from the
//! register's 16-bit value decoded under the point's order: as received under `ABCD`/`CDAB`,
//! byte-swapped under `BADC`/`DCBA`. A `bool` without a bit index in a register area is true when
//! the register is non-zero.
//!
//! ASCII text keeps the registers in address order under every order (text is a byte stream, not a
//! number; unlike pymodbus, `CDAB` does not reverse the registers of a string): each register holds two characters, high byte first under `ABCD`/`CDAB`, low byte first
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::config::model::{Area, ByteOrder::*};
    use crate::modbus::plan::PointSlot;

    fn point(data_type: DataType, byte_order: ByteOrder) -> PointConfig {
        PointConfig {
            name: "p".into(),
            area: Area::Holding,
            address: 0,
            data_type,
            byte_order,
            scale: 1.0,
            offset: 0.0,
            unit: "V".into(),
            poll_interval: Duration::from_secs(1),
            range: None,
            writable: false,
        }
    }

    fn dec(data_type: DataType, order: ByteOrder, words: &[u16]) -> (Option<Value>, Quality) {
        decode_registers(&point(data_type, order), words)
    }

    fn good(v: Value) -> (Option<Value>, Quality) {
        (Some(v), Quality::Good)
    }

    /// Asserts, for each case, that its `words[k]` decode to its value under the k-th of ABCD,
    /// CDAB, BADC and DCBA.
    fn assert_in_all_four_orders<const N: usize>(cases: &[(DataType, Value, [[u16; N]; 4])]) {
        for (data_type, expected, words) in cases {
            for (order, words) in [Abcd, Cdab, Badc, Dcba].into_iter().zip(words) {
                assert_eq!(
                    dec(*data_type, order, words),
                    good(expected.clone()),
                    "{data_type:?} {order:?}"
                );
            }
        }
    }

    #[test]
    fn f32_in_all_four_orders() {
        // 123.456f32 = 0x42F6E979.
        #[rustfmt::skip]
        let cases = [(DataType::F32, Value::Float(f64::from(123.456f32)), [
            [0x42F6, 0xE979], [0xE979, 0x42F6], [0xF642, 0x79E9], [0x79E9, 0xF642],
        ])];
        assert_in_all_four_orders(&cases);
    }

    #[test]
    fn u32_and_i32_in_all_four_orders() {
        // -2 = 0xFFFF_FFFE.
        #[rustfmt::skip]
        let cases = [
            (DataType::U32, Value::UInt(0x1234_5678), [
                [0x1234, 0x5678], [0x5678, 0x1234], [0x3412, 0x7856], [0x7856, 0x3412],
            ]),
            (DataType::I32, Value::Int(-2), [
                [0xFFFF, 0xFFFE], [0xFFFE, 0xFFFF], [0xFFFF, 0xFEFF], [0xFEFF, 0xFFFF],
            ]),
        ];
        assert_in_all_four_orders(&cases);
        assert_eq!(
            dec(DataType::I32, Abcd, &[0x8000, 0x0000]),
            good(Value::Int(i64::from(i32::MIN)))
        );
    }

    #[test]
    fn sixteen_bit_types_swap_bytes_only_under_badc_and_dcba() {
        for order in [Abcd, Cdab] {
            assert_eq!(
                dec(DataType::U16, order, &[0x1234]),
                good(Value::UInt(0x1234))
            );
            assert_eq!(dec(DataType::I16, order, &[0xFFFE]), good(Value::Int(-2)));
        }
        for order in [Badc, Dcba] {
            assert_eq!(
                dec(DataType::U16, order, &[0x1234]),
                good(Value::UInt(0x3412))
            );
            assert_eq!(dec(DataType::I16, order, &[0xFEFF]), good(Value::Int(-2)));
        }
        assert_eq!(
            dec(DataType::I16, Abcd, &[0x8000]),
            good(Value::Int(-32768))
        );
    }

    #[test]
    fn u64_i64_and_f64_in_all_four_orders() {
        // 123.456f64 = 0x405E_DD2F_1A9F_BE77.
        #[rustfmt::skip]
        let cases = [
            (DataType::U64, Value::UInt(0x0102_0304_0506_0708), [
                [0x0102, 0x0304, 0x0506, 0x0708], [0x0708, 0x0506, 0x0304, 0x0102],
                [0x0201, 0x0403, 0x0605, 0x0807], [0x0807, 0x0605, 0x0403, 0x0201],
            ]),
            (DataType::I64, Value::Int(-2), [
                [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF],
                [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF], [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF],
            ]),
            (DataType::F64, Value::Float(123.456), [
                [0x405E, 0xDD2F, 0x1A9F, 0xBE77], [0xBE77, 0x1A9F, 0xDD2F, 0x405E],
                [0x5E40, 0x2FDD, 0x9F1A, 0x77BE], [0x77BE, 0x9F1A, 0x2FDD, 0x5E40],
            ]),
        ];
        assert_in_all_four_orders(&cases);
    }

    #[test]
    fn ascii_reads_two_characters_per_register_and_trims() {
        let ascii = |n| DataType::Ascii { registers: n };
        let text = |s: &str| good(Value::Text(s.into()));
        // "POT017" = 50 4F | 54 30 | 31 37, padded with NULs or spaces.
        for order in [Abcd, Cdab] {
            assert_eq!(
                dec(ascii(4), order, &[0x504F, 0x5430, 0x3137, 0x0000]),
                text("POT017")
            );
        }
        for order in [Badc, Dcba] {
            assert_eq!(
                dec(ascii(4), order, &[0x4F50, 0x3054, 0x3731, 0x0000]),
                text("POT017")
            );
        }
        assert_eq!(
            dec(ascii(4), Abcd, &[0x504F, 0x5430, 0x3137, 0x2020]),
            text("POT017")
        );
        // The text ends at the first NUL even if the device leaves bytes after it.
        assert_eq!(dec(ascii(3), Abcd, &[0x504F, 0x5400, 0x4142]), text("POT"));
        assert_eq!(dec(ascii(2), Abcd, &[0x2050, 0x2020]), text(" P"));
        // Non-ASCII bytes are replaced and flag the value.
        assert_eq!(
            dec(ascii(2), Abcd, &[0x50C3, 0x0A4F]),
            (
                Some(Value::Text("P\u{FFFD}\u{FFFD}O".into())),
                Quality::OutOfRange
            )
        );
    }

    #[test]
    fn register_bits_follow_the_sixteen_bit_order() {
        let bit = |n| DataType::Bool { bit: Some(n) };
        assert_eq!(dec(bit(3), Abcd, &[0x0008]), good(Value::Bool(true)));
        assert_eq!(dec(bit(2), Abcd, &[0x0008]), good(Value::Bool(false)));
        assert_eq!(dec(bit(15), Cdab, &[0x8000]), good(Value::Bool(true)));
        assert_eq!(dec(bit(3), Badc, &[0x0800]), good(Value::Bool(true)));
        assert_eq!(dec(bit(11), Dcba, &[0x0800]), good(Value::Bool(false)));
        assert_eq!(dec(bit(16), Abcd, &[0xFFFF]), good(Value::Bool(false)));
        let whole = DataType::Bool { bit: None };
        assert_eq!(dec(whole, Abcd, &[0x0100]), good(Value::Bool(true)));
        assert_eq!(dec(whole, Abcd, &[0]), good(Value::Bool(false)));
        assert_eq!(
            decode_bit(&point(whole, Abcd), true),
            good(Value::Bool(true))
        );
    }

    #[test]
    fn scale_and_offset_turn_integers_into_floats() {
        let mut p = point(DataType::I16, Abcd);
        p.scale = 0.1;
        p.offset = 5.0;
        assert_eq!(
            decode_registers(&p, &[0xFFFE]),
            good(Value::Float(-2.0 * 0.1 + 5.0))
        );
        let mut p = point(DataType::U32, Cdab);
        p.scale = 0.01;
        assert_eq!(
            decode_registers(&p, &[0x86A0, 0x0001]),
            good(Value::Float(100_000.0 * 0.01))
        );
        let mut p = point(DataType::F32, Abcd);
        p.offset = -273.15;
        assert_eq!(
            decode_registers(&p, &[0x43C8, 0x0000]),
            good(Value::Float(400.0 - 273.15))
        );
    }

    #[test]
    fn nan_and_infinity_have_no_value() {
        let nan = (None, Quality::OutOfRange);
        assert_eq!(dec(DataType::F32, Abcd, &[0x7FC0, 0x0000]), nan);
        assert_eq!(dec(DataType::F32, Abcd, &[0xFF80, 0x0000]), nan);
        assert_eq!(dec(DataType::F64, Abcd, &[0x7FF0, 0, 0, 0]), nan);
        // Finite raw, infinite after scaling.
        let mut p = point(DataType::F64, Abcd);
        p.scale = 1e10;
        assert_eq!(decode_registers(&p, &[0x7FEF, 0xFFFF, 0xFFFF, 0xFFFF]), nan);
    }

    #[test]
    fn values_outside_the_range_keep_their_value() {
        let mut p = point(DataType::U16, Abcd);
        p.range = Some((0.0, 100.0));
        assert_eq!(decode_registers(&p, &[100]), good(Value::UInt(100)));
        assert_eq!(
            decode_registers(&p, &[101]),
            (Some(Value::UInt(101)), Quality::OutOfRange)
        );
        let mut p = point(DataType::F32, Abcd);
        p.range = Some((3.0, 5.0));
        // 4.25 = 0x40880000; 2.5 = 0x40200000.
        assert_eq!(decode_registers(&p, &[0x4088, 0]), good(Value::Float(4.25)));
        assert_eq!(
            decode_registers(&p, &[0x4020, 0]),
            (Some(Value::Float(2.5)), Quality::OutOfRange)
        );
    }

    #[test]
    fn short_frames_are_comm_failures() {
        assert_eq!(
            dec(DataType::F32, Abcd, &[0x42F6]),
            (None, Quality::CommFail)
        );
        assert_eq!(
            dec(DataType::U64, Abcd, &[1, 2, 3]),
            (None, Quality::CommFail)
        );
        assert_eq!(dec(DataType::U16, Abcd, &[]), (None, Quality::CommFail));
        assert_eq!(
            dec(DataType::Ascii { registers: 4 }, Abcd, &[0x4141]),
            (None, Quality::CommFail)
        );
    }

    fn named(name: &str, area: Area, address: u16, data_type: DataType) -> PointConfig {
        let mut p = point(data_type, Abcd);
        p.name = name.into();
        p.area = area;
        p.address = address;
        p
    }

    fn device(points: Vec<PointConfig>) -> DeviceConfig {
        crate::modbus::test_fixtures::device("pot_017", 17, points)
    }

    /// A read of `count` registers or bits of `area` from `start` serving `(point, offset)`.
    fn request(area: Area, start: u16, count: u16, slots: &[(usize, u16)]) -> ReadRequest {
        let points = slots
            .iter()
            .map(|&(point, offset)| PointSlot { point, offset })
            .collect();
        ReadRequest {
            area,
            start,
            count,
            points,
        }
    }

    /// A device with a float, an integer and a text point, and the one request that covers
    /// them.
    fn served_request() -> (DeviceConfig, ReadRequest) {
        let dev = device(vec![
            named("cell_voltage_v", Area::Holding, 100, DataType::F32),
            named("anode_moves", Area::Holding, 103, DataType::U16),
            named("tag", Area::Holding, 104, DataType::Ascii { registers: 2 }),
        ]);
        let req = request(Area::Holding, 100, 6, &[(0, 0), (1, 3), (2, 4)]);
        (dev, req)
    }

    #[test]
    fn apply_request_decodes_every_served_point() {
        let (dev, req) = served_request();
        let words = [0x4088, 0x0000, 0xDEAD, 42, 0x504F, 0x5400];
        let mut out = Vec::new();
        apply_request(
            &dev,
            &req,
            RequestData::Registers(&words),
            Timestamp(7),
            &mut out,
        );
        let got: Vec<_> = out
            .iter()
            .map(|r| (&*r.point, r.value.clone(), r.quality, r.ts, &*r.unit))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "cell_voltage_v",
                    Some(Value::Float(4.25)),
                    Quality::Good,
                    Timestamp(7),
                    "V"
                ),
                (
                    "anode_moves",
                    Some(Value::UInt(42)),
                    Quality::Good,
                    Timestamp(7),
                    "V"
                ),
                (
                    "tag",
                    Some(Value::Text("POT".into())),
                    Quality::Good,
                    Timestamp(7),
                    "V"
                ),
            ]
        );

        // A short frame fails only the points it does not cover; appending keeps earlier output.
        apply_request(
            &dev,
            &req,
            RequestData::Registers(&words[..5]),
            Timestamp(8),
            &mut out,
        );
        let q: Vec<_> = out[3..]
            .iter()
            .map(|r| (r.value.is_some(), r.quality))
            .collect();
        assert_eq!(
            q,
            vec![
                (true, Quality::Good),
                (true, Quality::Good),
                (false, Quality::CommFail)
            ]
        );
    }

    #[test]
    fn apply_request_fails_every_point_of_bits_for_a_register_read() {
        let (dev, req) = served_request();
        // Bits for a register read cannot be decoded.
        let mut out = Vec::new();
        apply_request(
            &dev,
            &req,
            RequestData::Bits(&[true; 6]),
            Timestamp(9),
            &mut out,
        );
        assert!(
            out.iter()
                .all(|r| r.value.is_none() && r.quality == Quality::CommFail)
        );
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn apply_request_decodes_bits_and_skips_unknown_slots() {
        let dev = device(vec![
            named("alarm", Area::Coil, 5, DataType::Bool { bit: None }),
            named("run", Area::Coil, 7, DataType::Bool { bit: None }),
        ]);
        let req = request(Area::Coil, 5, 3, &[(0, 0), (1, 2), (9, 1)]);
        let mut out = Vec::new();
        apply_request(
            &dev,
            &req,
            RequestData::Bits(&[true, false, false]),
            Timestamp(1),
            &mut out,
        );
        let got: Vec<_> = out.iter().map(|r| (&*r.point, r.value.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("alarm", Some(Value::Bool(true))),
                ("run", Some(Value::Bool(false)))
            ]
        );
        let mut out = Vec::new();
        apply_request(
            &dev,
            &req,
            RequestData::Bits(&[true]),
            Timestamp(1),
            &mut out,
        );
        assert_eq!(out[1].quality, Quality::CommFail);
    }

    #[test]
    fn words_from_bytes_pairs_big_endian() {
        assert_eq!(
            words_from_bytes(&[0x42, 0xF6, 0xE9, 0x79, 0x01]),
            vec![0x42F6, 0xE979]
        );
    }

    // === round trip through a test-only encoder ===

    /// Writes the low `n` words' worth of big-endian `value` under `order` (the module's table).
    fn encode(value: u64, n: usize, order: ByteOrder) -> Vec<u16> {
        let mut words: Vec<u16> = (0..n)
            .map(|i| (value >> (16 * (n - 1 - i))) as u16)
            .collect();
        if matches!(order, Badc | Dcba) {
            words.iter_mut().for_each(|w| *w = w.swap_bytes());
        }
        if matches!(order, Cdab | Dcba) {
            words.reverse();
        }
        words
    }

    fn encode_text(text: &str, n: usize, order: ByteOrder) -> Vec<u16> {
        let mut bytes = text.as_bytes().to_vec();
        bytes.resize(n * 2, 0);
        bytes
            .chunks_exact(2)
            .map(|p| word16(u16::from_be_bytes([p[0], p[1]]), order))
            .collect()
    }

    fn arb_order() -> impl Strategy<Value = ByteOrder> {
        prop::sample::select(ByteOrder::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn integers_round_trip(order in arb_order(), raw in any::<u64>()) {
            let w16 = raw as u16;
            let w32 = raw as u32;
            prop_assert_eq!(dec(DataType::U16, order, &encode(u64::from(w16), 1, order)), good(Value::UInt(u64::from(w16))));
            prop_assert_eq!(dec(DataType::I16, order, &encode(u64::from(w16), 1, order)), good(Value::Int(i64::from(w16 as i16))));
            prop_assert_eq!(dec(DataType::U32, order, &encode(u64::from(w32), 2, order)), good(Value::UInt(u64::from(w32))));
            prop_assert_eq!(dec(DataType::I32, order, &encode(u64::from(w32), 2, order)), good(Value::Int(i64::from(w32 as i32))));
            prop_assert_eq!(dec(DataType::U64, order, &encode(raw, 4, order)), good(Value::UInt(raw)));
            prop_assert_eq!(dec(DataType::I64, order, &encode(raw, 4, order)), good(Value::Int(raw as i64)));
        }

        #[test]
        fn floats_round_trip_bit_for_bit(order in arb_order(), x in any::<f32>(), y in any::<f64>()) {
            match dec(DataType::F32, order, &encode(u64::from(x.to_bits()), 2, order)) {
                (Some(Value::Float(got)), Quality::Good) => prop_assert_eq!(got.to_bits(), f64::from(x).to_bits()),
                other => prop_assert!(!x.is_finite() && other == (None, Quality::OutOfRange), "{:?} → {:?}", x, other),
            }
            match dec(DataType::F64, order, &encode(y.to_bits(), 4, order)) {
                (Some(Value::Float(got)), Quality::Good) => prop_assert_eq!(got.to_bits(), y.to_bits()),
                other => prop_assert!(!y.is_finite() && other == (None, Quality::OutOfRange), "{:?} → {:?}", y, other),
            }
        }

        #[test]
        fn ascii_round_trips(order in arb_order(), text in "[ -~]{0,15}[!-~]", pad in 0..3usize) {
            let n = text.len().div_ceil(2) + pad;
            let ty = DataType::Ascii { registers: n as u16 };
            prop_assert_eq!(dec(ty, order, &encode_text(&text, n, order)), good(Value::Text(text)));
        }
    }
}
