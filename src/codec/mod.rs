//! The codec: pure encoders and decoders between a spooled [`Record`](crate::model::Record) and
//! the bytes an uplink publishes or a consumer reads (JSON, protobuf, Sparkplug B, HJ 212), the
//! spool body, and the topic templates.
//!
//! Encoders are pure (no I/O, no clocks): everything they print comes from their arguments, so
//! the same record always encodes to the same bytes. Each payload carries `(site, stream, seq)` so
//! that consumers can drop duplicates (delivery is at-least-once) and spot gaps.

pub mod batch_view;
pub mod body;
pub mod hj212;
pub mod hj212_message;
pub mod json;
pub mod protobuf;
pub mod seal;
pub mod sparkplug;
#[cfg(test)]
mod test_fixtures;
pub mod topic;

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
        // HJ 212 text needs a station header and makes one message of a window's records: the
        // MQTT uplink encodes it with `hj212_message` before reaching here. A caller without a
        // station gets the self-describing JSON form, never a packet with an empty header.
        Encoding::Json | Encoding::Hj212 => {
            json::encode_record(site, stream, seq, record, historical)
        }
        Encoding::Protobuf => protobuf::encode_record(site, stream, seq, record, historical),
    }
}

/// [`encode_record`] for a record that may carry a ledger seal: the JSON payload gets a trailing
/// `"ledger"` object, the protobuf envelope its `ledger` field (see [`seal`]).
pub fn encode_sealed(
    encoding: Encoding,
    site: &str,
    stream: Stream,
    seq: u64,
    record: &Record,
    historical: bool,
    seal: Option<&crate::ledger::LedgerRecord>,
) -> Vec<u8> {
    let Some(seal) = seal else {
        return encode_record(encoding, site, stream, seq, record, historical);
    };
    // The seal goes out with the signature of the label the record is sent with.
    let seal = &seal.delivered(historical);
    match encoding {
        Encoding::Json | Encoding::Hj212 => seal::seal_json_payload(
            json::encode_record(site, stream, seq, record, historical),
            seal,
        ),
        Encoding::Protobuf => {
            use prost::Message as _;
            let mut envelope = protobuf::envelope(site, stream, seq, record, historical);
            envelope.ledger = Some(seal::seal_pb(seal));
            envelope.encode_to_vec()
        }
    }
}
