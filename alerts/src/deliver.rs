//! Delivery: one worker thread per sink, reading the outbox and sending.
//!
//! * Order: per target, revisions go out in outbox order (`seq`). A worker keeps a cursor
//!   per target (the last `seq` it finished); the next delivery is the first pending one
//!   after it. A failing head is retried before anything behind it, so one rule's alerts
//!   arrive in the order they were raised. Targets are independent: one dead instance of an
//!   Alertmanager pair does not hold back the other.
//! * Retries: forever (an alert waits in the outbox as long as it takes; the outbox bound
//!   applies), after 1 s, doubling up to 5 min, ±20 % jitter so that a fleet of nodes does
//!   not retry in step; a receiver's `Retry-After` (or a robot's throttling code) is a
//!   minimum wait, up to an hour.
//! * Rate: a token bucket per sink (`rate_per_minute`; the robots default to 20): bursts of
//!   a tenth of the rate, and never more than the rate in any minute.
//! * Alertmanager: alerts delivered and still active are posted again every
//!   [`FormatOptions::resend_every`] (a batch per target), so that they stay active and an
//!   instance that restarted or joined learns them again.
//! * Results (delivered, failed with the next attempt's time, skipped) go to the store
//!   writer through a [`ResultSink`]; the worker does not wait for them to be committed (its
//!   cursor already knows). After a restart, what was delivered but not yet recorded is sent
//!   again: delivery is at least once; webhook receivers deduplicate by `webhook-id`.
//! * Capture never waits on any of this: workers only read the database and hand results to
//!   the writer's queue.
//! * A reload replaces the workers ([`Delivery::replace`]) without sending anything twice: the
//!   new worker of a sink of the same name waits for the old one to finish the request it is
//!   making and takes over its per-target cursors (and backoff), so what the old one delivered
//!   and handed over, committed yet or not, is not sent again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ctrwatch_config::SinkKind;
use ctrwatch_event::time::now_ns;

use crate::alert::{Alert, AlertBody};
use crate::http::Client;
use crate::outbox::{DeliveryResult, Outbox, OutboxWrite, Pending, ResultKind};
use crate::sinks::{FormatOptions, Outcome, Response, Sink, Target, alertmanager};

/// Where workers hand their results: the store writer's queue in the daemon.
pub trait ResultSink: Send + Sync {
    /// Hands over one result. False when the writer is gone (the daemon is stopping): the
    /// result is lost, and the delivery is repeated after the next start.
    fn send(&self, write: OutboxWrite) -> bool;
}

/// Delivery settings that are not in the configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryOptions {
    /// Formats (Alertmanager's alert lifetime and re-send interval).
    pub format: FormatOptions,
    /// The outbox is looked at this often even when nobody wakes the workers.
    pub poll: Duration,
    /// First retry delay.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Longest wait a receiver's `Retry-After` can impose.
    pub retry_after_max: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            format: FormatOptions::default(),
            poll: Duration::from_secs(30),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            retry_after_max: Duration::from_secs(3600),
        }
    }
}

impl DeliveryOptions {
    /// The defaults, with `CTRWATCH_ALERTMANAGER_LIFETIME` and `CTRWATCH_ALERTMANAGER_RESEND`
    /// (durations: `30s`, `1h`) from the environment when set: how long an event alert stays
    /// active in Alertmanager, and how often active alerts are re-sent (tests shorten them;
    /// docs/alerts.md). A value that is not a duration is an error.
    pub fn from_env() -> Result<DeliveryOptions, String> {
        let mut o = DeliveryOptions::default();
        let read = |name: &str| -> Result<Option<Duration>, String> {
            match std::env::var(name) {
                Ok(v) => humantime::parse_duration(&v)
                    .map(Some)
                    .map_err(|e| format!("{name}={v:?} is not a duration ({e})")),
                Err(_) => Ok(None),
            }
        };
        if let Some(d) = read("CTRWATCH_ALERTMANAGER_LIFETIME")? {
            o.format.alert_lifetime =
                d.clamp(Duration::from_secs(1), Duration::from_secs(30 * 86_400));
        }
        if let Some(d) = read("CTRWATCH_ALERTMANAGER_RESEND")? {
            // Between a second and a day: an Instant plus more could overflow (a panic).
            o.format.resend_every = d.clamp(Duration::from_secs(1), Duration::from_secs(86_400));
        }
        Ok(o)
    }
}

struct Shared {
    stop: AtomicBool,
    /// Every worker of the delivery was started: they may begin (and wait for the workers
    /// they replace). Until then a worker waits; a start that failed part-way stops them.
    begun: AtomicBool,
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Shared {
    /// Waits until the delivery's workers were all started (true) or it was stopped (false):
    /// a start that failed part-way must not leave a worker waiting for the worker it was to
    /// replace, which keeps running.
    fn wait_for_begin(&self) -> bool {
        let Ok(guard) = self.generation.lock() else {
            return false;
        };
        let waited = self.cv.wait_while(guard, |_| {
            !self.begun.load(Ordering::Relaxed) && !self.stop.load(Ordering::Relaxed)
        });
        let begin = !self.stop.load(Ordering::Relaxed);
        drop(waited);
        begin
    }

    fn wake(&self) {
        if let Ok(mut g) = self.generation.lock() {
            *g = g.wrapping_add(1);
        }
        self.cv.notify_all();
    }

    fn generation(&self) -> u64 {
        self.generation.lock().map(|g| *g).unwrap_or(0)
    }

    /// Sleeps until `deadline`, a wake-up after `seen`, or stop.
    fn wait(&self, seen: u64, deadline: Instant) {
        let Ok(guard) = self.generation.lock() else {
            return;
        };
        let timeout = deadline.saturating_duration_since(Instant::now());
        let _ = self.cv.wait_timeout_while(guard, timeout, |g| {
            *g == seen && !self.stop.load(Ordering::Relaxed)
        });
    }
}

/// Wakes the workers: new outbox entries are committed.
#[derive(Clone)]
pub struct Waker(Arc<Shared>);

impl Waker {
    /// Tells every worker to look at the outbox now.
    pub fn wake(&self) {
        self.0.wake();
    }
}

/// What a worker knew of one target when it ended: handed to the worker that replaces it.
#[derive(Clone, Debug)]
struct TargetHandOver {
    shown: String,
    cursor: i64,
    failures: u32,
    not_before: Option<Instant>,
    next_resend: Option<Instant>,
}

/// Between a retired worker and the one of the same sink that replaces it: the old one puts
/// its targets' state here when it ends (also when it panics: see `Drop for Worker`); the new
/// one waits for it before it reads the outbox.
#[derive(Default)]
struct Baton {
    /// `Some` once the worker ended.
    ended: Mutex<Option<Vec<TargetHandOver>>>,
    cv: Condvar,
}

impl Baton {
    fn finish(&self, targets: Vec<TargetHandOver>) {
        if let Ok(mut ended) = self.ended.lock() {
            *ended = Some(targets);
        }
        self.cv.notify_all();
    }

    /// Waits until the worker ended; its targets' state. Not cut short by a stop: a worker
    /// retired before its predecessor ended must still hand that state on (a second reload
    /// in the window), and the predecessor ends within its request's timeout.
    fn wait(&self) -> Vec<TargetHandOver> {
        let Ok(mut ended) = self.ended.lock() else {
            return Vec::new();
        };
        loop {
            if let Some(targets) = ended.as_ref() {
                return targets.clone();
            }
            ended = match self.cv.wait(ended) {
                Ok(e) => e,
                Err(_) => return Vec::new(),
            };
        }
    }
}

/// The running workers.
pub struct Delivery {
    shared: Arc<Shared>,
    /// Each worker's sink name, thread, and where it hands over when it ends.
    workers: Vec<(String, JoinHandle<()>, Arc<Baton>)>,
}

impl Delivery {
    /// Starts one worker per sink on the outbox of the store at `store`. `clients[i]` is
    /// `sinks[i]`'s HTTP client.
    pub fn start(
        sinks: Vec<(Sink, Client)>,
        store: &std::path::Path,
        results: Arc<dyn ResultSink>,
        opts: DeliveryOptions,
    ) -> std::io::Result<Delivery> {
        Delivery::start_after(sinks, store, results, opts, None)
    }

    /// Starts the workers of a reload's sinks to take over from `previous` (the running
    /// workers, left running: [`Delivery::retire`] them once this succeeded). The new worker
    /// of a sink of the same name first waits, on its own thread, for the old one to end, and
    /// goes on from where it was: per target (same URL as shown), past what it finished
    /// (delivered, skipped, given up), with its backoff. So a delivery in flight at the reload
    /// is not made again by the new worker, and nothing it finished is sent twice while its
    /// result waits to be committed. A sink that is new or renamed starts from the outbox.
    ///
    /// On an error (a worker's thread could not be started) nothing changed: `previous` keeps
    /// delivering, and the workers already started end at once, without waiting for
    /// `previous`'s (they have not begun; the caller reports the error).
    pub fn replace(
        previous: &Delivery,
        sinks: Vec<(Sink, Client)>,
        store: &std::path::Path,
        results: Arc<dyn ResultSink>,
        opts: DeliveryOptions,
    ) -> std::io::Result<Delivery> {
        Delivery::start_after(sinks, store, results, opts, Some(previous))
    }

    fn start_after(
        sinks: Vec<(Sink, Client)>,
        store: &std::path::Path,
        results: Arc<dyn ResultSink>,
        opts: DeliveryOptions,
        previous: Option<&Delivery>,
    ) -> std::io::Result<Delivery> {
        Delivery::start_with(sinks, store, results, opts, previous, &mut |name, work| {
            std::thread::Builder::new()
                .name(format!("alerts-{}", short(name)))
                .spawn(work)
        })
    }

    /// [`Delivery::start_after`] with the threads started by `spawn` (a test makes it fail).
    fn start_with(
        sinks: Vec<(Sink, Client)>,
        store: &std::path::Path,
        results: Arc<dyn ResultSink>,
        opts: DeliveryOptions,
        previous: Option<&Delivery>,
        spawn: &mut Spawn<'_>,
    ) -> std::io::Result<Delivery> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            begun: AtomicBool::new(false),
            generation: Mutex::new(0),
            cv: Condvar::new(),
        });
        let mut workers = Vec::new();
        for (sink, client) in sinks {
            let name = sink.name().to_owned();
            let baton = Arc::new(Baton::default());
            let mut worker = Worker::new(
                sink,
                client,
                store.to_path_buf(),
                Arc::clone(&results),
                opts.clone(),
                Arc::clone(&shared),
            );
            worker.baton = Some(Arc::clone(&baton));
            worker.take_over = previous.and_then(|p| {
                p.workers
                    .iter()
                    .find(|(n, _, _)| *n == name)
                    .map(|(_, _, b)| Arc::clone(b))
            });
            match spawn(&name, Box::new(move || worker.run())) {
                Ok(handle) => workers.push((name, handle, baton)),
                Err(e) => {
                    // The ones started end without having begun: none waits for the worker
                    // it was to replace (that one keeps running, the caller keeps
                    // `previous`), none reads the outbox.
                    shared.stop.store(true, Ordering::Relaxed);
                    shared.wake();
                    return Err(e);
                }
            }
        }
        shared.begun.store(true, Ordering::Relaxed);
        shared.wake();
        Ok(Delivery { shared, workers })
    }

    /// A handle that wakes the workers.
    pub fn waker(&self) -> Waker {
        Waker(Arc::clone(&self.shared))
    }

    /// Retires the workers without waiting for them (a reload replaced the sinks; the caller
    /// must not wait: it is the capture loop): each finishes the request it is making, if
    /// any, hands its result over, and ends, handing its place to the worker that replaces
    /// it ([`Delivery::replace`]), which then goes on from there.
    pub fn retire(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake();
    }

    /// Stops the workers: each finishes the request it is making, if any, and stops. Waits at
    /// most `grace`; a worker still waiting for a slow receiver then is left to end with the
    /// process (its delivery is repeated after the next start).
    pub fn stop(self, grace: Duration) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake();
        let deadline = Instant::now() + grace;
        for (name, handle, _) in self.workers {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                log::info!(
                    "alerts: sink {}: still waiting for a receiver at stop; its delivery is \
                     repeated after the next start",
                    ctrwatch_event::escape(&name)
                );
            }
        }
    }
}

/// Starts a worker's thread: its sink's name, and what it runs.
type Spawn<'a> = dyn FnMut(&str, Box<dyn FnOnce() + Send>) -> std::io::Result<JoinHandle<()>> + 'a;

/// Thread names are at most 15 bytes.
fn short(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(8)
        .collect()
}

/// Exponential backoff with jitter: `min × 2^(failures-1)`, at most `max`, ±20 %.
pub fn backoff(failures: u32, min: Duration, max: Duration, unit_random: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let base = min.saturating_mul(1u32 << exp).min(max);
    let factor = 0.8 + 0.4 * unit_random.clamp(0.0, 1.0);
    base.mul_f64(factor)
}

/// A token bucket: at most `rate` sends in any minute, in bursts of a tenth of it.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate_per_minute`.
    pub fn new(rate_per_minute: u32, now: Instant) -> TokenBucket {
        let rate = f64::from(rate_per_minute.max(1));
        let burst = (rate / 10.0).floor().max(1.0);
        // The burst and a minute's refill together stay within the rate.
        let refill = if rate - burst >= 1.0 {
            rate - burst
        } else {
            rate
        };
        TokenBucket {
            capacity: burst,
            tokens: burst,
            per_sec: refill / 60.0,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        self.last = now;
    }

    /// Takes a token if there is one; else says when there will be.
    pub fn take(&mut self, now: Instant) -> Result<(), Instant> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.per_sec;
            Err(now + Duration::from_secs_f64(wait.max(0.001)))
        }
    }
}

struct TargetState {
    target: Target,
    /// The last `seq` finished (delivered, skipped, given up) by this process.
    cursor: i64,
    /// Failures in a row of the head.
    failures: u32,
    /// No attempt before this.
    not_before: Option<Instant>,
    /// Alertmanager: the next re-send of active alerts (None: due).
    next_resend: Option<Instant>,
}

struct Worker {
    sink: Sink,
    client: Client,
    store: std::path::PathBuf,
    outbox: Option<Outbox>,
    results: Arc<dyn ResultSink>,
    opts: DeliveryOptions,
    shared: Arc<Shared>,
    targets: Vec<TargetState>,
    bucket: Option<TokenBucket>,
    /// When the outbox last could not be read (logged once per stretch).
    outbox_failing: bool,
    /// Where this worker hands over when it ends.
    baton: Option<Arc<Baton>>,
    /// The retired worker of the same sink this one goes on from, once it ended.
    take_over: Option<Arc<Baton>>,
}

impl Drop for Worker {
    /// Also when the thread panics: the worker that replaces it must not wait forever.
    fn drop(&mut self) {
        if let Some(baton) = self.baton.take() {
            baton.finish(
                self.targets
                    .iter()
                    .map(|t| TargetHandOver {
                        shown: t.target.shown.clone(),
                        cursor: t.cursor,
                        failures: t.failures,
                        not_before: t.not_before,
                        next_resend: t.next_resend,
                    })
                    .collect(),
            );
        }
    }
}

/// What one look at a target did.
enum Step {
    /// Something was done: look again at once.
    Busy,
    /// Nothing to do before this instant (None: until woken or the poll interval).
    Idle(Option<Instant>),
}

impl Worker {
    fn new(
        sink: Sink,
        client: Client,
        store: std::path::PathBuf,
        results: Arc<dyn ResultSink>,
        opts: DeliveryOptions,
        shared: Arc<Shared>,
    ) -> Worker {
        let now = Instant::now();
        let targets = sink
            .targets
            .iter()
            .map(|t| TargetState {
                target: t.clone(),
                cursor: 0,
                failures: 0,
                not_before: None,
                next_resend: None,
            })
            .collect();
        let bucket = sink
            .config
            .rate_per_minute
            .map(|r| TokenBucket::new(r, now));
        Worker {
            sink,
            client,
            store,
            outbox: None,
            results,
            opts,
            shared,
            targets,
            bucket,
            outbox_failing: false,
            baton: None,
            take_over: None,
        }
    }

    /// Waits for the retired worker of the same sink to end, and goes on from its targets'
    /// state.
    fn take_over(&mut self) {
        let Some(previous) = self.take_over.take() else {
            return;
        };
        let ended = previous.wait();
        for t in &mut self.targets {
            if let Some(old) = ended.iter().find(|o| o.shown == t.target.shown) {
                t.cursor = t.cursor.max(old.cursor);
                t.failures = old.failures;
                t.not_before = old.not_before;
                t.next_resend = old.next_resend;
            }
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    fn run(mut self) {
        if !self.shared.wait_for_begin() {
            return;
        }
        self.take_over();
        while !self.stopping() {
            let seen = self.shared.generation();
            let mut busy = false;
            let mut wake_at = Instant::now() + self.opts.poll;
            for i in 0..self.targets.len() {
                if self.stopping() {
                    return;
                }
                match self.step(i) {
                    Step::Busy => busy = true,
                    Step::Idle(Some(at)) => wake_at = wake_at.min(at),
                    Step::Idle(None) => {}
                }
                if self.sink.config.kind == SinkKind::Alertmanager
                    && let Some(at) = self.resend(i)
                {
                    wake_at = wake_at.min(at);
                }
            }
            if !busy {
                self.shared.wait(seen, wake_at);
            }
        }
    }

    fn outbox(&mut self) -> Option<&Outbox> {
        if self.outbox.is_none() {
            match Outbox::open(&self.store) {
                Ok(o) => self.outbox = Some(o),
                Err(e) => {
                    if !self.outbox_failing {
                        log::warn!(
                            "alerts: sink {}: cannot read the outbox: {e}",
                            ctrwatch_event::escape(self.sink.name())
                        );
                        self.outbox_failing = true;
                    }
                    return None;
                }
            }
        }
        self.outbox.as_ref()
    }

    fn next_pending(&mut self, i: usize) -> Option<Pending> {
        let (sink, target, cursor) = (
            self.sink.name().to_owned(),
            self.targets[i].target.shown.clone(),
            self.targets[i].cursor,
        );
        let outbox = self.outbox()?;
        match outbox.next_pending(&sink, &target, cursor) {
            Ok(p) => {
                self.outbox_failing = false;
                p
            }
            Err(e) => {
                if !self.outbox_failing {
                    log::warn!(
                        "alerts: sink {}: cannot read the outbox: {e}",
                        ctrwatch_event::escape(&sink)
                    );
                    self.outbox_failing = true;
                }
                // Reopened at the next look (the store may have been replaced).
                self.outbox = None;
                None
            }
        }
    }

    fn report(&self, i: usize, p: &Pending, kind: ResultKind) {
        let _ = self
            .results
            .send(OutboxWrite::Result(Box::new(DeliveryResult {
                alert: p.id.clone(),
                sink: self.sink.name().to_owned(),
                target: self.targets[i].target.shown.clone(),
                rev: p.rev,
                kind,
                at_ns: now_ns(),
            })));
    }

    fn step(&mut self, i: usize) -> Step {
        let now = Instant::now();
        if let Some(at) = self.targets[i].not_before
            && now < at
        {
            return Step::Idle(Some(at));
        }
        let Some(p) = self.next_pending(i) else {
            return Step::Idle(None);
        };
        let body = match AlertBody::parse(&p.body) {
            Ok(b) => b,
            Err(e) => {
                log::error!(
                    "alerts: sink {}: alert {} has an unreadable body ({e}): given up",
                    ctrwatch_event::escape(self.sink.name()),
                    p.id
                );
                self.report(
                    i,
                    &p,
                    ResultKind::Unreadable {
                        error: format!("unreadable body: {e}"),
                    },
                );
                self.targets[i].cursor = p.seq;
                return Step::Busy;
            }
        };
        if !self.sink.sends_revision(&body) {
            self.report(i, &p, ResultKind::Skipped);
            self.targets[i].cursor = p.seq;
            return Step::Busy;
        }
        if let Some(bucket) = &mut self.bucket
            && let Err(at) = bucket.take(now)
        {
            return Step::Idle(Some(at));
        }
        let request = self.sink.request(
            &self.targets[i].target,
            &p.body,
            &body,
            now_ns(),
            &self.opts.format,
        );
        let answer = self.client.post(&request);
        let (outcome, status) = match &answer {
            Ok(resp) => (self.sink.judge(resp), Some(resp.status)),
            Err(e) => (
                Outcome::Failed {
                    error: self.sink.scrub(&e.0),
                    retry_after: None,
                },
                None,
            ),
        };
        match outcome {
            Outcome::Accepted => {
                let t = &mut self.targets[i];
                if t.failures > 0 {
                    log::info!(
                        "alerts: sink {} {}: delivering again after {} failed attempts",
                        ctrwatch_event::escape(self.sink.name()),
                        t.target.shown,
                        t.failures
                    );
                }
                t.failures = 0;
                t.not_before = None;
                t.cursor = p.seq;
                self.report(
                    i,
                    &p,
                    ResultKind::Delivered {
                        status: status.unwrap_or(200),
                    },
                );
                Step::Busy
            }
            Outcome::Failed { error, retry_after } => {
                let t = &mut self.targets[i];
                t.failures = t.failures.saturating_add(1);
                let mut delay = backoff(
                    t.failures,
                    self.opts.backoff_min,
                    self.opts.backoff_max,
                    fastrand::f64(),
                );
                if let Some(ra) = retry_after {
                    delay = delay.max(ra.min(self.opts.retry_after_max));
                }
                let not_before = Instant::now() + delay;
                t.not_before = Some(not_before);
                // First failures, then every power of two: an outage of hours logs a
                // dozen lines, not thousands.
                if t.failures.is_power_of_two() {
                    log::warn!(
                        "alerts: sink {} {}: alert {} rev {} not delivered ({error}); attempt {}, \
                         next in {:.1} s",
                        ctrwatch_event::escape(self.sink.name()),
                        t.target.shown,
                        p.id,
                        p.rev,
                        t.failures,
                        delay.as_secs_f64()
                    );
                }
                let next_ns = now_ns().saturating_add(i64::try_from(delay.as_nanos()).unwrap_or(0));
                self.report(
                    i,
                    &p,
                    ResultKind::Failed {
                        error,
                        status,
                        next_ns,
                    },
                );
                Step::Idle(Some(not_before))
            }
        }
    }

    /// Alertmanager: posts the delivered, still active alerts again when due. Returns when
    /// the next re-send is due.
    fn resend(&mut self, i: usize) -> Option<Instant> {
        let now = Instant::now();
        if self.targets[i].failures > 0 {
            // The target is down: the pending head's retries come first.
            return None;
        }
        if let Some(at) = self.targets[i].next_resend
            && now < at
        {
            return Some(at);
        }
        let now_wall = now_ns();
        let lifetime =
            i64::try_from(self.opts.format.alert_lifetime.as_nanos()).unwrap_or(i64::MAX);
        let (sink, target) = (
            self.sink.name().to_owned(),
            self.targets[i].target.shown.clone(),
        );
        let bodies = match self.outbox() {
            Some(o) => o
                .delivered_firing(&sink, &target, now_wall.saturating_sub(lifetime))
                .unwrap_or_default(),
            None => return None,
        };
        let active: Vec<AlertBody> = bodies
            .iter()
            .filter_map(|b| AlertBody::parse(b).ok())
            .filter(|b| alertmanager::is_active(b, now_wall, &self.opts.format))
            .collect();
        let mut ok = true;
        for chunk in active.chunks(64) {
            let request = alertmanager::request(
                &self.sink.config,
                &self.targets[i].target,
                chunk,
                now_wall,
                &self.opts.format,
            );
            let accepted = self
                .client
                .post(&request)
                .map(|r| self.sink.judge(&r) == Outcome::Accepted)
                .unwrap_or(false);
            if !accepted {
                ok = false;
                break;
            }
        }
        let next = if ok {
            if !active.is_empty() {
                log::debug!(
                    "alerts: sink {sink} {target}: re-sent {} active alerts",
                    active.len()
                );
            }
            now + self.opts.format.resend_every
        } else {
            now + self.opts.format.resend_every.min(Duration::from_secs(30))
        };
        self.targets[i].next_resend = Some(next);
        Some(next)
    }
}

/// One receiver's answer to a test alert.
#[derive(Clone, Debug)]
pub struct TestAnswer {
    /// The target (as shown).
    pub target: String,
    /// The answer, or why there was none (scrubbed).
    pub answer: Result<Response, String>,
    /// What it means.
    pub outcome: Outcome,
}

/// Sends `alert` to every target of `sink` now, through the same formatting, signing and
/// HTTP client as the workers (not through the outbox): `ctrwatch alert test`.
pub fn send_now(
    sink: &Sink,
    client: &Client,
    alert: &Alert,
    opts: &FormatOptions,
) -> Result<Vec<TestAnswer>, serde_json::Error> {
    let text = alert.body_json()?;
    let body = AlertBody::parse(&text)?;
    let mut answers = Vec::new();
    for target in &sink.targets {
        let request = sink.request(target, &text, &body, now_ns(), opts);
        let answer = client.post(&request).map_err(|e| sink.scrub(&e.0));
        let outcome = match &answer {
            Ok(r) => sink.judge(r),
            Err(e) => Outcome::Failed {
                error: e.clone(),
                retry_after: None,
            },
        };
        let answer = answer.map(|mut r| {
            r.body = sink.scrub(&r.body);
            r
        });
        answers.push(TestAnswer {
            target: target.shown.clone(),
            answer,
            outcome,
        });
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(backoff(1, min, max, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(2, min, max, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(4, min, max, 0.5), Duration::from_secs(8));
        assert_eq!(backoff(10, min, max, 0.5), Duration::from_secs(300));
        assert_eq!(backoff(1000, min, max, 0.5), Duration::from_secs(300));
        assert_eq!(backoff(1, min, max, 0.0), Duration::from_millis(800));
        assert_eq!(backoff(1, min, max, 1.0), Duration::from_millis(1200));
    }

    #[test]
    fn the_bucket_keeps_any_minute_within_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(20, t0);
        let mut sent = 0;
        let mut t = t0;
        // Try every 100 ms for a minute.
        for _ in 0..600 {
            if b.take(t).is_ok() {
                sent += 1;
            }
            t += Duration::from_millis(100);
        }
        assert!((18..=20).contains(&sent), "{sent} in the first minute");
        // Empty bucket: it says when the next token comes.
        let mut b = TokenBucket::new(20, t0);
        assert!(b.take(t0).is_ok() && b.take(t0).is_ok());
        let at = b.take(t0).err();
        assert!(
            at.is_some_and(|at| at > t0 && at <= t0 + Duration::from_secs(4)),
            "{at:?}"
        );
    }

    struct NoResults;

    impl ResultSink for NoResults {
        fn send(&self, _: OutboxWrite) -> bool {
            true
        }
    }

    fn webhook(name: &str) -> (Sink, Client) {
        let config = ctrwatch_config::SinkConfig {
            name: name.to_owned(),
            kind: SinkKind::Webhook,
            urls: vec!["http://127.0.0.1:9/hook".to_owned()],
            secret: None,
            min_severity: ctrwatch_config::Severity::Info,
            rules: None,
            headers: std::collections::BTreeMap::new(),
            bearer_token: None,
            ca_file: None,
            timeout: Duration::from_secs(5),
            rate_per_minute: None,
        };
        let key = crate::target_key::TargetKey::random().expect("a random key");
        (
            Sink::new(config, &key).expect("a webhook sink"),
            Client::new(Duration::from_secs(5), None).expect("an HTTP client"),
        )
    }

    /// A reload whose new workers could not all be started (the second thread is refused):
    /// the error is returned, the worker already started for sink `a` ends at once instead
    /// of waiting for the running worker of `a` (which keeps running until a later reload
    /// retires it), and the running delivery is untouched.
    #[test]
    fn a_replace_that_fails_part_way_leaves_nothing_waiting() {
        let store = std::env::temp_dir().join(format!(
            "ctrwatch-deliver-test-{}/no-such-store.db",
            std::process::id()
        ));
        let results: Arc<dyn ResultSink> = Arc::new(NoResults);
        let running = Delivery::start(
            vec![webhook("a")],
            &store,
            Arc::clone(&results),
            DeliveryOptions::default(),
        )
        .expect("the running delivery");
        let (ended_tx, ended_rx) = std::sync::mpsc::channel::<String>();
        let mut calls = 0;
        let failed = Delivery::start_with(
            vec![webhook("a"), webhook("b")],
            &store,
            Arc::clone(&results),
            DeliveryOptions::default(),
            Some(&running),
            &mut |name, work| {
                calls += 1;
                if calls > 1 {
                    return Err(std::io::Error::other("no more threads (test)"));
                }
                let (name, ended) = (name.to_owned(), ended_tx.clone());
                std::thread::Builder::new().spawn(move || {
                    work();
                    let _ = ended.send(name);
                })
            },
        );
        assert!(
            failed
                .as_ref()
                .is_err_and(|e| e.to_string().contains("no more threads")),
            "the reload's error is returned"
        );
        drop(failed);
        // Generous: the worker has nothing to wait for once the start failed.
        assert_eq!(
            ended_rx.recv_timeout(Duration::from_secs(60)).ok(),
            Some("a".to_owned()),
            "the started worker of sink a is still waiting for the running one"
        );
        // The running delivery still runs its worker.
        assert!(
            running.workers.iter().all(|(_, h, _)| !h.is_finished()),
            "the running delivery's worker ended"
        );
        running.stop(Duration::from_secs(10));
    }
}
