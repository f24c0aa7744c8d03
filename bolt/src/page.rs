//! Branch and leaf pages: bounds-checked access to their elements.

use crate::Db;
use crate::error::{BoltError, PageLoc};
use crate::le;
use crate::meta::PAGE_HEADER;

pub(crate) const BRANCH_FLAG: u16 = 0x01;
pub(crate) const LEAF_FLAG: u16 = 0x02;
pub(crate) const FREELIST_FLAG: u16 = 0x10;
/// Leaf element flag: the value is a bucket.
pub(crate) const BUCKET_LEAF_FLAG: u32 = 0x01;
/// Both element kinds are 16 bytes.
const ELEMENT_SIZE: usize = 16;
/// A bucket value starts with `{root pgid u64, sequence u64}`.
pub(crate) const BUCKET_HEADER: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Branch,
    Leaf,
}

/// A parsed page header over the bytes of the page (all of its overflow pages included).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Page<'a> {
    /// The page, header first; element positions are relative to this slice.
    data: &'a [u8],
    pub(crate) loc: PageLoc,
    pub(crate) kind: Kind,
    pub(crate) count: usize,
    /// How many on-disk pages it spans (1 for inline pages).
    pub(crate) span: u64,
}

/// A raw page header.
pub(crate) struct Header {
    pub(crate) id: u64,
    pub(crate) flags: u16,
    pub(crate) count: u16,
    pub(crate) overflow: u32,
}

pub(crate) fn header(data: &[u8]) -> Option<Header> {
    Some(Header {
        id: le::u64_at(data, 0)?,
        flags: le::u16_at(data, 8)?,
        count: le::u16_at(data, 10)?,
        overflow: le::u32_at(data, 12)?,
    })
}

/// A leaf element: flags, key, value.
pub(crate) struct LeafElem<'a> {
    pub(crate) flags: u32,
    pub(crate) key: &'a [u8],
    pub(crate) value: &'a [u8],
}

impl<'a> Page<'a> {
    /// Parses the header of an on-disk page that has to be a branch or a leaf.
    pub(crate) fn read(db: &'a Db, pgid: u64, from: PageLoc) -> Result<Page<'a>, BoltError> {
        let (data, h) = db.raw_page(pgid, from)?;
        let loc = PageLoc::Page(pgid);
        let kind = match h.flags {
            BRANCH_FLAG => Kind::Branch,
            LEAF_FLAG => Kind::Leaf,
            flags => {
                return Err(BoltError::WrongPageType {
                    page: loc,
                    expected: "branch or leaf",
                    flags,
                });
            }
        };
        Page::new(data, loc, kind, h.count, 1 + u64::from(h.overflow))
    }

    /// Parses the page of an inline bucket: `value` is the whole bucket value, header included.
    pub(crate) fn inline(
        value: &'a [u8],
        in_page: u64,
        index: usize,
    ) -> Result<Page<'a>, BoltError> {
        let loc = PageLoc::Inline { in_page };
        let bad = || BoltError::BadBucketValue {
            page: PageLoc::Page(in_page),
            index,
            len: value.len(),
        };
        let data = value.get(BUCKET_HEADER..).ok_or_else(bad)?;
        let h = header(data).ok_or_else(bad)?;
        // bbolt only ever inlines a bucket that is a single leaf.
        if h.flags != LEAF_FLAG {
            return Err(BoltError::WrongPageType {
                page: loc,
                expected: "leaf",
                flags: h.flags,
            });
        }
        Page::new(data, loc, Kind::Leaf, h.count, 1)
    }

    fn new(
        data: &'a [u8],
        loc: PageLoc,
        kind: Kind,
        count: u16,
        span: u64,
    ) -> Result<Page<'a>, BoltError> {
        let count = usize::from(count);
        if PAGE_HEADER + count * ELEMENT_SIZE > data.len() {
            return Err(BoltError::CountOverrun {
                page: loc,
                count: count as u64,
            });
        }
        if kind == Kind::Branch && count == 0 {
            return Err(BoltError::EmptyBranch { page: loc });
        }
        Ok(Page {
            data,
            loc,
            kind,
            count,
            span,
        })
    }

    /// The 16-byte element `index` and its offset in the page.
    fn element(&self, index: usize) -> Result<(usize, &'a [u8]), BoltError> {
        let oob = || BoltError::ElementOutOfBounds {
            page: self.loc,
            index,
        };
        if index >= self.count {
            return Err(oob());
        }
        let off = PAGE_HEADER + index * ELEMENT_SIZE;
        let elem = self.data.get(off..off + ELEMENT_SIZE).ok_or_else(oob)?;
        Ok((off, elem))
    }

    /// `len` bytes at `pos` past offset `base` of the page.
    fn bytes(&self, base: usize, pos: u32, len: u32, index: usize) -> Result<&'a [u8], BoltError> {
        let start = base.checked_add(pos as usize);
        let end = start.and_then(|s| s.checked_add(len as usize));
        match (start, end) {
            (Some(start), Some(end)) => self.data.get(start..end),
            _ => None,
        }
        .ok_or(BoltError::ElementOutOfBounds {
            page: self.loc,
            index,
        })
    }

    /// Branch element `index`: the smallest key of the child subtree, and the child's page id.
    pub(crate) fn branch_elem(&self, index: usize) -> Result<(&'a [u8], u64), BoltError> {
        let (off, e) = self.element(index)?;
        let oob = BoltError::ElementOutOfBounds {
            page: self.loc,
            index,
        };
        let (Some(pos), Some(ksize), Some(pgid)) =
            (le::u32_at(e, 0), le::u32_at(e, 4), le::u64_at(e, 8))
        else {
            return Err(oob);
        };
        Ok((self.bytes(off, pos, ksize, index)?, pgid))
    }

    /// Leaf element `index`.
    pub(crate) fn leaf_elem(&self, index: usize) -> Result<LeafElem<'a>, BoltError> {
        let (off, e) = self.element(index)?;
        let oob = BoltError::ElementOutOfBounds {
            page: self.loc,
            index,
        };
        let (Some(flags), Some(pos), Some(ksize), Some(vsize)) = (
            le::u32_at(e, 0),
            le::u32_at(e, 4),
            le::u32_at(e, 8),
            le::u32_at(e, 12),
        ) else {
            return Err(oob);
        };
        // The value follows the key directly.
        let both = self.bytes(off, pos, ksize.checked_add(vsize).ok_or(oob)?, index)?;
        let (key, value) =
            both.split_at_checked(ksize as usize)
                .ok_or(BoltError::ElementOutOfBounds {
                    page: self.loc,
                    index,
                })?;
        Ok(LeafElem { flags, key, value })
    }
}
