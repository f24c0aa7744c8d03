//! Detections over the file events: the rules that judge each enriched [`FileEvent`] and the
//! grouping that folds a process tree's events into one alert.
//!
//! * `foreign-change`: a foreign writer (verdict `foreign`) modified, truncated, renamed,
//!   deleted, chmod/chown-ed or changed the xattrs of anything in a committed snapshot, the
//!   content store (blobs, ingests) or containerd's metadata databases. Critical for
//!   deletions, truncations and renames in committed layers and metadata; warning otherwise.
//! * `opaque-leak` (its event part): an overlay opaque marker (`trusted.overlay.opaque` or
//!   `user.overlay.opaque` = `y`) set on a directory of a committed layer, by anyone but the
//!   owning containerd. containerd writes a tar's genuine `.wh..wh..opq` as that marker while
//!   it unpacks, before the commit; its events can be enriched after the metadata already
//!   says "committed", so its own writes are left to the layer check at commit (the tar
//!   replay, watcher/src/layercheck.rs), which judges the result whoever made it.
//! * `protect-denied` / `protect-would-deny`: protect mode's record of a denial (enforce,
//!   critical) or of an operation it would have denied (dry-run, warning). These records are
//!   the verdicts; the syscall's own record of the same call is not judged twice:
//!   `foreign-change` leaves protect's records to these rules.
//!
//! Grouping (docs/alerts.md): one rule's events of one severity from one process tree
//! within the group window fold into one alert. Revision 1 goes out a settle delay after the
//! group's first event (so a burst's first seconds fold into it); when the window closes, a
//! final revision goes out if anything changed since the last one. A script deleting 20 000
//! files gives one alert whose last revision has count 20 000.
//!
//! [`Detector`] is a plain state machine (events in, alerts out, the time given): the daemon
//! runs it on its own thread, fed through a bounded queue, so that capture never waits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ctrwatch_config::{Config, RuleId, Severity};
use ctrwatch_event::{
    FileEvent, Op, OpResult, PathBytes, ProcessView, Protect, StorageKind, Verdict, format_rfc3339,
};

use crate::alert::{Alert, FileRef, MAX_EVENTS, MAX_SAMPLE_PATHS, Node, history_command};
use crate::daemon_rules::SETTLE;

pub mod mismatch;

/// Processes that start sessions or daemons: a process tree is named by its outermost
/// ancestor that is none of these (nor PID 1).
const LAUNCHERS: &[&str] = &[
    "systemd",
    "sshd",
    "sshd-session",
    "login",
    "su",
    "sudo",
    "cron",
    "crond",
    "CRON",
    "tmux",
    "tmux: server",
    "screen",
    "SCREEN",
];

fn is_launcher(comm: &str) -> bool {
    LAUNCHERS.contains(&comm) || comm.starts_with("containerd-shim")
}

/// The process tree an event's process belongs to, as a grouping key: the unit for a
/// service's processes, else the outermost ancestor that is not PID 1 nor a launcher, as
/// (pid, comm); the process itself when there is none.
pub fn process_tree(p: &ProcessView) -> String {
    if let Some(unit) = &p.unit
        && unit.ends_with(".service")
        && !unit.starts_with("user@")
    {
        return format!("unit {unit}");
    }
    let mut tree = (p.pid, p.comm.as_str());
    // Parent first, up to PID 1: the last one that qualifies is the outermost.
    for a in &p.ancestors {
        if a.pid > 1 && !is_launcher(&a.comm) {
            tree = (a.pid, a.comm.as_str());
        }
    }
    format!("{}({})", tree.1, tree.0)
}

/// One rule's judgement of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The rule.
    pub rule: RuleId,
    /// Its severity (before a `[rules.<id>] severity` override).
    pub severity: Severity,
}

/// The path the event's `containerd` object describes: its `new_path` for a rename or link
/// into a committed layer or the metadata from elsewhere (`of_new_path`), else its `path`.
fn judged_path(ev: &FileEvent) -> &PathBytes {
    match (&ev.new_path, ev.details.containerd.as_deref()) {
        (Some(np), Some(v)) if v.of_new_path => np,
        _ => &ev.path,
    }
}

/// What `foreign-change` says about an event (None: not its business).
pub fn foreign_change(ev: &FileEvent) -> Option<Finding> {
    // A would-deny record (result ok) is a verdict, not the change: the syscall's record is.
    if ev.result != OpResult::Ok || ev.details.protect.is_some() {
        return None;
    }
    let view = ev.details.containerd.as_deref()?;
    if view.verdict != Verdict::Foreign {
        return None;
    }
    let destructive = matches!(ev.op, Op::Unlink | Op::Rmdir | Op::Truncate | Op::Rename);
    let changes = destructive
        || matches!(
            ev.op,
            Op::OpenWrite
                | Op::Modify
                | Op::Fallocate
                | Op::Chmod
                | Op::Chown
                | Op::Setxattr
                | Op::Removexattr
        );
    if !changes {
        return None;
    }
    let layer_or_metadata = view.is_committed_layer() || view.kind == StorageKind::Metadata;
    let content = matches!(view.kind, StorageKind::Blob | StorageKind::Ingest);
    if !layer_or_metadata && !content {
        return None;
    }
    let severity = if destructive && layer_or_metadata {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(Finding {
        rule: RuleId::ForeignChange,
        severity,
    })
}

/// What `opaque-leak` says about an event (its event part; None: not its business).
pub fn opaque_leak(ev: &FileEvent) -> Option<Finding> {
    if ev.op != Op::Setxattr || ev.result != OpResult::Ok {
        return None;
    }
    let view = ev.details.containerd.as_deref()?;
    let marker = ev.details.xattr.as_ref()?;
    (marker.is_opaque_marker() && view.is_committed_layer() && view.verdict != Verdict::Owner)
        .then_some(Finding {
            rule: RuleId::OpaqueLeak,
            severity: RuleId::OpaqueLeak.default_severity(),
        })
}

/// What `protect-denied` or `protect-would-deny` says about an event: every record of protect
/// mode's verdict is one (None: not a protect record).
pub fn protect_verdict(ev: &FileEvent) -> Option<Finding> {
    let rule = match ev.details.protect? {
        Protect::Denied => RuleId::ProtectDenied,
        Protect::WouldDeny => RuleId::ProtectWouldDeny,
    };
    Some(Finding {
        rule,
        severity: rule.default_severity(),
    })
}

/// Whether any rule could judge this event: the daemon's cheap filter on the capture path,
/// so that only candidates are copied to the detection thread.
pub fn wants(ev: &FileEvent) -> bool {
    foreign_change(ev).is_some() || opaque_leak(ev).is_some() || protect_verdict(ev).is_some()
}

struct RuleSetting {
    enabled: bool,
    severity: Option<Severity>,
}

impl RuleSetting {
    fn of(config: &Config, rule: RuleId) -> RuleSetting {
        let r = config.rule(rule);
        RuleSetting {
            enabled: r.enabled,
            severity: r.severity,
        }
    }
}

/// One group: an alert being folded.
struct Group {
    alert: Alert,
    /// The tree, for the summary.
    tree: String,
    /// Events whose time is before this fold in (first event + group window).
    closes_ns: i64,
    /// Revision 1 goes out at this time (wall clock).
    settle_ns: i64,
    emitted: bool,
    changed: bool,
    /// Ops seen, in order of first appearance, for the summary.
    ops: Vec<Op>,
}

/// The detections' state: open groups, the rules' settings.
pub struct Detector {
    node: Node,
    window_ns: i64,
    foreign: RuleSetting,
    opaque: RuleSetting,
    denied: RuleSetting,
    would_deny: RuleSetting,
    groups: HashMap<String, Group>,
    /// Groups replaced by a newer one of the same key, not yet finished.
    finished: Vec<Group>,
    /// Every event before this time has been judged (the capture's watermark, passed
    /// through the detection queue behind the events it covers).
    judged_until_ns: i64,
}

/// A group's window is closed when the capture's watermark passed its end; if no watermark
/// comes (capture stalled), this long after its end.
pub const MAX_LAG: Duration = Duration::from_secs(60);

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Detector {
    /// The rules as configured (`[rules.foreign-change]`, `[rules.opaque-leak]`, `[alerts]
    /// group_window`), for alerts from `node`.
    pub fn new(config: &Config, node: Node) -> Detector {
        Detector {
            node,
            window_ns: ns(config.alerts.group_window),
            foreign: RuleSetting::of(config, RuleId::ForeignChange),
            opaque: RuleSetting::of(config, RuleId::OpaqueLeak),
            denied: RuleSetting::of(config, RuleId::ProtectDenied),
            would_deny: RuleSetting::of(config, RuleId::ProtectWouldDeny),
            groups: HashMap::new(),
            finished: Vec::new(),
            judged_until_ns: i64::MIN,
        }
    }

    /// A reload changed the configuration: the events judged from now on are judged by its
    /// rules (enabled, severity) and grouped by its window. Groups already open keep what
    /// they hold and close as they would have; a new severity opens a new group (the group
    /// key holds the severity), so the next alert carries it.
    pub fn reconfigure(&mut self, config: &Config) {
        self.window_ns = ns(config.alerts.group_window);
        self.foreign = RuleSetting::of(config, RuleId::ForeignChange);
        self.opaque = RuleSetting::of(config, RuleId::OpaqueLeak);
        self.denied = RuleSetting::of(config, RuleId::ProtectDenied);
        self.would_deny = RuleSetting::of(config, RuleId::ProtectWouldDeny);
    }

    /// A reload changed `[alerts] node_name`: the groups opened from now on name `node`
    /// (open groups keep the node they were raised on).
    pub fn set_node(&mut self, node: Node) {
        self.node = node;
    }

    /// Whether any rule is on.
    pub fn any_enabled(&self) -> bool {
        self.foreign.enabled
            || self.opaque.enabled
            || self.denied.enabled
            || self.would_deny.enabled
    }

    /// Judges one event, seen at `now_ns` (wall clock): it opens or joins a group of every
    /// rule that finds something.
    pub fn event(&mut self, ev: &FileEvent, now_ns: i64) {
        let judged = [
            (
                self.foreign.enabled,
                self.foreign.severity,
                foreign_change(ev),
            ),
            (self.opaque.enabled, self.opaque.severity, opaque_leak(ev)),
            {
                let setting = match ev.details.protect {
                    Some(Protect::WouldDeny) => &self.would_deny,
                    _ => &self.denied,
                };
                (setting.enabled, setting.severity, protect_verdict(ev))
            },
        ];
        for (enabled, fixed, finding) in judged {
            let Some(f) = finding.filter(|_| enabled) else {
                continue;
            };
            self.fold(f.rule, fixed.unwrap_or(f.severity), ev, now_ns);
        }
    }

    fn fold(&mut self, rule: RuleId, severity: Severity, ev: &FileEvent, now_ns: i64) {
        let tree = process_tree(&ev.process);
        let key = format!("{}|{}|{tree}", rule.name(), severity.name());
        if let Some(g) = self.groups.get_mut(&key) {
            if ev.time_ns < g.closes_ns {
                let a = &mut g.alert;
                a.count += 1;
                a.last_seen_ns = a.last_seen_ns.max(ev.time_ns);
                let path = judged_path(ev);
                if a.sample_paths.len() < MAX_SAMPLE_PATHS && !a.sample_paths.contains(path) {
                    a.sample_paths.push(path.clone());
                }
                if a.events.len() < MAX_EVENTS {
                    a.events.push(ev.clone());
                }
                if !g.ops.contains(&ev.op) {
                    g.ops.push(ev.op);
                }
                g.changed = true;
                return;
            }
            // The window is over: that group ends, this event opens the next.
            if let Some(old) = self.groups.remove(&key) {
                self.finished.push(old);
            }
        }
        let mut alert = Alert::new(
            rule,
            severity,
            key.clone(),
            self.node.clone(),
            ev.time_ns,
            String::new(),
            String::new(),
        );
        // Revisions are counted as they are emitted.
        alert.rev = 0;
        let view = ev.details.containerd.as_deref();
        alert.file = Some(FileRef {
            path: judged_path(ev).clone(),
            inner_path: view.and_then(|v| v.path.clone()),
        });
        alert.containerd = view.cloned();
        alert.process = Some(Arc::clone(&ev.process));
        alert.sample_paths.push(judged_path(ev).clone());
        alert.events.push(ev.clone());
        alert.details.insert("op".into(), ev.op.name().into());
        self.groups.insert(
            key,
            Group {
                alert,
                tree,
                closes_ns: ev.time_ns.saturating_add(self.window_ns),
                settle_ns: now_ns.saturating_add(ns(SETTLE)),
                emitted: false,
                changed: true,
                ops: vec![ev.op],
            },
        );
    }

    /// Every event captured before `at_ns` has been judged: the windows that ended before it
    /// can close (a group's window is never closed while events of it may still be queued).
    pub fn watermark(&mut self, at_ns: i64) {
        self.judged_until_ns = self.judged_until_ns.max(at_ns);
    }

    /// The revisions due at `now_ns` (call about once a second, and when the queue is idle).
    pub fn tick(&mut self, now_ns: i64) -> Vec<Alert> {
        let mut out = Vec::new();
        for mut g in std::mem::take(&mut self.finished) {
            if !g.emitted || g.changed {
                out.push(emit(&mut g));
            }
        }
        let mut closed = Vec::new();
        for (key, g) in &mut self.groups {
            // Events are judged a little (under a flood: seconds) after they happen: the
            // window closes when the watermark says all of its events were judged.
            let closing = self.judged_until_ns >= g.closes_ns
                || now_ns >= g.closes_ns.saturating_add(ns(MAX_LAG));
            let due = if g.emitted {
                closing && g.changed
            } else {
                now_ns >= g.settle_ns || closing
            };
            if due {
                out.push(emit(g));
            }
            if closing {
                closed.push(key.clone());
            }
        }
        for k in closed {
            self.groups.remove(&k);
        }
        // Outbox order follows first times: one rule's alerts in the order they happened.
        out.sort_by_key(|a| (a.first_seen_ns, a.rev));
        out
    }

    /// At a stop: every group's revision not yet emitted.
    pub fn flush(&mut self) -> Vec<Alert> {
        let mut out = Vec::new();
        let mut all: Vec<Group> = std::mem::take(&mut self.finished);
        all.extend(self.groups.drain().map(|(_, g)| g));
        for mut g in all {
            if !g.emitted || g.changed {
                out.push(emit(&mut g));
            }
        }
        out.sort_by_key(|a| (a.first_seen_ns, a.rev));
        out
    }
}

/// The group's next revision: counted, described.
fn emit(g: &mut Group) -> Alert {
    g.alert.rev += 1;
    g.emitted = true;
    g.changed = false;
    describe(g);
    g.alert.clone()
}

fn verb(op: Op) -> &'static str {
    match op {
        Op::Unlink | Op::Rmdir => "deleted",
        Op::Truncate => "truncated",
        Op::Rename => "renamed",
        Op::Chmod => "changed the mode of",
        Op::Chown => "changed the owner of",
        Op::Setxattr => "set an xattr on",
        Op::Removexattr => "removed an xattr of",
        Op::OpenWrite | Op::Modify | Op::Fallocate => "wrote to",
        _ => "changed",
    }
}

/// What a process denied by protect mode tried to do (`it tried to …`).
fn attempt(op: Op) -> &'static str {
    match op {
        Op::Unlink | Op::Rmdir => "delete",
        Op::Truncate => "truncate",
        Op::Rename => "rename",
        Op::Setxattr => "set an xattr on",
        Op::Removexattr => "remove an xattr of",
        Op::OpenWrite | Op::Fallocate => "open for writing",
        // Protect's only modify: a setattr of the times alone (`touch -d`).
        Op::Modify => "change the times of",
        Op::Create => "create",
        Op::Mkdir => "make the directory",
        Op::Mknod => "make the device node or FIFO",
        Op::Symlink => "make the symlink",
        Op::Link => "hard-link",
        Op::Chmod => "change the mode of",
        Op::Chown => "change the owner of",
    }
}

/// Where the file is, for people: "layer sha256:… of IMAGE", "blob sha256:…", …
fn place(view: Option<&ctrwatch_event::ContainerdView>) -> String {
    let Some(v) = view else {
        return String::new();
    };
    let mut s = match v.kind {
        StorageKind::Snapshot => match (&v.layer_digest, v.snapshot_id) {
            (Some(d), _) => format!(" in committed layer {d}"),
            (None, Some(id)) => format!(" in committed snapshot {id}"),
            (None, None) => " in a committed snapshot".to_owned(),
        },
        StorageKind::Blob => match &v.blob_digest {
            Some(d) => format!(" (content blob {d})"),
            None => " (a content blob)".to_owned(),
        },
        StorageKind::Ingest => " (a download in progress)".to_owned(),
        StorageKind::Metadata => " (containerd's metadata)".to_owned(),
        _ => String::new(),
    };
    if !v.images.is_empty() {
        s.push_str(" of ");
        s.push_str(&ctrwatch_event::escape(&v.images.join(", ")));
    }
    s
}

fn describe(g: &mut Group) {
    let a = &mut g.alert;
    let view = a.containerd.as_ref();
    let who = a
        .process
        .as_deref()
        .map(|p| p.command_summary(120))
        .unwrap_or_else(|| "a process".to_owned());
    let what = match (&a.file, view.and_then(|v| v.path.as_ref())) {
        (_, Some(inner)) => inner.display(),
        (Some(f), None) => f.path.display(),
        (None, None) => String::new(),
    };
    let verdict = view
        .map(|v| {
            format!(
                " ({}: {})",
                v.verdict.name(),
                ctrwatch_event::escape(&v.reason)
            )
        })
        .unwrap_or_default();
    // "deleted PATH …", or "deleted N files, first PATH …": the ops' words, the count.
    let count = a.count;
    let phrase = |word: fn(Op) -> &'static str, counted: &str| {
        let mut words: Vec<&str> = g.ops.iter().map(|o| word(*o)).collect();
        words.dedup();
        let words = words.join("/");
        if count == 1 {
            format!("{words} {what}{}", place(view))
        } else {
            format!("{words} {count} {counted}, first {what}{}", place(view))
        }
    };
    let body = format!("{who} {}", phrase(verb, "files"));
    let tried = phrase(attempt, "times");
    a.summary = match a.rule {
        RuleId::ProtectDenied => {
            format!("protect mode denied {who} (EPERM): it tried to {tried}{verdict}")
        }
        RuleId::ProtectWouldDeny => format!(
            "protect mode (dry-run) would have denied {who} and let it through: it tried to {tried}{verdict}"
        ),
        RuleId::OpaqueLeak => format!(
            "opaque marker set on {what}{}: overlay will hide the lower layers' files under it; by {who}{verdict}",
            place(view)
        ),
        _ => format!("{body}{verdict}"),
    };
    if let Some(f) = &a.file {
        a.command = history_command(&f.path, a.first_seen_ns, a.last_seen_ns);
    }
    if a.count > 1
        && let Some(p) = a.process.as_deref()
    {
        a.query_command = Some(query_command(p, a.first_seen_ns, a.last_seen_ns));
    }
    a.details.insert("tree".into(), g.tree.clone());
    a.details.insert(
        "ops".into(),
        g.ops.iter().map(|o| o.name()).collect::<Vec<_>>().join(","),
    );
}

/// `ctrwatch query --pid N --since FIRST --until LAST` (the acting process of the group's
/// first event; a unit's group: `--unit U`).
fn query_command(p: &ProcessView, since_ns: i64, until_ns: i64) -> String {
    let who = match &p.unit {
        Some(u) if u.ends_with(".service") && !u.starts_with("user@") => {
            format!(
                "--unit {}",
                crate::alert::shell_quote(&ctrwatch_event::escape(u))
            )
        }
        _ => format!("--pid {}", p.pid),
    };
    format!(
        "ctrwatch query {who} --since {} --until {}",
        format_rfc3339(since_ns),
        format_rfc3339(until_ns)
    )
}

#[cfg(test)]
mod tests;
