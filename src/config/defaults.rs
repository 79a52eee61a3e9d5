//! Default values of the configuration keys, named once so that the documentation, the validation
//! and the components that take these settings cannot drift apart.

use std::time::Duration;

pub(crate) const STATE_DIR: &str = "state";
/// The top-level `stall_after`: how long a pipeline stage may go without progress before it
/// counts as stalled.
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(60);
pub(crate) const TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const RECONNECT_MIN: Duration = Duration::from_millis(200);
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(30);
pub(crate) const BREAKER_FAILURES: u32 = 3;
pub(crate) const BREAKER_PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// A DCMD's timestamp may be this far from the gateway's clock: room for a host's and the
/// broker's delays and a few seconds of clock difference, not for a replayed command.
pub(crate) const MAX_COMMAND_AGE: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_POLL: Duration = Duration::from_secs(1);
pub(crate) const MAX_REGISTERS_PER_READ: u16 = 125;
pub(crate) const MAX_BITS_PER_READ: u16 = 2000;
pub(crate) const MAX_GAP_REGISTERS: u16 = 8;
pub(crate) const RTU_GAP_MIN: Duration = Duration::from_millis(2);
pub(crate) const RTU_OVER_TCP_GAP: Duration = Duration::from_millis(5);
pub(crate) const BAUD: u32 = 19200;
pub(crate) const DATA_BITS: u8 = 8;
pub(crate) const STOP_BITS: u8 = 1;
pub(crate) const FIRST_INDEX: u32 = 1;
pub(crate) const UNIT_ID_STEP: i64 = 1;
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);
pub(crate) const MAX_PACKET_SIZE: u64 = 1024 * 1024;
/// Publishes awaiting PUBACK. After an outage the backlog drains through this window: 64 held the
/// replay to about 14,600 batches a second on a 2-core gateway, 128 and more to about 20,000
/// (docs/PERFORMANCE.md, "Fixed: the replay decoded every batch"), and 256 unacked payloads of
/// about 11 kB hold under 3 MB. MQTT 3.1.1 brokers set no limit on a client's in-flight QoS 1
/// publishes.
pub(crate) const MAX_INFLIGHT: u32 = 256;
pub(crate) const REPLAY_RATE: u32 = 2000;
pub(crate) const MQTT_RECONNECT_MIN: Duration = Duration::from_millis(500);
pub(crate) const MQTT_RECONNECT_MAX: Duration = Duration::from_secs(30);
pub(crate) const HTTP_PORT: u16 = 9187;
pub(crate) const HJ212_TABLE: &str = "hj212-2017";
pub(crate) const HJ212_ST: u16 = 31;
pub(crate) const HJ212_UTC_OFFSET_HOURS: i32 = 8;
pub(crate) const HJ212_OVER_TIME: Duration = Duration::from_secs(5);
pub(crate) const HJ212_RE_COUNT: u32 = 3;
pub(crate) const HJ212_MAX_WAIT: Duration = Duration::from_secs(30 * 60);
pub(crate) const HJ212_RECONNECT_MIN: Duration = Duration::from_secs(1);
pub(crate) const HJ212_RECONNECT_MAX: Duration = Duration::from_secs(60);
pub(crate) const HISTORY_FILE: &str = "history.db";
pub(crate) const MINUTE_RETENTION: Duration = Duration::from_secs(7 * 86_400);
pub(crate) const HOUR_RETENTION: Duration = Duration::from_secs(400 * 86_400);
pub(crate) const DAY_RETENTION: Duration = Duration::from_secs(3653 * 86_400);
