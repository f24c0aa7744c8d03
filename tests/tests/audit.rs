//! `ctrwatch audit` on a real containerd (the harness's, on a temp root), through the CLI:
//! a clean store after import/run/remove has no findings (exit 0); snapshot and runtime
//! metadata damage injected one at a time is reported once with its image (exit 1); what
//! keeps content alive after its image is gone is explained (information: exit 0); bad input
//! exits 2; `--since-watch` names who damaged a snapshot from `ctrwatch run`'s history.
//!
//! The content-store and layer-replay classes are tested in audit_content.rs and
//! audit_layers.rs.
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

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use tests::{
    Watcher,
    containerd::{BuiltImage, Containerd, Layer},
    ctrwatch, json_lines, temp_dir,
};

const NS: &str = "default";

/// Runs `ctrwatch audit --root ROOT --json EXTRA...`: (exit code, the report).
fn audit(cd: &Containerd, extra: &[&str]) -> (i32, Value) {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("audit"),
        OsStr::new("--root"),
        cd.root().as_os_str(),
        OsStr::new("--json"),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let (code, out, err) = ctrwatch(&args);
    let reports = json_lines(&out);
    assert_eq!(
        reports.len(),
        1,
        "one report per root: {out}\nstderr: {err}"
    );
    (code, reports.into_iter().next().unwrap_or_default())
}

fn findings(report: &Value) -> Vec<Value> {
    report["findings"].as_array().cloned().unwrap_or_default()
}

/// The findings that are problems (not information).
fn problems(report: &Value) -> Vec<Value> {
    findings(report)
        .into_iter()
        .filter(|f| f["severity"] != "info")
        .collect()
}

fn classes(fs: &[Value]) -> Vec<String> {
    fs.iter()
        .map(|f| f["class"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn build(cd: &Containerd, name: &str, tag: &str) -> Result<BuiltImage> {
    let upper = Layer::new()
        .dir("app")
        .file("app/version", format!("{tag}\n"))
        .file("app/data.bin", vec![7u8; 5000]);
    let built = cd.build_image_info(name, &[Layer::base()?, upper])?;
    cd.import(&built.archive, NS)?;
    Ok(built)
}

/// Asserts the audit finds exactly one problem, of `class`, and returns it.
fn one_problem(cd: &Containerd, class: &str) -> Value {
    let (code, report) = audit(cd, &[]);
    let p = problems(&report);
    assert_eq!(
        classes(&p),
        vec![class.to_owned()],
        "expected exactly one {class}: {}",
        serde_json::to_string_pretty(&p).unwrap_or_default()
    );
    assert_eq!(code, 1, "problems found: exit 1");
    p.into_iter().next().unwrap_or_default()
}

fn assert_clean(cd: &Containerd, when: &str) -> Value {
    let (code, report) = audit(cd, &[]);
    let p = problems(&report);
    assert!(
        p.is_empty(),
        "{when}: expected no problems, got {}",
        serde_json::to_string_pretty(&p).unwrap_or_default()
    );
    assert_eq!(code, 0, "{when}: clean store: exit 0");
    report
}

#[test]
fn audit_metadata_classes_on_a_real_containerd() -> Result<()> {
    tests::require_root();
    let cd = Containerd::start()?;
    let keep = "test.local/audit/keep:1";
    let gone = "test.local/audit/gone:1";
    let kept = build(&cd, keep, "keep")?;
    build(&cd, gone, "gone")?;
    cd.run(keep, "audit-run", &["sh", "-c", "echo hi > /tmp/x"])?;
    cd.remove_image(gone)?;
    cd.gc()?;

    // 1. Clean after import, run, remove: no problems, and the text report says so.
    let report = assert_clean(&cd, "after import/run/remove");
    ensure!(
        report["stats"]["snapshots"].as_u64() >= Some(2),
        "the snapshots were checked: {}",
        report["stats"]
    );
    let (code, text, _) = ctrwatch(&[
        OsStr::new("audit"),
        OsStr::new("--root"),
        cd.root().as_os_str(),
    ]);
    ensure!(
        code == 0 && text.contains("clean (exit 0)"),
        "text report: {text}"
    );

    // 1b. Without containerd running: a copy of the root (cp -a keeps whiteout devices and
    //     xattrs) audits clean too, and the audit changes nothing in it (names, sizes, modes,
    //     mtimes, ctimes).
    let copy = cd.dir().join("root-copy");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(cd.root())
        .arg(&copy)
        .status()?;
    ensure!(cp.success(), "cp -a failed");
    let before = tree_state(&copy)?;
    let (code, out, err) = ctrwatch(&[
        OsStr::new("audit"),
        OsStr::new("--root"),
        copy.as_os_str(),
        OsStr::new("--json"),
    ]);
    let copy_report = json_lines(&out).into_iter().next().unwrap_or_default();
    ensure!(
        code == 0 && problems(&copy_report).is_empty(),
        "the copy audits clean: exit {code} {err} {copy_report}"
    );
    ensure!(
        tree_state(&copy)? == before,
        "the audit modified something under {}",
        copy.display()
    );
    std::fs::remove_dir_all(&copy)?;

    // 2. A layer snapshot's directory moved away: critical, with the image and the layer.
    let top = cd.snapshot_dir(NS, &kept.chain_ids[1])?;
    let aside = cd.dir().join("aside");
    std::fs::rename(&top, &aside)?;
    let f = one_problem(&cd, "snapshot-dir-missing");
    assert_eq!(f["severity"], "critical", "{f}");
    assert!(
        str_list(&f["images"]).contains(&format!("{NS}/{keep}")),
        "names the image: {f}"
    );
    assert_eq!(f["layer"], kept.layer_digests[1].as_str(), "{f}");
    assert_eq!(f["path"], top.to_string_lossy().as_ref(), "{f}");
    assert!(
        str_list(&f["remediation"])
            .iter()
            .any(|s| s.contains(&format!("images rm {keep}"))),
        "says how to fix it: {f}"
    );
    std::fs::rename(&aside, &top)?;

    // 3. A directory no snapshot owns.
    let orphan = cd.snapshots_dir().join("9999");
    std::fs::create_dir_all(orphan.join("fs"))?;
    let f = one_problem(&cd, "snapshot-dir-orphan");
    assert_eq!(f["path"], orphan.to_string_lossy().as_ref(), "{f}");
    std::fs::remove_dir_all(&orphan)?;

    // 3b. An active snapshot no container uses (left by a client that prepared it and went
    //     away).
    cd.ctr(&[
        "snapshots",
        "prepare",
        "audit-left-behind",
        &kept.chain_ids[1],
    ])?;
    let f = one_problem(&cd, "snapshot-active-orphan");
    assert_eq!(f["snapshot_key"], "audit-left-behind", "{f}");
    assert!(
        str_list(&f["remediation"])
            .iter()
            .any(|s| s.contains("snapshots --snapshotter overlayfs rm audit-left-behind")),
        "{f}"
    );
    cd.ctr(&["snapshots", "rm", "audit-left-behind"])?;
    cd.gc()?;

    // 4. A CRI-labelled container without CRI's metadata extension (what CRI writes itself).
    cd.ctr(&[
        "containers",
        "create",
        "--label",
        "io.cri-containerd.kind=sandbox",
        keep,
        "audit-fake-sandbox",
    ])?;
    let f = one_problem(&cd, "cri-metadata-missing");
    assert_eq!(f["namespace"], NS, "{f}");
    assert!(
        f["message"]
            .as_str()
            .is_some_and(|m| m.contains("audit-fake-sandbox")),
        "{f}"
    );

    // 5. That container's snapshot removed behind its back: it cannot start. (The
    //    snapshotter's copy goes at the next GC, which the removal itself may trigger: run
    //    one, so that the state is the same every time.)
    cd.ctr(&["snapshots", "rm", "audit-fake-sandbox"])?;
    cd.gc()?;
    let (code, report) = audit(&cd, &[]);
    let p = problems(&report);
    let mut cls = classes(&p);
    cls.sort();
    assert_eq!(
        cls,
        vec!["container-snapshot-missing", "cri-metadata-missing"],
        "{}",
        serde_json::to_string_pretty(&p).unwrap_or_default()
    );
    assert_eq!(code, 1);
    cd.ctr(&["containers", "rm", "audit-fake-sandbox"])?;
    cd.gc()?;
    assert_clean(&cd, "after removing the fake sandbox");

    // 6. Why content survives: a container keeps its image's layers after the image is
    //    removed; a gc.root label keeps a config blob. Information only: exit 0, except the
    //    container whose image is gone (a warning).
    let held = "test.local/audit/held:1";
    let held_built = build(&cd, held, "held")?;
    cd.run_detached(held, "audit-holder", &["/pause"])?;
    let rooted = "test.local/audit/rooted:1";
    let rooted_built = build(&cd, rooted, "rooted")?;
    cd.ctr(&[
        "content",
        "label",
        &rooted_built.config_digest,
        "containerd.io/gc.root=audit",
    ])?;
    cd.remove_image(held)?;
    cd.remove_image(rooted)?;
    cd.gc()?;
    let (code, report) = audit(&cd, &[]);
    let all = findings(&report);
    assert_eq!(
        classes(&problems(&report)),
        vec!["container-image-missing"],
        "{}",
        serde_json::to_string_pretty(&all).unwrap_or_default()
    );
    assert_eq!(code, 1);
    let by_container: Vec<&Value> = all
        .iter()
        .filter(|f| {
            f["class"] == "snapshot-retained"
                && f["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("container audit-holder"))
        })
        .collect();
    assert!(
        by_container.iter().any(|f| f["snapshot_key"]
            .as_str()
            .is_some_and(|k| k.ends_with(&held_built.chain_ids[1]))),
        "the held image's top layer is explained by the container: {}",
        serde_json::to_string_pretty(&all).unwrap_or_default()
    );
    let by_label: Vec<&Value> = all
        .iter()
        .filter(|f| {
            f["class"] == "content-retained" && f["blob"] == rooted_built.config_digest.as_str()
        })
        .collect();
    assert_eq!(by_label.len(), 1, "{all:?}");
    assert!(
        by_label[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("gc.root")),
        "{}",
        by_label[0]
    );
    cd.remove_container("audit-holder")?;
    cd.ctr(&[
        "content",
        "label",
        &rooted_built.config_digest,
        "containerd.io/gc.root=",
    ])?;
    cd.gc()?;
    let report = assert_clean(&cd, "after removing the holders");
    let left: Vec<Value> = findings(&report)
        .into_iter()
        .filter(|f| f["class"] == "content-retained" || f["class"] == "snapshot-retained")
        .collect();
    assert!(left.is_empty(), "nothing left to explain: {left:?}");

    // 7. Scope: --image limits the audit to that image; a wrong name exits 2.
    std::fs::rename(&top, &aside)?;
    let (code, report) = audit(&cd, &["--image", keep]);
    assert_eq!(classes(&problems(&report)), vec!["snapshot-dir-missing"]);
    assert_eq!(code, 1);
    std::fs::rename(&aside, &top)?;
    // A layer file emptied: --image and --snapshot (by directory id) both replay that layer;
    // --content-only does not look at layers.
    let data = top.join("fs/app/data.bin");
    let original = std::fs::read(&data)?;
    std::fs::write(&data, b"")?;
    let top_id = top
        .file_name()
        .and_then(|n| n.to_str())
        .context("snapshot dir name")?
        .to_owned();
    for scope in [["--image", keep], ["--snapshot", top_id.as_str()]] {
        let (code, report) = audit(&cd, &scope);
        let p = problems(&report);
        assert_eq!(
            classes(&p),
            vec!["layer-file-truncated"],
            "{scope:?}: {p:?}"
        );
        assert_eq!(p[0]["image_path"], "/app/data.bin", "{}", p[0]);
        assert_eq!(p[0]["layer"], kept.layer_digests[1].as_str(), "{}", p[0]);
        assert_eq!(code, 1);
    }
    let (code, report) = audit(&cd, &["--content-only"]);
    assert!(problems(&report).is_empty(), "{report}");
    assert_eq!(code, 0);
    std::fs::write(&data, original)?;
    let (code, _, err) = ctrwatch(&[
        OsStr::new("audit"),
        OsStr::new("--root"),
        cd.root().as_os_str(),
        OsStr::new("--image"),
        OsStr::new("no/such:image"),
    ]);
    assert_eq!(code, 2, "unknown image: exit 2 ({err})");
    assert!(err.contains("no/such:image"), "{err}");

    cd.stop()?;
    Ok(())
}

#[test]
fn audit_refuses_what_it_cannot_audit() {
    tests::require_root();
    let dir = temp_dir("audit-bad");
    // Not a containerd root: exit 2 with a clear message.
    let (code, out, err) = ctrwatch(&[
        OsStr::new("audit"),
        OsStr::new("--root"),
        dir.join("missing").as_os_str(),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("not a directory"), "{err}");
    std::fs::create_dir_all(dir.join("empty")).expect("mkdir");
    let (code, _, err) = ctrwatch(&[
        OsStr::new("audit"),
        OsStr::new("--root"),
        dir.join("empty").as_os_str(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("no metadata database"), "{err}");
    // Exclusive scopes: a usage error (clap's exit code 2).
    let (code, _, err) = ctrwatch(&[
        OsStr::new("audit"),
        OsStr::new("--content-only"),
        OsStr::new("--layers-only"),
    ]);
    assert_eq!(code, 2, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--since-watch`: the daemon records a script moving a layer's snapshot away; the audit's
/// finding names the script as the last to touch it.
#[test]
fn audit_since_watch_names_who_damaged_it() -> Result<()> {
    tests::require_root();
    let cd = Containerd::start()?;
    let image = "test.local/audit/watched:1";
    let built = build(&cd, image, "watched")?;
    let top = cd.snapshot_dir(NS, &built.chain_ids[1])?;
    let work = temp_dir("audit-watch");
    let store = work.join("history.db");
    let args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        cd.root().as_os_str().to_owned(),
        "--store".into(),
        store.as_os_str().to_owned(),
    ];
    let daemon = Watcher::start_command(&args);
    let script = work.join("tidy-up.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nmv {} {}\n",
            top.display(),
            work.join("moved").display()
        ),
    )?;
    let status = Command::new("sh").arg(&script).status()?;
    ensure!(status.success(), "script failed");

    // The daemon commits within a fraction of a second; ask until the finding has it (60 s
    // allowed: a loaded machine can hold the daemon back for many).
    let deadline = Instant::now() + Duration::from_secs(60);
    let finding = loop {
        let (_, report) = audit(&cd, &["--since-watch", "--store", path_str(&store)?]);
        let f = problems(&report)
            .into_iter()
            .find(|f| f["class"] == "snapshot-dir-missing");
        if let Some(f) = f.filter(|f| !f["last_touched"].is_null()) {
            break f;
        }
        ensure!(Instant::now() < deadline, "no last_touched: {report}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let last = &finding["last_touched"];
    assert_eq!(last["op"], "rename", "{last}");
    assert_eq!(last["process"]["comm"], "mv", "{last}");
    let parents = str_list(
        &last["process"]["ancestors"]
            .as_array()
            .map(|a| Value::from(a.iter().map(|x| x["comm"].clone()).collect::<Vec<_>>()))
            .unwrap_or_default(),
    );
    assert!(
        parents.iter().any(|p| p == "sh"),
        "the script's shell is a parent: {parents:?}"
    );
    let (_, text, _) = ctrwatch(&[
        OsStr::new("audit"),
        OsStr::new("--root"),
        cd.root().as_os_str(),
        OsStr::new("--since-watch"),
        OsStr::new("--store"),
        store.as_os_str(),
    ]);
    assert!(
        text.contains("last touched:") && text.contains(" mv "),
        "{text}"
    );
    drop(daemon);
    std::fs::rename(work.join("moved"), &top)?;
    cd.stop()?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 temp path")
}

/// Every path under `dir` with its size, mode, mtime and ctime (`find -printf`), sorted.
fn tree_state(dir: &Path) -> Result<String> {
    let out = Command::new("find")
        .arg(dir)
        .args(["-printf", "%p %s %m %T@ %C@\\n"])
        .output()?;
    ensure!(out.status.success(), "find failed");
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    Ok(lines.join("\n"))
}
