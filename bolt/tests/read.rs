//! Files written by the test writer read back exactly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure is the test's failure"
)]

use bolt::testwriter as common;

use bolt::{Db, Entry};
use common::{Builder, Item, MetaSpec, Tree, check_lookups, dump, roundtrip, single};

/// Height of the tree rooted at `pgid` in `image` (1 = a single leaf), following first children.
fn height(image: &[u8], page_size: usize, mut pgid: u64) -> usize {
    let mut h = 1;
    loop {
        let off = pgid as usize * page_size;
        let flags = u16::from_le_bytes([image[off + 8], image[off + 9]]);
        if flags != common::BRANCH {
            return h;
        }
        let e = off + 16;
        pgid = u64::from_le_bytes(image[e + 8..e + 16].try_into().unwrap());
        h += 1;
    }
}

fn containerd_like() -> Tree {
    let labels = Tree::new()
        .value("containerd.io/gc.ref.content.config", "sha256:aaaa")
        .value("containerd.io/gc.ref.content.l.0", "sha256:bbbb");
    let target = Tree::new()
        .value("digest", "sha256:1111")
        .value("mediatype", "application/vnd.oci.image.manifest.v1+json")
        .value("size", 7023u64.to_be_bytes());
    let image = Tree::new()
        .bucket("target", target)
        .bucket("labels", labels)
        .value("createdat", [1u8; 15])
        .value("updatedat", [2u8; 15]);
    let images = Tree::new()
        .bucket("docker.io/library/alpine:3.19", image.clone())
        .bucket("docker.io/library/busybox:latest", image);
    let snap = Tree::new()
        .value("name", "default/3/sha256:cccc")
        .value("parent", "sha256:dddd")
        .bucket("children", Tree::new())
        .bucket("labels", Tree::new());
    let ns = Tree::new()
        .bucket("images", images)
        .bucket(
            "snapshots",
            Tree::new().bucket("overlayfs", Tree::new().bucket("sha256:cccc", snap)),
        )
        .bucket("leases", Tree::new().seq(3));
    Tree::new().bucket(
        "v1",
        Tree::new()
            .bucket("default", ns.clone())
            .bucket("k8s.io", ns)
            .value("version", [3u8]),
    )
}

#[test]
fn empty_database() {
    let db = roundtrip(4096, &Tree::new());
    assert_eq!(db.root().iter().count(), 0);
    assert!(db.bucket_path(&[b"v1"]).unwrap().is_none());
    assert_eq!(db.root().get(b"x").unwrap(), None);
}

#[test]
fn nested_and_inline_buckets() {
    let t = containerd_like();
    let db = roundtrip(4096, &t);
    let images = db
        .bucket_path(&[b"v1", b"default", b"images"])
        .unwrap()
        .expect("images bucket");
    let names: Vec<_> = images.iter().map(|e| e.unwrap().key().to_vec()).collect();
    assert_eq!(
        names,
        vec![
            b"docker.io/library/alpine:3.19".to_vec(),
            b"docker.io/library/busybox:latest".to_vec()
        ]
    );
    let target = images
        .bucket_path(&[b"docker.io/library/alpine:3.19", b"target"])
        .unwrap()
        .unwrap();
    assert!(target.is_inline());
    assert_eq!(target.root_pgid(), None);
    assert_eq!(target.get(b"digest").unwrap(), Some(&b"sha256:1111"[..]));
    // A bucket with sub-buckets is never inline.
    let v1 = db.bucket_path(&[b"v1"]).unwrap().unwrap();
    assert!(!v1.is_inline());
    assert!(v1.root_pgid().is_some());
    // get() on a bucket name and bucket() on a value name both find nothing, as in bbolt.
    assert_eq!(v1.get(b"default").unwrap(), None);
    assert!(v1.bucket(b"version").unwrap().is_none());
    assert_eq!(v1.get(b"version").unwrap(), Some(&[3u8][..]));
    let leases = db
        .bucket_path(&[b"v1", b"k8s.io", b"leases"])
        .unwrap()
        .unwrap();
    assert_eq!(leases.sequence(), 3);
    assert_eq!(leases.iter().count(), 0);
    assert!(
        db.bucket_path(&[b"v1", b"default", b"containers"])
            .unwrap()
            .is_none()
    );
    assert!(
        db.bucket_path(&[b"v1", b"default", b"images", b"nope", b"target"])
            .unwrap()
            .is_none()
    );
    // An empty path is the bucket itself.
    assert_eq!(
        db.bucket_path(&[]).unwrap().unwrap().iter().count(),
        t.entries.len()
    );
}

#[test]
fn same_content_without_inline_buckets() {
    let t = containerd_like();
    let mut b = Builder::new(4096);
    b.inline_buckets = false;
    let root = b.write_tree(&t);
    let db = Db::from_bytes(b.finish(&MetaSpec::new(root, 4), &MetaSpec::new(root, 5))).unwrap();
    assert_eq!(dump(db.root()), t);
    check_lookups(db.root(), &t);
    let target = db
        .bucket_path(&[
            b"v1",
            b"default",
            b"images",
            b"docker.io/library/alpine:3.19",
            b"target",
        ])
        .unwrap()
        .unwrap();
    assert!(!target.is_inline());
}

#[test]
fn values_that_need_overflow_pages() {
    let big = |n: usize, seed: u8| -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    };
    let t = Tree::new()
        .value("a-small", "x")
        .value("b-one-page-plus", big(5000, 1))
        .value("c-many-pages", big(200_000, 2))
        .value("d-small", "y")
        .value(vec![b'k'; 20_000], big(3, 3))
        .bucket(
            "nested",
            Tree::new().value("huge", big(70_000, 4)).value("tiny", "z"),
        );
    for ps in [1024, 4096, 16384] {
        roundtrip(ps, &t);
    }
}

#[test]
fn thousands_of_keys_need_several_branch_levels() {
    let mut t = Tree::new();
    for i in 0..6000u32 {
        // 200-byte keys: ~18 per page, so 6000 keys need two levels of branches.
        let mut k = format!("key-{i:08}-").into_bytes();
        k.resize(200, b'.');
        t = t.value(k, i.to_be_bytes());
    }
    let image = single(4096, &t);
    let db = Db::from_bytes(image.clone()).unwrap();
    let root = db.meta().root;
    assert!(
        height(&image, 4096, root) >= 3,
        "tree should have at least two branch levels"
    );
    assert_eq!(dump(db.root()), t);
    check_lookups(db.root(), &t);

    // Short keys in a nested bucket, with a deep tree forced by few elements per page.
    let mut sub = Tree::new().seq(99);
    for i in 0..3000u32 {
        sub = sub.value(format!("{i:05}"), format!("value {i}"));
    }
    let t = Tree::new().bucket("sub", sub);
    let mut b = Builder::new(4096);
    b.max_per_page = 3;
    let root = b.write_tree(&t);
    let image = b.finish(&MetaSpec::new(root, 1), &MetaSpec::new(root, 2));
    let db = Db::from_bytes(image.clone()).unwrap();
    let sub_root = db
        .root()
        .bucket(b"sub")
        .unwrap()
        .unwrap()
        .root_pgid()
        .unwrap();
    assert!(height(&image, 4096, sub_root) >= 7);
    assert_eq!(dump(db.root()), t);
    check_lookups(db.root(), &t);
}

#[test]
fn binary_keys_sort_bytewise() {
    let t = Tree::new()
        .value([0u8], "zero")
        .value([0u8, 0], "zero zero")
        .value([0x7f], "del")
        .value([0x80], "high")
        .value([0xff, 0xff], "max");
    let db = roundtrip(4096, &t);
    let keys: Vec<Vec<u8>> = db
        .root()
        .iter()
        .map(|e| e.unwrap().key().to_vec())
        .collect();
    assert_eq!(
        keys,
        vec![
            vec![0],
            vec![0, 0],
            vec![0x7f],
            vec![0x80],
            vec![0xff, 0xff]
        ]
    );
}

#[test]
fn deeply_nested_buckets() {
    let mut t = Tree::new().value("leaf", "bottom");
    for depth in (0..40).rev() {
        t = Tree::new()
            .bucket(format!("level-{depth}"), t)
            .value("depth", [depth as u8]);
    }
    let db = roundtrip(4096, &t);
    let mut b = db.root();
    for depth in 0..40 {
        b = b
            .bucket(format!("level-{depth}").as_bytes())
            .unwrap()
            .unwrap();
    }
    assert_eq!(b.get(b"leaf").unwrap(), Some(&b"bottom"[..]));
}

#[test]
fn iterator_yields_entries_and_buckets() {
    let t = Tree::new()
        .value("a", "1")
        .bucket("b", Tree::new().value("x", "y"))
        .value("c", "3");
    let db = roundtrip(4096, &t);
    let mut it = db.root().iter();
    assert!(matches!(it.next(), Some(Ok(Entry::Value(b"a", b"1")))));
    match it.next() {
        Some(Ok(Entry::Bucket(b"b", sub))) => {
            assert_eq!(sub.get(b"x").unwrap(), Some(&b"y"[..]));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(it.next(), Some(Ok(Entry::Value(b"c", b"3")))));
    assert!(it.next().is_none());
    assert!(it.next().is_none());
    // IntoIterator for buckets.
    let mut n = 0;
    for e in db.root() {
        e.unwrap();
        n += 1;
    }
    assert_eq!(n, 3);
}

fn two_trees(page_size: usize) -> (Builder, u64, u64, Tree, Tree) {
    let old = Tree::new()
        .value("generation", "old")
        .bucket("b", Tree::new().value("k", "old value"));
    let new = Tree::new().value("generation", "new").bucket(
        "b",
        Tree::new().value("k", "new value").value("k2", "added"),
    );
    let mut b = Builder::new(page_size);
    let r_old = b.write_tree(&old);
    let r_new = b.write_tree(&new);
    (b, r_old, r_new, old, new)
}

#[test]
fn picks_the_meta_page_with_the_higher_txid() {
    // Newer transaction on page 1.
    let (b, r_old, r_new, _old, new) = two_trees(4096);
    let db =
        Db::from_bytes(b.finish(&MetaSpec::new(r_old, 41), &MetaSpec::new(r_new, 42))).unwrap();
    assert_eq!(db.txid(), 42);
    assert_eq!(dump(db.root()), new);

    // Newer transaction on page 0.
    let (b, r_old, r_new, _old, new) = two_trees(4096);
    let db =
        Db::from_bytes(b.finish(&MetaSpec::new(r_new, 43), &MetaSpec::new(r_old, 42))).unwrap();
    assert_eq!(db.txid(), 43);
    assert_eq!(dump(db.root()), new);
}

#[test]
fn falls_back_when_the_newer_meta_page_is_damaged() {
    for ps in [1024, 4096, 16384, 65536] {
        let (b, r_old, r_new, old, _new) = two_trees(ps);
        let mut bad = MetaSpec::new(r_new, 42);
        bad.bad_checksum = true;
        let db = Db::from_bytes(b.finish(&MetaSpec::new(r_old, 41), &bad)).unwrap();
        assert_eq!(db.txid(), 41);
        assert_eq!(dump(db.root()), old);

        // Damaged page 0: page 1 is found by probing page sizes.
        let (b, r_old, r_new, old, _new) = two_trees(ps);
        let mut bad = MetaSpec::new(r_new, 44);
        bad.bad_checksum = true;
        let db = Db::from_bytes(b.finish(&bad, &MetaSpec::new(r_old, 43))).unwrap();
        assert_eq!(db.txid(), 43);
        assert_eq!(db.page_size() as usize, ps);
        assert_eq!(dump(db.root()), old);

        // Page 0 with bad magic.
        let (b, r_old, r_new, old, _new) = two_trees(ps);
        let mut image = b.finish(&MetaSpec::new(r_new, 50), &MetaSpec::new(r_old, 49));
        image[16] ^= 0xff;
        let db = Db::from_bytes(image).unwrap();
        assert_eq!(db.txid(), 49);
        assert_eq!(dump(db.root()), old);
    }
}

#[test]
fn no_freelist_sync_and_stored_freelist() {
    let t = containerd_like();
    // containerd 1.7+: freelist pgid u64::MAX.
    let mut b = Builder::new(4096);
    let root = b.write_tree(&t);
    let db = Db::from_bytes(b.finish(&MetaSpec::new(root, 7), &MetaSpec::new(root, 8))).unwrap();
    assert_eq!(db.meta().freelist, None);
    assert_eq!(dump(db.root()), t);

    // containerd 1.6 and earlier: a freelist page, here listing two free pages.
    let mut b = Builder::new(4096);
    let root = b.write_tree(&t);
    let free = b.alloc(2);
    let fl = b.write_freelist(&[free, free + 1]);
    let mut m0 = MetaSpec::new(root, 7);
    let mut m1 = MetaSpec::new(root, 8);
    m0.freelist = Some(fl);
    m1.freelist = Some(fl);
    let db = Db::from_bytes(b.finish(&m0, &m1)).unwrap();
    assert_eq!(db.meta().freelist, Some(fl));
    assert_eq!(dump(db.root()), t);

    // A freelist too long for the u16 count (the 0xFFFF escape), spanning overflow pages.
    let mut b = Builder::new(4096);
    let root = b.write_tree(&t);
    let ids: Vec<u64> = (0..70_000).map(|i| 1_000_000 + i).collect();
    let fl = b.write_freelist(&ids);
    let mut m1 = MetaSpec::new(root, 8);
    m1.freelist = Some(fl);
    let db = Db::from_bytes(b.finish(&MetaSpec::new(root, 7), &m1)).unwrap();
    assert_eq!(db.meta().freelist, Some(fl));
    assert_eq!(dump(db.root()), t);
}

#[test]
fn open_reads_a_file() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("bolt-open-{}.db", std::process::id()));
    let t = containerd_like();
    std::fs::write(&path, single(4096, &t)).unwrap();
    let db = Db::open(&path).unwrap();
    assert_eq!(db.txid(), 2);
    assert_eq!(dump(db.root()), t);
    std::fs::remove_file(&path).unwrap();
    match Db::open(&path) {
        Err(bolt::BoltError::Io { .. }) => {}
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn total_counts_match() {
    let t = containerd_like();
    let db = roundtrip(4096, &t);
    assert_eq!(common::walk(db.root()).unwrap(), t.total());
    // Items are exactly what was written.
    match t.entries.get(b"v1".as_slice()) {
        Some(Item::Bucket(_)) => {}
        _ => panic!("v1 should be a bucket"),
    }
}
