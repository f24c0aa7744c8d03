//! What the writer and the readers both know of rows, so that neither imports the other: a
//! process row and its description (`proc_hash` on the way in, `proc_from_row` on the way
//! out), the SQL functions the queries call, how far an event's id may move from its time,
//! and the clock both sides date their records by.

use std::time::SystemTime;

use ctrwatch_event::{AncestorView, ProcessView};
use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, Row};

use crate::codec::{self, Fnv, Glob};
use crate::ns;

/// Events whose time collides with a stored one are moved by at most about this much.
pub(crate) const ADJ_SLACK_NS: i64 = 1_000_000_000;

/// Now, in ns since the epoch.
pub(crate) fn now_ns() -> i64 {
    ns(SystemTime::now())
}

/// Stable hash of a process description, stored in `procs.hash` (`procs_hash` finds a
/// description's rows after a restart).
pub(crate) fn proc_hash(p: &ProcessView) -> u64 {
    let mut h = Fnv::new();
    h.u64(p.pid as u64);
    h.u64(p.tid as u64);
    h.u64(p.ppid as u64);
    h.bytes(p.comm.as_bytes());
    h.opt(p.exe.as_deref());
    h.u64(p.cmdline.len() as u64);
    for a in &p.cmdline {
        h.bytes(a.as_bytes());
    }
    h.u64(p.uid as u64);
    h.u64(p.gid as u64);
    h.opt(p.unit.as_deref());
    h.opt(p.container_id.as_deref());
    h.u64(p.cgroup_id);
    h.u64(p.mnt_ns as u64);
    h.u64(p.ancestors.len() as u64);
    for a in &p.ancestors {
        h.u64(a.pid as u64);
        h.bytes(a.comm.as_bytes());
        h.opt(a.exe.as_deref());
    }
    h.finish()
}

/// SQL functions the queries use (glob on paths).
pub(crate) fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    // ctrwatch_glob(pattern, dir_id, dir_path, name, inner_dir)
    conn.create_scalar_function(
        "ctrwatch_glob",
        5,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let glob = ctx.get_or_create_aux(0, |v| -> Result<Glob, String> {
                let b = v.as_bytes().map_err(|e| e.to_string())?;
                Glob::new(b)
            })?;
            // A damaged row (a value of the wrong type) matches nothing rather than failing
            // the whole query.
            let dir_id: i64 = ctx.get(1).unwrap_or(0);
            let dir = ctx.get_raw(2).as_bytes_or_null().ok().flatten();
            let name = ctx
                .get_raw(3)
                .as_bytes_or_null()
                .ok()
                .flatten()
                .unwrap_or_default();
            let inner = ctx.get_raw(4).as_bytes_or_null().ok().flatten();
            let host = codec::join_path(if dir_id == 0 { None } else { dir }, name);
            if glob.matches(&host) {
                return Ok(true);
            }
            Ok(inner.is_some_and(|i| glob.matches(&codec::join_path(Some(i), name))))
        },
    )
}

/// A JSON column that does not parse, as a conversion failure of column `col`.
pub(crate) fn json_err(col: usize, e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, Box::new(e))
}

/// A `procs` row (from column `at`: pid, tid, ppid, comm, exe, cmdline, uid, gid, unit,
/// container, cgroup_id, mnt_ns, ancestors) as a process view.
pub(crate) fn proc_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<ProcessView> {
    let cmdline: String = row.get(at + 5)?;
    let ancestors: String = row.get(at + 12)?;
    let cmdline: Vec<String> = serde_json::from_str(&cmdline).map_err(|e| json_err(at + 5, e))?;
    let ancestors: Vec<AncestorView> =
        serde_json::from_str(&ancestors).map_err(|e| json_err(at + 12, e))?;
    Ok(ProcessView {
        pid: row.get(at)?,
        tid: row.get(at + 1)?,
        ppid: row.get(at + 2)?,
        comm: row.get(at + 3)?,
        exe: row.get(at + 4)?,
        cmdline,
        uid: row.get(at + 6)?,
        gid: row.get(at + 7)?,
        unit: row.get(at + 8)?,
        container_id: row.get(at + 9)?,
        cgroup_id: row.get::<_, i64>(at + 10)? as u64,
        mnt_ns: row.get(at + 11)?,
        ancestors,
    })
}
