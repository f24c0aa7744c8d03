//! What the running kernel lets us hook, probed at start.
//!
//! Kernels differ: this project's CI kernel loads tracepoint, raw tracepoint and BTF tracepoint
//! programs but refuses fentry/fexit/LSM and has no kprobes; most distribution kernels allow all
//! of them. The daemon probes, reports what it found, and picks the best hook family it
//! implements ([`Backend`]). Adding a backend (e.g. LSM `path_unlink` for resolved paths and
//! blocking) means adding programs and a variant here; the record format does not change.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::backend::FamilyProbe;
use super::btf_offsets::{BtfError, KernelBtf};

/// Hook families, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `syscalls:sys_enter_*`/`sys_exit_*` tracepoints plus scheduler raw tracepoints. Needs
    /// only tracepoint support, which every kernel with BPF has.
    SyscallTracepoints,
}

impl Backend {
    /// The backend's name, as `status` and the metrics show it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::SyscallTracepoints => "syscall-tracepoints",
        }
    }
}

/// A filesystem tracepoint that shows the inode a rename replaced, with the target's link count
/// already dropped (see `on_unlinked_inode` in watcher-ebpf/src/file_ops.rs). The syscall
/// tracepoints only see path strings, so without one of these a rename over an existing file is
/// reported without saying that the target was destroyed.
#[derive(Clone, Copy, Debug)]
pub struct RenameTargetHook {
    /// Tracepoint name, which is also the eBPF program's name.
    pub name: &'static str,
    /// tracefs event group.
    pub group: &'static str,
    /// The struct its first argument points to: `inode`, or `xfs_inode` (then the program
    /// needs `xfs_inode.i_vnode` from BTF).
    pub arg_struct: &'static str,
    /// When the hook fires relative to the target's deletion, for `ctrwatch probe`.
    pub sees: &'static str,
}

/// The rename-target hooks the programs implement (tmpfs has no tracepoint to use).
pub const RENAME_TARGET_HOOKS: &[RenameTargetHook] = &[
    RenameTargetHook {
        name: "ext4_mark_inode_dirty",
        group: "ext4",
        arg_struct: "inode",
        sees: "ext4: link count drop inside the rename, also when the target is still open",
    },
    RenameTargetHook {
        name: "xfs_iunlink",
        group: "xfs",
        arg_struct: "xfs_inode",
        sees: "xfs: link count drop inside the rename, also when the target is still open",
    },
    RenameTargetHook {
        name: "xfs_iunlink_remove",
        group: "xfs",
        arg_struct: "xfs_inode",
        sees: "xfs: takes back the RENAME_WHITEOUT whiteout seen by xfs_iunlink",
    },
    RenameTargetHook {
        name: "btrfs_inode_evict",
        group: "btrfs",
        arg_struct: "inode",
        sees: "btrfs: eviction at the end of the rename; a target still open elsewhere is missed",
    },
];

/// What was found about one [`RenameTargetHook`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct RenameTargetHookStatus {
    /// The hook's tracepoint name.
    pub name: &'static str,
    /// It may be attached on this kernel.
    pub available: bool,
    /// Why not, or what it sees.
    pub note: String,
}

/// What was found on this kernel.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Capabilities {
    /// `uname -r`.
    pub kernel_release: String,
    /// Where tracefs is mounted, if it is.
    pub tracefs: Option<PathBuf>,
    /// The `syscalls:` tracepoints exist (CONFIG_FTRACE_SYSCALLS).
    pub syscall_tracepoints: bool,
    /// The kernel's BTF is readable (/sys/kernel/btf/vmlinux).
    pub btf: bool,
    /// kprobes are configured (reported only: ctrwatch does not use them).
    pub kprobes: bool,
    /// `bpf` is in the active LSM list (LSM programs attached elsewhere never run).
    pub bpf_lsm_active: bool,
    /// Filesystem hooks that tell which inode a rename replaced.
    pub rename_target_hooks: Vec<RenameTargetHookStatus>,
    /// fentry: a test program loaded and attached, or why not (kernel/backend.rs).
    pub fentry: FamilyProbe,
    /// BPF LSM: a test program loaded and attached, and `bpf` an active LSM, or why not.
    pub lsm: FamilyProbe,
    /// The fentry hooks and whether their prototypes are the ones the programs read.
    pub fentry_hooks: Vec<super::backend::FentryHookStatus>,
}

impl Capabilities {
    /// Looks at this kernel: tracefs, BTF, the LSM list, the rename-target hooks.
    pub fn probe() -> Self {
        let btf = KernelBtf::open(Path::new(super::btf_offsets::VMLINUX_BTF));
        Self::probe_with_btf(btf.as_ref())
    }

    /// [`Capabilities::probe`] with the kernel's BTF already parsed (or the error parsing it
    /// gave): the start parses it once, for this and for the offsets.
    pub fn probe_with_btf(btf: Result<&KernelBtf, &BtfError>) -> Self {
        let tracefs = tracefs_dir();
        let syscall_tracepoints = tracefs
            .as_ref()
            .is_some_and(|t| t.join("events/syscalls/sys_enter_unlinkat").is_dir());
        let kprobes = tracefs
            .as_ref()
            .is_some_and(|t| t.join("kprobe_events").exists());
        let active_lsms = super::backend::active_lsms();
        let bpf_lsm_active = active_lsms.as_deref().is_ok_and(super::backend::bpf_lsm_in);
        let rename_target_hooks = probe_rename_target_hooks(tracefs.as_deref(), btf);
        let fentry = super::backend::probe_fentry(btf);
        let lsm = super::backend::probe_lsm(btf, &active_lsms);
        let fentry_hooks = super::backend::probe_fentry_hooks(btf, &fentry);
        Capabilities {
            kernel_release: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            tracefs,
            syscall_tracepoints,
            btf: Path::new(super::btf_offsets::VMLINUX_BTF).exists(),
            kprobes,
            bpf_lsm_active,
            rename_target_hooks,
            fentry,
            lsm,
            fentry_hooks,
        }
    }

    /// The hook families besides the syscall tracepoints, as probed.
    pub fn families(&self) -> Vec<FamilyProbe> {
        vec![self.fentry.clone(), self.lsm.clone()]
    }

    /// Is `name` a rename-target hook, and may it be attached on this kernel?
    /// `None`: not such a hook.
    pub fn rename_target_hook_usable(&self, name: &str) -> Option<bool> {
        RENAME_TARGET_HOOKS.iter().find(|h| h.name == name)?;
        Some(
            self.rename_target_hooks
                .iter()
                .any(|h| h.name == name && h.available),
        )
    }

    /// The best implemented backend this kernel supports.
    pub fn best_backend(&self) -> Option<Backend> {
        (self.syscall_tracepoints && self.btf).then_some(Backend::SyscallTracepoints)
    }

    /// The syscall tracepoint `name` (`sys_enter_unlinkat`...) exists on this kernel.
    pub fn has_syscall_tracepoint(&self, name: &str) -> bool {
        self.tracefs
            .as_ref()
            .is_some_and(|t| t.join("events/syscalls").join(name).is_dir())
    }

    /// One line for the start-up log and `ctrwatch check`.
    pub fn summary(&self) -> String {
        format!(
            "kernel {}, tracefs {}, syscall tracepoints {}, BTF {}, kprobes {}, BPF LSM active {}",
            self.kernel_release,
            self.tracefs
                .as_ref()
                .map_or("not mounted".to_string(), |p| p.display().to_string()),
            yes(self.syscall_tracepoints),
            yes(self.btf),
            yes(self.kprobes),
            yes(self.bpf_lsm_active),
        ) + &format!(
            ", rename target hooks {}",
            match self
                .rename_target_hooks
                .iter()
                .filter(|h| h.available)
                .map(|h| h.name)
                .collect::<Vec<_>>()
            {
                names if names.is_empty() => "none".to_string(),
                names => names.join(" "),
            }
        )
    }
}

/// Which rename-target hooks exist here: the tracepoint must be in tracefs, and its inode
/// argument must be where the program reads it. The position is checked in vmlinux BTF; a
/// tracepoint of a filesystem built as a module is described in that module's BTF, which is
/// not parsed here, and is used unchecked (its prototype has not changed since it was added).
fn probe_rename_target_hooks(
    tracefs: Option<&Path>,
    btf: Result<&KernelBtf, &BtfError>,
) -> Vec<RenameTargetHookStatus> {
    let mut found = probe_each_rename_target_hook(tracefs, btf);
    // xfs_iunlink alone would take a RENAME_WHITEOUT's whiteout for the replaced target: it
    // is used only with xfs_iunlink_remove, which takes it back.
    let remove_ok = found
        .iter()
        .any(|h| h.name == "xfs_iunlink_remove" && h.available);
    for hook in &mut found {
        if hook.name == "xfs_iunlink" && hook.available && !remove_ok {
            hook.available = false;
            hook.note = "needs xfs_iunlink_remove, which is unavailable".to_string();
        }
    }
    found
}

fn probe_each_rename_target_hook(
    tracefs: Option<&Path>,
    btf: Result<&KernelBtf, &BtfError>,
) -> Vec<RenameTargetHookStatus> {
    use super::btf_offsets::{field_offset, tracepoint_arg_is_struct_ptr};
    RENAME_TARGET_HOOKS
        .iter()
        .map(|hook| {
            let status = |available: bool, note: String| RenameTargetHookStatus {
                name: hook.name,
                available,
                note,
            };
            let exists =
                tracefs.is_some_and(|t| t.join("events").join(hook.group).join(hook.name).is_dir());
            if !exists {
                return status(
                    false,
                    format!("tracepoint {}:{} not on this kernel", hook.group, hook.name),
                );
            }
            let btf = match btf {
                Ok(btf) => btf,
                Err(e) => return status(false, format!("BTF: {e}")),
            };
            // xfs_inode hooks find the VFS inode through a BTF offset: without it they would
            // read the wrong memory.
            if hook.arg_struct == "xfs_inode"
                && field_offset(btf, "xfs_inode", &["i_vnode"]).is_err()
            {
                return status(
                    false,
                    "struct xfs_inode is not in vmlinux BTF (xfs built as a module?)".to_string(),
                );
            }
            match tracepoint_arg_is_struct_ptr(btf, hook.name, 0, hook.arg_struct) {
                Ok(Some(true)) => status(true, hook.sees.to_string()),
                Ok(None) if hook.arg_struct == "inode" => status(
                    true,
                    format!("{} (prototype in module BTF, not checked)", hook.sees),
                ),
                Ok(None) => status(
                    false,
                    format!("the prototype of {} is not in vmlinux BTF", hook.name),
                ),
                Ok(Some(false)) => status(
                    false,
                    format!(
                        "argument 0 of {} is not a struct {} * in BTF",
                        hook.name, hook.arg_struct
                    ),
                ),
                Err(e) => status(false, format!("BTF: {e}")),
            }
        })
        .collect()
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// tracefs, mounting it at /sys/kernel/tracing when nothing has (fresh machines and minimal
/// containers often have it unmounted; tracepoint ids are read from it).
fn tracefs_dir() -> Option<PathBuf> {
    for candidate in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        let dir = Path::new(candidate);
        if dir.join("events").is_dir() {
            return Some(dir.to_path_buf());
        }
    }
    let target = Path::new("/sys/kernel/tracing");
    if mount_tracefs(target) && target.join("events").is_dir() {
        return Some(target.to_path_buf());
    }
    None
}

fn mount_tracefs(target: &Path) -> bool {
    use std::ffi::CString;
    let (Ok(src), Ok(dst), Ok(fstype)) = (
        CString::new("tracefs"),
        CString::new(target.as_os_str().as_encoded_bytes()),
        CString::new("tracefs"),
    ) else {
        return false;
    };
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        log::warn!(
            "tracefs is not mounted and mounting it at {} failed: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
    rc == 0
}
