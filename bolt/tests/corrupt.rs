//! Damaged and hostile files give errors: no panic, no hang, no unbounded recursion.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure is the test's failure"
)]

use bolt::testwriter as common;

use bolt::{BoltError, Db, MetaProblem};
use common::{Builder, MetaSpec, Tree, put_u16, put_u32, put_u64, reseal_meta, single, walk};

const PS: usize = 4096;

/// A tree of three levels (root branch, branches, leaves), two elements per page, with an inline
/// bucket and a page-backed bucket; returns the image and the root's page id.
fn sample() -> (Vec<u8>, u64) {
    let mut t = Tree::new();
    for c in b'a'..=b'h' {
        t = t.value([c], [c; 3]);
    }
    t = t.bucket("inline", Tree::new().value("x", "1")).bucket(
        "paged",
        Tree::new().bucket("deeper", Tree::new().value("y", "2")),
    );
    let mut b = Builder::new(PS);
    b.max_per_page = 2;
    let root = b.write_tree(&t);
    (
        b.finish(&MetaSpec::new(root, 1), &MetaSpec::new(root, 2)),
        root,
    )
}

fn page_off(pgid: u64) -> usize {
    pgid as usize * PS
}

fn flags(img: &[u8], pgid: u64) -> u16 {
    let o = page_off(pgid) + 8;
    u16::from_le_bytes([img[o], img[o + 1]])
}

/// Child page id of branch element `i` of `pgid`.
fn child(img: &[u8], pgid: u64, i: usize) -> u64 {
    let e = page_off(pgid) + 16 + 16 * i + 8;
    u64::from_le_bytes(img[e..e + 8].try_into().unwrap())
}

/// The first leaf page under `pgid`.
fn first_leaf(img: &[u8], mut pgid: u64) -> u64 {
    while flags(img, pgid) == common::BRANCH {
        pgid = child(img, pgid, 0);
    }
    pgid
}

/// Opens a damaged image; it must fail, or (for random damage) succeed with a full walk that
/// does not fail.
fn open_err(img: Vec<u8>) -> BoltError {
    match Db::from_bytes(img) {
        Ok(db) => panic!("damaged file accepted: {db:?}"),
        Err(e) => {
            // The message renders.
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

#[test]
fn sample_is_valid() {
    let (img, root) = sample();
    let db = Db::from_bytes(img.clone()).unwrap();
    assert_eq!(walk(db.root()).unwrap(), 8 + 2 + 1 + 1 + 1);
    assert_eq!(flags(&img, root), common::BRANCH);
    assert_eq!(flags(&img, child(&img, root, 0)), common::BRANCH);
}

#[test]
fn empty_and_truncated_files() {
    assert!(matches!(
        open_err(Vec::new()),
        BoltError::NoValidMeta {
            meta0: MetaProblem::TooShort,
            meta1: MetaProblem::NotFound
        }
    ));
    let (img, _) = sample();
    for len in [
        10,
        79,
        80,
        PS,
        PS + 40,
        2 * PS,
        3 * PS,
        img.len() / 2,
        img.len() - 1,
    ] {
        let e = open_err(img[..len].to_vec());
        if len >= PS + 80 {
            // Meta pages fine; pages past the end are out of range.
            assert!(
                matches!(e, BoltError::PageOutOfRange { .. }),
                "len {len}: {e}"
            );
        }
    }
}

#[test]
fn bad_meta_pages() {
    let (img, _) = sample();
    // Bad magic on both.
    let mut bad = img.clone();
    bad[16] ^= 1;
    bad[PS + 16] ^= 1;
    assert!(matches!(
        open_err(bad),
        BoltError::NoValidMeta {
            meta0: MetaProblem::BadMagic(_),
            meta1: MetaProblem::NotFound
        }
    ));
    // Version 1, checksum right.
    let mut bad = img.clone();
    for i in 0..2 {
        put_u32(&mut bad, i * PS + 20, 1);
        reseal_meta(&mut bad, PS, i);
    }
    assert!(matches!(
        open_err(bad),
        BoltError::NoValidMeta {
            meta0: MetaProblem::BadVersion(1),
            ..
        }
    ));
    // Checksum wrong on both.
    let mut bad = img.clone();
    bad[PS - 1] = 0; // not covered: still fine
    put_u64(&mut bad, 16 + 48, 77);
    put_u64(&mut bad, PS + 16 + 48, 78);
    assert!(matches!(
        open_err(bad),
        BoltError::NoValidMeta {
            meta0: MetaProblem::BadChecksum,
            meta1: MetaProblem::NotFound
        }
    ));
    // Page size not a power of two, or absurd.
    for ps in [100u32, 4095, 0, u32::MAX, 1 << 30] {
        let mut bad = img.clone();
        put_u32(&mut bad, 16 + 8, ps);
        reseal_meta(&mut bad, PS, 0);
        put_u32(&mut bad, PS + 16 + 8, ps);
        reseal_meta(&mut bad, PS, 1);
        assert!(
            matches!(
                open_err(bad),
                BoltError::NoValidMeta {
                    meta0: MetaProblem::BadPageSize(_),
                    ..
                }
            ),
            "page size {ps}"
        );
    }
    // Page 1 claims another page size than where it sits; page 0 is damaged.
    let mut bad = img.clone();
    bad[16] ^= 1;
    put_u32(&mut bad, PS + 16 + 8, 8192);
    reseal_meta(&mut bad, PS, 1);
    open_err(bad);
}

#[test]
fn root_out_of_range() {
    let (img, _) = sample();
    for root in [0u64, 1, 1_000_000, u64::MAX, u64::MAX / PS as u64 + 1] {
        let mut bad = img.clone();
        for i in 0..2 {
            put_u64(&mut bad, i * PS + 16 + 16, root);
            reseal_meta(&mut bad, PS, i);
        }
        assert!(
            matches!(open_err(bad), BoltError::PageOutOfRange { pgid, .. } if pgid == root),
            "root {root}"
        );
    }
    // High-water mark below the root.
    let mut bad = img.clone();
    for i in 0..2 {
        put_u64(&mut bad, i * PS + 16 + 40, 3);
        reseal_meta(&mut bad, PS, i);
    }
    assert!(matches!(open_err(bad), BoltError::PageOutOfRange { .. }));
}

#[test]
fn branch_children_out_of_range_or_meta() {
    let (img, root) = sample();
    for target in [0u64, 1, 999_999, u64::MAX] {
        let mut bad = img.clone();
        put_u64(&mut bad, page_off(root) + 16 + 8, target);
        assert!(
            matches!(open_err(bad), BoltError::PageOutOfRange { pgid, .. } if pgid == target),
            "child {target}"
        );
    }
}

#[test]
fn cycles_and_shared_pages() {
    let (img, root) = sample();
    // A branch pointing to itself.
    let mut bad = img.clone();
    put_u64(&mut bad, page_off(root) + 16 + 8, root);
    assert!(matches!(open_err(bad), BoltError::PageReused { pgid, .. } if pgid == root));
    // A lower branch pointing back to the root.
    let mid = child(&img, root, 0);
    let mut bad = img.clone();
    put_u64(&mut bad, page_off(mid) + 16 + 16 + 8, root);
    assert!(matches!(open_err(bad), BoltError::PageReused { .. }));
    // Two branch elements sharing one child.
    let mut bad = img.clone();
    let c0 = child(&img, root, 0);
    put_u64(&mut bad, page_off(root) + 16 + 16 + 8, c0);
    assert!(matches!(open_err(bad), BoltError::PageReused { .. }));
    // A bucket whose root is a page of the root bucket's tree.
    let leaf = first_leaf(&img, root);
    let mut bad = img.clone();
    let value = value_offset(&img, b"paged");
    put_u64(&mut bad, value, leaf);
    assert!(matches!(open_err(bad), BoltError::PageReused { pgid, .. } if pgid == leaf));
}

/// Offset in the image of the value stored under `key` (searching every leaf page).
fn value_offset(img: &[u8], key: &[u8]) -> usize {
    for pgid in 2..(img.len() / PS) as u64 {
        if flags(img, pgid) != common::LEAF {
            continue;
        }
        let off = page_off(pgid);
        let count = u16::from_le_bytes([img[off + 10], img[off + 11]]) as usize;
        for i in 0..count {
            let e = off + 16 + 16 * i;
            let field = |f: usize| u32::from_le_bytes(img[e + f..e + f + 4].try_into().unwrap());
            let k = e + field(4) as usize;
            let ksize = field(8) as usize;
            if &img[k..k + ksize] == key {
                return k + ksize;
            }
        }
    }
    panic!("key {key:?} not found");
}

/// A chain of single-element branch pages deeper than the limit.
#[test]
fn too_deep_tree() {
    let mut b = Builder::new(PS);
    let leaf = b.store(Builder::leaf_page(&[(b"k".to_vec(), 0, b"v".to_vec())]));
    let mut top = leaf;
    for _ in 0..bolt::MAX_DEPTH + 5 {
        top = b.store(Builder::branch_page(&[(b"k".to_vec(), top)]));
    }
    let img = b.finish(&MetaSpec::new(top, 1), &MetaSpec::new(top, 2));
    assert!(matches!(open_err(img), BoltError::TooDeep { .. }));

    // Within the limit it is fine (if silly).
    let mut b = Builder::new(PS);
    let leaf = b.store(Builder::leaf_page(&[(b"k".to_vec(), 0, b"v".to_vec())]));
    let mut top = leaf;
    for _ in 0..bolt::MAX_DEPTH - 1 {
        top = b.store(Builder::branch_page(&[(b"k".to_vec(), top)]));
    }
    let img = b.finish(&MetaSpec::new(top, 1), &MetaSpec::new(top, 2));
    let db = Db::from_bytes(img).unwrap();
    assert_eq!(db.root().get(b"k").unwrap(), Some(&b"v"[..]));
}

#[test]
fn too_deeply_nested_buckets() {
    let mut t = Tree::new().value("v", "x");
    for _ in 0..bolt::MAX_DEPTH + 1 {
        t = Tree::new().bucket("b", t);
    }
    let img = single(PS, &t);
    assert!(matches!(open_err(img), BoltError::TooDeep { .. }));
}

#[test]
fn wrong_page_types_and_ids() {
    let (img, root) = sample();
    let leaf = first_leaf(&img, root);
    for f in [0u16, common::META, common::FREELIST, 0x03, 0xffff] {
        let mut bad = img.clone();
        put_u16(&mut bad, page_off(leaf) + 8, f);
        assert!(
            matches!(open_err(bad), BoltError::WrongPageType { flags, .. } if flags == f),
            "flags {f:#x}"
        );
    }
    // A page whose header names another id.
    let mut bad = img.clone();
    put_u64(&mut bad, page_off(leaf), leaf + 1);
    assert!(matches!(open_err(bad), BoltError::PageIdMismatch { .. }));
    // A leaf where a branch was, and the reverse, are still fine types: the structure check
    // catches the mismatch of content instead (elements then point elsewhere).
    let mut bad = img.clone();
    put_u16(&mut bad, page_off(root) + 8, common::LEAF);
    open_err(bad);
    // A freelist page that is not one.
    let mut b = Builder::new(PS);
    let r = b.write_tree(&Tree::new().value("a", "b"));
    let mut m = MetaSpec::new(r, 2);
    m.freelist = Some(r);
    let img = b.finish(&MetaSpec::new(r, 1), &m);
    assert!(matches!(
        open_err(img),
        BoltError::WrongPageType {
            expected: "freelist",
            ..
        }
    ));
}

#[test]
fn counts_and_elements_out_of_bounds() {
    let (img, root) = sample();
    let leaf = first_leaf(&img, root);
    // Element count overrunning the page.
    for pgid in [root, leaf] {
        let mut bad = img.clone();
        put_u16(&mut bad, page_off(pgid) + 10, 0xffff);
        assert!(matches!(open_err(bad), BoltError::CountOverrun { .. }));
    }
    // An empty branch.
    let mut bad = img.clone();
    put_u16(&mut bad, page_off(root) + 10, 0);
    assert!(matches!(open_err(bad), BoltError::EmptyBranch { .. }));
    // Key position / sizes past the page.
    for (field, v) in [
        (4usize, u32::MAX),
        (4, PS as u32),
        (8, 5000),
        (12, u32::MAX),
    ] {
        let mut bad = img.clone();
        put_u32(&mut bad, page_off(leaf) + 16 + field, v);
        assert!(
            matches!(open_err(bad), BoltError::ElementOutOfBounds { .. }),
            "leaf field {field} = {v}"
        );
    }
    for (field, v) in [(0usize, u32::MAX), (4, 10_000)] {
        let mut bad = img.clone();
        put_u32(&mut bad, page_off(root) + 16 + field, v);
        assert!(matches!(
            open_err(bad),
            BoltError::ElementOutOfBounds { .. }
        ));
    }
    // Overflow running past the end of the file.
    for ov in [1u32, 1000, u32::MAX] {
        let mut bad = img.clone();
        let last = (img.len() / PS - 1) as u64;
        put_u32(&mut bad, page_off(last) + 12, ov);
        assert!(matches!(open_err(bad), BoltError::PageOutOfRange { .. }));
    }
}

#[test]
fn keys_out_of_order() {
    let (img, root) = sample();
    let leaf = first_leaf(&img, root);
    // Swap the first key byte of the two leaf elements: "a","b" -> "b","a".
    let mut bad = img.clone();
    let key_of = |i: usize| {
        let e = page_off(leaf) + 16 + 16 * i;
        e + u32::from_le_bytes(img[e + 4..e + 8].try_into().unwrap()) as usize
    };
    let (k0, k1) = (key_of(0), key_of(1));
    bad.swap(k0, k1);
    assert!(matches!(open_err(bad), BoltError::KeyOrder { .. }));
    // Duplicate keys.
    let mut bad = img.clone();
    bad[k1] = bad[k0];
    assert!(matches!(open_err(bad), BoltError::KeyOrder { .. }));
    // A branch key larger than the first key of its subtree.
    let mut bad = img.clone();
    let mid = child(&img, root, 0);
    let e = page_off(mid) + 16;
    let kpos = e + u32::from_le_bytes(img[e..e + 4].try_into().unwrap()) as usize;
    bad[kpos] = b'b';
    assert!(matches!(open_err(bad), BoltError::KeyOrder { .. }));
}

#[test]
fn bad_bucket_values() {
    // A bucket flag on a value too short to be a bucket header.
    let mut b = Builder::new(PS);
    let leaf = Builder::leaf_page(&[(b"b".to_vec(), 1, vec![0u8; 7])]);
    let r = b.store(leaf);
    let img = b.finish(&MetaSpec::new(r, 1), &MetaSpec::new(r, 2));
    assert!(matches!(open_err(img), BoltError::BadBucketValue { .. }));
    // Inline bucket with a header but no room for its page.
    let mut b = Builder::new(PS);
    let leaf = Builder::leaf_page(&[(b"b".to_vec(), 1, vec![0u8; 20])]);
    let r = b.store(leaf);
    let img = b.finish(&MetaSpec::new(r, 1), &MetaSpec::new(r, 2));
    assert!(matches!(open_err(img), BoltError::BadBucketValue { .. }));
    // Inline bucket whose page is a branch.
    let mut value = vec![0u8; 16];
    value.extend(Builder::branch_page(&[(b"k".to_vec(), 2)]));
    let mut b = Builder::new(PS);
    let r = b.store(Builder::leaf_page(&[(b"b".to_vec(), 1, value)]));
    let img = b.finish(&MetaSpec::new(r, 1), &MetaSpec::new(r, 2));
    assert!(matches!(
        open_err(img),
        BoltError::WrongPageType {
            page: bolt::PageLoc::Inline { .. },
            ..
        }
    ));
    // Inline bucket whose element count overruns the value.
    let mut value = vec![0u8; 16];
    let mut page = Builder::leaf_page(&[(b"k".to_vec(), 0, b"v".to_vec())]);
    put_u16(&mut page, 10, 40);
    value.extend(page);
    let mut b = Builder::new(PS);
    let r = b.store(Builder::leaf_page(&[(b"b".to_vec(), 1, value)]));
    let img = b.finish(&MetaSpec::new(r, 1), &MetaSpec::new(r, 2));
    assert!(matches!(open_err(img), BoltError::CountOverrun { .. }));
}

/// Deterministic xorshift, so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn garbage_pages() {
    let (img, _) = sample();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..50 {
        let mut bad = img.clone();
        for b in &mut bad[2 * PS..] {
            *b = rng.next() as u8;
        }
        open_err(bad);
    }
}

/// Random damage of every kind: the reader must never panic or hang, and whatever it accepts
/// must be fully walkable.
#[test]
fn random_mutations_never_panic() {
    let mut t = Tree::new();
    for i in 0..300u32 {
        t = t.value(format!("k{i:04}"), vec![i as u8; (i % 50) as usize]);
    }
    t = t
        .bucket("inline", Tree::new().value("x", "1"))
        .bucket("big", Tree::new().value("v", vec![9u8; 9000]));
    let mut b = Builder::new(1024);
    b.max_per_page = 4;
    let root = b.write_tree(&t);
    let img = b.finish(&MetaSpec::new(root, 1), &MetaSpec::new(root, 2));
    let mut rng = Rng(42);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..3000 {
        let mut bad = img.clone();
        for _ in 0..1 + rng.next() % 4 {
            let pos = (rng.next() % bad.len() as u64) as usize;
            bad[pos] = match rng.next() % 4 {
                0 => 0,
                1 => 0xff,
                2 => bad[pos] ^ (1 << (rng.next() % 8)),
                _ => rng.next() as u8,
            };
        }
        match Db::from_bytes(bad) {
            Ok(db) => {
                // Accepted: every lookup path and the full walk must work.
                walk(db.root()).unwrap();
                let _ = db.root().get(b"k0100").unwrap();
                ok += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                err += 1;
            }
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok} err {err}");
}
