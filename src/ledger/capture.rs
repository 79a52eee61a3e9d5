//! Seals on the wire: how a regulated record carries its ledger record through the spool and in
//! the JSON and protobuf payloads. Reading a captured message back for the verifier is
//! [`crate::audit`]'s.
//!
//! # Forms
//! - **Spool body**: the record's canonical JSON with a leading `"ledger"` key holding the
//!   [`LedgerRecord`] (`{"ledger":{…},"record":"aggregate",…}`). Uplinks that do not sign ignore
//!   the key; the key comes first so that an uplink can tell a sealed body from its first bytes.
//! - **JSON payload**: the usual JSON envelope with a trailing `"ledger"` object (the same
//!   [`LedgerRecord`]).
//! - **protobuf payload**: `Envelope.ledger` (`LedgerSeal`, field 20).
//! - **Ledger file**: one [`LedgerRecord`] per line, or captured JSON payloads, one per line.
//!
//! The payload forms are written by the encoders ([`crate::codec::seal`]); this module
//! writes and reads the spool body.
//!
//! The signed bytes are the `payload`, the record's canonical JSON. A payload also shows the
//! record in its body; the verifier checks that the body says the same as the signed payload, so
//! a value changed in the body alone is caught too ([`crate::ledger::Report::mismatched`]).
//!
//! The message's `historical` flag (JSON `"historical":true`, protobuf `Envelope.historical`) is
//! repeated in a version-2 seal, where it is signed (see [`super`]); the verifier checks that the
//! two agree ([`crate::ledger::Report::relabelled`]). The seal is published with the signature of the label it
//! is sent with ([`LedgerRecord::delivered`]).

use super::LedgerRecord;
use crate::model::Record;

/// Name of the chain regulated records and configuration changes are appended to.
pub const REGULATED_CHAIN: &str = "regulated";

/// Name of [`EventKind::ConfigChange`](crate::model::EventKind::ConfigChange), the event that
/// records, in the chain, a configuration the agent started with (its `config_sha256` attribute
/// is the SHA-256 of the file); the verifier finds it by this name in the signed JSON.
pub const CONFIG_CHANGE: &str = "config_change";

pub(crate) const SEALED_PREFIX: &[u8] = b"{\"ledger\":";

/// The canonical JSON of a record: the ledger payload of a regulated record.
pub fn payload_of(record: &Record) -> String {
    serde_json::to_string(record).expect("a record always serialises")
}

/// The spool body of a sealed record (see the module documentation).
pub fn sealed_body(seal: &LedgerRecord) -> Vec<u8> {
    // The payload is the record's canonical JSON object; insert the seal as its first key.
    let rest = seal
        .payload
        .strip_prefix('{')
        .expect("a record's JSON is an object");
    let mut body = Vec::with_capacity(seal.payload.len() * 2 + 300);
    body.extend_from_slice(SEALED_PREFIX);
    body.extend_from_slice(seal.to_json().as_bytes());
    if rest != "}" {
        body.push(b',');
    }
    body.extend_from_slice(rest.as_bytes());
    body
}

/// The seal of a spool body, when it has one.
pub fn seal_of(body: &[u8]) -> Option<LedgerRecord> {
    if !body.starts_with(SEALED_PREFIX) {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Sealed {
        ledger: LedgerRecord,
    }
    serde_json::from_slice::<Sealed>(body)
        .ok()
        .map(|s| s.ledger)
}
