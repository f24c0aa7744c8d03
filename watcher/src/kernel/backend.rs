//! Hook families beyond the syscall tracepoints (issue 15): what the running kernel accepts of
//! each, and the backend `--backend` / `[watch] backend` asks for.
//!
//! The fentry probe loads a program of two instructions (`r0 = 0; exit`) of type `tracing`,
//! attach type `fentry`, on [`FENTRY_PROBE_TARGET`] (the VFS function every setxattr goes
//! through, overlayfs's own included), attaches it and detaches it at once. It is made here
//! with the `bpf` system call rather than taken from the eBPF object: it needs no map, no
//! relocation and no parse of the object, so `ctrwatch probe` and the start run it in
//! milliseconds, and a kernel that refuses it (this project's CI kernel does) says so in one
//! errno. The attach is part of the probe because a kernel can verify a tracing program and
//! still refuse its trampoline (no `CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS`).
//!
//! The BPF LSM probe does the same with a program of type `lsm` (attach type `lsm_mac`) on
//! [`LSM_PROBE_TARGET`] (`bpf_lsm_inode_setxattr`, the BPF LSM's stub for the
//! `inode_setxattr` hook; returning 0 allows). On its own that proves little: a kernel whose
//! active LSMs (`/sys/kernel/security/lsm`, set by `CONFIG_LSM` or the `lsm=` boot parameter)
//! do not include `bpf` loads and attaches LSM programs and never runs them. So the family is
//! usable only when both hold; a kernel that attaches but has `bpf` inactive is
//! [`FamilyState::Inactive`], with the active list and the way to enable it.
//!
//! Where the probe succeeded and the backend asked for is `auto` or `fentry`, the fentry/fexit
//! programs of watcher-ebpf/src/fentry_xattr.rs and fentry_namespace.rs are attached to the
//! VFS xattr and namespace functions ([`FENTRY_HOOKS`]): they report the operations the
//! kernel makes itself (overlayfs's `trusted.overlay.*`, whiteouts, copy-ups, upper-layer
//! unlinks), labelled kernel-internal. Every system call is still reported by the syscall
//! tracepoints (the fentry programs skip a thread's own system call, so none is reported
//! twice). Each hook's argument positions, return type and the struct members it reads are
//! checked against the running kernel's BTF first; a hook that differs is left unattached,
//! with the reason.
//! `fentry` asked for on a kernel that refuses it is an error at the start (an operator who
//! asks for it wants to know); `auto` never fails for it.

use std::os::fd::{FromRawFd as _, OwnedFd};

use ctrwatch_config::Backend as Requested;

use super::btf_offsets::{BtfError, FunctionPrototype, KernelBtf, function_prototype};

/// The function the fentry probe attaches to.
pub const FENTRY_PROBE_TARGET: &str = "vfs_setxattr";

/// The BPF LSM hook the LSM probe attaches to (the stub the kernel calls for `inode_setxattr`
/// when `bpf` is an active LSM).
pub const LSM_PROBE_TARGET: &str = "bpf_lsm_inode_setxattr";

/// Where the kernel lists its active LSMs, in order.
pub const ACTIVE_LSMS: &str = "/sys/kernel/security/lsm";

/// The VFS functions whose prototypes `ctrwatch probe` shows from BTF: where an fentry
/// program on them finds its arguments (they gained a `user_namespace` in 5.12, a
/// `mnt_idmap` in 6.3; vfs_mkdir returns a dentry since 6.15).
pub const FENTRY_TARGETS: &[&str] = &[
    "vfs_setxattr",
    "__vfs_setxattr_locked",
    "__vfs_setxattr",
    "vfs_removexattr",
    "__vfs_removexattr_locked",
    "vfs_create",
    "vfs_mknod",
    "vfs_mkdir",
    "vfs_symlink",
    "vfs_unlink",
    "vfs_rmdir",
    "vfs_link",
    "vfs_rename",
];

/// `name(params)` from BTF, or why not, for each of [`FENTRY_TARGETS`].
pub fn fentry_target_prototypes(btf: Result<&KernelBtf, &BtfError>) -> Vec<(&'static str, String)> {
    FENTRY_TARGETS
        .iter()
        .map(|&name| {
            let text = match btf.map(|btf| function_prototype(btf, name)) {
                Ok(Ok(Some(p))) => format!(
                    "{name}{} -> {}",
                    p.signature(),
                    ctrwatch_event::escape(&p.returns)
                ),
                Ok(Ok(None)) => format!("{name}: not in the kernel's BTF"),
                Ok(Err(e)) => format!("{name}: BTF: {e}"),
                Err(e) => format!("{name}: BTF: {e}"),
            };
            (name, text)
        })
        .collect()
}

/// What the probe found of a hook family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FamilyState {
    /// A test program loaded and attached.
    Usable,
    /// The kernel refused it (or lacks what it needs).
    Refused,
    /// The test program loaded and attached, but would never run: BPF LSM with `bpf` not in
    /// the kernel's active LSMs.
    Inactive,
    /// Not probed by loading (no program of this family in this build).
    NotProbed,
}

impl FamilyState {
    /// `usable`, `refused`, `not-probed`.
    pub fn name(self) -> &'static str {
        match self {
            FamilyState::Usable => "usable",
            FamilyState::Refused => "refused",
            FamilyState::Inactive => "inactive",
            FamilyState::NotProbed => "not-probed",
        }
    }
}

/// One hook family's probe result.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FamilyProbe {
    /// `fentry`, `lsm`.
    pub family: &'static str,
    /// What was found.
    pub state: FamilyState,
    /// What was tried and what the kernel said.
    pub detail: String,
    /// Programs of this family attached by the daemon (0 in `probe`).
    pub programs_attached: usize,
}

impl FamilyProbe {
    /// `fentry usable (...)`, for logs, `probe` and `status`.
    pub fn summary(&self) -> String {
        let attached = if self.programs_attached > 0 {
            format!(", {} programs attached", self.programs_attached)
        } else {
            String::new()
        };
        format!(
            "{} {} ({}){attached}",
            self.family,
            self.state.name(),
            self.detail
        )
    }
}

/// An fentry/fexit pair of watcher-ebpf/src/fentry_xattr.rs or fentry_namespace.rs on one VFS
/// function, and the prototype its programs read their arguments by.
#[derive(Clone, Copy, Debug)]
pub struct FentryHook {
    /// The kernel function.
    pub function: &'static str,
    /// The fexit program (reports).
    pub fexit: &'static str,
    /// The fentry program (counts the nesting).
    pub fentry: &'static str,
    /// How many parameters the programs expect (the fexit reads the return value after them).
    pub params: usize,
    /// The parameters the programs read: position and short type (see
    /// [`super::btf_offsets::FunctionParam::type_name`]).
    pub reads: &'static [(usize, &'static str)],
    /// The return type the fexit program reads (an error number or 0).
    pub returns: &'static str,
    /// Struct members the programs read through a pointer argument, at the offsets of the
    /// kernel's BTF (`KernelOffsets`): (struct, member).
    pub members: &'static [(&'static str, &'static str)],
    /// What it sees, for `ctrwatch probe`.
    pub sees: &'static str,
}

/// The fentry hooks the programs implement.
pub const FENTRY_HOOKS: &[FentryHook] = &[
    FentryHook {
        function: "vfs_setxattr",
        fexit: "fexit_vfs_setxattr",
        fentry: "fentry_vfs_setxattr",
        params: 6,
        reads: &[
            (1, "struct dentry *"),
            (2, "char *"),
            (3, "void *"),
            (4, "size_t"),
        ],
        returns: "int",
        members: &[],
        sees: "xattrs the kernel sets itself (overlayfs copy-up, opaque directories)",
    },
    FentryHook {
        function: "vfs_removexattr",
        fexit: "fexit_vfs_removexattr",
        fentry: "fentry_vfs_removexattr",
        params: 3,
        reads: &[(1, "struct dentry *"), (2, "char *")],
        returns: "int",
        members: &[],
        sees: "xattrs the kernel removes itself",
    },
    FentryHook {
        function: "vfs_create",
        fexit: "fexit_vfs_create",
        fentry: "fentry_vfs_create",
        params: 5,
        reads: &[(2, "struct dentry *"), (3, "umode_t")],
        returns: "int",
        members: &[],
        sees: "files the kernel creates itself (overlayfs copy-up in work/, upper files)",
    },
    FentryHook {
        function: "vfs_mknod",
        fexit: "fexit_vfs_mknod",
        fentry: "fentry_vfs_mknod",
        params: 5,
        reads: &[(2, "struct dentry *"), (3, "umode_t"), (4, "dev_t")],
        returns: "int",
        members: &[],
        sees: "devices the kernel makes itself (overlayfs whiteouts)",
    },
    FentryHook {
        function: "vfs_mkdir",
        fexit: "fexit_vfs_mkdir",
        fentry: "fentry_vfs_mkdir",
        params: 4,
        reads: &[(2, "struct dentry *"), (3, "umode_t")],
        // A dentry since 6.15: not this build's.
        returns: "int",
        members: &[],
        sees: "directories the kernel makes itself (overlayfs copy-up, opaque directories)",
    },
    FentryHook {
        function: "vfs_symlink",
        fexit: "fexit_vfs_symlink",
        fentry: "fentry_vfs_symlink",
        params: 4,
        reads: &[(2, "struct dentry *"), (3, "char *")],
        returns: "int",
        members: &[],
        sees: "symlinks the kernel makes itself (overlayfs copy-up of a symlink)",
    },
    FentryHook {
        function: "vfs_unlink",
        fexit: "fexit_vfs_unlink",
        fentry: "fentry_vfs_unlink",
        params: 4,
        reads: &[(2, "struct dentry *")],
        returns: "int",
        members: &[],
        sees: "files the kernel unlinks itself (overlayfs's upper files)",
    },
    FentryHook {
        function: "vfs_rmdir",
        fexit: "fexit_vfs_rmdir",
        fentry: "fentry_vfs_rmdir",
        params: 3,
        reads: &[(2, "struct dentry *")],
        returns: "int",
        members: &[],
        sees: "directories the kernel removes itself (overlayfs's upper directories)",
    },
    FentryHook {
        function: "vfs_link",
        fexit: "fexit_vfs_link",
        fentry: "fentry_vfs_link",
        params: 5,
        reads: &[(0, "struct dentry *"), (3, "struct dentry *")],
        returns: "int",
        members: &[],
        sees: "links the kernel makes itself (overlayfs copy-up of a file, shared whiteouts)",
    },
    FentryHook {
        function: "vfs_rename",
        fexit: "fexit_vfs_rename",
        fentry: "fentry_vfs_rename",
        params: 1,
        reads: &[(0, "struct renamedata *")],
        returns: "int",
        members: &[("renamedata", "old_dentry"), ("renamedata", "flags")],
        sees: "renames the kernel makes itself (overlayfs copy-up and whiteouts into upper/)",
    },
];

/// What was found about one [`FentryHook`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FentryHookStatus {
    /// The kernel function.
    pub function: &'static str,
    /// Its programs may be loaded on this kernel.
    pub usable: bool,
    /// Why not, or what it sees.
    pub note: String,
}

/// Checks each [`FentryHook`]'s prototype in the running kernel's BTF (and that the fentry
/// probe succeeded).
pub fn probe_fentry_hooks(
    btf: Result<&KernelBtf, &BtfError>,
    fentry: &FamilyProbe,
) -> Vec<FentryHookStatus> {
    FENTRY_HOOKS
        .iter()
        .map(|hook| {
            let status = |usable: bool, note: String| FentryHookStatus {
                function: hook.function,
                usable,
                note,
            };
            if fentry.state != FamilyState::Usable {
                return status(false, "fentry refused by this kernel".to_string());
            }
            let prototype = match btf.map(|btf| function_prototype(btf, hook.function)) {
                Ok(Ok(Some(p))) => p,
                Ok(Ok(None)) => return status(false, "not in the kernel's BTF".to_string()),
                Ok(Err(e)) => return status(false, format!("BTF: {e}")),
                Err(e) => return status(false, format!("BTF: {e}")),
            };
            let btf = btf.ok();
            let missing = hook.members.iter().find(|&&(s, m)| {
                btf.is_none_or(|btf| super::btf_offsets::field_offset(btf, s, &[m]).is_err())
            });
            if let Some((s, m)) = missing {
                return status(false, format!("struct {s} has no {m} in the kernel's BTF"));
            }
            match prototype_mismatch(hook, &prototype) {
                None => status(true, hook.sees.to_string()),
                Some(why) => status(
                    false,
                    format!(
                        "prototype not known to this build ({why}): {}{}",
                        hook.function,
                        prototype.signature()
                    ),
                ),
            }
        })
        .collect()
}

/// Why `prototype` is not the one `hook`'s programs read, or None.
fn prototype_mismatch(hook: &FentryHook, prototype: &FunctionPrototype) -> Option<String> {
    if prototype.returns != hook.returns {
        // The name is the BTF's: escaped for display.
        return Some(format!(
            "returns {}, the fexit program reads {}",
            ctrwatch_event::escape(&prototype.returns),
            hook.returns
        ));
    }
    params_mismatch(prototype, hook.params, hook.reads, "the programs read")
}

/// Why `prototype` does not have the `params` parameters, with the types of `reads` at their
/// positions, that a program reads (`reader` says which, in the reason), or None. Shared by
/// the fentry and the LSM hooks' prototype checks.
fn params_mismatch(
    prototype: &FunctionPrototype,
    params: usize,
    reads: &[(usize, &str)],
    reader: &str,
) -> Option<String> {
    if prototype.params.len() != params {
        return Some(format!(
            "{} parameters, {reader} {params}",
            prototype.params.len()
        ));
    }
    for &(position, type_name) in reads {
        let found = prototype.params.get(position).map(|p| p.type_name.as_str());
        if found != Some(type_name) {
            // The name is the BTF's: escaped for display.
            return Some(format!(
                "parameter {position} is {}, {reader} a {type_name}",
                found.map_or_else(|| "missing".to_string(), ctrwatch_event::escape)
            ));
        }
    }
    None
}

/// The fentry programs' links, with their names, and the programs left unattached.
pub struct FentryAttached {
    /// (program name, link), fexit before fentry.
    pub links: Vec<(String, aya::programs::links::FdLink)>,
    /// Programs not attached.
    pub unavailable: Vec<String>,
}

/// Loads and attaches the fentry/fexit programs of `ebpf` where the backend asked for and the
/// kernel allow them (see the module's doc).
pub fn attach_fentry(
    ebpf: &mut aya::Ebpf,
    requested: Requested,
    hooks: &[FentryHookStatus],
) -> Result<FentryAttached, super::KernelError> {
    use aya::programs::{FEntry, FExit, Program};
    let mut out = FentryAttached {
        links: Vec::new(),
        unavailable: Vec::new(),
    };
    let all: Vec<String> = ebpf
        .programs()
        .filter(|(_, p)| matches!(p, Program::FEntry(_) | Program::FExit(_)))
        .map(|(name, _)| name.to_string())
        .collect();
    let usable: Vec<&FentryHook> = FENTRY_HOOKS
        .iter()
        .filter(|hook| {
            hooks
                .iter()
                .any(|h| h.function == hook.function && h.usable)
        })
        .collect();
    if requested == Requested::Tracepoint || usable.is_empty() {
        out.unavailable = all;
        return Ok(out);
    }
    // aya loads fentry programs against its own parse of the kernel's BTF.
    let btf = aya::Btf::from_sys_fs().map_err(|e| super::KernelError::Program {
        name: "fentry".into(),
        source: aya::programs::ProgramError::Btf(e),
    })?;
    for hook in &usable {
        let attached = (|| -> Result<Vec<(String, aya::programs::links::FdLink)>, (String, aya::programs::ProgramError)> {
            let mut links = Vec::new();
            let fexit: &mut FExit = ebpf
                .program_mut(hook.fexit)
                .ok_or((hook.fexit.to_string(), aya::programs::ProgramError::NotLoaded))?
                .try_into()
                .map_err(|e| (hook.fexit.to_string(), e))?;
            fexit
                .load(hook.function, &btf)
                .map_err(|e| (hook.fexit.to_string(), e))?;
            let id = fexit.attach().map_err(|e| (hook.fexit.to_string(), e))?;
            let link = fexit.take_link(id).map_err(|e| (hook.fexit.to_string(), e))?;
            links.push((hook.fexit.to_string(), link.into()));
            let fentry: &mut FEntry = ebpf
                .program_mut(hook.fentry)
                .ok_or((hook.fentry.to_string(), aya::programs::ProgramError::NotLoaded))?
                .try_into()
                .map_err(|e| (hook.fentry.to_string(), e))?;
            fentry
                .load(hook.function, &btf)
                .map_err(|e| (hook.fentry.to_string(), e))?;
            let id = fentry.attach().map_err(|e| (hook.fentry.to_string(), e))?;
            let link = fentry.take_link(id).map_err(|e| (hook.fentry.to_string(), e))?;
            links.push((hook.fentry.to_string(), link.into()));
            Ok(links)
        })();
        match attached {
            Ok(links) => out.links.extend(links),
            // Asked for by name: a refusal is the operator's to see at once.
            Err((name, source)) if requested == Requested::Fentry => {
                return Err(super::KernelError::Program { name, source });
            }
            // The syscall tracepoints still report every system call: a warning.
            Err((name, source)) => log::warn!(
                "{name}: not attached, the kernel's own changes through {} are not seen: {source}",
                hook.function
            ),
        }
    }
    out.unavailable = all
        .into_iter()
        .filter(|name| !out.links.iter().any(|(n, _)| n == name))
        .collect();
    Ok(out)
}

/// Loads, attaches and detaches the fentry test program on [`FENTRY_PROBE_TARGET`].
pub fn probe_fentry(btf: Result<&KernelBtf, &BtfError>) -> FamilyProbe {
    let refused = |detail: String| FamilyProbe {
        family: "fentry",
        state: FamilyState::Refused,
        detail,
        programs_attached: 0,
    };
    let btf = match btf {
        Ok(btf) => btf,
        Err(e) => return refused(format!("needs the kernel's BTF: {e}")),
    };
    let prototype = match function_prototype(btf, FENTRY_PROBE_TARGET) {
        Ok(Some(p)) => p,
        Ok(None) => {
            return refused(format!(
                "{FENTRY_PROBE_TARGET} is not a function in the kernel's BTF"
            ));
        }
        Err(e) => return refused(format!("BTF: {e}")),
    };
    match load_and_attach_fentry(&prototype) {
        Ok(()) => FamilyProbe {
            family: "fentry",
            state: FamilyState::Usable,
            detail: format!("a test program loaded and attached on {FENTRY_PROBE_TARGET}"),
            programs_attached: 0,
        },
        Err(e) => refused(e),
    }
}

/// The kernel's active LSMs as [`ACTIVE_LSMS`] lists them (`lockdown,capability,...,bpf`),
/// or why they could not be read.
pub fn active_lsms() -> Result<String, String> {
    std::fs::read_to_string(ACTIVE_LSMS)
        .map(|l| l.trim().to_string())
        .map_err(|e| format!("{ACTIVE_LSMS}: {e}"))
}

/// Whether `bpf` is one of the comma-separated `active` LSMs.
pub fn bpf_lsm_in(active: &str) -> bool {
    active.split(',').any(|m| m.trim() == "bpf")
}

/// Loads, attaches and detaches the LSM test program on [`LSM_PROBE_TARGET`], and combines
/// the outcome with the active LSMs (`active`: [`active_lsms`]); see the module's doc.
pub fn probe_lsm(
    btf: Result<&KernelBtf, &BtfError>,
    active: &Result<String, String>,
) -> FamilyProbe {
    let attached = match btf {
        Err(e) => Err(format!(
            "needs the kernel's BTF to find {LSM_PROBE_TARGET}: {e}"
        )),
        Ok(btf) => match function_prototype(btf, LSM_PROBE_TARGET) {
            Ok(Some(p)) => load_and_attach(&p, BPF_PROG_TYPE_LSM, BPF_LSM_MAC, LSM_PROBE_TARGET),
            Ok(None) => Err(format!(
                "{LSM_PROBE_TARGET} is not a function in the kernel's BTF (no CONFIG_BPF_LSM)"
            )),
            Err(e) => Err(format!("BTF: {e}")),
        },
    };
    lsm_verdict(attached, active)
}

/// The LSM family's state from the test program's outcome and the active LSMs.
fn lsm_verdict(attached: Result<(), String>, active: &Result<String, String>) -> FamilyProbe {
    let (state, detail) = match (attached, active) {
        (Ok(()), Ok(list)) if bpf_lsm_in(list) => (
            FamilyState::Usable,
            format!(
                "a test program loaded and attached on {LSM_PROBE_TARGET}; `bpf` is an active LSM"
            ),
        ),
        (Ok(()), Ok(list)) => (
            FamilyState::Inactive,
            format!(
                "`bpf` is not in {ACTIVE_LSMS} (`{}`): LSM programs attach (a test program did, \
                 on {LSM_PROBE_TARGET}) but never run; add `bpf` to the kernel's `lsm=` boot \
                 parameter to enable it",
                ctrwatch_event::escape(list)
            ),
        ),
        (Ok(()), Err(e)) => (
            FamilyState::Inactive,
            format!(
                "the active LSMs are unknown ({}): LSM programs attach (a test program did, on \
                 {LSM_PROBE_TARGET}) but run only where `bpf` is an active LSM",
                ctrwatch_event::escape(e)
            ),
        ),
        (Err(why), active) => (
            FamilyState::Refused,
            match active {
                Ok(list) if bpf_lsm_in(list) => format!("{why}; `bpf` is an active LSM"),
                Ok(list) => format!(
                    "{why}; `bpf` is not an active LSM either (`{}`)",
                    ctrwatch_event::escape(list)
                ),
                Err(e) => format!(
                    "{why}; the active LSMs are unknown ({})",
                    ctrwatch_event::escape(e)
                ),
            },
        ),
    };
    FamilyProbe {
        family: "lsm",
        state,
        detail,
        programs_attached: 0,
    }
}

/// An LSM program of watcher-ebpf/src/lsm.rs (protect mode) and the
/// prototype of its hook it reads (`bpf_lsm_<hook>` in BTF).
#[derive(Clone, Copy, Debug)]
pub struct LsmHook {
    /// The LSM hook (`inode_unlink`).
    pub hook: &'static str,
    /// The program.
    pub program: &'static str,
    /// How many parameters the hook has (the program reads the previous verdict after them).
    pub params: usize,
    /// The parameters the program reads: position and short type.
    pub reads: &'static [(usize, &'static str)],
    /// Struct fields the program reads at a fixed offset: (struct, field, offset). The hook
    /// is skipped where the kernel's BTF puts one elsewhere.
    pub fields: &'static [(&'static str, &'static str, u32)],
    /// Why a kernel without this hook has no hole (another hook does its work there), or
    /// None: there its absence is a hole, logged as an error.
    pub covered_when_absent: Option<&'static str>,
}

/// The protect-mode hooks.
pub const LSM_HOOKS: &[LsmHook] = &[
    LsmHook {
        hook: "inode_unlink",
        program: "lsm_inode_unlink",
        params: 2,
        reads: &[(1, "struct dentry *")],
        fields: &[],
        covered_when_absent: None,
    },
    LsmHook {
        hook: "inode_rename",
        program: "lsm_inode_rename",
        params: 4,
        reads: &[(1, "struct dentry *"), (3, "struct dentry *")],
        fields: &[],
        covered_when_absent: None,
    },
    LsmHook {
        hook: "inode_setxattr",
        program: "lsm_inode_setxattr",
        params: 6,
        reads: &[(1, "struct dentry *")],
        fields: &[],
        covered_when_absent: None,
    },
    LsmHook {
        hook: "inode_removexattr",
        program: "lsm_inode_removexattr",
        params: 3,
        reads: &[(1, "struct dentry *")],
        fields: &[],
        covered_when_absent: None,
    },
    LsmHook {
        hook: "file_open",
        program: "lsm_file_open",
        params: 1,
        reads: &[(0, "struct file *")],
        fields: &[],
        covered_when_absent: None,
    },
    LsmHook {
        hook: "path_truncate",
        program: "lsm_path_truncate",
        params: 1,
        reads: &[(0, "struct path *")],
        fields: &[],
        covered_when_absent: None,
    },
    LsmHook {
        hook: "inode_create",
        program: "lsm_inode_create",
        params: 3,
        reads: &[(1, "struct dentry *")],
        fields: &[],
        covered_when_absent: None,
    },
    LsmHook {
        hook: "inode_mknod",
        program: "lsm_inode_mknod",
        params: 4,
        reads: &[(1, "struct dentry *")],
        fields: &[],
        covered_when_absent: None,
    },
    LsmHook {
        hook: "inode_mkdir",
        program: "lsm_inode_mkdir",
        params: 3,
        reads: &[(1, "struct dentry *")],
        fields: &[],
        covered_when_absent: None,
    },
    LsmHook {
        hook: "inode_symlink",
        program: "lsm_inode_symlink",
        params: 3,
        reads: &[(1, "struct dentry *")],
        fields: &[],
        covered_when_absent: None,
    },
    LsmHook {
        hook: "inode_link",
        program: "lsm_inode_link",
        params: 3,
        reads: &[(0, "struct dentry *"), (2, "struct dentry *")],
        fields: &[],
        covered_when_absent: None,
    },
    LsmHook {
        hook: "inode_rmdir",
        program: "lsm_inode_rmdir",
        params: 2,
        reads: &[(1, "struct dentry *")],
        fields: &[],
        covered_when_absent: None,
    },
    LsmHook {
        hook: "file_truncate",
        program: "lsm_file_truncate",
        params: 1,
        reads: &[(0, "struct file *")],
        fields: &[],
        covered_when_absent: Some(
            "before 6.2 an open with O_TRUNC and ftruncate(2) call path_truncate, which is guarded",
        ),
    },
    // Two prototypes, one program each: the one that matches is attached.
    LsmHook {
        hook: "inode_setattr",
        program: "lsm_inode_setattr",
        params: 3,
        reads: &[(1, "struct dentry *"), (2, "struct iattr *")],
        fields: &[("iattr", "ia_valid", 0)],
        covered_when_absent: None,
    },
    LsmHook {
        hook: "inode_setattr",
        program: "lsm_inode_setattr_no_idmap",
        params: 2,
        reads: &[(0, "struct dentry *"), (1, "struct iattr *")],
        fields: &[("iattr", "ia_valid", 0)],
        covered_when_absent: None,
    },
];

/// Why `hook`'s program cannot be attached on this kernel, or None.
pub fn lsm_hook_mismatch(btf: &KernelBtf, hook: &LsmHook) -> Option<String> {
    let function = format!("bpf_lsm_{}", hook.hook);
    let prototype = match function_prototype(btf, &function) {
        Ok(Some(p)) => p,
        Ok(None) => return Some(format!("{function} is not in the kernel's BTF")),
        Err(e) => return Some(format!("BTF: {e}")),
    };
    if let Some(why) = params_mismatch(&prototype, hook.params, hook.reads, "the program reads") {
        return Some(format!("{function}{}: {why}", prototype.signature()));
    }
    hook.fields.iter().find_map(
        |&(struct_name, field, at)| match super::btf_offsets::field_offset(
            btf,
            struct_name,
            &[field],
        ) {
            Ok(found) if found == at => None,
            Ok(found) => Some(format!(
                "struct {struct_name}.{field} is at offset {found}, the program reads it at {at}"
            )),
            Err(e) => Some(format!("struct {struct_name}.{field}: {e}")),
        },
    )
}

/// The protect-mode programs attached, and the hooks skipped with the reason.
pub struct LsmAttached {
    /// (program name, link).
    pub links: Vec<(String, aya::programs::links::FdLink)>,
    /// (hook, why not attached): hooks left unguarded.
    pub skipped: Vec<(&'static str, String)>,
    /// (hook, why not attached): hooks absent where another hook does their work, and the
    /// programs of a hook's other prototype when one of its programs is attached.
    pub not_needed: Vec<(&'static str, String)>,
}

/// Loads and attaches the protect-mode programs whose prototypes match (the maps are filled
/// by the caller).
pub fn attach_lsm(
    ebpf: &mut aya::Ebpf,
    btf: &KernelBtf,
) -> Result<LsmAttached, super::KernelError> {
    use aya::programs::Lsm;
    let aya_btf = aya::Btf::from_sys_fs().map_err(|e| super::KernelError::Program {
        name: "lsm".into(),
        source: aya::programs::ProgramError::Btf(e),
    })?;
    let mut out = LsmAttached {
        links: Vec::new(),
        skipped: Vec::new(),
        not_needed: Vec::new(),
    };
    let mut guarded: Vec<&'static str> = Vec::new();
    for hook in LSM_HOOKS {
        if let Some(why) = lsm_hook_mismatch(btf, hook) {
            let absent = matches!(
                function_prototype(btf, &format!("bpf_lsm_{}", hook.hook)),
                Ok(None)
            );
            match hook.covered_when_absent {
                Some(covered) if absent => out
                    .not_needed
                    .push((hook.hook, format!("{why}; {covered}"))),
                _ => out.skipped.push((hook.hook, why)),
            }
            continue;
        }
        let attached = (|| -> Result<aya::programs::links::FdLink, aya::programs::ProgramError> {
            let program: &mut Lsm = ebpf
                .program_mut(hook.program)
                .ok_or(aya::programs::ProgramError::NotLoaded)?
                .try_into()?;
            program.load(hook.hook, &aya_btf)?;
            let id = program.attach()?;
            Ok(program.take_link(id)?.into())
        })();
        match attached {
            Ok(link) => {
                out.links.push((hook.program.to_string(), link));
                guarded.push(hook.hook);
            }
            Err(e) => out.skipped.push((hook.hook, e.to_string())),
        }
    }
    // A hook with two prototypes: the other program's mismatch is no hole.
    let (other, holes): (Vec<_>, Vec<_>) = std::mem::take(&mut out.skipped)
        .into_iter()
        .partition(|(hook, _)| guarded.contains(hook));
    out.skipped = holes;
    out.not_needed.extend(other.into_iter().map(|(hook, why)| {
        (
            hook,
            format!("{why}; its program for the other prototype is attached"),
        )
    }));
    Ok(out)
}

/// Why the backend asked for cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    /// `fentry` asked for, and the kernel refused the probe.
    #[error(
        "backend fentry was asked for (--backend / [watch] backend), but this kernel refused it: {0}; use `auto` or `tracepoint`"
    )]
    FentryRefused(String),
    /// A backend this build does not have.
    #[error(
        "backend {0} was asked for (--backend / [watch] backend), but this ctrwatch has no {0} programs yet; use `auto`, `tracepoint` or `fentry`"
    )]
    NotBuilt(&'static str),
}

/// Whether a pin set whose fentry/fexit links are `pinned` (program names) runs the backend
/// asked for, on a kernel whose hooks are `hooks`: adopting a set pinned under another choice
/// would keep that choice until `ctrwatch unpin` (the backend is read when programs are
/// loaded). `tracepoint` wants no fentry link; `auto` and `fentry` want some where a hook is
/// usable (which ones attached is the set's own business: a hook the kernel refused at
/// attach is listed unavailable there, and replacing the set at every start would not help).
pub fn pinned_backend_matches(
    requested: Requested,
    hooks: &[FentryHookStatus],
    pinned: &[&str],
) -> Result<(), String> {
    let usable = hooks.iter().any(|h| h.usable);
    match requested {
        Requested::Tracepoint if !pinned.is_empty() => Err(format!(
            "the backend asked for is `tracepoint`, the set has fentry links ({})",
            pinned.join(", ")
        )),
        Requested::Auto | Requested::Fentry if usable && pinned.is_empty() => Err(format!(
            "the backend asked for (`{}`) attaches fentry on this kernel, the set has no \
             fentry link (pinned under `tracepoint`)",
            requested.name()
        )),
        _ => Ok(()),
    }
}

/// Checks the backend asked for against the probe. Every choice runs the syscall tracepoints
/// for every operation in this build (fentry hooks no operation yet): the check is that
/// `fentry` is refused where the kernel refuses it.
pub fn check_requested(requested: Requested, fentry: &FamilyProbe) -> Result<(), ChoiceError> {
    match requested {
        Requested::Auto | Requested::Tracepoint => Ok(()),
        Requested::Fentry if fentry.state == FamilyState::Usable => Ok(()),
        Requested::Fentry => Err(ChoiceError::FentryRefused(fentry.detail.clone())),
        Requested::Lsm => Err(ChoiceError::NotBuilt("lsm")),
    }
}

// The `bpf` system call's values used here (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_PROG_TYPE_LSM: u32 = 29;
const BPF_TRACE_FENTRY: u32 = 24;
const BPF_LSM_MAC: u32 = 27;
/// Kernel-internal "operation not supported" (ENOTSUPP), what a kernel without trampolines
/// returns; not in libc.
const ENOTSUPP: i32 = 524;

/// `union bpf_attr` as BPF_PROG_LOAD reads it, up to `attach_btf_id` and the field after it.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_prog_fd: u32,
    _pad: u32,
}

/// `union bpf_attr` as BPF_RAW_TRACEPOINT_OPEN reads it.
#[repr(C)]
#[derive(Default)]
struct RawTracepointOpenAttr {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

/// Runs the `bpf` system call; the new descriptor, or the errno.
fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> Result<OwnedFd, std::io::Error> {
    let size = std::mem::size_of::<T>();
    // SAFETY: `attr` is a live, initialised `repr(C)` prefix of `union bpf_attr` of `size`
    // bytes (the kernel reads no more than `size`, and zero-fills the rest).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(rc).map_err(|_| std::io::Error::other("bpf returned a bad fd"))?;
    // SAFETY: a successful BPF_PROG_LOAD / BPF_RAW_TRACEPOINT_OPEN returns a new descriptor
    // that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn errno_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(ENOTSUPP) => "ENOTSUPP (not supported by this kernel)".to_string(),
        Some(libc::EPERM) => format!(
            "{e} (the kernel does not allow this program type here: its configuration, \
             lockdown, or missing privileges)"
        ),
        _ => e.to_string(),
    }
}

fn load_and_attach_fentry(target: &FunctionPrototype) -> Result<(), String> {
    load_and_attach(
        target,
        BPF_PROG_TYPE_TRACING,
        BPF_TRACE_FENTRY,
        FENTRY_PROBE_TARGET,
    )
}

/// Loads `r0 = 0; exit` as a program of `prog_type`/`attach_type` on the BTF function
/// `target` (named `target_name`), attaches it (BPF_RAW_TRACEPOINT_OPEN, which takes tracing
/// and LSM programs alike) and detaches it.
fn load_and_attach(
    target: &FunctionPrototype,
    prog_type: u32,
    attach_type: u32,
    target_name: &str,
) -> Result<(), String> {
    // r0 = 0; exit.
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..13].copy_from_slice(b"ctrwatch_prob");
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: attach_type,
        attach_btf_id: target.btf_id,
        ..Default::default()
    };
    let prog = bpf_fd(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        format!(
            "loading a test program on {target_name}: {}",
            errno_text(&e)
        )
    })?;
    let mut open = RawTracepointOpenAttr {
        name: 0,
        prog_fd: u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&prog)).unwrap_or(u32::MAX),
        _pad: 0,
    };
    // Attached while the descriptor is open; closing it (drop) detaches.
    let link = bpf_fd(BPF_RAW_TRACEPOINT_OPEN, &mut open).map_err(|e| {
        format!(
            "the test program loaded but attaching it to {target_name} failed: {}",
            errno_text(&e)
        )
    })?;
    drop(link);
    drop(prog);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn probe(state: FamilyState) -> FamilyProbe {
        FamilyProbe {
            family: "fentry",
            state,
            detail: "what the kernel said".into(),
            programs_attached: 0,
        }
    }

    #[test]
    fn fentry_is_refused_only_where_the_probe_failed() {
        let usable = probe(FamilyState::Usable);
        let refused = probe(FamilyState::Refused);
        for requested in [Requested::Auto, Requested::Tracepoint] {
            assert!(check_requested(requested, &refused).is_ok());
            assert!(check_requested(requested, &usable).is_ok());
        }
        assert!(check_requested(Requested::Fentry, &usable).is_ok());
        let err = check_requested(Requested::Fentry, &refused).unwrap_err();
        assert!(err.to_string().contains("what the kernel said"), "{err}");
        assert!(check_requested(Requested::Lsm, &usable).is_err());
    }

    #[test]
    fn a_set_pinned_under_another_backend_is_not_adopted() {
        let hook = |usable| FentryHookStatus {
            function: "vfs_setxattr",
            usable,
            note: String::new(),
        };
        let fentry = ["fentry_vfs_setxattr", "fexit_vfs_setxattr"];
        // tracepoint: no fentry link may be pinned.
        assert!(pinned_backend_matches(Requested::Tracepoint, &[hook(true)], &[]).is_ok());
        assert!(pinned_backend_matches(Requested::Tracepoint, &[hook(true)], &fentry).is_err());
        // auto and fentry: where a hook is usable, a set without fentry links was pinned under
        // tracepoint; where none is, nothing to compare.
        for requested in [Requested::Auto, Requested::Fentry] {
            assert!(pinned_backend_matches(requested, &[hook(true)], &[]).is_err());
            assert!(pinned_backend_matches(requested, &[hook(true)], &fentry).is_ok());
            assert!(pinned_backend_matches(requested, &[hook(false)], &[]).is_ok());
        }
    }

    fn param(name: &str, type_name: &str) -> super::super::btf_offsets::FunctionParam {
        super::super::btf_offsets::FunctionParam {
            name: name.into(),
            type_name: type_name.into(),
        }
    }

    #[test]
    fn prototypes_other_than_the_programs_are_skipped_with_the_reason() {
        let setxattr = &FENTRY_HOOKS[0];
        let since_6_3 = FunctionPrototype {
            btf_id: 1,
            returns: "int".into(),
            params: vec![
                param("idmap", "struct mnt_idmap *"),
                param("dentry", "struct dentry *"),
                param("name", "char *"),
                param("value", "void *"),
                param("size", "size_t"),
                param("flags", "int"),
            ],
        };
        assert_eq!(prototype_mismatch(setxattr, &since_6_3), None);
        // 5.12 to 6.2: a user_namespace first, the same positions.
        let mut since_5_12 = since_6_3.clone();
        since_5_12.params[0] = param("mnt_userns", "struct user_namespace *");
        assert_eq!(prototype_mismatch(setxattr, &since_5_12), None);
        // Before 5.12: no namespace, every argument one place earlier.
        let before_5_12 = FunctionPrototype {
            btf_id: 1,
            returns: "int".into(),
            params: since_6_3.params[1..].to_vec(),
        };
        let why = prototype_mismatch(setxattr, &before_5_12).unwrap();
        assert!(why.contains("5 parameters"), "{why}");
        // vfs_mkdir since 6.15: the same parameters, a dentry returned.
        let mkdir = FENTRY_HOOKS
            .iter()
            .find(|h| h.function == "vfs_mkdir")
            .unwrap();
        let mut mkdir_6_12 = FunctionPrototype {
            btf_id: 1,
            returns: "int".into(),
            params: vec![
                param("idmap", "struct mnt_idmap *"),
                param("dir", "struct inode *"),
                param("dentry", "struct dentry *"),
                param("mode", "umode_t"),
            ],
        };
        assert_eq!(prototype_mismatch(mkdir, &mkdir_6_12), None);
        mkdir_6_12.returns = "struct dentry *".into();
        let why = prototype_mismatch(mkdir, &mkdir_6_12).unwrap();
        assert!(why.contains("returns struct dentry *"), "{why}");
        let mut moved = since_6_3.clone();
        moved.params.swap(1, 2);
        let why = prototype_mismatch(setxattr, &moved).unwrap();
        assert!(why.contains("parameter 1 is char *"), "{why}");
    }

    /// The hooks of a kernel that refused the probe are all unusable, with that reason; on
    /// one that accepted it, checked against the running kernel's prototypes.
    #[test]
    fn hooks_follow_the_probe_and_the_running_kernels_prototypes() {
        let btf = KernelBtf::open(std::path::Path::new(super::super::btf_offsets::VMLINUX_BTF));
        let refused = probe_fentry_hooks(btf.as_ref(), &probe(FamilyState::Refused));
        assert_eq!(refused.len(), FENTRY_HOOKS.len());
        assert!(
            refused
                .iter()
                .all(|h| !h.usable && h.note.contains("refused"))
        );
        if let Ok(kernel) = btf.as_ref() {
            // This kernel's functions (6.3 or later here) are the ones the programs read, but
            // for vfs_mkdir from 6.15 on (it returns a dentry), which is skipped with the
            // prototype it has.
            let found = probe_fentry_hooks(btf.as_ref(), &probe(FamilyState::Usable));
            let mkdir_returns = function_prototype(kernel, "vfs_mkdir")
                .ok()
                .flatten()
                .map(|p| p.returns);
            for hook in &found {
                if hook.function == "vfs_mkdir" && mkdir_returns.as_deref() != Some("int") {
                    assert!(
                        !hook.usable && hook.note.contains("returns struct dentry *"),
                        "{hook:?}"
                    );
                } else {
                    assert!(hook.usable, "{hook:?}");
                }
            }
        }
    }

    /// Every protect-mode hook has a program that reads its arguments where this kernel (6.18
    /// here; the guests check 6.1 and 6.12) passes them: a wrong count or position would leave
    /// the hook unattached, a hole in protect mode. inode_setattr's other prototype (before
    /// 6.8, no idmap) is the one program that does not match here, and is refused.
    #[test]
    fn lsm_hooks_match_the_running_kernels_prototypes() {
        let Ok(btf) = KernelBtf::open(std::path::Path::new(super::super::btf_offsets::VMLINUX_BTF))
        else {
            return;
        };
        let mismatched: Vec<String> = LSM_HOOKS
            .iter()
            .filter_map(|h| Some((h.program, lsm_hook_mismatch(&btf, h)?)))
            .map(|(program, why)| format!("{program}: {why}"))
            .collect();
        assert_eq!(mismatched.len(), 1, "{mismatched:?}");
        assert!(
            mismatched[0].starts_with("lsm_inode_setattr_no_idmap: ")
                && mismatched[0].contains("3 parameters, the program reads 2"),
            "{mismatched:?}"
        );
        let wrong = LsmHook {
            hook: "inode_link",
            program: "lsm_inode_link",
            params: 3,
            reads: &[(1, "struct dentry *")],
            fields: &[],
            covered_when_absent: None,
        };
        let why = lsm_hook_mismatch(&btf, &wrong);
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("parameter 1 is struct inode *")),
            "{why:?}"
        );
        // A field read at an offset the kernel does not put it at: refused.
        let setattr = LSM_HOOKS
            .iter()
            .find(|h| h.program == "lsm_inode_setattr")
            .copied()
            .unwrap();
        let wrong_field = LsmHook {
            fields: &[("iattr", "ia_valid", 4)],
            ..setattr
        };
        let why = lsm_hook_mismatch(&btf, &wrong_field);
        assert!(
            why.as_deref()
                .is_some_and(|w| w
                    .contains("struct iattr.ia_valid is at offset 0, the program reads it at 4")),
            "{why:?}"
        );
    }

    /// LSM is usable only when the test program attached AND `bpf` is an active LSM: a
    /// kernel without `bpf` in its list attaches LSM programs and never runs them.
    #[test]
    fn lsm_is_usable_only_attached_and_active() {
        let active = Ok("lockdown,capability,landlock,yama,apparmor,bpf".to_string());
        let inactive = Ok("lockdown,capability,landlock,yama,apparmor".to_string());
        let unreadable = Err("/sys/kernel/security/lsm: No such file".to_string());
        let usable = lsm_verdict(Ok(()), &active);
        assert_eq!(usable.state, FamilyState::Usable, "{usable:?}");
        assert_eq!(usable.family, "lsm");
        let off = lsm_verdict(Ok(()), &inactive);
        assert_eq!(off.state, FamilyState::Inactive, "{off:?}");
        assert!(
            off.detail
                .contains("`bpf` is not in /sys/kernel/security/lsm")
                && off
                    .detail
                    .contains("lockdown,capability,landlock,yama,apparmor")
                && off.detail.contains("lsm="),
            "{off:?}"
        );
        assert_eq!(
            lsm_verdict(Ok(()), &unreadable).state,
            FamilyState::Inactive
        );
        for list in [&active, &inactive, &unreadable] {
            let refused = lsm_verdict(Err("the kernel said no".into()), list);
            assert_eq!(refused.state, FamilyState::Refused);
            assert!(
                refused.detail.starts_with("the kernel said no; "),
                "{refused:?}"
            );
        }
        assert!(bpf_lsm_in("capability,bpf"));
        assert!(bpf_lsm_in("bpf"));
        assert!(!bpf_lsm_in("capability,bpfilter,apparmor"));
        assert!(!bpf_lsm_in(""));
    }

    /// The real LSM probe as root: this project's CI kernel refuses LSM programs (refused,
    /// with the reason); where a kernel accepts them it is usable or inactive. The guests
    /// (`cargo xtask vm-test`) check both of those.
    #[test]
    fn lsm_probe_reports_what_this_kernel_says() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let btf = KernelBtf::open(std::path::Path::new(super::super::btf_offsets::VMLINUX_BTF));
        let found = probe_lsm(btf.as_ref(), &active_lsms());
        assert_eq!(found.family, "lsm");
        assert_ne!(found.state, FamilyState::NotProbed, "{found:?}");
        assert!(found.detail.contains(LSM_PROBE_TARGET), "{found:?}");
    }

    /// The real probe against the running kernel, as root: on a kernel that refuses fentry
    /// (this project's CI kernel) it must say refused with the kernel's reason, never panic;
    /// where it is accepted, usable. The guests (`cargo xtask vm-test`) check the usable side.
    #[test]
    fn probe_reports_what_this_kernel_says() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let btf = KernelBtf::open(std::path::Path::new(super::super::btf_offsets::VMLINUX_BTF));
        let found = probe_fentry(btf.as_ref());
        assert_eq!(found.family, "fentry");
        match found.state {
            FamilyState::Usable => assert!(found.detail.contains(FENTRY_PROBE_TARGET)),
            FamilyState::Refused => assert!(!found.detail.is_empty()),
            FamilyState::NotProbed | FamilyState::Inactive => {
                panic!("fentry is always probed, usable or refused: {found:?}")
            }
        }
    }
}
