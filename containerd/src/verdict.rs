//! Who may write containerd's storage: the verdict on one event (`owner`, `container` or
//! `foreign`, and why) as a pure function of what is known. The process (with its ancestors,
//! unit and container), the containerd that owns the root (read from `/proc` when the
//! instance is discovered), the operator's trust, what the path is, and, for a process below
//! a shim, the shim's command line: the caller (the daemon's attribution) reads all of that;
//! nothing here reads a file.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ctrwatch_event::{AncestorView, ContainerdView, ProcessView, StorageKind, Verdict};

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

/// The shim `p` runs below (its nearest `containerd-shim*` ancestor): [`verdict`] needs that
/// shim's command line when `p` is below containerd and has no container id of its own.
pub fn shim_ancestor(p: &ProcessView) -> Option<&AncestorView> {
    p.ancestors
        .iter()
        .find(|a| is_shim(&a.comm, a.exe.as_deref()))
}

/// `owner`, `container` or `foreign`, and why, for an event on `path` (what it is: `view`)
/// by process `p`. `shim_cmdline` is the command line of `p`'s shim ([`shim_ancestor`]),
/// which names the container of a process below it that has no container id of its own;
/// the caller looks it up. Reads nothing.
pub fn verdict(
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
        super::verdict(&owner, &a.trust, p, shim_cmdline, view, path)
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
}
