//! Read-only access to a snapshot directory that never follows a symlink: every lookup is
//! relative to an open directory (`openat`/`fstatat`/`readlinkat` with `O_NOFOLLOW` /
//! `AT_SYMLINK_NOFOLLOW`), so a symlink planted in a layer cannot lead the audit out of it.
//!
//! Extended attributes have no `*at` calls in the libc we build against; they are read through
//! `/proc/self/fd/<dir fd>/<name>` with the `l*` calls: the kernel resolves the magic link to
//! the very directory we hold open, and the last component is not followed.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What `fstatat` says about an entry (only what the audit compares).
#[derive(Clone, Copy, Debug)]
pub(super) struct Stat {
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
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.file_type() == libc::S_IFLNK
    }
    /// An overlayfs whiteout: a character device 0:0.
    pub fn is_whiteout(&self) -> bool {
        self.file_type() == libc::S_IFCHR && self.rdev == 0
    }
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// An open directory.
#[derive(Debug)]
pub(super) struct Dir {
    fd: OwnedFd,
}

fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;

impl Dir {
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
        Ok(Stat {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime: st.st_mtime,
            rdev: st.st_rdev,
            dev: st.st_dev,
            ino: st.st_ino,
        })
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
