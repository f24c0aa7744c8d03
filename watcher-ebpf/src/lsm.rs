//! BPF LSM protect mode (issue 15).
//!
//! Each program runs on one LSM hook and decides, cheaply and in the kernel:
//! 1. is protect mode on ([`PROTECT_MODE`]: 0 off, 1 dry-run, 2 enforce)?
//! 2. is the object protected: the inode or one of its ancestors (walking `d_parent` up to
//!    [`PROTECT_WALK_DEPTH`] levels) is in [`PROTECTED`], keyed by (dev, ino), which the daemon
//!    fills from its containerd model (committed snapshots' `fs` dirs, the content store's
//!    blobs, meta.db and the snapshotter's metadata.db)?
//! 3. is the acting process foreign: neither its tgid in [`TRUSTED_TGIDS`] nor its exe's
//!    (dev, ino) in [`TRUSTED_EXES`] (the binaries the ownership rules trust: containerd, its
//!    shims, runc)?
//!
//! Only when all three hold is the operation denied (-EPERM, enforce) or let through
//! (dry-run); when in doubt (a read fails, a map is full), it is allowed: a missed denial is
//! a watch event, a wrong denial breaks a node.
//!
//! Every denial (and, in dry-run, every operation that would have been denied) is sent to
//! the events ring buffer as a file record of the operation flagged [`FLAG_DENIED`] or
//! [`FLAG_WOULD_DENY`] ([`report`]), whether or not it is under a watched root: the object's
//! (dev, ino) and path, the acting task. A record the ring buffer has no room for is counted
//! in [`LOSS_PROTECT`]. The path is built from the dentry: through the file's own mount for
//! file_open and path_truncate; for the inode hooks, which have no mount, through the task's
//! root mount when the dentry is on its filesystem (as the fentry programs do), else it is
//! the path inside its filesystem after `…/` (flagged truncated, and [`FLAG_PATH_IN_FS`]:
//! the daemon names the filesystem's mount point from its mount table).
//!
//! Hooks and the argument each reads (positions checked against BTF by userspace):
//! inode_unlink(dir, dentry) 1; inode_rename(old_dir, old_dentry, new_dir, new_dentry) 1, 3;
//! inode_setxattr(idmap|userns, dentry, ...) 1; inode_removexattr(idmap|userns, dentry,
//! name) 1; file_open(file) 0 (FMODE_WRITE only); path_truncate(path) 0;
//! inode_create(dir, dentry, mode) 1; inode_mknod(dir, dentry, mode, dev) 1;
//! inode_mkdir(dir, dentry, mode) 1; inode_symlink(dir, dentry, old_name) 1;
//! inode_link(old_dentry, dir, new_dentry) 0, 2; inode_rmdir(dir, dentry) 1;
//! file_truncate(file) 0 (6.2+); inode_setattr(idmap, dentry, attr) 1, 2 (6.8+) or
//! inode_setattr(dentry, attr) 0, 1 (before 6.8), two programs of which the one whose
//! prototype matches is attached.
//!
//! The creating hooks: an open with O_CREAT creates the file (inode_create) before
//! file_open runs, so without them a denied `echo x >> BLOB` on a name the store no longer
//! has left an empty file with the blob's name in the store (issue 15's "emptied blob").
//! Their dentry is the new, negative one: the walk starts at its parent. inode_link also checks the old dentry: a hard link out of
//! the store would be a protected inode written through an unprotected path.
//!
//! file_truncate: from 6.2 an open with O_TRUNC (even O_RDONLY|O_TRUNC, which file_open's
//! FMODE_WRITE test lets through) and ftruncate(2) call it instead of path_truncate.
//! inode_setattr denies only a change of mode, owner, group, size or times
//! ([`ATTR_CHANGES`]): the kernel also calls it for a trusted writer's ATTR_KILL_SUID and the
//! like, and a read's atime update does not go through it (touch_atime → inode_update_time).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{lsm, map},
    maps::{Array, HashMap, LruHashMap},
    programs::LsmContext,
};

use watcher_common::{
    FLAG_DENIED, FLAG_PATH_IN_FS, FLAG_PATH_TRUNCATED, FLAG_WOULD_DENY, FileRecord, InodeKey,
    LOSS_PROTECT, PATH_BUF_CAP, PATH_GAP, op,
};

use crate::{
    file_ops::{begin_record, scratch, send_or_count},
    kernel::{current_task, file_inode, file_path, inode_identity, read, read_path, root_mount_of},
    maps::{off, offsets, offsets_valid},
    path::write_dentry_path,
};

/// How many dentries up from the object are looked up in [`PROTECTED`]: a layer's `fs` dir
/// protects what is at most this deep below it (deeper files are allowed: when in doubt,
/// allow).
const PROTECT_WALK_DEPTH: usize = 24;

const EPERM: i32 = 1;
const FMODE_WRITE: u32 = 0x2;
/// `struct iattr`'s `ia_valid` bits a foreign process may not set on a protected inode:
/// ATTR_MODE, ATTR_UID, ATTR_GID, ATTR_SIZE, ATTR_ATIME, ATTR_MTIME (include/linux/fs.h,
/// unchanged since 2.6).
const ATTR_MODE: u32 = 0x1;
const ATTR_OWNER: u32 = 0x2 | 0x4;
const ATTR_SIZE: u32 = 0x8;
const ATTR_CHANGES: u32 = ATTR_MODE | ATTR_OWNER | ATTR_SIZE | 0x10 | 0x20;

/// Slot 0: 0 off, 1 dry-run, 2 enforce.
#[map]
pub static PROTECT_MODE: Array<u32> = Array::with_max_entries(1, 0);

#[map]
/// Not preallocated (BPF_F_NO_PREALLOC): most nodes protect a few thousand inodes.
pub static PROTECTED: HashMap<InodeKey, u8> = HashMap::with_max_entries(65536, 1);

#[map]
pub static TRUSTED_EXES: HashMap<InodeKey, u8> = HashMap::with_max_entries(256, 0);

/// tgids the daemon trusts by other rules (containerd's unit), and the daemon itself.
#[map]
pub static TRUSTED_TGIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(8192, 0);

#[inline(always)]
fn mode() -> u32 {
    PROTECT_MODE.get(0).copied().unwrap_or(0)
}

#[inline(always)]
fn key_of_inode(inode: u64) -> Option<InodeKey> {
    let (dev, ino, _, _) = inode_identity(inode);
    if ino == 0 {
        return None;
    }
    Some(InodeKey { dev, _pad: 0, ino })
}

/// The dentry or one of its first ancestors is protected.
#[inline(always)]
fn protected_dentry(dentry: u64) -> bool {
    let o = offsets();
    let mut d = dentry;
    for _ in 0..PROTECT_WALK_DEPTH {
        if d == 0 {
            return false;
        }
        let inode: u64 = read(d, off(&o.dentry_d_inode));
        if let Some(key) = key_of_inode(inode) {
            // SAFETY: map lookup; the value is only read.
            if unsafe { PROTECTED.get(&key) }.is_some() {
                return true;
            }
        }
        let parent: u64 = read(d, off(&o.dentry_d_parent));
        if parent == d {
            return false;
        }
        d = parent;
    }
    false
}

/// The current process is trusted (not foreign).
#[inline(always)]
fn trusted() -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: map lookup; the value is only read.
    if unsafe { TRUSTED_TGIDS.get(&tgid) }.is_some() {
        return true;
    }
    let o = offsets();
    let mm: u64 = read(current_task(), off(&o.task_mm));
    if mm == 0 {
        // A kernel thread: the kernel's own work is never blocked.
        return true;
    }
    let exe: u64 = read(mm, off(&o.mm_exe_file));
    match key_of_inode(file_inode(exe)) {
        // SAFETY: map lookup; the value is only read.
        Some(key) => unsafe { TRUSTED_EXES.get(&key) }.is_some(),
        // Unknown exe: when in doubt, allow.
        None => true,
    }
}

/// The verdict for operation `op` on `dentry`, reached through mount `mnt` (0: unknown):
/// 0 allow, -EPERM deny. A denial or would-deny is reported.
#[inline(always)]
fn decide(op: u16, mnt: u64, dentry: u64) -> i32 {
    let m = mode();
    if m == 0 || !offsets_valid() || !protected_dentry(dentry) || trusted() {
        return 0;
    }
    let deny = m == 2;
    report(op, mnt, dentry, deny);
    if deny { -EPERM } else { 0 }
}

/// Sends the record of a denial (`deny`) or would-deny of `op` on `dentry`, or counts it lost.
#[inline(always)]
fn report(op: u16, mnt: u64, dentry: u64, deny: bool) {
    let Some(rec) = scratch() else {
        return;
    };
    begin_record(rec, op);
    let mnt = if mnt != 0 { mnt } else { root_mount_of(dentry) };
    // SAFETY: `rec` is this CPU's scratch record; the path is written by write_dentry_path
    // (masked offsets, the tail has room for PATH_GAP before it).
    unsafe {
        let FileRecord { fixed: r, data } = &mut *rec;
        r.flags = if deny { FLAG_DENIED } else { FLAG_WOULD_DENY };
        r.result = if deny { -(EPERM as i64) } else { 0 };
        // No mount to name it by: its path inside its filesystem (write_dentry_path without a
        // mount stops at the filesystem's root) after `…` (the top is unknown). One call
        // either way: each inlined copy is one more for the verifier. The offset goes
        // through map memory (the record's unused `rdev`), which the verifier does not track:
        // as a constant 0 or 3 it would check the walk once for each.
        r.rdev = if mnt != 0 { 0 } else { PATH_GAP.len() as u32 };
        let skip = core::ptr::read_volatile(&raw const r.rdev) as usize & 3;
        r.rdev = 0;
        let (mut len, mut truncated) = write_dentry_path(
            data.as_mut_ptr().add(skip),
            mnt,
            dentry,
            PATH_BUF_CAP - skip,
        );
        if skip != 0 {
            if !truncated {
                // The walk reached the filesystem's root: userspace can name its mount.
                r.flags |= FLAG_PATH_IN_FS;
            }
            data[0] = PATH_GAP[0];
            data[1] = PATH_GAP[1];
            data[2] = PATH_GAP[2];
            len += skip;
            truncated = true;
        }
        r.path_len = len as u16;
        if truncated {
            r.flags |= FLAG_PATH_TRUNCATED;
        }
        let o = offsets();
        let inode: u64 = read(dentry, off(&o.dentry_d_inode));
        let (mut dev, ino, mode, _) = inode_identity(inode);
        if inode == 0 {
            // A create hook's new name has no inode yet: its filesystem is its parent's
            // (the daemon names the mount of a path inside its filesystem by it).
            let parent: u64 = read(dentry, off(&o.dentry_d_parent));
            let sb: u64 = read(
                read::<u64>(parent, off(&o.dentry_d_inode)),
                off(&o.inode_i_sb),
            );
            dev = read(sb, off(&o.sb_s_dev));
        }
        r.dev = dev;
        r.ino = ino;
        r.mode = mode;
    }
    send_or_count(rec, LOSS_PROTECT);
}

/// An earlier LSM program's denial stands.
#[inline(always)]
fn previous(ctx: &LsmContext, nargs: usize) -> i32 {
    // An LSM program's context holds the hook's arguments, then the previous program's
    // return value.
    ctx.arg::<i32>(nargs)
}

#[lsm(hook = "inode_unlink")]
pub fn lsm_inode_unlink(ctx: LsmContext) -> i32 {
    let prev = previous(&ctx, 2);
    if prev != 0 {
        return prev;
    }
    let dentry: u64 = ctx.arg(1);
    let verdict = decide(op::UNLINK, 0, dentry);
    if verdict == 0 {
        forget_removed(dentry);
    }
    verdict
}

/// A protected inode whose removal is allowed (containerd's GC removing a layer's `fs`): its key
/// goes now, not at the daemon's next look a second later, so that the inode number, which
/// ext4 hands out again at once, cannot protect a new container's directory by mistake. If
/// the removal then fails (a directory not empty), the inode is left unprotected: when in
/// doubt, allow. (Also a file with other hard links: unprotected; the store's files have
/// none.)
#[inline(always)]
fn forget_removed(dentry: u64) {
    if mode() == 0 || !offsets_valid() {
        return;
    }
    let inode: u64 = read(dentry, off(&offsets().dentry_d_inode));
    if let Some(key) = key_of_inode(inode) {
        let _ = PROTECTED.remove(&key);
    }
}

/// The verdict of `op`, a hook with two dentries, its arguments `a` and `b` (of `nargs`):
/// denied when either is.
#[inline(always)]
fn decide_two(ctx: &LsmContext, nargs: usize, op: u16, a: usize, b: usize) -> i32 {
    let prev = previous(ctx, nargs);
    if prev != 0 {
        return prev;
    }
    if mode() == 0 {
        return 0;
    }
    // One verdict (and one record) per call: on the first name when it is protected, else
    // on the second (one place that builds a path: each is a copy the verifier checks).
    let first: u64 = ctx.arg(a);
    let dentry = if protected_dentry(first) {
        first
    } else {
        ctx.arg::<u64>(b)
    };
    decide(op, 0, dentry)
}

#[lsm(hook = "inode_rename")]
pub fn lsm_inode_rename(ctx: LsmContext) -> i32 {
    decide_two(&ctx, 4, op::RENAME, 1, 3)
}

#[lsm(hook = "inode_setxattr")]
pub fn lsm_inode_setxattr(ctx: LsmContext) -> i32 {
    let prev = previous(&ctx, 6);
    if prev != 0 {
        return prev;
    }
    decide(op::SETXATTR, 0, ctx.arg::<u64>(1))
}

#[lsm(hook = "inode_removexattr")]
pub fn lsm_inode_removexattr(ctx: LsmContext) -> i32 {
    let prev = previous(&ctx, 3);
    if prev != 0 {
        return prev;
    }
    decide(op::REMOVEXATTR, 0, ctx.arg::<u64>(1))
}

#[lsm(hook = "file_open")]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    let prev = previous(&ctx, 1);
    if prev != 0 {
        return prev;
    }
    let file: u64 = ctx.arg(0);
    let f_mode: u32 = read(file, off(&offsets().file_f_mode));
    if f_mode & FMODE_WRITE == 0 {
        return 0;
    }
    let (mnt, dentry) = file_path(file);
    decide(op::OPEN_WRITE, mnt, dentry)
}

#[lsm(hook = "path_truncate")]
pub fn lsm_path_truncate(ctx: LsmContext) -> i32 {
    let prev = previous(&ctx, 1);
    if prev != 0 {
        return prev;
    }
    let (mnt, dentry) = read_path(ctx.arg::<u64>(0));
    decide(op::TRUNCATE, mnt, dentry)
}

/// A new name in a directory (`dentry`, negative: the walk starts at its parent) for the
/// hooks whose dentry is their argument 1.
#[inline(always)]
fn create_hook(ctx: &LsmContext, nargs: usize, op: u16) -> i32 {
    let prev = previous(ctx, nargs);
    if prev != 0 {
        return prev;
    }
    decide(op, 0, ctx.arg::<u64>(1))
}

#[lsm(hook = "inode_create")]
pub fn lsm_inode_create(ctx: LsmContext) -> i32 {
    create_hook(&ctx, 3, op::CREATE)
}

#[lsm(hook = "inode_mknod")]
pub fn lsm_inode_mknod(ctx: LsmContext) -> i32 {
    create_hook(&ctx, 4, op::MKNOD)
}

#[lsm(hook = "inode_mkdir")]
pub fn lsm_inode_mkdir(ctx: LsmContext) -> i32 {
    create_hook(&ctx, 3, op::MKDIR)
}

#[lsm(hook = "inode_symlink")]
pub fn lsm_inode_symlink(ctx: LsmContext) -> i32 {
    create_hook(&ctx, 3, op::SYMLINK)
}

#[lsm(hook = "inode_link")]
pub fn lsm_inode_link(ctx: LsmContext) -> i32 {
    decide_two(&ctx, 3, op::LINK, 0, 2)
}

#[lsm(hook = "inode_rmdir")]
pub fn lsm_inode_rmdir(ctx: LsmContext) -> i32 {
    let prev = previous(&ctx, 2);
    if prev != 0 {
        return prev;
    }
    let dentry: u64 = ctx.arg(1);
    let verdict = decide(op::RMDIR, 0, dentry);
    if verdict == 0 {
        forget_removed(dentry);
    }
    verdict
}

/// 6.2+: an open with O_TRUNC, whatever its access mode, and ftruncate(2).
#[lsm(hook = "file_truncate")]
pub fn lsm_file_truncate(ctx: LsmContext) -> i32 {
    let prev = previous(&ctx, 1);
    if prev != 0 {
        return prev;
    }
    let (mnt, dentry) = file_path(ctx.arg::<u64>(0));
    decide(op::TRUNCATE, mnt, dentry)
}

/// inode_setattr with the dentry at `dentry_at` and the `struct iattr *` after it; its
/// `ia_valid` is read at offset 0 (userspace attaches only where BTF puts it there). The
/// record's op: chmod, chown, truncate, or modify for times alone (no op of their own).
#[inline(always)]
fn setattr_hook(ctx: &LsmContext, nargs: usize, dentry_at: usize) -> i32 {
    let prev = previous(ctx, nargs);
    if prev != 0 {
        return prev;
    }
    let ia_valid: u32 = read(ctx.arg::<u64>(dentry_at + 1), 0);
    if ia_valid & ATTR_CHANGES == 0 {
        return 0;
    }
    let what = if ia_valid & ATTR_MODE != 0 {
        op::CHMOD
    } else if ia_valid & ATTR_OWNER != 0 {
        op::CHOWN
    } else if ia_valid & ATTR_SIZE != 0 {
        op::TRUNCATE
    } else {
        op::MODIFY
    };
    decide(what, 0, ctx.arg::<u64>(dentry_at))
}

/// 6.8+: inode_setattr(idmap, dentry, attr).
#[lsm(hook = "inode_setattr")]
pub fn lsm_inode_setattr(ctx: LsmContext) -> i32 {
    setattr_hook(&ctx, 3, 1)
}

/// Before 6.8: inode_setattr(dentry, attr).
#[lsm(hook = "inode_setattr")]
pub fn lsm_inode_setattr_no_idmap(ctx: LsmContext) -> i32 {
    setattr_hook(&ctx, 2, 0)
}
