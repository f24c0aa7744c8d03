//! BPF LSM protect mode (issue 15; denials are not sent as records yet).
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

use crate::{
    kernel::{current_task, file_inode, file_path, inode_identity, read, read_path},
    maps::{off, offsets, offsets_valid},
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
const ATTR_CHANGES: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20;

use watcher_common::InodeKey;

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

/// The verdict for an operation on `dentry` (0 allow, -EPERM deny).
#[inline(always)]
fn decide(dentry: u64) -> i32 {
    let m = mode();
    if m == 0 || !offsets_valid() || !protected_dentry(dentry) || trusted() {
        return 0;
    }
    // TODO(i15): a FileRecord with FLAG_DENIED / FLAG_WOULD_DENY to EVENTS.
    if m == 2 { -EPERM } else { 0 }
}

/// An earlier LSM program's denial stands.
#[inline(always)]
fn previous(ctx: &LsmContext, nargs: usize) -> i32 {
    // An LSM program's context holds the hook's arguments, then the previous program's
    // return value.
    ctx.arg::<i32>(nargs)
}

/// The verdict of a hook (of `nargs` arguments) whose dentry is its argument 1.
#[inline(always)]
fn dentry_hook(ctx: &LsmContext, nargs: usize) -> i32 {
    let prev = previous(ctx, nargs);
    if prev != 0 {
        return prev;
    }
    decide(ctx.arg::<u64>(1))
}

#[lsm(hook = "inode_unlink")]
pub fn lsm_inode_unlink(ctx: LsmContext) -> i32 {
    dentry_hook(&ctx, 2)
}

#[lsm(hook = "inode_rmdir")]
pub fn lsm_inode_rmdir(ctx: LsmContext) -> i32 {
    dentry_hook(&ctx, 2)
}

/// The verdict of a hook with two dentries, its arguments `a` and `b` (of `nargs`): denied
/// when either is.
#[inline(always)]
fn decide_two(ctx: &LsmContext, nargs: usize, a: usize, b: usize) -> i32 {
    let prev = previous(ctx, nargs);
    if prev != 0 {
        return prev;
    }
    let r = decide(ctx.arg::<u64>(a));
    if r != 0 {
        return r;
    }
    decide(ctx.arg::<u64>(b))
}

#[lsm(hook = "inode_rename")]
pub fn lsm_inode_rename(ctx: LsmContext) -> i32 {
    decide_two(&ctx, 4, 1, 3)
}

#[lsm(hook = "inode_setxattr")]
pub fn lsm_inode_setxattr(ctx: LsmContext) -> i32 {
    dentry_hook(&ctx, 6)
}

#[lsm(hook = "inode_removexattr")]
pub fn lsm_inode_removexattr(ctx: LsmContext) -> i32 {
    dentry_hook(&ctx, 3)
}

/// inode_setattr with the dentry at `dentry_at` and the `struct iattr *` after it; its
/// `ia_valid` is read at offset 0 (userspace attaches only where BTF puts it there).
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
    decide(ctx.arg::<u64>(dentry_at))
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
    let (_, dentry) = file_path(file);
    decide(dentry)
}

#[lsm(hook = "path_truncate")]
pub fn lsm_path_truncate(ctx: LsmContext) -> i32 {
    let prev = previous(&ctx, 1);
    if prev != 0 {
        return prev;
    }
    let (_, dentry) = read_path(ctx.arg::<u64>(0));
    decide(dentry)
}

/// 6.2+: an open with O_TRUNC, whatever its access mode, and ftruncate(2).
#[lsm(hook = "file_truncate")]
pub fn lsm_file_truncate(ctx: LsmContext) -> i32 {
    let prev = previous(&ctx, 1);
    if prev != 0 {
        return prev;
    }
    let (_, dentry) = file_path(ctx.arg::<u64>(0));
    decide(dentry)
}

// The creating hooks: their dentry is a new name in a directory (negative: the walk starts
// at its parent).

#[lsm(hook = "inode_create")]
pub fn lsm_inode_create(ctx: LsmContext) -> i32 {
    dentry_hook(&ctx, 3)
}

#[lsm(hook = "inode_mknod")]
pub fn lsm_inode_mknod(ctx: LsmContext) -> i32 {
    dentry_hook(&ctx, 4)
}

#[lsm(hook = "inode_mkdir")]
pub fn lsm_inode_mkdir(ctx: LsmContext) -> i32 {
    dentry_hook(&ctx, 3)
}

#[lsm(hook = "inode_symlink")]
pub fn lsm_inode_symlink(ctx: LsmContext) -> i32 {
    dentry_hook(&ctx, 3)
}

#[lsm(hook = "inode_link")]
pub fn lsm_inode_link(ctx: LsmContext) -> i32 {
    decide_two(&ctx, 3, 0, 2)
}
