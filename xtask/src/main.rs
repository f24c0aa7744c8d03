//! `cargo xtask`: sets up the machine, builds, runs and tests ctrwatch.
//!
//! Every subcommand first runs `setup`, which installs only what is missing, so a fresh Debian 12
//! machine with rustup needs nothing but `cargo xtask run` or `cargo xtask test`.

mod cmd;
mod daemon_run;
mod deb;
mod footprint;
mod guest_bench;
mod previous;
mod setup;
mod startup;
mod vm;

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

/// Workspace members that cannot be built for the host: the eBPF crate is built for the BPF
/// target by watcher/build.rs (aya-build), so `--workspace` leaves it out.
const HOST_EXCLUDE: &[&str] = &["watcher-ebpf"];

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, build, run and test ctrwatch",
    long_about = "Set up, build, run and test ctrwatch.\n\n\
        Every subcommand first runs `setup`, which installs what is missing (Debian packages, \
        the nightly toolchain with rust-src, bpf-linker) and nothing else.\n\n\
        Start with:\n  cargo xtask run     # build and watch containerd's storage (as root)\n  \
        cargo xtask test    # run all the tests (as root)"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing needs, only what is missing.
    ///
    /// Debian packages (LLVM 22 for bpf-linker, bpftool, containerd, runc, umoci,
    /// busybox-static, auditd, mmdebstrap and QEMU for `vm-test`; needs root), rustup's
    /// `nightly` toolchain with `rust-src`, clippy and rustfmt, and bpf-linker 0.13.0 (built
    /// with `cargo install`).
    Setup,
    /// Set up, then build the workspace.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build a release ctrwatch and run `ctrwatch watch` (as root).
    ///
    /// With no arguments it watches containerd's default roots. Arguments after `--` go to
    /// `ctrwatch watch`, e.g. `cargo xtask run -- --root /tmp/x --json`.
    Run {
        /// Arguments for `ctrwatch watch` (after `--`).
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<OsString>,
    },
    /// Set up, lint, build and run all the tests (as root: they load eBPF programs).
    ///
    /// Runs `cargo fmt --check` and `cargo clippy -D warnings` (unless --no-lint), builds the
    /// binaries, then `cargo test` over the workspace with CTRWATCH_BIN pointing at the debug
    /// ctrwatch and CTRWATCH_REQUIRE_ROOT_TESTS=1, so the root-only tests fail rather than skip.
    /// The whole suite also builds the Debian package (`cargo xtask deb`), which a test
    /// installs, removes and purges (CTRWATCH_DEB), and the previous build
    /// (xtask/previous-build.txt, into target/previous/) for the upgrade test
    /// (CTRWATCH_PREVIOUS_BIN), and ends with the QEMU guests of
    /// `cargo xtask vm-test` (docs/kernels.md): the default scenario on Debian's 6.1 and 6.12
    /// kernels, the package and protect scenarios on 6.12, the no-bpf-lsm and protect-fallback
    /// scenarios on 6.1, about 5-7 minutes; their images are built (or taken from
    /// target/vm/images) while the workspace builds.
    /// Arguments after `--` go to `cargo test`, e.g. `cargo xtask test -- -p watcher-common` or
    /// `cargo xtask test -- some_test -- --nocapture`; with them, or with --no-guests, no
    /// guest runs.
    Test {
        /// Skip rustfmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the QEMU guests (for a quicker run on the host kernel alone; CI runs them).
        #[arg(long)]
        no_guests: bool,
        /// Arguments for `cargo test` (after `--`).
        #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
        cargo_args: Vec<OsString>,
    },
    /// Set up, build the static release binary and the Debian package.
    ///
    /// Leaves `target/debian/ctrwatch_<version>_<arch>.deb`: /usr/bin/ctrwatch (static, musl:
    /// runs on Debian 11/12, Ubuntu 20.04-24.04), the systemd unit, the example configuration
    /// as a conffile, man pages and bash/zsh/fish completions. Install it with `dpkg -i`.
    Deb {
        /// The Rust target to build for (default: this machine's architecture, musl).
        #[arg(long, value_name = "TRIPLE")]
        target: Option<String>,
    },
    /// Set up, then test ctrwatch on other kernels in QEMU guests (as root; docs/kernels.md).
    ///
    /// Builds (once; cached under target/vm/images/, keyed by the package list) a Debian 12
    /// guest image with mmdebstrap holding systemd, containerd, runc and one of Debian's cloud
    /// kernels, boots it under QEMU (TCG: no KVM needed) with the static ctrwatch (the
    /// package's build) and xtask/vm/vm-test.sh on a second disk, and checks what the guest
    /// reports: `ctrwatch probe`, `ctrwatch run` watching, a file's create and unlink in
    /// `ctrwatch history` with the command that deleted it, a real containerd's import, run,
    /// image removal and GC with its layer's files recorded as containerd's own. Fails unless
    /// every check passed on every kernel. Writes what each kernel offered, and the times,
    /// into docs/kernels.md.
    /// One kernel takes about 3.5-4 minutes with a cached image, 6-7 without (TCG, 2 cores).
    /// `cargo xtask test` runs it too (both kernels, and the package scenario on 6.12); the
    /// guest image is downloaded from Debian's archive.
    VmTest {
        /// The guest kernel: 6.1 (Debian 12's), 6.12 (bookworm-security's linux-6.12) or all.
        #[arg(long, value_enum, default_value = "6.1")]
        kernel: vm::Kernel,
        /// Minutes a guest may run, from QEMU's start to its power-off.
        #[arg(long, value_name = "MINUTES", default_value_t = 10)]
        timeout: u64,
        /// Build the guest image again even when the cached one matches.
        #[arg(long)]
        rebuild: bool,
        /// Leave docs/kernels.md as it is.
        #[arg(long)]
        no_docs: bool,
        /// What the guest tests: `default` (the binary: probe, run, history; its findings go
        /// into docs/kernels.md) or `package` (the .deb under systemd: the service active, the
        /// pins kept by `systemctl restart` and a crash, removed by `systemctl stop` and
        /// `dpkg -r`) or `no-bpf-lsm` (the kernel booted with `bpf` left out of `lsm=`:
        /// `ctrwatch probe` must say BPF LSM is inactive, and why) or `protect` (protect mode
        /// on a containerd-shaped root: enforce denies foreign changes, dry-run blocks
        /// nothing) or `protect-fallback` (`protect = "enforce"` with `bpf` left out of
        /// `lsm=`: watch-only, said in the log and `status`, nothing blocked) or `bench` (each
        /// backend's overhead on operation loops as ratios, into docs/benchmarks-guests.md;
        /// ~10 minutes a kernel, at least 25 allowed whatever `--timeout` says).
        #[arg(long, value_enum, default_value = "default")]
        scenario: vm::Scenario,
    },
    /// Set up, build a release ctrwatch and run the benchmark (`tests` crate, bin `bench`).
    ///
    /// Arguments after `--` go to the benchmark.
    Bench {
        /// `rss`: the daemon's idle footprint instead of the benchmark.
        #[command(subcommand)]
        what: Option<BenchWhat>,
        /// Arguments for the benchmark (after `--`).
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<OsString>,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// The daemon's idle footprint: RSS and what it is made of, and idle CPU (as root).
    ///
    /// Builds the release ctrwatch, starts `ctrwatch run` on an empty temporary root and
    /// store with the default ring buffer, waits for it to be ready (READY=1), lets it idle,
    /// sorts /proc/PID/smaps into what the resident pages are (binary, ring buffer, allocator
    /// heaps, thread stacks, ...), measures its CPU over an idle window, and rewrites the
    /// generated part of the "Footprint" section of docs/operations.md.
    Rss {
        /// Seconds to idle after READY=1 before reading the memory.
        #[arg(long, value_name = "SECONDS", default_value_t = 5)]
        settle: u64,
        /// Seconds over which idle CPU is measured.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        cpu_window: u64,
        /// Measure this ctrwatch binary instead of building target/release/ctrwatch.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Leave docs/operations.md as it is (print the table only).
        #[arg(long)]
        no_docs: bool,
    },
    /// Start-up time: spawn → READY=1 of `ctrwatch run`, fresh and adopting pins (as root).
    ///
    /// Builds the release ctrwatch, starts `ctrwatch run` on an empty temporary root and store
    /// RUNS times (each loads and verifies every program), then once with a temporary
    /// `--pin-dir` under /sys/fs/bpf and RUNS times more adopting those pins (what a service
    /// restart does), removes the pins, and rewrites the generated part of docs/startup.md
    /// with the medians and the daemon's own step timings (its `start-up:` debug log lines).
    Startup {
        /// Starts of each kind (fresh, adopting).
        #[arg(long, value_name = "N", default_value_t = 5)]
        runs: usize,
        /// Measure this ctrwatch binary instead of building target/release/ctrwatch.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// What the binary is, for the docs (default: "release" when built here, else
        /// "given").
        #[arg(long, value_name = "LABEL")]
        build: Option<String>,
        /// Leave docs/startup.md as it is (print the tables only).
        #[arg(long)]
        no_docs: bool,
    },
}

fn main() -> ExitCode {
    put_cargo_bin_on_path();
    match Cli::parse().task.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl Task {
    fn run(self) -> Result<ExitCode> {
        match self {
            Task::Setup => setup::setup()?,
            Task::Build { release } => {
                setup::setup()?;
                let mut build = cargo(&["build"]);
                build.args(workspace_args());
                if release {
                    build.arg("--release");
                }
                cmd::run(&mut build)?;
            }
            Task::Run { args } => {
                require_root("cargo xtask run", "ctrwatch loads eBPF programs")?;
                setup::setup()?;
                cmd::run(&mut cargo(&["build", "--release", "-p", "watcher"]))?;
                let mut watch = Command::new(target_dir().join("release/ctrwatch"));
                watch.arg("watch").args(args);
                return Err(exec(&mut watch));
            }
            Task::Test {
                no_lint,
                no_guests,
                cargo_args,
            } => {
                require_root(
                    "cargo xtask test",
                    "the integration tests load eBPF programs and run containerd",
                )?;
                setup::setup()?;
                return test(!no_lint, !no_guests, cargo_args);
            }
            Task::Deb { target } => {
                setup::setup()?;
                let mut opts = deb::DebOptions::host_musl();
                if let Some(t) = target {
                    opts.target = t;
                }
                setup::rust_target(&opts.target)?;
                deb::build(&opts)?;
            }
            Task::VmTest {
                kernel,
                timeout,
                rebuild,
                no_docs,
                scenario,
            } => {
                require_root(
                    "cargo xtask vm-test",
                    "mmdebstrap builds the guest root as root",
                )?;
                setup::setup()?;
                let opts = vm::VmTestOptions {
                    kernels: kernel.expand(),
                    scenario,
                    timeout: Duration::from_secs(timeout.saturating_mul(60)),
                    rebuild,
                    write_docs: !no_docs,
                };
                if !vm::vm_test(&opts)? {
                    return Ok(ExitCode::FAILURE);
                }
            }
            Task::Bench {
                what:
                    Some(BenchWhat::Rss {
                        settle,
                        cpu_window,
                        binary,
                        no_docs,
                    }),
                ..
            } => {
                require_root("cargo xtask bench rss", "ctrwatch loads eBPF programs")?;
                let mut command = "cargo xtask bench rss".to_owned();
                let binary = match binary {
                    Some(b) => {
                        command.push_str(&format!(" --binary {}", b.display()));
                        b
                    }
                    None => {
                        setup::setup()?;
                        cmd::run(&mut cargo(&["build", "--release", "-p", "watcher"]))?;
                        target_dir().join("release/ctrwatch")
                    }
                };
                footprint::run(&footprint::FootprintOptions {
                    binary,
                    settle: Duration::from_secs(settle),
                    cpu_window: Duration::from_secs(cpu_window),
                    write_docs: !no_docs,
                    command,
                })?;
            }
            Task::Bench {
                what:
                    Some(BenchWhat::Startup {
                        runs,
                        binary,
                        build,
                        no_docs,
                    }),
                ..
            } => {
                require_root("cargo xtask bench startup", "ctrwatch loads eBPF programs")?;
                let mut command = format!("cargo xtask bench startup --runs {runs}");
                let (binary, default_build) = match binary {
                    Some(b) => {
                        command.push_str(&format!(" --binary {}", b.display()));
                        (b, "given")
                    }
                    None => {
                        setup::setup()?;
                        cmd::run(&mut cargo(&["build", "--release", "-p", "watcher"]))?;
                        (target_dir().join("release/ctrwatch"), "release")
                    }
                };
                if let Some(label) = &build {
                    command.push_str(&format!(" --build {label}"));
                }
                startup::run(&startup::StartupOptions {
                    binary,
                    runs: runs.max(1),
                    write_docs: !no_docs,
                    command,
                    build: build.unwrap_or_else(|| default_build.to_string()),
                })?;
            }
            Task::Bench { what: None, args } => {
                setup::setup()?;
                cmd::run(&mut cargo(&["build", "--release", "-p", "watcher"]))?;
                let mut bench = cargo(&["run", "--release", "-p", "tests", "--bin", "bench", "--"]);
                bench
                    .args(args)
                    .env("CTRWATCH_BIN", target_dir().join("release/ctrwatch"));
                return Err(exec(&mut bench));
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// One step of `cargo xtask test`, for the summary.
struct Step {
    name: &'static str,
    ok: bool,
    took: Duration,
}

fn test(lint: bool, guests: bool, cargo_args: Vec<OsString>) -> Result<ExitCode> {
    // Unless the caller chose the packages (`-- -p watcher-common`), test them all.
    let picks_packages = cargo_args
        .iter()
        .map(|a| a.to_string_lossy())
        .take_while(|a| a != "--")
        .any(|a| a.starts_with("-p") || a.starts_with("--package") || a == "--workspace");
    // Arguments for `cargo test` (a filter, packages) ask for a narrower run: no guests then.
    let guests = guests && cargo_args.is_empty();
    // The upgrade test is in the `tests` package: build the previous build whenever it runs.
    let picks_tests = cargo_args
        .iter()
        .map(|a| a.to_string_lossy())
        .take_while(|a| a != "--")
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| (w[0] == "-p" || w[0] == "--package") && w[1] == "tests")
        || cargo_args.iter().any(|a| {
            let a = a.to_string_lossy();
            a == "-ptests" || a == "--package=tests"
        });
    // The guest images are mostly a download from Debian's archive and dpkg unpacking: they
    // are made on a thread while the workspace is linted and built (a cached image is
    // reused). The guests themselves boot after the host's tests, one at a time: TCG takes a
    // core per guest CPU, and the host tests' timings are not loaded by them.
    let guest_images = guests.then(|| {
        std::thread::spawn(|| {
            let start = Instant::now();
            let images = vm::prepare_images(&[vm::Kernel::V6_1, vm::Kernel::V6_12], false);
            (images, start.elapsed())
        })
    });
    let mut steps = Vec::new();
    let mut step = |name: &'static str, cmd: &mut Command| -> bool {
        let start = Instant::now();
        let result = cmd::run(cmd);
        if let Err(e) = &result {
            eprintln!("error: {e:#}");
        }
        let ok = result.is_ok();
        steps.push(Step {
            name,
            ok,
            took: start.elapsed(),
        });
        ok
    };
    if lint {
        step("fmt", &mut cargo(&["fmt", "--all", "--", "--check"]));
        step(
            "clippy",
            cargo(&["clippy"]).args(workspace_args()).args([
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        );
    }
    let built = step(
        "build",
        cargo(&["build"]).args(workspace_args()).arg("--bins"),
    );
    // Only the binary crate builds eBPF: the model, store and audit crates and their tests
    // build with the stable toolchain alone and no bpf-linker on PATH (their tests then run
    // with the rest of the workspace's).
    match without_bpf_toolchain() {
        Ok(mut cmd) => {
            step("no-bpf", &mut cmd);
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            steps.push(Step {
                name: "no-bpf",
                ok: false,
                took: Duration::ZERO,
            });
        }
    }

    // The whole suite builds the package too (the static release build), and the package
    // test installs that one; a narrower run leaves it to the test, which builds it if it runs.
    let mut package = None;
    if built && !picks_packages {
        let start = Instant::now();
        let opts = deb::DebOptions::host_musl();
        let result = setup::rust_target(&opts.target).and_then(|()| deb::build(&opts));
        match result {
            Ok(path) => package = Some(path),
            Err(e) => eprintln!("error: {e:#}"),
        }
        steps.push(Step {
            name: "deb",
            ok: package.is_some(),
            took: start.elapsed(),
        });
    }

    // The previous build, for the upgrade test (tests/tests/pinning.rs): its own target
    // directory, so its dependencies are built once more (about 3 minutes here).
    let mut previous = None;
    if built && (!picks_packages || picks_tests) {
        let start = Instant::now();
        match previous::build() {
            Ok(path) => previous = Some(path),
            Err(e) => eprintln!("error: {e:#}"),
        }
        steps.push(Step {
            name: "previous",
            ok: previous.is_some(),
            took: start.elapsed(),
        });
    }

    let mut counts = None;
    if built {
        let mut test = cargo(&["test"]);
        if !picks_packages {
            test.args(workspace_args());
        }
        // Every test binary runs even after one fails: a CI report names all the failures,
        // not the first binary's.
        if !cargo_args.iter().any(|a| a == "--no-fail-fast") {
            test.arg("--no-fail-fast");
        }
        test.args(&cargo_args)
            .env("CTRWATCH_BIN", target_dir().join("debug/ctrwatch"))
            .env("CTRWATCH_REQUIRE_ROOT_TESTS", "1");
        if let Some(path) = &package {
            test.env("CTRWATCH_DEB", path);
        }
        if let Some(path) = &previous {
            test.env("CTRWATCH_PREVIOUS_BIN", path);
        }
        let start = Instant::now();
        let result = run_counting_tests(&mut test);
        let ok = match &result {
            Ok((true, _)) => true,
            Ok((false, _)) => false,
            Err(e) => {
                eprintln!("error: {e:#}");
                false
            }
        };
        counts = result.ok().map(|(_, c)| c);
        steps.push(Step {
            name: "test",
            ok,
            took: start.elapsed(),
        });
    } else {
        eprintln!("error: the build failed, so no test was run");
    }

    let guest_checks = guest_images.map(|images| run_guests(images, &mut steps));

    eprintln!();
    eprintln!("cargo xtask test summary:");
    for s in &steps {
        let status = if s.ok { "ok" } else { "FAILED" };
        eprintln!(
            "  {status:<7} {:<13} {:>7.1}s",
            s.name,
            s.took.as_secs_f64()
        );
    }
    if let Some((passed, failed)) = guest_checks {
        eprintln!("guest checks: {passed} passed, {failed} failed (docs/kernels.md)");
    }
    let all_ok = built && steps.iter().all(|s| s.ok);
    // The last line, in the plain form that test-result readers understand.
    match counts {
        Some(c) if c.results > 0 => println!(
            "tests: {} passed, {} failed, {} skipped",
            c.passed, c.failed, c.ignored
        ),
        Some(_) => println!("tests: cargo test reported no test results"),
        None => {}
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The guest images a thread of [`test`] prepares, and how long that took.
type GuestImages = std::thread::JoinHandle<(Vec<vm::PreparedImage>, Duration)>;

/// The QEMU guests of `cargo xtask test`: the default scenario on both kernels, the package
/// scenario on 6.12 (the kernel the package test was written against; the default scenario
/// covers 6.1's verifier), the protect scenario on 6.12, the no-bpf-lsm and protect-fallback
/// scenarios on 6.1. Adds their steps; returns the guest checks passed and failed.
fn run_guests(images: GuestImages, steps: &mut Vec<Step>) -> (usize, usize) {
    // A guest is given 10 minutes from QEMU's start to its power-off (TCG; 3-5 minutes here).
    const GUEST_TIMEOUT: Duration = Duration::from_secs(10 * 60);
    let (images, took) = match images.join() {
        Ok(done) => done,
        Err(_) => {
            eprintln!("error: the thread preparing the guest images panicked");
            steps.push(Step {
                name: "vm-images",
                ok: false,
                took: Duration::ZERO,
            });
            return (0, 1);
        }
    };
    steps.push(Step {
        name: "vm-images",
        ok: images.iter().all(|(_, image)| image.is_ok()),
        took,
    });
    let all: Vec<&vm::PreparedImage> = images.iter().collect();
    let only = |wanted: vm::Kernel| -> Vec<&vm::PreparedImage> {
        images
            .iter()
            .filter(|(kernel, _)| *kernel == wanted)
            .collect()
    };
    let (newest, oldest) = (only(vm::Kernel::V6_12), only(vm::Kernel::V6_1));
    let (mut passed, mut failed) = (0, 0);
    for (name, scenario, images) in [
        ("vm-default", vm::Scenario::Default, &all),
        ("vm-package", vm::Scenario::Package, &newest),
        // The fallback when `bpf` is not an active LSM: one kernel is enough (a minute).
        ("vm-no-bpf-lsm", vm::Scenario::NoBpfLsm, &oldest),
        // Protect mode enforcing and in dry-run (about 1.5-2 minutes), and its loud fallback
        // where `bpf` is not an active LSM (about a minute).
        ("vm-protect", vm::Scenario::Protect, &newest),
        (
            "vm-protect-fallback",
            vm::Scenario::ProtectFallback,
            &oldest,
        ),
    ] {
        let start = Instant::now();
        let ok = match vm::run_scenario(images, scenario, GUEST_TIMEOUT, false) {
            Ok(outcome) => {
                passed += outcome.checks_passed;
                failed += outcome.checks_failed;
                outcome.passed()
            }
            Err(e) => {
                eprintln!("error: vm-test {scenario:?}: {e:#}");
                failed += 1;
                false
            }
        };
        steps.push(Step {
            name,
            ok,
            took: start.elapsed(),
        });
    }
    (passed, failed)
}

#[derive(Default)]
struct Counts {
    /// How many `test result:` lines (test binaries and doc-test runs) were seen.
    results: u64,
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs `cargo test`, passing its output through while adding up libtest's
/// `test result: ok. 5 passed; 0 failed; 1 ignored; …` lines. Returns (success, counts).
fn run_counting_tests(cmd: &mut Command) -> Result<(bool, Counts)> {
    let line = cmd::display(cmd);
    eprintln!("+ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let mut counts = Counts::default();
    let mut reader = BufReader::new(child.stdout.take().context("child stdout")?);
    let mut out = std::io::stdout();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        out.write_all(&buf)?;
        out.flush()?;
        if let Some(rest) = String::from_utf8_lossy(&buf)
            .trim()
            .strip_prefix("test result: ")
        {
            counts.results += 1;
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => counts.passed += n,
                    "failed" => counts.failed += n,
                    "ignored" => counts.ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !status.success() {
        eprintln!("error: `{line}` failed ({status})");
    }
    Ok((status.success(), counts))
}

/// The crates that must build and test without the BPF toolchain (docs/architecture.md).
const WITHOUT_BPF: [&str; 5] = [
    "ctrwatch-event",
    "ctrwatch-config",
    "ctrwatch-containerd",
    "ctrwatch-store",
    "ctrwatch-audit",
];

/// `cargo test --no-run` of [`WITHOUT_BPF`] with the stable toolchain's own cargo and a PATH of
/// that toolchain's directory and the system's (`/usr/bin:/bin`, for the C linker): no
/// rustup proxy, so no nightly, and no bpf-linker (refused if the system has one there).
fn without_bpf_toolchain() -> Result<Command> {
    let stable_cargo = PathBuf::from(
        cmd::output(Command::new("rustup").args(["which", "--toolchain", "stable", "cargo"]))?
            .trim(),
    );
    let bin = stable_cargo
        .parent()
        .context("the stable toolchain's cargo has no directory")?;
    let path = std::env::join_paths([bin, Path::new("/usr/bin"), Path::new("/bin")])?;
    if let Some(dir) = std::env::split_paths(&path).find(|d| d.join("bpf-linker").exists()) {
        bail!(
            "bpf-linker is in {}: the build without it proves nothing here",
            dir.display()
        );
    }
    let mut c = Command::new(&stable_cargo);
    c.args(["test", "--no-run"])
        .args(WITHOUT_BPF.iter().flat_map(|k| ["-p", k]))
        .env("PATH", path)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .current_dir(workspace_root());
    Ok(c)
}

/// `--workspace --exclude` the crates that only build for the BPF target.
fn workspace_args() -> Vec<&'static str> {
    let mut args = vec!["--workspace"];
    for krate in HOST_EXCLUDE {
        args.extend(["--exclude", krate]);
    }
    args
}

/// The workspace's cargo, run in the workspace root.
fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    c.args(args).current_dir(workspace_root());
    c
}

#[allow(
    clippy::expect_used,
    reason = "CARGO_MANIFEST_DIR is xtask/ in the workspace, fixed at compile time: it has a parent"
)]
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        // A relative CARGO_TARGET_DIR is relative to where cargo was started.
        Some(dir) => std::env::current_dir()
            .map(|cwd| cwd.join(&dir))
            .unwrap_or_else(|_| dir.into()),
        None => workspace_root().join("target"),
    }
}

fn require_root(what: &str, why: &str) -> Result<()> {
    if !setup::is_root() {
        bail!("{what} must run as root ({why}); run it again from a root shell");
    }
    Ok(())
}

/// Replaces xtask with `cmd`, so that Ctrl-C and the exit status are the program's own.
/// Returns only on failure.
fn exec(cmd: &mut Command) -> anyhow::Error {
    let line = cmd::display(cmd);
    eprintln!("+ exec {line}");
    anyhow::Error::new(cmd.exec()).context(format!("could not start `{line}`"))
}

/// Child commands (rustup, cargo, bpf-linker, aya-build's `rustup run nightly`) are found in
/// `$CARGO_HOME/bin` even when the caller's PATH lacks it.
fn put_cargo_bin_on_path() {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(bin) = cargo_home.map(|h| h.join("bin")) else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let Ok(path) = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))
    else {
        return;
    };
    // SAFETY: called first thing in main, before xtask starts any thread.
    unsafe { std::env::set_var("PATH", path) };
}
