//! Watched roots: from the configured directories to the path prefixes the kernel filter
//! matches.
//!
//! The kernel compares the path an operation names (as resolved against its dirfd or cwd)
//! with prefixes. One directory can be named by several paths, so each root becomes a set of
//! prefixes: its canonical path (symlinks resolved), the path as configured (when that is a
//! symlink), and every bind mount that shows it (or a part of it) elsewhere, from
//! /proc/self/mountinfo. A root that does not exist yet is watched at the path it will have, so
//! its creation and everything after are seen. Resolution is repeated periodically, so roots
//! that appear, move or get bind-mounted later are followed without a restart.

use std::{
    ffi::OsStr,
    fs,
    os::unix::ffi::OsStrExt,
    path::{Component, Path, PathBuf},
};

/// One configured root and the prefixes that name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    /// The root as given.
    pub configured: PathBuf,
    /// Symlinks resolved (for a missing root: its deepest existing ancestor resolved).
    pub canonical: PathBuf,
    /// The root exists now.
    pub exists: bool,
    /// Other paths under which the same directory is reachable: (alias, canonical it maps to).
    pub aliases: Vec<(PathBuf, PathBuf)>,
}

/// The resolved set of roots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootSet {
    /// One entry per configured root.
    pub roots: Vec<Root>,
}

impl RootSet {
    /// Resolves `configured`: symlinks, and the other mount points (bind mounts) of the same directories.
    pub fn resolve(configured: &[PathBuf]) -> RootSet {
        let mounts = fs::read_to_string("/proc/self/mountinfo")
            .map(|t| parse_mountinfo(&t))
            .unwrap_or_default();
        let roots = configured
            .iter()
            .map(|c| resolve_root(c, &mounts))
            .collect();
        RootSet { roots }
    }

    /// The byte prefixes for the kernel's LPM trie: for each path P, "P/" (everything below)
    /// and "P\0" (P itself; paths in the kernel are NUL-terminated).
    pub fn kernel_prefixes(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for root in &self.roots {
            let mut paths = vec![root.canonical.clone(), root.configured.clone()];
            paths.extend(root.aliases.iter().map(|(alias, _)| alias.clone()));
            for p in paths {
                let bytes = p.as_os_str().as_bytes();
                if bytes == b"/" {
                    push_unique(&mut out, b"/".to_vec());
                    continue;
                }
                let mut below = bytes.to_vec();
                below.push(b'/');
                push_unique(&mut out, below);
                let mut itself = bytes.to_vec();
                itself.push(0);
                push_unique(&mut out, itself);
            }
        }
        out
    }

    /// Rewrites a path seen through an alias (configured symlink, bind mount) to the canonical
    /// path, so one file has one name in the history. Lexical `.`/`..`/`//` are folded first.
    pub fn canonical_path(&self, path: &[u8]) -> Vec<u8> {
        let path = normalize(path);
        for root in &self.roots {
            let mut pairs = vec![(root.configured.clone(), root.canonical.clone())];
            pairs.extend(root.aliases.iter().cloned());
            for (alias, canonical) in pairs {
                if alias == canonical {
                    continue;
                }
                if let Some(rest) = strip_dir_prefix(&path, alias.as_os_str().as_bytes()) {
                    let mut out = canonical.as_os_str().as_bytes().to_vec();
                    out.extend_from_slice(rest);
                    return out;
                }
            }
        }
        path
    }

    /// Is `path` (canonical) under one of the roots? Userspace's second opinion, used after
    /// lexical normalisation (`/root/../elsewhere` passes the kernel's prefix test).
    pub fn contains(&self, path: &[u8]) -> bool {
        self.roots.iter().any(|r| {
            strip_dir_prefix(path, r.canonical.as_os_str().as_bytes()).is_some()
                || strip_dir_prefix(path, r.configured.as_os_str().as_bytes()).is_some()
        })
    }
}

fn push_unique(out: &mut Vec<Vec<u8>>, v: Vec<u8>) {
    if !out.contains(&v) {
        out.push(v);
    }
}

/// `path` equal to `dir` or below it: the rest ("" or "/..."); None otherwise.
fn strip_dir_prefix<'a>(path: &'a [u8], dir: &[u8]) -> Option<&'a [u8]> {
    if dir == b"/" {
        return path.starts_with(b"/").then_some(path);
    }
    let rest = path.strip_prefix(dir)?;
    (rest.is_empty() || rest.starts_with(b"/")).then_some(rest)
}

/// Folds `.`, `..` and repeated slashes of an absolute path, lexically.
pub fn normalize(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

fn absolute(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(p)
    };
    PathBuf::from(OsStr::from_bytes(&normalize(joined.as_os_str().as_bytes())))
}

/// Canonical form of a path that may not exist: its deepest existing ancestor resolved, with
/// the missing rest appended.
fn canonical_or_planned(p: &Path) -> (PathBuf, bool) {
    if let Ok(c) = fs::canonicalize(p) {
        return (c, true);
    }
    let mut missing: Vec<&OsStr> = Vec::new();
    let mut cur = p;
    while let Some(parent) = cur.parent() {
        if let Some(Component::Normal(name)) = cur.components().next_back() {
            missing.push(name);
        }
        if let Ok(c) = fs::canonicalize(parent) {
            let mut out = c;
            for name in missing.iter().rev() {
                out.push(name);
            }
            return (out, false);
        }
        cur = parent;
    }
    (p.to_path_buf(), false)
}

fn resolve_root(configured: &Path, mounts: &[MountEntry]) -> Root {
    let configured = absolute(configured);
    let (canonical, exists) = canonical_or_planned(&configured);
    let mut aliases = Vec::new();
    if configured != canonical {
        aliases.push((configured.clone(), canonical.clone()));
    }
    if exists {
        for alias in bind_aliases(&canonical, mounts) {
            if !aliases.iter().any(|(a, _)| *a == alias.0) && alias.0 != canonical {
                aliases.push(alias);
            }
        }
    }
    Root {
        configured,
        canonical,
        exists,
        aliases,
    }
}

/// One line of /proc/self/mountinfo, the parts we need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The filesystem's device, `major:minor`.
    pub dev: String,
    /// The directory of the filesystem that is mounted (bind mounts: not "/").
    pub fs_root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
}

/// The entries of a mountinfo text; lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 5 {
                return None;
            }
            Some(MountEntry {
                dev: f[2].to_string(),
                fs_root: PathBuf::from(unescape_mount_field(f[3])),
                mount_point: PathBuf::from(unescape_mount_field(f[4])),
            })
        })
        .collect()
}

/// A path field of `/proc/*/mountinfo` or `/proc/*/mounts` as it is: the kernel escapes space,
/// tab, newline and backslash as `\ooo` (three octal digits). The one unescaper of mount
/// tables (roots here, cgroup.rs, attribution's tmpmounts); anything else is kept as it is.
pub fn unescape_mount_field(s: &str) -> std::ffi::OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                u8::try_from(v).ok()
            });
        if let Some(v) = octal {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    OsStr::from_bytes(&out).to_os_string()
}

/// Other mount points that show `canonical` (or a directory inside it), with the canonical
/// path each one maps to.
fn bind_aliases(canonical: &Path, mounts: &[MountEntry]) -> Vec<(PathBuf, PathBuf)> {
    // The mount that holds `canonical`: the last (most recent) with the longest mount point
    // that is a prefix of it.
    let Some(home) = mounts
        .iter()
        .filter(|m| canonical.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
    else {
        return Vec::new();
    };
    let Ok(rel) = canonical.strip_prefix(&home.mount_point) else {
        return Vec::new();
    };
    let in_fs = home.fs_root.join(rel);
    let mut out = Vec::new();
    for m in mounts.iter().filter(|m| m.dev == home.dev) {
        if m.mount_point == home.mount_point {
            continue;
        }
        if let Ok(below) = in_fs.strip_prefix(&m.fs_root) {
            // The root is visible inside this mount.
            out.push((m.mount_point.join(below), canonical.to_path_buf()));
        } else if let Ok(inner) = m.fs_root.strip_prefix(&in_fs) {
            // A directory inside the root is mounted here.
            out.push((m.mount_point.clone(), canonical.join(inner)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize(b"/a//b/./c/../d"), b"/a/b/d");
        assert_eq!(normalize(b"/.."), b"/");
        assert_eq!(normalize(b"/a/b/"), b"/a/b");
    }

    #[test]
    fn prefixes_cover_the_root_and_below() {
        let set = RootSet {
            roots: vec![Root {
                configured: "/var/lib/containerd".into(),
                canonical: "/var/lib/containerd".into(),
                exists: true,
                aliases: vec![],
            }],
        };
        assert_eq!(
            set.kernel_prefixes(),
            vec![
                b"/var/lib/containerd/".to_vec(),
                b"/var/lib/containerd\0".to_vec()
            ]
        );
        assert!(set.contains(b"/var/lib/containerd/x"));
        assert!(set.contains(b"/var/lib/containerd"));
        assert!(!set.contains(b"/var/lib/containerdx"));
    }

    #[test]
    fn aliases_map_to_the_canonical_path() {
        let set = RootSet {
            roots: vec![Root {
                configured: "/link".into(),
                canonical: "/data/ctr".into(),
                exists: true,
                aliases: vec![("/link".into(), "/data/ctr".into())],
            }],
        };
        assert_eq!(set.canonical_path(b"/link/a/../b"), b"/data/ctr/b");
        assert_eq!(set.canonical_path(b"/linkx/a"), b"/linkx/a");
    }

    #[test]
    fn finds_bind_mount_aliases() {
        let mounts = parse_mountinfo(
            "22 1 8:1 / / rw - ext4 /dev/vda rw\n\
             40 22 8:1 /var/lib /srv/lib rw - ext4 /dev/vda rw\n\
             41 22 8:1 /var/lib/containerd/io.containerd.content.v1.content /mnt/content rw - ext4 /dev/vda rw\n\
             42 22 0:5 / /proc rw - proc proc rw\n",
        );
        let aliases = bind_aliases(Path::new("/var/lib/containerd"), &mounts);
        assert!(aliases.contains(&("/srv/lib/containerd".into(), "/var/lib/containerd".into())));
        assert!(aliases.contains(&(
            "/mnt/content".into(),
            "/var/lib/containerd/io.containerd.content.v1.content".into()
        )));
        assert_eq!(aliases.len(), 2);
    }

    #[test]
    fn unescapes_mountinfo_octal() {
        assert_eq!(unescape_mount_field("/a\\040b"), OsStr::new("/a b"));
        assert_eq!(unescape_mount_field("/a\\134b"), OsStr::new("/a\\b"));
        // Not an escape the kernel writes: kept as it is.
        for kept in ["/a\\777", "/a\\04", "/a\\08x", "/a\\"] {
            assert_eq!(unescape_mount_field(kept), OsStr::new(kept));
        }
    }

    #[test]
    fn missing_root_is_planned_under_its_resolved_ancestor() {
        let dir = std::env::temp_dir().join(format!("ctrwatch-roots-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let (p, exists) = canonical_or_planned(&dir.join("not/yet"));
        assert!(!exists);
        assert!(p.ends_with("not/yet"));
        let _ = fs::remove_dir_all(&dir);
    }
}
