//! Turning the kernel's per-CPU loss counters into explicit loss records, so that a gap in the
//! history is never silent.

use std::collections::BTreeMap;

use ctrwatch_event::{Clock, LossEvent, LossKind};
use watcher_common::{LOSS_EXEC, LOSS_EXIT, LOSS_FORK, LOSS_PATH_UNRESOLVED, LOSS_PROTECT, op};

use crate::enrich::kernel_op;

/// Remembers the last totals and reports what was added since, with the window it covers.
#[derive(Debug)]
pub struct LossTracker {
    last: Vec<u64>,
    window_start_ns: u64,
}

impl LossTracker {
    /// `totals` are the counters at start (losses before we attached are not ours to report).
    pub fn new(totals: Vec<u64>, now_ns: u64) -> Self {
        LossTracker {
            last: totals,
            window_start_ns: now_ns,
        }
    }

    /// The totals reported so far (the baseline of the next poll).
    pub fn reported(&self) -> &[u64] {
        &self.last
    }

    /// New losses since the previous poll, as one record; None when there were none.
    pub fn poll(&mut self, totals: Vec<u64>, now_ns: u64, clock: &Clock) -> Option<LossEvent> {
        let mut kinds = BTreeMap::new();
        let mut lost = 0;
        for (slot, (now, before)) in totals.iter().zip(self.last.iter()).enumerate() {
            let delta = now.saturating_sub(*before);
            if delta > 0 {
                *kinds.entry(slot_kind(slot)).or_insert(0) += delta;
                lost += delta;
            }
        }
        let from = self.window_start_ns;
        self.last = totals;
        self.window_start_ns = now_ns;
        (lost > 0).then(|| LossEvent {
            time_ns: clock.wall_ns(now_ns),
            from_ns: clock.wall_ns(from),
            to_ns: clock.wall_ns(now_ns),
            lost,
            kinds,
        })
    }
}

/// What a loss counter slot counts: the op of that number, the write binding, the process
/// records, or the operations whose path could not be resolved.
fn slot_kind(slot: usize) -> LossKind {
    let Ok(slot) = u32::try_from(slot) else {
        return LossKind::Unknown;
    };
    match slot {
        LOSS_EXEC => LossKind::Exec,
        LOSS_FORK => LossKind::Fork,
        LOSS_EXIT => LossKind::Exit,
        LOSS_PATH_UNRESOLVED => LossKind::PathUnresolved,
        LOSS_PROTECT => LossKind::Protect,
        s if s == u32::from(op::WRITE_BIND) => LossKind::WriteBind,
        s => u16::try_from(s)
            .ok()
            .and_then(kernel_op)
            .map_or(LossKind::Unknown, LossKind::Op),
    }
}

#[cfg(test)]
mod tests {
    use ctrwatch_event::Op;
    use watcher_common::LOSS_SLOTS;

    use super::*;

    #[test]
    fn reports_only_new_losses_with_their_window() {
        let clock = Clock::now();
        let mut t = LossTracker::new(vec![0; 32], 100);
        let mut totals = vec![0; 32];
        assert!(t.poll(totals.clone(), 200, &clock).is_none());
        totals[op::UNLINK as usize] = 5;
        totals[LOSS_EXEC as usize] = 2;
        let ev = t.poll(totals.clone(), 300, &clock);
        let Some(ev) = ev else {
            panic!("no loss record")
        };
        assert_eq!(ev.lost, 7);
        assert_eq!(ev.kinds.get(&LossKind::Op(Op::Unlink)), Some(&5));
        assert_eq!(ev.kinds.get(&LossKind::Exec), Some(&2));
        assert_eq!(ev.from_ns, clock.wall_ns(200));
        assert!(t.poll(totals, 400, &clock).is_none());
    }

    /// Every slot has the name it had as text: op names, `write_bind`, the process records,
    /// `path_unresolved`, `protect`, and `unknown` for the unused ones.
    #[test]
    fn slots_are_named_as_before() {
        let names: Vec<&str> = (0..LOSS_SLOTS as usize)
            .map(|s| slot_kind(s).name())
            .collect();
        assert_eq!(
            names,
            [
                "unknown",
                "open_write",
                "create",
                "truncate",
                "modify",
                "fallocate",
                "unlink",
                "rmdir",
                "rename",
                "link",
                "symlink",
                "mknod",
                "mkdir",
                "setxattr",
                "removexattr",
                "chmod",
                "chown",
                "write_bind",
                "unknown",
                "unknown",
                "unknown",
                "unknown",
                "unknown",
                "unknown",
                "exec",
                "fork",
                "exit",
                "path_unresolved",
                "protect",
                "unknown",
                "unknown",
                "unknown",
            ]
        );
    }
}
