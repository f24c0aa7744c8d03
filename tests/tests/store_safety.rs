//! The history store on a hostile node (issue 10): other users can neither read nor lock it;
//! one writer per database whatever name reaches it (hardlink, symlink), waiting for the lock
//! a dead daemon still holds; a corrupt store or a full disk at start does not stop capture;
//! queries read every committed event on a full disk and on a read-only mount. Real daemon,
//! real kernel, real filesystems (tmpfs mounts made and removed by the tests). Needs root.
//!
//! The tests run with umask 0, so every mode checked here is one ctrwatch set itself.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, Once},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::tmpfs::Tmpfs;
use tests::{ctrwatch, ctrwatch_bin, json_lines, process, require_root, s, temp_dir};

/// An unprivileged user (no passwd entry needed) and a second one.
const USER: u32 = 1001;
const OTHER_USER: u32 = 1002;
/// The readers' group given to `--store-group` (numeric: no /etc/group entry needed).
const READERS: u32 = 4242;

fn umask_zero() {
    static ONCE: Once = Once::new();
    // SAFETY: umask has no preconditions.
    ONCE.call_once(|| unsafe {
        libc::umask(0);
    });
}

/// A fresh 0755 directory (the umask is 0 here: modes are always set explicitly).
fn base_dir(name: &str) -> PathBuf {
    umask_zero();
    require_root();
    let dir = temp_dir(name);
    set_mode(&dir, 0o755);
    dir
}

fn mkdir(dir: &Path, mode: u32) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    set_mode(dir, mode);
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn gid_of(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .gid()
}

fn sibling(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A `ctrwatch run` started without waiting for it to attach: its stderr is collected, and it
/// is stopped (SIGTERM) when dropped. Killed with its test (parent-death signal).
struct Daemon {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Daemon {
    fn spawn(args: &[&OsStr]) -> Daemon {
        let mut cmd = Command::new(ctrwatch_bin());
        cmd.arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl in the child before exec; async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn ctrwatch run");
        let stderr = Arc::new(Mutex::new(String::new()));
        let reader = child.stderr.take().map(|err| {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut s) = stderr.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            })
        });
        Daemon {
            child,
            stderr,
            reader,
        }
    }

    /// `ctrwatch run --root ROOT --store STORE EXTRA...`, waiting until it watches.
    fn start(root: &Path, store: &Path, extra: &[&str]) -> Daemon {
        let d = Daemon::spawn(&run_args(root, store, extra));
        d.wait_watching();
        d
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until stderr contains `what`; None if the daemon exited first or the time ran
    /// out (then its exit status, if any).
    fn wait_for(&mut self, what: &str, timeout: Duration) -> Result<(), Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(what) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader catch the last lines.
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return if self.stderr().contains(what) {
                    Ok(())
                } else {
                    Err(Some(status))
                };
            }
            if Instant::now() >= deadline {
                return Err(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_watching(&self) {
        // A shared reference is enough for callers; the exit check needs the child mutably.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let err = self.stderr();
            if err.contains("ctrwatch: watching") {
                return;
            }
            // Not any "error": a degraded store logs its write errors and keeps capturing.
            assert!(
                !err.contains("ctrwatch: error"),
                "ctrwatch run failed to start:\n{err}"
            );
            assert!(
                Instant::now() < deadline,
                "ctrwatch run did not attach within 120 s; stderr:\n{err}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the daemon to exit by itself; its status and stderr.
    fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return (status, self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "ctrwatch run still running after {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, and a clean exit.
    fn stop(mut self) -> String {
        self.signal(libc::SIGTERM);
        let status = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let err = self.stderr();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "ctrwatch run exited with {status:?}; stderr:\n{err}"
        );
        err
    }

    /// SIGKILL and reaping: every file of the process is closed.
    fn kill_9(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

fn run_args<'a>(root: &'a Path, store: &'a Path, extra: &'a [&'a str]) -> Vec<&'a OsStr> {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("--root"),
        root.as_os_str(),
        OsStr::new("--store"),
        store.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    args
}

/// `ctrwatch ARGS` as `uid` with the supplementary groups `groups`: (code, stdout, stderr).
fn ctrwatch_as(uid: u32, groups: &[u32], args: &[&OsStr]) -> (i32, String, String) {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    let out = cmd
        .arg(ctrwatch_bin())
        .args(args)
        .output()
        .expect("setpriv ctrwatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A command run as `uid` (groups as above) in the background, killed when dropped.
struct Background(Child);

impl Background {
    fn spawn(uid: u32, groups: &[u32], argv: &[&OsStr]) -> Background {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"));
        if groups.is_empty() {
            cmd.arg("--clear-groups");
        } else {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            cmd.arg(format!("--groups={}", list.join(",")));
        }
        Background(
            cmd.args(argv)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn background command"),
        )
    }

    /// Still running after `d`?
    fn alive_after(&mut self, d: Duration) -> bool {
        std::thread::sleep(d);
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Creates `n` files named `PREFIX-i` under `dir` (each a `create` event).
fn create_files(dir: &Path, prefix: &str, n: usize) {
    for i in 0..n {
        std::fs::write(dir.join(format!("{prefix}-{i}")), b"x").expect("create file");
    }
}

/// Every event of the store (as root), newest first.
fn all_events(store: &Path) -> Result<Vec<Value>, String> {
    let (code, out, err) = ctrwatch(&[
        OsStr::new("query"),
        OsStr::new("--limit"),
        OsStr::new("10000000"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ]);
    if code == 0 {
        Ok(json_lines(&out))
    } else {
        Err(format!("exit {code}: {err}"))
    }
}

fn creates_with_prefix(events: &[Value], prefix: &str) -> usize {
    events
        .iter()
        .filter(|v| {
            s(v, "op") == "create"
                && Path::new(s(v, "path"))
                    .file_name()
                    .and_then(OsStr::to_str)
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .count()
}

/// How long the tests wait for the daemon to have committed what they did: it commits every
/// second, but a loaded 2-core machine (other tests' daemons, fsyncs) can hold it back for
/// many; only a failing test waits this long.
const STORED: Duration = Duration::from_secs(60);

/// Waits until the store holds `n` creates of files named `prefix-*`.
fn wait_for_creates(store: &Path, prefix: &str, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = all_events(store);
        if let Ok(events) = &last
            && creates_with_prefix(events, prefix) >= n
        {
            return events.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the store never held {n} creates of {prefix}-*; last query: {:?}",
            last.map(|e| creates_with_prefix(&e, prefix))
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn try_gaps(store: &Path) -> Result<Vec<Value>, String> {
    let (code, out, err) = ctrwatch(&[
        OsStr::new("gaps"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ]);
    if code == 0 {
        Ok(json_lines(&out))
    } else {
        Err(format!("exit {code}: {err}"))
    }
}

fn gaps(store: &Path) -> Vec<Value> {
    try_gaps(store).unwrap_or_else(|e| panic!("gaps: {e}"))
}

// ---------------------------------------------------------------------------------------------

/// Issue 10, item 1: the store's files were 0644 in a 0755 directory; another user read every
/// stored command line with `ctrwatch query`, and `flock -x events.db.lock` kept the daemon
/// from starting.
#[test]
fn another_user_can_neither_read_nor_lock_the_store() {
    let base = base_dir("store-perm");
    let root = base.join("root");
    mkdir(&root, 0o755);
    let store_dir = base.join("store");
    let store = store_dir.join("events.db");
    let daemon = Daemon::start(&root, &store, &[]);
    let token = "cmdline-token-51f3";
    let status = Command::new(env!("CARGO_BIN_EXE_fsop"))
        .arg("create")
        .arg(root.join("secret-file"))
        .arg(token)
        .status()
        .expect("fsop");
    assert!(status.success());
    let events = wait_for_creates(&store, "secret", 1, STORED);
    assert!(
        events
            .iter()
            .any(|v| process(v, "cmdline").to_string().contains(token)),
        "root reads the command line: {events:?}"
    );

    // Modes set by ctrwatch itself (umask 0 here), while the daemon writes.
    assert_eq!(mode_of(&store_dir), 0o700, "store directory");
    for f in ["", "-wal", "-shm"] {
        let p = sibling(&store, f);
        assert_eq!(mode_of(&p), 0o600, "{}", p.display());
    }

    // Another user cannot read it: a clear error, the documented exit code, nothing printed.
    let (code, out, err) = ctrwatch_as(
        USER,
        &[],
        &[
            OsStr::new("query"),
            OsStr::new("--store"),
            store.as_os_str(),
            OsStr::new("--json"),
        ],
    );
    assert_eq!(code, 8, "another user's query: stdout {out}\nstderr {err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(!out.contains(token), "{out}");

    // ... nor lock it: with the daemon stopped, the user tries `flock -x` on what the old lock
    // file was and on the database; the daemon still starts.
    daemon.stop();
    let mut lockers: Vec<Background> = [sibling(&store, ".lock"), store.clone()]
        .iter()
        .map(|p| {
            Background::spawn(
                USER,
                &[],
                &[
                    OsStr::new("flock"),
                    OsStr::new("-x"),
                    p.as_os_str(),
                    OsStr::new("sleep"),
                    OsStr::new("60"),
                ],
            )
        })
        .collect();
    let holding = lockers
        .iter_mut()
        .map(|l| l.alive_after(Duration::from_millis(300)))
        .collect::<Vec<_>>();
    let daemon = Daemon::spawn(&run_args(&root, &store, &[]));
    daemon.wait_watching();
    assert!(
        !daemon.stderr().contains("waiting"),
        "the daemon waited for a lock another user holds ({holding:?}):\n{}",
        daemon.stderr()
    );
    daemon.stop();
    drop(lockers);
    let _ = std::fs::remove_dir_all(base);
}

/// Item 1, the fix's other half: members of `--store-group` read a live store (and a stopped
/// one); other users are denied; a member's flock on the database does not block the daemon.
#[test]
fn store_group_members_read_the_store_and_other_users_are_denied() {
    let base = base_dir("store-group");
    let root = base.join("root");
    mkdir(&root, 0o755);
    let store_dir = base.join("store");
    let store = store_dir.join("events.db");
    let group = READERS.to_string();
    let daemon = Daemon::start(&root, &store, &["--store-group", &group]);
    create_files(&root, "grp", 20);
    wait_for_creates(&store, "grp", 20, STORED);
    assert_eq!(mode_of(&store_dir), 0o750);
    assert_eq!(gid_of(&store_dir), READERS);
    for f in ["", "-wal", "-shm"] {
        let p = sibling(&store, f);
        assert_eq!(mode_of(&p), 0o640, "{}", p.display());
        assert_eq!(gid_of(&p), READERS, "{}", p.display());
    }
    let query = [
        OsStr::new("query"),
        OsStr::new("--op"),
        OsStr::new("create"),
        OsStr::new("--limit"),
        OsStr::new("100000"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ];
    // A member reads the live store (WAL mode, the daemon writing).
    let (code, out, err) = ctrwatch_as(USER, &[READERS], &query);
    assert_eq!(code, 0, "member's query on the live store: {err}");
    assert_eq!(creates_with_prefix(&json_lines(&out), "grp"), 20, "{out}");
    let grp3 = root.join("grp-3");
    for cmd in [
        vec![OsStr::new("history"), grp3.as_os_str()],
        vec![OsStr::new("gaps")],
    ] {
        let mut args = cmd.clone();
        args.extend([OsStr::new("--store"), store.as_os_str()]);
        let (code, out, err) = ctrwatch_as(USER, &[READERS], &args);
        assert_eq!(code, 0, "member's {cmd:?}: {out} {err}");
        if cmd[0] == "history" {
            assert!(out.contains("grp-3"), "{out}");
        }
    }
    // Another user is denied.
    let (code, out, err) = ctrwatch_as(OTHER_USER, &[], &query);
    assert_eq!(code, 8, "non-member: {out} {err}");
    assert!(err.contains("permission denied"), "{err}");

    // The daemon keeps writing while members read; more events arrive and are seen.
    create_files(&root, "grp2", 10);
    wait_for_creates(&store, "grp2", 10, STORED);
    let (code, out, err) = ctrwatch_as(USER, &[READERS], &query);
    assert_eq!(code, 0, "{err}");
    assert_eq!(creates_with_prefix(&json_lines(&out), "grp2"), 10);

    // A member can open the database and flock it; that does not block the daemon.
    daemon.stop();
    let mut locker = Background::spawn(
        USER,
        &[READERS],
        &[
            OsStr::new("flock"),
            OsStr::new("-x"),
            store.as_os_str(),
            OsStr::new("sleep"),
            OsStr::new("60"),
        ],
    );
    assert!(
        locker.alive_after(Duration::from_millis(300)),
        "a member can flock the database it can read"
    );
    let daemon = Daemon::start(&root, &store, &["--store-group", &group]);
    assert!(!daemon.stderr().contains("waiting"), "{}", daemon.stderr());
    daemon.stop();
    drop(locker);

    // Stopped cleanly (no -wal, no -shm; the member cannot create them): still readable.
    assert!(!sibling(&store, "-wal").exists());
    let (code, out, err) = ctrwatch_as(USER, &[READERS], &query);
    assert_eq!(code, 0, "member's query on the stopped store: {err}");
    assert_eq!(creates_with_prefix(&json_lines(&out), "grp"), 30);
    let _ = std::fs::remove_dir_all(base);
}

/// Item 4: a second daemon on a hardlink to the store ran alongside the first; through a
/// symlink it recorded a false `unclean_stop`. Now it waits for the first one's lock.
#[test]
fn a_second_daemon_on_a_hardlink_or_symlink_waits_for_the_lock() {
    let base = base_dir("store-links");
    let root = base.join("root");
    mkdir(&root, 0o755);
    let store_dir = base.join("store");
    let store = store_dir.join("events.db");
    let first = Daemon::start(&root, &store, &[]);
    let hard = store_dir.join("hard.db");
    std::fs::hard_link(&store, &hard).expect("hardlink");
    let link = store_dir.join("link.db");
    std::os::unix::fs::symlink("events.db", &link).expect("symlink");

    for other in [&hard, &link] {
        let mut second = Daemon::spawn(&run_args(&root, other, &[]));
        let waited = second.wait_for("waiting", Duration::from_secs(60));
        let err = second.stderr();
        assert!(
            waited.is_ok() && !err.contains("ctrwatch: watching"),
            "a daemon on {} must wait for the first one ({:?}):\n{err}",
            other.display(),
            waited
        );
        assert!(
            err.contains(&format!("pid {}", first.pid())),
            "the wait names the holder (pid {}):\n{err}",
            first.pid()
        );
        if other == &link {
            // When the first one stops, the waiting one takes over.
            first.stop();
            second.wait_watching();
            create_files(&root, "after", 3);
            wait_for_creates(&store, "after", 3, STORED);
            second.stop();
            break;
        }
        second.signal(libc::SIGTERM);
        let (_, _) = second.wait_exit(Duration::from_secs(60));
    }
    let gaps = gaps(&store);
    assert!(
        !gaps.iter().any(|g| s(g, "reason") == "unclean_stop"),
        "no false unclean stop: {gaps:?}"
    );
    assert!(
        gaps.iter()
            .any(|g| s(g, "kind") == "downtime" && s(g, "reason") == "stopped"),
        "{gaps:?}"
    );
    let _ = std::fs::remove_dir_all(base);
}

/// Item 8: a restart right after `kill -9` failed for ~3 s with "store is locked" while the
/// dead process released its programs. Now the start waits (bounded: `--store-lock-wait`).
#[test]
fn a_restart_right_after_kill_9_waits_for_the_lock() {
    let base = base_dir("store-kill9");
    let root = base.join("root");
    mkdir(&root, 0o755);
    let store = base.join("store/events.db");
    let first = Daemon::start(&root, &store, &[]);
    create_files(&root, "before", 5);
    wait_for_creates(&store, "before", 5, STORED);
    // As `kill -9 PID; ctrwatch run` in a shell (or a watchdog) does it: the new start does
    // not wait for the old process to be gone, which may still be releasing its programs.
    first.signal(libc::SIGKILL);
    let mut second = Daemon::spawn(&run_args(&root, &store, &[]));
    let started = second.wait_for("ctrwatch: watching", Duration::from_secs(120));
    assert!(
        started.is_ok(),
        "the restart after kill -9 failed ({started:?}):\n{}",
        second.stderr()
    );
    // While it runs, a third one gives up after the bound it was given, naming the holder.
    let t0 = Instant::now();
    let third = Daemon::spawn(&run_args(&root, &store, &["--store-lock-wait", "1"]));
    let (status, err) = third.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("locked"), "{err}");
    assert!(err.contains(&format!("pid {}", second.pid())), "{err}");
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "gave up before the bound"
    );
    create_files(&root, "after", 5);
    wait_for_creates(&store, "after", 5, STORED);
    second.stop();
    first.kill_9();
    let gaps = gaps(&store);
    assert!(
        gaps.iter()
            .any(|g| s(g, "kind") == "downtime" && s(g, "reason") == "unclean_stop"),
        "{gaps:?}"
    );
    let _ = std::fs::remove_dir_all(base);
}

/// The files of `dir` whose name starts with `events.db.corrupt-`.
fn corrupt_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with("events.db.corrupt-"))
        })
        .collect();
    v.sort();
    v
}

/// Item 11: a corrupt store (truncated, "malformed", not a database) made `run` exit 1. Now
/// it is moved aside, a new store starts, the reset is a gap and a warning, and capture goes
/// on.
#[test]
fn a_corrupt_store_is_moved_aside_and_capture_goes_on() {
    let base = base_dir("store-corrupt");
    let root = base.join("root");
    mkdir(&root, 0o755);
    let store_dir = base.join("store");
    let store = store_dir.join("events.db");
    type Damage = fn(&Path);
    let cases: [(&str, Damage); 3] = [
        ("truncated", |db| {
            let len = std::fs::metadata(db).expect("stat").len();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(db)
                .expect("open");
            f.set_len(len / 2).expect("truncate");
        }),
        ("malformed", |db| {
            // Garbage over every page but the first (16 KiB pages): the tables are damaged,
            // the header still says SQLite.
            let len = std::fs::metadata(db).expect("stat").len();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(db)
                .expect("open");
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(16384)).expect("seek");
            f.write_all(&vec![0xa5; (len - 16384) as usize])
                .expect("garbage");
        }),
        ("not a database", |db| {
            std::fs::write(db, vec![0x5a; 64 * 1024]).expect("garbage");
        }),
    ];
    for (n, (what, damage)) in cases.iter().enumerate() {
        let prefix = format!("case{n}");
        let d = Daemon::start(&root, &store, &[]);
        create_files(&root, &prefix, 50);
        wait_for_creates(&store, &prefix, 50, STORED);
        d.stop();
        assert!(
            !sibling(&store, "-wal").exists(),
            "a clean stop folds the WAL"
        );
        let damaged_len = {
            damage(&store);
            std::fs::metadata(&store).expect("stat").len()
        };
        let before = corrupt_files(&store_dir);
        let d = Daemon::spawn(&run_args(&root, &store, &[]));
        d.wait_watching();
        let err = d.stderr();
        assert!(
            err.contains("corrupt") && err.contains("moved"),
            "{what}: the reset is logged:\n{err}"
        );
        let after = corrupt_files(&store_dir);
        let moved: Vec<&PathBuf> = after
            .iter()
            .filter(|p| !before.contains(p) && !p.to_string_lossy().ends_with("-wal"))
            .filter(|p| !p.to_string_lossy().ends_with("-shm"))
            .collect();
        assert_eq!(moved.len(), 1, "{what}: {after:?}");
        assert_eq!(
            std::fs::metadata(moved[0]).expect("stat").len(),
            damaged_len,
            "{what}: the damaged file is kept as it was"
        );
        let after_prefix = format!("after{n}");
        create_files(&root, &after_prefix, 10);
        wait_for_creates(&store, &after_prefix, 10, STORED);
        d.stop();
        let gaps = gaps(&store);
        let reset = gaps
            .iter()
            .find(|g| s(g, "kind") == "store_reset")
            .unwrap_or_else(|| panic!("{what}: no store_reset gap in {gaps:?}"));
        let name = moved[0]
            .file_name()
            .and_then(OsStr::to_str)
            .unwrap_or_default();
        assert!(s(reset, "reason").contains(name), "{what}: {reset}");
        assert!(s(reset, "from") <= s(reset, "to"), "{reset}");
    }
    let _ = std::fs::remove_dir_all(base);
}

/// Item 11: a disk that is already full made `run` exit 1. Now the daemon starts, captures
/// (counting what it cannot store), and records the gap once space returns: for an existing
/// store and for one that cannot even be created.
#[test]
fn a_full_disk_at_start_does_not_stop_capture() {
    let base = base_dir("store-full");
    let root = base.join("root");
    mkdir(&root, 0o755);
    let mnt = Tmpfs::mount(&base.join("mnt"), "4m");
    for (n, store) in [mnt.0.join("store/events.db"), mnt.0.join("fresh/events.db")]
        .iter()
        .enumerate()
    {
        if n == 0 {
            // An existing store, stopped cleanly.
            let d = Daemon::start(&root, store, &[]);
            create_files(&root, "first", 5);
            wait_for_creates(store, "first", 5, STORED);
            d.stop();
        }
        let filler = mnt.fill();
        let d = Daemon::spawn(&run_args(&root, store, &[]));
        d.wait_watching();
        let full = format!("full{n}");
        create_files(&root, &full, 40);
        std::thread::sleep(Duration::from_secs(2));
        std::fs::remove_file(&filler).expect("free space");
        // The store is retried every few seconds; then the gap is written.
        let deadline = Instant::now() + Duration::from_secs(40);
        let gap = loop {
            if let Ok(g) = try_gaps(store)
                && let Some(gap) = g.iter().find(|g| s(g, "kind") == "store_full")
            {
                break gap.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no store_full gap after space returned; stderr:\n{}",
                d.stderr()
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        let lost = gap["lost"].as_u64().unwrap_or(0);
        let creates = gap["kinds"]["create"].as_u64().unwrap_or(0);
        assert!(creates >= 40 && lost >= creates, "{gap}");
        let after = format!("after{n}");
        create_files(&root, &after, 10);
        wait_for_creates(store, &after, 10, STORED);
        d.stop();
    }
    drop(mnt);
    let _ = std::fs::remove_dir_all(base);
}

/// A store on a small tmpfs with `n` committed creates, the daemon killed with -9 so that they
/// are still in the WAL (and the -shm is left behind). Returns (mount, store, all events).
fn store_killed_with_its_wal(base: &Path, n: usize) -> (Tmpfs, PathBuf, usize) {
    let root = base.join("root");
    mkdir(&root, 0o755);
    let mnt = Tmpfs::mount(&base.join("mnt"), "8m");
    let store = mnt.0.join("store/events.db");
    let d = Daemon::start(&root, &store, &[]);
    create_files(&root, "wal", n);
    let events = wait_for_creates(&store, "wal", n, STORED).len();
    // Nothing may arrive after the count: the daemon is killed right away.
    d.kill_9();
    let committed = all_events(&store).expect("query after kill -9").len();
    assert!(committed >= events);
    assert!(
        std::fs::metadata(sibling(&store, "-wal")).is_ok_and(|m| m.len() > 32),
        "the events are still in the WAL"
    );
    (mnt, store, committed)
}

/// A query as root leaves an empty -wal and a -shm behind (SQLite creates them to read); a
/// store the daemon stopped cleanly has neither. Puts the store back in that state (nothing
/// has it open).
fn as_after_a_clean_stop(store: &Path) {
    let wal = sibling(store, "-wal");
    if let Ok(m) = std::fs::metadata(&wal) {
        assert_eq!(m.len(), 0, "nothing left in the WAL");
        std::fs::remove_file(&wal).expect("rm -wal");
    }
    let _ = std::fs::remove_file(sibling(store, "-shm"));
}

/// Item 11: queries on a full disk exited 7. They must read every committed event, including
/// those still in the WAL.
#[test]
fn queries_on_a_full_disk_read_every_committed_event() {
    let base = base_dir("store-query-full");
    let (mnt, store, _) = store_killed_with_its_wal(&base, 300);
    // After a clean stop (everything in the main file, no -wal, no -shm), the disk fills.
    let d = Daemon::start(&base.join("root"), &store, &[]);
    d.stop();
    let committed = all_events(&store).expect("query").len();
    as_after_a_clean_stop(&store);
    let filler = mnt.fill();
    let got = all_events(&store).map(|e| e.len());
    assert_eq!(
        got,
        Ok(committed),
        "query on a full disk after a clean stop"
    );
    std::fs::remove_file(&filler).expect("free");

    // Killed with events in the WAL; the disk fills.
    let d = Daemon::start(&base.join("root"), &store, &[]);
    create_files(&base.join("root"), "walfull", 100);
    wait_for_creates(&store, "walfull", 100, STORED);
    d.kill_9();
    let committed = all_events(&store).expect("query").len();
    assert!(std::fs::metadata(sibling(&store, "-wal")).is_ok_and(|m| m.len() > 32));
    let _filler = mnt.fill();
    let got = all_events(&store).map(|e| e.len());
    assert_eq!(
        got,
        Ok(committed),
        "query on a full disk, WAL and -shm present"
    );
    // Without the -shm (it cannot be recreated on a full disk).
    std::fs::remove_file(sibling(&store, "-shm")).expect("rm -shm");
    let _more = mnt.fill();
    let got = all_events(&store).map(|e| e.len());
    assert_eq!(got, Ok(committed), "query on a full disk, WAL without -shm");
    drop(mnt);
    let _ = std::fs::remove_dir_all(base);
}

/// Item 11: queries on a read-only mount exited 1 with "unable to open database file". They
/// must read every committed event, including those still in the WAL.
#[test]
fn queries_on_a_read_only_mount_read_every_committed_event() {
    let base = base_dir("store-query-ro");
    let (mnt, store, _) = store_killed_with_its_wal(&base, 300);
    // A clean stop first (the store folded into the main file, no -wal, no -shm).
    let d = Daemon::start(&base.join("root"), &store, &[]);
    create_files(&base.join("root"), "clean", 20);
    wait_for_creates(&store, "clean", 20, STORED);
    d.stop();
    let committed = all_events(&store).expect("query").len();
    as_after_a_clean_stop(&store);
    mnt.remount("ro");
    let got = all_events(&store).map(|e| e.len());
    assert_eq!(got, Ok(committed), "read-only mount after a clean stop");
    mnt.remount("rw");

    // Killed with events in the WAL, -shm present, then read-only.
    let d = Daemon::start(&base.join("root"), &store, &[]);
    create_files(&base.join("root"), "walro", 100);
    wait_for_creates(&store, "walro", 100, STORED);
    d.kill_9();
    let committed = all_events(&store).expect("query").len();
    assert!(std::fs::metadata(sibling(&store, "-wal")).is_ok_and(|m| m.len() > 32));
    mnt.remount("ro");
    let got = all_events(&store).map(|e| e.len());
    assert_eq!(got, Ok(committed), "read-only mount, WAL and -shm present");
    mnt.remount("rw");
    std::fs::remove_file(sibling(&store, "-shm")).expect("rm -shm");
    mnt.remount("ro");
    let got = all_events(&store).map(|e| e.len());
    assert_eq!(got, Ok(committed), "read-only mount, WAL without -shm");
    mnt.remount("rw");
    drop(mnt);
    let _ = std::fs::remove_dir_all(base);
}

/// Item 1: a store directory left too open by an older ctrwatch is tightened (and said so); one
/// owned by another user, or writable by others, is refused with a clear error.
#[test]
fn a_too_open_store_directory_is_tightened_and_an_unsafe_one_refused() {
    let base = base_dir("store-dirs");
    let root = base.join("root");
    mkdir(&root, 0o755);
    // As an older ctrwatch left it: 0755 directory, 0644 files.
    let store_dir = base.join("old");
    mkdir(&store_dir, 0o755);
    let store = store_dir.join("events.db");
    let d = Daemon::start(&root, &store, &[]);
    d.stop();
    set_mode(&store_dir, 0o755);
    set_mode(&store, 0o644);
    let d = Daemon::start(&root, &store, &[]);
    let err = d.stderr();
    assert_eq!(mode_of(&store_dir), 0o700, "{err}");
    assert_eq!(mode_of(&store), 0o600, "{err}");
    assert!(
        err.contains("0755") && err.contains("0700") && err.contains("0644"),
        "the change is logged:\n{err}"
    );
    d.stop();

    for (what, setup) in [
        ("owned by uid 1001", (USER, 0o700)),
        ("writable by all users", (0, 0o777)),
    ] {
        let dir = base.join(format!("unsafe-{}", setup.1));
        mkdir(&dir, setup.1);
        std::os::unix::fs::chown(&dir, Some(setup.0), None).expect("chown");
        let d = Daemon::spawn(&run_args(&root, &dir.join("events.db"), &[]));
        let (status, err) = d.wait_exit(Duration::from_secs(60));
        assert_eq!(status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains(what) && err.contains(&dir.display().to_string()),
            "{what}: {err}"
        );
        assert!(!dir.join("events.db").exists(), "{what}: nothing created");
    }
    let _ = std::fs::remove_dir_all(base);
}
