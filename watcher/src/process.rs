//! The process table: who each pid is, and who started it.
//!
//! A file event from the kernel names only the acting task (pid, comm, uid, cgroup id). To say
//! "runc, started by containerd-shim, in containerd.service" ctrwatch needs each process's
//! executable, command line, systemd unit or container and parent chain, and it needs them
//! even for processes that lived for a millisecond and were gone before anyone could read
//! `/proc`. So the table is fed by the kernel's exec, fork and exit records, as they happen,
//! and `/proc` is only read to seed it at start and to fill in pids it never saw.
//!
//! Exited processes stay in the table for a grace period, so that events that arrive after
//! the exit are still attributed, and for as long as a retained process descends from them,
//! so that its parent chain stays whole. A process keeps the parent that started it even when
//! the kernel later reparents it to a subreaper: the launcher is what attribution is about.
//!
//! Command lines are masked as they are captured (from an exec record or from `/proc`):
//! secrets in them (`--password=…`, tokens, URL credentials, ...) are replaced by `***` by the
//! table's [`Masker`] before anything else sees them, so no consumer (watch output, history
//! store, verdicts) ever holds the secret. See [`crate::secrets`].
//!
//! Timestamps are CLOCK_MONOTONIC nanoseconds, as the kernel records carry them.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use watcher_common::{EXEC_DATA_CAP, ExecRecord, ExitRecord, ForkRecord, TaskInfo};

use crate::cgroup::{self, CgroupIdIndex, CgroupInfo};
use crate::secrets::Masker;

/// Entries kept at most by default. Well above the default `pid_max` (32 768) on small
/// machines and above the live process count of any real node; when reached, exited entries
/// go first.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// Longest parent chain reported (and followed when keeping exited ancestors).
pub const MAX_ANCESTORS: usize = 64;

/// Slack when checking that a parent started before its child. Start times read from `/proc`
/// have clock-tick (10 ms) resolution and are rounded down, so a child read from `/proc` can
/// appear to start up to a tick before a parent timed by the kernel to the nanosecond. A pid
/// cannot be reused within 50 ms in practice (it would have to wrap around `pid_max`).
const START_SLACK_NS: u64 = 50_000_000;

/// Cgroup ids remembered with what `/proc/<pid>/cgroup` said for them.
const CGROUP_CACHE_CAP: usize = 8_192;

/// Where a [`ProcInfo`]'s image (exe, command line) came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The kernel's exec record: exactly what was executed.
    Exec,
    /// Inherited from the parent at fork; the process has not exec'd (since we saw it).
    Fork,
    /// Read from `/proc`.
    Proc,
    /// Only what a record's task header said (comm, ids): the process was first seen as the
    /// parent of a fork or at its exit, and `/proc` had nothing.
    Task,
}

/// One process (thread group), alive or recently exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    /// Thread-group id, in the initial pid namespace.
    pub pid: u32,
    /// The parent that started it (kept across reparenting).
    pub ppid: u32,
    /// The kernel's 15-byte task name.
    pub comm: String,
    /// Executable path, if known.
    pub exe: Option<Vec<u8>>,
    /// argv.
    pub cmdline: Vec<Vec<u8>>,
    /// Real user and group ids.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Its cgroup, and the systemd unit or container it names.
    pub cgroup: CgroupInfo,
    /// cgroup v2 id (0 when unknown).
    pub cgroup_id: u64,
    /// When the process started, or an upper bound (when it was first seen). Used to tell a
    /// parent from a later process that reused its pid.
    pub start_ns: u64,
    /// When it exited (None: alive); kept for late events until the grace period ends.
    pub exited_ns: Option<u64>,
    /// `status << 8 | signal`, as in the kernel's `task->exit_code`.
    pub exit_code: Option<i32>,
    /// Where the entry came from (an exec or fork record, /proc, or only a task header).
    pub origin: Origin,
}

impl ProcInfo {
    /// It has not exited (as far as the records told).
    pub fn is_alive(&self) -> bool {
        self.exited_ns.is_none()
    }

    /// The command line joined with spaces, for display.
    pub fn cmdline_lossy(&self) -> String {
        let args: Vec<_> = self
            .cmdline
            .iter()
            .map(|a| String::from_utf8_lossy(a))
            .collect();
        args.join(" ")
    }

    fn ancestor(&self) -> Ancestor {
        Ancestor {
            pid: self.pid,
            comm: self.comm.clone(),
            exe: self.exe.clone(),
            exited: !self.is_alive(),
        }
    }
}

/// One link of a parent chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ancestor {
    /// Its process id.
    pub pid: u32,
    /// Its task name.
    pub comm: String,
    /// Its executable, if known.
    pub exe: Option<Vec<u8>>,
    /// The ancestor had exited by the time the chain was asked for.
    pub exited: bool,
}

/// The acting task of a kernel record, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Task {
    /// Thread group id (the process id).
    pub pid: u32,
    /// The parent's process id.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Task name (up to 15 bytes).
    pub comm: String,
    /// cgroup v2 id.
    pub cgroup_id: u64,
}

impl From<&TaskInfo> for Task {
    fn from(t: &TaskInfo) -> Self {
        Self {
            pid: t.pid,
            ppid: t.ppid,
            uid: t.uid,
            gid: t.gid,
            comm: comm_from_bytes(&t.comm),
            cgroup_id: t.cgroup_id,
        }
    }
}

/// A task name from the kernel's NUL-padded `comm` bytes.
pub fn comm_from_bytes(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// A successful exec, decoded.
#[derive(Clone, Debug)]
pub struct ExecEvent<'a> {
    /// The task after exec (its `pid` is the thread group's, even when a non-leader thread
    /// exec'd).
    pub task: Task,
    /// The executable's path, as the kernel gave it.
    pub exe: &'a [u8],
    /// NUL-separated argv.
    pub args: &'a [u8],
    /// When the exec happened (kernel monotonic ns).
    pub ts_ns: u64,
}

impl<'a> ExecEvent<'a> {
    /// Reads an exec record; lengths that overrun the record are cut to it.
    pub fn from_record(rec: &'a ExecRecord) -> Self {
        let exe_len = usize::from(rec.fixed.exe_len).min(EXEC_DATA_CAP);
        let args_end = exe_len
            .saturating_add(usize::from(rec.fixed.args_len))
            .min(EXEC_DATA_CAP);
        Self {
            task: Task::from(&rec.fixed.task),
            exe: rec.data.get(..exe_len).unwrap_or_default(),
            args: rec.data.get(exe_len..args_end).unwrap_or_default(),
            ts_ns: rec.fixed.hdr.ts_ns,
        }
    }
}

/// Splits NUL-separated (and usually NUL-terminated) argv bytes.
fn split_args(bytes: &[u8]) -> Vec<Vec<u8>> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|&b| b == 0).map(<[u8]>::to_vec).collect()
}

/// Whether a process that started at `parent_start` can be the parent of one that started at
/// `child_start`, rather than a later process that reused the parent's pid.
fn starts_before(parent_start: u64, child_start: u64) -> bool {
    parent_start <= child_start.saturating_add(START_SLACK_NS)
}

/// Every process seen, by pid. See the module documentation.
#[derive(Debug)]
pub struct ProcessTable {
    procs: HashMap<u32, ProcInfo>,
    grace_ns: u64,
    capacity: usize,
    /// Where procfs is mounted; `None` for a table fed by records only.
    proc_root: Option<PathBuf>,
    /// What `/proc/<pid>/cgroup` said for each cgroup id it was read for.
    cgroups: HashMap<u64, CgroupInfo>,
    cgroup_index: Option<CgroupIdIndex>,
    /// Changes whenever an entry is added, replaced or dropped, i.e. whenever what
    /// [`Self::lookup`] and [`Self::ancestors`] return may have changed.
    generation: u64,
    /// Masks secrets in command lines as they are captured.
    masker: Arc<Masker>,
}

impl ProcessTable {
    /// A table that reads this system's `/proc` and unified cgroup hierarchy. Exited entries
    /// are kept for `grace` (longer while a retained process descends from them).
    pub fn new(grace: Duration) -> Self {
        Self {
            proc_root: Some(PathBuf::from("/proc")),
            cgroup_index: CgroupIdIndex::detect(),
            ..Self::detached(grace)
        }
    }

    /// A table fed by records only, that never reads the system (replays, tests).
    pub fn detached(grace: Duration) -> Self {
        Self {
            procs: HashMap::new(),
            grace_ns: u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX),
            capacity: DEFAULT_CAPACITY,
            proc_root: None,
            cgroups: HashMap::new(),
            cgroup_index: None,
            generation: 0,
            masker: Arc::new(Masker::builtin()),
        }
    }

    /// Masks the command lines read from now on with `masker` (a reloaded configuration);
    /// those already read stay as they were masked.
    pub fn set_masker(&mut self, masker: Masker) {
        self.masker = Arc::new(masker);
    }

    /// Masks command lines with `masker` (default: the built-in rules).
    pub fn with_masker(mut self, masker: Masker) -> Self {
        self.masker = Arc::new(masker);
        self
    }

    /// argv from NUL-separated bytes, with its secrets masked.
    fn capture_args(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut argv = split_args(bytes);
        // One scan of the whole command line rules out most of them.
        if self.masker.may_mask(bytes) {
            self.masker.mask(&mut argv);
        }
        argv
    }

    /// Reads processes from a procfs mounted at `root` (such as the host's, in a container).
    pub fn with_proc_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.proc_root = Some(root.into());
        self
    }

    /// Resolves cgroup ids through this index (or not at all).
    pub fn with_cgroup_index(mut self, index: Option<CgroupIdIndex>) -> Self {
        self.cgroup_index = index;
        self
    }

    /// Keeps at most `capacity` entries (at least one).
    pub fn with_capacity_limit(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// How many processes are known (alive, or exited within the grace period).
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// No process is known.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// See the field: equal generations mean the same answers from `lookup` and `ancestors`
    /// (the enricher reuses process descriptions while it holds).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The entry for `pid`, without falling back to `/proc`.
    pub fn get(&self, pid: u32) -> Option<&ProcInfo> {
        self.procs.get(&pid)
    }

    /// Adds every live process in `/proc`, returning how many were added. Processes already
    /// known alive from records are left alone: the records are more precise (exact exe and
    /// argv, original parent).
    pub fn seed_from_proc(&mut self) -> anyhow::Result<usize> {
        let Some(root) = self.proc_root.clone() else {
            return Ok(0);
        };
        let mut added = 0;
        for process in procfs::process::all_processes_with_root(&root)? {
            // A process that vanished during the walk is simply not seeded.
            let Ok(process) = process else { continue };
            let Ok(pid) = u32::try_from(process.pid()) else {
                continue;
            };
            if self.procs.get(&pid).is_some_and(ProcInfo::is_alive) {
                continue;
            }
            if let Some(info) = self.read_proc(pid) {
                self.insert(info);
                added += 1;
            }
        }
        Ok(added)
    }

    /// A process image replaced: a new exe, argv and, read from `/proc` right away, cgroup.
    pub fn on_exec(&mut self, ev: &ExecEvent<'_>) {
        let pid = ev.task.pid;
        let prev = self
            .procs
            .get(&pid)
            .filter(|p| p.is_alive() && self.same_process(p, &ev.task))
            .cloned();
        let (ppid, start_ns) = match &prev {
            Some(p) => (p.ppid, p.start_ns),
            None => (ev.task.ppid, ev.ts_ns),
        };
        let cgroup = self.cgroup_at_exec(pid, ev.task.cgroup_id, prev.as_ref(), ppid);
        let cgroup_id = match (ev.task.cgroup_id, &prev) {
            (0, Some(p)) => p.cgroup_id,
            (id, _) => id,
        };
        self.insert(ProcInfo {
            pid,
            ppid,
            comm: ev.task.comm.clone(),
            exe: (!ev.exe.is_empty()).then(|| ev.exe.to_vec()),
            cmdline: self.capture_args(ev.args),
            uid: ev.task.uid,
            gid: ev.task.gid,
            cgroup,
            cgroup_id,
            start_ns,
            exited_ns: None,
            exit_code: None,
            origin: Origin::Exec,
        });
    }

    /// A new process: it runs its parent's image, as its parent's user, in its parent's cgroup,
    /// until it execs. An older entry for `child_pid` (a reused pid) is replaced.
    pub fn on_fork(&mut self, parent: &Task, child_pid: u32, ts_ns: u64) {
        let template = self.live_entry(parent, ts_ns);
        let cgroup_id = if parent.cgroup_id != 0 {
            parent.cgroup_id
        } else {
            template.cgroup_id
        };
        let cgroup = self
            .known_cgroup(parent.cgroup_id)
            .unwrap_or(template.cgroup);
        self.insert(ProcInfo {
            pid: child_pid,
            ppid: parent.pid,
            // The child inherits the comm of the thread that forked, which is what the
            // record's task header holds.
            comm: parent.comm.clone(),
            exe: template.exe,
            cmdline: template.cmdline,
            uid: parent.uid,
            gid: parent.gid,
            cgroup,
            cgroup_id,
            start_ns: ts_ns,
            exited_ns: None,
            exit_code: None,
            origin: Origin::Fork,
        });
    }

    /// A process exited. Its entry stays resolvable for the grace period.
    pub fn on_exit(&mut self, task: &Task, exit_code: i32, ts_ns: u64) {
        match self.procs.get_mut(&task.pid) {
            Some(p) if p.is_alive() => {
                p.exited_ns = Some(ts_ns);
                p.exit_code = Some(exit_code);
            }
            // A repeated record for an exit we already have.
            Some(p) if p.exited_ns.is_some_and(|t| t >= ts_ns) => {}
            // Never seen, or an older process with this pid exited before: this one's fork
            // and exec were missed. Keep what the record says.
            _ => {
                let mut info = self.task_entry(task, ts_ns);
                info.exited_ns = Some(ts_ns);
                info.exit_code = Some(exit_code);
                self.insert(info);
            }
        }
    }

    /// [`Self::on_exec`] for a raw record.
    pub fn on_exec_record(&mut self, rec: &ExecRecord) {
        self.on_exec(&ExecEvent::from_record(rec));
    }

    /// [`Self::on_fork`] for a raw record.
    pub fn on_fork_record(&mut self, rec: &ForkRecord) {
        self.on_fork(&Task::from(&rec.task), rec.child_pid, rec.hdr.ts_ns);
    }

    /// [`Self::on_exit`] for a raw record.
    pub fn on_exit_record(&mut self, rec: &ExitRecord) {
        self.on_exit(&Task::from(&rec.task), rec.exit_code, rec.hdr.ts_ns);
    }

    /// The entry for `pid`; a pid never seen is read from `/proc` (and kept).
    pub fn lookup(&mut self, pid: u32) -> Option<&ProcInfo> {
        if !self.procs.contains_key(&pid) {
            let info = self.read_proc(pid)?;
            self.insert(info);
        }
        self.procs.get(&pid)
    }

    /// The parent chain of `pid`, parent first, up to PID 1 (or a kernel thread's kthreadd).
    /// Exited ancestors still in the table are included. The chain stops at an unknown
    /// parent, at a parent whose pid now belongs to a process younger than the child, on a
    /// cycle, and after [`MAX_ANCESTORS`] links.
    pub fn ancestors(&mut self, pid: u32) -> Vec<Ancestor> {
        let mut chain = Vec::new();
        let Some(first) = self.lookup(pid) else {
            return chain;
        };
        let (mut ppid, mut child_start) = (first.ppid, first.start_ns);
        let mut seen = HashSet::from([pid]);
        while chain.len() < MAX_ANCESTORS && ppid != 0 && seen.insert(ppid) {
            let Some(parent) = self.lookup(ppid) else {
                break;
            };
            if !starts_before(parent.start_ns, child_start) {
                break;
            }
            chain.push(parent.ancestor());
            if parent.pid == 1 {
                break;
            }
            (ppid, child_start) = (parent.ppid, parent.start_ns);
        }
        chain
    }

    /// Drops entries that exited more than the grace period before `now_ns`, except those
    /// still on the parent chain of an entry that stays.
    pub fn reap(&mut self, now_ns: u64) {
        let grace_ns = self.grace_ns;
        let keeps = |p: &ProcInfo| {
            p.exited_ns
                .is_none_or(|t| now_ns.saturating_sub(t) <= grace_ns)
        };
        let mut pinned = HashSet::new();
        for p in self.procs.values().filter(|p| keeps(p)) {
            let (mut ppid, mut child_start) = (p.ppid, p.start_ns);
            for _ in 0..MAX_ANCESTORS {
                let Some(parent) = self.procs.get(&ppid) else {
                    break;
                };
                // A kept parent pins its own ancestors; a walk that reaches a pinned one has
                // been done before (this also ends cycles).
                if keeps(parent)
                    || !starts_before(parent.start_ns, child_start)
                    || !pinned.insert(ppid)
                {
                    break;
                }
                (ppid, child_start) = (parent.ppid, parent.start_ns);
            }
        }
        let before = self.procs.len();
        self.procs.retain(|pid, p| keeps(p) || pinned.contains(pid));
        if self.procs.len() != before {
            self.generation = self.generation.wrapping_add(1);
        }
    }

    /// Whether a live entry and an exec record describe the same process. The record's ppid
    /// differs from ours after reparenting, which only happens once our parent is gone; while
    /// our parent lives, a different ppid means the entry is a stale one for a reused pid
    /// whose exit was missed.
    fn same_process(&self, entry: &ProcInfo, task: &Task) -> bool {
        entry.ppid == task.ppid || !self.procs.get(&entry.ppid).is_some_and(ProcInfo::is_alive)
    }

    /// The cgroup of a process that just exec'd: read from `/proc` while it still exists,
    /// else whatever is known of its cgroup id, else what its own previous image or its
    /// parent had (when they were in the same cgroup, or the ids are unknown).
    fn cgroup_at_exec(
        &mut self,
        pid: u32,
        cgroup_id: u64,
        prev: Option<&ProcInfo>,
        ppid: u32,
    ) -> CgroupInfo {
        let read = self
            .proc_root
            .as_ref()
            .and_then(|root| cgroup::read_for_pid_in(root, pid).ok());
        if let Some(info) = read {
            self.remember_cgroup(cgroup_id, &info);
            return info;
        }
        if let Some(info) = self.known_cgroup(cgroup_id) {
            return info;
        }
        let same_cgroup =
            |p: &&ProcInfo| cgroup_id == 0 || p.cgroup_id == 0 || p.cgroup_id == cgroup_id;
        prev.filter(same_cgroup)
            .or_else(|| self.procs.get(&ppid).filter(same_cgroup))
            .map(|p| p.cgroup.clone())
            .unwrap_or_default()
    }

    /// What is known of a cgroup id: from an earlier `/proc` read, else from the cgroup
    /// hierarchy.
    fn known_cgroup(&mut self, cgroup_id: u64) -> Option<CgroupInfo> {
        if cgroup_id == 0 {
            return None;
        }
        if let Some(info) = self.cgroups.get(&cgroup_id) {
            return Some(info.clone());
        }
        let info = self.cgroup_index.as_mut()?.resolve(cgroup_id)?;
        self.remember_cgroup(cgroup_id, &info);
        Some(info)
    }

    fn remember_cgroup(&mut self, cgroup_id: u64, info: &CgroupInfo) {
        if cgroup_id == 0 {
            return;
        }
        if self.cgroups.len() >= CGROUP_CACHE_CAP && !self.cgroups.contains_key(&cgroup_id) {
            // Cgroups come and go with containers; starting over is simpler than tracking use
            // and costs one re-read per cgroup still in use.
            self.cgroups.clear();
        }
        self.cgroups.insert(cgroup_id, info.clone());
    }

    /// The entry of a task known to be alive now (it just forked), made from `/proc` or the
    /// task header when there is none or only an exited one (a reused pid).
    fn live_entry(&mut self, task: &Task, ts_ns: u64) -> ProcInfo {
        if let Some(p) = self.procs.get(&task.pid).filter(|p| p.is_alive()) {
            return p.clone();
        }
        let info = match self.read_proc(task.pid).filter(ProcInfo::is_alive) {
            Some(info) => info,
            None => self.task_entry(task, ts_ns),
        };
        self.insert(info.clone());
        info
    }

    /// An entry from a record's task header alone.
    fn task_entry(&mut self, task: &Task, ts_ns: u64) -> ProcInfo {
        ProcInfo {
            pid: task.pid,
            ppid: task.ppid,
            comm: task.comm.clone(),
            exe: None,
            cmdline: Vec::new(),
            uid: task.uid,
            gid: task.gid,
            cgroup: self.known_cgroup(task.cgroup_id).unwrap_or_default(),
            cgroup_id: task.cgroup_id,
            // It started no later than this.
            start_ns: ts_ns,
            exited_ns: None,
            exit_code: None,
            origin: Origin::Task,
        }
    }

    /// Reads one process from `/proc`; `None` if it is gone (or the table is detached).
    fn read_proc(&mut self, pid: u32) -> Option<ProcInfo> {
        let dir = self.proc_root.as_ref()?.join(pid.to_string());
        let process = procfs::process::Process::new_with_root(dir.clone()).ok()?;
        let stat = process.stat().ok()?;
        let (uid, gid) = match process.status() {
            Ok(status) => (status.ruid, status.rgid),
            // The directory is owned by the effective ids; close enough when status is
            // unreadable.
            Err(_) => {
                let meta = std::fs::metadata(&dir).ok()?;
                (meta.uid(), meta.gid())
            }
        };
        // Kernel threads and other users' processes (without CAP_SYS_PTRACE) have no
        // readable exe.
        let exe = std::fs::read_link(dir.join("exe"))
            .ok()
            .map(|p| p.as_os_str().as_bytes().to_vec());
        let cmdline = std::fs::read(dir.join("cmdline"))
            .map(|b| self.capture_args(&b))
            .unwrap_or_default();
        let (cgroup, cgroup_id) = match cgroup::read_text_in(self.proc_root.as_ref()?, pid) {
            Ok(text) => {
                let id = cgroup::unified_path(&text)
                    .and_then(|path| self.cgroup_index.as_ref()?.id_of(path))
                    .unwrap_or(0);
                let info = cgroup::parse_proc_cgroup(&text);
                self.remember_cgroup(id, &info);
                (info, id)
            }
            Err(_) => (CgroupInfo::default(), 0),
        };
        let now = clock::monotonic_ns();
        // A zombie has exited; we do not know when, only that it was before now.
        let exited_ns = matches!(stat.state, 'Z' | 'X').then_some(now);
        Some(ProcInfo {
            pid,
            ppid: u32::try_from(stat.ppid).unwrap_or(0),
            comm: stat.comm,
            exe,
            cmdline,
            uid,
            gid,
            cgroup,
            cgroup_id,
            start_ns: clock::start_time_monotonic_ns(stat.starttime),
            exited_ns,
            exit_code: None,
            origin: Origin::Proc,
        })
    }

    /// Inserts or replaces an entry, making room first when the table is full.
    fn insert(&mut self, info: ProcInfo) {
        self.generation = self.generation.wrapping_add(1);
        if !self.procs.contains_key(&info.pid) && self.procs.len() >= self.capacity {
            self.make_room();
        }
        self.procs.insert(info.pid, info);
    }

    /// Evicts an eighth of the table at once, so that the sort is paid once per many
    /// inserts: exited entries first, oldest exit first; then live ones, newest first, since
    /// long-lived processes are the ones parent chains go through (and a live process can be
    /// read back from `/proc`).
    fn make_room(&mut self) {
        let target = (self.capacity - self.capacity / 8).min(self.capacity - 1);
        let excess = self.procs.len().saturating_sub(target);
        if excess == 0 {
            return;
        }
        let mut order: Vec<(bool, u64, u32)> = self
            .procs
            .values()
            .map(|p| match p.exited_ns {
                Some(t) => (false, t, p.pid),
                None => (true, u64::MAX - p.start_ns, p.pid),
            })
            .collect();
        order.sort_unstable();
        for (_, _, pid) in order.into_iter().take(excess) {
            self.procs.remove(&pid);
        }
    }
}

/// Clocks: the kernel stamps records with CLOCK_MONOTONIC, `/proc/<pid>/stat` gives start
/// times in clock ticks of CLOCK_BOOTTIME (which also counts time suspended). Both are read
/// with `ctrwatch_event::time` (the one clock reader; neither call can fail).
mod clock {
    use ctrwatch_event::time::boottime_ns;
    pub use ctrwatch_event::time::monotonic_ns;

    /// A `/proc/<pid>/stat` start time (ticks since boot) on the monotonic clock: minus the
    /// time spent suspended so far (exact when no suspend happened since the process
    /// started, early otherwise, which only makes it look older).
    pub fn start_time_monotonic_ns(ticks: u64) -> u64 {
        let tps = procfs::ticks_per_second().max(1);
        let boot_ns = ticks.saturating_mul(1_000_000_000 / tps);
        let suspended = boottime_ns().saturating_sub(monotonic_ns());
        boot_ns.saturating_sub(suspended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn table() -> ProcessTable {
        ProcessTable::detached(Duration::from_secs(5))
    }

    fn task(pid: u32, ppid: u32, comm: &str) -> Task {
        Task {
            pid,
            ppid,
            uid: 1000,
            gid: 1000,
            comm: comm.to_owned(),
            cgroup_id: 0,
        }
    }

    fn exec(t: &mut ProcessTable, pid: u32, ppid: u32, exe: &str, args: &str, ts_ns: u64) {
        let comm = exe.rsplit('/').next().unwrap_or(exe);
        t.on_exec(&ExecEvent {
            task: task(pid, ppid, comm),
            exe: exe.as_bytes(),
            args: args.as_bytes(),
            ts_ns,
        });
    }

    fn fork(t: &mut ProcessTable, parent: u32, child: u32, ts_ns: u64) {
        let (ppid, comm) = t
            .get(parent)
            .map(|p| (p.ppid, p.comm.clone()))
            .unwrap_or((0, String::from("?")));
        t.on_fork(&task(parent, ppid, &comm), child, ts_ns);
    }

    fn exit(t: &mut ProcessTable, pid: u32, ts_ns: u64) {
        let (ppid, comm) = t
            .get(pid)
            .map(|p| (p.ppid, p.comm.clone()))
            .unwrap_or((0, String::from("?")));
        t.on_exit(&task(pid, ppid, &comm), 0, ts_ns);
    }

    fn pids(chain: &[Ancestor]) -> Vec<u32> {
        chain.iter().map(|a| a.pid).collect()
    }

    /// init(1) -> containerd(100) -> shim(200)
    fn base() -> ProcessTable {
        let mut t = table();
        exec(&mut t, 1, 0, "/sbin/init", "/sbin/init\0", 0);
        fork(&mut t, 1, 100, SEC);
        exec(
            &mut t,
            100,
            1,
            "/usr/bin/containerd",
            "containerd\0",
            SEC + MS,
        );
        fork(&mut t, 100, 200, 2 * SEC);
        exec(
            &mut t,
            200,
            100,
            "/usr/bin/containerd-shim-runc-v2",
            "containerd-shim-runc-v2\0-namespace\0k8s.io\0",
            2 * SEC + MS,
        );
        t
    }

    #[test]
    fn fork_inherits_until_exec() {
        let mut t = base();
        fork(&mut t, 200, 300, 3 * SEC);
        let child = t.get(300).cloned();
        let child = child.as_ref();
        assert_eq!(child.map(|c| c.origin), Some(Origin::Fork));
        assert_eq!(child.map(|c| c.ppid), Some(200));
        assert_eq!(
            child.and_then(|c| c.exe.clone()),
            Some(b"/usr/bin/containerd-shim-runc-v2".to_vec())
        );
        assert_eq!(
            child.map(|c| c.cmdline_lossy()),
            Some(String::from("containerd-shim-runc-v2 -namespace k8s.io"))
        );
        assert_eq!(child.map(|c| c.start_ns), Some(3 * SEC));

        exec(
            &mut t,
            300,
            200,
            "/usr/sbin/runc",
            "runc\0--root\0/run\0create\0",
            3 * SEC + MS,
        );
        let child = t.get(300);
        assert_eq!(child.map(|c| c.origin), Some(Origin::Exec));
        assert_eq!(
            child.and_then(|c| c.exe.as_deref()),
            Some(&b"/usr/sbin/runc"[..])
        );
        assert_eq!(child.map(|c| c.comm.as_str()), Some("runc"));
        assert_eq!(child.map(|c| c.cmdline.len()), Some(4));
        // exec keeps the start time and parent of the process.
        assert_eq!(child.map(|c| c.start_ns), Some(3 * SEC));
        assert_eq!(pids(&t.ancestors(300)), vec![200, 100, 1]);
    }

    #[test]
    fn exec_of_unseen_pid_and_fork_of_unseen_parent() {
        let mut t = table();
        // The fork was lost: the exec creates the entry.
        exec(&mut t, 50, 1, "/bin/sh", "sh\0-c\0true\0", 10 * SEC);
        assert_eq!(t.get(50).map(|p| p.ppid), Some(1));
        assert_eq!(t.get(50).map(|p| p.start_ns), Some(10 * SEC));
        // A fork from a parent never seen makes an entry for the parent from the record.
        t.on_fork(&task(60, 1, "cron"), 61, 11 * SEC);
        assert_eq!(t.get(60).map(|p| p.origin), Some(Origin::Task));
        assert_eq!(
            t.get(61).map(|p| (p.ppid, p.comm.as_str())),
            Some((60, "cron"))
        );
        assert_eq!(pids(&t.ancestors(61)), vec![60]);
    }

    /// The generation moves when lookups may answer differently (entries added, replaced or
    /// reaped), not when a live entry only learns its exit.
    #[test]
    fn generation_moves_with_the_entries() {
        let mut t = base();
        let g0 = t.generation();
        fork(&mut t, 200, 301, 3 * SEC);
        assert_ne!(t.generation(), g0, "fork");
        let mut t = with_touch();
        let g = t.generation();
        t.on_exit(&task(300, 200, "touch"), 0, 3 * SEC + 2 * MS);
        assert_eq!(t.generation(), g, "exit of a known process");
        t.reap(3 * SEC + 2 * MS);
        assert_eq!(t.generation(), g, "nothing reaped");
        t.reap(3 * SEC + 2 * MS + 3600 * SEC);
        assert!(t.get(300).is_none());
        assert_ne!(t.generation(), g, "reaped");
    }

    /// `base()` plus 300, forked by 200 at 3 s, running `touch x` from 3 s + 1 ms.
    fn with_touch() -> ProcessTable {
        let mut t = base();
        fork(&mut t, 200, 300, 3 * SEC);
        exec(
            &mut t,
            300,
            200,
            "/usr/bin/touch",
            "touch\0x\0",
            3 * SEC + MS,
        );
        t
    }

    #[test]
    fn exit_keeps_the_entry_within_grace() {
        let mut t = with_touch();
        t.on_exit(&task(300, 200, "touch"), 256, 3 * SEC + 2 * MS);
        let p = t.lookup(300);
        assert_eq!(p.and_then(|p| p.exited_ns), Some(3 * SEC + 2 * MS));
        assert_eq!(p.and_then(|p| p.exit_code), Some(256));
        // A late file event is still attributed, with its chain.
        assert_eq!(pids(&t.ancestors(300)), vec![200, 100, 1]);
        t.reap(3 * SEC + 2 * MS + 5 * SEC);
        assert!(t.get(300).is_some());
        t.reap(3 * SEC + 2 * MS + 5 * SEC + 1);
        assert!(t.get(300).is_none());
        assert!(t.lookup(300).is_none());
        assert!(t.ancestors(300).is_empty());
        // Live entries are never reaped.
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn exit_of_unseen_pid_is_recorded() {
        let mut t = table();
        t.on_exit(&task(77, 1, "ghost"), 9, 5 * SEC);
        let p = t.get(77);
        assert_eq!(p.map(|p| p.comm.as_str()), Some("ghost"));
        assert_eq!(p.and_then(|p| p.exited_ns), Some(5 * SEC));
        // A repeated exit record changes nothing.
        t.on_exit(&task(77, 1, "ghost"), 0, 5 * SEC);
        assert_eq!(t.get(77).and_then(|p| p.exit_code), Some(9));
    }

    #[test]
    fn pid_reuse_replaces_the_entry() {
        let mut t = base();
        fork(&mut t, 200, 300, 3 * SEC);
        exec(&mut t, 300, 200, "/usr/sbin/runc", "runc\0", 3 * SEC + MS);
        exit(&mut t, 300, 3 * SEC + 2 * MS);
        // pid 300 comes back as a child of containerd.
        fork(&mut t, 100, 300, 4 * SEC);
        let p = t.get(300);
        assert_eq!(p.map(|p| p.ppid), Some(100));
        assert_eq!(p.and_then(|p| p.exited_ns), None);
        assert_eq!(p.map(|p| p.origin), Some(Origin::Fork));
        assert_eq!(
            p.and_then(|p| p.exe.as_deref()),
            Some(&b"/usr/bin/containerd"[..])
        );
        // An exec for a reused pid whose exit was missed (our parent is alive but the record
        // names another) starts a new process too.
        fork(&mut t, 200, 400, 5 * SEC);
        exec(&mut t, 400, 100, "/usr/bin/ctr", "ctr\0", 6 * SEC);
        let p = t.get(400);
        assert_eq!(p.map(|p| (p.ppid, p.start_ns)), Some((100, 6 * SEC)));
    }

    #[test]
    fn exit_for_a_reused_pid_whose_start_was_missed() {
        let mut t = base();
        fork(&mut t, 200, 300, 3 * SEC);
        exit(&mut t, 300, 3 * SEC + MS);
        // A later process with pid 300 whose fork and exec were lost exits.
        t.on_exit(&task(300, 1, "sleep"), 0, 9 * SEC);
        let p = t.get(300);
        assert_eq!(p.map(|p| (p.comm.as_str(), p.ppid)), Some(("sleep", 1)));
        assert_eq!(p.and_then(|p| p.exited_ns), Some(9 * SEC));
    }

    #[test]
    fn reparenting_keeps_the_launcher() {
        let mut t = base();
        // The shim double-forks: 300 forks 301 and exits; 301 is reparented to init.
        fork(&mut t, 200, 300, 3 * SEC);
        fork(&mut t, 300, 301, 3 * SEC + MS);
        exit(&mut t, 300, 3 * SEC + 2 * MS);
        exec(
            &mut t,
            301,
            1,
            "/usr/sbin/runc",
            "runc\0init\0",
            3 * SEC + 3 * MS,
        );
        let p = t.get(301);
        assert_eq!(p.map(|p| (p.ppid, p.start_ns)), Some((300, 3 * SEC + MS)));
        let chain = t.ancestors(301);
        assert_eq!(pids(&chain), vec![300, 200, 100, 1]);
        assert!(chain[0].exited);
        assert!(!chain[1].exited);
    }

    #[test]
    fn exited_parents_are_kept_while_descendants_remain() {
        let mut t = base();
        // 300 -> 301 -> 302, then 300 and 301 exit; 302 lives on.
        fork(&mut t, 200, 300, 3 * SEC);
        fork(&mut t, 300, 301, 3 * SEC + MS);
        fork(&mut t, 301, 302, 3 * SEC + 2 * MS);
        exit(&mut t, 300, 3 * SEC + 3 * MS);
        exit(&mut t, 301, 3 * SEC + 4 * MS);
        t.reap(100 * SEC);
        assert!(t.get(300).is_some());
        assert!(t.get(301).is_some());
        assert_eq!(pids(&t.ancestors(302)), vec![301, 300, 200, 100, 1]);
        // Once the descendant has exited and its own grace is over, the chain goes.
        exit(&mut t, 302, 101 * SEC);
        t.reap(105 * SEC);
        assert_eq!(pids(&t.ancestors(302)), vec![301, 300, 200, 100, 1]);
        t.reap(107 * SEC);
        assert!(t.get(300).is_none());
        assert!(t.get(301).is_none());
        assert!(t.get(302).is_none());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn reused_parent_pid_ends_the_chain() {
        let mut t = base();
        fork(&mut t, 200, 300, 3 * SEC);
        fork(&mut t, 300, 301, 3 * SEC + MS);
        exit(&mut t, 300, 3 * SEC + 2 * MS);
        // pid 300 is reused by an unrelated, younger process.
        fork(&mut t, 1, 300, 60 * SEC);
        assert!(t.ancestors(301).is_empty());
        assert_eq!(pids(&t.ancestors(300)), vec![1]);
    }

    #[test]
    fn cycles_and_deep_chains_are_bounded() {
        let mut t = table();
        // Two exec records naming each other as parent, at the same time: a cycle that the
        // start-time check cannot break.
        exec(&mut t, 10, 20, "/bin/a", "a\0", SEC);
        exec(&mut t, 20, 10, "/bin/b", "b\0", SEC);
        assert_eq!(pids(&t.ancestors(10)), vec![20]);
        assert_eq!(pids(&t.ancestors(20)), vec![10]);
        // A self-parented entry.
        exec(&mut t, 30, 30, "/bin/c", "c\0", SEC);
        assert!(t.ancestors(30).is_empty());
        // Reaping with exited members of the cycle terminates and keeps the pinned one.
        exit(&mut t, 10, 2 * SEC);
        t.reap(100 * SEC);
        assert!(t.get(10).is_some());

        // A chain deeper than the cap.
        let mut t = table();
        exec(&mut t, 1, 0, "/sbin/init", "init\0", 0);
        for pid in 2..200 {
            fork(&mut t, pid - 1, pid, u64::from(pid) * MS);
        }
        let chain = t.ancestors(199);
        assert_eq!(chain.len(), MAX_ANCESTORS);
        assert_eq!(chain.first().map(|a| a.pid), Some(198));
        // Everything but the tip exits; reaping keeps only the capped chain above it.
        for pid in 1..199 {
            exit(&mut t, pid, SEC);
        }
        t.reap(100 * SEC);
        assert_eq!(t.len(), 1 + MAX_ANCESTORS);
    }

    #[test]
    fn capacity_evicts_exited_first() {
        let mut t = table().with_capacity_limit(16);
        exec(&mut t, 1, 0, "/sbin/init", "init\0", 0);
        for pid in 2..=16 {
            fork(&mut t, 1, pid, u64::from(pid) * MS);
        }
        for pid in 2..=5 {
            exit(&mut t, pid, SEC + u64::from(pid));
        }
        assert_eq!(t.len(), 16);
        fork(&mut t, 1, 17, 2 * SEC);
        // 16 - 16/8 = 14 kept before the insert: the two oldest exits went.
        assert_eq!(t.len(), 15);
        assert!(t.get(2).is_none());
        assert!(t.get(3).is_none());
        assert!(t.get(4).is_some());
        assert!(t.get(17).is_some());
        // Full of live processes: the newest live ones go, init stays.
        let mut t = table().with_capacity_limit(4);
        exec(&mut t, 1, 0, "/sbin/init", "init\0", 0);
        for pid in 2..=10 {
            fork(&mut t, 1, pid, u64::from(pid) * MS);
            assert!(t.len() <= 4);
        }
        assert!(t.get(1).is_some());
        assert!(t.get(10).is_some());
    }

    #[test]
    fn args_and_comm_decoding() {
        assert!(split_args(b"").is_empty());
        assert!(split_args(b"\0").is_empty());
        assert_eq!(split_args(b"a\0b\0"), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(split_args(b"a\0\0"), vec![b"a".to_vec(), Vec::new()]);
        // Cut argv: no terminating NUL.
        assert_eq!(split_args(b"a\0bc"), vec![b"a".to_vec(), b"bc".to_vec()]);
        assert_eq!(comm_from_bytes(b"runc\0\0\0\0\0\0\0\0\0\0\0\0"), "runc");
        assert_eq!(comm_from_bytes(b"0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn exec_record_decoding() {
        let mut rec = ExecRecord {
            fixed: watcher_common::ExecRecordFixed {
                hdr: watcher_common::RecordHeader {
                    kind: watcher_common::kind::EXEC,
                    op: 0,
                    len: 0,
                    ts_ns: 42,
                },
                task: TaskInfo {
                    pid: 7,
                    ppid: 1,
                    comm: *b"ctr\0\0\0\0\0\0\0\0\0\0\0\0\0",
                    cgroup_id: 99,
                    ..TaskInfo::default()
                },
                old_pid: 7,
                exe_len: 12,
                args_len: 12,
                flags: 0,
                lpm_prefixlen: 0,
            },
            data: [0; EXEC_DATA_CAP],
        };
        let bytes = b"/usr/bin/ctrctr\0images\0";
        rec.data[..bytes.len()].copy_from_slice(bytes);
        let ev = ExecEvent::from_record(&rec);
        assert_eq!(ev.exe, b"/usr/bin/ctr");
        assert_eq!(ev.args, b"ctr\0images\0\0");
        assert_eq!(ev.task.comm, "ctr");
        assert_eq!(ev.ts_ns, 42);
        // Lengths past the tail are cut, not trusted.
        rec.fixed.exe_len = u16::MAX;
        rec.fixed.args_len = u16::MAX;
        let ev = ExecEvent::from_record(&rec);
        assert_eq!(ev.exe.len(), EXEC_DATA_CAP);
        assert!(ev.args.is_empty());

        let mut t = table();
        rec.fixed.exe_len = 12;
        rec.fixed.args_len = 11;
        t.on_exec_record(&rec);
        assert_eq!(
            t.get(7).map(|p| p.cmdline_lossy()),
            Some(String::from("ctr images"))
        );
        assert_eq!(t.get(7).map(|p| p.cgroup_id), Some(99));
    }

    #[test]
    fn fork_and_exit_records() {
        let parent = TaskInfo {
            pid: 10,
            tid: 11,
            ppid: 1,
            uid: 0,
            gid: 0,
            comm: *b"containerd\0\0\0\0\0\0",
            ..TaskInfo::default()
        };
        let mut t = table();
        t.on_fork_record(&ForkRecord {
            hdr: watcher_common::RecordHeader {
                kind: watcher_common::kind::FORK,
                ts_ns: SEC,
                ..Default::default()
            },
            task: parent,
            child_pid: 12,
            _pad: 0,
        });
        assert_eq!(
            t.get(12).map(|p| (p.ppid, p.comm.as_str(), p.start_ns)),
            Some((10, "containerd", SEC))
        );
        t.on_exit_record(&ExitRecord {
            hdr: watcher_common::RecordHeader {
                kind: watcher_common::kind::EXIT,
                ts_ns: 2 * SEC,
                ..Default::default()
            },
            task: TaskInfo {
                pid: 12,
                ppid: 10,
                ..parent
            },
            exit_code: 1 << 8,
            _pad: 0,
        });
        assert_eq!(
            t.get(12).map(|p| (p.exited_ns, p.exit_code)),
            Some((Some(2 * SEC), Some(256)))
        );
        assert_eq!(pids(&t.ancestors(12)), vec![10]);
    }

    #[test]
    fn cgroup_inheritance_respects_cgroup_ids() {
        let mut t = table();
        exec(&mut t, 1, 0, "/sbin/init", "init\0", 0);
        let shim_cgroup = cgroup::parse_path("/system.slice/containerd.service");
        if let Some(p) = t.procs.get_mut(&1) {
            p.cgroup = shim_cgroup.clone();
            p.cgroup_id = 5;
        }
        // A child in the same cgroup inherits it when /proc cannot be read.
        t.on_exec(&ExecEvent {
            task: Task {
                cgroup_id: 5,
                ..task(2, 1, "a")
            },
            exe: b"/a",
            args: b"a\0",
            ts_ns: SEC,
        });
        assert_eq!(t.get(2).map(|p| &p.cgroup), Some(&shim_cgroup));
        // A child that moved to another cgroup does not: unknown beats wrong.
        t.on_exec(&ExecEvent {
            task: Task {
                cgroup_id: 6,
                ..task(3, 1, "b")
            },
            exe: b"/b",
            args: b"b\0",
            ts_ns: SEC,
        });
        assert_eq!(t.get(3).map(|p| &p.cgroup), Some(&CgroupInfo::default()));
        // ...unless that cgroup id is known.
        let container = cgroup::parse_path(
            "/k8s.io/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        );
        t.remember_cgroup(6, &container);
        t.on_exec(&ExecEvent {
            task: Task {
                cgroup_id: 6,
                ..task(4, 1, "c")
            },
            exe: b"/c",
            args: b"c\0",
            ts_ns: SEC,
        });
        assert_eq!(t.get(4).map(|p| &p.cgroup), Some(&container));
        // Forks take the cgroup of the record's id when known, else the parent's.
        t.on_fork(
            &Task {
                cgroup_id: 6,
                ..task(1, 0, "init")
            },
            5,
            2 * SEC,
        );
        assert_eq!(t.get(5).map(|p| &p.cgroup), Some(&container));
        t.on_fork(&task(1, 0, "init"), 8, 2 * SEC);
        assert_eq!(t.get(8).map(|p| &p.cgroup), Some(&shim_cgroup));
    }

    #[test]
    fn seeds_from_the_real_proc() -> anyhow::Result<()> {
        let mut t = ProcessTable::new(Duration::from_secs(5));
        let seeded = t.seed_from_proc()?;
        assert!(seeded > 1, "seeded {seeded}");
        assert_eq!(t.len(), seeded);

        let me = std::process::id();
        let exe = std::env::current_exe()?;
        let info = t.get(me).cloned();
        assert_eq!(
            info.as_ref().and_then(|p| p.exe.clone()),
            Some(exe.as_os_str().as_bytes().to_vec())
        );
        let info = info.as_ref();
        assert_eq!(info.map(|p| p.origin), Some(Origin::Proc));
        assert_eq!(info.map(ProcInfo::is_alive), Some(true));
        assert_eq!(
            info.and_then(|p| p.cmdline.first().cloned()),
            std::env::args_os().next().map(|a| a.as_bytes().to_vec())
        );
        let status = procfs::process::Process::myself()?.status()?;
        assert_eq!(
            info.map(|p| (p.uid, p.gid)),
            Some((status.ruid, status.rgid))
        );
        assert_eq!(info.map(|p| &p.cgroup), Some(&cgroup::read_for_pid(me)?));

        let chain = t.ancestors(me);
        assert_eq!(chain.last().map(|a| a.pid), Some(1), "{chain:?}");
        assert_eq!(
            chain.first().map(|a| a.pid),
            u32::try_from(procfs::process::Process::myself()?.stat()?.ppid).ok()
        );
        assert!(chain.iter().all(|a| !a.exited));

        // A pid never seen is read on lookup.
        let mut t = ProcessTable::new(Duration::from_secs(5));
        assert!(t.is_empty());
        assert!(t.lookup(me).is_some());
        assert_eq!(t.len(), 1);
        assert!(t.lookup(u32::MAX).is_none());
        Ok(())
    }

    #[test]
    fn command_lines_are_masked_at_capture() {
        let mut t = table();
        exec(
            &mut t,
            10,
            1,
            "/usr/bin/mysql",
            "mysql\0-u\0app\0--password=hunter2\0-phunter2\0shop\0",
            SEC,
        );
        let args: Vec<String> = t.get(10).map(ProcInfo::cmdline_lossy).into_iter().collect();
        assert_eq!(args, ["mysql -u app --password=*** -p*** shop"]);
        // A fork inherits the masked form.
        fork(&mut t, 10, 11, 2 * SEC);
        assert_eq!(
            t.get(11).map(ProcInfo::cmdline_lossy).as_deref(),
            Some("mysql -u app --password=*** -p*** shop")
        );
        // Masking off.
        let mut t = table().with_masker(Masker::none());
        exec(&mut t, 10, 1, "/usr/bin/app", "app\0--token=x\0", SEC);
        assert_eq!(
            t.get(10).map(ProcInfo::cmdline_lossy).as_deref(),
            Some("app --token=x")
        );
    }

    #[test]
    fn command_lines_read_from_proc_are_masked() -> anyhow::Result<()> {
        let mut child = std::process::Command::new("bash")
            .args(["-c", "sleep 30; true", "x", "--token=hunter2"])
            .spawn()?;
        let pid = child.id();
        // Wait for the exec (the command line is the parent's until then).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"bash\0"))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut t = ProcessTable::new(Duration::from_secs(5));
        let line = t.lookup(pid).map(ProcInfo::cmdline_lossy);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            line.as_deref(),
            Some("bash -c sleep 30; true x --token=***")
        );
        Ok(())
    }

    /// Command lines of the kinds a node execs all day, NUL-separated as exec records carry
    /// them (one with a secret).
    fn typical_argvs() -> Vec<(&'static str, String)> {
        let id = "4f1c2a7e9b3d5c6a8e0f1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f506";
        let task = format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}");
        let join = |a: &[&str]| {
            let mut s = a.join("\0");
            s.push('\0');
            s
        };
        vec![
            (
                "/usr/bin/runc",
                join(&[
                    "runc",
                    "--root",
                    "/run/containerd/runc/k8s.io",
                    "--log",
                    &format!("{task}/log.json"),
                    "--log-format",
                    "json",
                    "create",
                    "--bundle",
                    &task,
                    "--pid-file",
                    &format!("{task}/init.pid"),
                    id,
                ]),
            ),
            (
                "/usr/bin/containerd-shim-runc-v2",
                join(&[
                    "/usr/bin/containerd-shim-runc-v2",
                    "-namespace",
                    "k8s.io",
                    "-id",
                    id,
                    "-address",
                    "/run/containerd/containerd.sock",
                ]),
            ),
            (
                "/usr/bin/bash",
                join(&["bash", "-c", "for f in /var/lib/x/*; do rm -f \"$f\"; done"]),
            ),
            (
                "/usr/bin/python3.11",
                join(&[
                    "python3",
                    "-c",
                    "import json,sys\nfor i in json.load(sys.stdin)['items']:\n    print(i['metadata']['name'])",
                ]),
            ),
            (
                "/usr/bin/curl",
                join(&[
                    "curl",
                    "-sS",
                    "-H",
                    "Accept: application/json",
                    "https://example.com/api/v1/namespaces/default/pods?limit=100",
                ]),
            ),
            ("/usr/bin/ls", join(&["ls", "-la", "/var/lib/containerd"])),
            (
                "/usr/local/bin/k3s",
                join(&[
                    "/usr/local/bin/k3s",
                    "server",
                    "--data-dir",
                    "/var/lib/rancher/k3s",
                    "--write-kubeconfig-mode",
                    "0644",
                    "--disable",
                    "traefik",
                    "--node-name",
                    "edge-17",
                    "--kubelet-arg",
                    "max-pods=50",
                    "--flannel-backend",
                    "host-gw",
                    "--cluster-cidr",
                    "10.42.0.0/16",
                    "--service-cidr",
                    "10.43.0.0/16",
                ]),
            ),
            (
                "/usr/bin/mysql",
                join(&[
                    "mysql",
                    "-u",
                    "app",
                    "--password=hunter2",
                    "-h",
                    "db.local",
                    "shop",
                ]),
            ),
        ]
    }

    /// The cost of one exec record in the process table (argv split and stored), with the
    /// built-in masking and without any, measured in alternation so that both see the same
    /// machine load. Run: `cargo test -p watcher --release --lib
    /// process::tests::bench_exec_records -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_exec_records() {
        let argvs = typical_argvs();
        let n: u32 = 400_000;
        let run = |masker: Masker, lines: &[(&'static str, String)]| {
            let mut t = table().with_masker(masker);
            let start = std::time::Instant::now();
            for i in 0..n {
                let (exe, args) = &lines[i as usize % lines.len()];
                t.on_exec(&ExecEvent {
                    task: task(1000 + i % 4096, 1, "x"),
                    exe: exe.as_bytes(),
                    args: args.as_bytes(),
                    ts_ns: u64::from(i),
                });
            }
            start.elapsed().as_nanos() as f64 / f64::from(n)
        };
        let secretive: Vec<_> = argvs
            .iter()
            .filter(|(_, a)| Masker::builtin().may_mask(a.as_bytes()))
            .cloned()
            .collect();
        let m = Masker::builtin();
        let mut best = f64::MAX;
        for _ in 0..7 {
            let start = std::time::Instant::now();
            let mut hits = 0u32;
            for i in 0..n {
                hits += u32::from(m.may_mask(argvs[i as usize % argvs.len()].1.as_bytes()));
            }
            best = best.min(start.elapsed().as_nanos() as f64 / f64::from(n));
            assert_eq!(hits, n / 4);
        }
        println!("literal scan of a command line: {best:.0} ns");
        // For scale: what the daemon's table does on every exec besides, reading the live
        // process's cgroup from /proc.
        let mut live = ProcessTable::new(Duration::from_secs(60));
        let me = std::process::id();
        let (exe, args) = &argvs[0];
        let mut best = f64::MAX;
        for _ in 0..7 {
            let start = std::time::Instant::now();
            for i in 0..n / 20 {
                live.on_exec(&ExecEvent {
                    task: task(me, 1, "x"),
                    exe: exe.as_bytes(),
                    args: args.as_bytes(),
                    ts_ns: u64::from(i),
                });
            }
            best = best.min(start.elapsed().as_nanos() as f64 / f64::from(n / 20));
        }
        println!("exec record of a live process, /proc read included: {best:.0} ns");
        for (what, lines) in [
            ("typical mix", &argvs),
            ("lines the rules look at", &secretive),
        ] {
            let (mut off, mut on) = (f64::MAX, f64::MAX);
            for _ in 0..7 {
                off = off.min(run(Masker::none(), lines));
                on = on.min(run(Masker::builtin(), lines));
            }
            println!(
                "exec records, {what} ({} command lines, mean {} bytes): {off:.0} ns without \
                 masking, {on:.0} ns with ({:+.0} ns)",
                lines.len(),
                lines.iter().map(|(_, a)| a.len()).sum::<usize>() / lines.len().max(1),
                on - off
            );
        }
    }

    #[test]
    fn proc_start_times_are_on_the_monotonic_clock() -> anyhow::Result<()> {
        let mut t = ProcessTable::new(Duration::from_secs(5));
        let me = std::process::id();
        let now = clock::monotonic_ns();
        let start = t.lookup(me).map(|p| p.start_ns).unwrap_or(u64::MAX);
        // We started before now, and within the test run's lifetime.
        assert!(start <= now, "{start} > {now}");
        assert!(now - start < 3_600 * SEC);
        Ok(())
    }
}
