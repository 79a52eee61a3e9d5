//! The value formats a meter map declares, in the standard's tables' notation (`XXXXXX.XX`,
//! `sXX.XXXX`, `YYMMDDhhmm`, `demand`, `demand_time`): the type, its width and its text both
//! ways. Decoding and encoding values is the codec's ([`crate::dlt645::format`]).

use std::fmt;
use std::str::FromStr;

/// How the value bytes of a DI are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Unsigned BCD of `digits` digits, `decimals` of them after the implied point.
    Bcd {
        /// Digits in all, two per byte (an odd count leaves the top nibble 0).
        digits: u8,
        /// Digits after the point.
        decimals: u8,
    },
    /// Signed BCD: as [`Format::Bcd`], the top bit of the most significant byte is the sign.
    SignedBcd {
        /// Digits in all, counting the top digit that shares its nibble with the sign bit.
        digits: u8,
        /// Digits after the point.
        decimals: u8,
    },
    /// `YYMMDDhhmm`.
    DateTime,
    /// `XX.XXXX` + `YYMMDDhhmm`: the demand value.
    Demand,
    /// `XX.XXXX` + `YYMMDDhhmm`: the time of the demand.
    DemandTime,
}

impl Format {
    /// Bytes of the value field.
    pub fn width(self) -> usize {
        match self {
            Format::Bcd { digits, .. } | Format::SignedBcd { digits, .. } => {
                usize::from(digits.div_ceil(2))
            }
            Format::DateTime => 5,
            Format::Demand | Format::DemandTime => 8,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Format::Bcd { digits, decimals } | Format::SignedBcd { digits, decimals } => {
                if matches!(self, Format::SignedBcd { .. }) {
                    f.write_str("s")?;
                }
                let whole = usize::from(digits - decimals);
                write!(f, "{}", "X".repeat(whole))?;
                if decimals > 0 {
                    write!(f, ".{}", "X".repeat(usize::from(decimals)))?;
                }
                Ok(())
            }
            Format::DateTime => f.write_str("YYMMDDhhmm"),
            Format::Demand => f.write_str("demand"),
            Format::DemandTime => f.write_str("demand_time"),
        }
    }
}

/// A format text that is none of the standard's notations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid format `{0}`: expected the standard's notation: `XXXXXX.XX` (unsigned BCD, one X a \
     digit, at most 16), `sXX.XXXX` (signed), `YYMMDDhhmm`, `demand` or `demand_time`"
)]
pub struct FormatParseError(pub String);

impl FromStr for Format {
    type Err = FormatParseError;

    fn from_str(text: &str) -> Result<Format, FormatParseError> {
        match text {
            "YYMMDDhhmm" => return Ok(Format::DateTime),
            "demand" => return Ok(Format::Demand),
            "demand_time" => return Ok(Format::DemandTime),
            _ => {}
        }
        let (signed, body) = match text.strip_prefix('s') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
        let all_x = |s: &str| s.bytes().all(|b| b == b'X');
        let digits = whole.len() + frac.len();
        if whole.is_empty() || !all_x(whole) || !all_x(frac) || digits > 16 {
            return Err(FormatParseError(text.to_owned()));
        }
        let (digits, decimals) = (digits as u8, frac.len() as u8);
        Ok(if signed {
            Format::SignedBcd { digits, decimals }
        } else {
            Format::Bcd { digits, decimals }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(text: &str) -> Format {
        text.parse().expect("valid format")
    }

    #[test]
    fn formats_parse_and_print_the_tables_notation() {
        for text in [
            "XXXXXX.XX",
            "XXX.X",
            "sXX.XXXX",
            "sX.XXX",
            "XXXX",
            "YYMMDDhhmm",
            "demand",
        ] {
            assert_eq!(fmt(text).to_string(), text);
        }
        for bad in ["X.X.X", "", "s", "XXXXXXXXXXXXXXXXXX", "9999.99", ".XX"] {
            assert!(bad.parse::<Format>().is_err(), "{bad}");
        }
    }
}
