//! ctrwatch's alerts: what the daemon tells the outside world, and how it makes sure the
//! outside world hears it.
//!
//! * [`alert`]: the alert model ([`Alert`]) and its versioned JSON body (docs/alerts.md), the
//!   stable alert id, the node's identity, the test alert.
//! * [`outbox`]: the alerts and their delivery state, kept in the history store's database.
//!   Every alert is written there (by the daemon's store writer, the database's only writer)
//!   before any delivery attempt; delivery workers read it with their own read-only
//!   connection and report results back through the writer.
//! * [`sinks`]: for each kind of receiver (webhook, Alertmanager, Slack, DingTalk, Feishu,
//!   WeCom), the HTTP requests an alert becomes and how the receiver's answer is judged; the
//!   HTTP client ([`http`]).
//! * [`deliver`]: one worker thread per sink: outbox order, retries with backoff and jitter,
//!   `Retry-After`, rate limits, the re-send of active Alertmanager alerts.
//! * [`target_key`]: the key of the names of a sink's targets that show alike.
//! * [`daemon_rules`]: the alerts the daemon raises itself today (history gaps, the
//!   heartbeat).
//!
//! Secrets (signing secrets, bearer tokens, URLs that carry a token) never appear in logs,
//! errors, the outbox or `ctrwatch alerts`: see [`sinks::Target`] and [`sinks::Scrubber`].

pub mod alert;
pub mod daemon_rules;
pub mod deliver;
pub mod detect;
pub mod http;
pub mod outbox;
pub mod sinks;
pub mod target_key;

pub use alert::{Alert, AlertBody, AlertId, AlertState, FileRef, Node};
pub use deliver::{Delivery, DeliveryOptions, ResultSink};
pub use outbox::{Outbox, OutboxError, OutboxWrite, Routing};
