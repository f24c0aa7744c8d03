//! What happened to a file: the operation kinds, and the result.

use serde::{Deserialize, Serialize};

/// A file operation, as it appears in JSON `op` and in the store. The names are part of the
/// interface (scripts match on them): never rename one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// An existing file opened for writing (not created, not truncated).
    OpenWrite,
    /// A file created (an open that created it, or creat).
    Create,
    /// A file truncated (truncate, ftruncate, or an open with O_TRUNC of an existing file).
    Truncate,
    /// The writes of one process through one open file, reported once at close.
    Modify,
    /// Space allocated or punched (fallocate).
    Fallocate,
    /// A name removed (unlink).
    Unlink,
    /// A directory removed.
    Rmdir,
    /// A name moved (rename, renameat, renameat2).
    Rename,
    /// A hard link made.
    Link,
    /// A symlink made.
    Symlink,
    /// A node made (mknod: devices, FIFOs, and overlay whiteouts).
    Mknod,
    /// A directory made.
    Mkdir,
    /// An extended attribute set.
    Setxattr,
    /// An extended attribute removed.
    Removexattr,
    /// Permission bits changed.
    Chmod,
    /// Owner or group changed.
    Chown,
}

impl Op {
    /// Every op, in the order above.
    pub const ALL: [Op; 16] = [
        Op::OpenWrite,
        Op::Create,
        Op::Truncate,
        Op::Modify,
        Op::Fallocate,
        Op::Unlink,
        Op::Rmdir,
        Op::Rename,
        Op::Link,
        Op::Symlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Setxattr,
        Op::Removexattr,
        Op::Chmod,
        Op::Chown,
    ];

    /// The stable name (`open_write`, `unlink`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Op::OpenWrite => "open_write",
            Op::Create => "create",
            Op::Truncate => "truncate",
            Op::Modify => "modify",
            Op::Fallocate => "fallocate",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Symlink => "symlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Setxattr => "setxattr",
            Op::Removexattr => "removexattr",
            Op::Chmod => "chmod",
            Op::Chown => "chown",
        }
    }

    /// The op with this name.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Whether the op can make a file or its data disappear at its path (what `who-deleted`
    /// and the alert rules care about first).
    pub const fn removes(self) -> bool {
        matches!(self, Op::Unlink | Op::Rmdir | Op::Rename)
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the operation ended: `ok`, or the errno the kernel returned. A failed unlink deleted
/// nothing, so the result is always kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OpResult {
    /// It succeeded.
    #[default]
    Ok,
    /// It failed with this errno (positive, e.g. `libc::ENOENT`).
    Err(i32),
}

impl OpResult {
    /// From a syscall's return value: negative is `-errno`.
    pub fn from_ret(ret: i64) -> OpResult {
        if ret < 0 {
            OpResult::Err(i32::try_from(-ret).unwrap_or(i32::MAX))
        } else {
            OpResult::Ok
        }
    }

    /// `ok`, or the errno's name (`ENOENT`, `E4095` for one without a name).
    pub fn name(self) -> String {
        match self {
            OpResult::Ok => "ok".to_owned(),
            OpResult::Err(e) => errno_name(e),
        }
    }

    /// From [`OpResult::name`]'s text.
    pub fn from_name(name: &str) -> Option<OpResult> {
        if name == "ok" {
            return Some(OpResult::Ok);
        }
        errno_from_name(name).map(OpResult::Err)
    }

    /// The errno, when it failed.
    pub fn errno(self) -> Option<i32> {
        match self {
            OpResult::Ok => None,
            OpResult::Err(e) => Some(e),
        }
    }

    /// Whether it succeeded.
    pub fn is_ok(self) -> bool {
        self == OpResult::Ok
    }
}

/// errno values with a name, as the kernel defines them for x86_64 and aarch64 (the
/// architectures ctrwatch builds for).
const ERRNO_NAMES: &[(i32, &str)] = &[
    (libc::EPERM, "EPERM"),
    (libc::ENOENT, "ENOENT"),
    (libc::EIO, "EIO"),
    (libc::EBADF, "EBADF"),
    (libc::EAGAIN, "EAGAIN"),
    (libc::ENOMEM, "ENOMEM"),
    (libc::EACCES, "EACCES"),
    (libc::EFAULT, "EFAULT"),
    (libc::EBUSY, "EBUSY"),
    (libc::EEXIST, "EEXIST"),
    (libc::EXDEV, "EXDEV"),
    (libc::ENODEV, "ENODEV"),
    (libc::ENOTDIR, "ENOTDIR"),
    (libc::EISDIR, "EISDIR"),
    (libc::EINVAL, "EINVAL"),
    (libc::EMFILE, "EMFILE"),
    (libc::ETXTBSY, "ETXTBSY"),
    (libc::EFBIG, "EFBIG"),
    (libc::ENOSPC, "ENOSPC"),
    (libc::EROFS, "EROFS"),
    (libc::EMLINK, "EMLINK"),
    (libc::ENAMETOOLONG, "ENAMETOOLONG"),
    (libc::ENOTEMPTY, "ENOTEMPTY"),
    (libc::ELOOP, "ELOOP"),
    (libc::ENODATA, "ENODATA"),
    (libc::EOPNOTSUPP, "EOPNOTSUPP"),
    (libc::EDQUOT, "EDQUOT"),
    (libc::ERANGE, "ERANGE"),
    (libc::E2BIG, "E2BIG"),
    (libc::EINTR, "EINTR"),
    (libc::ENOSYS, "ENOSYS"),
];

/// errno's name (`ENOENT`), or `E<n>` for one without a name here.
pub fn errno_name(errno: i32) -> String {
    ERRNO_NAMES
        .iter()
        .find(|(n, _)| *n == errno)
        .map_or_else(|| format!("E{errno}"), |(_, name)| (*name).to_owned())
}

/// The errno of [`errno_name`]'s text (`ENOENT`, `E4095`).
pub fn errno_from_name(name: &str) -> Option<i32> {
    if let Some((n, _)) = ERRNO_NAMES.iter().find(|(_, s)| *s == name) {
        return Some(*n);
    }
    name.strip_prefix('E')?.parse().ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_names_round_trip_and_match_serde() -> Result<(), serde_json::Error> {
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.name()), Some(op));
            assert_eq!(serde_json::to_string(&op)?, format!("\"{}\"", op.name()));
        }
        assert_eq!(Op::from_name("delete"), None);
        Ok(())
    }

    #[test]
    fn results_and_errno_names() {
        assert_eq!(OpResult::from_ret(0).name(), "ok");
        assert_eq!(OpResult::from_ret(-2), OpResult::Err(libc::ENOENT));
        assert_eq!(OpResult::Err(libc::ENOENT).name(), "ENOENT");
        assert_eq!(errno_name(4095), "E4095");
        assert_eq!(OpResult::from_name("ENOENT"), Some(OpResult::Err(2)));
        assert_eq!(OpResult::from_name("E4095"), Some(OpResult::Err(4095)));
        assert_eq!(OpResult::from_name("ok"), Some(OpResult::Ok));
        assert_eq!(OpResult::from_name("E-1"), None);
        assert_eq!(OpResult::from_name("nope"), None);
    }
}
