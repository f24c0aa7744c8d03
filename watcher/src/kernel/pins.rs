//! Programs and maps pinned in bpffs, so that capture outlives the daemon (`run --pin-dir`).
//!
//! A pin set is one directory under the pin directory, named by [`set_name`] (a hash of the
//! eBPF object, which carries the record layout, and of this layout of pins):
//!
//! ```text
//! <pin-dir>/<set>/maps/<MAP>          every map of the object
//! <pin-dir>/<set>/links/<hook>        every attached hook, named after its tracepoint (a
//!                                      bpf_link: pinned, it stays attached with no process
//!                                      holding it; a program shared by several tracepoints
//!                                      has one on each)
//! <pin-dir>/<set>/unavailable/<name>  (directories) hooks this kernel does not have
//! <pin-dir>/<set>/complete            (a directory) made last: the set is whole
//! ```
//!
//! bpffs holds only BPF objects and directories, hence the directories as markers.
//!
//! A daemon of the same build (same set name) adopts a complete set; any other set in the
//! directory (another build, or one left half-made by a crash while pinning) is removed:
//! removing the link pins detaches those programs.

use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// bpffs's magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted when it is not yet.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Bumped when the layout of a pin set changes (names, what is pinned).
const PIN_LAYOUT: &[u8] = b"ctrwatch-pins-1";

/// The name of this build's pin set: `v1-` and the FNV-1a hash of the eBPF object (the
/// programs, their maps and the record layout they share with the daemon) and of the pin
/// layout. A rebuilt object that is byte for byte the same adopts; any change replaces.
pub fn set_name(object: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in PIN_LAYOUT.iter().chain(object) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("v1-{hash:016x}")
}

/// Is `name` a pin set's (as [`set_name`] makes them)? Nothing else in a pin directory is
/// touched: `--pin-dir /sys/fs/bpf` must not remove other programs' pins.
pub fn is_set_name(name: &str) -> bool {
    name.strip_prefix("v1-")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Why pins could not be made, read or removed.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant's #[error] message says what it is"
)]
pub enum PinError {
    #[error("{}: not on a BPF file system (bpffs); pins need one, e.g. under /sys/fs/bpf", ctrwatch_event::escape_path(.0))]
    NotBpffs(PathBuf),
    #[error("mounting bpffs on {BPFFS_MOUNT}: {0}")]
    Mount(std::io::Error),
    #[error(
        "{}: another ctrwatch daemon uses this pin directory (waited {} s); one directory per \
         daemon",
        ctrwatch_event::escape_path(path),
        waited.as_secs()
    )]
    Busy {
        path: PathBuf,
        waited: std::time::Duration,
    },
    #[error(
        "{}: a ctrwatch daemon is running with these pins (it holds the directory's lock; \
         waited {} s): stop it first (`systemctl stop` removes the pins itself)",
        ctrwatch_event::escape_path(path),
        waited.as_secs()
    )]
    InUse {
        path: PathBuf,
        waited: std::time::Duration,
    },
    #[error(
        "{}: owned by uid {uid} with mode {mode:04o}; pins are removed only from a directory \
         that only root can change (owned by root, no group or other write)",
        ctrwatch_event::escape_path(path)
    )]
    Unsafe { path: PathBuf, uid: u32, mode: u32 },
    #[error("{}: {source}", ctrwatch_event::escape_path(path))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The paths of one pin set.
#[derive(Clone, Debug)]
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
pub struct PinSet {
    pub dir: PathBuf,
}

#[allow(
    missing_docs,
    reason = "each method is the path or step it is named for"
)]
impl PinSet {
    pub fn new(pin_dir: &Path, name: &str) -> PinSet {
        PinSet {
            dir: pin_dir.join(name),
        }
    }
    pub fn maps(&self) -> PathBuf {
        self.dir.join("maps")
    }
    pub fn links(&self) -> PathBuf {
        self.dir.join("links")
    }
    pub fn unavailable(&self) -> PathBuf {
        self.dir.join("unavailable")
    }
    fn complete(&self) -> PathBuf {
        self.dir.join("complete")
    }
    /// Made to the end by a daemon (it pins everything before marking it complete). Both
    /// are directories, not symbolic links to one.
    pub fn is_complete(&self) -> bool {
        let is_dir = |path: &Path| std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
        is_dir(&self.dir) && is_dir(&self.complete())
    }
    /// Creates the (empty) set's directories.
    pub fn create(&self) -> Result<(), PinError> {
        for dir in [
            self.dir.clone(),
            self.maps(),
            self.links(),
            self.unavailable(),
        ] {
            std::fs::create_dir(&dir).map_err(io(&dir))?;
        }
        Ok(())
    }
    pub fn mark_complete(&self) -> Result<(), PinError> {
        let path = self.complete();
        std::fs::create_dir(&path).map_err(io(&path))
    }
    /// The names of the entries of `dir`, sorted.
    pub fn names(dir: &Path) -> Result<Vec<String>, PinError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Makes sure `pin_dir` exists on bpffs (mode 0700): mounts bpffs on /sys/fs/bpf when the
/// directory is under it and nothing is mounted there yet (as systemd would have).
pub fn prepare(pin_dir: &Path) -> Result<(), PinError> {
    if !pin_dir.starts_with(BPFFS_MOUNT) {
        // Only /sys/fs/bpf is mounted by us; elsewhere the directory's file system decides.
    } else if !is_bpffs(Path::new(BPFFS_MOUNT))? {
        mount_bpffs()?;
    }
    // A symbolic link is refused here, with the message `unpin` gives: the sets in it are
    // read and removed without following links, so a start could not replace them.
    if std::fs::symlink_metadata(pin_dir).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(io(pin_dir)(std::io::Error::other(
            "a symbolic link (not followed): give the directory itself",
        )));
    }
    let mut builder = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.recursive(true);
    builder.create(pin_dir).map_err(io(pin_dir))?;
    if !is_bpffs(pin_dir)? {
        return Err(PinError::NotBpffs(pin_dir.to_path_buf()));
    }
    Ok(())
}

/// Takes the pin directory for this daemon (an exclusive flock on the directory, held while the
/// returned file is open), waiting up to `wait` for a daemon that is stopping: two daemons
/// with one directory would read the same ring buffer.
pub fn lock(pin_dir: &Path, wait: std::time::Duration) -> Result<std::fs::File, PinError> {
    let dir = std::fs::File::open(pin_dir).map_err(io(pin_dir))?;
    match flock_within(&dir, wait) {
        Ok(true) => Ok(dir),
        Ok(false) => Err(PinError::Busy {
            path: pin_dir.to_path_buf(),
            waited: wait,
        }),
        Err(e) => Err(io(pin_dir)(e.into())),
    }
}

/// Takes an exclusive flock on `fd`, retrying for up to `wait` while another holds it:
/// false when it is still held then. The daemon ([`lock`]) and `unpin` ([`PinDirFd::lock`])
/// take the same lock, each saying in its own words who holds it.
fn flock_within(fd: impl rustix::fd::AsFd, wait: std::time::Duration) -> rustix::io::Result<bool> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) => {}
            Err(e) => return Err(e),
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn is_bpffs(path: &Path) -> Result<bool, PinError> {
    let fs = rustix::fs::statfs(path).map_err(|e| io(path)(e.into()))?;
    Ok(has_bpffs_magic(&fs))
}

/// Whether a file system is bpffs, by its magic number ([`is_bpffs`] by path, `unpin`'s
/// [`PinDirFd::check_safe`] by an open directory).
fn has_bpffs_magic(fs: &rustix::fs::StatFs) -> bool {
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's type differs between libcs"
    )]
    let magic = fs.f_type as i64;
    magic == BPF_FS_MAGIC
}

fn mount_bpffs() -> Result<(), PinError> {
    let target = std::ffi::CString::new(BPFFS_MOUNT)
        .map_err(|e| PinError::Mount(std::io::Error::other(e)))?;
    // SAFETY: NUL-terminated strings; no data pointer beyond the options string.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(PinError::Mount(std::io::Error::last_os_error()));
    }
    log::info!("mounted bpffs on {BPFFS_MOUNT}");
    Ok(())
}

/// Removes every pin set in `pin_dir` except `keep`, and returns the names removed. Removing
/// a set's link pins detaches its programs (if no process holds them), which waits for the
/// kernel (an RCU grace period per hook): done from several threads, as
/// [`super::KernelWatch::detach`] does. Nothing is followed: a symbolic link in the directory,
/// even one named like a set, is left alone (see [`PinDirFd`]).
pub fn remove_sets(pin_dir: &Path, keep: Option<&str>) -> Result<Vec<String>, PinError> {
    let dir = match PinDirFd::open(pin_dir) {
        Ok(dir) => dir,
        Err(PinError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    dir.remove_sets(keep)
}

/// Removes one set (see [`PinDirFd::remove_set`]).
pub fn remove_set(set: &PinSet) -> Result<(), PinError> {
    let (Some(parent), Some(name)) = (set.dir.parent(), set.dir.file_name()) else {
        return Err(io(&set.dir)(std::io::Error::other("not a pin set's path")));
    };
    let Some(name) = name.to_str() else {
        return Err(io(&set.dir)(std::io::Error::other("not a pin set's name")));
    };
    PinDirFd::open(parent)?.remove_set(name)
}

/// What the kernel says an entry of a directory is, without following it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum EntryKind {
    Dir,
    /// A symbolic link: never followed, never descended.
    Symlink,
    /// A pin (a BPF object) or anything else that is not a directory.
    Other,
}

/// A directory opened without following a symbolic link (`O_NOFOLLOW | O_DIRECTORY`), whose
/// entries are read and removed relative to its descriptor (`unlinkat`): a symbolic link
/// planted anywhere under it, or a component swapped for one meanwhile, is never followed
/// out of it.
pub struct PinDirFd {
    fd: std::os::fd::OwnedFd,
    path: PathBuf,
}

const DIR_FLAGS: rustix::fs::OFlags = rustix::fs::OFlags::RDONLY
    .union(rustix::fs::OFlags::DIRECTORY)
    .union(rustix::fs::OFlags::NOFOLLOW)
    .union(rustix::fs::OFlags::CLOEXEC);

impl PinDirFd {
    /// Opens `path` (its last component must not be a symbolic link).
    pub fn open(path: &Path) -> Result<PinDirFd, PinError> {
        let fd = rustix::fs::open(path, DIR_FLAGS, rustix::fs::Mode::empty()).map_err(|e| {
            io(path)(if e == rustix::io::Errno::LOOP {
                std::io::Error::other("a symbolic link (not followed): give the directory itself")
            } else {
                e.into()
            })
        })?;
        Ok(PinDirFd {
            fd,
            path: path.to_path_buf(),
        })
    }

    fn child(&self, name: &std::ffi::CStr) -> Result<PinDirFd, PinError> {
        let path = self.path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        let fd = rustix::fs::openat(&self.fd, name, DIR_FLAGS, rustix::fs::Mode::empty())
            .map_err(|e| io(&path)(e.into()))?;
        Ok(PinDirFd { fd, path })
    }

    /// The entries (but `.` and `..`), sorted by name.
    fn entries(&self) -> Result<Vec<(std::ffi::CString, EntryKind)>, PinError> {
        use rustix::fs::FileType;
        let listing = rustix::fs::Dir::read_from(&self.fd).map_err(|e| io(&self.path)(e.into()))?;
        let mut entries = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| io(&self.path)(e.into()))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let file_type = match entry.file_type() {
                FileType::Unknown => {
                    let stat =
                        rustix::fs::statat(&self.fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(|e| io(&self.path)(e.into()))?;
                    FileType::from_raw_mode(stat.st_mode)
                }
                known => known,
            };
            let kind = match file_type {
                FileType::Directory => EntryKind::Dir,
                FileType::Symlink => EntryKind::Symlink,
                _ => EntryKind::Other,
            };
            entries.push((name.to_owned(), kind));
        }
        entries.sort();
        Ok(entries)
    }

    /// Removes the entry `name` (a directory when `dir`); absent already is fine.
    fn unlink(&self, name: &std::ffi::CStr, dir: bool) -> Result<(), PinError> {
        let flags = if dir {
            rustix::fs::AtFlags::REMOVEDIR
        } else {
            rustix::fs::AtFlags::empty()
        };
        match rustix::fs::unlinkat(&self.fd, name, flags) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io(&self
                .path
                .join(std::ffi::OsStr::from_bytes(name.to_bytes())))(
                e.into()
            )),
        }
    }

    /// Checks what `ctrwatch unpin` requires of the directory before it removes anything in
    /// it: on bpffs, and only root can change it (owned by root, no group or other write).
    pub fn check_safe(&self) -> Result<(), PinError> {
        let fs = rustix::fs::fstatfs(&self.fd).map_err(|e| io(&self.path)(e.into()))?;
        if !has_bpffs_magic(&fs) {
            return Err(PinError::NotBpffs(self.path.clone()));
        }
        let stat = rustix::fs::fstat(&self.fd).map_err(|e| io(&self.path)(e.into()))?;
        if stat.st_uid != 0 || stat.st_mode & 0o022 != 0 {
            return Err(PinError::Unsafe {
                path: self.path.clone(),
                uid: stat.st_uid,
                mode: stat.st_mode & 0o7777,
            });
        }
        Ok(())
    }

    /// Takes the pin directory's lock (the one [`lock`] takes for a daemon), waiting up to
    /// `wait` for its holder to let go; [`PinError::InUse`] if it does not. Held until this
    /// is dropped.
    pub fn lock(&self, wait: std::time::Duration) -> Result<(), PinError> {
        match flock_within(&self.fd, wait) {
            Ok(true) => Ok(()),
            Ok(false) => Err(PinError::InUse {
                path: self.path.clone(),
                waited: wait,
            }),
            Err(e) => Err(io(&self.path)(e.into())),
        }
    }

    /// [`remove_sets`] in this directory.
    pub fn remove_sets(&self, keep: Option<&str>) -> Result<Vec<String>, PinError> {
        let mut removed = Vec::new();
        for (name, kind) in self.entries()? {
            let shown = || {
                ctrwatch_event::escape_path(
                    &self.path.join(std::ffi::OsStr::from_bytes(name.to_bytes())),
                )
            };
            let Some(name) = name.to_str().ok().filter(|n| is_set_name(n)) else {
                log::warn!("{}: not a ctrwatch pin set, left alone", shown());
                continue;
            };
            if Some(name) == keep {
                continue;
            }
            if kind != EntryKind::Dir {
                // Sets are directories; a link named like one is not followed.
                log::warn!(
                    "{}: named like a pin set but not a directory (a symbolic link?), left alone",
                    shown()
                );
                continue;
            }
            self.remove_set(name)?;
            removed.push(name.to_owned());
        }
        Ok(removed)
    }

    /// Removes the set `name` in this directory: its `complete` marker first (from then on
    /// it is never adopted, however far the removal gets), then its links (the programs
    /// stop), then the rest, then its directory.
    pub fn remove_set(&self, name: &str) -> Result<(), PinError> {
        let name = std::ffi::CString::new(name)
            .map_err(|e| io(&self.path.join(name))(std::io::Error::other(e)))?;
        let set = match self.child(&name) {
            Ok(set) => set,
            Err(PinError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        // `complete` is a directory when this build made it; anything else by that name
        // (ENOTDIR) is removed below with the rest.
        match rustix::fs::unlinkat(&set.fd, c"complete", rustix::fs::AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => {}
            Err(e) => return Err(io(&set.path.join("complete"))(e.into())),
        }
        match set.child(c"links") {
            Ok(links) => links.unlink_in_parallel()?,
            // Not made (a crash while creating the set), or not a directory: removed below
            // as any other entry.
            Err(PinError::Io { .. }) => {}
            Err(e) => return Err(e),
        }
        set.remove_contents()?;
        drop(set);
        self.unlink(&name, true)
    }

    /// Removes every entry, descending directories (never links).
    fn remove_contents(&self) -> Result<(), PinError> {
        for (name, kind) in self.entries()? {
            if kind == EntryKind::Dir {
                self.child(&name)?.remove_contents()?;
            }
            self.unlink(&name, kind == EntryKind::Dir)?;
        }
        Ok(())
    }

    /// Removes the (link) pins in this directory from several threads (see [`remove_sets`]);
    /// a directory among them is left for [`PinDirFd::remove_contents`].
    fn unlink_in_parallel(&self) -> Result<(), PinError> {
        const THREADS: usize = 16;
        let files: Vec<std::ffi::CString> = self
            .entries()?
            .into_iter()
            .filter(|(_, kind)| *kind != EntryKind::Dir)
            .map(|(name, _)| name)
            .collect();
        let results = super::workers::run_all("pin-unlink", THREADS, files, |name| {
            self.unlink(&name, false)
        });
        for result in results {
            result.map_err(|panic| {
                io(&self.path)(std::io::Error::other(format!(
                    "removing the link pins: a worker {panic}"
                )))
            })??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pin path comes from `--pin-dir` and the directory's entries: shown escaped (the
    /// first version used `Path::display`, which lets a newline or a terminal escape through).
    #[test]
    fn pin_errors_escape_their_paths() {
        use std::os::unix::ffi::OsStrExt as _;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(b"/sys/fs/bpf/a\nb\x1b[0m\xff"));
        let e = PinError::Io {
            path: path.clone(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert!(
            e.to_string()
                .starts_with("/sys/fs/bpf/a\\x0ab\\x1b[0m\\xff: "),
            "{e}"
        );
        assert!(
            PinError::NotBpffs(path.clone())
                .to_string()
                .starts_with("/sys/fs/bpf/a\\x0ab\\x1b[0m\\xff: not on a BPF"),
        );
        let busy = PinError::Busy {
            path,
            waited: std::time::Duration::from_secs(1),
        };
        assert!(!busy.to_string().contains('\n'), "{busy}");
    }

    #[test]
    fn the_set_name_follows_the_object() {
        let a = set_name(b"object one");
        assert_eq!(a, set_name(b"object one"));
        assert_ne!(a, set_name(b"object two"));
        assert!(is_set_name(&a), "{a}");
        assert!(!is_set_name("v1-xyz"));
        assert!(!is_set_name("tc"));
    }
}
