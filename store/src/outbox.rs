//! The alert outbox in the store (tables of migration 4, defined with the rest of the outbox
//! in `ctrwatch_alerts::outbox`): written by the daemon's writer thread only, each write in a
//! transaction of its own committed at once, after the open batch of events (so an alert is on
//! disk before any delivery attempt, and never waits for the next commit tick); read by
//! `ctrwatch alerts`.

use ctrwatch_alerts::outbox::{self, AlertRow, Applied, OutboxTotals, OutboxWrite, Routing};

use super::rows::now_ns;
use super::start::DaemonStore;
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
        // A store of the previous schema (readable, see `schema::READABLE_FROM`) has no
        // outbox yet: no alerts.
        let has_outbox: bool = self
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alerts')",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        if !has_outbox {
            return Ok((Vec::new(), OutboxTotals::default()));
        }
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

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::path::Path;

    use super::*;

    /// A store of the previous release (schema 3, tests/fixtures/store-v3) has no outbox: it
    /// stays readable (migration 4 only adds the outbox tables) and lists no alerts, until a
    /// daemon migrates it and keeps alerts in it.
    #[test]
    fn a_store_without_the_outbox_lists_no_alerts_until_migrated() {
        let dir = std::env::temp_dir().join(format!("ctrwatch-outbox-v3-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let db = dir.join("events.db");
        let gz = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/store-v3/events.db.gz"),
        )
        .expect("fixture");
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut bytes)
            .expect("gunzip");
        std::fs::write(&db, bytes).expect("write");

        let r = Store::open_read_only(&db).expect("a schema 3 store is readable");
        assert_eq!(r.stats().expect("stats").schema_version, 3);
        let (rows, totals) = r.alerts(i64::MIN, 100).expect("alerts");
        assert!(rows.is_empty());
        assert_eq!(totals, OutboxTotals::default());
        drop(r);

        let mut w = Store::open(&db, crate::StoreOptions::default()).expect("writer migrates");
        let alert = ctrwatch_alerts::Alert::test_alert(
            ctrwatch_alerts::Node {
                hostname: "h".into(),
                machine_id: "m".into(),
            },
            1_790_000_000_000_000_000,
        );
        let record = outbox::AlertRecord::of(&alert).expect("record");
        let routing = Routing {
            sinks: Vec::new(),
            outbox_max: 10,
        };
        w.write_outbox(&OutboxWrite::Alert(Box::new(record)), &routing)
            .expect("kept");
        drop(w);
        let r = Store::open_read_only(&db).expect("reader");
        assert_eq!(
            r.stats().expect("stats").schema_version,
            schema::SCHEMA_VERSION
        );
        let (rows, _) = r.alerts(i64::MIN, 100).expect("alerts");
        assert_eq!(rows.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
