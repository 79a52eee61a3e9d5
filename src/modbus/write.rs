//! Guarded writes to Modbus points: the policy (pure) and the hand-over to a source's poller.
//!
//! smeltwatch never writes to a controller unless the configuration allows that register
//! explicitly. A write request from the north (a Sparkplug DCMD) therefore passes three gates
//! before a single byte goes on the bus:
//!
//! 1. the uplink it arrived on allows device writes (`[uplinks.device_writes] enabled = true`, which
//!    the configuration only accepts on an authenticated uplink);
//! 2. the point is marked `writable` and lives in a writable area (a holding register or a coil);
//! 3. the value has the point's kind (a number for a number, a bool for a bool), lies within the
//!    point's configured `range` (engineering units), and, after the inverse of `scale` and
//!    `offset`, fits the point's wire type exactly (an integer register takes no fraction).
//!
//! [`check_write`] applies the three gates and, when they pass, encodes the registers with the
//! point's data type and byte order ([`encode`]). The encoded write is then queued to the poller
//! of the point's source ([`SourceWriter::write`]), which serves it between two polls on its own
//! connection: a write never bypasses the per-connection schedule, and there is still only one
//! request in flight on the bus. The queue is bounded; a full queue refuses the write rather than
//! piling up commands for a controller that is not keeping up.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_modbus::ExceptionCode;

use super::poller::LinkError;
use crate::config::{Area, ByteOrder, DataType, DeviceConfig, PointConfig, SourceConfig};
use crate::model::Value;

/// Writes a source's queue holds before new ones are refused.
pub const WRITE_QUEUE: usize = 16;

/// Why a write was refused before it reached the device.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The uplink the request came from does not allow device writes.
    WritesDisabled,
    /// No such device or point in the configuration.
    UnknownPoint,
    /// The point is not marked `writable`.
    NotWritable,
    /// The point is writable in the configuration but its area or type cannot be written
    /// (input registers, discrete inputs, bits of a register, text).
    NotWritableArea(String),
    /// The value is of another kind than the point (text for a number, a number for a bool).
    WrongType {
        /// What the point takes.
        expected: &'static str,
    },
    /// The value lies outside the point's configured range.
    OutOfRange {
        /// The requested value.
        value: f64,
        /// Configured lower bound.
        min: f64,
        /// Configured upper bound.
        max: f64,
    },
    /// After the inverse scale and offset the value does not fit the wire type exactly.
    NotRepresentable(String),
    /// The source's write queue is full or its poller is not running.
    Busy,
    /// The command came retained: the broker hands it over again on every new subscription, so
    /// executing it would repeat the write on every reconnect.
    Retained,
    /// The command's timestamp is too far from the gateway's clock (a delayed or replayed
    /// command): `age_ms` old (negative: ahead of the clock), `max_age_ms` allowed.
    Stale {
        /// Clock minus the command's timestamp, ms.
        age_ms: i64,
        /// The configured limit, ms.
        max_age_ms: i64,
    },
    /// The command carries no timestamp to check its age against.
    NoTimestamp,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::WritesDisabled => f.write_str("device writes are disabled on this uplink"),
            Refusal::UnknownPoint => f.write_str("no such device or point"),
            Refusal::NotWritable => f.write_str("the point is not marked writable"),
            Refusal::NotWritableArea(why) => write!(f, "the point cannot be written: {why}"),
            Refusal::WrongType { expected } => write!(f, "wrong value type, expected {expected}"),
            Refusal::OutOfRange { value, min, max } => {
                write!(f, "{value} is outside the configured range {min}..={max}")
            }
            Refusal::NotRepresentable(why) => f.write_str(why),
            Refusal::Busy => f.write_str("the source's write queue is full or stopped"),
            Refusal::Retained => f.write_str(
                "the command was retained by the broker: a retained command would be executed again on every reconnect",
            ),
            Refusal::Stale { age_ms, max_age_ms } if *age_ms < 0 => write!(
                f,
                "the command's timestamp is {:.1} s ahead of the gateway's clock, more than max_command_age ({:.1} s)",
                -*age_ms as f64 / 1000.0,
                *max_age_ms as f64 / 1000.0
            ),
            Refusal::Stale { age_ms, max_age_ms } => write!(
                f,
                "the command is {:.1} s old, older than max_command_age ({:.1} s)",
                *age_ms as f64 / 1000.0,
                *max_age_ms as f64 / 1000.0
            ),
            Refusal::NoTimestamp => {
                f.write_str("the command carries no timestamp to check its age against")
            }
        }
    }
}

/// What goes on the bus for one point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteData {
    /// Holding registers from the point's address (FC 6 for one, FC 16 for more).
    Registers(Vec<u16>),
    /// One coil (FC 5).
    Coil(bool),
}

/// Apply the three gates to a requested write of `value` to `point`; the encoded write when all
/// pass. `writes_enabled` is the uplink's `[uplinks.device_writes] enabled`.
pub fn check_write(
    writes_enabled: bool,
    point: &PointConfig,
    value: &Value,
) -> Result<WriteData, Refusal> {
    if !writes_enabled {
        return Err(Refusal::WritesDisabled);
    }
    if !point.writable {
        return Err(Refusal::NotWritable);
    }
    encode(point, value)
}

/// Encode `value` (engineering units) for `point`: kind and range checked, inverse scale and
/// offset applied, the wire type's limits checked, words laid out in the point's byte order.
pub fn encode(point: &PointConfig, value: &Value) -> Result<WriteData, Refusal> {
    if let Some(coil) = check_area(point, value)? {
        return Ok(coil);
    }
    let x = engineering_value(point, value)?;
    let identity = point.scale == 1.0 && point.offset == 0.0;
    // Integers with identity scaling are taken exactly (an i64 does not pass through a float).
    let exact: Option<i128> = match value {
        Value::Int(i) if identity => Some(i128::from(*i)),
        Value::UInt(u) if identity => Some(i128::from(*u)),
        _ => None,
    };
    let raw = if identity {
        x
    } else {
        (x - point.offset) / point.scale
    };
    let v = RegisterValue { x, raw, exact };
    Ok(WriteData::Registers(register_words(point, &v)?))
}

/// The write of a coil, `None` for a holding register that may take a number, or the refusal
/// of an area or type that cannot be written.
fn check_area(point: &PointConfig, value: &Value) -> Result<Option<WriteData>, Refusal> {
    match (point.area, point.data_type) {
        (Area::Input | Area::DiscreteInput, _) => Err(Refusal::NotWritableArea(format!(
            "{} is a read-only area",
            point.area.as_str()
        ))),
        (Area::Coil, _) => {
            let Value::Bool(on) = value else {
                return Err(Refusal::WrongType { expected: "a bool" });
            };
            Ok(Some(WriteData::Coil(*on)))
        }
        (Area::Holding, DataType::Bool { .. }) => Err(Refusal::NotWritableArea(
            "a bit of a register needs a read-modify-write, which smeltwatch does not do".into(),
        )),
        (Area::Holding, DataType::Ascii { .. }) => {
            Err(Refusal::NotWritableArea("text points are read-only".into()))
        }
        (Area::Holding, _) => Ok(None),
    }
}

/// `value` as a finite number inside the point's configured range.
fn engineering_value(point: &PointConfig, value: &Value) -> Result<f64, Refusal> {
    let x = match value {
        Value::Int(i) => *i as f64,
        Value::UInt(u) => *u as f64,
        Value::Float(f) => *f,
        Value::Bool(_) | Value::Text(_) => {
            return Err(Refusal::WrongType {
                expected: "a number",
            });
        }
    };
    if !x.is_finite() {
        return Err(Refusal::NotRepresentable(format!(
            "{x} is not a finite number"
        )));
    }
    if let Some((min, max)) = point.range
        && !(min..=max).contains(&x)
    {
        return Err(Refusal::OutOfRange { value: x, min, max });
    }
    Ok(x)
}

/// A value on its way to a register: in engineering units, in register units, and exactly
/// when it is an integer taken without scaling.
struct RegisterValue {
    x: f64,
    raw: f64,
    exact: Option<i128>,
}

impl RegisterValue {
    /// The register-unit integer, checked against the wire type's range `lo..=hi`.
    fn integer(&self, point: &PointConfig, lo: i128, hi: i128) -> Result<u64, Refusal> {
        let (x, raw) = (self.x, self.raw);
        let n = match self.exact {
            Some(n) => n,
            None => {
                // Scaling may leave float noise (12.3 / 0.1 = 122.99999999999999): round to the
                // nearest integer when within a millionth of it, refuse a real fraction.
                let r = raw.round();
                if (raw - r).abs() > 1e-6 * raw.abs().max(1.0) {
                    return Err(Refusal::NotRepresentable(format!(
                        "{x} is {raw} in register units, which has a fraction and the register \
                         holds an integer"
                    )));
                }
                r as i128
            }
        };
        if n < lo || n > hi {
            return Err(Refusal::NotRepresentable(format!(
                "{x} is {n} in register units, outside the {} range {lo}..={hi}",
                point.data_type.name()
            )));
        }
        Ok(n as u64)
    }
}

/// The registers of `v` for the point's wire type and byte order.
fn register_words(point: &PointConfig, v: &RegisterValue) -> Result<Vec<u16>, Refusal> {
    let order = point.byte_order;
    let integer = |lo: i128, hi: i128| v.integer(point, lo, hi);
    Ok(match point.data_type {
        DataType::U16 => words(integer(0, i128::from(u16::MAX))?, 1, order),
        DataType::I16 => words(
            integer(i128::from(i16::MIN), i128::from(i16::MAX))? as i16 as u16 as u64,
            1,
            order,
        ),
        DataType::U32 => words(integer(0, i128::from(u32::MAX))?, 2, order),
        DataType::I32 => words(
            integer(i128::from(i32::MIN), i128::from(i32::MAX))? as i32 as u32 as u64,
            2,
            order,
        ),
        DataType::U64 => words(integer(0, i128::from(u64::MAX))?, 4, order),
        DataType::I64 => words(
            integer(i128::from(i64::MIN), i128::from(i64::MAX))? as i64 as u64,
            4,
            order,
        ),
        DataType::F32 => {
            let f = v.raw as f32;
            if !f.is_finite() {
                return Err(Refusal::NotRepresentable(format!(
                    "{} does not fit an f32",
                    v.x
                )));
            }
            words(u64::from(f.to_bits()), 2, order)
        }
        DataType::F64 => words(v.raw.to_bits(), 4, order),
        DataType::Bool { .. } | DataType::Ascii { .. } => unreachable!("refused above"),
    })
}

/// The `n` registers of the big-endian integer `value` under `order` (the inverse of
/// [`decode::assemble`](crate::modbus::decode::assemble)).
fn words(value: u64, n: usize, order: ByteOrder) -> Vec<u16> {
    let mut w: Vec<u16> = (0..n)
        .map(|i| (value >> (16 * (n - 1 - i))) as u16)
        .collect();
    if matches!(order, ByteOrder::Badc | ByteOrder::Dcba) {
        w.iter_mut().for_each(|x| *x = x.swap_bytes());
    }
    if matches!(order, ByteOrder::Cdab | ByteOrder::Dcba) {
        w.reverse();
    }
    w
}

/// One write handed to a poller.
#[derive(Debug)]
pub struct WriteCommand {
    /// Unit id of the device.
    pub unit_id: u8,
    /// Device name (for logs).
    pub device: Arc<str>,
    /// Protocol address of the point.
    pub address: u16,
    /// What to write.
    pub data: WriteData,
    /// Where the outcome goes: `Ok` once the device confirmed, `Err` with the reason otherwise.
    pub reply: oneshot::Sender<Result<(), WriteError>>,
}

/// Why the device did not confirm a write the poller sent it, split as a read's failure is: a
/// device that said no, or a link that gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The device answered with a Modbus exception; the link is healthy.
    #[error("the device answered with exception {0:?}")]
    Exception(ExceptionCode),
    /// No connection, a transport error, a mismatched reply or no reply in time; the connection
    /// is rebuilt.
    #[error(transparent)]
    Link(LinkError),
}

/// The poller's end of a source's write queue (see [`Poller::with_writes`](super::poller::Poller::with_writes)).
#[derive(Debug)]
pub struct WriteQueue(pub(crate) mpsc::Receiver<WriteCommand>);

/// The sending end of one source's write queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SourceWriter {
    tx: mpsc::Sender<WriteCommand>,
    /// Longest wait for the poller's answer: the source's timeout plus the longest poll cycle
    /// the write may have to wait behind.
    patience: Duration,
}

/// Why a write that passed the gates did not complete.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteFailure {
    /// Refused before it was queued.
    Refused(Refusal),
    /// Queued, but the device did not confirm it (exception, timeout, no connection).
    Failed(String),
}

impl fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteFailure::Refused(r) => r.fmt(f),
            WriteFailure::Failed(why) => f.write_str(why),
        }
    }
}

/// A write queue for `source`: the writer for the north side, the queue for its poller.
pub fn write_queue(source: &SourceConfig) -> (SourceWriter, WriteQueue) {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let points: usize = source.devices.iter().map(|d| d.points.len()).sum();
    // Behind a write there may be one whole poll cycle of the source (every point timing out at
    // worst), then the write itself.
    let patience = source.timeout * (points as u32 + 2) + Duration::from_secs(1);
    (SourceWriter { tx, patience }, WriteQueue(rx))
}

impl SourceWriter {
    /// Queue a checked write of `device`'s `point` and wait for the device's answer.
    pub async fn write(
        &self,
        device: &DeviceConfig,
        point: &PointConfig,
        data: WriteData,
    ) -> Result<(), WriteFailure> {
        let (reply, answer) = oneshot::channel();
        let cmd = WriteCommand {
            unit_id: device.unit_id,
            device: device.name.clone(),
            address: point.address,
            data,
            reply,
        };
        self.tx
            .try_send(cmd)
            .map_err(|_| WriteFailure::Refused(Refusal::Busy))?;
        match tokio::time::timeout(self.patience, answer).await {
            Ok(Ok(result)) => result.map_err(|e| WriteFailure::Failed(e.to_string())),
            Ok(Err(_)) => Err(WriteFailure::Failed(
                "the poller stopped before the write".into(),
            )),
            Err(_) => Err(WriteFailure::Failed(format!(
                "no answer from the poller within {}",
                humantime::format_duration(self.patience)
            ))),
        }
    }
}

/// Every configured device with its source's writer, by device name.
#[derive(Debug, Clone, Default)]
pub struct DeviceWriters {
    by_device: HashMap<Arc<str>, (SourceWriter, Arc<DeviceConfig>)>,
}

impl DeviceWriters {
    /// Writers for every source (one queue each); the queues, in source order, go to the pollers.
    pub fn for_sources(sources: &[SourceConfig]) -> (DeviceWriters, Vec<WriteQueue>) {
        let mut by_device = HashMap::new();
        let mut queues = Vec::with_capacity(sources.len());
        for source in sources {
            let (writer, queue) = write_queue(source);
            for d in &source.devices {
                by_device.insert(d.name.clone(), (writer.clone(), Arc::new(d.clone())));
            }
            queues.push(queue);
        }
        (DeviceWriters { by_device }, queues)
    }

    /// The device and its writer.
    pub fn device(&self, name: &str) -> Option<(&SourceWriter, &DeviceConfig)> {
        self.by_device.get(name).map(|(w, d)| (w, d.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::modbus::decode::decode_registers;

    fn point(data_type: DataType, order: ByteOrder) -> PointConfig {
        PointConfig {
            name: "p".into(),
            area: Area::Holding,
            address: 10,
            data_type,
            byte_order: order,
            scale: 1.0,
            offset: 0.0,
            unit: "".into(),
            poll_interval: Duration::from_secs(1),
            range: None,
            writable: true,
        }
    }

    fn regs(r: Result<WriteData, Refusal>) -> Vec<u16> {
        match r {
            Ok(WriteData::Registers(w)) => w,
            other => panic!("expected registers, got {other:?}"),
        }
    }

    #[test]
    fn the_gates_refuse_in_order_disabled_then_not_writable() {
        let mut p = point(DataType::U16, ByteOrder::Abcd);
        assert_eq!(
            check_write(false, &p, &Value::UInt(1)),
            Err(Refusal::WritesDisabled)
        );
        p.writable = false;
        assert_eq!(
            check_write(true, &p, &Value::UInt(1)),
            Err(Refusal::NotWritable)
        );
        p.writable = true;
        assert_eq!(
            check_write(true, &p, &Value::UInt(1)),
            Ok(WriteData::Registers(vec![1]))
        );
    }

    #[test]
    fn values_outside_the_configured_range_are_refused() {
        let mut p = point(DataType::F32, ByteOrder::Cdab);
        p.range = Some((380.0, 420.0));
        assert_eq!(
            encode(&p, &Value::Float(421.0)),
            Err(Refusal::OutOfRange {
                value: 421.0,
                min: 380.0,
                max: 420.0
            })
        );
        assert!(encode(&p, &Value::Float(400.0)).is_ok());
        assert!(encode(&p, &Value::Int(380)).is_ok(), "bounds are inclusive");
    }

    #[test]
    fn wrong_kinds_and_read_only_areas_are_refused() {
        let p = point(DataType::I16, ByteOrder::Abcd);
        assert_eq!(
            encode(&p, &Value::Bool(true)),
            Err(Refusal::WrongType {
                expected: "a number"
            })
        );
        assert!(matches!(
            encode(&p, &Value::Text("1".into())),
            Err(Refusal::WrongType { .. })
        ));
        let mut input = p.clone();
        input.area = Area::Input;
        assert!(matches!(
            encode(&input, &Value::Int(1)),
            Err(Refusal::NotWritableArea(_))
        ));
        let bit = point(DataType::Bool { bit: Some(3) }, ByteOrder::Abcd);
        assert!(matches!(
            encode(&bit, &Value::Bool(true)),
            Err(Refusal::NotWritableArea(_))
        ));
        let mut coil = point(DataType::Bool { bit: None }, ByteOrder::Abcd);
        coil.area = Area::Coil;
        assert_eq!(encode(&coil, &Value::Bool(true)), Ok(WriteData::Coil(true)));
        assert!(matches!(
            encode(&coil, &Value::Int(1)),
            Err(Refusal::WrongType { .. })
        ));
    }

    #[test]
    fn integers_outside_the_wire_type_or_with_a_fraction_are_refused() {
        let p = point(DataType::U16, ByteOrder::Abcd);
        assert!(matches!(
            encode(&p, &Value::Int(-1)),
            Err(Refusal::NotRepresentable(_))
        ));
        assert!(matches!(
            encode(&p, &Value::UInt(65_536)),
            Err(Refusal::NotRepresentable(_))
        ));
        assert!(matches!(
            encode(&p, &Value::Float(1.5)),
            Err(Refusal::NotRepresentable(_))
        ));
        assert_eq!(regs(encode(&p, &Value::Float(7.0))), vec![7]);
    }

    #[test]
    fn inverse_scale_and_offset_give_the_register_value() {
        // temp_c = raw × 0.1 − 40 → −12.3 °C is raw 277.
        let mut p = point(DataType::I16, ByteOrder::Abcd);
        p.scale = 0.1;
        p.offset = -40.0;
        assert_eq!(regs(encode(&p, &Value::Float(-12.3))), vec![277]);
        // A negative raw value in two's complement: −45.5 °C is raw −55.
        assert_eq!(
            regs(encode(&p, &Value::Float(-45.5))),
            vec![(-55i16) as u16]
        );
        // 0.05 °C is raw 400.5: a fraction the register cannot hold.
        assert!(matches!(
            encode(&p, &Value::Float(0.05)),
            Err(Refusal::NotRepresentable(_))
        ));
    }

    #[test]
    fn every_type_and_order_decodes_back_to_the_written_value() {
        let cases: Vec<(DataType, Value)> = vec![
            (DataType::U16, Value::UInt(54_321)),
            (DataType::I16, Value::Int(-1234)),
            (DataType::U32, Value::UInt(4_000_000_000)),
            (DataType::I32, Value::Int(-2_000_000_000)),
            (DataType::U64, Value::UInt(18_000_000_000_000_000_000)),
            (DataType::I64, Value::Int(-9_000_000_000_000_000_000)),
            (DataType::F32, Value::Float(-402.5)),
            (DataType::F64, Value::Float(123.456_789_012_345)),
        ];
        for order in ByteOrder::ALL {
            for (ty, v) in &cases {
                let p = point(*ty, order);
                let w = regs(encode(&p, v));
                assert_eq!(w.len(), usize::from(ty.registers()));
                assert_eq!(
                    decode_registers(&p, &w).0.as_ref(),
                    Some(v),
                    "{} {}",
                    ty.name(),
                    order.as_str()
                );
            }
        }
    }

    #[test]
    fn a_failed_write_reads_as_its_link_failure() {
        use crate::acquisition::ConnectError;
        use crate::modbus::poller::LinkError;
        let timed_out = WriteError::Link(LinkError::TimedOut(Duration::from_millis(1500)));
        assert_eq!(timed_out.to_string(), "no reply within 1s 500ms");
        let backoff = WriteError::Link(LinkError::NotConnected(ConnectError::Backoff));
        assert_eq!(backoff.to_string(), "reconnect backoff");
        let short = LinkError::ShortReply { got: 1, asked: 2 };
        assert_eq!(short.to_string(), "short reply: 1 of 2 values");
    }

    #[test]
    fn f32_cdab_lays_out_the_low_word_first() {
        // 400.0 f32 = 0x43C8_0000: CDAB sends 0x0000 then 0x43C8.
        let p = point(DataType::F32, ByteOrder::Cdab);
        assert_eq!(regs(encode(&p, &Value::Float(400.0))), vec![0x0000, 0x43C8]);
    }
}
