//! `cargo xtask setup`: installs what building and testing ctrwatch needs, and only what is
//! missing, so that it is quick (well under a second) on a machine that has everything.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Debian packages the build and the tests need.
const DEBIAN_PACKAGES: &[&str] = &[
    // LLVM 22 and the libraries it links with, to build bpf-linker from source.
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    // bpftool: the test that checks the kernel struct offsets against /sys/kernel/btf/vmlinux.
    "bpftool",
    // A real containerd for the integration tests, and what they build an image with offline.
    "containerd",
    "runc",
    "umoci",
    "busybox-static",
    // auditd: the benchmark compares ctrwatch with the audit subsystem.
    "auditd",
    // xfs and btrfs images on loop devices: the rename-target hooks of those filesystems.
    "xfsprogs",
    "btrfs-progs",
    // A real Alertmanager for the alert tests (two clustered instances on loopback ports,
    // started by the tests themselves), and Prometheus for the metrics test.
    "prometheus-alertmanager",
    "prometheus",
    // `cargo xtask deb`: the static (musl) binary's C parts (SQLite, mimalloc, zstd) are
    // compiled with musl-gcc.
    "musl-tools",
    // `cargo xtask vm-test`: the guest root (mmdebstrap), its ext4 image and reading the
    // results back from the test disk (e2fsprogs: mkfs.ext4 -d, debugfs), the guest (QEMU).
    "mmdebstrap",
    "e2fsprogs",
    "qemu-system-x86",
];

/// The linker for the BPF target that aya-build calls; pinned, and built against Debian's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";
/// Where Debian's llvm-22-dev lives (llvm-sys 221 looks for it through LLVM_SYS_221_PREFIX).
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// The toolchain watcher/build.rs builds the eBPF crate with (`rustup run nightly`, with
/// `-Z build-std=core`, hence `rust-src`).
const NIGHTLY: &str = "nightly";

pub fn setup() -> Result<()> {
    debian_packages()?;
    nightly_toolchain()?;
    stable_components()?;
    bpf_linker()?;
    eprintln!("setup: done");
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!(
            "setup: Debian packages: all {} present",
            DEBIAN_PACKAGES.len()
        );
        return Ok(());
    }
    eprintln!("setup: Debian packages missing: {}", missing.join(" "));
    if !is_root() {
        bail!(
            "installing Debian packages needs root; run this as root, or install them yourself:\n  \
             apt-get install --no-install-recommends {}",
            missing.join(" ")
        );
    }
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        c
    };
    cmd::run(&mut apt(&["update"]))?;
    cmd::run(apt(&["install", "-y", "--no-install-recommends"]).args(&missing))
        .context("installing the Debian packages the build and the tests need")?;
    // Debian starts the services it installs; the tests start their own Alertmanager and
    // Prometheus on loopback ports, so the system's (listening on every interface) go.
    if std::path::Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl")
            .args([
                "disable",
                "--now",
                "prometheus.service",
                "prometheus-alertmanager.service",
            ])
            .status();
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    // Status is e.g. "install ok installed"; "deinstall ok config-files" means removed.
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).split_whitespace().nth(2) == Some("installed")
        })
}

fn nightly_toolchain() -> Result<()> {
    let list = cmd::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("ctrwatch's eBPF programs are built with rustup's nightly toolchain")?;
    if has_nightly(&list) {
        eprintln!("setup: Rust toolchain {NIGHTLY}: present");
    } else {
        eprintln!("setup: Rust toolchain {NIGHTLY}: missing, installing it");
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))
        .context(
            "could not install the nightly toolchain. ctrwatch's eBPF programs need a nightly \
             rustc (they are built with -Z build-std=core for the BPF target); install one named \
             `nightly` with rustup (`rustup toolchain install nightly --profile minimal \
             --component rust-src`) and run this again",
        )?;
    }
    components(Some(NIGHTLY), &["rust-src"])
}

fn stable_components() -> Result<()> {
    // The toolchain this workspace builds with (the one running xtask) lints with these.
    components(None, &["clippy", "rustfmt"])
}

/// Adds the rustup `components` that `toolchain` (the active one if None) lacks.
fn components(toolchain: Option<&str>, components: &[&str]) -> Result<()> {
    let toolchain_args = toolchain.map(|t| ["--toolchain", t]);
    let label = toolchain.unwrap_or("active toolchain");
    let installed = cmd::output(
        Command::new("rustup")
            .args(["component", "list", "--installed"])
            .args(toolchain_args.iter().flatten()),
    )?;
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|c| !has_component(&installed, c))
        .collect();
    if missing.is_empty() {
        eprintln!(
            "setup: rustup components {} ({label}): present",
            components.join(", ")
        );
        return Ok(());
    }
    cmd::run(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing)
            .args(toolchain_args.iter().flatten()),
    )
    .with_context(|| format!("adding rustup components {} ({label})", missing.join(", ")))
}

/// Whether `rustup toolchain list` shows `nightly-x86_64-unknown-linux-gnu (…)`; a dated
/// `nightly-2026-05-19-…` does not count, as `rustup run nightly` would not pick it.
fn has_nightly(toolchain_list: &str) -> bool {
    toolchain_list.lines().any(|l| {
        let name = l.split_whitespace().next().unwrap_or("");
        name == NIGHTLY
            || name
                .strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// Whether `rustup component list --installed` shows `component`: its lines are `rust-src`
/// or `clippy-x86_64-unknown-linux-gnu`.
fn has_component(installed: &str, component: &str) -> bool {
    installed.lines().any(|l| {
        let l = l.trim();
        l == component
            || l.strip_prefix(component)
                .is_some_and(|r| r.starts_with('-'))
    })
}

/// Adds the Rust standard library for `target` (e.g. x86_64-unknown-linux-musl) to the
/// toolchain building the workspace, if it lacks it.
pub fn rust_target(target: &str) -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if installed.lines().any(|l| l.trim() == target) {
        eprintln!("setup: Rust target {target}: present");
        return Ok(());
    }
    cmd::run(Command::new("rustup").args(["target", "add", target]))
        .with_context(|| format!("adding the Rust target {target}"))
}

fn bpf_linker() -> Result<()> {
    if bpf_linker_version_ok() {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION}: present");
        return Ok(());
    }
    eprintln!(
        "setup: bpf-linker {BPF_LINKER_VERSION}: missing, building it against Debian's LLVM 22 \
         (about a minute or two)"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(format!("{LLVM_PREFIX}/bin").into()).chain(std::env::split_paths(&path)),
    )
    .context("PATH")?;
    // rustup's `cargo`, so that the default toolchain builds it.
    let mut install = Command::new("cargo");
    install
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--locked", "--no-default-features", "--features"])
        .arg(BPF_LINKER_LLVM_FEATURE)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
        .env("PATH", path)
        // Without cargo's warning that the toolchain running xtask overrides the default one.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTUP_TOOLCHAIN_SOURCE");
    cmd::run(&mut install).context("installing bpf-linker")?;
    if !bpf_linker_version_ok() {
        bail!(
            "bpf-linker {BPF_LINKER_VERSION} was installed, but the `bpf-linker` found on PATH \
             does not report that version; remove the other one"
        );
    }
    Ok(())
}

fn bpf_linker_version_ok() -> bool {
    // Prints `bpf-linker 0.13.0`.
    cmd::output(Command::new("bpf-linker").arg("--version"))
        .is_ok_and(|v| v.split_whitespace().any(|w| w == BPF_LINKER_VERSION))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_undated_nightly() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(list));
        assert!(!has_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-2026-05-19-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_nightly("no installed toolchains\n"));
    }

    #[test]
    fn finds_components() {
        let installed = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\n\
                         rust-src\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(has_component(installed, "clippy"));
        assert!(has_component(installed, "rust-src"));
        assert!(!has_component(installed, "rustfmt"));
        assert!(!has_component(
            "rust-std-x86_64-unknown-linux-gnu\n",
            "rust-src"
        ));
    }
}
