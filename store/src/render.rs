//! Human-readable tables of stored events and gaps: what `history`, `who-deleted`, `query`
//! and `gaps` print without `--json`.

use std::fmt::Write as _;

use ctrwatch_event::{FileEvent, Gap, escape, format_rfc3339, human::Fact};

use super::{Deletion, DeletionKind};

/// A table row, and the labelled lines shown under it (none in the gaps table).
struct Row {
    cells: Vec<String>,
    facts: Vec<Fact>,
}

/// Columns padded to their widest cell, two spaces apart; under each row its facts, indented
/// by [`FACT_INDENT`] (so a row is a line that does not start with a space).
fn table(header: &[&str], rows: &[Row]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(&row.cells) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}  ");
            }
        }
        let mut s = s.trim_end().to_owned();
        s.push('\n');
        s
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.cells.iter().map(String::as_str)));
        for f in &row.facts {
            let _ = writeln!(
                out,
                "{:FACT_INDENT$}{:<FACT_LABEL$}{}",
                "", f.label, f.value
            );
        }
    }
    out
}

/// How far the facts under a row are indented, and how wide their labels are.
const FACT_INDENT: usize = 4;
const FACT_LABEL: usize = 11;

/// The widest an event row gets (a 160-column terminal), unless even the narrowest
/// [`MIN_PATH_CELL`] PATH cell does not fit.
const ROW_WIDTH: usize = 160;
/// The narrowest a cut PATH cell gets.
const MIN_PATH_CELL: usize = 32;
/// The widest a COMM/EXE cell gets.
const WHO_CELL: usize = 36;
/// Marks a cell that was cut: at the start of a PATH cell (its end, the file, is kept), at
/// the end of a COMM/EXE cell. The whole value is then among the facts under the row.
const CUT_MARK: char = '…';

const EVENT_HEADER: [&str; 6] = ["TIME", "OP", "RESULT", "PATH", "PID", "COMM/EXE"];

/// One row per event: TIME OP RESULT PATH PID COMM/EXE, at most [`ROW_WIDTH`] columns wide;
/// under it, indented, the event's facts ([`FileEvent::facts`]: verdict and reason, the path
/// inside the image, image, layer, storage, container, command with its arguments, unit,
/// parents). The path shows `-> new_path` for renames and links, and `(path truncated)`
/// after a path the kernel could not build completely. A PATH cell too wide for the row keeps
/// its end behind a leading `…`, a COMM/EXE cell too wide keeps its start before a trailing
/// `…`; the whole value is then a `path` or `process` fact. Control characters and non-UTF-8
/// bytes are `\xNN`.
pub fn render_table(events: &[FileEvent]) -> String {
    event_table(events.iter().map(|e| (e, None)).collect())
}

/// [`render_table`] of who-deleted answers: `OP` also says how each deleted when that is not
/// its op (e.g. `rename (ancestor_renamed)`).
pub fn render_deletions(deletions: &[Deletion]) -> String {
    event_table(
        deletions
            .iter()
            .map(|d| (&d.event, Some(d.deletion)))
            .collect(),
    )
}

/// The cells of one event before any is cut.
struct Cells {
    time: String,
    op: String,
    result: String,
    /// The path, and for renames and links the new path.
    path: String,
    new_path: Option<String>,
    pid: String,
    who: String,
}

fn cells(e: &FileEvent, deletion: Option<DeletionKind>) -> Cells {
    let mut op = match deletion {
        Some(d) if d.name() != e.op.name() => format!("{} ({d})", e.op),
        _ => e.op.name().to_owned(),
    };
    op.push_str(&e.op_marks());
    let p = &e.process;
    let who = format!(
        "{} ({})",
        escape(&p.comm),
        p.exe.as_deref().map_or_else(|| "?".into(), escape)
    );
    Cells {
        time: e.time_text(),
        op,
        result: e.result.name(),
        path: e.path_display(),
        new_path: e.new_path_display(),
        pid: p.pid.to_string(),
        who,
    }
}

impl Cells {
    /// The PATH column's text: `path`, or `path -> new_path`.
    fn whole_path(&self) -> String {
        match &self.new_path {
            Some(n) => format!("{} -> {n}", self.path),
            None => self.path.clone(),
        }
    }

    /// The PATH cell at most `max` characters wide: each path keeps its end (the file's
    /// name) behind [`CUT_MARK`]; a rename keeps its ` -> `, the new path getting what the
    /// old one leaves of the cell (at least half).
    fn path_cell(&self, max: usize) -> String {
        let Some(new) = &self.new_path else {
            return keep_end(&self.path, max);
        };
        let budget = max.saturating_sub(ARROW.chars().count());
        let new_len = new.chars().count();
        let old = keep_end(&self.path, (budget / 2).max(budget.saturating_sub(new_len)));
        let new = keep_end(new, budget.saturating_sub(old.chars().count()));
        format!("{old}{ARROW}{new}")
    }
}

const ARROW: &str = " -> ";

fn event_table(events: Vec<(&FileEvent, Option<DeletionKind>)>) -> String {
    let all: Vec<(Cells, &FileEvent)> = events.iter().map(|(e, d)| (cells(e, *d), *e)).collect();
    let width = |f: fn(&Cells) -> usize, header: &str| {
        all.iter()
            .map(|(c, _)| f(c))
            .chain([header.chars().count()])
            .max()
            .unwrap_or(0)
    };
    // Every column but PATH at its widest (COMM/EXE at most WHO_CELL), two spaces apart:
    // PATH gets the rest of ROW_WIDTH.
    let others = width(|c| c.time.chars().count(), "TIME")
        + width(|c| c.op.chars().count(), "OP")
        + width(|c| c.result.chars().count(), "RESULT")
        + width(|c| c.pid.chars().count(), "PID")
        + width(|c| c.who.chars().count(), "COMM/EXE").min(WHO_CELL)
        + 2 * (EVENT_HEADER.len() - 1);
    let path_cell = ROW_WIDTH.saturating_sub(others).max(MIN_PATH_CELL);
    let rows: Vec<Row> = all
        .into_iter()
        .map(|(c, e)| {
            let mut facts = Vec::new();
            let whole = c.whole_path();
            let path = if whole.chars().count() <= path_cell {
                whole
            } else {
                facts.push(Fact {
                    label: "path",
                    value: whole,
                });
                c.path_cell(path_cell)
            };
            let who = keep_start(&c.who, WHO_CELL);
            facts.extend(e.facts());
            if who != c.who {
                facts.push(Fact {
                    label: "process",
                    value: c.who.clone(),
                });
            }
            Row {
                cells: vec![c.time, c.op, c.result, path, c.pid, who],
                facts,
            }
        })
        .collect();
    table(&EVENT_HEADER, &rows)
}

/// `text`, or its last `max - 1` characters behind [`CUT_MARK`].
fn keep_end(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max {
        return text.to_owned();
    }
    let mut out = String::from(CUT_MARK);
    out.extend(text.chars().skip(n - max.saturating_sub(1)));
    out
}

/// `text`, or its first `max - 1` characters before [`CUT_MARK`].
fn keep_start(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push(CUT_MARK);
    out
}

/// One line per gap: KIND FROM TO LOST DETAIL.
pub fn render_gaps(gaps: &[Gap]) -> String {
    let rows: Vec<Row> = gaps
        .iter()
        .map(|g| {
            let mut detail = g
                .kinds
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect::<Vec<_>>()
                .join(" ");
            if let Some(r) = &g.reason {
                if !detail.is_empty() {
                    detail.push(' ');
                }
                detail.push_str(r);
            }
            Row {
                cells: vec![
                    g.kind.name().to_owned(),
                    format_rfc3339(g.from_ns),
                    format_rfc3339(g.to_ns),
                    g.lost.map_or("-".into(), |l| l.to_string()),
                    detail,
                ],
                facts: Vec::new(),
            }
        })
        .collect();
    table(&["KIND", "FROM", "TO", "LOST", "DETAIL"], &rows)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ctrwatch_event::{
        AncestorView, ContainerdView, Details, Op, OpResult, PathBytes, ProcessView, SnapshotKind,
        StorageKind, Verdict,
    };

    use super::*;

    fn unlink(path: &[u8], process: ProcessView) -> FileEvent {
        FileEvent {
            time_ns: 1_767_225_600_000_000_000,
            mono_ns: 1,
            op: Op::Unlink,
            path: PathBytes(path.to_vec()),
            new_path: None,
            result: OpResult::Ok,
            inode: None,
            dev: None,
            process: Arc::new(process),
            details: Details::default(),
        }
    }

    /// A long path and a long process name are cut with a visible mark so that the row fits
    /// 160 columns, and come whole among the facts; a name from outside cannot start a line
    /// of its own.
    #[test]
    fn long_cells_are_cut_visibly_and_given_whole_below() {
        let long = format!("/var/lib/containerd/{}fs/pause", "d/".repeat(80));
        let process = ProcessView {
            pid: 4242,
            comm: "x\ny".into(),
            exe: Some(format!("/opt/{}/bin/tool", "v".repeat(60))),
            cmdline: vec!["tool".into(), "--password=***".into(), "a b".into()],
            ancestors: vec![AncestorView {
                pid: 1,
                comm: "systemd".into(),
                exe: None,
            }],
            ..ProcessView::default()
        };
        let mut e = unlink(long.as_bytes(), process);
        e.details.containerd = Some(Box::new(ContainerdView {
            kind: StorageKind::Snapshot,
            snapshot_id: Some(12),
            snapshot_kind: Some(SnapshotKind::Committed),
            snapshotter: Some("overlayfs".into()),
            images: vec!["a:1".into(), "b:2".into()],
            layer_digest: Some(format!("sha256:{}", "c".repeat(64))),
            path: Some(PathBytes(b"/pause".to_vec())),
            verdict: Verdict::Foreign,
            reason: "pid 4242 comm x\ny".into(),
            ..ContainerdView::default()
        }));
        let table = render_table(&[e]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("TIME  "), "{table}");
        let row = lines[1];
        assert!(row.chars().count() <= ROW_WIDTH, "{table}");
        assert!(
            row.contains("  ok      …/d/d/")
                && row.contains("/d/d/fs/pause  4242  x\\x0ay (/opt/vvvv"),
            "{table}"
        );
        assert!(row.ends_with('…'), "{table}");
        let facts: Vec<&str> = lines[2..].iter().map(|l| l.trim_start()).collect();
        assert_eq!(
            facts,
            [
                format!("path       {long}").as_str(),
                "verdict    foreign (pid 4242 comm x\\x0ay)",
                "inside     /pause",
                "images     a:1, b:2",
                &format!("layer      sha256:{}", "c".repeat(64)),
                "storage    snapshot 12 committed (overlayfs)",
                "command    tool --password=*** 'a b'",
                "parents    systemd(1)",
                &format!("process    x\\x0ay (/opt/{}/bin/tool)", "v".repeat(60)),
            ],
            "{table}"
        );
        assert!(lines[2..].iter().all(|l| l.starts_with("    ")), "{table}");

        // A short path and name are whole in the row, and not repeated below.
        let short = unlink(
            b"/var/lib/containerd/tmp/pause",
            ProcessView {
                pid: 7,
                comm: "rm".into(),
                exe: Some("/usr/bin/rm".into()),
                ..ProcessView::default()
            },
        );
        let table = render_table(&[short]);
        assert_eq!(
            table,
            "TIME                            OP      RESULT  PATH                           PID  COMM/EXE\n\
             2026-01-01T00:00:00.000000000Z  unlink  ok      /var/lib/containerd/tmp/pause  7    rm (/usr/bin/rm)\n"
        );
    }
}
