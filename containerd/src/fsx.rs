//! Read-only access under a root that never follows a symlink out of it: every lookup is
//! relative to an open directory (`openat`/`fstatat`/`readlinkat` with `O_NOFOLLOW` /
//! `AT_SYMLINK_NOFOLLOW`), so a symlink planted in the store (a layer's files, `meta.db`, a
//! plugin directory) cannot lead a reader out of it, and a directory swapped for a symlink
//! between a check and a use is not followed either.
//!
//! [`open_dir_beneath`] and [`open_file_beneath`] walk from a root (which itself may be a
//! symlink: operators point `--root` at one) component by component. Files are opened
//! `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC` after an `lstat` says they are regular files, and
//! checked again with `fstat` on the open file: a FIFO never blocks the reader, a device is
//! never opened. The audit, the layer replay and the metadata reader (containerd's bolt files,
//! content blobs, ingests) all open through here.
//!
//! Extended attributes have no `*at` calls in the libc we build against; they are read through
//! `/proc/self/fd/<dir fd>/<name>` with the `l*` calls: the kernel resolves the magic link to
//! the very directory we hold open, and the last component is not followed.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use ctrwatch_event::escape_path;

/// Why something under a root could not be opened. Paths are escaped when displayed.
#[allow(
    missing_docs,
    reason = "the fields are the path and stat(2) values they are named for"
)]
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A symbolic link where a directory or file was expected: not followed.
    #[error("{}: a symbolic link, not followed (it could lead out of the root)", escape_path(.path))]
    Symlink { path: PathBuf },
    /// Not a regular file (FIFO, socket, device, directory): not opened or not read.
    #[error("{}: {kind}, not a regular file (not read)", escape_path(.path))]
    NotRegular { path: PathBuf, kind: &'static str },
    /// A path component is not a directory.
    #[error("{}: {kind}, not a directory", escape_path(.path))]
    NotDirectory { path: PathBuf, kind: &'static str },
    /// The path is not below the root it is opened from (a `..` component, or elsewhere).
    #[error("{}: not below {}", escape_path(.path), escape_path(.root))]
    Outside { path: PathBuf, root: PathBuf },
    #[error("{}: {source}", escape_path(.path))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl OpenError {
    /// Whether the path (or one of its directories) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, OpenError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// What `fstatat` says about an entry (only what the audit compares).
#[allow(
    missing_docs,
    reason = "the fields are the path and stat(2) values they are named for"
)]
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub rdev: u64,
    pub dev: u64,
    pub ino: u64,
}

impl Stat {
    /// The `S_IFMT` bits of the mode.
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }
    /// A regular file.
    pub fn is_reg(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }
    /// A symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.file_type() == libc::S_IFLNK
    }
    /// An overlayfs whiteout: a character device 0:0.
    pub fn is_whiteout(&self) -> bool {
        self.file_type() == libc::S_IFCHR && self.rdev == 0
    }
    /// The permission bits, with setuid, setgid and sticky.
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
    /// What kind of file this is, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self.file_type() {
            libc::S_IFLNK => "symbolic link",
            libc::S_IFDIR => "directory",
            libc::S_IFIFO => "FIFO",
            libc::S_IFSOCK => "socket",
            libc::S_IFBLK => "block device",
            libc::S_IFCHR => "character device",
            libc::S_IFREG => "regular file",
            _ => "unknown type",
        }
    }
}

fn stat_of(st: &libc::stat) -> Stat {
    Stat {
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        mtime: st.st_mtime,
        rdev: st.st_rdev,
        dev: st.st_dev,
        ino: st.st_ino,
    }
}

/// `fstat` of an open file.
pub fn fstat(file: &impl AsRawFd) -> io::Result<Stat> {
    // SAFETY: stat is plain data; zeroes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and stat buffer.
    if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat_of(&st))
}

/// An open directory.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;

const FILE_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;

impl Dir {
    /// Opens the directory `path`, following symlinks anywhere in it: for a root an operator
    /// chose (which may well be a symlink), never for anything found under one.
    pub fn open_root(path: &Path) -> io::Result<Dir> {
        let p = cstr(path.as_os_str().as_bytes())?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: a valid C string; the returned fd is owned below.
        let fd = unsafe { libc::open(p.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Opens `path`; its last component must be a directory, not a symlink to one.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let p = cstr(path.as_os_str().as_bytes())?;
        // SAFETY: a valid C string; the returned fd is owned below.
        let fd = unsafe { libc::open(p.as_ptr(), DIR_FLAGS) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Opens the subdirectory `name` (a single component; fails on a symlink).
    pub fn open_child(&self, name: &[u8]) -> io::Result<Dir> {
        let n = cstr(name)?;
        // SAFETY: a valid directory fd and C string; the returned fd is owned below.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), n.as_ptr(), DIR_FLAGS) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Opens the entry `name` for reading if it is a regular file: never through a symlink
    /// (`O_NOFOLLOW`), never blocking (`O_NONBLOCK`: a FIFO would wait for a writer), and not
    /// at all if an `lstat` says it is something else (opening a device can act on it). The
    /// open file is checked again (`fstat`), so a file swapped in between is not read either.
    /// Where permitted, the access time is not updated (`O_NOATIME`: readers here modify
    /// nothing). `Ok(Err(stat))` for an entry that is not a regular file.
    pub fn open_file(&self, name: &[u8]) -> io::Result<Result<File, Stat>> {
        let st = self.stat(name)?;
        if !st.is_reg() {
            return Ok(Err(st));
        }
        let n = cstr(name)?;
        let open = |flags| {
            // SAFETY: a valid directory fd and C string; the returned fd is owned below.
            let fd = unsafe { libc::openat(self.fd.as_raw_fd(), n.as_ptr(), flags) };
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                // SAFETY: `fd` was just opened and is owned by nobody else.
                Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
            }
        };
        let file = match open(FILE_FLAGS | libc::O_NOATIME) {
            // O_NOATIME needs ownership or CAP_FOWNER; without it, read normally.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(FILE_FLAGS)?,
            r => r?,
        };
        let st = fstat(&file)?;
        Ok(if st.is_reg() { Ok(file) } else { Err(st) })
    }

    /// `lstat` of entry `name`.
    pub fn stat(&self, name: &[u8]) -> io::Result<Stat> {
        let n = cstr(name)?;
        // SAFETY: stat is plain data; zeroes are a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid directory fd, C string and stat buffer.
        let r = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                n.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stat_of(&st))
    }

    /// `fstat` of the directory itself.
    pub fn stat_self(&self) -> io::Result<Stat> {
        fstat(&self.fd)
    }

    /// The target of symlink `name`.
    pub fn read_link(&self, name: &[u8]) -> io::Result<Vec<u8>> {
        let n = cstr(name)?;
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: a valid directory fd, C string and buffer of the given length.
            let r = unsafe {
                libc::readlinkat(
                    self.fd.as_raw_fd(),
                    n.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            let r = r as usize;
            if r < buf.len() {
                buf.truncate(r);
                return Ok(buf);
            }
            // Possibly cut: retry with more room (PATH_MAX bounds it).
            if buf.len() >= 1 << 16 {
                return Err(io::Error::other("symlink target too long"));
            }
            buf.resize(buf.len() * 4, 0);
        }
    }

    /// The names in the directory (without `.` and `..`), unsorted.
    pub fn names(&self) -> io::Result<Vec<Vec<u8>>> {
        // fdopendir takes ownership of the fd it is given: give it a duplicate, positioned at
        // the start (a fresh open of "." shares nothing with our fd's offset).
        let dot = c".";
        // SAFETY: a valid directory fd and C string.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), dot.as_ptr(), DIR_FLAGS) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a directory fd we own; on success the DIR owns it.
        let dirp = unsafe { libc::fdopendir(fd) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so the fd is still ours to close.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let mut out = Vec::new();
        let result = loop {
            // SAFETY: errno is thread-local; clearing it tells end-of-directory from errors.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `dirp` is a valid, open DIR.
            let ent = unsafe { libc::readdir64(dirp) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                break if e.raw_os_error().unwrap_or(0) == 0 {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated.
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
            if name != b"." && name != b".." {
                out.push(name.to_vec());
            }
        };
        // SAFETY: `dirp` is valid and closed once (this also closes `fd`).
        unsafe { libc::closedir(dirp) };
        result.map(|()| out)
    }

    fn proc_path(&self, name: Option<&[u8]>) -> io::Result<CString> {
        let mut p = format!("/proc/self/fd/{}", self.fd.as_raw_fd()).into_bytes();
        if let Some(n) = name {
            p.push(b'/');
            p.extend_from_slice(n);
        }
        cstr(&p)
    }

    /// Names of the extended attributes of entry `name` (`None`: the directory itself).
    /// A filesystem without xattrs gives an empty list. `trusted.*` names are only listed for
    /// CAP_SYS_ADMIN.
    pub fn xattr_names(&self, name: Option<&[u8]>) -> io::Result<Vec<Vec<u8>>> {
        let p = self.proc_path(name)?;
        let mut buf = vec![0u8; 256];
        loop {
            let r = match name {
                // SAFETY: a valid fd and buffer of the given length.
                None => unsafe {
                    libc::flistxattr(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                },
                // SAFETY: a valid C string and buffer of the given length.
                Some(_) => unsafe {
                    libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                },
            };
            if r >= 0 {
                buf.truncate(r as usize);
                return Ok(buf
                    .split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 8, 0),
                Some(libc::ENOTSUP) => return Ok(Vec::new()),
                _ => return Err(e),
            }
        }
    }

    /// The value of xattr `attr` of entry `name` (`None`: the directory itself); `None` if
    /// not set.
    pub fn xattr(&self, name: Option<&[u8]>, attr: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let p = self.proc_path(name)?;
        let a = cstr(attr)?;
        let mut buf = vec![0u8; 256];
        loop {
            let r = match name {
                // SAFETY: a valid fd, C string and buffer of the given length.
                None => unsafe {
                    libc::fgetxattr(
                        self.fd.as_raw_fd(),
                        a.as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                },
                // SAFETY: valid C strings and a buffer of the given length.
                Some(_) => unsafe {
                    libc::lgetxattr(p.as_ptr(), a.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                },
            };
            if r >= 0 {
                buf.truncate(r as usize);
                return Ok(Some(buf));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
                Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 8, 0),
                _ => return Err(e),
            }
        }
    }
}

/// The components of `path` below `root`, each a plain name. `..` (which could climb out) and
/// paths not below `root` are refused.
fn components_beneath<'p>(root: &Path, path: &'p Path) -> Result<Vec<&'p [u8]>, OpenError> {
    let outside = || OpenError::Outside {
        path: path.to_path_buf(),
        root: root.to_path_buf(),
    };
    let rel = path.strip_prefix(root).map_err(|_| outside())?;
    rel.components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n.as_bytes()),
            _ => Err(outside()),
        })
        .collect()
}

/// Opens the directory `path` (`root` or below it) from `root`, without following a symlink
/// below `root` (see the module docs).
pub fn open_dir_beneath(root: &Path, path: &Path) -> Result<Dir, OpenError> {
    let names = components_beneath(root, path)?;
    let io_err = |p: &Path, source| OpenError::Io {
        path: p.to_path_buf(),
        source,
    };
    let mut dir = Dir::open_root(root).map_err(|e| io_err(root, e))?;
    let mut at = root.to_path_buf();
    for name in names {
        at.push(std::ffi::OsStr::from_bytes(name));
        dir = match dir.open_child(name) {
            Ok(d) => d,
            // ELOOP (a symlink, O_NOFOLLOW) or ENOTDIR: say what it is.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                return Err(match dir.stat(name) {
                    Ok(st) if st.is_symlink() => OpenError::Symlink { path: at },
                    Ok(st) => OpenError::NotDirectory {
                        path: at,
                        kind: st.kind_name(),
                    },
                    Err(_) => io_err(&at, e),
                });
            }
            Err(e) => return Err(io_err(&at, e)),
        };
    }
    Ok(dir)
}

/// The directory holding `path` (below `root`), opened from `root` without following a
/// symlink, and the file's name.
fn parent_beneath<'p>(root: &Path, path: &'p Path) -> Result<(Dir, &'p [u8]), OpenError> {
    let name = path
        .file_name()
        .filter(|_| path != root)
        .map(|n| n.as_bytes())
        .ok_or_else(|| OpenError::Outside {
            path: path.to_path_buf(),
            root: root.to_path_buf(),
        })?;
    let parent = path.parent().unwrap_or(root);
    Ok((open_dir_beneath(root, parent)?, name))
}

/// Opens the regular file `path` (below `root`) for reading, from `root`, without following a
/// symlink below `root` and never blocking (see [`Dir::open_file`]).
pub fn open_file_beneath(root: &Path, path: &Path) -> Result<File, OpenError> {
    let (dir, name) = parent_beneath(root, path)?;
    match dir.open_file(name) {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(st)) if st.is_symlink() => Err(OpenError::Symlink {
            path: path.to_path_buf(),
        }),
        Ok(Err(st)) => Err(OpenError::NotRegular {
            path: path.to_path_buf(),
            kind: st.kind_name(),
        }),
        Err(source) => Err(OpenError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `lstat` of `path` (below `root`), reached from `root` without following a symlink.
pub fn lstat_beneath(root: &Path, path: &Path) -> Result<Stat, OpenError> {
    if path == root {
        return open_dir_beneath(root, root)?
            .stat_self()
            .map_err(|source| OpenError::Io {
                path: path.to_path_buf(),
                source,
            });
    }
    let (dir, name) = parent_beneath(root, path)?;
    dir.stat(name).map_err(|source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the regular file `path` (below `root`, see [`open_file_beneath`]) if it has at most
/// `limit` bytes: `Ok(None)` if it is larger.
pub fn read_beneath(root: &Path, path: &Path, limit: u64) -> Result<Option<Vec<u8>>, OpenError> {
    let file = open_file_beneath(root, path)?;
    let mut buf = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((buf.len() as u64 <= limit).then_some(buf))
}

/// The entries of the directory `path` (below `root`, reached without following a symlink),
/// with their `lstat`, sorted by name. An entry that vanished meanwhile is left out.
pub fn list_beneath(root: &Path, path: &Path) -> Result<Vec<(Vec<u8>, Stat)>, OpenError> {
    let dir = open_dir_beneath(root, path)?;
    let names = dir.names().map_err(|source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out: Vec<(Vec<u8>, Stat)> = names
        .into_iter()
        .filter_map(|n| {
            let st = dir.stat(&n).ok()?;
            Some((n, st))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ctrwatch-fsx-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn mkfifo(p: &Path) {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn opens_beneath_a_root_without_leaving_it() {
        let base = tmp("beneath");
        let outside = base.join("outside");
        let root_real = base.join("root-real");
        std::fs::create_dir_all(outside.join("d")).unwrap();
        std::fs::write(outside.join("secret"), b"s3cret").unwrap();
        std::fs::write(outside.join("d/meta.db"), b"s3cret").unwrap();
        std::fs::create_dir_all(root_real.join("a/b")).unwrap();
        std::fs::write(root_real.join("a/b/f"), b"ok").unwrap();
        symlink(outside.join("secret"), root_real.join("a/link")).unwrap();
        symlink(outside.join("d"), root_real.join("a/dirlink")).unwrap();
        mkfifo(&root_real.join("a/fifo"));
        // The root itself may be a symlink.
        let root = base.join("root");
        symlink(&root_real, &root).unwrap();

        assert_eq!(
            read_beneath(&root, &root.join("a/b/f"), 10).unwrap(),
            Some(b"ok".to_vec())
        );
        assert_eq!(read_beneath(&root, &root.join("a/b/f"), 1).unwrap(), None);
        assert!(matches!(
            open_file_beneath(&root, &root.join("a/link")),
            Err(OpenError::Symlink { .. })
        ));
        assert!(matches!(
            open_file_beneath(&root, &root.join("a/dirlink/meta.db")),
            Err(OpenError::Symlink { path }) if path == root.join("a/dirlink")
        ));
        assert!(matches!(
            open_dir_beneath(&root, &root.join("a/dirlink")),
            Err(OpenError::Symlink { .. })
        ));
        // A FIFO is refused at once, without blocking.
        let e = open_file_beneath(&root, &root.join("a/fifo")).unwrap_err();
        assert!(
            matches!(e, OpenError::NotRegular { kind: "FIFO", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("FIFO, not a regular file"), "{e}");
        assert!(matches!(
            open_file_beneath(&root, &root.join("a/b/f/x")),
            Err(OpenError::NotDirectory {
                kind: "regular file",
                ..
            })
        ));
        assert!(matches!(
            open_file_beneath(&root, &root.join("a/../../outside/secret")),
            Err(OpenError::Outside { .. })
        ));
        assert!(matches!(
            open_file_beneath(&root, &outside.join("secret")),
            Err(OpenError::Outside { .. })
        ));
        assert!(
            open_file_beneath(&root, &root.join("a/missing"))
                .unwrap_err()
                .is_not_found()
        );
        assert!(
            lstat_beneath(&root, &root.join("a/link"))
                .unwrap()
                .is_symlink()
        );
        assert!(lstat_beneath(&root, &root).unwrap().is_dir());
        let names: Vec<Vec<u8>> = list_beneath(&root, &root.join("a"))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                b"b".to_vec(),
                b"dirlink".to_vec(),
                b"fifo".to_vec(),
                b"link".to_vec()
            ]
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn errors_escape_paths() {
        let e = OpenError::Symlink {
            path: PathBuf::from(std::ffi::OsStr::from_bytes(b"/r/a\nb\x1b[0m\xff")),
        };
        assert_eq!(
            e.to_string(),
            "/r/a\\x0ab\\x1b[0m\\xff: a symbolic link, not followed (it could lead out of the root)"
        );
    }
}
