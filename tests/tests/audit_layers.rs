//! `ctrwatch audit`'s layer replay on a real containerd (the harness's, on a temp root):
//! images imported with gzip, zstd and uncompressed layers (whiteouts and opaque directories
//! in upper layers) give no layer findings, also after a container ran and another image was
//! removed; then the tests damage the snapshot directories one way at a time (and several at
//! once) and expect each problem reported exactly once, with the right class, image, layer and
//! path inside the image; a layer whose blob is gone gets an info and what can still be
//! checked; a damaged blob and a blob holding another tar are findings, not crashes.
//!
//! The audits run `watcher::audit::run` with `--layers-only` ([`audit`]); the clean test also
//! drives `layers::plan`, `layers::replay` (the blob file as the stream) and
//! `layers::check_without_blob` directly ([`audit_direct`]) and expects the same.
//!
//! The benchmark (`bench_layer_replay`, ignored by default) measures replay speed on a layer of
//! 50 000 small files; see docs/audit.md ("Measurements: layer replay").
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::CString,
    fs,
    io::Write,
    os::unix::{
        ffi::OsStrExt,
        fs::{PermissionsExt, symlink},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use tests::containerd::{BuiltImage, Compression, Containerd, Layer, LayerEntry};
use watcher::audit::{Context, Finding, Options, Outcome, Progress, Severity, layers};

const NS: &str = "default";

fn blob_path(cd: &Containerd, digest: &str) -> PathBuf {
    cd.content_dir()
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The layer replay of the whole store: `audit::run` with `--layers-only` (the content pool
/// streams each layer blob through `layers::replay` while hashing it).
fn audit(cd: &Containerd) -> Result<Outcome> {
    let mut opts = Options::new(cd.root());
    opts.layers_only = true;
    let report = watcher::audit::run(&opts, Progress::hidden())?;
    Ok(Outcome {
        findings: report.findings,
        stats: report.stats,
    })
}

/// The same, calling the layer module directly as the content pass does: plan, replay every
/// present blob from its file, check the others without it.
fn audit_direct(cd: &Containerd) -> Result<Outcome> {
    let mut opts = Options::new(cd.root());
    opts.layers_only = true;
    let ctx = Context::load(&opts, Progress::hidden())?;
    let plan = layers::plan(&ctx);
    let mut out = Outcome::default();
    for job in &plan.with_blob {
        let path = blob_path(cd, &job.blob);
        let mut f = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        out.merge(layers::replay(&ctx, job, &mut f));
    }
    for job in &plan.without_blob {
        out.merge(layers::check_without_blob(&ctx, job));
    }
    Ok(out)
}

/// [`audit`]'s findings about image `name` (built as `img`): naming it, or one of its layers.
/// (The whole store is audited rather than `--image`: each test image has layers of its own.)
fn audit_image(cd: &Containerd, name: &str, img: &BuiltImage) -> Result<Outcome> {
    let mut out = audit(cd)?;
    let full = format!("{NS}/{name}");
    out.findings.retain(|f| {
        f.images.contains(&full)
            || f.layer
                .as_ref()
                .is_some_and(|l| img.layer_digests.contains(l))
    });
    Ok(out)
}

fn dump(f: &[Finding]) -> String {
    f.iter()
        .map(|f| {
            format!(
                "  {:?} {} {} [{}] {}",
                f.severity(),
                f.class,
                f.image_path.as_deref().unwrap_or("-"),
                f.layer.as_deref().unwrap_or("-"),
                f.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Findings that are problems (not information).
fn problems(out: &Outcome) -> Vec<Finding> {
    out.findings
        .iter()
        .filter(|f| f.severity() != Severity::Info)
        .cloned()
        .collect()
}

/// A two-layer image whose layers are unique to `tag` (so every test image has its own
/// snapshots): the base (busybox, /pause, /opt/{a,b}) and an upper layer that deletes
/// /etc/group, makes /opt opaque, adds /newdir and a file with a user xattr.
fn image(cd: &Containerd, name: &str, tag: &str, c: Compression) -> Result<BuiltImage> {
    let base = Layer::base()?
        .file("etc/marker", format!("{tag}\n"))
        .dir("opt")
        .file("opt/a", "a\n")
        .file("opt/b", "b\n")
        .compressed(c);
    let upper = Layer::new()
        .whiteout("etc/group")
        .opaque("opt")
        .file("opt/c", format!("{tag} c\n"))
        .dir("newdir")
        .file("newdir/x", "x\n")
        .symlink("newdir/link", "x")
        .entry(LayerEntry::File {
            path: "newdir/attr".into(),
            data: b"with an xattr\n".to_vec(),
            mode: 0o600,
            xattrs: vec![("user.ctrwatch".into(), b"v1".to_vec())],
        })
        .compressed(c);
    let top = Layer::new()
        .file(format!("top-{tag}"), "top\n")
        .compressed(c);
    let built = cd.build_image_info(name, &[base, upper, top])?;
    cd.import(&built.archive, NS)?;
    Ok(built)
}

/// `<snapshot dir>/fs` of layer `i` of `img`.
fn layer_fs(cd: &Containerd, img: &BuiltImage, i: usize) -> Result<PathBuf> {
    Ok(cd.snapshot_dir(NS, &img.chain_ids[i])?.join("fs"))
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("NUL in path")
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> Result<()> {
    let (cp, cn) = (cpath(p)?, CString::new(name)?);
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    ensure!(
        r == 0,
        "setxattr {} {name}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn remove_xattr(p: &Path, name: &str) -> Result<()> {
    let (cp, cn) = (cpath(p)?, CString::new(name)?);
    // SAFETY: valid C strings.
    let r = unsafe { libc::lremovexattr(cp.as_ptr(), cn.as_ptr()) };
    ensure!(
        r == 0,
        "removexattr {} {name}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn mknod_whiteout(p: &Path) -> Result<()> {
    let cp = cpath(p)?;
    // SAFETY: a valid C string.
    let r = unsafe { libc::mknod(cp.as_ptr(), libc::S_IFCHR, 0) };
    ensure!(
        r == 0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn chown(p: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", p.display()))
}

/// One way of damaging a layer: which layer, what to do to its `fs`, what must be reported.
struct Case {
    name: &'static str,
    layer: usize,
    inject: fn(&Path) -> Result<()>,
    class: &'static str,
    image_path: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "missing-pause",
            layer: 0,
            inject: |fs_| Ok(fs::remove_file(fs_.join("pause"))?),
            class: "layer-file-missing",
            image_path: "/pause",
        },
        Case {
            name: "truncated",
            layer: 0,
            inject: |fs_| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(fs_.join("bin/busybox"))?
                    .set_len(0)?;
                Ok(())
            },
            class: "layer-file-truncated",
            image_path: "/bin/busybox",
        },
        Case {
            name: "size",
            layer: 0,
            inject: |fs_| {
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .open(fs_.join("etc/passwd"))?;
                f.write_all(b"evil:x:0:0::/:/bin/sh\n")?;
                Ok(())
            },
            class: "layer-file-size",
            image_path: "/etc/passwd",
        },
        Case {
            name: "mode",
            layer: 0,
            inject: |fs_| {
                Ok(fs::set_permissions(
                    fs_.join("pause"),
                    fs::Permissions::from_mode(0o644),
                )?)
            },
            class: "layer-file-mode",
            image_path: "/pause",
        },
        Case {
            name: "symlink",
            layer: 0,
            inject: |fs_| {
                fs::remove_file(fs_.join("bin/sh"))?;
                Ok(symlink("/nowhere", fs_.join("bin/sh"))?)
            },
            class: "layer-symlink-target",
            image_path: "/bin/sh",
        },
        Case {
            name: "opaque-leak",
            layer: 1,
            inject: |fs_| set_xattr(&fs_.join("newdir"), "trusted.overlay.opaque", b"y"),
            class: "layer-opaque-leak",
            image_path: "/newdir",
        },
        Case {
            name: "opaque-leak-base",
            layer: 0,
            inject: |fs_| set_xattr(&fs_.join("bin"), "trusted.overlay.opaque", b"y"),
            class: "layer-opaque-leak",
            image_path: "/bin",
        },
        Case {
            name: "opaque-missing",
            layer: 1,
            inject: |fs_| remove_xattr(&fs_.join("opt"), "trusted.overlay.opaque"),
            class: "layer-opaque-missing",
            image_path: "/opt",
        },
        Case {
            name: "whiteout-leak",
            layer: 1,
            inject: |fs_| mknod_whiteout(&fs_.join("etc/passwd")),
            class: "layer-whiteout-leak",
            image_path: "/etc/passwd",
        },
        Case {
            name: "whiteout-missing",
            layer: 1,
            inject: |fs_| Ok(fs::remove_file(fs_.join("etc/group"))?),
            class: "layer-whiteout-missing",
            image_path: "/etc/group",
        },
        Case {
            name: "overlay-origin",
            layer: 1,
            inject: |fs_| set_xattr(&fs_.join("newdir"), "trusted.overlay.origin", b"\0\xfb"),
            class: "layer-overlay-xattr",
            image_path: "/newdir",
        },
        Case {
            name: "owner",
            layer: 1,
            inject: |fs_| chown(&fs_.join("newdir/x"), 1000, 1000),
            class: "layer-file-owner",
            image_path: "/newdir/x",
        },
        Case {
            name: "missing-dir",
            layer: 0,
            inject: |fs_| Ok(fs::remove_dir_all(fs_.join("opt"))?),
            class: "layer-file-missing",
            image_path: "/opt",
        },
        Case {
            name: "extra",
            layer: 2,
            inject: |fs_| Ok(fs::write(fs_.join("planted"), "not from the tar\n")?),
            class: "layer-extra-file",
            image_path: "/planted",
        },
        Case {
            name: "type",
            layer: 1,
            inject: |fs_| {
                fs::remove_file(fs_.join("opt/c"))?;
                Ok(fs::create_dir(fs_.join("opt/c"))?)
            },
            class: "layer-file-type",
            image_path: "/opt/c",
        },
        Case {
            name: "xattr",
            layer: 1,
            inject: |fs_| set_xattr(&fs_.join("newdir/attr"), "user.ctrwatch", b"v2"),
            class: "layer-xattr-mismatch",
            image_path: "/newdir/attr",
        },
        Case {
            name: "rewritten",
            layer: 0,
            inject: |fs_| {
                // Same size, new content: only the mtime tells.
                let p = fs_.join("etc/marker");
                let len = fs::metadata(&p)?.len() as usize;
                Ok(fs::write(&p, "x".repeat(len - 1) + "\n")?)
            },
            class: "layer-file-mtime",
            image_path: "/etc/marker",
        },
    ]
}

/// Checks that `found` has exactly one finding of `class` at `image_path`, for image `name`
/// and the layer `digest`.
fn expect_once(
    found: &[Finding],
    class: &str,
    image_path: &str,
    name: &str,
    digest: &str,
) -> Result<()> {
    let hits: Vec<&Finding> = found
        .iter()
        .filter(|f| f.class == class && f.image_path.as_deref() == Some(image_path))
        .collect();
    ensure!(
        hits.len() == 1,
        "expected one {class} at {image_path}, got {}:\n{}",
        hits.len(),
        dump(found)
    );
    let f = hits[0];
    ensure!(
        f.images == [format!("{NS}/{name}")],
        "{class}: images {:?}, expected {NS}/{name}",
        f.images
    );
    ensure!(
        f.layer.as_deref() == Some(digest),
        "{class}: layer {:?}, expected {digest}",
        f.layer
    );
    ensure!(
        f.snapshot
            .as_deref()
            .is_some_and(|s| s.starts_with("overlayfs/"))
            && f.snapshot_key.is_some()
            && f.path.is_some()
            && !f.remediation.is_empty(),
        "{class}: snapshot, key, path or remediation missing: {f:?}"
    );
    Ok(())
}

#[test]
fn clean_images_have_no_layer_findings() -> Result<()> {
    tests::require_root();
    let cd = Containerd::start()?;
    let mut built = Vec::new();
    for (c, tag) in [
        (Compression::Gzip, "gzip"),
        (Compression::Zstd, "zstd"),
        (Compression::None, "plain"),
    ] {
        let name = format!("test.local/ctrwatch/clean-{tag}:1");
        built.push((name.clone(), image(&cd, &name, tag, c)?));
    }
    // Same layers in another compression: one snapshot per layer, two blobs each; only one
    // blob may be replayed (or every problem would be reported twice).
    let twin = "test.local/ctrwatch/clean-gzip-twin:1";
    image(&cd, twin, "zstd", Compression::Gzip)?;
    // A container ran (and was removed), another image was removed and collected.
    cd.run(
        &built[0].0,
        "clean-c1",
        &["sh", "-c", "echo hi > /tmp/x; rm /etc/passwd; ls /opt"],
    )?;
    let gone = "test.local/ctrwatch/clean-removed:1";
    image(&cd, gone, "removed", Compression::Gzip)?;
    cd.remove_image(gone)?;
    cd.gc()?;

    let out = audit(&cd)?;
    ensure!(
        out.findings.is_empty(),
        "findings on a clean store:\n{}",
        dump(&out.findings)
    );
    let direct = audit_direct(&cd)?;
    ensure!(
        direct.findings.is_empty()
            && (
                direct.stats.layers,
                direct.stats.layer_entries,
                direct.stats.layer_bytes
            ) == (
                out.stats.layers,
                out.stats.layer_entries,
                out.stats.layer_bytes
            ),
        "direct replay differs: {:?} vs {:?}\n{}",
        direct.stats,
        out.stats,
        dump(&direct.findings)
    );
    // 3 layers each of 3 images (the twin shares the zstd image's snapshots).
    ensure!(out.stats.layers == 9, "layers replayed: {:?}", out.stats);
    ensure!(out.stats.layer_entries > 9 * 3, "entries: {:?}", out.stats);
    ensure!(out.stats.layer_bytes > 1 << 20, "bytes: {:?}", out.stats);

    let ctx = Context::load(&Options::new(cd.root()), Progress::hidden())?;
    let plan = layers::plan(&ctx);
    ensure!(
        plan.without_blob.is_empty(),
        "without blob: {:?}",
        plan.without_blob
    );
    for (name, b) in &built {
        for (i, d) in b.layer_digests.iter().enumerate() {
            let job = plan
                .with_blob
                .iter()
                .find(|j| j.targets.iter().any(|t| t.chain_id == b.chain_ids[i]));
            let job = job.with_context(|| format!("{name}: layer {i} not planned"))?;
            ensure!(
                job.blob == *d || job.alternatives.contains(d),
                "{name}: layer {i} planned with blob {} (expected {d})",
                job.blob
            );
            ensure!(job.diff_id.as_deref() == Some(b.diff_ids[i].as_str()));
        }
    }
    ensure!(
        plan.with_blob
            .iter()
            .map(|j| j.targets.len())
            .sum::<usize>()
            == 9,
        "every snapshot is replayed once: {:#?}",
        plan.with_blob
    );
    cd.stop()
}

#[test]
fn each_corruption_is_reported_once() -> Result<()> {
    tests::require_root();
    let cd = Containerd::start()?;
    let mut failures = Vec::new();
    for case in cases() {
        let name = format!("test.local/ctrwatch/case-{}:1", case.name);
        let img = image(&cd, &name, case.name, Compression::Gzip)?;
        let fs_ = layer_fs(&cd, &img, case.layer)?;
        let before = audit_image(&cd, &name, &img)?;
        ensure!(
            before.findings.is_empty(),
            "{}: findings before the injection:\n{}",
            case.name,
            dump(&before.findings)
        );
        (case.inject)(&fs_).with_context(|| format!("injecting {}", case.name))?;
        let out = audit_image(&cd, &name, &img)?;
        let found = problems(&out);
        let r = expect_once(
            &found,
            case.class,
            case.image_path,
            &name,
            &img.layer_digests[case.layer],
        )
        .and_then(|()| {
            ensure!(
                found.len() == 1,
                "more than the one finding:\n{}",
                dump(&found)
            );
            Ok(())
        });
        if let Err(e) = r {
            failures.push(format!("{}: {e:#}", case.name));
        }
        if case.class == "layer-file-truncated"
            && !found.iter().any(|f| f.message.contains("file too short"))
        {
            failures.push(format!("{}: message lacks \"file too short\"", case.name));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    cd.stop()
}

#[test]
fn several_corruptions_at_once_are_each_reported_once() -> Result<()> {
    tests::require_root();
    let cd = Containerd::start()?;
    let name = "test.local/ctrwatch/many:1";
    let img = image(&cd, name, "many", Compression::Zstd)?;
    // A bystander image sharing nothing: must stay clean.
    let other = "test.local/ctrwatch/bystander:1";
    image(&cd, other, "bystander", Compression::Gzip)?;
    // Cases that do not touch the same path.
    let picked = [
        "missing-pause",
        "truncated",
        "size",
        "symlink",
        "opaque-leak",
        "opaque-missing",
        "whiteout-leak",
        "whiteout-missing",
        "owner",
        "extra",
    ];
    let all = cases();
    let chosen: Vec<&Case> = all.iter().filter(|c| picked.contains(&c.name)).collect();
    for case in &chosen {
        (case.inject)(&layer_fs(&cd, &img, case.layer)?)
            .with_context(|| format!("injecting {}", case.name))?;
    }
    let out = audit(&cd)?;
    let found = problems(&out);
    // Shown with --nocapture: what a user gets.
    eprintln!("{}", serde_json::to_string_pretty(&found)?);
    for case in &chosen {
        expect_once(
            &found,
            case.class,
            case.image_path,
            name,
            &img.layer_digests[case.layer],
        )
        .with_context(|| case.name)?;
    }
    ensure!(
        found.len() == chosen.len(),
        "{} findings for {} injected problems:\n{}",
        found.len(),
        chosen.len(),
        dump(&found)
    );
    cd.stop()
}

#[test]
fn layer_without_blob_is_an_info_and_still_checked() -> Result<()> {
    tests::require_root();
    let cd = Containerd::start()?;
    let name = "test.local/ctrwatch/noblob:1";
    let img = image(&cd, name, "noblob", Compression::Gzip)?;
    // Discard the upper layer's blob as discard_unpacked_layers would.
    let digest = &img.layer_digests[1];
    cd.ctr(&["content", "rm", digest])?;
    cd.gc()?;
    let path = blob_path(&cd, digest);
    if path.exists() {
        fs::remove_file(&path)?;
    }
    let out = audit_image(&cd, name, &img)?;
    ensure!(
        out.findings.len() == 1,
        "before the injection:\n{}",
        dump(&out.findings)
    );
    let info = &out.findings[0];
    ensure!(
        info.class == "layer-blob-missing"
            && info.severity() == Severity::Info
            && info.layer.as_deref() == Some(digest.as_str())
            && info.images == [format!("{NS}/{name}")],
        "unexpected: {info:?}"
    );
    // What can still be seen without the tar: kernel-only overlay xattrs.
    set_xattr(
        &layer_fs(&cd, &img, 1)?.join("newdir"),
        "trusted.overlay.origin",
        b"\0\xfb",
    )?;
    // And a damaged file nobody can see without the tar goes unnoticed (documented).
    fs::OpenOptions::new()
        .write(true)
        .open(layer_fs(&cd, &img, 1)?.join("newdir/x"))?
        .set_len(0)?;
    let out = audit_image(&cd, name, &img)?;
    let found = problems(&out);
    expect_once(&found, "layer-overlay-xattr", "/newdir", name, digest)?;
    ensure!(found.len() == 1, "{}", dump(&found));
    cd.stop()
}

#[test]
fn damaged_blob_and_foreign_tar_are_findings() -> Result<()> {
    tests::require_root();
    let cd = Containerd::start()?;
    // Bytes of a gzip blob overwritten in the middle: the CRC (or the inflater) fails.
    let name = "test.local/ctrwatch/damaged:1";
    let img = image(&cd, name, "damaged", Compression::Gzip)?;
    let path = blob_path(&cd, &img.layer_digests[0]);
    let mut data = fs::read(&path)?;
    let mid = data.len() / 2;
    for b in &mut data[mid..mid + 64] {
        *b ^= 0x5a;
    }
    fs::write(&path, &data)?;
    let found = problems(&audit_image(&cd, name, &img)?);
    ensure!(
        found.len() == 1 && found[0].class == "layer-blob-damaged",
        "damaged gzip:\n{}",
        dump(&found)
    );

    // A valid blob of another tar where the upper layer's blob was: wrong diffID.
    let name2 = "test.local/ctrwatch/foreign:1";
    let img2 = image(&cd, name2, "foreign", Compression::Zstd)?;
    let foreign = Compression::Zstd.compress(&Layer::new().file("evil", "evil\n").tar()?)?;
    fs::write(blob_path(&cd, &img2.layer_digests[1]), foreign)?;
    let found = problems(&audit_image(&cd, name2, &img2)?);
    ensure!(
        found.len() == 1 && found[0].class == "layer-diffid-mismatch",
        "foreign tar:\n{}",
        dump(&found)
    );
    cd.stop()
}

/// The native snapshotter: each snapshot is a full copy of its parent plus the layer.
#[test]
fn native_snapshotter_layers_are_replayed() -> Result<()> {
    tests::require_root();
    let cd = Containerd::start()?;
    let name = "test.local/ctrwatch/native:1";
    let tag = "native";
    let base = Layer::base()?
        .file("etc/marker", format!("{tag}\n"))
        .dir("opt")
        .file("opt/a", "a\n")
        .file("opt/b", "b\n");
    let upper = Layer::new()
        .whiteout("etc/group")
        .opaque("opt")
        .file("opt/c", "c\n");
    let img = cd.build_image_info(name, &[base, upper])?;
    let archive = img.archive.to_string_lossy().into_owned();
    cd.ctr_ns(
        NS,
        &["images", "import", "--snapshotter", "native", &archive],
    )?;
    let out = audit(&cd)?;
    ensure!(
        out.findings.is_empty(),
        "clean native:\n{}",
        dump(&out.findings)
    );
    ensure!(out.stats.layers == 2, "{:?}", out.stats);

    // The snapshot directories, from the native snapshotter's database.
    let model = watcher::containerd::Model::load(cd.root())?;
    let native = model
        .snapshotters
        .get("native")
        .context("no native snapshotter in the model")?;
    let dir = |chain: &str| -> Result<PathBuf> {
        let b = native
            .snapshots
            .iter()
            .find(|(k, _)| k.ends_with(&format!("/{chain}")))
            .map(|(_, b)| b)
            .with_context(|| format!("no native snapshot {chain}"))?;
        Ok(native.root.join("snapshots").join(b.id.to_string()))
    };
    let (d0, d1) = (dir(&img.chain_ids[0])?, dir(&img.chain_ids[1])?);
    fs::remove_file(d0.join("pause"))?;
    // The layer deletes /etc/group and hides the lower /opt: both back in the copy.
    fs::write(d1.join("etc/group"), "root:x:0:\n")?;
    fs::write(d1.join("opt/a"), "a\n")?;
    // A lower layer's file changed in the copy is not this layer's business.
    fs::write(d1.join("etc/passwd"), "changed\n")?;
    let found = problems(&audit(&cd)?);
    for (class, path, layer) in [
        ("layer-file-missing", "/pause", 0),
        ("layer-whiteout-missing", "/etc/group", 1),
        ("layer-extra-file", "/opt/a", 1),
    ] {
        let hits: Vec<&Finding> = found
            .iter()
            .filter(|f| {
                f.class == class
                    && f.image_path.as_deref() == Some(path)
                    && f.layer.as_deref() == Some(img.layer_digests[layer].as_str())
                    && f.snapshot
                        .as_deref()
                        .is_some_and(|s| s.starts_with("native/"))
            })
            .collect();
        ensure!(hits.len() == 1, "{class} {path}:\n{}", dump(&found));
    }
    ensure!(found.len() == 3, "{}", dump(&found));
    cd.stop()
}

/// Layer replay speed: a layer of `CTRWATCH_BENCH_FILES` (default 50 000) small files in 500
/// directories, imported into containerd, replayed `ROUNDS` times per compression.
/// `cargo test --release -p tests --test audit_layers -- --ignored --nocapture bench_layer_replay`
#[test]
#[ignore = "benchmark: run explicitly (see docs/audit.md)"]
fn bench_layer_replay() -> Result<()> {
    const ROUNDS: usize = 5;
    tests::require_root();
    let files: usize = std::env::var("CTRWATCH_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let cd = Containerd::start()?;
    println!(
        "layer replay: {files} files of 100-1100 bytes in {} directories, {ROUNDS} rounds, warm page cache",
        files / 100
    );
    for (c, tag) in [
        (Compression::Gzip, "gzip"),
        (Compression::Zstd, "zstd"),
        (Compression::None, "uncompressed"),
    ] {
        let mut upper = Layer::new().compressed(c);
        for i in 0..files {
            if i % 100 == 0 {
                upper = upper.dir(format!("d{}", i / 100));
            }
            upper = upper.file(
                format!("d{}/f{i}", i / 100),
                vec![b'x'; 100 + (i * 37) % 1000],
            );
        }
        let base = Layer::base()?
            .file("etc/marker", format!("{tag}\n"))
            .compressed(c);
        let name = format!("test.local/ctrwatch/bench-{tag}:1");
        let t = Instant::now();
        let img = cd.build_image_info(&name, &[base, upper])?;
        cd.import(&img.archive, NS)?;
        let import = t.elapsed();
        let ctx = Context::load(&Options::new(cd.root()), Progress::hidden())?;
        let plan = layers::plan(&ctx);
        let job = plan
            .job_for_blob(&img.layer_digests[1])
            .context("bench layer not planned")?;
        let blob_size = fs::metadata(blob_path(&cd, &job.blob))?.len();
        // The tar alone (decompress, parse, hash; no snapshot to compare with), then the full
        // replay; best of ROUNDS each.
        let tar_only = layers::LayerJob {
            targets: Vec::new(),
            ..job.clone()
        };
        let mut best = [Duration::MAX; 2];
        let mut stats = None;
        for _ in 0..ROUNDS {
            for (i, j) in [&tar_only, job].into_iter().enumerate() {
                let mut f = fs::File::open(blob_path(&cd, &j.blob))?;
                let t = Instant::now();
                let out = layers::replay(&ctx, j, &mut f);
                best[i] = best[i].min(t.elapsed());
                if !out.findings.is_empty() {
                    bail!("findings in the benchmark layer:\n{}", dump(&out.findings));
                }
                if i == 1 {
                    stats = Some(out.stats);
                }
            }
        }
        let stats = stats.context("no round")?;
        let (tar_secs, secs) = (best[0].as_secs_f64(), best[1].as_secs_f64());
        let mib = stats.layer_bytes as f64 / (1 << 20) as f64;
        println!(
            "{tag:>12}: blob {:.1} MiB, tar {mib:.1} MiB, {} entries: replay {secs:.3} s = {:.0} files/s, {:.1} MiB/s of tar; tar alone {tar_secs:.3} s ({:.1} MiB/s) (import {:.1} s)",
            blob_size as f64 / (1 << 20) as f64,
            stats.layer_entries,
            stats.layer_entries as f64 / secs,
            mib / secs,
            mib / tar_secs,
            import.as_secs_f64(),
        );
    }
    cd.stop()
}
