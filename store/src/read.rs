//! Queries: history of a path, who deleted it, filtered listing, gaps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use ctrwatch_event::{
    Dev, FileEvent, Gap, GapKind, Notes, Op, OpResult, OpenFlags, PathBytes, ProcessView,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use serde::Serialize;

use super::codec::{self, AtomKind, Glob};
use super::rows::{ADJ_SLACK_NS, json_err, proc_from_row, proc_hash};
use super::{Deletion, DeletionKind, Store, StoreError, ns, schema};

/// How a query path is matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PathMatch {
    /// As a host path and as a path inside an image/container (every snapshot).
    #[default]
    Auto,
    /// Only the exact host path.
    Host,
    /// Only inside snapshots: `/pause` is `…/snapshots/<id>/fs/pause` in every snapshot.
    Inner,
}

/// A path question (history, who-deleted).
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, Default)]
pub struct PathQuery {
    /// The path's bytes (a host path, or a path inside an image or container).
    pub path: Vec<u8>,
    pub matching: PathMatch,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    /// Newest first; None: all.
    pub limit: Option<usize>,
}

impl PathQuery {
    /// All events on `path` (host or inner form), no other filter.
    pub fn new(path: impl AsRef<[u8]>) -> PathQuery {
        PathQuery {
            path: path.as_ref().to_vec(),
            ..Default::default()
        }
    }
}

/// What who-deleted also reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeleteOptions {
    /// Truncations to zero (`truncate` to size 0, opens with O_TRUNC).
    pub truncations: bool,
    /// Attempts that failed (a failed unlink deleted nothing).
    pub failed: bool,
    /// Renames of a directory above the path and opaque markers set on one.
    pub ancestors: bool,
}

impl DeleteOptions {
    /// The default: renames of an ancestor and opaque markers, not truncations or failures.
    pub fn new() -> DeleteOptions {
        DeleteOptions {
            truncations: false,
            failed: false,
            ancestors: true,
        }
    }
}

/// A general query. String filters match exactly, or as a glob when they contain `*`, `?` or
/// `[` (SQLite GLOB: case-sensitive, `*` also matches `/`).
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Any of these ops (empty: all).
    pub ops: Vec<String>,
    /// Path glob ([`Glob`]: `*` within a component, `**` across), matched against the host
    /// path and, for files in snapshots, the path inside the image; also against `new_path`.
    pub path: Option<Vec<u8>>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub unit: Option<String>,
    /// Container id or a prefix of it.
    pub container: Option<String>,
    /// `ok` or an errno name.
    pub result: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    /// Newest first; None: all.
    pub limit: Option<usize>,
}

const EVENT_COLS: &str = "e.id, e.path, e.op, e.proc, e.result, e.adj, e.mono_d, e.errno, e.new_path, e.inode, e.dev, e.details, e.seg, e.checksum";

struct RawEvent {
    id: i64,
    path: i64,
    op: i64,
    proc_id: i64,
    result: i64,
    adj: i64,
    mono_d: i64,
    errno: Option<i32>,
    new_path: Option<i64>,
    inode: Option<i64>,
    dev: Option<i64>,
    details: Option<Vec<u8>>,
    seg: i64,
    checksum: Option<i64>,
}

impl RawEvent {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<RawEvent> {
        Ok(RawEvent {
            id: r.get(0)?,
            path: r.get(1)?,
            op: r.get(2)?,
            proc_id: r.get(3)?,
            result: r.get(4)?,
            adj: r.get(5)?,
            mono_d: r.get(6)?,
            errno: r.get(7)?,
            new_path: r.get(8)?,
            inode: r.get(9)?,
            dev: r.get(10)?,
            details: r.get(11)?,
            seg: r.get(12)?,
            checksum: r.get(13)?,
        })
    }
    fn time_ns(&self) -> i64 {
        self.id.wrapping_sub(self.adj)
    }
}

/// At most this many unreadable rows are described in an [`Unreadable`] (all are counted).
const UNREADABLE_EXAMPLES: usize = 10;

/// Rows a query could not read (damaged: undecodable, referring to missing or damaged rows,
/// or failing their checksum). They are skipped, not answered: counted, and the first few
/// described.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Unreadable {
    /// How many rows were skipped.
    pub count: u64,
    /// The first [`UNREADABLE_EXAMPLES`] of them.
    pub rows: Vec<UnreadableRow>,
}

/// One row a query skipped.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct UnreadableRow {
    /// `events`, `names` (a path a who-deleted answer needed) or `gaps`.
    pub table: &'static str,
    /// Its row id (for events, the time in ns since the epoch, made unique).
    pub id: i64,
    /// For events: the time its id says (the event's time give or take `adj`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// What is wrong with it.
    pub reason: String,
}

impl Unreadable {
    fn add(&mut self, table: &'static str, id: i64, reason: String) {
        self.count += 1;
        if self.rows.len() < UNREADABLE_EXAMPLES {
            self.rows.push(UnreadableRow {
                table,
                id,
                time: (table == "events").then(|| codec::format_time(id)),
                reason,
            });
        }
    }

    /// Adds the rows `other` skipped.
    fn merge(&mut self, other: Unreadable) {
        self.count += other.count;
        let room = UNREADABLE_EXAMPLES.saturating_sub(self.rows.len());
        self.rows.extend(other.rows.into_iter().take(room));
    }

    /// "3 unreadable rows skipped (events 2026-…: checksum mismatch; …)".
    pub fn summary(&self) -> String {
        let rows = if self.count == 1 { "row" } else { "rows" };
        let mut s = format!("{} unreadable {rows} skipped", self.count);
        if !self.rows.is_empty() {
            let first: Vec<String> = self
                .rows
                .iter()
                .map(|r| match &r.time {
                    Some(t) => format!("{} {} ({t}): {}", r.table, r.id, r.reason),
                    None => format!("{} {}: {}", r.table, r.id, r.reason),
                })
                .collect();
            let more = if self.count > self.rows.len() as u64 {
                ", ..."
            } else {
                ""
            };
            s.push_str(&format!(" ({}{more})", first.join("; ")));
        }
        s
    }
}

/// A query's answer: the rows it could read, and an account of those it could not.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug)]
pub struct Answer<T> {
    pub found: Vec<T>,
    pub unreadable: Unreadable,
}

impl<T> Default for Answer<T> {
    fn default() -> Self {
        Answer {
            found: Vec::new(),
            unreadable: Unreadable::default(),
        }
    }
}

impl<T> Answer<T> {
    /// The rows, or [`StoreError::Corrupt`] when any was unreadable.
    pub fn complete(self, path: &Path) -> Result<Vec<T>, StoreError> {
        if self.unreadable.count == 0 {
            Ok(self.found)
        } else {
            Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: self.unreadable.summary(),
            })
        }
    }
}

/// Why one row could not be turned into an answer.
enum RowFault {
    /// The row (or one it refers to) is damaged: skip it, count it.
    Unreadable(String),
    /// The store cannot be read at all right now (I/O error, locked...): the query fails.
    Fatal(StoreError),
}

/// A failure reading one row: a bad stored value or a damaged page (SQLITE_CORRUPT) is that
/// row's problem; anything else is the query's.
fn row_fault(path: &Path, e: rusqlite::Error) -> RowFault {
    if schema::is_bad_stored_value(&e)
        || e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseCorrupt)
    {
        RowFault::Unreadable(e.to_string())
    } else {
        RowFault::Fatal(schema::map_err(path, e))
    }
}

/// What a process row resolves to: (description, clock offset, `proc_hash` digest). The events
/// of one process row share its description.
type ProcEntry = (Arc<ProcessView>, i64, u64);

/// An event read from its row, with the path rows it names: what the path questions check
/// (the event itself does not carry the store's row ids).
pub(crate) struct Loaded {
    pub(crate) event: FileEvent,
    path_id: i64,
    new_path_id: Option<i64>,
}

/// Turns rows into events, looking up (and remembering) atoms, paths and processes, and
/// checking each event's checksum. A damaged dictionary row is remembered as such: every
/// event referring to it is unreadable.
struct Resolver<'a> {
    conn: &'a Connection,
    path: &'a Path,
    /// Atom id -> (text, digest).
    atoms: HashMap<i64, Result<(String, u64), String>>,
    /// Path id -> (bytes, digest).
    names: HashMap<i64, Result<(Vec<u8>, u128), String>>,
    procs: HashMap<i64, Result<ProcEntry, String>>,
    /// Rows with an id up to this were stored before checksums (schema v3) and may lack one;
    /// None: every row must have one.
    unsummed_max_id: Option<i64>,
    sum_buf: Vec<u8>,
    unreadable: Unreadable,
}

impl<'a> Resolver<'a> {
    fn new(store: &'a Store) -> Result<Resolver<'a>, StoreError> {
        let unsummed_max_id: Option<i64> = store
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'unsummed_max_id'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| store.err(e))?;
        Ok(Resolver {
            conn: &store.conn,
            path: &store.path,
            atoms: HashMap::new(),
            names: HashMap::new(),
            procs: HashMap::new(),
            unsummed_max_id,
            sum_buf: Vec::new(),
            unreadable: Unreadable::default(),
        })
    }

    fn fault(&self, e: rusqlite::Error) -> RowFault {
        row_fault(self.path, e)
    }

    /// Records a row that could not be read, or passes on a failure of the whole query.
    fn skip(&mut self, table: &'static str, id: i64, fault: RowFault) -> Result<(), StoreError> {
        match fault {
            RowFault::Unreadable(reason) => {
                self.unreadable.add(table, id, reason);
                Ok(())
            }
            RowFault::Fatal(e) => Err(e),
        }
    }

    /// Caches a dictionary row's lookup: a damaged row is remembered as such, a failure of
    /// the query is not cached.
    fn cached<T: Clone>(
        map: &mut HashMap<i64, Result<T, String>>,
        id: i64,
        look: impl FnOnce() -> Result<T, RowFault>,
    ) -> Result<T, RowFault> {
        if let Some(r) = map.get(&id) {
            return r.clone().map_err(RowFault::Unreadable);
        }
        match look() {
            Ok(v) => {
                map.insert(id, Ok(v.clone()));
                Ok(v)
            }
            Err(RowFault::Unreadable(why)) => {
                map.insert(id, Err(why.clone()));
                Err(RowFault::Unreadable(why))
            }
            Err(f) => Err(f),
        }
    }

    /// An atom's text and digest (looked up once per query).
    fn atom(&mut self, id: i64) -> Result<(String, u64), RowFault> {
        let (conn, path) = (self.conn, self.path);
        Resolver::cached(&mut self.atoms, id, || {
            let text: Option<String> = conn
                .prepare_cached("SELECT text FROM atoms WHERE id = ?1")
                .and_then(|mut s| s.query_row(params![id], |r| r.get(0)).optional())
                .map_err(|e| row_fault(path, e))?;
            match text {
                Some(t) => {
                    let d = codec::text_digest(&t);
                    Ok((t, d))
                }
                None => Err(RowFault::Unreadable(format!("refers to missing atom {id}"))),
            }
        })
    }

    /// A path's bytes and digest.
    fn name(&mut self, id: i64) -> Result<(Vec<u8>, u128), RowFault> {
        let (conn, path) = (self.conn, self.path);
        Resolver::cached(&mut self.names, id, || {
            let row: Option<(i64, Option<Vec<u8>>, Vec<u8>)> = conn
                .prepare_cached(
                    "SELECT n.dir, d.path, n.name FROM names n LEFT JOIN dirs d ON d.id = n.dir \
                     WHERE n.id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(|e| row_fault(path, e))?;
            let Some((dir_id, dir, name)) = row else {
                return Err(RowFault::Unreadable(format!("refers to missing path {id}")));
            };
            let bytes = if dir_id == 0 {
                codec::join_path(None, &name)
            } else {
                match dir {
                    Some(d) => codec::join_path(Some(&d), &name),
                    None => {
                        return Err(RowFault::Unreadable(format!(
                            "path {id} refers to missing directory {dir_id}"
                        )));
                    }
                }
            };
            let digest = codec::path_digest(&bytes);
            Ok((bytes, digest))
        })
    }

    fn process(&mut self, id: i64) -> Result<ProcEntry, RowFault> {
        let (conn, path) = (self.conn, self.path);
        Resolver::cached(&mut self.procs, id, || {
            let row = conn
                .prepare_cached(
                    "SELECT clock_off, pid, tid, ppid, comm, exe, cmdline, uid, gid, unit, \
                     container, cgroup_id, mnt_ns, ancestors FROM procs WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row(params![id], |r| Ok((proc_from_row(r, 1)?, r.get(0)?)))
                        .optional()
                })
                .map_err(|e| row_fault(path, e))?;
            match row {
                Some((view, clock_off)) => {
                    let digest = proc_hash(&view);
                    Ok((Arc::new(view), clock_off, digest))
                }
                None => Err(RowFault::Unreadable(format!(
                    "refers to missing process {id}"
                ))),
            }
        })
    }

    /// The event of a row, after checking it against its checksum.
    fn event(&mut self, raw: RawEvent) -> Result<Loaded, RowFault> {
        let time_ns = raw.time_ns();
        let (path, path_digest) = self.name(raw.path)?;
        let new_path = match raw.new_path {
            Some(id) => Some(self.name(id)?),
            None => None,
        };
        let (process, clock_off, proc_digest) = self.process(raw.proc_id)?;
        let (op, op_digest) = self.atom(raw.op)?;
        let (result, result_digest) = self.atom(raw.result)?;
        let dev = match raw.dev {
            Some(d) => Some(self.atom(d)?),
            None => None,
        };
        let raw_details: &[u8] = raw.details.as_deref().unwrap_or_default();
        let mut detail_atoms: Vec<u64> = Vec::new();
        let details = if raw_details.is_empty() {
            Default::default()
        } else {
            let mut fault = None;
            let d = codec::decode_details(raw_details, time_ns, &path, |id| match self.atom(id) {
                Ok((text, digest)) => {
                    detail_atoms.push(digest);
                    Some(text)
                }
                Err(f) => {
                    fault = Some(f);
                    None
                }
            });
            if let Some(f) = fault {
                return Err(f);
            }
            d.ok_or_else(|| RowFault::Unreadable("undecodable details".into()))?
        };
        match raw.checksum {
            Some(stored) => {
                let content = codec::RowContent {
                    path: path_digest,
                    new_path: new_path.as_ref().map(|p| p.1),
                    process: proc_digest,
                    clock_off,
                    op: op_digest,
                    result: result_digest,
                    dev: dev.as_ref().map(|d| d.1),
                    mono_d: raw.mono_d,
                    errno: raw.errno,
                    inode: raw.inode,
                    seg: raw.seg,
                    details: raw_details,
                    detail_atoms: &detail_atoms,
                };
                let digest = codec::content_digest(&content, &mut self.sum_buf);
                if codec::row_checksum(digest, raw.id, raw.adj) != stored {
                    return Err(RowFault::Unreadable(
                        "checksum mismatch: the row or a row it refers to (path, process, \
                         atom) was changed after it was written"
                            .into(),
                    ));
                }
            }
            // Stored before checksums existed: read as before, not verified.
            None if self.unsummed_max_id.is_some_and(|m| raw.id <= m) => {}
            None => return Err(RowFault::Unreadable("checksum missing".into())),
        }
        // The values are what was written: now their texts are read as the types they are.
        let op = Op::from_name(&op)
            .ok_or_else(|| RowFault::Unreadable(format!("op atom {op:?} is not an op")))?;
        let result = OpResult::from_name(&result)
            .filter(|r| r.errno() == raw.errno)
            .ok_or_else(|| {
                RowFault::Unreadable(format!(
                    "result atom {result:?} and errno {:?} disagree",
                    raw.errno
                ))
            })?;
        let dev = match dev {
            Some((text, _)) => Some(Dev::parse(&text).ok_or_else(|| {
                RowFault::Unreadable(format!("device atom {text:?} is not major:minor"))
            })?),
            None => None,
        };
        Ok(Loaded {
            event: FileEvent {
                time_ns,
                mono_ns: time_ns
                    .wrapping_sub(clock_off.wrapping_add(raw.mono_d))
                    .cast_unsigned(),
                op,
                path: PathBytes(path),
                new_path: new_path.map(|p| PathBytes(p.0)),
                result,
                inode: raw.inode.map(|i| i as u64),
                dev,
                process,
                details,
            },
            path_id: raw.path,
            new_path_id: raw.new_path,
        })
    }
}

/// Integers as an SQL list (they are ids: no quoting needed).
fn id_list(ids: &[i64]) -> String {
    let mut s = String::with_capacity(ids.len() * 8);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s
}

/// [since, until] in ns; the id range to scan is [since, until + slack] (ids exceed times by
/// `adj`, which is tiny).
fn window(since: Option<SystemTime>, until: Option<SystemTime>) -> (i64, i64, i64) {
    let since = since.map(ns).unwrap_or(i64::MIN);
    let until = until.map(ns).unwrap_or(i64::MAX);
    (since, until, until.saturating_add(ADJ_SLACK_NS))
}

impl Store {
    /// Opens an existing store for queries. Works while the daemon writes (WAL: the reader
    /// sees the last commit and does not block the writer), and where SQLite's usual way to
    /// read cannot work: full disk, read-only mount, no write access to `-shm` (see
    /// [`super::readonly`]). Never waits for the writer's lock.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        super::readonly::open(path.as_ref())
    }

    fn atom_ids(&self, kind: AtomKind) -> Result<HashMap<String, i64>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT text, id FROM atoms WHERE kind = ?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![kind as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn ids_of(&self, sql: &str, p: impl rusqlite::Params) -> Result<Vec<i64>, StoreError> {
        // Dynamic statements (id lists) are not worth keeping in the cache.
        if sql.contains(" IN (") {
            let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(p, |r| r.get::<_, i64>(0))
                .map_err(|e| self.err(e))?;
            return rows.collect::<Result<_, _>>().map_err(|e| self.err(e));
        }
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(p, |r| r.get::<_, i64>(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Path rows for an exact host path.
    fn host_ids(&self, path: &[u8]) -> Result<Vec<i64>, StoreError> {
        match codec::split_path(path) {
            (None, name) => self.ids_of(
                "SELECT id FROM names WHERE dir = 0 AND name = ?1",
                params![name],
            ),
            (Some(dir), name) => self.ids_of(
                "SELECT n.id FROM dirs d JOIN names n ON n.dir = d.id \
                 WHERE d.path = ?1 AND n.name = ?2",
                params![dir, name],
            ),
        }
    }

    /// Path rows of the file at `path` inside every snapshot.
    fn inner_ids(&self, path: &[u8]) -> Result<Vec<i64>, StoreError> {
        match codec::split_path(path) {
            (Some(dir), name) if path.starts_with(b"/") => self.ids_of(
                "SELECT n.id FROM dirs d JOIN names n ON n.dir = d.id \
                 WHERE d.inner = ?1 AND n.name = ?2",
                params![dir, name],
            ),
            _ => Ok(Vec::new()),
        }
    }

    fn resolve(&self, path: &[u8], matching: PathMatch) -> Result<Vec<i64>, StoreError> {
        let path = codec::normalize_query_path(path);
        let mut ids = Vec::new();
        if matching != PathMatch::Inner {
            ids.extend(self.host_ids(&path)?);
        }
        if matching != PathMatch::Host {
            ids.extend(self.inner_ids(&path)?);
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Segments that may hold ids in [lo, hi]: (seg, largest id), newest segment first.
    fn segments(&self, lo: i64, hi: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seg, hi FROM segments WHERE hi >= ?1 AND lo <= ?2 ORDER BY seg DESC",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![lo, hi], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The newest `per` ids of a stream read segment by segment (`read(seg)`), newest segment
    /// first. Stops once it has `per` ids all newer than anything a remaining segment can
    /// hold: a path's recent history costs one or two segments, however long the store.
    fn newest_over_segments(
        segs: &[(i64, i64)],
        per: i64,
        mut read: impl FnMut(i64) -> Result<Vec<i64>, StoreError>,
    ) -> Result<Vec<i64>, StoreError> {
        let per = usize::try_from(per).unwrap_or(usize::MAX);
        // rest[k]: the largest id the segments after k can hold (ids are times, and events
        // may arrive slightly out of order, so segment order alone does not bound them).
        let mut rest = vec![i64::MIN; segs.len()];
        for k in (0..segs.len().saturating_sub(1)).rev() {
            rest[k] = rest[k + 1].max(segs[k + 1].1);
        }
        let mut out: Vec<i64> = Vec::new();
        for (k, &(seg, _)) in segs.iter().enumerate() {
            out.extend(read(seg)?);
            if out.len() >= per {
                out.sort_unstable_by(|a, b| b.cmp(a));
                out.truncate(per);
                if out.last().is_some_and(|&last| last > rest[k]) {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Event ids with `path` in `names` and an op in `ops`, newest first, at most `limit`.
    /// Per segment: for one path, one index range per op, each at most `limit` long (a hot
    /// path costs no more than a cold one); for several paths (a file in many snapshots),
    /// one statement over all of them.
    fn ids_by_path(
        &self,
        names: &[i64],
        ops: &[i64],
        lo: i64,
        hi: i64,
        limit: i64,
    ) -> Result<Vec<i64>, StoreError> {
        if names.is_empty() || ops.is_empty() {
            return Ok(Vec::new());
        }
        let segs = self.segments(lo, hi)?;
        if names.len() == 1 {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT id FROM events WHERE seg = ?1 AND path = ?2 AND op = ?3 \
                     AND id BETWEEN ?4 AND ?5 ORDER BY id DESC LIMIT ?6",
                )
                .map_err(|e| self.err(e))?;
            return Store::newest_over_segments(&segs, limit, |seg| {
                let mut out = Vec::new();
                for &op in ops {
                    let rows = stmt
                        .query_map(params![seg, names[0], op, lo, hi, limit], |r| {
                            r.get::<_, i64>(0)
                        })
                        .map_err(|e| self.err(e))?;
                    for r in rows {
                        out.push(r.map_err(|e| self.err(e))?);
                    }
                }
                Ok(out)
            });
        }
        let sql = format!(
            "SELECT id FROM events WHERE seg = ?1 AND path IN ({}) AND op IN ({}) \
             AND id BETWEEN ?2 AND ?3 ORDER BY id DESC LIMIT ?4",
            id_list(names),
            id_list(ops)
        );
        self.ids_in_segments(&sql, &segs, lo, hi, limit)
    }

    fn ids_by_new_path(
        &self,
        names: &[i64],
        lo: i64,
        hi: i64,
        limit: i64,
    ) -> Result<Vec<i64>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let segs = self.segments(lo, hi)?;
        let sql = format!(
            "SELECT id FROM events WHERE seg = ?1 AND new_path IN ({}) \
             AND id BETWEEN ?2 AND ?3 ORDER BY id DESC LIMIT ?4",
            id_list(names)
        );
        self.ids_in_segments(&sql, &segs, lo, hi, limit)
    }

    /// Runs `sql` (parameters: segment, lowest id, highest id, limit; one id column) in each
    /// of `segs`, newest first, until `limit` ids are certain.
    fn ids_in_segments(
        &self,
        sql: &str,
        segs: &[(i64, i64)],
        lo: i64,
        hi: i64,
        limit: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        Store::newest_over_segments(segs, limit, |seg| {
            let rows = stmt
                .query_map(params![seg, lo, hi, limit], |r| r.get::<_, i64>(0))
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
        })
    }

    /// The event with row id `id`. None when it is gone (pruned meanwhile) or unreadable (then
    /// counted in `res`).
    fn load(&self, res: &mut Resolver<'_>, id: i64) -> Result<Option<Loaded>, StoreError> {
        let raw = self
            .conn
            .prepare_cached(&format!(
                "SELECT {EVENT_COLS} FROM events e WHERE e.id = ?1"
            ))
            .and_then(|mut s| s.query_row(params![id], RawEvent::from_row).optional());
        let fault = match raw {
            Ok(None) => return Ok(None),
            Ok(Some(raw)) => match res.event(raw) {
                Ok(ev) => return Ok(Some(ev)),
                Err(f) => f,
            },
            Err(e) => res.fault(e),
        };
        res.skip("events", id, fault)?;
        Ok(None)
    }

    /// Loads events by id, newest first, keeping those in [since, until] that `keep` makes an
    /// answer of, up to `limit`; unreadable ones are skipped and counted.
    fn load_ids<T>(
        &self,
        mut ids: Vec<i64>,
        since: i64,
        until: i64,
        limit: Option<usize>,
        mut keep: impl FnMut(Loaded) -> Option<T>,
    ) -> Result<Answer<T>, StoreError> {
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        let mut res = Resolver::new(self)?;
        let mut out = Vec::new();
        for id in ids {
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            let Some(loaded) = self.load(&mut res, id)? else {
                continue; // pruned meanwhile, or unreadable
            };
            let t = loaded.event.time_ns;
            if t < since || t > until {
                continue;
            }
            if let Some(answer) = keep(loaded) {
                out.push(answer);
            }
        }
        Ok(Answer {
            found: out,
            unreadable: res.unreadable,
        })
    }

    /// Gathers candidate ids with `gather(per)` (at most `per` per stream, newest first) and
    /// loads them. Ids beyond `limit` are gathered in case some are rejected (outside the
    /// window exactly, unreadable, not a deletion); when so many were rejected that the answer
    /// came out short, gathers again with more per stream, until the answer is full or no more
    /// ids come.
    fn gather_and_load<T>(
        &self,
        limit: Option<usize>,
        mut gather: impl FnMut(i64) -> Result<Vec<i64>, StoreError>,
        mut load: impl FnMut(Vec<i64>) -> Result<Answer<T>, StoreError>,
    ) -> Result<Answer<T>, StoreError> {
        let mut per = limit.map_or(i64::MAX, |l| limit_i64(l).saturating_add(64));
        let mut gathered = None;
        loop {
            let ids = gather(per)?;
            let n = ids.len();
            let answer = load(ids)?;
            let full = limit.is_none_or(|l| answer.found.len() >= l);
            if full || per == i64::MAX || gathered == Some(n) {
                return Ok(answer);
            }
            gathered = Some(n);
            per = per.saturating_mul(4);
        }
    }

    /// Every recorded operation on the file at `q.path`, newest first: operations on the path
    /// itself and renames/links onto it. With [`PathMatch::Auto`] (the default) a path inside
    /// an image or container (`/pause`) also matches that file in every snapshot.
    /// [`StoreError::Corrupt`] if any of them cannot be read (see [`Store::history_partial`]).
    pub fn history(&self, q: &PathQuery) -> Result<Vec<FileEvent>, StoreError> {
        self.history_partial(q)?.complete(&self.path)
    }

    /// [`Store::history`], answering the events it can read and counting those it cannot
    /// (damaged rows) in [`Answer::unreadable`].
    pub fn history_partial(&self, q: &PathQuery) -> Result<Answer<FileEvent>, StoreError> {
        let names = self.resolve(&q.path, q.matching)?;
        if names.is_empty() || q.limit == Some(0) {
            return Ok(Answer::default());
        }
        let (since, until, hi) = window(q.since, q.until);
        let ops: Vec<i64> = self.atom_ids(AtomKind::Op)?.into_values().collect();
        let name_set: HashSet<i64> = names.iter().copied().collect();
        self.gather_and_load(
            q.limit,
            |per| {
                let mut ids = self.ids_by_path(&names, &ops, since, hi, per)?;
                ids.extend(self.ids_by_new_path(&names, since, hi, per)?);
                Ok(ids)
            },
            |ids| {
                self.load_ids(ids, since, until, q.limit, |ev| {
                    (ev.path_is(&name_set) || ev.new_path_is(&name_set)).then_some(ev.event)
                })
            },
        )
    }

    /// The operations that removed the file at `q.path` (newest first), each with
    /// [`Deletion::deletion`] saying how: unlink, rmdir, rename away from it, a rename onto it (replaced
    /// it, if it existed), an overlay whiteout at it; with `opts.ancestors`, renames of a
    /// directory above it and opaque markers set on one; with `opts.truncations`, truncations
    /// to zero. Failed attempts only with `opts.failed`. [`StoreError::Corrupt`] if any row
    /// cannot be read (see [`Store::who_deleted_partial`]).
    pub fn who_deleted(
        &self,
        q: &PathQuery,
        opts: DeleteOptions,
    ) -> Result<Vec<Deletion>, StoreError> {
        self.who_deleted_partial(q, opts)?.complete(&self.path)
    }

    /// [`Store::who_deleted`], answering the events it can read and counting those it cannot
    /// (damaged rows) in [`Answer::unreadable`].
    pub fn who_deleted_partial(
        &self,
        q: &PathQuery,
        opts: DeleteOptions,
    ) -> Result<Answer<Deletion>, StoreError> {
        if q.limit == Some(0) {
            return Ok(Answer::default());
        }
        let path = codec::normalize_query_path(&q.path);
        let names = self.resolve(&path, q.matching)?;
        let (since, until, hi) = window(q.since, q.until);
        let op_ids = self.atom_ids(AtomKind::Op)?;
        let op = |name: &str| op_ids.get(name).copied();
        let ops_of = |names: &[&str]| -> Vec<i64> { names.iter().filter_map(|n| op(n)).collect() };
        let mut deleting = vec!["unlink", "rmdir", "rename", "mknod"];
        if opts.truncations {
            deleting.push("truncate");
        }
        let deleting = ops_of(&deleting);
        let ancestor_ops = ops_of(&["rename", "setxattr"]);

        // Directories above the path: host ancestors of the query path and of every matched
        // file, and (for a path inside images) the same directory in every snapshot.
        let mut ancestor_names: HashSet<i64> = HashSet::new();
        let mut unreadable_names = Unreadable::default();
        if opts.ancestors {
            let mut dirs: Vec<Vec<u8>> = Vec::new();
            if q.matching != PathMatch::Inner {
                dirs.extend(codec::ancestors(&path).into_iter().map(<[u8]>::to_vec));
            }
            // For files in snapshots, the directories inside the snapshot are covered below
            // (one lookup for every snapshot at once); only those above it are listed here.
            let mut res = Resolver::new(self)?;
            for &n in names.iter().take(1024) {
                let host = match res.name(n) {
                    Ok((host, _)) => host,
                    Err(f) => {
                        res.skip("names", n, f)?;
                        continue;
                    }
                };
                let depth_inside =
                    codec::inner_path(&host).map_or(0, |i| codec::ancestors(&i).len());
                let skip = if q.matching == PathMatch::Host {
                    0
                } else {
                    depth_inside
                };
                dirs.extend(
                    codec::ancestors(&host)
                        .into_iter()
                        .skip(skip)
                        .map(<[u8]>::to_vec),
                );
            }
            unreadable_names = res.unreadable;
            dirs.sort();
            dirs.dedup();
            for d in &dirs {
                ancestor_names.extend(self.host_ids(d)?);
            }
            if q.matching != PathMatch::Host {
                for d in codec::ancestors(&path) {
                    ancestor_names.extend(self.inner_ids(d)?);
                }
            }
        }
        let anc: Vec<i64> = ancestor_names.iter().copied().collect();

        let name_set: HashSet<i64> = names.iter().copied().collect();
        let mut answer = self.gather_and_load(
            q.limit,
            |per| {
                let mut ids = self.ids_by_path(&names, &deleting, since, hi, per)?;
                ids.extend(self.ids_by_new_path(&names, since, hi, per)?);
                if opts.ancestors {
                    ids.extend(self.ids_by_path(&anc, &ancestor_ops, since, hi, per)?);
                }
                Ok(ids)
            },
            |ids| {
                self.load_ids(ids, since, until, q.limit, |ev| {
                    let deletion = deletion_kind(&ev, opts, &name_set, &ancestor_names)?;
                    Some(Deletion {
                        event: ev.event,
                        deletion,
                    })
                })
            },
        )?;
        answer.unreadable.merge(unreadable_names);
        Ok(answer)
    }

    /// Events matching every given filter, newest first. [`StoreError::Corrupt`] if any of
    /// them cannot be read (see [`Store::query_partial`]).
    pub fn query(&self, f: &Filter) -> Result<Vec<FileEvent>, StoreError> {
        self.query_partial(f)?.complete(&self.path)
    }

    /// [`Store::query`], answering the events it can read and counting those it cannot
    /// (damaged rows) in [`Answer::unreadable`].
    pub fn query_partial(&self, f: &Filter) -> Result<Answer<FileEvent>, StoreError> {
        // Checked before anything else, so a bad pattern is always reported as such.
        for (flag, v) in [("comm", &f.comm), ("exe", &f.exe), ("unit", &f.unit)] {
            if let Some(v) = v {
                codec::check_sql_glob(v)
                    .map_err(|e| StoreError::InvalidQuery(format!("{flag}: {e}")))?;
            }
        }
        let path_glob = match &f.path {
            Some(p) => Some(Glob::new(p).map_err(StoreError::InvalidQuery)?),
            None => None,
        };
        if f.limit == Some(0) {
            return Ok(Answer::default());
        }
        let (since, until, hi) = window(f.since, f.until);
        let mut sql = format!("SELECT {EVENT_COLS} FROM events e WHERE e.id BETWEEN ?1 AND ?2");
        let mut args: Vec<Value> = vec![Value::Integer(since), Value::Integer(hi)];
        let arg = |v: Value, args: &mut Vec<Value>| -> String {
            args.push(v);
            format!("?{}", args.len())
        };
        if !f.ops.is_empty() {
            let ids = self.atom_ids(AtomKind::Op)?;
            let wanted: Vec<String> = f
                .ops
                .iter()
                .filter_map(|o| ids.get(o.as_str()))
                .map(|id| id.to_string())
                .collect();
            if wanted.is_empty() {
                return Ok(Answer::default());
            }
            sql.push_str(&format!(" AND e.op IN ({})", wanted.join(",")));
        }
        if let Some(r) = &f.result {
            let ids = self.atom_ids(AtomKind::Result)?;
            let Some(id) = ids.get(r.as_str()) else {
                return Ok(Answer::default());
            };
            sql.push_str(&format!(" AND e.result = {id}"));
        }
        let mut cte = String::new();
        let mut proc_conds = Vec::new();
        if let Some(pid) = f.pid {
            let a = arg(Value::Integer(pid as i64), &mut args);
            proc_conds.push(format!("pid = {a}"));
        }
        for (col, v) in [("comm", &f.comm), ("exe", &f.exe), ("unit", &f.unit)] {
            if let Some(v) = v {
                let is_glob = v.contains(['*', '?', '[']);
                let a = arg(Value::Text(v.clone()), &mut args);
                proc_conds.push(if is_glob {
                    format!("{col} GLOB {a}")
                } else {
                    format!("{col} = {a}")
                });
            }
        }
        if let Some(c) = &f.container {
            let a = arg(Value::Text(c.clone()), &mut args);
            proc_conds.push(format!("substr(container, 1, length({a})) = {a}"));
        }
        if !proc_conds.is_empty() {
            sql.push_str(&format!(
                " AND e.proc IN (SELECT id FROM procs WHERE {})",
                proc_conds.join(" AND ")
            ));
        }
        // A literal path asks for that file: events whose matching path is truncated are not
        // about it (checked per event below).
        let mut literal: Option<HashSet<i64>> = None;
        if let (Some(p), Some(glob)) = (&f.path, &path_glob) {
            if glob.is_literal() {
                let ids = self.resolve(p, PathMatch::Auto)?;
                literal = Some(ids.iter().copied().collect());
                let list = ids
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                // `seg IN segments`: lets each side use its (seg, path) index.
                sql.push_str(&format!(
                    " AND ((e.seg IN (SELECT seg FROM segments) AND e.path IN ({list})) \
                     OR (e.seg IN (SELECT seg FROM segments) AND e.new_path IN ({list})))"
                ));
            } else {
                // Evaluated once per distinct path (not per event), into a materialized set.
                let a = arg(Value::Blob(p.clone()), &mut args);
                cte = format!(
                    "WITH m(id) AS MATERIALIZED (SELECT n.id FROM names n \
                     LEFT JOIN dirs d ON d.id = n.dir \
                     WHERE ctrwatch_glob({a}, n.dir, d.path, n.name, d.inner)) "
                );
                sql.push_str(
                    " AND (e.path IN (SELECT id FROM m) OR e.new_path IN (SELECT id FROM m))",
                );
            }
        }
        sql.push_str(" ORDER BY e.id DESC");
        let sql = cte + &sql;
        // A few more rows than asked: some may fall outside [since, until] exactly, or be
        // unreadable. If so many were that the answer came out short, ask again for more.
        let mut sql_limit = f.limit.map(|l| limit_i64(l).saturating_add(64));
        loop {
            let full_sql = match sql_limit {
                Some(l) => format!("{sql} LIMIT {l}"),
                None => sql.clone(),
            };
            let mut stmt = self.conn.prepare(&full_sql).map_err(|e| self.err(e))?;
            let mut rows = stmt
                .query(params_from_iter(args.iter()))
                .map_err(|e| self.err(e))?;
            let mut res = Resolver::new(self)?;
            let mut out = Vec::new();
            let mut returned: i64 = 0;
            while let Some(row) = rows.next().map_err(|e| self.err(e))? {
                returned += 1;
                let id: i64 = row.get(0).unwrap_or_default();
                let raw = match RawEvent::from_row(row) {
                    Ok(raw) => raw,
                    Err(e) => {
                        let fault = res.fault(e);
                        res.skip("events", id, fault)?;
                        continue;
                    }
                };
                let t = raw.time_ns();
                if t < since || t > until {
                    continue;
                }
                match res.event(raw) {
                    Ok(ev)
                        if literal
                            .as_ref()
                            .is_some_and(|names| !ev.path_is(names) && !ev.new_path_is(names)) => {}
                    Ok(ev) => out.push(ev.event),
                    Err(fault) => res.skip("events", id, fault)?,
                }
                if f.limit.is_some_and(|l| out.len() >= l) {
                    break;
                }
            }
            let answer = Answer {
                found: out,
                unreadable: res.unreadable,
            };
            match sql_limit {
                Some(l)
                    if returned >= l
                        && l < i64::MAX
                        && f.limit.is_some_and(|want| answer.found.len() < want) =>
                {
                    sql_limit = Some(l.saturating_mul(4));
                }
                _ => return Ok(answer),
            }
        }
    }

    /// Windows the history does not cover that overlap [since, until], oldest first: kernel
    /// loss, daemon downtime, records the store could not write, pruned history.
    /// [`StoreError::Corrupt`] if any of them cannot be read (see [`Store::gaps_partial`]).
    pub fn gaps(
        &self,
        since: Option<SystemTime>,
        until: Option<SystemTime>,
    ) -> Result<Vec<Gap>, StoreError> {
        self.gaps_partial(since, until)?.complete(&self.path)
    }

    /// [`Store::gaps`], answering the gaps it can read and counting those it cannot (damaged
    /// rows) in [`Answer::unreadable`].
    pub fn gaps_partial(
        &self,
        since: Option<SystemTime>,
        until: Option<SystemTime>,
    ) -> Result<Answer<Gap>, StoreError> {
        let (since, until, _) = window(since, until);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT kind, from_ns, to_ns, lost, kinds, reason, recorded_ns, id FROM gaps \
                 WHERE to_ns >= ?1 AND from_ns <= ?2 ORDER BY from_ns, id",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query(params![since, until]).map_err(|e| self.err(e))?;
        let mut answer = Answer::default();
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let id: i64 = r.get(7).unwrap_or_default();
            match gap_from_row(r) {
                Ok(g) => answer.found.push(g),
                Err(e) => match row_fault(&self.path, e) {
                    RowFault::Unreadable(why) => answer.unreadable.add("gaps", id, why),
                    RowFault::Fatal(e) => return Err(e),
                },
            }
        }
        Ok(answer)
    }
}

fn gap_from_row(r: &Row<'_>) -> rusqlite::Result<Gap> {
    let kinds: Option<String> = r.get(4)?;
    let kinds: BTreeMap<String, u64> = match kinds {
        Some(k) => serde_json::from_str(&k).map_err(|e| json_err(4, e))?,
        None => BTreeMap::new(),
    };
    let kind: String = r.get(0)?;
    let kind = GapKind::from_name(&kind).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("{kind:?} is not a gap kind").into(),
        )
    })?;
    Ok(Gap {
        kind,
        from_ns: r.get(1)?,
        to_ns: r.get(2)?,
        lost: r.get::<_, Option<i64>>(3)?.map(|l| l.max(0) as u64),
        kinds,
        reason: r.get(5)?,
        recorded_ns: r.get(6)?,
    })
}

/// A limit as SQLite takes it: larger than any table can be is the same as none.
fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// How `ev` removed a file of `names` (or None: it did not).
fn deletion_kind(
    ev: &Loaded,
    opts: DeleteOptions,
    names: &HashSet<i64>,
    ancestor_names: &HashSet<i64>,
) -> Option<DeletionKind> {
    let e = &ev.event;
    let d = &e.details;
    if !opts.failed && !e.result.is_ok() {
        return None;
    }
    // Protect's record is a verdict, not a change: a would-deny unlink's deletion is the
    // syscall's own record.
    if d.protect.is_some() {
        return None;
    }
    let on_path = ev.path_is(names);
    let onto = ev.new_path_is(names);
    match e.op {
        Op::Unlink if on_path => Some(DeletionKind::Unlink),
        Op::Rmdir if on_path => Some(DeletionKind::Rmdir),
        Op::Rename if on_path => Some(DeletionKind::RenameAway),
        Op::Rename if onto && d.overwritten.is_some() => Some(DeletionKind::Replaced),
        Op::Rename if onto => Some(DeletionKind::RenameOnto),
        Op::Mknod if on_path && d.whiteout == Some(true) => Some(DeletionKind::Whiteout),
        Op::Truncate
            if on_path && (d.size == Some(0) || d.open_flags.contains(OpenFlags::TRUNCATE)) =>
        {
            Some(DeletionKind::TruncateToZero)
        }
        Op::Rename if ev.path_is(ancestor_names) => Some(DeletionKind::AncestorRenamed),
        Op::Setxattr
            if ev.path_is(ancestor_names)
                && d.xattr.as_ref().is_some_and(|x| {
                    x.name.ends_with(b"overlay.opaque")
                        && matches!(x.value_text().as_deref(), Some("y") | Some("x"))
                }) =>
        {
            Some(DeletionKind::AncestorOpaque)
        }
        // A link or symlink onto the path does not delete it (it fails if the path exists).
        _ => None,
    }
}

impl Loaded {
    /// Is the event's path one of `names`? A path the kernel could not build completely
    /// (note `path_truncated`: a prefix, `…`, a name) is not the file's path whatever its text,
    /// so it never answers a question about an exact path; globs still find it.
    fn path_is(&self, names: &HashSet<i64>) -> bool {
        names.contains(&self.path_id) && !self.event.details.notes.contains(Notes::PATH_TRUNCATED)
    }

    /// The same for the new path of a rename or link.
    fn new_path_is(&self, names: &HashSet<i64>) -> bool {
        self.new_path_id.is_some_and(|id| names.contains(&id))
            && !self.event.details.notes.contains(Notes::NEW_PATH_TRUNCATED)
    }
}
