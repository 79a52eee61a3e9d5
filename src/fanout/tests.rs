use super::*;
use crate::live::LatestReadings;
use crate::model::Value;
use crate::model::{Quality, Reading};

fn batch(device: &str, interval_ms: u64, points: &[(&str, f64)], ts: i64) -> ReadingBatch {
    ReadingBatch {
        source: "line1".into(),
        device: device.into(),
        unit_id: 1,
        poll_interval_ms: interval_ms,
        scheduled: Timestamp(ts),
        readings: points
            .iter()
            .map(|(p, v)| Reading {
                point: (*p).into(),
                value: Some(Value::Float(*v)),
                unit: "V".into(),
                quality: Quality::Good,
                ts: Timestamp(ts),
            })
            .collect(),
    }
}

#[test]
fn latest_readings_keep_the_last_batch_of_each_device_and_poll_class() {
    let mut latest = LatestReadings::default();
    assert!(latest.is_empty());
    latest.update(&batch("pot_001", 1000, &[("cell_voltage_v", 4.0)], 1));
    latest.update(&batch("pot_001", 60_000, &[("energy_kwh", 7.0)], 1));
    latest.update(&batch("pot_002", 1000, &[("cell_voltage_v", 4.1)], 1));
    latest.update(&batch("pot_001", 1000, &[("cell_voltage_v", 8.5)], 2));
    let mut seen: Vec<(String, String, Option<f64>, i64)> = latest
        .iter()
        .map(|(d, r)| {
            let v = r.value.as_ref().and_then(Value::as_f64);
            (d.to_string(), r.point.to_string(), v, r.ts.unix_ms())
        })
        .collect();
    seen.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    assert_eq!(
        seen,
        [
            ("pot_001".into(), "cell_voltage_v".into(), Some(8.5), 2),
            ("pot_001".into(), "energy_kwh".into(), Some(7.0), 1),
            ("pot_002".into(), "cell_voltage_v".into(), Some(4.1), 1),
        ]
    );
    assert_eq!(latest.len(), 3);
    assert!(!latest.is_empty());
}

#[tokio::test(start_paused = true)]
async fn batches_that_follow_within_the_linger_join_the_first_one() {
    let (tx, mut rx) = mpsc::channel(256);
    // A source reading its devices one after the other: one batch a millisecond, then a
    // pause, then a long run.
    tokio::spawn(async move {
        let mut n = 0;
        for gap_ms in [0, 1, 1, 1, 20].into_iter().chain([1; 40]) {
            tokio::time::sleep(Duration::from_millis(gap_ms)).await;
            n += 1;
            tx.send(batch(&format!("pot_{n:03}"), 1000, &[], n))
                .await
                .unwrap();
        }
    });
    let mut sizes = Vec::new();
    let mut burst = Vec::new();
    loop {
        let started = tokio::time::Instant::now();
        if rx.recv_many(&mut burst, MAX_BATCHES_PER_APPEND).await == 0 {
            break;
        }
        linger(&mut rx, &mut burst).await;
        assert!(started.elapsed() <= Duration::from_millis(20) + APPEND_LINGER);
        sizes.push(burst.len());
        burst.clear();
    }
    // 4 within the linger of the first; the run after the pause in bursts of 5 (the first and
    // those less than 5 ms after it).
    assert_eq!(sizes[0], 4, "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 45, "{sizes:?}");
    assert!(
        sizes[1..sizes.len() - 1].iter().all(|&n| n == 5),
        "{sizes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn fan_out_stops_waiting_where_waiting_gathers_nothing_and_resumes_when_it_would() {
    let (tx, mut rx) = mpsc::channel(256);
    // Sources of one device each, spread 50 ms apart; then one source of many devices.
    tokio::spawn(async move {
        let mut n = 0;
        for gap_ms in [50; 60].into_iter().chain([1; 100]) {
            tokio::time::sleep(Duration::from_millis(gap_ms)).await;
            n += 1;
            tx.send(batch(&format!("pot_{n:03}"), 1000, &[], n))
                .await
                .unwrap();
        }
    });
    let mut lingering = Linger::default();
    let (mut waits, mut sizes) = (Vec::new(), Vec::new());
    let mut burst = Vec::new();
    while rx.recv_many(&mut burst, MAX_BATCHES_PER_APPEND).await > 0 {
        let started = tokio::time::Instant::now();
        lingering.gather(&mut rx, &mut burst).await;
        waits.push(started.elapsed() > Duration::ZERO);
        sizes.push(burst.len());
        burst.clear();
    }
    // The spread part: the first waits, then only the probes.
    let spread = &waits[..60];
    assert!(spread[..LINGER_FRUITLESS as usize].iter().all(|&w| w));
    let later = spread[LINGER_FRUITLESS as usize..]
        .iter()
        .filter(|&&w| w)
        .count();
    assert!((2..=4).contains(&later), "{waits:?}");
    // The trickle: a probe notices it, and from then on bursts of 5 as before.
    assert_eq!(sizes.iter().sum::<usize>(), 160);
    let trickle = &sizes[60..];
    assert!(
        trickle.len() <= 100 / 5 + LINGER_PROBE_EVERY as usize,
        "{sizes:?}"
    );
    assert!(
        trickle[trickle.len() - 5..trickle.len() - 1]
            .iter()
            .all(|&n| n == 5),
        "{sizes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_burst_is_not_held_back() {
    let (tx, mut rx) = mpsc::channel(256);
    for n in 0..(MAX_BATCHES_PER_APPEND as i64 + 3) {
        tx.send(batch("pot_001", 1000, &[], n)).await.unwrap();
    }
    let started = tokio::time::Instant::now();
    let mut burst = Vec::new();
    rx.recv_many(&mut burst, MAX_BATCHES_PER_APPEND).await;
    linger(&mut rx, &mut burst).await;
    assert_eq!(burst.len(), MAX_BATCHES_PER_APPEND);
    assert_eq!(started.elapsed(), Duration::ZERO);
}
