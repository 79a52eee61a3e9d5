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

/// The header every payload carries around its record, in every encoding: what a consumer keys
/// on to drop the duplicates of at-least-once delivery and to spot gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The site identifier (`site`): which smelter sent the payload, as configured.
    pub site: &'a str,
    /// The stream the record belongs to (`stream`: `live`, `metrics`, `events`, `emissions`).
    pub stream: Stream,
    /// The record's sequence number within `(site, stream)` (`seq`), assigned by the spool; it
    /// never repeats for another record, so a consumer sees a gap as a jump.
    pub seq: u64,
    /// Whether the record is replayed after an outage, behind newer data (`historical`); JSON
    /// writes `"historical":true` only when set.
    pub historical: bool,
}

impl<'a> Envelope<'a> {
    /// The envelope of record `seq` of `(site, stream)`, sent live or (`historical`) replayed.
    pub fn new(site: &'a str, stream: Stream, seq: u64, historical: bool) -> Self {
        Envelope {
            site,
            stream,
            seq,
            historical,
        }
    }
}

/// Encode a record with the uplink's chosen encoding (see [`json::encode_record`] and
/// [`protobuf::encode_record`]).
pub fn encode_record(encoding: Encoding, envelope: Envelope<'_>, record: &Record) -> Vec<u8> {
    match encoding {
        // HJ 212 text needs a station header and makes one message of a window's records: the
        // MQTT uplink encodes it with `hj212_message` before reaching here. A caller without a
        // station gets the self-describing JSON form, never a packet with an empty header.
        Encoding::Json | Encoding::Hj212 => json::encode_record(envelope, record),
        Encoding::Protobuf => protobuf::encode_record(envelope, record),
    }
}

/// [`encode_record`] for a record that may carry a ledger seal: the JSON payload gets a trailing
/// `"ledger"` object, the protobuf envelope its `ledger` field (see [`seal`]).
pub fn encode_sealed(
    encoding: Encoding,
    envelope: Envelope<'_>,
    record: &Record,
    seal: Option<&crate::ledger::LedgerRecord>,
) -> Vec<u8> {
    let Some(seal) = seal else {
        return encode_record(encoding, envelope, record);
    };
    // The seal goes out with the signature of the label the record is sent with.
    let seal = &seal.delivered(envelope.historical);
    match encoding {
        Encoding::Json | Encoding::Hj212 => {
            seal::seal_json_payload(json::encode_record(envelope, record), seal)
        }
        Encoding::Protobuf => {
            use prost::Message as _;
            let mut message = protobuf::envelope(envelope, record);
            message.ledger = Some(seal::seal_pb(seal));
            message.encode_to_vec()
        }
    }
}
