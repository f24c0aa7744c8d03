//! ctrwatch's daemon and CLI library. One event's path: the kernel's record (layout and
//! decoding in `watcher_common`: `FileRecord`, decoded as `KernelFileOp`) becomes the one
//! typed event (`ctrwatch_event::FileEvent`) in enrich.rs, which attributes it (process.rs,
//! cgroup.rs, roots.rs, containerd/); watch.rs sends it to a sink (stdout, or the daemon's
//! store).
pub mod alerting;
pub mod cgroup;
pub mod containerd;
pub mod daemon;
pub mod enrich;
pub mod kernel;
pub mod logging;
pub mod loss;
pub mod metrics;
pub mod metrics_http;
pub mod notify;
pub mod process;
pub mod queries;
pub mod roots;
pub mod secrets;
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
/// free, mimalloc queues them without one. Measured with `daemon::bench` (2 M events offered
/// at 100 000/s): 1.01 M stored with glibc's malloc, 1.58 M with mimalloc, same build
/// otherwise.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
