//! Rendering an audit [`Report`]: grouped by severity for people, one JSON document for
//! machines; and `--since-watch`, which asks the history who last touched each path (the
//! caller opens the store and hands it over as a [`History`]: the audit never opens SQLite).

use std::fmt::Write as _;
use std::path::Path;

use ctrwatch_event::FileEvent;

use super::{AuditError, Finding, Report, Severity};

/// Orders findings most severe first, then by class and path.
pub fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        (a.severity(), a.class, &a.path, &a.image_path).cmp(&(
            b.severity(),
            b.class,
            &b.path,
            &b.image_path,
        ))
    });
}

/// Why the history could not answer.
pub type HistoryError = Box<dyn std::error::Error + Send + Sync>;

/// What `--since-watch` asks of the history: the newest recorded operation on a host path.
/// The caller implements it over the history store, opened read-only (the daemon may be
/// writing it).
pub trait History {
    /// The newest recorded operation on `host_path` (matched as a host path), if any.
    fn last_touched(&self, host_path: &[u8]) -> Result<Option<FileEvent>, HistoryError>;
}

impl Report {
    /// Adds the last recorded operation on each problem's host path from `history` (the
    /// store at `store`, named in the error).
    pub fn attach_history(
        &mut self,
        store: &Path,
        history: &dyn History,
    ) -> Result<(), AuditError> {
        for f in self
            .findings
            .iter_mut()
            .filter(|f| f.severity() < Severity::Info)
        {
            let Some(path) = &f.path else { continue };
            let last =
                history
                    .last_touched(path.as_bytes())
                    .map_err(|source| AuditError::Store {
                        path: store.to_path_buf(),
                        source,
                    })?;
            if let Some(ev) = last {
                f.last_touched = Some(Box::new(ev));
            }
        }
        Ok(())
    }
}

/// One line about a stored event: time, op, result, process, exe, parents, verdict.
fn describe_event(ev: &FileEvent) -> String {
    let p = &ev.process;
    let mut line = format!(
        "{} {} ({}) by {} pid {} exe {}",
        ev.time_text(),
        ev.op,
        ev.result.name(),
        p.comm,
        p.pid,
        p.exe.as_deref().unwrap_or("null"),
    );
    if let Some(unit) = &p.unit {
        let _ = write!(line, " unit {unit}");
    }
    let chain: Vec<String> = p
        .ancestors
        .iter()
        .map(|a| format!("{}({})", a.comm, a.pid))
        .collect();
    if !chain.is_empty() {
        let _ = write!(line, " ← {}", chain.join(" ← "));
    }
    if let Some(c) = &ev.details.containerd {
        let _ = write!(line, " [{}]", c.verdict.name());
    }
    line
}

/// Text for a terminal: control characters (a newline or an escape sequence in a file name
/// taken from a layer, say) shown as `\xNN`, so a finding cannot forge lines or drive the
/// terminal. The JSON report needs none of this: JSON escapes them itself.
fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// The report for people: a header, then findings grouped by severity, then a summary.
/// Everything taken from the storage is shown [`printable`].
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    let st = &r.stats;
    let _ = writeln!(
        out,
        "ctrwatch audit of {} ({}, {:.1} s)",
        ctrwatch_event::escape_path(&r.root),
        humantime::format_rfc3339_seconds(r.started),
        r.duration.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "checked: {} blobs ({}), {} ingests, {} layers ({} tar entries), {} snapshots",
        st.blobs,
        human_bytes(st.blob_bytes),
        st.ingests,
        st.layers,
        st.layer_entries,
        st.snapshots
    );
    for sev in Severity::ALL {
        let group: Vec<&Finding> = r.findings.iter().filter(|f| f.severity() == sev).collect();
        if group.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{} ({})", sev.name().to_uppercase(), group.len());
        for f in group {
            render_finding(&mut out, f);
        }
    }
    if !r.metadata_problems.is_empty() {
        let _ = writeln!(
            out,
            "\nmetadata records that could not be read ({}):",
            r.metadata_problems.len()
        );
        for p in &r.metadata_problems {
            let _ = writeln!(out, "  {}", printable(p));
        }
    }
    let counts: Vec<String> = r
        .counts()
        .iter()
        .map(|(s, n)| format!("{n} {}", s.name()))
        .collect();
    let _ = writeln!(
        out,
        "\nsummary: {} -> {}",
        counts.join(", "),
        if r.has_problems() {
            "problems found (exit 1)"
        } else {
            "clean (exit 0)"
        }
    );
    out
}

fn render_finding(out: &mut String, f: &Finding) {
    let _ = writeln!(out, "  [{}] {}", f.class, printable(&f.message));
    let field = |out: &mut String, k: &str, v: &str| {
        let _ = writeln!(out, "      {:<13} {}", printable(k), printable(v));
    };
    if let Some(p) = &f.image_path {
        field(out, "in image:", p);
    }
    if let Some(p) = &f.path {
        field(out, "path:", p);
    }
    if !f.images.is_empty() {
        field(out, "images:", &f.images.join(", "));
    }
    if let Some(l) = &f.layer {
        field(out, "layer:", l);
    }
    if let (Some(b), None) = (&f.blob, &f.layer) {
        field(out, "blob:", b);
    }
    if let Some(s) = &f.snapshot {
        let key = f
            .snapshot_key
            .as_deref()
            .map(|k| format!(" ({k})"))
            .unwrap_or_default();
        field(out, "snapshot:", &format!("{s}{key}"));
    }
    if let Some(ns) = &f.namespace {
        field(out, "namespace:", ns);
    }
    for (k, v) in &f.facts {
        field(out, &format!("{k}:"), v);
    }
    if let Some(ev) = &f.last_touched {
        field(out, "last touched:", &describe_event(ev));
    }
    if !f.remediation.is_empty() {
        let _ = writeln!(out, "      fix:");
        for (i, step) in f.remediation.iter().enumerate() {
            let _ = writeln!(out, "        {}. {}", i + 1, printable(step));
        }
    }
}

/// `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_by_severity_then_class() {
        let mut v = vec![
            Finding::new(Severity::Info, "b", "x"),
            Finding::new(Severity::Critical, "z", "x"),
            Finding::new(Severity::Critical, "a", "x"),
            Finding::new(Severity::Warning, "a", "x"),
        ];
        sort(&mut v);
        let order: Vec<(Severity, &str)> = v.iter().map(|f| (f.severity(), f.class)).collect();
        assert_eq!(
            order,
            vec![
                (Severity::Critical, "a"),
                (Severity::Critical, "z"),
                (Severity::Warning, "a"),
                (Severity::Info, "b"),
            ]
        );
    }

    #[test]
    fn text_report_shows_control_characters_escaped() {
        let f = Finding::new(Severity::Error, "c", "file a\nFORGED \x1b[31m")
            .path("/r/a\nb")
            .fix("rm '/r/a\nb'");
        let mut out = String::new();
        render_finding(&mut out, &f);
        assert_eq!(
            out,
            "  [c] file a\\x0aFORGED \\x1b[31m\n      path:         /r/a\\x0ab\n      fix:\n        1. rm '/r/a\\x0ab'\n"
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
