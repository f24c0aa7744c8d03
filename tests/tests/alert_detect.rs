//! The detections end to end: the real daemon (`ctrwatch run --config`) watching a real
//! containerd (tests/src/containerd.rs), real foreign writers, a real webhook receiver on
//! 127.0.0.1.
//!
//! * a foreign unlink of a committed layer's `fs/pause` gives a critical `foreign-change`
//!   alert carrying the file (host and inner path), the layer, the image, the verdict and its
//!   reason, the process (argv with its secrets masked, parent chain), the history command;
//! * a foreign opaque marker set on a committed layer directory gives `opaque-leak`;
//! * containerd's own import (unpacking 20 000 files and an opaque directory) gives none;
//! * a script deleting 20 000 files of a committed layer gives ONE grouped alert whose last
//!   revision has count 20 000;
//! * a disabled rule gives nothing, while an enabled one on the same events does;
//! * a foreign rename from elsewhere in the root into a committed layer gives
//!   `foreign-change` on the destination; containerd's own renames give none.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    collections::BTreeSet,
    ffi::{OsStr, OsString},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    Watcher,
    containerd::{BuiltImage, Containerd, Layer},
    ctrwatch,
    receiver::{Mode, Receiver},
    temp_dir, wait_history,
};

const FSOP: &str = env!("CARGO_BIN_EXE_fsop");
const NS: &str = "default";
const BULK: usize = 20_000;
/// Scenarios are spaced by more than the group window, so that each opens its own group
/// (they all run in the test's process tree).
const WINDOW_S: u64 = 6;

fn start_daemon(cd: &Containerd, dir: &Path, config_body: &str) -> (Watcher, PathBuf) {
    let config = dir.join("ctrwatch.toml");
    std::fs::write(&config, config_body).expect("config");
    let store = dir.join("events.db");
    let args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        cd.root().into(),
        "--root".into(),
        cd.state().into(),
        "--store".into(),
        store.as_os_str().to_owned(),
        "--config".into(),
        config.into(),
    ];
    (Watcher::start_command(&args), store)
}

fn config(r: &Receiver, extra: &str) -> String {
    format!(
        "[alerts]\ngroup_window = \"{WINDOW_S}s\"\n\n[rules.heartbeat]\nenabled = false\n\n{extra}\n\
         [[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
        r.url("/hook")
    )
}

/// Every alert revision the receiver got, as bodies.
fn bodies(r: &Receiver) -> Vec<Value> {
    r.received()
        .into_iter()
        .filter(|x| x.path() == "/hook")
        .map(|x| x.json())
        .collect()
}

fn of_rule<'a>(all: &'a [Value], rule: &str) -> Vec<&'a Value> {
    all.iter().filter(|b| b["rule"] == rule).collect()
}

fn wait_bodies(r: &Receiver, what: &str, timeout: Duration, pred: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let all = bodies(r);
        if pred(&all) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; received:\n{}",
            all.iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn image(cd: &Containerd, name: &str) -> BuiltImage {
    let base = Layer::base().expect("base layer");
    let mut upper = Layer::new().dir("opq").file("opq/kept", "x\n").dir("bulk");
    for i in 0..BULK {
        upper = upper.file(format!("bulk/f{i:05}"), "");
    }
    cd.build_image_info(name, &[base, upper]).expect("image")
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

fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

#[test]
fn foreign_changes_opaque_markers_and_a_20000_file_script_alert_and_containerd_does_not() {
    tests::require_root();
    let dir = temp_dir("alert-detect");
    let cd = Containerd::start().expect("containerd");
    let r = Receiver::start(Mode::Accept);
    let (daemon, store) = start_daemon(&cd, &dir, &config(&r, ""));

    // 1. containerd's own import: 20 000 files and an opaque-capable directory unpacked.
    let name = "test.local/ctrwatch/detect:1";
    let built = image(&cd, name);
    cd.import(&built.archive, NS).expect("import");
    let base = cd.snapshot_dir(NS, &built.chain_ids[0]).expect("base dir");
    let upper = cd.snapshot_dir(NS, &built.chain_ids[1]).expect("upper dir");
    let pause = base.join("fs/pause");
    let last_bulk = upper.join(format!("fs/bulk/f{:05}", BULK - 1));
    // The unpack is recorded (and so judged) before anything foreign happens.
    let unpacked = wait_history(&store, &last_bulk, "create");
    assert_eq!(unpacked["containerd"]["verdict"], "owner", "{unpacked}");
    std::thread::sleep(Duration::from_secs(WINDOW_S + 1));

    // 2. A foreign unlink of the committed base layer's /pause, with secrets in its argv.
    let unlinked_at = Instant::now();
    run(Command::new("python3").args([
        OsStr::new("-c"),
        OsStr::new("import os, sys; os.unlink(sys.argv[1])"),
        pause.as_os_str(),
        OsStr::new("--token"),
        OsStr::new("s3cr3t-t0ken"),
        OsStr::new("password=hunter2"),
    ]));
    wait_bodies(
        &r,
        "foreign-change for /pause",
        Duration::from_secs(60),
        |all| {
            of_rule(all, "foreign-change")
                .iter()
                .any(|b| b["file"]["inner_path"] == "/pause")
        },
    );
    if let Some(first) = r.received().iter().find(|x| {
        x.path() == "/hook"
            && x.json()["rule"] == "foreign-change"
            && x.json()["file"]["inner_path"] == "/pause"
    }) {
        // From before the unlink to the receiver: the settle delay (2 s) is most of it.
        eprintln!(
            "latency: the unlink of /pause to its alert at the receiver: {:.0} ms",
            first
                .at
                .saturating_duration_since(unlinked_at)
                .as_secs_f64()
                * 1000.0
        );
    }
    std::thread::sleep(Duration::from_secs(WINDOW_S + 1));

    // 3. A foreign opaque marker on a committed layer directory.
    let opq = upper.join("fs/opq");
    run(Command::new(FSOP).args([
        OsStr::new("setxattr"),
        opq.as_os_str(),
        OsStr::new("trusted.overlay.opaque"),
        OsStr::new("y"),
    ]));
    wait_bodies(&r, "opaque-leak for /opq", Duration::from_secs(60), |all| {
        !of_rule(all, "opaque-leak").is_empty()
    });
    std::thread::sleep(Duration::from_secs(WINDOW_S + 1));

    // 4. A script deleting 20 000 files of the committed layer, in two processes.
    let bulk = upper.join("fs/bulk");
    let script = write_script(
        &dir,
        "bulk-clean.sh",
        &format!(
            "#!/bin/bash\nset -e\nfind '{0}' -name 'f0*' -type f -delete\nfind '{0}' -name 'f1*' -type f -delete\n",
            bulk.display()
        ),
    );
    run(&mut Command::new(&script));
    let grouped = |all: &[Value]| -> Vec<Value> {
        of_rule(all, "foreign-change")
            .into_iter()
            .filter(|b| {
                b["sample_paths"].as_array().is_some_and(|p| {
                    p.iter()
                        .any(|p| p.as_str().is_some_and(|p| p.contains("/fs/bulk/")))
                })
            })
            .cloned()
            .collect()
    };
    wait_bodies(
        &r,
        "the grouped alert's final revision (count 20000)",
        Duration::from_secs(120),
        |all| grouped(all).iter().any(|b| b["count"] == BULK as u64),
    );
    // Nothing more arrives for it (the window is closed).
    std::thread::sleep(Duration::from_secs(3));
    let all = bodies(&r);
    drop(daemon);

    // The unlink of /pause: critical, with everything the event knows.
    let pause_alerts: Vec<&Value> = of_rule(&all, "foreign-change")
        .into_iter()
        .filter(|b| b["file"]["inner_path"] == "/pause")
        .collect();
    let ids: BTreeSet<&str> = pause_alerts
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 1, "{pause_alerts:#?}");
    let a = pause_alerts[0];
    eprintln!("the /pause alert: {a:#}");
    assert_eq!(a["severity"], "critical", "{a:#}");
    assert_eq!(a["count"], 1, "{a:#}");
    assert_eq!(a["file"]["path"], pause.to_string_lossy().as_ref());
    let c = &a["containerd"];
    assert_eq!(c["verdict"], "foreign", "{a:#}");
    assert!(c["reason"].as_str().is_some_and(|s| !s.is_empty()), "{a:#}");
    assert_eq!(c["layer_digest"], built.layer_digests[0].as_str(), "{a:#}");
    assert!(
        c["images"]
            .as_array()
            .is_some_and(|i| i.iter().any(|i| i == name)),
        "{a:#}"
    );
    assert_eq!(c["snapshot_kind"], "committed", "{a:#}");
    assert!(c["snapshot_id"].is_u64(), "{a:#}");
    let p = &a["process"];
    let argv: Vec<&str> = p["cmdline"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        argv.contains(&"import os, sys; os.unlink(sys.argv[1])"),
        "{a:#}"
    );
    assert!(argv.contains(&"--token") && argv.contains(&"***"), "{a:#}");
    assert!(argv.contains(&"password=***"), "{a:#}");
    let text = a.to_string();
    assert!(
        !text.contains("s3cr3t-t0ken") && !text.contains("hunter2"),
        "a secret reached the alert: {a:#}"
    );
    assert!(
        p["exe"].as_str().is_some_and(|e| e.contains("python")),
        "{a:#}"
    );
    assert!(
        p["ancestors"].as_array().is_some_and(|v| !v.is_empty()),
        "{a:#}"
    );
    assert!(p.get("uid").is_some(), "{a:#}");
    let command = a["command"].as_str().unwrap_or_default();
    assert!(
        command.starts_with(&format!("ctrwatch history {} --since ", pause.display())),
        "{command}"
    );
    assert!(
        a["summary"]
            .as_str()
            .is_some_and(|s| s.contains("deleted /pause")
                && s.contains(&built.layer_digests[0])
                && s.contains("foreign")),
        "{a:#}"
    );
    assert_eq!(a["events"][0]["op"], "unlink", "{a:#}");
    // The command it names shows the story.
    let argv_cmd: Vec<String> = shell_words(command);
    let (code, out, err) = ctrwatch(
        &argv_cmd[1..]
            .iter()
            .map(OsStr::new)
            .chain([OsStr::new("--store"), store.as_os_str()])
            .collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "{command}: {err}");
    assert!(out.contains("unlink"), "{command}:\n{out}");

    // The opaque marker.
    let leaks = of_rule(&all, "opaque-leak");
    let ids: BTreeSet<&str> = leaks.iter().filter_map(|b| b["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "{leaks:#?}");
    let l = leaks[0];
    assert_eq!(l["severity"], "critical", "{l:#}");
    assert_eq!(l["file"]["inner_path"], "/opq", "{l:#}");
    assert_eq!(
        l["containerd"]["layer_digest"],
        built.layer_digests[1].as_str()
    );
    assert_eq!(l["events"][0]["op"], "setxattr");

    // The script: one alert id, its last revision counts all 20 000, at most 3 revisions.
    let g = grouped(&all);
    let ids: BTreeSet<&str> = g.iter().filter_map(|b| b["id"].as_str()).collect();
    assert_eq!(
        ids.len(),
        1,
        "{} revisions: {:#?}",
        g.len(),
        g.iter()
            .map(|b| (&b["id"], &b["rev"], &b["count"]))
            .collect::<Vec<_>>()
    );
    let last = g
        .iter()
        .max_by_key(|b| b["rev"].as_u64())
        .expect("revisions");
    eprintln!(
        "the script's alert: revisions (rev, count) {:?}; last summary: {}",
        g.iter()
            .map(|b| (b["rev"].as_u64(), b["count"].as_u64()))
            .collect::<Vec<_>>(),
        last["summary"]
    );
    assert_eq!(last["count"], BULK as u64, "{last:#}");
    assert_eq!(last["severity"], "critical");
    assert!(g.len() <= 3, "{} revisions", g.len());
    assert_eq!(last["sample_paths"].as_array().map(Vec::len), Some(10));
    assert!(
        last["query_command"]
            .as_str()
            .is_some_and(|q| q.starts_with("ctrwatch query --pid ")),
        "{last:#}"
    );

    // containerd's import judged nothing: every foreign-change alert is one of the above
    // (the opaque marker's own setxattr is a foreign change too, a warning).
    for b in of_rule(&all, "foreign-change") {
        assert_eq!(b["containerd"]["verdict"], "foreign", "{b:#}");
        assert_ne!(b["process"]["pid"], cd.pid(), "{b:#}");
    }
    let fc_ids: BTreeSet<&str> = of_rule(&all, "foreign-change")
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    assert_eq!(fc_ids.len(), 3, "pause, the marker's setxattr, the script");
    cd.stop().expect("containerd stop");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_disabled_rule_gives_nothing() {
    tests::require_root();
    let dir = temp_dir("alert-detect-disabled");
    let cd = Containerd::start().expect("containerd");
    let r = Receiver::start(Mode::Accept);
    let (daemon, store) = start_daemon(
        &cd,
        &dir,
        &config(&r, "[rules.foreign-change]\nenabled = false\n"),
    );
    let name = "test.local/ctrwatch/detect-off:1";
    let built = cd
        .build_image_info(
            name,
            &[Layer::base().expect("base"), Layer::new().dir("opq")],
        )
        .expect("image");
    cd.import(&built.archive, NS).expect("import");
    let base = cd.snapshot_dir(NS, &built.chain_ids[0]).expect("base dir");
    let upper = cd.snapshot_dir(NS, &built.chain_ids[1]).expect("upper dir");
    let pause = base.join("fs/pause");
    let opq = upper.join("fs/opq");
    run(Command::new(FSOP).args([OsStr::new("unlink"), pause.as_os_str()]));
    run(Command::new(FSOP).args([
        OsStr::new("setxattr"),
        opq.as_os_str(),
        OsStr::new("trusted.overlay.opaque"),
        OsStr::new("y"),
    ]));
    // The enabled rule on the same run fires: the disabled one's silence is its setting.
    wait_bodies(&r, "opaque-leak", Duration::from_secs(60), |all| {
        !of_rule(all, "opaque-leak").is_empty()
    });
    let unlinked = wait_history(&store, &pause, "unlink");
    assert_eq!(unlinked["containerd"]["verdict"], "foreign", "{unlinked}");
    // Well past the settle delay of anything the unlink could have raised.
    std::thread::sleep(Duration::from_secs(4));
    let all = bodies(&r);
    drop(daemon);
    assert!(
        of_rule(&all, "foreign-change").is_empty(),
        "a disabled rule alerted: {all:#?}"
    );
    cd.stop().expect("containerd stop");
    let _ = std::fs::remove_dir_all(dir);
}

/// A foreign `mv ROOT/tmp-x …/snapshots/N/fs/pause` (a rename from elsewhere inside the same
/// root into a committed layer) changes layer N: `foreign-change` judges the destination
/// (the first version judged the rename by its old path, outside every layer, and said
/// nothing). containerd's own renames (its import: snapshot directories, blobs from ingest/)
/// stay silent.
#[test]
fn a_foreign_rename_into_a_committed_layer_alerts_and_containerds_renames_do_not() {
    tests::require_root();
    let dir = temp_dir("alert-detect-rename");
    let cd = Containerd::start().expect("containerd");
    let r = Receiver::start(Mode::Accept);
    let (daemon, store) = start_daemon(&cd, &dir, &config(&r, ""));
    let name = "test.local/ctrwatch/detect-rename:1";
    let built = cd
        .build_image_info(
            name,
            &[Layer::base().expect("base"), Layer::new().dir("data")],
        )
        .expect("image");
    cd.import(&built.archive, NS).expect("import");
    let base = cd.snapshot_dir(NS, &built.chain_ids[0]).expect("base dir");
    let pause = base.join("fs/pause");
    // containerd's import is recorded (its renames among it), then well past the settle
    // delay: nothing.
    let hex = built.config_digest.strip_prefix("sha256:").expect("sha256");
    let config_blob = cd.content_dir().join("blobs/sha256").join(hex);
    let renamed_in = wait_history(&store, &config_blob, "rename");
    assert_eq!(renamed_in["containerd"]["verdict"], "owner", "{renamed_in}");
    std::thread::sleep(Duration::from_secs(WINDOW_S + 1));
    let quiet = bodies(&r);
    assert!(
        of_rule(&quiet, "foreign-change").is_empty(),
        "containerd's import alerted: {quiet:#?}"
    );

    // A foreign process moves a file of its own from the root into the layer's fs/.
    let tmp = cd.root().join("tmp-ctrwatch-x");
    std::fs::write(&tmp, b"not the pause binary\n").expect("tmp file");
    run(Command::new("python3").args([
        OsStr::new("-c"),
        OsStr::new("import os, sys; os.rename(sys.argv[1], sys.argv[2])"),
        tmp.as_os_str(),
        pause.as_os_str(),
    ]));
    wait_bodies(
        &r,
        "foreign-change for the rename onto /pause",
        Duration::from_secs(60),
        |all| {
            of_rule(all, "foreign-change")
                .iter()
                .any(|b| b["file"]["path"] == pause.to_string_lossy().as_ref())
        },
    );
    // And from outside every root (same file system): the alert names the destination, not
    // the source outside (the defect: the object described the destination, the alert's
    // file was the source).
    let outside = cd
        .root()
        .parent()
        .expect("containerd root's parent")
        .join(format!("ctrwatch-outside-{}", std::process::id()));
    std::fs::write(&outside, b"from outside the root\n").expect("outside file");
    let dropped_in = base.join("fs/dropped-in");
    run(Command::new("python3").args([
        OsStr::new("-c"),
        OsStr::new("import os, sys; os.rename(sys.argv[1], sys.argv[2])"),
        outside.as_os_str(),
        dropped_in.as_os_str(),
    ]));
    // (Both renames are by one process tree: within the group window the second folds into
    // the first's alert, so it is looked for among the sampled paths and events.)
    let samples = |b: &Value, p: &Path| {
        b["sample_paths"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == p.to_string_lossy().as_ref()))
    };
    wait_bodies(
        &r,
        "foreign-change for the rename from outside the root",
        Duration::from_secs(60),
        |all| {
            of_rule(all, "foreign-change")
                .iter()
                .any(|b| samples(b, &dropped_in))
        },
    );
    let all = bodies(&r);
    drop(daemon);
    let fc = of_rule(&all, "foreign-change");
    assert!(
        fc.iter()
            .all(|b| b["file"]["path"] != outside.to_string_lossy().as_ref()
                && !samples(b, &outside)),
        "an alert names the source outside the root: {fc:#?}"
    );
    let event = fc
        .iter()
        .filter_map(|b| b["events"].as_array())
        .flatten()
        .find(|e| e["new_path"] == dropped_in.to_string_lossy().as_ref())
        .expect("the rename from outside among the alert's events");
    assert_eq!(event["containerd"]["of_new_path"], true, "{event:#}");
    assert_eq!(event["containerd"]["verdict"], "foreign", "{event:#}");
    let a = fc
        .iter()
        .find(|b| b["file"]["path"] == pause.to_string_lossy().as_ref())
        .expect("the alert");
    assert_eq!(a["severity"], "critical", "{a:#}");
    assert_eq!(a["file"]["inner_path"], "/pause", "{a:#}");
    let c = &a["containerd"];
    assert_eq!(c["verdict"], "foreign", "{a:#}");
    assert_eq!(c["snapshot_kind"], "committed", "{a:#}");
    assert_eq!(c["of_new_path"], true, "{a:#}");
    assert_eq!(a["details"]["op"], "rename", "{a:#}");
    assert!(
        fc.iter().all(|b| b["containerd"]["verdict"] == "foreign"),
        "only the foreign rename: {fc:#?}"
    );
    cd.stop().expect("containerd stop");
    let _ = std::fs::remove_dir_all(dir);
}

/// Splits a command as `alert.command` writes it (words, or single-quoted words).
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            '\\' if !quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ' ' if !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}
