//! ctrwatch's eBPF programs: one `sys_enter_*`/`sys_exit_*` tracepoint pair per watched
//! syscall (the program's name is the tracepoint's, userspace attaches each by name when the
//! running kernel has it), the write family and close for write aggregation, and raw
//! tracepoints on the scheduler for process lifecycle. Every program first checks the capture
//! switch (maps::CAPTURE), which userspace turns on once all are attached and off at the stop.
//!
//! Follow one event: `sys_enter_unlinkat` → file_ops::enter (path.rs resolves and filters) →
//! `sys_exit_unlinkat` → file_ops::exit → ring buffer `EVENTS` (a `watcher_common::FileRecord`) →
//! userspace decodes it beside its layout (`watcher_common::KernelFileOp`).
#![no_std]
#![no_main]
// For the atomic add on the INFLIGHT counts (maps.rs): the eBPF crate is built with nightly.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod fentry;
mod file_ops;
mod kernel;
mod lifecycle;
mod maps;
mod path;

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use file_ops::{CWD, NONE, Spec};
use watcher_common::op;

/// creat() is open(O_CREAT | O_WRONLY | O_TRUNC).
const CREAT_FLAGS: u16 = 0o1101;

/// One enter/exit program pair for a path or fd operation described by a `Spec`.
macro_rules! file_syscall {
    ($enter:ident, $exit:ident, $spec:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            const SPEC: Spec = $spec;
            // Evaluated at compile time: the program reads exactly this many arguments.
            const ARGS: usize = SPEC.arg_count();
            if !maps::capturing() {
                return 0;
            }
            file_ops::enter::<ARGS>(&ctx, &SPEC)
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            const SPEC: Spec = $spec;
            if !maps::capturing() {
                return 0;
            }
            file_ops::exit(&ctx, &SPEC)
        }
    };
}

/// One enter/exit program pair for a write-family syscall; `$fd` is the argument holding the
/// destination fd.
macro_rules! write_syscall {
    ($enter:ident, $exit:ident, $fd:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            if !maps::capturing() {
                return 0;
            }
            file_ops::enter_write(&ctx, $fd)
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            if !maps::capturing() {
                return 0;
            }
            file_ops::exit_write(&ctx)
        }
    };
}

// Opens for writing (read-only opens leave at the first check).
file_syscall!(
    sys_enter_open,
    sys_exit_open,
    Spec::new(op::OPEN_WRITE).path(0).flags(1).mode(2)
);
file_syscall!(
    sys_enter_openat,
    sys_exit_openat,
    Spec::new(op::OPEN_WRITE).at(0, 1).flags(2).mode(3)
);
file_syscall!(
    sys_enter_openat2,
    sys_exit_openat2,
    Spec::new(op::OPEN_WRITE).at(0, 1).indirect(2)
);
file_syscall!(
    sys_enter_creat,
    sys_exit_creat,
    Spec::new(op::OPEN_WRITE)
        .path(0)
        .mode(1)
        .implicit(CREAT_FLAGS)
);
// Size changes.
file_syscall!(
    sys_enter_truncate,
    sys_exit_truncate,
    Spec::new(op::TRUNCATE).path(0).size(1)
);
file_syscall!(
    sys_enter_ftruncate,
    sys_exit_ftruncate,
    Spec::new(op::TRUNCATE).fd(0).size(1)
);
file_syscall!(
    sys_enter_fallocate,
    sys_exit_fallocate,
    Spec::new(op::FALLOCATE).fd(0).flags(1).offset(2).size(3)
);
// Namespace changes.
file_syscall!(
    sys_enter_unlink,
    sys_exit_unlink,
    Spec::new(op::UNLINK).path(0)
);
file_syscall!(
    sys_enter_unlinkat,
    sys_exit_unlinkat,
    Spec::new(op::UNLINK).at(0, 1).flags(2)
);
file_syscall!(
    sys_enter_rmdir,
    sys_exit_rmdir,
    Spec::new(op::RMDIR).path(0)
);
file_syscall!(
    sys_enter_rename,
    sys_exit_rename,
    Spec::new(op::RENAME).path(0).to(CWD, 1)
);
file_syscall!(
    sys_enter_renameat,
    sys_exit_renameat,
    Spec::new(op::RENAME).at(0, 1).to(2, 3)
);
file_syscall!(
    sys_enter_renameat2,
    sys_exit_renameat2,
    Spec::new(op::RENAME).at(0, 1).to(2, 3).flags(4)
);
file_syscall!(
    sys_enter_link,
    sys_exit_link,
    Spec::new(op::LINK).path(0).to(CWD, 1)
);
file_syscall!(
    sys_enter_linkat,
    sys_exit_linkat,
    Spec::new(op::LINK).at(0, 1).to(2, 3).flags(4)
);
file_syscall!(
    sys_enter_symlink,
    sys_exit_symlink,
    Spec::new(op::SYMLINK).path(1).raw2(0)
);
file_syscall!(
    sys_enter_symlinkat,
    sys_exit_symlinkat,
    Spec::new(op::SYMLINK).at(1, 2).raw2(0)
);
file_syscall!(
    sys_enter_mknod,
    sys_exit_mknod,
    Spec::new(op::MKNOD).path(0).mode(1).rdev(2)
);
file_syscall!(
    sys_enter_mknodat,
    sys_exit_mknodat,
    Spec::new(op::MKNOD).at(0, 1).mode(2).rdev(3)
);
file_syscall!(
    sys_enter_mkdir,
    sys_exit_mkdir,
    Spec::new(op::MKDIR).path(0).mode(1)
);
file_syscall!(
    sys_enter_mkdirat,
    sys_exit_mkdirat,
    Spec::new(op::MKDIR).at(0, 1).mode(2)
);
// Extended attributes (values kept for the overlay namespaces).
file_syscall!(
    sys_enter_setxattr,
    sys_exit_setxattr,
    Spec::new(op::SETXATTR).path(0).xattr(1, 2, 3).flags(4)
);
file_syscall!(
    sys_enter_lsetxattr,
    sys_exit_lsetxattr,
    Spec::new(op::SETXATTR).path(0).xattr(1, 2, 3).flags(4)
);
file_syscall!(
    sys_enter_fsetxattr,
    sys_exit_fsetxattr,
    Spec::new(op::SETXATTR).fd(0).xattr(1, 2, 3).flags(4)
);
file_syscall!(
    sys_enter_setxattrat,
    sys_exit_setxattrat,
    Spec::new(op::SETXATTR)
        .at(0, 1)
        .xattr(3, NONE, NONE)
        .indirect(4)
);
file_syscall!(
    sys_enter_removexattr,
    sys_exit_removexattr,
    Spec::new(op::REMOVEXATTR).path(0).xattr(1, NONE, NONE)
);
file_syscall!(
    sys_enter_lremovexattr,
    sys_exit_lremovexattr,
    Spec::new(op::REMOVEXATTR).path(0).xattr(1, NONE, NONE)
);
file_syscall!(
    sys_enter_fremovexattr,
    sys_exit_fremovexattr,
    Spec::new(op::REMOVEXATTR).fd(0).xattr(1, NONE, NONE)
);
file_syscall!(
    sys_enter_removexattrat,
    sys_exit_removexattrat,
    Spec::new(op::REMOVEXATTR)
        .at(0, 1)
        .flags(2)
        .xattr(3, NONE, NONE)
);
// Permissions and ownership.
file_syscall!(
    sys_enter_chmod,
    sys_exit_chmod,
    Spec::new(op::CHMOD).path(0).mode(1)
);
file_syscall!(
    sys_enter_fchmod,
    sys_exit_fchmod,
    Spec::new(op::CHMOD).fd(0).mode(1)
);
file_syscall!(
    sys_enter_fchmodat,
    sys_exit_fchmodat,
    Spec::new(op::CHMOD).at(0, 1).mode(2)
);
file_syscall!(
    sys_enter_fchmodat2,
    sys_exit_fchmodat2,
    Spec::new(op::CHMOD).at(0, 1).mode(2).flags(3)
);
file_syscall!(
    sys_enter_chown,
    sys_exit_chown,
    Spec::new(op::CHOWN).path(0).owner(1, 2)
);
file_syscall!(
    sys_enter_lchown,
    sys_exit_lchown,
    Spec::new(op::CHOWN).path(0).owner(1, 2)
);
file_syscall!(
    sys_enter_fchown,
    sys_exit_fchown,
    Spec::new(op::CHOWN).fd(0).owner(1, 2)
);
file_syscall!(
    sys_enter_fchownat,
    sys_exit_fchownat,
    Spec::new(op::CHOWN).at(0, 1).owner(2, 3).flags(4)
);

// Writes, aggregated per (process, fd) and reported at close.
write_syscall!(sys_enter_write, sys_exit_write, 0);
write_syscall!(sys_enter_pwrite64, sys_exit_pwrite64, 0);
write_syscall!(sys_enter_writev, sys_exit_writev, 0);
write_syscall!(sys_enter_pwritev, sys_exit_pwritev, 0);
write_syscall!(sys_enter_pwritev2, sys_exit_pwritev2, 0);
write_syscall!(sys_enter_copy_file_range, sys_exit_copy_file_range, 2);
write_syscall!(sys_enter_sendfile64, sys_exit_sendfile64, 0);

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    if !maps::capturing() {
        return 0;
    }
    file_ops::enter_close(&ctx)
}

// dup2/dup3 close their newfd: a shell restoring fd 1 after a redirection ends the write
// aggregate of the redirected file (file_ops::enter_dup).
#[tracepoint]
pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
    file_ops::enter_dup(&ctx)
}

#[tracepoint]
pub fn sys_enter_dup3(ctx: TracePointContext) -> u32 {
    file_ops::enter_dup(&ctx)
}

// Which inode a rename replaced: filesystem tracepoints that see an inode after its link count
// dropped. Attached only where the kernel has them (watcher/src/kernel/capabilities.rs,
// RENAME_TARGET_HOOKS, which also checks each argument's type in BTF).

/// `ext4_mark_inode_dirty(struct inode *inode, unsigned long IP)`: ext4_rename marks the
/// target dirty right after dropping its link, inside the syscall, even when the target is
/// still open elsewhere (its eviction then comes later, at the last close).
#[raw_tracepoint(tracepoint = "ext4_mark_inode_dirty")]
pub fn ext4_mark_inode_dirty(ctx: RawTracePointContext) -> u32 {
    if !maps::capturing() {
        return 0;
    }
    // Argument 0 of this tracepoint is the inode (checked against BTF before attaching).
    file_ops::on_unlinked_inode(ctx.arg::<u64>(0))
}

/// `btrfs_inode_evict(const struct inode *inode)`: the replaced target is evicted at the end of
/// the rename, when its dentry is released; a target still open elsewhere is evicted only at
/// its last close, after the rename's exit, and is not seen.
#[raw_tracepoint(tracepoint = "btrfs_inode_evict")]
pub fn btrfs_inode_evict(ctx: RawTracePointContext) -> u32 {
    if !maps::capturing() {
        return 0;
    }
    file_ops::on_unlinked_inode(ctx.arg::<u64>(0))
}

/// `xfs_iunlink(struct xfs_inode *ip)`: the inode, now without links, is put on the unlinked
/// list, inside the rename whether or not it is still open.
#[raw_tracepoint(tracepoint = "xfs_iunlink")]
pub fn xfs_iunlink(ctx: RawTracePointContext) -> u32 {
    if !maps::capturing() {
        return 0;
    }
    file_ops::on_unlinked_inode(file_ops::xfs_vfs_inode(ctx.arg::<u64>(0)))
}

/// `xfs_iunlink_remove(struct xfs_inode *ip)`: taken off the unlinked list again. A
/// RENAME_WHITEOUT rename allocates its whiteout as an unlinked temporary inode and links it
/// in later: that one was not a replaced target.
#[raw_tracepoint(tracepoint = "xfs_iunlink_remove")]
pub fn xfs_iunlink_remove(ctx: RawTracePointContext) -> u32 {
    if !maps::capturing() {
        return 0;
    }
    file_ops::on_relinked_inode(file_ops::xfs_vfs_inode(ctx.arg::<u64>(0)))
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> u32 {
    if !maps::capturing() {
        return 0;
    }
    lifecycle::on_exec(&ctx)
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> u32 {
    if !maps::capturing() {
        return 0;
    }
    lifecycle::on_fork(&ctx)
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> u32 {
    if !maps::capturing() {
        return 0;
    }
    lifecycle::on_exit(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
