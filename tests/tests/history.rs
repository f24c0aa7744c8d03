//! The daemon keeps the history on disk, and the investigation commands answer from it:
//! `ctrwatch run` against a temp root and store, a script deletes and truncates files, and
//! `who-deleted` / `history` / `query` / `gaps` name the script, its parents and the times.
//! Also: kill -9 during a flood leaves a store that opens cleanly, keeps what readers had
//! already seen, and gets a downtime gap on restart. Needs root.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::{OsStr, OsString},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    Watcher,
    containerd::{Containerd, Layer},
    ctrwatch, json_lines, process, s, temp_dir,
};

fn start_daemon(root: &Path, store: &Path) -> Watcher {
    let args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        root.as_os_str().to_owned(),
        "--store".into(),
        store.as_os_str().to_owned(),
    ];
    Watcher::start_command(&args)
}

/// Runs a query command until `done` accepts its JSON output (the daemon commits within
/// a fraction of a second; 60 s allowed for a loaded machine), returning the records.
fn query_until(args: &[&OsStr], done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, err) = ctrwatch(args);
        assert_eq!(code, 0, "ctrwatch {args:?} failed: {err}");
        let records = json_lines(&out);
        if done(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "ctrwatch {args:?} never gave the expected answer; last:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn who_deleted_and_history_name_the_script_and_its_parents() {
    let base = temp_dir("history");
    let root = base.join("root");
    let store = base.join("store/events.db");
    let layer = root.join("io.containerd.snapshotter.v1.overlayfs/snapshots/7/fs");
    std::fs::create_dir_all(&layer).expect("mkdir layer");
    std::fs::write(layer.join("pause"), b"binary").expect("write pause");
    std::fs::write(layer.join("libjq.so.1"), b"library").expect("write lib");
    let script = base.join("cleanup.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nrm -f {}\n: > {}\n",
            layer.join("pause").display(),
            layer.join("libjq.so.1").display()
        ),
    )
    .expect("write script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");

    let daemon = start_daemon(&root, &store);
    let status = Command::new("bash")
        .args(["-c", &format!("{} && true", script.display())])
        .status()
        .expect("run script");
    assert!(status.success());

    // Asked as a path inside the image: matches the file in every snapshot.
    let store_arg = store.as_os_str();
    let deleted = query_until(
        &[
            OsStr::new("who-deleted"),
            OsStr::new("/pause"),
            OsStr::new("--store"),
            store_arg,
            OsStr::new("--json"),
        ],
        |r| !r.is_empty(),
    );
    let v = &deleted[0];
    assert_eq!(s(v, "op"), "unlink", "{v}");
    assert_eq!(
        s(v, "path"),
        layer.join("pause").to_str().unwrap_or(""),
        "{v}"
    );
    assert_eq!(s(v, "result"), "ok", "{v}");
    assert_eq!(process(v, "comm").as_str(), Some("rm"), "{v}");
    let chain: Vec<&str> = process(v, "ancestors")
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["comm"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        chain.first(),
        Some(&"cleanup.sh"),
        "the script is the parent: {chain:?}"
    );
    let script_entry = &process(v, "ancestors")[0];
    assert!(
        script_entry["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("dash") || e.ends_with("sh")),
        "the script's interpreter is its exe: {v}"
    );
    assert!(chain.contains(&"bash"), "{chain:?}");
    for field in ["time", "op", "path", "result", "process"] {
        assert!(
            v.get(field).is_some(),
            "documented field {field} missing: {v}"
        );
    }
    // The containerd attribution is kept in the store and comes back with the query.
    let c = &v["containerd"];
    assert_eq!(c["kind"], "snapshot", "{v}");
    assert_eq!(c["snapshot_id"], 7, "{v}");
    assert_eq!(c["path"], "/pause", "{v}");
    assert_eq!(
        c["verdict"], "foreign",
        "a cleanup script is not containerd: {v}"
    );

    // history by host path shows the truncation of the library.
    let lib = layer.join("libjq.so.1");
    let history = query_until(
        &[
            OsStr::new("history"),
            lib.as_os_str(),
            OsStr::new("--store"),
            store_arg,
            OsStr::new("--json"),
        ],
        |r| r.iter().any(|v| s(v, "op") == "truncate"),
    );
    let t = history
        .iter()
        .find(|v| s(v, "op") == "truncate")
        .expect("truncate record");
    assert_eq!(process(t, "comm").as_str(), Some("cleanup.sh"), "{t}");
    assert_eq!(t["size"].as_u64(), Some(0), "{t}");

    // query by op and comm; the human table mentions the script.
    let (code, out, err) = ctrwatch(&[
        OsStr::new("query"),
        OsStr::new("--op"),
        OsStr::new("unlink"),
        OsStr::new("--comm"),
        OsStr::new("rm"),
        OsStr::new("--store"),
        store_arg,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pause") && out.contains("cleanup.sh"), "{out}");

    // A rename over a file deletes it: who-deleted names the rename as `replaced`, with the
    // inode the kernel saw lose its last link (ext4 here has the rename-target hook).
    let victim = layer.join("etc-passwd");
    let staged = layer.join("etc-passwd.new");
    std::fs::write(&victim, b"old\n").expect("write victim");
    let victim_ino =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&victim).expect("stat"));
    std::fs::write(&staged, b"new\n").expect("write staged");
    let status = Command::new("mv")
        .arg(&staged)
        .arg(&victim)
        .status()
        .expect("mv");
    assert!(status.success());
    let deleted = query_until(
        &[
            OsStr::new("who-deleted"),
            victim.as_os_str(),
            OsStr::new("--store"),
            store_arg,
            OsStr::new("--json"),
        ],
        |r| r.iter().any(|v| s(v, "op") == "rename"),
    );
    let r = deleted
        .iter()
        .find(|v| s(v, "op") == "rename")
        .expect("rename record");
    assert_eq!(s(r, "deletion"), "replaced", "{r}");
    assert_eq!(r["overwritten"]["inode"].as_u64(), Some(victim_ino), "{r}");
    assert_eq!(process(r, "comm").as_str(), Some("mv"), "{r}");

    daemon.stop();
    let (code, out, err) = ctrwatch(&[OsStr::new("gaps"), OsStr::new("--store"), store_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("complete"),
        "a clean run leaves no gaps: {out}"
    );
    let _ = std::fs::remove_dir_all(base);
}

/// The widest a table row may be: readable on a 160-column terminal.
const ROW_WIDTH: usize = 160;

/// Checks a human answer of `who-deleted`, `history` or `query` (`what`) for the python
/// script's deletion: its row, and under it the lines the issue asks for.
fn check_human_answer(what: &str, out: &str, expect: &[(&str, &str)], secret: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.first().is_some_and(|h| h.starts_with("TIME ")),
        "{what}: no header:\n{out}"
    );
    for (label, value) in expect {
        assert!(
            lines.iter().any(|l| {
                l.trim_start()
                    .strip_prefix(label)
                    .is_some_and(|rest| rest.trim_start() == *value)
            }),
            "{what}: no line `{label}  {value}` under the event:\n{out}"
        );
    }
    for line in lines.iter().filter(|l| !l.starts_with(' ')) {
        assert!(
            line.chars().count() <= ROW_WIDTH,
            "{what}: a row of {} characters (at most {ROW_WIDTH}):\n{line}\n\n{out}",
            line.chars().count()
        );
    }
    assert!(!out.contains(secret), "{what}: the secret is shown:\n{out}");
}

/// Issue 12, "What an operator reads": a foreign python3 script deletes `/pause` from a
/// committed layer of an image imported into a real containerd, while `ctrwatch run` records
/// it. The human answers of `who-deleted`, `history` and `query` show what an alert shows:
/// the verdict and its reason, the script with its arguments (the secret among them
/// masked), the path inside the image, the image and the layer; their rows fit 160 columns.
/// Before, `who-deleted /pause` printed `python3 (/usr/bin/python3.11)` and no image.
#[test]
fn the_human_answers_show_verdict_script_image_and_layer() {
    tests::require_root();
    const NS: &str = "default";
    const SECRET: &str = "hunter2-tables";
    let base = temp_dir("tables");
    let store = base.join("store/events.db");
    let cd = Containerd::start().expect("containerd");
    let image = "test.local/ctrwatch/tables:1";
    let built = cd
        .build_image_info(image, &[Layer::base().expect("base layer")])
        .expect("build image");
    cd.import(&built.archive, NS).expect("import");
    let victim = cd
        .snapshot_dir(NS, &built.chain_ids[0])
        .expect("snapshot dir")
        .join("fs/pause");
    assert!(victim.exists(), "{} not unpacked", victim.display());
    let daemon = start_daemon(cd.root(), &store);

    let script = base.join("prune-layers.py");
    std::fs::write(
        &script,
        "import os, sys\n# usage: prune-layers.py [--password=...] [--force] FILE\nos.unlink(sys.argv[-1])\n",
    )
    .expect("write script");
    let status = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(format!("--password={SECRET}"))
        .arg("--force")
        .arg(&victim)
        .status()
        .expect("run python3");
    assert!(status.success(), "python3 {}: {status}", script.display());

    let store_arg = store.as_os_str();
    let deleted = query_until(
        &[
            OsStr::new("who-deleted"),
            OsStr::new("/pause"),
            OsStr::new("--store"),
            store_arg,
            OsStr::new("--json"),
        ],
        |r| r.iter().any(|v| process(v, "comm") == "python3"),
    );
    let v = deleted
        .iter()
        .find(|v| process(v, "comm") == "python3")
        .expect("the script's deletion");
    // What the JSON carries (and the alert shows); the table must show the same.
    let c = &v["containerd"];
    assert_eq!(c["verdict"], "foreign", "{v}");
    assert_eq!(c["path"], "/pause", "{v}");
    assert_eq!(c["layer_digest"], built.layer_digests[0].as_str(), "{v}");
    assert!(
        c["images"]
            .as_array()
            .is_some_and(|i| i.iter().any(|x| x == image)),
        "{v}"
    );
    let reason = c["reason"].as_str().expect("a reason");
    let verdict = format!("foreign ({})", ctrwatch_event::escape(reason));
    let victim_text = victim.to_str().expect("UTF-8 path");
    let command = format!(
        "/usr/bin/python3 {} --password=*** --force {victim_text}",
        script.display()
    );
    let expect = [
        ("verdict", verdict.as_str()),
        ("command", command.as_str()),
        ("inside", "/pause"),
        ("image", image),
        ("layer", built.layer_digests[0].as_str()),
    ];

    let ask = |args: &[&OsStr]| {
        let mut all = args.to_vec();
        all.extend([OsStr::new("--store"), store_arg]);
        let (code, out, err) = ctrwatch(&all);
        assert_eq!(code, 0, "ctrwatch {all:?}: {err}");
        out
    };
    let out = ask(&[OsStr::new("who-deleted"), OsStr::new("/pause")]);
    eprintln!("who-deleted /pause:\n{out}");
    check_human_answer("who-deleted /pause", &out, &expect, SECRET);
    let out = ask(&[OsStr::new("history"), victim.as_os_str()]);
    eprintln!("history:\n{out}");
    check_human_answer("history HOST_PATH", &out, &expect, SECRET);
    let out = ask(&[
        OsStr::new("query"),
        OsStr::new("--op"),
        OsStr::new("unlink"),
        OsStr::new("--comm"),
        OsStr::new("python3"),
    ]);
    eprintln!("query:\n{out}");
    check_human_answer("query --op unlink --comm python3", &out, &expect, SECRET);

    daemon.stop();
    cd.stop().expect("stop containerd");
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn query_errors_have_distinct_exit_codes() {
    let base = temp_dir("history-errors");
    let missing = base.join("nope.db");
    let (code, _, err) = ctrwatch(&[
        OsStr::new("history"),
        OsStr::new("/pause"),
        OsStr::new("--store"),
        missing.as_os_str(),
    ]);
    assert_eq!(code, 3, "missing store: {err}");
    let corrupt = base.join("corrupt.db");
    std::fs::write(&corrupt, vec![0x5a; 8192]).expect("write");
    let (code, _, err) = ctrwatch(&[
        OsStr::new("history"),
        OsStr::new("/pause"),
        OsStr::new("--store"),
        corrupt.as_os_str(),
    ]);
    assert_eq!(code, 5, "corrupt store: {err}");
    let (code, _, err) = ctrwatch(&[
        OsStr::new("query"),
        OsStr::new("--since"),
        OsStr::new("the other day"),
        OsStr::new("--store"),
        corrupt.as_os_str(),
    ]);
    assert_eq!(code, 2, "bad time: {err}");
    assert!(err.contains("duration"), "{err}");
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn kill_9_during_a_flood_keeps_what_was_stored_and_records_the_downtime() {
    let base = temp_dir("crash");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store = base.join("events.db");
    let daemon = start_daemon(&root, &store);
    let fsop = env!("CARGO_BIN_EXE_fsop");
    let flood = Command::new(fsop)
        .args([OsStr::new("flood"), root.as_os_str(), OsStr::new("200000")])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("flood");
    // Wait until readers see part of the flood, then kill the daemon mid-way.
    let store_arg = store.as_os_str();
    let seen = query_until(
        &[
            OsStr::new("query"),
            OsStr::new("--op"),
            OsStr::new("unlink"),
            OsStr::new("--limit"),
            OsStr::new("1000000"),
            OsStr::new("--store"),
            store_arg,
            OsStr::new("--json"),
        ],
        |r| r.len() >= 1000,
    )
    .len();
    daemon.signal(libc::SIGKILL);
    drop(daemon);
    let mut flood = flood;
    let _ = flood.wait();
    let killed_at = std::time::SystemTime::now();

    // The store opens cleanly and still has at least what a reader had seen.
    let (code, out, err) = ctrwatch(&[
        OsStr::new("query"),
        OsStr::new("--op"),
        OsStr::new("unlink"),
        OsStr::new("--limit"),
        OsStr::new("1000000"),
        OsStr::new("--store"),
        store_arg,
        OsStr::new("--json"),
    ]);
    assert_eq!(code, 0, "store after kill -9: {err}");
    let after = json_lines(&out).len();
    assert!(after >= seen, "acknowledged events lost: {after} < {seen}");

    // Restart: the downtime since the last heartbeat is recorded as a gap.
    std::thread::sleep(Duration::from_millis(1500));
    let daemon = start_daemon(&root, &store);
    daemon.stop();
    let (code, out, err) = ctrwatch(&[
        OsStr::new("gaps"),
        OsStr::new("--store"),
        store_arg,
        OsStr::new("--json"),
    ]);
    assert_eq!(code, 0, "{err}");
    let gaps = json_lines(&out);
    let downtime = gaps
        .iter()
        .find(|g| s(g, "kind") == "downtime")
        .unwrap_or_else(|| panic!("no downtime gap in {gaps:?}"));
    let killed = humantime::format_rfc3339(killed_at).to_string();
    assert!(
        s(downtime, "from") <= killed.as_str() && s(downtime, "to") >= killed.as_str(),
        "downtime {downtime} does not cover the kill at {killed}"
    );
    let _ = std::fs::remove_dir_all(base);
}
