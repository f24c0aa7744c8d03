//! What ships (issue 13): the systemd unit `packaging/ctrwatch.service` passes
//! `systemd-analyze verify`, says what the daemon needs (notify, watchdog, restarts), and its
//! capability bounding set is enough: the real daemon, started with exactly those capabilities
//! and no new privileges, captures, attributes a process started before it and gives its
//! store to a readers' group. Needs root.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{ctrwatch, ctrwatch_bin, json_lines, process, require_root, s, temp_dir};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// `[Section] Key=Value` lines of a unit file, in order (comments and blank lines skipped).
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a Key=Value line in the unit: {line:?}"));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

fn unit_value(entries: &[(String, String, String)], section: &str, key: &str) -> String {
    entries
        .iter()
        .rev()
        .find(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.clone())
        .unwrap_or_else(|| panic!("the unit has no {key}= in [{section}]"))
}

fn unit_text() -> String {
    std::fs::read_to_string(repo_file("packaging/ctrwatch.service"))
        .expect("packaging/ctrwatch.service")
}

/// `systemd-analyze verify` on the unit. It checks that ExecStart's binary exists, so the test
/// verifies a copy whose ExecStart names the binary under test instead of /usr/bin/ctrwatch
/// (the package test verifies the installed unit as it is); man pages are not installed here
/// (`--man=no`; the package test checks them).
#[test]
fn unit_passes_systemd_analyze_verify() {
    let text = unit_text();
    let entries = unit_entries(&text);
    for (key, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "always"),
        ("ExecStart", "/usr/bin/ctrwatch run"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("LimitMEMLOCK", "infinity"),
    ] {
        assert_eq!(unit_value(&entries, "Service", key), want, "{key}=");
    }
    for key in [
        "WatchdogSec",
        "RestartSec",
        "TimeoutStartSec",
        "TimeoutStopSec",
        "CapabilityBoundingSet",
    ] {
        assert!(!unit_value(&entries, "Service", key).is_empty(), "{key}=");
    }
    let before = unit_value(&entries, "Unit", "Before");
    assert!(before.contains("containerd.service") && before.contains("k3s.service"));
    assert_eq!(
        unit_value(&entries, "Install", "WantedBy"),
        "multi-user.target"
    );

    let dir = temp_dir("unit-verify");
    let copy = dir.join("ctrwatch.service");
    let bin = ctrwatch_bin();
    let replaced = text.replace(
        "ExecStart=/usr/bin/ctrwatch run",
        &format!("ExecStart={} run", bin.display()),
    );
    assert_ne!(replaced, text, "ExecStart was not replaced");
    std::fs::write(&copy, replaced).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze (systemd) is installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed ({}):\n{stdout}{stderr}",
        out.status
    );
    // Unknown keys and bad values are warnings, not failures: none may mention the unit.
    let complaints: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.contains("ctrwatch.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify: {complaints:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The capability names of `CapabilityBoundingSet=`, for setpriv (`bpf`, `sys_admin`...).
fn unit_capabilities() -> Vec<String> {
    let entries = unit_entries(&unit_text());
    unit_value(&entries, "Service", "CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("not a capability name: {c:?}"))
                .to_ascii_lowercase()
        })
        .collect()
}

/// The daemon with exactly the unit's capabilities (bounding set, no new privileges): it
/// attaches, stores what a process started before it did, with that process's executable (read
/// from /proc: CAP_SYS_PTRACE), and gives the store to its readers' group (CAP_CHOWN).
#[test]
fn daemon_runs_with_only_the_units_capabilities() {
    require_root();
    let caps = unit_capabilities();
    let bounding = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let base = temp_dir("unit-caps");
    let root = base.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let store = base.join("store/events.db");
    let target = root.join("written-by-an-older-process");

    // Started before the daemon (so known only from /proc), as root with every capability:
    // writes when told to on stdin.
    let mut older = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("read go; echo x > '{}'", target.display()))
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh");

    let mut daemon = Command::new("setpriv")
        .arg("--bounding-set")
        .arg(&bounding)
        .args(["--inh-caps", "-all", "--no-new-privs", "--"])
        .arg(ctrwatch_bin())
        .args(["run", "--store-group", "4242", "--root"])
        .arg(&root)
        .arg("--store")
        .arg(&store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    let stderr = Arc::new(Mutex::new(String::new()));
    let reader = {
        let stderr = Arc::clone(&stderr);
        let pipe = daemon.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                stderr.lock().unwrap().push_str(&(line + "\n"));
            }
        })
    };
    let text = || stderr.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !text().contains("ctrwatch: watching") {
        if let Ok(Some(status)) = daemon.try_wait() {
            let _ = older.kill();
            panic!("ctrwatch with only {caps:?} exited ({status}):\n{}", text());
        }
        assert!(
            Instant::now() < deadline,
            "not watching after 120 s:\n{}",
            text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its status shows the bounding set really is the unit's.
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.id())).unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(
        bnd.count_ones() as usize,
        caps.len(),
        "CapBnd {bnd:#x} for {caps:?}"
    );

    older.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(older.wait().unwrap().success());
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    let _ = reader.join();
    assert!(
        status.success(),
        "ctrwatch exited with {status}:\n{}",
        text()
    );

    let (code, out, err) = ctrwatch(&[
        OsStr::new("query"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ]);
    assert_eq!(code, 0, "query: {err}");
    let want = target.to_string_lossy();
    let records = json_lines(&out);
    let created: &Value = records
        .iter()
        .find(|v| s(v, "path") == want && s(v, "op") == "create")
        .unwrap_or_else(|| panic!("the write of the older process was not stored:\n{out}"));
    assert_eq!(
        process(created, "exe").as_str(),
        Some("/usr/bin/dash"),
        "the exe of a process that ran before the daemon (from /proc): {created}"
    );
    let gid = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(&store).unwrap());
    assert_eq!(gid, 4242, "the store was given to its readers' group");
    let _ = std::fs::remove_dir_all(&base);
}

/// `ctrwatch generate man DIR` writes ctrwatch(1) and a page per subcommand, from the CLI
/// definition (the package installs them); `generate completions SHELL` prints scripts that
/// know the subcommands and flags. `generate` itself is hidden: in neither.
#[test]
fn man_pages_and_completions_come_from_the_cli() {
    let dir = temp_dir("man");
    let (code, _, err) = ctrwatch(&[OsStr::new("generate"), OsStr::new("man"), dir.as_os_str()]);
    assert_eq!(code, 0, "generate man: {err}");
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for want in [
        "ctrwatch.1",
        "ctrwatch-run.1",
        "ctrwatch-watch.1",
        "ctrwatch-who-deleted.1",
        "ctrwatch-audit.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "no {want} in {pages:?}");
    }
    assert!(
        !pages
            .iter()
            .any(|p| p.contains("generate") || p.contains("help")),
        "hidden commands have no page: {pages:?}"
    );
    let run = std::fs::read_to_string(dir.join("ctrwatch-run.1")).unwrap();
    assert!(
        run.starts_with(".ie") || run.contains(".TH"),
        "not roff: {run:.200}"
    );
    assert!(
        run.contains("store\\-lock\\-wait"),
        "the page shows run's flags"
    );

    let (code, help, _) = ctrwatch(&[OsStr::new("--help")]);
    assert_eq!(code, 0);
    assert!(
        !help.contains("generate"),
        "generate is hidden from --help:\n{help}"
    );

    for shell in ["bash", "zsh", "fish"] {
        let (code, script, err) = ctrwatch(&[
            OsStr::new("generate"),
            OsStr::new("completions"),
            OsStr::new(shell),
        ]);
        assert_eq!(code, 0, "completions {shell}: {err}");
        for word in ["who-deleted", "retention-days", "ring-buffer-mb"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let (code, bash, _) = ctrwatch(&[
        OsStr::new("generate"),
        OsStr::new("completions"),
        OsStr::new("bash"),
    ]);
    assert_eq!(code, 0);
    let script = dir.join("ctrwatch.bash");
    std::fs::write(&script, bash).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let (code, _, err) = ctrwatch(&[
        OsStr::new("generate"),
        OsStr::new("completions"),
        OsStr::new("tcsh"),
    ]);
    assert_eq!(code, 2, "an unknown shell is a usage error: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}
