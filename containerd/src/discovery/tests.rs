//! Discovery against fake systems: a temporary directory stands for `/`, another for `/proc`.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

struct Fake {
    base: PathBuf,
}

impl Fake {
    fn new(tag: &str) -> Fake {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir().join(format!(
            "ctrwatch-disc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("root")).unwrap();
        fs::create_dir_all(base.join("proc")).unwrap();
        Fake { base }
    }

    /// The fake system, where files of the user running the tests count as root's.
    fn env(&self) -> DiscoveryEnv {
        DiscoveryEnv::new(self.base.join("root"), self.base.join("proc")).with_root_uid(euid())
    }

    /// The real place of absolute path `p` of the fake system.
    fn at(&self, p: &str) -> PathBuf {
        self.base.join("root").join(p.trim_start_matches('/'))
    }

    fn dir(&self, p: &str) -> &Fake {
        fs::create_dir_all(self.at(p)).unwrap();
        self
    }

    fn file(&self, p: &str, text: &str) -> &Fake {
        let f = self.at(p);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, text).unwrap();
        self
    }

    fn link(&self, p: &str, target: &str) -> &Fake {
        let f = self.at(p);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        symlink(target, f).unwrap();
        self
    }

    /// A process of the fake system's root (its uid is the fake's root uid), running `exe`
    /// (made: an executable of root's, mode 0755, in the fake system) in the fake's root
    /// directory.
    fn process(&self, pid: u32, exe: &str, comm: &str, args: &[&str]) -> &Fake {
        self.process_as(euid(), pid, exe, comm, args)
    }

    /// [`Fake::process`] running as `uid`.
    fn process_as(&self, uid: u32, pid: u32, exe: &str, comm: &str, args: &[&str]) -> &Fake {
        let d = self.base.join("proc").join(pid.to_string());
        fs::create_dir_all(&d).unwrap();
        let mut cmdline = Vec::new();
        for a in args {
            cmdline.extend_from_slice(a.as_bytes());
            cmdline.push(0);
        }
        fs::write(d.join("cmdline"), cmdline).unwrap();
        fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
        fs::write(
            d.join("status"),
            format!("Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n"),
        )
        .unwrap();
        let exe_file = self.at(exe);
        if !exe_file.exists() {
            fs::create_dir_all(exe_file.parent().unwrap()).unwrap();
            fs::write(&exe_file, b"\x7fELF").unwrap();
            fs::set_permissions(&exe_file, fs::Permissions::from_mode(0o755)).unwrap();
        }
        symlink(&exe_file, d.join("exe")).unwrap();
        symlink(self.base.join("root"), d.join("root")).unwrap();
        self
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn roots(found: &[Instance]) -> Vec<&Path> {
    found.iter().map(|i| i.root.as_path()).collect()
}

#[test]
fn containerd_discovery_default_root_when_nothing_else() {
    let f = Fake::new("empty");
    let found = discover(&f.env());
    assert_eq!(roots(&found), [Path::new(DEFAULT_ROOT)]);
    let i = &found[0];
    assert_eq!(i.state, p(DEFAULT_STATE));
    assert!(!i.exists);
    assert!(i.source[0].starts_with("default"), "{:?}", i.source);
    assert_eq!(i.containerd_pid, None);
    assert_eq!(watch_roots(&found), [p(DEFAULT_ROOT), p(DEFAULT_STATE)]);

    // An existing default root is found as such, with its snapshotters.
    let f = Fake::new("default");
    f.dir("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots")
        .dir("/var/lib/containerd/io.containerd.snapshotter.v1.native")
        .dir("/var/lib/containerd/io.containerd.content.v1.content");
    let found = discover(&f.env());
    assert_eq!(roots(&found), [Path::new(DEFAULT_ROOT)]);
    assert_eq!(found[0].source, ["default"]);
    assert!(found[0].exists);
    let sn: Vec<_> = found[0]
        .snapshotter_roots
        .iter()
        .map(|s| (s.name.as_str(), s.path.clone(), s.configured))
        .collect();
    assert_eq!(
        sn,
        [
            (
                "native",
                p("/var/lib/containerd/io.containerd.snapshotter.v1.native"),
                false
            ),
            (
                "overlayfs",
                p("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"),
                false
            ),
        ]
    );
    assert_eq!(watch_roots(&found), [p(DEFAULT_ROOT), p(DEFAULT_STATE)]);
}

#[test]
fn containerd_discovery_config_toml_v2() {
    let f = Fake::new("cfg2");
    f.file(
        "/etc/containerd/config.toml",
        r#"
version = 2
root = "/data/containerd"
state = "/run/ctr"
imports = ["conf.d/*.toml"]

[plugins."io.containerd.snapshotter.v1.overlayfs"]
  root_path = "/fast/overlay"
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
"#,
    )
    // Imports override the main file.
    .file(
        "/etc/containerd/conf.d/10-state.toml",
        "state = \"/run/ctr-imported\"\n",
    )
    .file("/etc/containerd/conf.d/ignored.txt", "state = \"/nope\"\n")
    .dir("/data/containerd");
    let found = discover(&f.env());
    assert_eq!(roots(&found), [Path::new("/data/containerd")]);
    let i = &found[0];
    assert_eq!(i.state, p("/run/ctr-imported"));
    assert_eq!(i.source, ["config /etc/containerd/config.toml"]);
    assert_eq!(
        i.config_files,
        [
            p("/etc/containerd/config.toml"),
            p("/etc/containerd/conf.d/10-state.toml")
        ]
    );
    assert_eq!(
        i.snapshotter_roots,
        [SnapshotterRoot {
            name: "overlayfs".into(),
            path: p("/fast/overlay"),
            configured: true
        }]
    );
    assert_eq!(
        watch_roots(&found),
        [
            p("/data/containerd"),
            p("/run/ctr-imported"),
            p("/fast/overlay")
        ]
    );
    let layout = i.layout();
    assert_eq!(
        layout.snapshotter_root("overlayfs"),
        p("/fast/overlay"),
        "classify_path sees the moved snapshotter"
    );
    assert!(matches!(
        crate::classify_path(&layout, b"/fast/overlay/snapshots/3/fs/x"),
        crate::PathClass::SnapshotFile { dir_id: 3, .. }
    ));
}

#[test]
fn containerd_discovery_config_versions_1_and_3() {
    // Version 1 (or no version): short plugin names.
    let f = Fake::new("cfg1");
    f.file(
        "/etc/containerd/config.toml",
        "root = \"/r1\"\n[plugins.overlayfs]\nroot_path = \"/o1\"\n[plugins.native]\nroot_path = \"/n1\"\n[plugins.cri]\nx = 1\n",
    );
    let found = discover(&f.env());
    let names: Vec<_> = found[0]
        .snapshotter_roots
        .iter()
        .map(|s| (s.name.as_str(), s.path.clone()))
        .collect();
    assert_eq!(names, [("native", p("/n1")), ("overlayfs", p("/o1"))]);

    // Version 3 single-quoted keys are the same TOML; short names mean nothing there.
    let f = Fake::new("cfg3");
    f.file(
        "/etc/containerd/config.toml",
        "version = 3\nroot = \"/r3\"\n[plugins.'io.containerd.snapshotter.v1.overlayfs']\nroot_path = '/o3'\n[plugins.native]\nroot_path = \"/ignored\"\n",
    );
    let found = discover(&f.env());
    assert_eq!(roots(&found), [Path::new("/r3")]);
    assert_eq!(
        found[0]
            .snapshotter_roots
            .iter()
            .map(|s| (s.name.as_str(), s.path.clone()))
            .collect::<Vec<_>>(),
        [("overlayfs", p("/o3"))]
    );

    // Broken TOML: reported, defaults used.
    let f = Fake::new("cfgbad");
    f.file("/etc/containerd/config.toml", "root = [unclosed\n");
    let found = discover(&f.env());
    assert_eq!(roots(&found), [Path::new(DEFAULT_ROOT)]);
    assert!(
        found[0].problems[0].contains("not valid TOML"),
        "{:?}",
        found[0].problems
    );
}

#[test]
fn containerd_discovery_k3s_layout() {
    // Just the directory, nothing running.
    let f = Fake::new("k3sdir");
    f.dir("/var/lib/rancher/k3s/agent/containerd/io.containerd.snapshotter.v1.overlayfs");
    let found = discover(&f.env());
    assert_eq!(
        roots(&found),
        [Path::new("/var/lib/rancher/k3s/agent/containerd")]
    );
    let i = &found[0];
    assert_eq!(i.state, p(K3S_STATE));
    assert_eq!(i.source, ["k3s data-dir /var/lib/rancher/k3s (default)"]);
    assert_eq!(i.snapshotter_roots.len(), 1);
    assert_eq!(
        watch_roots(&found),
        [p("/var/lib/rancher/k3s/agent/containerd"), p(K3S_STATE)]
    );

    // A running k3s server with its own data dir, its containerd (the k3s binary started as
    // "containerd"), and k3s's kubectl (ignored).
    let f = Fake::new("k3sproc");
    f.dir("/opt/k3s/agent/containerd")
        .file(
            "/opt/k3s/agent/etc/containerd/config.toml",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nsnapshotter = \"overlayfs\"\n",
        )
        .process(
            4321,
            "/usr/local/bin/k3s",
            "k3s-server",
            &["/usr/local/bin/k3s", "server", "--data-dir", "/opt/k3s"],
        )
        .process(
            4400,
            "/opt/k3s/data/abc/bin/k3s",
            "containerd",
            &[
                "containerd",
                "-c",
                "/opt/k3s/agent/etc/containerd/config.toml",
                "-a",
                "/run/k3s/containerd/containerd.sock",
                "--state",
                "/run/k3s/containerd",
                "--root",
                "/opt/k3s/agent/containerd",
            ],
        )
        .process(
            4500,
            "/usr/local/bin/k3s",
            "kubectl",
            &["kubectl", "get", "pods"],
        );
    let found = discover(&f.env());
    assert_eq!(roots(&found), [Path::new("/opt/k3s/agent/containerd")]);
    let i = &found[0];
    assert_eq!(i.state, p(K3S_STATE));
    assert_eq!(i.containerd_pid, Some(4400));
    assert_eq!(i.exe, Some(p("/opt/k3s/data/abc/bin/k3s")));
    assert_eq!(
        i.source,
        [
            "process 4321 k3s --data-dir /opt/k3s",
            "process 4400 --root, config /opt/k3s/agent/etc/containerd/config.toml",
        ]
    );
    assert_eq!(
        i.config_files,
        [p("/opt/k3s/agent/etc/containerd/config.toml")]
    );

    // Data dir from k3s's config.yaml, and `k3s agent -d`.
    let f = Fake::new("k3syaml");
    f.file(
        "/etc/rancher/k3s/config.yaml",
        "write-kubeconfig-mode: \"0644\"\ndata-dir: \"/srv/k3s\"  # moved\n",
    )
    .dir("/srv/k3s/agent/containerd")
    .process(
        77,
        "/usr/local/bin/k3s",
        "k3s-agent",
        &["/usr/local/bin/k3s", "agent", "-d=/k3s2"],
    );
    let found = discover(&f.env());
    assert_eq!(
        roots(&found),
        [
            Path::new("/k3s2/agent/containerd"),
            Path::new("/srv/k3s/agent/containerd")
        ]
    );
    assert_eq!(found[0].source, ["process 77 k3s --data-dir /k3s2"]);
    assert_eq!(
        found[1].source,
        ["k3s data-dir /srv/k3s (config /etc/rancher/k3s/config.yaml)"]
    );
}

#[test]
fn containerd_discovery_running_containerd() {
    let f = Fake::new("proc");
    f.file(
        "/etc/ctr/config.toml",
        "version = 2\nroot = \"/ignored-by-flag\"\nstate = \"/run/ctr2\"\n[plugins.\"io.containerd.snapshotter.v1.native\"]\nroot_path = \"/native\"\n",
    )
    .dir("/srv/ctr/io.containerd.snapshotter.v1.overlayfs")
    .process(
        100,
        "/usr/bin/containerd",
        "containerd",
        &[
            "/usr/bin/containerd",
            "--root",
            "/srv/ctr",
            "--config",
            "/etc/ctr/config.toml",
        ],
    )
    // Not daemons.
    .process(
        101,
        "/usr/bin/containerd",
        "containerd",
        &["containerd", "config", "dump"],
    )
    .process(
        102,
        "/usr/bin/containerd-shim-runc-v2",
        "containerd-shim",
        &["/usr/bin/containerd-shim-runc-v2", "-namespace", "k8s.io"],
    );
    // A deleted (upgraded) binary.
    let found = discover(&f.env());
    assert_eq!(roots(&found), [Path::new("/srv/ctr")]);
    let i = &found[0];
    assert_eq!(i.state, p("/run/ctr2"));
    assert_eq!(i.containerd_pid, Some(100));
    assert_eq!(i.exe, Some(p("/usr/bin/containerd")));
    assert_eq!(
        i.source,
        ["process 100 --root, config /etc/ctr/config.toml"]
    );
    let sn: Vec<_> = i
        .snapshotter_roots
        .iter()
        .map(|s| (s.name.as_str(), s.configured))
        .collect();
    assert_eq!(sn, [("native", true), ("overlayfs", false)]);
    assert_eq!(
        watch_roots(&found),
        [p("/srv/ctr"), p("/run/ctr2"), p("/native")]
    );
    let text = describe(&discover_all(&f.env()));
    assert!(text.contains("/srv/ctr\n"), "{text}");
    assert!(text.contains("pid 100 /usr/bin/containerd"), "{text}");
    assert!(text.contains("found by:     process 100 --root"), "{text}");

    // Relative --root against the process's cwd, `--root=` form, a replaced binary.
    let f = Fake::new("proc2");
    f.process(
        200,
        "/usr/bin/containerd (deleted)",
        "containerd",
        &["containerd", "--root=data", "--state=/run/c"],
    );
    symlink("/work", f.base.join("proc/200/cwd")).unwrap();
    let found = discover(&f.env());
    assert_eq!(roots(&found), [Path::new("/work/data")]);
    assert_eq!(found[0].state, p("/run/c"));
    assert_eq!(found[0].exe, Some(p("/usr/bin/containerd")));
}

#[test]
fn containerd_discovery_dedupes_by_canonical_root() {
    let f = Fake::new("dedupe");
    f.dir("/var/lib/containerd")
        .link("/srv/link", "/var/lib/containerd")
        .file("/etc/containerd/config.toml", "version = 2\n")
        // No flags: the default config, so the default root.
        .process(
            10,
            "/usr/bin/containerd",
            "containerd",
            &["/usr/bin/containerd"],
        )
        .process(
            11,
            "/usr/bin/containerd",
            "containerd",
            &["containerd", "--root", "/srv/link"],
        );
    let found = discover(&f.env());
    assert_eq!(roots(&found), [Path::new("/var/lib/containerd")]);
    let i = &found[0];
    assert_eq!(i.containerd_pid, Some(10));
    assert_eq!(
        i.source,
        [
            "process 10 default root, config /etc/containerd/config.toml",
            "process 11 --root, config /etc/containerd/config.toml (as /srv/link)",
            "config /etc/containerd/config.toml",
            "default",
        ]
    );
}

#[test]
fn containerd_discovery_canonical_paths() {
    let f = Fake::new("canon");
    let env = f.env();
    f.dir("/a/b")
        .link("/l1", "/a")
        .link("/a/rel", "b")
        .link("/loop1", "/loop2")
        .link("/loop2", "/loop1")
        .link("/escape", "../../../../a");
    assert_eq!(env.canonical(Path::new("/l1/b")), p("/a/b"));
    assert_eq!(env.canonical(Path::new("/a/rel/x")), p("/a/b/x"));
    assert_eq!(env.canonical(Path::new("/a/./b/../b")), p("/a/b"));
    assert_eq!(
        env.canonical(Path::new("/escape/b")),
        p("/a/b"),
        "`..` stops at /"
    );
    // A loop ends after the link limit instead of hanging.
    let _ = env.canonical(Path::new("/loop1/x"));
    assert_eq!(env.canonical(Path::new("/missing/x")), p("/missing/x"));
    assert_eq!(env.canonical(Path::new("/")), p("/"));
}

#[test]
fn containerd_discovery_wildcards() {
    assert!(wildcard(b"*.toml", b"a.toml"));
    assert!(wildcard(b"*.toml", b".toml"));
    assert!(!wildcard(b"*.toml", b"a.toml.bak"));
    assert!(wildcard(b"1?-*", b"10-x"));
    assert!(wildcard(b"*", b""));
    assert!(!wildcard(b"?", b""));
    assert!(wildcard(b"a*b*c", b"aXXbYYc"));
    assert!(!wildcard(b"a*b*c", b"aXXbYY"));
}

fn refusals(found: &Discovery) -> Vec<String> {
    found.refused.iter().map(Refusal::to_string).collect()
}

fn refused_with(found: &Discovery, what: &str, why: &str) -> bool {
    found
        .refused
        .iter()
        .any(|r| r.what.contains(what) && r.reason.contains(why))
}

#[test]
fn containerd_discovery_trusts_only_root_processes_running_a_root_owned_containerd() {
    let f = Fake::new("trust");
    f.dir("/srv/ok")
        // The real thing.
        .process(
            10,
            "/usr/bin/containerd",
            "containerd",
            &["/usr/bin/containerd", "--root", "/srv/ok"],
        )
        // Another user's process dressed up as containerd (`exec -a containerd bash ...`).
        .process_as(
            1001,
            11,
            "/usr/bin/bash",
            "bash",
            &[
                "containerd",
                "-c",
                "sleep 120",
                "x",
                "--root",
                "/home/u/fake",
                "--state",
                "/",
            ],
        )
        // Root, but running bash.
        .process(
            12,
            "/usr/bin/bash",
            "bash",
            &["containerd", "--root", "/bash-root"],
        )
        // Root, a binary named containerd that others may write.
        .process(
            13,
            "/opt/bin/containerd",
            "containerd",
            &["containerd", "--root", "/writable-root"],
        )
        // Root, in another root directory (a container).
        .process(
            14,
            "/usr/bin/containerd",
            "containerd",
            &["containerd", "--root", "/in-container"],
        )
        // A k3s server run by a user.
        .process_as(
            1001,
            15,
            "/usr/local/bin/k3s",
            "k3s-server",
            &["/usr/local/bin/k3s", "server", "--data-dir", "/home/u/k3s"],
        );
    fs::set_permissions(
        f.at("/opt/bin/containerd"),
        fs::Permissions::from_mode(0o775),
    )
    .unwrap();
    let elsewhere = f.base.join("container-root");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::remove_file(f.base.join("proc/14/root")).unwrap();
    symlink(&elsewhere, f.base.join("proc/14/root")).unwrap();

    let found = discover_all(&f.env());
    assert_eq!(roots(&found.instances), [Path::new("/srv/ok")]);
    assert_eq!(found.instances[0].containerd_pid, Some(10));
    let why = refusals(&found);
    assert!(
        refused_with(&found, "process 11 containerd", "runs as uid 1001"),
        "{why:#?}"
    );
    assert!(
        found.refused[..]
            .iter()
            .any(|r| r.what.contains("process 11")
                && r.what.contains("--root /home/u/fake")
                && r.what.contains("--state /")
                && r.what.contains("exe /usr/bin/bash")),
        "the refusal says what it claimed: {why:#?}"
    );
    assert!(
        refused_with(
            &found,
            "process 12",
            "/usr/bin/bash is not a containerd or k3s or rke2 binary"
        ),
        "{why:#?}"
    );
    assert!(
        refused_with(
            &found,
            "process 13",
            "writable by group or others (mode 0775)"
        ),
        "{why:#?}"
    );
    assert!(
        refused_with(&found, "process 14", "another root directory"),
        "{why:#?}"
    );
    assert!(
        refused_with(&found, "process 15", "runs as uid 1001"),
        "{why:#?}"
    );
    assert_eq!(found.refused.len(), 5, "{why:#?}");
    assert_eq!(
        watch_roots(&found.instances),
        [p("/srv/ok"), p(DEFAULT_STATE)],
        "nothing of the refused processes is watched, `/` least of all"
    );
    let text = describe(&found);
    assert!(
        text.contains("refused:      process 11 containerd (exe /usr/bin/bash"),
        "{text}"
    );

    // An executable owned by someone else than root (here: root is uid 4242 and the files are
    // the test user's).
    let f = Fake::new("trust-owner");
    f.process_as(
        4242,
        20,
        "/usr/bin/containerd",
        "containerd",
        &["containerd", "--root", "/r"],
    );
    let found = discover_all(&f.env().with_root_uid(4242));
    assert!(
        refused_with(
            &found,
            "process 20",
            &format!("/usr/bin/containerd is owned by uid {}, not root", euid())
        ),
        "{:#?}",
        refusals(&found)
    );
    assert!(!roots(&found.instances).contains(&Path::new("/r")));
}

#[test]
fn containerd_discovery_refuses_config_files_root_does_not_own_alone() {
    // World-writable: refused, so its root is not used.
    let f = Fake::new("cfg-mode");
    f.file("/etc/containerd/config.toml", "root = \"/evil\"\n");
    fs::set_permissions(
        f.at("/etc/containerd/config.toml"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let found = discover_all(&f.env());
    assert_eq!(roots(&found.instances), [Path::new(DEFAULT_ROOT)]);
    assert!(
        refused_with(
            &found,
            "config /etc/containerd/config.toml",
            "writable by group or others (mode 0666)"
        ),
        "{:#?}",
        refusals(&found)
    );

    // Owned by another user (root is uid 4242 here).
    let f = Fake::new("cfg-owner");
    f.file("/etc/containerd/config.toml", "root = \"/evil\"\n");
    let found = discover_all(&f.env().with_root_uid(4242));
    assert!(!roots(&found.instances).contains(&Path::new("/evil")));
    assert!(
        refused_with(
            &found,
            "config /etc/containerd/config.toml",
            &format!("owned by uid {}, not root", euid())
        ),
        "{:#?}",
        refusals(&found)
    );

    // A FIFO: refused at once (opened without blocking), not read.
    let f = Fake::new("cfg-fifo");
    f.dir("/etc/containerd");
    let fifo = std::ffi::CString::new(
        f.at("/etc/containerd/config.toml")
            .as_os_str()
            .as_bytes()
            .to_vec(),
    )
    .unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let found = discover_all(&f.env());
    assert!(
        refused_with(&found, "config /etc/containerd/config.toml", "a FIFO"),
        "{:#?}",
        refusals(&found)
    );

    // One refused import among trusted ones: only that one is ignored.
    let f = Fake::new("cfg-import");
    f.file(
        "/etc/containerd/config.toml",
        "version = 2\nroot = \"/data/ctr\"\nimports = [\"conf.d/*.toml\"]\n",
    )
    .file("/etc/containerd/conf.d/10-ok.toml", "state = \"/run/ok\"\n")
    .file("/etc/containerd/conf.d/20-evil.toml", "root = \"/evil\"\n");
    fs::set_permissions(
        f.at("/etc/containerd/conf.d/20-evil.toml"),
        fs::Permissions::from_mode(0o646),
    )
    .unwrap();
    let found = discover_all(&f.env());
    assert_eq!(roots(&found.instances), [Path::new("/data/ctr")]);
    assert_eq!(found.instances[0].state, p("/run/ok"));
    assert!(
        found.instances[0]
            .problems
            .iter()
            .any(|p| p.contains("config /etc/containerd/conf.d/20-evil.toml")),
        "{:?}",
        found.instances[0].problems
    );

    // k3s's config.yaml, world-writable: its data-dir is not used.
    let f = Fake::new("cfg-yaml");
    f.file("/etc/rancher/k3s/config.yaml", "data-dir: /evil-k3s\n")
        .dir("/evil-k3s/agent/containerd");
    fs::set_permissions(
        f.at("/etc/rancher/k3s/config.yaml"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let found = discover_all(&f.env());
    assert!(!roots(&found.instances).contains(&Path::new("/evil-k3s/agent/containerd")));
    assert!(
        refused_with(&found, "config /etc/rancher/k3s/config.yaml", "writable"),
        "{:#?}",
        refusals(&found)
    );
}

#[test]
fn containerd_discovery_never_takes_system_directories() {
    let f = Fake::new("sysdir");
    f.dir("/srv/ok")
        .process(
            30,
            "/usr/bin/containerd",
            "containerd",
            &["containerd", "--root", "/srv/ok", "--state", "/"],
        )
        .process(
            31,
            "/usr/bin/containerd",
            "containerd",
            &["containerd", "--root", "/usr", "--state", "/run/x"],
        )
        .file(
            "/etc/ctr/config.toml",
            "version = 2\nroot = \"/proc/self\"\n[plugins.\"io.containerd.snapshotter.v1.overlayfs\"]\nroot_path = \"/var\"\n",
        )
        .process(
            32,
            "/usr/bin/containerd",
            "containerd",
            &["containerd", "--config", "/etc/ctr/config.toml", "--root", "/srv/two"],
        );
    let found = discover_all(&f.env());
    let why = refusals(&found);
    assert_eq!(
        roots(&found.instances),
        [Path::new("/srv/ok"), Path::new("/srv/two")],
        "{why:#?}"
    );
    assert!(
        refused_with(&found, "root /usr (process 31", "system directory"),
        "{why:#?}"
    );
    assert!(
        refused_with(&found, "state / of /srv/ok", "system directory"),
        "{why:#?}"
    );
    assert!(
        refused_with(
            &found,
            "snapshotter directory /var of /srv/two",
            "system directory"
        ),
        "{why:#?}"
    );
    assert!(
        found.instances[0]
            .problems
            .iter()
            .any(|p| p.contains("state /")),
        "{:?}",
        found.instances[0].problems
    );
    let watched = watch_roots(&found.instances);
    assert!(
        !watched
            .iter()
            .any(|w| system_dir(w).is_some() || w == Path::new("/usr")),
        "{watched:?}"
    );
    // Nor are events attributed through a refused directory: a layout holding `/` would
    // claim every path of the node for that instance.
    for i in &found.instances {
        let l = i.layout();
        assert!(l.state.iter().all(|s| system_dir(s).is_none()), "{l:?}");
        assert!(
            l.snapshotter_roots
                .iter()
                .all(|(_, p)| system_dir(p).is_none()),
            "{l:?}"
        );
    }
    assert!(system_dir(Path::new("/proc/1/root")).is_some());
    assert!(system_dir(Path::new("/var/lib/containerd")).is_none());
    assert!(system_dir(Path::new("/run/containerd")).is_none());
}

#[test]
fn containerd_discovery_escapes_what_it_prints() {
    let f = Fake::new("escape");
    f.process(
        40,
        "/usr/bin/containerd",
        "containerd",
        &["containerd", "--root", "/srv/a\nb\u{1b}[31m"],
    )
    .process_as(
        1001,
        41,
        "/usr/bin/bash",
        "bash",
        &["containerd", "--root", "/x\ny\u{1b}[2J"],
    );
    let text = describe(&discover_all(&f.env()));
    assert!(
        text.starts_with("/srv/a\\x0ab\\x1b[31m  (does not exist yet)\n"),
        "{text}"
    );
    assert!(text.contains("\n  /srv/a\\x0ab\\x1b[31m\n"), "{text}");
    assert!(
        text.contains("process 41 containerd (exe /usr/bin/bash, --root /x\\x0ay\\x1b[2J)"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "{text}");
}
