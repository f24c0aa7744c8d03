//! Checks every offset that `watcher::kernel::btf_offsets` computes for the running kernel
//! against a second, independent reading of the same BTF: bpftool's raw dump, parsed here.
//!
//! A wrong offset makes the eBPF programs read the wrong kernel memory and report garbage
//! paths and pids without any error, so each one is compared, not sampled. The struct and field
//! names are written out again here rather than taken from the module, so that a field mapped to
//! the wrong kernel member is caught too.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use watcher::kernel::btf_offsets::{
    KernelBtf, VMLINUX_BTF, kernel_offsets, tracepoint_arg_is_struct_ptr,
};
use watcher_common::KernelOffsets;

/// Where Debian's `bpftool` package installs it; `bpftool` on PATH is tried first.
const BPFTOOL_PATHS: [&str; 3] = ["bpftool", "/usr/sbin/bpftool", "/sbin/bpftool"];

#[derive(Debug)]
struct RawMember {
    /// `None` for an anonymous member.
    name: Option<String>,
    type_id: u32,
    bits_offset: u64,
    bitfield_size: Option<u32>,
}

#[derive(Debug)]
enum RawType {
    /// STRUCT or UNION.
    Composite {
        name: Option<String>,
        members: Vec<RawMember>,
    },
    /// TYPEDEF, CONST, VOLATILE, RESTRICT, TYPE_TAG: stands for the type it refers to.
    Alias(u32),
    Other,
}

/// bpftool's `format raw` output, indexed by type id.
struct RawBtf {
    types: HashMap<u32, RawType>,
}

/// `'name'` at the start of `s` (names such as `'long unsigned int'` hold spaces), then the rest.
fn quoted(s: &str) -> Option<(Option<String>, &str)> {
    let s = s.strip_prefix('\'')?;
    let end = s.find('\'')?;
    let name = &s[..end];
    let name = (name != "(anon)").then(|| name.to_string());
    Some((name, &s[end + 1..]))
}

/// Value of `key=` among the space-separated attributes of a line.
fn attr<T: std::str::FromStr>(attrs: &str, key: &str) -> Option<T> {
    attrs
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

impl RawBtf {
    fn parse(dump: &str) -> RawBtf {
        let mut types = HashMap::new();
        let mut current: Option<(u32, RawType)> = None;
        for (lineno, line) in dump.lines().enumerate() {
            let bad = || -> ! { panic!("unexpected bpftool line {}: {line:?}", lineno + 1) };
            if let Some(member) = line.strip_prefix('\t') {
                // Members of a struct/union; enum values, parameters and datasec entries are
                // also indented and are of no interest.
                if let Some((_, RawType::Composite { members, .. })) = &mut current {
                    let (name, attrs) = quoted(member).unwrap_or_else(|| bad());
                    members.push(RawMember {
                        name,
                        type_id: attr(attrs, "type_id").unwrap_or_else(|| bad()),
                        bits_offset: attr(attrs, "bits_offset").unwrap_or_else(|| bad()),
                        bitfield_size: attr(attrs, "bitfield_size"),
                    });
                }
                continue;
            }
            let Some(rest) = line.strip_prefix('[') else {
                if line.trim().is_empty() {
                    continue;
                }
                bad()
            };
            if let Some((id, ty)) = current.take() {
                types.insert(id, ty);
            }
            let (id, rest) = rest.split_once("] ").unwrap_or_else(|| bad());
            let id: u32 = id.parse().unwrap_or_else(|_| bad());
            let (kind, rest) = rest.split_once(' ').unwrap_or_else(|| bad());
            let (name, attrs) = quoted(rest).unwrap_or_else(|| bad());
            let ty = match kind {
                "STRUCT" | "UNION" => RawType::Composite {
                    name,
                    members: Vec::new(),
                },
                "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG" => {
                    RawType::Alias(attr(attrs, "type_id").unwrap_or_else(|| bad()))
                }
                _ => RawType::Other,
            };
            current = Some((id, ty));
        }
        if let Some((id, ty)) = current {
            types.insert(id, ty);
        }
        RawBtf { types }
    }

    /// Members of the struct/union `id` stands for, through aliases.
    fn composite_members(&self, mut id: u32) -> Option<&[RawMember]> {
        for _ in 0..64 {
            match self.types.get(&id)? {
                RawType::Composite { members, .. } => return Some(members),
                RawType::Alias(to) => id = *to,
                RawType::Other => return None,
            }
        }
        panic!("alias chain from type {id} too long");
    }

    /// Bit offset of `field` among `members`, looking into anonymous struct/union members.
    fn find<'a>(&'a self, members: &'a [RawMember], field: &str) -> Option<(u64, &'a RawMember)> {
        for m in members {
            match &m.name {
                Some(name) if name == field => return Some((m.bits_offset, m)),
                Some(_) => {}
                None => {
                    let found = self
                        .composite_members(m.type_id)
                        .and_then(|inner| self.find(inner, field));
                    if let Some((bits, found)) = found {
                        return Some((m.bits_offset + bits, found));
                    }
                }
            }
        }
        None
    }

    /// Byte offset of `struct_name.field`, insisting on a single definition of the struct and
    /// a byte-aligned, non-bitfield member.
    fn offset(&self, struct_name: &str, field: &str) -> Result<u32, String> {
        let definitions: Vec<&[RawMember]> = self
            .types
            .values()
            .filter_map(|t| match t {
                RawType::Composite {
                    name: Some(name),
                    members,
                } if name == struct_name => Some(members.as_slice()),
                _ => None,
            })
            .collect();
        let [members] = definitions[..] else {
            return Err(format!(
                "{} definitions of struct {struct_name} in bpftool's dump",
                definitions.len()
            ));
        };
        let (bits, member) = self
            .find(members, field)
            .ok_or_else(|| format!("{struct_name}.{field} not in bpftool's dump"))?;
        if member.bitfield_size.unwrap_or(0) != 0 || bits % 8 != 0 {
            return Err(format!(
                "{struct_name}.{field} is not byte-addressable in bpftool's dump: {member:?}"
            ));
        }
        u32::try_from(bits / 8).map_err(|e| e.to_string())
    }
}

fn bpftool_dump() -> String {
    let mut failures = Vec::new();
    for bpftool in BPFTOOL_PATHS {
        match Command::new(bpftool)
            .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
            .output()
        {
            Ok(out) if out.status.success() => {
                return String::from_utf8(out.stdout).expect("bpftool output is UTF-8");
            }
            Ok(out) => failures.push(format!(
                "{bpftool}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => failures.push(format!("{bpftool}: {e}")),
        }
    }
    panic!(
        "this test needs a working bpftool to cross-check the BTF offsets; \
         install it with `apt-get install bpftool`. Tried: {}",
        failures.join("; ")
    );
}

#[test]
fn every_offset_matches_bpftool() {
    assert!(
        Path::new(VMLINUX_BTF).exists(),
        "{VMLINUX_BTF} is missing: ctrwatch needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    );
    let ours = kernel_offsets().expect("kernel_offsets() on the running kernel");
    let raw = RawBtf::parse(&bpftool_dump());
    assert!(
        raw.types.len() > 1000,
        "bpftool's dump parsed to only {} types",
        raw.types.len()
    );

    // Destructured without `..`: a new KernelOffsets field must be added here to compile.
    let KernelOffsets {
        task_pid,
        task_tgid,
        task_real_parent,
        task_fs,
        task_files,
        task_mm,
        task_nsproxy,
        task_exit_code,
        fs_pwd,
        fs_root,
        path_mnt,
        path_dentry,
        files_fdt,
        fdt_max_fds,
        fdt_fd,
        file_f_path,
        file_f_inode,
        file_f_mode,
        dentry_d_parent,
        dentry_d_name,
        dentry_d_inode,
        qstr_len,
        qstr_name,
        inode_i_ino,
        inode_i_sb,
        inode_i_size,
        inode_i_mode,
        inode_i_nlink,
        sb_s_dev,
        xfs_inode_i_vnode,
        renamedata_old_dentry,
        renamedata_flags,
        mount_mnt,
        mount_mnt_parent,
        mount_mnt_mountpoint,
        vfsmount_mnt_root,
        mm_arg_start,
        mm_arg_end,
        mm_exe_file,
        nsproxy_mnt_ns,
        mnt_ns_ns,
        ns_common_inum,
        valid,
    } = ours;
    assert_eq!(valid, 1, "valid must be set on success");

    let mut expected: Vec<(&str, &str, &str, u32)> = vec![
        ("task_pid", "task_struct", "pid", task_pid),
        ("task_tgid", "task_struct", "tgid", task_tgid),
        (
            "task_real_parent",
            "task_struct",
            "real_parent",
            task_real_parent,
        ),
        ("task_fs", "task_struct", "fs", task_fs),
        ("task_files", "task_struct", "files", task_files),
        ("task_mm", "task_struct", "mm", task_mm),
        ("task_nsproxy", "task_struct", "nsproxy", task_nsproxy),
        ("task_exit_code", "task_struct", "exit_code", task_exit_code),
        ("fs_pwd", "fs_struct", "pwd", fs_pwd),
        ("fs_root", "fs_struct", "root", fs_root),
        ("path_mnt", "path", "mnt", path_mnt),
        ("path_dentry", "path", "dentry", path_dentry),
        ("files_fdt", "files_struct", "fdt", files_fdt),
        ("fdt_max_fds", "fdtable", "max_fds", fdt_max_fds),
        ("fdt_fd", "fdtable", "fd", fdt_fd),
        ("file_f_path", "file", "f_path", file_f_path),
        ("file_f_inode", "file", "f_inode", file_f_inode),
        ("file_f_mode", "file", "f_mode", file_f_mode),
        ("dentry_d_parent", "dentry", "d_parent", dentry_d_parent),
        ("dentry_d_name", "dentry", "d_name", dentry_d_name),
        ("dentry_d_inode", "dentry", "d_inode", dentry_d_inode),
        ("qstr_len", "qstr", "len", qstr_len),
        ("qstr_name", "qstr", "name", qstr_name),
        ("inode_i_ino", "inode", "i_ino", inode_i_ino),
        ("inode_i_sb", "inode", "i_sb", inode_i_sb),
        ("inode_i_size", "inode", "i_size", inode_i_size),
        ("inode_i_mode", "inode", "i_mode", inode_i_mode),
        ("inode_i_nlink", "inode", "i_nlink", inode_i_nlink),
        ("sb_s_dev", "super_block", "s_dev", sb_s_dev),
        ("mount_mnt", "mount", "mnt", mount_mnt),
        ("mount_mnt_parent", "mount", "mnt_parent", mount_mnt_parent),
        (
            "mount_mnt_mountpoint",
            "mount",
            "mnt_mountpoint",
            mount_mnt_mountpoint,
        ),
        (
            "vfsmount_mnt_root",
            "vfsmount",
            "mnt_root",
            vfsmount_mnt_root,
        ),
        ("mm_arg_start", "mm_struct", "arg_start", mm_arg_start),
        ("mm_arg_end", "mm_struct", "arg_end", mm_arg_end),
        ("mm_exe_file", "mm_struct", "exe_file", mm_exe_file),
        ("nsproxy_mnt_ns", "nsproxy", "mnt_ns", nsproxy_mnt_ns),
        ("mnt_ns_ns", "mnt_namespace", "ns", mnt_ns_ns),
        ("ns_common_inum", "ns_common", "inum", ns_common_inum),
        // struct renamedata exists since 5.12: this host's kernel has it.
        (
            "renamedata_old_dentry",
            "renamedata",
            "old_dentry",
            renamedata_old_dentry,
        ),
        ("renamedata_flags", "renamedata", "flags", renamedata_flags),
    ];
    // Optional (0 when this kernel's BTF has no xfs), checked when present.
    if xfs_inode_i_vnode != 0 {
        expected.push((
            "xfs_inode_i_vnode",
            "xfs_inode",
            "i_vnode",
            xfs_inode_i_vnode,
        ));
    } else {
        assert!(
            raw.offset("xfs_inode", "i_vnode").is_err(),
            "xfs_inode.i_vnode is in BTF but the module left it 0"
        );
    }

    let mut mismatches = Vec::new();
    for (field, struct_name, member, got) in expected {
        match raw.offset(struct_name, member) {
            Ok(want) if want == got => {}
            Ok(want) => mismatches.push(format!(
                "{field}: module says {got}, bpftool says {struct_name}.{member} is at {want}"
            )),
            Err(e) => mismatches.push(format!("{field}: {e}")),
        }
    }
    assert!(
        mismatches.is_empty(),
        "offsets disagree with bpftool:\n  {}",
        mismatches.join("\n  ")
    );
}

/// The rename-target hook reads a `struct inode *` from a raw tracepoint's argument list; the
/// position comes from the kernel's `btf_trace_<name>` prototype. Checked here on tracepoints
/// whose prototypes are known: `ext4_mark_inode_dirty(struct inode *, unsigned long)` and
/// `sched_process_exec(struct task_struct *, pid_t, struct linux_binprm *)`.
#[test]
fn tracepoint_prototypes_come_from_btf() {
    let btf = KernelBtf::open(Path::new(VMLINUX_BTF)).expect("parse vmlinux BTF");
    let check = |tp: &str, index: usize, name: &str| {
        tracepoint_arg_is_struct_ptr(&btf, tp, index, name)
            .unwrap_or_else(|e| panic!("{tp} argument {index}: {e}"))
    };
    let ext4 = Path::new("/sys/kernel/tracing/events/ext4/ext4_mark_inode_dirty").is_dir();
    if ext4 && !Path::new("/sys/kernel/btf/ext4").exists() {
        assert_eq!(check("ext4_mark_inode_dirty", 0, "inode"), Some(true));
        assert_eq!(check("ext4_mark_inode_dirty", 1, "inode"), Some(false));
        assert_eq!(check("ext4_mark_inode_dirty", 0, "dentry"), Some(false));
        assert_eq!(check("ext4_mark_inode_dirty", 2, "inode"), Some(false));
    }
    // `xfs_iunlink(struct xfs_inode *)`, `btrfs_inode_evict(const struct inode *)` (the
    // qualifier is looked through).
    let tracing = Path::new("/sys/kernel/tracing/events");
    if tracing.join("xfs/xfs_iunlink").is_dir() && !Path::new("/sys/kernel/btf/xfs").exists() {
        assert_eq!(check("xfs_iunlink", 0, "xfs_inode"), Some(true));
        assert_eq!(check("xfs_iunlink", 0, "inode"), Some(false));
    }
    if tracing.join("btrfs/btrfs_inode_evict").is_dir()
        && !Path::new("/sys/kernel/btf/btrfs").exists()
    {
        assert_eq!(check("btrfs_inode_evict", 0, "inode"), Some(true));
    }
    assert_eq!(check("sched_process_exec", 0, "task_struct"), Some(true));
    assert_eq!(check("sched_process_exec", 2, "linux_binprm"), Some(true));
    assert_eq!(check("sched_process_exec", 1, "task_struct"), Some(false));
    assert_eq!(check("no_such_tracepoint_at_all", 0, "inode"), None);
}
