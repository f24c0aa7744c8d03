//! `ctrwatch audit`'s content-store checks on a real containerd (the harness's, on a temp
//! root), through the library (`watcher::audit::run` with `--content-only`):
//! - a clean store after import, run and remove has no content findings;
//! - blob damage injected one class at a time (a flipped byte in a layer, a truncated config,
//!   an emptied layer, an orphan, a deleted manifest, a badly named file, a symlink) is reported
//!   exactly once with its class, image and layer; all at once, each once; the remediation of a
//!   damaged layer, run as printed, repairs the store;
//! - ingests left by a real `ctr content ingest` killed mid-transfer (empty, torn, oversized):
//!   the audit's prediction of the next transfer of that ref is checked by doing it with `ctr`
//!   (`unexpected commit digest`, with the very digest predicted; `failed size validation`;
//!   success for an empty ingest);
//! - an interrupted `ctr images import` whose ingest is torn: what the next import does.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use sha2::{Digest, Sha256};
use tests::containerd::{BuiltImage, Containerd, Layer};
use watcher::audit::{self, Finding, Options, Progress, Report, Severity};

const NS: &str = "default";

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Deterministic incompressible bytes (xorshift), so that gzip keeps layers big.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn blob_path(cd: &Containerd, digest: &str) -> PathBuf {
    cd.content_dir()
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Two layers: busybox, and a 256 KiB incompressible file.
fn build(cd: &Containerd, name: &str, seed: u64) -> Result<BuiltImage> {
    build_sized(cd, name, seed, 256 << 10)
}

fn build_sized(cd: &Containerd, name: &str, seed: u64, size: usize) -> Result<BuiltImage> {
    let upper = Layer::new()
        .dir("data")
        .file("data/noise", noise(size, seed));
    cd.build_image_info(name, &[Layer::base()?, upper])
}

fn image(b: &BuiltImage) -> String {
    format!("{NS}/{}", b.name)
}

/// `ctrwatch audit --content-only` of the harness's root.
fn audit_content(cd: &Containerd) -> Result<Report> {
    let mut opts = Options::new(cd.root());
    opts.content_only = true;
    Ok(audit::run(&opts, Progress::hidden())?)
}

/// The content check's classes (`content-retained` is the holders check's, not ours).
fn is_content_class(c: &str) -> bool {
    c.starts_with("blob-") || c.starts_with("ingest-") || c == "content-not-directory"
}

fn content_findings(r: &Report) -> Vec<Finding> {
    r.findings
        .iter()
        .filter(|f| is_content_class(f.class))
        .cloned()
        .collect()
}

fn dump(f: &[Finding]) -> String {
    serde_json::to_string_pretty(f).unwrap_or_else(|e| format!("(cannot print: {e})"))
}

fn fact<'a>(f: &'a Finding, key: &str) -> Option<&'a str> {
    f.facts
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The one finding of `class` among `found`, which must hold nothing else than `allowed`.
fn only<'a>(found: &'a [Finding], class: &str) -> Result<&'a Finding> {
    let of: Vec<&Finding> = found.iter().filter(|f| f.class == class).collect();
    ensure!(
        of.len() == 1,
        "expected exactly one {class} finding, got {}:\n{}",
        of.len(),
        dump(found)
    );
    Ok(of[0])
}

fn expect_exactly(found: &[Finding], classes: &[&str]) -> Result<()> {
    let mut got: Vec<&str> = found.iter().map(|f| f.class).collect();
    got.sort();
    let mut want = classes.to_vec();
    want.sort();
    ensure!(
        got == want,
        "findings {got:?}, expected {want:?}:\n{}",
        dump(found)
    );
    Ok(())
}

fn flip_byte(path: &Path, offset: usize) -> Result<()> {
    let mut data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(offset < data.len(), "{} is too short", path.display());
    data[offset] ^= 0xff;
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

// ---------------------------------------------------------------------------------------------

#[test]
fn clean_store_after_import_run_remove_has_no_content_findings() -> Result<()> {
    let cd = Containerd::start()?;
    let a = build(&cd, "ctrwatch.test/audit-content-a:1", 1)?;
    let b = build(&cd, "ctrwatch.test/audit-content-b:1", 2)?;
    cd.import(&a.archive, NS)?;
    cd.import(&b.archive, NS)?;
    cd.run(&a.name, "audit-content-run", &["/bin/true"])?;
    cd.remove_image(&b.name)?;
    cd.gc()?;
    let report = audit_content(&cd)?;
    let found = content_findings(&report);
    ensure!(found.is_empty(), "clean store:\n{}", dump(&found));
    // Image a: index? no (import records the manifest), manifest, config, two layers.
    ensure!(
        report.stats.blobs >= 4 && report.stats.blob_bytes > 256 << 10,
        "stats: {:?}",
        report.stats
    );
    // The full audit (layer replay on) has no content findings either.
    let full = audit::run(&Options::new(cd.root()), Progress::hidden())?;
    let found = content_findings(&full);
    ensure!(
        found.is_empty(),
        "clean store, full audit:\n{}",
        dump(&found)
    );
    Ok(())
}

/// One way to damage the store, and how to undo it.
struct Case {
    name: &'static str,
    class: &'static str,
    /// Whether the finding names the image (and the layer, when it is one).
    image: bool,
    layer: Option<usize>,
    blob: Option<String>,
    apply: Box<dyn Fn() -> Result<()>>,
    undo: Box<dyn Fn() -> Result<()>>,
}

fn cases(cd: &Containerd, img: &BuiltImage) -> Vec<Case> {
    let save = |p: PathBuf| -> (PathBuf, Vec<u8>) {
        let data = fs::read(&p).unwrap_or_default();
        (p, data)
    };
    let restore = |(p, data): (PathBuf, Vec<u8>)| -> Box<dyn Fn() -> Result<()>> {
        Box::new(move || {
            let _ = fs::remove_file(&p);
            fs::write(&p, &data).with_context(|| format!("restoring {}", p.display()))
        })
    };
    let upper = blob_path(cd, &img.layer_digests[1]);
    let base = blob_path(cd, &img.layer_digests[0]);
    let config = blob_path(cd, &img.config_digest);
    let manifest = blob_path(cd, &img.manifest_digest);
    let orphan_data = noise(10_000, 99);
    let orphan = blob_path(cd, &sha256(&orphan_data));
    let bad_name = cd.content_dir().join("blobs/sha256/not-a-digest.tmp");
    let link_digest = sha256(b"symlink target");
    let link = blob_path(cd, &link_digest);
    vec![
        Case {
            name: "flipped byte in a layer blob",
            class: "blob-digest-mismatch",
            image: true,
            layer: Some(1),
            blob: Some(img.layer_digests[1].clone()),
            apply: {
                let p = upper.clone();
                Box::new(move || flip_byte(&p, 5000))
            },
            undo: restore(save(upper.clone())),
        },
        Case {
            name: "truncated config",
            class: "blob-size-mismatch",
            image: true,
            layer: None,
            blob: Some(img.config_digest.clone()),
            apply: {
                let p = config.clone();
                Box::new(move || {
                    let data = fs::read(&p)?;
                    fs::write(&p, &data[..data.len() / 2])?;
                    Ok(())
                })
            },
            undo: restore(save(config.clone())),
        },
        Case {
            name: "zero-length layer blob",
            class: "blob-zero-length",
            image: true,
            layer: Some(0),
            blob: Some(img.layer_digests[0].clone()),
            apply: {
                let p = base.clone();
                Box::new(move || Ok(fs::write(&p, b"")?))
            },
            undo: restore(save(base.clone())),
        },
        Case {
            name: "orphan blob",
            class: "blob-orphan",
            image: false,
            layer: None,
            blob: Some(sha256(&orphan_data)),
            apply: {
                let p = orphan.clone();
                Box::new(move || Ok(fs::write(&p, &orphan_data)?))
            },
            undo: {
                let p = orphan.clone();
                Box::new(move || Ok(fs::remove_file(&p)?))
            },
        },
        Case {
            name: "deleted manifest blob",
            class: "blob-missing",
            image: true,
            layer: None,
            blob: Some(img.manifest_digest.clone()),
            apply: {
                let p = manifest.clone();
                Box::new(move || Ok(fs::remove_file(&p)?))
            },
            undo: restore(save(manifest.clone())),
        },
        Case {
            name: "badly named file in blobs/sha256",
            class: "blob-bad-name",
            image: false,
            layer: None,
            blob: None,
            apply: {
                let p = bad_name.clone();
                Box::new(move || Ok(fs::write(&p, b"partial")?))
            },
            undo: {
                let p = bad_name.clone();
                Box::new(move || Ok(fs::remove_file(&p)?))
            },
        },
        Case {
            name: "symlink out of the store",
            class: "blob-not-regular-file",
            image: false,
            layer: None,
            blob: Some(link_digest),
            apply: {
                let p = link.clone();
                Box::new(move || Ok(symlink("/etc/passwd", &p)?))
            },
            undo: {
                let p = link.clone();
                Box::new(move || Ok(fs::remove_file(&p)?))
            },
        },
    ]
}

fn check_case(c: &Case, img: &BuiltImage, found: &[Finding]) -> Result<()> {
    let f = only(found, c.class).with_context(|| c.name)?;
    if c.image {
        ensure!(
            f.images == vec![image(img)],
            "{}: images {:?}\n{}",
            c.name,
            f.images,
            dump(found)
        );
    }
    let want_layer = c.layer.map(|i| img.layer_digests[i].clone());
    ensure!(
        f.layer == want_layer,
        "{}: layer {:?}, expected {want_layer:?}",
        c.name,
        f.layer
    );
    ensure!(
        f.blob == c.blob,
        "{}: blob {:?}, expected {:?}",
        c.name,
        f.blob,
        c.blob
    );
    ensure!(f.path.is_some(), "{}: no path", c.name);
    ensure!(!f.remediation.is_empty(), "{}: no remediation", c.name);
    Ok(())
}

#[test]
fn each_blob_corruption_is_reported_once_then_all_at_once() -> Result<()> {
    let cd = Containerd::start()?;
    let img = build(&cd, "ctrwatch.test/audit-content-c:1", 3)?;
    cd.import(&img.archive, NS)?;
    let cases = cases(&cd, &img);
    ensure!(content_findings(&audit_content(&cd)?).is_empty());
    for c in &cases {
        (c.apply)().with_context(|| c.name)?;
        let found = content_findings(&audit_content(&cd)?);
        let res = expect_exactly(&found, &[c.class]).and_then(|_| check_case(c, &img, &found));
        (c.undo)().with_context(|| format!("undoing {}", c.name))?;
        res.with_context(|| c.name)?;
        let after = content_findings(&audit_content(&cd)?);
        ensure!(
            after.is_empty(),
            "after undoing {}:\n{}",
            c.name,
            dump(&after)
        );
    }
    // All at once: each reported once. (The layer blobs differ, so the flipped upper layer and
    // the emptied base layer are two findings.)
    for c in &cases {
        (c.apply)().with_context(|| c.name)?;
    }
    let found = content_findings(&audit_content(&cd)?);
    let classes: Vec<&str> = cases.iter().map(|c| c.class).collect();
    expect_exactly(&found, &classes)?;
    for c in &cases {
        check_case(c, &img, &found)?;
    }
    // With the layer replay on too, the damaged layers are still reported once each.
    let full = audit::run(&Options::new(cd.root()), Progress::hidden())?;
    let full_found = content_findings(&full);
    expect_exactly(&full_found, &classes)?;
    for c in &cases {
        (c.undo)()?;
    }
    ensure!(content_findings(&audit_content(&cd)?).is_empty());
    Ok(())
}

/// Runs the `ctr` commands of a remediation (text after `#` is a comment; `a && b` are two
/// commands); `images pull` is replaced by importing `archive` (there is no registry).
fn run_remediation(cd: &Containerd, f: &Finding, archive: &Path) -> Result<()> {
    for step in &f.remediation {
        let cmd = step.split('#').next().unwrap_or("").trim();
        for part in cmd.split("&&").map(str::trim) {
            if let Some(rest) = part.strip_prefix("ctr -n ") {
                let mut words = rest.split_whitespace();
                let ns = words.next().context("namespace")?;
                let args: Vec<&str> = words.collect();
                if args.starts_with(&["images", "pull"]) {
                    cd.import(archive, ns)?;
                } else {
                    cd.ctr_ns(ns, &args)?;
                }
            } else if let Some(p) = part.strip_prefix("test ! -e ") {
                ensure!(
                    !Path::new(p).exists(),
                    "{p} still exists after {:?}",
                    f.remediation
                );
            }
        }
    }
    Ok(())
}

#[test]
fn remediation_of_damaged_blobs_repairs_the_store() -> Result<()> {
    let cd = Containerd::start()?;
    let img = build(&cd, "ctrwatch.test/audit-content-fix:1", 4)?;
    cd.import(&img.archive, NS)?;
    // A flipped byte in a layer, and a deleted config (its record stays).
    flip_byte(&blob_path(&cd, &img.layer_digests[1]), 100)?;
    fs::remove_file(blob_path(&cd, &img.config_digest))?;
    let found = content_findings(&audit_content(&cd)?);
    expect_exactly(&found, &["blob-digest-mismatch", "blob-missing"])?;
    let missing = only(&found, "blob-missing")?;
    ensure!(missing.severity() == Severity::Error, "{}", dump(&found));
    // Re-importing does not repair the damaged layer: containerd keeps the file it has under
    // that name. (It does write the missing config back: an import writes every blob of the
    // archive, and the local store's commit only refuses when the file exists.)
    cd.import(&img.archive, NS)?;
    let again = content_findings(&audit_content(&cd)?);
    eprintln!(
        "after a plain re-import: {:?}",
        again.iter().map(|f| f.class).collect::<Vec<_>>()
    );
    only(&again, "blob-digest-mismatch")?;
    for f in &again {
        run_remediation(&cd, f, &img.archive).with_context(|| f.class)?;
    }
    let after = content_findings(&audit_content(&cd)?);
    ensure!(after.is_empty(), "after the remediation:\n{}", dump(&after));
    cd.run(&img.name, "audit-content-fixed", &["/bin/true"])?;
    Ok(())
}

#[test]
fn orphan_blobs_and_garbage_collection() -> Result<()> {
    let cd = Containerd::start()?;
    let img = build(&cd, "ctrwatch.test/audit-content-gc:1", 5)?;
    cd.import(&img.archive, NS)?;
    // Collect what the import left for the collector first (its lease's index blob): the
    // collection below must delete no content record.
    cd.gc()?;
    let data = noise(5000, 7);
    let orphan = blob_path(&cd, &sha256(&data));
    fs::write(&orphan, &data)?;
    let found = content_findings(&audit_content(&cd)?);
    let f = only(&found, "blob-orphan")?;
    ensure!(
        fact(f, "garbage collection") == Some("removes it (not referenced)"),
        "{}",
        dump(&found)
    );
    // What containerd 1.6 does with it: a collection that deletes no content record does not
    // sweep the blob files...
    cd.gc()?;
    ensure!(
        orphan.exists(),
        "a GC without content deletions removed the orphan"
    );
    // ... one that deletes a record does.
    cd.remove_image(&img.name)?;
    cd.gc()?;
    ensure!(
        !orphan.exists(),
        "the orphan survived a GC that deleted content"
    );
    Ok(())
}

#[test]
fn layer_blob_gone_with_its_snapshot_present_is_not_a_content_finding() -> Result<()> {
    let cd = Containerd::start()?;
    let img = build(&cd, "ctrwatch.test/audit-content-discard:1", 6)?;
    cd.import(&img.archive, NS)?;
    // As after `discard_unpacked_layers`: the layers module explains it (info), not us.
    fs::remove_file(blob_path(&cd, &img.layer_digests[1]))?;
    let found = content_findings(&audit_content(&cd)?);
    ensure!(found.is_empty(), "{}", dump(&found));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Ingests

/// The `ingest/<dir>` whose `ref` is `<NS>/<seq>/<reference>`.
fn find_ingest(cd: &Containerd, reference: &str) -> Option<PathBuf> {
    let rd = fs::read_dir(cd.content_dir().join("ingest")).ok()?;
    rd.filter_map(Result::ok).map(|e| e.path()).find(|p| {
        fs::read_to_string(p.join("ref")).is_ok_and(|r| {
            let mut parts = r.splitn(3, '/');
            parts.next() == Some(NS) && parts.nth(1) == Some(reference)
        })
    })
}

fn ctr_cmd(cd: &Containerd) -> Command {
    let mut c = Command::new(cd.ctr_bin());
    c.arg("--address")
        .arg(cd.address())
        .arg("--namespace")
        .arg(NS)
        .env_remove("CONTAINERD_NAMESPACE");
    c
}

/// `ctr content ingest --expected-digest D --expected-size N REF`, fed the first bytes of the
/// blob through a pipe, then killed once containerd has written them: a real interrupted
/// transfer. Returns the ingest directory.
fn interrupted_ingest(
    cd: &Containerd,
    reference: &str,
    blob: &[u8],
    sent: usize,
) -> Result<PathBuf> {
    let mut child = ctr_cmd(cd)
        .args(["content", "ingest", "--expected-digest"])
        .arg(sha256(blob))
        .arg("--expected-size")
        .arg(blob.len().to_string())
        .arg(reference)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning ctr content ingest")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(&blob[..sent])?;
    stdin.flush()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let dir = loop {
        if let Some(dir) = find_ingest(cd, reference)
            && fs::metadata(dir.join("data")).is_ok_and(|m| m.len() == sent as u64)
        {
            break dir;
        }
        if let Some(status) = child.try_wait()? {
            bail!("ctr content ingest ended early ({status})");
        }
        ensure!(
            Instant::now() < deadline,
            "ingest {reference} did not reach {sent} bytes"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill()?;
    child.wait()?;
    drop(stdin);
    // containerd closes its writer when the stream breaks; give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    Ok(dir)
}

/// Resumes the transfer of `reference` the way a client does: `ctr content ingest` with the
/// whole blob on stdin from a regular file (seekable: ctr seeks past what is already there).
fn resume(cd: &Containerd, reference: &str, blob: &[u8], tmp: &Path) -> Result<Output> {
    let file = tmp.join(format!("blob-{}", reference.replace(['/', ':'], "_")));
    fs::write(&file, blob)?;
    let out = ctr_cmd(cd)
        .args(["content", "ingest", "--expected-digest"])
        .arg(sha256(blob))
        .arg("--expected-size")
        .arg(blob.len().to_string())
        .arg(reference)
        .stdin(fs::File::open(&file)?)
        .output()
        .context("ctr content ingest")?;
    Ok(out)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

#[test]
fn interrupted_ingests_and_what_the_next_transfer_does() -> Result<()> {
    let cd = Containerd::start()?;
    let tmp = cd.dir().join("blobs-for-ingest");
    fs::create_dir_all(&tmp)?;
    let size = 4 << 20;

    // 1. Empty: killed before its first byte.
    let empty = noise(size, 11);
    let r_empty = format!("layer-{}", sha256(&empty));
    let dir = interrupted_ingest(&cd, &r_empty, &empty, 0)?;
    let found = content_findings(&audit_content(&cd)?);
    let f = only(&found, "ingest-zero-length")?;
    expect_exactly(&found, &["ingest-zero-length"])?;
    ensure!(f.severity() == Severity::Info, "{}", dump(&found));
    ensure!(f.path.as_deref() == Some(&*dir.to_string_lossy()));
    ensure!(fact(f, "next pull") == Some("succeeds (restarts at byte 0)"));
    let out = resume(&cd, &r_empty, &empty, &tmp)?;
    ensure!(
        out.status.success(),
        "resuming an empty ingest failed: {}",
        stderr(&out)
    );
    ensure!(blob_path(&cd, &sha256(&empty)).exists() && !dir.exists());

    // 2. Torn and complete: all bytes sent, killed before the commit, one byte flipped.
    let torn = noise(size, 12);
    let r_torn = format!("layer-{}", sha256(&torn));
    let dir = interrupted_ingest(&cd, &r_torn, &torn, size)?;
    flip_byte(&dir.join("data"), 1000)?;
    let mut wrong = torn.clone();
    wrong[1000] ^= 0xff;
    let found = content_findings(&audit_content(&cd)?);
    let f = only(&found, "ingest-torn")?;
    expect_exactly(&found, &["ingest-torn"])?;
    ensure!(f.severity() == Severity::Critical, "{}", dump(&found));
    ensure!(fact(f, "next pull") == Some("fails: unexpected commit digest"));
    ensure!(f.blob.as_deref() == Some(&*sha256(&torn)) && f.layer == f.blob);
    // The message names the digest containerd will compute.
    ensure!(f.message.contains(&sha256(&wrong)), "{}", f.message);
    for _ in 0..2 {
        // Every retry fails the same way: the data is never re-downloaded.
        let out = resume(&cd, &r_torn, &torn, &tmp)?;
        let err = stderr(&out);
        ensure!(!out.status.success(), "resuming a torn ingest succeeded");
        let want = format!(
            "unexpected commit digest {}, expected {}",
            sha256(&wrong),
            sha256(&torn)
        );
        ensure!(err.contains(&want), "ctr said {err:?}, expected {want:?}");
    }
    // The fix: remove the ingest (containerd keeps running), then the transfer succeeds.
    fs::remove_dir_all(&dir)?;
    let out = resume(&cd, &r_torn, &torn, &tmp)?;
    ensure!(
        out.status.success(),
        "after removing the ingest: {}",
        stderr(&out)
    );

    // 3. Torn prefix, blob present: the bytes differ from the blob's first MiB.
    let prefix = noise(size, 13);
    let r_prefix = format!("layer-{}", sha256(&prefix));
    let dir = interrupted_ingest(&cd, &r_prefix, &prefix, 1 << 20)?;
    flip_byte(&dir.join("data"), 77)?;
    // The blob arrives under another ref (as another pull of the same content would).
    let out = resume(&cd, "other-ref", &prefix, &tmp)?;
    ensure!(out.status.success(), "{}", stderr(&out));
    let found = content_findings(&audit_content(&cd)?);
    let f = only(&found, "ingest-torn")?;
    // The blob is recorded but no image uses it: it is also not an orphan (it has a record).
    expect_exactly(&found, &["ingest-torn"])?;
    ensure!(f.severity() == Severity::Warning, "{}", dump(&found));
    ensure!(
        fact(f, "next pull").is_some_and(|s| s.starts_with("succeeds while the blob")),
        "{}",
        dump(&found)
    );
    // As predicted: fine while the blob is there, then `unexpected commit digest`.
    let out = resume(&cd, &r_prefix, &prefix, &tmp)?;
    ensure!(out.status.success(), "{}", stderr(&out));
    cd.ctr(&["content", "rm", &sha256(&prefix)])?;
    cd.gc()?;
    let out = resume(&cd, &r_prefix, &prefix, &tmp)?;
    ensure!(
        !out.status.success() && stderr(&out).contains("unexpected commit digest"),
        "after the blob was removed: {}",
        stderr(&out)
    );
    fs::remove_dir_all(find_ingest(&cd, &r_prefix).context("ingest gone")?)?;

    // 4. Oversized: more data than `total`.
    let big = noise(size, 14);
    let r_big = format!("layer-{}", sha256(&big));
    let dir = interrupted_ingest(&cd, &r_big, &big, 1 << 20)?;
    let mut data = big.clone();
    data.extend_from_slice(&noise(1000, 15));
    fs::write(dir.join("data"), &data)?;
    let found = content_findings(&audit_content(&cd)?);
    let f = only(&found, "ingest-oversized")?;
    expect_exactly(&found, &["ingest-oversized"])?;
    let want = format!("failed size validation: {} != {}", data.len(), big.len());
    ensure!(
        fact(f, "next pull") == Some(&*format!("fails: {want}")),
        "{}",
        dump(&found)
    );
    let out = resume(&cd, &r_big, &big, &tmp)?;
    ensure!(
        !out.status.success() && stderr(&out).contains(&want),
        "ctr said {:?}, expected {want:?}",
        stderr(&out)
    );
    fs::remove_dir_all(&dir)?;

    // 5. A correct prefix is not a finding, and resumes.
    let good = noise(size, 16);
    let r_good = format!("layer-{}", sha256(&good));
    interrupted_ingest(&cd, &r_good, &good, 1 << 20)?;
    let found = content_findings(&audit_content(&cd)?);
    ensure!(found.is_empty(), "{}", dump(&found));
    let out = resume(&cd, &r_good, &good, &tmp)?;
    ensure!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

/// `ctr images import` writes each blob under the ref `tar-blobs/sha256/<hex>` without an
/// expected digest: a torn ingest is committed under a wrong digest and the import fails; the
/// import after that succeeds. An empty one, or a correct prefix, is harmless.
#[test]
fn interrupted_import_then_torn_or_empty_ingest() -> Result<()> {
    let cd = Containerd::start()?;
    // ctr copies in 1 MiB pieces (content.Copy fills its buffer before writing): the layer must
    // be larger for a piece of it to land before the import is killed.
    let img = build_sized(&cd, "ctrwatch.test/audit-content-import:1", 8, 3 << 20)?;
    let archive = fs::read(&img.archive)?;
    let layer = &img.layer_digests[1];
    let reference = format!("tar-blobs/sha256/{}", layer.trim_start_matches("sha256:"));
    // Where the upper layer's bytes start in the archive.
    let mut ar = tar::Archive::new(&archive[..]);
    let mut start = None;
    for e in ar.entries()? {
        let e = e?;
        if e.path()?
            .to_string_lossy()
            .ends_with(layer.trim_start_matches("sha256:"))
        {
            start = Some(e.raw_file_position() as usize);
        }
    }
    let start = start.context("layer not in the archive")?;

    for case in ["torn", "empty", "prefix"] {
        let partial = case != "empty";
        let mut child = ctr_cmd(&cd)
            .args(["images", "import", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        // 1.5 MiB into the layer (or just its header, for the empty ingest).
        let upto = if partial { start + (3 << 19) } else { start };
        stdin.write_all(&archive[..upto])?;
        stdin.flush()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let dir = loop {
            if let Some(d) = find_ingest(&cd, &reference)
                && fs::metadata(d.join("data")).is_ok_and(|m| !partial || m.len() > 0)
            {
                // Let the bytes still in flight land.
                std::thread::sleep(Duration::from_millis(300));
                break d;
            }
            ensure!(Instant::now() < deadline, "no ingest {reference}");
            std::thread::sleep(Duration::from_millis(20));
        };
        child.kill()?;
        child.wait()?;
        drop(stdin);
        std::thread::sleep(Duration::from_millis(300));
        let found = content_findings(&audit_content(&cd)?);
        if case == "torn" {
            flip_byte(&dir.join("data"), 10)?;
            // The layer blob is not in the store and the data is partial: nothing can tell
            // torn bytes from good ones offline, so the audit says nothing.
            ensure!(found.is_empty(), "{}", dump(&found));
            let out = ctr_cmd(&cd)
                .args(["images", "import"])
                .arg(&img.archive)
                .output()?;
            let err = stderr(&out);
            ensure!(
                !out.status.success()
                    && err.contains(&format!("content digest {layer}: not found")),
                "import over a torn ingest: {err}"
            );
        } else if case == "prefix" {
            // A correct prefix: nothing to report; the import below resumes it.
            ensure!(found.is_empty(), "{}", dump(&found));
        } else {
            let f = only(&found, "ingest-zero-length")?;
            ensure!(
                f.blob.as_deref() == Some(layer.as_str()),
                "{}",
                dump(&found)
            );
        }
        // The next import succeeds (after the failed one, for the torn ingest).
        cd.import(&img.archive, NS).with_context(|| case)?;
        cd.remove_image(&img.name)?;
        cd.gc()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Pulls, from a registry of our own

/// A minimal read-only registry (Docker registry HTTP API v2, plain HTTP) serving one image's
/// manifest (by tag and digest) and blobs, with `Range` support as containerd uses it to
/// resume. Blob `stall` is sent only up to `stall_at` bytes, then the connection hangs until
/// the registry is dropped or `stall` is cleared: a pull interrupted mid-layer.
struct Registry {
    addr: std::net::SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<RegistryState>>,
}

#[derive(Default)]
struct RegistryState {
    manifest: String,
    blobs: BTreeMap<String, Vec<u8>>,
    stall: Option<(String, usize)>,
    stopped: bool,
}

impl Registry {
    fn serve(img: &BuiltImage) -> Result<Registry> {
        let mut blobs = BTreeMap::new();
        let mut ar = tar::Archive::new(fs::File::open(&img.archive)?);
        for e in ar.entries()? {
            let mut e = e?;
            let path = e.path()?.to_string_lossy().into_owned();
            if let Some(hex) = path.strip_prefix("blobs/sha256/")
                && !hex.is_empty()
            {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data)?;
                blobs.insert(format!("sha256:{hex}"), data);
            }
        }
        let state = std::sync::Arc::new(std::sync::Mutex::new(RegistryState {
            manifest: img.manifest_digest.clone(),
            blobs,
            ..RegistryState::default()
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if st.lock().map(|s| s.stopped).unwrap_or(true) {
                    break;
                }
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = Registry::handle(conn, &st);
                });
            }
        });
        Ok(Registry { addr, state })
    }

    fn stall(&self, digest: &str, at: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.stall = Some((digest.to_string(), at));
        }
    }

    fn unstall(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.stall = None;
        }
    }

    /// `127.0.0.1:PORT/audit/pull:1`.
    fn reference(&self) -> String {
        format!("{}/audit/pull:1", self.addr)
    }

    fn handle(
        mut conn: std::net::TcpStream,
        st: &std::sync::Mutex<RegistryState>,
    ) -> std::io::Result<()> {
        use std::fmt::Write as _;
        use std::io::{BufRead, BufReader};
        let mut rd = BufReader::new(conn.try_clone()?);
        loop {
            let mut line = String::new();
            if rd.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut range: Option<usize> = None;
            loop {
                let mut h = String::new();
                if rd.read_line(&mut h)? == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("range")
                {
                    range = v
                        .trim()
                        .strip_prefix("bytes=")
                        .and_then(|r| r.split('-').next())
                        .and_then(|n| n.parse().ok());
                }
            }
            let (status, ctype, body, digest, stall) = {
                let s = st.lock().map_err(|_| std::io::Error::other("poisoned"))?;
                if path == "/v2/" || path == "/v2" {
                    (200, "application/json", b"{}".to_vec(), None, None)
                } else if let Some(rest) = path.strip_prefix("/v2/audit/pull/manifests/") {
                    let d = if rest.starts_with("sha256:") {
                        rest.to_string()
                    } else {
                        s.manifest.clone()
                    };
                    match s.blobs.get(&d) {
                        Some(b) => (
                            200,
                            "application/vnd.oci.image.manifest.v1+json",
                            b.clone(),
                            Some(d),
                            None,
                        ),
                        None => (404, "text/plain", Vec::new(), None, None),
                    }
                } else if let Some(d) = path.strip_prefix("/v2/audit/pull/blobs/") {
                    match s.blobs.get(d) {
                        Some(b) => {
                            let stall = s
                                .stall
                                .as_ref()
                                .filter(|(sd, _)| sd == d)
                                .map(|(_, at)| *at);
                            (
                                200,
                                "application/octet-stream",
                                b.clone(),
                                Some(d.to_string()),
                                stall,
                            )
                        }
                        None => (404, "text/plain", Vec::new(), None, None),
                    }
                } else {
                    (404, "text/plain", Vec::new(), None, None)
                }
            };
            let start = range.unwrap_or(0);
            let mut head = String::new();
            if status == 200 && range.is_some() && start >= body.len() {
                head.push_str("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\n\r\n");
                conn.write_all(head.as_bytes())?;
                continue;
            }
            let partial = status == 200 && range.is_some();
            let _ = write!(
                head,
                "HTTP/1.1 {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n",
                if partial {
                    "206 Partial Content"
                } else if status == 200 {
                    "200 OK"
                } else {
                    "404 Not Found"
                },
                body.len().saturating_sub(start)
            );
            if partial {
                let _ = write!(
                    head,
                    "Content-Range: bytes {start}-{}/{}\r\n",
                    body.len() - 1,
                    body.len()
                );
            }
            if let Some(d) = &digest {
                let _ = write!(head, "Docker-Content-Digest: {d}\r\n");
            }
            head.push_str("\r\n");
            conn.write_all(head.as_bytes())?;
            if method == "HEAD" {
                continue;
            }
            let body = &body[start.min(body.len())..];
            if let Some(at) = stall {
                conn.write_all(&body[..at.min(body.len())])?;
                conn.flush()?;
                // Hang until released, then drop the connection mid-body.
                while st.lock().is_ok_and(|s| s.stall.is_some() && !s.stopped) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return Ok(());
            }
            conn.write_all(body)?;
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.stopped = true;
            s.stall = None;
        }
        // Wake the accept loop so that it sees `stopped`.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

fn pull(cd: &Containerd, reg: &Registry) -> Result<Output> {
    Ok(ctr_cmd(cd)
        .args(["images", "pull", "--plain-http"])
        .arg(reg.reference())
        .output()?)
}

/// `ctr images pull` killed while the layer was downloading; the ingest it left is then
/// emptied, made torn-and-complete, or torn with the blob present, and the audit's prediction
/// of the next pull is checked by pulling.
#[test]
fn interrupted_pulls_and_what_the_next_pull_does() -> Result<()> {
    let cd = Containerd::start()?;
    let img = build_sized(&cd, "ctrwatch.test/audit-content-pull:1", 21, 3 << 20)?;
    let reg = Registry::serve(&img)?;
    let layer = img.layer_digests[1].clone();
    let reference = format!("layer-{layer}");
    let layer_bytes = fs::read(&img.archive).and_then(|_| {
        reg.state
            .lock()
            .map(|s| s.blobs.get(&layer).cloned().unwrap_or_default())
            .map_err(|_| std::io::Error::other("poisoned"))
    })?;

    // A pull stalled 1.5 MiB into the upper layer (ctr writes 1 MiB pieces), then killed.
    let stalled_pull = |at: usize, want: u64| -> Result<PathBuf> {
        reg.stall(&layer, at);
        let mut child = ctr_cmd(&cd)
            .args(["images", "pull", "--plain-http"])
            .arg(reg.reference())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let dir = loop {
            // Only the stalled layer left in flight: the config and the base layer are
            // committed (else the kill would leave their ingests too).
            let ingests = fs::read_dir(cd.content_dir().join("ingest"))
                .map(|rd| rd.count())
                .unwrap_or(0);
            let others_done = blob_path(&cd, &img.config_digest).exists()
                && blob_path(&cd, &img.layer_digests[0]).exists();
            if let Some(d) = find_ingest(&cd, &reference)
                && fs::metadata(d.join("data")).is_ok_and(|m| m.len() == want)
                && ingests == 1
                && others_done
            {
                break d;
            }
            if let Some(status) = child.try_wait()? {
                bail!("ctr pull ended early ({status})");
            }
            ensure!(
                Instant::now() < deadline,
                "the pull's ingest did not reach {want} bytes"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        child.kill()?;
        child.wait()?;
        reg.unstall();
        std::thread::sleep(Duration::from_millis(300));
        Ok(dir)
    };
    let forget = |name: &str| -> Result<()> {
        cd.ctr(&["images", "rm", name])?;
        let leases = cd.ctr(&["leases", "ls", "--quiet"])?;
        for l in leases.lines().filter(|l| !l.trim().is_empty()) {
            cd.ctr(&["leases", "delete", l.trim()])?;
        }
        cd.gc()
    };

    // 1. Empty ingest (stalled before the first byte): the next pull succeeds.
    let dir = stalled_pull(0, 0)?;
    let found = content_findings(&audit_content(&cd)?);
    let f = only(&found, "ingest-zero-length")?;
    ensure!(f.layer.as_deref() == Some(&*layer) && f.namespace.as_deref() == Some(NS));
    let out = pull(&cd, &reg)?;
    ensure!(
        out.status.success(),
        "pull after an empty ingest: {}",
        stderr(&out)
    );
    ensure!(!dir.exists());
    forget(&reg.reference())?;

    // 2. A correct partial ingest: no finding, and the pull resumes (Range) and succeeds.
    stalled_pull(3 << 19, 1 << 20)?;
    let found = content_findings(&audit_content(&cd)?);
    ensure!(found.is_empty(), "{}", dump(&found));
    let out = pull(&cd, &reg)?;
    ensure!(out.status.success(), "resumed pull: {}", stderr(&out));
    forget(&reg.reference())?;

    // 3. Complete but torn (all bytes there, one wrong, not committed): predicted exactly.
    let dir = stalled_pull(3 << 19, 1 << 20)?;
    let mut wrong = layer_bytes.clone();
    wrong[4242] ^= 0xff;
    fs::write(dir.join("data"), &wrong)?;
    let found = content_findings(&audit_content(&cd)?);
    let f = only(&found, "ingest-torn")?;
    expect_exactly(&found, &["ingest-torn"])?;
    ensure!(fact(f, "next pull") == Some("fails: unexpected commit digest"));
    ensure!(
        f.images.is_empty() && f.layer.as_deref() == Some(&*layer),
        "{}",
        dump(&found)
    );
    let want = format!(
        "unexpected commit digest {}, expected {layer}",
        sha256(&wrong)
    );
    ensure!(f.message.contains(&want), "{}", f.message);
    for _ in 0..2 {
        let out = pull(&cd, &reg)?;
        ensure!(
            !out.status.success() && stderr(&out).contains(&want),
            "pull over a torn ingest: {:?}, expected {want:?}",
            stderr(&out)
        );
    }
    fs::remove_dir_all(&dir)?;
    let out = pull(&cd, &reg)?;
    ensure!(
        out.status.success(),
        "after removing the ingest: {}",
        stderr(&out)
    );
    forget(&reg.reference())?;

    // 4. Torn partial ingest while the blob is present (imported meanwhile): harmless until the
    //    blob is removed, then the pull fails.
    let dir = stalled_pull(3 << 19, 1 << 20)?;
    flip_byte(&dir.join("data"), 99)?;
    cd.import(&img.archive, NS)?;
    let found = content_findings(&audit_content(&cd)?);
    let f = only(&found, "ingest-torn")?;
    expect_exactly(&found, &["ingest-torn"])?;
    ensure!(f.severity() == Severity::Warning, "{}", dump(&found));
    ensure!(f.images == vec![image(&img)], "{}", dump(&found));
    let out = pull(&cd, &reg)?;
    ensure!(
        out.status.success(),
        "pull with the blob present: {}",
        stderr(&out)
    );
    cd.ctr(&["content", "rm", &layer])?;
    cd.gc()?;
    let out = pull(&cd, &reg)?;
    ensure!(
        !out.status.success() && stderr(&out).contains("unexpected commit digest"),
        "pull after the blob was removed: {}",
        stderr(&out)
    );
    Ok(())
}
