//! `ctrwatch status`: is the daemon running, since when, what does it capture, how is its
//! store, and were its last alerts delivered.
//!
//! The daemon publishes a small snapshot ([`DaemonStatus`]) in its store: the `meta` row
//! `daemon_status`, written by the store writer together with its heartbeat, about once a
//! second (the watch loop's watermark), off the capture path. Why the store and not a file
//! in the root-only lock directory: `status` is for the same people as the queries (root and
//! the store's group), who can read the store but not `/run/ctrwatch`; the snapshot is
//! committed with the events it counts; and the writer's cost is one small row a second,
//! in the transaction it commits anyway (no extra commit, no extra file to secure).
//!
//! Running means: a process holds the store's writer lock (a daemon killed with -9 holds
//! none once it is gone) and its snapshot is fresh ([`FRESH`]). A lock holder with a stale
//! snapshot is reported as not responding.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use ctrwatch_event::{escape_bytes, escape_path, format_rfc3339};

use crate::{
    queries::QueryError,
    store::{
        RecentAlert, RunRecord, Store, WriterLock, holds_lock_on, system_time_ns as ns, writer_lock,
    },
    watch::CaptureInfo,
};

/// A snapshot older than this means the daemon's loop or its store writer is stuck (it is
/// written every second).
pub const FRESH: Duration = Duration::from_secs(10);
/// How many of the newest alerts `status` shows.
pub const ALERTS_SHOWN: usize = 5;

/// `ctrwatch status`'s exit code when no daemon runs on the store (or it does not respond);
/// the store's own failures have the query commands' codes (3 to 8).
pub const NOT_RUNNING: u8 = 1;

/// The configuration file `run` read, and when.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    /// The file.
    pub path: PathBuf,
    /// When it was read.
    pub loaded_at: SystemTime,
}

/// The daemon's configuration as `status` shows it: the file in effect and when it was read,
/// the last reload (SIGHUP) that failed since, and what the file changes that only a restart
/// applies. Changed by the watch loop at a reload, read by the store writer.
#[derive(Clone, Debug, Default)]
pub struct ConfigStatus {
    /// The file in effect, if any.
    pub loaded: Option<LoadedConfig>,
    /// The last reload, when it failed: when, and why (cleared by a good one).
    pub reload_failed: Option<(SystemTime, String)>,
    /// The keys whose change in the file takes effect at the next start (`[store] path`...).
    pub restart_pending: Vec<String>,
}

/// The daemon's status snapshot, as stored (JSON in `meta.daemon_status`). Text is stored
/// escaped for display.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonStatus {
    /// The daemon's process id.
    pub pid: u32,
    /// Its version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// When capture started (the run's start).
    pub started_ns: i64,
    /// When this snapshot was taken (the watch loop's watermark).
    pub updated_ns: i64,
    /// The capture backend (`syscall-tracepoints`).
    pub backend: String,
    /// Programs attached.
    pub hooks_attached: usize,
    /// Hooks this kernel does not have.
    pub hooks_unavailable: usize,
    /// The other hook families as probed at the start (`fentry usable (...)`, escaped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hook_families: Vec<String>,
    /// Protect mode asked for (`off`, `dry-run`, `enforce`).
    #[serde(default)]
    pub protect_requested: String,
    /// Protect mode in force (`off` where the mode asked for cannot run).
    #[serde(default)]
    pub protect_in_force: String,
    /// Why the mode asked for is not in force (escaped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protect_unavailable: Option<String>,
    /// The watched roots, resolved.
    pub roots: Vec<String>,
    /// The configuration file in effect, if any.
    pub config_file: Option<String>,
    /// When it was read.
    pub config_loaded_ns: Option<i64>,
    /// The last reload failed at this time (since the last good one)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_reload_failed_ns: Option<i64>,
    /// ... for this reason (each line escaped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_reload_error: Option<String>,
    /// Keys changed in the file that take effect at the next start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_restart_pending: Vec<String>,
    /// Events handed to the store since the start.
    pub events: u64,
    /// Events lost since the start (kernel ring buffer, the writer's queue), from the loss
    /// records.
    pub lost: u64,
    /// Records counted but not stored while the store could not be written (disk full).
    pub unstored: u64,
}

/// What the daemon's writer needs to write the snapshot: the fixed part, and the capture's
/// description shared with the watch loop's sink.
#[derive(Clone, Debug)]
pub struct StatusSource {
    /// Changed at a reload.
    pub config: std::sync::Arc<std::sync::Mutex<ConfigStatus>>,
    /// When capture started.
    pub started: SystemTime,
    /// What is captured (the watch loop updates it).
    pub capture: std::sync::Arc<std::sync::Mutex<CaptureInfo>>,
}

impl StatusSource {
    /// The snapshot at `now` with the writer's counts.
    pub fn snapshot(&self, now: SystemTime, events: u64, lost: u64, unstored: u64) -> String {
        let capture = self.capture.lock().map(|c| c.clone()).unwrap_or_default();
        let config = self.config.lock().map(|c| c.clone()).unwrap_or_default();
        let status = DaemonStatus {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ns: ns(self.started),
            updated_ns: ns(now),
            backend: capture.backend,
            hooks_attached: capture.hooks_attached,
            hooks_unavailable: capture.hooks_unavailable,
            hook_families: capture
                .families
                .iter()
                .map(|f| escape_bytes(f.summary().as_bytes()))
                .collect(),
            protect_requested: capture.protect.requested.name().to_owned(),
            protect_in_force: capture.protect.in_force.name().to_owned(),
            protect_unavailable: capture
                .protect
                .unavailable
                .as_ref()
                .map(|why| escape_bytes(why.as_bytes())),
            roots: capture.roots.iter().map(|r| escape_path(r)).collect(),
            config_file: config.loaded.as_ref().map(|c| escape_path(&c.path)),
            config_loaded_ns: config.loaded.as_ref().map(|c| ns(c.loaded_at)),
            config_reload_failed_ns: config.reload_failed.as_ref().map(|(at, _)| ns(*at)),
            config_reload_error: config
                .reload_failed
                .as_ref()
                // Escaped line by line: the reason lists one problem a line.
                .map(|(_, why)| {
                    why.lines()
                        .map(|l| escape_bytes(l.as_bytes()))
                        .collect::<Vec<_>>()
                        .join("\n")
                }),
            config_restart_pending: config.restart_pending,
            events,
            lost,
            unstored,
        };
        serde_json::to_string(&status).unwrap_or_default()
    }
}

/// The daemon's state as `status` sees it.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// A daemon holds the store's lock and its snapshot is fresh.
    Running,
    /// A process holds the store's lock but its snapshot is stale or missing (stuck, still
    /// starting, or the disk is full).
    NotResponding,
    /// No daemon holds the store's lock.
    NotRunning,
}

/// Everything `status` prints (`--json`: this object).
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    /// Running, not responding, or not running.
    pub state: State,
    /// `state` is `running`.
    pub running: bool,
    /// The store's path (escaped).
    pub store: String,
    /// The lock holder's pid (running or not responding).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The last run on record, when no daemon runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunView>,
    /// The running daemon's snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonView>,
    /// When the snapshot was last written (running or not responding).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
    #[serde(skip)]
    /// [`StatusReport::updated`] in ns since the epoch.
    pub updated_ns: Option<i64>,
    /// Database and WAL bytes on disk.
    pub store_bytes: u64,
    /// The oldest event stored (RFC 3339).
    pub oldest_event: Option<String>,
    /// The latest alerts, newest first.
    pub alerts: Vec<RecentAlert>,
}

/// The running daemon, as `--json` shows it (times RFC 3339).
#[derive(Clone, Debug, Serialize)]
pub struct DaemonView {
    /// The daemon's process id.
    pub pid: u32,
    /// Its version.
    pub version: String,
    /// When capture started.
    pub since: String,
    #[serde(skip)]
    /// [`DaemonView::since`] in ns since the epoch.
    pub since_ns: i64,
    /// The capture backend.
    pub backend: String,
    /// Programs attached.
    pub hooks_attached: usize,
    /// Hooks this kernel does not have.
    pub hooks_unavailable: usize,
    /// The other hook families as probed at the start.
    pub hook_families: Vec<String>,
    /// Protect mode asked for (`off`, `dry-run`, `enforce`).
    pub protect_requested: String,
    /// Protect mode in force (`off` where the mode asked for cannot run).
    pub protect_in_force: String,
    /// Why the mode asked for is not in force.
    pub protect_unavailable: Option<String>,
    /// The watched roots, resolved.
    pub roots: Vec<String>,
    /// The configuration file in effect, if any.
    pub config_file: Option<String>,
    /// When it was read.
    pub config_loaded: Option<String>,
    /// The last reload (SIGHUP) failed at this time; the configuration loaded before stays.
    pub config_reload_failed: Option<String>,
    /// Why it failed.
    pub config_reload_error: Option<String>,
    /// Keys changed in the file that take effect at the next start.
    pub config_restart_pending: Vec<String>,
    /// Events handed to the store since the start.
    pub events: u64,
    /// Events lost since the start.
    pub lost: u64,
    /// Records counted but not stored (disk full).
    pub unstored: u64,
}

/// The last run on record.
#[derive(Clone, Debug, Serialize)]
pub struct RunView {
    /// Its process id.
    pub pid: u32,
    /// Its version.
    pub version: String,
    /// When it started.
    pub started: String,
    /// When it stopped cleanly; None: it did not (killed, crashed, power lost), or it runs.
    pub ended: Option<String>,
    /// It stopped cleanly.
    pub clean: bool,
    /// Its last heartbeat: when it was last known to run.
    pub last_heartbeat: String,
}

impl From<&RunRecord> for RunView {
    fn from(r: &RunRecord) -> RunView {
        RunView {
            pid: r.pid,
            version: r.version.clone(),
            started: format_rfc3339(r.started_ns),
            ended: r.ended_ns.map(format_rfc3339),
            clean: r.ended_ns.is_some(),
            last_heartbeat: format_rfc3339(r.heartbeat_ns),
        }
    }
}

/// A protect mode's name as stored, `off` when the snapshot has none.
fn non_empty_or_off(name: &str) -> String {
    if name.is_empty() {
        "off".to_owned()
    } else {
        name.to_owned()
    }
}

/// Reads the daemon's state and the store's facts.
pub fn report(store_path: &Path, now: SystemTime) -> Result<StatusReport, QueryError> {
    let store = Store::open_read_only(store_path)?;
    let lock = writer_lock(store_path)?;
    let snapshot: Option<DaemonStatus> = store
        .daemon_status()?
        .and_then(|json| serde_json::from_str(&json).ok());
    let holder = match lock {
        WriterLock::Held { pid } => Some(pid),
        WriterLock::Free => None,
        // Not root: the pid the snapshot names must hold a lock on the lock directory's
        // device (/proc/locks is readable by all).
        WriterLock::Unknown(dev) => snapshot
            .as_ref()
            .zip(dev)
            .filter(|(s, dev)| holds_lock_on(s.pid, *dev))
            .map(|(s, _)| s.pid),
    };
    let fresh = |s: &DaemonStatus| {
        s.updated_ns.saturating_add(FRESH.as_nanos() as i64) >= ns(now) && Some(s.pid) == holder
    };
    let state = match (&holder, &snapshot) {
        (None, _) => State::NotRunning,
        (Some(_), Some(s)) if fresh(s) => State::Running,
        (Some(_), _) => State::NotResponding,
    };
    let stats = store.stats()?;
    let daemon = snapshot
        .as_ref()
        .filter(|_| state == State::Running)
        .map(|s| DaemonView {
            pid: s.pid,
            version: s.version.clone(),
            since: format_rfc3339(s.started_ns),
            since_ns: s.started_ns,
            backend: s.backend.clone(),
            hooks_attached: s.hooks_attached,
            hooks_unavailable: s.hooks_unavailable,
            hook_families: s.hook_families.clone(),
            // A snapshot of a daemon from before protect mode: off.
            protect_requested: non_empty_or_off(&s.protect_requested),
            protect_in_force: non_empty_or_off(&s.protect_in_force),
            protect_unavailable: s.protect_unavailable.clone(),
            roots: s.roots.clone(),
            config_file: s.config_file.clone(),
            config_loaded: s.config_loaded_ns.map(format_rfc3339),
            config_reload_failed: s.config_reload_failed_ns.map(format_rfc3339),
            config_reload_error: s.config_reload_error.clone(),
            config_restart_pending: s.config_restart_pending.clone(),
            events: s.events,
            lost: s.lost,
            unstored: s.unstored,
        });
    let updated_ns = snapshot
        .as_ref()
        .filter(|s| state != State::NotRunning && Some(s.pid) == holder)
        .map(|s| s.updated_ns);
    Ok(StatusReport {
        running: state == State::Running,
        state,
        store: escape_path(store_path),
        pid: holder,
        daemon,
        updated: updated_ns.map(format_rfc3339),
        updated_ns,
        // The last run that ended, or did not: the running daemon's own is open.
        last_run: match state {
            State::NotRunning => store.last_run()?.as_ref().map(RunView::from),
            State::Running | State::NotResponding => None,
        },
        store_bytes: stats.file_bytes + stats.wal_bytes,
        oldest_event: stats.oldest,
        alerts: store.recent_alerts(ALERTS_SHOWN)?,
    })
}

/// `ctrwatch status`: prints the report; 0 when the daemon runs, [`NOT_RUNNING`] when not.
pub fn status(store_path: &Path, json: bool) -> Result<ExitCode, QueryError> {
    let now = SystemTime::now();
    let report = report(store_path, now)?;
    let text = if json {
        let mut t = serde_json::to_string(&report).map_err(std::io::Error::other)?;
        t.push('\n');
        t
    } else {
        render(&report, now)
    };
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(ExitCode::from(if report.running { 0 } else { NOT_RUNNING }))
}

/// How long ago `time_ns` was, rounded to the second ("3m 12s ago").
fn ago(time_ns: i64, now: SystemTime) -> String {
    let secs = (ns(now).saturating_sub(time_ns) / 1_000_000_000).max(0) as u64;
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The human block: a headline, then aligned `label  value` lines.
pub fn render(r: &StatusReport, now: SystemTime) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let headline = match (&r.state, &r.daemon) {
        (State::Running, Some(d)) => format!(
            "ctrwatch is running (pid {}) since {} ({})",
            d.pid,
            d.since,
            ago(d.since_ns, now)
        ),
        (State::NotResponding, _) => format!(
            "ctrwatch is NOT RESPONDING: pid {} holds the store's lock, but its status {}; its \
             event loop or store writer may be stuck, or the disk full (see its log)",
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
            match r.updated_ns {
                Some(t) => format!(
                    "was last written at {} ({})",
                    format_rfc3339(t),
                    ago(t, now)
                ),
                None => "was never written (still starting?)".into(),
            }
        ),
        _ => "ctrwatch is NOT RUNNING on this store".to_string(),
    };
    if let Some(d) = &r.daemon {
        lines.push(("version".into(), escape_bytes(d.version.as_bytes())));
        lines.push((
            "backend".into(),
            format!(
                "{} ({} hooks attached, {} not on this kernel)",
                escape_bytes(d.backend.as_bytes()),
                d.hooks_attached,
                d.hooks_unavailable
            ),
        ));
        // Escaped already when the snapshot was made.
        for family in &d.hook_families {
            lines.push((String::new(), family.clone()));
        }
        let protect = match &d.protect_unavailable {
            Some(why) => format!(
                "{} asked for, NOT IN FORCE (nothing is blocked): {why}",
                escape_bytes(d.protect_requested.as_bytes())
            ),
            None => escape_bytes(d.protect_in_force.as_bytes()),
        };
        lines.push(("protect".into(), protect));
        let mut roots = d.roots.iter();
        lines.push((
            "roots".into(),
            roots
                .next()
                // Escaped already when the snapshot was made (not twice: a `\` would show
                // doubled).
                .cloned()
                .unwrap_or_else(|| "(none)".into()),
        ));
        for root in roots {
            lines.push((String::new(), root.clone()));
        }
        let mut events = format!("{} stored since start, {} lost", d.events, d.lost);
        if d.unstored > 0 {
            events.push_str(&format!(", {} not stored (store not writable)", d.unstored));
        }
        lines.push(("events".into(), events));
        let mut config = match (&d.config_file, &d.config_loaded) {
            (Some(f), Some(at)) => {
                format!("{f}, loaded {at}")
            }
            _ => "none (built-in defaults and flags)".into(),
        };
        if let Some(at) = &d.config_reload_failed {
            config.push_str(&format!(
                "; last reload failed at {at} (still running with the configuration loaded before)"
            ));
        }
        lines.push(("config".into(), config));
        // Escaped line by line when the snapshot was made.
        if let Some(why) = &d.config_reload_error {
            for (i, line) in why.lines().enumerate() {
                lines.push((
                    if i == 0 {
                        "reload error".into()
                    } else {
                        String::new()
                    },
                    line.trim().to_owned(),
                ));
            }
        }
        if !d.config_restart_pending.is_empty() {
            lines.push((
                "needs restart".into(),
                format!(
                    "changed in the file, take effect at the next start: {}",
                    d.config_restart_pending.join(", ")
                ),
            ));
        }
    }
    if let Some(run) = &r.last_run {
        let end = match &run.ended {
            Some(e) => format!("ended cleanly at {e}"),
            None => format!(
                "ended uncleanly (killed, crashed or power lost): last heartbeat {}",
                run.last_heartbeat
            ),
        };
        lines.push((
            "last run".into(),
            format!("pid {}, started {}, {end}", run.pid, run.started),
        ));
    } else if r.state == State::NotRunning {
        lines.push(("last run".into(), "none on record".into()));
    }
    lines.push((
        "store".into(),
        format!(
            "{}, {} on disk (database + WAL)",
            r.store,
            mib(r.store_bytes)
        ),
    ));
    lines.push((
        "oldest event".into(),
        r.oldest_event
            .clone()
            .unwrap_or_else(|| "(no events)".into()),
    ));
    if let (Some(t), true) = (r.updated_ns, r.running) {
        lines.push((
            "updated".into(),
            format!("{} ({})", format_rfc3339(t), ago(t, now)),
        ));
    }
    if r.alerts.is_empty() {
        lines.push(("last alerts".into(), "none".into()));
    }
    for (i, a) in r.alerts.iter().enumerate() {
        let deliveries = if a.deliveries.is_empty() {
            "no sink".to_string()
        } else {
            a.deliveries
                .iter()
                .map(|d| {
                    format!(
                        "{} {} ({} attempt{})",
                        escape_bytes(d.sink.as_bytes()),
                        escape_bytes(d.state.as_bytes()),
                        d.attempts,
                        if d.attempts == 1 { "" } else { "s" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        lines.push((
            if i == 0 {
                "last alerts".into()
            } else {
                String::new()
            },
            format!(
                "{} {} {} {} {} ×{} rev {}: {deliveries}",
                a.last_seen,
                escape_bytes(a.id.as_bytes()),
                escape_bytes(a.rule.as_bytes()),
                escape_bytes(a.severity.as_bytes()),
                escape_bytes(a.state.as_bytes()),
                a.count,
                a.rev
            ),
        ));
    }
    let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let mut out = headline;
    out.push('\n');
    for (label, value) in lines {
        out.push_str(&format!("  {label:width$}  {value}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_reload_and_keys_waiting_for_a_restart_are_shown() {
        let config = ConfigStatus {
            loaded: Some(LoadedConfig {
                path: PathBuf::from("/etc/ctrwatch/ctrwatch.toml"),
                loaded_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000),
            }),
            reload_failed: Some((
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_100),
                "the configuration is not usable:\n  c.toml:3:1: watch.bogus: unknown \x1b".into(),
            )),
            restart_pending: vec!["[store] path".into()],
        };
        let source = StatusSource {
            config: std::sync::Arc::new(std::sync::Mutex::new(config)),
            started: SystemTime::UNIX_EPOCH,
            capture: Default::default(),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_200);
        let stored: DaemonStatus =
            serde_json::from_str(&source.snapshot(now, 1, 0, 0)).unwrap_or_default();
        assert_eq!(
            stored.config_reload_error.as_deref(),
            Some("the configuration is not usable:\n  c.toml:3:1: watch.bogus: unknown \\x1b")
        );
        let report = StatusReport {
            state: State::Running,
            running: true,
            store: "s".into(),
            pid: Some(stored.pid),
            last_run: None,
            daemon: Some(DaemonView {
                pid: stored.pid,
                version: stored.version.clone(),
                since: format_rfc3339(stored.started_ns),
                since_ns: stored.started_ns,
                backend: String::new(),
                hooks_attached: 0,
                hooks_unavailable: 0,
                hook_families: Vec::new(),
                protect_requested: "off".into(),
                protect_in_force: "off".into(),
                protect_unavailable: None,
                roots: Vec::new(),
                config_file: stored.config_file.clone(),
                config_loaded: stored.config_loaded_ns.map(format_rfc3339),
                config_reload_failed: stored.config_reload_failed_ns.map(format_rfc3339),
                config_reload_error: stored.config_reload_error.clone(),
                config_restart_pending: stored.config_restart_pending.clone(),
                events: 1,
                lost: 0,
                unstored: 0,
            }),
            updated: None,
            updated_ns: None,
            store_bytes: 0,
            oldest_event: None,
            alerts: Vec::new(),
        };
        let text = render(&report, now);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert!(
            lines.contains(
                &"config         /etc/ctrwatch/ctrwatch.toml, loaded 2026-11-30T00:53:20.000000000Z; \
                  last reload failed at 2026-11-30T00:55:00.000000000Z (still running with the \
                  configuration loaded before)"
            ),
            "{text}"
        );
        assert!(
            lines.contains(&"reload error   the configuration is not usable:"),
            "{text}"
        );
        // One line each, escaped.
        assert!(
            lines.contains(&"c.toml:3:1: watch.bogus: unknown \\x1b"),
            "{text}"
        );
        assert!(
            text.contains("needs restart") && text.contains("[store] path"),
            "{text}"
        );
    }
}
