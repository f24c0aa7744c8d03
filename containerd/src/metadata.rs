//! A snapshot of what containerd's databases say: snapshots, images, containers, content,
//! ingests, leases and sandboxes, and what follows from them (which layer a snapshot
//! directory holds, which images use it, what a blob is).
//!
//! Read from a root with [`Model::load`]: `io.containerd.metadata.v1.bolt/meta.db` and every
//! snapshotter's `metadata.db`, lock-free (`bolt::Db::open` copies a consistent snapshot), plus
//! manifests, indexes and image configs from the content store when labels do not say enough.
//! Nothing in the input can make it panic: damaged parts are skipped and listed in
//! [`Model::problems`]; only an unreadable `meta.db` fails the load.
//!
//! Layouts (containerd `core/metadata/buckets.go`, `core/snapshots/storage/bolt.go`):
//! ```text
//! meta.db   v1/version (signed varint)
//!           v1/<ns>/labels/
//!           v1/<ns>/images/<name>/{createdat, updatedat, target/{digest, mediatype, size}, labels/}
//!           v1/<ns>/containers/<id>/{image, snapshotter, snapshotKey, sandboxid, runtime/{name}, labels/}
//!           v1/<ns>/snapshots/<snapshotter>/<key>/{name, parent, children/, labels/}
//!           v1/<ns>/content/blob/<digest>/{size, labels/}
//!           v1/<ns>/content/ingests/<ref>/{ref, expireat, expected}
//!           v1/<ns>/leases/<id>/{createdat, labels/, snapshots/<sn>/<key>, content/<digest>,
//!                                ingests/<ref>, images/<name>}
//!           v1/<ns>/sandboxes/<id>/{sandboxer, runtime/{name}, labels/}        (1.7+)
//! metadata.db v1/snapshots/<key>/{id (uvarint), kind (1 view, 2 active, 3 committed), parent,
//!                                 labels/, inodes, size}
//!           v1/parents/<uvarint parent id> 0x00 <uvarint child id> = child key
//! ```
//! Sizes are Go `binary.PutVarint` (zigzag); times are Go `time.MarshalBinary`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bolt::{BoltError, Bucket, Db, Entry};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::ContainerdError;
use crate::paths::{CONTENT_DIR, RootLayout, SNAPSHOTTER_DB, SNAPSHOTTER_PREFIX};
// A snapshot's kind, a blob's role and a pod are the event's own types: attribution puts them
// in events as they are.
use crate::fsx::{OpenError, list_beneath, lstat_beneath, open_file_beneath, read_beneath};
use crate::go::{go_time, uvarint, varint};
use ctrwatch_event::escape_path;
pub use ctrwatch_event::{BlobRole, PodInfo, SnapshotKind};

/// Labels (and annotations): key → value.
pub type Labels = BTreeMap<String, String>;

/// Most problems kept in [`Model::problems`]; a badly damaged file would otherwise list one per
/// entry.
pub const MAX_PROBLEMS: usize = 200;
/// Largest manifest, index or config read from the content store.
pub const MAX_JSON_BLOB: u64 = 8 << 20;
/// Deepest nesting of indexes followed.
const MAX_INDEX_DEPTH: usize = 4;
/// Most ingest directories looked at.
const MAX_INGEST_DIRS: usize = 100_000;

/// `containerd.io/uncompressed`: a layer blob's diffID.
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// Label prefix naming a manifest's layers (`l.<i>`).
pub const LABEL_LAYER_PREFIX: &str = "containerd.io/gc.ref.content.l.";
/// Label prefix naming an index's manifests (`m.<i>`).
pub const LABEL_MANIFEST_PREFIX: &str = "containerd.io/gc.ref.content.m.";
/// Label naming a manifest's config.
pub const LABEL_CONFIG: &str = "containerd.io/gc.ref.content.config";
/// Label prefix on a config: the top snapshot (chainID) per snapshotter.
pub const LABEL_SNAPSHOT_PREFIX: &str = "containerd.io/gc.ref.snapshot.";
/// Lease and snapshot expiry label (RFC 3339).
pub const LABEL_GC_EXPIRE: &str = "containerd.io/gc.expire";
/// Kubernetes pod name (CRI container labels).
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// Kubernetes pod namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Kubernetes pod uid.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// Kubernetes container name.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// CRI's kind label: `sandbox` or `container`.
pub const LABEL_CRI_KIND: &str = "io.cri-containerd.kind";

const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Uncompressed layer media types: their digest is their diffID.
const UNCOMPRESSED_LAYERS: [&str; 3] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
];

// ---------------------------------------------------------------------------------------------
// Decoding helpers

/// `sha256:<hex of sha256(data)>`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", ctrwatch_event::hex(&Sha256::digest(data)))
}

/// Whether `s` is a well-formed digest: `algorithm:encoded`, lowercase, sha256 with 64 hex
/// digits (other algorithms: `[a-z0-9]` names and `[a-zA-Z0-9=_-]` encodings).
pub fn is_digest(s: &str) -> bool {
    let Some((alg, enc)) = s.split_once(':') else {
        return false;
    };
    if alg == "sha256" {
        return enc.len() == 64
            && enc
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    }
    !alg.is_empty()
        && !enc.is_empty()
        && alg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
        && enc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
}

/// The chainIDs of a list of diffIDs: `chain[0] = diff[0]`,
/// `chain[i] = sha256(chain[i-1] + " " + diff[i])` (OCI image spec, "Layer ChainID").
pub fn chain_ids<S: AsRef<str>>(diff_ids: &[S]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.as_ref().to_owned(),
            Some(prev) => sha256_digest(format!("{prev} {}", d.as_ref()).as_bytes()),
        };
        out.push(next);
    }
    out
}

/// Splits a snapshotter key made by containerd's metadata store, `<namespace>/<seq>/<key>`.
pub fn parse_backend_key(key: &str) -> Option<(&str, u64, &str)> {
    let (ns, rest) = key.split_once('/')?;
    let (seq, user) = rest.split_once('/')?;
    if ns.is_empty() || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((ns, seq.parse().ok()?, user))
}

/// The chainID an unpack snapshot (`extract-<nanos>-<random> <chainID>`) becomes when
/// committed.
pub fn unpack_target(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("extract-")?;
    let (_, chain) = rest.rsplit_once(' ')?;
    is_digest(chain).then_some(chain)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------------
// The raw records

/// A snapshot's kind (snapshotter `metadata.db`, `kind`) and the byte stored there, if it is
/// one byte: an unknown kind is reported with its value.
fn snapshot_kind(b: Option<&[u8]>) -> (SnapshotKind, Option<u8>) {
    match b {
        Some([1]) => (SnapshotKind::View, Some(1)),
        Some([2]) => (SnapshotKind::Active, Some(2)),
        Some([3]) => (SnapshotKind::Committed, Some(3)),
        Some([x]) => (SnapshotKind::Unknown, Some(*x)),
        _ => (SnapshotKind::Unknown, None),
    }
}

/// A snapshot as the snapshotter's own database records it.
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSnapshot {
    /// The snapshotter's key: `<namespace>/<seq>/<key>` for snapshots made through containerd.
    pub key: String,
    /// The directory id: `snapshots/<id>`.
    pub id: u64,
    pub kind: SnapshotKind,
    /// The `kind` byte as stored (None: missing, or not one byte).
    pub kind_byte: Option<u8>,
    /// The parent's snapshotter key.
    pub parent: Option<String>,
    pub labels: Labels,
    pub size: Option<i64>,
    pub inodes: Option<i64>,
    pub created_at: Option<SystemTime>,
}

/// One snapshotter: its directory and database.
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default)]
pub struct SnapshotterState {
    pub name: String,
    pub root: PathBuf,
    /// Snapshotter key → snapshot.
    pub snapshots: BTreeMap<String, BackendSnapshot>,
    /// Directory id → snapshotter key.
    pub by_id: BTreeMap<u64, String>,
    /// Why the database could not be read, if it could not.
    pub error: Option<String>,
}

/// An OCI descriptor as stored in an image's `target`.
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Descriptor {
    pub digest: String,
    pub media_type: String,
    pub size: Option<i64>,
}

/// An image record (`v1/<ns>/images/<name>`).
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub target: Descriptor,
    pub labels: Labels,
    pub annotations: Labels,
    pub created_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
}

/// A container record (`v1/<ns>/containers/<id>`).
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Container {
    pub namespace: String,
    pub id: String,
    pub image: Option<String>,
    pub snapshotter: Option<String>,
    pub snapshot_key: Option<String>,
    pub runtime: Option<String>,
    pub sandbox_id: Option<String>,
    pub labels: Labels,
    #[serde(skip)]
    pub created_at: Option<SystemTime>,
    /// Names of its extensions (CRI keeps its own metadata in one:
    /// `io.cri-containerd.sandbox.metadata` / `io.cri-containerd.container.metadata`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
}

impl Container {
    /// The Kubernetes pod, from CRI's labels.
    pub fn pod(&self) -> Option<PodInfo> {
        pod_from_labels(&self.labels)
    }
}

/// A snapshot record in meta.db (`v1/<ns>/snapshots/<snapshotter>/<key>`).
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaSnapshot {
    /// The key clients use (a chainID for committed layers, a container id for rootfs).
    pub key: String,
    /// The snapshotter's key (`name`).
    pub name: Option<String>,
    /// The parent's client key.
    pub parent: Option<String>,
    pub children: Vec<String>,
    pub labels: Labels,
    pub created_at: Option<SystemTime>,
}

/// A content record (`v1/<ns>/content/blob/<digest>`).
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: Option<i64>,
    pub labels: Labels,
    pub created_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
}

/// An ingest record (`v1/<ns>/content/ingests/<ref>`).
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ingest {
    /// The client's ref.
    pub key: String,
    /// The content store's ref (`<ns>/<seq>/<ref>`); the ingest directory is its sha256.
    pub backend_ref: Option<String>,
    pub expected: Option<String>,
    pub expire_at: Option<SystemTime>,
}

/// A lease (`v1/<ns>/leases/<id>`).
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub labels: Labels,
    pub created_at: Option<SystemTime>,
    /// (snapshotter, client key).
    pub snapshots: Vec<(String, String)>,
    pub content: Vec<String>,
    pub ingests: Vec<String>,
    pub images: Vec<String>,
}

impl Lease {
    /// The `containerd.io/gc.expire` label (RFC 3339), if any.
    pub fn expires(&self) -> Option<&str> {
        self.labels.get(LABEL_GC_EXPIRE).map(String::as_str)
    }
}

/// A sandbox (`v1/<ns>/sandboxes/<id>`, containerd 1.7+).
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sandbox {
    pub id: String,
    pub sandboxer: Option<String>,
    pub runtime: Option<String>,
    pub labels: Labels,
    pub created_at: Option<SystemTime>,
    /// Names of its extensions (containerd 2's CRI needs `metadata` to recover the pod).
    pub extensions: Vec<String>,
}

/// Everything one namespace holds.
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
    pub images: BTreeMap<String, Image>,
    pub containers: BTreeMap<String, Container>,
    /// Snapshotter → client key → record.
    pub snapshots: BTreeMap<String, BTreeMap<String, MetaSnapshot>>,
    pub blobs: BTreeMap<String, Blob>,
    pub ingests: BTreeMap<String, Ingest>,
    pub leases: BTreeMap<String, Lease>,
    pub sandboxes: BTreeMap<String, Sandbox>,
}

impl BackendSnapshot {
    /// The kind for reports: `Committed`, `Active`, `View`, or `Unknown(<stored byte>)`.
    pub fn kind_label(&self) -> String {
        match self.kind {
            SnapshotKind::View => "View".into(),
            SnapshotKind::Active => "Active".into(),
            SnapshotKind::Committed => "Committed".into(),
            SnapshotKind::Unknown => format!("Unknown({})", self.kind_byte.unwrap_or(0)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Derived views

/// The pod of CRI's container labels (`io.kubernetes.*`); `None` without a pod name.
pub fn pod_from_labels(labels: &Labels) -> Option<PodInfo> {
    let name = labels.get(LABEL_POD_NAME)?.clone();
    Some(PodInfo {
        name,
        namespace: labels.get(LABEL_POD_NAMESPACE).cloned(),
        uid: labels.get(LABEL_POD_UID).cloned(),
        container_name: labels.get(LABEL_CONTAINER_NAME).cloned(),
        sandbox: labels.get(LABEL_CRI_KIND).map(String::as_str) == Some("sandbox"),
    })
}

/// What a snapshot directory is. See [`Model::snapshot_by_dir_id`].
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    pub snapshotter: String,
    pub dir_id: u64,
    /// The snapshotter's key.
    pub key: String,
    pub kind: SnapshotKind,
    /// The parent's snapshotter key.
    pub parent: Option<String>,
    /// Namespaces whose meta.db records point at this snapshot (from the key's prefix when
    /// none does).
    pub namespaces: Vec<String>,
    /// The client keys of those records (chainID, container id, ...).
    pub names: Vec<String>,
    /// The layer blob(s) unpacked into it (several when images with differently compressed
    /// blobs share the diff).
    pub layer_digest: Option<String>,
    pub layer_digests: Vec<String>,
    pub diff_id: Option<String>,
    /// For committed layers, the chainID (its key); for an unpack in progress, the chainID it
    /// will get.
    pub chain_id: Option<String>,
    /// Images (names, in `namespaces`) using it: for layers those whose chain contains it, for
    /// a container's rootfs the container's image.
    pub images: Vec<String>,
    pub container_id: Option<String>,
    pub pod: Option<PodInfo>,
    /// Labels of the meta.db record (and the snapshotter's own).
    pub labels: Labels,
    /// What was inferred rather than read, and why.
    pub notes: Vec<String>,
}

/// What a content blob is. See [`Model::blob`].
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BlobInfo {
    pub digest: String,
    /// From the descriptors referencing it (manifest layers/config, index entries, image
    /// targets).
    pub media_type: Option<String>,
    pub role: Option<BlobRole>,
    /// Recorded size (meta.db).
    pub size: Option<i64>,
    /// Namespaces with a record of it.
    pub namespaces: Vec<String>,
    /// Image names (any namespace) referencing it.
    pub images: Vec<String>,
    /// For layers: the uncompressed digest.
    pub diff_id: Option<String>,
    /// For layers: the chainIDs (snapshots) it is unpacked as.
    pub chain_ids: Vec<String>,
    /// Labels, all namespaces' records merged.
    pub labels: Labels,
    /// Whether any namespace has a record (false: only referenced, or an orphan).
    pub recorded: bool,
}

/// What the model knows about one layer position of one or more images.
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChainInfo {
    pub chain_id: String,
    pub diff_id: Option<String>,
    pub parent: Option<String>,
    pub layer_digests: BTreeSet<String>,
    /// (namespace, image name).
    pub images: BTreeSet<(String, String)>,
}

/// One layer of a resolved manifest.
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    pub digest: Option<String>,
    pub media_type: Option<String>,
    pub diff_id: Option<String>,
    pub chain_id: Option<String>,
}

/// A manifest reached from an image's target.
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ManifestInfo {
    pub digest: String,
    /// `os/arch[/variant]` from the index entry.
    pub platform: Option<String>,
    pub config: Option<String>,
    pub layers: Vec<LayerInfo>,
    /// How the layers and chainIDs were found (labels, content, snapshot chain).
    pub notes: Vec<String>,
}

/// An image with what its target resolves to.
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    pub namespace: String,
    pub name: String,
    pub target: Descriptor,
    pub manifests: Vec<ManifestInfo>,
    pub labels: Labels,
}

/// An ingest directory: `ingest/<dir>`.
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IngestInfo {
    pub dir: String,
    /// The content store's ref (from the `ref` file, or a meta.db record whose sha256 is `dir`).
    pub backend_ref: Option<String>,
    pub namespace: Option<String>,
    /// The client's ref.
    pub key: Option<String>,
    pub expected: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The model

/// What a containerd root's databases said at one moment. See the module docs.
#[allow(
    missing_docs,
    reason = "the fields are the record's bolt keys under containerd's names (bucket layout in the module doc)"
)]
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub layout: RootLayout,
    /// meta.db's transaction id when read.
    pub meta_txid: u64,
    /// `v1/version` (containerd's schema revision).
    pub schema_version: Option<i64>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub snapshotters: BTreeMap<String, SnapshotterState>,
    /// Damaged or inconsistent things skipped while reading (at most [`MAX_PROBLEMS`]).
    pub problems: Vec<String>,
    /// (snapshotter, snapshotter key) → (namespace, client key) of meta.db records.
    backend_refs: HashMap<(String, String), Vec<(String, String)>>,
    /// (namespace, snapshotter, client key) → container id.
    container_by_snapshot: HashMap<(String, String, String), String>,
    chains: BTreeMap<String, ChainInfo>,
    blobs: BTreeMap<String, BlobFacts>,
    images: BTreeMap<(String, String), Vec<ManifestInfo>>,
    /// Ingest directory → backend ref.
    ingest_dirs: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default)]
struct BlobFacts {
    media_types: BTreeSet<String>,
    roles: BTreeSet<BlobRole>,
    images: BTreeSet<(String, String)>,
    chain_ids: BTreeSet<String>,
    diff_id: Option<String>,
}

impl Model {
    /// Reads the root's databases with every plugin at its default place.
    pub fn load(root: &Path) -> Result<Model, ContainerdError> {
        Model::load_layout(&RootLayout::new(root))
    }

    /// Reads the databases of `layout` (snapshotters moved by `root_path` included).
    pub fn load_layout(layout: &RootLayout) -> Result<Model, ContainerdError> {
        if !layout.root.is_dir() {
            return Err(ContainerdError::NotADirectory(layout.root.clone()));
        }
        let meta_path = layout.meta_db();
        let meta = match open_bolt(layout, &meta_path) {
            Ok(db) => db,
            Err(BoltOpen::Missing) => return Err(ContainerdError::MissingMetadata(meta_path)),
            Err(BoltOpen::Unsafe(e)) => return Err(ContainerdError::Open(e)),
            Err(BoltOpen::Bolt(source)) => {
                return Err(ContainerdError::Bolt {
                    path: meta_path,
                    source,
                });
            }
        };
        let mut snaps = Vec::new();
        for (name, dir) in snapshotter_dirs(layout) {
            let path = dir.join(SNAPSHOTTER_DB);
            match open_bolt(layout, &path) {
                Ok(db) => snaps.push((name, dir, Ok(db))),
                Err(BoltOpen::Missing) => {}
                Err(BoltOpen::Unsafe(e)) => snaps.push((name, dir, Err(e.to_string()))),
                Err(BoltOpen::Bolt(e)) => {
                    snaps.push((name, dir, Err(format!("{}: {e}", escape_path(&path)))))
                }
            }
        }
        Ok(Model::build(layout, &meta, snaps))
    }

    /// Builds a model from databases already read (`snapshotters`: name, directory, database
    /// or why it could not be read). The content store is read from `layout` if present.
    pub fn build(
        layout: &RootLayout,
        meta: &Db,
        snapshotters: Vec<(String, PathBuf, Result<Db, String>)>,
    ) -> Model {
        let mut r = Reader::default();
        let (schema_version, namespaces) = read_meta(meta, &mut r);
        let mut states = BTreeMap::new();
        for (name, root, db) in snapshotters {
            let state = match db {
                Ok(db) => read_snapshotter(&name, root, &db, &mut r),
                Err(e) => {
                    r.note(format!("snapshotter {name}: {e}"));
                    SnapshotterState {
                        name: name.clone(),
                        root,
                        error: Some(e),
                        ..SnapshotterState::default()
                    }
                }
            };
            states.insert(name, state);
        }
        let mut model = Model {
            layout: layout.clone(),
            meta_txid: meta.txid(),
            schema_version,
            namespaces,
            snapshotters: states,
            ..Model::default()
        };
        model.index();
        let content = ContentStore::new(layout.root.clone());
        model.derive(&content, &mut r);
        model.ingest_dirs = scan_ingests(&layout.root, &mut r);
        for ns in model.namespaces.values() {
            for ing in ns.ingests.values() {
                if let Some(bref) = &ing.backend_ref {
                    let dir = ctrwatch_event::hex(&Sha256::digest(bref.as_bytes()));
                    model.ingest_dirs.entry(dir).or_insert_with(|| bref.clone());
                }
            }
        }
        model.problems = r.problems;
        model
    }

    fn index(&mut self) {
        for (ns_name, ns) in &self.namespaces {
            for (sn, recs) in &ns.snapshots {
                for (key, rec) in recs {
                    if let Some(name) = &rec.name {
                        self.backend_refs
                            .entry((sn.clone(), name.clone()))
                            .or_default()
                            .push((ns_name.clone(), key.clone()));
                    }
                }
            }
            for (id, c) in &ns.containers {
                if let (Some(sn), Some(key)) = (&c.snapshotter, &c.snapshot_key) {
                    self.container_by_snapshot
                        .insert((ns_name.clone(), sn.clone(), key.clone()), id.clone());
                }
            }
        }
    }

    /// What snapshot directory `snapshots/<id>` of `snapshotter` holds.
    pub fn snapshot_by_dir_id(&self, snapshotter: &str, id: u64) -> Option<SnapshotInfo> {
        let sn = self.snapshotters.get(snapshotter)?;
        let key = sn.by_id.get(&id)?;
        self.snapshot_by_key(snapshotter, key)
    }

    /// The meta.db records (namespace, client key) pointing at the snapshot with snapshotter
    /// key `key` (none: removed from meta.db, or not made through containerd's metadata).
    pub fn meta_records(&self, snapshotter: &str, key: &str) -> &[(String, String)] {
        self.backend_refs
            .get(&(snapshotter.to_owned(), key.to_owned()))
            .map_or(&[], Vec::as_slice)
    }

    /// What the snapshot with snapshotter key `key` holds.
    pub fn snapshot_by_key(&self, snapshotter: &str, key: &str) -> Option<SnapshotInfo> {
        let sn = self.snapshotters.get(snapshotter)?;
        let b = sn.snapshots.get(key)?;
        let mut notes = Vec::new();
        let refs = self
            .backend_refs
            .get(&(snapshotter.to_owned(), key.to_owned()))
            .cloned()
            .unwrap_or_default();
        let (namespaces, names): (Vec<String>, Vec<String>) = if refs.is_empty() {
            match parse_backend_key(key) {
                Some((ns, _, user)) => {
                    notes.push(
                        "no meta.db record points at this snapshot (removed, or being \
                         cleaned up); namespace and key taken from the snapshotter key"
                            .into(),
                    );
                    (vec![ns.to_owned()], vec![user.to_owned()])
                }
                None => {
                    notes.push("not made through containerd's metadata store".into());
                    (Vec::new(), Vec::new())
                }
            }
        } else {
            let mut ns: Vec<String> = refs.iter().map(|(n, _)| n.clone()).collect();
            ns.sort();
            ns.dedup();
            let mut names: Vec<String> = refs.iter().map(|(_, k)| k.clone()).collect();
            names.sort();
            names.dedup();
            (ns, names)
        };

        let mut labels = b.labels.clone();
        for (ns, k) in &refs {
            if let Some(rec) = self
                .namespaces
                .get(ns)
                .and_then(|n| n.snapshots.get(snapshotter))
                .and_then(|m| m.get(k))
            {
                labels.extend(rec.labels.iter().map(|(a, v)| (a.clone(), v.clone())));
            }
        }

        let in_namespaces = |images: &BTreeSet<(String, String)>| -> Vec<String> {
            let mut v: Vec<String> = images
                .iter()
                .filter(|(ns, _)| namespaces.is_empty() || namespaces.contains(ns))
                .map(|(_, n)| n.clone())
                .collect();
            v.sort();
            v.dedup();
            v
        };

        let mut info = SnapshotInfo {
            snapshotter: snapshotter.to_owned(),
            dir_id: b.id,
            key: key.to_owned(),
            kind: b.kind,
            parent: b.parent.clone(),
            namespaces: namespaces.clone(),
            names: names.clone(),
            layer_digest: None,
            layer_digests: Vec::new(),
            diff_id: None,
            chain_id: None,
            images: Vec::new(),
            container_id: None,
            pod: None,
            labels,
            notes: Vec::new(),
        };

        // The layer this holds (committed) or will hold (unpack in progress).
        let chain = match b.kind {
            SnapshotKind::Committed => names.iter().find(|n| is_digest(n)).cloned(),
            _ => names.iter().find_map(|n| unpack_target(n)).map(|c| {
                notes.push(format!(
                    "unpack in progress: becomes layer {c} when committed"
                ));
                c.to_owned()
            }),
        };
        if let Some(chain_id) = chain {
            match self.chains.get(&chain_id) {
                Some(ci) => {
                    info.layer_digests = ci.layer_digests.iter().cloned().collect();
                    info.diff_id = ci.diff_id.clone();
                    info.images = in_namespaces(&ci.images);
                }
                None => {
                    if b.parent.is_none() {
                        // chain[0] == diffID[0] by definition.
                        info.diff_id = Some(chain_id.clone());
                        notes.push(
                            "no image uses this layer; diffID is its chainID (a base layer)".into(),
                        );
                    } else {
                        notes.push("no image uses this layer".into());
                    }
                }
            }
            info.layer_digest = info.layer_digests.first().cloned();
            if info.layer_digests.len() > 1 {
                notes.push(format!(
                    "{} layer blobs unpack to this diff",
                    info.layer_digests.len()
                ));
            }
            info.chain_id = Some(chain_id);
        } else if b.kind != SnapshotKind::Committed {
            // A container's rootfs, or a view.
            // With no meta.db record, the (namespace, key) parsed from the snapshotter key.
            let pairs: Vec<(String, String)> = if refs.is_empty() {
                namespaces
                    .iter()
                    .cloned()
                    .zip(names.iter().cloned())
                    .collect()
            } else {
                refs.clone()
            };
            let container = pairs.iter().find_map(|(ns, k)| {
                self.container_by_snapshot
                    .get(&(ns.clone(), snapshotter.to_owned(), k.clone()))
                    .map(|id| (ns.clone(), id.clone()))
            });
            if let Some((ns, id)) = container {
                if let Some(c) = self.namespaces.get(&ns).and_then(|n| n.containers.get(&id)) {
                    info.pod = c.pod();
                    if let Some(img) = &c.image {
                        info.images = vec![img.clone()];
                    }
                }
                info.container_id = Some(id);
            } else {
                // Images whose top layer is this snapshot's parent.
                let parent_chain = b.parent.as_deref().and_then(|p| {
                    self.backend_refs
                        .get(&(snapshotter.to_owned(), p.to_owned()))
                        .and_then(|r| r.first().map(|(_, k)| k.clone()))
                        .or_else(|| parse_backend_key(p).map(|(_, _, k)| k.to_owned()))
                });
                if let Some(pc) = parent_chain {
                    let mut imgs = BTreeSet::new();
                    for ((ns, name), manifests) in &self.images {
                        let top = manifests.iter().any(|m| {
                            m.layers.last().and_then(|l| l.chain_id.as_deref()) == Some(&pc)
                        });
                        if top {
                            imgs.insert((ns.clone(), name.clone()));
                        }
                    }
                    info.images = in_namespaces(&imgs);
                    if !info.images.is_empty() {
                        notes.push(
                            "no container uses this snapshot; images are those whose top layer \
                             is its parent"
                                .into(),
                        );
                    }
                }
            }
        }
        info.notes = notes;
        Some(info)
    }

    /// What content blob `digest` is.
    pub fn blob(&self, digest: &str) -> Option<BlobInfo> {
        let facts = self.blobs.get(digest);
        let mut info = BlobInfo {
            digest: digest.to_owned(),
            ..BlobInfo::default()
        };
        for (ns_name, ns) in &self.namespaces {
            if let Some(b) = ns.blobs.get(digest) {
                info.recorded = true;
                info.namespaces.push(ns_name.clone());
                if info.size.is_none() {
                    info.size = b.size;
                }
                for (k, v) in &b.labels {
                    info.labels.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        if facts.is_none() && !info.recorded {
            return None;
        }
        if let Some(f) = facts {
            info.media_type = f.media_types.iter().next().cloned();
            info.role = f.roles.iter().next().copied();
            let mut images: Vec<String> = f.images.iter().map(|(_, n)| n.clone()).collect();
            images.sort();
            images.dedup();
            info.images = images;
            info.diff_id = f.diff_id.clone();
            info.chain_ids = f.chain_ids.iter().cloned().collect();
        }
        if info.diff_id.is_none() {
            info.diff_id = info.labels.get(LABEL_UNCOMPRESSED).cloned();
        }
        Some(info)
    }

    /// The container `id` (first namespace that has one).
    pub fn container(&self, id: &str) -> Option<&Container> {
        self.namespaces
            .values()
            .find_map(|ns| ns.containers.get(id))
    }

    /// The container `id` in `namespace`.
    pub fn container_in(&self, namespace: &str, id: &str) -> Option<&Container> {
        self.namespaces.get(namespace)?.containers.get(id)
    }

    /// Every image of every namespace, with what its target resolves to.
    pub fn images(&self) -> Vec<ImageInfo> {
        let mut out = Vec::new();
        for (ns_name, ns) in &self.namespaces {
            for (name, img) in &ns.images {
                out.push(ImageInfo {
                    namespace: ns_name.clone(),
                    name: name.clone(),
                    target: img.target.clone(),
                    manifests: self
                        .images
                        .get(&(ns_name.clone(), name.clone()))
                        .cloned()
                        .unwrap_or_default(),
                    labels: img.labels.clone(),
                });
            }
        }
        out
    }

    /// What the model knows about layer `chain_id`.
    pub fn chain(&self, chain_id: &str) -> Option<&ChainInfo> {
        self.chains.get(chain_id)
    }

    /// The ingest in directory `ingest/<dir>`.
    pub fn ingest(&self, dir: &str) -> Option<IngestInfo> {
        let bref = self.ingest_dirs.get(dir)?;
        let mut info = IngestInfo {
            dir: dir.to_owned(),
            backend_ref: Some(bref.clone()),
            ..IngestInfo::default()
        };
        for (ns_name, ns) in &self.namespaces {
            if let Some(ing) = ns
                .ingests
                .values()
                .find(|i| i.backend_ref.as_deref() == Some(bref))
            {
                info.namespace = Some(ns_name.clone());
                info.key = Some(ing.key.clone());
                info.expected = ing.expected.clone();
                return Some(info);
            }
        }
        if let Some((ns, _, key)) = parse_backend_key(bref) {
            info.namespace = Some(ns.to_owned());
            info.key = Some(key.to_owned());
        }
        Some(info)
    }

    /// The lease `id` in `namespace`.
    pub fn lease(&self, namespace: &str, id: &str) -> Option<&Lease> {
        self.namespaces.get(namespace)?.leases.get(id)
    }

    /// Leases (any namespace) holding blob `digest`.
    pub fn leases_holding_blob(&self, digest: &str) -> Vec<(&str, &Lease)> {
        let mut out = Vec::new();
        for (ns_name, ns) in &self.namespaces {
            for l in ns.leases.values() {
                if l.content.iter().any(|d| d == digest) {
                    out.push((ns_name.as_str(), l));
                }
            }
        }
        out
    }

    // -----------------------------------------------------------------------------------------
    // Derivation: images → manifests → layers → chainIDs.

    fn derive(&mut self, content: &ContentStore, r: &mut Reader) {
        // Digest-intrinsic labels (children, uncompressed digest) hold in every namespace.
        let mut merged: HashMap<String, Labels> = HashMap::new();
        for ns in self.namespaces.values() {
            for (d, b) in &ns.blobs {
                let e = merged.entry(d.clone()).or_default();
                for (k, v) in &b.labels {
                    if k.starts_with("containerd.io/gc.ref.content.") || k == LABEL_UNCOMPRESSED {
                        e.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        }
        let mut d = Deriver {
            content,
            merged,
            namespaces: &self.namespaces,
            json_cache: HashMap::new(),
            manifest_cache: HashMap::new(),
            blobs: BTreeMap::new(),
            r,
        };
        let mut images = BTreeMap::new();
        for (ns_name, ns) in d.namespaces {
            for (name, img) in &ns.images {
                let mut out = Vec::new();
                let image = (ns_name.clone(), name.clone());
                if img.target.digest.is_empty() {
                    d.r.note(format!("image {ns_name}/{name}: no target digest"));
                } else {
                    let desc = Desc {
                        digest: img.target.digest.clone(),
                        media_type: Some(img.target.media_type.clone()).filter(|m| !m.is_empty()),
                        platform: None,
                    };
                    d.resolve(ns_name, &image, &desc, 0, &mut Vec::new(), &mut out);
                }
                images.insert(image, out);
            }
        }
        let blobs = std::mem::take(&mut d.blobs);
        // Chains: from every resolved manifest.
        let mut chains: BTreeMap<String, ChainInfo> = BTreeMap::new();
        for (image, manifests) in &images {
            for m in manifests {
                let mut parent: Option<String> = None;
                for l in &m.layers {
                    let Some(c) = &l.chain_id else {
                        parent = None;
                        continue;
                    };
                    let e = chains.entry(c.clone()).or_insert_with(|| ChainInfo {
                        chain_id: c.clone(),
                        ..ChainInfo::default()
                    });
                    if e.diff_id.is_none() {
                        e.diff_id = l.diff_id.clone();
                    }
                    if e.parent.is_none() {
                        e.parent = parent.clone();
                    }
                    if let Some(ld) = &l.digest {
                        e.layer_digests.insert(ld.clone());
                    }
                    e.images.insert(image.clone());
                    parent = Some(c.clone());
                }
            }
        }
        self.blobs = blobs;
        self.chains = chains;
        self.images = images;
    }
}

/// Why a bolt file of an instance could not be read.
pub(crate) enum BoltOpen {
    /// It (or a directory on its way) does not exist.
    Missing,
    /// Not opened: a symlink on the way, not a regular file, ...
    Unsafe(OpenError),
    /// Opened, but not readable as a bolt database.
    Bolt(BoltError),
}

/// Reads the bolt file `path` of `layout`'s storage, opened below its anchor without following
/// a symlink and without blocking ([`crate::fsx`]).
pub(crate) fn open_bolt(layout: &RootLayout, path: &Path) -> Result<Db, BoltOpen> {
    let file = match open_file_beneath(layout.anchor_for(path), path) {
        Ok(f) => f,
        Err(e) if e.is_not_found() => return Err(BoltOpen::Missing),
        Err(e) => return Err(BoltOpen::Unsafe(e)),
    };
    Db::read_file(&file, path).map_err(BoltOpen::Bolt)
}

/// Which of `digests` some namespace of `layout`'s meta.db records now
/// (`v1/<ns>/content/blob/<digest>`): the database read again, a consistent copy without a
/// lock as for [`Model::load`], for a check that must not trust a model loaded earlier.
/// `None` if it cannot be read.
pub fn blobs_recorded_now(
    layout: &RootLayout,
    digests: &BTreeSet<String>,
) -> Option<BTreeSet<String>> {
    let db = open_bolt(layout, &layout.meta_db()).ok()?;
    let v1 = db.bucket_path(&[b"v1"]).ok()??;
    let mut out = BTreeSet::new();
    for e in v1.iter() {
        let Ok(Entry::Bucket(_, ns)) = e else {
            continue;
        };
        let Ok(Some(blobs)) = ns.bucket_path(&[b"content", b"blob"]) else {
            continue;
        };
        for d in digests {
            if matches!(blobs.bucket(d.as_bytes()), Ok(Some(_))) {
                out.insert(d.clone());
            }
        }
    }
    Some(out)
}

/// Where each snapshotter keeps its files: configured roots, then `io.containerd.snapshotter.v1.*`
/// directories under the root.
fn snapshotter_dirs(layout: &RootLayout) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = layout.snapshotter_roots.clone();
    if let Ok(rd) = fs::read_dir(&layout.root) {
        let mut found: Vec<(String, PathBuf)> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e
                    .file_name()
                    .to_str()?
                    .strip_prefix(SNAPSHOTTER_PREFIX)?
                    .to_owned();
                (!name.is_empty()).then(|| (name, e.path()))
            })
            .filter(|(n, _)| !out.iter().any(|(o, _)| o == n))
            .collect();
        found.sort();
        out.extend(found);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Reading the databases

#[derive(Default)]
struct Reader {
    problems: Vec<String>,
}

impl Reader {
    fn note(&mut self, msg: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(msg);
        } else if self.problems.len() == MAX_PROBLEMS {
            self.problems.push("(more problems not listed)".into());
        }
    }

    fn entries<'a>(&mut self, b: Bucket<'a>, ctx: &str) -> Vec<Entry<'a>> {
        let mut out = Vec::new();
        for e in b.iter() {
            match e {
                Ok(e) => out.push(e),
                Err(err) => self.note(format!("{ctx}: {err}")),
            }
        }
        out
    }

    fn buckets<'a>(&mut self, b: Bucket<'a>, ctx: &str) -> Vec<(&'a [u8], Bucket<'a>)> {
        self.entries(b, ctx)
            .into_iter()
            .filter_map(|e| match e {
                Entry::Bucket(k, b) => Some((k, b)),
                Entry::Value(..) => None,
            })
            .collect()
    }

    fn keys(&mut self, b: Option<Bucket<'_>>, ctx: &str) -> Vec<String> {
        match b {
            Some(b) => self
                .entries(b, ctx)
                .into_iter()
                .map(|e| lossy(e.key()))
                .collect(),
            None => Vec::new(),
        }
    }

    fn get<'a>(&mut self, b: Bucket<'a>, key: &str, ctx: &str) -> Option<&'a [u8]> {
        match b.get(key.as_bytes()) {
            Ok(v) => v,
            Err(e) => {
                self.note(format!("{ctx}/{key}: {e}"));
                None
            }
        }
    }

    fn string(&mut self, b: Bucket<'_>, key: &str, ctx: &str) -> Option<String> {
        self.get(b, key, ctx).map(lossy).filter(|s| !s.is_empty())
    }

    fn time(&mut self, b: Bucket<'_>, key: &str, ctx: &str) -> Option<SystemTime> {
        self.get(b, key, ctx).and_then(go_time)
    }

    fn varint(&mut self, b: Bucket<'_>, key: &str, ctx: &str) -> Option<i64> {
        let v = self.get(b, key, ctx)?;
        let n = varint(v);
        if n.is_none() {
            self.note(format!("{ctx}/{key}: bad varint {v:02x?}"));
        }
        n
    }

    fn sub<'a>(&mut self, b: Bucket<'a>, key: &str, ctx: &str) -> Option<Bucket<'a>> {
        match b.bucket(key.as_bytes()) {
            Ok(v) => v,
            Err(e) => {
                self.note(format!("{ctx}/{key}: {e}"));
                None
            }
        }
    }

    /// The string values of sub-bucket `name` (labels, annotations).
    fn map(&mut self, b: Bucket<'_>, name: &str, ctx: &str) -> Labels {
        let mut out = Labels::new();
        if let Some(lb) = self.sub(b, name, ctx) {
            for e in self.entries(lb, &format!("{ctx}/{name}")) {
                if let Entry::Value(k, v) = e {
                    out.insert(lossy(k), lossy(v));
                }
            }
        }
        out
    }
}

fn read_meta(db: &Db, r: &mut Reader) -> (Option<i64>, BTreeMap<String, Namespace>) {
    let mut out = BTreeMap::new();
    let v1 = match db.bucket_path(&[b"v1"]) {
        Ok(Some(b)) => b,
        Ok(None) => {
            r.note("meta.db: no v1 bucket (empty database)".into());
            return (None, out);
        }
        Err(e) => {
            r.note(format!("meta.db v1: {e}"));
            return (None, out);
        }
    };
    let mut version = None;
    for e in r.entries(v1, "v1") {
        match e {
            Entry::Value(b"version", v) => version = varint(v),
            Entry::Value(..) => {}
            Entry::Bucket(name, b) => {
                let ns = read_namespace(&lossy(name), b, r);
                out.insert(ns.name.clone(), ns);
            }
        }
    }
    (version, out)
}

fn read_namespace(name: &str, b: Bucket<'_>, r: &mut Reader) -> Namespace {
    let ctx = format!("v1/{name}");
    let mut ns = Namespace {
        name: name.to_owned(),
        labels: r.map(b, "labels", &ctx),
        ..Namespace::default()
    };

    if let Some(images) = r.sub(b, "images", &ctx) {
        let ctx = format!("{ctx}/images");
        for (k, ib) in r.buckets(images, &ctx) {
            let name = lossy(k);
            let ictx = format!("{ctx}/{name}");
            let target = match r.sub(ib, "target", &ictx) {
                Some(t) => {
                    let tctx = format!("{ictx}/target");
                    Descriptor {
                        digest: r.string(t, "digest", &tctx).unwrap_or_default(),
                        media_type: r.string(t, "mediatype", &tctx).unwrap_or_default(),
                        size: r.varint(t, "size", &tctx),
                    }
                }
                None => Descriptor::default(),
            };
            let img = Image {
                target,
                labels: r.map(ib, "labels", &ictx),
                annotations: r.map(ib, "annotations", &ictx),
                created_at: r.time(ib, "createdat", &ictx),
                updated_at: r.time(ib, "updatedat", &ictx),
                name: name.clone(),
            };
            ns.images.insert(name, img);
        }
    }

    if let Some(containers) = r.sub(b, "containers", &ctx) {
        let ctx = format!("{ctx}/containers");
        for (k, cb) in r.buckets(containers, &ctx) {
            let id = lossy(k);
            let cctx = format!("{ctx}/{id}");
            let runtime = r
                .sub(cb, "runtime", &cctx)
                .and_then(|rb| r.string(rb, "name", &cctx));
            let c = Container {
                namespace: name.to_owned(),
                image: r.string(cb, "image", &cctx),
                snapshotter: r.string(cb, "snapshotter", &cctx),
                snapshot_key: r.string(cb, "snapshotKey", &cctx),
                sandbox_id: r.string(cb, "sandboxid", &cctx),
                runtime,
                labels: r.map(cb, "labels", &cctx),
                created_at: r.time(cb, "createdat", &cctx),
                extensions: {
                    let eb = r.sub(cb, "extensions", &cctx);
                    r.keys(eb, &cctx)
                },
                id: id.clone(),
            };
            ns.containers.insert(id, c);
        }
    }

    if let Some(snaps) = r.sub(b, "snapshots", &ctx) {
        let ctx = format!("{ctx}/snapshots");
        for (sk, sb) in r.buckets(snaps, &ctx) {
            let sn = lossy(sk);
            let sctx = format!("{ctx}/{sn}");
            let mut m = BTreeMap::new();
            for (k, kb) in r.buckets(sb, &sctx) {
                let key = lossy(k);
                let kctx = format!("{sctx}/{key}");
                let children_b = r.sub(kb, "children", &kctx);
                let rec = MetaSnapshot {
                    name: r.string(kb, "name", &kctx),
                    parent: r.string(kb, "parent", &kctx),
                    children: r.keys(children_b, &kctx),
                    labels: r.map(kb, "labels", &kctx),
                    created_at: r.time(kb, "createdat", &kctx),
                    key: key.clone(),
                };
                m.insert(key, rec);
            }
            ns.snapshots.insert(sn, m);
        }
    }

    if let Some(content) = r.sub(b, "content", &ctx) {
        let ctx = format!("{ctx}/content");
        if let Some(blobs) = r.sub(content, "blob", &ctx) {
            let ctx = format!("{ctx}/blob");
            for (k, bb) in r.buckets(blobs, &ctx) {
                let digest = lossy(k);
                let bctx = format!("{ctx}/{digest}");
                let blob = Blob {
                    size: r.varint(bb, "size", &bctx),
                    labels: r.map(bb, "labels", &bctx),
                    created_at: r.time(bb, "createdat", &bctx),
                    updated_at: r.time(bb, "updatedat", &bctx),
                    digest: digest.clone(),
                };
                ns.blobs.insert(digest, blob);
            }
        }
        if let Some(ingests) = r.sub(content, "ingests", &ctx) {
            let ctx = format!("{ctx}/ingests");
            for (k, ib) in r.buckets(ingests, &ctx) {
                let key = lossy(k);
                let ictx = format!("{ctx}/{key}");
                let ing = Ingest {
                    backend_ref: r.string(ib, "ref", &ictx),
                    expected: r.string(ib, "expected", &ictx),
                    expire_at: r.time(ib, "expireat", &ictx),
                    key: key.clone(),
                };
                ns.ingests.insert(key, ing);
            }
        }
    }

    if let Some(leases) = r.sub(b, "leases", &ctx) {
        let ctx = format!("{ctx}/leases");
        for (k, lb) in r.buckets(leases, &ctx) {
            let id = lossy(k);
            let lctx = format!("{ctx}/{id}");
            let mut snapshots = Vec::new();
            if let Some(sb) = r.sub(lb, "snapshots", &lctx) {
                for (sk, kb) in r.buckets(sb, &lctx) {
                    let sn = lossy(sk);
                    for key in r.keys(Some(kb), &lctx) {
                        snapshots.push((sn.clone(), key));
                    }
                }
            }
            let content_b = r.sub(lb, "content", &lctx);
            let ingests_b = r.sub(lb, "ingests", &lctx);
            let images_b = r.sub(lb, "images", &lctx);
            let lease = Lease {
                labels: r.map(lb, "labels", &lctx),
                created_at: r.time(lb, "createdat", &lctx),
                snapshots,
                content: r.keys(content_b, &lctx),
                ingests: r.keys(ingests_b, &lctx),
                images: r.keys(images_b, &lctx),
                id: id.clone(),
            };
            ns.leases.insert(id, lease);
        }
    }

    if let Some(sandboxes) = r.sub(b, "sandboxes", &ctx) {
        let ctx = format!("{ctx}/sandboxes");
        for (k, sb) in r.buckets(sandboxes, &ctx) {
            let id = lossy(k);
            let sctx = format!("{ctx}/{id}");
            let runtime = r
                .sub(sb, "runtime", &sctx)
                .and_then(|rb| r.string(rb, "name", &sctx));
            let s = Sandbox {
                sandboxer: r.string(sb, "sandboxer", &sctx),
                runtime,
                labels: r.map(sb, "labels", &sctx),
                created_at: r.time(sb, "createdat", &sctx),
                extensions: {
                    let eb = r.sub(sb, "extensions", &sctx);
                    r.keys(eb, &sctx)
                },
                id: id.clone(),
            };
            ns.sandboxes.insert(id, s);
        }
    }
    ns
}

fn read_snapshotter(name: &str, root: PathBuf, db: &Db, r: &mut Reader) -> SnapshotterState {
    let mut st = SnapshotterState {
        name: name.to_owned(),
        root,
        ..SnapshotterState::default()
    };
    let ctx = format!("snapshotter {name}: v1/snapshots");
    let snaps = match db.bucket_path(&[b"v1", b"snapshots"]) {
        Ok(Some(b)) => b,
        Ok(None) => return st,
        Err(e) => {
            r.note(format!("{ctx}: {e}"));
            st.error = Some(e.to_string());
            return st;
        }
    };
    for (k, sb) in r.buckets(snaps, &ctx) {
        let key = lossy(k);
        let kctx = format!("{ctx}/{key}");
        let Some(id) = r.get(sb, "id", &kctx).and_then(uvarint) else {
            r.note(format!("{kctx}: no readable id"));
            continue;
        };
        let (kind, kind_byte) = snapshot_kind(r.get(sb, "kind", &kctx));
        let snap = BackendSnapshot {
            id,
            kind,
            kind_byte,
            parent: r.string(sb, "parent", &kctx),
            labels: r.map(sb, "labels", &kctx),
            size: r.get(sb, "size", &kctx).and_then(varint),
            inodes: r.get(sb, "inodes", &kctx).and_then(varint),
            created_at: r.time(sb, "createdat", &kctx),
            key: key.clone(),
        };
        if let Some(other) = st.by_id.insert(id, key.clone()) {
            r.note(format!(
                "snapshotter {name}: id {id} used by both {other:?} and {key:?}"
            ));
        }
        st.snapshots.insert(key, snap);
    }
    st
}

/// `ingest/<dir>/ref` of every ingest directory of the root (nothing followed out of it).
fn scan_ingests(root: &Path, r: &mut Reader) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let ingest = root.join(CONTENT_DIR).join("ingest");
    let Ok(entries) = list_beneath(root, &ingest) else {
        return out;
    };
    for (name, st) in entries.into_iter().take(MAX_INGEST_DIRS) {
        let Ok(dir) = String::from_utf8(name) else {
            continue;
        };
        if !st.is_dir() {
            continue;
        }
        let path = ingest.join(&dir).join("ref");
        match read_beneath(root, &path, 4096) {
            Ok(Some(b)) => {
                out.insert(dir, lossy(&b));
            }
            Ok(None) => r.note(format!("{}: larger than expected", escape_path(&path))),
            Err(err) if err.is_not_found() => {}
            Err(err) => r.note(err.to_string()),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The content store

/// The content store of a root, read without following a symlink out of the root.
struct ContentStore {
    root: PathBuf,
    dir: PathBuf,
}

impl ContentStore {
    fn new(root: PathBuf) -> ContentStore {
        ContentStore {
            dir: root.join(CONTENT_DIR),
            root,
        }
    }

    /// The blob file for `digest`, if the digest is well-formed (nothing else reaches the
    /// filesystem).
    fn path(&self, digest: &str) -> Option<PathBuf> {
        if !is_digest(digest) {
            return None;
        }
        let (alg, enc) = digest.split_once(':')?;
        Some(self.dir.join("blobs").join(alg).join(enc))
    }

    fn exists(&self, digest: &str) -> bool {
        self.path(digest)
            .is_some_and(|p| lstat_beneath(&self.root, &p).is_ok_and(|st| st.is_reg()))
    }

    /// The blob's JSON, verified against its digest (sha256); `None` if absent.
    fn json(&self, digest: &str, r: &mut Reader) -> Option<Value> {
        let path = self.path(digest)?;
        let bytes = match read_beneath(&self.root, &path, MAX_JSON_BLOB) {
            Ok(Some(b)) => b,
            Ok(None) => {
                r.note(format!(
                    "content {digest}: larger than {MAX_JSON_BLOB} bytes, not read"
                ));
                return None;
            }
            Err(e) if e.is_not_found() => return None,
            Err(e) => {
                r.note(format!("content {digest}: {e}"));
                return None;
            }
        };
        if digest.starts_with("sha256:") && sha256_digest(&bytes) != digest {
            r.note(format!(
                "content {digest}: file content does not match its digest (not used)"
            ));
            return None;
        }
        match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                r.note(format!("content {digest}: not JSON: {e}"));
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Resolving images

#[derive(Clone, Debug)]
struct Desc {
    digest: String,
    media_type: Option<String>,
    platform: Option<String>,
}

impl Desc {
    fn from_json(v: &Value) -> Option<Desc> {
        let digest = v.get("digest")?.as_str()?.to_owned();
        let platform = v.get("platform").and_then(|p| {
            let os = p.get("os")?.as_str()?;
            let arch = p.get("architecture")?.as_str()?;
            Some(match p.get("variant").and_then(Value::as_str) {
                Some(var) if !var.is_empty() => format!("{os}/{arch}/{var}"),
                _ => format!("{os}/{arch}"),
            })
        });
        Some(Desc {
            digest,
            media_type: v
                .get("mediaType")
                .and_then(Value::as_str)
                .map(str::to_owned),
            platform,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Index,
    Manifest,
    Unknown,
}

fn kind_of(media_type: Option<&str>) -> Kind {
    match media_type {
        Some(MT_OCI_INDEX | MT_DOCKER_LIST) => Kind::Index,
        Some(MT_OCI_MANIFEST | MT_DOCKER_MANIFEST) => Kind::Manifest,
        _ => Kind::Unknown,
    }
}

/// The values of labels `<prefix><n>`, ordered by n.
fn numbered(labels: Option<&Labels>, prefix: &str) -> Vec<String> {
    let Some(labels) = labels else {
        return Vec::new();
    };
    let mut v: Vec<(u64, String)> = labels
        .iter()
        .filter_map(|(k, val)| {
            let n = k.strip_prefix(prefix)?.parse::<u64>().ok()?;
            Some((n, val.clone()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, d)| d).collect()
}

struct Deriver<'a, 'r> {
    content: &'a ContentStore,
    merged: HashMap<String, Labels>,
    namespaces: &'a BTreeMap<String, Namespace>,
    json_cache: HashMap<String, Option<Value>>,
    manifest_cache: HashMap<(String, String), ManifestInfo>,
    blobs: BTreeMap<String, BlobFacts>,
    r: &'r mut Reader,
}

impl Deriver<'_, '_> {
    fn json(&mut self, digest: &str) -> Option<Value> {
        if let Some(v) = self.json_cache.get(digest) {
            return v.clone();
        }
        let v = self.content.json(digest, self.r);
        self.json_cache.insert(digest.to_owned(), v.clone());
        v
    }

    fn fact(
        &mut self,
        digest: &str,
        media_type: Option<&str>,
        role: Option<BlobRole>,
        image: &(String, String),
    ) -> &mut BlobFacts {
        let f = self.blobs.entry(digest.to_owned()).or_default();
        if let Some(mt) = media_type.filter(|m| !m.is_empty()) {
            f.media_types.insert(mt.to_owned());
        }
        if let Some(role) = role {
            f.roles.insert(role);
        }
        f.images.insert(image.clone());
        f
    }

    /// Whether a child blob is here: a record in the namespace or a file in the store.
    fn present(&self, ns: &str, digest: &str) -> bool {
        self.namespaces
            .get(ns)
            .is_some_and(|n| n.blobs.contains_key(digest))
            || self.content.exists(digest)
    }

    fn resolve(
        &mut self,
        ns: &str,
        image: &(String, String),
        desc: &Desc,
        depth: usize,
        path: &mut Vec<String>,
        out: &mut Vec<ManifestInfo>,
    ) {
        if depth > MAX_INDEX_DEPTH || path.contains(&desc.digest) {
            self.r.note(format!(
                "image {ns}/{}: index nesting too deep or cyclic at {}",
                image.1, desc.digest
            ));
            return;
        }
        let json = self.json(&desc.digest);
        let labels = self.merged.get(&desc.digest).cloned();
        let mut kind = kind_of(desc.media_type.as_deref());
        if kind == Kind::Unknown {
            // Sniff: the JSON's own mediaType, or its shape, or the labels.
            let j = json.as_ref();
            kind = match kind_of(j.and_then(|v| v.get("mediaType")).and_then(Value::as_str)) {
                Kind::Unknown if j.is_some_and(|v| v.get("manifests").is_some()) => Kind::Index,
                Kind::Unknown if j.is_some_and(|v| v.get("layers").is_some()) => Kind::Manifest,
                Kind::Unknown if !numbered(labels.as_ref(), LABEL_MANIFEST_PREFIX).is_empty() => {
                    Kind::Index
                }
                Kind::Unknown
                    if labels
                        .as_ref()
                        .is_some_and(|l| l.contains_key(LABEL_CONFIG)) =>
                {
                    Kind::Manifest
                }
                k => k,
            };
        }
        match kind {
            Kind::Index => {
                self.fact(
                    &desc.digest,
                    desc.media_type.as_deref(),
                    Some(BlobRole::Index),
                    image,
                );
                let children: Vec<Desc> = match &json {
                    Some(j) => j
                        .get("manifests")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Desc::from_json).collect())
                        .unwrap_or_default(),
                    None => numbered(labels.as_ref(), LABEL_MANIFEST_PREFIX)
                        .into_iter()
                        .map(|digest| Desc {
                            digest,
                            media_type: None,
                            platform: None,
                        })
                        .collect(),
                };
                path.push(desc.digest.clone());
                for child in children {
                    // Record every entry's media type; follow only what was fetched.
                    if let Some(mt) = child.media_type.as_deref() {
                        self.blobs
                            .entry(child.digest.clone())
                            .or_default()
                            .media_types
                            .insert(mt.to_owned());
                    }
                    if self.present(ns, &child.digest) {
                        self.resolve(ns, image, &child, depth + 1, path, out);
                    }
                }
                path.pop();
            }
            Kind::Manifest => {
                self.fact(
                    &desc.digest,
                    desc.media_type.as_deref(),
                    Some(BlobRole::Manifest),
                    image,
                );
                let key = (ns.to_owned(), desc.digest.clone());
                let mut m = match self.manifest_cache.get(&key) {
                    Some(m) => m.clone(),
                    None => {
                        let m = self.manifest(ns, &desc.digest, json.as_ref(), labels.as_ref());
                        self.manifest_cache.insert(key, m.clone());
                        m
                    }
                };
                m.platform = desc.platform.clone();
                if let Some(c) = &m.config {
                    self.fact(c, None, Some(BlobRole::Config), image);
                }
                for l in &m.layers {
                    if let Some(d) = &l.digest {
                        let f = self.fact(d, l.media_type.as_deref(), Some(BlobRole::Layer), image);
                        if let Some(c) = &l.chain_id {
                            f.chain_ids.insert(c.clone());
                        }
                        if f.diff_id.is_none() {
                            f.diff_id = l.diff_id.clone();
                        }
                    }
                }
                out.push(m);
            }
            Kind::Unknown => {
                self.fact(&desc.digest, desc.media_type.as_deref(), None, image);
                self.r.note(format!(
                    "image {ns}/{}: cannot tell what {} ({}) is: no content and no labels",
                    image.1,
                    desc.digest,
                    desc.media_type.as_deref().unwrap_or("no media type")
                ));
            }
        }
    }

    /// A manifest's config, layers, diffIDs and chainIDs.
    fn manifest(
        &mut self,
        ns: &str,
        digest: &str,
        json: Option<&Value>,
        labels: Option<&Labels>,
    ) -> ManifestInfo {
        let mut m = ManifestInfo {
            digest: digest.to_owned(),
            ..ManifestInfo::default()
        };
        // Config and layers: the manifest's JSON, else its gc.ref labels.
        match json {
            Some(j) => {
                m.config = j
                    .get("config")
                    .and_then(|c| c.get("digest"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if let Some(layers) = j.get("layers").and_then(Value::as_array) {
                    m.layers = layers
                        .iter()
                        .map(|l| LayerInfo {
                            digest: l.get("digest").and_then(Value::as_str).map(str::to_owned),
                            media_type: l
                                .get("mediaType")
                                .and_then(Value::as_str)
                                .map(str::to_owned),
                            ..LayerInfo::default()
                        })
                        .collect();
                }
                m.notes.push("layers from the manifest".into());
            }
            None => {
                m.config = labels.and_then(|l| l.get(LABEL_CONFIG)).cloned();
                m.layers = numbered(labels, LABEL_LAYER_PREFIX)
                    .into_iter()
                    .map(|d| LayerInfo {
                        digest: Some(d),
                        ..LayerInfo::default()
                    })
                    .collect();
                m.notes.push(
                    "manifest not in the content store: layers from its gc.ref labels".into(),
                );
            }
        }

        // diffIDs: the config's rootfs, else each layer's uncompressed label, else the digest of
        // an uncompressed layer.
        let config_json = m.config.clone().and_then(|c| self.json(&c));
        let from_config: Option<Vec<Option<String>>> = config_json.as_ref().and_then(|c| {
            c.get("rootfs")?
                .get("diff_ids")?
                .as_array()
                .map(|a| a.iter().map(|d| d.as_str().map(str::to_owned)).collect())
        });
        match from_config {
            Some(diffs) => {
                if diffs.len() != m.layers.len() {
                    self.r.note(format!(
                        "manifest {digest}: {} layers but config {} lists {} diffIDs",
                        m.layers.len(),
                        m.config.as_deref().unwrap_or("?"),
                        diffs.len()
                    ));
                    if m.layers.is_empty() {
                        m.layers = diffs.iter().map(|_| LayerInfo::default()).collect();
                    }
                }
                for (l, d) in m.layers.iter_mut().zip(diffs) {
                    l.diff_id = d;
                }
                m.notes.push("diffIDs from the image config".into());
            }
            None => {
                let mut guessed = false;
                for l in &mut m.layers {
                    let Some(d) = &l.digest else { continue };
                    l.diff_id = self
                        .merged
                        .get(d)
                        .and_then(|lab| lab.get(LABEL_UNCOMPRESSED))
                        .cloned();
                    if l.diff_id.is_none()
                        && l.media_type
                            .as_deref()
                            .is_some_and(|mt| UNCOMPRESSED_LAYERS.contains(&mt))
                    {
                        l.diff_id = Some(d.clone());
                        guessed = true;
                    }
                }
                m.notes.push(if guessed {
                    "diffIDs from layer labels; uncompressed layers' digests taken as diffIDs"
                        .into()
                } else {
                    "config not in the content store: diffIDs from layer labels".into()
                });
            }
        }

        // chainIDs while every diffID so far is known.
        let mut prev: Option<String> = None;
        for l in &mut m.layers {
            let Some(d) = &l.diff_id else { break };
            let c = match &prev {
                None => d.clone(),
                Some(p) => sha256_digest(format!("{p} {d}").as_bytes()),
            };
            l.chain_id = Some(c.clone());
            prev = Some(c);
        }

        // Fallback: the config's snapshot label names the top chainID; the snapshot parent
        // chain gives the rest, by position.
        if m.layers.iter().any(|l| l.chain_id.is_none()) {
            self.chain_from_snapshots(ns, &mut m);
        }
        m
    }

    fn chain_from_snapshots(&mut self, ns: &str, m: &mut ManifestInfo) {
        let Some(config) = &m.config else { return };
        let Some(nsd) = self.namespaces.get(ns) else {
            return;
        };
        let Some(labels) = nsd.blobs.get(config).map(|b| &b.labels) else {
            return;
        };
        for (k, top) in labels {
            let Some(sn) = k.strip_prefix(LABEL_SNAPSHOT_PREFIX) else {
                continue;
            };
            let Some(recs) = nsd.snapshots.get(sn) else {
                continue;
            };
            let mut chain = vec![top.clone()];
            let mut cur = top.clone();
            while let Some(p) = recs.get(&cur).and_then(|r| r.parent.clone()) {
                if chain.len() > m.layers.len() || chain.contains(&p) {
                    break;
                }
                chain.push(p.clone());
                cur = p;
            }
            if !recs.contains_key(top) || chain.len() != m.layers.len() {
                continue;
            }
            chain.reverse();
            for (l, c) in m.layers.iter_mut().zip(chain) {
                match &l.chain_id {
                    Some(known) if *known != c => self.r.note(format!(
                        "manifest {}: chainID {known} computed, snapshot chain says {c}",
                        m.digest
                    )),
                    Some(_) => {}
                    None => l.chain_id = Some(c),
                }
            }
            if let Some(first) = m.layers.first_mut()
                && first.diff_id.is_none()
            {
                first.diff_id = first.chain_id.clone();
            }
            m.notes.push(format!(
                "chainIDs from the {sn} snapshot chain under {LABEL_SNAPSHOT_PREFIX}{sn} (by position)"
            ));
            return;
        }
    }
}

#[cfg(test)]
mod tests;
