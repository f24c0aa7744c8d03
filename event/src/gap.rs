//! Where the history is incomplete, said explicitly: loss records from the kernel side and
//! the gaps the store keeps.

use std::collections::BTreeMap;

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

impl Serialize for LossEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            time: String,
            op: &'static str,
            from: String,
            to: String,
            lost: u64,
            kinds: &'a BTreeMap<LossKind, u64>,
        }
        Json {
            time: format_rfc3339(self.time_ns),
            op: "loss",
            from: format_rfc3339(self.from_ns),
            to: format_rfc3339(self.to_ns),
            lost: self.lost,
            kinds: &self.kinds,
        }
        .serialize(s)
    }
}

impl LossEvent {
    /// One readable line.
    pub fn human_line(&self) -> String {
        let kinds: Vec<String> = self
            .kinds
            .iter()
            .map(|(k, n)| format!("{}={n}", k.name()))
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
    /// One readable sentence, for logs: "no capture from … to … (12.3 s): unclean_stop".
    pub fn sentence(&self) -> String {
        let secs = (self.to_ns.saturating_sub(self.from_ns)) as f64 / 1e9;
        let what = match self.kind {
            GapKind::Loss => "records lost",
            GapKind::Downtime => "no capture",
            GapKind::StoreFull => "records not stored (disk full)",
            GapKind::StoreError => "records not stored",
            GapKind::Pruned => "history pruned",
            GapKind::StoreReset => "history set aside (damaged store)",
        };
        let mut s = format!(
            "{what} from {} to {} ({secs:.1} s)",
            format_rfc3339(self.from_ns),
            format_rfc3339(self.to_ns)
        );
        if let Some(n) = self.lost {
            s.push_str(&format!(", {n} records"));
        }
        if let Some(r) = &self.reason {
            s.push_str(&format!(": {}", crate::text::escape(r)));
        }
        s
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
            r#"{"time":"1970-01-01T00:00:00.000000000Z","op":"loss","from":"1970-01-01T00:00:00.000000000Z","to":"1970-01-01T00:00:01.000000000Z","lost":3,"kinds":{"unlink":2,"exec":1}}"#
        );
        assert!(l.human_line().contains("unlink=2 exec=1"));
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
            "no capture from 1970-01-01T00:00:00.000000000Z to 1970-01-01T00:00:12.300000000Z (12.3 s): unclean_stop"
        );
        assert!(serde_json::to_string(&g)?.starts_with(r#"{"kind":"downtime","from":"#));
        for k in GapKind::ALL {
            assert_eq!(GapKind::from_name(k.name()), Some(k));
        }
        Ok(())
    }
}
