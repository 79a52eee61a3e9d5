//! `mbpoll` (Debian package `mbpoll`), an independent Modbus master, as a test peer.

use std::net::SocketAddr;
use std::process::Command;

/// Whether the `mbpoll` binary can be run.
pub fn available() -> bool {
    Command::new("mbpoll")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stdout.is_empty() || !o.stderr.is_empty())
}

/// One poll of `count` values from 0-based `address` of unit `unit` at `addr`, with the data
/// type `kind` as mbpoll spells it (`3:hex`, `4:hex`, `3:float`, `4:float`) and any extra flags
/// (`-B` for big-endian word order). Returns `(address, value text)` pairs in output order.
pub fn poll(
    addr: SocketAddr,
    unit: u8,
    kind: &str,
    address: u16,
    count: u16,
    extra: &[&str],
) -> Result<Vec<(u16, String)>, String> {
    let output = Command::new("mbpoll")
        .args(["-m", "tcp", "-1", "-0", "-o", "2"])
        .args(["-a", &unit.to_string()])
        .args(["-t", kind])
        .args(["-r", &address.to_string()])
        .args(["-c", &count.to_string()])
        .args(["-p", &addr.port().to_string()])
        .args(extra)
        .arg(addr.ip().to_string())
        .output()
        .map_err(|e| format!("cannot run mbpoll: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "mbpoll failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    // Value lines look like `[12]: \t0x4081` (addresses as requested, 0-based with -0).
    let values = stdout
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix('[')?;
            let (addr, value) = rest.split_once("]:")?;
            Some((addr.trim().parse().ok()?, value.trim().to_string()))
        })
        .collect();
    Ok(values)
}
