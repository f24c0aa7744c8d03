//! Opening the store for reading, also where SQLite's usual way cannot work.
//!
//! A WAL-mode reader normally needs the `-shm` file (the WAL's index, shared by every
//! connection): it creates it if missing, and the first connection after the writer is gone
//! truncates and rebuilds it. That fails on a full disk (the index cannot grow: `disk full`),
//! on a read-only mount or for a user who cannot write in the store's directory (the `-wal`
//! or `-shm` cannot be created: `unable to open database file`). The history is still all
//! there: in the database file, and in the `-wal` for what was committed since the last
//! checkpoint. So when the usual open fails that way, the reader takes another one, chosen by
//! what is on disk:
//!
//! 1. no `-wal`, or one without a frame: everything committed is in the database file, read
//!    as `immutable=1` (no locks, no `-shm`, the WAL ignored: there is none to read);
//! 2. a `-wal` with frames and a `-shm`: SQLite's read-only WAL mode (`readonly_shm=1`): the
//!    `-shm` is only read, and when no writer keeps it current SQLite rebuilds the WAL's index
//!    in its own memory from the `-wal`;
//! 3. a `-wal` with frames and no usable `-shm`: the database and its `-wal` are copied into a
//!    private directory (the temp dir, else /dev/shm) and read there; SQLite recovers the WAL
//!    as after a crash: every committed frame, by its checksums.
//!
//! Each reads every committed event, the WAL's included (tests/tests/store_safety.rs).

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

use super::access::{readable, sibling};
use super::rows::{now_ns, register_functions};
use super::{Store, StoreError, schema};

/// A WAL file's header; a WAL no longer than this holds no frame.
const WAL_HEADER: u64 = 32;

/// A private copy of the store (case 3 above), removed when dropped.
#[derive(Debug)]
pub(crate) struct PrivateCopy(PathBuf);

impl Drop for PrivateCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// See [`Store::open_read_only`].
pub(crate) fn open(path: &Path) -> Result<Store, StoreError> {
    let path = path.to_path_buf();
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(StoreError::Corrupt {
                path,
                detail: "not a regular file".into(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::Missing { path });
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(StoreError::PermissionDenied { path });
        }
        Err(e) => return Err(StoreError::Io { path, source: e }),
    }
    match readable(&path) {
        Ok(true) => {}
        Ok(false) => return Err(StoreError::PermissionDenied { path }),
        Err(e) => return Err(StoreError::Io { path, source: e }),
    }
    let usual = schema::connect(&path, false).and_then(|conn| reader(conn, &path, None));
    match usual {
        Err(e) if another_way_may_work(&e) => match another_way(&path) {
            Ok(store) => Ok(store),
            Err(other) => {
                log::debug!("reading {} another way: {other}", path.display());
                Err(e)
            }
        },
        r => r,
    }
}

/// A reader on `conn` once it is known to be a ctrwatch store this build reads.
fn reader(
    conn: rusqlite::Connection,
    path: &Path,
    copy: Option<PrivateCopy>,
) -> Result<Store, StoreError> {
    schema::check_readable(&conn, path)?;
    register_functions(&conn).map_err(|e| schema::map_err(path, e))?;
    Ok(Store {
        conn,
        path: path.to_path_buf(),
        writer: None,
        _lock: None,
        _copy: copy,
    })
}

/// Failures of the usual open that come from where the store is (full, read-only, not
/// writable by this user), not from what it holds.
fn another_way_may_work(e: &StoreError) -> bool {
    match e {
        StoreError::Full { .. } | StoreError::Io { .. } => true,
        StoreError::Sqlite { source, .. } => matches!(
            source.sqlite_error_code(),
            Some(
                ErrorCode::CannotOpen
                    | ErrorCode::ReadOnly
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::PermissionDenied
            )
        ),
        _ => false,
    }
}

/// `file:` URI of `path` with `query` (every byte but unreserved ones percent-encoded).
fn uri(path: &Path, query: &str) -> String {
    let mut u = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            u.push(b as char);
        } else {
            u.push_str(&format!("%{b:02X}"));
        }
    }
    u.push('?');
    u.push_str(query);
    u
}

fn another_way(path: &Path) -> Result<Store, StoreError> {
    let wal = sibling(path, "-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    if wal_len <= WAL_HEADER {
        log::info!(
            "reading {} as immutable (nothing in its WAL)",
            path.display()
        );
        let conn = schema::connect_uri(&uri(path, "immutable=1"), path)?;
        return reader(conn, path, None);
    }
    let shm = sibling(path, "-shm");
    if readable(&shm).unwrap_or(false) {
        let conn = schema::connect_uri(&uri(path, "readonly_shm=1"), path);
        match conn.and_then(|c| reader(c, path, None)) {
            Ok(store) => {
                log::info!("reading {} with a read-only -shm", path.display());
                return Ok(store);
            }
            Err(e) => log::debug!("read-only -shm for {}: {e}", path.display()),
        }
    }
    read_a_copy(path, &wal)
}

/// A private directory for a copy: the temp dir, else /dev/shm (memory: the disk may be the
/// full one).
fn private_dir(path: &Path, db_bytes: u64) -> Result<PathBuf, StoreError> {
    let name = format!("ctrwatch-read-{}-{}", std::process::id(), now_ns());
    let mut last = None;
    for base in [std::env::temp_dir(), PathBuf::from("/dev/shm")] {
        if !fits(&base, db_bytes) {
            continue;
        }
        let dir = base.join(&name);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => StoreError::Io {
            path: path.to_path_buf(),
            source: e,
        },
        None => StoreError::Full {
            path: path.to_path_buf(),
        },
    })
}

/// Whether the filesystem of `dir` has `bytes` free (with room to spare).
fn fits(dir: &Path, bytes: u64) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: valid C string and a zeroed statvfs the call fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    free > bytes.saturating_add(bytes / 4).saturating_add(1 << 20)
}

/// The first bytes of the WAL: its header (salts, checkpoint sequence) changes when the
/// writer restarts the WAL from the beginning.
fn wal_header(wal: &Path) -> Option<[u8; WAL_HEADER as usize]> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(wal).ok()?;
    let mut h = [0u8; WAL_HEADER as usize];
    f.read_exact(&mut h).ok()?;
    Some(h)
}

/// Case 3: the database and its WAL copied (database first: frames are only appended to a
/// WAL, and a checkpoint writes into the database only what the WAL holds, so the copy of
/// the WAL covers whatever a checkpoint had copied by then; unless the WAL was restarted
/// meanwhile, which its header tells, then the copy is taken again).
fn read_a_copy(path: &Path, wal: &Path) -> Result<Store, StoreError> {
    let io = |e: std::io::Error| StoreError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let db_bytes = std::fs::metadata(path).map_err(io)?.len();
    let wal_bytes = std::fs::metadata(wal).map_err(io)?.len();
    let dir = PrivateCopy(private_dir(path, db_bytes + wal_bytes)?);
    let copy = dir.0.join("events.db");
    for _ in 0..3 {
        let before = wal_header(wal);
        std::fs::copy(path, &copy).map_err(io)?;
        std::fs::copy(wal, sibling(&copy, "-wal")).map_err(io)?;
        if wal_header(wal) != before {
            continue;
        }
        log::info!(
            "reading a private copy of {} and its WAL in {}",
            path.display(),
            dir.0.display()
        );
        let conn = schema::connect(&copy, false)?;
        return reader(conn, path, Some(dir));
    }
    Err(StoreError::Locked {
        path: path.to_path_buf(),
        detail: "its WAL kept being restarted while it was copied".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_escape_every_byte_sqlite_could_read_as_syntax() {
        assert_eq!(
            uri(Path::new("/var/lib/ctrwatch/events.db"), "immutable=1"),
            "file:/var/lib/ctrwatch/events.db?immutable=1"
        );
        assert_eq!(
            uri(Path::new("/a b/x?y#z%.db"), "readonly_shm=1"),
            "file:/a%20b/x%3Fy%23z%25.db?readonly_shm=1"
        );
        assert_eq!(
            uri(Path::new(std::ffi::OsStr::from_bytes(b"/t/\xff.db")), "q"),
            "file:/t/%FF.db?q"
        );
    }
}
