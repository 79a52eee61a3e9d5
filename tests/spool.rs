//! Spool integration tests: a real process kill, and a model-based property test.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use proptest::prelude::*;
use smeltwatch::config::{SpoolConfig, Stream};
use smeltwatch::model::Timestamp;
use smeltwatch::spool::{Appended, NewRecord, Spool, StoredRecord};

const CHILD_PATH_VAR: &str = "SMELTWATCH_SPOOL_CRASH_CHILD";
const CHILD_SYNC_VAR: &str = "SMELTWATCH_SPOOL_CRASH_SYNC_FULL";

const STREAMS: [Stream; 4] = [
    Stream::Live,
    Stream::Metrics,
    Stream::Events,
    Stream::Emissions,
];

/// Not a test on its own: the writer process for the kill tests. It appends batches forever and
/// prints one `committed <stream> <seq> <id>` line per record after each commit.
#[test]
#[ignore = "child process of spool_survives_sigkill_*; does nothing unless started by them"]
fn crash_child_writer() {
    let Some(path) = std::env::var_os(CHILD_PATH_VAR) else {
        return;
    };
    let cfg = SpoolConfig {
        max_bytes: u64::MAX,
        max_age: None,
        synchronous_full: std::env::var(CHILD_SYNC_VAR).as_deref() == Ok("1"),
    };
    let mut spool = Spool::open(Path::new(&path), &cfg).expect("child opens the spool");
    let mut stdout = std::io::stdout().lock();
    for round in 0u64.. {
        let batch = (0..10)
            .map(|k| NewRecord {
                stream: if k % 5 == 4 {
                    Stream::Events
                } else {
                    Stream::Live
                },
                topic: format!("t/{round}/{k}"),
                body: vec![k as u8; 256],
                created: Timestamp(round as i64),
            })
            .collect();
        for a in spool.append(batch).expect("child appends") {
            writeln!(stdout, "committed {} {} {}", a.stream.as_str(), a.seq, a.id)
                .expect("child writes to its parent");
        }
        stdout.flush().expect("child flushes");
    }
}

fn survives_sigkill(synchronous_full: bool) {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("crash.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child_writer", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_PATH_VAR, &path)
        .env(CHILD_SYNC_VAR, if synchronous_full { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed: Vec<(Stream, u64, i64)> = Vec::new();
    while printed.len() < 3_000 {
        let line = lines
            .next()
            .expect("the child stopped writing before it was killed")
            .unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let ["committed", stream, seq, id] = fields[..] {
            let stream = STREAMS.into_iter().find(|s| s.as_str() == stream).unwrap();
            printed.push((stream, seq.parse().unwrap(), id.parse().unwrap()));
        }
    }
    // Killed while it is still appending: SIGKILL, no chance to clean up.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the child must have been killed: {status}"
    );

    let mut spool = Spool::open(&path, &SpoolConfig::default()).unwrap();
    let stored = spool.read_after(0, usize::MAX).unwrap();
    assert!(stored.len() >= printed.len());
    let ids: Vec<i64> = stored.iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        (1..=stored.len() as i64).collect::<Vec<_>>(),
        "ids dense, in order"
    );
    let by_id: BTreeMap<i64, &StoredRecord> = stored.iter().map(|r| (r.id, r)).collect();
    for (stream, seq, id) in &printed {
        let r = by_id
            .get(id)
            .unwrap_or_else(|| panic!("committed id {id} is missing"));
        assert_eq!((r.stream, r.seq), (*stream, *seq));
    }
    for stream in [Stream::Live, Stream::Events] {
        let seqs: Vec<u64> = stored
            .iter()
            .filter(|r| r.stream == stream)
            .map(|r| r.seq)
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{stream:?} has no gaps"
        );
    }
    // Appending after the crash continues the sequence.
    let live = stored.iter().filter(|r| r.stream == Stream::Live).count() as u64;
    let next = spool
        .append(vec![NewRecord {
            stream: Stream::Live,
            topic: "t/after".into(),
            body: vec![],
            created: Timestamp(0),
        }])
        .unwrap();
    assert_eq!(next[0].seq, live + 1);
}

#[test]
fn spool_survives_sigkill_with_synchronous_normal() {
    survives_sigkill(false);
}

#[test]
fn spool_survives_sigkill_with_synchronous_full() {
    survives_sigkill(true);
}

// ---------------------------------------------------------------------------------------------
// Model test: random append / ack / mark_attempt / reopen against a VecDeque.

#[derive(Debug, Clone)]
enum Op {
    /// (stream index, topic length, body length) per record.
    Append(Vec<(usize, usize, usize)>),
    /// Positions into the current queue (modulo its length), plus whether to add unknown ids.
    Ack(Vec<usize>, bool),
    MarkAttempt(Vec<usize>),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec((0..4usize, 0..12usize, 0..80usize), 0..8).prop_map(Op::Append),
        2 => (prop::collection::vec(any::<usize>(), 0..6), any::<bool>())
            .prop_map(|(p, u)| Op::Ack(p, u)),
        1 => prop::collection::vec(any::<usize>(), 0..3).prop_map(Op::MarkAttempt),
        1 => Just(Op::Reopen),
    ]
}

/// The specification, stated as simply as possible.
struct Model {
    queue: VecDeque<StoredRecord>,
    next_seq: [u64; 4],
    next_id: i64,
    dropped: u64,
    max_bytes: u64,
}

fn size(r: &StoredRecord) -> u64 {
    (r.topic.len() + r.body.len()) as u64
}

impl Model {
    fn append(&mut self, records: &[NewRecord]) -> Vec<Appended> {
        for r in records {
            let i = STREAMS.iter().position(|s| *s == r.stream).unwrap();
            self.queue.push_back(StoredRecord {
                id: 0, // assigned below if it survives
                stream: r.stream,
                seq: self.next_seq[i],
                topic: r.topic.clone(),
                body: r.body.clone(),
                created: r.created,
                attempts: 0,
            });
            self.next_seq[i] += 1;
        }
        let mut new_left = records.len();
        // Over budget: remove the oldest record of the lowest-priority stream present.
        while self.queue.iter().map(size).sum::<u64>() > self.max_bytes {
            let lowest = self.queue.iter().map(|r| r.stream).min().unwrap();
            let pos = self.queue.iter().position(|r| r.stream == lowest).unwrap();
            if pos >= self.queue.len() - new_left {
                new_left -= 1;
            }
            self.queue.remove(pos);
            self.dropped += 1;
        }
        let start = self.queue.len() - new_left;
        let mut out = Vec::new();
        for r in self.queue.range_mut(start..) {
            self.next_id += 1;
            r.id = self.next_id;
            out.push(Appended {
                id: r.id,
                stream: r.stream,
                seq: r.seq,
            });
        }
        out
    }
}

fn check_same(spool: &Spool, model: &Model) -> Result<(), TestCaseError> {
    let stored = spool.read_after(0, usize::MAX).unwrap();
    prop_assert_eq!(&stored, &model.queue.iter().cloned().collect::<Vec<_>>());
    let stats = spool.stats().unwrap();
    prop_assert_eq!(stats.records, model.queue.len() as u64);
    prop_assert_eq!(stats.bytes, model.queue.iter().map(size).sum::<u64>());
    prop_assert_eq!(stats.dropped, model.dropped);
    for (stream, n) in stats.per_stream {
        prop_assert_eq!(
            n,
            model.queue.iter().filter(|r| r.stream == stream).count() as u64
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn spool_agrees_with_a_queue_model(
        max_bytes in prop_oneof![Just(u64::MAX), 0..1500u64],
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("model.db");
        let cfg = SpoolConfig {
            max_bytes,
            max_age: None,
            synchronous_full: false,
        };
        let mut spool = Spool::open(&path, &cfg).unwrap();
        let mut model = Model {
            queue: VecDeque::new(),
            next_seq: [1; 4],
            next_id: 0,
            dropped: 0,
            max_bytes,
        };
        let mut created = 0;
        for op in ops {
            match op {
                Op::Append(shape) => {
                    let records: Vec<NewRecord> = shape
                        .into_iter()
                        .map(|(s, topic_len, body_len)| {
                            created += 1;
                            NewRecord {
                                stream: STREAMS[s],
                                topic: "é".repeat(topic_len / 2) + &"t".repeat(topic_len % 2),
                                body: vec![created as u8; body_len],
                                created: Timestamp(created),
                            }
                        })
                        .collect();
                    let expected = model.append(&records);
                    prop_assert_eq!(spool.append(records).unwrap(), expected);
                }
                Op::Ack(positions, unknown) => {
                    let mut ids: Vec<i64> = positions
                        .iter()
                        .filter(|_| !model.queue.is_empty())
                        .map(|p| model.queue[p % model.queue.len()].id)
                        .collect();
                    if unknown {
                        ids.push(model.next_id + 1_000);
                        ids.push(-1);
                    }
                    let before = model.queue.len();
                    model.queue.retain(|r| !ids.contains(&r.id));
                    let removed = (before - model.queue.len()) as u64;
                    prop_assert_eq!(spool.ack(&ids).unwrap(), removed);
                }
                Op::MarkAttempt(positions) => {
                    let ids: Vec<i64> = positions
                        .iter()
                        .filter(|_| !model.queue.is_empty())
                        .map(|p| model.queue[p % model.queue.len()].id)
                        .collect();
                    for id in &ids {
                        if let Some(r) = model.queue.iter_mut().find(|r| r.id == *id) {
                            r.attempts += 1;
                        }
                    }
                    spool.mark_attempt(&ids).unwrap();
                }
                Op::Reopen => {
                    drop(spool);
                    spool = Spool::open(&path, &cfg).unwrap();
                }
            }
            check_same(&spool, &model)?;
        }
    }
}

/// A forward step of the wall clock (NTP correcting a gateway that had the wrong time) must not
/// make the backlog look a day old: `max_age` measures age across the step as if the clock had
/// always been right, also after a restart, and still expires records that really are too old.
#[test]
fn a_forward_clock_step_does_not_expire_the_backlog() {
    use smeltwatch::clock::{Clock, ShiftedWall};
    const HOUR_MS: i64 = 3_600_000;
    const DAY_MS: i64 = 24 * HOUR_MS;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.db");
    let cfg = SpoolConfig {
        max_age: Some(std::time::Duration::from_secs(3_600)),
        ..SpoolConfig::default()
    };
    let wall = ShiftedWall::new(0);
    let clock = Clock::new(wall.clone());
    let mut spool = Spool::open(&path, &cfg).unwrap().with_clock(clock.clone());
    let rec = |created: i64| NewRecord {
        stream: Stream::Live,
        topic: "t/live".into(),
        body: vec![0; 10],
        created: Timestamp(created),
    };
    let t0 = Timestamp::now().0;
    for i in 0..10 {
        spool.append(vec![rec(t0 + i)]).unwrap();
    }
    // The clock is set a day forward; the next record is stamped with the new time.
    wall.set_offset(DAY_MS);
    spool.append(vec![rec(t0 + DAY_MS + 10)]).unwrap();
    let stats = spool.stats().unwrap();
    assert_eq!(
        (stats.records, stats.dropped_since_open.max_age),
        (11, 0),
        "the step expired the backlog"
    );
    assert_eq!(clock.steps_total(), 1);

    // After a restart (no step seen by the new process) the backlog is still measured across it.
    drop(spool);
    let mut spool = Spool::open(&path, &cfg)
        .unwrap()
        .with_clock(Clock::new(ShiftedWall::new(DAY_MS)));
    spool.append(vec![rec(t0 + DAY_MS + 20)]).unwrap();
    assert_eq!(
        spool.stats().unwrap().records,
        12,
        "expired after a restart"
    );

    // Records that are really older than max_age on the corrected basis still expire.
    spool.append(vec![rec(t0 + DAY_MS + 2 * HOUR_MS)]).unwrap();
    let stats = spool.stats().unwrap();
    assert_eq!((stats.records, stats.dropped_since_open.max_age), (1, 12));
}
