//! Where a process sits in the control-group tree, and what that says about it.
//!
//! Every process belongs to one cgroup per hierarchy, listed in `/proc/<pid>/cgroup` as
//! `hierarchy-id:controllers:path` lines. A cgroup v2 ("unified") system has a single `0::/path`
//! line; a v1 system has one line per controller hierarchy (`4:memory:/path`, plus systemd's
//! named `1:name=systemd:/path`); a hybrid system has both. The path names the systemd unit a
//! process runs in (`/system.slice/containerd.service`) and, for container processes, the
//! container (`/kubepods.slice/.../cri-containerd-<id>.scope`, `/docker/<id>`, `/k8s.io/<id>`...),
//! which is how ctrwatch tells containerd itself from the workloads it runs.
//!
//! The kernel side only sends the numeric cgroup v2 id of a task (the inode number of its
//! directory in the unified hierarchy); [`CgroupIdIndex`] maps those ids back to paths for
//! processes that are gone before their `/proc/<pid>/cgroup` could be read.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a process's cgroup membership says about it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CgroupInfo {
    /// The systemd unit (`containerd.service`, `session-3.scope`,
    /// `cri-containerd-<id>.scope`...), when the process's cgroup is a unit's own cgroup.
    pub unit: Option<String>,
    /// 64-hex container id, when the process runs in a container's cgroup.
    pub container_id: Option<String>,
    /// Kubernetes pod uid (dashed form), when the cgroup is under a pod's cgroup.
    pub pod_uid: Option<String>,
    /// The cgroup path that identified the process: the container's if any, else the unit's,
    /// else the unified (v2) path, else systemd's v1 path, else the first one listed.
    pub path: Option<String>,
}

/// Container runtimes' cgroup name prefixes, as in `cri-containerd-<id>.scope`. `crio-conmon-`
/// and `libpod-conmon-` name the host-side monitor of a container, not the container; they
/// do not match because what follows the prefix is not an id.
const CONTAINER_PREFIXES: &[&str] = &["cri-containerd-", "docker-", "crio-", "libpod-"];

/// Suffix the kernel appends to a v2 path whose cgroup has been removed.
const DELETED_SUFFIX: &str = " (deleted)";

/// One line of `/proc/<pid>/cgroup`.
struct Line<'a> {
    /// 0 for the unified hierarchy, 1 for systemd's named v1 hierarchy, 2 for any other.
    rank: u8,
    path: &'a str,
}

fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out: Vec<Line<'_>> = text
        .lines()
        .filter_map(|line| {
            // The path itself may contain ':' (runc's "slice:prefix:name" form), so split
            // only twice.
            let mut fields = line.trim_end().splitn(3, ':');
            let hierarchy = fields.next()?;
            let controllers = fields.next()?;
            let path = fields.next()?;
            if !path.starts_with('/') {
                return None;
            }
            let path = path.strip_suffix(DELETED_SUFFIX).unwrap_or(path);
            let rank = if hierarchy == "0" && controllers.is_empty() {
                0
            } else if controllers.split(',').any(|c| c == "name=systemd") {
                1
            } else {
                2
            };
            Some(Line { rank, path })
        })
        .collect();
    // Stable: among the other v1 controllers, keep the file's order.
    out.sort_by_key(|l| l.rank);
    out
}

/// Parses the text of `/proc/<pid>/cgroup` (v1, v2 or hybrid).
///
/// The unified (`0::`) line is consulted first, then systemd's `name=systemd` line, then the
/// other v1 controllers in the order listed, and each field is taken from the first line that
/// yields it: on hybrid systems a container may show up only in some controllers.
pub fn parse_proc_cgroup(text: &str) -> CgroupInfo {
    let lines = lines(text);
    let container = lines
        .iter()
        .find_map(|l| container_id_in_path(l.path).map(|id| (id, l.path)));
    let unit = lines
        .iter()
        .find_map(|l| unit_in_path(l.path).map(|u| (u, l.path)));
    let pod_uid = lines.iter().find_map(|l| pod_uid_in_path(l.path));
    let path = container
        .map(|(_, p)| p)
        .or(unit.map(|(_, p)| p))
        .or(lines.first().map(|l| l.path));
    CgroupInfo {
        unit: unit.map(|(u, _)| u.to_owned()),
        container_id: container.map(|(id, _)| id.to_owned()),
        pod_uid,
        path: path.map(str::to_owned),
    }
}

/// Interprets a single cgroup path (such as a unified-hierarchy path) as [`parse_proc_cgroup`]
/// would.
pub fn parse_path(path: &str) -> CgroupInfo {
    let path = path.strip_suffix(DELETED_SUFFIX).unwrap_or(path);
    let container_id = container_id_in_path(path).map(str::to_owned);
    let unit = unit_in_path(path).map(str::to_owned);
    CgroupInfo {
        unit,
        container_id,
        pod_uid: pod_uid_in_path(path),
        path: path.starts_with('/').then(|| path.to_owned()),
    }
}

/// The unified-hierarchy (`0::`) path of a `/proc/<pid>/cgroup` text, if it has one.
pub fn unified_path(text: &str) -> Option<&str> {
    lines(text)
        .into_iter()
        .find(|l| l.rank == 0)
        .map(|l| l.path)
}

/// Reads and parses `/proc/<pid>/cgroup`.
pub fn read_for_pid(pid: u32) -> std::io::Result<CgroupInfo> {
    read_for_pid_in(Path::new("/proc"), pid)
}

/// Reads and parses `<proc_root>/<pid>/cgroup` (for a host `/proc` mounted elsewhere).
pub fn read_for_pid_in(proc_root: &Path, pid: u32) -> std::io::Result<CgroupInfo> {
    read_text_in(proc_root, pid).map(|text| parse_proc_cgroup(&text))
}

/// The raw text of `<proc_root>/<pid>/cgroup`.
pub fn read_text_in(proc_root: &Path, pid: u32) -> std::io::Result<String> {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// The last component, when it is a systemd service or scope. A unit further up the path
/// (`/system.slice/foo.service/sub`) is a sub-cgroup the unit delegated, which may be anything.
fn unit_in_path(path: &str) -> Option<&str> {
    let last = components(path).next_back()?;
    [".service", ".scope"]
        .iter()
        .any(|suffix| {
            last.strip_suffix(suffix)
                .is_some_and(|stem| !stem.is_empty())
        })
        .then_some(last)
}

/// The innermost container id on the path (a Kubernetes-in-Docker node has two).
fn container_id_in_path(path: &str) -> Option<&str> {
    components(path).rev().find_map(container_id_in_component)
}

fn container_id_in_component(component: &str) -> Option<&str> {
    // runc's systemd cgroup driver names a container "slice:prefix:id"; with a cgroupfs
    // driver given such a name, it ends up as a literal directory name.
    if let Some((_, id)) = component.rsplit_once(':') {
        return is_container_id(id).then_some(id);
    }
    let stem = component.strip_suffix(".scope").unwrap_or(component);
    if is_container_id(stem) {
        // `/kubepods/<qos>/pod<uid>/<id>`, `/docker/<id>`, containerd's `/<namespace>/<id>`.
        return Some(stem);
    }
    CONTAINER_PREFIXES
        .iter()
        .filter_map(|prefix| stem.strip_prefix(prefix))
        .find(|id| is_container_id(id))
}

/// Container ids are 64 lowercase hex digits (a sha256).
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Pod uid from the kubelet's layouts: systemd driver
/// `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice/...`, cgroupfs
/// driver `/kubepods/<qos>/pod<uid>/...` (guaranteed pods sit right under `kubepods`).
fn pod_uid_in_path(path: &str) -> Option<String> {
    let mut under_kubepods = false;
    for component in components(path) {
        let uid = match component.strip_prefix("kubepods") {
            Some(rest) => {
                under_kubepods = true;
                slice_pod_uid(rest)
            }
            None if under_kubepods => component.strip_prefix("pod").map(str::to_owned),
            None => None,
        };
        if let Some(uid) = uid.filter(|uid| is_pod_uid(uid)) {
            return Some(uid);
        }
    }
    None
}

/// The uid in what follows "kubepods" in a slice name: "-besteffort-pod<uid>.slice" or
/// "-pod<uid>.slice". systemd slice names use '-' as the nesting separator, so the kubelet
/// writes the uid's dashes as '_'.
fn slice_pod_uid(rest: &str) -> Option<String> {
    let stem = rest.strip_suffix(".slice")?;
    let (_, last) = stem.rsplit_once('-')?;
    Some(last.strip_prefix("pod")?.replace('_', "-"))
}

/// A pod uid is a dashed UUID, or for static pods a 32-hex hash of the manifest.
fn is_pod_uid(s: &str) -> bool {
    (32..=36).contains(&s.len())
        && s.bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-'))
}

/// Finds where the unified (v2) hierarchy is mounted, from the text of `/proc/self/mounts`:
/// `/sys/fs/cgroup` on a v2 system, usually `/sys/fs/cgroup/unified` on a hybrid one.
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let _source = fields.next()?;
        let target = fields.next()?;
        let fstype = fields.next()?;
        (fstype == "cgroup2").then(|| PathBuf::from(crate::roots::unescape_mount_field(target)))
    })
}

/// Directories visited by one scan of the unified hierarchy, at most. Big Kubernetes nodes
/// have a few thousand cgroups; this bounds the time and memory of a scan of a pathological
/// tree.
const MAX_SCANNED_CGROUPS: usize = 100_000;

/// Maps cgroup v2 ids to cgroup paths, by walking the unified hierarchy.
///
/// A cgroup's id (what `bpf_get_current_cgroup_id` returns) is the inode number of its
/// directory under the cgroup2 mount, so the id of a process that exited before its
/// `/proc/<pid>/cgroup` could be read can still be resolved while its cgroup exists (a
/// container's cgroup lives as long as the container). Misses trigger a rescan, at most once
/// per `min_rescan`.
#[derive(Debug)]
pub struct CgroupIdIndex {
    root: PathBuf,
    paths: HashMap<u64, String>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
}

impl CgroupIdIndex {
    /// An index of the cgroup2 hierarchy mounted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            paths: HashMap::new(),
            last_scan: None,
            min_rescan: Duration::from_secs(1),
        }
    }

    /// An index of this system's unified hierarchy, if one is mounted.
    pub fn detect() -> Option<Self> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        cgroup2_mount(&mounts).map(Self::new)
    }

    /// Shortest time between two scans triggered by misses (default one second).
    pub fn with_min_rescan(mut self, min_rescan: Duration) -> Self {
        self.min_rescan = min_rescan;
        self
    }

    /// Where the hierarchy is mounted.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path (relative to the mount, starting with '/') of the cgroup with this id.
    pub fn path_of(&mut self, id: u64) -> Option<&str> {
        if !self.paths.contains_key(&id) {
            let due = self
                .last_scan
                .is_none_or(|t| t.elapsed() >= self.min_rescan);
            if !due {
                return None;
            }
            self.scan();
        }
        self.paths.get(&id).map(String::as_str)
    }

    /// What the cgroup with this id says about its members.
    pub fn resolve(&mut self, id: u64) -> Option<CgroupInfo> {
        self.path_of(id).map(parse_path)
    }

    /// The id of the cgroup at `path` (relative to the mount), read from the directory.
    pub fn id_of(&self, path: &str) -> Option<u64> {
        let rel = path.trim_start_matches('/');
        let dir = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        };
        std::fs::metadata(dir).ok().map(|m| m.ino())
    }

    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        let mut paths = HashMap::new();
        let mut stack = vec![(self.root.clone(), String::from("/"))];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                // Removed while we walked; nothing under it either.
                continue;
            };
            paths.insert(meta.ino(), rel.clone());
            if paths.len() >= MAX_SCANNED_CGROUPS {
                break;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                // Only real directories are cgroups; file_type does not follow symlinks.
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let child = if rel == "/" {
                    format!("/{name}")
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((entry.path(), child));
            }
        }
        self.paths = paths;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4e1e2b6f0b7c4b8f9d3a2c1e5f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn id63() -> &'static str {
        &ID[..63]
    }

    #[test]
    fn hybrid_systemd_service() {
        let text = "\
12:pids:/system.slice/containerd.service
11:memory:/system.slice/containerd.service
10:devices:/system.slice/containerd.service
9:cpu,cpuacct:/system.slice/containerd.service
8:blkio:/system.slice/containerd.service
7:freezer:/
6:net_cls,net_prio:/
5:perf_event:/
4:hugetlb:/
3:cpuset:/
2:rdma:/
1:name=systemd:/system.slice/containerd.service
0::/system.slice/containerd.service
";
        let info = parse_proc_cgroup(text);
        assert_eq!(info.unit.as_deref(), Some("containerd.service"));
        assert_eq!(info.container_id, None);
        assert_eq!(info.pod_uid, None);
        assert_eq!(
            info.path.as_deref(),
            Some("/system.slice/containerd.service")
        );
    }

    #[test]
    fn pure_v2_k3s_service() {
        let info = parse_proc_cgroup("0::/system.slice/k3s.service\n");
        assert_eq!(info.unit.as_deref(), Some("k3s.service"));
        assert_eq!(info.container_id, None);
        assert_eq!(info.path.as_deref(), Some("/system.slice/k3s.service"));
    }

    #[test]
    fn this_machines_hybrid_root() {
        // Hybrid with every hierarchy at its root except one controller.
        let text = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/fb100ce375c7b41bebe068548add2465
3:cpuset:/
0::/
";
        let info = parse_proc_cgroup(text);
        assert_eq!(info.unit, None);
        // 32 hex digits is not a container id.
        assert_eq!(info.container_id, None);
        assert_eq!(info.pod_uid, None);
        assert_eq!(info.path.as_deref(), Some("/"));
    }

    #[test]
    fn v1_prefers_name_systemd_for_unit() {
        let text = "\
4:memory:/system.slice/other.service
1:name=systemd:/system.slice/containerd.service
";
        let info = parse_proc_cgroup(text);
        assert_eq!(info.unit.as_deref(), Some("containerd.service"));
        assert_eq!(
            info.path.as_deref(),
            Some("/system.slice/containerd.service")
        );
    }

    #[test]
    fn v2_line_is_preferred_over_v1() {
        let text = "\
1:name=systemd:/system.slice/a.service
0::/system.slice/b.service
";
        assert_eq!(parse_proc_cgroup(text).unit.as_deref(), Some("b.service"));
        // ...but a v2 line at the root says nothing, so the v1 line is used.
        let text = "1:name=systemd:/system.slice/a.service\n0::/\n";
        assert_eq!(parse_proc_cgroup(text).unit.as_deref(), Some("a.service"));
    }

    #[test]
    fn user_session_scope() {
        let info = parse_proc_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n");
        assert_eq!(info.unit.as_deref(), Some("session-3.scope"));
        assert_eq!(info.container_id, None);
    }

    #[test]
    fn service_that_is_not_the_last_component() {
        let info = parse_proc_cgroup("0::/system.slice/containerd.service/subgroup\n");
        assert_eq!(info.unit, None);
        assert_eq!(
            info.path.as_deref(),
            Some("/system.slice/containerd.service/subgroup")
        );
        let info = parse_proc_cgroup("0::/system.slice/docker.service/init.scope.d\n");
        assert_eq!(info.unit, None);
    }

    #[test]
    fn bare_suffix_is_not_a_unit() {
        assert_eq!(parse_proc_cgroup("0::/system.slice/.service\n").unit, None);
        assert_eq!(
            parse_proc_cgroup("0::/system.slice/foo.services\n").unit,
            None
        );
        assert_eq!(parse_proc_cgroup("0::/system.slice\n").unit, None);
    }

    #[test]
    fn kubepods_systemd_driver_cri_containerd() {
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/\
             kubepods-besteffort-pod3f1a9c52_7b2e_4d11_9a0c_5e8f7d6c4b3a.slice/\
             cri-containerd-{ID}.scope\n"
        );
        let info = parse_proc_cgroup(&text);
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(
            info.pod_uid.as_deref(),
            Some("3f1a9c52-7b2e-4d11-9a0c-5e8f7d6c4b3a")
        );
        assert_eq!(info.unit, Some(format!("cri-containerd-{ID}.scope")));
        assert_eq!(info.path.as_deref(), text.trim_end().strip_prefix("0::"));
    }

    #[test]
    fn kubepods_guaranteed_systemd_driver() {
        let text = format!(
            "0::/kubepods.slice/kubepods-pod0f6c2d7e_1111_2222_3333_444455556666.slice/\
             cri-containerd-{ID}.scope\n"
        );
        let info = parse_proc_cgroup(&text);
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(
            info.pod_uid.as_deref(),
            Some("0f6c2d7e-1111-2222-3333-444455556666")
        );
    }

    #[test]
    fn kubepods_cgroupfs_driver_v1() {
        let text = format!(
            "\
12:pids:/kubepods/besteffort/pod3f1a9c52-7b2e-4d11-9a0c-5e8f7d6c4b3a/{ID}
11:memory:/kubepods/besteffort/pod3f1a9c52-7b2e-4d11-9a0c-5e8f7d6c4b3a/{ID}
1:name=systemd:/kubepods/besteffort/pod3f1a9c52-7b2e-4d11-9a0c-5e8f7d6c4b3a/{ID}
"
        );
        let info = parse_proc_cgroup(&text);
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(
            info.pod_uid.as_deref(),
            Some("3f1a9c52-7b2e-4d11-9a0c-5e8f7d6c4b3a")
        );
        assert_eq!(info.unit, None);
    }

    #[test]
    fn kubepods_guaranteed_cgroupfs_and_static_pod_uid() {
        let text = format!("0::/kubepods/pod6b4e3c1a9f8d7e6c5b4a39281706f5e4/{ID}\n");
        let info = parse_proc_cgroup(&text);
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(
            info.pod_uid.as_deref(),
            Some("6b4e3c1a9f8d7e6c5b4a39281706f5e4")
        );
    }

    #[test]
    fn pod_component_outside_kubepods_is_ignored() {
        let info = parse_proc_cgroup("0::/machine.slice/pod3f1a9c52-7b2e-4d11-9a0c-5e8f7d6c4b3a\n");
        assert_eq!(info.pod_uid, None);
        let info = parse_proc_cgroup("0::/kubepods/besteffort/podman\n");
        assert_eq!(info.pod_uid, None);
    }

    #[test]
    fn docker_systemd_driver() {
        let info = parse_proc_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n"));
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.unit, Some(format!("docker-{ID}.scope")));
        assert_eq!(info.pod_uid, None);
    }

    #[test]
    fn docker_cgroupfs_driver_v1() {
        let text = format!(
            "\
13:name=systemd:/docker/{ID}
4:memory:/docker/{ID}
0::/system.slice/containerd.service
"
        );
        let info = parse_proc_cgroup(&text);
        assert_eq!(info.container_id.as_deref(), Some(ID));
        // The unit comes from the v2 line; the path from the line naming the container.
        assert_eq!(info.unit.as_deref(), Some("containerd.service"));
        assert_eq!(info.path, Some(format!("/docker/{ID}")));
    }

    #[test]
    fn crio_and_podman_scopes() {
        let info = parse_proc_cgroup(&format!(
            "0::/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod3f1a9c52_7b2e_4d11_9a0c_5e8f7d6c4b3a.slice/crio-{ID}.scope\n"
        ));
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert!(info.pod_uid.is_some());
        let info = parse_proc_cgroup(&format!("0::/machine.slice/libpod-{ID}.scope/container\n"));
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.unit, None);
    }

    #[test]
    fn conmon_is_not_the_container() {
        let info = parse_proc_cgroup(&format!(
            "0::/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod3f1a9c52_7b2e_4d11_9a0c_5e8f7d6c4b3a.slice/\
             crio-conmon-{ID}.scope\n"
        ));
        assert_eq!(info.container_id, None);
        assert_eq!(info.unit, Some(format!("crio-conmon-{ID}.scope")));
        assert!(info.pod_uid.is_some());
    }

    #[test]
    fn containerd_namespace_layout() {
        for ns in ["default", "k8s.io", "moby", "buildkit"] {
            let info = parse_proc_cgroup(&format!("0::/{ns}/{ID}\n"));
            assert_eq!(info.container_id.as_deref(), Some(ID), "{ns}");
            assert_eq!(info.unit, None);
            assert_eq!(info.path, Some(format!("/{ns}/{ID}")));
        }
    }

    #[test]
    fn runc_systemd_driver_colon_form() {
        let text = format!("0::/system.slice:cri-containerd:{ID}\n");
        let info = parse_proc_cgroup(&text);
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(
            info.path,
            Some(format!("/system.slice:cri-containerd:{ID}"))
        );
        let text = format!("5:memory:/kubepods.slice:cri-containerd:{ID}\n");
        assert_eq!(parse_proc_cgroup(&text).container_id.as_deref(), Some(ID));
    }

    #[test]
    fn nested_containers_take_the_innermost_id() {
        // A kind node: the node is a docker container, the pod container is inside it.
        let text = format!(
            "0::/docker/{ID2}/kubepods/besteffort/pod3f1a9c52-7b2e-4d11-9a0c-5e8f7d6c4b3a/{ID}\n"
        );
        let info = parse_proc_cgroup(&text);
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(
            info.pod_uid.as_deref(),
            Some("3f1a9c52-7b2e-4d11-9a0c-5e8f7d6c4b3a")
        );
    }

    #[test]
    fn ids_of_the_wrong_length_or_alphabet_are_not_containers() {
        let short = id63();
        let long = format!("{ID}0");
        let upper = ID.to_uppercase();
        let bad_char = format!("{}g", &ID[..63]);
        for text in [
            format!("0::/default/{short}\n"),
            format!("0::/default/{long}\n"),
            format!("0::/default/{upper}\n"),
            format!("0::/default/{bad_char}\n"),
            format!("0::/system.slice/cri-containerd-{short}.scope\n"),
            format!("0::/system.slice/docker-{long}.scope\n"),
            format!("0::/system.slice:cri-containerd:{short}\n"),
            format!("0::/system.slice/foo-{ID}.scope\n"),
        ] {
            assert_eq!(parse_proc_cgroup(&text).container_id, None, "{text}");
        }
    }

    #[test]
    fn deleted_cgroup_suffix_is_stripped() {
        let info = parse_proc_cgroup(&format!("0::/system.slice/docker-{ID}.scope (deleted)\n"));
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.path, Some(format!("/system.slice/docker-{ID}.scope")));
    }

    #[test]
    fn garbage_and_empty_input() {
        assert_eq!(parse_proc_cgroup(""), CgroupInfo::default());
        assert_eq!(
            parse_proc_cgroup("not a cgroup line\n::\n1:x\n"),
            CgroupInfo::default()
        );
        // A line whose path does not start with '/' is not trusted.
        assert_eq!(
            parse_proc_cgroup(&format!("0::default/{ID}\n")),
            CgroupInfo::default()
        );
    }

    #[test]
    fn unified_path_and_parse_path() {
        let text = "1:name=systemd:/system.slice/a.service\n0::/system.slice/b.service\n";
        assert_eq!(unified_path(text), Some("/system.slice/b.service"));
        assert_eq!(unified_path("1:name=systemd:/x\n"), None);
        let info = parse_path(&format!("/k8s.io/{ID}"));
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.path, Some(format!("/k8s.io/{ID}")));
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec 0 0\n";
        assert_eq!(cgroup2_mount(v2), Some(PathBuf::from("/sys/fs/cgroup")));
        let escaped = "none /mnt/my\\040cgroups cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(escaped),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn reads_own_cgroup() {
        let text = read_text_in(Path::new("/proc"), std::process::id());
        let info = read_for_pid(std::process::id());
        match (text, info) {
            (Ok(text), Ok(info)) => assert_eq!(info, parse_proc_cgroup(&text)),
            (text, info) => panic!("reading own cgroup: {text:?} {info:?}"),
        }
        assert!(read_for_pid(u32::MAX).is_err());
    }

    /// A scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn id_index_resolves_directory_inodes() -> std::io::Result<()> {
        let scratch = Scratch(
            std::env::temp_dir().join(format!("ctrwatch-cgroup-test-{}", std::process::id())),
        );
        let root = &scratch.0;
        let scope = format!(
            "kubepods.slice/kubepods-besteffort.slice/\
             kubepods-besteffort-pod3f1a9c52_7b2e_4d11_9a0c_5e8f7d6c4b3a.slice/\
             cri-containerd-{ID}.scope"
        );
        std::fs::create_dir_all(root.join(&scope))?;
        std::fs::create_dir_all(root.join("system.slice/containerd.service"))?;

        let mut index = CgroupIdIndex::new(root).with_min_rescan(Duration::ZERO);
        let id = index.id_of(&format!("/{scope}"));
        assert!(id.is_some());
        let info = id.and_then(|id| index.resolve(id)).unwrap_or_default();
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.path, Some(format!("/{scope}")));
        assert_eq!(
            info.pod_uid.as_deref(),
            Some("3f1a9c52-7b2e-4d11-9a0c-5e8f7d6c4b3a")
        );

        let id = index.id_of("/system.slice/containerd.service");
        let unit = id.and_then(|id| index.resolve(id)).and_then(|i| i.unit);
        assert_eq!(unit.as_deref(), Some("containerd.service"));

        let root_id = index.id_of("/");
        assert_eq!(root_id.and_then(|id| index.path_of(id)), Some("/"));

        // A cgroup made after the last scan is found by the rescan a miss triggers...
        std::fs::create_dir_all(root.join("late.slice"))?;
        let id = index.id_of("/late.slice");
        assert_eq!(id.and_then(|id| index.path_of(id)), Some("/late.slice"));

        // ...but not while rescans are throttled.
        let mut slow = CgroupIdIndex::new(root).with_min_rescan(Duration::from_secs(3600));
        assert_eq!(slow.path_of(u64::MAX), None);
        std::fs::create_dir_all(root.join("later.slice"))?;
        let id = slow.id_of("/later.slice");
        assert!(id.is_some());
        assert_eq!(id.and_then(|id| slow.path_of(id)), None);
        Ok(())
    }
}
