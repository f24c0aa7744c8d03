//! Alerts in the daemon and the CLI: the configuration's sinks made ready to send
//! ([`Alerting::from_config`]), `ctrwatch alert test` ([`alert_test`]), and what the daemon
//! needs to run them (routing for the store writer, one delivery worker per sink, the
//! daemon's own rules). The alert model, the outbox, the formats and the workers are in the
//! `ctrwatch-alerts` crate.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use ctrwatch_alerts::{
    Alert, Node, Routing,
    deliver::{DeliveryOptions, send_now},
    http::Client,
    sinks::{Outcome, Sink},
    target_key::TargetKey,
};
use ctrwatch_config::{Config, RuleId};

/// A configuration that cannot be used, as one message (every problem, one per line).
pub fn load_config(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// The configuration's alerting, ready: sinks with their HTTP clients, routing, node.
pub struct Alerting {
    /// The configuration it came from.
    pub config: Config,
    /// The sinks, each with its client.
    pub sinks: Vec<(Sink, Client)>,
    /// What the store writer needs to create deliveries.
    pub routing: Routing,
    /// This node.
    pub node: Node,
    /// Settings from the environment (Alertmanager lifetime and re-send).
    pub delivery: DeliveryOptions,
}

impl Alerting {
    /// Checks every sink (secrets, CA files) and prepares its client; `key` names the
    /// targets that show alike ([`ctrwatch_alerts::sinks::shown_targets`]).
    pub fn from_config(config: Config, key: &TargetKey) -> Result<Alerting, String> {
        let mut sinks = Vec::new();
        let mut problems = Vec::new();
        for sc in &config.sinks {
            let client = match Client::new(sc.timeout, sc.ca_file.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(format!("sink {:?}: {e}", ctrwatch_event::escape(&sc.name)));
                    continue;
                }
            };
            match Sink::new(sc.clone(), key) {
                Ok(s) => sinks.push((s, client)),
                Err(e) => problems.push(e.to_string()),
            }
        }
        let delivery = DeliveryOptions::from_env().inspect_err(|e| problems.push(e.clone()));
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        let delivery = delivery.unwrap_or_default();
        Ok(Alerting {
            routing: Routing::of(&config, key),
            node: Node::detect(config.alerts.node_name.as_deref()),
            config,
            sinks,
            delivery,
        })
    }
}

/// `ctrwatch alert test [--config FILE] [SINK]`: a test alert to every sink (or the named
/// one) through the real formatting, signing and HTTP path (not the outbox); prints each
/// receiver's answer. Exit 0 when every receiver accepted it, 1 when one did not, 2 when
/// the configuration or the sink name is wrong.
pub fn alert_test(config_path: &Path, sink: Option<&str>) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ctrwatch: error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(name) = sink
        && !config.sinks.iter().any(|s| s.name == name)
    {
        let known: Vec<String> = config
            .sinks
            .iter()
            .map(|s| format!("{:?}", s.name))
            .collect();
        eprintln!(
            "ctrwatch: error: no sink {:?} in {}; the sinks are: {}",
            ctrwatch_event::escape(name),
            ctrwatch_event::escape_path(config_path),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
        return ExitCode::from(2);
    }
    if config.sinks.is_empty() {
        eprintln!(
            "ctrwatch: error: {} has no [[sinks]]: nothing to test",
            ctrwatch_event::escape_path(config_path)
        );
        return ExitCode::from(2);
    }
    // The daemon's key, where this user may read it, so that targets shown alike are named
    // as `ctrwatch alerts` shows them; else the names of builds before the key.
    let key =
        TargetKey::load(&TargetKey::path_for(&config.store.path)).unwrap_or(TargetKey::Legacy);
    let alerting = match Alerting::from_config(config, &key) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ctrwatch: error: {e}");
            return ExitCode::from(2);
        }
    };
    let alert = Alert::test_alert(alerting.node.clone(), ctrwatch_event::time::now_ns());
    let mut all_accepted = true;
    let mut text = format!(
        "test alert {} from {}\n",
        alert.id,
        ctrwatch_event::escape(&alerting.node.hostname)
    );
    for (s, client) in &alerting.sinks {
        if sink.is_some_and(|n| n != s.name()) {
            continue;
        }
        let answers = match send_now(s, client, &alert, &alerting.delivery.format) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("ctrwatch: error: encoding the test alert: {e}");
                return ExitCode::FAILURE;
            }
        };
        for a in answers {
            let head = format!(
                "{} ({}) {}",
                ctrwatch_event::escape(s.name()),
                s.config.kind.name(),
                a.target
            );
            match (&a.outcome, &a.answer) {
                (Outcome::Accepted, Ok(r)) => {
                    let _ = writeln!(text, "{head}: accepted (HTTP {})", r.status);
                }
                (Outcome::Accepted, Err(_)) => {
                    let _ = writeln!(text, "{head}: accepted");
                }
                (Outcome::Failed { error, .. }, _) => {
                    all_accepted = false;
                    let _ = writeln!(text, "{head}: NOT accepted: {error}");
                }
            }
            if let Ok(r) = &a.answer {
                let body = ctrwatch_alerts::sinks::excerpt(&r.body, 300);
                if !body.is_empty() {
                    let _ = writeln!(text, "    answer: {body}");
                }
            }
        }
    }
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    if all_accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The daemon's alerting while it runs: its own rules (history gaps, heartbeat), the delivery
/// workers, and what the store writer needs (routing, who to wake, drops to report).
pub struct DaemonAlerts {
    /// Until capture starts: the sinks to hand to the workers.
    pending: Option<Alerting>,
    /// The writer's side.
    writer: WriterAlerts,
    node: Node,
    config: Config,
    rules: Option<ctrwatch_alerts::daemon_rules::DaemonRules>,
    delivery: Option<ctrwatch_alerts::Delivery>,
    detect: Option<DetectFeed>,
    /// The `metadata-mismatch` worker ([`crate::mismatch`]): a bounded queue the capture
    /// path never waits on.
    mismatch: Option<crate::checkworker::CheckWorker<Box<ctrwatch_event::FileEvent>>>,
    /// The layer check at commit and after an unclean stop (crate::layercheck).
    layer_check: Option<crate::layercheck::LayerCheck>,
    /// When the checkers' queue drops were last reported (ns).
    checks_reported_ns: Option<i64>,
    /// Where the workers hand their results, and the store they read (set at the start:
    /// a reload starts new workers with them).
    results: Option<std::sync::Arc<dyn ctrwatch_alerts::ResultSink>>,
    store: Option<std::path::PathBuf>,
}

/// Events waiting for the detection thread at most (a burst's worth; beyond it events are
/// stored but not judged, counted, and reported as a history gap).
pub const DETECT_QUEUE: usize = 65_536;

/// What the detection thread is handed, in capture order.
enum DetectMsg {
    /// An event a rule could judge.
    Event(Box<ctrwatch_event::FileEvent>),
    /// Everything captured before this time (ns) is ahead of it in the queue.
    Watermark(i64),
    /// A reload: the events behind this are judged by these rules, and their alerts name this
    /// node.
    Reconfigure(Box<(Config, Node)>),
}

/// The capture path's side of the detection thread: a bounded queue it never waits on.
struct DetectFeed {
    tx: Option<std::sync::mpsc::SyncSender<DetectMsg>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Events not judged since the last report, and the window they fall in.
    dropped: u64,
    dropped_from_ns: i64,
    dropped_to_ns: i64,
    /// A reload's rules not yet handed over (the queue was full): handed over before any
    /// further event, so that every event after the reload is judged by them.
    reconfigure: Option<Box<(Config, Node)>>,
}

impl DetectFeed {
    /// Hands over the reload's rules if one waits. False while they still wait (the queue is
    /// full): nothing may go ahead of them.
    fn hand_over_reconfigure(&mut self) -> bool {
        let Some(config) = self.reconfigure.take() else {
            return true;
        };
        let Some(tx) = &self.tx else { return true };
        match tx.try_send(DetectMsg::Reconfigure(config)) {
            Ok(()) => true,
            Err(std::sync::mpsc::TrySendError::Full(DetectMsg::Reconfigure(config))) => {
                self.reconfigure = Some(config);
                false
            }
            // Gone: nothing to reconfigure.
            Err(_) => true,
        }
    }
}

/// The detection thread: judges each event, emits the groups' revisions when they are due
/// (checked at least every [`DETECT_TICK`]), hands them to the store writer; at the end of
/// its queue emits what the groups still hold.
fn detect_loop(
    mut detector: ctrwatch_alerts::detect::Detector,
    rx: std::sync::mpsc::Receiver<DetectMsg>,
    out: std::sync::Arc<dyn ctrwatch_alerts::ResultSink>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let send = |alerts: Vec<Alert>| {
        for w in records(alerts) {
            // The writer blocks this thread when its queue is full, never the capture.
            if !out.send(w) {
                log::warn!("alerts: the store writer has stopped; a detection alert is lost");
            }
        }
    };
    // The events' clock: the windows' ends are event times (see `Clock::process`).
    let clock = ctrwatch_event::time::Clock::process();
    let mut last_tick = std::time::Instant::now();
    loop {
        match rx.recv_timeout(DETECT_TICK) {
            Ok(DetectMsg::Event(ev)) => detector.event(&ev, clock.now_ns()),
            Ok(DetectMsg::Watermark(at)) => detector.watermark(at),
            Ok(DetectMsg::Reconfigure(new)) => {
                let (config, node) = *new;
                detector.reconfigure(&config);
                detector.set_node(node);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                send(detector.flush());
                return;
            }
        }
        if last_tick.elapsed() >= DETECT_TICK {
            send(detector.tick(clock.now_ns()));
            last_tick = std::time::Instant::now();
        }
    }
}

/// Starts the detection thread on `detector`, handing its alerts to `out`.
fn start_detect(
    detector: ctrwatch_alerts::detect::Detector,
    out: std::sync::Arc<dyn ctrwatch_alerts::ResultSink>,
) -> anyhow::Result<DetectFeed> {
    let (tx, rx) = std::sync::mpsc::sync_channel(DETECT_QUEUE);
    let thread = std::thread::Builder::new()
        .name("detect".into())
        .spawn(move || detect_loop(detector, rx, out))
        .context("starting the detection thread")?;
    Ok(DetectFeed {
        tx: Some(tx),
        thread: Some(thread),
        dropped: 0,
        dropped_from_ns: 0,
        dropped_to_ns: 0,
        reconfigure: None,
    })
}

/// The `metadata-mismatch` worker for `config`'s rule (None when it is off), handing its
/// alerts to `results`.
fn start_mismatch(
    config: &Config,
    node: &Node,
    results: &std::sync::Arc<dyn ctrwatch_alerts::ResultSink>,
) -> anyhow::Result<Option<crate::checkworker::CheckWorker<Box<ctrwatch_event::FileEvent>>>> {
    let checker = ctrwatch_alerts::detect::mismatch::Checker::new(config, node.clone());
    if !checker.enabled() {
        return Ok(None);
    }
    let out = std::sync::Arc::clone(results);
    let worker = crate::mismatch::start(checker, move |alerts| {
        for w in records(alerts) {
            if !out.send(w) {
                log::warn!(
                    "alerts: the store writer has stopped; a metadata-mismatch alert is lost"
                );
            }
        }
    })?;
    Ok(Some(worker))
}

/// Stops a check worker a reload replaced, on a thread of its own: its stop (what is queued
/// checked within the stop's budget, its groups handed over) must not hold the capture
/// loop. When no thread can be started it is dropped: it ends at once, unchecked.
fn retire<W: Send + 'static>(worker: W, name: &str, stop: impl FnOnce(W) + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name(format!("{name}-old"))
        .spawn(move || stop(worker));
    if let Err(e) = spawned {
        log::warn!("{name}: the worker a reload replaced could not be stopped in order ({e})");
    }
}

/// How often the detection thread looks for revisions due.
const DETECT_TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// What the store writer needs to apply outbox writes.
#[derive(Clone)]
pub struct WriterAlerts {
    /// The sinks' names, targets and filters; the outbox bound.
    pub routing: Routing,
    /// Wakes the delivery workers after a commit that made deliveries pending.
    pub waker: Option<ctrwatch_alerts::deliver::Waker>,
    /// Alerts the outbox bound dropped undelivered, not yet reported (the writer adds, the
    /// rules take).
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl WriterAlerts {
    /// No sinks (the pipeline benchmark): alerts are kept, nobody is woken.
    pub fn none() -> WriterAlerts {
        WriterAlerts {
            routing: Routing {
                sinks: Vec::new(),
                outbox_max: Config::default().alerts.outbox_max,
            },
            waker: None,
            dropped: std::sync::Arc::default(),
        }
    }

    /// The writer applied a write: wake the workers, count drops.
    pub fn applied(&self, a: &ctrwatch_alerts::outbox::Applied) {
        if a.pending > 0
            && let Some(w) = &self.waker
        {
            w.wake();
        }
        if a.dropped_undelivered > 0 {
            log::warn!(
                "alerts: the outbox is full ([alerts] outbox_max = {}): {} undelivered alerts \
                 dropped, oldest first",
                self.routing.outbox_max,
                a.dropped_undelivered
            );
            self.dropped
                .fetch_add(a.dropped_undelivered, std::sync::atomic::Ordering::Relaxed);
        }
        if a.dropped_deliveries > 0 {
            log::warn!(
                "alerts: {} pending deliveries set aside: their sink, or that URL of it, is no \
                 longer configured (taken up again if it is put back; the outbox bound \
                 removes them in time)",
                a.dropped_deliveries
            );
        }
    }
}

impl DaemonAlerts {
    /// The daemon's alerting for this configuration (its sinks checked).
    pub fn new(alerting: Alerting) -> DaemonAlerts {
        let writer = WriterAlerts {
            routing: alerting.routing.clone(),
            waker: None,
            dropped: std::sync::Arc::default(),
        };
        DaemonAlerts {
            node: alerting.node.clone(),
            config: alerting.config.clone(),
            writer,
            pending: Some(alerting),
            rules: None,
            delivery: None,
            detect: None,
            mismatch: None,
            layer_check: None,
            checks_reported_ns: None,
            results: None,
            store: None,
        }
    }

    /// Capture started at `started_ns` (after an unclean stop when `unclean` gives the
    /// downtime's window): the rules start, and one delivery worker per sink on the store at
    /// `store`, handing results to `results`. Returns what the store writer needs.
    pub fn start(
        &mut self,
        started_ns: i64,
        unclean: Option<(i64, i64)>,
        store: &Path,
        results: std::sync::Arc<dyn ctrwatch_alerts::ResultSink>,
    ) -> anyhow::Result<WriterAlerts> {
        let mut rules = ctrwatch_alerts::daemon_rules::DaemonRules::new(
            &self.config,
            self.node.clone(),
            started_ns,
        );
        if let Some((from, to)) = unclean {
            rules.unclean_stop(from, to, started_ns);
        }
        self.rules = Some(rules);
        // Checker queue drops are reported over [last report, now]: the first report's
        // window starts with the run.
        self.checks_reported_ns = Some(started_ns);
        self.results = Some(std::sync::Arc::clone(&results));
        self.store = Some(store.to_path_buf());
        let detector = ctrwatch_alerts::detect::Detector::new(&self.config, self.node.clone());
        if detector.any_enabled() {
            self.detect = Some(start_detect(detector, std::sync::Arc::clone(&results))?);
        }
        self.mismatch = start_mismatch(&self.config, &self.node, &results)?;
        self.layer_check = crate::layercheck::LayerCheck::start(
            &self.config,
            self.node.clone(),
            unclean,
            store,
            std::sync::Arc::clone(&results),
        )?;
        if let Some(alerting) = self.pending.take()
            && !alerting.sinks.is_empty()
        {
            let n = alerting.sinks.len();
            let delivery =
                ctrwatch_alerts::Delivery::start(alerting.sinks, store, results, alerting.delivery)
                    .map_err(|e| anyhow::anyhow!("starting the alert delivery workers: {e}"))?;
            self.writer.waker = Some(delivery.waker());
            self.delivery = Some(delivery);
            log::info!("alerts: delivering to {n} sinks");
        }
        Ok(self.writer.clone())
    }

    /// A good reload's alerting (`alerting`: its sinks made ready by the reload's job, off the
    /// capture loop) applied at `now_ns`, without waiting for anything:
    /// * the rules: the detections judge the events after the reload by the new rules (the
    ///   new settings go through their queue behind the events before it), the daemon's own
    ///   rules use them from now on;
    /// * the sinks: new delivery workers start for the new sinks, on the outbox as it is (a
    ///   changed sink delivers what is pending with its new URL, secret or CA); the old ones
    ///   finish the request they are making and end. Rebuilt at every good reload, even when
    ///   the file's `[[sinks]]` did not change: a secret or CA file may have.
    ///
    /// Returns the store writer's new side (routing, waker) to hand over before it applies the
    /// next write (None before capture started: the start uses the new configuration). Fails,
    /// changing nothing, only when a thread cannot be started.
    pub fn reload(
        &mut self,
        alerting: Alerting,
        now_ns: i64,
    ) -> anyhow::Result<Option<WriterAlerts>> {
        let (Some(results), Some(store)) = (self.results.clone(), self.store.clone()) else {
            self.config = alerting.config.clone();
            self.writer.routing = alerting.routing.clone();
            self.node = alerting.node.clone();
            self.pending = Some(alerting);
            return Ok(None);
        };
        let new = alerting.config;
        let node = alerting.node;
        let node_changed = node != self.node;
        let rules_changed = self.config.rules != new.rules
            || self.config.alerts.group_window != new.alerts.group_window
            || node_changed;
        // The checks' workers hold their rules and node: the mismatch worker is restarted
        // when those change, the layer check reconfigured (its replays take long: replacing
        // it would drop the layers still queued and the one being checked).
        let checks = [
            RuleId::MetadataMismatch,
            RuleId::LayerDamaged,
            RuleId::AfterCrashVerify,
            RuleId::OpaqueLeak,
        ];
        let mismatch_changed = node_changed
            || self.config.rule(RuleId::MetadataMismatch) != new.rule(RuleId::MetadataMismatch)
            || self.config.alerts.group_window != new.alerts.group_window;
        let layer_changed = node_changed
            || checks[1..]
                .iter()
                .any(|r| self.config.rule(*r) != new.rule(*r));
        // What can fail first: on an error nothing has changed.
        let new_mismatch = if mismatch_changed {
            Some(start_mismatch(&new, &node, &results)?)
        } else {
            None
        };
        // Started only when none runs (its rules were all off); a running one is reconfigured
        // below. A new one has no after-crash verification to make (the start's was
        // dropped with its rule).
        let new_layer_check = if layer_changed && self.layer_check.is_none() {
            crate::layercheck::LayerCheck::start(
                &new,
                node.clone(),
                None,
                &store,
                std::sync::Arc::clone(&results),
            )?
        } else {
            None
        };
        let mut new_detect = None;
        if rules_changed && self.detect.is_none() {
            let detector = ctrwatch_alerts::detect::Detector::new(&new, node.clone());
            if detector.any_enabled() {
                new_detect = Some(start_detect(detector, std::sync::Arc::clone(&results))?);
            }
        }
        let n = alerting.sinks.len();
        // The new workers go on from where the old ones of the same sinks end: a delivery in
        // flight now is not made twice.
        let delivery = if n > 0 {
            let started = match &self.delivery {
                Some(previous) => ctrwatch_alerts::Delivery::replace(
                    previous,
                    alerting.sinks,
                    &store,
                    results,
                    alerting.delivery,
                ),
                None => ctrwatch_alerts::Delivery::start(
                    alerting.sinks,
                    &store,
                    results,
                    alerting.delivery,
                ),
            }
            .map_err(|e| anyhow::anyhow!("starting the alert delivery workers: {e}"))?;
            Some(started)
        } else {
            None
        };
        // Then what cannot fail.
        if rules_changed {
            if let Some(rules) = &mut self.rules {
                rules.set_node(node.clone());
                rules.reconfigure(&new, now_ns);
            }
            if let Some(feed) = &mut self.detect {
                feed.reconfigure = Some(Box::new((new.clone(), node.clone())));
                feed.hand_over_reconfigure();
            } else {
                self.detect = new_detect;
            }
        }
        if let Some(worker) = new_mismatch
            && let Some(old) = std::mem::replace(&mut self.mismatch, worker)
        {
            retire(old, "metadata-mismatch", |mut w| {
                w.stop(crate::checkworker::STOP_BUDGET);
            });
        }
        if layer_changed {
            match &self.layer_check {
                Some(check) => {
                    if check.reconfigure(&new, node.clone()) {
                        log::info!(
                            "layer check: reconfigured (reloaded): what is queued is checked \
                             by the new rules"
                        );
                    } else if let Some(old) = self.layer_check.take() {
                        // Its rules are all off now: what is queued is not to be checked.
                        retire(old, "layer-check", |mut c| c.stop());
                    }
                }
                None => self.layer_check = new_layer_check,
            }
        }
        if let Some(old) = self.delivery.take() {
            old.retire();
        }
        self.writer.waker = delivery.as_ref().map(|d| d.waker());
        self.delivery = delivery;
        if n > 0 {
            log::info!("alerts: delivering to {n} sinks (reloaded)");
        } else {
            log::info!("alerts: no sink configured (reloaded): alerts are kept in the outbox only");
        }
        self.writer.routing = alerting.routing;
        self.config = new;
        self.node = node;
        Ok(Some(self.writer.clone()))
    }

    /// Where the attribution hands newly committed snapshots to the layer check (None: its
    /// rules are off, or capture has not started).
    pub fn commit_feed(&self) -> Option<crate::layercheck::CommitFeed> {
        self.layer_check.as_ref()?.feed()
    }

    /// An event on its way to the store: a copy goes to the detection thread if a rule could
    /// judge it. Never waits: when the detection queue is full the event is counted (and
    /// reported as a history gap at the next tick), not judged.
    pub fn event(&mut self, ev: &ctrwatch_event::FileEvent) {
        if let Some(worker) = &self.mismatch
            && ctrwatch_alerts::detect::mismatch::candidate(ev).is_some()
        {
            worker.send(Box::new(ev.clone()), 1);
        }
        let Some(feed) = &mut self.detect else { return };
        if !ctrwatch_alerts::detect::wants(ev) {
            return;
        }
        // A reload's rules still waiting for room go first; while they wait, the event is
        // not judged (counted like any event the full queue turns away).
        let full = !feed.hand_over_reconfigure()
            || match &feed.tx {
                Some(tx) => matches!(
                    tx.try_send(DetectMsg::Event(Box::new(ev.clone()))),
                    Err(std::sync::mpsc::TrySendError::Full(_))
                ),
                None => return,
            };
        if full {
            if feed.dropped == 0 {
                feed.dropped_from_ns = ev.time_ns;
            }
            feed.dropped += 1;
            feed.dropped_to_ns = ev.time_ns;
        }
    }

    /// Everything captured before `at_ns` has been handed over (the watch loop's watermark):
    /// passed to the detections behind those events, so that a group's window closes only
    /// when all of its events were judged. Skipped when their queue is full (the next one
    /// comes a second later).
    pub fn watermark(&mut self, at_ns: i64) {
        let Some(feed) = &mut self.detect else { return };
        if !feed.hand_over_reconfigure() {
            return;
        }
        if let Some(tx) = &feed.tx {
            let _ = tx.try_send(DetectMsg::Watermark(at_ns));
        }
    }

    /// The outbox writes the daemon's rules want at `now_ns` (call about once a second).
    pub fn tick(&mut self, now_ns: i64) -> Vec<ctrwatch_alerts::OutboxWrite> {
        // Every drop of the checkers' queues since the last tick: logged, counted in the
        // metrics, and a history-gap fact (not only the first of the process).
        let checks_dropped = [
            (
                "metadata-mismatch",
                "mismatch_queue",
                self.mismatch.as_ref().map_or(0, |w| w.take_dropped()),
            ),
            (
                "layer-check",
                "layer_check_queue",
                self.layer_check.as_ref().map_or(0, |c| c.take_dropped()),
            ),
        ];
        for (worker, _, n) in checks_dropped {
            if n > 0 {
                log::warn!(
                    "{worker}: its queue was full: {n} check(s) not made since the last report"
                );
                crate::metrics::METRICS.checks_dropped(worker, n);
            }
        }
        let Some(rules) = &mut self.rules else {
            return Vec::new();
        };
        let since_ns = self.checks_reported_ns.replace(now_ns).unwrap_or(now_ns);
        for (_, kind, n) in checks_dropped {
            if n > 0 {
                rules.check_dropped(kind, since_ns, now_ns, n, now_ns);
            }
        }
        if let Some(feed) = &mut self.detect
            && feed.dropped > 0
        {
            log::warn!(
                "alerts: the detections fell behind: {} events stored but not judged",
                feed.dropped
            );
            rules.detect_dropped(
                feed.dropped_from_ns,
                feed.dropped_to_ns,
                feed.dropped,
                now_ns,
            );
            feed.dropped = 0;
        }
        let dropped = self
            .writer
            .dropped
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        if dropped > 0 {
            rules.outbox_dropped(dropped, now_ns);
        }
        records(rules.tick(now_ns))
    }

    /// A reload of the configuration `file` was refused for `reason`: the `config-invalid`
    /// alert to keep (none when the rule is off, or before capture started); the same
    /// content refused again is a new revision of the same alert.
    pub fn config_invalid(
        &mut self,
        file: Option<&Path>,
        reason: &str,
        now_ns: i64,
    ) -> Vec<ctrwatch_alerts::OutboxWrite> {
        let Some(rules) = &mut self.rules else {
            return Vec::new();
        };
        let content = file.map_or_else(|| "(none)".to_owned(), content_id);
        let file = file.map(ctrwatch_event::escape_path);
        records(
            rules
                .config_invalid(file.as_deref(), &content, reason, now_ns)
                .into_iter()
                .collect(),
        )
    }

    /// Protect mode `requested` cannot run, for `why` (the daemon watches only): the
    /// `protect-unavailable` alert to keep (none when the rule is off, or before capture
    /// started).
    pub fn protect_unavailable(
        &mut self,
        requested: &str,
        why: &str,
        now_ns: i64,
    ) -> Vec<ctrwatch_alerts::OutboxWrite> {
        let Some(rules) = &mut self.rules else {
            return Vec::new();
        };
        records(
            rules
                .protect_unavailable(requested, &ctrwatch_event::escape(why), now_ns)
                .into_iter()
                .collect(),
        )
    }

    /// A loss record (kernel loss, or the store writer's queue).
    pub fn loss(&mut self, loss: &ctrwatch_event::LossEvent, now_ns: i64) {
        let Some(rules) = &mut self.rules else {
            return;
        };
        let kinds = loss
            .kinds_by_name()
            .into_iter()
            .map(|(k, n)| (k.to_owned(), n))
            .collect();
        rules.loss(loss.from_ns, loss.to_ns, loss.lost, &kinds, now_ns);
    }

    /// At a stop: what the rules still hold (groups not yet emitted), then the workers stop
    /// (waiting at most `grace` for requests in flight).
    pub fn stop(&mut self, grace: std::time::Duration) -> Vec<ctrwatch_alerts::OutboxWrite> {
        // A layer check under way is abandoned: it would delay the stop by a layer's replay.
        if let Some(mut check) = self.layer_check.take() {
            check.stop();
        }
        // The detections first: they judge what is queued and hand their groups' last
        // revisions to the writer (still running). The metadata checks too: what is pending
        // is checked until the stop's deadline, the rest named in the log.
        if let Some(mut worker) = self.mismatch.take() {
            worker.stop(crate::checkworker::STOP_BUDGET);
        }
        if let Some(mut feed) = self.detect.take() {
            drop(feed.tx.take());
            if let Some(t) = feed.thread.take()
                && t.join().is_err()
            {
                log::error!("alerts: the detection thread panicked");
            }
            // Events not judged since the last tick are a history gap too.
            if feed.dropped > 0
                && let Some(rules) = &mut self.rules
            {
                log::warn!(
                    "alerts: the detections fell behind: {} events stored but not judged",
                    feed.dropped
                );
                let now_ns = ctrwatch_event::time::Clock::process().now_ns();
                rules.detect_dropped(
                    feed.dropped_from_ns,
                    feed.dropped_to_ns,
                    feed.dropped,
                    now_ns,
                );
            }
        }
        let out = self
            .rules
            .as_mut()
            .map(|r| records(r.flush()))
            .unwrap_or_default();
        if let Some(d) = self.delivery.take() {
            d.stop(grace);
        }
        out
    }
}

/// What a refused configuration file holds, to tell a refusal of the same content from one of
/// an edited file: `sha256:` of its bytes; for what cannot be read as a regular file (gone,
/// a FIFO, a directory, larger than 16 MiB) what it is instead. Never blocks: opened
/// non-blocking, read only when it is a regular file.
fn content_id(path: &Path) -> String {
    use sha2::{Digest as _, Sha256};
    use std::io::Read as _;
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    const MAX: u64 = 16 << 20;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) => return format!("unreadable: {}", e.kind()),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return format!("unreadable: {}", e.kind()),
    };
    let t = meta.file_type();
    if !t.is_file() {
        let kind = if t.is_fifo() {
            "fifo"
        } else if t.is_dir() {
            "directory"
        } else {
            "not a regular file"
        };
        return format!(
            "{kind}: inode {}",
            std::os::unix::fs::MetadataExt::ino(&meta)
        );
    }
    let mut bytes = Vec::new();
    match (&mut file).take(MAX + 1).read_to_end(&mut bytes) {
        Ok(n) if n as u64 > MAX => format!("larger than {MAX} bytes"),
        Ok(_) => format!("sha256:{}", ctrwatch_event::hex(&Sha256::digest(&bytes))),
        Err(e) => format!("unreadable: {}", e.kind()),
    }
}

fn records(alerts: Vec<Alert>) -> Vec<ctrwatch_alerts::OutboxWrite> {
    alerts
        .iter()
        .filter_map(|a| match ctrwatch_alerts::outbox::AlertRecord::of(a) {
            Ok(r) => Some(ctrwatch_alerts::OutboxWrite::Alert(Box::new(r))),
            Err(e) => {
                log::error!("alerts: cannot encode alert {}: {e}", a.id);
                None
            }
        })
        .collect()
}
