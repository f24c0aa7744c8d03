//! Where the history is incomplete, said explicitly: loss records from the kernel side and
//! the gaps the store keeps.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::{op::Op, time::format_rfc3339};

/// What kind of record could not be delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LossKind {
    /// A file operation of this kind.
    Op(Op),
    /// The kernel's internal write binding (first write to a watched fd).
    WriteBind,
    /// A process start.
    Exec,
    /// A fork.
    Fork,
    /// A process end.
    Exit,
    /// An operation anywhere on the node whose path was deeper than the kernel side follows:
    /// whether it was under a root cannot be told.
    PathUnresolved,
    /// A record of protect mode's denial or would-deny (the ring buffer was full).
    Protect,
    /// An event the daemon's store writer could not take in time (its queue was full).
    StoreQueue,
    /// A counter slot this version does not know.
    Unknown,
}

impl LossKind {
    /// The name in JSON (`unlink`, `exec`, `store_queue`, ...).
    pub fn name(self) -> &'static str {
        match self {
            LossKind::Op(op) => op.name(),
            LossKind::WriteBind => "write_bind",
            LossKind::Exec => "exec",
            LossKind::Fork => "fork",
            LossKind::Exit => "exit",
            LossKind::PathUnresolved => "path_unresolved",
            LossKind::Protect => "protect",
            LossKind::StoreQueue => "store_queue",
            LossKind::Unknown => "unknown",
        }
    }
}

impl Serialize for LossKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Records that could not be delivered in a time window: the history has a hole here, and
/// says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LossEvent {
    /// When the loss was noticed (ns since the epoch).
    pub time_ns: i64,
    /// The window the lost records fall in.
    pub from_ns: i64,
    /// End of that window.
    pub to_ns: i64,
    /// How many.
    pub lost: u64,
    /// How many of each kind.
    pub kinds: BTreeMap<LossKind, u64>,
}

impl LossEvent {
    /// The counts by kind name, in name order (the order of `kinds` in JSON and of the
    /// store's gap records).
    pub fn kinds_by_name(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for (k, n) in &self.kinds {
            *out.entry(k.name()).or_insert(0) += n;
        }
        out
    }
}

impl Serialize for LossEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json {
            time: String,
            op: &'static str,
            from: String,
            to: String,
            lost: u64,
            kinds: BTreeMap<&'static str, u64>,
        }
        Json {
            time: format_rfc3339(self.time_ns),
            op: "loss",
            from: format_rfc3339(self.from_ns),
            to: format_rfc3339(self.to_ns),
            lost: self.lost,
            kinds: self.kinds_by_name(),
        }
        .serialize(s)
    }
}

impl LossEvent {
    /// One readable line.
    pub fn human_line(&self) -> String {
        let kinds: Vec<String> = self
            .kinds_by_name()
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        format!(
            "{} LOSS        {} records not delivered between {} and {}: {}",
            format_rfc3339(self.time_ns),
            self.lost,
            format_rfc3339(self.from_ns),
            format_rfc3339(self.to_ns),
            kinds.join(" ")
        )
    }
}

/// Why the history has a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GapKind {
    /// The kernel side could not deliver records (a [`LossEvent`]).
    Loss,
    /// No daemon was capturing.
    Downtime,
    /// Records the store could not write: the disk was full.
    StoreFull,
    /// Records the store could not write for another reason.
    StoreError,
    /// Removed by retention.
    Pruned,
    /// The store was found damaged and set aside; what it held is not in this one.
    StoreReset,
}

impl GapKind {
    /// Every kind.
    pub const ALL: [GapKind; 6] = [
        GapKind::Loss,
        GapKind::Downtime,
        GapKind::StoreFull,
        GapKind::StoreError,
        GapKind::Pruned,
        GapKind::StoreReset,
    ];
    /// The name in JSON and in the store.
    pub const fn name(self) -> &'static str {
        match self {
            GapKind::Loss => "loss",
            GapKind::Downtime => "downtime",
            GapKind::StoreFull => "store_full",
            GapKind::StoreError => "store_error",
            GapKind::Pruned => "pruned",
            GapKind::StoreReset => "store_reset",
        }
    }
    /// The kind with this name.
    pub fn from_name(name: &str) -> Option<GapKind> {
        GapKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl Serialize for GapKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A window the history does not fully cover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// Why.
    pub kind: GapKind,
    /// Start (ns since the epoch).
    pub from_ns: i64,
    /// End.
    pub to_ns: i64,
    /// Records missing from the window (None: unknown, e.g. downtime).
    pub lost: Option<u64>,
    /// Per kind: op names and exec/fork/exit (loss, store_full); age/size (pruned).
    pub kinds: BTreeMap<String, u64>,
    /// downtime: `stopped` or `unclean_stop`; store_full/store_error/store_reset: what
    /// happened.
    pub reason: Option<String>,
    /// When the gap was written.
    pub recorded_ns: i64,
}

impl Serialize for Gap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            kind: GapKind,
            from: String,
            to: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            lost: Option<u64>,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            kinds: &'a BTreeMap<String, u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason: Option<&'a str>,
            recorded: String,
        }
        Json {
            kind: self.kind,
            from: format_rfc3339(self.from_ns),
            to: format_rfc3339(self.to_ns),
            lost: self.lost,
            kinds: &self.kinds,
            reason: self.reason.as_deref(),
            recorded: format_rfc3339(self.recorded_ns),
        }
        .serialize(s)
    }
}

impl Gap {
    /// One readable sentence, for logs: "no capture from … to … (12.3 s), recorded as a
    /// downtime gap", "42 records not delivered by the kernel from … to … (1.0 s), recorded as
    /// a loss gap (exec=2 unlink=40)".
    pub fn sentence(&self) -> String {
        let lost = self.lost.unwrap_or(0);
        let mut s = match self.kind {
            GapKind::Downtime => "no capture".to_owned(),
            GapKind::Loss => format!("{lost} records not delivered by the kernel"),
            GapKind::Pruned => format!("{lost} events removed by retention"),
            GapKind::StoreFull | GapKind::StoreError | GapKind::StoreReset => {
                format!("{lost} records not stored")
            }
        };
        let span = Duration::from_nanos(self.to_ns.saturating_sub(self.from_ns).max(0) as u64);
        s.push_str(&format!(
            " from {} to {} ({}), recorded as a {} gap",
            format_rfc3339(self.from_ns),
            format_rfc3339(self.to_ns),
            readable_span(span),
            self.kind.name()
        ));
        if !self.kinds.is_empty() {
            let kinds: Vec<String> = self.kinds.iter().map(|(k, n)| format!("{k}={n}")).collect();
            s.push_str(&format!(" ({})", kinds.join(" ")));
        }
        // A downtime's reason is what the sentence is logged for.
        if let (Some(reason), false) = (&self.reason, self.kind == GapKind::Downtime) {
            s.push_str(&format!(": {reason}"));
        }
        s
    }
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.sentence())
    }
}

impl std::fmt::Display for GapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// "850 ms", "12.3 s", "2h 5m 3s".
fn readable_span(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_json_keeps_its_documented_shape() -> Result<(), serde_json::Error> {
        let l = LossEvent {
            time_ns: 0,
            from_ns: 0,
            to_ns: 1_000_000_000,
            lost: 3,
            kinds: BTreeMap::from([(LossKind::Op(Op::Unlink), 2), (LossKind::Exec, 1)]),
        };
        assert_eq!(
            serde_json::to_string(&l)?,
            r#"{"time":"1970-01-01T00:00:00.000000000Z","op":"loss","from":"1970-01-01T00:00:00.000000000Z","to":"1970-01-01T00:00:01.000000000Z","lost":3,"kinds":{"exec":1,"unlink":2}}"#
        );
        assert!(l.human_line().contains("exec=1 unlink=2"));
        Ok(())
    }

    #[test]
    fn gaps_read_as_sentences() -> Result<(), serde_json::Error> {
        let g = Gap {
            kind: GapKind::Downtime,
            from_ns: 0,
            to_ns: 12_300_000_000,
            lost: None,
            kinds: BTreeMap::new(),
            reason: Some("unclean_stop".into()),
            recorded_ns: 12_300_000_000,
        };
        assert_eq!(
            g.sentence(),
            "no capture from 1970-01-01T00:00:00.000000000Z to 1970-01-01T00:00:12.300000000Z \
             (12.3 s), recorded as a downtime gap"
        );
        let g = Gap {
            kind: GapKind::Loss,
            lost: Some(42),
            kinds: BTreeMap::from([("exec".into(), 2), ("unlink".into(), 40)]),
            reason: None,
            to_ns: 1_000_000_000,
            ..g
        };
        assert_eq!(
            g.to_string(),
            "42 records not delivered by the kernel from 1970-01-01T00:00:00.000000000Z to \
             1970-01-01T00:00:01.000000000Z (1.0 s), recorded as a loss gap (exec=2 unlink=40)"
        );
        let g = Gap {
            kind: GapKind::StoreFull,
            from_ns: 0,
            to_ns: 100 * 1_000_000_000,
            lost: Some(3),
            kinds: BTreeMap::new(),
            reason: Some("disk full".into()),
            recorded_ns: 0,
        };
        assert!(
            g.sentence()
                .ends_with("(1m 40s), recorded as a store_full gap: disk full")
        );
        assert!(serde_json::to_string(&g)?.starts_with(r#"{"kind":"store_full","from":"#));
        for k in GapKind::ALL {
            assert_eq!(GapKind::from_name(k.name()), Some(k));
        }
        Ok(())
    }
}
