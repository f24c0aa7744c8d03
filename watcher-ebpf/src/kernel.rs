//! Reading kernel structures through the BTF-derived offsets in `OFFSETS`.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_task, bpf_get_current_uid_gid, bpf_probe_read_kernel,
};
use watcher_common::TaskInfo;

use crate::maps::{off, offsets};

/// Reads a `T` at `base + offset` in kernel memory; 0/default on fault (a pointer field read as
/// 0 stops every walk that follows it).
#[inline(always)]
pub fn read<T: Default>(base: u64, offset: u64) -> T {
    if base == 0 {
        return T::default();
    }
    // SAFETY: bpf_probe_read_kernel copes with any address; faults return an error.
    unsafe { bpf_probe_read_kernel((base + offset) as *const T).unwrap_or_default() }
}

/// CLOCK_MONOTONIC nanoseconds.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: always valid in tracing programs.
    unsafe { bpf_get_current_task() }
}

/// Fills `info` with the current task's identity.
#[inline(always)]
pub fn fill_task_info(info: &mut TaskInfo) {
    let o = offsets();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    info.pid = (pid_tgid >> 32) as u32;
    info.tid = pid_tgid as u32;
    info.uid = uid_gid as u32;
    info.gid = (uid_gid >> 32) as u32;
    // SAFETY: helper without preconditions in tracing programs.
    info.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    info.comm = bpf_get_current_comm().unwrap_or_default();
    let task = current_task();
    let parent: u64 = read(task, off(&o.task_real_parent));
    info.ppid = read::<u32>(parent, off(&o.task_tgid));
    let nsproxy: u64 = read(task, off(&o.task_nsproxy));
    let mnt_ns: u64 = read(nsproxy, off(&o.nsproxy_mnt_ns));
    info.mnt_ns = read::<u32>(mnt_ns, off(&o.mnt_ns_ns) + off(&o.ns_common_inum));
}

/// `struct file *` behind `fd` in the current task's fd table, or 0.
#[inline(always)]
pub fn fd_to_file(fd: i64) -> u64 {
    if fd < 0 {
        return 0;
    }
    let o = offsets();
    let files: u64 = read(current_task(), off(&o.task_files));
    let fdt: u64 = read(files, off(&o.files_fdt));
    let max_fds: u32 = read(fdt, off(&o.fdt_max_fds));
    if fd as u64 >= max_fds as u64 {
        return 0;
    }
    let array: u64 = read(fdt, off(&o.fdt_fd));
    read(array, fd as u64 * 8)
}

/// (struct vfsmount *, struct dentry *) of a `struct path` at `path_addr`.
#[inline(always)]
pub fn read_path(path_addr: u64) -> (u64, u64) {
    let o = offsets();
    let mnt: u64 = read(path_addr, off(&o.path_mnt));
    let dentry: u64 = read(path_addr, off(&o.path_dentry));
    (mnt, dentry)
}

/// The current task's working directory.
#[inline(always)]
pub fn cwd() -> (u64, u64) {
    let o = offsets();
    let fs: u64 = read(current_task(), off(&o.task_fs));
    if fs == 0 {
        return (0, 0);
    }
    read_path(fs + off(&o.fs_pwd))
}

/// The location of an open file.
#[inline(always)]
pub fn file_path(file: u64) -> (u64, u64) {
    if file == 0 {
        return (0, 0);
    }
    read_path(file + off(&offsets().file_f_path))
}

#[inline(always)]
pub fn file_inode(file: u64) -> u64 {
    read(file, off(&offsets().file_f_inode))
}

/// (dev, ino, mode, size) of an inode.
#[inline(always)]
pub fn inode_identity(inode: u64) -> (u32, u64, u32, u64) {
    if inode == 0 {
        return (0, 0, 0, 0);
    }
    let o = offsets();
    let ino: u64 = read(inode, off(&o.inode_i_ino));
    let sb: u64 = read(inode, off(&o.inode_i_sb));
    let dev: u32 = read(sb, off(&o.sb_s_dev));
    let mode: u16 = read(inode, off(&o.inode_i_mode));
    let size: i64 = read(inode, off(&o.inode_i_size));
    (dev, ino, mode as u32, size as u64)
}

/// The `struct vfsmount *` through which `dentry` has its path from `/`: the task's root
/// mount when the dentry is on its filesystem and the mount shows the whole filesystem; 0
/// otherwise. The filesystem is taken from the dentry's parent: a dentry an unlink or rmdir
/// has just removed, or the new name of a create, has no inode.
#[inline(always)]
pub fn root_mount_of(dentry: u64) -> u64 {
    let o = offsets();
    let fs: u64 = read(current_task(), off(&o.task_fs));
    if fs == 0 {
        return 0;
    }
    let (mnt, _) = read_path(fs + off(&o.fs_root));
    let mnt_root: u64 = read(mnt, off(&o.vfsmount_mnt_root));
    if mnt_root == 0 || read::<u64>(mnt_root, off(&o.dentry_d_parent)) != mnt_root {
        return 0;
    }
    let sb_of = |d: u64| -> u64 {
        let inode: u64 = read(d, off(&o.dentry_d_inode));
        read(inode, off(&o.inode_i_sb))
    };
    let sb = sb_of(read(dentry, off(&o.dentry_d_parent)));
    if sb == 0 || sb != sb_of(mnt_root) {
        return 0;
    }
    mnt
}
