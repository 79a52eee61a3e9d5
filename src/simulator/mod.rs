//! The plant simulator: Modbus TCP servers that behave like a potline (rectifier, energy
//! meters, pot control units), a copper smelter and stack CEMS, with fault injection.
//!
//! # Layout
//! - [`config`](SimulatorConfig): the `[simulator]` section and its validation.
//! - [`layout`]: the register table of each device kind (mirrored by `config/maps/*.csv`), kept
//!   with the section in `config` since it is pure data the section is checked against.
//! - [`Device`]: register banks plus faults (and points a test forces against the models) behind
//!   a cloneable handle; usable on its own in tests.
//! - [`serve_tcp`] / [`serve_rtu`]: Modbus servers for a set of devices keyed by unit id.
//! - [`dlt645`]: DL/T 645 meters on a bus, served over TCP or a serial stream (a pty end).
//! - `plant`: the models that move the values, one tick at a time, from a seeded RNG.
//! - [`start`] / [`run`]: build everything from a configuration and run it.
//!
//! # Invariants
//! - Deterministic: the same seed and configuration give the same register values after the
//!   same number of ticks. Ticks come from `tokio::time`, so paused-clock tests drive them.
//! - Only loopback addresses are bound unless the configuration sets `allow_non_loopback`.
//! - One task steps every model in configuration order; one task per endpoint serves it; all of
//!   them stop on shutdown, and [`RunningSimulator::shutdown`] waits for them.

pub mod config;
mod device;
pub mod dlt645;
mod plant;
mod server;

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::layout;
pub use config::{
    FaultSim, MeterBusSim, MeterSim, PotlineSim, ScheduledAnodeEffect, SimConfigError,
    SimulatorConfig, SmelterSim, StackProfile, StackSim, pot_device_name, rectifier_device_name,
};
pub use device::{
    BankSizes, Banks, Corruption, Device, ExceptionFault, Faults, Glitch, decode_registers,
    encode_registers,
};
pub use dlt645::{Meter, MeterBus, MeterFault, serve_meter_stream, serve_meters_tcp};
pub use server::{UnitMap, serve_rtu, serve_tcp};

use plant::{Plant, Potline, Smelter, Stack, seed_for};

/// Where [`start`] binds its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// Each endpoint on its configured `listen` address.
    AsConfigured,
    /// Each endpoint on `127.0.0.1:0` (a free port), for tests and for `demo` when the configured
    /// ports are taken; [`RunningSimulator::endpoints`] tells where they ended up.
    AnyPort,
}

/// One TCP endpoint of a running simulator (one socket, one or more unit ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The plants served there, joined with `+` (`potline1`, `smelter1+smelter1_stack`).
    pub name: String,
    /// The `listen` address from the configuration.
    pub configured: SocketAddr,
    /// The address actually bound.
    pub bound: SocketAddr,
}

/// Where a device is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAddr {
    /// Bound socket address of its endpoint.
    pub addr: SocketAddr,
    /// Its unit id there.
    pub unit_id: u8,
}

/// A simulator started by [`start`]. Dropping it stops the servers and models (without waiting);
/// [`RunningSimulator::shutdown`] stops them and waits.
#[derive(Debug)]
pub struct RunningSimulator {
    endpoints: Vec<Endpoint>,
    devices: BTreeMap<String, (Device, DeviceAddr)>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    ticks: watch::Receiver<u64>,
}

impl RunningSimulator {
    /// The endpoints, in configuration order.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.endpoints.clone()
    }

    /// The handle of a device (`potline1/pot_005`): read the simulator's truth, inject faults.
    pub fn device(&self, name: &str) -> Option<Device> {
        self.devices.get(name).map(|(d, _)| d.clone())
    }

    /// Where a device is served.
    pub fn device_addr(&self, name: &str) -> Option<DeviceAddr> {
        self.devices.get(name).map(|(_, a)| *a)
    }

    /// Every device name, sorted.
    pub fn device_names(&self) -> Vec<String> {
        self.devices.keys().cloned().collect()
    }

    /// Model ticks completed since start (0 = initial values only).
    pub fn ticks(&self) -> u64 {
        *self.ticks.borrow()
    }

    /// Waits until at least `n` ticks have completed (returns at once if the models stopped).
    pub async fn wait_for_tick(&self, n: u64) {
        let mut rx = self.ticks.clone();
        // An error means the model task ended (shutdown): nothing more will come.
        let _ = rx.wait_for(|&t| t >= n).await;
    }

    /// Stops every server and model and waits for their tasks to end. Clients are disconnected.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Builds the devices and models of `cfg`, binds its endpoints and starts serving.
///
/// Errors: an invalid configuration (`InvalidInput`, with the [`SimConfigError`] message) or a
/// failed bind (the address in the message).
pub async fn start(cfg: &SimulatorConfig, bind: BindMode) -> io::Result<RunningSimulator> {
    cfg.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let specs = cfg
        .devices()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;

    let (plants, by_name) = build_plants(cfg);
    let groups = endpoint_groups(cfg);

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut endpoints = Vec::new();
    let mut devices = BTreeMap::new();
    for (listen, names) in groups {
        let addr = match bind {
            BindMode::AsConfigured => listen,
            BindMode::AnyPort => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        };
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            io::Error::new(e.kind(), format!("simulator: cannot listen on {addr}: {e}"))
        })?;
        let bound = listener.local_addr()?;
        let mut units = UnitMap::new();
        for spec in specs.iter().filter(|s| s.listen == listen) {
            let device = by_name[&spec.name].clone();
            units.insert(spec.unit_id, device.clone());
            let at = DeviceAddr {
                addr: bound,
                unit_id: spec.unit_id,
            };
            devices.insert(spec.name.clone(), (device, at));
        }
        let name = names.join("+");
        let token = shutdown.clone();
        let task_name = name.clone();
        tracker.spawn(async move {
            if let Err(err) = serve_tcp(listener, units, token).await {
                tracing::error!(endpoint = %task_name, %err, "simulator: server stopped");
            }
        });
        endpoints.push(Endpoint {
            name,
            configured: listen,
            bound,
        });
    }

    let buses = start_meter_buses(cfg, bind, &shutdown, &tracker, &mut endpoints).await?;

    let ticks = spawn_ticker(cfg, plants, buses, &shutdown, &tracker);

    Ok(RunningSimulator {
        endpoints,
        devices,
        shutdown,
        tracker,
        ticks,
    })
}

/// The plant models of `cfg` and their devices by name (each with the layout of its kind and
/// its configured faults).
fn build_plants(cfg: &SimulatorConfig) -> (Vec<Plant>, BTreeMap<String, Device>) {
    let mut by_name: BTreeMap<String, Device> = BTreeMap::new();
    let mut make = |name: &str, layout: &[layout::Reg]| {
        let device = Device::new(
            name,
            BankSizes::for_layout(layout),
            seed_for(cfg.seed ^ 0xFA17, name),
        );
        by_name.insert(name.to_string(), device.clone());
        device
    };
    let mut plants = Vec::new();
    for line in &cfg.potlines {
        let rect = make(
            &rectifier_device_name(&line.name),
            layout::rectifier::LAYOUT,
        );
        let pots = (1..=line.cells)
            .map(|n| make(&pot_device_name(&line.name, n), layout::pcu::LAYOUT))
            .collect();
        let model = Potline::new(line, seed_for(cfg.seed, &line.name), rect, pots);
        plants.push(Plant::Potline(Box::new(model)));
    }
    for s in &cfg.smelters {
        let dev = make(&s.name, layout::copper_smelter::LAYOUT);
        plants.push(Plant::Smelter(Smelter::new(
            s,
            seed_for(cfg.seed, &s.name),
            dev,
        )));
    }
    for s in &cfg.stacks {
        let dev = make(&s.name, layout::cems::LAYOUT);
        let model = Stack::new(s, seed_for(cfg.seed, &s.name), dev);
        plants.push(Plant::Stack(Box::new(model)));
    }
    for f in &cfg.faults {
        if let Some(d) = by_name.get(&f.device) {
            d.set_faults(f.to_faults());
        }
    }
    (plants, by_name)
}

/// The endpoints to bind: plants with the same listen address share one socket.
fn endpoint_groups(cfg: &SimulatorConfig) -> Vec<(SocketAddr, Vec<String>)> {
    let plant_listens = cfg
        .potlines
        .iter()
        .map(|p| (&p.name, p.listen))
        .chain(cfg.smelters.iter().map(|s| (&s.name, s.listen)))
        .chain(cfg.stacks.iter().map(|s| (&s.name, s.listen)));
    let mut groups: Vec<(SocketAddr, Vec<String>)> = Vec::new();
    for (name, listen) in plant_listens {
        match groups.iter_mut().find(|(l, _)| *l == listen) {
            Some((_, names)) => names.push(name.clone()),
            None => groups.push((listen, vec![name.clone()])),
        }
    }
    groups
}

/// Steps every plant and meter bus once per tick until `shutdown`; the receiver counts ticks.
fn spawn_ticker(
    cfg: &SimulatorConfig,
    mut plants: Vec<Plant>,
    buses: Vec<MeterBus>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> watch::Receiver<u64> {
    let (tick_tx, ticks) = watch::channel(0u64);
    let token = shutdown.clone();
    let period = cfg.tick;
    let dt_s = period.as_secs_f64() * cfg.time_scale;
    tracker.spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.tick().await; // the first tick is immediate: initial values are already set
        let mut n = 0u64;
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                _ = interval.tick() => {
                    for plant in &mut plants {
                        plant.step(dt_s);
                    }
                    let now_ms = crate::model::Timestamp::now().0;
                    for bus in &buses {
                        bus.advance(Duration::from_secs_f64(dt_s), now_ms);
                    }
                    n += 1;
                    tick_tx.send_replace(n);
                }
            }
        }
    });
    ticks
}

/// Binds and serves the DL/T 645 meter buses of `cfg`, adding their endpoints.
async fn start_meter_buses(
    cfg: &SimulatorConfig,
    bind: BindMode,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
    endpoints: &mut Vec<Endpoint>,
) -> io::Result<Vec<MeterBus>> {
    let mut buses = Vec::new();
    for sim in &cfg.meter_buses {
        let mut meters = Vec::new();
        for m in &sim.meters {
            let address = crate::dlt645::Address::parse(&m.address).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("simulator bus {}: {e}", sim.name),
                )
            })?;
            meters.push(Meter::new(
                sim.edition,
                address,
                m.energy_start_kwh,
                m.load_kw,
            ));
        }
        let bus = MeterBus::new(meters);
        let addr = match bind {
            BindMode::AsConfigured => sim.listen,
            BindMode::AnyPort => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        };
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            io::Error::new(e.kind(), format!("simulator: cannot listen on {addr}: {e}"))
        })?;
        endpoints.push(Endpoint {
            name: sim.name.clone(),
            configured: sim.listen,
            bound: listener.local_addr()?,
        });
        let (token, served, name) = (shutdown.clone(), bus.clone(), sim.name.clone());
        tracker.spawn(async move {
            if let Err(err) = serve_meters_tcp(listener, served, token).await {
                tracing::error!(endpoint = %name, %err, "simulator: meter bus stopped");
            }
        });
        buses.push(bus);
    }
    Ok(buses)
}

/// Runs the simulator of `cfg` on its configured addresses until `shutdown` is cancelled
/// (`smeltwatch simulate`), logging what it serves.
pub async fn run(cfg: &SimulatorConfig, shutdown: CancellationToken) -> io::Result<()> {
    let sim = start(cfg, BindMode::AsConfigured).await?;
    for ep in &sim.endpoints {
        let mut units: Vec<(u8, &str)> = sim
            .devices
            .iter()
            .filter(|(_, (_, at))| at.addr == ep.bound)
            .map(|(name, (_, at))| (at.unit_id, name.as_str()))
            .collect();
        units.sort_unstable();
        let units: Vec<String> = units.iter().map(|(u, n)| format!("{u}={n}")).collect();
        if let Some(bus) = cfg.meter_buses.iter().find(|b| b.name == ep.name) {
            let meters: Vec<&str> = bus.meters.iter().map(|m| m.address.as_str()).collect();
            tracing::info!(endpoint = %ep.name, addr = %ep.bound, meters = %meters.join(" "), "simulator serving {} meters over TCP", bus.edition);
            continue;
        }
        tracing::info!(endpoint = %ep.name, addr = %ep.bound, units = %units.join(" "), "simulator serving Modbus TCP");
    }
    for f in &cfg.faults {
        tracing::info!(device = %f.device, faults = ?f.to_faults(), "simulator fault injected");
    }
    tracing::info!(seed = cfg.seed, tick = ?cfg.tick, "simulator running");
    shutdown.cancelled().await;
    tracing::info!("simulator stopping");
    sim.shutdown().await;
    Ok(())
}
