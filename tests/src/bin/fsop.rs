//! `fsop OP ARGS...`: performs exactly one file operation with the syscall named, so that
//! integration tests know which syscall, from which process, produced a record. Paths are taken
//! as raw bytes (non-UTF-8 names work). Exit status 0 when the operation succeeded, 1 when the
//! kernel refused it (the errno is printed), 2 on bad usage.

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
                let dir = open(arg(args, 1)?, libc::O_RDONLY | libc::O_DIRECTORY)?;
                check(
                    libc::unlinkat(dir, cstr(arg(args, 2)?).as_ptr(), 0) as _,
                    "unlinkat",
                )?;
            }
            "cwd-unlink" => {
                // relative to the working directory: fsop cwd-unlink DIR NAME
                check(libc::chdir(cstr(arg(args, 1)?).as_ptr()) as _, "chdir")?;
                check(libc::unlink(cstr(arg(args, 2)?).as_ptr()) as _, "unlink")?;
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
            _ => return Err(format!("unknown operation {op:?}")),
        }
    }
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
