//! The `metadata-mismatch` worker: the checks [`ctrwatch_alerts::detect::mismatch`] asks for,
//! made on a [`CheckWorker`] (the low-priority thread the layer check uses too), never on
//! the capture path: after a subject's settle delay it reads containerd's metadata again (the
//! lock-free bolt reader, [`Model::load_layout`]) for a removed snapshot directory, or hashes
//! a written blob (at most [`MAX_HASH_BYTES`]), and hands the alerts to the store writer. At
//! a stop, what is pending is checked until the stop's deadline ([`STOP_BUDGET`]); the log
//! names what was not.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ctrwatch_alerts::Alert;
use ctrwatch_alerts::detect::mismatch::{Checker, Pending, SnapshotRecord, Subject};
use ctrwatch_event::FileEvent;
use ctrwatch_event::time::Clock;
use sha2::{Digest as _, Sha256};

use crate::checkworker::{CheckWorker, Checks, STOP_BUDGET, Stop, some_of};
use crate::containerd::{Model, RootLayout, fsx};

/// Blobs larger than this are not hashed (a check must not read the disk for minutes); the
/// log says which were skipped.
pub const MAX_HASH_BYTES: u64 = 1 << 30;
/// Events waiting for the worker at most (beyond: counted, not judged).
pub const QUEUE: usize = 4096;

/// The worker (a [`CheckWorker`]): events in through [`CheckWorker::send`], alerts out
/// through `send`.
pub fn start(
    checker: Checker,
    send: impl Fn(Vec<Alert>) + Send + 'static,
) -> anyhow::Result<CheckWorker<Box<FileEvent>>> {
    CheckWorker::start(
        "metadata-mismatch",
        QUEUE,
        MismatchChecks {
            checker,
            clock: Clock::process(),
            send,
            reported_drops: 0,
        },
    )
}

/// The rule's state machine and where its alerts go.
struct MismatchChecks<F> {
    checker: Checker,
    clock: Clock,
    send: F,
    reported_drops: u64,
}

impl<F: Fn(Vec<Alert>) + Send + 'static> Checks for MismatchChecks<F> {
    type Msg = Box<FileEvent>;

    fn message(&mut self, ev: Box<FileEvent>, _stop: &Stop) {
        self.checker.event(&ev, self.clock.now_ns());
        if self.checker.dropped > self.reported_drops {
            log::warn!(
                "metadata-mismatch: {} events not checked (too many subjects pending)",
                self.checker.dropped - self.reported_drops
            );
            self.reported_drops = self.checker.dropped;
        }
    }

    fn next_due(&self) -> Option<Duration> {
        let now = self.clock.now_ns();
        let due = self.checker.next_due_ns()?;
        Some(Duration::from_nanos(
            u64::try_from(due.saturating_sub(now)).unwrap_or(0),
        ))
    }

    fn run_due(&mut self, stop: &Stop) {
        let now = self.clock.now_ns();
        let due = self.checker.due(now, false);
        if due.is_empty() {
            return;
        }
        let mut skipped = Vec::new();
        let alerts = check(&mut self.checker, due, now, true, stop, &mut skipped);
        (self.send)(alerts);
        log_skipped(&skipped);
    }

    /// What is pending (and queued) is checked, oldest first, until the stop's deadline; what
    /// is left is named in the log.
    fn at_stop(&mut self, queued: Vec<Box<FileEvent>>, stop: &Stop) {
        for ev in queued {
            self.checker.event(&ev, self.clock.now_ns());
        }
        let now = self.clock.now_ns();
        let mut alerts = Vec::new();
        let mut skipped = Vec::new();
        for p in self.checker.due(now, true) {
            if stop.past_deadline() {
                skipped.push(p.subject.key());
                continue;
            }
            alerts.extend(check(
                &mut self.checker,
                vec![p],
                now,
                false,
                stop,
                &mut skipped,
            ));
        }
        (self.send)(alerts);
        log_skipped(&skipped);
    }
}

/// Says which checks a stop cut short.
fn log_skipped(skipped: &[String]) {
    if !skipped.is_empty() {
        log::warn!(
            "metadata-mismatch: stopping: {} check(s) not made within the stop's {STOP_BUDGET:?}, \
             not checked: {}",
            skipped.len(),
            some_of(skipped, 10)
        );
    }
}

/// Makes the checks of `due`: the alerts to raise. With `may_retry`, a check whose metadata
/// could not be read goes back to wait. A blob whose hash the stop's deadline cut short is
/// added to `skipped` (its key, escaped).
fn check(
    checker: &mut Checker,
    due: Vec<Pending>,
    now_ns: i64,
    may_retry: bool,
    stop: &Stop,
    skipped: &mut Vec<String>,
) -> Vec<Alert> {
    let mut alerts = Vec::new();
    // One read of each instance's metadata per round.
    let mut models: HashMap<(PathBuf, String, PathBuf), Result<Model, String>> = HashMap::new();
    for p in due {
        let failed = match &p.subject {
            Subject::SnapshotGone {
                root,
                snapshotter,
                snapshotter_root,
                id,
                dir,
            } => {
                if fsx::lstat_beneath(snapshotter_root, dir).is_ok() {
                    // Moved back, or made again: nothing disagrees.
                    continue;
                }
                let model = models
                    .entry((root.clone(), snapshotter.clone(), snapshotter_root.clone()))
                    .or_insert_with(|| load(root, snapshotter, snapshotter_root));
                match model {
                    Ok(m) => {
                        if let Some(r) = record(m, snapshotter, *id)
                            && let Some(a) = checker.snapshot_alert(&p, &r)
                        {
                            checker.alerted(&p, now_ns);
                            alerts.push(a);
                        }
                        None
                    }
                    Err(e) => Some(format!(
                        "snapshot {id} of {}: containerd's metadata could not be read: {e}",
                        ctrwatch_event::escape_path(snapshotter_root)
                    )),
                }
            }
            Subject::BlobWritten { root, path, digest } => {
                match hash_blob(root, path, stop) {
                    Ok(Hashed::Digest(found, size)) if found != *digest => {
                        if let Some(a) = checker.blob_alert(&p, &found, size) {
                            checker.alerted(&p, now_ns);
                            alerts.push(a);
                        }
                    }
                    Ok(Hashed::Interrupted) => {
                        skipped.push(p.subject.key());
                    }
                    Ok(_) => {}
                    Err(e) => log::info!(
                        "metadata-mismatch: blob {} not checked: {e}",
                        ctrwatch_event::escape(digest)
                    ),
                }
                None
            }
        };
        if let Some(why) = failed
            && !(may_retry && checker.retry(p, now_ns))
        {
            log::warn!("metadata-mismatch: not checked: {why}");
        }
    }
    alerts
}

/// The metadata of the instance at `root`, its snapshotter `snapshotter` at `snapshotter_root`.
fn load(root: &Path, snapshotter: &str, snapshotter_root: &Path) -> Result<Model, String> {
    let mut layout = RootLayout::new(root);
    if layout.snapshotter_root(snapshotter) != snapshotter_root {
        layout = layout.with_snapshotter_root(snapshotter, snapshotter_root);
    }
    Model::load_layout(&layout).map_err(|e| e.to_string())
}

/// What the metadata still records about directory `id` of `snapshotter` (None: nothing).
fn record(model: &Model, snapshotter: &str, id: u64) -> Option<SnapshotRecord> {
    let info = model.snapshot_by_dir_id(snapshotter, id)?;
    let referenced_by = model
        .meta_records(snapshotter, &info.key)
        .iter()
        .map(|(ns, key)| format!("{ns}/{key}"))
        .collect();
    Some(SnapshotRecord {
        kind: info.kind.name().to_owned(),
        layer_digest: info.layer_digest.clone(),
        images: info.images.clone(),
        key: info.key,
        referenced_by,
    })
}

/// What hashing a blob gave.
#[derive(Debug, PartialEq, Eq)]
enum Hashed {
    /// `sha256:<hex>` and the size.
    Digest(String, u64),
    /// Nothing to judge: gone (collected), larger than [`MAX_HASH_BYTES`] (logged).
    Nothing,
    /// The stop's deadline passed while it was read.
    Interrupted,
}

/// Hashes the blob at `path`. Opened beneath containerd's `root`: no component below it
/// (`blobs/`, `sha256/`, the blob) is followed if it is a symlink, so a planted link cannot
/// make the check read (and report the hash and size of) a file outside the root. Never
/// blocks (a FIFO put there is refused). Reading stops once the stop's deadline passed.
fn hash_blob(root: &Path, path: &Path, stop: &Stop) -> Result<Hashed, String> {
    let mut file = match fsx::open_file_beneath(root, path) {
        Ok(f) => f,
        Err(e) if e.is_not_found() => return Ok(Hashed::Nothing),
        Err(e) => return Err(e.to_string()),
    };
    let size = file
        .metadata()
        .map_err(|e| format!("{}: {e}", ctrwatch_event::escape_path(path)))?
        .len();
    if size > MAX_HASH_BYTES {
        log::info!(
            "metadata-mismatch: {} not hashed: {size} bytes, more than {MAX_HASH_BYTES}",
            ctrwatch_event::escape_path(path)
        );
        return Ok(Hashed::Nothing);
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        if stop.past_deadline() {
            return Ok(Hashed::Interrupted);
        }
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", ctrwatch_event::escape_path(path)))?;
        if n == 0 {
            break;
        }
        read += n as u64;
        if read > MAX_HASH_BYTES {
            return Ok(Hashed::Nothing);
        }
        h.update(&buf[..n]);
    }
    Ok(Hashed::Digest(
        format!("sha256:{}", ctrwatch_event::hex(&h.finalize())),
        read,
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A scratch containerd root with a content store: (base dir, root, `blobs/sha256`).
    fn content_root(tag: &str) -> (PathBuf, PathBuf, PathBuf) {
        let base =
            std::env::temp_dir().join(format!("ctrwatch-mismatch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        let sha256 = root.join("io.containerd.content.v1.content/blobs/sha256");
        std::fs::create_dir_all(&sha256).unwrap();
        (base, root, sha256)
    }

    /// `blobs/sha256` replaced by a symlink to a directory outside the root holding a file of
    /// the blob's name: the check must not read that file (the first version opened beneath
    /// the blob's parent, so the symlinked parent was followed).
    #[test]
    fn a_symlinked_directory_above_the_blob_is_not_followed() {
        let (base, root, sha256) = content_root("symlink");
        let hex = "ab".repeat(32);
        let outside = base.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join(&hex), b"secret outside the root").unwrap();
        std::fs::remove_dir(&sha256).unwrap();
        symlink(&outside, &sha256).unwrap();
        let blob = sha256.join(&hex);
        assert!(std::fs::read(&blob).is_ok(), "the planted path leads out");
        let r = hash_blob(&root, &blob, &Stop::default());
        assert!(
            !matches!(r, Ok(Hashed::Digest(..))),
            "the file outside the root was read: {r:?}"
        );
        let e = r.expect_err("refused, and said so");
        assert!(e.contains("symbolic link"), "{e}");

        // The same blob in a plain directory is hashed.
        std::fs::remove_file(&sha256).unwrap();
        std::fs::create_dir_all(&sha256).unwrap();
        std::fs::write(&blob, b"hello").unwrap();
        assert_eq!(
            hash_blob(&root, &blob, &Stop::default()),
            Ok(Hashed::Digest(
                "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824".into(),
                5
            ))
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
