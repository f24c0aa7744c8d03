//! The key of the hash that tells apart a sink's targets whose shown URLs coincide
//! ([`crate::sinks::shown_targets`]).
//!
//! Why a key: the names are stored in the outbox (`deliveries.target`), which the store's
//! reader group may read, and the URLs they stand for may carry a token (an Alertmanager
//! tenant in the query, user info). A plain hash of the URL would let a store reader confirm a
//! guessed low-entropy token; a hash keyed by a secret only root reads says nothing about it.
//! The key lives beside the store (`events.db.target-names.key`, mode 0600, owned by the
//! daemon's user; named after the store so that the store's directory still holds only the
//! store's files) so that the names, and the pending deliveries stored under them, survive
//! restarts.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// The key file's suffix, after the store's file name.
pub const SUFFIX: &str = ".target-names.key";

/// How targets with the same shown URL are told apart.
#[derive(Clone)]
pub enum TargetKey {
    /// By an HMAC-SHA256 of the URL with this key (the daemon's names).
    Keyed([u8; 32]),
    /// By a plain SHA-256 of the URL: the names of builds before the key, kept to rename
    /// their pending deliveries at start, and the fallback when the key cannot be had (the
    /// names then stay what they were; nothing pending is orphaned).
    Legacy,
}

impl std::fmt::Debug for TargetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetKey::Keyed(_) => f.write_str("TargetKey::Keyed(..)"),
            TargetKey::Legacy => f.write_str("TargetKey::Legacy"),
        }
    }
}

/// Why the key file could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum TargetKeyError {
    /// An I/O error on the file.
    #[error("{}: {source}", ctrwatch_event::escape_path(path))]
    Io {
        /// The key file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not one the daemon made: not a regular file, another owner, or not 32
    /// bytes. It is left alone (someone else's file is not the daemon's to replace).
    #[error(
        "{}: {what}; the key of the sink target names must be a 32-byte regular file owned by \
         the daemon's user (remove it and the daemon makes a new one)",
        ctrwatch_event::escape_path(path)
    )]
    Foreign {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
}

impl TargetKey {
    /// A random key (not kept): for `alert test` without a readable key, and tests.
    pub fn random() -> std::io::Result<TargetKey> {
        let mut key = [0u8; 32];
        File::open("/dev/urandom")?.read_exact(&mut key)?;
        Ok(TargetKey::Keyed(key))
    }

    /// The key file of the store `store` (its path + [`SUFFIX`]).
    pub fn path_for(store: &Path) -> PathBuf {
        let mut p = store.as_os_str().to_owned();
        p.push(SUFFIX);
        PathBuf::from(p)
    }

    /// The key in `path`, made (random, mode 0600) if there is none. Never follows a
    /// symbolic link; a group- or world-readable key made by this user is narrowed to 0600
    /// (its names stay, since pending deliveries are stored under them).
    pub fn load_or_create(path: &Path) -> Result<TargetKey, TargetKeyError> {
        let path = path.to_path_buf();
        let io = |source| TargetKeyError::Io {
            path: path.clone(),
            source,
        };
        match Self::load(&path) {
            Ok(key) => return Ok(key),
            Err(TargetKeyError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let TargetKey::Keyed(key) = TargetKey::random().map_err(io)? else {
            return Ok(TargetKey::Legacy);
        };
        // Made under another name and renamed in, so that a crash never leaves a short key.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".new-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&key)?;
                f.sync_all()
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        // A key another start made meanwhile wins: link-like semantics with no overwrite.
        match std::fs::hard_link(&tmp, &path) {
            Ok(()) => {
                let _ = std::fs::remove_file(&tmp);
                Ok(TargetKey::Keyed(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(&tmp);
                Self::load(&path)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(io(e))
            }
        }
    }

    /// The key in `path`, which must exist.
    pub fn load(path: &Path) -> Result<TargetKey, TargetKeyError> {
        let io = |source| TargetKeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let foreign = |what: String| TargetKeyError::Foreign {
            path: path.to_path_buf(),
            what,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| {
                // O_NOFOLLOW's ELOOP: the key file is a symbolic link.
                if e.raw_os_error() == Some(libc::ELOOP) {
                    foreign("a symbolic link".into())
                } else {
                    io(e)
                }
            })?;
        let meta = file.metadata().map_err(io)?;
        if !meta.file_type().is_file() {
            return Err(foreign("not a regular file".into()));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(foreign(format!("owned by uid {}", meta.uid())));
        }
        if meta.len() != 32 {
            return Err(foreign(format!("{} bytes", meta.len())));
        }
        if meta.mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
        let mut key = [0u8; 32];
        file.read_exact(&mut key).map_err(io)?;
        Ok(TargetKey::Keyed(key))
    }

    /// The 8 hex digits that tell `url` apart from the sink's other targets shown alike.
    pub fn tag(&self, url: &str) -> String {
        use hmac::{Hmac, Mac as _};
        use sha2::{Digest as _, Sha256};
        match self {
            TargetKey::Keyed(key) => match Hmac::<Sha256>::new_from_slice(key) {
                Ok(mut mac) => {
                    mac.update(url.as_bytes());
                    ctrwatch_event::hex(&mac.finalize().into_bytes()[..4])
                }
                // HMAC takes a key of any length: this arm is never taken.
                Err(_) => TargetKey::Legacy.tag(url),
            },
            TargetKey::Legacy => ctrwatch_event::hex(&Sha256::digest(url.as_bytes())[..4]),
        }
    }
}

/// A fixed key for unit tests.
#[cfg(test)]
pub(crate) const TEST_KEY: TargetKey = TargetKey::Keyed([7; 32]);

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ctrwatch-target-key-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn a_key_is_made_once_kept_private_and_read_back_the_same() {
        let dir = temp_dir("made");
        let key = TargetKey::path_for(&dir.join("events.db"));
        let a = TargetKey::load_or_create(&key).expect("made");
        let meta = std::fs::metadata(&key).expect("key file");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let b = TargetKey::load_or_create(&key).expect("read back");
        let url = "https://am.example.com/?tenant=guess";
        assert_eq!(a.tag(url), b.tag(url));
        assert_ne!(a.tag(url), TargetKey::Legacy.tag(url));
        // A key another tool made readable is narrowed, not replaced (names stay).
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let c = TargetKey::load_or_create(&key).expect("narrowed");
        assert_eq!(a.tag(url), c.tag(url));
        let meta = std::fs::metadata(&key).expect("key file");
        assert_eq!(meta.mode() & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_symlink_or_a_short_file_is_refused_not_followed_or_replaced() {
        let dir = temp_dir("foreign");
        let key = TargetKey::path_for(&dir.join("events.db"));
        let outside = dir.join("outside");
        std::fs::write(&outside, [7u8; 32]).expect("outside");
        std::os::unix::fs::symlink(&outside, &key).expect("symlink");
        assert_eq!(key, dir.join("events.db.target-names.key"));
        let e = TargetKey::load_or_create(&key).expect_err("a symlink is refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::fs::remove_file(&key).expect("rm");
        std::fs::write(&key, [1u8; 5]).expect("short");
        let e = TargetKey::load_or_create(&key).expect_err("a short key is refused");
        assert!(e.to_string().contains("5 bytes"), "{e}");
        assert_eq!(std::fs::read(&key).expect("kept"), [1u8; 5]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The defect: names were a plain SHA-256 of the URL, so whoever reads the outbox could
    /// test guesses of a token in the URL against them. Keyed, the same guess does not match.
    #[test]
    fn a_reader_without_the_key_cannot_confirm_a_guessed_url() {
        let url = "https://am.example.com/?tenant=s3cret";
        let key = TargetKey::random().expect("random");
        let guess = {
            use sha2::{Digest as _, Sha256};
            ctrwatch_event::hex(&Sha256::digest(url.as_bytes())[..4])
        };
        assert_ne!(key.tag(url), guess);
        assert_eq!(TargetKey::Legacy.tag(url), guess);
    }
}
