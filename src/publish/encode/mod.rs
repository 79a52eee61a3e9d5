//! Payload encoders: turn a canonical spooled [`Record`](crate::model::Record) into the bytes an
//! uplink publishes.
//!
//! Encoders are pure (no I/O, no clocks): everything they print comes from their arguments, so
//! the same record always encodes to the same bytes. Each payload carries `(site, stream, seq)` so
//! that consumers can drop duplicates (delivery is at-least-once) and spot gaps.

pub mod hj212;
pub mod json;
pub mod protobuf;
pub mod sparkplug;

use crate::config::{Encoding, Stream};
use crate::model::Record;

/// Encode a record with the uplink's chosen encoding (see [`json::encode_record`] and
/// [`protobuf::encode_record`]).
pub fn encode_record(
    encoding: Encoding,
    site: &str,
    stream: Stream,
    seq: u64,
    record: &Record,
    historical: bool,
) -> Vec<u8> {
    match encoding {
        Encoding::Json => json::encode_record(site, stream, seq, record, historical),
        Encoding::Protobuf => protobuf::encode_record(site, stream, seq, record, historical),
    }
}
