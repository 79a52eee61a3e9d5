use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::config::model::{ByteOrder, DataType, PointConfig};

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

fn point(name: &str, area: Area, address: u16, data_type: DataType) -> PointConfig {
    PointConfig {
        name: name.into(),
        area,
        address,
        data_type,
        byte_order: ByteOrder::Abcd,
        scale: 1.0,
        offset: 0.0,
        unit: "".into(),
        poll_interval: SECOND,
        range: None,
        writable: false,
    }
}

fn holding(name: &str, address: u16, data_type: DataType) -> PointConfig {
    point(name, Area::Holding, address, data_type)
}

fn device(points: Vec<PointConfig>) -> DeviceConfig {
    crate::modbus::test_fixtures::device("pot_001", 10, points)
}

/// `(area, start, count, [(point, offset)])` of one request.
type RequestShape = (Area, u16, u16, Vec<(usize, u16)>);

/// The shape of every request of one plan.
fn shape(plan: &DevicePlan) -> Vec<RequestShape> {
    plan.requests
        .iter()
        .map(|r| {
            let slots = r.points.iter().map(|s| (s.point, s.offset)).collect();
            (r.area, r.start, r.count, slots)
        })
        .collect()
}

#[test]
fn plan_fills_a_gap_up_to_max_gap_registers() {
    let points = vec![
        holding("a", 100, DataType::U16),
        holding("b", 103, DataType::F32),
    ];
    let mut dev = device(points);
    dev.max_gap_registers = 2;
    let plans = plan_device(0, &dev);
    assert_eq!(plans.len(), 1);
    assert_eq!(
        shape(&plans[0]),
        vec![(Area::Holding, 100, 5, vec![(0, 0), (1, 3)])]
    );

    dev.max_gap_registers = 1;
    let plans = plan_device(0, &dev);
    assert_eq!(
        shape(&plans[0]),
        vec![
            (Area::Holding, 100, 1, vec![(0, 0)]),
            (Area::Holding, 103, 2, vec![(1, 0)]),
        ]
    );
}

#[test]
fn plan_splits_at_max_registers_per_read_exactly() {
    // 125 single registers fill one read exactly; the 126th opens a second one.
    let points: Vec<_> = (0..126u16)
        .map(|a| holding(&format!("r{a}"), a, DataType::U16))
        .collect();
    let mut dev = device(points);
    dev.max_gap_registers = 0;
    let plans = plan_device(0, &dev);
    let reqs = &plans[0].requests;
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        (reqs[0].start, reqs[0].count, reqs[0].points.len()),
        (0, 125, 125)
    );
    assert_eq!(
        (reqs[1].start, reqs[1].count, reqs[1].points.len()),
        (125, 1, 1)
    );

    // 63 consecutive f32 = 126 registers: the 63rd would straddle 125, so it moves whole.
    let points: Vec<_> = (0..63u16)
        .map(|i| holding(&format!("f{i}"), i * 2, DataType::F32))
        .collect();
    let plans = plan_device(0, &device(points));
    let reqs = &plans[0].requests;
    assert_eq!(reqs.len(), 2);
    assert_eq!((reqs[0].start, reqs[0].count), (0, 124));
    assert_eq!((reqs[1].start, reqs[1].count), (124, 2));
}

#[test]
fn plan_splits_coils_at_max_bits_per_read() {
    let points: Vec<_> = (0..2001u16)
        .map(|a| {
            point(
                &format!("c{a}"),
                Area::Coil,
                a,
                DataType::Bool { bit: None },
            )
        })
        .collect();
    let plans = plan_device(0, &device(points));
    let reqs = &plans[0].requests;
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        (reqs[0].area, reqs[0].start, reqs[0].count),
        (Area::Coil, 0, 2000)
    );
    assert_eq!((reqs[1].start, reqs[1].count), (2000, 1));
}

#[test]
fn plan_separates_poll_classes_and_sorts_them_by_interval() {
    let mut energy = holding("energy_kwh", 2, DataType::U64);
    energy.poll_interval = MINUTE;
    let mut status = point(
        "alarm",
        Area::DiscreteInput,
        0,
        DataType::Bool { bit: None },
    );
    status.poll_interval = MINUTE;
    let points = vec![
        energy,
        holding("cell_voltage_v", 0, DataType::F32),
        status,
        holding("line_current_ka", 6, DataType::F32),
    ];
    let plans = plan_device(3, &device(points));
    assert_eq!(plans.len(), 2);
    assert_eq!((plans[0].device, plans[0].poll_interval), (3, SECOND));
    assert_eq!(
        shape(&plans[0]),
        vec![(Area::Holding, 0, 8, vec![(1, 0), (3, 6)])]
    );
    assert_eq!(plans[1].poll_interval, MINUTE);
    assert_eq!(
        shape(&plans[1]),
        vec![
            (Area::DiscreteInput, 0, 1, vec![(2, 0)]),
            (Area::Holding, 2, 4, vec![(0, 0)]),
        ]
    );
}

#[test]
fn plan_never_merges_different_areas() {
    let points = vec![
        point("h", Area::Holding, 0, DataType::U16),
        point("i", Area::Input, 1, DataType::U16),
    ];
    let plans = plan_device(0, &device(points));
    assert_eq!(plans[0].requests.len(), 2);
    assert_eq!(plans[0].requests[0].area, Area::Holding);
    assert_eq!(plans[0].requests[1].area, Area::Input);
}

#[test]
fn single_point_reads_gives_one_request_per_point() {
    let points = vec![
        holding("a", 0, DataType::U16),
        holding("b", 1, DataType::F32),
        holding("c", 3, DataType::U16),
    ];
    let mut dev = device(points);
    dev.single_point_reads = true;
    let plans = plan_device(0, &dev);
    assert_eq!(
        shape(&plans[0]),
        vec![
            (Area::Holding, 0, 1, vec![(0, 0)]),
            (Area::Holding, 1, 2, vec![(1, 0)]),
            (Area::Holding, 3, 1, vec![(2, 0)]),
        ]
    );
}

#[test]
fn overlapping_points_are_each_served_once_without_panic() {
    let points = vec![
        holding("wide", 0, DataType::F64),
        holding("inner", 1, DataType::U32),
        holding("same", 0, DataType::U16),
        holding("top", u16::MAX, DataType::F32),
    ];
    let mut dev = device(points);
    dev.max_registers_per_read = 3;
    let plans = plan_device(0, &dev);
    let mut served: Vec<usize> = plans[0]
        .requests
        .iter()
        .flat_map(|r| r.points.iter().map(|s| s.point))
        .collect();
    served.sort_unstable();
    assert_eq!(served, vec![0, 1, 2, 3]);
}

#[test]
fn a_device_without_points_has_no_plans() {
    assert!(plan_device(0, &device(Vec::new())).is_empty());
}

fn source(devices: Vec<DeviceConfig>) -> SourceConfig {
    SourceConfig {
        name: "potline1".into(),
        transport: Transport::Tcp {
            addr: crate::config::model::HostPort {
                host: "10.0.0.5".into(),
                port: 502,
            },
        },
        timeout: Duration::from_millis(500),
        inter_request_gap: Duration::ZERO,
        reconnect_min: SECOND,
        reconnect_max: MINUTE,
        breaker_failures: 3,
        breaker_probe_interval: MINUTE,
        poll_offset: Duration::ZERO,
        devices,
    }
}

#[test]
fn report_prints_each_request_and_groups_identical_devices() {
    let mut energy = holding("energy_kwh", 40, DataType::U64);
    energy.poll_interval = MINUTE;
    let template = vec![
        holding("cell_voltage_v", 0, DataType::F32),
        holding("line_current_ka", 2, DataType::F32),
        energy,
    ];
    let mut devices = Vec::new();
    for (i, unit) in [10u8, 11, 12, 14].into_iter().enumerate() {
        let mut d = device(template.clone());
        d.name = Arc::from(format!("pot_{:03}", i + 1));
        d.unit_id = unit;
        devices.push(d);
    }
    let mut odd = device(vec![holding("dc_current_ka", 0, DataType::F32)]);
    odd.name = "rectifier".into();
    odd.unit_id = 1;
    devices.push(odd);
    let mut src = source(devices);
    src.poll_offset = Duration::from_millis(250);
    let plans = plan_source(&src);
    let text = render_plan(&src, &plans);

    assert!(
        text.contains(
            "source potline1 (tcp 10.0.0.5:502): 5 devices, timeout 500ms, poll offset 250ms"
        ),
        "{text}"
    );
    assert!(
        text.contains("device pot_001 (unit 10): 3 points"),
        "{text}"
    );
    assert!(
        text.contains("holding            0-3     (  4 regs) cell_voltage_v@0 line_current_ka@2"),
        "{text}"
    );
    assert!(
        text.contains("holding           40-43    (  4 regs) energy_kwh@0"),
        "{text}"
    );
    assert!(
        text.contains(
            "… and 3 more devices with the same plan (pot_002 … pot_004; unit ids 11-12, 14)"
        ),
        "{text}"
    );
    assert!(!text.contains("device pot_002"), "{text}");
    assert!(text.contains("device rectifier (unit 1)"), "{text}");
    // 4 pots × (1 read/s + 1 read/min) + rectifier 1 read/s = 5.0667 requests/s;
    // registers: 4 × (4 + 4/60) + 2 = 18.27/s.
    assert!(
        text.contains("total: 9 reads planned, 5.1 requests/s, 18 registers/s, 0 bits/s"),
        "{text}"
    );
    // 1000 ms / 5.0667 requests/s.
    assert!(text.contains("under 197.4 ms"), "{text}");
}

#[test]
fn id_ranges_collapse_runs() {
    assert_eq!(id_ranges(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
    assert_eq!(id_ranges(&[9]), "9");
    assert_eq!(id_ranges(&[]), "");
}

// === properties ===

const TYPES: [DataType; 10] = [
    DataType::Bool { bit: Some(3) },
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::F32,
    DataType::U64,
    DataType::F64,
    DataType::Ascii { registers: 3 },
    DataType::Ascii { registers: 8 },
];
const AREAS: [Area; 4] = [Area::Coil, Area::DiscreteInput, Area::Holding, Area::Input];
const CLASSES: [Duration; 3] = [SECOND, Duration::from_secs(5), MINUTE];

/// Non-overlapping points: per area, laid out in address order with random gaps.
fn arb_points() -> impl Strategy<Value = Vec<PointConfig>> {
    prop::collection::vec((0..4usize, 0..10usize, 0..3usize, 0..20u16), 0..80).prop_map(|specs| {
        let mut next = [0u32; 4];
        let mut points = Vec::new();
        for (i, (area, ty, class, gap)) in specs.into_iter().enumerate() {
            let mut p = point(&format!("p{i}"), AREAS[area], 0, TYPES[ty]);
            if p.area.is_bits() {
                p.data_type = DataType::Bool { bit: None };
            }
            let address = next[area] + u32::from(gap);
            let Ok(address) = u16::try_from(address) else {
                continue;
            };
            if address as u32 + u32::from(p.width()) > 65_536 {
                continue;
            }
            p.address = address;
            p.poll_interval = CLASSES[class];
            next[area] = address as u32 + u32::from(p.width());
            points.push(p);
        }
        // Configuration order need not follow addresses.
        points.reverse();
        points
    })
}

fn arb_device() -> impl Strategy<Value = DeviceConfig> {
    (
        arb_points(),
        1..=125u16,
        1..=2000u16,
        0..30u16,
        prop::bool::weighted(0.1),
    )
        .prop_map(|(points, regs, bits, gap, single)| {
            let mut d = device(points);
            d.max_registers_per_read = regs;
            d.max_bits_per_read = bits;
            d.max_gap_registers = gap;
            d.single_point_reads = single;
            d
        })
}

fn limit(dev: &DeviceConfig, area: Area) -> u32 {
    u32::from(if area.is_bits() {
        dev.max_bits_per_read
    } else {
        dev.max_registers_per_read
    })
}

/// Fewest reads by dynamic programming over runs of the sorted points (the lemma in the
/// module docs), to check the greedy pass against.
fn optimal_reads(dev: &DeviceConfig, pts: &[(u32, u32)], area: Area) -> usize {
    let n = pts.len();
    let mut best = vec![usize::MAX; n + 1];
    best[0] = 0;
    for i in 0..n {
        if best[i] == usize::MAX {
            continue;
        }
        let start = pts[i].0;
        let mut end = start + pts[i].1;
        for j in i..n {
            if j > i {
                if dev.single_point_reads
                    || pts[j].0.saturating_sub(end) > u32::from(dev.max_gap_registers)
                {
                    break;
                }
                end = end.max(pts[j].0 + pts[j].1);
                if end - start > limit(dev, area) {
                    break;
                }
            }
            best[j + 1] = best[j + 1].min(best[i] + 1);
        }
    }
    best[n]
}

proptest! {
    #[test]
    fn every_point_is_served_once_by_a_read_that_contains_it(dev in arb_device()) {
        let plans = plan_device(7, &dev);
        let mut served = vec![0usize; dev.points.len()];
        let mut intervals: Vec<Duration> = plans.iter().map(|p| p.poll_interval).collect();
        intervals.dedup();
        prop_assert_eq!(intervals.len(), plans.len(), "one plan per class");
        prop_assert!(plans.windows(2).all(|w| w[0].poll_interval < w[1].poll_interval));
        for plan in &plans {
            prop_assert_eq!(plan.device, 7);
            for req in &plan.requests {
                for slot in &req.points {
                    let p = &dev.points[slot.point];
                    served[slot.point] += 1;
                    prop_assert_eq!(p.area, req.area);
                    prop_assert_eq!(p.poll_interval, plan.poll_interval);
                    prop_assert_eq!(u32::from(req.start) + u32::from(slot.offset), u32::from(p.address));
                    prop_assert!(slot.offset + p.width() <= req.count);
                }
            }
        }
        prop_assert!(served.iter().all(|&n| n == 1), "{:?}", served);
    }

    #[test]
    fn reads_respect_limits_gaps_and_never_overlap(dev in arb_device()) {
        for plan in plan_device(0, &dev) {
            let mut by_area: BTreeMap<Area, Vec<&ReadRequest>> = BTreeMap::new();
            for req in &plan.requests {
                let widest = req.points.iter().map(|s| dev.points[s.point].width()).max();
                prop_assert!(
                    u32::from(req.count) <= limit(&dev, req.area)
                        || (req.points.len() == 1 && Some(req.count) == widest),
                    "read of {} over limit {}", req.count, limit(&dev, req.area)
                );
                if dev.single_point_reads {
                    prop_assert_eq!(req.points.len(), 1);
                }
                let mut end = None;
                for slot in &req.points {
                    if let Some(end) = end {
                        prop_assert!(slot.offset >= end);
                        prop_assert!(slot.offset - end <= dev.max_gap_registers);
                    }
                    end = Some(slot.offset + dev.points[slot.point].width());
                }
                prop_assert_eq!(end, Some(req.count), "a read ends with its last point");
                by_area.entry(req.area).or_default().push(req);
            }
            for reqs in by_area.values() {
                for w in reqs.windows(2) {
                    prop_assert!(w[0].end() <= u32::from(w[1].start), "{:?} overlaps {:?}", w[0], w[1]);
                }
            }
        }
    }

    #[test]
    fn greedy_uses_the_fewest_reads(dev in arb_device()) {
        for plan in plan_device(0, &dev) {
            for area in AREAS {
                let mut pts: Vec<(u32, u32)> = dev
                    .points
                    .iter()
                    .filter(|p| p.area == area && p.poll_interval == plan.poll_interval)
                    .map(|p| (u32::from(p.address), u32::from(p.width())))
                    .collect();
                pts.sort_unstable();
                let greedy = plan.requests.iter().filter(|r| r.area == area).count();
                prop_assert_eq!(greedy, optimal_reads(&dev, &pts, area));
            }
        }
    }

    #[test]
    fn large_gap_and_limit_give_one_read_per_area_and_class(dev in arb_device()) {
        let mut dev = dev;
        dev.max_gap_registers = u16::MAX;
        dev.max_registers_per_read = u16::MAX;
        dev.max_bits_per_read = u16::MAX;
        dev.single_point_reads = false;
        for plan in plan_device(0, &dev) {
            let mut areas: Vec<Area> = dev
                .points
                .iter()
                .filter(|p| p.poll_interval == plan.poll_interval)
                .map(|p| p.area)
                .collect();
            areas.sort_unstable();
            areas.dedup();
            let got: Vec<Area> = plan.requests.iter().map(|r| r.area).collect();
            prop_assert_eq!(got, areas);
        }
    }
}
