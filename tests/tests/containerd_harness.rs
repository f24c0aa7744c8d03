//! The containerd harness itself (tests/src/containerd.rs) against the machine's real
//! containerd, runc and overlayfs: an offline-built two-layer image is imported and unpacked
//! into overlayfs snapshots (whiteout and opaque directory as the kernel expects them),
//! containers run, removal + GC empty the store, and teardown leaves nothing behind even when
//! containerd was killed with a container running.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};
use tests::containerd::{Containerd, Layer, LayerEntry, get_xattr, is_whiteout, mounts_under};

const NS: &str = "default";
const OPAQUE: &str = "trusted.overlay.opaque";

fn blob(cd: &Containerd, digest: &str) -> PathBuf {
    cd.content_dir()
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn entries(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    Ok(names)
}

#[test]
fn image_unpacks_into_overlay_snapshots_runs_and_is_collected() -> Result<()> {
    tests::require_root();
    let t0 = Instant::now();
    let cd = Containerd::start()?;
    eprintln!(
        "containerd {} pid {} in {} ({:?})",
        cd.exe().display(),
        cd.pid(),
        cd.dir().display(),
        t0.elapsed()
    );
    ensure!(cd.exe().ends_with("containerd"), "exe {:?}", cd.exe());
    ensure!(cd.meta_db().is_file() && cd.content_dir().is_dir() && cd.snapshots_dir().is_dir());
    ensure!(cd.address().starts_with(cd.dir()) && cd.root().starts_with(cd.dir()));
    ensure!(cd.state().starts_with(cd.dir()));

    // Two layers: the second deletes a file of the first (whiteout) and replaces a directory's
    // content (opaque directory).
    let base = Layer::base()?
        .file("etc/gone", "deleted by the upper layer\n")
        .dir("data")
        .file("data/old", "hidden by the opaque upper dir\n");
    let upper = Layer::new()
        .whiteout("etc/gone")
        .opaque("data")
        .file("data/new", "upper\n")
        .file("etc/added", "added\n")
        .entry(LayerEntry::Dir {
            path: "labelled".into(),
            mode: 0o755,
            xattrs: vec![("user.ctrwatch".into(), b"1".to_vec())],
        });
    let image = "test.local/ctrwatch/harness:1";
    let built = cd.build_image_info(image, &[base, upper])?;
    cd.import(&built.archive, NS)?;
    ensure!(cd.ctr(&["images", "ls", "-q"])?.lines().any(|l| l == image));
    for d in built
        .layer_digests
        .iter()
        .chain([&built.config_digest, &built.manifest_digest])
    {
        ensure!(blob(&cd, d).is_file(), "content blob {d} missing");
    }

    // Snapshots: one committed snapshot per layer, keyed by chain id, each in its own dir.
    let snaps = cd.snapshots(NS)?;
    eprintln!("snapshots after import: {snaps:#?}");
    ensure!(snaps.len() == 2, "expected 2 snapshots: {snaps:?}");
    let find = |key: &str| {
        snaps
            .iter()
            .find(|s| s.key == key)
            .with_context(|| format!("no snapshot {key} in {snaps:?}"))
    };
    let lower = find(&built.chain_ids[0])?;
    let top = find(&built.chain_ids[1])?;
    ensure!(lower.kind == "Committed" && top.kind == "Committed");
    ensure!(lower.parent.is_none() && top.parent.as_deref() == Some(lower.key.as_str()));
    let lower_fs = lower.dir.clone().context("lower dir")?.join("fs");
    let top_fs = top.dir.clone().context("top dir")?.join("fs");
    ensure!(lower_fs != top_fs);
    ensure!(cd.snapshot_dir(NS, &top.key)?.join("fs") == top_fs);

    // Base layer: plain files, no overlay markers.
    ensure!(
        lower_fs.join("pause").is_file(),
        "no fs/pause in base layer"
    );
    ensure!(lower_fs.join("bin/busybox").is_file());
    ensure!(fs::read_link(lower_fs.join("bin/sh"))? == Path::new("busybox"));
    ensure!(lower_fs.join("etc/gone").is_file() && lower_fs.join("data/old").is_file());
    ensure!(get_xattr(&lower_fs.join("data"), OPAQUE)?.is_none());

    // Upper layer, unpacked straight into its dir: `.wh.gone` became a 0:0 char device,
    // `data/.wh..wh..opq` became trusted.overlay.opaque=y; the marker files are not written.
    let wh = top_fs.join("etc/gone");
    ensure!(
        is_whiteout(&wh),
        "{} is not a 0:0 char device",
        wh.display()
    );
    ensure!(!top_fs.join("etc/.wh.gone").exists());
    ensure!(
        get_xattr(&top_fs.join("data"), OPAQUE)?.as_deref() == Some(b"y".as_slice()),
        "data is not opaque in the upper snapshot"
    );
    ensure!(!top_fs.join("data/.wh..wh..opq").exists());
    ensure!(entries(&top_fs.join("data"))? == ["new"]);
    ensure!(fs::read_to_string(top_fs.join("etc/added"))? == "added\n");
    // PAX `SCHILY.xattr.*` records are applied as they are.
    ensure!(
        get_xattr(&top_fs.join("labelled"), "user.ctrwatch")?.as_deref() == Some(b"1".as_slice())
    );

    // Containers (runc, through the merged overlay).
    let out = cd.run(image, "harness-run", &["/bin/sh", "-c", "echo hi > /tmp/x"])?;
    ensure!(out.is_empty(), "unexpected output {out:?}");
    let out = cd.run(
        image,
        "harness-view",
        &[
            "/bin/sh",
            "-c",
            "ls /data; test ! -e /etc/gone && echo gone; cat /etc/added",
        ],
    )?;
    ensure!(out == "new\ngone\nadded\n", "merged view: {out:?}");
    let err = cd
        .run(image, "harness-fail", &["/bin/sh", "-c", "exit 3"])
        .err()
        .context("exit 3 was not reported as an error")?;
    ensure!(format!("{err:#}").contains("exit status: 3"), "{err:#}");
    // `run --rm` deleted the containers and their active snapshots.
    let keys: Vec<String> = cd.snapshots(NS)?.into_iter().map(|s| s.key).collect();
    ensure!(keys.len() == 2, "snapshots after the runs: {keys:?}");

    // Removing the image alone does not collect anything in containerd 1.6; gc() does.
    cd.remove_image(image)?;
    ensure!(cd.ctr(&["images", "ls", "-q"])?.trim().is_empty());
    eprintln!(
        "after `images rm`, before gc: {} snapshots, snapshot dirs {:?}",
        cd.snapshots(NS)?.len(),
        entries(&cd.snapshots_dir())?
    );
    let t_gc = Instant::now();
    cd.gc()?;
    eprintln!("gc took {:?}", t_gc.elapsed());
    let left = cd.snapshots(NS)?;
    ensure!(left.is_empty(), "snapshots left after gc: {left:?}");
    let dirs = entries(&cd.snapshots_dir())?;
    ensure!(dirs.is_empty(), "snapshot dirs left after gc: {dirs:?}");
    let blobs = entries(&cd.content_dir().join("blobs/sha256"))?;
    ensure!(blobs.is_empty(), "content left after gc: {blobs:?}");

    let dir = cd.dir().to_path_buf();
    cd.stop()?;
    ensure!(!dir.exists(), "{} left behind", dir.display());
    let took = t0.elapsed();
    eprintln!("whole test: {took:?}");
    ensure!(took < Duration::from_secs(60), "took {took:?}");
    Ok(())
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = fs::read_to_string(e.path().join("stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if cmd.contains(needle) && !zombie {
            found.push((pid, cmd));
        }
    }
    found
}

#[test]
fn teardown_after_containerd_was_killed_leaves_nothing_behind() -> Result<()> {
    tests::require_root();
    let ns = "ctrwatch-other";
    let cd = Containerd::start()?;
    let image = "test.local/ctrwatch/teardown:1";
    let archive = cd.build_image(image, &[Layer::base()?])?;
    cd.import(&archive, ns)?;
    cd.run_detached_ns(ns, image, "sleeper", &["/pause"])?;
    cd.exec_ns(ns, "sleeper", &["/bin/sh", "-c", "echo hi > /tmp/y"])?;

    // The running container: an active snapshot whose fs/ is the overlay's upper dir, merged
    // at the task's rootfs.
    let snaps = cd.snapshots(ns)?;
    let active = snaps
        .iter()
        .find(|s| s.key == "sleeper")
        .with_context(|| format!("no active snapshot: {snaps:?}"))?;
    ensure!(active.kind == "Active", "{active:?}");
    let upper = active.dir.clone().context("active dir")?.join("fs");
    ensure!(fs::read_to_string(upper.join("tmp/y"))? == "hi\n");
    let rootfs = cd.task_rootfs(ns, "sleeper");
    ensure!(
        mounts_under(cd.dir()).contains(&rootfs),
        "{rootfs:?} not mounted"
    );
    ensure!(fs::read_to_string(rootfs.join("tmp/y"))? == "hi\n");
    let address = cd.address().to_string_lossy().into_owned();
    ensure!(
        !processes_mentioning(&address).is_empty(),
        "no shim running for {address}"
    );

    // containerd dies; the shim and the container keep running and the rootfs stays mounted.
    let dir = cd.dir().to_path_buf();
    let cgroup = cd.cgroup_parent().to_string();
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(cd.pid() as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    ensure!(mounts_under(&dir).contains(&rootfs));
    cd.stop()?;

    ensure!(!dir.exists(), "{} left behind", dir.display());
    let mounts = mounts_under(&dir);
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    let procs = processes_mentioning(&address);
    ensure!(procs.is_empty(), "processes left: {procs:?}");
    let sock = Path::new("/run/containerd/s").join(format!(
        "{:x}",
        Sha256::digest(format!("{address}/{ns}/sleeper").as_bytes())
    ));
    ensure!(!sock.exists(), "shim socket {} left", sock.display());
    for hierarchy in fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let p = hierarchy.path().join(&cgroup);
        ensure!(!p.exists(), "cgroup {} left", p.display());
    }
    ensure!(!Path::new("/sys/fs/cgroup").join(&cgroup).exists());
    Ok(())
}

#[test]
fn drop_with_a_running_container_leaves_nothing_behind() -> Result<()> {
    tests::require_root();
    let cd = Containerd::start()?;
    let image = "test.local/ctrwatch/drop:1";
    let archive = cd.build_image(image, &[Layer::base()?])?;
    cd.import(&archive, NS)?;
    cd.run_detached(image, "removed", &["/pause"])?;
    cd.run_detached(image, "running", &["/pause"])?;
    ensure!(cd.exec("running", &["/bin/sh", "-c", "echo ok"])? == "ok\n");
    cd.remove_container("removed")?;
    let keys: Vec<String> = cd.snapshots(NS)?.into_iter().map(|s| s.key).collect();
    ensure!(
        keys.contains(&"running".to_string()) && !keys.contains(&"removed".to_string()),
        "{keys:?}"
    );
    let dir = cd.dir().to_path_buf();
    let address = cd.address().to_string_lossy().into_owned();
    let cgroup = cd.cgroup_parent().to_string();
    ensure!(!processes_mentioning(&address).is_empty());
    drop(cd);
    ensure!(!dir.exists(), "{} left behind", dir.display());
    let mounts = mounts_under(&dir);
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    let procs = processes_mentioning(&address);
    ensure!(procs.is_empty(), "processes left: {procs:?}");
    for hierarchy in fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let p = hierarchy.path().join(&cgroup);
        ensure!(!p.exists(), "cgroup {} left", p.display());
    }
    Ok(())
}
