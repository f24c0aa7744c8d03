//! What ships (issue 13): the systemd unit `packaging/ctrwatch.service` passes
//! `systemd-analyze verify`, says what the daemon needs (notify, watchdog, restarts), and its
//! capability bounding set is enough: the real daemon, started with exactly those capabilities
//! and no new privileges, captures, attributes a process started before it and gives its
//! store to a readers' group. Needs root.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::OsStr,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
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
        (
            "ExecStart",
            "/usr/bin/ctrwatch run --pin-dir /sys/fs/bpf/ctrwatch",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        // An explicit stop removes the pins, a restart keeps them (docs/operations.md).
        (
            "ExecStopPost",
            "-/usr/bin/ctrwatch unpin --pin-dir /sys/fs/bpf/ctrwatch --if-stopping ctrwatch.service",
        ),
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
    let replaced = text
        .replace("=/usr/bin/ctrwatch ", &format!("={} ", bin.display()))
        .replace("=-/usr/bin/ctrwatch ", &format!("=-{} ", bin.display()));
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
    let (stderr, reader) = tests::collect_stderr(&mut daemon);
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

/// The package under test: $CTRWATCH_DEB (set by `cargo xtask test`), else built here with
/// `cargo xtask deb` (a static release build: minutes the first time).
fn package_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CTRWATCH_DEB") {
        return PathBuf::from(p);
    }
    let workspace = repo_file("");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["run", "-q", "-p", "xtask", "--", "deb"])
        .current_dir(&workspace)
        .status()
        .expect("cargo xtask deb");
    assert!(status.success(), "cargo xtask deb failed ({status})");
    let (code, version, _) = ctrwatch(&[OsStr::new("--version")]);
    assert_eq!(code, 0);
    let version = version
        .split_whitespace()
        .nth(1)
        .expect("version")
        .to_string();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    target.join(format!("debian/ctrwatch_{version}_amd64.deb"))
}

/// Runs a command to completion: (success, stdout + stderr).
fn sh(program: &str, args: &[&OsStr]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// dpkg, waiting for its lock if another installation is under way.
fn dpkg(args: &[&OsStr]) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (ok, text) = sh("dpkg", args);
        if ok {
            return text;
        }
        let locked = text.contains("lock");
        assert!(
            locked && Instant::now() < deadline,
            "dpkg {args:?} failed:\n{text}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn installed() -> bool {
    let (ok, status) = sh(
        "dpkg-query",
        &[
            OsStr::new("-W"),
            OsStr::new("-f=${Status}"),
            OsStr::new("ctrwatch"),
        ],
    );
    ok && status.ends_with(" installed")
}

/// What the package touches outside its own files, to compare before and after.
fn system_state() -> Vec<String> {
    let mut state = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let link = std::fs::read_link(&p).ok();
            out.push(format!("{} -> {:?}", p.display(), link));
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&p, out);
            }
        }
    }
    for dir in [
        "/etc/systemd/system",
        "/var/lib/systemd/deb-systemd-helper-enabled",
        "/var/lib/systemd/deb-systemd-helper-masked",
        "/etc/ctrwatch",
        "/var/lib/ctrwatch",
    ] {
        state.push(format!("{dir}: {}", Path::new(dir).exists()));
        walk(Path::new(dir), &mut state);
    }
    state.sort();
    state
}

/// Puts things back if the test fails half-way: purges the package, restores a store
/// directory that was moved aside.
struct Restore {
    saved_store: Option<PathBuf>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if installed() || sh("dpkg-query", &[OsStr::new("-W"), OsStr::new("ctrwatch")]).0 {
            let _ = sh("dpkg", &[OsStr::new("-P"), OsStr::new("ctrwatch")]);
        }
        if let Some(saved) = self.saved_store.take() {
            let _ = std::fs::remove_dir_all("/var/lib/ctrwatch");
            let _ = std::fs::rename(saved, "/var/lib/ctrwatch");
        }
    }
}

fn mode(p: &str) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{p}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

/// The .deb on this machine (systemd installed, not PID 1): `dpkg -i` installs the static
/// binary, the unit (which verifies as installed, man pages included), the conffile, man
/// pages and completions, and enables the service without starting it; the installed binary
/// runs (`--version`, `probe`, a short `run` into the default store); a reinstall keeps a
/// changed conffile; `dpkg -r` removes the files but keeps the configuration and the history;
/// `dpkg -P` deletes them and leaves the machine as it was.
#[test]
fn deb_installs_removes_and_purges() {
    require_root();
    assert!(
        !installed(),
        "ctrwatch is installed on this machine already: this test installs and purges the \
         package and would remove it; remove it first (dpkg -P ctrwatch)"
    );
    let deb = package_path();
    assert!(deb.exists(), "no package at {}", deb.display());
    let before_state = system_state();
    let saved_store = Path::new("/var/lib/ctrwatch").exists().then(|| {
        let saved = PathBuf::from(format!("/var/lib/ctrwatch.pkgtest-{}", std::process::id()));
        std::fs::rename("/var/lib/ctrwatch", &saved).expect("move the store aside");
        saved
    });
    let restore = Restore { saved_store };
    let before_state = if restore.saved_store.is_some() {
        system_state()
    } else {
        before_state
    };

    // What is in it.
    let (ok, contents) = sh("dpkg-deb", &[OsStr::new("--contents"), deb.as_os_str()]);
    assert!(ok, "{contents}");
    for want in [
        "./usr/bin/ctrwatch",
        "./lib/systemd/system/ctrwatch.service",
        "./etc/ctrwatch/ctrwatch.toml",
        "./usr/share/man/man1/ctrwatch.1.gz",
        "./usr/share/man/man1/ctrwatch-run.1.gz",
        "./usr/share/bash-completion/completions/ctrwatch",
        "./usr/share/zsh/vendor-completions/_ctrwatch",
        "./usr/share/fish/vendor_completions.d/ctrwatch.fish",
        "./usr/share/doc/ctrwatch/copyright",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(want)),
            "{want} not in the package:\n{contents}"
        );
    }
    let (ok, conffiles) = sh(
        "dpkg-deb",
        &[
            OsStr::new("--info"),
            deb.as_os_str(),
            OsStr::new("conffiles"),
        ],
    );
    assert!(
        ok && conffiles.trim() == "/etc/ctrwatch/ctrwatch.toml",
        "conffiles:\n{conffiles}"
    );

    // Lintian, where it is installed (`cargo xtask setup` does not install it: 60 Perl
    // packages for one check). Errors and warnings fail; the package ships its overrides.
    if Command::new("lintian").arg("--version").output().is_ok() {
        let (ok, report) = sh(
            "lintian",
            &[OsStr::new("--fail-on=error,warning"), deb.as_os_str()],
        );
        let findings: Vec<&str> = report
            .lines()
            .filter(|l| !l.contains("running with root privileges"))
            .collect();
        assert!(
            ok && findings.is_empty(),
            "lintian:\n{}",
            findings.join("\n")
        );
    } else {
        eprintln!("lintian is not installed: the package is not linted");
    }

    // Install.
    dpkg(&[OsStr::new("-i"), deb.as_os_str()]);
    assert!(installed());
    for f in [
        "/usr/bin/ctrwatch",
        "/lib/systemd/system/ctrwatch.service",
        "/usr/share/man/man1/ctrwatch-who-deleted.1.gz",
        "/usr/share/bash-completion/completions/ctrwatch",
    ] {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    assert_eq!(
        mode("/etc/ctrwatch/ctrwatch.toml"),
        0o600,
        "the conffile may hold secrets"
    );
    assert_eq!(
        std::fs::read("/etc/ctrwatch/ctrwatch.toml").unwrap(),
        std::fs::read(repo_file("packaging/ctrwatch.toml")).unwrap(),
        "the conffile is the repository's example"
    );
    assert_eq!(mode("/var/lib/ctrwatch"), 0o700, "the store's directory");
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/ctrwatch.service").exists(),
        "the service is enabled"
    );
    // Static: no interpreter, no shared libraries.
    let (_, file) = sh("file", &[OsStr::new("-L"), OsStr::new("/usr/bin/ctrwatch")]);
    assert!(
        file.contains("statically linked") || file.contains("static-pie"),
        "{file}"
    );
    let (_, ldd) = sh("ldd", &[OsStr::new("/usr/bin/ctrwatch")]);
    assert!(
        ldd.contains("not a dynamic executable") || ldd.contains("statically linked"),
        "ldd: {ldd}"
    );
    let (ok, version) = sh("/usr/bin/ctrwatch", &[OsStr::new("--version")]);
    assert!(ok && version.starts_with("ctrwatch "), "{version}");
    let (ok, probe) = sh("/usr/bin/ctrwatch", &[OsStr::new("probe")]);
    assert!(ok && probe.contains("backend: "), "probe:\n{probe}");
    // The installed unit verifies as it is: its binary and its man pages exist now.
    let (ok, verify) = sh(
        "systemd-analyze",
        &[
            OsStr::new("verify"),
            OsStr::new("/lib/systemd/system/ctrwatch.service"),
        ],
    );
    assert!(
        ok && !verify.contains("ctrwatch.service"),
        "verify:\n{verify}"
    );

    // The installed daemon runs and records into the default store.
    let root = temp_dir("deb-root");
    let mut daemon = Command::new("/usr/bin/ctrwatch")
        .arg("run")
        .arg("--root")
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("installed ctrwatch run");
    let (stderr, reader) = tests::collect_stderr(&mut daemon);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stderr.lock().unwrap().contains("ctrwatch: watching") {
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!(
                "installed ctrwatch run exited ({status}):\n{}",
                stderr.lock().unwrap()
            );
        }
        assert!(
            Instant::now() < deadline,
            "not watching:\n{}",
            stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let made = root.join("made-under-the-package");
    std::fs::write(&made, b"x").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(
        daemon.wait().unwrap().success(),
        "{}",
        stderr.lock().unwrap()
    );
    let _ = reader.join();
    let (ok, out) = sh(
        "/usr/bin/ctrwatch",
        &[OsStr::new("query"), OsStr::new("--json")],
    );
    assert!(ok, "query of the default store: {out}");
    assert!(
        out.contains(&*made.to_string_lossy()),
        "the default store /var/lib/ctrwatch/events.db lacks the write:\n{out}"
    );
    let _ = std::fs::remove_dir_all(&root);

    // A changed conffile survives a reinstall (what an upgrade does).
    let mut conf = std::fs::read_to_string("/etc/ctrwatch/ctrwatch.toml").unwrap();
    conf.push_str("\n# changed by the operator\n");
    std::fs::write("/etc/ctrwatch/ctrwatch.toml", &conf).unwrap();
    dpkg(&[OsStr::new("-i"), deb.as_os_str()]);
    assert_eq!(
        std::fs::read_to_string("/etc/ctrwatch/ctrwatch.toml").unwrap(),
        conf,
        "dpkg replaced a changed conffile"
    );

    // Remove: the program goes, the configuration and the history stay.
    dpkg(&[OsStr::new("-r"), OsStr::new("ctrwatch")]);
    assert!(!Path::new("/usr/bin/ctrwatch").exists());
    assert!(!Path::new("/lib/systemd/system/ctrwatch.service").exists());
    assert!(Path::new("/etc/ctrwatch/ctrwatch.toml").exists());
    assert!(Path::new("/var/lib/ctrwatch/events.db").exists());

    // Purge: everything goes.
    dpkg(&[OsStr::new("-P"), OsStr::new("ctrwatch")]);
    assert!(!Path::new("/etc/ctrwatch").exists());
    assert!(
        !Path::new("/var/lib/ctrwatch").exists(),
        "purge deletes the history"
    );
    assert!(!sh("dpkg-query", &[OsStr::new("-W"), OsStr::new("ctrwatch")]).0);
    drop(restore);
    assert_eq!(
        system_state(),
        before_state,
        "the machine is not as it was before the package was installed"
    );
}
