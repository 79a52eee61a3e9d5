//! The operators' side doors over HTTP: Prometheus metrics, health checks, a JSON snapshot, a
//! server-sent event stream and the control-room dashboard.
//!
//! ```text
//! LiveState (latest readings, poller stats, uplink status + spool) ──┐
//! LiveState::records (broadcast of metrics/events) ──► collector ───┤ gathered per request
//!                                                                    ▼
//!        /metrics  /readyz  /api/v1/snapshot  /api/v1/stream  /   (+ /healthz, no auth)
//! ```
//!
//! # Routes
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok` while the process serves requests; never needs the token |
//! | `GET /readyz` | `200` when every source completed a poll cycle, every uplink is connected or spooling without having dropped records since the server started, no stage went without progress for `stall_after` and no store is failing (`live::health`); otherwise `503`. The body is JSON `{ready, reasons[]}` either way |
//! | `GET /metrics` | Prometheus text format 0.0.4 (see [`metrics`] for every family) |
//! | `GET /api/v1/snapshot` | JSON [`Snapshot`]: every point's latest value, unit, quality and time (quality `stale` when a good reading is older than three of its poll intervals); computed metrics; recent events; sources; uplinks with spool stats |
//! | `GET /api/v1/stream` | server-sent events: one `snapshot` event (a full [`Snapshot`]), then once a second a `delta` event ([`Delta`]): the points whose time, quality or value changed since the previous event, computed metrics that changed, new events, and the sources and uplinks in full. A comment line keeps idle proxies open. The stream ends when the server shuts down |
//! | `GET /api/v1/series` | JSON trends of one or more series over a time range, downsampled to `max_points` ([`series`]; docs/HTTP.md); `400` with `{error}` for a bad query |
//! | `GET /api/v1/series/names` | JSON: every series kept in memory, with unit, class and limits |
//! | `GET /vendor/uPlot.*` | the charting library, compiled into the binary |
//! | `GET /` | the dashboard, one HTML page that loads only the bundled uPlot, polling the snapshot and the series |
//!
//! # Token
//! With [`HttpOptions::token`] set, every route except `/healthz` needs either
//! `Authorization: Bearer <token>` (scripts, Prometheus' `authorization` scrape option) or HTTP
//! Basic with the token as password and any user name (so that a browser can open the dashboard:
//! it prompts once and then sends the credentials with the page's own requests). Anything else is
//! answered `401` with a `WWW-Authenticate` challenge. Tokens are compared in constant time and are
//! never logged.
//!
//! # Invariants
//! - No lock on [`LiveState`] is held across an `.await`; spool statistics are asked with a
//!   timeout so that a busy disk cannot hang a scrape.
//! - `/metrics` renders from a fresh recorder per scrape ([`metrics::render`]): no global recorder
//!   is installed and no series outlives the state it describes.
//! - [`serve`] returns only after the listener closed and every open connection ended (event
//!   streams end when the server shuts down).
//!
//! # Limits
//! A connection whose request head does not arrive within [`HEADER_READ_TIMEOUT`] is closed, and
//! at most [`MAX_CONNECTIONS`] connections are served at once; the server is served with hyper
//! directly because `axum::serve` offers neither.

pub mod metrics;
pub mod series;
pub mod snapshot;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Secret;
use crate::live::LiveState;

pub use crate::live::feed::{Collected, RecordFeed};
pub use snapshot::{Delta, Snapshot};

/// The dashboard page, served as is.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");
/// uPlot, the dashboard's charting library, compiled in (no CDN: plant networks are isolated);
/// version and origin in `vendor/uplot/README.md`.
const UPLOT_JS: &str = include_str!("vendor/uplot/uPlot.iife.min.js");
/// uPlot's style sheet.
const UPLOT_CSS: &str = include_str!("vendor/uplot/uPlot.min.css");
/// Interval between two `delta` events of `/api/v1/stream`.
pub const STREAM_INTERVAL: Duration = Duration::from_secs(1);

/// How long a client may take to send a request head (request line and headers), counted from
/// the moment the server waits for it: on a new connection and between two requests of a
/// kept-alive one. A client that is slower is disconnected, so that idle or hostile connections
/// cannot hold [`MAX_CONNECTIONS`] slots for long. Request bodies and responses (the event
/// stream) are not bounded by it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once. Further clients wait in the listen backlog, unaccepted, until a
/// connection ends; a probe of `/healthz` waits at most [`HEADER_READ_TIMEOUT`] for a slot unless
/// every slot holds a request in progress (an open event stream).
pub const MAX_CONNECTIONS: usize = 64;

/// Options of the HTTP server that do not come from [`LiveState`].
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Bearer token required on every route but `/healthz`; `None` leaves them open (the default
    /// bind address is loopback).
    pub token: Option<Secret>,
    /// See [`HEADER_READ_TIMEOUT`] (the default).
    pub header_read_timeout: Duration,
    /// See [`MAX_CONNECTIONS`] (the default); at least 1.
    pub max_connections: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            token: None,
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// What can stop the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listener failed while serving.
    #[error("http server on {addr}: {source}")]
    Serve {
        /// The local address, or `unknown`.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Shared by every request.
struct Ctx {
    live: Arc<LiveState>,
    token: Option<Secret>,
    collected: Arc<Mutex<Collected>>,
    /// Spool `dropped` counters when the server started: readiness fails if they grow.
    dropped_at_start: HashMap<String, u64>,
    shutdown: CancellationToken,
    /// One permit per connection served ([`HttpOptions::max_connections`]).
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// Connections closed because their request head did not arrive in time.
    header_timeouts: AtomicU64,
}

/// Serve the side doors on `listener` until `shutdown` fires.
///
/// Binding is the caller's job (default `127.0.0.1:9187`). Also runs the collector that keeps the
/// latest computed metrics and the recent events from [`LiveState::records`]; it stops with the
/// server.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<LiveState>,
    opts: HttpOptions,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "unknown".to_owned(), |a| a.to_string());
    let collected = Arc::new(Mutex::new(Collected::default()));
    let collector = tokio::spawn(crate::live::feed::collect(
        state.records.subscribe(),
        collected.clone(),
        shutdown.clone(),
    ));
    let dropped_at_start = snapshot::spool_dropped(&state).await;
    let ctx = Arc::new(Ctx {
        live: state,
        token: opts.token,
        collected,
        dropped_at_start,
        shutdown: shutdown.clone(),
        slots: Arc::new(Semaphore::new(opts.max_connections.max(1))),
        max_connections: opts.max_connections.max(1),
        header_timeouts: AtomicU64::new(0),
    });
    let app = router(ctx.clone());
    tracing::info!(%addr, "http: serving /metrics, /healthz, /readyz, /api/v1, dashboard");
    let connections = TaskTracker::new();
    loop {
        // The slot is taken before the connection is accepted: beyond the cap, clients wait in
        // the listen backlog instead of being accepted and left unanswered.
        let slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            slot = ctx.slots.clone().acquire_owned() => slot.expect("the slot semaphore is never closed"),
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, _peer)) => {
                let (app, ctx) = (app.clone(), ctx.clone());
                let timeout = opts.header_read_timeout;
                connections.spawn(async move {
                    serve_connection(tcp, app, timeout, &ctx).await;
                    drop(slot);
                });
            }
            // The client gave up between its connect and the accept.
            Err(e) if is_connection_error(&e) => {}
            // Out of file descriptors and the like: wait for connections to end rather than spin.
            Err(e) => {
                tracing::error!(%addr, "http: accept failed: {e}");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    // The collector watches the same token; it was cancelled for the loop to end.
    if let Err(e) = collector.await {
        tracing::error!("http: record collector failed: {e}");
    }
    Ok(())
}

/// Serve one connection until the client closes it, it breaks, or the server shuts down: then the
/// request in progress is finished (event streams end on the same token) and the connection is
/// closed.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    app: Router,
    header_read_timeout: Duration,
    ctx: &Ctx,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = ctx.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    match served {
        Ok(()) => {}
        Err(e) if e.is_timeout() => {
            ctx.header_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("http: client sent no complete request head in time; disconnected");
        }
        Err(e) => tracing::debug!("http: connection ended: {e}"),
    }
}

/// Errors of one incoming connection, not of the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(prometheus))
        .route("/readyz", get(readyz))
        .route("/api/v1/snapshot", get(snapshot_json))
        .route("/api/v1/stream", get(stream))
        .route("/api/v1/series", get(series::series))
        .route("/api/v1/series/names", get(series::names))
        .route("/vendor/uPlot.iife.min.js", get(uplot_js))
        .route("/vendor/uPlot.min.css", get(uplot_css))
        .layer(middleware::from_fn_with_state(ctx.clone(), require_token))
        // Added after the layer: not behind the token.
        .route("/healthz", get(healthz))
        .with_state(ctx)
}

async fn require_token(State(ctx): State<Arc<Ctx>>, req: Request, next: Next) -> Response {
    match &ctx.token {
        Some(token) if !authorised(req.headers(), &token.0) => {
            let mut resp =
                (StatusCode::UNAUTHORIZED, "a valid token is required\n").into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="smeltwatch", charset="UTF-8""#),
            );
            resp
        }
        _ => next.run(req).await,
    }
}

/// Whether the request carries `token` as a bearer token or as the password of HTTP Basic.
fn authorised(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return constant_time_eq(rest.as_bytes(), token.as_bytes());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Some(decoded) = base64_decode(rest) else {
            return false;
        };
        let password = match decoded.iter().position(|&b| b == b':') {
            Some(i) => &decoded[i + 1..],
            None => return false,
        };
        return constant_time_eq(password, token.as_bytes());
    }
    false
}

/// Equality whose time depends on the lengths only, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Standard base64 (RFC 4648 §4, padding optional); `None` on any other character.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= sextet(c)? << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        out.extend_from_slice(&acc.to_be_bytes()[1..=n]);
    }
    Some(out)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD_HTML,
    )
        .into_response()
}

/// The bundled files change only with the binary: a day of caching spares the plant network.
async fn uplot_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        UPLOT_JS,
    )
        .into_response()
}

async fn uplot_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        UPLOT_CSS,
    )
        .into_response()
}

async fn prometheus(State(ctx): State<Arc<Ctx>>) -> Response {
    let snap = Snapshot::gather(&ctx.live, &ctx.collected).await;
    let mut text = metrics::render(&snap);
    let view = ctx
        .live
        .completeness
        .live_view(crate::model::Timestamp(snap.ts_ms));
    text.push_str(&metrics::render_completeness(&view));
    text.push_str(&ctx.live.health.render_metrics());
    let open = ctx.max_connections - ctx.slots.available_permits();
    text.push_str(&metrics::render_http(
        open,
        ctx.max_connections,
        ctx.header_timeouts.load(Ordering::Relaxed),
    ));
    text.push_str(&metrics::render_series(
        ctx.live.series.len(),
        ctx.live.series.refused(),
    ));
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        Body::from(text),
    )
        .into_response()
}

async fn snapshot_json(State(ctx): State<Arc<Ctx>>) -> Response {
    let snap = Snapshot::gather(&ctx.live, &ctx.collected).await;
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(snap)).into_response()
}

async fn readyz(State(ctx): State<Arc<Ctx>>) -> Response {
    let snap = Snapshot::gather(&ctx.live, &ctx.collected).await;
    let mut verdict = snapshot::readiness(&snap, &ctx.dropped_at_start);
    // Stalled stages and failing stores (`live::health`).
    verdict.reasons.extend(ctx.live.problems());
    verdict.ready = verdict.reasons.is_empty();
    let code = if verdict.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(verdict)).into_response()
}

async fn stream(State(ctx): State<Arc<Ctx>>) -> Response {
    struct StreamState {
        ctx: Arc<Ctx>,
        interval: tokio::time::Interval,
        last: Option<Snapshot>,
    }
    let mut interval = tokio::time::interval(STREAM_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let init = StreamState {
        ctx,
        interval,
        last: None,
    };
    let events = futures_util::stream::unfold(init, |mut st| async move {
        tokio::select! {
            _ = st.ctx.shutdown.cancelled() => return None,
            _ = st.interval.tick() => {}
        }
        let snap = Snapshot::gather(&st.ctx.live, &st.ctx.collected).await;
        let event = match &st.last {
            None => SseEvent::default().event("snapshot").json_data(&snap),
            Some(prev) => SseEvent::default()
                .event("delta")
                .json_data(Delta::between(prev, &snap)),
        };
        st.last = Some(snap);
        Some((event, st))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The potline metric names the dashboard's script asks for are the ones the calculators
    /// emit (`calc::names`): the trend series `metric:potline/<name>`, and the energy tiles'
    /// `<dc|ac>` + `_kwh_per_t_today` / `_kwh_per_t`.
    #[test]
    fn the_dashboard_asks_for_metric_names_the_calculators_emit() {
        use crate::calc::names;
        let emitted = |name: &str| names::POTLINE_METRICS.contains(&name);
        let prefix = format!("metric:{}/", names::POTLINE);
        let mut asked = Vec::new();
        for (i, _) in DASHBOARD_HTML.match_indices(&prefix) {
            let rest = &DASHBOARD_HTML[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            asked.push(rest[..end].to_owned());
        }
        let tile_suffixes = ["_kwh_per_t_today", "_kwh_per_t"];
        for suffix in tile_suffixes {
            assert!(
                DASHBOARD_HTML.contains(&format!("kind + \"{suffix}\"")),
                "the energy tile no longer builds its names from `kind + \"{suffix}\"`"
            );
        }
        for kind in ["dc", "ac"] {
            assert!(DASHBOARD_HTML.contains(&format!("energyTile(snap, \"{kind}\")")));
            asked.extend(tile_suffixes.iter().map(|s| format!("{kind}{s}")));
        }
        assert!(asked.len() >= 6, "found only {asked:?}");
        for name in &asked {
            assert!(
                emitted(name),
                "the dashboard asks for `{name}`, which no calculator emits"
            );
        }
    }

    /// The `period` the energy tiles' fallback matches (`m.labels.period === "day"` on
    /// `<dc|ac>_kwh_per_t`) is one the calculators emit those figures for (`calc::catalog`).
    #[test]
    fn the_dashboard_matches_a_period_the_calculators_emit_the_tiles_figures_for() {
        use crate::calc::{catalog, names};
        let prefix = "labels.period === \"";
        let mut matched = Vec::new();
        for (i, _) in DASHBOARD_HTML.match_indices(prefix) {
            let rest = &DASHBOARD_HTML[i + prefix.len()..];
            matched.push(&rest[..rest.find('"').unwrap_or(rest.len())]);
        }
        assert!(!matched.is_empty(), "the dashboard matches no period label");
        for name in [names::DC_KWH_PER_T, names::AC_KWH_PER_T] {
            let periods = catalog::periods(names::POTLINE, name);
            for &period in &matched {
                assert!(
                    periods.contains(&Some(period)),
                    "the dashboard matches {name} of period {period:?}, which is not emitted"
                );
            }
        }
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_and_basic_carry_the_token() {
        assert!(authorised(&headers("Bearer s3cret"), "s3cret"));
        assert!(authorised(&headers("bearer  s3cret "), "s3cret"));
        assert!(!authorised(&headers("Bearer s3cre"), "s3cret"));
        assert!(!authorised(&headers("Bearer s3cretx"), "s3cret"));
        // "operator:s3cret" in base64.
        assert!(authorised(&headers("Basic b3BlcmF0b3I6czNjcmV0"), "s3cret"));
        // ":s3cret"
        assert!(authorised(&headers("Basic OnMzY3JldA=="), "s3cret"));
        // "s3cret" without a colon is not a Basic credential.
        assert!(!authorised(&headers("Basic czNjcmV0"), "s3cret"));
        assert!(!authorised(&headers("Token s3cret"), "s3cret"));
        assert!(!authorised(&HeaderMap::new(), "s3cret"));
    }

    #[test]
    fn base64_decodes_rfc4648_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_decode(coded).unwrap(), plain.as_bytes(), "{coded}");
        }
        assert_eq!(base64_decode("Z"), None);
        assert_eq!(base64_decode("Zm9v!"), None);
    }
}
