//! Files the configuration points at (a sink's `secret_file`, `bearer_token_file` and
//! `ca_file`), read the way the daemon must read anything it trusts: opened without blocking
//! (a FIFO put in its place does not hang the daemon), only if it is a regular file, of a
//! bounded size, and — when the daemon runs as root — only if it is root's and writable by
//! root alone. A file another user can write could swap the CA that authenticates a receiver,
//! or the key that signs alerts, as the configuration itself could (see `ctrwatch run`'s
//! check of the configuration file).

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

/// A referenced file that cannot be trusted or read. Shown after the key that names the file.
#[derive(Debug, thiserror::Error)]
pub enum TrustedFileError {
    /// Opening or reading failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file, escaped for display.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a regular file (a FIFO, a device, a directory, ...).
    #[error("{path} is not a regular file")]
    NotRegular {
        /// The file, escaped for display.
        path: String,
    },
    /// Owned by another user, or writable by group or others, while the daemon runs as root.
    #[error(
        "refusing {path}: it must be root's and writable by root alone (owner uid {uid}, mode {mode:04o})"
    )]
    Untrusted {
        /// The file, escaped for display.
        path: String,
        /// Its owner.
        uid: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// Larger than any such file has reason to be.
    #[error("{path} is larger than {max} bytes")]
    TooLarge {
        /// The file, escaped for display.
        path: String,
        /// The bound.
        max: u64,
    },
}

/// A secret or token file is at most this large.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;
/// A CA bundle of a sink is at most this large (Debian's whole bundle is about 220 KiB).
pub const MAX_CA_FILE: u64 = 4 * 1024 * 1024;

/// Reads `path` (links followed: the operator named it) if it may be trusted; see the module.
pub fn read_trusted(path: &Path, max: u64) -> Result<Vec<u8>, TrustedFileError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    read_checked(path, max, as_root)
}

/// Reads `path` as [`read_trusted`] does, without the owner check (`ctrwatch config check` of
/// a file not yet deployed).
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, TrustedFileError> {
    read_checked(path, max, false)
}

fn read_checked(path: &Path, max: u64, as_root: bool) -> Result<Vec<u8>, TrustedFileError> {
    let shown = || ctrwatch_event::escape_path(path);
    let io = |source| TrustedFileError::Io {
        path: shown(),
        source,
    };
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(TrustedFileError::NotRegular { path: shown() });
    }
    if as_root && (meta.uid() != 0 || meta.mode() & 0o022 != 0) {
        return Err(TrustedFileError::Untrusted {
            path: shown(),
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    let mut bytes = Vec::new();
    // One byte more than allowed tells a file that grew past the bound since the fstat.
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(TrustedFileError::TooLarge { path: shown(), max });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ctrwatch-config-files-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = scratch("fifo");
        let fifo = dir.join("secret");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Without O_NONBLOCK this open waits for a writer forever.
        let err = read_checked(&fifo, MAX_SECRET_FILE, false).unwrap_err();
        assert!(matches!(err, TrustedFileError::NotRegular { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn group_or_other_writable_is_refused_as_root() {
        let dir = scratch("mode");
        let f = dir.join("secret");
        std::fs::write(&f, "s3cret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = read_checked(&f, MAX_SECRET_FILE, true).unwrap_err();
        assert!(
            err.to_string().contains("mode 0666"),
            "{err} (the owner check runs only as root)"
        );
        // Not root: no owner to compare with; the file is read.
        if unsafe { libc::geteuid() } == 0 {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(
                read_checked(&f, MAX_SECRET_FILE, true).unwrap(),
                b"s3cret\n"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_over_the_bound_is_refused() {
        let dir = scratch("size");
        let f = dir.join("ca.pem");
        std::fs::write(&f, vec![b'x'; 100]).unwrap();
        let err = read_checked(&f, 99, false).unwrap_err();
        assert!(
            matches!(err, TrustedFileError::TooLarge { max: 99, .. }),
            "{err}"
        );
        assert_eq!(read_checked(&f, 100, false).unwrap().len(), 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
