//! What the audit reports: one [`Finding`] per problem, with where it is, what it belongs to
//! (image, layer, snapshot) and how to fix it.

use serde::Serialize;

/// How bad a finding is. Ordered from the most to the least severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Containers using this break, or containerd fails (a damaged layer file, a blob whose
    /// digest is wrong, a pull that will fail).
    Critical,
    /// Inconsistent storage that breaks something later or wastes space (orphans, missing
    /// directories, dangling references).
    Error,
    /// Suspicious but possibly intended (a torn ingest that a retry may finish).
    Warning,
    /// Explanations, not problems: why content survived removal, what could not be checked.
    /// They never make the exit code non-zero.
    Info,
}

impl Severity {
    /// All severities, most severe first.
    pub const ALL: [Severity; 4] = [
        Severity::Critical,
        Severity::Error,
        Severity::Warning,
        Severity::Info,
    ];

    /// The lowercase name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One problem (or, at [`Severity::Info`], one explanation) found by the audit.
///
/// `class` is a stable, kebab-case identifier of the kind of problem (`blob-digest-mismatch`,
/// `layer-file-truncated`, ...; the list is in docs/audit.md): scripts match on it, and the
/// tests assert on it. Everything else is for people.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Option<Severity>,
    /// Stable identifier of the kind of problem.
    pub class: &'static str,
    /// One sentence: what is wrong.
    pub message: String,
    /// The host path concerned (a blob, an ingest directory, a file in a snapshot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// For files in a layer: the path inside the image (`/pause`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_path: Option<String>,
    /// Images concerned, as `namespace/name`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// The layer's (compressed) blob digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    /// The content blob concerned (for content-store findings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// The snapshot concerned: `<snapshotter>/<id>` (the directory name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The snapshotter's key of that snapshot (a chainID for committed layers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_key: Option<String>,
    /// containerd namespace, when the finding belongs to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// What was expected and what was found, as short `key: value` facts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub facts: Vec<(String, String)>,
    /// The suggested fix: commands or steps, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remediation: Vec<String>,
    /// With `--since-watch`: the last recorded operation on `path` from the history store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_touched: Option<Box<ctrwatch_event::FileEvent>>,
}

impl Finding {
    /// A finding of `severity` and `class` with `message`; add the rest with the builders.
    pub fn new(severity: Severity, class: &'static str, message: impl Into<String>) -> Finding {
        Finding {
            severity: Some(severity),
            class,
            message: message.into(),
            ..Finding::default()
        }
    }

    /// The severity ([`Severity::Info`] if unset).
    pub fn severity(&self) -> Severity {
        self.severity.unwrap_or(Severity::Info)
    }

    /// The host path the finding is about.
    pub fn path(mut self, path: impl Into<String>) -> Finding {
        self.path = Some(path.into());
        self
    }

    /// The path as seen inside the image or container.
    pub fn image_path(mut self, path: impl Into<String>) -> Finding {
        self.image_path = Some(path.into());
        self
    }

    /// The images (`namespace/name`) affected.
    pub fn images(mut self, images: impl IntoIterator<Item = String>) -> Finding {
        self.images.extend(images);
        self.images.sort();
        self.images.dedup();
        self
    }

    /// The layer blob's digest.
    pub fn layer(mut self, digest: impl Into<String>) -> Finding {
        self.layer = Some(digest.into());
        self
    }

    /// The content blob's digest.
    pub fn blob(mut self, digest: impl Into<String>) -> Finding {
        self.blob = Some(digest.into());
        self
    }

    /// The snapshot, as `<snapshotter>/<directory id>`.
    pub fn snapshot(mut self, snapshotter: &str, id: u64) -> Finding {
        self.snapshot = Some(format!("{snapshotter}/{id}"));
        self
    }

    /// The snapshot's key (client key or chainID).
    pub fn snapshot_key(mut self, key: impl Into<String>) -> Finding {
        self.snapshot_key = Some(key.into());
        self
    }

    /// The containerd namespace.
    pub fn namespace(mut self, ns: impl Into<String>) -> Finding {
        self.namespace = Some(ns.into());
        self
    }

    /// One more fact, shown as `key: value`.
    pub fn fact(mut self, key: impl Into<String>, value: impl Into<String>) -> Finding {
        self.facts.push((key.into(), value.into()));
        self
    }

    /// One more remediation step, in order.
    pub fn fix(mut self, step: impl Into<String>) -> Finding {
        self.remediation.push(step.into());
        self
    }
}
