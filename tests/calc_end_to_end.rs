//! The calculators end to end: the built-in simulator (a seeded anode-effect schedule, a stack
//! held above its SO2 limit) → Modbus TCP → the agent (`smeltwatch::app::start`, in process) → a
//! real Mosquitto → a subscriber. The anode-effect events, the day's AE statistics and the hourly
//! mass flows that arrive are checked against values computed here from the simulator's
//! configuration: the schedule of effects and the fixed concentrations and flow.
//!
//! # Time
//!
//! An hour window and a day close must happen in seconds. Tokio's paused clock cannot do it
//! honestly here: the readings are stamped with the wall clock at acquisition (`SystemTime`,
//! which a paused tokio clock does not move), and with a real broker and real Modbus sockets in
//! the path a paused runtime would auto-advance through every I/O wait and fire request
//! timeouts. Shortening the windows themselves would test other validity rules than HJ 76's
//! (45 valid minutes an hour). So plant time runs faster instead, on both sides of the wire,
//! by the same factor:
//!
//! - the simulator's `time_scale = 120` advances its models by 120 plant seconds per real
//!   second (the schedule and the AE durations are plant time);
//! - the agent's `[calc.simulated_time]` maps reading timestamps to plant time
//!   (`start + (t − t_first) × 120`), starting at 22:59 local time.
//!
//! Everything else is the production path: the pollers, decoding, the calculators with their
//! minute/hour/day windows and HJ 76 rules, the spools, the MQTT uplink and the broker. Polls
//! every 100 ms (12 plant seconds) bound how exactly an effect's duration can be measured; that
//! bound (plus the simulator's 6 s tick) is the tolerance used below. The run crosses the hour
//! 23:00–00:00 (valid, 60 minutes) and local midnight (the day closes), about 31 s of real time.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::agent;
use common::calc::close;
use common::json::attr;
use common::plant::{
    EndToEnd, agent_toml, calc_gtc1_stack_toml, calc_potline1_toml, cems_map_toml,
    gtc1_cems_map_source_toml, mqtt_uplink_toml, potline1_source_toml, simulated_calc_toml,
    simulated_potline1_toml,
};
use serde_json::Value as Json;
use smeltwatch::calc::time::{DAY_MS, HOUR_MS, days_from_civil};
use smeltwatch::config;
use smeltwatch::simulator::SimulatorConfig;

/// Plant seconds per real second, on both sides.
const SCALE: f64 = 120.0;
/// Plant time of the agent's first reading: 2025-03-01 22:59 local (UTC+8).
const START_UTC: &str = "2025-03-01T14:59:00Z";
/// Plant minutes from the start to local midnight.
const MINUTES_TO_MIDNIGHT: f64 = 61.0;
/// In-service cells (cell 4 of 4 is cut out).
const CELLS_IN_SERVICE: f64 = 3.0;
/// The schedule: (cell, start in plant minutes after the simulator start, duration in plant
/// minutes, peak V).
const SCHEDULE: [(u16, u64, u64, f64); 3] = [(2, 10, 6, 30.0), (3, 25, 3, 20.0), (2, 40, 4, 25.0)];
/// SO2, mg/m³, held by the stack analyser (GB 25465 general limit: 200).
const SO2_MG_M3: f64 = 250.0;
/// Fluoride, mg/m³, held by the stack analyser.
const FLUORIDE_MG_M3: f32 = 0.85;
/// Flue-gas flow, m³/h, held by the stack analyser.
const FLOW_M3H: f64 = 1_600_000.0;
/// How far a measured AE duration may be from the scheduled one, plant seconds: two poll
/// periods (start and end are each seen up to one poll late) and a simulator tick, rounded up.
const AE_DURATION_TOL_S: f64 = 30.0;

fn simulator_config() -> SimulatorConfig {
    let mut schedule = String::new();
    for (cell, at, duration, peak) in SCHEDULE {
        schedule.push_str(&format!(
            "[[potlines.anode_effect_schedule]]\ncell = {cell}\nat = \"{at}m\"\nduration = \"{duration}m\"\npeak_v = {peak}\n"
        ));
    }
    toml::from_str(&format!(
        r#"{head}cells_out_of_service = [4]
{schedule}
[[stacks]]
name = "gtc1_stack"
listen = "127.0.0.1:2"
profile = "potline_gtc"
fixed = {{ so2_mg_m3 = {SO2_MG_M3}, fluoride_mg_m3 = {FLUORIDE_MG_M3}, flow_m3h = {FLOW_M3H} }}
"#,
        head = simulated_potline1_toml(7, SCALE)
    ))
    .expect("simulator section parses")
}

fn agent_config(potline: u16, stack: u16, mqtt: u16, state: &Path) -> String {
    agent_toml(
        "calc-e2e",
        state,
        &[
            &cems_map_toml(true),
            &potline1_source_toml(potline, "timeout = \"500ms\"", ""),
            &gtc1_cems_map_source_toml(stack, "500ms"),
            &simulated_calc_toml(SCALE, START_UTC),
            // A poll every 12 plant seconds: longer than the default 10 s gap limit.
            &calc_potline1_toml("current_efficiency = 0.935\nmax_gap = \"2m\"\n"),
            &calc_gtc1_stack_toml(r#"{ so2 = "so2_mg_m3", fluoride = "fluoride_mg_m3" }"#),
            &mqtt_uplink_toml("plant", mqtt, &["metrics", "events", "emissions"]),
        ],
    )
}

/// The plant of these tests, as [`EndToEnd::start`] starts it.
const PLANT: EndToEnd = EndToEnd {
    simulator: simulator_config,
    site: "calc-e2e",
    endpoints: ["potline1", "gtc1_stack"],
    agent_config,
};

/// The value of metric `name` with label `period = "day"` in a metrics message, if present.
fn day_metric(msg: &Json, name: &str) -> Option<f64> {
    msg["metrics"].as_array()?.iter().find_map(|m| {
        let day = m["labels"]["period"] == "day";
        (m["name"] == name && day)
            .then(|| m["value"].as_f64())
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anode_effects_aem_and_hourly_mass_flows_arrive_at_the_broker() {
    let (broker, _sub, mut rx, sim, state, toml) = PLANT.start().await;
    let agent = agent::start_inline(&toml, "calc-e2e.toml").await;

    // Local midnight closes the day (AE statistics) and the hour 23:00-00:00 (mass flows).
    let hour_start = days_from_civil(2025, 3, 1) * DAY_MS + 15 * HOUR_MS;
    let mut ae_events: Vec<Json> = Vec::new();
    let mut exceedances: Vec<Json> = Vec::new();
    let mut hours: Vec<Json> = Vec::new();
    let mut days: Vec<Json> = Vec::new();
    let mut ae_day: Option<Json> = None;
    let mut emissions_day: Option<Json> = None;
    let mut potline_day: Option<Json> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    // Everything closes at once, but arrives one message after the other: wait for each piece.
    let have_hour = |hours: &[Json], q: &str| {
        hours
            .iter()
            .any(|h| h["start"] == hour_start && h["quantity"] == q)
    };
    while ae_day.is_none()
        || emissions_day.is_none()
        || potline_day.is_none()
        || !["so2_mg_m3", "so2_kg_h", "fluoride_kg_h"]
            .iter()
            .all(|q| have_hour(&hours, q))
        || !days.iter().any(|d| d["quantity"] == "so2_mg_m3")
    {
        let (topic, payload) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the day or the hour did not close in time: {} AE events, hours {hours:?}",
                    ae_events.len()
                )
            })
            .expect("subscriber alive");
        let msg: Json = serde_json::from_slice(&payload).expect("JSON payload");
        let leaf = topic.rsplit('/').next().unwrap_or_default();
        if topic.contains("/events/anode_effect") {
            ae_events.push(msg);
        } else if topic.contains("/events/exceedance") {
            exceedances.push(msg);
        } else if topic.contains("/emissions/gtc1_stack/") && leaf == "hour" {
            hours.push(msg);
        } else if topic.contains("/emissions/gtc1_stack/") && leaf == "day" {
            days.push(msg);
        } else if topic.ends_with("/metrics/anode_effect")
            && day_metric(&msg, "aem_min_per_cell_day").is_some()
        {
            ae_day = Some(msg);
        } else if topic.ends_with("/metrics/emissions") && day_metric(&msg, "pfc_cf4_kg").is_some()
        {
            emissions_day = Some(msg);
        } else if topic.ends_with("/metrics/potline") && day_metric(&msg, "production_t").is_some()
        {
            potline_day = Some(msg);
        }
    }
    agent.shutdown().await;
    sim.shutdown().await;

    // === anode effects: one start and one end per scheduled effect, on the right cells ===
    let starts: Vec<&Json> = ae_events.iter().filter(|e| e["phase"] == "start").collect();
    let ends: Vec<&Json> = ae_events.iter().filter(|e| e["phase"] == "end").collect();
    assert_eq!(starts.len(), SCHEDULE.len(), "starts: {starts:?}");
    assert_eq!(ends.len(), SCHEDULE.len(), "ends: {ends:?}");
    let mut measured_minutes = 0.0;
    for (i, (cell, _, duration_min, peak_v)) in SCHEDULE.iter().enumerate() {
        let subject = format!("potline1/pot_{cell:03}");
        assert_eq!(starts[i]["subject"], subject.as_str(), "{:?}", starts[i]);
        assert_eq!(ends[i]["subject"], subject.as_str(), "{:?}", ends[i]);
        let duration_s = attr(ends[i], "duration_s");
        close(
            duration_s,
            *duration_min as f64 * 60.0,
            AE_DURATION_TOL_S,
            &format!("duration of effect {i}"),
        );
        // the end event says when it started: the start event's time
        assert_eq!(
            ends[i]["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|kv| kv[0] == "start")
                .map(|kv| kv[1].clone()),
            Some(starts[i]["ts"].clone())
        );
        // the simulator jumps to the peak and decays towards 9 V (noise 0.3 V, floor 8.2 V)
        let (peak, mean) = (
            attr(ends[i], "peak_voltage_v"),
            attr(ends[i], "mean_voltage_v"),
        );
        assert!(
            peak > 8.0 && peak <= peak_v + 1.5,
            "peak {peak} of effect {i}"
        );
        assert!(mean > 8.0 && mean <= peak, "mean {mean} of effect {i}");
        measured_minutes += duration_s / 60.0;
    }
    let scheduled_minutes: f64 = SCHEDULE.iter().map(|(_, _, d, _)| *d as f64).sum();

    // === the day's AE statistics, against the schedule ===
    let day = ae_day.expect("AE day metrics");
    let m = |name: &str| day_metric(&day, name).unwrap_or_else(|| panic!("{name} in {day}"));
    assert_eq!(m("ae_count"), SCHEDULE.len() as f64);
    close(
        m("ae_minutes"),
        measured_minutes,
        1e-9,
        "ae_minutes = Σ event durations",
    );
    let cell_days = CELLS_IN_SERVICE * MINUTES_TO_MIDNIGHT / 1440.0;
    close(
        m("cell_days"),
        cell_days,
        0.02 * cell_days,
        "cell-days of 3 cells over 61 min",
    );
    close(m("aef_per_cell_day"), 3.0 / m("cell_days"), 1e-9, "AEF");
    close(m("aed_min"), measured_minutes / 3.0, 1e-9, "AED");
    close(
        m("aem_min_per_cell_day"),
        m("ae_minutes") / m("cell_days"),
        1e-9,
        "AEM",
    );
    let expected_aem = scheduled_minutes / cell_days;
    let aem_tol = expected_aem
        * (SCHEDULE.len() as f64 * AE_DURATION_TOL_S / 60.0 / scheduled_minutes + 0.02);
    close(
        m("aem_min_per_cell_day"),
        expected_aem,
        aem_tol,
        "AEM against the schedule",
    );

    // PFC of the day by the slope method with the shipped CWPB coefficients (S = 0.143)
    let em = emissions_day.expect("emissions day metrics");
    let production_t = potline_day
        .as_ref()
        .and_then(|d| day_metric(d, "production_t"))
        .expect("the potline day metrics arrived");
    close(
        day_metric(&em, "pfc_cf4_kg").expect("cf4"),
        0.143 * m("aem_min_per_cell_day") * production_t,
        1e-9,
        "CF4 = S × AEM × MP",
    );
    // Faraday: ≈ 400 kA (the simulated current drifts by a few kA) on 3 cells for 61 min at CE
    // 0.935: 0.335573 × 400 × 61/60 × 3 × 0.935 kg
    let faraday_t = 0.335573 * 400.0 * MINUTES_TO_MIDNIGHT / 60.0 * 3.0 * 0.935 / 1000.0;
    close(
        production_t,
        faraday_t,
        0.04 * faraday_t,
        "production of the day, t",
    );

    // === hourly aggregates of the stack: 23:00-00:00 local is complete and valid ===
    let hour = |q: &str| {
        hours
            .iter()
            .find(|h| h["start"] == hour_start && h["quantity"] == q)
            .unwrap_or_else(|| panic!("hour of {q} in {hours:?}"))
    };
    let so2 = hour("so2_mg_m3");
    assert_eq!(so2["valid"], true, "{so2}");
    assert!(so2["samples"].as_u64().unwrap() >= 45, "{so2}");
    close(
        so2["avg"].as_f64().unwrap(),
        SO2_MG_M3,
        1e-9,
        "SO2 hourly mean",
    );

    let so2_kg = hour("so2_kg_h");
    let so2_rate = SO2_MG_M3 * FLOW_M3H * 1e-6; // 400 kg/h
    assert_eq!(so2_kg["valid"], true, "{so2_kg}");
    close(so2_kg["avg"].as_f64().unwrap(), so2_rate, 1e-9, "SO2 kg/h");
    let minutes = so2_kg["samples"].as_f64().unwrap();
    assert!(minutes >= 45.0, "{so2_kg}");
    // the hour's mean rate × 1 h: minutes the agent missed do not count as zero emission
    close(
        so2_kg["total"].as_f64().unwrap(),
        so2_rate,
        1e-6,
        "SO2 kg in the hour = hourly mean rate × 1 h",
    );
    assert_eq!(so2_kg["total_unit"], "kg");

    let f_kg = hour("fluoride_kg_h");
    let f_rate = f64::from(FLUORIDE_MG_M3) * FLOW_M3H * 1e-6; // 1.36 kg/h
    close(f_kg["avg"].as_f64().unwrap(), f_rate, 1e-9, "fluoride kg/h");
    close(
        f_kg["total"].as_f64().unwrap(),
        f_rate,
        1e-9,
        "fluoride kg in the hour = hourly mean rate × 1 h",
    );

    // the partial first hour (22:59-23:00) is there but invalid: 1 minute is not 45
    let partial = hours
        .iter()
        .find(|h| h["start"] == hour_start - HOUR_MS && h["quantity"] == "so2_mg_m3")
        .expect("the partial hour 22:00-23:00");
    assert_eq!(partial["valid"], false, "{partial}");
    assert!(partial["avg"].is_null(), "{partial}");
    // the day 2025-03-01 closes with one valid hour: invalid (HJ 76 wants 20)
    let so2_day = days
        .iter()
        .find(|d| d["quantity"] == "so2_mg_m3")
        .expect("the day of SO2");
    assert_eq!(so2_day["valid"], false, "{so2_day}");

    // === exactly one exceedance: SO2 in the valid hour, against GB 25465's 200 mg/m³ ===
    assert_eq!(exceedances.len(), 1, "{exceedances:?}");
    let e = &exceedances[0];
    assert_eq!(e["subject"], "gtc1_stack/so2_mg_m3");
    assert_eq!(e["ts"], hour_start);
    close(
        attr(e, "hour_avg_mg_m3"),
        SO2_MG_M3,
        1e-9,
        "exceedance average",
    );
    close(attr(e, "limit_mg_m3"), 200.0, 0.0, "exceedance limit");

    // the open windows were saved at shutdown, for the next start
    assert!(
        state.path().join("calc-state.json").exists(),
        "calc-state.json in the state directory"
    );
    drop(broker);
}

/// Messages received so far: (topic, JSON payload).
type Received = [(String, Json)];

/// Plant time of the latest aggregate seen, ms.
fn plant_now(msg: &Json) -> Option<i64> {
    msg["end"].as_i64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_mid_hour_resumes_the_open_hour_from_the_state_directory() {
    let (broker, _sub, mut rx, sim, state, toml) = PLANT.start().await;
    let opts = || smeltwatch::app::RunOptions {
        grace_period: Duration::from_millis(500),
        ..Default::default()
    };
    let parse =
        || config::parse(&toml, Path::new("calc-e2e.toml")).unwrap_or_else(|e| panic!("{e}"));
    let hour_start = days_from_civil(2025, 3, 1) * DAY_MS + 15 * HOUR_MS;
    let restart_at = hour_start + 25 * 60_000;

    // messages by (stream, seq): the spool's at-least-once delivery may repeat some after a
    // restart, and consumers drop those by their sequence number
    let mut seen = std::collections::BTreeSet::new();
    let mut messages: Vec<(String, Json)> = Vec::new();
    let mut receive = async |until: &dyn Fn(&Received) -> bool| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !until(&messages) {
            let (topic, payload) = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("messages stopped arriving")
                .expect("subscriber alive");
            let msg: Json = serde_json::from_slice(&payload).expect("JSON payload");
            if seen.insert((msg["stream"].to_string(), msg["seq"].as_u64())) {
                messages.push((topic, msg));
            }
        }
    };

    // first run: until plant time passes 23:25, inside the hour 23:00-00:00
    let agent = smeltwatch::app::start(parse(), opts())
        .await
        .expect("agent starts");
    receive(&|m: &Received| {
        m.iter()
            .any(|(t, msg)| t.ends_with("/minute") && plant_now(msg) >= Some(restart_at))
    })
    .await;
    agent.shutdown().await;
    assert!(state.path().join("calc-state.json").exists());

    // second run on the same state directory, until the day closes
    let agent = smeltwatch::app::start(parse(), opts())
        .await
        .expect("agent restarts");
    receive(&|m: &Received| {
        m.iter().any(|(t, msg)| {
            t.ends_with("/metrics/anode_effect") && day_metric(msg, "ae_count").is_some()
        }) && m.iter().any(|(t, msg)| {
            t.ends_with("/hour") && msg["start"] == hour_start && msg["quantity"] == "so2_mg_m3"
        })
    })
    .await;
    agent.shutdown().await;
    sim.shutdown().await;

    // the hour 23:00-00:00 is emitted once, valid, with the minutes from before the restart:
    // without them it would have at most 35 and be invalid
    let hours: Vec<&Json> = messages
        .iter()
        .filter(|(t, m)| {
            t.ends_with("/hour") && m["start"] == hour_start && m["quantity"] == "so2_mg_m3"
        })
        .map(|(_, m)| m)
        .collect();
    assert_eq!(hours.len(), 1, "{hours:?}");
    assert_eq!(hours[0]["valid"], true, "{}", hours[0]);
    let samples = hours[0]["samples"].as_u64().expect("samples");
    assert!(
        (55..=60).contains(&samples),
        "the restart costs a minute or two of plant time, not the first 25: {samples}"
    );
    // no minute twice
    let mut minutes: Vec<i64> = messages
        .iter()
        .filter(|(t, m)| t.ends_with("/minute") && m["quantity"] == "so2_mg_m3")
        .map(|(_, m)| m["start"].as_i64().expect("start"))
        .collect();
    let n = minutes.len();
    minutes.sort_unstable();
    minutes.dedup();
    assert_eq!(minutes.len(), n, "a minute was emitted twice");
    // every scheduled anode effect started and ended once, across the restart
    let phases = |phase: &str| {
        messages
            .iter()
            .filter(|(t, m)| t.contains("/events/anode_effect") && m["phase"] == phase)
            .count()
    };
    assert_eq!((phases("start"), phases("end")), (3, 3));
    let day = messages
        .iter()
        .find(|(t, m)| t.ends_with("/metrics/anode_effect") && day_metric(m, "ae_count").is_some())
        .map(|(_, m)| m)
        .expect("the day closed");
    assert_eq!(day_metric(day, "ae_count"), Some(3.0));
    // the day's cell-days span both runs (less the restart's plant minute or two)
    let cell_days = CELLS_IN_SERVICE * MINUTES_TO_MIDNIGHT / 1440.0;
    close(
        day_metric(day, "cell_days").expect("cell-days"),
        cell_days,
        0.06 * cell_days,
        "cell-days across the restart",
    );
    drop(broker);
}
