//! `ctrwatch run` with a configuration file: the file sets what the flags set, a flag given
//! wins over the file, and a file root does not control alone is refused. The real daemon,
//! the real kernel. Needs root.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::{OsStr, OsString},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use tests::{
    Watcher, ctrwatch, delete_with_token, json_lines, require_root, temp_dir, write_config,
};

/// `history PATH --store STORE --json` once the daemon has committed `want` records for it
/// (it commits every second; 60 s allowed for a loaded machine).
fn history(store: &Path, path: &Path, want: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, err) = ctrwatch(&[
            OsStr::new("history"),
            path.as_os_str(),
            OsStr::new("--store"),
            store.as_os_str(),
            OsStr::new("--json"),
        ]);
        if code == 0 && json_lines(&out).len() >= want {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "history of {} in {}: exit {code}, {out}{err}",
            path.display(),
            store.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The file names the root, the store and a mask pattern; `run --config FILE` alone watches
/// that root, stores there, and masks with that pattern. Then `--root` and `--store` given on
/// the command line win over the file.
#[test]
fn run_takes_its_settings_from_the_file_and_flags_win() {
    require_root();
    let dir = temp_dir("config-run");
    let (root, other) = (dir.join("root"), dir.join("other"));
    std::fs::create_dir_all(&root).expect("root");
    std::fs::create_dir_all(&other).expect("other");
    let (store_a, store_b) = (dir.join("a/events.db"), dir.join("b/events.db"));
    let config = dir.join("ctrwatch.toml");
    write_config(
        &config,
        &format!(
            "[watch]\nroots = [{root:?}]\ndiscover = false\nmask_args = [\"zz-[0-9]+\"]\n\n[store]\npath = {store:?}\nretention_days = 7\n",
            root = root.display().to_string(),
            store = store_a.display().to_string(),
        ),
    );

    // From the file alone.
    let daemon = Watcher::start_command(&[
        OsString::from("run"),
        "--config".into(),
        config.as_os_str().to_owned(),
    ]);
    let err = daemon.stderr();
    assert!(err.contains(&root.display().to_string()), "{err}");
    assert!(
        !err.contains("/var/lib/containerd"),
        "discovery was on: {err}"
    );
    let victim = root.join("victim");
    delete_with_token(&victim, "zz-1234567");
    let out = history(&store_a, &victim, 1);
    assert!(out.contains("\"unlink"), "{out}");
    assert!(
        !out.contains("zz-1234567"),
        "the file's mask pattern was not applied:\n{out}"
    );
    assert!(out.contains("***"), "{out}");
    daemon.stop();

    // Flags win: --store and --root given, the file's store and root are not used.
    let daemon = Watcher::start_command(&[
        OsString::from("run"),
        "--config".into(),
        config.as_os_str().to_owned(),
        "--store".into(),
        store_b.as_os_str().to_owned(),
        "--root".into(),
        other.as_os_str().to_owned(),
    ]);
    let in_other = other.join("victim");
    delete_with_token(&in_other, "zz-7654321");
    let again = root.join("again");
    delete_with_token(&again, "zz-1111111");
    let out = history(&store_b, &in_other, 1);
    assert!(!out.contains("zz-7654321"), "{out}");
    // Give the daemon time to have stored the other deletion, were it watching the root.
    std::thread::sleep(Duration::from_secs(2));
    daemon.stop();
    let (_, out, _) = ctrwatch(&[
        OsStr::new("history"),
        again.as_os_str(),
        OsStr::new("--store"),
        store_b.as_os_str(),
        OsStr::new("--json"),
    ]);
    assert!(
        json_lines(&out).is_empty(),
        "--root did not replace the file's roots: {out}"
    );
    let (_, out, _) = ctrwatch(&[
        OsStr::new("history"),
        again.as_os_str(),
        OsStr::new("--store"),
        store_a.as_os_str(),
        OsStr::new("--json"),
    ]);
    assert!(
        json_lines(&out).is_empty(),
        "--store did not replace the file's store: {out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Files the daemon must not start with: one another user could have written (it decides what
/// is trusted and watched), one that turns discovery off and names no root, one asking for
/// what this build does not have, and a wrong one named by CTRWATCH_CONFIG. Each is refused
/// before anything is attached, with the file and the reason.
#[test]
fn run_refuses_files_it_cannot_trust_or_use() {
    require_root();
    let dir = temp_dir("config-refused");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("root");
    let store = dir.join("events.db");
    let run = |config: &Path, env: bool| {
        let mut cmd = Command::new(tests::ctrwatch_bin());
        cmd.arg("run").arg("--store").arg(&store);
        if env {
            cmd.env("CTRWATCH_CONFIG", config);
        } else {
            cmd.arg("--config").arg(config);
        }
        let out = cmd.output().expect("ctrwatch run");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let writable = dir.join("writable.toml");
    write_config(
        &writable,
        &format!("[watch]\nroots = [{:?}]\n", root.display().to_string()),
    );
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let (code, err) = run(&writable, false);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("refusing the configuration") && err.contains("0666"),
        "{err}"
    );

    let nothing = dir.join("nothing.toml");
    write_config(&nothing, "[watch]\ndiscover = false\n");
    let (code, err) = run(&nothing, false);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("nothing to watch"), "{err}");

    let lsm = dir.join("lsm.toml");
    write_config(&lsm, "[watch]\nbackend = \"lsm\"\n");
    let (code, err) = run(&lsm, false);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("backend = \"lsm\""), "{err}");

    let wrong = dir.join("wrong.toml");
    write_config(&wrong, "[store]\nretention_days = \"a month\"\n");
    let (code, err) = run(&wrong, true);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(&format!("{}:2:", wrong.display())) && err.contains("store.retention_days"),
        "{err}"
    );
    assert!(!store.exists(), "a refused start created the store");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The file's `log_level` sets how much `run` logs: at `error`, the daemon captures as usual
/// and its info lines ("watching ...") are not written.
#[test]
fn the_files_log_level_applies() {
    require_root();
    let dir = temp_dir("config-log-level");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("root");
    let store = dir.join("events.db");
    let config = dir.join("ctrwatch.toml");
    write_config(
        &config,
        &format!(
            "log_level = \"error\"\n[watch]\nroots = [{:?}]\ndiscover = false\n[store]\npath = {:?}\n",
            root.display().to_string(),
            store.display().to_string()
        ),
    );
    let child = Command::new(tests::ctrwatch_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ctrwatch run");
    // Attached once a deletion shows in the history.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n = 0;
    loop {
        let victim = root.join(format!("v{n}"));
        n += 1;
        std::fs::write(&victim, b"x").expect("create");
        std::fs::remove_file(&victim).expect("delete");
        std::thread::sleep(Duration::from_millis(500));
        let (code, out, _) = ctrwatch(&[
            OsStr::new("history"),
            victim.as_os_str(),
            OsStr::new("--store"),
            store.as_os_str(),
            OsStr::new("--json"),
        ]);
        if code == 0 && !json_lines(&out).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "nothing captured within 120 s");
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{:?}", out.status);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("watching"),
        "log_level = \"error\" still wrote info lines:\n{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
