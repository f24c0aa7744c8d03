//! Maps and read-only globals shared by all programs. Userspace sizes the ring buffer and fills
//! the globals before load (see watcher/src/kernel/mod.rs).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use watcher_common::{
    FileRecord, KernelOffsets, LOSS_SLOTS, MAX_PATH_DEPTH, MAX_ROOTS, PATH_BUF_CAP, PATH_CAP,
    ROOT_KEY_CAP, RootEntry, WriteAgg, WriteKey,
};

/// Struct field offsets of the running kernel, from its BTF. All zero (invalid) until set.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_real_parent: 0,
    task_fs: 0,
    task_files: 0,
    task_mm: 0,
    task_nsproxy: 0,
    task_exit_code: 0,
    fs_pwd: 0,
    fs_root: 0,
    path_mnt: 0,
    path_dentry: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_f_path: 0,
    file_f_inode: 0,
    file_f_mode: 0,
    dentry_d_parent: 0,
    dentry_d_name: 0,
    dentry_d_inode: 0,
    qstr_len: 0,
    qstr_name: 0,
    inode_i_ino: 0,
    inode_i_sb: 0,
    inode_i_size: 0,
    inode_i_mode: 0,
    inode_i_nlink: 0,
    sb_s_dev: 0,
    xfs_inode_i_vnode: 0,
    renamedata_old_dentry: 0,
    renamedata_flags: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    vfsmount_mnt_root: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    mm_exe_file: 0,
    nsproxy_mnt_ns: 0,
    mnt_ns_ns: 0,
    ns_common_inum: 0,
    valid: 0,
};

/// The offsets table. Read its fields only through [`off`]: userspace rewrites this .rodata
/// at load time, so a plain read would be folded to the zero initializer by the compiler.
#[inline(always)]
pub fn offsets() -> &'static KernelOffsets {
    &OFFSETS
}

/// Have the offsets been filled in by userspace?
#[inline(always)]
pub fn offsets_valid() -> bool {
    off(&OFFSETS.valid) != 0
}

#[inline(always)]
pub fn off(field: &u32) -> u64 {
    // SAFETY: `field` points into OFFSETS; volatile so each use reads the loaded value.
    unsafe { core::ptr::read_volatile(field) as u64 }
}

/// The thread-group id of the daemon that owns the programs: its file activity is never
/// reported. In [`CAPTURE`] (slot [`CAPTURE_SELF_TGID`]), not in .rodata: a daemon that adopts
/// programs pinned by its predecessor ([`CAPTURE`] outlives it) writes its own id there.
#[inline(always)]
pub fn self_tgid() -> u32 {
    match CAPTURE.get_ptr(CAPTURE_SELF_TGID) {
        // SAFETY: valid map value; userspace rewrites it at any time, hence the volatile read.
        Some(tgid) => unsafe { core::ptr::read_volatile(tgid) },
        None => 0,
    }
}

/// The capture switch, written by userspace: 0 (the initial value) until every program is
/// attached and the roots are set, then 1 until the daemon stops capturing. Every program
/// checks it first ([`capturing`]), so capture starts and stops at one instant for all of them:
/// the daemon dates its start and stop by it, and nothing between two runs is half-captured
/// (an enter seen without its exit). The check costs one load (the verifier inlines an array
/// lookup); detaching instead takes seconds, one program after the other.
///
/// Slot [`CAPTURE_SELF_TGID`] holds the daemon's thread-group id ([`self_tgid`]), slot
/// [`CAPTURE_VERDICT_EPOCH`] the epoch of the cached verdicts ([`verdict_epoch`]).
#[map]
pub static CAPTURE: Array<u32> = Array::with_max_entries(3, 0);

/// The slot of [`CAPTURE`] that holds the daemon's thread-group id.
pub const CAPTURE_SELF_TGID: u32 = 1;

/// The slot of [`CAPTURE`] that holds the epoch of the verdicts in [`VERDICTS`]: written by
/// the programs only.
pub const CAPTURE_VERDICT_EPOCH: u32 = 2;

/// The epoch of the cached verdicts. A verdict cached in another epoch is not used: a rename
/// under a root moves files that may be open in or out of the roots (their `struct file`
/// follows the dentry), so a successful one starts a new epoch ([`new_verdict_epoch`]).
#[inline(always)]
pub fn verdict_epoch() -> u32 {
    match CAPTURE.get_ptr(CAPTURE_VERDICT_EPOCH) {
        // SAFETY: valid map value; other CPUs bump it at any time, hence the volatile read.
        Some(epoch) => unsafe { core::ptr::read_volatile(epoch) },
        None => 0,
    }
}

/// Starts a new verdict epoch: every verdict cached before is asked again.
#[inline(always)]
pub fn new_verdict_epoch() {
    if let Some(epoch) = CAPTURE.get_ptr_mut(CAPTURE_VERDICT_EPOCH) {
        // SAFETY: valid, aligned map value shared by all CPUs, hence the atomic add (see
        // inflight_add).
        unsafe {
            core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(
                epoch, 1,
            );
        }
    }
}

/// A verdict as [`VERDICTS`] holds it: the epoch it was decided in, and whether the file is
/// under a root (bit 0).
#[inline(always)]
pub fn verdict_value(epoch: u32, watched: bool) -> u32 {
    (epoch << 1) | watched as u32
}

/// The verdict cached for `key`, if any was decided in the current epoch.
#[inline(always)]
pub fn cached_verdict(key: &FileKey) -> Option<bool> {
    let epoch = verdict_epoch();
    // SAFETY: map lookup returns a valid pointer to the value or None.
    let value = *unsafe { VERDICTS.get(key) }?;
    if value >> 1 == epoch & (u32::MAX >> 1) {
        Some(value & 1 != 0)
    } else {
        None
    }
}

/// The loss totals (per slot of [`LOST`]) the daemon has already reported: written by the
/// daemon only, never by a program. Pinned with the rest, it lets a daemon that adopts the
/// programs report only the losses its predecessor had not.
#[map]
pub static REPORTED_LOST: Array<u64> = Array::with_max_entries(LOSS_SLOTS, 0);

/// Is capture on?
#[inline(always)]
pub fn capturing() -> bool {
    match CAPTURE.get_ptr(0) {
        // SAFETY: valid map value; userspace rewrites it at any time, hence the volatile read.
        Some(on) => (unsafe { core::ptr::read_volatile(on) }) != 0,
        None => false,
    }
}

/// Records for userspace. Sized by userspace (`--ring-buffer-mb`); this is the default.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Records the kernel could not deliver (ring buffer full, pending table full), per CPU and per
/// slot (the op number of a file record, or LOSS_EXEC/FORK/EXIT).
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_SLOTS, 0);

/// Watched roots: path prefixes ("/var/lib/containerd/" and "/var/lib/containerd\0").
#[map]
pub static ROOTS: LpmTrie<[u8; ROOT_KEY_CAP], RootEntry> = LpmTrie::with_max_entries(MAX_ROOTS, 0);

/// The record being built on this CPU (too large for the 512-byte BPF stack).
#[map]
pub static SCRATCH: PerCpuArray<FileRecord> = PerCpuArray::with_max_entries(1, 0);

/// Second path of rename/link (filtered on its own before being appended to the record).
#[repr(C)]
pub struct PathScratch {
    pub lpm_prefixlen: u32,
    /// What `path::resolve_user_path` needs.
    pub data: [u8; PATH_BUF_CAP + PATH_CAP],
}

#[map]
pub static SCRATCH2: PerCpuArray<PathScratch> = PerCpuArray::with_max_entries(1, 0);

/// Dentries collected while walking up to the root, replayed top-down to write the path.
#[repr(C)]
pub struct DentryStack {
    /// Number of entries in `dentries`. Kept in map memory on purpose: the verifier does not
    /// track values stored there, so each loop iteration converges to one state instead of one
    /// state per possible depth (which would exceed the verifier's budget).
    pub n: u64,
    /// The state of writing the path top-down (see `path::write_dentry_path`), in map memory
    /// for the same reason as `n`: the length written, where to cut a path that turns out too
    /// long, and whether it was cut (1: top unknown, 2: too long or a name unreadable).
    pub pos: u64,
    pub keep: u64,
    pub cut: u64,
    pub dentries: [u64; DENTRY_SLOTS],
}

/// Slots of the dentry stack: a power of two above MAX_PATH_DEPTH, so that masked indices
/// are provably in bounds.
pub const DENTRY_SLOTS: usize = 128;
const _: () = assert!(MAX_PATH_DEPTH as usize <= DENTRY_SLOTS);

#[map]
pub static DENTRY_STACK: PerCpuArray<DentryStack> = PerCpuArray::with_max_entries(1, 0);

/// A syscall under a root, between its enter and exit tracepoints. Keyed by pid_tgid.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub op: u16,
    /// The syscall that stored this entry (its exit checks it).
    pub syscall_nr: u16,
    /// Rename: dev of the replaced target, filled in by a filesystem hook during the syscall
    /// (see file_ops::on_unlinked_inode); 0 while none was seen.
    pub replaced_dev: u32,
    /// The raw syscall arguments.
    pub args: [u64; 6],
    /// Rename: inode number of the replaced target (0: none seen).
    pub replaced_ino: u64,
}

#[map]
pub static PENDING: HashMap<u64, Pending> = HashMap::with_max_entries(16384, 0);

/// How many entries `PENDING` ([`INFLIGHT_PENDING`]) and `PENDING_WRITE`
/// ([`INFLIGHT_WRITE`]) hold, so that the programs that only look an entry up — every
/// `sys_exit_*`, and the rename-target hooks, which run on most inode updates — can skip the
/// hash lookup (tens of ns) when the table is empty, which it is most of the time: entries live
/// only from the enter to the exit of an operation under a root. An array lookup is inlined by
/// the verifier into a plain load.
///
/// Incremented before an entry is inserted and decremented after it is removed, by the same
/// thread, so the count is never below the number of entries. It can only drift upwards (an
/// entry overwritten because its exit was never seen), which costs the lookup again, never a
/// record.
#[map]
pub static INFLIGHT: Array<u64> = Array::with_max_entries(2, 0);
pub const INFLIGHT_PENDING: u32 = 0;
pub const INFLIGHT_WRITE: u32 = 1;

/// Adds `delta` (wrapping: `u64::MAX` is -1) to an `INFLIGHT` count.
#[inline(always)]
pub fn inflight_add(slot: u32, delta: u64) {
    if let Some(count) = INFLIGHT.get_ptr_mut(slot) {
        // SAFETY: valid, aligned map value; shared by all CPUs, hence the atomic add (BPF
        // `lock xadd`; core's AtomicU64 has no fetch_add on the BPF target, the intrinsic does).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                count, delta,
            );
        }
    }
}

/// Is the table behind `slot` certainly empty?
#[inline(always)]
pub fn none_inflight(slot: u32) -> bool {
    match INFLIGHT.get_ptr(slot) {
        // SAFETY: valid map value; a racing update only makes the answer conservative for
        // other threads' entries, never for this thread's own (see INFLIGHT).
        Some(count) => (unsafe { core::ptr::read_volatile(count) }) == 0,
        None => false,
    }
}

/// A write-family syscall on a watched file, between enter and exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingWrite {
    pub file: u64,
    pub fd: i32,
    pub _pad: u32,
}

#[map]
pub static PENDING_WRITE: HashMap<u64, PendingWrite> = HashMap::with_max_entries(16384, 0);

/// Verdict per open file: is it under a root? Keyed by (struct file *, struct inode *) so that a
/// recycled `struct file` for another inode does not inherit a stale verdict.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileKey {
    pub file: u64,
    pub inode: u64,
}

#[map]
pub static VERDICTS: LruHashMap<FileKey, u32> = LruHashMap::with_max_entries(65536, 0);

/// Write aggregates per (process, fd), flushed at close (kernel) or process exit (userspace).
#[map]
pub static WRITES: HashMap<WriteKey, WriteAgg> = HashMap::with_max_entries(16384, 0);

/// Count one undeliverable record in `slot`.
#[inline(always)]
pub fn count_lost(slot: u32) {
    if let Some(counter) = LOST.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}
