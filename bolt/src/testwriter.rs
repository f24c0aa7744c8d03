//! A small test-only bbolt *writer*: lays out buckets the way bbolt does (leaf and branch pages,
//! overflow pages for large elements, inline buckets, meta pages with FNV-1a checksums), so the
//! reader can be checked against files whose content is known exactly.
//!
//! It writes a file in one go rather than by transactions; several trees can be written into one
//! file and pointed at by the two meta pages.
//!
//! Built only with the `test-writer` feature (the tests of this crate and of
//! `ctrwatch-containerd` enable it as a dev-dependency); never in a shipped build.

#![allow(
    missing_docs,
    reason = "test-only helper; the module doc says what it writes"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test-only helper: a failure is a test failure"
)]

use std::collections::BTreeMap;

use crate::{Bucket, Db, Entry};

pub const BRANCH: u16 = 0x01;
pub const LEAF: u16 = 0x02;
pub const META: u16 = 0x04;
pub const FREELIST: u16 = 0x10;

/// An item stored under a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Value(Vec<u8>),
    Bucket(Tree),
}

/// A bucket's content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<Vec<u8>, Item>,
    pub sequence: u64,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    pub fn value(mut self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) -> Tree {
        self.entries
            .insert(k.as_ref().to_vec(), Item::Value(v.as_ref().to_vec()));
        self
    }

    pub fn bucket(mut self, k: impl AsRef<[u8]>, t: Tree) -> Tree {
        self.entries.insert(k.as_ref().to_vec(), Item::Bucket(t));
        self
    }

    pub fn seq(mut self, s: u64) -> Tree {
        self.sequence = s;
        self
    }

    /// Total number of entries, nested buckets included.
    pub fn total(&self) -> usize {
        self.entries
            .values()
            .map(|i| match i {
                Item::Value(_) => 1,
                Item::Bucket(t) => 1 + t.total(),
            })
            .sum()
    }
}

/// Reads a bucket back into a [`Tree`] through the public iterator.
pub fn dump(b: Bucket<'_>) -> Tree {
    let mut t = Tree::new().seq(b.sequence());
    for e in b.iter() {
        match e.expect("iterating") {
            Entry::Value(k, v) => {
                t.entries.insert(k.to_vec(), Item::Value(v.to_vec()));
            }
            Entry::Bucket(k, sub) => {
                t.entries.insert(k.to_vec(), Item::Bucket(dump(sub)));
            }
        }
    }
    t
}

/// Checks every key of `t` through the lookup path (`get` / `bucket`), plus some absent keys.
pub fn check_lookups(b: Bucket<'_>, t: &Tree) {
    assert_eq!(b.sequence(), t.sequence);
    for (k, item) in &t.entries {
        match item {
            Item::Value(v) => {
                assert_eq!(b.get(k).expect("get"), Some(v.as_slice()), "key {k:?}");
                assert!(b.bucket(k).expect("bucket").is_none());
            }
            Item::Bucket(sub) => {
                assert_eq!(b.get(k).expect("get"), None, "bucket key {k:?} via get");
                let child = b.bucket(k).expect("bucket").expect("bucket present");
                check_lookups(child, sub);
            }
        }
        // Keys just around this one are absent (unless they exist).
        let mut before = k.clone();
        before.pop();
        let mut after = k.clone();
        after.push(0);
        for probe in [before, after] {
            if !t.entries.contains_key(&probe) {
                assert_eq!(b.get(&probe).expect("get"), None);
                assert!(b.bucket(&probe).expect("bucket").is_none());
            }
        }
    }
    assert_eq!(b.get(b"\xff\xff\xff\xff-not-there").expect("get"), None);
    assert_eq!(b.get(b"").expect("get"), None);
}

/// Which meta page content to write.
#[derive(Clone, Copy, Debug)]
pub struct MetaSpec {
    pub root: u64,
    pub root_sequence: u64,
    pub txid: u64,
    /// `None` writes `u64::MAX` (NoFreelistSync).
    pub freelist: Option<u64>,
    /// Store a wrong checksum.
    pub bad_checksum: bool,
}

impl MetaSpec {
    pub fn new(root: u64, txid: u64) -> MetaSpec {
        MetaSpec {
            root,
            root_sequence: 0,
            txid,
            freelist: None,
            bad_checksum: false,
        }
    }
}

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Builds a bbolt file image page by page.
pub struct Builder {
    pub page_size: usize,
    /// The file image; pages 0 and 1 are reserved for the meta pages.
    pub image: Vec<u8>,
    /// Inline small buckets without sub-buckets, as bbolt does.
    pub inline_buckets: bool,
    /// At most this many elements per page, at least 2 (bbolt packs by size only; lower it to
    /// force deep trees with few keys).
    pub max_per_page: usize,
}

/// A leaf inode: key, flags, value.
type LeafInode = (Vec<u8>, u32, Vec<u8>);

impl Builder {
    pub fn new(page_size: usize) -> Builder {
        Builder {
            page_size,
            image: vec![0; 2 * page_size],
            inline_buckets: true,
            max_per_page: usize::MAX,
        }
    }

    /// The next page id to be allocated (= pages in the image).
    pub fn next_pgid(&self) -> u64 {
        (self.image.len() / self.page_size) as u64
    }

    /// Allocates `n` zeroed pages.
    pub fn alloc(&mut self, n: usize) -> u64 {
        let id = self.next_pgid();
        self.image.resize(self.image.len() + n * self.page_size, 0);
        id
    }

    /// Allocates pages for `page` (header left for us to fill) and stores it with its id and
    /// overflow count. Returns the page id.
    pub fn store(&mut self, mut page: Vec<u8>) -> u64 {
        let n = page.len().div_ceil(self.page_size).max(1);
        let id = self.alloc(n);
        page[0..8].copy_from_slice(&id.to_le_bytes());
        page[12..16].copy_from_slice(&((n - 1) as u32).to_le_bytes());
        let off = id as usize * self.page_size;
        self.image[off..off + page.len()].copy_from_slice(&page);
        id
    }

    /// A page image with header `flags`/`count` and the elements laid out as bbolt does:
    /// all elements first, then each element's key (and value) in order.
    pub fn leaf_page(inodes: &[LeafInode]) -> Vec<u8> {
        let mut p = vec![0u8; 16 + 16 * inodes.len()];
        p[8..10].copy_from_slice(&LEAF.to_le_bytes());
        p[10..12].copy_from_slice(&(inodes.len() as u16).to_le_bytes());
        for (i, (k, flags, v)) in inodes.iter().enumerate() {
            let elem = 16 + 16 * i;
            let pos = (p.len() - elem) as u32;
            p[elem..elem + 4].copy_from_slice(&flags.to_le_bytes());
            p[elem + 4..elem + 8].copy_from_slice(&pos.to_le_bytes());
            p[elem + 8..elem + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
            p[elem + 12..elem + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            p.extend_from_slice(k);
            p.extend_from_slice(v);
        }
        p
    }

    pub fn branch_page(inodes: &[(Vec<u8>, u64)]) -> Vec<u8> {
        let mut p = vec![0u8; 16 + 16 * inodes.len()];
        p[8..10].copy_from_slice(&BRANCH.to_le_bytes());
        p[10..12].copy_from_slice(&(inodes.len() as u16).to_le_bytes());
        for (i, (k, pgid)) in inodes.iter().enumerate() {
            let elem = 16 + 16 * i;
            let pos = (p.len() - elem) as u32;
            p[elem..elem + 4].copy_from_slice(&pos.to_le_bytes());
            p[elem + 4..elem + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
            p[elem + 8..elem + 16].copy_from_slice(&pgid.to_le_bytes());
            p.extend_from_slice(k);
        }
        p
    }

    /// Splits elements of the given sizes into pages: greedily, a page is full when the next
    /// element would take it past the page size, but (as in bbolt) a page gets at least two
    /// elements when there are two, so every branch level is smaller than the one below.
    fn split(&self, sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut used = 16;
        for (i, &s) in sizes.iter().enumerate() {
            let n = i - start;
            if n >= 2 && (used + 16 + s > self.page_size || n >= self.max_per_page) {
                out.push(start..i);
                start = i;
                used = 16;
            }
            used += 16 + s;
        }
        if start < sizes.len() || sizes.is_empty() {
            out.push(start..sizes.len());
        }
        out
    }

    fn inodes(&mut self, t: &Tree) -> Vec<LeafInode> {
        t.entries
            .iter()
            .map(|(k, item)| match item {
                Item::Value(v) => (k.clone(), 0, v.clone()),
                Item::Bucket(sub) => (k.clone(), 1, self.bucket_value(sub)),
            })
            .collect()
    }

    /// The value stored for a nested bucket: its header, then the inline page if it is inlined.
    pub fn bucket_value(&mut self, t: &Tree) -> Vec<u8> {
        let inodes = self.inodes(t);
        let size: usize = 16
            + inodes
                .iter()
                .map(|(k, _, v)| 16 + k.len() + v.len())
                .sum::<usize>();
        let inlineable = inodes.iter().all(|(_, f, _)| *f == 0) && size <= self.page_size / 4;
        let mut value = Vec::new();
        if self.inline_buckets && inlineable {
            value.extend_from_slice(&0u64.to_le_bytes());
            value.extend_from_slice(&t.sequence.to_le_bytes());
            value.extend_from_slice(&Self::leaf_page(&inodes));
        } else {
            let root = self.write_inodes(inodes);
            value.extend_from_slice(&root.to_le_bytes());
            value.extend_from_slice(&t.sequence.to_le_bytes());
        }
        value
    }

    /// Writes a bucket's tree into pages and returns its root page id (never inline: use this
    /// for the root bucket).
    pub fn write_tree(&mut self, t: &Tree) -> u64 {
        let inodes = self.inodes(t);
        self.write_inodes(inodes)
    }

    fn write_inodes(&mut self, inodes: Vec<LeafInode>) -> u64 {
        let sizes: Vec<usize> = inodes.iter().map(|(k, _, v)| k.len() + v.len()).collect();
        let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
        for r in self.split(&sizes) {
            let first = inodes.get(r.start).map(|i| i.0.clone()).unwrap_or_default();
            let id = self.store(Self::leaf_page(&inodes[r]));
            level.push((first, id));
        }
        while level.len() > 1 {
            let sizes: Vec<usize> = level.iter().map(|(k, _)| k.len()).collect();
            let mut next = Vec::new();
            for r in self.split(&sizes) {
                let first = level[r.start].0.clone();
                let id = self.store(Self::branch_page(&level[r]));
                next.push((first, id));
            }
            level = next;
        }
        level[0].1
    }

    /// Writes a freelist page listing `ids` (using the 0xFFFF count escape when needed).
    pub fn write_freelist(&mut self, ids: &[u64]) -> u64 {
        let mut p = vec![0u8; 16];
        p[8..10].copy_from_slice(&FREELIST.to_le_bytes());
        if ids.len() < 0xFFFF {
            p[10..12].copy_from_slice(&(ids.len() as u16).to_le_bytes());
        } else {
            p[10..12].copy_from_slice(&0xFFFFu16.to_le_bytes());
            p.extend_from_slice(&(ids.len() as u64).to_le_bytes());
        }
        for id in ids {
            p.extend_from_slice(&id.to_le_bytes());
        }
        self.store(p)
    }

    /// The bytes of meta page `index` (0 or 1) for `spec`, with `hwm` as high-water mark.
    pub fn meta_page(&self, index: u64, spec: &MetaSpec, hwm: u64) -> Vec<u8> {
        let mut p = vec![0u8; self.page_size];
        p[0..8].copy_from_slice(&index.to_le_bytes());
        p[8..10].copy_from_slice(&META.to_le_bytes());
        let mut m = Vec::with_capacity(64);
        m.extend_from_slice(&crate::MAGIC.to_le_bytes());
        m.extend_from_slice(&crate::VERSION.to_le_bytes());
        m.extend_from_slice(&(self.page_size as u32).to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(&spec.root.to_le_bytes());
        m.extend_from_slice(&spec.root_sequence.to_le_bytes());
        m.extend_from_slice(&spec.freelist.unwrap_or(u64::MAX).to_le_bytes());
        m.extend_from_slice(&hwm.to_le_bytes());
        m.extend_from_slice(&spec.txid.to_le_bytes());
        let mut sum = fnv1a64(&m);
        if spec.bad_checksum {
            sum ^= 1;
        }
        m.extend_from_slice(&sum.to_le_bytes());
        p[16..80].copy_from_slice(&m);
        p
    }

    /// Writes both meta pages and returns the file image. `hwm` defaults to the pages written.
    pub fn finish(mut self, meta0: &MetaSpec, meta1: &MetaSpec) -> Vec<u8> {
        let hwm = self.next_pgid();
        let ps = self.page_size;
        let m0 = self.meta_page(0, meta0, hwm);
        let m1 = self.meta_page(1, meta1, hwm);
        self.image[0..ps].copy_from_slice(&m0);
        self.image[ps..2 * ps].copy_from_slice(&m1);
        self.image
    }
}

/// A file holding one tree, with both meta pages pointing at it (txids 1 and 2).
pub fn single(page_size: usize, t: &Tree) -> Vec<u8> {
    let mut b = Builder::new(page_size);
    let root = b.write_tree(t);
    b.finish(&MetaSpec::new(root, 1), &MetaSpec::new(root, 2))
}

/// Writes `t` into a file, reads it back and checks that everything matches.
pub fn roundtrip(page_size: usize, t: &Tree) -> Db {
    let db = Db::from_bytes(single(page_size, t)).expect("valid file");
    assert_eq!(db.txid(), 2);
    assert_eq!(&dump(db.root()), t);
    check_lookups(db.root(), t);
    db
}

/// Sets a u16 at `off`.
pub fn put_u16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// Sets a u32 at `off`.
pub fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Sets a u64 at `off`.
pub fn put_u64(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Recomputes the checksum of meta page `index`, after editing it.
pub fn reseal_meta(buf: &mut [u8], page_size: usize, index: usize) {
    let off = index * page_size + 16;
    let sum = fnv1a64(&buf[off..off + 56]);
    put_u64(buf, off + 56, sum);
}

/// Walks every bucket recursively, returning the number of entries, or the first error.
pub fn walk(b: Bucket<'_>) -> Result<usize, crate::BoltError> {
    let mut n = 0;
    for e in b.iter() {
        n += 1;
        if let Entry::Bucket(_, sub) = e? {
            n += walk(sub)?;
        }
    }
    Ok(n)
}
