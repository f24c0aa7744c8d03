//! `fsop OP ARGS...`: performs exactly one file operation with the syscall named, so that
//! integration tests know which syscall, from which process, produced a record. Paths are taken
//! as raw bytes (non-UTF-8 names work). Exit status 0 when the operation succeeded, 1 when the
//! kernel refused it (the errno is printed), 2 on bad usage. `unlink-series` is the exception:
//! many timestamped unlinks, for the tests of what is stored or recorded as a gap across stops
//! and starts.
//!
//! The `at-*` operations and `unlinkat` act relative to a directory fd, and `cwd-unlink`
//! relative to the working directory; their DIR may be longer than PATH_MAX (it is opened or
//! entered one component at a time, as a script that `cd`s down would).

use std::{
    ffi::{CString, OsString},
    os::unix::ffi::OsStringExt,
    process::ExitCode,
};

fn cstr(s: &OsString) -> CString {
    CString::new(s.clone().into_vec()).unwrap_or_default()
}

fn check(rc: libc::c_long, what: &str) -> Result<libc::c_long, String> {
    if rc < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(rc)
    }
}

fn open(path: &OsString, flags: i32) -> Result<i32, String> {
    // SAFETY: valid C string; plain syscall.
    let fd = unsafe { libc::open(cstr(path).as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    check(fd as libc::c_long, "open").map(|fd| fd as i32)
}

/// A directory fd for `path`, opened one component at a time: `path` may be longer than
/// PATH_MAX, which no single syscall accepts.
fn open_dir(path: &OsString) -> Result<i32, String> {
    let bytes = path.clone().into_vec();
    let start = if bytes.starts_with(b"/") {
        &b"/"[..]
    } else {
        &b"."[..]
    };
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    let c = CString::new(start).unwrap_or_default();
    // SAFETY: valid C string; plain syscall.
    let mut fd = check(
        unsafe { libc::open(c.as_ptr(), flags) } as libc::c_long,
        "open",
    )? as i32;
    for part in bytes.split(|b| *b == b'/').filter(|p| !p.is_empty()) {
        let c = CString::new(part).unwrap_or_default();
        // SAFETY: valid fd and C string; the old fd is closed once the next one is open.
        let next = unsafe {
            let next = libc::openat(fd, c.as_ptr(), flags);
            libc::close(fd);
            next
        };
        fd = check(next as libc::c_long, "openat")? as i32;
    }
    Ok(fd)
}

/// Makes `path` (possibly longer than PATH_MAX) the working directory.
fn chdir_long(path: &OsString) -> Result<(), String> {
    let fd = open_dir(path)?;
    // SAFETY: valid fd.
    check(unsafe { libc::fchdir(fd) } as libc::c_long, "fchdir")?;
    // SAFETY: valid fd, no longer needed.
    unsafe { libc::close(fd) };
    Ok(())
}

fn num(args: &[OsString], i: usize) -> Result<i64, String> {
    args.get(i)
        .and_then(|a| a.to_str())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("argument {i} must be a number"))
}

fn arg(args: &[OsString], i: usize) -> Result<&OsString, String> {
    args.get(i).ok_or_else(|| format!("missing argument {i}"))
}

fn run(args: &[OsString]) -> Result<(), String> {
    let op = args.first().and_then(|a| a.to_str()).unwrap_or("");
    // SAFETY (whole match): every pointer passed is a valid C string or buffer that outlives
    // the call.
    unsafe {
        match op {
            "create" => {
                let fd = open(arg(args, 1)?, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)?;
                libc::close(fd);
            }
            "write" => {
                // open an existing file, write N bytes in one call, close
                let fd = open(arg(args, 1)?, libc::O_WRONLY)?;
                let buf = vec![b'x'; num(args, 2)? as usize];
                check(
                    libc::write(fd, buf.as_ptr().cast(), buf.len()) as libc::c_long,
                    "write",
                )?;
                libc::close(fd);
            }
            "write-rename-write" => {
                // fsop write-rename-write OLD NEW: create OLD, write 1 byte, rename OLD to
                // NEW while it is open, write 4 more bytes through the same fd, close
                let fd = open(arg(args, 1)?, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)?;
                check(
                    libc::write(fd, c"a".as_ptr().cast(), 1) as libc::c_long,
                    "write",
                )?;
                check(
                    libc::rename(cstr(arg(args, 1)?).as_ptr(), cstr(arg(args, 2)?).as_ptr()) as _,
                    "rename",
                )?;
                check(
                    libc::write(fd, c"bbbb".as_ptr().cast(), 4) as libc::c_long,
                    "write",
                )?;
                libc::close(fd);
            }
            "write-noclose" => {
                // write and exit without closing: the aggregate is reported at exit
                let fd = open(arg(args, 1)?, libc::O_WRONLY)?;
                let buf = vec![b'y'; num(args, 2)? as usize];
                check(
                    libc::write(fd, buf.as_ptr().cast(), buf.len()) as libc::c_long,
                    "write",
                )?;
                std::process::exit(0);
            }
            "write-hold" => {
                // append, write and keep the file open (no close, no dup): the aggregate is
                // still in the kernel when the process is killed or the watcher stops
                let fd = open(
                    arg(args, 1)?,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
                )?;
                let buf = vec![b'h'; num(args, 2)? as usize];
                check(
                    libc::write(fd, buf.as_ptr().cast(), buf.len()) as libc::c_long,
                    "write",
                )?;
                std::thread::sleep(std::time::Duration::from_secs(num(args, 3)? as u64));
                std::process::exit(0);
            }
            "open-trunc" => {
                let fd = open(arg(args, 1)?, libc::O_WRONLY | libc::O_TRUNC)?;
                libc::close(fd);
            }
            "truncate" => {
                check(
                    libc::truncate(cstr(arg(args, 1)?).as_ptr(), num(args, 2)?) as _,
                    "truncate",
                )?;
            }
            "ftruncate" => {
                let fd = open(arg(args, 1)?, libc::O_WRONLY)?;
                check(libc::ftruncate(fd, num(args, 2)?) as _, "ftruncate")?;
                libc::close(fd);
            }
            "fallocate" => {
                let fd = open(arg(args, 1)?, libc::O_WRONLY)?;
                check(libc::fallocate(fd, 0, 0, num(args, 2)?) as _, "fallocate")?;
                libc::close(fd);
            }
            "unlink" => {
                check(libc::unlink(cstr(arg(args, 1)?).as_ptr()) as _, "unlink")?;
            }
            "rmdir" => {
                check(libc::rmdir(cstr(arg(args, 1)?).as_ptr()) as _, "rmdir")?;
            }
            "mkdir" => {
                check(
                    libc::mkdir(cstr(arg(args, 1)?).as_ptr(), 0o755) as _,
                    "mkdir",
                )?;
            }
            "rename" => {
                check(
                    libc::rename(cstr(arg(args, 1)?).as_ptr(), cstr(arg(args, 2)?).as_ptr()) as _,
                    "rename",
                )?;
            }
            "renameat2" => {
                // fsop renameat2 OLD NEW FLAGS, FLAGS one of 0, noreplace, exchange, whiteout
                // (the raw syscall: glibc's wrapper may be missing or emulated)
                let flags = match arg(args, 3)?.to_str() {
                    Some("0") => 0,
                    Some("noreplace") => libc::RENAME_NOREPLACE,
                    Some("exchange") => libc::RENAME_EXCHANGE,
                    Some("whiteout") => libc::RENAME_WHITEOUT,
                    _ => return Err("argument 3 must be 0, noreplace, exchange or whiteout".into()),
                };
                check(
                    libc::syscall(
                        libc::SYS_renameat2,
                        libc::AT_FDCWD,
                        cstr(arg(args, 1)?).as_ptr(),
                        libc::AT_FDCWD,
                        cstr(arg(args, 2)?).as_ptr(),
                        flags,
                    ),
                    "renameat2",
                )?;
            }
            "link" => {
                check(
                    libc::link(cstr(arg(args, 1)?).as_ptr(), cstr(arg(args, 2)?).as_ptr()) as _,
                    "link",
                )?;
            }
            "symlink" => {
                check(
                    libc::symlink(cstr(arg(args, 1)?).as_ptr(), cstr(arg(args, 2)?).as_ptr()) as _,
                    "symlink",
                )?;
            }
            "whiteout" => {
                // what containerd writes for a deleted lower file: a 0:0 character device
                check(
                    libc::mknod(cstr(arg(args, 1)?).as_ptr(), libc::S_IFCHR | 0o600, 0) as _,
                    "mknod",
                )?;
            }
            "setxattr" => {
                let value = arg(args, 3)?.clone().into_vec();
                check(
                    libc::setxattr(
                        cstr(arg(args, 1)?).as_ptr(),
                        cstr(arg(args, 2)?).as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    ) as _,
                    "setxattr",
                )?;
            }
            "removexattr" => {
                check(
                    libc::removexattr(cstr(arg(args, 1)?).as_ptr(), cstr(arg(args, 2)?).as_ptr())
                        as _,
                    "removexattr",
                )?;
            }
            "chmod" => {
                let mode = u32::from_str_radix(arg(args, 2)?.to_str().unwrap_or(""), 8)
                    .map_err(|e| format!("mode: {e}"))?;
                check(
                    libc::chmod(cstr(arg(args, 1)?).as_ptr(), mode) as _,
                    "chmod",
                )?;
            }
            "chown" => {
                check(
                    libc::chown(
                        cstr(arg(args, 1)?).as_ptr(),
                        num(args, 2)? as u32,
                        num(args, 3)? as u32,
                    ) as _,
                    "chown",
                )?;
            }
            "unlinkat" => {
                // relative to a directory fd: fsop unlinkat DIR NAME
                let dir = open_dir(arg(args, 1)?)?;
                check(
                    libc::unlinkat(dir, cstr(arg(args, 2)?).as_ptr(), 0) as _,
                    "unlinkat",
                )?;
            }
            "cwd-unlink" => {
                // relative to the working directory: fsop cwd-unlink DIR NAME
                chdir_long(arg(args, 1)?)?;
                check(libc::unlink(cstr(arg(args, 2)?).as_ptr()) as _, "unlink")?;
            }
            "at-create" => {
                // fsop at-create DIR NAME: openat(dirfd, NAME, O_CREAT|O_EXCL|O_WRONLY), close
                let dir = open_dir(arg(args, 1)?)?;
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
                let fd = libc::openat(dir, cstr(arg(args, 2)?).as_ptr(), flags, 0o644);
                check(fd as _, "openat")?;
                libc::close(fd);
            }
            "at-write" => {
                // fsop at-write DIR NAME N: openat an existing file, write N bytes, close
                let dir = open_dir(arg(args, 1)?)?;
                let flags = libc::O_WRONLY | libc::O_CLOEXEC;
                let fd = libc::openat(dir, cstr(arg(args, 2)?).as_ptr(), flags);
                check(fd as _, "openat")?;
                let buf = vec![b'x'; num(args, 3)? as usize];
                check(
                    libc::write(fd, buf.as_ptr().cast(), buf.len()) as libc::c_long,
                    "write",
                )?;
                libc::close(fd);
            }
            "at-rename" => {
                // fsop at-rename DIR OLD NEW: renameat(dirfd, OLD, dirfd, NEW)
                let dir = open_dir(arg(args, 1)?)?;
                check(
                    libc::renameat(
                        dir,
                        cstr(arg(args, 2)?).as_ptr(),
                        dir,
                        cstr(arg(args, 3)?).as_ptr(),
                    ) as _,
                    "renameat",
                )?;
            }
            "recycle-fd" => {
                // fsop recycle-fd A N B M: write N bytes to A, drop the fd with close_range
                // (no close syscall), open B (it gets the same fd number, and usually the same
                // recycled `struct file`), write M bytes to it, close.
                let a = open(arg(args, 1)?, libc::O_WRONLY)?;
                let buf = vec![b'a'; num(args, 2)? as usize];
                check(
                    libc::write(a, buf.as_ptr().cast(), buf.len()) as libc::c_long,
                    "write",
                )?;
                check(
                    libc::syscall(
                        libc::SYS_close_range,
                        a as libc::c_uint,
                        a as libc::c_uint,
                        0,
                    ),
                    "close_range",
                )?;
                let b = open(arg(args, 3)?, libc::O_WRONLY)?;
                if b != a {
                    return Err(format!("fd {b} is not the recycled fd {a}"));
                }
                let buf = vec![b'b'; num(args, 4)? as usize];
                check(
                    libc::write(b, buf.as_ptr().cast(), buf.len()) as libc::c_long,
                    "write",
                )?;
                libc::close(b);
            }
            "flood" => {
                // fsop flood DIR COUNT: COUNT unlink attempts of missing files (each one a
                // record), as fast as possible; prints how many were performed.
                let dir = arg(args, 1)?.clone().into_vec();
                let count = num(args, 2)?;
                for i in 0..count {
                    let mut p = dir.clone();
                    p.extend_from_slice(format!("/missing-{i}").as_bytes());
                    let c = CString::new(p).unwrap_or_default();
                    libc::unlink(c.as_ptr());
                }
                println!("{count}");
            }
            "unlink-series" => unlink_series(args)?,
            "sys" => raw_syscall(args)?,
            _ => return Err(format!("unknown operation {op:?}")),
        }
    }
    Ok(())
}

/// removexattrat(2) (Linux 6.13; not in the libc crate yet): x86_64's number.
#[cfg(target_arch = "x86_64")]
const SYS_REMOVEXATTRAT: libc::c_long = 466;

/// `fsop sys SYSCALL ARGS...`: the raw syscall SYSCALL (no libc wrapper, which may call
/// another one), with AT_FDCWD for every dirfd, so that a test covers each syscall of a
/// family. Exits 3 when the kernel has no such syscall (ENOSYS).
///
/// - `open|openat|creat PATH`: creates PATH for writing (mode 0640), closes it;
/// - `unlink|unlinkat|rmdir|unlinkat-rmdir PATH` (the last: unlinkat with AT_REMOVEDIR);
/// - `rename|renameat|renameat2|link|linkat OLD NEW`, `symlink|symlinkat TARGET PATH`;
/// - `mknod|mknodat PATH` (a FIFO, mode 0600), `mkdir|mkdirat PATH` (mode 0750);
/// - `setxattr|lsetxattr PATH NAME VALUE`, `removexattr|lremovexattr|removexattrat PATH NAME`;
/// - `chmod|fchmodat|fchmodat2 PATH` (mode 0604), `chown|lchown|fchownat PATH UID GID`;
/// - `pwrite64|writev|pwritev|pwritev2|sendfile PATH`: opens PATH for writing, writes 5 bytes
///   with that syscall (sendfile: from /dev/zero), closes it.
fn raw_syscall(args: &[OsString]) -> Result<(), String> {
    let name = arg(args, 1)?.to_str().unwrap_or("").to_string();
    let a = cstr(arg(args, 2)?);
    let b = || arg(args, 3).map(cstr);
    let at = libc::AT_FDCWD as libc::c_long;
    let p = |c: &CString| c.as_ptr() as libc::c_long;
    let data = b"hello";
    // SAFETY (whole block): every pointer passed is a valid C string or buffer that outlives
    // the call; the fds are our own.
    let rc = unsafe {
        match name.as_str() {
            "open" | "openat" | "creat" => {
                let flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC) as libc::c_long;
                let fd = match name.as_str() {
                    "open" => libc::syscall(libc::SYS_open, p(&a), flags, 0o640),
                    "openat" => libc::syscall(libc::SYS_openat, at, p(&a), flags, 0o640),
                    _ => libc::syscall(libc::SYS_creat, p(&a), 0o640),
                };
                if fd >= 0 {
                    libc::close(fd as i32);
                }
                fd
            }
            "unlink" => libc::syscall(libc::SYS_unlink, p(&a)),
            "unlinkat" => libc::syscall(libc::SYS_unlinkat, at, p(&a), 0),
            "rmdir" => libc::syscall(libc::SYS_rmdir, p(&a)),
            "unlinkat-rmdir" => libc::syscall(libc::SYS_unlinkat, at, p(&a), libc::AT_REMOVEDIR),
            "rename" => libc::syscall(libc::SYS_rename, p(&a), p(&b()?)),
            "renameat" => libc::syscall(libc::SYS_renameat, at, p(&a), at, p(&b()?)),
            "renameat2" => libc::syscall(libc::SYS_renameat2, at, p(&a), at, p(&b()?), 0),
            "link" => libc::syscall(libc::SYS_link, p(&a), p(&b()?)),
            "linkat" => libc::syscall(libc::SYS_linkat, at, p(&a), at, p(&b()?), 0),
            "symlink" => libc::syscall(libc::SYS_symlink, p(&a), p(&b()?)),
            "symlinkat" => libc::syscall(libc::SYS_symlinkat, p(&a), at, p(&b()?)),
            "mknod" => libc::syscall(libc::SYS_mknod, p(&a), libc::S_IFIFO | 0o600, 0),
            "mknodat" => libc::syscall(libc::SYS_mknodat, at, p(&a), libc::S_IFIFO | 0o600, 0),
            "mkdir" => libc::syscall(libc::SYS_mkdir, p(&a), 0o750),
            "mkdirat" => libc::syscall(libc::SYS_mkdirat, at, p(&a), 0o750),
            "setxattr" | "lsetxattr" => {
                let value = arg(args, 4)?.clone().into_vec();
                let nr = if name == "setxattr" {
                    libc::SYS_setxattr
                } else {
                    libc::SYS_lsetxattr
                };
                let value_ptr = value.as_ptr() as libc::c_long;
                libc::syscall(nr, p(&a), p(&b()?), value_ptr, value.len(), 0)
            }
            "removexattr" => libc::syscall(libc::SYS_removexattr, p(&a), p(&b()?)),
            "lremovexattr" => libc::syscall(libc::SYS_lremovexattr, p(&a), p(&b()?)),
            #[cfg(target_arch = "x86_64")]
            "removexattrat" => libc::syscall(SYS_REMOVEXATTRAT, at, p(&a), 0, p(&b()?)),
            "chmod" => libc::syscall(libc::SYS_chmod, p(&a), 0o604),
            "fchmodat" => libc::syscall(libc::SYS_fchmodat, at, p(&a), 0o604),
            "fchmodat2" => libc::syscall(libc::SYS_fchmodat2, at, p(&a), 0o604, 0),
            "chown" | "lchown" | "fchownat" => {
                let (uid, gid) = (num(args, 3)?, num(args, 4)?);
                match name.as_str() {
                    "chown" => libc::syscall(libc::SYS_chown, p(&a), uid, gid),
                    "lchown" => libc::syscall(libc::SYS_lchown, p(&a), uid, gid),
                    _ => libc::syscall(libc::SYS_fchownat, at, p(&a), uid, gid, 0),
                }
            }
            "pwrite64" | "writev" | "pwritev" | "pwritev2" | "sendfile" => {
                let fd = open(arg(args, 2)?, libc::O_WRONLY)? as libc::c_long;
                let iov = libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                };
                let iov_ptr = &raw const iov as libc::c_long;
                let buf = data.as_ptr() as libc::c_long;
                let rc = match name.as_str() {
                    "pwrite64" => libc::syscall(libc::SYS_pwrite64, fd, buf, data.len(), 0),
                    "writev" => libc::syscall(libc::SYS_writev, fd, iov_ptr, 1),
                    "pwritev" => libc::syscall(libc::SYS_pwritev, fd, iov_ptr, 1, 0, 0),
                    "pwritev2" => libc::syscall(libc::SYS_pwritev2, fd, iov_ptr, 1, 0, 0, 0),
                    _ => {
                        let zero = open(&OsString::from("/dev/zero"), libc::O_RDONLY)?;
                        let rc = libc::syscall(libc::SYS_sendfile, fd, zero, 0, data.len());
                        libc::close(zero);
                        rc
                    }
                };
                libc::close(fd as i32);
                rc
            }
            _ => return Err(format!("unknown syscall {name:?}")),
        }
    };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOSYS) {
            eprintln!("fsop: {name}: this kernel has no such syscall");
            std::process::exit(3);
        }
        return Err(format!("{name}: {err}"));
    }
    Ok(())
}

/// CLOCK_REALTIME in ns: the clock the store's run and gap times are in.
fn realtime_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// The name of attempt `i` of `unlink-series` (tests create the files under these names).
fn series_name(i: u64) -> String {
    format!("u{i:07}")
}

/// `fsop unlink-series DIR COUNT LOG [OPTION=VALUE...]`: unlinks DIR/u0000000, DIR/u0000001,
/// ... in order (missing files give ENOENT, still one record each) and then writes to LOG one
/// line per attempt, `INDEX BEFORE_NS AFTER_NS`: CLOCK_REALTIME read just before and just after
/// the syscall, so a test can tell whether an attempt lies inside a gap. Options:
/// `signal-at=K signal=SIG pid=PID` sends SIG to PID right after attempt K (mid-flood);
/// `fast=F` makes the first F attempts back to back, then `pace-us=US` sleeps between attempts
/// (default: all back to back); `stop-file=PATH` stops once PATH exists (checked every 64
/// attempts); `create=1` first creates each file (`open` with `O_CREAT|O_EXCL`, closed
/// unwritten: one create record) and then unlinks it (one unlink record), so that every
/// attempt is a create and an unlink of a file that existed. Prints how many attempts were
/// made.
fn unlink_series(args: &[OsString]) -> Result<(), String> {
    let dir = arg(args, 1)?.clone().into_vec();
    let count = num(args, 2)? as u64;
    let log = arg(args, 3)?.clone();
    let mut signal_at = None;
    let mut signal = libc::SIGTERM;
    let mut pid = 0;
    let mut fast = u64::MAX;
    let mut pace = std::time::Duration::ZERO;
    let mut stop_file = None;
    let mut create = false;
    for option in &args[4.min(args.len())..] {
        let option = option.to_str().unwrap_or("");
        let (key, value) = option
            .split_once('=')
            .ok_or_else(|| format!("option {option:?} must be KEY=VALUE"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("option {key} must be a number"))
        };
        match key {
            "signal-at" => signal_at = Some(number()?),
            "signal" => signal = number()? as i32,
            "pid" => pid = number()? as i32,
            "fast" => fast = number()?,
            "pace-us" => pace = std::time::Duration::from_micros(number()?),
            "stop-file" => stop_file = Some(CString::new(value).unwrap_or_default()),
            "create" => create = number()? != 0,
            _ => return Err(format!("unknown option {key:?}")),
        }
    }
    let mut times: Vec<(i64, i64)> = Vec::with_capacity(count.min(10_000_000) as usize);
    for i in 0..count {
        if let Some(stop) = &stop_file
            && i % 64 == 0
            // SAFETY: valid C string.
            && unsafe { libc::access(stop.as_ptr(), libc::F_OK) } == 0
        {
            break;
        }
        let mut p = dir.clone();
        p.push(b'/');
        p.extend_from_slice(series_name(i).as_bytes());
        let c = CString::new(p).unwrap_or_default();
        let before = realtime_ns();
        if create {
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
            // SAFETY: valid C string; plain syscalls.
            let fd = unsafe { libc::open(c.as_ptr(), flags, 0o644) };
            if fd < 0 {
                return Err(format!("create: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: the fd just opened.
            unsafe { libc::close(fd) };
        }
        // SAFETY: valid C string.
        unsafe { libc::unlink(c.as_ptr()) };
        let after = realtime_ns();
        times.push((before, after));
        if signal_at == Some(i) && pid > 0 {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, signal) };
        }
        if i + 1 >= fast && !pace.is_zero() {
            std::thread::sleep(pace);
        }
    }
    let mut out = String::with_capacity(times.len() * 40);
    for (i, (before, after)) in times.iter().enumerate() {
        out.push_str(&format!("{i} {before} {after}\n"));
    }
    std::fs::write(&log, out).map_err(|e| format!("writing {}: {e}", log.to_string_lossy()))?;
    println!("{}", times.len());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.starts_with("unknown") || e.starts_with("missing") || e.contains("must be") => {
            eprintln!("fsop: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("fsop: {e}");
            ExitCode::from(1)
        }
    }
}
