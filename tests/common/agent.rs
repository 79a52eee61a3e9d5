//! The agent under test: `smeltwatch run` as a child process, or started in this process from a
//! configuration text.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use smeltwatch::app::{Agent, RunOptions};
use smeltwatch::config::Stream;
use smeltwatch::model::Timestamp;

/// The poll cycles the agent's pollers have run, all sources together.
pub fn poll_cycles(agent: &Agent) -> u64 {
    agent
        .live
        .pollers
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| s.cycles.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

/// Run `smeltwatch` with `args` to its end: whether it succeeded, its stdout and its stderr.
pub fn smeltwatch(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
        .args(args)
        .output()
        .expect("running smeltwatch");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `smeltwatch run -c config` with `RUST_LOG=warn`, no stdin or stdout and its log on the test's
/// stderr; the caller adds what its test needs (environment, a log file) and spawns it.
pub fn run_command(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smeltwatch"));
    cmd.args(["run", "-c"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// `smeltwatch run -c config`, spawned as [`run_command`] sets it up.
pub fn spawn(config: &Path) -> Child {
    run_command(config)
        .spawn()
        .expect("starting smeltwatch run")
}

/// Send `sig` (`-TERM`, `-HUP`, …) to process `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// The agent started in this process from `toml`, written to `file` first (as an operator's
/// file: the ledger records its hash), with a 2 s grace period and no reload channel.
pub async fn start(file: &Path, toml: &str) -> Agent {
    start_with_grace(file, toml, Duration::from_secs(2)).await
}

/// The agent started in this process from `toml`, parsed as if read from `file` (nothing is
/// written), with the default run options.
pub async fn start_inline(toml: &str, file: &str) -> Agent {
    let cfg = smeltwatch::config::parse(toml, Path::new(file))
        .unwrap_or_else(|e| panic!("test configuration is invalid:\n{e}"));
    smeltwatch::app::start(cfg, RunOptions::default())
        .await
        .expect("agent starts")
}

/// [`start`] with a grace period of `grace`.
pub async fn start_with_grace(file: &Path, toml: &str, grace: Duration) -> Agent {
    std::fs::write(file, toml).unwrap();
    let cfg = smeltwatch::config::load(file)
        .unwrap_or_else(|e| panic!("test configuration is invalid:\n{e}"));
    smeltwatch::app::start(
        cfg,
        RunOptions {
            grace_period: grace,
            reload: None,
        },
    )
    .await
    .expect("agent starts")
}

/// Values counted as delivered by `uplink` on the `live` stream, this hour and the last.
pub fn delivered_by(agent: &Agent, uplink: &str) -> u64 {
    agent
        .live
        .completeness
        .live_view(Timestamp::now())
        .iter()
        .flat_map(|(_, report)| report.rows.iter())
        .filter(|row| row.stream == Stream::Live)
        .flat_map(|row| row.delivered.iter())
        .filter(|(u, _)| u == uplink)
        .map(|(_, n)| *n)
        .sum()
}

/// Wait until the agent's first uplink, `uplink`, has records acknowledged and the completeness
/// ledger counts values it delivered; after `within`, fail the test with both counts.
pub async fn wait_delivered(agent: &Agent, uplink: &str, within: Duration) {
    let mut status = agent.live.uplinks.lock().unwrap()[0].status.clone();
    tokio::time::timeout(within, async {
        loop {
            if status.borrow_and_update().acked_total > 0 && delivered_by(agent, uplink) > 0 {
                return;
            }
            status.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "acked {} records, completeness shows {} values delivered by {uplink}",
            status.borrow().acked_total,
            delivered_by(agent, uplink)
        )
    });
}
