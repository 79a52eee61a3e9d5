//! The counting subscriber: an MQTT client that decodes every batch the target publishes and
//! counts, per device and scheduled cycle, what arrived, and the view of a time window over it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;
use smeltwatch::model::{Quality, Reading, ReadingBatch, Record, Timestamp, Value};

use super::{SITE, now_ms};
use crate::mosquitto::MAX_PACKET;

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Cycle {
    pub(super) readings: u16,
    pub(super) good: u16,
    pub(super) copies: u16,
    pub(super) latency_ms: i64,
    pub(super) historical: bool,
    /// MQTT payload size of the first copy.
    pub(super) payload_bytes: u32,
    /// Spool body size of the first copy ([`spool_body_len`]).
    pub(super) body_bytes: u32,
}

#[derive(Debug, Default)]
pub(super) struct Seen {
    /// device → scheduled ms → first arrival.
    pub(super) devices: HashMap<String, HashMap<i64, Cycle>>,
    pub(super) undecodable: u64,
    pub(super) hist_records: u64,
    pub(super) hist_points: u64,
    pub(super) hist_first_ms: Option<i64>,
    pub(super) hist_last_ms: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct Msg<'a> {
    #[serde(borrow)]
    pub(super) source: &'a str,
    #[serde(borrow)]
    pub(super) device: &'a str,
    pub(super) unit_id: u8,
    pub(super) poll_interval_ms: u64,
    #[serde(borrow)]
    pub(super) scheduled: &'a str,
    #[serde(default)]
    pub(super) historical: bool,
    #[serde(borrow)]
    pub(super) readings: Vec<Rd<'a>>,
}

#[derive(Deserialize)]
pub(super) struct Rd<'a> {
    #[serde(borrow)]
    pub(super) point: &'a str,
    pub(super) value: Option<Value>,
    #[serde(borrow)]
    pub(super) unit: &'a str,
    pub(super) quality: Quality,
    pub(super) ts_ms: i64,
}

/// The size of the spool body the agent stores for this batch: the record rebuilt from the
/// message and encoded by the agent's own code (`codec::body`), since `/metrics` has no
/// appended-bytes counter. Exact for this plant: every field of the body is in the JSON, and every
/// point is a `u16`, which the agent holds as an unsigned integer (JSON cannot tell it from a
/// signed one, and protobuf encodes the two differently).
pub(super) fn spool_body_len(m: Msg<'_>, scheduled_ms: i64) -> usize {
    let batch = ReadingBatch {
        source: m.source.into(),
        device: m.device.into(),
        unit_id: m.unit_id,
        poll_interval_ms: m.poll_interval_ms,
        scheduled: Timestamp(scheduled_ms),
        readings: m
            .readings
            .into_iter()
            .map(|r| Reading {
                point: r.point.into(),
                value: match r.value {
                    Some(Value::Int(i)) if i >= 0 => Some(Value::UInt(i as u64)),
                    v => v,
                },
                unit: r.unit.into(),
                quality: r.quality,
                ts: Timestamp(r.ts_ms),
            })
            .collect(),
    };
    smeltwatch::codec::body::encode(&Record::Batch(batch)).len()
}

/// A replayed batch as the counter needs it: its cycle, readings and their quality, with values,
/// points and units skipped. After an outage the counter shares the machine with the agent while
/// it drains tens of thousands of batches a second, and a full parse of each (every value into a
/// [`Value`], the body rebuilt to size it) cost more CPU than the agent's own replay; body sizes
/// are reported for the measured window, which holds fresh batches only.
#[derive(Deserialize)]
struct Replayed<'a> {
    #[serde(borrow)]
    device: &'a str,
    #[serde(borrow)]
    scheduled: &'a str,
    readings: Vec<ReplayedReading>,
}

#[derive(Deserialize)]
struct ReplayedReading {
    value: Option<serde::de::IgnoredAny>,
    quality: Quality,
    ts_ms: i64,
}

/// Whether a payload is a replayed batch: `historical` is written only when true, in the header
/// before the device and the readings.
fn is_replayed(payload: &[u8]) -> bool {
    const FLAG: &[u8] = b"\"historical\":true";
    payload[..payload.len().min(256)]
        .windows(FLAG.len())
        .any(|w| w == FLAG)
}

/// A batch as the counter parsed it.
enum Parsed<'a> {
    /// Fresh: in full, to size its spool body.
    Fresh(Msg<'a>),
    /// Replayed: light (see [`Replayed`]).
    Replayed(Replayed<'a>),
}

impl Seen {
    fn record(&mut self, payload: &[u8], arrival_ms: i64) {
        let parsed = if is_replayed(payload) {
            serde_json::from_slice(payload).ok().map(Parsed::Replayed)
        } else {
            serde_json::from_slice(payload).ok().map(Parsed::Fresh)
        };
        let Some(parsed) = parsed else {
            self.undecodable += 1;
            return;
        };
        let (device, scheduled, historical) = match &parsed {
            Parsed::Fresh(m) => (m.device, m.scheduled, m.historical),
            Parsed::Replayed(m) => (m.device, m.scheduled, true),
        };
        let Some(sched) = scheduled_ms(scheduled) else {
            self.undecodable += 1;
            return;
        };
        let arrived = match &parsed {
            Parsed::Fresh(m) => {
                let readings = m.readings.iter();
                let readings = readings.map(|r| (r.ts_ms, r.quality, r.value.is_some()));
                Arrived::of(device, sched, historical, readings, payload.len())
            }
            Parsed::Replayed(m) => {
                let readings = m.readings.iter();
                let readings = readings.map(|r| (r.ts_ms, r.quality, r.value.is_some()));
                Arrived::of(device, sched, historical, readings, payload.len())
            }
        };
        self.count(arrived, arrival_ms, || match parsed {
            Parsed::Fresh(m) => spool_body_len(m, sched),
            Parsed::Replayed(_) => 0,
        });
    }

    /// Count one arrival: the first copy of a cycle is recorded (with its spool body size, from
    /// `body_len`), later ones only counted as copies.
    fn count(&mut self, a: Arrived<'_>, arrival_ms: i64, body_len: impl FnOnce() -> usize) {
        if a.historical {
            self.hist_records += 1;
            self.hist_points += a.readings as u64;
            self.hist_first_ms.get_or_insert(arrival_ms);
            self.hist_last_ms = Some(arrival_ms);
        }
        let cycles = match self.devices.get_mut(a.device) {
            Some(c) => c,
            None => self.devices.entry(a.device.to_owned()).or_default(),
        };
        let c = cycles.entry(a.sched).or_default();
        if c.copies == 0 {
            *c = Cycle {
                readings: a.readings as u16,
                good: a.good as u16,
                copies: 1,
                latency_ms: arrival_ms - a.acquired,
                historical: a.historical,
                payload_bytes: u32::try_from(a.payload_bytes).unwrap_or(u32::MAX),
                body_bytes: u32::try_from(body_len()).unwrap_or(u32::MAX),
            };
        } else {
            c.copies += 1;
        }
    }
}

/// What the counter keeps of one arrived batch.
struct Arrived<'a> {
    device: &'a str,
    sched: i64,
    historical: bool,
    acquired: i64,
    readings: usize,
    good: usize,
    payload_bytes: usize,
}

impl<'a> Arrived<'a> {
    /// `readings`: each reading's acquisition time, quality and whether it has a value.
    fn of(
        device: &'a str,
        sched: i64,
        historical: bool,
        readings: impl Iterator<Item = (i64, Quality, bool)>,
        payload_bytes: usize,
    ) -> Self {
        let (mut count, mut good, mut acquired) = (0, 0, None::<i64>);
        for (ts_ms, quality, has_value) in readings {
            count += 1;
            good += usize::from(quality == Quality::Good && has_value);
            acquired = Some(acquired.map_or(ts_ms, |a| a.max(ts_ms)));
        }
        Arrived {
            device,
            sched,
            historical,
            acquired: acquired.unwrap_or(sched),
            readings: count,
            good,
            payload_bytes,
        }
    }
}

/// A batch's `scheduled` (RFC 3339) in Unix milliseconds.
fn scheduled_ms(text: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339(text).ok()?;
    Some(
        at.duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    )
}

/// Subscribe to every live batch of the site; returns once subscribed.
pub(super) async fn start_subscriber(port: u16) -> anyhow::Result<(AsyncClient, Arc<Mutex<Seen>>)> {
    let mut o = MqttOptions::new(
        format!("bench-counter-{}", fastrand::u32(..)),
        ("127.0.0.1", port),
    );
    // Longer than any outage: a frozen broker must not make the counter reconnect (and miss what
    // the broker forwards right after it thaws).
    o.set_keep_alive(u16::MAX)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_clean_session(true);
    let (client, mut el) = AsyncClient::builder(o).capacity(64).build();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(1);
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let arrival = now_ms();
                    s.lock().expect("counter lock").record(&p.payload, arrival);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.try_send(());
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::RequestsDone) => return,
                Err(e) => {
                    eprintln!("bench: counting subscriber: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    client
        .subscribe(format!("smeltwatch/{SITE}/live/#"), QoS::AtLeastOnce)
        .await?;
    tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
        .await
        .map_err(|_| anyhow::anyhow!("no SUBACK within 10 s"))?;
    Ok((client, seen))
}

/// What the subscriber saw of the cycles scheduled in `[from, to)`.
#[derive(Debug, Default)]
pub(super) struct WindowView {
    pub(super) expected_cycles: u64,
    pub(super) received: u64,
    pub(super) delivered_points: u64,
    pub(super) incomplete: u64,
    pub(super) duplicates: u64,
    pub(super) latencies: Vec<i64>,
    /// Payload bytes of the received cycles (first copies).
    pub(super) payload_bytes: u64,
    /// Their spool body bytes.
    pub(super) body_bytes: u64,
}

pub(super) fn window_view(
    seen: &Seen,
    devices: &[String],
    registers: u16,
    interval_ms: i64,
    from: i64,
    to: i64,
    fresh_only: bool,
) -> WindowView {
    let mut v = WindowView::default();
    for d in devices {
        let cycles = seen.devices.get(d);
        // The device's grid: its poller's start plus multiples of the interval.
        let phase = cycles
            .and_then(|c| c.keys().next())
            .map(|k| k.rem_euclid(interval_ms))
            .unwrap_or(from.rem_euclid(interval_ms));
        let mut s = from - (from - phase).rem_euclid(interval_ms);
        if s < from {
            s += interval_ms;
        }
        while s < to {
            v.expected_cycles += 1;
            if let Some(c) = cycles.and_then(|c| c.get(&s)) {
                v.received += 1;
                v.delivered_points += u64::from(c.good);
                v.payload_bytes += u64::from(c.payload_bytes);
                v.body_bytes += u64::from(c.body_bytes);
                if c.readings != registers || c.good != registers {
                    v.incomplete += 1;
                }
                if c.copies > 1 {
                    v.duplicates += 1;
                }
                if !(fresh_only && c.historical) {
                    v.latencies.push(c.latency_ms);
                }
            }
            s += interval_ms;
        }
    }
    v
}
