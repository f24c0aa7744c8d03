//! Tests of the metadata model: containerd 1.6's own files, synthetic databases written with
//! the bolt crate's test writer, content-store JSON, and damaged input.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::ContainerdError;
use ctrwatch_event::hex;

use bolt::testwriter as boltw;
use boltw::Tree;

const LAYER: &str = "sha256:04c6c1a9416330247b20e14902680bc3123b168f849bca566864bb46c32418ba";
const MANIFEST: &str = "sha256:362168e63a6f67a80bdbfe47694ff9ea8e49bec779b2234810a43494aa21540b";
const CONFIG: &str = "sha256:a1e71c3ec39efc2f49140d31bc6f96f25389d41eac17d08dca3f3967723fdc6b";

/// A temporary directory removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ctrwatch-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Expands a `.sparse` fixture of `bolt/tests/data` (format in its README).
fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bolt/tests/data")
        .join(name);
    let s = fs::read(&path).unwrap();
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

fn write(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

/// A root holding the containerd 1.6 fixtures.
fn fixture_root() -> TempDir {
    let t = TempDir::new("fixture");
    let root = t.path();
    write(
        &root.join("io.containerd.metadata.v1.bolt/meta.db"),
        &fixture("containerd-1.6-meta.db.sparse"),
    );
    let ov = root.join("io.containerd.snapshotter.v1.overlayfs");
    write(
        &ov.join("metadata.db"),
        &fixture("containerd-1.6-overlayfs-metadata.db.sparse"),
    );
    for id in 1..=3 {
        fs::create_dir_all(ov.join(format!("snapshots/{id}/fs"))).unwrap();
    }
    fs::create_dir_all(root.join("io.containerd.content.v1.content/blobs/sha256")).unwrap();
    t
}

fn expected_images() -> Vec<String> {
    include_str!("../../../bolt/tests/data/containerd-1.6-images-default.txt")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn containerd_fixture_images_and_containers() {
    let t = fixture_root();
    let m = Model::load(t.path()).unwrap();
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    assert_eq!(m.meta_txid, 491);
    assert_eq!(m.schema_version, Some(3));
    assert_eq!(
        m.namespaces.keys().collect::<Vec<_>>(),
        ["default", "k8s.io"]
    );

    let expected = expected_images();
    assert_eq!(expected.len(), 81);
    let default: Vec<String> = m
        .images()
        .into_iter()
        .filter(|i| i.namespace == "default")
        .map(|i| i.name)
        .collect();
    assert_eq!(default, expected);
    for img in m.images() {
        assert_eq!(img.target.digest, MANIFEST);
        assert_eq!(img.target.size, Some(415));
        assert_eq!(img.manifests.len(), 1, "{}", img.name);
        let man = &img.manifests[0];
        assert_eq!(man.config.as_deref(), Some(CONFIG));
        assert_eq!(man.layers.len(), 1);
        assert_eq!(man.layers[0].digest.as_deref(), Some(LAYER));
        // k8s.io's layer record has no labels: the default namespace's label about the same
        // bytes is used.
        assert_eq!(man.layers[0].diff_id.as_deref(), Some(LAYER));
        assert_eq!(man.layers[0].chain_id.as_deref(), Some(LAYER));
    }

    let c1 = m.container("c1").unwrap();
    assert_eq!(c1.namespace, "default");
    assert_eq!(c1.image.as_deref(), Some("docker.io/test/hello:v1"));
    assert_eq!(c1.snapshotter.as_deref(), Some("overlayfs"));
    assert_eq!(c1.snapshot_key.as_deref(), Some("c1"));
    assert_eq!(c1.runtime.as_deref(), Some("io.containerd.runc.v2"));
    assert!(c1.pod().is_none());
    assert!(m.container_in("k8s.io", "c1").is_none());

    let lease = m.lease("k8s.io", "lease-1").unwrap();
    assert_eq!(lease.expires(), Some("2026-11-23T05:07:01Z"));
    assert!(lease.created_at.is_some());
    assert!(m.namespaces["default"].ingests.is_empty());
}

#[test]
fn containerd_fixture_snapshots() {
    let t = fixture_root();
    let m = Model::load(t.path()).unwrap();
    let expected = expected_images();

    let layer = m.snapshot_by_dir_id("overlayfs", 1).unwrap();
    assert_eq!(layer.key, format!("default/2/{LAYER}"));
    assert_eq!(layer.kind, SnapshotKind::Committed);
    assert_eq!(layer.parent, None);
    assert_eq!(layer.namespaces, ["default"]);
    assert_eq!(layer.names, [LAYER]);
    assert_eq!(layer.chain_id.as_deref(), Some(LAYER));
    assert_eq!(layer.diff_id.as_deref(), Some(LAYER));
    assert_eq!(layer.layer_digest.as_deref(), Some(LAYER));
    // Every image name of the namespace using it (k8s.io's image has no snapshot here).
    assert_eq!(layer.images, expected);
    assert_eq!(layer.container_id, None);

    let c1 = m.snapshot_by_dir_id("overlayfs", 2).unwrap();
    assert_eq!(c1.kind, SnapshotKind::Active);
    assert_eq!(c1.key, "default/3/c1");
    assert_eq!(
        c1.parent.as_deref(),
        Some(format!("default/2/{LAYER}").as_str())
    );
    assert_eq!(c1.container_id.as_deref(), Some("c1"));
    assert_eq!(c1.images, ["docker.io/test/hello:v1"]);
    assert_eq!(c1.chain_id, None);

    let extra = m.snapshot_by_dir_id("overlayfs", 3).unwrap();
    assert_eq!(extra.kind, SnapshotKind::Active);
    assert_eq!(extra.container_id, None);
    assert!(extra.labels.contains_key("containerd.io/gc.root"));
    assert_eq!(
        extra.images, expected,
        "images whose top layer is its parent"
    );
    assert!(!extra.notes.is_empty());

    assert!(m.snapshot_by_dir_id("overlayfs", 4).is_none());
    assert!(m.snapshot_by_dir_id("native", 1).is_none());

    let chain = m.chain(LAYER).unwrap();
    assert_eq!(chain.parent, None);
    assert_eq!(chain.images.len(), 82, "81 names in default, 1 in k8s.io");
}

#[test]
fn containerd_fixture_blobs() {
    let t = fixture_root();
    let m = Model::load(t.path()).unwrap();
    let layer = m.blob(LAYER).unwrap();
    assert_eq!(layer.role, Some(BlobRole::Layer));
    assert_eq!(layer.size, Some(10240));
    assert_eq!(layer.diff_id.as_deref(), Some(LAYER));
    assert_eq!(layer.chain_ids, [LAYER]);
    assert_eq!(layer.namespaces, ["default", "k8s.io"]);
    assert_eq!(layer.images, expected_images(), "names deduplicated");
    assert!(layer.recorded);

    let manifest = m.blob(MANIFEST).unwrap();
    assert_eq!(manifest.role, Some(BlobRole::Manifest));
    assert_eq!(
        manifest.media_type.as_deref(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    assert_eq!(manifest.size, Some(415));

    let config = m.blob(CONFIG).unwrap();
    assert_eq!(config.role, Some(BlobRole::Config));
    assert_eq!(
        config.labels.get("my.label").map(String::as_str),
        Some("value")
    );
    assert_eq!(config.size, Some(190));

    assert!(m.blob(&sha256_digest(b"nothing")).is_none());
}

#[test]
fn containerd_chain_id_vectors() {
    let d: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|c| format!("sha256:{}", c.repeat(64)))
        .collect();
    // Computed independently (Python hashlib).
    assert_eq!(
        chain_ids(&d),
        [
            d[0].clone(),
            "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c".into(),
            "sha256:c1377126441fb2f5ec2c21ae2a60255331d639e830f0ee1b40a36e52d4c40588".into(),
        ]
    );
    // A single layer's chainID is its diffID.
    assert_eq!(chain_ids(&[LAYER]), [LAYER]);
    assert!(chain_ids::<&str>(&[]).is_empty());
    // Generated: each chain[i] from chain[i-1] and diff[i], and prefixes agree.
    let diffs: Vec<String> = (0u8..20).map(|i| sha256_digest(&[i])).collect();
    let all = chain_ids(&diffs);
    for n in 1..diffs.len() {
        assert_eq!(chain_ids(&diffs[..n]), all[..n]);
        assert_eq!(
            all[n],
            sha256_digest(format!("{} {}", all[n - 1], diffs[n]).as_bytes())
        );
    }
    assert_eq!(
        sha256_digest(b""),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn containerd_decoders() {
    assert!(is_digest(LAYER));
    assert!(!is_digest("sha256:ABC"));
    assert!(!is_digest("sha256:../../etc/passwd"));
    assert!(!is_digest("nocolon"));
    assert_eq!(
        parse_backend_key("k8s.io/12/sha256:x/y"),
        Some(("k8s.io", 12, "sha256:x/y"))
    );
    assert_eq!(parse_backend_key("a/b/c"), None);
    assert_eq!(parse_backend_key("/1/c"), None);
    assert_eq!(
        unpack_target(&format!("extract-123-AbCd {LAYER}")),
        Some(LAYER)
    );
    assert_eq!(unpack_target("extract-123-AbCd notadigest"), None);
    assert_eq!(unpack_target(LAYER), None);
}

// ---------------------------------------------------------------------------------------------
// Synthetic roots

fn labels(pairs: &[(&str, &str)]) -> Tree {
    pairs.iter().fold(Tree::new(), |t, (k, v)| t.value(k, v))
}

fn put_json(root: &Path, v: &serde_json::Value) -> String {
    let bytes = serde_json::to_vec(v).unwrap();
    let d = sha256_digest(&bytes);
    write(
        &root
            .join("io.containerd.content.v1.content/blobs/sha256")
            .join(&d[7..]),
        &bytes,
    );
    d
}

fn blob_rec(size: u8, l: &[(&str, &str)]) -> Tree {
    Tree::new()
        .value("size", [size * 2])
        .bucket("labels", labels(l))
}

fn snap_rec(id: u8, kind: u8, parent: Option<&str>) -> Tree {
    let t = Tree::new().value("id", [id]).value("kind", [kind]);
    match parent {
        Some(p) => t.value("parent", p),
        None => t,
    }
}

fn meta_snap(name: &str, parent: Option<&str>) -> Tree {
    let t = Tree::new().value("name", name);
    match parent {
        Some(p) => t.value("parent", p),
        None => t,
    }
}

struct Synthetic {
    _t: TempDir,
    root: PathBuf,
    layers: Vec<String>,
    diffs: Vec<String>,
    chains: Vec<String>,
    index: String,
    manifest: String,
    config: String,
    arm_manifest: String,
}

/// A k8s.io namespace with a multi-platform image pulled with discard_unpacked_layers: index,
/// manifest and config in the content store, no labels, no layer blobs; a CRI container; an
/// unpack in progress; an ingest; a sandbox; a lease.
fn synthetic() -> Synthetic {
    let t = TempDir::new("synthetic");
    let root = t.path().to_path_buf();
    let layers: Vec<String> = (0u8..3).map(|i| sha256_digest(&[b'L', i])).collect();
    let diffs: Vec<String> = (0u8..3).map(|i| sha256_digest(&[b'D', i])).collect();
    let chains = chain_ids(&diffs);
    let config = put_json(
        &root,
        &serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diffs},
        }),
    );
    let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
    let manifest = put_json(
        &root,
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 10},
            "layers": layers.iter().map(|l| serde_json::json!({"mediaType": gz, "digest": l, "size": 1})).collect::<Vec<_>>(),
        }),
    );
    let arm_manifest = sha256_digest(b"arm64 manifest, not pulled");
    let index = put_json(
        &root,
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest, "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm_manifest, "size": 1,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            ],
        }),
    );
    let unpacking = sha256_digest(b"some other chain");
    let extract_key = format!("extract-123-AbCd {unpacking}");

    let img = |name: &str| {
        (
            name.to_owned(),
            Tree::new()
                .bucket(
                    "target",
                    Tree::new()
                        .value("digest", &index)
                        .value("mediatype", "application/vnd.oci.image.index.v1+json")
                        .value("size", [20]),
                )
                .bucket("labels", labels(&[("io.cri-containerd.image", "managed")])),
        )
    };
    let mut images = Tree::new();
    for name in [
        "docker.io/library/app:1".to_owned(),
        format!("docker.io/library/app@{index}"),
        config.clone(),
    ] {
        let (n, t) = img(&name);
        images = images.bucket(n, t);
    }
    let mut blobs = Tree::new()
        .bucket(&index, blob_rec(10, &[]))
        .bucket(&manifest, blob_rec(11, &[]))
        .bucket(&config, blob_rec(12, &[]));
    // A layer still recorded (the others were discarded).
    blobs = blobs.bucket(&layers[0], blob_rec(13, &[]));
    let ns = Tree::new()
        .bucket("images", images)
        .bucket(
            "containers",
            Tree::new().bucket(
                "ctr1",
                Tree::new()
                    .value("image", "docker.io/library/app:1")
                    .value("snapshotter", "overlayfs")
                    .value("snapshotKey", "ctr1")
                    .value("sandboxid", "sb1")
                    .bucket(
                        "labels",
                        labels(&[
                            ("io.kubernetes.pod.name", "web-0"),
                            ("io.kubernetes.pod.namespace", "shop"),
                            ("io.kubernetes.pod.uid", "u-1"),
                            ("io.kubernetes.container.name", "app"),
                            ("io.cri-containerd.kind", "container"),
                        ]),
                    ),
            ),
        )
        .bucket(
            "snapshots",
            Tree::new().bucket(
                "overlayfs",
                Tree::new()
                    .bucket(
                        &chains[0],
                        meta_snap(&format!("k8s.io/1/{}", chains[0]), None),
                    )
                    .bucket(
                        &chains[1],
                        meta_snap(&format!("k8s.io/3/{}", chains[1]), Some(&chains[0])),
                    )
                    .bucket(
                        &chains[2],
                        meta_snap(&format!("k8s.io/5/{}", chains[2]), Some(&chains[1])),
                    )
                    .bucket("ctr1", meta_snap("k8s.io/6/ctr1", Some(&chains[2])))
                    .bucket(
                        &extract_key,
                        meta_snap(&format!("k8s.io/7/{extract_key}"), None),
                    ),
            ),
        )
        .bucket(
            "content",
            Tree::new().bucket("blob", blobs).bucket(
                "ingests",
                Tree::new().bucket(
                    "layer-sha256:abc",
                    Tree::new()
                        .value("ref", "k8s.io/1/layer-sha256:abc")
                        .value("expected", &layers[1]),
                ),
            ),
        )
        .bucket(
            "leases",
            Tree::new().bucket(
                "pull-1",
                Tree::new()
                    .bucket(
                        "labels",
                        labels(&[("containerd.io/gc.expire", "2030-01-01T00:00:00Z")]),
                    )
                    .bucket("content", Tree::new().value(&manifest, ""))
                    .bucket(
                        "snapshots",
                        Tree::new().bucket("overlayfs", Tree::new().value(&chains[0], "")),
                    ),
            ),
        )
        .bucket(
            "sandboxes",
            Tree::new().bucket(
                "sb1",
                Tree::new()
                    .value("sandboxer", "podsandbox")
                    .bucket(
                        "runtime",
                        Tree::new().value("name", "io.containerd.runc.v2"),
                    )
                    .bucket("labels", labels(&[("io.kubernetes.pod.name", "web-0")])),
            ),
        );
    let meta = Tree::new().bucket("v1", Tree::new().value("version", [6]).bucket("k8s.io", ns));
    write(
        &root.join("io.containerd.metadata.v1.bolt/meta.db"),
        &boltw::single(4096, &meta),
    );
    let sn = Tree::new().bucket(
        "v1",
        Tree::new().bucket(
            "snapshots",
            Tree::new()
                .bucket(format!("k8s.io/1/{}", chains[0]), snap_rec(1, 3, None))
                .bucket(
                    format!("k8s.io/3/{}", chains[1]),
                    snap_rec(2, 3, Some(&format!("k8s.io/1/{}", chains[0]))),
                )
                .bucket(
                    format!("k8s.io/5/{}", chains[2]),
                    snap_rec(3, 3, Some(&format!("k8s.io/3/{}", chains[1]))),
                )
                .bucket(
                    "k8s.io/6/ctr1",
                    snap_rec(4, 2, Some(&format!("k8s.io/5/{}", chains[2]))),
                )
                .bucket(format!("k8s.io/7/{extract_key}"), snap_rec(5, 2, None))
                // Left behind after its meta.db record went (removal in progress).
                .bucket("k8s.io/9/gone", snap_rec(6, 2, None)),
        ),
    );
    write(
        &root.join("io.containerd.snapshotter.v1.overlayfs/metadata.db"),
        &boltw::single(4096, &sn),
    );
    // An ingest directory with its ref file.
    let ingest_dir = hex(&Sha256::digest(b"k8s.io/1/layer-sha256:abc"));
    write(
        &root
            .join("io.containerd.content.v1.content/ingest")
            .join(&ingest_dir)
            .join("ref"),
        b"k8s.io/1/layer-sha256:abc",
    );
    Synthetic {
        _t: t,
        root,
        layers,
        diffs,
        chains,
        index,
        manifest,
        config,
        arm_manifest,
    }
}

#[test]
fn containerd_synthetic_index_manifest_config() {
    let s = synthetic();
    let m = Model::load(&s.root).unwrap();
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    let imgs = m.images();
    assert_eq!(imgs.len(), 3);
    for img in &imgs {
        assert_eq!(img.manifests.len(), 1, "only the pulled platform");
        let man = &img.manifests[0];
        assert_eq!(man.digest, s.manifest);
        assert_eq!(man.platform.as_deref(), Some("linux/amd64"));
        assert_eq!(man.config.as_deref(), Some(s.config.as_str()));
        let got: Vec<_> = man
            .layers
            .iter()
            .map(|l| l.chain_id.clone().unwrap())
            .collect();
        assert_eq!(got, s.chains);
        let got: Vec<_> = man
            .layers
            .iter()
            .map(|l| l.diff_id.clone().unwrap())
            .collect();
        assert_eq!(got, s.diffs);
    }

    for (i, id) in [1u64, 2, 3].into_iter().enumerate() {
        let info = m.snapshot_by_dir_id("overlayfs", id).unwrap();
        assert_eq!(info.chain_id.as_deref(), Some(s.chains[i].as_str()));
        assert_eq!(info.diff_id.as_deref(), Some(s.diffs[i].as_str()));
        assert_eq!(info.layer_digest.as_deref(), Some(s.layers[i].as_str()));
        assert_eq!(info.namespaces, ["k8s.io"]);
        assert_eq!(info.images.len(), 3, "all three CRI names");
    }
    let rootfs = m.snapshot_by_dir_id("overlayfs", 4).unwrap();
    assert_eq!(rootfs.container_id.as_deref(), Some("ctr1"));
    let pod = rootfs.pod.unwrap();
    assert_eq!(pod.name, "web-0");
    assert_eq!(pod.namespace.as_deref(), Some("shop"));
    assert_eq!(pod.uid.as_deref(), Some("u-1"));
    assert_eq!(pod.container_name.as_deref(), Some("app"));
    assert!(!pod.sandbox);
    assert_eq!(rootfs.images, ["docker.io/library/app:1"]);

    let unpack = m.snapshot_by_dir_id("overlayfs", 5).unwrap();
    assert_eq!(
        unpack.chain_id.as_deref(),
        Some(sha256_digest(b"some other chain").as_str())
    );
    assert!(unpack.notes.iter().any(|n| n.contains("unpack")));

    let gone = m.snapshot_by_dir_id("overlayfs", 6).unwrap();
    assert_eq!(gone.namespaces, ["k8s.io"]);
    assert_eq!(gone.names, ["gone"]);
    assert!(gone.notes.iter().any(|n| n.contains("no meta.db record")));

    // Blobs: media types from the referencing descriptors.
    let l1 = m.blob(&s.layers[1]).unwrap();
    assert_eq!(
        l1.media_type.as_deref(),
        Some("application/vnd.oci.image.layer.v1.tar+gzip")
    );
    assert_eq!(l1.role, Some(BlobRole::Layer));
    assert!(!l1.recorded, "discarded after unpack");
    assert_eq!(l1.diff_id.as_deref(), Some(s.diffs[1].as_str()));
    assert_eq!(l1.chain_ids, [s.chains[1].clone()]);
    assert_eq!(l1.images.len(), 3);
    let idx = m.blob(&s.index).unwrap();
    assert_eq!(idx.role, Some(BlobRole::Index));
    assert_eq!(idx.size, Some(10));
    let arm = m.blob(&s.arm_manifest).unwrap();
    assert_eq!(
        arm.media_type.as_deref(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    assert!(arm.images.is_empty(), "listed in the index, not pulled");
    assert_eq!(m.blob(&s.config).unwrap().role, Some(BlobRole::Config));

    // Ingest, lease, sandbox.
    let dir = hex(&Sha256::digest(b"k8s.io/1/layer-sha256:abc"));
    let ing = m.ingest(&dir).unwrap();
    assert_eq!(ing.key.as_deref(), Some("layer-sha256:abc"));
    assert_eq!(ing.namespace.as_deref(), Some("k8s.io"));
    assert_eq!(ing.expected.as_deref(), Some(s.layers[1].as_str()));
    assert!(m.ingest("0000").is_none());
    let held = m.leases_holding_blob(&s.manifest);
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].1.snapshots,
        [("overlayfs".to_owned(), s.chains[0].clone())]
    );
    let sb = &m.namespaces["k8s.io"].sandboxes["sb1"];
    assert_eq!(sb.sandboxer.as_deref(), Some("podsandbox"));
    assert_eq!(sb.runtime.as_deref(), Some("io.containerd.runc.v2"));
}

#[test]
fn containerd_synthetic_classify_then_lookup() {
    let s = synthetic();
    let m = Model::load(&s.root).unwrap();
    let path = s
        .root
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots/4/fs/etc/hosts");
    let class = crate::classify_path(&m.layout, path.as_os_str().as_encoded_bytes());
    let crate::PathClass::SnapshotFile {
        snapshotter,
        dir_id,
        inner_path,
        ..
    } = class
    else {
        panic!("{class:?}")
    };
    assert_eq!(inner_path, b"/etc/hosts");
    let info = m.snapshot_by_dir_id(&snapshotter, dir_id).unwrap();
    assert_eq!(info.container_id.as_deref(), Some("ctr1"));
}

#[test]
fn containerd_tampered_content_is_not_trusted() {
    let s = synthetic();
    // Replace the config's bytes: its diffIDs no longer count.
    let cfg = s
        .root
        .join("io.containerd.content.v1.content/blobs/sha256")
        .join(&s.config[7..]);
    fs::write(&cfg, br#"{"rootfs":{"diff_ids":["sha256:evil"]}}"#).unwrap();
    let m = Model::load(&s.root).unwrap();
    assert!(
        m.problems
            .iter()
            .any(|p| p.contains("does not match its digest")),
        "{:?}",
        m.problems
    );
    let img = &m.images()[0];
    assert!(img.manifests[0].layers.iter().all(|l| l.diff_id.is_none()));
}

/// Manifest and config gone from the content store and no uncompressed labels: the chain
/// comes from the gc.ref labels and the snapshot parent chain.
#[test]
fn containerd_chain_from_labels_and_snapshots() {
    let diffs: Vec<String> = (0u8..2).map(|i| sha256_digest(&[b'd', i])).collect();
    let chains = chain_ids(&diffs);
    let (l0, l1) = (sha256_digest(b"l0"), sha256_digest(b"l1"));
    let (man, cfg) = (sha256_digest(b"manifest"), sha256_digest(b"config"));
    let ns = Tree::new()
        .bucket(
            "images",
            Tree::new().bucket(
                "example.com/x:1",
                Tree::new().bucket(
                    "target",
                    Tree::new().value("digest", &man).value(
                        "mediatype",
                        "application/vnd.docker.distribution.manifest.v2+json",
                    ),
                ),
            ),
        )
        .bucket(
            "content",
            Tree::new().bucket(
                "blob",
                Tree::new()
                    .bucket(
                        &man,
                        blob_rec(
                            1,
                            &[
                                (LABEL_CONFIG, &cfg),
                                // Numeric order, not string order; junk ignored.
                                ("containerd.io/gc.ref.content.l.1", &l1),
                                ("containerd.io/gc.ref.content.l.0", &l0),
                                ("containerd.io/gc.ref.content.l.x", "junk"),
                            ],
                        ),
                    )
                    .bucket(
                        &cfg,
                        blob_rec(
                            1,
                            &[("containerd.io/gc.ref.snapshot.overlayfs", &chains[1])],
                        ),
                    ),
            ),
        )
        .bucket(
            "snapshots",
            Tree::new().bucket(
                "overlayfs",
                Tree::new()
                    .bucket(
                        &chains[0],
                        meta_snap(&format!("default/1/{}", chains[0]), None),
                    )
                    .bucket(
                        &chains[1],
                        meta_snap(&format!("default/2/{}", chains[1]), Some(&chains[0])),
                    ),
            ),
        );
    let meta = Tree::new().bucket("v1", Tree::new().bucket("default", ns));
    let db = Db::from_bytes(boltw::single(4096, &meta)).unwrap();
    let sn = Tree::new().bucket(
        "v1",
        Tree::new().bucket(
            "snapshots",
            Tree::new()
                .bucket(format!("default/1/{}", chains[0]), snap_rec(1, 3, None))
                .bucket(
                    format!("default/2/{}", chains[1]),
                    snap_rec(2, 3, Some(&format!("default/1/{}", chains[0]))),
                ),
        ),
    );
    let sdb = Db::from_bytes(boltw::single(4096, &sn)).unwrap();
    let layout = RootLayout::new("/nonexistent/root");
    let m = Model::build(
        &layout,
        &db,
        vec![("overlayfs".into(), PathBuf::from("/nonexistent"), Ok(sdb))],
    );
    let man_info = &m.images()[0].manifests[0];
    assert_eq!(
        man_info
            .layers
            .iter()
            .map(|l| l.digest.clone().unwrap())
            .collect::<Vec<_>>(),
        [l0.clone(), l1.clone()]
    );
    assert_eq!(
        man_info
            .layers
            .iter()
            .map(|l| l.chain_id.clone().unwrap())
            .collect::<Vec<_>>(),
        chains
    );
    assert!(man_info.notes.iter().any(|n| n.contains("snapshot chain")));
    let top = m.snapshot_by_dir_id("overlayfs", 2).unwrap();
    assert_eq!(top.layer_digest.as_deref(), Some(l1.as_str()));
    assert_eq!(top.diff_id, None, "not derivable without the config");
    assert_eq!(top.images, ["example.com/x:1"]);
    let base = m.snapshot_by_dir_id("overlayfs", 1).unwrap();
    assert_eq!(
        base.diff_id.as_deref(),
        Some(diffs[0].as_str()),
        "chain[0] is diffID[0]"
    );
    assert_eq!(m.blob(&l0).unwrap().role, Some(BlobRole::Layer));
}

// ---------------------------------------------------------------------------------------------
// Missing and damaged input

#[test]
fn containerd_missing_inputs() {
    let t = TempDir::new("missing");
    assert!(matches!(
        Model::load(&t.path().join("nope")),
        Err(ContainerdError::NotADirectory(_))
    ));
    let file = t.path().join("file");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(
        Model::load(&file),
        Err(ContainerdError::NotADirectory(_))
    ));
    let e = Model::load(t.path()).unwrap_err();
    assert!(matches!(e, ContainerdError::MissingMetadata(_)), "{e}");
    assert!(e.to_string().contains("meta.db"), "{e}");

    // An empty (but valid) database: an empty model.
    write(
        &t.path().join("io.containerd.metadata.v1.bolt/meta.db"),
        &boltw::single(4096, &Tree::new()),
    );
    let m = Model::load(t.path()).unwrap();
    assert!(m.namespaces.is_empty());
    assert!(m.images().is_empty());
    assert!(m.snapshot_by_dir_id("overlayfs", 1).is_none());
}

#[test]
fn containerd_corrupt_databases() {
    let t = fixture_root();
    // A damaged snapshotter database: the model still loads, the problem is listed.
    let sdb = t
        .path()
        .join("io.containerd.snapshotter.v1.overlayfs/metadata.db");
    fs::write(&sdb, vec![0x5au8; 8192]).unwrap();
    let m = Model::load(t.path()).unwrap();
    assert!(m.snapshotters["overlayfs"].error.is_some());
    assert!(
        m.problems.iter().any(|p| p.contains("overlayfs")),
        "{:?}",
        m.problems
    );
    assert_eq!(m.images().len(), 82);
    assert!(m.snapshot_by_dir_id("overlayfs", 1).is_none());

    // A damaged meta.db fails the load with the file named.
    let meta = t.path().join("io.containerd.metadata.v1.bolt/meta.db");
    fs::write(&meta, b"not a bolt file").unwrap();
    let e = Model::load(t.path()).unwrap_err();
    assert!(matches!(e, ContainerdError::Bolt { .. }), "{e}");
    assert!(e.to_string().contains("meta.db"), "{e}");
}

#[test]
fn containerd_weird_values() {
    let ns = Tree::new()
        .value("stray value", "x")
        .bucket(
            "images",
            Tree::new()
                .value("not-a-bucket", "x")
                .bucket("no-target", Tree::new())
                .bucket(
                    "bad-target",
                    Tree::new().bucket(
                        "target",
                        Tree::new()
                            .value("digest", b"\xff\xfe")
                            .value("mediatype", "application/vnd.oci.image.index.v1+json")
                            .value("size", [0xff; 12]),
                    ),
                )
                .bucket(
                    "unknown-kind",
                    Tree::new().bucket("target", Tree::new().value("digest", LAYER)),
                ),
        )
        .bucket(
            "containers",
            Tree::new().bucket(
                "c",
                Tree::new()
                    .value("snapshotKey", "k")
                    .bucket("labels", Tree::new().value(b"\xff", b"\xfe"))
                    .value("createdat", [1, 2, 3]),
            ),
        )
        .bucket(
            "content",
            Tree::new().bucket(
                "blob",
                Tree::new()
                    .bucket(
                        "../../../../etc/passwd",
                        blob_rec(1, &[(LABEL_CONFIG, "../x")]),
                    )
                    .bucket(
                        LAYER,
                        blob_rec(
                            1,
                            &[(
                                "containerd.io/gc.ref.content.l.99999999999999999999999",
                                "x",
                            )],
                        ),
                    ),
            ),
        )
        .bucket(
            "leases",
            Tree::new().bucket("l", Tree::new().value("snapshots", "x")),
        );
    let meta = Tree::new().bucket("v1", Tree::new().value("version", [0xff]).bucket("ns", ns));
    let db = Db::from_bytes(boltw::single(4096, &meta)).unwrap();
    let sn = Tree::new().bucket(
        "v1",
        Tree::new().bucket(
            "snapshots",
            Tree::new()
                .bucket("no-id", Tree::new().value("kind", [3]))
                .bucket("bad-id", Tree::new().value("id", [0xff; 11]))
                .bucket(
                    "odd-kind",
                    Tree::new().value("id", [7]).value("kind", [9, 9]),
                )
                .bucket("dup-a", Tree::new().value("id", [8]).value("kind", [3]))
                .bucket("dup-b", Tree::new().value("id", [8]).value("kind", [77])),
        ),
    );
    let sdb = Db::from_bytes(boltw::single(4096, &sn)).unwrap();
    let m = Model::build(
        &RootLayout::new("/nonexistent"),
        &db,
        vec![("overlayfs".into(), PathBuf::from("/nonexistent"), Ok(sdb))],
    );
    assert_eq!(m.schema_version, None);
    assert!(m.problems.iter().any(|p| p.contains("no readable id")));
    assert!(m.problems.iter().any(|p| p.contains("id 8 used by both")));
    let odd = m.snapshot_by_dir_id("overlayfs", 7).unwrap();
    assert_eq!(odd.kind, SnapshotKind::Unknown);
    assert!(odd.notes.iter().any(|n| n.contains("not made through")));
    let dup = m.snapshot_by_dir_id("overlayfs", 8).unwrap();
    assert_eq!(dup.kind, SnapshotKind::Unknown);
    // The stored byte of a kind this version does not know is kept for reports.
    let backend = &m.snapshotters["overlayfs"].snapshots[&dup.key];
    assert_eq!(backend.kind_byte, Some(77));
    assert_eq!(backend.kind_label(), "Unknown(77)");
    assert_eq!(m.images().len(), 3);
    let c = m.container("c").unwrap();
    assert_eq!(
        c.labels.get("\u{fffd}").map(String::as_str),
        Some("\u{fffd}")
    );
    assert_eq!(c.created_at, None);
    assert!(m.blob("../../../../etc/passwd").is_some());
}

/// Random damage to real files never panics: each copy either fails to open or loads.
#[test]
fn containerd_mutated_fixtures_never_panic() {
    let meta = fixture("containerd-1.6-meta.db.sparse");
    let snap = fixture("containerd-1.6-overlayfs-metadata.db.sparse");
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let layout = RootLayout::new("/nonexistent");
    let mut loaded = 0;
    for round in 0..150 {
        let (mut m, mut s) = (meta.clone(), snap.clone());
        // Only pages in use (the files are mostly zero padding).
        for _ in 0..(1 + next() % 8) {
            let at = (next() % (160 * 4096)) as usize;
            m[at] ^= (next() % 255 + 1) as u8;
            let at = (next() % (10 * 4096)) as usize;
            s[at] ^= (next() % 255 + 1) as u8;
        }
        let Ok(db) = Db::from_bytes(m) else { continue };
        let sdb = Db::from_bytes(s).map_err(|e| e.to_string());
        let model = Model::build(
            &layout,
            &db,
            vec![("overlayfs".into(), PathBuf::from("/x"), sdb)],
        );
        for id in 0..5 {
            let _ = model.snapshot_by_dir_id("overlayfs", id);
        }
        let _ = model.blob(LAYER);
        let _ = model.images();
        loaded += 1;
        let _ = round;
    }
    assert!(loaded > 0);
}
