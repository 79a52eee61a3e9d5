//! Simulated DL/T 645 meters: several meters on one bus, answering by address over TCP (as a
//! transparent serial server does) or over one end of a pseudo-terminal pair (as a serial port).
//!
//! A meter keeps its own truth (energy registers, load, voltage, demand) behind a cloneable
//! handle, [`Meter`]; [`MeterBus::advance`] moves every meter's energy by its load over a time
//! step, so the energy read between two polls grows as the load says. Faults are per meter and
//! can change while the bus is served:
//! - [`MeterFault::Silent`]: no answer at all (a dead meter, a cut wire);
//! - [`MeterFault::ErrorReply`]: an abnormal reply with the given error word;
//! - [`MeterFault::BadChecksum`]: the right reply with its checksum byte off by one;
//! - [`MeterFault::WrongAddress`]: a well-formed reply that carries another address (two meters
//!   configured with one address, or a reply crossing on a noisy bus).
//!
//! The bus is served one frame at a time, like a half-duplex RS-485 line: frames with a bad
//! checksum and frames for no meter on the bus get no answer.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::dlt645::Format;
use crate::dlt645::format::{MeterTime, encode_demand};
use crate::dlt645::frame::{self, Address, DataId, Decoder, Edition, Frame, WAKE_UP_COUNT};

/// How a simulated meter misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MeterFault {
    /// Answers every read it can.
    #[default]
    None,
    /// Never answers.
    Silent,
    /// Answers every read with this error word.
    ErrorReply(u8),
    /// Answers with the checksum byte off by one.
    BadChecksum,
    /// Answers in the name of the next address up.
    WrongAddress,
}

/// The state of one meter.
#[derive(Debug)]
struct MeterState {
    edition: Edition,
    address: Address,
    /// Total forward active energy, kWh.
    energy_kwh: f64,
    /// Active power, kW (negative: export).
    load_kw: f64,
    voltage_v: f64,
    power_factor: f64,
    /// The largest load so far and when (unix ms).
    max_demand: (f64, i64),
    fault: MeterFault,
    /// Read requests addressed to this meter.
    requests: u64,
}

/// A handle to one simulated meter.
#[derive(Debug, Clone)]
pub struct Meter(Arc<Mutex<MeterState>>);

/// Shares of the tariffs sharp, peak, flat and valley in the energy (registers 1–4).
const TARIFF_SHARES: [f64; 4] = [0.1, 0.3, 0.4, 0.2];

impl Meter {
    /// A meter at `address` with `energy_kwh` on its register, drawing `load_kw`.
    pub fn new(edition: Edition, address: Address, energy_kwh: f64, load_kw: f64) -> Meter {
        Meter(Arc::new(Mutex::new(MeterState {
            edition,
            address,
            energy_kwh,
            load_kw,
            voltage_v: 230.0,
            power_factor: 0.92,
            // A meter keeps 20YY times: the demand so far was reached now.
            max_demand: (load_kw.max(0.0), crate::model::Timestamp::now().0),
            fault: MeterFault::None,
            requests: 0,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MeterState> {
        self.0
            .lock()
            .expect("meter lock is never poisoned: holders do not panic")
    }

    /// The meter's address.
    pub fn address(&self) -> Address {
        self.state().address
    }

    /// Energy on the total register now, kWh.
    pub fn energy_kwh(&self) -> f64 {
        self.state().energy_kwh
    }

    /// Sets the load, kW.
    pub fn set_load_kw(&self, load_kw: f64) {
        self.state().load_kw = load_kw;
    }

    /// Sets the fault.
    pub fn set_fault(&self, fault: MeterFault) {
        self.state().fault = fault;
    }

    /// Read requests addressed to this meter so far (answered or not).
    pub fn requests(&self) -> u64 {
        self.state().requests
    }

    /// Moves the energy by the load over `dt`, at wall time `now_ms` (for the demand's time).
    pub fn advance(&self, dt: Duration, now_ms: i64) {
        let mut s = self.state();
        let load = s.load_kw;
        if load > 0.0 {
            s.energy_kwh += load * dt.as_secs_f64() / 3600.0;
        }
        if load > s.max_demand.0 {
            s.max_demand = (load, now_ms);
        }
    }

    /// The value bytes of `di`, or `None` when the meter does not keep it.
    fn value(&self, di: DataId) -> Option<Vec<u8>> {
        let s = self.state();
        // Registers show what has been counted: hundredths are cut, never rounded up (the
        // epsilon keeps 1235.56 from showing as 1235.55 through binary rounding).
        let energy = |kwh: f64| (kwh * 100.0 + 1e-6).floor() / 100.0;
        let current_a = s.load_kw * 1000.0 / (3.0 * s.voltage_v * s.power_factor);
        let reactive_kvar = s.load_kw * (1.0 / (s.power_factor * s.power_factor) - 1.0).sqrt();
        let bcd = |text: &str, v: f64| {
            let f: Format = text.parse().expect("the simulator's formats are valid");
            f.encode(v).ok()
        };
        match di {
            DataId::V2007(0x0001_0000) | DataId::V2007(0x0000_0000) => {
                bcd("XXXXXX.XX", energy(s.energy_kwh))
            }
            DataId::V2007(id @ 0x0001_0100..=0x0001_0400) if id & 0xFF == 0 => {
                let share = TARIFF_SHARES[((id >> 8) & 0xFF) as usize - 1];
                bcd("XXXXXX.XX", energy(s.energy_kwh * share))
            }
            DataId::V2007(0x0002_0000) => bcd("XXXXXX.XX", 0.0),
            DataId::V2007(0x0003_0000) => bcd("XXXXXX.XX", energy(s.energy_kwh * 0.43)),
            DataId::V2007(0x0201_0100..=0x0201_0300) => bcd("XXX.X", s.voltage_v),
            DataId::V2007(0x0202_0100..=0x0202_0300) => bcd("sXXX.XXX", current_a),
            DataId::V2007(0x0203_0000) => bcd("sXX.XXXX", s.load_kw),
            DataId::V2007(0x0203_0100..=0x0203_0300) => bcd("sXX.XXXX", s.load_kw / 3.0),
            DataId::V2007(0x0204_0000) => bcd("sXX.XXXX", reactive_kvar),
            DataId::V2007(0x0206_0000) => bcd("sX.XXX", s.power_factor),
            DataId::V2007(0x0101_0000) => {
                encode_demand(s.max_demand.0, MeterTime::from_unix_ms(s.max_demand.1)).ok()
            }
            DataId::V1997(0x9010) => bcd("XXXXXX.XX", energy(s.energy_kwh)),
            DataId::V1997(id @ 0x9011..=0x9014) => {
                let share = TARIFF_SHARES[usize::from(id - 0x9011)];
                bcd("XXXXXX.XX", energy(s.energy_kwh * share))
            }
            DataId::V1997(0xB611..=0xB613) => bcd("XXX", s.voltage_v.round()),
            DataId::V1997(0xB621..=0xB623) => bcd("XX.XX", current_a),
            DataId::V1997(0xB630) => bcd("sXX.XXXX", s.load_kw),
            DataId::V1997(0xB650) => bcd("sX.XXX", s.power_factor),
            _ => None,
        }
    }

    /// The bytes this meter puts on the line for `request`, or `None` to stay silent.
    fn answer(&self, request: &Frame) -> Option<Vec<u8>> {
        let (edition, address, fault) = {
            let mut s = self.state();
            s.requests += 1;
            (s.edition, s.address, s.fault)
        };
        if request.control != edition.read_control() || fault == MeterFault::Silent {
            return None;
        }
        let di = DataId::from_wire(edition, &request.data)?;
        let reply_address = match fault {
            MeterFault::WrongAddress => address.offset(1).unwrap_or(Address::ANY),
            _ => address,
        };
        let reply = match (fault, self.value(di)) {
            (MeterFault::ErrorReply(bits), _) => frame::error_reply(reply_address, edition, bits),
            // 2007 bit 1 "no requested data"; 1997 bit 1 "data identifier wrong".
            (_, None) => frame::error_reply(reply_address, edition, 0x02),
            (_, Some(value)) => frame::data_reply(reply_address, di, &value, false),
        };
        let mut bytes = reply.encode(WAKE_UP_COUNT);
        if fault == MeterFault::BadChecksum {
            let cs = bytes.len() - 2;
            bytes[cs] = bytes[cs].wrapping_add(1);
        }
        Some(bytes)
    }
}

/// Meters sharing one line.
#[derive(Debug, Clone, Default)]
pub struct MeterBus {
    meters: Vec<Meter>,
}

impl MeterBus {
    /// A bus of `meters`.
    pub fn new(meters: Vec<Meter>) -> MeterBus {
        MeterBus { meters }
    }

    /// The meters, in the order given.
    pub fn meters(&self) -> &[Meter] {
        &self.meters
    }

    /// Moves every meter's energy by its load over `dt`.
    pub fn advance(&self, dt: Duration, now_ms: i64) {
        for m in &self.meters {
            m.advance(dt, now_ms);
        }
    }

    /// What the line carries back after `request`: the addressed meter's answer, the one
    /// meter's address for an address read to [`Address::ANY`] (nothing when several meters
    /// share the line: they would all talk at once), or nothing.
    fn answer(&self, request: &Frame) -> Option<Vec<u8>> {
        if request.is_reply() {
            return None;
        }
        if request.address == Address::ANY && request.control == 0x13 {
            let [only] = self.meters.as_slice() else {
                return None;
            };
            let s = only.state();
            return (s.edition == Edition::Dlt2007 && s.fault != MeterFault::Silent)
                .then(|| frame::address_reply(s.address).encode(WAKE_UP_COUNT));
        }
        self.meters
            .iter()
            .find(|m| m.address() == request.address)?
            .answer(request)
    }
}

/// Serves `bus` on `stream` (a TCP connection or a serial port) until `shutdown` is cancelled or
/// the peer goes away.
pub async fn serve_meter_stream<S>(mut stream: S, bus: MeterBus, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut decoder = Decoder::new();
    let mut buf = [0u8; 512];
    loop {
        let n = tokio::select! {
            () = shutdown.cancelled() => return,
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        decoder.extend(&buf[..n]);
        while let Some(frame) = decoder.next_frame() {
            // A frame with a bad checksum is ignored, as a meter does.
            let Ok(frame) = frame else { continue };
            if let Some(reply) = bus.answer(&frame)
                && stream.write_all(&reply).await.is_err()
            {
                return;
            }
        }
    }
}

/// Serves `bus` to every connection accepted on `listener` (a transparent serial server) until
/// `shutdown` is cancelled.
pub async fn serve_meters_tcp(
    listener: TcpListener,
    bus: MeterBus,
    shutdown: CancellationToken,
) -> io::Result<()> {
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        stream.set_nodelay(true)?;
        tokio::spawn(serve_meter_stream(stream, bus.clone(), shutdown.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlt645::frame::{Reply, interpret, read_request};
    use crate::model::Value;

    fn reply_to(bus: &MeterBus, request: &[u8]) -> Option<Frame> {
        let mut d = Decoder::new();
        d.extend(request);
        let request = d.next_frame()?.ok()?;
        let bytes = bus.answer(&request)?;
        d.extend(&bytes);
        d.next_frame()?.ok()
    }

    #[test]
    fn meters_answer_by_address_and_energy_advances_with_load() {
        let a = Address::parse("1").expect("valid");
        let b = Address::parse("2").expect("valid");
        let bus = MeterBus::new(vec![
            Meter::new(Edition::Dlt2007, a, 100.0, 36.0),
            Meter::new(Edition::Dlt2007, b, 5.0, 0.0),
        ]);
        // 36 kW for 100 s is 1 kWh.
        bus.advance(Duration::from_secs(100), 0);
        let frame = reply_to(&bus, &read_request(a, DataId::V2007(0x0001_0000))).expect("reply");
        assert_eq!(frame.address, a);
        let Ok(Reply::Data { value, .. }) = interpret(Edition::Dlt2007, &frame) else {
            panic!("data");
        };
        let f: Format = "XXXXXX.XX".parse().expect("format");
        assert_eq!(f.decode(&value), Ok(Value::Float(101.0)));
        assert_eq!(bus.meters()[1].energy_kwh(), 5.0);
        // No meter at address 3: silence.
        let c = Address::parse("3").expect("valid");
        assert!(reply_to(&bus, &read_request(c, DataId::V2007(0x0001_0000))).is_none());
        // Several meters: the address read gets no answer.
        assert!(reply_to(&bus, &frame::address_request()).is_none());
    }

    #[test]
    fn faults_change_the_answer() {
        let a = Address::parse("1").expect("valid");
        let meter = Meter::new(Edition::Dlt2007, a, 1.0, 1.0);
        let bus = MeterBus::new(vec![meter.clone()]);
        let request = read_request(a, DataId::V2007(0x0201_0100));
        meter.set_fault(MeterFault::WrongAddress);
        let frame = reply_to(&bus, &request).expect("reply");
        assert_eq!(frame.address, Address::parse("2").expect("valid"));
        meter.set_fault(MeterFault::ErrorReply(0x04));
        let frame = reply_to(&bus, &request).expect("reply");
        assert!(matches!(interpret(Edition::Dlt2007, &frame), Ok(Reply::Error(w)) if w.bits == 4));
        meter.set_fault(MeterFault::Silent);
        assert!(reply_to(&bus, &request).is_none());
        meter.set_fault(MeterFault::BadChecksum);
        let mut d = Decoder::new();
        d.extend(&request);
        let req = d.next_frame().expect("frame").expect("good");
        d.extend(&bus.answer(&req).expect("bytes"));
        assert!(matches!(d.next_frame(), Some(Err(_))));
        assert_eq!(meter.requests(), 4);
        // Alone on its bus, it tells its address.
        meter.set_fault(MeterFault::None);
        let frame = reply_to(&bus, &frame::address_request()).expect("reply");
        assert_eq!(interpret(Edition::Dlt2007, &frame), Ok(Reply::Address(a)));
    }
}
