//! Human-readable tables of stored events and gaps.

use std::fmt::Write as _;

use ctrwatch_event::{FileEvent, Gap, escape, format_rfc3339, human::short_id};

use super::{Deletion, DeletionKind};

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}  ");
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// One line per event: TIME OP RESULT PATH PID COMM/EXE UNIT PARENTS. The path shows
/// `-> new_path` for renames and links, and `(path truncated)` after a path the kernel could
/// not build completely. Control characters and non-UTF-8 bytes are `\xNN`.
pub fn render_table(events: &[FileEvent]) -> String {
    rows_table(events.iter().map(|e| row(e, None)).collect())
}

/// [`render_table`] of who-deleted answers: `OP` also says how each deleted when that is not
/// its op (e.g. `rename (ancestor_renamed)`).
pub fn render_deletions(deletions: &[Deletion]) -> String {
    rows_table(
        deletions
            .iter()
            .map(|d| row(&d.event, Some(d.deletion)))
            .collect(),
    )
}

fn rows_table(rows: Vec<Vec<String>>) -> String {
    table(
        &[
            "TIME", "OP", "RESULT", "PATH", "PID", "COMM/EXE", "UNIT", "PARENTS",
        ],
        &rows,
    )
}

fn row(e: &FileEvent, deletion: Option<DeletionKind>) -> Vec<String> {
    let mut path = e.path_display();
    if let Some(n) = e.new_path_display() {
        let _ = write!(path, " -> {n}");
    }
    let op = match deletion {
        Some(d) if d.name() != e.op.name() => format!("{} ({d})", e.op),
        _ => e.op.name().to_owned(),
    };
    let p = &e.process;
    let who = format!(
        "{} ({})",
        escape(&p.comm),
        p.exe.as_deref().map_or_else(|| "?".into(), escape)
    );
    let unit = match (&p.unit, &p.container_id) {
        (Some(unit), _) => escape(unit),
        (None, Some(c)) => format!("container:{}", escape(short_id(c))),
        (None, None) => "-".into(),
    };
    vec![
        e.time_text(),
        op,
        e.result.name(),
        path,
        p.pid.to_string(),
        who,
        unit,
        p.parents_summary(),
    ]
}

/// One line per gap: KIND FROM TO LOST DETAIL.
pub fn render_gaps(gaps: &[Gap]) -> String {
    let rows: Vec<Vec<String>> = gaps
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
            vec![
                g.kind.name().to_owned(),
                format_rfc3339(g.from_ns),
                format_rfc3339(g.to_ns),
                g.lost.map_or("-".into(), |l| l.to_string()),
                detail,
            ]
        })
        .collect();
    table(&["KIND", "FROM", "TO", "LOST", "DETAIL"], &rows)
}
