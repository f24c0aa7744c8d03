//! Who containerd discovery trusts, on the real node (issue 10, item 2), and how paths from
//! discovery and arguments are printed:
//! - a process of an unprivileged user dressed up as containerd (`exec -a containerd`, run as
//!   uid 1001 with `setpriv`) adds no root: `ctrwatch roots` lists it as refused with the
//!   reason, `watch` without `--root` watches neither `/` (its `--state /`) nor its fake root,
//!   and `audit` without `--root` neither audits that root nor hangs on the FIFO `meta.db` in
//!   it;
//! - a config file owned by a non-root user (or writable by others) is refused, so the root it
//!   names is not used;
//! - a real root-owned containerd (the harness's) is still discovered;
//! - a root whose name holds a newline, an escape sequence and invalid UTF-8 is printed escaped
//!   in the "watching" line and in error messages.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::{OsStr, OsString},
    io::Read,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tests::{
    Watcher,
    bounded::{contains_bytes, ctrwatch_bounded},
    containerd::Containerd,
    require_root, temp_dir,
};

/// The unprivileged user the fake containerd runs as (no passwd entry needed).
const USER: u32 = 1001;
/// Longest a `roots` or `audit` run may take before the test calls it a hang.
const LIMIT: Duration = Duration::from_secs(60);

/// A process group killed on drop.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created (its leader is our child).
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Starts, as uid 1001, `exec -a containerd bash -c 'sleep 120; true' x --root ROOT --state /`
/// (as the issue did; `; true` keeps bash from replacing itself with `sleep`) and waits until
/// its command line says `containerd`.
fn fake_containerd(root: &Path) -> Group {
    let script = format!(
        "exec -a containerd bash -c 'sleep 120; true' x --root '{}' --state /",
        root.display()
    );
    let child = Command::new("setpriv")
        .args([
            &format!("--reuid={USER}"),
            &format!("--regid={USER}"),
            "--clear-groups",
            "bash",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("setpriv");
    let g = Group(child);
    let pid = g.0.id();
    // (60 s: setpriv and bash start in milliseconds, but not on a loaded machine.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.starts_with(b"containerd\0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fake containerd did not start: {cmdline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    g
}

/// The directories of the "watching ..." line (after the last "): ").
fn watched_from_line(stderr: &str) -> Vec<String> {
    let line = stderr
        .lines()
        .find(|l| l.contains("ctrwatch: watching"))
        .unwrap_or_else(|| panic!("no watching line in:\n{stderr}"));
    let list = line.rsplit_once("): ").map(|(_, l)| l).unwrap_or("");
    list.split(", ").map(str::to_owned).collect()
}

/// The lines of `ctrwatch roots` naming `dir` as an instance root or a watched directory
/// (indented by two spaces, or not at all), as opposed to a refusal.
fn roots_watching(listing: &str, dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy();
    listing
        .lines()
        .filter(|l| {
            let t = l.trim_end();
            t == d
                || t.starts_with(&format!("{d}  "))
                || t == format!("  {d}")
                || t == "  /"
                || t == "/"
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn fake_containerd_of_an_unprivileged_user_adds_no_root() {
    require_root();
    let dir = temp_dir("fake-ctrd");
    let fake_root = dir.join("fake-root");
    let bolt_dir = fake_root.join("io.containerd.metadata.v1.bolt");
    std::fs::create_dir_all(&bolt_dir).unwrap();
    let fifo = bolt_dir.join("meta.db");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    let status = Command::new("chown")
        .args(["-R", &format!("{USER}:{USER}")])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let fake = fake_containerd(&fake_root);
    let pid = fake.0.id();

    // `roots`: the fake root and `/` are not instances nor watched; the refusal is listed.
    let r = ctrwatch_bounded(&[OsStr::new("roots")], LIMIT);
    assert!(!r.timed_out, "ctrwatch roots hung");
    let listing = r.stdout_text();
    let wrong = roots_watching(&listing, &fake_root);
    assert!(
        wrong.is_empty(),
        "the fake containerd's root (or /) is listed as watched: {wrong:?}\n{listing}"
    );
    let refused: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains(&format!("process {pid}")))
        .collect();
    assert!(
        refused
            .iter()
            .any(|l| l.contains("refused") && l.contains(&format!("uid {USER}"))),
        "the fake containerd (pid {pid}) is not listed as refused with its uid:\n{listing}"
    );

    // `watch` with no --root (what the service runs) watches neither `/` nor the fake root.
    let w = Watcher::start(&[], &[]);
    let watched = watched_from_line(&w.stderr());
    let stderr = w.stderr();
    w.stop();
    let fake_s = fake_root.to_string_lossy().into_owned();
    assert!(
        !watched.iter().any(|d| d == "/" || *d == fake_s),
        "watch with no --root watches / or the fake root: {watched:?}"
    );
    assert!(
        stderr.contains(&format!("process {pid}")) && stderr.contains(&format!("uid {USER}")),
        "the refusal is not logged:\n{stderr}"
    );

    // `audit` with no --root: does not audit the fake root, and does not hang on its FIFO.
    let a = ctrwatch_bounded(&[OsStr::new("audit"), OsStr::new("--no-progress")], LIMIT);
    assert!(
        !a.timed_out,
        "ctrwatch audit hung (the FIFO meta.db of the fake root?); stderr:\n{}",
        a.stderr_text()
    );
    let all = format!("{}{}", a.stdout_text(), a.stderr_text());
    let looked: Vec<&str> = all
        .lines()
        .filter(|l| l.contains(&fake_s) && !l.contains("refused"))
        .collect();
    assert!(
        looked.is_empty(),
        "audit looked at the fake root: {looked:?}\n{all}"
    );
    drop(fake);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ctrwatch roots` output.
fn roots_listing() -> String {
    let r = ctrwatch_bounded(&[OsStr::new("roots")], LIMIT);
    assert!(!r.timed_out, "ctrwatch roots hung");
    assert_eq!(
        r.code,
        Some(0),
        "ctrwatch roots failed:\n{}",
        r.stderr_text()
    );
    r.stdout_text()
}

fn instance_listed(listing: &str, root: &Path) -> bool {
    let r = root.to_string_lossy();
    listing
        .lines()
        .any(|l| l == r || l.starts_with(&format!("{r}  ")))
}

#[test]
fn real_containerd_is_discovered_and_untrusted_config_is_refused() {
    require_root();
    let cd = Containerd::start().expect("containerd");
    let root = std::fs::canonicalize(cd.root()).unwrap();
    let config = cd.config_path();

    // No regression: the harness's containerd (root, /usr/bin/containerd) and its config.
    let listing = roots_listing();
    assert!(
        instance_listed(&listing, &root),
        "the harness's containerd root {} is not discovered:\n{listing}",
        root.display()
    );
    assert!(
        listing.contains(&format!("containerd:   pid {}", cd.pid())),
        "its process is not named:\n{listing}"
    );

    // Its config file owned by another user: refused, so the root it names is not used.
    let chown = |spec: &str| {
        let ok = Command::new("chown")
            .arg(spec)
            .arg(&config)
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown {spec}");
    };
    chown(&format!("{USER}:{USER}"));
    let listing = roots_listing();
    chown("0:0");
    assert!(
        !instance_listed(&listing, &root),
        "a root from a config owned by uid {USER} is used:\n{listing}"
    );
    let c = config.to_string_lossy();
    assert!(
        listing.lines().any(|l| l.contains("refused")
            && l.contains(&*c)
            && l.contains(&format!("uid {USER}"))),
        "the config is not listed as refused with its owner:\n{listing}"
    );

    // Root-owned but writable by others: refused too.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let listing = roots_listing();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        !instance_listed(&listing, &root),
        "a root from a world-writable config is used:\n{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.contains("refused") && l.contains(&*c) && l.contains("writable")),
        "the world-writable config is not listed as refused:\n{listing}"
    );

    // Trusted again once fixed.
    let listing = roots_listing();
    assert!(instance_listed(&listing, &root), "{listing}");
    cd.stop().expect("stopping containerd");
}

/// A directory name with a newline, an escape sequence and a byte that is not UTF-8.
fn hostile_name(base: &Path) -> PathBuf {
    let mut name = b"root\nFAKE LINE \x1b[31mred\xff".to_vec();
    name.splice(0..0, b"/".iter().copied());
    let mut p = base.as_os_str().as_bytes().to_vec();
    p.extend_from_slice(&name);
    PathBuf::from(OsString::from(std::ffi::OsStr::from_bytes(&p)))
}

/// How `ctrwatch_event::escape_bytes` shows that name.
const ESCAPED: &str = "root\\x0aFAKE LINE \\x1b[31mred\\xff";

fn assert_clean_bytes(what: &str, bytes: &[u8]) {
    assert!(
        !bytes.contains(&0x1b) && !contains_bytes(bytes, b"\xff"),
        "{what} has raw control or invalid bytes: {:?}",
        String::from_utf8_lossy(bytes)
    );
}

#[test]
fn hostile_root_names_are_printed_escaped() {
    require_root();
    let base = temp_dir("escape");
    let root = hostile_name(&base);
    std::fs::create_dir_all(&root).unwrap();

    // The "watching ..." line.
    let mut child = Command::new(tests::ctrwatch_bin())
        .arg("watch")
        .arg("--root")
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match err.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
            if contains_bytes(&all, b"ctrwatch: watching")
                && all[all.len() - 1] == b'\n'
                && all
                    .split(|&b| b == b'\n')
                    .any(|l| contains_bytes(l, b"ctrwatch: watching"))
            {
                break;
            }
        }
        all
    });
    let stderr = reader.join().unwrap();
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let line = stderr
        .split(|&b| b == b'\n')
        .find(|l| contains_bytes(l, b"ctrwatch: watching"))
        .unwrap_or_else(|| panic!("no watching line: {:?}", String::from_utf8_lossy(&stderr)));
    assert!(
        contains_bytes(line, ESCAPED.as_bytes()),
        "the watching line does not show the root escaped: {:?}",
        String::from_utf8_lossy(line)
    );
    assert_clean_bytes("watch's stderr", &stderr);

    // Errors: auditing it (no metadata here), and a missing root with such a name.
    for (r, what) in [
        (root.clone(), "no metadata"),
        (hostile_name(&root), "not a directory"),
    ] {
        let a = ctrwatch_bounded(
            &[
                OsStr::new("audit"),
                OsStr::new("--no-progress"),
                OsStr::new("--root"),
                r.as_os_str(),
            ],
            LIMIT,
        );
        assert_eq!(a.code, Some(2), "{}", a.stderr_text());
        let all = a.stderr_text();
        let errors: Vec<&str> = all
            .lines()
            .filter(|l| l.starts_with("ctrwatch: error"))
            .collect();
        assert!(
            errors.len() == 1 && errors[0].contains(ESCAPED) && errors[0].contains(what),
            "the error is not one line showing the root escaped: {all:?}"
        );
        assert!(
            !all.lines().any(|l| l.starts_with("FAKE LINE")),
            "a forged line: {all:?}"
        );
        assert_clean_bytes("audit's stderr", &a.stderr);
    }
    let _ = std::fs::remove_dir_all(&base);
}
