//! smeltwatch: the edge daemon for aluminium potlines and copper smelters.
//!
//! ```text
//!  controllers (Modbus TCP / RTU / RTU-over-TCP)
//!         │  modbus::poller: planned reads, timestamps at acquisition, quality per value
//!         ▼
//!    ReadingBatch ──► fanout ──► spool (one durable queue per uplink: record log + SQLite)
//!                                        │ a record leaves only when its uplink acks it
//!                                        ▼
//!                                  uplink::mqtt (QoS 1, PUBACK → spool ack)
//! ```
//!
//! # Layout
//! - [`config`]: the TOML schema, templates, CSV register maps and validation with located errors.
//! - [`calc`]: pure calculators (potline energy, anode effects, emissions, windows, limits,
//!   tariff) that turn readings into metrics, events and aggregates.
//! - [`model`]: readings, quality codes, timestamps, records.
//! - [`modbus`]: the pure read planner and decoder, and the poller task (one per connection).
//! - [`dlt645`]: DL/T 645 energy meters (2007 and 1997): the frame codec and value formats.
//! - [`simulator`]: Modbus TCP servers that behave like a potline, a copper smelter and a stack
//!   CEMS, with fault injection; used by `demo`, tests and benchmarks.
//! - [`spool`]: the durable per-uplink queue.
//! - [`completeness`]: per device, stream and hour: values expected, received and delivered
//!   (acknowledged by each uplink's broker), reported on the `metrics` stream.
//! - [`history`]: closed windows, potline figures and the ledger chain, for history requests
//!   and restarts.
//! - [`mqtt`]: MQTT client settings shared by the uplinks, `tail` and `verify` (TLS, subscribers).
//! - [`codec`]: pure payload encoders and decoders (JSON, protobuf, Sparkplug B, HJ 212), the
//!   spool body and topic templates.
//! - [`uplink`]: the MQTT, Sparkplug B and HJ 212 uplinks.
//! - [`series`]: the trends in memory (bounded rings per series) behind `/api/v1/series`.
//! - [`http`]: `/metrics` (Prometheus), health checks, the JSON snapshot and event stream, and
//!   the control-room dashboard.
//! - [`tail`]: `smeltwatch tail`, the operators' live view of a broker (JSON, protobuf,
//!   Sparkplug B), as a terminal screen or one line per message.
//! - [`acquisition`]: what every poller shares: the deadline schedule, the circuit breaker and
//!   the reconnect backoff.
//! - [`clock`]: wall-clock step detection, shared by the pollers and the spools.
//! - [`live`]: the live state the HTTP side doors read (latest readings, uplink views, health).
//! - [`fanout`]: the task between the pollers and the spools (calculators, derived points,
//!   history and ledger, group commit).
//! - [`app`]: the only place that wires components together and owns shutdown.
#![warn(missing_docs, unreachable_pub)]

pub mod acquisition;
pub mod app;
pub mod audit;
#[cfg(feature = "demo-broker")]
pub mod broker;
pub mod calc;
pub mod cli;
pub mod clock;
pub mod codec;
pub mod completeness;
pub mod config;
pub mod derived;
pub mod dlt645;
pub mod fanout;
pub mod histogram;
pub mod history;
pub mod http;
pub mod ledger;
pub mod live;
pub mod logging;
pub mod modbus;
pub mod model;
pub mod mqtt;
pub mod series;
pub mod simulator;
pub mod spool;
pub mod state_file;
pub mod tail;
pub mod uplink;
