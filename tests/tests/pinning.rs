//! Restarts that lose nothing (`run --pin-dir`): the programs and maps pinned in bpffs keep
//! capturing while no daemon runs; the next daemon of the same build adopts them and reads
//! what they captured meanwhile; another build replaces them and records the window it could
//! not see; `ctrwatch unpin` removes them. Real kernel, real binary; each test pins in a
//! directory of its own (other tests run daemons at the same time).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;
use tests::{Watcher, ctrwatch, json_lines, s, temp_dir, wait_history};

/// Generous: the machine is shared and slow under load.
const TIMEOUT: Duration = Duration::from_secs(120);

/// A pin directory of one test, on bpffs; its pins are removed (`ctrwatch unpin`) and the
/// directory deleted when the test ends, whatever its outcome.
struct PinDir(PathBuf);

impl PinDir {
    fn new(name: &str) -> PinDir {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/ctrwatch-test-{name}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        PinDir(dir)
    }

    /// The pin sets in the directory (none when it does not exist).
    fn sets(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn unpin(&self) -> (i32, String, String) {
        ctrwatch(&[
            OsStr::new("unpin"),
            OsStr::new("--pin-dir"),
            self.0.as_os_str(),
        ])
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = self.unpin();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `run --root ROOT --store STORE --pin-dir PINS`.
fn run_args(root: &Path, store: &Path, pins: &PinDir) -> Vec<OsString> {
    vec![
        "run".into(),
        "--root".into(),
        root.as_os_str().to_owned(),
        "--store".into(),
        store.as_os_str().to_owned(),
        "--pin-dir".into(),
        pins.0.as_os_str().to_owned(),
    ]
}

fn start_daemon(root: &Path, store: &Path, pins: &PinDir, extra: &[&str]) -> Watcher {
    let mut args = run_args(root, store, pins);
    args.extend(extra.iter().map(OsString::from));
    Watcher::start_command(&args)
}

/// Stops the daemon with SIGTERM (a restart's stop) and checks it exited cleanly.
fn stop(daemon: Watcher) -> String {
    let stderr_before = daemon.stderr();
    daemon.stop();
    stderr_before
}

fn query_json(args: &[&OsStr]) -> Vec<Value> {
    let (code, out, err) = ctrwatch(args);
    assert_eq!(code, 0, "ctrwatch {args:?}: {err}");
    json_lines(&out)
}

fn gaps(store: &Path) -> Vec<Value> {
    query_json(&[
        OsStr::new("gaps"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ])
}

/// Unlink records in the store (only the test's flood unlinks under its root).
fn stored_unlinks(store: &Path) -> usize {
    query_json(&[
        OsStr::new("query"),
        OsStr::new("--op"),
        OsStr::new("unlink"),
        OsStr::new("--limit"),
        OsStr::new("10000000"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ])
    .len()
}

/// Records the kernel could not deliver, as the store has them (loss gaps), leaving out the
/// node-wide unresolved paths of other processes.
fn recorded_lost(store: &Path) -> u64 {
    gaps(store)
        .iter()
        .filter(|g| s(g, "kind") == "loss")
        .map(|g| {
            let total = g.get("lost").and_then(Value::as_u64).unwrap_or(0);
            let unresolved = g
                .get("kinds")
                .and_then(|k| k.get("path_unresolved"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            total.saturating_sub(unresolved)
        })
        .sum()
}

fn create(path: &Path) {
    std::fs::write(path, b"x").unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
}

/// Where Debian's `bpftool` package installs it; `bpftool` on PATH is tried first.
const BPFTOOL_PATHS: [&str; 3] = ["bpftool", "/usr/sbin/bpftool", "/sbin/bpftool"];

fn bpftool(args: &[&OsStr]) -> std::process::Output {
    for tool in BPFTOOL_PATHS {
        if let Ok(out) = Command::new(tool).args(args).output() {
            return out;
        }
    }
    panic!("bpftool not found (cargo xtask setup installs it)");
}

/// The kernel's id of the link pinned at `path`.
fn link_id(path: &Path) -> u64 {
    let out = bpftool(&[
        OsStr::new("-j"),
        OsStr::new("link"),
        OsStr::new("show"),
        OsStr::new("pinned"),
        path.as_os_str(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("id").and_then(Value::as_u64))
        .unwrap_or_else(|| panic!("bpftool link show pinned {}: {text}", path.display()))
}

fn link_exists(id: u64) -> bool {
    bpftool(&[
        OsStr::new("link"),
        OsStr::new("show"),
        OsStr::new("id"),
        OsStr::new(&id.to_string()),
    ])
    .status
    .success()
}

fn in_history(store: &Path, path: &Path) -> bool {
    !tests::history_json(store, path).is_empty()
}

/// A running flood, killed if the test ends before it does.
struct FloodGuard(Option<std::process::Child>);

impl FloodGuard {
    fn finish(mut self) -> std::process::Output {
        self.0
            .take()
            .expect("the flood runs")
            .wait_with_output()
            .expect("flood")
    }
}

impl Drop for FloodGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How `fsop unlink-series` loads a root across a restart: one record per step (an unlink of
/// a missing file), or two with `create` (a create, then its unlink); `fast` steps back to
/// back, `signal` to the first daemon from the load itself after `signal_at` of them (so that
/// it lands mid-flood whatever the machine's speed), then one step every `pace_us` (a pace the
/// ring buffer absorbs while no daemon reads it) until [`Series::stop_under`].
struct SeriesLoad {
    create: bool,
    fast: u64,
    pace_us: u64,
    signal_at: u64,
    signal: i32,
}

/// A running series (see [`SeriesLoad`]), killed if the test ends before it does.
struct Series {
    flood: FloodGuard,
    stop_file: PathBuf,
}

impl Series {
    fn spawn(root: &Path, base: &Path, daemon_pid: u32, load: SeriesLoad) -> Series {
        let log = base.join("series.log");
        let stop_file = base.join("stop");
        let mut args: Vec<std::ffi::OsString> = vec![
            "unlink-series".into(),
            root.into(),
            "100000000".into(),
            log.into(),
        ];
        if load.create {
            args.push("create=1".into());
        }
        args.extend([
            format!("fast={}", load.fast).into(),
            format!("pace-us={}", load.pace_us).into(),
            format!("signal-at={}", load.signal_at).into(),
            format!("signal={}", load.signal).into(),
            format!("pid={daemon_pid}").into(),
            format!("stop-file={}", stop_file.display()).into(),
        ]);
        let child = Command::new(env!("CARGO_BIN_EXE_fsop"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn fsop unlink-series");
        Series {
            flood: FloodGuard(Some(child)),
            stop_file,
        }
    }

    /// Lets the series go on for a while under `second` (which must have adopted the pins),
    /// then stops it: how many steps it performed.
    fn stop_under(self, second: &Watcher) -> usize {
        assert!(
            second.stderr().contains("adopted the programs pinned"),
            "the second daemon did not adopt:\n{}",
            second.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
        std::fs::write(&self.stop_file, b"").expect("stop file");
        let out = self.flood.finish();
        assert!(out.status.success(), "fsop unlink-series: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("fsop unlink-series output {out:?}: {e}"))
    }
}

#[test]
fn a_restart_during_a_flood_adopts_the_programs_and_loses_nothing() {
    let base = temp_dir("pin-flood");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store = base.join("events.db");
    let pins = PinDir::new("flood");
    let first = start_daemon(&root, &store, &pins, &[]);
    assert!(
        !first.stderr().contains("adopted"),
        "nothing to adopt yet:\n{}",
        first.stderr()
    );
    assert_eq!(pins.sets().len(), 1, "one pin set: {:?}", pins.sets());

    // Unlinks of missing files, 20 000 back to back, SIGTERM to the first daemon, then paced
    // (~5 000/s) until the second daemon has run for a while.
    let flood = Series::spawn(
        &root,
        &base,
        first.pid(),
        SeriesLoad {
            create: false,
            fast: 20_000,
            pace_us: 100,
            signal_at: 20_000,
            signal: libc::SIGTERM,
        },
    );
    let mut first = first;
    let status = first
        .wait_exit(TIMEOUT)
        .unwrap_or_else(|| panic!("the first daemon did not stop:\n{}", first.stderr()));
    assert!(
        status.success(),
        "first daemon: {status:?}\n{}",
        first.stderr()
    );
    let first_stderr = first.stderr();
    drop(first);
    let second = start_daemon(&root, &store, &pins, &[]);
    let performed = flood.stop_under(&second);
    assert!(
        performed > 20_000,
        "the flood stopped before the restart: {performed}"
    );
    // Stored plus recorded-lost reaches what was performed, and nothing is lost.
    let deadline = Instant::now() + TIMEOUT;
    let (stored, lost) = loop {
        let stored = stored_unlinks(&store);
        let lost = recorded_lost(&store);
        if stored as u64 + lost >= performed as u64 || Instant::now() > deadline {
            break (stored, lost);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let second_stderr = second.stderr();
    stop(second);
    assert_eq!(
        stored as u64 + lost,
        performed as u64,
        "stored {stored} + lost {lost} != performed {performed}; second daemon:\n{second_stderr}"
    );
    assert_eq!(lost, 0, "records lost across the restart");
    assert!(
        first_stderr.contains("the programs stay pinned"),
        "{first_stderr}"
    );
    // The restart was no downtime: the only gap is none (or losses, checked above).
    let downtime: Vec<Value> = gaps(&store)
        .into_iter()
        .filter(|g| s(g, "kind") == "downtime")
        .collect();
    assert!(
        downtime.is_empty(),
        "an adopted restart recorded downtime: {downtime:?}"
    );
    drop(pins);
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn kill_9_leaves_the_pins_and_the_next_start_reads_what_they_captured() {
    let base = temp_dir("pin-kill");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store = base.join("events.db");
    let pins = PinDir::new("kill");
    let first = start_daemon(&root, &store, &pins, &[]);
    let before = root.join("before-the-crash");
    create(&before);
    wait_history(&store, &before, "create");
    first.signal(libc::SIGKILL);
    drop(first);
    assert_eq!(
        pins.sets().len(),
        1,
        "the crash left the pins: {:?}",
        pins.sets()
    );

    // While no daemon runs, the pinned programs capture into the ring buffer.
    let during = root.join("while-no-daemon-ran");
    create(&during);
    let second = start_daemon(&root, &store, &pins, &[]);
    assert!(
        second.stderr().contains("adopted the programs pinned"),
        "{}",
        second.stderr()
    );
    wait_history(&store, &during, "create");
    let after = root.join("after-the-restart");
    create(&after);
    wait_history(&store, &after, "create");
    stop(second);
    // The crash is on record: what the first daemon had read but not committed is not in
    // the ring buffer any more.
    let unclean = gaps(&store)
        .into_iter()
        .find(|g| s(g, "kind") == "downtime")
        .unwrap_or_else(|| panic!("no downtime gap for the crash: {:?}", gaps(&store)));
    assert_eq!(s(&unclean, "reason"), "unclean_stop", "{unclean}");
    drop(pins);
    let _ = std::fs::remove_dir_all(base);
}

/// How many times the store holds each `op` event under `root`, by path.
fn stored_paths(store: &Path, root: &Path, op: &str) -> std::collections::BTreeMap<String, usize> {
    let glob = format!("{}/**", root.display());
    let mut counts = std::collections::BTreeMap::new();
    for ev in query_json(&[
        OsStr::new("query"),
        OsStr::new("--op"),
        OsStr::new(op),
        OsStr::new("--path"),
        OsStr::new(&glob),
        OsStr::new("--limit"),
        OsStr::new("10000000"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ]) {
        *counts.entry(s(&ev, "path").to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Issue 13: zero loss across a `kill -9`. The daemon publishes the ring buffer's consumer
/// position only once what it read is committed, so the next daemon adopting the pins reads
/// again what the killed one had read but not committed; and what it had committed is not
/// stored twice. Every create and unlink of the load is in the history exactly once.
#[test]
fn kill_9_mid_flood_loses_nothing_and_stores_nothing_twice() {
    let base = temp_dir("pin-kill-flood");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store = base.join("events.db");
    let pins = PinDir::new("kill-flood");
    // A ring buffer that absorbs the load while no daemon runs, also on a loaded machine (a
    // restart takes seconds there): what is tested is the crash, not the ring's capacity.
    let ring = ["--ring-buffer-mb", "64"];
    let first = start_daemon(&root, &store, &pins, &ring);

    // Creates and unlinks, 20 000 pairs back to back, SIGKILL to the first daemon after 15 000
    // of them (while it holds read records not yet committed), then paced until the second
    // daemon has run for a while.
    let load = Series::spawn(
        &root,
        &base,
        first.pid(),
        SeriesLoad {
            create: true,
            fast: 20_000,
            pace_us: 200,
            signal_at: 15_000,
            signal: libc::SIGKILL,
        },
    );
    let mut first = first;
    let status = first
        .wait_exit(TIMEOUT)
        .unwrap_or_else(|| panic!("the first daemon was not killed:\n{}", first.stderr()));
    assert!(!status.success(), "first daemon: {status:?}");
    drop(first);
    let second = start_daemon(&root, &store, &pins, &ring);
    let performed = load.stop_under(&second);
    assert!(
        performed > 15_000,
        "the load stopped before the kill: {performed}"
    );
    let expected: std::collections::BTreeSet<String> = (0..performed)
        .map(|i| format!("{}/u{i:07}", root.display()))
        .collect();
    // Wait until both ops are stored for every file (or the timeout), then compare.
    let deadline = Instant::now() + TIMEOUT;
    let (creates, unlinks) = loop {
        let creates = stored_paths(&store, &root, "create");
        let unlinks = stored_paths(&store, &root, "unlink");
        let complete = |m: &std::collections::BTreeMap<String, usize>| {
            expected.iter().all(|p| m.contains_key(p))
        };
        if (complete(&creates) && complete(&unlinks)) || Instant::now() > deadline {
            break (creates, unlinks);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let second_stderr = second.stderr();
    stop(second);
    for (op, stored) in [("create", &creates), ("unlink", &unlinks)] {
        let missing: Vec<&String> = expected
            .iter()
            .filter(|p| !stored.contains_key(*p))
            .collect();
        let twice: Vec<(&String, &usize)> = stored.iter().filter(|(_, n)| **n > 1).collect();
        let foreign: Vec<&String> = stored.keys().filter(|p| !expected.contains(*p)).collect();
        assert!(
            missing.is_empty() && twice.is_empty() && foreign.is_empty(),
            "{op}: of {performed} performed, {} missing (first {:?}), {} stored more than \
             once (first {:?}), {} not made by the load ({:?}); lost recorded: {}; second \
             daemon:\n{second_stderr}",
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>(),
            twice.len(),
            twice.iter().take(5).collect::<Vec<_>>(),
            foreign.len(),
            foreign.iter().take(5).collect::<Vec<_>>(),
            recorded_lost(&store),
        );
    }
    drop(pins);
    let _ = std::fs::remove_dir_all(base);
}

/// The store holds a downtime gap whose window covers `at` (an operation no daemon read).
fn assert_downtime_covers(store: &Path, at: SystemTime) {
    let downtime = gaps(store)
        .into_iter()
        .find(|g| s(g, "kind") == "downtime")
        .unwrap_or_else(|| panic!("no downtime gap: {:?}", gaps(store)));
    let time = |field| {
        humantime::parse_rfc3339(s(&downtime, field))
            .unwrap_or_else(|e| panic!("{field} of {downtime}: {e}"))
    };
    assert!(
        time("from") <= at && time("to") >= at,
        "downtime {downtime} does not cover the operation not seen, at {at:?}"
    );
}

#[test]
fn another_builds_pins_are_replaced_and_the_window_not_seen_is_recorded() {
    let base = temp_dir("pin-replace");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store = base.join("events.db");
    let pins = PinDir::new("replace");
    let first = start_daemon(&root, &store, &pins, &[]);
    let seen = root.join("seen");
    create(&seen);
    wait_history(&store, &seen, "create");
    stop(first);
    // The pins as another build would have left them: same layout, another name.
    let ours = pins.sets();
    assert_eq!(ours.len(), 1, "{ours:?}");
    let other = "v1-0123456789abcdef";
    std::fs::rename(pins.0.join(&ours[0]), pins.0.join(other)).expect("renaming the pin set");

    // Captured by the other build's programs, never read by this one.
    let unseen_at = SystemTime::now();
    let unseen = root.join("unseen");
    create(&unseen);
    let second = start_daemon(&root, &store, &pins, &[]);
    let err = second.stderr();
    assert!(err.contains("replaced the programs pinned"), "{err}");
    assert!(err.contains(other), "{err}");
    assert_eq!(
        pins.sets(),
        ours,
        "the other set is gone, ours is pinned again"
    );
    let after = root.join("after");
    create(&after);
    wait_history(&store, &after, "create");
    stop(second);
    assert!(
        !in_history(&store, &unseen),
        "the replaced programs' records were read"
    );
    // The window not seen is a downtime gap from the first daemon's stop to the second's
    // capture start, and covers the operation it missed.
    assert_downtime_covers(&store, unseen_at);
    drop(pins);
    let _ = std::fs::remove_dir_all(base);
}

/// The build this one upgrades from (xtask/previous-build.txt), which `cargo xtask test` builds
/// and names in $CTRWATCH_PREVIOUS_BIN.
fn previous_build() -> Option<PathBuf> {
    match std::env::var_os("CTRWATCH_PREVIOUS_BIN") {
        Some(bin) => Some(PathBuf::from(bin)),
        None => {
            assert!(
                std::env::var_os("CTRWATCH_REQUIRE_ROOT_TESTS").is_none(),
                "CTRWATCH_PREVIOUS_BIN is not set: `cargo xtask test` builds the previous build \
                 (xtask/previous-build.txt) and sets it"
            );
            eprintln!("skipped: CTRWATCH_PREVIOUS_BIN is not set (`cargo xtask test` sets it)");
            None
        }
    }
}

/// An upgrade as the package does it (the old daemon stopped with SIGTERM, its pins kept, the
/// new binary started on the same store and pins), from the real previous build: the new
/// daemon adopts the pinned programs when the two builds' eBPF objects are the same (and then
/// stores what they captured meanwhile), and otherwise replaces them and records the window it
/// could not see as a downtime gap. Which of the two the builds call for is read from what the
/// new daemon did, and each outcome is checked for what it promises.
#[test]
fn an_upgrade_from_the_previous_build_adopts_or_replaces_its_programs() {
    let Some(previous) = previous_build() else {
        return;
    };
    let base = temp_dir("pin-upgrade");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store = base.join("events.db");
    let pins = PinDir::new("upgrade");
    let old = Watcher::start_binary(&previous, &run_args(&root, &store, &pins), &[]);
    let seen = root.join("seen-by-the-previous-build");
    create(&seen);
    wait_history(&store, &seen, "create");
    stop(old);
    let old_sets = pins.sets();
    assert_eq!(old_sets.len(), 1, "the previous build's pins: {old_sets:?}");

    // What the design calls for, from the builds themselves: this build's pin set name (it
    // names the eBPF object), taken from a start on a pin directory of its own.
    let this_build_set = {
        let probe_root = base.join("probe-root");
        std::fs::create_dir_all(&probe_root).expect("mkdir");
        let probe_pins = PinDir::new("upgrade-probe");
        let probe = start_daemon(&probe_root, &base.join("probe.db"), &probe_pins, &[]);
        let sets = probe_pins.sets();
        stop(probe);
        assert_eq!(sets.len(), 1, "this build's pins: {sets:?}");
        sets[0].clone()
    };
    let same_object = this_build_set == old_sets[0];

    // Done while no daemon runs: the pinned programs of the previous build may capture it.
    let between_at = SystemTime::now();
    let between = root.join("between");
    create(&between);
    let new = start_daemon(&root, &store, &pins, &[]);
    let err = new.stderr();
    // The info lines of the two outcomes (not any line with "adopted" in it: a debug line
    // says "loaded, or adopted from pins").
    let adopted = err.contains("adopted the programs pinned in");
    let replaced = err.contains("replaced the programs pinned");
    assert!(
        adopted == same_object && replaced != same_object,
        "the previous build pinned {}, this build pins {this_build_set}: it must {}; \
         it said:\n{err}",
        old_sets[0],
        if same_object {
            "adopt them"
        } else {
            "replace them"
        }
    );
    let after = root.join("after");
    create(&after);
    wait_history(&store, &after, "create");
    let new_sets = pins.sets();
    stop(new);
    assert_eq!(
        new_sets.len(),
        1,
        "one pin set after the upgrade: {new_sets:?}"
    );
    if adopted {
        assert_eq!(new_sets, old_sets, "adopted, yet another set is pinned");
        wait_history(&store, &between, "create");
    } else {
        assert!(
            err.contains(&old_sets[0]),
            "the replaced set is named:\n{err}"
        );
        assert_ne!(new_sets, old_sets, "replaced, yet the same set is pinned");
        assert!(
            !in_history(&store, &between),
            "the replaced programs' records were read"
        );
        assert_downtime_covers(&store, between_at);
    }
    // What the previous build stored is still there, read by this one.
    assert!(
        in_history(&store, &seen),
        "the previous build's history is gone"
    );
    drop(pins);
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn unpin_removes_the_pins_and_the_programs_stop_capturing() {
    let base = temp_dir("pin-remove");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store = base.join("events.db");
    let pins = PinDir::new("remove");
    let first = start_daemon(&root, &store, &pins, &[]);
    stop(first);
    assert_eq!(
        pins.sets().len(),
        1,
        "a stop keeps the pins: {:?}",
        pins.sets()
    );
    // The kernel's ids of the pinned links: gone once the pins are.
    let set = pins.0.join(&pins.sets()[0]);
    let links: Vec<PathBuf> = std::fs::read_dir(set.join("links"))
        .expect("links")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert!(links.len() > 10, "hooks pinned: {links:?}");
    let ids: Vec<u64> = links.iter().map(|l| link_id(l)).collect();
    let (code, out, err) = pins.unpin();
    assert_eq!(code, 0, "unpin: {err}");
    assert!(out.contains("removed the pinned programs"), "{out}");
    assert_eq!(pins.sets(), Vec::<String>::new(), "unpin left pins");
    // The kernel frees a link (detaching its program) once its last reference is gone, on a
    // work queue: wait for it.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let alive: Vec<u64> = ids.iter().copied().filter(|id| link_exists(*id)).collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "links still attached {TIMEOUT:?} after unpin: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _, err) = pins.unpin();
    assert_eq!(code, 0, "unpin with nothing pinned: {err}");

    // Nothing captures now: the next start loads afresh and records the downtime.
    let unseen = root.join("unseen");
    create(&unseen);
    let second = start_daemon(&root, &store, &pins, &[]);
    assert!(!second.stderr().contains("adopted"), "{}", second.stderr());
    let after = root.join("after");
    create(&after);
    wait_history(&store, &after, "create");
    stop(second);
    assert!(
        !in_history(&store, &unseen),
        "captured with no pins and no daemon"
    );
    assert!(
        gaps(&store)
            .iter()
            .any(|g| s(g, "kind") == "downtime" && s(g, "reason") == "stopped"),
        "{:?}",
        gaps(&store)
    );
    drop(pins);
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn unpin_leaves_what_is_not_a_pin_set_alone() {
    tests::require_root();
    let pins = PinDir::new("foreign");
    // On bpffs (mounted on /sys/fs/bpf if needed), as `run --pin-dir` makes it.
    watcher::kernel::pins::prepare(&pins.0).expect("preparing the pin directory");
    let foreign = pins.0.join("someone-elses");
    std::fs::create_dir(&foreign).expect("mkdir");
    let (code, _, err) = pins.unpin();
    assert_eq!(code, 0, "{err}");
    assert!(
        foreign.is_dir(),
        "unpin removed a directory it did not make"
    );
    std::fs::remove_dir(&foreign).expect("rmdir");
}

/// The paths of the file records under `root` in the ring buffer, with their pids, read until
/// `want` is among them (or the timeout).
fn read_until(
    ring: &mut watcher::kernel::ring::EventRing,
    root: &Path,
    want: &Path,
) -> Vec<(u32, PathBuf)> {
    use std::os::unix::ffi::OsStrExt as _;
    let mut seen = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        while let Some(item) = ring.next_record() {
            if let Ok(watcher_common::Record::File(op)) = watcher_common::Record::decode(&item) {
                let path = PathBuf::from(OsStr::from_bytes(&op.path));
                if path.starts_with(root) {
                    seen.push((op.fixed.task.pid, path));
                }
            }
        }
        if seen.iter().any(|(_, p)| p == want) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "no record of {} within {TIMEOUT:?}; seen {seen:?}",
            want.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemon's own operations are not captured (its tgid is in the CAPTURE map), and a daemon
/// that adopts the programs puts its own tgid there: the previous daemon's is not excluded any
/// more. Loaded in this process, which plays both daemons.
#[test]
fn the_excluded_process_is_the_daemon_that_holds_the_programs_also_after_adoption() {
    use watcher::kernel::{KernelWatch, LoadOptions, Origin};
    use watcher::roots::RootSet;
    tests::require_root();
    let base = temp_dir("pin-self");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let pins = PinDir::new("self");
    let me = std::process::id();
    const SIZE: u32 = 4 << 20;
    let fsop = env!("CARGO_BIN_EXE_fsop");
    let create_in_child = |path: &Path| {
        let status = Command::new(fsop)
            .args([OsStr::new("create"), path.as_os_str()])
            .status()
            .expect("fsop");
        assert!(status.success(), "fsop create: {status:?}");
    };
    let prefixes = RootSet::resolve(std::slice::from_ref(&root)).kernel_prefixes();

    // The first "daemon": this process.
    let mut kernel = KernelWatch::start(
        &LoadOptions {
            ring_buffer_bytes: SIZE,
            self_tgid: me,
            backend: ctrwatch_config::Backend::Auto,
            protect: ctrwatch_config::ProtectMode::Off,
        },
        Some(&pins.0),
    )
    .expect("loading and pinning");
    assert_eq!(kernel.origin, Origin::Loaded);
    kernel.set_root_prefixes(&prefixes).expect("roots");
    kernel.set_capture(true).expect("capture");
    let mut ring = kernel.take_ring_buffer(SIZE).expect("ring");
    create(&root.join("mine-1"));
    let marker = root.join("child-1");
    create_in_child(&marker);
    let seen = read_until(&mut ring, &root, &marker);
    assert!(
        !seen.iter().any(|(pid, _)| *pid == me),
        "this process's own operations were captured: {seen:?}"
    );
    drop(ring);
    drop(kernel);

    // The second: adopts, and excludes another process (pid 1, which does nothing under the
    // root): this process's operations are captured now.
    let mut kernel = KernelWatch::start(
        &LoadOptions {
            ring_buffer_bytes: SIZE,
            self_tgid: 1,
            backend: ctrwatch_config::Backend::Auto,
            protect: ctrwatch_config::ProtectMode::Off,
        },
        Some(&pins.0),
    )
    .expect("adopting");
    assert_eq!(kernel.origin, Origin::Adopted);
    assert_eq!(kernel.ring_buffer_bytes(), SIZE);
    kernel.set_root_prefixes(&prefixes).expect("roots");
    let mut ring = kernel.take_ring_buffer(SIZE).expect("ring");
    let mine = root.join("mine-2");
    create(&mine);
    let seen = read_until(&mut ring, &root, &mine);
    assert!(
        seen.iter().any(|(pid, p)| *pid == me && *p == mine),
        "{seen:?}"
    );
    drop(ring);
    drop(kernel);
    drop(pins);
    let _ = std::fs::remove_dir_all(base);
}

/// Two daemons must not share a pin directory (they would read one ring buffer): the second
/// waits for the first (a restart: it is stopping), then gives up with a clear error.
#[test]
fn a_second_daemon_on_the_same_pin_directory_is_refused() {
    let base = temp_dir("pin-busy");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let pins = PinDir::new("busy");
    let first = start_daemon(&root, &base.join("first.db"), &pins, &[]);
    let other_store = base.join("second.db");
    let started = Instant::now();
    let (code, _, err) = ctrwatch(&[
        OsStr::new("run"),
        OsStr::new("--root"),
        root.as_os_str(),
        OsStr::new("--store"),
        other_store.as_os_str(),
        OsStr::new("--pin-dir"),
        pins.0.as_os_str(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("another ctrwatch daemon uses this pin directory"),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_secs(30), "did not wait");
    // The first one is untouched and still adoptable.
    stop(first);
    let again = start_daemon(&root, &base.join("first.db"), &pins, &[]);
    assert!(
        again.stderr().contains("adopted the programs pinned"),
        "{}",
        again.stderr()
    );
    stop(again);
    drop(pins);
    let _ = std::fs::remove_dir_all(base);
}

/// The names of the link pins of the (one) set in `pins`, sorted.
fn link_names(pins: &PinDir) -> Vec<String> {
    let sets = pins.sets();
    assert_eq!(sets.len(), 1, "one pin set: {sets:?}");
    let mut names: Vec<String> = std::fs::read_dir(pins.0.join(&sets[0]).join("links"))
        .expect("links")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// A complete set with a hook missing (a link pin removed by hand, or by a removal that was
/// interrupted) is not adopted: the daemon would be blind to that hook without a word. It is
/// replaced, every hook is attached again, and the window not seen is recorded.
#[test]
fn a_set_with_a_link_missing_is_replaced_not_adopted() {
    let base = temp_dir("pin-partial");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store = base.join("events.db");
    let pins = PinDir::new("partial");
    let first = start_daemon(&root, &store, &pins, &[]);
    stop(first);
    let hooks = link_names(&pins);
    let missing = "sys_enter_unlinkat";
    assert!(hooks.iter().any(|h| h == missing), "{hooks:?}");
    let set = pins.0.join(&pins.sets()[0]);
    assert!(set.join("complete").is_dir(), "the set is complete");
    std::fs::remove_file(set.join("links").join(missing)).expect("removing one link pin");

    let second = start_daemon(&root, &store, &pins, &[]);
    let err = second.stderr();
    assert!(
        !err.contains("adopted the programs pinned"),
        "a set with {missing} missing was adopted:\n{err}"
    );
    assert!(err.contains("replaced the programs pinned"), "{err}");
    assert!(err.contains(missing), "the reason names the hook:\n{err}");
    // Every hook is pinned again, each one a live link.
    assert_eq!(link_names(&pins), hooks, "the hooks pinned now");
    let set = pins.0.join(&pins.sets()[0]);
    for hook in &hooks {
        let id = link_id(&set.join("links").join(hook));
        assert!(link_exists(id), "{hook}: link {id} not attached");
    }
    // The hook that was missing records again.
    let gone = root.join("unlinked");
    create(&gone);
    std::fs::remove_file(&gone).expect("unlink");
    wait_history(&store, &gone, "unlink");
    stop(second);
    assert!(
        gaps(&store).iter().any(|g| s(g, "kind") == "downtime"),
        "the replacement recorded no downtime: {:?}",
        gaps(&store)
    );
    drop(pins);
    let _ = std::fs::remove_dir_all(base);
}

/// The pinned `STAGES` program array (the path-walking stages the programs reach by tail
/// calls) is part of the set: a set whose array lost an entry is not adopted, since its
/// programs would count every operation they reach lost instead of reporting it. It is
/// replaced, the array is filled again, and operations are reported.
#[test]
fn a_set_whose_stage_array_lost_an_entry_is_replaced_not_adopted() {
    let base = temp_dir("pin-stages");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store = base.join("events.db");
    let pins = PinDir::new("stages");
    let first = start_daemon(&root, &store, &pins, &[]);
    stop(first);
    let set = pins.0.join(&pins.sets()[0]);
    let stages = set.join("maps").join("STAGES");
    assert!(stages.exists(), "the stage array is pinned with the maps");
    // Slot 2: `exit_path` (watcher_common::TAIL_CALLED_PROGRAMS).
    let cleared = bpftool(&[
        OsStr::new("map"),
        OsStr::new("delete"),
        OsStr::new("pinned"),
        stages.as_os_str(),
        OsStr::new("key"),
        OsStr::new("2"),
        OsStr::new("0"),
        OsStr::new("0"),
        OsStr::new("0"),
    ]);
    assert!(
        cleared.status.success(),
        "bpftool map delete: {}",
        String::from_utf8_lossy(&cleared.stderr)
    );

    let second = start_daemon(&root, &store, &pins, &[]);
    let err = second.stderr();
    assert!(
        !err.contains("adopted the programs pinned"),
        "a set with an empty stage slot was adopted:\n{err}"
    );
    assert!(err.contains("replaced the programs pinned"), "{err}");
    assert!(
        err.contains("slot 2 (exit_path) is empty"),
        "the reason names the slot:\n{err}"
    );
    // The exits reach their stage again: an unlink is recorded with its path.
    let gone = root.join("unlinked");
    create(&gone);
    std::fs::remove_file(&gone).expect("unlink");
    wait_history(&store, &gone, "unlink");
    stop(second);
    drop(pins);
    let _ = std::fs::remove_dir_all(base);
}

/// A fake pin set (directories and files as a set has them) in `dir`.
fn fake_set(dir: &Path) {
    for sub in ["links", "maps", "unavailable", "complete"] {
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    std::fs::write(dir.join("links").join("sys_enter_openat"), b"x").expect("write");
    std::fs::write(dir.join("maps").join("EVENTS"), b"x").expect("write");
}

fn fake_set_is_whole(dir: &Path) -> bool {
    dir.join("links").join("sys_enter_openat").is_file()
        && dir.join("maps").join("EVENTS").is_file()
        && dir.join("complete").is_dir()
}

/// `unpin` removes nothing from a directory that is not on bpffs (a wrong `--pin-dir`): the
/// names it would remove there are someone else's files.
#[test]
fn unpin_refuses_a_directory_not_on_bpffs() {
    tests::require_root();
    // /dev/shm: tmpfs.
    let dir = PathBuf::from(format!(
        "/dev/shm/ctrwatch-test-unpin-{}",
        std::process::id()
    ));
    let set = dir.join("v1-0123456789abcdef");
    fake_set(&set);
    let (code, out, err) = ctrwatch(&[
        OsStr::new("unpin"),
        OsStr::new("--pin-dir"),
        dir.as_os_str(),
    ]);
    let whole = fake_set_is_whole(&set);
    let _ = std::fs::remove_dir_all(&dir);
    assert_ne!(code, 0, "unpin on tmpfs succeeded: {out}{err}");
    assert!(err.contains("not on a BPF file system"), "{err}");
    assert!(whole, "unpin removed files from tmpfs");
}

/// Nor from a pin directory that others than root can change (they could have put anything
/// there): owned by another user, or writable by group or others.
#[test]
fn unpin_refuses_a_directory_others_can_change() {
    tests::require_root();
    let pins = PinDir::new("owner");
    watcher::kernel::pins::prepare(&pins.0).expect("preparing the pin directory");
    let set = pins.0.join("v1-0123456789abcdef");
    std::fs::create_dir(&set).expect("mkdir");
    let chown = |uid: u32| std::os::unix::fs::chown(&pins.0, Some(uid), None).expect("chown");
    let chmod = |mode: u32| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&pins.0, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    chown(1001);
    let (code, _, err) = pins.unpin();
    assert_ne!(code, 0, "unpin in a directory of uid 1001 succeeded: {err}");
    assert!(err.contains("owned by uid 1001"), "{err}");
    assert!(set.is_dir(), "removed from a directory of uid 1001");
    chown(0);
    chmod(0o770);
    let (code, _, err) = pins.unpin();
    assert_ne!(
        code, 0,
        "unpin in a group-writable directory succeeded: {err}"
    );
    assert!(err.contains("mode 0770"), "{err}");
    assert!(set.is_dir(), "removed from a group-writable directory");
    chmod(0o700);
    let (code, _, err) = pins.unpin();
    assert_eq!(code, 0, "{err}");
    assert!(
        !set.exists(),
        "the set is removed once the directory is safe"
    );
}

/// A symbolic link in the pin directory (named like a set, or in place of a set's `links`)
/// is never followed: what it points to outside stays as it is.
#[test]
fn unpin_does_not_follow_symlinks_out_of_the_pin_directory() {
    tests::require_root();
    let base = temp_dir("pin-symlink");
    let outside_set = base.join("outside-set");
    fake_set(&outside_set);
    let outside_links = base.join("outside-links");
    std::fs::create_dir_all(&outside_links).expect("mkdir");
    std::fs::write(outside_links.join("sys_enter_openat"), b"x").expect("write");
    let pins = PinDir::new("symlink");
    watcher::kernel::pins::prepare(&pins.0).expect("preparing the pin directory");
    let named_like_a_set = pins.0.join("v1-0123456789abcdef");
    std::os::unix::fs::symlink(&outside_set, &named_like_a_set).expect("symlink on bpffs");
    let set = pins.0.join("v1-fedcba9876543210");
    std::fs::create_dir(&set).expect("mkdir");
    std::fs::create_dir(set.join("complete")).expect("mkdir");
    std::os::unix::fs::symlink(&outside_links, set.join("links")).expect("symlink on bpffs");

    let (code, out, err) = pins.unpin();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        fake_set_is_whole(&outside_set),
        "unpin removed files through a symlink named like a set"
    );
    assert!(
        outside_links.join("sys_enter_openat").is_file(),
        "unpin removed files through a set's `links` symlink"
    );
    assert!(!set.exists(), "the real set (with its symlink) is removed");
    let _ = std::fs::remove_file(&named_like_a_set);
    drop(pins);
    let _ = std::fs::remove_dir_all(base);
}

/// A set whose `complete` is not a directory (a symbolic link: bpffs takes symlinks) is
/// removed whole, its `complete` with the rest, and nothing it points to is touched. (The
/// defect: `complete` was removed as a directory first, ENOTDIR failed the whole removal, so
/// `unpin` and every daemon start that replaces sets failed on it.)
#[test]
fn a_set_whose_complete_is_not_a_directory_is_removed() {
    tests::require_root();
    let base = temp_dir("pin-complete-link");
    let outside = base.join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("keep"), b"x").expect("write");
    let pins = PinDir::new("completelink");
    watcher::kernel::pins::prepare(&pins.0).expect("preparing the pin directory");
    let set = pins.0.join("v1-0123456789abcdef");
    std::fs::create_dir(&set).expect("mkdir");
    std::fs::create_dir(set.join("links")).expect("mkdir");
    std::os::unix::fs::symlink(&outside, set.join("complete")).expect("symlink on bpffs");
    let (code, out, err) = pins.unpin();
    assert_eq!(code, 0, "{out}{err}");
    assert!(!set.exists(), "the set is removed");
    assert!(
        outside.join("keep").is_file(),
        "what `complete` pointed to is untouched"
    );
    drop(pins);
    let _ = std::fs::remove_dir_all(base);
}

/// `unpin` takes the pin directory's lock, as a daemon does: while a daemon runs with the pins
/// it refuses, and the daemon goes on capturing.
#[test]
fn unpin_refuses_while_a_daemon_uses_the_pins() {
    let base = temp_dir("pin-inuse");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store = base.join("events.db");
    let pins = PinDir::new("inuse");
    let daemon = start_daemon(&root, &store, &pins, &[]);
    let sets = pins.sets();
    let (code, out, err) = pins.unpin();
    assert_ne!(code, 0, "unpin removed the pins of a running daemon: {out}");
    assert!(err.contains("a ctrwatch daemon is running"), "{err}");
    assert_eq!(pins.sets(), sets, "the pins are untouched");
    let after = root.join("after-the-refused-unpin");
    create(&after);
    wait_history(&store, &after, "create");
    stop(daemon);
    drop(pins);
    let _ = std::fs::remove_dir_all(base);
}

/// `unpin --if-stopping` asks systemd by its absolute path: a `systemctl` earlier on PATH is
/// never run (here one that would say the unit is stopping).
#[test]
fn unpin_if_stopping_does_not_run_systemctl_from_path() {
    tests::require_root();
    let base = temp_dir("pin-path");
    let decoy_dir = base.join("bin");
    std::fs::create_dir_all(&decoy_dir).expect("mkdir");
    let ran = base.join("decoy-ran");
    let decoy = decoy_dir.join("systemctl");
    std::fs::write(
        &decoy,
        format!(
            "#!/bin/sh\ntouch '{}'\necho '1 ctrwatch-test.service stop running'\n",
            ran.display()
        ),
    )
    .expect("write");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&decoy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let pins = PinDir::new("path");
    let path = format!(
        "{}:{}",
        decoy_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(tests::ctrwatch_bin())
        .args([
            OsStr::new("unpin"),
            OsStr::new("--pin-dir"),
            pins.0.as_os_str(),
            OsStr::new("--if-stopping"),
            OsStr::new("ctrwatch-test.service"),
        ])
        .env("PATH", path)
        .output()
        .expect("running ctrwatch");
    assert!(
        !ran.exists(),
        "the systemctl on PATH was run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{out:?}");
    drop(pins);
    let _ = std::fs::remove_dir_all(base);
}

/// A cgroup (v1 `pids` hierarchy) that lets its processes have `max` tasks; removed when
/// dropped.
struct PidsCgroup(PathBuf);

impl PidsCgroup {
    fn new(name: &str, max: u32) -> PidsCgroup {
        let hierarchy = Path::new("/sys/fs/cgroup/pids");
        assert!(
            hierarchy.is_dir(),
            "this test needs the cgroup v1 pids hierarchy at {}",
            hierarchy.display()
        );
        let dir = hierarchy.join(format!("ctrwatch-test-{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let cgroup = PidsCgroup(dir);
        std::fs::write(cgroup.0.join("pids.max"), max.to_string()).expect("pids.max");
        cgroup
    }

    /// Runs `program args` in the cgroup (a shell moves itself in, then execs it).
    fn run(&self, program: &Path, args: &[&OsStr]) -> std::process::Output {
        Command::new("/bin/sh")
            .arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.0)
            .arg(program)
            .args(args)
            .output()
            .expect("sh")
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // Empty once the process ran (it was waited for); the kernel may take a moment.
        let deadline = Instant::now() + TIMEOUT;
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Removing pins unlinks from several threads; where no thread can be started (a task limit:
/// systemd's TasksMax=, a cgroup's pids.max) `unpin` does it on its own thread instead of
/// panicking in `thread::scope` with the pins still there.
#[test]
fn unpin_removes_the_pins_when_no_thread_can_be_started() {
    let base = temp_dir("pin-nothread");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store = base.join("events.db");
    let pins = PinDir::new("nothread");
    let daemon = start_daemon(&root, &store, &pins, &[]);
    stop(daemon);
    assert!(link_names(&pins).len() > 10, "hooks pinned");
    let out = {
        // One task: the process itself, no thread more.
        let cgroup = PidsCgroup::new("nothread", 1);
        cgroup.run(
            &tests::ctrwatch_bin(),
            &[
                OsStr::new("unpin"),
                OsStr::new("--pin-dir"),
                pins.0.as_os_str(),
            ],
        )
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "unpin with no thread: {out:?}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(pins.sets(), Vec::<String>::new(), "unpin left pins");
    drop(pins);
    let _ = std::fs::remove_dir_all(base);
}

/// An error that carries an I/O error says it once: the pin error's message already holds
/// its cause, and the chain printed after it repeated it ("Not a directory (os error 20):
/// Not a directory (os error 20)").
#[test]
fn an_io_error_is_said_once() {
    let (code, out, err) = ctrwatch(&[
        OsStr::new("unpin"),
        OsStr::new("--pin-dir"),
        OsStr::new("/etc/passwd/pins"),
    ]);
    assert_ne!(code, 0, "unpin under a file succeeded: {out}{err}");
    assert_eq!(
        err.matches("Not a directory").count(),
        1,
        "the cause must appear once: {err}"
    );
    assert!(
        err.starts_with("ctrwatch: error: not removing the pins in /etc/passwd/pins"),
        "{err}"
    );
}
