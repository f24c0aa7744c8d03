//! The daemon's store: opened whatever state the store is in, so that capture goes on.
//!
//! * Corrupt (see [`Corruption`]): the database and its `-wal`/`-shm` are moved aside to
//!   `NAME.corrupt-<time>` (kept for forensics, never deleted), a new store is started, and
//!   the reset is a `store_reset` gap in it and a warning in the log.
//! * A full disk (the store cannot be created, or its WAL index cannot grow): the daemon runs
//!   degraded from the start, as when the disk fills while it runs: what it cannot store is
//!   counted, the store is tried again every [`STORE_RETRY`], and the count becomes a
//!   `store_full` gap once it can write.
//! * A store from a newer ctrwatch, another program's database, a store another daemon holds
//!   (after [`crate::DEFAULT_LOCK_WAIT`]), an unsafe directory: errors, nothing moved.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ctrwatch_event::{FileEvent, Gap, GapKind, LossEvent, escape_bytes};

use super::access::{self, StoreLock, sibling};
use super::rows::now_ns;
use super::write::Unstored;
use super::{PruneReport, Store, StoreError, StoreOptions, ns, schema};

/// While the store cannot be opened (full disk), it is tried again this often.
pub const STORE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// The daemon's writer: the open store, or a count of what could not be stored while it
/// cannot be opened. Same calls as [`Store`]'s writer side.
pub struct DaemonStore {
    /// The path the daemon was given.
    requested: PathBuf,
    opts: StoreOptions,
    state: State,
    /// When the daemon's run began ([`DaemonStore::begin_run`]): a store opened later records
    /// the run from then.
    run_started: Option<SystemTime>,
    /// The run continues the capture of the previous one ([`DaemonStore::begin_adopted_run`]).
    run_adopted: bool,
    /// A corrupt store moved aside at start: written as a gap once the run has begun.
    reset: Option<Gap>,
    next_try: Instant,
    /// The ring buffer the events come from ([`Store::set_ring`]), for a store opened later.
    ring: Option<String>,
}

enum State {
    Open(Box<Store>),
    /// Not open: counting. The lock is kept when it was taken (the database exists).
    Unavailable {
        lock: Option<Arc<StoreLock>>,
        unstored: Unstored,
    },
}

impl From<Store> for DaemonStore {
    fn from(store: Store) -> DaemonStore {
        DaemonStore {
            requested: store.path().to_path_buf(),
            opts: StoreOptions::default(),
            state: State::Open(Box::new(store)),
            run_started: None,
            run_adopted: false,
            reset: None,
            next_try: Instant::now(),
            ring: None,
        }
    }
}

/// Why a store is corrupt. Precisely: not a SQLite database (`SQLITE_NOTADB`), damaged
/// (`SQLITE_CORRUPT` while opening it or beginning the run: truncated, malformed pages), or
/// failing `PRAGMA quick_check` after an unclean stop (when damage is likeliest; a full check
/// at every start would cost ~1.5 s per 256 MiB, see docs/store.md). A sound SQLite database
/// of another program is not corrupt (it is refused, not moved), nor is a store from a newer
/// ctrwatch.
struct Corruption(String);

impl DaemonStore {
    /// Opens the store at `path` for the daemon: waits for another writer's lock up to
    /// `opts.lock_wait`; moves a corrupt store aside and starts a new one; on a full disk,
    /// returns a store that counts until it can write.
    pub fn open(path: impl AsRef<Path>, opts: StoreOptions) -> Result<DaemonStore, StoreError> {
        let mut ds = DaemonStore {
            requested: path.as_ref().to_path_buf(),
            opts,
            state: State::Unavailable {
                lock: None,
                unstored: Unstored::new(GapKind::StoreFull, String::new(), now_ns()),
            },
            run_started: None,
            run_adopted: false,
            reset: None,
            next_try: Instant::now(),
            ring: None,
        };
        match ds.attempt(None)? {
            Ok(store) => ds.state = State::Open(Box::new(store)),
            Err((lock, why)) => {
                log::warn!(
                    "{why}: capturing anyway; what cannot be stored is counted and recorded as \
                     a gap once the store can be written (tried again every {} s)",
                    STORE_RETRY.as_secs()
                );
                ds.state = State::Unavailable {
                    lock,
                    unstored: Unstored::new(GapKind::StoreFull, why.to_string(), now_ns()),
                };
                ds.next_try = Instant::now() + STORE_RETRY;
            }
        }
        Ok(ds)
    }

    /// One try at opening the store (holding `lock` if an earlier try took it). Ok(Err) when
    /// the disk is full: the lock if taken, and the error.
    #[allow(clippy::type_complexity)]
    fn attempt(
        &mut self,
        lock: Option<Arc<StoreLock>>,
    ) -> Result<Result<Store, (Option<Arc<StoreLock>>, StoreError)>, StoreError> {
        let lock = match lock {
            Some(l) => l,
            None => match access::prepare_writer(&self.requested, &self.opts) {
                Ok((_, l)) => Arc::new(l),
                Err(e @ StoreError::Full { .. }) => return Ok(Err((None, e))),
                Err(e) => return Err(e),
            },
        };
        let db = lock.db().to_path_buf();
        let corruption = match Store::open_locked(db.clone(), self.opts.clone(), lock.clone()) {
            Ok(store) => match check_after_unclean_stop(&store) {
                None => return Ok(Ok(store)),
                Some(c) => {
                    store.close_as_is();
                    c
                }
            },
            Err(e @ StoreError::Full { .. }) => return Ok(Err((Some(lock), e))),
            Err(StoreError::Corrupt { detail, .. }) => {
                if let Some(owner) = foreign(&db) {
                    return Err(StoreError::Unsafe {
                        path: db,
                        detail: format!(
                            "this is not a ctrwatch store but another program's SQLite \
                             database ({owner}): it is left as it is; give ctrwatch its own \
                             --store"
                        ),
                    });
                }
                Corruption(detail)
            }
            Err(e) => return Err(e),
        };
        match self.move_aside(&db, corruption)? {
            Some(new_lock) => {
                // The old database's lock goes; a new store that is corrupt at once is an
                // error, not another reset.
                drop(lock);
                self.attempt_new(new_lock)
            }
            // The old database's lock is no use: the next try creates and locks a new one.
            None => Ok(Err((None, StoreError::Full { path: db }))),
        }
    }

    /// Opens the new store started after a reset.
    #[allow(clippy::type_complexity)]
    fn attempt_new(
        &mut self,
        lock: Arc<StoreLock>,
    ) -> Result<Result<Store, (Option<Arc<StoreLock>>, StoreError)>, StoreError> {
        match Store::open_locked(lock.db().to_path_buf(), self.opts.clone(), lock.clone()) {
            Ok(store) => Ok(Ok(store)),
            Err(e @ StoreError::Full { .. }) => Ok(Err((Some(lock), e))),
            Err(e) => Err(e),
        }
    }

    /// Moves the corrupt database `db` (and its -wal, -shm) aside, notes the reset, and
    /// creates and locks a new database. None: the new one cannot be created (disk full).
    fn move_aside(
        &mut self,
        db: &Path,
        why: Corruption,
    ) -> Result<Option<Arc<StoreLock>>, StoreError> {
        let last_known = last_known_time(db);
        let moved = move_aside(db)?;
        let now = SystemTime::now();
        let to = ns(now);
        let from = last_known.unwrap_or(to).min(to);
        let name = moved
            .file_name()
            .map(|n| escape_bytes(std::os::unix::ffi::OsStrExt::as_bytes(n)))
            .unwrap_or_default();
        log::warn!(
            "event store {} is corrupt ({}): moved to {}; starting a new store (the reset is \
             recorded as a store_reset gap)",
            show(db),
            why.0,
            show(&moved)
        );
        self.reset = Some(Gap {
            kind: GapKind::StoreReset,
            from_ns: from,
            to_ns: to,
            lost: None,
            kinds: Default::default(),
            reason: Some(format!(
                "corrupt store moved to {name} ({}); its history ends {}",
                why.0,
                if last_known.is_some() {
                    "at `from`"
                } else {
                    "at an unknown time before `to`"
                }
            )),
            recorded_ns: to,
        });
        // The database's real path (not a symlink that now points to nothing).
        match access::prepare_writer(db, &self.opts) {
            Ok((_, lock)) => Ok(Some(Arc::new(lock))),
            Err(StoreError::Full { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records the daemon's start (see [`Store::begin_run`]); while the store cannot be
    /// opened, remembers the time and records it once it opens. Some: the previous run ended
    /// uncleanly.
    pub fn begin_run(&mut self, now: SystemTime) -> Result<Option<Gap>, StoreError> {
        self.run_started = Some(now);
        self.run_adopted = false;
        self.begin_open_run(now, true)
    }

    /// [`DaemonStore::begin_run`] for a daemon that adopted the previous one's pinned programs
    /// (see [`Store::begin_adopted_run`]).
    pub fn begin_adopted_run(&mut self, now: SystemTime) -> Result<Option<Gap>, StoreError> {
        self.run_started = Some(now);
        self.run_adopted = true;
        self.begin_open_run(now, true)
    }

    /// `begin_run` on the open store; damage found there (the runs table) is reset like
    /// damage found at open, once (`may_reset`).
    fn begin_open_run(
        &mut self,
        now: SystemTime,
        may_reset: bool,
    ) -> Result<Option<Gap>, StoreError> {
        let State::Open(store) = &mut self.state else {
            return Ok(None);
        };
        let begun = if self.run_adopted {
            store.begin_adopted_run(now)
        } else {
            store.begin_run(now)
        };
        match begun {
            Ok(gap) => {
                self.record_reset();
                Ok(gap)
            }
            Err(e @ StoreError::Full { .. }) => {
                log::warn!(
                    "{e}: capturing anyway; what cannot be stored is counted and recorded as a \
                     gap once the store can be written (tried again every {} s)",
                    STORE_RETRY.as_secs()
                );
                self.become_unavailable(e);
                Ok(None)
            }
            Err(StoreError::Corrupt { path, detail }) if may_reset => {
                let State::Open(store) = std::mem::replace(&mut self.state, placeholder()) else {
                    return Err(StoreError::Corrupt { path, detail });
                };
                let old_lock = store.close_as_is();
                let new_lock = self.move_aside(&path, Corruption(detail))?;
                drop(old_lock);
                match new_lock {
                    Some(lock) => match self.attempt_new(lock)? {
                        Ok(s) => self.state = State::Open(Box::new(s)),
                        Err((l, e)) => self.unavailable_with(l, e),
                    },
                    None => self.unavailable_with(None, StoreError::Full { path }),
                }
                self.begin_open_run(now, false)
            }
            Err(e) => Err(e),
        }
    }

    fn unavailable_with(&mut self, lock: Option<Arc<StoreLock>>, e: StoreError) {
        self.state = State::Unavailable {
            lock,
            unstored: Unstored::new(GapKind::StoreFull, e.to_string(), now_ns()),
        };
        self.next_try = Instant::now() + STORE_RETRY;
    }

    /// The open store gave up at begin_run (disk full): close it, keep its lock, count.
    fn become_unavailable(&mut self, e: StoreError) {
        let old = std::mem::replace(&mut self.state, placeholder());
        let lock = match old {
            State::Open(store) => store.close_as_is(),
            State::Unavailable { lock, .. } => lock,
        };
        self.unavailable_with(lock, e);
    }

    /// Writes the pending reset gap (best effort: the reset was also logged).
    fn record_reset(&mut self) {
        if let (Some(gap), State::Open(store)) = (&self.reset, &mut self.state) {
            match store.record_gap(gap) {
                Ok(()) => self.reset = None,
                Err(e) => log::warn!("recording the store reset: {e}"),
            }
        }
    }

    /// Unavailable: tries to open the store again (at most every [`STORE_RETRY`]). On success,
    /// begins the run from when the daemon began it, records the reset and carries the count
    /// over (written as a gap by the next flush).
    fn retry(&mut self) -> Result<(), StoreError> {
        if Instant::now() < self.next_try {
            return Ok(());
        }
        self.next_try = Instant::now() + STORE_RETRY;
        let State::Unavailable { lock, .. } = &mut self.state else {
            return Ok(());
        };
        let lock = lock.take();
        match self.attempt(lock)? {
            Ok(store) => {
                let mut store = store;
                if let Some(ring) = &self.ring {
                    store.set_ring(ring.clone());
                }
                let old = std::mem::replace(&mut self.state, State::Open(Box::new(store)));
                let started = self.run_started.unwrap_or_else(SystemTime::now);
                if let Some(gap) = self.begin_open_run(started, true)? {
                    log::warn!("the previous run did not stop cleanly: {gap}");
                }
                let State::Unavailable {
                    unstored: counted, ..
                } = old
                else {
                    return Ok(());
                };
                match &mut self.state {
                    State::Open(store) => {
                        log::warn!(
                            "event store {} can be written again: {} records could not be \
                             stored (recorded as a {} gap)",
                            show(&self.requested),
                            counted.lost,
                            counted.kind
                        );
                        store.carry_unstored(counted);
                    }
                    // Full again at begin_run: keep counting.
                    State::Unavailable { unstored, .. } => unstored.absorb(counted),
                }
                Ok(())
            }
            Err((lock, e)) => {
                if let State::Unavailable { lock: mine, .. } = &mut self.state {
                    *mine = lock;
                }
                Err(e)
            }
        }
    }

    /// See [`Store::set_ring`]; also for a store opened later.
    pub fn set_ring(&mut self, ring: String) {
        if let State::Open(store) = &mut self.state {
            store.set_ring(ring.clone());
        }
        self.ring = Some(ring);
    }

    /// See [`Store::note_ring_through`].
    pub fn note_ring_through(&mut self, through: u64) {
        if let State::Open(store) = &mut self.state {
            store.note_ring_through(through);
        }
    }

    /// See [`Store::ring_mark`]; None while the store cannot be opened.
    pub fn ring_mark(&self) -> Result<Option<crate::RingMark>, StoreError> {
        match &self.state {
            State::Open(store) => store.ring_mark(),
            State::Unavailable { .. } => Ok(None),
        }
    }

    /// See [`Store::append_event`]; counted while the store cannot be opened.
    pub fn append_event(&mut self, ev: &FileEvent) -> Result<(), StoreError> {
        match &mut self.state {
            State::Open(store) => store.append_event(ev),
            State::Unavailable { unstored, .. } => {
                unstored.add(ev.op.name(), 1, ev.time_ns);
                Ok(())
            }
        }
    }

    /// See [`Store::append_loss`]; counted while the store cannot be opened.
    pub fn append_loss(&mut self, loss: &LossEvent) -> Result<(), StoreError> {
        match &mut self.state {
            State::Open(store) => store.append_loss(loss),
            State::Unavailable { unstored, .. } => {
                for (k, n) in &loss.kinds {
                    unstored.add(k.name(), *n, loss.to_ns);
                }
                Ok(())
            }
        }
    }

    /// See [`Store::flush`]; while the store cannot be opened, tries it again (every
    /// [`STORE_RETRY`]) and returns [`StoreError::Full`] until it opens.
    pub fn flush(&mut self) -> Result<usize, StoreError> {
        if matches!(self.state, State::Unavailable { .. }) {
            self.retry()?;
        }
        match &mut self.state {
            State::Open(store) => store.flush(),
            State::Unavailable { .. } => Err(StoreError::Full {
                path: self.requested.clone(),
            }),
        }
    }

    /// See [`Store::heartbeat`].
    pub fn heartbeat(&mut self, now: SystemTime) -> Result<(), StoreError> {
        match &mut self.state {
            State::Open(store) => store.heartbeat(now),
            State::Unavailable { .. } => Ok(()),
        }
    }

    /// See [`Store::heartbeat_with_status`].
    pub fn heartbeat_with_status(
        &mut self,
        now: SystemTime,
        status: &str,
    ) -> Result<(), StoreError> {
        match &mut self.state {
            State::Open(store) => store.heartbeat_with_status(now, status),
            State::Unavailable { .. } => Ok(()),
        }
    }

    /// See [`Store::set_retention`]; also for a store opened later (after a failure).
    pub fn set_retention(&mut self, age: Option<std::time::Duration>, bytes: Option<u64>) {
        self.opts.retention_age = age;
        self.opts.retention_bytes = bytes;
        if let State::Open(store) = &mut self.state {
            store.set_retention(age, bytes);
        }
    }

    /// See [`Store::prune`].
    pub fn prune(&mut self, now: SystemTime) -> Result<Option<PruneReport>, StoreError> {
        match &mut self.state {
            State::Open(store) => store.prune(now),
            State::Unavailable { .. } => Ok(None),
        }
    }

    /// See [`Store::end_run`]. A store that still cannot be opened is tried once more; if it
    /// still cannot, what was counted is only logged.
    pub fn end_run(&mut self, now: SystemTime) -> Result<(), StoreError> {
        if matches!(self.state, State::Unavailable { .. }) {
            self.next_try = Instant::now();
            let _ = self.retry();
        }
        match &mut self.state {
            State::Open(store) => store.end_run(now),
            State::Unavailable { unstored, .. } => {
                log::warn!(
                    "event store {} could not be written during this run: {} records were not \
                     stored",
                    show(&self.requested),
                    unstored.lost
                );
                Ok(())
            }
        }
    }

    /// See [`Store::unstored`]: Some while degraded (disk full), also before the store
    /// could be opened at all.
    pub fn unstored(&self) -> Option<u64> {
        match &self.state {
            State::Open(store) => store.unstored(),
            State::Unavailable { unstored, .. } => Some(unstored.lost),
        }
    }

    /// The open store, if it is open.
    pub fn store(&self) -> Option<&Store> {
        match &self.state {
            State::Open(store) => Some(store),
            State::Unavailable { .. } => None,
        }
    }

    /// The open store to write, if it is open.
    pub(crate) fn store_mut(&mut self) -> Option<&mut Store> {
        match &mut self.state {
            State::Open(store) => Some(store),
            State::Unavailable { .. } => None,
        }
    }

    /// The path the daemon was given.
    pub fn requested_path(&self) -> &Path {
        &self.requested
    }
}

/// What `state` holds while it is being replaced.
fn placeholder() -> State {
    State::Unavailable {
        lock: None,
        unstored: Unstored::new(GapKind::StoreFull, String::new(), now_ns()),
    }
}

fn show(p: &Path) -> String {
    escape_bytes(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
}

/// After an unclean stop (crash, kill -9, power loss), `PRAGMA quick_check`: Some when it
/// finds damage. A check that cannot run (an I/O error) is logged and the store used: the
/// writer will meet the same error and count what it cannot store.
fn check_after_unclean_stop(store: &Store) -> Option<Corruption> {
    let unclean = match store.last_run_unclean() {
        Ok(u) => u,
        Err(StoreError::Corrupt { detail, .. }) => return Some(Corruption(detail)),
        Err(e) => {
            log::warn!("checking how the last run ended: {e}");
            return None;
        }
    };
    if !unclean {
        return None;
    }
    let started = Instant::now();
    let found = match store.quick_check() {
        Ok(found) => found,
        Err(StoreError::Corrupt { detail, .. }) => return Some(Corruption(detail)),
        Err(e) => {
            log::warn!("checking the store after an unclean stop: {e}");
            return None;
        }
    };
    log::info!(
        "checked {} after an unclean stop in {:.1} s: {}",
        show(store.path()),
        started.elapsed().as_secs_f64(),
        found.join("; ")
    );
    if found.len() == 1 && found[0] == "ok" {
        None
    } else {
        Some(Corruption(format!("quick_check: {}", found.join("; "))))
    }
}

/// Some(description) when `db` is a sound SQLite database of another program: another
/// `application_id` (or none) and none of the store's tables.
fn foreign(db: &Path) -> Option<String> {
    let conn = schema::connect(db, false).ok()?;
    let _ = conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    );
    let ok: String = conn
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .ok()?;
    if ok != "ok" {
        return None;
    }
    let app: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .ok()?;
    let ours: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' \
             AND name IN ('events', 'runs', 'gaps', 'meta', 'procs')",
            [],
            |r| r.get(0),
        )
        .ok()?;
    (app != schema::APPLICATION_ID && ours == 0).then(|| format!("application_id {app:#x}"))
}

/// The newest time the corrupt store is known to have recorded (its last heartbeat, stop or
/// event), if that much of it can be read; else when its files were last written.
fn last_known_time(db: &Path) -> Option<i64> {
    let from_db = (|| {
        let conn = schema::connect(db, false).ok()?;
        let _ = conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        );
        let run: Option<i64> = conn
            .query_row(
                "SELECT max(heartbeat_ns, coalesce(ended_ns, 0)) FROM runs \
                 ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .ok();
        let event: Option<i64> = conn
            .query_row("SELECT max(id) FROM events", [], |r| r.get(0))
            .ok()
            .flatten();
        run.into_iter().chain(event).max()
    })();
    from_db.or_else(|| {
        ["", "-wal"]
            .iter()
            .filter_map(|s| std::fs::metadata(sibling(db, s)).ok())
            .filter_map(|m| m.modified().ok())
            .map(ns)
            .max()
    })
}

/// Renames `db`, then its `-wal` and `-shm`, to `NAME.corrupt-<UTC time>` (`…-wal`, `…-shm`:
/// SQLite finds the WAL under the new name), never replacing a file. The WAL goes first: a
/// new database must never meet the old one's WAL.
fn move_aside(db: &Path) -> Result<PathBuf, StoreError> {
    let io = |e: std::io::Error| StoreError::Io {
        path: db.to_path_buf(),
        source: e,
    };
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    for n in 0..100 {
        let suffix = if n == 0 {
            format!(".corrupt-{stamp}")
        } else {
            format!(".corrupt-{stamp}.{n}")
        };
        let target = sibling(db, &suffix);
        let taken = ["", "-wal", "-shm"]
            .iter()
            .any(|s| std::fs::symlink_metadata(sibling(&target, s)).is_ok());
        if taken {
            continue;
        }
        for s in ["-wal", "-shm", ""] {
            match rename_noreplace(&sibling(db, s), &sibling(&target, s)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !s.is_empty() => {}
                Err(e) => return Err(io(e)),
            }
        }
        return Ok(target);
    }
    Err(io(std::io::Error::from(std::io::ErrorKind::AlreadyExists)))
}

fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let f = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let t = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    // The system call itself: musl's libc (the static build, `cargo xtask deb`) has no
    // renameat2 wrapper before musl 1.2.5.
    // SAFETY: valid C strings; renameat2 has no other preconditions.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINVAL) {
        // A filesystem without RENAME_NOREPLACE: the name was checked free just before, in a
        // directory only root writes.
        if std::fs::symlink_metadata(to).is_ok() {
            return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
        }
        return std::fs::rename(from, to);
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::process::Command;

    use super::*;
    use ctrwatch_store_bench::{BenchScenario, synthetic_events};

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "ctrwatch-start-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("dir");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            Dir(p)
        }
        fn db(&self) -> PathBuf {
            self.0.join("events.db")
        }
        /// Names in the directory starting with `events.db.corrupt-`.
        fn moved(&self) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&self.0)
                .expect("read_dir")
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("events.db.corrupt-"))
                .filter(|n| !n.ends_with("-wal") && !n.ends_with("-shm"))
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn opts() -> StoreOptions {
        StoreOptions {
            retention_age: None,
            retention_bytes: None,
            lock_wait: std::time::Duration::ZERO,
            ..StoreOptions::default()
        }
    }

    /// A store with `n` events, stopped cleanly (everything in the main file).
    fn store_with_events(db: &Path, n: u64) {
        let mut s = Store::open(db, opts()).expect("open");
        s.begin_run(SystemTime::now()).expect("run");
        for ev in synthetic_events(BenchScenario::Mixed, n, 3) {
            s.append_event(&ev).expect("append");
        }
        s.end_run(SystemTime::now()).expect("end");
    }

    fn raw(db: &Path) -> rusqlite::Connection {
        rusqlite::Connection::open(db).expect("raw")
    }

    #[test]
    fn a_store_from_a_newer_ctrwatch_is_refused_and_left_in_place() {
        let dir = Dir::new("newer");
        store_with_events(&dir.db(), 10);
        raw(&dir.db())
            .execute_batch("PRAGMA user_version = 99")
            .expect("bump");
        let before = std::fs::read(dir.db()).expect("read");
        match DaemonStore::open(dir.db(), opts()) {
            Err(StoreError::NewerSchema { found: 99, .. }) => {}
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(dir.moved().is_empty());
        assert_eq!(std::fs::read(dir.db()).expect("read"), before);
    }

    #[test]
    fn another_programs_database_is_refused_and_left_in_place() {
        let dir = Dir::new("foreign");
        raw(&dir.db())
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .expect("foreign");
        match DaemonStore::open(dir.db(), opts()) {
            Err(StoreError::Unsafe { detail, .. }) => {
                assert!(detail.contains("another program's"), "{detail}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(dir.moved().is_empty());
        let n: i64 = raw(&dir.db())
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("still there");
        assert_eq!(n, 1);
    }

    /// Damage that opening and beginning a run do not read (an index of the events) is found
    /// by the check after an unclean stop, not after a clean one.
    #[test]
    fn damage_is_looked_for_after_an_unclean_stop() {
        let dir = Dir::new("unclean");
        store_with_events(&dir.db(), 20_000);
        let (root_page, page_size): (i64, i64) = {
            let c = raw(&dir.db());
            let root = c
                .query_row(
                    "SELECT rootpage FROM sqlite_master WHERE name = 'events_seg_path'",
                    [],
                    |r| r.get(0),
                )
                .expect("index root");
            let ps = c
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .expect("page size");
            (root, ps)
        };
        let damage = || {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.db())
                .expect("open");
            f.seek(SeekFrom::Start(((root_page - 1) * page_size) as u64))
                .expect("seek");
            f.write_all(&vec![0xa5; page_size as usize])
                .expect("garbage");
        };
        damage();
        // After a clean stop: not looked for (a full check would delay every start).
        let mut ds = DaemonStore::open(dir.db(), opts()).expect("clean stop: opens");
        ds.begin_run(SystemTime::now()).expect("run");
        ds.end_run(SystemTime::now()).expect("end");
        drop(ds);
        assert!(dir.moved().is_empty());
        // An unclean stop (the last run never ended): checked, moved aside, a new store.
        {
            let c = raw(&dir.db());
            c.execute_batch(
                "UPDATE runs SET ended_ns = NULL WHERE id = (SELECT max(id) FROM runs); \
                 PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .expect("unclean");
        }
        damage();
        let mut ds = DaemonStore::open(dir.db(), opts()).expect("unclean stop: opens");
        assert_eq!(dir.moved().len(), 1, "{:?}", dir.moved());
        assert_eq!(ds.begin_run(SystemTime::now()).expect("run"), None);
        let store = ds.store().expect("open");
        assert_eq!(store.stats().expect("stats").events, 0);
        let gaps = store.gaps(None, None).expect("gaps");
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!(gaps[0].kind, GapKind::StoreReset);
        let reason = gaps[0].reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains(&dir.moved()[0]) && reason.contains("quick_check"),
            "{reason}"
        );
        // Its history ended at its last run's heartbeat, read from the damaged file.
        assert!(gaps[0].from_ns < gaps[0].to_ns, "{gaps:?}");
    }

    /// Hardlinks and symlinks to the database take the same lock.
    #[test]
    fn every_name_of_the_database_takes_the_same_lock() {
        let dir = Dir::new("names");
        let _first = Store::open(dir.db(), opts()).expect("first");
        let hard = dir.0.join("hard.db");
        std::fs::hard_link(dir.db(), &hard).expect("link");
        let sym = dir.0.join("sym.db");
        std::os::unix::fs::symlink(dir.db(), &sym).expect("symlink");
        for other in [&hard, &sym] {
            match Store::open(other, opts()) {
                Err(StoreError::Locked { detail, .. }) => {
                    assert!(
                        detail.contains(&format!("pid {}", std::process::id())),
                        "{detail}"
                    )
                }
                r => panic!("{}: {:?}", other.display(), r.map(|_| ())),
            }
        }
    }

    /// A full disk at start: the daemon's store counts, and records the count once space
    /// returns (a 1 MiB tmpfs).
    #[test]
    fn a_full_disk_at_start_is_counted_and_recorded() {
        let dir = Dir::new("full");
        let mnt = dir.0.join("mnt");
        std::fs::create_dir_all(&mnt).expect("mnt");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"])
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        assert!(mounted, "mounting a tmpfs (root needed)");
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
        let _unmount = Unmount(mnt.clone());
        let filler = mnt.join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).expect("filler");
            while f.write_all(&[0u8; 4096]).is_ok() {}
        }
        let db = mnt.join("store/events.db");
        let mut ds = DaemonStore::open(&db, opts()).expect("opens on a full disk");
        assert!(ds.store().is_none());
        assert_eq!(ds.begin_run(SystemTime::now()).expect("run"), None);
        let events: Vec<FileEvent> = synthetic_events(BenchScenario::Mixed, 50, 5).collect();
        for ev in &events {
            ds.append_event(ev).expect("counted");
        }
        assert_eq!(ds.unstored(), Some(50));
        ds.next_try = Instant::now();
        assert!(matches!(ds.flush(), Err(StoreError::Full { .. })));
        std::fs::remove_file(&filler).expect("free");
        ds.next_try = Instant::now();
        ds.flush().expect("opens once space returns");
        assert_eq!(ds.unstored(), None);
        for ev in &events[..10] {
            ds.append_event(ev).expect("stored");
        }
        ds.flush().expect("flush");
        let store = ds.store().expect("open");
        assert_eq!(store.stats().expect("stats").events, 10);
        let gaps = store.gaps(None, None).expect("gaps");
        let full: Vec<&Gap> = gaps
            .iter()
            .filter(|g| g.kind == GapKind::StoreFull)
            .collect();
        assert_eq!(full.len(), 1, "{gaps:?}");
        assert_eq!(full[0].lost, Some(50));
        assert_eq!(full[0].kinds.values().sum::<u64>(), 50);
        ds.end_run(SystemTime::now()).expect("end");
    }
}
