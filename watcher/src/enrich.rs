//! From kernel records to enriched events: keeps the process table current from lifecycle
//! records, names files canonically, and attaches the acting process, its parent chain, unit
//! and container to every file operation.
//!
//! The kernel's record (its layout `watcher_common::FileRecord`, decoded as
//! `watcher_common::KernelFileOp`) becomes the one typed event, `ctrwatch_event::FileEvent`:
//! numbers stay numbers (times in ns, `Dev`, `Mode`), ops and flags become enums and bit sets.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctrwatch_event::{
    AncestorView, Clock, Details, Dev, FileEvent, Mode, Notes, Op, OpResult, OpenFlags,
    Overwritten, PathBytes, ProcessView, Protect, Xattr, lossless_text,
};
use watcher_common::{
    FLAG_BY_FD, FLAG_DENIED, FLAG_KERNEL_INTERNAL, FLAG_NOT_CLOSED, FLAG_PATH_IN_FS,
    FLAG_PATH_TRUNCATED, FLAG_PATH2_TRUNCATED, FLAG_REPLACED, FLAG_VALUE_TRUNCATED,
    FLAG_WOULD_DENY, FileRecordFixed, KernelFileOp, PATH_GAP, Record, TaskInfo, WriteAgg, WriteKey,
    op,
};

use crate::{
    containerd::attribution::Attributor,
    process::{ExecEvent, ProcessTable, Task},
    roots::{MountEntry, RootSet, parse_mountinfo},
};

/// `file->f_mode` bit set when an open created the file (include/linux/fs.h; unchanged since
/// 4.19). Interpreted here rather than in the kernel so that a kernel that moves it needs a
/// daemon change only.
const FMODE_CREATED: u32 = 0x100000;
const O_ACCMODE: u32 = 3;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const O_APPEND: u32 = 0o2000;
const S_IFMT: u32 = 0o170000;
const S_IFCHR: u32 = 0o020000;
/// Threads whose process description is remembered before the memo starts over.
const VIEW_CACHE_MAX: usize = 16_384;

/// What a record turned into.
#[derive(Debug)]
pub enum Outcome {
    /// A file event, ready for a sink.
    Event(Box<FileEvent>),
    /// A process exited: its unflushed write aggregates must be collected from the kernel.
    ProcessExited(u32),
    /// Nothing to hand on (an exec, a bind, a record outside the roots...).
    Nothing,
}

/// Per-(process, fd) path of an ongoing write aggregate (from WRITE_BIND records).
#[derive(Clone, Debug)]
struct Binding {
    path: Vec<u8>,
    /// The path could not be built completely (`FLAG_PATH_TRUNCATED`): the aggregate's record
    /// must say so too.
    path_truncated: bool,
    comm: [u8; 16],
}

/// Turns the kernel's decoded records into events: paths under the roots, the acting process, the containerd attribution.
pub struct Enricher {
    /// The watched roots (re-resolved by the watch loop at each refresh).
    pub roots: RootSet,
    /// Every process seen (exec, fork, exit records and /proc), for the acting process and its parents.
    pub processes: ProcessTable,
    /// Turns the kernel's monotonic times into wall-clock times.
    pub clock: Clock,
    /// Adds the `containerd` object to events under containerd roots.
    pub attributor: Option<Attributor>,
    bindings: HashMap<(u32, i32), Binding>,
    /// The process description last built for each thread. Building one walks the parent
    /// chain and copies every string in it; events of a thread share one `Arc` instead, until
    /// the process table changes (an entry added, replaced or reaped: exec, fork, a pid read
    /// from /proc) or the kernel reports the thread differently (comm, ids, cgroup).
    views: HashMap<u32, CachedView>,
    /// The mount table, for protect records of objects off the root filesystem, and when it
    /// was read: read again only when a record's filesystem is not in it, at most once per
    /// [`MOUNTS_REREAD`] (a foreign process looping on a denied call must not make the daemon
    /// parse /proc/self/mountinfo thousands of times a second).
    mounts: Option<(Instant, Vec<MountEntry>)>,
}

/// How often the mount table may be read again for a filesystem it does not have.
const MOUNTS_REREAD: Duration = Duration::from_secs(1);

struct CachedView {
    generation: u64,
    task: TaskInfo,
    view: Arc<ProcessView>,
}

impl Enricher {
    /// An enricher without containerd attribution (see [`Enricher::with_attributor`]).
    pub fn new(roots: RootSet, processes: ProcessTable) -> Self {
        Enricher {
            roots,
            processes,
            clock: Clock::process(),
            attributor: None,
            bindings: HashMap::new(),
            views: HashMap::new(),
            mounts: None,
        }
    }

    /// Attributes events under containerd roots with `attributor`.
    pub fn with_attributor(mut self, attributor: Attributor) -> Self {
        self.attributor = Some(attributor);
        self
    }

    /// Takes one decoded kernel record: updates the process table, and returns the event it makes, if any.
    pub fn on_record(&mut self, record: Record) -> Outcome {
        match record {
            Record::Exec(exec) => {
                self.processes.on_exec(&ExecEvent {
                    task: Task::from(&exec.fixed.task),
                    exe: &exec.exe,
                    args: &exec.args,
                    ts_ns: exec.fixed.hdr.ts_ns,
                });
                Outcome::Nothing
            }
            Record::Fork(fork) => {
                self.processes
                    .on_fork(&Task::from(&fork.task), fork.child_pid, fork.hdr.ts_ns);
                Outcome::Nothing
            }
            Record::Exit(exit) => {
                self.processes
                    .on_exit(&Task::from(&exit.task), exit.exit_code, exit.hdr.ts_ns);
                Outcome::ProcessExited(exit.task.pid)
            }
            Record::File(file) => self.on_file(file),
        }
    }

    fn on_file(&mut self, mut f: KernelFileOp) -> Outcome {
        let key = (f.fixed.task.pid, f.fixed.fd);
        if f.fixed.hdr.op == op::WRITE_BIND {
            self.bindings.insert(
                key,
                Binding {
                    path: f.path,
                    path_truncated: f.fixed.flags & FLAG_PATH_TRUNCATED != 0,
                    comm: f.fixed.task.comm,
                },
            );
            return Outcome::Nothing;
        }
        if f.fixed.hdr.op == op::MODIFY {
            let bound = self.bindings.remove(&key);
            if let (true, Some(b)) = (f.path.is_empty(), bound) {
                f.path = b.path;
                if b.path_truncated {
                    f.fixed.flags |= FLAG_PATH_TRUNCATED;
                }
            }
        }
        match self.file_event(f) {
            Some(ev) => Outcome::Event(Box::new(ev)),
            None => Outcome::Nothing,
        }
    }

    /// Reports the write aggregates of a process that exited without closing its files.
    pub fn on_unclosed_writes(&mut self, aggregates: Vec<(WriteKey, WriteAgg)>) -> Vec<FileEvent> {
        let mut out = Vec::new();
        for (key, agg) in aggregates {
            let Some(binding) = self.bindings.remove(&(key.tgid, key.fd)) else {
                continue;
            };
            let f = KernelFileOp::unclosed_modify(
                &key,
                &agg,
                binding.comm,
                binding.path,
                binding.path_truncated,
            );
            if let Some(ev) = self.file_event(f) {
                out.push(ev);
            }
        }
        out
    }

    /// [`mounted_path`] with the cached mount table, read (again) only when needed: protect's
    /// records of objects off the root filesystem.
    fn mounted_path(&mut self, dev: Dev, path: &[u8]) -> Option<Vec<u8>> {
        if let Some((_, mounts)) = &self.mounts
            && let Some(found) = mounted_path(dev, path, mounts)
        {
            return Some(found);
        }
        if self
            .mounts
            .as_ref()
            .is_some_and(|(read, _)| read.elapsed() < MOUNTS_REREAD)
        {
            return None;
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| parse_mountinfo(&t))
            .unwrap_or_default();
        let found = mounted_path(dev, path, &mounts);
        self.mounts = Some((Instant::now(), mounts));
        found
    }

    fn file_event(&mut self, mut f: KernelFileOp) -> Option<FileEvent> {
        if f.fixed.flags & FLAG_PATH_IN_FS != 0
            && let Some(path) = self.mounted_path(Dev(f.fixed.dev), &f.path)
        {
            f.path = path;
            f.fixed.flags &= !FLAG_PATH_TRUNCATED;
        }
        let x = &f.fixed;
        let Some(op) = file_op(x) else {
            log::debug!("file record of unknown op {} skipped", x.hdr.op);
            return None;
        };
        let path = self.canonical_path(&f.path, x.flags & FLAG_PATH_TRUNCATED != 0);
        let symlink = x.hdr.op == op::SYMLINK;
        let new_path = (!f.path2.is_empty() && !symlink)
            .then(|| self.canonical_path(&f.path2, x.flags & FLAG_PATH2_TRUNCATED != 0));
        // The kernel's prefix test is lexical; `/root/../elsewhere` passes it. Drop what is
        // not under a root once `..` is folded. Protect's records are kept wherever they are:
        // every denial is an event (the protected objects are containerd's, normally under
        // its roots anyway).
        let inside =
            self.roots.contains(&path) || new_path.as_ref().is_some_and(|p| self.roots.contains(p));
        if !inside && protect_of(x.flags).is_none() {
            return None;
        }
        // A modify's "result" is the bytes written.
        let result = if x.hdr.op == op::MODIFY {
            OpResult::Ok
        } else {
            OpResult::from_ret(x.result)
        };
        let mut details = self.details(&f);
        let new_path = if symlink {
            // The symlink's target, as given (not a path we resolve).
            (!f.path2.is_empty()).then(|| PathBytes(f.path2.clone()))
        } else {
            new_path.map(PathBytes)
        };
        let process = self.process_view(&x.task);
        if let Some(attributor) = self.attributor.as_mut() {
            let new_path = new_path.as_ref().filter(|_| !symlink).map(|p| p.as_bytes());
            let kernel_internal = x.flags & FLAG_KERNEL_INTERNAL != 0;
            details.containerd = attributor
                .attribute(
                    &path,
                    new_path,
                    &process,
                    &mut self.processes,
                    kernel_internal,
                    details.xattr.as_ref().map(|x| x.name.as_slice()),
                )
                .map(Box::new);
            // An opaque mark on a committed layer's directory is judged against the layer's
            // tar, whoever set it (opaque-leak): the layer is replayed again.
            if op == Op::Setxattr
                && result == OpResult::Ok
                && details.xattr.as_ref().is_some_and(|x| x.is_opaque_marker())
                && let Some(view) = details.containerd.as_deref()
                && view.is_committed_layer()
            {
                attributor.opaque_mark_set(view);
            }
        }
        Some(FileEvent {
            time_ns: self.clock.wall_ns(x.hdr.ts_ns),
            mono_ns: x.hdr.ts_ns,
            op,
            path: PathBytes(path),
            new_path,
            result,
            inode: (x.ino != 0).then_some(x.ino),
            dev: (x.dev != 0).then_some(Dev(x.dev)),
            process,
            details,
        })
    }

    /// The path as reported: under its canonical root name, `.` and `..` folded. A path the
    /// kernel could not build completely (`truncated`) is folded only up to its first gap
    /// ([`PATH_GAP`]): what follows the gap is relative to directories nobody knows, and a
    /// `..` there must not eat the gap and leave a path that looks complete.
    fn canonical_path(&self, path: &[u8], truncated: bool) -> Vec<u8> {
        if !truncated {
            return self.roots.canonical_path(path);
        }
        match first_gap(path) {
            // The top is unknown: nothing to fold or to name canonically.
            Some(0) => path.to_vec(),
            Some(at) => {
                let mut out = self.roots.canonical_path(&path[..at - 1]);
                out.extend_from_slice(&path[at - 1..]);
                out
            }
            None => self.roots.canonical_path(path),
        }
    }

    /// What depends on the op. Decided on the kernel's op number: an open is an open,
    /// whatever [`file_op`] calls it.
    fn details(&self, f: &KernelFileOp) -> Details {
        let x = &f.fixed;
        let kop = x.hdr.op;
        let mut d = Details {
            protect: protect_of(x.flags),
            ..Details::default()
        };
        if d.protect.is_some() {
            // Protect's record of an operation that had not run yet: its op, object and
            // process, no arguments (docs/operations.md, "Protect mode").
            d.notes = notes_of(x.flags);
            return d;
        }
        // CREATE comes from the kernel's own vfs_create (fentry_namespace.rs), with the mode
        // it was asked for; an open that created a file is an OPEN_WRITE here.
        let has_mode = matches!(kop, op::CREATE | op::MKDIR | op::MKNOD | op::CHMOD)
            || (kop == op::OPEN_WRITE && x.sys_flags & O_CREAT != 0);
        if has_mode {
            d.mode = Some(Mode::permissions(x.mode));
        }
        if matches!(kop, op::TRUNCATE | op::FALLOCATE | op::OPEN_WRITE) {
            d.size = Some(x.size);
        }
        if kop == op::OPEN_WRITE {
            d.open_flags = open_flags(x.sys_flags);
        }
        if kop == op::FALLOCATE {
            d.offset = Some(x.offset);
        }
        if kop == op::MODIFY {
            d.bytes = Some(x.bytes);
            d.writes = Some(x.writes);
            d.size = Some(x.size);
            d.first_write_ns = Some(self.clock.wall_ns(x.first_ns));
        }
        if kop == op::CHOWN {
            d.owner_uid = (x.uid_arg != u32::MAX).then_some(x.uid_arg);
            d.owner_gid = (x.gid_arg != u32::MAX).then_some(x.gid_arg);
        }
        if kop == op::MKNOD {
            // mknod's device argument is in userspace's encoding.
            d.rdev = Some(Dev::from_user(u64::from(x.rdev)));
            d.whiteout = Some(x.mode & S_IFMT == S_IFCHR && x.rdev == 0);
        }
        if matches!(kop, op::SETXATTR | op::REMOVEXATTR) {
            d.xattr = Some(Xattr {
                name: f.xattr_name.clone(),
                value: (!f.xattr_value.is_empty()).then(|| f.xattr_value.clone()),
            });
            if kop == op::SETXATTR {
                d.size = Some(x.size);
            }
        }
        if kop == op::RENAME && x.flags & FLAG_REPLACED != 0 && x.replaced_ino != 0 {
            d.overwritten = Some(Overwritten {
                inode: x.replaced_ino,
                dev: Dev(x.replaced_dev),
            });
        }
        d.notes = notes_of(x.flags);
        d
    }

    /// The acting process's description: the thread's previous one while it still holds.
    fn process_view(&mut self, task: &TaskInfo) -> Arc<ProcessView> {
        if let Some(c) = self.views.get(&task.tid)
            && c.generation == self.processes.generation()
            && c.task == *task
        {
            return c.view.clone();
        }
        let view = Arc::new(self.build_process_view(task));
        if self.views.len() >= VIEW_CACHE_MAX {
            self.views.clear();
        }
        // After building: reading /proc for an unknown pid adds an entry.
        let cached = CachedView {
            generation: self.processes.generation(),
            task: *task,
            view: view.clone(),
        };
        self.views.insert(task.tid, cached);
        view
    }

    fn build_process_view(&mut self, t: &TaskInfo) -> ProcessView {
        let mut view = ProcessView {
            pid: t.pid,
            tid: t.tid,
            ppid: t.ppid,
            comm: crate::process::comm_from_bytes(&t.comm),
            uid: t.uid,
            gid: t.gid,
            cgroup_id: t.cgroup_id,
            mnt_ns: t.mnt_ns,
            ..Default::default()
        };
        if let Some(info) = self.processes.lookup(t.pid) {
            view.exe = info.exe.as_deref().map(lossless_text);
            view.cmdline = info.cmdline.iter().map(|a| lossless_text(a)).collect();
            view.unit = info.cgroup.unit.clone();
            view.container_id = info.cgroup.container_id.clone();
            if view.ppid == 0 {
                view.ppid = info.ppid;
            }
        }
        view.ancestors = self
            .processes
            .ancestors(t.pid)
            .into_iter()
            .map(|a| AncestorView {
                pid: a.pid,
                comm: a.comm,
                exe: a.exe.as_deref().map(lossless_text),
            })
            .collect();
        view
    }
}

/// Where the first path component that is the gap marker ([`PATH_GAP`], as the kernel writes
/// it for what it could not build) starts.
fn first_gap(path: &[u8]) -> Option<usize> {
    let mut at = 0;
    for component in path.split(|b| *b == b'/') {
        if component == PATH_GAP {
            return Some(at);
        }
        at += component.len() + 1;
    }
    None
}

/// The notes of a record's `FLAG_*` bits.
fn notes_of(flags: u32) -> Notes {
    let mut notes = Notes::default();
    for (bit, note) in [
        (FLAG_BY_FD, Notes::BY_FD),
        (FLAG_PATH_TRUNCATED, Notes::PATH_TRUNCATED),
        (FLAG_PATH2_TRUNCATED, Notes::NEW_PATH_TRUNCATED),
        (FLAG_VALUE_TRUNCATED, Notes::VALUE_TRUNCATED),
        (FLAG_NOT_CLOSED, Notes::NOT_CLOSED),
        (FLAG_KERNEL_INTERNAL, Notes::KERNEL_INTERNAL),
    ] {
        if flags & bit != 0 {
            notes.insert(note);
        }
    }
    notes
}

/// The path of a record flagged `FLAG_PATH_IN_FS` (`…` then the object's path inside its
/// filesystem `dev`) from where that filesystem is mounted whole (the first such mount of
/// `mounts`); None when it is not mounted whole or the path is not of that form.
fn mounted_path(dev: Dev, path: &[u8], mounts: &[MountEntry]) -> Option<Vec<u8>> {
    let inner = path.strip_prefix(&PATH_GAP[..])?;
    if !inner.starts_with(b"/") || first_gap(inner).is_some() {
        return None;
    }
    let dev = dev.to_string();
    let mount = mounts
        .iter()
        .find(|m| m.dev == dev && m.fs_root.as_os_str() == "/")?;
    let mut out = mount.mount_point.as_os_str().as_bytes().to_vec();
    if out.ends_with(b"/") {
        out.pop();
    }
    out.extend_from_slice(inner);
    Some(out)
}

/// Protect mode's verdict, on the records of its LSM programs.
fn protect_of(flags: u32) -> Option<Protect> {
    if flags & FLAG_DENIED != 0 {
        Some(Protect::Denied)
    } else if flags & FLAG_WOULD_DENY != 0 {
        Some(Protect::WouldDeny)
    } else {
        None
    }
}

/// The event op of a kernel op number (`watcher_common::op`, also the loss counter slot of
/// that op); None for the internal `WRITE_BIND` and numbers this version does not know. Opens
/// (`OPEN_WRITE`) are refined by [`file_op`].
pub fn kernel_op(number: u16) -> Option<Op> {
    Some(match number {
        op::OPEN_WRITE => Op::OpenWrite,
        op::CREATE => Op::Create,
        op::TRUNCATE => Op::Truncate,
        op::MODIFY => Op::Modify,
        op::FALLOCATE => Op::Fallocate,
        op::UNLINK => Op::Unlink,
        op::RMDIR => Op::Rmdir,
        op::RENAME => Op::Rename,
        op::LINK => Op::Link,
        op::SYMLINK => Op::Symlink,
        op::MKNOD => Op::Mknod,
        op::MKDIR => Op::Mkdir,
        op::SETXATTR => Op::Setxattr,
        op::REMOVEXATTR => Op::Removexattr,
        op::CHMOD => Op::Chmod,
        op::CHOWN => Op::Chown,
        _ => return None,
    })
}

/// The op of a file record: [`kernel_op`], an open refined from its flags: `create` when it
/// created the file, `truncate` when it truncated one (O_TRUNC), `open_write` otherwise.
fn file_op(x: &FileRecordFixed) -> Option<Op> {
    if x.hdr.op != op::OPEN_WRITE {
        return kernel_op(x.hdr.op);
    }
    Some(if x.result >= 0 && x.f_mode & FMODE_CREATED != 0 {
        Op::Create
    } else if x.sys_flags & O_TRUNC != 0 {
        Op::Truncate
    } else {
        Op::OpenWrite
    })
}

/// How a file was opened, from the open's flags.
fn open_flags(sys_flags: u32) -> OpenFlags {
    let mut f = OpenFlags::default();
    for (bits, flag) in [
        (O_ACCMODE, OpenFlags::WRITE),
        (O_CREAT, OpenFlags::CREATE),
        (O_TRUNC, OpenFlags::TRUNCATE),
        (O_APPEND, OpenFlags::APPEND),
    ] {
        if sys_flags & bits != 0 {
            f.insert(flag);
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use watcher_common::{ExecRecordFixed, KernelExec, RecordHeader};

    fn task(pid: u32, tid: u32, comm: &str) -> TaskInfo {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        TaskInfo {
            pid,
            tid,
            ppid: 1,
            comm: c,
            ..TaskInfo::default()
        }
    }

    fn exec(pid: u32, comm: &str, exe: &str, args: &str) -> Record {
        Record::Exec(KernelExec {
            fixed: ExecRecordFixed {
                hdr: RecordHeader {
                    ts_ns: 1,
                    ..RecordHeader::default()
                },
                task: task(pid, pid, comm),
                old_pid: pid,
                ..ExecRecordFixed::default()
            },
            exe: exe.as_bytes().to_vec(),
            args: args.replace(' ', "\0").into_bytes(),
        })
    }

    /// A file record of `op` at monotonic time 2 by `t` on `path`.
    fn file(op: u16, t: TaskInfo, path: Vec<u8>) -> KernelFileOp {
        KernelFileOp {
            fixed: FileRecordFixed::new(op, 2, t),
            path,
            ..KernelFileOp::default()
        }
    }

    fn unlink(root: &[u8], t: TaskInfo, name: &str) -> Record {
        let mut path = root.to_vec();
        path.extend_from_slice(b"/");
        path.extend_from_slice(name.as_bytes());
        Record::File(file(op::UNLINK, t, path))
    }

    fn event(e: &mut Enricher, r: Record) -> Box<FileEvent> {
        match e.on_record(r) {
            Outcome::Event(ev) => ev,
            other => panic!("no event: {other:?}"),
        }
    }

    /// What follows the gap of a truncated path is relative to directories nobody knows:
    /// `..` there is not folded into the known prefix. The truncation survives the write
    /// aggregate's binding (a process that exits without closing).
    #[test]
    fn truncated_paths_keep_their_gap_and_their_note() {
        let dir = std::env::temp_dir().join(format!("ctrwatch-enrich-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let roots = RootSet::resolve(std::slice::from_ref(&PathBuf::from(&dir)));
        let mut root = roots.kernel_prefixes().into_iter().next().expect("root");
        if root.ends_with(b"/") {
            root.pop();
        }
        let mut e = Enricher::new(roots, ProcessTable::detached(Duration::from_secs(60)));
        let mut cut = root.clone();
        cut.extend_from_slice("/a/…/../../x".as_bytes());
        let unlink = |path: Vec<u8>, flags: u32| {
            let mut f = file(op::UNLINK, task(4000, 4000, "rm"), path);
            f.fixed.flags = flags;
            Record::File(f)
        };
        let v = event(&mut e, unlink(cut.clone(), FLAG_PATH_TRUNCATED));
        assert_eq!(v.path.0, cut);
        assert_eq!(v.details.notes, Notes::PATH_TRUNCATED);
        // A complete path is folded as before.
        let mut whole = root.clone();
        whole.extend_from_slice(b"/a/b/../x");
        let v = event(&mut e, unlink(whole, 0));
        assert_eq!(v.path.0, [&root[..], b"/a/x"].concat());

        // Bound while truncated, reported at exit without a path of its own.
        let mut bound = root.clone();
        bound.extend_from_slice("/a/…/f".as_bytes());
        let mut bind = file(op::WRITE_BIND, task(4000, 4000, "sh"), bound.clone());
        bind.fixed.fd = 1;
        bind.fixed.flags = FLAG_BY_FD | FLAG_PATH_TRUNCATED;
        assert!(matches!(e.on_record(Record::File(bind)), Outcome::Nothing));
        let key = WriteKey { tgid: 4000, fd: 1 };
        let agg = WriteAgg {
            bytes: 3,
            writes: 1,
            ..WriteAgg::default()
        };
        let out = e.on_unclosed_writes(vec![(key, agg)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].path.0, bound);
        assert_eq!(
            out[0].details.notes,
            Notes::BY_FD | Notes::PATH_TRUNCATED | Notes::NOT_CLOSED
        );
        assert_eq!((out[0].op, out[0].details.bytes), (Op::Modify, Some(3)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Protect's records become events with their verdict, wherever the object is (every
    /// denial is an event); a record without the flags outside the roots is still dropped.
    /// They carry no op arguments: the operation had not run.
    #[test]
    fn protect_records_become_verdicts_outside_the_roots_too() {
        let dir =
            std::env::temp_dir().join(format!("ctrwatch-enrich-protect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let roots = RootSet::resolve(std::slice::from_ref(&PathBuf::from(&dir)));
        let root = roots.kernel_prefixes().into_iter().next().expect("root");
        let mut e = Enricher::new(roots, ProcessTable::detached(Duration::from_secs(60)));
        let record = |op: u16, path: &[u8], flags: u32, result: i64| {
            let mut f = file(op, task(4000, 4000, "rm"), path.to_vec());
            f.fixed.flags = flags;
            f.fixed.result = result;
            f.fixed.ino = 42;
            f.fixed.dev = 7;
            Record::File(f)
        };
        let outside = b"/elsewhere/blob";
        let v = event(&mut e, record(op::UNLINK, outside, FLAG_DENIED, -1));
        assert_eq!(v.details.protect, Some(Protect::Denied));
        assert_eq!((v.op, v.result), (Op::Unlink, OpResult::Err(1)));
        assert_eq!((v.inode, v.dev), (Some(42), Some(Dev(7))));
        assert_eq!(v.path.0, outside);
        assert_eq!(v.process.comm, "rm");
        let mut inside = root.clone();
        inside.extend_from_slice(b"/blob");
        let v = event(&mut e, record(op::OPEN_WRITE, &inside, FLAG_WOULD_DENY, 0));
        assert_eq!(v.details.protect, Some(Protect::WouldDeny));
        assert_eq!((v.op, v.result), (Op::OpenWrite, OpResult::Ok));
        assert_eq!(
            (v.details.size, v.details.open_flags),
            (None, OpenFlags::default())
        );
        let cut = "…/fs/blob".as_bytes();
        let v = event(
            &mut e,
            record(op::SETXATTR, cut, FLAG_DENIED | FLAG_PATH_TRUNCATED, -1),
        );
        assert_eq!(
            (v.path.0.as_slice(), v.details.notes),
            (cut, Notes::PATH_TRUNCATED)
        );
        assert_eq!(v.details.xattr, None);
        assert!(matches!(
            e.on_record(record(op::UNLINK, outside, 0, -1)),
            Outcome::Nothing
        ));
        // Off the process's root filesystem (FLAG_PATH_IN_FS): named from the mount table,
        // here the real one's /proc.
        use std::os::unix::fs::MetadataExt as _;
        let proc_dev = std::fs::metadata("/proc")
            .map(|m| m.dev())
            .expect("stat /proc");
        let mut f = file(
            op::UNLINK,
            task(4000, 4000, "rm"),
            "…/self".as_bytes().to_vec(),
        );
        f.fixed.flags = FLAG_DENIED | FLAG_PATH_TRUNCATED | FLAG_PATH_IN_FS;
        f.fixed.dev = Dev::from_user(proc_dev).0;
        let v = event(&mut e, Record::File(f));
        assert_eq!(
            (v.path.0.as_slice(), v.details.notes),
            (&b"/proc/self"[..], Notes::default())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A path inside a filesystem is put under the filesystem's first whole mount; a bind
    /// mount of part of it, a path with another gap or without the leading gap are not.
    #[test]
    fn a_path_inside_its_filesystem_is_named_by_its_whole_mount() {
        let mounts = parse_mountinfo(
            "20 1 254:1 /sub /bind rw - ext4 /dev/vdb rw\n\
             21 1 254:1 / /var/lib/containerd rw - ext4 /dev/vdb rw\n\
             22 1 254:1 / /again rw - ext4 /dev/vdb rw\n\
             23 1 254:0 / / rw - ext4 /dev/vda rw\n",
        );
        let at = |dev: Dev, path: &str| mounted_path(dev, path.as_bytes(), &mounts);
        assert_eq!(
            at(Dev::new(254, 1), "…/blobs/x"),
            Some(b"/var/lib/containerd/blobs/x".to_vec())
        );
        assert_eq!(at(Dev::new(254, 0), "…/srv/x"), Some(b"/srv/x".to_vec()));
        assert_eq!(at(Dev::new(254, 2), "…/x"), None);
        assert_eq!(at(Dev::new(254, 1), "…/a/…/x"), None);
        assert_eq!(at(Dev::new(254, 1), "/x"), None);
        assert_eq!(at(Dev::new(254, 1), "……/x"), None);
    }

    /// A thread's events share one description until the process table changes; an exec
    /// gives the next event the new program.
    #[test]
    fn process_description_is_shared_until_the_table_changes() {
        let dir = std::env::temp_dir().join(format!("ctrwatch-enrich-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let roots = RootSet::resolve(std::slice::from_ref(&PathBuf::from(&dir)));
        let root = roots.kernel_prefixes().into_iter().next().expect("root");
        let mut e = Enricher::new(roots, ProcessTable::detached(Duration::from_secs(60)));
        e.on_record(exec(4000, "sh", "/bin/sh", "sh -c rm"));
        let first = event(&mut e, unlink(&root, task(4000, 4000, "sh"), "a"));
        let second = event(&mut e, unlink(&root, task(4000, 4000, "sh"), "b"));
        assert!(Arc::ptr_eq(&first.process, &second.process));
        assert_eq!(first.process.exe.as_deref(), Some("/bin/sh"));
        // Another thread of the process: its own description (its tid), the same program.
        let other = event(&mut e, unlink(&root, task(4000, 4001, "sh"), "c"));
        assert!(!Arc::ptr_eq(&first.process, &other.process));
        assert_eq!(
            (other.process.tid, other.process.exe.as_deref()),
            (4001, Some("/bin/sh"))
        );
        // The thread renamed itself (comm): rebuilt.
        let renamed = event(&mut e, unlink(&root, task(4000, 4000, "worker"), "d"));
        assert_eq!(renamed.process.comm, "worker");
        // exec: the table changed, the next event names the new program.
        e.on_record(exec(4000, "rm", "/usr/bin/rm", "rm -f e"));
        let after = event(&mut e, unlink(&root, task(4000, 4000, "rm"), "e"));
        assert_eq!(after.process.exe.as_deref(), Some("/usr/bin/rm"));
        assert_eq!(after.process.cmdline, ["rm", "-f", "e"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Every number of the kernel's record lands typed in the event: the op (opens refined),
    /// the result, the device, mode, flags, notes, times in ns, the xattr's bytes.
    #[test]
    fn records_become_typed_events() {
        let dir =
            std::env::temp_dir().join(format!("ctrwatch-enrich-typed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let roots = RootSet::resolve(std::slice::from_ref(&PathBuf::from(&dir)));
        let mut root = roots.kernel_prefixes().into_iter().next().expect("root");
        if root.ends_with(b"/") {
            root.pop();
        }
        let mut e = Enricher::new(roots, ProcessTable::detached(Duration::from_secs(60)));
        e.clock = Clock::with_offset(1_000_000);
        let at = |name: &str| [&root[..], b"/", name.as_bytes()].concat();
        let t = task(4100, 4100, "tar");

        // An open that created the file, with O_CREAT|O_TRUNC|O_WRONLY.
        let mut open = file(op::OPEN_WRITE, t, at("new"));
        open.fixed.sys_flags = 0o1101;
        open.fixed.f_mode = FMODE_CREATED;
        open.fixed.mode = 0o100644;
        open.fixed.result = 3;
        open.fixed.dev = (254 << 20) | 1;
        open.fixed.ino = 12;
        let v = event(&mut e, Record::File(open.clone()));
        assert_eq!((v.op, v.result), (Op::Create, OpResult::Ok));
        assert_eq!(
            v.details.open_flags,
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE
        );
        assert_eq!(v.details.mode, Some(Mode(0o644)));
        assert_eq!((v.dev, v.inode), (Some(Dev::new(254, 1)), Some(12)));
        assert_eq!((v.time_ns, v.mono_ns), (1_000_002, 2));
        // The same open of an existing file truncates it; failing, it has the errno.
        open.fixed.f_mode = 0;
        assert_eq!(event(&mut e, Record::File(open.clone())).op, Op::Truncate);
        open.fixed.sys_flags = 0o1;
        open.fixed.result = -i64::from(libc::EACCES);
        let v = event(&mut e, Record::File(open));
        assert_eq!(
            (v.op, v.result),
            (Op::OpenWrite, OpResult::Err(libc::EACCES))
        );
        assert_eq!(v.details.mode, None);

        // A file the kernel created itself (vfs_create), with the mode it was asked for.
        let mut create = file(op::CREATE, t, at("upper-new"));
        create.fixed.mode = 0o100644;
        create.fixed.flags = FLAG_KERNEL_INTERNAL;
        let v = event(&mut e, Record::File(create));
        assert_eq!((v.op, v.details.mode), (Op::Create, Some(Mode(0o644))));
        // A whiteout.
        let mut mknod = file(op::MKNOD, t, at("wh"));
        mknod.fixed.mode = 0o020000;
        let v = event(&mut e, Record::File(mknod));
        assert_eq!(v.details.rdev, Some(Dev::new(0, 0)));
        assert_eq!(v.details.whiteout, Some(true));
        // An opaque marker, its value as given.
        let mut opaque = file(op::SETXATTR, t, at("dir"));
        opaque.xattr_name = b"trusted.overlay.opaque".to_vec();
        opaque.xattr_value = b"y".to_vec();
        opaque.fixed.size = 1;
        let v = event(&mut e, Record::File(opaque));
        let x = v.details.xattr.as_ref().expect("xattr");
        assert!(x.is_opaque_marker());
        assert_eq!(v.details.size, Some(1));
        // A rename that replaced its target.
        let mut rename = file(op::RENAME, t, at("a"));
        rename.path2 = at("b");
        rename.fixed.flags = FLAG_REPLACED;
        rename.fixed.replaced_ino = 99;
        rename.fixed.replaced_dev = (8 << 20) | 3;
        let v = event(&mut e, Record::File(rename));
        assert_eq!(
            v.new_path.as_ref().map(|p| p.as_bytes()),
            Some(&at("b")[..])
        );
        assert_eq!(
            v.details.overwritten,
            Some(Overwritten {
                inode: 99,
                dev: Dev::new(8, 3)
            })
        );
        // chown of the group only; a symlink's target kept as given.
        let mut chown = file(op::CHOWN, t, at("c"));
        chown.fixed.gid_arg = 5;
        let v = event(&mut e, Record::File(chown));
        assert_eq!((v.details.owner_uid, v.details.owner_gid), (None, Some(5)));
        let mut link = file(op::SYMLINK, t, at("l"));
        link.path2 = b"../../x".to_vec();
        let v = event(&mut e, Record::File(link));
        assert_eq!(
            v.new_path.as_ref().map(|p| p.as_bytes()),
            Some(&b"../../x"[..])
        );
        // A modify: its result is the bytes written, never an errno; the first write's time.
        let mut modify = file(op::MODIFY, t, at("m"));
        modify.fixed.result = 10;
        modify.fixed.bytes = 10;
        modify.fixed.writes = 2;
        modify.fixed.first_ns = 1;
        let v = event(&mut e, Record::File(modify));
        assert_eq!((v.op, v.result), (Op::Modify, OpResult::Ok));
        assert_eq!(v.details.first_write_ns, Some(1_000_001));
        // The internal write binding and unknown op numbers are no events.
        assert!(matches!(
            e.on_record(Record::File(file(op::WRITE_BIND, t, at("m")))),
            Outcome::Nothing
        ));
        assert!(matches!(
            e.on_record(Record::File(file(200, t, at("m")))),
            Outcome::Nothing
        ));
        for n in 0..=op::LAST {
            assert_eq!(kernel_op(n).is_some(), n != 0 && n != op::WRITE_BIND, "{n}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
