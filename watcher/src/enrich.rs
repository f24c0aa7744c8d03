//! From kernel records to enriched events: keeps the process table current from lifecycle
//! records, names files canonically, and attaches the acting process, its parent chain, unit
//! and container to every file operation.

use std::collections::HashMap;
use std::sync::Arc;

use watcher_common::{
    FLAG_BY_FD, FLAG_NOT_CLOSED, FLAG_PATH_TRUNCATED, FLAG_PATH2_TRUNCATED, FLAG_REPLACED,
    FLAG_VALUE_TRUNCATED, PATH_GAP, TaskInfo, WriteAgg, WriteKey, op,
};

use crate::{
    containerd::attribution::Attributor,
    event::{
        AncestorView, Clock, Details, FileEvent, NOTE_NEW_PATH_TRUNCATED, NOTE_PATH_TRUNCATED,
        Overwritten, PathText, ProcessView, XattrView, errno_name, hex, lossless_text,
    },
    kernel::records::{FileOp, Record},
    process::{ExecEvent, ProcessTable, Task},
    roots::RootSet,
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
    Event(Box<FileEvent>),
    /// A process exited: its unflushed write aggregates must be collected from the kernel.
    ProcessExited(u32),
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

pub struct Enricher {
    pub roots: RootSet,
    pub processes: ProcessTable,
    pub clock: Clock,
    /// Adds the `containerd` object to events under containerd roots.
    pub attributor: Option<Attributor>,
    bindings: HashMap<(u32, i32), Binding>,
    /// The process description last built for each thread. Building one walks the parent
    /// chain and copies every string in it; events of a thread share one `Arc` instead, until
    /// the process table changes (an entry added, replaced or reaped: exec, fork, a pid read
    /// from /proc) or the kernel reports the thread differently (comm, ids, cgroup).
    views: HashMap<u32, CachedView>,
}

struct CachedView {
    generation: u64,
    task: TaskInfo,
    view: Arc<ProcessView>,
}

impl Enricher {
    pub fn new(roots: RootSet, processes: ProcessTable) -> Self {
        Enricher {
            roots,
            processes,
            clock: Clock::now(),
            attributor: None,
            bindings: HashMap::new(),
            views: HashMap::new(),
        }
    }

    /// Attributes events under containerd roots with `attributor`.
    pub fn with_attributor(mut self, attributor: Attributor) -> Self {
        self.attributor = Some(attributor);
        self
    }

    pub fn on_record(&mut self, record: Record) -> Outcome {
        match record {
            Record::Exec(exec) => {
                self.processes.on_exec(&ExecEvent {
                    task: Task::from(&exec.task),
                    exe: &exec.exe,
                    args: &exec.args,
                    ts_ns: exec.ts_ns,
                });
                Outcome::Nothing
            }
            Record::Fork {
                ts_ns,
                task,
                child_pid,
            } => {
                self.processes.on_fork(&Task::from(&task), child_pid, ts_ns);
                Outcome::Nothing
            }
            Record::Exit {
                ts_ns,
                task,
                exit_code,
            } => {
                self.processes.on_exit(&Task::from(&task), exit_code, ts_ns);
                Outcome::ProcessExited(task.pid)
            }
            Record::File(file) => self.on_file(file),
        }
    }

    fn on_file(&mut self, mut f: FileOp) -> Outcome {
        let key = (f.task.pid, f.fd);
        if f.op == op::WRITE_BIND {
            self.bindings.insert(
                key,
                Binding {
                    path: f.path,
                    path_truncated: f.flags & FLAG_PATH_TRUNCATED != 0,
                    comm: f.task.comm,
                },
            );
            return Outcome::Nothing;
        }
        if f.op == op::MODIFY {
            let bound = self.bindings.remove(&key);
            if let (true, Some(b)) = (f.path.is_empty(), bound) {
                f.path = b.path;
                if b.path_truncated {
                    f.flags |= FLAG_PATH_TRUNCATED;
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
            let task = watcher_common::TaskInfo {
                pid: key.tgid,
                tid: agg.tid,
                comm: binding.comm,
                ..Default::default()
            };
            let f = FileOp {
                op: op::MODIFY,
                ts_ns: agg.last_ns,
                task,
                result: agg.bytes as i64,
                ino: agg.ino,
                dev: agg.dev,
                mode: 0,
                sys_flags: 0,
                flags: FLAG_BY_FD
                    | FLAG_NOT_CLOSED
                    | if binding.path_truncated {
                        FLAG_PATH_TRUNCATED
                    } else {
                        0
                    },
                f_mode: 0,
                rdev: 0,
                size: agg.size,
                offset: 0,
                bytes: agg.bytes,
                writes: agg.writes,
                first_ns: agg.first_ns,
                replaced_ino: 0,
                replaced_dev: 0,
                uid_arg: u32::MAX,
                gid_arg: u32::MAX,
                fd: key.fd,
                path: binding.path,
                path2: Vec::new(),
                xattr_name: Vec::new(),
                xattr_value: Vec::new(),
            };
            if let Some(ev) = self.file_event(f) {
                out.push(ev);
            }
        }
        out
    }

    fn file_event(&mut self, f: FileOp) -> Option<FileEvent> {
        let path = self.canonical_path(&f.path, f.flags & FLAG_PATH_TRUNCATED != 0);
        let new_path = (!f.path2.is_empty() && f.op != op::SYMLINK)
            .then(|| self.canonical_path(&f.path2, f.flags & FLAG_PATH2_TRUNCATED != 0));
        // The kernel's prefix test is lexical; `/root/../elsewhere` passes it. Drop what is
        // not under a root once `..` is folded.
        let inside =
            self.roots.contains(&path) || new_path.as_ref().is_some_and(|p| self.roots.contains(p));
        if !inside {
            return None;
        }
        let (result, errno) = if f.result < 0 && f.op != op::MODIFY {
            let errno = (-f.result) as i32;
            (errno_name(errno), Some(errno))
        } else {
            ("ok".to_string(), None)
        };
        let mut details = Details::default();
        let name = op_name(&f, &mut details);
        if !PathText(path.clone()).is_utf8() {
            details.path_hex = Some(hex(&path));
        }
        let new_path_text = if f.op == op::SYMLINK {
            // The symlink's target, as given (not a path we resolve).
            (!f.path2.is_empty()).then(|| PathText(f.path2.clone()))
        } else {
            new_path.map(PathText)
        };
        details.new_path_hex = new_path_text
            .as_ref()
            .filter(|p| !p.is_utf8())
            .map(|p| hex(&p.0));
        self.fill_details(&f, &mut details);
        let process = self.process_view(&f);
        if let Some(attributor) = self.attributor.as_mut() {
            let new_path = new_path_text
                .as_ref()
                .filter(|_| f.op != op::SYMLINK)
                .map(|p| p.0.as_slice());
            details.containerd = attributor
                .attribute(&path, new_path, &process, &mut self.processes)
                .map(Box::new);
        }
        Some(FileEvent {
            time: self.clock.rfc3339(f.ts_ns),
            mono_ns: f.ts_ns,
            op: name,
            path: PathText(path),
            new_path: new_path_text,
            result,
            errno,
            inode: (f.ino != 0).then_some(f.ino),
            dev: (f.dev != 0).then(|| dev_text(f.dev)),
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

    fn fill_details(&self, f: &FileOp, d: &mut Details) {
        let has_mode = matches!(f.op, op::MKDIR | op::MKNOD | op::CHMOD)
            || (f.op == op::OPEN_WRITE && f.sys_flags & O_CREAT != 0);
        if has_mode {
            d.mode = Some(format!("{:04o}", f.mode & 0o7777));
        }
        match f.op {
            op::TRUNCATE | op::FALLOCATE => d.size = Some(f.size),
            op::OPEN_WRITE => d.size = Some(f.size),
            _ => {}
        }
        if f.op == op::FALLOCATE {
            d.offset = Some(f.offset);
        }
        if f.op == op::MODIFY {
            d.bytes = Some(f.bytes);
            d.writes = Some(f.writes);
            d.size = Some(f.size);
            d.first_write = Some(self.clock.rfc3339(f.first_ns));
        }
        if f.op == op::CHOWN {
            d.owner_uid = (f.uid_arg != u32::MAX).then_some(f.uid_arg);
            d.owner_gid = (f.gid_arg != u32::MAX).then_some(f.gid_arg);
        }
        if f.op == op::MKNOD {
            // Userspace dev_t encoding (glibc makedev).
            let major = ((f.rdev >> 8) & 0xfff) | ((f.rdev >> 12) & !0xfff);
            let minor = (f.rdev & 0xff) | ((f.rdev >> 12) & !0xff);
            d.rdev = Some(format!("{major}:{minor}"));
            d.whiteout = Some(f.mode & S_IFMT == S_IFCHR && f.rdev == 0);
        }
        if matches!(f.op, op::SETXATTR | op::REMOVEXATTR) {
            let value = (!f.xattr_value.is_empty()).then_some(&f.xattr_value);
            d.xattr = Some(XattrView {
                name: lossless_text(&f.xattr_name),
                value: value.map(|v| {
                    let v = v.strip_suffix(&[0]).unwrap_or(v);
                    lossless_text(v)
                }),
                value_hex: value.map(|v| hex(v)),
            });
            if f.op == op::SETXATTR {
                d.size = Some(f.size);
            }
        }
        if f.op == op::RENAME && f.flags & FLAG_REPLACED != 0 && f.replaced_ino != 0 {
            d.overwritten = Some(Overwritten {
                inode: f.replaced_ino,
                dev: dev_text(f.replaced_dev),
            });
        }
        if f.flags & FLAG_BY_FD != 0 {
            d.notes.push("by_fd");
        }
        if f.flags & FLAG_PATH_TRUNCATED != 0 {
            d.notes.push(NOTE_PATH_TRUNCATED);
        }
        if f.flags & FLAG_PATH2_TRUNCATED != 0 {
            d.notes.push(NOTE_NEW_PATH_TRUNCATED);
        }
        if f.flags & FLAG_VALUE_TRUNCATED != 0 {
            d.notes.push("value_truncated");
        }
        if f.flags & FLAG_NOT_CLOSED != 0 {
            d.notes.push("not_closed");
        }
    }

    /// The acting process's description: the thread's previous one while it still holds.
    fn process_view(&mut self, f: &FileOp) -> Arc<ProcessView> {
        if let Some(c) = self.views.get(&f.task.tid)
            && c.generation == self.processes.generation()
            && c.task == f.task
        {
            return c.view.clone();
        }
        let view = Arc::new(self.build_process_view(f));
        if self.views.len() >= VIEW_CACHE_MAX {
            self.views.clear();
        }
        // After building: reading /proc for an unknown pid adds an entry.
        let cached = CachedView {
            generation: self.processes.generation(),
            task: f.task,
            view: view.clone(),
        };
        self.views.insert(f.task.tid, cached);
        view
    }

    fn build_process_view(&mut self, f: &FileOp) -> ProcessView {
        let t = &f.task;
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

/// "major:minor" of a kernel-internal dev_t (`MAJOR << 20 | MINOR`), as `stat` shows it.
fn dev_text(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xfffff)
}

/// The op's name, refined for opens (create / truncate / open_write) from the flags.
fn op_name(f: &FileOp, d: &mut Details) -> &'static str {
    match f.op {
        op::OPEN_WRITE => {
            let flags = f.sys_flags;
            if flags & O_ACCMODE != 0 {
                d.open_flags.push("write");
            }
            if flags & O_CREAT != 0 {
                d.open_flags.push("create");
            }
            if flags & O_TRUNC != 0 {
                d.open_flags.push("truncate");
            }
            if flags & O_APPEND != 0 {
                d.open_flags.push("append");
            }
            if f.result >= 0 && f.f_mode & FMODE_CREATED != 0 {
                "create"
            } else if flags & O_TRUNC != 0 {
                "truncate"
            } else {
                "open_write"
            }
        }
        other => static_op_name(other),
    }
}

/// Stable names of the ops, as they appear in JSON `op`.
pub fn static_op_name(op: u16) -> &'static str {
    match op {
        op::OPEN_WRITE => "open_write",
        op::CREATE => "create",
        op::TRUNCATE => "truncate",
        op::MODIFY => "modify",
        op::FALLOCATE => "fallocate",
        op::UNLINK => "unlink",
        op::RMDIR => "rmdir",
        op::RENAME => "rename",
        op::LINK => "link",
        op::SYMLINK => "symlink",
        op::MKNOD => "mknod",
        op::MKDIR => "mkdir",
        op::SETXATTR => "setxattr",
        op::REMOVEXATTR => "removexattr",
        op::CHMOD => "chmod",
        op::CHOWN => "chown",
        op::WRITE_BIND => "write_bind",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::kernel::records::Exec;

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
        Record::Exec(Exec {
            ts_ns: 1,
            task: task(pid, pid, comm),
            old_pid: pid,
            flags: 0,
            exe: exe.as_bytes().to_vec(),
            args: args.replace(' ', "\0").into_bytes(),
        })
    }

    fn unlink(root: &[u8], t: TaskInfo, name: &str) -> Record {
        let mut path = root.to_vec();
        path.extend_from_slice(b"/");
        path.extend_from_slice(name.as_bytes());
        Record::File(FileOp {
            op: op::UNLINK,
            ts_ns: 2,
            task: t,
            path,
            ..FileOp::default()
        })
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
        let file = |path: Vec<u8>, flags: u32| {
            Record::File(FileOp {
                op: op::UNLINK,
                ts_ns: 2,
                task: task(4000, 4000, "rm"),
                flags,
                path,
                ..FileOp::default()
            })
        };
        let v = event(&mut e, file(cut.clone(), FLAG_PATH_TRUNCATED));
        assert_eq!(v.path.0, cut);
        assert_eq!(v.details.notes, [NOTE_PATH_TRUNCATED]);
        // A complete path is folded as before.
        let mut whole = root.clone();
        whole.extend_from_slice(b"/a/b/../x");
        let v = event(&mut e, file(whole, 0));
        assert_eq!(v.path.0, [&root[..], b"/a/x"].concat());

        // Bound while truncated, reported at exit without a path of its own.
        let mut bound = root.clone();
        bound.extend_from_slice("/a/…/f".as_bytes());
        let bind = FileOp {
            op: op::WRITE_BIND,
            task: task(4000, 4000, "sh"),
            fd: 1,
            flags: FLAG_BY_FD | FLAG_PATH_TRUNCATED,
            path: bound.clone(),
            ..FileOp::default()
        };
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
        assert!(
            out[0].details.notes.contains(&NOTE_PATH_TRUNCATED),
            "{:?}",
            out[0].details.notes
        );
        let _ = std::fs::remove_dir_all(&dir);
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
}
