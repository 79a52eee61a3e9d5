//! The reference loop: one thread polling every endpoint with a bare tokio-modbus client and
//! publishing the same JSON through a bare rumqttc client, the limit the agent is compared to.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, PublishOptions, QoS};
use smeltwatch::model::Timestamp;
use tokio_util::sync::CancellationToken;

use super::plant::Plant;
use super::{Params, PollSchedule, SITE};
use crate::mosquitto::MAX_PACKET;

pub(super) struct Reference {
    pub(super) thread: std::thread::JoinHandle<u64>,
    /// `/proc/<pid>/task/<tid>` of the reference thread.
    pub(super) thread_dir: PathBuf,
    pub(super) stop: CancellationToken,
}

/// The envelope of one reference batch.
#[derive(Clone, Copy)]
pub(super) struct BatchHead<'a> {
    pub(super) seq: u64,
    pub(super) source: &'a str,
    pub(super) device: &'a str,
    pub(super) unit_id: u8,
    pub(super) interval_ms: u64,
    pub(super) scheduled: Timestamp,
}

/// The JSON batch the agent would publish for these registers (same fields, same order).
pub(super) fn encode_reference(
    buf: &mut Vec<u8>,
    head: &BatchHead<'_>,
    ts: Timestamp,
    words: &[u16],
) {
    let BatchHead {
        seq,
        source,
        device,
        unit_id,
        interval_ms,
        scheduled,
    } = *head;
    buf.clear();
    let ts_text = ts.to_rfc3339();
    let _ = write!(
        buf,
        "{{\"site\":\"{SITE}\",\"stream\":\"live\",\"seq\":{seq},\"source\":\"{source}\",\
         \"device\":\"{device}\",\"unit_id\":{unit_id},\"poll_interval_ms\":{interval_ms},\
         \"scheduled\":\"{}\",\"readings\":[",
        scheduled.to_rfc3339()
    );
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        let _ = write!(
            buf,
            "{{\"point\":\"r{i:03}\",\"value\":{w},\"unit\":\"\",\"quality\":\"good\",\
             \"ts\":\"{ts_text}\",\"ts_ms\":{}}}",
            ts.unix_ms()
        );
    }
    buf.extend_from_slice(b"]}");
}

pub(super) fn start_reference(p: &Params, plant: &Plant, broker: u16) -> anyhow::Result<Reference> {
    let endpoints = plant.endpoints.clone();
    let registers = p.registers;
    let interval = p.interval;
    let schedule = p.schedule;
    let stop = CancellationToken::new();
    let thread_stop = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("reference".into())
        .spawn(move || {
            // `/proc/thread-self` is `<pid>/task/<tid>`: this thread alone.
            let me = std::fs::read_link("/proc/thread-self")
                .map(|p| Path::new("/proc").join(p))
                .unwrap_or_default();
            let _ = tx.send(me);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("reference runtime");
            rt.block_on(reference_loop(
                endpoints,
                registers,
                interval,
                schedule,
                broker,
                thread_stop,
            ))
        })?;
    let thread_dir = rx.recv()?;
    anyhow::ensure!(
        !thread_dir.as_os_str().is_empty(),
        "cannot find the reference thread's /proc entry"
    );
    Ok(Reference {
        thread,
        thread_dir,
        stop,
    })
}

/// Returns the number of skipped (late) ticks. Each endpoint starts where `schedule` starts the
/// agent's source on it.
pub(super) async fn reference_loop(
    endpoints: Vec<(SocketAddr, String, Vec<String>)>,
    registers: u16,
    interval: Duration,
    schedule: PollSchedule,
    broker: u16,
    stop: CancellationToken,
) -> u64 {
    let client = connect_client(broker, &stop);
    let late = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    let counts: Vec<usize> = endpoints.iter().map(|(_, _, d)| d.len()).collect();
    for (i, (addr, source, devices)) in endpoints.into_iter().enumerate() {
        let offset = schedule.offset(i, &counts, interval);
        tasks.push(tokio::spawn(poll_endpoint(EndpointLoop {
            addr,
            source,
            devices,
            registers,
            interval,
            offset,
            client: client.clone(),
            stop: stop.clone(),
            late: late.clone(),
        })));
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = client.disconnect().await;
    late.load(std::sync::atomic::Ordering::Relaxed)
}

/// The reference's one MQTT client, its event loop polled by a task until `stop`.
fn connect_client(broker: u16, stop: &CancellationToken) -> AsyncClient {
    let mut o = MqttOptions::new("bench-reference", ("127.0.0.1", broker));
    o.set_keep_alive(30)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(64);
    let (client, mut el) = AsyncClient::builder(o).capacity(72).build();
    let el_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = el_stop.cancelled() => return,
                r = el.poll() => if r.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    client
}

/// One endpoint's share of the reference loop.
struct EndpointLoop {
    addr: SocketAddr,
    source: String,
    /// Device k answers on unit id k + 1.
    devices: Vec<String>,
    registers: u16,
    interval: Duration,
    /// Delay of the first tick after the start.
    offset: Duration,
    client: AsyncClient,
    stop: CancellationToken,
    /// Skipped ticks, shared by every endpoint.
    late: Arc<std::sync::atomic::AtomicU64>,
}

/// Polls every device of one endpoint each tick and publishes each answer as a batch, until
/// `stop` or a failed publish.
async fn poll_endpoint(e: EndpointLoop) {
    use tokio_modbus::prelude::*;
    let stream = tokio::net::TcpStream::connect(e.addr)
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut ctx = tokio_modbus::client::tcp::attach(stream);
    let start = tokio::time::Instant::now() + e.offset;
    let wall = Timestamp(Timestamp::now().0 + e.offset.as_millis() as i64);
    let mut tick = tokio::time::interval_at(start, e.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let interval_ms = e.interval.as_millis() as u64;
    let mut expected_next = start;
    let mut seq = 0u64;
    let mut buf = Vec::with_capacity(128 * usize::from(e.registers) + 256);
    loop {
        let at = tokio::select! {
            _ = e.stop.cancelled() => return,
            at = tick.tick() => at,
        };
        if at > expected_next {
            let skipped = (at - expected_next).as_millis() as u64 / interval_ms.max(1);
            e.late
                .fetch_add(skipped, std::sync::atomic::Ordering::Relaxed);
        }
        expected_next = at + e.interval;
        let scheduled = Timestamp(wall.0 + (at - start).as_millis() as i64);
        for (k, device) in e.devices.iter().enumerate() {
            ctx.set_slave(Slave(k as u8 + 1));
            let Ok(Ok(words)) = ctx.read_holding_registers(0, e.registers).await else {
                continue;
            };
            let ts = Timestamp::now();
            seq += 1;
            let head = BatchHead {
                seq,
                source: &e.source,
                device,
                unit_id: k as u8 + 1,
                interval_ms,
                scheduled,
            };
            encode_reference(&mut buf, &head, ts, &words);
            let topic = format!("smeltwatch/{SITE}/live/{}/{device}", e.source);
            if e.client
                .publish(topic, buf.clone(), PublishOptions::new(QoS::AtLeastOnce))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}
