//! Record layouts and constants shared by ctrwatch's eBPF programs (`watcher-ebpf`) and its
//! daemon (`watcher`). Everything that crosses the kernel/user boundary is defined here, once,
//! as `#[repr(C)]` plain data, so that both sides agree on every byte.
//!
//! A record in the ring buffer starts with a [`RecordHeader`]; its `kind` says which of
//! [`FileRecord`], [`ExecRecord`], [`ForkRecord`] or [`ExitRecord`] follows. File and exec records
//! end in a variable-length `data` tail after their fixed part ([`FileRecordFixed`],
//! [`ExecRecordFixed`]); only the used part of it is sent.
//!
//! Userspace (feature `user`) decodes each record right beside its layout: [`Record::decode`]
//! gives a [`KernelFileOp`] or [`KernelExec`] (the fixed part as the kernel laid it out, the
//! tail split into owned parts) or the fork/exit record itself. The daemon turns a
//! `KernelFileOp` into its one event type (`ctrwatch_event::FileEvent`).
// The eBPF programs build it without std; its own tests use std.
#![cfg_attr(not(test), no_std)]

#[cfg(feature = "user")]
extern crate alloc;
#[cfg(feature = "user")]
use alloc::vec::Vec;

/// Bytes of a path argument a syscall accepts (Linux's PATH_MAX, including the terminating
/// NUL): what is read of a path or string given by a process.
pub const PATH_CAP: usize = 4096;
/// Bytes kept of a path the kernel side builds (a directory's path from its dentries, plus a
/// relative argument). A directory can be deeper than PATH_MAX (reached with relative paths),
/// so this is twice as much; a path that does not fit is cut and marked (see
/// [`FLAG_PATH_TRUNCATED`]). A power of two: offsets are masked with `PATH_BUF_CAP - 1`.
pub const PATH_BUF_CAP: usize = 2 * PATH_CAP;
/// Written where part of a path could not be built (U+2026 `…`, in UTF-8). A path that could
/// not be built completely is never left looking like a complete one: see
/// [`FLAG_PATH_TRUNCATED`].
pub const PATH_GAP: [u8; 3] = [0xE2, 0x80, 0xA6];
/// Size of the variable tail of a file record: path, second path (rename/link/symlink) or
/// xattr name and value, packed one after the other. Offsets inside it are masked to
/// `2 * PATH_BUF_CAP - 1` so that the verifier can bound every write; the xattr value may
/// start at the last of them.
pub const DATA_CAP: usize = 2 * PATH_BUF_CAP + XATTR_NAME_CAP + 2 * XATTR_VALUE_CAP;
/// Bytes kept of an extended attribute name (XATTR_NAME_MAX is 255, plus NUL).
pub const XATTR_NAME_CAP: usize = 256;
/// Bytes kept of an extended attribute value. Values are only captured for the overlay
/// namespaces (`trusted.overlay.*`, `user.overlay.*`), whose values are short.
pub const XATTR_VALUE_CAP: usize = 256;
/// Bytes kept of a command line (NUL-separated argv).
pub const ARGS_CAP: usize = 2048;
/// Size of the exec record's tail: exe path then command line (read with a length masked to
/// `2 * ARGS_CAP - 1`).
pub const EXEC_DATA_CAP: usize = PATH_BUF_CAP + 2 * ARGS_CAP;
/// Path components walked from a dentry up to the root (mount crossings count too). When the
/// walk does not reach the root, the top of the path is unknown: the path then starts with
/// [`PATH_GAP`] instead of `/` (so it cannot pass for an absolute path, nor match a root) and
/// is flagged with [`FLAG_PATH_TRUNCATED`].
pub const MAX_PATH_DEPTH: u32 = 96;
/// Bytes of a path compared by the in-kernel root filter (the LPM trie key size).
pub const ROOT_KEY_CAP: usize = 256;
/// How many watched roots (including aliases such as symlinks and bind mounts) the kernel holds.
pub const MAX_ROOTS: u32 = 256;

/// `RecordHeader::kind` values.
pub mod kind {
    /// A file operation (`FileRecord`).
    pub const FILE: u16 = 1;
    /// An exec (`ExecRecord`).
    pub const EXEC: u16 = 2;
    /// A fork (`ForkRecord`).
    pub const FORK: u16 = 3;
    /// A process exit (`ExitRecord`).
    pub const EXIT: u16 = 4;
}

/// File operations (`RecordHeader::op` of a file record). These numbers are also the loss
/// counter slots, so keep them below [`LOSS_SLOTS`].
#[allow(
    missing_docs,
    reason = "each constant is named for the syscall family it numbers; the ones that are not are documented"
)]
pub mod op {
    /// An existing file opened for writing (no truncation, not created).
    pub const OPEN_WRITE: u16 = 1;
    /// A file created by open/creat (the kernel marked the open FMODE_CREATED).
    pub const CREATE: u16 = 2;
    /// truncate/ftruncate, or an open with O_TRUNC of an existing file.
    pub const TRUNCATE: u16 = 3;
    /// Aggregated writes of one process through one open file, sent when it is closed.
    pub const MODIFY: u16 = 4;
    pub const FALLOCATE: u16 = 5;
    pub const UNLINK: u16 = 6;
    pub const RMDIR: u16 = 7;
    pub const RENAME: u16 = 8;
    pub const LINK: u16 = 9;
    pub const SYMLINK: u16 = 10;
    pub const MKNOD: u16 = 11;
    pub const MKDIR: u16 = 12;
    pub const SETXATTR: u16 = 13;
    pub const REMOVEXATTR: u16 = 14;
    pub const CHMOD: u16 = 15;
    pub const CHOWN: u16 = 16;
    /// Internal: first write of a process to a watched fd; binds (tgid, fd) to a path so that
    /// the aggregate can be reported even when the process exits without closing.
    pub const WRITE_BIND: u16 = 17;
    /// The highest op number.
    pub const LAST: u16 = WRITE_BIND;
}

/// The eBPF programs attached to more than one syscall tracepoint, with the tracepoints
/// (`syscalls:NAME`) each is attached to. A program is verified once however often it is
/// attached, and verification is nearly all of a fresh start: the syscalls of one family share
/// their exit program (the enter programs store the arguments in the family's layout), and
/// syscalls with the same arguments their enter program. Every other tracepoint program is
/// attached to the tracepoint of its own name. The daemon attaches each to the tracepoints this
/// kernel has, and names each link (and its pin) after its tracepoint.
pub const SHARED_PROGRAMS: &[(&str, &[&str])] = &[
    (
        "exit_open",
        &["sys_exit_open", "sys_exit_openat", "sys_exit_creat"],
    ),
    (
        "exit_unlink",
        &["sys_exit_unlink", "sys_exit_unlinkat", "sys_exit_rmdir"],
    ),
    (
        "exit_rename",
        &["sys_exit_rename", "sys_exit_renameat", "sys_exit_renameat2"],
    ),
    ("exit_link", &["sys_exit_link", "sys_exit_linkat"]),
    ("exit_symlink", &["sys_exit_symlink", "sys_exit_symlinkat"]),
    ("exit_mknod", &["sys_exit_mknod", "sys_exit_mknodat"]),
    ("exit_mkdir", &["sys_exit_mkdir", "sys_exit_mkdirat"]),
    (
        "enter_setxattr",
        &["sys_enter_setxattr", "sys_enter_lsetxattr"],
    ),
    (
        "exit_setxattr",
        &["sys_exit_setxattr", "sys_exit_lsetxattr"],
    ),
    (
        "enter_removexattr",
        &["sys_enter_removexattr", "sys_enter_lremovexattr"],
    ),
    (
        "exit_removexattr",
        &[
            "sys_exit_removexattr",
            "sys_exit_lremovexattr",
            "sys_exit_removexattrat",
        ],
    ),
    (
        "exit_chmod",
        &["sys_exit_chmod", "sys_exit_fchmodat", "sys_exit_fchmodat2"],
    ),
    ("enter_chown", &["sys_enter_chown", "sys_enter_lchown"]),
    (
        "exit_chown",
        &["sys_exit_chown", "sys_exit_lchown", "sys_exit_fchownat"],
    ),
    (
        "enter_write",
        &[
            "sys_enter_write",
            "sys_enter_pwrite64",
            "sys_enter_writev",
            "sys_enter_pwritev",
            "sys_enter_pwritev2",
            "sys_enter_sendfile64",
        ],
    ),
    (
        "exit_write",
        &[
            "sys_exit_write",
            "sys_exit_pwrite64",
            "sys_exit_writev",
            "sys_exit_pwritev",
            "sys_exit_pwritev2",
            "sys_exit_copy_file_range",
            "sys_exit_sendfile64",
        ],
    ),
    ("enter_dup", &["sys_enter_dup2", "sys_enter_dup3"]),
];

/// The tracepoint programs reached only by `bpf_tail_call`, never attached to a hook: the
/// stages that walk paths (watcher-ebpf/src/stages.rs), verified once instead of inlined in
/// every file-operation program. A program's position here is its slot in the `STAGES`
/// program array, which the daemon fills before it attaches any hook.
pub const TAIL_CALLED_PROGRAMS: &[&str] = &[
    "enter_path",
    "enter_path2",
    "exit_path",
    "exit_path2",
    "write_path",
    "event_path",
];

/// The slot of `program` in the `STAGES` array, if it is one of [`TAIL_CALLED_PROGRAMS`].
pub fn tail_call_slot(program: &str) -> Option<u32> {
    TAIL_CALLED_PROGRAMS
        .iter()
        .position(|stage| *stage == program)
        .and_then(|slot| u32::try_from(slot).ok())
}

/// The syscall tracepoints the program `program` is attached to when it is shared (listed in
/// [`SHARED_PROGRAMS`]); `None`: it is attached to the tracepoint of its own name.
pub fn shared_tracepoints(program: &str) -> Option<&'static [&'static str]> {
    SHARED_PROGRAMS
        .iter()
        .find(|(shared, _)| *shared == program)
        .map(|(_, tracepoints)| *tracepoints)
}

/// Loss counter slots: file ops use their op number; process lifecycle uses these.
/// Exec records lost.
pub const LOSS_EXEC: u32 = 24;
/// Fork records lost.
pub const LOSS_FORK: u32 = 25;
/// Exit records lost.
pub const LOSS_EXIT: u32 = 26;
/// An operation whose path could not be followed to the top (deeper than
/// [`MAX_PATH_DEPTH`] components): whether it was under a root cannot be told, so it is not
/// reported, only counted here, and the history says so.
pub const LOSS_PATH_UNRESOLVED: u32 = 27;
/// Protect records lost ([`FLAG_DENIED`] / [`FLAG_WOULD_DENY`]): counted apart from the ops'
/// slots, so that a lost denial shows as one.
pub const LOSS_PROTECT: u32 = 28;
/// Loss counter slots in all (the size of the kernel's loss array).
pub const LOSS_SLOTS: u32 = 32;

/// `FileRecord::flags` bits set by the kernel side (the syscall's own flags are in `sys_flags`).
///
/// The path could not be built completely (longer than [`PATH_BUF_CAP`], deeper than
/// [`MAX_PATH_DEPTH`], or a name could not be read). What is missing is replaced by
/// [`PATH_GAP`]: `<prefix>/…/<name>` (the kernel's prefix of the path, then the file's own name
/// or the syscall's relative argument as given), or `…/<lower components>` when the top is
/// unknown. Such a path is not the path of the file and must never be matched as one.
pub const FLAG_PATH_TRUNCATED: u32 = 1;
/// The same for the second path (rename/link new path).
pub const FLAG_PATH2_TRUNCATED: u32 = 2;
/// The xattr value was longer than [`XATTR_VALUE_CAP`] and was cut.
pub const FLAG_VALUE_TRUNCATED: u32 = 4;
/// The operation was reached through a file descriptor (ftruncate, fsetxattr, fchmod...).
pub const FLAG_BY_FD: u32 = 8;
/// The record was sent at process exit / fd reuse rather than at close (modify aggregates).
pub const FLAG_NOT_CLOSED: u32 = 16;
/// Rename: the target name existed and its inode lost its last link in this rename (it was
/// overwritten, i.e. deleted); `replaced_ino`/`replaced_dev` name it. Set only where a
/// filesystem hook for the running filesystem is attached (see
/// watcher/src/kernel/capabilities.rs, `RENAME_TARGET_HOOKS`).
pub const FLAG_REPLACED: u32 = 32;
/// The change was made by the kernel itself, not by the acting task's own system call (an
/// overlayfs copy-up or opaque directory setting `trusted.overlay.*`), seen by an fentry hook
/// (watcher-ebpf/src/fentry.rs); the task is the one whose operation triggered it.
pub const FLAG_KERNEL_INTERNAL: u32 = 64;
/// Protect mode (issue 15, enforce) denied this operation (-EPERM), seen by a BPF LSM program
/// (watcher-ebpf/src/lsm.rs): the record is the denial itself, `result` is -EPERM; the
/// syscall's own record, if its tracepoints saw it, says the same call failed with EPERM.
pub const FLAG_DENIED: u32 = 128;
/// Protect mode (dry-run) would have denied this operation and let it through: `result` is 0;
/// the syscall's own record says how the call ended.
pub const FLAG_WOULD_DENY: u32 = 256;
/// A protect record's path is `PATH_GAP` then the object's complete path inside its own
/// filesystem (an inode hook: no mount to name it by; [`FLAG_PATH_TRUNCATED`] is set too):
/// userspace may put where that filesystem is mounted in front of it.
pub const FLAG_PATH_IN_FS: u32 = 512;

/// Common prefix of every ring buffer record.
#[allow(
    missing_docs,
    reason = "the fields are the record's layout, named for the kernel values they carry; the type's doc says what the record is"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: u16,
    pub op: u16,
    /// Number of bytes of this record actually sent (fixed part plus used tail).
    pub len: u32,
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) when the record was made.
    pub ts_ns: u64,
}

/// The acting task, as the kernel saw it.
#[allow(
    missing_docs,
    reason = "the fields are the record's layout, named for the kernel values they carry; the type's doc says what the record is"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskInfo {
    /// Thread-group id (what userspace calls the pid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread-group id of the real parent.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Inode number of the task's mount namespace.
    pub mnt_ns: u32,
    /// cgroup v2 id (bpf_get_current_cgroup_id).
    pub cgroup_id: u64,
    pub comm: [u8; 16],
}

/// One file operation under a watched root: the fixed part ([`FileRecordFixed`]), then the
/// tail `data`, which holds, packed: `path` (`path_len` bytes, no NUL), then `path2`
/// (`path2_len`; the new path of a rename, the new name of a link, the target of a symlink),
/// then the xattr name (`name_len`) and value (`value_len`). Only the used part of the tail is
/// sent.
#[allow(
    missing_docs,
    reason = "the fields are the record's layout, named for the kernel values they carry; the type's doc says what the record is"
)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileRecord {
    pub fixed: FileRecordFixed,
    pub data: [u8; DATA_CAP],
}

/// The fixed part of a [`FileRecord`]: everything but the tail.
#[allow(
    missing_docs,
    reason = "the fields are the record's layout, named for the kernel values they carry; the type's doc says what the record is"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileRecordFixed {
    pub hdr: RecordHeader,
    pub task: TaskInfo,
    /// Syscall return value: >= 0 success, negative errno on failure.
    pub result: i64,
    pub ino: u64,
    /// Kernel-internal dev_t of the inode's super block (major << 20 | minor).
    pub dev: u32,
    /// For create/mkdir/mknod/chmod: the requested mode; otherwise the inode's i_mode if known.
    pub mode: u32,
    /// The syscall's own flags argument (open flags, renameat2 flags, AT_* flags, xattr flags).
    pub sys_flags: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// `file->f_mode` of the file an open returned (userspace reads FMODE_CREATED from it).
    pub f_mode: u32,
    /// mknod device number (userspace encoding), or the fd of an fd-based operation.
    pub rdev: u32,
    /// truncate length, fallocate length, xattr value size, or the file size after the last
    /// write of a modify aggregate.
    pub size: u64,
    /// fallocate offset / fallocate mode in the low bits of `sys_flags`.
    pub offset: u64,
    /// Modify aggregate: bytes written and number of write calls.
    pub bytes: u64,
    pub writes: u64,
    /// Modify aggregate: time of the first write (CLOCK_MONOTONIC ns).
    pub first_ns: u64,
    /// Rename with [`FLAG_REPLACED`]: inode number and dev (as `dev`) of the overwritten
    /// target.
    pub replaced_ino: u64,
    pub replaced_dev: u32,
    /// Explicit padding: no hidden padding in the fixed part, and `data` stays 8-byte aligned.
    pub _reserved: u32,
    /// chown arguments (u32::MAX = unchanged).
    pub uid_arg: u32,
    pub gid_arg: u32,
    pub fd: i32,
    pub path_len: u16,
    pub path2_len: u16,
    pub name_len: u16,
    pub value_len: u16,
    /// The in-kernel root filter reads `{lpm_prefixlen, data[..ROOT_KEY_CAP]}` as its LPM trie
    /// key, so this field must stay last, right before [`FileRecord::data`].
    pub lpm_prefixlen: u32,
}

/// Fixed part of a [`FileRecord`], i.e. where `data` starts.
pub const FILE_RECORD_FIXED: usize = core::mem::offset_of!(FileRecord, data);
// `lpm_prefixlen` is followed by `data` without padding (the LPM key), and the fixed part is
// read from the front of a record as a `FileRecordFixed`.
const _: () = assert!(FILE_RECORD_FIXED == core::mem::size_of::<FileRecordFixed>());
const _: () =
    assert!(core::mem::offset_of!(FileRecordFixed, lpm_prefixlen) + 4 == FILE_RECORD_FIXED);

/// A file record as userspace reads it: the fixed part as the kernel laid it out, and its tail
/// split into owned parts.
#[allow(
    missing_docs,
    reason = "the fields are the decoded record's parts, named for the kernel values they carry; the type's doc says what it is"
)]
#[cfg(feature = "user")]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelFileOp {
    pub fixed: FileRecordFixed,
    pub path: Vec<u8>,
    /// rename/link: the new path; symlink: the target as given.
    pub path2: Vec<u8>,
    pub xattr_name: Vec<u8>,
    pub xattr_value: Vec<u8>,
}

#[cfg(feature = "user")]
impl FileRecordFixed {
    /// A record's fixed part as the kernel side starts it (`begin_record`): nothing known yet,
    /// chown arguments "unchanged", no fd.
    pub fn new(op: u16, ts_ns: u64, task: TaskInfo) -> FileRecordFixed {
        FileRecordFixed {
            hdr: RecordHeader {
                kind: kind::FILE,
                op,
                len: 0,
                ts_ns,
            },
            task,
            uid_arg: u32::MAX,
            gid_arg: u32::MAX,
            fd: -1,
            ..FileRecordFixed::default()
        }
    }
}

#[cfg(feature = "user")]
impl KernelFileOp {
    /// Decodes a file record: its fixed part, then the tail parts its lengths name.
    pub fn decode(bytes: &[u8]) -> Result<KernelFileOp, DecodeError> {
        let fixed: FileRecordFixed = read_prefix(bytes)?;
        let [path, path2, name, value] = split_tail(
            &bytes[FILE_RECORD_FIXED..],
            [
                usize::from(fixed.path_len),
                usize::from(fixed.path2_len),
                usize::from(fixed.name_len),
                usize::from(fixed.value_len),
            ],
        )?;
        Ok(KernelFileOp {
            fixed,
            path: path.to_vec(),
            path2: path2.to_vec(),
            xattr_name: name.to_vec(),
            xattr_value: value.to_vec(),
        })
    }

    /// The `modify` of writes through a file that was not closed (its process exited, or the
    /// daemon stops): what the kernel side sends at a close, built from the write aggregate
    /// taken from its map, with the path the aggregate was bound to (`WRITE_BIND`) and the
    /// comm of the process that bound it. Flagged [`FLAG_BY_FD`] and [`FLAG_NOT_CLOSED`], and
    /// [`FLAG_PATH_TRUNCATED`] when the bound path was.
    pub fn unclosed_modify(
        key: &WriteKey,
        agg: &WriteAgg,
        comm: [u8; 16],
        path: Vec<u8>,
        path_truncated: bool,
    ) -> KernelFileOp {
        let task = TaskInfo {
            pid: key.tgid,
            tid: agg.tid,
            comm,
            ..TaskInfo::default()
        };
        let mut fixed = FileRecordFixed::new(op::MODIFY, agg.last_ns, task);
        fixed.result = i64::try_from(agg.bytes).unwrap_or(i64::MAX);
        fixed.ino = agg.ino;
        fixed.dev = agg.dev;
        fixed.size = agg.size;
        fixed.bytes = agg.bytes;
        fixed.writes = agg.writes;
        fixed.first_ns = agg.first_ns;
        fixed.fd = key.fd;
        fixed.flags = FLAG_BY_FD | FLAG_NOT_CLOSED;
        if path_truncated {
            fixed.flags |= FLAG_PATH_TRUNCATED;
        }
        KernelFileOp {
            fixed,
            path,
            ..KernelFileOp::default()
        }
    }
}

/// A process image replaced (execve/execveat succeeded): the fixed part, then the tail `data`:
/// the `exe` path (`exe_len`), then the NUL-separated argv (`args_len`).
#[allow(
    missing_docs,
    reason = "the fields are the record's layout, named for the kernel values they carry; the type's doc says what the record is"
)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecRecord {
    pub fixed: ExecRecordFixed,
    pub data: [u8; EXEC_DATA_CAP],
}

/// The fixed part of an [`ExecRecord`].
#[allow(
    missing_docs,
    reason = "the fields are the record's layout, named for the kernel values they carry; the type's doc says what the record is"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecRecordFixed {
    pub hdr: RecordHeader,
    pub task: TaskInfo,
    /// The pid before exec (differs when a non-leader thread exec'd).
    pub old_pid: u32,
    pub exe_len: u16,
    pub args_len: u16,
    /// FLAG_PATH_TRUNCATED when the exe path was cut; 2 when the args were cut.
    pub flags: u32,
    pub lpm_prefixlen: u32,
}

/// Bytes of an [`ExecRecord`] before its data (the part the kernel always sends).
pub const EXEC_RECORD_FIXED: usize = core::mem::offset_of!(ExecRecord, data);
const _: () = assert!(EXEC_RECORD_FIXED == core::mem::size_of::<ExecRecordFixed>());
/// ExecRecord::flags bit: argv longer than [`ARGS_CAP`].
pub const FLAG_ARGS_TRUNCATED: u32 = 2;

/// An exec record as userspace reads it: the fixed part as the kernel laid it out, the exe
/// and the argv.
#[allow(
    missing_docs,
    reason = "the fields are the decoded record's parts, named for the kernel values they carry; the type's doc says what it is"
)]
#[cfg(feature = "user")]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelExec {
    pub fixed: ExecRecordFixed,
    pub exe: Vec<u8>,
    /// argv as the kernel has it: NUL-separated (split by the process table).
    pub args: Vec<u8>,
}

#[cfg(feature = "user")]
impl KernelExec {
    /// Decodes an exec record: its fixed part, then the exe and the argv.
    pub fn decode(bytes: &[u8]) -> Result<KernelExec, DecodeError> {
        let fixed: ExecRecordFixed = read_prefix(bytes)?;
        let [exe, args] = split_tail(
            &bytes[EXEC_RECORD_FIXED..],
            [usize::from(fixed.exe_len), usize::from(fixed.args_len)],
        )?;
        Ok(KernelExec {
            fixed,
            exe: exe.to_vec(),
            args: args.to_vec(),
        })
    }
}

/// A new process (not a thread): `task` is the parent, `child_pid` the new thread group.
#[allow(
    missing_docs,
    reason = "the fields are the record's layout, named for the kernel values they carry; the type's doc says what the record is"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkRecord {
    pub hdr: RecordHeader,
    pub task: TaskInfo,
    pub child_pid: u32,
    pub _pad: u32,
}

/// A process (thread group leader) exited.
#[allow(
    missing_docs,
    reason = "the fields are the record's layout, named for the kernel values they carry; the type's doc says what the record is"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitRecord {
    pub hdr: RecordHeader,
    pub task: TaskInfo,
    /// task->exit_code (status << 8 | signal).
    pub exit_code: i32,
    pub _pad: u32,
}

/// A record from the ring buffer, decoded (userspace): which one [`RecordHeader::kind`] says,
/// each in its own layout.
#[allow(
    missing_docs,
    reason = "the fields are the decoded record's parts, named for the kernel values they carry; the type's doc says what it is"
)]
#[cfg(feature = "user")]
#[derive(Clone, Debug)]
pub enum Record {
    File(KernelFileOp),
    Exec(KernelExec),
    Fork(ForkRecord),
    Exit(ExitRecord),
}

#[cfg(feature = "user")]
impl Record {
    /// Decodes one ring buffer item.
    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        let hdr: RecordHeader = read_prefix(bytes)?;
        match hdr.kind {
            kind::FILE => KernelFileOp::decode(bytes).map(Record::File),
            kind::EXEC => KernelExec::decode(bytes).map(Record::Exec),
            kind::FORK => read_prefix(bytes).map(Record::Fork),
            kind::EXIT => read_prefix(bytes).map(Record::Exit),
            other => Err(DecodeError::UnknownKind(other)),
        }
    }
}

/// Why a ring buffer item could not be decoded.
#[allow(
    missing_docs,
    reason = "the fields are the decoded record's parts, named for the kernel values they carry; the type's doc says what it is"
)]
#[cfg(feature = "user")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its fixed part.
    Short { got: usize, need: usize },
    /// A [`RecordHeader::kind`] this version does not know.
    UnknownKind(u16),
    /// The tail lengths of the fixed part add up to more than the record holds.
    Tail { got: usize, need: usize },
}

#[cfg(feature = "user")]
impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Short { got, need } => write!(
                f,
                "record of {got} bytes is shorter than its fixed part ({need} bytes)"
            ),
            DecodeError::UnknownKind(k) => write!(f, "record kind {k} is unknown"),
            DecodeError::Tail { got, need } => write!(
                f,
                "record tail lengths exceed the record ({need} > {got} bytes)"
            ),
        }
    }
}

#[cfg(feature = "user")]
impl core::error::Error for DecodeError {}

/// Plain data that a record's front can be read as: `#[repr(C)]` structs of integers and
/// byte arrays, valid for any bit pattern.
///
/// # Safety
///
/// Implement only for such types.
#[cfg(feature = "user")]
unsafe trait Plain: Copy {}
// SAFETY: #[repr(C)] structs of integers (and structs of them), valid for any bit pattern.
#[cfg(feature = "user")]
unsafe impl Plain for RecordHeader {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl Plain for FileRecordFixed {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl Plain for ExecRecordFixed {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl Plain for ForkRecord {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl Plain for ExitRecord {}

/// Copies a `T` out of the front of `bytes` (ring buffer items have no alignment guarantee
/// beyond 8 bytes, and the tails make the records variable-length).
#[cfg(feature = "user")]
fn read_prefix<T: Plain>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = core::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            got: bytes.len(),
            need,
        });
    }
    // SAFETY: T is plain data (valid for any bytes) and `bytes` holds at least size_of::<T>()
    // of them; the read is unaligned.
    Ok(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Splits `tail` into consecutive parts of the given lengths.
#[cfg(feature = "user")]
fn split_tail<const N: usize>(tail: &[u8], lens: [usize; N]) -> Result<[&[u8]; N], DecodeError> {
    let need: usize = lens.iter().sum();
    if need > tail.len() {
        return Err(DecodeError::Tail {
            got: tail.len(),
            need,
        });
    }
    let mut parts = [&tail[..0]; N];
    let mut at = 0;
    for (part, len) in parts.iter_mut().zip(lens) {
        *part = &tail[at..at + len];
        at += len;
    }
    Ok(parts)
}

/// Key of the write aggregation map: one entry per (process, fd) with writes under a root.
#[allow(
    missing_docs,
    reason = "the fields are the record's layout, named for the kernel values they carry; the type's doc says what the record is"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WriteKey {
    pub tgid: u32,
    pub fd: i32,
}

/// (dev, ino) of an inode as the kernel has them (`s_dev`, `i_ino`): the protect programs'
/// protected directories and files and trusted executables (issue 15).
#[allow(
    missing_docs,
    reason = "the fields are the record's layout, named for the kernel values they carry; the type's doc says what the record is"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// Write aggregate of one (process, fd).
#[allow(
    missing_docs,
    reason = "the fields are the record's layout, named for the kernel values they carry; the type's doc says what the record is"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteAgg {
    /// `struct file *` the fd pointed at when the aggregate began. With `dev` and `ino`, it
    /// tells whether the fd still names the same open file: a `struct file` freed without a
    /// close syscall (dup2 over the fd, close_range) is recycled by the next open, often for
    /// another file.
    pub file: u64,
    pub bytes: u64,
    pub writes: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// i_size after the last write.
    pub size: u64,
    pub ino: u64,
    pub dev: u32,
    /// Thread that made the last write.
    pub tid: u32,
}

/// Value of the root filter trie: index of the root (userspace keeps the table).
#[allow(
    missing_docs,
    reason = "the fields are the record's layout, named for the kernel values they carry; the type's doc says what the record is"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RootEntry {
    pub index: u32,
}

/// Key of the root filter trie (an LPM trie key: prefix length in bits, then path bytes).
#[allow(
    missing_docs,
    reason = "the fields are the record's layout, named for the kernel values they carry; the type's doc says what the record is"
)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RootKey {
    pub prefixlen: u32,
    pub data: [u8; ROOT_KEY_CAP],
}

/// Offsets of the kernel struct fields the programs read, in bytes, computed by the daemon
/// from the running kernel's BTF (`/sys/kernel/btf/vmlinux`) and handed to the programs as a
/// read-only global before load. Nothing here is fixed at build time.
#[allow(
    missing_docs,
    reason = "the fields are the record's layout, named for the kernel values they carry; the type's doc says what the record is"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    // struct task_struct
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_fs: u32,
    pub task_files: u32,
    pub task_mm: u32,
    pub task_nsproxy: u32,
    pub task_exit_code: u32,
    // struct fs_struct
    pub fs_pwd: u32,
    pub fs_root: u32,
    // struct path
    pub path_mnt: u32,
    pub path_dentry: u32,
    // struct files_struct / struct fdtable
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    // struct file
    pub file_f_path: u32,
    pub file_f_inode: u32,
    pub file_f_mode: u32,
    // struct dentry / struct qstr
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub dentry_d_inode: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    // struct inode / struct super_block
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub inode_i_size: u32,
    pub inode_i_mode: u32,
    /// `inode.i_nlink` (in an anonymous union with `__i_nlink`): the rename-target hooks
    /// recognise the replaced inode by its link count dropping to 0.
    pub inode_i_nlink: u32,
    pub sb_s_dev: u32,
    /// `xfs_inode.i_vnode` (the embedded VFS inode), for the xfs rename-target hooks; 0 when
    /// the kernel's BTF does not describe xfs (not built, or a module), and they stay detached.
    pub xfs_inode_i_vnode: u32,
    /// `renamedata.old_dentry` and `renamedata.flags`, for the fentry program on
    /// `vfs_rename` (5.12 and later); 0 when the kernel's BTF has no `struct renamedata`, and
    /// that hook stays detached (kernel/backend.rs).
    pub renamedata_old_dentry: u32,
    pub renamedata_flags: u32,
    // struct mount / struct vfsmount
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub vfsmount_mnt_root: u32,
    // struct mm_struct
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub mm_exe_file: u32,
    // struct nsproxy / struct mnt_namespace / struct ns_common
    pub nsproxy_mnt_ns: u32,
    pub mnt_ns_ns: u32,
    pub ns_common_inum: u32,
    /// Non-zero once filled in; the programs do nothing while this is 0.
    pub valid: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] structs of integers and byte arrays, valid for any
    // bit pattern, and have no padding the kernel could leak into.
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::WriteKey {}
    unsafe impl aya::Pod for super::InodeKey {}
    unsafe impl aya::Pod for super::WriteAgg {}
    unsafe impl aya::Pod for super::RootEntry {}
    unsafe impl aya::Pod for super::RootKey {}
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;

    /// The bytes of a file record as the kernel side sends it: fixed part and used tail.
    fn file_record_bytes(path: &[u8], path2: &[u8]) -> Vec<u8> {
        let mut fixed = FileRecordFixed::new(op::RENAME, 7, TaskInfo::default());
        fixed.path_len = path.len() as u16;
        fixed.path2_len = path2.len() as u16;
        fixed.replaced_ino = 77;
        fixed.replaced_dev = (254 << 20) | 1;
        // SAFETY: viewing a plain-data struct without padding as bytes.
        let head = unsafe {
            core::slice::from_raw_parts(
                (&raw const fixed).cast::<u8>(),
                core::mem::size_of::<FileRecordFixed>(),
            )
        };
        [head, path, path2].concat()
    }

    #[test]
    fn decodes_a_file_record_beside_its_layout() {
        let bytes = file_record_bytes(b"/r/a", b"/r/b c");
        let Ok(Record::File(f)) = Record::decode(&bytes) else {
            panic!("not a file record");
        };
        assert_eq!(f.path, b"/r/a");
        assert_eq!(f.path2, b"/r/b c");
        assert!(f.xattr_name.is_empty() && f.xattr_value.is_empty());
        assert_eq!(f.fixed.hdr.op, op::RENAME);
        assert_eq!(f.fixed.hdr.ts_ns, 7);
        assert_eq!(
            (f.fixed.replaced_ino, f.fixed.replaced_dev),
            (77, (254 << 20) | 1)
        );
        assert_eq!((f.fixed.uid_arg, f.fixed.fd), (u32::MAX, -1));
    }

    #[test]
    fn rejects_truncated_records_and_unknown_kinds() {
        let bytes = file_record_bytes(b"/r/a", b"/r/b");
        assert!(matches!(
            Record::decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Tail { .. })
        ));
        assert!(matches!(
            Record::decode(&bytes[..10]),
            Err(DecodeError::Short { .. })
        ));
        assert!(matches!(
            Record::decode(&bytes[..FILE_RECORD_FIXED - 1]),
            Err(DecodeError::Short { .. })
        ));
        let mut bytes = file_record_bytes(b"/", b"");
        bytes[0] = 99;
        assert!(matches!(
            Record::decode(&bytes),
            Err(DecodeError::UnknownKind(99))
        ));
    }

    #[test]
    fn decodes_exec_fork_and_exit_records() {
        let fixed = ExecRecordFixed {
            hdr: RecordHeader {
                kind: kind::EXEC,
                op: 0,
                len: 0,
                ts_ns: 42,
            },
            exe_len: 12,
            args_len: 11,
            ..ExecRecordFixed::default()
        };
        // SAFETY: viewing a plain-data struct without padding as bytes.
        let head = unsafe {
            core::slice::from_raw_parts(
                (&raw const fixed).cast::<u8>(),
                core::mem::size_of::<ExecRecordFixed>(),
            )
        };
        let bytes = [head, b"/usr/bin/ctrctr\0images\0"].concat();
        let Ok(Record::Exec(e)) = Record::decode(&bytes) else {
            panic!("not an exec record");
        };
        assert_eq!(e.exe, b"/usr/bin/ctr");
        assert_eq!(e.args, b"ctr\0images\0");
        assert_eq!(e.fixed.hdr.ts_ns, 42);
        assert!(matches!(
            Record::decode(&bytes[..EXEC_RECORD_FIXED + 3]),
            Err(DecodeError::Tail { .. })
        ));

        let fork = ForkRecord {
            hdr: RecordHeader {
                kind: kind::FORK,
                ..RecordHeader::default()
            },
            child_pid: 12,
            ..ForkRecord::default()
        };
        // SAFETY: as above.
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (&raw const fork).cast::<u8>(),
                core::mem::size_of::<ForkRecord>(),
            )
        };
        assert!(matches!(Record::decode(bytes), Ok(Record::Fork(f)) if f.child_pid == 12));
        assert!(matches!(
            Record::decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn an_unclosed_modify_is_the_kernel_s_modify_record() {
        let key = WriteKey { tgid: 40, fd: 3 };
        let agg = WriteAgg {
            bytes: 5,
            writes: 2,
            first_ns: 10,
            last_ns: 20,
            size: 9,
            ino: 8,
            dev: 7,
            tid: 41,
            ..WriteAgg::default()
        };
        let f = KernelFileOp::unclosed_modify(
            &key,
            &agg,
            *b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
            b"/r/x".to_vec(),
            true,
        );
        let x = &f.fixed;
        assert_eq!(
            (x.hdr.kind, x.hdr.op, x.hdr.ts_ns),
            (kind::FILE, op::MODIFY, 20)
        );
        assert_eq!((x.task.pid, x.task.tid, x.fd), (40, 41, 3));
        assert_eq!(
            (x.bytes, x.writes, x.first_ns, x.size, x.result),
            (5, 2, 10, 9, 5)
        );
        assert_eq!((x.ino, x.dev), (8, 7));
        assert_eq!(x.flags, FLAG_BY_FD | FLAG_NOT_CLOSED | FLAG_PATH_TRUNCATED);
        assert_eq!(f.path, b"/r/x");
    }
}
