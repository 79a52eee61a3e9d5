//! Acquisition hot path: planning a 400-pot potline and decoding register values.
//!
//! Run: `cargo bench --bench acquisition -- --warm-up-time 1 --measurement-time 3`.
//! Throughput is reported in points (planned or decoded) per second on one core.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use smeltwatch::config::model::{
    Area, ByteOrder, DataType, DeviceConfig, HostPort, PointConfig, SourceConfig, Transport,
};
use smeltwatch::modbus::decode::{RequestData, apply_request, decode_registers};
use smeltwatch::modbus::plan::{plan_device, plan_source};
use smeltwatch::model::Timestamp;

const POTS: usize = 400;
/// Pots per gateway connection (unit ids stay within 1–247).
const POTS_PER_SOURCE: usize = 200;

fn point(
    name: &str,
    area: Area,
    address: u16,
    data_type: DataType,
    order: ByteOrder,
    poll_s: u64,
) -> PointConfig {
    PointConfig {
        name: name.into(),
        area,
        address,
        data_type,
        byte_order: order,
        scale: 1.0,
        offset: 0.0,
        unit: "".into(),
        poll_interval: Duration::from_secs(poll_s),
        range: None,
        writable: false,
    }
}

/// One pot control unit: 13 points in three poll classes, with gaps between register groups.
fn pot_points() -> Vec<PointConfig> {
    use Area::*;
    use ByteOrder::*;
    use DataType::*;
    let mut beam = point("anode_beam_mm", Holding, 4, I16, Abcd, 1);
    beam.scale = 0.1;
    let mut bath = point("bath_temp_c", Holding, 10, I16, Abcd, 10);
    bath.scale = 0.1;
    bath.range = Some((900.0, 1000.0));
    vec![
        point("cell_voltage_v", Holding, 0, F32, Abcd, 1),
        point("line_current_ka", Holding, 2, F32, Cdab, 1),
        beam,
        point("status", Holding, 5, U16, Abcd, 1),
        point("tapping", Holding, 6, Bool { bit: Some(3) }, Abcd, 1),
        point("resistance_uohm", Holding, 30, F32, Abcd, 1),
        bath,
        point("feeder_shots", Holding, 11, U32, Abcd, 10),
        point("energy_kwh", Holding, 20, U64, Abcd, 60),
        point("pot_tag", Holding, 24, Ascii { registers: 4 }, Abcd, 60),
        point("feeder_on", Coil, 0, Bool { bit: None }, Abcd, 1),
        point("heater_on", Coil, 2, Bool { bit: None }, Abcd, 1),
        point(
            "anode_effect",
            DiscreteInput,
            0,
            Bool { bit: None },
            Abcd,
            1,
        ),
    ]
}

fn pot(index: usize) -> DeviceConfig {
    DeviceConfig {
        name: Arc::from(format!("pot_{:03}", index + 1)),
        unit_id: (index % POTS_PER_SOURCE + 1) as u8,
        max_registers_per_read: 125,
        max_bits_per_read: 2000,
        max_gap_registers: 10,
        single_point_reads: false,
        labels: Vec::new(),
        points: pot_points(),
    }
}

fn potline() -> Vec<SourceConfig> {
    (0..POTS / POTS_PER_SOURCE)
        .map(|s| SourceConfig {
            name: Arc::from(format!("potline1_gw{}", s + 1)),
            transport: Transport::Tcp {
                addr: HostPort {
                    host: format!("10.0.1.{}", s + 1),
                    port: 502,
                },
            },
            timeout: Duration::from_millis(500),
            inter_request_gap: Duration::ZERO,
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            breaker_failures: 3,
            breaker_probe_interval: Duration::from_secs(30),
            poll_offset: Duration::ZERO,
            devices: (0..POTS_PER_SOURCE)
                .map(|d| pot(s * POTS_PER_SOURCE + d))
                .collect(),
        })
        .collect()
}

fn bench_plan(c: &mut Criterion) {
    let sources = potline();
    let points: usize = sources
        .iter()
        .flat_map(|s| &s.devices)
        .map(|d| d.points.len())
        .sum();
    let mut group = c.benchmark_group("plan");
    group.throughput(Throughput::Elements(points as u64));
    group.bench_function("potline_400_pots", |b| {
        b.iter(|| {
            let plans: usize = black_box(&sources)
                .iter()
                .map(|s| plan_source(s).len())
                .sum();
            black_box(plans)
        })
    });
    group.finish();
}

fn bench_decode(c: &mut Criterion) {
    const N: usize = 1024;
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(N as u64));
    // Deterministic, varied register contents (an LCG), enough for N 2-register points.
    let mut state = 0x2545_F491_u32;
    let words: Vec<u16> = (0..2 * N)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 16) as u16
        })
        .collect();

    let mut scaled_i16 = point("i", Area::Holding, 0, DataType::I16, ByteOrder::Abcd, 1);
    scaled_i16.scale = 0.1;
    scaled_i16.offset = -5.0;
    let cases = [
        (
            "f32_abcd",
            point("f", Area::Holding, 0, DataType::F32, ByteOrder::Abcd, 1),
        ),
        (
            "f32_cdab",
            point("f", Area::Holding, 0, DataType::F32, ByteOrder::Cdab, 1),
        ),
        (
            "u32_abcd",
            point("u", Area::Holding, 0, DataType::U32, ByteOrder::Abcd, 1),
        ),
        ("i16_scaled", scaled_i16),
    ];
    for (name, p) in cases {
        let width = usize::from(p.width());
        group.bench_with_input(BenchmarkId::from_parameter(name), &p, |b, p| {
            b.iter(|| {
                let mut good = 0usize;
                for w in words.chunks_exact(width).take(N) {
                    let (value, _quality) = decode_registers(p, black_box(w));
                    good += usize::from(value.is_some());
                }
                black_box(good)
            })
        });
    }
    group.finish();
}

fn bench_pot_request(c: &mut Criterion) {
    let device = pot(0);
    let plans = plan_device(0, &device);
    let fast = plans
        .iter()
        .find(|p| p.poll_interval == Duration::from_secs(1))
        .expect("the pot template has a 1 s class");
    let words: Vec<u16> = (0..125u16).map(|i| 0x4000 | i).collect();
    let bits = vec![true; 2000];
    let served: usize = fast.requests.iter().map(|r| r.points.len()).sum();

    let mut group = c.benchmark_group("pot_cycle");
    group.throughput(Throughput::Elements(served as u64));
    group.bench_function(
        format!("1s_class_{}_reads_{served}_points", fast.requests.len()),
        |b| {
            let mut out = Vec::with_capacity(served);
            b.iter(|| {
                out.clear();
                for req in &fast.requests {
                    let n = usize::from(req.count);
                    let data = if req.area.is_bits() {
                        RequestData::Bits(&bits[..n])
                    } else {
                        RequestData::Registers(&words[..n])
                    };
                    apply_request(&device, req, black_box(data), Timestamp(0), &mut out);
                }
                black_box(out.len())
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench_plan, bench_decode, bench_pot_request);
criterion_main!(benches);
