//! External peers the tests talk to (pymodbus, mbpoll): found, or skipped with a message, or a
//! failure when `SMELTWATCH_REQUIRE_PEERS` is set (as `scripts/test.sh` and CI do).

use std::path::PathBuf;

/// Skip (return `None`) or fail, depending on `SMELTWATCH_REQUIRE_PEERS`.
pub fn missing<T>(what: &str) -> Option<T> {
    if std::env::var_os("SMELTWATCH_REQUIRE_PEERS").is_some() {
        panic!("{what} is required (SMELTWATCH_REQUIRE_PEERS is set); run ./scripts/test.sh");
    }
    eprintln!("skipped: {what} not available (./scripts/test.sh installs it)");
    None
}

/// A Python interpreter that can import pymodbus: `SMELTWATCH_PYTHON`, else `./.venv/bin/python`.
pub fn python_with_pymodbus() -> Option<PathBuf> {
    python_with("pymodbus", "a Python with pymodbus")
}

/// A Python interpreter that can import mqtt-spb-wrapper (the lenient Sparkplug decoder), found
/// like [`python_with_pymodbus`].
pub fn python_with_spb_wrapper() -> Option<PathBuf> {
    python_with("mqtt_spb_wrapper", "a Python with mqtt-spb-wrapper")
}

/// A Python interpreter that can import `module`: `SMELTWATCH_PYTHON`, else `./.venv/bin/python`;
/// otherwise [`missing`] with `what`.
pub fn python_with(module: &str, what: &str) -> Option<PathBuf> {
    let candidates = std::env::var_os("SMELTWATCH_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::iter::once(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
        ));
    for python in candidates {
        let ok = std::process::Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(python);
        }
    }
    missing(what)
}

/// Read lines from a child's stdout until `PORT <n>`; returns n.
pub async fn read_port_line(stdout: tokio::process::ChildStdout) -> u16 {
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let wait = async {
        while let Some(line) = lines.next_line().await.expect("reading the peer's stdout") {
            if let Some(port) = line.strip_prefix("PORT ") {
                return port.trim().parse().expect("a port number");
            }
        }
        panic!("the peer exited before printing its port");
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), wait)
        .await
        .expect("the peer did not start within 20 s")
}
