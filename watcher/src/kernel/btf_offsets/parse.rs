//! A small reader for raw BTF (the format of `/sys/kernel/btf/vmlinux`), enough to find structs
//! and unions by name and walk their members.
//!
//! Written by hand rather than taken from a crate because none fits:
//! - `btf-rs`, the complete BTF parser on crates.io, is LGPL-2.1-or-later, and ctrwatch ships as
//!   a statically linked MIT OR Apache-2.0 binary;
//! - `aya-obj` (already a dependency, through `aya`) parses BTF for its relocations, but keeps
//!   type lookup by id, names and struct members `pub(crate)`: its public `Btf` only offers
//!   `id_by_type_name_kind` and `to_bytes`, not the member names and bit offsets needed here.
//!
//! What is needed is small: the header, a walk of the type section recording where each type
//! starts (every kind's trailing data has a size fixed by its kind and `vlen`), the members of
//! structs and unions, and names from the string section. The input comes from outside this
//! program, so every read is bounds-checked and anything out of place is a [`ParseError`], never
//! a panic. Both byte orders are read, as libbpf does (BTF is in the byte order of the kernel
//! that produced it).
//!
//! Format reference: the kernel's `Documentation/bpf/btf.rst` and `include/uapi/linux/btf.h`.

use std::fmt;

/// `struct btf_header` without the extensions later kernels may append (`hdr_len` says how long
/// the header really is).
const HEADER_LEN: usize = 24;
const MAGIC: u16 = 0xeb9f;
const VERSION: u8 = 1;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_LEN: usize = 12;

/// Why BTF could not be read; the caller adds where it came from.
#[derive(Debug)]
pub(super) struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(reason: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(reason.into()))
}

/// BTF kinds (`BTF_KIND_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::Int,
            2 => Self::Ptr,
            3 => Self::Array,
            4 => Self::Struct,
            5 => Self::Union,
            6 => Self::Enum,
            7 => Self::Fwd,
            8 => Self::Typedef,
            9 => Self::Volatile,
            10 => Self::Const,
            11 => Self::Restrict,
            12 => Self::Func,
            13 => Self::FuncProto,
            14 => Self::Var,
            15 => Self::Datasec,
            16 => Self::Float,
            17 => Self::DeclTag,
            18 => Self::TypeTag,
            19 => Self::Enum64,
            _ => return None,
        })
    }

    /// Bytes of kind-specific data after the `btf_type` (`None` on overflow, which only
    /// absurd input could cause: vlen is 16 bits).
    fn trailing_len(self, vlen: usize) -> Option<usize> {
        match self {
            Self::Ptr
            | Self::Fwd
            | Self::Typedef
            | Self::Volatile
            | Self::Const
            | Self::Restrict
            | Self::Func
            | Self::Float
            | Self::TypeTag => Some(0),
            // INT: encoding/offset/bits word. VAR: linkage. DECL_TAG: component_idx.
            Self::Int | Self::Var | Self::DeclTag => Some(4),
            // struct btf_array: type, index_type, nelems.
            Self::Array => Some(12),
            // struct btf_member: name_off, type, offset.
            Self::Struct | Self::Union => vlen.checked_mul(12),
            // struct btf_enum: name_off, val.
            Self::Enum => vlen.checked_mul(8),
            // struct btf_param: name_off, type.
            Self::FuncProto => vlen.checked_mul(8),
            // struct btf_var_secinfo: type, offset, size.
            Self::Datasec => vlen.checked_mul(12),
            // struct btf_enum64: name_off, val_lo32, val_hi32.
            Self::Enum64 => vlen.checked_mul(12),
        }
    }
}

/// One type's `struct btf_type`, decoded.
#[derive(Debug, Clone, Copy)]
pub(super) struct TypeInfo {
    pub(super) kind: Kind,
    pub(super) name_off: u32,
    /// Number of members/values/params (bits 0-15 of info).
    pub(super) vlen: u32,
    /// Bit 31 of info: for structs and unions, members carry a bitfield size.
    pub(super) kind_flag: bool,
    /// Size in bytes (INT, STRUCT, UNION, ENUM, DATASEC, FLOAT) or the referenced type id
    /// (PTR, TYPEDEF, qualifiers, FUNC, VAR, DECL_TAG, TYPE_TAG).
    pub(super) size_or_type: u32,
    /// Where the kind-specific data starts in [`Btf::data`].
    data_pos: usize,
}

/// A struct or union member.
#[derive(Debug, Clone, Copy)]
pub(super) struct Member {
    pub(super) name_off: u32,
    pub(super) type_id: u32,
    /// From the start of the enclosing struct/union.
    pub(super) bit_offset: u32,
    /// `Some` when the struct has kind_flag set (then 0 means "not a bitfield"); `None` when it
    /// has not, and a bitfield is then told by its INT type's bits instead.
    pub(super) bitfield_size: Option<u32>,
}

/// The INT-specific word: `BTF_INT_OFFSET` and `BTF_INT_BITS`.
#[derive(Debug, Clone, Copy)]
pub(super) struct IntInfo {
    pub(super) bit_offset: u32,
    pub(super) bits: u32,
}

/// Parsed BTF: the raw bytes, where each type starts, and an index of structs/unions by name.
pub(super) struct Btf {
    data: Vec<u8>,
    big_endian: bool,
    /// The string section, as a range of `data`; checked to start and end with a NUL byte, so
    /// every offset inside it starts a terminated string.
    strings: std::ops::Range<usize>,
    /// Start of `struct btf_type` for type id `i + 1` (id 0 is void and has no entry).
    type_pos: Vec<usize>,
    /// Named structs and unions as (name start, name end, type id), sorted by name bytes.
    composites: Vec<(usize, usize, u32)>,
}

impl Btf {
    /// Parses raw BTF (not an ELF file holding a `.BTF` section).
    pub(super) fn parse(data: Vec<u8>) -> Result<Self, ParseError> {
        if data.len() < HEADER_LEN {
            return err(format!(
                "{} bytes, shorter than the {HEADER_LEN}-byte BTF header",
                data.len()
            ));
        }
        let magic = [data[0], data[1]];
        let big_endian = if magic == MAGIC.to_le_bytes() {
            false
        } else if magic == MAGIC.to_be_bytes() {
            true
        } else {
            return err(format!(
                "starts with bytes {:02x} {:02x}, not the BTF magic {MAGIC:#06x} \
                 in either byte order (not raw BTF)",
                magic[0], magic[1]
            ));
        };
        let mut btf = Self {
            data,
            big_endian,
            strings: 0..0,
            type_pos: Vec::new(),
            composites: Vec::new(),
        };
        let version = btf.data[2];
        if version != VERSION {
            return err(format!("unsupported BTF version {version}"));
        }
        // data[3] is flags, none defined.
        let hdr_len = btf.u32_at(4)?;
        let type_off = btf.u32_at(8)?;
        let type_len = btf.u32_at(12)?;
        let str_off = btf.u32_at(16)?;
        let str_len = btf.u32_at(20)?;
        let hdr_len = to_usize(hdr_len);
        if hdr_len < HEADER_LEN || hdr_len > btf.data.len() {
            return err(format!(
                "header length {hdr_len} is not between {HEADER_LEN} and the file size {}",
                btf.data.len()
            ));
        }
        let types = btf.section("type", hdr_len, type_off, type_len)?;
        let strings = btf.section("string", hdr_len, str_off, str_len)?;
        match (btf.data.get(strings.start), strings.end.checked_sub(1)) {
            (Some(0), Some(last)) if btf.data.get(last) == Some(&0) => {}
            _ => {
                return err("the string section does not start and end with a NUL byte".to_string());
            }
        }
        btf.strings = strings;
        btf.index_types(types)?;
        Ok(btf)
    }

    /// The byte range of a section given by the header (offsets count from the header's end).
    fn section(
        &self,
        what: &str,
        hdr_len: usize,
        off: u32,
        len: u32,
    ) -> Result<std::ops::Range<usize>, ParseError> {
        let start = hdr_len.checked_add(to_usize(off));
        let end = start.and_then(|s| s.checked_add(to_usize(len)));
        match (start, end) {
            (Some(start), Some(end)) if end <= self.data.len() => Ok(start..end),
            _ => err(format!(
                "{what} section (offset {off}, length {len} after a {hdr_len}-byte header) \
                 goes past the end of the {}-byte file",
                self.data.len()
            )),
        }
    }

    /// Walks the type section once, recording where each type starts and indexing named
    /// structs and unions.
    fn index_types(&mut self, types: std::ops::Range<usize>) -> Result<(), ParseError> {
        let mut pos = types.start;
        while pos < types.end {
            let id = self.type_pos.len() + 1;
            if types.end - pos < TYPE_LEN {
                return err(format!(
                    "type {id} at byte {pos}: {} bytes left in the type section, \
                     less than a {TYPE_LEN}-byte type header",
                    types.end - pos
                ));
            }
            let Ok(id32) = u32::try_from(id) else {
                return err("more than 2^32 types".to_string());
            };
            let info = self
                .decode(pos)
                .map_err(|e| ParseError(format!("type {id}: {e}")))?;
            let end = info
                .kind
                .trailing_len(to_usize(info.vlen))
                .and_then(|n| info.data_pos.checked_add(n));
            match end {
                Some(end) if end <= types.end => {
                    self.type_pos.push(pos);
                    pos = end;
                }
                _ => {
                    return err(format!(
                        "type {id} ({:?}, vlen {}) runs past the end of the type section",
                        info.kind, info.vlen
                    ));
                }
            }
            if matches!(info.kind, Kind::Struct | Kind::Union) && info.name_off != 0 {
                let name = self.name_range(info.name_off)?;
                self.composites.push((name.start, name.end, id32));
            }
        }
        let data = &self.data;
        self.composites
            .sort_unstable_by(|a, b| data[a.0..a.1].cmp(&data[b.0..b.1]).then(a.2.cmp(&b.2)));
        Ok(())
    }

    fn u32_at(&self, pos: usize) -> Result<u32, ParseError> {
        let bytes = pos
            .checked_add(4)
            .and_then(|end| self.data.get(pos..end))
            .and_then(|b| <[u8; 4]>::try_from(b).ok());
        match bytes {
            Some(b) if self.big_endian => Ok(u32::from_be_bytes(b)),
            Some(b) => Ok(u32::from_le_bytes(b)),
            None => err(format!("read of 4 bytes at {pos} past the end of the BTF")),
        }
    }

    /// Decodes the `struct btf_type` at `pos`.
    fn decode(&self, pos: usize) -> Result<TypeInfo, ParseError> {
        let name_off = self.u32_at(pos)?;
        let info = self.u32_at(pos + 4)?;
        let size_or_type = self.u32_at(pos + 8)?;
        let raw_kind = (info >> 24) & 0x1f;
        let Some(kind) = Kind::from_raw(raw_kind) else {
            return err(format!("unknown kind {raw_kind} at byte {pos}"));
        };
        Ok(TypeInfo {
            kind,
            name_off,
            vlen: info & 0xffff,
            kind_flag: info >> 31 != 0,
            size_or_type,
            data_pos: pos + TYPE_LEN,
        })
    }

    /// Type `id`, or `None` for id 0 (void).
    pub(super) fn type_by_id(&self, id: u32) -> Result<Option<TypeInfo>, ParseError> {
        if id == 0 {
            return Ok(None);
        }
        match self.type_pos.get(to_usize(id) - 1) {
            Some(&pos) => self.decode(pos).map(Some),
            None => err(format!(
                "type id {id} does not exist (there are {} types)",
                self.type_pos.len()
            )),
        }
    }

    fn name_range(&self, name_off: u32) -> Result<std::ops::Range<usize>, ParseError> {
        let start = self
            .strings
            .start
            .checked_add(to_usize(name_off))
            .filter(|&s| s < self.strings.end);
        let Some(start) = start else {
            return err(format!(
                "name offset {name_off} is outside the {}-byte string section",
                self.strings.len()
            ));
        };
        // The section ends with a NUL (checked by parse), so one is always found.
        let len = self.data[start..self.strings.end]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.strings.end - start);
        Ok(start..start + len)
    }

    /// The name at `name_off` in the string section, as bytes (BTF does not promise UTF-8);
    /// empty for anonymous types and members.
    pub(super) fn name(&self, name_off: u32) -> Result<&[u8], ParseError> {
        let range = self.name_range(name_off)?;
        Ok(&self.data[range])
    }

    /// Ids of the structs and unions named `name`, in id order.
    pub(super) fn composites_named(&self, name: &str) -> Vec<u32> {
        let name = name.as_bytes();
        let key = |e: &(usize, usize, u32)| &self.data[e.0..e.1];
        let first = self.composites.partition_point(|e| key(e) < name);
        self.composites[first..]
            .iter()
            .take_while(|e| key(e) == name)
            .map(|e| e.2)
            .collect()
    }

    /// Ids of the types of kind `kind` named `name`, in id order. A linear scan (vmlinux has
    /// about 150 000 types: a few milliseconds), for the rare lookups that are not of a struct.
    pub(super) fn types_named(&self, name: &str, kind: Kind) -> Result<Vec<u32>, ParseError> {
        let mut found = Vec::new();
        for (i, &pos) in self.type_pos.iter().enumerate() {
            let ty = self.decode(pos)?;
            if ty.kind == kind && ty.name_off != 0 && self.name(ty.name_off)? == name.as_bytes() {
                // type_pos never holds more than u32::MAX entries (checked by index_types).
                found.push(u32::try_from(i + 1).unwrap_or(u32::MAX));
            }
        }
        Ok(found)
    }

    /// Parameter type ids of a FUNC_PROTO (empty for other kinds).
    pub(super) fn params(&self, ty: &TypeInfo) -> Result<Vec<u32>, ParseError> {
        if ty.kind != Kind::FuncProto {
            return Ok(Vec::new());
        }
        // struct btf_param: name_off, type.
        (0..to_usize(ty.vlen))
            .map(|i| self.u32_at(ty.data_pos + i * 8 + 4))
            .collect()
    }

    /// Parameter name offsets of a FUNC_PROTO, in order (empty for other kinds).
    pub(super) fn param_names(&self, ty: &TypeInfo) -> Result<Vec<u32>, ParseError> {
        if ty.kind != Kind::FuncProto {
            return Ok(Vec::new());
        }
        (0..to_usize(ty.vlen))
            .map(|i| self.u32_at(ty.data_pos + i * 8))
            .collect()
    }

    /// Members of a struct or union (empty for other kinds).
    pub(super) fn members(&self, ty: &TypeInfo) -> Result<Vec<Member>, ParseError> {
        if !matches!(ty.kind, Kind::Struct | Kind::Union) {
            return Ok(Vec::new());
        }
        (0..to_usize(ty.vlen))
            .map(|i| {
                let pos = ty.data_pos + i * 12;
                let name_off = self.u32_at(pos)?;
                let type_id = self.u32_at(pos + 4)?;
                let offset = self.u32_at(pos + 8)?;
                Ok(if ty.kind_flag {
                    Member {
                        name_off,
                        type_id,
                        bit_offset: offset & 0x00ff_ffff,
                        bitfield_size: Some(offset >> 24),
                    }
                } else {
                    Member {
                        name_off,
                        type_id,
                        bit_offset: offset,
                        bitfield_size: None,
                    }
                })
            })
            .collect()
    }

    /// The INT-specific data of an INT type (`None` for other kinds).
    pub(super) fn int_info(&self, ty: &TypeInfo) -> Result<Option<IntInfo>, ParseError> {
        if ty.kind != Kind::Int {
            return Ok(None);
        }
        let word = self.u32_at(ty.data_pos)?;
        Ok(Some(IntInfo {
            bit_offset: (word >> 16) & 0xff,
            bits: word & 0xff,
        }))
    }
}

fn to_usize(v: u32) -> usize {
    // ctrwatch runs on 64-bit Linux; on a 16-bit target this would saturate and the bounds
    // checks would then reject the input.
    usize::try_from(v).unwrap_or(usize::MAX)
}
