//! Programs and maps pinned in bpffs, so that capture outlives the daemon (`run --pin-dir`).
//!
//! A pin set is one directory under the pin directory, named by [`set_name`] (a hash of the
//! eBPF object, which carries the record layout, and of this layout of pins):
//!
//! ```text
//! <pin-dir>/<set>/maps/<MAP>          every map of the object
//! <pin-dir>/<set>/links/<program>     every attached hook (a bpf_link: pinned, it stays
//!                                      attached with no process holding it)
//! <pin-dir>/<set>/unavailable/<name>  (directories) hooks this kernel does not have
//! <pin-dir>/<set>/complete            (a directory) made last: the set is whole
//! ```
//!
//! bpffs holds only BPF objects and directories, hence the directories as markers.
//!
//! A daemon of the same build (same set name) adopts a complete set; any other set in the
//! directory (another build, or one left half-made by a crash while pinning) is removed:
//! removing the link pins detaches those programs.

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
pub struct PinSet {
    pub dir: PathBuf,
}

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
    /// Made to the end by a daemon (it pins everything before marking it complete).
    pub fn is_complete(&self) -> bool {
        self.complete().is_dir()
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
    use std::os::fd::AsRawFd as _;
    let dir = std::fs::File::open(pin_dir).map_err(io(pin_dir))?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(dir);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(pin_dir)(e));
        }
        if std::time::Instant::now() >= deadline {
            return Err(PinError::Busy {
                path: pin_dir.to_path_buf(),
                waited: wait,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn is_bpffs(path: &Path) -> Result<bool, PinError> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io(path)(std::io::Error::other(e)))?;
    // SAFETY: statfs writes only into the zeroed struct given; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io(path)(std::io::Error::last_os_error()));
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's type differs between libcs"
    )]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
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
/// [`super::KernelWatch::detach`] does.
pub fn remove_sets(pin_dir: &Path, keep: Option<&str>) -> Result<Vec<String>, PinError> {
    let names = match PinSet::names(pin_dir) {
        Ok(names) => names,
        Err(PinError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for name in names {
        if Some(name.as_str()) == keep {
            continue;
        }
        if !is_set_name(&name) {
            log::warn!(
                "{}: not a ctrwatch pin set, left alone",
                ctrwatch_event::escape_path(&pin_dir.join(&name))
            );
            continue;
        }
        remove_set(&PinSet::new(pin_dir, &name))?;
        removed.push(name);
    }
    Ok(removed)
}

/// Removes one set: links first (the programs stop), then the rest, then its directory.
pub fn remove_set(set: &PinSet) -> Result<(), PinError> {
    // Not a set of ours (not a directory): left alone, and said so by the caller's error.
    let links = set.links();
    if links.is_dir() {
        let files: Vec<PathBuf> = PinSet::names(&links)?
            .into_iter()
            .map(|n| links.join(n))
            .collect();
        unlink_in_parallel(&files)?;
    }
    remove_tree(&set.dir)
}

fn unlink_in_parallel(files: &[PathBuf]) -> Result<(), PinError> {
    const THREADS: usize = 16;
    let chunk = files.len().div_ceil(THREADS).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || -> Result<(), PinError> {
                    for f in part {
                        match std::fs::remove_file(f) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(io(f)(e)),
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(r) => r?,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(())
    })
}

/// Removes a directory of pins and marker directories (bpffs: no symlinks to follow out of it
/// are made by us; a symlink found is removed, not followed).
fn remove_tree(dir: &Path) -> Result<(), PinError> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir)(e)),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(dir).map_err(io(dir));
    }
    for name in PinSet::names(dir)? {
        remove_tree(&dir.join(name))?;
    }
    std::fs::remove_dir(dir).map_err(io(dir))
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
