//! The on-disk schema, its migrations, connection settings and error mapping.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::StoreError;

/// `PRAGMA application_id`: "ctrw". Marks the file as a ctrwatch store.
pub(crate) const APPLICATION_ID: i32 = 0x6374_7277;

/// Migrations, in order: `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
/// `PRAGMA user_version` holds the version. Never edit a released entry; append a new one.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The oldest schema readers accept without a migration: the migrations after it only add
/// tables that event readers do not use (4: the alert outbox; `ctrwatch alerts` on such a
/// store lists none). A store of the previous release stays readable until a daemon of this
/// one migrates it.
pub const READABLE_FROM: i64 = 3;

/// Version 1.
///
/// * `events`: one row per file operation. The key is the event's wall-clock time in ns since
///   the epoch (plus `adj`, the few ns added when two events share a nanosecond), so the table
///   is clustered by time: time ranges, newest-first scans and pruning oldest-first need no
///   extra index. Everything else is small integers referring to the dictionaries below;
///   `details` is a compact tag/varint record (NULL for most events).
/// * `names` + `dirs`: every distinct path once, as (directory, last component); `dirs.inner`
///   is the directory as seen inside a snapshot (see `codec::inner_dir`), indexed, so a path
///   inside an image finds its file in every snapshot.
/// * `procs`: every distinct process description (ids, comm, exe, argv, unit, container,
///   parent chain) once.
/// * `atoms`: small strings (op names, results, devices, modes, flags, notes).
/// * `gaps`: windows the history does not cover: kernel loss records, daemon downtime, events
///   the store could not write (disk full), and what retention pruned.
/// * `runs`: daemon starts, heartbeats and clean stops (to detect unclean ends).
pub(crate) const V1: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE atoms (
    id INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    text TEXT NOT NULL,
    UNIQUE (kind, text)
);
CREATE TABLE dirs (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE,
    inner BLOB
);
CREATE INDEX dirs_inner ON dirs (inner) WHERE inner IS NOT NULL;
CREATE TABLE names (
    id INTEGER PRIMARY KEY,
    dir INTEGER NOT NULL,
    name BLOB NOT NULL
);
CREATE UNIQUE INDEX names_dir_name ON names (dir, name);
CREATE TABLE procs (
    id INTEGER PRIMARY KEY,
    hash INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    tid INTEGER NOT NULL,
    ppid INTEGER NOT NULL,
    comm TEXT NOT NULL,
    exe TEXT,
    cmdline TEXT NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    unit TEXT,
    container TEXT,
    cgroup_id INTEGER NOT NULL,
    mnt_ns INTEGER NOT NULL,
    ancestors TEXT NOT NULL,
    clock_off INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);
CREATE INDEX procs_hash ON procs (hash);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    path INTEGER NOT NULL,
    op INTEGER NOT NULL,
    proc INTEGER NOT NULL,
    result INTEGER NOT NULL,
    adj INTEGER NOT NULL,
    mono_d INTEGER NOT NULL,
    errno INTEGER,
    new_path INTEGER,
    inode INTEGER,
    dev INTEGER,
    details BLOB
);
CREATE INDEX events_path ON events (path, op);
CREATE INDEX events_new_path ON events (new_path) WHERE new_path IS NOT NULL;
CREATE TABLE gaps (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    from_ns INTEGER NOT NULL,
    to_ns INTEGER NOT NULL,
    lost INTEGER,
    kinds TEXT,
    reason TEXT,
    recorded_ns INTEGER NOT NULL
);
CREATE INDEX gaps_to ON gaps (to_ns);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    started_ns INTEGER NOT NULL,
    heartbeat_ns INTEGER NOT NULL,
    ended_ns INTEGER,
    pid INTEGER NOT NULL,
    version TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('events', 0);
INSERT INTO atoms (id, kind, text) VALUES (1, 1, 'ok');
";

/// Version 2: time segments.
///
/// Every event belongs to a segment (`seg`): the writer starts a new one every
/// `StoreOptions::segment_events` events. The path indexes are keyed by segment first, so
/// each segment's entries form one contiguous, small range of the index: inserts only ever
/// touch the newest segment's pages, which stay in the page cache, instead of random pages
/// of one index that grows with the whole history (v1: `events_path (path, op)` fell out of
/// the cache past a few million events and every commit rewrote thousands of its pages).
/// Queries visit the segments newest first (`segments` lists them with their id range) and
/// stop as soon as the rest cannot hold anything newer; pruning the oldest events removes
/// whole leading ranges of these indexes.
///
/// Migrating a v1 store: its events become segment 0 (`ADD COLUMN … DEFAULT 0` rewrites no
/// row), and the two path indexes are rebuilt with the segment in front.
pub(crate) const V2: &str = "
ALTER TABLE events ADD COLUMN seg INTEGER NOT NULL DEFAULT 0;
DROP INDEX events_path;
DROP INDEX events_new_path;
CREATE INDEX events_seg_path ON events (seg, path, op);
CREATE INDEX events_seg_new_path ON events (seg, new_path) WHERE new_path IS NOT NULL;
CREATE TABLE segments (
    seg INTEGER PRIMARY KEY,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    events INTEGER NOT NULL
);
INSERT INTO segments (seg, lo, hi, events)
    SELECT 0, min(id), max(id), count(*) FROM events HAVING count(*) > 0;
";

/// Version 3: row checksums.
///
/// `events.checksum` holds, for every event written from now on, 32 bits of XXH3 over
/// everything the event's answer is built from: its own columns and details, and a digest of
/// each row it refers to (path and new path bytes, the process description, the atoms). A
/// reader recomputes it and skips (and counts) a row that does not match: a silent change in
/// any of those rows is detected instead of answered (`codec::RowContent`).
///
/// Rows stored before the migration keep a NULL checksum: they are read as before, not
/// verified. `meta.unsummed_max_id` records the largest id among them, so a NULL checksum on a
/// later row (a damaged one) is not mistaken for an old row. `ADD COLUMN` rewrites no row.
const V3: &str = "
ALTER TABLE events ADD COLUMN checksum INTEGER;
INSERT INTO meta (key, value) SELECT 'unsummed_max_id', max(id) FROM events HAVING count(*) > 0;
";

/// Version 4: the alert outbox (`alerts`, `deliveries`, `meta.alerts_seq`,
/// `meta.alerts_dropped`): every alert and its delivery state per sink and target. The SQL
/// lives with the rest of the outbox, in `ctrwatch_alerts::outbox::TABLES` (frozen like this
/// list: a change is a new migration); docs/alerts.md describes the tables.
const V4: &str = ctrwatch_alerts::outbox::TABLES;

/// SQLite's page cache for the writer (KiB, as `cache_size` wants it negative). Holds the
/// newest segment's index pages, the hot part of `names`/`dirs` and the table's tail; see
/// docs/store.md for what it costs in RSS.
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// Page size of a new store. 16 KiB rather than SQLite's 4 KiB: the writer's cost is
/// dominated by inserts into the path index at random places of the newest segment's range;
/// with larger pages the b-tree is shallower and splits less often (measured: +25 % inserts/s
/// for this table and index, docs/store.md). A store created with another size keeps it.
const PAGE_SIZE: i64 = 16 * 1024;
/// WAL size before an automatic checkpoint (converted to pages of the store's page size). A
/// page rewritten by several commits between two checkpoints is copied to the database once.
const WAL_AUTOCHECKPOINT_BYTES: i64 = 64 * 1024 * 1024;
/// The WAL file is truncated back to this after a checkpoint.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Maps a SQLite error to the store's error classes.
pub(crate) fn map_err(path: &Path, e: rusqlite::Error) -> StoreError {
    let path = path.to_path_buf();
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Full { path },
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => StoreError::Locked {
            path,
            detail: e.to_string(),
        },
        Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase) => StoreError::Corrupt {
            path,
            detail: e.to_string(),
        },
        // A stored value of the wrong type or out of range: the schema admits no such value,
        // so the row was damaged (a flipped bit in a record's type byte, ...).
        None if is_bad_stored_value(&e) => StoreError::Corrupt {
            path,
            detail: format!("unreadable stored value: {e}"),
        },
        // SQLITE_IOERR_SHMSIZE and friends: the -shm file could not grow (usually ENOSPC).
        Some(ErrorCode::SystemIoFailure)
            if e.sqlite_extended_error_code() == Some(rusqlite::ffi::SQLITE_IOERR_SHMSIZE) =>
        {
            StoreError::Full { path }
        }
        _ => StoreError::Sqlite { path, source: e },
    }
}

/// Whether the error is a stored value that cannot be what the writer wrote (wrong type, out
/// of range, not UTF-8, bad JSON): the row is damaged.
pub(crate) fn is_bad_stored_value(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::Utf8Error(..)
    )
}

/// Opens a connection and applies the settings common to writer and readers.
pub(crate) fn connect(path: &Path, write: bool) -> Result<Connection, StoreError> {
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| map_err(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| map_err(path, e))?;
    Ok(conn)
}

/// Opens a read-only connection on a SQLite URI (`file:…?immutable=1`, `…?readonly_shm=1`);
/// `path` is the store the URI names, for errors.
pub(crate) fn connect_uri(uri: &str, path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(uri, flags).map_err(|e| map_err(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| map_err(path, e))?;
    Ok(conn)
}

/// (application_id, user_version, number of schema objects). The first read of the file:
/// a file that is not SQLite fails here with `Corrupt`.
fn identity(conn: &Connection, path: &Path) -> Result<(i32, i64, i64), StoreError> {
    let app: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| map_err(path, e))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| map_err(path, e))?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| map_err(path, e))?;
    Ok((app, version, objects))
}

/// Checks that the file is a ctrwatch store this build can read; for readers.
pub(crate) fn check_readable(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let (app, version, objects) = identity(conn, path)?;
    if app != APPLICATION_ID {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: if objects == 0 {
                "empty database (no ctrwatch daemon has written it yet)".into()
            } else {
                format!("not a ctrwatch event store (application_id {app:#x})")
            },
        });
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < READABLE_FROM {
        return Err(StoreError::OlderSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Writer setup: WAL, settings, and the schema created or migrated to [`SCHEMA_VERSION`].
pub(crate) fn prepare_writer(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let err = |e| map_err(path, e);
    let (app, version, objects) = identity(conn, path)?;
    if objects > 0 && app != APPLICATION_ID {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("not a ctrwatch event store (application_id {app:#x})"),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if objects == 0 {
        // Only possible before the first table exists. The page size first: SQLite ignores a
        // page_size set after auto_vacuum on an empty database (the store then silently got
        // 4 KiB pages), and once the database is in WAL mode it can never change.
        // auto_vacuum lets pruning return space to the filesystem (PRAGMA incremental_vacuum).
        conn.execute_batch(&format!(
            "PRAGMA page_size = {PAGE_SIZE}; PRAGMA auto_vacuum = INCREMENTAL;"
        ))
        .map_err(err)?;
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Sqlite {
            path: path.to_path_buf(),
            source: rusqlite::Error::InvalidQuery,
        });
    }
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(err)?;
    let wal_pages = WAL_AUTOCHECKPOINT_BYTES / page_size.max(512);
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL;
         PRAGMA cache_size = -{WRITER_CACHE_KIB};
         PRAGMA wal_autocheckpoint = {wal_pages};
         PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT};
         PRAGMA temp_store = MEMORY;"
    ))
    .map_err(err)?;
    migrate(conn, path, version)
}

fn migrate(conn: &Connection, path: &Path, from: i64) -> Result<(), StoreError> {
    if from == SCHEMA_VERSION {
        return Ok(());
    }
    let err = |e| map_err(path, e);
    conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
    let result = (|| {
        // Re-read under the write lock: another process may have migrated meanwhile.
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        let start = usize::try_from(version).unwrap_or(0);
        for sql in MIGRATIONS.iter().skip(start) {
            conn.execute_batch(sql).map_err(err)?;
        }
        conn.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
        ))
        .map_err(err)?;
        conn.execute_batch("COMMIT").map_err(err)
    })();
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}
