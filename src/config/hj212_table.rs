//! HJ 212 code tables as data: version bits, field limits, command codes, system codes, the
//! quality → data-flag mapping and the factor (pollutant) codes.
//!
//! The 2017 table ships in `config/hj212/hj212-2017.toml` and is compiled in
//! ([`Table::hj212_2017`]); another edition (HJ 212-2025) is another TOML file loaded with
//! [`Table::from_toml`]. Invariants checked on load: version bits fit in six bits, every flag is one
//! ASCII upper-case letter, factor codes and quantity names are unique.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;

use crate::model::Quality;

/// The compiled-in HJ 212-2017 table.
const HJ212_2017: &str = include_str!("../../config/hj212/hj212-2017.toml");

/// A table that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The TOML did not parse or did not match the schema.
    #[error("HJ 212 table: {0}")]
    Toml(#[from] toml::de::Error),
    /// The table parsed but is inconsistent.
    #[error("HJ 212 table: {0}")]
    Invalid(String),
}

/// Field limits of one edition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest data segment in characters.
    pub max_data_segment: usize,
    /// Largest CP data area (between the `&&` delimiters) in characters.
    pub max_cp: usize,
    /// Length of the PW value.
    pub pw_len: usize,
    /// Length of the MN value.
    pub mn_len: usize,
}

/// Command codes (CN) the codec produces and answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commands {
    /// Get (or upload) the data logger's time.
    pub get_time: u16,
    /// Set the data logger's time.
    pub set_time: u16,
    /// Real-time pollutant data.
    pub realtime: u16,
    /// Minute data.
    pub minute: u16,
    /// Hourly data.
    pub hourly: u16,
    /// Daily data.
    pub daily: u16,
    /// Request response (QnRtn).
    pub request_response: u16,
    /// Execution result (ExeRtn).
    pub execution_result: u16,
    /// Notification response.
    pub notification_response: u16,
    /// Data response (the acknowledgement of an uploaded data packet).
    pub data_response: u16,
}

/// Data flag letter for each [`Quality`], plus one for a window that fails its validity rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flags {
    /// [`Quality::Good`].
    pub good: char,
    /// [`Quality::CommFail`].
    pub comm_fail: char,
    /// [`Quality::DeviceException`].
    pub device_exception: char,
    /// [`Quality::OutOfRange`].
    pub out_of_range: char,
    /// [`Quality::Stale`].
    pub stale: char,
    /// [`Quality::Substituted`].
    pub substituted: char,
    /// [`Quality::Maintenance`].
    pub maintenance: char,
    /// [`Quality::Calibration`].
    pub calibration: char,
    /// A window of good quality that fails its validity rule.
    pub invalid_window: char,
}

impl Flags {
    /// The flag letter of one quality.
    pub fn for_quality(&self, quality: Quality) -> char {
        match quality {
            Quality::Good => self.good,
            Quality::CommFail => self.comm_fail,
            Quality::DeviceException => self.device_exception,
            Quality::OutOfRange => self.out_of_range,
            Quality::Stale => self.stale,
            Quality::Substituted => self.substituted,
            Quality::Maintenance => self.maintenance,
            Quality::Calibration => self.calibration,
        }
    }

    fn all(&self) -> [char; 9] {
        [
            self.good,
            self.comm_fail,
            self.device_exception,
            self.out_of_range,
            self.stale,
            self.substituted,
            self.maintenance,
            self.calibration,
            self.invalid_window,
        ]
    }
}

/// One factor (pollutant or flue-gas parameter) code.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Factor {
    /// The code (`a21026`).
    pub code: String,
    /// Human name (`SO2`).
    pub name: String,
    /// Concentration or value unit.
    pub unit: String,
    /// Unit of the -Cou amount, when the factor has one.
    #[serde(default)]
    pub amount_unit: Option<String>,
    /// smeltwatch quantity names that map to this code: measured values (-Avg/-Min/-Max, and
    /// -Cou from their `total` when they carry one).
    #[serde(default)]
    pub quantities: Vec<String>,
    /// Quantity names of the converted (折算) concentration of this code (-ZsAvg/-ZsMin/-ZsMax).
    #[serde(default)]
    pub converted_quantities: Vec<String>,
    /// Quantity names of this code's mass flow, whose `total` is the window's amount (-Cou).
    #[serde(default)]
    pub amount_quantities: Vec<String>,
    /// Decimals printed for -Rtd/-Avg/-Min/-Max.
    pub decimals: usize,
    /// Decimals printed for -Cou.
    pub cou_decimals: usize,
}

/// A whole edition of the standard.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: String,
    version_bits: u8,
    limits: Limits,
    commands: Commands,
    systems: BTreeMap<String, String>,
    flags: Flags,
    factors: Vec<Factor>,
}

/// A loaded, checked HJ 212 table.
#[derive(Debug, Clone)]
pub struct Table {
    /// Name of the edition (`HJ 212-2017`).
    pub name: String,
    /// Version bits V5..V0 of Flag.
    pub version_bits: u8,
    /// Field limits.
    pub limits: Limits,
    /// Command codes.
    pub commands: Commands,
    /// System codes (ST) accepted by the parser, with their meaning.
    pub systems: BTreeMap<u16, String>,
    /// Quality → data flag.
    pub flags: Flags,
    /// Factor codes in table order.
    pub factors: Vec<Factor>,
    by_name: HashMap<String, (usize, Role)>,
}

/// What a quantity is to its factor code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The measured value (`-Avg`, `-Min`, `-Max`, `-Rtd`).
    Measured,
    /// The converted concentration (`-ZsAvg`, `-ZsMin`, `-ZsMax`).
    Converted,
    /// The mass flow whose total is the amount (`-Cou`).
    Amount,
}

impl Table {
    /// The HJ 212-2017 table compiled into the binary.
    pub fn hj212_2017() -> Table {
        Table::from_toml(HJ212_2017).expect("the compiled-in HJ 212-2017 table is valid")
    }

    /// Load and check a table from TOML text.
    pub fn from_toml(text: &str) -> Result<Table, TableError> {
        let raw: RawTable = toml::from_str(text)?;
        if raw.version_bits > 0x3F {
            return Err(TableError::Invalid(format!(
                "version_bits {} does not fit in six bits",
                raw.version_bits
            )));
        }
        for c in raw.flags.all() {
            if !c.is_ascii_uppercase() {
                return Err(TableError::Invalid(format!(
                    "flag {c:?} is not an upper-case ASCII letter"
                )));
            }
        }
        let mut systems = BTreeMap::new();
        for (code, meaning) in raw.systems {
            let n: u16 = code
                .parse()
                .ok()
                .filter(|_| code.len() == 2)
                .ok_or_else(|| {
                    TableError::Invalid(format!("system code {code:?} is not 2 digits"))
                })?;
            systems.insert(n, meaning);
        }
        let mut by_name = HashMap::new();
        let mut codes = HashSet::new();
        for (i, f) in raw.factors.iter().enumerate() {
            if !codes.insert(f.code.clone()) {
                return Err(TableError::Invalid(format!(
                    "factor {} listed twice",
                    f.code
                )));
            }
            let names = std::iter::once(&f.code)
                .chain(&f.quantities)
                .map(|n| (n, Role::Measured))
                .chain(f.converted_quantities.iter().map(|n| (n, Role::Converted)))
                .chain(f.amount_quantities.iter().map(|n| (n, Role::Amount)));
            for (name, role) in names {
                if by_name.insert(name.clone(), (i, role)).is_some() {
                    return Err(TableError::Invalid(format!(
                        "quantity {name:?} maps to more than one factor"
                    )));
                }
            }
        }
        Ok(Table {
            name: raw.name,
            version_bits: raw.version_bits,
            limits: raw.limits,
            commands: raw.commands,
            systems,
            flags: raw.flags,
            factors: raw.factors,
            by_name,
        })
    }

    /// The factor of a smeltwatch quantity name (of any [`Role`]) or of a factor code.
    pub fn factor(&self, quantity: &str) -> Option<&Factor> {
        self.factor_role(quantity).map(|(f, _)| f)
    }

    /// The factor of a quantity name and what the quantity is to it.
    pub fn factor_role(&self, quantity: &str) -> Option<(&Factor, Role)> {
        self.by_name
            .get(quantity)
            .map(|&(i, role)| (&self.factors[i], role))
    }

    /// The Flag field value: version bits, split bit D and acknowledgement bit A.
    pub fn flag(&self, split: bool, ack: bool) -> u8 {
        (self.version_bits << 2) | (u8::from(split) << 1) | u8::from(ack)
    }
}

/// The data logger's identity and settings, the header of every packet it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Station {
    /// System code (31 for stacks).
    pub st: u16,
    /// Access password (6 characters).
    pub pw: String,
    /// Device unique ID (24 characters in HJ 212-2017).
    pub mn: String,
    /// Ask the platform to acknowledge data packets (Flag bit A, answered with 9014).
    pub ack: bool,
    /// Offset of local time from UTC in minutes (+480 for China): QN and DataTime are local.
    pub utc_offset_min: i32,
}
