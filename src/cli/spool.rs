//! `smeltwatch spool …`: reads an uplink's spool beside the running agent (stats, export, dead
//! letters) and flags dead letters for re-queueing.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use super::{SpoolCommand, load_or_report};
use crate::app;
use crate::spool::Spool;

/// Runs one `spool` action.
pub(super) fn spool_command(action: SpoolCommand) -> anyhow::Result<ExitCode> {
    match action {
        SpoolCommand::Stats { config } => stats(&config),
        SpoolCommand::Export { config, uplink } => export(&config, uplink.as_deref()),
        SpoolCommand::DeadLetters { config, uplink } => dead_letters(&config, uplink.as_deref()),
        SpoolCommand::Requeue {
            config,
            uplink,
            ids,
            all,
        } => requeue(&config, uplink.as_deref(), &ids, all),
    }
}

/// `spool stats`: one line per uplink, or a note that its spool does not exist yet.
fn stats(config: &Path) -> anyhow::Result<ExitCode> {
    let cfg = load_or_report(config)?;
    for uplink in &cfg.uplinks {
        let path = app::spool_path(&cfg, &uplink.name);
        if !path.exists() {
            println!("{:<12} no spool yet ({})", uplink.name, path.display());
            continue;
        }
        let spool = Spool::open(&path, &uplink.spool)?;
        let s = spool.stats()?;
        let oldest = s
            .oldest
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "-".into());
        let per: Vec<String> = s
            .per_stream
            .iter()
            .map(|(st, n)| format!("{}={n}", st.as_str()))
            .collect();
        println!(
            "{:<12} {} records, {} bytes, oldest {oldest}, by stream [{}], dropped {}, dead letters {}  ({})",
            uplink.name,
            s.records,
            s.bytes,
            per.join(" "),
            s.dropped,
            s.dead_letters,
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `spool export`: every waiting record as a JSON line, read in pages of 1000, oldest first.
fn export(config: &Path, uplink: Option<&str>) -> anyhow::Result<ExitCode> {
    let spool = open_uplink_spool(config, uplink)?;
    let mut out = std::io::stdout().lock();
    let mut after = 0;
    loop {
        let batch = spool.read_after(after, 1000)?;
        let Some(last) = batch.last() else { break };
        after = last.id;
        for r in &batch {
            let body = crate::codec::body::to_json(&r.body)
                .unwrap_or_else(|e| serde_json::json!({ "undecodable": e.to_string() }));
            let line = serde_json::json!({
                "id": r.id,
                "stream": r.stream.as_str(),
                "seq": r.seq,
                "topic": r.topic,
                "created": r.created.to_rfc3339(),
                "attempts": r.attempts,
                "record": body,
            });
            writeln!(out, "{line}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `spool dead-letters`: every record set aside as a JSON line, oldest first.
fn dead_letters(config: &Path, uplink: Option<&str>) -> anyhow::Result<ExitCode> {
    let spool = open_uplink_spool(config, uplink)?;
    let mut out = std::io::stdout().lock();
    for d in spool.dead_letters()? {
        let body = crate::codec::body::to_json(&d.body)
            .unwrap_or_else(|e| serde_json::json!({ "undecodable": e.to_string() }));
        let line = serde_json::json!({
            "id": d.id,
            "stream": d.stream.as_str(),
            "seq": d.seq,
            "topic": d.topic,
            "created": d.created.to_rfc3339(),
            "attempts": d.attempts,
            "reason": d.reason,
            "dead_at": d.dead_at.to_rfc3339(),
            "requeue": d.requeue,
            "record": body,
        });
        writeln!(out, "{line}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `spool requeue`: flags the dead letters `ids` (or all of them); an id that names no dead
/// letter is an error that still reports how many were flagged.
fn requeue(
    config: &Path,
    uplink: Option<&str>,
    ids: &[i64],
    all: bool,
) -> anyhow::Result<ExitCode> {
    let mut spool = open_uplink_spool(config, uplink)?;
    let flagged = spool.request_requeue((!all).then_some(ids))?;
    if !all && flagged < ids.len() as u64 {
        let known: Vec<i64> = spool.dead_letters()?.iter().map(|d| d.id).collect();
        let unknown: Vec<String> = ids
            .iter()
            .filter(|id| !known.contains(id))
            .map(i64::to_string)
            .collect();
        anyhow::bail!(
            "no dead letter with id {}; {flagged} flagged for re-queueing",
            unknown.join(", ")
        );
    }
    println!(
        "{flagged} dead letters flagged; the agent sends them again on its next connection (or within seconds while connected)"
    );
    Ok(ExitCode::SUCCESS)
}

/// The spool of `uplink` (default: the first uplink) of the configuration at `config`.
fn open_uplink_spool(config: &Path, uplink: Option<&str>) -> anyhow::Result<Spool> {
    let cfg = load_or_report(config)?;
    let up = match uplink {
        Some(name) => cfg
            .uplinks
            .iter()
            .find(|u| u.name == name)
            .with_context(|| format!("no uplink named {name:?}"))?,
        None => cfg
            .uplinks
            .first()
            .context("the configuration has no uplink")?,
    };
    let path = app::spool_path(&cfg, &up.name);
    anyhow::ensure!(path.exists(), "no spool at {}", path.display());
    Ok(Spool::open(&path, &up.spool)?)
}
