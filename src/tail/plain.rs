//! `tail --plain`: one line per message, for pipes and logs.
//!
//! Every line starts with the time the message describes (RFC 3339, UTC; `-` for the status,
//! which has none), then the site (or `spB group/edge`), then what it is (`…` elides the rest):
//!
//! ```text
//! 2026-11-28T03:24:13.012Z demo-al-01 live#17 potline1/pot_003 cell_voltage_v=4.061V in_service=true …
//! 2026-11-28T03:25:00.000Z demo-al-01 metrics#3 potline line_current_ka=400.2kA production_today_t=1.21t …
//! 2026-11-28T03:25:00.000Z demo-al-01 metrics#4 derived line_power_kw=161300kW aux_power_kw=null[comm_fail]
//! 2026-11-28T03:24:40.120Z demo-al-01 events#5 anode_effect start potline1/pot_017: anode effect started on potline1/pot_017
//! 2026-11-28T03:25:00.000Z demo-al-01 emissions#9 gtc1_stack so2_mg_m3 minute valid=true samples=6/6 avg=12.3mg/m3 …
//! - demo-al-01 status online since 2026-11-28T03:24:13.000Z version 0.1.0 (smeltwatch/demo-al-01/status)
//! 2026-11-28T03:24:13.000Z spB demo/gw1 DDATA pot_003 seq=4 cell_voltage_v=4.061
//! - cleared smeltwatch/demo-al-01/status
//! ```
//!
//! A value whose quality is not `good` is followed by its quality in brackets
//! (`cell_voltage_v=null[comm_fail]`); records replayed after an outage end with `historical`.
//! Metrics print their labels other than `line` before the name (`day:capacity_utilisation_pct`).

use std::fmt::Write as _;

use crate::model::{EventPhase, Quality, Reading, Record, Value};

use super::decode::{Message, SparkplugMessage};
use super::state::record_ts;

/// The line for one message (no trailing newline).
pub fn line(msg: &Message) -> String {
    let mut out = String::new();
    match msg {
        Message::Record {
            site,
            stream,
            seq,
            historical,
            record,
        } => {
            let _ = write!(
                out,
                "{} {site} {}#{seq} ",
                record_ts(record).to_rfc3339(),
                stream.as_str()
            );
            record_body(&mut out, record);
            if *historical {
                out.push_str(" historical");
            }
        }
        Message::Status { topic, status } => {
            let _ = write!(out, "- {} status {}", status.site, status.state);
            if let Some(since) = &status.since {
                let _ = write!(out, " since {since}");
            }
            if let Some(v) = &status.version {
                let _ = write!(out, " version {v}");
            }
            let _ = write!(out, " ({topic})");
        }
        Message::Sparkplug(s) => sparkplug(&mut out, s),
        Message::Cleared { topic } => {
            let _ = write!(out, "- cleared {topic}");
        }
    }
    out
}

fn record_body(out: &mut String, record: &Record) {
    match record {
        Record::Batch(b) => {
            let _ = write!(out, "{}/{}", b.source, b.device);
            readings(out, &b.readings);
        }
        Record::Metrics(m) => {
            let _ = write!(out, "{}", m.calc);
            for metric in &m.metrics {
                out.push(' ');
                for (k, v) in &metric.labels {
                    if &**k != "line" {
                        let _ = write!(out, "{v}:");
                    }
                }
                let _ = write!(out, "{}=", metric.name);
                match metric.value {
                    Some(v) => {
                        let _ = write!(out, "{v}{}", metric.unit);
                    }
                    None => out.push_str("null"),
                }
                quality(out, metric.quality);
            }
        }
        Record::Event(e) => {
            let phase = match e.phase {
                EventPhase::Start => " start",
                EventPhase::End => " end",
                EventPhase::Instant => "",
            };
            let _ = write!(out, "{}{phase} {}: {}", e.kind, e.subject, e.message);
        }
        Record::Aggregate(a) => {
            let _ = write!(
                out,
                "{} {} {} valid={} samples={}/{}",
                a.subject,
                a.quantity,
                a.period.as_str(),
                a.valid,
                a.samples,
                a.expected
            );
            for (name, v) in [("avg", a.avg), ("min", a.min), ("max", a.max)] {
                if let Some(v) = v {
                    let _ = write!(out, " {name}={v}{}", a.unit);
                }
            }
            if let Some(t) = a.total {
                let _ = write!(out, " total={t}{}", a.total_unit.as_deref().unwrap_or(""));
            }
            quality(out, a.quality);
        }
    }
}

fn readings(out: &mut String, readings: &[Reading]) {
    for r in readings {
        let _ = write!(out, " {}=", r.point);
        match &r.value {
            Some(Value::Float(f)) => {
                let _ = write!(out, "{f}{}", r.unit);
            }
            Some(v) => {
                let _ = write!(out, "{v}{}", r.unit);
            }
            None => out.push_str("null"),
        }
        quality(out, r.quality);
    }
}

fn quality(out: &mut String, q: Quality) {
    if !q.is_good() {
        let _ = write!(out, "[{q}]");
    }
}

fn sparkplug(out: &mut String, s: &SparkplugMessage) {
    let ts = s.ts.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339());
    let _ = write!(out, "{ts} spB {}/{} {}", s.group, s.edge, s.kind.as_str());
    if let Some(d) = &s.device {
        let _ = write!(out, " {d}");
    }
    if let Some(seq) = s.seq {
        let _ = write!(out, " seq={seq}");
    }
    if let Some(bd) = s.bd_seq {
        let _ = write!(out, " bdSeq={bd}");
    }
    if let Some(b) = &s.batch {
        readings(out, &b.readings);
    }
    if s.unresolved > 0 {
        let _ = write!(out, " unresolved_aliases={}", s.unresolved);
    }
    if s.historical {
        out.push_str(" historical");
    }
}
