//! Layer replay: a committed layer's tar (gzip, zstd or uncompressed) against its snapshot
//! directory.
//!
//! [`plan`] picks, for every committed overlayfs or native snapshot in scope that an image
//! uses, one layer blob to replay (one is enough when several blobs unpack to the same diff,
//! and more would report every problem twice), and groups the snapshots by blob: one blob may
//! be unpacked at several chain positions (several chainIDs, several directories).
//! [`replay`] reads the blob once, as a forward-only stream handed over by the content pool,
//! builds the tree the tar unpacks to ([`tree`]), checks the diffID, then compares the tree
//! with each directory ([`compare`]), never following a symlink ([`fsx`]) and never writing.
//! [`check_without_blob`] does what can be done when the blob is gone.
//!
//! Finding classes: see [`compare::class`] and the `layer-blob-*`, `layer-diffid-mismatch`,
//! `layer-tar-*` and `layer-snapshot-missing` classes below; docs/audit.md lists them all.

mod compare;
mod tree;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use super::{Context, Finding, Outcome, Severity};
use ctrwatch_containerd::fsx;
use ctrwatch_containerd::metadata::is_digest;
use ctrwatch_containerd::{SnapshotKind, SnapshotLayout, snapshot_tree};

use compare::{Compared, Problem, Unpack};
use tree::{Compression, LayerTree};

/// Findings about the blob as a whole.
pub mod class {
    /// The blob does not decompress or is not a tar (damaged after the unpack).
    pub const BLOB_DAMAGED: &str = "layer-blob-damaged";
    /// The blob file could not be read.
    pub const BLOB_UNREADABLE: &str = "layer-blob-unreadable";
    /// The blob is not in the content store (info: normal with `discard_unpacked_layers`).
    pub const BLOB_MISSING: &str = "layer-blob-missing";
    /// The blob decompresses to another tar than the image's diffID.
    pub const DIFFID_MISMATCH: &str = "layer-diffid-mismatch";
    /// Tar entries containerd would place elsewhere or refuse (`..`, symlink loops).
    pub const TAR_UNSAFE_PATH: &str = "layer-tar-unsafe-path";
    /// Tar entries of a type containerd refuses (sockets, unknown types).
    pub const TAR_UNSUPPORTED: &str = "layer-tar-unsupported";
    /// The blob's compression is not what its media type says (containerd sniffs it anyway).
    pub const MEDIA_TYPE_MISMATCH: &str = "layer-media-type-mismatch";
    /// The committed snapshot's directory is gone.
    pub const SNAPSHOT_MISSING: &str = "layer-snapshot-missing";
    /// More problems than are listed one by one for a snapshot.
    pub const MORE: &str = "layer-more-problems";
    /// `trusted.*` xattrs cannot be read (not running as root).
    pub const XATTRS_UNCHECKED: &str = "layer-xattrs-unchecked";
}

/// Most findings listed one by one for one snapshot directory; the rest are counted in one
/// [`class::MORE`] finding (a directory swapped for another would otherwise list every file).
pub const MAX_FINDINGS_PER_SNAPSHOT: usize = 200;

/// One layer blob to replay and the snapshot directories it was unpacked into.
#[derive(Clone, Debug, Default)]
pub struct LayerJob {
    /// The layer blob's digest (as stored in the content store).
    pub blob: String,
    /// Its media type, if the metadata knows it.
    pub media_type: Option<String>,
    /// The uncompressed digest (diffID), if known.
    pub diff_id: Option<String>,
    /// The committed snapshots holding it: one per chain position and snapshotter (and per
    /// namespace, as containerd keeps one snapshot per namespace).
    pub targets: Vec<SnapshotTarget>,
    /// `namespace/name` of the images using the layer (all targets).
    pub images: Vec<String>,
    /// Other blobs that unpack to the same diff and are not replayed (one is enough).
    pub alternatives: Vec<String>,
}

/// The snapshotters whose unpacking the replay reproduces (each checked against containerd in
/// tests/tests/audit_layers.rs). Where a snapshot's tree is comes from the containerd model
/// ([`SnapshotLayout`]); how a layer was applied to it is this list's business.
const REPLAYED_SNAPSHOTTERS: [&str; 2] = ["overlayfs", "native"];

/// A committed snapshot directory.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, Default)]
pub struct SnapshotTarget {
    pub snapshotter: String,
    pub layout: SnapshotLayout,
    pub id: u64,
    /// The snapshotter's key (`<namespace>/<seq>/<chainID>`).
    pub key: String,
    /// The layer's chainID (the client's key of the committed snapshot).
    pub chain_id: String,
    /// No parent: the image's first layer (unpacked without whiteout conversion).
    pub base: bool,
    /// The snapshotter's directory.
    pub root: PathBuf,
    /// Where nothing below is followed from: the containerd root, or the snapshotter's
    /// configured directory ([`ctrwatch_containerd::RootLayout::anchor_for`]).
    pub anchor: PathBuf,
    /// The snapshot's tree ([`snapshot_tree`]): `<root>/snapshots/<id>/fs` (overlay) or
    /// `<root>/snapshots/<id>` (native).
    pub dir: PathBuf,
    /// Namespaces the snapshot belongs to.
    pub namespaces: Vec<String>,
    /// `namespace/name` of the images (in those namespaces) using it.
    pub images: Vec<String>,
}

/// The layers in scope, by blob digest, and the layers whose blob is not in the content store.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Layers whose blob is present, to be replayed while the blob is hashed. Sorted by blob.
    pub with_blob: Vec<LayerJob>,
    /// Layers whose blob is gone (e.g. discarded after unpack): give each to
    /// [`check_without_blob`].
    pub without_blob: Vec<LayerJob>,
}

impl Plan {
    /// The job replaying blob `digest`, if any.
    pub fn job_for_blob(&self, digest: &str) -> Option<&LayerJob> {
        self.with_blob.iter().find(|j| j.blob == digest)
    }
}

/// Whether the content store has a regular file for `digest` (not following a symlink).
fn blob_present(ctx: &Context, digest: &str) -> bool {
    let Some((alg, enc)) = digest.split_once(':').filter(|_| is_digest(digest)) else {
        return false;
    };
    let path = ctx.content_dir().join("blobs").join(alg).join(enc);
    fsx::lstat_beneath(&ctx.model.layout.root, &path).is_ok_and(|m| m.is_reg())
}

/// Which layers to replay. Only committed snapshots of the `overlayfs` and `native`
/// snapshotters that an image uses are planned: a layer no image uses has no known blob
/// (the holders check explains why it is still there).
pub fn plan(ctx: &Context) -> Plan {
    if !ctx.scope.layers {
        return Plan::default();
    }
    let model = &ctx.model;
    let mut with: BTreeMap<String, LayerJob> = BTreeMap::new();
    let mut without: BTreeMap<String, LayerJob> = BTreeMap::new();
    for (sn_name, sn) in &model.snapshotters {
        if !REPLAYED_SNAPSHOTTERS.contains(&sn_name.as_str()) {
            continue;
        }
        let layout = SnapshotLayout::of(sn_name);
        let root = if sn.root.as_os_str().is_empty() {
            model.layout.snapshotter_root(sn_name)
        } else {
            sn.root.clone()
        };
        for (key, b) in &sn.snapshots {
            if b.kind != SnapshotKind::Committed {
                continue;
            }
            let Some(info) = model.snapshot_by_key(sn_name, key) else {
                continue;
            };
            let Some(chain_id) = info.chain_id.clone() else {
                continue;
            };
            // The scope names snapshots by snapshotter key; accept the chainID (the client's
            // key) too: the two never collide (`<ns>/<seq>/sha256:...` vs `sha256:...`).
            if !ctx.scope.has_snapshot(sn_name, key) && !ctx.scope.has_snapshot(sn_name, &chain_id)
            {
                continue;
            }
            if info.layer_digests.is_empty() {
                continue;
            }
            let images: Vec<String> = ctx
                .images_of_chain(&chain_id)
                .into_iter()
                .filter(|i| {
                    info.namespaces.is_empty()
                        || i.split_once('/')
                            .is_some_and(|(ns, _)| info.namespaces.iter().any(|n| n == ns))
                })
                .collect();
            let Some(dir) = snapshot_tree(&root, sn_name, b.id) else {
                continue;
            };
            let target = SnapshotTarget {
                snapshotter: sn_name.clone(),
                layout,
                id: b.id,
                key: key.clone(),
                chain_id: chain_id.clone(),
                base: b.parent.is_none(),
                root: root.clone(),
                anchor: model.layout.anchor_for(&root).to_path_buf(),
                dir,
                namespaces: info.namespaces.clone(),
                images,
            };
            // The blob to replay: a present one the scope includes, the first by digest.
            let chosen = info
                .layer_digests
                .iter()
                .find(|d| ctx.scope.has_blob(d) && blob_present(ctx, d));
            let (map, digest) = match chosen {
                Some(d) => (&mut with, d.clone()),
                None => (&mut without, info.layer_digests[0].clone()),
            };
            let job = map.entry(digest.clone()).or_insert_with(|| {
                let blob = model.blob(&digest);
                LayerJob {
                    blob: digest.clone(),
                    media_type: blob.as_ref().and_then(|b| b.media_type.clone()),
                    diff_id: info
                        .diff_id
                        .clone()
                        .or_else(|| blob.as_ref().and_then(|b| b.diff_id.clone())),
                    ..LayerJob::default()
                }
            });
            for d in &info.layer_digests {
                if *d != digest && !job.alternatives.contains(d) {
                    job.alternatives.push(d.clone());
                }
            }
            job.images.extend(target.images.iter().cloned());
            job.images.sort();
            job.images.dedup();
            job.targets.push(target);
        }
    }
    Plan {
        with_blob: with.into_values().collect(),
        without_blob: without.into_values().collect(),
    }
}

/// Replays the layer tar read from `blob` (compressed as the blob is) against the job's
/// snapshot directories. Reads `blob` to its end (the diffID covers the whole stream); the
/// caller hashes what was read. Never reads the blob file itself and never writes anything.
pub fn replay(ctx: &Context, job: &LayerJob, blob: &mut dyn Read) -> Outcome {
    let tree = tree::read_layer(blob);
    let mut out = Outcome::default();
    out.stats.layer_bytes = tree.bytes;
    let base = || {
        Finding::default()
            .images(job.images.iter().cloned())
            .layer(job.blob.clone())
    };
    let remediation = |f: Finding| -> Finding {
        let mut steps: Vec<String> = Vec::new();
        for step in job.targets.iter().flat_map(|t| remediation(ctx, t)) {
            // Targets in one namespace share their images: say each step once.
            if !steps.contains(&step) {
                steps.push(step);
            }
        }
        steps.into_iter().fold(f, Finding::fix)
    };

    // The stream itself.
    let mut usable = true;
    if let Some(err) = &tree.error {
        usable = false;
        let (class, severity, what) = if err.damaged {
            (
                class::BLOB_DAMAGED,
                Severity::Critical,
                "does not decompress to a valid tar",
            )
        } else {
            (class::BLOB_UNREADABLE, Severity::Error, "could not be read")
        };
        let f = Finding {
            severity: Some(severity),
            class,
            message: format!(
                "layer blob {} {what} ({}): its snapshots are only checked for what needs no tar",
                job.blob, err.error
            ),
            ..base()
        }
        .path(blob_path(ctx, &job.blob))
        .fact("compression", tree.compression.name())
        .fact("error after entries", err.after_entries.to_string())
        .fact(
            "error after uncompressed bytes",
            err.after_bytes.to_string(),
        );
        out.findings.push(remediation(f));
    } else if let (Some(want), Some(got)) = (&job.diff_id, &tree.diff_id)
        && want.starts_with("sha256:")
        && want != got
    {
        usable = false;
        let f = Finding {
            severity: Some(Severity::Critical),
            class: class::DIFFID_MISMATCH,
            message: format!(
                "layer blob {} decompresses to a tar whose digest is not the image's diffID: \
                 it is not the layer that was unpacked (its snapshots are only checked for \
                 what needs no tar)",
                job.blob
            ),
            ..base()
        }
        .path(blob_path(ctx, &job.blob))
        .fact("expected diffID", want.clone())
        .fact("found diffID", got.clone())
        .fact("compression", tree.compression.name());
        out.findings.push(remediation(f));
    }
    if let Some(mt) = &job.media_type
        && let Some(said) = Compression::from_media_type(mt)
        && said != tree.compression
        && tree.error.is_none()
    {
        // containerd detects the compression from the magic bytes too, so this unpacks
        // fine; only clients trusting the media type are affected.
        out.findings.push(
            Finding {
                severity: Some(Severity::Warning),
                class: class::MEDIA_TYPE_MISMATCH,
                message: format!(
                    "layer blob {} is {} but its media type says {}",
                    job.blob,
                    tree.compression.name(),
                    said.name()
                ),
                ..base()
            }
            .fact("media type", mt.clone()),
        );
    }
    for (list, class, what) in [
        (&tree.unsafe_paths, class::TAR_UNSAFE_PATH, "unsafe name"),
        (
            &tree.unsupported,
            class::TAR_UNSUPPORTED,
            "unsupported entry",
        ),
    ] {
        for s in list {
            out.findings.push(
                Finding {
                    severity: Some(Severity::Warning),
                    class,
                    message: format!(
                        "layer tar entry {:?} was not checked: {} ({what})",
                        s.name, s.why
                    ),
                    ..base()
                }
                .fact("entry", s.name.clone()),
            );
        }
    }

    for target in &job.targets {
        out.stats.layers += 1;
        if usable {
            out.stats.layer_entries += tree.entries;
        }
        let compared = if usable {
            compare_target(target, &tree)
        } else {
            without_tar(target)
        };
        match compared {
            Some(c) => out.findings.extend(findings(ctx, job, target, c)),
            None => out.findings.extend(snapshot_missing(ctx, job, target)),
        }
    }
    out.findings.extend(unchecked_xattrs(job));
    out
}

/// What can still be checked of a layer whose blob is gone: the directory exists, and no
/// kernel-only overlay xattrs (nor, in a base layer, whiteouts or opaque marks, which
/// containerd never makes there). File contents, sizes, modes, owners, missing files and
/// whiteouts need the tar and are not checked.
pub fn check_without_blob(ctx: &Context, job: &LayerJob) -> Outcome {
    let mut out = Outcome::default();
    let snapshots: Vec<String> = job
        .targets
        .iter()
        .map(|t| format!("{}/{}", t.snapshotter, t.id))
        .collect();
    let mut f = Finding::new(
        Severity::Info,
        class::BLOB_MISSING,
        format!(
            "layer blob {} is not in the content store (normal with \
             discard_unpacked_layers = true, or after `ctr content rm`): its snapshot \
             cannot be replayed; only the checks that need no tar were done",
            job.blob
        ),
    )
    .images(job.images.iter().cloned())
    .layer(job.blob.clone())
    .fact("snapshots", snapshots.join(", "))
    .fact(
        "checked",
        "snapshot directory present; no kernel-only overlay xattrs (origin, impure, \
         redirect, metacopy, nlink, ...); in a base layer, no whiteouts or opaque marks",
    )
    .fact(
        "not checked",
        "missing, extra, truncated or changed files, modes, owners, symlink targets, \
         whiteouts and opaque marks of layers with parents",
    );
    if let Some(d) = &job.diff_id {
        f = f.fact("diffID", d.clone());
    }
    if let [t] = job.targets.as_slice() {
        f = f
            .snapshot(&t.snapshotter, t.id)
            .snapshot_key(t.chain_id.clone())
            .path(t.dir.to_string_lossy().into_owned());
    }
    out.findings.push(f.fix(
        "Nothing to do for this alone. To have the layer replayable, pull the image again \
         while the blob is kept (discard_unpacked_layers = false in the CRI plugin's \
         containerd section).",
    ));
    for target in &job.targets {
        out.stats.layers += 1;
        match without_tar(target) {
            Some(c) => out.findings.extend(findings(ctx, job, target, c)),
            None => out.findings.extend(snapshot_missing(ctx, job, target)),
        }
    }
    out.findings.extend(unchecked_xattrs(job));
    out
}

/// Opens layer blob `digest` in the content store for [`replay`]: a regular file reached
/// from the containerd root without following a symlink (see
/// [`crate::content::hashing::open_regular`]). For callers replaying one layer at a time
/// (the daemon's check at commit) rather than through the content pass.
pub fn open_blob(
    ctx: &Context,
    digest: &str,
) -> Result<std::fs::File, crate::content::hashing::HashError> {
    let path = PathBuf::from(blob_path(ctx, digest));
    crate::content::hashing::open_regular(&ctx.model.layout.root, &path)
}

fn blob_path(ctx: &Context, digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, enc)) if is_digest(digest) => ctx
            .content_dir()
            .join("blobs")
            .join(alg)
            .join(enc)
            .to_string_lossy()
            .into_owned(),
        _ => digest.to_owned(),
    }
}

/// Opens the target's directory, each component below its anchor (the containerd root, or a
/// configured snapshotter directory) without following symlinks. `None` if it does not exist.
fn open_target(target: &SnapshotTarget) -> Result<Option<fsx::Dir>, fsx::OpenError> {
    match fsx::open_dir_beneath(&target.anchor, &target.dir) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn unpack_of(target: &SnapshotTarget) -> Unpack {
    match (target.base, target.layout) {
        (true, _) => Unpack::NaiveEmpty,
        (false, SnapshotLayout::Overlay) => Unpack::OverlayConverted,
        // A snapshotter whose layout is not known is never planned (REPLAYED_SNAPSHOTTERS).
        (false, SnapshotLayout::Direct | SnapshotLayout::Unknown) => Unpack::NaiveOnCopy,
    }
}

fn compare_target(target: &SnapshotTarget, tree: &LayerTree) -> Option<Compared> {
    match open_target(target) {
        Ok(Some(dir)) => Some(compare::compare(
            &dir,
            tree,
            unpack_of(target),
            target.layout == SnapshotLayout::Overlay,
        )),
        Ok(None) => None,
        Err(e) => Some(unreadable_root(target, &e)),
    }
}

fn without_tar(target: &SnapshotTarget) -> Option<Compared> {
    if target.layout != SnapshotLayout::Overlay {
        // A native snapshot is a plain directory tree: nothing overlay-specific to look at.
        return Some(Compared::default());
    }
    match open_target(target) {
        Ok(Some(dir)) => Some(compare::scan_without_tar(&dir, target.base)),
        Ok(None) => None,
        Err(e) => Some(unreadable_root(target, &e)),
    }
}

fn unreadable_root(target: &SnapshotTarget, e: &fsx::OpenError) -> Compared {
    Compared {
        problems: vec![Problem {
            severity: Severity::Error,
            class: compare::class::UNREADABLE,
            rel: Vec::new(),
            message: format!(
                "cannot open snapshot directory {}: {e}",
                ctrwatch_event::escape_path(&target.dir)
            ),
            facts: Vec::new(),
        }],
        checked: 0,
    }
}

/// The snapshot directory is gone. The snapshots check reports missing directories of every
/// snapshot; this one only does when that check does not run (`--layers-only`).
fn snapshot_missing(ctx: &Context, job: &LayerJob, target: &SnapshotTarget) -> Vec<Finding> {
    if ctx.scope.metadata {
        return Vec::new();
    }
    let f = target_finding(
        job,
        target,
        Severity::Error,
        class::SNAPSHOT_MISSING,
        format!(
            "the directory of committed snapshot {} is missing: containers of {} cannot \
             start",
            target.chain_id,
            if target.images.is_empty() {
                "its images".to_owned()
            } else {
                target.images.join(", ")
            }
        ),
    )
    .path(target.dir.to_string_lossy().into_owned());
    vec![remediation(ctx, target).into_iter().fold(f, Finding::fix)]
}

fn target_finding(
    job: &LayerJob,
    target: &SnapshotTarget,
    severity: Severity,
    class: &'static str,
    message: String,
) -> Finding {
    let mut f = Finding::new(severity, class, message)
        .images(target.images.iter().cloned())
        .layer(job.blob.clone())
        .snapshot(&target.snapshotter, target.id)
        .snapshot_key(target.chain_id.clone());
    if let [ns] = target.namespaces.as_slice() {
        f = f.namespace(ns.clone());
    }
    f
}

/// Problems of one target as findings, at most [`MAX_FINDINGS_PER_SNAPSHOT`] one by one.
fn findings(ctx: &Context, job: &LayerJob, target: &SnapshotTarget, c: Compared) -> Vec<Finding> {
    if c.problems.is_empty() {
        return Vec::new();
    }
    let fixes = remediation(ctx, target);
    let mut problems = c.problems;
    // Worst first, so the cut keeps what matters.
    problems.sort_by_key(|p| p.severity);
    let total = problems.len();
    let rest = problems.split_off(total.min(MAX_FINDINGS_PER_SNAPSHOT));
    let mut out: Vec<Finding> = problems
        .into_iter()
        .map(|p| {
            let host = if p.rel.is_empty() {
                target.dir.clone()
            } else {
                use std::os::unix::ffi::OsStrExt;
                target.dir.join(std::ffi::OsStr::from_bytes(&p.rel))
            };
            let mut f = target_finding(job, target, p.severity, p.class, p.message)
                .path(host.to_string_lossy().into_owned())
                .image_path(compare::image_path(&p.rel));
            f.facts.extend(p.facts);
            fixes.iter().cloned().fold(f, Finding::fix)
        })
        .collect();
    if let Some(worst) = rest.first().map(|p| p.severity) {
        let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
        for p in &rest {
            *by_class.entry(p.class).or_default() += 1;
        }
        let summary: Vec<String> = by_class.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        let f = target_finding(
            job,
            target,
            worst,
            class::MORE,
            format!(
                "{} more problems in this layer are not listed one by one",
                rest.len()
            ),
        )
        .path(target.dir.to_string_lossy().into_owned())
        .fact("by class", summary.join(", "));
        out.push(fixes.into_iter().fold(f, Finding::fix));
    }
    out
}

/// Without CAP_SYS_ADMIN the kernel lists no `trusted.*` xattrs: opaque marks and
/// kernel-only overlay xattrs are invisible.
fn unchecked_xattrs(job: &LayerJob) -> Option<Finding> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return None;
    }
    Some(
        Finding::new(
            Severity::Info,
            class::XATTRS_UNCHECKED,
            "not running as root: trusted.* xattrs (opaque marks, kernel-only overlay xattrs) \
             could not be read and were not checked",
        )
        .layer(job.blob.clone()),
    )
}

/// How to have containerd 1.6 unpack the layer again: everything using the snapshot must go
/// so that garbage collection removes it, then a pull unpacks the layer into a new one.
fn remediation(ctx: &Context, target: &SnapshotTarget) -> Vec<String> {
    let sn = &target.snapshotter;
    let mut steps = Vec::new();
    let namespaces: Vec<String> = if target.namespaces.is_empty() {
        vec!["default".to_owned()]
    } else {
        target.namespaces.clone()
    };
    for ns in &namespaces {
        let images: Vec<&str> = target
            .images
            .iter()
            .filter_map(|i| i.strip_prefix(&format!("{ns}/")))
            .collect();
        let containers: Vec<&str> = ctx
            .model
            .namespaces
            .get(ns)
            .map(|n| {
                n.containers
                    .values()
                    .filter(|c| {
                        c.image.as_deref().is_some_and(|i| images.contains(&i))
                            && c.snapshotter.as_deref().is_none_or(|s| s == sn)
                    })
                    .map(|c| c.id.as_str())
                    .collect()
            })
            .unwrap_or_default();
        if !containers.is_empty() {
            steps.push(format!(
                "Delete the containers built on this layer in namespace {ns} (their snapshots \
                 are children of it): for each of {}: `ctr -n {ns} tasks kill -s SIGKILL ID; \
                 ctr -n {ns} tasks rm ID; ctr -n {ns} containers rm ID` (Kubernetes: drain the \
                 node or delete the pods).",
                containers.join(", ")
            ));
        }
        if images.is_empty() {
            steps.push(format!(
                "No image in namespace {ns} uses this layer any more: remove the snapshot \
                 (after any snapshot on top of it): `ctr -n {ns} snapshots --snapshotter {sn} \
                 rm {}`.",
                target.chain_id
            ));
            continue;
        }
        steps.push(format!(
            "Remove every image of namespace {ns} that uses this layer, and let garbage \
             collection delete the snapshot and the blob: `ctr -n {ns} images rm --sync {}` \
             (Kubernetes: `crictl rmi` them). The snapshot stays as long as anything still \
             uses it: one of these images, a container, or a lease (`ctr -n {ns} leases ls`).",
            images.join(" ")
        ));
        steps.push(format!(
            "Check that snapshot {} is gone: `ctr -n {ns} snapshots --snapshotter {sn} ls` \
             no longer lists it.",
            target.chain_id
        ));
        steps.push(format!(
            "Pull the images again (`ctr -n {ns} images pull --snapshotter {sn} REF`, \
             `crictl pull REF`, or `ctr -n {ns} images import` of an archive): the layer is \
             fetched and unpacked into a new snapshot."
        ));
    }
    steps
}
