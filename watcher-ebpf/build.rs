use which::which;

/// Rebuild the eBPF object when bpf-linker changes (it is part of the toolchain that produced
/// it), as aya's own template does.
fn main() {
    let bpf_linker = which("bpf-linker").unwrap_or_default();
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
