//! ctrwatch's daemon and CLI library. One event's path: the kernel's record (layout and
//! decoding in `watcher_common`: `FileRecord`, decoded as `KernelFileOp`) becomes the one
//! typed event (`ctrwatch_event::FileEvent`) in enrich.rs, which attributes it (process.rs,
//! cgroup.rs, roots.rs, containerd/); watch.rs sends it to a sink (stdout, or the daemon's
//! store).
pub mod alerting;
pub mod cgroup;
pub mod checkworker;
pub mod committed;
pub mod containerd;
pub mod daemon;
pub mod enrich;
pub mod kernel;
pub mod layercheck;
pub mod logging;
pub mod loss;
pub mod metrics;
pub mod metrics_http;
pub mod mismatch;
pub mod notify;
pub mod process;
pub mod queries;
pub mod roots;
pub mod secrets;
pub mod service_job;
pub mod status;
pub mod watch;

/// The offline audit (its own crate).
pub use ctrwatch_audit as audit;
/// The event history store (its own crate).
pub use ctrwatch_store as store;

/// Reading under a root without following links (in the containerd model's crate; the audit
/// reads layers and blobs through it too).
pub use ctrwatch_containerd::fsx;

/// The daemon's allocator, here rather than in `main.rs` so that the benchmarks and tests that
/// link this crate measure what ships. Events are allocated on the watch loop and freed on the
/// store's writer thread; glibc's malloc takes the allocating arena's lock for every such
/// free, mimalloc queues them without one. Measured with the pipeline benchmark
/// (watcher/tests/pipeline.rs: 2 M events offered at 100 000/s): 1.01 M stored with glibc's
/// malloc, 1.58 M with mimalloc, same build otherwise.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives the memory that start-up used and freed back to the system. Loading the programs
/// parses the kernel's BTF and the eBPF object, and seeding the process table reads all of
/// /proc: tens of MiB allocated and freed within seconds. mimalloc keeps freed pages for a
/// while (its `purge_delay`, 1 s) and purges them only when the thread that freed them
/// allocates again past that delay, which an idle daemon may not do for a long time: without
/// this they stayed resident (docs/operations.md, "Footprint"). Call it on the thread that
/// did the start-up work, once it is done; it costs a few milliseconds, once.
pub fn release_freed_memory() {
    // SAFETY: mi_collect has no preconditions; `force` also purges the arenas' free pages
    // (MADV_DONTNEED) at once instead of after the delay.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
