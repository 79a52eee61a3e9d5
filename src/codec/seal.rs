//! A ledger seal on the wire: the trailing `"ledger"` object of a JSON payload and the
//! `Envelope.ledger` field (`LedgerSeal`) of a protobuf payload, both ways. The ledger defines the
//! seal ([`LedgerRecord`]); how it rides in a payload is the encoders' business, so the ledger's
//! reader of captured messages comes here for the protobuf form.

use super::protobuf::pb;
use crate::ledger::LedgerRecord;

/// Add a seal to a JSON payload (an object): `,"ledger":{…}` before its closing brace.
pub fn seal_json_payload(mut payload: Vec<u8>, seal: &LedgerRecord) -> Vec<u8> {
    if payload.last() == Some(&b'}') {
        payload.pop();
        payload.extend_from_slice(b",\"ledger\":");
        payload.extend_from_slice(seal.to_json().as_bytes());
        payload.push(b'}');
    }
    payload
}

/// The protobuf form of a seal (`Envelope.ledger`).
pub fn seal_pb(seal: &LedgerRecord) -> pb::LedgerSeal {
    pb::LedgerSeal {
        site: seal.site.clone(),
        chain: seal.stream.clone(),
        seq: seal.seq,
        prev: seal.prev.to_vec(),
        hash: seal.hash.to_vec(),
        sig: seal.sig.to_vec(),
        payload: seal.payload.clone(),
        version: u32::from(seal.v),
        historical: seal.historical,
    }
}

/// A field of a protobuf seal (`Envelope.ledger`) of the wrong length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger.{field}: {got} bytes, expected {expected}")]
pub struct SealLengthError {
    /// `prev`, `hash` or `sig`.
    pub field: &'static str,
    /// Its length.
    pub got: usize,
    /// The length it must have.
    pub expected: usize,
}

/// The seal of a protobuf envelope's `ledger` field; an error names a field of the wrong length.
pub fn seal_from_pb(s: pb::LedgerSeal) -> Result<LedgerRecord, SealLengthError> {
    let bytes = |field: &'static str, v: Vec<u8>, expected: usize| {
        if v.len() == expected {
            Ok(v)
        } else {
            Err(SealLengthError {
                field,
                got: v.len(),
                expected,
            })
        }
    };
    let prev = bytes("prev", s.prev, 32)?;
    let hash = bytes("hash", s.hash, 32)?;
    let sig = bytes("sig", s.sig, 64)?;
    Ok(LedgerRecord {
        site: s.site,
        stream: s.chain,
        seq: s.seq,
        prev: prev.try_into().expect("length checked"),
        hash: hash.try_into().expect("length checked"),
        sig: sig.try_into().expect("length checked"),
        payload: s.payload,
        // Field absent (0): a seal of an older build.
        v: match s.version {
            0 | 1 => 1,
            v => u8::try_from(v).unwrap_or(u8::MAX),
        },
        historical: s.historical,
        sig_historical: None,
    })
}
