//! Shared domain types: what a reading is, when it was taken and how far it can be trusted.
//!
//! Everything downstream of the pollers (calculators, spool, encoders) speaks these types. They carry
//! no I/O and no clocks: a [`Timestamp`] is always the instant a value was *acquired*, taken by the
//! poller when the read that returned it completed, never the time it was encoded or sent.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
///
/// Milliseconds are what every northbound protocol we speak uses (Sparkplug, HJ 212 with ms QN,
/// JSON consumers), so nothing finer is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time. Only pollers and uplinks call this; pure cores take timestamps
    /// as arguments.
    pub fn now() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(since.as_millis() as i64)
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_ms(self) -> i64 {
        self.0
    }

    /// RFC 3339 with milliseconds, UTC (`2026-11-28T03:24:13.123Z`).
    pub fn to_rfc3339(self) -> String {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.0.max(0) as u64);
        humantime::format_rfc3339_millis(t).to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// How far a value can be trusted. Every value smeltwatch emits carries one.
///
/// The names are stable: they appear in JSON payloads, metrics labels and the HJ 212 flag mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// Read from the device, decoded, finite and within its plausible range.
    Good,
    /// The device did not answer (timeout, connection refused or dropped, garbled frame).
    CommFail,
    /// The device answered with a Modbus exception (illegal address, busy, gateway path…).
    DeviceException,
    /// Decoded, but NaN, infinite or outside the configured plausible range.
    OutOfRange,
    /// The last good value, repeated because no fresh one could be read.
    Stale,
    /// Replaced by a configured or computed substitute value.
    Substituted,
    /// The device or point is flagged as under maintenance.
    Maintenance,
    /// The analyser is calibrating (CEMS zero/span).
    Calibration,
}

impl Quality {
    /// Stable lowercase name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::CommFail => "comm_fail",
            Quality::DeviceException => "device_exception",
            Quality::OutOfRange => "out_of_range",
            Quality::Stale => "stale",
            Quality::Substituted => "substituted",
            Quality::Maintenance => "maintenance",
            Quality::Calibration => "calibration",
        }
    }

    /// Every quality, in declaration order (for counters and tests).
    pub const ALL: [Quality; 8] = [
        Quality::Good,
        Quality::CommFail,
        Quality::DeviceException,
        Quality::OutOfRange,
        Quality::Stale,
        Quality::Substituted,
        Quality::Maintenance,
        Quality::Calibration,
    ];

    /// Whether the value may be used in calculations.
    pub fn is_good(self) -> bool {
        self == Quality::Good
    }
}

impl fmt::Display for Quality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoded value. Integers keep their signedness so that a u64 energy counter never passes
/// through a float.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// Coil, discrete input or bit of a register.
    Bool(bool),
    /// Signed integer (i16, i32, i64), after scale and offset when both are identity.
    Int(i64),
    /// Unsigned integer (u16, u32, u64), after scale and offset when both are identity.
    UInt(u64),
    /// Float, or any integer that had a scale or offset applied.
    Float(f64),
    /// ASCII string (trailing NULs and spaces trimmed).
    Text(String),
}

impl Value {
    /// The value as a float, for calculators; `None` for text.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            Value::Int(i) => Some(i as f64),
            Value::UInt(u) => Some(u as f64),
            Value::Float(f) => Some(f),
            Value::Text(_) => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// One point's value from one poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Point name, unique within its device (`cell_voltage_v`).
    pub point: Arc<str>,
    /// The value; `None` when nothing could be read or decoded (quality says why).
    pub value: Option<Value>,
    /// Engineering unit after scaling (`V`, `kA`, `mg/m3`); empty when dimensionless.
    pub unit: Arc<str>,
    /// Trust in this value.
    pub quality: Quality,
    /// When the read that returned this value completed (or failed).
    pub ts: Timestamp,
}

/// Everything one device returned in one poll cycle of one poll class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingBatch {
    /// Source (physical connection) name from the configuration.
    pub source: Arc<str>,
    /// Device name, unique within the site.
    pub device: Arc<str>,
    /// Modbus unit id the device answered on.
    pub unit_id: u8,
    /// The poll class's period in milliseconds (e.g. 1000 for cell voltages).
    pub poll_interval_ms: u64,
    /// The scheduled instant of this cycle (deadline), for completeness accounting.
    pub scheduled: Timestamp,
    /// Readings, one per configured point, in read-plan order.
    pub readings: Vec<Reading>,
}

impl ReadingBatch {
    /// Number of readings of each quality.
    pub fn quality_counts(&self) -> [usize; Quality::ALL.len()] {
        let mut counts = [0; Quality::ALL.len()];
        for r in &self.readings {
            counts[r.quality as usize] += 1;
        }
        counts
    }
}

/// A unit of data on its way north: what fan-out hands to each uplink's spool.
///
/// The spool stores records in this canonical form (serialised as JSON) and each uplink encodes them
/// with its own encoder at send time, adding `(site, stream, seq)`. Later streams (metrics, events,
/// emissions) add variants here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// One poll batch of one device (stream `live`).
    Batch(ReadingBatch),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_formats_as_rfc3339_millis() {
        assert_eq!(
            Timestamp(1_764_300_253_123).to_rfc3339(),
            "2025-11-28T03:24:13.123Z"
        );
    }

    #[test]
    fn quality_serialises_snake_case() {
        assert_eq!(
            serde_json::to_string(&Quality::DeviceException).unwrap(),
            "\"device_exception\""
        );
        for (i, q) in Quality::ALL.iter().enumerate() {
            assert_eq!(*q as usize, i);
        }
    }
}
