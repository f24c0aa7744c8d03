//! The file as written: every key optional, unknown keys refused. [`crate::Config`] is what
//! it resolves to, with the defaults filled in and every value checked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) log_level: Option<String>,
    #[serde(default)]
    pub(crate) watch: RawWatch,
    #[serde(default)]
    pub(crate) store: RawStore,
    #[serde(default)]
    pub(crate) metrics: RawMetrics,
    #[serde(default)]
    pub(crate) alerts: RawAlerts,
    #[serde(default)]
    pub(crate) rules: BTreeMap<String, RawRule>,
    #[serde(default)]
    pub(crate) sinks: Vec<RawSink>,
}

/// `[watch]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWatch {
    pub(crate) roots: Option<Vec<String>>,
    pub(crate) discover: Option<bool>,
    pub(crate) root_refresh: Option<String>,
    pub(crate) ring_buffer_mb: Option<u32>,
    pub(crate) trust_exes: Option<Vec<String>>,
    pub(crate) trust_units: Option<Vec<String>>,
    pub(crate) mask_args: Option<Vec<String>>,
    pub(crate) default_masks: Option<bool>,
    pub(crate) backend: Option<String>,
    pub(crate) protect: Option<String>,
}

/// `[store]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub(crate) path: Option<String>,
    pub(crate) retention_days: Option<u64>,
    pub(crate) retention_mb: Option<u64>,
    pub(crate) group: Option<String>,
}

/// `[metrics]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub(crate) listen: Option<String>,
}

/// `[alerts]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlerts {
    pub(crate) group_window: Option<String>,
    pub(crate) outbox_max: Option<u64>,
    pub(crate) node_name: Option<String>,
}

/// `[rules.<id>]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub(crate) enabled: Option<bool>,
    pub(crate) severity: Option<String>,
    pub(crate) interval: Option<String>,
    pub(crate) window: Option<String>,
}

/// One `[[sinks]]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSink {
    pub(crate) name: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) url: Option<String>,
    pub(crate) urls: Option<Vec<String>>,
    pub(crate) secret: Option<String>,
    pub(crate) secret_file: Option<String>,
    pub(crate) min_severity: Option<String>,
    pub(crate) rules: Option<Vec<String>>,
    pub(crate) headers: Option<BTreeMap<String, String>>,
    pub(crate) bearer_token: Option<String>,
    pub(crate) bearer_token_file: Option<String>,
    pub(crate) ca_file: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) rate_per_minute: Option<u32>,
}
