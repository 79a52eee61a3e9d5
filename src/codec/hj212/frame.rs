//! HJ 212 framing: the CRC of Appendix A, `##LLLL…CCCC\r\n` around a data segment, the CP data
//! area, a packet's header fields, and the station identity every sent packet carries.

use std::fmt;

use super::parse::ParseError;
use crate::config::hj212_table::{Station, Table};

/// The HJ 212 CRC of a data segment (Appendix A).
///
/// Unlike CRC-16/MODBUS, the register is shifted right by 8 bits *before* each byte is XORed in:
/// `crc = (crc >> 8) ^ b`, then eight reflected steps with polynomial 0xA001, starting from 0xFFFF.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc = (crc >> 8) ^ u16::from(b);
        for _ in 0..8 {
            let lsb = crc & 1;
            crc >>= 1;
            if lsb != 0 {
                crc ^= 0xA001;
            }
        }
    }
    crc
}

/// Wrap a data segment into a packet: `##`, length, segment, CRC, CR LF.
///
/// Fails when the segment is longer than 9999 bytes (the length field has four digits); callers
/// that respect a [`Table`]'s limits never reach that.
pub fn frame(data_segment: &str) -> Result<String, EncodeError> {
    let len = data_segment.len();
    if len > 9999 {
        return Err(EncodeError::TooLong { len, max: 9999 });
    }
    Ok(format!(
        "##{len:04}{data_segment}{:04X}\r\n",
        crc16(data_segment.as_bytes())
    ))
}

/// A packet could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// A data segment or a single data-area item is longer than the standard allows.
    #[error("{len} bytes where at most {max} are allowed")]
    TooLong {
        /// Length found.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// An aggregate's quantity has no factor code in the table.
    #[error("quantity {0:?} has no HJ 212 factor code in the table")]
    UnknownQuantity(String),
    /// Aggregates of different periods or windows were given for one packet.
    #[error("aggregates of one packet must share period and window start")]
    MixedWindows,
    /// No aggregate or value was given.
    #[error("nothing to encode")]
    Empty,
    /// A station field does not have the length or characters the standard requires.
    #[error("station field {field}: {reason}")]
    BadStation {
        /// Field name (`PW`, `MN`, `ST`).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The CP data area: items separated by `;`, each a list of `key=value` pairs separated by `,`.
///
/// `DataTime=20250301090000;a21026-Avg=85.3,a21026-Flag=N` is two items, the second with two
/// pairs. Order is kept exactly, so printing a parsed data area gives back the same text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cp(pub Vec<Vec<(String, String)>>);

impl Cp {
    /// The value of the first pair with this key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .flatten()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Parse a data area (the text between the `&&` delimiters).
    pub fn parse(text: &str) -> Result<Cp, ParseError> {
        if text.is_empty() {
            return Ok(Cp::default());
        }
        let mut items = Vec::new();
        for item in text.split(';') {
            let mut pairs = Vec::new();
            for pair in item.split(',') {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| ParseError::DataArea(format!("{pair:?} is not key=value")))?;
                if k.is_empty() || k.contains('&') || v.contains('&') {
                    return Err(ParseError::DataArea(format!("bad pair {pair:?}")));
                }
                pairs.push((k.to_owned(), v.to_owned()));
            }
            items.push(pairs);
        }
        Ok(Cp(items))
    }
}

impl fmt::Display for Cp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            for (j, (k, v)) in item.iter().enumerate() {
                if j > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{k}={v}")?;
            }
        }
        Ok(())
    }
}

/// One HJ 212 packet, parsed or to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Request number `YYYYMMDDhhmmsszzz`; absent in some device notifications.
    pub qn: Option<String>,
    /// System code (2 digits).
    pub st: u16,
    /// Command code (4 digits).
    pub cn: u16,
    /// Access password.
    pub pw: String,
    /// Device unique ID.
    pub mn: String,
    /// Flag: version bits, D (split) and A (acknowledge).
    pub flag: u8,
    /// Total packet count and this packet's number (1-based), present when Flag bit D is set.
    pub split: Option<(u16, u16)>,
    /// The data area.
    pub cp: Cp,
}

impl Packet {
    /// Whether the sender asks for an acknowledgement (Flag bit A).
    pub fn wants_ack(&self) -> bool {
        self.flag & 1 == 1
    }

    /// The version bits V5..V0 of Flag.
    pub fn version_bits(&self) -> u8 {
        self.flag >> 2
    }

    /// The data segment text (what the length and CRC cover).
    pub fn data_segment(&self) -> String {
        let mut s = String::new();
        if let Some(qn) = &self.qn {
            s.push_str("QN=");
            s.push_str(qn);
            s.push(';');
        }
        s.push_str(&format!(
            "ST={:02};CN={:04};PW={};MN={};Flag={};",
            self.st, self.cn, self.pw, self.mn, self.flag
        ));
        if let Some((pnum, pno)) = self.split {
            s.push_str(&format!("PNUM={pnum};PNO={pno};"));
        }
        s.push_str(&format!("CP=&&{}&&", self.cp));
        s
    }

    /// The framed packet.
    pub fn encode(&self) -> Result<String, EncodeError> {
        frame(&self.data_segment())
    }
}

impl Station {
    pub(super) fn check(&self, table: &Table) -> Result<(), EncodeError> {
        if self.st > 99 {
            return Err(EncodeError::BadStation {
                field: "ST",
                reason: format!("{} is not 2 digits", self.st),
            });
        }
        if self.pw.len() != table.limits.pw_len || !is_field_text(&self.pw) {
            return Err(EncodeError::BadStation {
                field: "PW",
                reason: format!("needs {} plain characters", table.limits.pw_len),
            });
        }
        if self.mn.is_empty() || self.mn.len() > table.limits.mn_len || !is_field_text(&self.mn) {
            return Err(EncodeError::BadStation {
                field: "MN",
                reason: format!("needs 1 to {} plain characters", table.limits.mn_len),
            });
        }
        Ok(())
    }
}

/// Characters allowed in header field values: printable ASCII without the separators.
pub(super) fn is_field_text(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b'=' | b'&' | b','))
}
