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

/// Hook families, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `syscalls:sys_enter_*`/`sys_exit_*` tracepoints plus scheduler raw tracepoints. Needs
    /// only tracepoint support, which every kernel with BPF has.
    SyscallTracepoints,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::SyscallTracepoints => "syscall-tracepoints",
        }
    }
}

/// What was found on this kernel.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Capabilities {
    pub kernel_release: String,
    pub tracefs: Option<PathBuf>,
    pub syscall_tracepoints: bool,
    pub btf: bool,
    pub kprobes: bool,
    /// `bpf` is in the active LSM list (LSM programs attached elsewhere never run).
    pub bpf_lsm_active: bool,
}

impl Capabilities {
    pub fn probe() -> Self {
        let tracefs = tracefs_dir();
        let syscall_tracepoints = tracefs
            .as_ref()
            .is_some_and(|t| t.join("events/syscalls/sys_enter_unlinkat").is_dir());
        let kprobes = tracefs
            .as_ref()
            .is_some_and(|t| t.join("kprobe_events").exists());
        let bpf_lsm_active = fs::read_to_string("/sys/kernel/security/lsm")
            .map(|l| l.trim().split(',').any(|m| m == "bpf"))
            .unwrap_or(false);
        Capabilities {
            kernel_release: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            tracefs,
            syscall_tracepoints,
            btf: Path::new(super::btf_offsets::VMLINUX_BTF).exists(),
            kprobes,
            bpf_lsm_active,
        }
    }

    /// The best implemented backend this kernel supports.
    pub fn best_backend(&self) -> Option<Backend> {
        (self.syscall_tracepoints && self.btf).then_some(Backend::SyscallTracepoints)
    }

    pub fn has_syscall_tracepoint(&self, name: &str) -> bool {
        self.tracefs
            .as_ref()
            .is_some_and(|t| t.join("events/syscalls").join(name).is_dir())
    }

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
        )
    }
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
