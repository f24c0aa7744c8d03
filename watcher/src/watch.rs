//! `ctrwatch watch`: attach, stream enriched events until interrupted, detach.
//!
//! Capture starts and stops at one instant for all programs (the kernel's capture switch):
//! it is turned on once every program is attached and the roots are set, and off first thing
//! at the stop; then the programs are detached and the ring buffer drained, so everything
//! captured before the stop is delivered, or counted in a loss record. The sink is told both
//! instants ([`Sink::capture_started`], [`Sink::capture_stopped`]): the daemon dates its runs
//! by them.

use std::{
    io::Write,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use ctrwatch_event::{FileEvent, LossEvent, monotonic_ns};
use watcher_common::Record;

use crate::{
    committed::{HeldRing, RingIdentity, RingPos},
    daemon::RunOptions,
    enrich::{Enricher, Outcome},
    kernel::{KernelWatch, LoadOptions, Origin},
    loss::LossTracker,
    notify,
    process::ProcessTable,
    roots::RootSet,
};

/// Where containerd and k3s keep their state unless configured otherwise.
pub const DEFAULT_ROOTS: &[&str] = &[
    "/var/lib/containerd",
    "/run/containerd",
    "/var/lib/rancher/k3s/agent/containerd",
    "/run/k3s/containerd",
];

/// The roots to watch when none are given: the usual containerd and k3s locations, plus every
/// trusted containerd instance discovered on the node (config files, running processes, k3s).
/// What discovery refused is logged (once).
pub fn discovered_roots() -> Vec<PathBuf> {
    let found = crate::containerd::discover_all(&crate::containerd::DiscoveryEnv::system());
    crate::containerd::log_refusals(&found.refused);
    roots_of(&found)
}

/// [`discovered_roots`] of a discovery already made.
pub fn roots_of(found: &crate::containerd::Discovery) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = DEFAULT_ROOTS.iter().map(PathBuf::from).collect();
    for r in crate::containerd::watch_roots(&found.instances) {
        if !roots.contains(&r) {
            roots.push(r);
        }
    }
    roots
}

#[derive(Clone, Debug)]
/// What `ctrwatch watch` (and `run`) captures, and how.
pub struct WatchOptions {
    /// Roots given by name (flags or the config file's `[watch] roots`).
    pub roots: Vec<PathBuf>,
    /// Also watch the usual locations and every trusted containerd instance found on the node
    /// (again at every refresh, so a containerd installed later is picked up without a
    /// restart). Off when `--root` is given: the flags name exactly what is watched.
    pub discover: bool,
    /// Print events as JSON lines instead of text.
    pub json: bool,
    /// The kernel ring buffer's size (a power of two, a multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// How often roots are re-resolved (new symlinks, bind mounts, roots created later).
    pub root_refresh: Duration,
    /// How long exited processes stay resolvable for late events.
    pub process_grace: Duration,
    /// Writers trusted besides containerd (ownership verdicts).
    pub trust: crate::containerd::attribution::Trust,
    /// Masks secrets in captured command lines.
    pub masker: crate::secrets::Masker,
    /// Pin the programs and maps here (bpffs), and adopt those a previous daemon of this
    /// build pinned (`run --pin-dir`); None: load them, detach them at the stop.
    pub pin_dir: Option<PathBuf>,
    /// The hook backend asked for (`--backend`, `[watch] backend`; kernel/backend.rs).
    pub backend: ctrwatch_config::Backend,
    /// Protect mode (`[watch] protect`, `run --protect`).
    pub protect: ctrwatch_config::ProtectMode,
}

/// What is being captured, for `ctrwatch status`: told to the sink once capture is on and
/// again when the watched roots change ([`Sink::capture_info`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureInfo {
    /// The capture backend's name.
    pub backend: String,
    /// Programs attached.
    pub hooks_attached: usize,
    /// Hooks this kernel does not have.
    pub hooks_unavailable: usize,
    /// The other hook families' probe results (fentry, lsm).
    pub families: Vec<crate::kernel::backend::FamilyProbe>,
    /// The watched roots, resolved.
    pub roots: Vec<PathBuf>,
    /// Protect mode asked for and in force.
    pub protect: crate::kernel::ProtectState,
}

/// Where events go.
pub trait Sink {
    /// Takes the event, boxed as the enricher makes it: the store's sink hands it to its
    /// writer thread as it is, without a copy.
    fn file_event(&mut self, ev: Box<FileEvent>) -> std::io::Result<()>;
    /// Takes a loss (the kernel's, or the sink's own queue's).
    fn loss(&mut self, ev: &LossEvent) -> std::io::Result<()>;
    /// Makes what was taken durable or visible (the store commits, stdout is flushed).
    fn flush(&mut self) -> std::io::Result<()>;
    /// Capture is on from `at` (all programs attached, roots set): called once, before any
    /// event. An error ends the watch before anything is delivered.
    fn capture_started(&mut self, at: SystemTime) -> anyhow::Result<()> {
        let _ = at;
        Ok(())
    }
    /// Everything captured before `at` has been handed to the sink (as events, or counted in
    /// loss records): about once a second. What the daemon's heartbeat claims.
    fn watermark(&mut self, at: SystemTime) {
        let _ = at;
    }
    /// A second passed without a watermark (the ring buffer could not be drained to empty
    /// within [`DRAIN_BUDGET`]: a flood): what is due on time anyway, at `now` (the alert
    /// rules' timers: a loss must be reported while the flood goes on, not after it).
    fn tick(&mut self, now: SystemTime) {
        let _ = now;
    }
    /// What is captured: after [`Sink::capture_started`], and when the roots change.
    fn capture_info(&mut self, info: CaptureInfo) {
        let _ = info;
    }
    /// The layer check's queue, for the attribution (None: no layer check).
    fn commit_feed(&mut self) -> Option<crate::layercheck::CommitFeed> {
        None
    }
    /// As [`Sink::capture_started`], for programs adopted from a previous daemon's pins: they
    /// never stopped capturing, and what they captured since that daemon last read the ring
    /// buffer comes first.
    fn capture_adopted(&mut self, at: SystemTime) -> anyhow::Result<()> {
        self.capture_started(at)
    }
    /// The ring buffer is pinned (it outlives the daemon): a sink that commits what it takes
    /// (the daemon's store) returns what the reader needs to hold the records read until their
    /// events are committed ([`crate::committed`]). None (the default): records are released
    /// as they are read.
    fn hold_ring(&mut self, ring: &RingIdentity) -> Option<HeldRing> {
        let _ = ring;
        None
    }
    /// The events handed over next come from the ring buffer record ending at `end` (only
    /// while the ring buffer is held).
    fn record_position(&mut self, end: RingPos) {
        let _ = end;
    }
    /// The events one record made, together (a process's exit: one per file it left open
    /// after writing): a store commits them in one transaction.
    fn file_events(&mut self, evs: Vec<Box<FileEvent>>) -> std::io::Result<()> {
        for ev in evs {
            self.file_event(ev)?;
        }
        Ok(())
    }
    /// Everything from the records ending at or before `end` has been handed over, those
    /// that made no event included (only while the ring buffer is held). False when the
    /// marker could not be queued: the reader says it again at its next drain.
    fn handed_through(&mut self, end: RingPos) -> bool {
        let _ = end;
        true
    }
    /// The reader holds much of the ring buffer: commit what was handed over soon.
    fn commit_soon(&mut self) {}
    /// Capture stopped at `at`: nothing after it is captured. The final drain (what was
    /// captured before `at`) and a flush follow.
    fn capture_stopped(&mut self, at: SystemTime) {
        let _ = at;
    }
    /// SIGHUP: the work that re-reads and checks the configuration, run on a blocking thread
    /// while the loop goes on draining the ring buffer. None: nothing to reload (`watch`
    /// reads no file).
    fn reload(&mut self) -> Option<ReloadJob> {
        None
    }
    /// The reload's result, back on the loop: the sink applies its part (or keeps everything
    /// and reports why) and returns the watch settings to apply now (None: keep them).
    fn reloaded(&mut self, result: anyhow::Result<RunOptions>) -> Option<WatchOptions> {
        let _ = result;
        None
    }
}

/// Re-reads and checks the configuration ([`Sink::reload`]): everything `run` checks at its
/// start, so that applying the result cannot fail halfway.
pub type ReloadJob = Box<dyn FnOnce() -> anyhow::Result<RunOptions> + Send>;

/// Events on stdout, one JSON object or one readable line each.
pub struct StdoutSink {
    out: std::io::BufWriter<std::io::Stdout>,
    json: bool,
}

impl StdoutSink {
    /// Prints to stdout, as text or JSON lines.
    pub fn new(json: bool) -> Self {
        StdoutSink {
            out: std::io::BufWriter::new(std::io::stdout()),
            json,
        }
    }
}

impl Sink for StdoutSink {
    fn file_event(&mut self, ev: Box<FileEvent>) -> std::io::Result<()> {
        if self.json {
            serde_json::to_writer(&mut self.out, &*ev)?;
            self.out.write_all(b"\n")
        } else {
            writeln!(self.out, "{}", ev.human_line())
        }
    }
    fn loss(&mut self, ev: &LossEvent) -> std::io::Result<()> {
        if self.json {
            serde_json::to_writer(&mut self.out, ev)?;
            self.out.write_all(b"\n")
        } else {
            writeln!(self.out, "{}", ev.human_line())
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Where containerd, its shims and runc are installed by distribution packages: trusted when
/// present, whichever containerd was discovered (a fallback: a containerd not seen running
/// at the start is still trusted when it is started from one of these later).
const INSTALLED_EXE_DIRS: [&str; 4] =
    ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"];
/// The executables trusted in [`INSTALLED_EXE_DIRS`].
const INSTALLED_EXE_NAMES: [&str; 3] = ["containerd", "containerd-shim-runc-v2", "runc"];

/// Whether `name`, found in the directory of a discovered containerd, is one of its helpers
/// trusted with it: its shims (`containerd-shim`, `containerd-shim-runc-v2`, ...) and runc.
/// k3s and rke2 install the three together in `<data-dir>/data/<hash>/bin/`.
fn is_containerd_helper(name: &std::ffi::OsStr) -> bool {
    name.as_bytes().starts_with(b"containerd-shim") || name.as_bytes() == b"runc"
}

/// Whether a helper found beside containerd may be trusted: it and its directory belong to
/// root and only root can write them (anyone able to put a `runc` there could otherwise
/// have it trusted). The discovered containerd's own executable is trusted as it is: it is
/// the owner the ownership verdicts judge by.
fn root_only_writable(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let root_only =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0);
    root_only(path) && path.parent().is_some_and(root_only)
}

/// Protect mode's trusted executables, followed while the daemon runs: the operator's
/// `trust_exes`, the executable of each discovered containerd that owns a watched root and
/// the shims and runc in its directory (how k3s and rke2 install them; with their layout,
/// `<data-dir>/data/<hash>/bin/`, also the containerd, shims and runc of the other `<hash>`
/// directories, so that an upgrade's new one is trusted as soon as it is unpacked, before
/// containerd starts from it and opens its meta.db for writing), and containerd, its runc
/// shim and runc at the usual /usr paths. The kernel trusts them by (dev, ino):
/// [`ExeTrust::follow`], at every tick, trusts what a rediscovery found (containerd
/// restarted from another executable) and what replaced a trusted file or appeared in one of
/// those directories (a package upgrade, a new k3s data hash). Trust is never withdrawn
/// while the daemon runs: a replaced executable's old (dev, ino) stays trusted (a file that
/// later gets that inode number on that filesystem would be trusted too: the kernel side
/// knows inodes, not files).
#[derive(Default)]
struct ExeTrust {
    /// What the trust was last computed from.
    from: Option<TrustInputs>,
    /// Every executable trusted so far.
    trusted: std::collections::HashSet<InodeId>,
    /// The containerd processes whose running executable is trusted, with its inode.
    running: std::collections::HashSet<(u32, InodeId)>,
}

/// A file's (st_dev, st_ino), as `stat` gives them.
type InodeId = (u64, u64);

/// A file's identity and last change (st_dev, st_ino, st_mtime, st_mtime_nsec): a directory's
/// changes when an entry is added, removed or replaced by a rename (how packages install).
type Stamp = (u64, u64, i64, i64);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec()))
}

/// What [`ExeTrust`] computes the trusted executables from, each path with its [`Stamp`]:
/// when none changed, nothing new can be trusted.
#[derive(PartialEq)]
struct TrustInputs {
    /// `/proc/PID/exe` of the discovered containerd processes.
    running: Vec<(PathBuf, Option<Stamp>)>,
    trust_exes: Vec<(PathBuf, Option<Stamp>)>,
    containerd_exes: Vec<(PathBuf, Option<Stamp>)>,
    /// The directories the executables are looked for in, and k3s/rke2 `data` directories.
    dirs: Vec<(PathBuf, Option<Stamp>)>,
}

/// `<X>/data` when `exe` is `<X>/data/<hash>/bin/<name>` (k3s, rke2).
fn rancher_data_dir(exe: &Path) -> Option<&Path> {
    let bin = exe.parent()?;
    let data = bin.parent()?.parent()?;
    (bin.file_name()? == "bin" && data.file_name()? == "data").then_some(data)
}

/// The `<hash>/bin` directories of a k3s/rke2 `data` directory (sorted), leaving out hidden
/// entries (an unpacking in progress).
fn rancher_bins(data: &Path) -> Vec<PathBuf> {
    let mut bins: Vec<PathBuf> = match std::fs::read_dir(data) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().as_bytes().starts_with(b"."))
            .map(|e| e.path().join("bin"))
            .filter(|bin| bin.is_dir())
            .collect(),
        Err(e) => {
            log::debug!(
                "protect mode: listing {}: {e}",
                ctrwatch_event::escape_path(data)
            );
            Vec::new()
        }
    };
    bins.sort();
    bins
}

/// The entries of `dir` that [`ExeTrust`] trusts (sorted): with `with_containerd`, a
/// `containerd` too (another k3s/rke2 hash directory's), beside the shims and runc; each
/// only when it and `dir` are root's alone to write.
fn trusted_entries(dir: &Path, with_containerd: bool) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            log::warn!(
                "protect mode: listing {} for containerd's shims and runc: {e}",
                ctrwatch_event::escape_path(dir)
            );
            return Vec::new();
        }
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            is_containerd_helper(&name) || (with_containerd && name.as_bytes() == b"containerd")
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found.retain(|p| {
        let ok = root_only_writable(p);
        if !ok {
            log::warn!(
                "protect mode: not trusting {}: it or its directory is not root's alone to \
                 write",
                ctrwatch_event::escape_path(p)
            );
        }
        ok
    });
    found
}

impl ExeTrust {
    /// Trusts what is not trusted yet among the executables `containerd_exes` (the
    /// discovered owners' executables) and `trust_exes` (the operator's) stand for. Cheap
    /// when nothing changed (a `stat` per executable and directory concerned).
    fn follow(
        &mut self,
        kernel: &mut KernelWatch,
        containerd_pids: &[u32],
        containerd_exes: &[PathBuf],
        trust_exes: &[PathBuf],
    ) {
        let stamped = |paths: &mut dyn Iterator<Item = &Path>| {
            paths
                .map(|p| (p.to_path_buf(), stamp(p)))
                .collect::<Vec<_>>()
        };
        let mut dirs: Vec<PathBuf> = INSTALLED_EXE_DIRS.iter().map(PathBuf::from).collect();
        for exe in containerd_exes {
            dirs.extend(exe.parent().map(Path::to_path_buf));
            if let Some(data) = rancher_data_dir(exe) {
                dirs.push(data.to_path_buf());
                // Each hash directory and its bin/ (unpacked in place or renamed in).
                for bin in rancher_bins(data) {
                    dirs.extend(bin.parent().map(Path::to_path_buf));
                    dirs.push(bin);
                }
            }
        }
        let running: Vec<PathBuf> = containerd_pids
            .iter()
            .map(|pid| PathBuf::from(format!("/proc/{pid}/exe")))
            .collect();
        let from = TrustInputs {
            running: stamped(&mut running.iter().map(PathBuf::as_path)),
            trust_exes: stamped(&mut trust_exes.iter().map(PathBuf::as_path)),
            containerd_exes: stamped(&mut containerd_exes.iter().map(PathBuf::as_path)),
            dirs: stamped(&mut dirs.iter().map(PathBuf::as_path)),
        };
        if self.from.as_ref() == Some(&from) {
            return;
        }
        self.from = Some(from);
        // (path, why), in the order they are logged.
        let mut candidates: Vec<(PathBuf, String)> = trust_exes
            .iter()
            .map(|e| (e.clone(), "trust_exes".to_owned()))
            .collect();
        for exe in containerd_exes {
            candidates.push((exe.clone(), "a discovered containerd".to_owned()));
            let beside = format!("beside the containerd {}", ctrwatch_event::escape_path(exe));
            if let Some(dir) = exe.parent() {
                for helper in trusted_entries(dir, false) {
                    candidates.push((helper, beside.clone()));
                }
            }
            // k3s/rke2: the other hash directories (an upgrade unpacks a new one, then
            // starts containerd from it).
            let Some(data) = rancher_data_dir(exe) else {
                continue;
            };
            let bins = rancher_bins(data);
            let why = format!(
                "in {}, as the containerd {}",
                ctrwatch_event::escape_path(data),
                ctrwatch_event::escape_path(exe)
            );
            for bin in bins.iter().filter(|b| Some(b.as_path()) != exe.parent()) {
                for found in trusted_entries(bin, true) {
                    candidates.push((found, why.clone()));
                }
            }
        }
        for dir in INSTALLED_EXE_DIRS {
            for name in INSTALLED_EXE_NAMES {
                let path = Path::new(dir).join(name);
                if !path.exists() {
                    continue;
                }
                // As for the helpers beside containerd: a file anyone but root may replace
                // (or put in a directory anyone may write) is not trusted.
                if !root_only_writable(&path) {
                    log::warn!(
                        "protect mode: not trusting {}: it or its directory is not root's \
                         alone to write",
                        ctrwatch_event::escape_path(&path)
                    );
                    continue;
                }
                candidates.push((path, "installed".to_owned()));
            }
        }
        for (path, why) in candidates {
            // The kernel compares the inode a process runs: a link's target's. A path that
            // is not there (a deleted executable's "… (deleted)") is skipped.
            let Ok(target) = std::fs::canonicalize(&path) else {
                continue;
            };
            let Ok(meta) = std::fs::metadata(&target) else {
                continue;
            };
            if let Some(fs_why) = unkeyable_fs(&target) {
                log::warn!(
                    "protect mode: cannot trust {} ({why}): {fs_why}",
                    ctrwatch_event::escape_path(&target)
                );
                continue;
            }
            let id = {
                use std::os::unix::fs::MetadataExt as _;
                (meta.dev(), meta.ino())
            };
            if !meta.is_file() || !self.trusted.insert(id) {
                continue;
            }
            let shown = if target == path {
                ctrwatch_event::escape_path(&path)
            } else {
                format!(
                    "{} (-> {})",
                    ctrwatch_event::escape_path(&path),
                    ctrwatch_event::escape_path(&target)
                )
            };
            match kernel.trust_exe(&target) {
                Ok(()) => log::info!("protect mode: trusting {shown} ({why})"),
                Err(e) => {
                    self.trusted.remove(&id);
                    log::warn!("protect mode: trusting {shown}: {e}");
                }
            }
        }
        // The inode each containerd runs: after a package upgrade with a deferred restart its
        // path names the new file (or nothing, "… (deleted)"), but the process still runs,
        // and writes as, the old one.
        for (pid, exe) in containerd_pids.iter().zip(&running) {
            let Ok(meta) = std::fs::metadata(exe) else {
                continue;
            };
            if let Some(why) = unkeyable_fs(exe) {
                log::warn!(
                    "protect mode: cannot trust the running executable of containerd pid {pid}: {why}"
                );
                continue;
            }
            let id = {
                use std::os::unix::fs::MetadataExt as _;
                (meta.dev(), meta.ino())
            };
            // Said once per process (usually the file trusted by its path above).
            if self.running.contains(&(*pid, id)) {
                continue;
            }
            match kernel.trust_exe_inode(id) {
                Ok(()) => {
                    self.trusted.insert(id);
                    self.running.insert((*pid, id));
                    log::info!(
                        "protect mode: trusting the running executable of containerd pid {pid}"
                    )
                }
                Err(e) => {
                    log::warn!(
                        "protect mode: trusting the running executable of containerd pid {pid}: {e}"
                    );
                }
            }
        }
    }
}

/// Why the protect maps cannot key `path`'s inode, or `None` when they can: the programs
/// compare the kernel's `i_sb->s_dev`, which is what `stat` says as st_dev except on btrfs
/// (an anonymous device per subvolume) and overlayfs (the underlying file's device and
/// inode): there an entry would never match (a path silently unprotected, an executable
/// untrusted).
fn unkeyable_fs(path: &Path) -> Option<&'static str> {
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    let fs = rustix::fs::statfs(path).ok()?;
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's type differs between libcs"
    )]
    let magic = fs.f_type as i64;
    match magic {
        BTRFS_SUPER_MAGIC => Some(
            "it is on btrfs, whose st_dev (a subvolume's anonymous device) is not the \
             kernel's superblock device the protect programs compare",
        ),
        OVERLAYFS_SUPER_MAGIC => Some(
            "it is on overlayfs, whose st_dev and st_ino are not those of the inode the \
             protect programs see",
        ),
        _ => None,
    }
}

/// The paths in the protect programs' PROTECTED map, with the inode each was protected as.
/// The kernel knows inodes, not paths: when a path goes (image garbage collection removes
/// a layer's snapshot) its inode number is free, and the filesystem reuses it (ext4 does,
/// soon) for a new file or directory, e.g. a new container's writable `fs`, which would
/// then be protected by mistake. [`ProtectedPaths::refresh`], at every tick, stops
/// protecting what is gone or is another inode now. Between the removal and the next tick
/// (≤ 1 s) a reused inode number is still protected; keying the map by (dev, ino,
/// i_generation) is the planned full fix. Snapshots committed after the start are not
/// added yet.
#[derive(Default)]
struct ProtectedPaths {
    paths: Vec<(PathBuf, InodeId)>,
}

impl ProtectedPaths {
    /// Protects `path`; false when it is not (logged).
    fn protect(&mut self, kernel: &mut KernelWatch, path: PathBuf) -> bool {
        if let Some(why) = unkeyable_fs(&path) {
            log::warn!(
                "protect mode: NOT protecting {}: {why}",
                ctrwatch_event::escape_path(&path)
            );
            return false;
        }
        match kernel.protect_path(&path) {
            Ok(id) => {
                log::info!(
                    "protect mode: protecting {}",
                    ctrwatch_event::escape_path(&path)
                );
                self.paths.push((path, id));
                true
            }
            Err(e) => {
                log::warn!("protect mode: {e}");
                false
            }
        }
    }

    /// Stops protecting the inodes whose path is gone or names another inode now (and
    /// protects that one instead: the same path, e.g. a meta.db replaced).
    fn refresh(&mut self, kernel: &mut KernelWatch) {
        use std::os::unix::fs::MetadataExt as _;
        let mut again = Vec::new();
        self.paths.retain(|(path, id)| {
            let now = std::fs::symlink_metadata(path)
                .ok()
                .map(|m| (m.dev(), m.ino()));
            if now == Some(*id) {
                return true;
            }
            let why = if now.is_some() { "replaced" } else { "gone" };
            match kernel.unprotect(*id) {
                Ok(()) => log::info!(
                    "protect mode: no longer protecting {} ({why})",
                    ctrwatch_event::escape_path(path)
                ),
                // Kept, to be tried again at the next tick.
                Err(e) => {
                    log::warn!(
                        "protect mode: unprotecting {}: {e}",
                        ctrwatch_event::escape_path(path)
                    );
                    return true;
                }
            }
            if now.is_some() {
                again.push(path.clone());
            }
            false
        });
        for path in again {
            self.protect(kernel, path);
        }
    }
}

/// Fills the protect programs' PROTECTED map: per root, the content store's blobs
/// directory, meta.db, the snapshotters' metadata.db and the trees of the snapshots
/// committed at the start (not active ones: an active snapshot's `fs` is a running
/// container's upper directory, which its processes must be able to write). Snapshots
/// committed or removed later are not followed yet. The trusted executables are
/// [`ExeTrust`]'s.
fn protect_roots(kernel: &mut KernelWatch, roots: &RootSet, protected: &mut ProtectedPaths) {
    for root in &roots.roots {
        let mut paths: Vec<PathBuf> = [
            "io.containerd.content.v1.content/blobs",
            "io.containerd.metadata.v1.bolt/meta.db",
        ]
        .iter()
        .map(|rel| root.canonical.join(rel))
        .collect();
        // Committed layers, as the snapshotters' databases say at the start (not updated
        // yet when snapshots are committed or removed later).
        if let Ok(model) = crate::containerd::metadata::Model::load(&root.canonical) {
            for (name, snapshotter) in &model.snapshotters {
                paths.push(
                    snapshotter
                        .root
                        .join(crate::containerd::paths::SNAPSHOTTER_DB),
                );
                for snapshot in snapshotter.snapshots.values() {
                    if snapshot.kind != ctrwatch_event::SnapshotKind::Committed {
                        continue;
                    }
                    if let Some(tree) = crate::containerd::paths::snapshot_tree(
                        &snapshotter.root,
                        name,
                        snapshot.id,
                    ) {
                        paths.push(tree);
                    }
                }
            }
        }
        let mut any = false;
        for path in paths.into_iter().filter(|p| p.exists()) {
            any |= protected.protect(kernel, path);
        }
        if !any {
            log::warn!(
                "protect mode: nothing of the root {} is protected (see the warnings above)",
                ctrwatch_event::escape_path(&root.canonical)
            );
        }
    }
}

/// Watches until SIGTERM or SIGINT; returns the instant capture stopped, once everything
/// captured before it has been handed to `sink`. SIGHUP reloads the configuration
/// ([`Sink::reload`]) without pausing capture: it is read and checked on a blocking thread,
/// and what it changes is applied between two drains of the ring buffer. Tells the
/// service manager (sd_notify) when it is ready, feeds its watchdog from the loop and says
/// when it stops ([`crate::notify`]).
pub async fn run(mut opts: WatchOptions, sink: &mut dyn Sink) -> anyhow::Result<SystemTime> {
    // A hang-up (the SSH session that started it went away, or `systemctl reload`) must not
    // end capture, also not while the programs are being loaded (seconds): it asks for a
    // reload, handled once the loop runs.
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    // Likewise SIGTERM and SIGINT: caught from the first instant, so that a stop asked for
    // while the programs load (seconds; systemd's `stop` right after `start`) or just after
    // "watching" is a clean stop once the loop runs, not the default action's death with the
    // run left open (an unclean stop in the history).
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    notify::starting("attaching the eBPF programs");
    let step = crate::kernel::StartStep::begin();
    let mut kernel = KernelWatch::start(
        &LoadOptions {
            ring_buffer_bytes: opts.ring_buffer_bytes,
            self_tgid: std::process::id(),
            backend: opts.backend,
            protect: opts.protect,
        },
        opts.pin_dir.as_deref(),
    )
    .context("attaching the eBPF programs")?;
    let step = step.done("eBPF programs ready (loaded, or adopted from pins)");
    let adopted = kernel.origin == Origin::Adopted;
    // The system calls are always the syscall tracepoints'; fentry adds the kernel's own
    // xattr changes where the kernel allows it (kernel/backend.rs).
    log::info!(
        "hook families: syscall tracepoints for every system call; {} (backend asked for: {})",
        kernel
            .attachment
            .families
            .iter()
            .map(crate::kernel::backend::FamilyProbe::summary)
            .collect::<Vec<_>>()
            .join("; "),
        opts.backend.name()
    );
    match (&kernel.origin, &opts.pin_dir) {
        (Origin::Adopted, Some(dir)) => log::info!(
            "adopted the programs pinned in {} by the previous daemon: reading what they \
             captured meanwhile",
            ctrwatch_event::escape_path(dir)
        ),
        (Origin::Replaced(sets), Some(dir)) => log::warn!(
            "replaced the programs pinned in {} ({}: another build's, or not adoptable): what \
             they captured since their daemon last read it is not read (a downtime gap)",
            ctrwatch_event::escape_path(dir),
            sets.join(", ")
        ),
        _ => {}
    }
    let roots = RootSet::resolve(&configured_roots(&opts));
    kernel
        .set_root_prefixes(&roots.kernel_prefixes())
        .context("setting the watched roots")?;
    let mut protected = ProtectedPaths::default();
    // Loudly: an operator who asked for blocking must not believe it is on.
    match &kernel.protect.unavailable {
        Some(why) => log::error!(
            "protect = {:?} asked for, but protect mode cannot run: {}; watching only, \
             NOTHING IS BLOCKED",
            kernel.protect.requested.name(),
            ctrwatch_event::escape(why)
        ),
        None if kernel.protect.in_force != ctrwatch_config::ProtectMode::Off => {
            log::info!(
                "protect mode {} in force ({} LSM programs attached)",
                kernel.protect.in_force.name(),
                kernel.protect.programs
            );
            protect_roots(&mut kernel, &roots, &mut protected);
        }
        None => {}
    }
    // Capture starts now, at one instant for every program. The loss counters stayed at zero
    // while it was off; the instant is read after the switch: nothing after it is missed.
    // Adopted programs never stopped: what their counters gained since the previous daemon's
    // last report is reported now.
    let baseline = if adopted {
        kernel.reported_losses()?
    } else {
        kernel.lost_counts()?
    };
    let mut losses = LossTracker::new(baseline, monotonic_ns());
    kernel
        .set_capture(true)
        .context("turning capture on in the kernel")?;
    let started_at = ctrwatch_event::time::Clock::process().now_system_time();
    // The last instant before which everything captured was handed to the sink.
    let mut claimed = started_at;
    if adopted {
        sink.capture_adopted(started_at)?;
    } else {
        sink.capture_started(started_at)?;
    }
    let step = step.done("roots set, capture on");
    // The processes that were running when capture began (those that start later come as
    // records). Before READY, not after: a process started before the daemon that changes a
    // file and exits right after READY has no exec record, and once it is gone /proc cannot
    // say who it was (tests/tests/secrets.rs' `early` process lost its command line so).
    let mut processes = ProcessTable::new(opts.process_grace).with_masker(opts.masker.clone());
    if let Err(e) = processes.seed_from_proc() {
        log::warn!("reading running processes from /proc: {e:#}");
    }
    let step = step.done("processes seeded from /proc");
    // Discovering: every trusted instance found is attributed (extra named roots are watched,
    // and attributed when they belong to one). Not discovering: the named roots only.
    let attributed = if opts.discover {
        Vec::new()
    } else {
        opts.roots.clone()
    };
    let mut attributor =
        crate::containerd::attribution::Attributor::new(attributed, opts.trust.clone());
    // Newly committed snapshots, as the metadata shows them, go to the layer check.
    if let Some(feed) = sink.commit_feed() {
        attributor = attributor.with_commit_feed(feed);
    }
    // Protect mode trusts the discovered containerd (wherever it is installed), its shims
    // and runc: without them its own writes to the store it owns would be denied.
    let protecting = kernel.protect.unavailable.is_none()
        && kernel.protect.in_force != ctrwatch_config::ProtectMode::Off;
    let mut exe_trust = ExeTrust::default();
    if protecting {
        exe_trust.follow(
            &mut kernel,
            &attributor.containerd_pids(),
            &attributor.containerd_exes(),
            &opts.trust.exes,
        );
        // Only now, with the store protected and containerd's executables trusted: in
        // enforce mode, before the first `follow`, containerd's own writes would be denied.
        kernel
            .set_protect_mode(kernel.protect.in_force)
            .context("setting protect mode in the kernel")?;
        log::info!(
            "protect mode {} set in the kernel",
            kernel.protect.in_force.name()
        );
    }
    let mut enricher = Enricher::new(roots, processes).with_attributor(attributor);
    let step = step.done("discovery set up");
    let ring_buffer_bytes = kernel.ring_buffer_bytes();
    let mut ring = kernel.take_ring_buffer(ring_buffer_bytes)?;
    // Pinned, the ring buffer outlives this daemon: its records stay in it until their events
    // are committed, so that after a crash the next daemon reads them again.
    let mut holding = if kernel.is_pinned() {
        hold_ring(&mut ring, sink)
    } else {
        None
    };
    // The ring buffer's fill, for the metrics (sampled at each scrape). Without it the
    // metrics lack two gauges; capture goes on.
    match crate::kernel::RingPositions::map(std::os::fd::AsFd::as_fd(&ring), ring_buffer_bytes) {
        Ok(positions) => crate::metrics::METRICS.set_ring(Box::new(positions)),
        Err(e) => log::warn!("mapping the ring buffer's positions for the metrics: {e}"),
    }
    // SAFETY: the ring buffer owns its fd and is owned by the AsyncFd, so the fd stays open
    // for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {}", e.into_parts().1))?;

    log::info!(
        "ctrwatch: watching {} root(s) with {} ({} hooks attached, {} not on this kernel): {}",
        enricher.roots.roots.len(),
        kernel.attachment.backend,
        kernel.attachment.attached.len() + kernel.protect.programs,
        kernel.attachment.unavailable.len(),
        enricher
            .roots
            .roots
            .iter()
            .map(|r| ctrwatch_event::escape_path(&r.canonical))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let capture_info = |roots: &RootSet| CaptureInfo {
        backend: kernel.attachment.backend.clone(),
        hooks_attached: kernel.attachment.attached.len() + kernel.protect.programs,
        hooks_unavailable: kernel.attachment.unavailable.len(),
        families: kernel.attachment.families.clone(),
        roots: roots.roots.iter().map(|r| r.canonical.clone()).collect(),
        protect: kernel.protect.clone(),
    };
    let mut info = capture_info(&enricher.roots);
    sink.capture_info(info.clone());
    let _ = step.done("ring buffer mapped, sink told");
    // Capture is on and the sink has begun its run (the daemon's store): ready.
    notify::ready(format!(
        "watching {} root(s) with {}",
        enricher.roots.roots.len(),
        kernel.attachment.backend
    ));

    // Start-up is over: what it read (the eBPF object, the kernel's BTF, all of /proc) is not
    // needed any more; give its pages back rather than keep them resident while idle.
    crate::kernel::release_object_pages();
    crate::release_freed_memory();

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // systemd's watchdog is fed from this loop, between its other branches: when the loop
    // hangs, the pings stop and systemd restarts the service.
    let mut watchdog = notify::watchdog_period().map(|period| {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    let mut last_refresh = Instant::now();
    // A reload being read and checked off the loop, and whether another SIGHUP came
    // meanwhile (the file may have changed again: it is read once more after this one).
    let mut reloading: Option<tokio::task::JoinHandle<anyhow::Result<RunOptions>>> = None;
    let mut reload_again = false;
    let mut refresh_due = false;
    // While records are held the kernel does not wake the reader (it does only for a record
    // written at the published position): poll instead, and publish what was committed.
    let mut held_poll = tokio::time::interval(HELD_POLL);
    held_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop_signal = loop {
        let records_held = ring.get_ref().holds();
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = next_tick(&mut watchdog) => notify::watchdog_ping(),
            _ = sighup.recv() => {
                if reloading.is_some() {
                    reload_again = true;
                } else {
                    reloading = start_reload(sink);
                }
            }
            result = reload_done(&mut reloading) => {
                reloading = None;
                let result = result
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("the reload failed: {e}")));
                if let Some(new) = sink.reloaded(result) {
                    // The layer check may have been started, stopped or replaced.
                    if let Some(a) = enricher.attributor.as_mut() {
                        a.set_commit_feed(sink.commit_feed());
                    }
                    let roots_changed = new.roots != opts.roots || new.discover != opts.discover;
                    apply_live(&mut opts, new, &mut enricher);
                    // Re-resolved at the next tick, as at a refresh.
                    refresh_due |= roots_changed;
                }
                if std::mem::take(&mut reload_again) {
                    reloading = start_reload(sink);
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.context("ring buffer")?;
                let emptied = drain(guard.get_inner_mut(), &mut enricher, &mut kernel, sink, Some(DRAIN_BUDGET), holding.as_mut())?;
                // Still readable when the budget ran out first: this branch comes again, after
                // the others that are ready (signals, the watchdog, the tick) had their turn.
                if emptied {
                    guard.clear_ready();
                }
                sink.flush()?;
                if !emptied {
                    // Back to the runtime before the next drain: while a branch is always
                    // ready this task never waits, and tokio polls its timer and signal
                    // drivers only when tasks wait or yield (or after its cooperative
                    // budget of 128 readiness polls: minutes of drains under a flood), so
                    // the tick, SIGTERM and the watchdog would wait for the flood to end.
                    tokio::task::yield_now().await;
                }
            }
            _ = held_poll.tick(), if records_held => {
                drain(ring.get_mut(), &mut enricher, &mut kernel, sink, Some(DRAIN_BUDGET), holding.as_mut())?;
                sink.flush()?;
            }
            _ = tick.tick() => {
                // The watermark: read before the loss counters and before the ring buffer is
                // drained to empty, so everything captured before it has been delivered or
                // counted by the time the sink hears of it. On the events' clock, not the
                // wall clock: compared with event times, it must not move with an NTP step.
                let watermark = enricher.clock.now_system_time();
                if let Some(loss) = losses.poll(kernel.lost_counts()?, monotonic_ns(), &enricher.clock) {
                    sink.loss(&loss)?;
                    remember_reported(&mut kernel, &losses);
                }
                let emptied = drain(ring.get_mut(), &mut enricher, &mut kernel, sink, Some(DRAIN_BUDGET), holding.as_mut())?;
                sink.flush()?;
                if emptied {
                    sink.watermark(watermark);
                    claimed = watermark;
                } else {
                    // Under a flood the ring buffer may never be empty: no watermark can be
                    // claimed (the heartbeat waits), but the timers run.
                    sink.tick(watermark);
                }
                enricher.processes.reap(monotonic_ns());
                if let Some(a) = enricher.attributor.as_mut() {
                    a.tick();
                }
                if refresh_due || last_refresh.elapsed() >= opts.root_refresh {
                    last_refresh = Instant::now();
                    refresh_due = false;
                    if let Some(a) = enricher.attributor.as_mut() {
                        a.rediscover();
                    }
                    let fresh = RootSet::resolve(&configured_roots(&opts));
                    if fresh != enricher.roots {
                        log::info!("watched roots changed: {:?}", fresh.roots);
                        kernel.set_root_prefixes(&fresh.kernel_prefixes())?;
                        info.roots = fresh.roots.iter().map(|r| r.canonical.clone()).collect();
                        sink.capture_info(info.clone());
                        enricher.roots = fresh;
                    }
                }
                // A containerd restarted from another executable, seen by the refresh above
                // or by the rediscovery an unexpected containerd's event forces; trust_exes
                // added by a reload.
                if protecting && let Some(a) = enricher.attributor.as_ref() {
                    exe_trust.follow(
                        &mut kernel,
                        &a.containerd_pids(),
                        &a.containerd_exes(),
                        &opts.trust.exes,
                    );
                    protected.refresh(&mut kernel);
                }
            }
        }
    };
    if kernel.is_pinned() {
        return stop_keeping_pins(
            stop_signal,
            ring.get_mut(),
            holding.as_mut(),
            (enricher, kernel, losses),
            claimed,
            sink,
        );
    }
    notify::stopping(&format!(
        "{stop_signal}: stopping capture, detaching the programs, storing what was captured"
    ));
    // Stop capture at one instant, read before the switch: everything up to it is captured.
    let stopped_at = enricher.clock.now_system_time();
    let stopped_at = match kernel.set_capture(false) {
        Ok(()) => stopped_at,
        Err(e) => {
            // The programs capture until they are detached.
            log::warn!("turning capture off in the kernel: {e}; detaching instead");
            kernel.detach();
            enricher.clock.now_system_time()
        }
    };
    sink.capture_stopped(stopped_at);
    // Programs that were past the switch finish; what was captured is then all in the ring
    // buffer, or counted as lost.
    kernel.detach();
    drain(
        ring.get_mut(),
        &mut enricher,
        &mut kernel,
        sink,
        None,
        holding.as_mut(),
    )?;
    // Files still open: their writes so far (reported at close otherwise).
    let open = kernel.take_all_write_aggregates()?;
    for ev in enricher.on_unclosed_writes(open) {
        sink.file_event(Box::new(ev))?;
    }
    if let Some(loss) = losses.poll(kernel.lost_counts()?, monotonic_ns(), &enricher.clock) {
        sink.loss(&loss)?;
    }
    sink.flush()?;
    Ok(stopped_at)
}

/// The stop of a daemon whose programs are pinned: they go on capturing into the ring buffer
/// for the next daemon, which adopts them (`systemctl restart`, an upgrade of the same
/// build...). Whatever this daemon has read is handed to the sink; the rest stays in the ring
/// buffer, as do the write aggregates of files still open (reported at their close). The run
/// ends now; the next one, adopting, records no downtime. `ctrwatch unpin` removes the pins.
fn stop_keeping_pins(
    stop_signal: &str,
    ring: &mut crate::kernel::ring::EventRing,
    holding: Option<&mut Holding>,
    (mut enricher, mut kernel, mut losses): (Enricher, KernelWatch, LossTracker),
    claimed: SystemTime,
    sink: &mut dyn Sink,
) -> anyhow::Result<SystemTime> {
    notify::stopping(&format!(
        "{stop_signal}: storing what was read; the pinned programs go on capturing for the \
         next start (`ctrwatch unpin` removes them)"
    ));
    // Bounded: the programs go on capturing, so under a flood the ring buffer is never
    // empty; what is left is the next daemon's to read. The run ends at the last instant
    // before which everything was handed over: read before the drain when it emptied the
    // ring buffer, else the last watermark claimed. What is left after it is either read by
    // the next daemon (adoption) or inside the downtime the next start records (after an
    // unpin): never neither.
    let before = enricher.clock.now_system_time();
    // Held records the writer has not committed stay in the ring buffer: the next daemon
    // reads them again and stores only the events the store does not have (the mark the
    // writer commits at the stop).
    let emptied = drain(
        ring,
        &mut enricher,
        &mut kernel,
        sink,
        Some(DRAIN_BUDGET),
        holding,
    )?;
    let stopped_at = if emptied { before } else { claimed };
    sink.capture_stopped(stopped_at);
    if let Some(loss) = losses.poll(kernel.lost_counts()?, monotonic_ns(), &enricher.clock) {
        sink.loss(&loss)?;
        remember_reported(&mut kernel, &losses);
    }
    sink.flush()?;
    log::info!("stopped; the programs stay pinned and capturing");
    // Dropping `kernel` closes this process's handles only: the pins hold the programs.
    Ok(stopped_at)
}

/// Keeps what was reported in the pinned maps, for a daemon that adopts them.
fn remember_reported(kernel: &mut KernelWatch, losses: &LossTracker) {
    if kernel.is_pinned()
        && let Err(e) = kernel.set_reported_losses(losses.reported())
    {
        log::warn!("remembering the losses reported in the pinned maps: {e}");
    }
}

/// The roots to resolve: those named, and with discovery on the discovered ones.
fn configured_roots(opts: &WatchOptions) -> Vec<PathBuf> {
    let mut roots = opts.roots.clone();
    if opts.discover {
        for r in discovered_roots() {
            if !roots.contains(&r) {
                roots.push(r);
            }
        }
    }
    roots
}

/// Hands the sink's reload job to a blocking thread (reading the file may be slow).
fn start_reload(
    sink: &mut dyn Sink,
) -> Option<tokio::task::JoinHandle<anyhow::Result<RunOptions>>> {
    match sink.reload() {
        Some(job) => {
            log::info!("received SIGHUP: reloading the configuration");
            Some(tokio::task::spawn_blocking(job))
        }
        None => {
            log::warn!(
                "received SIGHUP: there is no configuration to reload (only `ctrwatch run` \
                 reads one); still capturing (stop with SIGTERM)"
            );
            None
        }
    }
}

/// The result of the reload in progress; never, without one.
async fn reload_done(
    reloading: &mut Option<tokio::task::JoinHandle<anyhow::Result<RunOptions>>>,
) -> Result<anyhow::Result<RunOptions>, tokio::task::JoinError> {
    match reloading {
        Some(job) => job.await,
        None => std::future::pending().await,
    }
}

/// Applies a reloaded configuration's live watch settings (the others need a restart: the
/// sink kept their old values in `new`). The roots are re-resolved by the caller.
fn apply_live(opts: &mut WatchOptions, new: WatchOptions, enricher: &mut Enricher) {
    enricher.processes.set_masker(new.masker.clone());
    if let Some(a) = enricher.attributor.as_mut() {
        let attributed = if new.discover {
            Vec::new()
        } else {
            new.roots.clone()
        };
        a.reconfigure(attributed, new.trust.clone());
    }
    *opts = new;
}

/// The next tick of an optional interval; never, without one.
async fn next_tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Records handled by one drain of the capture loop at most. Under a flood the producers can
/// refill the ring buffer as fast as it is read: an unbounded drain then never returns, and
/// the loop's other duties (SIGTERM, systemd's watchdog, the loss counters, the alert timers)
/// wait for the flood to end — a sustained loss was only reported after it. At most a few
/// tens of milliseconds of work.
pub const DRAIN_BUDGET: usize = 16_384;

/// How often a reader holding records looks at the ring buffer (the kernel does not wake it
/// then; see [`crate::kernel::ring::EventRing::hold_until_released`]): the latency of events
/// captured meanwhile, and how soon commits are published.
const HELD_POLL: Duration = Duration::from_millis(20);

/// The reader's side of a ring buffer held until commits ([`crate::committed`]).
struct Holding {
    held: HeldRing,
    /// The read position at which the writer was last asked to commit early.
    commit_asked_at: RingPos,
    /// The read position last told the sink ([`Sink::handed_through`]).
    handed: RingPos,
}

/// Holds the pinned ring buffer's records until the sink's writer commits their events, if
/// the sink commits (the daemon's store) and the ring buffer can be named.
fn hold_ring(ring: &mut crate::kernel::ring::EventRing, sink: &mut dyn Sink) -> Option<Holding> {
    let map_id = match ring.map_id() {
        Ok(id) => id,
        Err(e) => {
            log::warn!(
                "the ring buffer's map id: {e}; records are released as read (a crash may \
                 lose those read but not committed)"
            );
            return None;
        }
    };
    let identity = RingIdentity::current(map_id)?;
    let held = sink.hold_ring(&identity)?;
    ring.hold_until_released();
    if let Some(through) = held.fence.through_position()
        && through > ring.read_position()
    {
        log::info!(
            "the ring buffer is read again from where the previous daemon published it; \
             the events of its next {} bytes of records are stored already and are not \
             stored twice",
            through.bytes_since(ring.read_position())
        );
    }
    Some(Holding {
        held,
        commit_asked_at: ring.read_position(),
        handed: ring.read_position(),
    })
}

/// Hands the ring buffer's records to the sink: all of them (`budget` None), or at most
/// `budget`. Returns whether the ring buffer was emptied. With records held
/// ([`crate::committed`]): tells the sink where each record ends and how far it has been
/// handed everything, then publishes what the writer reported committed.
fn drain(
    ring: &mut crate::kernel::ring::EventRing,
    enricher: &mut Enricher,
    kernel: &mut KernelWatch,
    sink: &mut dyn Sink,
    budget: Option<usize>,
    holding: Option<&mut Holding>,
) -> anyhow::Result<bool> {
    let mut emptied = drain_records(ring, enricher, kernel, sink, budget, holding.as_deref())?;
    let Some(h) = holding else {
        return Ok(emptied);
    };
    let read = ring.read_position();
    if read != h.handed && sink.handed_through(read) {
        h.handed = read;
    }
    let size = ring.size_bytes();
    let before = ring.published_position();
    ring.release_through(h.held.publishable(read, size));
    if emptied && ring.published_position() != before {
        // Records the kernel wrote before this release woke no one (the published position
        // was not theirs): look once more; after it, the kernel wakes the reader again, or
        // records are still held and the loop polls.
        emptied = drain_records(ring, enricher, kernel, sink, budget, Some(h))?;
        let read = ring.read_position();
        if read != h.handed && sink.handed_through(read) {
            h.handed = read;
        }
    }
    // Much is held (a flood, or a slow writer): ask for a commit, once per eighth of the
    // ring read.
    if read.bytes_since(ring.published_position()) > HeldRing::commit_soon_at(size)
        && read.bytes_since(h.commit_asked_at) > size / 8
    {
        h.commit_asked_at = read;
        sink.commit_soon();
    }
    Ok(emptied)
}

fn drain_records(
    ring: &mut crate::kernel::ring::EventRing,
    enricher: &mut Enricher,
    kernel: &mut KernelWatch,
    sink: &mut dyn Sink,
    budget: Option<usize>,
    holding: Option<&Holding>,
) -> anyhow::Result<bool> {
    let mut left = budget.unwrap_or(usize::MAX);
    loop {
        if left == 0 {
            return Ok(false);
        }
        left -= 1;
        let Some(item) = ring.next_record() else {
            return Ok(true);
        };
        let record = match Record::decode(&item) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("undecodable record: {e}");
                continue;
            }
        };
        drop(item);
        // Held: the record's events are the store's once committed with its end. Read again
        // after a crash, a record whose events were committed still updates the process
        // table and the bindings; its events are not stored twice.
        let mut replayed = false;
        if let Some(h) = holding {
            let end = ring.read_position();
            replayed = h.held.fence.already_committed(end);
            sink.record_position(end);
        }
        match enricher.on_record(record) {
            Outcome::Event(ev) => {
                if !replayed {
                    sink.file_event(ev)?;
                }
            }
            // Read again after a crash: the daemon that committed it took this process's
            // aggregates already; any found now are a later process's that reused the pid.
            Outcome::ProcessExited(_) if replayed => {}
            Outcome::ProcessExited(pid) => {
                let unclosed = kernel.take_write_aggregates(pid)?;
                if !unclosed.is_empty() {
                    let evs = enricher.on_unclosed_writes(unclosed);
                    if !evs.is_empty() {
                        sink.file_events(evs.into_iter().map(Box::new).collect())?;
                    }
                }
            }
            Outcome::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn helpers_beside_containerd_are_its_shims_and_runc() {
        for name in ["containerd-shim", "containerd-shim-runc-v2", "runc"] {
            assert!(is_containerd_helper(std::ffi::OsStr::new(name)), "{name}");
        }
        for name in [
            "k3s",
            "containerd",
            "ctr",
            "crictl",
            "runc.bak",
            "xrunc",
            "sh",
        ] {
            assert!(!is_containerd_helper(std::ffi::OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn rancher_data_dirs_are_found_from_containerd_s_executable() {
        let exe = Path::new("/var/lib/rancher/k3s/data/abc123/bin/containerd");
        assert_eq!(
            rancher_data_dir(exe),
            Some(Path::new("/var/lib/rancher/k3s/data"))
        );
        for other in [
            "/usr/bin/containerd",
            "/opt/k3s-like/bin/containerd",
            "/var/lib/rancher/k3s/data/abc123/sbin/containerd",
            "/containerd",
        ] {
            assert_eq!(rancher_data_dir(Path::new(other)), None, "{other}");
        }
    }

    #[test]
    fn a_helper_others_can_write_is_not_trusted() {
        let dir = std::env::temp_dir().join(format!("ctrwatch-exe-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let runc = dir.join("runc");
        std::fs::write(&runc, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o757)).unwrap();
        assert!(!root_only_writable(&runc), "others may write the file");
        std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(
            !root_only_writable(&runc),
            "the group may write the directory"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Root's alone only when root runs the test (it owns what it creates).
        let is_root = std::fs::metadata(&runc)
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap();
        assert_eq!(root_only_writable(&runc), is_root);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
