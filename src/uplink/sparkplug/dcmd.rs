//! Device writes asked by DCMD: the requests decoded from a DCMD, their gates, the writes served
//! one after the other through the sources' pollers, and the `write` and `command_dropped`
//! events that report them.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::session::Session;
use super::{DeviceWriteGate, SparkplugUplink};
use crate::codec::sparkplug::{self as spb, MessageType};
use crate::modbus::write::{self, Refusal, WriteFailure};
use crate::model::{Event as WriteEvent, EventKind, EventPhase, Record, Timestamp, Value};

impl Session<'_> {
    pub(super) fn on_dcmd(&mut self, device: &str, payload: &[u8], retained: bool) {
        let up = self.up;
        let payload = match spb::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(uplink = %up.name, device, "undecodable DCMD ignored: {e}");
                return;
            }
        };
        let max_age_ms = up.writes.as_ref().map_or(i64::MAX, |g| {
            i64::try_from(g.max_command_age.as_millis()).unwrap_or(i64::MAX)
        });
        let refusal = if retained {
            Some(Refusal::Retained)
        } else {
            match payload.timestamp.and_then(|t| i64::try_from(t).ok()) {
                None => Some(Refusal::NoTimestamp),
                Some(t) => {
                    let age_ms = Timestamp::now().unix_ms() - t;
                    (age_ms.unsigned_abs() > max_age_ms.unsigned_abs())
                        .then_some(Refusal::Stale { age_ms, max_age_ms })
                }
            }
        };
        let model = up
            .model
            .device_index(device)
            .map(|i| (i, &up.model.devices[i]));
        for m in &payload.metrics {
            // Aliases as the DCMD should carry them (3.0), or names as some hosts send.
            let metric = model.and_then(|(_, d)| {
                let by_alias = m
                    .alias
                    .and_then(|a| d.metrics.iter().position(|x| x.alias == a));
                by_alias.or_else(|| d.metric_index(m.name.as_deref()?))
            });
            let point: Arc<str> = match (model, metric) {
                (Some((_, d)), Some(j)) => d.metrics[j].name.clone(),
                _ => m
                    .name
                    .clone()
                    .or_else(|| m.alias.map(|a| format!("alias {a}")))
                    .unwrap_or_default()
                    .into(),
            };
            let (old, new) = match (model, metric) {
                (Some((i, d)), Some(j)) => (
                    self.node.devices[i].current()[j]
                        .as_ref()
                        .and_then(|r| r.value.clone()),
                    spb::decode_value(d.metrics[j].datatype, m.value.as_ref()),
                ),
                _ => (None, None),
            };
            let request = DcmdWrite {
                device: device.into(),
                point,
                known: metric.is_some(),
                old,
                new,
                topic: format!("{}/{device}", up.topic(MessageType::DCmd, None)),
                refusal: refusal.clone(),
            };
            if let Err(mpsc::error::TrySendError::Full(request)) = self.dcmd.try_send(request) {
                // Refused without touching the device; still reported.
                up.command_dropped(&request.topic, "the device write queue is full");
                let events = up.writes.as_ref().map(|g| g.events.clone());
                let name = up.name.clone();
                tokio::spawn(async move {
                    report(
                        &name,
                        events.as_ref(),
                        &request,
                        &Err(WriteFailure::Refused(Refusal::Busy)),
                    )
                    .await;
                });
            }
        }
    }
}

/// One DCMD metric asking for a write.
#[derive(Debug)]
pub(super) struct DcmdWrite {
    pub(super) device: Arc<str>,
    pub(super) point: Arc<str>,
    /// Whether device and metric exist in the model.
    pub(super) known: bool,
    /// Last value reported for the point.
    pub(super) old: Option<Value>,
    /// The requested value, decoded with the metric's datatype (`None`: unreadable or null).
    pub(super) new: Option<Value>,
    /// The DCMD topic it came on.
    pub(super) topic: String,
    /// Refused before any gate (retained, stale or without a timestamp).
    pub(super) refusal: Option<Refusal>,
}

/// Serve DCMD writes in order until every sender is gone.
pub(super) async fn serve_writes(
    uplink: String,
    gate: Option<DeviceWriteGate>,
    mut requests: mpsc::Receiver<DcmdWrite>,
) {
    while let Some(req) = requests.recv().await {
        let result = attempt(gate.as_ref(), &req).await;
        report(&uplink, gate.as_ref().map(|g| &g.events), &req, &result).await;
    }
}

/// Apply the gates and, when they pass, write through the source's poller.
async fn attempt(gate: Option<&DeviceWriteGate>, req: &DcmdWrite) -> Result<(), WriteFailure> {
    if let Some(r) = &req.refusal {
        return Err(WriteFailure::Refused(r.clone()));
    }
    let Some(gate) = gate else {
        return Err(WriteFailure::Refused(Refusal::WritesDisabled));
    };
    if !gate.enabled {
        return Err(WriteFailure::Refused(Refusal::WritesDisabled));
    }
    let found = gate.writers.device(&req.device).and_then(|(w, d)| {
        let p = d.points.iter().find(|p| p.name == req.point)?;
        Some((w, d, p))
    });
    let (writer, device, point) = match found {
        Some(f) if req.known => f,
        _ => return Err(WriteFailure::Refused(Refusal::UnknownPoint)),
    };
    let Some(value) = &req.new else {
        return Err(WriteFailure::Refused(Refusal::WrongType {
            expected: "a value of the metric's datatype",
        }));
    };
    let data = write::check_write(gate.enabled, point, value).map_err(WriteFailure::Refused)?;
    writer.write(device, point, data).await
}

/// Log a write attempt and put its event on the events stream.
async fn report(
    uplink: &str,
    events: Option<&mpsc::Sender<Record>>,
    req: &DcmdWrite,
    result: &Result<(), WriteFailure>,
) {
    let (outcome, reason) = match result {
        Ok(()) => ("accepted", None),
        Err(WriteFailure::Refused(r)) => ("refused", Some(r.to_string())),
        Err(WriteFailure::Failed(why)) => ("failed", Some(why.clone())),
    };
    let shown = |v: &Option<Value>| {
        v.as_ref()
            .map_or_else(|| "null".to_owned(), Value::to_string)
    };
    let message = match &reason {
        None => format!(
            "write of {}/{} = {} accepted (was {})",
            req.device,
            req.point,
            shown(&req.new),
            shown(&req.old)
        ),
        Some(why) => format!(
            "write of {}/{} = {} {outcome}: {why}",
            req.device,
            req.point,
            shown(&req.new)
        ),
    };
    if result.is_ok() {
        tracing::info!(uplink, "{message}");
    } else {
        tracing::warn!(uplink, "{message}");
    }
    let mut attributes: Vec<(Arc<str>, Value)> = vec![
        ("outcome".into(), Value::Text(outcome.into())),
        (
            "by".into(),
            Value::Text(format!("sparkplug DCMD on uplink {uplink}")),
        ),
        ("topic".into(), Value::Text(req.topic.clone())),
    ];
    if let Some(why) = reason {
        attributes.push(("reason".into(), Value::Text(why)));
    }
    if let Some(v) = &req.old {
        attributes.push(("old_value".into(), v.clone()));
    }
    if let Some(v) = &req.new {
        attributes.push(("new_value".into(), v.clone()));
    }
    let event = WriteEvent {
        kind: EventKind::Write,
        subject: format!("{}/{}", req.device, req.point).into(),
        phase: EventPhase::Instant,
        ts: Timestamp::now(),
        attributes,
        message,
    };
    if let Some(events) = events
        && events.send(Record::Event(event)).await.is_err()
    {
        tracing::warn!(
            uplink,
            "the events stream is closed: write event not recorded"
        );
    }
}

impl SparkplugUplink {
    /// Count, log and report (as a `command_dropped` event, with a [`DeviceWriteGate`]) a command
    /// that was dropped on a full queue.
    pub(super) fn command_dropped(&self, topic: &str, why: &str) {
        self.status_tx.send_modify(|s| s.commands_dropped += 1);
        let message = format!("command on {topic} dropped: {why}");
        tracing::warn!(uplink = %self.name, "{message}");
        let Some(events) = self.writes.as_ref().map(|g| g.events.clone()) else {
            return;
        };
        let event = WriteEvent {
            kind: EventKind::CommandDropped,
            subject: self.name.as_str().into(),
            phase: EventPhase::Instant,
            ts: Timestamp::now(),
            attributes: vec![
                ("topic".into(), Value::Text(topic.to_owned())),
                ("reason".into(), Value::Text(why.to_owned())),
            ],
            message,
        };
        // Not awaited here: the caller is the event loop (or the session) and must not wait for
        // the events stream.
        let name = self.name.clone();
        tokio::spawn(async move {
            if events.send(Record::Event(event)).await.is_err() {
                tracing::warn!(
                    uplink = %name,
                    "the events stream is closed: command_dropped event not recorded"
                );
            }
        });
    }
}
