//! Simulated Modbus devices for the integration tests: a device with small register banks, f32
//! words in the big-endian order the test maps use, a server on a fresh loopback port, the
//! simulator's stack CEMS and the configuration that polls them; the broker, simulator and
//! state directory an agent-level end-to-end test starts from.

use std::path::{Path, PathBuf};

use rumqttc::AsyncClient;
use smeltwatch::simulator::{
    self, BankSizes, BindMode, Device, RunningSimulator, SimulatorConfig, UnitMap, serve_tcp,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::mosquitto::{self, Mosquitto};

/// A device with 8 coils, 8 discrete inputs, 64 holding and 64 input registers.
pub fn device(name: &str) -> Device {
    Device::new(
        name,
        BankSizes {
            coils: 8,
            discrete_inputs: 8,
            holding: 64,
            input: 64,
        },
        1,
    )
}

/// The two registers of an IEEE 754 f32 in ABCD order (high word first).
pub fn f32_words(v: f32) -> [u16; 2] {
    let b = v.to_be_bytes();
    [
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    ]
}

/// Serve `units` over Modbus TCP on a fresh loopback port until `shutdown`; returns the port.
pub async fn serve(units: UnitMap, shutdown: &CancellationToken) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_tcp(listener, units, shutdown.clone()));
    port
}

/// `count` meters (unit ids 1..), meter `n` reading 10·n MW (input registers 0-1) and 1000 + n
/// MWh (input registers 2-3), served until `shutdown`; returns the port.
pub async fn meters(count: u8, shutdown: &CancellationToken) -> u16 {
    let units: UnitMap = (1..=count)
        .map(|unit| {
            let d = device(&format!("meter_{unit:02}"));
            d.set_input(0, &f32_words(10.0 * f32::from(unit)));
            d.set_input(2, &f32_words(1000.0 + f32::from(unit)));
            (unit, d)
        })
        .collect();
    serve(units, shutdown).await
}

/// The head of an agent configuration for a plant of [`meters`]: site `site`, its state in
/// `state`, and the register map of [`meter_map_toml`] without energy; its sources follow.
pub fn meter_site_toml(site: &str, state: &Path) -> String {
    format!(
        "\nsite = \"{site}\"\nstate_dir = \"{}\"\n{}",
        state.display(),
        meter_map_toml(false)
    )
}

/// The register map `meter` of the [`meters`] devices: `power_mw`, the f32 at input registers
/// 0-1, and with `energy` also `energy_mwh`, the f32 at 2-3.
pub fn meter_map_toml(energy: bool) -> String {
    let mut toml = String::from(
        r#"
[register_maps.meter.points.power_mw]
area = "input"
address = 0
type = "f32"
unit = "MW"
"#,
    );
    if energy {
        toml.push_str(
            r#"[register_maps.meter.points.energy_mwh]
area = "input"
address = 2
type = "f32"
unit = "MWh"
"#,
        );
    }
    toml
}

/// Source `source` at loopback `port` (500 ms timeout) polled every `poll`, whose `count`
/// devices `{prefix}meter_01`, `{prefix}meter_02`, … (unit ids 1..) use the map of
/// [`meter_map_toml`]: the plant that [`meters`] serves.
pub fn meter_source_toml(source: &str, port: u16, poll: &str, prefix: &str, count: u8) -> String {
    format!(
        r#"
[[sources]]
name = "{source}"
tcp = "127.0.0.1:{port}"
timeout = "500ms"
default_poll = "{poll}"

[[sources.devices]]
name = "{prefix}meter_{{n:02}}"
count = {count}
unit_id = 1
map = "meter"
"#
    )
}

/// One meter (unit 1) whose input registers 0-1 hold 4.05 as an f32, served until `shutdown`;
/// returns the port. [`one_meter_toml`] polls it.
pub async fn one_meter(shutdown: &CancellationToken) -> u16 {
    let dev = Device::new(
        "meter",
        BankSizes {
            input: 4,
            ..BankSizes::default()
        },
        1,
    );
    dev.set_input(0, &[0x4081, 0x999A]);
    serve(UnitMap::from([(1, dev)]), shutdown).await
}

/// A plant of one meter named `device` (its `power_mw`, an f32 input register at 0) on source
/// `bus` at `modbus` (`host:port`), polled every `poll` when given, and one MQTT uplink `plant`
/// whose other keys are `uplink` (`broker = "…"` and what follows it).
pub fn one_meter_toml(
    site: &str,
    state_dir: &str,
    modbus: &str,
    poll: Option<&str>,
    device: &str,
    uplink: &str,
) -> String {
    let poll = poll.map_or(String::new(), |p| format!("default_poll = \"{p}\"\n"));
    format!(
        r#"
site = "{site}"
state_dir = "{state_dir}"
[[sources]]
name = "bus"
tcp = "{modbus}"
{poll}[[sources.devices]]
name = "{device}"
unit_id = 1
[sources.devices.points.power_mw]
area = "input"
address = 0
type = "f32"
[[uplinks]]
name = "plant"
type = "mqtt"
{uplink}
"#
    )
}

/// An MQTT uplink `name` to the test broker on loopback `port`, 5 s keep-alive, reconnecting
/// after 100 ms to 1 s, carrying `streams`.
pub fn mqtt_uplink_toml(name: &str, port: u16, streams: &[&str]) -> String {
    mqtt_uplink_toml_backing_off_to(name, port, streams, "1s")
}

/// The MQTT uplink `plant` to the test broker on loopback `port` carrying the live, metrics,
/// events and emissions streams, reconnecting after 100 ms to 500 ms.
pub fn four_streams_uplink_toml(port: u16) -> String {
    format!(
        "[[uplinks]]\nname = \"plant\"\ntype = \"mqtt\"\nbroker = \"mqtt://127.0.0.1:{port}\"\n\
         reconnect_min = \"100ms\"\nreconnect_max = \"500ms\"\n\
         streams = [\"live\", \"metrics\", \"events\", \"emissions\"]\n"
    )
}

/// [`mqtt_uplink_toml`] whose reconnection backs off up to `reconnect_max`.
pub fn mqtt_uplink_toml_backing_off_to(
    name: &str,
    port: u16,
    streams: &[&str],
    reconnect_max: &str,
) -> String {
    format!(
        r#"[[uplinks]]
name = "{name}"
type = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
keep_alive = "5s"
reconnect_min = "100ms"
reconnect_max = "{reconnect_max}"
streams = {streams:?}
"#
    )
}

/// Device `rectifier` (unit 1) whose `line_current_ka` is the f32 at input registers 0-1; more
/// of its points may follow.
pub const RECTIFIER_DEVICE: &str = include_str!("../fixtures/rectifier_device.toml");

/// A `[[sources]]` `name` at the Modbus server on `port`, polled every `poll` with a timeout of
/// 500 ms; its devices follow.
pub fn polled_source_toml(name: &str, port: u16, poll: &str) -> String {
    format!(
        "\n[[sources]]\nname = \"{name}\"\ntcp = \"127.0.0.1:{port}\"\ntimeout = \"500ms\"\n\
         default_poll = \"{poll}\""
    )
}

/// `count` pots `pot_001`… (units 10…) whose cell voltage (V, 0 to 60) is the f32 at input 0.
pub fn pots_toml(count: u8) -> String {
    format!(
        r#"[[sources.devices]]
name = "pot_{{n:03}}"
count = {count}
unit_id = 10
[sources.devices.points.cell_voltage_v]
area = "input"
address = 0
type = "f32"
unit = "V"
range = [0.0, 60.0]
"#
    )
}

/// The register map `pcu` of the simulator's potline cells: the cell voltage (the f32 at input
/// registers 0-1), and the in-service and cut-out bits of input register 5.
pub const PCU_MAP: &str = r#"
[register_maps.pcu.points]
cell_voltage_v = { area = "input", address = 0, type = "f32", unit = "V" }
in_service = { area = "input", address = 5, type = "bool", bit = 0 }
cut_out = { area = "input", address = 5, type = "bool", bit = 2 }
"#;

/// The `[calc]` section of a run at plant speed: AR5 GWPs, the Qinghai 2022 grid factor, UTC+8,
/// and reading timestamps mapped to plant time from `start_utc`, `scale` plant seconds per real
/// second.
pub fn simulated_calc_toml(scale: f64, start_utc: &str) -> String {
    format!(
        r#"
[calc]
gwp = "ar5"
grid_factor = "qinghai-2022"
utc_offset_hours = 8

[calc.simulated_time]
scale = {scale}
start = "{start_utc}"
"#
    )
}

/// The stack CEMS of the plant simulator, `gtc1_stack`, `gtc2_stack`, … (`stacks` of them, unit
/// ids 1..) on one Modbus TCP endpoint, ticking every 50 ms with `time_scale` plant seconds per
/// real second; returns the simulator and the endpoint's port.
pub async fn stack_simulator(stacks: u8, time_scale: f64) -> (RunningSimulator, u16) {
    let mut toml = format!("seed = 7\ntick = \"50ms\"\ntime_scale = {time_scale}\n");
    for unit in 1..=stacks {
        toml.push_str(&format!(
            "[[stacks]]\nname = \"gtc{unit}_stack\"\nlisten = \"127.0.0.1:0\"\nunit_id = {unit}\nprofile = \"potline_gtc\"\n"
        ));
    }
    let cfg: SimulatorConfig = toml::from_str(&toml).unwrap();
    let sim = simulator::start(&cfg, BindMode::AnyPort).await.unwrap();
    let port = sim.endpoints()[0].bound.port();
    (sim, port)
}

/// The simulator's CEMS register map (`config/maps/cems.csv`) with every poll interval (10 s in
/// the shipped map) replaced by `poll`, written to `dir/cems.csv`; returns its path.
pub fn cems_map(dir: &Path, poll: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("config/maps/cems.csv")).unwrap();
    let out: Vec<String> = text
        .lines()
        .map(|l| l.replacen(",10s,", &format!(",{poll},"), 1))
        .collect();
    let path = dir.join("cems.csv");
    std::fs::write(&path, out.join("\n")).unwrap();
    path
}

/// Source `source` at `port` whose `devices` (name, unit id) each use the CEMS register map at
/// `map`.
pub fn cems_source_toml(source: &str, port: u16, map: &Path, devices: &[(&str, u8)]) -> String {
    let mut toml = format!(
        "\n[register_maps.cems]\ncsv = \"{}\"\n\n[[sources]]\nname = \"{source}\"\n\
         tcp = \"127.0.0.1:{port}\"\ntimeout = \"1s\"\n",
        map.display()
    );
    for (name, unit) in devices {
        toml.push_str(&format!(
            "[[sources.devices]]\nname = \"{name}\"\nunit_id = {unit}\nmap = \"cems\"\n"
        ));
    }
    toml
}

/// Stack 1's CEMS (the simulator's `gtc1_stack`, unit 1) polled as device `gtc1/gtc1_stack` at
/// `port`, with the register map at `map`.
pub fn gtc1_source_toml(port: u16, map: &Path) -> String {
    cems_source_toml("gtc1", port, map, &[("gtc1_stack", 1)])
}

/// Both stacks' CEMS (units 1 and 2 of one endpoint at `port`) polled as devices
/// `cems/gtc1_cems` and `cems/gtc2_cems`, with the register map at `map`.
pub fn two_cems_source_toml(port: u16, map: &Path) -> String {
    cems_source_toml("cems", port, map, &[("gtc1_cems", 1), ("gtc2_cems", 2)])
}

/// The emission calculator of `gtc1_stack` (device `gtc1/gtc1_stack`) with every status point
/// of the simulator's CEMS map.
pub const GTC1_STACK_CALC: &str = r#"
[[calc.stacks]]
name = "gtc1_stack"
device = "gtc1/gtc1_stack"
limits = "gb25465_2010_al_pot_gas"
limit_class = "general"
pollutants = { so2 = "so2_mg_m3", fluoride = "fluoride_mg_m3", particulate = "particulate_mg_m3" }
flow_point = "flow_m3h"
calibration_point = "in_calibration"
maintenance_point = "in_maintenance"
fault_point = "analyser_fault"
"#;

/// The port the running simulator's endpoint `name` is bound to.
pub fn endpoint_port(sim: &RunningSimulator, name: &str) -> u16 {
    sim.endpoints()
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("endpoint {name}"))
        .bound
        .port()
}

/// The plant of an agent-level end-to-end test: how to simulate it, its site (whose topics the
/// test subscribes to), the two simulator endpoints the agent polls and the agent's configuration for them.
pub struct EndToEnd {
    pub simulator: fn() -> SimulatorConfig,
    /// The site: the subscriber takes `smeltwatch/{site}/#`.
    pub site: &'static str,
    /// The endpoints whose ports `agent_config` takes first and second.
    pub endpoints: [&'static str; 2],
    /// The agent's configuration from the two endpoint ports, the broker's port and the state
    /// directory.
    pub agent_config: fn(u16, u16, u16, &Path) -> String,
}

/// What [`EndToEnd::start`] starts: a broker, its subscriber (client and what it receives), the
/// simulator, a state directory and the agent's configuration for them.
pub type Started = (
    Mosquitto,
    AsyncClient,
    mpsc::Receiver<(String, Vec<u8>)>,
    RunningSimulator,
    tempfile::TempDir,
    String,
);

impl EndToEnd {
    /// Start the broker, subscribe, start the simulator on free ports, make the state directory
    /// and write the agent's configuration; the agent itself is the test's to start.
    pub async fn start(&self) -> Started {
        let broker = Mosquitto::start();
        let (sub, rx) =
            mosquitto::subscribe(broker.port, &format!("smeltwatch/{}/#", self.site)).await;
        let sim = simulator::start(&(self.simulator)(), BindMode::AnyPort)
            .await
            .expect("simulator starts");
        let state = tempfile::tempdir().expect("temp dir");
        let [a, b] = self.endpoints.map(|name| endpoint_port(&sim, name));
        let toml = (self.agent_config)(a, b, broker.port, state.path());
        (broker, sub, rx, sim, state, toml)
    }
}

/// The `[[sources]]` of potline1 at `port`, polled every 100 ms, with `source_keys` (TOML lines:
/// its timeout, say): the rectifier (unit 1) with `line_current_ka` (kA at input 0) and
/// `rectifier_points` (TOML lines) besides, and four cells `pot_001`… (units 10…) on the `pcu`
/// map of [`PCU_MAP`].
pub fn potline1_source_toml(port: u16, source_keys: &str, rectifier_points: &str) -> String {
    format!(
        r#"
[[sources]]
name = "potline1"
tcp = "127.0.0.1:{port}"
default_poll = "100ms"
{source_keys}
[[sources.devices]]
name = "rectifier"
unit_id = 1
points.line_current_ka = {{ area = "input", address = 0, type = "f32", unit = "kA" }}
{rectifier_points}
[[sources.devices]]
name = "pot_{{n:03}}"
count = 4
unit_id = 10
map = "pcu"
"#
    )
}

/// The `[[sources]]` `gtc1` at `port`, polled every 100 ms with `timeout`: the stack CEMS
/// `gtc1_stack` (unit 1) on the `cems` map.
pub fn gtc1_cems_map_source_toml(port: u16, timeout: &str) -> String {
    format!(
        "\n[[sources]]\nname = \"gtc1\"\ntcp = \"127.0.0.1:{port}\"\ntimeout = \"{timeout}\"\n\
         default_poll = \"100ms\"\n\n[[sources.devices]]\nname = \"gtc1_stack\"\nunit_id = 1\n\
         map = \"cems\"\n"
    )
}

/// `[[calc.potlines]]` for potline1 (its rectifier and cells), with `keys` (TOML lines) besides.
pub fn calc_potline1_toml(keys: &str) -> String {
    format!(
        "[[calc.potlines]]\nname = \"potline1\"\nrectifier = \"potline1/rectifier\"\n\
         pots = \"potline1/pot_*\"\n{keys}"
    )
}

/// `[[calc.stacks]]` for `gtc1_stack` under GB 25465's limits for aluminium pot gas, with
/// `pollutants` (an inline table) and its calibration flag `in_calibration`.
pub fn calc_gtc1_stack_toml(pollutants: &str) -> String {
    calc_pot_gas_stack_toml("gtc1_stack", "gtc1/gtc1_stack", pollutants)
}

/// `[[calc.stacks]]` for the stack `name` measured by `device`, under GB 25465's limits for
/// aluminium pot gas, with `pollutants` (an inline table) and its calibration flag
/// `in_calibration`.
pub fn calc_pot_gas_stack_toml(name: &str, device: &str, pollutants: &str) -> String {
    format!(
        "[[calc.stacks]]\nname = \"{name}\"\ndevice = \"{device}\"\n\
         limits = \"gb25465_2010_al_pot_gas\"\npollutants = {pollutants}\n\
         calibration_point = \"in_calibration\"\n"
    )
}

/// The head of a simulator configuration for the agent-level end-to-end tests: `seed`, a 50 ms
/// tick at `time_scale` plant seconds per real second, and potline1 (four cells on 127.0.0.1:1,
/// no random anode effects), whose other keys may follow.
pub fn simulated_potline1_toml(seed: u64, time_scale: f64) -> String {
    format!(
        "\nseed = {seed}\ntick = \"50ms\"\ntime_scale = {time_scale}\n\n[[potlines]]\n\
         name = \"potline1\"\nlisten = \"127.0.0.1:1\"\ncells = 4\nanode_effects_per_cell_day = 0.0\n"
    )
}

/// The configuration of an agent of `site` that keeps its state in `state`: the cells' `pcu`
/// map ([`PCU_MAP`]), then `sections` (TOML text each), in order.
pub fn agent_toml(site: &str, state: &Path, sections: &[&str]) -> String {
    let mut toml = format!(
        "\nsite = \"{site}\"\nstate_dir = \"{}\"\n{PCU_MAP}",
        state.display()
    );
    for section in sections {
        toml.push_str(section);
        toml.push('\n');
    }
    toml
}

/// The register map `cems` of the simulator's stack: SO2 (mg/m³, f32 at input 0), fluoride when
/// asked (mg/m³, f32 at input 6), the flow (m³/h, f32 at input 10) and the calibration flag (bit 0
/// of input 14).
pub fn cems_map_toml(fluoride: bool) -> String {
    let fluoride = if fluoride {
        "fluoride_mg_m3 = { area = \"input\", address = 6, type = \"f32\", unit = \"mg/m3\" }\n"
    } else {
        ""
    };
    format!(
        "[register_maps.cems.points]\n\
         so2_mg_m3 = {{ area = \"input\", address = 0, type = \"f32\", unit = \"mg/m3\" }}\n\
         {fluoride}\
         flow_m3h = {{ area = \"input\", address = 10, type = \"f32\", unit = \"m3/h\" }}\n\
         in_calibration = {{ area = \"input\", address = 14, type = \"bool\", bit = 0 }}\n"
    )
}
