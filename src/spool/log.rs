//! The spool's record log: an append-only file of framed records and acks beside the SQLite file.
//!
//! Why it exists: a SQLite transaction per poll batch rewrites whole B-tree pages (the records
//! leaf, the id index, the seq counters) into the WAL and again into the file at checkpoint, and
//! rewrites them once more when the ack deletes the row. For a 2.3 kB batch that was 30 to 90 kB
//! written to flash, and most of the spool thread's CPU. Here a batch costs its own bytes, written
//! once: records are appended as frames and made durable with one `fdatasync` per append, acks
//! are appended as frames of id ranges without a sync, and records leave the log by the log being
//! emptied, never by being rewritten (see [`super::Spool`] for when it is emptied).
//!
//! # Format
//! An 8-byte file magic, then frames:
//! ```text
//! payload_len u32 LE | crc32c u32 LE (over kind and payload) | kind u8 | payload
//! kind 1, a record: id i64 | stream u8 | seq u64 | created_ms i64 | topic_len u32 | topic | body
//! kind 2, acks:     (first_id i64, last_id i64) per range of acked ids
//! kind 3, attempts: id i64 per record whose send ended unacknowledged (once per attempt)
//! ```
//! After a synced append the next frame starts on the next 4 KiB boundary: the page the append
//! ended in is then never written again after its fsync (a page dirtied again is written to
//! flash again in full). The file is also kept at a fixed size, [`FILE_BYTES`], its blocks
//! allocated ahead (`posix_fallocate`; sparse where the file system cannot): on ext4 an append
//! that extends a file also writes the page that held the old end again, and allocated blocks let
//! appends go on when the file system fills, as SQLite's WAL reuses its own pages. Together they bring an append of a 2.2 kB batch from about 1.5 pages (no
//! alignment), or 2 (alignment alone), to one. A reader skips a run of zero bytes to the next
//! boundary. Replay stops at the first frame that is incomplete or fails its checksum: only the
//! tail can be torn, since every append that returned was synced; what lies after such a frame
//! is reported, not guessed at.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::config::Stream;

const FILE_MAGIC: &[u8; 8] = b"SWSPLOG1";
const HEADER_LEN: u64 = FILE_MAGIC.len() as u64;
const FRAME_HEADER_LEN: usize = 9;
const KIND_RECORD: u8 = 1;
const KIND_ACKS: u8 = 2;
const KIND_ATTEMPTS: u8 = 3;
/// The page a synced append is padded to: the kernel's page, the unit it writes back.
const PAGE_BYTES: u64 = 4096;
/// The spool moves the log into SQLite and empties it once it holds this many bytes.
pub(super) const FULL_BYTES: u64 = 8 << 20;
/// The size the file is kept at (see [`allocate`]): the full log plus the append that filled it.
const FILE_BYTES: u64 = FULL_BYTES + (1 << 20);
/// The fixed part of a record frame's payload.
const RECORD_FIXED_LEN: usize = 8 + 1 + 8 + 8 + 4;

/// The CRC-32C (Castagnoli) of `bytes`, the checksum of every frame. Every record's body goes
/// through it on append: with slice-by-16 tables it was about a twentieth of the agent's
/// instructions at 20 devices × 100 registers, with the CPU's CRC instruction a fraction of that
/// (docs/PERFORMANCE.md, "the record log's CRC").
fn checksum(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// A record as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LoggedRecord {
    pub(super) id: i64,
    pub(super) stream: Stream,
    pub(super) seq: u64,
    pub(super) created_ms: i64,
    pub(super) topic: String,
    pub(super) body: Vec<u8>,
}

/// What [`RecordLog::open`] read back.
#[derive(Debug, Default)]
pub(super) struct Replay {
    /// Every record frame, in file order (ascending id).
    pub(super) records: Vec<LoggedRecord>,
    /// Every acked id range, inclusive.
    pub(super) acked: Vec<(i64, i64)>,
    /// One id per unacknowledged send of that record.
    pub(super) attempts: Vec<i64>,
    /// Bytes from the first incomplete or damaged frame to the last non-zero byte (a torn tail
    /// is normal after a crash).
    pub(super) discarded_bytes: u64,
    /// Where the last good frame ends.
    pub(super) end: u64,
}

/// The log file, open for appending.
#[derive(Debug)]
pub(super) struct RecordLog {
    file: File,
    path: PathBuf,
    /// Where the next frame goes.
    end: u64,
}

fn stream_code(stream: Stream) -> u8 {
    match stream {
        Stream::Live => 0,
        Stream::Metrics => 1,
        Stream::Events => 2,
        Stream::Emissions => 3,
    }
}

fn stream_of(code: u8) -> Option<Stream> {
    Some(match code {
        0 => Stream::Live,
        1 => Stream::Metrics,
        2 => Stream::Events,
        3 => Stream::Emissions,
        _ => return None,
    })
}

fn align_up(offset: u64) -> u64 {
    offset.div_ceil(PAGE_BYTES) * PAGE_BYTES
}

/// Appends one frame of `kind` with `payload` to `out`.
fn push_frame(out: &mut Vec<u8>, kind: u8, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    out[start + 8] = kind;
    payload(out);
    let len = u32::try_from(out.len() - start - FRAME_HEADER_LEN).unwrap_or(u32::MAX);
    let crc = checksum(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A record frame for `record`.
pub(super) fn encode_record(out: &mut Vec<u8>, id: i64, seq: u64, record: &super::NewRecord) {
    push_frame(out, KIND_RECORD, |p| {
        p.extend_from_slice(&id.to_le_bytes());
        p.push(stream_code(record.stream));
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&record.created.unix_ms().to_le_bytes());
        let topic_len = u32::try_from(record.topic.len()).unwrap_or(u32::MAX);
        p.extend_from_slice(&topic_len.to_le_bytes());
        p.extend_from_slice(record.topic.as_bytes());
        p.extend_from_slice(&record.body);
    });
}

fn decode_record(payload: &[u8]) -> Option<LoggedRecord> {
    let fixed = payload.get(..RECORD_FIXED_LEN)?;
    let i64_at = |at: usize| i64::from_le_bytes(fixed[at..at + 8].try_into().expect("8 bytes"));
    let topic_len = u32::from_le_bytes(fixed[25..29].try_into().expect("4 bytes")) as usize;
    let rest = &payload[RECORD_FIXED_LEN..];
    let topic = std::str::from_utf8(rest.get(..topic_len)?).ok()?;
    Some(LoggedRecord {
        id: i64_at(0),
        stream: stream_of(fixed[8])?,
        seq: u64::from_le_bytes(fixed[9..17].try_into().expect("8 bytes")),
        created_ms: i64_at(17),
        topic: topic.to_owned(),
        body: rest[topic_len..].to_vec(),
    })
}

/// Bytes from `at` to the last non-zero byte of `bytes`.
fn non_zero_extent(bytes: &[u8], at: usize) -> u64 {
    bytes[at..]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |p| p as u64 + 1)
}

/// Parses a whole log file's bytes (after the magic check).
fn replay(bytes: &[u8]) -> Replay {
    let mut out = Replay {
        end: HEADER_LEN,
        ..Replay::default()
    };
    let mut at = HEADER_LEN as usize;
    while at < bytes.len() {
        let header = bytes.get(at..at + FRAME_HEADER_LEN);
        if header.is_none_or(|h| h.iter().all(|&b| b == 0)) {
            // Zeros: the rest of a page after a synced append, or the unused part of the file.
            let next = (align_up(at as u64 + 1) as usize).min(bytes.len());
            if bytes[at..next].iter().any(|&b| b != 0) {
                out.discarded_bytes = non_zero_extent(bytes, at);
                break;
            }
            at = next;
            continue;
        }
        let header = header.expect("checked above");
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let end = at.saturating_add(FRAME_HEADER_LEN).saturating_add(len);
        let Some(checked) = bytes.get(at + 8..end) else {
            out.discarded_bytes = non_zero_extent(bytes, at);
            break;
        };
        if checksum(checked) != crc {
            out.discarded_bytes = non_zero_extent(bytes, at);
            break;
        }
        let payload = &checked[1..];
        let parsed = match checked[0] {
            KIND_RECORD => decode_record(payload).map(|r| out.records.push(r)),
            KIND_ACKS if payload.len().is_multiple_of(16) => {
                for pair in payload.chunks_exact(16) {
                    let first = i64::from_le_bytes(pair[..8].try_into().expect("8 bytes"));
                    let last = i64::from_le_bytes(pair[8..].try_into().expect("8 bytes"));
                    out.acked.push((first, last));
                }
                Some(())
            }
            KIND_ATTEMPTS if payload.len().is_multiple_of(8) => {
                for id in payload.chunks_exact(8) {
                    out.attempts
                        .push(i64::from_le_bytes(id.try_into().expect("8 bytes")));
                }
                Some(())
            }
            _ => None,
        };
        if parsed.is_none() {
            // A checksummed frame this build cannot read: written by a newer one, or damage the
            // checksum missed. Nothing after it is taken on trust.
            out.discarded_bytes = non_zero_extent(bytes, at);
            break;
        }
        at = end;
        out.end = end as u64;
    }
    out
}

/// Makes `file` `len` bytes long with its blocks allocated, or sparse (`set_len`) where they
/// cannot be (a full disk, a file system without `fallocate`): the size is what keeps appends from
/// extending the file; the allocation is what lets them go on when the disk fills.
fn allocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let Ok(off) = libc::off_t::try_from(len) else {
        return file.set_len(len);
    };
    // SAFETY: `posix_fallocate` only reads the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, off) };
    if rc == 0 { Ok(()) } else { file.set_len(len) }
}

/// The log's path for the spool file at `spool`: `<spool>-log`, like SQLite's `-wal`.
pub(super) fn path_for(spool: &Path) -> PathBuf {
    let mut s = spool.as_os_str().to_owned();
    s.push("-log");
    PathBuf::from(s)
}

/// Why a log could not be opened: its bytes are not a log (the spool treats it as damage), or I/O.
#[derive(Debug)]
pub(super) enum OpenError {
    NotALog(String),
    /// Another process (or another `Spool` in this one) holds the log's lock: it owns the spool.
    Held(io::Error),
    Io(io::Error),
}

impl RecordLog {
    /// Opens (or creates) the log at `path` and reads it back whole. A missing or empty file is a
    /// new log; a file without the magic is [`OpenError::NotALog`].
    pub(super) fn open(path: &Path) -> Result<(RecordLog, Replay), OpenError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(OpenError::Io)?;
        // One owner per spool: the lock lives as long as the file is open (a crash releases it).
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(OpenError::Held(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} is locked by its owner", path.display()),
                )));
            }
            Err(fs::TryLockError::Error(e)) => return Err(OpenError::Io(e)),
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(OpenError::Io)?;
        let mut log = RecordLog {
            file,
            path: path.to_path_buf(),
            end: HEADER_LEN,
        };
        if bytes.is_empty() {
            log.reset().map_err(OpenError::Io)?;
            return Ok((log, Replay::default()));
        }
        if !bytes.starts_with(FILE_MAGIC) {
            return Err(OpenError::NotALog(format!(
                "{} does not start with the record log's magic",
                path.display()
            )));
        }
        let replay = replay(&bytes);
        if replay.discarded_bytes > 0 {
            // Zero the torn frame, or the next replay would stop at it again, before frames
            // appended after it.
            log.file.set_len(replay.end).map_err(OpenError::Io)?;
        }
        if replay.discarded_bytes > 0 || (bytes.len() as u64) < FILE_BYTES {
            allocate(&log.file, FILE_BYTES.max(replay.end)).map_err(OpenError::Io)?;
        }
        log.end = align_up(replay.end);
        Ok((log, replay))
    }

    /// Reads a log without opening it for writing (for `smeltwatch spool` beside a running agent).
    /// A missing file is an empty log.
    pub(super) fn read(path: &Path) -> Result<Replay, OpenError> {
        match fs::read(path) {
            Ok(bytes) if bytes.is_empty() => Ok(Replay::default()),
            Ok(bytes) if bytes.starts_with(FILE_MAGIC) => Ok(replay(&bytes)),
            Ok(_) => Err(OpenError::NotALog(format!(
                "{} does not start with the record log's magic",
                path.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Replay::default()),
            Err(e) => Err(OpenError::Io(e)),
        }
    }

    /// Writes the frames in `frames` (from [`encode_record`]) and, if `sync`, waits until they are
    /// on disk. On error nothing of them stays in the file.
    pub(super) fn append(&mut self, frames: &[u8], sync: bool) -> io::Result<()> {
        let at = self.end;
        let written = self
            .file
            .write_all_at(frames, at)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // Zero what part of the frames reached the file (cut, then the file's size again); a
            // failure here leaves a torn frame, which replay discards.
            let _ = self
                .file
                .set_len(at)
                .and_then(|()| allocate(&self.file, FILE_BYTES.max(at)));
            return Err(e);
        }
        let end = at + frames.len() as u64;
        self.end = if sync { align_up(end) } else { end };
        Ok(())
    }

    /// Appends one frame of acked id ranges, without a sync (see [`super::Spool::ack`]).
    pub(super) fn append_acks(&mut self, ranges: &[(i64, i64)]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + 16 * ranges.len());
        push_frame(&mut frame, KIND_ACKS, |p| {
            for (first, last) in ranges {
                p.extend_from_slice(&first.to_le_bytes());
                p.extend_from_slice(&last.to_le_bytes());
            }
        });
        self.append(&frame, false)
    }

    /// Appends one frame counting a send attempt of each record in `ids`, without a sync (the
    /// count only guides dead-lettering).
    pub(super) fn append_attempts(&mut self, ids: &[i64]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + 8 * ids.len());
        push_frame(&mut frame, KIND_ATTEMPTS, |p| {
            for id in ids {
                p.extend_from_slice(&id.to_le_bytes());
            }
        });
        self.append(&frame, false)
    }

    /// Bytes of the file in use.
    pub(super) fn len(&self) -> u64 {
        self.end
    }

    /// Whether the log holds no frame.
    pub(super) fn is_empty(&self) -> bool {
        self.end == HEADER_LEN
    }

    /// Empties the log (after its records were written elsewhere).
    pub(super) fn reset(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        allocate(&self.file, FILE_BYTES)?;
        self.file.write_all_at(FILE_MAGIC, 0)?;
        self.end = HEADER_LEN;
        Ok(())
    }

    /// Deletes the file (after its records were written elsewhere).
    pub(super) fn remove(self) -> io::Result<()> {
        drop(self.file);
        fs::remove_file(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Timestamp;
    use crate::spool::NewRecord;

    fn rec(stream: Stream, topic: &str, body: &[u8], ms: i64) -> NewRecord {
        NewRecord {
            stream,
            topic: topic.to_owned(),
            body: body.to_vec(),
            created: Timestamp(ms),
        }
    }

    fn frames(records: &[(i64, u64, NewRecord)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (id, seq, r) in records {
            encode_record(&mut out, *id, *seq, r);
        }
        out
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

    /// A record frame as the log has always written it: logs written by earlier releases read
    /// back, and what this one writes reads in them.
    #[test]
    fn a_record_frame_keeps_its_bytes() {
        let mut out = Vec::new();
        encode_record(&mut out, 7, 3, &rec(Stream::Live, "a/b", &[1, 2, 3], 1_000));
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN_FRAME);
        let replayed = replay(&[FILE_MAGIC.as_slice(), &out].concat());
        assert_eq!(replayed.records.len(), 1);
        assert_eq!(replayed.discarded_bytes, 0);
    }

    const GOLDEN_FRAME: &str = concat!(
        "23000000",         // payload length
        "50a44e48",         // CRC-32C of kind and payload
        "01",               // a record
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
        log.append(&frames(&[(1, 1, a.clone()), (2, 1, b.clone())]), true)
            .unwrap();
        assert_eq!(log.len(), 4096, "a synced append ends on a page boundary");
        log.append_acks(&[(1, 1)]).unwrap();
        log.append_attempts(&[2, 2]).unwrap();
        log.append(&frames(&[(3, 1, c.clone())]), true).unwrap();
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
        log.append(&frames(&[(1, 1, rec(Stream::Live, "t", b"one", 1))]), true)
            .unwrap();
        let second = frames(&[(2, 2, rec(Stream::Live, "t", b"two", 2))]);
        log.append(&second, false).unwrap();
        drop(log);
        let whole = fs::read(&path).unwrap();
        for cut in [1, FRAME_HEADER_LEN, second.len() - 1] {
            fs::write(&path, &whole[..4096 + cut]).unwrap();
            let replay = RecordLog::read(&path).unwrap();
            assert_eq!(replay.records.len(), 1, "cut {cut}");
            assert_eq!(replay.discarded_bytes, cut as u64, "cut {cut}");
        }
        let mut flipped = whole.clone();
        let last = 4096 + second.len() - 1;
        flipped[last] ^= 0x40;
        fs::write(&path, &flipped).unwrap();
        let (log, replay) = RecordLog::open(&path).unwrap();
        assert_eq!(replay.records.len(), 1);
        assert_eq!(replay.discarded_bytes, second.len() as u64);
        assert_eq!(
            log.len(),
            4096,
            "the next append overwrites the damaged frame"
        );
        drop(log);
        let zeroed = fs::read(&path).unwrap();
        assert_eq!(zeroed.len() as u64, FILE_BYTES);
        assert!(zeroed[4096..].iter().all(|&b| b == 0), "which is zeroed");
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
        assert_eq!(log.len(), HEADER_LEN);
        log.remove().unwrap();
        assert!(!path.exists());
        assert!(RecordLog::read(&path).unwrap().records.is_empty());
    }

    #[test]
    fn reset_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s-log");
        let (mut log, _) = RecordLog::open(&path).unwrap();
        log.append(&frames(&[(1, 1, rec(Stream::Live, "t", b"x", 1))]), true)
            .unwrap();
        log.reset().unwrap();
        log.append(&frames(&[(2, 2, rec(Stream::Live, "t", b"y", 2))]), true)
            .unwrap();
        drop(log);
        let replay = RecordLog::read(&path).unwrap();
        assert_eq!(replay.records.len(), 1);
        assert_eq!(replay.records[0].id, 2);
    }

    proptest::proptest! {
        /// No byte sequence after the magic panics the reader, and what it returns stays within
        /// the input.
        #[test]
        fn replay_never_panics(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut bytes = FILE_MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            let r = replay(&bytes);
            proptest::prop_assert!(r.discarded_bytes <= tail.len() as u64);
        }
    }
}
