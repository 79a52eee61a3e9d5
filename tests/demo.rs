//! `smeltwatch demo` as someone trying the project runs it: the binary starts its simulator,
//! embedded broker and agent, the dashboard answers on the HTTP port, readings are published on
//! the embedded broker, and Ctrl-C (SIGINT) stops everything with exit code 0.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::probe::get;
use common::{agent, free_port};

/// Kills the demo if the test fails before it stopped.
struct Demo(Option<std::process::Child>);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_dashboard_publishes_and_stops_cleanly_on_sigint() {
    let (mqtt_port, http_port) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
        .args([
            "demo",
            "--mqtt-port",
            &mqtt_port.to_string(),
            "--http-port",
            &http_port.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting smeltwatch demo");
    let mut demo = Demo(Some(child));

    // The dashboard: one self-contained page.
    let deadline = Instant::now() + Duration::from_secs(60);
    let page = loop {
        let (code, body) = get(http_port, "/").await;
        if code == 200 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard did not answer within 60 s: {code} {body}"
        );
        assert!(
            demo.0.as_mut().unwrap().try_wait().unwrap().is_none(),
            "the demo exited before serving the dashboard"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(page.contains("id=\"heatmap\""), "{page}");

    // A poll batch published on the embedded broker.
    let (_client, mut rx) = common::mosquitto::subscribe(mqtt_port, "smeltwatch/#").await;
    let live = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (topic, payload) = rx.recv().await.expect("subscriber open");
            if topic.contains("/live/") {
                return (topic, payload);
            }
        }
    })
    .await
    .expect("a live message within 30 s");
    let batch: serde_json::Value = serde_json::from_slice(&live.1).unwrap();
    assert!(
        batch["readings"].as_array().is_some_and(|r| !r.is_empty()),
        "{}: {batch}",
        live.0
    );

    // Ctrl-C: a clean stop (uplinks flushed, simulator and broker closed) with exit code 0.
    let mut child = demo.0.take().unwrap();
    agent::signal(child.id(), "-INT");
    let started = Instant::now();
    let limit = Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the demo did not stop within {limit:?} of SIGINT");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "the demo exited with {status}");
}
