//! An event's place in containerd's storage, and whose business it was to change it.

use serde::{Deserialize, Serialize};

use crate::text::PathBytes;

/// What part of containerd's storage a path is in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    /// A snapshot's files (a layer, or a container's writable layer).
    Snapshot,
    /// A snapshot directory being made or removed (`snapshots/new-*`, `rm-*`).
    SnapshotTemp,
    /// A content blob.
    Blob,
    /// A download in progress.
    Ingest,
    /// One of the bolt databases.
    Metadata,
    /// A temporary mount (layers are unpacked through them).
    Tmpmount,
    /// A task's runtime state (bundle, rootfs mount point).
    RuntimeState,
    /// Anything else under the root.
    #[default]
    Other,
}

impl StorageKind {
    /// The name in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            StorageKind::Snapshot => "snapshot",
            StorageKind::SnapshotTemp => "snapshot_temp",
            StorageKind::Blob => "blob",
            StorageKind::Ingest => "ingest",
            StorageKind::Metadata => "metadata",
            StorageKind::Tmpmount => "tmpmount",
            StorageKind::RuntimeState => "runtime_state",
            StorageKind::Other => "other",
        }
    }
}

/// A snapshot's kind, from the snapshotter's own database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// A read-only view.
    View,
    /// Writable: a container's layer, or a layer being unpacked.
    Active,
    /// A committed, read-only layer.
    Committed,
    /// Missing, or a value this version does not know.
    Unknown,
}

impl SnapshotKind {
    /// The name in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            SnapshotKind::View => "view",
            SnapshotKind::Active => "active",
            SnapshotKind::Committed => "committed",
            SnapshotKind::Unknown => "unknown",
        }
    }
}

/// What role a content blob plays in the images referencing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobRole {
    /// An image index (manifest list).
    Index,
    /// An image manifest.
    Manifest,
    /// An image config.
    Config,
    /// A layer tar.
    Layer,
}

impl BlobRole {
    /// The name in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            BlobRole::Index => "index",
            BlobRole::Manifest => "manifest",
            BlobRole::Config => "config",
            BlobRole::Layer => "layer",
        }
    }
}

/// Whose business the change was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The containerd instance that owns the root (or a writer the operator trusts).
    Owner,
    /// A container writing its own writable layer.
    Container,
    /// Anyone else.
    #[default]
    Foreign,
}

impl Verdict {
    /// The name in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Owner => "owner",
            Verdict::Container => "container",
            Verdict::Foreign => "foreign",
        }
    }
}

/// A Kubernetes pod, from CRI's container labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodInfo {
    /// `io.kubernetes.pod.name`.
    pub name: String,
    /// `io.kubernetes.pod.namespace`.
    pub namespace: Option<String>,
    /// `io.kubernetes.pod.uid`.
    pub uid: Option<String>,
    /// `io.kubernetes.container.name` (absent for the sandbox).
    pub container_name: Option<String>,
    /// The pod's sandbox (pause) container.
    pub sandbox: bool,
}

/// An event's place in containerd's storage (events under a containerd root only). Unknown
/// fields are absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerdView {
    /// The instance's root.
    pub root: PathBytes,
    /// What part of the storage.
    pub kind: StorageKind,
    /// containerd namespace (`k8s.io`, `default`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The snapshotter (`overlayfs`, `native`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshotter: Option<String>,
    /// The snapshot directory's id (`snapshots/<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<u64>,
    /// The client's key (a chainID for a layer, the container id for a rootfs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_key: Option<String>,
    /// Committed, active or view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_kind: Option<SnapshotKind>,
    /// The layer's blob digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_digest: Option<String>,
    /// The layer's chainID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<String>,
    /// Images using it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// The container using it (a rootfs) or owning the runtime state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The pod of that container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodInfo>,
    /// The blob's digest (blobs, ingests: the expected one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_digest: Option<String>,
    /// What the blob is to its images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_role: Option<BlobRole>,
    /// The ingest's ref.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_ref: Option<String>,
    /// The path inside the layer or container filesystem (`/pause`), or inside the
    /// directory the kind names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBytes>,
    /// The mapping comes from metadata that has since changed (the snapshot was removed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// This object describes the event's `new_path`, not its `path`: a rename or link from
    /// elsewhere into a committed layer or the metadata changed the destination, so the
    /// destination is what is judged (and `path` above is inside it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub of_new_path: bool,
    /// Whose business the change was.
    pub verdict: Verdict,
    /// Why (names the process and containerd's pid, or the trust rule).
    pub reason: String,
}

impl ContainerdView {
    /// A committed layer's files: what no process but containerd's unpacker may change.
    pub fn is_committed_layer(&self) -> bool {
        self.kind == StorageKind::Snapshot && self.snapshot_kind == Some(SnapshotKind::Committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_with_the_documented_names() -> Result<(), serde_json::Error> {
        let v = ContainerdView {
            root: PathBytes(b"/var/lib/containerd".to_vec()),
            kind: StorageKind::Snapshot,
            snapshotter: Some("overlayfs".into()),
            snapshot_id: Some(1),
            snapshot_kind: Some(SnapshotKind::Committed),
            images: vec!["docker.io/library/pause:3.6".into()],
            path: Some(PathBytes(b"/pause".to_vec())),
            verdict: Verdict::Foreign,
            reason: "pid 12 comm rm (/usr/bin/rm)".into(),
            ..Default::default()
        };
        let json = serde_json::to_string(&v)?;
        assert_eq!(
            json,
            r#"{"root":"/var/lib/containerd","kind":"snapshot","snapshotter":"overlayfs","snapshot_id":1,"snapshot_kind":"committed","images":["docker.io/library/pause:3.6"],"path":"/pause","verdict":"foreign","reason":"pid 12 comm rm (/usr/bin/rm)"}"#
        );
        let back: ContainerdView = serde_json::from_str(&json)?;
        assert_eq!(back, v);
        assert!(v.is_committed_layer());
        for k in [StorageKind::SnapshotTemp, StorageKind::RuntimeState] {
            assert_eq!(serde_json::to_string(&k)?, format!("\"{}\"", k.name()));
        }
        for k in [
            SnapshotKind::View,
            SnapshotKind::Active,
            SnapshotKind::Committed,
            SnapshotKind::Unknown,
        ] {
            assert_eq!(serde_json::to_string(&k)?, format!("\"{}\"", k.name()));
        }
        for r in [
            BlobRole::Index,
            BlobRole::Manifest,
            BlobRole::Config,
            BlobRole::Layer,
        ] {
            assert_eq!(serde_json::to_string(&r)?, format!("\"{}\"", r.name()));
        }
        Ok(())
    }
}
