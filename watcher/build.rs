//! Builds the eBPF programs (watcher-ebpf) for the BPF target with the pinned nightly and
//! bpf-linker, for `watch` and `run` to load (aya-build).
use std::path::PathBuf;

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// Builds the eBPF programs (watcher-ebpf) for the BPF target with the nightly toolchain and
/// bpf-linker, and leaves the object in OUT_DIR, where src/kernel/mod.rs embeds it.
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = PathBuf::from(manifest_dir).join("..").join("watcher-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 workspace path")?;
    let package = Package {
        name: "watcher-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Custom("nightly"))
}
