//! Absolute paths and the root filter.
//!
//! Paths are built in the kernel so that filtering happens there: a syscall's path argument is
//! taken as given when absolute, or appended to the absolute path of its dirfd / the cwd, which
//! is written by walking `dentry->d_parent` up to the root, crossing mounts through
//! `mount->mnt_mountpoint` (what `d_path` does). The result is looked up in the `ROOTS` LPM
//! trie: one map lookup decides whether the operation is under a watched root.
//!
//! A path that cannot be built completely is never left looking like another path: what is
//! missing is replaced by `…` (`PATH_GAP`) and the path is flagged truncated (see
//! `write_dentry_path`). The prefix it keeps is the real one, so the root filter still works.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_probe_read_kernel_str, bpf_probe_read_user_str},
    maps::lpm_trie::Key,
};
use watcher_common::{
    LOSS_PATH_UNRESOLVED, MAX_PATH_DEPTH, PATH_BUF_CAP, PATH_CAP, PATH_GAP, ROOT_KEY_CAP,
};

use crate::{
    kernel::{cwd, fd_to_file, file_path, read},
    maps::{DENTRY_SLOTS, DENTRY_STACK, ROOTS, count_lost, off, offsets},
};

/// Offsets of the first path in a buffer are masked with this, so every write is in bounds.
pub const MASK: usize = PATH_BUF_CAP - 1;
/// Offsets of what follows the first path (second path, xattr name and value).
pub const MASK2: usize = 2 * PATH_BUF_CAP - 1;
/// Longest component name plus NUL.
const NAME_CAP: usize = 256;
/// Room a cut path needs after its prefix: `/…` and `/` plus the last name (at most
/// NAME_CAP - 1 bytes).
const GAP_ROOM: usize = 1 + PATH_GAP.len() + NAME_CAP;
const AT_FDCWD: i64 = -100;

/// Writes [`PATH_GAP`] at `buf[pos..]`; returns the position after it.
#[inline(always)]
unsafe fn write_gap(buf: *mut u8, pos: usize) -> usize {
    // SAFETY: the caller guarantees PATH_GAP.len() bytes of room after the masked offset.
    unsafe {
        *buf.add(pos & MASK) = PATH_GAP[0];
        *buf.add((pos + 1) & MASK) = PATH_GAP[1];
        *buf.add((pos + 2) & MASK) = PATH_GAP[2];
    }
    pos + PATH_GAP.len()
}

/// Writes the absolute path of (`vfsmnt`, `dentry`) at `buf[0..]`, NUL-terminated, in less
/// than `cap` bytes (`cap` <= PATH_BUF_CAP; the NUL is the last byte at most). `buf` must have
/// at least `PATH_BUF_CAP + NAME_CAP` bytes. Returns (length without NUL, truncated).
///
/// A path that does not fit, or whose names cannot all be read, is written as the longest
/// prefix of whole components that leaves room for the rest, then `/…` and `/` plus the
/// dentry's own name: `/var/lib/x/…/file`. A walk that does not reach the root within
/// MAX_PATH_DEPTH steps gives `…/lower/components`: its top is unknown, and a path that does
/// not start with `/` never matches a root. Either way it is flagged truncated, and it is never
/// a prefix of the path followed by something that looks like a child of it.
#[inline(always)]
pub fn write_dentry_path(buf: *mut u8, vfsmnt: u64, dentry: u64, cap: usize) -> (usize, bool) {
    let o = offsets();
    let Some(stack) = DENTRY_STACK.get_ptr_mut(0) else {
        return (0, true);
    };
    let mnt_off = off(&o.mount_mnt);
    let mut mnt = vfsmnt.wrapping_sub(mnt_off);
    let mut d = dentry;
    let mut complete = false;
    // SAFETY: `stack` is this CPU's scratch slot; indices are masked to DENTRY_SLOTS, buffer
    // offsets to MASK (the buffer has NAME_CAP bytes of room beyond it).
    unsafe {
        core::ptr::write_volatile(&raw mut (*stack).n, 0);
        for _ in 0..MAX_PATH_DEPTH {
            let mnt_root: u64 = read(mnt + mnt_off, off(&o.vfsmount_mnt_root));
            if d == mnt_root {
                let parent: u64 = read(mnt, off(&o.mount_mnt_parent));
                if parent == mnt || parent == 0 {
                    complete = true;
                    break;
                }
                d = read(mnt, off(&o.mount_mnt_mountpoint));
                mnt = parent;
                continue;
            }
            let parent: u64 = read(d, off(&o.dentry_d_parent));
            if parent == d || parent == 0 {
                complete = true;
                break;
            }
            let n = core::ptr::read_volatile(&raw const (*stack).n) as usize;
            (*stack).dentries[n & (DENTRY_SLOTS - 1)] = d;
            core::ptr::write_volatile(&raw mut (*stack).n, (n + 1) as u64);
            d = parent;
        }
        // The writing state lives in map memory too (`pos`, `keep`, `cut`): the verifier does
        // not track values there, so the iterations of the loop below converge to one state,
        // and so do the loop's exits, instead of one of each per possible length.
        let st = &raw mut (*stack);
        let set = |field: *mut u64, v: usize| core::ptr::write_volatile(field, v as u64);
        let get = |field: *const u64| core::ptr::read_volatile(field) as usize;
        set(&raw mut (*st).cut, usize::from(!complete));
        if complete {
            set(&raw mut (*st).pos, 0);
        } else {
            // The top is unknown: say so where it would be.
            set(&raw mut (*st).pos, write_gap(buf, 0));
        }
        // `keep`: the end of the longest prefix written so far that leaves GAP_ROOM before
        // `cap`, where a path that turns out too long is cut.
        set(&raw mut (*st).keep, get(&raw const (*st).pos));
        let n = get(&raw const (*st).n);
        for i in 0..MAX_PATH_DEPTH as usize {
            if i >= n {
                break;
            }
            let pos = get(&raw const (*st).pos) & MASK;
            let d = (*stack).dentries[(n - 1 - i) & (DENTRY_SLOTS - 1)];
            let name: u64 = read(d, off(&o.dentry_d_name) + off(&o.qstr_name));
            *buf.add(pos) = b'/';
            let r = bpf_probe_read_kernel_str(
                buf.add((pos + 1) & MASK) as *mut c_void,
                NAME_CAP as u32,
                name as *const c_void,
            );
            let next = pos + 1 + ((r as usize).wrapping_sub(1) & (NAME_CAP - 1));
            if r <= 0 || next >= cap {
                set(&raw mut (*st).cut, 2);
                break;
            }
            set(&raw mut (*st).pos, next);
            if next + GAP_ROOM < cap {
                set(&raw mut (*st).keep, next);
            }
        }
        let mut pos = get(&raw const (*st).pos) & MASK;
        let cut = get(&raw const (*st).cut);
        if cut == 2 {
            // Back to the last prefix with room, then `/…/` and the dentry's own name.
            pos = get(&raw const (*st).keep) & MASK;
            if pos + GAP_ROOM >= cap {
                pos = 0;
            }
            *buf.add(pos) = b'/';
            pos = write_gap(buf, pos + 1) & MASK;
            if n > 0 {
                let own = (*stack).dentries[0];
                let name: u64 = read(own, off(&o.dentry_d_name) + off(&o.qstr_name));
                *buf.add(pos) = b'/';
                let r = bpf_probe_read_kernel_str(
                    buf.add((pos + 1) & MASK) as *mut c_void,
                    NAME_CAP as u32,
                    name as *const c_void,
                );
                if r > 1 {
                    pos += 1 + ((r as usize - 1) & (NAME_CAP - 1));
                }
            }
        } else if pos == 0 {
            *buf = b'/';
            pos = 1;
        }
        *buf.add(pos & MASK) = 0;
        (pos & MASK, cut != 0)
    }
}

/// Resolves a path argument of a syscall, relative to `dirfd` (AT_FDCWD: the cwd), into
/// `buf[0..]`, NUL-terminated. `buf` must have at least `PATH_BUF_CAP + PATH_CAP` bytes.
/// Returns (length without NUL, truncated), or None when the argument could not be read.
///
/// An absolute argument is taken as given (the kernel refuses longer than PATH_MAX). A relative
/// one is appended to the dirfd's or cwd's path, which is given the room the argument leaves,
/// so the argument is always whole: when the directory's path does not fit, the result is
/// `<prefix>/…/<dir name>/<argument>`, flagged truncated.
#[inline(always)]
pub fn resolve_user_path(buf: *mut u8, dirfd: i64, user_path: u64) -> Option<(usize, bool)> {
    // SAFETY: every write goes through a masked offset into a buffer of the documented size.
    unsafe {
        let n = bpf_probe_read_user_str(
            buf as *mut c_void,
            PATH_CAP as u32,
            user_path as *const c_void,
        );
        if n <= 0 {
            return None;
        }
        if *buf == b'/' {
            return Some(((n as usize - 1) & MASK, false));
        }
        let (mnt, dentry) = if dirfd == AT_FDCWD {
            cwd()
        } else {
            file_path(fd_to_file(dirfd))
        };
        if dentry == 0 {
            return None;
        }
        // `/` and the argument (n - 1 bytes) follow the directory's path.
        let room = (n as usize) & (PATH_CAP * 2 - 1);
        let (base_len, truncated) = write_dentry_path(buf, mnt, dentry, PATH_BUF_CAP - room);
        if n == 1 {
            // Empty path (AT_EMPTY_PATH): the dirfd itself.
            return Some((base_len, truncated));
        }
        let mut pos = base_len;
        if pos > 1 {
            *buf.add(pos & MASK) = b'/';
            pos += 1;
        }
        let m = bpf_probe_read_user_str(
            buf.add(pos & MASK) as *mut c_void,
            PATH_CAP as u32,
            user_path as *const c_void,
        );
        if m <= 0 {
            return None;
        }
        let len = (pos & MASK) + m as usize - 1;
        if len >= PATH_BUF_CAP {
            // Only when the argument grew between the two reads (another thread rewrote it):
            // cut it, and say so.
            write_gap(buf, MASK - PATH_GAP.len());
            *buf.add(MASK) = 0;
            return Some((MASK, true));
        }
        Some((len & MASK, truncated))
    }
}

/// Is the NUL-terminated path at `data` (of length `len`) under a watched root? `prefixlen`
/// must be the u32 right before `data` (it becomes the LPM key header).
///
/// A path whose top is unknown (`…/lower/components`: deeper than the walk goes) may or may
/// not be under a root: it is not reported, but counted as `LOSS_PATH_UNRESOLVED`, so the
/// history says it could not tell instead of staying silent. Such paths are rare (more than
/// MAX_PATH_DEPTH components): this costs one load of the first byte otherwise.
#[inline(always)]
pub fn under_root(prefixlen: *mut u32, len: usize) -> bool {
    let bytes = if len + 1 < ROOT_KEY_CAP {
        len + 1
    } else {
        ROOT_KEY_CAP
    };
    // SAFETY: `prefixlen` is followed by at least ROOT_KEY_CAP bytes of path data (the layout
    // of FileRecord and PathScratch), which is exactly an LPM key.
    unsafe {
        if len > 0 && *(prefixlen as *const u8).add(4) != b'/' {
            count_lost(LOSS_PATH_UNRESOLVED);
            return false;
        }
        *prefixlen = (bytes * 8) as u32;
        let key = &*(prefixlen as *const Key<[u8; ROOT_KEY_CAP]>);
        ROOTS.get(key).is_some()
    }
}
