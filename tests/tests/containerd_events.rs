//! `watch --json` on a real containerd (the harness's, on a temp root): every event under the
//! root carries a `containerd` object naming the snapshot, layer, images, blob and the path
//! inside the layer, and an ownership verdict: containerd's own work (import, run, removal,
//! GC) is `owner` (or `container` for a container writing its own layer), a script outside
//! containerd is `foreign`, even when it is named `containerd`.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use tests::{
    Watcher,
    containerd::{BuiltImage, Containerd, Layer},
    process, s,
};

const NS: &str = "default";
const FSOP: &str = env!("CARGO_BIN_EXE_fsop");

fn ctr(v: &Value) -> Option<&Value> {
    v.get("containerd").filter(|c| c.is_object())
}

fn cs<'a>(v: &'a Value, field: &str) -> &'a str {
    ctr(v)
        .and_then(|c| c.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn images(v: &Value) -> Vec<String> {
    ctr(v)
        .and_then(|c| c.get("images"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn ancestors_comms(v: &Value) -> Vec<String> {
    process(v, "ancestors")
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| s(x, "comm").to_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

fn blob_path(cd: &Containerd, digest: &str) -> PathBuf {
    cd.content_dir()
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Writes an executable script `name` in `dir` and runs it directly (so its comm is `name`).
fn run_script(dir: &Path, name: &str, body: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    let out = Command::new(&path)
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    ensure!(
        out.status.success(),
        "{name} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn dump(records: &[Value]) -> String {
    records
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn build(cd: &Containerd, name: &str, marker: &str) -> Result<BuiltImage> {
    let base = Layer::base()?.file("etc/marker", format!("{marker}\n"));
    let upper = Layer::new()
        .file("etc/victim", "content the script truncates\n")
        .dir("layerdir")
        .file("layerdir/f", "x\n");
    cd.build_image_info(name, &[base, upper])
}

#[test]
fn containerd_events_carry_mapping_and_verdict() -> Result<()> {
    tests::require_root();
    let t0 = Instant::now();
    let cd = Containerd::start()?;
    let watcher = Watcher::start(&[cd.root(), cd.state()], &[]);
    eprintln!(
        "containerd pid {} ({}); watcher up after {:?}",
        cd.pid(),
        cd.exe().display(),
        t0.elapsed()
    );

    // 1. containerd's own work: import, run, remove, gc.
    let image = "test.local/ctrwatch/attr:1";
    let built = build(&cd, image, "one")?;
    cd.import(&built.archive, NS)?;
    let base_dir = cd.snapshot_dir(NS, &built.chain_ids[0])?;
    cd.run(
        image,
        "attr-c1",
        &["sh", "-c", "echo hi > /tmp/written-by-container"],
    )?;
    cd.remove_image(image)?;
    cd.gc()?;
    let base_root = base_dir.to_string_lossy().into_owned();
    // The base layer's directory goes with GC: its /pause unlink must still be mapped.
    let pause_removed = watcher.wait_for("GC removing /pause of the base layer", |v| {
        s(v, "op") == "unlink" && s(v, "path").starts_with(&base_root) && cs(v, "path") == "/pause"
    });
    eprintln!("GC unlink of /pause: {pause_removed}");
    ensure!(
        cs(&pause_removed, "layer_digest") == built.layer_digests[0]
            && images(&pause_removed).iter().any(|i| i == image)
            && cs(&pause_removed, "verdict") == "owner",
        "GC's unlink of /pause is not mapped to the removed base layer: {pause_removed}"
    );
    let unpacked = watcher.wait_for("unpack of /pause mapped to the base layer", |v| {
        cs(v, "layer_digest") == built.layer_digests[0]
            && images(v).iter().any(|i| i == image)
            && cs(v, "path") == "/pause"
            && s(v, "op") != "unlink"
    });
    eprintln!("unpack of /pause: {unpacked}");
    std::thread::sleep(Duration::from_millis(500));
    let phase1 = watcher.records();
    let root = cd.root().to_string_lossy().into_owned();
    let state = cd.state().to_string_lossy().into_owned();
    let under: Vec<&Value> = phase1
        .iter()
        .filter(|v| s(v, "path").starts_with(&root) || s(v, "path").starts_with(&state))
        .collect();
    ensure!(!under.is_empty(), "no events under the root");
    let unattributed: Vec<&&Value> = under.iter().filter(|v| ctr(v).is_none()).collect();
    ensure!(
        unattributed.is_empty(),
        "events under the root without a containerd object:\n{}",
        unattributed
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let foreign: Vec<&&Value> = under
        .iter()
        .filter(|v| cs(v, "verdict") != "owner" && cs(v, "verdict") != "container")
        .collect();
    ensure!(
        foreign.is_empty(),
        "containerd's own work reported as foreign:\n{}",
        foreign
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let own_layer = under.iter().find(|v| cs(v, "verdict") == "container");
    eprintln!(
        "{} events under the root, all owner/container; a container write: {}",
        under.len(),
        own_layer.map(|v| v.to_string()).unwrap_or_default()
    );

    // 2. A script outside containerd tampers with another image's storage.
    let image2 = "test.local/ctrwatch/attr:2";
    let built2 = build(&cd, image2, "two")?;
    cd.import(&built2.archive, NS)?;
    let base2 = cd.snapshot_dir(NS, &built2.chain_ids[0])?;
    let upper2 = cd.snapshot_dir(NS, &built2.chain_ids[1])?;
    let blob2 = blob_path(&cd, &built2.layer_digests[1]);
    let pause = base2.join("fs/pause");
    let victim = upper2.join("fs/etc/victim");
    let layerdir = upper2.join("fs/layerdir");
    let scripts = tests::temp_dir("containerd-scripts");
    run_script(
        &scripts,
        "cleanup.sh",
        &format!(
            "#!/bin/bash\nset -e\nrm -f '{}'\ntruncate -s 0 '{}'\necho tampered >> '{}'\n'{FSOP}' setxattr '{}' trusted.overlay.opaque y\n",
            pause.display(),
            victim.display(),
            blob2.display(),
            layerdir.display()
        ),
    )?;
    let by_script = |v: &Value| {
        process(v, "comm").as_str() == Some("cleanup.sh")
            || ancestors_comms(v).iter().any(|c| c == "cleanup.sh")
    };
    let check = |what: &str, v: &Value, layer: Option<&str>| -> Result<()> {
        eprintln!("{what}: {v}");
        ensure!(cs(v, "verdict") == "foreign", "{what} not foreign: {v}");
        ensure!(by_script(v), "{what} not attributed to the script: {v}");
        ensure!(
            images(v).iter().any(|i| i == image2),
            "{what} does not name the image: {v}"
        );
        if let Some(layer) = layer {
            ensure!(
                cs(v, "layer_digest") == layer,
                "{what}: layer {layer} expected: {v}"
            );
        }
        Ok(())
    };
    let pause_s = pause.to_string_lossy().into_owned();
    let v = watcher.wait_for("the script's unlink of /pause", |v| {
        s(v, "op") == "unlink" && s(v, "path") == pause_s
    });
    check("unlink /pause", &v, Some(&built2.layer_digests[0]))?;
    ensure!(cs(&v, "path") == "/pause", "path inside the layer: {v}");
    let victim_s = victim.to_string_lossy().into_owned();
    let v = watcher.wait_for("the script's truncate", |v| {
        s(v, "op") == "truncate" && s(v, "path") == victim_s
    });
    check("truncate /etc/victim", &v, Some(&built2.layer_digests[1]))?;
    let blob_s = blob2.to_string_lossy().into_owned();
    let v = watcher.wait_for("the script's write to a blob", |v| {
        s(v, "path") == blob_s && matches!(s(v, "op"), "open_write" | "modify" | "truncate")
    });
    check("blob write", &v, None)?;
    ensure!(
        cs(&v, "blob_digest") == built2.layer_digests[1],
        "blob digest: {v}"
    );
    let layerdir_s = layerdir.to_string_lossy().into_owned();
    let v = watcher.wait_for("the script's setxattr", |v| {
        s(v, "op") == "setxattr" && s(v, "path") == layerdir_s
    });
    check("setxattr opaque", &v, Some(&built2.layer_digests[1]))?;

    // 3. A script named `containerd` is not containerd.
    let target = cd.root().join("ctrwatch-fake-target");
    std::fs::write(&target, "x")?;
    let fake_dir = scripts.join("bin");
    std::fs::create_dir_all(&fake_dir)?;
    run_script(
        &fake_dir,
        "containerd",
        &format!(
            "#!/usr/bin/python3\nimport os\nos.unlink('{}')\n",
            target.display()
        ),
    )?;
    let target_s = target.to_string_lossy().into_owned();
    let v = watcher.wait_for("the fake containerd's unlink", |v| {
        s(v, "op") == "unlink" && s(v, "path") == target_s
    });
    eprintln!("fake containerd: {v}");
    ensure!(
        process(&v, "comm").as_str() == Some("containerd")
            && cs(&v, "verdict") == "foreign"
            && cs(&v, "reason").contains("not containerd"),
        "a script named containerd passed for containerd: {v}"
    );

    let all = watcher.stop();
    eprintln!("{} records in {:?}", all.len(), t0.elapsed());
    if std::env::var_os("CTRWATCH_DUMP").is_some() {
        eprintln!("{}", dump(&all));
    }
    let _ = std::fs::remove_dir_all(&scripts);
    cd.stop()?;
    Ok(())
}
