//! The uplink's command queue, without a broker.

use std::time::Duration;

use rumqttc::QoS;
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::*;
use crate::config::UplinkKind;
use crate::model::{EventKind, Value};

const CONFIG: &str = r#"
site = "t"
state_dir = "var/state"

[[sources]]
name = "gw"
tcp = "127.0.0.1:1502"

[[sources.devices]]
name = "rect"
unit_id = 1
points.x = { area = "holding", address = 0, type = "u16" }

[[uplinks]]
name = "scada"
type = "sparkplug"
broker = "mqtt://127.0.0.1:1883"
group_id = "g"
edge_node_id = "e"
"#;

#[tokio::test]
async fn a_command_that_finds_the_queue_full_is_counted_and_reported_as_an_event() {
    let cfg = crate::config::parse(CONFIG, std::path::Path::new("t.toml")).unwrap();
    let UplinkKind::Sparkplug(spb_cfg) = &cfg.uplinks[0].kind else {
        panic!("a Sparkplug uplink")
    };
    let dir = tempfile::tempdir().unwrap();
    let spool = SpoolHandle::open(&dir.path().join("spool.db"), &Default::default()).unwrap();
    let (writers, _queues) = DeviceWriters::for_sources(&cfg.sources);
    let (events_tx, mut events_rx) = mpsc::channel(4);
    let ids = SparkplugSettings {
        group_id: "g".into(),
        edge_node_id: "e".into(),
        primary_host_id: None,
    };
    let up = SparkplugUplink::new(
        "scada",
        &spb_cfg.mqtt,
        ids,
        EdgeNodeModel::from_sources(&cfg.sources),
        spool,
    )
    .unwrap()
    .with_device_writes(DeviceWriteGate {
        enabled: false,
        max_command_age: Duration::from_secs(30),
        writers,
        events: events_tx,
    });
    let status = up.status();
    let (tx, mut rx) = mpsc::channel(1);
    let cmd = |n: u8| rumqttc::Publish::new("spBv1.0/g/NCMD/e", QoS::AtMostOnce, vec![n]);
    forward(&up, &tx, cmd(1));
    forward(&up, &tx, cmd(2));
    assert_eq!(status.borrow().commands_dropped, 1);
    assert_eq!(
        rx.recv().await.unwrap().payload[..],
        [1],
        "the first one waits"
    );
    let Some(Record::Event(e)) = timeout(Duration::from_secs(5), events_rx.recv())
        .await
        .expect("an event within 5 s")
    else {
        panic!("an event record")
    };
    assert_eq!(e.kind, EventKind::CommandDropped);
    assert_eq!(&*e.subject, "scada");
    assert!(
        e.attributes
            .iter()
            .any(|(k, v)| &**k == "topic" && *v == Value::Text("spBv1.0/g/NCMD/e".into())),
        "{e:?}"
    );
}
