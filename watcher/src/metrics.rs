//! The daemon's metrics: one registry ([`METRICS`]) that the daemon's threads update, and its
//! rendering in Prometheus' text exposition format (version 0.0.4) for `GET /metrics`
//! ([`crate::metrics_http`]).
//!
//! Values stay typed (ops, verdicts, rules, severities, loss kinds) until [`Metrics::render`].
//! What is counted per event is a relaxed atomic add into a fixed array on the store writer's
//! thread (no lock, no allocation); what is rare (alerts, delivery results, loss records) or
//! sampled once a second (the store's size, the outbox) takes a short lock. The counts are
//! kept whether or not a listener is configured: an add costs less than the branch would save.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use ctrwatch_event::{FileEvent, LossEvent, LossKind, Op, RuleId, Severity, Verdict};

/// The registry the daemon updates and the listener renders.
pub static METRICS: Metrics = Metrics::new();

/// An event's verdict as a label: the containerd verdict, or `none` outside containerd roots
/// (a root named with `--root` that is no containerd's).
const VERDICTS: [&str; 4] = ["owner", "container", "foreign", "none"];
const FOREIGN: usize = 2;

fn verdict_index(v: Option<Verdict>) -> usize {
    match v {
        Some(Verdict::Owner) => 0,
        Some(Verdict::Container) => 1,
        Some(Verdict::Foreign) => FOREIGN,
        None => 3,
    }
}

/// Where events were lost: in the kernel (the ring buffer was full, or a path could not be
/// resolved: the per-CPU loss counters) or at the store writer's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LossStage {
    /// In the kernel: the ring buffer was full, or a path could not be resolved.
    Kernel,
    /// At the store writer's queue (full).
    StoreQueue,
}

impl LossStage {
    /// The `stage` label's value.
    pub const fn name(self) -> &'static str {
        match self {
            LossStage::Kernel => "kernel",
            LossStage::StoreQueue => "store_queue",
        }
    }

    fn of(kind: LossKind) -> LossStage {
        match kind {
            LossKind::StoreQueue => LossStage::StoreQueue,
            _ => LossStage::Kernel,
        }
    }
}

/// What a delivery attempt came to, as a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeliveryOutcome {
    /// The sink took it.
    Delivered,
    /// Not sent on purpose (a chat robot and a heartbeat's later revision): counts as done.
    Skipped,
    /// The attempt failed (retried later, or given up).
    Failed,
    /// The outbox row could not be read.
    Unreadable,
}

impl DeliveryOutcome {
    /// The `outcome` label's value.
    pub const fn name(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Skipped => "skipped",
            DeliveryOutcome::Failed => "failed",
            DeliveryOutcome::Unreadable => "unreadable",
        }
    }

    /// The outcome of an outbox result.
    pub fn of(kind: &ctrwatch_alerts::outbox::ResultKind) -> DeliveryOutcome {
        use ctrwatch_alerts::outbox::ResultKind;
        match kind {
            ResultKind::Delivered { .. } => DeliveryOutcome::Delivered,
            ResultKind::Skipped => DeliveryOutcome::Skipped,
            ResultKind::Failed { .. } => DeliveryOutcome::Failed,
            ResultKind::Unreadable { .. } => DeliveryOutcome::Unreadable,
        }
    }
}

/// The store's facts, sampled by its writer with the heartbeat (about once a second); the
/// store's own type (`Store::metrics_facts`).
pub use crate::store::StoreFacts;

/// How full the kernel's ring buffer is, sampled at each scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingFill {
    /// Bytes written by the programs and not yet read by the daemon.
    pub used_bytes: u64,
    /// The ring buffer's data size.
    pub size_bytes: u64,
}

/// Reads the ring buffer's fill (see `crate::kernel::RingPositions`).
pub trait RingFillSource: Send + Sync {
    /// The fill now.
    fn fill(&self) -> RingFill;
}

/// A summary without quantiles: how many, and how long in total.
#[derive(Debug)]
struct DurationSummary {
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// The low-priority checkers ([`crate::checkworker`]), as the `worker` label names them.
pub const CHECKERS: [&str; 2] = ["layer-check", "metadata-mismatch"];

/// The registry. Every field is updated in place; nothing is reset while the daemon runs
/// (counters only go up, as Prometheus expects).
pub struct Metrics {
    /// A listener serves them: the samples that cost a query (the store's facts) are taken.
    enabled: AtomicBool,
    /// Events handed to the store writer, by op ([`Op::ALL`] order) and verdict.
    events: [[AtomicU64; VERDICTS.len()]; Op::ALL.len()],
    /// Alerts raised (their first revision kept in the outbox), by rule and severity.
    alerts: [[AtomicU64; Severity::ALL.len()]; RuleId::ALL.len()],
    /// Delivery attempts by sink and outcome.
    deliveries: Mutex<BTreeMap<(String, DeliveryOutcome), u64>>,
    /// Lost events by stage and kind, from the loss records.
    lost: Mutex<BTreeMap<(LossStage, LossKind), u64>>,
    /// The store's facts from its last successful read (None: never read, or the last read
    /// failed: then they are not shown rather than shown stale).
    store: Mutex<Option<StoreFacts>>,
    /// When the store's facts were last read successfully.
    store_read_at: Mutex<Option<std::time::Instant>>,
    /// Store operations of the writer that failed (appends, commits, heartbeats, outbox
    /// writes, the facts' reads).
    store_errors: AtomicU64,
    /// Checks the low-priority workers' queues dropped, by worker ([`CHECKERS`] order).
    checks_dropped: [AtomicU64; CHECKERS.len()],
    mapping_refresh: DurationSummary,
    /// The capture backend and how many of its programs are attached.
    programs: Mutex<Option<(String, usize)>>,
    /// The other hook families (fentry, lsm): whether the kernel accepted each, and how many
    /// of its programs are attached.
    families: Mutex<Vec<(String, bool, usize)>>,
    /// Protect mode asked for, and whether it is in force.
    protect: Mutex<Option<(&'static str, bool)>>,
    ring: Mutex<Option<Box<dyn RingFillSource>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves a consistent map (every update is a
    // single insert): keep using it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// All counters at zero, nothing set (the process-wide [`METRICS`] is one).
    pub const fn new() -> Metrics {
        Metrics {
            enabled: AtomicBool::new(false),
            events: [const { [const { AtomicU64::new(0) }; VERDICTS.len()] }; Op::ALL.len()],
            alerts: [const { [const { AtomicU64::new(0) }; Severity::ALL.len()] };
                RuleId::ALL.len()],
            deliveries: Mutex::new(BTreeMap::new()),
            lost: Mutex::new(BTreeMap::new()),
            store: Mutex::new(None),
            store_read_at: Mutex::new(None),
            store_errors: AtomicU64::new(0),
            checks_dropped: [const { AtomicU64::new(0) }; CHECKERS.len()],
            mapping_refresh: DurationSummary {
                count: AtomicU64::new(0),
                sum_ns: AtomicU64::new(0),
            },
            programs: Mutex::new(None),
            families: Mutex::new(Vec::new()),
            protect: Mutex::new(None),
            ring: Mutex::new(None),
        }
    }

    /// A listener serves the metrics from now on.
    pub fn enable(&self) {
        self.enabled.store(true, Relaxed);
    }

    /// Whether a listener serves them (else the sampled values need not be taken).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// An event handed to the store writer (the hot path: one relaxed add).
    #[inline]
    pub fn event(&self, ev: &FileEvent) {
        let verdict = ev.details.containerd.as_ref().map(|c| c.verdict);
        // Op is a field-less enum declared in the order of Op::ALL (checked by a test).
        if let Some(row) = self.events.get(ev.op as usize) {
            row[verdict_index(verdict)].fetch_add(1, Relaxed);
        }
    }

    /// A loss record handed to the store writer.
    pub fn loss(&self, loss: &LossEvent) {
        let mut lost = lock(&self.lost);
        for (&kind, &n) in &loss.kinds {
            *lost.entry((LossStage::of(kind), kind)).or_insert(0) += n;
        }
    }

    /// An alert's first revision was kept in the outbox.
    pub fn alert_raised(&self, rule: RuleId, severity: Severity) {
        let r = RuleId::ALL.iter().position(|x| *x == rule);
        let s = Severity::ALL.iter().position(|x| *x == severity);
        if let (Some(r), Some(s)) = (r, s) {
            self.alerts[r][s].fetch_add(1, Relaxed);
        }
    }

    /// A delivery attempt's result was recorded.
    pub fn delivery(&self, sink: &str, outcome: DeliveryOutcome) {
        let mut d = lock(&self.deliveries);
        match d.get_mut(&(sink.to_owned(), outcome)) {
            Some(n) => *n += 1,
            None => {
                d.insert((sink.to_owned(), outcome), 1);
            }
        }
    }

    /// The store's facts, just read.
    pub fn set_store_facts(&self, facts: StoreFacts) {
        *lock(&self.store) = Some(facts);
        *lock(&self.store_read_at) = Some(std::time::Instant::now());
    }

    /// The store's facts could not be read (the store failed, or is not open): the gauges
    /// they feed disappear until the next successful read; the age of the last one grows.
    pub fn store_facts_unavailable(&self) {
        *lock(&self.store) = None;
    }

    /// The queue of checker `worker` (one of [`CHECKERS`]) dropped `n` checks.
    pub fn checks_dropped(&self, worker: &str, n: u64) {
        if let Some(i) = CHECKERS.iter().position(|w| *w == worker) {
            self.checks_dropped[i].fetch_add(n, Relaxed);
        }
    }

    /// A store operation of the writer failed.
    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Relaxed);
    }

    /// One refresh of a containerd instance's snapshot→layer→image mapping took `took`.
    pub fn mapping_refreshed(&self, took: Duration) {
        self.mapping_refresh.count.fetch_add(1, Relaxed);
        self.mapping_refresh
            .sum_ns
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// The capture backend and how many of its programs are attached; the other hook
    /// families, whether the kernel accepted each and how many of their programs are attached.
    pub fn set_programs(
        &self,
        backend: &str,
        attached: usize,
        families: Vec<(String, bool, usize)>,
    ) {
        *lock(&self.programs) = Some((backend.to_owned(), attached));
        *lock(&self.families) = families;
    }

    /// Protect mode asked for (`mode`), and whether it is in force.
    pub fn set_protect(&self, mode: &'static str, active: bool) {
        *lock(&self.protect) = Some((mode, active));
    }

    /// Where the ring buffer's fill is read at each scrape.
    pub fn set_ring(&self, source: Box<dyn RingFillSource>) {
        *lock(&self.ring) = Some(source);
    }

    /// The exposition, in Prometheus' text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = Exposition::default();

        out.family(
            "ctrwatch_events_total",
            "counter",
            "File events handed to the store, by operation and verdict (none: outside containerd roots).",
        );
        for (op, row) in Op::ALL.iter().zip(&self.events) {
            for (verdict, n) in VERDICTS.iter().zip(row) {
                let n = n.load(Relaxed);
                if n > 0 {
                    out.sample(
                        "ctrwatch_events_total",
                        &[("op", op.name()), ("verdict", verdict)],
                        n as f64,
                    );
                }
            }
        }

        out.family(
            "ctrwatch_foreign_events_total",
            "counter",
            "File events with the verdict foreign (changed by neither the owning containerd, a trusted writer, nor a container in its own layer).",
        );
        let foreign: u64 = self.events.iter().map(|r| r[FOREIGN].load(Relaxed)).sum();
        out.sample("ctrwatch_foreign_events_total", &[], foreign as f64);

        out.family(
            "ctrwatch_alerts_total",
            "counter",
            "Alerts raised (first revision kept in the outbox), by rule and severity.",
        );
        for (rule, row) in RuleId::ALL.iter().zip(&self.alerts) {
            for (severity, n) in Severity::ALL.iter().zip(row) {
                let n = n.load(Relaxed);
                if n > 0 {
                    out.sample(
                        "ctrwatch_alerts_total",
                        &[("rule", rule.name()), ("severity", severity.name())],
                        n as f64,
                    );
                }
            }
        }

        out.family(
            "ctrwatch_deliveries_total",
            "counter",
            "Alert delivery attempts recorded, by sink and result.",
        );
        for ((sink, outcome), n) in lock(&self.deliveries).iter() {
            out.sample(
                "ctrwatch_deliveries_total",
                &[("sink", sink), ("result", outcome.name())],
                *n as f64,
            );
        }

        out.family(
            "ctrwatch_lost_events_total",
            "counter",
            "Events lost, by stage (kernel: ring buffer full or path unresolved; store_queue: the store writer's queue was full) and kind.",
        );
        for ((stage, kind), n) in lock(&self.lost).iter() {
            out.sample(
                "ctrwatch_lost_events_total",
                &[("stage", stage.name()), ("kind", kind.name())],
                *n as f64,
            );
        }

        out.family(
            "ctrwatch_store_errors_total",
            "counter",
            "Store operations of the daemon's writer that failed (appends, commits, heartbeats, outbox writes, reads of the store's facts).",
        );
        out.sample(
            "ctrwatch_store_errors_total",
            &[],
            self.store_errors.load(Relaxed) as f64,
        );
        out.family(
            "ctrwatch_checks_dropped_total",
            "counter",
            "Checks the low-priority checkers did not make because their queue was full (layer-check: committed snapshots not replayed; metadata-mismatch: events not checked).",
        );
        for (worker, n) in CHECKERS.iter().zip(&self.checks_dropped) {
            out.sample(
                "ctrwatch_checks_dropped_total",
                &[("worker", worker)],
                n.load(Relaxed) as f64,
            );
        }
        if let Some(at) = *lock(&self.store_read_at) {
            out.family(
                "ctrwatch_store_facts_age_seconds",
                "gauge",
                "Seconds since the store's facts (bytes, oldest event, outbox) were last read successfully.",
            );
            out.sample(
                "ctrwatch_store_facts_age_seconds",
                &[],
                at.elapsed().as_secs_f64(),
            );
        }
        let store = *lock(&self.store);
        if let Some(store) = store {
            out.family(
                "ctrwatch_store_bytes",
                "gauge",
                "The event store's database and WAL bytes on disk.",
            );
            out.sample("ctrwatch_store_bytes", &[], store.bytes as f64);
            if let Some(oldest) = store.oldest_event_ns {
                out.family(
                    "ctrwatch_store_oldest_event_timestamp_seconds",
                    "gauge",
                    "The time of the oldest event in the store, seconds since the epoch.",
                );
                out.sample(
                    "ctrwatch_store_oldest_event_timestamp_seconds",
                    &[],
                    oldest as f64 / 1e9,
                );
            }
            if let Some(pending) = store.outbox_pending {
                out.family(
                    "ctrwatch_outbox_pending",
                    "gauge",
                    "Alert deliveries waiting in the outbox (one per alert, sink and target).",
                );
                out.sample("ctrwatch_outbox_pending", &[], pending as f64);
            }
        }

        if let Some(ring) = lock(&self.ring).as_ref() {
            let fill = ring.fill();
            out.family(
                "ctrwatch_ring_buffer_used_bytes",
                "gauge",
                "Bytes in the kernel ring buffer not yet read by the daemon (producer minus consumer position).",
            );
            out.sample(
                "ctrwatch_ring_buffer_used_bytes",
                &[],
                fill.used_bytes as f64,
            );
            out.family(
                "ctrwatch_ring_buffer_size_bytes",
                "gauge",
                "The kernel ring buffer's size.",
            );
            out.sample(
                "ctrwatch_ring_buffer_size_bytes",
                &[],
                fill.size_bytes as f64,
            );
        }

        out.family(
            "ctrwatch_mapping_refresh_seconds",
            "summary",
            "Time to reload a containerd instance's metadata (the snapshot, layer and image mapping).",
        );
        out.sample(
            "ctrwatch_mapping_refresh_seconds_sum",
            &[],
            self.mapping_refresh.sum_ns.load(Relaxed) as f64 / 1e9,
        );
        out.sample(
            "ctrwatch_mapping_refresh_seconds_count",
            &[],
            self.mapping_refresh.count.load(Relaxed) as f64,
        );

        if let Some((backend, attached)) = lock(&self.programs).as_ref() {
            out.family(
                "ctrwatch_programs_attached",
                "gauge",
                "eBPF programs attached, by capture backend.",
            );
            out.sample(
                "ctrwatch_programs_attached",
                &[("backend", backend)],
                *attached as f64,
            );
            let families = lock(&self.families).clone();
            for (family, _, attached) in &families {
                out.sample(
                    "ctrwatch_programs_attached",
                    &[("backend", family)],
                    *attached as f64,
                );
            }
            if !families.is_empty() {
                out.family(
                    "ctrwatch_backend_usable",
                    "gauge",
                    "1 when the kernel accepted this hook family's test program at the start (fentry; lsm: also `bpf` an active LSM), 0 when it refused it or (lsm) `bpf` is not an active LSM.",
                );
                for (family, usable, _) in &families {
                    out.sample(
                        "ctrwatch_backend_usable",
                        &[("backend", family)],
                        f64::from(u8::from(*usable)),
                    );
                }
            }
        }

        if let Some((mode, active)) = *lock(&self.protect) {
            out.family(
                "ctrwatch_protect_active",
                "gauge",
                "1 when the protect mode asked for (`mode`: off, dry-run, enforce) is in force, 0 when it cannot run here (BPF LSM not usable: the daemon watches only and blocks nothing).",
            );
            out.sample(
                "ctrwatch_protect_active",
                &[("mode", mode)],
                f64::from(u8::from(active)),
            );
        }

        out.family(
            "ctrwatch_build_info",
            "gauge",
            "Always 1; the version of the running ctrwatch as a label.",
        );
        out.sample(
            "ctrwatch_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        out.text
    }
}

/// The text being rendered.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(label);
                self.text.push_str("=\"");
                self.text.push_str(&escape_label_value(value));
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }
}

/// A label value as the exposition format wants it: backslash, double quote and newline
/// escaped (`\\`, `\"`, `\n`); anything else as it is (UTF-8).
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text: backslash and newline escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Integers without a fraction (counters stay exact up to 2^53), others as Rust prints them.
fn format_value(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 {
        format!("{}", v as i64)
    } else if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_discriminants_follow_op_all() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{op:?}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("plain"), "plain");
        assert_eq!(escape_label_value(r#"a"b"#), r#"a\"b"#);
        assert_eq!(escape_label_value(r"a\b"), r"a\\b");
        assert_eq!(escape_label_value("a\nb"), r"a\nb");
        assert_eq!(escape_label_value("\\\"\n"), r#"\\\"\n"#);
        // Other characters pass as they are (the format is UTF-8).
        assert_eq!(escape_label_value("hôte\tx}"), "hôte\tx}");
    }

    #[test]
    fn a_sink_name_from_the_config_cannot_break_the_exposition() {
        let m = Metrics::new();
        m.delivery("evil\"} 1\nctrwatch_fake 2\n\\", DeliveryOutcome::Delivered);
        let text = m.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("ctrwatch_deliveries_total{"))
            .expect("a deliveries sample");
        assert_eq!(
            line,
            r#"ctrwatch_deliveries_total{sink="evil\"} 1\nctrwatch_fake 2\n\\",result="delivered"} 1"#
        );
        assert!(!text.lines().any(|l| l.starts_with("ctrwatch_fake")));
    }

    /// The store fails after its facts were read once: the gauges they feed go away rather
    /// than show the old values as if current, the error is counted, and the age of the last
    /// good read says how old what was last known is.
    #[test]
    fn store_gauges_do_not_go_stale_when_the_store_fails() {
        let m = Metrics::new();
        m.set_store_facts(StoreFacts {
            bytes: 4096,
            oldest_event_ns: Some(1_700_000_000_000_000_000),
            outbox_pending: Some(3),
        });
        let text = m.render();
        assert!(text.contains("ctrwatch_store_bytes 4096\n"), "{text}");
        assert!(text.contains("ctrwatch_store_errors_total 0\n"), "{text}");
        assert!(text.contains("ctrwatch_store_facts_age_seconds "), "{text}");
        m.store_error();
        m.store_facts_unavailable();
        let text = m.render();
        for stale in [
            "ctrwatch_store_bytes",
            "ctrwatch_outbox_pending",
            "ctrwatch_store_oldest_event_timestamp_seconds",
        ] {
            assert!(!text.contains(stale), "{stale} shown stale:\n{text}");
        }
        assert!(text.contains("ctrwatch_store_errors_total 1\n"), "{text}");
        let age: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("ctrwatch_store_facts_age_seconds "))
            .and_then(|v| v.parse().ok())
            .expect("the age of the last good read");
        assert!((0.0..60.0).contains(&age), "{age}");
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let m = Metrics::new();
        m.alert_raised(RuleId::ForeignChange, Severity::Critical);
        m.mapping_refreshed(Duration::from_millis(1500));
        m.set_programs(
            "tracepoint",
            12,
            vec![
                ("fentry".to_string(), true, 4),
                ("lsm".to_string(), false, 0),
            ],
        );
        m.set_store_facts(StoreFacts {
            bytes: 4096,
            oldest_event_ns: Some(1_700_000_000_500_000_000),
            outbox_pending: Some(3),
        });
        let text = m.render();
        let mut typed = std::collections::BTreeSet::new();
        let mut helped = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap_or("").to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap_or("").to_owned());
            } else {
                let name = line.split(['{', ' ']).next().unwrap_or("");
                let family = name
                    .strip_suffix("_sum")
                    .or_else(|| name.strip_suffix("_count"))
                    .filter(|f| typed.contains(*f))
                    .unwrap_or(name);
                assert!(typed.contains(family), "no TYPE before {line:?}");
                assert!(helped.contains(family), "no HELP before {line:?}");
            }
        }
        assert!(
            text.contains(
                "ctrwatch_alerts_total{rule=\"foreign-change\",severity=\"critical\"} 1\n"
            )
        );
        assert!(text.contains("ctrwatch_mapping_refresh_seconds_sum 1.5\n"));
        assert!(text.contains("ctrwatch_mapping_refresh_seconds_count 1\n"));
        assert!(text.contains("ctrwatch_programs_attached{backend=\"tracepoint\"} 12\n"));
        assert!(text.contains("ctrwatch_programs_attached{backend=\"fentry\"} 4\n"));
        assert!(text.contains("ctrwatch_backend_usable{backend=\"fentry\"} 1\n"));
        assert!(text.contains("ctrwatch_backend_usable{backend=\"lsm\"} 0\n"));
        assert!(text.contains("ctrwatch_store_oldest_event_timestamp_seconds 1700000000.5\n"));
        assert!(text.contains("ctrwatch_outbox_pending 3\n"));
        assert!(text.contains("ctrwatch_foreign_events_total 0\n"));
        assert!(text.contains(&format!(
            "ctrwatch_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
