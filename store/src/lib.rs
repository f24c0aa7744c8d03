//! The event history store: every enriched event, every loss record and the daemon's own
//! start/stop records, in an embedded SQLite database on local disk, with the queries an
//! investigator needs (history of a path, who deleted it, filters, gaps).
//!
//! One writer (the daemon's writer thread) and any number of readers (CLI invocations, in other
//! processes) at the same time: the database runs in WAL mode, so readers see the last
//! committed state and never block the writer. See docs/store.md for the design and figures.
//!
//! Writer: [`Store::open`], [`Store::begin_run`], then [`Store::append_event`] /
//! [`Store::append_loss`] for every record and [`Store::flush`] regularly (events are
//! acknowledged — durable across a crash of the daemon — once `flush` returns Ok),
//! [`Store::heartbeat`] every few seconds, [`Store::prune`] every minute or so, and
//! [`Store::end_run`] at a clean stop.
//!
//! Reader: [`Store::open_read_only`], then [`Store::history`], [`Store::who_deleted`],
//! [`Store::query`], [`Store::gaps`], [`Store::stats`].
//!
//! The daemon writes through [`DaemonStore`], which opens the store whatever state it is in: a
//! corrupt one is moved aside and a new one started, a full disk only delays storing.
//!
//! Access: the store is root's (0700/0600), or root's and a readers' group's (0750/0640); one
//! writer per database, whatever name reaches it (see [`access`]).

mod access;
mod codec;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod outbox;
mod read;
mod readonly;
mod render;
mod rows;
mod schema;
mod start;
mod status;
mod write;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ctrwatch_event::FileEvent;
use rusqlite::Connection;
use serde::Serialize;

pub use access::{DEFAULT_LOCK_WAIT, LOCK_DIR, StoreGroup, WriterLock, holds_lock_on, writer_lock};
pub use codec::{Glob, inner_path};
pub use read::{Answer, DeleteOptions, Filter, PathMatch, PathQuery, Unreadable, UnreadableRow};
pub use render::{render_deletions, render_gaps, render_table};
pub use schema::SCHEMA_VERSION;
pub use start::{DaemonStore, STORE_RETRY};
pub use status::{AlertDelivery, DAEMON_STATUS_KEY, RecentAlert, RunRecord, StoreFacts};

/// The `meta` row holding the last committed [`RingMark`].
pub const RING_MARK_KEY: &str = "ring_committed";

/// How far the daemon's reading of the kernel's ring buffer was committed: the events of
/// every record ending at or before `through` (a position of the ring buffer named `ring`,
/// which counts bytes forever) are in the store, committed in the same transaction as this
/// mark. A daemon that adopts the same ring buffer after a crash reads those records again
/// (the published consumer position may lag the mark) and must not store their events twice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingMark {
    /// Which ring buffer: its map's id in this boot (`BOOT_ID/MAP_ID`); positions of another
    /// ring buffer mean nothing.
    pub ring: String,
    /// The end of the last record whose events are committed.
    pub through: u64,
}

impl RingMark {
    fn text(ring: &str, through: u64) -> String {
        format!("{ring} {through}")
    }

    fn parse(text: &str) -> Option<RingMark> {
        let (ring, through) = text.rsplit_once(' ')?;
        Some(RingMark {
            ring: ring.to_owned(),
            through: through.parse().ok()?,
        })
    }
}

/// Where the daemon keeps its store unless told otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/ctrwatch";
/// The database file's name inside [`DEFAULT_DIR`].
pub const DEFAULT_FILE: &str = "events.db";

/// `/var/lib/ctrwatch/events.db`.
pub fn default_path() -> PathBuf {
    Path::new(DEFAULT_DIR).join(DEFAULT_FILE)
}

/// The writer commits when this many events are waiting in the open transaction (or every
/// second, whichever comes first: the daemon's writer thread); the store benchmark commits
/// at the same batch.
pub const COMMIT_BATCH: usize = 100_000;

/// Default retention by age: 30 days.
pub const DEFAULT_RETENTION_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default retention by size: 256 MiB of database (about 2.5 million events, see
/// docs/store.md), small enough for an edge node's disk.
pub const DEFAULT_RETENTION_BYTES: u64 = 256 * 1024 * 1024;

/// Why a store could not be opened or used. Each variant is a distinct condition the CLI can
/// map to its own exit code.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No database file at the path (readers only; the writer creates it).
    #[error("no event store at {path} (is the ctrwatch daemon running with this --store?)")]
    Missing { path: PathBuf },
    /// Another process holds the store: a second writer, or a lock that outlasted the busy
    /// timeout.
    #[error("event store {path} is locked: {detail}")]
    Locked { path: PathBuf, detail: String },
    /// Not a SQLite database, not a ctrwatch store, or damaged.
    #[error("event store {path} is corrupt or not a ctrwatch store: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    /// Written by a newer ctrwatch (schema version `found` > `supported`).
    #[error(
        "event store {path} has schema version {found}, this ctrwatch reads up to {supported}: upgrade ctrwatch"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// Older schema than this build reads; the daemon (the writer) migrates it when it starts.
    #[error(
        "event store {path} has schema version {found}, this ctrwatch reads {supported}: start the daemon once to migrate it"
    )]
    OlderSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// The filesystem is full. From the writer this is not fatal: the store keeps counting
    /// what it could not write and records it as a `store_full` gap once space returns.
    #[error("event store {path}: disk full")]
    Full { path: PathBuf },
    /// A write on a store opened with [`Store::open_read_only`].
    #[error("event store {path} is open read-only")]
    ReadOnly { path: PathBuf },
    /// This user may not read the store: it is root's, and its readers' group's if the daemon
    /// was given one.
    #[error(
        "permission denied: the event store {path} can be read only by root and the members of \
         the group given to `ctrwatch run --store-group`"
    )]
    PermissionDenied { path: PathBuf },
    /// The store's directory or files could be replaced by another user (owned by them,
    /// writable by others), or are not regular files: the writer refuses them.
    #[error("event store {path}: {detail}")]
    Unsafe { path: PathBuf, detail: String },
    /// A query that cannot be run (bad glob, ...).
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// An I/O error on the store's files.
    #[error("event store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed on the database.
    #[error("event store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

/// Events per time segment by default (see [`StoreOptions::segment_events`]).
pub const DEFAULT_SEGMENT_EVENTS: u64 = 500_000;

/// Writer settings.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Events older than this are pruned. None: no limit by age.
    pub retention_age: Option<Duration>,
    /// When the database holds more than this many bytes, the oldest events are pruned until
    /// it holds 90 % of it. None: no limit by size.
    pub retention_bytes: Option<u64>,
    /// An open batch is committed by `append_event` itself once it holds this many events
    /// (bounds memory and the WAL between two `flush` calls).
    pub max_batch: usize,
    /// At most this many events are removed by one `prune` call (it reports `more` when it
    /// stopped early), so one call never stalls the writer for long.
    pub prune_chunk: u64,
    /// A new time segment starts after this many events (see docs/store.md: the newest
    /// segment's index pages are the writer's working set; queries visit each segment).
    pub segment_events: u64,
    /// Members of this group may read the store (directory 0750, files 0640); None: root
    /// only (0700, 0600).
    pub group: Option<StoreGroup>,
    /// How long the writer waits for another writer's lock before [`StoreError::Locked`].
    pub lock_wait: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            retention_age: Some(DEFAULT_RETENTION_AGE),
            retention_bytes: Some(DEFAULT_RETENTION_BYTES),
            max_batch: 100_000,
            prune_chunk: 250_000,
            segment_events: DEFAULT_SEGMENT_EVENTS,
            group: None,
            lock_wait: DEFAULT_LOCK_WAIT,
        }
    }
}

/// How a who-deleted answer's event removed the file (`deletion` in JSON; the names are an
/// interface).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletionKind {
    /// Unlinked.
    Unlink,
    /// A directory removed.
    Rmdir,
    /// Renamed away from the path.
    RenameAway,
    /// Another file renamed onto the path deleted it (the kernel saw its last link go).
    Replaced,
    /// Another file renamed onto the path, where whether it replaced one could not be seen:
    /// it replaced the file if there was one.
    RenameOnto,
    /// An overlay whiteout made at the path.
    Whiteout,
    /// A directory above it renamed away.
    AncestorRenamed,
    /// A directory above it made opaque in an overlay layer.
    AncestorOpaque,
    /// Truncated to zero (only when asked for).
    TruncateToZero,
}

impl DeletionKind {
    /// The name in JSON and in the table's `OP` column.
    pub const fn name(self) -> &'static str {
        match self {
            DeletionKind::Unlink => "unlink",
            DeletionKind::Rmdir => "rmdir",
            DeletionKind::RenameAway => "rename_away",
            DeletionKind::Replaced => "replaced",
            DeletionKind::RenameOnto => "rename_onto",
            DeletionKind::Whiteout => "whiteout",
            DeletionKind::AncestorRenamed => "ancestor_renamed",
            DeletionKind::AncestorOpaque => "ancestor_opaque",
            DeletionKind::TruncateToZero => "truncate_to_zero",
        }
    }
}

impl std::fmt::Display for DeletionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A who-deleted answer: the event and how it removed the file. Serializes as the event's own
/// JSON object with `deletion` added after its fields.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Deletion {
    #[serde(flatten)]
    pub event: FileEvent,
    pub deletion: DeletionKind,
}

/// What one [`Store::prune`] call removed.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PruneReport {
    pub removed: u64,
    pub removed_by_age: u64,
    pub removed_by_size: u64,
    /// Time window of the removed events.
    pub from: String,
    pub to: String,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Stopped at `prune_chunk`: call again.
    pub more: bool,
}

/// Size and extent of a store.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StoreStats {
    pub path: String,
    pub schema_version: i64,
    pub events: u64,
    pub distinct_paths: u64,
    pub distinct_processes: u64,
    pub gaps: u64,
    /// Database file bytes (in use: without free pages).
    pub used_bytes: u64,
    pub file_bytes: u64,
    pub wal_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest: Option<String>,
}

/// An open store: the writer (from [`Store::open`]) or a reader (from
/// [`Store::open_read_only`]). Readers' methods work on both.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    writer: Option<Box<write::Writer>>,
    /// Held for the writer's lifetime: one writer per database (see [`access::StoreLock`]).
    /// Shared with [`DaemonStore`], which keeps it while the store cannot be opened.
    _lock: Option<Arc<access::StoreLock>>,
    /// A reader on a private copy of the store (see [`readonly`]): removed when dropped,
    /// after the connection is closed.
    _copy: Option<readonly::PrivateCopy>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("writer", &self.writer.is_some())
            .finish()
    }
}

impl Store {
    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this handle can write.
    pub fn is_writer(&self) -> bool {
        self.writer.is_some()
    }

    pub(crate) fn err(&self, e: rusqlite::Error) -> StoreError {
        schema::map_err(&self.path, e)
    }

    /// Size and extent of the store.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let q = |sql: &str| -> Result<i64, StoreError> {
            self.conn
                .query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
                .map(|v| v.unwrap_or(0))
                .map_err(|e| self.err(e))
        };
        let page_size = q("PRAGMA page_size")?.max(0) as u64;
        let pages = q("PRAGMA page_count")?.max(0) as u64;
        let free = q("PRAGMA freelist_count")?.max(0) as u64;
        let oldest: Option<i64> = self
            .conn
            .query_row("SELECT id - adj FROM events ORDER BY id LIMIT 1", [], |r| {
                r.get(0)
            })
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(self.err(e)),
            })?;
        let newest: Option<i64> = self
            .conn
            .query_row(
                "SELECT id - adj FROM events ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(self.err(e)),
            })?;
        Ok(StoreStats {
            path: self.path.display().to_string(),
            schema_version: q("PRAGMA user_version")?,
            events: q("SELECT value FROM meta WHERE key = 'events'")?.max(0) as u64,
            distinct_paths: q("SELECT count(*) FROM names")?.max(0) as u64,
            distinct_processes: q("SELECT count(*) FROM procs")?.max(0) as u64,
            gaps: q("SELECT count(*) FROM gaps")?.max(0) as u64,
            used_bytes: pages.saturating_sub(free) * page_size,
            file_bytes: pages * page_size,
            wal_bytes: wal_size(&self.path),
            oldest: oldest.map(codec::format_time),
            newest: newest.map(codec::format_time),
        })
    }

    /// `PRAGMA integrity_check`: `["ok"]` for a sound database, else the problems found.
    pub fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA integrity_check")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

pub(crate) fn wal_size(path: &Path) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}

/// `SystemTime` to ns since the epoch (saturating).
pub fn system_time_ns(t: SystemTime) -> i64 {
    ns(t)
}

/// `SystemTime` to ns since the epoch (saturating).
pub(crate) fn ns(t: SystemTime) -> i64 {
    codec::system_time_ns(t)
}
