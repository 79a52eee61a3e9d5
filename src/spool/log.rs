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
//! # The file is written in place, never truncated
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
mod tests;
