//! No silent holes across stops and starts: every moment from the first start on is either
//! covered by stored events or by a gap record that says so. A child process unlinks numbered
//! files and logs CLOCK_REALTIME just before and just after each unlink (`fsop unlink-series`);
//! the daemon is stopped (SIGTERM, kill -9) in the middle of it and started again while it goes
//! on. Afterwards every attempt must be in the store (by its file name) or its interval must
//! meet a gap window. Also: SIGHUP and a closed stdout (`run --print`, the hung-up SSH session)
//! do not end the daemon; writes to a file still open at the stop are stored. Needs root.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    collections::HashSet,
    ffi::{OsStr, OsString},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use tests::{Watcher, ctrwatch, ctrwatch_bin, json_lines, s, temp_dir};

const FSOP: &str = env!("CARGO_BIN_EXE_fsop");

fn start_daemon(root: &Path, store: &Path) -> Watcher {
    let args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        root.as_os_str().to_owned(),
        "--store".into(),
        store.as_os_str().to_owned(),
    ];
    Watcher::start_command(&args)
}

/// How long a daemon may take to stop after SIGTERM (it detaches ~90 programs: seconds).
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// SIGTERM; the daemon must exit successfully within [`STOP_TIMEOUT`]. If it does not, the
/// kernel stacks of its threads are shown (where it is stuck) and it is killed.
fn stop_daemon(mut daemon: Watcher) -> String {
    daemon.signal(libc::SIGTERM);
    match daemon.wait_exit(STOP_TIMEOUT) {
        Some(status) => {
            assert!(
                status.success(),
                "ctrwatch exited with {status:?}; stderr:\n{}",
                daemon.stderr()
            );
            daemon.stderr()
        }
        None => {
            let threads = thread_stacks(daemon.pid());
            daemon.signal(libc::SIGKILL);
            panic!(
                "ctrwatch did not stop within {STOP_TIMEOUT:?} of SIGTERM; its threads:\n{threads}\n\
                 stderr:\n{}",
                daemon.stderr()
            );
        }
    }
}

/// Name, wait channel and kernel stack of every thread of `pid`.
fn thread_stacks(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
        out.push_str(&format!(
            "{} {} wchan={}\n{}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan"),
            read("stack")
        ));
    }
    out
}

/// Runs a query command until `done` accepts its JSON output (the daemon commits within a
/// second; 60 s allowed for a loaded machine's fsyncs and scheduling), returning the records.
fn query_until(args: &[&OsStr], done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, err) = ctrwatch(args);
        assert_eq!(code, 0, "ctrwatch {args:?} failed: {err}");
        let records = json_lines(&out);
        if done(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "ctrwatch {args:?} never gave the expected answer; last:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The name `fsop unlink-series` gives attempt `i`.
fn series_name(i: u64) -> String {
    format!("u{i:07}")
}

fn ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn parse_time_ns(text: &str) -> i64 {
    ns(humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("time {text:?}: {e}")))
}

/// One attempt of the series: CLOCK_REALTIME just before and just after the syscall.
#[derive(Clone, Copy, Debug)]
struct Attempt {
    before_ns: i64,
    after_ns: i64,
}

fn read_series_log(log: &Path) -> Vec<Attempt> {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            let f: Vec<i64> = line
                .split(' ')
                .map(|x| x.parse().unwrap_or_else(|e| panic!("{line:?}: {e}")))
                .collect();
            assert_eq!(f.len(), 3, "{line:?}");
            assert_eq!(f[0], n as i64, "the log is in order");
            Attempt {
                before_ns: f[1],
                after_ns: f[2],
            }
        })
        .collect()
}

/// Indices of the series' unlinks in the store (by file name, in `root`).
fn stored_series(store: &Path, root: &Path) -> HashSet<u64> {
    let (code, out, err) = ctrwatch(&[
        OsStr::new("query"),
        OsStr::new("--op"),
        OsStr::new("unlink"),
        OsStr::new("--limit"),
        OsStr::new("1000000"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ]);
    assert_eq!(code, 0, "query: {err}");
    let prefix = format!("{}/u", root.display());
    json_lines(&out)
        .iter()
        .filter_map(|v| s(v, "path").strip_prefix(&prefix)?.parse().ok())
        .collect()
}

#[derive(Debug)]
struct GapWindow {
    kind: String,
    reason: String,
    from_ns: i64,
    to_ns: i64,
    lost: Option<u64>,
}

fn gap_windows(store: &Path) -> Vec<GapWindow> {
    let (code, out, err) = ctrwatch(&[
        OsStr::new("gaps"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ]);
    assert_eq!(code, 0, "gaps: {err}");
    json_lines(&out)
        .iter()
        .map(|g| GapWindow {
            kind: s(g, "kind").to_string(),
            reason: s(g, "reason").to_string(),
            from_ns: parse_time_ns(s(g, "from")),
            to_ns: parse_time_ns(s(g, "to")),
            lost: g.get("lost").and_then(Value::as_u64),
        })
        .collect()
}

/// Every attempt is stored or meets a gap window: an attempt that was in progress when a gap
/// began or ended (its syscall straddles the instant capture stopped or resumed) is covered
/// by that gap. Attempts only covered by loss windows must not outnumber what those windows
/// say was lost. Returns (stored, only in gaps).
fn assert_every_attempt_accounted_for(
    attempts: &[Attempt],
    stored: &HashSet<u64>,
    gaps: &[GapWindow],
) -> (usize, usize) {
    let meets = |a: &Attempt, g: &GapWindow| g.from_ns <= a.after_ns && a.before_ns <= g.to_ns;
    let mut in_gaps = 0;
    let mut only_in_loss = 0u64;
    let mut silent = Vec::new();
    for (i, a) in attempts.iter().enumerate() {
        if stored.contains(&(i as u64)) {
            continue;
        }
        match gaps.iter().filter(|g| meets(a, g)).collect::<Vec<_>>() {
            covering if covering.is_empty() => silent.push(i),
            covering => {
                in_gaps += 1;
                if covering.iter().all(|g| g.kind == "loss") {
                    only_in_loss += 1;
                }
            }
        }
    }
    let describe = |i: usize| {
        let a = attempts[i];
        format!(
            "#{i} {} .. {}",
            humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(a.before_ns as u64)),
            humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(a.after_ns as u64))
        )
    };
    let gap_lines = gaps
        .iter()
        .map(|g| {
            format!(
                "{} {} {} .. {} lost={:?}",
                g.kind,
                g.reason,
                humantime::format_rfc3339_nanos(
                    UNIX_EPOCH + Duration::from_nanos(g.from_ns as u64)
                ),
                humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(g.to_ns as u64)),
                g.lost
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ");
    eprintln!(
        "{} attempts: {} stored, {in_gaps} only inside gaps, {} neither; gaps:\n  {gap_lines}",
        attempts.len(),
        stored.len(),
        silent.len()
    );
    assert!(
        silent.is_empty(),
        "{} of {} unlinks are neither stored nor inside a gap (silently lost), from {} to {}; \
         gaps:\n  {gap_lines}",
        silent.len(),
        attempts.len(),
        describe(silent[0]),
        describe(silent[silent.len() - 1]),
    );
    let loss_total: u64 = gaps
        .iter()
        .filter(|g| g.kind == "loss")
        .filter_map(|g| g.lost)
        .sum();
    assert!(
        only_in_loss <= loss_total,
        "{only_in_loss} unlinks are only covered by loss windows that count {loss_total} records"
    );
    (stored.len(), in_gaps)
}

/// Creates the files the series will unlink (before the daemon starts: not recorded).
fn create_series_files(root: &Path, n: u64) {
    std::fs::create_dir_all(root).expect("mkdir root");
    for i in 0..n {
        std::fs::File::create(root.join(series_name(i))).expect("create series file");
    }
}

fn spawn_series(root: &Path, count: u64, log: &Path, options: &[String]) -> Child {
    Command::new(FSOP)
        .arg("unlink-series")
        .arg(root)
        .arg(count.to_string())
        .arg(log)
        .args(options)
        .stdout(Stdio::null())
        .spawn()
        .expect("fsop unlink-series")
}

fn wait_success(mut child: Child, what: &str) {
    let status = child.wait().expect(what);
    assert!(status.success(), "{what}: {status:?}");
}

/// A flood stopped by SIGTERM (or SIGKILL, `signal`) from the flooding process itself, after
/// `signal_at` of its unlinks, so that the signal lands mid-flood whatever the machine's speed;
/// the flood goes on back to back until 100 000 unlinks, then one a millisecond, across the
/// restart, until the test tells it to stop. Returns the stderr of both runs.
fn flood_stop_restart(name: &str, signal: i32, signal_at: u64) -> (String, String) {
    const N: u64 = 150_000;
    const FAST: u64 = 100_000;
    let base = temp_dir(name);
    let root = base.join("root");
    create_series_files(&root, N);
    let store = base.join("events.db");
    let log = base.join("series.log");
    let stop = base.join("stop");

    let mut daemon = start_daemon(&root, &store);
    let series = spawn_series(
        &root,
        N,
        &log,
        &[
            format!("signal-at={signal_at}"),
            format!("signal={signal}"),
            format!("pid={}", daemon.pid()),
            format!("fast={FAST}"),
            "pace-us=1000".into(),
            format!("stop-file={}", stop.display()),
        ],
    );
    let Some(status) = daemon.wait_exit(STOP_TIMEOUT) else {
        let threads = thread_stacks(daemon.pid());
        daemon.signal(libc::SIGKILL);
        panic!("the daemon did not exit on signal {signal}; its threads:\n{threads}");
    };
    let first = daemon.stderr();
    if signal == libc::SIGTERM {
        assert!(status.success(), "SIGTERM: {status:?}; stderr:\n{first}");
    }
    drop(daemon);

    // Restart while the series goes on; let it run under the new daemon for a while.
    let daemon = start_daemon(&root, &store);
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&stop, b"").expect("stop file");
    wait_success(series, "unlink-series");
    let second = daemon.stderr();
    stop_daemon(daemon);

    let attempts = read_series_log(&log);
    let stored = stored_series(&store, &root);
    let gaps = gap_windows(&store);
    let (stored_n, gapped) = assert_every_attempt_accounted_for(&attempts, &stored, &gaps);
    if signal == libc::SIGTERM {
        // Captured before the signal, so before the stop: all stored.
        let missing: Vec<u64> = (0..=signal_at).filter(|i| !stored.contains(i)).collect();
        assert!(
            missing.is_empty(),
            "{} unlinks before the SIGTERM are not stored, the first {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
    assert!(stored_n > 0, "nothing stored");
    assert!(gapped > 0, "the stop left no window at all?");
    let restarted = gaps
        .iter()
        .filter(|g| g.kind == "downtime")
        .map(|g| g.to_ns)
        .max()
        .unwrap_or(i64::MAX);
    assert!(
        attempts.last().is_some_and(|a| a.before_ns > restarted),
        "the series ended before the restart: the test did not cover it"
    );
    let _ = std::fs::remove_dir_all(base);
    (first, second)
}

#[test]
fn sigterm_during_a_flood_loses_nothing_silently() {
    // As in the issue: 12 000 unlinks in.
    let (first, _) = flood_stop_restart("sigterm-flood", libc::SIGTERM, 12_000);
    // Error-level lines only: an info line may quote an error the daemon handled (the
    // probe's "fentry refused (... (os error 1))" on a kernel without fentry).
    let errors: Vec<&str> = first
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains("ctrwatch: error"))
        .collect();
    assert!(errors.is_empty(), "{first}");
}

#[test]
fn kill_9_during_a_flood_leaves_every_unlink_stored_or_inside_the_downtime() {
    // Seconds into the flood, after the daemon has committed parts of it with heartbeats:
    // whatever it had not committed must be inside the downtime from the last heartbeat.
    let (_, second) = flood_stop_restart("kill9-flood", libc::SIGKILL, 80_000);
    // The warning is a sentence, not a debug struct.
    assert!(
        second.contains("the previous run did not stop cleanly: no capture from "),
        "{second}"
    );
    assert!(
        second.contains("recorded as a downtime gap") && !second.contains("Gap {"),
        "{second}"
    );
}

#[test]
fn operations_while_the_daemon_starts_are_stored_or_inside_the_downtime() {
    let base = temp_dir("attach-window");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let store = base.join("events.db");
    let log = base.join("series.log");
    let stop = base.join("stop");
    stop_daemon(start_daemon(&root, &store));

    // Unlinks of missing files (one ENOENT record each), one every ~0.2 ms, all through the
    // daemon's start: loading, attaching and opening the store.
    let series = spawn_series(
        &root,
        10_000_000,
        &log,
        &[
            "fast=0".into(),
            "pace-us=200".into(),
            format!("stop-file={}", stop.display()),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let daemon = start_daemon(&root, &store);
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&stop, b"").expect("stop file");
    wait_success(series, "unlink-series");
    stop_daemon(daemon);

    let attempts = read_series_log(&log);
    let stored = stored_series(&store, &root);
    let gaps = gap_windows(&store);
    let (stored_n, _) = assert_every_attempt_accounted_for(&attempts, &stored, &gaps);
    assert!(stored_n > 0, "nothing stored after the start");
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn sighup_neither_kills_the_daemon_nor_stops_capture() {
    let base = temp_dir("sighup");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let store = base.join("events.db");
    let mut daemon = start_daemon(&root, &store);
    daemon.signal(libc::SIGHUP);
    // A process killed by the signal takes seconds to go (the kernel detaches its programs).
    assert!(
        daemon.wait_exit(Duration::from_secs(6)).is_none(),
        "SIGHUP ended the daemon; stderr:\n{}",
        daemon.stderr()
    );
    // (60 s each: a loaded machine delays the loop and the reload's blocking thread.)
    let deadline = Instant::now() + Duration::from_secs(60);
    while !daemon.stderr().contains("SIGHUP") {
        assert!(
            Instant::now() < deadline,
            "no word about SIGHUP:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // It reloads the configuration (here: none, the defaults under the flags) and goes on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !daemon.stderr().contains("reloaded the configuration") {
        assert!(
            Instant::now() < deadline,
            "the reload did not finish:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Still capturing.
    let victim = root.join("after-hangup");
    std::fs::write(&victim, b"x").expect("write");
    std::fs::remove_file(&victim).expect("unlink");
    query_until(
        &[
            OsStr::new("who-deleted"),
            victim.as_os_str(),
            OsStr::new("--store"),
            store.as_os_str(),
            OsStr::new("--json"),
        ],
        |r| r.iter().any(|v| s(v, "op") == "unlink"),
    );
    // A later SIGTERM ends the run cleanly: the next start records a `stopped` downtime.
    stop_daemon(daemon);
    stop_daemon(start_daemon(&root, &store));
    let gaps = gap_windows(&store);
    let downtime: Vec<&GapWindow> = gaps.iter().filter(|g| g.kind == "downtime").collect();
    assert_eq!(downtime.len(), 1, "{gaps:?}");
    assert_eq!(downtime[0].reason, "stopped", "{gaps:?}");
    let _ = std::fs::remove_dir_all(base);
}

/// A stop asked for while the daemon starts (systemd's `stop` soon after `start`; here as soon
/// as the store is open, while the programs load for seconds) is a clean stop: exit 0, and the
/// next start records a `stopped` downtime, not an unclean one. The SIGTERM handler used to be
/// installed only after "watching": until then SIGTERM's default action killed the daemon
/// (seen in CI under load, where "watching" came 46 s after the store opened).
#[test]
fn sigterm_while_the_daemon_starts_is_a_clean_stop() {
    let base = temp_dir("sigterm-starting");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let store = base.join("events.db");
    let mut child = Command::new(ctrwatch_bin())
        .arg("run")
        .arg("--root")
        .arg(&root)
        .arg("--store")
        .arg(&store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctrwatch run");
    let (stderr, reader) = tests::collect_stderr(&mut child);
    let said = || stderr.lock().map(|s| s.clone()).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !said().contains("storing history in") {
        assert!(
            Instant::now() < deadline,
            "the store did not open:\n{}",
            said()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Into the loading (seconds), once the SIGTERM handler is installed: a few instructions
    // after that line, but a fixed wait for them (500 ms) could be outlasted by a loaded
    // machine, and SIGTERM's default action would then kill it. The kernel says when the
    // signal is caught (SigCgt in /proc/PID/status).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !catches(child.id(), libc::SIGTERM) {
        assert!(
            Instant::now() < deadline,
            "no SIGTERM handler within 60 s of the store opening:\n{}",
            said()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        !said().contains("watching"),
        "attached already; the test needs the loading phase:\n{}",
        said()
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    let _ = reader.join();
    assert!(
        status.success(),
        "SIGTERM while starting: {status:?}; stderr:\n{}",
        said()
    );
    stop_daemon(start_daemon(&root, &store));
    let gaps = gap_windows(&store);
    assert!(
        gaps.iter().all(|g| g.reason != "unclean_stop"),
        "the stop while starting was recorded as unclean: {gaps:?}"
    );
    let _ = std::fs::remove_dir_all(base);
}

/// Whether process `pid` has a handler for `signal` (its bit in SigCgt of /proc/PID/status).
fn catches(pid: u32, signal: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

/// `ctrwatch run --print` whose stdout reader goes away (a pipe to a pager that quit, the
/// hung-up SSH session): the echo stops, the store goes on.
#[test]
fn run_print_keeps_storing_after_its_stdout_reader_is_gone() {
    tests::require_root();
    let base = temp_dir("epipe");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let store = base.join("events.db");
    let mut cmd = Command::new(ctrwatch_bin());
    cmd.arg("run")
        .arg("--print")
        .arg("--root")
        .arg(&root)
        .arg("--store")
        .arg(&store)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl in the child before exec; async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("ctrwatch run --print");
    let stderr = Arc::new(Mutex::new(String::new()));
    let reader = {
        let stderr = Arc::clone(&stderr);
        let pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut s) = stderr.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        })
    };
    let said = || stderr.lock().map(|s| s.clone()).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !said().contains("ctrwatch: watching") {
        assert!(Instant::now() < deadline, "did not start:\n{}", said());
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "exited at start:\n{}",
            said()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The reader goes away.
    drop(child.stdout.take());

    let unlink = |name: &str| -> PathBuf {
        let p = root.join(name);
        std::fs::write(&p, b"x").expect("write");
        std::fs::remove_file(&p).expect("unlink");
        p
    };
    let first = unlink("first");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "the daemon ended when its stdout reader went away: {:?}\n{}",
        child.try_wait(),
        said()
    );
    let second = unlink("second");
    for victim in [&first, &second] {
        query_until(
            &[
                OsStr::new("who-deleted"),
                victim.as_os_str(),
                OsStr::new("--store"),
                store.as_os_str(),
                OsStr::new("--json"),
            ],
            |r| r.iter().any(|v| s(v, "op") == "unlink"),
        );
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    let _ = reader.join();
    assert!(status.success(), "{status:?}\n{}", said());
    assert!(said().contains("no longer printing events"), "{}", said());
    let _ = std::fs::remove_dir_all(base);
}

/// `ctrwatch run --print` on the terminal of its session (started from an SSH session), and
/// the terminal hangs up: the kernel sends SIGHUP, and every write to the terminal fails with
/// EIO from then on. Capture goes on.
#[test]
fn a_hung_up_terminal_does_not_stop_the_daemon() {
    tests::require_root();
    let base = temp_dir("hangup");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let store = base.join("events.db");
    // SAFETY (all libc calls below): plain calls on fds this test owns; the results are
    // checked.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(
        master >= 0,
        "posix_openpt: {}",
        std::io::Error::last_os_error()
    );
    let mut name = [0 as libc::c_char; 128];
    unsafe {
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
    }
    // SAFETY: ptsname_r wrote a NUL-terminated name.
    let terminal = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_owned();
    let mut cmd = Command::new(ctrwatch_bin());
    cmd.arg("run")
        .arg("--print")
        .arg("--root")
        .arg(&root)
        .arg("--store")
        .arg(&store);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            // A new session whose controlling terminal is the pty, on stdin/stdout/stderr.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::open(terminal.as_ptr(), libc::O_RDWR);
            if fd < 0 || libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for target in 0..3 {
                libc::dup2(fd, target);
            }
            if fd > 2 {
                libc::close(fd);
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("ctrwatch run --print on a pty");
    // Read the terminal until the daemon is watching.
    let mut said = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !String::from_utf8_lossy(&said).contains("ctrwatch: watching") {
        assert!(
            Instant::now() < deadline,
            "did not start:\n{}",
            String::from_utf8_lossy(&said)
        );
        let mut poll = libc::pollfd {
            fd: master,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, 100) } > 0 {
            let mut buf = [0u8; 4096];
            // SAFETY: valid buffer of that length.
            let n = unsafe { libc::read(master, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                said.extend_from_slice(&buf[..n as usize]);
            }
        }
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "exited at start:\n{}",
            String::from_utf8_lossy(&said)
        );
    }
    // Hang up: the last fd of the terminal's master side goes.
    // SAFETY: our fd, closed once.
    unsafe { libc::close(master) };

    let victim = root.join("after-hangup");
    std::fs::write(&victim, b"x").expect("write");
    std::fs::remove_file(&victim).expect("unlink");
    query_until(
        &[
            OsStr::new("who-deleted"),
            victim.as_os_str(),
            OsStr::new("--store"),
            store.as_os_str(),
            OsStr::new("--json"),
        ],
        |r| r.iter().any(|v| s(v, "op") == "unlink"),
    );
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "the hang-up ended the daemon: {:?}",
        child.try_wait()
    );
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    // The next start finds a clean stop.
    stop_daemon(start_daemon(&root, &store));
    let gaps = gap_windows(&store);
    assert!(
        gaps.iter()
            .any(|g| g.kind == "downtime" && g.reason == "stopped"),
        "{gaps:?}"
    );
    let _ = std::fs::remove_dir_all(base);
}

/// Writes are reported when the file is closed; a file still open when the daemon stops has
/// its writes so far stored at the stop (as `modify` with `not_closed`).
#[test]
fn writes_to_a_file_still_open_at_the_stop_are_stored() {
    let base = temp_dir("open-at-stop");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let store = base.join("events.db");
    let held = root.join("held-open");
    let daemon = start_daemon(&root, &store);
    // Opens, writes 5 bytes and keeps the file open. (Not a shell's `exec 3>>f; printf >&3`:
    // the builtin's redirection dup2s fd 3 over fd 1 and restores fd 1 afterwards, which ends
    // that write's aggregate — correctly — before the stop.)
    let mut writer = Command::new(FSOP)
        .arg("write-hold")
        .arg(&held)
        .arg("5")
        .arg("60")
        .spawn()
        .expect("fsop write-hold");
    query_until(
        &[
            OsStr::new("history"),
            held.as_os_str(),
            OsStr::new("--store"),
            store.as_os_str(),
            OsStr::new("--json"),
        ],
        |r| r.iter().any(|v| s(v, "op") == "create"),
    );
    std::thread::sleep(Duration::from_millis(300));
    stop_daemon(daemon);
    let _ = writer.kill();
    let _ = writer.wait();
    let (code, out, err) = ctrwatch(&[
        OsStr::new("history"),
        held.as_os_str(),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ]);
    assert_eq!(code, 0, "{err}");
    let records = json_lines(&out);
    let modify = records
        .iter()
        .find(|v| s(v, "op") == "modify")
        .unwrap_or_else(|| panic!("the writes before the stop are not stored: {out}"));
    assert_eq!(modify["bytes"].as_u64(), Some(5), "{modify}");
    let notes = modify["notes"].to_string();
    assert!(notes.contains("not_closed"), "{modify}");
    let _ = std::fs::remove_dir_all(base);
}
