//! Ledger: the canonical hash, a clean chain, and every tamper a regulator must catch (changed
//! value, dropped record, reordered records, replay, another key), named by seq; key files.

mod common;

use common::records::stack_aggregate;
use ed25519_dalek::SigningKey;
use smeltwatch::audit;
use smeltwatch::codec::Envelope;
use smeltwatch::ledger::{self, Chain, GENESIS, LedgerError, LedgerRecord, Report};

const SITE: &str = "demo-al-01";
const STREAM: &str = "emissions";

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Ten hourly records signed with `key(1)`.
fn chain(n: u64) -> Vec<LedgerRecord> {
    let k = key(1);
    let mut c = Chain::new(SITE, STREAM);
    (1..=n)
        .map(|i| {
            c.append(
                &k,
                format!(
                    r#"{{"quantity":"so2_mg_m3","period":"hour","avg":{}.5}}"#,
                    80 + i
                ),
            )
        })
        .collect()
}

fn check(records: &[LedgerRecord]) -> Report {
    ledger::verify(&key(1).verifying_key(), records)
}

#[test]
fn hash_is_sha256_of_the_documented_encoding() {
    // Computed independently from the module documentation's layout.
    let expected = "3dcca3b00116c8c50a3b6fe1ec910e1485ba49834ca645a8f3de37a8c7cf3526";
    let h = ledger::hash(SITE, STREAM, 1, &GENESIS, b"hello");
    assert_eq!(ledger::to_hex(&h), expected);
    let r = Chain::new(SITE, STREAM).append(&key(1), "hello");
    assert_eq!(ledger::to_hex(&r.hash), expected);
    assert_eq!(r.seq, 1);
    assert_eq!(r.prev, GENESIS);
}

#[test]
fn a_record_is_one_json_line_that_round_trips() {
    let r = &chain(2)[1];
    let line = r.to_json();
    assert!(!line.contains('\n'));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["seq"], 2);
    assert_eq!(v["site"], SITE);
    assert_eq!(v["prev"].as_str().unwrap().len(), 64);
    assert_eq!(v["hash"].as_str().unwrap().len(), 64);
    assert_eq!(v["sig"].as_str().unwrap().len(), 128);
    assert_eq!(v["payload"], r.payload);
    assert_eq!(&LedgerRecord::from_json(&line).unwrap(), r);
    assert!(LedgerRecord::from_json(&line.replace(r#""seq":2"#, r#""seq":2,"x":1"#)).is_err());
}

#[test]
fn a_clean_chain_verifies() {
    let records = chain(10);
    let report = check(&records);
    assert!(report.ok, "{report}");
    assert_eq!(report.records, 10);
    assert_eq!(report.verified, 10);
    assert_eq!(report.seq_range, Some((1, 10)));
    assert!(report.from_genesis);
    assert!(report.to_string().starts_with("Verdict: INTACT"));
    // A chain resumed after a restart continues seamlessly.
    let mut c = Chain::resume(&records[9]);
    let mut more = records.clone();
    more.push(c.append(&key(1), "after restart"));
    let report = check(&more);
    assert!(report.ok, "{report}");
    assert_eq!(report.verified, 11);
    assert!(check(&[]).ok);
}

#[test]
fn a_changed_value_is_named() {
    let mut records = chain(10);
    // Flip one byte of the payload of seq 5: "85.5" becomes "84.5".
    let mut bytes = records[4].payload.clone().into_bytes();
    let at = bytes.iter().position(|&b| b == b'5').unwrap();
    bytes[at] ^= 0x01;
    records[4].payload = String::from_utf8(bytes).unwrap();
    let report = check(&records);
    assert!(!report.ok);
    assert_eq!(report.bad_hash, vec![5]);
    assert!(report.bad_signature.is_empty());
    assert_eq!(report.verified, 9);
    let text = report.to_string();
    assert!(
        text.contains("Altered: seq 5 (content does not match its hash)"),
        "{text}"
    );
}

#[test]
fn a_changed_value_with_a_recomputed_hash_breaks_signature_and_chain() {
    let mut records = chain(10);
    let r = &mut records[4];
    r.payload = r.payload.replace("85.5", "15.5");
    r.hash = r.computed_hash();
    let report = check(&records);
    assert_eq!(report.bad_hash, Vec::<u64>::new());
    assert_eq!(report.bad_signature, vec![5]);
    assert_eq!(
        report.broken_chain,
        vec![6],
        "seq 6 no longer follows seq 5"
    );
}

#[test]
fn a_dropped_record_is_a_gap() {
    let mut records = chain(10);
    records.remove(6);
    records.remove(2);
    records.remove(2);
    let report = check(&records);
    assert!(!report.ok);
    assert_eq!(report.gaps, vec![(3, 4), (7, 7)]);
    assert_eq!(report.verified, 7);
    assert!(report.broken_chain.is_empty());
    let text = report.to_string();
    assert!(
        text.contains("Missing: 3 record(s), seq 3 to 4, 7"),
        "{text}"
    );
}

#[test]
fn reordered_records_are_named() {
    let mut records = chain(10);
    records.swap(3, 4);
    let report = check(&records);
    assert!(!report.ok);
    assert_eq!(report.out_of_order, vec![4]);
    assert!(report.broken_chain.is_empty(), "the chain itself is intact");
    assert_eq!(report.verified, 10);
    assert!(report.to_string().contains("Out of order: seq 4"));
}

#[test]
fn a_replayed_record_is_a_duplicate_and_a_rewritten_one_a_conflict() {
    let mut records = chain(10);
    records.push(records[2].clone());
    let report = check(&records);
    assert_eq!(report.duplicates, vec![3]);
    assert_eq!(report.records, 11);
    assert_eq!(report.verified, 10);
    assert!(
        report.ok,
        "an identical redelivery does not fail the feed: {report}"
    );
    assert!(report.to_string().contains("Duplicates: seq 3"));

    // Same seq, different content, validly signed by the site key on a forked chain.
    let mut forked = Chain::resume(&records[1]);
    let mut fork = forked.append(&key(1), "a different hour 3");
    fork.prev = records[1].hash;
    records.push(fork);
    let report = check(&records);
    assert!(!report.ok);
    assert_eq!(report.conflicts, vec![3]);
}

#[test]
fn a_record_re_signed_with_another_key_is_named() {
    let mut records = chain(10);
    let r = &records[6];
    let mut other = Chain::resume(&records[5]);
    let forged = other.append(&key(2), r.payload.clone());
    assert_eq!(forged.hash, r.hash, "same content, same hash");
    records[6] = forged;
    let report = check(&records);
    assert!(!report.ok);
    assert_eq!(report.bad_signature, vec![7]);
    assert!(report.broken_chain.is_empty());
    assert!(
        report
            .to_string()
            .contains("Bad signature: seq 7 (not signed by this site's key)")
    );

    // A whole feed signed by another key fails everywhere.
    let report = ledger::verify(&key(2).verifying_key(), &chain(4));
    assert_eq!(report.bad_signature, vec![1, 2, 3, 4]);
    assert_eq!(report.verified, 0);
}

#[test]
fn a_capture_that_starts_mid_chain_says_so() {
    let records = chain(10);
    let report = check(&records[4..]);
    assert!(
        !report.ok,
        "a missing start fails without --after: {report}"
    );
    assert!(!report.from_genesis);
    assert!(report.to_string().contains("does not start at seq 1"));
    // A forged "first" record claiming genesis in the middle of the chain.
    let mut records = chain(3);
    records[0].prev = [7; 32];
    records[0].hash = records[0].computed_hash();
    let report = check(&records);
    assert_eq!(report.bad_signature, vec![1]);
    assert_eq!(report.broken_chain, vec![1, 2]);
}

#[test]
fn records_of_another_stream_are_foreign() {
    let mut records = chain(3);
    let mut other = Chain::new(SITE, "energy");
    records.push(other.append(&key(1), "x"));
    let report = check(&records);
    assert!(!report.ok);
    assert_eq!(report.foreign, vec![1]);
}

#[cfg(unix)]
#[test]
fn keygen_writes_a_private_key_only_the_owner_reads() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let keys = ledger::keygen(&dir.path().join("keys")).unwrap();
    let mode = std::fs::metadata(&keys.secret)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(keys.public_hex.len(), 64);
    assert!(matches!(
        ledger::keygen(&dir.path().join("keys")),
        Err(LedgerError::KeyExists(_))
    ));

    let signing = ledger::load_signing_key(&keys.secret).unwrap();
    let public = ledger::load_verifying_key(&keys.public).unwrap();
    assert_eq!(signing.verifying_key(), public);

    // Sign a feed, write it, verify the file.
    let mut c = Chain::new(SITE, STREAM);
    let records: Vec<_> = (0..5)
        .map(|i| c.append(&signing, format!("hour {i}")))
        .collect();
    let file = dir.path().join("feed.jsonl");
    ledger::append_jsonl(&file, &records[..3]).unwrap();
    ledger::append_jsonl(&file, &records[3..]).unwrap();
    let report = audit::verify_file(&keys.public, &file).unwrap();
    assert!(report.ok, "{report}");
    assert_eq!(report.verified, 5);

    // A line that is not a record fails the verdict and is named.
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("not json\n");
    std::fs::write(&file, text).unwrap();
    let report = audit::verify_file(&keys.public, &file).unwrap();
    assert!(!report.ok);
    assert_eq!(report.unreadable.len(), 1);
    assert_eq!(report.unreadable[0].0, 6);
    assert!(report.to_string().contains("Unreadable: line 6"));

    // A key others can read is refused.
    std::fs::set_permissions(&keys.secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        ledger::load_signing_key(&keys.secret),
        Err(LedgerError::KeyTooOpen { mode: 0o644, .. })
    ));
    // A damaged public key file is refused.
    std::fs::write(&keys.public, "abc\n").unwrap();
    assert!(matches!(
        ledger::load_verifying_key(&keys.public),
        Err(LedgerError::KeyFormat { .. })
    ));
}

#[test]
fn a_config_change_is_a_record_of_the_chain() {
    let payload = ledger::config_change_payload(b"abc", smeltwatch::model::Timestamp(1_000));
    // SHA-256("abc"), the FIPS 180-2 example.
    assert_eq!(
        payload,
        r#"{"kind":"config_change","config_sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","ts_ms":1000}"#
    );
    let mut records = chain(2);
    let mut c = Chain::resume(&records[1]);
    records.push(c.append(&key(1), payload));
    assert!(check(&records).ok);
}

#[test]
fn a_back_dated_record_is_named() {
    let k = key(1);
    let mut c = Chain::new(SITE, STREAM);
    let hour = 3_600_000;
    let records: Vec<_> = [1, 2, 3, 1, 5]
        .iter()
        .map(|h| {
            c.append(
                &k,
                format!(r#"{{"quantity":"so2_mg_m3","end":{}}}"#, h * hour),
            )
        })
        .collect();
    let report = check(&records);
    assert!(!report.ok);
    assert_eq!(report.time_reversed, vec![4]);
    assert_eq!(report.verified, 5, "signed and chained, but back-dated");
    assert!(report.to_string().contains("Time reversed: seq 4"));
    assert_eq!(ledger::payload_time(r#"{"ts_ms":7}"#), Some(7));
    assert_eq!(ledger::payload_time("##0101QN=…"), None);
}

/// Hourly aggregates sealed into a chain and encoded as the MQTT uplink publishes them.
fn sealed_payloads(
    encoding: smeltwatch::config::Encoding,
    historical: &[bool],
) -> Vec<(LedgerRecord, Vec<u8>)> {
    use smeltwatch::config::Stream;
    use smeltwatch::model::{Aggregate, Period, Record};

    let k = key(1);
    let mut c = Chain::new(SITE, ledger::capture::REGULATED_CHAIN);
    historical
        .iter()
        .enumerate()
        .map(|(i, &hist)| {
            let start = 1_740_790_800_000 + i as i64 * 3_600_000;
            let record = Record::Aggregate(Aggregate {
                min: Some(70.0),
                max: Some(95.5),
                ..stack_aggregate(
                    "so2_mg_m3",
                    Period::Hour,
                    start,
                    start + 3_600_000,
                    80.25 + i as f64,
                    0.0,
                )
            });
            let seal = c.append(&k, ledger::capture::payload_of(&record));
            // Through the spool as the fan-out writes it, out as the MQTT uplink encodes it.
            let body = ledger::capture::sealed_body(&seal);
            let back: Record = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                back, record,
                "uplinks that do not sign read the sealed body"
            );
            let carried = ledger::capture::seal_of(&body).unwrap();
            assert_eq!(carried, seal);
            let payload = smeltwatch::codec::encode_sealed(
                encoding,
                Envelope::new(SITE, Stream::Emissions, i as u64 + 1, hist),
                &back,
                Some(&carried),
            );
            (seal, payload)
        })
        .collect()
}

fn verify_payloads(payloads: &[Vec<u8>]) -> Report {
    audit::capture::verify_messages(
        &key(1).verifying_key(),
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| (i + 1, p.as_slice())),
        false,
    )
}

#[test]
fn sealed_json_and_protobuf_payloads_verify_and_a_changed_body_is_named() {
    use smeltwatch::config::Encoding;
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        let sealed = sealed_payloads(encoding, &[false; 4]);
        let mut payloads: Vec<Vec<u8>> = sealed.iter().map(|(_, p)| p.clone()).collect();
        let report = verify_payloads(&payloads);
        assert!(report.ok, "{encoding:?}: {report}");
        assert_eq!(report.verified, 4);

        // Change the average shown in the body of seq 3, leaving the signed payload alone.
        payloads[2] = match encoding {
            Encoding::Json => {
                let mut v: serde_json::Value = serde_json::from_slice(&payloads[2]).unwrap();
                assert_eq!(v["ledger"]["seq"], 3);
                v["avg"] = serde_json::json!(12.0);
                serde_json::to_vec(&v).unwrap()
            }
            Encoding::Protobuf => {
                use prost::Message as _;
                use smeltwatch::codec::protobuf::pb;
                let mut env = pb::Envelope::decode(payloads[2].as_slice()).unwrap();
                let Some(pb::envelope::Body::Aggregate(a)) = &mut env.body else {
                    panic!("an aggregate")
                };
                a.avg = Some(12.0);
                env.encode_to_vec()
            }
            Encoding::Hj212 => unreachable!("HJ 212 text carries no ledger seal"),
        };
        let report = verify_payloads(&payloads);
        assert!(!report.ok, "{encoding:?}");
        assert_eq!(report.mismatched, vec![3], "{encoding:?}: {report}");
        assert_eq!(report.verified, 4, "the signatures themselves still check");
        assert!(
            report
                .to_string()
                .contains("Altered body: seq 3 (the record shown differs from the signed payload)"),
            "{report}"
        );
    }
}

#[test]
fn a_historical_replay_may_arrive_late_but_a_reordered_live_record_may_not() {
    use smeltwatch::config::Encoding;
    // Seq 2 was replayed after an outage, behind seq 3 and 4: late by design.
    let sealed = sealed_payloads(Encoding::Json, &[false, true, false, false]);
    let p: Vec<Vec<u8>> = sealed.iter().map(|(_, p)| p.clone()).collect();
    let report = verify_payloads(&[p[0].clone(), p[2].clone(), p[3].clone(), p[1].clone()]);
    assert!(report.ok, "{report}");
    assert_eq!(report.late, vec![2]);
    assert!(report.out_of_order.is_empty());
    // The same order with seq 3 out of place and not historical fails.
    let report = verify_payloads(&[p[0].clone(), p[1].clone(), p[3].clone(), p[2].clone()]);
    assert!(!report.ok);
    assert_eq!(report.out_of_order, vec![3], "{report}");
}

#[test]
fn capture_files_of_json_payloads_or_protobuf_envelopes_verify() {
    use smeltwatch::config::Encoding;
    let dir = tempfile::tempdir().unwrap();
    let keys = ledger::keygen(&dir.path().join("keys")).unwrap();
    let signing = ledger::load_signing_key(&keys.secret).unwrap();
    // The payloads of `sealed_payloads`, sealed again with the generated key.
    let mut c = Chain::new(SITE, ledger::capture::REGULATED_CHAIN);
    let mut json_lines = Vec::new();
    let mut pb_file = Vec::new();
    for (seal, _) in sealed_payloads(Encoding::Json, &[false; 3]) {
        let resealed = c.append(&signing, seal.payload.clone());
        let record: smeltwatch::model::Record = serde_json::from_str(&seal.payload).unwrap();
        for (encoding, out) in [(Encoding::Json, 0), (Encoding::Protobuf, 1)] {
            let payload = smeltwatch::codec::encode_sealed(
                encoding,
                Envelope::new(
                    SITE,
                    smeltwatch::config::Stream::Emissions,
                    resealed.seq,
                    false,
                ),
                &record,
                Some(&resealed),
            );
            if out == 0 {
                json_lines.extend_from_slice(&payload);
                json_lines.push(b'\n');
            } else {
                prost::encoding::encode_varint(payload.len() as u64, &mut pb_file);
                pb_file.extend_from_slice(&payload);
            }
        }
    }
    // An unsigned payload (a live batch) in the capture is counted and ignored.
    json_lines.extend_from_slice(br#"{"site":"demo-al-01","stream":"live","seq":9,"readings":[]}"#);
    json_lines.push(b'\n');
    let jsonl = dir.path().join("capture.jsonl");
    std::fs::write(&jsonl, &json_lines).unwrap();
    let report = audit::verify_file(&keys.public, &jsonl).unwrap();
    assert!(report.ok, "{report}");
    assert_eq!((report.verified, report.unsealed), (3, 1));
    assert!(
        report
            .to_string()
            .contains("Not in the chain: 1 unsigned message(s)")
    );

    let pb = dir.path().join("capture.pb");
    std::fs::write(&pb, &pb_file).unwrap();
    let report = audit::verify_file(&keys.public, &pb).unwrap();
    assert!(report.ok, "{report}");
    assert_eq!(report.verified, 3);
    // A truncated protobuf capture fails, naming where it breaks; what precedes still checks.
    std::fs::write(&pb, &pb_file[..pb_file.len() - 3]).unwrap();
    let report = audit::verify_file(&keys.public, &pb).unwrap();
    assert!(!report.ok);
    assert_eq!(report.verified, 2, "{report}");
    assert_eq!(report.unreadable.len(), 1, "{report}");
    assert_eq!(report.unreadable[0].0, 3, "{report}");
}

#[test]
fn a_window_that_closes_after_a_restart_is_not_back_dated_by_the_configuration_record() {
    // Restart at 13:05: the configuration record (its `ts`) precedes the hour 12:00-13:00 that
    // was open across the restart and closes once the new agent reads again.
    let k = key(1);
    let mut c = Chain::new(SITE, STREAM);
    let hour = 3_600_000;
    let records = vec![
        c.append(&k, format!(r#"{{"quantity":"so2_mg_m3","end":{}}}"#, 12 * hour)),
        c.append(
            &k,
            format!(
                r#"{{"record":"event","kind":"config_change","subject":"s","phase":"instant","ts":{},"attributes":[],"message":""}}"#,
                13 * hour + 300_000
            ),
        ),
        c.append(&k, format!(r#"{{"quantity":"so2_mg_m3","end":{}}}"#, 13 * hour)),
    ];
    let report = check(&records);
    assert!(report.ok, "{report}");
    assert!(report.time_reversed.is_empty());
}

// Anchors: the head an operator or regulator recorded (`--expect-head`) and the point a capture
// is known to start after (`--after`). Without them a shortened or replayed chain still links.

fn check_anchored(records: &[LedgerRecord], anchors: &ledger::Anchors) -> Report {
    ledger::verify_with(&key(1).verifying_key(), records, anchors)
}

fn head_of(r: &LedgerRecord) -> ledger::Anchors {
    ledger::Anchors {
        expect_head: Some(ledger::Anchor {
            seq: r.seq,
            hash: Some(r.hash),
        }),
        ..ledger::Anchors::default()
    }
}

#[test]
fn a_tail_dropped_against_the_expected_head_fails() {
    let records = chain(10);
    let anchors = head_of(&records[9]);
    // Seq 8 to 10 cut off: every remaining record is signed and linked.
    let report = check_anchored(&records[..7], &anchors);
    assert!(!report.ok, "{report}");
    assert_eq!(report.tail_missing, Some((8, 10)), "{report}");
    assert_eq!(report.verified, 7);
    let text = report.to_string();
    assert!(text.starts_with("Verdict: FAILED"), "{text}");
    assert!(
        text.contains(
            "Missing tail: seq 8 to 10 (the capture ends before the expected head, seq 10"
        ),
        "{text}"
    );
}

#[test]
fn a_dropped_prefix_fails_unless_the_capture_starts_after_an_anchor() {
    let records = chain(10);
    let report = check(&records[4..]);
    assert!(!report.ok, "{report}");
    assert_eq!(report.prefix_missing, Some((1, 4)), "{report}");
    assert!(
        report.to_string().contains(
            "Missing start: seq 1 to 4 (the capture does not start at seq 1; give --after SEQ:HASH"
        ),
        "{report}"
    );
    // Known to start after seq 4 (whose hash the regulator holds): intact.
    let after = |seq: u64, hash: Option<[u8; 32]>| ledger::Anchors {
        after: Some(ledger::Anchor { seq, hash }),
        ..ledger::Anchors::default()
    };
    let report = check_anchored(&records[4..], &after(4, Some(records[3].hash)));
    assert!(report.ok, "{report}");
    assert_eq!(report.prefix_missing, None);
    // Starting after seq 2: seq 3 and 4 are missing.
    let report = check_anchored(&records[4..], &after(2, None));
    assert!(!report.ok);
    assert_eq!(report.prefix_missing, Some((3, 4)), "{report}");
    // The anchor's hash is not the one seq 5 follows: the capture is of another chain.
    let report = check_anchored(&records[4..], &after(4, Some([9; 32])));
    assert!(!report.ok);
    assert_eq!(report.diverged, vec![5], "{report}");
}

#[test]
fn an_old_complete_chain_fails_against_a_newer_expected_head() {
    let records = chain(10);
    let anchors = head_of(&records[9]);
    // The chain as it stood at seq 6, complete from genesis and replayed whole.
    let old = &records[..6];
    assert!(check(old).ok, "without an anchor it passes");
    let report = check_anchored(old, &anchors);
    assert!(!report.ok, "{report}");
    assert_eq!(report.tail_missing, Some((7, 10)), "{report}");

    // A chain that reaches seq 10 but is not the one the head was recorded from.
    let mut c = Chain::resume(&records[5]);
    let mut forked = old.to_vec();
    forked.extend((7..=10).map(|i| c.append(&key(1), format!("another hour {i}"))));
    assert!(check(&forked).ok, "signed by the site key and linked");
    let report = check_anchored(&forked, &anchors);
    assert!(!report.ok, "{report}");
    assert_eq!(report.diverged, vec![10], "{report}");
    assert!(
        report
            .to_string()
            .contains("Diverged: seq 10 (its hash is not the anchored one"),
        "{report}"
    );
}

#[test]
fn the_untampered_chain_with_its_head_passes() {
    let records = chain(10);
    let report = check_anchored(&records, &head_of(&records[9]));
    assert!(report.ok, "{report}");
    assert_eq!(report.tail_missing, None);
    assert!(report.diverged.is_empty());
    assert!(
        report.to_string().contains(&format!(
            "Head: seq 10, hash {}",
            ledger::to_hex(&records[9].hash)
        )),
        "{report}"
    );
    // The chain has grown since the head was recorded: still intact.
    let report = check_anchored(&records, &head_of(&records[7]));
    assert!(report.ok, "{report}");
    assert_eq!(
        ledger::Anchor::parse(&format!("10:{}", ledger::to_hex(&records[9].hash))),
        Ok(ledger::Anchor {
            seq: 10,
            hash: Some(records[9].hash)
        })
    );
    assert_eq!(
        ledger::Anchor::parse("4"),
        Ok(ledger::Anchor { seq: 4, hash: None })
    );
    assert!(ledger::Anchor::parse("x:00").is_err());
    assert!(ledger::Anchor::parse("4:abc").is_err());
}

#[test]
fn a_relabelled_historical_flag_fails() {
    use smeltwatch::config::Encoding;
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        // Seq 2 was replayed after an outage (historical), the others were live.
        let sealed = sealed_payloads(encoding, &[false, true, false, false]);
        let p: Vec<Vec<u8>> = sealed.iter().map(|(_, p)| p.clone()).collect();
        let report = verify_payloads(&p);
        assert!(report.ok, "{encoding:?}: {report}");
        assert!(report.relabelled.is_empty());

        // Flip the flag of seq 3 (live to historical) and of seq 2 (historical to live).
        for (i, seq) in [(2usize, 3u64), (1, 2)] {
            let mut q = p.clone();
            q[i] = match encoding {
                Encoding::Json => {
                    let mut v: serde_json::Value = serde_json::from_slice(&q[i]).unwrap();
                    let was = v.get("historical") == Some(&serde_json::json!(true));
                    let o = v.as_object_mut().unwrap();
                    if was {
                        o.remove("historical");
                    } else {
                        o.insert("historical".into(), serde_json::json!(true));
                    }
                    serde_json::to_vec(&v).unwrap()
                }
                Encoding::Protobuf => {
                    use prost::Message as _;
                    use smeltwatch::codec::protobuf::pb;
                    let mut env = pb::Envelope::decode(q[i].as_slice()).unwrap();
                    env.historical = !env.historical;
                    env.encode_to_vec()
                }
                Encoding::Hj212 => unreachable!("HJ 212 text carries no ledger seal"),
            };
            let report = verify_payloads(&q);
            assert!(!report.ok, "{encoding:?} seq {seq}: {report}");
            assert_eq!(report.relabelled, vec![seq], "{encoding:?}: {report}");
            assert!(
                report.to_string().contains(&format!(
                    "Relabelled: seq {seq} (the historical flag differs from the signed one)"
                )),
                "{report}"
            );
        }

        // Relabelling the seal itself as well breaks its signature.
        if encoding == Encoding::Json {
            let mut v: serde_json::Value = serde_json::from_slice(&p[2]).unwrap();
            v["historical"] = serde_json::json!(true);
            v["ledger"]["historical"] = serde_json::json!(true);
            let mut q = p.clone();
            q[2] = serde_json::to_vec(&v).unwrap();
            let report = verify_payloads(&q);
            assert!(!report.ok);
            assert_eq!(report.bad_signature, vec![3], "{report}");
        }
    }
}

#[test]
fn the_verify_command_fails_on_truncation_and_passes_with_its_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("site.pub");
    std::fs::write(
        &public,
        format!("{}\n", ledger::to_hex(key(1).verifying_key().as_bytes())),
    )
    .unwrap();
    let records = chain(10);
    let file = |name: &str, rs: &[LedgerRecord]| {
        let f = dir.path().join(name);
        ledger::append_jsonl(&f, rs).unwrap();
        f
    };
    let whole = file("whole.jsonl", &records);
    let cut = file("cut.jsonl", &records[..7]);
    let late_start = file("late_start.jsonl", &records[4..]);
    let head = format!("10:{}", ledger::to_hex(&records[9].hash));
    let after = format!("4:{}", ledger::to_hex(&records[3].hash));
    let run = |f: &std::path::Path, extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
            .arg("verify")
            .arg("--key")
            .arg(&public)
            .arg("--file")
            .arg(f)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = run(&whole, &["--expect-head", &head]);
    assert!(ok, "{out}");
    let (ok, out) = run(&cut, &["--expect-head", &head]);
    assert!(!ok, "{out}");
    assert!(out.contains("Missing tail: seq 8 to 10"), "{out}");
    let (ok, out) = run(&late_start, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("Missing start: seq 1 to 4"), "{out}");
    let (ok, out) = run(&late_start, &["--after", &after, "--expect-head", &head]);
    assert!(ok, "{out}");
}

#[test]
fn a_record_sent_live_and_again_as_historical_is_one_record_delivered_twice() {
    use smeltwatch::config::Encoding;
    let (seal, live) = sealed_payloads(Encoding::Json, &[false]).remove(0);
    let record: smeltwatch::model::Record = serde_json::from_str(&seal.payload).unwrap();
    let again = smeltwatch::codec::encode_sealed(
        Encoding::Json,
        Envelope::new(SITE, smeltwatch::config::Stream::Emissions, 1, true),
        &record,
        Some(&seal),
    );
    let v: serde_json::Value = serde_json::from_slice(&again).unwrap();
    assert_eq!(v["historical"], true);
    assert_eq!(
        v["ledger"]["historical"], true,
        "the seal carries the label"
    );
    assert!(
        v["ledger"].get("sig_historical").is_none(),
        "the other label's signature stays on the gateway"
    );
    let report = verify_payloads(&[live, again]);
    assert!(report.ok, "{report}");
    assert_eq!(report.duplicates, vec![1]);
    assert!(report.conflicts.is_empty() && report.relabelled.is_empty());
}
