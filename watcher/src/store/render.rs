//! Human-readable tables of stored events and gaps.

use std::fmt::Write as _;

use crate::event::{NOTE_NEW_PATH_TRUNCATED, NOTE_PATH_TRUNCATED, escape_bytes, truncation_marker};

use super::{Gap, StoredEvent};

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
/// not build completely; `OP` shows how a who-deleted answer deleted (e.g.
/// `rename (ancestor_renamed)`). Control characters and non-UTF-8 bytes are `\xNN`.
pub fn render_table(events: &[StoredEvent]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let notes = &e.details.notes;
            let mut path = e.path.display();
            path.push_str(truncation_marker(notes, NOTE_PATH_TRUNCATED));
            if let Some(n) = &e.new_path {
                let _ = write!(path, " -> {}", n.display());
                path.push_str(truncation_marker(notes, NOTE_NEW_PATH_TRUNCATED));
            }
            let op = match e.deletion {
                Some(d) if d != e.op => format!("{} ({d})", e.op),
                _ => e.op.clone(),
            };
            let p = &e.process;
            let who = format!(
                "{} ({})",
                escape_bytes(p.comm.as_bytes()),
                p.exe
                    .as_deref()
                    .map_or("?".into(), |x| escape_bytes(x.as_bytes()))
            );
            let unit = p
                .unit
                .clone()
                .or_else(|| {
                    p.container_id
                        .as_ref()
                        .map(|c| format!("container:{}", c.chars().take(12).collect::<String>()))
                })
                .unwrap_or_else(|| "-".into());
            let parents = if p.ancestors.is_empty() {
                "-".to_string()
            } else {
                p.ancestors
                    .iter()
                    .map(|a| format!("{}({})", escape_bytes(a.comm.as_bytes()), a.pid))
                    .collect::<Vec<_>>()
                    .join("<")
            };
            vec![
                e.time.clone(),
                op,
                e.result.clone(),
                path,
                p.pid.to_string(),
                who,
                unit,
                parents,
            ]
        })
        .collect();
    table(
        &[
            "TIME", "OP", "RESULT", "PATH", "PID", "COMM/EXE", "UNIT", "PARENTS",
        ],
        &rows,
    )
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
                g.kind.clone(),
                g.from.clone(),
                g.to.clone(),
                g.lost.map_or("-".into(), |l| l.to_string()),
                detail,
            ]
        })
        .collect();
    table(&["KIND", "FROM", "TO", "LOST", "DETAIL"], &rows)
}
