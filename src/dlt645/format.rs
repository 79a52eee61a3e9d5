//! DL/T 645 value formats, named as the standard's tables write them.
//!
//! | text         | bytes | meaning                                                        |
//! |--------------|-------|----------------------------------------------------------------|
//! | `XXXXXX.XX`  | 4     | unsigned BCD, one `X` a digit (`XXX` takes 2 bytes), the point where implied |
//! | `sXX.XXXX`   | 3     | signed BCD: the top bit of the most significant byte is the sign |
//! | `YYMMDDhhmm` | 5     | a date and time (20YY), decoded as `2026-12-04T09:46` text      |
//! | `demand`     | 8     | a maximum demand `XX.XXXX` followed by its `YYMMDDhhmm`: the value |
//! | `demand_time`| 8     | the same field: the time of the maximum                        |
//!
//! Every field is sent lowest byte first. A point whose bytes are not BCD (some meters answer
//! `FF…` for a value they do not keep) does not decode; the poller marks it `out_of_range`.

use std::fmt;

use crate::model::Value;

// The formats are what a meter map declares (`dlt645::config`); this module reads and writes
// the values they describe.
pub use super::config::{Format, FormatParseError};

/// Why bytes did not decode, or a value did not encode.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FormatError {
    /// The meter sent a different number of value bytes than the format has.
    #[error("{got} value bytes, format {format} has {expected}")]
    Length {
        /// The format.
        format: Format,
        /// Its width.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A nibble above 9.
    #[error("byte {0:02X}h is not BCD")]
    NotBcd(u8),
    /// A date or time field out of its range.
    #[error("not a valid date and time: {0}")]
    BadTime(String),
    /// A value that does not fit the format (encoding only).
    #[error("{value} does not fit format {format}")]
    Overflow {
        /// The format.
        format: Format,
        /// The value.
        value: f64,
    },
}

impl Format {
    /// Decodes a value field.
    pub fn decode(self, bytes: &[u8]) -> Result<Value, FormatError> {
        if bytes.len() != self.width() {
            return Err(FormatError::Length {
                format: self,
                expected: self.width(),
                got: bytes.len(),
            });
        }
        match self {
            Format::Bcd { decimals, .. } => {
                let n = bcd_number(bytes)?;
                Ok(scaled(n as i64, decimals, false))
            }
            Format::SignedBcd { decimals, .. } => {
                let (last, rest) = bytes.split_last().expect("width ≥ 1");
                let negative = last & 0x80 != 0;
                let mut magnitude = rest.to_vec();
                magnitude.push(last & 0x7F);
                let n = bcd_number(&magnitude)? as i64;
                Ok(scaled(if negative { -n } else { n }, decimals, true))
            }
            Format::DateTime => Ok(Value::Text(MeterTime::decode(bytes)?.to_string())),
            Format::Demand => Format::SignedBcd {
                digits: 6,
                decimals: 4,
            }
            .decode(&bytes[..3]),
            Format::DemandTime => Ok(Value::Text(MeterTime::decode(&bytes[3..])?.to_string())),
        }
    }

    /// Encodes a number in a BCD format (what a meter sends). Date-time and demand formats are
    /// encoded with [`MeterTime::encode`] and [`encode_demand`].
    pub fn encode(self, value: f64) -> Result<Vec<u8>, FormatError> {
        let overflow = FormatError::Overflow {
            format: self,
            value,
        };
        let (digits, decimals, signed) = match self {
            Format::Bcd { digits, decimals } => (digits, decimals, false),
            Format::SignedBcd { digits, decimals } => (digits, decimals, true),
            _ => return Err(overflow),
        };
        let scaled = (value * 10f64.powi(i32::from(decimals))).round();
        if !scaled.is_finite() || (!signed && scaled < 0.0) {
            return Err(overflow);
        }
        let magnitude = scaled.abs();
        // Signed with a whole top byte: the top digit shares its nibble with the sign bit, so
        // it is at most 7.
        let limit = if signed && digits % 2 == 0 {
            8.0 * 10f64.powi(i32::from(digits) - 1)
        } else {
            10f64.powi(i32::from(digits))
        };
        if magnitude >= limit {
            return Err(overflow);
        }
        let mut bytes = bcd_bytes(magnitude as u64, self.width());
        if signed && scaled < 0.0 {
            *bytes.last_mut().expect("width ≥ 1") |= 0x80;
        }
        Ok(bytes)
    }
}

/// A number from BCD bytes, lowest byte first.
fn bcd_number(bytes: &[u8]) -> Result<u64, FormatError> {
    let mut n = 0u64;
    for &b in bytes.iter().rev() {
        let (hi, lo) = (b >> 4, b & 0x0F);
        if hi > 9 || lo > 9 {
            return Err(FormatError::NotBcd(b));
        }
        n = n * 100 + u64::from(hi * 10 + lo);
    }
    Ok(n)
}

/// `n` as `width` BCD bytes, lowest first (higher digits are cut: callers check the range).
fn bcd_bytes(mut n: u64, width: usize) -> Vec<u8> {
    (0..width)
        .map(|_| {
            let b = (n % 100) as u8;
            n /= 100;
            ((b / 10) << 4) | (b % 10)
        })
        .collect()
}

/// An integer with implied decimals as a value: a float when there are decimals (the unit is
/// the engineering one), an integer otherwise.
fn scaled(n: i64, decimals: u8, signed: bool) -> Value {
    match (decimals, signed) {
        (0, false) => Value::UInt(n as u64),
        (0, true) => Value::Int(n),
        _ => Value::Float(n as f64 / 10f64.powi(i32::from(decimals))),
    }
}

/// A demand field: `kw` as `XX.XXXX` followed by `at`.
pub fn encode_demand(kw: f64, at: MeterTime) -> Result<Vec<u8>, FormatError> {
    let mut bytes = Format::SignedBcd {
        digits: 6,
        decimals: 4,
    }
    .encode(kw)
    .map_err(|_| FormatError::Overflow {
        format: Format::Demand,
        value: kw,
    })?;
    bytes.extend(at.encode());
    Ok(bytes)
}

/// A meter's `YYMMDDhhmm` (years 2000–2099).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterTime {
    /// Full year (2000–2099).
    pub year: u16,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
    /// 0–23.
    pub hour: u8,
    /// 0–59.
    pub minute: u8,
}

impl MeterTime {
    /// From its five bytes (minute first).
    pub fn decode(bytes: &[u8]) -> Result<MeterTime, FormatError> {
        let mut f = [0u8; 5];
        for (slot, &b) in f.iter_mut().zip(bytes) {
            *slot = bcd_number(&[b])? as u8;
        }
        let [minute, hour, day, month, yy] = f;
        let t = MeterTime {
            year: 2000 + u16::from(yy),
            month,
            day,
            hour,
            minute,
        };
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
            return Err(FormatError::BadTime(format!(
                "{yy:02}-{month:02}-{day:02} {hour:02}:{minute:02}"
            )));
        }
        Ok(t)
    }

    /// Its five bytes (minute first).
    pub fn encode(self) -> Vec<u8> {
        [
            self.minute,
            self.hour,
            self.day,
            self.month,
            (self.year % 100) as u8,
        ]
        .iter()
        .flat_map(|&v| bcd_bytes(u64::from(v), 1))
        .collect()
    }

    /// The UTC time of `unix_ms` (the simulator's meters keep UTC).
    pub fn from_unix_ms(unix_ms: i64) -> MeterTime {
        let secs = unix_ms.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
        MeterTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
        }
    }
}

impl fmt::Display for MeterTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(text: &str) -> Format {
        text.parse().expect("valid format")
    }

    #[test]
    fn energy_is_unsigned_bcd_with_two_decimals() {
        // 000123.45 kWh sent lowest byte first: 45 23 01 00.
        assert_eq!(
            fmt("XXXXXX.XX").decode(&[0x45, 0x23, 0x01, 0x00]),
            Ok(Value::Float(123.45))
        );
        assert_eq!(
            fmt("XXXXXX.XX").encode(123.45),
            Ok(vec![0x45, 0x23, 0x01, 0x00])
        );
        assert_eq!(fmt("XXXXXX.XX").width(), 4);
    }

    #[test]
    fn voltage_and_current_keep_their_implied_decimals() {
        // 220.1 V: digits 2201, bytes 01 22.
        assert_eq!(fmt("XXX.X").decode(&[0x01, 0x22]), Ok(Value::Float(220.1)));
        // 1.234 A (1997 current, XX.XX) and 2007's signed XXX.XXX: 001.234 → 34 12 00.
        assert_eq!(
            fmt("sXXX.XXX").decode(&[0x34, 0x12, 0x00]),
            Ok(Value::Float(1.234))
        );
        // Whole numbers stay integers; an odd digit count leaves the top nibble free (1997's
        // `XXX` volts take two bytes).
        assert_eq!(fmt("XXX").decode(&[0x00, 0x01]), Ok(Value::UInt(100)));
        assert_eq!(fmt("XXX").width(), 2);
        assert!(fmt("XXX").encode(1000.0).is_err());
    }

    #[test]
    fn the_top_bit_of_the_last_byte_is_the_sign() {
        // -12.3456 kW: digits 123456, bytes 56 34 12, sign bit on the last: 56 34 92.
        assert_eq!(
            fmt("sXX.XXXX").decode(&[0x56, 0x34, 0x92]),
            Ok(Value::Float(-12.3456))
        );
        assert_eq!(fmt("sXX.XXXX").encode(-12.3456), Ok(vec![0x56, 0x34, 0x92]));
        // Power factor -0.866: digits 0866 → 66 88 (0x08 | 0x80).
        assert_eq!(
            fmt("sX.XXX").decode(&[0x66, 0x88]),
            Ok(Value::Float(-0.866))
        );
        // The top digit shares its nibble with the sign: 80.0000 does not fit.
        assert!(fmt("sXX.XXXX").encode(80.0).is_err());
        assert!(fmt("sXX.XXXX").encode(79.9999).is_ok());
    }

    #[test]
    fn bytes_that_are_not_bcd_do_not_decode() {
        assert_eq!(
            fmt("XXXXXX.XX").decode(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(FormatError::NotBcd(0xFF))
        );
        assert!(matches!(
            fmt("XXXXXX.XX").decode(&[0x00, 0x00]),
            Err(FormatError::Length { got: 2, .. })
        ));
    }

    #[test]
    fn date_time_and_demand() {
        // 2026-12-04 09:46: sent minute first: 46 09 04 12 26.
        let bytes = [0x46, 0x09, 0x04, 0x12, 0x26];
        assert_eq!(
            fmt("YYMMDDhhmm").decode(&bytes),
            Ok(Value::Text("2026-12-04T09:46".into()))
        );
        let t = MeterTime::decode(&bytes).expect("valid time");
        assert_eq!(t.encode(), bytes);
        // 1.5 kW at that time: 00 50 01 then the time.
        let demand = encode_demand(1.5, t).expect("fits");
        assert_eq!(demand[..3], [0x00, 0x50, 0x01]);
        assert_eq!(fmt("demand").decode(&demand), Ok(Value::Float(1.5)));
        assert_eq!(
            fmt("demand_time").decode(&demand),
            Ok(Value::Text("2026-12-04T09:46".into()))
        );
        // Month 13 is refused.
        assert!(MeterTime::decode(&[0x00, 0x00, 0x01, 0x13, 0x26]).is_err());
    }

    #[test]
    fn unix_time_converts_to_the_civil_date() {
        // 2026-12-04T09:46:31Z = 1796377591 s.
        let t = MeterTime::from_unix_ms(1_796_377_591_000);
        assert_eq!(t.to_string(), "2026-12-04T09:46");
        assert_eq!(MeterTime::from_unix_ms(0).to_string(), "1970-01-01T00:00");
    }
}
