//! Harness for ctrwatch's integration tests: they need root and a real kernel, and drive the
//! real `ctrwatch` binary.
//!
//! [`Watcher`] runs `ctrwatch watch --json` on some roots and collects its output in the
//! background; tests perform operations from child processes and wait for the records.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "the harness of the integration tests: a setup that fails panics the test that asked for it, with its message"
)]

pub mod alertmanager;
pub mod bounded;
pub mod containerd;
pub mod receiver;
pub mod tmpfs;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

/// How long a test waits for a record before failing. Generous: a record normally comes within
/// milliseconds, but on a loaded 2-core CI machine (tests of one binary run in parallel, each
/// with its own debug-built daemon) a reader thread can be held back for seconds; only a
/// failing test waits this long.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The ctrwatch binary under test: $CTRWATCH_BIN (set by `cargo xtask test`), else the debug
/// build next to this test binary.
pub fn ctrwatch_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CTRWATCH_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/<test> -> target/debug/ctrwatch
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("ctrwatch"))
        .unwrap_or_default();
    assert!(
        candidate.exists(),
        "ctrwatch binary not found: build it (cargo build -p watcher) or set CTRWATCH_BIN; \
         `cargo xtask test` does both"
    );
    candidate
}

/// These tests load eBPF programs: they must run as root, and are never skipped silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests need root (they load eBPF programs): run `sudo cargo xtask test`"
    );
}

/// A fresh directory under /tmp for one test (not under the system temp dir, which may be a
/// tmpfs mounted elsewhere in other environments; /tmp is what the docs use). Unique within
/// the test process by a counter: two tests of one binary run at the same time, and a name
/// they share must not make one remove the other's directory.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = PathBuf::from(format!(
        "/tmp/ctrwatch-test-{}-{}-{}",
        name,
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir
}

/// Removes `dir` and everything in it when the test binary exits (normally: after its last
/// test). For the scratch directory of a fixture shared by a file's tests, which lives in a
/// static and is never dropped.
pub fn remove_at_exit(dir: &Path) {
    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    extern "C" fn remove_all() {
        if let Ok(dirs) = DIRS.lock() {
            for d in dirs.iter() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    if let Ok(mut dirs) = DIRS.lock() {
        dirs.push(dir.to_path_buf());
    }
    // SAFETY: registers a function with no arguments that only takes a lock and removes
    // directories; atexit has no other requirement.
    REGISTERED.call_once(|| unsafe {
        libc::atexit(remove_all);
    });
}

/// Writes `text` as a configuration file, root's and 0600 as a deployed one would be (written
/// aside and renamed over, as an editor or a deployment does: a reload never reads half a file).
pub fn write_config(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// Waits until `done` holds, for at most `deadline`; fails with "never: WHAT" and `seen()`.
pub fn wait_until(
    what: &str,
    deadline: Duration,
    done: impl Fn() -> bool,
    seen: impl Fn() -> String,
) {
    let until = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < until, "never: {what}; seen:\n{}", seen());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Collects `child`'s stderr (piped) line by line into a string the test reads while the child
/// runs; join the handle once the child has exited to have every line.
pub fn collect_stderr(child: &mut Child) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let pipe = child.stderr.take().expect("stderr must be piped");
    let shared = Arc::clone(&text);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(mut s) = shared.lock() {
                s.push_str(&line);
                s.push('\n');
            }
        }
    });
    (text, reader)
}

/// A running `ctrwatch watch --json`.
pub struct Watcher {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Watcher {
    /// Starts the watcher on `roots` with `extra` arguments and waits until it is attached.
    pub fn start(roots: &[&Path], extra: &[&str]) -> Watcher {
        let mut args: Vec<std::ffi::OsString> = vec!["watch".into(), "--json".into()];
        for r in roots {
            args.push("--root".into());
            args.push(r.as_os_str().to_owned());
        }
        args.extend(extra.iter().map(|a| a.into()));
        Watcher::start_command(&args)
    }

    /// Starts `ctrwatch ARGS...` (e.g. `run --root R --store S`) and waits until it is
    /// attached. Its stdout, if any, must be JSON lines.
    pub fn start_command(args: &[std::ffi::OsString]) -> Watcher {
        Watcher::start_command_env(args, &[])
    }

    /// [`Watcher::start_command`] with these environment variables set.
    pub fn start_command_env(args: &[std::ffi::OsString], env: &[(&str, &str)]) -> Watcher {
        Watcher::start_binary(&ctrwatch_bin(), args, env)
    }

    /// [`Watcher::start_command_env`] of another ctrwatch binary (e.g. the previous build, for
    /// an upgrade).
    pub fn start_binary(bin: &Path, args: &[std::ffi::OsString], env: &[(&str, &str)]) -> Watcher {
        require_root();
        let mut cmd = Command::new(bin);
        cmd.envs(env.iter().copied());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl in the child before exec; async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                // The watcher must not outlive the tests (a shared watcher is never dropped).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let lines = Arc::clone(&lines);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let value: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("watch --json printed non-JSON {line:?}: {e}"));
                    if let Ok(mut l) = lines.lock() {
                        l.push(value);
                    }
                }
            }));
        }
        if let Some(err) = child.stderr.take() {
            let stderr = Arc::clone(&stderr);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut s) = stderr.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            }));
        }
        let mut watcher = Watcher {
            child,
            lines,
            stderr,
            readers,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let err = watcher.stderr();
            if err.contains("ctrwatch: watching") {
                break;
            }
            // A failed start ends the process with `ctrwatch: error: ...`. Not any line with
            // "error" in it: the alert delivery threads start before the "watching" line (at
            // capture start, then /proc is read), and a warning of theirs that names an error
            // could come first on a loaded machine.
            if let Ok(Some(status)) = watcher.child.try_wait() {
                for r in watcher.readers.drain(..) {
                    let _ = r.join();
                }
                panic!(
                    "ctrwatch exited ({status}) before attaching:\n{}",
                    watcher.stderr()
                );
            }
            assert!(
                !err.contains("ctrwatch: error"),
                "ctrwatch failed to start:\n{err}"
            );
            assert!(
                Instant::now() < deadline,
                "ctrwatch did not attach within 120 s; stderr:\n{err}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        watcher
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every record so far.
    pub fn records(&self) -> Vec<Value> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until a record matching `pred` has arrived; returns it.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(v) = self.records().into_iter().find(&pred) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no record for {what} within {EVENT_TIMEOUT:?}; records so far:\n{}\nstderr:\n{}",
                self.records()
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal to the watcher (SIGSTOP/SIGCONT to hold its reading back).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits until the watcher exits by itself (e.g. after a signal sent by another process),
    /// at most `timeout`; returns its exit status, or None if it was still running (it is then
    /// stopped when dropped).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    for r in self.readers.drain(..) {
                        let _ = r.join();
                    }
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    /// Stops the watcher (SIGTERM), waits for it, and returns every record it printed.
    pub fn stop(mut self) -> Vec<Value> {
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGTERM);
        let status = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "ctrwatch exited with {status:?}; stderr:\n{}",
            self.stderr()
        );
        self.records()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGCONT);
            self.signal(libc::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

/// Field of a record as a string ("" when absent).
pub fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

/// The record's process object field.
pub fn process<'a>(v: &'a Value, field: &str) -> &'a Value {
    v.get("process")
        .and_then(|p| p.get(field))
        .unwrap_or(&Value::Null)
}

/// Starts a watcher from a thread that lives as long as the test process, so that the
/// watcher's parent-death signal fires when the tests end, not when the test that happened to
/// start it finishes. For a watcher shared by the tests of one binary.
pub fn start_shared(roots: Vec<PathBuf>, extra: Vec<String>) -> Watcher {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let roots: Vec<&Path> = roots.iter().map(PathBuf::as_path).collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let result = std::panic::catch_unwind(|| Watcher::start(&roots, &extra));
        let _ = tx.send(result);
        loop {
            std::thread::park();
        }
    });
    match rx.recv() {
        Ok(Ok(w)) => w,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => panic!("watcher thread: {e}"),
    }
}

/// Runs `ctrwatch ARGS...` to completion: (exit code, stdout, stderr).
pub fn ctrwatch(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(ctrwatch_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ctrwatch {args:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// JSON lines of a command's stdout.
pub fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// The events the store holds for `path` (`ctrwatch history PATH --store STORE --json`).
pub fn history_json(store: &Path, path: &Path) -> Vec<Value> {
    let (code, out, err) = ctrwatch(&[
        std::ffi::OsStr::new("history"),
        path.as_os_str(),
        std::ffi::OsStr::new("--store"),
        store.as_os_str(),
        std::ffi::OsStr::new("--json"),
    ]);
    assert_eq!(code, 0, "ctrwatch history: {err}");
    json_lines(&out)
}

/// The first stored `op` event of `path`, once the daemon has committed it (60 s at most).
pub fn wait_history(store: &Path, path: &Path, op: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = history_json(store, path)
            .into_iter()
            .find(|v| v["op"] == op)
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "the store has no {op} of {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Creates and deletes `file` with a command line carrying `token` (`rm -f -- FILE TOKEN`:
/// TOKEN names no file; it is only there to be in the argv), to see how argv is masked.
pub fn delete_with_token(file: &Path, token: &str) {
    std::fs::write(file, b"x").expect("create");
    let status = Command::new("rm")
        .args([
            std::ffi::OsStr::new("-f"),
            std::ffi::OsStr::new("--"),
            file.as_os_str(),
        ])
        .arg(token)
        .status()
        .expect("rm");
    assert!(status.success());
    assert!(!file.exists());
}
