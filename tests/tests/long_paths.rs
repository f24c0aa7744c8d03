//! Paths longer than PATH_MAX are never recorded as another path (issue 10, item 9).
//!
//! A chain of directories with 250-character names under a watched root; a file in the deepest
//! one is created, written (open + write + close), renamed and unlinked, by processes that `cd`
//! down the chain and act with relative names, and by processes that act through a directory
//! fd. Every record of these operations must carry its own full path, or be marked truncated
//! (`notes` has `path_truncated`, the human line and the table say so) with a path that is not
//! the path of anything that exists: never directory 16, never a file name below one of the
//! existing ancestors. Through the daemon, exact-path questions about the ancestors do not
//! return these operations; a question that can match them does. Needs root (loads eBPF).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::{CString, OsStr, OsString},
    io::{BufRead, BufReader},
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{Watcher, ctrwatch, ctrwatch_bin, json_lines, process, s, temp_dir};

const FSOP: &str = env!("CARGO_BIN_EXE_fsop");
/// What ctrwatch writes where a path could not be built.
const MARKER: &str = "…";
/// What the human line and the table add after a truncated path.
const HUMAN_MARKER: &str = "(path truncated)";

/// A chain of directories below `top`; `dirs[k]` is the path of directory k + 1.
struct Chain {
    top: PathBuf,
    names: Vec<Vec<u8>>,
    dirs: Vec<PathBuf>,
}

impl Chain {
    /// `depth` directories with `name_len`-byte names (`d01xxx…`), created with mkdirat one
    /// level at a time (the full path is longer than any syscall accepts).
    fn create(top: &Path, depth: usize, name_len: usize) -> Chain {
        std::fs::create_dir_all(top).expect("mkdir chain top");
        let c = CString::new(top.as_os_str().as_bytes()).expect("path");
        // SAFETY: valid C string; plain syscalls on fds this function owns.
        let mut fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        assert!(fd >= 0, "open {}", top.display());
        let mut names = Vec::new();
        let mut dirs = Vec::new();
        let mut path = top.to_path_buf();
        for k in 1..=depth {
            let mut name = format!("d{k:02}").into_bytes();
            name.resize(name_len, b'x');
            let c = CString::new(name.clone()).expect("name");
            // SAFETY: as above.
            unsafe {
                assert_eq!(libc::mkdirat(fd, c.as_ptr(), 0o755), 0, "mkdir level {k}");
                let next = libc::openat(fd, c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                libc::close(fd);
                fd = next;
            }
            assert!(fd >= 0, "open level {k}");
            path.push(OsStr::from_bytes(&name));
            names.push(name);
            dirs.push(path.clone());
        }
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        Chain {
            top: top.to_path_buf(),
            names,
            dirs,
        }
    }

    fn deepest(&self) -> &Path {
        self.dirs.last().map_or(&self.top, PathBuf::as_path)
    }

    /// The top and every directory of the chain.
    fn all_dirs(&self) -> Vec<PathBuf> {
        let mut all = vec![self.top.clone()];
        all.extend(self.dirs.iter().cloned());
        all
    }

    fn len(&self) -> usize {
        self.deepest().as_os_str().len()
    }
}

/// Runs `fsop ARGS` from inside `dir` the way a script does it: a shell `cd`s down the chain
/// one component at a time, then runs the command with relative names (`exec`, so the pid is
/// the command's).
fn fsop_in_cwd(chain: &Chain, args: &[&str]) -> u32 {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#"cd "$1" || exit 9; shift; for d in "${@:2:$1}"; do cd "$d" || exit 9; done; shift "$(( $1 + 1 ))"; exec "$0" "$@""#)
        .arg(FSOP)
        .arg(&chain.top)
        .arg(chain.names.len().to_string());
    for n in &chain.names {
        cmd.arg(OsStr::from_bytes(n));
    }
    cmd.args(args);
    run(cmd)
}

/// Runs `fsop OP DIR ARGS` (an `at-*` operation: relative to a directory fd).
fn fsop_at(op: &str, dir: &Path, args: &[&str]) -> u32 {
    let mut cmd = Command::new(FSOP);
    cmd.arg(op).arg(dir).args(args);
    run(cmd)
}

fn run(mut cmd: Command) -> u32 {
    let mut child = cmd.spawn().expect("spawn");
    let pid = child.id();
    let status = child.wait().expect("wait");
    assert!(status.success(), "{cmd:?} exited with {status}");
    pid
}

/// `ctrwatch watch --root ROOT` with its readable lines collected (the harness's [`Watcher`]
/// reads JSON).
struct HumanWatcher {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl HumanWatcher {
    /// Starts it; call [`HumanWatcher::attached`] before relying on it. Started from the
    /// test's own thread: its parent-death signal fires when the starting thread ends.
    fn spawn(root: &Path) -> (HumanWatcher, std::sync::mpsc::Receiver<()>) {
        let mut cmd = Command::new(ctrwatch_bin());
        cmd.arg("watch")
            .arg("--root")
            .arg(root)
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
        let mut child = cmd.spawn().expect("start ctrwatch watch");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let l = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                l.lock().expect("lines").push(line);
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ctrwatch: watching") {
                    let _ = tx.send(());
                }
            }
        });
        (HumanWatcher { child, lines }, rx)
    }

    fn attached(rx: &std::sync::mpsc::Receiver<()>) {
        rx.recv_timeout(Duration::from_secs(120))
            .expect("ctrwatch watch attached");
    }

    /// Waits for the line of `op` by `pid` (60 s at most: only a failing test waits long, and a
    /// loaded machine can hold the watcher back for many seconds).
    fn line(&self, op: &str, pid: u32) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let pid = format!(" pid={pid} ");
        loop {
            let found = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .find(|l| l.split_whitespace().nth(1) == Some(op) && l.contains(&pid))
                .cloned();
            if let Some(l) = found {
                return l;
            }
            if Instant::now() >= deadline {
                let lines = self.lines.lock().expect("lines");
                let shown: Vec<String> = lines
                    .iter()
                    .map(|l| l.chars().take(160).collect())
                    .collect();
                panic!(
                    "no readable line for {op} by{pid}; lines:\n{}",
                    shown.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HumanWatcher {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn notes(v: &Value) -> Vec<&str> {
    v.get("notes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Every path that exists (or existed) in the test: each directory of the chains and each
/// file name the test used below each of them. A truncated path must be none of them.
fn real_paths(chains: &[&Chain], names: &[&str]) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for chain in chains {
        for d in chain.all_dirs() {
            for n in names {
                all.push(d.join(n).into_os_string().into_vec());
            }
            all.push(d.into_os_string().into_vec());
        }
    }
    all
}

/// `field` (`path` or `new_path`) of `v` is `own`, or is marked truncated and is the kernel's
/// prefix of `own`, the marker, and `own`'s last component: nothing that exists.
fn assert_own_path(v: &Value, field: &str, own: &Path, real: &[Vec<u8>]) -> bool {
    let note = if field == "path" {
        "path_truncated"
    } else {
        "new_path_truncated"
    };
    let got = s(v, field);
    let own = own.to_str().expect("UTF-8 test path");
    if !notes(v).contains(&note) {
        assert_eq!(got, own, "{field} of {} is not its own: {v}", s(v, "op"));
        return false;
    }
    assert!(
        !real.iter().any(|r| r == got.as_bytes()),
        "truncated {field} is the path of something else: {got}"
    );
    let (head, tail) = got
        .split_once(&format!("/{MARKER}/"))
        .unwrap_or_else(|| panic!("truncated {field} without the marker: {got}"));
    assert!(
        own.starts_with(&format!("{head}/")) && own.ends_with(&format!("/{tail}")),
        "truncated {field} {got} is not a prefix of {own}, the marker and its name"
    );
    true
}

/// The five records of create, write, rename, unlink of `f` -> `g` in `dir` by those pids.
struct Ops {
    create: u32,
    write: u32,
    rename: u32,
    unlink: u32,
    f: PathBuf,
    g: PathBuf,
}

impl Ops {
    fn in_cwd(chain: &Chain, f: &str, g: &str) -> Ops {
        Ops {
            create: fsop_in_cwd(chain, &["create", f]),
            write: fsop_in_cwd(chain, &["write", f, "5"]),
            rename: fsop_in_cwd(chain, &["rename", f, g]),
            unlink: fsop_in_cwd(chain, &["unlink", g]),
            f: chain.deepest().join(f),
            g: chain.deepest().join(g),
        }
    }

    fn by_dirfd(chain: &Chain, f: &str, g: &str) -> Ops {
        let d = chain.deepest();
        Ops {
            create: fsop_at("at-create", d, &[f]),
            write: fsop_at("at-write", d, &[f, "5"]),
            rename: fsop_at("at-rename", d, &[f, g]),
            unlink: fsop_at("unlinkat", d, &[g]),
            f: d.join(f),
            g: d.join(g),
        }
    }

    fn pids(&self) -> [u32; 4] {
        [self.create, self.write, self.rename, self.unlink]
    }

    /// (op, pid, path, new path) of every record these operations must produce.
    fn expected(&self) -> Vec<(&'static str, u32, &Path, Option<&Path>)> {
        vec![
            ("create", self.create, &self.f, None),
            ("open_write", self.write, &self.f, None),
            ("modify", self.write, &self.f, None),
            ("rename", self.rename, &self.f, Some(&self.g)),
            ("unlink", self.unlink, &self.g, None),
        ]
    }
}

fn record(w: &Watcher, op: &str, pid: u32) -> Value {
    w.wait_for(&format!("{op} by {pid}"), |v| {
        s(v, "op") == op && process(v, "pid").as_u64() == Some(pid as u64)
    })
}

/// Checks the live records (JSON and readable) of `ops`; returns how many were truncated.
fn check_live(daemon: &Watcher, human: &HumanWatcher, ops: &Ops, real: &[Vec<u8>]) -> usize {
    let mut truncated = 0;
    for (op, pid, path, new_path) in ops.expected() {
        let v = record(daemon, op, pid);
        let mut cut = assert_own_path(&v, "path", path, real);
        if let Some(np) = new_path {
            cut |= assert_own_path(&v, "new_path", np, real);
        }
        let line = human.line(op, pid);
        assert_eq!(
            line.contains(HUMAN_MARKER),
            cut,
            "the readable line shows the truncation exactly when the path is truncated: {line}"
        );
        assert!(line.contains(s(&v, "path")), "{line}\n{v}");
        truncated += usize::from(cut);
    }
    truncated
}

/// Runs a store query; returns its JSON records.
fn query(args: &[&OsStr], store: &Path) -> Vec<Value> {
    let mut all: Vec<&OsStr> = args.to_vec();
    all.extend([
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ]);
    let (code, out, err) = ctrwatch(&all);
    assert_eq!(code, 0, "ctrwatch {all:?}: {err}");
    json_lines(&out)
}

/// The same query's table.
fn table(args: &[&OsStr], store: &Path) -> String {
    let mut all: Vec<&OsStr> = args.to_vec();
    all.extend([OsStr::new("--store"), store.as_os_str()]);
    let (code, out, err) = ctrwatch(&all);
    assert_eq!(code, 0, "ctrwatch {all:?}: {err}");
    out
}

/// Waits until the store has the unlink of the last operation set (the daemon commits in
/// batches; 60 s allowed for a loaded machine).
fn wait_stored(store: &Path, pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid = pid.to_string();
    while query(
        &[OsStr::new("query"), OsStr::new("--pid"), OsStr::new(&pid)],
        store,
    )
    .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "pid {pid} never reached the store"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn paths_longer_than_path_max_are_never_recorded_as_another_path() {
    let base = temp_dir("long-paths");
    let root = base.join("root");
    let store = base.join("store/events.db");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let (human, human_attached) = HumanWatcher::spawn(&root);
    let daemon = Watcher::start_command(&[
        OsString::from("run"),
        "--root".into(),
        root.clone().into(),
        "--store".into(),
        store.clone().into(),
        "--print".into(),
        "--json".into(),
    ]);
    HumanWatcher::attached(&human_attached);

    // The issue's chain: 20 directories of 250 characters (about 5 KiB), and one twice as
    // deep (about 10 KiB).
    let chain20 = Chain::create(&root.join("c20"), 20, 250);
    let chain40 = Chain::create(&root.join("c40"), 40, 250);
    assert!(chain20.len() > 5000 && chain40.len() > 10_000);
    let names = ["f-cwd", "g-cwd", "f-at", "g-at"];
    let real = real_paths(&[&chain20, &chain40], &names);

    let mut sets = Vec::new();
    for chain in [&chain20, &chain40] {
        let cwd = Ops::in_cwd(chain, "f-cwd", "g-cwd");
        let at = Ops::by_dirfd(chain, "f-at", "g-at");
        sets.push((chain, cwd, at));
    }

    // Live: JSON and readable lines.
    for (chain, cwd, at) in &sets {
        let truncated =
            check_live(&daemon, &human, cwd, &real) + check_live(&daemon, &human, at, &real);
        if chain.names.len() == 20 {
            assert_eq!(truncated, 0, "a 5 KiB path is rebuilt completely");
        } else {
            assert!(truncated > 0, "a 10 KiB path is marked truncated");
        }
    }
    // The mkdirs of the chains, too: never reported as another directory.
    let test_pid = std::process::id() as u64;
    for chain in [&chain20, &chain40] {
        for (k, dir) in chain.dirs.iter().enumerate() {
            let dir_bytes = dir.as_os_str().as_bytes();
            let name = OsStr::from_bytes(&chain.names[k]).to_str().unwrap_or("");
            let v = daemon.wait_for(&format!("mkdir of level {}", k + 1), |v| {
                s(v, "op") == "mkdir"
                    && process(v, "pid").as_u64() == Some(test_pid)
                    && (s(v, "path").as_bytes() == dir_bytes
                        || (notes(v).contains(&"path_truncated") && s(v, "path").ends_with(name)))
            });
            assert_own_path(&v, "path", dir, &real);
        }
    }
    // Nothing else was reported about these files, under any other path.
    let all_pids: Vec<u64> = sets
        .iter()
        .flat_map(|(_, a, b)| a.pids().into_iter().chain(b.pids()))
        .map(u64::from)
        .collect();
    for v in daemon.records() {
        if process(&v, "pid")
            .as_u64()
            .is_some_and(|p| all_pids.contains(&p))
        {
            let path = s(&v, "path");
            let own = real.iter().any(|r| r == path.as_bytes());
            assert!(
                own || notes(&v).contains(&"path_truncated"),
                "a record under a path that is neither its own nor marked: {v}"
            );
        }
    }

    // The store: exact questions about any ancestor, or about a file name below one, never
    // return these operations.
    let last = sets.last().map(|(_, _, at)| at.unlink).expect("ops");
    wait_stored(&store, last);
    for (chain, _, _) in &sets {
        for dir in chain.all_dirs() {
            for v in query(&[OsStr::new("history"), dir.as_os_str()], &store) {
                assert!(
                    !process(&v, "pid")
                        .as_u64()
                        .is_some_and(|p| all_pids.contains(&p)),
                    "history of the ancestor {} returns {v}",
                    dir.display()
                );
            }
            for n in ["f-cwd", "g-cwd", "f-at", "g-at"] {
                let p = dir.join(n);
                if p.starts_with(chain.deepest()) {
                    continue;
                }
                for q in ["history", "who-deleted"] {
                    let got = query(&[OsStr::new(q), p.as_os_str()], &store);
                    assert!(got.is_empty(), "{q} {} answers {got:?}", p.display());
                }
            }
        }
    }

    // The 5 KiB paths are complete: their own full path finds them, in JSON and in the table.
    let (_, cwd20, at20) = &sets[0];
    for ops in [cwd20, at20] {
        let history = query(&[OsStr::new("history"), ops.f.as_os_str()], &store);
        for (op, pid) in [
            ("create", ops.create),
            ("open_write", ops.write),
            ("modify", ops.write),
            ("rename", ops.rename),
        ] {
            assert!(
                history
                    .iter()
                    .any(|v| s(v, "op") == op && process(v, "pid").as_u64() == Some(pid as u64)),
                "history of {} lacks {op}: {history:?}",
                ops.f.display()
            );
        }
        let deleted = query(&[OsStr::new("who-deleted"), ops.g.as_os_str()], &store);
        assert!(
            deleted.iter().any(|v| s(v, "deletion") == "unlink"
                && process(v, "pid").as_u64() == Some(ops.unlink as u64)),
            "who-deleted {}: {deleted:?}",
            ops.g.display()
        );
        let t = table(&[OsStr::new("who-deleted"), ops.g.as_os_str()], &store);
        assert!(t.contains(ops.g.to_str().unwrap_or("")), "{t}");
        assert!(!t.contains(HUMAN_MARKER), "{t}");
    }

    // The 10 KiB paths are truncated: a glob finds them, marked in JSON and in the table; the
    // truncated text itself, asked as an exact path, matches nothing.
    let (_, cwd40, at40) = &sets[1];
    for (ops, g) in [(cwd40, "g-cwd"), (at40, "g-at")] {
        let glob = format!("{}/**/{g}", chain40.top.display());
        let found = query(
            &[OsStr::new("query"), OsStr::new("--path"), OsStr::new(&glob)],
            &store,
        );
        let unlink = found
            .iter()
            .find(|v| {
                s(v, "op") == "unlink" && process(v, "pid").as_u64() == Some(ops.unlink as u64)
            })
            .unwrap_or_else(|| panic!("query --path {glob}: {found:?}"));
        assert!(assert_own_path(unlink, "path", &ops.g, &real), "{unlink}");
        let rename = found
            .iter()
            .find(|v| {
                s(v, "op") == "rename" && process(v, "pid").as_u64() == Some(ops.rename as u64)
            })
            .unwrap_or_else(|| panic!("query --path {glob}: {found:?}"));
        assert!(
            assert_own_path(rename, "new_path", &ops.g, &real),
            "{rename}"
        );
        let t = table(
            &[OsStr::new("query"), OsStr::new("--path"), OsStr::new(&glob)],
            &store,
        );
        let row = t
            .lines()
            .find(|l| l.contains(" unlink ") && l.contains(&format!(" {} ", ops.unlink)))
            .unwrap_or_else(|| panic!("no unlink row in\n{t}"));
        assert!(row.contains(HUMAN_MARKER), "{row}");
        let truncated_text = s(unlink, "path");
        for q in ["history", "who-deleted"] {
            let got = query(&[OsStr::new(q), OsStr::new(truncated_text)], &store);
            assert!(got.is_empty(), "{q} of the truncated text answers {got:?}");
        }
    }

    drop(human);
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}
