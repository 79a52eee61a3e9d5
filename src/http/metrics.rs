//! `/metrics`: a [`Snapshot`] in the Prometheus text exposition format (0.0.4).
//!
//! The agent's counters already live in atomics and watches ([`PollerStats`], `UplinkStatus`,
//! spool statistics), so they are not re-recorded at event time: each scrape builds a fresh
//! `metrics-exporter-prometheus` recorder, sets every series from the snapshot through the `metrics`
//! facade under [`metrics::with_local_recorder`], renders it and drops it. That keeps the project's
//! metrics crates (and their escaping of label values), installs no global recorder (tests run many
//! servers in one process), and never shows a series that no longer exists (a point whose value
//! turned `null`, a quality that changed). The families with a series per point or per computed
//! metric are written straight into the text instead ([`render_points`]): through the recorder
//! each series cost a few allocations, hashing and sorting, about 10 µs, which for 2,000 points was
//! a 23 ms scrape, half again the agent's whole pipeline cost at a 15 s scrape interval
//! (`benches/metrics.rs`, docs/PERFORMANCE.md).
//!
//! # Families
//! | name | type | labels |
//! |---|---|---|
//! | `smeltwatch_build_info` | gauge (1) | `version` |
//! | `smeltwatch_source_cycles_total`, `_requests_total`, `_comm_failures_total`, `_exceptions_total`, `_late_ticks_total`, `_connects_total` | counter | `source` |
//! | `smeltwatch_source_request_duration_seconds` | histogram of read request round trips (`_bucket{le}`, `_sum`, `_count`) | `source` |
//! | `smeltwatch_device_read_errors_total` | counter, failed read requests (`kind` = `comm_failure` or `exception`); devices without one have no series | `source`, `device`, `kind` |
//! | `smeltwatch_source_readings_total` | counter | `source`, `quality` |
//! | `smeltwatch_uplink_state` | gauge, 1 for the current state, 0 for the others | `uplink`, `state` |
//! | `smeltwatch_uplink_acked_total`, `_rejected_total`, `_connects_total`, `_restarts_total` | counter | `uplink` |
//! | `smeltwatch_uplink_commands_dropped_total` | counter, commands dropped on a full queue (Sparkplug NCMD/DCMD) | `uplink` |
//! | `smeltwatch_uplink_unconfirmed_total` | counter, records sent with nothing to prove they arrived (HJ 212 `ack = false`), not in `_acked_total` | `uplink` |
//! | `smeltwatch_uplink_publish_latency_seconds` | histogram, acquisition (a poll batch's scheduled time; for computed records the time they were spooled) to the acknowledgement (MQTT PUBACK and spool ack, Sparkplug proof, HJ 212 9014) | `uplink` |
//! | `smeltwatch_uplink_in_flight_records` | gauge | `uplink` |
//! | `smeltwatch_uplink_backlog_records`, `smeltwatch_uplink_backlog_oldest_age_seconds`, `smeltwatch_uplink_replay_records_per_second` | gauge | `uplink` |
//! | `smeltwatch_spool_records`, `_bytes`, `_oldest_age_seconds` | gauge | `uplink` |
//! | `smeltwatch_spool_stream_records` | gauge | `uplink`, `stream` |
//! | `smeltwatch_spool_dead_letter_records` | gauge (records set aside, not re-queued) | `uplink` |
//! | `smeltwatch_spool_drops_total` | counter (since start; `rate()` and `increase()` handle the restarts) | `uplink`, `reason` |
//! | `smeltwatch_point_value` | gauge, numeric and finite values only | `device`, `point`, `unit` |
//! | `smeltwatch_point_quality` | gauge (1), one series per point | `device`, `point`, `quality` |
//! | `smeltwatch_point_timestamp_seconds` | gauge, acquisition time | `device`, `point` |
//! | `smeltwatch_stack_limit_mg_m3` | gauge, the concentration limit of a `[[calc.stacks]]` pollutant; `point` is its measured concentration point | `stack`, `pollutant`, `point` |
//! | `smeltwatch_calc_value` | gauge | `calc`, `metric`, `unit`, the metric's own labels |
//! | `smeltwatch_events_total` | counter (since the HTTP server started) | `kind`, `phase` |
//! | `smeltwatch_clock_steps_total` | counter (since start), see [`crate::clock`] | — |
//! | `smeltwatch_completeness_expected_values` | gauge, readings expected so far this hour (`live`) | `device`, `stream`, `hour` |
//! | `smeltwatch_completeness_received_values` | gauge, values received | `device`, `stream`, `quality`, `hour` |
//! | `smeltwatch_completeness_delivered_values` | gauge, values the uplink's broker acknowledged | `device`, `stream`, `uplink`, `hour` |
//! | `smeltwatch_completeness_ratio` | gauge, delivered ÷ expected (`live`) | `device`, `stream`, `uplink`, `hour` |
//! | `smeltwatch_http_connections`, `smeltwatch_http_connections_max` | gauge, connections served now (this scrape's included) and the cap | |
//! | `smeltwatch_http_header_timeouts_total` | counter (since the HTTP server started), connections closed because the request head did not arrive in time | |
//! | `smeltwatch_series`, `smeltwatch_series_refused_total` | gauge, trends kept in memory; counter (since start), trends not kept because their class was full ([`crate::series`]) | |
//!
//! Every name carries its unit (`_seconds`, `_bytes`, `_records`, `_values`, `_ratio`) or is a
//! counter of events (`_total`), a state set (`_state`, `_quality`, `_info`), or a value whose
//! unit is its `unit` label (`smeltwatch_point_value`, `smeltwatch_calc_value`). Renamed in this
//! release, without the old names: `smeltwatch_uplink_replay_rate`,
//! `smeltwatch_uplink_in_flight`, `smeltwatch_spool_dead_letters`, the three
//! `smeltwatch_completeness_*` counts; `smeltwatch_spool_dropped_total` (the life of the spool
//! file) is gone in favour of `smeltwatch_spool_drops_total` (by reason); the request duration
//! `_seconds_total` and `_seconds_mean` gauges are the histogram's `_sum` and `_sum / _count`.
//!
//! The histograms are rendered by [`crate::histogram::render`]: the exporter's histograms take
//! single observations, while these are counted where they happen and only copied here.
//!
//! The completeness families come from [`crate::completeness`] ([`render_completeness`]): `hour` is
//! `current` (the hour so far) or `previous` (the last hour, including deliveries that arrived
//! after it closed). They are gauges: they start again at every hour.
//!
//! [`PollerStats`]: crate::acquisition::PollerStats

use metrics::{Label, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;

use super::snapshot::Snapshot;
use crate::model::Value;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const LINK_STATES: [&str; 5] = [
    "connecting",
    "connected",
    "disconnected",
    "auth_failed",
    "failed",
];

/// Render `snap` in the Prometheus text format.
pub fn render(snap: &Snapshot) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || record(snap));
    let mut out = handle.render();
    render_histograms(&mut out, snap);
    render_points(&mut out, snap);
    out
}

/// The per-point and per-metric families, written directly (see the module docs): one family's
/// series together, as the text format requires, each with its `# HELP` and `# TYPE`.
fn render_points(out: &mut String, snap: &Snapshot) {
    use std::fmt::Write as _;
    let numbers: Vec<(&super::snapshot::PointView, f64)> = snap
        .points
        .iter()
        .filter_map(|p| match &p.value {
            Some(Value::Text(_)) | None => None,
            Some(v) => v.as_f64().filter(|f| f.is_finite()).map(|f| (p, f)),
        })
        .collect();
    family(
        out,
        "smeltwatch_point_value",
        "Latest numeric value of a point, in its unit.",
        numbers.iter().map(|(p, v)| {
            let labels = [
                ("device", &*p.device),
                ("point", &*p.point),
                ("unit", &*p.unit),
            ];
            (labels, *v)
        }),
    );
    family(
        out,
        "smeltwatch_point_quality",
        "1, labelled with the quality of the point's latest reading.",
        snap.points.iter().map(|p| {
            let labels = [
                ("device", &*p.device),
                ("point", &*p.point),
                ("quality", p.quality.as_str()),
            ];
            (labels, 1.0)
        }),
    );
    family(
        out,
        "smeltwatch_point_timestamp_seconds",
        "Acquisition time of the point's latest reading, Unix seconds.",
        snap.points.iter().map(|p| {
            let labels = [("device", &*p.device), ("point", &*p.point)];
            (labels, p.ts_ms as f64 / 1000.0)
        }),
    );
    let values: Vec<_> = snap.metrics.iter().filter(|m| m.value.is_some()).collect();
    if values.is_empty() {
        return;
    }
    let name = "smeltwatch_calc_value";
    let _ = writeln!(
        out,
        "# HELP {name} Latest value of a computed metric (kWh/t, AEM, mass flows...)."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    for m in values {
        out.push_str(name);
        let own: Vec<(String, &str)> = m
            .labels
            .iter()
            .map(|(k, v)| (label_name(k), &**v))
            .collect();
        let fixed = [("calc", &*m.calc), ("metric", &*m.name), ("unit", &*m.unit)];
        let all = fixed
            .iter()
            .copied()
            .chain(own.iter().map(|(k, v)| (k.as_str(), *v)));
        write_labels(out, all);
        let _ = writeln!(out, " {}", m.value.unwrap_or_default());
    }
    out.push('\n');
}

/// One gauge family of `series` (labels, value); nothing when there is no series.
fn family<'a, const N: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    series: impl Iterator<Item = ([(&'a str, &'a str); N], f64)>,
) {
    use std::fmt::Write as _;
    let mut series = series.peekable();
    if series.peek().is_none() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, value) in series {
        out.push_str(name);
        write_labels(out, labels.into_iter());
        let _ = writeln!(out, " {value}");
    }
    out.push('\n');
}

/// `{k="v",…}` with each value escaped for the text format (backslash, double quote, line feed).
fn write_labels<'a>(out: &mut String, labels: impl Iterator<Item = (&'a str, &'a str)>) {
    out.push('{');
    for (i, (k, v)) in labels.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn render_histograms(out: &mut String, snap: &Snapshot) {
    let sources: Vec<_> = snap
        .sources
        .iter()
        .map(|s| (vec![("source", &*s.name)], s.request_duration.clone()))
        .collect();
    crate::histogram::render(
        out,
        "smeltwatch_source_request_duration_seconds",
        "Round-trip time of Modbus read requests, answered or not (a timeout counts its wait).",
        &sources,
    );
    let uplinks: Vec<_> = snap
        .uplinks
        .iter()
        .map(|u| (vec![("uplink", u.name.as_str())], u.publish_latency.clone()))
        .collect();
    crate::histogram::render(
        out,
        "smeltwatch_uplink_publish_latency_seconds",
        "Time from acquisition to the platform's acknowledgement of delivered records.",
        &uplinks,
    );
}

/// The completeness families for `view` (from [`Completeness::live_view`]) in the Prometheus text
/// format, to append to [`render`]'s output.
///
/// [`Completeness::live_view`]: crate::completeness::Completeness::live_view
pub fn render_completeness(view: &[(&str, crate::completeness::Report)]) -> String {
    if view.is_empty() {
        return String::new();
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || record_completeness(view));
    handle.render()
}

/// The HTTP server's own families (see [`super::HttpOptions`]), to append to [`render`]'s output.
pub fn render_http(open: usize, max: usize, header_timeouts: u64) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe_gauge!(
            "smeltwatch_http_connections",
            "HTTP connections being served, this scrape's included."
        );
        describe_gauge!(
            "smeltwatch_http_connections_max",
            "HTTP connections served at once; further clients wait to be accepted."
        );
        describe_counter!(
            "smeltwatch_http_header_timeouts_total",
            "HTTP connections closed because the request head did not arrive in time."
        );
        gauge!("smeltwatch_http_connections").set(open as f64);
        gauge!("smeltwatch_http_connections_max").set(max as f64);
        counter!("smeltwatch_http_header_timeouts_total").absolute(header_timeouts);
    });
    handle.render()
}

/// The series store's size: series kept and series refused by a full class.
pub fn render_series(kept: usize, refused: u64) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe_gauge!(
            "smeltwatch_series",
            "Trends kept in memory for /api/v1/series."
        );
        describe_counter!(
            "smeltwatch_series_refused_total",
            "Trends not kept because their class was full (docs/HTTP.md, Memory)."
        );
        gauge!("smeltwatch_series").set(kept as f64);
        counter!("smeltwatch_series_refused_total").absolute(refused);
    });
    handle.render()
}

fn record_completeness(view: &[(&str, crate::completeness::Report)]) {
    describe_gauge!(
        "smeltwatch_completeness_expected_values",
        "Readings expected from the read plan in the hour so far."
    );
    describe_gauge!(
        "smeltwatch_completeness_received_values",
        "Values that reached fan-out in the hour, by quality."
    );
    describe_gauge!(
        "smeltwatch_completeness_delivered_values",
        "Values of the hour acknowledged by the uplink's broker."
    );
    describe_gauge!(
        "smeltwatch_completeness_ratio",
        "Delivered values of the hour divided by the expected ones."
    );
    for (hour, report) in view {
        for row in &report.rows {
            let (device, stream) = (&*row.device, row.stream.as_str());
            if let Some(e) = row.expected {
                gauge!(
                    "smeltwatch_completeness_expected_values",
                    labels(&[("device", device), ("stream", stream), ("hour", hour)])
                )
                .set(e as f64);
            }
            for (q, n) in &row.received {
                gauge!(
                    "smeltwatch_completeness_received_values",
                    labels(&[
                        ("device", device),
                        ("stream", stream),
                        ("quality", q.as_str()),
                        ("hour", hour)
                    ])
                )
                .set(*n as f64);
            }
            for (uplink, n) in &row.delivered {
                let l = labels(&[
                    ("device", device),
                    ("stream", stream),
                    ("uplink", uplink),
                    ("hour", hour),
                ]);
                gauge!("smeltwatch_completeness_delivered_values", l.clone()).set(*n as f64);
                if let Some(p) = crate::completeness::percent(*n, row.expected) {
                    gauge!("smeltwatch_completeness_ratio", l).set(p / 100.0);
                }
            }
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(k, v)| Label::new((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A Prometheus label name from a metric label key: `[a-zA-Z_][a-zA-Z0-9_]*`, and never one of the
/// labels `smeltwatch_calc_value` sets itself.
fn label_name(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) || name.starts_with("__") {
        name.insert_str(0, "label_");
    }
    if matches!(name.as_str(), "calc" | "metric" | "unit") {
        name.insert_str(0, "label_");
    }
    name
}

/// Sets every series of `snap` on the recorder installed for this scrape.
fn record(snap: &Snapshot) {
    describe();
    gauge!(
        "smeltwatch_build_info",
        labels(&[("version", snap.version)])
    )
    .set(1.0);
    record_sources(snap);
    record_uplinks(snap);
    record_limits_and_events(snap);
    // The process's wall clock: one per machine, so not part of the snapshot.
    counter!("smeltwatch_clock_steps_total").absolute(crate::clock::Clock::system().steps_total());
}

/// Per source: poll counters, read errors by device and kind, readings by quality.
fn record_sources(snap: &Snapshot) {
    for s in &snap.sources {
        let l = labels(&[("source", &s.name)]);
        counter!("smeltwatch_source_cycles_total", l.clone()).absolute(s.cycles);
        counter!("smeltwatch_source_requests_total", l.clone()).absolute(s.requests);
        counter!("smeltwatch_source_comm_failures_total", l.clone()).absolute(s.comm_failures);
        counter!("smeltwatch_source_exceptions_total", l.clone()).absolute(s.exceptions);
        counter!("smeltwatch_source_late_ticks_total", l.clone()).absolute(s.late_ticks);
        counter!("smeltwatch_source_connects_total", l.clone()).absolute(s.connects);
        for (device, e) in &s.device_read_errors {
            for (kind, n) in [
                ("comm_failure", e.comm_failures),
                ("exception", e.exceptions),
            ] {
                counter!(
                    "smeltwatch_device_read_errors_total",
                    labels(&[("source", &s.name), ("device", device), ("kind", kind)])
                )
                .absolute(n);
            }
        }
        for (quality, n) in &s.readings_by_quality {
            counter!(
                "smeltwatch_source_readings_total",
                labels(&[("source", &s.name), ("quality", quality)])
            )
            .absolute(*n);
        }
    }
}

/// Per uplink: connection state, delivery counters and backlog, and its spool if it has one.
fn record_uplinks(snap: &Snapshot) {
    for u in &snap.uplinks {
        let l = labels(&[("uplink", &u.name)]);
        for state in LINK_STATES {
            gauge!(
                "smeltwatch_uplink_state",
                labels(&[("uplink", &u.name), ("state", state)])
            )
            .set(if u.state == state { 1.0 } else { 0.0 });
        }
        counter!("smeltwatch_uplink_acked_total", l.clone()).absolute(u.acked_total);
        counter!("smeltwatch_uplink_rejected_total", l.clone()).absolute(u.rejected_total);
        counter!("smeltwatch_uplink_connects_total", l.clone()).absolute(u.connects);
        counter!("smeltwatch_uplink_commands_dropped_total", l.clone())
            .absolute(u.commands_dropped_total);
        counter!("smeltwatch_uplink_unconfirmed_total", l.clone()).absolute(u.unconfirmed_total);
        counter!("smeltwatch_uplink_restarts_total", l.clone()).absolute(u.restarts);
        gauge!("smeltwatch_uplink_in_flight_records", l.clone()).set(u.in_flight as f64);
        gauge!("smeltwatch_uplink_backlog_records", l.clone()).set(u.backlog_records as f64);
        gauge!("smeltwatch_uplink_backlog_oldest_age_seconds", l.clone())
            .set(u.backlog_oldest_age_s.unwrap_or(0.0));
        gauge!("smeltwatch_uplink_replay_records_per_second", l.clone())
            .set(u.replay_rate_per_s as f64);
        if let Some(spool) = &u.spool {
            gauge!("smeltwatch_spool_records", l.clone()).set(spool.records as f64);
            gauge!("smeltwatch_spool_bytes", l.clone()).set(spool.bytes as f64);
            gauge!("smeltwatch_spool_oldest_age_seconds", l.clone())
                .set(spool.oldest_age_s.unwrap_or(0.0));
            gauge!("smeltwatch_spool_dead_letter_records", l.clone())
                .set(spool.dead_letters as f64);
            let by_reason = &spool.dropped_by_reason;
            for (reason, n) in [
                ("budget", by_reason.budget),
                ("disk_full", by_reason.disk_full),
                ("max_age", by_reason.max_age),
            ] {
                counter!(
                    "smeltwatch_spool_drops_total",
                    labels(&[("uplink", &u.name), ("reason", reason)])
                )
                .absolute(n);
            }
            for (stream, n) in &spool.per_stream {
                gauge!(
                    "smeltwatch_spool_stream_records",
                    labels(&[("uplink", &u.name), ("stream", stream)])
                )
                .set(*n as f64);
            }
        }
    }
}

/// The stacks' configured limits and the events seen.
fn record_limits_and_events(snap: &Snapshot) {
    for l in &snap.stack_limits {
        gauge!(
            "smeltwatch_stack_limit_mg_m3",
            labels(&[
                ("stack", &l.stack),
                ("pollutant", &l.pollutant),
                ("point", &l.point)
            ])
        )
        .set(l.limit_mg_m3);
    }

    for e in &snap.event_counts {
        counter!(
            "smeltwatch_events_total",
            labels(&[("kind", &e.kind), ("phase", e.phase)])
        )
        .absolute(e.count);
    }
}

/// The help text of every metric, in the order `record` sets them.
fn describe() {
    describe_gauge!("smeltwatch_build_info", "Agent version (always 1).");
    describe_sources();
    describe_uplinks();
    describe_spool_limits_and_events();
}

/// Help texts of the per-source metrics.
fn describe_sources() {
    describe_counter!(
        "smeltwatch_source_cycles_total",
        "Device poll cycles completed, successful or not."
    );
    describe_counter!("smeltwatch_source_requests_total", "Modbus requests sent.");
    describe_counter!(
        "smeltwatch_source_comm_failures_total",
        "Requests that timed out or failed in transport."
    );
    describe_counter!(
        "smeltwatch_source_exceptions_total",
        "Requests answered with a Modbus exception."
    );
    describe_counter!(
        "smeltwatch_source_late_ticks_total",
        "Scheduled cycles skipped because earlier work ran past them."
    );
    describe_counter!(
        "smeltwatch_source_connects_total",
        "Connections established."
    );
    describe_counter!(
        "smeltwatch_device_read_errors_total",
        "Failed read requests of a device, by kind (comm_failure, exception)."
    );
    describe_counter!(
        "smeltwatch_source_readings_total",
        "Readings emitted, by quality."
    );
}

/// Help texts of the per-uplink metrics.
fn describe_uplinks() {
    describe_gauge!(
        "smeltwatch_uplink_state",
        "1 for the uplink's current connection state, 0 for the others."
    );
    describe_counter!(
        "smeltwatch_uplink_acked_total",
        "Records acknowledged by the broker and removed from the spool."
    );
    describe_counter!(
        "smeltwatch_uplink_rejected_total",
        "Records dropped because they could not be decoded."
    );
    describe_counter!(
        "smeltwatch_uplink_connects_total",
        "Successful broker connections."
    );
    describe_counter!(
        "smeltwatch_uplink_commands_dropped_total",
        "Commands from the broker dropped because a queue was full."
    );
    describe_counter!(
        "smeltwatch_uplink_unconfirmed_total",
        "Records sent with nothing to prove they arrived (HJ 212 without acknowledgements)."
    );
    describe_counter!(
        "smeltwatch_uplink_restarts_total",
        "Times the uplink task failed and was started again by its supervisor."
    );
    describe_gauge!(
        "smeltwatch_uplink_in_flight_records",
        "Publishes awaiting acknowledgement."
    );
    describe_gauge!(
        "smeltwatch_uplink_backlog_records",
        "Replay backlog: records waiting since before the current connection, not yet acked."
    );
    describe_gauge!(
        "smeltwatch_uplink_backlog_oldest_age_seconds",
        "Age of the oldest backlog record not yet published (0 when drained)."
    );
    describe_gauge!(
        "smeltwatch_uplink_replay_records_per_second",
        "Backlog records acked per second over the last whole second."
    );
}

/// Help texts of the spool, stack limit, event and clock metrics.
fn describe_spool_limits_and_events() {
    describe_gauge!("smeltwatch_spool_records", "Records waiting in the spool.");
    describe_gauge!(
        "smeltwatch_spool_dead_letter_records",
        "Records set aside in the spool's dead-letter table (the broker would not take them)."
    );
    describe_gauge!(
        "smeltwatch_spool_bytes",
        "Topic and body bytes waiting in the spool."
    );
    describe_gauge!(
        "smeltwatch_spool_oldest_age_seconds",
        "Age of the oldest waiting record (0 when empty)."
    );
    describe_gauge!(
        "smeltwatch_spool_stream_records",
        "Records waiting in the spool, by stream."
    );
    describe_counter!(
        "smeltwatch_spool_drops_total",
        "Records the spool dropped since the agent started, by reason (budget, disk_full, max_age)."
    );
    describe_gauge!(
        "smeltwatch_stack_limit_mg_m3",
        "Concentration limit of a stack's pollutant (the coefficient table's limit class), mg/m3."
    );
    describe_counter!(
        "smeltwatch_events_total",
        "Events seen since the HTTP server started."
    );
    describe_counter!(
        "smeltwatch_clock_steps_total",
        "Steps of the wall clock (set forward or back by more than 2 s) since the agent started."
    );
}

#[cfg(test)]
mod tests;
