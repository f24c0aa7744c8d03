//! ctrwatch's event model: one typed file event from the kernel hook to every output (watch,
//! the store and its queries, alerts, status), the explicit records of where the history is
//! incomplete, and their JSON and readable forms.
//!
//! Values stay typed until output: times in ns ([`time`]), devices and modes as numbers
//! ([`Dev`], [`Mode`]), enums for ops, verdicts and kinds ([`Op`], [`Verdict`],
//! [`StorageKind`]). The JSON field names are an interface that scripts rely on
//! (docs/operations.md, "JSON records"): the serializers here are the only place they are
//! written.

pub mod alert;
pub mod containerd;
pub mod file;
pub mod gap;
pub mod human;
pub mod op;
pub mod process;
pub mod text;
pub mod time;

pub use alert::{RuleId, Severity};
pub use containerd::{BlobRole, ContainerdView, PodInfo, SnapshotKind, StorageKind, Verdict};
pub use file::{Details, Dev, FileEvent, Mode, Notes, OpenFlags, Overwritten, Protect, Xattr};
pub use gap::{Gap, GapKind, LossEvent, LossKind};
pub use op::{Op, OpResult, errno_name};
pub use process::{AncestorView, ProcessView};
pub use text::{PathBytes, escape, escape_bytes, escape_path, hex, lossless_text};
pub use time::{Clock, format_rfc3339, monotonic_ns, parse_rfc3339};
