//! The alert outbox in the store (tables of migration 4, defined with the rest of the outbox
//! in `ctrwatch_alerts::outbox`): written by the daemon's writer thread only, each write in a
//! transaction of its own committed at once, after the open batch of events (so an alert is on
//! disk before any delivery attempt, and never waits for the next commit tick); read by
//! `ctrwatch alerts`.

use ctrwatch_alerts::outbox::{self, AlertRow, Applied, OutboxTotals, OutboxWrite, Routing};

use super::start::DaemonStore;
use super::write::now_ns;
use super::{Store, StoreError, schema};

impl Store {
    /// Applies one outbox write and commits it (the open batch of events is committed first).
    pub fn write_outbox(
        &mut self,
        write: &OutboxWrite,
        routing: &Routing,
    ) -> Result<Applied, StoreError> {
        self.flush()?;
        if !self.is_writer() {
            return Err(StoreError::ReadOnly {
                path: self.path.clone(),
            });
        }
        let conn = &self.conn;
        let path = &self.path;
        let r = (|| {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let applied = outbox::apply(conn, write, routing, now_ns())?;
            conn.execute_batch("COMMIT")?;
            Ok(applied)
        })();
        r.map_err(|e| {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            schema::map_err(path, e)
        })
    }

    /// Alerts whose last event is at or after `since_ns`, newest first, at most `limit`, with
    /// their delivery state per sink and target; and the outbox's totals.
    pub fn alerts(
        &self,
        since_ns: i64,
        limit: usize,
    ) -> Result<(Vec<AlertRow>, OutboxTotals), StoreError> {
        let rows = outbox::list(&self.conn, since_ns, limit).map_err(|e| self.err(e))?;
        let totals = outbox::totals(&self.conn).map_err(|e| self.err(e))?;
        Ok((rows, totals))
    }
}

impl DaemonStore {
    /// See [`Store::write_outbox`]. While the store cannot be opened (a full disk at start),
    /// the write fails with [`StoreError::Full`]: the caller logs the alert it could not keep.
    pub fn write_outbox(
        &mut self,
        write: &OutboxWrite,
        routing: &Routing,
    ) -> Result<Applied, StoreError> {
        match self.store_mut() {
            Some(store) => store.write_outbox(write, routing),
            None => Err(StoreError::Full {
                path: self.requested_path().to_path_buf(),
            }),
        }
    }
}
