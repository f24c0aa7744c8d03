//! What is committed: the one place that relates positions of the kernel's ring buffer to
//! what the store has made durable (issue 13, zero loss across `kill -9`).
//!
//! With pinned programs (`run --pin-dir`) the ring buffer outlives the daemon: the next daemon
//! adopts it and reads on from the consumer position the previous one published. The kernel
//! reuses ring space up to that position, so nothing before it can be read again. Published
//! as records are *read*, a `kill -9` lost what was read but not yet committed (the enricher,
//! the writer's queue and its open batch: up to about a second). So, when the ring buffer is
//! pinned:
//!
//! - the reader keeps its read position ahead of the published one
//!   ([`crate::kernel::ring::EventRing::release_through`]);
//! - every event handed to the store's writer carries the end position of the record it came
//!   from, and each drain ends with a marker for the records that made no event; after each
//!   commit the writer reports through which position everything is committed
//!   ([`CommitProgress`] → [`CommittedThrough`]) and the reader publishes that, never more
//!   than it read;
//! - the same position is written in the transaction that commits those events (the store's
//!   [`ctrwatch_store::RingMark`]): a daemon that adopts the ring buffer after a crash reads
//!   again from the published position, which may lag the mark (the crash came between the
//!   commit and the publication), and drops the events of records at or before the mark
//!   ([`ReplayFence`]) while still applying what they say about processes;
//! - a writer that stalls (a full disk, a slow disk under a flood) must not stall the kernel:
//!   the reader never holds more than [`HeldRing::max_held`] bytes (half the ring buffer); past
//!   that it publishes its read position anyway, and a crash then can lose the uncommitted
//!   records beyond it (inside the unclean stop's downtime gap, as before). When the held part
//!   passes a quarter of the ring, the reader asks the writer to commit early
//!   ([`crate::watch::Sink::commit_soon`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A position in the kernel's ring buffer: bytes produced since the map was created (the
/// kernel's own count, which never wraps in practice). A record "ends at" the position after
/// its last byte (and padding): consuming through it releases the record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct RingPos(pub u64);

impl RingPos {
    /// Bytes from `earlier` to this position (0 when `earlier` is not earlier).
    pub fn bytes_since(self, earlier: RingPos) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// Which ring buffer positions refer to: the map's kernel id in this boot. Map ids are not
/// reused while the map exists (the pins hold it), and start over at a reboot, hence the boot
/// id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingIdentity(String);

impl RingIdentity {
    /// The ring buffer map of id `map_id`, in the boot `boot_id` (the kernel's
    /// `/proc/sys/kernel/random/boot_id`).
    pub fn new(boot_id: &str, map_id: u32) -> RingIdentity {
        RingIdentity(format!("{}/{map_id}", boot_id.trim()))
    }

    /// The ring buffer map of id `map_id` in the running boot; None when the boot id cannot
    /// be read (then nothing is held back: positions could not be told apart from another
    /// boot's).
    pub fn current(map_id: u32) -> Option<RingIdentity> {
        match std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
            Ok(boot) if !boot.trim().is_empty() => Some(RingIdentity::new(&boot, map_id)),
            Ok(_) => None,
            Err(e) => {
                log::warn!("reading the boot id: {e}");
                None
            }
        }
    }

    /// As stored in the store's [`ctrwatch_store::RingMark::ring`].
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The writer's report to the reader: the events of every record ending at or before this
/// position are committed (or counted as lost). Shared by the two threads; only ever grows.
#[derive(Clone, Debug, Default)]
pub struct CommittedThrough(Arc<AtomicU64>);

impl CommittedThrough {
    /// Starts at `pos` (where reading starts: nothing before it is the reader's).
    pub fn starting_at(pos: RingPos) -> CommittedThrough {
        CommittedThrough(Arc::new(AtomicU64::new(pos.0)))
    }

    /// The position reported last.
    pub fn get(&self) -> RingPos {
        RingPos(self.0.load(Ordering::Acquire))
    }

    fn report(&self, pos: RingPos) {
        self.0.fetch_max(pos.0, Ordering::AcqRel);
    }
}

/// The writer's side: what has been appended to the open transaction, reported to the reader
/// once committed.
#[derive(Debug, Default)]
pub struct CommitProgress {
    shared: Option<CommittedThrough>,
    appended: Option<RingPos>,
}

impl CommitProgress {
    /// Reports to `shared` from now on (the reader holds the ring buffer).
    pub fn report_to(&mut self, shared: CommittedThrough) {
        self.shared = Some(shared);
    }

    /// Everything made of records ending at or before `pos` has been appended (or is
    /// about to be: the writer notes it before the append, so that a commit the append makes
    /// holds it). A record that makes several events (a process's exit, one per file it left
    /// open after writing) comes in one message ([`crate::watch::Sink::file_events`]), and
    /// the writer commits between messages: only a commit inside an append (a full batch)
    /// can split one (docs/operations.md, what a crash can still lose).
    pub fn appended(&mut self, pos: RingPos) {
        self.appended = Some(self.appended.map_or(pos, |a| a.max(pos)));
    }

    /// The store committed everything appended so far.
    pub fn committed(&mut self) {
        if let (Some(shared), Some(pos)) = (&self.shared, self.appended) {
            shared.report(pos);
        }
    }
}

/// After a crash: the records a previous daemon of this ring buffer had already committed the
/// events of (the store's [`ctrwatch_store::RingMark`]). They are read again (the published
/// position may lag the mark): what they say about processes is applied, their events are
/// not stored twice.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayFence {
    through: Option<RingPos>,
}

impl ReplayFence {
    /// Records ending at or before `through` were committed.
    pub fn through(through: RingPos) -> ReplayFence {
        ReplayFence {
            through: Some(through),
        }
    }

    /// The end of the last record whose events are stored, if a previous daemon said.
    pub fn through_position(&self) -> Option<RingPos> {
        self.through
    }

    /// Whether the events of the record ending at `end` are already stored.
    pub fn already_committed(&self, end: RingPos) -> bool {
        self.through.is_some_and(|t| end <= t)
    }
}

/// What the sink gives the reader that holds the ring buffer until commits
/// ([`crate::watch::Sink::hold_ring`]).
#[derive(Clone, Debug)]
pub struct HeldRing {
    /// The writer's reports.
    pub committed: CommittedThrough,
    /// The records already committed before a crash.
    pub fence: ReplayFence,
}

impl HeldRing {
    /// The most the reader holds back, for a ring buffer of `size` bytes: half of it. The
    /// kernel always keeps at least that much room for new records, however far behind the
    /// writer is; beyond it, records are released uncommitted (a crash can lose those).
    pub fn max_held(size: u64) -> u64 {
        size / 2
    }

    /// Held bytes past which the reader asks the writer to commit early: a quarter of the
    /// ring buffer (under a flood the writer otherwise commits once a second).
    pub fn commit_soon_at(size: u64) -> u64 {
        size / 4
    }

    /// What the reader may publish having read through `read` in a ring buffer of `size`
    /// bytes: what is committed, not beyond what was read, and never more than
    /// [`HeldRing::max_held`] behind it.
    pub fn publishable(&self, read: RingPos, size: u64) -> RingPos {
        let committed = self.committed.get().min(read);
        let floor = RingPos(read.0.saturating_sub(HeldRing::max_held(size)));
        committed.max(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_publishes_what_is_committed_never_more_than_read() {
        let held = HeldRing {
            committed: CommittedThrough::starting_at(RingPos(1000)),
            fence: ReplayFence::default(),
        };
        let size = 1 << 20;
        assert_eq!(held.publishable(RingPos(5000), size), RingPos(1000));
        let mut progress = CommitProgress::default();
        progress.report_to(held.committed.clone());
        progress.appended(RingPos(4000));
        // Appended, not committed: nothing new to publish.
        assert_eq!(held.publishable(RingPos(5000), size), RingPos(1000));
        progress.committed();
        assert_eq!(held.publishable(RingPos(5000), size), RingPos(4000));
        // Never beyond what was read (a report from before a position moved back is moot).
        assert_eq!(held.publishable(RingPos(3000), size), RingPos(3000));
        // Reports only grow.
        progress.appended(RingPos(2000));
        progress.committed();
        assert_eq!(held.committed.get(), RingPos(4000));
    }

    #[test]
    fn a_stalled_writer_holds_at_most_half_the_ring() {
        let held = HeldRing {
            committed: CommittedThrough::starting_at(RingPos(0)),
            fence: ReplayFence::default(),
        };
        let size = 1 << 20;
        let read = RingPos(10 * size);
        assert_eq!(held.publishable(read, size), RingPos(10 * size - size / 2));
    }

    #[test]
    fn the_fence_drops_what_was_committed_only() {
        let fence = ReplayFence::through(RingPos(800));
        assert!(fence.already_committed(RingPos(800)));
        assert!(fence.already_committed(RingPos(8)));
        assert!(!fence.already_committed(RingPos(808)));
        assert!(!ReplayFence::default().already_committed(RingPos(8)));
    }

    #[test]
    fn identities_of_other_boots_or_maps_differ() {
        let a = RingIdentity::new("b1\n", 7);
        assert_eq!(a.as_str(), "b1/7");
        assert_ne!(a, RingIdentity::new("b1", 8));
        assert_ne!(a, RingIdentity::new("b2", 7));
    }
}
