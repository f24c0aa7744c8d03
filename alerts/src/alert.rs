//! The alert: one judgement about what happened on the node, as every receiver gets it.
//!
//! An [`Alert`] is a group of events of one rule (one process tree, or one subject) folded
//! together: it has a stable [`AlertId`] and a revision number that grows each time the
//! group's content changes (count, last time, sample). Its JSON body ([`Alert::body_json`],
//! documented in docs/alerts.md, versioned by [`BODY_VERSION`]) is what the outbox keeps and
//! what webhooks receive byte for byte; the other sinks format their messages from it
//! ([`AlertBody`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use ctrwatch_event::{
    ContainerdView, FileEvent, PathBytes, ProcessView, RuleId, Severity, format_rfc3339,
    parse_rfc3339,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The version of the JSON body (`"version"`). A change that could break a receiver (a field
/// removed, renamed or of another type) takes a new version; new fields do not.
pub const BODY_VERSION: u32 = 1;

/// At most this many paths in [`Alert::sample_paths`].
pub const MAX_SAMPLE_PATHS: usize = 10;
/// At most this many events in [`Alert::events`].
pub const MAX_EVENTS: usize = 10;

/// An alert's id: `ctw-` and 32 hex digits, the same on every revision and every retry, on
/// every receiver (see [`AlertId::derive`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AlertId(pub String);

impl AlertId {
    /// `"ctw-"` + the first 16 bytes, in hex, of SHA-256 over the machine id, the rule, the
    /// grouping key and the group's first time (ns since the epoch, 8 bytes big-endian), the
    /// text fields each followed by a NUL byte so that no two tuples hash the same input.
    /// The same group on the same machine always gets the same id; the same key after the
    /// group window closed starts a new group, with another first time and another id.
    pub fn derive(machine_id: &str, rule: RuleId, key: &str, first_seen_ns: i64) -> AlertId {
        let mut h = Sha256::new();
        for part in [machine_id, rule.name(), key] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        h.update(first_seen_ns.to_be_bytes());
        let digest = h.finalize();
        AlertId(format!("ctw-{}", ctrwatch_event::hex(&digest[..16])))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AlertId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether the condition still holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Happening, or happened and not yet old (event alerts stay firing for an hour after
    /// their last event in Alertmanager; see docs/alerts.md).
    #[default]
    Firing,
    /// Over: the condition no longer holds.
    Resolved,
}

impl AlertState {
    /// `firing` or `resolved`.
    pub fn name(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// The node an alert comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Node {
    /// Its name: `[alerts] node_name`, else the hostname.
    pub hostname: String,
    /// `/etc/machine-id` (stable across reboots and renames; the alert id is derived from it).
    pub machine_id: String,
}

impl Node {
    /// This node: `name` if given (the `[alerts] node_name` setting), else the kernel's
    /// hostname; the machine id from `/etc/machine-id` (or dbus's copy). What cannot be read
    /// is `unknown`, never an error: an alert without a name still has to go out.
    pub fn detect(name: Option<&str>) -> Node {
        let hostname = match name {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => read_trimmed("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into()),
        };
        let machine_id = read_trimmed("/etc/machine-id")
            .or_else(|| read_trimmed("/var/lib/dbus/machine-id"))
            .unwrap_or_else(|| "unknown".into());
        Node {
            hostname: ctrwatch_event::escape(&hostname),
            machine_id: ctrwatch_event::escape(&machine_id),
        }
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty() && text.len() <= 255).then(|| text.to_owned())
}

/// The file an alert is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileRef {
    /// Its host path.
    pub path: PathBytes,
    /// Its path inside the image or container (`/pause`), when it is in a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_path: Option<PathBytes>,
}

/// One alert, at one revision. See the module documentation and docs/alerts.md.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// Stable across revisions and retries.
    pub id: AlertId,
    /// The rule that fired.
    pub rule: RuleId,
    /// How bad (after a `[rules.<id>] severity` override).
    pub severity: Severity,
    /// The grouping key (rule + process tree, or rule + subject). Not in the body.
    pub key: String,
    /// 1, 2, ... each time the group's content changes.
    pub rev: u64,
    /// Firing or resolved.
    pub state: AlertState,
    /// Where.
    pub node: Node,
    /// The group's first event, ns since the epoch.
    pub first_seen_ns: i64,
    /// Its last event.
    pub last_seen_ns: i64,
    /// Events in the group.
    pub count: u64,
    /// One readable sentence, escaped.
    pub summary: String,
    /// The exact command that shows the whole story (`ctrwatch history '<path>' --since …`),
    /// shell-quoted.
    pub command: String,
    /// For a group of a process tree: `ctrwatch query --pid N --since … --until …`.
    pub query_command: Option<String>,
    /// The file.
    pub file: Option<FileRef>,
    /// Where in containerd's storage, whose, the verdict and its reason.
    pub containerd: Option<ContainerdView>,
    /// Who: parent chain, exe, argv (secrets masked at capture), unit, user.
    pub process: Option<Arc<ProcessView>>,
    /// Up to [`MAX_SAMPLE_PATHS`] of the group's paths.
    pub sample_paths: Vec<PathBytes>,
    /// The group's first [`MAX_EVENTS`] events, each as `watch --json` prints it.
    pub events: Vec<FileEvent>,
    /// Rule-specific facts (e.g. a layer finding's class, a heartbeat's interval).
    pub details: BTreeMap<String, String>,
}

/// The body's field order and presence rules (docs/alerts.md).
#[derive(Serialize)]
struct Json<'a> {
    version: u32,
    id: &'a AlertId,
    rev: u64,
    rule: RuleId,
    severity: Severity,
    state: AlertState,
    node: &'a Node,
    first_seen: String,
    last_seen: String,
    count: u64,
    summary: &'a str,
    command: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_command: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a FileRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    containerd: Option<&'a ContainerdView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<&'a ProcessView>,
    sample_paths: &'a [PathBytes],
    events: &'a [FileEvent],
    details: &'a BTreeMap<String, String>,
}

impl Serialize for Alert {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Json {
            version: BODY_VERSION,
            id: &self.id,
            rev: self.rev,
            rule: self.rule,
            severity: self.severity,
            state: self.state,
            node: &self.node,
            first_seen: format_rfc3339(self.first_seen_ns),
            last_seen: format_rfc3339(self.last_seen_ns),
            count: self.count,
            summary: &self.summary,
            command: &self.command,
            query_command: self.query_command.as_deref(),
            file: self.file.as_ref(),
            containerd: self.containerd.as_ref(),
            process: self.process.as_deref(),
            sample_paths: &self.sample_paths,
            events: &self.events,
            details: &self.details,
        }
        .serialize(s)
    }
}

impl Alert {
    /// The JSON body (what the outbox keeps and webhooks receive).
    pub fn body_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// A new alert (rev 1, firing, count 1) of `rule` about `key` on `node`, first seen at
    /// `first_seen_ns`; its id derived from them. The caller fills in the rest.
    pub fn new(
        rule: RuleId,
        severity: Severity,
        key: impl Into<String>,
        node: Node,
        first_seen_ns: i64,
        summary: impl Into<String>,
        command: impl Into<String>,
    ) -> Alert {
        let key = key.into();
        Alert {
            id: AlertId::derive(&node.machine_id, rule, &key, first_seen_ns),
            rule,
            severity,
            key,
            rev: 1,
            state: AlertState::Firing,
            node,
            first_seen_ns,
            last_seen_ns: first_seen_ns,
            count: 1,
            summary: summary.into(),
            command: command.into(),
            query_command: None,
            file: None,
            containerd: None,
            process: None,
            sample_paths: Vec::new(),
            events: Vec::new(),
            details: BTreeMap::new(),
        }
    }

    /// The alert `ctrwatch alert test` sends: rule `heartbeat`, summary "ctrwatch test alert
    /// from NODE", a fresh id each time (a test is not deduplicated with the previous one).
    pub fn test_alert(node: Node, now_ns: i64) -> Alert {
        let summary = format!("ctrwatch test alert from {}", node.hostname);
        let mut a = Alert::new(
            RuleId::Heartbeat,
            Severity::Info,
            "test",
            node,
            now_ns,
            summary,
            "ctrwatch alerts",
        );
        a.details.insert("test".into(), "true".into());
        a
    }
}

/// An alert body read back (from the outbox, or by a receiver): what the sinks format their
/// messages from. `events` stay as the JSON they were written as.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertBody {
    /// [`BODY_VERSION`].
    pub version: u32,
    /// The alert id.
    pub id: AlertId,
    /// Its revision.
    pub rev: u64,
    /// The rule.
    pub rule: RuleId,
    /// The severity.
    pub severity: Severity,
    /// Firing or resolved.
    pub state: AlertState,
    /// The node.
    pub node: Node,
    /// RFC 3339.
    pub first_seen: String,
    /// RFC 3339.
    pub last_seen: String,
    /// Events in the group.
    pub count: u64,
    /// One sentence.
    pub summary: String,
    /// The history command.
    pub command: String,
    /// The query command of a process tree's group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_command: Option<String>,
    /// The file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileRef>,
    /// Containerd's view of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containerd: Option<ContainerdView>,
    /// The process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessView>,
    /// Sample paths.
    #[serde(default)]
    pub sample_paths: Vec<PathBytes>,
    /// Sample events, as `watch --json` objects.
    #[serde(default)]
    pub events: Vec<serde_json::Value>,
    /// Rule-specific facts.
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

impl AlertBody {
    /// Reads a body.
    pub fn parse(text: &str) -> Result<AlertBody, serde_json::Error> {
        serde_json::from_str(text)
    }
    /// `first_seen` as ns since the epoch (0 if unreadable).
    pub fn first_seen_ns(&self) -> i64 {
        parse_rfc3339(&self.first_seen).unwrap_or(0)
    }
    /// `last_seen` as ns since the epoch (0 if unreadable).
    pub fn last_seen_ns(&self) -> i64 {
        parse_rfc3339(&self.last_seen).unwrap_or(0)
    }
}

/// `text` as one shell word: as it is when it holds only characters no shell treats
/// specially, else in single quotes (a `'` inside becomes `'\''`).
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@,%".contains(&b));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// `ctrwatch history PATH --since FIRST --until LAST`: the whole story of a path in the
/// alert's window (the path escaped first: control characters never reach a terminal).
pub fn history_command(path: &PathBytes, since_ns: i64, until_ns: i64) -> String {
    format!(
        "ctrwatch history {} --since {} --until {}",
        shell_quote(&path.display()),
        format_rfc3339(since_ns),
        format_rfc3339(until_ns)
    )
}

/// `ctrwatch gaps --since FIRST --until LAST`.
pub fn gaps_command(since_ns: i64, until_ns: i64) -> String {
    format!(
        "ctrwatch gaps --since {} --until {}",
        format_rfc3339(since_ns),
        format_rfc3339(until_ns)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        Node {
            hostname: "edge-0042".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    #[test]
    fn ids_are_stable_and_depend_on_every_part() {
        let a = AlertId::derive("m", RuleId::ForeignChange, "k", 5);
        assert_eq!(a, AlertId::derive("m", RuleId::ForeignChange, "k", 5));
        assert!(a.0.starts_with("ctw-") && a.0.len() == 36, "{a}");
        assert!(a.0[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        for other in [
            AlertId::derive("n", RuleId::ForeignChange, "k", 5),
            AlertId::derive("m", RuleId::OpaqueLeak, "k", 5),
            AlertId::derive("m", RuleId::ForeignChange, "k2", 5),
            AlertId::derive("m", RuleId::ForeignChange, "k", 6),
            // The separator: ("ab", "") and ("a", "b") are different tuples.
            AlertId::derive("mk", RuleId::ForeignChange, "", 5),
        ] {
            assert_ne!(a, other);
        }
        // Independently computed: sha256("m\0foreign-change\0k\0" + be64(5))[..16].
        let mut input = b"m\0foreign-change\0k\0".to_vec();
        input.extend_from_slice(&5i64.to_be_bytes());
        let d = Sha256::digest(&input);
        let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(a.0, format!("ctw-{hex}"));
    }

    #[test]
    fn body_has_the_documented_fields_in_order() -> Result<(), serde_json::Error> {
        let mut a = Alert::new(
            RuleId::ForeignChange,
            Severity::Critical,
            "foreign-change rm(4242)",
            node(),
            1_795_000_000_000_000_000,
            "rm deleted /pause",
            "ctrwatch history /pause",
        );
        a.rev = 2;
        a.count = 3;
        a.last_seen_ns = 1_795_000_001_000_000_000;
        a.file = Some(FileRef {
            path: PathBytes(b"/var/lib/containerd/x/fs/pause".to_vec()),
            inner_path: Some(PathBytes(b"/pause".to_vec())),
        });
        a.sample_paths = vec![PathBytes(b"/a".to_vec())];
        a.details.insert("class".into(), "x".into());
        let text = a.body_json()?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let keys: Vec<&str> = v
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        // serde_json's map is sorted; the text keeps the order: check both.
        for k in [
            "version",
            "id",
            "rev",
            "rule",
            "severity",
            "state",
            "node",
            "first_seen",
            "last_seen",
            "count",
            "summary",
            "command",
            "file",
            "sample_paths",
            "events",
            "details",
        ] {
            assert!(keys.contains(&k), "{k} missing from {text}");
        }
        assert!(text.starts_with(r#"{"version":1,"id":"ctw-"#), "{text}");
        assert!(
            text.contains(r#""rev":2,"rule":"foreign-change","severity":"critical","state":"firing","node":{"hostname":"edge-0042","machine_id":"0123456789abcdef0123456789abcdef"},"first_seen":"2026-11-18T11:06:40.000000000Z","last_seen":"2026-11-18T11:06:41.000000000Z","count":3"#),
            "{text}"
        );
        assert!(!text.contains("query_command") && !text.contains("\"key\""));
        let back = AlertBody::parse(&text)?;
        assert_eq!(back.id, a.id);
        assert_eq!(back.rev, 2);
        assert_eq!(back.first_seen_ns(), a.first_seen_ns);
        assert_eq!(back.last_seen_ns(), a.last_seen_ns);
        assert_eq!(back.file, a.file);
        // What a receiver reads back serializes to the same body.
        assert_eq!(serde_json::to_value(&back)?, v);
        Ok(())
    }

    #[test]
    fn commands_are_shell_quoted_and_escaped() {
        assert_eq!(shell_quote("/pause"), "/pause");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(shell_quote(""), "''");
        let c = history_command(&PathBytes(b"/x y\n".to_vec()), 0, 1_000_000_000);
        assert_eq!(
            c,
            "ctrwatch history '/x y\\x0a' --since 1970-01-01T00:00:00.000000000Z --until 1970-01-01T00:00:01.000000000Z"
        );
    }

    #[test]
    fn the_test_alert_names_the_node() {
        let a = Alert::test_alert(node(), 7);
        assert_eq!(a.summary, "ctrwatch test alert from edge-0042");
        assert_eq!(a.rule, RuleId::Heartbeat);
        assert_ne!(a.id, Alert::test_alert(node(), 8).id);
    }

    #[test]
    fn node_detection_prefers_the_configured_name() {
        let n = Node::detect(Some("edge-7"));
        assert_eq!(n.hostname, "edge-7");
        assert!(!n.machine_id.is_empty());
        assert!(!Node::detect(None).hostname.is_empty());
    }
}
