//! The ledger: regulated records in a hash chain, each signed with the site's Ed25519 key, and the
//! verifier a regulator runs over a captured feed.
//!
//! # Record and hash
//! A record is `(site, stream, seq, prev, payload)`. Its hash is SHA-256 over this canonical
//! encoding (all integers big-endian):
//!
//! ```text
//! "smeltwatch-ledger-v1\n"
//! u32 len(site)    site      (UTF-8)
//! u32 len(stream)  stream    (UTF-8)
//! u64 seq
//! prev             (32 bytes: the hash of record seq-1; all zeros for the first record, seq 1)
//! u64 len(payload) payload   (UTF-8 bytes exactly as carried)
//! ```
//!
//! Lengths are prefixed so that no two different records share an encoding.
//!
//! # Seal versions and the signed label
//! The signature covers the hash and the delivery label that changes what a record means to a
//! reader: whether it was sent live or replayed after an outage (`historical`). A seal of
//! version 2 (`"v":2`, what this build writes) is signed over
//!
//! ```text
//! "smeltwatch-seal-v2\n"
//! hash             (32 bytes)
//! u8 flags         (bit 0: historical)
//! ```
//!
//! and carries the label as `"historical":true` (absent when false). Which label a record gets is
//! decided when an uplink sends it, after it is sealed, so the agent signs both labels when it
//! seals: the spool keeps the historical label's signature (`sig_historical`), and the uplink
//! publishes the seal with the signature of the label it sends ([`LedgerRecord::delivered`]); the
//! other signature never leaves the gateway. A seal of version 1 (older builds, no `v` field)
//! is signed over the 32 hash bytes alone; its label is the message's unsigned `historical` flag,
//! which the verifier reports as unchecked. The two signed messages differ, so a version-2 seal
//! cannot be passed off as version 1. The hash, and so the chain, is the same in both versions.
//!
//! # Wire form
//! One JSON object per record, one per line in a file (JSON lines), or alone as an MQTT payload:
//!
//! ```json
//! {"site":"demo-al-01","stream":"emissions","seq":7,"prev":"<64 hex>","hash":"<64 hex>",
//!  "sig":"<128 hex>","payload":"<the record's text: JSON or HJ 212>","v":2}
//! ```
//!
//! (`"historical":true` after `v` when the record was replayed after an outage.)
//!
//! The payload is carried as a JSON string (the regulated record's own JSON or HJ 212 text), so it
//! is readable and its bytes survive the round trip exactly.
//!
//! # Invariants
//! - [`Chain::append`] is the only producer: seq increases by one, `prev` is the previous hash.
//! - [`verify`] is pure and total: it never stops at the first fault, it names every faulty seq.
//! - Key files: `site.key` (64 hex digits of the secret seed, mode 0600; [`load_signing_key`]
//!   refuses one that group or others can read) and `site.pub` (64 hex digits).

pub mod capture;
mod keys;
mod verify;

use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use keys::{
    KeyPair, LedgerError, PUBLIC_KEY_FILE, SECRET_KEY_FILE, append_jsonl, keygen, load_signing_key,
    load_verifying_key, read_jsonl,
};
pub use verify::{Anchor, AnchorError, Anchors, Report, payload_time, verify, verify_with};

/// Domain tag at the start of every canonical encoding (changes with the format version).
pub const DOMAIN_TAG: &[u8] = b"smeltwatch-ledger-v1\n";

/// Domain tag of the message a version-2 seal signs (see the module documentation).
pub const SEAL_TAG_V2: &[u8] = b"smeltwatch-seal-v2\n";

/// The seal version this build writes.
pub const SEAL_VERSION: u8 = 2;

/// The message a version-2 seal signs: the tag, the hash and the label's flags.
pub fn seal_message_v2(hash: &[u8; 32], historical: bool) -> Vec<u8> {
    let mut m = Vec::with_capacity(SEAL_TAG_V2.len() + 33);
    m.extend_from_slice(SEAL_TAG_V2);
    m.extend_from_slice(hash);
    m.push(u8::from(historical));
    m
}

/// The `prev` of the first record of a chain.
pub const GENESIS: [u8; 32] = [0; 32];

/// One signed, chained record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerRecord {
    /// Site name.
    pub site: String,
    /// Chain name ([`capture::REGULATED_CHAIN`] for the agent's regulated records).
    pub stream: String,
    /// Position in the chain, 1 for the first record.
    pub seq: u64,
    /// Hash of the previous record ([`GENESIS`] for seq 1).
    #[serde(with = "hex_array")]
    pub prev: [u8; 32],
    /// SHA-256 of the canonical encoding.
    #[serde(with = "hex_array")]
    pub hash: [u8; 32],
    /// Ed25519 signature over what the seal version signs (see the module documentation).
    #[serde(with = "hex_array")]
    pub sig: [u8; 64],
    /// The regulated record's text.
    pub payload: String,
    /// Seal version: 1 (no field, older builds) or 2.
    #[serde(default = "seal_v1", skip_serializing_if = "is_seal_v1")]
    pub v: u8,
    /// Version 2: the signed label, replayed after an outage.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub historical: bool,
    /// Version 2, in the spool only: the signature of the same record labelled historical, for
    /// the uplink to publish when it sends the record late. Never published.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "hex_array_opt"
    )]
    pub sig_historical: Option<[u8; 64]>,
}

fn seal_v1() -> u8 {
    1
}

fn is_seal_v1(v: &u8) -> bool {
    *v == 1
}

impl LedgerRecord {
    /// The record as one JSON line (without the newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a ledger record always serialises")
    }

    /// Parse one JSON record.
    pub fn from_json(text: &str) -> Result<LedgerRecord, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The bytes the signature covers: the hash (version 1), or the hash and the label
    /// (version 2); `None` for a version this build does not know.
    pub fn signed_message(&self) -> Option<Vec<u8>> {
        match self.v {
            1 => Some(self.hash.to_vec()),
            2 => Some(seal_message_v2(&self.hash, self.historical)),
            _ => None,
        }
    }

    /// The seal as an uplink publishes it with the label `historical`: a version-2 seal gets
    /// the signature of that label (when it holds it) and loses `sig_historical`. A version-1
    /// seal is returned as it is (its label is the message's unsigned flag).
    pub fn delivered(&self, historical: bool) -> LedgerRecord {
        let mut out = self.clone();
        out.sig_historical = None;
        if self.v == 2
            && historical != self.historical
            && let Some(sig) = self.sig_historical
        {
            out.historical = historical;
            out.sig = sig;
        }
        out
    }

    /// Whether two records are the same link of the chain (the label and its signature aside):
    /// a record sent live and sent again as historical is one record delivered twice.
    pub fn same_link(&self, other: &LedgerRecord) -> bool {
        self.site == other.site
            && self.stream == other.stream
            && self.seq == other.seq
            && self.prev == other.prev
            && self.hash == other.hash
            && self.payload == other.payload
    }

    /// Recompute the hash from the record's fields.
    pub fn computed_hash(&self) -> [u8; 32] {
        hash(
            &self.site,
            &self.stream,
            self.seq,
            &self.prev,
            self.payload.as_bytes(),
        )
    }
}

/// The canonical encoding that is hashed (see the module documentation).
pub fn canonical(site: &str, stream: &str, seq: u64, prev: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(DOMAIN_TAG.len() + 8 + site.len() + stream.len() + 48 + payload.len());
    out.extend_from_slice(DOMAIN_TAG);
    for s in [site, stream] {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(prev);
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// SHA-256 of the canonical encoding.
pub fn hash(site: &str, stream: &str, seq: u64, prev: &[u8; 32], payload: &[u8]) -> [u8; 32] {
    Sha256::digest(canonical(site, stream, seq, prev, payload)).into()
}

/// The writer's side of one chain (one site and stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    site: String,
    stream: String,
    next_seq: u64,
    prev: [u8; 32],
}

impl Chain {
    /// A new chain: the first record will be seq 1 with `prev` = [`GENESIS`].
    pub fn new(site: impl Into<String>, stream: impl Into<String>) -> Chain {
        Chain {
            site: site.into(),
            stream: stream.into(),
            next_seq: 1,
            prev: GENESIS,
        }
    }

    /// Continue a chain after its last record (e.g. read back after a restart).
    pub fn resume(last: &LedgerRecord) -> Chain {
        Chain {
            site: last.site.clone(),
            stream: last.stream.clone(),
            next_seq: last.seq + 1,
            prev: last.hash,
        }
    }

    /// The seq the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Append a payload: hash it into the chain and sign it (a version-2 seal, labelled live,
    /// with the historical label's signature kept beside it for the spool).
    pub fn append(&mut self, key: &SigningKey, payload: impl Into<String>) -> LedgerRecord {
        let payload = payload.into();
        let seq = self.next_seq;
        let hash = hash(
            &self.site,
            &self.stream,
            seq,
            &self.prev,
            payload.as_bytes(),
        );
        let sig = key.sign(&seal_message_v2(&hash, false)).to_bytes();
        let sig_historical = key.sign(&seal_message_v2(&hash, true)).to_bytes();
        let record = LedgerRecord {
            site: self.site.clone(),
            stream: self.stream.clone(),
            seq,
            prev: self.prev,
            hash,
            sig,
            payload,
            v: SEAL_VERSION,
            historical: false,
            sig_historical: Some(sig_historical),
        };
        self.next_seq += 1;
        self.prev = hash;
        record
    }
}

/// The payload recording a configuration change in the chain: the SHA-256 of the new
/// configuration file's bytes and when it took effect, as one JSON object
/// (`{"kind":"config_change","config_sha256":"<64 hex>","ts_ms":…}`).
pub fn config_change_payload(config: &[u8], ts: crate::model::Timestamp) -> String {
    let digest: [u8; 32] = Sha256::digest(config).into();
    format!(
        r#"{{"kind":"config_change","config_sha256":"{}","ts_ms":{}}}"#,
        to_hex(&digest),
        ts.0
    )
}

/// Lower-case hex of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0F)]));
    }
    s
}

/// Bytes of a hex string of exactly `N` bytes (either case).
pub fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let t = text.as_bytes();
    if t.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (i, pair) in t.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

mod hex_array_opt {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer, const N: usize>(
        bytes: &Option<[u8; N]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_str(&super::to_hex(b)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<Option<[u8; N]>, D::Error> {
        let text = String::deserialize(d)?;
        super::from_hex(&text)
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("expected {} hex digits", 2 * N)))
    }
}

mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::to_hex(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        super::from_hex(&text)
            .ok_or_else(|| D::Error::custom(format!("expected {} hex digits", 2 * N)))
    }
}
