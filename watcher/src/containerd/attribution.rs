//! Per-event containerd attribution: what a path under a containerd root is (namespace,
//! snapshot, layer, images, container, blob, ingest, path inside the layer) and whether the
//! process acting on it is the instance that owns the root (`owner`), a container writing its
//! own writable layer (`container`), or anything else (`foreign`).
//!
//! Per event this is string work and hash lookups only. The metadata model of each instance
//! is reloaded when its bolt files change (checked by `stat` at most every
//! [`RELOAD_DEBOUNCE`], on the watch loop's tick and when an event names a snapshot the
//! model does not know). What a snapshot was is remembered across reloads, so an event on a
//! snapshot that has just been removed still names its layer and images.

use std::{
    collections::{BTreeSet, HashMap},
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ctrwatch_event::{ContainerdView, PathBytes, ProcessView, StorageKind, Verdict};

pub use super::verdict::Trust;
use super::verdict::{self, Owner};
use super::{
    BlobRole, DiscoveryEnv, Instance, Model, PathClass, RootLayout, SnapshotArea, SnapshotInfo,
    SnapshotKind, classify_path, discover,
};
use crate::layercheck::{CommitFeed, SnapshotRef};
use crate::process::ProcessTable;
use crate::roots::unescape_mount_field;

/// Minimum time between two loads of one instance's metadata.
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(250);
/// Minimum time between two checks of the bolt files for a snapshot or blob not in the model.
const UNKNOWN_RECHECK: Duration = Duration::from_millis(10);
/// Minimum time between two re-discoveries forced by an unexpected `containerd` process.
const REDISCOVER_MIN: Duration = Duration::from_secs(1);
/// Remembered snapshots and blobs per instance, beyond which the ones no longer in the
/// model are forgotten.
const MAX_REMEMBERED: usize = 200_000;

/// Remembered facts about a content blob.
#[derive(Clone, Debug, Default)]
struct BlobFacts {
    namespace: Option<String>,
    role: Option<BlobRole>,
    images: Vec<String>,
}

/// One containerd instance being attributed.
struct Tracked {
    layout: RootLayout,
    /// Every directory of the instance (root, state, snapshotter roots).
    dirs: Vec<PathBuf>,
    containerd_pid: Option<u32>,
    exe: Option<PathBuf>,
    /// The systemd unit of containerd, when containerd is that unit's own process (its parent
    /// is PID 1 or a k3s/rke2 supervisor).
    unit: Option<String>,
    /// k3s/rke2 supervising containerd (it writes `containerd.log` in the root).
    supervisor_pid: Option<u32>,
    model: Option<Model>,
    /// `stat` of the bolt files when the model was loaded.
    signature: Vec<(PathBuf, u64, i64, i64)>,
    loaded_at: Option<Instant>,
    checked_at: Option<Instant>,
    load_error: Option<String>,
    snapshots: HashMap<(String, u64), SnapshotInfo>,
    blobs: HashMap<String, BlobFacts>,
    /// `tmpmounts/<name>` → the snapshot mounted there.
    tmpmounts: HashMap<String, (String, u64)>,
    /// Where newly committed snapshots go to be checked (the layer check).
    commit_feed: Option<CommitFeed>,
    /// The committed snapshots of the last model loaded (None: none loaded yet).
    committed: Option<BTreeSet<SnapshotRef>>,
}

impl Tracked {
    fn new(layout: RootLayout, instance: Option<&Instance>) -> Tracked {
        let mut dirs = vec![layout.root.clone()];
        dirs.extend(layout.state.clone());
        if let Some(i) = instance {
            dirs.extend(
                i.snapshotter_roots
                    .iter()
                    .filter(|s| super::discovery::system_dir(&s.path).is_none())
                    .map(|s| s.path.clone()),
            );
        }
        dirs.extend(layout.snapshotter_roots.iter().map(|(_, p)| p.clone()));
        dirs.sort();
        dirs.dedup();
        let mut t = Tracked {
            layout,
            dirs,
            containerd_pid: None,
            exe: None,
            unit: None,
            supervisor_pid: None,
            model: None,
            signature: Vec::new(),
            loaded_at: None,
            checked_at: None,
            load_error: None,
            snapshots: HashMap::new(),
            blobs: HashMap::new(),
            tmpmounts: HashMap::new(),
            commit_feed: None,
            committed: None,
        };
        t.set_process(instance);
        t
    }

    fn set_process(&mut self, instance: Option<&Instance>) {
        let pid = instance.and_then(|i| i.containerd_pid);
        self.containerd_pid = pid;
        self.exe = instance.and_then(|i| i.exe.clone());
        self.unit = None;
        self.supervisor_pid = None;
        let Some(pid) = pid else { return };
        let ppid = read_ppid(pid);
        let parent_exe = ppid.and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok());
        let parent_is_supervisor = parent_exe
            .as_deref()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("k3s") || n.starts_with("rke2"));
        if parent_is_supervisor {
            self.supervisor_pid = ppid;
        }
        // A unit is containerd's only if systemd (or its supervisor) started it: a containerd
        // started from a shell shares the shell's unit with every other command there.
        if ppid == Some(1) || parent_is_supervisor {
            self.unit = crate::cgroup::read_for_pid(pid)
                .ok()
                .and_then(|c| c.unit)
                .filter(|u| u.ends_with(".service"));
        }
    }

    /// For a path below `tmpmounts/` (`/<mount>/<p>`): the snapshot whose directory is
    /// mounted there (from containerd's mountinfo while the mount exists, then remembered),
    /// and `/<p>` inside it.
    fn tmpmount_target(&mut self, inner: &[u8]) -> Option<(String, u64, Vec<u8>)> {
        let rest = inner.strip_prefix(b"/")?;
        let (name, below) = match rest.iter().position(|&b| b == b'/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, &b""[..]),
        };
        let name = String::from_utf8_lossy(name).into_owned();
        if !self.tmpmounts.contains_key(&name) {
            let mount_point = self.layout.root.join("tmpmounts").join(&name);
            let pid = self.containerd_pid.unwrap_or_else(std::process::id);
            let source = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
                .ok()
                .and_then(|mi| bind_source(&mi, &mount_point))?;
            let PathClass::SnapshotFile {
                snapshotter,
                dir_id,
                area: SnapshotArea::Fs,
                ..
            } = classify_path(&self.layout, source.as_os_str().as_bytes())
            else {
                return None;
            };
            if self.tmpmounts.len() > 1024 {
                self.tmpmounts.clear();
            }
            self.tmpmounts.insert(name.clone(), (snapshotter, dir_id));
        }
        let (sn, id) = self.tmpmounts.get(&name)?.clone();
        let inner = if below.is_empty() {
            b"/".to_vec()
        } else {
            below.to_vec()
        };
        Some((sn, id, inner))
    }

    fn contains(&self, path: &[u8]) -> bool {
        self.dirs.iter().any(|d| under(path, d))
    }

    fn metadata_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.layout.meta_db()];
        match &self.model {
            Some(m) => files.extend(
                m.snapshotters
                    .values()
                    .map(|s| s.root.join(super::paths::SNAPSHOTTER_DB)),
            ),
            None => {
                if let Ok(rd) = std::fs::read_dir(&self.layout.root) {
                    for e in rd.filter_map(Result::ok) {
                        let name = e.file_name();
                        if name
                            .as_bytes()
                            .starts_with(b"io.containerd.snapshotter.v1.")
                        {
                            files.push(e.path().join(super::paths::SNAPSHOTTER_DB));
                        }
                    }
                }
                files.extend(
                    self.layout
                        .snapshotter_roots
                        .iter()
                        .map(|(_, p)| p.join(super::paths::SNAPSHOTTER_DB)),
                );
            }
        }
        files
    }

    fn current_signature(&self) -> Vec<(PathBuf, u64, i64, i64)> {
        self.metadata_files()
            .into_iter()
            .filter_map(|p| {
                let m = std::fs::metadata(&p).ok()?;
                Some((p, m.size(), m.mtime(), m.mtime_nsec()))
            })
            .collect()
    }

    /// Reloads the model if the bolt files changed (or it was never loaded), at most every
    /// [`RELOAD_DEBOUNCE`].
    fn maybe_reload(&mut self, now: Instant) {
        self.maybe_reload_within(now, RELOAD_DEBOUNCE);
    }

    /// For a snapshot or blob the model does not know (just created): the bolt files are
    /// checked more often, since the events that follow need it.
    fn reload_for_unknown(&mut self, now: Instant) {
        self.maybe_reload_within(now, UNKNOWN_RECHECK);
    }

    fn maybe_reload_within(&mut self, now: Instant, debounce: Duration) {
        if self
            .checked_at
            .is_some_and(|t| now.duration_since(t) < debounce)
        {
            return;
        }
        self.checked_at = Some(now);
        let sig = self.current_signature();
        if self.model.is_some() && sig == self.signature {
            return;
        }
        self.signature = sig;
        self.loaded_at = Some(now);
        let started = Instant::now();
        match Model::load_layout(&self.layout) {
            Ok(model) => {
                self.load_error = None;
                self.remember(&model);
                self.note_commits(&model);
                self.model = Some(model);
                crate::metrics::METRICS.mapping_refreshed(started.elapsed());
            }
            Err(e) => {
                if self.load_error.as_deref() != Some(&e.to_string()) {
                    log::debug!(
                        "containerd metadata of {}: {e}",
                        ctrwatch_event::escape_path(&self.layout.root)
                    );
                }
                self.load_error = Some(e.to_string());
            }
        }
    }

    /// Hands the snapshots committed since the last load to the layer check; at the first
    /// load, says the instance's metadata is readable (the after-crash verification).
    fn note_commits(&mut self, model: &Model) {
        let now: BTreeSet<SnapshotRef> = model
            .snapshotters
            .iter()
            .flat_map(|(name, sn)| {
                sn.snapshots
                    .iter()
                    .filter(|(_, b)| b.kind == SnapshotKind::Committed)
                    .map(move |(key, _)| (name.clone(), key.clone()))
            })
            .collect();
        if let Some(feed) = &self.commit_feed {
            match &self.committed {
                Some(before) => {
                    let new: BTreeSet<SnapshotRef> = now.difference(before).cloned().collect();
                    if !new.is_empty() {
                        feed.committed(&self.layout, new);
                    }
                }
                None => feed.instance(&self.layout),
            }
        }
        self.committed = Some(now);
    }

    /// Copies what the model says about every snapshot and blob into the remembered maps,
    /// keeping what removed ones were.
    fn remember(&mut self, model: &Model) {
        let mut live_snaps = Vec::new();
        for (name, sn) in &model.snapshotters {
            for &id in sn.by_id.keys() {
                let Some(mut info) = model.snapshot_by_dir_id(name, id) else {
                    continue;
                };
                let key = (name.clone(), id);
                if let Some(old) = self.snapshots.get(&key)
                    && old.key == info.key
                {
                    // An image removed before its layers are collected: the layer still holds
                    // that image's files, so what it was derived from the image is kept.
                    keep_known(&mut info, old);
                }
                live_snaps.push(key.clone());
                self.snapshots.insert(key, info);
            }
        }
        let mut live_blobs = Vec::new();
        for ns in model.namespaces.values() {
            for digest in ns.blobs.keys() {
                let Some(b) = model.blob(digest) else {
                    continue;
                };
                let entry = self.blobs.entry(digest.clone()).or_default();
                entry.namespace = b.namespaces.first().cloned();
                entry.role = b.role;
                if !b.images.is_empty() {
                    entry.images = b.images;
                }
                live_blobs.push(digest.clone());
            }
        }
        if self.snapshots.len() > MAX_REMEMBERED {
            let live: std::collections::HashSet<_> = live_snaps.into_iter().collect();
            self.snapshots.retain(|k, _| live.contains(k));
        }
        if self.blobs.len() > MAX_REMEMBERED {
            let live: std::collections::HashSet<_> = live_blobs.into_iter().collect();
            self.blobs.retain(|k, _| live.contains(k));
        }
    }
}

/// Attributes events to containerd instances. See the module docs.
pub struct Attributor {
    /// Roots given on the command line (empty: every discovered instance).
    configured: Vec<PathBuf>,
    trust: Trust,
    env: DiscoveryEnv,
    instances: Vec<Tracked>,
    rediscovered_at: Option<Instant>,
    /// The layer check's queue, given to every instance.
    commit_feed: Option<CommitFeed>,
}

impl Attributor {
    /// Discovers the instances for `configured` roots (empty: all of them).
    pub fn new(configured: Vec<PathBuf>, trust: Trust) -> Attributor {
        Attributor::with_env(configured, trust, DiscoveryEnv::system())
    }

    /// [`Attributor::new`] with the discovery's environment given (tests: a fake /proc and config files).
    pub fn with_env(configured: Vec<PathBuf>, trust: Trust, env: DiscoveryEnv) -> Attributor {
        let mut a = Attributor {
            configured,
            trust,
            env,
            instances: Vec::new(),
            rediscovered_at: None,
            commit_feed: None,
        };
        a.rediscover();
        a
    }

    /// A reload started or stopped the layer check: the snapshots committed from now on go to
    /// `feed` (None: nowhere).
    pub fn set_commit_feed(&mut self, feed: Option<CommitFeed>) {
        for t in &mut self.instances {
            t.commit_feed = feed.clone();
        }
        self.commit_feed = feed;
    }

    /// Newly committed snapshots of every instance go to `feed` (the layer check), from the
    /// next load of its metadata on.
    pub fn with_commit_feed(mut self, feed: CommitFeed) -> Attributor {
        for t in &mut self.instances {
            t.commit_feed = Some(feed.clone());
        }
        self.commit_feed = Some(feed);
        self
    }

    /// An opaque mark was set on a directory of the committed layer `view` describes: that
    /// layer is replayed again against its tar ([`CommitFeed::marked`]), whoever set it.
    pub fn opaque_mark_set(&self, view: &ContainerdView) {
        let (Some(snapshotter), Some(id)) = (view.snapshotter.as_deref(), view.snapshot_id) else {
            return;
        };
        let Some(t) = self
            .instances
            .iter()
            .find(|t| t.layout.root.as_os_str().as_bytes() == view.root.as_bytes())
        else {
            return;
        };
        let (Some(feed), Some(model)) = (&t.commit_feed, &t.model) else {
            return;
        };
        if let Some(key) = model
            .snapshotters
            .get(snapshotter)
            .and_then(|sn| sn.by_id.get(&id))
        {
            feed.marked(&t.layout, (snapshotter.to_owned(), key.clone()));
        }
    }

    /// A reloaded configuration: the roots named (empty: every discovered instance) and the
    /// trusted writers. Discovery runs again when the roots changed (models of instances
    /// that stay are kept).
    pub fn reconfigure(&mut self, configured: Vec<PathBuf>, trust: Trust) {
        self.trust = trust;
        if configured != self.configured {
            self.configured = configured;
            self.rediscover();
        }
    }

    /// The instances' roots.
    pub fn roots(&self) -> Vec<&Path> {
        self.instances
            .iter()
            .map(|t| t.layout.root.as_path())
            .collect()
    }

    /// The PIDs of the containerd processes that own the instances, as the last discovery
    /// found them (sorted, without duplicates): protect mode trusts the executables they
    /// run (`/proc/PID/exe`), also a replaced one.
    pub fn containerd_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .instances
            .iter()
            .filter_map(|t| t.containerd_pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The executables of the containerd processes that own the instances, as /proc showed
    /// them at the last discovery (sorted, without duplicates): protect mode trusts them and
    /// the shims and runc installed beside them.
    pub fn containerd_exes(&self) -> Vec<PathBuf> {
        let mut exes: Vec<PathBuf> = self
            .instances
            .iter()
            .filter_map(|t| t.exe.clone())
            .collect();
        exes.sort();
        exes.dedup();
        exes
    }

    /// Re-runs discovery (a containerd restarted, installed, or a root appeared). Remembered
    /// mappings and loaded models of instances that stay are kept.
    pub fn rediscover(&mut self) {
        self.rediscovered_at = Some(Instant::now());
        let found = discover(&self.env);
        let mut wanted: Vec<(RootLayout, Option<Instance>)> = Vec::new();
        if self.configured.is_empty() {
            for i in found.iter().filter(|i| i.exists) {
                wanted.push((i.layout(), Some(i.clone())));
            }
        } else {
            for c in &self.configured {
                let c = self.env.canonical(c);
                let matching = found.iter().find(|i| {
                    let l = i.layout();
                    let mut dirs = vec![l.root];
                    dirs.extend(l.state);
                    dirs.extend(l.snapshotter_roots.into_iter().map(|(_, p)| p));
                    dirs.iter().any(|d| d.starts_with(&c) || c.starts_with(d))
                });
                match matching {
                    Some(i) => wanted.push((i.layout(), Some(i.clone()))),
                    None if looks_like_root(&c) => wanted.push((RootLayout::new(c), None)),
                    None => {}
                }
            }
        }
        let mut old: Vec<Tracked> = std::mem::take(&mut self.instances);
        for (layout, instance) in wanted {
            if self.instances.iter().any(|t| t.layout.root == layout.root) {
                continue;
            }
            match old.iter().position(|t| t.layout == layout) {
                Some(pos) => {
                    let mut t = old.swap_remove(pos);
                    t.set_process(instance.as_ref());
                    self.instances.push(t);
                }
                None => {
                    let mut t = Tracked::new(layout, instance.as_ref());
                    t.commit_feed = self.commit_feed.clone();
                    self.instances.push(t);
                }
            }
        }
    }

    /// Periodic work: reloads changed metadata.
    pub fn tick(&mut self) {
        let now = Instant::now();
        for t in &mut self.instances {
            t.maybe_reload(now);
        }
    }

    /// The `containerd` object of an event on `path` (or, for a rename, `new_path`) by
    /// `process`; `None` outside every containerd root. `kernel_internal`: the kernel made the
    /// change itself (note `kernel_internal`), for `process`; `xattr`: the name of the xattr
    /// changed, if any.
    pub fn attribute(
        &mut self,
        path: &[u8],
        new_path: Option<&[u8]>,
        process: &ProcessView,
        processes: &mut ProcessTable,
        kernel_internal: bool,
        xattr: Option<&[u8]>,
    ) -> Option<ContainerdView> {
        let (idx, path, of_new_path) = match self.instances.iter().position(|t| t.contains(path)) {
            Some(i) => (i, path, false),
            None => {
                let np = new_path?;
                (
                    self.instances.iter().position(|t| t.contains(np))?,
                    np,
                    true,
                )
            }
        };
        let mut view = self.describe(idx, path);
        // From outside every root: the object (and the verdict) is the destination's.
        view.of_new_path = of_new_path;
        // A rename or link from elsewhere (inside the root or not) into a committed layer or
        // the metadata changes the destination: that is what is judged (a `mv tmp-x
        // …/snapshots/N/fs/pause` by a foreign process is a foreign change of layer N).
        let (idx, path) = match new_path {
            Some(np) if np != path && !changes_the_store(&view) => {
                match self.instances.iter().position(|t| t.contains(np)) {
                    Some(j) => {
                        let dest = self.describe(j, np);
                        if changes_the_store(&dest) {
                            view = dest;
                            view.of_new_path = true;
                            (j, np)
                        } else {
                            (idx, path)
                        }
                    }
                    None => (idx, path),
                }
            }
            _ => (idx, path),
        };
        let change = self.change(idx, path, kernel_internal, xattr);
        let (mut verdict, mut reason) = self.verdict(idx, process, processes, &view, path, &change);
        // containerd restarted (new pid) since discovery: look again, once a second at most.
        let looks_like_containerd = process.comm == "containerd"
            || self.instances[idx]
                .exe
                .as_ref()
                .is_some_and(|e| process.exe.as_deref() == e.to_str());
        if verdict == Verdict::Foreign
            && looks_like_containerd
            && self
                .rediscovered_at
                .is_none_or(|t| t.elapsed() >= REDISCOVER_MIN)
        {
            self.rediscover();
            if let Some(i) = self.instances.iter().position(|t| t.contains(path)) {
                (verdict, reason) = self.verdict(i, process, processes, &view, path, &change);
            }
        }
        view.verdict = verdict;
        view.reason = reason;
        Some(view)
    }

    /// What the verdict needs to know of the event itself: whether the kernel made the
    /// change, and then where in a snapshot's directory `path` is (overlay's `work` or `fs`).
    fn change<'a>(
        &self,
        idx: usize,
        path: &[u8],
        kernel_internal: bool,
        xattr: Option<&'a [u8]>,
    ) -> verdict::Change<'a> {
        let area = kernel_internal
            .then(|| match classify_path(&self.instances[idx].layout, path) {
                PathClass::SnapshotFile { area, .. } => Some(area),
                _ => None,
            })
            .flatten();
        verdict::Change {
            kernel_internal,
            area,
            xattr,
        }
    }

    /// `owner`, `container` or `foreign`, and why ([`verdict::verdict`], which reads
    /// nothing). The one read it may need is done here: the command line of the shim a
    /// process runs below, which names its container when it has no container id of its own.
    fn verdict(
        &self,
        idx: usize,
        p: &ProcessView,
        processes: &mut ProcessTable,
        view: &ContainerdView,
        path: &[u8],
        change: &verdict::Change<'_>,
    ) -> (Verdict, String) {
        let t = &self.instances[idx];
        let below_containerd = t
            .containerd_pid
            .is_some_and(|cpid| p.ancestors.iter().any(|a| a.pid == cpid));
        let shim_cmdline = match verdict::shim_ancestor(p) {
            Some(shim) if below_containerd && p.container_id.is_none() => processes
                .lookup(shim.pid)
                .map(|info| info.cmdline.as_slice()),
            _ => None,
        };
        let owner = Owner {
            root: &t.layout.root,
            containerd_pid: t.containerd_pid,
            exe: t.exe.as_deref(),
            unit: t.unit.as_deref(),
            supervisor_pid: t.supervisor_pid,
        };
        verdict::verdict(&owner, &self.trust, p, shim_cmdline, view, path, change)
    }

    /// What `path` is in instance `idx`'s storage.
    fn describe(&mut self, idx: usize, path: &[u8]) -> ContainerdView {
        let t = &mut self.instances[idx];
        if t.model.is_none() {
            t.maybe_reload(Instant::now());
        }
        let mut v = ContainerdView {
            root: PathBytes(t.layout.root.as_os_str().as_bytes().to_vec()),
            kind: StorageKind::Other,
            ..ContainerdView::default()
        };
        match classify_path(&t.layout, path) {
            PathClass::SnapshotFile {
                snapshotter,
                dir_id,
                area,
                inner_path,
            } => {
                v.kind = StorageKind::Snapshot;
                let key = (snapshotter.clone(), dir_id);
                // Unknown (just prepared), or an unpack that is being committed.
                let settling = t
                    .snapshots
                    .get(&key)
                    .is_none_or(|i| i.names.first().is_some_and(|n| n.starts_with("extract-")));
                if settling {
                    t.reload_for_unknown(Instant::now());
                }
                if let Some(info) = t.snapshots.get(&key) {
                    fill_snapshot(&mut v, info);
                    v.stale = t.model.as_ref().is_none_or(|m| {
                        m.snapshotters
                            .get(&snapshotter)
                            .is_none_or(|s| !s.by_id.contains_key(&dir_id))
                    });
                }
                v.snapshotter = Some(snapshotter);
                v.snapshot_id = Some(dir_id);
                if area == SnapshotArea::Fs {
                    v.path = Some(PathBytes(if inner_path.is_empty() {
                        b"/".to_vec()
                    } else {
                        inner_path
                    }));
                }
            }
            PathClass::SnapshotTemp {
                snapshotter,
                inner_path,
                ..
            } => {
                v.kind = StorageKind::SnapshotTemp;
                v.snapshotter = Some(snapshotter);
                v.path = (!inner_path.is_empty()).then_some(PathBytes(inner_path));
            }
            PathClass::Blob { digest } => {
                v.kind = StorageKind::Blob;
                if !t.blobs.contains_key(&digest) {
                    t.reload_for_unknown(Instant::now());
                }
                if let Some(b) = t.blobs.get(&digest) {
                    v.namespace = b.namespace.clone();
                    v.images = b.images.clone();
                    v.blob_role = b.role;
                    if b.role == Some(BlobRole::Layer) {
                        v.layer_digest = Some(digest.clone());
                    }
                }
                v.blob_digest = Some(digest);
            }
            PathClass::Ingest { dir, .. } => {
                v.kind = StorageKind::Ingest;
                let info = t.model.as_ref().and_then(|m| m.ingest(&dir));
                if info.is_none() {
                    t.maybe_reload(Instant::now());
                }
                if let Some(info) = t.model.as_ref().and_then(|m| m.ingest(&dir)) {
                    v.namespace = info.namespace;
                    v.ingest_ref = info.key.or(info.backend_ref);
                    v.blob_digest = info.expected;
                }
            }
            PathClass::Metadata { .. } => {
                v.kind = StorageKind::Metadata;
                t.maybe_reload(Instant::now());
            }
            PathClass::Tmpmount { inner_path } => {
                v.kind = StorageKind::Tmpmount;
                v.path = (!inner_path.is_empty()).then_some(PathBytes(inner_path.clone()));
                // Base layers are unpacked through a bind mount of the snapshot's `fs` at
                // `tmpmounts/containerd-mountN`: map the path to the snapshot.
                if let Some((sn, id, inner)) = t.tmpmount_target(&inner_path) {
                    let key = (sn.clone(), id);
                    if !t.snapshots.contains_key(&key) {
                        t.reload_for_unknown(Instant::now());
                    }
                    if let Some(info) = t.snapshots.get(&key) {
                        fill_snapshot(&mut v, info);
                    }
                    v.snapshotter = Some(sn);
                    v.snapshot_id = Some(id);
                    v.path = Some(PathBytes(inner));
                }
            }
            PathClass::RuntimeState {
                namespace,
                container_id,
                inner_path,
                ..
            } => {
                v.kind = StorageKind::RuntimeState;
                if let Some(c) = t
                    .model
                    .as_ref()
                    .and_then(|m| m.container_in(&namespace, &container_id))
                {
                    v.images.extend(c.image.clone());
                    v.pod = c.pod();
                }
                v.namespace = Some(namespace);
                v.container_id = Some(container_id);
                v.path = (!inner_path.is_empty()).then_some(PathBytes(inner_path));
            }
            PathClass::Other => {}
        }
        v
    }
}

/// Fills what `fresh` (the same snapshot, reloaded) no longer knows from `old`.
fn keep_known(fresh: &mut SnapshotInfo, old: &SnapshotInfo) {
    if fresh.images.is_empty() {
        fresh.images = old.images.clone();
    }
    if fresh.layer_digest.is_none() {
        fresh.layer_digest = old.layer_digest.clone();
    }
    if fresh.layer_digests.is_empty() {
        fresh.layer_digests = old.layer_digests.clone();
    }
    if fresh.diff_id.is_none() {
        fresh.diff_id = old.diff_id.clone();
    }
    if fresh.chain_id.is_none() {
        fresh.chain_id = old.chain_id.clone();
    }
    if fresh.container_id.is_none() {
        fresh.container_id = old.container_id.clone();
        fresh.pod = old.pod.clone();
    }
}

fn fill_snapshot(v: &mut ContainerdView, info: &SnapshotInfo) {
    v.namespace = info.namespaces.first().cloned();
    v.snapshot_key = info.names.first().cloned();
    v.snapshot_kind = Some(info.kind);
    v.layer_digest = info.layer_digest.clone();
    v.chain_id = info.chain_id.clone();
    v.images = info.images.clone();
    v.container_id = info.container_id.clone();
    v.pod = info.pod.clone();
}

/// Whether `path` is `dir` or below it (lexically).
fn under(path: &[u8], dir: &Path) -> bool {
    let d = dir.as_os_str().as_bytes();
    let d = d.strip_suffix(b"/").unwrap_or(d);
    path.starts_with(d) && (path.len() == d.len() || path.get(d.len()) == Some(&b'/'))
}

/// A directory given as a root that no discovered instance owns, but holds containerd's
/// plugin directories.
fn looks_like_root(dir: &Path) -> bool {
    dir.join("io.containerd.metadata.v1.bolt").is_dir()
        || std::fs::read_dir(dir).is_ok_and(|rd| {
            rd.filter_map(Result::ok)
                .any(|e| e.file_name().as_bytes().starts_with(b"io.containerd."))
        })
}

/// The host path bind-mounted at `mount_point`, from a mountinfo text: the mount's root
/// within its filesystem, placed under a mount of the whole filesystem (same device, root
/// `/`, or the longest root that is a prefix).
fn bind_source(mountinfo: &str, mount_point: &Path) -> Option<PathBuf> {
    let fields = |line: &str| -> Option<(String, PathBuf, PathBuf)> {
        let mut f = line.split(' ');
        let (_, _, dev, root, mp) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        Some((
            dev.to_owned(),
            PathBuf::from(unescape_mount_field(root)),
            PathBuf::from(unescape_mount_field(mp)),
        ))
    };
    let lines: Vec<_> = mountinfo.lines().filter_map(fields).collect();
    let (dev, root, _) = lines.iter().rev().find(|(_, _, mp)| mp == mount_point)?;
    let (base_root, base_mp) = lines
        .iter()
        .filter(|(d, r, mp)| d == dev && root.starts_with(r) && mp != mount_point)
        .max_by_key(|(_, r, _)| r.as_os_str().len())
        .map(|(_, r, mp)| (r, mp))?;
    let rel = root.strip_prefix(base_root).ok()?;
    Some(base_mp.join(rel))
}

fn read_ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: the fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// Whether a change of what `view` describes is one the rules judge as a change of the store
/// itself: a committed layer's files or containerd's metadata.
fn changes_the_store(view: &ContainerdView) -> bool {
    view.is_committed_layer() || view.kind == StorageKind::Metadata
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpmount_bind_source() {
        let mi = "27 1 254:0 / / rw - ext4 /dev/vda rw\n\
                  90 27 254:0 /r/io.containerd.snapshotter.v1.overlayfs/snapshots/7/fs /r/tmpmounts/containerd-mount1 rw - ext4 /dev/vda rw\n";
        assert_eq!(
            bind_source(mi, Path::new("/r/tmpmounts/containerd-mount1")),
            Some(PathBuf::from(
                "/r/io.containerd.snapshotter.v1.overlayfs/snapshots/7/fs"
            ))
        );
    }

    #[test]
    fn under_is_by_component() {
        assert!(under(b"/r/a", Path::new("/r")));
        assert!(under(b"/r", Path::new("/r")));
        assert!(!under(b"/rr/a", Path::new("/r")));
    }
}
