//! containerd's storage as the daemon sees it: the model (paths and snapshotter layouts, the
//! metadata readers, discovery, Go's formats) is the `ctrwatch-containerd` crate, re-exported
//! here; [`attribution`] (who did it, and was it containerd) is the daemon's own.

pub use ctrwatch_containerd::*;

pub mod attribution;
