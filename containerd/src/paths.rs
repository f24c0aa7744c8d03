//! Where a path under a containerd root falls: a snapshot's files, a content blob, an ingest,
//! a metadata database, a temporary mount, a task's runtime state, or something else.
//!
//! Purely lexical: nothing is read from disk, so it can run on every event. The path is
//! expected to be absolute and canonical (see `roots::RootSet::canonical_path`); `.`, `..` and
//! repeated slashes are folded anyway.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Plugin directory of the content store, under the root.
pub const CONTENT_DIR: &str = "io.containerd.content.v1.content";
/// Plugin directory of the metadata store, under the root.
pub const METADATA_DIR: &str = "io.containerd.metadata.v1.bolt";
/// The metadata database's file name.
pub const META_DB: &str = "meta.db";
/// Prefix of snapshotter plugin directories (`io.containerd.snapshotter.v1.overlayfs`, ...).
pub const SNAPSHOTTER_PREFIX: &str = "io.containerd.snapshotter.v1.";
/// A snapshotter's own database file name (in its root).
pub const SNAPSHOTTER_DB: &str = "metadata.db";
/// Runtime v2 task directories (bundles under the state dir, work dirs under the root).
pub const TASK_V2_DIR: &str = "io.containerd.runtime.v2.task";
/// The old runtime v1 (`io.containerd.runtime.v1.linux`), same shape.
pub const TASK_V1_DIR: &str = "io.containerd.runtime.v1.linux";
/// Temporary mounts (layers are unpacked through them), under the root.
pub const TMPMOUNTS_DIR: &str = "tmpmounts";
/// A snapshotter's directory of committed snapshots, by id (`<snapshotter root>/snapshots/<id>`).
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// An overlay snapshot's tree, below `snapshots/<id>` ([`SnapshotLayout::Overlay`]).
const OVERLAY_TREE: &str = "fs";
/// An overlay snapshot's kernel scratch directory (overlayfs' workdir), below `snapshots/<id>`.
const OVERLAY_WORK: &str = "work";

/// The paths one containerd instance uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RootLayout {
    /// `root` (default `/var/lib/containerd`).
    pub root: PathBuf,
    /// `state` (default `/run/containerd`), if known.
    pub state: Option<PathBuf>,
    /// Snapshotters whose directory is not `<root>/io.containerd.snapshotter.v1.<name>`
    /// (`root_path` in the plugin's configuration): (name, directory).
    pub snapshotter_roots: Vec<(String, PathBuf)>,
}

impl RootLayout {
    /// A layout with every plugin at its default place under `root` and no known state dir.
    pub fn new(root: impl Into<PathBuf>) -> RootLayout {
        RootLayout {
            root: root.into(),
            state: None,
            snapshotter_roots: Vec::new(),
        }
    }

    /// Sets the state directory.
    pub fn with_state(mut self, state: impl Into<PathBuf>) -> RootLayout {
        self.state = Some(state.into());
        self
    }

    /// Sets a snapshotter's directory (its `root_path`).
    pub fn with_snapshotter_root(mut self, name: &str, dir: impl Into<PathBuf>) -> RootLayout {
        let dir = dir.into();
        self.snapshotter_roots.retain(|(n, _)| n != name);
        self.snapshotter_roots.push((name.to_owned(), dir));
        self
    }

    /// The directory nothing below is followed from, for a path of this instance's storage:
    /// the configured snapshotter directory (`root_path`) holding `path`, else the root. Both
    /// come from the operator or a trusted config, and may be symlinks themselves; anything
    /// under them is opened without following symlinks ([`crate::fsx`]).
    pub fn anchor_for(&self, path: &Path) -> &Path {
        self.snapshotter_roots
            .iter()
            .map(|(_, dir)| dir.as_path())
            .filter(|dir| path.starts_with(dir))
            .max_by_key(|dir| dir.as_os_str().len())
            .unwrap_or(&self.root)
    }

    /// `<root>/io.containerd.metadata.v1.bolt/meta.db`.
    pub fn meta_db(&self) -> PathBuf {
        self.root.join(METADATA_DIR).join(META_DB)
    }

    /// `<root>/io.containerd.content.v1.content`.
    pub fn content_dir(&self) -> PathBuf {
        self.root.join(CONTENT_DIR)
    }

    /// A snapshotter's directory: its configured `root_path`, else the default under the root.
    pub fn snapshotter_root(&self, name: &str) -> PathBuf {
        self.snapshotter_roots
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| self.root.join(format!("{SNAPSHOTTER_PREFIX}{name}")))
    }
}

/// Which part of a snapshot directory a path is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum SnapshotArea {
    /// The snapshot's file tree (overlay: `<id>/fs`, the layer or a container's upperdir;
    /// native: `<id>` itself). `inner_path` is the path as seen inside it, starting with `/`.
    Fs,
    /// Overlay's `<id>/work` (kernel scratch space, only for active snapshots). `inner_path` is
    /// relative to `work`, starting with `/` (empty for `work` itself).
    Work,
    /// The `<id>` directory itself (empty `inner_path`) or another entry directly in it, or a
    /// snapshotter whose layout is not known (then `inner_path` is everything below `<id>`).
    Dir,
}

/// Which bolt database.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum MetadataFile {
    /// `io.containerd.metadata.v1.bolt/meta.db`.
    Containerd,
    /// A snapshotter's `metadata.db`.
    Snapshotter(String),
}

/// What a path under a containerd root is. See [`classify_path`].
#[allow(
    missing_docs,
    reason = "the fields are the path's parts, named as in the layout table above"
)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathClass {
    /// Inside snapshot directory `snapshots/<dir_id>` of a snapshotter.
    SnapshotFile {
        snapshotter: String,
        dir_id: u64,
        area: SnapshotArea,
        /// See [`SnapshotArea`]; raw bytes (file names need not be UTF-8).
        inner_path: Vec<u8>,
    },
    /// A snapshot directory being made (`snapshots/new-NNN`, renamed to `<id>` when ready) or
    /// removed (`snapshots/rm-<id>`), or anything else in `snapshots/` that is not a number.
    SnapshotTemp {
        snapshotter: String,
        dir: Vec<u8>,
        /// Below `dir`, starting with `/`; empty for `dir` itself.
        inner_path: Vec<u8>,
    },
    /// `blobs/<algorithm>/<encoded>` in the content store: `digest` is `algorithm:encoded`.
    Blob { digest: String },
    /// `ingest/<dir>` (`dir` is the sha256 hex of the ingest's backend ref) or a file in it
    /// (`ref`, `data`, `total`, `startedat`, `updatedat`).
    Ingest { dir: String, file: Option<Vec<u8>> },
    /// One of the bolt databases.
    Metadata { which: MetadataFile },
    /// Under `<root>/tmpmounts` (`containerd-mount<N>`, where base layers are unpacked).
    Tmpmount { inner_path: Vec<u8> },
    /// A task's directory: `io.containerd.runtime.v2.task/<namespace>/<container_id>/...`
    /// under the state dir (the bundle: `config.json`, `rootfs` the merged overlay, ...) or
    /// under the root (the task's work dir).
    RuntimeState {
        namespace: String,
        container_id: String,
        /// Below the task directory, starting with `/`; empty for the directory itself.
        inner_path: Vec<u8>,
        /// Under the state dir (true) or the root (false).
        under_state: bool,
    },
    /// Anything else (the root itself, plugin directories, other plugins' files, paths outside).
    Other,
}

/// Where a snapshotter keeps a snapshot's files: the one place that knows each snapshotter's
/// directory layout. The store's inner paths (`/pause` in every snapshot), the event's
/// `containerd.path`, and the audit's snapshot and layer checks all ask here.
///
/// - **Overlay** (overlayfs, fuse-overlayfs, stargz, nydus): `snapshots/<id>/fs` is the tree
///   (a layer, or a container's upperdir), `snapshots/<id>/work` the kernel's scratch.
/// - **Direct** (native, btrfs): `snapshots/<id>` is the tree itself (a copy of the parent
///   plus the layer; on btrfs a subvolume). btrfs keeps its active snapshots in
///   `active/<id>` and views in `view/<id>`; only committed ones are under `snapshots/`.
/// - **Unknown**: any other snapshotter, for example zfs (its datasets are mounted at
///   `<root>/<id>`, not under `snapshots/`) or devmapper and blockfile (block devices):
///   nothing below `snapshots/<id>` is taken for a tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotLayout {
    /// `snapshots/<id>/fs` and `snapshots/<id>/work`.
    #[default]
    Overlay,
    /// `snapshots/<id>` is the tree.
    Direct,
    /// Not known: no tree below `snapshots/<id>`.
    Unknown,
}

impl SnapshotLayout {
    /// The layout of the snapshotter called `name` (its plugin name: `overlayfs`, `native`…).
    pub fn of(name: &str) -> SnapshotLayout {
        SnapshotLayout::of_name(name.as_bytes())
    }

    /// [`SnapshotLayout::of`] for a name as bytes (a path component), without allocating.
    pub fn of_name(name: &[u8]) -> SnapshotLayout {
        let has = |needle: &[u8]| name.windows(needle.len()).any(|w| w == needle);
        match name {
            b"native" | b"btrfs" => SnapshotLayout::Direct,
            b"stargz" | b"nydus" => SnapshotLayout::Overlay,
            _ if has(b"overlay") => SnapshotLayout::Overlay,
            _ => SnapshotLayout::Unknown,
        }
    }

    /// The directory below `snapshots/<id>` that is the snapshot's tree: `Some("fs")`,
    /// `Some("")` (the directory itself), `None` when the layout is unknown.
    pub fn tree_subdir(self) -> Option<&'static str> {
        match self {
            SnapshotLayout::Overlay => Some(OVERLAY_TREE),
            SnapshotLayout::Direct => Some(""),
            SnapshotLayout::Unknown => None,
        }
    }
}

/// A snapshotter's snapshots: `<snapshotter root>/snapshots`.
pub fn snapshots_dir(snapshotter_root: &Path) -> PathBuf {
    snapshotter_root.join(SNAPSHOTS_DIR)
}

/// A snapshot's directory: `<snapshotter root>/snapshots/<id>`.
pub fn snapshot_dir(snapshotter_root: &Path, id: u64) -> PathBuf {
    snapshots_dir(snapshotter_root).join(id.to_string())
}

/// A snapshot's tree (what its mount shows): `<root>/snapshots/<id>/fs` for an overlay
/// snapshotter, `<root>/snapshots/<id>` for a direct one, `None` when the layout is unknown.
pub fn snapshot_tree(snapshotter_root: &Path, snapshotter: &str, id: u64) -> Option<PathBuf> {
    let dir = snapshot_dir(snapshotter_root, id);
    match SnapshotLayout::of(snapshotter).tree_subdir()? {
        "" => Some(dir),
        sub => Some(dir.join(sub)),
    }
}

/// Splits a path into its components, folding `.`, `..` and repeated slashes lexically.
fn components(path: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// The components of `path` below `base`, if `path` is `base` or under it.
fn below<'a>(path: &[&'a [u8]], base: &Path) -> Option<Vec<&'a [u8]>> {
    let base = components(base.as_os_str().as_bytes());
    if path.len() < base.len() || path.iter().zip(&base).any(|(a, b)| a != b) {
        return None;
    }
    path.get(base.len()..).map(<[_]>::to_vec)
}

/// `/a/b/c` from components (empty for none).
fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    out
}

/// A decimal snapshot id as containerd writes it (no sign, no leading zeros but "0").
fn parse_id(name: &[u8]) -> Option<u64> {
    if name.is_empty() || name.len() > 20 || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if name.len() > 1 && name.first() == Some(&b'0') {
        return None;
    }
    std::str::from_utf8(name).ok()?.parse().ok()
}

fn utf8(b: &[u8]) -> Option<String> {
    std::str::from_utf8(b).ok().map(str::to_owned)
}

/// Classifies `path` (absolute, bytes as the kernel reported them) against `layout`.
pub fn classify_path(layout: &RootLayout, path: &[u8]) -> PathClass {
    let comps = components(path);

    // Snapshotters moved out of the root first: their directory may be anywhere.
    for (name, dir) in &layout.snapshotter_roots {
        if let Some(rest) = below(&comps, dir) {
            return classify_snapshotter(name, &rest);
        }
    }
    if let Some(state) = &layout.state
        && let Some(rest) = below(&comps, state)
    {
        return classify_task(&rest, true);
    }
    let Some(rest) = below(&comps, &layout.root) else {
        return PathClass::Other;
    };
    let Some((&first, rest)) = rest.split_first() else {
        return PathClass::Other;
    };
    if first == CONTENT_DIR.as_bytes() {
        return classify_content(rest);
    }
    if first == METADATA_DIR.as_bytes() {
        return match rest {
            [f] if *f == META_DB.as_bytes() => PathClass::Metadata {
                which: MetadataFile::Containerd,
            },
            _ => PathClass::Other,
        };
    }
    if first == TMPMOUNTS_DIR.as_bytes() {
        return PathClass::Tmpmount {
            inner_path: join(rest),
        };
    }
    if first == TASK_V2_DIR.as_bytes() || first == TASK_V1_DIR.as_bytes() {
        return classify_task_below(rest, false);
    }
    if let Some(name) = first.strip_prefix(SNAPSHOTTER_PREFIX.as_bytes())
        && let Some(name) = utf8(name).filter(|n| !n.is_empty())
        // A snapshotter with a configured root_path does not use this directory.
        && !layout.snapshotter_roots.iter().any(|(n, _)| *n == name)
    {
        return classify_snapshotter(&name, rest);
    }
    PathClass::Other
}

fn classify_content(rest: &[&[u8]]) -> PathClass {
    match rest {
        [b"blobs", alg, enc] => match (utf8(alg), utf8(enc)) {
            (Some(alg), Some(enc)) => PathClass::Blob {
                digest: format!("{alg}:{enc}"),
            },
            _ => PathClass::Other,
        },
        [b"ingest", dir, tail @ ..] => match utf8(dir) {
            Some(dir) => PathClass::Ingest {
                dir,
                file: (!tail.is_empty()).then(|| {
                    // Files sit directly in the ingest dir; deeper paths keep their tail.
                    let j = join(tail);
                    j.get(1..).map(<[u8]>::to_vec).unwrap_or_default()
                }),
            },
            None => PathClass::Other,
        },
        _ => PathClass::Other,
    }
}

fn classify_snapshotter(name: &str, rest: &[&[u8]]) -> PathClass {
    match rest {
        [f] if *f == SNAPSHOTTER_DB.as_bytes() => PathClass::Metadata {
            which: MetadataFile::Snapshotter(name.to_owned()),
        },
        [snapshots, dir, tail @ ..] if *snapshots == SNAPSHOTS_DIR.as_bytes() => {
            match parse_id(dir) {
                Some(dir_id) => {
                    let layout = SnapshotLayout::of(name);
                    // The tree's root is "/" (its files join below it).
                    let tree = |inner: &[&[u8]]| {
                        let j = join(inner);
                        (
                            SnapshotArea::Fs,
                            if j.is_empty() { b"/".to_vec() } else { j },
                        )
                    };
                    let (area, inner_path) = match (layout.tree_subdir(), tail) {
                        (Some(""), inner) => tree(inner),
                        (Some(sub), [first, inner @ ..]) if *first == sub.as_bytes() => tree(inner),
                        (_, [first, inner @ ..])
                            if layout == SnapshotLayout::Overlay
                                && *first == OVERLAY_WORK.as_bytes() =>
                        {
                            (SnapshotArea::Work, join(inner))
                        }
                        (_, inner) => (SnapshotArea::Dir, join(inner)),
                    };
                    PathClass::SnapshotFile {
                        snapshotter: name.to_owned(),
                        dir_id,
                        area,
                        inner_path,
                    }
                }
                None => PathClass::SnapshotTemp {
                    snapshotter: name.to_owned(),
                    dir: dir.to_vec(),
                    inner_path: join(tail),
                },
            }
        }
        _ => PathClass::Other,
    }
}

/// `rest` is below the state dir: only the task directories are classified.
fn classify_task(rest: &[&[u8]], under_state: bool) -> PathClass {
    match rest.split_first() {
        Some((first, tail))
            if *first == TASK_V2_DIR.as_bytes() || *first == TASK_V1_DIR.as_bytes() =>
        {
            classify_task_below(tail, under_state)
        }
        _ => PathClass::Other,
    }
}

/// `rest` is below `io.containerd.runtime.v2.task`: `<namespace>/<id>/...`.
fn classify_task_below(rest: &[&[u8]], under_state: bool) -> PathClass {
    match rest {
        [ns, id, tail @ ..] => match (utf8(ns), utf8(id)) {
            (Some(namespace), Some(container_id)) => PathClass::RuntimeState {
                namespace,
                container_id,
                inner_path: join(tail),
                under_state,
            },
            _ => PathClass::Other,
        },
        _ => PathClass::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> RootLayout {
        RootLayout::new("/var/lib/containerd")
            .with_state("/run/containerd")
            .with_snapshotter_root("zfs", "/tank/containerd")
    }

    fn c(path: &str) -> PathClass {
        classify_path(&layout(), path.as_bytes())
    }

    fn snap(sn: &str, id: u64, area: SnapshotArea, inner: &str) -> PathClass {
        PathClass::SnapshotFile {
            snapshotter: sn.into(),
            dir_id: id,
            area,
            inner_path: inner.as_bytes().to_vec(),
        }
    }

    #[test]
    fn containerd_classify_snapshots() {
        let ov = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs";
        assert_eq!(
            c(&format!("{ov}/snapshots/12/fs/etc/passwd")),
            snap("overlayfs", 12, SnapshotArea::Fs, "/etc/passwd")
        );
        assert_eq!(
            c(&format!("{ov}/snapshots/12/fs")),
            snap("overlayfs", 12, SnapshotArea::Fs, "/")
        );
        assert_eq!(
            c(&format!("{ov}/snapshots/12/work/work/#1f")),
            snap("overlayfs", 12, SnapshotArea::Work, "/work/#1f")
        );
        assert_eq!(
            c(&format!("{ov}/snapshots/12/work")),
            snap("overlayfs", 12, SnapshotArea::Work, "")
        );
        assert_eq!(
            c(&format!("{ov}/snapshots/12")),
            snap("overlayfs", 12, SnapshotArea::Dir, "")
        );
        assert_eq!(
            c(&format!("{ov}/snapshots/12/stray")),
            snap("overlayfs", 12, SnapshotArea::Dir, "/stray")
        );
        assert_eq!(
            c(&format!("{ov}/snapshots/new-123456/fs/x")),
            PathClass::SnapshotTemp {
                snapshotter: "overlayfs".into(),
                dir: b"new-123456".to_vec(),
                inner_path: b"/fs/x".to_vec()
            }
        );
        // Leading zeros, signs and overflow are not ids containerd writes.
        for odd in ["012", "+1", "99999999999999999999999", ""] {
            assert!(
                !matches!(
                    c(&format!("{ov}/snapshots/{odd}/fs")),
                    PathClass::SnapshotFile { .. }
                ),
                "{odd}"
            );
        }
        assert_eq!(
            c(&format!("{ov}/metadata.db")),
            PathClass::Metadata {
                which: MetadataFile::Snapshotter("overlayfs".into())
            }
        );
        assert_eq!(c(&format!("{ov}/snapshots")), PathClass::Other);
        assert_eq!(c(ov), PathClass::Other);

        let native = "/var/lib/containerd/io.containerd.snapshotter.v1.native";
        assert_eq!(
            c(&format!("{native}/snapshots/3/bin/sh")),
            snap("native", 3, SnapshotArea::Fs, "/bin/sh")
        );
        assert_eq!(
            c(&format!("{native}/snapshots/3")),
            snap("native", 3, SnapshotArea::Fs, "/")
        );
        // A moved snapshotter, and its default dir no longer counts.
        assert_eq!(
            c("/tank/containerd/snapshots/7/a"),
            snap("zfs", 7, SnapshotArea::Dir, "/a")
        );
        assert_eq!(
            c("/var/lib/containerd/io.containerd.snapshotter.v1.zfs/snapshots/7/a"),
            PathClass::Other
        );
        // Lexical folding.
        assert_eq!(
            c(&format!("{ov}//snapshots/./12/fs/etc/../etc/shadow")),
            snap("overlayfs", 12, SnapshotArea::Fs, "/etc/shadow")
        );
        // Non-UTF-8 names survive as bytes.
        let mut p = format!("{ov}/snapshots/1/fs/").into_bytes();
        p.extend_from_slice(b"\xff\xfe");
        assert_eq!(
            classify_path(&layout(), &p),
            PathClass::SnapshotFile {
                snapshotter: "overlayfs".into(),
                dir_id: 1,
                area: SnapshotArea::Fs,
                inner_path: b"/\xff\xfe".to_vec()
            }
        );
    }

    /// One model of the layouts: btrfs keeps a committed snapshot's tree in
    /// `snapshots/<id>` as native does (it was taken for an unknown snapshotter, so its files
    /// had no `containerd.path`), zfs and block-device snapshotters have no tree there.
    #[test]
    fn snapshotter_layouts() {
        use SnapshotLayout::{Direct, Overlay, Unknown};
        for (name, layout) in [
            ("overlayfs", Overlay),
            ("fuse-overlayfs", Overlay),
            ("stargz", Overlay),
            ("nydus", Overlay),
            ("native", Direct),
            ("btrfs", Direct),
            ("zfs", Unknown),
            ("devmapper", Unknown),
            ("blockfile", Unknown),
        ] {
            assert_eq!(SnapshotLayout::of(name), layout, "{name}");
        }
        let btrfs = "/var/lib/containerd/io.containerd.snapshotter.v1.btrfs";
        assert_eq!(
            c(&format!("{btrfs}/snapshots/5/etc/os-release")),
            snap("btrfs", 5, SnapshotArea::Fs, "/etc/os-release")
        );
        assert_eq!(
            c(&format!("{btrfs}/snapshots/5")),
            snap("btrfs", 5, SnapshotArea::Fs, "/")
        );
        let root = Path::new("/r");
        assert_eq!(
            snapshot_tree(root, "overlayfs", 4),
            Some(PathBuf::from("/r/snapshots/4/fs"))
        );
        assert_eq!(
            snapshot_tree(root, "btrfs", 4),
            Some(PathBuf::from("/r/snapshots/4"))
        );
        assert_eq!(snapshot_tree(root, "zfs", 4), None);
    }

    #[test]
    fn containerd_classify_content_and_rest() {
        let content = "/var/lib/containerd/io.containerd.content.v1.content";
        let hex = "04c6c1a9416330247b20e14902680bc3123b168f849bca566864bb46c32418ba";
        assert_eq!(
            c(&format!("{content}/blobs/sha256/{hex}")),
            PathClass::Blob {
                digest: format!("sha256:{hex}")
            }
        );
        assert_eq!(c(&format!("{content}/blobs/sha256")), PathClass::Other);
        assert_eq!(
            c(&format!("{content}/ingest/{hex}/data")),
            PathClass::Ingest {
                dir: hex.into(),
                file: Some(b"data".to_vec())
            }
        );
        assert_eq!(
            c(&format!("{content}/ingest/{hex}")),
            PathClass::Ingest {
                dir: hex.into(),
                file: None
            }
        );
        assert_eq!(
            c("/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db"),
            PathClass::Metadata {
                which: MetadataFile::Containerd
            }
        );
        assert_eq!(
            c("/var/lib/containerd/io.containerd.metadata.v1.bolt/other"),
            PathClass::Other
        );
        assert_eq!(
            c("/var/lib/containerd/tmpmounts/containerd-mount123/usr/bin"),
            PathClass::Tmpmount {
                inner_path: b"/containerd-mount123/usr/bin".to_vec()
            }
        );
        assert_eq!(
            c("/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs/tmp/x"),
            PathClass::RuntimeState {
                namespace: "k8s.io".into(),
                container_id: "abc".into(),
                inner_path: b"/rootfs/tmp/x".to_vec(),
                under_state: true
            }
        );
        assert_eq!(
            c("/var/lib/containerd/io.containerd.runtime.v2.task/default/c1"),
            PathClass::RuntimeState {
                namespace: "default".into(),
                container_id: "c1".into(),
                inner_path: vec![],
                under_state: false
            }
        );
        assert_eq!(
            c("/run/containerd/io.containerd.runtime.v2.task/k8s.io"),
            PathClass::Other
        );
        assert_eq!(c("/run/containerd/containerd.sock"), PathClass::Other);
        assert_eq!(c("/var/lib/containerd"), PathClass::Other);
        assert_eq!(c("/var/lib/containerd-other/x"), PathClass::Other);
        assert_eq!(c("/etc/passwd"), PathClass::Other);
        assert_eq!(c(""), PathClass::Other);
        assert_eq!(c("/"), PathClass::Other);
        // `..` cannot climb back into the root from outside, nor out of it unnoticed.
        assert_eq!(
            c("/var/lib/containerd/io.containerd.content.v1.content/../../../../etc/x"),
            PathClass::Other
        );
    }

    #[test]
    fn containerd_classify_never_panics_on_garbage() {
        // Deterministic pseudo-random byte strings built from the interesting pieces.
        let pieces: [&[u8]; 12] = [
            b"/",
            b"var/lib/containerd",
            b"io.containerd.snapshotter.v1.overlayfs",
            b"snapshots",
            b"1",
            b"fs",
            b"..",
            b".",
            b"\xff",
            b"io.containerd.content.v1.content",
            b"ingest",
            b"io.containerd.snapshotter.v1.",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut p = Vec::new();
            for _ in 0..(x % 12) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p.extend_from_slice(pieces[(x % pieces.len() as u64) as usize]);
                if x & 1 == 0 {
                    p.push(b'/');
                }
            }
            let _ = classify_path(&layout(), &p);
        }
    }
}
