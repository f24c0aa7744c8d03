//! SIGHUP reloads `ctrwatch run`'s configuration without losing events: the real daemon, the
//! real kernel, real signals, a real webhook receiver on 127.0.0.1. A good reload applies the
//! live keys (here secret masking) while a flood runs, and every operation of the flood is
//! stored; a bad one (unknown key, wrong mode, a FIFO at the path) keeps the old configuration
//! and says why in the log, in `status` and as a `config-invalid` alert; a changed
//! restart-only key is warned about and kept. Needs root.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::{OsStr, OsString},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    Watcher, ctrwatch, delete_with_token, json_lines,
    receiver::{Mode, Receiver},
    s, temp_dir, write_config,
};

const FSOP: &str = env!("CARGO_BIN_EXE_fsop");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Generous: the machine running the tests may be loaded.
const DEADLINE: Duration = Duration::from_secs(60);

/// A sink section for the receiver's `/hook`.
fn hook_sink(r: &Receiver) -> String {
    format!(
        "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\ntimeout = \"2s\"\n",
        r.url("/hook")
    )
}

/// A temp dir with a root in it; the root canonical.
fn setup(name: &str) -> (PathBuf, PathBuf) {
    let base = temp_dir(name);
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let root = root.canonicalize().expect("canonical root");
    (base, root)
}

/// `ctrwatch run --root ROOT [--store STORE] --config CONFIG`, with a ring buffer that holds
/// a flood even while the machine is loaded (a loss would be the kernel's, not the reload's).
fn start_daemon(root: &Path, store: Option<&Path>, config: &Path) -> Watcher {
    let mut args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        root.into(),
        "--ring-buffer-mb".into(),
        "64".into(),
    ];
    if let Some(store) = store {
        args.extend(["--store".into(), store.into()]);
    }
    args.extend(["--config".into(), config.into()]);
    Watcher::start_command(&args)
}

/// `status --json` until `done` accepts it, within [`DEADLINE`].
fn status_until(store: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (code, out, err) = ctrwatch(&[
            OsStr::new("status"),
            OsStr::new("--store"),
            store.as_os_str(),
            OsStr::new("--json"),
        ]);
        let v: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
        if code == 0 && done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what}; last (exit {code}):\n{out}\n{err}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The daemon's log until it contains `text`, within [`DEADLINE`].
fn log_until(daemon: &Watcher, text: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = daemon.stderr();
        if log.contains(text) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "the log never said {text:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The stored events matching `glob` (`query --path GLOB --json`) once there are at least
/// `want`, or what there is at the deadline.
fn stored(store: &Path, glob: &Path, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (code, out, err) = ctrwatch(&[
            OsStr::new("query"),
            OsStr::new("--path"),
            glob.as_os_str(),
            OsStr::new("--store"),
            store.as_os_str(),
            OsStr::new("--json"),
            OsStr::new("--limit"),
            OsStr::new("10000000"),
        ]);
        assert_eq!(code, 0, "query: {err}");
        let rows = json_lines(&out);
        if rows.len() >= want || Instant::now() >= deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The stored unlink of `file` (JSON text, its command line included).
fn stored_unlink(store: &Path, file: &Path) -> String {
    let rows = stored(store, file, 1);
    let row = rows
        .iter()
        .find(|r| s(r, "op") == "unlink")
        .unwrap_or_else(|| panic!("no unlink of {} stored: {rows:?}", file.display()));
    row.to_string()
}

fn hook_alerts(r: &Receiver, rule: &str) -> Vec<Value> {
    r.received()
        .into_iter()
        .filter(|x| x.path() == "/hook" && x.json()["rule"] == rule)
        .map(|x| x.json())
        .collect()
}

/// The receiver's requests until `done` accepts them, within [`DEADLINE`].
fn received_until(r: &Receiver, what: &str, done: impl Fn(&Receiver) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done(r) {
        assert!(
            Instant::now() < deadline,
            "the receiver never got {what}: {:?}",
            r.received()
                .iter()
                .map(|x| x.json().to_string())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A flood of failing unlinks (one record each) by a child process, with SIGHUPs sent to the
/// daemon while it runs; a live key (a mask pattern) changes with the first. Every operation
/// of the flood is stored and no loss is recorded; the new pattern masks what runs after the
/// reload; status shows the new load time.
#[test]
fn a_good_reload_during_a_flood_applies_the_new_settings_and_loses_no_event() {
    const FLOOD: usize = 20_000;
    let (base, root) = setup("reload-good");
    let store = base.join("store/events.db");
    let config = base.join("ctrwatch.toml");
    write_config(&config, "[watch]\nmask_args = []\n");
    let mut daemon = start_daemon(&root, Some(&store), &config);
    let before = status_until(&store, "the config file", |v| {
        v["daemon"]["config_loaded"].is_string()
    });
    let loaded_before = before["daemon"]["config_loaded"].clone();
    assert_eq!(
        before["daemon"]["config_file"].as_str(),
        Some(config.to_str().unwrap_or_default()),
        "{before}"
    );
    // Not masked yet: the pattern is not in the file.
    let first = root.join("first");
    delete_with_token(&first, "vaultkey-aaaa");
    assert!(
        stored_unlink(&store, &first).contains("vaultkey-aaaa"),
        "masked before the pattern was configured"
    );

    // The load time has a resolution of a nanosecond, but a clock may be coarse.
    std::thread::sleep(Duration::from_millis(50));
    // The file also names other roots: `--root` still wins after the reload.
    let elsewhere = base.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir elsewhere");
    write_config(
        &config,
        &format!(
            "[watch]\nroots = [\"{}\"]\ndiscover = false\nmask_args = ['vaultkey-[a-z]+']\n",
            elsewhere.display()
        ),
    );
    let flood_dir = root.join("flood");
    std::fs::create_dir_all(&flood_dir).expect("mkdir flood");
    let mut flood = Command::new(FSOP)
        .args([
            OsStr::new("flood"),
            flood_dir.as_os_str(),
            OsStr::new(&FLOOD.to_string()),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("flood");
    // Reloads until the flood has ended, so that some come while it runs (one that comes
    // while the previous is being read is queued).
    let mut hangups = 0;
    let flooded = loop {
        daemon.signal(libc::SIGHUP);
        hangups += 1;
        std::thread::sleep(Duration::from_millis(20));
        if let Some(status) = flood.try_wait().expect("flood") {
            break status;
        }
    };
    eprintln!("{hangups} SIGHUPs during the flood");
    assert!(flooded.success(), "{flooded:?}");
    log_until(&daemon, "reloaded the configuration");

    let after = status_until(&store, "a new load time", |v| {
        v["daemon"]["config_loaded"] != loaded_before
    });
    assert!(after["daemon"]["config_reload_failed"].is_null(), "{after}");
    assert_eq!(
        after["daemon"]["roots"],
        serde_json::json!([root.to_str().unwrap_or_default()]),
        "--root did not win over the reloaded file"
    );
    // In effect: the new pattern masks a command line run after the reload.
    let second = root.join("second");
    delete_with_token(&second, "vaultkey-bbbb");
    let argv = stored_unlink(&store, &second);
    assert!(
        !argv.contains("vaultkey-bbbb") && argv.contains("***"),
        "not masked after the reload: {argv}"
    );

    // No event lost: every unlink of the flood is stored, and no loss is on record.
    let rows = stored(&store, &flood_dir.join("*"), FLOOD);
    let unlinks = rows.iter().filter(|r| s(r, "op") == "unlink").count();
    assert_eq!(unlinks, FLOOD, "flood operations stored");
    let (code, out, err) = ctrwatch(&[
        OsStr::new("gaps"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ]);
    assert_eq!(code, 0, "gaps: {err}");
    // `path_unresolved` is counted for every process of the node (a path deeper than the
    // walk, anywhere): another test's or the machine's, not the flood's.
    let losses: Vec<Value> = json_lines(&out)
        .into_iter()
        .filter(|g| s(g, "kind") == "loss")
        .filter(|g| {
            g["kinds"]
                .as_object()
                .is_none_or(|k| k.keys().any(|kind| kind != "path_unresolved"))
        })
        .collect();
    assert!(losses.is_empty(), "loss records: {losses:?}");
    assert!(
        daemon.wait_exit(Duration::ZERO).is_none(),
        "the daemon exited"
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}

/// An unknown key, then a file group-writable: each reload is refused, the daemon runs on with
/// the old configuration (its sink still gets alerts, its mask pattern still masks), and says
/// why: an error line with FILE:LINE:COL: KEY, `status`, and a `config-invalid` alert. A
/// fixed file then reloads and the failure clears.
#[test]
fn a_bad_reload_keeps_the_old_configuration_and_says_why() {
    let (base, root) = setup("reload-bad");
    let store = base.join("store/events.db");
    let config = base.join("ctrwatch.toml");
    let r = Receiver::start(Mode::Accept);
    let good = format!(
        "[watch]\nmask_args = ['vaultkey-[a-z]+']\n\n{}",
        hook_sink(&r)
    );
    write_config(&config, &good);
    let daemon = start_daemon(&root, Some(&store), &config);
    let before = status_until(&store, "the config file", |v| {
        v["daemon"]["config_loaded"].is_string()
    });

    // An unknown key on line 3: the whole file is refused.
    write_config(
        &config,
        &format!(
            "[watch]\nmask_args = []\nbogus_key = 1\n\n{}",
            hook_sink(&r)
        ),
    );
    daemon.signal(libc::SIGHUP);
    let shown = format!("{}:3:1: watch.bogus_key", config.display());
    let log = log_until(&daemon, &shown);
    let line = log
        .lines()
        .find(|l| l.contains("reloading the configuration failed"))
        .unwrap_or_else(|| panic!("no reload error line in:\n{log}"));
    assert!(line.contains("ERROR"), "not at error priority: {line}");
    let failed = status_until(&store, "the failed reload", |v| {
        v["daemon"]["config_reload_failed"].is_string()
    });
    let why = failed["daemon"]["config_reload_error"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains(&shown), "{failed}");
    assert_eq!(
        failed["daemon"]["config_loaded"], before["daemon"]["config_loaded"],
        "the load time changed on a failed reload"
    );
    // The alert, through the old configuration's sink.
    received_until(&r, "a config-invalid alert", |r| {
        hook_alerts(r, "config-invalid").iter().any(|a| {
            a["details"]["error"]
                .as_str()
                .unwrap_or("")
                .contains(&shown)
        })
    });
    // The old mask pattern is still in effect (the bad file has none).
    let masked = root.join("masked");
    delete_with_token(&masked, "vaultkey-cccc");
    assert!(
        !stored_unlink(&store, &masked).contains("vaultkey-cccc"),
        "the refused file's settings were applied"
    );

    // A valid file writable by others: refused too (as at the start).
    write_config(&config, &good);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    daemon.signal(libc::SIGHUP);
    log_until(&daemon, "mode 0666");
    status_until(&store, "the mode refused", |v| {
        v["daemon"]["config_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("mode 0666"))
    });
    received_until(&r, "a second config-invalid alert", |r| {
        hook_alerts(r, "config-invalid").iter().any(|a| {
            a["details"]["error"]
                .as_str()
                .unwrap_or("")
                .contains("mode 0666")
        })
    });

    // Fixed: the failure clears, the load time moves.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    daemon.signal(libc::SIGHUP);
    let fixed = status_until(&store, "the failure cleared", |v| {
        v["daemon"]["config_reload_failed"].is_null()
            && v["daemon"]["config_loaded"] != before["daemon"]["config_loaded"]
    });
    assert!(fixed["daemon"]["config_reload_error"].is_null(), "{fixed}");
    let (code, human, _) = ctrwatch(&[
        OsStr::new("status"),
        OsStr::new("--store"),
        store.as_os_str(),
    ]);
    assert_eq!(code, 0);
    assert!(
        human.contains(&format!("{}, loaded ", config.display()))
            && !human.contains("last reload failed"),
        "{human}"
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}

/// The same refused file reloaded again and again (SIGHUP repeated, a deployment retrying):
/// ONE `config-invalid` alert whose revisions count the refusals, not an alert each; an
/// edited file that is still refused is a new alert.
#[test]
fn repeated_refusals_of_the_same_file_are_one_alert() {
    let (base, root) = setup("reload-repeat");
    let store = base.join("store/events.db");
    let config = base.join("ctrwatch.toml");
    let r = Receiver::start(Mode::Accept);
    write_config(&config, &hook_sink(&r));
    let daemon = start_daemon(&root, Some(&store), &config);
    status_until(&store, "the config file", |v| {
        v["daemon"]["config_loaded"].is_string()
    });
    let bad = format!("[watch]\nbogus_key = 1\n\n{}", hook_sink(&r));
    write_config(&config, &bad);
    let refusals = |n: usize| {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let log = daemon.stderr();
            if log.matches("reloading the configuration failed").count() >= n {
                return;
            }
            assert!(Instant::now() < deadline, "not {n} refusals in:\n{log}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    for n in 1..=3 {
        daemon.signal(libc::SIGHUP);
        // One refusal at a time: signals sent while a reload runs may merge.
        refusals(n);
    }
    received_until(&r, "the third refusal's revision (count 3)", |r| {
        hook_alerts(r, "config-invalid")
            .iter()
            .any(|a| a["count"] == 3)
    });
    let same = hook_alerts(&r, "config-invalid");
    let ids: std::collections::BTreeSet<&str> =
        same.iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "{same:#?}");
    let last = same
        .iter()
        .max_by_key(|a| a["rev"].as_u64())
        .expect("revisions");
    assert_eq!(last["rev"], 3, "{last:#}");
    assert!(
        last["summary"]
            .as_str()
            .is_some_and(|s| s.contains("refused 3 times") && s.contains("watch.bogus_key")),
        "{last:#}"
    );

    // Edited, still refused: another alert.
    write_config(&config, &format!("{bad}\n[other]\n"));
    daemon.signal(libc::SIGHUP);
    refusals(4);
    received_until(&r, "the edited file's own alert", |r| {
        hook_alerts(r, "config-invalid")
            .iter()
            .filter_map(|a| a["id"].as_str().map(str::to_owned))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 2
    });
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}

/// A FIFO at the configuration's path: the reload does not wait for a writer (the daemon goes
/// on storing), and fails saying what is there.
#[test]
fn a_fifo_at_the_config_path_does_not_hang_the_daemon() {
    let (base, root) = setup("reload-fifo");
    let store = base.join("store/events.db");
    let config = base.join("ctrwatch.toml");
    write_config(&config, "[watch]\n");
    let daemon = start_daemon(&root, Some(&store), &config);
    status_until(&store, "the config file", |v| {
        v["daemon"]["config_loaded"].is_string()
    });
    std::fs::remove_file(&config).expect("rm config");
    let c = std::ffi::CString::new(config.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    daemon.signal(libc::SIGHUP);
    let failed = status_until(&store, "the reload refused", |v| {
        v["daemon"]["config_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("not a regular file"))
    });
    assert!(
        failed["daemon"]["config_reload_failed"].is_string(),
        "{failed}"
    );
    // Still capturing and storing.
    let later = root.join("later");
    std::fs::write(&later, b"x").expect("create");
    let rows = stored(&store, &later, 1);
    assert!(
        rows.iter().any(|r| s(r, "op") == "create"),
        "nothing stored after the reload: {rows:?}"
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}

/// The good reloads applied so far, by the load time `status` shows: waits until it moves
/// past `before`; returns it.
fn loaded_after(store: &Path, before: &Value) -> Value {
    status_until(store, "a new load time", |v| {
        v["daemon"]["config_loaded"].is_string() && v["daemon"]["config_loaded"] != *before
    })["daemon"]["config_loaded"]
        .clone()
}

/// `log_level` follows a reload: reloaded at `warn`, the daemon no longer writes the
/// reload's own info line (the level applies before it), while the error line of a refused
/// reload after it is written (same stream, so their order is the daemon's); reloaded at
/// `info` again, the info line is back. On a daemon whose logger is set once, the `warn`
/// reload still writes its info line (the level waits for a restart).
#[test]
fn the_log_level_follows_a_reload() {
    const INFO: &str = "reloaded the configuration";
    const REFUSED: &str = "reloading the configuration failed";
    let (base, root) = setup("reload-log-level");
    let store = base.join("store/events.db");
    let config = base.join("ctrwatch.toml");
    // The harness waits for the start's info line.
    write_config(&config, "log_level = \"info\"\n");
    let daemon = start_daemon(&root, Some(&store), &config);
    let loaded = status_until(&store, "the config file", |v| {
        v["daemon"]["config_loaded"].is_string()
    })["daemon"]["config_loaded"]
        .clone();

    std::thread::sleep(Duration::from_millis(50));
    write_config(&config, "log_level = \"warn\"\n");
    daemon.signal(libc::SIGHUP);
    let loaded = loaded_after(&store, &loaded);
    write_config(&config, "log_level = \"warn\"\nno_such_key = 1\n");
    daemon.signal(libc::SIGHUP);
    let log = log_until(&daemon, REFUSED);
    assert_eq!(
        log.matches(INFO).count(),
        0,
        "an info line after the reload to warn:\n{log}"
    );
    assert!(!log.contains("log_level changed"), "{log}");

    std::thread::sleep(Duration::from_millis(50));
    write_config(&config, "log_level = \"info\"\n");
    daemon.signal(libc::SIGHUP);
    loaded_after(&store, &loaded);
    log_until(&daemon, INFO);
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}

/// `[store] retention_mb` follows a reload: a store of some 30 MB of events, reloaded with
/// the smallest bound (16 MiB), is pruned within seconds (a `pruned` record), not at the next
/// start or the next scheduled prune ten minutes on. On a daemon that keeps the bound it
/// started with (none), nothing is pruned.
#[test]
fn a_reload_changes_the_retention() {
    const FLOOD: u64 = 300_000;
    let (base, root) = setup("reload-retention");
    let store = base.join("store/events.db");
    let config = base.join("ctrwatch.toml");
    write_config(&config, "[store]\nretention_mb = 0\n");
    let daemon = start_daemon(&root, Some(&store), &config);
    let loaded = status_until(&store, "the config file", |v| {
        v["daemon"]["config_loaded"].is_string()
    })["daemon"]["config_loaded"]
        .clone();
    let flood_dir = root.join("flood");
    std::fs::create_dir_all(&flood_dir).expect("mkdir flood");
    let flooded = Command::new(FSOP)
        .args([
            OsStr::new("flood"),
            flood_dir.as_os_str(),
            OsStr::new(&FLOOD.to_string()),
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("flood");
    assert!(flooded.success(), "{flooded:?}");
    // Every record of the flood handed to the store (or counted lost): well over 16 MiB.
    status_until(&store, "the flood handed to the store", |v| {
        let d = &v["daemon"];
        d["events"].as_u64().unwrap_or(0) + d["lost"].as_u64().unwrap_or(0) >= FLOOD
            && v["store_bytes"].as_u64().unwrap_or(0) > 20 << 20
    });
    let pruned = || {
        let (code, out, err) = ctrwatch(&[
            OsStr::new("gaps"),
            OsStr::new("--store"),
            store.as_os_str(),
            OsStr::new("--json"),
        ]);
        assert_eq!(code, 0, "gaps: {err}");
        json_lines(&out)
            .into_iter()
            .filter(|g| s(g, "kind") == "pruned")
            .collect::<Vec<_>>()
    };
    assert!(pruned().is_empty(), "pruned before the reload");

    std::thread::sleep(Duration::from_millis(50));
    write_config(&config, "[store]\nretention_mb = 16\n");
    daemon.signal(libc::SIGHUP);
    loaded_after(&store, &loaded);
    tests::wait_until(
        "a prune by the reloaded bound",
        DEADLINE,
        || !pruned().is_empty(),
        || daemon.stderr(),
    );
    let status = status_until(&store, "no key waiting for a restart", |v| {
        v["daemon"]["config_restart_pending"]
            .as_array()
            .is_some_and(|k| k.is_empty())
    });
    assert!(
        status["daemon"]["config_reload_failed"].is_null(),
        "{status}"
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}

/// `[store] path` changed in the file: not an error; warned, shown in status, and the daemon
/// keeps storing where it started.
#[test]
fn a_changed_restart_only_key_is_warned_and_kept() {
    let (base, root) = setup("reload-restart-only");
    let store = base.join("store/events.db");
    let moved = base.join("moved/events.db");
    let config = base.join("ctrwatch.toml");
    write_config(
        &config,
        &format!("[store]\npath = \"{}\"\n", store.display()),
    );
    let daemon = start_daemon(&root, None, &config);
    let before = status_until(&store, "the config file", |v| {
        v["daemon"]["config_loaded"].is_string()
    });
    write_config(
        &config,
        &format!("[store]\npath = \"{}\"\n", moved.display()),
    );
    daemon.signal(libc::SIGHUP);
    log_until(
        &daemon,
        "[store] path changed; it takes effect at the next start",
    );
    let after = status_until(&store, "the key waiting for a restart", |v| {
        v["daemon"]["config_restart_pending"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "[store] path"))
    });
    assert!(after["daemon"]["config_reload_failed"].is_null(), "{after}");
    assert_ne!(
        after["daemon"]["config_loaded"], before["daemon"]["config_loaded"],
        "the reload did not count as loaded"
    );
    let (_, human, _) = ctrwatch(&[
        OsStr::new("status"),
        OsStr::new("--store"),
        store.as_os_str(),
    ]);
    assert!(human.contains("[store] path"), "{human}");
    // The old value stays: events still go to the store it started with.
    let later = root.join("later");
    std::fs::write(&later, b"x").expect("create");
    let rows = stored(&store, &later, 1);
    assert!(!rows.is_empty(), "not stored in the old store");
    assert!(!moved.exists(), "a store was created at the new path");
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}

/// Without `--root`, the file's roots are live: a reload that names another root watches it
/// (and only it) from then on.
#[test]
fn reloaded_roots_are_watched() {
    let (base, first) = setup("reload-roots");
    let second = base.join("second");
    std::fs::create_dir_all(&second).expect("mkdir second");
    let second = second.canonicalize().expect("canonical");
    let store = base.join("store/events.db");
    let config = base.join("ctrwatch.toml");
    let text = |root: &Path| {
        format!(
            "[watch]\nroots = [\"{}\"]\ndiscover = false\n[store]\npath = \"{}\"\n",
            root.display(),
            store.display()
        )
    };
    write_config(&config, &text(&first));
    let daemon = Watcher::start_command(&["run".into(), "--config".into(), config.clone().into()]);
    status_until(&store, "the first root", |v| {
        v["daemon"]["roots"] == serde_json::json!([first.to_str().unwrap_or_default()])
    });
    write_config(&config, &text(&second));
    daemon.signal(libc::SIGHUP);
    status_until(&store, "the second root, alone", |v| {
        v["daemon"]["roots"] == serde_json::json!([second.to_str().unwrap_or_default()])
    });
    let made = second.join("made");
    std::fs::write(&made, b"x").expect("create");
    let rows = stored(&store, &made, 1);
    assert!(
        rows.iter().any(|r| s(r, "op") == "create"),
        "nothing stored under the reloaded root: {rows:?}"
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}

/// The default file (`/etc/ctrwatch/ctrwatch.toml`, no `--config`) read at the start and then
/// removed: a SIGHUP is a refused reload, and the file's secret masks stay. The daemon fell
/// back to the built-in defaults before, silently dropping the masks and trusted writers.
/// Runs only where that file does not exist already (a node's own is never touched).
#[test]
fn a_removed_default_file_is_a_refused_reload_not_the_defaults() {
    let default = Path::new(ctrwatch_config_default());
    let dir = default.parent().expect("/etc/ctrwatch");
    if default.exists() {
        eprintln!("skipped: {} exists on this machine", default.display());
        return;
    }
    let made_dir = !dir.exists();
    std::fs::create_dir_all(dir).expect("mkdir /etc/ctrwatch");
    /// Removes what the test put in /etc, whatever happens.
    struct Cleanup(&'static Path, bool);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
            if self.1 {
                let _ = std::fs::remove_dir(self.0.parent().unwrap_or(self.0));
            }
        }
    }
    let _cleanup = Cleanup(Path::new(ctrwatch_config_default()), made_dir);
    let (base, root) = setup("reload-default-gone");
    let store = base.join("store/events.db");
    write_config(default, "[watch]\nmask_args = ['vaultkey-[a-z]+']\n");
    let args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        root.clone().into(),
        "--store".into(),
        store.clone().into(),
    ];
    let daemon = Watcher::start_command(&args);
    status_until(&store, "the default file loaded", |v| {
        v["daemon"]["config_loaded"].is_string()
    });
    std::fs::remove_file(default).expect("remove the default file");
    daemon.signal(libc::SIGHUP);
    log_until(&daemon, "reloading the configuration failed");
    let failed = status_until(&store, "the refused reload", |v| {
        v["daemon"]["config_reload_failed"].is_string()
    });
    let why = failed["daemon"]["config_reload_error"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("ctrwatch.toml"), "{failed}");
    // The file's mask still applies.
    let file = root.join("masked");
    delete_with_token(&file, "vaultkey-abc");
    let row = stored_unlink(&store, &file);
    assert!(!row.contains("vaultkey-abc"), "the mask was dropped: {row}");
    daemon.stop();
    let _ = std::fs::remove_dir_all(&base);
}

fn ctrwatch_config_default() -> &'static str {
    "/etc/ctrwatch/ctrwatch.toml"
}
