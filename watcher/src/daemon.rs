//! `ctrwatch run`: the daemon. Watches like `watch`, and keeps every event, every loss record
//! and its own start/stop in the history store.
//!
//! The ring buffer is drained on the watch loop; SQLite writes happen on one writer thread fed
//! through a bounded queue, so a slow disk never stalls draining. When the queue is full the
//! event is counted, and the count becomes a `loss` record (kind `store_queue`): the history
//! says where it is incomplete instead of hiding it.
//!
//! A run is dated by capture itself: it begins when capture has really started (every program
//! attached, the roots set: [`Sink::capture_started`]), so the downtime gap since the previous
//! run ends there, and it ends when capture stopped ([`Sink::capture_stopped`]), once all that
//! was captured before has been stored. The heartbeat is the watch loop's watermark: everything
//! captured before it is committed (or counted) when the heartbeat is, so after a crash the
//! downtime from the last heartbeat covers whatever was not committed.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::mpsc::{
        Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use ctrwatch_alerts::target_key::TargetKey;
use ctrwatch_event::{Clock, FileEvent, LossEvent, LossKind, monotonic_ns};

use crate::{
    alerting::{DaemonAlerts, WriterAlerts},
    committed::{CommitProgress, CommittedThrough, HeldRing, ReplayFence, RingIdentity, RingPos},
    metrics::{DeliveryOutcome, METRICS},
    status::{ConfigStatus, LoadedConfig, StatusSource},
    store::{DaemonStore, StoreOptions},
    watch::{self, CaptureInfo, ReloadJob, Sink, StdoutSink, WatchOptions},
};

/// Events waiting for the writer: absorbs the writer's pauses (commits, checkpoints) under a
/// flood, ~0.6 s of 100 000 events/s. A queued event with its process and containerd
/// descriptions takes about 2.5 KiB (measured: 262 144 of them held ~650 MB), so a full
/// queue costs ~160 MB.
const QUEUE: usize = 65_536;
/// The writer commits at least this often (events are acknowledged when committed): a crash
/// loses at most the last second or so, which the next start records as downtime from the last
/// heartbeat (a watermark of the watch loop, every second, committed with the events before it).
/// Under a flood, fewer and larger commits are cheaper: every commit rewrites the newest
/// segment's index pages it touched, nearly all of them.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
// ...or when this many events are waiting in the open transaction (the store's batch).
use crate::store::COMMIT_BATCH;
/// Messages the writer takes from its queue between two looks at the clock.
const BURST: usize = 1024;
const PRUNE_EVERY: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
/// What `ctrwatch run` runs with: the flags and the configuration file, checked.
pub struct RunOptions {
    /// What is watched and how (shared with `ctrwatch watch`).
    pub watch: WatchOptions,
    /// The event store's database file (`--store`).
    pub store: PathBuf,
    /// The store's bounds: retention, size, commit cadence, readers' group.
    pub store_options: StoreOptions,
    /// Also print events to stdout, as `watch` does.
    pub echo: bool,
    /// Alerts: rules, sinks, the outbox bound (`--config`; without it the built-in defaults:
    /// every rule on, no sink, alerts kept in the outbox only).
    pub config: ctrwatch_config::Config,
    /// The configuration file read, if any (for `ctrwatch status`).
    pub config_file: Option<LoadedConfig>,
    /// Where `GET /metrics` is served (`[metrics] listen`, `--metrics-listen`); None: off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Reads the configuration again on SIGHUP (None: SIGHUP is logged and ignored).
    pub reload: Option<Reloader>,
}

/// Re-reads the configuration on SIGHUP: `run`'s settings from the same file with the same
/// flags over it, everything checked as at the start (on a blocking thread: the file may be
/// slow to read).
#[derive(Clone)]
pub struct Reloader(std::sync::Arc<dyn Fn() -> anyhow::Result<RunOptions> + Send + Sync>);

impl Reloader {
    /// A reloader that calls `read` at each SIGHUP.
    pub fn new(read: impl Fn() -> anyhow::Result<RunOptions> + Send + Sync + 'static) -> Self {
        Reloader(std::sync::Arc::new(read))
    }
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

/// The keys a reload cannot change while the daemon runs, and whether `new` changes them
/// from what the daemon started with (`old`): the store is open (its path and group), the
/// ring buffer allocated, the programs loaded (backend, protect). Everything else of the file
/// is applied live: roots and discovery, root refresh, trusted writers, secret masking, the
/// sinks, every rule and `[alerts]` (when their rules or the node's name change, the metadata
/// check's worker is restarted and the layer check's reconfigured), the metrics listener, the
/// log level and the retention.
pub fn restart_only_changes(old: &RunOptions, new: &RunOptions) -> Vec<&'static str> {
    let (o, n) = (&old.config, &new.config);
    [
        ("[store] path", old.store != new.store),
        (
            "[store] group",
            old.store_options.group != new.store_options.group,
        ),
        (
            "[watch] ring_buffer_mb",
            old.watch.ring_buffer_bytes != new.watch.ring_buffer_bytes,
        ),
        ("[watch] backend", o.watch.backend != n.watch.backend),
        ("[watch] protect", o.watch.protect != n.watch.protect),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

enum Msg {
    /// An event, and the end of the ring buffer record it came from when the reader holds
    /// the ring buffer until commits ([`crate::committed`]).
    Event(Box<FileEvent>, Option<RingPos>),
    /// The events of one record (a process's exit: one per file it left open after
    /// writing), in one message so that no commit between two messages splits them.
    #[allow(
        clippy::vec_box,
        reason = "each event stays boxed, as Msg::Event's: the writer hands the boxes to the thread that frees them"
    )]
    Events(Vec<Box<FileEvent>>, Option<RingPos>),
    /// Everything from the ring buffer's records ending at or before this position was handed
    /// over (the records that made no event included).
    Through(RingPos),
    /// The reader holds the ring buffer `RingIdentity` until commits: report them to it.
    HoldRing(RingIdentity, CommittedThrough),
    /// The reader holds much of the ring buffer: commit now rather than at the next second.
    CommitSoon,
    Loss(LossEvent),
    /// Everything captured before this instant is in the messages before this one: the
    /// heartbeat.
    Watermark(SystemTime),
    /// Capture stopped at this instant; the messages before this one are all it captured.
    Stopped(SystemTime),
    /// Outbox writes are queued: wakes a writer waiting for events.
    Wake,
}

/// Outbox writes (alerts, delivery results) waiting for the writer at most.
const OUTBOX_QUEUE: usize = 4096;

/// What the writer's outbox queue carries.
enum OutboxMsg {
    /// A write to apply.
    Write(ctrwatch_alerts::OutboxWrite),
    /// A reload replaced the sinks (and the outbox bound): the writes after this one are
    /// routed by this, and the outbox is reconciled with it first.
    Reroute(Box<WriterAlerts>),
    /// A reload changed the retention (`[store] retention_days`, `retention_mb`): applied
    /// by the next prune, which comes within seconds.
    Retention {
        age: Option<Duration>,
        bytes: Option<u64>,
    },
}

/// The writer's queue of outbox writes (alerts to keep, delivery results), apart from the
/// events: the writer empties it before each burst of events and commits each write at once,
/// so that under a flood an alert does not wait behind up to [`QUEUE`] events.
#[derive(Clone)]
struct OutboxQueue {
    tx: SyncSender<OutboxMsg>,
    wake: SyncSender<Msg>,
}

impl OutboxQueue {
    /// Queues a write (blocking while the queue is full: alerts are few and never dropped).
    /// False when the writer has stopped.
    fn send(&self, write: OutboxMsg) -> bool {
        if self.tx.send(write).is_err() {
            return false;
        }
        // A full event queue means the writer is busy: it looks at this queue before its next
        // burst anyway.
        let _ = self.wake.try_send(Msg::Wake);
        true
    }

    /// Queues a write without waiting: for the capture thread, which must never wait.
    fn try_send(&self, write: OutboxMsg) -> Result<(), TrySendError<OutboxMsg>> {
        self.tx.try_send(write)?;
        let _ = self.wake.try_send(Msg::Wake);
        Ok(())
    }
}

/// Delivery workers (and the detections) hand their writes to the writer's outbox queue;
/// revoked at the stop, so that a worker still waiting for a slow receiver cannot keep the
/// writer's queues open.
struct WriterResults(std::sync::Mutex<Option<OutboxQueue>>);

impl ctrwatch_alerts::ResultSink for WriterResults {
    fn send(&self, write: ctrwatch_alerts::OutboxWrite) -> bool {
        match self.0.lock() {
            Ok(q) => q.as_ref().is_some_and(|q| q.send(OutboxMsg::Write(write))),
            Err(_) => false,
        }
    }
}

impl WriterResults {
    fn revoke(&self) {
        if let Ok(mut tx) = self.0.lock() {
            tx.take();
        }
    }
}

/// The sink that hands records to the writer thread: the daemon's path from the ring buffer to
/// disk (also driven by the pipeline benchmark, watcher/tests/pipeline.rs).
pub struct StoreSink {
    /// The store until capture starts and its run begins; then the writer thread owns it.
    store: Option<DaemonStore>,
    tx: Option<SyncSender<Msg>>,
    /// Alerts and delivery results to the writer.
    outbox: Option<OutboxQueue>,
    /// Capture has stopped: the last drain waits for room in the queue instead of dropping
    /// (nothing new arrives any more).
    stopping: bool,
    /// Events dropped because the writer's queue was full, not yet reported.
    queue_lost: u64,
    queue_lost_since: Option<u64>,
    /// Events dropped at the queue since the start, reported or not.
    queue_lost_total: u64,
    echo: Option<StdoutSink>,
    clock: Clock,
    writer: Option<JoinHandle<anyhow::Result<()>>>,
    /// What the writer publishes for `ctrwatch status` with its heartbeat.
    status: StatusSource,
    /// Alert rules and delivery (None: the pipeline benchmark).
    alerts: Option<DaemonAlerts>,
    results: Option<std::sync::Arc<WriterResults>>,
    /// The rules' writes (and a reload's new routing) the outbox queue had no room for yet
    /// (tried again at each tick).
    unsent: std::collections::VecDeque<OutboxMsg>,
    /// Reads the configuration again on SIGHUP.
    reloader: Option<Reloader>,
    /// The settings the daemon started with: what a reload's restart-only keys are compared
    /// with.
    started_with: Option<Box<RunOptions>>,
    /// The settings in effect: the start's, then each good reload's (what a reload's live
    /// store and logger keys are compared with).
    running: Option<Box<RunOptions>>,
    /// The ring buffer position the store last committed (read when the run begins): after a
    /// crash, what of the adopted ring buffer is already stored.
    ring_mark: Option<crate::store::RingMark>,
    /// The end of the ring buffer record whose events are being handed over (None: the ring
    /// buffer is not held, see [`Sink::hold_ring`]).
    record_end: Option<RingPos>,
    /// The key of the sink targets' names, the one the daemon started with: a reload names
    /// its targets with it, so that what is pending stays theirs.
    target_key: TargetKey,
    /// What a reload job made ready off the capture loop (the sinks, a new metrics
    /// listener): taken by [`Sink::reloaded`].
    reloaded: std::sync::Arc<std::sync::Mutex<Option<Reloaded>>>,
    /// The metrics listener, and the address configured for it (`[metrics] listen`).
    metrics: Option<crate::metrics_http::MetricsServer>,
    metrics_listen: Option<std::net::SocketAddr>,
    /// The `protect-unavailable` alert of this run was raised.
    protect_alerted: bool,
}

/// What a good reload's job made ready for [`Sink::reloaded`] to apply.
struct Reloaded {
    alerting: crate::alerting::Alerting,
    /// Some: the listener's address changed.
    metrics: Option<MetricsChange>,
}

/// How a reload's new metrics address replaces the listener.
enum MetricsChange {
    /// Bound by the reload's job: this one (None: metrics off) replaces the old one.
    Started(Option<crate::metrics_http::MetricsServer>),
    /// The old listener's port on an address the old one covers or is covered by (the
    /// wildcard and a specific address, see [`old_listener_conflicts`]): in use while the
    /// old one listens, so bound when applying, after the old one closed (bound again if the
    /// new one cannot be).
    AfterClosing(std::net::SocketAddr),
}

/// Whether a listener on `old` is what keeps `new` from being bound (`Address already in
/// use`): the same port, and the same address or one of the two the wildcard that covers the
/// other (`0.0.0.0` covers IPv4; `[::]` covers IPv6 and, bound dual-stack as std binds it by
/// default, IPv4 too). Two different specific addresses never conflict: then another process
/// holds `new`, and closing the old listener would not help.
fn old_listener_conflicts(old: std::net::SocketAddr, new: std::net::SocketAddr) -> bool {
    if old.port() != new.port() {
        return false;
    }
    let (old, new) = (old.ip().to_canonical(), new.ip().to_canonical());
    let covers = |wildcard: std::net::IpAddr, other: std::net::IpAddr| {
        wildcard.is_unspecified() && (wildcard.is_ipv6() || other.is_ipv4())
    };
    old == new || covers(old, new) || covers(new, old)
}

impl StoreSink {
    /// A sink for `store`: when capture starts, the run begins at that instant
    /// ([`DaemonStore::begin_run`]) and the writer thread starts.
    pub fn new(store: DaemonStore, echo: Option<StdoutSink>) -> StoreSink {
        StoreSink {
            store: Some(store),
            tx: None,
            outbox: None,
            stopping: false,
            queue_lost: 0,
            queue_lost_since: None,
            queue_lost_total: 0,
            echo,
            clock: Clock::process(),
            writer: None,
            status: StatusSource {
                config: Default::default(),
                started: SystemTime::now(),
                capture: Default::default(),
            },
            alerts: None,
            results: None,
            unsent: std::collections::VecDeque::new(),
            reloader: None,
            started_with: None,
            running: None,
            ring_mark: None,
            record_end: None,
            target_key: TargetKey::Legacy,
            reloaded: std::sync::Arc::default(),
            metrics: None,
            metrics_listen: None,
            protect_alerted: false,
        }
    }

    /// The configuration file the daemon read, for its status snapshot.
    pub fn with_config(self, config: Option<LoadedConfig>) -> StoreSink {
        if let Ok(mut c) = self.status.config.lock() {
            *c = ConfigStatus {
                loaded: config,
                ..ConfigStatus::default()
            };
        }
        self
    }

    /// Reloads the configuration on SIGHUP with `reloader`; `started_with`: the settings the
    /// daemon started with.
    pub fn with_reload(
        mut self,
        reloader: Option<Reloader>,
        started_with: RunOptions,
    ) -> StoreSink {
        self.reloader = reloader;
        self.running = Some(Box::new(started_with.clone()));
        self.started_with = Some(Box::new(started_with));
        self
    }

    /// Serves the metrics with `server`, listening as `[metrics] listen` = `listen` asked:
    /// a reload that changes the address replaces it.
    pub fn with_metrics(
        mut self,
        listen: Option<std::net::SocketAddr>,
        server: Option<crate::metrics_http::MetricsServer>,
    ) -> StoreSink {
        self.metrics_listen = listen;
        self.metrics = server;
        self
    }

    /// Names the sinks' targets of a reload with `key` (the one the start used).
    pub fn with_target_key(mut self, key: TargetKey) -> StoreSink {
        self.target_key = key;
        self
    }

    /// Closes the metrics listener and listens on `addr` (the old one's port on another
    /// address: it could not be bound while the old one listened). When `addr` cannot be
    /// bound either, the old listener is bound again and the error returned.
    fn rebind_metrics(
        &mut self,
        addr: std::net::SocketAddr,
    ) -> anyhow::Result<crate::metrics_http::MetricsServer> {
        let old = self.metrics.take().map(|m| m.local_addr());
        match crate::metrics_http::MetricsServer::start(addr, || METRICS.render()) {
            Ok(server) => {
                log::info!(
                    "metrics: the listener moved to {addr} (the old one closed first: same port)"
                );
                Ok(server)
            }
            Err(e) => {
                if let Some(old) = old {
                    self.restore_metrics(old);
                }
                Err(anyhow::anyhow!("{e}"))
            }
        }
    }

    /// Listens on `addr` again (the listener a reload closed, the reload failing). When it
    /// cannot, nothing listens: the configured address is forgotten (a later reload with it
    /// binds it again, as a new one) and the error logged.
    fn restore_metrics(&mut self, addr: std::net::SocketAddr) {
        match crate::metrics_http::MetricsServer::start(addr, || METRICS.render()) {
            Ok(server) => self.metrics = Some(server),
            Err(e) => {
                self.metrics = None;
                self.metrics_listen = None;
                if let Some(running) = self.running.as_deref_mut() {
                    running.metrics_listen = None;
                }
                log::error!(
                    "metrics: no longer served: the listener closed for a reload could not \
                     listen again ({e}); a reload (SIGHUP) with a [metrics] listen address \
                     that can listen serves them again"
                );
            }
        }
    }

    /// A good reload's keys of the store and the logger, applied when they differ from the
    /// settings in effect: the log level at once (unless `RUST_LOG` is set: it wins), the
    /// retention by the writer, which prunes by it at its next turn.
    fn apply_live_keys(&mut self, new: &RunOptions) {
        let (old_level, old_retention) = match self.running.as_deref() {
            Some(r) => (
                Some(r.config.log_level),
                Some((
                    r.store_options.retention_age,
                    r.store_options.retention_bytes,
                )),
            ),
            None => (None, None),
        };
        if old_level != Some(new.config.log_level) {
            crate::logging::set_daemon_level(new.config.log_level);
        }
        let retention = (
            new.store_options.retention_age,
            new.store_options.retention_bytes,
        );
        if old_retention != Some(retention) {
            log::info!(
                "retention: now {} and {} (reloaded)",
                retention.0.map_or_else(
                    || "no age limit".to_owned(),
                    |a| format!("{} day(s)", a.as_secs() / 86_400)
                ),
                retention.1.map_or_else(
                    || "no size limit".to_owned(),
                    |b| format!("{} MiB", b >> 20)
                ),
            );
            match &mut self.store {
                // Capture has not started: the store is still here.
                Some(store) => store.set_retention(retention.0, retention.1),
                None => {
                    self.unsent.push_back(OutboxMsg::Retention {
                        age: retention.0,
                        bytes: retention.1,
                    });
                    self.send_unsent();
                }
            }
        }
        self.running = Some(Box::new(RunOptions {
            reload: None,
            ..new.clone()
        }));
    }

    /// A reload failed: the configuration loaded before stays; said in the log (error),
    /// in the status snapshot and as a `config-invalid` alert.
    fn reload_failed(&mut self, error: &anyhow::Error) {
        let why = crate::logging::error_text(error);
        // The file's text can be anything (a quoted key with control characters): escaped
        // line by line for the log and the alert; the status snapshot escapes its own copy.
        let shown = why
            .lines()
            .map(ctrwatch_event::escape)
            .collect::<Vec<_>>()
            .join("\n");
        log::error!(
            "reloading the configuration failed; still running with the configuration loaded \
             before: {shown}"
        );
        let now_ns = self.clock.now_ns();
        let now = ctrwatch_event::time::ns_system_time(now_ns);
        let file = match self.status.config.lock() {
            Ok(mut c) => {
                c.reload_failed = Some((now, why.clone()));
                c.loaded.as_ref().map(|l| l.path.clone())
            }
            Err(_) => None,
        };
        if let Some(a) = &mut self.alerts {
            self.unsent.extend(
                a.config_invalid(file.as_deref(), &shown, now_ns)
                    .into_iter()
                    .map(OutboxMsg::Write),
            );
        }
    }

    /// Raises and delivers alerts (see [`DaemonAlerts`]).
    pub fn with_alerts(mut self, alerts: DaemonAlerts) -> StoreSink {
        self.alerts = Some(alerts);
        self
    }

    /// Starts the writer thread on a store whose run has begun ([`DaemonStore::begin_run`]).
    pub fn start(store: DaemonStore, echo: Option<StdoutSink>) -> anyhow::Result<StoreSink> {
        let mut sink = StoreSink::new(store, echo);
        if let Some(store) = sink.store.take() {
            sink.start_writer(store, None)?;
        }
        Ok(sink)
    }

    /// Starts the writer thread, and the alert delivery workers (which hand their results to
    /// it); `unclean` is the downtime window of an unclean previous stop.
    fn start_writer(
        &mut self,
        store: DaemonStore,
        unclean: Option<(i64, i64)>,
    ) -> anyhow::Result<()> {
        let (tx, rx) = sync_channel(QUEUE);
        let (outbox_tx, outbox_rx) = sync_channel(OUTBOX_QUEUE);
        let outbox = OutboxQueue {
            tx: outbox_tx,
            wake: tx.clone(),
        };
        let alerts = match &mut self.alerts {
            Some(a) => {
                let results =
                    std::sync::Arc::new(WriterResults(std::sync::Mutex::new(Some(outbox.clone()))));
                let started = self.clock.now_ns();
                let writer = a.start(
                    started,
                    unclean,
                    store.requested_path(),
                    std::sync::Arc::clone(&results)
                        as std::sync::Arc<dyn ctrwatch_alerts::ResultSink>,
                )?;
                self.results = Some(results);
                // Deliveries a removed sink left pending are set aside first (those of a sink
                // put back are taken up again).
                outbox.send(OutboxMsg::Write(ctrwatch_alerts::OutboxWrite::Reconcile));
                writer
            }
            None => WriterAlerts::none(),
        };
        let status = self.status.clone();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(store, rx, outbox_rx, alerts, status))
            .context("starting the store writer")?;
        self.tx = Some(tx);
        self.outbox = Some(outbox);
        self.writer = Some(writer);
        Ok(())
    }

    /// Keeps an alert (a detection's): handed to the writer, which commits it to the outbox
    /// at once and wakes the delivery workers. Blocks while the writer's queue is full (alerts
    /// are few and never dropped).
    pub fn alert(&mut self, alert: &ctrwatch_alerts::Alert) -> std::io::Result<()> {
        let record =
            ctrwatch_alerts::outbox::AlertRecord::of(alert).map_err(std::io::Error::other)?;
        self.outbox_send(OutboxMsg::Write(ctrwatch_alerts::OutboxWrite::Alert(
            Box::new(record),
        )))
    }

    fn outbox_send(&self, write: OutboxMsg) -> std::io::Result<()> {
        match &self.outbox {
            Some(q) if q.send(write) => Ok(()),
            _ => Err(std::io::Error::other("the store writer has stopped")),
        }
    }

    /// The alert rules' writes due now. Called from the capture loop, so it never waits: what
    /// the outbox queue has no room for stays here, in order, for the next tick (alerts are
    /// few and never dropped; the queue is full only while the writer is far behind).
    fn alert_tick(&mut self, now: SystemTime) {
        let Some(a) = &mut self.alerts else { return };
        self.unsent.extend(
            a.tick(crate::store::system_time_ns(now))
                .into_iter()
                .map(OutboxMsg::Write),
        );
        self.send_unsent();
    }

    /// Hands what waits in `unsent` to the writer's outbox queue, in order, without waiting.
    fn send_unsent(&mut self) {
        let Some(q) = &self.outbox else { return };
        while let Some(w) = self.unsent.pop_front() {
            match q.try_send(w) {
                Ok(()) => {}
                Err(TrySendError::Full(w)) => {
                    self.unsent.push_front(w);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.unsent.clear();
                    return;
                }
            }
        }
    }

    /// The result of printing to stdout (`--print`). A failure (the reader went away: EPIPE;
    /// a hung-up terminal: EIO) ends the printing, never the recording.
    fn echoed(&mut self, printed: std::io::Result<()>) {
        if let Err(e) = printed {
            log::warn!(
                "printing events to stdout failed ({e}): no longer printing events; \
                 the store keeps recording"
            );
            self.echo = None;
        }
    }

    /// Events dropped because the writer's queue was full, since the start.
    pub fn queue_lost_total(&self) -> u64 {
        self.queue_lost_total
    }

    fn send(&mut self, msg: Msg, block: bool) -> std::io::Result<()> {
        let Some(tx) = &self.tx else {
            return Err(std::io::Error::other("the store writer has stopped"));
        };
        let events = match &msg {
            Msg::Events(evs, _) => evs.len() as u64,
            _ => 1,
        };
        let result = if block {
            tx.send(msg).map_err(|_| TrySendError::Disconnected(()))
        } else {
            tx.try_send(msg).map_err(|e| match e {
                TrySendError::Full(_) => TrySendError::Full(()),
                TrySendError::Disconnected(_) => TrySendError::Disconnected(()),
            })
        };
        match result {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(())) => {
                self.queue_lost += events;
                self.queue_lost_total += events;
                self.queue_lost_since.get_or_insert_with(monotonic_ns);
                Ok(())
            }
            Err(TrySendError::Disconnected(())) => {
                Err(std::io::Error::other("the store writer has stopped"))
            }
        }
    }

    /// Reports events dropped at the queue as a loss record.
    fn report_queue_loss(&mut self) -> std::io::Result<()> {
        if self.queue_lost == 0 {
            return Ok(());
        }
        let now = monotonic_ns();
        let from = self.queue_lost_since.take().unwrap_or(now);
        let loss = LossEvent {
            time_ns: self.clock.wall_ns(now),
            from_ns: self.clock.wall_ns(from),
            to_ns: self.clock.wall_ns(now),
            lost: self.queue_lost,
            kinds: BTreeMap::from([(LossKind::StoreQueue, self.queue_lost)]),
        };
        self.queue_lost = 0;
        log::warn!(
            "the store writer fell behind: {} events not stored",
            loss.lost
        );
        if let Some(echo) = &mut self.echo {
            echo.loss(&loss)?;
        }
        // A history gap like any other loss (docs/alerts.md, history-gap).
        if let Some(a) = &mut self.alerts {
            a.loss(&loss, self.clock.now_ns());
        }
        self.send(Msg::Loss(loss), true)
    }

    /// Begins the run in the store and starts the writer: capture started at `at`, or
    /// (`adopted`) continues the previous daemon's (no downtime after a clean stop).
    fn begin(&mut self, at: SystemTime, adopted: bool) -> anyhow::Result<()> {
        let Some(mut store) = self.store.take() else {
            return Ok(()); // started on a run already begun
        };
        self.status.started = at;
        // Before the run begins and the writer takes the store: what a crashed predecessor
        // committed of the ring buffer this daemon may adopt.
        match store.ring_mark() {
            Ok(mark) => self.ring_mark = mark,
            Err(e) => log::warn!("reading the committed ring buffer position: {e}"),
        }
        let mut unclean = None;
        let begun = if adopted {
            store.begin_adopted_run(at)
        } else {
            store.begin_run(at)
        };
        if let Some(gap) = begun.context("recording the daemon start")? {
            log::warn!("the previous run did not stop cleanly: {gap}");
            unclean = Some((gap.from_ns, gap.to_ns));
        }
        self.start_writer(store, unclean)
    }

    /// Stops the writer after it has stored everything queued. With `stopped_at` (capture
    /// stopped then, and everything it captured was handed over), the run is recorded as ended
    /// at that instant; without, it is left open, as after a crash: the next start records
    /// the downtime from its last heartbeat.
    pub fn close(mut self, stopped_at: Option<SystemTime>) -> anyhow::Result<()> {
        self.report_queue_loss()?;
        // Capture has stopped: waiting for the writer is fine now.
        for w in std::mem::take(&mut self.unsent) {
            let _ = self.outbox_send(w);
        }
        if let Some(mut a) = self.alerts.take() {
            // Workers first (results still reach the writer), then what the rules hold.
            for w in a.stop(Duration::from_secs(2)) {
                let _ = self.outbox_send(OutboxMsg::Write(w));
            }
        }
        if let Some(r) = self.results.take() {
            r.revoke();
        }
        if let (Some(at), Some(tx)) = (stopped_at, &self.tx) {
            tx.send(Msg::Stopped(at))
                .map_err(|_| anyhow::anyhow!("the store writer has stopped"))?;
        }
        drop(self.outbox.take());
        drop(self.tx.take());
        match self.writer.take() {
            Some(w) => w
                .join()
                .map_err(|_| anyhow::anyhow!("the store writer panicked"))?,
            None => Ok(()),
        }
    }
}

impl Sink for StoreSink {
    fn file_event(&mut self, ev: Box<FileEvent>) -> std::io::Result<()> {
        if let Some(a) = &mut self.alerts {
            a.event(&ev);
        }
        if let Some(echo) = &mut self.echo {
            let printed = echo.file_event(ev.clone());
            self.echoed(printed);
        }
        self.send(Msg::Event(ev, self.record_end), self.stopping)
    }
    fn file_events(&mut self, evs: Vec<Box<FileEvent>>) -> std::io::Result<()> {
        for ev in &evs {
            if let Some(a) = &mut self.alerts {
                a.event(ev);
            }
            if let Some(echo) = &mut self.echo {
                let printed = echo.file_event(ev.clone());
                self.echoed(printed);
            }
        }
        self.send(Msg::Events(evs, self.record_end), self.stopping)
    }
    fn loss(&mut self, ev: &LossEvent) -> std::io::Result<()> {
        if let Some(echo) = &mut self.echo {
            let printed = echo.loss(ev);
            self.echoed(printed);
        }
        if let Some(a) = &mut self.alerts {
            a.loss(ev, self.clock.now_ns());
        }
        self.send(Msg::Loss(ev.clone()), true)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.report_queue_loss()?;
        if let Some(echo) = &mut self.echo {
            let printed = echo.flush();
            self.echoed(printed);
        }
        Ok(())
    }
    fn capture_started(&mut self, at: SystemTime) -> anyhow::Result<()> {
        self.begin(at, false)
    }
    fn hold_ring(&mut self, ring: &RingIdentity) -> Option<HeldRing> {
        let tx = self.tx.as_ref()?;
        let committed = CommittedThrough::default();
        tx.send(Msg::HoldRing(ring.clone(), committed.clone()))
            .ok()?;
        let fence = match &self.ring_mark {
            Some(mark) if mark.ring == ring.as_str() => ReplayFence::through(RingPos(mark.through)),
            _ => ReplayFence::default(),
        };
        Some(HeldRing { committed, fence })
    }
    fn record_position(&mut self, end: RingPos) {
        self.record_end = Some(end);
    }
    fn handed_through(&mut self, end: RingPos) -> bool {
        // The events dropped at a full queue are a loss record first: a commit through `end`
        // must not come before it (after a crash nothing would say they were lost).
        if self.report_queue_loss().is_err() {
            return false;
        }
        // Not a loss when the queue is full: the reader sends the marker again.
        self.tx
            .as_ref()
            .is_some_and(|tx| tx.try_send(Msg::Through(end)).is_ok())
    }
    fn commit_soon(&mut self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Msg::CommitSoon);
        }
    }
    fn capture_adopted(&mut self, at: SystemTime) -> anyhow::Result<()> {
        self.begin(at, true)
    }
    fn watermark(&mut self, at: SystemTime) {
        // Events dropped at the queue before it must be reported before it.
        if self.report_queue_loss().is_err() {
            return;
        }
        // Not worth blocking the watch loop for: when the queue is full, the next one (a
        // second later) will do.
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Msg::Watermark(at));
        }
        if let Some(a) = &mut self.alerts {
            a.watermark(crate::store::system_time_ns(at));
        }
        self.alert_tick(at);
    }
    fn tick(&mut self, now: SystemTime) {
        if self.report_queue_loss().is_err() {
            return;
        }
        self.alert_tick(now);
    }
    fn capture_info(&mut self, info: CaptureInfo) {
        let other_families: usize = info.families.iter().map(|f| f.programs_attached).sum();
        METRICS.set_programs(
            &info.backend,
            info.hooks_attached.saturating_sub(other_families),
            info.families
                .iter()
                .map(|f| {
                    (
                        f.family.to_string(),
                        f.state == crate::kernel::backend::FamilyState::Usable,
                        f.programs_attached,
                    )
                })
                .collect(),
        );
        METRICS.set_protect(
            info.protect.requested.name(),
            info.protect.unavailable.is_none(),
        );
        // Once a run (capture_info comes again when the roots change).
        if let Some(why) = &info.protect.unavailable
            && !self.protect_alerted
        {
            self.protect_alerted = true;
            if let Some(a) = &mut self.alerts {
                let now_ns = self.clock.now_ns();
                self.unsent.extend(
                    a.protect_unavailable(info.protect.requested.name(), why, now_ns)
                        .into_iter()
                        .map(OutboxMsg::Write),
                );
                self.send_unsent();
            }
        }
        // Read by the writer once a second; never contended for long.
        if let Ok(mut shared) = self.status.capture.lock() {
            *shared = info;
        }
    }
    fn capture_stopped(&mut self, _at: SystemTime) {
        self.stopping = true;
    }
    fn commit_feed(&mut self) -> Option<crate::layercheck::CommitFeed> {
        self.alerts.as_ref()?.commit_feed()
    }
    fn reload(&mut self) -> Option<ReloadJob> {
        let reloader = self.reloader.clone()?;
        let key = self.target_key.clone();
        let slot = std::sync::Arc::clone(&self.reloaded);
        let listening = self.metrics_listen;
        let bound = self.metrics.as_ref().map(|m| m.local_addr());
        Some(Box::new(move || {
            let new = (reloader.0)()?;
            // The sinks made ready here, off the capture loop (secret and CA files are read),
            // with the targets named as the running daemon names them.
            let alerting = crate::alerting::Alerting::from_config(new.config.clone(), &key)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            // A new listener address is bound here: one that cannot listen refuses the
            // reload, and the old listener goes on.
            let metrics = match new.metrics_listen {
                addr if addr == listening => None,
                Some(addr) => {
                    match crate::metrics_http::MetricsServer::start(addr, || METRICS.render()) {
                        Ok(server) => Some(MetricsChange::Started(Some(server))),
                        // Closing the old listener helps only when it is the one in the way;
                        // else (another process holds the address) refused, the old one goes
                        // on untouched.
                        Err(crate::metrics_http::MetricsError::Bind { source, .. })
                            if source.kind() == std::io::ErrorKind::AddrInUse
                                && bound.is_some_and(|old| old_listener_conflicts(old, addr)) =>
                        {
                            Some(MetricsChange::AfterClosing(addr))
                        }
                        // Flattened: the error's text names its cause already.
                        Err(e) => return Err(anyhow::anyhow!("{e}")),
                    }
                }
                None => Some(MetricsChange::Started(None)),
            };
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(Reloaded { alerting, metrics });
            }
            Ok(new)
        }))
    }
    fn reloaded(&mut self, result: anyhow::Result<RunOptions>) -> Option<WatchOptions> {
        let new = match result {
            Ok(new) => new,
            Err(e) => {
                self.reload_failed(&e);
                return None;
            }
        };
        // The alerting first: the only part whose applying can fail (a thread that cannot
        // start); then nothing is applied.
        let ready = self.reloaded.lock().ok().and_then(|mut slot| slot.take());
        let (alerting, metrics) = match ready {
            Some(r) => (Some(r.alerting), r.metrics),
            None => (None, None),
        };
        // A listener that can bind only once the old one is closed: before the alerting, so
        // that a failure leaves everything as it was.
        let old_bound = self.metrics.as_ref().map(|m| m.local_addr());
        let metrics = match metrics {
            Some(MetricsChange::AfterClosing(addr)) => match self.rebind_metrics(addr) {
                Ok(server) => Some(Some(server)),
                Err(e) => {
                    self.reload_failed(&e);
                    return None;
                }
            },
            Some(MetricsChange::Started(server)) => Some(server),
            None => None,
        };
        if let (Some(a), Some(alerting)) = (&mut self.alerts, alerting) {
            match a.reload(alerting, self.clock.now_ns()) {
                Ok(Some(writer)) => {
                    self.unsent.push_back(OutboxMsg::Reroute(Box::new(writer)));
                    self.send_unsent();
                }
                Ok(None) => {}
                Err(e) => {
                    // The old listener back if it was closed for the new one.
                    if self.metrics.is_none()
                        && let Some(old) = old_bound
                    {
                        drop(metrics);
                        self.restore_metrics(old);
                    }
                    self.reload_failed(&e);
                    return None;
                }
            }
        }
        if let Some(server) = metrics {
            match &server {
                Some(_) => METRICS.enable(),
                None => log::info!("metrics: no longer served ([metrics] listen removed)"),
            }
            // The old listener stops (its thread ends at once) after the new one listens.
            self.metrics = server;
            self.metrics_listen = new.metrics_listen;
        }
        self.apply_live_keys(&new);
        let started = self.started_with.as_deref()?;
        let pending = restart_only_changes(started, &new);
        let shown = new.config_file.as_ref().map_or_else(
            || "(no file: the built-in defaults)".to_owned(),
            |c| ctrwatch_event::escape_path(&c.path),
        );
        for key in &pending {
            log::warn!(
                "reloaded {shown}: {key} changed; it takes effect at the next start (the \
                 daemon keeps the value it started with until then)"
            );
        }
        if let Ok(mut c) = self.status.config.lock() {
            *c = ConfigStatus {
                loaded: new.config_file.clone(),
                reload_failed: None,
                restart_pending: pending.iter().map(|k| (*k).to_owned()).collect(),
            };
        }
        log::info!(
            "reloaded the configuration {shown}: roots, discovery, trusted writers, secret \
             masking, alert rules, sinks, the metrics listener, log level and retention \
             applied{}",
            if pending.is_empty() {
                String::new()
            } else {
                format!("; at the next start: {}", pending.join(", "))
            }
        );
        let mut watch = new.watch;
        // Restart-only: the ring buffer is allocated.
        watch.ring_buffer_bytes = started.watch.ring_buffer_bytes;
        Some(watch)
    }
}

/// `ctrwatch run`: captures until SIGTERM/SIGINT, storing every event and loss in the store, with alerts, status and metrics.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    // First: a configured listener that cannot listen (address in use, not this host's, a
    // port below 1024 without the capability) is a configuration error, said before anything
    // is attached. Stopped (dropped) when the daemon stops.
    let metrics = match opts.metrics_listen {
        Some(addr) => {
            let server = crate::metrics_http::MetricsServer::start(addr, || METRICS.render())?;
            METRICS.enable();
            Some(server)
        }
        None => None,
    };
    // Creates the store's directory with its mode, waits for another writer's lock, moves a
    // corrupt store aside, and on a full disk counts until it can write.
    crate::notify::starting("opening the event store");
    let step = crate::kernel::StartStep::begin();
    let store = DaemonStore::open(&opts.store, opts.store_options.clone())
        .with_context(|| format!("opening the event store {}", opts.store.display()))?;
    let _ = step.done("event store opened");
    // Sinks checked (secrets, CA files) before anything starts.
    let key = target_key(&opts.store, &opts.config)?;
    let alerting = crate::alerting::Alerting::from_config(opts.config.clone(), &key)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The run begins when capture has started, after the programs are attached (seconds).
    let started_with = RunOptions {
        reload: None,
        ..opts.clone()
    };
    let mut sink = StoreSink::new(store, opts.echo.then(|| StdoutSink::new(opts.watch.json)))
        .with_config(opts.config_file.clone())
        .with_reload(opts.reload.clone(), started_with)
        .with_target_key(key)
        .with_metrics(opts.metrics_listen, metrics)
        .with_alerts(DaemonAlerts::new(alerting));
    log::info!(
        "ctrwatch: storing history in {}",
        ctrwatch_event::escape_path(&opts.store)
    );
    let watched = watch::run(opts.watch, &mut sink).await;
    // A clean end only when everything captured was handed over; after an error the run is
    // left open and the next start records the downtime from the last heartbeat.
    let closed = sink.close(watched.as_ref().ok().copied());
    watched?;
    closed
}

/// The writer thread: appends, commits in batches, heartbeats at the watch loop's watermarks,
/// prunes; on the end of the queue commits what is left and, when told when capture stopped,
/// records a clean stop at that instant.
fn write_loop(
    mut store: DaemonStore,
    rx: Receiver<Msg>,
    outbox: Receiver<OutboxMsg>,
    mut alerts: WriterAlerts,
    status: StatusSource,
) -> anyhow::Result<()> {
    // Stored events are freed on another thread: each is a tree of ~20 allocations made by
    // the watch loop, and under a flood freeing them was ~7 % of the writer's time, the
    // daemon's bottleneck. Handed over a burst at a time; if that thread is gone or behind,
    // the writer frees them itself.
    let (free_tx, free_rx) = sync_channel::<Vec<Box<FileEvent>>>(4);
    let freer = std::thread::Builder::new()
        .name("store-free".into())
        .spawn(move || free_rx.into_iter().for_each(drop))
        .ok();
    let mut stored: Vec<Box<FileEvent>> = Vec::with_capacity(BURST);
    let mut warn = Warner::default();
    let mut unkept = UnkeptAlerts::default();
    let mut pending = 0usize;
    let mut last_commit = Instant::now();
    let mut stopped_at = None;
    // For the status snapshot: events and lost events handed over since the start.
    let mut events_received = 0u64;
    let mut lost_received = 0u64;
    // Prune soon after start (a store may have aged while the daemon was down).
    let mut last_prune = Instant::now() - PRUNE_EVERY + Duration::from_secs(5);
    // A reload changed the retention: prune at the writer's next turn.
    let mut prune_soon = false;
    // What of the ring buffer is committed, for the reader that holds it (crate::committed).
    let mut progress = CommitProgress::default();
    let mut commit_asked = false;
    loop {
        // Alerts and delivery results first, each committed at once (the open batch of
        // events with it): an alert is on disk before any delivery attempt, and does not
        // wait behind the events queued before it.
        if write_outbox(
            &mut store,
            &outbox,
            &mut alerts,
            &mut unkept,
            &mut warn,
            &mut prune_soon,
        ) {
            pending = 0;
            last_commit = Instant::now();
            if store.unstored().is_none() {
                progress.committed();
            }
        }
        // One message (or the timeout), then whatever else is queued, up to a burst: the
        // clocks below are read once per burst, not once per event.
        let mut closed = false;
        let mut next = Some(rx.recv_timeout(COMMIT_EVERY));
        let mut taken = 0;
        while let Some(msg) = next.take() {
            match msg {
                Ok(Msg::Event(ev, end)) => {
                    // Before the append: a batch the append commits holds the position too.
                    if let Some(end) = end {
                        store.note_ring_through(end.0);
                        progress.appended(end);
                    }
                    events_received += 1;
                    METRICS.event(&ev);
                    warn.report(store.append_event(&ev), "storing an event");
                    stored.push(ev);
                    pending += 1;
                }
                Ok(Msg::Events(evs, end)) => {
                    if let Some(end) = end {
                        store.note_ring_through(end.0);
                        progress.appended(end);
                    }
                    for ev in evs {
                        events_received += 1;
                        METRICS.event(&ev);
                        warn.report(store.append_event(&ev), "storing an event");
                        stored.push(ev);
                        pending += 1;
                    }
                }
                Ok(Msg::Loss(loss)) => {
                    lost_received = lost_received.saturating_add(loss.lost);
                    METRICS.loss(&loss);
                    warn.report(store.append_loss(&loss), "storing a loss record");
                    pending += 1;
                }
                // Everything before it is appended: committed with the next commit, together
                // with the heartbeat (the store defers it while a transaction is open).
                // With the status snapshot (`ctrwatch status`): about once a second, one row
                // in the transaction the heartbeat is written with.
                Ok(Msg::Watermark(at)) => {
                    let snapshot = status.snapshot(
                        at,
                        events_received,
                        lost_received,
                        store.unstored().unwrap_or(0),
                    );
                    warn.report(store.heartbeat_with_status(at, &snapshot), "heartbeat");
                    if METRICS.enabled() {
                        match store.store().map(|s| s.metrics_facts()) {
                            Some(Ok(facts)) => METRICS.set_store_facts(facts),
                            Some(Err(e)) => {
                                METRICS.store_facts_unavailable();
                                warn.report(
                                    Err::<(), _>(e),
                                    "reading the store's size for the metrics",
                                );
                            }
                            // Not open (it failed): nothing current to show.
                            None => METRICS.store_facts_unavailable(),
                        }
                    }
                }
                Ok(Msg::Stopped(at)) => stopped_at = Some(at),
                Ok(Msg::Through(end)) => {
                    store.note_ring_through(end.0);
                    progress.appended(end);
                    // Nothing appended since the last commit: everything up to here is
                    // committed already (or counted, while the store is degraded).
                    if pending == 0 && store.unstored().is_none() {
                        progress.committed();
                    }
                }
                Ok(Msg::HoldRing(ring, committed)) => {
                    store.set_ring(ring.as_str().to_owned());
                    progress.report_to(committed);
                }
                Ok(Msg::CommitSoon) => {
                    commit_asked = true;
                    break;
                }
                // Outbox writes are queued: the next turn takes them.
                Ok(Msg::Wake) => break,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
            taken += 1;
            if taken >= BURST || pending >= COMMIT_BATCH {
                break;
            }
            next = match rx.try_recv() {
                Ok(msg) => Some(Ok(msg)),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(Err(RecvTimeoutError::Disconnected)),
            };
        }
        if !stored.is_empty() {
            // Full or gone: the returned burst is dropped here.
            let _ = free_tx.try_send(std::mem::replace(&mut stored, Vec::with_capacity(BURST)));
        }
        if closed
            || pending >= COMMIT_BATCH
            || last_commit.elapsed() >= COMMIT_EVERY
            || std::mem::take(&mut commit_asked)
        {
            if pending > 0 || store.unstored().is_some() {
                let committed = store.flush();
                if committed.is_ok() && store.unstored().is_none() {
                    progress.committed();
                }
                warn.report(committed.map(|_| ()), "committing events");
                // The service's status line says so while the store cannot be written.
                crate::notify::store_degraded(store.unstored().map(|n| {
                    format!(
                        "the event store cannot be written ({n} records not stored); \
                         still capturing"
                    )
                }));
            }
            pending = 0;
            last_commit = Instant::now();
        }
        if closed {
            // What the last senders queued (the rules' final revisions, results).
            write_outbox(
                &mut store,
                &outbox,
                &mut alerts,
                &mut unkept,
                &mut warn,
                &mut prune_soon,
            );
            if !unkept.queue.is_empty() {
                log::error!(
                    "alerts: {} alert(s) could not be kept: the store did not take them before \
                     the stop",
                    unkept.queue.len()
                );
            }
            drop(free_tx);
            if let Some(t) = freer {
                let _ = t.join();
            }
            if let Some(at) = stopped_at {
                store.end_run(at).context("recording the daemon stop")?;
            }
            return Ok(());
        }
        if last_prune.elapsed() >= PRUNE_EVERY || std::mem::take(&mut prune_soon) {
            match store.prune(SystemTime::now()) {
                Ok(Some(r)) => log::info!("retention: {r:?}"),
                Ok(None) => {}
                Err(e) => log::warn!("retention: {e}"),
            }
            last_prune = Instant::now();
        }
    }
}

/// Alerts the store could not take yet (a full disk, the store not open) are kept in memory,
/// in order, up to this many, and written as soon as it can take them.
const UNKEPT_ALERTS_MAX: usize = 4096;

/// Alerts waiting for the store to take them (see [`UNKEPT_ALERTS_MAX`]).
#[derive(Default)]
struct UnkeptAlerts {
    queue: std::collections::VecDeque<ctrwatch_alerts::OutboxWrite>,
    /// Dropped because the queue was full, not yet reported.
    dropped: u64,
    warn: Warner,
}

/// Applies the queued outbox writes, each committed at once (after the open batch of events).
/// True when any was applied. An alert the store cannot take is not lost: it waits in
/// `unkept` and is tried again first, on every turn of the writer, so alerts keep their order.
/// A delivery result that cannot be recorded is only logged: the delivery stays pending and is
/// made again (at least once).
fn write_outbox(
    store: &mut DaemonStore,
    outbox: &Receiver<OutboxMsg>,
    alerts: &mut WriterAlerts,
    unkept: &mut UnkeptAlerts,
    warn: &mut Warner,
    prune_soon: &mut bool,
) -> bool {
    let mut any = false;
    while let Some(w) = unkept.queue.front() {
        match store.write_outbox(w, &alerts.routing) {
            Ok(applied) => {
                alerts.applied(&applied);
                count_outbox_write(w);
                unkept.queue.pop_front();
                any = true;
            }
            Err(e) => {
                unkept.warn.report(
                    Err::<(), _>(e),
                    &format!(
                        "alerts: {} alert(s) wait in memory for the store",
                        unkept.queue.len()
                    ),
                );
                break;
            }
        }
    }
    if unkept.queue.is_empty() && unkept.dropped > 0 {
        log::error!(
            "alerts: {} alert(s) were lost while the store could not take them (more than \
             {UNKEPT_ALERTS_MAX} waited)",
            unkept.dropped
        );
        unkept.dropped = 0;
    }
    while let Ok(msg) = outbox.try_recv() {
        let w = match msg {
            OutboxMsg::Write(w) => w,
            OutboxMsg::Reroute(new) => {
                reroute(store, alerts, *new, warn);
                any = true;
                continue;
            }
            OutboxMsg::Retention { age, bytes } => {
                store.set_retention(age, bytes);
                *prune_soon = true;
                continue;
            }
        };
        let is_alert = matches!(w, ctrwatch_alerts::OutboxWrite::Alert(_));
        if is_alert && !unkept.queue.is_empty() {
            keep_in_memory(unkept, w);
            continue;
        }
        match store.write_outbox(&w, &alerts.routing) {
            Ok(applied) => {
                // Committed: the caller's batch of events went with it.
                any = true;
                alerts.applied(&applied);
                count_outbox_write(&w);
            }
            Err(e) if is_alert => {
                if let ctrwatch_alerts::OutboxWrite::Alert(a) = &w {
                    log::error!(
                        "alerts: alert {} ({}) could not be kept in the outbox yet, kept in \
                         memory until the store takes it: {e}",
                        a.id,
                        a.rule
                    );
                }
                keep_in_memory(unkept, w);
            }
            Err(e) => warn.report(Err::<(), _>(e), "recording an alert delivery"),
        }
    }
    any
}

/// A reload's routing replaces `alerts`, and the outbox is reconciled with it: deliveries of
/// a removed sink (or URL) set aside, those of a sink put back taken up again. A sink that
/// had one URL and has another (its receiver moved) keeps what is pending: renamed to the new
/// URL's target. Alerts still waiting in memory for the store are routed by the new routing.
fn reroute(
    store: &mut DaemonStore,
    alerts: &mut WriterAlerts,
    new: WriterAlerts,
    warn: &mut Warner,
) {
    let mut reconcile = new.routing.clone();
    for route in &mut reconcile.sinks {
        let Some(old) = alerts.routing.sinks.iter().find(|o| o.name == route.name) else {
            continue;
        };
        if let ([was], [is]) = (old.targets.as_slice(), route.targets.as_slice())
            && was != is
        {
            route.formerly.push((was.clone(), is.clone()));
        }
    }
    *alerts = new;
    match store.write_outbox(&ctrwatch_alerts::OutboxWrite::Reconcile, &reconcile) {
        Ok(applied) => {
            if applied.pending > 0 {
                log::info!(
                    "alerts: {} deliveries pending again: their sink is configured again",
                    applied.pending
                );
            }
            alerts.applied(&applied);
        }
        Err(e) => warn.report(
            Err::<(), _>(e),
            "reconciling the outbox with the reloaded sinks",
        ),
    }
}

/// The metrics of an outbox write that was kept: an alert's first revision (a new alert), a
/// delivery attempt's result.
fn count_outbox_write(w: &ctrwatch_alerts::OutboxWrite) {
    match w {
        // The rules send each revision once; the first is the alert raised.
        ctrwatch_alerts::OutboxWrite::Alert(a) if a.rev == 1 => {
            METRICS.alert_raised(a.rule, a.severity);
        }
        ctrwatch_alerts::OutboxWrite::Result(r) => {
            METRICS.delivery(&r.sink, DeliveryOutcome::of(&r.kind));
        }
        _ => {}
    }
}

fn keep_in_memory(unkept: &mut UnkeptAlerts, w: ctrwatch_alerts::OutboxWrite) {
    if unkept.queue.len() >= UNKEPT_ALERTS_MAX {
        unkept.queue.pop_front();
        unkept.dropped += 1;
    }
    unkept.queue.push_back(w);
}

/// Store errors on the write path are not fatal: a full disk degrades the store (it counts
/// what it could not keep and records the gap when space returns). They are logged at most
/// once per interval: a full disk would otherwise log once per event.
#[derive(Default)]
struct Warner {
    last: Option<Instant>,
    suppressed: u64,
}

impl Warner {
    const EVERY: Duration = Duration::from_secs(10);

    fn report<T>(&mut self, r: Result<T, crate::store::StoreError>, what: &str) {
        let Err(e) = r else { return };
        METRICS.store_error();
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            log::warn!("{what}: {e} ({} similar errors not shown)", self.suppressed);
        } else {
            log::warn!("{what}: {e}");
        }
        self.suppressed = 0;
        self.last = Some(Instant::now());
    }
}

/// The key of the names of sink targets that show alike, beside the store
/// (ctrwatch_alerts::target_key). When it cannot be made (a full disk or a read-only store at
/// the first start), or no sink needs it, the names of builds before the key (unkeyed; the
/// next start that has the key renames their pending deliveries). A key that exists but
/// cannot be used while a sink's targets are named by it is an error: under other names
/// their pending deliveries would be dropped as no longer configured.
fn target_key(store: &Path, config: &ctrwatch_config::Config) -> anyhow::Result<TargetKey> {
    let path = TargetKey::path_for(store);
    let error = match TargetKey::load_or_create(&path) {
        Ok(key) => return Ok(key),
        Err(e) => e,
    };
    let needed_by: Vec<String> = config
        .sinks
        .iter()
        .filter(|s| ctrwatch_alerts::sinks::targets_shown_alike(s.kind, &s.urls))
        .map(|s| format!("{:?}", ctrwatch_event::escape(&s.name)))
        .collect();
    if std::fs::symlink_metadata(&path).is_ok() && !needed_by.is_empty() {
        anyhow::bail!(
            "{error}; sink(s) {} name their targets by this key and their pending deliveries \
             are stored under those names: fix the file, or remove it to have a new key made \
             (deliveries pending at those targets are then dropped)",
            needed_by.join(", ")
        );
    }
    log::warn!(
        "ctrwatch: warning: {error}; sink targets that show alike are named by an unkeyed hash \
         of their URL meanwhile"
    );
    Ok(TargetKey::Legacy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(config: &str) -> RunOptions {
        let config =
            ctrwatch_config::Config::parse("test.toml", config).unwrap_or_else(|e| panic!("{e:?}"));
        let config_listen = config.metrics.listen;
        RunOptions {
            watch: WatchOptions {
                roots: config.watch.roots.clone(),
                discover: config.watch.discover,
                json: false,
                ring_buffer_bytes: config.watch.ring_buffer_mb * 1024 * 1024,
                root_refresh: config.watch.root_refresh,
                process_grace: Duration::from_secs(120),
                trust: Default::default(),
                masker: crate::secrets::Masker::builtin(),
                pin_dir: None,
                backend: config.watch.backend,
                protect: config.watch.protect,
            },
            store: config.store.path.clone(),
            store_options: StoreOptions::default(),
            echo: false,
            config,
            config_file: None,
            reload: None,
            metrics_listen: config_listen,
        }
    }

    #[test]
    fn restart_only_keys_are_named_live_ones_are_not() {
        let old = options("[watch]\nroots = [\"/a\"]\n");
        // Live keys only: nothing waits for a restart.
        let live = options(
            "log_level = \"info\"\n[watch]\nroots = [\"/b\"]\ndiscover = false\n\
             trust_exes = [\"/usr/bin/x\"]\nmask_args = [\"k-[a-z]+\"]\nroot_refresh = \"9s\"\n",
        );
        assert_eq!(restart_only_changes(&old, &live), Vec::<&str>::new());
        let changed = options(
            "log_level = \"debug\"\n[watch]\nroots = [\"/a\"]\nring_buffer_mb = 4\n\
             [store]\npath = \"/tmp/x.db\"\n[alerts]\ngroup_window = \"5s\"\n\
             [rules.heartbeat]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:9847\"\n\
             [[sinks]]\nname = \"h\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/h\"\n",
        );
        assert_eq!(
            restart_only_changes(&old, &changed),
            vec!["[store] path", "[watch] ring_buffer_mb",]
        );
        // Rules (the checks' included), sinks, the outbox bound and the node's name apply at
        // once.
        let alerting = options(
            "[watch]\nroots = [\"/a\"]\n[alerts]\noutbox_max = 500\nnode_name = \"n1\"\n\
             [rules.foreign-change]\nseverity = \"info\"\n[rules.heartbeat]\nenabled = false\n\
             [rules.history-gap]\nenabled = false\n\
             [rules.metadata-mismatch]\nenabled = false\n[rules.layer-damaged]\nenabled = false\n\
             [rules.opaque-leak]\nenabled = false\n\
             [[sinks]]\nname = \"h\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/h\"\n",
        );
        assert_eq!(restart_only_changes(&old, &alerting), Vec::<&str>::new());
        // The retention and the log level are live.
        let quiet = "[rules.metadata-mismatch]\nenabled = false\n[rules.layer-damaged]\n\
                     enabled = false\n[rules.opaque-leak]\nenabled = false\n\
                     [rules.after-crash-verify]\nenabled = false\n";
        let before = options(&format!("[watch]\nroots = [\"/a\"]\n{quiet}"));
        let mut after = options(&format!(
            "log_level = \"debug\"\n[watch]\nroots = [\"/a\"]\n[alerts]\nnode_name = \"n2\"\n{quiet}"
        ));
        after.store_options.retention_bytes = Some(16 << 20);
        after.store_options.retention_age = None;
        assert_eq!(restart_only_changes(&before, &after), Vec::<&str>::new());
    }

    #[test]
    fn the_old_metrics_listener_is_closed_first_only_when_it_is_in_the_way() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        // The old one covers the new address, or is covered by it, or is it.
        assert!(old_listener_conflicts(
            a("127.0.0.1:9847"),
            a("0.0.0.0:9847")
        ));
        assert!(old_listener_conflicts(
            a("0.0.0.0:9847"),
            a("127.0.0.2:9847")
        ));
        assert!(old_listener_conflicts(
            a("127.0.0.1:9847"),
            a("127.0.0.1:9847")
        ));
        assert!(old_listener_conflicts(a("[::1]:9847"), a("[::]:9847")));
        // [::] is bound dual-stack: it covers IPv4 too.
        assert!(old_listener_conflicts(a("[::]:9847"), a("127.0.0.1:9847")));
        assert!(old_listener_conflicts(a("127.0.0.1:9847"), a("[::]:9847")));
        assert!(old_listener_conflicts(
            a("[::ffff:127.0.0.1]:9847"),
            a("127.0.0.1:9847")
        ));
        // Another specific address, another port, 0.0.0.0 and IPv6: someone else's conflict.
        assert!(!old_listener_conflicts(
            a("127.0.0.1:9847"),
            a("127.0.0.2:9847")
        ));
        assert!(!old_listener_conflicts(
            a("127.0.0.1:9847"),
            a("0.0.0.0:9848")
        ));
        assert!(!old_listener_conflicts(a("0.0.0.0:9847"), a("[::1]:9847")));
        assert!(!old_listener_conflicts(
            a("[::1]:9847"),
            a("127.0.0.1:9847")
        ));
    }
}
