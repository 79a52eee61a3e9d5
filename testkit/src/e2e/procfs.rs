//! What `/proc` says about the target: per-thread CPU time, block-I/O counters, resident set
//! and the file system a directory is on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// On-CPU time of every thread under a `/proc/.../task` directory, in nanoseconds, by thread id:
/// the first field of each thread's `schedstat`, which the scheduler keeps in nanoseconds (the
/// `utime`/`stime` of `stat` count 10 ms clock ticks, too coarse for a gateway that uses a few
/// milliseconds of CPU a second).
pub(super) fn threads_cpu_ns(task_dir: &Path) -> anyhow::Result<HashMap<u32, u64>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(task_dir)? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A thread may exit between the listing and the read.
        if let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat"))
            && let Some(ns) = text.split_whitespace().next().and_then(|f| f.parse().ok())
        {
            out.insert(tid, ns);
        }
    }
    Ok(out)
}

/// CPU seconds the threads used between two [`threads_cpu_ns`] readings: a thread that started in
/// between counts in full; one that exited in between is missing its share after the first
/// reading, and is counted in the second result.
pub(super) fn cpu_between(from: &HashMap<u32, u64>, to: &HashMap<u32, u64>) -> (f64, usize) {
    let ns: u64 = to
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(from.get(tid).copied().unwrap_or(0)))
        .sum();
    let exited = from.keys().filter(|tid| !to.contains_key(tid)).count();
    (ns as f64 / 1e9, exited)
}

/// The block-I/O counters of a `/proc/.../io` file that matter for disk wear.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct IoCounters {
    pub(super) write_bytes: u64,
    pub(super) cancelled_write_bytes: u64,
}

pub(super) fn read_io(path: &Path) -> anyhow::Result<IoCounters> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no {key} in {}", path.display()))
    };
    Ok(IoCounters {
        write_bytes: field("write_bytes")?,
        cancelled_write_bytes: field("cancelled_write_bytes")?,
    })
}

/// The file system type of the mount that holds `dir` (the longest mount point above it in
/// `/proc/self/mounts`).
pub(super) fn fs_type(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, ty) = (f.next()?, f.next()?, f.next()?);
            // Spaces in mount points are written `\040`.
            let at = PathBuf::from(at.replace("\\040", " "));
            dir.starts_with(&at)
                .then(|| (at.as_os_str().len(), ty.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, ty)| ty)
}

/// A `kB` line of `/proc/<pid>/status`, in MB.
pub(super) fn status_mb(pid: u32, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
