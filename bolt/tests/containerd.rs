//! Real files written by containerd 1.6 (see `tests/data/README.md`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure is the test's failure"
)]

use bolt::testwriter as common;

use bolt::{BoltError, Db, Entry};

const LAYER: &str = "sha256:04c6c1a9416330247b20e14902680bc3123b168f849bca566864bb46c32418ba";
const MANIFEST: &str = "sha256:362168e63a6f67a80bdbfe47694ff9ea8e49bec779b2234810a43494aa21540b";
const CONFIG: &str = "sha256:a1e71c3ec39efc2f49140d31bc6f96f25389d41eac17d08dca3f3967723fdc6b";

/// Expands a `.sparse` fixture (format in `tests/data/README.md`).
fn load(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let s = std::fs::read(&path).unwrap();
    assert_eq!(&s[..8], b"BOLTSPRS");
    let mut out = vec![0u8; u64::from_le_bytes(s[8..16].try_into().unwrap()) as usize];
    let mut i = 16;
    while i < s.len() {
        let off = u64::from_le_bytes(s[i..i + 8].try_into().unwrap()) as usize;
        let len = u32::from_le_bytes(s[i + 8..i + 12].try_into().unwrap()) as usize;
        i += 12;
        out[off..off + len].copy_from_slice(&s[i..i + len]);
        i += len;
    }
    out
}

fn names(b: bolt::Bucket<'_>) -> Vec<String> {
    b.iter()
        .map(|e| String::from_utf8(e.unwrap().key().to_vec()).unwrap())
        .collect()
}

#[test]
fn meta_db() {
    let image = load("containerd-1.6-meta.db.sparse");
    let db = Db::from_bytes(image.clone()).unwrap();
    let m = db.meta();
    assert_eq!((m.txid, m.page_size, m.freelist), (491, 4096, Some(61)));

    let v1 = db.bucket_path(&[b"v1"]).unwrap().unwrap();
    assert_eq!(v1.get(b"version").unwrap(), Some(&[6u8][..]));
    assert_eq!(names(v1), ["default", "k8s.io", "version"]);

    // The image list is exactly what `ctr images ls -q` showed.
    let expected: Vec<String> = include_str!("data/containerd-1.6-images-default.txt")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(expected.len(), 81);
    let images = db
        .bucket_path(&[b"v1", b"default", b"images"])
        .unwrap()
        .unwrap();
    assert_eq!(names(images), expected);
    // 81 images do not fit one page: the bucket's root is a branch page.
    let root = images.root_pgid().unwrap() as usize * 4096;
    assert_eq!(
        u16::from_le_bytes([image[root + 8], image[root + 9]]),
        common::BRANCH
    );
    for name in &expected {
        let target = images
            .bucket_path(&[name.as_bytes(), b"target"])
            .unwrap()
            .unwrap();
        assert_eq!(target.get(b"digest").unwrap(), Some(MANIFEST.as_bytes()));
        assert_eq!(
            target.get(b"mediatype").unwrap(),
            Some(&b"application/vnd.oci.image.manifest.v1+json"[..])
        );
    }
    assert!(
        images
            .bucket(b"registry.example.com/a/fairly/long/repository/path/image-003:tag-003")
            .unwrap()
            .is_none(),
        "removed tag"
    );

    let c1 = db
        .bucket_path(&[b"v1", b"default", b"containers", b"c1"])
        .unwrap()
        .unwrap();
    assert_eq!(
        c1.get(b"image").unwrap(),
        Some(&b"docker.io/test/hello:v1"[..])
    );
    assert_eq!(c1.get(b"snapshotter").unwrap(), Some(&b"overlayfs"[..]));
    assert_eq!(c1.get(b"snapshotKey").unwrap(), Some(&b"c1"[..]));

    let config_labels = db
        .bucket_path(&[
            b"v1",
            b"default",
            b"content",
            b"blob",
            CONFIG.as_bytes(),
            b"labels",
        ])
        .unwrap()
        .unwrap();
    assert_eq!(config_labels.get(b"my.label").unwrap(), Some(&b"value"[..]));
    assert_eq!(
        config_labels
            .get(b"containerd.io/gc.ref.snapshot.overlayfs")
            .unwrap(),
        Some(LAYER.as_bytes())
    );

    let snapshots = db
        .bucket_path(&[b"v1", b"default", b"snapshots", b"overlayfs"])
        .unwrap()
        .unwrap();
    assert_eq!(names(snapshots), ["c1", "extra-active", LAYER]);
    let layer = snapshots.bucket(LAYER.as_bytes()).unwrap().unwrap();
    assert_eq!(
        layer.get(b"name").unwrap(),
        Some(format!("default/2/{LAYER}").as_bytes())
    );
    let children = layer.bucket(b"children").unwrap().unwrap();
    let kids: Vec<_> = children
        .iter()
        .map(|e| match e.unwrap() {
            Entry::Value(k, v) => (k.to_vec(), v.len()),
            Entry::Bucket(..) => panic!("children holds values"),
        })
        .collect();
    assert_eq!(kids, [(b"c1".to_vec(), 0), (b"extra-active".to_vec(), 0)]);

    let k8s = db.bucket_path(&[b"v1", b"k8s.io"]).unwrap().unwrap();
    assert_eq!(names(k8s), ["content", "images", "leases"]);
    assert!(
        k8s.bucket_path(&[b"leases", b"lease-1", b"labels"])
            .unwrap()
            .unwrap()
            .get(b"containerd.io/gc.expire")
            .unwrap()
            .is_some()
    );
    assert_eq!(
        names(k8s.bucket(b"images").unwrap().unwrap()),
        ["docker.io/test/hello:v1"]
    );

    // Every entry, nested ones included (the dump example prints 907 lines for it).
    assert_eq!(common::walk(db.root()).unwrap(), 907);
}

#[test]
fn overlayfs_metadata_db() {
    let db = Db::from_bytes(load("containerd-1.6-overlayfs-metadata.db.sparse")).unwrap();
    assert_eq!((db.txid(), db.meta().freelist), (5, Some(9)));
    let snapshots = db.bucket_path(&[b"v1", b"snapshots"]).unwrap().unwrap();
    let layer_key = format!("default/2/{LAYER}");
    assert_eq!(
        names(snapshots),
        [layer_key.as_str(), "default/3/c1", "default/4/extra-active"]
    );
    // id (uvarint) and kind (1 view, 2 active, 3 committed).
    for (key, id, kind) in [
        (layer_key.as_str(), 1u8, 3u8),
        ("default/3/c1", 2, 2),
        ("default/4/extra-active", 3, 2),
    ] {
        let s = snapshots.bucket(key.as_bytes()).unwrap().unwrap();
        assert_eq!(s.get(b"id").unwrap(), Some(&[id][..]), "{key}");
        assert_eq!(s.get(b"kind").unwrap(), Some(&[kind][..]), "{key}");
    }
    let parents = db.bucket_path(&[b"v1", b"parents"]).unwrap().unwrap();
    assert_eq!(parents.iter().count(), 2);
}

#[test]
fn open_reads_the_fixture_from_disk() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bolt-containerd-{}.db", std::process::id()));
    std::fs::write(&path, load("containerd-1.6-meta.db.sparse")).unwrap();
    let db = Db::open(&path).unwrap();
    assert_eq!(db.txid(), 491);
    std::fs::remove_file(&path).unwrap();
}

/// `Db::open` reads only a regular file at the path: a symlink (to a real database, even) is
/// not followed and a FIFO does not block it. `Db::read_file` reads a file opened by the
/// caller.
#[test]
fn open_refuses_symlinks_and_fifos() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bolt-open-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let real = dir.join("real.db");
    std::fs::write(&real, load("containerd-1.6-meta.db.sparse")).unwrap();
    let link = dir.join("link.db");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let fifo = dir.join("fifo.db");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

    let e = Db::open(&link).unwrap_err();
    assert!(
        matches!(
            e,
            BoltError::NotRegularFile {
                kind: "symbolic link",
                ..
            }
        ),
        "{e}"
    );
    let e = Db::open(&fifo).unwrap_err();
    assert!(
        matches!(e, BoltError::NotRegularFile { kind: "FIFO", .. }),
        "{e}"
    );
    assert!(
        e.to_string()
            .ends_with("fifo.db: FIFO, not a regular file (not read)"),
        "{e}"
    );
    let e = Db::open(&dir).unwrap_err();
    assert!(
        matches!(
            e,
            BoltError::NotRegularFile {
                kind: "directory",
                ..
            }
        ),
        "{e}"
    );

    let file = std::fs::File::open(&real).unwrap();
    assert_eq!(Db::read_file(&file, &real).unwrap().txid(), 491);
    std::fs::remove_dir_all(&dir).unwrap();
}
