//! The readable forms: one line per event for `watch`, and the columns of the query tables.
//! Everything that came from outside is escaped (see [`crate::text::escape_bytes`]).

use std::fmt::Write as _;

use crate::{
    containerd::{ContainerdView, StorageKind},
    file::{FileEvent, Notes, Protect},
    process::ProcessView,
    text::{escape, escape_bytes},
};

/// Written after a path that is not the whole path (the kernel side could not build it all,
/// note `path_truncated`): the `…` inside it could be taken for a directory's name.
pub const TRUNCATED_MARK: &str = " (path truncated)";
/// The same after a new path (note `new_path_truncated`).
pub const NEW_TRUNCATED_MARK: &str = " (new path truncated)";
/// Written after the op of a change the kernel made itself (note `kernel_internal`).
pub const KERNEL_INTERNAL_MARK: &str = " (kernel-internal)";
/// Written after the op of protect mode's record of a denial (`protect` `denied`).
pub const DENIED_MARK: &str = " (protect: denied)";
/// Written after the op of protect mode's record of a would-deny (`protect` `would_deny`).
pub const WOULD_DENY_MARK: &str = " (protect: would deny)";

impl FileEvent {
    /// What is written after the op for people: the kernel-internal mark, protect's verdict.
    pub fn op_marks(&self) -> String {
        let d = &self.details;
        let mut marks = String::new();
        if d.notes.contains(Notes::KERNEL_INTERNAL) {
            marks.push_str(KERNEL_INTERNAL_MARK);
        }
        match d.protect {
            Some(Protect::Denied) => marks.push_str(DENIED_MARK),
            Some(Protect::WouldDeny) => marks.push_str(WOULD_DENY_MARK),
            None => {}
        }
        marks
    }

    /// The path for people, with the truncation mark when it is not the whole path.
    pub fn path_display(&self) -> String {
        let mut p = self.path.display();
        if self.details.notes.contains(Notes::PATH_TRUNCATED) {
            p.push_str(TRUNCATED_MARK);
        }
        p
    }

    /// The new path for people (rename, link: where to; symlink: the target).
    pub fn new_path_display(&self) -> Option<String> {
        let n = self.new_path.as_ref()?;
        let mut p = n.display();
        if self.details.notes.contains(Notes::NEW_PATH_TRUNCATED) {
            p.push_str(NEW_TRUNCATED_MARK);
        }
        Some(p)
    }

    /// One readable line: `TIME OP RESULT PATH [-> NEW] [xattr] [bytes=] [size=] pid= comm=
    /// exe= uid= [unit=] [container=] [parents=] [containerd=kind:inner image= layer=]
    /// [verdict=... (reason)]`.
    pub fn human_line(&self) -> String {
        let mut line = format!(
            "{} {:<11} {:<7} {}",
            self.time_text(),
            self.op.name(),
            self.result.name(),
            self.path_display()
        );
        if let Some(new) = self.new_path_display() {
            let _ = write!(line, " -> {new}");
        }
        line.push_str(&self.op_marks());
        let d = &self.details;
        if let Some(o) = &d.overwritten {
            let _ = write!(
                line,
                " (replaced the target: inode {} on {})",
                o.inode, o.dev
            );
        }
        if let Some(x) = &d.xattr {
            let _ = write!(line, " [{}", escape_bytes(&x.name));
            if let Some(v) = x.value_text() {
                let _ = write!(line, "={}", escape(&v));
            }
            line.push(']');
        }
        if let Some(bytes) = d.bytes {
            let _ = write!(line, " bytes={bytes}");
        }
        if let Some(size) = d.size {
            let _ = write!(line, " size={size}");
        }
        let p = &self.process;
        let _ = write!(
            line,
            " pid={} comm={} exe={} uid={}",
            p.pid,
            escape(&p.comm),
            p.exe.as_deref().map_or_else(|| "?".to_owned(), escape),
            p.uid
        );
        if let Some(unit) = &p.unit {
            let _ = write!(line, " unit={}", escape(unit));
        }
        if let Some(c) = &p.container_id {
            let _ = write!(line, " container={}", escape(short_id(c)));
        }
        if !p.ancestors.is_empty() {
            let _ = write!(line, " parents={}", p.parents_summary());
        }
        if let Some(c) = &d.containerd {
            let _ = write!(line, " containerd={}", c.kind.name());
            if let Some(inner) = &c.path {
                let _ = write!(line, ":{}", inner.display());
            }
            if let Some(image) = c.images.first() {
                let _ = write!(line, " image={}", escape(image));
            }
            if let Some(layer) = &c.layer_digest {
                let _ = write!(line, " layer={}", escape(short_digest(layer)));
            }
            let _ = write!(
                line,
                " verdict={} ({})",
                c.verdict.name(),
                escape(&c.reason)
            );
        }
        line
    }
}

/// How much of a command line the query tables show (the JSON has all of it).
pub const COMMAND_CHARS: usize = 240;

/// One labelled fact about an event, as the query tables show it under the event's row
/// (`    verdict   foreign (pid 12 comm rm ...)`). The value is escaped for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    /// What it is (`verdict`, `inside`, `image`, `layer`, `command`, ...).
    pub label: &'static str,
    /// Its readable value.
    pub value: String,
}

impl Fact {
    fn new(label: &'static str, value: String) -> Fact {
        Fact { label, value }
    }
}

impl FileEvent {
    /// What an alert would say about the event, as labelled lines for people: for an event in
    /// containerd's storage its verdict and reason, the path inside the image or container,
    /// the image(s), the layer, where in the storage it is and the container; then who did it:
    /// the command line with its arguments (a script's name and options, not only its
    /// interpreter; secrets were masked at capture), the unit and the parent chain. Facts not
    /// known are left out. Everything is escaped.
    pub fn facts(&self) -> Vec<Fact> {
        let mut facts = Vec::new();
        if let Some(c) = &self.details.containerd {
            containerd_facts(c, &mut facts);
        }
        process_facts(&self.process, &mut facts);
        facts
    }
}

fn containerd_facts(c: &ContainerdView, facts: &mut Vec<Fact>) {
    facts.push(Fact::new(
        "verdict",
        format!("{} ({})", c.verdict.name(), escape(&c.reason)),
    ));
    if let Some(inner) = &c.path {
        facts.push(Fact::new("inside", inner.display()));
    }
    if !c.images.is_empty() {
        let label = if c.images.len() == 1 {
            "image"
        } else {
            "images"
        };
        let list = c.images.iter().map(|i| escape(i)).collect::<Vec<_>>();
        facts.push(Fact::new(label, list.join(", ")));
    }
    if let Some(layer) = &c.layer_digest {
        facts.push(Fact::new("layer", escape(layer)));
    }
    facts.push(Fact::new("storage", storage_summary(c)));
    if let Some(id) = &c.container_id {
        let mut text = escape(id);
        if let Some(pod) = &c.pod {
            let _ = write!(text, " (pod ");
            if let Some(ns) = &pod.namespace {
                let _ = write!(text, "{}/", escape(ns));
            }
            text.push_str(&escape(&pod.name));
            if let Some(name) = &pod.container_name {
                let _ = write!(text, ", container {}", escape(name));
            }
            if pod.sandbox {
                text.push_str(", sandbox");
            }
            text.push(')');
        }
        facts.push(Fact::new("container", text));
    }
}

/// Where in containerd's storage: `snapshot 12 committed (overlayfs, namespace k8s.io)`,
/// `blob sha256:… layer (namespace k8s.io)`, `ingest REF`, `metadata`...
fn storage_summary(c: &ContainerdView) -> String {
    let mut text = c.kind.name().to_owned();
    match c.kind {
        StorageKind::Snapshot | StorageKind::SnapshotTemp => {
            if let Some(id) = c.snapshot_id {
                let _ = write!(text, " {id}");
            }
            if let Some(kind) = c.snapshot_kind {
                let _ = write!(text, " {}", kind.name());
            }
        }
        StorageKind::Blob => {
            if let Some(d) = &c.blob_digest {
                let _ = write!(text, " {}", escape(d));
            }
            if let Some(role) = c.blob_role {
                let _ = write!(text, " {}", role.name());
            }
        }
        StorageKind::Ingest => {
            if let Some(r) = &c.ingest_ref {
                let _ = write!(text, " {}", escape(r));
            }
        }
        _ => {}
    }
    let mut notes = Vec::new();
    if let Some(s) = &c.snapshotter {
        notes.push(escape(s));
    }
    if let Some(ns) = &c.namespace {
        notes.push(format!("namespace {}", escape(ns)));
    }
    if c.stale {
        notes.push("stale: the snapshot has since been removed".to_owned());
    }
    if !notes.is_empty() {
        let _ = write!(text, " ({})", notes.join(", "));
    }
    text
}

fn process_facts(p: &ProcessView, facts: &mut Vec<Fact>) {
    if !p.cmdline.is_empty() {
        facts.push(Fact::new("command", p.command_summary(COMMAND_CHARS)));
    }
    match (&p.unit, &p.container_id) {
        (Some(unit), _) => facts.push(Fact::new("unit", escape(unit))),
        (None, Some(c)) => facts.push(Fact::new(
            "unit",
            format!("container:{}", escape(short_id(c))),
        )),
        (None, None) => {}
    }
    if !p.ancestors.is_empty() {
        facts.push(Fact::new("parents", p.parents_summary()));
    }
}

/// The first 12 characters of a container id, as `docker ps` and `crictl ps` show it.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `sha256:` and the first 12 hex digits of a digest.
pub fn short_digest(digest: &str) -> &str {
    let cut = digest.find(':').map_or(12, |i| i + 1 + 12);
    digest.get(..cut).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Details, Op, OpResult, PathBytes, ProcessView};

    fn rename(path: &str, new_path: &str, notes: Notes) -> FileEvent {
        FileEvent {
            time_ns: 0,
            mono_ns: 1,
            op: Op::Rename,
            path: PathBytes(path.as_bytes().to_vec()),
            new_path: Some(PathBytes(new_path.as_bytes().to_vec())),
            result: OpResult::Ok,
            inode: None,
            dev: None,
            process: Arc::new(ProcessView::default()),
            details: Details {
                notes,
                ..Details::default()
            },
        }
    }

    /// A change the kernel made itself says so on the readable line and in the JSON notes.
    #[test]
    fn kernel_internal_changes_are_labelled() {
        let event = rename("/r/work/#c", "/r/upper/d", Notes::KERNEL_INTERNAL);
        let line = event.human_line();
        assert!(
            line.contains(" -> /r/upper/d (kernel-internal) pid="),
            "{line}"
        );
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains(r#""notes":["kernel_internal"]"#), "{json}");
        let line = rename("/r/a", "/r/b", Notes::default()).human_line();
        assert!(!line.contains("kernel-internal"), "{line}");
    }

    /// Protect mode's records say their verdict on the readable line and in the JSON, next
    /// to the result; other records have no `protect` field.
    #[test]
    fn protect_verdicts_are_labelled() -> Result<(), serde_json::Error> {
        let mut event = rename("/r/a", "/r/b", Notes::default());
        event.result = OpResult::from_ret(-1);
        event.details.protect = Some(Protect::Denied);
        let line = event.human_line();
        assert!(line.contains(" -> /r/b (protect: denied) pid="), "{line}");
        let json = serde_json::to_string(&event)?;
        assert!(
            json.contains(r#""result":"EPERM","errno":1,"protect":"denied","#),
            "{json}"
        );
        event.result = OpResult::Ok;
        event.details.protect = Some(Protect::WouldDeny);
        assert!(event.human_line().contains("(protect: would deny)"));
        let json = serde_json::to_string(&event)?;
        assert!(json.contains(r#""protect":"would_deny""#), "{json}");
        event.details.protect = None;
        assert!(!serde_json::to_string(&event)?.contains("protect"));
        assert!(!event.human_line().contains("protect"));
        for p in Protect::ALL {
            assert_eq!(Protect::from_name(p.name()), Some(p));
            assert_eq!(serde_json::to_string(&p)?, format!("\"{}\"", p.name()));
        }
        Ok(())
    }

    /// A truncated path is marked on the readable line right after it, a complete one not.
    #[test]
    fn the_readable_line_marks_truncated_paths() {
        let line = rename("/r/a/…/f", "/r/a/…/g", Notes::PATH_TRUNCATED).human_line();
        assert!(
            line.contains(" /r/a/…/f (path truncated) -> /r/a/…/g pid="),
            "{line}"
        );
        let both = Notes::PATH_TRUNCATED | Notes::NEW_PATH_TRUNCATED;
        let line = rename("/r/a/…/f", "/r/a/…/g", both).human_line();
        assert!(
            line.contains(" /r/a/…/f (path truncated) -> /r/a/…/g (new path truncated) pid="),
            "{line}"
        );
        let line = rename("/r/a/f", "/r/a/g", Notes::BY_FD).human_line();
        assert!(!line.contains("truncated"), "{line}");
        // Names from outside cannot inject a line.
        let line = rename("/r/a\nFORGED", "/r/b", Notes::default()).human_line();
        assert!(
            line.contains("/r/a\\x0aFORGED") && !line.contains('\n'),
            "{line}"
        );
    }

    #[test]
    fn short_forms() {
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(
            short_digest("sha256:0123456789abcdef0123"),
            "sha256:0123456789ab"
        );
        assert_eq!(short_digest("sha256:01"), "sha256:01");
    }
}
