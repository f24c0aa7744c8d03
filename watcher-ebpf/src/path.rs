//! Absolute paths and the root filter.
//!
//! Paths are built in the kernel so that filtering happens there: a syscall's path argument is
//! taken as given when absolute, or appended to the absolute path of its dirfd / the cwd, which
//! is written by walking `dentry->d_parent` up to the root, crossing mounts through
//! `mount->mnt_mountpoint` (what `d_path` does). The result is looked up in the `ROOTS` LPM
//! trie: one map lookup decides whether the operation is under a watched root.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_probe_read_kernel_str, bpf_probe_read_user_str},
    maps::lpm_trie::Key,
};
use watcher_common::{MAX_PATH_DEPTH, PATH_CAP, ROOT_KEY_CAP};

use crate::{
    kernel::{cwd, fd_to_file, file_path, read},
    maps::{DENTRY_SLOTS, DENTRY_STACK, ROOTS, off, offsets},
};

/// Offsets of the first path in a buffer are masked with this, so every write is in bounds.
pub const MASK: usize = PATH_CAP - 1;
/// Offsets of what follows the first path (second path, xattr name and value).
pub const MASK2: usize = 2 * PATH_CAP - 1;
/// Longest component name plus NUL.
const NAME_CAP: usize = 256;
const AT_FDCWD: i64 = -100;

/// Writes the absolute path of (`vfsmnt`, `dentry`) at `buf[0..]`, NUL-terminated. `buf` must
/// have at least `PATH_CAP + NAME_CAP` bytes. Returns (length without NUL, truncated).
#[inline(always)]
pub fn write_dentry_path(buf: *mut u8, vfsmnt: u64, dentry: u64) -> (usize, bool) {
    let o = offsets();
    let Some(stack) = DENTRY_STACK.get_ptr_mut(0) else {
        return (0, true);
    };
    let mnt_off = off(&o.mount_mnt);
    let mut mnt = vfsmnt.wrapping_sub(mnt_off);
    let mut d = dentry;
    let mut complete = false;
    // SAFETY: `stack` is this CPU's scratch slot; indices are masked to DENTRY_SLOTS.
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
        let n = core::ptr::read_volatile(&raw const (*stack).n) as usize;
        let mut pos: usize = 0;
        let mut truncated = !complete;
        for i in 0..MAX_PATH_DEPTH as usize {
            if i >= n {
                break;
            }
            if pos + 1 + NAME_CAP >= PATH_CAP {
                truncated = true;
                break;
            }
            let d = (*stack).dentries[(n - 1 - i) & (DENTRY_SLOTS - 1)];
            let name: u64 = read(d, off(&o.dentry_d_name) + off(&o.qstr_name));
            *buf.add(pos & MASK) = b'/';
            pos += 1;
            let r = bpf_probe_read_kernel_str(
                buf.add(pos & MASK) as *mut c_void,
                NAME_CAP as u32,
                name as *const c_void,
            );
            if r <= 0 {
                truncated = true;
                break;
            }
            pos += (r as usize - 1) & (NAME_CAP - 1);
        }
        if pos == 0 {
            *buf = b'/';
            pos = 1;
        }
        *buf.add(pos & MASK) = 0;
        (pos & MASK, truncated)
    }
}

/// Resolves a path argument of a syscall, relative to `dirfd` (AT_FDCWD: the cwd), into
/// `buf[0..]`, NUL-terminated. `buf` must have at least `2 * PATH_CAP + NAME_CAP` bytes.
/// Returns (length without NUL, truncated), or None when the argument could not be read.
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
        let (base_len, truncated) = write_dentry_path(buf, mnt, dentry);
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
        let len = pos + m as usize - 1;
        if len >= PATH_CAP {
            // Longer than PATH_MAX: keep the first PATH_CAP - 1 bytes.
            *buf.add(MASK) = 0;
            return Some((MASK, true));
        }
        Some((len & MASK, truncated))
    }
}

/// Is the NUL-terminated path at `data` (of length `len`) under a watched root? `prefixlen`
/// must be the u32 right before `data` (it becomes the LPM key header).
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
        *prefixlen = (bytes * 8) as u32;
        let key = &*(prefixlen as *const Key<[u8; ROOT_KEY_CAP]>);
        ROOTS.get(key).is_some()
    }
}
