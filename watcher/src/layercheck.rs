//! The layer check: a committed layer's tar, replayed from the content store against its
//! snapshot directory (the audit's replay, [`ctrwatch_audit::layers`]), when containerd
//! commits it and, after an unclean stop, for the layers committed shortly before the crash.
//!
//! * At commit (`layer-damaged`, `opaque-leak`): the attribution sees a snapshot become
//!   committed when it reloads the metadata ([`CommitFeed::committed`]); the check replays
//!   that snapshot's layer. What it finds was there at commit, whoever made it — including
//!   the kernel's own overlay code and a file whose data never reached the disk — so no
//!   process is blamed: the alert says "no writer recorded", or names the last writer the
//!   history has for that path.
//! * After an unclean stop (`after-crash-verify`): once the attribution has read an
//!   instance's metadata ([`CommitFeed::instance`]), every layer committed from `window`
//!   before the last heartbeat on is replayed, and the audit's runtime-metadata checks run
//!   (sandboxes without their metadata, containers whose snapshot is gone): the daemon starts
//!   before containerd, so the operator hears it before containerd fails on it.
//!
//! The work is off the event loop, on a [`CheckWorker`] (one thread fed through a bounded
//! queue the capture path never waits on, at the lowest priority: `SCHED_IDLE`, nice 19, idle
//! I/O class; the `metadata-mismatch` worker is one too) and within a CPU budget
//! ([`CPU_SHARE`] of one core, measured on its own CPU clock): a check never competes with
//! containerd's unpacking nor with capture. At a stop the replay under way is abandoned and
//! nothing queued is started (a replay takes longer than a stop may); the log names each
//! check not made and the command that makes it (`ctrwatch audit`).
//!
//! A reload that changes the node's name or one of the rules does not replace the thread: it
//! hands it the new settings ([`LayerCheck::reconfigure`]), which it takes before its next
//! message. The replay under way ends by the settings it started with, what is queued is
//! checked by the new ones, and the after-crash verification (and what it already verified)
//! goes on: nothing committed before a reload goes unchecked, and nothing is checked twice.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ctrwatch_alerts::alert::{FileRef, MAX_SAMPLE_PATHS, history_command};
use ctrwatch_alerts::{Alert, Node, ResultSink};
use ctrwatch_audit::{Context, Finding, Outcome, layers};
use ctrwatch_config::{Config, RuleId, Severity};
use ctrwatch_containerd::{Model, RootLayout, SnapshotKind};
use ctrwatch_event::{ContainerdView, FileEvent, PathBytes, StorageKind, Verdict, format_rfc3339};

use crate::checkworker::{CheckWorker, Checks, Feed, STOP_BUDGET, Stop};

/// Messages waiting for the check thread at most: one per metadata reload that showed new
/// commits (an image's layers usually arrive in one or a few), so this is plenty; beyond it
/// the commits are not checked, and the log says so.
pub const QUEUE: usize = 1024;

/// The check's CPU budget: at most this share of one core, on average over a check.
pub const CPU_SHARE: f64 = 0.25;

/// A snapshot: (snapshotter, snapshotter key).
pub type SnapshotRef = (String, String);

/// What the check thread is asked to do.
pub enum Msg {
    /// These snapshots of `layout` are to be replayed: newly committed, or marked since.
    Committed {
        /// The containerd root and its snapshotters' layouts.
        layout: RootLayout,
        /// The snapshots to replay.
        snapshots: BTreeSet<SnapshotRef>,
        /// Why: said in the log line and the alert.
        trigger: Trigger,
    },
    /// The metadata of `layout` was read for the first time since the start.
    Instance {
        /// The containerd root and its snapshotters' layouts.
        layout: RootLayout,
    },
}

/// Why a committed layer is replayed: said in the log line and in the alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// containerd committed it.
    Commit,
    /// An opaque mark was set on one of its directories later, by anyone (the event rule
    /// judges only marks set by others than containerd, and without the tar; the replay
    /// judges every mark against the tar).
    OpaqueMark,
}

impl Trigger {
    fn when(self) -> &'static str {
        match self {
            Trigger::Commit => "at commit",
            Trigger::OpaqueMark => "after an opaque mark",
        }
    }
}

/// The snapshots (of an instance's root) whose replay is queued and not yet started: a new
/// request for one of them is absorbed by it (repeated opaque marks on one layer queue one
/// replay, not one each). The check thread takes a message's snapshots out when it starts
/// on it, so that a mark made during a replay queues the next one.
#[derive(Clone, Default)]
struct Queued(Arc<std::sync::Mutex<BTreeSet<(PathBuf, SnapshotRef)>>>);

impl Queued {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<(PathBuf, SnapshotRef)>> {
        // Every update is a single insert or remove: a panic elsewhere leaves it consistent.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Those of `snapshots` not already queued (now marked queued).
    fn add(&self, root: &Path, snapshots: BTreeSet<SnapshotRef>) -> BTreeSet<SnapshotRef> {
        let mut q = self.lock();
        snapshots
            .into_iter()
            .filter(|s| q.insert((root.to_path_buf(), s.clone())))
            .collect()
    }

    /// `snapshots` are no longer queued (started, or not queued after all).
    fn remove(&self, root: &Path, snapshots: &BTreeSet<SnapshotRef>) {
        let mut q = self.lock();
        for s in snapshots {
            q.remove(&(root.to_path_buf(), s.clone()));
        }
    }
}

/// The attribution's side of the check thread: a bounded queue it never waits on.
#[derive(Clone)]
pub struct CommitFeed {
    feed: Feed<Msg>,
    queued: Queued,
}

impl CommitFeed {
    /// `snapshots` of `layout` were just seen committed: queue their check.
    pub fn committed(&self, layout: &RootLayout, snapshots: BTreeSet<SnapshotRef>) {
        self.replay(layout, snapshots, Trigger::Commit);
    }

    /// An opaque mark was set on a directory of the committed `snapshot` of `layout`: queue
    /// its replay again.
    pub fn marked(&self, layout: &RootLayout, snapshot: SnapshotRef) {
        self.replay(layout, BTreeSet::from([snapshot]), Trigger::OpaqueMark);
    }

    /// Queued (what is already queued absorbs the request), or counted as dropped (reported
    /// by the daemon every interval: [`LayerCheck::take_dropped`]).
    fn replay(&self, layout: &RootLayout, snapshots: BTreeSet<SnapshotRef>, trigger: Trigger) {
        let snapshots = self.queued.add(&layout.root, snapshots);
        if snapshots.is_empty() {
            return;
        }
        let n = snapshots.len() as u64;
        let msg = Msg::Committed {
            layout: layout.clone(),
            snapshots: snapshots.clone(),
            trigger,
        };
        if !self.feed.send(msg, n) {
            self.queued.remove(&layout.root, &snapshots);
        }
    }

    /// The metadata of `layout` was read for the first time: the after-crash verification
    /// of that instance can run.
    pub fn instance(&self, layout: &RootLayout) {
        self.feed.send(
            Msg::Instance {
                layout: layout.clone(),
            },
            0,
        );
    }
}

/// One rule's setting for the check.
#[derive(Clone, Copy, Debug)]
struct Rule {
    enabled: bool,
    severity: Option<Severity>,
}

impl Rule {
    fn of(config: &Config, rule: RuleId) -> Rule {
        let r = config.rule(rule);
        Rule {
            enabled: r.enabled,
            severity: r.severity,
        }
    }
}

/// What the check thread needs.
#[derive(Clone)]
struct Settings {
    node: Node,
    layer_damaged: Rule,
    opaque_leak: Rule,
    after_crash: Rule,
    /// After an unclean stop: layers committed at or after this time (ns) are verified.
    after_crash_since_ns: Option<i64>,
    /// The history store, for the last writer of a damaged path.
    store: PathBuf,
}

impl Settings {
    /// `config`'s rules for the check; `since_ns`: the after-crash verification's start (from
    /// the daemon's start), kept only while `after-crash-verify` is on.
    fn of(config: &Config, node: Node, since_ns: Option<i64>, store: &Path) -> Settings {
        let after_crash = Rule::of(config, RuleId::AfterCrashVerify);
        Settings {
            node,
            layer_damaged: Rule::of(config, RuleId::LayerDamaged),
            opaque_leak: Rule::of(config, RuleId::OpaqueLeak),
            after_crash,
            after_crash_since_ns: since_ns.filter(|_| after_crash.enabled),
            store: store.to_path_buf(),
        }
    }

    /// Whether there is anything for the thread to do.
    fn any(&self) -> bool {
        self.layer_damaged.enabled
            || self.opaque_leak.enabled
            || self.after_crash_since_ns.is_some()
    }
}

/// A reload's settings, waiting for the check thread to take them before its next message.
#[derive(Clone, Default)]
struct NewSettings(Arc<std::sync::Mutex<Option<Settings>>>);

impl NewSettings {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Settings>> {
        // Every update replaces the value whole: a panic elsewhere leaves it consistent.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The check thread and its queue.
pub struct LayerCheck {
    worker: CheckWorker<Msg>,
    queued: Queued,
    /// The after-crash verification's start, as the daemon's start computed it (None: the
    /// previous stop was clean, or the rule was off at the start).
    after_crash_since_ns: Option<i64>,
    store: PathBuf,
    new_settings: NewSettings,
}

impl LayerCheck {
    /// Starts the check thread for `config`'s rules (None when `layer-damaged`,
    /// `opaque-leak` and `after-crash-verify` are all off), handing its alerts to `out`.
    /// `unclean`: the downtime of an unclean previous stop, from its last heartbeat (ns).
    pub fn start(
        config: &Config,
        node: Node,
        unclean: Option<(i64, i64)>,
        store: &Path,
        out: Arc<dyn ResultSink>,
    ) -> anyhow::Result<Option<LayerCheck>> {
        let window = config
            .rule(RuleId::AfterCrashVerify)
            .window
            .unwrap_or(Duration::from_secs(600));
        let settings = Settings::of(
            config,
            node,
            unclean.map(|(last_heartbeat, _)| last_heartbeat.saturating_sub(ns(window))),
            store,
        );
        if !settings.any() {
            return Ok(None);
        }
        let after_crash_since_ns = settings.after_crash_since_ns;
        let queued = Queued::default();
        let new_settings = NewSettings::default();
        let checks = LayerChecks {
            settings,
            new_settings: new_settings.clone(),
            out,
            verified: BTreeSet::new(),
            queued: queued.clone(),
        };
        Ok(Some(LayerCheck {
            worker: CheckWorker::start("layer-check", QUEUE, checks)?,
            queued,
            after_crash_since_ns,
            store: store.to_path_buf(),
            new_settings,
        }))
    }

    /// A reload's rules and node name: the thread takes them before its next message (the
    /// replay under way ends by the old ones; what is queued is checked by the new ones; the
    /// after-crash verification goes on while its rule is on). False when the new settings
    /// leave the thread nothing to do: the caller stops it.
    pub fn reconfigure(&self, config: &Config, node: Node) -> bool {
        let settings = Settings::of(config, node, self.after_crash_since_ns, &self.store);
        let any = settings.any();
        *self.new_settings.lock() = Some(settings);
        any
    }

    /// The queue's sending side, for the attribution.
    pub fn feed(&self) -> Option<CommitFeed> {
        Some(CommitFeed {
            feed: self.worker.feed()?,
            queued: self.queued.clone(),
        })
    }

    /// Committed snapshots not checked since the last call because the queue was full.
    pub fn take_dropped(&self) -> u64 {
        self.worker.take_dropped()
    }

    /// Stops the thread within [`STOP_BUDGET`]: a check under way is abandoned (its findings
    /// are not reported), nothing queued is started; the log names what was not checked.
    pub fn stop(&mut self) {
        self.worker.stop(STOP_BUDGET);
    }
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Keeps a check within [`CPU_SHARE`] of a core: after each piece of reading, sleeps as long
/// as needed for CPU time / wall time to stay within the share. Counts the CPU it used.
struct Budget<'s> {
    stop: &'s AtomicBool,
    cpu_at_start: Duration,
    started: Instant,
    slept: Duration,
}

impl<'s> Budget<'s> {
    fn new(stop: &'s AtomicBool) -> Budget<'s> {
        Budget {
            stop,
            cpu_at_start: thread_cpu(),
            started: Instant::now(),
            slept: Duration::ZERO,
        }
    }

    fn cpu(&self) -> Duration {
        thread_cpu().saturating_sub(self.cpu_at_start)
    }

    /// Sleeps what the budget asks for; false when the daemon is stopping.
    fn pace(&mut self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let allowed_wall = self.cpu().div_f64(CPU_SHARE);
        let wall = self.started.elapsed();
        if allowed_wall > wall {
            // In slices, so that a stop is noticed soon.
            let owed = (allowed_wall - wall).min(Duration::from_secs(1));
            std::thread::sleep(owed);
            self.slept += owed;
        }
        !self.stop.load(Ordering::Relaxed)
    }
}

/// A blob reader within the budget: paces every [`PACE_EVERY`] bytes; fails once the daemon
/// is stopping (the replay then ends, and its findings are dropped).
struct Paced<'b, 's, R> {
    inner: R,
    budget: &'b mut Budget<'s>,
    since_pace: usize,
}

const PACE_EVERY: usize = 1 << 20;

impl<R: Read> Read for Paced<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.since_pace >= PACE_EVERY {
            self.since_pace = 0;
            if !self.budget.pace() {
                return Err(std::io::Error::other("ctrwatch is stopping"));
            }
        }
        let n = self.inner.read(buf)?;
        self.since_pace += n;
        Ok(n)
    }
}

/// The check thread's state.
struct LayerChecks {
    settings: Settings,
    /// A reload's settings, taken before each message and at the stop.
    new_settings: NewSettings,
    out: Arc<dyn ResultSink>,
    /// Instances whose after-crash verification ran.
    verified: BTreeSet<PathBuf>,
    /// Shared with the feeds: what is queued.
    queued: Queued,
}

impl LayerChecks {
    /// The settings of the last reload, if one came since the last message.
    fn take_new_settings(&mut self) {
        if let Some(settings) = self.new_settings.lock().take() {
            self.settings = settings;
        }
    }
}

impl Checks for LayerChecks {
    type Msg = Msg;

    fn message(&mut self, msg: Msg, stop: &Stop) {
        self.take_new_settings();
        let settings = &self.settings;
        let alerts = match msg {
            Msg::Committed {
                layout,
                snapshots,
                trigger,
            } => {
                self.queued.remove(&layout.root, &snapshots);
                if !settings.layer_damaged.enabled && !settings.opaque_leak.enabled {
                    return;
                }
                at_commit(settings, &layout, &snapshots, trigger, stop.flag())
            }
            Msg::Instance { layout } => {
                let Some(since_ns) = settings.after_crash_since_ns else {
                    return;
                };
                if !self.verified.insert(layout.root.clone()) {
                    return;
                }
                after_crash(settings, &layout, since_ns, stop.flag())
            }
        };
        for a in alerts {
            match ctrwatch_alerts::outbox::AlertRecord::of(&a) {
                Ok(r) => {
                    if !self
                        .out
                        .send(ctrwatch_alerts::OutboxWrite::Alert(Box::new(r)))
                    {
                        log::warn!("layer check: the store writer has stopped; an alert is lost");
                    }
                }
                Err(e) => log::error!("layer check: cannot encode alert {}: {e}", a.id),
            }
        }
    }

    /// Nothing queued is started (a replay takes longer than a stop may): each is named.
    fn at_stop(&mut self, queued: Vec<Msg>, _stop: &Stop) {
        self.take_new_settings();
        for msg in queued {
            match msg {
                Msg::Committed {
                    layout,
                    snapshots,
                    trigger,
                } => {
                    if self.settings.layer_damaged.enabled || self.settings.opaque_leak.enabled {
                        not_checked(&layout, &snapshots, trigger.when());
                    }
                }
                Msg::Instance { layout } => {
                    if self.settings.after_crash_since_ns.is_some()
                        && !self.verified.contains(&layout.root)
                    {
                        log::warn!(
                            "layer check: stopping: the after-crash verification of {} was not \
                             made; `ctrwatch audit --root {0}` makes it",
                            ctrwatch_event::escape_path(&layout.root)
                        );
                    }
                }
            }
        }
    }
}

/// Logs that `snapshots` of `layout` were not checked (`when`) because the daemon stopped.
fn not_checked(layout: &RootLayout, snapshots: &BTreeSet<SnapshotRef>, when: &str) {
    let names: Vec<String> = snapshots
        .iter()
        .map(|(sn, key)| {
            format!(
                "{} {}",
                ctrwatch_event::escape(sn),
                ctrwatch_event::escape(key)
            )
        })
        .collect();
    log::warn!(
        "layer check: stopping: {} snapshot(s) of {} not checked {when}: {}; `ctrwatch audit \
         --root {1}` checks them",
        snapshots.len(),
        ctrwatch_event::escape_path(&layout.root),
        crate::checkworker::some_of(&names, 10),
    );
}

/// What one check replayed, for the log and the benchmark.
#[derive(Debug, Default)]
struct Checked {
    layers: u64,
    entries: u64,
    bytes: u64,
    cpu: Duration,
    wall: Duration,
    /// Reading the metadata (one `Model` load per check).
    load: Duration,
}

/// Replays every layer `ctx` plans (blob present: the tar against the directory; blob gone:
/// what needs no tar). None when the daemon stopped meanwhile.
fn replay(ctx: &Context, stop: &AtomicBool) -> Option<(Outcome, Checked)> {
    let mut budget = Budget::new(stop);
    let plan = layers::plan(ctx);
    let mut out = Outcome::default();
    for job in &plan.with_blob {
        match layers::open_blob(ctx, &job.blob) {
            Ok(file) => {
                let mut reader = Paced {
                    inner: std::io::BufReader::with_capacity(1 << 20, file),
                    budget: &mut budget,
                    since_pace: 0,
                };
                let o = layers::replay(ctx, job, &mut reader);
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                out.merge(o);
            }
            // Removed since the plan (garbage collection): what needs no tar.
            Err(e) => {
                log::debug!(
                    "layer check: blob {}: {e}",
                    ctrwatch_event::escape(&job.blob)
                );
                out.merge(layers::check_without_blob(ctx, job));
            }
        }
        if !budget.pace() {
            return None;
        }
    }
    for job in &plan.without_blob {
        out.merge(layers::check_without_blob(ctx, job));
    }
    let checked = Checked {
        layers: out.stats.layers,
        entries: out.stats.layer_entries,
        bytes: out.stats.layer_bytes,
        cpu: budget.cpu(),
        wall: budget.started.elapsed(),
        load: Duration::ZERO,
    };
    Some((out, checked))
}

/// The rule a replay finding belongs to at commit, if it is one to alert on: an opaque mark
/// the tar does not have is `opaque-leak`; anything else in the layer that its tar does not
/// explain is `layer-damaged`. Not: what the tar itself says (unsafe or unsupported entries,
/// a media type that lies), a blob discarded after unpack or that could not be read (an I/O
/// error says nothing about the layer), xattrs that could not be read.
fn commit_rule(f: &Finding) -> Option<RuleId> {
    if f.severity() == ctrwatch_audit::Severity::Info {
        return None;
    }
    match f.class {
        "layer-opaque-leak" => Some(RuleId::OpaqueLeak),
        "layer-media-type-mismatch"
        | "layer-tar-unsafe-path"
        | "layer-tar-unsupported"
        | "layer-blob-missing"
        | "layer-blob-unreadable"
        | "layer-xattrs-unchecked" => None,
        c if c.starts_with("layer-") => Some(RuleId::LayerDamaged),
        _ => None,
    }
}

fn at_commit(
    settings: &Settings,
    layout: &RootLayout,
    snapshots: &BTreeSet<SnapshotRef>,
    trigger: Trigger,
    stop: &AtomicBool,
) -> Vec<Alert> {
    let root = ctrwatch_event::escape_path(&layout.root);
    let loading = Instant::now();
    let model = match Model::load_layout(layout) {
        Ok(m) => m,
        Err(e) => {
            log::warn!("layer check of {root}: reading the metadata: {e}");
            return Vec::new();
        }
    };
    let load = loading.elapsed();
    let ctx = Context::for_snapshots(model, snapshots);
    let Some((outcome, mut checked)) = replay(&ctx, stop) else {
        not_checked(layout, snapshots, trigger.when());
        return Vec::new();
    };
    checked.load = load;
    let findings: Vec<(RuleId, Finding)> = outcome
        .findings
        .into_iter()
        .filter_map(|f| Some((commit_rule(&f)?, f)))
        .filter(|(rule, _)| match rule {
            RuleId::OpaqueLeak => settings.opaque_leak.enabled,
            _ => settings.layer_damaged.enabled,
        })
        .collect();
    let findings = still_there(layout, snapshots, findings);
    let findings = not_judged_by_events(&ctx, &settings.store, findings);
    log_checked(
        trigger.when(),
        &root,
        &ctx,
        snapshots,
        &checked,
        findings.len(),
    );
    let now_ns = ctrwatch_event::time::now_ns();
    let history_since = now_ns.saturating_sub(ns(Duration::from_secs(600)));
    alerts(
        settings,
        layout,
        findings,
        now_ns,
        history_since,
        trigger.when(),
    )
}

/// Findings of snapshots removed while they were replayed (an image removed right after its
/// pull: its directory went away under the replay) are not damage.
fn still_there(
    layout: &RootLayout,
    snapshots: &BTreeSet<SnapshotRef>,
    findings: Vec<(RuleId, Finding)>,
) -> Vec<(RuleId, Finding)> {
    if findings.is_empty() {
        return findings;
    }
    let Ok(model) = Model::load_layout(layout) else {
        return findings;
    };
    let present: BTreeSet<String> = snapshots
        .iter()
        .filter_map(|(sn, key)| {
            let b = model.snapshotters.get(sn)?.snapshots.get(key)?;
            (b.kind == SnapshotKind::Committed).then(|| format!("{sn}/{}", b.id))
        })
        .collect();
    findings
        .into_iter()
        .filter(|(_, f)| f.snapshot.as_ref().is_none_or(|s| present.contains(s)))
        .collect()
}

/// How long the check waits for the store to hold everything captured before its replay
/// ended (the writer commits, with a heartbeat, about once a second).
const STORED_WAIT: Duration = Duration::from_secs(5);

/// The check judges a layer as it was committed. A change a process made after the commit,
/// on the committed layer, was judged by the event rules (`foreign-change`, `opaque-leak`'s
/// event part) when it happened: the check would only say it again, later (it runs at the
/// lowest priority, seconds after the commit under load). So findings whose path the history
/// shows changed after the commit by anyone but the owning containerd are left to them.
/// Before asking, the check waits (at most [`STORED_WAIT`]) for the store's heartbeat to pass
/// the end of its replay: a change made while it read is then in the history.
fn not_judged_by_events(
    ctx: &Context,
    store: &Path,
    findings: Vec<(RuleId, Finding)>,
) -> Vec<(RuleId, Finding)> {
    if findings.is_empty() {
        return findings;
    }
    let replayed_ns = ctrwatch_event::time::now_ns();
    let writers = LastWriters::open(store);
    let deadline = Instant::now() + STORED_WAIT;
    while writers.stored_until_ns().is_some_and(|t| t < replayed_ns) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Commit time of each snapshot, by `<snapshotter>/<id>` (the findings' name for it).
    let committed_ns: BTreeMap<String, i64> = ctx
        .model
        .snapshotters
        .iter()
        .flat_map(|(name, sn)| {
            sn.snapshots
                .values()
                .filter_map(move |b| Some((format!("{name}/{}", b.id), system_ns(b.created_at?))))
        })
        .collect();
    findings
        .into_iter()
        .filter(|(_, f)| {
            let (Some(path), Some(at)) = (
                f.path.as_deref(),
                f.snapshot.as_ref().and_then(|s| committed_ns.get(s)),
            ) else {
                return true;
            };
            let Some(ev) = writers.of(path) else {
                return true;
            };
            let judged = ev.time_ns > *at
                && ev
                    .details
                    .containerd
                    .as_deref()
                    .is_some_and(|v| v.is_committed_layer() && v.verdict != Verdict::Owner);
            if judged {
                log::debug!(
                    "layer check: {} was changed after the commit by {} (the event rules' \
                     business): not reported again",
                    ctrwatch_event::escape(path),
                    ev.process.command_summary(80)
                );
            }
            !judged
        })
        .collect()
}

fn log_checked(
    when: &str,
    root: &str,
    ctx: &Context,
    snapshots: &BTreeSet<SnapshotRef>,
    checked: &Checked,
    problems: usize,
) {
    let keys: Vec<String> = snapshots
        .iter()
        .map(|(sn, key)| {
            let chain = ctx
                .model
                .snapshot_by_key(sn, key)
                .and_then(|i| i.chain_id)
                .unwrap_or_else(|| key.clone());
            format!(
                "{} {}",
                ctrwatch_event::escape(sn),
                ctrwatch_event::escape(&chain)
            )
        })
        .collect();
    log::info!(
        "layer check {when} of {root}: {} layer(s) replayed ({} tar entries, {} bytes, {:.3} s \
         CPU in {:.3} s): {problems} problem(s) (metadata read in {:.3} s); snapshots: {}",
        checked.layers,
        checked.entries,
        checked.bytes,
        checked.cpu.as_secs_f64(),
        checked.wall.as_secs_f64(),
        checked.load.as_secs_f64(),
        keys.join(", ")
    );
}

fn after_crash(
    settings: &Settings,
    layout: &RootLayout,
    since_ns: i64,
    stop: &AtomicBool,
) -> Vec<Alert> {
    let root = ctrwatch_event::escape_path(&layout.root);
    let loading = Instant::now();
    let model = match Model::load_layout(layout) {
        Ok(m) => m,
        Err(e) => {
            log::warn!("after-crash verification of {root}: reading the metadata: {e}");
            return Vec::new();
        }
    };
    // The snapshotter stamps a snapshot when it commits it (`createdat` of the committed
    // record): those from the window on were committed shortly before the crash, or while
    // nothing watched.
    let mut recent = BTreeSet::new();
    for (name, sn) in &model.snapshotters {
        for (key, b) in &sn.snapshots {
            let committed_ns = b.created_at.map(system_ns);
            if b.kind == SnapshotKind::Committed && committed_ns.is_some_and(|t| t >= since_ns) {
                recent.insert((name.clone(), key.clone()));
            }
        }
    }
    let load = loading.elapsed();
    let mut ctx = Context::for_snapshots(model, &recent);
    let Some((mut outcome, mut checked)) = replay(&ctx, stop) else {
        not_checked(layout, &recent, "after an unclean stop");
        return Vec::new();
    };
    checked.load = load;
    outcome.findings.retain(|f| commit_rule(f).is_some());
    // The runtime metadata containerd recovers from at its start.
    ctx.scope.everything = true;
    let runtime = ctrwatch_audit::runtime::check(&ctx);
    let mut findings: Vec<(RuleId, Finding)> = outcome
        .findings
        .into_iter()
        .chain(
            runtime
                .findings
                .into_iter()
                .filter(|f| f.severity() < ctrwatch_audit::Severity::Info),
        )
        .map(|f| (RuleId::AfterCrashVerify, f))
        .collect();
    findings = still_there_or_runtime(layout, &recent, findings);
    log_checked(
        &format!(
            "after an unclean stop (layers committed since {})",
            format_rfc3339(since_ns)
        ),
        &root,
        &ctx,
        &recent,
        &checked,
        findings.len(),
    );
    let now_ns = ctrwatch_event::time::now_ns();
    alerts(
        settings,
        layout,
        findings,
        now_ns,
        since_ns,
        "after an unclean stop",
    )
}

/// [`still_there`] for the layer findings; runtime findings (no snapshot) are kept.
fn still_there_or_runtime(
    layout: &RootLayout,
    snapshots: &BTreeSet<SnapshotRef>,
    findings: Vec<(RuleId, Finding)>,
) -> Vec<(RuleId, Finding)> {
    let (layer, other): (Vec<_>, Vec<_>) = findings
        .into_iter()
        .partition(|(_, f)| f.class.starts_with("layer-"));
    let mut out = still_there(layout, snapshots, layer);
    out.extend(other);
    out
}

fn system_ns(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => ns(d),
        Err(_) => 0,
    }
}

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The newest recorded operation on each host path, from the history store opened
/// read-only (the writer thread keeps writing it).
struct LastWriters {
    store: Option<ctrwatch_store::Store>,
}

impl LastWriters {
    fn open(path: &Path) -> LastWriters {
        let store = match ctrwatch_store::Store::open_read_only(path) {
            Ok(s) => Some(s),
            Err(e) => {
                log::debug!("layer check: the history is not readable: {e}");
                None
            }
        };
        LastWriters { store }
    }

    /// Everything captured before this time (ns) is in the store: the current run's last
    /// heartbeat.
    fn stored_until_ns(&self) -> Option<i64> {
        let run = self.store.as_ref()?.last_run().ok()??;
        Some(run.heartbeat_ns)
    }

    fn of(&self, host_path: &str) -> Option<FileEvent> {
        let store = self.store.as_ref()?;
        let q = ctrwatch_store::PathQuery {
            matching: ctrwatch_store::PathMatch::Host,
            limit: Some(1),
            ..ctrwatch_store::PathQuery::new(host_path.as_bytes())
        };
        store.history(&q).ok()?.into_iter().next()
    }
}

/// The findings as alerts: one per rule and snapshot (its problems counted, sampled), one
/// per runtime finding.
fn alerts(
    settings: &Settings,
    layout: &RootLayout,
    findings: Vec<(RuleId, Finding)>,
    now_ns: i64,
    history_since_ns: i64,
    when: &str,
) -> Vec<Alert> {
    if findings.is_empty() {
        return Vec::new();
    }
    let writers = LastWriters::open(&settings.store);
    let mut groups: BTreeMap<(RuleId, String), Vec<Finding>> = BTreeMap::new();
    for (rule, f) in findings {
        let subject = match (&f.snapshot, &f.path) {
            (Some(s), _) => s.clone(),
            (None, Some(p)) => format!("{} {p}", f.class),
            (None, None) => format!("{} {}", f.class, f.message),
        };
        groups.entry((rule, subject)).or_default().push(f);
    }
    let root = layout.root.to_string_lossy().into_owned();
    groups
        .into_iter()
        .map(|((rule, subject), mut group)| {
            // Worst first: the alert is named after it.
            group.sort_by_key(|f| f.severity());
            let rule_setting = match rule {
                RuleId::OpaqueLeak => settings.opaque_leak,
                RuleId::AfterCrashVerify => settings.after_crash,
                _ => settings.layer_damaged,
            };
            let severity = rule_setting.severity.unwrap_or_else(|| {
                if group[0].severity() <= ctrwatch_audit::Severity::Error {
                    rule.default_severity()
                } else {
                    Severity::Warning
                }
            });
            alert_of(
                settings,
                &writers,
                &layout.root,
                rule,
                severity,
                &format!("{} {root} {subject}", rule.name()),
                &group,
                now_ns,
                history_since_ns,
                when,
            )
        })
        .collect()
}

#[allow(clippy::too_many_arguments, reason = "one alert's parts, each named")]
fn alert_of(
    settings: &Settings,
    writers: &LastWriters,
    root: &Path,
    rule: RuleId,
    severity: Severity,
    key: &str,
    group: &[Finding],
    now_ns: i64,
    history_since_ns: i64,
    when: &str,
) -> Alert {
    let first = &group[0];
    let mut a = Alert::new(
        rule,
        severity,
        key,
        settings.node.clone(),
        now_ns,
        String::new(),
        String::new(),
    );
    a.count = group.len() as u64;
    let found_by = format!("the layer check {when} (a replay of the layer's tar)");
    let last = first.path.as_deref().and_then(|p| writers.of(p));
    if let Some(p) = &first.path {
        let path = PathBytes::from(p.as_bytes());
        a.file = Some(FileRef {
            path: path.clone(),
            inner_path: first
                .image_path
                .as_deref()
                .map(|i| PathBytes::from(i.as_bytes())),
        });
        a.command = history_command(&path, history_since_ns, now_ns);
    } else {
        // Not a file: the audit shows the whole story of the root.
        a.command = format!(
            "ctrwatch audit --root {}",
            ctrwatch_alerts::alert::shell_quote(&ctrwatch_event::escape_path(root))
        );
    }
    for f in group {
        if let Some(p) = &f.path
            && a.sample_paths.len() < MAX_SAMPLE_PATHS
        {
            let p = PathBytes::from(p.as_bytes());
            if !a.sample_paths.contains(&p) {
                a.sample_paths.push(p);
            }
        }
    }
    let writer = match &last {
        Some(ev) => format!(
            "last recorded writer of that path: {} at {} ({} {})",
            ev.process.command_summary(120),
            format_rfc3339(ev.time_ns),
            ev.op.name(),
            ev.details
                .containerd
                .as_deref()
                .map_or("", |v| v.verdict.name())
        ),
        None => "no writer recorded".to_owned(),
    };
    if first.snapshot.is_some() {
        let (snapshotter, snapshot_id) = first
            .snapshot
            .as_deref()
            .and_then(|s| s.split_once('/'))
            .map_or((None, None), |(sn, id)| {
                (Some(sn.to_owned()), id.parse::<u64>().ok())
            });
        a.containerd = Some(ContainerdView {
            root: PathBytes::from(root.as_os_str().as_encoded_bytes()),
            kind: StorageKind::Snapshot,
            namespace: first.namespace.clone(),
            snapshotter,
            snapshot_id,
            snapshot_key: first.snapshot_key.clone(),
            snapshot_kind: Some(SnapshotKind::Committed),
            layer_digest: first.layer.clone(),
            chain_id: first.snapshot_key.clone(),
            // As in events: names within the view's namespace (the audit says `ns/name`).
            images: first
                .images
                .iter()
                .map(|i| match &first.namespace {
                    Some(ns) => i.strip_prefix(&format!("{ns}/")).unwrap_or(i).to_owned(),
                    None => i.clone(),
                })
                .collect(),
            path: first
                .image_path
                .as_deref()
                .map(|i| PathBytes::from(i.as_bytes())),
            // No process made this change as far as the capture knows: the verdict is the
            // last recorded writer's when there is one, else `foreign` (not containerd's
            // unpacking: the tar does not explain it), and the reason says so.
            verdict: last
                .as_ref()
                .and_then(|ev| ev.details.containerd.as_deref().map(|v| v.verdict))
                .unwrap_or(Verdict::Foreign),
            reason: format!("found by {found_by}; {writer}"),
            ..ContainerdView::default()
        });
    }
    if let Some(ev) = last {
        a.process = Some(Arc::clone(&ev.process));
        a.events.push(ev);
    }
    let what = first
        .image_path
        .clone()
        .or_else(|| first.path.clone())
        .unwrap_or_default();
    let layer = match (&first.layer, first.images.is_empty()) {
        (Some(l), true) => format!(" in committed layer {l}"),
        (Some(l), false) => format!(" in committed layer {l} of {}", first.images.join(", ")),
        (None, _) => String::new(),
    };
    let more = if group.len() > 1 {
        format!(" ({} problems in this layer, this one first)", group.len())
    } else {
        String::new()
    };
    let head = match rule {
        RuleId::OpaqueLeak => format!(
            "opaque marker on {what}{layer} that its tar does not have: overlay hides the lower \
             layers' files under it"
        ),
        RuleId::AfterCrashVerify if first.snapshot.is_none() => format!(
            "after an unclean stop, containerd will fail to recover: {}",
            first.message
        ),
        RuleId::AfterCrashVerify => {
            format!("after an unclean stop: {what}{layer}: {}", first.message)
        }
        _ => format!("{what}{layer} no longer matches its tar: {}", first.message),
    };
    a.summary = ctrwatch_event::escape(&format!("{head}{more}; found by {found_by}; {writer}"));
    a.details.insert("class".into(), first.class.to_owned());
    let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
    for f in group {
        *by_class.entry(f.class).or_default() += 1;
    }
    a.details.insert(
        "classes".into(),
        by_class
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    a.details.insert("found_by".into(), found_by);
    a.details.insert("writer".into(), writer);
    for (k, v) in &first.facts {
        a.details
            .insert(format!("fact: {k}"), ctrwatch_event::escape(v));
    }
    if !first.remediation.is_empty() {
        a.details.insert(
            "remediation".into(),
            ctrwatch_event::escape(&first.remediation.join("\n")),
        );
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands for the check thread: takes a message's snapshots out of the queued set when
    /// it starts on it (as [`LayerChecks::message`] does), then waits for the test.
    struct Gate {
        got: Arc<std::sync::Mutex<Vec<BTreeSet<SnapshotRef>>>>,
        queued: Queued,
        open: Arc<AtomicBool>,
    }

    impl Checks for Gate {
        type Msg = Msg;
        fn message(&mut self, msg: Msg, stop: &Stop) {
            if let Msg::Committed {
                layout, snapshots, ..
            } = msg
            {
                self.queued.remove(&layout.root, &snapshots);
                while !self.open.load(Ordering::Relaxed) && !stop.stopping() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                self.got.lock().unwrap().push(snapshots);
            }
        }
        fn at_stop(&mut self, queued: Vec<Msg>, _stop: &Stop) {
            for m in queued {
                if let Msg::Committed { snapshots, .. } = m {
                    self.got.lock().unwrap().push(snapshots);
                }
            }
        }
    }

    /// 100 opaque marks on one committed layer while its replay waits queue one replay (two
    /// when the thread started on the first before the others came), not 100.
    #[test]
    fn repeated_marks_on_a_layer_queue_one_replay() {
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let open = Arc::new(AtomicBool::new(false));
        let queued = Queued::default();
        let mut worker = CheckWorker::start(
            "test-layer-check",
            QUEUE,
            Gate {
                got: Arc::clone(&got),
                queued: queued.clone(),
                open: Arc::clone(&open),
            },
        )
        .unwrap();
        let feed = CommitFeed {
            feed: worker.feed().unwrap(),
            queued,
        };
        let layout = RootLayout::new(Path::new("/var/lib/containerd"));
        let layer: SnapshotRef = ("overlayfs".into(), "sha256:abc".into());
        for _ in 0..100 {
            feed.marked(&layout, layer.clone());
        }
        open.store(true, Ordering::Relaxed);
        worker.stop(Duration::from_secs(5));
        let got = got.lock().unwrap();
        assert!(
            (1..=2).contains(&got.len()),
            "{} replays queued for one layer",
            got.len()
        );
        assert_eq!(worker.take_dropped(), 0);
    }

    #[test]
    fn commit_rules_split_opaque_marks_from_damage_and_skip_what_the_tar_says() {
        let f = |class: &'static str, sev| Finding::new(sev, class, "x");
        use ctrwatch_audit::Severity as S;
        assert_eq!(
            commit_rule(&f("layer-opaque-leak", S::Critical)),
            Some(RuleId::OpaqueLeak)
        );
        for damage in [
            "layer-file-truncated",
            "layer-file-missing",
            "layer-file-type",
            "layer-file-mode",
            "layer-whiteout-leak",
            "layer-overlay-xattr",
        ] {
            assert_eq!(
                commit_rule(&f(damage, S::Critical)),
                Some(RuleId::LayerDamaged),
                "{damage}"
            );
        }
        for not in [
            "layer-tar-unsafe-path",
            "layer-media-type-mismatch",
            "layer-blob-missing",
            "layer-blob-unreadable",
            "blob-digest-mismatch",
        ] {
            assert_eq!(commit_rule(&f(not, S::Warning)), None, "{not}");
        }
        assert_eq!(commit_rule(&f("layer-file-truncated", S::Info)), None);
    }

    #[test]
    fn the_budget_keeps_cpu_within_its_share() {
        let stop = AtomicBool::new(false);
        let mut b = Budget::new(&stop);
        // Busy for at most 50 ms (of CPU, at most: CPU time never exceeds wall time), then
        // paced once: the wall time since the start must have reached CPU / share.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let cpu = b.cpu();
        assert!(b.pace());
        assert!(
            b.started.elapsed() >= cpu.div_f64(CPU_SHARE),
            "cpu {cpu:?} wall {:?}",
            b.started.elapsed()
        );
        stop.store(true, Ordering::Relaxed);
        assert!(!b.pace());
    }
}
