//! What `ctrwatch status` reads from the store: the daemon's status snapshot (written by the
//! writer with its heartbeat, [`Store::heartbeat_with_status`]), the runs, and the alerts'
//! outbox when this store has one.

use rusqlite::OptionalExtension as _;
use serde::Serialize;

use super::codec::format_time;
use super::{Store, StoreError};

/// The `meta` row holding the running daemon's status snapshot (JSON, see
/// `watcher::status::DaemonStatus`).
pub const DAEMON_STATUS_KEY: &str = "daemon_status";

/// A daemon run from the `runs` table.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    pub pid: u32,
    pub version: String,
    pub started_ns: i64,
    /// The last heartbeat written (everything captured before it is stored).
    pub heartbeat_ns: i64,
    /// None: it did not end cleanly (or it still runs).
    pub ended_ns: Option<i64>,
}

/// One sink's delivery state of an alert (all of the sink's targets together; the targets
/// themselves are not shown: their URLs may carry tokens).
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AlertDelivery {
    pub sink: String,
    /// `delivered` when every target has the alert's last revision, `pending` while one
    /// still waits, `dropped` when one was given up.
    pub state: String,
    pub attempts: u64,
}

/// An alert of the outbox, newest first.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RecentAlert {
    pub id: String,
    pub rule: String,
    pub severity: String,
    pub state: String,
    pub rev: i64,
    pub count: i64,
    pub last_seen: String,
    pub deliveries: Vec<AlertDelivery>,
}

/// The store's facts, sampled by its writer with the heartbeat (about once a second), for
/// the daemon's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreFacts {
    /// Database and WAL bytes on disk.
    pub bytes: u64,
    /// The oldest stored event's time, ns since the epoch (None: no event stored).
    pub oldest_event_ns: Option<i64>,
    /// Alert deliveries waiting in the outbox (None: this store has no outbox).
    pub outbox_pending: Option<u64>,
}

impl Store {
    /// What the metrics show of the store: its bytes on disk (database and WAL), its oldest
    /// event, the deliveries pending in its outbox. Cheap enough for once a second: two
    /// pragmas, one row by the events' primary key, a count over the (bounded) deliveries.
    pub fn metrics_facts(&self) -> Result<StoreFacts, StoreError> {
        let q = |sql: &str| -> Result<Option<i64>, StoreError> {
            self.conn
                .query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
                .optional()
                .map(Option::flatten)
                .map_err(|e| self.err(e))
        };
        let page_size = q("PRAGMA page_size")?.unwrap_or(0).max(0) as u64;
        let pages = q("PRAGMA page_count")?.unwrap_or(0).max(0) as u64;
        let oldest_event_ns = q("SELECT id - adj FROM events ORDER BY id LIMIT 1")?;
        let has_outbox =
            q("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'deliveries'")?
                .unwrap_or(0)
                > 0;
        let outbox_pending = if has_outbox {
            Some(
                q("SELECT count(*) FROM deliveries WHERE state = 'pending'")?
                    .unwrap_or(0)
                    .max(0) as u64,
            )
        } else {
            None
        };
        Ok(StoreFacts {
            bytes: pages * page_size + super::wal_size(&self.path),
            oldest_event_ns,
            outbox_pending,
        })
    }

    /// The daemon's last status snapshot (JSON), if one was ever written.
    pub fn daemon_status(&self) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [DAEMON_STATUS_KEY],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.err(e))
    }

    /// The last run on record.
    pub fn last_run(&self) -> Result<Option<RunRecord>, StoreError> {
        self.conn
            .query_row(
                "SELECT pid, version, started_ns, heartbeat_ns, ended_ns FROM runs \
                 ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(RunRecord {
                        pid: r.get(0)?,
                        version: r.get(1)?,
                        started_ns: r.get(2)?,
                        heartbeat_ns: r.get(3)?,
                        ended_ns: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The `limit` newest alerts of the outbox with each sink's delivery state; empty when
    /// this store has no outbox (a store of a ctrwatch without alerts).
    pub fn recent_alerts(&self, limit: usize) -> Result<Vec<RecentAlert>, StoreError> {
        let has_outbox: bool = self
            .conn
            .query_row(
                "SELECT count(*) = 2 FROM sqlite_master WHERE type = 'table' \
                 AND name IN ('alerts', 'deliveries')",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        if !has_outbox {
            return Ok(Vec::new());
        }
        let mut alerts = self
            .conn
            .prepare(
                "SELECT id, rule, severity, state, rev, count, last_ns FROM alerts \
                 ORDER BY seq DESC LIMIT ?1",
            )
            .and_then(|mut s| {
                s.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                    Ok(RecentAlert {
                        id: r.get(0)?,
                        rule: r.get(1)?,
                        severity: r.get(2)?,
                        state: r.get(3)?,
                        rev: r.get(4)?,
                        count: r.get(5)?,
                        last_seen: format_time(r.get(6)?),
                        deliveries: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| self.err(e))?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT sink, \
                 CASE WHEN sum(state = 'dropped') > 0 THEN 'dropped' \
                      WHEN sum(state = 'pending') > 0 THEN 'pending' \
                      ELSE 'delivered' END, \
                 sum(attempts) FROM deliveries WHERE alert = ?1 GROUP BY sink ORDER BY sink",
            )
            .map_err(|e| self.err(e))?;
        for a in &mut alerts {
            a.deliveries = stmt
                .query_map([&a.id], |r| {
                    Ok(AlertDelivery {
                        sink: r.get(0)?,
                        state: r.get(1)?,
                        attempts: r.get::<_, i64>(2)?.max(0) as u64,
                    })
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|e| self.err(e))?;
        }
        Ok(alerts)
    }
}
