//! ctrwatch's daemon and CLI library. One event's path: kernel/records.rs decodes it,
//! enrich.rs attributes it (process.rs, cgroup.rs, roots.rs), watch.rs sends it to a sink.
pub mod audit;
pub mod cgroup;
pub mod containerd;
pub mod daemon;
pub mod enrich;
pub mod event;
pub mod kernel;
pub mod loss;
pub mod process;
pub mod queries;
pub mod roots;
pub mod store;
pub mod watch;
