//! Finding every containerd instance on the node, with no flags.
//!
//! Sources, most authoritative first:
//! 1. running processes: `containerd` (`--root`, `--state`, `--config`/`-c`, else its default
//!    config file) and k3s / RKE2 servers and agents (`--data-dir`/`-d`, `K3S_DATA_DIR`, their
//!    `config.yaml`; their containerd uses `<data-dir>/agent/containerd` and
//!    `/run/k3s/containerd`);
//! 2. containerd's default config file `/etc/containerd/config.toml` (`root`, `state`, every
//!    snapshotter plugin's `root_path`, `imports`), in config versions 1 (short plugin names such
//!    as `[plugins.overlayfs]`) and 2/3 (`[plugins."io.containerd.snapshotter.v1.overlayfs"]`);
//! 3. directories that exist: the default root `/var/lib/containerd`, k3s's
//!    `/var/lib/rancher/k3s/agent/containerd` (or the `data-dir` of
//!    `/etc/rancher/k3s/config.yaml`), RKE2's `/var/lib/rancher/rke2/agent/containerd`;
//! 4. when nothing at all was found: the default root, so that its creation is seen.
//!
//! Instances are merged by canonical root (symlinks resolved), keeping every reason.
//! Everything is read through [`DiscoveryEnv`], so tests can stand a temporary directory in for
//! `/` and `/proc`.
//!
//! # Trust
//!
//! Any user can start a process whose argv[0] says `containerd` and whose arguments name a
//! "root", and any user can write a file that looks like a config. What discovery finds decides
//! what the daemon watches (with no `--root`) and what the audit reads, so only these are
//! believed ([`Refusal`] lists the rest, with the reason; [`log_refusals`] logs each once):
//! - a process whose real and effective uid are root, that runs in the node's root directory
//!   (not in a container or chroot, whose paths are not the node's), and whose executable —
//!   the running file, `stat` through `/proc/PID/exe` — is a regular file named `containerd`,
//!   `k3s` or `rke2` (k3s's containerd is the k3s binary), owned by root and not writable by
//!   group or others. The file itself is what runs: replacing its path later changes nothing
//!   for that process, so the directories above it are not checked.
//! - a config file (containerd's TOML and its `imports`, k3s's/RKE2's `config.yaml`) that is a
//!   regular file owned by root and not writable by group or others. It is opened with
//!   `O_NONBLOCK` and checked on the open file (`fstat`), so a FIFO cannot hang discovery and a
//!   file swapped between check and read is not read.
//! - never a system directory (`/`, `/usr`, `/proc/...`, see [`system_dir`]) as a root, state
//!   or snapshotter directory, even from a trusted source: that would watch the whole node.
//!   Give such a directory with `--root` to watch it anyway.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::paths::{RootLayout, SNAPSHOTTER_PREFIX};
use ctrwatch_event::escape_path as esc;

/// containerd's default root.
pub const DEFAULT_ROOT: &str = "/var/lib/containerd";
/// containerd's default state directory (Linux).
pub const DEFAULT_STATE: &str = "/run/containerd";
/// containerd's default config file.
pub const DEFAULT_CONFIG: &str = "/etc/containerd/config.toml";
/// k3s's default data directory.
pub const K3S_DEFAULT_DATA_DIR: &str = "/var/lib/rancher/k3s";
/// k3s's default config file.
pub const K3S_DEFAULT_CONFIG: &str = "/etc/rancher/k3s/config.yaml";
/// The state directory k3s (and RKE2) give their containerd.
pub const K3S_STATE: &str = "/run/k3s/containerd";
/// RKE2's default data directory.
pub const RKE2_DEFAULT_DATA_DIR: &str = "/var/lib/rancher/rke2";
/// RKE2's default config file.
pub const RKE2_DEFAULT_CONFIG: &str = "/etc/rancher/rke2/config.yaml";

/// Largest config file read.
const MAX_CONFIG: u64 = 1 << 20;
/// Most config files read for one instance (imports included).
const MAX_CONFIG_FILES: usize = 32;
/// Most symlinks followed resolving one path (as the kernel's 40).
const MAX_LINKS: usize = 40;

/// Names of the executables a containerd may run as: containerd itself, and the multi-call
/// k3s and RKE2 binaries (k3s's containerd is `<data-dir>/data/<hash>/bin/containerd`, a
/// symlink to the k3s binary).
const CONTAINERD_EXES: [&str; 3] = ["containerd", "k3s", "rke2"];

/// Directories never taken as a containerd root, state or snapshotter directory: watching one
/// would record every file operation of a large part of the node. Everything below the pseudo
/// filesystems ([`PSEUDO_FS`]) is refused too.
const SYSTEM_DIRS: [&str; 26] = [
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/local",
    "/usr/sbin",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/run",
    "/var/tmp",
];
/// Kernel filesystems: nothing below them is containerd's.
const PSEUDO_FS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// containerd config version 1 short plugin names that are snapshotters
/// (`v1MigratePluginName` in containerd's config package).
const V1_SNAPSHOTTERS: [&str; 6] = ["aufs", "btrfs", "devmapper", "native", "overlayfs", "zfs"];

/// Where discovery looks: a directory standing for `/` and the proc filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryEnv {
    /// The directory that stands for `/` (`/` on a real system). Paths found are reported as
    /// seen from it (without the prefix).
    pub prefix: PathBuf,
    /// The proc filesystem (`/proc`).
    pub proc_root: PathBuf,
    /// The uid trusted as root: processes must run as it and files be owned by it (0; a fake
    /// system made by an unprivileged test uses its own uid).
    pub root_uid: u32,
}

impl DiscoveryEnv {
    /// The running system: `/` and `/proc`.
    pub fn system() -> DiscoveryEnv {
        DiscoveryEnv {
            prefix: PathBuf::from("/"),
            proc_root: PathBuf::from("/proc"),
            root_uid: 0,
        }
    }

    /// A fake system under `prefix` with its proc filesystem at `proc_root`.
    pub fn new(prefix: impl Into<PathBuf>, proc_root: impl Into<PathBuf>) -> DiscoveryEnv {
        DiscoveryEnv {
            prefix: prefix.into(),
            proc_root: proc_root.into(),
            root_uid: 0,
        }
    }

    /// Trusts `uid` as root (see the field).
    pub fn with_root_uid(mut self, uid: u32) -> DiscoveryEnv {
        self.root_uid = uid;
        self
    }

    /// The absolute path of the fake system that the real path `host` is (the inverse of
    /// [`Self::host`]; `host` itself when it is not under the prefix).
    fn logical(&self, host: &Path) -> PathBuf {
        match host.strip_prefix(&self.prefix) {
            Ok(rest) => Path::new("/").join(rest),
            Err(_) => host.to_path_buf(),
        }
    }

    /// Where the absolute path `p` really is.
    fn host(&self, p: &Path) -> PathBuf {
        let rel: PathBuf = p
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        self.prefix.join(rel)
    }

    fn is_dir(&self, p: &Path) -> bool {
        self.host(p).is_dir()
    }

    /// Reads the config file `p` if it is trusted (see the module docs): `Ok(None)` if it does
    /// not exist, `Err(reason)` if it is refused or unreadable.
    fn read_trusted(&self, p: &Path, limit: u64) -> Result<Option<Vec<u8>>, String> {
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(self.host(p))
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot be opened: {e}")),
        };
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot be read: {e}"))?;
        file_trust(&meta, self.root_uid)?;
        let mut buf = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot be read: {e}"))?;
        if buf.len() as u64 > limit {
            return Err(format!("larger than {limit} bytes"));
        }
        Ok(Some(buf))
    }

    /// `p` with symlinks resolved inside the prefix (absolute targets stay inside it); parts
    /// that do not exist are kept as written. `.` and `..` are folded.
    pub fn canonical(&self, p: &Path) -> PathBuf {
        let mut todo: Vec<OsString> = components_rev(p);
        let mut out: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == "." || c.is_empty() {
                continue;
            }
            if c == ".." {
                out.pop();
                continue;
            }
            out.push(c);
            let logical: PathBuf = std::iter::once(OsString::from("/"))
                .chain(out.iter().cloned())
                .collect();
            let host = self.host(&logical);
            let is_link = fs::symlink_metadata(&host).is_ok_and(|m| m.file_type().is_symlink());
            if !is_link || links >= MAX_LINKS {
                continue;
            }
            let Ok(target) = fs::read_link(&host) else {
                continue;
            };
            links += 1;
            out.pop();
            if target.is_absolute() {
                out.clear();
            }
            todo.extend(components_rev(&target));
        }
        std::iter::once(OsString::from("/")).chain(out).collect()
    }
}

/// The components of `p` in reverse order (a stack: next component last).
fn components_rev(p: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = p
        .as_os_str()
        .as_bytes()
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(|c| OsString::from_vec(c.to_vec()))
        .collect();
    v.reverse();
    v
}

/// Reads a file of the proc filesystem (never a FIFO or anything that blocks).
fn read_limited(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let f = fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf).ok()?;
    (buf.len() as u64 <= limit).then_some(buf)
}

/// What kind of file `meta` is, for messages.
fn file_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Whether a file (config or executable) can be trusted: a regular file owned by `root_uid`,
/// not writable by group or others. `Err` says why not.
fn file_trust(meta: &fs::Metadata, root_uid: u32) -> Result<(), String> {
    if !meta.is_file() {
        return Err(format!("{}, not a regular file", file_kind(meta)));
    }
    if meta.uid() != root_uid {
        return Err(format!("owned by uid {}, not root", meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "writable by group or others (mode {mode:04o}), so not only root controls it"
        ));
    }
    Ok(())
}

/// Why `p` (canonical) is never a containerd directory: it is a system directory or lies on a
/// kernel filesystem. `None` for any other path.
pub fn system_dir(p: &Path) -> Option<String> {
    if SYSTEM_DIRS.iter().any(|d| p == Path::new(d)) {
        return Some(format!(
            "{} is a system directory: watching it would record a large part of the node",
            esc(p)
        ));
    }
    PSEUDO_FS
        .iter()
        .find(|d| p.starts_with(d))
        .map(|d| format!("{} is on the kernel filesystem {d}", esc(p)))
}

/// A snapshotter's directory.
#[allow(
    missing_docs,
    reason = "the fields are what their names say; the type's doc explains them"
)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotterRoot {
    /// The plugin id (`overlayfs`, `native`, ...).
    pub name: String,
    pub path: PathBuf,
    /// Set by `root_path` in a config file (else: found under the root).
    pub configured: bool,
}

/// One containerd instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// The root, canonical.
    pub root: PathBuf,
    /// The state directory, canonical.
    pub state: PathBuf,
    /// Every snapshotter directory known: configured ones and those under the root.
    pub snapshotter_roots: Vec<SnapshotterRoot>,
    /// The config file(s) read for it.
    pub config_files: Vec<PathBuf>,
    /// Why it is there: "default", "config /etc/containerd/config.toml",
    /// "process 1234 --root", "k3s data-dir /var/lib/rancher/k3s (default)", ...
    pub source: Vec<String>,
    /// The running containerd using it, if one was seen.
    pub containerd_pid: Option<u32>,
    /// That process's executable.
    pub exe: Option<PathBuf>,
    /// Whether the root exists.
    pub exists: bool,
    /// Config files that could not be parsed, and similar.
    pub problems: Vec<String>,
}

impl Instance {
    /// The paths [`crate::paths::classify_path`] needs.
    /// The directories to attribute events to. A state or snapshotter directory that is a
    /// system directory (a trusted containerd started with `--state /`) is left out: it was
    /// refused (see [`discover_all`]), and keeping it would claim every path of the node.
    pub fn layout(&self) -> RootLayout {
        RootLayout {
            root: self.root.clone(),
            state: system_dir(&self.state)
                .is_none()
                .then(|| self.state.clone()),
            snapshotter_roots: self
                .snapshotter_roots
                .iter()
                .filter(|s| s.configured && system_dir(&s.path).is_none())
                .map(|s| (s.name.clone(), s.path.clone()))
                .collect(),
        }
    }
}

/// Something discovery found and did not believe: a process, a config file, or a directory
/// that would have been watched. Shown by `ctrwatch roots`, logged once by the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Refusal {
    /// What: `process 1234 containerd (exe /usr/bin/bash; --root /x --state /)`,
    /// `config /etc/containerd/config.toml`, `state / of /var/lib/containerd`. Paths escaped.
    pub what: String,
    /// Why, e.g. `runs as uid 1001 (effective 1001), not root`.
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.reason)
    }
}

/// What [`discover_all`] found: the instances, and what it refused.
#[allow(
    missing_docs,
    reason = "the fields are what their names say; the type's doc explains them"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Discovery {
    pub instances: Vec<Instance>,
    pub refused: Vec<Refusal>,
}

/// Logs each refusal as a warning, once per process (refusals already logged are skipped):
/// the daemon rediscovers every few seconds.
pub fn log_refusals(refused: &[Refusal]) {
    /// Refusals logged so far; cleared when it grows large (then some are logged again).
    static LOGGED: Mutex<Option<HashSet<Refusal>>> = Mutex::new(None);
    const MAX_REMEMBERED: usize = 4096;
    let Ok(mut guard) = LOGGED.lock() else {
        return;
    };
    let logged = guard.get_or_insert_with(HashSet::new);
    for r in refused {
        if logged.contains(r) {
            continue;
        }
        if logged.len() >= MAX_REMEMBERED {
            logged.clear();
        }
        logged.insert(r.clone());
        log::warn!("containerd discovery refused {r}");
    }
}

/// The directories to watch for `instances`: each root and state dir, and snapshotter
/// directories outside their root; duplicates, directories inside another one and system
/// directories ([`system_dir`]) dropped.
pub fn watch_roots(instances: &[Instance]) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = Vec::new();
    for i in instances {
        all.push(i.root.clone());
        all.push(i.state.clone());
        for s in &i.snapshotter_roots {
            if !s.path.starts_with(&i.root) {
                all.push(s.path.clone());
            }
        }
    }
    all.retain(|p| system_dir(p).is_none());
    let mut out: Vec<PathBuf> = Vec::new();
    for p in &all {
        if out.contains(p) {
            continue;
        }
        if all.iter().any(|q| q != p && p.starts_with(q)) {
            continue;
        }
        out.push(p.clone());
    }
    out
}

/// A human-readable listing (what `ctrwatch roots` prints): the instances, what was refused
/// and why, and the directories watched. Paths are escaped.
pub fn describe(found: &Discovery) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for i in &found.instances {
        let _ = writeln!(
            s,
            "{}{}",
            esc(&i.root),
            if i.exists {
                ""
            } else {
                "  (does not exist yet)"
            }
        );
        let _ = writeln!(s, "  state:        {}", esc(&i.state));
        for sn in &i.snapshotter_roots {
            let _ = writeln!(
                s,
                "  snapshotter:  {} {}{}",
                ctrwatch_event::escape_bytes(sn.name.as_bytes()),
                esc(&sn.path),
                if sn.configured { " (root_path)" } else { "" }
            );
        }
        for c in &i.config_files {
            let _ = writeln!(s, "  config:       {}", esc(c));
        }
        if let Some(pid) = i.containerd_pid {
            let exe = i
                .exe
                .as_ref()
                .map(|e| format!(" {}", esc(e)))
                .unwrap_or_default();
            let _ = writeln!(s, "  containerd:   pid {pid}{exe}");
        }
        for why in &i.source {
            let _ = writeln!(s, "  found by:     {why}");
        }
        for p in &i.problems {
            let _ = writeln!(s, "  problem:      {p}");
        }
    }
    for r in &found.refused {
        let _ = writeln!(s, "refused:      {r}");
    }
    let _ = writeln!(s, "watched directories:");
    for p in watch_roots(&found.instances) {
        let _ = writeln!(s, "  {}", esc(&p));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Config files

/// What containerd config files say about where things are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ConfigFacts {
    root: Option<PathBuf>,
    state: Option<PathBuf>,
    /// Snapshotter plugin id → root_path.
    snapshotter_roots: BTreeMap<String, PathBuf>,
    files: Vec<PathBuf>,
    problems: Vec<String>,
    /// Files refused (see the module docs).
    refused: Vec<Refusal>,
}

/// Makes `p` absolute against `base` (a directory), lexically.
fn absolute(p: &str, base: &Path) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Reads a containerd config file and its imports into `facts` (later files override earlier
/// ones, as containerd merges imports over the main file). Returns whether `path` was read.
fn read_config(env: &DiscoveryEnv, path: &Path, facts: &mut ConfigFacts) -> bool {
    if facts.files.len() >= MAX_CONFIG_FILES || facts.files.iter().any(|f| f == path) {
        return false;
    }
    let bytes = match env.read_trusted(path, MAX_CONFIG) {
        Ok(Some(b)) => b,
        Ok(None) => return false,
        Err(reason) => {
            let r = Refusal {
                what: format!("config {}", esc(path)),
                reason,
            };
            facts.problems.push(format!("{r} (not read)"));
            facts.refused.push(r);
            return false;
        }
    };
    facts.files.push(path.to_path_buf());
    let text = String::from_utf8_lossy(&bytes);
    let table = match text.parse::<toml::Table>() {
        Ok(t) => t,
        Err(e) => {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("parse error");
            facts.problems.push(format!(
                "config {}: not valid TOML: {}",
                esc(path),
                ctrwatch_event::escape_bytes(first.as_bytes())
            ));
            return true;
        }
    };
    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let version = table
        .get("version")
        .and_then(toml::Value::as_integer)
        .unwrap_or(1);
    let nonempty = |k: &str| {
        table
            .get(k)
            .and_then(toml::Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if let Some(r) = nonempty("root") {
        facts.root = Some(absolute(r, Path::new("/")));
    }
    if let Some(s) = nonempty("state") {
        facts.state = Some(absolute(s, Path::new("/")));
    }
    if let Some(plugins) = table.get("plugins").and_then(toml::Value::as_table) {
        for (k, v) in plugins {
            let name = match k.strip_prefix(SNAPSHOTTER_PREFIX) {
                Some(n) if !n.is_empty() => n,
                Some(_) => continue,
                None if version <= 1 && V1_SNAPSHOTTERS.contains(&k.as_str()) => k.as_str(),
                None => continue,
            };
            if let Some(rp) = v
                .get("root_path")
                .and_then(toml::Value::as_str)
                .filter(|s| !s.is_empty())
            {
                facts
                    .snapshotter_roots
                    .insert(name.to_owned(), absolute(rp, Path::new("/")));
            }
        }
    }
    let imports: Vec<String> = table
        .get("imports")
        .and_then(toml::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(toml::Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    for imp in imports {
        let p = absolute(&imp, &dir);
        for f in glob(env, &p) {
            read_config(env, &f, facts);
        }
    }
    true
}

/// Expands `*` and `?` in the last component of `p` (sorted, as Go's `filepath.Glob`);
/// patterns elsewhere are not expanded.
fn glob(env: &DiscoveryEnv, p: &Path) -> Vec<PathBuf> {
    let Some(name) = p.file_name().map(|n| n.as_bytes().to_vec()) else {
        return Vec::new();
    };
    if !name.contains(&b'*') && !name.contains(&b'?') {
        return vec![p.to_path_buf()];
    }
    let dir = p.parent().unwrap_or(Path::new("/"));
    let Ok(rd) = fs::read_dir(env.host(dir)) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| wildcard(&name, e.file_name().as_bytes()))
        .map(|e| dir.join(e.file_name()))
        .collect();
    out.sort();
    out
}

/// Shell-style match of `*` and `?` (no classes, no escapes).
fn wildcard(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while i < s.len() {
        match pat.get(p) {
            Some(b'*') => {
                star = Some(p);
                mark = i;
                p += 1;
            }
            Some(&c) if c == b'?' || Some(&c) == s.get(i) => {
                p += 1;
                i += 1;
            }
            _ => match star {
                Some(sp) => {
                    p = sp + 1;
                    mark += 1;
                    i = mark;
                }
                None => return false,
            },
        }
    }
    pat.get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// `data-dir:` from a k3s/RKE2 `config.yaml` and its `config.yaml.d/*.yaml` (later files
/// win). Only top-level `key: value` lines are understood, which is all these files use for
/// it.
fn yaml_data_dir(env: &DiscoveryEnv, config: &Path, refused: &mut Vec<Refusal>) -> Option<PathBuf> {
    let mut files = vec![config.to_path_buf()];
    let mut d = config.as_os_str().to_owned();
    d.push(".d");
    files.extend(glob(env, &PathBuf::from(d).join("*.yaml")));
    let mut out = None;
    for f in files {
        let bytes = match env.read_trusted(&f, MAX_CONFIG) {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(reason) => {
                refused.push(Refusal {
                    what: format!("config {}", esc(&f)),
                    reason,
                });
                continue;
            }
        };
        for line in String::from_utf8_lossy(&bytes).lines() {
            let Some(v) = line.strip_prefix("data-dir:") else {
                continue;
            };
            let v = v.split(" #").next().unwrap_or("").trim();
            let v = v.trim_matches(|c| c == '"' || c == '\'');
            if v.starts_with('/') {
                out = Some(PathBuf::from(v));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Processes

#[derive(Clone, Debug, Default)]
struct Proc {
    pid: u32,
    exe: Option<PathBuf>,
    comm: Option<String>,
    args: Vec<String>,
    cwd: Option<PathBuf>,
    environ: Vec<String>,
}

impl Proc {
    fn argv0_base(&self) -> Option<&str> {
        self.args.first().map(|a| a.rsplit('/').next().unwrap_or(a))
    }

    fn exe_base(&self) -> Option<String> {
        self.exe
            .as_ref()
            .and_then(|e| e.file_name())
            .map(|n| n.to_string_lossy().into_owned())
    }

    /// The value of flag `names` (`--x v`, `--x=v`, `-x v`, `-x=v`); the last one wins.
    fn flag(&self, names: &[&str]) -> Option<String> {
        let mut out = None;
        let mut it = self.args.iter().skip(1);
        while let Some(a) = it.next() {
            let Some(s) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
                continue;
            };
            for n in names {
                if s == *n {
                    out = it.next().cloned();
                    break;
                }
                if let Some(v) = s.strip_prefix(n).and_then(|r| r.strip_prefix('=')) {
                    out = Some(v.to_owned());
                    break;
                }
            }
        }
        out
    }

    fn has_flag(&self, name: &str) -> bool {
        self.args.iter().skip(1).any(|a| {
            let s = a.trim_start_matches('-');
            a.starts_with('-') && (s == name || s.starts_with(&format!("{name}=")))
        })
    }

    /// The first argument that is not a flag or a flag's value (`takes_value`: flags with a
    /// separate value).
    fn first_positional(&self, takes_value: &[&str]) -> Option<&str> {
        let mut it = self.args.iter().skip(1);
        while let Some(a) = it.next() {
            match a.strip_prefix("--").or_else(|| a.strip_prefix('-')) {
                Some(s) => {
                    if !s.contains('=') && takes_value.contains(&s) {
                        it.next();
                    }
                }
                None => return Some(a),
            }
        }
        None
    }

    fn env(&self, key: &str) -> Option<String> {
        self.environ
            .iter()
            .find_map(|e| e.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
            .filter(|v| !v.is_empty())
    }

    /// A path argument as an absolute path (relative ones against the process's cwd).
    fn path(&self, p: &str) -> PathBuf {
        absolute(p, self.cwd.as_deref().unwrap_or(Path::new("/")))
    }
}

fn nul_split(b: &[u8]) -> Vec<String> {
    b.split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn read_procs(env: &DiscoveryEnv) -> Vec<Proc> {
    let Ok(rd) = fs::read_dir(&env.proc_root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let dir = e.path();
        let exe = fs::read_link(dir.join("exe")).ok().map(|p| {
            // A replaced binary reads "/path (deleted)".
            let b = p.as_os_str().as_bytes();
            let p = match b.strip_suffix(b" (deleted)") {
                Some(s) => PathBuf::from(OsString::from_vec(s.to_vec())),
                None => p,
            };
            env.logical(&p)
        });
        let comm = read_limited(&dir.join("comm"), 64)
            .map(|b| String::from_utf8_lossy(&b).trim_end().to_owned());
        let args = read_limited(&dir.join("cmdline"), 256 << 10)
            .map(|b| nul_split(&b))
            .unwrap_or_default();
        out.push(Proc {
            pid,
            exe,
            comm,
            args,
            cwd: fs::read_link(dir.join("cwd")).ok(),
            environ: Vec::new(),
        });
    }
    out.sort_by_key(|p| p.pid);
    out
}

fn read_environ(env: &DiscoveryEnv, p: &mut Proc) {
    if let Some(b) = read_limited(
        &env.proc_root.join(p.pid.to_string()).join("environ"),
        1 << 20,
    ) {
        p.environ = nul_split(&b);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProcKind {
    Containerd,
    K3s,
    Rke2,
}

fn proc_kind(p: &Proc) -> Option<ProcKind> {
    let names = [
        p.argv0_base().map(str::to_owned),
        p.comm.clone(),
        p.exe_base(),
    ];
    let is = |n: &str| names.iter().flatten().any(|x| x == n);
    // k3s's containerd is the k3s binary (multi-call) started as "containerd": argv[0] and
    // comm say containerd, the exe says k3s.
    if p.argv0_base() == Some("containerd") || p.comm.as_deref() == Some("containerd") {
        return Some(ProcKind::Containerd);
    }
    if p.exe_base().as_deref() == Some("containerd") && p.comm.is_none() {
        return Some(ProcKind::Containerd);
    }
    if is("k3s") || is("k3s-server") || is("k3s-agent") {
        return Some(ProcKind::K3s);
    }
    if is("rke2") {
        return Some(ProcKind::Rke2);
    }
    None
}

/// The real and effective uid of process `pid`, from the `Uid:` line of its status.
fn proc_uids(env: &DiscoveryEnv, pid: u32) -> Option<(u32, u32)> {
    let status = read_limited(
        &env.proc_root.join(pid.to_string()).join("status"),
        64 << 10,
    )?;
    let text = String::from_utf8_lossy(&status);
    let line = text.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|v| v.parse::<u32>().ok());
    Some((ids.next()??, ids.next()??))
}

/// Whether process `p`, which looks like a containerd of `kind`, is trusted (see the module
/// docs). `Err` says why not.
fn trust_process(env: &DiscoveryEnv, p: &Proc, kind: ProcKind) -> Result<(), String> {
    let dir = env.proc_root.join(p.pid.to_string());
    match proc_uids(env, p.pid) {
        Some((real, effective)) if real == env.root_uid && effective == env.root_uid => {}
        Some((real, effective)) => {
            return Err(format!(
                "runs as uid {real} (effective {effective}), not root: any user can start a \
                 process named containerd"
            ));
        }
        None => return Err("its user cannot be read from /proc".to_owned()),
    }
    let Some(exe) = &p.exe else {
        return Err("its executable cannot be read (/proc/PID/exe)".to_owned());
    };
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let allowed: &[&str] = match kind {
        ProcKind::Containerd => &CONTAINERD_EXES,
        ProcKind::K3s => &["k3s"],
        ProcKind::Rke2 => &["rke2"],
    };
    if !allowed.contains(&name.as_str()) {
        return Err(format!(
            "its executable {} is not a {} binary",
            esc(exe),
            allowed.join(" or ")
        ));
    }
    // The running file itself, even if its path was replaced or removed since.
    let meta = fs::metadata(dir.join("exe"))
        .map_err(|e| format!("its executable {} cannot be checked: {e}", esc(exe)))?;
    file_trust(&meta, env.root_uid)
        .map_err(|why| format!("its executable {} is {why}", esc(exe)))?;
    let same_root = match (fs::metadata(dir.join("root")), fs::metadata(&env.prefix)) {
        (Ok(theirs), Ok(ours)) => theirs.dev() == ours.dev() && theirs.ino() == ours.ino(),
        _ => false,
    };
    if !same_root {
        return Err(
            "it runs in another root directory (a container or chroot): its paths are not this \
             node's"
                .to_owned(),
        );
    }
    Ok(())
}

/// How a refused process is named: pid, argv[0], exe and the directories it names.
fn describe_proc(p: &Proc) -> String {
    let arg0 = p.args.first().map(String::as_str).unwrap_or("?");
    let mut details = Vec::new();
    if let Some(e) = &p.exe {
        details.push(format!("exe {}", esc(e)));
    }
    for flag in ["root", "state", "config", "data-dir"] {
        if let Some(v) = p.flag(&[flag]) {
            details.push(format!(
                "--{flag} {}",
                ctrwatch_event::escape_bytes(v.as_bytes())
            ));
        }
    }
    format!(
        "process {} {} ({})",
        p.pid,
        ctrwatch_event::escape_bytes(arg0.as_bytes()),
        details.join(", ")
    )
}

// ---------------------------------------------------------------------------------------------
// Discovery

/// A found instance before merging.
struct Candidate {
    root: PathBuf,
    state: PathBuf,
    config: ConfigFacts,
    source: String,
    pid: Option<u32>,
    exe: Option<PathBuf>,
}

/// containerd's own flags that take a value.
const CONTAINERD_VALUE_FLAGS: [&str; 8] = [
    "c",
    "config",
    "l",
    "log-level",
    "a",
    "address",
    "root",
    "state",
];

fn containerd_candidate(env: &DiscoveryEnv, p: &Proc) -> Option<Candidate> {
    // `containerd config dump`, `containerd publish`, ... are not the daemon.
    if let Some(sub) = p.first_positional(&CONTAINERD_VALUE_FLAGS)
        && ["config", "publish", "oci-hook", "help", "h"].contains(&sub)
    {
        return None;
    }
    let mut config = ConfigFacts::default();
    let mut why = vec![];
    let config_path = p.flag(&["config", "c"]).map(|c| p.path(&c));
    match &config_path {
        Some(c) => {
            // A refused file is already a problem, with the reason.
            if !read_config(env, c, &mut config) && config.refused.is_empty() {
                config
                    .problems
                    .push(format!("config {} (from --config) not readable", esc(c)));
            }
        }
        None => {
            read_config(env, Path::new(DEFAULT_CONFIG), &mut config);
        }
    }
    let root = match p.flag(&["root"]) {
        Some(r) => {
            why.push("--root");
            p.path(&r)
        }
        None => match &config.root {
            Some(r) => {
                why.push("config root");
                r.clone()
            }
            None => {
                why.push("default root");
                PathBuf::from(DEFAULT_ROOT)
            }
        },
    };
    let state = match p.flag(&["state"]) {
        Some(s) => p.path(&s),
        None => config
            .state
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE)),
    };
    let cfg = config
        .files
        .first()
        .map(|f| format!(", config {}", esc(f)))
        .unwrap_or_default();
    Some(Candidate {
        root,
        state,
        source: format!("process {} {}{cfg}", p.pid, why.join(", ")),
        config,
        pid: Some(p.pid),
        exe: p.exe.clone(),
    })
}

fn k3s_candidate(
    env: &DiscoveryEnv,
    p: &Proc,
    kind: ProcKind,
    refused: &mut Vec<Refusal>,
) -> Option<Candidate> {
    let (name, default_dd, default_cfg, env_prefix) = match kind {
        ProcKind::Rke2 => ("rke2", RKE2_DEFAULT_DATA_DIR, RKE2_DEFAULT_CONFIG, "RKE2"),
        _ => ("k3s", K3S_DEFAULT_DATA_DIR, K3S_DEFAULT_CONFIG, "K3S"),
    };
    // Only servers and agents run containerd; other subcommands (kubectl, crictl, ctr, ...)
    // are the same binary.
    let sub = p.first_positional(&["data-dir", "d", "config", "c"]);
    let by_comm = p
        .comm
        .as_deref()
        .is_some_and(|c| c.ends_with("-server") || c.ends_with("-agent"));
    if !(matches!(sub, Some("server" | "agent")) || by_comm) {
        return None;
    }
    if p.flag(&["container-runtime-endpoint"]).is_some()
        || p.has_flag("docker")
        || p.has_flag("disable-agent")
    {
        return None; // no embedded containerd
    }
    let (data_dir, why) = if let Some(d) = p.flag(&["data-dir", "d"]) {
        (p.path(&d), "--data-dir".to_owned())
    } else if let Some(d) = p.env(&format!("{env_prefix}_DATA_DIR")) {
        (p.path(&d), format!("{env_prefix}_DATA_DIR"))
    } else {
        let cfg = p
            .flag(&["config", "c"])
            .or_else(|| p.env(&format!("{env_prefix}_CONFIG_FILE")))
            .map(|c| p.path(&c))
            .unwrap_or_else(|| PathBuf::from(default_cfg));
        match yaml_data_dir(env, &cfg, refused) {
            Some(d) => (d, format!("data-dir in {}", esc(&cfg))),
            None => (PathBuf::from(default_dd), "default data-dir".to_owned()),
        }
    };
    if p.has_flag("rootless") && why == "default data-dir" {
        return None; // ~/.rancher/k3s of some user: its containerd process is found instead
    }
    Some(k3s_layout(
        env,
        &data_dir,
        format!("process {} {name} {why} {}", p.pid, esc(&data_dir)),
    ))
}

/// The containerd of a k3s/RKE2 data dir.
fn k3s_layout(env: &DiscoveryEnv, data_dir: &Path, source: String) -> Candidate {
    let mut config = ConfigFacts::default();
    read_config(
        env,
        &data_dir.join("agent/etc/containerd/config.toml"),
        &mut config,
    );
    Candidate {
        root: data_dir.join("agent/containerd"),
        state: PathBuf::from(K3S_STATE),
        config,
        source,
        pid: None,
        exe: None,
    }
}

/// Finds every trusted containerd instance. See the module docs; [`discover_all`] also says
/// what was refused.
pub fn discover(env: &DiscoveryEnv) -> Vec<Instance> {
    discover_all(env).instances
}

/// Finds every trusted containerd instance, and lists what was refused and why.
pub fn discover_all(env: &DiscoveryEnv) -> Discovery {
    let mut cands: Vec<Candidate> = Vec::new();
    let mut refused: Vec<Refusal> = Vec::new();

    for mut p in read_procs(env) {
        let Some(kind) = proc_kind(&p) else {
            continue;
        };
        if let Err(reason) = trust_process(env, &p, kind) {
            refused.push(Refusal {
                what: describe_proc(&p),
                reason,
            });
            continue;
        }
        match kind {
            ProcKind::Containerd => cands.extend(containerd_candidate(env, &p)),
            _ => {
                read_environ(env, &mut p);
                cands.extend(k3s_candidate(env, &p, kind, &mut refused));
            }
        }
    }

    let mut config = ConfigFacts::default();
    let read = read_config(env, Path::new(DEFAULT_CONFIG), &mut config);
    refused.extend(config.refused.iter().cloned());
    if read {
        cands.push(Candidate {
            root: config
                .root
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
            state: config
                .state
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE)),
            source: format!("config {DEFAULT_CONFIG}"),
            config,
            pid: None,
            exe: None,
        });
    }

    if env.is_dir(Path::new(DEFAULT_ROOT)) {
        cands.push(default_candidate("default"));
    }

    for (name, default_dd, cfg) in [
        ("k3s", K3S_DEFAULT_DATA_DIR, K3S_DEFAULT_CONFIG),
        ("rke2", RKE2_DEFAULT_DATA_DIR, RKE2_DEFAULT_CONFIG),
    ] {
        let mut dirs = vec![(PathBuf::from(default_dd), "(default)".to_owned())];
        if let Some(d) = yaml_data_dir(env, Path::new(cfg), &mut refused) {
            dirs.insert(0, (d, format!("(config {cfg})")));
        }
        for (dd, why) in dirs {
            if env.is_dir(&dd.join("agent/containerd")) {
                cands.push(k3s_layout(
                    env,
                    &dd,
                    format!("{name} data-dir {} {why}", esc(&dd)),
                ));
            }
        }
    }

    if cands.is_empty() {
        cands.push(default_candidate(
            "default (nothing else found; watched for its creation)",
        ));
    }

    for c in &cands {
        refused.extend(c.config.refused.iter().cloned());
    }
    let mut instances = merge(env, cands);
    instances.retain(|i| match system_dir(&i.root) {
        Some(reason) => {
            refused.push(Refusal {
                what: format!("root {} ({})", esc(&i.root), i.source.join("; ")),
                reason: format!("{reason}; give it with --root to watch it anyway"),
            });
            false
        }
        None => true,
    });
    for i in &mut instances {
        let mut dirs = vec![("state", &i.state)];
        dirs.extend(
            i.snapshotter_roots
                .iter()
                .filter(|s| s.configured)
                .map(|s| ("snapshotter directory", &s.path)),
        );
        for (what, dir) in dirs {
            if let Some(reason) = system_dir(dir) {
                let r = Refusal {
                    what: format!("{what} {} of {}", esc(dir), esc(&i.root)),
                    reason: format!("{reason}; not watched"),
                };
                i.problems.push(r.to_string());
                refused.push(r);
            }
        }
    }
    let mut seen = HashSet::new();
    refused.retain(|r| seen.insert(r.clone()));
    Discovery { instances, refused }
}

fn default_candidate(source: &str) -> Candidate {
    Candidate {
        root: PathBuf::from(DEFAULT_ROOT),
        state: PathBuf::from(DEFAULT_STATE),
        config: ConfigFacts::default(),
        source: source.to_owned(),
        pid: None,
        exe: None,
    }
}

fn merge(env: &DiscoveryEnv, cands: Vec<Candidate>) -> Vec<Instance> {
    let mut out: Vec<Instance> = Vec::new();
    for c in cands {
        let root = env.canonical(&c.root);
        let mut source = c.source.clone();
        if root != c.root {
            source.push_str(&format!(" (as {})", esc(&c.root)));
        }
        let configured: Vec<SnapshotterRoot> = c
            .config
            .snapshotter_roots
            .iter()
            .map(|(n, p)| SnapshotterRoot {
                name: n.clone(),
                path: env.canonical(p),
                configured: true,
            })
            .collect();
        match out.iter_mut().find(|i| i.root == root) {
            Some(i) => {
                if !i.source.contains(&source) {
                    i.source.push(source);
                }
                if i.containerd_pid.is_none() {
                    i.containerd_pid = c.pid;
                    i.exe = c.exe;
                }
                for s in configured {
                    if !i.snapshotter_roots.iter().any(|x| x.name == s.name) {
                        i.snapshotter_roots.push(s);
                    }
                }
                for f in c.config.files {
                    if !i.config_files.contains(&f) {
                        i.config_files.push(f);
                    }
                }
                i.problems.extend(c.config.problems);
            }
            None => out.push(Instance {
                exists: env.is_dir(&root),
                state: env.canonical(&c.state),
                root,
                snapshotter_roots: configured,
                config_files: c.config.files,
                source: vec![source],
                containerd_pid: c.pid,
                exe: c.exe,
                problems: c.config.problems,
            }),
        }
    }
    // Snapshotters found under each root.
    for i in &mut out {
        if let Ok(rd) = fs::read_dir(env.host(&i.root)) {
            let mut found: Vec<SnapshotterRoot> = rd
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| {
                    let n = e
                        .file_name()
                        .to_str()?
                        .strip_prefix(SNAPSHOTTER_PREFIX)?
                        .to_owned();
                    (!n.is_empty()).then_some(n)
                })
                .filter(|n| !i.snapshotter_roots.iter().any(|s| s.name == *n))
                .map(|n| SnapshotterRoot {
                    path: i.root.join(format!("{SNAPSHOTTER_PREFIX}{n}")),
                    name: n,
                    configured: false,
                })
                .collect();
            found.sort_by(|a, b| a.name.cmp(&b.name));
            i.snapshotter_roots.extend(found);
        }
        i.snapshotter_roots.sort_by(|a, b| a.name.cmp(&b.name));
    }
    out
}

#[cfg(test)]
mod tests;
