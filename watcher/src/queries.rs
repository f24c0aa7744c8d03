//! The investigation commands: `history`, `who-deleted`, `query`, `gaps`. They read the store
//! while the daemon writes it, print a table or JSON lines, and map each store failure to its
//! own exit code so scripts can tell "no store" from "store locked" from "store corrupt".
//!
//! Damaged rows (undecodable, or failing their checksum) are skipped: the commands print every
//! row they can read, then say how many they skipped (stderr; with `--json` also a last
//! record, `{"op":"unreadable",...}` or for gaps `{"kind":"unreadable",...}`) and exit 5.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    time::SystemTime,
};

use ctrwatch_event::{FileEvent, Gap};

use crate::store::{
    Answer, DeleteOptions, Deletion, Filter, PathMatch, PathQuery, Store, StoreError, Unreadable,
    render_deletions, render_gaps, render_table,
};

/// Exit codes of the query commands (documented in docs/operations.md).
pub mod exit {
    /// Ran; results (possibly none) printed.
    pub const OK: u8 = 0;
    /// Any other failure (bad time, I/O on stdout...).
    pub const FAILURE: u8 = 1;
    /// Bad usage (clap's own code).
    pub const USAGE: u8 = 2;
    /// The store does not exist (no daemon ever ran with it).
    pub const STORE_MISSING: u8 = 3;
    /// The store is locked beyond the wait (a long write, or a stuck writer).
    pub const STORE_LOCKED: u8 = 4;
    /// The store is damaged: it could not be read at all, or some rows could not (they were
    /// skipped; the rows printed are those that could be read).
    pub const STORE_CORRUPT: u8 = 5;
    /// The store's schema is newer (or older) than this binary reads.
    pub const STORE_VERSION: u8 = 6;
    /// The disk is full.
    pub const STORE_FULL: u8 = 7;
    /// This user may not read the store (root's, and its `--store-group`'s).
    pub const STORE_PERMISSION: u8 = 8;
}

/// A query command's failure, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    /// The store could not be read.
    Store(#[from] StoreError),
    #[error("{0}")]
    /// A `--since`/`--until` that is neither a time nor a duration.
    BadTime(String),
    #[error("writing the results: {0}")]
    /// The results could not be written to stdout.
    Output(#[from] std::io::Error),
    /// The answer was printed, but rows of a damaged store had to be skipped.
    #[error(
        "event store {} is damaged: {}; the results printed are the rows that could be read",
        ctrwatch_event::escape_bytes(path.as_os_str().as_encoded_bytes()),
        unreadable.summary()
    )]
    Unreadable {
        /// The store.
        path: PathBuf,
        /// What could not be read.
        unreadable: Unreadable,
    },
}

impl QueryError {
    /// The command's exit code for this failure (see [`exit`]).
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            QueryError::Store(StoreError::Missing { .. }) => exit::STORE_MISSING,
            QueryError::Store(StoreError::Locked { .. }) => exit::STORE_LOCKED,
            QueryError::Store(StoreError::Corrupt { .. }) | QueryError::Unreadable { .. } => {
                exit::STORE_CORRUPT
            }
            QueryError::Store(StoreError::NewerSchema { .. } | StoreError::OlderSchema { .. }) => {
                exit::STORE_VERSION
            }
            QueryError::Store(StoreError::Full { .. }) => exit::STORE_FULL,
            QueryError::Store(StoreError::PermissionDenied { .. }) => exit::STORE_PERMISSION,
            QueryError::Store(StoreError::InvalidQuery(_)) | QueryError::BadTime(_) => exit::USAGE,
            _ => exit::FAILURE,
        })
    }
}

/// `--since`/`--until`: a duration ago (`90s`, `2h`, `3days`) or an RFC 3339 time
/// (`2026-11-22T10:00:00Z`; a date-time without zone is taken as UTC).
pub fn parse_time(text: &str, now: SystemTime) -> Result<SystemTime, QueryError> {
    if let Ok(d) = humantime::parse_duration(text) {
        return now
            .checked_sub(d)
            .ok_or_else(|| QueryError::BadTime(format!("{text:?} reaches before 1970")));
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        QueryError::BadTime(format!(
            "{text:?} is neither a duration (like 2h, 30min, 7days) nor an RFC 3339 time \
             (like 2026-11-22T10:00:00Z)"
        ))
    })
}

/// Output options shared by the commands.
#[derive(Clone, Debug)]
pub struct Output {
    /// One JSON object a line instead of a table.
    pub json: bool,
}

fn open(store: &Path) -> Result<Store, QueryError> {
    Ok(Store::open_read_only(store)?)
}

/// The last JSON record of an answer that skipped damaged rows:
/// `{"op":"unreadable","skipped":N,"rows":[{"table","id","time","reason"}...]}`. `kind_field`
/// is the field the command's records are told apart by (`op` for events, `kind` for gaps),
/// so a script that dispatches on it sees this record for what it is.
fn unreadable_record(kind_field: &str, skipped: &Unreadable) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert(kind_field.into(), "unreadable".into());
    m.insert("skipped".into(), skipped.count.into());
    m.insert(
        "rows".into(),
        serde_json::to_value(&skipped.rows).unwrap_or_default(),
    );
    serde_json::Value::Object(m)
}

/// Prints the rows of `answer` as JSON lines, or as a table (`empty` when there are none),
/// then, when rows were skipped, says so: a last JSON record (`kind_field: "unreadable"`) and
/// [`QueryError::Unreadable`] (stderr, exit 5).
fn print<T: serde::Serialize>(
    store: &Path,
    answer: &Answer<T>,
    out: &Output,
    table: fn(&[T]) -> String,
    empty: &str,
    kind_field: &'static str,
) -> Result<(), QueryError> {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let items = &answer.found;
    let skipped = &answer.unreadable;
    if out.json {
        for item in items {
            serde_json::to_writer(&mut w, item).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        if skipped.count > 0 {
            serde_json::to_writer(&mut w, &unreadable_record(kind_field, skipped))
                .map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
    } else if items.is_empty() {
        // "Nothing matched" would be a claim the skipped rows may contradict.
        if skipped.count == 0 {
            writeln!(w, "{empty}")?;
        }
    } else {
        write!(w, "{}", table(items))?;
    }
    w.flush()?;
    if skipped.count > 0 {
        return Err(QueryError::Unreadable {
            path: store.to_path_buf(),
            unreadable: skipped.clone(),
        });
    }
    Ok(())
}

fn print_events(store: &Path, events: &Answer<FileEvent>, out: &Output) -> Result<(), QueryError> {
    print(store, events, out, render_table, "no matching events", "op")
}

fn print_deletions(
    store: &Path,
    deletions: &Answer<Deletion>,
    out: &Output,
) -> Result<(), QueryError> {
    print(
        store,
        deletions,
        out,
        render_deletions,
        "no matching events",
        "op",
    )
}

fn print_gaps(store: &Path, gaps: &Answer<Gap>, out: &Output) -> Result<(), QueryError> {
    print(
        store,
        gaps,
        out,
        render_gaps,
        "no gaps: the history is complete for this window",
        "kind",
    )
}

/// The time window and limit of a path question.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Only from this time: RFC 3339, or a duration before now (`1h`).
    pub since: Option<String>,
    /// Only until this time: RFC 3339, or a duration before now.
    pub until: Option<String>,
    /// At most this many results.
    pub limit: Option<usize>,
}

impl Window {
    fn resolve(&self) -> Result<(Option<SystemTime>, Option<SystemTime>), QueryError> {
        let now = SystemTime::now();
        let since = self
            .since
            .as_deref()
            .map(|t| parse_time(t, now))
            .transpose()?;
        let until = self
            .until
            .as_deref()
            .map(|t| parse_time(t, now))
            .transpose()?;
        Ok((since, until))
    }
}

fn path_query(path: &Path, matching: PathMatch, w: &Window) -> Result<PathQuery, QueryError> {
    let (since, until) = w.resolve()?;
    let mut q = PathQuery::new(path.as_os_str().as_encoded_bytes());
    q.matching = matching;
    q.since = since;
    q.until = until;
    q.limit = w.limit;
    Ok(q)
}

/// `ctrwatch history PATH`: every event on the path (or below it), oldest first.
pub fn history(
    store: &Path,
    path: &Path,
    matching: PathMatch,
    w: &Window,
    out: &Output,
) -> Result<(), QueryError> {
    let events = open(store)?.history_partial(&path_query(path, matching, w)?)?;
    print_events(store, &events, out)
}

/// `ctrwatch who-deleted PATH`: the deletions of the path (or below it), each with the process that did it.
pub fn who_deleted(
    store: &Path,
    path: &Path,
    matching: PathMatch,
    opts: DeleteOptions,
    w: &Window,
    out: &Output,
) -> Result<(), QueryError> {
    let deletions = open(store)?.who_deleted_partial(&path_query(path, matching, w)?, opts)?;
    print_deletions(store, &deletions, out)
}

/// Filters of `ctrwatch query`, as given on the command line (the CLI's own definition of
/// them: `main.rs` flattens it; [`query`] turns it into the store's [`Filter`]).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct QueryArgs {
    /// Operation (repeatable): create, open_write, truncate, modify, fallocate, unlink,
    /// rmdir, rename, link, symlink, mknod, mkdir, setxattr, removexattr, chmod, chown.
    #[arg(long = "op", value_name = "OP")]
    pub ops: Vec<String>,
    /// Path glob: `*` within a component, `**` across components.
    #[arg(long, value_name = "GLOB")]
    pub path: Option<PathBuf>,
    #[arg(long)]
    /// Process id of the actor.
    pub pid: Option<u32>,
    #[arg(long)]
    /// Task name of the actor (as the kernel reports it, up to 15 bytes).
    pub comm: Option<String>,
    #[arg(long)]
    /// Executable path of the actor.
    pub exe: Option<String>,
    /// systemd unit, e.g. containerd.service.
    #[arg(long)]
    pub unit: Option<String>,
    /// Container id (or a prefix of it).
    #[arg(long)]
    pub container: Option<String>,
    /// `ok` or an errno name (ENOENT...).
    #[arg(long)]
    pub result: Option<String>,
}

/// `ctrwatch query`: the events that match every filter given.
pub fn query(
    store: &Path,
    args: &QueryArgs,
    window: &Window,
    out: &Output,
) -> Result<(), QueryError> {
    let (since, until) = window.resolve()?;
    let filter = Filter {
        ops: args.ops.clone(),
        path: args
            .path
            .as_ref()
            .map(|p| p.as_os_str().as_encoded_bytes().to_vec()),
        pid: args.pid,
        comm: args.comm.clone(),
        exe: args.exe.clone(),
        unit: args.unit.clone(),
        container: args.container.clone(),
        result: args.result.clone(),
        since,
        until,
        limit: window.limit,
    };
    let events = open(store)?.query_partial(&filter)?;
    print_events(store, &events, out)
}

/// `ctrwatch gaps`: the windows in which events may be missing (losses, downtime).
pub fn gaps(store: &Path, w: &Window, out: &Output) -> Result<(), QueryError> {
    let (since, until) = w.resolve()?;
    let gaps = open(store)?.gaps_partial(since, until)?;
    print_gaps(store, &gaps, out)
}

/// `ctrwatch alerts`: the outbox's alerts, newest first, with their delivery state per sink
/// and target: a table and the totals, or one JSON object per alert (`--json`).
pub fn alerts(store: &Path, w: &Window, out: &Output) -> Result<(), QueryError> {
    let (since, _) = w.resolve()?;
    let since_ns = since.map_or(i64::MIN, crate::store::system_time_ns);
    let (rows, totals) = open(store)?.alerts(since_ns, w.limit.unwrap_or(usize::MAX))?;
    let mut stdout = std::io::stdout().lock();
    if out.json {
        for r in &rows {
            serde_json::to_writer(&mut stdout, r).map_err(std::io::Error::other)?;
            stdout.write_all(b"\n")?;
        }
    } else if rows.is_empty() {
        writeln!(
            stdout,
            "no alerts{}; {} dropped undelivered (outbox bound)",
            if w.since.is_some() {
                " in this window"
            } else {
                ""
            },
            totals.dropped
        )?;
    } else {
        stdout.write_all(ctrwatch_alerts::outbox::render_table(&rows, &totals).as_bytes())?;
    }
    stdout.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_are_durations_ago_or_rfc3339() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        assert_eq!(
            parse_time("2h", now).ok(),
            Some(now - Duration::from_secs(7200))
        );
        assert_eq!(
            parse_time("1970-01-01T00:01:40Z", now).ok(),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100))
        );
        assert!(matches!(
            parse_time("yesterday-ish", now),
            Err(QueryError::BadTime(_))
        ));
    }

    #[test]
    fn store_failures_have_distinct_exit_codes() {
        let p = PathBuf::from("/x");
        let codes: Vec<ExitCode> = [
            StoreError::Missing { path: p.clone() },
            StoreError::Locked {
                path: p.clone(),
                detail: String::new(),
            },
            StoreError::Corrupt {
                path: p.clone(),
                detail: String::new(),
            },
            StoreError::NewerSchema {
                path: p.clone(),
                found: 9,
                supported: 1,
            },
            StoreError::Full { path: p.clone() },
            StoreError::PermissionDenied { path: p },
        ]
        .into_iter()
        .map(|e| QueryError::Store(e).exit_code())
        .collect();
        for (i, a) in codes.iter().enumerate() {
            for b in &codes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
