//! File operations seen through the syscall tracepoints.
//!
//! Each watched syscall is described by a [`Spec`] (which argument is the dirfd, the path, the
//! flags...). `sys_enter_*` resolves the path(s), asks the root filter, and only for operations
//! under a root stores the raw arguments in `PENDING`. `sys_exit_*` finds that entry, builds
//! the record with the result and sends it. Operations outside the roots cost one path read and
//! one trie lookup at enter, and at exit one load of the `INFLIGHT` count (plus a failed hash
//! lookup while some other operation under a root is in flight).
//!
//! Writes are aggregated in `WRITES` per (process, fd) and reported once, at close (or when
//! dup2/dup3 closes the fd, or when the fd is found naming another open file).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user as read_user,
        generated::{
            bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_str, bpf_ringbuf_output,
        },
    },
    programs::TracePointContext,
};
use watcher_common::{
    DATA_CAP, FILE_RECORD_FIXED, FLAG_BY_FD, FLAG_NOT_CLOSED, FLAG_PATH_TRUNCATED,
    FLAG_PATH2_TRUNCATED, FLAG_REPLACED, FLAG_VALUE_TRUNCATED, FileRecord, FileRecordFixed,
    LOSS_PATH_UNRESOLVED, PATH_BUF_CAP, PATH_CAP, WriteAgg, WriteKey, XATTR_NAME_CAP,
    XATTR_VALUE_CAP, kind, op,
};

use crate::{
    kernel::{fd_to_file, file_inode, file_path, fill_task_info, inode_identity, now_ns, read},
    maps::{
        EVENTS, FileKey, INFLIGHT_PENDING, INFLIGHT_WRITE, PENDING, PENDING_WRITE, Pending,
        PendingWrite, SCRATCH, SCRATCH2, VERDICTS, WRITES, cached_verdict, count_lost,
        inflight_add, new_verdict_epoch, none_inflight, off, offsets, offsets_valid, self_tgid,
        verdict_epoch, verdict_value,
    },
    path::{MASK, MASK2, resolve_user_path, under_root, write_dentry_path},
    stages,
};

/// "Argument not used".
pub const NONE: i8 = -1;
/// The dirfd of syscalls without one (open, unlink, ...).
pub const CWD: i8 = -2;
const AT_FDCWD: i64 = -100;
const AT_REMOVEDIR: u64 = 0x200;
const O_WRONLY: u64 = 1;
const O_RDWR: u64 = 2;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
/// renameat2: swap the two names. Nothing is replaced, whatever a filesystem hook saw.
const RENAME_EXCHANGE: u64 = 2;

/// How a syscall's arguments map onto a file record. Indices are syscall argument positions.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Spec {
    pub op: u16,
    /// Implicit flags (creat: O_CREAT|O_WRONLY|O_TRUNC).
    pub implicit_flags: u16,
    pub dirfd: i8,
    pub path: i8,
    /// File descriptor of fd-based operations (ftruncate, fsetxattr, fchmod...).
    pub fd: i8,
    pub dirfd2: i8,
    /// Second path, resolved (rename/link new name).
    pub path2: i8,
    /// Second string, kept as given (symlink target).
    pub raw2: i8,
    pub flags: i8,
    pub mode: i8,
    /// truncate/fallocate length, or xattr value size.
    pub size: i8,
    /// fallocate offset.
    pub offset: i8,
    pub name: i8,
    pub value: i8,
    pub uid: i8,
    pub gid: i8,
    pub rdev: i8,
    /// openat2: flags in `struct open_how` / setxattrat: `struct xattr_args` at this argument.
    pub indirect: i8,
}

impl Spec {
    pub const fn new(op: u16) -> Self {
        Spec {
            op,
            implicit_flags: 0,
            dirfd: CWD,
            path: NONE,
            fd: NONE,
            dirfd2: NONE,
            path2: NONE,
            raw2: NONE,
            flags: NONE,
            mode: NONE,
            size: NONE,
            offset: NONE,
            name: NONE,
            value: NONE,
            uid: NONE,
            gid: NONE,
            rdev: NONE,
            indirect: NONE,
        }
    }
    pub const fn at(mut self, dirfd: i8, path: i8) -> Self {
        self.dirfd = dirfd;
        self.path = path;
        self
    }
    pub const fn path(mut self, path: i8) -> Self {
        self.path = path;
        self
    }
    pub const fn fd(mut self, fd: i8) -> Self {
        self.fd = fd;
        self
    }
    pub const fn to(mut self, dirfd2: i8, path2: i8) -> Self {
        self.dirfd2 = dirfd2;
        self.path2 = path2;
        self
    }
    pub const fn raw2(mut self, raw2: i8) -> Self {
        self.raw2 = raw2;
        self
    }
    pub const fn flags(mut self, flags: i8) -> Self {
        self.flags = flags;
        self
    }
    pub const fn implicit(mut self, flags: u16) -> Self {
        self.implicit_flags = flags;
        self
    }
    pub const fn mode(mut self, mode: i8) -> Self {
        self.mode = mode;
        self
    }
    pub const fn size(mut self, size: i8) -> Self {
        self.size = size;
        self
    }
    pub const fn offset(mut self, offset: i8) -> Self {
        self.offset = offset;
        self
    }
    pub const fn xattr(mut self, name: i8, value: i8, size: i8) -> Self {
        self.name = name;
        self.value = value;
        self.size = size;
        self
    }
    pub const fn owner(mut self, uid: i8, gid: i8) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub const fn rdev(mut self, rdev: i8) -> Self {
        self.rdev = rdev;
        self
    }
    pub const fn indirect(mut self, arg: i8) -> Self {
        self.indirect = arg;
        self
    }

    /// How many leading syscall arguments the spec uses. Programs read no further: the kernel
    /// refuses to attach a tracepoint program whose context reads go past the record.
    pub const fn arg_count(&self) -> usize {
        let used = [
            self.dirfd,
            self.path,
            self.fd,
            self.dirfd2,
            self.path2,
            self.raw2,
            self.flags,
            self.mode,
            self.size,
            self.offset,
            self.name,
            self.value,
            self.uid,
            self.gid,
            self.rdev,
            self.indirect,
        ];
        let mut max = 0;
        let mut i = 0;
        while i < used.len() {
            if used[i] >= 0 && used[i] as usize + 1 > max {
                max = used[i] as usize + 1;
            }
            i += 1;
        }
        max
    }
}

/// Argument `i` of a syscall tracepoint (`args` start at byte 16, 8 bytes each).
#[inline(always)]
fn arg(ctx: &TracePointContext, i: i8) -> u64 {
    if !(0..6).contains(&i) {
        return 0;
    }
    // SAFETY: syscall enter records hold six 8-byte arguments from offset 16; tracepoint
    // programs may load their context directly (no helper call on this hot path).
    unsafe { *(ctx.as_ptr() as *const u64).add(2 + i as usize) }
}

#[inline(always)]
fn dirfd_of(args: &[u64; 6], i: i8) -> i64 {
    if (0..6).contains(&i) {
        args[i as usize] as i32 as i64
    } else {
        AT_FDCWD
    }
}

/// `long ret` of a syscall exit record (offset 16).
#[inline(always)]
fn syscall_ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: syscall exit records carry `long ret` at offset 16; direct context load.
    unsafe { *(ctx.as_ptr() as *const i64).add(2) }
}

/// `__syscall_nr` of a syscall tracepoint record.
#[inline(always)]
fn syscall_nr(ctx: &TracePointContext) -> u16 {
    // SAFETY: syscall tracepoint records carry `int __syscall_nr` at offset 8.
    unsafe { *(ctx.as_ptr() as *const i32).add(2) as u16 }
}

/// Is the file behind `file` under a root? Cached per (file, inode) in `VERDICTS`.
#[inline(always)]
pub fn file_watched(rec: *mut FileRecord, file: u64) -> bool {
    if file == 0 {
        return false;
    }
    let key = FileKey {
        file,
        inode: file_inode(file),
    };
    if let Some(watched) = cached_verdict(&key) {
        return watched;
    }
    // Read before the walk: a rename that moves the file meanwhile starts a newer epoch, and
    // the verdict stored here is then not used.
    let epoch = verdict_epoch();
    let (mnt, dentry) = file_path(file);
    // SAFETY: `rec` is this CPU's scratch record.
    let watched = unsafe {
        let (len, _) = write_dentry_path((*rec).data.as_mut_ptr(), mnt, dentry, PATH_BUF_CAP);
        under_root(&raw mut (*rec).fixed.lpm_prefixlen, len)
    };
    let _ = VERDICTS.insert(&key, &verdict_value(epoch, watched), 0);
    watched
}

#[inline(always)]
pub(crate) fn scratch() -> Option<*mut FileRecord> {
    SCRATCH.get_ptr_mut(0)
}

/// The arguments of a syscall laid out by `syscall`, moved to where `exit` reads them: the
/// `Pending` entry holds them so, and the one exit program of a family of syscalls (rename,
/// renameat, renameat2) reads every member's entry alike (see main.rs). What the syscall does
/// not have is what it means implicitly: AT_FDCWD for a dirfd, its implicit open flags, 0 for
/// flags. Both specs are constants: this compiles to a few moves.
#[inline(always)]
fn rearranged(args: &[u64; 6], syscall: &Spec, exit: &Spec) -> [u64; 6] {
    let mut out = [0u64; 6];
    let mut put = |slot: i8, value: u64| {
        if (0..6).contains(&slot) {
            out[slot as usize] = value;
        }
    };
    put(exit.dirfd, dirfd_of(args, syscall.dirfd) as u64);
    put(exit.path, saved(args, syscall.path));
    put(exit.fd, saved(args, syscall.fd));
    put(exit.dirfd2, dirfd_of(args, syscall.dirfd2) as u64);
    put(exit.path2, saved(args, syscall.path2));
    put(exit.raw2, saved(args, syscall.raw2));
    // The exit adds its own implicit flags (open_flags); a syscall's others become explicit.
    let implicit = (syscall.implicit_flags & !exit.implicit_flags) as u64;
    put(exit.flags, saved(args, syscall.flags) | implicit);
    put(exit.mode, saved(args, syscall.mode));
    put(exit.size, saved(args, syscall.size));
    put(exit.offset, saved(args, syscall.offset));
    put(exit.name, saved(args, syscall.name));
    put(exit.value, saved(args, syscall.value));
    put(exit.uid, saved(args, syscall.uid));
    put(exit.gid, saved(args, syscall.gid));
    put(exit.rdev, saved(args, syscall.rdev));
    put(exit.indirect, saved(args, syscall.indirect));
    out
}

/// `sys_enter_*` of every file operation except the write family and close. `syscall` says
/// where this syscall's arguments are; `spec` is its exit program's (the same, unless the
/// exit is shared with other syscalls: see [`rearranged`]).
#[inline(always)]
pub fn enter<const ARGS: usize>(ctx: &TracePointContext, syscall: &Spec, spec: &Spec) -> u32 {
    if !offsets_valid() {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    if (id >> 32) as u32 == self_tgid() {
        return 0;
    }
    let mut raw = [0u64; 6];
    let mut i = 0;
    while i < 6 && i < ARGS {
        raw[i] = arg(ctx, i as i8);
        i += 1;
    }
    let args = rearranged(&raw, syscall, spec);
    // rmdir shares unlinkat's exit: its op is its own.
    let mut op = syscall.op;
    if op == op::OPEN_WRITE {
        let flags = open_flags(spec, &args);
        // Read-only opens are the bulk of all opens: leave before touching any path.
        if flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC) == 0 {
            return 0;
        }
    }
    if op == op::UNLINK && saved(&args, spec.flags) & AT_REMOVEDIR != 0 {
        op = op::RMDIR;
    }
    let Some(stage) = stages::stage() else {
        count_lost(LOSS_PATH_UNRESOLVED);
        return 0;
    };
    // SAFETY: this CPU's stage state.
    unsafe {
        (*stage).spec = *spec;
        (*stage).ret = 0;
        (*stage).pending = Pending {
            op,
            syscall_nr: syscall_nr(ctx),
            replaced_dev: 0,
            args,
            replaced_ino: 0,
        };
    }
    // The path walk is verified once, in the stage (stages.rs).
    stages::jump(ctx, stages::ENTER_PATH);
    // The stage is missing: whether the operation is under a root cannot be told.
    count_lost(LOSS_PATH_UNRESOLVED);
    0
}

/// The stage [`stages::ENTER_PATH`]: is the first path of the syscall in [`stages::STAGE`] (or
/// the file of its fd) under a root? Then the operation is stored for its exit; if not, and it
/// has a second path, that one is asked about in [`stages::ENTER_PATH2`].
#[inline(always)]
pub fn enter_path(ctx: &TracePointContext) -> u32 {
    let (Some(stage), Some(rec)) = (stages::stage(), scratch()) else {
        count_lost(LOSS_PATH_UNRESOLVED);
        return 0;
    };
    // SAFETY: this CPU's stage state and scratch record, see path.rs for the buffer contract.
    unsafe {
        let spec = &(*stage).spec;
        let args = &(*stage).pending.args;
        let watched = if spec.fd >= 0 {
            file_watched(rec, fd_to_file(saved(args, spec.fd) as i32 as i64))
        } else {
            match resolve_user_path(
                (*rec).data.as_mut_ptr(),
                dirfd_of(args, spec.dirfd),
                saved(args, spec.path),
            ) {
                Some((len, _)) => under_root(&raw mut (*rec).fixed.lpm_prefixlen, len),
                None => false,
            }
        };
        if watched {
            store_pending(&(*stage).pending);
            return 0;
        }
        if spec.path2 < 0 {
            return 0;
        }
    }
    stages::jump(ctx, stages::ENTER_PATH2);
    count_lost(LOSS_PATH_UNRESOLVED);
    0
}

/// The stage [`stages::ENTER_PATH2`]: is the second path of a rename or link under a root?
#[inline(always)]
pub fn enter_path2() -> u32 {
    let Some(stage) = stages::stage() else {
        count_lost(LOSS_PATH_UNRESOLVED);
        return 0;
    };
    // SAFETY: this CPU's stage state.
    unsafe {
        if second_path_watched(&(*stage).pending.args, &(*stage).spec) {
            store_pending(&(*stage).pending);
        }
    }
    0
}

/// Stores an operation under a root for its exit.
#[inline(always)]
fn store_pending(pending: &Pending) {
    let id = bpf_get_current_pid_tgid();
    let pending = *pending;
    // Counted before it exists, so that its exit never skips it (see INFLIGHT).
    inflight_add(INFLIGHT_PENDING, 1);
    if PENDING.insert(&id, &pending, 0).is_err() {
        inflight_add(INFLIGHT_PENDING, u64::MAX);
        count_lost(pending.op as u32);
    }
}

/// Saved argument `i`, or 0 when the syscall has no such argument.
#[inline(always)]
fn saved(args: &[u64; 6], i: i8) -> u64 {
    if (0..6).contains(&i) {
        args[i as usize]
    } else {
        0
    }
}

#[inline(always)]
fn second_path_watched(args: &[u64; 6], spec: &Spec) -> bool {
    let Some(s2) = SCRATCH2.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's second scratch buffer.
    unsafe {
        match resolve_user_path(
            (*s2).data.as_mut_ptr(),
            dirfd_of(args, spec.dirfd2),
            saved(args, spec.path2),
        ) {
            Some((len, _)) => under_root(&raw mut (*s2).lpm_prefixlen, len),
            None => false,
        }
    }
}

#[inline(always)]
fn open_flags(spec: &Spec, args: &[u64; 6]) -> u64 {
    let mut flags = spec.implicit_flags as u64;
    if spec.flags >= 0 {
        flags |= saved(args, spec.flags);
    }
    if spec.indirect >= 0 {
        // openat2: struct open_how { u64 flags; u64 mode; u64 resolve; }
        // SAFETY: user memory read through the helper.
        flags |= unsafe { read_user(saved(args, spec.indirect) as *const u64).unwrap_or(0) };
    }
    flags
}

/// Resets the fixed part of the scratch record and fills the task and header.
#[inline(always)]
pub(crate) fn begin_record(rec: *mut FileRecord, op: u16) {
    // SAFETY: `rec` is this CPU's scratch record.
    unsafe {
        let r = &mut (*rec).fixed;
        r.hdr.kind = kind::FILE;
        r.hdr.op = op;
        r.hdr.len = 0;
        r.hdr.ts_ns = now_ns();
        fill_task_info(&mut r.task);
        r.result = 0;
        r.ino = 0;
        r.dev = 0;
        r.mode = 0;
        r.sys_flags = 0;
        r.flags = 0;
        r.f_mode = 0;
        r.rdev = 0;
        r.size = 0;
        r.offset = 0;
        r.bytes = 0;
        r.writes = 0;
        r.first_ns = 0;
        r.replaced_ino = 0;
        r.replaced_dev = 0;
        r._reserved = 0;
        r.uid_arg = u32::MAX;
        r.gid_arg = u32::MAX;
        r.fd = -1;
        r.path_len = 0;
        r.path2_len = 0;
        r.name_len = 0;
        r.value_len = 0;
    }
}

/// Sends the scratch record (fixed part plus the used tail) or counts it lost in its op's
/// slot.
#[inline(always)]
pub(crate) fn send(rec: *mut FileRecord) {
    // SAFETY: `rec` is this CPU's scratch record.
    let slot = unsafe { (*rec).fixed.hdr.op } as u32;
    send_or_count(rec, slot);
}

/// Sends the scratch record (fixed part plus the used tail) or counts it lost in `slot`.
#[inline(always)]
pub(crate) fn send_or_count(rec: *mut FileRecord, slot: u32) {
    // SAFETY: `rec` is this CPU's scratch record; the length is bounded below its size.
    unsafe {
        let r = &mut (*rec).fixed;
        let tail = (r.path_len as usize & MASK)
            + (r.path2_len as usize & MASK)
            + (r.name_len as usize & (XATTR_NAME_CAP - 1))
            + (r.value_len as usize & (2 * XATTR_VALUE_CAP - 1));
        let len = FILE_RECORD_FIXED + tail;
        r.hdr.len = len as u32;
        let ret = bpf_ringbuf_output(
            &raw const EVENTS as *mut c_void,
            rec as *mut c_void,
            len as u64,
            0,
        );
        if ret != 0 {
            count_lost(slot);
        }
    }
}

/// `sys_exit_*` of every file operation except the write family and close.
#[inline(always)]
pub fn exit(ctx: &TracePointContext, spec: &Spec) -> u32 {
    if none_inflight(INFLIGHT_PENDING) {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    // SAFETY: map lookup; the value is copied out before the entry is removed.
    let Some(p) = (unsafe { PENDING.get(&id) }).copied() else {
        return 0;
    };
    if PENDING.remove(&id).is_ok() {
        inflight_add(INFLIGHT_PENDING, u64::MAX);
    }
    if p.syscall_nr != syscall_nr(ctx) {
        // Left over from a syscall whose exit we missed (e.g. attached in between).
        return 0;
    }
    let Some(rec) = scratch() else {
        count_lost(p.op as u32);
        return 0;
    };
    let ret = syscall_ret(ctx);
    // A rename under a root (only those are pending) may have moved open files in or out of
    // the roots: the verdicts cached for them are stale from now on.
    if p.op == op::RENAME && ret == 0 {
        new_verdict_epoch();
    }
    begin_record(rec, p.op);
    // SAFETY: `rec` is this CPU's scratch record; all tail writes are masked (see path.rs).
    unsafe {
        let r = &mut (*rec).fixed;
        r.result = ret;
        if spec.flags >= 0 || spec.indirect >= 0 || spec.implicit_flags != 0 {
            r.sys_flags = if spec.op == op::OPEN_WRITE {
                open_flags(spec, &p.args) as u32
            } else {
                saved(&p.args, spec.flags) as u32
            };
        }
        if spec.mode >= 0 {
            r.mode = saved(&p.args, spec.mode) as u32;
        }
        if spec.rdev >= 0 {
            r.rdev = saved(&p.args, spec.rdev) as u32;
        }
        if spec.uid >= 0 {
            r.uid_arg = saved(&p.args, spec.uid) as u32;
            r.gid_arg = saved(&p.args, spec.gid) as u32;
        }
        if spec.offset >= 0 {
            r.offset = saved(&p.args, spec.offset);
        }
        if spec.size >= 0 {
            r.size = saved(&p.args, spec.size);
        }

        let Some(stage) = stages::stage() else {
            count_lost(p.op as u32);
            return 0;
        };
        (*stage).spec = *spec;
        (*stage).pending = p;
        (*stage).ret = ret;
    }
    // The path walk is verified once, in the stage (stages.rs).
    stages::jump(ctx, stages::EXIT_PATH);
    // The stage is missing: the record cannot have its path.
    count_lost(p.op as u32);
    0
}

/// The stage [`stages::EXIT_PATH`]: writes the first path into the record the exit began in
/// `SCRATCH` (the file of an fd-based op, or the resolved path argument), then sends it, or
/// hands it to [`stages::EXIT_PATH2`] for its second path.
#[inline(always)]
pub fn exit_path(ctx: &TracePointContext) -> u32 {
    let (Some(stage), Some(rec)) = (stages::stage(), scratch()) else {
        count_exit_stage_loss();
        return 0;
    };
    // SAFETY: this CPU's stage state and scratch record; all tail writes are masked (path.rs).
    unsafe {
        let spec = &(*stage).spec;
        let p = &(*stage).pending;
        let FileRecord { fixed: r, data } = &mut *rec;
        if spec.fd >= 0 {
            let fd = saved(&p.args, spec.fd) as i32;
            let file = fd_to_file(fd as i64);
            let (mnt, dentry) = file_path(file);
            let (len, truncated) = write_dentry_path(data.as_mut_ptr(), mnt, dentry, PATH_BUF_CAP);
            r.path_len = len as u16;
            r.fd = fd;
            r.flags |= FLAG_BY_FD;
            if truncated {
                r.flags |= FLAG_PATH_TRUNCATED;
            }
            let (dev, ino, mode, _) = inode_identity(file_inode(file));
            r.dev = dev;
            r.ino = ino;
            if spec.mode < 0 {
                r.mode = mode;
            }
        } else {
            match resolve_user_path(
                data.as_mut_ptr(),
                dirfd_of(&p.args, spec.dirfd),
                saved(&p.args, spec.path),
            ) {
                Some((len, truncated)) => {
                    r.path_len = len as u16;
                    if truncated {
                        r.flags |= FLAG_PATH_TRUNCATED;
                    }
                }
                None => r.path_len = 0,
            }
        }
        if spec.path2 >= 0 {
            stages::jump(ctx, stages::EXIT_PATH2);
            // The stage is missing: the record goes without its second path, flagged so, and
            // the path not resolved is counted.
            r.flags |= FLAG_PATH2_TRUNCATED;
            count_lost(LOSS_PATH_UNRESOLVED);
        }
    }
    finish_exit(rec);
    0
}

/// The stage [`stages::EXIT_PATH2`]: writes the second path of a rename or link into the
/// record and sends it.
#[inline(always)]
pub fn exit_path2() -> u32 {
    let (Some(stage), Some(rec), Some(s2)) = (stages::stage(), scratch(), SCRATCH2.get_ptr_mut(0))
    else {
        count_exit_stage_loss();
        return 0;
    };
    // SAFETY: this CPU's stage state and scratch buffers; all tail writes are masked.
    unsafe {
        let spec = &(*stage).spec;
        let p = &(*stage).pending;
        let FileRecord { fixed: r, data } = &mut *rec;
        let tail = r.path_len as usize & MASK;
        if let Some((len2, truncated)) = resolve_user_path(
            (*s2).data.as_mut_ptr(),
            dirfd_of(&p.args, spec.dirfd2),
            saved(&p.args, spec.path2),
        ) {
            let len2 = len2 & MASK;
            bpf_probe_read_kernel(
                data.as_mut_ptr().add(tail & MASK2) as *mut c_void,
                len2 as u32,
                (*s2).data.as_ptr() as *const c_void,
            );
            r.path2_len = len2 as u16;
            if truncated {
                r.flags |= FLAG_PATH2_TRUNCATED;
            }
        }
    }
    finish_exit(rec);
    0
}

/// A stage that finishes a record found no per-CPU state: it cannot happen (a per-CPU array
/// always has its slot 0), but if it did the record its caller began would go unsent. Counted
/// in the record's op slot (its caller's `begin_record` wrote it in `SCRATCH`), or as
/// `LOSS_PATH_UNRESOLVED` when even that is missing, so that no hole is silent.
#[inline(always)]
fn count_exit_stage_loss() {
    match scratch() {
        // SAFETY: this CPU's scratch record.
        Some(rec) => count_lost(unsafe { (*rec).fixed.hdr.op } as u32),
        None => count_lost(LOSS_PATH_UNRESOLVED),
    }
}

/// The rest of an exit's record after its path(s), from [`stages::STAGE`]: the symlink target,
/// the xattr, what a rename replaced, an open's file; then sends it.
#[inline(always)]
fn finish_exit(rec: *mut FileRecord) {
    let Some(stage) = stages::stage() else {
        count_lost(LOSS_PATH_UNRESOLVED);
        return;
    };
    // SAFETY: this CPU's stage state and scratch record; all tail writes are masked.
    unsafe {
        let spec = &(*stage).spec;
        let p = &(*stage).pending;
        let ret = (*stage).ret;
        let FileRecord { fixed: r, data } = &mut *rec;
        let mut tail = r.path_len as usize & MASK;
        if spec.raw2 >= 0 {
            let n = bpf_probe_read_user_str(
                data.as_mut_ptr().add(tail & MASK2) as *mut c_void,
                PATH_CAP as u32,
                saved(&p.args, spec.raw2) as *const c_void,
            );
            if n > 0 {
                r.path2_len = ((n - 1) as usize & MASK) as u16;
            }
        }
        tail += r.path2_len as usize & MASK;

        if spec.name >= 0 {
            xattr_name_value(r, data, p, spec, tail);
        }

        // Rename over an existing name: a filesystem hook saw the target's inode lose its last
        // link during this syscall (on_unlinked_inode). Only a successful rename that is not
        // an exchange replaced anything.
        if p.op == op::RENAME
            && p.replaced_ino != 0
            && ret == 0
            && saved(&p.args, spec.flags) & RENAME_EXCHANGE == 0
        {
            r.flags |= FLAG_REPLACED;
            r.replaced_ino = p.replaced_ino;
            r.replaced_dev = p.replaced_dev;
        }

        // Opens: identity of the opened file, and remember it is watched for its writes.
        if spec.op == op::OPEN_WRITE && ret >= 0 {
            let file = fd_to_file(ret);
            let inode = file_inode(file);
            let (dev, ino, mode, size) = inode_identity(inode);
            r.dev = dev;
            r.ino = ino;
            r.size = size;
            r.fd = ret as i32;
            r.f_mode = crate::kernel::read::<u32>(file, crate::maps::off(&offsets().file_f_mode));
            if spec.mode < 0 {
                r.mode = mode;
            }
            let _ = VERDICTS.insert(
                &FileKey { file, inode },
                &verdict_value(verdict_epoch(), true),
                0,
            );
        }
    }
    send(rec);
}

/// A filesystem hook saw `inode` (a `struct inode *`) being updated or evicted. If this thread
/// is inside a watched rename and the inode has no link left, it is the rename's target, which
/// the rename just unlinked: remember it for `exit`.
///
/// The hooks fire for every inode update on their filesystem (ext4_mark_inode_dirty runs on
/// most writes), so the common path must stay one failed lookup in `PENDING`, which holds only
/// the syscalls under a root that are in flight. Inside a rename the only inode that can be at
/// zero links is the replaced target: the moved inode keeps its link, the directories keep
/// theirs, and a RENAME_WHITEOUT whiteout is created with one. A target that has other hard
/// links keeps them and is not a deleted file: it is not reported.
#[inline(always)]
pub fn on_unlinked_inode(inode: u64) -> u32 {
    if none_inflight(INFLIGHT_PENDING) {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(p) = PENDING.get_ptr_mut(&id) else {
        return 0;
    };
    // SAFETY: valid map value pointer; the entry is only touched by its own thread.
    let p = unsafe { &mut *p };
    if p.op != op::RENAME || !offsets_valid() {
        return 0;
    }
    if inode == 0 {
        return 0;
    }
    let nlink: u32 = read(inode, off(&offsets().inode_i_nlink));
    if nlink != 0 {
        return 0;
    }
    let (dev, ino, _, _) = inode_identity(inode);
    if ino == 0 {
        // Unreadable inode (a failed read also gave nlink 0): nothing to report.
        return 0;
    }
    // The latest one wins: the same inode can be seen twice (marked dirty when unlinked, again
    // when evicted at the end of the syscall).
    p.replaced_ino = ino;
    p.replaced_dev = dev;
    0
}

/// An inode that a filesystem hook saw go onto its unlinked list earlier in this syscall got a
/// link again (xfs: the RENAME_WHITEOUT whiteout): if it was taken for the replaced target,
/// forget it.
#[inline(always)]
pub fn on_relinked_inode(inode: u64) -> u32 {
    if none_inflight(INFLIGHT_PENDING) || inode == 0 {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(p) = PENDING.get_ptr_mut(&id) else {
        return 0;
    };
    // SAFETY: valid map value pointer; the entry is only touched by its own thread.
    let p = unsafe { &mut *p };
    if p.op != op::RENAME || p.replaced_ino == 0 || !offsets_valid() {
        return 0;
    }
    let (dev, ino, _, _) = inode_identity(inode);
    if ino == p.replaced_ino && dev == p.replaced_dev {
        p.replaced_ino = 0;
        p.replaced_dev = 0;
    }
    0
}

/// The VFS inode embedded in an `xfs_inode` (0 when the offset is unknown; the xfs hooks are
/// then not attached anyway).
#[inline(always)]
pub fn xfs_vfs_inode(xfs_inode: u64) -> u64 {
    let offset = off(&offsets().xfs_inode_i_vnode);
    if xfs_inode == 0 || offset == 0 {
        return 0;
    }
    xfs_inode + offset
}

/// Appends the xattr name and, for the overlay namespaces, its value.
#[inline(always)]
unsafe fn xattr_name_value(
    r: &mut FileRecordFixed,
    data: &mut [u8; DATA_CAP],
    p: &Pending,
    spec: &Spec,
    tail: usize,
) {
    let name_off = tail & MASK2;
    // SAFETY: name_off <= MASK2 and the buffer has room for XATTR_NAME_CAP more bytes.
    unsafe {
        let n = bpf_probe_read_user_str(
            data.as_mut_ptr().add(name_off) as *mut c_void,
            XATTR_NAME_CAP as u32,
            saved(&p.args, spec.name) as *const c_void,
        );
        if n <= 0 {
            return;
        }
        let name_len = (n as usize - 1) & (XATTR_NAME_CAP - 1);
        r.name_len = name_len as u16;
        if spec.value < 0 && spec.indirect < 0 {
            return;
        }
        let name = data.as_ptr().add(name_off);
        if !is_overlay_xattr(name, name_len) {
            return;
        }
        let (value_ptr, size) = if spec.indirect >= 0 {
            // setxattrat: struct xattr_args { __aligned_u64 value; __u32 size; __u32 flags; }
            let args = saved(&p.args, spec.indirect);
            let value = read_user(args as *const u64).unwrap_or(0);
            let size = read_user((args + 8) as *const u32).unwrap_or(0) as u64;
            r.sys_flags = read_user((args + 12) as *const u32).unwrap_or(0);
            (value, size)
        } else {
            (saved(&p.args, spec.value), saved(&p.args, spec.size))
        };
        r.size = size;
        xattr_value(
            r,
            data,
            (name_off + name_len) & MASK2,
            value_ptr,
            size,
            true,
        );
    }
}

/// Copies an xattr value of `size` bytes at `value_ptr` (user memory if `user`, else the
/// kernel's) to `data[value_off..]`, at most XATTR_VALUE_CAP bytes (flagged truncated past
/// that). `user` is a constant at every call: the branch is compiled away.
#[inline(always)]
pub(crate) unsafe fn xattr_value(
    r: &mut FileRecordFixed,
    data: &mut [u8; DATA_CAP],
    value_off: usize,
    value_ptr: u64,
    size: u64,
    user: bool,
) {
    let mut copy = size as usize;
    if copy > XATTR_VALUE_CAP {
        copy = XATTR_VALUE_CAP;
        r.flags |= FLAG_VALUE_TRUNCATED;
    }
    // SAFETY: value_off <= MASK2 and the buffer has room for 2 * XATTR_VALUE_CAP more bytes;
    // the helpers cope with any source address.
    unsafe {
        // The mask must reach the verifier: without the volatile read LLVM drops it (copy is
        // already <= XATTR_VALUE_CAP on both paths) and passes `size` reloaded from its stack
        // spill, whose bounds a 6.1 verifier does not keep ("R2 min value is negative": the
        // program was refused on Debian 12's kernel, docs/kernels.md).
        let copy = core::ptr::read_volatile(&copy) & (2 * XATTR_VALUE_CAP - 1);
        let dst = data.as_mut_ptr().add(value_off & MASK2) as *mut c_void;
        let ret = if user {
            bpf_probe_read_user(dst, copy as u32, value_ptr as *const c_void)
        } else {
            bpf_probe_read_kernel(dst, copy as u32, value_ptr as *const c_void)
        };
        if ret == 0 {
            r.value_len = copy as u16;
        }
    }
}

/// `trusted.overlay.*` or `user.overlay.*`.
#[inline(always)]
pub(crate) unsafe fn is_overlay_xattr(name: *const u8, len: usize) -> bool {
    const TRUSTED: &[u8; 16] = b"trusted.overlay.";
    const USER: &[u8; 13] = b"user.overlay.";
    // SAFETY: the caller guarantees `len` readable bytes at `name`.
    unsafe {
        if len >= TRUSTED.len() && starts_with(name, TRUSTED) {
            return true;
        }
        len >= USER.len() && starts_with(name, USER)
    }
}

#[inline(always)]
unsafe fn starts_with<const N: usize>(s: *const u8, prefix: &[u8; N]) -> bool {
    let mut i = 0;
    while i < N {
        // SAFETY: the caller checked that `s` has at least N bytes.
        if unsafe { *s.add(i) } != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `sys_enter_write` and friends: remember the fd if its file is watched. The verdict cached
/// for the file (`VERDICTS`, see [`file_watched`]) decides inline; only a file not seen yet
/// goes to the stage [`stages::WRITE_PATH`], which walks its path.
///
/// Why inline: every write of the machine to a file runs this, nearly all of them outside the
/// roots and to files already seen, and none of them needs the walk; the tail call each of
/// them made cost about 8 ns of the program's 250-320 ns (docs/startup.md, "The write
/// family's verdict inline"), at 83 more instructions verified. The lookup is the one
/// `file_watched` made first in the stage, with the same key: no write under a root is
/// decided otherwise than before.
#[inline(always)]
pub fn enter_write(ctx: &TracePointContext, fd_arg: i8) -> u32 {
    if !offsets_valid() {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    if (id >> 32) as u32 == self_tgid() {
        return 0;
    }
    let fd = arg(ctx, fd_arg) as i32;
    let file = fd_to_file(fd as i64);
    if file == 0 {
        return 0;
    }
    let key = FileKey {
        file,
        inode: file_inode(file),
    };
    match cached_verdict(&key) {
        Some(false) => return 0,
        Some(true) => {
            remember_write(id, file, fd);
            return 0;
        }
        None => {}
    }
    let Some(stage) = stages::stage() else {
        count_lost(LOSS_PATH_UNRESOLVED);
        return 0;
    };
    // SAFETY: this CPU's stage state.
    unsafe {
        (*stage).pending.args[0] = file;
        (*stage).pending.args[1] = fd as u64;
    }
    stages::jump(ctx, stages::WRITE_PATH);
    // The stage is missing: whether the file is under a root cannot be told.
    count_lost(LOSS_PATH_UNRESOLVED);
    0
}

/// The stage [`stages::WRITE_PATH`]: is the file being written (in [`stages::STAGE`]), not
/// seen before, under a root? Then the write is remembered for its exit.
#[inline(always)]
pub fn write_path() -> u32 {
    let (Some(stage), Some(rec)) = (stages::stage(), scratch()) else {
        // Cannot happen (per-CPU arrays always have slot 0); counted, not silent.
        count_lost(LOSS_PATH_UNRESOLVED);
        return 0;
    };
    // SAFETY: this CPU's stage state.
    let (file, fd) = unsafe { ((*stage).pending.args[0], (*stage).pending.args[1] as i32) };
    if file_watched(rec, file) {
        remember_write(bpf_get_current_pid_tgid(), file, fd);
    }
    0
}

/// A write to a watched file: remembered for its exit (`exit_write`), which adds its bytes.
#[inline(always)]
fn remember_write(id: u64, file: u64, fd: i32) {
    let pending = PendingWrite { file, fd, _pad: 0 };
    // Counted before it exists, so that its exit never skips it (see INFLIGHT).
    inflight_add(INFLIGHT_WRITE, 1);
    if PENDING_WRITE.insert(&id, &pending, 0).is_err() {
        inflight_add(INFLIGHT_WRITE, u64::MAX);
        count_lost(op::MODIFY as u32);
    }
}

/// `sys_exit_write` and friends: add the bytes written to the (process, fd) aggregate.
#[inline(always)]
pub fn exit_write(ctx: &TracePointContext) -> u32 {
    // Most writes are to files outside the roots: no pending write anywhere, no lookup.
    if none_inflight(INFLIGHT_WRITE) {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    // SAFETY: map lookup, copied out before removal.
    let Some(pw) = (unsafe { PENDING_WRITE.get(&id) }).copied() else {
        return 0;
    };
    if PENDING_WRITE.remove(&id).is_ok() {
        inflight_add(INFLIGHT_WRITE, u64::MAX);
    }
    let ret = syscall_ret(ctx);
    if ret <= 0 {
        return 0;
    }
    let key = WriteKey {
        tgid: (id >> 32) as u32,
        fd: pw.fd,
    };
    let now = now_ns();
    let (dev, ino, _, size) = inode_identity(file_inode(pw.file));
    if let Some(agg) = WRITES.get_ptr_mut(&key) {
        // SAFETY: valid map value pointer; only this thread group updates its own keys.
        let agg = unsafe { &mut *agg };
        if same_open_file(agg, pw.file, dev, ino) {
            agg.bytes += ret as u64;
            agg.writes += 1;
            agg.last_ns = now;
            agg.size = size;
            agg.tid = id as u32;
            return 0;
        }
        // The fd now names another file (its old file was dropped without a close we saw,
        // e.g. by close_range): report the old aggregate before starting the new one.
        let old = *agg;
        send_modify(ctx, &key, &old, FLAG_NOT_CLOSED);
    }
    let agg = WriteAgg {
        file: pw.file,
        bytes: ret as u64,
        writes: 1,
        first_ns: now,
        last_ns: now,
        size,
        ino,
        dev,
        tid: id as u32,
    };
    if WRITES.insert(&key, &agg, 0).is_err() {
        count_lost(op::MODIFY as u32);
        return 0;
    }
    // Tell userspace which path this (process, fd) writes to, in case the process exits
    // without closing it (then userspace reports the aggregate).
    send_file_event(ctx, op::WRITE_BIND, &key, &agg, 0);
    0
}

/// Is `file` (whose inode is `dev`, `ino`) still the open file the aggregate began on? The
/// pointer alone does not say: a `struct file` dropped without a close syscall — bash restoring
/// fd 1 with dup2 after `echo > X`, close_range — is freed and usually handed to the next open,
/// which may be of another file.
#[inline(always)]
fn same_open_file(agg: &WriteAgg, file: u64, dev: u32, ino: u64) -> bool {
    agg.file == file && agg.ino == ino && agg.dev == dev
}

/// `sys_enter_close`: report the aggregate of this (process, fd), if any.
#[inline(always)]
pub fn enter_close(ctx: &TracePointContext) -> u32 {
    flush_fd(ctx, arg(ctx, 0) as i32);
    0
}

/// `sys_enter_dup2`/`sys_enter_dup3(oldfd, newfd, ...)`: newfd is closed first, so its
/// aggregate ends here. This is how a shell ends a redirection: `echo aaaa > X` is open X,
/// save fd 1, dup2(X's fd, 1), close X's fd, write, dup2(saved, 1) — which closes X. Without
/// this hook X would be reported only at the next write on fd 1 or at exit.
#[inline(always)]
pub fn enter_dup(ctx: &TracePointContext) -> u32 {
    let oldfd = arg(ctx, 0) as i32;
    let newfd = arg(ctx, 1) as i32;
    let key = WriteKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        fd: newfd,
    };
    // Most dup2 calls are on fds without writes to a watched file: one failed lookup.
    // SAFETY: map lookup, value not used.
    if unsafe { WRITES.get(&key) }.is_none() {
        return 0;
    }
    // dup2(fd, fd) changes nothing; with a bad oldfd it fails before closing newfd.
    if oldfd == newfd || fd_to_file(oldfd as i64) == 0 {
        return 0;
    }
    flush_fd(ctx, newfd);
    0
}

/// Reports and forgets the aggregate of (this process, `fd`), if any: the fd is being closed.
/// The caller's last action (the report may be sent by a tail call, which does not return).
#[inline(always)]
fn flush_fd(ctx: &TracePointContext, fd: i32) {
    let id = bpf_get_current_pid_tgid();
    let key = WriteKey {
        tgid: (id >> 32) as u32,
        fd,
    };
    // SAFETY: map lookup, copied out before removal.
    let Some(mut agg) = (unsafe { WRITES.get(&key) }).copied() else {
        return;
    };
    let _ = WRITES.remove(&key);
    let file = fd_to_file(key.fd as i64);
    let (dev, ino, _, size) = inode_identity(file_inode(file));
    let flags = if same_open_file(&agg, file, dev, ino) {
        agg.size = size;
        0
    } else {
        FLAG_NOT_CLOSED
    };
    send_modify(ctx, &key, &agg, flags);
}

#[inline(always)]
fn send_modify(ctx: &TracePointContext, key: &WriteKey, agg: &WriteAgg, flags: u32) {
    send_file_event(ctx, op::MODIFY, key, agg, flags);
}

/// A record about an aggregate: the path comes from the file it points at, written by the
/// stage [`stages::EVENT_PATH`], which sends it. When that is a tail call, it does not return:
/// the caller's last action then.
#[inline(always)]
fn send_file_event(ctx: &TracePointContext, op: u16, key: &WriteKey, agg: &WriteAgg, flags: u32) {
    let Some(rec) = scratch() else {
        count_lost(op as u32);
        return;
    };
    begin_record(rec, op);
    // SAFETY: this CPU's scratch record.
    unsafe {
        let r = &mut (*rec).fixed;
        r.task.tid = agg.tid;
        r.fd = key.fd;
        r.dev = agg.dev;
        r.ino = agg.ino;
        r.size = agg.size;
        r.bytes = agg.bytes;
        r.writes = agg.writes;
        r.first_ns = agg.first_ns;
        r.hdr.ts_ns = agg.last_ns;
        r.flags = flags | FLAG_BY_FD;
        r.result = agg.bytes as i64;
    }
    // The file may be gone (fd reused); only read its path while it is the fd's file.
    if flags & FLAG_NOT_CLOSED != 0 && op != op::WRITE_BIND {
        send(rec);
        return;
    }
    let Some(stage) = stages::stage() else {
        count_lost(op as u32);
        return;
    };
    // SAFETY: this CPU's stage state.
    unsafe { (*stage).pending.args[0] = agg.file };
    stages::jump(ctx, stages::EVENT_PATH);
    // The stage is missing: the record cannot have its path.
    count_lost(op as u32);
}

/// The stage [`stages::EVENT_PATH`]: writes the path of the file in [`stages::STAGE`] into the
/// record begun in `SCRATCH`, and sends it.
#[inline(always)]
pub fn event_path() -> u32 {
    let (Some(stage), Some(rec)) = (stages::stage(), scratch()) else {
        count_exit_stage_loss();
        return 0;
    };
    // SAFETY: this CPU's stage state and scratch record.
    unsafe {
        let (mnt, dentry) = file_path((*stage).pending.args[0]);
        let FileRecord { fixed: r, data } = &mut *rec;
        let (len, truncated) = write_dentry_path(data.as_mut_ptr(), mnt, dentry, PATH_BUF_CAP);
        r.path_len = len as u16;
        if truncated {
            r.flags |= FLAG_PATH_TRUNCATED;
        }
    }
    send(rec);
    0
}
