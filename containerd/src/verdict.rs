//! Who may write containerd's storage: the verdict on one event (`owner`, `container` or
//! `foreign`, and why) as a pure function of what is known. The process (with its ancestors,
//! unit and container), the containerd that owns the root (read from `/proc` when the
//! instance is discovered), the operator's trust, what the path is, and, for a process below
//! a shim, the shim's command line: the caller (the daemon's attribution) reads all of that;
//! nothing here reads a file.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ctrwatch_event::{
    AncestorView, ContainerdView, ProcessView, SnapshotKind, StorageKind, Verdict,
};

use crate::paths::SnapshotArea;

/// Writers the operator trusts besides containerd itself (`--trust-exe`, `--trust-unit`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    /// Executables trusted as containerd (`--trust-exe`).
    pub exes: Vec<PathBuf>,
    /// systemd units trusted as containerd (`--trust-unit`).
    pub units: Vec<String>,
}

/// What is known of the containerd that owns a root: read by the caller from `/proc` when
/// the instance was discovered (and again when it restarts).
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    /// The instance's root (its `containerd.log` is the supervisor's to write).
    pub root: &'a Path,
    /// containerd's pid, when it runs.
    pub containerd_pid: Option<u32>,
    /// containerd's executable.
    pub exe: Option<&'a Path>,
    /// The systemd unit of containerd, when containerd is that unit's own process (its parent
    /// is PID 1 or a k3s/rke2 supervisor).
    pub unit: Option<&'a str>,
    /// k3s/rke2 supervising containerd (it writes `containerd.log` in the root).
    pub supervisor_pid: Option<u32>,
}

/// What the event was, besides its path and its process: what the verdict needs to know of
/// changes the kernel made itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change<'a> {
    /// The kernel made the change itself (note `kernel_internal`: overlayfs's xattrs during a
    /// mount or a copy-up), on behalf of the process the event names.
    pub kernel_internal: bool,
    /// For a path in a snapshot's directory, which part of it (`fs`, overlay's `work`).
    pub area: Option<SnapshotArea>,
    /// The xattr's name, for an xattr change.
    pub xattr: Option<&'a [u8]>,
}

/// The xattr overlayfs (6.6 and later) sets on the root of its upper directory when it mounts
/// it: the overlay's uuid (`user.` with the `userxattr` mount option).
const OVERLAY_UUID_XATTRS: [&[u8]; 2] = [b"trusted.overlay.uuid", b"user.overlay.uuid"];

/// The shim `p` runs below (its nearest `containerd-shim*` ancestor): [`verdict`] needs that
/// shim's command line when `p` is below containerd and has no container id of its own.
pub fn shim_ancestor(p: &ProcessView) -> Option<&AncestorView> {
    p.ancestors
        .iter()
        .find(|a| is_shim(&a.comm, a.exe.as_deref()))
}

/// `owner`, `container` or `foreign`, and why, for an event (`change`) on `path` (what it
/// is: `view`) by process `p`. `shim_cmdline` is the command line of `p`'s shim
/// ([`shim_ancestor`]), which names the container of a process below it that has no
/// container id of its own; the caller looks it up. Reads nothing.
///
/// Judged by the process, except for overlayfs's own bookkeeping in an active snapshot's
/// `work` directory ([`overlay_bookkeeping`]): whoever mounted the snapshot, the kernel's
/// changes there are not a foreign change of the storage.
pub fn verdict(
    owner: &Owner<'_>,
    trust: &Trust,
    p: &ProcessView,
    shim_cmdline: Option<&[Vec<u8>]>,
    view: &ContainerdView,
    path: &[u8],
    change: &Change<'_>,
) -> (Verdict, String) {
    let (judged, reason) = verdict_of_process(owner, trust, p, shim_cmdline, view, path);
    if judged == Verdict::Foreign
        && let Some(bookkeeping) = overlay_bookkeeping(p, view, change)
    {
        return (Verdict::Owner, bookkeeping);
    }
    (judged, reason)
}

/// The reason for the owner verdict when the change is overlayfs's own bookkeeping in an
/// active overlay snapshot, which whoever mounts the snapshot (containerd, or a client such as
/// `ctr run`, which mounts a new container snapshot to read the image's user and group files)
/// makes the kernel do:
/// * any kernel-internal change in the snapshot's `work` directory, overlayfs's scratch space:
///   the mount probes it (`trusted.overlay.opaque` set and removed, ACLs removed), and
///   copy-ups prepare files there;
/// * the overlay's uuid xattr set on the root of its upper directory (the snapshot's `fs`) by
///   the mount (kernel 6.6 and later).
///
/// The mounting process is attributed, but the change is the kernel's. Not in a committed
/// layer: only an overlay mount with the layer as its upper directory writes there, which is
/// the misuse behind the historic opaque leak; nor anything else in a snapshot's `fs`, where
/// the kernel's changes (an opaque directory after a copy-up) are judged like the process's
/// own.
pub fn overlay_bookkeeping(
    p: &ProcessView,
    view: &ContainerdView,
    change: &Change<'_>,
) -> Option<String> {
    let active = change.kernel_internal
        && view.kind == StorageKind::Snapshot
        && view.snapshot_kind == Some(SnapshotKind::Active)
        && !view.stale;
    if !active {
        return None;
    }
    let snapshot = view
        .snapshot_id
        .map(|id| format!(" {id}"))
        .unwrap_or_default();
    let what = match change.area {
        Some(SnapshotArea::Work) => format!(" in the work directory of active snapshot{snapshot}"),
        Some(SnapshotArea::Fs)
            if view.path.as_ref().is_some_and(|p| p.as_bytes() == b"/")
                && change
                    .xattr
                    .is_some_and(|name| OVERLAY_UUID_XATTRS.contains(&name)) =>
        {
            format!(", the mount's uuid on the upper directory of active snapshot{snapshot}")
        }
        _ => return None,
    };
    Some(format!(
        "overlayfs's own bookkeeping{what} (kernel-internal, during an operation of pid {} \
         comm {})",
        p.pid, p.comm
    ))
}

/// The verdict by who `p` is (the rules of [`verdict`] but overlayfs's bookkeeping).
fn verdict_of_process(
    owner: &Owner<'_>,
    trust: &Trust,
    p: &ProcessView,
    shim_cmdline: Option<&[Vec<u8>]>,
    view: &ContainerdView,
    path: &[u8],
) -> (Verdict, String) {
    let exe = p.exe.as_deref().unwrap_or("?");
    let exe_base = p.exe.as_deref().map(basename).unwrap_or("");
    if let Some(e) = p.exe.as_deref()
        && let Some(trusted) = trust.exes.iter().find(|t| t.as_os_str() == e)
    {
        return (Verdict::Owner, format!("trusted exe {}", trusted.display()));
    }
    if let Some(u) = p.unit.as_deref()
        && trust.units.iter().any(|t| t == u)
    {
        return (Verdict::Owner, format!("trusted unit {u}"));
    }
    if let Some(cpid) = owner.containerd_pid {
        let cexe = owner
            .exe
            .map(|e| e.display().to_string())
            .unwrap_or_else(|| "?".into());
        if p.pid == cpid {
            return (Verdict::Owner, format!("containerd pid {cpid} ({cexe})"));
        }
        let shim_pos = p
            .ancestors
            .iter()
            .position(|a| is_shim(&a.comm, a.exe.as_deref()));
        let under_containerd = p.ancestors.iter().any(|a| a.pid == cpid);
        if under_containerd {
            let is_runtime = is_shim(&p.comm, p.exe.as_deref())
                || p.comm.starts_with("runc")
                || exe_base == "runc";
            if shim_pos.is_none() || is_runtime {
                return (
                    Verdict::Owner,
                    format!("child of containerd pid {cpid} ({})", p.comm),
                );
            }
            // A process in a container (below a shim).
            let own = container_of(p, shim_pos.and(shim_cmdline));
            return container_verdict(own.as_deref(), view);
        }
        if let Some(sup) = owner.supervisor_pid
            && p.pid == sup
            && is_log_file(owner.root, path)
        {
            return (
                Verdict::Owner,
                format!("supervisor pid {sup} of containerd, its log"),
            );
        }
        if let (Some(unit), Some(pu)) = (owner.unit, p.unit.as_deref())
            && unit == pu
        {
            return (Verdict::Owner, format!("containerd's unit {unit}"));
        }
        if p.container_id.is_some() {
            return container_verdict(p.container_id.as_deref(), view);
        }
        let what = describe_process(p, exe);
        return (
            Verdict::Foreign,
            format!("{what}, not containerd pid {cpid} ({cexe}) or its children"),
        );
    }
    if p.container_id.is_some() {
        return container_verdict(p.container_id.as_deref(), view);
    }
    let what = describe_process(p, exe);
    (
        Verdict::Foreign,
        format!("{what}; no running containerd known for this root"),
    )
}

/// A container process writing: `container` in its own snapshot, else `foreign`.
fn container_verdict(own: Option<&str>, view: &ContainerdView) -> (Verdict, String) {
    match (own, view.container_id.as_deref()) {
        (Some(own), Some(snap)) if own == snap && view.kind == StorageKind::Snapshot => (
            Verdict::Container,
            format!("container {own} writing its own layer"),
        ),
        (Some(own), _) => (
            Verdict::Foreign,
            format!("container {own} writing outside its own writable layer"),
        ),
        (None, _) => (
            Verdict::Foreign,
            "a container process (unknown container) writing to containerd's storage".to_owned(),
        ),
    }
}

/// The container a process below a shim runs in: its cgroup's container id, else the shim's
/// `-id` argument (one shim per container, as with `ctr run`).
fn container_of(p: &ProcessView, shim_cmdline: Option<&[Vec<u8>]>) -> Option<String> {
    if let Some(id) = &p.container_id {
        return Some(id.clone());
    }
    let args = shim_cmdline?;
    args.iter()
        .position(|a| a.as_slice() == b"-id" || a.as_slice() == b"--id")
        .and_then(|i| args.get(i + 1))
        .map(|a| String::from_utf8_lossy(a).into_owned())
}

fn is_shim(comm: &str, exe: Option<&str>) -> bool {
    comm.starts_with("containerd-shim")
        || exe
            .map(basename)
            .is_some_and(|b| b.starts_with("containerd-shim"))
}

/// "bash script /tmp/x/cleanup.sh (pid 12, comm cleanup.sh)", or "pid 12 comm rm (/usr/bin/rm)".
fn describe_process(p: &ProcessView, exe: &str) -> String {
    let base = basename(exe);
    let interpreter = matches!(base, "bash" | "sh" | "dash" | "zsh" | "ash" | "busybox")
        || base.starts_with("python")
        || base.starts_with("perl");
    let script = p
        .cmdline
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .filter(|_| interpreter);
    let mut s = match script {
        Some(script) => format!("{base} script {script} (pid {}, comm {})", p.pid, p.comm),
        None => format!("pid {} comm {} ({exe})", p.pid, p.comm),
    };
    if p.comm == "containerd" {
        s.push_str(", named containerd but not it");
    } else if let Some(a) = p.ancestors.iter().find(|a| {
        a.exe
            .as_deref()
            .map(basename)
            .is_some_and(|b| matches!(b, "bash" | "sh" | "dash") || b.starts_with("python"))
            && a.comm != "bash"
            && a.comm != "sh"
    }) {
        let _ = std::fmt::Write::write_fmt(
            &mut s,
            format_args!(", run by script {} (pid {})", a.comm, a.pid),
        );
    }
    s
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn is_log_file(root: &Path, path: &[u8]) -> bool {
    let Some(rest) = path.strip_prefix(root.as_os_str().as_bytes()) else {
        return false;
    };
    rest == b"/containerd.log"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The instance of these tests: root `/r`, containerd `pid` (`/usr/bin/containerd`), and
    /// what the operator trusts.
    struct Fixture {
        pid: Option<u32>,
        exe: PathBuf,
        unit: Option<&'static str>,
        supervisor: Option<u32>,
        trust: Trust,
    }

    fn tracked(pid: Option<u32>) -> Fixture {
        Fixture {
            pid,
            exe: PathBuf::from("/usr/bin/containerd"),
            unit: None,
            supervisor: None,
            trust: Trust {
                exes: vec![PathBuf::from("/usr/local/bin/cleaner")],
                units: vec!["gc.service".into()],
            },
        }
    }

    fn proc(pid: u32, comm: &str, exe: &str, ancestors: &[(u32, &str, &str)]) -> ProcessView {
        ProcessView {
            pid,
            comm: comm.into(),
            exe: Some(exe.into()),
            ancestors: ancestors
                .iter()
                .map(|(pid, comm, exe)| AncestorView {
                    pid: *pid,
                    comm: (*comm).into(),
                    exe: Some((*exe).into()),
                })
                .collect(),
            ..ProcessView::default()
        }
    }

    fn verdict_on(
        a: &Fixture,
        p: &ProcessView,
        shim_cmdline: Option<&[Vec<u8>]>,
        view: &ContainerdView,
        path: &[u8],
    ) -> (Verdict, String) {
        let owner = Owner {
            root: Path::new("/r"),
            containerd_pid: a.pid,
            exe: a.pid.map(|_| a.exe.as_path()),
            unit: a.unit,
            supervisor_pid: a.supervisor,
        };
        super::verdict(
            &owner,
            &a.trust,
            p,
            shim_cmdline,
            view,
            path,
            &Change::default(),
        )
    }

    fn verdict(a: &Fixture, p: &ProcessView, view: &ContainerdView) -> (Verdict, String) {
        verdict_on(a, p, None, view, b"/r/x")
    }

    #[test]
    fn owner_child_shim_and_foreign() {
        let a = tracked(Some(100));
        let v = ContainerdView::default();
        let cd = proc(100, "containerd", "/usr/bin/containerd", &[]);
        assert_eq!(verdict(&a, &cd, &v).0, Verdict::Owner);
        let unpigz = proc(
            101,
            "unpigz",
            "/usr/bin/unpigz",
            &[(100, "containerd", "/usr/bin/containerd")],
        );
        assert!(
            verdict(&a, &unpigz, &v)
                .1
                .contains("child of containerd pid 100")
        );
        let runc = proc(
            103,
            "runc:[2:INIT]",
            "/usr/bin/runc",
            &[
                (102, "containerd-shim", "/usr/bin/containerd-shim-runc-v2"),
                (100, "containerd", "/usr/bin/containerd"),
            ],
        );
        assert_eq!(verdict(&a, &runc, &v).0, Verdict::Owner);
        let fake = proc(
            200,
            "containerd",
            "/usr/bin/bash",
            &[(1, "systemd", "/usr/lib/systemd/systemd")],
        );
        let (verd, reason) = verdict(&a, &fake, &v);
        assert_eq!(verd, Verdict::Foreign);
        assert!(reason.contains("named containerd but not it"), "{reason}");
        let trusted = proc(300, "cleaner", "/usr/local/bin/cleaner", &[]);
        assert_eq!(
            verdict(&a, &trusted, &v),
            (Verdict::Owner, "trusted exe /usr/local/bin/cleaner".into())
        );
        let mut unit = proc(301, "x", "/x", &[]);
        unit.unit = Some("gc.service".into());
        assert_eq!(verdict(&a, &unit, &v).0, Verdict::Owner);
        let none = tracked(None);
        assert_eq!(verdict(&none, &cd, &v).0, Verdict::Foreign);
    }

    #[test]
    fn container_in_its_own_layer() {
        let a = tracked(Some(100));
        let mut own = proc(
            110,
            "sh",
            "/bin/busybox",
            &[
                (102, "containerd-shim", "/usr/bin/containerd-shim-runc-v2"),
                (100, "containerd", "/usr/bin/containerd"),
            ],
        );
        own.container_id = Some("c1".into());
        let mut v = ContainerdView {
            kind: StorageKind::Snapshot,
            container_id: Some("c1".into()),
            ..ContainerdView::default()
        };
        assert_eq!(
            verdict(&a, &own, &v),
            (
                Verdict::Container,
                "container c1 writing its own layer".into()
            )
        );
        v.container_id = Some("c2".into());
        assert_eq!(verdict(&a, &own, &v).0, Verdict::Foreign);
    }

    #[test]
    fn script_reason_names_the_script() {
        let mut p = proc(5, "cleanup.sh", "/usr/bin/bash", &[]);
        p.cmdline = vec!["/bin/bash".into(), "/tmp/cleanup.sh".into()];
        assert_eq!(
            describe_process(&p, "/usr/bin/bash"),
            "bash script /tmp/cleanup.sh (pid 5, comm cleanup.sh)"
        );
        let rm = proc(
            6,
            "rm",
            "/usr/bin/rm",
            &[(5, "cleanup.sh", "/usr/bin/bash")],
        );
        assert!(describe_process(&rm, "/usr/bin/rm").contains("run by script cleanup.sh (pid 5)"));
    }

    /// A process below a shim, without a container id of its own: the shim's `-id` argument
    /// (the caller's lookup) names its container.
    #[test]
    fn shim_command_line_names_the_container() {
        let a = tracked(Some(100));
        let p = proc(
            120,
            "sh",
            "/bin/sh",
            &[
                (102, "containerd-shim", "/usr/bin/containerd-shim-runc-v2"),
                (100, "containerd", "/usr/bin/containerd"),
            ],
        );
        assert_eq!(shim_ancestor(&p).map(|s| s.pid), Some(102));
        let own = ContainerdView {
            kind: StorageKind::Snapshot,
            container_id: Some("c7".into()),
            ..ContainerdView::default()
        };
        let cmdline: Vec<Vec<u8>> = [
            "containerd-shim-runc-v2",
            "-namespace",
            "k8s.io",
            "-id",
            "c7",
        ]
        .iter()
        .map(|a| a.as_bytes().to_vec())
        .collect();
        assert_eq!(
            verdict_on(&a, &p, Some(&cmdline), &own, b"/r/x").0,
            Verdict::Container
        );
        // Without the shim's command line the container is unknown: foreign.
        let (v, reason) = verdict_on(&a, &p, None, &own, b"/r/x");
        assert_eq!(v, Verdict::Foreign);
        assert!(reason.contains("unknown container"), "{reason}");
    }

    /// containerd's supervisor writes its log, and only that; containerd's own unit is trusted.
    #[test]
    fn supervisor_log_and_containerd_unit() {
        let mut a = tracked(Some(100));
        a.supervisor = Some(90);
        let k3s = proc(90, "k3s-server", "/usr/local/bin/k3s", &[]);
        let v = ContainerdView::default();
        assert_eq!(
            verdict_on(&a, &k3s, None, &v, b"/r/containerd.log").0,
            Verdict::Owner
        );
        assert_eq!(
            verdict_on(
                &a,
                &k3s,
                None,
                &v,
                b"/r/io.containerd.metadata.v1.bolt/meta.db"
            )
            .0,
            Verdict::Foreign
        );
        assert!(is_log_file(Path::new("/r"), b"/r/containerd.log"));
        a.unit = Some("containerd.service");
        let mut helper = proc(300, "ctr", "/usr/bin/ctr", &[]);
        helper.unit = Some("containerd.service".into());
        assert_eq!(
            verdict(&a, &helper, &v),
            (
                Verdict::Owner,
                "containerd's unit containerd.service".into()
            )
        );
    }

    /// Issue 15: `ctr run` mounts the new container snapshot itself; overlayfs probes the
    /// snapshot's work directory (`trusted.overlay.opaque` set and removed) in the name of
    /// `ctr`, a client, which is not containerd or its child. The change is the kernel's
    /// bookkeeping: not foreign. Elsewhere the kernel's changes are judged as before.
    #[test]
    fn overlay_bookkeeping_in_an_active_snapshots_work_directory() {
        let a = tracked(Some(100));
        let ctr = proc(
            400,
            "ctr",
            "/usr/bin/ctr",
            &[
                (300, "sh", "/usr/bin/dash"),
                (1, "systemd", "/usr/lib/systemd/systemd"),
            ],
        );
        let snapshot = |kind: SnapshotKind| ContainerdView {
            kind: StorageKind::Snapshot,
            snapshotter: Some("overlayfs".into()),
            snapshot_id: Some(12),
            snapshot_kind: Some(kind),
            ..ContainerdView::default()
        };
        let work = b"/r/io.containerd.snapshotter.v1.overlayfs/snapshots/12/work/work".as_slice();
        let fs = b"/r/io.containerd.snapshotter.v1.overlayfs/snapshots/12/fs/etc".as_slice();
        let judge = |view: &ContainerdView, path: &[u8], change: Change| {
            let owner = Owner {
                root: Path::new("/r"),
                containerd_pid: a.pid,
                exe: Some(a.exe.as_path()),
                unit: None,
                supervisor_pid: None,
            };
            super::verdict(&owner, &a.trust, &ctr, None, view, path, &change)
        };
        let kernel = |area| Change {
            kernel_internal: true,
            area: Some(area),
            xattr: Some(b"trusted.overlay.opaque".as_slice()),
        };
        // The mount's probe in the active snapshot's work directory: not foreign, and why.
        let (v, reason) = judge(
            &snapshot(SnapshotKind::Active),
            work,
            kernel(SnapshotArea::Work),
        );
        assert_eq!(v, Verdict::Owner, "{reason}");
        assert_eq!(
            reason,
            "overlayfs's own bookkeeping in the work directory of active snapshot 12 \
             (kernel-internal, during an operation of pid 400 comm ctr)"
        );
        // The same process writing there itself (not the kernel): foreign.
        let (v, reason) = judge(
            &snapshot(SnapshotKind::Active),
            work,
            Change {
                kernel_internal: false,
                area: Some(SnapshotArea::Work),
                xattr: None,
            },
        );
        assert_eq!(v, Verdict::Foreign, "{reason}");
        // A committed layer's work directory (an overlay with the layer as its upper
        // directory: the opaque leak's misuse): foreign.
        let (v, reason) = judge(
            &snapshot(SnapshotKind::Committed),
            work,
            kernel(SnapshotArea::Work),
        );
        assert_eq!(v, Verdict::Foreign, "{reason}");
        // The kernel's opaque mark on a committed layer's directory: foreign, as before.
        let (v, reason) = judge(
            &snapshot(SnapshotKind::Committed),
            fs,
            kernel(SnapshotArea::Fs),
        );
        assert_eq!(v, Verdict::Foreign, "{reason}");
        assert!(reason.contains("pid 400 comm ctr"), "{reason}");
        // A copy-up's opaque mark in an active snapshot's fs (the upper directory): judged by
        // the process that triggered it, as before (here a foreign one).
        let (v, reason) = judge(
            &snapshot(SnapshotKind::Active),
            fs,
            kernel(SnapshotArea::Fs),
        );
        assert_eq!(v, Verdict::Foreign, "{reason}");
        assert!(reason.contains("pid 400 comm ctr"), "{reason}");
        // A container's copy-up in its own layer: still the container's.
        let mut own = proc(
            110,
            "sh",
            "/bin/busybox",
            &[
                (102, "containerd-shim", "/usr/bin/containerd-shim-runc-v2"),
                (100, "containerd", "/usr/bin/containerd"),
            ],
        );
        own.container_id = Some("c1".into());
        let mut view = snapshot(SnapshotKind::Active);
        view.container_id = Some("c1".into());
        let owner = Owner {
            root: Path::new("/r"),
            containerd_pid: a.pid,
            exe: Some(a.exe.as_path()),
            unit: None,
            supervisor_pid: None,
        };
        for area in [SnapshotArea::Fs, SnapshotArea::Work] {
            let path = if area == SnapshotArea::Fs { fs } else { work };
            assert_eq!(
                super::verdict(&owner, &a.trust, &own, None, &view, path, &kernel(area)).0,
                Verdict::Container
            );
        }
        // The mount's uuid on the root of the active snapshot's fs (6.12): bookkeeping. The
        // same on a committed layer, or another xattr on the root: as before.
        let root = b"/r/io.containerd.snapshotter.v1.overlayfs/snapshots/12/fs".as_slice();
        let uuid = Change {
            kernel_internal: true,
            area: Some(SnapshotArea::Fs),
            xattr: Some(b"trusted.overlay.uuid".as_slice()),
        };
        let mut active_root = snapshot(SnapshotKind::Active);
        active_root.path = Some(ctrwatch_event::PathBytes(b"/".to_vec()));
        let (v, reason) = judge(&active_root, root, uuid);
        assert_eq!(v, Verdict::Owner, "{reason}");
        assert_eq!(
            reason,
            "overlayfs's own bookkeeping, the mount's uuid on the upper directory of active \
             snapshot 12 (kernel-internal, during an operation of pid 400 comm ctr)"
        );
        let mut committed_root = active_root.clone();
        committed_root.snapshot_kind = Some(SnapshotKind::Committed);
        assert_eq!(judge(&committed_root, root, uuid).0, Verdict::Foreign);
        assert_eq!(
            judge(&active_root, root, kernel(SnapshotArea::Fs)).0,
            Verdict::Foreign
        );
        let mut active_dir = active_root.clone();
        active_dir.path = Some(ctrwatch_event::PathBytes(b"/etc".to_vec()));
        assert_eq!(judge(&active_dir, fs, uuid).0, Verdict::Foreign);
        // A snapshot removed since (stale mapping): not assumed to be active.
        let mut stale = snapshot(SnapshotKind::Active);
        stale.stale = true;
        assert_eq!(
            judge(&stale, work, kernel(SnapshotArea::Work)).0,
            Verdict::Foreign
        );
    }
}
