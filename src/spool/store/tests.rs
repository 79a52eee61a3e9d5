use super::schema::SCHEMA_VERSION;
use super::*;
use tempfile::TempDir;

fn cfg(max_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        max_bytes,
        max_age: None,
        synchronous_full: false,
    }
}

/// A record of exactly `bytes` budget bytes (topic "t/NN" plus body).
fn rec(stream: Stream, n: u8, bytes: usize) -> NewRecord {
    let topic = format!("t/{n:02}");
    NewRecord {
        stream,
        body: vec![n; bytes - topic.len()],
        topic,
        created: Timestamp(1_000 + i64::from(n)),
    }
}

fn open(dir: &TempDir, max_bytes: u64) -> Spool {
    Spool::open(&dir.path().join("spool/plant.db"), &cfg(max_bytes)).unwrap()
}

fn ids_and_seqs(records: &[StoredRecord]) -> Vec<(i64, Stream, u64)> {
    records.iter().map(|r| (r.id, r.stream, r.seq)).collect()
}

#[test]
fn appends_go_to_the_record_log_and_a_crash_keeps_what_was_not_acked() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("spool/plant.db");
    let mut spool = open(&dir, u64::MAX);
    spool
        .append(vec![rec(Stream::Live, 1, 100), rec(Stream::Events, 2, 50)])
        .unwrap();
    spool.append(vec![rec(Stream::Live, 3, 100)]).unwrap();
    spool.ack(&[1]).unwrap();
    let before = spool.read_after(0, 10).unwrap();
    assert_eq!(
        ids_and_seqs(&before),
        [(2, Stream::Events, 1), (3, Stream::Live, 2)]
    );
    assert_eq!(spool.stats().unwrap().records, 2);
    let rows: i64 = spool
        .conn
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "nothing went through SQLite");
    assert!(log::path_for(&path).exists());
    // A crash: the spool is dropped without close; the log stays beside the file.
    drop(spool);

    let mut spool = open(&dir, u64::MAX);
    assert_eq!(spool.read_after(0, 10).unwrap(), before);
    assert_eq!(spool.last_id().unwrap(), 3);
    let stats = spool.stats().unwrap();
    assert_eq!((stats.records, stats.bytes), (2, 150));
    assert_eq!(stats.oldest, Some(Timestamp(1_002)));
    // Seqs and ids go on after the recovered ones.
    let next = spool.append(vec![rec(Stream::Live, 4, 100)]).unwrap();
    assert_eq!((next[0].id, next[0].seq), (4, 3));
    spool.ack(&[2, 3, 4]).unwrap();
    spool.close().unwrap();
    assert!(
        !log::path_for(&path).exists(),
        "a clean close leaves one file"
    );

    let mut spool = open(&dir, u64::MAX);
    assert!(spool.read_after(0, 10).unwrap().is_empty());
    assert_eq!(spool.last_id().unwrap(), 4, "ids are never reused");
    let next = spool.append(vec![rec(Stream::Events, 5, 50)]).unwrap();
    assert_eq!((next[0].id, next[0].seq), (5, 2));
}

#[test]
fn records_in_sqlite_and_in_the_log_read_back_in_id_order() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, u64::MAX);
    spool.cap_file_pages(1 << 20).unwrap();
    spool.append(vec![rec(Stream::Live, 1, 100)]).unwrap();
    spool.cap_file_pages(0).unwrap();
    spool.append(vec![rec(Stream::Metrics, 2, 100)]).unwrap();
    spool.cap_file_pages(1 << 20).unwrap();
    spool.append(vec![rec(Stream::Live, 3, 100)]).unwrap();
    spool.cap_file_pages(0).unwrap();
    spool.append(vec![rec(Stream::Live, 4, 100)]).unwrap();
    spool.mark_attempt(&[1, 4]).unwrap();
    let got = spool.read_after(1, 2).unwrap();
    assert_eq!(
        ids_and_seqs(&got),
        [(2, Stream::Metrics, 1), (3, Stream::Live, 2)]
    );
    let all = spool.read_after(0, 10).unwrap();
    assert_eq!(
        all.iter().map(|r| r.attempts).collect::<Vec<_>>(),
        [1, 0, 0, 1]
    );
    assert_eq!(spool.ack(&[4, 1]).unwrap(), 2);
    assert_eq!(spool.stats().unwrap().records, 2);
}

#[test]
fn a_second_open_beside_the_owner_reads_the_log_without_taking_it() {
    let dir = TempDir::new().unwrap();
    let mut owner = open(&dir, u64::MAX);
    owner
        .append(vec![
            rec(Stream::Live, 1, 100),
            rec(Stream::Emissions, 2, 60),
        ])
        .unwrap();
    owner.ack(&[1]).unwrap();
    let mut reader = open(&dir, u64::MAX);
    assert_eq!(
        ids_and_seqs(&reader.read_after(0, 10).unwrap()),
        [(2, Stream::Emissions, 1)]
    );
    assert_eq!(reader.stats().unwrap().records, 1);
    assert!(matches!(
        reader.dead_letter(&[(2, "test".to_owned())], Timestamp(0)),
        Err(SpoolError::HeldByAnother { .. })
    ));
    drop(reader);
    // The owner's log is untouched by the reader.
    owner.append(vec![rec(Stream::Live, 3, 100)]).unwrap();
    assert_eq!(
        ids_and_seqs(&owner.read_after(0, 10).unwrap()),
        [(2, Stream::Emissions, 1), (3, Stream::Live, 2)]
    );
}

#[test]
fn a_large_backlog_moves_from_the_log_into_sqlite_and_stays_in_order() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, u64::MAX);
    let body = (PENDING_MAX_BYTES / 10) as usize;
    for n in 1..=25u8 {
        spool.append(vec![rec(Stream::Live, n, body)]).unwrap();
    }
    assert!(spool.pending.bytes() <= PENDING_MAX_BYTES);
    assert!(spool.in_sqlite(index(Stream::Live)) >= 10);
    let all = spool.read_after(0, 100).unwrap();
    assert_eq!(
        all.iter().map(|r| r.id).collect::<Vec<_>>(),
        (1..=25).collect::<Vec<i64>>()
    );
    assert!(all.iter().zip(1u8..).all(|(r, n)| r.body[0] == n));
    spool.ack(&(1..=25).collect::<Vec<_>>()).unwrap();
    assert_eq!(spool.stats().unwrap().records, 0);
}

#[test]
fn requeued_dead_letters_take_ids_after_those_of_the_log() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, u64::MAX);
    spool
        .append(vec![rec(Stream::Live, 1, 100), rec(Stream::Live, 2, 100)])
        .unwrap();
    spool
        .dead_letter(&[(1, "too big".to_owned())], Timestamp(9))
        .unwrap();
    spool.append(vec![rec(Stream::Live, 3, 100)]).unwrap();
    spool.ack(&[3]).unwrap();
    spool.request_requeue(None).unwrap();
    assert_eq!(spool.take_requeued().unwrap(), 1);
    let ids: Vec<i64> = spool
        .read_after(0, 10)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [2, 4]);
    let next = spool.append(vec![rec(Stream::Live, 5, 100)]).unwrap();
    assert_eq!(next[0].id, 5);
}

/// Ids of every record waiting, oldest first.
fn ids_of(spool: &Spool) -> Vec<i64> {
    let all = spool.read_after(0, usize::MAX).unwrap();
    all.iter().map(|r| r.id).collect()
}

fn seqs_of(spool: &Spool, stream: Stream) -> Vec<u64> {
    spool
        .read_after(0, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|r| r.stream == stream)
        .map(|r| r.seq)
        .collect()
}

/// Counts of the streams live, metrics, events and emissions, in that order, as the spool
/// reports them per stream.
fn by_stream(counts: [u64; 4]) -> Vec<(Stream, u64)> {
    [
        Stream::Live,
        Stream::Metrics,
        Stream::Events,
        Stream::Emissions,
    ]
    .into_iter()
    .zip(counts)
    .collect()
}

#[test]
fn append_assigns_seq_per_stream_independently() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, u64::MAX);
    let streams = [
        Stream::Live,
        Stream::Metrics,
        Stream::Live,
        Stream::Live,
        Stream::Metrics,
        Stream::Events,
    ];
    let batch = streams.iter().map(|&s| rec(s, 1, 10)).collect();
    let appended = spool.append(batch).unwrap();
    let got: Vec<(i64, Stream, u64)> = appended.iter().map(|a| (a.id, a.stream, a.seq)).collect();
    assert_eq!(
        got,
        vec![
            (1, Stream::Live, 1),
            (2, Stream::Metrics, 1),
            (3, Stream::Live, 2),
            (4, Stream::Live, 3),
            (5, Stream::Metrics, 2),
            (6, Stream::Events, 1),
        ]
    );
    let next = spool.append(vec![rec(Stream::Metrics, 2, 10)]).unwrap();
    assert_eq!((next[0].id, next[0].seq), (7, 3));
    assert!(spool.append(Vec::new()).unwrap().is_empty());
}

#[test]
fn read_after_returns_oldest_first_from_the_cursor() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, u64::MAX);
    let batch: Vec<_> = (0..10u8).map(|n| rec(Stream::Live, n, 20)).collect();
    spool.append(batch.clone()).unwrap();
    let all = spool.read_after(0, 100).unwrap();
    assert_eq!(
        all.iter().map(|r| r.id).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(all[3].topic, batch[3].topic);
    assert_eq!(all[3].body, batch[3].body);
    assert_eq!(all[3].created, batch[3].created);
    assert_eq!(all[3].attempts, 0);
    let page = spool.read_after(4, 3).unwrap();
    assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), vec![5, 6, 7]);
    assert!(spool.read_after(10, 3).unwrap().is_empty());
}

#[test]
fn ack_removes_only_known_ids_and_is_idempotent() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, u64::MAX);
    spool
        .append((0..5u8).map(|n| rec(Stream::Events, n, 30)).collect())
        .unwrap();
    assert_eq!(spool.ack(&[2, 4, 99, 2]).unwrap(), 2);
    assert_eq!(spool.ack(&[2, 4]).unwrap(), 0);
    assert_eq!(spool.ack(&[]).unwrap(), 0);
    assert_eq!(ids_of(&spool), vec![1, 3, 5]);
    let stats = spool.stats().unwrap();
    assert_eq!((stats.records, stats.bytes), (3, 90));
}

#[test]
fn ack_deletes_runs_of_ids_in_any_order_and_keeps_the_totals_per_stream() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, u64::MAX);
    // ids 1..=12, alternating live (odd) and metrics (even), 40 bytes each.
    spool
        .append(
            (0..12u8)
                .map(|n| {
                    let stream = if n % 2 == 0 {
                        Stream::Live
                    } else {
                        Stream::Metrics
                    };
                    rec(stream, n, 40)
                })
                .collect(),
        )
        .unwrap();
    // Two runs (3..=6 and 9..=10) given out of order with a duplicate, a lone id, and ids
    // that are not in the spool (0, 13, 20) next to the runs.
    assert_eq!(spool.ack(&[6, 4, 10, 3, 5, 9, 5, 1, 13, 0, 20]).unwrap(), 7);
    assert_eq!(ids_of(&spool), vec![2, 7, 8, 11, 12]);
    let stats = spool.stats().unwrap();
    assert_eq!((stats.records, stats.bytes), (5, 200));
    // Left: live 7, 11; metrics 2, 8, 12.
    let per_stream: Vec<(Stream, u64)> = stats
        .per_stream
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(per_stream, vec![(Stream::Live, 2), (Stream::Metrics, 3)]);
}

#[test]
fn seq_and_id_continue_after_reopen_even_when_empty() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, u64::MAX);
    spool
        .append(vec![rec(Stream::Live, 1, 10), rec(Stream::Live, 2, 10)])
        .unwrap();
    spool.append(vec![rec(Stream::Emissions, 3, 10)]).unwrap();
    assert_eq!(spool.ack(&[1, 2, 3]).unwrap(), 3);
    assert_eq!(spool.stats().unwrap().records, 0);
    drop(spool);

    let mut spool = open(&dir, u64::MAX);
    assert_eq!(spool.last_id().unwrap(), 3);
    let a = spool
        .append(vec![
            rec(Stream::Live, 4, 10),
            rec(Stream::Emissions, 5, 10),
        ])
        .unwrap();
    assert_eq!((a[0].id, a[0].seq), (4, 3));
    assert_eq!((a[1].id, a[1].seq), (5, 2));
    assert_eq!(seqs_of(&spool, Stream::Metrics), Vec::<u64>::new());
    assert_eq!(
        spool.append(vec![rec(Stream::Metrics, 6, 10)]).unwrap()[0].seq,
        1
    );
}

#[test]
fn budget_drops_live_then_metrics_then_events_and_emissions_last() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, 1000);
    // 10 records of 100 bytes: exactly the budget, nothing dropped.
    let mut batch = Vec::new();
    for n in 0..2 {
        batch.push(rec(Stream::Emissions, n, 100));
        batch.push(rec(Stream::Events, n, 100));
        batch.push(rec(Stream::Metrics, n, 100));
    }
    for n in 0..4 {
        batch.push(rec(Stream::Live, n, 100));
    }
    assert_eq!(spool.append(batch).unwrap().len(), 10);
    assert_eq!(spool.stats().unwrap().dropped, 0);

    // One more emission record: the oldest live record goes.
    spool.append(vec![rec(Stream::Emissions, 2, 100)]).unwrap();
    assert_eq!(seqs_of(&spool, Stream::Live), vec![2, 3, 4]);

    // 400 bytes of events: the other three live records, then the oldest metrics record.
    spool
        .append((3..7).map(|n| rec(Stream::Events, n, 100)).collect())
        .unwrap();
    assert_eq!(seqs_of(&spool, Stream::Live), Vec::<u64>::new());
    assert_eq!(seqs_of(&spool, Stream::Metrics), vec![2]);
    assert_eq!(seqs_of(&spool, Stream::Events), vec![1, 2, 3, 4, 5, 6]);

    // 300 bytes of emissions: the last metrics record, then the two oldest events.
    spool
        .append((7..10).map(|n| rec(Stream::Emissions, n, 100)).collect())
        .unwrap();
    assert_eq!(seqs_of(&spool, Stream::Metrics), Vec::<u64>::new());
    assert_eq!(seqs_of(&spool, Stream::Events), vec![3, 4, 5, 6]);
    assert_eq!(seqs_of(&spool, Stream::Emissions), vec![1, 2, 3, 4, 5, 6]);

    let stats = spool.stats().unwrap();
    assert_eq!((stats.records, stats.bytes, stats.dropped), (10, 1000, 8));
    assert_eq!(spool.dropped_per_stream(), by_stream([4, 2, 2, 0]));

    // A live record now has nothing of lower priority to displace: it is dropped itself,
    // rather than an older event.
    assert!(
        spool
            .append(vec![rec(Stream::Live, 10, 100)])
            .unwrap()
            .is_empty()
    );
    assert_eq!(seqs_of(&spool, Stream::Events), vec![3, 4, 5, 6]);
    assert_eq!(spool.stats().unwrap().dropped, 9);

    // The drop counters and totals survive a reopen.
    drop(spool);
    let spool = open(&dir, 1000);
    let stats = spool.stats().unwrap();
    assert_eq!((stats.records, stats.bytes, stats.dropped), (10, 1000, 9));
    assert_eq!(spool.dropped_per_stream()[0], (Stream::Live, 5));
}

#[test]
fn budget_drops_oldest_emissions_only_when_nothing_else_remains() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, 250);
    spool
        .append(vec![
            rec(Stream::Emissions, 0, 100),
            rec(Stream::Live, 0, 100),
        ])
        .unwrap();
    spool.append(vec![rec(Stream::Emissions, 1, 100)]).unwrap();
    assert_eq!(seqs_of(&spool, Stream::Live), Vec::<u64>::new());
    assert_eq!(seqs_of(&spool, Stream::Emissions), vec![1, 2]);
    spool.append(vec![rec(Stream::Emissions, 2, 100)]).unwrap();
    assert_eq!(seqs_of(&spool, Stream::Emissions), vec![2, 3]);
}

#[test]
fn max_age_expires_old_records_except_emissions_and_counts_them() {
    let dir = TempDir::new().unwrap();
    let cfg = SpoolConfig {
        max_age: Some(std::time::Duration::from_millis(10)),
        ..cfg(u64::MAX)
    };
    let mut spool = Spool::open(&dir.path().join("aged.db"), &cfg).unwrap();
    let at = |stream, n: u8, ms: i64| NewRecord {
        created: Timestamp(ms),
        ..rec(stream, n, 20)
    };
    spool
        .append(vec![
            at(Stream::Live, 0, 1_000),
            at(Stream::Events, 1, 1_000),
            at(Stream::Emissions, 2, 1_000),
            at(Stream::Live, 3, 1_005),
        ])
        .unwrap();
    // 1 010 - 10 ms = 1 000: nothing is older than the cutoff yet.
    spool.append(vec![at(Stream::Metrics, 4, 1_010)]).unwrap();
    assert_eq!(spool.stats().unwrap().records, 5);
    // 1 012 - 10 ms = 1 002: the two records of 1 000 expire, but not the emission.
    spool.append(vec![at(Stream::Live, 5, 1_012)]).unwrap();
    assert_eq!(seqs_of(&spool, Stream::Live), vec![2, 3]);
    assert_eq!(seqs_of(&spool, Stream::Events), Vec::<u64>::new());
    assert_eq!(seqs_of(&spool, Stream::Emissions), vec![1]);
    assert_eq!(seqs_of(&spool, Stream::Metrics), vec![1]);
    let stats = spool.stats().unwrap();
    assert_eq!((stats.records, stats.dropped), (4, 2));
    assert_eq!(
        stats.dropped_since_open,
        DropsByReason {
            max_age: 2,
            ..DropsByReason::default()
        }
    );
    assert_eq!(spool.dropped_per_stream(), by_stream([1, 0, 1, 0]));
    // Expiry is persisted like budget drops: a reopened spool still counts them.
    drop(spool);
    let spool = Spool::open(&dir.path().join("aged.db"), &cfg).unwrap();
    assert_eq!(spool.stats().unwrap().dropped, 2);
}

#[test]
fn oversized_batch_keeps_what_fits_by_priority() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, 300);
    let mut batch: Vec<_> = (0..5).map(|n| rec(Stream::Live, n, 100)).collect();
    batch.insert(2, rec(Stream::Emissions, 9, 100));
    let appended = spool.append(batch).unwrap();
    let got: Vec<(Stream, u64)> = appended.iter().map(|a| (a.stream, a.seq)).collect();
    // Live seqs 1..3 were dropped (consumed, so a consumer sees the gap); ids stay dense.
    assert_eq!(
        got,
        vec![(Stream::Emissions, 1), (Stream::Live, 4), (Stream::Live, 5)]
    );
    assert_eq!(
        appended.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let stats = spool.stats().unwrap();
    assert_eq!((stats.records, stats.bytes, stats.dropped), (3, 300, 3));
    assert_eq!(stats.dropped_since_open.budget, 3);
    assert_eq!(
        spool.append(vec![rec(Stream::Live, 6, 10)]).unwrap().len(),
        1
    );
    assert_eq!(seqs_of(&spool, Stream::Live), vec![5, 6]);

    // A single record larger than the whole budget is dropped, not stored.
    let mut spool = Spool::open(&dir.path().join("tiny.db"), &cfg(50)).unwrap();
    assert!(
        spool
            .append(vec![rec(Stream::Emissions, 1, 60)])
            .unwrap()
            .is_empty()
    );
    assert_eq!(spool.stats().unwrap().dropped, 1);
}

#[test]
fn stats_report_counts_bytes_and_the_oldest_head() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, u64::MAX);
    let empty = spool.stats().unwrap();
    assert_eq!(empty.records, 0);
    assert_eq!(empty.oldest, None);
    assert_eq!(empty.per_stream.len(), 4);
    let mut late_event = rec(Stream::Events, 1, 40);
    late_event.created = Timestamp(500);
    spool
        .append(vec![
            rec(Stream::Live, 1, 10),
            late_event,
            rec(Stream::Live, 2, 10),
        ])
        .unwrap();
    // Multi-byte topic: the budget counts bytes, not characters.
    spool
        .append(vec![NewRecord {
            stream: Stream::Metrics,
            topic: "µ".to_owned(),
            body: vec![0; 3],
            created: Timestamp(2_000),
        }])
        .unwrap();
    let stats = spool.stats().unwrap();
    assert_eq!(stats.records, 4);
    assert_eq!(stats.bytes, 10 + 40 + 10 + 5);
    assert_eq!(stats.oldest, Some(Timestamp(500)));
    assert_eq!(stats.per_stream, by_stream([2, 1, 1, 0]));
    // The in-memory totals agree with what a fresh open computes from the table.
    drop(spool);
    assert_eq!(open(&dir, u64::MAX).stats().unwrap(), stats);
}

#[test]
fn mark_attempt_counts_attempts() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, u64::MAX);
    spool
        .append(vec![rec(Stream::Live, 1, 10), rec(Stream::Live, 2, 10)])
        .unwrap();
    spool.mark_attempt(&[1, 42]).unwrap();
    spool.mark_attempt(&[1, 2]).unwrap();
    let attempts: Vec<u32> = spool
        .read_after(0, 10)
        .unwrap()
        .iter()
        .map(|r| r.attempts)
        .collect();
    assert_eq!(attempts, vec![2, 1]);
}

#[test]
fn kv_values_persist_and_overwrite() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, u64::MAX);
    assert_eq!(spool.kv_get("bdseq").unwrap(), None);
    spool.kv_set("bdseq", &[1]).unwrap();
    spool.kv_set("bdseq", &[2, 3]).unwrap();
    drop(spool);
    let spool = open(&dir, u64::MAX);
    assert_eq!(spool.kv_get("bdseq").unwrap(), Some(vec![2, 3]));
}

/// Fills `path` with bytes that are no SQLite database.
fn write_garbage(path: &Path) {
    fs::write(path, vec![0x5a; 8192]).unwrap();
}

/// Makes `path` a database without the spool's tables.
fn make_foreign(path: &Path) {
    Connection::open(path)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
}

/// Makes `path` a spool of a schema newer than this build's.
fn make_newer(path: &Path) {
    let spool = Spool::open(path, &cfg(u64::MAX)).unwrap();
    spool.conn.pragma_update(None, "user_version", 99).unwrap();
}

/// Opening `path` fails as corrupt, with `file` in the message.
fn assert_open_is_corrupt(path: &Path, file: &str) {
    let err = Spool::open(path, &cfg(u64::MAX)).unwrap_err();
    assert!(matches!(err, SpoolError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(file), "{err}");
}

#[test]
fn open_refuses_a_file_that_is_not_a_database() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("garbage.db");
    write_garbage(&path);
    assert_open_is_corrupt(&path, "garbage.db");
}

#[test]
fn open_refuses_a_damaged_page_found_by_quick_check() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("damaged.db");
    let mut spool = Spool::open(&path, &cfg(u64::MAX)).unwrap();
    spool
        .append((0..200u8).map(|n| rec(Stream::Live, n, 800)).collect())
        .unwrap();
    spool.close().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let page = PAGE_SIZE_BYTES as usize;
    assert!(bytes.len() > 4 * page, "the file should span several pages");
    bytes[2 * page..3 * page].fill(0xff);
    fs::write(&path, bytes).unwrap();
    assert_open_is_corrupt(&path, "damaged.db");
}

#[test]
fn open_refuses_newer_schema_and_foreign_databases() {
    let dir = TempDir::new().unwrap();
    let newer = dir.path().join("newer.db");
    make_newer(&newer);
    let err = Spool::open(&newer, &cfg(u64::MAX)).unwrap_err();
    assert!(
        matches!(
            err,
            SpoolError::NewerSchema {
                found: 99,
                supported: SCHEMA_VERSION,
                ..
            }
        ),
        "{err:?}"
    );

    let foreign = dir.path().join("foreign.db");
    make_foreign(&foreign);
    let err = Spool::open(&foreign, &cfg(u64::MAX)).unwrap_err();
    assert!(matches!(err, SpoolError::NotASpool { .. }), "{err:?}");
}

#[test]
fn damage_is_told_apart_from_other_open_failures() {
    let dir = TempDir::new().unwrap();
    let open_err = |path: &Path| Spool::open(path, &cfg(u64::MAX)).unwrap_err();
    // Damaged: not a database, a database without the spool's tables, or missing one.
    let garbage = dir.path().join("garbage.db");
    write_garbage(&garbage);
    let foreign = dir.path().join("foreign.db");
    make_foreign(&foreign);
    let truncated = dir.path().join("no-streams.db");
    let spool = Spool::open(&truncated, &cfg(u64::MAX)).unwrap();
    spool.conn.execute_batch("DROP TABLE streams").unwrap();
    drop(spool);
    for (path, reason) in [
        (&garbage, "corrupt"),
        (&foreign, "not_a_spool"),
        (&truncated, "not_a_spool"),
    ] {
        let err = open_err(path);
        assert!(err.is_damaged(), "{err:?}");
        assert_eq!(err.set_aside_reason(), Some(reason), "{err:?}");
    }
    // Not damage: a newer schema, a file that cannot be opened, a directory that cannot be
    // made, a full disk.
    let newer = dir.path().join("newer.db");
    make_newer(&newer);
    let a_directory = dir.path().join("a-directory.db");
    fs::create_dir(&a_directory).unwrap();
    let under_a_file = garbage.join("spool.db");
    for err in [
        open_err(&newer),
        open_err(&a_directory),
        open_err(&under_a_file),
        SpoolError::DiskFull {
            path: newer.clone(),
        },
    ] {
        assert!(!err.is_damaged(), "{err:?}");
        assert_eq!(err.set_aside_reason(), None, "{err:?}");
    }
}

#[test]
fn a_damaged_spool_file_is_moved_aside_with_its_record_log() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("spool-l.db");
    let mut spool = Spool::open(&path, &cfg(u64::MAX)).unwrap();
    spool.append(vec![rec(Stream::Live, 1, 10)]).unwrap();
    drop(spool);
    let logged = fs::read(log::path_for(&path)).unwrap();
    fs::write(&path, vec![7; 8192]).unwrap();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_083_200);
    let (spool, aside) = Spool::open_or_set_aside(&path, &cfg(u64::MAX), now).unwrap();
    let aside = aside.expect("set aside");
    assert_eq!(fs::read(log::path_for(&aside.moved_to)).unwrap(), logged);
    assert_eq!(
        spool.stats().unwrap().records,
        0,
        "the fresh spool has no old log"
    );
    // A log that is not a log is damage too: the spool is set aside with it.
    drop(spool);
    fs::write(log::path_for(&path), b"not a record log").unwrap();
    let (spool, aside) = Spool::open_or_set_aside(&path, &cfg(u64::MAX), now).unwrap();
    assert_eq!(aside.expect("set aside").reason, "corrupt");
    assert_eq!(spool.stats().unwrap().records, 0);
}

#[test]
fn a_damaged_file_is_moved_aside_and_an_empty_spool_takes_its_place() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("spool-b.db");
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_083_200);
    let stamp = "20261201T000000Z";
    for round in 0..2 {
        fs::write(&path, vec![round; 8192]).unwrap();
        let (mut spool, aside) = Spool::open_or_set_aside(&path, &cfg(u64::MAX), now).unwrap();
        let aside = aside.expect("the garbage was set aside");
        // The second one in the same second gets a name of its own.
        let name = match round {
            0 => format!("spool-b.db.corrupt-{stamp}"),
            _ => format!("spool-b.db.corrupt-{stamp}-1"),
        };
        assert_eq!(aside.moved_to, dir.path().join(&name));
        assert_eq!(
            (aside.path.as_path(), aside.reason),
            (path.as_path(), "corrupt")
        );
        assert!(aside.detail.contains("spool-b.db"), "{aside:?}");
        assert_eq!(fs::read(&aside.moved_to).unwrap(), vec![round; 8192]);
        // A working, empty spool in its place.
        assert_eq!(spool.stats().unwrap().records, 0);
        assert_eq!(
            spool.append(vec![rec(Stream::Live, 1, 10)]).unwrap()[0].seq,
            1
        );
        spool.close().unwrap();
    }
    // A healthy file is opened as it is.
    let (spool, aside) = Spool::open_or_set_aside(&path, &cfg(u64::MAX), now).unwrap();
    assert_eq!((aside, spool.stats().unwrap().records), (None, 1));
}

#[test]
fn a_newer_schema_is_refused_and_left_where_it_is() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("newer.db");
    make_newer(&path);
    let before = fs::read(&path).unwrap();
    let err = Spool::open_or_set_aside(&path, &cfg(u64::MAX), SystemTime::now()).unwrap_err();
    assert!(
        matches!(err, SpoolError::NewerSchema { found: 99, .. }),
        "{err:?}"
    );
    assert_eq!(fs::read(&path).unwrap(), before);
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.to_string_lossy().contains("corrupt")),
        "{names:?}"
    );
}

/// Turns `spool` into a file of schema `version` without the dead-letter table, and closes it.
fn as_version_without_dead_letters(spool: Spool, version: i64) {
    spool.conn.execute_batch("DROP TABLE dead_letters").unwrap();
    spool
        .conn
        .pragma_update(None, "user_version", version)
        .unwrap();
    spool.close().unwrap();
}

fn schema_version(spool: &Spool) -> i64 {
    spool
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

#[test]
fn a_version_1_file_is_upgraded_in_place_and_keeps_its_records_and_seqs() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("v1.db");
    let mut spool = Spool::open(&path, &cfg(u64::MAX)).unwrap();
    spool.append(vec![rec(Stream::Live, 4, 20)]).unwrap();
    // Version 1 had no dead-letter table.
    as_version_without_dead_letters(spool, 1);

    let mut spool = Spool::open(&path, &cfg(u64::MAX)).unwrap();
    assert_eq!(schema_version(&spool), SCHEMA_VERSION);
    let read = spool.read_after(0, 10).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].seq, 1);
    let appended = spool.append(vec![rec(Stream::Live, 5, 20)]).unwrap();
    assert_eq!(appended[0].seq, 2, "the seq counter continues");
}

#[test]
fn a_version_2_file_is_upgraded_in_place_and_gains_an_empty_dead_letter_table() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("v2.db");
    let mut spool = Spool::open(&path, &cfg(u64::MAX)).unwrap();
    spool
        .append(vec![rec(Stream::Live, 4, 20), rec(Stream::Events, 5, 20)])
        .unwrap();
    spool.mark_attempt(&[1]).unwrap();
    // A version-2 file: the same tables but no dead_letters.
    as_version_without_dead_letters(spool, 2);

    let mut spool = Spool::open(&path, &cfg(u64::MAX)).unwrap();
    assert_eq!(schema_version(&spool), 3);
    assert_eq!(spool.dead_letters().unwrap(), Vec::new());
    let read = spool.read_after(0, 10).unwrap();
    assert_eq!(
        read.iter().map(|r| (r.seq, r.attempts)).collect::<Vec<_>>(),
        vec![(1, 1), (1, 0)]
    );
    // The upgraded file works as a version-3 one.
    let moved = spool
        .dead_letter(&[(1, "too large".into())], Timestamp(9_000))
        .unwrap();
    assert_eq!(moved.len(), 1);
    assert_eq!(spool.stats().unwrap().dead_letters, 1);
    drop(spool);
    // Reopening an upgraded file changes nothing.
    let spool = Spool::open(&path, &cfg(u64::MAX)).unwrap();
    assert_eq!(spool.dead_letter_count().unwrap(), 1);
}

#[test]
fn dead_letters_leave_the_queue_with_their_reason_and_come_back_with_their_seq() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, u64::MAX);
    spool
        .append((1..=4u8).map(|n| rec(Stream::Live, n, 50)).collect())
        .unwrap();
    spool.mark_attempt(&[2, 2, 2]).unwrap();
    let moved = spool
        .dead_letter(
            &[(2, "connection lost".into()), (99, "unknown".into())],
            Timestamp(5_000),
        )
        .unwrap();
    assert_eq!(moved.len(), 1, "an id not in the queue is ignored");
    assert_eq!(
        (moved[0].id, moved[0].seq, moved[0].attempts),
        (2, 2, 3),
        "{moved:?}"
    );
    assert_eq!(ids_of(&spool), vec![1, 3, 4]);
    let stats = spool.stats().unwrap();
    assert_eq!(
        (stats.records, stats.bytes, stats.dead_letters),
        (3, 150, 1)
    );
    let letters = spool.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "connection lost");
    assert_eq!(letters[0].dead_at, Timestamp(5_000));
    assert_eq!(letters[0].body, vec![2u8; 50 - 4]);
    assert!(!letters[0].requeue);

    // Nothing flagged: nothing moves. Flagging an unknown id flags nothing.
    assert_eq!(spool.take_requeued().unwrap(), 0);
    assert_eq!(spool.request_requeue(Some(&[7])).unwrap(), 0);
    assert_eq!(spool.request_requeue(None).unwrap(), 1);
    assert!(spool.dead_letters().unwrap()[0].requeue);
    // The flag survives a reopen; the owner moves it back with a new id and its old seq.
    drop(spool);
    let mut spool = open(&dir, u64::MAX);
    assert_eq!(spool.take_requeued().unwrap(), 1);
    assert_eq!(spool.dead_letter_count().unwrap(), 0);
    let read = spool.read_after(0, 10).unwrap();
    assert_eq!(
        read.iter()
            .map(|r| (r.id, r.seq, r.attempts))
            .collect::<Vec<_>>(),
        vec![(1, 1, 0), (3, 3, 0), (4, 4, 0), (5, 2, 0)]
    );
    let stats = spool.stats().unwrap();
    assert_eq!((stats.records, stats.bytes), (4, 200));
    // The totals agree with what a fresh open computes from the table.
    drop(spool);
    assert_eq!(open(&dir, u64::MAX).stats().unwrap(), stats);
}

#[test]
fn a_full_disk_drops_like_the_budget_and_keeps_seqs_and_totals_consistent() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, u64::MAX);
    spool.append(vec![rec(Stream::Emissions, 0, 500)]).unwrap();
    // Cap the file near its current size: SQLite then reports SQLITE_FULL like a full disk.
    let pages = spool.page_count().unwrap();
    assert_eq!(spool.cap_file_pages(pages + 8).unwrap(), pages + 8);
    // Fill it with live and metrics records, far more than 8 pages hold.
    let mut stored = 0u64;
    for round in 0..40u8 {
        let stream = if round % 2 == 0 {
            Stream::Live
        } else {
            Stream::Metrics
        };
        let a = spool
            .append((0..20u8).map(|n| rec(stream, n, 1000)).collect())
            .expect("a full disk drops, it does not fail the append");
        stored += a.len() as u64;
    }
    // Every record was given its seq, and only what the disk could not hold was dropped.
    let dropped: u64 = spool.dropped_per_stream().iter().map(|(_, n)| n).sum();
    assert!(dropped > 0, "the cap never took effect");
    assert_eq!(spool.disk_full_drops(), dropped);
    let stats = spool.stats().unwrap();
    assert_eq!(stats.records + dropped, 1 + 800, "{stats:?}");
    assert_eq!(stats.dropped, dropped);
    assert!(spool.page_count().unwrap() <= pages + 8);
    // The emission survived: live and metrics were there to drop.
    assert_eq!(seqs_of(&spool, Stream::Emissions), vec![1]);
    assert_eq!(spool.dropped_per_stream()[3], (Stream::Emissions, 0));
    // Live went before metrics: the metrics of the last rounds are all still there.
    assert_eq!(
        seqs_of(&spool, Stream::Metrics).last(),
        Some(&400),
        "the newest metrics were kept"
    );
    assert!(stored > 0);
    // Acks still work on a full disk, and the totals survive a reopen.
    assert_eq!(spool.ack(&[1]).unwrap(), 1);
    let left = spool.stats().unwrap().records;
    drop(spool);
    let mut spool = open(&dir, u64::MAX);
    assert_eq!(spool.stats().unwrap().records, left);
    assert_eq!(spool.stats().unwrap().dropped, dropped);
    let next = spool.append(vec![rec(Stream::Metrics, 0, 10)]).unwrap();
    assert_eq!(next[0].seq, 401);
}

#[test]
fn a_record_bigger_than_the_whole_disk_is_dropped_and_counted() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(&dir, u64::MAX);
    let pages = spool.page_count().unwrap();
    spool.cap_file_pages(pages + 2).unwrap();
    spool.append(vec![rec(Stream::Live, 0, 100)]).unwrap();
    // One record bigger than the whole cap: nothing can make room for it. By the budget's
    // rule it is dropped (after everything of lower priority), its seq consumed and counted.
    let a = spool
        .append(vec![rec(Stream::Emissions, 0, 64 * 1024)])
        .unwrap();
    assert!(a.is_empty());
    assert_eq!(spool.dropped_per_stream(), by_stream([1, 0, 0, 1]));
    assert_eq!(spool.stats().unwrap().records, 0);
    let next = spool.append(vec![rec(Stream::Emissions, 1, 10)]).unwrap();
    assert_eq!(next[0].seq, 2, "the consumer sees the dropped one as a gap");
}

#[test]
fn file_is_in_wal_mode_with_the_configured_synchronous() {
    let dir = TempDir::new().unwrap();
    for (full, expected) in [(true, 2), (false, 1)] {
        let path = dir.path().join(format!("sync-{full}.db"));
        let cfg = SpoolConfig {
            max_bytes: 1,
            max_age: None,
            synchronous_full: full,
        };
        let mut spool = Spool::open(&path, &cfg).unwrap();
        let mode: String = spool
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let sync = |spool: &Spool| -> i64 {
            spool
                .conn
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap()
        };
        assert_eq!((mode.as_str(), sync(&spool)), ("wal", expected));
        // An ack commits without an fsync and leaves the level as configured for appends,
        // also when it fails.
        spool.max_bytes = u64::MAX;
        // Appends go to the record log unless the file is capped; this is about SQLite's acks.
        spool.cap_file_pages(1 << 20).unwrap();
        let appended = spool
            .append(vec![rec(Stream::Live, 1, 10), rec(Stream::Live, 2, 10)])
            .unwrap();
        assert_eq!(spool.ack(&[appended[0].id]).unwrap(), 1);
        assert_eq!(sync(&spool), expected);
        spool.conn.execute_batch("DROP TABLE records").unwrap();
        assert!(spool.ack(&[appended[1].id]).is_err());
        assert_eq!(sync(&spool), expected);
    }
}

#[test]
fn new_files_take_16_kib_pages_and_older_files_keep_theirs() {
    let dir = TempDir::new().unwrap();
    let page_size = |spool: &Spool| -> i64 {
        spool
            .conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap()
    };
    let spool = open(&dir, u64::MAX);
    assert_eq!(page_size(&spool), PAGE_SIZE_BYTES);

    // A file made before the page size was set: 4 KiB pages, WAL, no tables yet.
    let old = dir.path().join("old.db");
    {
        let conn = Connection::open(&old).unwrap();
        conn.pragma_update(None, "page_size", 4096).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    }
    let mut spool = Spool::open(&old, &cfg(u64::MAX)).unwrap();
    assert_eq!(page_size(&spool), 4096);
    // A 13 kB body spans overflow pages there and still round-trips.
    spool.append(vec![rec(Stream::Live, 1, 13_000)]).unwrap();
    let read = spool.read_after(0, 10).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].body, vec![1u8; 13_000 - "t/01".len()]);
}
