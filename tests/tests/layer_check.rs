//! The layer check end to end: the real daemon (`ctrwatch run --config`) watching a real
//! containerd (tests/src/containerd.rs), a real webhook receiver on 127.0.0.1.
//!
//! * at commit: a layer whose tar has a genuine `.wh..wh..opq` (unpacked by containerd) gives
//!   no alert; a layer committed with a file already truncated to zero gives `layer-damaged`;
//!   a layer committed with an opaque xattr its tar does not have gives `opaque-leak` from
//!   the replay (the xattr is set before the commit, on an active snapshot, which the event
//!   rule never judges: only the replay can see it). The damaged layers are unpacked by hand
//!   the way containerd does (`ctr snapshots prepare`, the tar extracted, `ctr snapshots
//!   commit` to the chainID), the damage done between the extraction and the commit: what a
//!   power loss or the kernel leaves at commit, which no syscall hook on a committed layer
//!   sees;
//! * after an unclean stop: `kill -9` right after an import, a layer file zeroed and a CRI
//!   sandbox record without its metadata made while the daemon is down; the restart's
//!   after-crash verification alerts on both, and not on the intact layers.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::OsString,
    path::Path,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    Watcher,
    containerd::{Containerd, Layer},
    receiver::{Mode, Receiver},
    temp_dir,
};

const FSOP: &str = env!("CARGO_BIN_EXE_fsop");
const NS: &str = "default";
const TIMEOUT: Duration = Duration::from_secs(120);

fn daemon_args(cd: &Containerd, dir: &Path) -> Vec<OsString> {
    vec![
        "run".into(),
        "--root".into(),
        cd.root().into(),
        "--root".into(),
        cd.state().into(),
        "--store".into(),
        dir.join("events.db").into(),
        "--config".into(),
        dir.join("ctrwatch.toml").into(),
    ]
}

fn start_daemon(cd: &Containerd, dir: &Path, r: &Receiver) -> Watcher {
    let config = format!(
        "[rules.heartbeat]\nenabled = false\n\n\
         [[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
        r.url("/hook")
    );
    std::fs::write(dir.join("ctrwatch.toml"), config).expect("config");
    Watcher::start_command(&daemon_args(cd, dir))
}

/// Every alert revision the receiver got, as bodies.
fn bodies(r: &Receiver) -> Vec<Value> {
    r.received()
        .into_iter()
        .filter(|x| x.path() == "/hook")
        .map(|x| x.json())
        .collect()
}

fn show(all: &[Value]) -> String {
    all.iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits for an alert body matching `pred`; returns it.
fn wait_alert(r: &Receiver, w: &Watcher, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let all = bodies(r);
        if let Some(b) = all.iter().find(|b| pred(b)) {
            return b.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {TIMEOUT:?}; received:\n{}\nstderr:\n{}",
            show(&all),
            w.stderr()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the daemon logged a layer check `when` ("at commit", "after an unclean stop")
/// naming `chain`; returns that line.
fn wait_check_log(w: &Watcher, when: &str, chain: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let err = w.stderr();
        if let Some(line) = err
            .lines()
            .find(|l| l.contains(&format!("layer check {when}")) && l.contains(chain))
        {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no layer check {when} of {chain} logged within {TIMEOUT:?}; stderr:\n{err}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Makes the committed snapshot `chain` of `layer` on `parent` by hand, as containerd's
/// overlayfs unpack does (prepare an active snapshot, apply the tar, commit it under the
/// chainID), with `damage` done to its `fs` directory before the commit. The layer has no
/// whiteouts, so a plain extraction is what containerd's apply writes.
fn unpack_by_hand(
    cd: &Containerd,
    dir: &Path,
    layer: &Layer,
    chain: &str,
    parent: &str,
    damage: impl FnOnce(&Path),
) {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let active = format!("layercheck-by-hand-{}-{n}", std::process::id());
    cd.ctr_ns(
        NS,
        &[
            "snapshots",
            "--snapshotter",
            "overlayfs",
            "prepare",
            &active,
            parent,
        ],
    )
    .expect("prepare");
    let fs = cd.snapshot_dir(NS, &active).expect("active dir").join("fs");
    let tar_file = dir.join(format!("layer-{n}.tar"));
    std::fs::write(&tar_file, layer.tar().expect("tar")).expect("write tar");
    run(Command::new("tar")
        .arg("--extract")
        .arg("--file")
        .arg(&tar_file)
        .arg("--directory")
        .arg(&fs)
        .args(["--same-permissions", "--same-owner", "--numeric-owner"]));
    std::fs::remove_file(&tar_file).expect("remove tar");
    damage(&fs);
    cd.ctr_ns(
        NS,
        &[
            "snapshots",
            "--snapshotter",
            "overlayfs",
            "commit",
            chain,
            &active,
        ],
    )
    .expect("commit");
}

fn import_without_unpack(cd: &Containerd, archive: &Path) {
    cd.ctr_ns(
        NS,
        &[
            "images",
            "import",
            "--no-unpack",
            archive.to_str().expect("utf-8 path"),
        ],
    )
    .expect("import --no-unpack");
}

fn str_of<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_default()
}

#[test]
fn at_commit_a_genuine_opaque_dir_is_quiet_a_truncated_file_and_a_foreign_opaque_mark_alert() {
    tests::require_root();
    let dir = temp_dir("layer-check-commit");
    let cd = Containerd::start().expect("containerd");
    let r = Receiver::start(Mode::Accept);
    let daemon = start_daemon(&cd, &dir, &r);

    // 1. containerd unpacks a layer whose tar has a genuine `.wh..wh..opq`: checked, quiet.
    let base = Layer::base().expect("base layer");
    let genuine = Layer::new()
        .dir("opq")
        .opaque("opq")
        .file("opq/kept", "x\n")
        .file("plain", "y\n");
    let quiet = cd
        .build_image_info(
            "test.local/ctrwatch/layercheck-quiet:1",
            &[base.clone(), genuine],
        )
        .expect("image");
    cd.import(&quiet.archive, NS).expect("import");
    let upper_dir = cd.snapshot_dir(NS, &quiet.chain_ids[1]).expect("dir");
    assert_eq!(
        tests::containerd::get_xattr(&upper_dir.join("fs/opq"), "trusted.overlay.opaque")
            .expect("xattr")
            .as_deref(),
        Some(&b"y"[..]),
        "containerd made the genuine opaque directory"
    );
    let line = wait_check_log(&daemon, "at commit", &quiet.chain_ids[1]);
    assert!(line.contains(": 0 problem(s)"), "{line}");

    // 2. A layer committed with a file already truncated to zero: layer-damaged.
    let damaged = Layer::new()
        .dir("data")
        .file("data/big", vec![b'z'; 64 * 1024])
        .file("data/small", "intact\n");
    let img = cd
        .build_image_info(
            "test.local/ctrwatch/layercheck-damaged:1",
            &[base.clone(), damaged.clone()],
        )
        .expect("image");
    import_without_unpack(&cd, &img.archive);
    unpack_by_hand(
        &cd,
        &dir,
        &damaged,
        &img.chain_ids[1],
        &img.chain_ids[0],
        |fs| {
            let big = fs.join("data/big");
            run(Command::new("truncate").arg("-s").arg("0").arg(&big));
            // Recorded before the commit, so that the check finds its writer in the history.
            tests::wait_history(&dir.join("events.db"), &big, "truncate");
        },
    );
    let a = wait_alert(&r, &daemon, "layer-damaged for /data/big", |b| {
        b["rule"] == "layer-damaged" && b["file"]["inner_path"] == "/data/big"
    });
    assert_eq!(a["severity"], "critical", "{a}");
    let host = cd
        .snapshot_dir(NS, &img.chain_ids[1])
        .expect("dir")
        .join("fs/data/big");
    assert_eq!(str_of(&a, &["file", "path"]), host.to_str().unwrap(), "{a}");
    assert_eq!(
        str_of(&a, &["containerd", "layer_digest"]),
        img.layer_digests[1],
        "{a}"
    );
    assert_eq!(
        str_of(&a, &["containerd", "snapshot_key"]),
        img.chain_ids[1],
        "{a}"
    );
    assert!(
        a["containerd"]["images"]
            .as_array()
            .is_some_and(|i| i.iter().any(|n| n == img.name.as_str())),
        "{a}"
    );
    assert!(
        str_of(&a, &["details", "classes"]).contains("layer-file-truncated"),
        "{a}"
    );
    assert!(
        str_of(&a, &["details", "found_by"]).contains("layer check at commit"),
        "{a}"
    );
    // The truncation was recorded (on the active snapshot, the same directory): named.
    let summary = str_of(&a, &["summary"]);
    assert!(
        summary.contains("last recorded writer") && summary.contains("truncate"),
        "{a}"
    );
    assert!(
        str_of(&a, &["command"]).starts_with("ctrwatch history "),
        "{a}"
    );
    assert!(
        !a["sample_paths"].as_array().is_some_and(|p| p
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.ends_with("small")))),
        "the intact file is not named: {a}"
    );

    // 3. A layer committed with an opaque mark its tar does not have: opaque-leak, from the
    //    replay (the mark was set on an active snapshot: the event rule does not judge it).
    let marked = Layer::new().dir("etc2").file("etc2/conf", "a=1\n");
    let img3 = cd
        .build_image_info(
            "test.local/ctrwatch/layercheck-opaque:1",
            &[base, marked.clone()],
        )
        .expect("image");
    import_without_unpack(&cd, &img3.archive);
    unpack_by_hand(
        &cd,
        &dir,
        &marked,
        &img3.chain_ids[1],
        &img3.chain_ids[0],
        |fs| {
            run(Command::new(FSOP)
                .arg("setxattr")
                .arg(fs.join("etc2"))
                .args(["trusted.overlay.opaque", "y"]))
        },
    );
    let a = wait_alert(&r, &daemon, "opaque-leak for /etc2", |b| {
        b["rule"] == "opaque-leak" && b["file"]["inner_path"] == "/etc2"
    });
    assert_eq!(
        str_of(&a, &["details", "class"]),
        "layer-opaque-leak",
        "{a}"
    );
    assert_eq!(
        str_of(&a, &["containerd", "snapshot_key"]),
        img3.chain_ids[1],
        "{a}"
    );
    assert!(
        str_of(&a, &["details", "found_by"]).contains("layer check at commit"),
        "{a}"
    );

    // Nothing about the genuine opaque layer, nor about the shared base layer.
    let all = bodies(&r);
    for b in &all {
        if b["rule"] != "layer-damaged" && b["rule"] != "opaque-leak" {
            continue;
        }
        let key = str_of(b, &["containerd", "snapshot_key"]);
        assert!(
            key != quiet.chain_ids[1] && key != quiet.chain_ids[0],
            "an alert about an intact layer: {b}\nall:\n{}",
            show(&all)
        );
    }
    drop(daemon);
    cd.stop().expect("containerd stop");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn after_kill_9_the_restart_verifies_the_layers_committed_before_the_crash() {
    tests::require_root();
    let dir = temp_dir("layer-check-crash");
    let cd = Containerd::start().expect("containerd");
    let r = Receiver::start(Mode::Accept);
    let mut daemon = start_daemon(&cd, &dir, &r);

    let upper = Layer::new()
        .dir("data")
        .file("data/zeroed.bin", vec![7u8; 32 * 1024])
        .file("data/fine.txt", "fine\n");
    let img = cd
        .build_image_info(
            "test.local/ctrwatch/layercheck-crash:1",
            &[Layer::base().expect("base"), upper],
        )
        .expect("image");
    cd.import(&img.archive, NS).expect("import");
    // The daemon saw the commit (its heartbeat is after it), then dies without a word.
    let line = wait_check_log(&daemon, "at commit", &img.chain_ids[1]);
    assert!(line.contains(": 0 problem(s)"), "{line}");
    daemon.signal(libc::SIGKILL);
    assert!(
        daemon.wait_exit(Duration::from_secs(60)).is_some(),
        "ctrwatch did not die on SIGKILL"
    );
    drop(daemon);

    // While nothing watches: a layer file zeroed (the page cache lost at the crash), and a
    // CRI sandbox record without the metadata CRI recovers it from.
    let upper_dir = cd.snapshot_dir(NS, &img.chain_ids[1]).expect("dir");
    let zeroed = upper_dir.join("fs/data/zeroed.bin");
    run(Command::new("truncate").arg("-s").arg("0").arg(&zeroed));
    cd.ctr_ns(
        NS,
        &[
            "containers",
            "create",
            "--label",
            "io.cri-containerd.kind=sandbox",
            &img.name,
            "layercheck-sandbox",
        ],
    )
    .expect("container create");

    let daemon = Watcher::start_command(&daemon_args(&cd, &dir));
    let line = wait_check_log(&daemon, "after an unclean stop", &img.chain_ids[1]);
    let a = wait_alert(
        &r,
        &daemon,
        "after-crash-verify for /data/zeroed.bin",
        |b| b["rule"] == "after-crash-verify" && b["file"]["inner_path"] == "/data/zeroed.bin",
    );
    assert_eq!(a["severity"], "critical", "{a}");
    assert_eq!(
        str_of(&a, &["file", "path"]),
        zeroed.to_str().unwrap(),
        "{a}"
    );
    assert!(
        str_of(&a, &["details", "classes"]).contains("layer-file-truncated"),
        "{a}"
    );
    // Nothing recorded the truncation (the daemon was down): the alert says no writer, or
    // names the last one the history has (containerd's unpack, when its events were stored
    // before the kill), never the truncate.
    let summary = str_of(&a, &["summary"]);
    assert!(
        summary.contains("after an unclean stop")
            && (summary.contains("no writer recorded")
                || summary.contains(&format!(
                    "last recorded writer of that path: {}",
                    cd.exe().display()
                )))
            && !summary.contains("truncate -s"),
        "{a}"
    );
    let sandbox = wait_alert(&r, &daemon, "after-crash-verify for the sandbox", |b| {
        b["rule"] == "after-crash-verify" && str_of(b, &["summary"]).contains("layercheck-sandbox")
    });
    assert!(
        str_of(&sandbox, &["summary"]).contains("containerd will fail to recover"),
        "{sandbox}"
    );
    // The intact layers: verified, not alerted on; the zeroed one's alert names only it.
    assert!(line.contains(&img.chain_ids[0]), "{line}");
    let all = bodies(&r);
    for b in all.iter().filter(|b| b["rule"] == "after-crash-verify") {
        let key = str_of(b, &["containerd", "snapshot_key"]);
        assert!(
            key.is_empty() || key == img.chain_ids[1],
            "an alert about an intact layer: {b}\nall:\n{}",
            show(&all)
        );
        for p in b["sample_paths"].as_array().into_iter().flatten() {
            assert!(
                p.as_str().is_some_and(|p| p.ends_with("data/zeroed.bin")),
                "an intact file named: {b}"
            );
        }
    }
    drop(daemon);
    let _ = cd.ctr_ns(NS, &["containers", "rm", "layercheck-sandbox"]);
    cd.stop().expect("containerd stop");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An opaque mark set later on a committed layer's directory is judged against the tar,
/// whoever set it: here a writer the configuration trusts (so its verdict is `owner`, which
/// the event rule does not judge). The layer is replayed again: a mark its tar explains
/// (a genuine `.wh..wh..opq`) stays quiet, one it does not explain is an opaque-leak.
#[test]
fn a_later_opaque_mark_by_a_trusted_writer_is_judged_against_the_tar() {
    tests::require_root();
    let dir = temp_dir("layer-check-mark");
    let cd = Containerd::start().expect("containerd");
    let r = Receiver::start(Mode::Accept);
    // Run by its real path: the trust is in the executable (a python3 earlier on PATH, e.g.
    // pyenv's, would be another one).
    let python = std::fs::canonicalize("/usr/bin/python3").expect("python3");
    std::fs::write(
        dir.join("ctrwatch.toml"),
        format!(
            "[watch]\ntrust_exes = [\"{}\"]\n\n[rules.heartbeat]\nenabled = false\n\n\
             [[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            python.display(),
            r.url("/hook")
        ),
    )
    .expect("config");
    let daemon = Watcher::start_command(&daemon_args(&cd, &dir));

    let layer = Layer::new()
        .dir("opq")
        .opaque("opq")
        .file("opq/kept", "x\n")
        .dir("plain")
        .file("plain/file", "y\n");
    let img = cd
        .build_image_info(
            "test.local/ctrwatch/layercheck-mark:1",
            &[Layer::base().expect("base layer"), layer],
        )
        .expect("image");
    cd.import(&img.archive, NS).expect("import");
    let chain = &img.chain_ids[1];
    let line = wait_check_log(&daemon, "at commit", chain);
    assert!(line.contains(": 0 problem(s)"), "{line}");
    let fs = cd.snapshot_dir(NS, chain).expect("dir").join("fs");
    let set_mark = |d: &Path| {
        run(Command::new(&python).args([
            std::ffi::OsStr::new("-c"),
            std::ffi::OsStr::new(
                "import os, sys; os.setxattr(sys.argv[1], 'trusted.overlay.opaque', b'y')",
            ),
            d.as_os_str(),
        ]))
    };

    // 1. The mark again on the genuine opaque directory: replayed, nothing wrong.
    set_mark(&fs.join("opq"));
    let set = tests::wait_history(&dir.join("events.db"), &fs.join("opq"), "setxattr");
    assert_eq!(set["containerd"]["verdict"], "owner", "trusted: {set}");
    let line = wait_check_log(&daemon, "after an opaque mark", chain);
    assert!(line.contains(": 0 problem(s)"), "{line}");

    // 2. The mark on a directory whose tar has no `.wh..wh..opq`: opaque-leak, from the replay.
    set_mark(&fs.join("plain"));
    let a = wait_alert(&r, &daemon, "opaque-leak for /plain", |b| {
        b["rule"] == "opaque-leak" && b["file"]["inner_path"] == "/plain"
    });
    assert_eq!(
        str_of(&a, &["details", "class"]),
        "layer-opaque-leak",
        "{a}"
    );
    assert_eq!(
        str_of(&a, &["containerd", "snapshot_key"]),
        chain.as_str(),
        "{a}"
    );
    assert!(
        str_of(&a, &["details", "found_by"]).contains("layer check after an opaque mark"),
        "{a}"
    );
    // The genuine directory never alerted (its replay finished before the second mark).
    let all = bodies(&r);
    assert!(
        !all.iter().any(|b| b["file"]["inner_path"] == "/opq"),
        "the genuine opaque directory alerted:\n{}",
        show(&all)
    );
    drop(daemon);
    cd.stop().expect("containerd stop");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The checks off at the start (no layer-check worker runs), turned on by a reload with a new
/// node name: a layer committed damaged after the reload gives `layer-damaged`, naming the new
/// node. On a daemon whose check workers are started once per run, no alert comes (and the
/// reload says `[rules.layer-damaged]` waits for a restart).
#[test]
fn checks_off_at_the_start_are_turned_on_by_a_reload() {
    tests::require_root();
    let dir = temp_dir("layer-check-reload");
    let cd = Containerd::start().expect("containerd");
    let r = Receiver::start(Mode::Accept);
    let config = |enabled: bool, node: &str| {
        format!(
            "[alerts]\nnode_name = \"{node}\"\n\n[rules.heartbeat]\nenabled = false\n\n\
             [rules.layer-damaged]\nenabled = {enabled}\n\n[rules.opaque-leak]\nenabled = false\n\n\
             [rules.after-crash-verify]\nenabled = false\n\n[rules.metadata-mismatch]\nenabled = false\n\n\
             [[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            r.url("/hook")
        )
    };
    tests::write_config(&dir.join("ctrwatch.toml"), &config(false, "edge-off"));
    let daemon = Watcher::start_command(&daemon_args(&cd, &dir));
    tests::write_config(&dir.join("ctrwatch.toml"), &config(true, "edge-on"));
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + TIMEOUT;
    while !daemon.stderr().contains("reloaded the configuration") {
        assert!(
            Instant::now() < deadline,
            "no reload within {TIMEOUT:?}:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !daemon.stderr().contains("takes effect at the next start"),
        "{}",
        daemon.stderr()
    );

    // The base layer unpacked by containerd (the damaged layer's parent).
    let base = Layer::base().expect("base layer");
    let plain = cd
        .build_image_info(
            "test.local/ctrwatch/layercheck-reload-base:1",
            &[base.clone(), Layer::new().file("plain", "y\n")],
        )
        .expect("image");
    cd.import(&plain.archive, NS).expect("import");
    let damaged = Layer::new()
        .dir("data")
        .file("data/big", vec![b'z'; 64 * 1024])
        .file("data/small", "intact\n");
    let img = cd
        .build_image_info(
            "test.local/ctrwatch/layercheck-reload:1",
            &[base, damaged.clone()],
        )
        .expect("image");
    import_without_unpack(&cd, &img.archive);
    unpack_by_hand(
        &cd,
        &dir,
        &damaged,
        &img.chain_ids[1],
        &img.chain_ids[0],
        |fs| {
            run(Command::new("truncate")
                .arg("-s")
                .arg("0")
                .arg(fs.join("data/big")));
        },
    );
    let a = wait_alert(&r, &daemon, "layer-damaged for /data/big", |b| {
        b["rule"] == "layer-damaged" && b["file"]["inner_path"] == "/data/big"
    });
    assert_eq!(a["node"]["hostname"], "edge-on", "{a}");
    daemon.stop();
    cd.stop().expect("containerd stop");
    let _ = std::fs::remove_dir_all(dir);
}

/// The CPU time (clock ticks) of the daemon's layer-check thread so far (0 when not found).
fn layer_check_cpu_ticks(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "layer-check")
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .map(|stat| {
            // After the `(comm)`: state is field 3, utime and stime fields 14 and 15.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
            field(14).unwrap_or(0) + field(15).unwrap_or(0)
        })
        .sum()
}

/// A reload that renames the node (the layer check's settings change) while a layer's check
/// is under way: the check goes on and its `layer-damaged` alert comes (named by either
/// node), once. The layer is large and stored uncompressed, so that its replay, paced to a
/// quarter of a core at the idle priority, takes seconds; the SIGHUP is sent once the check
/// thread has used CPU on it. A daemon that replaces the check's worker at a reload abandons
/// the check (its log says the layer was not checked) and no alert ever comes.
#[test]
fn a_reload_during_a_layer_check_does_not_drop_it() {
    tests::require_root();
    let dir = temp_dir("layer-check-reload-busy");
    let cd = Containerd::start().expect("containerd");
    let r = Receiver::start(Mode::Accept);
    let config = |node: &str| {
        format!(
            "[alerts]\nnode_name = \"{node}\"\n\n[rules.heartbeat]\nenabled = false\n\n\
             [rules.layer-damaged]\nenabled = true\n\n[rules.opaque-leak]\nenabled = false\n\n\
             [rules.after-crash-verify]\nenabled = false\n\n[rules.metadata-mismatch]\nenabled = false\n\n\
             [[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            r.url("/hook")
        )
    };
    tests::write_config(&dir.join("ctrwatch.toml"), &config("edge-before"));
    let daemon = Watcher::start_command(&daemon_args(&cd, &dir));

    // The base layer unpacked by containerd (the damaged layer's parent), and checked.
    let base = Layer::base().expect("base layer");
    let plain = cd
        .build_image_info(
            "test.local/ctrwatch/layercheck-reload-busy-base:1",
            &[base.clone(), Layer::new().file("plain", "y\n")],
        )
        .expect("image");
    cd.import(&plain.archive, NS).expect("import");
    wait_check_log(&daemon, "at commit", &plain.chain_ids[1]);

    let damaged = Layer::new()
        .dir("data")
        .file("data/huge", vec![b'h'; 96 << 20])
        .file("data/big", vec![b'z'; 64 * 1024])
        .compressed(tests::containerd::Compression::None);
    let img = cd
        .build_image_info(
            "test.local/ctrwatch/layercheck-reload-busy:1",
            &[base, damaged.clone()],
        )
        .expect("image");
    import_without_unpack(&cd, &img.archive);
    let pid = daemon.pid();
    let before = layer_check_cpu_ticks(pid);
    unpack_by_hand(
        &cd,
        &dir,
        &damaged,
        &img.chain_ids[1],
        &img.chain_ids[0],
        |fs| {
            run(Command::new("truncate")
                .arg("-s")
                .arg("0")
                .arg(fs.join("data/big")));
        },
    );
    // The check under way: its thread works (a few ticks of CPU) and has not logged its end.
    tests::wait_until(
        "the layer check working",
        TIMEOUT,
        || layer_check_cpu_ticks(pid) >= before + 3,
        || {
            format!(
                "layer-check CPU ticks: {before} then {}; stderr:\n{}",
                layer_check_cpu_ticks(pid),
                daemon.stderr()
            )
        },
    );
    tests::write_config(&dir.join("ctrwatch.toml"), &config("edge-after"));
    daemon.signal(libc::SIGHUP);
    let finished_first = daemon
        .stderr()
        .lines()
        .any(|l| l.contains("layer check at commit") && l.contains(&img.chain_ids[1]));
    tests::wait_until(
        "the reload",
        TIMEOUT,
        || daemon.stderr().contains("reloaded the configuration"),
        || daemon.stderr(),
    );
    if finished_first {
        eprintln!("note: the check ended before the SIGHUP: the window was not exercised");
    }

    let a = wait_alert(&r, &daemon, "layer-damaged for /data/big", |b| {
        b["rule"] == "layer-damaged" && b["file"]["inner_path"] == "/data/big"
    });
    let node = str_of(&a, &["node", "hostname"]);
    assert!(node == "edge-before" || node == "edge-after", "{a}");
    assert_eq!(
        str_of(&a, &["containerd", "snapshot_key"]),
        img.chain_ids[1],
        "{a}"
    );
    let err = daemon.stderr();
    assert!(!err.contains("not checked"), "{err}");
    // What happened, for the record: the reload among the checks.
    for line in err
        .lines()
        .filter(|l| l.contains("layer check") || l.contains("SIGHUP"))
    {
        eprintln!("daemon: {line}");
    }
    daemon.stop();
    // Checked once: one alert, not one per worker.
    let ids: std::collections::BTreeSet<String> = bodies(&r)
        .iter()
        .filter(|b| b["rule"] == "layer-damaged")
        .map(|b| str_of(b, &["id"]).to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{}", show(&bodies(&r)));
    cd.stop().expect("containerd stop");
    let _ = std::fs::remove_dir_all(dir);
}
