//! A layer's [`LayerTree`] against one snapshot directory.
//!
//! What containerd 1.6 leaves on disk depends on how it unpacked the layer ([`Unpack`]):
//! - overlayfs, a layer with parents: the tar is applied straight to the new snapshot's
//!   `fs` (`diff/apply/apply_linux.go`, `archive.OverlayConvertWhiteout`): `.wh.NAME` becomes
//!   a 0:0 character device NAME, `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on the
//!   directory, and nothing else is there.
//! - overlayfs base layer (its mounts are a bind mount) and native base layer: applied
//!   through a mount without conversion: whiteouts only delete what the same tar put there
//!   earlier, so no whiteout devices and no opaque xattrs, and nothing else is there.
//! - native, a layer with parents: a copy of the parent with the tar applied the same way:
//!   the lower layers' files are there too (only checked below opaque directories).
//!
//! Kernel-only overlay xattrs (`origin`, `impure`, `redirect`, `metacopy`, `nlink`, ...) are
//! written by overlayfs when a directory is the *upper* layer of a mount; containerd never
//! writes them while unpacking as root, so in a committed layer they mean it was mounted
//! read-write after it was committed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;

use super::tree::{Kind, LayerTree, Name, Node};
use crate::Severity;
use ctrwatch_containerd::fsx::{Dir, Stat};

/// How containerd unpacked the layer into the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unpack {
    /// overlayfs with parents: whiteouts converted; only the tar's entries are there.
    OverlayConverted,
    /// Base layer (overlayfs or native): naive apply into an empty directory.
    NaiveEmpty,
    /// native with parents: naive apply over a copy of the parent.
    NaiveOnCopy,
}

/// Classes of findings (stable identifiers, listed in docs/audit.md).
pub(super) mod class {
    pub const MISSING: &str = "layer-file-missing";
    pub const TRUNCATED: &str = "layer-file-truncated";
    pub const SIZE: &str = "layer-file-size";
    pub const TYPE: &str = "layer-file-type";
    pub const MODE: &str = "layer-file-mode";
    pub const OWNER: &str = "layer-file-owner";
    pub const MTIME: &str = "layer-file-mtime";
    pub const SYMLINK: &str = "layer-symlink-target";
    pub const HARDLINK: &str = "layer-hardlink-broken";
    pub const XATTR: &str = "layer-xattr-mismatch";
    pub const EXTRA: &str = "layer-extra-file";
    pub const WHITEOUT_LEAK: &str = "layer-whiteout-leak";
    pub const WHITEOUT_MISSING: &str = "layer-whiteout-missing";
    pub const OPAQUE_LEAK: &str = "layer-opaque-leak";
    pub const OPAQUE_MISSING: &str = "layer-opaque-missing";
    pub const OVERLAY_XATTR: &str = "layer-overlay-xattr";
    pub const UNREADABLE: &str = "layer-unreadable";
}

/// One difference, before it gets its image, layer and snapshot.
#[derive(Debug)]
pub(super) struct Problem {
    pub severity: Severity,
    pub class: &'static str,
    /// Path inside the layer, without the leading `/` (empty: the layer root).
    pub rel: Vec<u8>,
    pub message: String,
    pub facts: Vec<(String, String)>,
}

/// What a comparison found.
#[derive(Debug, Default)]
pub(super) struct Compared {
    pub problems: Vec<Problem>,
    /// Entries of the tree looked at on disk.
    pub checked: u64,
}

/// The xattrs overlayfs reads, in both namespaces (`userxattr` mounts use `user.`).
const OVERLAY_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];
/// Most entries counted below an unexplained directory.
const MAX_COUNT: u64 = 1_000_000;
/// Deepest directory nesting walked.
const MAX_DEPTH: usize = 256;

/// `/a/b` for messages.
pub(super) fn image_path(rel: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(rel))
}

fn type_name(st: &Stat) -> String {
    match st.file_type() {
        libc::S_IFREG => format!("regular file of {} bytes", st.size),
        libc::S_IFDIR => "directory".into(),
        libc::S_IFLNK => "symlink".into(),
        libc::S_IFCHR if st.rdev == 0 => "whiteout (character device 0:0)".into(),
        libc::S_IFCHR => format!(
            "character device {}:{}",
            libc::major(st.rdev),
            libc::minor(st.rdev)
        ),
        libc::S_IFBLK => format!(
            "block device {}:{}",
            libc::major(st.rdev),
            libc::minor(st.rdev)
        ),
        libc::S_IFIFO => "fifo".into(),
        libc::S_IFSOCK => "socket".into(),
        _ => "unknown file type".into(),
    }
}

struct Walk<'t> {
    unpack: Unpack,
    /// The directory is an overlayfs layer (whiteout devices and overlay xattrs mean
    /// something to the kernel).
    overlay: bool,
    tree: &'t LayerTree,
    out: Compared,
    /// Paths of hard links and their targets → (dev, ino) found.
    link_paths: HashSet<Vec<u8>>,
    inodes: HashMap<Vec<u8>, (u64, u64)>,
}

/// Compares `tree` with the directory `root`.
pub(super) fn compare(root: &Dir, tree: &LayerTree, unpack: Unpack, overlay: bool) -> Compared {
    let mut link_paths = HashSet::new();
    for (l, t) in &tree.hardlinks {
        link_paths.insert(super::tree::join(l).into_bytes());
        link_paths.insert(super::tree::join(t).into_bytes());
    }
    let mut w = Walk {
        unpack,
        overlay,
        tree,
        out: Compared::default(),
        link_paths,
        inodes: HashMap::new(),
    };
    w.xattrs(root, None, b"", Some(&tree.root), true);
    let extras = unpack != Unpack::NaiveOnCopy || tree.root.opaque;
    w.walk(root, &mut Vec::new(), &tree.root, extras, 0);
    w.hardlinks();
    w.out
}

/// Only the kernel-only overlay xattrs (and, for a base layer, whiteouts and opaque marks,
/// which containerd never creates there): what can be checked without the tar.
pub(super) fn scan_without_tar(root: &Dir, base_layer: bool) -> Compared {
    let empty = LayerTree::empty();
    let mut w = Walk {
        unpack: if base_layer {
            Unpack::NaiveEmpty
        } else {
            Unpack::OverlayConverted
        },
        overlay: true,
        tree: &empty,
        out: Compared::default(),
        link_paths: HashSet::new(),
        inodes: HashMap::new(),
    };
    w.scan(root, &mut Vec::new(), base_layer, 0);
    w.out
}

impl Walk<'_> {
    fn problem(
        &mut self,
        severity: Severity,
        class: &'static str,
        rel: &[u8],
        message: String,
        facts: Vec<(String, String)>,
    ) {
        self.out.problems.push(Problem {
            severity,
            class,
            rel: rel.to_vec(),
            message,
            facts,
        });
    }

    fn unreadable(&mut self, rel: &[u8], what: &str, e: &io::Error) {
        self.problem(
            Severity::Error,
            class::UNREADABLE,
            rel,
            format!("cannot {what} {}: {e}", image_path(rel)),
            Vec::new(),
        );
    }

    fn walk(&mut self, dir: &Dir, rel: &mut Vec<u8>, node: &Node, extras: bool, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let names = match dir.names() {
            Ok(n) => n,
            Err(e) => return self.unreadable(rel, "list", &e),
        };
        let mut disk: BTreeSet<Name> = names.into_iter().collect();
        for (name, child) in &node.children {
            let present = disk.remove(name);
            let len = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name);
            if present {
                self.entry(dir, name, rel, child, extras, depth);
            } else {
                self.missing(rel, child);
            }
            rel.truncate(len);
        }
        if !extras {
            return;
        }
        for name in disk {
            let len = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(&name);
            self.extra(dir, &name, rel);
            rel.truncate(len);
        }
    }

    fn missing(&mut self, rel: &[u8], exp: &Node) {
        let p = image_path(rel);
        match &exp.kind {
            Kind::Whiteout if self.unpack == Unpack::OverlayConverted => self.problem(
                Severity::Critical,
                class::WHITEOUT_MISSING,
                rel,
                format!(
                    "whiteout {p} is missing: the layer deletes {p} but containers see it \
                     again from the layers below"
                ),
                vec![
                    ("expected".into(), "whiteout (character device 0:0)".into()),
                    ("found".into(), "nothing".into()),
                ],
            ),
            // Naive unpacks leave nothing where a whiteout was.
            Kind::Whiteout => {}
            k if k.is_dir() => {
                let below = exp.descendants();
                self.problem(
                    Severity::Critical,
                    class::MISSING,
                    rel,
                    format!(
                        "directory {p} is missing from the layer ({below} entries the layer \
                         puts below it are missing with it)"
                    ),
                    vec![
                        ("expected".into(), "directory".into()),
                        ("found".into(), "nothing".into()),
                        ("entries below".into(), below.to_string()),
                    ],
                );
            }
            k => self.problem(
                Severity::Critical,
                class::MISSING,
                rel,
                format!("{p} is missing from the layer"),
                vec![
                    ("expected".into(), k.describe()),
                    ("found".into(), "nothing".into()),
                ],
            ),
        }
    }

    fn extra(&mut self, dir: &Dir, name: &[u8], rel: &[u8]) {
        let p = image_path(rel);
        let st = match dir.stat(name) {
            Ok(st) => st,
            // Gone meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => return self.unreadable(rel, "stat", &e),
        };
        if self.overlay && st.is_whiteout() {
            return self.problem(
                Severity::Critical,
                class::WHITEOUT_LEAK,
                rel,
                format!(
                    "whiteout {p} is not in the layer tar: it hides {p} of the layers below \
                     from every container of the image"
                ),
                vec![
                    ("expected".into(), "nothing".into()),
                    ("found".into(), "whiteout (character device 0:0)".into()),
                ],
            );
        }
        if st.is_dir() {
            let below = match dir.open_child(name) {
                Ok(d) => count_below(&d, 0),
                Err(_) => 0,
            };
            return self.problem(
                Severity::Error,
                class::EXTRA,
                rel,
                format!("directory {p} ({below} entries below it) is not in the layer tar"),
                vec![
                    ("expected".into(), "nothing".into()),
                    ("found".into(), "directory".into()),
                    ("entries below".into(), below.to_string()),
                ],
            );
        }
        self.problem(
            Severity::Error,
            class::EXTRA,
            rel,
            format!("{p} is not in the layer tar"),
            vec![
                ("expected".into(), "nothing".into()),
                ("found".into(), type_name(&st)),
            ],
        );
    }

    fn wrong_type(&mut self, rel: &[u8], exp: &Node, st: &Stat) {
        let p = image_path(rel);
        let mut facts = vec![
            ("expected".into(), exp.kind.describe()),
            ("found".into(), type_name(st)),
        ];
        let below = exp.descendants();
        let mut message = format!(
            "{p} is a {} where the layer has a {}",
            type_name(st),
            exp.kind.describe()
        );
        if below > 0 {
            message.push_str(&format!(
                " ({below} entries the layer puts below it are not there)"
            ));
            facts.push(("entries below".into(), below.to_string()));
        }
        self.problem(Severity::Critical, class::TYPE, rel, message, facts);
    }

    fn entry(
        &mut self,
        dir: &Dir,
        name: &[u8],
        rel: &[u8],
        exp: &Node,
        extras: bool,
        depth: usize,
    ) {
        let st = match dir.stat(name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.missing(rel, exp),
            Err(e) => return self.unreadable(rel, "stat", &e),
        };
        self.out.checked += 1;
        let p = image_path(rel);
        if self.link_paths.contains(rel) {
            self.inodes.insert(rel.to_vec(), (st.dev, st.ino));
        }
        match &exp.kind {
            Kind::Whiteout => {
                match self.unpack {
                    Unpack::OverlayConverted => {
                        if !st.is_whiteout() {
                            self.problem(
                                Severity::Critical,
                                class::WHITEOUT_MISSING,
                                rel,
                                format!(
                                    "whiteout {p} is a {} instead: the layer deletes {p}, \
                                     containers see this instead",
                                    type_name(&st)
                                ),
                                vec![
                                    ("expected".into(), "whiteout (character device 0:0)".into()),
                                    ("found".into(), type_name(&st)),
                                ],
                            );
                        }
                        self.xattrs(dir, Some(name), rel, None, true);
                    }
                    // Nothing should be there: the tar deletes it.
                    Unpack::NaiveEmpty => self.extra(dir, name, rel),
                    Unpack::NaiveOnCopy => self.problem(
                        Severity::Critical,
                        class::WHITEOUT_MISSING,
                        rel,
                        format!("{p} is still there although the layer deletes it"),
                        vec![
                            ("expected".into(), "nothing (deleted by the layer)".into()),
                            ("found".into(), type_name(&st)),
                        ],
                    ),
                }
            }
            Kind::Dir | Kind::Implicit => {
                if !st.is_dir() {
                    return self.wrong_type(rel, exp, &st);
                }
                if exp.kind == Kind::Dir {
                    self.meta(rel, exp, &st, false);
                }
                self.xattrs(dir, Some(name), rel, Some(exp), true);
                match dir.open_child(name) {
                    Ok(sub) => {
                        let extras = extras || (self.unpack == Unpack::NaiveOnCopy && exp.opaque);
                        let mut rel = rel.to_vec();
                        self.walk(&sub, &mut rel, exp, extras, depth + 1);
                    }
                    Err(e) => self.unreadable(rel, "open", &e),
                }
            }
            Kind::File { size } => {
                if !st.is_reg() {
                    return self.wrong_type(rel, exp, &st);
                }
                let size_ok = self.size(rel, *size, &st);
                self.meta(rel, exp, &st, size_ok);
                self.xattrs(dir, Some(name), rel, Some(exp), true);
            }
            Kind::Hardlink { size, .. } => {
                if !st.is_reg() {
                    return self.wrong_type(rel, exp, &st);
                }
                let size_ok = size.is_none_or(|s| self.size(rel, s, &st));
                // The target's checks cover the shared inode; a link whose target is in a
                // lower layer is a copy with its own header.
                if size.is_none() {
                    self.meta(rel, exp, &st, size_ok);
                    self.xattrs(dir, Some(name), rel, Some(exp), true);
                } else {
                    self.xattrs(dir, Some(name), rel, None, true);
                }
            }
            Kind::Symlink { target } => {
                if !st.is_symlink() {
                    return self.wrong_type(rel, exp, &st);
                }
                match dir.read_link(name) {
                    Ok(t) if t == *target => {}
                    Ok(t) => self.problem(
                        Severity::Critical,
                        class::SYMLINK,
                        rel,
                        format!(
                            "symlink {p} points to {} instead of {}",
                            String::from_utf8_lossy(&t),
                            String::from_utf8_lossy(target)
                        ),
                        vec![
                            (
                                "expected".into(),
                                String::from_utf8_lossy(target).into_owned(),
                            ),
                            ("found".into(), String::from_utf8_lossy(&t).into_owned()),
                        ],
                    ),
                    Err(e) => self.unreadable(rel, "read symlink", &e),
                }
                self.owner(rel, exp, &st);
                self.xattrs(dir, Some(name), rel, Some(exp), true);
            }
            Kind::Char { rdev } | Kind::Block { rdev } => {
                let want = if matches!(exp.kind, Kind::Char { .. }) {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                if st.file_type() != want || (libc::major(st.rdev), libc::minor(st.rdev)) != *rdev {
                    return self.wrong_type(rel, exp, &st);
                }
                self.meta(rel, exp, &st, false);
                self.xattrs(dir, Some(name), rel, Some(exp), true);
            }
            Kind::Fifo => {
                if st.file_type() != libc::S_IFIFO {
                    return self.wrong_type(rel, exp, &st);
                }
                self.meta(rel, exp, &st, false);
                self.xattrs(dir, Some(name), rel, Some(exp), true);
            }
        }
    }

    /// Size of a regular file; whether it matches.
    fn size(&mut self, rel: &[u8], want: u64, st: &Stat) -> bool {
        if st.size == want {
            return true;
        }
        let p = image_path(rel);
        let facts = vec![
            ("expected size".into(), want.to_string()),
            ("found size".into(), st.size.to_string()),
        ];
        if st.size == 0 {
            self.problem(
                Severity::Critical,
                class::TRUNCATED,
                rel,
                format!(
                    "{p} is empty but the layer has {want} bytes: programs loading it fail \
                     with \"file too short\""
                ),
                facts,
            );
        } else {
            self.problem(
                Severity::Critical,
                class::SIZE,
                rel,
                format!("{p} has {} bytes, the layer has {want}", st.size),
                facts,
            );
        }
        false
    }

    fn owner(&mut self, rel: &[u8], exp: &Node, st: &Stat) {
        if (u64::from(st.uid), u64::from(st.gid)) != (exp.meta.uid, exp.meta.gid) {
            let p = image_path(rel);
            self.problem(
                Severity::Error,
                class::OWNER,
                rel,
                format!(
                    "{p} is owned by {}:{}, the layer has {}:{}",
                    st.uid, st.gid, exp.meta.uid, exp.meta.gid
                ),
                vec![
                    (
                        "expected owner".into(),
                        format!("{}:{}", exp.meta.uid, exp.meta.gid),
                    ),
                    ("found owner".into(), format!("{}:{}", st.uid, st.gid)),
                ],
            );
        }
    }

    /// Mode and owner, and for regular files whose size is right the mtime (a file rewritten
    /// in place keeps its size but not its mtime).
    fn meta(&mut self, rel: &[u8], exp: &Node, st: &Stat, check_mtime: bool) {
        let p = image_path(rel);
        let want = exp.meta.mode & 0o7777;
        if st.perm() != want {
            // Bits taken away break things (an executable that no longer runs); bits added
            // are a security question.
            let severity = if want & !st.perm() != 0 {
                Severity::Critical
            } else {
                Severity::Error
            };
            self.problem(
                severity,
                class::MODE,
                rel,
                format!("{p} has mode {:04o}, the layer has {want:04o}", st.perm()),
                vec![
                    ("expected mode".into(), format!("{want:04o}")),
                    ("found mode".into(), format!("{:04o}", st.perm())),
                ],
            );
        }
        self.owner(rel, exp, st);
        // containerd clamps times to [0, 2^33) (`boundTime`).
        let mtime = exp.meta.mtime.clamp(0, (1 << 33) - 1);
        if check_mtime && st.mtime != mtime {
            self.problem(
                Severity::Warning,
                class::MTIME,
                rel,
                format!(
                    "{p} was modified after unpacking (same size, mtime {} instead of {mtime}): \
                     its content may differ from the layer's",
                    st.mtime
                ),
                vec![
                    ("expected mtime".into(), mtime.to_string()),
                    ("found mtime".into(), st.mtime.to_string()),
                ],
            );
        }
    }

    /// Overlay xattrs (opaque marks, kernel-only ones) and the tar's xattrs of one entry.
    /// `exp` is what the tar says there (`None`: nothing to compare but overlay xattrs).
    fn xattrs(
        &mut self,
        dir: &Dir,
        name: Option<&[u8]>,
        rel: &[u8],
        exp: Option<&Node>,
        judge_opaque: bool,
    ) {
        let names = match dir.xattr_names(name) {
            Ok(n) => n,
            Err(e) => return self.unreadable(rel, "list the xattrs of", &e),
        };
        let p = image_path(rel);
        let tar_xattrs: &[(Vec<u8>, Vec<u8>)] = exp.map_or(&[], |e| &e.meta.xattrs);
        let in_tar = |n: &[u8]| tar_xattrs.iter().any(|(k, _)| k == n);
        let mut opaque_on_disk: Option<Vec<u8>> = None;
        let mut kernel_only: Vec<String> = Vec::new();
        for n in &names {
            let Some(rest) = OVERLAY_PREFIXES.iter().find_map(|pre| n.strip_prefix(*pre)) else {
                continue;
            };
            if in_tar(n) {
                continue;
            }
            if rest == b"opaque" {
                if let Ok(Some(v)) = dir.xattr(name, n)
                    && matches!(v.first(), Some(b'y' | b'x'))
                {
                    opaque_on_disk = Some(n.clone());
                }
            } else {
                kernel_only.push(String::from_utf8_lossy(n).into_owned());
            }
        }
        let is_dir_exp = exp.is_some_and(|e| e.kind.is_dir());
        let opaque_expected =
            is_dir_exp && exp.is_some_and(|e| e.opaque) && self.unpack == Unpack::OverlayConverted;
        match (&opaque_on_disk, opaque_expected) {
            _ if !judge_opaque => {}
            (Some(attr), false) if self.overlay => self.problem(
                Severity::Critical,
                class::OPAQUE_LEAK,
                rel,
                format!(
                    "{p} is marked opaque ({}) but the layer tar has no opaque marker there: \
                     everything the layers below have in {p} is hidden from containers",
                    String::from_utf8_lossy(attr)
                ),
                vec![
                    ("expected".into(), "not opaque".into()),
                    (
                        "found".into(),
                        format!("{}=y", String::from_utf8_lossy(attr)),
                    ),
                ],
            ),
            (None, true) => self.problem(
                Severity::Critical,
                class::OPAQUE_MISSING,
                rel,
                format!(
                    "{p} lost its opaque mark (the tar has {p}/.wh..wh..opq): content of {p} \
                     the layer removes shows again from the layers below"
                ),
                vec![
                    (
                        "expected".into(),
                        "trusted.overlay.opaque=y (or user.overlay.opaque=y)".into(),
                    ),
                    ("found".into(), "no opaque xattr".into()),
                ],
            ),
            _ => {}
        }
        if !kernel_only.is_empty() && self.overlay {
            self.problem(
                Severity::Error,
                class::OVERLAY_XATTR,
                rel,
                format!(
                    "{p} has overlayfs xattrs only the kernel writes ({}): this committed \
                     layer was used as the upper directory of a mount after it was unpacked; \
                     overlay mounts using it may fail (ESTALE) or show other files",
                    kernel_only.join(", ")
                ),
                vec![("found".into(), kernel_only.join(", "))],
            );
        }
        for (k, v) in tar_xattrs {
            let found = if names.iter().any(|n| n == k) {
                match dir.xattr(name, k) {
                    Ok(f) => f,
                    Err(e) => {
                        self.unreadable(rel, "read the xattrs of", &e);
                        continue;
                    }
                }
            } else {
                None
            };
            if found.as_deref() != Some(v.as_slice()) {
                let key = String::from_utf8_lossy(k);
                self.problem(
                    Severity::Error,
                    class::XATTR,
                    rel,
                    match &found {
                        None => format!("{p} lacks the xattr {key} the layer sets"),
                        Some(_) => format!("{p} has another value of the xattr {key}"),
                    },
                    vec![
                        ("xattr".into(), key.into_owned()),
                        ("expected".into(), show_value(v)),
                        (
                            "found".into(),
                            found.as_deref().map_or("not set".into(), show_value),
                        ),
                    ],
                );
            }
        }
    }

    fn hardlinks(&mut self) {
        for (link, target) in &self.tree.hardlinks {
            let (l, t) = (
                super::tree::join(link).into_bytes(),
                super::tree::join(target).into_bytes(),
            );
            if let (Some(a), Some(b)) = (self.inodes.get(&l), self.inodes.get(&t))
                && a != b
            {
                let msg = format!(
                    "{} is no longer a hard link to {}: one of them was replaced",
                    image_path(&l),
                    image_path(&t)
                );
                self.problem(
                    Severity::Warning,
                    class::HARDLINK,
                    &l,
                    msg,
                    vec![
                        (
                            "expected".into(),
                            format!("same inode as {}", image_path(&t)),
                        ),
                        ("found".into(), format!("inode {} vs {}", a.1, b.1)),
                    ],
                );
            }
        }
    }

    /// Without the tar: kernel-only overlay xattrs everywhere; in a base layer, whiteouts and
    /// opaque marks too (containerd never makes them there).
    fn scan(&mut self, dir: &Dir, rel: &mut Vec<u8>, base_layer: bool, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        if depth == 0 {
            self.xattrs(dir, None, rel, None, base_layer);
        }
        let mut names = match dir.names() {
            Ok(n) => n,
            Err(e) => return self.unreadable(rel, "list", &e),
        };
        names.sort();
        for name in names {
            let len = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(&name);
            match dir.stat(&name) {
                Ok(st) => {
                    self.out.checked += 1;
                    if base_layer && st.is_whiteout() {
                        self.extra(dir, &name, rel);
                    } else if base_layer {
                        self.xattrs(dir, Some(&name), rel, None, true);
                    } else {
                        // Not a base layer: opaque marks are legitimate, only kernel-only
                        // xattrs are checked.
                        self.kernel_only(dir, &name, rel);
                    }
                    if st.is_dir()
                        && let Ok(sub) = dir.open_child(&name)
                    {
                        self.scan(&sub, rel, base_layer, depth + 1);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => self.unreadable(rel, "stat", &e),
            }
            rel.truncate(len);
        }
    }

    fn kernel_only(&mut self, dir: &Dir, name: &[u8], rel: &[u8]) {
        // Opaque marks are legitimate in a layer with parents: only kernel-only names count.
        self.xattrs(dir, Some(name), rel, None, false);
    }
}

fn show_value(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => ctrwatch_event::hex(v),
    }
}

/// Entries below `dir` (bounded).
fn count_below(dir: &Dir, depth: usize) -> u64 {
    let Ok(names) = dir.names() else {
        return 0;
    };
    let mut n = names.len() as u64;
    if depth >= MAX_DEPTH {
        return n;
    }
    for name in names {
        if n >= MAX_COUNT {
            break;
        }
        if let Ok(st) = dir.stat(&name)
            && st.is_dir()
            && let Ok(sub) = dir.open_child(&name)
        {
            n += count_below(&sub, depth + 1);
        }
    }
    n
}
