//! ctrwatch's eBPF programs: a `sys_enter_*` and a `sys_exit_*` tracepoint program for each
//! watched syscall (a program named after a tracepoint is attached to it; one shared by several
//! syscalls is attached to each of theirs, `watcher_common::SHARED_PROGRAMS`; userspace
//! attaches those the running kernel has), the write family and close for write aggregation, and raw
//! tracepoints on the scheduler for process lifecycle. Every program first checks the capture
//! switch (maps::CAPTURE), which userspace turns on once all are attached and off at the stop.
//!
//! Follow one event: `sys_enter_unlinkat` → file_ops::enter (path.rs resolves and filters) →
//! `exit_unlink` (the exit of unlink, unlinkat and rmdir) → file_ops::exit → ring buffer `EVENTS` (a `watcher_common::FileRecord`) →
//! userspace decodes it beside its layout (`watcher_common::KernelFileOp`).
#![no_std]
#![no_main]
// For the atomic add on the INFLIGHT counts (maps.rs): the eBPF crate is built with nightly.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod fentry;
mod fentry_namespace;
mod fentry_xattr;
mod file_ops;
mod kernel;
mod lifecycle;
mod lsm;
mod maps;
mod path;
mod stages;

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use file_ops::{CWD, NONE, Spec};
use watcher_common::op;

/// creat() is open(O_CREAT | O_WRONLY | O_TRUNC).
const CREAT_FLAGS: u16 = 0o1101;

/// The enter program of a path or fd operation: `$syscall` says where its arguments are,
/// `$exit` how its exit program reads them (see file_ops::rearranged).
macro_rules! file_enter {
    ($enter:ident, $syscall:expr, $exit:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            const SYSCALL: Spec = $syscall;
            const EXIT: Spec = $exit;
            // Evaluated at compile time: the program reads exactly this many arguments.
            const ARGS: usize = SYSCALL.arg_count();
            if !maps::capturing() {
                return 0;
            }
            file_ops::enter::<ARGS>(&ctx, &SYSCALL, &EXIT)
        }
    };
}

/// The exit program of the syscalls whose enter programs stored their arguments as `$spec`
/// lays them out.
macro_rules! file_exit {
    ($exit:ident, $spec:expr) => {
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

/// One enter/exit program pair for a syscall with an exit program of its own.
macro_rules! file_syscall {
    ($enter:ident, $exit:ident, $spec:expr) => {
        file_enter!($enter, $spec, $spec);
        file_exit!($exit, $spec);
    };
}

// Shared programs. The kernel verifies a program once however many tracepoints it is attached
// to, and verification is nearly all of a fresh start (docs/startup.md): the syscalls of one
// family (rename, renameat, renameat2) have one exit program, attached to each member's
// `sys_exit_*` tracepoint, and syscalls with the same arguments one enter program. The enter
// programs stay one per syscall otherwise: each knows where its syscall's arguments are, and
// stores them in the layout of the family's widest member, which the shared exit reads
// (file_ops::rearranged); the exit checks the entry is its syscall's (`__syscall_nr`). Which program
// is attached where: `watcher_common::SHARED_PROGRAMS` (a program not listed there is attached
// to the tracepoint of its own name).

// Opens for writing (read-only opens leave at the first check).
const OPEN: Spec = Spec::new(op::OPEN_WRITE).at(0, 1).flags(2).mode(3);
file_exit!(exit_open, OPEN);
file_enter!(
    sys_enter_open,
    Spec::new(op::OPEN_WRITE).path(0).flags(1).mode(2),
    OPEN
);
file_enter!(sys_enter_openat, OPEN, OPEN);
file_enter!(
    sys_enter_creat,
    Spec::new(op::OPEN_WRITE)
        .path(0)
        .mode(1)
        .implicit(CREAT_FLAGS),
    OPEN
);
// openat2's mode is in its `struct open_how`: the record's mode is the opened inode's, as for
// fd operations, so it keeps an exit of its own.
file_syscall!(
    sys_enter_openat2,
    sys_exit_openat2,
    Spec::new(op::OPEN_WRITE).at(0, 1).indirect(2)
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
// Namespace changes. unlink and rmdir have no flags: their records say 0, as before the
// exit was shared, and rmdir's op is set by its enter.
const UNLINK: Spec = Spec::new(op::UNLINK).at(0, 1).flags(2);
file_exit!(exit_unlink, UNLINK);
file_enter!(sys_enter_unlink, Spec::new(op::UNLINK).path(0), UNLINK);
file_enter!(sys_enter_unlinkat, UNLINK, UNLINK);
file_enter!(sys_enter_rmdir, Spec::new(op::RMDIR).path(0), UNLINK);
const RENAME: Spec = Spec::new(op::RENAME).at(0, 1).to(2, 3).flags(4);
file_exit!(exit_rename, RENAME);
file_enter!(
    sys_enter_rename,
    Spec::new(op::RENAME).path(0).to(CWD, 1),
    RENAME
);
file_enter!(
    sys_enter_renameat,
    Spec::new(op::RENAME).at(0, 1).to(2, 3),
    RENAME
);
file_enter!(sys_enter_renameat2, RENAME, RENAME);
const LINK: Spec = Spec::new(op::LINK).at(0, 1).to(2, 3).flags(4);
file_exit!(exit_link, LINK);
file_enter!(sys_enter_link, Spec::new(op::LINK).path(0).to(CWD, 1), LINK);
file_enter!(sys_enter_linkat, LINK, LINK);
const SYMLINK: Spec = Spec::new(op::SYMLINK).at(1, 2).raw2(0);
file_exit!(exit_symlink, SYMLINK);
file_enter!(
    sys_enter_symlink,
    Spec::new(op::SYMLINK).path(1).raw2(0),
    SYMLINK
);
file_enter!(sys_enter_symlinkat, SYMLINK, SYMLINK);
const MKNOD: Spec = Spec::new(op::MKNOD).at(0, 1).mode(2).rdev(3);
file_exit!(exit_mknod, MKNOD);
file_enter!(
    sys_enter_mknod,
    Spec::new(op::MKNOD).path(0).mode(1).rdev(2),
    MKNOD
);
file_enter!(sys_enter_mknodat, MKNOD, MKNOD);
const MKDIR: Spec = Spec::new(op::MKDIR).at(0, 1).mode(2);
file_exit!(exit_mkdir, MKDIR);
file_enter!(sys_enter_mkdir, Spec::new(op::MKDIR).path(0).mode(1), MKDIR);
file_enter!(sys_enter_mkdirat, MKDIR, MKDIR);
// Extended attributes (values kept for the overlay namespaces). setxattr and lsetxattr take
// the same arguments: one enter and one exit program for both.
const SETXATTR: Spec = Spec::new(op::SETXATTR).path(0).xattr(1, 2, 3).flags(4);
file_syscall!(enter_setxattr, exit_setxattr, SETXATTR);
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
// removexattr and lremovexattr: one enter program for both.
const REMOVEXATTR: Spec = Spec::new(op::REMOVEXATTR)
    .at(0, 1)
    .flags(2)
    .xattr(3, NONE, NONE);
file_exit!(exit_removexattr, REMOVEXATTR);
file_enter!(
    enter_removexattr,
    Spec::new(op::REMOVEXATTR).path(0).xattr(1, NONE, NONE),
    REMOVEXATTR
);
file_enter!(sys_enter_removexattrat, REMOVEXATTR, REMOVEXATTR);
file_syscall!(
    sys_enter_fremovexattr,
    sys_exit_fremovexattr,
    Spec::new(op::REMOVEXATTR).fd(0).xattr(1, NONE, NONE)
);
// Permissions and ownership.
const CHMOD: Spec = Spec::new(op::CHMOD).at(0, 1).mode(2).flags(3);
file_exit!(exit_chmod, CHMOD);
file_enter!(sys_enter_chmod, Spec::new(op::CHMOD).path(0).mode(1), CHMOD);
file_enter!(
    sys_enter_fchmodat,
    Spec::new(op::CHMOD).at(0, 1).mode(2),
    CHMOD
);
file_enter!(sys_enter_fchmodat2, CHMOD, CHMOD);
file_syscall!(
    sys_enter_fchmod,
    sys_exit_fchmod,
    Spec::new(op::CHMOD).fd(0).mode(1)
);
// chown and lchown: one enter program for both.
const CHOWN: Spec = Spec::new(op::CHOWN).at(0, 1).owner(2, 3).flags(4);
file_exit!(exit_chown, CHOWN);
file_enter!(enter_chown, Spec::new(op::CHOWN).path(0).owner(1, 2), CHOWN);
file_enter!(sys_enter_fchownat, CHOWN, CHOWN);
file_syscall!(
    sys_enter_fchown,
    sys_exit_fchown,
    Spec::new(op::CHOWN).fd(0).owner(1, 2)
);

// The stages that walk paths, reached by tail calls from the programs above (stages.rs):
// each is verified once instead of in every program that needs a path. They are not attached
// to any tracepoint (`watcher_common::TAIL_CALLED_PROGRAMS`).
#[tracepoint]
pub fn enter_path(ctx: TracePointContext) -> u32 {
    file_ops::enter_path(&ctx)
}

#[tracepoint]
pub fn enter_path2(_ctx: TracePointContext) -> u32 {
    file_ops::enter_path2()
}

#[tracepoint]
pub fn exit_path(ctx: TracePointContext) -> u32 {
    file_ops::exit_path(&ctx)
}

#[tracepoint]
pub fn exit_path2(_ctx: TracePointContext) -> u32 {
    file_ops::exit_path2()
}

#[tracepoint]
pub fn write_path(_ctx: TracePointContext) -> u32 {
    file_ops::write_path()
}

#[tracepoint]
pub fn event_path(_ctx: TracePointContext) -> u32 {
    file_ops::event_path()
}

// Writes, aggregated per (process, fd) and reported at close. One exit program for the whole
// family (it reads only the result), one enter program for those whose fd is argument 0.
#[tracepoint]
pub fn enter_write(ctx: TracePointContext) -> u32 {
    if !maps::capturing() {
        return 0;
    }
    file_ops::enter_write(&ctx, 0)
}

/// copy_file_range(fd_in, off_in, fd_out, ...): the destination is argument 2.
#[tracepoint]
pub fn sys_enter_copy_file_range(ctx: TracePointContext) -> u32 {
    if !maps::capturing() {
        return 0;
    }
    file_ops::enter_write(&ctx, 2)
}

#[tracepoint]
pub fn exit_write(ctx: TracePointContext) -> u32 {
    if !maps::capturing() {
        return 0;
    }
    file_ops::exit_write(&ctx)
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    if !maps::capturing() {
        return 0;
    }
    file_ops::enter_close(&ctx)
}

// dup2/dup3 close their newfd: a shell restoring fd 1 after a redirection ends the write
// aggregate of the redirected file (file_ops::enter_dup).
// One program for both.
#[tracepoint]
pub fn enter_dup(ctx: TracePointContext) -> u32 {
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
