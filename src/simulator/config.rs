//! The `[simulator]` section of a configuration file, and its validation.
//!
//! Every plant is named; devices are named after their plant (`potline1/rectifier`,
//! `potline1/pot_005`, `smelter1`, `gtc1_stack`) and faults refer to devices by those names.
//! Plants whose `listen` addresses are equal share one TCP socket (one gateway with several unit
//! ids); their unit ids must then differ.
//!
//! The section's vocabulary is here with it: the faults a device injects ([`Faults`], which the
//! devices act on) and the register tables of the simulated devices ([`layout`]), pure constants
//! that the shipped register maps describe again for the agent and that a stack's `fixed` points
//! are checked against. The runtime (`simulator::device`, `simulator::plant`) builds on them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Area;

pub mod layout;

/// The `[simulator]` section of a configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Seed of every random sequence. The same seed and configuration give the same values,
    /// tick by tick. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Model update period (humantime, default `"1s"`). Every device's registers change once per
    /// tick.
    #[serde(default = "default_tick", with = "humantime_serde")]
    pub tick: Duration,
    /// Model seconds per real second (default 1). Each tick advances the models by
    /// `tick × time_scale`: at 60 an hour of plant time passes in a minute. For tests and demos
    /// of hour and day windows; pair it with `[calc.simulated_time]` so that the calculators
    /// see the same plant time.
    #[serde(default = "default_time_scale")]
    pub time_scale: f64,
    /// Allow `listen` addresses that are not loopback (default false: the simulator is a test
    /// tool and must not appear on a plant network by accident).
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// Aluminium potlines: a rectifier and one pot control unit per cell.
    #[serde(default)]
    pub potlines: Vec<PotlineSim>,
    /// Copper smelter controllers.
    #[serde(default)]
    pub smelters: Vec<SmelterSim>,
    /// Stack CEMS analysers.
    #[serde(default)]
    pub stacks: Vec<StackSim>,
    /// Faults injected from the start (they can be changed at runtime through device handles).
    #[serde(default)]
    pub faults: Vec<FaultSim>,
    /// DL/T 645 meter buses, each behind a simulated transparent serial server.
    #[serde(default)]
    pub meter_buses: Vec<MeterBusSim>,
}

/// A DL/T 645 bus of meters served over TCP, as a transparent serial server serves its RS-485
/// line (`[[simulator.meter_buses]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterBusSim {
    /// Bus name (an endpoint name).
    pub name: String,
    /// Address the serial server listens on.
    pub listen: SocketAddr,
    /// The edition its meters speak (`"dlt645-2007"` or `"dlt645-1997"`).
    pub edition: crate::dlt645::config::Edition,
    /// The meters.
    pub meters: Vec<MeterSim>,
}

/// One simulated DL/T 645 meter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterSim {
    /// Its address, up to 12 digits.
    pub address: String,
    /// Energy on its total register at the start, kWh.
    #[serde(default)]
    pub energy_start_kwh: f64,
    /// The load it measures, kW (its energy advances by it every tick).
    pub load_kw: f64,
}

fn default_tick() -> Duration {
    Duration::from_secs(1)
}

const fn default_time_scale() -> f64 {
    1.0
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            seed: 0,
            tick: default_tick(),
            time_scale: default_time_scale(),
            allow_non_loopback: false,
            potlines: Vec::new(),
            smelters: Vec::new(),
            stacks: Vec::new(),
            faults: Vec::new(),
            meter_buses: Vec::new(),
        }
    }
}

/// One potline: a rectifier (unit `rectifier_unit_id`) and `cells` pot control units (unit ids
/// `first_pot_unit_id ..`), all behind one TCP endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PotlineSim {
    /// Plant name; devices are `{name}/rectifier` and `{name}/pot_{n:03}` (n from 1).
    pub name: String,
    /// Address the Modbus TCP server listens on (`127.0.0.1:15020`).
    pub listen: SocketAddr,
    /// Number of cells (1..=200; the unit ids must stay within 1..=247).
    pub cells: u16,
    /// Unit id of the rectifier (default 1).
    #[serde(default = "one")]
    pub rectifier_unit_id: u8,
    /// Unit id of cell 1; cell n has `first_pot_unit_id + n - 1` (default 10).
    #[serde(default = "ten")]
    pub first_pot_unit_id: u8,
    /// Line current set point in kA (default 400). Drifts slowly around it.
    #[serde(default = "default_current_ka")]
    pub line_current_ka: f64,
    /// Target cell voltage in V (default 4.05).
    #[serde(default = "default_cell_voltage_v")]
    pub cell_voltage_v: f64,
    /// Busbar voltage drop of the whole line at the set-point current, in V (default 5.0).
    #[serde(default = "default_bus_drop_v")]
    pub bus_drop_v: f64,
    /// Mean bath temperature in °C (default 955).
    #[serde(default = "default_bath_temp_c")]
    pub bath_temp_c: f64,
    /// Anode-effect rate per in-service cell and day (default 0.05; modern lines run
    /// 0.01–0.3, a demo wants a few per minute, e.g. 200 for 23 cells).
    #[serde(default = "default_ae_rate")]
    pub anode_effects_per_cell_day: f64,
    /// Anode effects at known times, besides the random ones (set the rate to 0 to have only
    /// these): a seeded schedule for tests that must know what the agent should detect.
    #[serde(default)]
    pub anode_effect_schedule: Vec<ScheduledAnodeEffect>,
    /// Cells (numbered from 1) cut out of service: voltage ≈ 0, status bit `cut_out`.
    #[serde(default)]
    pub cells_out_of_service: Vec<u16>,
    /// Initial DC energy counter in kWh (default 0). Set it close to 4294967295 to see the
    /// counter roll over soon.
    #[serde(default)]
    pub dc_energy_start_kwh: u32,
    /// Initial AC energy counter in kWh (default: the DC start value).
    #[serde(default)]
    pub ac_energy_start_kwh: Option<u32>,
    /// Rectifier efficiency DC/AC (default 0.975).
    #[serde(default = "default_efficiency")]
    pub rectifier_efficiency: f64,
}

/// An anode effect at a known model time.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledAnodeEffect {
    /// Cell number (from 1); it must be in service.
    pub cell: u16,
    /// Model time after the simulator start at which the voltage jumps (humantime, `"10m"`).
    /// The effect shows from the first tick at or after it.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// How long it lasts (model time): the voltage is back to normal from the first tick at or
    /// after `at + duration`.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Voltage at the start, V (default 30); it decays towards 9 V, never below 8.2 V.
    #[serde(default = "default_ae_peak_v")]
    pub peak_v: f64,
}

const fn default_ae_peak_v() -> f64 {
    30.0
}

/// One copper flash-smelter controller.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmelterSim {
    /// Device name.
    pub name: String,
    /// Address the Modbus TCP server listens on.
    pub listen: SocketAddr,
    /// Unit id (default 1).
    #[serde(default = "one")]
    pub unit_id: u8,
    /// Concentrate feed set point in t/h (default 150).
    #[serde(default = "default_feed_tph")]
    pub concentrate_feed_tph: f64,
}

/// One stack CEMS analyser.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackSim {
    /// Device name.
    pub name: String,
    /// Address the Modbus TCP server listens on.
    pub listen: SocketAddr,
    /// Unit id (default 1).
    #[serde(default = "one")]
    pub unit_id: u8,
    /// Which kind of stack: typical concentrations, flow, temperature and moisture.
    pub profile: StackProfile,
    /// Points held at a constant value without noise (`{ so2_mg_m3 = 250.0 }`): a known
    /// exceedance or a known mass flow for tests and demos. Keys are CEMS point names.
    #[serde(default)]
    pub fixed: BTreeMap<String, f64>,
}

/// Typical values of a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackProfile {
    /// Copper smelter tail-gas stack after the acid plant: SO2 ≈ 120 mg/m³ (GB 25467 limit 400),
    /// particulate ≈ 8, NOx ≈ 60, O2 ≈ 13 %, ≈ 250 000 m³/h at ≈ 65 °C, moisture ≈ 8 %.
    CopperSmelter,
    /// Potline gas-treatment-centre stack: SO2 ≈ 85 mg/m³ (GB 25465 limit 200), particulate
    /// ≈ 4 (limit 20), fluoride ≈ 0.85 (limit 3.0), O2 ≈ 20.6 %, ≈ 1.6 million m³/h at ≈ 105 °C.
    PotlineGtc,
}

/// A fault injected into one device from the start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSim {
    /// Device name (`potline1/pot_005`, `potline1/rectifier`, `smelter1`).
    pub device: String,
    /// Added delay before every reply (humantime, e.g. `"2s"`).
    #[serde(default, with = "humantime_serde")]
    pub latency: Option<Duration>,
    /// Extra random delay, uniform in `0..=latency_jitter`, from the seeded RNG.
    #[serde(default, with = "humantime_serde")]
    pub latency_jitter: Option<Duration>,
    /// Never answer.
    #[serde(default)]
    pub silent: bool,
    /// Never answer requests touching these addresses `[first, last]`; answer the others.
    #[serde(default)]
    pub silent_addresses: Option<[u16; 2]>,
    /// Answer with this Modbus exception code (1..=255; 6 = server device busy).
    #[serde(default)]
    pub exception: Option<u8>,
    /// Only requests touching these addresses `[first, last]` get the exception.
    #[serde(default)]
    pub exception_addresses: Option<[u16; 2]>,
    /// Close the TCP connection instead of answering every N-th request.
    #[serde(default)]
    pub drop_every: u64,
    /// Close the TCP connection on the first request, once.
    #[serde(default)]
    pub drop_once: bool,
    /// Corrupt every N-th reply.
    #[serde(default)]
    pub corrupt_every: u64,
    /// How replies are corrupted: `transaction_id` (default), `protocol_id` or `truncate`.
    #[serde(default)]
    pub corruption: Corruption,
}

impl FaultSim {
    /// The runtime form.
    pub fn to_faults(&self) -> Faults {
        Faults {
            latency: self.latency.unwrap_or_default(),
            latency_jitter: self.latency_jitter.unwrap_or_default(),
            silent: self.silent,
            silent_addresses: self.silent_addresses.map(|[a, b]| a..=b),
            exception: self.exception.map(|code| ExceptionFault {
                code,
                addresses: self.exception_addresses.map(|[a, b]| a..=b),
            }),
            drop_every: self.drop_every,
            drop_once: self.drop_once,
            corrupt_every: self.corrupt_every,
            corrupt_once: false,
            corruption: self.corruption,
            glitch_once: None,
        }
    }
}

/// How a corrupted reply is corrupted (see [`Faults::corrupt_every`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Corruption {
    /// The reply's MBAP transaction id is changed (the client sees a header mismatch, like a late
    /// reply to an earlier request).
    #[default]
    TransactionId,
    /// The reply's MBAP protocol id is not 0 (the client's decoder rejects the frame).
    ProtocolId,
    /// Only the first half of the reply is sent, then the connection is closed.
    Truncate,
}

/// An exception the device answers instead of data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionFault {
    /// Modbus exception code (2 illegal data address, 4 server device failure, 6 busy, ...).
    pub code: u8,
    /// Only requests touching these addresses (any area) get the exception; `None` = all requests.
    pub addresses: Option<RangeInclusive<u16>>,
}

/// Wrong register values that one reply carries instead of the bank's (see
/// [`Faults::glitch_once`]): a bad frame that passed the checksum, a half-updated register pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glitch {
    /// Register bank: `Area::Holding` or `Area::Input` (any other area never matches).
    pub area: Area,
    /// First register replaced.
    pub address: u16,
    /// The words the reply carries from `address` on, as on the wire.
    pub words: Vec<u16>,
}

/// The faults a device injects. `Faults::default()` is a healthy device.
///
/// When several faults apply to one request they are applied in this order: the request is
/// counted; `silent` swallows it; the latency is waited; a drop closes the connection; the
/// exception is answered; otherwise the request is served, a register read that covers the
/// registers of `glitch_once` carries its words, and the reply may be corrupted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added before every reply (and before a drop or an exception).
    pub latency: Duration,
    /// Extra latency drawn uniformly from `0..=latency_jitter` with the device's seeded RNG.
    pub latency_jitter: Duration,
    /// Never answer (the request is read and ignored; the connection stays open).
    pub silent: bool,
    /// Never answer requests touching these addresses (any area), and answer the others: a
    /// device with one block that hangs its firmware, or a gateway path to part of it.
    pub silent_addresses: Option<RangeInclusive<u16>>,
    /// Answer every request (or requests in a range) with a Modbus exception.
    pub exception: Option<ExceptionFault>,
    /// Close the client's TCP connection instead of answering every N-th request (0 = never).
    pub drop_every: u64,
    /// Close the connection on the next request, once.
    pub drop_once: bool,
    /// Corrupt every N-th reply (0 = never), as `corruption` says.
    pub corrupt_every: u64,
    /// Corrupt the next reply, once.
    pub corrupt_once: bool,
    /// How replies are corrupted.
    pub corruption: Corruption,
    /// The next served read of `area` whose range covers all of the glitch's registers replies
    /// with its words there (the banks are not changed); then it is cleared. Reads that do not
    /// cover them, and requests that are not served (silence, drop, exception), leave it pending.
    /// The value is wrong in exactly one reply, whatever the model writes meanwhile.
    pub glitch_once: Option<Glitch>,
}

const fn one() -> u8 {
    1
}
const fn ten() -> u8 {
    10
}
const fn default_current_ka() -> f64 {
    400.0
}
const fn default_cell_voltage_v() -> f64 {
    4.05
}
const fn default_bus_drop_v() -> f64 {
    5.0
}
const fn default_bath_temp_c() -> f64 {
    955.0
}
const fn default_ae_rate() -> f64 {
    0.05
}
const fn default_efficiency() -> f64 {
    0.975
}
const fn default_feed_tph() -> f64 {
    150.0
}

/// A `[simulator]` section that cannot be run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SimConfigError {
    /// Two devices have the same name.
    #[error("simulator: device name {0:?} is used twice")]
    DuplicateDevice(String),
    /// Two devices on one listen address have the same unit id.
    #[error("simulator: unit id {unit_id} on {listen} is used by both {first:?} and {second:?}")]
    DuplicateUnit {
        /// The shared address.
        listen: SocketAddr,
        /// The unit id.
        unit_id: u8,
        /// First device.
        first: String,
        /// Second device.
        second: String,
    },
    /// A unit id outside 1..=247.
    #[error("simulator: {device:?} would have unit id {unit_id}, outside 1..=247")]
    UnitId {
        /// Device name.
        device: String,
        /// The offending id.
        unit_id: u32,
    },
    /// A non-loopback listen address without `allow_non_loopback = true`.
    #[error(
        "simulator: {name:?} listens on {listen}, which is not loopback; set allow_non_loopback = true to allow it"
    )]
    NotLoopback {
        /// Plant name.
        name: String,
        /// The address.
        listen: SocketAddr,
    },
    /// A potline with no cells, too many, or an out-of-service cell that does not exist.
    #[error("simulator: potline {name:?}: {reason}")]
    Potline {
        /// Plant name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A fault names a device that does not exist.
    #[error("simulator: fault for unknown device {0:?}")]
    UnknownFaultDevice(String),
    /// A fault with an exception code of 0, or an empty address range.
    #[error("simulator: fault for {device:?}: {reason}")]
    Fault {
        /// Device name.
        device: String,
        /// What is wrong.
        reason: String,
    },
    /// A tick of zero.
    #[error("simulator: tick must be longer than 0")]
    Tick,
    /// A time scale that is not a positive number.
    #[error("simulator: time_scale = {0} (must be a number above 0)")]
    TimeScale(f64),
    /// A stack holds a point its CEMS does not have.
    #[error(
        "simulator: stack {stack:?}: fixed point {point:?} is not a CEMS point (known: {known})"
    )]
    FixedPoint {
        /// Stack name.
        stack: String,
        /// The unknown point.
        point: String,
        /// The CEMS points.
        known: String,
    },
}

/// One device the configuration describes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeviceSpec {
    pub(crate) name: String,
    pub(crate) listen: SocketAddr,
    pub(crate) unit_id: u8,
}

/// Name of cell `n` (1-based) of a potline.
pub fn pot_device_name(potline: &str, n: u16) -> String {
    format!("{potline}/pot_{n:03}")
}

/// Name of a potline's rectifier.
pub fn rectifier_device_name(potline: &str) -> String {
    format!("{potline}/rectifier")
}

impl SimulatorConfig {
    /// Every device the section describes, in a stable order (potlines, smelters, stacks).
    pub(crate) fn devices(&self) -> Result<Vec<DeviceSpec>, SimConfigError> {
        let mut out = Vec::new();
        for line in &self.potlines {
            if line.cells == 0 || line.cells > 200 {
                return Err(SimConfigError::Potline {
                    name: line.name.clone(),
                    reason: format!("cells = {} (must be 1..=200)", line.cells),
                });
            }
            out.push(spec(
                &rectifier_device_name(&line.name),
                line.listen,
                u32::from(line.rectifier_unit_id),
            )?);
            for n in 1..=line.cells {
                let unit = u32::from(line.first_pot_unit_id) + u32::from(n) - 1;
                out.push(spec(&pot_device_name(&line.name, n), line.listen, unit)?);
            }
        }
        for s in &self.smelters {
            out.push(spec(&s.name, s.listen, u32::from(s.unit_id))?);
        }
        for s in &self.stacks {
            out.push(spec(&s.name, s.listen, u32::from(s.unit_id))?);
        }
        Ok(out)
    }

    /// Checks everything that [`super::start`] relies on.
    pub fn validate(&self) -> Result<(), SimConfigError> {
        if self.tick.is_zero() {
            return Err(SimConfigError::Tick);
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(SimConfigError::TimeScale(self.time_scale));
        }
        let devices = self.devices()?;
        let mut names = BTreeSet::new();
        let mut units: BTreeMap<(SocketAddr, u8), &str> = BTreeMap::new();
        for d in &devices {
            if !names.insert(d.name.as_str()) {
                return Err(SimConfigError::DuplicateDevice(d.name.clone()));
            }
            if let Some(first) = units.insert((d.listen, d.unit_id), &d.name) {
                return Err(SimConfigError::DuplicateUnit {
                    listen: d.listen,
                    unit_id: d.unit_id,
                    first: first.to_string(),
                    second: d.name.clone(),
                });
            }
        }
        let listens = self
            .potlines
            .iter()
            .map(|p| (&p.name, p.listen))
            .chain(self.smelters.iter().map(|s| (&s.name, s.listen)))
            .chain(self.stacks.iter().map(|s| (&s.name, s.listen)))
            .chain(self.meter_buses.iter().map(|b| (&b.name, b.listen)));
        for (name, listen) in listens {
            if !self.allow_non_loopback && !listen.ip().is_loopback() {
                return Err(SimConfigError::NotLoopback {
                    name: name.clone(),
                    listen,
                });
            }
        }
        for line in &self.potlines {
            validate_potline(line)?;
        }
        for s in &self.stacks {
            let cems = layout::cems::LAYOUT;
            if let Some(p) = s.fixed.keys().find(|p| !cems.iter().any(|r| r.name == *p)) {
                return Err(SimConfigError::FixedPoint {
                    stack: s.name.clone(),
                    point: p.clone(),
                    known: cems.iter().map(|r| r.name).collect::<Vec<_>>().join(", "),
                });
            }
        }
        for f in &self.faults {
            validate_fault(f, &names)?;
        }
        Ok(())
    }
}

/// A potline's cells, anode-effect schedule and rectifier efficiency in range.
fn validate_potline(line: &PotlineSim) -> Result<(), SimConfigError> {
    if let Some(bad) = line
        .cells_out_of_service
        .iter()
        .find(|&&c| c == 0 || c > line.cells)
    {
        return Err(SimConfigError::Potline {
            name: line.name.clone(),
            reason: format!(
                "cells_out_of_service has cell {bad}, but cells are 1..={}",
                line.cells
            ),
        });
    }
    for ae in &line.anode_effect_schedule {
        if ae.cell == 0 || ae.cell > line.cells || line.cells_out_of_service.contains(&ae.cell) {
            return Err(SimConfigError::Potline {
                name: line.name.clone(),
                reason: format!(
                    "anode_effect_schedule has cell {}, which is not an in-service cell of 1..={}",
                    ae.cell, line.cells
                ),
            });
        }
        if ae.duration.is_zero() || !(ae.peak_v.is_finite() && ae.peak_v > 8.0) {
            return Err(SimConfigError::Potline {
                name: line.name.clone(),
                reason: format!(
                    "anode_effect_schedule entry for cell {} needs a duration above 0 and peak_v above 8 V",
                    ae.cell
                ),
            });
        }
    }
    if !(0.5..=1.0).contains(&line.rectifier_efficiency) {
        return Err(SimConfigError::Potline {
            name: line.name.clone(),
            reason: format!(
                "rectifier_efficiency = {} (must be 0.5..=1.0)",
                line.rectifier_efficiency
            ),
        });
    }
    Ok(())
}

/// A fault names a configured device and a consistent exception.
fn validate_fault(f: &FaultSim, names: &BTreeSet<&str>) -> Result<(), SimConfigError> {
    if !names.contains(f.device.as_str()) {
        return Err(SimConfigError::UnknownFaultDevice(f.device.clone()));
    }
    let bad = |reason: &str| SimConfigError::Fault {
        device: f.device.clone(),
        reason: reason.to_string(),
    };
    if f.exception == Some(0) {
        return Err(bad("exception code 0 is not a Modbus exception"));
    }
    if f.exception_addresses.is_some() && f.exception.is_none() {
        return Err(bad("exception_addresses without exception"));
    }
    if let Some([a, b]) = f.exception_addresses
        && RangeInclusive::new(a, b).is_empty()
    {
        return Err(bad(
            "exception_addresses must be [first, last] with first <= last",
        ));
    }
    Ok(())
}

fn spec(name: &str, listen: SocketAddr, unit_id: u32) -> Result<DeviceSpec, SimConfigError> {
    if !(1..=247).contains(&unit_id) {
        return Err(SimConfigError::UnitId {
            device: name.to_string(),
            unit_id,
        });
    }
    Ok(DeviceSpec {
        name: name.to_string(),
        listen,
        unit_id: unit_id as u8,
    })
}

#[cfg(test)]
mod tests;
