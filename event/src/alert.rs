//! The vocabulary of alerts: which rule fired, and how bad it is. The names are part of the
//! interface (config keys `[rules.<id>]`, `rules = [...]` of sinks, alert bodies and labels).

use serde::{Deserialize, Serialize};

/// How bad an alert is. Ordered: `Info < Warning < Critical` (a sink's `min_severity`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    #[default]
    Info,
    /// Needs a look.
    Warning,
    /// Something is broken or being broken.
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];
    /// The name (`info`, `warning`, `critical`).
    pub const fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
    /// The severity with this name.
    pub fn from_name(name: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A detection rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleId {
    /// A foreign writer changed a committed layer, the content store or containerd's
    /// metadata.
    ForeignChange,
    /// An overlay opaque marker on a committed layer's directory that its tar does not have.
    OpaqueLeak,
    /// A committed layer's file no longer matches its tar.
    LayerDamaged,
    /// After an unclean stop: what the crash damaged (layers committed just before it,
    /// runtime metadata containerd will fail to recover).
    AfterCrashVerify,
    /// containerd's metadata and its files disagree.
    MetadataMismatch,
    /// The history has a hole (loss, unclean restart, programs found detached).
    HistoryGap,
    /// ctrwatch is alive (always firing; its silence is the alarm).
    Heartbeat,
    /// A configuration reload was refused; the previous configuration stays in force.
    ConfigInvalid,
    /// Protect mode (enforce) denied an operation.
    ProtectDenied,
    /// Protect mode in dry-run would have denied an operation, and let it through.
    ProtectWouldDeny,
    /// Protect mode was asked for but cannot run on this kernel.
    ProtectUnavailable,
}

impl RuleId {
    /// Every rule.
    pub const ALL: [RuleId; 11] = [
        RuleId::ForeignChange,
        RuleId::OpaqueLeak,
        RuleId::LayerDamaged,
        RuleId::AfterCrashVerify,
        RuleId::MetadataMismatch,
        RuleId::HistoryGap,
        RuleId::Heartbeat,
        RuleId::ConfigInvalid,
        RuleId::ProtectDenied,
        RuleId::ProtectWouldDeny,
        RuleId::ProtectUnavailable,
    ];
    /// The id (`foreign-change`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            RuleId::ForeignChange => "foreign-change",
            RuleId::OpaqueLeak => "opaque-leak",
            RuleId::LayerDamaged => "layer-damaged",
            RuleId::AfterCrashVerify => "after-crash-verify",
            RuleId::MetadataMismatch => "metadata-mismatch",
            RuleId::HistoryGap => "history-gap",
            RuleId::Heartbeat => "heartbeat",
            RuleId::ConfigInvalid => "config-invalid",
            RuleId::ProtectDenied => "protect-denied",
            RuleId::ProtectWouldDeny => "protect-would-deny",
            RuleId::ProtectUnavailable => "protect-unavailable",
        }
    }
    /// The rule with this id.
    pub fn from_name(name: &str) -> Option<RuleId> {
        RuleId::ALL.into_iter().find(|r| r.name() == name)
    }
    /// Its severity unless configured otherwise (some rules raise it per alert, e.g.
    /// `foreign-change` is critical for deletions in committed layers).
    pub const fn default_severity(self) -> Severity {
        match self {
            RuleId::ForeignChange => Severity::Warning,
            RuleId::OpaqueLeak => Severity::Critical,
            RuleId::LayerDamaged => Severity::Critical,
            RuleId::AfterCrashVerify => Severity::Critical,
            RuleId::MetadataMismatch => Severity::Warning,
            RuleId::HistoryGap => Severity::Warning,
            RuleId::Heartbeat => Severity::Info,
            RuleId::ConfigInvalid => Severity::Warning,
            RuleId::ProtectDenied => Severity::Critical,
            RuleId::ProtectWouldDeny => Severity::Warning,
            RuleId::ProtectUnavailable => Severity::Warning,
        }
    }
    /// One line on what it detects.
    pub const fn summary(self) -> &'static str {
        match self {
            RuleId::ForeignChange => {
                "a foreign writer changed a committed layer, the content store or containerd's metadata"
            }
            RuleId::OpaqueLeak => {
                "an overlay opaque marker on a committed layer directory that its tar does not have"
            }
            RuleId::LayerDamaged => "a committed layer's file no longer matches its tar",
            RuleId::AfterCrashVerify => "what an unclean stop damaged",
            RuleId::MetadataMismatch => "containerd's metadata and its files disagree",
            RuleId::HistoryGap => "the history has a hole",
            RuleId::Heartbeat => "ctrwatch is alive (its silence is the alarm)",
            RuleId::ConfigInvalid => "a configuration reload was refused",
            RuleId::ProtectDenied => "protect mode denied an operation",
            RuleId::ProtectWouldDeny => {
                "protect mode in dry-run would have denied an operation (let through)"
            }
            RuleId::ProtectUnavailable => "protect mode cannot run on this kernel",
        }
    }
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() -> Result<(), serde_json::Error> {
        for r in RuleId::ALL {
            assert_eq!(RuleId::from_name(r.name()), Some(r));
            assert_eq!(serde_json::to_string(&r)?, format!("\"{}\"", r.name()));
        }
        for s in Severity::ALL {
            assert_eq!(Severity::from_name(s.name()), Some(s));
        }
        assert!(Severity::Info < Severity::Warning && Severity::Warning < Severity::Critical);
        Ok(())
    }
}
