//! Turning the kernel's per-CPU loss counters into explicit loss records, so that a gap in the
//! history is never silent.

use std::collections::BTreeMap;

use watcher_common::{LOSS_EXEC, LOSS_EXIT, LOSS_FORK, LOSS_PATH_UNRESOLVED, LOSS_SLOTS};

use crate::{enrich::static_op_name, event::Clock, event::LossEvent};

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

    /// New losses since the previous poll, as one record; None when there were none.
    pub fn poll(&mut self, totals: Vec<u64>, now_ns: u64, clock: &Clock) -> Option<LossEvent> {
        let mut kinds = BTreeMap::new();
        let mut lost = 0;
        for (slot, (now, before)) in totals.iter().zip(self.last.iter()).enumerate() {
            let delta = now.saturating_sub(*before);
            if delta > 0 {
                *kinds.entry(slot_name(slot as u32)).or_insert(0) += delta;
                lost += delta;
            }
        }
        let from = self.window_start_ns;
        self.last = totals;
        self.window_start_ns = now_ns;
        (lost > 0).then(|| LossEvent {
            time: clock.rfc3339(now_ns),
            op: "loss",
            from: clock.rfc3339(from),
            to: clock.rfc3339(now_ns),
            lost,
            kinds,
        })
    }
}

fn slot_name(slot: u32) -> &'static str {
    match slot {
        LOSS_EXEC => "exec",
        LOSS_FORK => "fork",
        LOSS_EXIT => "exit",
        LOSS_PATH_UNRESOLVED => "path_unresolved",
        s if s < LOSS_SLOTS => static_op_name(s as u16),
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_only_new_losses_with_their_window() {
        let clock = Clock::now();
        let mut t = LossTracker::new(vec![0; 32], 100);
        let mut totals = vec![0; 32];
        assert!(t.poll(totals.clone(), 200, &clock).is_none());
        totals[watcher_common::op::UNLINK as usize] = 5;
        totals[LOSS_EXEC as usize] = 2;
        let ev = t.poll(totals.clone(), 300, &clock);
        let Some(ev) = ev else {
            panic!("no loss record")
        };
        assert_eq!(ev.lost, 7);
        assert_eq!(ev.kinds.get("unlink"), Some(&5));
        assert_eq!(ev.kinds.get("exec"), Some(&2));
        assert_eq!(ev.from, clock.rfc3339(200));
        assert!(t.poll(totals, 400, &clock).is_none());
    }
}
