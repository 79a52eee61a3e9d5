//! What a meter's configuration declares about its identity on the bus: the edition of the
//! standard it speaks, its address, and the data identifiers of its points, each with its
//! parsing from the text of a configuration file. Their wire forms are the codec's
//! ([`crate::dlt645::frame`]).

use std::fmt;

/// The edition of the standard a meter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Edition {
    /// DL/T 645-2007: 4-byte data identifiers, read 11h.
    #[serde(rename = "dlt645-2007")]
    Dlt2007,
    /// DL/T 645-1997: 2-byte data identifiers, read 01h.
    #[serde(rename = "dlt645-1997")]
    Dlt1997,
}

impl Edition {
    /// Bytes of a data identifier.
    pub fn di_len(self) -> usize {
        match self {
            Edition::Dlt2007 => 4,
            Edition::Dlt1997 => 2,
        }
    }

    /// Name as written in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            Edition::Dlt2007 => "dlt645-2007",
            Edition::Dlt1997 => "dlt645-1997",
        }
    }
}

impl fmt::Display for Edition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A meter address text that is not 1 to 12 decimal digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid meter address `{0}`, expected 1 to 12 decimal digits")]
pub struct AddressError(pub String);

/// A data identifier text with the wrong number of hex digits for its edition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid data identifier `{text}` for {edition}, expected {expected} hex digits")]
pub struct DataIdError {
    /// The text as given.
    pub text: String,
    /// The edition it was read for.
    pub edition: Edition,
    /// Hex digits that edition's identifiers have.
    pub expected: usize,
}

/// A meter address: six bytes as sent (lowest two digits first).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub [u8; 6]);

impl Address {
    /// An address from up to twelve decimal digits (`"3430163"` is `000003430163`).
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AddressError(text.to_owned()));
        }
        let padded = format!("{text:0>12}");
        let digits = padded.as_bytes();
        let mut wire = [0u8; 6];
        for (i, byte) in wire.iter_mut().enumerate() {
            // Byte i holds digits 10-2i (tens) and 11-2i (units) of the left-to-right text.
            let hi = digits[10 - 2 * i] - b'0';
            let lo = digits[11 - 2 * i] - b'0';
            *byte = (hi << 4) | lo;
        }
        Ok(Address(wire))
    }

    /// The address as a number (`000003430163` → 3430163), or `None` when a byte is not BCD.
    pub fn number(&self) -> Option<u64> {
        let mut n = 0u64;
        for &b in self.0.iter().rev() {
            let (hi, lo) = (b >> 4, b & 0x0F);
            if hi > 9 || lo > 9 {
                return None;
            }
            n = n * 100 + u64::from(hi * 10 + lo);
        }
        Some(n)
    }

    /// The address `offset` meters further (`…0163` + 2 = `…0165`), for templates of meters
    /// numbered in sequence; `None` past twelve digits or for a non-BCD address.
    pub fn offset(&self, offset: u64) -> Option<Address> {
        let n = self.number()?.checked_add(offset)?;
        (n < 1_000_000_000_000).then(|| Address::parse(&n.to_string()).expect("12 digits"))
    }
}

impl fmt::Display for Address {
    /// Twelve digits, most significant first; a byte that is not BCD shows as its two hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().rev() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

/// A data identifier, with its edition's width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataId {
    /// 2007: DI3 DI2 DI1 DI0 as written in the standard's tables (`0x0001_0000`).
    V2007(u32),
    /// 1997: DI1 DI0 as written in the standard's tables (`0x9010`).
    V1997(u16),
}

impl DataId {
    /// Parses the tables' notation: 8 hex digits for 2007 (`00010000`, dots allowed as in
    /// `00.01.00.00`), 4 for 1997 (`9010`).
    pub fn parse(edition: Edition, text: &str) -> Result<DataId, DataIdError> {
        let hex: String = text.chars().filter(|c| *c != '.').collect();
        let expected = edition.di_len() * 2;
        if hex.len() != expected || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DataIdError {
                text: text.to_owned(),
                edition,
                expected,
            });
        }
        let value = u32::from_str_radix(&hex, 16).expect("checked hex digits");
        Ok(match edition {
            Edition::Dlt2007 => DataId::V2007(value),
            Edition::Dlt1997 => DataId::V1997(value as u16),
        })
    }

    /// The edition this identifier belongs to.
    pub fn edition(self) -> Edition {
        match self {
            DataId::V2007(_) => Edition::Dlt2007,
            DataId::V1997(_) => Edition::Dlt1997,
        }
    }
}

impl fmt::Display for DataId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataId::V2007(v) => write!(f, "{v:08X}"),
            DataId::V1997(v) => write!(f, "{v:04X}"),
        }
    }
}
