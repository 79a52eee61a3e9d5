//! Plant models: what the simulated devices measure, advanced one tick at a time.
//!
//! Every model owns a seeded RNG (derived from the simulator seed and the plant name, so adding
//! a plant does not change the others) and the [`Device`] handles it writes into. A step depends
//! only on the model's state, its RNG, `dt` and the set points clients may have written, so the
//! same seed and the same number of ticks give the same registers. There are no clocks here: the
//! runtime calls [`Plant::step`] from a `tokio::time::interval`.
//!
//! Analog signals are Ornstein–Uhlenbeck processes (mean-reverting noise, exact discretisation
//! so any tick length is stable) around plausible operating points.

use super::config::{PotlineSim, SmelterSim, StackProfile, StackSim};
use super::device::Device;
use super::layout::{Reg, cems, copper_smelter, pcu, rectifier};

/// E0 of the pseudo-resistance, in V (a plant constant; 1.65 V is common practice).
const E0_V: f64 = 1.65;
/// Anode-effect threshold (cell voltage above it = anode effect).
const AE_THRESHOLD_V: f64 = 8.0;
/// Default interval between alumina feeder shots, in s.
const FEED_INTERVAL_S: f64 = 90.0;

/// 64-bit mixing (splitmix64 finaliser), for deriving independent seeds.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for `name` under the simulator seed (FNV-1a of the name, mixed; stable across builds).
pub(crate) fn seed_for(seed: u64, name: &str) -> u64 {
    let fnv = name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    });
    mix(seed ^ fnv)
}

/// 1.0 for true, 0.0 for false (bool points).
fn flag(b: bool) -> f64 {
    f64::from(u8::from(b))
}

/// A standard normal deviate (Box–Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = 1.0 - rng.f64(); // (0, 1]
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A mean-reverting process with stationary standard deviation `std` and time constant `tau_s`.
#[derive(Debug, Clone, Copy)]
struct Ou {
    mean: f64,
    std: f64,
    tau_s: f64,
}

impl Ou {
    const fn new(mean: f64, std: f64, tau_s: f64) -> Self {
        Ou { mean, std, tau_s }
    }

    fn start(&self, rng: &mut fastrand::Rng) -> f64 {
        self.mean + self.std * normal(rng)
    }

    fn step(&self, x: f64, dt: f64, rng: &mut fastrand::Rng) -> f64 {
        let a = (-dt / self.tau_s).exp();
        self.mean + (x - self.mean) * a + self.std * (1.0 - a * a).sqrt() * normal(rng)
    }
}

/// One simulated plant.
#[derive(Debug)]
pub(crate) enum Plant {
    Potline(Box<Potline>),
    Smelter(Smelter),
    Stack(Box<Stack>),
}

impl Plant {
    /// Advances the model by `dt_s` seconds and writes the new values into its devices.
    pub(crate) fn step(&mut self, dt_s: f64) {
        match self {
            Plant::Potline(p) => p.step(dt_s),
            Plant::Smelter(s) => s.step(dt_s),
            Plant::Stack(s) => s.step(dt_s),
        }
    }
}

// === Potline ===

#[derive(Debug)]
struct AnodeEffect {
    elapsed_s: f64,
    duration_s: f64,
    peak_v: f64,
}

#[derive(Debug)]
struct Cell {
    device: Device,
    out_of_service: bool,
    offset_v: f64,
    bath_temp_c: f64,
    feed_shots: u32,
    feed_timer_s: f64,
    anode_effect: Option<AnodeEffect>,
    ae_count: u32,
}

/// A potline: rectifier, energy meters and pot control units.
#[derive(Debug)]
pub(crate) struct Potline {
    rng: fastrand::Rng,
    nominal_current_ka: f64,
    bus_drop_v: f64,
    efficiency: f64,
    ae_per_cell_day: f64,
    bath: Ou,
    rectifier: Device,
    drift_ka: f64,
    oil_temp_c: f64,
    dc_start_kwh: f64,
    ac_start_kwh: f64,
    dc_kwh: f64,
    ac_kwh: f64,
    cells: Vec<Cell>,
    /// Model time since start, s.
    t_s: f64,
    /// Scheduled anode effects not yet started: (cell index, start s, duration s, peak V).
    schedule: Vec<(usize, f64, f64, f64)>,
}

const DRIFT: Ou = Ou::new(0.0, 4.0, 600.0);
const CELL_OFFSET: Ou = Ou::new(0.0, 0.02, 120.0);
const OIL_TEMP_C: Ou = Ou::new(55.0, 1.5, 900.0);

impl Potline {
    /// Builds the model; `rectifier` and `pots` (cell 1 first) are its devices.
    pub(crate) fn new(cfg: &PotlineSim, seed: u64, rectifier: Device, pots: Vec<Device>) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let bath = Ou::new(cfg.bath_temp_c, 2.0, 900.0);
        rectifier.write_point(&rectifier::CURRENT_SETPOINT_KA, cfg.line_current_ka);
        let cells = pots
            .into_iter()
            .enumerate()
            .map(|(i, device)| {
                device.write_point(&pcu::TARGET_VOLTAGE_V, cfg.cell_voltage_v);
                device.write_point(&pcu::FEED_INTERVAL_S, FEED_INTERVAL_S);
                let n = i as u16 + 1;
                Cell {
                    device,
                    out_of_service: cfg.cells_out_of_service.contains(&n),
                    offset_v: CELL_OFFSET.start(&mut rng),
                    bath_temp_c: bath.start(&mut rng),
                    feed_shots: rng.u32(100_000..2_000_000),
                    feed_timer_s: rng.f64() * FEED_INTERVAL_S,
                    anode_effect: None,
                    ae_count: 0,
                }
            })
            .collect();
        let dc_start = f64::from(cfg.dc_energy_start_kwh);
        let mut line = Potline {
            drift_ka: DRIFT.start(&mut rng),
            oil_temp_c: OIL_TEMP_C.start(&mut rng),
            rng,
            nominal_current_ka: cfg.line_current_ka,
            bus_drop_v: cfg.bus_drop_v,
            efficiency: cfg.rectifier_efficiency,
            ae_per_cell_day: cfg.anode_effects_per_cell_day,
            bath,
            rectifier,
            dc_start_kwh: dc_start,
            ac_start_kwh: cfg.ac_energy_start_kwh.map_or(dc_start, f64::from),
            dc_kwh: 0.0,
            ac_kwh: 0.0,
            cells,
            t_s: 0.0,
            schedule: cfg
                .anode_effect_schedule
                .iter()
                .map(|ae| {
                    (
                        usize::from(ae.cell.saturating_sub(1)),
                        ae.at.as_secs_f64(),
                        ae.duration.as_secs_f64(),
                        ae.peak_v,
                    )
                })
                .collect(),
        };
        line.step(0.0);
        line
    }

    fn step(&mut self, dt: f64) {
        let rng = &mut self.rng;
        let setpoint_ka = self
            .rectifier
            .read_point(&rectifier::CURRENT_SETPOINT_KA)
            .filter(|v| v.is_finite() && (0.0..=2000.0).contains(v))
            .unwrap_or(self.nominal_current_ka);
        if dt > 0.0 {
            self.drift_ka = DRIFT.step(self.drift_ka, dt, rng);
            self.oil_temp_c = OIL_TEMP_C.step(self.oil_temp_c, dt, rng);
        }
        let current_ka = (setpoint_ka + self.drift_ka + 0.2 * normal(rng)).max(0.0);
        let load = if self.nominal_current_ka > 0.0 {
            current_ka / self.nominal_current_ka
        } else {
            0.0
        };
        // Probability that one in-service cell starts an anode effect during this tick.
        let p_ae = 1.0 - (-self.ae_per_cell_day * dt / 86_400.0).exp();
        // Scheduled effects due by the end of this step start now, already `t - at` old.
        self.t_s += dt;
        let t_s = self.t_s;
        let mut due = Vec::new();
        self.schedule.retain(|&(cell, at, duration, peak)| {
            let start = at <= t_s;
            if start {
                due.push((cell, t_s - at, duration, peak));
            }
            !start
        });

        let tick = Tick {
            dt,
            current_ka,
            load,
            p_ae,
            due: &due,
        };
        let mut sum_v = 0.0;
        for (i, cell) in self.cells.iter_mut().enumerate() {
            sum_v += cell.step(i, &tick, &self.bath, rng);
        }

        let line_v = sum_v + self.bus_drop_v * load;
        let dc_kw = line_v * current_ka;
        let ac_kw = dc_kw / self.efficiency;
        self.dc_kwh += dc_kw * dt / 3600.0;
        self.ac_kwh += ac_kw * dt / 3600.0;
        let counter = |start: f64, acc: f64| ((start + acc).floor() as u64 % (1u64 << 32)) as f64;
        self.rectifier.write_points(&[
            (&rectifier::LINE_CURRENT_KA, current_ka),
            (&rectifier::LINE_VOLTAGE_V, line_v),
            (&rectifier::DC_POWER_MW, dc_kw / 1000.0),
            (&rectifier::AC_POWER_MW, ac_kw / 1000.0),
            (
                &rectifier::DC_ENERGY_KWH,
                counter(self.dc_start_kwh, self.dc_kwh),
            ),
            (
                &rectifier::AC_ENERGY_KWH,
                counter(self.ac_start_kwh, self.ac_kwh),
            ),
            (&rectifier::EFFICIENCY_PCT, self.efficiency * 100.0),
            (&rectifier::TRANSFORMER_OIL_TEMP_C, self.oil_temp_c),
        ]);
    }
}

// === Copper smelter ===

/// A copper flash-smelter controller.
#[derive(Debug)]
pub(crate) struct Smelter {
    rng: fastrand::Rng,
    device: Device,
    nominal_feed_tph: f64,
    feed_dev_tph: f64,
    o2_per_t: f64,
    enrichment_pct: f64,
    furnace_temp_c: f64,
    matte_grade_pct: f64,
    so2_pct: f64,
}

const FEED_DEV: Ou = Ou::new(0.0, 3.0, 300.0);
const O2_PER_T: Ou = Ou::new(165.0, 4.0, 600.0);
const ENRICHMENT: Ou = Ou::new(70.0, 1.5, 600.0);
const FURNACE_TEMP: Ou = Ou::new(1290.0, 8.0, 1800.0);
const MATTE_GRADE: Ou = Ou::new(65.0, 1.2, 3600.0);
const ACID_SO2: Ou = Ou::new(12.0, 0.5, 300.0);

impl Smelter {
    pub(crate) fn new(cfg: &SmelterSim, seed: u64, device: Device) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        device.write_point(&copper_smelter::FEED_SETPOINT_TPH, cfg.concentrate_feed_tph);
        let mut s = Smelter {
            feed_dev_tph: FEED_DEV.start(&mut rng),
            o2_per_t: O2_PER_T.start(&mut rng),
            enrichment_pct: ENRICHMENT.start(&mut rng),
            furnace_temp_c: FURNACE_TEMP.start(&mut rng),
            matte_grade_pct: MATTE_GRADE.start(&mut rng),
            so2_pct: ACID_SO2.start(&mut rng),
            rng,
            device,
            nominal_feed_tph: cfg.concentrate_feed_tph,
        };
        s.step(0.0);
        s
    }

    fn step(&mut self, dt: f64) {
        let rng = &mut self.rng;
        if dt > 0.0 {
            self.feed_dev_tph = FEED_DEV.step(self.feed_dev_tph, dt, rng);
            self.o2_per_t = O2_PER_T.step(self.o2_per_t, dt, rng);
            self.enrichment_pct = ENRICHMENT.step(self.enrichment_pct, dt, rng);
            self.furnace_temp_c = FURNACE_TEMP.step(self.furnace_temp_c, dt, rng);
            self.matte_grade_pct = MATTE_GRADE.step(self.matte_grade_pct, dt, rng);
            self.so2_pct = ACID_SO2.step(self.so2_pct, dt, rng);
        }
        let setpoint = self
            .device
            .read_point(&copper_smelter::FEED_SETPOINT_TPH)
            .filter(|v| v.is_finite() && (0.0..=1000.0).contains(v))
            .unwrap_or(self.nominal_feed_tph);
        let feed = (setpoint + self.feed_dev_tph).max(0.0);
        let load = if setpoint > 0.0 { feed / setpoint } else { 0.0 };
        self.device.write_points(&[
            (&copper_smelter::CONCENTRATE_FEED_TPH, feed),
            (&copper_smelter::OXYGEN_FLOW_NM3H, feed * self.o2_per_t),
            (
                &copper_smelter::OXYGEN_ENRICHMENT_PCT,
                self.enrichment_pct.clamp(21.0, 95.0),
            ),
            (&copper_smelter::FURNACE_TEMP_C, self.furnace_temp_c),
            (
                &copper_smelter::MATTE_GRADE_PCT,
                self.matte_grade_pct.clamp(40.0, 78.0),
            ),
            (
                &copper_smelter::ACID_PLANT_SO2_PCT,
                (self.so2_pct * load).max(0.0),
            ),
            (&copper_smelter::RUNNING, flag(feed > 1.0)),
        ]);
    }
}

// === Stack CEMS ===

#[derive(Debug, Clone, Copy)]
struct StackTypicals {
    so2: Ou,
    nox: Ou,
    particulate: Ou,
    fluoride: Ou,
    o2: Ou,
    flow: Ou,
    temperature: Ou,
    moisture: Ou,
}

fn typicals(profile: StackProfile) -> StackTypicals {
    match profile {
        // Tail gas after the double-contact acid plant and scrubber (GB 25467 limits: SO2 400,
        // particulate 80 mg/m³; special limits SO2 100, particulate 10).
        StackProfile::CopperSmelter => StackTypicals {
            so2: Ou::new(120.0, 18.0, 600.0),
            nox: Ou::new(60.0, 8.0, 600.0),
            particulate: Ou::new(8.0, 1.5, 600.0),
            fluoride: Ou::new(0.3, 0.06, 600.0),
            o2: Ou::new(13.0, 0.4, 600.0),
            flow: Ou::new(250_000.0, 8_000.0, 900.0),
            temperature: Ou::new(65.0, 2.0, 900.0),
            moisture: Ou::new(8.0, 0.5, 900.0),
        },
        // Potline gas-treatment centre, dry scrubbing (GB 25465 limits: fluoride 3.0, SO2 200,
        // particulate 20 mg/m³).
        StackProfile::PotlineGtc => StackTypicals {
            so2: Ou::new(85.0, 10.0, 600.0),
            nox: Ou::new(5.0, 1.0, 600.0),
            particulate: Ou::new(4.2, 0.8, 600.0),
            fluoride: Ou::new(0.85, 0.15, 600.0),
            o2: Ou::new(20.6, 0.1, 600.0),
            flow: Ou::new(1_600_000.0, 30_000.0, 900.0),
            temperature: Ou::new(105.0, 3.0, 900.0),
            moisture: Ou::new(2.5, 0.3, 900.0),
        },
    }
}

/// A stack CEMS.
#[derive(Debug)]
pub(crate) struct Stack {
    rng: fastrand::Rng,
    device: Device,
    t: StackTypicals,
    values: [f64; 8],
    /// Multiplier on SO2 during a process upset (1 = none), decaying back to 1.
    upset: f64,
    /// Points held at a constant value.
    fixed: Vec<(Reg, f64)>,
}

impl Stack {
    pub(crate) fn new(cfg: &StackSim, seed: u64, device: Device) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let t = typicals(cfg.profile);
        let values = t.ous().map(|ou| ou.start(&mut rng));
        let fixed = cfg
            .fixed
            .iter()
            .filter_map(|(name, v)| {
                cems::LAYOUT
                    .iter()
                    .find(|r| r.name == name)
                    .map(|r| (*r, *v))
            })
            .collect();
        let mut s = Stack {
            rng,
            device,
            t,
            values,
            upset: 1.0,
            fixed,
        };
        s.step(0.0);
        s
    }

    fn step(&mut self, dt: f64) {
        let rng = &mut self.rng;
        if dt > 0.0 {
            for (x, ou) in self.values.iter_mut().zip(self.t.ous()) {
                *x = ou.step(*x, dt, rng);
            }
            // About one SO2 upset per 6 hours, up to 2× and fading over ~5 minutes: the hourly
            // average stays under the limit, the minute values sometimes do not.
            self.upset = 1.0 + (self.upset - 1.0) * (-dt / 300.0).exp();
            if rng.f64() < 1.0 - (-dt / 21_600.0).exp() {
                self.upset = 1.5 + rng.f64() * 0.5;
            }
        }
        let [
            so2,
            nox,
            particulate,
            fluoride,
            o2,
            flow,
            temperature,
            moisture,
        ] = self.values;
        self.device.write_points(&[
            (&cems::SO2_MG_M3, (so2 * self.upset).max(0.0)),
            (&cems::NOX_MG_M3, nox.max(0.0)),
            (&cems::PARTICULATE_MG_M3, particulate.max(0.0)),
            (&cems::FLUORIDE_MG_M3, fluoride.max(0.0)),
            (&cems::O2_PCT, o2.clamp(0.0, 21.0)),
            (&cems::FLOW_M3H, flow.max(0.0)),
            (&cems::TEMPERATURE_C, temperature),
            (&cems::MOISTURE_PCT, moisture.max(0.0)),
            (&cems::IN_CALIBRATION, 0.0),
            (&cems::IN_MAINTENANCE, 0.0),
            (&cems::ANALYSER_FAULT, 0.0),
        ]);
        for (reg, v) in &self.fixed {
            self.device.write_point(reg, *v);
        }
    }
}

impl StackTypicals {
    fn ous(&self) -> [Ou; 8] {
        [
            self.so2,
            self.nox,
            self.particulate,
            self.fluoride,
            self.o2,
            self.flow,
            self.temperature,
            self.moisture,
        ]
    }
}

/// What every cell of a line sees in one step.
struct Tick<'a> {
    /// Step, s.
    dt: f64,
    /// Line current, kA.
    current_ka: f64,
    /// Line current over its nominal value.
    load: f64,
    /// Probability that an in-service cell starts an anode effect in this step.
    p_ae: f64,
    /// Scheduled anode effects starting in this step: (cell index, age s, duration s, peak V).
    due: &'a [(usize, f64, f64, f64)],
}

impl Cell {
    /// Step cell `i` (its bath, feeder and anode effect) and write its registers; returns its
    /// voltage, V.
    fn step(&mut self, i: usize, t: &Tick<'_>, bath: &Ou, rng: &mut fastrand::Rng) -> f64 {
        let target_v = self
            .device
            .read_point(&pcu::TARGET_VOLTAGE_V)
            .filter(|v| v.is_finite() && (E0_V..=10.0).contains(v))
            .unwrap_or(4.05);
        let feed_interval_s = self
            .device
            .read_point(&pcu::FEED_INTERVAL_S)
            .filter(|v| *v >= 1.0)
            .unwrap_or(FEED_INTERVAL_S);
        let voltage_v;
        if self.out_of_service {
            // Shorting bridges in: a few millivolts across the cell, cold bath.
            voltage_v = (0.004 + 0.001 * normal(rng)).max(0.0);
            self.bath_temp_c = 35.0 + 0.2 * normal(rng);
            self.anode_effect = None;
        } else {
            if t.dt > 0.0 {
                self.offset_v = CELL_OFFSET.step(self.offset_v, t.dt, rng);
                self.bath_temp_c = bath.step(self.bath_temp_c, t.dt, rng);
                self.feed_timer_s += t.dt;
                while self.feed_timer_s >= feed_interval_s {
                    self.feed_timer_s -= feed_interval_s;
                    self.feed_shots = self.feed_shots.wrapping_add(1);
                }
            }
            let normal_v = E0_V + (target_v - E0_V) * t.load + self.offset_v + 0.01 * normal(rng);
            if let Some(&(_, elapsed_s, duration_s, peak_v)) = t.due.iter().find(|(c, ..)| *c == i)
            {
                self.anode_effect = (elapsed_s < duration_s).then_some(AnodeEffect {
                    elapsed_s,
                    duration_s,
                    peak_v,
                });
                self.ae_count = self.ae_count.wrapping_add(1);
            } else if let Some(ae) = &mut self.anode_effect {
                ae.elapsed_s += t.dt;
                if ae.elapsed_s >= ae.duration_s {
                    self.anode_effect = None;
                }
            } else if t.dt > 0.0 && rng.f64() < t.p_ae {
                self.anode_effect = Some(AnodeEffect {
                    elapsed_s: 0.0,
                    duration_s: 20.0 + rng.f64() * 160.0,
                    peak_v: 12.0 + rng.f64() * 18.0,
                });
                self.ae_count = self.ae_count.wrapping_add(1);
            }
            voltage_v = match &self.anode_effect {
                // A jump to the peak, decaying towards ~9 V until the effect is killed.
                Some(ae) => {
                    let decay = (-ae.elapsed_s / (ae.duration_s / 4.0)).exp();
                    (9.0 + (ae.peak_v - 9.0) * decay + 0.3 * normal(rng)).max(AE_THRESHOLD_V + 0.2)
                }
                None => normal_v,
            };
        }
        let in_ae = self.anode_effect.is_some();
        let pseudo_uohm = if self.out_of_service || t.current_ka <= 0.0 {
            0.0
        } else {
            (voltage_v - E0_V) / t.current_ka * 1000.0
        };
        self.device.write_points(&[
            (&pcu::CELL_VOLTAGE_V, voltage_v),
            (&pcu::PSEUDO_RESISTANCE_UOHM, pseudo_uohm),
            (&pcu::BATH_TEMP_C, self.bath_temp_c),
            (&pcu::IN_SERVICE, flag(!self.out_of_service)),
            (&pcu::ANODE_EFFECT, flag(in_ae)),
            (&pcu::CUT_OUT, flag(self.out_of_service)),
            (&pcu::FEED_SHOTS, f64::from(self.feed_shots)),
            (&pcu::ANODE_EFFECT_COUNT, f64::from(self.ae_count % 65_536)),
            (&pcu::AE_ALARM, flag(in_ae)),
        ]);
        voltage_v
    }
}

#[cfg(test)]
mod tests;
