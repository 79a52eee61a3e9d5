//! The regulator's side of the ledger: reading a captured regulated feed back, from a file or
//! live from a broker (`smeltwatch verify`), and checking it against the site's public key and
//! the chain's known ends ([`crate::ledger::verify_with`]).
//!
//! Apart from [`crate::ledger`] (the chain, its seals and keys) because it decodes the payloads
//! the encoders write ([`crate::codec`]), which themselves carry the ledger's seals: the ledger
//! sits below the codec, the verifier above it.

pub mod capture;
pub mod subscribe;

use std::fs;
use std::path::Path;

use crate::ledger::{Anchors, LedgerError, Report, load_verifying_key};

pub use capture::{CaptureError, Captured, read_message, verify_messages, verify_messages_with};

/// [`verify_file_with`] expecting the capture from seq 1 and without a head to reach.
pub fn verify_file(public_key: &Path, file: &Path) -> Result<Report, LedgerError> {
    verify_file_with(public_key, file, &Anchors::default())
}

/// Verify a capture file against a public key file and the chain's known ends (`smeltwatch
/// verify --file`): JSON lines (ledger records, or captured JSON payloads with their seal) or
/// length-delimited protobuf envelopes (see [`crate::ledger::capture`]). Unreadable lines are reported
/// and fail the verdict; payloads without a seal are counted and ignored.
pub fn verify_file_with(
    public_key: &Path,
    file: &Path,
    anchors: &Anchors,
) -> Result<Report, LedgerError> {
    let key = load_verifying_key(public_key)?;
    let bytes = fs::read(file).map_err(|source| LedgerError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let split = capture::split_capture(&bytes);
    let mut report = capture::verify_messages_with(&key, split.messages, split.json_only, anchors);
    if let Some(damaged) = split.damaged {
        report.unreadable.push(damaged);
        report.ok = false;
    }
    Ok(report)
}
