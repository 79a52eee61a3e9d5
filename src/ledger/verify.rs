//! Verification of a captured chain: hashes, signatures, links, gaps, duplicates, capture order
//! and time order (of payloads that carry a time).
//!
//! Records are taken in the order they were captured. Each distinct seq is checked once (its first
//! occurrence); the chain links are checked in seq order, so a feed delivered out of order still
//! links, and the disorder itself is reported.
//!
//! # Anchors: the ends of the chain
//! Links prove that records follow one another, not that the capture holds all of them: a chain
//! cut short at either end, or an old chain replayed whole, still links. So the ends are checked
//! against what the regulator holds from outside the capture ([`Anchors`]):
//! - **start**: a capture must begin at seq 1 (from genesis), or right after the seq given as
//!   `--after SEQ[:HASH]` (with the hash, the first record must follow it). A missing start fails
//!   the verdict ([`Report::prefix_missing`]).
//! - **head**: `--expect-head SEQ[:HASH]` is a head recorded earlier (the one the last
//!   verification printed, or one the operator wrote down). The capture must reach it, and the
//!   record at that seq must have that hash; a capture that ends before it (tail cut, or an old
//!   chain replayed) or does not match it fails ([`Report::tail_missing`], [`Report::diverged`]).
//!   A capture that goes beyond the head is the chain having grown since: fine.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{Signature, VerifyingKey};

use super::{GENESIS, LedgerRecord, from_hex, to_hex};

/// A point of the chain known from outside the capture: a seq and, usually, its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// The record's seq.
    pub seq: u64,
    /// The record's hash, when known.
    pub hash: Option<[u8; 32]>,
}

/// Why an anchor (`--after`, `--expect-head`) does not parse; the text names the argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    /// The part before `:` is not a seq number.
    #[error("{0:?}: expected SEQ or SEQ:HASH (a seq number)")]
    Seq(String),
    /// The part after `:` is not 64 hex digits.
    #[error("{0:?}: the hash must be 64 hex digits")]
    Hash(String),
}

impl Anchor {
    /// Parse `SEQ` or `SEQ:HASH` (64 hex digits), as printed in the report's `Head:` line.
    pub fn parse(text: &str) -> Result<Anchor, AnchorError> {
        let (seq, hash) = match text.split_once(':') {
            Some((s, h)) => (s, Some(h)),
            None => (text, None),
        };
        let seq = seq
            .trim()
            .parse::<u64>()
            .map_err(|_| AnchorError::Seq(text.to_owned()))?;
        let hash = match hash {
            Some(h) => {
                Some(from_hex::<32>(h.trim()).ok_or_else(|| AnchorError::Hash(text.to_owned()))?)
            }
            None => None,
        };
        Ok(Anchor { seq, hash })
    }
}

/// What the verifier knows of the chain's ends (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Anchors {
    /// The capture starts right after this record (`--after`); without it, at seq 1.
    pub after: Option<Anchor>,
    /// The capture must reach this record (`--expect-head`).
    pub expect_head: Option<Anchor>,
}

/// What [`verify`] found. Every list names records by seq, in ascending order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// No record is altered, badly signed, unlinked, missing, conflicting, foreign, out of order
    /// or unreadable. Duplicates alone do not fail it: delivery is at-least-once.
    pub ok: bool,
    /// Records read (including duplicates).
    pub records: usize,
    /// Distinct records whose hash and signature both check.
    pub verified: usize,
    /// Site and stream of the chain (from the first record).
    pub chain: Option<(String, String)>,
    /// Lowest and highest seq seen.
    pub seq_range: Option<(u64, u64)>,
    /// The lowest seq is 1 with the genesis `prev`: the capture holds the whole chain.
    pub from_genesis: bool,
    /// Content does not match the record's hash: the payload or a field was changed.
    pub bad_hash: Vec<u64>,
    /// The hash matches but the signature is not this key's.
    pub bad_signature: Vec<u64>,
    /// `prev` is not the hash of the record before it (or seq 1 does not start from genesis).
    pub broken_chain: Vec<u64>,
    /// Missing seqs, as inclusive ranges.
    pub gaps: Vec<(u64, u64)>,
    /// Seqs seen again with identical content (replays or redeliveries).
    pub duplicates: Vec<u64>,
    /// Seqs seen again with different content.
    pub conflicts: Vec<u64>,
    /// Records captured after a record with a higher seq.
    pub out_of_order: Vec<u64>,
    /// Records of another site or stream than the first record.
    pub foreign: Vec<u64>,
    /// Records whose time (see [`payload_time`]) is earlier than that of the record before them:
    /// a record back-dated into the chain.
    pub time_reversed: Vec<u64>,
    /// Lines that are not ledger records: (line number, reason).
    pub unreadable: Vec<(usize, String)>,
    /// Records whose message body (the record shown beside the seal) differs from the signed
    /// payload: a value changed where a reader sees it.
    pub mismatched: Vec<u64>,
    /// Captured messages without a seal (records that are not regulated): not part of the chain.
    pub unsealed: usize,
    /// Records captured after a later one but marked historical: replayed after an outage, late
    /// by design (not a fault).
    pub late: Vec<u64>,
    /// Records whose message's `historical` flag differs from the label their seal signs.
    pub relabelled: Vec<u64>,
    /// Records sealed by older builds (seal version 1) and marked historical: the flag is not
    /// signed, so it cannot be checked (noted, not a fault).
    pub unsigned_label: Vec<u64>,
    /// Seqs missing before the first record: from 1 (or the seq after `--after`) to the first
    /// captured seq minus one.
    pub prefix_missing: Option<(u64, u64)>,
    /// Seqs missing after the last record, up to the expected head.
    pub tail_missing: Option<(u64, u64)>,
    /// Records that do not match an anchor: the head's seq with another hash, or the first
    /// record after `--after` not following the anchored hash.
    pub diverged: Vec<u64>,
    /// The last record of the capture (seq and hash): the head to expect next time.
    pub head: Option<(u64, [u8; 32])>,
    /// The anchors the capture was checked against.
    pub anchors: Anchors,
}

/// Verify a captured chain against the site's public key, expecting it from seq 1 and without a
/// head to reach ([`verify_with`] and default [`Anchors`]).
pub fn verify(key: &VerifyingKey, records: &[LedgerRecord]) -> Report {
    verify_with(key, records, &Anchors::default())
}

/// Verify a captured chain against the site's public key and the chain's known ends.
pub fn verify_with(key: &VerifyingKey, records: &[LedgerRecord], anchors: &Anchors) -> Report {
    let mut report = Report {
        records: records.len(),
        anchors: *anchors,
        ..Report::default()
    };
    let Some(first) = records.first() else {
        // Nothing captured: only a head to reach can be missing.
        if let Some(head) = anchors.expect_head {
            let from = anchors.after.map_or(1, |a| a.seq + 1);
            if head.seq >= from {
                report.tail_missing = Some((from, head.seq));
            }
        }
        report.ok = report.intact();
        return report;
    };
    report.chain = Some((first.site.clone(), first.stream.clone()));

    let by_seq = index_records(key, records, first, &mut report);
    check_links(&mut report, &by_seq);
    if let (Some((&lo, lo_rec)), Some((&hi, hi_rec))) =
        (by_seq.first_key_value(), by_seq.last_key_value())
    {
        report.seq_range = Some((lo, hi));
        report.from_genesis = lo == 1 && lo_rec.prev == GENESIS;
        report.head = Some((hi, hi_rec.hash));
        check_anchors(&mut report, &by_seq, anchors);
    }
    for list in [
        &mut report.duplicates,
        &mut report.conflicts,
        &mut report.out_of_order,
        &mut report.foreign,
        &mut report.broken_chain,
        &mut report.bad_signature,
        &mut report.diverged,
    ] {
        list.sort_unstable();
        list.dedup();
    }
    report.bad_hash.sort_unstable();
    report.ok = report.intact();
    report
}

/// The records of the first record's chain by seq, each checked (hash, signature); foreign
/// records, duplicates, conflicts and records out of order are noted in `report`.
fn index_records<'r>(
    key: &VerifyingKey,
    records: &'r [LedgerRecord],
    first: &LedgerRecord,
    report: &mut Report,
) -> BTreeMap<u64, &'r LedgerRecord> {
    let mut by_seq: BTreeMap<u64, &LedgerRecord> = BTreeMap::new();
    let mut highest: Option<u64> = None;
    for r in records {
        if r.site != first.site || r.stream != first.stream {
            report.foreign.push(r.seq);
            continue;
        }
        if let Some(seen) = by_seq.get(&r.seq) {
            if seen.same_link(r) {
                report.duplicates.push(r.seq);
                // Sent again with the other label: its own signature must check too.
                if (seen.sig, seen.historical, seen.v) != (r.sig, r.historical, r.v)
                    && !signature_checks(key, r)
                {
                    report.bad_signature.push(r.seq);
                }
            } else {
                report.conflicts.push(r.seq);
            }
            continue;
        }
        if highest.is_some_and(|h| r.seq < h) {
            report.out_of_order.push(r.seq);
        }
        highest = highest.max(Some(r.seq));
        by_seq.insert(r.seq, r);

        if r.computed_hash() != r.hash {
            report.bad_hash.push(r.seq);
        } else if !signature_checks(key, r) {
            report.bad_signature.push(r.seq);
        } else {
            report.verified += 1;
        }
    }

    by_seq
}

/// The links between consecutive records: time order, the chain of hashes, the gaps.
fn check_links(report: &mut Report, by_seq: &BTreeMap<u64, &LedgerRecord>) {
    let mut last_time: Option<i64> = None;
    for (&seq, &r) in by_seq {
        if let Some(t) = payload_time(&r.payload) {
            if last_time.is_some_and(|last| t < last) {
                report.time_reversed.push(seq);
            }
            last_time = Some(t);
        }
    }

    let mut prev: Option<&LedgerRecord> = None;
    for (&seq, &r) in by_seq {
        match prev {
            Some(p) if seq == p.seq + 1 => {
                if r.prev != p.hash {
                    report.broken_chain.push(seq);
                }
            }
            Some(p) => report.gaps.push((p.seq + 1, seq - 1)),
            None => {
                // Seq 1 must start from genesis; a later start cannot be checked backwards.
                if (seq == 1) != (r.prev == GENESIS) {
                    report.broken_chain.push(seq);
                }
            }
        }
        prev = Some(r);
    }
}

/// Whether the record's signature is this key's over what its seal version signs.
fn signature_checks(key: &VerifyingKey, r: &LedgerRecord) -> bool {
    r.signed_message().is_some_and(|m| {
        key.verify_strict(&m, &Signature::from_bytes(&r.sig))
            .is_ok()
    })
}

/// The chain's ends against the anchors (see the module documentation).
fn check_anchors(report: &mut Report, by_seq: &BTreeMap<u64, &LedgerRecord>, anchors: &Anchors) {
    let (Some((&lo, _)), Some((&hi, _))) = (by_seq.first_key_value(), by_seq.last_key_value())
    else {
        return;
    };
    let start = anchors.after.map_or(1, |a| a.seq + 1);
    if lo > start {
        report.prefix_missing = Some((start, lo - 1));
    }
    if let Some(Anchor {
        seq,
        hash: Some(hash),
    }) = anchors.after
    {
        // The anchored record itself, when captured, and the one after it must agree with it.
        if by_seq.get(&seq).is_some_and(|r| r.hash != hash) {
            report.diverged.push(seq);
        }
        if let Some(next) = seq.checked_add(1)
            && by_seq.get(&next).is_some_and(|r| r.prev != hash)
        {
            report.diverged.push(next);
        }
    }
    if let Some(head) = anchors.expect_head {
        if hi < head.seq {
            report.tail_missing = Some((hi + 1, head.seq));
        } else if let (Some(r), Some(hash)) = (by_seq.get(&head.seq), head.hash)
            && r.hash != hash
        {
            report.diverged.push(head.seq);
        }
    }
}

impl Report {
    /// The verdict from the lists: no fault of any kind (duplicates and unsealed messages aside).
    pub fn intact(&self) -> bool {
        self.bad_hash.is_empty()
            && self.bad_signature.is_empty()
            && self.broken_chain.is_empty()
            && self.gaps.is_empty()
            && self.conflicts.is_empty()
            && self.out_of_order.is_empty()
            && self.foreign.is_empty()
            && self.time_reversed.is_empty()
            && self.unreadable.is_empty()
            && self.mismatched.is_empty()
            && self.relabelled.is_empty()
            && self.prefix_missing.is_none()
            && self.tail_missing.is_none()
            && self.diverged.is_empty()
    }
}

/// The time a payload describes, in Unix milliseconds, when it is a JSON object with an integer
/// `end` (aggregates: the window end), `ts_ms` or `ts`; `None` otherwise (not checked).
///
/// Configuration records (`"kind":"config_change"`) are not checked: they carry the time the
/// agent started, and a window that was open across a restart (or that closes once the restarted
/// agent sees its next reading) legitimately follows them with an earlier end.
pub fn payload_time(payload: &str) -> Option<i64> {
    let value: serde_json::Value = serde_json::from_str(payload).ok()?;
    if value.get("kind").and_then(serde_json::Value::as_str) == Some(super::capture::CONFIG_CHANGE)
    {
        return None;
    }
    ["end", "ts_ms", "ts"]
        .iter()
        .find_map(|key| value.get(key).and_then(serde_json::Value::as_i64))
}

fn seqs(list: &[u64]) -> String {
    list.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_summary(f)?;
        self.write_ends(f)?;
        self.write_faults(f)?;
        self.write_gaps(f)
    }
}

impl Report {
    /// The verdict, the chain, the counts, the head and the anchors.
    fn write_summary(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Verdict: {}",
            if self.ok {
                "INTACT: every record is signed by this key and the chain is complete"
            } else {
                "FAILED: the feed is not intact (details below)"
            }
        )?;
        if let Some((site, stream)) = &self.chain {
            writeln!(f, "Chain: site {site}, stream {stream}")?;
        }
        write!(
            f,
            "Records: {} read, {} verified",
            self.records, self.verified
        )?;
        if let Some((lo, hi)) = self.seq_range {
            write!(f, ", seq {lo} to {hi}")?;
        }
        writeln!(f)?;
        if let Some((seq, hash)) = self.head {
            // Only an intact capture's head is worth anchoring the next verification on.
            let hint = if self.ok {
                " (to expect next time: --expect-head SEQ:HASH)"
            } else {
                ""
            };
            writeln!(f, "Head: seq {seq}, hash {}{hint}", to_hex(&hash))?;
        }
        if let Some(after) = self.anchors.after {
            writeln!(f, "Start anchor: after seq {}", after.seq)?;
        }
        if let Some(head) = self.anchors.expect_head {
            writeln!(f, "Expected head: seq {}", head.seq)?;
        }
        Ok(())
    }

    /// What is missing at either end, and the notes on what was not checked.
    fn write_ends(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((a, b)) = self.prefix_missing {
            let range = if a == b {
                format!("{a}")
            } else {
                format!("{a} to {b}")
            };
            let why = match self.anchors.after {
                Some(after) => format!("the capture does not start right after seq {}", after.seq),
                None => "the capture does not start at seq 1; give --after SEQ:HASH when it \
                         continues a capture already verified"
                    .to_owned(),
            };
            writeln!(f, "Missing start: seq {range} ({why})")?;
        } else if self.seq_range.is_some() && !self.from_genesis {
            writeln!(
                f,
                "Note: the capture does not start at seq 1; earlier records are not checked here"
            )?;
        }
        if let Some((a, b)) = self.tail_missing {
            let range = if a == b {
                format!("{a}")
            } else {
                format!("{a} to {b}")
            };
            writeln!(
                f,
                "Missing tail: seq {range} (the capture ends before the expected head, seq {b}: \
                 records were cut off or an old chain was replayed)"
            )?;
        }
        if !self.unsigned_label.is_empty() {
            writeln!(
                f,
                "Note: seq {} sealed by an older build (seal version 1): the historical flag is \
                 not signed and was not checked",
                seqs(&self.unsigned_label)
            )?;
        }
        if self.unsealed > 0 {
            writeln!(
                f,
                "Not in the chain: {} unsigned message(s) (not regulated records), ignored",
                self.unsealed
            )?;
        }
        Ok(())
    }

    /// One line per kind of fault.
    fn write_faults(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: [(&str, &[u64], &str); 12] = [
            ("Altered", &self.bad_hash, "content does not match its hash"),
            (
                "Diverged",
                &self.diverged,
                "its hash is not the anchored one: another chain than the one anchored",
            ),
            (
                "Relabelled",
                &self.relabelled,
                "the historical flag differs from the signed one",
            ),
            (
                "Altered body",
                &self.mismatched,
                "the record shown differs from the signed payload",
            ),
            (
                "Bad signature",
                &self.bad_signature,
                "not signed by this site's key",
            ),
            (
                "Broken chain",
                &self.broken_chain,
                "does not follow from the record before it",
            ),
            (
                "Conflicting",
                &self.conflicts,
                "same seq seen with different content",
            ),
            (
                "Out of order",
                &self.out_of_order,
                "captured after a later record",
            ),
            (
                "Foreign",
                &self.foreign,
                "belongs to another site or stream",
            ),
            (
                "Time reversed",
                &self.time_reversed,
                "describes an earlier time than the record before it",
            ),
            (
                "Duplicates",
                &self.duplicates,
                "identical record delivered again; counted once",
            ),
            (
                "Late",
                &self.late,
                "replayed after an outage (marked historical); expected",
            ),
        ];
        for (what, list, why) in lines {
            if !list.is_empty() {
                writeln!(f, "{what}: seq {} ({why})", seqs(list))?;
            }
        }
        Ok(())
    }

    /// The records missing between the captured ones, and the lines that are not records.
    fn write_gaps(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.gaps.is_empty() {
            let gaps: Vec<String> = self
                .gaps
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        format!("{a}")
                    } else {
                        format!("{a} to {b}")
                    }
                })
                .collect();
            let missing: u64 = self.gaps.iter().map(|&(a, b)| b - a + 1).sum();
            writeln!(f, "Missing: {missing} record(s), seq {}", gaps.join(", "))?;
        }
        for (line, why) in &self.unreadable {
            writeln!(f, "Unreadable: line {line} ({why})")?;
        }
        Ok(())
    }
}
