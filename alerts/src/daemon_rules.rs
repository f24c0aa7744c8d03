//! The alerts the daemon raises itself, from what it already knows (the detections over file
//! events come on top of these):
//!
//! * `history-gap`: records the kernel could not deliver or the store could not take (loss
//!   records), a restart after an unclean stop (the downtime since the last heartbeat), and
//!   alerts the outbox had to drop, events the detections could not judge (their queue was
//!   full). Folded like every alert: one kind's holes within the
//!   group window are one alert whose count and window grow, emitted a settle delay after
//!   the first (so a burst's first seconds fold in), and once more when the window closes if
//!   anything changed since.
//! * `heartbeat`: an always-firing "ctrwatch is alive" alert, one per daemon run, with a new
//!   revision every interval (Alertmanager's dead man's switch: its silence is the alarm).
//! * `config-invalid`: a reload of the configuration (SIGHUP) was refused; the daemon runs on
//!   with the configuration it had. One alert per refused reload, raised at once.
//! * `protect-unavailable`: protect mode (`dry-run` or `enforce`) was asked for but cannot run
//!   here (BPF LSM not usable): the daemon watches only and blocks nothing. One alert per
//!   daemon run, raised when capture starts.
//!
//! The rules obey `[rules.history-gap]`, `[rules.heartbeat]`, `[rules.config-invalid]` and
//! `[rules.protect-unavailable]` (`enabled`, `severity`, `interval`).

use std::collections::BTreeMap;
use std::time::Duration;

use ctrwatch_config::{Config, RuleId, Severity};
use ctrwatch_event::format_rfc3339;

use crate::alert::{Alert, Node, gaps_command};

/// A group's first revision waits this long for more of the same.
pub const SETTLE: Duration = Duration::from_secs(2);

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// One folded history-gap alert.
struct Group {
    alert: Alert,
    /// Holes folded in (the alert's count is records, or alerts, lost).
    holes: u64,
    /// The window the holes span.
    from_ns: i64,
    to_ns: i64,
    kinds: BTreeMap<String, u64>,
    /// When the group's window closes (first hole + group window).
    closes_ns: i64,
    /// Rev 1 is emitted at this time.
    settle_ns: i64,
    emitted: bool,
    changed: bool,
}

/// `rule`'s severity as configured, None when it is off.
fn rule_severity(config: &Config, rule: RuleId) -> Option<Severity> {
    let r = config.rule(rule);
    r.enabled
        .then(|| r.severity.unwrap_or(rule.default_severity()))
}

/// The daemon's own rules.
pub struct DaemonRules {
    node: Node,
    gap_enabled: bool,
    gap_severity: Severity,
    heartbeat: Option<Heartbeat>,
    /// `config-invalid`'s severity; None: the rule is off.
    config_invalid: Option<Severity>,
    /// `protect-unavailable`'s severity; None: the rule is off.
    protect_unavailable: Option<Severity>,
    group_window: Duration,
    groups: BTreeMap<&'static str, Group>,
    /// Groups whose window closed before a tick emitted their last revision (a new hole of
    /// the same kind came first): emitted at the next tick, before anything newer.
    finished: Vec<(&'static str, Group)>,
    /// The last `config-invalid` alert and what it was about (file, content, reason): the
    /// same file refused again for the same content and reason folds into it.
    last_invalid: Option<LastInvalid>,
}

/// The last `config-invalid` alert, and what it was about.
struct LastInvalid {
    file: String,
    content: String,
    reason: String,
    /// Its first revision's summary.
    summary: String,
    alert: Alert,
}

struct Heartbeat {
    alert: Alert,
    interval: Duration,
    next_ns: i64,
}

impl DaemonRules {
    /// The rules as configured, for a daemon on `node` whose run started at `started_ns`.
    pub fn new(config: &Config, node: Node, started_ns: i64) -> DaemonRules {
        let gap = config.rule(RuleId::HistoryGap);
        let heartbeat = heartbeat_of(config, &node, started_ns);
        let invalid = config.rule(RuleId::ConfigInvalid);
        DaemonRules {
            protect_unavailable: rule_severity(config, RuleId::ProtectUnavailable),
            config_invalid: invalid.enabled.then(|| {
                invalid
                    .severity
                    .unwrap_or(RuleId::ConfigInvalid.default_severity())
            }),
            node,
            gap_enabled: gap.enabled,
            gap_severity: gap
                .severity
                .unwrap_or(RuleId::HistoryGap.default_severity()),
            heartbeat,
            group_window: config.alerts.group_window,
            groups: BTreeMap::new(),
            finished: Vec::new(),
            last_invalid: None,
        }
    }

    /// The node the alerts name.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// A reload changed `[alerts] node_name`: the alerts raised from now on name `node`, the
    /// heartbeat's next beat included (its id, from the machine id, stays).
    pub fn set_node(&mut self, node: Node) {
        if let Some(hb) = &mut self.heartbeat {
            hb.alert.node = node.clone();
        }
        self.node = node;
    }

    /// A reload changed the configuration at `now_ns`: the rules use its settings from now on
    /// (enabled, severity, the heartbeat's interval, the group window). Groups already open
    /// keep what they found; a disabled rule raises nothing new. The heartbeat keeps its
    /// alert (the same id, one revision more) with the new severity and interval; enabled by
    /// the reload, it starts beating now; disabled, it stops.
    pub fn reconfigure(&mut self, config: &Config, now_ns: i64) {
        let gap = config.rule(RuleId::HistoryGap);
        self.gap_enabled = gap.enabled;
        self.gap_severity = gap
            .severity
            .unwrap_or(RuleId::HistoryGap.default_severity());
        let invalid = config.rule(RuleId::ConfigInvalid);
        self.config_invalid = invalid.enabled.then(|| {
            invalid
                .severity
                .unwrap_or(RuleId::ConfigInvalid.default_severity())
        });
        self.protect_unavailable = rule_severity(config, RuleId::ProtectUnavailable);
        self.group_window = config.alerts.group_window;
        let hb = config.rule(RuleId::Heartbeat);
        self.heartbeat = match (self.heartbeat.take(), hb.enabled) {
            (_, false) => None,
            (None, true) => heartbeat_of(config, &self.node, now_ns),
            (Some(mut beating), true) => {
                let interval = hb.interval.unwrap_or(DEFAULT_HEARTBEAT);
                beating.alert.severity =
                    hb.severity.unwrap_or(RuleId::Heartbeat.default_severity());
                beating
                    .alert
                    .details
                    .insert("interval_seconds".into(), interval.as_secs().to_string());
                // A shorter interval takes effect now, not after the longer one's wait.
                beating.next_ns = beating.next_ns.min(now_ns.saturating_add(ns(interval)));
                beating.interval = interval;
                Some(beating)
            }
        };
    }

    /// A reload of the configuration `file` (None: no file, the defaults) was refused at
    /// `now_ns` for `reason` (one problem a line, as `ctrwatch config check` prints them);
    /// `content` identifies what the file held (a digest of its bytes, or what it was when it
    /// could not be read): the alert, unless the rule is off. The same file refused again
    /// with the same content and reason (SIGHUP sent again, a reload loop) is the same alert,
    /// one revision more, its count the refusals; anything else is a new alert.
    pub fn config_invalid(
        &mut self,
        file: Option<&str>,
        content: &str,
        reason: &str,
        now_ns: i64,
    ) -> Option<Alert> {
        let severity = self.config_invalid?;
        let shown = file.unwrap_or("(built-in defaults)");
        if let Some(last) = &mut self.last_invalid
            && last.file == shown
            && last.content == content
            && last.reason == reason
        {
            let a = &mut last.alert;
            a.rev += 1;
            a.count += 1;
            a.last_seen_ns = a.last_seen_ns.max(now_ns);
            a.summary = format!(
                "{} (refused {} times since {})",
                last.summary,
                a.count,
                format_rfc3339(a.first_seen_ns)
            );
            return Some(a.clone());
        }
        // The refusal reads "the configuration F is not usable (…):" then one problem a line:
        // the summary names the first problem, not the heading.
        let first = reason
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.ends_with(':'))
            .or_else(|| reason.lines().next())
            .unwrap_or_default();
        let mut alert = Alert::new(
            RuleId::ConfigInvalid,
            severity,
            format!("config-invalid {shown}"),
            self.node.clone(),
            now_ns,
            format!(
                "ctrwatch on {} refused to reload its configuration {shown} and runs on with \
                 the one loaded before: {first}",
                self.node.hostname
            ),
            match file {
                Some(f) => format!("ctrwatch config check {f}"),
                None => "ctrwatch config check".to_owned(),
            },
        );
        alert.details.insert("file".into(), shown.to_owned());
        alert.details.insert("error".into(), reason.to_owned());
        self.last_invalid = Some(LastInvalid {
            file: shown.to_owned(),
            content: content.to_owned(),
            reason: reason.to_owned(),
            summary: alert.summary.clone(),
            alert: alert.clone(),
        });
        Some(alert)
    }

    /// Protect mode `requested` (`dry-run`, `enforce`) cannot run at `now_ns`, for `why`
    /// (escaped by the caller): the alert, unless the rule is off. The daemon raises it once
    /// a run, when capture starts.
    pub fn protect_unavailable(
        &mut self,
        requested: &str,
        why: &str,
        now_ns: i64,
    ) -> Option<Alert> {
        let severity = self.protect_unavailable?;
        let mut alert = Alert::new(
            RuleId::ProtectUnavailable,
            severity,
            format!("protect-unavailable {requested}"),
            self.node.clone(),
            now_ns,
            format!(
                "ctrwatch on {} was asked for protect = {requested:?} but cannot protect here: \
                 {why}; it watches only and blocks nothing",
                self.node.hostname
            ),
            "ctrwatch probe".to_owned(),
        );
        alert
            .details
            .insert("requested".into(), requested.to_owned());
        alert.details.insert("in_force".into(), "off".to_owned());
        alert.details.insert("reason".into(), why.to_owned());
        Some(alert)
    }

    fn hole(
        &mut self,
        kind: &'static str,
        from_ns: i64,
        to_ns: i64,
        n: u64,
        kinds: &BTreeMap<String, u64>,
        now_ns: i64,
    ) {
        if !self.gap_enabled {
            return;
        }
        if let Some(g) = self.groups.get_mut(kind)
            && now_ns < g.closes_ns
        {
            g.holes = g.holes.saturating_add(n);
            g.from_ns = g.from_ns.min(from_ns);
            g.to_ns = g.to_ns.max(to_ns);
            for (k, v) in kinds {
                *g.kinds.entry(k.clone()).or_insert(0) += v;
            }
            g.changed = true;
            return;
        }
        // The group of this kind, if any, is closed: its revisions not yet emitted are kept
        // for the next tick. Replacing it lost them: under a loss that goes on, a new hole
        // comes every second, and with a group window shorter than the settle delay no
        // revision was ever emitted (no history-gap alert while a flood lasted).
        if let Some(old) = self.groups.remove(kind)
            && (!old.emitted || old.changed)
        {
            self.finished.push((kind, old));
        }
        let mut alert = Alert::new(
            RuleId::HistoryGap,
            self.gap_severity,
            format!("history-gap {kind}"),
            self.node.clone(),
            from_ns.min(now_ns),
            String::new(),
            String::new(),
        );
        // Revisions are counted as they are emitted.
        alert.rev = 0;
        self.groups.insert(
            kind,
            Group {
                alert,
                holes: n,
                from_ns,
                to_ns,
                kinds: kinds.clone(),
                closes_ns: now_ns.saturating_add(ns(self.group_window)),
                settle_ns: now_ns.saturating_add(ns(SETTLE)),
                emitted: false,
                changed: true,
            },
        );
    }

    /// A loss record: `lost` records of these kinds (op names, `exec`, `store_queue`, ...)
    /// missing between `from_ns` and `to_ns`.
    pub fn loss(
        &mut self,
        from_ns: i64,
        to_ns: i64,
        lost: u64,
        kinds: &BTreeMap<String, u64>,
        now_ns: i64,
    ) {
        self.hole("loss", from_ns, to_ns, lost, kinds, now_ns);
    }

    /// The daemon started after an unclean stop: nothing was captured from `from_ns` (the
    /// last heartbeat) to `to_ns`.
    pub fn unclean_stop(&mut self, from_ns: i64, to_ns: i64, now_ns: i64) {
        self.hole("unclean_stop", from_ns, to_ns, 1, &BTreeMap::new(), now_ns);
    }

    /// The outbox dropped `n` alerts before they were delivered.
    pub fn outbox_dropped(&mut self, n: u64, now_ns: i64) {
        self.hole("outbox", now_ns, now_ns, n, &BTreeMap::new(), now_ns);
    }

    /// The detections' queue was full: `n` events between `from_ns` and `to_ns` were stored
    /// but not judged.
    pub fn detect_dropped(&mut self, from_ns: i64, to_ns: i64, n: u64, now_ns: i64) {
        self.hole("detect_queue", from_ns, to_ns, n, &BTreeMap::new(), now_ns);
    }

    /// A checker's queue was full: `n` checks (layer replays: kind `layer_check_queue`;
    /// metadata checks: `mismatch_queue`) were not made between `from_ns` (the last report)
    /// and `to_ns`. The history has the events; what those checks would have said is missing.
    pub fn check_dropped(
        &mut self,
        kind: &'static str,
        from_ns: i64,
        to_ns: i64,
        n: u64,
        now_ns: i64,
    ) {
        self.hole(kind, from_ns, to_ns, n, &BTreeMap::new(), now_ns);
    }

    /// What is due at `now_ns`: heartbeat revisions, history-gap revisions.
    pub fn tick(&mut self, now_ns: i64) -> Vec<Alert> {
        let mut out = Vec::new();
        if let Some(hb) = &mut self.heartbeat
            && now_ns >= hb.next_ns
        {
            let a = &mut hb.alert;
            a.rev += 1;
            a.count += 1;
            a.last_seen_ns = now_ns;
            a.summary = format!(
                "ctrwatch on {} is alive (running since {}, beat {} every {})",
                a.node.hostname,
                format_rfc3339(a.first_seen_ns),
                a.count,
                humantime::format_duration(hb.interval)
            );
            out.push(a.clone());
            hb.next_ns = now_ns.saturating_add(ns(hb.interval));
        }
        for (kind, mut g) in std::mem::take(&mut self.finished) {
            g.alert.rev += 1;
            describe(kind, &mut g);
            out.push(g.alert);
        }
        let mut closed = Vec::new();
        for (kind, g) in &mut self.groups {
            let closing = now_ns >= g.closes_ns;
            let due = if g.emitted {
                closing && g.changed
            } else {
                now_ns >= g.settle_ns || closing
            };
            if due {
                g.alert.rev += 1;
                describe(kind, g);
                out.push(g.alert.clone());
                g.emitted = true;
                g.changed = false;
            }
            if closing {
                closed.push(*kind);
            }
        }
        for k in closed {
            self.groups.remove(k);
        }
        out
    }

    /// At a stop: every group's revision not yet emitted (a hole found in the last seconds
    /// is still reported).
    pub fn flush(&mut self) -> Vec<Alert> {
        let mut out = Vec::new();
        for (kind, mut g) in std::mem::take(&mut self.finished) {
            g.alert.rev += 1;
            describe(kind, &mut g);
            out.push(g.alert);
        }
        for (kind, g) in &mut self.groups {
            if !g.emitted || g.changed {
                g.alert.rev += 1;
                describe(kind, g);
                out.push(g.alert.clone());
            }
        }
        self.groups.clear();
        out
    }
}

/// The heartbeat's interval when `[rules.heartbeat] interval` is not set.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(300);

/// The heartbeat of `config` (None: the rule is off), its first beat at `started_ns`.
fn heartbeat_of(config: &Config, node: &Node, started_ns: i64) -> Option<Heartbeat> {
    let hb = config.rule(RuleId::Heartbeat);
    hb.enabled.then(|| {
        let interval = hb.interval.unwrap_or(DEFAULT_HEARTBEAT);
        let mut alert = Alert::new(
            RuleId::Heartbeat,
            hb.severity.unwrap_or(RuleId::Heartbeat.default_severity()),
            "heartbeat",
            node.clone(),
            started_ns,
            String::new(),
            "ctrwatch alerts",
        );
        alert.rev = 0;
        alert.count = 0;
        alert
            .details
            .insert("interval_seconds".into(), interval.as_secs().to_string());
        Heartbeat {
            alert,
            interval,
            next_ns: started_ns,
        }
    })
}

fn describe(kind: &str, g: &mut Group) {
    let span = Duration::from_nanos(u64::try_from(g.to_ns.saturating_sub(g.from_ns)).unwrap_or(0));
    let window = format!(
        "from {} to {} ({})",
        format_rfc3339(g.from_ns),
        format_rfc3339(g.to_ns),
        readable(span)
    );
    let kinds: Vec<String> = g.kinds.iter().map(|(k, n)| format!("{k}={n}")).collect();
    let a = &mut g.alert;
    a.count = g.holes;
    a.first_seen_ns = a.first_seen_ns.min(g.from_ns);
    a.last_seen_ns = g.to_ns.max(a.first_seen_ns);
    a.command = gaps_command(g.from_ns, g.to_ns);
    a.details.insert("kind".into(), kind.to_owned());
    a.details.insert("lost".into(), g.holes.to_string());
    if !kinds.is_empty() {
        a.details.insert("kinds".into(), kinds.join(" "));
    }
    a.summary = match kind {
        "loss" => {
            let mut s = format!(
                "the history has a hole: {} records were not recorded {window}",
                g.holes
            );
            if !kinds.is_empty() {
                s.push_str(&format!(" ({})", kinds.join(" ")));
            }
            s
        }
        "unclean_stop" => format!(
            "ctrwatch restarted after an unclean stop (crash, kill -9 or power loss): nothing \
             was captured {window}"
        ),
        "detect_queue" => format!(
            "{} events were recorded but not judged by the detections {window} (their queue \
             was full): alerts they would have raised are missing; the history has them",
            g.holes
        ),
        "layer_check_queue" => format!(
            "{} committed snapshots were not replayed by the layer check {window} (its queue \
             was full): layer-damaged and opaque-leak alerts they would have raised are \
             missing; `ctrwatch audit` checks them",
            g.holes
        ),
        "mismatch_queue" => format!(
            "{} events were recorded but not checked by metadata-mismatch {window} (its queue \
             was full): alerts they would have raised are missing; the history has them",
            g.holes
        ),
        _ => format!(
            "{} alerts were dropped from the outbox before they were delivered (the outbox is \
             full: [alerts] outbox_max)",
            g.holes
        ),
    };
}

fn readable(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_000_000_000_000_000;
    const S: i64 = 1_000_000_000;

    fn rules(text: &str) -> DaemonRules {
        let config = Config::parse("test.toml", text).unwrap_or_else(|e| panic!("{e:?}"));
        DaemonRules::new(
            &config,
            Node {
                hostname: "n".into(),
                machine_id: "m".into(),
            },
            T0,
        )
    }

    #[test]
    fn a_refused_reload_is_one_config_invalid_alert_unless_the_rule_is_off() {
        let mut r = rules("");
        let reason = "/etc/c.toml:3:1: watch.bogus: unknown field `bogus`\nsecond problem";
        let a = r
            .config_invalid(Some("/etc/c.toml"), "sha256:1", reason, T0 + S)
            .unwrap_or_else(|| panic!("no alert"));
        assert_eq!(a.rule, RuleId::ConfigInvalid);
        assert_eq!(a.severity, Severity::Warning);
        assert_eq!((a.rev, a.count, a.first_seen_ns), (1, 1, T0 + S));
        assert!(
            a.summary.contains("/etc/c.toml") && a.summary.contains("watch.bogus"),
            "{}",
            a.summary
        );
        assert!(!a.summary.contains("second problem"), "{}", a.summary);
        assert_eq!(a.details["error"], reason);
        assert_eq!(a.command, "ctrwatch config check /etc/c.toml");
        // As the daemon words a refusal: a heading, then the problems, indented.
        let worded = "the configuration /etc/c.toml is not usable (check it with `ctrwatch \
                      config check`):\n  /etc/c.toml:3:1: watch.bogus: unknown field `bogus`";
        let w = r
            .config_invalid(Some("/etc/c.toml"), "sha256:1", worded, T0 + S)
            .unwrap_or_else(|| panic!("no alert"));
        assert!(
            w.summary.ends_with("watch.bogus: unknown field `bogus`"),
            "{}",
            w.summary
        );
        // Another reason (or content) is another alert.
        let b = r
            .config_invalid(Some("/etc/c.toml"), "sha256:1", reason, T0 + 2 * S)
            .unwrap_or_else(|| panic!("no alert"));
        assert_ne!(b.id, a.id);
        assert_ne!(b.id, w.id);
        let off = rules("[rules.config-invalid]\nenabled = false\n");
        assert!(
            rules("[rules.config-invalid]\nenabled = false\n")
                .config_invalid(None, "x", reason, T0)
                .is_none()
        );
        drop(off);
        assert_eq!(
            rules("[rules.config-invalid]\nseverity = \"critical\"\n")
                .config_invalid(None, "x", reason, T0)
                .map(|a| a.severity),
            Some(Severity::Critical)
        );
    }

    /// Every interval's drops of a checker's queue are reported, not only the first: two
    /// reports a few seconds apart fold into one `history-gap` whose count is both.
    #[test]
    fn every_checker_queue_drop_is_a_history_gap() {
        let mut r = rules("");
        r.check_dropped("layer_check_queue", T0, T0 + S, 3, T0 + S);
        r.check_dropped("layer_check_queue", T0 + 4 * S, T0 + 5 * S, 2, T0 + 5 * S);
        r.check_dropped("mismatch_queue", T0 + 4 * S, T0 + 5 * S, 7, T0 + 5 * S);
        let all = r.flush();
        let layer = all
            .iter()
            .find(|a| a.details.get("kind").map(String::as_str) == Some("layer_check_queue"))
            .unwrap_or_else(|| panic!("no layer_check_queue gap: {all:#?}"));
        assert_eq!(layer.rule, RuleId::HistoryGap);
        assert_eq!(layer.details["lost"], "5");
        assert!(
            layer
                .summary
                .starts_with("5 committed snapshots were not replayed"),
            "{}",
            layer.summary
        );
        let mismatch = all
            .iter()
            .find(|a| a.details.get("kind").map(String::as_str) == Some("mismatch_queue"))
            .unwrap_or_else(|| panic!("no mismatch_queue gap: {all:#?}"));
        assert_eq!(mismatch.details["lost"], "7");
    }

    /// The same file content refused again and again (SIGHUP repeated, a reload loop) is one
    /// alert whose revisions count the refusals, not one alert each; other content, or
    /// another reason for the same content (its mode), is a new alert.
    #[test]
    fn repeated_refusals_of_the_same_content_fold_into_one_alert() {
        let mut r = rules("");
        let reason = "/etc/c.toml:3:1: watch.bogus: unknown field `bogus`";
        let first = r
            .config_invalid(Some("/etc/c.toml"), "sha256:aa", reason, T0 + S)
            .unwrap_or_else(|| panic!("no alert"));
        let mut last = first.clone();
        for i in 2..=5 {
            last = r
                .config_invalid(Some("/etc/c.toml"), "sha256:aa", reason, T0 + i * S)
                .unwrap_or_else(|| panic!("no alert"));
        }
        assert_eq!(last.id, first.id);
        assert_eq!((last.rev, last.count), (5, 5));
        assert_eq!(
            (last.first_seen_ns, last.last_seen_ns),
            (T0 + S, T0 + 5 * S)
        );
        assert!(last.summary.contains("refused 5 times"), "{}", last.summary);
        assert!(last.summary.contains("watch.bogus"), "{}", last.summary);
        let edited = r
            .config_invalid(Some("/etc/c.toml"), "sha256:bb", reason, T0 + 6 * S)
            .unwrap_or_else(|| panic!("no alert"));
        assert_ne!(edited.id, first.id);
        assert_eq!((edited.rev, edited.count), (1, 1));
        let chmod = r
            .config_invalid(Some("/etc/c.toml"), "sha256:bb", "mode 0666", T0 + 7 * S)
            .unwrap_or_else(|| panic!("no alert"));
        assert_ne!(chmod.id, edited.id);
    }

    #[test]
    fn a_burst_of_losses_is_one_alert_emitted_after_settling_and_at_the_window_end() {
        let mut r = rules("[rules.heartbeat]\nenabled = false\n");
        let kinds = BTreeMap::from([("unlink".to_string(), 10u64)]);
        r.loss(T0, T0 + S, 10, &kinds, T0 + S);
        assert!(r.tick(T0 + S).is_empty(), "settling");
        r.loss(T0 + S, T0 + 2 * S, 10, &kinds, T0 + 2 * S);
        let first = r.tick(T0 + 4 * S);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].rev, first[0].count), (1, 20));
        assert!(
            first[0].summary.contains("20 records were not recorded"),
            "{}",
            first[0].summary
        );
        assert!(
            first[0].summary.contains("unlink=20"),
            "{}",
            first[0].summary
        );
        assert!(first[0].command.starts_with("ctrwatch gaps --since "));
        r.loss(T0 + 5 * S, T0 + 6 * S, 5, &kinds, T0 + 6 * S);
        assert!(
            r.tick(T0 + 7 * S).is_empty(),
            "updates wait for the window end"
        );
        let last = r.tick(T0 + 32 * S);
        assert_eq!(last.len(), 1);
        assert_eq!((last[0].rev, last[0].count), (2, 25));
        assert_eq!(last[0].id, first[0].id);
        // Nothing changed: no more revisions; the next loss is a new alert.
        assert!(r.tick(T0 + 40 * S).is_empty());
        r.loss(T0 + 50 * S, T0 + 51 * S, 1, &kinds, T0 + 51 * S);
        let next = r.tick(T0 + 54 * S);
        assert_eq!(next.len(), 1);
        assert_ne!(next[0].id, first[0].id);
    }

    /// A loss that goes on: a hole every tick, each reported just before the tick runs the
    /// timers (the capture loop's order). With a group window shorter than the settle delay,
    /// every hole found the previous group closed but not yet emitted, replaced it, and no
    /// history-gap alert was emitted while the loss lasted (the e2e latency bench's flood).
    /// With the default window, the last revision of each window was lost the same way.
    #[test]
    fn a_loss_that_goes_on_is_reported_while_it_lasts_and_no_hole_is_dropped() {
        let mut r =
            rules("[alerts]\ngroup_window = \"1s\"\n\n[rules.heartbeat]\nenabled = false\n");
        let kinds = BTreeMap::from([("unlink".to_string(), 10u64)]);
        let mut out = Vec::new();
        for i in 1..=10 {
            let now = T0 + i * S + S / 10;
            r.loss(now - S, now, 10, &kinds, now);
            out.extend(r.tick(now));
        }
        assert!(!out.is_empty(), "no alert while the loss went on");
        out.extend(r.flush());
        // Every hole is in some alert's last revision.
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        for a in &out {
            last.insert(a.id.to_string(), a.count);
        }
        assert_eq!(last.values().sum::<u64>(), 100, "{out:#?}");

        // The default window (30 s): one alert, revised at the window's end with every hole.
        let mut r = rules("[rules.heartbeat]\nenabled = false\n");
        let mut out = Vec::new();
        for i in 1..=40 {
            let now = T0 + i * S + S / 10;
            r.loss(now - S, now, 10, &kinds, now);
            out.extend(r.tick(now));
        }
        out.extend(r.flush());
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        for a in &out {
            last.insert(a.id.to_string(), a.count);
        }
        assert_eq!(last.values().sum::<u64>(), 400, "{out:#?}");
    }

    #[test]
    fn heartbeats_revise_one_alert_per_run_on_their_interval() {
        let mut r = rules("[rules.heartbeat]\ninterval = \"10s\"\n");
        let a = r.tick(T0);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].rev, a[0].rule), (1, RuleId::Heartbeat));
        assert_eq!(
            a[0].details.get("interval_seconds").map(String::as_str),
            Some("10")
        );
        assert!(r.tick(T0 + 5 * S).is_empty());
        let b = r.tick(T0 + 10 * S);
        assert_eq!((b[0].rev, b[0].id.clone()), (2, a[0].id.clone()));
        assert!(b[0].summary.contains("is alive"), "{}", b[0].summary);
    }

    #[test]
    fn disabled_and_overridden_rules() {
        let mut r = rules(
            "[rules.history-gap]\nenabled = false\n[rules.heartbeat]\nseverity = \"warning\"\n",
        );
        r.unclean_stop(T0 - 10 * S, T0, T0);
        let out = r.tick(T0 + 5 * S);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].rule, out[0].severity),
            (RuleId::Heartbeat, Severity::Warning)
        );
        let mut r = rules("[rules.heartbeat]\nenabled = false\n");
        r.unclean_stop(T0 - 10 * S, T0, T0);
        let out = r.tick(T0 + 5 * S);
        assert_eq!(out.len(), 1);
        assert!(
            out[0].summary.contains("unclean stop"),
            "{}",
            out[0].summary
        );
        assert_eq!(out[0].severity, Severity::Warning);
    }

    #[test]
    fn protect_unavailable_is_one_alert_with_the_mode_and_why_unless_the_rule_is_off() {
        let mut r = rules("");
        let a = r
            .protect_unavailable("enforce", "BPF LSM is not usable here: lsm refused", T0)
            .expect("an alert");
        assert_eq!(
            (a.rule, a.severity, a.key.as_str()),
            (
                RuleId::ProtectUnavailable,
                Severity::Warning,
                "protect-unavailable enforce"
            )
        );
        assert!(a.summary.contains("blocks nothing"), "{}", a.summary);
        assert!(a.summary.contains("lsm refused"), "{}", a.summary);
        assert_eq!(a.details.get("in_force").map(String::as_str), Some("off"));
        assert_eq!(a.command, "ctrwatch probe");
        let mut r = rules("[rules.protect-unavailable]\nseverity = \"critical\"\n");
        let a = r
            .protect_unavailable("dry-run", "why", T0)
            .expect("an alert");
        assert_eq!(a.severity, Severity::Critical);
        let mut r = rules("[rules.protect-unavailable]\nenabled = false\n");
        assert!(r.protect_unavailable("enforce", "why", T0).is_none());
    }
}
