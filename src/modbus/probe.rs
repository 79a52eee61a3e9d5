//! Formatting for `smeltwatch probe`: raw registers shown in every type and byte order (pure).
//!
//! A commissioning engineer reads a block of registers and has to find out which type and byte
//! order the device uses. [`render_probe`] prints one table for the single registers (hex, u16,
//! i16, bits, both character orders) and one table per multi-register type (f32, u32, i32 over
//! 2-register windows; f64, u64, i64 over 4-register windows), one row per window start and one
//! column per byte order, so that the column with plausible numbers names the order. Byte orders
//! mean exactly what [`super::decode`] decodes (see its table). Every row of a table has the same
//! width; floats too long for their column switch to exponent form.

use std::fmt::Write as _;

use crate::config::model::ByteOrder;
use crate::modbus::decode::{assemble, register_chars};

/// Width of one value column in the multi-register tables (fits `-1.234568e-300` and any i64).
const FLOAT_WIDTH: usize = 14;
const INT_WIDTH: usize = 20;

/// Renders `words`, read from 0-based address `start`, as tables of every interpretation.
pub fn render_probe(start: u16, words: &[u16]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} register{} from address {start} (0-based; datasheet numbering is often +1)",
        words.len(),
        if words.len() == 1 { "" } else { "s" },
    );
    if words.is_empty() {
        return out;
    }

    out.push('\n');
    out.push_str("single registers\n");
    let _ = writeln!(
        out,
        "{:>5}  {:<6}  {:>5}  {:>6}  {:<19}  {:<2}  {:<2}",
        "addr", "hex", "u16", "i16", "bits 15..0", "AB", "BA"
    );
    for (i, &w) in words.iter().enumerate() {
        let [hi, lo] = register_chars(w, ByteOrder::Abcd);
        let _ = writeln!(
            out,
            "{:>5}  0x{w:04X}  {w:>5}  {:>6}  {:04b} {:04b} {:04b} {:04b}  {}{}  {}{}",
            address(start, i),
            w as i16,
            w >> 12,
            (w >> 8) & 0xF,
            (w >> 4) & 0xF,
            w & 0xF,
            printable(hi),
            printable(lo),
            printable(lo),
            printable(hi),
        );
    }

    table(&mut out, "f32", start, words, 2, FLOAT_WIDTH, |raw| {
        float32(f32::from_bits(raw as u32))
    });
    table(&mut out, "u32", start, words, 2, INT_WIDTH, |raw| {
        (raw as u32).to_string()
    });
    table(&mut out, "i32", start, words, 2, INT_WIDTH, |raw| {
        (raw as u32 as i32).to_string()
    });
    table(&mut out, "f64", start, words, 4, FLOAT_WIDTH, |raw| {
        float(f64::from_bits(raw))
    });
    table(&mut out, "u64", start, words, 4, INT_WIDTH, |raw| {
        raw.to_string()
    });
    table(&mut out, "i64", start, words, 4, INT_WIDTH, |raw| {
        (raw as i64).to_string()
    });
    out
}

/// One table: a row per window of `width` registers, a column per byte order.
fn table(
    out: &mut String,
    name: &str,
    start: u16,
    words: &[u16],
    width: usize,
    column: usize,
    show: impl Fn(u64) -> String,
) {
    out.push('\n');
    if words.len() < width {
        let _ = writeln!(out, "{name}: needs at least {width} registers");
        return;
    }
    let _ = writeln!(
        out,
        "{name}: {width} registers from addr, one column per byte order"
    );
    let _ = write!(out, "{:>5}", "addr");
    for order in ByteOrder::ALL {
        let _ = write!(out, "  {:>column$}", order.as_str());
    }
    out.push('\n');
    for (i, window) in words.windows(width).enumerate() {
        let _ = write!(out, "{:>5}", address(start, i));
        for order in ByteOrder::ALL {
            let _ = write!(out, "  {:>column$}", show(assemble(window, order)));
        }
        out.push('\n');
    }
}

/// The address of register `i` of a read from `start` (beyond 65535 only in a bad read).
fn address(start: u16, i: usize) -> usize {
    usize::from(start) + i
}

fn printable(b: u8) -> char {
    if (0x20..=0x7E).contains(&b) {
        char::from(b)
    } else {
        '.'
    }
}

/// Shortest round-trip form when it fits the column, else 7 significant digits (plain in
/// 1e-4..1e9, exponent form outside).
fn float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    let short = x.to_string();
    if short.len() <= FLOAT_WIDTH {
        return short;
    }
    let magnitude = x.abs();
    if (1e-4..1e9).contains(&magnitude) {
        let decimals = (6 - magnitude.log10().floor() as i32).max(0) as usize;
        let plain = format!("{x:.decimals$}");
        let plain = plain.trim_end_matches('0').trim_end_matches('.');
        plain.to_owned()
    } else {
        format!("{x:.6e}")
    }
}

/// An f32 in its own shortest form (widening first would print `123.45600128173828`).
fn float32(x: f32) -> String {
    let short = x.to_string();
    if short.len() <= FLOAT_WIDTH && !x.is_nan() {
        short
    } else {
        float(f64::from(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row of `table` whose first column is `addr`, split into columns.
    fn row(text: &str, table: &str, addr: u16) -> Vec<String> {
        let mut lines = text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with(table));
        lines.next().expect("table present");
        lines
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|cols| cols[0] == addr.to_string())
            .expect("row present")
    }

    #[test]
    fn probe_shows_each_interpretation_in_its_order_column() {
        // 123.456f32 (0x42F6E979) stored CDAB at 101..=102; then "PO" and -2.
        let words = [0x0000, 0xE979, 0x42F6, 0x504F, 0xFFFE];
        let text = render_probe(100, &words);

        let f32_row = row(&text, "f32:", 101);
        assert_eq!(f32_row[0], "101");
        assert_eq!(f32_row[2], "123.456", "CDAB column: {text}");
        assert_ne!(f32_row[1], "123.456");

        // 0x42F6_504F as u32 ABCD at 102.
        assert_eq!(row(&text, "u32:", 102)[1], "1123438671");
        // 0xFFFE_504F CDAB → 0x504F_FFFE; ABCD at 103 = 0x504FFFFE.
        assert_eq!(row(&text, "i32:", 103)[1], "1347420158");
        assert_eq!(row(&text, "i32:", 103)[2], "-110513");

        let reg = row(&text, "single", 104);
        assert_eq!(&reg[1..4], ["0xFFFE", "65534", "-2"]);
        let reg = row(&text, "single", 103);
        assert_eq!(reg[1], "0x504F");
        assert_eq!(&reg[reg.len() - 2..], ["PO", "OP"]);
        assert_eq!(reg[4..8].join(" "), "0101 0000 0100 1111");
    }

    #[test]
    fn probe_shows_64_bit_windows_in_all_orders() {
        // 123.456f64 = 0x405E_DD2F_1A9F_BE77, written CDAB (words reversed).
        let words = [0xBE77, 0x1A9F, 0xDD2F, 0x405E];
        let text = render_probe(0, &words);
        let f64_row = row(&text, "f64:", 0);
        assert_eq!(f64_row[2], "123.456", "{text}");
        let u64_row = row(&text, "u64:", 0);
        assert_eq!(u64_row[1], 0xBE77_1A9F_DD2F_405E_u64.to_string());
        assert_eq!(u64_row[4], 0x5E40_2FDD_9F1A_77BE_u64.to_string());
    }

    #[test]
    fn probe_columns_stay_aligned() {
        let words = [0xFFFF, 0x7FC0, 0x0000, 0x0001, 0x8000, 0x7F7F, 0xFFFF];
        let text = render_probe(65_000, &words);
        for block in text.split("\n\n").skip(1) {
            let widths: Vec<usize> = block.lines().skip(1).map(|l| l.chars().count()).collect();
            assert!(widths.windows(2).all(|w| w[0] == w[1]), "{block}");
        }
        assert!(text.contains("NaN"));
        assert!(text.contains("e"), "huge floats in exponent form: {text}");
    }

    #[test]
    fn probe_of_one_register_explains_missing_windows() {
        let text = render_probe(7, &[0x0041]);
        assert!(text.starts_with("1 register from address 7"));
        assert!(text.contains("f32: needs at least 2 registers"));
        assert!(text.contains("u64: needs at least 4 registers"));
        assert_eq!(render_probe(0, &[]).lines().count(), 1);
    }

    #[test]
    fn floats_fit_their_column() {
        assert_eq!(float(123.456), "123.456");
        assert_eq!(float(-0.0), "-0");
        assert_eq!(float(f64::INFINITY), "inf");
        assert_eq!(float(f64::MIN), "-1.797693e308");
        assert!(float(1.0e-300).len() <= FLOAT_WIDTH);
        assert!(float(f64::from(f32::MAX)).len() <= FLOAT_WIDTH);
        assert_eq!(float(0.1 + 0.2), "0.3");
        assert_eq!(float(-123456.7890123), "-123456.8");
        assert_eq!(float32(123.456), "123.456");
        assert_eq!(float32(f32::NAN), "NaN");
        assert_eq!(float32(1.5e-30), "1.500000e-30");
    }
}
