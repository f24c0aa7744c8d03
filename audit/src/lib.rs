//! `ctrwatch audit`: an offline check of a containerd root's content store, layer snapshots
//! and metadata, which explains what is damaged, what it belongs to and how to fix it.
//!
//! It only reads: bolt files through the lock-free `bolt` reader (containerd may be running),
//! everything else with plain reads that never follow a symlink out of the root.
//!
//! One audit, in order (each step a module):
//! 1. [`Context::load`]: the [`Model`] of the root's databases and the scope (`--image`, ...).
//! 2. [`content`]: every blob is read once, by a pool of threads: hashed (digest and size
//!    against its name and the metadata) and, when it is a layer whose snapshot is in scope,
//!    streamed at the same time through [`layers::replay`], which compares the tar with the
//!    snapshot directory. Then orphans and ingests.
//! 3. [`layers`]: layers whose blob is gone are checked with what is left ([`layers::check_without_blob`]).
//! 4. [`snapshots`]: snapshot records against directories.
//! 5. [`holders`]: why content and snapshots that no image needs are still there.
//! 6. [`runtime`]: metadata that makes containerd fail at start.
//! 7. With `--since-watch`, the history store names who last touched each damaged path.
//!
//! [`report`] renders the result for people or as JSON.

pub mod content;
pub mod finding;
pub mod holders;
pub mod layers;
pub mod progress;
pub mod report;
pub mod runtime;
pub mod snapshots;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use ctrwatch_containerd::{ContainerdError, Model, RootLayout};
pub use finding::{Finding, Severity};
pub use progress::{Progress, Unit};

/// Why an audit could not run at all (exit code 2).
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error("no image named {0:?} in any namespace")]
    NoSuchImage(String),
    #[error("no snapshot {0:?} (give a snapshot directory id, a snapshotter key or a chainID)")]
    NoSuchSnapshot(String),
    #[error("--content-only and --layers-only exclude each other")]
    ConflictingScope,
    #[error("history store {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: report::HistoryError,
    },
}

/// What to audit and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// The containerd root (and where its snapshotters are).
    pub layout: RootLayout,
    /// Only these images (names, any namespace) and what they reference.
    pub images: Vec<String>,
    /// Only these snapshots (directory id, snapshotter key or chainID).
    pub snapshots: Vec<String>,
    /// Only the content store (blobs and ingests).
    pub content_only: bool,
    /// Only the layer replay.
    pub layers_only: bool,
    /// Threads for hashing and replay (0: one per CPU).
    pub threads: usize,
}

impl Options {
    /// Audit everything under `root` with default settings.
    pub fn new(root: impl Into<PathBuf>) -> Options {
        Options {
            layout: RootLayout::new(root),
            images: Vec::new(),
            snapshots: Vec::new(),
            content_only: false,
            layers_only: false,
            threads: 0,
        }
    }
}

/// The part of the store an audit looks at, resolved from the options.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Everything (no `--image` / `--snapshot`): orphan and global checks run too.
    pub everything: bool,
    /// Blobs to verify; `None`: every blob on disk or in the metadata.
    pub blobs: Option<BTreeSet<String>>,
    /// Snapshots whose directories are checked, as (snapshotter, key); `None`: all.
    pub snapshots: Option<BTreeSet<(String, String)>>,
    pub content: bool,
    pub layers: bool,
    /// Snapshot records and directories, holders and runtime metadata.
    pub metadata: bool,
}

/// Counters for the report and the benchmark.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub ingests: u64,
    pub layers: u64,
    /// Tar entries compared with snapshot directories.
    pub layer_entries: u64,
    /// Uncompressed tar bytes read.
    pub layer_bytes: u64,
    pub snapshots: u64,
    /// Wall time of the content pass (hashing and replay).
    #[serde(with = "secs")]
    pub content_time: Duration,
}

impl Stats {
    /// Adds `o`'s counts to these.
    pub fn merge(&mut self, o: &Stats) {
        self.blobs += o.blobs;
        self.blob_bytes += o.blob_bytes;
        self.ingests += o.ingests;
        self.layers += o.layers;
        self.layer_entries += o.layer_entries;
        self.layer_bytes += o.layer_bytes;
        self.snapshots += o.snapshots;
        self.content_time += o.content_time;
    }
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// What a check produced.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub findings: Vec<Finding>,
    pub stats: Stats,
}

impl Outcome {
    /// Adds `o`'s findings and counts to these.
    pub fn merge(&mut self, o: Outcome) {
        self.findings.extend(o.findings);
        self.stats.merge(&o.stats);
    }
}

/// Everything a check needs: the model, the scope, the progress bar.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
pub struct Context {
    pub model: Model,
    pub scope: Scope,
    pub progress: Progress,
    /// Threads for hashing and replay (resolved: at least 1).
    pub threads: usize,
}

impl Context {
    /// Reads the root's metadata and resolves the scope.
    pub fn load(opts: &Options, progress: Progress) -> Result<Context, AuditError> {
        if opts.content_only && opts.layers_only {
            return Err(AuditError::ConflictingScope);
        }
        let model = Model::load_layout(&opts.layout)?;
        let scope = scope::resolve(&model, opts)?;
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            opts.threads
        };
        Ok(Context {
            model,
            scope,
            progress,
            threads,
        })
    }

    /// A context for the layer check of the committed snapshots `snapshots` ((snapshotter,
    /// snapshotter key)) of an already loaded `model`: the daemon's check at commit and after
    /// an unclean stop. Only the layer replay is in scope, and only of those snapshots and of
    /// their layer blobs ([`layers::plan`] plans nothing else); set `scope.everything` to run
    /// [`runtime::check`] on the same model. Keys the model does not know are ignored (the
    /// snapshot was removed meanwhile).
    pub fn for_snapshots(model: Model, snapshots: &BTreeSet<(String, String)>) -> Context {
        let mut blobs = BTreeSet::new();
        let mut wanted = BTreeSet::new();
        for (sn, key) in snapshots {
            let Some(info) = model.snapshot_by_key(sn, key) else {
                continue;
            };
            blobs.extend(info.layer_digests.iter().cloned());
            blobs.extend(info.layer_digest.clone());
            wanted.insert((sn.clone(), key.clone()));
        }
        Context {
            model,
            scope: Scope {
                everything: false,
                blobs: Some(blobs),
                snapshots: Some(wanted),
                content: false,
                layers: true,
                metadata: false,
            },
            progress: Progress::hidden(),
            threads: 1,
        }
    }

    /// A context auditing everything of `model`, for unit tests of the checks.
    #[cfg(test)]
    pub(crate) fn for_model(model: Model) -> Context {
        Context {
            model,
            scope: Scope {
                everything: true,
                content: true,
                layers: true,
                metadata: true,
                ..Scope::default()
            },
            progress: Progress::hidden(),
            threads: 1,
        }
    }

    /// The content store directory.
    pub fn content_dir(&self) -> PathBuf {
        self.model.layout.content_dir()
    }

    /// `namespace/name` of every image referencing blob `digest`, in any namespace.
    pub fn images_of_blob(&self, digest: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .model
            .images()
            .into_iter()
            .filter(|img| {
                img.target.digest == digest
                    || img.manifests.iter().any(|m| {
                        m.digest == digest
                            || m.config.as_deref() == Some(digest)
                            || m.layers.iter().any(|l| l.digest.as_deref() == Some(digest))
                    })
            })
            .map(|img| format!("{}/{}", img.namespace, img.name))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// `namespace/name` of every image whose layers include chainID `chain_id`.
    pub fn images_of_chain(&self, chain_id: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .model
            .chain(chain_id)
            .map(|c| {
                c.images
                    .iter()
                    .map(|(ns, name)| format!("{ns}/{name}"))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out.dedup();
        out
    }
}

mod scope;

impl Scope {
    /// Whether blob `digest` is to be verified.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blobs.as_ref().is_none_or(|b| b.contains(digest))
    }

    /// Whether the snapshot `key` of `snapshotter` is to be checked.
    pub fn has_snapshot(&self, snapshotter: &str, key: &str) -> bool {
        self.snapshots
            .as_ref()
            .is_none_or(|s| s.contains(&(snapshotter.to_owned(), key.to_owned())))
    }
}

/// The result of an audit.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub root: PathBuf,
    #[serde(with = "humantime_serde_time")]
    pub started: SystemTime,
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Most severe first.
    pub findings: Vec<Finding>,
    pub stats: Stats,
    /// Problems met while reading the metadata (damaged records skipped).
    pub metadata_problems: Vec<String>,
}

mod humantime_serde_time {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
    }
}

impl Report {
    /// How many findings of each severity, most severe first.
    pub fn counts(&self) -> Vec<(Severity, usize)> {
        Severity::ALL
            .iter()
            .map(|&s| {
                (
                    s,
                    self.findings.iter().filter(|f| f.severity() == s).count(),
                )
            })
            .collect()
    }

    /// Whether anything worse than [`Severity::Info`] was found.
    pub fn has_problems(&self) -> bool {
        self.findings.iter().any(|f| f.severity() < Severity::Info)
    }

    /// The process exit code: 0 clean, 1 findings (information alone does not count).
    pub fn exit_code(&self) -> i32 {
        if self.has_problems() { 1 } else { 0 }
    }
}

/// Runs an audit.
pub fn run(opts: &Options, progress: Progress) -> Result<Report, AuditError> {
    let started = SystemTime::now();
    let t0 = Instant::now();
    let ctx = Context::load(opts, progress)?;
    let mut out = Outcome::default();
    if ctx.scope.content || ctx.scope.layers {
        out.merge(content::check(&ctx));
    }
    if ctx.scope.metadata {
        out.merge(snapshots::check(&ctx));
        out.merge(holders::check(&ctx));
        out.merge(runtime::check(&ctx));
    }
    ctx.progress.finish();
    let mut findings = out.findings;
    report::sort(&mut findings);
    Ok(Report {
        root: opts.layout.root.clone(),
        started,
        duration: t0.elapsed(),
        findings,
        stats: out.stats,
        metadata_problems: ctx.model.problems.clone(),
    })
}
