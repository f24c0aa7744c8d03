//! fentry/fexit on VFS functions: the operations the kernel makes itself, as opposed to the
//! system calls the syscall tracepoints report.
//!
//! The syscall tracepoints see system calls; they cannot see what overlayfs does on its upper
//! and work directories on a process's behalf: the `trusted.overlay.*` xattrs of a copy-up
//! (fentry_xattr.rs), the whiteouts, the temporary files and directories it makes in `work/`
//! and renames or links into `upper/`, the upper files it unlinks (fentry_namespace.rs). All of
//! that goes through the same VFS functions as the system calls (`vfs_setxattr`, `vfs_mknod`,
//! `vfs_rename`, ...). The model, shared by every hook:
//!
//! - Each hook belongs to a family of functions ([`Family`]). `fentry_*` counts how deep the
//!   thread is in the family's functions (`FENTRY_DEPTH`), `fexit_*` takes the count back.
//! - The outermost call of a family made while a watched system call of the thread is in
//!   flight (its `PENDING` entry, file_ops.rs) whose operation is one the function performs
//!   (vfs_unlink for an unlink, vfs_mkdir for a mkdir, ...) is that system call's own: the
//!   tracepoint pair reports it, with its arguments, so it is skipped here (no double
//!   report). Every other successful call is an operation the kernel made on the thread's
//!   behalf (overlayfs's on the upper layer below the merged file the system call named, or
//!   its copy-up): reported flagged [`FLAG_KERNEL_INTERNAL`], attributed to the current task.
//! - The path is built from the dentry. A dentry does not say which mount it was reached
//!   through (overlayfs reaches its upper layer through a private mount), so the path is
//!   built through the mount of the task's root directory, and only when the dentry is on
//!   that mount's filesystem and the mount shows the whole filesystem: then it is the path
//!   the file has from `/`. Otherwise the operation is not reported (the kernel-internal
//!   operations of an upper directory on another filesystem are not seen yet:
//!   docs/kernels.md).
//!
//! Cost: every call of a hooked function on the node runs its two programs; a call with
//! capture off, or the thread's own system call, ends after a map update and a lookup; one on
//! another filesystem than the task's root after a few more reads; only one on the root's
//! filesystem builds its path and looks it up among the roots.
//!
//! Argument positions are the running kernel's, checked in BTF by userspace before the
//! programs are loaded (watcher/src/kernel/backend.rs); a program whose prototype differs is
//! left unattached.

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_get_current_pid_tgid, macros::map, maps::LruHashMap,
    programs::FExitContext,
};
use watcher_common::{FLAG_KERNEL_INTERNAL, FLAG_PATH_TRUNCATED, FileRecord, PATH_BUF_CAP};

use crate::{
    file_ops::{begin_record, scratch},
    kernel::{inode_identity, read, root_mount_of},
    maps::{INFLIGHT_PENDING, PENDING, none_inflight, off, offsets, offsets_valid, self_tgid},
    path::{under_root, write_dentry_path},
};

/// A family of hooked functions, counted apart: a call of one family inside one of another
/// (overlayfs's `vfs_setxattr` inside the `vfs_mkdir` of a mkdir system call) is the
/// outermost of its own family.
#[derive(Clone, Copy)]
pub enum Family {
    /// vfs_setxattr, vfs_removexattr.
    Xattr = 0,
    /// vfs_create, vfs_mknod, vfs_mkdir, vfs_unlink, vfs_rmdir, vfs_rename, vfs_link.
    Namespace = 1,
}

const FAMILIES: usize = 2;

/// Per thread (pid_tgid): how many calls of each [`Family`] it is inside. LRU: an entry left
/// behind by a detach between an fentry and its fexit is evicted, not kept forever.
#[map]
static FENTRY_DEPTH: LruHashMap<u64, [u32; FAMILIES]> = LruHashMap::with_max_entries(8192, 0);

/// Enters one level of `family`; returns the level entered (1: the outermost call).
#[inline(always)]
pub fn enter_depth(family: Family) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let f = family as usize & (FAMILIES - 1);
    match FENTRY_DEPTH.get_ptr_mut(&id) {
        // SAFETY: a valid map value pointer, touched only by its own thread.
        Some(depth) => unsafe {
            let level = (*depth)[f].saturating_add(1);
            (*depth)[f] = level;
            level
        },
        None => {
            let mut depth = [0u32; FAMILIES];
            depth[f] = 1;
            let _ = FENTRY_DEPTH.insert(&id, &depth, 0);
            1
        }
    }
}

/// Leaves one level of `family`; returns the level left (1: the outermost call).
#[inline(always)]
pub fn leave_depth(family: Family) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let f = family as usize & (FAMILIES - 1);
    let Some(depth) = FENTRY_DEPTH.get_ptr_mut(&id) else {
        return 1;
    };
    // SAFETY: a valid map value pointer, touched only by its own thread.
    unsafe {
        let level = (*depth)[f];
        (*depth)[f] = level.saturating_sub(1);
        if level <= 1 && (*depth).iter().all(|&d| d == 0) {
            let _ = FENTRY_DEPTH.remove(&id);
        }
        level.max(1)
    }
}

/// Is a call at `level` of its family the thread's own watched system call, one whose
/// operation is among `ops` (reported by its tracepoints)?
#[inline(always)]
pub fn syscall_own(level: u32, ops: &[u16]) -> bool {
    if level != 1 || none_inflight(INFLIGHT_PENDING) {
        return false;
    }
    let id = bpf_get_current_pid_tgid();
    // SAFETY: map lookup; the value is only read.
    match unsafe { PENDING.get(&id) } {
        Some(p) => ops.contains(&p.op),
        None => false,
    }
}

/// Begins the record of an operation `op` the kernel made itself on `dentry`: this CPU's
/// scratch record, flagged kernel-internal, with the dentry's path and (when it still has
/// one) its inode's identity. None when the dentry is not under a root (or the record cannot
/// be made).
#[inline(always)]
pub fn begin_internal(op: u16, dentry: u64) -> Option<*mut FileRecord> {
    if !offsets_valid() || dentry == 0 {
        return None;
    }
    if (bpf_get_current_pid_tgid() >> 32) as u32 == self_tgid() {
        return None;
    }
    let mnt = root_mount_of(dentry);
    if mnt == 0 {
        return None;
    }
    let rec = scratch()?;
    begin_record(rec, op);
    // SAFETY: `rec` is this CPU's scratch record; all tail writes are masked (see path.rs).
    unsafe {
        let FileRecord { fixed: r, data } = &mut *rec;
        r.flags = FLAG_KERNEL_INTERNAL;
        let (len, truncated) = write_dentry_path(data.as_mut_ptr(), mnt, dentry, PATH_BUF_CAP);
        // Only an absolute path can be under a root (and is not counted as unresolved: most
        // operations of the node are nowhere near a root).
        if len == 0 || data[0] != b'/' {
            return None;
        }
        r.path_len = len as u16;
        if truncated {
            r.flags |= FLAG_PATH_TRUNCATED;
        }
        if !under_root(&raw mut r.lpm_prefixlen, len) {
            return None;
        }
        let inode: u64 = read(dentry, off(&offsets().dentry_d_inode));
        let (dev, ino, mode, _) = inode_identity(inode);
        r.dev = dev;
        r.ino = ino;
        r.mode = mode;
    }
    Some(rec)
}

/// Argument `n` read from the trampoline's saved arguments with a helper instead of a direct
/// context access. 6.1's verifier refuses a direct read of a `const void *` argument ("arg3
/// type UNKNOWN is not a struct": it does not look through the `const` to see a void
/// pointer; later kernels do), which `vfs_setxattr`'s value is.
#[inline(always)]
pub fn ctx_arg_unchecked(ctx: &FExitContext, n: usize) -> u64 {
    // SAFETY: the context of a tracing program is the array of the function's arguments, one
    // u64 each; bpf_probe_read_kernel copes with any address.
    unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel((ctx.as_ptr() as *const u64).add(n)).unwrap_or(0)
    }
}
