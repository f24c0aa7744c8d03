//! The file tree a layer tar unpacks to, as containerd 1.6 unpacks it (`archive.Apply`,
//! `core/archive/tar.go`), built from a forward-only stream of the (compressed) blob.
//!
//! What containerd does, and what this models:
//! - paths are cleaned and joined to the layer root: `./a`, `/a` and `a` are the same; the
//!   root entry itself is ignored. Names with `..` are reported here as unsafe and skipped.
//! - parents missing from the tar are created (`mkparent`): [`Kind::Implicit`] directories,
//!   whose attributes are not checked (they come from a lower layer or default to 0755).
//! - symlinks in the parent path are resolved inside the layer (`fs.RootPath`): an entry
//!   `lib/x` after `lib -> usr/lib` lands in `usr/lib/x`.
//! - a later entry replaces an earlier one, except a directory over a directory (merged).
//! - `.wh.NAME` and `.wh..wh..opq` are kept as [`Kind::Whiteout`] and [`Node::opaque`]: what
//!   they become on disk depends on how the snapshot was unpacked (see `compare`).
//! - a hard link shares its target's inode, so its header's owner, mode and mtime end up on
//!   the target too (the last header of the group wins).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// One path component.
pub(super) type Name = Vec<u8>;

/// Owner, mode, mtime and xattrs of a tar entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Meta {
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    /// `SCHILY.xattr.*` records.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The entry's position in the tar (from 1).
    pub seq: u64,
}

/// What the tar puts at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A parent directory the tar has no entry for.
    Implicit,
    Dir,
    File {
        size: u64,
    },
    /// A hard link to `target` (components from the layer root). `size` is the target's when
    /// the target is a file of this tar.
    Hardlink {
        target: Vec<Name>,
        size: Option<u64>,
    },
    Symlink {
        target: Vec<u8>,
    },
    Char {
        rdev: (u32, u32),
    },
    Block {
        rdev: (u32, u32),
    },
    Fifo,
    /// `.wh.NAME`: NAME is deleted from the layers below.
    Whiteout,
}

impl Kind {
    pub fn is_dir(&self) -> bool {
        matches!(self, Kind::Dir | Kind::Implicit)
    }

    /// For messages: `regular file`, `directory`, ...
    pub fn describe(&self) -> String {
        match self {
            Kind::Implicit | Kind::Dir => "directory".into(),
            Kind::File { size } => format!("regular file of {size} bytes"),
            Kind::Hardlink { target, .. } => format!("hard link to /{}", join(target)),
            Kind::Symlink { target } => {
                format!("symlink to {}", String::from_utf8_lossy(target))
            }
            Kind::Char { rdev } => format!("character device {}:{}", rdev.0, rdev.1),
            Kind::Block { rdev } => format!("block device {}:{}", rdev.0, rdev.1),
            Kind::Fifo => "fifo".into(),
            Kind::Whiteout => "whiteout".into(),
        }
    }
}

/// A path of the layer and what the tar puts there.
#[derive(Clone, Debug)]
pub(super) struct Node {
    pub kind: Kind,
    pub meta: Meta,
    /// A directory with `.wh..wh..opq`: the lower layers' content of it is hidden.
    pub opaque: bool,
    pub children: BTreeMap<Name, Node>,
}

impl Node {
    fn new(kind: Kind, meta: Meta) -> Node {
        Node {
            kind,
            meta,
            opaque: false,
            children: BTreeMap::new(),
        }
    }

    fn implicit() -> Node {
        Node::new(Kind::Implicit, Meta::default())
    }

    /// Entries below this node.
    pub fn descendants(&self) -> u64 {
        self.children
            .values()
            .map(|c| 1 + c.descendants())
            .sum::<u64>()
    }

    fn get(&self, path: &[Name]) -> Option<&Node> {
        let mut n = self;
        for c in path {
            n = n.children.get(c)?;
        }
        Some(n)
    }

    fn get_mut(&mut self, path: &[Name]) -> Option<&mut Node> {
        let mut n = self;
        for c in path {
            n = n.children.get_mut(c)?;
        }
        Some(n)
    }

    /// The directory at `path`, created (implicit) where missing or not a directory.
    fn dir_mut(&mut self, path: &[Name]) -> &mut Node {
        let mut n = self;
        for c in path {
            let child = n.children.entry(c.clone()).or_insert_with(Node::implicit);
            if !child.kind.is_dir() {
                // containerd would have failed on a non-directory parent; such a layer is
                // never committed. Model it as a directory and move on.
                *child = Node::implicit();
            }
            n = child;
        }
        n
    }
}

/// `a/b/c` for components.
pub(super) fn join(path: &[Name]) -> String {
    let mut s = String::new();
    for (i, c) in path.iter().enumerate() {
        if i > 0 {
            s.push('/');
        }
        s.push_str(&String::from_utf8_lossy(c));
    }
    s
}

/// How the blob was compressed (from its first bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "uncompressed",
        }
    }

    /// What a layer media type says, if it says anything.
    pub fn from_media_type(mt: &str) -> Option<Compression> {
        if mt.ends_with("+gzip") || mt.ends_with(".tar.gzip") || mt.ends_with(".gzip") {
            Some(Compression::Gzip)
        } else if mt.ends_with("+zstd") {
            Some(Compression::Zstd)
        } else if mt.ends_with(".tar") || mt.ends_with("rootfs.diff.tar") {
            Some(Compression::None)
        } else {
            None
        }
    }
}

/// Why the tar could not be read to its end.
#[derive(Debug)]
pub(super) struct ReadError {
    /// The stream is not a valid compressed tar (as opposed to an I/O error reading it).
    pub damaged: bool,
    pub error: io::Error,
    /// Entries read before the error.
    pub after_entries: u64,
    /// Uncompressed bytes read before the error.
    pub after_bytes: u64,
}

/// An entry skipped because its name leaves the layer root.
#[derive(Debug)]
pub(super) struct Skipped {
    pub name: String,
    pub why: &'static str,
}

/// The tree of one layer tar and what reading it showed.
#[derive(Debug)]
pub(super) struct LayerTree {
    pub root: Node,
    /// Tar entries (PAX and GNU long-name headers not counted).
    pub entries: u64,
    /// Uncompressed bytes read (the whole stream when `error` is `None`).
    pub bytes: u64,
    /// `sha256:<hex>` of the uncompressed stream, when read to its end.
    pub diff_id: Option<String>,
    pub compression: Compression,
    pub error: Option<ReadError>,
    pub unsafe_paths: Vec<Skipped>,
    /// Entries of types containerd refuses (it would have failed the unpack).
    pub unsupported: Vec<Skipped>,
    /// Hard links: (link, target), components from the root.
    pub hardlinks: Vec<(Vec<Name>, Vec<Name>)>,
}

impl LayerTree {
    /// A tree with nothing in it.
    pub fn empty() -> LayerTree {
        LayerTree {
            root: Node::new(Kind::Dir, Meta::default()),
            entries: 0,
            bytes: 0,
            diff_id: None,
            compression: Compression::None,
            error: None,
            unsafe_paths: Vec::new(),
            unsupported: Vec::new(),
            hardlinks: Vec::new(),
        }
    }
}

/// Most unsafe or unsupported entries remembered (the count goes on).
const MAX_SKIPPED: usize = 20;
/// Symlinks followed while resolving one parent path (Linux's limit).
const MAX_SYMLINK_HOPS: usize = 40;

/// Hashes and counts what passes through.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Errors of the stream we read from, as opposed to errors of what it contains: kept apart
/// so that an unreadable blob file is not called damaged.
struct Source<'a> {
    inner: &'a mut dyn Read,
    failed: &'a std::cell::Cell<bool>,
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.failed.set(true);
            }
        })
    }
}

/// Reads the whole (compressed) blob and builds its tree. Never fails: problems are in the
/// result.
pub(super) fn read_layer(blob: &mut dyn Read) -> LayerTree {
    let failed = std::cell::Cell::new(false);
    let mut src = Source {
        inner: blob,
        failed: &failed,
    };
    let mut tree = LayerTree::empty();
    // Sniff the magic bytes; a short blob is a (short, probably damaged) plain tar.
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match src.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                tree.error = Some(ReadError {
                    damaged: false,
                    error,
                    after_entries: 0,
                    after_bytes: 0,
                });
                return tree;
            }
        }
    }
    let head = magic[..got].to_vec();
    tree.compression = match head.as_slice() {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    };
    let stream = io::Cursor::new(head).chain(src);
    let decoded: Result<Box<dyn Read + '_>, io::Error> = match tree.compression {
        // Multi-member: Go's gzip reader (containerd's) reads concatenated members.
        Compression::Gzip => Ok(Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(256 << 10, stream),
        ))),
        Compression::Zstd => zstd::stream::read::Decoder::with_buffer(
            io::BufReader::with_capacity(256 << 10, stream),
        )
        .and_then(|mut d| {
            // Accept the large windows zstd allows (up to 2 GiB, as containerd's decoder does);
            // memory is only taken if a frame asks for it.
            d.window_log_max(31)?;
            Ok(d)
        })
        .map(|d| Box::new(d) as Box<dyn Read>),
        Compression::None => Ok(Box::new(io::BufReader::with_capacity(256 << 10, stream))),
    };
    let mut hashing = match decoded {
        Ok(inner) => Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        },
        Err(error) => {
            tree.error = Some(ReadError {
                damaged: true,
                error,
                after_entries: 0,
                after_bytes: 0,
            });
            return tree;
        }
    };
    let result = build(&mut tree, &mut hashing).and_then(|()| {
        // The diffID covers the whole stream, including the zero blocks and padding after the
        // end-of-archive marker, which the tar reader leaves unread.
        io::copy(&mut hashing, &mut io::sink()).map(drop)
    });
    let Hashing { hasher, bytes, .. } = hashing;
    tree.bytes = bytes;
    match result {
        Ok(()) => {
            let hex = ctrwatch_event::hex(&hasher.finalize());
            tree.diff_id = Some(format!("sha256:{hex}"));
        }
        Err(error) => {
            tree.error = Some(ReadError {
                damaged: !failed.get(),
                error,
                after_entries: tree.entries,
                after_bytes: tree.bytes,
            });
        }
    }
    tree
}

/// Normalises a tar name into components; `Err` if it climbs out of the root.
fn components(raw: &[u8]) -> Result<Vec<Name>, &'static str> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("`..` component"),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

impl Node {
    /// Resolves `path` (a parent directory) as containerd's `fs.RootPath` does inside the
    /// layer: symlinks met on the way are followed, `..` stops at the root, missing
    /// components stay as they are. `None` when symlinks loop.
    fn resolve(&self, path: &[Name]) -> Option<Vec<Name>> {
        let mut todo: Vec<Name> = path.iter().rev().cloned().collect();
        let mut done: Vec<Name> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            if c == b".." {
                done.pop();
                continue;
            }
            if c.is_empty() || c == b"." {
                continue;
            }
            let here = self.get(&done).and_then(|n| n.children.get(&c));
            if let Some(Node {
                kind: Kind::Symlink { target },
                ..
            }) = here
            {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return None;
                }
                if target.first() == Some(&b'/') {
                    done.clear();
                }
                for t in target.split(|&b| b == b'/').rev() {
                    todo.push(t.to_vec());
                }
                continue;
            }
            done.push(c);
        }
        Some(done)
    }
}

fn pax_int(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    // PAX times may have a fraction: the seconds are what `chtimes` keeps in st_mtime.
    let int = s.split('.').next()?;
    int.parse().ok()
}

fn build<R: Read>(tree: &mut LayerTree, r: &mut R) -> io::Result<()> {
    let mut ar = tar::Archive::new(r);
    for entry in ar.entries()? {
        let mut entry = entry?;
        tree.entries += 1;
        let seq = tree.entries;
        let h = entry.header();
        let et = h.entry_type();
        let mut meta = Meta {
            mode: h.mode()? & 0o7777,
            uid: h.uid()?,
            gid: h.gid()?,
            mtime: h.mtime()? as i64,
            xattrs: Vec::new(),
            seq,
        };
        // Only devices have meaningful device numbers; other entries often leave the fields
        // empty, which Go's reader (containerd's) takes as 0.
        let rdev = if matches!(et, tar::EntryType::Char | tar::EntryType::Block) {
            (
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0),
            )
        } else {
            (0, 0)
        };
        let raw_path = entry.path_bytes().into_owned();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        if let Some(pax) = entry.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let key = ext.key_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    meta.xattrs
                        .push((name.to_vec(), ext.value_bytes().to_vec()));
                } else if key == b"uid" {
                    meta.uid = pax_int(ext.value_bytes()).unwrap_or(0) as u64;
                } else if key == b"gid" {
                    meta.gid = pax_int(ext.value_bytes()).unwrap_or(0) as u64;
                } else if key == b"mtime" {
                    meta.mtime = pax_int(ext.value_bytes()).unwrap_or(meta.mtime);
                }
            }
        }
        let size = entry.size();
        let kind = match et {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                Kind::File { size }
            }
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink {
                target: link.clone().unwrap_or_default(),
            },
            tar::EntryType::Link => Kind::Hardlink {
                target: Vec::new(),
                size: None,
            },
            tar::EntryType::Char => Kind::Char { rdev },
            tar::EntryType::Block => Kind::Block { rdev },
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::XGlobalHeader => continue,
            _ => {
                if tree.unsupported.len() < MAX_SKIPPED {
                    tree.unsupported.push(Skipped {
                        name: String::from_utf8_lossy(&raw_path).into_owned(),
                        why: "unsupported tar entry type",
                    });
                }
                continue;
            }
        };
        let comps = match components(&raw_path) {
            Ok(c) => c,
            Err(why) => {
                if tree.unsafe_paths.len() < MAX_SKIPPED {
                    tree.unsafe_paths.push(Skipped {
                        name: String::from_utf8_lossy(&raw_path).into_owned(),
                        why,
                    });
                }
                continue;
            }
        };
        let Some((base, parent)) = comps.split_last() else {
            // The root entry: containerd ignores it ("resolved to root").
            continue;
        };
        let Some(parent) = tree.root.resolve(parent) else {
            if tree.unsafe_paths.len() < MAX_SKIPPED {
                tree.unsafe_paths.push(Skipped {
                    name: String::from_utf8_lossy(&raw_path).into_owned(),
                    why: "symlink loop in the parent path",
                });
            }
            continue;
        };
        if base.as_slice() == b".wh..wh..opq" {
            tree.root.dir_mut(&parent).opaque = true;
            continue;
        }
        if let Some(name) = base.strip_prefix(b".wh.") {
            let node = Node::new(Kind::Whiteout, meta);
            insert(&mut tree.root, &parent, name.to_vec(), node);
            continue;
        }
        let mut node = Node::new(kind, meta);
        if let Kind::Hardlink { target, .. } = &mut node.kind {
            // containerd's hardlinkRootPath: the parent path resolved, the name as it is.
            let t = components(&link.unwrap_or_default()).ok().and_then(|t| {
                let (name, dir) = t.split_last()?;
                let mut dir = tree.root.resolve(dir)?;
                dir.push(name.clone());
                Some(dir)
            });
            match t {
                Some(t) => *target = t,
                None => {
                    if tree.unsafe_paths.len() < MAX_SKIPPED {
                        tree.unsafe_paths.push(Skipped {
                            name: String::from_utf8_lossy(&raw_path).into_owned(),
                            why: "hard link target outside the layer",
                        });
                    }
                    continue;
                }
            }
        }
        let mut path = parent.clone();
        path.push(base.clone());
        if let Kind::Hardlink { target, .. } = &node.kind {
            tree.hardlinks.push((path.clone(), target.clone()));
        }
        insert(&mut tree.root, &parent, base.clone(), node);
    }
    finish_hardlinks(tree);
    Ok(())
}

/// Puts `node` at `parent/name`: a directory over a directory keeps the children (and the
/// opaque mark); anything else replaces what was there.
fn insert(root: &mut Node, parent: &[Name], name: Name, node: Node) {
    let dir = root.dir_mut(parent);
    match dir.children.get_mut(&name) {
        Some(old) if old.kind.is_dir() && node.kind == Kind::Dir => {
            old.kind = Kind::Dir;
            old.meta = node.meta;
        }
        _ => {
            dir.children.insert(name, node);
        }
    }
}

/// A hard link and its target are one inode: the last header of the group sets owner, mode,
/// mtime and xattrs for all. Links to files of this tar get the target's size.
fn finish_hardlinks(tree: &mut LayerTree) {
    let mut last: HashMap<Vec<Name>, Meta> = HashMap::new();
    for (link, target) in &tree.hardlinks {
        let Some(l) = tree.root.get(link) else {
            continue;
        };
        // The link may have been replaced by a later entry.
        if !matches!(l.kind, Kind::Hardlink { .. }) {
            continue;
        }
        let Some(t) = tree.root.get(target) else {
            continue;
        };
        if !matches!(t.kind, Kind::File { .. }) {
            continue;
        }
        let cur = last.entry(target.clone()).or_insert_with(|| t.meta.clone());
        if l.meta.seq > cur.seq {
            *cur = l.meta.clone();
        }
    }
    for (target, meta) in &last {
        if let Some(t) = tree.root.get_mut(target) {
            t.meta = meta.clone();
        }
    }
    for (link, target) in tree.hardlinks.clone() {
        let size = match tree.root.get(&target).map(|t| &t.kind) {
            Some(Kind::File { size }) => Some(*size),
            _ => None,
        };
        let meta = last.get(&target).cloned();
        if let Some(l) = tree.root.get_mut(&link)
            && let Kind::Hardlink { size: s, .. } = &mut l.kind
        {
            *s = size;
            if let Some(m) = meta {
                l.meta = m;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    /// A tar of (name, kind, link target or content).
    fn tar(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let mut h = header(*kind, 0o777, 0);
                    b.append_link(&mut h, name, data).expect("link");
                }
                _ => {
                    // Raw names: the builder refuses `..` and absolute paths, layers may not.
                    let mut h = header(*kind, 0o644, data.len() as u64);
                    let field = &mut h.as_old_mut().name;
                    field[..name.len()].copy_from_slice(name.as_bytes());
                    h.set_cksum();
                    b.append(&h, data.as_bytes()).expect("entry");
                }
            }
        }
        b.into_inner().expect("tar")
    }

    fn node<'a>(t: &'a LayerTree, path: &str) -> Option<&'a Node> {
        let comps: Vec<Name> = path.split('/').map(|c| c.as_bytes().to_vec()).collect();
        t.root.get(&comps)
    }

    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};

    #[test]
    fn later_entries_win_and_directories_merge() {
        let raw = tar(&[
            ("./a/", D, ""),
            ("./a/x", F, "one"),
            ("a/x", F, "three"),
            ("/a/", D, ""),
            ("b", F, "file"),
            ("b", D, ""),
            ("c/d/e", F, "deep"),
            ("..", D, ""),
            ("../../etc/passwd", F, "x"),
            ("a/../../y", F, "x"),
        ]);
        let t = read_layer(&mut raw.as_slice());
        assert!(t.error.is_none(), "{:?}", t.error);
        assert_eq!(
            node(&t, "a/x").map(|n| &n.kind),
            Some(&Kind::File { size: 5 })
        );
        assert_eq!(node(&t, "b").map(|n| &n.kind), Some(&Kind::Dir));
        assert_eq!(node(&t, "c").map(|n| &n.kind), Some(&Kind::Implicit));
        assert_eq!(
            node(&t, "c/d/e").map(|n| &n.kind),
            Some(&Kind::File { size: 4 })
        );
        assert_eq!(t.unsafe_paths.len(), 3, "{:?}", t.unsafe_paths);
        assert_eq!(t.entries, 10);
        let want = format!("sha256:{}", ctrwatch_event::hex(&Sha256::digest(&raw)));
        assert_eq!(t.diff_id.as_deref(), Some(want.as_str()));
        assert_eq!(t.bytes, raw.len() as u64);
    }

    #[test]
    fn whiteouts_opaque_and_symlinked_parents() {
        let raw = tar(&[
            ("usr/lib/", D, ""),
            ("lib", S, "usr/lib"),
            ("lib/libjq.so.1", F, "elf"),
            ("etc/.wh.group", F, ""),
            ("opt/.wh..wh..opq", F, ""),
            ("opt/", D, ""),
            ("opt/c", F, "c"),
        ]);
        let t = read_layer(&mut raw.as_slice());
        assert!(t.error.is_none());
        assert_eq!(
            node(&t, "usr/lib/libjq.so.1").map(|n| &n.kind),
            Some(&Kind::File { size: 3 })
        );
        assert!(node(&t, "lib/libjq.so.1").is_none());
        assert_eq!(
            node(&t, "etc/group").map(|n| &n.kind),
            Some(&Kind::Whiteout)
        );
        let opt = node(&t, "opt").expect("opt");
        assert!(opt.opaque && opt.kind == Kind::Dir && opt.children.len() == 1);
    }

    #[test]
    fn hard_links_share_the_target() {
        let raw = tar(&[
            ("bin/busybox", F, "0123456789"),
            ("bin/sh", H, "bin/busybox"),
            ("bin/lower", H, "bin/not-here"),
        ]);
        let t = read_layer(&mut raw.as_slice());
        assert!(t.error.is_none());
        match node(&t, "bin/sh").map(|n| &n.kind) {
            Some(Kind::Hardlink { target, size }) => {
                assert_eq!(join(target), "bin/busybox");
                assert_eq!(*size, Some(10));
            }
            k => panic!("{k:?}"),
        }
        // The link's header (mode 0777 here) is the inode's last word.
        assert_eq!(node(&t, "bin/busybox").map(|n| n.meta.mode), Some(0o777));
        assert!(matches!(
            node(&t, "bin/lower").map(|n| &n.kind),
            Some(Kind::Hardlink { size: None, .. })
        ));
        assert_eq!(t.hardlinks.len(), 2);
    }

    #[test]
    fn compressions_and_damage() {
        let raw = tar(&[("a", F, "hello")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let zst = zstd::stream::encode_all(raw.as_slice(), 3).expect("zstd");
        for (blob, c) in [
            (&raw, Compression::None),
            (&gz, Compression::Gzip),
            (&zst, Compression::Zstd),
        ] {
            let t = read_layer(&mut blob.as_slice());
            assert_eq!(t.compression, c);
            assert!(t.error.is_none(), "{c:?}: {:?}", t.error);
            assert_eq!(t.bytes, raw.len() as u64);
            assert_eq!(
                node(&t, "a").map(|n| &n.kind),
                Some(&Kind::File { size: 5 })
            );
        }
        let mut bad = gz.clone();
        let n = bad.len();
        bad.truncate(n - 6);
        let t = read_layer(&mut bad.as_slice());
        assert!(t.error.as_ref().is_some_and(|e| e.damaged), "{:?}", t.error);
        assert!(t.diff_id.is_none());
    }

    #[test]
    fn reader_errors_are_not_damage() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let t = read_layer(&mut Failing);
        assert!(t.error.as_ref().is_some_and(|e| !e.damaged));
    }
}
