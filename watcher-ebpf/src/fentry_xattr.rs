//! fentry/fexit on the VFS xattr functions: the xattr changes the kernel makes itself
//! (overlayfs setting `trusted.overlay.*` on its upper or work directory during a copy-up, or
//! `trusted.overlay.opaque` on a directory created where a lower one was removed), through
//! `vfs_setxattr` (`ovl_do_setxattr`) as the system calls do. The model (depth, a thread's
//! own system call, the path) is fentry.rs's.
//!
//! Argument positions: the programs read `(idmap or user_namespace, dentry, name, value, size,
//! flags)` for vfs_setxattr and `(idmap or user_namespace, dentry, name)` for
//! vfs_removexattr (5.12 and later). Userspace checks the running kernel's prototype in BTF
//! before loading them and leaves a program whose prototype differs unattached
//! (watcher/src/kernel/backend.rs).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_probe_read_kernel_str,
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use watcher_common::{FileRecord, XATTR_NAME_CAP, op};

use crate::{
    fentry::{Family, begin_internal, ctx_arg_unchecked, enter_depth, leave_depth, syscall_own},
    file_ops::{is_overlay_xattr, send, xattr_value},
    maps::capturing,
    path::{MASK, MASK2},
};

/// The system calls whose own VFS call these functions are.
const XATTR_OPS: &[u16] = &[op::SETXATTR, op::REMOVEXATTR];

/// Reports a successful xattr change of `dentry` made by the kernel itself, if it is under a
/// root.
#[inline(always)]
fn report(op: u16, dentry: u64, name: u64, value: u64, size: u64) {
    let Some(rec) = begin_internal(op, dentry) else {
        return;
    };
    // SAFETY: `rec` is this CPU's scratch record; all tail writes are masked (see path.rs).
    unsafe {
        let FileRecord { fixed: r, data } = &mut *rec;
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
                    xattr_value(r, data, (name_off + name_len) & MASK2, value, size, false);
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
    enter_depth(Family::Xattr);
    0
}

#[fexit(function = "vfs_setxattr")]
pub fn fexit_vfs_setxattr(ctx: FExitContext) -> u32 {
    let level = leave_depth(Family::Xattr);
    if !capturing() || syscall_own(level, XATTR_OPS) {
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

/// `int vfs_removexattr(struct mnt_idmap *, struct dentry *, const char *name)` (a `struct
/// user_namespace *` first before 6.3).
#[fentry(function = "vfs_removexattr")]
pub fn fentry_vfs_removexattr(_ctx: FEntryContext) -> u32 {
    enter_depth(Family::Xattr);
    0
}

#[fexit(function = "vfs_removexattr")]
pub fn fexit_vfs_removexattr(ctx: FExitContext) -> u32 {
    let level = leave_depth(Family::Xattr);
    if !capturing() || syscall_own(level, XATTR_OPS) {
        return 0;
    }
    let ret = ctx.arg::<u64>(3) as i32;
    if ret != 0 {
        return 0;
    }
    report(op::REMOVEXATTR, ctx.arg::<u64>(1), ctx.arg::<u64>(2), 0, 0);
    0
}
