//! Who may reach the store, and one writer per database.
//!
//! * The store's directory is 0700 and its files (database, `-wal`, `-shm`) 0600, or 0750 and
//!   0640 owned by the readers' group (`ctrwatch run --store-group`): the history holds every
//!   command line, which may carry secrets. Modes are set explicitly (the umask does not
//!   matter) and an existing store left too open is tightened, saying so. A directory owned by
//!   another user, or writable by others, is refused: they could replace the store's files.
//! * The writer's lock is keyed by the database's (device, inode), in [`LOCK_DIR`] which only
//!   root can open: every name of the database (hardlinks, symlinks, bind mounts) takes the
//!   same lock, and no other user can take it or hold it. Readers never take it.
//!
//! See docs/store.md ("Files, modes and the writer's lock").

use std::ffi::{CString, OsStr};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{StoreError, StoreOptions};
use ctrwatch_event::escape_bytes;

/// Where writers' locks live: one file per database, named after its device and inode. Only
/// root can open it (0700), so no other user can take or hold a lock. On tmpfs: emptied at
/// boot, when no writer can be running.
pub const LOCK_DIR: &str = "/run/ctrwatch";
/// How long `ctrwatch run` waits for another writer's lock before giving up: a daemon killed
/// with -9 holds it until the kernel has closed its files, which takes a few seconds while its
/// eBPF programs are detached.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting writer tries the lock again.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// The group whose members may read the store (besides root).
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreGroup {
    pub gid: u32,
    /// The name it was given by, if any (for messages).
    pub name: Option<String>,
}

impl StoreGroup {
    /// A group name from the group database, or a numeric gid.
    pub fn resolve(text: &str) -> Result<StoreGroup, String> {
        if let Ok(gid) = text.parse::<u32>() {
            return Ok(StoreGroup { gid, name: None });
        }
        let name = CString::new(text).map_err(|_| format!("{text:?} is not a group name"))?;
        let mut buf = vec![0u8; 4096];
        loop {
            // SAFETY: `group` and `buf` outlive the call; `found` is set to null or to `group`.
            let mut group: libc::group = unsafe { std::mem::zeroed() };
            let mut found: *mut libc::group = std::ptr::null_mut();
            let rc = unsafe {
                libc::getgrnam_r(
                    name.as_ptr(),
                    &mut group,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut found,
                )
            };
            if rc == libc::ERANGE && buf.len() < 1 << 20 {
                buf.resize(buf.len() * 4, 0);
                continue;
            }
            if rc != 0 {
                return Err(format!(
                    "looking up group {text:?}: {}",
                    std::io::Error::from_raw_os_error(rc)
                ));
            }
            if found.is_null() {
                return Err(format!(
                    "no group named {text:?} (create it with `groupadd {text}`, or give a numeric gid)"
                ));
            }
            return Ok(StoreGroup {
                gid: group.gr_gid,
                name: Some(text.to_string()),
            });
        }
    }
}

impl std::fmt::Display for StoreGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "group {n} ({})", self.gid),
            None => write!(f, "group {}", self.gid),
        }
    }
}

/// The store directory's mode: root only, or root and the readers' group.
pub(crate) fn dir_mode(group: Option<&StoreGroup>) -> u32 {
    if group.is_some() { 0o750 } else { 0o700 }
}

/// The store files' mode (database, -wal, -shm; SQLite gives the -wal and -shm the database's
/// mode and owner when it creates them).
pub(crate) fn file_mode(group: Option<&StoreGroup>) -> u32 {
    if group.is_some() { 0o640 } else { 0o600 }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn show(p: &Path) -> String {
    escape_bytes(p.as_os_str().as_bytes())
}

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        StoreError::Full {
            path: path.to_path_buf(),
        }
    } else {
        StoreError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

fn unsafe_dir(store: &Path, detail: String) -> StoreError {
    StoreError::Unsafe {
        path: store.to_path_buf(),
        detail,
    }
}

/// `path` with `suffix` appended to its last component (`events.db` + `-wal`).
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn chown_gid(path: &Path, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, None, Some(gid))
}

/// Creates the missing directories of `dir` with the store directory's mode and group.
fn create_dirs(store: &Path, dir: &Path, group: Option<&StoreGroup>) -> Result<(), StoreError> {
    let mut missing = Vec::new();
    let mut cur = dir;
    while std::fs::symlink_metadata(cur).is_err() {
        missing.push(cur);
        match cur.parent() {
            Some(p) if !p.as_os_str().is_empty() => cur = p,
            _ => break,
        }
    }
    let mode = dir_mode(group);
    for d in missing.into_iter().rev() {
        match DirBuilder::new().mode(mode).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(store, e)),
        }
        // The umask may have taken bits away; the group is the readers'.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_err(store, e))?;
        if let Some(g) = group {
            chown_gid(d, g.gid).map_err(|e| io_err(store, e))?;
        }
        log::info!("created the store directory {} (mode {mode:04o})", show(d));
    }
    Ok(())
}

/// Whether the directory holds nothing but this store's files (`NAME`, `NAME-wal`,
/// `NAME.corrupt-…`...): then its mode is the store's to set. A directory shared with other
/// files (`/var/lib`, a test's scratch directory) is left as it is; the files' own modes
/// protect the store there.
fn dedicated(dir: &Path, name: &OsStr) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        if !entry?.file_name().as_bytes().starts_with(name.as_bytes()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Checks the store directory's owner and mode; tightens a dedicated one left too open.
fn secure_dir(
    store: &Path,
    dir: &Path,
    name: &OsStr,
    group: Option<&StoreGroup>,
) -> Result<(), StoreError> {
    let md = std::fs::symlink_metadata(dir).map_err(|e| io_err(store, e))?;
    if !md.is_dir() {
        return Err(unsafe_dir(
            store,
            format!("{} is not a directory", show(dir)),
        ));
    }
    let mode = md.mode() & 0o7777;
    if md.uid() != 0 && md.uid() != euid() {
        return Err(unsafe_dir(
            store,
            format!(
                "the store directory {} is owned by uid {}, not root: that user could replace \
                 the store's files; give a directory only root can write (chown root {0})",
                show(dir),
                md.uid()
            ),
        ));
    }
    if mode & 0o002 != 0 {
        return Err(unsafe_dir(
            store,
            format!(
                "the store directory {} is writable by all users (mode {mode:04o}): any user \
                 could replace the store's files; give a directory only root can write",
                show(dir)
            ),
        ));
    }
    if mode & 0o020 != 0 && md.gid() != 0 {
        return Err(unsafe_dir(
            store,
            format!(
                "the store directory {} is writable by group {} (mode {mode:04o}): its members \
                 could replace the store's files; chmod g-w {0}",
                show(dir),
                md.gid()
            ),
        ));
    }
    let want = dir_mode(group);
    if dedicated(dir, name).map_err(|e| io_err(store, e))? {
        if mode != want {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(want))
                .map_err(|e| io_err(store, e))?;
            log::warn!(
                "store directory {}: mode {mode:04o} changed to {want:04o} (the history is for \
                 root{} only)",
                show(dir),
                group.map(|g| format!(" and {g}")).unwrap_or_default()
            );
        }
        if let Some(g) = group
            && md.gid() != g.gid
        {
            chown_gid(dir, g.gid).map_err(|e| io_err(store, e))?;
            log::warn!(
                "store directory {}: group {} changed to {g}",
                show(dir),
                md.gid()
            );
        }
    } else if let Some(g) = group
        && mode & 0o001 == 0
        && !(mode & 0o010 != 0 && md.gid() == g.gid)
    {
        log::warn!(
            "store directory {} (mode {mode:04o}, group {}) is shared with other files and \
             left as it is, but members of {g} cannot reach the store through it",
            show(dir),
            md.gid()
        );
    }
    Ok(())
}

/// The database file the writer opens, with the directories around it created or checked.
/// A symlink at the database's name is followed (its target must exist): the lock, the WAL and
/// the modes are the target's.
fn resolve(path: &Path, group: Option<&StoreGroup>) -> Result<PathBuf, StoreError> {
    let Some(name) = path.file_name() else {
        return Err(StoreError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the store must be a file path (like /var/lib/ctrwatch/events.db)",
            ),
        });
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_dirs(path, parent, group)?;
    let dir = std::fs::canonicalize(parent).map_err(|e| io_err(path, e))?;
    let db = dir.join(name);
    match std::fs::symlink_metadata(&db) {
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::canonicalize(&db).map_err(|e| {
                unsafe_dir(
                    path,
                    format!(
                        "{} is a symlink whose target cannot be reached ({e})",
                        show(&db)
                    ),
                )
            })?;
            let tm = std::fs::metadata(&target).map_err(|e| io_err(path, e))?;
            if !tm.is_file() {
                return Err(unsafe_dir(
                    path,
                    format!("{} is not a regular file", show(&target)),
                ));
            }
            log::info!(
                "event store {} is a symlink to {}",
                show(&db),
                show(&target)
            );
            Ok(target)
        }
        Ok(m) if !m.is_file() => Err(unsafe_dir(
            path,
            format!("{} is not a regular file", show(&db)),
        )),
        _ => Ok(db),
    }
}

/// Creates the database file with the store's mode and group if it does not exist (SQLite
/// would create it 0644 minus the umask).
fn create_db_file(db: &Path, group: Option<&StoreGroup>) -> Result<(), StoreError> {
    let mode = file_mode(group);
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(db)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_err(db, e)),
    };
    // This process has no SQLite connection on a file it just created, so closing this
    // descriptor cannot drop SQLite's POSIX locks.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(db, e))?;
    if let Some(g) = group {
        std::os::unix::fs::fchown(&file, None, Some(g.gid)).map_err(|e| io_err(db, e))?;
    }
    Ok(())
}

/// Owner, type and mode of the database, `-wal` and `-shm`: regular files owned by root, with
/// the store's mode and group (an older ctrwatch left them 0644). Changes are logged.
fn secure_files(db: &Path, group: Option<&StoreGroup>) -> Result<(), StoreError> {
    let want = file_mode(group);
    for suffix in ["", "-wal", "-shm"] {
        let p = sibling(db, suffix);
        let md = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(db, e)),
        };
        if !md.is_file() {
            return Err(unsafe_dir(
                db,
                format!(
                    "{} is not a regular file (a symlink?): refusing to use it",
                    show(&p)
                ),
            ));
        }
        if md.uid() != 0 && md.uid() != euid() {
            return Err(unsafe_dir(
                db,
                format!(
                    "{} is owned by uid {}, not root: refusing to use it",
                    show(&p),
                    md.uid()
                ),
            ));
        }
        if suffix.is_empty() && md.nlink() > 1 {
            log::warn!(
                "event store {} has {} hard links: SQLite names its WAL after the path, so \
                 use one name for it (the writer's lock covers every name)",
                show(&p),
                md.nlink()
            );
        }
        let mode = md.mode() & 0o7777;
        if mode != want {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(want))
                .map_err(|e| io_err(db, e))?;
            log::warn!(
                "store file {}: mode {mode:04o} changed to {want:04o}",
                show(&p)
            );
        }
        if let Some(g) = group
            && md.gid() != g.gid
        {
            chown_gid(&p, g.gid).map_err(|e| io_err(db, e))?;
            log::warn!("store file {}: group {} changed to {g}", show(&p), md.gid());
        }
    }
    // The lock file of ctrwatch versions that locked by path: any user could flock it; it is
    // not used any more.
    let legacy = sibling(db, ".lock");
    if std::fs::symlink_metadata(&legacy).is_ok_and(|m| m.is_file()) {
        let _ = std::fs::remove_file(&legacy);
    }
    Ok(())
}

/// Prepares the writer's store at `path`: directories created or checked, a symlink at the
/// name resolved, the database file created, the writer's lock taken (waiting up to
/// `opts.lock_wait`), the files' modes checked. Returns the database's real path and the lock.
pub(crate) fn prepare_writer(
    path: &Path,
    opts: &StoreOptions,
) -> Result<(PathBuf, StoreLock), StoreError> {
    let group = opts.group.as_ref();
    let db = resolve(path, group)?;
    let dir = db.parent().unwrap_or(Path::new("/"));
    let name = db.file_name().unwrap_or_default();
    secure_dir(&db, dir, name, group)?;
    create_db_file(&db, group)?;
    let lock = StoreLock::acquire(&db, opts.lock_wait)?;
    secure_files(&db, group)?;
    Ok((db, lock))
}

/// The writer's lock on a database: `flock` on `LOCK_DIR/store-MAJ.MIN-INODE.lock`, keyed by
/// the database's device and inode. Released (and its file removed) when dropped.
#[derive(Debug)]
pub(crate) struct StoreLock {
    file: File,
    lock_path: PathBuf,
    /// The database it locks.
    db: PathBuf,
}

/// (device, inode) of a file.
type FileKey = (u64, u64);

fn key_of(md: &std::fs::Metadata) -> FileKey {
    (md.dev(), md.ino())
}

/// The lock directory: created 0700, and refused if another user could reach into it.
fn lock_dir(db: &Path) -> Result<PathBuf, StoreError> {
    let dir = PathBuf::from(LOCK_DIR);
    match DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io_err(db, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(db, e)),
    }
    let md = std::fs::symlink_metadata(&dir).map_err(|e| io_err(db, e))?;
    let mode = md.mode() & 0o7777;
    if !md.is_dir() || (md.uid() != 0 && md.uid() != euid()) || mode & 0o022 != 0 {
        return Err(unsafe_dir(
            db,
            format!(
                "the lock directory {LOCK_DIR} is not a directory only root can write (uid {}, \
                 mode {mode:04o}): remove it and start again",
                md.uid()
            ),
        ));
    }
    Ok(dir)
}

impl StoreLock {
    /// Takes the lock on the database `db` (which exists), waiting up to `wait` for its holder
    /// to let go. Logs once that it waits, naming the holder.
    pub(crate) fn acquire(db: &Path, wait: Duration) -> Result<StoreLock, StoreError> {
        let dir = lock_dir(db)?;
        let deadline = Instant::now() + wait;
        let mut announced = false;
        loop {
            let key = key_of(&std::fs::metadata(db).map_err(|e| io_err(db, e))?);
            let lock_path = dir.join(format!(
                "store-{}.{}-{}.lock",
                libc::major(key.0),
                libc::minor(key.0),
                key.1
            ));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&lock_path)
                .map_err(|e| io_err(db, e))?;
            // SAFETY: flock on a descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                // The holder we waited for removes the lock file when it lets go: a lock on a
                // removed file is not the one others take. And the database may have been
                // replaced meanwhile (a corrupt one moved aside): its lock is another one.
                let same_lock = std::fs::symlink_metadata(&lock_path)
                    .ok()
                    .zip(file.metadata().ok())
                    .is_some_and(|(a, b)| key_of(&a) == key_of(&b));
                let same_db = std::fs::metadata(db).is_ok_and(|m| key_of(&m) == key);
                if !(same_lock && same_db) {
                    continue;
                }
                let mut lock = StoreLock {
                    file,
                    lock_path,
                    db: db.to_path_buf(),
                };
                lock.note_holder();
                sweep(&dir, &lock.lock_path);
                return Ok(lock);
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_err(db, e));
            }
            let holder = file
                .metadata()
                .ok()
                .and_then(|m| lock_holder(&m))
                .map(|(pid, comm)| format!("pid {pid} ({comm})"))
                .unwrap_or_else(|| "another process".into());
            if Instant::now() >= deadline {
                return Err(StoreError::Locked {
                    path: db.to_path_buf(),
                    detail: format!(
                        "another writer holds it: {holder}; gave up after waiting {}",
                        humantime::format_duration(wait)
                    ),
                });
            }
            if !announced {
                log::warn!(
                    "event store {} is locked by {holder}: waiting up to {} for it",
                    show(db),
                    humantime::format_duration(wait)
                );
                announced = true;
            }
            drop(file);
            std::thread::sleep(LOCK_POLL.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// Our pid in the lock file, for a human looking at it.
    fn note_holder(&mut self) {
        let _ = self.file.set_len(0);
        let _ = writeln!(self.file, "{}", std::process::id());
    }

    /// The database this lock is for.
    pub(crate) fn db(&self) -> &Path {
        &self.db
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        // Removed while still held: a waiter that then gets the lock on the removed file sees
        // that it is gone and takes a new one (see `acquire`).
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Removes lock files nobody holds (left by writers killed with -9; a clean stop removes its
/// own). Safe for anyone who then takes such a file: a lock on a removed file is noticed and
/// taken again (see [`StoreLock::acquire`]).
fn sweep(dir: &Path, mine: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let p = entry.path();
        let is_lock = entry.file_name().as_bytes().starts_with(b"store-");
        if p == mine || !is_lock {
            continue;
        }
        let Ok(f) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&p)
        else {
            continue;
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Who holds a flock on the file `md` describes: (pid, comm) from /proc/locks.
fn lock_holder(md: &std::fs::Metadata) -> Option<(u32, String)> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let want_dev = (libc::major(md.dev()), libc::minor(md.dev()));
    for line in locks.lines() {
        // "1: FLOCK  ADVISORY  WRITE 4242 00:1a:12345 0 EOF"; blocked waiters have "->".
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || fields[1] != "FLOCK" {
            continue;
        }
        let mut id = fields[5].split(':');
        let (Some(maj), Some(min), Some(ino)) = (id.next(), id.next(), id.next()) else {
            continue;
        };
        let dev = (
            u32::from_str_radix(maj, 16).ok()?,
            u32::from_str_radix(min, 16).ok()?,
        );
        if dev != want_dev || ino.parse::<u64>().ok() != Some(md.ino()) {
            continue;
        }
        let pid: u32 = fields[4].parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_else(|_| "exited".into());
        return Some((pid, comm));
    }
    None
}

/// Whether a writer holds the lock on the database `db` (`ctrwatch status`), without taking
/// it: by the lock file's holder in /proc/locks. A writer killed with -9 holds nothing once
/// the process is gone (its lock file may remain). Only root can look into [`LOCK_DIR`]; a
/// member of the store's group gets [`WriterLock::Unknown`].
pub fn writer_lock(db: &Path) -> Result<WriterLock, StoreError> {
    let key = key_of(&std::fs::metadata(db).map_err(|e| io_err(db, e))?);
    let lock_path = Path::new(LOCK_DIR).join(format!(
        "store-{}.{}-{}.lock",
        libc::major(key.0),
        libc::minor(key.0),
        key.1
    ));
    match std::fs::symlink_metadata(&lock_path) {
        Ok(md) => Ok(match lock_holder(&md) {
            Some((pid, _)) => WriterLock::Held { pid },
            None => WriterLock::Free,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(WriterLock::Free),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Ok(WriterLock::Unknown(lock_device()))
        }
        Err(e) => Err(io_err(db, e)),
    }
}

/// The device of [`LOCK_DIR`] (major, minor), which anyone may stat.
fn lock_device() -> Option<(u32, u32)> {
    let md = std::fs::metadata(LOCK_DIR).ok()?;
    Some((libc::major(md.dev()), libc::minor(md.dev())))
}

/// Who holds the writer's lock on a store.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterLock {
    /// Held by process `pid`.
    Held { pid: u32 },
    /// Nobody holds it.
    Free,
    /// The lock directory is root's; the device it is on, to check a pid with
    /// [`holds_lock_on`].
    Unknown(Option<(u32, u32)>),
}

/// Whether `pid` holds a flock on a file of the device `dev` (/proc/locks, readable by all):
/// for a user who cannot look into [`LOCK_DIR`], the evidence that the daemon named by the
/// store's status snapshot still holds its store's lock.
pub fn holds_lock_on(pid: u32, dev: (u32, u32)) -> bool {
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return false;
    };
    locks.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || fields[1] != "FLOCK" || fields[4].parse::<u32>() != Ok(pid) {
            return false;
        }
        let mut id = fields[5].split(':');
        let (Some(maj), Some(min)) = (id.next(), id.next()) else {
            return false;
        };
        u32::from_str_radix(maj, 16) == Ok(dev.0) && u32::from_str_radix(min, 16) == Ok(dev.1)
    })
}

/// Whether this process may read `path` (no descriptor is opened: closing one would drop the
/// POSIX locks a SQLite connection of this process holds on the same file).
pub(crate) fn readable(path: &Path) -> std::io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C string; faccessat has no other preconditions.
    let rc = unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::R_OK, libc::AT_EACCESS) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_resolve_by_name_or_number() {
        assert_eq!(
            StoreGroup::resolve("root"),
            Ok(StoreGroup {
                gid: 0,
                name: Some("root".into())
            })
        );
        assert_eq!(StoreGroup::resolve("4242").map(|g| g.gid), Ok(4242));
        let err = StoreGroup::resolve("no-such-group-ctrwatch").unwrap_err();
        assert!(err.contains("no group named"), "{err}");
    }

    /// Lock files left by writers killed with -9 are removed by the next writer; held ones
    /// are not.
    #[test]
    fn stale_lock_files_are_swept() {
        let dir = std::env::temp_dir().join(format!("ctrwatch-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let db = dir.join("events.db");
        File::create(&db).expect("db");
        let locks = lock_dir(&db).expect("lock dir");
        let stale = locks.join(format!("store-0.0-{}.lock", std::process::id()));
        let held = locks.join(format!("store-0.0-{}.lock", u32::MAX - std::process::id()));
        File::create(&stale).expect("stale");
        let holder = File::create(&held).expect("held");
        // SAFETY: flock on a descriptor we own.
        assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) }, 0);
        let lock = StoreLock::acquire(&db, Duration::ZERO).expect("lock");
        assert!(!stale.exists(), "a lock file nobody holds is removed");
        assert!(held.exists(), "a held one stays");
        let mine = lock.lock_path.clone();
        assert!(mine.exists());
        drop(lock);
        assert!(!mine.exists(), "a writer removes its own when it lets go");
        drop(holder);
        let _ = std::fs::remove_file(&held);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn lock_holders_are_found_in_proc_locks() {
        let dir = std::env::temp_dir().join(format!("ctrwatch-lockholder-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("f");
        let f = File::create(&p).expect("file");
        // SAFETY: flock on a descriptor we own.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
        let holder = lock_holder(&f.metadata().expect("stat"));
        assert_eq!(holder.map(|h| h.0), Some(std::process::id()));
        drop(f);
        let _ = std::fs::remove_dir_all(dir);
    }
}
