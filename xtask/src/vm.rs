//! `cargo xtask vm-test`: ctrwatch on other kernels, in QEMU guests (docs/kernels.md).
//!
//! For each kernel: a Debian 12 guest root built with mmdebstrap (minbase, systemd, udev,
//! bpftool and one of Debian's cloud kernels) made into an ext4 image with `mkfs.ext4 -d`,
//! cached under `target/vm/images/` keyed by everything that goes into it; a small second disk
//! with the static `ctrwatch` (the package's build) and `xtask/vm/vm-test.sh`; a boot under
//! TCG (this machine's /dev/kvm cannot run QEMU) with systemd as PID 1, whose oneshot unit runs
//! the script and powers the guest off. The script writes PASS/FAIL lines and what the kernel
//! offers to the second disk, which is read back with debugfs once QEMU has exited (no mount,
//! no loop device). The root image is opened with `snapshot=on`: the cached image is never
//! written.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result};

use crate::{cmd, deb, guest_bench, target_dir, workspace_root};

/// The guest's release and where its packages come from (the GUEST has no network: only
/// mmdebstrap, on the host, downloads).
const SUITE: &str = "bookworm";
const MIRRORS: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];
/// Besides the kernel: systemd as PID 1 (the test runs from a unit, as ctrwatch does in
/// production), udev for /dev/vdb, bpftool to record which program types the kernel loads,
/// Debian's containerd and runc for the checks with a real containerd (its unit is masked:
/// the script starts it on its own root), busybox-static for that image's one layer.
const GUEST_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "bpftool",
    "containerd",
    "runc",
    "busybox-static",
];

/// The longest a download from Debian's archive may take (mmdebstrap building a guest root,
/// `apt-get update`): a stalled mirror must fail the step, not hang the run (docs/kernels.md).
/// A normal image build takes 2-4 minutes.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The unit, the boot wrapper and the test script: the first two are baked into the cached
/// image (and so in its key), the script goes on the per-run disk.
const UNIT: &str = include_str!("../vm/ctrwatch-vmtest.service");
const BOOT_SCRIPT: &str = include_str!("../vm/vmtest-boot.sh");
const TEST_SCRIPT: &str = include_str!("../vm/vm-test.sh");
/// The helpers every guest script sources (`say`, `pass`, `fail`, `since`, `wait_for`).
const LIB_SCRIPT: &str = include_str!("../vm/lib.sh");
/// The package scenario's script (`--scenario package`): run by the same boot wrapper, under
/// the same name on the test disk.
const PACKAGE_SCRIPT: &str = include_str!("../vm/vm-test-package.sh");
/// The no-bpf-lsm scenario's script (`--scenario no-bpf-lsm`).
const NO_BPF_LSM_SCRIPT: &str = include_str!("../vm/vm-test-no-bpf-lsm.sh");
/// The protect scenario's script (`--scenario protect`).
const PROTECT_SCRIPT: &str = include_str!("../vm/vm-test-protect.sh");
/// The protect-fallback scenario's script (`--scenario protect-fallback`).
const PROTECT_FALLBACK_SCRIPT: &str = include_str!("../vm/vm-test-protect-fallback.sh");
/// The bench scenario's script (`--scenario bench`, xtask/src/guest_bench.rs).
const BENCH_SCRIPT: &str = include_str!("../vm/vm-test-bench.sh");
/// What the guest must report as PASS in the bench scenario: each configuration ran and gave
/// numbers (the figures themselves are not checked: a benchmark, not a timed assertion).
const BENCH_CHECKS: &[&str] = &[
    "bench-calibrated",
    "bench-none",
    "bench-tracepoint",
    "bench-fentry",
    "bench-lsm",
];
/// The least time a bench guest gets, whatever `--timeout` says: its script has 20 minutes
/// (the boot wrapper's bound) and plans for 15.
const BENCH_MIN_TIMEOUT: Duration = Duration::from_secs(25 * 60);
/// What the guest must report as PASS in the protect-fallback scenario.
const PROTECT_FALLBACK_CHECKS: &[&str] = &[
    "protect-fallback-started",
    "protect-fallback-logged",
    "protect-fallback-status",
    "protect-fallback-not-blocked",
];
/// What the guest must report as PASS in the protect scenario.
const PROTECT_CHECKS: &[&str] = &[
    "enforce-watching",
    "enforce-status",
    "enforce-rm-denied",
    "enforce-setxattr-denied",
    "enforce-write-denied",
    "enforce-read-allowed",
    "enforce-trusted-allowed",
    "enforce-outside-allowed",
    "enforce-denials-recorded",
    "enforce-denied-alert",
    "released",
    "dry-run-watching",
    "dry-run-status",
    "dry-run-allows",
    "dry-run-would-deny-recorded",
    "dry-run-would-deny-alert",
    "k3s-trusted",
    "k3s-running-exe-trusted-before-enforce",
    "k3s-foreign-write-denied",
    "k3s-foreign-rm-denied",
    "k3s-blob-intact",
    "k3s-foreign-create-denied",
    "k3s-foreign-names-denied",
    "k3s-foreign-truncate-setattr-rmdir-denied",
    "k3s-run",
    "k3s-gc-unprotects-at-once",
    "k3s-rm-gc",
    "k3s-import",
    "k3s-removed-layer-unprotected",
    "k3s-rootfs-write-after-gc",
    "k3s-run-after-import",
    "k3s-upgrade-trusted",
    "k3s-upgrade-rm-gc-import",
    "k3s-denials-recorded",
    "k3s-replaced-exe-rm-gc",
];

/// The kernel's command line; the no-bpf-lsm scenario appends [`LSM_WITHOUT_BPF`].
const KERNEL_ARGS: &str = "root=/dev/vda rw console=ttyS0 quiet panic=-1";
/// Debian's default LSM list (CONFIG_LSM) without `bpf` (and without tomoyo, ipe, ima, evm,
/// which Debian's kernels build but do not need here): a kernel booted with it loads and
/// attaches LSM programs and never runs them.
const LSM_WITHOUT_BPF: &str = "lsm=lockdown,capability,landlock,yama,apparmor";

/// Changes when the way the image is made changes in a way the inputs above do not show.
const IMAGE_RECIPE_VERSION: u32 = 2;

/// What the guest must report as PASS (xtask/vm/vm-test.sh).
const DEFAULT_CHECKS: &[&str] = &[
    "probe",
    "probe-fentry",
    "probe-lsm",
    "watching",
    "fentry-attached",
    "lsm-logged",
    "stopped",
    "history-create",
    "history-unlink",
    "history-command",
    "xattr-once",
    "opaque-kernel-internal",
    "whiteout-kernel-internal",
    "copyup-dir-kernel-internal",
    "copyup-file-kernel-internal",
    "copyup-symlink-kernel-internal",
    "unlink-kernel-internal",
    "namespace-once",
    "tracepoint-watching",
    "tracepoint-stopped",
    "tracepoint-not-kernel-internal",
    "containerd-started",
    "containerd-import",
    "containerd-run",
    "containerd-rm-gc",
    "containerd-watch-stopped",
    "containerd-owner",
    "containerd-no-foreign",
];

/// What the guest must report as PASS in the package scenario (xtask/vm/vm-test-package.sh).
const PACKAGE_CHECKS: &[&str] = &[
    "dpkg-install",
    "active",
    "pinned",
    "restart-kept",
    "restart-adopted",
    "restart-history",
    "crash-kept",
    "crash-gap",
    "upgrade-kept",
    "stop-unpinned",
    "remove-unpinned",
];

/// What the guest must report as PASS in the no-bpf-lsm scenario
/// (xtask/vm/vm-test-no-bpf-lsm.sh).
const NO_BPF_LSM_CHECKS: &[&str] = &[
    "lsm-list-without-bpf",
    "probe",
    "probe-lsm-inactive",
    "probe-json-lsm-inactive",
    "probe-fentry",
];

/// What a boot tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The static binary alone: `probe`, `run` watching a root, the history of a file, then
    /// `run` watching a real containerd's root through import, run, image removal and GC
    /// (xtask/vm/vm-test.sh); writes what the kernel offers into docs/kernels.md.
    Default,
    /// The .deb (`cargo xtask deb`) installed with dpkg, its service under systemd: active,
    /// the pins kept over `systemctl restart` (every operation in the history), a crash and
    /// an upgrade, removed by `systemctl stop` and `dpkg -r` (xtask/vm/vm-test-package.sh).
    Package,
    /// The static binary on a kernel booted with `bpf` left out of `lsm=`
    /// ([`LSM_WITHOUT_BPF`]): `ctrwatch probe` must say BPF LSM is inactive, and why
    /// (xtask/vm/vm-test-no-bpf-lsm.sh).
    NoBpfLsm,
    /// Protect mode enforcing and in dry-run on a containerd-shaped root (xtask/vm/vm-test-protect.sh).
    Protect,
    /// `protect = "enforce"` on a kernel booted with `bpf` left out of `lsm=`: the daemon
    /// watches only and says so (log, status), nothing is blocked
    /// (xtask/vm/vm-test-protect-fallback.sh).
    ProtectFallback,
    /// The overhead of each backend (no watcher, tracepoints, fentry, LSM dry-run) on
    /// operation loops, as ratios (xtask/vm/vm-test-bench.sh); writes them into
    /// docs/benchmarks-guests.md. About 10 minutes per kernel; by hand, not in CI.
    Bench,
}

impl Scenario {
    fn script(self) -> &'static str {
        match self {
            Scenario::Default => TEST_SCRIPT,
            Scenario::Package => PACKAGE_SCRIPT,
            Scenario::NoBpfLsm => NO_BPF_LSM_SCRIPT,
            Scenario::Protect => PROTECT_SCRIPT,
            Scenario::ProtectFallback => PROTECT_FALLBACK_SCRIPT,
            Scenario::Bench => BENCH_SCRIPT,
        }
    }

    fn expected_checks(self) -> &'static [&'static str] {
        match self {
            Scenario::Default => DEFAULT_CHECKS,
            Scenario::Package => PACKAGE_CHECKS,
            Scenario::NoBpfLsm => NO_BPF_LSM_CHECKS,
            Scenario::Protect => PROTECT_CHECKS,
            Scenario::ProtectFallback => PROTECT_FALLBACK_CHECKS,
            Scenario::Bench => BENCH_CHECKS,
        }
    }

    /// The runs directory's name for `kernel`.
    fn run_name(self, kernel: Kernel) -> String {
        match self {
            Scenario::Default => kernel.label().to_string(),
            Scenario::Package => format!("{}-package", kernel.label()),
            Scenario::NoBpfLsm => format!("{}-no-bpf-lsm", kernel.label()),
            Scenario::Protect => format!("{}-protect", kernel.label()),
            Scenario::ProtectFallback => format!("{}-protect-fallback", kernel.label()),
            Scenario::Bench => format!("{}-bench", kernel.label()),
        }
    }

    /// The guest kernel's command line.
    fn kernel_args(self) -> String {
        match self {
            Scenario::Default | Scenario::Package | Scenario::Protect | Scenario::Bench => {
                KERNEL_ARGS.to_string()
            }
            Scenario::NoBpfLsm | Scenario::ProtectFallback => {
                format!("{KERNEL_ARGS} {LSM_WITHOUT_BPF}")
            }
        }
    }
}

/// A kernel the test bed boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernel {
    /// Debian 12's own kernel (linux-image-cloud-amd64).
    #[value(name = "6.1")]
    V6_1,
    /// Debian 12's newer kernel from bookworm-security (linux-image-6.12-cloud-amd64).
    #[value(name = "6.12")]
    V6_12,
    /// Both.
    All,
}

impl Kernel {
    /// The kernels `--kernel` names.
    pub fn expand(self) -> Vec<Kernel> {
        match self {
            Kernel::All => vec![Kernel::V6_1, Kernel::V6_12],
            k => vec![k],
        }
    }

    /// "6.1", "6.12" or "all", as `--kernel` spells it.
    pub fn label(self) -> &'static str {
        match self {
            Kernel::V6_1 => "6.1",
            Kernel::V6_12 => "6.12",
            Kernel::All => "all",
        }
    }

    /// Debian's meta-package that depends on the current kernel package of this series.
    fn meta_package(self) -> &'static str {
        match self {
            Kernel::V6_1 | Kernel::All => "linux-image-cloud-amd64",
            Kernel::V6_12 => "linux-image-6.12-cloud-amd64",
        }
    }
}

/// Options of `cargo xtask vm-test`.
pub struct VmTestOptions {
    pub kernels: Vec<Kernel>,
    pub scenario: Scenario,
    /// Per kernel, from QEMU's start to its exit.
    pub timeout: Duration,
    /// Build the guest image again even when one with the same key is cached.
    pub rebuild: bool,
    /// Rewrite this kernel's part of docs/kernels.md.
    pub write_docs: bool,
}

/// Runs the VM test on each kernel; Ok(true) when every check passed on every kernel.
pub fn vm_test(opts: &VmTestOptions) -> Result<bool> {
    // The images first: building one is mostly waiting for the archive, and a failure there
    // is known before the long build of the binary.
    let images = prepare_images(&opts.kernels, opts.rebuild);
    let images: Vec<&PreparedImage> = images.iter().collect();
    Ok(run_scenario(&images, opts.scenario, opts.timeout, opts.write_docs)?.passed())
}

/// A kernel's guest image, built or found in the cache (or why there is none).
pub type PreparedImage = (Kernel, Result<Image>);

/// The guest images of `kernels`, one after the other. mmdebstrap's output goes to a log file
/// beside the images (its tail is in the error when it fails), so that this can run on a
/// thread while `cargo xtask test` builds and lints.
pub fn prepare_images(kernels: &[Kernel], rebuild: bool) -> Vec<PreparedImage> {
    kernels
        .iter()
        .map(|&kernel| (kernel, image(kernel, rebuild)))
        .collect()
}

/// What one scenario gave on each kernel it ran on.
pub struct ScenarioOutcome {
    /// One line per kernel: verdict, kernel package, times and failures.
    pub summary: Vec<String>,
    /// Per kernel: every expected check passed.
    pub kernels_ok: Vec<(Kernel, bool)>,
    /// Expected checks that passed, and that did not, over every kernel.
    pub checks_passed: usize,
    pub checks_failed: usize,
}

impl ScenarioOutcome {
    /// Every kernel passed every check.
    pub fn passed(&self) -> bool {
        !self.kernels_ok.is_empty() && self.kernels_ok.iter().all(|(_, ok)| *ok)
    }
}

/// Boots each image with `scenario`'s payload and script, prints a summary and returns it.
/// An error only when the payload cannot be built; a guest that fails or cannot boot is a
/// failed kernel in the outcome.
pub fn run_scenario(
    images: &[&PreparedImage],
    scenario: Scenario,
    timeout: Duration,
    write_docs: bool,
) -> Result<ScenarioOutcome> {
    let build = deb::DebOptions::host_musl();
    crate::setup::rust_target(&build.target)?;
    // What goes onto the test disk: the binary, or the package (which builds it).
    let payload = match scenario {
        Scenario::Default | Scenario::NoBpfLsm | Scenario::Protect | Scenario::ProtectFallback => {
            Payload::Binary(deb::build_static_binary(&build)?)
        }
        Scenario::Package => Payload::Package(deb::build(&build)?),
        Scenario::Bench => Payload::BinaryAndLoops(
            deb::build_static_binary(&build)?,
            guest_bench::build_loops(&build.target)?,
        ),
    };
    let timeout = match scenario {
        Scenario::Bench => timeout.max(BENCH_MIN_TIMEOUT),
        _ => timeout,
    };

    let mut outcome = ScenarioOutcome {
        summary: Vec::new(),
        kernels_ok: Vec::new(),
        checks_passed: 0,
        checks_failed: 0,
    };
    for (kernel, image) in images.iter().map(|(k, i)| (*k, i)) {
        let run = image
            .as_ref()
            .map_err(|e| anyhow::anyhow!("no guest image: {e:#}"))
            .and_then(|image| {
                let load_before = guest_bench::host_load();
                let run = boot_and_test(kernel, image, &payload, scenario, timeout)?;
                if write_docs && scenario == Scenario::Bench {
                    guest_bench::write_docs(&guest_bench::GuestRun {
                        kernel,
                        kernel_package: &image.kernel_package,
                        out_dir: &run.run_dir.join("out"),
                        info: &run.info,
                        passed: run.passed(),
                        qemu_seconds: run.total_seconds,
                        load_before: &load_before,
                        load_after: &guest_bench::host_load(),
                    })?;
                }
                Ok((image, run))
            });
        // A guest kernel's oops here has been QEMU's emulation, not ctrwatch (seen once, on
        // 6.12: an int3 still in __alloc_pages after a static key's patching, in a page fault
        // of runc's, with no BPF program in the trace): such a failed run is booted once
        // more, said loudly. A second oops fails the kernel; an oops in a run that passed is
        // reported too. Not the bench scenario: it runs by hand and has written its figures
        // (marked failed) already.
        let mut oops_before = None;
        let run = match run {
            Ok((image, first))
                if scenario != Scenario::Bench
                    && !first.passed()
                    && first.kernel_trouble.is_some() =>
            {
                let line = first.kernel_trouble.clone().unwrap_or_default();
                let kept = first.run_dir.with_extension("oops");
                let _ = fs::remove_dir_all(&kept);
                let _ = fs::rename(&first.run_dir, &kept);
                eprintln!(
                    "vm-test {}: the guest's kernel reported `{line}` and the run failed; \
                     booting it once more (the failed run is in {})",
                    kernel.label(),
                    kept.display()
                );
                oops_before = Some(format!("{line} (kept in {})", kept.display()));
                boot_and_test(kernel, image, &payload, scenario, timeout).map(|run| (image, run))
            }
            other => other,
        };
        match run {
            Ok((image, run)) => {
                let ok = run.passed();
                outcome.kernels_ok.push((kernel, ok));
                let failed = run.failures().count();
                outcome.checks_failed += failed;
                outcome.checks_passed += run.expected.len().saturating_sub(failed);
                // docs/kernels.md's blocks are the default scenario's findings.
                if write_docs && scenario == Scenario::Default {
                    write_docs_of(image, &run)?;
                }
                outcome.summary.push(format!(
                    "  {} {:<5} {:?} {} (boot {:.0} s, test {:.0} s, total {:.0} s){}{}{}",
                    if ok { "ok    " } else { "FAILED" },
                    kernel.label(),
                    scenario,
                    image.kernel_package,
                    run.boot_seconds.unwrap_or(f64::NAN),
                    run.test_seconds.unwrap_or(f64::NAN),
                    run.total_seconds,
                    oops_before
                        .map(|line| format!("\n           second boot: the first failed with a guest kernel oops: {line}"))
                        .unwrap_or_default(),
                    run.kernel_trouble
                        .as_ref()
                        .map(|line| format!("\n           guest kernel oops in this run: {line}"))
                        .unwrap_or_default(),
                    run.failures()
                        .map(|f| format!("\n           {f}"))
                        .collect::<String>()
                ));
            }
            Err(e) => {
                outcome.kernels_ok.push((kernel, false));
                outcome.checks_failed += scenario.expected_checks().len();
                eprintln!("error: vm-test {}: {e:#}", kernel.label());
                outcome
                    .summary
                    .push(format!("  FAILED {:<5} {scenario:?} {e:#}", kernel.label()));
            }
        }
    }
    eprintln!("\ncargo xtask vm-test summary:");
    for line in &outcome.summary {
        eprintln!("{line}");
    }
    Ok(outcome)
}

/// What the test disk carries besides the script.
enum Payload {
    /// The static binary, as `ctrwatch`.
    Binary(PathBuf),
    /// The static binary, and the loop program (tests' `bench`) as `bench`.
    BinaryAndLoops(PathBuf, PathBuf),
    /// The package, as `ctrwatch.deb`.
    Package(PathBuf),
}

/// A cached guest image.
pub struct Image {
    dir: PathBuf,
    kernel: Kernel,
    /// e.g. linux-image-6.1.0-57-cloud-amd64.
    kernel_package: String,
    /// How long building it took (from its manifest: also for a cached image).
    build_seconds: BuildSeconds,
}

#[derive(Clone, Copy, Default)]
struct BuildSeconds {
    mmdebstrap: f64,
    mkfs: f64,
}

impl Image {
    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs.ext4")
    }
    fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
}

fn vm_dir() -> PathBuf {
    target_dir().join("vm")
}

/// The guest image for `kernel`: the cached one when its key matches, else a new one (and the
/// older images of this kernel are removed).
fn image(kernel: Kernel, rebuild: bool) -> Result<Image> {
    let kernel_package = current_kernel_package(kernel)?;
    match image_with(kernel, kernel_package.clone(), rebuild) {
        // This machine's package lists can name a kernel package the archive has since
        // replaced (a fresh machine whose lists are a few weeks old): mmdebstrap, which reads
        // the archive's current lists, cannot find it. Update ours and try once more, if that
        // names another package.
        Err(e) if e.downcast_ref::<MmdebstrapFailed>().is_some() => {
            eprintln!(
                "vm-test {}: mmdebstrap failed; updating this machine's package lists in case \
                 {kernel_package} is no longer in the archive",
                kernel.label()
            );
            cmd::run_with_timeout(Command::new("apt-get").arg("update"), DOWNLOAD_TIMEOUT)?;
            let now = current_kernel_package(kernel)?;
            if now == kernel_package {
                return Err(e);
            }
            eprintln!(
                "vm-test {}: the current kernel package is {now}",
                kernel.label()
            );
            image_with(kernel, now, rebuild)
        }
        other => other,
    }
}

/// mmdebstrap did not make the guest root; the log's tail says why.
#[derive(Debug)]
struct MmdebstrapFailed {
    /// What went wrong (its exit status, or the timeout).
    why: String,
    log: PathBuf,
    tail: String,
}

impl std::fmt::Display for MmdebstrapFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (its log: {}); the log ends with:\n{}",
            self.why,
            self.log.display(),
            self.tail
        )
    }
}

impl std::error::Error for MmdebstrapFailed {}

fn image_with(kernel: Kernel, kernel_package: String, rebuild: bool) -> Result<Image> {
    let mut packages: Vec<&str> = GUEST_PACKAGES.to_vec();
    packages.push(&kernel_package);
    let key = image_key(&packages);
    let images = vm_dir().join("images");
    let prefix = format!("debian12-{}-", kernel.label());
    let dir = images.join(format!("{prefix}{key:016x}"));
    let manifest = dir.join("manifest.txt");
    if manifest.exists() && !rebuild {
        eprintln!(
            "vm-test {}: cached guest image {}",
            kernel.label(),
            dir.display()
        );
        let build_seconds = read_build_seconds(&manifest)?;
        return Ok(Image {
            dir,
            kernel,
            kernel_package,
            build_seconds,
        });
    }

    fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;
    // Whatever a previous build of this kernel left: older keys, an interrupted build.
    for entry in fs::read_dir(&images)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&prefix) || name.starts_with(&format!(".building-{prefix}")) {
            eprintln!("vm-test: removing the old guest image {}", path.display());
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    let building = images.join(format!(".building-{prefix}{key:016x}"));
    fs::create_dir_all(&building)?;
    let root = building.join("root");

    // Its output goes to a log (it can run beside `cargo xtask test`'s build, whose output
    // it would otherwise interleave); kept beside the images until the next build.
    let log_path = images.join(format!("{prefix}mmdebstrap.log"));
    eprintln!(
        "vm-test {}: building the guest root with mmdebstrap ({}); log: {}",
        kernel.label(),
        packages.join(" "),
        log_path.display()
    );
    let start = Instant::now();
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut mmdebstrap = Command::new("mmdebstrap");
    mmdebstrap
        .args(["--variant=minbase", "--mode=root", "--format=directory"])
        .arg(format!("--include={}", packages.join(",")))
        .arg(SUITE)
        .arg(&root)
        .args(MIRRORS)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Err(e) = cmd::run_with_timeout(&mut mmdebstrap, DOWNLOAD_TIMEOUT) {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        return Err(MmdebstrapFailed {
            why: format!("{e:#}"),
            log: log_path,
            tail,
        }
        .into());
    }
    let mmdebstrap_seconds = start.elapsed().as_secs_f64();

    customize_root(&root)?;
    // The kernel and initrd QEMU boots, from the guest's own /boot.
    for (link, to) in [("vmlinuz", "vmlinuz"), ("initrd.img", "initrd.img")] {
        let from = root.join(link);
        let target = fs::read_link(&from).with_context(|| format!("reading {}", from.display()))?;
        let from = root.join(target);
        fs::copy(&from, building.join(to))
            .with_context(|| format!("copying {}", from.display()))?;
    }

    let start = Instant::now();
    // Room for the store, logs and what the test writes (QEMU's snapshot holds the writes).
    let used_mib = used_mib(&root)?;
    let size_mib = used_mib + used_mib / 4 + 256;
    cmd::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "ctrwatch-vm", "-d"])
            .arg(&root)
            .arg(building.join("rootfs.ext4"))
            .arg(format!("{size_mib}M")),
    )?;
    let mkfs_seconds = start.elapsed().as_secs_f64();
    fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;

    let build_seconds = BuildSeconds {
        mmdebstrap: mmdebstrap_seconds,
        mkfs: mkfs_seconds,
    };
    let mut text = String::new();
    let _ = writeln!(text, "# cargo xtask vm-test guest image (xtask/src/vm.rs)");
    let _ = writeln!(text, "suite: {SUITE}");
    let _ = writeln!(text, "packages: {}", packages.join(" "));
    let _ = writeln!(text, "mmdebstrap_seconds: {mmdebstrap_seconds:.1}");
    let _ = writeln!(text, "mkfs_seconds: {mkfs_seconds:.1}");
    let _ = writeln!(text, "image_mib: {size_mib}");
    fs::write(building.join("manifest.txt"), text)?;
    fs::rename(&building, &dir)
        .with_context(|| format!("renaming {} to {}", building.display(), dir.display()))?;
    eprintln!(
        "vm-test {}: guest image {} (mmdebstrap {mmdebstrap_seconds:.0} s, mkfs {mkfs_seconds:.0} s)",
        kernel.label(),
        dir.display()
    );
    Ok(Image {
        dir,
        kernel,
        kernel_package,
        build_seconds,
    })
}

/// The kernel package Debian's meta-package currently depends on, from this machine's package
/// lists (`apt-get update` first when they have none).
fn current_kernel_package(kernel: Kernel) -> Result<String> {
    let meta = kernel.meta_package();
    let ask = || {
        cmd::output(Command::new("apt-cache").args(["depends", "--important", meta]))
            .ok()
            .and_then(|out| kernel_dependency(&out))
    };
    if let Some(p) = ask() {
        return Ok(p);
    }
    eprintln!("vm-test: apt-cache does not know {meta}; updating the package lists");
    cmd::run_with_timeout(Command::new("apt-get").arg("update"), DOWNLOAD_TIMEOUT)?;
    ask().with_context(|| format!("apt-cache names no kernel package that {meta} depends on"))
}

/// `Depends: linux-image-6.1.0-57-cloud-amd64` in `apt-cache depends` output.
fn kernel_dependency(apt_cache_depends: &str) -> Option<String> {
    apt_cache_depends.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        (dep.starts_with("linux-image-") && !dep.contains(['<', '>', ' '])).then(|| dep.to_string())
    })
}

/// What identifies an image: change any of it and the image is built again.
fn image_key(packages: &[&str]) -> u64 {
    let mut text = format!("{IMAGE_RECIPE_VERSION}\n{SUITE}\n");
    for m in MIRRORS {
        text.push_str(m);
        text.push('\n');
    }
    text.push_str(&packages.join(" "));
    text.push('\n');
    text.push_str(UNIT);
    text.push_str(BOOT_SCRIPT);
    fnv1a64(text.as_bytes())
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The test unit and its wrapper; nothing that would compete with the test for the two
/// emulated CPUs (apt's and other timers) or talk on the serial console (getty).
fn customize_root(root: &Path) -> Result<()> {
    let write = |rel: &str, content: &str, mode: u32| -> Result<()> {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))
    };
    let symlink = |target: &str, rel: &str| -> Result<()> {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        if path.symlink_metadata().is_ok() {
            fs::remove_file(&path)?;
        }
        std::os::unix::fs::symlink(target, &path)
            .with_context(|| format!("linking {}", path.display()))
    };
    write("etc/systemd/system/ctrwatch-vmtest.service", UNIT, 0o644)?;
    write("usr/local/sbin/ctrwatch-vmtest-boot", BOOT_SCRIPT, 0o755)?;
    symlink(
        "/etc/systemd/system/ctrwatch-vmtest.service",
        "etc/systemd/system/multi-user.target.wants/ctrwatch-vmtest.service",
    )?;
    for unit in [
        "serial-getty@ttyS0.service",
        "getty@tty1.service",
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "dpkg-db-backup.timer",
        "e2scrub_all.timer",
        "fstrim.timer",
        // The script starts containerd itself, on its own root, once ctrwatch watches it.
        "containerd.service",
    ] {
        symlink("/dev/null", &format!("etc/systemd/system/{unit}"))?;
    }
    write("etc/hostname", "ctrwatch-vm\n", 0o644)?;
    write("etc/fstab", "/dev/vda / ext4 rw 0 1\n", 0o644)?;
    Ok(())
}

/// `du -sm`: the root's size in MiB.
fn used_mib(dir: &Path) -> Result<u64> {
    let out = cmd::output(Command::new("du").args(["-s", "-m", "-x"]).arg(dir))?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("`du` printed {out:?}"))
}

fn read_build_seconds(manifest: &Path) -> Result<BuildSeconds> {
    let text =
        fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let mut seconds = BuildSeconds::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(": ") else {
            continue;
        };
        let value = value.trim().parse().unwrap_or(f64::NAN);
        match key {
            "mmdebstrap_seconds" => seconds.mmdebstrap = value,
            "mkfs_seconds" => seconds.mkfs = value,
            _ => {}
        }
    }
    Ok(seconds)
}

/// One check's outcome, from the guest's results.txt.
#[derive(Debug, PartialEq)]
struct Check {
    name: String,
    passed: bool,
    detail: String,
}

/// What one boot found.
struct Run {
    /// The checks that must pass.
    expected: &'static [&'static str],
    checks: Vec<Check>,
    /// `INFO key value` lines.
    info: BTreeMap<String, String>,
    /// What `ctrwatch probe` printed.
    probe: String,
    /// What the script recorded of the kernel (kernel.txt).
    kernel_facts: String,
    /// QEMU's start to the test unit's start (host clock).
    boot_seconds: Option<f64>,
    /// The unit's start to its end.
    test_seconds: Option<f64>,
    /// The unit's end to QEMU's exit.
    poweroff_seconds: Option<f64>,
    total_seconds: f64,
    timed_out: bool,
    /// The first console line in which the guest's kernel reported an oops, a BUG or a panic.
    kernel_trouble: Option<String>,
    /// Where the console log and the guest's output are kept.
    run_dir: PathBuf,
}

impl Run {
    fn passed(&self) -> bool {
        !self.timed_out
            && self
                .expected
                .iter()
                .all(|name| self.checks.iter().any(|c| c.name == *name && c.passed))
    }

    /// Why it did not pass, one line each.
    fn failures(&self) -> impl Iterator<Item = String> + '_ {
        let timeout = self
            .timed_out
            .then(|| "QEMU did not exit within the timeout".to_string());
        let checks = self.expected.iter().filter_map(|name| {
            match self.checks.iter().find(|c| c.name == *name) {
                Some(c) if c.passed => None,
                Some(c) => Some(format!("FAIL {name} {}", c.detail)),
                None => Some(format!("no result for {name}")),
            }
        });
        timeout
            .into_iter()
            .chain(checks)
            .chain((!self.passed()).then(|| format!("see {}", self.run_dir.display())))
    }
}

/// Serial-console lines the host acts on (xtask/vm/vmtest-boot.sh).
enum Marker {
    Begin(Instant),
    End(Instant),
    KernelTrouble(String),
}

/// The guest's kernel reports an oops (`die()`'s `int3: 0000 [#1] ...`, `Oops: ...`, `general
/// protection fault: ...`), a BUG or a panic on this console line. The test script's own lines
/// (`ctrwatch-vmtest: ...`, which may quote anything) are not the kernel's.
fn kernel_trouble(line: &str) -> bool {
    if line.contains("ctrwatch-vmtest:") {
        return false;
    }
    // die() prints "%s: %04lx [#%d]".
    let die = line.find(" [#").is_some_and(|at| {
        let before = &line[..at];
        before
            .rsplit_once(": ")
            .is_some_and(|(_, code)| code.len() == 4 && code.chars().all(|c| c.is_ascii_hexdigit()))
    });
    die || line.contains("BUG: ")
        || line.contains("kernel BUG at ")
        || line.contains("Kernel panic - not syncing")
}

/// Boots the image with the test disk, waits for QEMU to exit (or kills it at the timeout) and
/// reads the results.
fn boot_and_test(
    kernel: Kernel,
    image: &Image,
    payload: &Payload,
    scenario: Scenario,
    timeout: Duration,
) -> Result<Run> {
    let run_dir = vm_dir().join("runs").join(scenario.run_name(kernel));
    if run_dir.exists() {
        fs::remove_dir_all(&run_dir).with_context(|| format!("removing {}", run_dir.display()))?;
    }
    let stage = run_dir.join("disk");
    fs::create_dir_all(&stage)?;
    let files: Vec<(&PathBuf, &str)> = match payload {
        Payload::Binary(path) => vec![(path, "ctrwatch")],
        Payload::BinaryAndLoops(path, loops) => vec![(path, "ctrwatch"), (loops, "bench")],
        Payload::Package(path) => vec![(path, "ctrwatch.deb")],
    };
    for (from, name) in files {
        fs::copy(from, stage.join(name)).with_context(|| format!("copying {}", from.display()))?;
    }
    fs::write(stage.join("vm-test.sh"), scenario.script())?;
    fs::set_permissions(stage.join("vm-test.sh"), fs::Permissions::from_mode(0o755))?;
    fs::write(stage.join("lib.sh"), LIB_SCRIPT)?;
    let disk = run_dir.join("disk.ext4");
    let disk_mib = used_mib(&stage)? + 64;
    cmd::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "ctrwatch-test", "-d"])
            .arg(&stage)
            .arg(&disk)
            .arg(format!("{disk_mib}M")),
    )?;
    fs::remove_dir_all(&stage)?;

    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-machine", "q35", "-accel", "tcg", "-m", "2048", "-smp", "2",
    ])
    .arg("-kernel")
    .arg(image.vmlinuz())
    .arg("-initrd")
    .arg(image.initrd())
    // panic=-1 with -no-reboot: a guest that panics ends QEMU at once.
    .arg("-append")
    .arg(scenario.kernel_args())
    .args(["-nographic", "-nic", "none", "-no-reboot"])
    .arg("-drive")
    .arg(drive_arg(&image.rootfs(), true))
    .arg("-drive")
    .arg(drive_arg(&disk, false))
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    eprintln!("+ {}", cmd::display(&qemu));
    let start = Instant::now();
    let mut child = qemu.spawn().context("could not start qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("QEMU's stdout")?;
    let console_path = run_dir.join("console.log");
    let mut console = fs::File::create(&console_path)
        .with_context(|| format!("creating {}", console_path.display()))?;
    let (markers, marker_rx) = mpsc::channel();
    let label = kernel.label();
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match lines.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = printable(&String::from_utf8_lossy(&buf));
            let at = start.elapsed().as_secs_f64();
            let _ = writeln!(console, "{at:7.1} {line}");
            eprintln!("[vm {label} {at:6.1}s] {line}");
            if line.contains("ctrwatch-vmtest: begin") {
                let _ = markers.send(Marker::Begin(Instant::now()));
            } else if line.contains("ctrwatch-vmtest: end") {
                let _ = markers.send(Marker::End(Instant::now()));
            } else if kernel_trouble(&line) {
                let _ = markers.send(Marker::KernelTrouble(line.clone()));
            }
        }
    });

    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for QEMU")? {
            break Some(status);
        }
        if start.elapsed() > timeout {
            eprintln!(
                "vm-test {label}: no power-off within {} s, stopping QEMU",
                timeout.as_secs()
            );
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let end = Instant::now();
    let _ = reader.join();
    let (mut begin, mut unit_end, mut kernel_trouble) = (None, None, None);
    for marker in marker_rx.try_iter() {
        match marker {
            Marker::Begin(at) => begin = Some(at),
            Marker::End(at) => unit_end = Some(at),
            Marker::KernelTrouble(line) => {
                kernel_trouble.get_or_insert(line);
            }
        }
    }
    if let Some(status) = status
        && !status.success()
    {
        eprintln!("vm-test {label}: QEMU exited with {status}");
    }

    // The guest's out/ directory, read from the disk image without mounting it.
    // debugfs exits with 0 whatever happened: what it left tells.
    let out = run_dir.join("out");
    let dumped = cmd::output(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("rdump /out {}", run_dir.display()))
            .arg(&disk),
    );
    if let Err(e) = &dumped {
        eprintln!("vm-test {label}: reading the test disk: {e:#}");
    }
    if !out.join("results.txt").is_file() {
        eprintln!(
            "vm-test {label}: the guest left no out/results.txt on the test disk (see {})",
            console_path.display()
        );
    }
    fs::remove_file(&disk).with_context(|| format!("removing {}", disk.display()))?;
    let read = |name: &str| fs::read_to_string(out.join(name)).unwrap_or_default();
    let (checks, info) = parse_results(&read("results.txt"));
    let secs = |from: Instant, to: Instant| to.duration_since(from).as_secs_f64();
    Ok(Run {
        expected: scenario.expected_checks(),
        checks,
        info,
        probe: read("probe.txt"),
        kernel_facts: read("kernel.txt"),
        boot_seconds: begin.map(|b| secs(start, b)),
        test_seconds: begin.zip(unit_end).map(|(b, e)| secs(b, e)),
        poweroff_seconds: unit_end.map(|e| secs(e, end)),
        total_seconds: secs(start, end),
        timed_out,
        kernel_trouble,
        run_dir,
    })
}

/// A `-drive` argument; QEMU's option syntax doubles commas in file names.
fn drive_arg(path: &Path, snapshot: bool) -> String {
    let file = path.display().to_string().replace(',', ",,");
    let mut arg = format!("file={file},format=raw,if=virtio");
    if snapshot {
        arg.push_str(",snapshot=on");
    }
    arg
}

/// The console line without terminal control sequences (SeaBIOS clears the screen).
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.trim_end().chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-byte, or ESC and one character.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

/// `PASS name detail`, `FAIL name detail`, `INFO key value` lines.
fn parse_results(text: &str) -> (Vec<Check>, BTreeMap<String, String>) {
    let mut checks = Vec::new();
    let mut info = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.trim().splitn(3, ' ');
        let (Some(kind), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        let rest = parts.next().unwrap_or("").to_string();
        match kind {
            "PASS" | "FAIL" => checks.push(Check {
                name: name.to_string(),
                passed: kind == "PASS",
                detail: rest,
            }),
            "INFO" => {
                info.insert(name.to_string(), rest);
            }
            _ => {}
        }
    }
    // A check reported twice counts as failed if either said so.
    let mut merged: Vec<Check> = Vec::new();
    for c in checks {
        match merged.iter_mut().find(|m| m.name == c.name) {
            Some(m) if !c.passed => *m = c,
            Some(_) => {}
            None => merged.push(c),
        }
    }
    (merged, info)
}

/// docs/kernels.md's generated part holds one block per kernel, between these markers; a run
/// rewrites the blocks of the kernels it ran and keeps the others.
const DOCS_BEGIN: &str = "<!-- BEGIN generated by cargo xtask vm-test -->";
const DOCS_END: &str = "<!-- END generated by cargo xtask vm-test -->";

pub(crate) fn block_markers(kernel: Kernel) -> (String, String) {
    (
        format!("<!-- vm-test kernel {} -->", kernel.label()),
        format!("<!-- /vm-test kernel {} -->", kernel.label()),
    )
}

fn write_docs_of(image: &Image, run: &Run) -> Result<()> {
    let path = workspace_root().join("docs/kernels.md");
    let doc = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let block = docs_block(image, run);
    let doc = replace_block(&doc, image.kernel, &block)
        .with_context(|| format!("{} lacks the generated section's markers", path.display()))?;
    fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("vm-test {}: wrote {}", image.kernel.label(), path.display());
    Ok(())
}

/// `doc` with `kernel`'s block replaced by `block` (or added, blocks in the order of
/// `Kernel::All.expand()`). None when the generated section is missing.
pub(crate) fn replace_block(doc: &str, kernel: Kernel, block: &str) -> Option<String> {
    let begin = doc.find(DOCS_BEGIN)? + DOCS_BEGIN.len();
    let end = begin + doc[begin..].find(DOCS_END)?;
    let section = &doc[begin..end];
    let mut blocks = Vec::new();
    for k in Kernel::All.expand() {
        let (open, close) = block_markers(k);
        if k == kernel {
            blocks.push(block.trim().to_string());
        } else if let Some(start) = section.find(&open)
            && let Some(len) = section[start..].find(&close)
        {
            blocks.push(section[start..start + len + close.len()].trim().to_string());
        }
    }
    Some(format!(
        "{}\n\n{}\n\n{}",
        &doc[..begin],
        blocks.join("\n\n"),
        &doc[end..]
    ))
}

fn docs_block(image: &Image, run: &Run) -> String {
    let kernel = image.kernel;
    let (open, close) = block_markers(kernel);
    let facts = KernelFacts::parse(&run.kernel_facts, &run.probe);
    let date = utc_date(SystemTime::now());
    let passed = DEFAULT_CHECKS
        .iter()
        .filter(|n| run.checks.iter().any(|c| c.name == **n && c.passed))
        .count();
    let captured = if run.passed() { "yes" } else { "NO" };
    let secs = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.0} s"));
    let info_secs = |key: &str| {
        run.info
            .get(key)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or("-".to_string(), |s| format!("{s:.0} s"))
    };
    let mut b = String::new();
    let _ = writeln!(b, "{open}");
    let _ = writeln!(
        b,
        "### {} ({})\n",
        facts.release.as_deref().unwrap_or("kernel not reported"),
        image.kernel_package
    );
    let _ = writeln!(
        b,
        "Run {date} with `cargo xtask vm-test --kernel {}`: **ctrwatch captured: {captured}** \
         ({passed} of {} checks passed{}).\n",
        kernel.label(),
        DEFAULT_CHECKS.len(),
        if run.timed_out { ", timed out" } else { "" }
    );
    let _ = writeln!(b, "| | |\n|---|---|");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(b, "| {k} | {} |", v.replace('|', "\\|"));
    };
    row(
        "syscall tracepoints",
        facts.probe_says("syscall tracepoints"),
    );
    row("BTF (`/sys/kernel/btf/vmlinux`)", facts.probe_says("BTF"));
    row(
        "raw tracepoints (`raw_tracepoint`)",
        facts.program_type("raw_tracepoint"),
    );
    row(
        "BTF tracepoints and fentry (program type `tracing`)",
        format!(
            "{}; {}",
            facts.program_type("tracing"),
            facts.config_list(&["FUNCTION_TRACER", "DYNAMIC_FTRACE_WITH_DIRECT_CALLS"])
        ),
    );
    row(
        "ctrwatch's fentry probe and hooks",
        format!(
            "{}; {}",
            run.probe
                .lines()
                .find_map(|l| l.strip_prefix("hook family fentry: "))
                .unwrap_or("? (not in probe's output)"),
            run.checks
                .iter()
                .find(|c| c.name == "fentry-attached")
                .map_or("fentry-attached -".to_string(), |c| {
                    format!(
                        "{}: {}",
                        if c.passed { "attached" } else { "NOT attached" },
                        c.detail
                    )
                })
        ),
    );
    row(
        "ctrwatch's LSM probe",
        format!(
            "{}; {}",
            run.probe
                .lines()
                .find_map(|l| l.strip_prefix("hook family lsm: "))
                .unwrap_or("? (not in probe's output)"),
            run.checks.iter().find(|c| c.name == "lsm-logged").map_or(
                "lsm-logged -".to_string(),
                |c| {
                    format!(
                        "{}: {}",
                        if c.passed {
                            "start log"
                        } else {
                            "NOT in the start log"
                        },
                        c.detail
                    )
                }
            )
        ),
    );
    row("kprobes", facts.probe_says("kprobes"));
    row(
        "BPF LSM",
        format!(
            "active: {}; program type `lsm`: {}; {}; LSMs: `{}`",
            facts.probe_says("BPF LSM active"),
            facts.program_type("lsm"),
            facts.config_list(&["BPF_LSM"]),
            facts.lsm.as_deref().unwrap_or("?")
        ),
    );
    row(
        "ctrwatch run",
        run.checks
            .iter()
            .find(|c| c.name == "watching")
            .map_or("-".to_string(), |c| {
                format!("{}: {}", if c.passed { "ok" } else { "FAIL" }, c.detail)
            }),
    );
    row(
        "checks",
        DEFAULT_CHECKS
            .iter()
            .map(|n| match run.checks.iter().find(|c| c.name == *n) {
                Some(c) if c.passed => format!("{n} ok"),
                Some(_) => format!("{n} FAIL"),
                None => format!("{n} -"),
            })
            .collect::<Vec<_>>()
            .join(", "),
    );
    row(
        "times (TCG, 2 vCPUs)",
        format!(
            "image: mmdebstrap {:.0} s, mkfs {:.0} s; boot to the test unit {}, test {} \
             (of which `probe` {}, `run` until watching {}), power-off {}, QEMU in all {:.0} s",
            image.build_seconds.mmdebstrap,
            image.build_seconds.mkfs,
            secs(run.boot_seconds),
            secs(run.test_seconds),
            info_secs("probe_seconds"),
            info_secs("start_seconds"),
            secs(run.poweroff_seconds),
            run.total_seconds
        ),
    );
    let _ = writeln!(
        b,
        "\n`ctrwatch probe`:\n\n```text\n{}\n```",
        run.probe.trim()
    );
    let _ = writeln!(b, "{close}");
    b
}

/// What vm-test.sh's kernel.txt and `ctrwatch probe` say.
struct KernelFacts {
    release: Option<String>,
    lsm: Option<String>,
    config: BTreeMap<String, String>,
    /// bpftool's `eBPF program_type X is available` / `is NOT available`.
    program_types: BTreeMap<String, bool>,
    /// The probe's summary line, `key value` pairs separated by `, `.
    probe_summary: BTreeMap<String, String>,
}

impl KernelFacts {
    fn parse(kernel_txt: &str, probe: &str) -> KernelFacts {
        let mut facts = KernelFacts {
            release: None,
            lsm: None,
            config: BTreeMap::new(),
            program_types: BTreeMap::new(),
            probe_summary: BTreeMap::new(),
        };
        for line in kernel_txt.lines() {
            if let Some(r) = line.strip_prefix("release: ") {
                facts.release = Some(r.trim().to_string());
            } else if let Some(l) = line.strip_prefix("lsm: ") {
                facts.lsm = Some(l.trim().to_string());
            } else if let Some(c) = line.strip_prefix("config: CONFIG_")
                && let Some((k, v)) = c.split_once('=')
            {
                facts.config.insert(k.to_string(), v.trim().to_string());
            } else if let Some(p) = line.strip_prefix("bpftool: ")
                && let Some(rest) = p.split("program_type ").nth(1)
                && let Some((name, verdict)) = rest.split_once(' ')
            {
                facts
                    .program_types
                    .insert(name.to_string(), !verdict.contains("NOT"));
            }
        }
        // "kernel 6.1.0-57-cloud-amd64, tracefs /sys/kernel/tracing, syscall tracepoints yes, ..."
        if let Some(summary) = probe.lines().next() {
            for part in summary.split(", ") {
                if let Some((key, value)) = part.rsplit_once(' ') {
                    facts
                        .probe_summary
                        .insert(key.to_string(), value.to_string());
                }
            }
        }
        facts
    }

    fn probe_says(&self, key: &str) -> String {
        self.probe_summary
            .get(key)
            .cloned()
            .unwrap_or_else(|| "? (not in probe's output)".to_string())
    }

    fn program_type(&self, name: &str) -> String {
        match self.program_types.get(name) {
            Some(true) => "loads".to_string(),
            Some(false) => "does not load".to_string(),
            None => "?".to_string(),
        }
    }

    fn config_list(&self, names: &[&str]) -> String {
        names
            .iter()
            .map(|n| {
                format!(
                    "CONFIG_{n}={}",
                    self.config.get(*n).map_or("n", |v| v.as_str())
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `2026-12-07` (UTC): the date part of humantime's RFC 3339 form.
pub(crate) fn utc_date(now: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    stamp.get(..10).unwrap_or(&stamp).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_package_from_apt_cache() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n";
        assert_eq!(
            kernel_dependency(out).as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        assert_eq!(kernel_dependency("linux-image-cloud-amd64\n"), None);
    }

    #[test]
    fn kernel_oopses_are_told_from_other_lines() {
        for oops in [
            "[  812.345678] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
            "[   12.000001] int3: 0000 [#1] SMP NOPTI",
            "general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP",
            "BUG: kernel NULL pointer dereference, address: 0000000000000008",
            "kernel BUG at mm/page_alloc.c:123!",
            "Kernel panic - not syncing: Fatal exception",
        ] {
            assert!(kernel_trouble(oops), "{oops}");
        }
        for other in [
            "ctrwatch-vmtest: FAIL x BUG: kernel NULL pointer dereference",
            "[  OK  ] Started containerd.service - containerd container runtime.",
            "ctrwatch: watching 1 root(s) [#1]",
            "Welcome to Debian GNU/Linux 12 (bookworm)!",
        ] {
            assert!(!kernel_trouble(other), "{other}");
        }
    }

    #[test]
    fn results_lines() {
        let (checks, info) = parse_results(
            "PASS probe\nFAIL watching no line\nINFO start_seconds 41.5\nPASS watching\njunk\n",
        );
        assert_eq!(checks.len(), 2);
        assert!(checks[0].passed);
        assert_eq!(checks[1].name, "watching");
        assert!(!checks[1].passed, "a FAIL is not undone by a later PASS");
        assert_eq!(info.get("start_seconds").map(String::as_str), Some("41.5"));
    }

    #[test]
    fn a_run_passes_only_with_every_check_passed() {
        let run = |results: &str, timed_out| {
            let (checks, info) = parse_results(results);
            Run {
                expected: DEFAULT_CHECKS,
                checks,
                info,
                probe: String::new(),
                kernel_facts: String::new(),
                boot_seconds: None,
                test_seconds: None,
                poweroff_seconds: None,
                total_seconds: 0.0,
                timed_out,
                kernel_trouble: None,
                run_dir: PathBuf::from("/nonexistent"),
            }
        };
        let all: String = DEFAULT_CHECKS
            .iter()
            .map(|c| format!("PASS {c}\n"))
            .collect();
        assert!(run(&all, false).passed());
        assert!(!run(&all, true).passed(), "a timeout fails the run");
        let missing = all.replace("PASS history-command\n", "");
        let r = run(&missing, false);
        assert!(!r.passed(), "a check without a result fails the run");
        assert!(r.failures().any(|f| f == "no result for history-command"));
        assert!(!run(&format!("{all}FAIL stopped exit status 1\n"), false).passed());
        assert!(!run("", false).passed(), "no results.txt fails the run");
        // The package scenario's checks are its own.
        let mut package = run(&all, false);
        package.expected = Scenario::Package.expected_checks();
        assert!(
            !package.passed(),
            "the default checks do not pass the package scenario"
        );
    }

    #[test]
    fn docs_blocks_are_replaced_one_kernel_at_a_time() {
        let doc = format!("intro\n{DOCS_BEGIN}\nold\n{DOCS_END}\nafter\n");
        let b61 = "<!-- vm-test kernel 6.1 -->\nA\n<!-- /vm-test kernel 6.1 -->";
        let b612 = "<!-- vm-test kernel 6.12 -->\nB\n<!-- /vm-test kernel 6.12 -->";
        let doc = replace_block(&doc, Kernel::V6_12, b612).expect("markers");
        let doc = replace_block(&doc, Kernel::V6_1, b61).expect("markers");
        assert!(doc.starts_with("intro\n"));
        assert!(doc.ends_with(&format!("{DOCS_END}\nafter\n")));
        let a = doc.find("\nA\n").expect("6.1 block");
        let bb = doc.find("\nB\n").expect("6.12 block");
        assert!(a < bb, "6.1 before 6.12:\n{doc}");
        assert!(!doc.contains("old"));
        let again = replace_block(&doc, Kernel::V6_1, b61).expect("markers");
        assert_eq!(again, doc, "rewriting a block changes nothing else");
        assert!(replace_block("no markers", Kernel::V6_1, b61).is_none());
    }

    #[test]
    fn facts_from_the_guest() {
        let facts = KernelFacts::parse(
            "release: 6.1.0-57-cloud-amd64\nlsm: lockdown,capability,bpf\n\
             config: CONFIG_BPF_LSM=y\n\
             bpftool: eBPF program_type tracing is available\n\
             bpftool: eBPF program_type lsm is NOT available\n",
            "kernel 6.1.0-57-cloud-amd64, tracefs /sys/kernel/tracing, syscall tracepoints yes, \
             BTF yes, kprobes yes, BPF LSM active no, rename target hooks none\nbackend: x\n",
        );
        assert_eq!(facts.program_type("tracing"), "loads");
        assert_eq!(facts.program_type("lsm"), "does not load");
        assert_eq!(facts.probe_says("syscall tracepoints"), "yes");
        assert_eq!(facts.probe_says("BPF LSM active"), "no");
        assert_eq!(
            facts.config_list(&["BPF_LSM", "KPROBES"]),
            "CONFIG_BPF_LSM=y, CONFIG_KPROBES=n"
        );
    }

    #[test]
    fn dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_601_600);
        assert_eq!(utc_date(t), "2026-12-07");
        assert_eq!(utc_date(SystemTime::UNIX_EPOCH), "1970-01-01");
    }

    #[test]
    fn console_lines_lose_control_sequences() {
        assert_eq!(
            printable("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS (version 1.16.2)\r\n"),
            "SeaBIOS (version 1.16.2)"
        );
    }
}
