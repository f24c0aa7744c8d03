//! Running a command with a time limit, so that a hang fails the test instead of blocking CI.

use std::{
    ffi::OsStr,
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// What a bounded run gave. Output is kept as raw bytes: tests about escaping look at them.
#[derive(Debug)]
pub struct Bounded {
    /// The exit code; `None` when it was killed by a signal (after the time limit, or otherwise).
    pub code: Option<i32>,
    /// The command did not finish in time and was killed (SIGKILL).
    pub timed_out: bool,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
}

impl Bounded {
    /// stdout as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stderr as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs `program ARGS...` with stdin closed, for at most `limit`; killed (SIGKILL) after it.
pub fn run_bounded(program: &OsStr, args: &[&OsStr], limit: Duration) -> Bounded {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program:?} {args:?}: {e}"));
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("waiting for {program:?}: {e}"),
        }
    };
    Bounded {
        code: status.and_then(|s| s.code()),
        timed_out,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs `ctrwatch ARGS...` for at most `limit` (see [`run_bounded`]).
pub fn ctrwatch_bounded(args: &[&OsStr], limit: Duration) -> Bounded {
    run_bounded(crate::ctrwatch_bin().as_os_str(), args, limit)
}

/// Whether `hay` contains `needle` (bytes).
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
