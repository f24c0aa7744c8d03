//! The writer: batched inserts with in-memory id caches, runs and heartbeats, loss and gap
//! records, retention, and surviving a full disk.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

// The writer's maps hash with foldhash: their keys are the writer's own (hashes, ids, short
// strings), and std's SipHash showed in profiles.
use foldhash::{HashMap, HashMapExt};
use rusqlite::{Connection, OptionalExtension, params};

use ctrwatch_event::{
    ContainerdView, Dev, FileEvent, Gap, GapKind, LossEvent, OpResult, ProcessView,
};

use super::access::{self, StoreLock};
use super::codec::{self, AtomKind};
use super::rows::{now_ns, proc_from_row, proc_hash, register_functions};
use super::status::DAEMON_STATUS_KEY;
use super::{PruneReport, Store, StoreError, StoreOptions, ns, schema};
use super::{RING_MARK_KEY, RingMark};

/// Entries in the path cache before it is emptied. Keys are 128-bit hashes of the path, not
/// the path (25 bytes a bucket), so the cache can hold every path of a busy node: a miss
/// costs two lookups in `names_dir_name`, the writer's largest index. 7/8 of 2^20: the most
/// the hash table holds in 2^20 buckets (25 MiB) without doubling.
const PATH_CACHE_MAX: usize = (1 << 20) / 8 * 7;
/// Entries in the directory cache before it is emptied (~150 bytes each).
const DIR_CACHE_MAX: usize = 100_000;
/// Distinct containerd objects (snapshot, blob or ingest, with a verdict) in the cache before
/// it is emptied (~600 bytes each).
const CONTAINERD_CACHE_MAX: usize = 16_384;
/// Process descriptions remembered by address before that cache is emptied (it holds them,
/// ~1 KiB each).
const PROC_ADDR_CACHE_MAX: usize = 4096;
/// Entries in the process cache before it is emptied.
const PROC_CACHE_MAX: usize = 50_000;
/// Pruned gaps written within this long of each other are merged into one record.
const PRUNED_MERGE_NS: i64 = 3600 * 1_000_000_000;

/// An event's row, built by `append_event` and inserted with others (up to [`ROW_CHUNK`]) by
/// one prepared statement: looking the statement up in rusqlite's cache and handing it back
/// cost more per event than binding its values. Its id (the time, or the next free one) is
/// settled at insertion.
struct PendingRow {
    time_ns: i64,
    path: i64,
    op: i64,
    proc_id: i64,
    result: i64,
    mono_d: i64,
    errno: Option<i32>,
    new_path: Option<i64>,
    inode: Option<i64>,
    dev: Option<i64>,
    /// Range in `Writer::row_details` (empty: no details).
    details: std::ops::Range<usize>,
    seg: i64,
    /// `codec::content_digest` of the row: its checksum once the id is settled.
    content: u64,
}

/// Rows buffered before they are inserted.
const ROW_CHUNK: usize = 256;

struct CachedProc {
    id: i64,
    clock_off: i64,
    /// [`proc_hash`] of the description: what the rows' checksums cover of it.
    digest: u64,
    view: ProcessView,
}

/// A process row as an event refers to it: (row id, clock offset, [`proc_hash`]).
type ProcRef = (i64, i64, u64);

/// Records the store could not write (disk full or another write error), to be written as one
/// gap once it can write again.
#[derive(Debug)]
pub(crate) struct Unstored {
    /// `store_full` or `store_error`.
    pub(crate) kind: GapKind,
    pub(crate) reason: String,
    pub(crate) from_ns: i64,
    pub(crate) to_ns: i64,
    pub(crate) lost: u64,
    pub(crate) kinds: BTreeMap<String, u64>,
}

impl Unstored {
    /// Nothing yet, since `now_ns`.
    pub(crate) fn new(kind: GapKind, reason: String, now_ns: i64) -> Unstored {
        Unstored {
            kind,
            reason,
            from_ns: now_ns,
            to_ns: now_ns,
            lost: 0,
            kinds: BTreeMap::new(),
        }
    }

    /// Adds another count's records and window to this one.
    pub(crate) fn absorb(&mut self, other: Unstored) {
        for (k, n) in other.kinds {
            *self.kinds.entry(k).or_insert(0) += n;
        }
        self.lost += other.lost;
        self.from_ns = self.from_ns.min(other.from_ns);
        self.to_ns = self.to_ns.max(other.to_ns);
    }

    pub(crate) fn add(&mut self, kind: &str, n: u64, time_ns: i64) {
        *self.kinds.entry(kind.to_string()).or_insert(0) += n;
        self.lost += n;
        self.from_ns = self.from_ns.min(time_ns);
        self.to_ns = self.to_ns.max(time_ns);
    }
}

pub(crate) struct Writer {
    opts: StoreOptions,
    in_txn: bool,
    /// Events in the open transaction.
    batch: u64,
    /// Loss records' counts in the open transaction.
    batch_loss: u64,
    /// What the open transaction holds, per op / loss kind (counted as lost if it fails).
    batch_kinds: HashMap<&'static str, u64>,
    batch_from: i64,
    batch_to: i64,
    /// Events committed since the last `flush` returned.
    committed: u64,
    /// Text -> (`atoms.id`, `codec::text_digest` of the text).
    atoms: HashMap<AtomKind, HashMap<String, (i64, u64)>>,
    dirs: HashMap<Vec<u8>, i64>,
    /// Path bytes' 128-bit hash ([`path_key`]) -> `names.id`.
    paths: HashMap<u128, i64>,
    /// Device -> its atom (id, digest): the `major:minor` text is formed once per device, not
    /// once per event.
    devs: HashMap<Dev, (i64, u64)>,
    /// In-memory hash of the whole description (`hash_state`) -> its row.
    procs: HashMap<u64, CachedProc>,
    /// Seeds the in-memory hashes of process descriptions and containerd objects.
    hash_state: foldhash::fast::RandomState,
    /// The same by the address of the event's `Arc` (see [`Writer::proc_id`]): (the `Arc`,
    /// row id, clock offset, digest).
    proc_addrs: HashMap<usize, (Arc<ProcessView>, ProcRef)>,
    /// Recent containerd objects (without `path`), their atom id and its text's digest.
    containerd: HashMap<u64, Vec<(ContainerdView, i64, u64)>>,
    /// Events whose row is built but not inserted yet (see [`PendingRow`]), and their
    /// details records, end to end.
    rows: Vec<PendingRow>,
    row_details: Vec<u8>,
    /// Scratch for a row's checksum: the bytes hashed, and the digests of the atoms its
    /// details refer to.
    sum_buf: Vec<u8>,
    detail_atoms: Vec<u64>,
    /// Processes used in the open transaction: id -> newest event id.
    touched: HashMap<i64, i64>,
    /// Largest event id (None: to be read from the database).
    max_id: Option<i64>,
    /// The segment new events go to and how many it holds (None: to be read from the
    /// database). Kept across rollbacks: a count off by a failed batch only moves the next
    /// segment's start.
    seg: Option<(i64, u64)>,
    /// Per segment in the open transaction: (smallest id, largest id, events).
    batch_segs: BTreeMap<i64, (i64, i64, u64)>,
    run_id: Option<i64>,
    heartbeat_ns: i64,
    /// Latest time the store was told about (events, heartbeats, runs).
    latest_ns: i64,
    unstored: Option<Unstored>,
    /// The kernel ring buffer the daemon reads ([`Store::set_ring`]): its identity, the end
    /// of the last record whose events were appended ([`Store::note_ring_through`]), and the
    /// position last committed in [`RING_MARK_KEY`].
    ring: Option<String>,
    ring_through: Option<u64>,
    ring_written: Option<u64>,
}

/// Bytes of the database in use (pages not on the free list).
pub(crate) fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    Ok((pages - free).max(0) as u64 * page_size.max(0) as u64)
}

fn file_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    Ok(pages.max(0) as u64 * page_size.max(0) as u64)
}

/// Equal apart from `path` (exhaustive: a new field must be considered here).
fn same_but_path(a: &ContainerdView, b: &ContainerdView) -> bool {
    let ContainerdView {
        root,
        kind,
        namespace,
        snapshotter,
        snapshot_id,
        snapshot_key,
        snapshot_kind,
        layer_digest,
        chain_id,
        images,
        container_id,
        pod,
        blob_digest,
        blob_role,
        ingest_ref,
        path: _,
        stale,
        of_new_path,
        verdict,
        reason,
    } = a;
    *snapshot_id == b.snapshot_id
        && *kind == b.kind
        && *verdict == b.verdict
        && *stale == b.stale
        && *of_new_path == b.of_new_path
        && *root == b.root
        && *namespace == b.namespace
        && *snapshotter == b.snapshotter
        && *snapshot_key == b.snapshot_key
        && *snapshot_kind == b.snapshot_kind
        && *layer_digest == b.layer_digest
        && *chain_id == b.chain_id
        && *images == b.images
        && *container_id == b.container_id
        && *pod == b.pod
        && *blob_digest == b.blob_digest
        && *blob_role == b.blob_role
        && *ingest_ref == b.ingest_ref
        && *reason == b.reason
}

/// Inserts a dictionary row unless it exists; its id either way. `OR IGNORE` (not `ON CONFLICT
/// … RETURNING`): no statement journal, no ephemeral table: several times cheaper.
fn insert_or_select(
    conn: &Connection,
    insert: &str,
    select: &str,
    p: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<i64> {
    if conn.prepare_cached(insert)?.execute(p)? == 1 {
        return Ok(conn.last_insert_rowid());
    }
    conn.prepare_cached(select)?.query_row(p, |r| r.get(0))
}

/// Runs a statement to completion (`PRAGMA incremental_vacuum` yields a row per page freed).
fn step_all(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

/// The path cache's key: XXH3's 128-bit hash of the bytes, built for this (a 128-bit
/// checksum that is fast on short inputs). Two distinct paths share a key with probability
/// ~2^-128 per pair (about 2^-88 for a million cached paths): negligible next to disk errors.
fn path_key(path: &[u8]) -> u128 {
    codec::path_digest(path)
}

impl Writer {
    fn load(conn: &Connection, opts: StoreOptions) -> rusqlite::Result<Writer> {
        let mut w = Writer {
            opts,
            in_txn: false,
            batch: 0,
            batch_loss: 0,
            batch_kinds: HashMap::new(),
            batch_from: i64::MAX,
            batch_to: i64::MIN,
            committed: 0,
            atoms: HashMap::new(),
            dirs: HashMap::new(),
            paths: HashMap::new(),
            devs: HashMap::new(),
            procs: HashMap::new(),
            hash_state: foldhash::fast::RandomState::default(),
            proc_addrs: HashMap::new(),
            containerd: HashMap::new(),
            rows: Vec::new(),
            row_details: Vec::new(),
            sum_buf: Vec::new(),
            detail_atoms: Vec::new(),
            touched: HashMap::new(),
            max_id: None,
            seg: None,
            batch_segs: BTreeMap::new(),
            run_id: None,
            heartbeat_ns: i64::MIN,
            latest_ns: i64::MIN,
            unstored: None,
            ring: None,
            ring_through: None,
            ring_written: None,
        };
        w.load_atoms(conn)?;
        Ok(w)
    }

    fn load_atoms(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        self.atoms.clear();
        let mut stmt = conn.prepare("SELECT id, kind, text FROM atoms")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (id, kind, text) = row?;
            if let Some(kind) = AtomKind::from_i64(kind) {
                let digest = codec::text_digest(&text);
                self.atoms
                    .entry(kind)
                    .or_default()
                    .insert(text, (id, digest));
            }
        }
        Ok(())
    }

    fn clear_caches(&mut self) {
        self.atoms.clear();
        self.dirs.clear();
        self.paths.clear();
        self.devs.clear();
        self.procs.clear();
        self.proc_addrs.clear();
        self.containerd.clear();
        self.max_id = None;
    }

    fn see(&mut self, t: i64) {
        self.latest_ns = self.latest_ns.max(t);
    }

    fn now_hint(&self) -> i64 {
        if self.latest_ns == i64::MIN {
            now_ns()
        } else {
            self.latest_ns
        }
    }

    fn begin(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if !self.in_txn {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_txn = true;
            if self.atoms.is_empty() {
                self.load_atoms(conn)?;
            }
        }
        Ok(())
    }

    /// The atom's id and the digest of its text (what row checksums cover of it).
    fn atom(
        &mut self,
        conn: &Connection,
        kind: AtomKind,
        text: &str,
    ) -> rusqlite::Result<(i64, u64)> {
        if let Some(&a) = self.atoms.get(&kind).and_then(|m| m.get(text)) {
            return Ok(a);
        }
        let id = insert_or_select(
            conn,
            "INSERT OR IGNORE INTO atoms (kind, text) VALUES (?1, ?2)",
            "SELECT id FROM atoms WHERE kind = ?1 AND text = ?2",
            params![kind as i64, text],
        )?;
        let a = (id, codec::text_digest(text));
        self.atoms
            .entry(kind)
            .or_default()
            .insert(text.to_string(), a);
        Ok(a)
    }

    /// A device's atom, by its number while cached.
    fn dev_atom(&mut self, conn: &Connection, dev: Dev) -> rusqlite::Result<(i64, u64)> {
        if let Some(&a) = self.devs.get(&dev) {
            return Ok(a);
        }
        let a = self.atom(conn, AtomKind::Dev, &dev.to_string())?;
        self.devs.insert(dev, a);
        Ok(a)
    }

    fn dir_id(&mut self, conn: &Connection, dir: &[u8]) -> rusqlite::Result<i64> {
        if let Some(&id) = self.dirs.get(dir) {
            return Ok(id);
        }
        let inner = codec::inner_dir(dir);
        let found: Option<i64> = conn
            .prepare_cached("SELECT id FROM dirs WHERE path = ?1")?
            .query_row(params![dir], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                conn.prepare_cached("INSERT INTO dirs (path, inner) VALUES (?1, ?2)")?
                    .execute(params![dir, inner])?;
                conn.last_insert_rowid()
            }
        };
        if self.dirs.len() >= DIR_CACHE_MAX {
            self.dirs.clear();
        }
        self.dirs.insert(dir.to_vec(), id);
        Ok(id)
    }

    /// The path's row id and its digest ([`path_key`], what row checksums cover of it).
    fn path_id(&mut self, conn: &Connection, path: &[u8]) -> rusqlite::Result<(i64, u128)> {
        let key = path_key(path);
        if let Some(&id) = self.paths.get(&key) {
            return Ok((id, key));
        }
        let (dir, name) = codec::split_path(path);
        let dir_id = match dir {
            Some(d) => self.dir_id(conn, d)?,
            None => 0,
        };
        let id = insert_or_select(
            conn,
            "INSERT OR IGNORE INTO names (dir, name) VALUES (?1, ?2)",
            "SELECT id FROM names WHERE dir = ?1 AND name = ?2",
            params![dir_id, name],
        )?;
        if self.paths.len() >= PATH_CACHE_MAX {
            self.paths.clear();
        }
        self.paths.insert(key, id);
        Ok((id, key))
    }

    /// (process row id, its clock offset, its digest). By the `Arc`'s address first: the enricher hands a
    /// thread's events one `Arc` while its description holds, so the usual lookup hashes a
    /// pointer, not the description. The cache holds the `Arc`, so no other description can
    /// take that address while it is cached.
    fn proc_id(
        &mut self,
        conn: &Connection,
        p: &Arc<ProcessView>,
        clock: i64,
    ) -> rusqlite::Result<ProcRef> {
        let addr = Arc::as_ptr(p) as usize;
        if let Some(&(_, found)) = self.proc_addrs.get(&addr) {
            return Ok(found);
        }
        let found = self.proc_id_by_value(conn, p, clock)?;
        if self.proc_addrs.len() >= PROC_ADDR_CACHE_MAX {
            self.proc_addrs.clear();
        }
        self.proc_addrs.insert(addr, (Arc::clone(p), found));
        Ok(found)
    }

    /// [`Writer::proc_id`] by the description: the in-memory cache, then `procs_hash`.
    fn proc_id_by_value(
        &mut self,
        conn: &Connection,
        p: &ProcessView,
        clock: i64,
    ) -> rusqlite::Result<ProcRef> {
        let key = self.hash_state.hash_one(p);
        if let Some(c) = self.procs.get(&key)
            && c.view == *p
        {
            return Ok((c.id, c.clock_off, c.digest));
        }
        let h = proc_hash(p);
        let found = {
            let mut stmt = conn.prepare_cached(
                "SELECT id, clock_off, pid, tid, ppid, comm, exe, cmdline, uid, gid, unit, \
                 container, cgroup_id, mnt_ns, ancestors FROM procs WHERE hash = ?1",
            )?;
            let mut rows = stmt.query(params![h as i64])?;
            let mut found = None;
            while let Some(row) = rows.next()? {
                // A damaged row (undecodable) is not this description: a new row is written.
                let Ok(view) = proc_from_row(row, 2) else {
                    continue;
                };
                if view == *p {
                    found = Some((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?));
                    break;
                }
            }
            found
        };
        let (id, clock_off) = match found {
            Some(f) => f,
            None => {
                let cmdline = serde_json::to_string(&p.cmdline)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                let ancestors = serde_json::to_string(&p.ancestors)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO procs (hash, pid, tid, ppid, comm, exe, cmdline, uid, gid, unit, \
                     container, cgroup_id, mnt_ns, ancestors, clock_off, last_seen) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, 0)",
                )?
                .execute(params![
                    h as i64,
                    p.pid,
                    p.tid,
                    p.ppid,
                    p.comm,
                    p.exe,
                    cmdline,
                    p.uid,
                    p.gid,
                    p.unit,
                    p.container_id,
                    p.cgroup_id as i64,
                    p.mnt_ns,
                    ancestors,
                    clock,
                ])?;
                (conn.last_insert_rowid(), clock)
            }
        };
        if self.procs.len() >= PROC_CACHE_MAX {
            self.procs.clear();
        }
        self.procs.insert(
            key,
            CachedProc {
                id,
                clock_off,
                digest: h,
                view: p.clone(),
            },
        );
        Ok((id, clock_off, h))
    }

    /// The atom of a containerd object without its `path` (its JSON). The object is shared by
    /// many events (one snapshot, one verdict): recent ones are remembered with their atom.
    /// Its id and the digest of its text.
    fn containerd_atom(
        &mut self,
        conn: &Connection,
        c: &ContainerdView,
    ) -> rusqlite::Result<(i64, u64)> {
        // Bucketed by the fields that tell objects apart; compared whole within a bucket.
        let mut h = self.hash_state.build_hasher();
        c.kind.hash(&mut h);
        c.snapshot_id.hash(&mut h);
        c.snapshot_key.hash(&mut h);
        c.blob_digest.hash(&mut h);
        c.ingest_ref.hash(&mut h);
        c.container_id.hash(&mut h);
        c.verdict.hash(&mut h);
        c.reason.hash(&mut h);
        let bucket = h.finish();
        if let Some(&(_, id, digest)) = self
            .containerd
            .get(&bucket)
            .and_then(|b| b.iter().find(|(v, _, _)| same_but_path(v, c)))
        {
            return Ok((id, digest));
        }
        let mut key = c.clone();
        key.path = None;
        let json = serde_json::to_string(&key)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let (id, digest) = self.atom(conn, AtomKind::Containerd, &json)?;
        if self.containerd.len() >= CONTAINERD_CACHE_MAX {
            self.containerd.clear();
        }
        self.containerd
            .entry(bucket)
            .or_default()
            .push((key, id, digest));
        Ok((id, digest))
    }

    fn max_id(&mut self, conn: &Connection) -> rusqlite::Result<i64> {
        if let Some(m) = self.max_id {
            return Ok(m);
        }
        let m: Option<i64> = conn.query_row("SELECT max(id) FROM events", [], |r| r.get(0))?;
        let m = m.unwrap_or(i64::MIN);
        self.max_id = Some(m);
        Ok(m)
    }

    /// The segment the next event goes to: the newest, or a new one once it holds
    /// `segment_events`.
    fn segment(&mut self, conn: &Connection) -> rusqlite::Result<i64> {
        let (seg, n) = match self.seg {
            Some(s) => s,
            None => conn
                .query_row(
                    "SELECT seg, events FROM segments ORDER BY seg DESC LIMIT 1",
                    [],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?.max(0) as u64)),
                )
                .optional()?
                .unwrap_or((0, 0)),
        };
        let cur = if n >= self.opts.segment_events.max(1) {
            (seg.saturating_add(1), 0)
        } else {
            (seg, n)
        };
        self.seg = Some(cur);
        Ok(cur.0)
    }

    fn insert_event(&mut self, conn: &Connection, ev: &FileEvent) -> rusqlite::Result<()> {
        let time_ns = ev.time_ns;
        self.begin(conn)?;
        let path = self.path_id(conn, ev.path.as_bytes())?;
        let new_path = match &ev.new_path {
            Some(p) => Some(self.path_id(conn, p.as_bytes())?),
            None => None,
        };
        // wall - monotonic: constant for a daemon run, so stored relative to the process row.
        let clock = time_ns.wrapping_sub(ev.mono_ns as i64);
        let (proc_id, clock_off, proc_digest) = self.proc_id(conn, &ev.process, clock)?;
        // Ops, results and devices are stored as their text in the atoms, as in every store
        // so far.
        let (op, op_digest) = self.atom(conn, AtomKind::Op, ev.op.name())?;
        let (result, result_digest) = match ev.result {
            OpResult::Ok => self.atom(conn, AtomKind::Result, "ok")?,
            failed => self.atom(conn, AtomKind::Result, &failed.name())?,
        };
        let errno = ev.result.errno();
        let dev = match ev.dev {
            Some(d) => Some(self.dev_atom(conn, d)?),
            None => None,
        };
        // The digests of the atoms the details refer to, in the order they name them.
        let mut detail_atoms = std::mem::take(&mut self.detail_atoms);
        detail_atoms.clear();
        let containerd = match &ev.details.containerd {
            Some(c) => {
                let (atom, digest) = match self.containerd_atom(conn, c) {
                    Ok(a) => a,
                    Err(e) => {
                        self.detail_atoms = detail_atoms;
                        return Err(e);
                    }
                };
                detail_atoms.push(digest);
                // Usually the inner path of the event's path (its tail): derived when read
                // back. Otherwise kept as JSON text.
                let path = match &c.path {
                    None => codec::CtrdPath::Absent,
                    Some(p)
                        if codec::inner_start(ev.path.as_bytes())
                            .is_some_and(|i| ev.path.as_bytes()[i..] == *p.as_bytes()) =>
                    {
                        codec::CtrdPath::Inner
                    }
                    Some(p) => match serde_json::to_string(p) {
                        Ok(text) => codec::CtrdPath::Text(text),
                        Err(e) => {
                            self.detail_atoms = detail_atoms;
                            return Err(rusqlite::Error::ToSqlConversionFailure(Box::new(e)));
                        }
                    },
                };
                Some((atom, path))
            }
            None => None,
        };
        let start = self.row_details.len();
        let mut details = std::mem::take(&mut self.row_details);
        let encoded =
            codec::encode_details(&mut details, &ev.details, time_ns, containerd, |kind, s| {
                let (id, digest) = self.atom(conn, kind, s)?;
                detail_atoms.push(digest);
                Ok(id)
            });
        self.row_details = details;
        let details = start..self.row_details.len();
        let mono_d = clock.wrapping_sub(clock_off);
        let seg = encoded.and_then(|()| self.segment(conn));
        let inode = ev.inode.map(|i| i as i64);
        let content = seg.map(|seg| {
            let c = codec::RowContent {
                path: path.1,
                new_path: new_path.map(|p| p.1),
                process: proc_digest,
                clock_off,
                op: op_digest,
                result: result_digest,
                dev: dev.map(|d| d.1),
                mono_d,
                errno,
                inode,
                seg,
                details: &self.row_details[details.clone()],
                detail_atoms: &detail_atoms,
            };
            (seg, codec::content_digest(&c, &mut self.sum_buf))
        });
        self.detail_atoms = detail_atoms;
        let (seg, content) = content?;
        self.rows.push(PendingRow {
            time_ns,
            path: path.0,
            op,
            proc_id,
            result,
            mono_d,
            errno,
            new_path: new_path.map(|p| p.0),
            inode,
            dev: dev.map(|d| d.0),
            details,
            seg,
            content,
        });
        if let Some((_, n)) = &mut self.seg {
            *n += 1;
        }
        self.batch += 1;
        *self.batch_kinds.entry(ev.op.name()).or_insert(0) += 1;
        self.batch_from = self.batch_from.min(time_ns);
        self.batch_to = self.batch_to.max(time_ns);
        Ok(())
    }

    /// Inserts the buffered rows, through one prepared statement.
    fn insert_rows(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut max_id = self.max_id(conn)?;
        // OR IGNORE: a taken id is reported as 0 rows changed (no statement journal needed).
        let mut stmt = conn.prepare_cached(
            "INSERT OR IGNORE INTO events (id, path, op, proc, result, adj, mono_d, errno, new_path, inode, \
             dev, details, seg, checksum) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        for row in &self.rows {
            let details = &self.row_details[row.details.clone()];
            let mut id = row.time_ns;
            let mut tries = 0;
            loop {
                let adj = id.wrapping_sub(row.time_ns);
                let r = stmt.execute(params![
                    id,
                    row.path,
                    row.op,
                    row.proc_id,
                    row.result,
                    adj,
                    row.mono_d,
                    row.errno,
                    row.new_path,
                    row.inode,
                    row.dev,
                    (!details.is_empty()).then_some(details),
                    row.seg,
                    codec::row_checksum(row.content, id, adj),
                ]);
                match r {
                    Ok(1) => break,
                    Ok(_) if tries < 64 => {
                        tries += 1;
                        // Two events in one nanosecond: take the next free one. At the end of
                        // the table that is right after the largest id.
                        id = if max_id >= id && max_id - id < 1000 {
                            max_id.saturating_add(1)
                        } else {
                            id.saturating_add(1)
                        };
                    }
                    Ok(_) => return Err(rusqlite::Error::StatementChangedRows(0)),
                    Err(e) => return Err(e),
                }
            }
            max_id = max_id.max(id);
            let s = self.batch_segs.entry(row.seg).or_insert((id, id, 0));
            s.0 = s.0.min(id);
            s.1 = s.1.max(id);
            s.2 += 1;
            let t = self.touched.entry(row.proc_id).or_insert(id);
            *t = (*t).max(id);
        }
        self.max_id = Some(max_id);
        self.rows.clear();
        self.row_details.clear();
        Ok(())
    }

    fn insert_loss(&mut self, conn: &Connection, loss: &LossEvent) -> rusqlite::Result<()> {
        self.begin(conn)?;
        let (recorded, from, to) = (loss.time_ns, loss.from_ns, loss.to_ns);
        // By kind name, as gap records keep their kinds.
        let kinds = serde_json::to_string(&loss.kinds_by_name())
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        conn.prepare_cached(
            "INSERT INTO gaps (kind, from_ns, to_ns, lost, kinds, reason, recorded_ns) \
             VALUES ('loss', ?1, ?2, ?3, ?4, NULL, ?5)",
        )?
        .execute(params![from, to, loss.lost as i64, kinds, recorded])?;
        self.batch_loss += loss.lost;
        for (k, n) in &loss.kinds {
            *self.batch_kinds.entry(k.name()).or_insert(0) += n;
        }
        self.batch_from = self.batch_from.min(from);
        self.batch_to = self.batch_to.max(to);
        Ok(())
    }

    fn reset_batch(&mut self) {
        self.batch = 0;
        self.batch_loss = 0;
        self.batch_kinds.clear();
        self.batch_from = i64::MAX;
        self.batch_to = i64::MIN;
        self.touched.clear();
        self.batch_segs.clear();
        self.rows.clear();
        self.row_details.clear();
    }

    fn commit(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if !self.in_txn {
            return Ok(());
        }
        self.insert_rows(conn)?;
        {
            let mut stmt = conn.prepare_cached(
                "UPDATE procs SET last_seen = ?2 WHERE id = ?1 AND last_seen < ?2",
            )?;
            for (&id, &last) in &self.touched {
                stmt.execute(params![id, last])?;
            }
        }
        if let Some(run) = self.run_id {
            // Not the newest event's time: events are not stored in time order (a `modify` is
            // dated by its last write and reported at the close), and older ones may still be
            // on their way. Only a heartbeat says that everything before it is here.
            conn.prepare_cached(
                "UPDATE runs SET heartbeat_ns = max(heartbeat_ns, ?2) WHERE id = ?1",
            )?
            .execute(params![run, self.heartbeat_ns])?;
        }
        if self.batch > 0 {
            conn.prepare_cached("UPDATE meta SET value = value + ?1 WHERE key = 'events'")?
                .execute(params![self.batch as i64])?;
        }
        {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO segments (seg, lo, hi, events) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (seg) DO UPDATE SET lo = min(lo, excluded.lo), \
                 hi = max(hi, excluded.hi), events = events + excluded.events",
            )?;
            for (&seg, &(lo, hi, n)) in &self.batch_segs {
                stmt.execute(params![seg, lo, hi, n as i64])?;
            }
        }
        // Where the reading of the ring buffer stood, in the transaction holding the events of
        // the records up to there: a daemon that replays them after a crash skips those.
        let ring_mark = match (&self.ring, self.ring_through) {
            (Some(ring), Some(through)) if self.ring_written != Some(through) => {
                conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
                    .execute(params![RING_MARK_KEY, RingMark::text(ring, through)])?;
                Some(through)
            }
            _ => None,
        };
        conn.execute_batch("COMMIT")?;
        if ring_mark.is_some() {
            self.ring_written = ring_mark;
        }
        self.in_txn = false;
        self.committed += self.batch;
        self.reset_batch();
        Ok(())
    }

    /// A write failed: roll back, count what the transaction held (and `current`, the record
    /// being written) as not stored, and go degraded until a write succeeds again.
    fn fail(
        &mut self,
        conn: &Connection,
        path: &Path,
        e: rusqlite::Error,
        current: Option<(&str, u64, i64)>,
    ) -> StoreError {
        let err = schema::map_err(path, e);
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        self.in_txn = false;
        let kind = if matches!(err, StoreError::Full { .. }) {
            GapKind::StoreFull
        } else {
            GapKind::StoreError
        };
        let now = self.now_hint();
        let u = self.unstored.get_or_insert_with(|| Unstored {
            kind,
            reason: err.to_string(),
            from_ns: now,
            to_ns: now,
            lost: 0,
            kinds: BTreeMap::new(),
        });
        for (k, n) in &self.batch_kinds {
            *u.kinds.entry(k.to_string()).or_insert(0) += n;
        }
        u.lost += self.batch + self.batch_loss;
        if self.batch + self.batch_loss > 0 {
            u.from_ns = u.from_ns.min(self.batch_from);
            u.to_ns = u.to_ns.max(self.batch_to);
        }
        if let Some((k, n, t)) = current {
            u.add(k, n, t);
        }
        self.reset_batch();
        // Ids inserted by the rolled-back transaction are gone.
        self.clear_caches();
        err
    }

    /// Degraded: try to write the gap for what could not be stored (this is also the probe for
    /// free space).
    fn recover(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let Some(u) = &self.unstored else {
            return Ok(());
        };
        if u.lost == 0 {
            self.unstored = None;
            return Ok(());
        }
        let now = self.now_hint();
        let kinds = serde_json::to_string(&u.kinds)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let r = conn
            .execute(
                "INSERT INTO gaps (kind, from_ns, to_ns, lost, kinds, reason, recorded_ns) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    u.kind.name(),
                    u.from_ns.min(now),
                    u.to_ns.max(now),
                    u.lost as i64,
                    kinds,
                    u.reason,
                    now
                ],
            )
            .and_then(|_| conn.execute_batch("COMMIT"));
        if let Err(e) = r {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            return Err(e);
        }
        self.unstored = None;
        Ok(())
    }

    fn insert_gap(conn: &Connection, g: &Gap, recorded: i64) -> rusqlite::Result<()> {
        let kinds = if g.kinds.is_empty() {
            None
        } else {
            Some(
                serde_json::to_string(&g.kinds)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
            )
        };
        conn.execute(
            "INSERT INTO gaps (kind, from_ns, to_ns, lost, kinds, reason, recorded_ns) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                g.kind.name(),
                g.from_ns,
                g.to_ns,
                g.lost.map(|l| l as i64),
                kinds,
                g.reason,
                recorded
            ],
        )?;
        Ok(())
    }

    /// Deletes events with id <= `upto` (and what only they referenced); records the pruning.
    /// Returns (removed, from_ns, to_ns).
    fn delete_upto(
        &mut self,
        conn: &Connection,
        upto: i64,
        reason: &str,
        now: i64,
    ) -> rusqlite::Result<(u64, i64, i64)> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let r = (|| -> rusqlite::Result<(u64, i64, i64)> {
            let window: Option<(i64, i64)> = conn
                .query_row(
                    "SELECT (SELECT id - adj FROM events WHERE id <= ?1 ORDER BY id LIMIT 1), \
                            (SELECT id - adj FROM events WHERE id <= ?1 ORDER BY id DESC LIMIT 1)",
                    params![upto],
                    |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?)),
                )
                .map(|(a, b)| a.zip(b))?;
            let Some((from, to)) = window else {
                return Ok((0, 0, 0));
            };
            conn.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS prune_names (id INTEGER PRIMARY KEY);
                 CREATE TEMP TABLE IF NOT EXISTS prune_dirs (id INTEGER PRIMARY KEY);
                 DELETE FROM temp.prune_names; DELETE FROM temp.prune_dirs;",
            )?;
            conn.execute(
                "INSERT OR IGNORE INTO temp.prune_names SELECT path FROM events WHERE id <= ?1",
                params![upto],
            )?;
            conn.execute(
                "INSERT OR IGNORE INTO temp.prune_names SELECT new_path FROM events \
                 WHERE id <= ?1 AND new_path IS NOT NULL",
                params![upto],
            )?;
            let removed = conn.execute("DELETE FROM events WHERE id <= ?1", params![upto])? as u64;
            // Segments wholly removed go; a partly removed one gets its new range and count
            // (one scan of that segment's index range).
            conn.execute("DELETE FROM segments WHERE hi <= ?1", params![upto])?;
            conn.execute(
                "UPDATE segments SET \
                     lo = coalesce((SELECT min(id) FROM events WHERE seg = segments.seg), lo), \
                     events = (SELECT count(*) FROM events WHERE seg = segments.seg) \
                 WHERE lo <= ?1",
                params![upto],
            )?;
            conn.execute("DELETE FROM segments WHERE events = 0", [])?;
            // A path is still referenced if some remaining segment's index range has it.
            conn.execute_batch(
                "DELETE FROM temp.prune_names WHERE \
                     EXISTS (SELECT 1 FROM events WHERE seg IN (SELECT seg FROM segments) \
                             AND path = temp.prune_names.id) \
                     OR EXISTS (SELECT 1 FROM events WHERE seg IN (SELECT seg FROM segments) \
                             AND new_path = temp.prune_names.id);
                 INSERT OR IGNORE INTO temp.prune_dirs \
                     SELECT dir FROM names WHERE id IN (SELECT id FROM temp.prune_names);
                 DELETE FROM names WHERE id IN (SELECT id FROM temp.prune_names);
                 DELETE FROM temp.prune_dirs WHERE \
                     EXISTS (SELECT 1 FROM names WHERE dir = temp.prune_dirs.id);
                 DELETE FROM dirs WHERE id IN (SELECT id FROM temp.prune_dirs);",
            )?;
            conn.execute("DELETE FROM procs WHERE last_seen <= ?1", params![upto])?;
            conn.execute(
                "UPDATE meta SET value = max(0, value - ?1) WHERE key = 'events'",
                params![removed as i64],
            )?;
            // One `pruned` record per hour or so: extend the latest if it is recent.
            let last: Option<(i64, i64, String)> = conn
                .query_row(
                    "SELECT id, recorded_ns, coalesce(kinds, '{}') FROM gaps \
                     WHERE kind = 'pruned' ORDER BY id DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            match last {
                Some((id, recorded, kinds)) if now.saturating_sub(recorded) < PRUNED_MERGE_NS => {
                    let mut kinds: BTreeMap<String, u64> =
                        serde_json::from_str(&kinds).unwrap_or_default();
                    *kinds.entry(reason.to_string()).or_insert(0) += removed;
                    let kinds = serde_json::to_string(&kinds)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                    conn.execute(
                        "UPDATE gaps SET from_ns = min(from_ns, ?2), to_ns = max(to_ns, ?3), \
                         lost = coalesce(lost, 0) + ?4, kinds = ?5, recorded_ns = ?6 WHERE id = ?1",
                        params![id, from, to, removed as i64, kinds, now],
                    )?;
                }
                _ => {
                    let mut kinds = BTreeMap::new();
                    kinds.insert(reason.to_string(), removed);
                    let g = Gap {
                        kind: GapKind::Pruned,
                        from_ns: from,
                        to_ns: to,
                        lost: Some(removed),
                        kinds,
                        reason: None,
                        recorded_ns: now,
                    };
                    Writer::insert_gap(conn, &g, now)?;
                }
            }
            Ok((removed, from, to))
        })();
        match r {
            Ok(v) => {
                conn.execute_batch("COMMIT")?;
                self.clear_caches();
                Ok(v)
            }
            Err(e) => {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                self.clear_caches();
                Err(e)
            }
        }
    }
}

impl Store {
    /// Opens (creating it and its directory if needed) the store at `path` for writing. One
    /// writer per database, whatever name reaches it: a second one waits up to
    /// `opts.lock_wait`, then gets [`StoreError::Locked`]. The directory and files get the
    /// store's modes (see [`access`]). Creates or migrates the schema; a store from a newer
    /// ctrwatch is [`StoreError::NewerSchema`]. A symlink at `path` is followed: the store's
    /// [`Store::path`] is its target.
    pub fn open(path: impl AsRef<Path>, opts: StoreOptions) -> Result<Store, StoreError> {
        let (db, lock) = access::prepare_writer(path.as_ref(), &opts)?;
        Store::open_locked(db, opts, Arc::new(lock))
    }

    /// [`Store::open`] on a database whose lock is held.
    pub(crate) fn open_locked(
        path: PathBuf,
        opts: StoreOptions,
        lock: Arc<StoreLock>,
    ) -> Result<Store, StoreError> {
        let conn = schema::connect(&path, true)?;
        let ready = schema::prepare_writer(&conn, &path)
            .and_then(|()| register_functions(&conn).map_err(|e| schema::map_err(&path, e)))
            .and_then(|()| Writer::load(&conn, opts).map_err(|e| schema::map_err(&path, e)));
        match ready {
            Ok(writer) => Ok(Store {
                conn,
                path,
                writer: Some(Box::new(writer)),
                _lock: Some(lock),
                _copy: None,
            }),
            Err(e) => {
                // Leave a damaged store's files as they are (it may be moved aside).
                let _ = conn.set_db_config(
                    rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                    true,
                );
                Err(e)
            }
        }
    }

    /// Closes the writer without folding the WAL into the database (a corrupt store moved
    /// aside keeps its files as they were). Returns its lock.
    pub(crate) fn close_as_is(mut self) -> Option<Arc<StoreLock>> {
        let _ = self.conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        );
        // Nothing pending is committed either: the store is being given up.
        if let Some(w) = self.writer.as_deref_mut() {
            w.in_txn = false;
            w.reset_batch();
        }
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self._lock.take()
    }

    /// Whether the last run on record did not end cleanly (crash, kill -9, power loss).
    pub(crate) fn last_run_unclean(&self) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT ended_ns IS NULL FROM runs ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get::<_, bool>(0),
            )
            .optional()
            .map(|v| v.unwrap_or(false))
            .map_err(|e| self.err(e))
    }

    /// `PRAGMA quick_check`: `["ok"]` for a sound database (every page and record well
    /// formed; indexes not compared with their tables).
    pub(crate) fn quick_check(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA quick_check(10)")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Writes a gap now, in its own transaction (commits the open batch first).
    pub(crate) fn record_gap(&mut self, g: &Gap) -> Result<(), StoreError> {
        self.flush()?;
        let (conn, w, path) = self.parts()?;
        let t = w.now_hint();
        Writer::insert_gap(conn, g, t).map_err(|e| schema::map_err(path, e))
    }

    /// Records counted while the store could not be opened (a full disk at start): written as
    /// one gap with the next [`Store::flush`], as when the disk fills while it runs.
    pub(crate) fn carry_unstored(&mut self, u: Unstored) {
        let Some(w) = self.writer.as_deref_mut() else {
            return;
        };
        match &mut w.unstored {
            Some(mine) => mine.absorb(u),
            None => w.unstored = Some(u),
        }
    }

    fn parts(&mut self) -> Result<(&Connection, &mut Writer, &Path), StoreError> {
        match self.writer.as_deref_mut() {
            Some(w) => Ok((&self.conn, w, &self.path)),
            None => Err(StoreError::ReadOnly {
                path: self.path.clone(),
            }),
        }
    }

    /// Records a daemon start at `now`, the instant capture started (everything after it is
    /// captured). When an earlier run is on record, the time since it ended is recorded as a
    /// `downtime` gap (`reason`: `stopped`). If it did not end cleanly (crash, kill -9, power
    /// loss), the gap runs from its last committed heartbeat (`reason`: `unclean_stop`) and is
    /// also returned.
    pub fn begin_run(&mut self, now: SystemTime) -> Result<Option<Gap>, StoreError> {
        self.begin_run_as(now, false)
    }

    /// [`Store::begin_run`] for a daemon that adopted the programs its predecessor left pinned
    /// (`run --pin-dir`): they kept capturing into the ring buffer, which this daemon reads
    /// from where the previous one stopped, so a clean stop before it is no downtime and no
    /// gap is recorded. After an unclean stop the gap from the last heartbeat is recorded as
    /// usual: what the crashed daemon had read but not committed is not in the ring buffer
    /// any more.
    pub fn begin_adopted_run(&mut self, now: SystemTime) -> Result<Option<Gap>, StoreError> {
        self.begin_run_as(now, true)
    }

    fn begin_run_as(&mut self, now: SystemTime, adopted: bool) -> Result<Option<Gap>, StoreError> {
        let (conn, w, path) = self.parts()?;
        let t = ns(now);
        w.see(t);
        w.heartbeat_ns = w.heartbeat_ns.max(t);
        if w.in_txn
            && let Err(e) = w.commit(conn)
        {
            return Err(w.fail(conn, path, e, None));
        }
        let r = (|| -> rusqlite::Result<Option<Gap>> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let prev: Option<(i64, i64, Option<i64>)> = conn
                .query_row(
                    "SELECT started_ns, heartbeat_ns, ended_ns FROM runs ORDER BY id DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            // Adopted after a clean stop: capture never paused.
            let prev = prev.filter(|(_, _, ended)| !(adopted && ended.is_some()));
            let gap = prev.map(|(started, heartbeat, ended)| {
                let (from, reason) = match ended {
                    Some(e) => (e, "stopped"),
                    None => (heartbeat.max(started), "unclean_stop"),
                };
                let from = from.min(t);
                Gap {
                    kind: GapKind::Downtime,
                    from_ns: from,
                    to_ns: t,
                    lost: None,
                    kinds: BTreeMap::new(),
                    reason: Some(reason.into()),
                    recorded_ns: t,
                }
            });
            if let Some(g) = &gap {
                Writer::insert_gap(conn, g, t)?;
            }
            conn.execute(
                "INSERT INTO runs (started_ns, heartbeat_ns, ended_ns, pid, version) \
                 VALUES (?1, ?1, NULL, ?2, ?3)",
                params![t, std::process::id(), env!("CARGO_PKG_VERSION")],
            )?;
            let run = conn.last_insert_rowid();
            conn.execute_batch("COMMIT")?;
            w.run_id = Some(run);
            Ok(gap.filter(|g| g.reason.as_deref() == Some("unclean_stop")))
        })();
        r.map_err(|e| {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            schema::map_err(path, e)
        })
    }

    /// Notes that everything captured before `now` has been appended (call every few seconds,
    /// also when idle). It is written at once, or with the next commit while a batch is open:
    /// after an unclean end, the downtime runs from the last heartbeat written, and everything
    /// before it is stored. Events appended later but dated before it do no harm (they are
    /// stored and inside the downtime).
    pub fn heartbeat(&mut self, now: SystemTime) -> Result<(), StoreError> {
        let (conn, w, path) = self.parts()?;
        let t = ns(now);
        w.see(t);
        w.heartbeat_ns = w.heartbeat_ns.max(t);
        if w.in_txn || w.unstored.is_some() {
            return Ok(()); // written with the next commit
        }
        if let Some(run) = w.run_id {
            conn.prepare_cached(
                "UPDATE runs SET heartbeat_ns = max(heartbeat_ns, ?2) WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![run, t]))
            .map_err(|e| schema::map_err(path, e))?;
        }
        Ok(())
    }

    /// [`Store::heartbeat`], and the daemon's status snapshot (`ctrwatch status`) in the
    /// `meta` row [`DAEMON_STATUS_KEY`]: written in the open batch (committed with the events
    /// it counts), or, when none is open, in one transaction with the heartbeat (one commit a
    /// second when idle, as the heartbeat alone). Skipped while the store is degraded (disk
    /// full): then the snapshot ages, and `ctrwatch status` says the daemon is not responding.
    pub fn heartbeat_with_status(
        &mut self,
        now: SystemTime,
        status: &str,
    ) -> Result<(), StoreError> {
        let (conn, w, path) = self.parts()?;
        let t = ns(now);
        w.see(t);
        w.heartbeat_ns = w.heartbeat_ns.max(t);
        if w.unstored.is_some() {
            return Ok(());
        }
        let put_status = |conn: &Connection| -> rusqlite::Result<()> {
            conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
                .execute(params![DAEMON_STATUS_KEY, status])
                .map(|_| ())
        };
        if w.in_txn {
            // The heartbeat is written with the next commit.
            return match put_status(conn) {
                Ok(()) => Ok(()),
                Err(e) => Err(w.fail(conn, path, e, None)),
            };
        }
        let run = w.run_id;
        let r = (|| -> rusqlite::Result<()> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            put_status(conn)?;
            if let Some(run) = run {
                conn.prepare_cached(
                    "UPDATE runs SET heartbeat_ns = max(heartbeat_ns, ?2) WHERE id = ?1",
                )?
                .execute(params![run, t])?;
            }
            conn.execute_batch("COMMIT")
        })();
        r.map_err(|e| {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            schema::map_err(path, e)
        })
    }

    /// Records a clean stop at `now`, the instant capture stopped (commits what is pending
    /// first: everything captured before it). The next start's downtime gap begins there.
    pub fn end_run(&mut self, now: SystemTime) -> Result<(), StoreError> {
        self.flush()?;
        let (conn, w, path) = self.parts()?;
        let t = ns(now);
        w.see(t);
        if let Some(run) = w.run_id.take() {
            conn.execute(
                "UPDATE runs SET ended_ns = ?2, heartbeat_ns = max(heartbeat_ns, ?2) WHERE id = ?1",
                params![run, t],
            )
            .map_err(|e| schema::map_err(path, e))?;
        }
        // Leave a compact file behind: WAL folded in and truncated.
        let _ = conn.execute_batch("PRAGMA optimize;");
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        Ok(())
    }

    /// The kernel ring buffer whose records the events appended from now on come from (its
    /// [`RingMark::ring`] identity); see [`Store::note_ring_through`].
    pub fn set_ring(&mut self, ring: String) {
        if let Some(w) = self.writer.as_deref_mut() {
            w.ring = Some(ring);
            w.ring_through = None;
            w.ring_written = None;
        }
    }

    /// Everything made of the ring buffer's records ending at or before `through` has been
    /// appended (call it before appending the events of the record ending there). Written in
    /// [`RING_MARK_KEY`] with the commit that makes those events durable, never apart from
    /// them: after a crash, [`Store::ring_mark`] says which records' events are stored.
    pub fn note_ring_through(&mut self, through: u64) {
        if let Some(w) = self.writer.as_deref_mut()
            && w.ring.is_some()
        {
            w.ring_through = Some(w.ring_through.map_or(through, |t| t.max(through)));
        }
    }

    /// The ring buffer position last committed ([`Store::note_ring_through`]), if any.
    pub fn ring_mark(&self) -> Result<Option<RingMark>, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [RING_MARK_KEY],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| schema::map_err(&self.path, e))?;
        Ok(text.as_deref().and_then(RingMark::parse))
    }

    /// Adds an event to the open batch. Not durable until [`Store::flush`] returns Ok.
    ///
    /// On a full disk this returns [`StoreError::Full`] once; the batch is dropped and counted,
    /// and until a later `flush` finds space again, events are counted (not stored) and this
    /// returns Ok. The counts become a `store_full` gap. The writer never has to be reopened.
    pub fn append_event(&mut self, ev: &FileEvent) -> Result<(), StoreError> {
        let (conn, w, path) = self.parts()?;
        let time_ns = ev.time_ns;
        w.see(time_ns);
        if let Some(u) = &mut w.unstored {
            u.add(ev.op.name(), 1, time_ns);
            return Ok(());
        }
        if let Err(e) = w.insert_event(conn, ev) {
            return Err(w.fail(conn, path, e, Some((ev.op.name(), 1, time_ns))));
        }
        // The event is in the batch now: a failure from here on counts it with the batch.
        if w.rows.len() >= ROW_CHUNK
            && let Err(e) = w.insert_rows(conn)
        {
            return Err(w.fail(conn, path, e, None));
        }
        if w.batch >= w.opts.max_batch as u64
            && let Err(e) = w.commit(conn)
        {
            return Err(w.fail(conn, path, e, None));
        }
        Ok(())
    }

    /// Adds a loss record (a `loss` gap) to the open batch.
    pub fn append_loss(&mut self, loss: &LossEvent) -> Result<(), StoreError> {
        let (conn, w, path) = self.parts()?;
        let t = loss.to_ns;
        w.see(t);
        if let Some(u) = &mut w.unstored {
            for (k, n) in &loss.kinds {
                u.add(k.name(), *n, t);
            }
            return Ok(());
        }
        if let Err(e) = w.insert_loss(conn, loss) {
            return Err(w.fail(conn, path, e, None).with_loss(w, loss, t));
        }
        Ok(())
    }

    /// Commits the open batch. Returns how many events were committed since the previous call
    /// (batches `append_event` committed itself included). Every event appended before an Ok
    /// return is on disk and survives a crash of the daemon.
    ///
    /// Degraded after a failed write (disk full): first writes the gap for what could not be
    /// stored; while that still fails, returns the error ([`StoreError::Full`]) again.
    pub fn flush(&mut self) -> Result<usize, StoreError> {
        let (conn, w, path) = self.parts()?;
        if w.unstored.is_some() {
            w.recover(conn).map_err(|e| schema::map_err(path, e))?;
        }
        if w.in_txn
            && let Err(e) = w.commit(conn)
        {
            return Err(w.fail(conn, path, e, None));
        }
        let n = w.committed;
        w.committed = 0;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Whether the writer is degraded (records are being counted, not stored, until space
    /// returns), and how many so far.
    pub fn unstored(&self) -> Option<u64> {
        self.writer
            .as_deref()
            .and_then(|w| w.unstored.as_ref())
            .map(|u| u.lost)
    }

    /// Replaces the retention bounds (a reload of the configuration): the next [`Store::prune`]
    /// applies them. Nothing on a read-only store.
    pub fn set_retention(&mut self, age: Option<std::time::Duration>, bytes: Option<u64>) {
        if let Some(w) = self.writer.as_deref_mut() {
            w.opts.retention_age = age;
            w.opts.retention_bytes = bytes;
        }
    }

    /// Retention: removes events older than `retention_age`, then the oldest events while the
    /// database holds more than `retention_bytes` (down to 90 % of it), at most `prune_chunk`
    /// per call, with the paths and processes only they referenced. Records a `pruned` gap.
    /// None when nothing was removed. Commits the open batch first.
    pub fn prune(&mut self, now: SystemTime) -> Result<Option<PruneReport>, StoreError> {
        let (conn, w, path) = self.parts()?;
        if w.unstored.is_some() {
            return Ok(None);
        }
        if w.in_txn
            && let Err(e) = w.commit(conn)
        {
            return Err(w.fail(conn, path, e, None));
        }
        let t = ns(now);
        let err = |e| schema::map_err(path, e);
        let before = used_bytes(conn).map_err(err)?;
        let mut budget = w.opts.prune_chunk.max(1);
        let mut by_age = 0;
        let mut by_size = 0;
        let mut from = i64::MAX;
        let mut to = i64::MIN;
        let mut more = false;
        let nth_oldest = |n: u64| -> rusqlite::Result<Option<i64>> {
            conn.query_row(
                "SELECT id FROM events ORDER BY id LIMIT 1 OFFSET ?1",
                params![n as i64],
                |r| r.get(0),
            )
            .optional()
        };
        if let Some(age) = w.opts.retention_age {
            let cutoff = t.saturating_sub(i64::try_from(age.as_nanos()).unwrap_or(i64::MAX));
            let mut upto = cutoff.saturating_sub(1);
            if let Some(nth) = nth_oldest(budget).map_err(err)?
                && nth <= upto
            {
                upto = nth - 1;
                more = true;
            }
            let (n, f, l) = w.delete_upto(conn, upto, "age", t).map_err(err)?;
            if n > 0 {
                by_age = n;
                budget = budget.saturating_sub(n);
                from = from.min(f);
                to = to.max(l);
            }
            // Old loss/downtime records go with the events of their time.
            conn.execute(
                "DELETE FROM gaps WHERE to_ns < ?1 AND kind != 'pruned'",
                params![cutoff],
            )
            .map_err(err)?;
            conn.execute(
                "DELETE FROM runs WHERE ended_ns IS NOT NULL AND ended_ns < ?1 \
                 AND id != (SELECT max(id) FROM runs)",
                params![cutoff],
            )
            .map_err(err)?;
        }
        if let Some(limit) = w.opts.retention_bytes {
            for _ in 0..16 {
                let used = used_bytes(conn).map_err(err)?;
                if used <= limit {
                    break;
                }
                if budget == 0 {
                    more = true;
                    break;
                }
                let count: i64 = conn
                    .query_row("SELECT value FROM meta WHERE key = 'events'", [], |r| {
                        r.get(0)
                    })
                    .map_err(err)?;
                if count <= 0 {
                    break;
                }
                let target = limit / 10 * 9;
                let per_event = (used / count as u64).max(1);
                let n = (used.saturating_sub(target) / per_event).clamp(1, budget);
                let upto = nth_oldest(n - 1).map_err(err)?.unwrap_or(i64::MAX);
                let (n, f, l) = w.delete_upto(conn, upto, "size", t).map_err(err)?;
                if n == 0 {
                    break;
                }
                by_size += n;
                budget = budget.saturating_sub(n);
                from = from.min(f);
                to = to.max(l);
            }
            if file_bytes(conn).map_err(err)? > limit {
                // Give the free pages back to the filesystem.
                step_all(conn, "PRAGMA incremental_vacuum").map_err(err)?;
            }
        }
        if by_age + by_size == 0 {
            return Ok(None);
        }
        let after = used_bytes(conn).map_err(err)?;
        Ok(Some(PruneReport {
            removed: by_age + by_size,
            removed_by_age: by_age,
            removed_by_size: by_size,
            from: codec::format_time(from),
            to: codec::format_time(to),
            bytes_before: before,
            bytes_after: after,
            more,
        }))
    }
}

impl StoreError {
    /// The loss record being written when a write failed is not stored either.
    fn with_loss(self, w: &mut Writer, loss: &LossEvent, t: i64) -> StoreError {
        if let Some(u) = &mut w.unstored {
            for (k, n) in &loss.kinds {
                u.add(k.name(), *n, t);
            }
        }
        self
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Best effort: what was appended is kept (it was not acknowledged; a crash would have
        // lost it). The run stays open: the next start records an unclean stop.
        if let Some(w) = self.writer.as_deref_mut()
            && w.in_txn
        {
            let _ = w.commit(&self.conn);
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
        }
    }
}
