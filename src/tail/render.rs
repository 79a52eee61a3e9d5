//! Draws a [`State`] with ratatui. It reads the state only; the same state always draws the same
//! screen, so tests render into a `TestBackend` and read the buffer.
//!
//! Layout: a title line; the potline KPIs; cells sorted by voltage on the left (anode effects in
//! [`ae_style`], cells out of service or with a bad reading dimmed); on the right the stacks
//! against their limits (a pollutant's measured concentration, and its converted one in the same
//! row as `(zs …)` where the stack publishes one, the limit coloured against the converted one),
//! the uplinks and Sparkplug edge nodes, the derived points seen on the feed (only once one was
//! seen: name, value with its unit, quality, age) and the recent events.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

use crate::model::{EventKind, EventPhase, Timestamp};

use super::state::{State, attribute};

/// Style of a cell in anode effect (and of the AE marker).
pub fn ae_style() -> Style {
    Style::new()
        .fg(Color::White)
        .bg(Color::Red)
        .add_modifier(Modifier::BOLD)
}

/// Style of a value above its limit.
pub fn over_limit_style() -> Style {
    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
}

fn dim() -> Style {
    Style::new().fg(Color::DarkGray)
}

fn label() -> Style {
    Style::new().fg(Color::Cyan)
}

/// Most rows the derived points' block takes.
const DERIVED_ROWS: usize = 10;

/// Width of the ` (zs 1234.56)` text of a converted concentration.
const ZS_WIDTH: usize = 13;

/// `12 345.6`-style grouping is left out on purpose: the figures line up in fixed columns.
fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "–".to_owned(),
    }
}

/// `HH:MM:SS` (UTC) of a timestamp.
pub fn clock(ts: Timestamp) -> String {
    let s = ts.to_rfc3339();
    s.get(11..19).unwrap_or("--:--:--").to_owned()
}

/// Draw the whole screen. `broker` is shown in the title.
pub fn draw(frame: &mut Frame, state: &State, broker: &str) {
    let area = frame.area();
    let kpi_rows = state.lines.len().max(1) as u16 + 2;
    let [title, kpis, body] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(kpi_rows),
        Constraint::Min(3),
    ])
    .areas(area);
    frame.render_widget(title_line(state, broker), title);
    frame.render_widget(kpi_block(state), kpis);

    let [cells, right] =
        Layout::horizontal([Constraint::Length(38), Constraint::Min(20)]).areas(body);
    frame.render_widget(cell_list(state, cells.height.saturating_sub(2)), cells);

    let stack_rows: usize = state
        .stacks
        .values()
        .map(|s| s.pollutants.len() + 1)
        .sum::<usize>()
        .max(1);
    let uplink_rows = (state.uplinks.len() + state.edge_nodes.len()).max(1);
    // The derived block takes no room until a derived point was seen; then at most
    // `DERIVED_ROWS` rows, so the recent events keep theirs.
    let derived_rows = match state.derived.len() {
        0 => 0,
        n => n.min(DERIVED_ROWS) as u16 + 2,
    };
    let [stacks, uplinks, derived, events] = Layout::vertical([
        Constraint::Length(stack_rows as u16 + 2),
        Constraint::Length(uplink_rows as u16 + 2),
        Constraint::Length(derived_rows),
        Constraint::Min(3),
    ])
    .areas(right);
    frame.render_widget(stack_block(state, stacks), stacks);
    frame.render_widget(uplink_block(state), uplinks);
    if derived_rows > 0 {
        frame.render_widget(
            derived_block(state, derived.height.saturating_sub(2)),
            derived,
        );
    }
    frame.render_widget(event_block(state, events.height.saturating_sub(2)), events);
}

fn title_line(state: &State, broker: &str) -> Paragraph<'static> {
    let sites = if state.sites.is_empty() {
        "waiting for data".to_owned()
    } else {
        format!("site {}", state.sites.join(", "))
    };
    let mut spans = vec![
        Span::styled(
            " smeltwatch tail ",
            Style::new().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!("{broker}  {sites}  ")),
        Span::styled(format!("{} msgs", state.messages), dim()),
    ];
    if state.now.0 > 0 {
        spans.push(Span::styled(format!("  {} UTC", clock(state.now)), dim()));
    }
    if state.decode_errors > 0 {
        spans.push(Span::styled(
            format!("  {} undecodable", state.decode_errors),
            over_limit_style(),
        ));
    }
    Paragraph::new(Line::from(spans))
}

fn kpi_block(state: &State) -> Paragraph<'static> {
    let mut lines = Vec::new();
    for (name, k) in &state.lines {
        lines.push(Line::from(vec![
            Span::styled(
                format!("{name:<10} "),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::styled("current ", label()),
            Span::raw(format!("{} kA  ", num(k.line_current_ka, 1))),
            Span::styled("mean cell ", label()),
            Span::raw(format!(
                "{} V  ",
                num(state.mean_cell_voltage(Some(name)), 3)
            )),
            Span::styled("DC ", label()),
            Span::raw(format!("{} kWh/t  ", num(k.dc_kwh_per_t, 0))),
            Span::styled("AC ", label()),
            Span::raw(format!("{} kWh/t  ", num(k.ac_kwh_per_t, 0))),
            Span::styled("today ", label()),
            Span::raw(format!("{} t  ", num(k.production_today_t, 2))),
            Span::styled("capacity use ", label()),
            Span::raw(format!("{} %", num(k.capacity_use_pct, 1))),
        ]));
    }
    if lines.is_empty() {
        let mean = state.mean_cell_voltage(None);
        lines.push(Line::from(vec![
            Span::styled("mean cell ", label()),
            Span::raw(format!("{} V  ", num(mean, 3))),
            Span::styled("(no potline metrics yet)", dim()),
        ]));
    }
    Paragraph::new(lines).block(Block::bordered().title(" Potline "))
}

fn cell_list(state: &State, rows: u16) -> Paragraph<'static> {
    let cells = state.cells_by_voltage();
    let in_ae = cells.iter().filter(|c| c.anode_effect()).count();
    let mut lines = Vec::new();
    for c in cells.iter().take(usize::from(rows)) {
        let name = c.key.rsplit('/').next().unwrap_or(&c.key).to_owned();
        let v = format!("{:>7} V", num(c.voltage_v, 3));
        let line = if c.anode_effect() {
            Line::from(vec![
                Span::styled(format!("{name:<12}{v} "), ae_style()),
                Span::styled(" ANODE EFFECT ", ae_style()),
            ])
        } else if !c.in_service() {
            Line::from(Span::styled(format!("{name:<12}{v}  cut out"), dim()))
        } else if !c.shown_quality(state.readings_now).is_good() {
            Line::from(vec![
                Span::raw(format!("{name:<12}{v}  ")),
                Span::styled(
                    c.shown_quality(state.readings_now).as_str().to_owned(),
                    Style::new().fg(Color::Yellow),
                ),
            ])
        } else {
            Line::from(format!("{name:<12}{v}"))
        };
        lines.push(line);
    }
    let title = format!(" Cells by voltage ({} · {in_ae} AE) ", cells.len());
    Paragraph::new(lines).block(Block::bordered().title(title))
}

fn stack_block(state: &State, area: Rect) -> Paragraph<'static> {
    // Name 14, value 9, "/ limit" 10, gauge, mass flow 12.
    let gauge_width = usize::from(area.width)
        .saturating_sub(2 + 14 + 26 + 14)
        .clamp(0, 30);
    let mut lines = Vec::new();
    for (name, s) in &state.stacks {
        lines.push(Line::from(vec![
            Span::styled(name.clone(), Style::new().add_modifier(Modifier::BOLD)),
            Span::styled(format!("  flow {} m3/h", num(s.flow_m3h, 0)), dim()),
        ]));
        // A stack with converted concentrations shows them in a `zs` column beside the measured
        // ones; the limit, its colour and its gauge go with the converted value.
        let zs_column = s.pollutants.values().any(|q| q.has_zs());
        let gauge_width = if zs_column {
            gauge_width.saturating_sub(ZS_WIDTH)
        } else {
            gauge_width
        };
        for (p, q) in &s.pollutants {
            let checked = q.checked_mg_m3();
            let over = matches!((checked, q.limit_mg_m3), (Some(c), Some(l)) if c > l);
            let value_style = if over {
                over_limit_style()
            } else {
                Style::new()
            };
            let mut spans = vec![Span::raw(format!("  {p:<12}"))];
            if q.has_zs() {
                spans.push(Span::raw(format!("{:>9}", num(q.conc_mg_m3, 2))));
                spans.push(Span::raw(" (zs "));
                spans.push(Span::styled(
                    format!("{:>7}", num(q.zs_mg_m3, 2)),
                    value_style,
                ));
                spans.push(Span::raw(")"));
            } else {
                spans.push(Span::styled(
                    format!("{:>9}", num(q.conc_mg_m3, 2)),
                    value_style,
                ));
                if zs_column {
                    spans.push(Span::raw(" ".repeat(ZS_WIDTH)));
                }
            }
            spans.push(Span::raw(format!(" / {:<7} mg/m3 ", num(q.limit_mg_m3, 0))));
            if let (Some(c), Some(l)) = (checked, q.limit_mg_m3)
                && l > 0.0
                && gauge_width > 0
            {
                let filled = ((c / l).clamp(0.0, 1.0) * gauge_width as f64).round() as usize;
                let bar = if over {
                    over_limit_style()
                } else if c >= 0.8 * l {
                    Style::new().fg(Color::Yellow)
                } else {
                    Style::new().fg(Color::Green)
                };
                spans.push(Span::styled("█".repeat(filled), bar));
                spans.push(Span::styled("░".repeat(gauge_width - filled), dim()));
                spans.push(Span::raw(format!(" {:>3.0}%", 100.0 * c / l)));
            }
            spans.push(Span::raw(format!("  {} kg/h", num(q.mass_kg_h, 3))));
            if let Some(quality) = q.quality
                && !quality.is_good()
            {
                spans.push(Span::styled(
                    format!("  {quality}"),
                    Style::new().fg(Color::Yellow),
                ));
            }
            if q.exceedances > 0 {
                spans.push(Span::styled(
                    format!("  {} h over", q.exceedances),
                    over_limit_style(),
                ));
            }
            lines.push(Line::from(spans));
        }
    }
    if lines.is_empty() {
        lines.push(Line::from(Span::styled("no stack aggregates yet", dim())));
    }
    Paragraph::new(lines).block(Block::bordered().title(" Stacks (minute averages vs limits) "))
}

fn uplink_block(state: &State) -> Paragraph<'static> {
    let mut lines = Vec::new();
    for (key, u) in &state.uplinks {
        let mut spans = vec![Span::raw(format!("{key:<28} "))];
        if let Some(st) = &u.status {
            let style = if st.state == "online" {
                Style::new().fg(Color::Green)
            } else {
                over_limit_style()
            };
            spans.push(Span::styled(st.state.clone(), style));
            if let Some(since) = &st.since {
                spans.push(Span::raw(format!(" since {since}")));
            }
            if let Some(v) = &st.version {
                spans.push(Span::styled(format!(" v{v}"), dim()));
            }
        } else {
            let replaying = u
                .last_historical
                .is_some_and(|t| state.now.0.saturating_sub(t.0) < 60_000);
            if u.historical_records > 0 {
                spans.push(Span::styled(
                    format!(
                        "backlog replayed: {} historical records{}",
                        u.historical_records,
                        if replaying { " (replaying)" } else { "" }
                    ),
                    Style::new().fg(Color::Yellow),
                ));
            } else {
                spans.push(Span::styled(
                    "live, no backlog replayed",
                    Style::new().fg(Color::Green),
                ));
            }
            if let Some(o) = &u.last_outage {
                spans.push(Span::raw(format!(
                    "  last outage {} s, {} dropped",
                    num(attribute(o, "duration_s"), 0),
                    num(attribute(o, "dropped_total"), 0)
                )));
            }
            if u.seq_gaps > 0 {
                spans.push(Span::styled(
                    format!("  {} seq missing", u.seq_gaps),
                    Style::new().fg(Color::Yellow),
                ));
            }
        }
        lines.push(Line::from(spans));
    }
    for (key, n) in &state.edge_nodes {
        let (text, style) = if n.online {
            ("online", Style::new().fg(Color::Green))
        } else {
            ("offline", over_limit_style())
        };
        let mut spans = vec![
            Span::raw(format!("{:<28} ", format!("spB {key}"))),
            Span::styled(text, style),
            Span::raw(format!(
                " bdSeq {} · {} devices born",
                n.bd_seq.map_or("–".to_owned(), |b| b.to_string()),
                n.devices_online
            )),
        ];
        if n.unresolved > 0 {
            spans.push(Span::styled(
                format!("  {} metrics awaiting a birth", n.unresolved),
                Style::new().fg(Color::Yellow),
            ));
        }
        lines.push(Line::from(spans));
    }
    if lines.is_empty() {
        lines.push(Line::from(Span::styled("no status seen yet", dim())));
    }
    Paragraph::new(lines).block(Block::bordered().title(" Uplinks "))
}

/// A derived value with the decimals its size calls for (`400.3`, `4.063`, `12876`).
fn derived_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.abs() >= 1000.0 => num(v, 0),
        Some(x) if x.abs() >= 100.0 => num(v, 1),
        _ => num(v, 3),
    }
}

/// Time from `ts` to `now`: `12s`, `5m`, `3h`.
fn age(now: Timestamp, ts: Timestamp) -> String {
    let s = now.0.saturating_sub(ts.0).max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// The derived points seen on the feed: name, value with its unit, quality (a bad one in
/// [`over_limit_style`]) and age against the newest time seen.
fn derived_block(state: &State, rows: u16) -> Paragraph<'static> {
    let mut lines = Vec::new();
    for (key, d) in state.derived.iter().take(usize::from(rows)) {
        let quality = d.quality.to_string();
        let quality_style = if d.quality.is_good() {
            dim()
        } else {
            over_limit_style()
        };
        lines.push(Line::from(vec![
            Span::raw(format!("{key:<28} ")),
            Span::raw(format!("{:>10} {:<6} ", derived_num(d.value), d.unit)),
            Span::styled(format!("{quality:<14} "), quality_style),
            Span::styled(age(state.now, d.ts), dim()),
        ]));
    }
    let title = if state.derived.len() > usize::from(rows) {
        format!(" Derived points ({} of {}) ", rows, state.derived.len())
    } else {
        " Derived points ".to_owned()
    };
    Paragraph::new(lines).block(Block::bordered().title(title))
}

fn event_block(state: &State, rows: u16) -> Paragraph<'static> {
    let mut lines = Vec::new();
    for e in state.events.iter().take(usize::from(rows)) {
        let ev = &e.event;
        let phase = match ev.phase {
            EventPhase::Start => "start",
            EventPhase::End => "end",
            EventPhase::Instant => "",
        };
        let kind_style = match (&ev.kind, ev.phase) {
            (EventKind::AnodeEffect, EventPhase::Start) => ae_style(),
            (EventKind::Exceedance | EventKind::Outage, _) => over_limit_style(),
            _ => label(),
        };
        let mut spans = vec![
            Span::styled(format!("{} ", clock(ev.ts)), dim()),
            Span::styled(ev.kind.to_string(), kind_style),
            Span::raw(format!(" {phase:<5} {:<22} ", ev.subject)),
            Span::raw(ev.message.clone()),
        ];
        if e.historical {
            spans.push(Span::styled(" (historical)", dim()));
        }
        lines.push(Line::from(spans));
    }
    if lines.is_empty() {
        lines.push(Line::from(Span::styled("no events yet", dim())));
    }
    Paragraph::new(lines).block(Block::bordered().title(" Recent events "))
}
