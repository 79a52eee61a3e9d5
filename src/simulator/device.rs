//! One simulated Modbus device: four register banks and the faults it injects.
//!
//! A [`Device`] is a cheap, cloneable handle (`Arc<std::sync::Mutex<..>>`). The plant models write
//! into it on every tick, the server reads it on every request, and tests use it both to read the
//! simulator's truth and to change faults at runtime.
//!
//! Invariants:
//! - The mutex is a `std` mutex and is never held across an `.await`: every method takes the lock,
//!   copies what it needs and releases it before returning.
//! - Banks are dense vectors starting at address 0. A read that reaches past the end of a bank is
//!   answered with `IllegalDataAddress`; a *setter* that reaches past the end grows the bank (with
//!   zeros), so tests can build any layout with setters alone.
//! - Fault decisions that look random (latency jitter) come from a per-device RNG seeded at
//!   construction, and periodic faults (`drop_every`, `corrupt_every`) count requests from the
//!   moment the faults were set, so a fault scenario replays identically.
//! - A *forced* point ([`Device::force_point`]) keeps its value against the plant model's writes
//!   ([`Device::write_point`], [`Device::write_points`]) until it is released, as forcing an I/O
//!   point in a PLC does: the way for a test to hold a status bit that the model rewrites on every
//!   tick. Raw setters and client writes still change it.

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::{Area, ByteOrder, DataType};

// What faults a device injects is configuration (`[[simulator.faults]]` and the handles'
// `set_faults`): the types live with the section and the device acts on them.
pub use super::config::{Corruption, ExceptionFault, Faults, Glitch};
use super::layout::Reg;

/// Initial sizes of a device's four banks (number of bits or registers, starting at address 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BankSizes {
    /// Coils (FC 1/5/15).
    pub coils: usize,
    /// Discrete inputs (FC 2).
    pub discrete_inputs: usize,
    /// Holding registers (FC 3/6/16/22/23).
    pub holding: usize,
    /// Input registers (FC 4).
    pub input: usize,
}

impl BankSizes {
    /// The smallest banks that hold every register of `layout`.
    pub fn for_layout(layout: &[Reg]) -> Self {
        let mut sizes = BankSizes::default();
        for reg in layout {
            let end = usize::from(reg.address) + usize::from(reg.width());
            let slot = match reg.area {
                Area::Coil => &mut sizes.coils,
                Area::DiscreteInput => &mut sizes.discrete_inputs,
                Area::Holding => &mut sizes.holding,
                Area::Input => &mut sizes.input,
            };
            *slot = (*slot).max(end);
        }
        sizes
    }
}

/// What the server must do with one request, decided under the device lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FaultPlan {
    /// Wait this long before acting.
    pub(crate) delay: Duration,
    /// The action after the delay.
    pub(crate) action: FaultAction,
}

/// See [`FaultPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FaultAction {
    /// Serve the request; corrupt the reply if `Some`.
    Serve(Option<Corruption>),
    /// Send nothing.
    Silence,
    /// Close the connection without a reply.
    Drop,
    /// Answer with this exception code.
    Exception(u8),
}

/// The four banks of a device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Banks {
    /// Coils.
    pub coils: Vec<bool>,
    /// Discrete inputs.
    pub discrete_inputs: Vec<bool>,
    /// Holding registers.
    pub holding: Vec<u16>,
    /// Input registers.
    pub input: Vec<u16>,
}

#[derive(Debug)]
struct State {
    banks: Banks,
    faults: Faults,
    /// Points held against the model's writes, with their value.
    forced: Vec<(Reg, f64)>,
    /// Requests counted since the faults were last set (drives `*_every`).
    fault_counter: u64,
    /// All requests ever addressed to this device.
    requests: u64,
    rng: fastrand::Rng,
}

/// A simulated Modbus device (cloneable handle; clones share state).
#[derive(Debug, Clone)]
pub struct Device {
    name: Arc<str>,
    state: Arc<Mutex<State>>,
}

impl Device {
    /// A device with zeroed banks of the given sizes and no faults. `seed` drives latency jitter.
    pub fn new(name: &str, sizes: BankSizes, seed: u64) -> Self {
        let banks = Banks {
            coils: vec![false; sizes.coils],
            discrete_inputs: vec![false; sizes.discrete_inputs],
            holding: vec![0; sizes.holding],
            input: vec![0; sizes.input],
        };
        Device {
            name: Arc::from(name),
            state: Arc::new(Mutex::new(State {
                banks,
                faults: Faults::default(),
                forced: Vec::new(),
                fault_counter: 0,
                requests: 0,
                rng: fastrand::Rng::with_seed(seed),
            })),
        }
    }

    /// The device's name (`potline1/pot_005`).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, still consistent enough for a
        // simulator: recover it instead of propagating the poison.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` with the banks locked (for batched model updates and for the server).
    pub fn with_banks<T>(&self, f: impl FnOnce(&mut Banks) -> T) -> T {
        f(&mut self.lock().banks)
    }

    /// A copy of all four banks.
    pub fn snapshot(&self) -> Banks {
        self.lock().banks.clone()
    }

    /// Writes holding registers from `addr`, growing the bank if needed.
    pub fn set_holding(&self, addr: u16, values: &[u16]) {
        put(&mut self.lock().banks.holding, addr, values);
    }

    /// Writes input registers from `addr`, growing the bank if needed.
    pub fn set_input(&self, addr: u16, values: &[u16]) {
        put(&mut self.lock().banks.input, addr, values);
    }

    /// Sets one coil, growing the bank if needed.
    pub fn set_coil(&self, addr: u16, value: bool) {
        put(&mut self.lock().banks.coils, addr, &[value]);
    }

    /// Sets one discrete input, growing the bank if needed.
    pub fn set_discrete(&self, addr: u16, value: bool) {
        put(&mut self.lock().banks.discrete_inputs, addr, &[value]);
    }

    /// Reads `count` holding registers from `addr`; `None` if the range leaves the bank.
    pub fn holding(&self, addr: u16, count: u16) -> Option<Vec<u16>> {
        get(&self.lock().banks.holding, addr, count)
    }

    /// Reads `count` input registers from `addr`; `None` if the range leaves the bank.
    pub fn input(&self, addr: u16, count: u16) -> Option<Vec<u16>> {
        get(&self.lock().banks.input, addr, count)
    }

    /// Reads `count` coils from `addr`; `None` if the range leaves the bank.
    pub fn coils(&self, addr: u16, count: u16) -> Option<Vec<bool>> {
        get(&self.lock().banks.coils, addr, count)
    }

    /// Reads `count` discrete inputs from `addr`; `None` if the range leaves the bank.
    pub fn discrete_inputs(&self, addr: u16, count: u16) -> Option<Vec<bool>> {
        get(&self.lock().banks.discrete_inputs, addr, count)
    }

    /// Writes the engineering value of one layout register (scaled, typed, in its byte order),
    /// unless the point is forced.
    pub fn write_point(&self, reg: &Reg, value: f64) {
        self.write_points(&[(reg, value)]);
    }

    /// Writes several layout registers under one lock, so that a reader sees them change together.
    /// Forced points keep their forced value.
    pub fn write_points(&self, values: &[(&Reg, f64)]) {
        let mut state = self.lock();
        let State { banks, forced, .. } = &mut *state;
        for (reg, value) in values {
            if !forced.iter().any(|(f, _)| same_point(f, reg)) {
                write_point(banks, reg, *value);
            }
        }
    }

    /// Writes `value` into one layout register and holds it there: the model's writes to it are
    /// ignored until [`Device::release_point`]. Forcing it again changes the held value.
    pub fn force_point(&self, reg: &Reg, value: f64) {
        let mut state = self.lock();
        state.forced.retain(|(f, _)| !same_point(f, reg));
        state.forced.push((*reg, value));
        write_point(&mut state.banks, reg, value);
    }

    /// Lets the model write the point again (its next tick does; the value stays until then).
    pub fn release_point(&self, reg: &Reg) {
        self.lock().forced.retain(|(f, _)| !same_point(f, reg));
    }

    /// Reads one layout register as an engineering value (`None` if outside the banks).
    pub fn read_point(&self, reg: &Reg) -> Option<f64> {
        read_point(&self.lock().banks, reg)
    }

    /// The current faults.
    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Replaces the faults and restarts the request count that `*_every` faults use.
    pub fn set_faults(&self, faults: Faults) {
        let mut state = self.lock();
        state.faults = faults;
        state.fault_counter = 0;
    }

    /// Changes the faults in place (the request count is kept).
    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.lock().faults);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.set_faults(Faults::default());
    }

    /// Takes the pending [`Faults::glitch_once`] if a served read of `area` over `count`
    /// registers from `start` covers all of its registers (the server applies it to that reply).
    pub(crate) fn take_glitch(&self, area: Area, start: u16, count: usize) -> Option<Glitch> {
        let mut state = self.lock();
        let g = state.faults.glitch_once.as_ref()?;
        let (first, end) = (
            usize::from(g.address),
            usize::from(g.address) + g.words.len(),
        );
        let covers = g.area == area
            && matches!(area, Area::Holding | Area::Input)
            && usize::from(start) <= first
            && end <= usize::from(start) + count;
        if covers {
            state.faults.glitch_once.take()
        } else {
            None
        }
    }

    /// Requests addressed to this device so far (served or not).
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Counts a request and decides what to do with it (see [`Faults`] for the order). The
    /// address range is used by range-limited exceptions.
    pub(crate) fn plan(&self, addresses: Option<RangeInclusive<u16>>) -> FaultPlan {
        let mut state = self.lock();
        state.requests += 1;
        state.fault_counter += 1;
        let n = state.fault_counter;
        let jitter_ms = state.faults.latency_jitter.as_millis() as u64;
        let jitter = if jitter_ms > 0 {
            Duration::from_millis(state.rng.u64(0..=jitter_ms))
        } else {
            Duration::ZERO
        };
        let faults = &mut state.faults;
        let touches = |range: &RangeInclusive<u16>| {
            addresses
                .as_ref()
                .is_some_and(|req| req.start() <= range.end() && range.start() <= req.end())
        };
        if faults.silent || faults.silent_addresses.as_ref().is_some_and(touches) {
            return FaultPlan {
                delay: Duration::ZERO,
                action: FaultAction::Silence,
            };
        }
        let delay = faults.latency + jitter;
        let every = |k: u64| k > 0 && n.is_multiple_of(k);
        let action = if faults.drop_once || every(faults.drop_every) {
            faults.drop_once = false;
            FaultAction::Drop
        } else if let Some(exc) = faults.exception.as_ref().filter(|e| match &e.addresses {
            None => true,
            Some(range) => touches(range),
        }) {
            FaultAction::Exception(exc.code)
        } else if faults.corrupt_once || every(faults.corrupt_every) {
            faults.corrupt_once = false;
            FaultAction::Serve(Some(faults.corruption))
        } else {
            FaultAction::Serve(None)
        };
        FaultPlan { delay, action }
    }
}

/// Whether two layout registers are the same point (same area, address and type, so two bits of
/// one register are different points).
fn same_point(a: &Reg, b: &Reg) -> bool {
    a.area == b.area && a.address == b.address && a.data_type == b.data_type
}

fn put<T: Copy + Default>(bank: &mut Vec<T>, addr: u16, values: &[T]) {
    let start = usize::from(addr);
    let end = start + values.len();
    if bank.len() < end {
        bank.resize(end, T::default());
    }
    bank[start..end].copy_from_slice(values);
}

fn get<T: Copy>(bank: &[T], addr: u16, count: u16) -> Option<Vec<T>> {
    let start = usize::from(addr);
    bank.get(start..start + usize::from(count))
        .map(<[T]>::to_vec)
}

/// Encodes an engineering value into the registers of `reg` (`raw = (value - offset) / scale`,
/// rounded and saturated for integer types). Bool points become 0/1 (any non-zero is true).
pub fn encode_registers(reg: &Reg, value: f64) -> Vec<u16> {
    let raw = (value - reg.offset) / reg.scale;
    let be_words: Vec<u16> = match reg.data_type {
        DataType::Bool { .. } => vec![u16::from(raw != 0.0)],
        DataType::U16 => vec![raw.round().clamp(0.0, f64::from(u16::MAX)) as u16],
        DataType::I16 => {
            vec![raw.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16 as u16]
        }
        DataType::U32 => words32(raw.round().clamp(0.0, f64::from(u32::MAX)) as u32),
        DataType::I32 => {
            words32(raw.round().clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32 as u32)
        }
        DataType::F32 => words32((raw as f32).to_bits()),
        DataType::U64 => words64(raw.round().max(0.0) as u64),
        DataType::I64 => words64(raw.round() as i64 as u64),
        DataType::F64 => words64(raw.to_bits()),
        DataType::Ascii { registers } => vec![0; usize::from(registers)],
    };
    order_words(be_words, reg.byte_order)
}

/// Decodes the registers of `reg` (as laid out on the wire) into an engineering value.
pub fn decode_registers(reg: &Reg, words: &[u16]) -> f64 {
    let be = order_words(words.to_vec(), reg.byte_order);
    let raw = match reg.data_type {
        DataType::Bool { bit } => f64::from((be[0] >> bit.unwrap_or(0)) & 1),
        DataType::U16 => f64::from(be[0]),
        DataType::I16 => f64::from(be[0] as i16),
        DataType::U32 => f64::from(join32(&be)),
        DataType::I32 => f64::from(join32(&be) as i32),
        DataType::F32 => f64::from(f32::from_bits(join32(&be))),
        DataType::U64 => join64(&be) as f64,
        DataType::I64 => join64(&be) as i64 as f64,
        DataType::F64 => f64::from_bits(join64(&be)),
        DataType::Ascii { .. } => 0.0,
    };
    raw * reg.scale + reg.offset
}

fn words32(v: u32) -> Vec<u16> {
    vec![(v >> 16) as u16, v as u16]
}

fn words64(v: u64) -> Vec<u16> {
    vec![
        (v >> 48) as u16,
        (v >> 32) as u16,
        (v >> 16) as u16,
        v as u16,
    ]
}

fn join32(w: &[u16]) -> u32 {
    (u32::from(w[0]) << 16) | u32::from(w[1])
}

fn join64(w: &[u16]) -> u64 {
    w.iter()
        .take(4)
        .fold(0, |acc, &x| (acc << 16) | u64::from(x))
}

/// Converts big-endian words (ABCD) to `order` on the wire; the mapping is its own inverse.
/// CDAB reverses the word order, BADC swaps the bytes in each word, DCBA does both.
fn order_words(mut words: Vec<u16>, order: ByteOrder) -> Vec<u16> {
    match order {
        ByteOrder::Abcd => {}
        ByteOrder::Cdab => words.reverse(),
        ByteOrder::Badc => words.iter_mut().for_each(|w| *w = w.swap_bytes()),
        ByteOrder::Dcba => {
            words.reverse();
            words.iter_mut().for_each(|w| *w = w.swap_bytes());
        }
    }
    words
}

fn write_point(banks: &mut Banks, reg: &Reg, value: f64) {
    match (reg.area, reg.data_type) {
        (Area::Coil, _) => put(&mut banks.coils, reg.address, &[value != 0.0]),
        (Area::DiscreteInput, _) => put(&mut banks.discrete_inputs, reg.address, &[value != 0.0]),
        (area, DataType::Bool { bit }) => {
            let bank = if area == Area::Holding {
                &mut banks.holding
            } else {
                &mut banks.input
            };
            let mask = 1u16 << bit.unwrap_or(0);
            let old = get(bank, reg.address, 1).map_or(0, |w| w[0]);
            let new = if value != 0.0 {
                old | mask
            } else {
                old & !mask
            };
            put(bank, reg.address, &[new]);
        }
        (area, _) => {
            let bank = if area == Area::Holding {
                &mut banks.holding
            } else {
                &mut banks.input
            };
            put(bank, reg.address, &encode_registers(reg, value));
        }
    }
}

fn read_point(banks: &Banks, reg: &Reg) -> Option<f64> {
    let bit = |b: Option<Vec<bool>>| b.map(|v| f64::from(u8::from(v[0])));
    match reg.area {
        Area::Coil => bit(get(&banks.coils, reg.address, 1)),
        Area::DiscreteInput => bit(get(&banks.discrete_inputs, reg.address, 1)),
        Area::Holding => {
            get(&banks.holding, reg.address, reg.width()).map(|w| decode_registers(reg, &w))
        }
        Area::Input => {
            get(&banks.input, reg.address, reg.width()).map(|w| decode_registers(reg, &w))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(data_type: DataType, byte_order: ByteOrder, scale: f64) -> Reg {
        Reg {
            name: "x",
            area: Area::Input,
            address: 0,
            data_type,
            byte_order,
            scale,
            offset: 0.0,
            unit: "",
            writable: false,
        }
    }

    #[test]
    fn f32_byte_orders_put_the_bytes_where_their_names_say() {
        // 4.05f32 = 0x4081_999A
        let bits = 4.05f32.to_bits();
        assert_eq!(bits, 0x4081_999A);
        let cases = [
            (ByteOrder::Abcd, [0x4081, 0x999A]),
            (ByteOrder::Cdab, [0x999A, 0x4081]),
            (ByteOrder::Badc, [0x8140, 0x9A99]),
            (ByteOrder::Dcba, [0x9A99, 0x8140]),
        ];
        for (order, words) in cases {
            let r = reg(DataType::F32, order, 1.0);
            assert_eq!(encode_registers(&r, 4.05), words, "{order:?}");
            let back = decode_registers(&r, &words);
            assert!((back - 4.05).abs() < 1e-6, "{order:?}: {back}");
        }
    }

    #[test]
    fn scaled_integers_round_and_saturate() {
        let t = reg(DataType::I16, ByteOrder::Abcd, 0.1);
        assert_eq!(encode_registers(&t, -12.34), vec![(-123i16) as u16]);
        assert_eq!(encode_registers(&t, 1e9), vec![i16::MAX as u16]);
        let u = reg(DataType::U32, ByteOrder::Abcd, 1.0);
        assert_eq!(encode_registers(&u, 4_294_967_295.0), vec![0xFFFF, 0xFFFF]);
        assert_eq!(decode_registers(&u, &[0x0001, 0x0002]), 65538.0);
    }

    #[test]
    fn setters_grow_banks_and_reads_past_the_end_fail() {
        let d = Device::new("d", BankSizes::default(), 1);
        assert_eq!(d.holding(0, 1), None);
        d.set_holding(3, &[7, 8]);
        assert_eq!(d.holding(0, 5), Some(vec![0, 0, 0, 7, 8]));
        assert_eq!(d.holding(4, 2), None);
        d.set_coil(2, true);
        assert_eq!(d.coils(0, 3), Some(vec![false, false, true]));
    }

    #[test]
    fn periodic_faults_count_from_when_they_were_set() {
        let d = Device::new("d", BankSizes::default(), 1);
        d.set_faults(Faults {
            drop_every: 3,
            ..Faults::default()
        });
        let actions: Vec<_> = (0..6).map(|_| d.plan(None).action).collect();
        assert_eq!(
            actions,
            [
                FaultAction::Serve(None),
                FaultAction::Serve(None),
                FaultAction::Drop,
                FaultAction::Serve(None),
                FaultAction::Serve(None),
                FaultAction::Drop,
            ]
        );
        assert_eq!(d.requests(), 6);
    }

    #[test]
    fn range_limited_exception_only_hits_overlapping_requests() {
        let d = Device::new("d", BankSizes::default(), 1);
        d.set_faults(Faults {
            exception: Some(ExceptionFault {
                code: 4,
                addresses: Some(10..=19),
            }),
            ..Faults::default()
        });
        assert_eq!(d.plan(Some(0..=9)).action, FaultAction::Serve(None));
        assert_eq!(d.plan(Some(8..=11)).action, FaultAction::Exception(4));
        assert_eq!(d.plan(Some(19..=30)).action, FaultAction::Exception(4));
    }

    #[test]
    fn a_glitch_replaces_one_covering_read_and_is_then_gone() {
        let d = Device::new("d", BankSizes::default(), 1);
        d.set_faults(Faults {
            glitch_once: Some(Glitch {
                area: Area::Input,
                address: 10,
                words: vec![0xDEAD, 0xBEEF],
            }),
            ..Faults::default()
        });
        // another bank, or a read that covers only part of the registers: still pending
        assert_eq!(d.take_glitch(Area::Holding, 0, 16), None);
        assert_eq!(d.take_glitch(Area::Input, 0, 11), None);
        assert_eq!(d.take_glitch(Area::Input, 11, 4), None);
        let g = d
            .take_glitch(Area::Input, 8, 4)
            .expect("8..=11 covers 10..=11");
        assert_eq!((g.address, g.words), (10, vec![0xDEAD, 0xBEEF]));
        assert_eq!(d.take_glitch(Area::Input, 8, 4), None, "once");
        assert_eq!(d.faults().glitch_once, None);
    }

    #[test]
    fn a_forced_point_ignores_model_writes_until_released() {
        let bank = |b| reg(DataType::Bool { bit: Some(b) }, ByteOrder::Abcd, 1.0);
        let (calibration, maintenance) = (bank(0), bank(1));
        let d = Device::new("d", BankSizes::default(), 1);
        d.force_point(&calibration, 1.0);
        // a model tick writes both bits of the register
        d.write_points(&[(&calibration, 0.0), (&maintenance, 1.0)]);
        assert_eq!(d.read_point(&calibration), Some(1.0));
        assert_eq!(d.read_point(&maintenance), Some(1.0));
        d.write_point(&calibration, 0.0);
        assert_eq!(d.read_point(&calibration), Some(1.0));
        d.release_point(&calibration);
        assert_eq!(
            d.read_point(&calibration),
            Some(1.0),
            "until the next write"
        );
        d.write_point(&calibration, 0.0);
        assert_eq!(d.read_point(&calibration), Some(0.0));
    }
}
