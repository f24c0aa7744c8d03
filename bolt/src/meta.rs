//! The two meta pages: parsing, validation, and picking the current one.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::error::{BoltError, MetaProblem};
use crate::le;

/// bbolt's magic number.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The only data format version bbolt has written (since boltdb 1.x).
pub const VERSION: u32 = 2;
/// The freelist page id that means "no freelist stored" (bbolt `NoFreelistSync`, containerd 1.7+).
pub const NO_FREELIST: u64 = u64::MAX;

/// Size of a page header: `id u64, flags u16, count u16, overflow u32`.
pub(crate) const PAGE_HEADER: usize = 16;
/// Size of the meta struct, checksum included.
const META_SIZE: usize = 64;
/// The checksum covers the meta struct up to the checksum field.
const META_SUMMED: usize = 56;
/// Page header plus meta struct: what has to be read of a meta page.
const META_READ: usize = PAGE_HEADER + META_SIZE;

const MIN_PAGE_SIZE: u32 = 512;
const MAX_PAGE_SIZE: u32 = 16 << 20;

/// The contents of a valid meta page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Page size of the file, in bytes.
    pub page_size: u32,
    /// bbolt's meta flags (unused by bbolt so far; normally 0).
    pub flags: u32,
    /// Page id of the root bucket's root page.
    pub root: u64,
    /// The root bucket's sequence.
    pub sequence: u64,
    /// Page id of the stored freelist, or `None` for a `NoFreelistSync` file.
    pub freelist: Option<u64>,
    /// High-water mark: the number of pages in use (page ids are below it).
    pub high_water_mark: u64,
    /// Id of the transaction that wrote this meta page.
    pub txid: u64,
}

/// FNV-1a, 64 bit.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Parses and validates a meta page from its first [`META_READ`] bytes (header included).
fn parse(page: &[u8]) -> Result<Meta, MetaProblem> {
    let m = page
        .get(PAGE_HEADER..META_READ)
        .ok_or(MetaProblem::TooShort)?;
    let magic = le::u32_at(m, 0).ok_or(MetaProblem::TooShort)?;
    if magic != MAGIC {
        return Err(MetaProblem::BadMagic(magic));
    }
    let version = le::u32_at(m, 4).ok_or(MetaProblem::TooShort)?;
    if version != VERSION {
        return Err(MetaProblem::BadVersion(version));
    }
    let summed = m.get(..META_SUMMED).ok_or(MetaProblem::TooShort)?;
    let checksum = le::u64_at(m, META_SUMMED).ok_or(MetaProblem::TooShort)?;
    if fnv1a64(summed) != checksum {
        return Err(MetaProblem::BadChecksum);
    }
    let page_size = le::u32_at(m, 8).ok_or(MetaProblem::TooShort)?;
    if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(MetaProblem::BadPageSize(page_size));
    }
    let field = |off| le::u64_at(m, off).ok_or(MetaProblem::TooShort);
    let freelist = field(32)?;
    Ok(Meta {
        page_size,
        flags: le::u32_at(m, 12).ok_or(MetaProblem::TooShort)?,
        root: field(16)?,
        sequence: field(24)?,
        freelist: (freelist != NO_FREELIST).then_some(freelist),
        high_water_mark: field(40)?,
        txid: field(48)?,
    })
}

/// Something meta pages can be read from: the in-memory copy or the file itself.
pub(crate) trait ReadAt {
    /// Reads as much of `buf.len()` bytes at `offset` as there are; returns how many.
    fn read_at_most(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl ReadAt for [u8] {
    fn read_at_most(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = self.get(start..).unwrap_or_default();
        let n = src.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), src.get(..n)) {
            dst.copy_from_slice(src);
        }
        Ok(n)
    }
}

impl ReadAt for File {
    fn read_at_most(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..) {
            if rest.is_empty() {
                break;
            }
            let at = offset.saturating_add(done as u64);
            match self.read_at(rest, at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

fn read_meta<R: ReadAt + ?Sized>(src: &R, offset: u64) -> io::Result<Result<Meta, MetaProblem>> {
    let mut buf = [0u8; META_READ];
    let n = src.read_at_most(offset, &mut buf)?;
    Ok(match buf.get(..n) {
        Some(read) => parse(read),
        None => Err(MetaProblem::TooShort),
    })
}

/// Both meta pages, each valid or with the reason it is not.
pub(crate) type MetaPair = (Result<Meta, MetaProblem>, Result<Meta, MetaProblem>);

/// Reads both meta pages. The second one sits at offset `page_size`; when page 0 is unusable the
/// page size is unknown and, as bbolt does, every power of two up to 16 MiB is tried.
pub(crate) fn read_metas<R: ReadAt + ?Sized>(src: &R) -> io::Result<MetaPair> {
    let meta0 = read_meta(src, 0)?;
    let meta1 = match meta0 {
        Ok(m0) => {
            let expected = m0.page_size;
            read_meta(src, u64::from(expected))?.and_then(|m1| {
                if m1.page_size == expected {
                    Ok(m1)
                } else {
                    Err(MetaProblem::PageSizeMismatch {
                        expected,
                        found: m1.page_size,
                    })
                }
            })
        }
        Err(_) => {
            let mut found = Err(MetaProblem::NotFound);
            let mut size = MIN_PAGE_SIZE;
            while size <= MAX_PAGE_SIZE {
                if let Ok(m1) = read_meta(src, u64::from(size))?
                    && m1.page_size == size
                {
                    found = Ok(m1);
                    break;
                }
                size <<= 1;
            }
            found
        }
    };
    Ok((meta0, meta1))
}

/// Picks the valid meta page with the higher txid (page 0 on a tie, as bbolt does).
pub(crate) fn pick(pair: MetaPair) -> Result<Meta, BoltError> {
    match pair {
        (Ok(a), Ok(b)) => Ok(if b.txid > a.txid { b } else { a }),
        (Ok(a), Err(_)) => Ok(a),
        (Err(_), Ok(b)) => Ok(b),
        (Err(meta0), Err(meta1)) => Err(BoltError::NoValidMeta { meta0, meta1 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn slice_read_at_is_bounded() {
        let data = [1u8, 2, 3];
        let mut buf = [0u8; 4];
        assert_eq!(data[..].read_at_most(1, &mut buf).ok(), Some(2));
        assert_eq!(buf, [2, 3, 0, 0]);
        assert_eq!(data[..].read_at_most(u64::MAX, &mut buf).ok(), Some(0));
    }
}
