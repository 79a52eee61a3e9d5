//! The spool file's schema: creation, the integrity check at open, moving a damaged file aside,
//! and the upgrade of older schema versions in place.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{Connection, ErrorCode};

use super::*;
use crate::spool::SpoolError;

/// The schema version written to `PRAGMA user_version` (see the module documentation of
/// [`crate::spool`]): 1 held JSON bodies only; 2, the same tables, may also hold binary bodies
/// ([`crate::codec::body`]); 3 adds the `dead_letters` table. Older files are upgraded in place
/// when they are opened, and an older build refuses a newer file rather than drop what it cannot
/// read (a version-2 build would not know that records were set aside).
pub(super) const SCHEMA_VERSION: i64 = 3;

pub(super) const SCHEMA: &str = "
CREATE TABLE records (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    stream     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    topic      TEXT    NOT NULL,
    body       BLOB    NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX records_by_stream ON records(stream, id);
CREATE TABLE streams (
    stream   TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL,
    dropped  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
";

pub(super) fn quick_check(conn: &Connection, path: &Path) -> Result<(), SpoolError> {
    let corrupt = |detail: String| SpoolError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let mut problems = Vec::new();
    conn.pragma_query(None, "quick_check", |row| {
        problems.push(row.get::<_, String>(0)?);
        Ok(())
    })
    .map_err(|e| match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => corrupt(e.to_string()),
        _ => classify(path, e),
    })?;
    if problems.len() == 1 && problems[0] == "ok" {
        Ok(())
    } else {
        Err(corrupt(format!("quick_check: {}", problems.join("; "))))
    }
}

/// Rename the spool file at `path` to `<name>.corrupt-<now as YYYYMMDDTHHMMSSZ>` (with `-1`,
/// `-2`… if that is taken) and returns the new path; on failure, the path it tried and the error.
///
/// The `-wal` and `-shm` files, if SQLite left any (closing the failed connection normally
/// checkpoints a readable WAL into the file and removes both), go first, to the new name plus
/// their suffix: SQLite would replay a WAL left at the old name into the fresh file, and beside the
/// renamed file it is the WAL that `sqlite3` reads with it.
pub(super) fn set_aside(
    path: &Path,
    now: SystemTime,
) -> Result<PathBuf, (PathBuf, std::io::Error)> {
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let with_suffix = |p: &Path, suffix: &str| {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    let taken = |p: &Path| {
        ["", "-wal", "-shm", "-log"]
            .iter()
            .any(|s| with_suffix(p, s).symlink_metadata().is_ok())
    };
    let mut to = path.with_file_name(format!("{name}.corrupt-{stamp}"));
    let mut n = 0;
    while taken(&to) {
        n += 1;
        to = path.with_file_name(format!("{name}.corrupt-{stamp}-{n}"));
    }
    for suffix in ["-wal", "-shm", "-log"] {
        let from = with_suffix(path, suffix);
        let dest = with_suffix(&to, suffix);
        match fs::rename(&from, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err((dest, e)),
        }
    }
    fs::rename(path, &to).map_err(|e| (to.clone(), e))?;
    Ok(to)
}

/// Fails with [`SpoolError::NotASpool`] naming the first table of the spool's schema the file
/// lacks: such a file would fail every call later, so it is refused at open like a damaged one.
pub(super) fn check_tables(conn: &Connection, path: &Path) -> Result<(), SpoolError> {
    for table in ["records", "streams", "kv", "dead_letters"] {
        let found: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .map_err(|e| classify(path, e))?;
        if found == 0 {
            return Err(SpoolError::NotASpool {
                path: path.to_path_buf(),
                detail: format!("user_version {SCHEMA_VERSION} but no table {table}"),
            });
        }
    }
    Ok(())
}

pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), SpoolError> {
    let err = |e| classify(path, e);
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    match version {
        SCHEMA_VERSION => Ok(()),
        // 1 to 2 changed no table (every JSON body a version-1 file holds still decodes); 3 adds
        // the empty dead-letter table. One transaction: an interrupted upgrade leaves the old
        // version, which the next open upgrades again.
        1 | 2 => {
            let tx = conn.transaction().map_err(err)?;
            tx.execute_batch(DEAD_LETTERS_SCHEMA).map_err(err)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(err)?;
            tx.commit().map_err(err)
        }
        0 => {
            let tx = conn.transaction().map_err(err)?;
            let tables: i64 = tx
                .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
                .map_err(err)?;
            if tables > 0 {
                return Err(SpoolError::NotASpool {
                    path: path.to_path_buf(),
                    detail: format!("user_version 0 but {tables} schema objects"),
                });
            }
            tx.execute_batch(SCHEMA).map_err(err)?;
            tx.execute_batch(DEAD_LETTERS_SCHEMA).map_err(err)?;
            for stream in STREAMS {
                tx.execute(
                    "INSERT INTO streams (stream, next_seq, dropped) VALUES (?1, 1, 0)",
                    [stream.as_str()],
                )
                .map_err(err)?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(err)?;
            tx.commit().map_err(err)
        }
        found if found > SCHEMA_VERSION => Err(SpoolError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        }),
        found => Err(SpoolError::NotASpool {
            path: path.to_path_buf(),
            detail: format!("unknown user_version {found}"),
        }),
    }
}
