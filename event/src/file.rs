//! The file event: one operation on one file, with everything known about it. Values stay
//! typed (times in ns, devices and modes as numbers, enums for kinds) until they are written
//! out as JSON or as a readable line.

use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};

use crate::{
    containerd::ContainerdView,
    op::{Op, OpResult},
    process::ProcessView,
    text::{PathBytes, hex, lossless_text},
    time::format_rfc3339,
};

/// One file operation with everything known about who did it: what `watch` prints, what the
/// store keeps and returns, what alerts carry. Serializes to the documented JSON object
/// (docs/operations.md, "JSON records"); the field names are an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEvent {
    /// Wall-clock time, ns since the epoch.
    pub time_ns: i64,
    /// CLOCK_MONOTONIC ns, as the kernel stamped the record: orders events exactly and
    /// survives clock steps.
    pub mono_ns: u64,
    /// What was done.
    pub op: Op,
    /// The file (absolute host path, canonical).
    pub path: PathBytes,
    /// rename/link: the new path; symlink: the link's target as given.
    pub new_path: Option<PathBytes>,
    /// `ok` or the errno.
    pub result: OpResult,
    /// Inode number, where the hook knows the file.
    pub inode: Option<u64>,
    /// The file's filesystem, where the hook knows it.
    pub dev: Option<Dev>,
    /// Who did it. Shared by the events of one thread while its description holds.
    pub process: Arc<ProcessView>,
    /// What depends on the op.
    pub details: Details,
}

/// A device number in the kernel's internal encoding (`major << 20 | minor`), shown as
/// `major:minor` like `stat` and `/proc/self/mountinfo` do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dev(pub u32);

impl Dev {
    /// The kernel's `dev_t` (`MKDEV`).
    pub const fn new(major: u32, minor: u32) -> Dev {
        Dev((major << 20) | (minor & 0xfffff))
    }
    /// From userspace's `dev_t` encoding (glibc `makedev`, what `mknod` takes).
    pub const fn from_user(rdev: u64) -> Dev {
        let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
        let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
        Dev::new(major as u32, minor as u32)
    }
    /// The major number.
    pub const fn major(self) -> u32 {
        self.0 >> 20
    }
    /// The minor number.
    pub const fn minor(self) -> u32 {
        self.0 & 0xfffff
    }
    /// From `major:minor` text.
    pub fn parse(text: &str) -> Option<Dev> {
        let (major, minor) = text.split_once(':')?;
        let (major, minor): (u32, u32) = (major.parse().ok()?, minor.parse().ok()?);
        (major < 1 << 12 && minor < 1 << 20).then(|| Dev::new(major, minor))
    }
}

impl std::fmt::Display for Dev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major(), self.minor())
    }
}

impl Serialize for Dev {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dev {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Dev::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not major:minor")))
    }
}

/// Permission bits (and setuid/setgid/sticky): the low 12 bits of a mode, shown in octal
/// with four digits (`0644`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mode(pub u32);

impl Mode {
    /// The permission bits of a full `st_mode`.
    pub const fn permissions(mode: u32) -> Mode {
        Mode(mode & 0o7777)
    }
    /// From octal text (`0644`).
    pub fn parse(text: &str) -> Option<Mode> {
        u32::from_str_radix(text, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .map(Mode)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An extended attribute set or removed. The value is captured only for the overlay
/// namespaces (`trusted.overlay.*`, `user.overlay.*`), whose values are short markers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Xattr {
    /// The name, as given.
    pub name: Vec<u8>,
    /// The value, as given (the kernel's trailing NUL of a C string included, if any).
    pub value: Option<Vec<u8>>,
}

impl Xattr {
    /// The value as text, without a trailing NUL.
    pub fn value_text(&self) -> Option<String> {
        self.value.as_deref().map(|v| {
            let v = v.strip_suffix(&[0]).unwrap_or(v);
            lossless_text(v)
        })
    }
    /// `trusted.overlay.opaque` or `user.overlay.opaque` set to `y`: the directory hides
    /// everything below it in the lower layers.
    pub fn is_opaque_marker(&self) -> bool {
        (self.name == b"trusted.overlay.opaque" || self.name == b"user.overlay.opaque")
            && self.value_text().as_deref() == Some("y")
    }
}

impl Serialize for Xattr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let fields = if self.value.is_some() { 3 } else { 1 };
        let mut st = s.serialize_struct("Xattr", fields)?;
        st.serialize_field("name", &lossless_text(&self.name))?;
        if let Some(v) = &self.value {
            st.serialize_field("value", &self.value_text())?;
            st.serialize_field("value_hex", &hex(v))?;
        }
        st.end()
    }
}

/// The file a rename destroyed by replacing it at its new path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Overwritten {
    /// Its inode number.
    pub inode: u64,
    /// Its filesystem.
    pub dev: Dev,
}

/// A set of small flags, serialized as a list of names.
macro_rules! flag_set {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $flag:ident = $bit:expr, $text:literal;)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct $name(pub u16);

        impl $name {
            $($(#[$fdoc])* pub const $flag: $name = $name(1 << $bit);)*
            /// Every flag with its name, in output order.
            pub const ALL: &'static [($name, &'static str)] = &[$(($name::$flag, $text)),*];

            /// Whether no flag is set.
            pub const fn is_empty(&self) -> bool {
                self.0 == 0
            }
            /// Whether every flag of `other` is set.
            pub const fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }
            /// Sets the flags of `other`.
            pub fn insert(&mut self, other: $name) {
                self.0 |= other.0;
            }
            /// The names of the flags set, in output order.
            pub fn names(self) -> impl Iterator<Item = &'static str> {
                Self::ALL
                    .iter()
                    .filter(move |(f, _)| self.contains(*f))
                    .map(|(_, n)| *n)
            }
            /// The flag with this name.
            pub fn from_name(name: &str) -> Option<$name> {
                Self::ALL.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
            }
        }

        impl std::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, other: $name) -> $name {
                $name(self.0 | other.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.names())
            }
        }
    };
}

flag_set! {
    /// How a file was opened (opens only).
    OpenFlags {
        /// O_WRONLY or O_RDWR.
        WRITE = 0, "write";
        /// O_CREAT.
        CREATE = 1, "create";
        /// O_TRUNC.
        TRUNCATE = 2, "truncate";
        /// O_APPEND.
        APPEND = 3, "append";
    }
}

flag_set! {
    /// What a reader should know about how the event was seen.
    Notes {
        /// Reached through a file descriptor (ftruncate, fsetxattr, fchmod, writes...).
        BY_FD = 0, "by_fd";
        /// The path was longer than the kernel side could follow: `path` is not the whole
        /// path (see docs/architecture.md).
        PATH_TRUNCATED = 1, "path_truncated";
        /// The same for `new_path`.
        NEW_PATH_TRUNCATED = 2, "new_path_truncated";
        /// The xattr value was longer than what is captured.
        VALUE_TRUNCATED = 3, "value_truncated";
        /// Writes reported at process exit or fd reuse, not at close.
        NOT_CLOSED = 4, "not_closed";
        /// Made by the kernel itself, not by the process's own system call: an overlayfs
        /// copy-up or opaque directory setting `trusted.overlay.*`, seen by the fentry
        /// backend (docs/kernels.md). The process is the one whose operation triggered it.
        KERNEL_INTERNAL = 5, "kernel_internal";
    }
}

/// Protect mode's verdict on an operation (issue 15): the record of a BPF LSM program that
/// denied it, or in dry-run would have (docs/operations.md, "Protect mode").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protect {
    /// Denied (enforce): the process got EPERM, nothing changed.
    Denied,
    /// Would have been denied (dry-run): let through.
    WouldDeny,
}

impl Protect {
    /// Every verdict.
    pub const ALL: [Protect; 2] = [Protect::Denied, Protect::WouldDeny];
    /// The name (`denied`, `would_deny`), as in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Protect::Denied => "denied",
            Protect::WouldDeny => "would_deny",
        }
    }
    /// The verdict with this name.
    pub fn from_name(name: &str) -> Option<Protect> {
        Protect::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// What depends on the op; absent fields do not apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Details {
    /// create/mkdir/mknod/chmod: the mode requested; opens: the file's.
    pub mode: Option<Mode>,
    /// truncate/fallocate length, size after a `modify`'s writes, size at open, xattr value
    /// size.
    pub size: Option<u64>,
    /// fallocate: the offset.
    pub offset: Option<u64>,
    /// modify: bytes written.
    pub bytes: Option<u64>,
    /// modify: write calls.
    pub writes: Option<u64>,
    /// modify: wall-clock time of the first write (the event's time is the last).
    pub first_write_ns: Option<i64>,
    /// setxattr/removexattr.
    pub xattr: Option<Xattr>,
    /// chown: the new owner (None: unchanged).
    pub owner_uid: Option<u32>,
    /// chown: the new group (None: unchanged).
    pub owner_gid: Option<u32>,
    /// mknod: the device number.
    pub rdev: Option<Dev>,
    /// mknod: a 0:0 character device, i.e. an overlay whiteout.
    pub whiteout: Option<bool>,
    /// rename: the file the rename deleted by replacing it (where that can be seen).
    pub overwritten: Option<Overwritten>,
    /// opens: how.
    pub open_flags: OpenFlags,
    /// How the event was seen.
    pub notes: Notes,
    /// Protect mode's verdict: set only on the records of the protect programs, which are the
    /// denials (and would-denials) themselves, not changes.
    pub protect: Option<Protect>,
    /// Its place in containerd's storage and whose it is (under containerd roots only).
    pub containerd: Option<Box<ContainerdView>>,
}

impl FileEvent {
    /// The event's time as RFC 3339 text.
    pub fn time_text(&self) -> String {
        format_rfc3339(self.time_ns)
    }
}

/// The JSON form, field by field in the documented order.
#[derive(Serialize)]
struct Json<'a> {
    time: String,
    mono_ns: u64,
    op: Op,
    path: &'a PathBytes,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_path: Option<&'a PathBytes>,
    result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protect: Option<Protect>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inode: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dev: Option<Dev>,
    process: &'a ProcessView,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_path_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    writes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_write: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    xattr: Option<&'a Xattr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rdev: Option<Dev>,
    #[serde(skip_serializing_if = "Option::is_none")]
    whiteout: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    overwritten: Option<&'a Overwritten>,
    #[serde(skip_serializing_if = "OpenFlags::is_empty")]
    open_flags: OpenFlags,
    #[serde(skip_serializing_if = "Notes::is_empty")]
    notes: Notes,
    #[serde(skip_serializing_if = "Option::is_none")]
    containerd: Option<&'a ContainerdView>,
}

impl Serialize for FileEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = &self.details;
        Json {
            time: self.time_text(),
            mono_ns: self.mono_ns,
            op: self.op,
            path: &self.path,
            new_path: self.new_path.as_ref(),
            result: self.result.name(),
            errno: self.result.errno(),
            protect: d.protect,
            inode: self.inode,
            dev: self.dev,
            process: &self.process,
            path_hex: self.path.hex_if_not_utf8(),
            new_path_hex: self.new_path.as_ref().and_then(PathBytes::hex_if_not_utf8),
            mode: d.mode,
            size: d.size,
            offset: d.offset,
            bytes: d.bytes,
            writes: d.writes,
            first_write: d.first_write_ns.map(format_rfc3339),
            xattr: d.xattr.as_ref(),
            owner_uid: d.owner_uid,
            owner_gid: d.owner_gid,
            rdev: d.rdev,
            whiteout: d.whiteout,
            overwritten: d.overwritten.as_ref(),
            open_flags: d.open_flags,
            notes: d.notes,
            containerd: d.containerd.as_deref(),
        }
        .serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices() {
        assert_eq!(Dev::new(254, 1).to_string(), "254:1");
        assert_eq!(Dev::parse("254:1"), Some(Dev::new(254, 1)));
        assert_eq!(Dev::parse("254"), None);
        assert_eq!(Dev::parse("4096:0"), None);
        // glibc makedev(1, 3) and makedev(259, 65536)
        assert_eq!(Dev::from_user(0x0103).to_string(), "1:3");
        assert_eq!(Dev::from_user(0x1001_0300), Dev::new(259, 65536));
        assert_eq!(Dev::from_user(0), Dev::new(0, 0));
    }

    #[test]
    fn modes() {
        assert_eq!(Mode::permissions(0o100644).to_string(), "0644");
        assert_eq!(Mode(0o4755).to_string(), "4755");
        assert_eq!(Mode::parse("0644"), Some(Mode(0o644)));
        assert_eq!(Mode::parse("99"), None);
    }

    #[test]
    fn flags_serialize_as_names() -> Result<(), serde_json::Error> {
        let f = OpenFlags::WRITE | OpenFlags::TRUNCATE;
        assert_eq!(serde_json::to_string(&f)?, r#"["write","truncate"]"#);
        assert_eq!(Notes::from_name("not_closed"), Some(Notes::NOT_CLOSED));
        assert!(Notes::default().is_empty());
        Ok(())
    }

    #[test]
    fn xattr_json_has_the_value_only_when_captured() -> Result<(), serde_json::Error> {
        let x = Xattr {
            name: b"trusted.overlay.opaque".to_vec(),
            value: Some(b"y".to_vec()),
        };
        assert!(x.is_opaque_marker());
        assert_eq!(
            serde_json::to_string(&x)?,
            r#"{"name":"trusted.overlay.opaque","value":"y","value_hex":"79"}"#
        );
        let x = Xattr {
            name: b"user.x".to_vec(),
            value: None,
        };
        assert_eq!(serde_json::to_string(&x)?, r#"{"name":"user.x"}"#);
        assert!(!x.is_opaque_marker());
        Ok(())
    }
}
