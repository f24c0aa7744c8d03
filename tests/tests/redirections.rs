//! Shell redirections are credited to the right file (issue 10, item 10).
//!
//! For `echo aaaa > X` bash opens X, saves fd 1, `dup2`s X's fd over 1, writes, and `dup2`s
//! the saved fd back: X's open file is dropped without a close syscall, and the next open
//! usually gets the same recycled `struct file`. Each file must still get its own `modify`
//! with its own bytes, attributed to bash. Needs root (loads eBPF).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use serde_json::Value;
use tests::{Watcher, process, s, start_shared, temp_dir};

const FSOP: &str = env!("CARGO_BIN_EXE_fsop");

struct Shared {
    watcher: Watcher,
    root: PathBuf,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let root = temp_dir("redirections");
        tests::remove_at_exit(&root);
        let watcher = start_shared(vec![root.clone()], Vec::new());
        Shared { watcher, root }
    })
}

fn test_dir(name: &str) -> PathBuf {
    let d = shared().root.join(name);
    std::fs::create_dir_all(&d).expect("mkdir test dir");
    d
}

/// Runs `bash -c SCRIPT` in `dir`; returns bash's pid.
fn bash(dir: &Path, script: &str) -> u32 {
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .spawn()
        .expect("bash");
    let pid = child.id();
    let status = child.wait().expect("wait bash");
    assert!(status.success(), "bash -c {script:?}: {status}");
    pid
}

/// A marker operation by a fresh process: once its record is here, every record of the
/// operations before it is too (one process's records arrive in order, and the aggregates of
/// an exited process are collected when its exit record arrives, before the marker's).
fn sync(dir: &Path) {
    let marker = dir.join(format!(
        "sync-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let mut child = Command::new(FSOP)
        .args([OsStr::new("create"), marker.as_os_str()])
        .spawn()
        .expect("fsop");
    let pid = child.id();
    assert!(child.wait().expect("wait").success());
    let want = marker.to_str().unwrap_or("").to_string();
    shared().watcher.wait_for("the sync marker", |v| {
        s(v, "op") == "create"
            && s(v, "path") == want
            && process(v, "pid").as_u64() == Some(pid as u64)
    });
}

/// Every `modify` record of `pid`, as (path, bytes, writes, notes).
fn modifies(pid: u32) -> Vec<(String, u64, u64, Vec<String>)> {
    shared()
        .watcher
        .records()
        .iter()
        .filter(|v| s(v, "op") == "modify" && process(v, "pid").as_u64() == Some(pid as u64))
        .map(|v| {
            (
                s(v, "path").to_string(),
                v["bytes"].as_u64().unwrap_or(0),
                v["writes"].as_u64().unwrap_or(0),
                v.get("notes")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|n| n.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap_or("").to_string()
}

/// The `modify` records of `pid` on `name`, as (bytes, writes), in order.
fn on(all: &[(String, u64, u64, Vec<String>)], dir: &Path, name: &str) -> Vec<(u64, u64)> {
    let p = path(dir, name);
    all.iter()
        .filter(|m| m.0 == p)
        .map(|m| (m.1, m.2))
        .collect()
}

#[test]
fn each_redirected_echo_is_its_own_modify_of_its_own_file() {
    let d = test_dir("echo");
    let pid = bash(&d, "echo aaaa > X; echo bb > Y; echo c > Z");
    sync(&d);
    let all = modifies(pid);
    assert_eq!(on(&all, &d, "X"), [(5, 1)], "{all:?}");
    assert_eq!(on(&all, &d, "Y"), [(3, 1)], "{all:?}");
    assert_eq!(on(&all, &d, "Z"), [(2, 1)], "{all:?}");
    assert_eq!(all.len(), 3, "nothing else: {all:?}");
    for m in &all {
        // Reported when bash restored fd 1 (dup2 closes what fd 1 was), not at its exit.
        assert!(!m.3.iter().any(|n| n == "not_closed"), "{all:?}");
    }
    let v = shared().watcher.wait_for("X's modify", |v| {
        s(v, "op") == "modify" && s(v, "path") == path(&d, "X")
    });
    assert_eq!(process(&v, "comm").as_str(), Some("bash"), "{v}");
    assert!(
        process(&v, "exe")
            .as_str()
            .is_some_and(|e| e.ends_with("/bash")),
        "{v}"
    );
}

#[test]
fn appends_groups_and_exec_fds_are_credited_to_their_files() {
    let d = test_dir("variants");
    // `>>` reopens A: two redirections, two modifies of A; B in between gets its own.
    let pid = bash(&d, "echo a > A; echo bbb >> B; echo cc >> A");
    sync(&d);
    let all = modifies(pid);
    assert_eq!(on(&all, &d, "A"), [(2, 1), (3, 1)], "{all:?}");
    assert_eq!(on(&all, &d, "B"), [(4, 1)], "{all:?}");
    assert_eq!(all.len(), 3, "{all:?}");

    // A group's redirection is one open: one modify with both writes.
    let pid = bash(&d, "{ echo a; echo bb; } > G; echo c > H");
    sync(&d);
    let all = modifies(pid);
    assert_eq!(on(&all, &d, "G"), [(5, 2)], "{all:?}");
    assert_eq!(on(&all, &d, "H"), [(2, 1)], "{all:?}");
    assert_eq!(all.len(), 2, "{all:?}");

    // `exec 3>E`: writes through fd 3 (bash dup2s it onto fd 1 for each echo), with another
    // file opened in between; E gets exactly its 6 bytes, Y2 its 3.
    let pid = bash(
        &d,
        "exec 3>E; echo a >&3; echo bb > Y2; echo ccc >&3; exec 3>&-",
    );
    sync(&d);
    let all = modifies(pid);
    let e: u64 = on(&all, &d, "E").iter().map(|m| m.0).sum();
    assert_eq!(e, 6, "{all:?}");
    assert_eq!(on(&all, &d, "Y2"), [(3, 1)], "{all:?}");
    assert!(
        all.iter()
            .all(|m| m.0 == path(&d, "E") || m.0 == path(&d, "Y2")),
        "{all:?}"
    );
}

/// close_range drops an fd without a close syscall; the next open gets the same fd number
/// and, usually, the same recycled `struct file`, for another inode.
#[test]
fn a_recycled_struct_file_for_another_inode_starts_a_new_aggregate() {
    let d = test_dir("recycle");
    for i in 0..5 {
        let (a, b) = (d.join(format!("a{i}")), d.join(format!("b{i}")));
        std::fs::write(&a, b"").expect("create a");
        std::fs::write(&b, b"").expect("create b");
        let mut child = Command::new(FSOP)
            .args([
                OsStr::new("recycle-fd"),
                a.as_os_str(),
                OsStr::new("5"),
                b.as_os_str(),
                OsStr::new("3"),
            ])
            .spawn()
            .expect("fsop");
        let pid = child.id();
        assert!(child.wait().expect("wait").success());
        sync(&d);
        let all = modifies(pid);
        assert_eq!(on(&all, &d, &format!("a{i}")), [(5, 1)], "{all:?}");
        assert_eq!(on(&all, &d, &format!("b{i}")), [(3, 1)], "{all:?}");
        assert_eq!(all.len(), 2, "{all:?}");
    }
}

/// Runs `SHELL -c SCRIPT` in `dir` with its stdout on `stdout` (None: inherited); returns its
/// pid.
fn shell_with_stdout(shell: &str, dir: &Path, script: &str, stdout: Option<&Path>) -> u32 {
    let mut command = Command::new(shell);
    command.arg("-c").arg(script).current_dir(dir);
    if let Some(path) = stdout {
        command.stdout(std::fs::File::create(path).expect("create the shell's stdout"));
    }
    let mut child = command.spawn().expect("shell");
    let pid = child.id();
    let status = child.wait().expect("wait for the shell");
    assert!(status.success(), "{shell} -c {script:?}: {status}");
    pid
}

/// Issue 14's pattern, `echo a > X; echo b > Y`, by bash and by dash (`sh`: it saves fd 1
/// with fcntl(F_DUPFD), closes fd 1, then dup2s the file over it), each redirection a modify
/// of its own file with its own bytes.
#[test]
fn the_issue_14_pattern_by_bash_and_dash_credits_each_file() {
    for shell in ["bash", "dash"] {
        if Command::new(shell).arg("-c").arg("true").status().is_err() {
            eprintln!("{shell} is not installed: left out");
            continue;
        }
        let d = test_dir(&format!("issue14-{shell}"));
        let pid = shell_with_stdout(shell, &d, "echo a > X; echo bbb > Y", None);
        sync(&d);
        let all = modifies(pid);
        assert_eq!(on(&all, &d, "X"), [(2, 1)], "{shell}: {all:?}");
        assert_eq!(on(&all, &d, "Y"), [(4, 1)], "{shell}: {all:?}");
        assert_eq!(all.len(), 2, "{shell}, nothing else: {all:?}");
        // Each ended when the shell restored fd 1 (dup2 closes what fd 1 was), not later.
        assert!(
            !all.iter().any(|m| m.3.iter().any(|n| n == "not_closed")),
            "{shell}: {all:?}"
        );
    }
}

/// The shell's own stdout is a watched file: it is written before, between and after the
/// redirections, and must keep its own bytes (saved with fcntl(F_DUPFD) and restored with
/// dup2 around each redirection), while X and Y get theirs.
#[test]
fn a_watched_stdout_keeps_its_writes_around_redirections() {
    for shell in ["bash", "dash"] {
        if Command::new(shell).arg("-c").arg("true").status().is_err() {
            eprintln!("{shell} is not installed: left out");
            continue;
        }
        let d = test_dir(&format!("stdout-{shell}"));
        let log = d.join("LOG");
        let pid = shell_with_stdout(
            shell,
            &d,
            "echo 1; echo a > X; echo 22; echo bbb > Y; echo 333",
            Some(&log),
        );
        sync(&d);
        let all = modifies(pid);
        assert_eq!(on(&all, &d, "X"), [(2, 1)], "{shell}: {all:?}");
        assert_eq!(on(&all, &d, "Y"), [(4, 1)], "{shell}: {all:?}");
        let (x, y) = (path(&d, "X"), path(&d, "Y"));
        assert!(
            !all.iter()
                .any(|m| (m.0 == x || m.0 == y) && m.3.iter().any(|n| n == "not_closed")),
            "{shell}: X and Y end when the shell restores fd 1: {all:?}"
        );
        // LOG: 2 + 3 + 4 bytes in 3 writes, however the shell's fd juggling splits them
        // into modifies (each redirection ends what fd 1 wrote before it).
        let log_mods = on(&all, &d, "LOG");
        let bytes: u64 = log_mods.iter().map(|m| m.0).sum();
        let writes: u64 = log_mods.iter().map(|m| m.1).sum();
        assert_eq!((bytes, writes), (9, 3), "{shell}: {all:?}");
        assert_eq!(
            std::fs::read_to_string(&log).expect("read LOG"),
            "1\n22\n333\n",
            "{shell}"
        );
        assert_eq!(
            all.len(),
            2 + log_mods.len(),
            "{shell}, nothing else: {all:?}"
        );
    }
}
