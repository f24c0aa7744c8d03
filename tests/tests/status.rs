//! `ctrwatch status` against a real daemon on the real kernel: not running before it starts;
//! running with its backend, roots and the count of events it stored; not running after a
//! clean stop (the last run ended cleanly) and after kill -9 (no holder of the store's lock
//! once the process is gone; the last run did not end cleanly); not responding while the
//! daemon is stopped (SIGSTOP: the lock is held, its status ages). Needs root.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{Watcher, ctrwatch, temp_dir};

fn start_daemon(root: &Path, store: &Path, config: Option<&Path>) -> Watcher {
    let mut args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        root.as_os_str().to_owned(),
        "--store".into(),
        store.as_os_str().to_owned(),
    ];
    if let Some(c) = config {
        args.extend(["--config".into(), c.as_os_str().to_owned()]);
    }
    Watcher::start_command(&args)
}

/// `ctrwatch status --store STORE [--json]`: (exit code, stdout, stderr).
fn status(store: &Path, json: bool) -> (i32, String, String) {
    let mut args: Vec<&OsStr> = vec!["status".as_ref(), "--store".as_ref(), store.as_os_str()];
    if json {
        args.push("--json".as_ref());
    }
    ctrwatch(&args)
}

/// `status --json` until `done` accepts (exit code, object), within 60 s (the snapshot is
/// published every second, but a loaded machine can hold the daemon back for many).
fn status_until(store: &Path, what: &str, done: impl Fn(i32, &Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, err) = status(store, true);
        let v: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("status --json printed {out:?} ({e}); stderr: {err}"));
        if done(code, &v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what}; last (exit {code}):\n{out}\n{err}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A root with `n` files in it, and a store path next to it.
fn setup(name: &str, n: usize) -> (PathBuf, PathBuf, PathBuf, Vec<PathBuf>) {
    let base = temp_dir(name);
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let files: Vec<PathBuf> = (0..n)
        .map(|i| {
            let f = root.join(format!("blob-{i}"));
            std::fs::write(&f, b"x").expect("write file");
            f
        })
        .collect();
    let store = base.join("store/events.db");
    let root = root.canonicalize().expect("canonical root");
    (base, root, store, files)
}

#[test]
fn status_follows_the_daemon_from_start_to_a_clean_stop() {
    let (base, root, store, files) = setup("status-clean", 5);

    // No store yet: the query commands' code for a missing store.
    let (code, _, err) = status(&store, false);
    assert_eq!(code, 3, "a missing store is exit 3; stderr: {err}");

    // A configuration file (the flags win over it; it only has to be read).
    let config = base.join("ctrwatch.toml");
    std::fs::write(&config, "# read by run, shown by status\n").expect("write config");
    let mut daemon = start_daemon(&root, &store, Some(&config));
    let pid = daemon.pid();
    let running = status_until(&store, "the daemon running", |code, v| {
        code == 0 && v["running"] == true
    });
    assert_eq!(running["state"], "running");
    assert_eq!(running["pid"], pid);
    let d = &running["daemon"];
    assert_eq!(d["pid"], pid);
    assert!(
        !d["backend"].as_str().unwrap_or("").is_empty(),
        "a backend: {running}"
    );
    assert!(
        d["hooks_attached"].as_u64().unwrap_or(0) > 0,
        "hooks: {running}"
    );
    let root_text = root.to_str().expect("utf-8 root");
    assert_eq!(d["roots"], serde_json::json!([root_text]), "{running}");
    assert!(d["since"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(d["config_file"], config.to_str().expect("utf-8 config"));
    assert!(
        d["config_loaded"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(running["store_bytes"].as_u64().unwrap_or(0) > 0);

    // A few deletions under the root: counted in the snapshot (published every second).
    for f in &files {
        std::fs::remove_file(f).expect("delete");
    }
    let counted = status_until(&store, "5 events", |code, v| {
        code == 0 && v["daemon"]["events"].as_u64() >= Some(5)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let counted_later = status_until(&store, "the daemon running", |code, _| code == 0);
    assert_eq!(
        counted_later["daemon"]["events"], 5,
        "exactly the 5 deletions: {counted}"
    );
    assert_eq!(counted_later["daemon"]["lost"], 0);
    assert!(
        counted_later["oldest_event"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{counted_later}"
    );

    // The human block says the same at a glance.
    let (code, text, err) = status(&store, false);
    assert_eq!(code, 0, "{text}{err}");
    assert!(
        text.starts_with(&format!("ctrwatch is running (pid {pid}) since ")),
        "{text}"
    );
    for want in [
        root_text,
        "5 stored since start, 0 lost",
        "hooks attached",
        "last alerts",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }

    daemon.signal(libc::SIGTERM);
    let exit = daemon.wait_exit(Duration::from_secs(120));
    assert!(exit.is_some_and(|s| s.success()), "{}", daemon.stderr());

    let (code, text, err) = status(&store, false);
    assert_eq!(code, 1, "not running is exit 1: {text}{err}");
    assert!(text.starts_with("ctrwatch is NOT RUNNING"), "{text}");
    assert!(text.contains("ended cleanly at"), "{text}");
    assert!(!text.contains("uncleanly"), "{text}");
    let stopped = status_until(&store, "not running", |code, _| code == 1);
    assert_eq!(stopped["running"], false);
    assert_eq!(stopped["state"], "not_running");
    assert!(stopped.get("daemon").is_none(), "{stopped}");
    assert_eq!(stopped["last_run"]["clean"], true);
    assert_eq!(stopped["last_run"]["pid"], pid);
    assert!(stopped["last_run"]["ended"].is_string(), "{stopped}");

    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn status_after_kill_9_is_not_running_and_the_run_ended_uncleanly() {
    let (base, root, store, _) = setup("status-kill", 0);
    let mut daemon = start_daemon(&root, &store, None);
    let pid = daemon.pid();
    status_until(&store, "the daemon running", |code, v| {
        code == 0 && v["pid"] == pid
    });
    daemon.signal(libc::SIGKILL);
    assert!(
        daemon.wait_exit(Duration::from_secs(120)).is_some(),
        "the killed daemon is gone"
    );
    // Its lock file may remain; nobody holds it. The snapshot it left is fresh for a few
    // seconds more: it must not count.
    let (code, text, err) = status(&store, false);
    assert_eq!(code, 1, "{text}{err}");
    assert!(text.starts_with("ctrwatch is NOT RUNNING"), "{text}");
    assert!(
        text.contains(&format!("pid {pid}")) && text.contains("ended uncleanly"),
        "{text}"
    );
    let v = status_until(&store, "not running", |code, _| code == 1);
    assert_eq!(v["state"], "not_running");
    assert_eq!(v["last_run"]["clean"], false);
    assert!(v["last_run"]["ended"].is_null(), "{v}");
    let _ = std::fs::remove_dir_all(base);
}

/// A daemon that holds its store's lock but no longer updates its status (stopped here with
/// SIGSTOP; stuck, in real life) is not reported as running.
#[test]
fn status_of_a_stopped_daemon_is_not_responding() {
    let (base, root, store, _) = setup("status-stopped", 0);
    let daemon = start_daemon(&root, &store, None);
    let pid = daemon.pid();
    status_until(&store, "the daemon running", |code, _| code == 0);
    daemon.signal(libc::SIGSTOP);
    let stuck = status_until(&store, "not responding", |code, v| {
        code == 1 && v["state"] == "not_responding"
    });
    assert_eq!(stuck["pid"], pid);
    assert_eq!(stuck["running"], false);
    let (code, text, _) = status(&store, false);
    assert_eq!(code, 1);
    assert!(
        text.starts_with(&format!(
            "ctrwatch is NOT RESPONDING: pid {pid} holds the store's lock"
        )),
        "{text}"
    );
    daemon.signal(libc::SIGCONT);
    status_until(&store, "running again", |code, _| code == 0);
    drop(daemon.stop());
    let _ = std::fs::remove_dir_all(base);
}

/// `ctrwatch status ARGS` as `uid` with only the group `gid`.
fn status_as(uid: u32, gid: u32, store: &Path) -> (i32, String, String) {
    let out = std::process::Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(format!("--groups={gid}"))
        .arg(tests::ctrwatch_bin())
        .args(["status", "--json", "--store"])
        .arg(store)
        .output()
        .expect("setpriv ctrwatch status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A member of the store's group cannot look into the root-only lock directory; status tells
/// a running daemon from one killed with -9 for them too (by /proc/locks), and refuses a user
/// outside the group as the queries do (exit 8).
#[test]
fn status_for_the_store_group_tells_running_from_killed() {
    const GROUP: u32 = 4242;
    let (base, root, store, _) = setup("status-group", 0);
    let args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        root.as_os_str().to_owned(),
        "--store".into(),
        store.as_os_str().to_owned(),
        "--store-group".into(),
        GROUP.to_string().into(),
    ];
    let mut daemon = Watcher::start_command(&args);
    let pid = daemon.pid();
    status_until(&store, "the daemon running", |code, _| code == 0);

    let (code, out, err) = status_as(GROUP, GROUP, &store);
    assert_eq!(code, 0, "the group's member sees it running: {out}{err}");
    let v: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["pid"], pid, "{v}");
    assert!(v["daemon"]["hooks_attached"].as_u64() > Some(0), "{v}");

    let (code, _, err) = status_as(GROUP + 1, GROUP + 1, &store);
    assert_eq!(code, 8, "outside the group: permission denied; {err}");

    daemon.signal(libc::SIGKILL);
    assert!(daemon.wait_exit(Duration::from_secs(120)).is_some());
    // The snapshot it left is still fresh: the pid it names holds no lock any more.
    let (code, out, err) = status_as(GROUP, GROUP, &store);
    assert_eq!(code, 1, "{out}{err}");
    let v: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["state"], "not_running", "{v}");
    assert_eq!(v["last_run"]["clean"], false, "{v}");
    let _ = std::fs::remove_dir_all(base);
}
