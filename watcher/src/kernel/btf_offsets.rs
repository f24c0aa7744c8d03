//! Byte offsets of the kernel struct fields the eBPF programs read, taken from the running
//! kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The programs walk kernel structs (`task_struct`, `file`, `dentry`, `mount`...) by hand, and
//! where a field sits depends on the kernel version, its configuration (debug options, LSMs,
//! randomized layouts) and its compiler. Offsets compiled into the programs would be right for
//! one kernel build only; the kernel's own BTF describes the layout of exactly the kernel that is
//! running, so the daemon reads the offsets from it at start-up and hands them to the programs
//! in [`KernelOffsets`].
//!
//! BTF is parsed by the private [`parse`] module, written here rather than taken from a crate
//! (see there for why); the walk through anonymous structs/unions and typedef/qualifier chains is
//! done in this module, with bounded depth, because the BTF comes from outside this program and
//! is not trusted to be well formed.

mod parse;

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use parse::{Btf, Kind, Member, ParseError};
use watcher_common::KernelOffsets;

/// Where the kernel exposes its own BTF (needs CONFIG_DEBUG_INFO_BTF=y).
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Longest typedef/const/volatile/restrict/type-tag chain followed. Real kernels need 2 or 3;
/// the bound turns a reference cycle in corrupt BTF into an error instead of a hang.
const MAX_TYPE_CHAIN: usize = 32;
/// Deepest nesting of anonymous structs/unions searched, for the same reason (and to bound
/// the recursion).
const MAX_ANON_DEPTH: usize = 32;

/// Why the kernel offsets could not be computed.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant's #[error] message says what it is"
)]
pub enum BtfError {
    #[error(
        "kernel BTF file {} does not exist (the kernel needs CONFIG_DEBUG_INFO_BTF=y)",
        ctrwatch_event::escape_path(path)
    )]
    Missing { path: PathBuf },
    // The I/O error is part of the message rather than a `source`, so that it is not printed
    // twice by error-chain formatters.
    #[error(
        "cannot read kernel BTF file {}: {error}",
        ctrwatch_event::escape_path(path)
    )]
    Unreadable { path: PathBuf, error: io::Error },
    #[error("malformed BTF in {origin}: {reason}")]
    Malformed { origin: String, reason: String },
    #[error("struct or union `{name}` not found in BTF")]
    TypeNotFound { name: String },
    #[error("field `{field}` not found in struct {struct_name}")]
    FieldNotFound { struct_name: String, field: String },
    #[error(
        "{struct_name}.{field} is a {bits}-bit bitfield at bit offset {bit_offset}, \
         not a field at a byte offset"
    )]
    Bitfield {
        struct_name: String,
        field: String,
        bit_offset: u64,
        bits: u32,
    },
    #[error(
        "{struct_name}.{field} is not a struct or union, so `{next}` cannot be looked up in it"
    )]
    NotComposite {
        struct_name: String,
        field: String,
        next: String,
    },
    #[error(
        "{struct_name}.{field} has different offsets in different BTF definitions: {offsets:?}"
    )]
    Ambiguous {
        struct_name: String,
        field: String,
        offsets: Vec<u32>,
    },
}

/// Parsed BTF, ready for offset queries.
pub struct KernelBtf {
    btf: Btf,
    /// Where the BTF came from, for error messages.
    origin: String,
}

impl KernelBtf {
    /// Reads and parses a BTF file (normally [`VMLINUX_BTF`]).
    pub fn open(path: &Path) -> Result<Self, BtfError> {
        // Read it whole: I/O errors are then told apart from bad contents, and the parser
        // works on memory it owns.
        let bytes = std::fs::read(path).map_err(|error| {
            if error.kind() == io::ErrorKind::NotFound {
                BtfError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                BtfError::Unreadable {
                    path: path.to_path_buf(),
                    error,
                }
            }
        })?;
        Self::parse(bytes, ctrwatch_event::escape_path(path))
    }

    /// Parses BTF held in memory (raw BTF, as in `/sys/kernel/btf/vmlinux`, not an ELF file).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BtfError> {
        Self::parse(bytes.to_vec(), "in-memory BTF".to_string())
    }

    fn parse(bytes: Vec<u8>, origin: String) -> Result<Self, BtfError> {
        match Btf::parse(bytes) {
            Ok(btf) => Ok(Self { btf, origin }),
            Err(e) => Err(BtfError::Malformed {
                origin,
                reason: e.to_string(),
            }),
        }
    }

    fn malformed(&self, reason: impl std::fmt::Display) -> BtfError {
        BtfError::Malformed {
            origin: self.origin.clone(),
            reason: reason.to_string(),
        }
    }

    fn parse_error(&self) -> impl Fn(ParseError) -> BtfError + '_ {
        |e| self.malformed(e)
    }

    /// Type `type_id` once typedefs and qualifiers are looked through (`None`: void), with the
    /// id it ended at.
    fn resolve(&self, mut type_id: u32) -> Result<Option<(u32, parse::TypeInfo)>, BtfError> {
        for _ in 0..MAX_TYPE_CHAIN {
            let Some(ty) = self.btf.type_by_id(type_id).map_err(self.parse_error())? else {
                return Ok(None);
            };
            match ty.kind {
                Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag => {
                    type_id = ty.size_or_type;
                }
                _ => return Ok(Some((type_id, ty))),
            }
        }
        Err(self.malformed(format_args!(
            "type {type_id} is behind more than {MAX_TYPE_CHAIN} typedefs/qualifiers (a cycle?)"
        )))
    }

    /// The id of the struct or union that `type_id` names once typedefs and qualifiers are
    /// looked through, or `None` when it is something else (an int, a pointer, a forward
    /// declaration...).
    fn composite_of(&self, type_id: u32) -> Result<Option<u32>, BtfError> {
        Ok(self
            .resolve(type_id)?
            .and_then(|(id, ty)| matches!(ty.kind, Kind::Struct | Kind::Union).then_some(id)))
    }

    /// The bitfield size of `member` in bits, or `None` when it is not a bitfield.
    ///
    /// Structs with kind_flag set (what pahole and compilers emit whenever a struct has a
    /// bitfield) give it in the member; in the older encoding, a bitfield's type is an INT
    /// narrower than its storage or not starting at its bit 0.
    fn bitfield_bits(&self, member: &Member) -> Result<Option<(u32, u64)>, BtfError> {
        if let Some(size) = member.bitfield_size {
            // With kind_flag set every member carries a size; 0 means "not a bitfield".
            return Ok((size != 0).then_some((size, 0)));
        }
        let Some((_, ty)) = self.resolve(member.type_id)? else {
            return Ok(None);
        };
        let Some(int) = self.btf.int_info(&ty).map_err(self.parse_error())? else {
            return Ok(None);
        };
        let storage_bits = u64::from(ty.size_or_type) * 8;
        if int.bit_offset == 0 && u64::from(int.bits) == storage_bits {
            Ok(None)
        } else {
            Ok(Some((int.bits, u64::from(int.bit_offset))))
        }
    }

    /// Finds member `name` of struct/union `composite`, looking into anonymous struct/union
    /// members the way C does, and returns it with its bit offset from the start of
    /// `composite`.
    fn find_member(
        &self,
        composite: u32,
        name: &str,
        depth: usize,
    ) -> Result<Option<(Member, u64)>, BtfError> {
        if depth > MAX_ANON_DEPTH {
            return Err(self.malformed(format_args!(
                "anonymous members nested more than {MAX_ANON_DEPTH} deep (a cycle?)"
            )));
        }
        let Some(ty) = self.btf.type_by_id(composite).map_err(self.parse_error())? else {
            return Ok(None);
        };
        for member in self.btf.members(&ty).map_err(self.parse_error())? {
            let member_name = self.btf.name(member.name_off).map_err(self.parse_error())?;
            if member_name == name.as_bytes() {
                return Ok(Some((member, u64::from(member.bit_offset))));
            }
            if !member_name.is_empty() {
                continue;
            }
            // Anonymous: an unnamed struct/union whose members belong to the enclosing scope,
            // or unnamed bitfield padding, which composite_of rejects.
            let Some(inner) = self.composite_of(member.type_id)? else {
                continue;
            };
            if let Some((found, inner_bits)) = self.find_member(inner, name, depth + 1)? {
                return Ok(Some((found, u64::from(member.bit_offset) + inner_bits)));
            }
        }
        Ok(None)
    }

    /// Byte offset of `path` (a member, then members of that member...) inside struct/union
    /// `root`.
    fn offset_in(&self, struct_name: &str, root: u32, path: &[&str]) -> Result<u32, BtfError> {
        let mut current = root;
        let mut bits: u64 = 0;
        for (i, name) in path.iter().enumerate() {
            let field = path[..=i].join(".");
            let Some((member, member_bits)) = self.find_member(current, name, 0)? else {
                return Err(BtfError::FieldNotFound {
                    struct_name: struct_name.to_string(),
                    field,
                });
            };
            bits = bits.checked_add(member_bits).ok_or_else(|| {
                self.malformed(format_args!("offset of {struct_name}.{field} overflows"))
            })?;
            if let Some((size, int_offset)) = self.bitfield_bits(&member)? {
                return Err(BtfError::Bitfield {
                    struct_name: struct_name.to_string(),
                    field,
                    bit_offset: bits.saturating_add(int_offset),
                    bits: size,
                });
            }
            if !bits.is_multiple_of(8) {
                return Err(self.malformed(format_args!(
                    "{struct_name}.{field} is at bit offset {bits} but is not a bitfield"
                )));
            }
            if let Some(next) = path.get(i + 1) {
                current =
                    self.composite_of(member.type_id)?
                        .ok_or_else(|| BtfError::NotComposite {
                            struct_name: struct_name.to_string(),
                            field: field.clone(),
                            next: (*next).to_string(),
                        })?;
            }
        }
        u32::try_from(bits / 8).map_err(|_| {
            self.malformed(format_args!(
                "offset of {struct_name}.{} does not fit in 32 bits",
                path.join(".")
            ))
        })
    }
}

/// Byte offset of `field_path` inside `struct struct_name` (or `union struct_name`).
///
/// `field_path` names a member and then, optionally, members of that member (which must then be
/// a struct or union, not a pointer): `&["d_name", "name"]` in `dentry` is the offset of
/// `dentry.d_name.name`. Members of anonymous structs/unions are found as in C, without naming
/// the anonymous level.
pub fn field_offset(
    btf: &KernelBtf,
    struct_name: &str,
    field_path: &[&str],
) -> Result<u32, BtfError> {
    if field_path.is_empty() {
        return Err(BtfError::FieldNotFound {
            struct_name: struct_name.to_string(),
            field: "(empty field path)".to_string(),
        });
    }
    // A name can also belong to a function, a variable or a forward declaration; only full
    // struct/union definitions (which have members) are indexed.
    let definitions = btf.btf.composites_named(struct_name);
    let Some(&first) = definitions.first() else {
        return Err(BtfError::TypeNotFound {
            name: struct_name.to_string(),
        });
    };
    if definitions.len() == 1 {
        return btf.offset_in(struct_name, first, field_path);
    }

    // Deduplicated kernel BTF holds one definition per name, but if it ever holds several
    // (conflicting definitions in different compilation units), use the ones that have the
    // field, and refuse to guess between them when they disagree.
    let mut offsets = BTreeSet::new();
    let mut first_error = None;
    for &definition in &definitions {
        match btf.offset_in(struct_name, definition, field_path) {
            Ok(offset) => {
                offsets.insert(offset);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let mut found = offsets.iter().copied();
    match (found.next(), found.next(), first_error) {
        (Some(offset), None, _) => Ok(offset),
        (Some(_), Some(_), _) => Err(BtfError::Ambiguous {
            struct_name: struct_name.to_string(),
            field: field_path.join("."),
            offsets: offsets.into_iter().collect(),
        }),
        (None, _, Some(e)) => Err(e),
        (None, _, None) => Err(BtfError::TypeNotFound {
            name: struct_name.to_string(),
        }),
    }
}

/// All the offsets the eBPF programs need, from already parsed BTF.
pub fn offsets_from_btf(btf: &KernelBtf) -> Result<KernelOffsets, BtfError> {
    let f = |struct_name: &str, field: &str| field_offset(btf, struct_name, &[field]);
    // A struct literal without `..`: a field added to KernelOffsets fails to compile here
    // rather than being sent to the kernel as 0.
    Ok(KernelOffsets {
        task_pid: f("task_struct", "pid")?,
        task_tgid: f("task_struct", "tgid")?,
        task_real_parent: f("task_struct", "real_parent")?,
        task_fs: f("task_struct", "fs")?,
        task_files: f("task_struct", "files")?,
        task_mm: f("task_struct", "mm")?,
        task_nsproxy: f("task_struct", "nsproxy")?,
        task_exit_code: f("task_struct", "exit_code")?,
        fs_pwd: f("fs_struct", "pwd")?,
        fs_root: f("fs_struct", "root")?,
        path_mnt: f("path", "mnt")?,
        path_dentry: f("path", "dentry")?,
        files_fdt: f("files_struct", "fdt")?,
        fdt_max_fds: f("fdtable", "max_fds")?,
        fdt_fd: f("fdtable", "fd")?,
        file_f_path: f("file", "f_path")?,
        file_f_inode: f("file", "f_inode")?,
        file_f_mode: f("file", "f_mode")?,
        dentry_d_parent: f("dentry", "d_parent")?,
        dentry_d_name: f("dentry", "d_name")?,
        dentry_d_inode: f("dentry", "d_inode")?,
        qstr_len: f("qstr", "len")?,
        qstr_name: f("qstr", "name")?,
        inode_i_ino: f("inode", "i_ino")?,
        inode_i_sb: f("inode", "i_sb")?,
        inode_i_size: f("inode", "i_size")?,
        inode_i_mode: f("inode", "i_mode")?,
        inode_i_nlink: f("inode", "i_nlink")?,
        sb_s_dev: f("super_block", "s_dev")?,
        // Optional: only the xfs rename-target hooks use it, and they are not attached
        // without it (capabilities.rs).
        xfs_inode_i_vnode: f("xfs_inode", "i_vnode").unwrap_or(0),
        // Optional: only the fentry program on vfs_rename uses them, and it is not attached
        // without them (backend.rs).
        renamedata_old_dentry: f("renamedata", "old_dentry").unwrap_or(0),
        renamedata_flags: f("renamedata", "flags").unwrap_or(0),
        mount_mnt: f("mount", "mnt")?,
        mount_mnt_parent: f("mount", "mnt_parent")?,
        mount_mnt_mountpoint: f("mount", "mnt_mountpoint")?,
        vfsmount_mnt_root: f("vfsmount", "mnt_root")?,
        mm_arg_start: f("mm_struct", "arg_start")?,
        mm_arg_end: f("mm_struct", "arg_end")?,
        mm_exe_file: f("mm_struct", "exe_file")?,
        nsproxy_mnt_ns: f("nsproxy", "mnt_ns")?,
        mnt_ns_ns: f("mnt_namespace", "ns")?,
        ns_common_inum: f("ns_common", "inum")?,
        valid: 1,
    })
}

/// Whether argument `index` of tracepoint `tracepoint`, as a raw tracepoint program sees it (the
/// `TP_PROTO` arguments, in order), is a pointer to `struct struct_name`.
///
/// The kernel describes every tracepoint's prototype in BTF as
/// `typedef void (*btf_trace_<tracepoint>)(void *__data, <TP_PROTO arguments>)`; a program that
/// reads a pointer argument from the wrong position would read the wrong memory silently, so
/// the position is checked here instead of assumed. `None`: this BTF does not describe the
/// tracepoint (e.g. it belongs to a module, whose BTF is separate).
pub fn tracepoint_arg_is_struct_ptr(
    btf: &KernelBtf,
    tracepoint: &str,
    index: usize,
    struct_name: &str,
) -> Result<Option<bool>, BtfError> {
    let typedefs = btf
        .btf
        .types_named(&format!("btf_trace_{tracepoint}"), Kind::Typedef)
        .map_err(btf.parse_error())?;
    let Some(&typedef) = typedefs.first() else {
        return Ok(None);
    };
    Ok(Some(btf.proto_arg_is_struct_ptr(
        typedef,
        index,
        struct_name,
    )?))
}

impl KernelBtf {
    fn proto_arg_is_struct_ptr(
        &self,
        typedef: u32,
        index: usize,
        struct_name: &str,
    ) -> Result<bool, BtfError> {
        let btf = self;
        // typedef -> pointer -> function prototype.
        let Some(ty) = btf.btf.type_by_id(typedef).map_err(btf.parse_error())? else {
            return Ok(false);
        };
        let Some((_, ptr)) = btf.resolve(ty.size_or_type)? else {
            return Ok(false);
        };
        if ptr.kind != Kind::Ptr {
            return Ok(false);
        }
        let Some((_, proto)) = btf.resolve(ptr.size_or_type)? else {
            return Ok(false);
        };
        let params = btf.btf.params(&proto).map_err(btf.parse_error())?;
        // params[0] is the probe's `void *__data`.
        let Some(&param) = params.get(index + 1) else {
            return Ok(false);
        };
        let Some((_, param_ty)) = btf.resolve(param)? else {
            return Ok(false);
        };
        if param_ty.kind != Kind::Ptr {
            return Ok(false);
        }
        let Some((_, target)) = btf.resolve(param_ty.size_or_type)? else {
            return Ok(false);
        };
        Ok(target.kind == Kind::Struct
            && btf.btf.name(target.name_off).map_err(btf.parse_error())? == struct_name.as_bytes())
    }
}

/// One parameter of a kernel function, as its BTF describes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FunctionParam {
    /// The parameter's name (`dentry`), empty when BTF has none.
    pub name: String,
    /// Its type, shortly: `struct dentry *`, `const char *` is `char *`, a scalar's name
    /// (`size_t`, `int`), or `?` for what this short form does not render.
    pub type_name: String,
}

/// A kernel function's BTF id and parameters: what an fentry program is attached by, and
/// where each argument is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FunctionPrototype {
    /// The id of its `FUNC` type: an fentry program's attach target.
    pub btf_id: u32,
    /// Its parameters, in order.
    pub params: Vec<FunctionParam>,
    /// Its return type, in the short form of [`FunctionParam::type_name`] (`int`; `void`).
    pub returns: String,
}

impl FunctionPrototype {
    /// The position of the first parameter that is a pointer to `struct struct_name`.
    pub fn struct_ptr_arg(&self, struct_name: &str) -> Option<usize> {
        let wanted = format!("struct {struct_name} *");
        self.params.iter().position(|p| p.type_name == wanted)
    }

    /// `(struct mnt_idmap *idmap, struct dentry *dentry, ...)`, for `ctrwatch probe`. The
    /// names come from the BTF, which can be any file (`kernel_offsets_from`, a BTF given
    /// with a path): escaped for display ([`ctrwatch_event::escape`]).
    pub fn signature(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| {
                let (type_name, name) = (
                    ctrwatch_event::escape(&p.type_name),
                    ctrwatch_event::escape(&p.name),
                );
                if type_name.ends_with('*') {
                    format!("{type_name}{name}")
                } else {
                    format!("{type_name} {name}")
                }
            })
            .collect();
        format!("({})", params.join(", "))
    }
}

/// The prototype of the kernel function `name` (`None`: this BTF has no function of that
/// name, e.g. it is inlined, static and dropped, or in a module).
pub fn function_prototype(
    btf: &KernelBtf,
    name: &str,
) -> Result<Option<FunctionPrototype>, BtfError> {
    let funcs = btf
        .btf
        .types_named(name, Kind::Func)
        .map_err(btf.parse_error())?;
    let Some(&btf_id) = funcs.first() else {
        return Ok(None);
    };
    let Some(func) = btf.btf.type_by_id(btf_id).map_err(btf.parse_error())? else {
        return Ok(None);
    };
    let Some((_, proto)) = btf.resolve(func.size_or_type)? else {
        return Ok(None);
    };
    if proto.kind != Kind::FuncProto {
        return Err(btf.malformed(format_args!("function {name} has no prototype")));
    }
    let types = btf.btf.params(&proto).map_err(btf.parse_error())?;
    let names = btf.btf.param_names(&proto).map_err(btf.parse_error())?;
    let mut params = Vec::with_capacity(types.len());
    for (type_id, name_off) in types.into_iter().zip(names) {
        params.push(FunctionParam {
            name: String::from_utf8_lossy(btf.btf.name(name_off).map_err(btf.parse_error())?)
                .into_owned(),
            type_name: btf.short_type_name(type_id)?,
        });
    }
    let returns = btf.short_type_name(proto.size_or_type)?;
    Ok(Some(FunctionPrototype {
        btf_id,
        params,
        returns,
    }))
}

impl KernelBtf {
    /// `struct dentry *`, `struct inode **`, `char *`, `size_t`, `int`, `enum x`; `?` for
    /// anything else.
    fn short_type_name(&self, type_id: u32) -> Result<String, BtfError> {
        self.short_type_name_at(type_id, 0)
    }

    fn short_type_name_at(&self, type_id: u32, depth: usize) -> Result<String, BtfError> {
        // The BTF is the kernel's, but a file given with a path could be anything: a pointer
        // chain deeper than any prototype has is not followed.
        if depth > MAX_TYPE_CHAIN {
            return Ok("?".to_string());
        }
        let Some(ty) = self.btf.type_by_id(type_id).map_err(self.parse_error())? else {
            return Ok("void".to_string());
        };
        let named = |ty: &parse::TypeInfo| -> Result<String, BtfError> {
            Ok(
                String::from_utf8_lossy(self.btf.name(ty.name_off).map_err(self.parse_error())?)
                    .into_owned(),
            )
        };
        Ok(match ty.kind {
            // A typedef keeps its own name (`size_t`, `umode_t`).
            Kind::Typedef | Kind::Int => named(&ty)?,
            Kind::Enum | Kind::Enum64 => format!("enum {}", named(&ty)?),
            Kind::Ptr => match self.resolve(ty.size_or_type)? {
                None => "void *".to_string(),
                Some((target_id, target)) => match target.kind {
                    Kind::Struct | Kind::Fwd => format!("struct {} *", named(&target)?),
                    Kind::Union => format!("union {} *", named(&target)?),
                    Kind::Int => format!("{} *", named(&target)?),
                    Kind::Enum | Kind::Enum64 => format!("enum {} *", named(&target)?),
                    // `struct inode **delegated_inode`
                    Kind::Ptr => format!("{}*", self.short_type_name_at(target_id, depth + 1)?),
                    _ => "? *".to_string(),
                },
            },
            Kind::Const | Kind::Volatile | Kind::Restrict | Kind::TypeTag => {
                match self.resolve(type_id)? {
                    Some((id, _)) => self.short_type_name_at(id, depth + 1)?,
                    None => "void".to_string(),
                }
            }
            _ => "?".to_string(),
        })
    }
}

/// The offsets for a kernel whose BTF is in the file `path`.
pub fn kernel_offsets_from(path: &Path) -> Result<KernelOffsets, BtfError> {
    offsets_from_btf(&KernelBtf::open(path)?)
}

/// The offsets for the running kernel, from [`VMLINUX_BTF`].
pub fn kernel_offsets() -> Result<KernelOffsets, BtfError> {
    kernel_offsets_from(Path::new(VMLINUX_BTF))
}

/// The offsets as `ctrwatch probe` shows them: per kernel struct, its members and their byte
/// offsets (`task_struct: pid 1264, tgid 1268, …`). A member the kernel lacks (an offset the
/// programs treat as absent, such as xfs's when xfs is not in the BTF) shows as 0.
pub fn describe_offsets(o: &KernelOffsets) -> Vec<String> {
    offset_groups(o)
        .iter()
        .map(|(structure, members)| {
            let members: Vec<String> = members
                .iter()
                .map(|(member, offset)| format!("{member} {offset}"))
                .collect();
            format!("{structure}: {}", members.join(", "))
        })
        .collect()
}

/// Every offset of [`KernelOffsets`] under the struct and member the kernel calls it (a unit
/// test checks that none is left out).
fn offset_groups(o: &KernelOffsets) -> [(&'static str, Vec<(&'static str, u32)>); 15] {
    [
        (
            "task_struct",
            vec![
                ("pid", o.task_pid),
                ("tgid", o.task_tgid),
                ("real_parent", o.task_real_parent),
                ("fs", o.task_fs),
                ("files", o.task_files),
                ("mm", o.task_mm),
                ("nsproxy", o.task_nsproxy),
                ("exit_code", o.task_exit_code),
            ],
        ),
        ("fs_struct", vec![("pwd", o.fs_pwd), ("root", o.fs_root)]),
        ("path", vec![("mnt", o.path_mnt), ("dentry", o.path_dentry)]),
        ("files_struct", vec![("fdt", o.files_fdt)]),
        (
            "fdtable",
            vec![("max_fds", o.fdt_max_fds), ("fd", o.fdt_fd)],
        ),
        (
            "file",
            vec![
                ("f_path", o.file_f_path),
                ("f_inode", o.file_f_inode),
                ("f_mode", o.file_f_mode),
            ],
        ),
        (
            "dentry",
            vec![
                ("d_parent", o.dentry_d_parent),
                ("d_name", o.dentry_d_name),
                ("d_inode", o.dentry_d_inode),
            ],
        ),
        ("qstr", vec![("len", o.qstr_len), ("name", o.qstr_name)]),
        (
            "inode",
            vec![
                ("i_ino", o.inode_i_ino),
                ("i_sb", o.inode_i_sb),
                ("i_size", o.inode_i_size),
                ("i_mode", o.inode_i_mode),
                ("i_nlink", o.inode_i_nlink),
            ],
        ),
        ("super_block", vec![("s_dev", o.sb_s_dev)]),
        ("xfs_inode", vec![("i_vnode", o.xfs_inode_i_vnode)]),
        (
            "renamedata",
            vec![
                ("old_dentry", o.renamedata_old_dentry),
                ("flags", o.renamedata_flags),
            ],
        ),
        (
            "mount, vfsmount",
            vec![
                ("mnt", o.mount_mnt),
                ("mnt_parent", o.mount_mnt_parent),
                ("mnt_mountpoint", o.mount_mnt_mountpoint),
                ("vfsmount.mnt_root", o.vfsmount_mnt_root),
            ],
        ),
        (
            "mm_struct",
            vec![
                ("arg_start", o.mm_arg_start),
                ("arg_end", o.mm_arg_end),
                ("exe_file", o.mm_exe_file),
            ],
        ),
        (
            "nsproxy, mnt_namespace, ns_common",
            vec![
                ("nsproxy.mnt_ns", o.nsproxy_mnt_ns),
                ("mnt_namespace.ns", o.mnt_ns_ns),
                ("ns_common.inum", o.ns_common_inum),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ctrwatch probe` lists every offset the programs are given: a field added to
    /// `KernelOffsets` without a line in `offset_groups` fails here.
    #[test]
    fn probe_lists_every_offset() {
        let listed: usize = offset_groups(&KernelOffsets::default())
            .iter()
            .map(|(_, members)| members.len())
            .sum();
        // Every field is a u32; `valid` is a flag, not an offset.
        let fields = std::mem::size_of::<KernelOffsets>() / std::mem::size_of::<u32>();
        assert_eq!(listed, fields - 1);
        let lines = describe_offsets(&KernelOffsets {
            task_pid: 1264,
            ..KernelOffsets::default()
        });
        assert_eq!(lines.len(), 15);
        assert!(
            lines[0].starts_with("task_struct: pid 1264, tgid 0"),
            "{lines:?}"
        );
    }

    /// Builds raw BTF by hand, so that the parser's handling of anonymous members, qualifier
    /// chains, bitfields and corrupt input is tested on any machine, whatever its kernel.
    struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    const KIND_INT: u32 = 1;
    const KIND_PTR: u32 = 2;
    const KIND_STRUCT: u32 = 4;
    const KIND_UNION: u32 = 5;
    const KIND_TYPEDEF: u32 = 8;
    const KIND_VOLATILE: u32 = 9;
    const KIND_CONST: u32 = 10;

    impl BtfBuilder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn name(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        fn u32s(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }

        fn header(
            &mut self,
            name: &str,
            kind: u32,
            kind_flag: bool,
            vlen: u32,
            size_or_type: u32,
        ) -> u32 {
            let name_off = self.name(name);
            let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
            self.u32s(&[name_off, info, size_or_type]);
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.header(name, KIND_INT, false, 0, size);
            self.u32s(&[size * 8]);
            id
        }

        fn ptr(&mut self, to: u32) -> u32 {
            self.header("", KIND_PTR, false, 0, to)
        }

        fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.header(name, KIND_TYPEDEF, false, 0, to)
        }

        fn qualifier(&mut self, kind: u32, to: u32) -> u32 {
            self.header("", kind, false, 0, to)
        }

        /// `members`: (name, type id, bit offset, bitfield size); a non-zero bitfield size
        /// makes the whole struct use kind_flag encoding, as compilers do.
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let kind_flag = members.iter().any(|m| m.3 != 0);
            let id = self.header(name, kind, kind_flag, members.len() as u32, size);
            for &(mname, ty, bit_off, bits) in members {
                let name_off = self.name(mname);
                let offset = if kind_flag {
                    (bits << 24) | bit_off
                } else {
                    bit_off
                };
                self.u32s(&[name_off, ty, offset]);
            }
            id
        }

        fn build(&self) -> Vec<u8> {
            self.build_with(false)
        }

        /// The same BTF as a big-endian kernel would have it. Every kind's data is made of
        /// 32-bit words, so swapping each word of the type section is enough.
        fn build_big_endian(&self) -> Vec<u8> {
            self.build_with(true)
        }

        fn build_with(&self, big_endian: bool) -> Vec<u8> {
            let word = |w: u32| {
                if big_endian {
                    w.to_be_bytes()
                } else {
                    w.to_le_bytes()
                }
            };
            let mut out = Vec::new();
            if big_endian {
                out.extend_from_slice(&0xeb9f_u16.to_be_bytes());
            } else {
                out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
            }
            out.push(1); // version
            out.push(0); // flags
            let type_len = self.types.len() as u32;
            for w in [24, 0, type_len, type_len, self.strings.len() as u32] {
                out.extend_from_slice(&word(w));
            }
            for w in self.types.chunks_exact(4) {
                out.extend_from_slice(&word(u32::from_le_bytes(w.try_into().unwrap())));
            }
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A small layout exercising what the kernel's does:
    ///
    /// ```c
    /// struct inner { u32 hash; u32 len; };
    /// struct outer {
    ///     u64 head;                                   // 0
    ///     union { struct { u32 hash; u32 len; }; u64 hash_len; };  // 8 (len at 12)
    ///     const volatile struct inner named;          // 16
    ///     u32 flag_a:1, flag_b:3;                     // 24 (bitfields)
    ///     void *tail;                                 // 32
    /// };
    /// typedef struct outer outer_t;
    /// ```
    fn sample() -> KernelBtf {
        let mut b = BtfBuilder::new();
        let u32_t = b.int("unsigned int", 4);
        let u64_t = b.int("long long unsigned int", 8);
        let u32_td = b.typedef("u32", u32_t);
        let anon_s = b.composite(
            KIND_STRUCT,
            "",
            8,
            &[("hash", u32_td, 0, 0), ("len", u32_td, 32, 0)],
        );
        let anon_u = b.composite(
            KIND_UNION,
            "",
            8,
            &[("", anon_s, 0, 0), ("hash_len", u64_t, 0, 0)],
        );
        let inner = b.composite(
            KIND_STRUCT,
            "inner",
            8,
            &[("hash", u32_t, 0, 0), ("len", u32_t, 32, 0)],
        );
        let inner_td = b.typedef("inner_t", inner);
        let inner_v = b.qualifier(KIND_VOLATILE, inner_td);
        let inner_cv = b.qualifier(KIND_CONST, inner_v);
        let void_ptr = b.ptr(0);
        let outer = b.composite(
            KIND_STRUCT,
            "outer",
            40,
            &[
                ("head", u64_t, 0, 0),
                ("", anon_u, 64, 0),
                ("named", inner_cv, 128, 0),
                ("flag_a", u32_t, 192, 1),
                ("flag_b", u32_t, 193, 3),
                ("tail", void_ptr, 256, 0),
            ],
        );
        b.typedef("outer_t", outer);
        KernelBtf::from_bytes(&b.build()).expect("hand-built BTF parses")
    }

    /// The running kernel's own BTF: vfs_setxattr's prototype as the fentry programs read it.
    #[test]
    fn function_prototypes_from_the_running_kernel() {
        let Ok(btf) = KernelBtf::open(Path::new(VMLINUX_BTF)) else {
            return;
        };
        let p = function_prototype(&btf, "vfs_setxattr")
            .unwrap()
            .expect("vfs_setxattr is in vmlinux BTF");
        assert_eq!(p.struct_ptr_arg("dentry"), Some(1), "{}", p.signature());
        assert_eq!(p.params[2].type_name, "char *");
        assert_eq!(p.params[4].type_name, "size_t");
        assert_eq!(p.params[4].name, "size");
        assert!(
            p.signature().contains("struct dentry *dentry"),
            "{}",
            p.signature()
        );
        assert!(
            function_prototype(&btf, "no_such_function_in_ctrwatch")
                .unwrap()
                .is_none()
        );
        // A pointer to a pointer is named, not `? *` (it was, in `ctrwatch probe`).
        if let Some(p) = function_prototype(&btf, "__vfs_removexattr_locked").unwrap() {
            let last = p.params.last().expect("it has parameters");
            assert_eq!(last.type_name, "struct inode **", "{}", p.signature());
        }
    }

    #[test]
    fn finds_plain_and_anonymous_members() {
        let btf = sample();
        assert_eq!(field_offset(&btf, "outer", &["head"]).unwrap(), 0);
        assert_eq!(field_offset(&btf, "outer", &["hash_len"]).unwrap(), 8);
        // Two anonymous levels (union, then struct) are looked through and added up.
        assert_eq!(field_offset(&btf, "outer", &["hash"]).unwrap(), 8);
        assert_eq!(field_offset(&btf, "outer", &["len"]).unwrap(), 12);
        assert_eq!(field_offset(&btf, "outer", &["tail"]).unwrap(), 32);
    }

    #[test]
    fn follows_qualifiers_and_typedefs_into_nested_fields() {
        let btf = sample();
        assert_eq!(field_offset(&btf, "outer", &["named"]).unwrap(), 16);
        assert_eq!(field_offset(&btf, "outer", &["named", "len"]).unwrap(), 20);
    }

    #[test]
    fn bitfields_are_refused() {
        let btf = sample();
        let err = field_offset(&btf, "outer", &["flag_b"]).unwrap_err();
        assert!(
            matches!(&err, BtfError::Bitfield { field, bit_offset: 193, bits: 3, .. } if field == "flag_b"),
            "{err:?}"
        );
        assert!(err.to_string().contains("outer.flag_b"), "{err}");
    }

    #[test]
    fn missing_things_are_named_in_the_error() {
        let btf = sample();
        let err = field_offset(&btf, "outer", &["nope"]).unwrap_err();
        assert_eq!(err.to_string(), "field `nope` not found in struct outer");
        let err = field_offset(&btf, "outer", &["named", "nope"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `named.nope` not found in struct outer"
        );
        // A typedef name is not a struct name.
        let err = field_offset(&btf, "outer_t", &["head"]).unwrap_err();
        assert!(
            matches!(err, BtfError::TypeNotFound { ref name } if name == "outer_t"),
            "{err:?}"
        );
        let err = field_offset(&btf, "outer", &["tail", "x"]).unwrap_err();
        assert!(matches!(err, BtfError::NotComposite { .. }), "{err:?}");
        let err = field_offset(&btf, "outer", &[]).unwrap_err();
        assert!(matches!(err, BtfError::FieldNotFound { .. }), "{err:?}");
    }

    #[test]
    fn tracepoint_arguments_are_read_from_the_btf_trace_prototype() {
        const KIND_FUNC_PROTO: u32 = 13;
        let mut b = BtfBuilder::new();
        let inode = b.composite(KIND_STRUCT, "inode", 8, &[]);
        let const_inode = b.qualifier(KIND_CONST, inode);
        let p_inode = b.ptr(const_inode);
        let ulong = b.int("long unsigned int", 8);
        let p_void = b.ptr(0);
        // void (*)(void *__data, const struct inode *, unsigned long)
        let proto = b.header("", KIND_FUNC_PROTO, false, 3, 0);
        let (n0, n1, n2) = (b.name("__data"), b.name("inode"), b.name("ip"));
        b.u32s(&[n0, p_void, n1, p_inode, n2, ulong]);
        let p_proto = b.ptr(proto);
        b.typedef("btf_trace_some_dirty", p_proto);
        let Ok(btf) = KernelBtf::from_bytes(&b.build()) else {
            panic!("hand-built BTF must parse");
        };
        let check = |tp: &str, i: usize, name: &str| {
            tracepoint_arg_is_struct_ptr(&btf, tp, i, name)
                .ok()
                .flatten()
        };
        assert_eq!(check("some_dirty", 0, "inode"), Some(true));
        assert_eq!(check("some_dirty", 0, "dentry"), Some(false));
        assert_eq!(check("some_dirty", 1, "inode"), Some(false));
        assert_eq!(check("some_dirty", 2, "inode"), Some(false));
        assert_eq!(check("other", 0, "inode"), None);
    }

    #[test]
    fn reference_cycles_are_errors_not_hangs() {
        let mut b = BtfBuilder::new();
        // Type 1 is a typedef of itself; struct 2 holds an anonymous member of type 1, and
        // struct 3 an anonymous member of its own type.
        b.typedef("loop_t", 1);
        b.composite(KIND_STRUCT, "a", 8, &[("", 1, 0, 0)]);
        b.composite(KIND_STRUCT, "b", 8, &[("", 3, 0, 0)]);
        let btf = KernelBtf::from_bytes(&b.build()).unwrap();
        let err = field_offset(&btf, "a", &["x"]).unwrap_err();
        assert!(matches!(err, BtfError::Malformed { .. }), "{err:?}");
        let err = field_offset(&btf, "b", &["x"]).unwrap_err();
        assert!(matches!(err, BtfError::Malformed { .. }), "{err:?}");
    }

    #[test]
    fn dangling_type_ids_are_errors() {
        let mut b = BtfBuilder::new();
        b.composite(KIND_STRUCT, "s", 8, &[("", 999, 0, 0)]);
        let btf = KernelBtf::from_bytes(&b.build()).unwrap();
        let err = field_offset(&btf, "s", &["x"]).unwrap_err();
        assert!(matches!(err, BtfError::Malformed { .. }), "{err:?}");
    }

    #[test]
    fn corrupt_input_is_malformed() {
        let good = {
            let mut b = BtfBuilder::new();
            let u32_t = b.int("unsigned int", 4);
            b.composite(KIND_STRUCT, "s", 4, &[("x", u32_t, 0, 0)]);
            b.build()
        };
        assert!(KernelBtf::from_bytes(&good).is_ok());
        let mut bad_magic = good.clone();
        bad_magic[0] = 0;
        for (what, bytes) in [
            ("empty", &[][..]),
            ("short", &good[..10]),
            ("truncated", &good[..good.len() - 5]),
            ("bad magic", &bad_magic[..]),
        ] {
            match KernelBtf::from_bytes(bytes) {
                Err(BtfError::Malformed { .. }) => {}
                Err(e) => panic!("{what}: wrong error {e:?}"),
                Ok(_) => panic!("{what}: parsed"),
            }
        }
    }

    /// One type of every kind, each with trailing data of a different size, then a struct:
    /// the struct is found only if every kind's size is skipped correctly.
    /// A BTF file can come from anywhere (`kernel_offsets_from` takes a path): names in it
    /// with a newline or a terminal escape are shown escaped by `ctrwatch probe`, never raw.
    #[test]
    fn hostile_names_are_escaped_for_display() {
        const KIND_FUNC: u32 = 12;
        const KIND_FUNC_PROTO: u32 = 13;
        let mut b = BtfBuilder::new();
        let evil = b.composite(KIND_STRUCT, "dentry\nhook family lsm: usable", 8, &[]);
        let p_evil = b.ptr(evil);
        let int = b.int("int\u{1b}[2J", 4);
        let proto = b.header("", KIND_FUNC_PROTO, false, 2, int);
        let (n0, n1) = (b.name("d\r\u{1b}]0;owned\u{7}"), b.name("flags\\x"));
        b.u32s(&[n0, p_evil, n1, int]);
        b.header("vfs_setxattr", KIND_FUNC, false, 0, proto);
        let Ok(btf) = KernelBtf::from_bytes(&b.build()) else {
            panic!("hand-built BTF must parse");
        };
        let Ok(Some(p)) = function_prototype(&btf, "vfs_setxattr") else {
            panic!("the prototype must be found");
        };
        let shown = p.signature();
        assert_eq!(
            shown,
            "(struct dentry\\x0ahook family lsm: usable *d\\x0d\\x1b]0;owned\\x07, \
             int\\x1b[2J flags\\\\x)"
        );
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        // The backend's listing of the xattr functions shows the same.
        let listed = crate::kernel::backend::fentry_target_prototypes(Ok(&btf));
        let line = &listed[0].1;
        assert!(
            line.starts_with("vfs_setxattr(struct dentry\\x0a"),
            "{line}"
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
        // A path with a newline, in an error.
        let e = kernel_offsets_from(Path::new("/nonexistent/btf\nhook family fentry: usable"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("btf\\x0ahook"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    fn every_kind() -> BtfBuilder {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4); // 1: INT, +4
        b.ptr(int); // 2: PTR
        b.header("", 3, false, 0, 0); // 3: ARRAY, +12
        b.u32s(&[int, int, 4]);
        let e = b.header("e", 6, false, 2, 4); // 4: ENUM, +8 per value
        let (a, z) = (b.name("A"), b.name("Z"));
        b.u32s(&[a, 0, z, 1]);
        b.header("fwd", 7, false, 0, 0); // 5: FWD
        b.qualifier(11, int); // 6: RESTRICT
        let proto = b.header("", 13, false, 2, int); // 7: FUNC_PROTO, +8 per param
        let p = b.name("p");
        b.u32s(&[p, int, 0, 0]);
        b.header("f", 12, false, 0, proto); // 8: FUNC
        let var = b.header("v", 14, false, 0, int); // 9: VAR, +4
        b.u32s(&[1]);
        b.header(".data", 15, false, 1, 4); // 10: DATASEC, +12 per var
        b.u32s(&[var, 0, 4]);
        b.header("double", 16, false, 0, 8); // 11: FLOAT
        b.header("tag", 17, false, 0, int); // 12: DECL_TAG, +4
        b.u32s(&[u32::MAX]);
        let tagged = b.header("user", 18, false, 0, int); // 13: TYPE_TAG
        b.header("e64", 19, false, 1, 8); // 14: ENUM64, +12 per value
        b.u32s(&[a, 1, 2]);
        b.composite(
            KIND_STRUCT,
            "s",
            16,
            &[("x", e, 0, 0), ("y", tagged, 32, 0), ("z", int, 64, 0)],
        );
        b
    }

    #[test]
    fn every_kind_is_skipped_by_its_size() {
        let btf = KernelBtf::from_bytes(&every_kind().build()).unwrap();
        assert_eq!(field_offset(&btf, "s", &["z"]).unwrap(), 8);
        assert_eq!(field_offset(&btf, "s", &["y"]).unwrap(), 4);
        // Names of other kinds are not struct names.
        for name in ["e", "f", "fwd", "v", ".data", "int"] {
            let err = field_offset(&btf, name, &["x"]).unwrap_err();
            assert!(
                matches!(err, BtfError::TypeNotFound { .. }),
                "{name}: {err:?}"
            );
        }
    }

    #[test]
    fn big_endian_btf_is_read() {
        let mut b = every_kind();
        b.composite(KIND_STRUCT, "bits", 4, &[("lo", 1, 0, 4), ("hi", 1, 4, 28)]);
        let btf = KernelBtf::from_bytes(&b.build_big_endian()).unwrap();
        assert_eq!(field_offset(&btf, "s", &["z"]).unwrap(), 8);
        let err = field_offset(&btf, "bits", &["hi"]).unwrap_err();
        assert!(
            matches!(
                err,
                BtfError::Bitfield {
                    bit_offset: 4,
                    bits: 28,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn bitfields_without_kind_flag_are_refused() {
        // The older encoding: no kind_flag, the bitfield's width and position within its
        // storage are in its INT type.
        let mut b = BtfBuilder::new();
        let full = b.int("unsigned int", 4);
        let narrow = b.header("", KIND_INT, false, 0, 4);
        b.u32s(&[3]); // 3 bits
        let shifted = b.header("", KIND_INT, false, 0, 4);
        b.u32s(&[(5 << 16) | 2]); // 2 bits at bit 5 of the storage unit
        b.composite(
            KIND_STRUCT,
            "legacy",
            12,
            &[
                ("a", full, 0, 0),
                ("b", narrow, 32, 0),
                ("c", shifted, 64, 0),
            ],
        );
        let btf = KernelBtf::from_bytes(&b.build()).unwrap();
        assert_eq!(field_offset(&btf, "legacy", &["a"]).unwrap(), 0);
        let err = field_offset(&btf, "legacy", &["b"]).unwrap_err();
        assert!(
            matches!(
                err,
                BtfError::Bitfield {
                    bit_offset: 32,
                    bits: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = field_offset(&btf, "legacy", &["c"]).unwrap_err();
        assert!(
            matches!(
                err,
                BtfError::Bitfield {
                    bit_offset: 69,
                    bits: 2,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn structural_corruption_is_malformed() {
        let malformed = |what: &str, bytes: &[u8]| match KernelBtf::from_bytes(bytes) {
            Err(BtfError::Malformed { reason, .. }) => reason,
            Err(e) => panic!("{what}: wrong error {e:?}"),
            Ok(_) => panic!("{what}: parsed"),
        };
        let good = every_kind().build();
        let set_u32 = |bytes: &mut Vec<u8>, at: usize, v: u32| {
            bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
        };
        // Header fields: hdr_len at 4, type_len at 12, str_off at 16, str_len at 20.
        let mut v = good.clone();
        v[2] = 2;
        assert!(malformed("version", &v).contains("version 2"));
        let mut v = good.clone();
        set_u32(&mut v, 4, 8);
        malformed("short hdr_len", &v);
        let mut v = good.clone();
        set_u32(&mut v, 16, u32::MAX);
        malformed("str_off overflow", &v);
        let mut v = good.clone();
        set_u32(&mut v, 12, 10);
        malformed("type section ends inside a type header", &v);
        let mut v = good.clone();
        set_u32(&mut v, 12, 12 + 2);
        malformed("type section ends inside INT data", &v);
        // A string section not ending with NUL would let a name run off its end.
        let mut v = good.clone();
        let last = v.len() - 1;
        v[last] = b'x';
        malformed("unterminated strings", &v);
        // Type 1 (INT) given an unknown kind, then a huge vlen as a struct.
        let info_at = 24 + 4;
        let mut v = good.clone();
        set_u32(&mut v, info_at, 31 << 24);
        assert!(malformed("unknown kind", &v).contains("unknown kind 31"));
        let mut v = good.clone();
        set_u32(&mut v, info_at, (4 << 24) | 0xffff);
        malformed("vlen past the end", &v);
        // A struct name outside the string section.
        let mut v = good.clone();
        set_u32(&mut v, 24, u32::MAX - 3);
        set_u32(&mut v, info_at, 4 << 24);
        malformed("name offset", &v);
    }

    #[test]
    fn no_corruption_panics() {
        // Every truncation, and every byte of the header and type section set to a few
        // values: errors are fine, panics and hangs are not.
        let good = every_kind().build();
        for len in 0..good.len() {
            let _ = KernelBtf::from_bytes(&good[..len]);
        }
        let strings_at = good.len() - every_kind().strings.len();
        for at in 0..strings_at {
            for value in [0, 1, 0x7f, 0x80, 0xff] {
                let mut v = good.clone();
                v[at] = value;
                if let Ok(btf) = KernelBtf::from_bytes(&v) {
                    let _ = field_offset(&btf, "s", &["z"]);
                    let _ = field_offset(&btf, "s", &["x", "y"]);
                }
            }
        }
    }

    #[test]
    fn missing_file_is_reported_as_such() {
        let path = Path::new("/nonexistent/ctrwatch/vmlinux");
        let err = kernel_offsets_from(path).unwrap_err();
        assert!(matches!(err, BtfError::Missing { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/ctrwatch/vmlinux"),
            "{err}"
        );
        let err = kernel_offsets_from(Path::new("/")).unwrap_err();
        assert!(matches!(err, BtfError::Unreadable { .. }), "{err:?}");
    }

    /// The running kernel's BTF, when this machine has one.
    fn vmlinux() -> Option<KernelBtf> {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("{VMLINUX_BTF} absent: skipping the checks against the running kernel");
            return None;
        }
        Some(KernelBtf::open(path).expect("the running kernel's BTF parses"))
    }

    #[test]
    fn running_kernel_offsets_are_plausible() {
        let Some(btf) = vmlinux() else { return };
        let o = offsets_from_btf(&btf).expect("all offsets found");
        assert_eq!(o.valid, 1);
        assert_eq!(kernel_offsets().expect("kernel_offsets()"), o);

        // Layouts that have not changed in decades and that the programs rely on.
        assert_eq!((o.path_mnt, o.path_dentry), (0, 8));
        assert_eq!(o.qstr_name, 8);
        // qstr.len sits in an anonymous struct in an anonymous union, after or before the
        // hash depending on byte order.
        let len = if cfg!(target_endian = "little") { 4 } else { 0 };
        assert_eq!(o.qstr_len, len);
        assert_eq!(o.fdt_max_fds, 0);
        assert_eq!(o.fdt_fd, 8);

        // Fields of one struct cannot share an offset (none of these are in a common union).
        let groups: [&[u32]; 8] = [
            &[
                o.task_pid,
                o.task_tgid,
                o.task_real_parent,
                o.task_fs,
                o.task_files,
                o.task_mm,
                o.task_nsproxy,
                o.task_exit_code,
            ],
            &[o.fs_pwd, o.fs_root],
            &[o.file_f_path, o.file_f_inode, o.file_f_mode],
            &[o.dentry_d_parent, o.dentry_d_name, o.dentry_d_inode],
            &[o.inode_i_ino, o.inode_i_sb, o.inode_i_size, o.inode_i_mode],
            &[o.mount_mnt, o.mount_mnt_parent, o.mount_mnt_mountpoint],
            &[o.mm_arg_start, o.mm_arg_end, o.mm_exe_file],
            &[o.fdt_max_fds, o.fdt_fd],
        ];
        for group in groups {
            let distinct: BTreeSet<_> = group.iter().collect();
            assert_eq!(distinct.len(), group.len(), "overlapping offsets {group:?}");
        }
        assert_eq!(
            o.task_tgid,
            o.task_pid + 4,
            "pid_t pid; pid_t tgid; are adjacent"
        );
        assert_eq!(
            o.mm_arg_end,
            o.mm_arg_start + 8,
            "arg_start, arg_end are adjacent"
        );
        // Pointers and longs are 8-byte aligned on 64-bit kernels.
        for ptr in [
            o.task_real_parent,
            o.task_fs,
            o.task_files,
            o.task_mm,
            o.task_nsproxy,
            o.file_f_inode,
            o.dentry_d_parent,
            o.dentry_d_inode,
            o.inode_i_sb,
            o.inode_i_ino,
            o.mount_mnt_parent,
            o.mount_mnt_mountpoint,
            o.vfsmount_mnt_root,
            o.mm_arg_start,
            o.mm_exe_file,
            o.nsproxy_mnt_ns,
            o.files_fdt,
        ] {
            assert_eq!(ptr % 8, 0, "{ptr} not pointer-aligned in {o:?}");
        }
    }

    #[test]
    fn running_kernel_nested_paths_add_up() {
        let Some(btf) = vmlinux() else { return };
        let o = offsets_from_btf(&btf).unwrap();
        let nested = |s: &str, p: &[&str]| field_offset(&btf, s, p).unwrap();
        assert_eq!(
            nested("dentry", &["d_name", "name"]),
            o.dentry_d_name + o.qstr_name
        );
        assert_eq!(
            nested("dentry", &["d_name", "len"]),
            o.dentry_d_name + o.qstr_len
        );
        assert_eq!(
            nested("file", &["f_path", "dentry"]),
            o.file_f_path + o.path_dentry
        );
        assert_eq!(
            nested("mount", &["mnt", "mnt_root"]),
            o.mount_mnt + o.vfsmount_mnt_root
        );
        assert_eq!(
            nested("mnt_namespace", &["ns", "inum"]),
            o.mnt_ns_ns + o.ns_common_inum
        );
        assert_eq!(nested("fs_struct", &["pwd", "mnt"]), o.fs_pwd + o.path_mnt);
    }

    #[test]
    fn running_kernel_errors() {
        let Some(btf) = vmlinux() else { return };
        let err = field_offset(&btf, "task_struct", &["no_such_field"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `no_such_field` not found in struct task_struct"
        );
        let err = field_offset(&btf, "no_such_struct_ctrwatch", &["x"]).unwrap_err();
        assert!(matches!(err, BtfError::TypeNotFound { .. }), "{err:?}");
        // task_struct.sched_reset_on_fork has been a 1-bit bitfield since 2.6.
        let err = field_offset(&btf, "task_struct", &["sched_reset_on_fork"]).unwrap_err();
        assert!(matches!(err, BtfError::Bitfield { bits: 1, .. }), "{err:?}");
    }
}
