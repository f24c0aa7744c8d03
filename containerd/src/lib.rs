//! containerd's storage: where it is ([`discovery`]), what a path in it is ([`paths`]), and
//! what its databases say about it ([`metadata`]). See `docs/containerd.md`.
//!
//! Everything here only reads, and never takes a lock: containerd holds an exclusive `flock`
//! on its bolt files while it runs, and a reader that waited for it (or held one) would block
//! containerd or be blocked by it. The `bolt` crate copies a consistent snapshot instead.

pub mod discovery;
pub mod fsx;
pub mod go;
pub mod metadata;
pub mod paths;
pub mod verdict;

use std::path::PathBuf;

pub use discovery::{
    Discovery, DiscoveryEnv, Instance, Refusal, SnapshotterRoot, describe, discover, discover_all,
    log_refusals, watch_roots,
};
pub use metadata::{
    BlobInfo, BlobRole, ChainInfo, Container, ImageInfo, Model, PodInfo, SnapshotInfo, SnapshotKind,
};
pub use paths::{
    MetadataFile, PathClass, RootLayout, SnapshotArea, SnapshotLayout, classify_path, snapshot_dir,
    snapshot_tree, snapshots_dir,
};

/// Why a containerd root could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// The root is missing or is not a directory.
    #[error("{}: not a directory (not a containerd root)", ctrwatch_event::escape_path(.0))]
    NotADirectory(PathBuf),
    /// The root has no `io.containerd.metadata.v1.bolt/meta.db` (containerd never started
    /// with it, or it was removed).
    #[error("{}: no metadata database here (containerd has not run with this root?)", ctrwatch_event::escape_path(.0))]
    MissingMetadata(PathBuf),
    /// A bolt file was not opened: a symlink on its way (it could lead out of the root), or
    /// not a regular file.
    #[error(transparent)]
    Open(#[from] crate::fsx::OpenError),
    /// A bolt file could not be read or is damaged.
    #[error(
        "{}: cannot read bolt database: {source}",
        ctrwatch_event::escape_path(path)
    )]
    Bolt {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: bolt::BoltError,
    },
}
