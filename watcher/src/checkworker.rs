//! The one low-priority checker type: a thread of its own at the lowest priority the kernel
//! gives (`SCHED_IDLE`, nice 19, the idle I/O class), fed through a bounded queue the capture
//! path never waits on, with a stop bounded in time. The layer check
//! ([`crate::layercheck`]) and the `metadata-mismatch` worker ([`crate::mismatch`]) are both
//! one of these; what they check is a [`Checks`].
//!
//! The stop: [`CheckWorker::stop`] gives the worker until a deadline ([`STOP_BUDGET`] from
//! then), and its normal priority back (at `SCHED_IDLE` on a busy node it could get no CPU
//! at all before the deadline, and end without a word). The work in progress sees [`Stop::stopping`] and ends (a layer replay is abandoned
//! between two reads, a blob's hash too once past the deadline); then [`Checks::at_stop`] is
//! handed what is still queued, does what fits before the deadline (or nothing) and logs what
//! it did not check: nothing pending is forgotten without a word. A worker that has not
//! ended a second after the deadline is left to end with the process (logged).
//!
//! Queue drops are counted in the [`Feed`] and taken by whoever reports them
//! ([`CheckWorker::take_dropped`], every interval), never only the first.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// How long a stop gives a worker: to notice, to check what it can of what is pending, and
/// to log the rest. Well within the unit's `TimeoutStopSec` (60 s), which also covers the
/// drain of the ring buffer and the store's last commit.
pub const STOP_BUDGET: Duration = Duration::from_secs(3);

/// How long after the deadline a stop still waits for the thread before leaving it.
const STOP_MARGIN: Duration = Duration::from_secs(1);

/// The longest the worker sleeps without looking at what is due.
const TICK: Duration = Duration::from_millis(250);

/// The stop signal and its deadline, as the work sees them.
#[derive(Debug, Default)]
pub struct Stop {
    flag: AtomicBool,
    deadline: OnceLock<Instant>,
}

impl Stop {
    /// Whether the daemon is stopping: no new long work; work under way ends soon.
    pub fn stopping(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The flag itself, for code that polls it between reads.
    pub fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    /// Whether the stop's deadline has passed (false while not stopping).
    pub fn past_deadline(&self) -> bool {
        self.deadline.get().is_some_and(|d| Instant::now() >= *d)
    }

    fn begin(&self, deadline: Instant) {
        let _ = self.deadline.set(deadline);
        self.flag.store(true, Ordering::SeqCst);
    }
}

/// What a worker checks: messages in, work when due, what is left at a stop.
pub trait Checks: Send + 'static {
    /// What the queue carries.
    type Msg: Send + 'static;
    /// A message from the queue (long work polls `stop`).
    fn message(&mut self, msg: Self::Msg, stop: &Stop);
    /// How long until work is due (None: nothing waits for a time).
    fn next_due(&self) -> Option<Duration> {
        None
    }
    /// Does the work that is due.
    fn run_due(&mut self, _stop: &Stop) {}
    /// At the stop: `queued` was still in the queue. Do what fits before the deadline
    /// ([`Stop::past_deadline`]) and log what was not checked.
    fn at_stop(&mut self, queued: Vec<Self::Msg>, stop: &Stop);
}

/// The sending side: a bounded queue that never waits, counting what it could not take.
pub struct Feed<M> {
    tx: SyncSender<M>,
    dropped: Arc<AtomicU64>,
}

impl<M> Clone for Feed<M> {
    fn clone(&self) -> Self {
        Feed {
            tx: self.tx.clone(),
            dropped: Arc::clone(&self.dropped),
        }
    }
}

impl<M> Feed<M> {
    /// Queues `msg`, worth `units` (events, snapshots) when counted as dropped. False when
    /// the queue is full (counted) or the worker has ended.
    pub fn send(&self, msg: M, units: u64) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(units, Ordering::Relaxed);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// A running worker.
pub struct CheckWorker<M> {
    name: &'static str,
    feed: Option<Feed<M>>,
    dropped: Arc<AtomicU64>,
    stop: Arc<Stop>,
    /// The thread's id (0 until it has started).
    tid: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Disconnected when the thread has ended.
    ended: Option<Receiver<()>>,
}

impl<M: Send + 'static> CheckWorker<M> {
    /// Starts thread `name` (also the log's prefix) running `checks`, fed through a queue of
    /// `queue` messages.
    pub fn start<C: Checks<Msg = M>>(
        name: &'static str,
        queue: usize,
        mut checks: C,
    ) -> anyhow::Result<CheckWorker<M>> {
        let (tx, rx) = sync_channel(queue);
        let stop = Arc::new(Stop::default());
        let stopping = Arc::clone(&stop);
        let (ended_tx, ended) = sync_channel::<()>(0);
        let tid = Arc::new(AtomicU32::new(0));
        let thread_tid = Arc::clone(&tid);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                let id = unsafe { libc::syscall(libc::SYS_gettid) };
                let id = u32::try_from(id).unwrap_or(0);
                // Lowered before the id is published, and the stop flag read after (both
                // SeqCst, as in `stop`): a stop either sees the id of a lowered thread and
                // restores it, or this thread sees the stop and restores itself.
                set_priority(name, id, Priority::Idle);
                thread_tid.store(id, Ordering::SeqCst);
                if stopping.flag().load(Ordering::SeqCst) {
                    set_priority(name, id, Priority::Normal);
                }
                work(&mut checks, &rx, &stopping);
                thread_tid.store(0, Ordering::Relaxed);
                drop(ended_tx);
            })
            .with_context(|| format!("starting the {name} thread"))?;
        let dropped = Arc::new(AtomicU64::new(0));
        Ok(CheckWorker {
            name,
            feed: Some(Feed {
                tx,
                dropped: Arc::clone(&dropped),
            }),
            dropped,
            stop,
            tid,
            thread: Some(thread),
            ended: Some(ended),
        })
    }

    /// The queue's sending side (None once stopped).
    pub fn feed(&self) -> Option<Feed<M>> {
        self.feed.clone()
    }

    /// Queues `msg` (see [`Feed::send`]).
    pub fn send(&self, msg: M, units: u64) -> bool {
        self.feed.as_ref().is_some_and(|f| f.send(msg, units))
    }

    /// What the queue dropped since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// Stops the worker within `budget` (see the module docs); waits at most `budget` and a
    /// second for its thread.
    pub fn stop(&mut self, budget: Duration) {
        let started = Instant::now();
        self.stop.begin(started + budget);
        // The stop's work (bounded by the deadline) runs at normal priority: at SCHED_IDLE it
        // may get no CPU at all on a busy node.
        let running = self
            .ended
            .as_ref()
            .is_some_and(|rx| rx.try_recv() == Err(std::sync::mpsc::TryRecvError::Empty));
        if running {
            set_priority(self.name, self.tid.load(Ordering::SeqCst), Priority::Normal);
        }
        drop(self.feed.take());
        let ended = self
            .ended
            .take()
            .map(|rx| rx.recv_timeout(budget + STOP_MARGIN))
            .is_none_or(|r| r != Err(RecvTimeoutError::Timeout));
        let Some(t) = self.thread.take() else { return };
        if !ended {
            log::warn!(
                "{}: did not stop within {:?}; left to end with the process",
                self.name,
                budget + STOP_MARGIN
            );
            return;
        }
        if t.join().is_err() {
            log::error!("{}: its thread panicked", self.name);
        }
        log::debug!("{}: stopped in {:?}", self.name, started.elapsed());
    }
}

impl<M> Drop for CheckWorker<M> {
    fn drop(&mut self) {
        // Not stopped explicitly: the thread sees the flag and ends; nobody waits for it.
        self.stop.begin(Instant::now());
    }
}

fn work<C: Checks>(checks: &mut C, rx: &Receiver<C::Msg>, stop: &Stop) {
    while !stop.stopping() {
        let wait = checks.next_due().map_or(TICK, |d| d.min(TICK));
        match rx.recv_timeout(wait) {
            Ok(msg) => checks.message(msg, stop),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if !stop.stopping() {
            checks.run_due(stop);
        }
    }
    let queued: Vec<C::Msg> = rx.try_iter().collect();
    checks.at_stop(queued, stop);
}

/// ioprio_set(2)'s `which` for one thread, and the classes used (the value is class << 13 |
/// level).
const IOPRIO_WHO_PROCESS: libc::c_long = 1;
const IOPRIO_IDLE: libc::c_long = 3 << 13;
const IOPRIO_BEST_EFFORT_NORMAL: libc::c_long = (2 << 13) | 4;

/// The two priorities a checker runs at.
#[derive(Clone, Copy)]
enum Priority {
    /// As low as it goes: `SCHED_IDLE`, nice 19, the idle I/O class (while it works).
    Idle,
    /// The normal one: `SCHED_OTHER`, nice 0, the best-effort I/O class (for its stop).
    Normal,
}

/// Gives the worker thread `tid` the priority `to`. Best effort (a refused scheduling class
/// is logged at debug level).
fn set_priority(name: &str, tid: u32, to: Priority) {
    if tid == 0 {
        return;
    }
    let (policy, nice, ioprio, what) = match to {
        Priority::Idle => (libc::SCHED_IDLE, 19, IOPRIO_IDLE, "SCHED_IDLE"),
        Priority::Normal => (
            libc::SCHED_OTHER,
            0,
            IOPRIO_BEST_EFFORT_NORMAL,
            "normal priority for the stop",
        ),
    };
    // Zeroed rather than a struct literal: musl's sched_param has more fields than glibc's
    // (the package's static build is musl). The raw syscall, because musl's
    // sched_setscheduler() is a stub that always fails with ENOSYS.
    // SAFETY: sched_param is plain integers; all zero is a valid value (priority 0).
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: `tid` is our own worker thread, still running (the callers: the thread itself,
    // or `stop` having checked); `param` is a valid sched_param that outlives the call.
    let set = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            libc::c_long::from(tid),
            policy,
            &param as *const libc::sched_param,
        )
    };
    if set != 0 {
        log::debug!(
            "{name}: {what} refused: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: plain syscalls on that thread's id; a failure changes nothing.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            libc::c_long::from(tid),
            ioprio,
        );
    }
}

/// The names of `items` for a log line: the first `max`, escaped by the caller, and how many
/// more.
pub fn some_of(items: &[String], max: usize) -> String {
    let mut s = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        s.push_str(&format!(" and {} more", items.len() - max));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Each message is a check taking 200 ms (polling the stop); at the stop what is queued
    /// is worked through until the deadline, the rest is counted as not checked.
    struct Slow {
        done: Arc<Mutex<Vec<u32>>>,
        skipped: Arc<Mutex<Vec<u32>>>,
    }

    impl Slow {
        fn check(&self, n: u32, stop: &Stop) -> bool {
            for _ in 0..20 {
                if stop.past_deadline() {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            self.done.lock().unwrap().push(n);
            true
        }
    }

    impl Checks for Slow {
        type Msg = u32;
        fn message(&mut self, n: u32, stop: &Stop) {
            if !self.check(n, stop) {
                self.skipped.lock().unwrap().push(n);
            }
        }
        fn at_stop(&mut self, queued: Vec<u32>, stop: &Stop) {
            for n in queued {
                if !self.check(n, stop) {
                    self.skipped.lock().unwrap().push(n);
                }
            }
        }
    }

    #[test]
    fn a_stop_is_bounded_and_says_what_it_skipped_and_drops_are_counted() {
        let done = Arc::new(Mutex::new(Vec::new()));
        let skipped = Arc::new(Mutex::new(Vec::new()));
        let mut w = CheckWorker::start(
            "test-check",
            100,
            Slow {
                done: Arc::clone(&done),
                skipped: Arc::clone(&skipped),
            },
        )
        .unwrap();
        // 100 checks of 200 ms each: 20 s of work queued; 5 more do not fit the queue.
        let sent = (0..105).filter(|&n| w.send(n, 1)).count();
        assert!(sent <= 101, "{sent}");
        assert_eq!(w.take_dropped(), 105 - sent as u64);
        assert_eq!(w.take_dropped(), 0, "taken once");
        let started = Instant::now();
        w.stop(Duration::from_secs(1));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "the stop took {took:?}");
        let (done, skipped) = (done.lock().unwrap(), skipped.lock().unwrap());
        assert_eq!(
            done.len() + skipped.len(),
            sent,
            "every queued check is either made or reported skipped"
        );
        assert!(!skipped.is_empty());
    }
}
