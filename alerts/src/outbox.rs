//! The outbox: every alert and its delivery state per sink and target, in the history
//! store's database (tables `alerts` and `deliveries`, created by the store's migration 4,
//! [`TABLES`]).
//!
//! Writes: only the daemon's store writer writes the database. Alerts and delivery results
//! reach it as [`OutboxWrite`] messages on its queue; it applies each with [`apply`] in a
//! transaction of its own, committed at once, so that an alert is on disk before any
//! delivery attempt (the writer wakes the delivery workers after the commit).
//!
//! Reads: the delivery workers and `ctrwatch alerts` read through their own read-only
//! connections ([`Outbox`], [`list`]).
//!
//! * `alerts`: one row per alert id, holding its latest revision: `body` is the JSON sent
//!   (docs/alerts.md), `seq` the outbox order (a new revision takes the next `seq`: it is
//!   delivered after what was written before it).
//! * `deliveries`: one row per alert, sink and target (one URL of the sink): `rev` is the last
//!   revision delivered there, `state` is `pending` (revision `alerts.rev` still to deliver),
//!   `delivered` or `dropped` (the sink or target left the configuration), with the attempts,
//!   the last error and HTTP status.
//! * `meta.alerts_seq`: the last `seq` given; `meta.alerts_dropped`: alerts the bound
//!   ([`Routing::outbox_max`]) had to drop before they were delivered everywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ctrwatch_config::{Config, RuleId, Severity, SinkConfig};
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use serde::Serialize;

use crate::alert::{Alert, AlertBody, AlertId};
use crate::target_key::TargetKey;

/// Migration 4 of the history store (appended to its `MIGRATIONS`; never edit it: a change
/// is a new migration). The store's `meta` table exists since migration 1.
pub const TABLES: &str = "
CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    rev INTEGER NOT NULL,
    state TEXT NOT NULL,
    first_ns INTEGER NOT NULL,
    last_ns INTEGER NOT NULL,
    count INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE TABLE deliveries (
    alert TEXT NOT NULL,
    sink TEXT NOT NULL,
    target TEXT NOT NULL,
    rev INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ns INTEGER,
    last_error TEXT,
    last_status INTEGER,
    delivered_ns INTEGER,
    PRIMARY KEY (alert, sink, target)
) WITHOUT ROWID;
CREATE INDEX deliveries_state ON deliveries (sink, target, state);
INSERT INTO meta (key, value) VALUES ('alerts_seq', 0), ('alerts_dropped', 0);
";

/// The outbox could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database said no.
    #[error("outbox in {path}: {source}")]
    Sqlite {
        /// The database file (escaped).
        path: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// An alert's body could not be encoded.
    #[error("alert body: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One alert revision, ready for the outbox: what the writer stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertRecord {
    /// The alert id.
    pub id: AlertId,
    /// The rule.
    pub rule: RuleId,
    /// The severity.
    pub severity: Severity,
    /// The revision.
    pub rev: u64,
    /// `firing` or `resolved`.
    pub state: &'static str,
    /// First event, ns since the epoch.
    pub first_ns: i64,
    /// Last event.
    pub last_ns: i64,
    /// Events.
    pub count: u64,
    /// The JSON body.
    pub body: String,
}

impl AlertRecord {
    /// The record of an alert (its body encoded now, off the writer thread).
    pub fn of(alert: &Alert) -> Result<AlertRecord, serde_json::Error> {
        Ok(AlertRecord {
            id: alert.id.clone(),
            rule: alert.rule,
            severity: alert.severity,
            rev: alert.rev,
            state: alert.state.name(),
            first_ns: alert.first_seen_ns,
            last_ns: alert.last_seen_ns,
            count: alert.count,
            body: alert.body_json()?,
        })
    }
}

/// What a delivery attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResultKind {
    /// The receiver accepted revision `rev`.
    Delivered {
        /// Its HTTP status.
        status: u16,
    },
    /// Not sent on purpose (a chat robot and a heartbeat's later revision): counts as done.
    Skipped,
    /// Not delivered; tried again at `next_ns`.
    Failed {
        /// Why (scrubbed of secrets).
        error: String,
        /// The HTTP status, when there was an answer.
        status: Option<u16>,
        /// When the next attempt is due (ns since the epoch).
        next_ns: i64,
    },
    /// Can never be delivered (its stored body is unreadable): given up, and counted.
    Unreadable {
        /// Why.
        error: String,
    },
}

/// The result of one attempt to deliver one revision to one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryResult {
    /// The alert.
    pub alert: AlertId,
    /// The sink's name.
    pub sink: String,
    /// The target, as shown ([`crate::sinks::Target::shown`]).
    pub target: String,
    /// The revision attempted.
    pub rev: u64,
    /// What happened.
    pub kind: ResultKind,
    /// When (ns since the epoch).
    pub at_ns: i64,
}

/// A message to the store writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboxWrite {
    /// Store this alert revision and make it pending for every sink that wants it.
    Alert(Box<AlertRecord>),
    /// Record a delivery attempt.
    Result(Box<DeliveryResult>),
    /// At start and at a reload that changed the sinks: the configured sinks are these;
    /// deliveries still pending for a sink or target no longer configured are set aside
    /// (state `dropped`, [`NO_LONGER_CONFIGURED`]), and those set aside for a sink or target
    /// configured again are pending again.
    Reconcile,
}

/// Where alerts go: the sinks' names, targets and filters, and the outbox's bound. The
/// writer needs this to create the delivery rows of a new alert.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routing {
    /// The sinks.
    pub sinks: Vec<Route>,
    /// `[alerts] outbox_max`.
    pub outbox_max: u64,
}

/// One sink's routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Its name.
    pub name: String,
    /// Its targets, as shown.
    pub targets: Vec<String>,
    /// (the name an older version stored a target under, the target): renamed at start. An
    /// earlier name by position is mapped by the list's current order.
    pub formerly: Vec<(String, String)>,
    /// Its minimum severity.
    pub min_severity: Severity,
    /// Its rules (None: all).
    pub rules: Option<Vec<RuleId>>,
}

impl Route {
    fn wants(&self, rule: RuleId, severity: Severity) -> bool {
        severity >= self.min_severity && self.rules.as_ref().is_none_or(|r| r.contains(&rule))
    }
}

impl Routing {
    /// The routing of a configuration; `key` names targets that show alike
    /// ([`crate::sinks::shown_targets`]).
    pub fn of(config: &Config, key: &TargetKey) -> Routing {
        Routing {
            sinks: config.sinks.iter().map(|s| Route::of(s, key)).collect(),
            outbox_max: config.alerts.outbox_max,
        }
    }
}

impl Route {
    /// The routing of one sink; `key` names its targets that show alike.
    pub fn of(sink: &SinkConfig, key: &TargetKey) -> Route {
        use crate::sinks::{legacy_webhook_shown, positional_shown, redact_url, shown_targets};
        let targets = shown_targets(sink.kind, &sink.urls, key);
        // Earlier names: by an unkeyed hash of the URL, by position among equal redacted
        // URLs, and (webhooks) with the path.
        let mut earlier = vec![
            shown_targets(sink.kind, &sink.urls, &TargetKey::Legacy),
            positional_shown(&sink.urls, |u| redact_url(sink.kind, u)),
        ];
        if sink.kind == ctrwatch_config::SinkKind::Webhook {
            earlier.push(positional_shown(&sink.urls, legacy_webhook_shown));
        }
        let mut formerly: Vec<(String, String)> = Vec::new();
        for names in earlier {
            for (old, new) in names.into_iter().zip(targets.iter()) {
                if old != *new
                    && !targets.contains(&old)
                    && !formerly.iter().any(|(o, _)| *o == old)
                {
                    formerly.push((old, new.clone()));
                }
            }
        }
        Route {
            name: sink.name.clone(),
            targets,
            formerly,
            min_severity: sink.min_severity,
            rules: sink.rules.clone(),
        }
    }
}

/// What applying a write changed that the daemon must know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Alerts dropped by the bound before they were delivered (report them).
    pub dropped_undelivered: u64,
    /// Delivered alerts removed by the bound (nothing lost).
    pub removed_delivered: u64,
    /// Pending deliveries dropped because their sink or target is no longer configured.
    pub dropped_deliveries: u64,
    /// New pending deliveries (wake the workers).
    pub pending: u64,
}

fn meta_add(conn: &Connection, key: &str, n: i64) -> rusqlite::Result<i64> {
    conn.execute(
        "UPDATE meta SET value = coalesce(value, 0) + ?2 WHERE key = ?1",
        params![key, n],
    )?;
    conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
        r.get(0)
    })
}

/// Applies one write, inside the caller's transaction (the store writer's).
pub fn apply(
    conn: &Connection,
    write: &OutboxWrite,
    routing: &Routing,
    now_ns: i64,
) -> rusqlite::Result<Applied> {
    match write {
        OutboxWrite::Alert(a) => apply_alert(conn, a, routing, now_ns),
        OutboxWrite::Result(r) => apply_result(conn, r).map(|()| Applied::default()),
        OutboxWrite::Reconcile => reconcile(conn, routing),
    }
}

fn apply_alert(
    conn: &Connection,
    a: &AlertRecord,
    routing: &Routing,
    now_ns: i64,
) -> rusqlite::Result<Applied> {
    let current: Option<i64> = conn
        .query_row(
            "SELECT rev FROM alerts WHERE id = ?1",
            params![a.id.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    let rev = i64::try_from(a.rev).unwrap_or(i64::MAX);
    if current.is_some_and(|c| c >= rev) {
        // A revision already stored (or an older one arriving late): nothing new to send.
        return Ok(Applied::default());
    }
    let seq = meta_add(conn, "alerts_seq", 1)?;
    let count = i64::try_from(a.count).unwrap_or(i64::MAX);
    conn.execute(
        "INSERT INTO alerts (id, seq, rule, severity, rev, state, first_ns, last_ns, count, body, \
         created_ns, updated_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11) \
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, severity = excluded.severity, \
         rev = excluded.rev, state = excluded.state, last_ns = excluded.last_ns, \
         count = excluded.count, body = excluded.body, updated_ns = excluded.updated_ns",
        params![
            a.id.as_str(),
            seq,
            a.rule.name(),
            a.severity.name(),
            rev,
            a.state,
            a.first_ns,
            a.last_ns,
            count,
            a.body,
            now_ns
        ],
    )?;
    let mut applied = Applied::default();
    {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO deliveries (alert, sink, target, rev, state, attempts) \
             VALUES (?1, ?2, ?3, 0, 'pending', 0) \
             ON CONFLICT (alert, sink, target) DO UPDATE SET \
             attempts = CASE WHEN state = 'pending' THEN attempts ELSE 0 END, \
             state = 'pending', next_ns = NULL \
             WHERE state != 'dropped'",
        )?;
        for route in routing.sinks.iter().filter(|r| r.wants(a.rule, a.severity)) {
            for target in &route.targets {
                applied.pending += stmt.execute(params![a.id.as_str(), route.name, target])? as u64;
            }
        }
    }
    enforce_bound(conn, routing.outbox_max, a.id.as_str(), &mut applied)?;
    Ok(applied)
}

/// Keeps at most `max` alerts: the oldest fully delivered go first; if that is not enough,
/// the oldest undelivered are dropped and counted. `keep` (the alert just written) stays.
fn enforce_bound(
    conn: &Connection,
    max: u64,
    keep: &str,
    applied: &mut Applied,
) -> rusqlite::Result<()> {
    if max == 0 {
        return Ok(());
    }
    let total: i64 = conn.query_row("SELECT count(*) FROM alerts", [], |r| r.get(0))?;
    let mut excess = total - i64::try_from(max).unwrap_or(i64::MAX);
    if excess <= 0 {
        return Ok(());
    }
    let delivered: Vec<String> = {
        let mut stmt = conn.prepare_cached(
            "SELECT a.id FROM alerts a WHERE a.id != ?2 AND NOT EXISTS \
             (SELECT 1 FROM deliveries d WHERE d.alert = a.id AND d.state = 'pending') \
             ORDER BY a.seq LIMIT ?1",
        )?;
        stmt.query_map(params![excess, keep], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    for id in &delivered {
        delete_alert(conn, id)?;
    }
    applied.removed_delivered += delivered.len() as u64;
    excess -= delivered.len() as i64;
    if excess <= 0 {
        return Ok(());
    }
    let undelivered: Vec<String> = {
        let mut stmt =
            conn.prepare_cached("SELECT id FROM alerts WHERE id != ?2 ORDER BY seq LIMIT ?1")?;
        stmt.query_map(params![excess, keep], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    for id in &undelivered {
        delete_alert(conn, id)?;
    }
    let n = undelivered.len() as u64;
    if n > 0 {
        meta_add(conn, "alerts_dropped", n as i64)?;
    }
    applied.dropped_undelivered += n;
    Ok(())
}

fn delete_alert(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM deliveries WHERE alert = ?1")?
        .execute(params![id])?;
    conn.prepare_cached("DELETE FROM alerts WHERE id = ?1")?
        .execute(params![id])?;
    Ok(())
}

fn apply_result(conn: &Connection, r: &DeliveryResult) -> rusqlite::Result<()> {
    let rev = i64::try_from(r.rev).unwrap_or(i64::MAX);
    let key = params![r.alert.as_str(), r.sink, r.target];
    match &r.kind {
        ResultKind::Delivered { .. } | ResultKind::Skipped => {
            let status = match &r.kind {
                ResultKind::Delivered { status } => Some(i64::from(*status)),
                _ => None,
            };
            conn.prepare_cached(
                "UPDATE deliveries SET rev = max(rev, ?4), delivered_ns = ?5, last_status = ?6, \
                 last_error = NULL, next_ns = NULL, attempts = attempts + (?6 IS NOT NULL), \
                 state = CASE WHEN ?4 >= (SELECT rev FROM alerts WHERE id = ?1) \
                 THEN 'delivered' ELSE 'pending' END \
                 WHERE alert = ?1 AND sink = ?2 AND target = ?3 AND state != 'dropped'",
            )?
            .execute(params![key[0], key[1], key[2], rev, r.at_ns, status])?;
        }
        ResultKind::Failed {
            error,
            status,
            next_ns,
        } => {
            conn.prepare_cached(
                "UPDATE deliveries SET attempts = attempts + 1, next_ns = ?4, last_error = ?5, \
                 last_status = ?6 WHERE alert = ?1 AND sink = ?2 AND target = ?3 \
                 AND state = 'pending'",
            )?
            .execute(params![
                key[0],
                key[1],
                key[2],
                next_ns,
                error,
                status.map(i64::from)
            ])?;
        }
        ResultKind::Unreadable { error } => {
            let n = conn
                .prepare_cached(
                    "UPDATE deliveries SET state = 'dropped', last_error = ?4 \
                     WHERE alert = ?1 AND sink = ?2 AND target = ?3 AND state = 'pending'",
                )?
                .execute(params![key[0], key[1], key[2], error])?;
            if n > 0 {
                meta_add(conn, "alerts_dropped", 1)?;
            }
        }
    }
    Ok(())
}

fn reconcile(conn: &Connection, routing: &Routing) -> rusqlite::Result<Applied> {
    let pending: Vec<(String, String)> = {
        let mut stmt =
            conn.prepare("SELECT DISTINCT sink, target FROM deliveries WHERE state = 'pending'")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
    let mut applied = Applied::default();
    for (sink, target) in pending {
        // A target stored under the name an older version showed it by: renamed, still pending
        // (unless the same delivery exists under the new name already: then it goes below).
        let renamed = routing
            .sinks
            .iter()
            .filter(|s| s.name == sink)
            .flat_map(|s| &s.formerly)
            .find(|(old, _)| *old == target);
        if let Some((old, new)) = renamed {
            conn.execute(
                "UPDATE OR IGNORE deliveries SET target = ?3 WHERE sink = ?1 AND target = ?2",
                params![sink, old, new],
            )?;
        }
        let configured = routing
            .sinks
            .iter()
            .any(|s| s.name == sink && s.targets.contains(&target));
        if configured {
            continue;
        }
        let n = conn.execute(
            "UPDATE deliveries SET state = 'dropped', last_error = ?3 \
             WHERE sink = ?1 AND target = ?2 AND state = 'pending'",
            params![sink, target, NO_LONGER_CONFIGURED],
        )?;
        applied.dropped_deliveries += n as u64;
    }
    // Deliveries set aside because their sink (or that URL of it) was removed, and it is
    // configured again (a sink removed by mistake and put back): pending again, so that
    // nothing it missed while it was gone is lost. What waits there is bounded by the
    // outbox bound (an alert whose deliveries are all delivered or set aside goes first).
    for route in &routing.sinks {
        for target in &route.targets {
            applied.pending += conn.execute(
                "UPDATE deliveries SET state = 'pending', next_ns = NULL, attempts = 0, \
                 last_error = NULL WHERE sink = ?1 AND target = ?2 AND state = 'dropped' \
                 AND last_error = ?3",
                params![route.name, target, NO_LONGER_CONFIGURED],
            )? as u64;
        }
    }
    Ok(applied)
}

/// Why a delivery was set aside (state `dropped`) by [`OutboxWrite::Reconcile`]: its sink or
/// target left the configuration. Only these are taken up again when it comes back.
///
/// Not the text earlier versions wrote when they dropped such deliveries for good ("the sink
/// or this URL of it is no longer configured"): those stay dropped, or an upgrade would send
/// a sink that comes back every alert it missed, however old.
pub const NO_LONGER_CONFIGURED: &str = "set aside: the sink or this URL of it is no longer configured (taken up again if it comes back)";

/// One pending delivery, as a worker reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Outbox order.
    pub seq: i64,
    /// The alert.
    pub id: AlertId,
    /// The revision to deliver.
    pub rev: u64,
    /// Its body.
    pub body: String,
    /// Attempts so far.
    pub attempts: u64,
}

/// A read-only view of the outbox, for a delivery worker.
pub struct Outbox {
    conn: Connection,
    path: PathBuf,
}

impl Outbox {
    /// Opens the store's database read-only. The store must exist (the daemon's writer has
    /// created it before starting the workers).
    pub fn open(path: &Path) -> Result<Outbox, OutboxError> {
        let err = |source| OutboxError::Sqlite {
            path: ctrwatch_event::escape_path(path),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        Ok(Outbox {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> OutboxError {
        OutboxError::Sqlite {
            path: ctrwatch_event::escape_path(&self.path),
            source,
        }
    }

    /// The first pending delivery to `sink`'s `target` after `after_seq`, in outbox order.
    pub fn next_pending(
        &self,
        sink: &str,
        target: &str,
        after_seq: i64,
    ) -> Result<Option<Pending>, OutboxError> {
        self.conn
            .prepare_cached(
                "SELECT a.seq, a.id, a.rev, a.body, d.attempts FROM deliveries d \
                 JOIN alerts a ON a.id = d.alert \
                 WHERE d.sink = ?1 AND d.target = ?2 AND d.state = 'pending' AND a.seq > ?3 \
                 ORDER BY a.seq LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![sink, target, after_seq], |r| {
                    Ok(Pending {
                        seq: r.get(0)?,
                        id: AlertId(r.get(1)?),
                        rev: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                        body: r.get(3)?,
                        attempts: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                    })
                })
                .optional()
            })
            .map_err(|e| self.err(e))
    }

    /// Bodies of the alerts delivered to `sink`'s `target` that are firing and whose last
    /// event is after `since_ns` (or that are heartbeats): the candidates for a re-send.
    pub fn delivered_firing(
        &self,
        sink: &str,
        target: &str,
        since_ns: i64,
    ) -> Result<Vec<String>, OutboxError> {
        self.conn
            .prepare_cached(
                "SELECT a.body FROM deliveries d JOIN alerts a ON a.id = d.alert \
                 WHERE d.sink = ?1 AND d.target = ?2 AND d.state = 'delivered' \
                 AND a.state = 'firing' AND (a.last_ns > ?3 OR a.rule = 'heartbeat') \
                 ORDER BY a.seq",
            )
            .and_then(|mut s| {
                s.query_map(params![sink, target, since_ns], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .map_err(|e| self.err(e))
    }
}

/// One alert as `ctrwatch alerts` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AlertRow {
    /// The alert id.
    pub id: String,
    /// Outbox order.
    #[serde(skip)]
    pub seq: i64,
    /// The rule.
    pub rule: String,
    /// The severity.
    pub severity: String,
    /// The latest revision.
    pub rev: u64,
    /// `firing` or `resolved`.
    pub state: String,
    /// The node.
    pub node: String,
    /// RFC 3339.
    pub first_seen: String,
    /// RFC 3339.
    pub last_seen: String,
    /// Events.
    pub count: u64,
    /// The summary.
    pub summary: String,
    /// The history command.
    pub command: String,
    /// When the alert was first written to the outbox (RFC 3339).
    pub created: String,
    /// When its latest revision was written.
    pub updated: String,
    /// Per sink and target.
    pub deliveries: Vec<DeliveryRow>,
}

/// One alert's delivery to one target.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DeliveryRow {
    /// The sink's name.
    pub sink: String,
    /// The target (as shown: no secret).
    pub target: String,
    /// `pending`, `delivered` or `dropped`.
    pub state: String,
    /// The last revision delivered (0: none yet).
    pub delivered_rev: u64,
    /// Attempts for the revision being delivered (or the one delivered).
    pub attempts: u64,
    /// When it was last delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    /// When the next attempt is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    /// The last HTTP status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// The last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Totals of the outbox.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct OutboxTotals {
    /// Alerts in the outbox.
    pub alerts: u64,
    /// Deliveries pending.
    pub pending: u64,
    /// Alerts dropped by the bound before they were delivered, since the store was created.
    pub dropped: u64,
}

/// Alerts whose last event is at or after `since_ns`, newest first, at most `limit`, with
/// their deliveries; from any connection on the store (the CLI's read-only one).
pub fn list(conn: &Connection, since_ns: i64, limit: usize) -> rusqlite::Result<Vec<AlertRow>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows: Vec<AlertRow> = {
        let mut stmt = conn.prepare(
            "SELECT id, seq, rule, severity, rev, state, first_ns, last_ns, count, body, \
             created_ns, updated_ns FROM alerts WHERE last_ns >= ?1 ORDER BY last_ns DESC, seq DESC LIMIT ?2",
        )?;
        stmt.query_map(params![since_ns, limit], |r| {
            let body: String = r.get(9)?;
            let parsed = AlertBody::parse(&body).ok();
            Ok(AlertRow {
                id: r.get(0)?,
                seq: r.get(1)?,
                rule: r.get(2)?,
                severity: r.get(3)?,
                rev: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                state: r.get(5)?,
                node: parsed
                    .as_ref()
                    .map(|b| b.node.hostname.clone())
                    .unwrap_or_default(),
                first_seen: ctrwatch_event::format_rfc3339(r.get(6)?),
                last_seen: ctrwatch_event::format_rfc3339(r.get(7)?),
                count: u64::try_from(r.get::<_, i64>(8)?).unwrap_or(0),
                summary: parsed
                    .as_ref()
                    .map(|b| b.summary.clone())
                    .unwrap_or_else(|| "(unreadable body)".into()),
                command: parsed.map(|b| b.command).unwrap_or_default(),
                created: ctrwatch_event::format_rfc3339(r.get(10)?),
                updated: ctrwatch_event::format_rfc3339(r.get(11)?),
                deliveries: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?
    };
    let mut stmt = conn.prepare_cached(
        "SELECT sink, target, state, rev, attempts, delivered_ns, next_ns, last_status, \
         last_error FROM deliveries WHERE alert = ?1 ORDER BY sink, target",
    )?;
    for row in &mut rows {
        row.deliveries = stmt
            .query_map(params![row.id], |r| {
                Ok(DeliveryRow {
                    sink: r.get(0)?,
                    target: r.get(1)?,
                    state: r.get(2)?,
                    delivered_rev: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                    attempts: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                    delivered_at: r
                        .get::<_, Option<i64>>(5)?
                        .map(ctrwatch_event::format_rfc3339),
                    next_attempt: r
                        .get::<_, Option<i64>>(6)?
                        .map(ctrwatch_event::format_rfc3339),
                    last_status: r
                        .get::<_, Option<i64>>(7)?
                        .and_then(|s| u16::try_from(s).ok()),
                    last_error: r.get(8)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(rows)
}

/// The outbox's totals.
pub fn totals(conn: &Connection) -> rusqlite::Result<OutboxTotals> {
    let q = |sql: &str| -> rusqlite::Result<u64> {
        conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
            .map(|v| u64::try_from(v.unwrap_or(0)).unwrap_or(0))
    };
    Ok(OutboxTotals {
        alerts: q("SELECT count(*) FROM alerts")?,
        pending: q("SELECT count(*) FROM deliveries WHERE state = 'pending'")?,
        dropped: q("SELECT value FROM meta WHERE key = 'alerts_dropped'")?,
    })
}

/// The human table of `ctrwatch alerts`: one block per alert, newest first, then one line
/// per sink and target.
pub fn render_table(rows: &[AlertRow], totals: &OutboxTotals) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<30}  {:<8}  {:<18}  {:>4}  {:>7}  {:<8}  SUMMARY",
        "LAST SEEN", "SEVERITY", "RULE", "REV", "COUNT", "STATE"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<30}  {:<8}  {:<18}  {:>4}  {:>7}  {:<8}  {}",
            r.last_seen,
            r.severity,
            r.rule,
            r.rev,
            r.count,
            r.state,
            ctrwatch_event::escape(&r.summary)
        );
        let _ = writeln!(out, "    id {}  node {}", r.id, r.node);
        if r.deliveries.is_empty() {
            let _ = writeln!(out, "    (no sink takes this alert)");
        }
        for d in &r.deliveries {
            let mut line = format!(
                "    -> {} {}: {}",
                ctrwatch_event::escape(&d.sink),
                d.target,
                d.state
            );
            if d.delivered_rev > 0 {
                let _ = write!(line, ", rev {} delivered", d.delivered_rev);
                if let Some(at) = &d.delivered_at {
                    let _ = write!(line, " at {at}");
                }
            }
            let _ = write!(line, ", {} attempts", d.attempts);
            if d.state == "pending"
                && let Some(next) = &d.next_attempt
            {
                let _ = write!(line, ", next at {next}");
            }
            if let Some(e) = &d.last_error {
                let _ = write!(line, ", last error: {}", ctrwatch_event::escape(e));
            }
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(
        out,
        "{} alerts in the outbox, {} deliveries pending, {} alerts dropped undelivered (outbox bound)",
        totals.alerts, totals.pending, totals.dropped
    );
    out
}

/// The summary of an outbox's state per sink (for logs at start).
pub fn pending_per_sink(conn: &Connection) -> rusqlite::Result<BTreeMap<String, u64>> {
    let mut stmt = conn
        .prepare("SELECT sink, count(*) FROM deliveries WHERE state = 'pending' GROUP BY sink")?;
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
        ))
    })?
    .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::alert::Node;

    /// A database with the store's `meta` table and the outbox's tables.
    pub(crate) fn database(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA journal_mode = WAL;")?;
        conn.execute_batch("CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;")?;
        conn.execute_batch(TABLES)?;
        Ok(conn)
    }

    pub(crate) fn write(
        conn: &Connection,
        w: &OutboxWrite,
        routing: &Routing,
    ) -> rusqlite::Result<Applied> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let a = apply(conn, w, routing, 1)?;
        conn.execute_batch("COMMIT")?;
        Ok(a)
    }

    pub(crate) fn routing(max: u64) -> Routing {
        Routing {
            sinks: vec![
                Route {
                    name: "hook".into(),
                    targets: vec!["http://127.0.0.1:1/".into()],
                    formerly: Vec::new(),
                    min_severity: Severity::Info,
                    rules: None,
                },
                Route {
                    name: "am".into(),
                    targets: vec!["http://a".into(), "http://b".into()],
                    formerly: Vec::new(),
                    min_severity: Severity::Critical,
                    rules: None,
                },
            ],
            outbox_max: max,
        }
    }

    pub(crate) fn alert(key: &str, rev: u64, severity: Severity) -> OutboxWrite {
        let mut a = Alert::new(
            RuleId::HistoryGap,
            severity,
            key,
            Node::default(),
            1_000,
            format!("gap {key}"),
            "ctrwatch gaps",
        );
        a.rev = rev;
        a.count = rev;
        OutboxWrite::Alert(Box::new(
            AlertRecord::of(&a).unwrap_or_else(|e| panic!("{e}")),
        ))
    }

    fn id_of(w: &OutboxWrite) -> AlertId {
        match w {
            OutboxWrite::Alert(a) => a.id.clone(),
            _ => AlertId(String::new()),
        }
    }

    fn result(id: &AlertId, sink: &str, target: &str, rev: u64, kind: ResultKind) -> OutboxWrite {
        OutboxWrite::Result(Box::new(DeliveryResult {
            alert: id.clone(),
            sink: sink.into(),
            target: target.into(),
            rev,
            kind,
            at_ns: 5,
        }))
    }

    /// A test database's path; the database and SQLite's `-wal` and `-shm` files beside it
    /// are removed when it is dropped, also when the test fails.
    struct TempDb(PathBuf);

    impl TempDb {
        fn files(&self) -> [PathBuf; 3] {
            let with = |suffix: &str| {
                let mut name = self.0.clone().into_os_string();
                name.push(suffix);
                PathBuf::from(name)
            };
            [self.0.clone(), with("-wal"), with("-shm")]
        }
    }

    impl std::ops::Deref for TempDb {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for TempDb {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for f in self.files() {
                let _ = std::fs::remove_file(f);
            }
        }
    }

    fn temp(name: &str) -> TempDb {
        let db = TempDb(std::env::temp_dir().join(format!(
            "ctrwatch-outbox-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )));
        for f in db.files() {
            let _ = std::fs::remove_file(f);
        }
        db
    }

    #[test]
    fn alerts_become_pending_per_wanting_sink_and_target_in_order()
    -> Result<(), Box<dyn std::error::Error>> {
        let path = temp("order");
        let conn = database(&path)?;
        let r = routing(100);
        let w1 = alert("a", 1, Severity::Warning);
        let w2 = alert("b", 1, Severity::Critical);
        assert_eq!(write(&conn, &w1, &r)?.pending, 1); // only the hook wants a warning
        assert_eq!(write(&conn, &w2, &r)?.pending, 3);
        let ob = Outbox::open(&path)?;
        let first = ob
            .next_pending("hook", "http://127.0.0.1:1/", 0)?
            .ok_or("none")?;
        assert_eq!(first.id, id_of(&w1));
        let second = ob
            .next_pending("hook", "http://127.0.0.1:1/", first.seq)?
            .ok_or("none")?;
        assert_eq!(second.id, id_of(&w2));
        assert!(ob.next_pending("am", "http://a", 0)?.is_some());
        assert!(ob.next_pending("am", "http://c", 0)?.is_none());
        // The same revision again changes nothing; a new one moves to the end of the order.
        assert_eq!(write(&conn, &w1, &r)?.pending, 0);
        write(&conn, &alert("a", 2, Severity::Warning), &r)?;
        let head = ob
            .next_pending("hook", "http://127.0.0.1:1/", 0)?
            .ok_or("none")?;
        assert_eq!(head.id, id_of(&w2));
        Ok(())
    }

    #[test]
    fn results_deliver_fail_and_a_new_revision_is_pending_again()
    -> Result<(), Box<dyn std::error::Error>> {
        let path = temp("results");
        let conn = database(&path)?;
        let r = routing(100);
        let w = alert("a", 1, Severity::Info);
        let id = id_of(&w);
        write(&conn, &w, &r)?;
        let t = "http://127.0.0.1:1/";
        write(
            &conn,
            &result(
                &id,
                "hook",
                t,
                1,
                ResultKind::Failed {
                    error: "connection refused".into(),
                    status: None,
                    next_ns: 99,
                },
            ),
            &r,
        )?;
        let rows = list(&conn, 0, 10)?;
        assert_eq!(rows[0].deliveries[0].state, "pending");
        assert_eq!(rows[0].deliveries[0].attempts, 1);
        assert_eq!(
            rows[0].deliveries[0].last_error.as_deref(),
            Some("connection refused")
        );
        write(
            &conn,
            &result(&id, "hook", t, 1, ResultKind::Delivered { status: 200 }),
            &r,
        )?;
        let rows = list(&conn, 0, 10)?;
        let d = &rows[0].deliveries[0];
        assert_eq!(
            (d.state.as_str(), d.delivered_rev, d.attempts),
            ("delivered", 1, 2)
        );
        assert_eq!(d.last_error, None);
        // Revision 2 while revision 1's result is on its way: rev 1's result does not mark
        // rev 2 delivered.
        write(&conn, &alert("a", 2, Severity::Info), &r)?;
        write(
            &conn,
            &result(&id, "hook", t, 1, ResultKind::Delivered { status: 200 }),
            &r,
        )?;
        assert_eq!(list(&conn, 0, 10)?[0].deliveries[0].state, "pending");
        write(
            &conn,
            &result(&id, "hook", t, 2, ResultKind::Delivered { status: 200 }),
            &r,
        )?;
        let d = &list(&conn, 0, 10)?[0].deliveries[0];
        assert_eq!((d.state.as_str(), d.delivered_rev), ("delivered", 2));
        Ok(())
    }

    #[test]
    fn the_bound_removes_delivered_first_then_drops_and_counts()
    -> Result<(), Box<dyn std::error::Error>> {
        let path = temp("bound");
        let conn = database(&path)?;
        let r = routing(3);
        let t = "http://127.0.0.1:1/";
        let ws: Vec<OutboxWrite> = (0..3)
            .map(|i| alert(&format!("k{i}"), 1, Severity::Info))
            .collect();
        for w in &ws {
            write(&conn, w, &r)?;
        }
        // k1 delivered: it goes first when a fourth arrives.
        write(
            &conn,
            &result(
                &id_of(&ws[1]),
                "hook",
                t,
                1,
                ResultKind::Delivered { status: 200 },
            ),
            &r,
        )?;
        let a = write(&conn, &alert("k3", 1, Severity::Info), &r)?;
        assert_eq!((a.removed_delivered, a.dropped_undelivered), (1, 0));
        // Nothing delivered: the oldest undelivered (k0) is dropped and counted.
        let a = write(&conn, &alert("k4", 1, Severity::Info), &r)?;
        assert_eq!((a.removed_delivered, a.dropped_undelivered), (0, 1));
        let ids: Vec<String> = list(&conn, 0, 10)?.into_iter().map(|r| r.summary).collect();
        assert_eq!(ids.len(), 3);
        assert!(!ids.contains(&"gap k0".to_string()), "{ids:?}");
        assert_eq!(totals(&conn)?.dropped, 1);
        Ok(())
    }

    #[test]
    fn a_sink_removed_from_the_config_has_its_pending_deliveries_dropped()
    -> Result<(), Box<dyn std::error::Error>> {
        let path = temp("reconcile");
        let conn = database(&path)?;
        let r = routing(100);
        write(&conn, &alert("a", 1, Severity::Critical), &r)?;
        let mut fewer = r.clone();
        fewer.sinks.retain(|s| s.name == "hook");
        fewer.sinks.push(Route {
            name: "am".into(),
            targets: vec!["http://a".into()],
            formerly: Vec::new(),
            min_severity: Severity::Info,
            rules: None,
        });
        let a = write(&conn, &OutboxWrite::Reconcile, &fewer)?;
        assert_eq!(a.dropped_deliveries, 1); // am's http://b
        let rows = list(&conn, 0, 10)?;
        let states: Vec<(String, String)> = rows[0]
            .deliveries
            .iter()
            .map(|d| (d.target.clone(), d.state.clone()))
            .collect();
        assert!(
            states.contains(&("http://b".into(), "dropped".into())),
            "{states:?}"
        );
        assert!(
            states.contains(&("http://a".into(), "pending".into())),
            "{states:?}"
        );
        let text = render_table(&rows, &totals(&conn)?);
        assert!(text.contains("-> am http://b: dropped"), "{text}");
        Ok(())
    }

    /// A sink removed (by a reload or a restart) and put back: what was pending for it when
    /// it left is pending again, to be delivered; what it never had stays so; deliveries
    /// dropped for another reason (an unreadable body) stay dropped.
    #[test]
    fn a_sink_put_back_takes_up_the_deliveries_set_aside_when_it_left()
    -> Result<(), Box<dyn std::error::Error>> {
        let path = temp("put-back");
        let conn = database(&path)?;
        let r = routing(100);
        write(&conn, &alert("a", 1, Severity::Critical), &r)?;
        let mut without_am = r.clone();
        without_am.sinks.retain(|s| s.name == "hook");
        let a = write(&conn, &OutboxWrite::Reconcile, &without_am)?;
        assert_eq!(a.dropped_deliveries, 2, "am's two targets set aside");
        // While am is gone, a new alert is for hook only.
        write(&conn, &alert("b", 1, Severity::Critical), &without_am)?;
        let a = write(&conn, &OutboxWrite::Reconcile, &r)?;
        assert_eq!((a.pending, a.dropped_deliveries), (2, 0));
        let rows = list(&conn, 0, 10)?;
        let am_states = |summary: &str| -> Vec<String> {
            rows.iter()
                .find(|row| row.summary == summary)
                .map(|row| {
                    row.deliveries
                        .iter()
                        .filter(|d| d.sink == "am")
                        .map(|d| d.state.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(am_states("gap a"), vec!["pending", "pending"]);
        assert_eq!(am_states("gap b"), Vec::<String>::new());
        // Again: nothing more to take up.
        let a = write(&conn, &OutboxWrite::Reconcile, &r)?;
        assert_eq!((a.pending, a.dropped_deliveries), (0, 0));
        Ok(())
    }

    /// Deliveries an earlier version dropped for good when their sink left (with the text it
    /// wrote then) are not taken up when the sink comes back after an upgrade.
    #[test]
    fn deliveries_dropped_by_an_earlier_version_stay_dropped()
    -> Result<(), Box<dyn std::error::Error>> {
        let path = temp("dropped-before");
        let conn = database(&path)?;
        let r = routing(100);
        write(&conn, &alert("a", 1, Severity::Critical), &r)?;
        let n = conn.execute(
            "UPDATE deliveries SET state = 'dropped', \
             last_error = 'the sink or this URL of it is no longer configured' WHERE sink = 'am'",
            [],
        )?;
        assert_eq!(n, 2);
        let a = write(&conn, &OutboxWrite::Reconcile, &r)?;
        assert_eq!((a.pending, a.dropped_deliveries), (0, 0));
        let states: Vec<String> = list(&conn, 0, 10)?
            .iter()
            .flat_map(|row| row.deliveries.iter())
            .filter(|d| d.sink == "am")
            .map(|d| d.state.clone())
            .collect();
        assert_eq!(states, vec!["dropped", "dropped"]);
        Ok(())
    }

    /// Two Alertmanager URLs on one host whose redactions coincide, deliveries pending under
    /// the names by position an earlier version gave them (`…?t=***`, `…?t=***#2`): after the
    /// upgrade each is renamed to its URL's own name and stays pending, and each URL's name is
    /// the same whatever the order of the list.
    #[test]
    fn pending_deliveries_under_positional_names_follow_their_url()
    -> Result<(), Box<dyn std::error::Error>> {
        let path = temp("positional");
        let conn = database(&path)?;
        let a = "http://127.0.0.1:1/?t=s3cr3t-a";
        let b = "http://127.0.0.1:1/?t=s3cr3t-b";
        let mut old = routing(100);
        old.sinks[1].targets = vec![
            "http://127.0.0.1:1/?t=***".into(),
            "http://127.0.0.1:1/?t=***#2".into(),
        ];
        write(&conn, &alert("a", 1, Severity::Critical), &old)?;
        let route = |urls: &[&str]| -> Result<Route, String> {
            let body = format!(
                "[[sinks]]\nname = \"am\"\nkind = \"alertmanager\"\nurls = [{}]\n",
                urls.iter()
                    .map(|u| format!("\"{u}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut c = ctrwatch_config::Config::parse("t", &body).map_err(|e| format!("{e:?}"))?;
            Ok(Route::of(&c.sinks.remove(0), &crate::target_key::TEST_KEY))
        };
        let ab = route(&[a, b])?;
        let ba = route(&[b, a])?;
        // Each URL's name is the same whatever the order.
        assert_eq!(ab.targets[0], ba.targets[1]);
        assert_eq!(ab.targets[1], ba.targets[0]);
        let mut new = routing(100);
        new.sinks[1] = ab.clone();
        let applied = write(&conn, &OutboxWrite::Reconcile, &new)?;
        assert_eq!(applied.dropped_deliveries, 0);
        let rows = list(&conn, 0, 10)?;
        let mut hook: Vec<(String, String)> = rows[0]
            .deliveries
            .iter()
            .filter(|d| d.sink == "am")
            .map(|d| (d.target.clone(), d.state.clone()))
            .collect();
        hook.sort();
        let mut want = vec![
            (ab.targets[0].clone(), "pending".to_owned()),
            (ab.targets[1].clone(), "pending".to_owned()),
        ];
        want.sort();
        assert_eq!(hook, want);
        Ok(())
    }

    /// An upgrade from the version that told targets shown alike apart by a plain SHA-256 of
    /// the URL (a store reader could confirm a guessed token with it): their pending
    /// deliveries are renamed to the keyed names and stay pending; nothing is dropped.
    #[test]
    fn pending_deliveries_under_unkeyed_hash_names_follow_to_the_keyed_names()
    -> Result<(), Box<dyn std::error::Error>> {
        let path = temp("unkeyed");
        let conn = database(&path)?;
        let a = "http://127.0.0.1:1/?t=s3cr3t-a";
        let b = "http://127.0.0.1:1/?t=s3cr3t-b";
        let sink = ctrwatch_config::Config::parse(
            "t",
            &format!(
                "[[sinks]]\nname = \"am\"\nkind = \"alertmanager\"\nurls = [\"{a}\", \"{b}\"]\n"
            ),
        )
        .map_err(|e| format!("{e:?}"))?
        .sinks
        .remove(0);
        let mut old = routing(100);
        old.sinks[1] = Route::of(&sink, &TargetKey::Legacy);
        write(&conn, &alert("a", 1, Severity::Critical), &old)?;
        let mut new = routing(100);
        new.sinks[1] = Route::of(&sink, &crate::target_key::TEST_KEY);
        assert!(
            new.sinks[1]
                .targets
                .iter()
                .all(|t| !old.sinks[1].targets.contains(t)),
            "keyed names differ from the unkeyed ones: {:?} {:?}",
            new.sinks[1].targets,
            old.sinks[1].targets
        );
        let applied = write(&conn, &OutboxWrite::Reconcile, &new)?;
        assert_eq!(applied.dropped_deliveries, 0);
        let rows = list(&conn, 0, 10)?;
        let mut am: Vec<(String, String)> = rows[0]
            .deliveries
            .iter()
            .filter(|d| d.sink == "am")
            .map(|d| (d.target.clone(), d.state.clone()))
            .collect();
        am.sort();
        let mut want: Vec<(String, String)> = new.sinks[1]
            .targets
            .iter()
            .map(|t| (t.clone(), "pending".to_owned()))
            .collect();
        want.sort();
        assert_eq!(am, want);
        Ok(())
    }

    /// An upgrade from a version that showed a webhook's path: its pending deliveries are
    /// renamed to the redacted target and stay pending; nothing is dropped.
    #[test]
    fn pending_deliveries_under_a_webhooks_former_name_are_renamed()
    -> Result<(), Box<dyn std::error::Error>> {
        let path = temp("rename");
        let conn = database(&path)?;
        let url = "http://127.0.0.1:1/hooks/s3cr3tpath";
        let mut old = routing(100);
        old.sinks[0].targets = vec![crate::sinks::legacy_webhook_shown(url)];
        write(&conn, &alert("a", 1, Severity::Critical), &old)?;
        let sink = ctrwatch_config::Config::parse(
            "t",
            &format!("[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}\"\n"),
        )
        .map_err(|e| format!("{e:?}"))?
        .sinks
        .remove(0);
        let mut new = routing(100);
        new.sinks[0] = Route::of(&sink, &crate::target_key::TEST_KEY);
        assert_eq!(new.sinks[0].targets, ["http://127.0.0.1:1/***"]);
        let a = write(&conn, &OutboxWrite::Reconcile, &new)?;
        assert_eq!(a.dropped_deliveries, 0);
        let rows = list(&conn, 0, 10)?;
        let hook: Vec<(String, String)> = rows[0]
            .deliveries
            .iter()
            .filter(|d| d.sink == "hook")
            .map(|d| (d.target.clone(), d.state.clone()))
            .collect();
        assert_eq!(hook, [("http://127.0.0.1:1/***".into(), "pending".into())]);
        Ok(())
    }
}
