//! fentry/fexit on the VFS namespace functions: the files and directories the kernel creates,
//! removes, renames and links itself. overlayfs does all of these on its upper and work
//! directories on a process's behalf: a whiteout (a 0/0 character device, `vfs_mknod` in
//! `work/`, then linked and renamed over the removed name in `upper/`), the copy-up of a
//! directory (`vfs_mkdir` in `work/`, renamed into `upper/`), of a symlink (`vfs_symlink`) or
//! of a file (`vfs_create` in `work/` and a rename, or an O_TMPFILE linked into `upper/`), the
//! upper file it unlinks or
//! the upper directory it removes when a merged one is. The model (depth, a thread's own
//! system call, the path) is fentry.rs's; the records are the tracepoints' (op::MKNOD with
//! mode and device, op::RENAME and op::LINK with a second path), flagged kernel-internal.
//!
//! A rename moves the dentry: once `vfs_rename` has returned, its old dentry has the new
//! name. So the rename's record is begun with the old path by the fentry program and kept
//! per thread (`PAIRS`) until the fexit program, which adds the new path and sends it when
//! the rename succeeded. A link is recorded the same way (its old path first).
//!
//! Argument positions (5.12 and later; `struct mnt_idmap *` since 6.3 where a `struct
//! user_namespace *` was): `vfs_create(ns, dir, dentry, mode, want_excl)`,
//! `vfs_mknod(ns, dir, dentry, mode, dev)`, `vfs_mkdir(ns, dir, dentry, mode)`,
//! `vfs_symlink(ns, dir, dentry, oldname)`,
//! `vfs_unlink(ns, dir, dentry, delegated)`, `vfs_rmdir(ns, dir, dentry)`,
//! `vfs_link(old_dentry, ns, dir, new_dentry, delegated)`, `vfs_rename(struct renamedata *)`
//! (its `old_dentry` and `flags` at the offsets the kernel's BTF gives); each returns an int
//! (vfs_mkdir returns a dentry since 6.15: not attached there). Userspace checks them in BTF
//! (watcher/src/kernel/backend.rs).

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_probe_read_kernel, bpf_probe_read_kernel_str},
    },
    macros::{fentry, fexit, map},
    maps::LruHashMap,
    programs::{FEntryContext, FExitContext},
};
use core::ffi::c_void;

use watcher_common::{FLAG_PATH2_TRUNCATED, FileRecord, PATH_BUF_CAP, PATH_CAP, op};

use crate::{
    fentry::{Family, begin_internal, enter_depth, leave_depth, syscall_own},
    file_ops::send,
    kernel::{read, root_mount_of},
    maps::{SCRATCH2, capturing, off, offsets},
    path::{MASK, MASK2, write_dentry_path},
};

/// Per thread (pid_tgid): the record of a rename or link in flight, begun with its old path
/// by the fentry program (fentry.rs's model allows one per thread: a rename or link does not
/// nest in another of the same thread). LRU: one left behind by a detach is evicted.
#[map]
static PAIRS: LruHashMap<u64, FileRecord> = LruHashMap::with_max_entries(256, 0);

/// Reports a successful operation `op` of the kernel on `dentry` with the mode and (for
/// mknod, kernel dev_t) the device it was asked for.
#[inline(always)]
fn report(op: u16, dentry: u64, mode: Option<u32>, dev: u32) {
    let Some(rec) = begin_internal(op, dentry) else {
        return;
    };
    // SAFETY: this CPU's scratch record.
    unsafe {
        let r = &mut (*rec).fixed;
        if let Some(mode) = mode {
            r.mode = mode & 0xffff;
        }
        if op == op::MKNOD {
            // The record carries mknod's device in userspace's encoding (the system call's
            // argument): from the kernel's dev_t (major << 20 | minor).
            let (major, minor) = (dev >> 20, dev & 0xf_ffff);
            r.rdev = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        }
    }
    send(rec);
}

/// The fexit side of a one-dentry function: leaves the level and tells whether to report
/// (capture on, not the thread's own system call of `own`, the call succeeded).
#[inline(always)]
fn succeeded_internal(ret: u64, own: &[u16]) -> bool {
    let level = leave_depth(Family::Namespace);
    capturing() && !syscall_own(level, own) && ret as i32 == 0
}

/// Begins a rename's or link's record with the path of `old` (see the module's doc), unless
/// it is the thread's own system call (`own`) or not under a root.
#[inline(always)]
fn begin_pair(op: u16, old: u64, sys_flags: u32, own: &[u16]) {
    let level = enter_depth(Family::Namespace);
    if !capturing() || syscall_own(level, own) {
        return;
    }
    let Some(rec) = begin_internal(op, old) else {
        return;
    };
    // SAFETY: this CPU's scratch record.
    unsafe { (*rec).fixed.sys_flags = sys_flags };
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the scratch record is a valid map value of PAIRS's value type.
    let _ = PAIRS.insert(&id, unsafe { &*rec }, 0);
}

/// Finishes the thread's rename or link record begun by [`begin_pair`]: adds the path of
/// `new` as its second path and sends it if the call succeeded.
#[inline(always)]
fn finish_pair(new: u64, ret: u64, own: &[u16]) {
    let level = leave_depth(Family::Namespace);
    let id = bpf_get_current_pid_tgid();
    let Some(rec) = PAIRS.get_ptr_mut(&id) else {
        return;
    };
    if capturing() && !syscall_own(level, own) && ret as i32 == 0 {
        let mnt = root_mount_of(new);
        if mnt != 0
            && let Some(s2) = SCRATCH2.get_ptr_mut(0)
        {
            // SAFETY: `rec` is a valid PAIRS value, `s2` this CPU's path scratch; the copy's
            // offset and length are masked (see path.rs).
            unsafe {
                let (len2, truncated) =
                    write_dentry_path((*s2).data.as_mut_ptr(), mnt, new, PATH_BUF_CAP);
                let FileRecord { fixed: r, data } = &mut *rec;
                let tail = r.path_len as usize & MASK;
                let len2 = len2 & MASK;
                if bpf_probe_read_kernel(
                    data.as_mut_ptr().add(tail & MASK2).cast(),
                    len2 as u32,
                    (*s2).data.as_ptr().cast(),
                ) == 0
                {
                    r.path2_len = len2 as u16;
                    if truncated {
                        r.flags |= FLAG_PATH2_TRUNCATED;
                    }
                }
            }
        }
        send(rec);
    }
    let _ = PAIRS.remove(&id);
}

/// `int vfs_create(ns, struct inode *dir, struct dentry *, umode_t mode, bool want_excl)`:
/// a mknod of a regular file calls it, an open with O_CREAT does not (it calls the
/// filesystem's `create` itself).
#[fentry(function = "vfs_create")]
pub fn fentry_vfs_create(_ctx: FEntryContext) -> u32 {
    enter_depth(Family::Namespace);
    0
}

#[fexit(function = "vfs_create")]
pub fn fexit_vfs_create(ctx: FExitContext) -> u32 {
    if succeeded_internal(ctx.arg::<u64>(5), &[op::MKNOD]) {
        report(
            op::CREATE,
            ctx.arg::<u64>(2),
            Some(ctx.arg::<u64>(3) as u32),
            0,
        );
    }
    0
}

/// `int vfs_mknod(ns, struct inode *dir, struct dentry *, umode_t mode, dev_t dev)`: an
/// overlay whiteout is one of a character device 0/0.
#[fentry(function = "vfs_mknod")]
pub fn fentry_vfs_mknod(_ctx: FEntryContext) -> u32 {
    enter_depth(Family::Namespace);
    0
}

#[fexit(function = "vfs_mknod")]
pub fn fexit_vfs_mknod(ctx: FExitContext) -> u32 {
    if succeeded_internal(ctx.arg::<u64>(5), &[op::MKNOD]) {
        report(
            op::MKNOD,
            ctx.arg::<u64>(2),
            Some(ctx.arg::<u64>(3) as u32),
            ctx.arg::<u64>(4) as u32,
        );
    }
    0
}

/// `int vfs_mkdir(ns, struct inode *dir, struct dentry *, umode_t mode)`.
#[fentry(function = "vfs_mkdir")]
pub fn fentry_vfs_mkdir(_ctx: FEntryContext) -> u32 {
    enter_depth(Family::Namespace);
    0
}

#[fexit(function = "vfs_mkdir")]
pub fn fexit_vfs_mkdir(ctx: FExitContext) -> u32 {
    if succeeded_internal(ctx.arg::<u64>(4), &[op::MKDIR]) {
        report(
            op::MKDIR,
            ctx.arg::<u64>(2),
            Some(ctx.arg::<u64>(3) as u32),
            0,
        );
    }
    0
}

/// `int vfs_symlink(ns, struct inode *dir, struct dentry *, const char *oldname)`: the copy-up
/// of a symlink makes one in `work/`. The record's second string is the target as given, as
/// the symlink system call's.
#[fentry(function = "vfs_symlink")]
pub fn fentry_vfs_symlink(_ctx: FEntryContext) -> u32 {
    enter_depth(Family::Namespace);
    0
}

#[fexit(function = "vfs_symlink")]
pub fn fexit_vfs_symlink(ctx: FExitContext) -> u32 {
    if !succeeded_internal(ctx.arg::<u64>(4), &[op::SYMLINK]) {
        return 0;
    }
    let Some(rec) = begin_internal(op::SYMLINK, ctx.arg::<u64>(2)) else {
        return 0;
    };
    // SAFETY: this CPU's scratch record; the offset is masked, the length bounded (PATH_CAP
    // past an offset below PATH_BUF_CAP fits the record's data).
    unsafe {
        let FileRecord { fixed: r, data } = &mut *rec;
        let tail = r.path_len as usize & MASK;
        let n = bpf_probe_read_kernel_str(
            data.as_mut_ptr().add(tail & MASK2).cast(),
            PATH_CAP as u32,
            ctx.arg::<u64>(3) as *const c_void,
        );
        if n > 0 {
            r.path2_len = ((n - 1) as usize & MASK) as u16;
        }
    }
    send(rec);
    0
}

/// `int vfs_unlink(ns, struct inode *dir, struct dentry *, struct inode **delegated)`.
#[fentry(function = "vfs_unlink")]
pub fn fentry_vfs_unlink(_ctx: FEntryContext) -> u32 {
    enter_depth(Family::Namespace);
    0
}

#[fexit(function = "vfs_unlink")]
pub fn fexit_vfs_unlink(ctx: FExitContext) -> u32 {
    if succeeded_internal(ctx.arg::<u64>(4), &[op::UNLINK]) {
        report(op::UNLINK, ctx.arg::<u64>(2), None, 0);
    }
    0
}

/// `int vfs_rmdir(ns, struct inode *dir, struct dentry *)`.
#[fentry(function = "vfs_rmdir")]
pub fn fentry_vfs_rmdir(_ctx: FEntryContext) -> u32 {
    enter_depth(Family::Namespace);
    0
}

#[fexit(function = "vfs_rmdir")]
pub fn fexit_vfs_rmdir(ctx: FExitContext) -> u32 {
    if succeeded_internal(ctx.arg::<u64>(3), &[op::RMDIR]) {
        report(op::RMDIR, ctx.arg::<u64>(2), None, 0);
    }
    0
}

/// `int vfs_link(struct dentry *old, ns, struct inode *dir, struct dentry *new, struct inode
/// **delegated)`: the record's path is the old name, its second path the new one, as the
/// link system call's.
#[fentry(function = "vfs_link")]
pub fn fentry_vfs_link(ctx: FEntryContext) -> u32 {
    begin_pair(op::LINK, ctx.arg::<u64>(0), 0, &[op::LINK]);
    0
}

#[fexit(function = "vfs_link")]
pub fn fexit_vfs_link(ctx: FExitContext) -> u32 {
    finish_pair(ctx.arg::<u64>(3), ctx.arg::<u64>(5), &[op::LINK]);
    0
}

/// `int vfs_rename(struct renamedata *)`: old dentry and flags read at their BTF offsets.
#[fentry(function = "vfs_rename")]
pub fn fentry_vfs_rename(ctx: FEntryContext) -> u32 {
    let o = offsets();
    let rd = ctx.arg::<u64>(0);
    let old: u64 = read(rd, off(&o.renamedata_old_dentry));
    let flags: u32 = read(rd, off(&o.renamedata_flags));
    begin_pair(op::RENAME, old, flags, &[op::RENAME]);
    0
}

#[fexit(function = "vfs_rename")]
pub fn fexit_vfs_rename(ctx: FExitContext) -> u32 {
    // The old dentry has the new name now (d_move): its path is the new path.
    let old: u64 = read(ctx.arg::<u64>(0), off(&offsets().renamedata_old_dentry));
    finish_pair(old, ctx.arg::<u64>(1), &[op::RENAME]);
    0
}
