//! A real containerd for integration tests.
//!
//! [`Containerd::start`] runs the machine's `containerd` (Debian's 1.6.20 here; `cargo xtask
//! setup` installs it with `runc`) with its own root, state, temp dir and socket inside a fresh
//! directory `/tmp/ctrwatch-ctrd-<pid>-<n>-<nanos>/`, and drives it with `ctr`. Images are built
//! offline ([`Layer`], [`write_oci_archive`]): no image registry is needed.
//!
//! # Layout of the temp dir
//! ```text
//! config.toml  containerd.log  containerd.sock  containerd.sock.ttrpc
//! root/    containerd's root (content store, meta.db, overlayfs snapshots)
//! state/   containerd's state (task bundles, the containers' merged rootfs mounts)
//! tmp/ opt/                 containerd's `temp` and the `opt` plugin's dir
//! runc/ fifo/               runc's state dir (`ctr run --runc-root`) and ctr's stdio FIFOs
//! images/                   archives from [`Containerd::build_image`]
//! ```
//! /tmp is used because overlayfs must work on the filesystem holding the root (checked at
//! start: an overlay mount and a `trusted.*` xattr are tried there first). On this machine kind
//! /tmp is on the ext4 root filesystem and both work. `CTRWATCH_CONTAINERD_TMP` chooses another
//! parent directory (e.g. when /tmp is a filesystem overlayfs cannot use as upper layer);
//! `CTRWATCH_CONTAINERD` another containerd binary (`ctr` is taken from the same directory if
//! present there, else from `PATH`).
//!
//! # What containerd 1.6 still puts outside the temp dir
//! Nothing is written under /var/lib/containerd or /opt/containerd (the `opt` plugin's path is
//! set), and runc's state goes to `runc/` (`--runc-root`) rather than /run/containerd/runc.
//! One thing cannot be moved in 1.6 (nor 1.7): the runc shim's socket is
//! `/run/containerd/s/<sha256 of "<address>/<namespace>/<container id>">` (hard-coded
//! `defaults.DefaultStateDir`). Its name derives from our own socket path, so it never collides
//! with a system containerd's; the shim removes it when it exits, teardown removes it for a shim
//! it had to kill, and removes the `/run/containerd/s` and `/run/containerd` directories again
//! if they did not exist before (when the last [`Containerd`] of the process stops).
//! Containers get the cgroup `/<ctrwatch-ctrd-...>/<namespace>/<id>` (`ctr run --cgroup`), which
//! teardown removes.
//!
//! # Garbage collection with containerd 1.6 (as measured here)
//! - `ctr images rm NAME` ([`Containerd::remove_image`]) removes the image record; the GC
//!   scheduler then *usually* collects its content and snapshots by itself, asynchronously
//!   (the delete counts as a deletion; the scheduler's next check, about 50 average GC
//!   durations apart with `pause_threshold = 0.02`, i.e. tens of ms here, then runs a
//!   collection; observed ~40-60 ms after the delete in 3 of 4 tries). Once nothing was collected for over 10 s (cause not established). So tests must
//!   not rely on either state right after `images rm`.
//! - [`Containerd::gc`] triggers one deterministically and waits for it: it creates a lease and
//!   deletes it with `ctr leases delete --sync`, which runs the collector synchronously,
//!   including the overlay snapshotter's cleanup. When it returns, unreferenced content blobs
//!   and the `snapshots/<id>` directories of unreferenced snapshots are gone from disk.
//!   (`ctr images rm --sync` does the same for one image; `ctr content prune references` is not
//!   a GC trigger: it strips `gc.ref` labels from layers.)
//! - A container's snapshot record goes when the container is deleted (`ctr run --rm` does
//!   it); its `snapshots/<id>` directory only at the next collection's cleanup (the overlay
//!   snapshotter's default `sync_remove = false`).
//!
//! # Processes
//! containerd is started with `PR_SET_PDEATHSIG` = SIGTERM: it stops when the *thread* that
//! called [`Containerd::start`] ends (as for [`crate::Watcher`]), so an instance shared between
//! tests must be started from a thread that lives as long as the test process.
//! Teardown ([`Containerd::stop`] or `Drop`): delete all tasks through ctr, SIGTERM containerd
//! (SIGKILL after 10 s), SIGKILL any leftover shim (found by `-address <our socket>` in its
//! command line) and any process left in our cgroups, unmount everything mounted under the temp
//! dir (from /proc/self/mountinfo), remove our cgroups, remove the temp dir.

use std::{
    collections::HashMap,
    ffi::{CString, OsStr, OsString},
    fs,
    io::{self, Read, Write},
    os::unix::{
        ffi::OsStrExt,
        fs::{FileTypeExt, MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Component, Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The namespace `ctr` uses unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The only snapshotter these tests use.
pub const SNAPSHOTTER: &str = "overlayfs";
/// How long [`Containerd::start`] waits for the socket to answer. Seconds alone; 120 s
/// because tests of one binary start their containerds (and daemons loading eBPF) at the same
/// time on a loaded 2-core machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one `ctr` command may take.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long containerd gets to exit after SIGTERM before SIGKILL (and the test fails): it
/// exits in well under a second alone, but a loaded machine can make that many.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of containerd's log quoted in errors.
const LOG_TAIL_LINES: usize = 40;
/// The static busybox of Debian's `busybox-static`, used for images' first layer.
pub const BUSYBOX: &str = "/bin/busybox";
/// The symlinks to busybox in [`Layer::base`]'s `/bin`.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ls", "rm", "cat", "sleep", "touch", "mkdir", "mv", "cp", "ln", "chmod", "stat", "echo",
    "test", "true",
];
/// mtime of every entry of built layers: archives are reproducible (same layers, same digests).
const LAYER_MTIME: u64 = 1_700_000_000;
/// The hard-coded directory of runc shim sockets in containerd 1.6/1.7.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
const RUN_CONTAINERD: &str = "/run/containerd";

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

static SEQ: AtomicU64 = AtomicU64::new(0);
/// Live instances in this process, and whether /run/containerd existed before the first.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static RUN_CONTAINERD_PREEXISTED: AtomicUsize = AtomicUsize::new(0);

/// A containerd of our own, stopped and cleaned up on drop. See the module docs.
pub struct Containerd {
    dir: PathBuf,
    root: PathBuf,
    state: PathBuf,
    address: PathBuf,
    log: PathBuf,
    exe: PathBuf,
    ctr_bin: PathBuf,
    cgroup_parent: String,
    child: Option<Child>,
    torn_down: bool,
}

/// One snapshot as listed by `ctr snapshots ls`, with its directory when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The key: a chainID for committed layers, the container id for a container's snapshot.
    pub key: String,
    /// The parent snapshot's key, if any.
    pub parent: Option<String>,
    /// `Committed`, `Active` or `View`.
    pub kind: String,
    /// The overlay snapshotter's id: the directory is `snapshots/<id>`.
    pub id: Option<u64>,
    /// `<root>/io.containerd.snapshotter.v1.overlayfs/snapshots/<id>`.
    pub dir: Option<PathBuf>,
}

/// What [`write_oci_archive`] built.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// The OCI archive (for `ctr images import`).
    pub archive: PathBuf,
    /// The image name containerd gives it on import (`io.containerd.image.name`).
    pub name: String,
    /// The manifest's digest (`sha256:...`).
    pub manifest_digest: String,
    /// The image config's digest (`sha256:...`).
    pub config_digest: String,
    /// Digests of the compressed layer blobs (content store `blobs/sha256/...`).
    pub layer_digests: Vec<String>,
    /// sha256 of the uncompressed layer tars (`rootfs.diff_ids`).
    pub diff_ids: Vec<String>,
    /// The committed snapshots' keys, base layer first.
    pub chain_ids: Vec<String>,
}

/// Output of a command.
struct CmdOutput {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Containerd {
    /// Starts a containerd with everything under a new temp dir and waits until it answers.
    pub fn start() -> Result<Containerd> {
        // SAFETY: geteuid has no preconditions.
        ensure!(
            unsafe { libc::geteuid() } == 0,
            "running containerd needs root (mounts, runc): run the tests as root"
        );
        let exe = match std::env::var_os("CTRWATCH_CONTAINERD") {
            Some(p) => PathBuf::from(p),
            None => find_in_path("containerd").context(
                "containerd not found in PATH: install Debian's `containerd` and `runc` \
                 (`cargo xtask setup` does) or set CTRWATCH_CONTAINERD",
            )?,
        };
        let ctr_bin = exe
            .parent()
            .map(|d| d.join("ctr"))
            .filter(|p| is_executable(p))
            .or_else(|| find_in_path("ctr"))
            .context("`ctr` not found next to containerd nor in PATH")?;
        let base = std::env::var_os("CTRWATCH_CONTAINERD_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let dir = make_unique_dir(&base)?;
        let cgroup_parent = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("ctrwatch-ctrd-{}", std::process::id()));
        if LIVE.fetch_add(1, Ordering::SeqCst) == 0 {
            RUN_CONTAINERD_PREEXISTED.store(
                usize::from(Path::new(RUN_CONTAINERD).exists()),
                Ordering::SeqCst,
            );
        }
        // From here on Drop cleans up whatever part of the start succeeded.
        let mut c = Containerd {
            root: dir.join("root"),
            state: dir.join("state"),
            address: dir.join("containerd.sock"),
            log: dir.join("containerd.log"),
            dir,
            exe,
            ctr_bin,
            cgroup_parent,
            child: None,
            torn_down: false,
        };
        c.launch()?;
        Ok(c)
    }

    fn launch(&mut self) -> Result<()> {
        ensure!(
            self.address.as_os_str().len() < 100,
            "socket path {} is too long for a unix socket: choose a shorter \
             CTRWATCH_CONTAINERD_TMP",
            self.address.display()
        );
        check_overlay(&self.dir)?;
        for d in [
            self.root.clone(),
            self.state.clone(),
            self.dir.join("tmp"),
            self.dir.join("opt"),
            self.runc_root(),
            self.fifo_dir(),
            self.dir.join("images"),
        ] {
            fs::create_dir_all(&d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        let config = self.config_path();
        fs::write(&config, self.config_toml())
            .with_context(|| format!("writing {}", config.display()))?;
        let log = fs::File::create(&self.log)
            .with_context(|| format!("creating {}", self.log.display()))?;
        let log_err = log.try_clone().context("dup of the log file")?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--config")
            .arg(&config)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: prctl in the child before exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        self.child = Some(child);
        self.wait_ready()?;
        if let Ok(p) = fs::read_link(format!("/proc/{}/exe", self.pid())) {
            self.exe = p;
        }
        // The overlayfs snapshotter skips itself when overlayfs does not work: say so clearly.
        let plugins = self.ctr(&["plugins", "ls"])?;
        let line = plugins
            .lines()
            .find(|l| l.contains("io.containerd.snapshotter.v1") && l.contains(" overlayfs "));
        ensure!(
            line.is_some_and(|l| l.split_whitespace().last() == Some("ok")),
            "containerd's overlayfs snapshotter is not available: {:?}\n{}",
            line,
            self.log_tail_section()
        );
        Ok(())
    }

    fn config_toml(&self) -> String {
        let q = |p: &Path| toml_str(&p.to_string_lossy());
        let mut ttrpc = self.address.clone().into_os_string();
        ttrpc.push(".ttrpc");
        format!(
            r#"# written by ctrwatch's test harness (tests/src/containerd.rs)
version = 2
root = {root}
state = {state}
temp = {temp}
oom_score = 0
# CRI is not needed (and would want CNI); the other snapshotters need what we do not have.
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = {address}

[ttrpc]
  address = {ttrpc}

[debug]
  address = ""
  level = "debug"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = {opt}
"#,
            root = q(&self.root),
            state = q(&self.state),
            temp = q(&self.dir.join("tmp")),
            address = q(&self.address),
            ttrpc = q(Path::new(&ttrpc)),
            opt = q(&self.dir.join("opt")),
        )
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("socket not created yet");
        loop {
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait().context("waiting for containerd")?,
                None => bail!("containerd was not started"),
            };
            if let Some(status) = exited {
                bail!(
                    "containerd exited during startup with {status}\n{}",
                    self.log_tail_section()
                );
            }
            if self.address.exists() {
                match self.ctr_output(
                    DEFAULT_NAMESPACE,
                    &[OsString::from("version")],
                    Duration::from_secs(5),
                ) {
                    Ok(out) if out.status.success() => return Ok(()),
                    Ok(out) => {
                        last = format!(
                            "ctr version: {}: {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr).trim()
                        )
                    }
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer on {} within {START_TIMEOUT:?} ({last})\n{}",
                    self.address.display(),
                    self.log_tail_section()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The temp dir holding everything.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// containerd's root (`root` in config.toml).
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// containerd's state dir.
    pub fn state(&self) -> &Path {
        &self.state
    }
    /// The gRPC socket.
    pub fn address(&self) -> &Path {
        &self.address
    }
    /// This instance's config.toml.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    /// containerd's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    /// `<root>/io.containerd.snapshotter.v1.overlayfs/snapshots`.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.overlay_dir().join("snapshots")
    }
    /// `<root>/io.containerd.snapshotter.v1.overlayfs`.
    pub fn overlay_dir(&self) -> PathBuf {
        self.root.join("io.containerd.snapshotter.v1.overlayfs")
    }
    /// The overlay snapshotter's own bolt database (snapshot key -> directory id).
    pub fn overlay_metadata_db(&self) -> PathBuf {
        self.overlay_dir().join("metadata.db")
    }
    /// `<root>/io.containerd.content.v1.content`.
    pub fn content_dir(&self) -> PathBuf {
        self.root.join("io.containerd.content.v1.content")
    }
    /// `<root>/io.containerd.metadata.v1.bolt/meta.db`.
    pub fn meta_db(&self) -> PathBuf {
        self.root.join("io.containerd.metadata.v1.bolt/meta.db")
    }
    /// The merged rootfs of a running container:
    /// `<state>/io.containerd.runtime.v2.task/<ns>/<id>/rootfs`.
    pub fn task_rootfs(&self, ns: &str, id: &str) -> PathBuf {
        self.state
            .join("io.containerd.runtime.v2.task")
            .join(ns)
            .join(id)
            .join("rootfs")
    }
    /// runc's state dir for our containers.
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }
    fn fifo_dir(&self) -> PathBuf {
        self.dir.join("fifo")
    }
    /// The cgroup (relative to each hierarchy's mount) under which our containers run.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }
    /// containerd's pid (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }
    /// The containerd binary running (from /proc/<pid>/exe).
    pub fn exe(&self) -> &Path {
        &self.exe
    }
    /// The `ctr` binary used.
    pub fn ctr_bin(&self) -> &Path {
        &self.ctr_bin
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn log_tail_section(&self) -> String {
        format!(
            "--- last lines of {} ---\n{}\n---",
            self.log.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    /// `ctr --address SOCK --namespace default ARGS...`; its stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        self.ctr_ns(DEFAULT_NAMESPACE, args)
    }

    /// `ctr --address SOCK --namespace NS ARGS...`; its stdout.
    pub fn ctr_ns(&self, ns: &str, args: &[&str]) -> Result<String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        self.ctr_os(ns, &args, CTR_TIMEOUT)
    }

    fn ctr_os(&self, ns: &str, args: &[OsString], timeout: Duration) -> Result<String> {
        let out = self.ctr_output(ns, args, timeout)?;
        if !out.status.success() {
            bail!(
                "`ctr --namespace {ns} {}` failed ({}):\nstderr: {}\nstdout: {}\n{}",
                display_args(args),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim(),
                self.log_tail_section()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ctr_output(&self, ns: &str, args: &[OsString], timeout: Duration) -> Result<CmdOutput> {
        let mut cmd = Command::new(&self.ctr_bin);
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(ns)
            .args(args)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .env_remove("CONTAINERD_SNAPSHOTTER");
        run_command(&mut cmd, timeout)
            .with_context(|| format!("ctr --namespace {ns} {}", display_args(args)))
    }

    /// Builds an OCI image archive named `name_ref` from `layers` (base first) in the temp dir
    /// and returns its path. See [`write_oci_archive`].
    pub fn build_image(&self, name_ref: &str, layers: &[Layer]) -> Result<PathBuf> {
        Ok(self.build_image_info(name_ref, layers)?.archive)
    }

    /// [`Containerd::build_image`], with the digests and snapshot keys of what it built.
    pub fn build_image_info(&self, name_ref: &str, layers: &[Layer]) -> Result<BuiltImage> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let file: String = name_ref
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = self.dir.join("images").join(format!("{file}-{n}.tar"));
        write_oci_archive(&path, name_ref, layers)
    }

    /// `ctr images import` of an OCI archive into namespace `ns`, unpacked into the overlayfs
    /// snapshotter; checks that every layer's committed snapshot and its directory exist.
    pub fn import(&self, archive: &Path, ns: &str) -> Result<()> {
        let args: Vec<OsString> = vec![
            "images".into(),
            "import".into(),
            "--snapshotter".into(),
            SNAPSHOTTER.into(),
            archive.into(),
        ];
        self.ctr_os(ns, &args, CTR_TIMEOUT)?;
        let chains = chain_ids_in_archive(archive)?;
        ensure!(
            !chains.is_empty(),
            "no image manifest in {}",
            archive.display()
        );
        for chain in chains.iter().flatten() {
            let dir = self
                .snapshot_dir(ns, chain)
                .with_context(|| format!("after importing {}", archive.display()))?;
            ensure!(
                dir.join("fs").is_dir(),
                "layer snapshot {chain} was not unpacked: {} is missing\n{}",
                dir.join("fs").display(),
                self.log_tail_section()
            );
        }
        Ok(())
    }

    fn run_args(&self, ns: &str, detach: bool, image: &str, id: &str) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["run".into()];
        if detach {
            a.extend(["--detach".into(), "--null-io".into()]);
        } else {
            a.extend(["--rm".into(), "--fifo-dir".into(), self.fifo_dir().into()]);
        }
        a.extend([
            "--snapshotter".into(),
            SNAPSHOTTER.into(),
            "--runc-root".into(),
            self.runc_root().into(),
            "--cgroup".into(),
            format!("/{}/{ns}/{id}", self.cgroup_parent).into(),
            image.into(),
            id.into(),
        ]);
        a
    }

    /// `ctr run --rm IMAGE ID CMD...` in the default namespace: runs a container to its end and
    /// returns its stdout; a non-zero exit is an error. The container and its snapshot are
    /// deleted afterwards.
    pub fn run(&self, image: &str, container_id: &str, cmd: &[&str]) -> Result<String> {
        self.run_ns(DEFAULT_NAMESPACE, image, container_id, cmd)
    }

    /// [`Containerd::run`] in namespace `ns`.
    pub fn run_ns(&self, ns: &str, image: &str, id: &str, cmd: &[&str]) -> Result<String> {
        let mut args = self.run_args(ns, false, image, id);
        args.extend(cmd.iter().map(OsString::from));
        self.ctr_os(ns, &args, CTR_TIMEOUT)
    }

    /// `ctr run --detach --null-io IMAGE ID CMD...` in the default namespace: starts a
    /// container and returns once its task runs. Stop it with [`Containerd::remove_container`].
    pub fn run_detached(&self, image: &str, container_id: &str, cmd: &[&str]) -> Result<()> {
        self.run_detached_ns(DEFAULT_NAMESPACE, image, container_id, cmd)
    }

    /// [`Containerd::run_detached`] in namespace `ns`.
    pub fn run_detached_ns(&self, ns: &str, image: &str, id: &str, cmd: &[&str]) -> Result<()> {
        let mut args = self.run_args(ns, true, image, id);
        args.extend(cmd.iter().map(OsString::from));
        self.ctr_os(ns, &args, CTR_TIMEOUT).map(drop)
    }

    /// `ctr tasks exec` in a running container (default namespace); its stdout; a non-zero
    /// exit is an error.
    pub fn exec(&self, container_id: &str, cmd: &[&str]) -> Result<String> {
        self.exec_ns(DEFAULT_NAMESPACE, container_id, cmd)
    }

    /// [`Containerd::exec`] in namespace `ns`.
    pub fn exec_ns(&self, ns: &str, id: &str, cmd: &[&str]) -> Result<String> {
        let exec_id = format!("exec-{}", SEQ.fetch_add(1, Ordering::Relaxed));
        let mut args: Vec<OsString> = vec![
            "tasks".into(),
            "exec".into(),
            "--exec-id".into(),
            exec_id.into(),
            "--fifo-dir".into(),
            self.fifo_dir().into(),
            id.into(),
        ];
        args.extend(cmd.iter().map(OsString::from));
        self.ctr_os(ns, &args, CTR_TIMEOUT)
    }

    /// Kills a container's task if it has one (SIGKILL), deletes the task, then the container
    /// and its snapshot (default namespace).
    pub fn remove_container(&self, container_id: &str) -> Result<()> {
        self.remove_container_ns(DEFAULT_NAMESPACE, container_id)
    }

    /// [`Containerd::remove_container`] in namespace `ns`.
    pub fn remove_container_ns(&self, ns: &str, id: &str) -> Result<()> {
        let tasks = self.ctr_ns(ns, &["tasks", "ls", "--quiet"])?;
        if tasks.lines().any(|t| t.trim() == id) {
            self.ctr_ns(ns, &["tasks", "delete", "--force", id])?;
        }
        self.ctr_ns(ns, &["containers", "delete", id]).map(drop)
    }

    /// `ctr images rm NAME` (default namespace). Only the image record is sure to go: containerd
    /// usually collects its content and snapshots shortly after, asynchronously, but not
    /// reliably (see the module docs); call [`Containerd::gc`] to have them collected now.
    pub fn remove_image(&self, name: &str) -> Result<()> {
        self.remove_image_ns(DEFAULT_NAMESPACE, name)
    }

    /// [`Containerd::remove_image`] in namespace `ns`.
    pub fn remove_image_ns(&self, ns: &str, name: &str) -> Result<()> {
        self.ctr_ns(ns, &["images", "rm", name]).map(drop)
    }

    /// Runs containerd's garbage collector now and waits for it (all namespaces), including
    /// the snapshotters' cleanup: creates a lease and deletes it with `--sync`.
    pub fn gc(&self) -> Result<()> {
        let id = format!(
            "ctrwatch-gc-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        self.ctr(&["leases", "create", "--id", &id])?;
        self.ctr(&["leases", "delete", "--sync", &id]).map(drop)
    }

    /// `ctr snapshots --snapshotter overlayfs ls` in namespace `ns`, with each snapshot's
    /// directory (from the bolt databases, read without locks).
    pub fn snapshots(&self, ns: &str) -> Result<Vec<Snapshot>> {
        let out = self.ctr_ns(ns, &["snapshots", "--snapshotter", SNAPSHOTTER, "ls"])?;
        let mut list = parse_snapshot_list(&out)
            .with_context(|| format!("parsing `ctr snapshots ls`:\n{out}"))?;
        if list.is_empty() {
            return Ok(list);
        }
        let ids = self.snapshot_ids(ns)?;
        for s in &mut list {
            s.id = ids.get(&s.key).copied();
            s.dir = s.id.map(|id| self.snapshots_dir().join(id.to_string()));
        }
        Ok(list)
    }

    /// The directory `snapshots/<id>` of snapshot `key` in namespace `ns`.
    pub fn snapshot_dir(&self, ns: &str, key: &str) -> Result<PathBuf> {
        let ids = self.snapshot_ids(ns)?;
        let id = ids.get(key).with_context(|| {
            format!(
                "no overlayfs snapshot {key:?} in namespace {ns} (known: {:?})",
                ids.keys().collect::<Vec<_>>()
            )
        })?;
        Ok(self.snapshots_dir().join(id.to_string()))
    }

    /// Snapshot key -> overlay snapshot id for namespace `ns`: meta.db maps
    /// `v1/<ns>/snapshots/overlayfs/<key>/name` to the snapshotter's key, whose
    /// `v1/snapshots/<name>/id` (uvarint) in the snapshotter's metadata.db names the directory.
    pub fn snapshot_ids(&self, ns: &str) -> Result<HashMap<String, u64>> {
        let meta = bolt::Db::open(self.meta_db())
            .with_context(|| format!("reading {}", self.meta_db().display()))?;
        let sdb = bolt::Db::open(self.overlay_metadata_db())
            .with_context(|| format!("reading {}", self.overlay_metadata_db().display()))?;
        let mut ids = HashMap::new();
        let Some(bucket) =
            meta.bucket_path(&[b"v1", ns.as_bytes(), b"snapshots", SNAPSHOTTER.as_bytes()])?
        else {
            return Ok(ids);
        };
        for entry in bucket.iter() {
            let bolt::Entry::Bucket(key, b) = entry? else {
                continue;
            };
            let Some(name) = b.get(b"name")? else {
                continue;
            };
            let Some(sb) = sdb.bucket_path(&[b"v1", b"snapshots", name])? else {
                continue;
            };
            if let Some(id) = sb.get(b"id")?.and_then(uvarint) {
                ids.insert(String::from_utf8_lossy(key).into_owned(), id);
            }
        }
        Ok(ids)
    }

    /// Stops containerd and cleans up (as `Drop` does), reporting what could not be cleaned.
    pub fn stop(mut self) -> Result<()> {
        let problems = self.teardown();
        ensure!(
            problems.is_empty(),
            "containerd teardown: {}",
            problems.join("; ")
        );
        Ok(())
    }

    fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        let running = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if running {
            self.delete_all_tasks();
        }
        if let Some(mut child) = self.child.take()
            && let Err(e) = stop_child(&mut child)
        {
            problems.push(format!("stopping containerd: {e:#}"));
        }
        problems.extend(self.kill_leftovers());
        problems.extend(unmount_under(&self.dir));
        problems.extend(remove_cgroups(&self.cgroup_parent));
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            // One more round: something may have been mounted late.
            problems.extend(unmount_under(&self.dir));
            if let Err(e2) = fs::remove_dir_all(&self.dir) {
                problems.push(format!(
                    "removing {}: {e} / {e2}; mounts left: {:?}",
                    self.dir.display(),
                    mounts_under(&self.dir)
                ));
            }
        }
        if LIVE.fetch_sub(1, Ordering::SeqCst) == 1
            && RUN_CONTAINERD_PREEXISTED.load(Ordering::SeqCst) == 0
        {
            // Only empty directories go; a system containerd's are never touched.
            let _ = fs::remove_dir(SHIM_SOCKET_DIR);
            let _ = fs::remove_dir(RUN_CONTAINERD);
        }
        problems
    }

    /// Best effort: every task of every namespace, force-deleted through containerd, so that
    /// the shims unmount the rootfs and exit by themselves.
    fn delete_all_tasks(&self) {
        let t = Duration::from_secs(10);
        let Ok(nss) = self.ctr_os(DEFAULT_NAMESPACE, &os(&["namespaces", "ls", "-q"]), t) else {
            return;
        };
        for ns in nss.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Ok(tasks) = self.ctr_os(ns, &os(&["tasks", "ls", "-q"]), t) else {
                continue;
            };
            for task in tasks.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = self.ctr_os(ns, &os(&["tasks", "delete", "--force", task]), t);
            }
        }
    }

    /// SIGKILLs shims of ours still running (and removes their sockets) and processes left in
    /// our cgroups; waits for them to go.
    fn kill_leftovers(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut pids = Vec::new();
        for (pid, ns, id) in shims_of(&self.address) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            pids.push(pid);
            if let (Some(ns), Some(id)) = (ns, id) {
                let key = format!("{}/{ns}/{id}", self.address.display());
                let sock = Path::new(SHIM_SOCKET_DIR).join(hex(&Sha256::digest(key.as_bytes())));
                let _ = fs::remove_file(sock);
            }
        }
        for pid in cgroup_pids(&self.cgroup_parent) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            pids.push(pid);
        }
        // (30 s: SIGKILLed processes that hold mounts can take seconds to go when loaded.)
        let deadline = Instant::now() + Duration::from_secs(30);
        while pids.iter().any(|&p| alive(p)) {
            if Instant::now() > deadline {
                problems.push(format!(
                    "processes still alive after SIGKILL: {:?}",
                    pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        problems
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for p in self.teardown() {
            eprintln!("ctrwatch test harness: containerd teardown: {p}");
        }
    }
}

/// A layer of a test image: entries in order, written as a tar with root ownership and fixed
/// mtimes. Paths are relative to the image root (a leading `/` is ignored).
#[derive(Clone, Debug, Default)]
pub struct Layer {
    entries: Vec<LayerEntry>,
    compression: Compression,
}

/// How [`write_oci_archive`] stores a layer's blob (containerd 1.6 unpacks all three).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// `application/vnd.oci.image.layer.v1.tar+gzip`.
    #[default]
    Gzip,
    /// `application/vnd.oci.image.layer.v1.tar+zstd`.
    Zstd,
    /// `application/vnd.oci.image.layer.v1.tar`: the blob is the tar (its digest is the
    /// diffID).
    None,
}

impl Compression {
    /// The OCI media type of a layer stored this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => MT_LAYER_GZIP,
            Compression::Zstd => MT_LAYER_ZSTD,
            Compression::None => MT_LAYER_TAR,
        }
    }

    /// `raw` (a tar) compressed this way.
    pub fn compress(self, raw: &[u8]) -> Result<Vec<u8>> {
        match self {
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(raw).context("gzip")?;
                gz.finish().context("gzip")
            }
            Compression::Zstd => zstd::stream::encode_all(raw, 3).context("zstd"),
            Compression::None => Ok(raw.to_vec()),
        }
    }
}

/// One entry of a [`Layer`].
#[derive(Clone, Debug)]
pub enum LayerEntry {
    /// A directory.
    Dir {
        /// Its path in the layer, relative.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Written as PAX `SCHILY.xattr.<name>` records (containerd applies them as they are).
        xattrs: Vec<(String, Vec<u8>)>,
    },
    /// A regular file.
    File {
        /// Its path in the layer, relative.
        path: String,
        /// Its content.
        data: Vec<u8>,
        /// Permission bits.
        mode: u32,
        /// Written as PAX `SCHILY.xattr.<name>` records.
        xattrs: Vec<(String, Vec<u8>)>,
    },
    /// A symbolic link.
    Symlink {
        /// Its path in the layer, relative.
        path: String,
        /// What it points to, as written.
        target: String,
    },
    /// Deletes `path` of lower layers: an empty file `<parent>/.wh.<name>`.
    Whiteout {
        /// The path deleted, relative.
        path: String,
    },
    /// Hides the lower layers' content of directory `dir`: the directory and an empty file
    /// `<dir>/.wh..wh..opq`.
    Opaque {
        /// The directory made opaque, relative.
        dir: String,
    },
}

impl Layer {
    /// An empty layer.
    pub fn new() -> Layer {
        Layer::default()
    }

    /// The usual first layer: `/bin/busybox` (this machine's static busybox) with symlinks
    /// [`BUSYBOX_APPLETS`] to it in `/bin`, an executable `/pause` (a script that sleeps
    /// forever), `/tmp` (1777), `/etc/passwd`, `/etc/group` and empty `/dev`, `/proc`, `/sys`,
    /// `/root`.
    pub fn base() -> Result<Layer> {
        let data = fs::read(BUSYBOX).with_context(|| {
            format!("reading {BUSYBOX}: install Debian's busybox-static (`cargo xtask setup`)")
        })?;
        ensure!(
            is_static_elf(&data)?,
            "{BUSYBOX} is dynamically linked: images need a static one (Debian's busybox-static)"
        );
        let mut l = Layer::new()
            .dir("bin")
            .dir("dev")
            .dir("etc")
            .dir("proc")
            .dir("sys")
            .dir_mode("root", 0o700)
            .dir_mode("tmp", 0o1777)
            .file_mode("bin/busybox", data, 0o755);
        for applet in BUSYBOX_APPLETS {
            l = l.symlink(format!("bin/{applet}"), "busybox");
        }
        Ok(l.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
            .file("etc/group", "root:x:0:\n")
            .file_mode("pause", "#!/bin/sh\nwhile :; do sleep 3600; done\n", 0o755))
    }

    /// Adds an entry as it is.
    pub fn entry(mut self, e: LayerEntry) -> Layer {
        self.entries.push(e);
        self
    }
    /// A directory, mode 0755.
    pub fn dir(self, path: impl Into<String>) -> Layer {
        self.dir_mode(path, 0o755)
    }
    /// A directory with permission bits `mode`.
    pub fn dir_mode(self, path: impl Into<String>, mode: u32) -> Layer {
        self.entry(LayerEntry::Dir {
            path: path.into(),
            mode,
            xattrs: Vec::new(),
        })
    }
    /// A regular file, mode 0644.
    pub fn file(self, path: impl Into<String>, data: impl Into<Vec<u8>>) -> Layer {
        self.file_mode(path, data, 0o644)
    }
    /// A regular file with permission bits `mode`.
    pub fn file_mode(self, path: impl Into<String>, data: impl Into<Vec<u8>>, mode: u32) -> Layer {
        self.entry(LayerEntry::File {
            path: path.into(),
            data: data.into(),
            mode,
            xattrs: Vec::new(),
        })
    }
    /// A symbolic link `path` -> `target`.
    pub fn symlink(self, path: impl Into<String>, target: impl Into<String>) -> Layer {
        self.entry(LayerEntry::Symlink {
            path: path.into(),
            target: target.into(),
        })
    }
    /// Deletes `path` from the layers below (`.wh.` file).
    pub fn whiteout(self, path: impl Into<String>) -> Layer {
        self.entry(LayerEntry::Whiteout { path: path.into() })
    }
    /// Makes directory `dir` opaque (`.wh..wh..opq`); add its new content after this.
    pub fn opaque(self, dir: impl Into<String>) -> Layer {
        self.entry(LayerEntry::Opaque { dir: dir.into() })
    }

    /// The entries, in the order they are written to the tar.
    pub fn entries(&self) -> &[LayerEntry] {
        &self.entries
    }

    /// Stores the layer's blob compressed with `c` (default gzip).
    pub fn compressed(mut self, c: Compression) -> Layer {
        self.compression = c;
        self
    }

    /// How the layer's blob is stored.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The uncompressed layer tar.
    pub fn tar(&self) -> Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for e in &self.entries {
            match e {
                LayerEntry::Dir { path, mode, xattrs } => {
                    let p = clean_path(path)?;
                    append_pax_xattrs(&mut b, &p, xattrs)?;
                    let mut h = header(tar::EntryType::Directory, *mode, 0);
                    b.append_data(&mut h, &p, io::empty())
                        .with_context(|| format!("tar entry {p}"))?;
                }
                LayerEntry::File {
                    path,
                    data,
                    mode,
                    xattrs,
                } => {
                    let p = clean_path(path)?;
                    append_pax_xattrs(&mut b, &p, xattrs)?;
                    let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                    b.append_data(&mut h, &p, data.as_slice())
                        .with_context(|| format!("tar entry {p}"))?;
                }
                LayerEntry::Symlink { path, target } => {
                    let p = clean_path(path)?;
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                    b.append_link(&mut h, &p, target)
                        .with_context(|| format!("tar entry {p} -> {target}"))?;
                }
                LayerEntry::Whiteout { path } => {
                    let p = clean_path(path)?;
                    let (parent, name) = match p.rsplit_once('/') {
                        Some((d, n)) => (format!("{d}/"), n),
                        None => (String::new(), p.as_str()),
                    };
                    let mut h = header(tar::EntryType::Regular, 0o644, 0);
                    b.append_data(&mut h, format!("{parent}.wh.{name}"), io::empty())
                        .with_context(|| format!("whiteout for {p}"))?;
                }
                LayerEntry::Opaque { dir } => {
                    let p = clean_path(dir)?;
                    let mut h = header(tar::EntryType::Directory, 0o755, 0);
                    b.append_data(&mut h, &p, io::empty())
                        .with_context(|| format!("tar entry {p}"))?;
                    let mut h = header(tar::EntryType::Regular, 0o644, 0);
                    b.append_data(&mut h, format!("{p}/.wh..wh..opq"), io::empty())
                        .with_context(|| format!("opaque marker in {p}"))?;
                }
            }
        }
        b.into_inner().context("finishing the layer tar")
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(LAYER_MTIME);
    h.set_size(size);
    h
}

/// A PAX extended header carrying `SCHILY.xattr.*` records for the entry that follows.
fn append_pax_xattrs(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    xattrs: &[(String, Vec<u8>)],
) -> Result<()> {
    if xattrs.is_empty() {
        return Ok(());
    }
    let mut data = Vec::new();
    for (name, value) in xattrs {
        let mut rec = format!(" SCHILY.xattr.{name}=").into_bytes();
        rec.extend_from_slice(value);
        rec.push(b'\n');
        // The length field counts itself.
        let mut len = rec.len() + 1;
        while len != rec.len() + len.to_string().len() {
            len = rec.len() + len.to_string().len();
        }
        data.extend_from_slice(len.to_string().as_bytes());
        data.extend_from_slice(&rec);
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_mode(0o644);
    h.set_mtime(LAYER_MTIME);
    h.set_size(data.len() as u64);
    let name = path.rsplit('/').next().unwrap_or(path);
    b.append_data(&mut h, format!("PaxHeaders/{name}"), data.as_slice())
        .with_context(|| format!("PAX header for {path}"))?;
    Ok(())
}

/// Writes an OCI image layout archive (oci-layout, index.json, blobs/sha256/*) for `layers`
/// (base first: tars compressed as [`Layer::compressed`] says, gzip by default) at `path`. The image config has `rootfs.diff_ids`, Cmd
/// `/bin/sh` and `PATH=/bin`; index.json names the image `name_ref` through the annotations
/// `io.containerd.image.name` (what `ctr images import` uses, verbatim) and
/// `org.opencontainers.image.ref.name` (the tag). Deterministic: same input, same digests.
pub fn write_oci_archive(path: &Path, name_ref: &str, layers: &[Layer]) -> Result<BuiltImage> {
    ensure!(!name_ref.is_empty(), "image name is empty");
    ensure!(!layers.is_empty(), "an image needs at least one layer");
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_descs = Vec::new();
    let mut layer_digests = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let raw = layer.tar().with_context(|| format!("layer {i}"))?;
        diff_ids.push(sha256_digest(&raw));
        let blob = layer
            .compression
            .compress(&raw)
            .with_context(|| format!("layer {i}"))?;
        let digest = sha256_digest(&blob);
        layer_descs.push(json!({
            "mediaType": layer.compression.media_type(),
            "digest": digest,
            "size": blob.len(),
        }));
        layer_digests.push(digest.clone());
        // Identical layers (e.g. uncompressed) are one blob in the archive.
        if !blobs.iter().any(|(d, _)| *d == digest) {
            blobs.push((digest, blob));
        }
    }
    let history: Vec<Value> = (0..layers.len())
        .map(|i| json!({"created": "2023-11-14T22:13:20Z", "created_by": format!("ctrwatch tests: layer {i}")}))
        .collect();
    let config = serde_json::to_vec(&json!({
        "created": "2023-11-14T22:13:20Z",
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }))?;
    let config_digest = sha256_digest(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": layer_descs,
    }))?;
    let manifest_digest = sha256_digest(&manifest);
    let tag = match name_ref.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') && !repo.is_empty() => tag,
        _ => "latest",
    };
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": oci_arch(), "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name_ref,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))?;
    blobs.push((config_digest.clone(), config));
    blobs.push((manifest_digest.clone(), manifest));

    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("mkdir {}", parent.display()))?;
    }
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut b = tar::Builder::new(io::BufWriter::new(file));
    let mut add = |name: &str, kind: tar::EntryType, data: &[u8]| -> Result<()> {
        let mode = if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        };
        let mut h = header(kind, mode, data.len() as u64);
        b.append_data(&mut h, name, data)
            .with_context(|| format!("writing {name} into {}", path.display()))
    };
    add(
        "oci-layout",
        tar::EntryType::Regular,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    add("index.json", tar::EntryType::Regular, &index)?;
    add("blobs", tar::EntryType::Directory, &[])?;
    add("blobs/sha256", tar::EntryType::Directory, &[])?;
    for (digest, data) in &blobs {
        let hex = digest.trim_start_matches("sha256:");
        add(
            &format!("blobs/sha256/{hex}"),
            tar::EntryType::Regular,
            data,
        )?;
    }
    b.into_inner()
        .and_then(|mut w| w.flush())
        .with_context(|| format!("finishing {}", path.display()))?;
    Ok(BuiltImage {
        archive: path.to_path_buf(),
        name: name_ref.to_string(),
        manifest_digest,
        config_digest,
        layer_digests,
        chain_ids: chain_ids(&diff_ids),
        diff_ids,
    })
}

/// Snapshot keys of committed layers: `chain[0] = diff[0]`,
/// `chain[i] = sha256("<chain[i-1]> <diff[i]>")`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// For every image manifest of an OCI archive (for this platform), its layers' chain ids.
fn chain_ids_in_archive(archive: &Path) -> Result<Vec<Vec<String>>> {
    let file = fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut ar = tar::Archive::new(io::BufReader::new(file));
    for entry in ar
        .entries()
        .with_context(|| format!("reading {}", archive.display()))?
    {
        let mut entry = entry.with_context(|| format!("reading {}", archive.display()))?;
        // index.json, manifests and configs are small; layers are not needed here.
        if entry.header().entry_type() != tar::EntryType::Regular || entry.size() > 4 << 20 {
            continue;
        }
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        files.insert(name, data);
    }
    let blob = |digest: &str| -> Result<Value> {
        let name = format!("blobs/{}", digest.replacen(':', "/", 1));
        let data = files
            .get(&name)
            .with_context(|| format!("{name} missing in {}", archive.display()))?;
        serde_json::from_slice(data).with_context(|| format!("{name} in {}", archive.display()))
    };
    let index: Value = serde_json::from_slice(
        files
            .get("index.json")
            .with_context(|| format!("no index.json in {}", archive.display()))?,
    )?;
    let mut out = Vec::new();
    for m in index["manifests"].as_array().into_iter().flatten() {
        if m["mediaType"].as_str() != Some(MT_MANIFEST) {
            continue;
        }
        let plat = &m["platform"];
        if plat.is_object() && plat["architecture"].as_str() != Some(oci_arch()) {
            continue;
        }
        let digest = m["digest"].as_str().context("manifest without digest")?;
        let manifest = blob(digest)?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .context("manifest without config")?;
        let config = blob(config_digest)?;
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .context("config without rootfs.diff_ids")?
            .iter()
            .filter_map(|d| d.as_str().map(str::to_string))
            .collect();
        out.push(chain_ids(&diff_ids));
    }
    Ok(out)
}

/// Parses `ctr snapshots ls` (a tabwriter table `KEY PARENT KIND`; keys may contain spaces,
/// e.g. `extract-<n>-<x> sha256:...` while unpacking, so columns are cut at the header's
/// offsets).
fn parse_snapshot_list(out: &str) -> Result<Vec<Snapshot>> {
    let mut lines = out.lines();
    let Some(head) = lines.next() else {
        return Ok(Vec::new());
    };
    let p = head.find("PARENT").context("no PARENT column")?;
    let k = head.find("KIND").context("no KIND column")?;
    ensure!(
        head.starts_with("KEY") && p < k,
        "unexpected header {head:?}"
    );
    let mut list = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let (key, parent, kind) = match (line.get(..p), line.get(p..k), line.get(k..)) {
            (Some(a), Some(b), Some(c)) => (a.trim(), b.trim(), c.trim()),
            _ => bail!("unexpected line {line:?}"),
        };
        list.push(Snapshot {
            key: key.to_string(),
            parent: (!parent.is_empty()).then(|| parent.to_string()),
            kind: kind.to_string(),
            id: None,
            dir: None,
        });
    }
    Ok(list)
}

/// The value of extended attribute `name` of `path` (not following symlinks); `None` if it is
/// not set. Reading `trusted.*` needs CAP_SYS_ADMIN.
pub fn get_xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let p = cpath(path)?;
    let n = CString::new(name).context("xattr name with NUL")?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the length given.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODATA) {
            return Ok(None);
        }
        return Err(e).with_context(|| format!("getxattr {} {name}", path.display()));
    }
    buf.truncate(r as usize);
    Ok(Some(buf))
}

/// Whether `path` is an overlayfs whiteout: a character device 0:0.
pub fn is_whiteout(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

// ---- helpers ----

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn display_args(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with stdin from /dev/null, collecting stdout and stderr; kills it after `timeout`.
fn run_command(cmd: &mut Command, timeout: Duration) -> Result<CmdOutput> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn")?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("wait")? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(status) => Ok(CmdOutput {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "timed out after {timeout:?} (killed); stderr: {}; stdout: {}",
            String::from_utf8_lossy(&stderr).trim(),
            String::from_utf8_lossy(&stdout).trim()
        ),
    }
}

/// SIGTERM, wait up to [`STOP_TIMEOUT`], SIGKILL, wait.
fn stop_child(child: &mut Child) -> Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    // SAFETY: plain kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().context("SIGKILL")?;
    child.wait().context("wait after SIGKILL")?;
    bail!("containerd ignored SIGTERM for {STOP_TIMEOUT:?}; killed")
}

/// Running processes whose command line has `-address <address>` (containerd-shim-runc-v2),
/// with their `-namespace` and `-id`.
fn shims_of(address: &Path) -> Vec<(i32, Option<String>, Option<String>)> {
    let mut found = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return found;
    };
    let addr = address.as_os_str().as_bytes();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let value = |flag: &[u8]| {
            args.windows(2)
                .find(|w| w[0] == flag)
                .map(|w| String::from_utf8_lossy(w[1]).into_owned())
        };
        if args.windows(2).any(|w| w[0] == b"-address" && w[1] == addr) && alive(pid) {
            found.push((pid, value(b"-namespace"), value(b"-id")));
        }
    }
    found
}

/// Mount points of the cgroup hierarchies (v1 controllers and v2).
fn cgroup_mounts() -> Vec<PathBuf> {
    mountinfo()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.mount_point)
        .collect()
}

/// Every directory of cgroup `parent` in every hierarchy, deepest first.
fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(d.to_path_buf());
    }
    let mut out = Vec::new();
    for m in cgroup_mounts() {
        let d = m.join(parent);
        if d.is_dir() {
            walk(&d, &mut out);
        }
    }
    out
}

fn cgroup_pids(parent: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = cgroup_dirs(parent)
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// rmdir of our cgroups (children first), retrying while they drain (30 s at most: the
/// killed tasks leave them only once they are reaped, later on a loaded machine).
fn remove_cgroups(parent: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dirs = cgroup_dirs(parent);
        let mut failed = Vec::new();
        for d in &dirs {
            if let Err(e) = fs::remove_dir(d) {
                failed.push(format!("{}: {e}", d.display()));
            }
        }
        if failed.is_empty() {
            return Vec::new();
        }
        if Instant::now() > deadline {
            return vec![format!("cgroups left: {}", failed.join(", "))];
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

struct MountInfo {
    mount_point: PathBuf,
    fstype: String,
}

fn mountinfo() -> Vec<MountInfo> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some(MountInfo {
                mount_point: PathBuf::from(OsStr::from_bytes(&unescape_mount(mount_point))),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(d) = octal {
            out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Mount points at or below `dir`, in mount order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mountinfo()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Lazily unmounts everything at or below `dir`, newest first.
fn unmount_under(dir: &Path) -> Vec<String> {
    for _ in 0..5 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return Vec::new();
        }
        for m in mounts.iter().rev() {
            if let Ok(c) = cpath(m) {
                // SAFETY: a valid C string.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
    let left = mounts_under(dir);
    if left.is_empty() {
        Vec::new()
    } else {
        vec![format!("could not unmount {left:?}")]
    }
}

/// Checks that an overlay with an upper dir in `dir` mounts and that `trusted.*` xattrs can be
/// set there (the overlayfs snapshotter needs both).
fn check_overlay(dir: &Path) -> Result<()> {
    let t = dir.join("overlay-check");
    let result = (|| -> Result<()> {
        let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|n| t.join(n));
        for d in [&lower, &upper, &work, &merged] {
            fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        fs::write(lower.join("f"), "x")?;
        let opts = CString::new(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ))?;
        let target = cpath(&merged)?;
        let src = CString::new("overlay")?;
        // SAFETY: valid C strings.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error()).context("mount -t overlay");
        }
        let seen = merged.join("f").exists();
        // SAFETY: a valid C string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        ensure!(seen, "a lower file is not visible through the overlay");
        let u = cpath(&upper)?;
        let name = CString::new("trusted.overlay.opaque")?;
        // SAFETY: valid C strings and a 1-byte value.
        let r = unsafe { libc::lsetxattr(u.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        if r != 0 {
            return Err(io::Error::last_os_error()).context("setxattr trusted.overlay.opaque");
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&t);
    result.with_context(|| {
        format!(
            "overlayfs does not work with its upper dir in {} (containerd's overlayfs \
             snapshotter needs it): set CTRWATCH_CONTAINERD_TMP to a directory on ext4 or xfs",
            dir.display()
        )
    })
}

fn make_unique_dir(base: &Path) -> Result<PathBuf> {
    fs::create_dir_all(base).with_context(|| format!("mkdir {}", base.display()))?;
    for _ in 0..1000 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!(
            "ctrwatch-ctrd-{}-{}-{nanos:x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o711))
                    .with_context(|| format!("chmod {}", dir.display()))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("mkdir {}", dir.display())),
        }
    }
    bail!("could not create a unique directory in {}", base.display())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether an ELF file has no program interpreter (PT_INTERP), i.e. is statically linked.
fn is_static_elf(data: &[u8]) -> Result<bool> {
    ensure!(data.get(..4) == Some(b"\x7fELF"), "not an ELF file");
    ensure!(data.get(4) == Some(&2), "not a 64-bit ELF file");
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let phoff = u64_at(0x20).context("truncated ELF header")? as usize;
    let phentsize = u16_at(0x36).context("truncated ELF header")? as usize;
    let phnum = u16_at(0x38).context("truncated ELF header")? as usize;
    for i in 0..phnum {
        let p_type = u32_at(phoff + i * phentsize).context("truncated program headers")?;
        if p_type == 3 {
            return Ok(false);
        }
    }
    Ok(true)
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Go's `binary.Uvarint`.
fn uvarint(b: &[u8]) -> Option<u64> {
    let mut x = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        x |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(x);
        }
    }
    None
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("NUL in {}", p.display()))
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Layer paths: relative, no `..`, no empty components.
fn clean_path(p: &str) -> Result<String> {
    let rel = p.trim_start_matches('/').trim_end_matches('/');
    ensure!(!rel.is_empty(), "empty path in a layer");
    for c in Path::new(rel).components() {
        ensure!(
            matches!(c, Component::Normal(_)),
            "layer path {p:?} must be plain relative components"
        );
    }
    Ok(rel.to_string())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], sha256_digest(b"sha256:a sha256:b"));
    }

    #[test]
    fn snapshot_table_with_spaces_in_keys() {
        let out = "KEY                         PARENT      KIND      \n\
                   sha256:aaa                              Committed \n\
                   extract-1-x sha256:bbb      sha256:aaa  Active    \n";
        let l = parse_snapshot_list(out).unwrap_or_default();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].key, "sha256:aaa");
        assert_eq!(l[0].parent, None);
        assert_eq!(l[0].kind, "Committed");
        assert_eq!(l[1].key, "extract-1-x sha256:bbb");
        assert_eq!(l[1].parent.as_deref(), Some("sha256:aaa"));
        assert_eq!(l[1].kind, "Active");
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mount(r"/a\040b\134c"), b"/a b\\c");
    }

    #[test]
    fn uvarint_decodes() {
        assert_eq!(uvarint(&[5]), Some(5));
        assert_eq!(uvarint(&[0x96, 0x01]), Some(150));
        assert_eq!(uvarint(&[0x80]), None);
    }

    #[test]
    fn whiteout_and_opaque_entries() -> Result<()> {
        let l = Layer::new()
            .whiteout("etc/gone")
            .whiteout("/top")
            .opaque("data")
            .entry(LayerEntry::Dir {
                path: "x".into(),
                mode: 0o755,
                xattrs: vec![("user.k".into(), b"v".to_vec())],
            });
        let raw = l.tar()?;
        let mut ar = tar::Archive::new(raw.as_slice());
        let mut names = Vec::new();
        for e in ar.entries()? {
            let mut e = e?;
            let name = e.path()?.to_string_lossy().into_owned();
            if let Some(pax) = e.pax_extensions()? {
                for ext in pax {
                    let ext = ext?;
                    names.push(format!("{name}: {}={:?}", ext.key()?, ext.value_bytes()));
                }
            }
            names.push(name);
        }
        assert_eq!(
            names,
            [
                "etc/.wh.gone",
                ".wh.top",
                "data",
                "data/.wh..wh..opq",
                "x: SCHILY.xattr.user.k=[118]",
                "x"
            ]
        );
        Ok(())
    }
}
