//! Content store checks: every blob's digest and size against its name and the metadata,
//! blobs on disk the metadata does not know and the reverse, and ingest directories.
//!
//! The blobs are read once each by a pool of [`Context::threads`] threads ([`hashing`]),
//! largest first. A layer blob whose snapshot is in scope is streamed through
//! [`super::layers::replay`] while it is hashed, so its bytes are read from disk only once.
//! An ingest whose expected blob is present is compared with that blob's prefix through a
//! digest taken at the ingest's length while the blob is hashed (no second read of the blob).
//!
//! Nothing is followed out of the store: every directory and file is reached from the root
//! without following a symlink, files are opened only when they are regular files and without
//! blocking ([`ctrwatch_containerd::fsx`], [`hashing::open_regular`]). Nothing is written. containerd may be running: a blob that disappears while the audit runs (garbage
//! collection) is skipped, not reported.
//!
//! What the next pull of an ingest's ref does was measured with containerd 1.6.20 and `ctr`
//! (docs/audit.md, "Content store"): containerd resumes from the size of `data`, feeding the
//! bytes already there to the digester (`resumeStatus` in content/local/store.go) and skipping
//! as many bytes of the source (`content.Copy`).

pub mod hashing;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::finding::{Finding, Severity};
use super::layers::{self, LayerJob, Plan};
use super::{Context, Outcome, Unit};
use ctrwatch_containerd::fsx;
use ctrwatch_containerd::go::parse_go_time;
use ctrwatch_containerd::metadata::{is_digest, parse_backend_key};
use ctrwatch_containerd::{BlobInfo, BlobRole, SnapshotKind};
use ctrwatch_event::{escape_bytes, escape_path};
use hashing::{FileHash, HashError, HashingReader};

/// An ingest not updated for this long is stale: no client is still writing it, and without a
/// lease containerd's own ingest expiry (24 h, `ingestExpiration`) would have dropped it.
pub const STALE_INGEST: Duration = Duration::from_secs(24 * 3600);
/// sha256 of nothing: the only valid name for a zero-length blob.
pub const EMPTY_SHA256: &str =
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Largest `ref`, `total`, `startedat`, `updatedat` file read.
const MAX_SMALL_FILE: u64 = 4096;
/// Most entries looked at in `ingest/` (a runaway client could leave millions).
const MAX_INGESTS: usize = 100_000;

/// The lease commands that make containerd collect garbage now, synchronously.
fn gc_now(ns: &str) -> String {
    format!(
        "ctr -n {ns} leases create --id ctrwatch-gc && ctr -n {ns} leases delete --sync ctrwatch-gc  \
         # garbage collection now: deletes blob files no namespace records"
    )
}

/// Runs the content-store checks (and the layer replay of layers whose blob is present).
pub fn check(ctx: &Context) -> Outcome {
    let t0 = Instant::now();
    let mut out = Outcome::default();
    let plan = if ctx.scope.layers {
        layers::plan(ctx)
    } else {
        Plan::default()
    };
    let dir = ctx.content_dir();
    let report_content = ctx.scope.content;

    // What is on disk and what the metadata records.
    let mut not_regular = BTreeSet::new();
    let disk = scan_blobs(
        ctx,
        &dir,
        report_content,
        &mut out.findings,
        &mut not_regular,
    );
    let recorded = recorded_blobs(ctx);
    let ingests = if report_content {
        scan_ingests(ctx, &dir, &mut out.findings)
    } else {
        Vec::new()
    };

    // The work: blobs in scope (only layer blobs with --layers-only), ingest data to hash.
    let layer_jobs: BTreeMap<&str, Vec<&LayerJob>> =
        plan.with_blob.iter().fold(BTreeMap::new(), |mut m, j| {
            m.entry(j.blob.as_str()).or_insert_with(Vec::new).push(j);
            m
        });
    let mut items: Vec<Item> = Vec::new();
    for (digest, f) in &disk {
        let in_scope = if report_content {
            ctx.scope.has_blob(digest)
        } else {
            layer_jobs.contains_key(digest.as_str())
        };
        if !in_scope {
            continue;
        }
        let marks = ingests
            .iter()
            .filter(|i| i.expected.as_deref() == Some(digest.as_str()))
            .filter_map(|i| i.data_len.filter(|&n| n <= f.size))
            .collect();
        items.push(Item::Blob {
            digest: digest.clone(),
            path: f.path.clone(),
            size: f.size,
            marks,
            jobs: layer_jobs.get(digest.as_str()).cloned().unwrap_or_default(),
        });
    }
    for (idx, ing) in ingests.iter().enumerate() {
        if ing.in_scope(ctx) && ing.wants_data_hash(&disk) {
            items.push(Item::Ingest {
                idx,
                path: ing.path.join("data"),
                size: ing.data_len.unwrap_or(0),
            });
        }
    }
    items.sort_by_key(|i| std::cmp::Reverse(i.size()));
    ctx.progress
        .phase("content", items.iter().map(Item::size).sum(), Unit::Bytes);
    let results = hashing::run_pool(&items, ctx.threads, |item, buf| work(ctx, item, buf));

    let mut blob_results: BTreeMap<String, Result<FileHash, HashError>> = BTreeMap::new();
    let mut ingest_hashes: BTreeMap<usize, FileHash> = BTreeMap::new();
    let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
    for (item, res) in items.iter().zip(results) {
        match (item, res) {
            (Item::Blob { digest, .. }, Done::Blob(h, replays)) => {
                if let Ok(fh) = &h {
                    out.stats.blobs += 1;
                    out.stats.blob_bytes += fh.size;
                }
                let damaged = h.as_ref().is_ok_and(|fh| fh.digest != *digest);
                for r in replays {
                    if damaged && report_content {
                        // The tar itself is damaged: what the replay found follows from that
                        // and is reported once, as the blob's finding.
                        out.stats.merge(&r.stats);
                        *dropped.entry(digest.clone()).or_default() += r.findings.len();
                    } else {
                        out.merge(r);
                    }
                }
                blob_results.insert(digest.clone(), h);
            }
            (Item::Ingest { idx, .. }, Done::Ingest(Ok(h))) => {
                ingest_hashes.insert(*idx, h);
            }
            (Item::Ingest { idx, .. }, Done::Ingest(Err(e))) if !is_not_found(&e) => {
                let ing = &ingests[*idx];
                let mut f = ingest_finding(ctx, ing, Severity::Warning, "ingest-unreadable");
                f.message = format!("ingest {}: `data` cannot be read: {e}", ing.path.display());
                out.findings
                    .push(f.fact("error", e.to_string()).fix(format!(
                        "check the disk; then remove {}",
                        ing.path.display()
                    )));
            }
            _ => {}
        }
    }

    if report_content {
        let mut all: BTreeSet<&String> = disk.keys().collect();
        all.extend(recorded.keys());
        // A symlink or other non-regular file under a digest's name was reported as such.
        all.retain(|d| !not_regular.contains(*d));
        // The model was read before the blobs were listed: what looks missing or orphaned may
        // have been collected or committed by containerd in between. Ask meta.db again.
        let unsure: BTreeSet<String> = all
            .iter()
            .filter(|d| disk.contains_key(**d) != recorded.contains_key(**d))
            .map(|d| (*d).clone())
            .collect();
        let now = recorded_now(ctx, &unsure);
        for digest in all.into_iter().filter(|d| ctx.scope.has_blob(d)) {
            let info = ctx.model.blob(digest).unwrap_or_else(|| BlobInfo {
                digest: digest.clone(),
                ..BlobInfo::default()
            });
            let rec = recorded.get(digest);
            match (disk.get(digest), rec) {
                (Some(f), Some(rec)) => {
                    if let Some(res) = blob_results.get(digest) {
                        let fnd = check_blob(ctx, &info, f, rec, res).map(|fnd| {
                            match dropped.get(digest).copied().filter(|&n| n > 0) {
                                Some(n) => fnd.fact(
                                    "layer replay",
                                    format!(
                                        "{n} difference(s) with the snapshot, not reported \
                                         separately: they follow from the damaged blob"
                                    ),
                                ),
                                None => fnd,
                            }
                        });
                        out.findings.extend(fnd);
                    }
                }
                (Some(_), None) if now.as_ref().is_some_and(|n| n.contains(digest)) => {
                    // Committed while the audit ran.
                }
                (Some(f), None) => {
                    out.findings
                        .push(orphan(ctx, &info, f, blob_results.get(digest)));
                }
                (None, Some(_)) if now.as_ref().is_some_and(|n| !n.contains(digest)) => {
                    // Collected while the audit ran.
                }
                (None, Some(rec)) => {
                    if let Some(fnd) = missing(ctx, &plan, &info, rec) {
                        out.findings.push(fnd);
                    }
                }
                (None, None) => {}
            }
        }
        for (idx, ing) in ingests.iter().enumerate() {
            if let Some(f) = check_ingest(ctx, ing, ingest_hashes.get(&idx), &blob_results, &disk) {
                out.findings.push(f);
            }
        }
        out.stats.ingests += ingests.len() as u64;
    }

    if ctx.scope.layers {
        for job in &plan.without_blob {
            out.merge(layers::check_without_blob(ctx, job));
        }
    }
    out.stats.content_time += t0.elapsed();
    out
}

// ---------------------------------------------------------------------------------------------
// The hashing work

enum Item<'p> {
    Blob {
        digest: String,
        path: PathBuf,
        size: u64,
        /// Ingest lengths whose prefix digest is wanted.
        marks: Vec<u64>,
        jobs: Vec<&'p LayerJob>,
    },
    Ingest {
        idx: usize,
        path: PathBuf,
        size: u64,
    },
}

impl Item<'_> {
    fn size(&self) -> u64 {
        match self {
            Item::Blob { size, .. } | Item::Ingest { size, .. } => *size,
        }
    }
}

enum Done {
    Blob(Result<FileHash, HashError>, Vec<Outcome>),
    Ingest(Result<FileHash, HashError>),
}

fn work(ctx: &Context, item: &Item<'_>, buf: &mut [u8]) -> Done {
    let root = ctx.model.layout.root.as_path();
    match item {
        Item::Ingest { path, .. } => Done::Ingest(hashing::hash_file(
            root,
            path,
            Vec::new(),
            Some(&ctx.progress),
            buf,
        )),
        Item::Blob {
            path, marks, jobs, ..
        } => {
            let io_err = |source| HashError::Io {
                path: path.clone(),
                source,
            };
            let file = match hashing::open_regular(root, path) {
                Ok(f) => f,
                Err(e) => return Done::Blob(Err(e), Vec::new()),
            };
            let mut replays = Vec::new();
            let Some((first, rest)) = jobs.split_first() else {
                let r = HashingReader::new(file, marks.clone(), Some(&ctx.progress))
                    .finish(buf)
                    .map_err(io_err);
                return Done::Blob(r, replays);
            };
            // The replay reads in small pieces (tar headers, decompressor input): a big
            // buffer below the hasher keeps the disk reads large.
            let mut reader = HashingReader::new(
                BufReader::with_capacity(hashing::READ_SIZE, file),
                marks.clone(),
                Some(&ctx.progress),
            );
            replays.push(layers::replay(ctx, first, &mut reader));
            let r = reader.finish(buf).map_err(io_err);
            // Two plans for one blob should not happen (one job lists all its snapshots); if
            // they do, the others read the blob again rather than being skipped.
            for job in rest {
                match hashing::open_regular(root, path) {
                    Ok(f) => {
                        let mut rd = BufReader::with_capacity(hashing::READ_SIZE, f);
                        replays.push(layers::replay(ctx, job, &mut rd));
                    }
                    Err(e) => log::debug!("layer replay of {}: {e}", job.blob),
                }
            }
            Done::Blob(r, replays)
        }
    }
}

fn is_not_found(e: &HashError) -> bool {
    matches!(e, HashError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

// ---------------------------------------------------------------------------------------------
// Blobs

/// A file in `blobs/sha256/` with a well-formed name.
#[derive(Clone, Debug)]
struct DiskBlob {
    path: PathBuf,
    size: u64,
}

/// The sha256 blobs on disk, by digest. Reports (when `report`) entries that are not regular
/// files with a sha256 name, and never descends into a symlink.
fn scan_blobs(
    ctx: &Context,
    content: &Path,
    report: bool,
    findings: &mut Vec<Finding>,
    not_regular: &mut BTreeSet<String>,
) -> BTreeMap<String, DiskBlob> {
    let mut out = BTreeMap::new();
    let enabled = report && ctx.scope.everything;
    let bad = |findings: &mut Vec<Finding>, path: &Path, class: &'static str, what: String| {
        if enabled {
            findings.push(
                Finding::new(Severity::Warning, class, what)
                    .path(path.display().to_string())
                    .fix(format!(
                        "look at it (`ls -l {0}`), then remove it: `rm {0}` (containerd never \
                         reads it; it was not followed)",
                        path.display()
                    )),
            );
        }
    };
    // The content directory and blobs/ must be real directories: a symlink would lead out of
    // the root.
    let root = ctx.model.layout.root.as_path();
    for d in [content.to_path_buf(), content.join("blobs")] {
        match fsx::lstat_beneath(root, &d) {
            Ok(st) if st.is_dir() => {}
            Ok(st) => {
                bad(
                    findings,
                    &d,
                    "content-not-directory",
                    format!(
                        "{} is a {}, not a directory: the content store was not read",
                        escape_path(&d),
                        st.kind_name()
                    ),
                );
                return out;
            }
            // No content store yet (nothing pulled): nothing to check.
            Err(_) => return out,
        }
    }
    let Ok(algs) = fsx::list_beneath(root, &content.join("blobs")) else {
        return out;
    };
    for (alg, st) in algs {
        let path = content.join("blobs").join(OsStr::from_bytes(&alg));
        let name = String::from_utf8_lossy(&alg).into_owned();
        if !st.is_dir() {
            bad(
                findings,
                &path,
                "blob-not-regular-file",
                format!(
                    "{} in blobs/ is a {}, not an algorithm directory",
                    escape_path(&path),
                    st.kind_name()
                ),
            );
            continue;
        }
        if name != "sha256" {
            // containerd only writes sha256 (its canonical algorithm); other algorithms are
            // listed but not verified.
            if let Ok(entries) = fsx::list_beneath(root, &path) {
                let n = entries.len();
                if n > 0 && report && ctx.scope.everything {
                    findings.push(
                        Finding::new(
                            Severity::Info,
                            "blob-unsupported-algorithm",
                            format!(
                                "{n} blob(s) under blobs/{}/ were not verified (only sha256 is)",
                                escape_bytes(&alg)
                            ),
                        )
                        .path(path.display().to_string()),
                    );
                }
            }
            continue;
        }
        let Ok(entries) = fsx::list_beneath(root, &path) else {
            continue;
        };
        for (file, m) in entries {
            let p = path.join(OsStr::from_bytes(&file));
            let name = String::from_utf8_lossy(&file).into_owned();
            let digest = format!("sha256:{name}");
            if !is_digest(&digest) {
                bad(
                    findings,
                    &p,
                    "blob-bad-name",
                    format!(
                        "{} ({}) in blobs/sha256/ is not named by a sha256 digest: containerd \
                         ignores it",
                        escape_path(&p),
                        m.kind_name()
                    ),
                );
                continue;
            }
            if !m.is_reg() {
                not_regular.insert(digest.clone());
                let kind = m.kind_name();
                if report && ctx.scope.has_blob(&digest) {
                    findings.push(
                        Finding::new(
                            Severity::Error,
                            "blob-not-regular-file",
                            format!(
                                "blob {digest} is a {kind}, not a regular file: it was not \
                                 followed; containerd would read through it"
                            ),
                        )
                        .blob(&digest)
                        .path(p.display().to_string())
                        .images(ctx.images_of_blob(&digest))
                        .fact("type", kind)
                        .fix(format!(
                            "remove it (`rm {}`), then fetch the blob again (see the images' \
                             pull or import)",
                            p.display()
                        )),
                    );
                }
                continue;
            }
            out.insert(
                digest,
                DiskBlob {
                    path: p,
                    size: m.size,
                },
            );
        }
    }
    out
}

/// Per blob digest: (namespace, recorded size) of every namespace's record.
fn recorded_blobs(ctx: &Context) -> BTreeMap<String, Vec<(String, Option<i64>)>> {
    let mut out: BTreeMap<String, Vec<(String, Option<i64>)>> = BTreeMap::new();
    for (ns, n) in &ctx.model.namespaces {
        for (d, b) in &n.blobs {
            out.entry(d.clone()).or_default().push((ns.clone(), b.size));
        }
    }
    out
}

/// Which of `digests` some namespace records now: meta.db read again (a consistent copy, no
/// lock, as for the model). `None` if it cannot be read: then the model's view stands.
fn recorded_now(ctx: &Context, digests: &BTreeSet<String>) -> Option<BTreeSet<String>> {
    if digests.is_empty() {
        return Some(BTreeSet::new());
    }
    ctrwatch_containerd::metadata::blobs_recorded_now(&ctx.model.layout, digests)
}

fn role_name(role: Option<BlobRole>) -> &'static str {
    match role {
        Some(BlobRole::Index) => "index",
        Some(BlobRole::Manifest) => "manifest",
        Some(BlobRole::Config) => "image config",
        Some(BlobRole::Layer) => "layer",
        None => "blob",
    }
}

/// A finding about blob `info` with what it belongs to.
fn blob_finding(
    ctx: &Context,
    info: &BlobInfo,
    severity: Severity,
    class: &'static str,
    message: String,
) -> Finding {
    let mut f = Finding::new(severity, class, message)
        .blob(&info.digest)
        .images(ctx.images_of_blob(&info.digest))
        .fact("role", role_name(info.role));
    if info.role == Some(BlobRole::Layer) {
        f = f.layer(&info.digest);
    }
    if let Some(mt) = &info.media_type {
        f = f.fact("media type", mt.clone());
    }
    if let Some(ns) = info.namespaces.first() {
        f = f.namespace(ns.clone());
    }
    if info.namespaces.len() > 1 {
        f = f.fact("namespaces", info.namespaces.join(", "));
    }
    f
}

/// How to replace a damaged blob: drop every namespace's record, let the garbage collector
/// delete the file (a pull would otherwise adopt the damaged file again: with the default
/// "shared" content policy, containerd takes a blob already on disk with the right size
/// without reading it), then fetch it again.
fn refetch(ctx: &Context, mut f: Finding, info: &BlobInfo, path: &Path) -> Finding {
    for ns in &info.namespaces {
        f = f.fix(format!(
            "ctr -n {ns} content rm {}  # drop the record that makes containerd trust it",
            info.digest
        ));
    }
    let ns = info.namespaces.first().map_or("default", String::as_str);
    f = f.fix(gc_now(ns));
    f = f.fix(format!(
        "test ! -e {}  # the damaged file is gone",
        path.display()
    ));
    let images = ctx.images_of_blob(&info.digest);
    if images.is_empty() {
        f = f.fix("no image uses it: nothing to fetch again".to_string());
    }
    for img in images {
        let (ns, name) = img.split_once('/').unwrap_or(("default", img.as_str()));
        f = f.fix(format!(
            "ctr -n {ns} images pull {name}  # or `ctr -n {ns} images import ARCHIVE` if it \
             came from an archive"
        ));
    }
    f
}

/// What using a damaged blob of this role does.
fn consequence(info: &BlobInfo) -> &'static str {
    match info.role {
        Some(BlobRole::Layer) => {
            "a pull does not fetch it again (containerd trusts a blob by its name); unpacking it \
             (another snapshotter, or after its snapshot is removed) fails: `wrong diff id \
             calculated on extraction` or a decompression error; a push sends damaged content"
        }
        Some(BlobRole::Config) => {
            "a pull does not fetch it again; `ctr run` and the CRI fail to read the image config \
             (JSON error) or get a wrong one"
        }
        Some(BlobRole::Manifest) | Some(BlobRole::Index) => {
            "a pull does not fetch it again; resolving the image fails (JSON error) or finds \
             wrong children, so unpack and run fail"
        }
        None => "a pull of anything referencing it would not fetch it again",
    }
}

fn check_blob(
    ctx: &Context,
    info: &BlobInfo,
    disk: &DiskBlob,
    rec: &[(String, Option<i64>)],
    res: &Result<FileHash, HashError>,
) -> Option<Finding> {
    let path = disk.path.display().to_string();
    let h = match res {
        Ok(h) => h,
        Err(e) if is_not_found(e) => return None, // collected while we ran
        Err(HashError::NotRegular { kind, .. }) => {
            return Some(
                blob_finding(
                    ctx,
                    info,
                    Severity::Error,
                    "blob-not-regular-file",
                    format!("blob {} is a {kind}, not a regular file", info.digest),
                )
                .path(path),
            );
        }
        Err(e) => {
            let f = blob_finding(
                ctx,
                info,
                Severity::Critical,
                "blob-unreadable",
                format!("blob {} cannot be read: {e}", info.digest),
            )
            .path(path)
            .fact("error", e.to_string());
            return Some(refetch(ctx, f, info, &disk.path));
        }
    };
    let recorded: BTreeSet<i64> = rec.iter().filter_map(|(_, s)| *s).collect();
    let size_differs = recorded.iter().any(|&s| s != h.size as i64);
    let recorded_s = recorded
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let matches = h.digest == info.digest;
    let f = if h.size == 0 && info.digest != EMPTY_SHA256 {
        blob_finding(
            ctx,
            info,
            Severity::Critical,
            "blob-zero-length",
            format!(
                "{} blob {} is empty (typically a crash before the data reached the disk); {}",
                role_name(info.role),
                info.digest,
                consequence(info)
            ),
        )
        .fact("recorded size", recorded_s)
    } else if !matches && size_differs {
        blob_finding(
            ctx,
            info,
            Severity::Critical,
            "blob-size-mismatch",
            format!(
                "{} blob {} has {} bytes, the metadata records {recorded_s} (truncated or \
                 extended), and its content does not match its digest; {}",
                role_name(info.role),
                info.digest,
                h.size,
                consequence(info)
            ),
        )
        .fact("recorded size", recorded_s)
        .fact("size on disk", h.size.to_string())
        .fact("actual digest", h.digest.clone())
    } else if !matches {
        blob_finding(
            ctx,
            info,
            Severity::Critical,
            "blob-digest-mismatch",
            format!(
                "{} blob {} does not match its digest (same size, different bytes); {}",
                role_name(info.role),
                info.digest,
                consequence(info)
            ),
        )
        .fact("expected digest", info.digest.clone())
        .fact("actual digest", h.digest.clone())
        .fact("size", h.size.to_string())
    } else if size_differs {
        // The file is right: the record is wrong.
        let f = blob_finding(
            ctx,
            info,
            Severity::Error,
            "blob-metadata-size-wrong",
            format!(
                "blob {} matches its digest, but meta.db records size {recorded_s} for it \
                 ({} on disk): clients that trust the record (ctr content ls, pushes, the \
                 CRI's image size) get a wrong size",
                info.digest, h.size
            ),
        )
        .path(path)
        .fact("recorded size", recorded_s)
        .fact("size on disk", h.size.to_string());
        return Some(refetch(ctx, f, info, &disk.path));
    } else {
        return None;
    };
    Some(refetch(ctx, f.path(path), info, &disk.path))
}

fn orphan(
    ctx: &Context,
    info: &BlobInfo,
    disk: &DiskBlob,
    res: Option<&Result<FileHash, HashError>>,
) -> Finding {
    let images = ctx.images_of_blob(&info.digest);
    let content = match res {
        Some(Ok(h)) if h.digest == info.digest => "matches its digest".to_string(),
        Some(Ok(h)) => format!("does not match its digest (it is {})", h.digest),
        Some(Err(e)) => format!("unreadable: {e}"),
        None => "not read".to_string(),
    };
    let path = disk.path.display().to_string();
    if images.is_empty() {
        Finding::new(
            Severity::Error,
            "blob-orphan",
            format!(
                "blob {} ({} bytes) is on disk but no namespace records it and no image \
                 references it: wasted space. containerd's garbage collector deletes such a \
                 file the next time it sweeps the content store (it sweeps only after some \
                 content record was deleted)",
                info.digest, disk.size
            ),
        )
        .blob(&info.digest)
        .path(path.clone())
        .fact("size", disk.size.to_string())
        .fact("content", content)
        .fact("referenced by", "nothing")
        .fact("garbage collection", "removes it (not referenced)")
        .fix(format!(
            "rm {path}  # safe: no record or image refers to it"
        ))
    } else {
        let ns = images
            .first()
            .and_then(|i| i.split_once('/'))
            .map_or("default", |(ns, _)| ns)
            .to_string();
        let mut f = Finding::new(
            Severity::Error,
            "blob-orphan",
            format!(
                "blob {} is on disk and referenced by {} but no namespace records it: the next \
                 content sweep of the garbage collector deletes it although the image needs it",
                info.digest,
                images.join(", ")
            ),
        )
        .blob(&info.digest)
        .path(path)
        .images(images.clone())
        .namespace(ns)
        .fact("size", disk.size.to_string())
        .fact("content", content)
        .fact(
            "garbage collection",
            "removes it (no record), breaking the images",
        );
        if info.role == Some(BlobRole::Layer) {
            f = f.layer(&info.digest);
        }
        for img in images {
            let (ns, name) = img.split_once('/').unwrap_or(("default", img.as_str()));
            f = f.fix(format!(
                "ctr -n {ns} images pull {name}  # or import its archive again: records the \
                 blob again (with the default shared content policy the file is adopted, not \
                 downloaded)"
            ));
        }
        f
    }
}

/// Whether a committed snapshot of one of the layer's chainIDs exists (any snapshotter).
fn layer_unpacked(ctx: &Context, info: &BlobInfo) -> bool {
    info.chain_ids.iter().any(|chain| {
        ctx.model.snapshotters.values().any(|sn| {
            sn.snapshots.iter().any(|(key, b)| {
                b.kind == SnapshotKind::Committed
                    && (key == chain || parse_backend_key(key).is_some_and(|(_, _, k)| k == chain))
            })
        })
    })
}

fn missing(
    ctx: &Context,
    plan: &Plan,
    info: &BlobInfo,
    rec: &[(String, Option<i64>)],
) -> Option<Finding> {
    let images = ctx.images_of_blob(&info.digest);
    let is_layer = info.role == Some(BlobRole::Layer);
    if is_layer
        && (plan.without_blob.iter().any(|j| j.blob == info.digest) || layer_unpacked(ctx, info))
    {
        // Normal after `discard_unpacked_layers` (or a content rm): the snapshot holds the
        // layer. The layers module explains it (check_without_blob).
        return None;
    }
    let (severity, what) = match info.role {
        _ if images.is_empty() => (
            Severity::Warning,
            "no image references it, so nothing needs it; but a pull of it would be skipped \
             (containerd believes it has it)",
        ),
        Some(BlobRole::Layer) => (
            Severity::Critical,
            "its snapshot does not exist either: unpacking the image (and so `ctr run`) fails \
             with `content digest ...: not found`, and a pull does not fetch it again while \
             the record exists",
        ),
        Some(BlobRole::Config) => (
            Severity::Error,
            "`ctr run`/the CRI cannot read the image config (`content digest ...: not found`); \
             a pull does not fetch it again while the record exists",
        ),
        _ => (
            Severity::Error,
            "the image cannot be resolved (`content digest ...: not found`): unpack, run and \
             push fail; a pull does not fetch it again while the record exists",
        ),
    };
    let mut f = blob_finding(
        ctx,
        info,
        severity,
        "blob-missing",
        format!(
            "{} blob {} is recorded in meta.db but its file is missing; {what}",
            role_name(info.role),
            info.digest
        ),
    )
    .path(
        ctx.content_dir()
            .join("blobs/sha256")
            .join(info.digest.trim_start_matches("sha256:"))
            .display()
            .to_string(),
    );
    if !is_layer && info.role.is_some() {
        f = f.fact("layer snapshot", "n/a");
    } else if is_layer {
        f = f.fact("layer snapshot", "missing");
    }
    for (ns, _) in rec {
        f = f.fix(format!(
            "ctr -n {ns} content rm {}  # drop the record of the missing file",
            info.digest
        ));
    }
    for img in images {
        let (ns, name) = img.split_once('/').unwrap_or(("default", img.as_str()));
        f = f.fix(format!(
            "ctr -n {ns} images pull {name}  # or `ctr -n {ns} images import ARCHIVE` if it \
             came from an archive"
        ));
    }
    Some(f)
}

// ---------------------------------------------------------------------------------------------
// Ingests

/// What one `ingest/<dir>` holds.
#[derive(Clone, Debug)]
struct IngestState {
    path: PathBuf,
    /// The content store's ref (`ref` file, else meta.db).
    backend_ref: Option<String>,
    namespace: Option<String>,
    /// The client's ref (`layer-sha256:...` for pulls).
    key: Option<String>,
    /// The digest the ingest is meant to become, and where that was learnt.
    expected: Option<String>,
    expected_from: &'static str,
    /// Whether containerd checks the digest at commit (pulls, fetches and `ctr content ingest
    /// --expected-digest` do; `ctr images import` does not).
    verified_commit: bool,
    data_len: Option<u64>,
    /// `total`: `Ok(None)` when absent (the client gave no size).
    total: Result<Option<u64>, String>,
    bad_files: Vec<(String, String)>,
    updated: Option<SystemTime>,
}

impl IngestState {
    fn new(path: PathBuf) -> IngestState {
        IngestState {
            path,
            backend_ref: None,
            namespace: None,
            key: None,
            expected: None,
            expected_from: "",
            verified_commit: false,
            data_len: None,
            total: Ok(None),
            bad_files: Vec::new(),
            updated: None,
        }
    }

    /// Whether `data` is worth hashing: it can be compared with the expected digest when it is
    /// complete, and with the blob's prefix when the blob is here (then only a prefix digest
    /// of the blob is taken, in the blob's own pass).
    fn wants_data_hash(&self, disk: &BTreeMap<String, DiskBlob>) -> bool {
        let (Some(exp), Some(len)) = (&self.expected, self.data_len) else {
            return false;
        };
        if len == 0 {
            return false;
        }
        let complete = matches!(self.total, Ok(Some(t)) if t == len);
        complete || disk.get(exp).is_some_and(|b| len <= b.size)
    }

    /// Whether the audit's scope covers this ingest: everything, or its expected blob.
    fn in_scope(&self, ctx: &Context) -> bool {
        ctx.scope.everything
            || self
                .expected
                .as_deref()
                .is_some_and(|e| ctx.scope.has_blob(e))
    }

    fn age(&self) -> Option<Duration> {
        self.updated
            .and_then(|t| SystemTime::now().duration_since(t).ok())
    }
}

/// The digest a client ref names: containerd's fetch refs (`remotes.MakeRefKey`:
/// `layer-`, `manifest-`, `index-`, `config-`, `attestation-`, `unknown-` + digest) and
/// `ctr images import`'s `tar-blobs/sha256/<hex>` (whose commit containerd does not verify).
pub fn expected_from_ref(key: &str) -> Option<(String, bool)> {
    for p in [
        "layer-",
        "manifest-",
        "index-",
        "config-",
        "attestation-",
        "unknown-",
    ] {
        if let Some(d) = key.strip_prefix(p)
            && is_digest(d)
        {
            return Some((d.to_owned(), true));
        }
    }
    let rest = key.strip_prefix("tar-")?;
    let hex = rest
        .trim_start_matches("./")
        .strip_prefix("blobs/sha256/")?;
    let d = format!("sha256:{hex}");
    is_digest(&d).then_some((d, false))
}

/// Reads a small file below `root`; `Ok(None)` if absent.
fn read_small(root: &Path, path: &Path) -> Result<Option<String>, String> {
    let f = match hashing::open_regular(root, path) {
        Ok(f) => f,
        Err(HashError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e.to_string()),
    };
    let mut s = String::new();
    f.take(MAX_SMALL_FILE)
        .read_to_string(&mut s)
        .map_err(|e| e.to_string())?;
    Ok(Some(s))
}

fn scan_ingests(ctx: &Context, content: &Path, findings: &mut Vec<Finding>) -> Vec<IngestState> {
    let mut out = Vec::new();
    let top = ctx.model.layout.root.as_path();
    let root = content.join("ingest");
    match fsx::lstat_beneath(top, &root) {
        Ok(m) if m.is_dir() => {}
        Ok(m) => {
            if ctx.scope.everything {
                findings.push(
                    Finding::new(
                        Severity::Warning,
                        "ingest-unexpected-entry",
                        format!(
                            "{} is a {}, not a directory: ingests were not read",
                            escape_path(&root),
                            m.kind_name()
                        ),
                    )
                    .path(root.display().to_string()),
                );
            }
            return out;
        }
        Err(_) => return out,
    }
    let Ok(entries) = fsx::list_beneath(top, &root) else {
        return out;
    };
    for (name, ft) in entries.into_iter().take(MAX_INGESTS) {
        let path = root.join(OsStr::from_bytes(&name));
        let dir = String::from_utf8_lossy(&name).into_owned();
        if !ft.is_dir() {
            if ctx.scope.everything {
                findings.push(
                    Finding::new(
                        Severity::Warning,
                        "ingest-unexpected-entry",
                        format!(
                            "{} in ingest/ is a {}, not an ingest directory (not followed)",
                            escape_path(&path),
                            ft.kind_name()
                        ),
                    )
                    .path(path.display().to_string())
                    .fix(format!(
                        "rm {}  # containerd never wrote it",
                        path.display()
                    )),
                );
            }
            continue;
        }
        let mut st = IngestState::new(path.clone());
        match read_small(top, &path.join("ref")) {
            Ok(r) => st.backend_ref = r,
            Err(e) => st.bad_files.push(("ref".into(), e)),
        }
        if let Some(info) = ctx.model.ingest(&dir) {
            st.backend_ref = st.backend_ref.or(info.backend_ref);
            st.namespace = info.namespace;
            st.key = info.key;
            if let Some(exp) = info.expected.filter(|d| is_digest(d)) {
                st.expected = Some(exp);
                st.expected_from = "meta.db ingest record";
                st.verified_commit = true;
            }
        }
        if st.key.is_none()
            && let Some((ns, _, key)) = st.backend_ref.as_deref().and_then(parse_backend_key)
        {
            st.namespace = Some(ns.to_owned());
            st.key = Some(key.to_owned());
        }
        if st.expected.is_none()
            && let Some((d, verified)) = st.key.as_deref().and_then(expected_from_ref)
        {
            st.expected = Some(d);
            st.expected_from = "the ref's name";
            st.verified_commit = verified;
        }
        let data = fsx::lstat_beneath(top, &path.join("data"));
        match &data {
            Ok(m) if m.is_reg() => st.data_len = Some(m.size),
            Ok(m) => st.bad_files.push((
                "data".into(),
                format!("a {}, not a regular file", m.kind_name()),
            )),
            Err(_) => {}
        }
        st.total = match read_small(top, &path.join("total")) {
            Ok(None) => Ok(None),
            Ok(Some(s)) => s
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| format!("{:?} is not a size", s.trim())),
            Err(e) => Err(e),
        };
        for name in ["startedat", "updatedat"] {
            match read_small(top, &path.join(name)) {
                Ok(Some(s)) => match parse_go_time(s.trim()) {
                    Some(t) => {
                        if name == "updatedat" {
                            st.updated = Some(t);
                        }
                    }
                    None => st.bad_files.push((
                        name.into(),
                        format!("{:?} is not an RFC 3339 time", s.trim()),
                    )),
                },
                Ok(None) => {}
                Err(e) => st.bad_files.push((name.into(), e)),
            }
        }
        if st.updated.is_none() {
            st.updated = data
                .ok()
                .or(Some(ft))
                .and_then(|m| u64::try_from(m.mtime).ok())
                .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        }
        out.push(st);
    }
    out
}

fn ingest_finding(
    ctx: &Context,
    ing: &IngestState,
    severity: Severity,
    class: &'static str,
) -> Finding {
    let key = ing.key.as_deref().unwrap_or("?");
    let mut f = Finding::new(severity, class, String::new()).path(ing.path.display().to_string());
    f = f.fact("ref", key);
    if let Some(ns) = &ing.namespace {
        f = f.namespace(ns.clone());
    }
    if let Some(exp) = &ing.expected {
        f = f.blob(exp.clone()).images(ctx.images_of_blob(exp)).fact(
            "expected digest",
            format!("{exp} (from {})", ing.expected_from),
        );
        if ctx
            .model
            .blob(exp)
            .is_some_and(|b| b.role == Some(BlobRole::Layer))
            || ing.key.as_deref().is_some_and(|k| k.starts_with("layer-"))
        {
            f = f.layer(exp.clone());
        }
    }
    if let Some(n) = ing.data_len {
        f = f.fact("data", format!("{n} bytes"));
    }
    match &ing.total {
        Ok(Some(t)) => f = f.fact("total", t.to_string()),
        Ok(None) => f = f.fact("total", "absent (size not given by the client)"),
        Err(e) => f = f.fact("total", format!("unreadable: {e}")),
    }
    if let Some(age) = ing.age() {
        f = f.fact(
            "last updated",
            format!(
                "{} ago",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            ),
        );
    }
    f
}

/// The safe removal of an ingest: `ctr` 1.6 has no command to abort one.
/// `listing_works`: whether `ctr content active` works (a damaged timestamp breaks it).
fn remove_ingest(
    mut f: Finding,
    ing: &IngestState,
    retry: Option<&str>,
    listing_works: bool,
) -> Finding {
    let ns = ing.namespace.as_deref().unwrap_or("default");
    let key = ing.key.as_deref().unwrap_or("");
    f = if listing_works {
        f.fix(format!(
            "ctr -n {ns} content active '{key}'  # make sure no pull/import of it is running \
             (its size must not change between two runs)"
        ))
    } else {
        f.fix(format!(
            "ls -l --time-style=full-iso {}  # make sure no pull/import of it is running (`data` \
             must not grow between two runs; `ctr content active` fails while a timestamp is \
             damaged)",
            ing.path.display()
        ))
    };
    f = f.fix(format!(
        "rm -rf {}  # ctr has no command to abort an ingest (ContentStore.Abort is not \
             exposed); removing the directory is safe while no client writes this ref, and \
             always with containerd stopped; containerd needs no restart",
        ing.path.display()
    ));
    if let Some(r) = retry {
        f = f.fix(r.to_string());
    }
    f
}

fn check_ingest(
    ctx: &Context,
    ing: &IngestState,
    data_hash: Option<&FileHash>,
    blob_results: &BTreeMap<String, Result<FileHash, HashError>>,
    disk: &BTreeMap<String, DiskBlob>,
) -> Option<Finding> {
    if !ing.in_scope(ctx) {
        return None;
    }
    let key = ing.key.as_deref().unwrap_or("?");
    let ns = ing.namespace.as_deref().unwrap_or("default");
    let images = ing
        .expected
        .as_deref()
        .map(|e| ctx.images_of_blob(e))
        .unwrap_or_default();
    let retry = match (images.first(), ing.verified_commit) {
        (Some(img), true) => {
            let name = img.split_once('/').map_or(img.as_str(), |(_, n)| n);
            Some(format!("ctr -n {ns} images pull {name}  # retry"))
        }
        (Some(_), false) => Some(format!("ctr -n {ns} images import ARCHIVE  # retry")),
        _ => None,
    };
    let len = ing.data_len.unwrap_or(0);
    let stale = ing.age().is_some_and(|a| a > STALE_INGEST);
    // Whether the expected blob is in the ingest's namespace: then containerd never reopens
    // this ingest (the writer returns "already exists" first).
    // Whether the expected blob is on disk: then a pull never reopens this ingest. With the
    // default "shared" content policy that holds in every namespace (containerd adopts a blob
    // already on disk); with `content_sharing_policy = "isolated"` only where it is recorded.
    let blob_here = ing
        .expected
        .as_deref()
        .is_some_and(|e| disk.contains_key(e));

    // Damaged status files: `ctr content active` and containerd's ingest listing fail.
    if let Some((file, err)) = ing
        .bad_files
        .iter()
        .find(|(f, _)| f == "startedat" || f == "updatedat" || f == "ref" || f == "data")
    {
        let mut f = ingest_finding(ctx, ing, Severity::Error, "ingest-bad-status");
        let timestamp = file == "startedat" || file == "updatedat";
        f.message = if timestamp {
            format!(
                "ingest {key}: its `{file}` file is damaged ({err}): containerd's listing of \
                 ingests fails for the whole store (`ctr content active`: `could not parse \
                 timestamp file`); the next pull of this ref recreates the ingest from byte 0"
            )
        } else {
            format!(
                "ingest {key}: its `{file}` is damaged ({err}): containerd cannot use this \
                 ingest; the next transfer of the ref fails or starts over"
            )
        };
        f = f.fact(file.clone(), err.clone());
        if timestamp {
            f = f.fact("next pull", "succeeds (the ingest is recreated)");
        }
        return Some(remove_ingest(f, ing, retry.as_deref(), !timestamp));
    }

    // Torn: the bytes already there are not the expected content's first bytes.
    let torn = ing.expected.as_deref().and_then(|exp| {
        if len == 0 {
            return None;
        }
        if let Some(Ok(b)) = blob_results.get(exp)
            && b.digest == exp
            && let (Some((_, want)), Some(have)) =
                (b.prefixes.iter().find(|(n, _)| *n == len), data_hash)
        {
            return (want != &have.digest)
                .then(|| format!("differs from the first {len} bytes of blob {exp}"));
        }
        let complete = matches!(ing.total, Ok(Some(t)) if t == len);
        match data_hash {
            Some(h) if complete && h.digest != exp => Some(format!(
                "is complete ({len} bytes) but hashes to {}",
                h.digest
            )),
            _ => None,
        }
    });
    if let (Some(why), Some(exp)) = (torn, ing.expected.as_deref()) {
        let complete = matches!(ing.total, Ok(Some(t)) if t == len);
        let got = data_hash
            .filter(|_| complete)
            .map_or("sha256:<not the expected one>".to_string(), |h| {
                h.digest.clone()
            });
        let (severity, next, message) = if !ing.verified_commit && blob_here {
            (
                Severity::Warning,
                "import: succeeds (the blob is there), but commits the torn bytes as a stray blob \
                 under their own digest"
                    .to_string(),
                format!(
                    "ingest {key}: `data` {why} (torn): the next `ctr images import` resumes \
                     after those bytes without checking the digest and commits them as a stray \
                     blob; the import itself succeeds while blob {exp} exists"
                ),
            )
        } else if !ing.verified_commit {
            (
                Severity::Critical,
                format!(
                    "import: commits the blob under a wrong digest, then fails: content digest \
                     {exp}: not found; the import after that succeeds"
                ),
                format!(
                    "ingest {key}: `data` {why} (torn): the next `ctr images import` resumes \
                     after those bytes without checking the digest, commits a wrong blob and \
                     fails with `content digest {exp}: not found`"
                ),
            )
        } else if blob_here {
            (
                Severity::Warning,
                "succeeds while the blob is in the store (containerd does not reopen the \
                 ingest); fails: unexpected commit digest once the blob is removed and pulled \
                 again"
                    .to_string(),
                format!(
                    "ingest {key}: `data` {why} (torn); harmless while blob {exp} exists, but a \
                     pull after that blob is removed (e.g. to repair it) fails with `unexpected \
                     commit digest`"
                ),
            )
        } else {
            (
                Severity::Critical,
                "fails: unexpected commit digest".to_string(),
                format!(
                    "ingest {key}: `data` {why} (torn): containerd resumes after those bytes, so \
                     every pull of this ref fails with `failed commit on ref \"{key}\": commit \
                     failed: unexpected commit digest {got}, expected {exp}: failed \
                     precondition`, until the ingest is removed"
                ),
            )
        };
        let mut f = ingest_finding(ctx, ing, severity, "ingest-torn");
        f.message = message;
        f = f.fact("next pull", next);
        return Some(remove_ingest(f, ing, retry.as_deref(), true));
    }

    // More data than the blob has: the commit's size check fails on every retry.
    let limit = match ing.total {
        Ok(Some(t)) => Some(t),
        _ => ing
            .expected
            .as_deref()
            .and_then(|e| disk.get(e).map(|b| b.size)),
    };
    if let Some(t) = limit
        && len > t
    {
        let severity = if blob_here {
            Severity::Warning
        } else {
            Severity::Critical
        };
        let mut f = ingest_finding(ctx, ing, severity, "ingest-oversized");
        f.message = format!(
            "ingest {key}: `data` has {len} bytes, more than the {t} expected: containerd \
             resumes at byte {len}, so every pull of this ref fails with `\"{key}\" failed size \
             validation: {len} != {t}: failed precondition`, until the ingest is removed"
        );
        f = f.fact(
            "next pull",
            if blob_here {
                "succeeds while the blob is in the store; fails: failed size validation once it is removed"
                    .to_string()
            } else {
                format!("fails: failed size validation: {len} != {t}")
            },
        );
        return Some(remove_ingest(f, ing, retry.as_deref(), true));
    }

    if let Err(e) = &ing.total
        && len > 0
    {
        let mut f = ingest_finding(ctx, ing, Severity::Warning, "ingest-bad-status");
        f.message = format!(
            "ingest {key}: its `total` is unreadable ({e}); containerd takes it as unknown and \
             resumes at byte {len} without a size to check against"
        );
        f = f.fact("next pull", format!("resumes at byte {len}"));
        return Some(remove_ingest(f, ing, retry.as_deref(), true));
    }

    if ing.data_len == Some(0) {
        let severity = if stale {
            Severity::Warning
        } else {
            Severity::Info
        };
        let mut f = ingest_finding(ctx, ing, severity, "ingest-zero-length");
        f.message = format!(
            "ingest {key}: `data` is empty{}: the next pull of this ref starts again at byte \
             0 and succeeds (measured with containerd 1.6.20: an empty ingest does not cause \
             `unexpected commit digest`)",
            if stale {
                ", and nothing wrote it for over a day"
            } else {
                " (a transfer that just started, or was interrupted before its first byte)"
            }
        );
        f = f.fact("next pull", "succeeds (restarts at byte 0)");
        return Some(remove_ingest(f, ing, None, true));
    }

    if stale {
        let mut f = ingest_finding(ctx, ing, Severity::Warning, "ingest-stale");
        let state = if blob_here {
            "the blob is already in the store, so containerd will never resume it"
        } else {
            "the next pull of this ref resumes after those bytes"
        };
        f.message = format!(
            "ingest {key}: an interrupted transfer nothing wrote for over {} ({len} bytes \
             kept): {state}",
            humantime::format_duration(STALE_INGEST)
        );
        f = f.fact(
            "next pull",
            if blob_here {
                "succeeds (the ingest is not used)".to_string()
            } else {
                format!("resumes at byte {len}")
            },
        );
        return Some(remove_ingest(f, ing, None, true));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_naming_digests() {
        let d = "sha256:071bc9e36a42f312fda95f79e9fde74131938f1dcfad1bf71b0213d73879590c";
        assert_eq!(
            expected_from_ref(&format!("layer-{d}")),
            Some((d.into(), true))
        );
        assert_eq!(
            expected_from_ref(&format!("manifest-{d}")),
            Some((d.into(), true))
        );
        assert_eq!(
            expected_from_ref(&format!("tar-blobs/sha256/{}", &d[7..])),
            Some((d.into(), false))
        );
        assert_eq!(expected_from_ref("exp-a"), None);
        assert_eq!(expected_from_ref("layer-sha256:xyz"), None);
    }
}
