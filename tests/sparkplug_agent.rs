//! The Sparkplug uplink as the configuration builds it: the whole agent (`app::start`) polling a
//! simulated device over Modbus TCP, publishing to a real Mosquitto as a Sparkplug edge node, and
//! serving DCMD writes through the poller.
//!
//! Named after what must be true:
//! - a device that times out gets DDEATH, and DBIRTH when it answers again;
//! - an allowed DCMD write lands in the device's register and is reported as an event;
//! - a write to a non-writable point, out of range, or with device writes disabled is refused with
//!   an event and never reaches the device.
//!
//! Write events travel on the events stream; a second uplink (`type = "mqtt"`, `streams =
//! ["events"]`) puts them on the same broker, where the test reads them as JSON.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::agent::{self, wait_delivered};
use common::mosquitto::{self, Mosquitto, SubscribeOptions};
use rumqttc::{AsyncClient, PublishOptions, QoS};
use smeltwatch::app::Agent;
use smeltwatch::codec::sparkplug::{
    self as spb,
    pb::{DataType, Payload, payload::Metric, payload::metric::Value as PbValue},
};
use smeltwatch::model::{Timestamp, Value};
use smeltwatch::simulator::{BankSizes, Banks, Device, Faults, UnitMap, serve_tcp};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const USER: &str = "edge";
const PASSWORD: &str = "s3cret-edge";
const GROUP: &str = "smelter";
const EDGE: &str = "line1";
const DEVICE: &str = "rect";

/// Everything one test runs against.
struct Rig {
    _broker: Mosquitto,
    _dir: tempfile::TempDir,
    sim_stop: CancellationToken,
    dev: Device,
    agent: Option<Agent>,
    /// `spBv1.0/smelter/#` as (topic, payload).
    spb: mpsc::Receiver<(String, Vec<u8>)>,
    /// The client the test publishes DCMDs with.
    host: AsyncClient,
    /// `smeltwatch/t/events/#` as (topic, payload).
    events: mpsc::Receiver<(String, Vec<u8>)>,
    _events_client: AsyncClient,
    /// Metric name → alias, from the device's DBIRTH.
    aliases: HashMap<String, u64>,
}

/// Initial raw value of the non-writable counter (holding 10–11, u32 ABCD).
const ENERGY_WORDS: [u16; 2] = [0x0001, 0x86A0]; // 100 000

/// The agent's configuration: the simulated device polled over Modbus TCP, the Sparkplug uplink
/// (`scada`) and an MQTT uplink (`plant`) carrying the events, both on the broker at `port`.
fn agent_config(
    modbus_port: u16,
    port: u16,
    state_dir: &std::path::Path,
    device_writes: bool,
) -> String {
    format!(
        r#"
site = "t"
state_dir = "{state}"

[[sources]]
name = "gw"
tcp = "127.0.0.1:{modbus_port}"
timeout = "300ms"
reconnect_min = "50ms"
reconnect_max = "200ms"
breaker_failures = 1000
default_poll = "200ms"

[[sources.devices]]
name = "{DEVICE}"
unit_id = 1
# Line-current set point: f32 with the words swapped, as the rectifier controller keeps it.
points.current_setpoint_ka = {{ area = "holding", address = 0, type = "f32", byte_order = "CDAB", unit = "kA", range = [0.0, 500.0], writable = true }}
# Temperature limit: i16 in 0.1 degC with a -40 degC offset.
points.temp_limit_c = {{ area = "holding", address = 4, type = "i16", scale = 0.1, offset = -40.0, unit = "degC", range = [-40.0, 120.0], writable = true }}
points.energy_kwh = {{ area = "holding", address = 10, type = "u32", unit = "kWh" }}
points.breaker_closed = {{ area = "coil", address = 0, type = "bool", writable = true }}

[[uplinks]]
name = "scada"
type = "sparkplug"
broker = "mqtt://127.0.0.1:{port}"
username = "{USER}"
password = "{PASSWORD}"
group_id = "{GROUP}"
edge_node_id = "{EDGE}"
reconnect_min = "50ms"
reconnect_max = "500ms"
[uplinks.device_writes]
enabled = {device_writes}

[[uplinks]]
name = "plant"
type = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
username = "{USER}"
password = "{PASSWORD}"
streams = ["events"]
reconnect_min = "50ms"
reconnect_max = "500ms"
"#,
        state = state_dir.display(),
    )
}

async fn rig(device_writes: bool) -> Rig {
    let broker = Mosquitto::start_with_user(USER, PASSWORD);
    let user = || SubscribeOptions {
        persistent_id: None,
        user: Some((USER.into(), PASSWORD.into())),
    };
    let (host, spb) = mosquitto::subscribe_with(broker.port, "spBv1.0/smelter/#", user()).await;
    let (events_client, events) =
        mosquitto::subscribe_with(broker.port, "smeltwatch/t/events/#", user()).await;

    let dev = Device::new(
        DEVICE,
        BankSizes {
            coils: 8,
            discrete_inputs: 8,
            holding: 32,
            input: 8,
        },
        1,
    );
    dev.set_holding(10, &ENERGY_WORDS);
    let sim_stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let modbus_port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_tcp(
        listener,
        UnitMap::from([(1, dev.clone())]),
        sim_stop.clone(),
    ));

    let dir = tempfile::tempdir().unwrap();
    let src = agent_config(modbus_port, broker.port, dir.path(), device_writes);
    let agent = agent::start_inline(&src, "sparkplug_agent.toml").await;
    let mut rig = Rig {
        _broker: broker,
        _dir: dir,
        sim_stop,
        dev,
        agent: Some(agent),
        spb,
        host,
        events,
        _events_client: events_client,
        aliases: HashMap::new(),
    };
    let dbirth = rig.until("DBIRTH").await;
    rig.aliases = dbirth
        .metrics
        .iter()
        .map(|m| (m.name.clone().unwrap(), m.alias.unwrap()))
        .collect();
    assert_eq!(rig.aliases.len(), 4, "every point is a metric: {dbirth:?}");
    rig
}

impl Rig {
    /// The next Sparkplug message of `kind` for the device (others are skipped).
    async fn until(&mut self, kind: &str) -> Payload {
        let want = format!("spBv1.0/{GROUP}/{kind}/{EDGE}/{DEVICE}");
        loop {
            let (topic, raw) = timeout(Duration::from_secs(20), self.spb.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {kind}"))
                .expect("subscriber alive");
            if topic == want {
                return spb::decode(&raw).expect("a Sparkplug payload");
            }
        }
    }

    /// Until a live (not historical) DDATA for the device carries `point` with a value `pred`
    /// accepts.
    async fn until_value(&mut self, point: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let alias = self.aliases[point];
        let datatype = self.datatype(point);
        loop {
            let p = self.until("DDATA").await;
            for m in &p.metrics {
                if m.alias == Some(alias)
                    && m.is_historical != Some(true)
                    && let Some(v) = spb::decode_value(datatype, m.value.as_ref())
                    && pred(&v)
                {
                    return v;
                }
            }
        }
    }

    fn datatype(&self, point: &str) -> DataType {
        match point {
            "current_setpoint_ka" => DataType::Float,
            // Scaled: a Double.
            "temp_limit_c" => DataType::Double,
            "energy_kwh" => DataType::UInt32,
            "breaker_closed" => DataType::Boolean,
            other => panic!("no such point {other}"),
        }
    }

    /// Publish a DCMD writing `value` to `point`, by alias (as Sparkplug 3.0 wants).
    async fn dcmd(&self, point: &str, datatype: DataType, value: PbValue) {
        self.dcmd_as(point, datatype, value, 0, false).await;
    }

    /// A DCMD stamped `age_ms` before now, published retained or not.
    async fn dcmd_as(
        &self,
        point: &str,
        datatype: DataType,
        value: PbValue,
        age_ms: i64,
        retain: bool,
    ) {
        let payload = Payload {
            timestamp: Some((Timestamp::now().unix_ms() - age_ms) as u64),
            metrics: vec![Metric {
                alias: Some(self.aliases[point]),
                timestamp: Some(Timestamp::now().unix_ms() as u64),
                datatype: Some(datatype as u32),
                value: Some(value),
                ..Default::default()
            }],
            ..Default::default()
        };
        self.host
            .publish(
                spb::topic(GROUP, spb::MessageType::DCmd, EDGE, Some(DEVICE)),
                spb::encode(&payload),
                PublishOptions::new(QoS::AtLeastOnce).retain(retain),
            )
            .await
            .expect("publish DCMD");
    }

    /// The next write event (JSON on the events topic), as (subject, attributes, message).
    async fn write_event(&mut self) -> WriteEvent {
        loop {
            let (topic, raw) = timeout(Duration::from_secs(20), self.events.recv())
                .await
                .expect("timed out waiting for a write event")
                .expect("subscriber alive");
            if topic != "smeltwatch/t/events/write" {
                continue;
            }
            let json: serde_json::Value = serde_json::from_slice(&raw).expect("JSON event");
            assert_eq!(json["kind"], "write", "{json}");
            assert_eq!(json["phase"], "instant", "{json}");
            let attributes = json["attributes"]
                .as_array()
                .expect("attributes")
                .iter()
                .map(|pair| (pair[0].as_str().unwrap().to_owned(), pair[1].clone()))
                .collect();
            return WriteEvent {
                subject: json["subject"].as_str().unwrap().to_owned(),
                attributes,
                message: json["message"].as_str().unwrap().to_owned(),
            };
        }
    }

    /// Write `breaker_closed = true` (allowed, in range) and check that it is accepted and lands
    /// while no register has changed since `before`.
    async fn assert_an_allowed_write_lands_alone(&mut self, before: &Banks) {
        self.dcmd(
            "breaker_closed",
            DataType::Boolean,
            PbValue::BooleanValue(true),
        )
        .await;
        assert_eq!(self.write_event().await.outcome(), "accepted");
        let after = self.dev.snapshot();
        assert_eq!(after.holding, before.holding, "no register was written");
        assert!(after.coils[0], "the allowed write behind them landed");
    }

    async fn stop(mut self) {
        if let Some(agent) = self.agent.take() {
            agent.shutdown().await;
        }
        self.sim_stop.cancel();
    }
}

#[derive(Debug)]
struct WriteEvent {
    subject: String,
    attributes: HashMap<String, serde_json::Value>,
    message: String,
}

impl WriteEvent {
    fn outcome(&self) -> &str {
        self.attributes["outcome"].as_str().unwrap()
    }

    fn reason(&self) -> &str {
        self.attributes
            .get("reason")
            .and_then(|r| r.as_str())
            .unwrap_or("")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_timeout_yields_ddeath_and_its_recovery_a_dbirth() {
    let mut rig = rig(false).await;
    // Values flow first.
    rig.until_value("energy_kwh", |v| *v == Value::UInt(100_000))
        .await;
    // The device stops answering: every read times out (comm_fail), the edge node says DDEATH.
    rig.dev.set_faults(Faults {
        silent: true,
        ..Faults::default()
    });
    let death = rig.until("DDEATH").await;
    assert!(death.seq.is_some(), "DDEATH carries a seq");
    // It answers again: a DBIRTH with every metric and its current value.
    rig.dev.clear_faults();
    let birth = rig.until("DBIRTH").await;
    assert_eq!(birth.metrics.len(), 4);
    let energy = birth
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("energy_kwh"))
        .unwrap();
    assert_eq!(
        spb::decode_value(DataType::UInt32, energy.value.as_ref()),
        Some(Value::UInt(100_000)),
        "the DBIRTH after recovery carries the value read again"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_dcmd_write_lands_in_the_register_and_is_reported() {
    let mut rig = rig(true).await;
    // The poller has read the set point (0.0) once, so the event knows the old value.
    rig.until_value("current_setpoint_ka", |v| *v == Value::Float(0.0))
        .await;

    rig.dcmd(
        "current_setpoint_ka",
        DataType::Float,
        PbValue::FloatValue(412.5),
    )
    .await;
    let ev = rig.write_event().await;
    assert_eq!(ev.subject, "rect/current_setpoint_ka", "{ev:?}");
    assert_eq!(ev.outcome(), "accepted", "{ev:?}");
    assert_eq!(ev.attributes["new_value"], 412.5, "{ev:?}");
    assert_eq!(ev.attributes["old_value"], 0.0, "{ev:?}");
    assert!(
        ev.attributes["by"]
            .as_str()
            .unwrap()
            .contains("sparkplug DCMD on uplink scada"),
        "{ev:?}"
    );
    assert!(ev.message.contains("accepted"), "{ev:?}");
    // 412.5 as f32 is 0x43CE_4000; CDAB puts the low word first.
    assert_eq!(rig.dev.holding(0, 2), Some(vec![0x4000, 0x43CE]));
    // The next poll reports it by exception.
    rig.until_value("current_setpoint_ka", |v| *v == Value::Float(412.5))
        .await;

    // Inverse scale and offset: -12.3 degC = (-12.3 + 40) / 0.1 = raw 277.
    rig.dcmd(
        "temp_limit_c",
        DataType::Double,
        PbValue::DoubleValue(-12.3),
    )
    .await;
    let ev = rig.write_event().await;
    assert_eq!(
        (ev.subject.as_str(), ev.outcome()),
        ("rect/temp_limit_c", "accepted"),
        "{ev:?}"
    );
    assert_eq!(rig.dev.holding(4, 1), Some(vec![277]));

    // A coil.
    rig.dcmd(
        "breaker_closed",
        DataType::Boolean,
        PbValue::BooleanValue(true),
    )
    .await;
    let ev = rig.write_event().await;
    assert_eq!(
        (ev.subject.as_str(), ev.outcome()),
        ("rect/breaker_closed", "accepted"),
        "{ev:?}"
    );
    assert_eq!(rig.dev.coils(0, 1), Some(vec![true]));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_non_writable_point_or_out_of_range_are_refused_and_never_reach_the_device() {
    let mut rig = rig(true).await;
    rig.until_value("energy_kwh", |v| *v == Value::UInt(100_000))
        .await;
    let before = rig.dev.snapshot();

    // Not writable.
    rig.dcmd("energy_kwh", DataType::UInt32, PbValue::IntValue(5))
        .await;
    let ev = rig.write_event().await;
    assert_eq!(
        (ev.subject.as_str(), ev.outcome()),
        ("rect/energy_kwh", "refused"),
        "{ev:?}"
    );
    assert_eq!(ev.reason(), "the point is not marked writable", "{ev:?}");
    assert_eq!(ev.attributes["old_value"], 100_000, "{ev:?}");
    assert_eq!(ev.attributes["new_value"], 5, "{ev:?}");

    // Writable, but outside its configured range (0–500 kA).
    rig.dcmd(
        "current_setpoint_ka",
        DataType::Float,
        PbValue::FloatValue(612.0),
    )
    .await;
    let ev = rig.write_event().await;
    assert_eq!(
        (ev.subject.as_str(), ev.outcome()),
        ("rect/current_setpoint_ka", "refused"),
        "{ev:?}"
    );
    assert_eq!(
        ev.reason(),
        "612 is outside the configured range 0..=500",
        "{ev:?}"
    );

    // Writable, in range, but the register cannot hold it: 0.05 degC is raw 400.5.
    rig.dcmd("temp_limit_c", DataType::Double, PbValue::DoubleValue(0.05))
        .await;
    let ev = rig.write_event().await;
    assert_eq!(ev.outcome(), "refused", "{ev:?}");
    assert!(ev.reason().contains("fraction"), "{ev:?}");

    // Writes are served in order: once an allowed write behind them has landed, anything the
    // refused ones had sent would have landed too.
    rig.assert_an_allowed_write_lands_alone(&before).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_device_writes_disabled_every_dcmd_write_is_refused_and_never_reaches_the_device() {
    let mut rig = rig(false).await;
    rig.until_value("current_setpoint_ka", |v| *v == Value::Float(0.0))
        .await;
    let before = rig.dev.snapshot();
    // Writable and in range: only the uplink's setting stops it.
    rig.dcmd(
        "current_setpoint_ka",
        DataType::Float,
        PbValue::FloatValue(400.0),
    )
    .await;
    rig.dcmd(
        "breaker_closed",
        DataType::Boolean,
        PbValue::BooleanValue(true),
    )
    .await;
    for point in ["current_setpoint_ka", "breaker_closed"] {
        let ev = rig.write_event().await;
        assert_eq!(ev.subject, format!("rect/{point}"), "{ev:?}");
        assert_eq!(ev.outcome(), "refused", "{ev:?}");
        assert_eq!(
            ev.reason(),
            "device writes are disabled on this uplink",
            "{ev:?}"
        );
    }
    let after = rig.dev.snapshot();
    assert_eq!(after.holding, before.holding);
    assert_eq!(after.coils, before.coils);
    rig.stop().await;
}

/// Connect with the agent's Sparkplug client id until the broker has taken its session over
/// (and so disconnected the agent), then go away: the agent reconnects and subscribes again.
async fn take_over_session(port: u16) {
    let mut o = rumqttc::MqttOptions::new("smeltwatch-t-scada", ("127.0.0.1".to_owned(), port));
    o.set_credentials(USER, PASSWORD);
    let (client, mut eventloop) = AsyncClient::builder(o).build();
    timeout(Duration::from_secs(20), async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("take-over client: {e}"),
            }
        }
    })
    .await
    .expect("the broker accepts the take-over");
    client.disconnect().await.expect("disconnect");
    let _ = timeout(Duration::from_secs(5), eventloop.poll()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_dcmd_is_refused_on_reconnect_and_a_stale_one_always() {
    let mut rig = rig(true).await;
    rig.until_value("current_setpoint_ka", |v| *v == Value::Float(0.0))
        .await;
    // A host that publishes its command retained: delivered live it cannot be told from any
    // other (the broker clears the flag on an established subscription), so it is executed...
    rig.dcmd_as(
        "current_setpoint_ka",
        DataType::Float,
        PbValue::FloatValue(400.0),
        0,
        true,
    )
    .await;
    assert_eq!(rig.write_event().await.outcome(), "accepted");
    // ...but the broker keeps it and hands it over again, retained, on every new subscription.
    // The operator sets the point back; the agent's connection is then taken over and renewed.
    rig.dev.set_holding(0, &[0, 0]);
    let before = rig.dev.snapshot();
    take_over_session(rig._broker.port).await;
    let ev = rig.write_event().await;
    assert_eq!(ev.outcome(), "refused", "{ev:?}");
    assert!(ev.reason().contains("retained"), "{ev:?}");
    // Five minutes old: older than the default max_command_age of 30 s.
    rig.dcmd_as(
        "current_setpoint_ka",
        DataType::Float,
        PbValue::FloatValue(410.0),
        300_000,
        false,
    )
    .await;
    let ev = rig.write_event().await;
    assert_eq!(ev.outcome(), "refused", "{ev:?}");
    assert!(ev.reason().contains("old"), "{ev:?}");
    // A fresh one behind them lands: anything the refused ones had sent would have too.
    rig.assert_an_allowed_write_lands_alone(&before).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completeness_counts_the_values_the_sparkplug_uplink_delivered() {
    let mut rig = rig(false).await;
    rig.until("DDATA").await;
    let agent = rig.agent.as_ref().expect("agent running");
    wait_delivered(agent, "scada", Duration::from_secs(20)).await;
    rig.stop().await;
}
