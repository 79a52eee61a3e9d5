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
//! A 16-byte file header, `SWSPLOG2` and the log's generation (u64 LE), then frames:
//! ```text
//! payload_len u32 LE | crc32c u32 LE (over generation, kind and payload) | generation u32 LE
//!   | kind u8 | payload
//! kind 1, a record: id i64 | stream u8 | seq u64 | created_ms i64 | topic_len u32 | topic | body
//! kind 2, acks:     (first_id i64, last_id i64) per range of acked ids
//! kind 3, attempts: id i64 per record whose send ended unacknowledged (once per attempt)
//! ```
//! A frame carries the low 32 bits of the generation it was written in.
//!
//! # The file is written in place, never emptied
//! The file is kept at a fixed size, [`FILE_BYTES`], its blocks allocated ahead
//! (`posix_fallocate`; sparse where the file system cannot), so that appends never extend it
//! (on ext4 an append that extends a file also writes the page that held the old end again) and
//! go on when the file system fills, as SQLite's WAL reuses its own pages. Emptying the log
//! ([`RecordLog::reset`]) only moves its generation on: the old frames stay where they are and
//! are overwritten by the new ones. Truncating and allocating the file again instead would hand
//! every append blocks that are allocated but never written, and the first write to such a block
//! changes the file's extent map: each `fdatasync` then wrote the inode as well as the data, and
//! each append took fresh pages into the page cache (docs/PERFORMANCE.md, "the record log
//! emptied by truncation"). Replay stops at the first frame of another generation, which is where
//! the current one ends.
//!
//! After a synced append the rest of its last page is written with zeros and the next frame
//! starts on the next 4 KiB boundary: the page the append ended in is then never written again
//! after its fsync (a page dirtied again is written to flash again in full). A reader skips a run
//! of zeros to the next boundary. Together they bring an append of a 2.2 kB batch from about 1.5
//! pages (no alignment), or 2 (alignment alone), to one.
//!
//! Replay stops at the first frame that is incomplete or fails its checksum: only the tail can be
//! torn, since every append that returned was synced; what lies after such a frame is reported,
//! not guessed at. A frame of another generation, or bytes that are no frame at all, end the log
//! without a report: they are what an earlier generation left after the last frame of this one.
//!
//! # Logs of earlier releases
//! `SWSPLOG1` logs (an 8-byte header, frames without the generation field, zeros after the last
//! frame) are read back, and appended to in their own format until the log is next emptied,
//! which truncates the file once and starts it again in this format.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::config::Stream;
use crate::spool::NewRecord;

/// The magic of this release's logs.
const FILE_MAGIC: &[u8; 8] = b"SWSPLOG2";
/// The magic of the logs written by earlier releases (read, see [`Format::V1`]).
const FILE_MAGIC_V1: &[u8; 8] = b"SWSPLOG1";
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
    /// The damaged frame's bytes: in a log of this release, from where it starts to where its
    /// header says it ends (or the end of the file); in one of an earlier release, to the last
    /// non-zero byte. A torn tail is normal after a crash.
    pub(super) discarded_bytes: u64,
    /// Where the damaged frame starts (when `discarded_bytes` is not 0).
    pub(super) discarded_at: u64,
    /// Where the last good frame ends.
    pub(super) end: u64,
}

/// The layout of one log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// `SWSPLOG1`, an earlier release's: frames without a generation, zeros after the last one.
    V1,
    /// `SWSPLOG2`: every frame carries the low 32 bits of `generation`.
    V2 { generation: u64 },
}

impl Format {
    /// The format a file's first bytes announce, if they are a log's.
    fn of(bytes: &[u8]) -> Option<Format> {
        if bytes.starts_with(FILE_MAGIC_V1) {
            return Some(Format::V1);
        }
        let generation = bytes.get(8..16)?;
        bytes.starts_with(FILE_MAGIC).then(|| Format::V2 {
            generation: u64::from_le_bytes(generation.try_into().expect("8 bytes")),
        })
    }

    /// The file header's length: where the first frame starts.
    fn header_len(self) -> u64 {
        match self {
            Format::V1 => 8,
            Format::V2 { .. } => 16,
        }
    }

    /// The frame header's length; the checksum covers what follows its first 8 bytes.
    fn frame_header_len(self) -> usize {
        match self {
            Format::V1 => 9,
            Format::V2 { .. } => 13,
        }
    }

    /// Appends one frame of `kind` with `payload` to `out`.
    fn push_frame(self, out: &mut Vec<u8>, kind: u8, payload: impl FnOnce(&mut Vec<u8>)) {
        let start = out.len();
        let header = self.frame_header_len();
        out.extend_from_slice(&[0; 13][..header]);
        if let Format::V2 { generation } = self {
            out[start + 8..start + 12].copy_from_slice(&(generation as u32).to_le_bytes());
        }
        out[start + header - 1] = kind;
        payload(out);
        let len = u32::try_from(out.len() - start - header).unwrap_or(u32::MAX);
        let crc = checksum(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// A record frame for `record`.
    pub(super) fn encode_record(self, out: &mut Vec<u8>, id: i64, seq: u64, record: &NewRecord) {
        self.push_frame(out, KIND_RECORD, |p| {
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
}

/// The log file, open for appending.
#[derive(Debug)]
pub(super) struct RecordLog {
    file: File,
    path: PathBuf,
    format: Format,
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

/// Parses a whole log file's bytes, laid out as `format`.
fn replay(bytes: &[u8], format: Format) -> Replay {
    let mut out = Replay {
        end: format.header_len(),
        ..Replay::default()
    };
    let frame_header = format.frame_header_len();
    let mut at = format.header_len() as usize;
    while at < bytes.len() {
        let header = bytes.get(at..at + frame_header);
        if header.is_none_or(|h| h.iter().all(|&b| b == 0)) {
            // Zeros: the rest of a page after a synced append, or the unused part of the file.
            let next = (align_up(at as u64 + 1) as usize).min(bytes.len());
            if bytes[at..next].iter().any(|&b| b != 0) {
                if format == Format::V1 {
                    (out.discarded_bytes, out.discarded_at) =
                        (non_zero_extent(bytes, at), at as u64);
                }
                // In this release's logs: what an earlier generation left after an unsynced
                // append of this one.
                break;
            }
            at = next;
            continue;
        }
        let header = header.expect("checked above");
        if let Format::V2 { generation } = format
            && header[8..12] != (generation as u32).to_le_bytes()
        {
            // An earlier generation's frame, or part of one: the current generation ends here.
            break;
        }
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let end = at.saturating_add(frame_header).saturating_add(len);
        let damaged = || match format {
            Format::V1 => non_zero_extent(bytes, at),
            Format::V2 { .. } => (end.min(bytes.len()) - at) as u64,
        };
        let Some(checked) = bytes.get(at + 8..end) else {
            (out.discarded_bytes, out.discarded_at) = (damaged(), at as u64);
            break;
        };
        if checksum(checked) != crc {
            (out.discarded_bytes, out.discarded_at) = (damaged(), at as u64);
            break;
        }
        let (kind, payload) = (header[frame_header - 1], &bytes[at + frame_header..end]);
        let parsed = match kind {
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
            (out.discarded_bytes, out.discarded_at) = (damaged(), at as u64);
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

fn not_a_log(path: &Path) -> OpenError {
    OpenError::NotALog(format!(
        "{} does not start with the record log's magic",
        path.display()
    ))
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
        if bytes.is_empty() {
            let mut log = RecordLog {
                file,
                path: path.to_path_buf(),
                format: Format::V2 { generation: 0 },
                end: 0,
            };
            log.start(1).map_err(OpenError::Io)?;
            return Ok((log, Replay::default()));
        }
        let format = Format::of(&bytes).ok_or_else(|| not_a_log(path))?;
        let replay = replay(&bytes, format);
        let mut log = RecordLog {
            file,
            path: path.to_path_buf(),
            format,
            end: replay.end,
        };
        match format {
            Format::V1 => {
                if replay.discarded_bytes > 0 {
                    // Zero the torn frame, or the next replay would stop at it again, before
                    // frames appended after it.
                    log.file.set_len(replay.end).map_err(OpenError::Io)?;
                }
                log.end = align_up(replay.end);
            }
            Format::V2 { .. } => {
                if replay.discarded_bytes > 0 {
                    // The same, in place: a shorter frame appended there must not leave the
                    // torn one's remains to be read as damage.
                    let zeros = vec![0; replay.discarded_bytes as usize];
                    log.file
                        .write_all_at(&zeros, replay.discarded_at)
                        .map_err(OpenError::Io)?;
                }
                // After a synced append's zeros the next frame goes on the next page, as it would
                // have without the restart; after an unsynced one, what follows it is an earlier
                // generation's, which the next frame must overwrite from where this one ends.
                let boundary = align_up(replay.end);
                let gap = bytes.get(replay.end as usize..(boundary as usize).min(bytes.len()));
                if gap.is_none_or(|g| g.iter().all(|&b| b == 0)) {
                    log.end = boundary;
                }
            }
        }
        if (log.file_len().map_err(OpenError::Io)?) < FILE_BYTES {
            allocate(&log.file, FILE_BYTES).map_err(OpenError::Io)?;
        }
        Ok((log, replay))
    }

    /// Reads a log without opening it for writing (for `smeltwatch spool` beside a running agent).
    /// A missing file is an empty log.
    pub(super) fn read(path: &Path) -> Result<Replay, OpenError> {
        match fs::read(path) {
            Ok(bytes) if bytes.is_empty() => Ok(Replay::default()),
            Ok(bytes) => match Format::of(&bytes) {
                Some(format) => Ok(replay(&bytes, format)),
                None => Err(not_a_log(path)),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Replay::default()),
            Err(e) => Err(OpenError::Io(e)),
        }
    }

    fn file_len(&self) -> io::Result<u64> {
        self.file.metadata().map(|m| m.len())
    }

    /// The format frames appended to this log take ([`Format::encode_record`]).
    pub(super) fn format(&self) -> Format {
        self.format
    }

    /// Writes `frames` (from this log's [`format`](Self::format)) and, if `sync`, waits until they
    /// are on disk; a synced append is padded with zeros to the next page boundary in `frames`
    /// itself, so that it goes out in one write. On error nothing of them stays in the file.
    pub(super) fn append(&mut self, frames: &mut Vec<u8>, sync: bool) -> io::Result<()> {
        let at = self.end;
        if sync {
            let padded = align_up(at + frames.len() as u64) - at;
            frames.resize(padded as usize, 0);
        }
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
        self.end = at + frames.len() as u64;
        Ok(())
    }

    /// Appends one frame of acked id ranges, without a sync (see [`super::Spool::ack`]).
    pub(super) fn append_acks(&mut self, ranges: &[(i64, i64)]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(self.format.frame_header_len() + 16 * ranges.len());
        self.format.push_frame(&mut frame, KIND_ACKS, |p| {
            for (first, last) in ranges {
                p.extend_from_slice(&first.to_le_bytes());
                p.extend_from_slice(&last.to_le_bytes());
            }
        });
        self.append(&mut frame, false)
    }

    /// Appends one frame counting a send attempt of each record in `ids`, without a sync (the
    /// count only guides dead-lettering).
    pub(super) fn append_attempts(&mut self, ids: &[i64]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(self.format.frame_header_len() + 8 * ids.len());
        self.format.push_frame(&mut frame, KIND_ATTEMPTS, |p| {
            for id in ids {
                p.extend_from_slice(&id.to_le_bytes());
            }
        });
        self.append(&mut frame, false)
    }

    /// Bytes of the file in use.
    pub(super) fn len(&self) -> u64 {
        self.end
    }

    /// Whether the log holds no frame.
    pub(super) fn is_empty(&self) -> bool {
        self.end == self.format.header_len()
    }

    /// Empties the log (after its records were written elsewhere): the next generation starts,
    /// in place. A log of an earlier release is truncated and allocated again instead, once, since
    /// its frames carry no generation.
    pub(super) fn reset(&mut self) -> io::Result<()> {
        let generation = match self.format {
            Format::V2 { generation } => generation + 1,
            Format::V1 => {
                self.file.set_len(0)?;
                allocate(&self.file, FILE_BYTES)?;
                1
            }
        };
        self.start(generation)
    }

    /// Writes the header of `generation`; frames follow it.
    fn start(&mut self, generation: u64) -> io::Result<()> {
        if self.file_len()? < FILE_BYTES {
            allocate(&self.file, FILE_BYTES)?;
        }
        let mut header = FILE_MAGIC.to_vec();
        header.extend_from_slice(&generation.to_le_bytes());
        self.file.write_all_at(&header, 0)?;
        self.format = Format::V2 { generation };
        self.end = self.format.header_len();
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

    const FRAME_HEADER_LEN_V2: usize = 13;
    use crate::model::Timestamp;

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
}
