//! fentry/fexit on the VFS xattr functions: the xattr changes the kernel makes itself.
//!
//! The syscall tracepoints see the xattr system calls; they cannot see overlayfs setting
//! `trusted.overlay.*` on its upper or work directory during a copy-up, or when a directory is
//! created where a lower one was removed (`trusted.overlay.opaque`). Both go through
//! `vfs_setxattr` (`ovl_do_setxattr`), as do the system calls. Here:
//!
//! - `fentry_*` counts how deep the thread is in the function (`XATTR_DEPTH`), and `fexit_*`
//!   takes the count back. The outermost call made while a watched xattr system call of the
//!   thread is in flight (its `PENDING` entry, file_ops.rs) is that system call's own change:
//!   the tracepoint pair reports it, with its arguments, so it is skipped here (no double
//!   report). Every other successful call is a change the kernel made on the thread's behalf:
//!   reported as a setxattr/removexattr record flagged [`FLAG_KERNEL_INTERNAL`], attributed
//!   to the current task (the process whose mkdir or write triggered it).
//! - The path is built from the dentry. A dentry does not say which mount it was reached
//!   through (overlayfs reaches its upper layer through a private mount), so the path is
//!   built through the mount of the task's root directory, and only when the dentry is on
//!   that mount's filesystem and the mount shows the whole filesystem: then it is the path
//!   the file has from `/`. Otherwise the change is not reported (the kernel-internal
//!   changes of an upper directory on another filesystem are not seen yet: docs/kernels.md).
//!
//! Argument positions: the programs read `(idmap or user_namespace, dentry, name, value, size,
//! flags)` for vfs_setxattr and `(idmap or user_namespace, dentry, name)` for
//! vfs_removexattr (5.12 and later). Userspace checks the running kernel's prototype in BTF
//! before loading them and leaves a program whose prototype differs unattached
//! (watcher/src/kernel/backend.rs).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_probe_read_kernel, bpf_probe_read_kernel_str},
    },
    macros::{fentry, fexit, map},
    maps::LruHashMap,
    programs::{FEntryContext, FExitContext},
};
use watcher_common::{
    FLAG_KERNEL_INTERNAL, FLAG_PATH_TRUNCATED, FLAG_VALUE_TRUNCATED, FileRecord, PATH_BUF_CAP,
    XATTR_NAME_CAP, XATTR_VALUE_CAP, op,
};

use crate::{
    file_ops::{begin_record, is_overlay_xattr, scratch, send},
    kernel::{inode_identity, read, root_mount_of},
    maps::{
        INFLIGHT_PENDING, PENDING, capturing, none_inflight, off, offsets, offsets_valid, self_tgid,
    },
    path::{MASK, MASK2, under_root, write_dentry_path},
};

/// Per thread (pid_tgid): how many xattr VFS calls it is inside. LRU: an entry left behind by
/// a detach between an fentry and its fexit is evicted, not kept forever.
#[map]
static XATTR_DEPTH: LruHashMap<u64, u32> = LruHashMap::with_max_entries(8192, 0);

#[inline(always)]
fn enter_depth() {
    let id = bpf_get_current_pid_tgid();
    match XATTR_DEPTH.get_ptr_mut(&id) {
        // SAFETY: a valid map value pointer, touched only by its own thread.
        Some(depth) => unsafe { *depth = (*depth).saturating_add(1) },
        None => {
            let _ = XATTR_DEPTH.insert(&id, &1, 0);
        }
    }
}

/// Leaves one level; returns the level left (1: the outermost call).
#[inline(always)]
fn leave_depth() -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(depth) = XATTR_DEPTH.get_ptr_mut(&id) else {
        return 1;
    };
    // SAFETY: a valid map value pointer, touched only by its own thread.
    let level = unsafe { *depth };
    if level <= 1 {
        let _ = XATTR_DEPTH.remove(&id);
        1
    } else {
        // SAFETY: as above.
        unsafe { *depth = level - 1 };
        level
    }
}

/// Is this call the thread's own watched xattr system call (reported by its tracepoints)?
#[inline(always)]
fn syscall_own(level: u32) -> bool {
    if level != 1 || none_inflight(INFLIGHT_PENDING) {
        return false;
    }
    let id = bpf_get_current_pid_tgid();
    // SAFETY: map lookup; the value is only read.
    match unsafe { PENDING.get(&id) } {
        Some(p) => p.op == op::SETXATTR || p.op == op::REMOVEXATTR,
        None => false,
    }
}

/// Reports a successful xattr change of `dentry` made by the kernel itself, if it is under a
/// root.
#[inline(always)]
fn report(op: u16, dentry: u64, name: u64, value: u64, size: u64) {
    if !offsets_valid() || dentry == 0 {
        return;
    }
    if (bpf_get_current_pid_tgid() >> 32) as u32 == self_tgid() {
        return;
    }
    let mnt = root_mount_of(dentry);
    if mnt == 0 {
        return;
    }
    let Some(rec) = scratch() else { return };
    begin_record(rec, op);
    // SAFETY: `rec` is this CPU's scratch record; all tail writes are masked (see path.rs).
    unsafe {
        let FileRecord { fixed: r, data } = &mut *rec;
        r.flags = FLAG_KERNEL_INTERNAL;
        let (len, truncated) = write_dentry_path(data.as_mut_ptr(), mnt, dentry, PATH_BUF_CAP);
        // Only an absolute path can be under a root (and is not counted as unresolved: most
        // xattr changes of the node are nowhere near a root).
        if len == 0 || data[0] != b'/' {
            return;
        }
        r.path_len = len as u16;
        if truncated {
            r.flags |= FLAG_PATH_TRUNCATED;
        }
        if !under_root(&raw mut r.lpm_prefixlen, len) {
            return;
        }
        let inode: u64 = read(dentry, off(&offsets().dentry_d_inode));
        let (dev, ino, mode, _) = inode_identity(inode);
        r.dev = dev;
        r.ino = ino;
        r.mode = mode;

        let name_off = (r.path_len as usize & MASK) & MASK2;
        let n = bpf_probe_read_kernel_str(
            data.as_mut_ptr().add(name_off) as *mut c_void,
            XATTR_NAME_CAP as u32,
            name as *const c_void,
        );
        if n > 0 {
            let name_len = (n as usize - 1) & (XATTR_NAME_CAP - 1);
            r.name_len = name_len as u16;
            if op == op::SETXATTR {
                r.size = size;
                if is_overlay_xattr(data.as_ptr().add(name_off), name_len) {
                    let mut copy = size as usize;
                    if copy > XATTR_VALUE_CAP {
                        copy = XATTR_VALUE_CAP;
                        r.flags |= FLAG_VALUE_TRUNCATED;
                    }
                    let value_off = (name_off + name_len) & MASK2;
                    // The same volatile mask as file_ops::xattr_name_value: 6.1's verifier
                    // needs to see the bound on the length it is given.
                    let copy = core::ptr::read_volatile(&copy) & (2 * XATTR_VALUE_CAP - 1);
                    if bpf_probe_read_kernel(
                        data.as_mut_ptr().add(value_off) as *mut c_void,
                        copy as u32,
                        value as *const c_void,
                    ) == 0
                    {
                        r.value_len = copy as u16;
                    }
                }
            }
        }
    }
    send(rec);
}

/// `int vfs_setxattr(struct mnt_idmap *, struct dentry *, const char *name, const void *value,
/// size_t size, int flags)` (a `struct user_namespace *` first before 6.3).
#[fentry(function = "vfs_setxattr")]
pub fn fentry_vfs_setxattr(_ctx: FEntryContext) -> u32 {
    enter_depth();
    0
}

#[fexit(function = "vfs_setxattr")]
pub fn fexit_vfs_setxattr(ctx: FExitContext) -> u32 {
    let level = leave_depth();
    if !capturing() || syscall_own(level) {
        return 0;
    }
    // Argument 6 of a fexit program on a function of six arguments is its return value.
    let ret = ctx.arg::<u64>(6) as i32;
    if ret != 0 {
        return 0;
    }
    report(
        op::SETXATTR,
        ctx.arg::<u64>(1),
        ctx.arg::<u64>(2),
        ctx_arg_unchecked(&ctx, 3),
        ctx.arg::<u64>(4),
    );
    0
}

/// Argument `n` read from the trampoline's saved arguments with a helper instead of a direct
/// context access. 6.1's verifier refuses a direct read of a `const void *` argument ("arg3
/// type UNKNOWN is not a struct": it does not look through the `const` to see a void
/// pointer; later kernels do), which `vfs_setxattr`'s value is.
#[inline(always)]
fn ctx_arg_unchecked(ctx: &FExitContext, n: usize) -> u64 {
    // SAFETY: the context of a tracing program is the array of the function's arguments, one
    // u64 each; bpf_probe_read_kernel copes with any address.
    unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel((ctx.as_ptr() as *const u64).add(n)).unwrap_or(0)
    }
}

/// `int vfs_removexattr(struct mnt_idmap *, struct dentry *, const char *name)` (a `struct
/// user_namespace *` first before 6.3).
#[fentry(function = "vfs_removexattr")]
pub fn fentry_vfs_removexattr(_ctx: FEntryContext) -> u32 {
    enter_depth();
    0
}

#[fexit(function = "vfs_removexattr")]
pub fn fexit_vfs_removexattr(ctx: FExitContext) -> u32 {
    let level = leave_depth();
    if !capturing() || syscall_own(level) {
        return 0;
    }
    let ret = ctx.arg::<u64>(3) as i32;
    if ret != 0 {
        return 0;
    }
    report(op::REMOVEXATTR, ctx.arg::<u64>(1), ctx.arg::<u64>(2), 0, 0);
    0
}
