//! A read-only reader of bbolt (BoltDB) database files, as written by containerd: its metadata
//! store `io.containerd.metadata.v1.bolt/meta.db` and the overlay snapshotter's `metadata.db`.
//!
//! # Why hand-written
//!
//! The Rust crates tried (bbolt-rs 1.3.10, bolt-lite, nut) either take a file lock (an exclusive
//! or shared `flock`, which blocks containerd or blocks on it: containerd holds an exclusive lock
//! while it runs), reject containerd 1.7+'s `NoFreelistSync` files (freelist page id
//! `u64::MAX`), or read branch pages wrongly. The format is small, so this crate reads it itself.
//!
//! # What it does, and does not do
//!
//! - It never takes a lock, never writes, and never maps the file: it `read()`s a private copy
//!   into memory ([`Db::open`]). A file shrunk under an mmap would fault the reader.
//! - It never follows a symbolic link to the file nor blocks opening it (`O_NOFOLLOW |
//!   O_NONBLOCK`), and reads only regular files; [`Db::read_file`] reads a file the caller
//!   opened (ctrwatch opens it below the containerd root without following any symlink).
//! - The copy is a consistent snapshot even while containerd commits (see [`Db::open`]).
//! - Every offset, length and page id is checked; damaged or hostile input gives a [`BoltError`],
//!   never a panic, a hang or unbounded recursion. The whole tree is checked once when the `Db`
//!   is made (page types and ranges, every page reached at most once, key order, nesting depth at
//!   most [`MAX_DEPTH`]), so walking all of it afterwards costs time linear in the file size.
//!
//! # Format (native little-endian)
//!
//! - Pages of `page_size` bytes; page header `id u64, flags u16 (0x01 branch, 0x02 leaf,
//!   0x04 meta, 0x10 freelist), count u16, overflow u32`. A page spans `1 + overflow` pages.
//! - Pages 0 and 1 are meta pages; the meta struct follows the header: `magic u32 (0xED0CDAED),
//!   version u32 (2), page_size u32, flags u32, root {pgid u64, sequence u64}, freelist u64,
//!   pgid u64 (high-water mark), txid u64, checksum u64` (FNV-1a 64 of the 56 bytes before it).
//!   The valid one with the higher txid is current.
//! - Branch elements (16 bytes): `pos u32, ksize u32, pgid u64`; leaf elements (16 bytes):
//!   `flags u32 (1 = bucket), pos u32, ksize u32, vsize u32`. `pos` is relative to the element
//!   itself; a leaf's value follows its key.
//! - A bucket value starts with `{root pgid u64, sequence u64}`; root 0 means an inline bucket,
//!   whose (leaf) page follows in the value.
//!
//! ```no_run
//! # fn main() -> Result<(), bolt::BoltError> {
//! let db = bolt::Db::open("/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db")?;
//! if let Some(images) = db.bucket_path(&[b"v1", b"default", b"images"])? {
//!     for entry in images.iter() {
//!         if let bolt::Entry::Bucket(name, _) = entry? {
//!             println!("{}", String::from_utf8_lossy(name));
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]
#![warn(missing_docs)]

mod bucket;
mod error;
mod meta;
mod page;
#[cfg(feature = "test-writer")]
pub mod testwriter;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

pub use bucket::{Bucket, Entry, Iter};
pub use error::{BoltError, MetaProblem, PageLoc};
pub use meta::{MAGIC, Meta, NO_FREELIST, VERSION};

use bucket::{Step, Visited, Walker};
use meta::PAGE_HEADER;
use page::{BUCKET_LEAF_FLAG, FREELIST_FLAG, Header};

/// The deepest a tree (pages from a bucket's root to a leaf) or the nesting of buckets may go.
/// bbolt trees of any real size are a handful of levels deep, containerd nests buckets about 8
/// deep; anything beyond this is a cycle or garbage.
pub const MAX_DEPTH: usize = 64;

/// How many times [`Db::open`] copies the file before giving up on a busy writer.
pub const OPEN_ATTEMPTS: u32 = 10;

/// Little-endian field access that cannot panic.
mod le {
    pub(crate) fn u16_at(b: &[u8], off: usize) -> Option<u16> {
        Some(u16::from_le_bytes(
            b.get(off..off.checked_add(2)?)?.try_into().ok()?,
        ))
    }
    pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            b.get(off..off.checked_add(4)?)?.try_into().ok()?,
        ))
    }
    pub(crate) fn u64_at(b: &[u8], off: usize) -> Option<u64> {
        Some(u64::from_le_bytes(
            b.get(off..off.checked_add(8)?)?.try_into().ok()?,
        ))
    }
}

/// An in-memory snapshot of a bbolt database at one transaction.
pub struct Db {
    buf: Vec<u8>,
    meta: Meta,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("bytes", &self.buf.len())
            .field("meta", &self.meta)
            .finish()
    }
}

impl Db {
    /// Reads the database at `path` into memory, without locking it and without disturbing a
    /// running writer, and checks it.
    ///
    /// The copy is consistent: it notes the current transaction T (the valid meta page with the
    /// higher txid), reads the whole file, then reads the meta pages again. bbolt writes a
    /// transaction's pages before its meta page, and only reuses the pages freed by transaction
    /// T+1 (those of T's tree) from transaction T+2 on, which starts after T+1's meta page is
    /// written. So if the current transaction is still T after the copy, no page of T's tree
    /// changed during it. (Accepting T+1 there, as is sometimes suggested, is not safe: T+2 may
    /// already be overwriting T's pages while its own meta page is not yet written.)
    /// Otherwise it tries again, up to [`OPEN_ATTEMPTS`] times with a short growing pause, then
    /// returns [`BoltError::Unstable`].
    ///
    /// The file is opened with `O_NOFOLLOW | O_NONBLOCK`: a symbolic link (it could point at
    /// any file of the node) and anything that is not a regular file (a FIFO would block the
    /// read) give [`BoltError::NotRegularFile`]. Directories above the file are followed; to
    /// read a file below a directory without following anything, open it yourself and use
    /// [`Db::read_file`].
    pub fn open(path: impl AsRef<Path>) -> Result<Db, BoltError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = path.as_ref();
        let not_regular = |kind| BoltError::NotRegularFile {
            path: path.to_path_buf(),
            kind,
        };
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(not_regular("symbolic link"));
            }
            // A socket cannot be opened at all.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Err(not_regular("socket")),
            Err(source) => {
                return Err(BoltError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let meta = file.metadata().map_err(|source| BoltError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.is_file() {
            return Err(not_regular(kind_name(&meta.file_type())));
        }
        Db::read_file(&file, path)
    }

    /// [`Db::open`] of a file the caller opened (e.g. with `openat` below a directory it
    /// trusts); `path` only names it in errors. The caller checks that it is a regular file.
    pub fn read_file(file: &File, path: impl AsRef<Path>) -> Result<Db, BoltError> {
        let path = path.as_ref();
        let io_err = |source| BoltError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut pause = Duration::from_millis(1);
        for attempt in 1..=OPEN_ATTEMPTS {
            let before = meta::pick(meta::read_metas(file).map_err(io_err)?)?;
            let buf = read_all(file).map_err(io_err)?;
            let after = meta::pick(meta::read_metas(file).map_err(io_err)?)?;
            if after.txid == before.txid {
                return Db::with_meta(buf, before);
            }
            if attempt < OPEN_ATTEMPTS {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
        Err(BoltError::Unstable {
            attempts: OPEN_ATTEMPTS,
        })
    }

    /// Uses `bytes` (a whole bbolt file) as the database, at the transaction of its valid meta
    /// page with the higher txid, and checks it.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Db, BoltError> {
        let meta =
            meta::pick(
                meta::read_metas(bytes.as_slice()).map_err(|source| BoltError::Io {
                    path: "<memory>".into(),
                    source,
                })?,
            )?;
        Db::with_meta(bytes, meta)
    }

    fn with_meta(buf: Vec<u8>, meta: Meta) -> Result<Db, BoltError> {
        let db = Db { buf, meta };
        db.check()?;
        Ok(db)
    }

    /// The meta page in use.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The id of the transaction this snapshot shows.
    pub fn txid(&self) -> u64 {
        self.meta.txid
    }

    /// The page size.
    pub fn page_size(&self) -> u32 {
        self.meta.page_size
    }

    /// The root bucket (containerd keeps only buckets in it, e.g. `v1`).
    pub fn root(&self) -> Bucket<'_> {
        Bucket::root_bucket(self)
    }

    /// Follows a path of bucket names from the root, e.g.
    /// `db.bucket_path(&[b"v1", b"default", b"images"])`; `None` if any is missing.
    pub fn bucket_path(&self, path: &[&[u8]]) -> Result<Option<Bucket<'_>>, BoltError> {
        self.root().bucket_path(path)
    }

    /// One past the last page id usable here: the high-water mark, or fewer if the file is
    /// shorter.
    fn page_limit(&self) -> u64 {
        let in_file = (self.buf.len() / self.meta.page_size as usize) as u64;
        self.meta.high_water_mark.min(in_file)
    }

    /// The bytes (overflow pages included) and header of on-disk page `pgid`, referenced from
    /// `from`. Checks the range and that the page carries its own id.
    pub(crate) fn raw_page(&self, pgid: u64, from: PageLoc) -> Result<(&[u8], Header), BoltError> {
        let limit = self.page_limit();
        let out_of_range = BoltError::PageOutOfRange { from, pgid, limit };
        if pgid < 2 || pgid >= limit {
            return Err(out_of_range);
        }
        let ps = self.meta.page_size as usize;
        // pgid < limit <= buf.len() / ps, so these fit.
        let start =
            usize::try_from(pgid).map_err(|_| BoltError::PageOutOfRange { from, pgid, limit })?
                * ps;
        let h = self
            .buf
            .get(start..)
            .and_then(page::header)
            .ok_or(BoltError::PageOutOfRange { from, pgid, limit })?;
        if h.id != pgid {
            return Err(BoltError::PageIdMismatch { pgid, found: h.id });
        }
        let span = 1 + u64::from(h.overflow);
        if span > limit - pgid {
            return Err(out_of_range);
        }
        // span <= limit - pgid, so the end is within the buffer.
        let len = span as usize * ps;
        let data = self
            .buf
            .get(start..start + len)
            .ok_or(BoltError::PageOutOfRange { from, pgid, limit })?;
        Ok((data, h))
    }

    /// Checks the whole database once: the freelist page (if any) and every bucket's tree.
    fn check(&self) -> Result<(), BoltError> {
        let mut visited = Visited::new(self.page_limit());
        for meta_page in 0..2.min(self.page_limit()) {
            visited.mark(meta_page, 1, PageLoc::Meta)?;
        }
        if let Some(fl) = self.meta.freelist {
            let (data, h) = self.raw_page(fl, PageLoc::Meta)?;
            let page = PageLoc::Page(fl);
            if h.flags != FREELIST_FLAG {
                return Err(BoltError::WrongPageType {
                    page,
                    expected: "freelist",
                    flags: h.flags,
                });
            }
            // A count of 0xFFFF means the real count is stored as the first id.
            let ids = if h.count == u16::MAX {
                le::u64_at(data, PAGE_HEADER)
                    .and_then(|n| n.checked_add(1))
                    .ok_or(BoltError::CountOverrun {
                        page,
                        count: u64::from(h.count),
                    })?
            } else {
                u64::from(h.count)
            };
            let room = ((data.len() - PAGE_HEADER) / 8) as u64;
            if ids > room {
                return Err(BoltError::CountOverrun { page, count: ids });
            }
            visited.mark(fl, 1 + u64::from(h.overflow), PageLoc::Meta)?;
        }

        let mut buckets = vec![self.root()];
        while let Some(bucket) = buckets.pop() {
            let mut walker = Walker::new(bucket);
            // The previous key of the in-order walk, and whether it was a branch key: the first
            // key below a branch key may equal it, every other key must be greater.
            let mut prev: Option<(&[u8], bool)> = None;
            while let Some(step) = walker.step(Some(&mut visited))? {
                let (page, index, key, is_branch) = match step {
                    Step::Branch { page, index, key } => (page, index, key, true),
                    Step::Leaf {
                        page,
                        index,
                        flags,
                        key,
                        value,
                    } => {
                        if flags & BUCKET_LEAF_FLAG != 0 {
                            buckets.push(bucket.child(value, page, index)?);
                        }
                        (page, index, key, false)
                    }
                };
                if let Some((p, p_branch)) = prev {
                    let ok = if p_branch { key >= p } else { key > p };
                    if !ok {
                        return Err(BoltError::KeyOrder { page, index });
                    }
                }
                prev = Some((key, is_branch));
            }
        }
        Ok(())
    }
}

/// What kind of file `ft` is, for messages.
fn kind_name(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_symlink() {
        "symbolic link"
    } else {
        "unknown type"
    }
}

/// Reads the whole file from the start.
fn read_all(mut file: &File) -> std::io::Result<Vec<u8>> {
    let hint = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut buf)?;
    Ok(buf)
}
