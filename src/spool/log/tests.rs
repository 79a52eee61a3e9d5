//! Tests of the record log: its frames in both formats, replay, and the file kept in place.

use super::*;
use crate::model::Timestamp;

const FRAME_HEADER_LEN_V2: usize = 13;

fn rec(stream: Stream, topic: &str, body: &[u8], ms: i64) -> NewRecord {
    NewRecord {
        stream,
        topic: topic.to_owned(),
        body: body.to_vec(),
        created: Timestamp(ms),
    }
}

fn frames(format: Format, records: &[(i64, u64, NewRecord)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, seq, r) in records {
        format.encode_record(&mut out, *id, *seq, r);
    }
    out
}

/// The ids of the records a reader finds in the log at `path`.
fn read_ids(path: &Path) -> Vec<i64> {
    let replay = RecordLog::read(path).unwrap();
    replay.records.iter().map(|r| r.id).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// CRC-32C bit by bit (reflected, polynomial 0x82F63B78): the definition, as the oracle.
fn crc32c_bitwise(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn the_checksum_is_crc32c_across_lengths_and_offsets() {
    assert_eq!(
        checksum(b"123456789"),
        0xE306_9283,
        "the CRC-32C check value"
    );
    assert_eq!(checksum(b""), 0);
    let bytes: Vec<u8> = (0..9000u32).map(|i| (i * 31 + i / 7) as u8).collect();
    for len in [1, 7, 8, 15, 16, 63, 64, 255, 256, 1000, 2160, 8192, 9000] {
        for skip in 0..3 {
            let part = &bytes[skip..len.max(skip)];
            assert_eq!(
                checksum(part),
                crc32c_bitwise(part),
                "len {len}, skip {skip}"
            );
        }
    }
}

/// A record frame as this release writes it, its checksum from the bitwise oracle: the
/// layout is pinned, and what it writes reads back.
#[test]
fn a_record_frame_keeps_its_bytes() {
    let format = Format::V2 {
        generation: 0x1_0000_0005,
    };
    let mut out = Vec::new();
    format.encode_record(&mut out, 7, 3, &rec(Stream::Live, "a/b", &[1, 2, 3], 1_000));
    // Generation 5 (its low 32 bits), kind 1 (a record), the payload.
    let covered = format!("0500000001{GOLDEN_PAYLOAD}");
    let covered_bytes: Vec<u8> = (0..covered.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&covered[i..i + 2], 16).unwrap())
        .collect();
    let crc = crc32c_bitwise(&covered_bytes).to_le_bytes();
    assert_eq!(hex(&out), format!("23000000{}{covered}", hex(&crc)));
    let mut file = b"SWSPLOG2".to_vec();
    file.extend_from_slice(&0x1_0000_0005u64.to_le_bytes());
    file.extend_from_slice(&out);
    assert_eq!(Format::of(&file), Some(format));
    let replayed = replay(&file, format);
    assert_eq!(replayed.records.len(), 1);
    assert_eq!(replayed.discarded_bytes, 0);
}

/// A record frame as earlier releases wrote it (`SWSPLOG1`): their logs read back, and what
/// this one appends to them before their first reset reads in them.
#[test]
fn a_record_frame_of_an_earlier_release_keeps_its_bytes() {
    let mut out = Vec::new();
    Format::V1.encode_record(&mut out, 7, 3, &rec(Stream::Live, "a/b", &[1, 2, 3], 1_000));
    // Payload length 0x23, CRC-32C of kind and payload, kind 1 (a record), the payload.
    assert_eq!(hex(&out), format!("2300000050a44e4801{GOLDEN_PAYLOAD}"));
    let file = [b"SWSPLOG1".as_slice(), &out].concat();
    assert_eq!(Format::of(&file), Some(Format::V1));
    let replayed = replay(&file, Format::V1);
    assert_eq!(replayed.records.len(), 1);
    assert_eq!(replayed.discarded_bytes, 0);
}

/// The payload of the golden record frame, in both formats.
const GOLDEN_PAYLOAD: &str = concat!(
    "0700000000000000", // id
    "00",               // stream: live
    "0300000000000000", // seq
    "e803000000000000", // created_ms
    "03000000612f62",   // topic "a/b"
    "010203",           // body
);

#[test]
fn records_and_acks_read_back_in_order_across_synced_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db-log");
    let (mut log, replay) = RecordLog::open(&path).unwrap();
    assert!(replay.records.is_empty());
    let a = rec(Stream::Live, "a/b", &[1, 2, 3], 1_000);
    let b = rec(Stream::Emissions, "é/x", &[], -5);
    let c = rec(Stream::Events, "c", &[9; 5000], 7);
    let format = log.format();
    log.append(
        &mut frames(format, &[(1, 1, a.clone()), (2, 1, b.clone())]),
        true,
    )
    .unwrap();
    assert_eq!(log.len(), 4096, "a synced append ends on a page boundary");
    log.append_acks(&[(1, 1)]).unwrap();
    log.append_attempts(&[2, 2]).unwrap();
    log.append(&mut frames(format, &[(3, 1, c.clone())]), true)
        .unwrap();
    assert_eq!(log.len(), 3 * 4096);
    drop(log);

    let (log, replay) = RecordLog::open(&path).unwrap();
    let got: Vec<_> = replay
        .records
        .iter()
        .map(|r| {
            (
                r.id,
                r.stream,
                r.seq,
                r.topic.as_str(),
                r.body.len(),
                r.created_ms,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, Stream::Live, 1, "a/b", 3, 1_000),
            (2, Stream::Emissions, 1, "é/x", 0, -5),
            (3, Stream::Events, 1, "c", 5000, 7)
        ]
    );
    assert_eq!(replay.acked, [(1, 1)]);
    assert_eq!(replay.attempts, [2, 2]);
    assert_eq!(replay.discarded_bytes, 0);
    assert_eq!(log.len(), 3 * 4096, "appends go on after the last frame");
    assert_eq!(RecordLog::read(&path).unwrap().records, replay.records);
}

#[test]
fn a_torn_or_damaged_tail_is_discarded_and_what_precedes_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db-log");
    let (mut log, _) = RecordLog::open(&path).unwrap();
    let format = log.format();
    let first = rec(Stream::Live, "t", b"one", 1);
    log.append(&mut frames(format, &[(1, 1, first)]), true)
        .unwrap();
    let mut second = frames(format, &[(2, 2, rec(Stream::Live, "t", b"two", 2))]);
    let second_len = second.len();
    log.append(&mut second, false).unwrap();
    drop(log);
    let whole = fs::read(&path).unwrap();
    assert_eq!(whole.len() as u64, FILE_BYTES);
    // Cut short (the rest of the file as it was before, zeros here): a frame whose header
    // names this generation is reported, to where it says it ends; with less than a header
    // there is nothing to tell it from what an earlier generation left.
    for (cut, reported) in [
        (1, 0),
        (FRAME_HEADER_LEN_V2, second_len),
        (second_len - 1, second_len),
    ] {
        let mut torn = whole.clone();
        torn[4096 + cut..4096 + second_len].fill(0);
        fs::write(&path, &torn).unwrap();
        let replay = RecordLog::read(&path).unwrap();
        assert_eq!(replay.records.len(), 1, "cut {cut}");
        assert_eq!(replay.discarded_bytes, reported as u64, "cut {cut}");
    }
    let mut flipped = whole.clone();
    let last = 4096 + second_len - 1;
    flipped[last] ^= 0x40;
    fs::write(&path, &flipped).unwrap();
    let (mut log, replay) = RecordLog::open(&path).unwrap();
    assert_eq!(replay.records.len(), 1);
    assert_eq!(replay.discarded_bytes, second_len as u64);
    drop(log);
    let zeroed = fs::read(&path).unwrap();
    assert_eq!(zeroed.len() as u64, FILE_BYTES);
    assert!(
        zeroed[4096..].iter().all(|&b| b == 0),
        "the damaged frame is zeroed"
    );
    // The next append goes after the last good frame and reads back.
    (log, _) = RecordLog::open(&path).unwrap();
    let third = rec(Stream::Live, "t", b"three", 3);
    log.append(&mut frames(format, &[(3, 3, third)]), true)
        .unwrap();
    drop(log);
    let replay = RecordLog::read(&path).unwrap();
    let ids: Vec<i64> = replay.records.iter().map(|r| r.id).collect();
    assert_eq!((ids, replay.discarded_bytes), (vec![1, 3], 0));
}

#[test]
fn a_file_that_is_not_a_log_is_refused_and_an_empty_one_is_new() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x-log");
    fs::write(&path, b"SQLite format 3\0").unwrap();
    assert!(matches!(RecordLog::open(&path), Err(OpenError::NotALog(_))));
    fs::write(&path, b"").unwrap();
    let (log, replay) = RecordLog::open(&path).unwrap();
    assert!(replay.records.is_empty());
    assert_eq!(log.len(), 16, "the header");
    log.remove().unwrap();
    assert!(!path.exists());
    assert!(RecordLog::read(&path).unwrap().records.is_empty());
}

#[test]
fn reset_empties_the_log_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s-log");
    let (mut log, _) = RecordLog::open(&path).unwrap();
    let long = rec(Stream::Live, "t", &[0xAB; 9000], 1);
    log.append(&mut frames(log.format(), &[(1, 1, long)]), true)
        .unwrap();
    log.append_acks(&[(1, 1)]).unwrap();
    let before = fs::read(&path).unwrap();
    log.reset().unwrap();
    assert_eq!(log.format(), Format::V2 { generation: 2 });
    assert!(log.is_empty());
    let after = fs::read(&path).unwrap();
    assert_eq!(after.len() as u64, FILE_BYTES, "the file keeps its size");
    assert_eq!(
        after[16..],
        before[16..],
        "the old frames stay where they are: no block is given back and taken again"
    );
    let replay = RecordLog::read(&path).unwrap();
    assert!(replay.records.is_empty() && replay.acked.is_empty());
    assert_eq!(
        replay.discarded_bytes, 0,
        "an earlier generation is not damage"
    );

    // A shorter generation over the old one: a synced append, then an unsynced ack frame
    // followed by what the old generation left.
    let short = rec(Stream::Live, "t", b"y", 2);
    log.append(&mut frames(log.format(), &[(2, 2, short)]), true)
        .unwrap();
    log.append_acks(&[(2, 2)]).unwrap();
    drop(log);
    for replay in [
        RecordLog::read(&path).unwrap(),
        RecordLog::open(&path).unwrap().1,
    ] {
        let ids: Vec<i64> = replay.records.iter().map(|r| r.id).collect();
        assert_eq!(ids, [2]);
        assert_eq!(replay.acked, [(2, 2)]);
        assert_eq!(replay.discarded_bytes, 0);
    }
}

/// A log an earlier release left behind: read back, appended to in its own format, and
/// started again in this one (truncated once) when it is next emptied.
#[test]
fn a_log_of_an_earlier_release_is_read_and_converted_at_its_first_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s-log");
    let mut file = b"SWSPLOG1".to_vec();
    file.extend(frames(
        Format::V1,
        &[(1, 1, rec(Stream::Live, "t", b"x", 1))],
    ));
    file.resize(FILE_BYTES as usize, 0);
    fs::write(&path, &file).unwrap();
    let (mut log, replay) = RecordLog::open(&path).unwrap();
    assert_eq!(replay.records.len(), 1);
    assert_eq!(log.format(), Format::V1);
    log.append(
        &mut frames(log.format(), &[(2, 2, rec(Stream::Live, "t", b"y", 2))]),
        true,
    )
    .unwrap();
    assert_eq!(read_ids(&path), [1, 2]);
    log.reset().unwrap();
    assert_eq!(log.format(), Format::V2 { generation: 1 });
    let bytes = fs::read(&path).unwrap();
    assert!(bytes.starts_with(b"SWSPLOG2"));
    assert!(bytes[16..].iter().all(|&b| b == 0), "its frames are gone");
    log.append(
        &mut frames(log.format(), &[(3, 3, rec(Stream::Live, "t", b"z", 3))]),
        true,
    )
    .unwrap();
    drop(log);
    assert_eq!(read_ids(&path), [3]);
}

proptest::proptest! {
    /// No byte sequence after the magic panics the reader, and what it returns stays within
    /// the input.
    #[test]
    fn replay_never_panics(
        tail in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
        generation in proptest::num::u64::ANY,
    ) {
        for format in [Format::V1, Format::V2 { generation }] {
            let mut bytes = match format {
                Format::V1 => b"SWSPLOG1".to_vec(),
                Format::V2 { .. } => [b"SWSPLOG2".as_slice(), &generation.to_le_bytes()].concat(),
            };
            bytes.extend_from_slice(&tail);
            proptest::prop_assert_eq!(Format::of(&bytes), Some(format));
            let r = replay(&bytes, format);
            proptest::prop_assert!(r.discarded_bytes <= tail.len() as u64);
            proptest::prop_assert!(r.end <= bytes.len() as u64);
        }
    }
}
