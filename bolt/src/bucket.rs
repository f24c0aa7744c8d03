//! Buckets: lookups and in-order iteration.

use std::fmt;
use std::iter::FusedIterator;

use crate::error::{BoltError, PageLoc};
use crate::le;
use crate::page::{BUCKET_HEADER, BUCKET_LEAF_FLAG, Kind, Page};
use crate::{Db, MAX_DEPTH};

/// A bucket of a [`Db`]: a B+tree of keys that map to values or to nested buckets.
///
/// Cheap to copy; everything it returns borrows from the `Db`.
#[derive(Clone, Copy)]
pub struct Bucket<'a> {
    db: &'a Db,
    root: Root<'a>,
    sequence: u64,
    /// Nesting level: 0 for the root bucket.
    depth: usize,
}

#[derive(Clone, Copy)]
enum Root<'a> {
    /// The root page of the bucket's tree.
    Page { pgid: u64, from: PageLoc },
    /// An inline bucket: its whole value (header and page), found at element `index` of `in_page`.
    Inline {
        value: &'a [u8],
        in_page: u64,
        index: usize,
    },
}

impl fmt::Debug for Bucket<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Bucket");
        match self.root {
            Root::Page { pgid, .. } => d.field("root", &pgid),
            Root::Inline { value, .. } => d.field("inline_bytes", &value.len()),
        };
        d.field("sequence", &self.sequence)
            .field("depth", &self.depth)
            .finish()
    }
}

/// One entry of a bucket.
#[derive(Clone, Copy, Debug)]
pub enum Entry<'a> {
    /// A key and its value.
    Value(&'a [u8], &'a [u8]),
    /// A key naming a nested bucket.
    Bucket(&'a [u8], Bucket<'a>),
}

impl<'a> Entry<'a> {
    /// The entry's key.
    pub fn key(&self) -> &'a [u8] {
        match self {
            Entry::Value(k, _) | Entry::Bucket(k, _) => k,
        }
    }
}

/// What a lookup found: a leaf element and where.
struct Found<'a> {
    flags: u32,
    value: &'a [u8],
    page: PageLoc,
    index: usize,
}

impl<'a> Bucket<'a> {
    pub(crate) fn root_bucket(db: &'a Db) -> Bucket<'a> {
        let meta = db.meta();
        Bucket {
            db,
            root: Root::Page {
                pgid: meta.root,
                from: PageLoc::Meta,
            },
            sequence: meta.sequence,
            depth: 0,
        }
    }

    /// Opens the nested bucket whose value is element `index` of `page`.
    pub(crate) fn child(
        &self,
        value: &'a [u8],
        page: PageLoc,
        index: usize,
    ) -> Result<Bucket<'a>, BoltError> {
        let bad = || BoltError::BadBucketValue {
            page,
            index,
            len: value.len(),
        };
        let root = le::u64_at(value, 0).ok_or_else(bad)?;
        let sequence = le::u64_at(value, 8).ok_or_else(bad)?;
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(BoltError::TooDeep {
                page,
                limit: MAX_DEPTH,
            });
        }
        let root = if root == 0 {
            if value.len() <= BUCKET_HEADER {
                return Err(bad());
            }
            Root::Inline {
                value,
                in_page: page.disk_page(),
                index,
            }
        } else {
            Root::Page {
                pgid: root,
                from: page,
            }
        };
        Ok(Bucket {
            db: self.db,
            root,
            sequence,
            depth,
        })
    }

    /// The bucket's sequence number (bbolt's `NextSequence`/`SetSequence` counter).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The page id of the bucket's root page, or `None` for an inline bucket.
    pub fn root_pgid(&self) -> Option<u64> {
        match self.root {
            Root::Page { pgid, .. } => Some(pgid),
            Root::Inline { .. } => None,
        }
    }

    /// True for an inline bucket (one stored inside its parent's leaf).
    pub fn is_inline(&self) -> bool {
        matches!(self.root, Root::Inline { .. })
    }

    pub(crate) fn root_page(&self) -> Result<Page<'a>, BoltError> {
        match self.root {
            Root::Page { pgid, from } => Page::read(self.db, pgid, from),
            Root::Inline {
                value,
                in_page,
                index,
            } => Page::inline(value, in_page, index),
        }
    }

    /// Finds the leaf element for `key`.
    fn lookup(&self, key: &[u8]) -> Result<Option<Found<'a>>, BoltError> {
        let mut page = self.root_page()?;
        let mut depth = 1;
        loop {
            match page.kind {
                Kind::Branch => {
                    // The child to follow is the last one whose key is <= `key` (the first one
                    // when `key` is smaller than all of them).
                    let (mut lo, mut hi) = (0, page.count);
                    while lo < hi {
                        let mid = lo + (hi - lo) / 2;
                        if page.branch_elem(mid)?.0 <= key {
                            lo = mid + 1;
                        } else {
                            hi = mid;
                        }
                    }
                    let (_, child) = page.branch_elem(lo.saturating_sub(1))?;
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(BoltError::TooDeep {
                            page: page.loc,
                            limit: MAX_DEPTH,
                        });
                    }
                    page = Page::read(self.db, child, page.loc)?;
                }
                Kind::Leaf => {
                    let (mut lo, mut hi) = (0, page.count);
                    while lo < hi {
                        let mid = lo + (hi - lo) / 2;
                        let e = page.leaf_elem(mid)?;
                        match e.key.cmp(key) {
                            std::cmp::Ordering::Less => lo = mid + 1,
                            std::cmp::Ordering::Greater => hi = mid,
                            std::cmp::Ordering::Equal => {
                                return Ok(Some(Found {
                                    flags: e.flags,
                                    value: e.value,
                                    page: page.loc,
                                    index: mid,
                                }));
                            }
                        }
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// The value stored under `key`; `None` when there is none or when `key` names a bucket (as
    /// bbolt's `Get` does).
    pub fn get(&self, key: &[u8]) -> Result<Option<&'a [u8]>, BoltError> {
        Ok(self
            .lookup(key)?
            .filter(|f| f.flags & BUCKET_LEAF_FLAG == 0)
            .map(|f| f.value))
    }

    /// The nested bucket `name`; `None` when there is none or when `name` holds a plain value.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket<'a>>, BoltError> {
        match self.lookup(name)? {
            Some(f) if f.flags & BUCKET_LEAF_FLAG != 0 => {
                self.child(f.value, f.page, f.index).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Follows a path of nested bucket names from this bucket; `None` if any is missing.
    pub fn bucket_path(&self, path: &[&[u8]]) -> Result<Option<Bucket<'a>>, BoltError> {
        let mut b = *self;
        for name in path {
            match b.bucket(name)? {
                Some(next) => b = next,
                None => return Ok(None),
            }
        }
        Ok(Some(b))
    }

    /// Iterates over the bucket's entries in key order.
    ///
    /// An error ends the iteration (after being yielded once).
    pub fn iter(&self) -> Iter<'a> {
        Iter {
            walker: Walker::new(*self),
            done: false,
        }
    }
}

impl<'a> IntoIterator for Bucket<'a> {
    type Item = Result<Entry<'a>, BoltError>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for &Bucket<'a> {
    type Item = Result<Entry<'a>, BoltError>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Iterator over a bucket's entries, in key order. See [`Bucket::iter`].
pub struct Iter<'a> {
    walker: Walker<'a>,
    done: bool,
}

impl<'a> Iterator for Iter<'a> {
    type Item = Result<Entry<'a>, BoltError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let res = loop {
            match self.walker.step(None) {
                Ok(Some(Step::Leaf {
                    page,
                    index,
                    flags,
                    key,
                    value,
                })) => {
                    if flags & BUCKET_LEAF_FLAG != 0 {
                        break self
                            .walker
                            .bucket
                            .child(value, page, index)
                            .map(|b| Some(Entry::Bucket(key, b)));
                    }
                    break Ok(Some(Entry::Value(key, value)));
                }
                Ok(Some(Step::Branch { .. })) => {}
                Ok(None) => break Ok(None),
                Err(e) => break Err(e),
            }
        };
        match res {
            Ok(Some(entry)) => Some(Ok(entry)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl FusedIterator for Iter<'_> {}

/// One step of an in-order walk over a bucket's tree.
pub(crate) enum Step<'a> {
    /// About to descend into the child of branch element `index`, whose key is `key`.
    Branch {
        page: PageLoc,
        index: usize,
        key: &'a [u8],
    },
    /// Leaf element `index`.
    Leaf {
        page: PageLoc,
        index: usize,
        flags: u32,
        key: &'a [u8],
        value: &'a [u8],
    },
}

/// Pages already reached, to reject a page referenced twice.
pub(crate) struct Visited {
    bits: Vec<u64>,
}

impl Visited {
    pub(crate) fn new(pages: u64) -> Visited {
        let words = usize::try_from(pages.div_ceil(64)).unwrap_or(0);
        Visited {
            bits: vec![0; words],
        }
    }

    /// Marks `span` pages from `pgid` as reached; `from` is where the reference was found.
    pub(crate) fn mark(&mut self, pgid: u64, span: u64, from: PageLoc) -> Result<(), BoltError> {
        for id in pgid..pgid.saturating_add(span) {
            let word = usize::try_from(id / 64)
                .ok()
                .and_then(|w| self.bits.get_mut(w));
            let bit = 1u64 << (id % 64);
            match word {
                Some(w) if *w & bit == 0 => *w |= bit,
                // Out of range cannot happen for a page that was read; treat it as reuse anyway.
                _ => return Err(BoltError::PageReused { from, pgid: id }),
            }
        }
        Ok(())
    }
}

/// In-order walk over a bucket's tree with an explicit stack (depth-limited).
pub(crate) struct Walker<'a> {
    pub(crate) bucket: Bucket<'a>,
    stack: Vec<Frame<'a>>,
    started: bool,
}

struct Frame<'a> {
    page: Page<'a>,
    next: usize,
}

impl<'a> Walker<'a> {
    pub(crate) fn new(bucket: Bucket<'a>) -> Walker<'a> {
        Walker {
            bucket,
            stack: Vec::new(),
            started: false,
        }
    }

    /// The next step; `visited`, when given, marks every page reached and rejects a second visit.
    pub(crate) fn step(
        &mut self,
        mut visited: Option<&mut Visited>,
    ) -> Result<Option<Step<'a>>, BoltError> {
        if !self.started {
            self.started = true;
            let page = self.bucket.root_page()?;
            if let (Some(v), PageLoc::Page(pgid), Root::Page { from, .. }) =
                (visited.as_deref_mut(), page.loc, self.bucket.root)
            {
                v.mark(pgid, page.span, from)?;
            }
            self.stack.push(Frame { page, next: 0 });
        }
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Ok(None);
            };
            if top.next >= top.page.count {
                self.stack.pop();
                continue;
            }
            let index = top.next;
            top.next += 1;
            let page = top.page;
            match page.kind {
                Kind::Branch => {
                    let (key, child) = page.branch_elem(index)?;
                    if self.stack.len() >= MAX_DEPTH {
                        return Err(BoltError::TooDeep {
                            page: page.loc,
                            limit: MAX_DEPTH,
                        });
                    }
                    let child_page = Page::read(self.bucket.db, child, page.loc)?;
                    if let Some(v) = visited.as_deref_mut() {
                        v.mark(child, child_page.span, page.loc)?;
                    }
                    self.stack.push(Frame {
                        page: child_page,
                        next: 0,
                    });
                    return Ok(Some(Step::Branch {
                        page: page.loc,
                        index,
                        key,
                    }));
                }
                Kind::Leaf => {
                    let e = page.leaf_elem(index)?;
                    return Ok(Some(Step::Leaf {
                        page: page.loc,
                        index,
                        flags: e.flags,
                        key: e.key,
                        value: e.value,
                    }));
                }
            }
        }
    }
}
