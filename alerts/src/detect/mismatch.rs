//! `metadata-mismatch`: containerd's metadata and its files disagree.
//!
//! * A snapshot directory (`…/snapshots/<id>`, or overlay's `…/snapshots/<id>/fs`) was
//!   removed (`rmdir`) or moved away (`rename`) while the snapshotter's database still
//!   records that id. containerd's own removal (`ctr snapshots rm`, an image removed and
//!   collected) deletes the records first and the directory after the transaction committed,
//!   so by the time its `rmdir` is seen the metadata no longer has the id: only a removal
//!   behind containerd's back leaves a record pointing at nothing.
//! * A committed content blob (`content/blobs/sha256/<hex>`, not an ingest) was written,
//!   truncated, or had a file renamed or linked onto it, and its content no longer hashes to
//!   its name. containerd writes blobs in `ingest/` and renames them in once verified: such a
//!   rename-in hashes right and says nothing.
//!
//! Neither can be judged on the event itself: the metadata may be updated a moment after the
//! directory goes, a writer may still be writing. So [`Checker`] (a plain state machine,
//! events in, checks due out, the time given) holds each subject for a settle delay
//! ([`SETTLE`], from its last event) and the daemon's worker then reads the metadata or
//! hashes the blob, off the capture path, and builds the alert with [`snapshot_alert`] or
//! [`blob_alert`]. One subject gives one alert; events on it within the group window after
//! its check fold into nothing (the alert already said it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ctrwatch_config::{Config, RuleId, Severity};
use ctrwatch_event::{FileEvent, Op, OpResult, PathBytes, StorageKind};

use crate::alert::{Alert, FileRef, MAX_EVENTS, MAX_SAMPLE_PATHS, Node, history_command};

/// How long after a subject's last event it is checked: containerd's metadata update lands
/// by then, and a writer's burst is over.
pub const SETTLE: Duration = Duration::from_secs(2);
/// The longest a blob's check waits after the first event of a burst, however long its
/// writer goes on: one touching it every second would otherwise postpone it for ever.
pub const MAX_POSTPONE: Duration = Duration::from_secs(10);
/// Subjects waiting for their check at most; beyond, events are counted and not judged.
pub const MAX_PENDING: usize = 4096;
/// containerd's content store directory under its root.
const CONTENT_BLOBS: &[u8] = b"/io.containerd.content.v1.content/blobs/";

/// What changed: the thing whose metadata and files may now disagree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A snapshot directory was removed or moved away.
    SnapshotGone {
        /// containerd's root (the event's `containerd.root`).
        root: PathBuf,
        /// The snapshotter (`overlayfs`, `native`, …).
        snapshotter: String,
        /// The snapshotter's directory (holding `metadata.db` and `snapshots/`).
        snapshotter_root: PathBuf,
        /// The directory id: `snapshots/<id>`.
        id: u64,
        /// `snapshots/<id>` itself.
        dir: PathBuf,
    },
    /// A committed blob's file was written or replaced.
    BlobWritten {
        /// containerd's root (the event's `containerd.root`): the blob is opened beneath it,
        /// no component below it followed if a symlink.
        root: PathBuf,
        /// The blob's path.
        path: PathBuf,
        /// `sha256:<hex>`: what its name says it holds.
        digest: String,
    },
}

impl Subject {
    /// The alert's grouping key (and the pending map's): one alert per subject. Paths in it
    /// are escaped ([`ctrwatch_event::escape_path`]): it is shown as it is.
    pub fn key(&self) -> String {
        match self {
            Subject::SnapshotGone {
                snapshotter_root,
                id,
                ..
            } => format!(
                "metadata-mismatch snapshot {}/snapshots/{id}",
                ctrwatch_event::escape_path(snapshotter_root)
            ),
            Subject::BlobWritten { path, .. } => {
                format!(
                    "metadata-mismatch blob {}",
                    ctrwatch_event::escape_path(path)
                )
            }
        }
    }
}

fn path_of(p: &PathBytes) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    PathBuf::from(std::ffi::OsStr::from_bytes(p.as_bytes()))
}

/// `…/snapshots/<id>` or `…/snapshots/<id>/fs`: (snapshotter root, id, `snapshots/<id>`).
fn snapshot_dir_of(path: &[u8]) -> Option<(PathBuf, u64, PathBuf)> {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = path.strip_suffix(b"/fs").unwrap_or(path);
    let slash = dir.iter().rposition(|&b| b == b'/')?;
    let (parent, name) = (&dir[..slash], &dir[slash + 1..]);
    if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let id: u64 = std::str::from_utf8(name).ok()?.parse().ok()?;
    let sn_root = parent.strip_suffix(b"/snapshots")?;
    Some((
        PathBuf::from(std::ffi::OsStr::from_bytes(sn_root)),
        id,
        PathBuf::from(std::ffi::OsStr::from_bytes(dir)),
    ))
}

/// `<root>/io.containerd.content.v1.content/blobs/sha256/<64 hex>`: the digest.
fn blob_digest_of(root: &[u8], path: &[u8]) -> Option<String> {
    let rest = path.strip_prefix(root)?.strip_prefix(CONTENT_BLOBS)?;
    let hex = rest.strip_prefix(b"sha256/")?;
    let hex_ok = hex.len() == 64
        && hex
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    hex_ok.then(|| format!("sha256:{}", String::from_utf8_lossy(hex)))
}

/// What this event asks the rule to check, if anything: a successful `rmdir` or `rename`
/// (away) of a snapshot directory or its `fs`; a successful write, truncate, fallocate or
/// open for writing of a committed sha256 blob, or a `rename`/`link` onto one.
pub fn candidate(ev: &FileEvent) -> Option<Subject> {
    // Protect's records are verdicts on calls not yet made: the call's own record, if it
    // went through, asks for the check.
    if ev.result != OpResult::Ok || ev.details.protect.is_some() {
        return None;
    }
    let view = ev.details.containerd.as_deref()?;
    match ev.op {
        Op::Rmdir | Op::Rename if view.kind == StorageKind::Snapshot => {
            let snapshotter = view.snapshotter.clone()?;
            let (snapshotter_root, id, dir) = snapshot_dir_of(ev.path.as_bytes())?;
            (Some(id) == view.snapshot_id).then(|| Subject::SnapshotGone {
                root: path_of(&view.root),
                snapshotter,
                snapshotter_root,
                id,
                dir,
            })
        }
        Op::Rename | Op::Link => {
            let to = ev.new_path.as_ref()?;
            let digest = blob_digest_of(view.root.as_bytes(), to.as_bytes())?;
            Some(Subject::BlobWritten {
                root: path_of(&view.root),
                path: path_of(to),
                digest,
            })
        }
        Op::Modify | Op::Truncate | Op::Fallocate | Op::OpenWrite
            if view.kind == StorageKind::Blob =>
        {
            let digest = blob_digest_of(view.root.as_bytes(), ev.path.as_bytes())?;
            Some(Subject::BlobWritten {
                root: path_of(&view.root),
                path: path_of(&ev.path),
                digest,
            })
        }
        _ => None,
    }
}

/// A subject waiting for its check.
#[derive(Clone, Debug)]
pub struct Pending {
    /// What to check.
    pub subject: Subject,
    /// The subject's events so far (the first [`MAX_EVENTS`]), first one first.
    pub events: Vec<FileEvent>,
    /// How many.
    pub count: u64,
    /// The first and last event's times (ns since the epoch).
    pub first_ns: i64,
    /// See `first_ns`.
    pub last_ns: i64,
    /// Checked at (wall clock, ns).
    pub due_ns: i64,
    /// When its first event was seen (wall clock, ns): bounds the postponement.
    pub opened_ns: i64,
    /// Checks that could not read the metadata yet (retried a few times).
    pub attempts: u32,
}

/// The rule's state: subjects waiting for their settle delay, subjects already alerted.
pub struct Checker {
    node: Node,
    enabled: bool,
    severity: Severity,
    window_ns: i64,
    pending: HashMap<String, Pending>,
    /// Subjects alerted recently (key → until when further events fold into that alert).
    alerted_until: HashMap<String, i64>,
    /// Events not judged because too many subjects were pending.
    pub dropped: u64,
}

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Checker {
    /// The rule as configured (`[rules.metadata-mismatch]`, `[alerts] group_window`).
    pub fn new(config: &Config, node: Node) -> Checker {
        let r = config.rule(RuleId::MetadataMismatch);
        Checker {
            node,
            enabled: r.enabled,
            severity: r
                .severity
                .unwrap_or(RuleId::MetadataMismatch.default_severity()),
            window_ns: ns(config.alerts.group_window),
            pending: HashMap::new(),
            alerted_until: HashMap::new(),
            dropped: 0,
        }
    }

    /// Whether the rule is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// An event, seen at `now_ns` (wall clock): opens or extends its subject's wait.
    pub fn event(&mut self, ev: &FileEvent, now_ns: i64) {
        if !self.enabled {
            return;
        }
        let Some(subject) = candidate(ev) else { return };
        let key = subject.key();
        if self
            .alerted_until
            .get(&key)
            .is_some_and(|&until| now_ns < until)
        {
            return;
        }
        let due_ns = now_ns.saturating_add(ns(SETTLE));
        if let Some(p) = self.pending.get_mut(&key) {
            p.count += 1;
            p.last_ns = p.last_ns.max(ev.time_ns);
            if p.events.len() < MAX_EVENTS {
                p.events.push(ev.clone());
            }
            // A writer still at it: its blob is hashed once it stops, but no later than
            // MAX_POSTPONE after the burst began (a writer that never stops is checked too).
            if matches!(p.subject, Subject::BlobWritten { .. }) {
                p.due_ns = due_ns.min(p.opened_ns.saturating_add(ns(MAX_POSTPONE)));
            }
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.dropped += 1;
            return;
        }
        self.pending.insert(
            key,
            Pending {
                subject,
                events: vec![ev.clone()],
                count: 1,
                first_ns: ev.time_ns,
                last_ns: ev.time_ns,
                due_ns,
                opened_ns: now_ns,
                attempts: 0,
            },
        );
    }

    /// The subjects whose check is due at `now_ns` (all of them with `all`: at a stop).
    pub fn due(&mut self, now_ns: i64, all: bool) -> Vec<Pending> {
        let keys: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| all || p.due_ns <= now_ns)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out: Vec<Pending> = keys
            .into_iter()
            .filter_map(|k| self.pending.remove(&k))
            .collect();
        out.sort_by_key(|p| p.first_ns);
        self.alerted_until.retain(|_, until| now_ns < *until);
        out
    }

    /// An alert was raised for `p` at `now_ns`: further events on its subject within the
    /// group window fold into it (a check that found nothing does not: the next write to
    /// that blob is checked again).
    pub fn alerted(&mut self, p: &Pending, now_ns: i64) {
        self.alerted_until.insert(
            p.subject.key(),
            now_ns.saturating_add(self.window_ns.max(ns(SETTLE))),
        );
    }

    /// A check that could not be made yet (the metadata could not be read): tried again
    /// a settle delay later, up to 3 times in all; false when it gives up.
    pub fn retry(&mut self, mut p: Pending, now_ns: i64) -> bool {
        p.attempts += 1;
        if p.attempts >= 3 {
            return false;
        }
        let key = p.subject.key();
        p.due_ns = now_ns.saturating_add(ns(SETTLE));
        self.pending.insert(key, p);
        true
    }

    /// When the next check is due (None: nothing pending).
    pub fn next_due_ns(&self) -> Option<i64> {
        self.pending.values().map(|p| p.due_ns).min()
    }

    fn alert(&self, p: &Pending, summary: String) -> Alert {
        let first = &p.events[0];
        let mut a = Alert::new(
            RuleId::MetadataMismatch,
            self.severity,
            p.subject.key(),
            self.node.clone(),
            p.first_ns,
            summary,
            String::new(),
        );
        a.last_seen_ns = p.last_ns;
        a.count = p.count;
        let view = first.details.containerd.as_deref();
        a.containerd = view.cloned();
        a.process = Some(Arc::clone(&first.process));
        for ev in &p.events {
            for path in std::iter::once(&ev.path).chain(ev.new_path.as_ref()) {
                if a.sample_paths.len() < MAX_SAMPLE_PATHS && !a.sample_paths.contains(path) {
                    a.sample_paths.push(path.clone());
                }
            }
        }
        a.events = p.events.clone();
        let mut ops: Vec<&str> = p.events.iter().map(|e| e.op.name()).collect();
        ops.dedup();
        a.details.insert("ops".into(), ops.join(","));
        a
    }

    /// The alert for a snapshot directory gone while `metadata` (what the snapshotter's
    /// database still says about that id) references it.
    pub fn snapshot_alert(&self, p: &Pending, metadata: &SnapshotRecord) -> Option<Alert> {
        let Subject::SnapshotGone {
            snapshotter,
            id,
            dir,
            ..
        } = &p.subject
        else {
            return None;
        };
        let first = p.events.first()?;
        let who = first.process.command_summary(120);
        let mut images = metadata.images.clone();
        if let Some(v) = first.details.containerd.as_deref() {
            for i in &v.images {
                if !images.contains(i) {
                    images.push(i.clone());
                }
            }
        }
        // Everything below comes from paths and bolt files: escaped for display.
        let what = match (&metadata.layer_digest, metadata.kind.as_str()) {
            (Some(d), _) => format!("{} layer {}", metadata.kind, ctrwatch_event::escape(d)),
            (None, kind) => format!("{kind} snapshot"),
        };
        let of = if images.is_empty() {
            String::new()
        } else {
            format!(" of {}", ctrwatch_event::escape(&images.join(", ")))
        };
        let summary = format!(
            "{who} {} snapshot directory {} ({} snapshot {id}, {what}{of}) while \
             containerd's metadata still records it (key {}): containerd will fail to mount \
             or unpack onto it",
            verb(first.op),
            ctrwatch_event::escape_path(dir),
            ctrwatch_event::escape(snapshotter),
            ctrwatch_event::escape(&metadata.key),
        );
        let mut a = self.alert(p, summary);
        let dir_bytes = PathBytes(dir.as_os_str().as_encoded_bytes().to_vec());
        a.command = history_command(&dir_bytes, p.first_ns, p.last_ns);
        a.file = Some(FileRef {
            path: dir_bytes,
            inner_path: None,
        });
        if let Some(v) = a.containerd.as_mut() {
            v.images = images;
            if v.layer_digest.is_none() {
                v.layer_digest = metadata.layer_digest.clone();
            }
        }
        a.details
            .insert("mismatch".into(), "snapshot_removed".into());
        a.details
            .insert("snapshotter".into(), ctrwatch_event::escape(snapshotter));
        a.details.insert("snapshot_id".into(), id.to_string());
        a.details
            .insert("snapshot_key".into(), ctrwatch_event::escape(&metadata.key));
        a.details
            .insert("snapshot_kind".into(), metadata.kind.clone());
        a.details.insert(
            "referenced_by".into(),
            if metadata.referenced_by.is_empty() {
                "the snapshotter's metadata.db only (no meta.db record)".into()
            } else {
                ctrwatch_event::escape(&metadata.referenced_by.join(", "))
            },
        );
        Some(a)
    }

    /// The alert for a blob whose content hashes to `found` instead of its name's digest.
    pub fn blob_alert(&self, p: &Pending, found: &str, size: u64) -> Option<Alert> {
        let Subject::BlobWritten { path, digest, .. } = &p.subject else {
            return None;
        };
        let first = p.events.first()?;
        let who = first.process.command_summary(120);
        let view = first.details.containerd.as_deref();
        let images = view.map(|v| v.images.clone()).unwrap_or_default();
        let role = view
            .and_then(|v| v.blob_role)
            .map(|r| format!("{} ", r.name()))
            .unwrap_or_default();
        let of = if images.is_empty() {
            String::new()
        } else {
            format!(" of {}", ctrwatch_event::escape(&images.join(", ")))
        };
        let summary = format!(
            "content {role}blob {digest}{of} no longer matches its digest (its {size} bytes hash \
             to {found}) after {who} {} it: pulls and unpacks of it fail with \"unexpected \
             commit digest\" or a digest mismatch",
            verb(first.op),
        );
        let mut a = self.alert(p, summary);
        let path_bytes = PathBytes(path.as_os_str().as_encoded_bytes().to_vec());
        a.command = history_command(&path_bytes, p.first_ns, p.last_ns);
        a.file = Some(FileRef {
            path: path_bytes,
            inner_path: None,
        });
        if let Some(v) = a.containerd.as_mut() {
            // A rename-in is attributed to its old path (the ingest): name the blob.
            v.kind = StorageKind::Blob;
            v.blob_digest = Some(digest.clone());
        }
        a.details.insert("mismatch".into(), "blob_digest".into());
        a.details.insert("expected_digest".into(), digest.clone());
        a.details.insert("found_digest".into(), found.to_owned());
        a.details.insert("size".into(), size.to_string());
        Some(a)
    }
}

fn verb(op: Op) -> &'static str {
    match op {
        Op::Rmdir => "removed",
        Op::Rename => "moved away",
        Op::Link => "linked a file onto",
        Op::Truncate => "truncated",
        _ => "wrote to",
    }
}

/// What the snapshotter's database (and meta.db) still say about a snapshot id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The snapshotter's key.
    pub key: String,
    /// `committed`, `active`, `view`.
    pub kind: String,
    /// The layer unpacked into it.
    pub layer_digest: Option<String>,
    /// Images using it.
    pub images: Vec<String>,
    /// meta.db records pointing at it, as `namespace/key`.
    pub referenced_by: Vec<String>,
}

/// Whether `dir` is there (a rename away and back, or a new directory, after all).
pub fn still_there(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_dirs_are_recognized_by_their_path() {
        let (root, id, dir) =
            snapshot_dir_of(b"/r/io.containerd.snapshotter.v1.overlayfs/snapshots/12/fs")
                .expect("fs");
        assert_eq!(root, Path::new("/r/io.containerd.snapshotter.v1.overlayfs"));
        assert_eq!(id, 12);
        assert_eq!(
            dir,
            Path::new("/r/io.containerd.snapshotter.v1.overlayfs/snapshots/12")
        );
        assert!(snapshot_dir_of(b"/r/x.overlayfs/snapshots/12").is_some());
        assert!(snapshot_dir_of(b"/r/x.overlayfs/snapshots/12/fs/etc").is_none());
        assert!(snapshot_dir_of(b"/r/x.overlayfs/snapshots/12/work").is_none());
        assert!(snapshot_dir_of(b"/r/x.overlayfs/snapshots/new-12").is_none());
        assert!(snapshot_dir_of(b"/r/x.overlayfs/other/12").is_none());
    }

    const S: i64 = 1_000_000_000;
    const T0: i64 = 1_790_000_000 * S;
    const ROOT: &str = "/var/lib/containerd";

    fn blob_path() -> String {
        format!(
            "{ROOT}/io.containerd.content.v1.content/blobs/sha256/{}",
            "ab".repeat(32)
        )
    }

    fn event(t: i64, op: Op, path: &str, new_path: Option<&str>, kind: StorageKind) -> FileEvent {
        FileEvent {
            time_ns: t,
            mono_ns: 0,
            op,
            path: PathBytes(path.as_bytes().to_vec()),
            new_path: new_path.map(|p| PathBytes(p.as_bytes().to_vec())),
            result: OpResult::Ok,
            inode: None,
            dev: None,
            process: Arc::new(ctrwatch_event::ProcessView {
                pid: 42,
                comm: "python3".into(),
                ..Default::default()
            }),
            details: ctrwatch_event::Details {
                containerd: Some(Box::new(ctrwatch_event::ContainerdView {
                    root: PathBytes(ROOT.as_bytes().to_vec()),
                    kind,
                    snapshotter: Some("overlayfs".into()),
                    snapshot_id: Some(12),
                    blob_digest: Some(format!("sha256:{}", "ab".repeat(32))),
                    ..Default::default()
                })),
                ..Default::default()
            },
        }
    }

    fn checker() -> Checker {
        Checker::new(
            &Config::default(),
            Node {
                hostname: "edge".into(),
                machine_id: "0123".into(),
            },
        )
    }

    #[test]
    fn candidates_are_removals_of_snapshot_dirs_and_writes_into_blobs() {
        let sn = format!("{ROOT}/io.containerd.snapshotter.v1.overlayfs/snapshots/12");
        let gone = event(T0, Op::Rmdir, &sn, None, StorageKind::Snapshot);
        assert!(matches!(
            candidate(&gone),
            Some(Subject::SnapshotGone { id: 12, .. })
        ));
        let inner = event(
            T0,
            Op::Rmdir,
            &format!("{sn}/fs/etc"),
            None,
            StorageKind::Snapshot,
        );
        assert_eq!(candidate(&inner), None);
        let unlink = event(
            T0,
            Op::Unlink,
            &format!("{sn}/fs"),
            None,
            StorageKind::Snapshot,
        );
        assert_eq!(candidate(&unlink), None);
        let write = event(T0, Op::Modify, &blob_path(), None, StorageKind::Blob);
        assert!(matches!(
            candidate(&write),
            Some(Subject::BlobWritten { .. })
        ));
        let ingest = format!("{ROOT}/io.containerd.content.v1.content/ingest/x/data");
        let rename_in = event(
            T0,
            Op::Rename,
            &ingest,
            Some(&blob_path()),
            StorageKind::Ingest,
        );
        assert!(matches!(
            candidate(&rename_in),
            Some(Subject::BlobWritten { .. })
        ));
        let ingest_write = event(T0, Op::Modify, &ingest, None, StorageKind::Ingest);
        assert_eq!(candidate(&ingest_write), None);
        let mut failed = event(T0, Op::Rmdir, &sn, None, StorageKind::Snapshot);
        failed.result = OpResult::from_ret(-39);
        assert_eq!(candidate(&failed), None);
    }

    /// A blob renamed in (checked, fine) and then overwritten within the group window is
    /// checked again: only an alert folds later events (the first version suppressed them
    /// for the window after any check, so a write right after an import was never judged).
    #[test]
    fn a_check_that_found_nothing_does_not_hide_the_next_write() {
        let mut c = checker();
        let ingest = format!("{ROOT}/io.containerd.content.v1.content/ingest/x/data");
        c.event(
            &event(
                T0,
                Op::Rename,
                &ingest,
                Some(&blob_path()),
                StorageKind::Ingest,
            ),
            T0,
        );
        assert!(
            c.due(T0 + S, false).is_empty(),
            "not before the settle delay"
        );
        let due = c.due(T0 + 3 * S, false);
        assert_eq!(due.len(), 1);
        // The check found the digest right: no alert, nothing recorded.
        c.event(
            &event(
                T0 + 4 * S,
                Op::Modify,
                &blob_path(),
                None,
                StorageKind::Blob,
            ),
            T0 + 4 * S,
        );
        let due = c.due(T0 + 7 * S, false);
        assert_eq!(due.len(), 1, "the write after the import is checked");
        // This one alerted: a write right after folds into it.
        c.alerted(&due[0], T0 + 7 * S);
        c.event(
            &event(
                T0 + 8 * S,
                Op::Modify,
                &blob_path(),
                None,
                StorageKind::Blob,
            ),
            T0 + 8 * S,
        );
        assert!(c.due(T0 + 20 * S, false).is_empty());
    }

    #[test]
    fn a_writer_still_writing_postpones_the_hash_and_events_fold() {
        let mut c = checker();
        for i in 0..5 {
            c.event(
                &event(
                    T0 + i * S,
                    Op::Modify,
                    &blob_path(),
                    None,
                    StorageKind::Blob,
                ),
                T0 + i * S,
            );
        }
        assert!(c.due(T0 + 5 * S, false).is_empty());
        let due = c.due(T0 + 6 * S + 1, false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, 5);
        let a = c
            .blob_alert(&due[0], &format!("sha256:{}", "cd".repeat(32)), 10)
            .expect("alert");
        assert_eq!(a.rule, RuleId::MetadataMismatch);
        assert_eq!(a.severity, Severity::Warning);
        assert_eq!(a.count, 5);
        assert_eq!(
            a.details["expected_digest"],
            format!("sha256:{}", "ab".repeat(32))
        );
        assert!(a.command.starts_with("ctrwatch history "), "{}", a.command);
    }

    /// A writer that touches a blob more often than the settle delay (every second here, for
    /// a minute) postponed its check for as long as it went on: the check now comes at most
    /// [`MAX_POSTPONE`] after the burst's first event, even while the writes go on.
    #[test]
    fn a_writer_that_never_stops_does_not_postpone_the_check_forever() {
        let mut c = checker();
        let mut checked_at = None;
        for i in 0..60 {
            let now = T0 + i * S;
            c.event(
                &event(now, Op::Modify, &blob_path(), None, StorageKind::Blob),
                now,
            );
            if !c.due(now, false).is_empty() {
                checked_at = Some(i);
                break;
            }
        }
        let at = checked_at.expect("no check within a minute of writes every second");
        assert!(
            at * S <= ns(MAX_POSTPONE),
            "checked {at} s after the first write"
        );
    }

    /// Keys are shown in logs and alerts as they are: a path with a newline or a terminal
    /// escape in it is escaped (the first version used `Path::display`).
    #[test]
    fn keys_escape_their_paths() {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = b"/r/io.containerd.snapshotter.v1.overlayfs\n\x1b[2J\xff";
        let s = Subject::SnapshotGone {
            root: PathBuf::from("/r"),
            snapshotter: "overlayfs".into(),
            snapshotter_root: PathBuf::from(std::ffi::OsStr::from_bytes(dir)),
            id: 7,
            dir: PathBuf::from("/r/x/snapshots/7"),
        };
        assert_eq!(
            s.key(),
            "metadata-mismatch snapshot \
             /r/io.containerd.snapshotter.v1.overlayfs\\x0a\\x1b[2J\\xff/snapshots/7"
        );
    }

    #[test]
    fn blobs_are_recognized_by_their_path() {
        let hex = "ab".repeat(32);
        let p = format!("/r/io.containerd.content.v1.content/blobs/sha256/{hex}");
        assert_eq!(
            blob_digest_of(b"/r", p.as_bytes()),
            Some(format!("sha256:{hex}"))
        );
        let ingest = "/r/io.containerd.content.v1.content/ingest/abc/data";
        assert_eq!(blob_digest_of(b"/r", ingest.as_bytes()), None);
        let short = "/r/io.containerd.content.v1.content/blobs/sha256/abc";
        assert_eq!(blob_digest_of(b"/r", short.as_bytes()), None);
        let upper = format!(
            "/r/io.containerd.content.v1.content/blobs/sha256/{}",
            "AB".repeat(32)
        );
        assert_eq!(blob_digest_of(b"/r", upper.as_bytes()), None);
    }
}
