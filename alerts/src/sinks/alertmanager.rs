//! Prometheus Alertmanager, API v2: `POST <url>/api/v2/alerts` with a JSON array of alerts.
//!
//! Labels identify an alert in Alertmanager (and deduplicate it across the instances of an
//! HA pair, which all get every alert): `alertname` (`Ctrwatch` + the rule in CamelCase,
//! e.g. `CtrwatchForeignChange`), `severity`, `node`, `rule`, `alert_id`, and when known
//! `image`, `layer`, `snapshot_id`, `container`, `pod`, `pod_namespace`. Every revision of an
//! alert has the same labels; the annotations (`summary`, `command`, `count`, `first_seen`,
//! `last_seen`, `reason`, `process`, `query_command`) are overwritten by the latest post.
//!
//! Times: `startsAt` is the first event; `endsAt` is always explicit.
//! * An event alert stays active for [`DEFAULT_LIFETIME`] (an hour) after its last event.
//!   Like Prometheus, ctrwatch does not post that end at once: each post says `endsAt` =
//!   three re-send intervals ahead (at most the lifetime's end), and the delivery workers
//!   post active alerts again every [`RESEND_EVERY`]. An instance that restarted or joined
//!   learns them again, and the alerts of a node that died resolve within three intervals
//!   instead of lingering for the hour (its heartbeat says it died). An alert delivered after
//!   its lifetime (a long outage) still fires for three intervals.
//! * The heartbeat ends two intervals after its last beat: it resolves two intervals after
//!   the daemon went silent (the dead man's switch).
//! * A resolved alert ends at its last time.

use std::time::Duration;

use ctrwatch_config::{RuleId, SinkConfig};
use ctrwatch_event::format_rfc3339;
use serde_json::{Map, Value, json};

use super::{FormatOptions, Request, Target};
use crate::alert::{AlertBody, AlertState};

/// How long an event alert stays firing after its last event.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Active alerts are posted again this often.
pub const RESEND_EVERY: Duration = Duration::from_secs(5 * 60);
/// The heartbeat's interval when its alert does not say (`details.interval_seconds`).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(300);

/// `alertname`: `Ctrwatch` + the rule id in CamelCase (`foreign-change` →
/// `CtrwatchForeignChange`).
pub fn alertname(rule: RuleId) -> String {
    let mut name = String::from("Ctrwatch");
    for part in rule.name().split('-') {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
    }
    name
}

fn dur_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// When Alertmanager should consider the alert over, as of `now_ns`.
pub fn ends_at_ns(alert: &AlertBody, now_ns: i64, opts: &FormatOptions) -> i64 {
    if alert.state == AlertState::Resolved {
        return alert.last_seen_ns().min(now_ns);
    }
    if alert.rule == RuleId::Heartbeat {
        return heartbeat_ends_ns(alert);
    }
    let horizon = now_ns.saturating_add(dur_ns(opts.resend_every).saturating_mul(3));
    let end = alert
        .last_seen_ns()
        .saturating_add(dur_ns(opts.alert_lifetime));
    if end > now_ns {
        end.min(horizon)
    } else {
        horizon
    }
}

/// A heartbeat's end: two intervals after its last beat (`details.interval_seconds`). Not
/// from the time of sending: a beat delivered late, or re-sent, must not make a dead daemon
/// look alive.
fn heartbeat_ends_ns(alert: &AlertBody) -> i64 {
    let interval = alert
        .details
        .get("interval_seconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(DEFAULT_HEARTBEAT, Duration::from_secs);
    alert
        .last_seen_ns()
        .saturating_add(dur_ns(interval).saturating_mul(2))
}

/// Whether a delivered alert is still active (Alertmanager holds it firing) and so is to be
/// re-sent: its lifetime after its last event has not run out.
pub fn is_active(alert: &AlertBody, now_ns: i64, opts: &FormatOptions) -> bool {
    if alert.state == AlertState::Resolved {
        return false;
    }
    if alert.rule == RuleId::Heartbeat {
        return heartbeat_ends_ns(alert) > now_ns;
    }
    alert
        .last_seen_ns()
        .saturating_add(dur_ns(opts.alert_lifetime))
        > now_ns
}

/// The labels of an alert (every revision the same).
pub fn labels(alert: &AlertBody) -> Map<String, Value> {
    let mut l = Map::new();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            l.insert(k.to_owned(), Value::String(v.to_owned()));
        }
    };
    put("alertname", &alertname(alert.rule));
    put("severity", alert.severity.name());
    put("node", &alert.node.hostname);
    put("rule", alert.rule.name());
    put("alert_id", alert.id.as_str());
    if let Some(c) = &alert.containerd {
        if let Some(image) = c.images.first() {
            put("image", image);
        }
        if let Some(layer) = &c.layer_digest {
            put("layer", layer);
        }
        if let Some(id) = c.snapshot_id {
            put("snapshot_id", &id.to_string());
        }
        if let Some(container) = &c.container_id {
            put("container", container);
        }
        if let Some(pod) = &c.pod {
            put("pod", &pod.name);
            if let Some(ns) = &pod.namespace {
                put("pod_namespace", ns);
            }
        }
    }
    l
}

/// The annotations (overwritten by each post).
pub fn annotations(alert: &AlertBody) -> Map<String, Value> {
    let mut a = Map::new();
    let mut put = |k: &str, v: String| {
        if !v.is_empty() {
            a.insert(k.to_owned(), Value::String(v));
        }
    };
    put("summary", alert.summary.clone());
    put("command", alert.command.clone());
    put("count", alert.count.to_string());
    put("first_seen", alert.first_seen.clone());
    put("last_seen", alert.last_seen.clone());
    if let Some(q) = &alert.query_command {
        put("query_command", q.clone());
    }
    if let Some(c) = &alert.containerd {
        put("reason", format!("{}: {}", c.verdict.name(), c.reason));
    }
    if let Some(p) = &alert.process {
        put("process", p.command_summary(200));
    }
    a
}

/// One alert of the v2 API's array.
pub fn postable(alert: &AlertBody, now_ns: i64, opts: &FormatOptions) -> Value {
    json!({
        "labels": labels(alert),
        "annotations": annotations(alert),
        "startsAt": format_rfc3339(alert.first_seen_ns()),
        "endsAt": format_rfc3339(ends_at_ns(alert, now_ns, opts)),
    })
}

/// `<url>/api/v2/alerts` (a trailing `/` of the configured URL is not doubled).
pub fn alerts_url(base: &str) -> String {
    let (path, query) = match base.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (base, None),
    };
    let mut url = format!("{}/api/v2/alerts", path.trim_end_matches('/'));
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// The POST of `alerts` (one, or a re-send's batch) to `target`.
pub fn request(
    config: &SinkConfig,
    target: &Target,
    alerts: &[AlertBody],
    now_ns: i64,
    opts: &FormatOptions,
) -> Request {
    let array: Vec<Value> = alerts.iter().map(|a| postable(a, now_ns, opts)).collect();
    let mut headers = Vec::new();
    if let Some(token) = &config.bearer_token {
        headers.push((
            "Authorization".to_owned(),
            format!("Bearer {}", token.expose()),
        ));
    }
    for (k, v) in &config.headers {
        headers.push((k.clone(), v.clone()));
    }
    Request {
        url: alerts_url(target.url()),
        headers,
        body: Value::Array(array).to_string().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Alert, Node};
    use crate::sinks::{Sink, tests::sink_config};
    use ctrwatch_config::SinkKind;
    use ctrwatch_event::{ContainerdView, PodInfo, ProcessView, Severity, Verdict};
    use std::sync::Arc;

    const T0: i64 = 1_795_000_000_000_000_000;
    const S: i64 = 1_000_000_000;

    fn body(alert: &Alert) -> Result<AlertBody, serde_json::Error> {
        AlertBody::parse(&alert.body_json()?)
    }

    fn foreign() -> Alert {
        let mut a = Alert::new(
            RuleId::ForeignChange,
            Severity::Critical,
            "k",
            Node {
                hostname: "edge-1".into(),
                machine_id: "m".into(),
            },
            T0,
            "rm deleted /pause",
            "ctrwatch history /pause",
        );
        a.containerd = Some(ContainerdView {
            images: vec!["docker.io/rancher/mirrored-pause:3.6".into()],
            layer_digest: Some("sha256:aa".into()),
            snapshot_id: Some(12),
            container_id: Some("c1".into()),
            pod: Some(PodInfo {
                name: "p".into(),
                namespace: Some("kube-system".into()),
                uid: None,
                container_name: None,
                sandbox: false,
            }),
            verdict: Verdict::Foreign,
            reason: "not containerd".into(),
            ..Default::default()
        });
        a.process = Some(Arc::new(ProcessView {
            comm: "rm".into(),
            cmdline: vec!["rm".into(), "-f".into(), "/pause".into()],
            ..Default::default()
        }));
        a
    }

    #[test]
    fn names_are_camel_case() {
        assert_eq!(alertname(RuleId::ForeignChange), "CtrwatchForeignChange");
        assert_eq!(alertname(RuleId::Heartbeat), "CtrwatchHeartbeat");
        assert_eq!(
            alertname(RuleId::AfterCrashVerify),
            "CtrwatchAfterCrashVerify"
        );
    }

    #[test]
    fn labels_annotations_and_times() -> Result<(), Box<dyn std::error::Error>> {
        let a = foreign();
        let b = body(&a)?;
        let opts = FormatOptions::default();
        let v = postable(&b, T0 + 10 * S, &opts);
        let expected_labels = json!({
            "alertname": "CtrwatchForeignChange",
            "severity": "critical",
            "node": "edge-1",
            "rule": "foreign-change",
            "alert_id": a.id.as_str(),
            "image": "docker.io/rancher/mirrored-pause:3.6",
            "layer": "sha256:aa",
            "snapshot_id": "12",
            "container": "c1",
            "pod": "p",
            "pod_namespace": "kube-system",
        });
        assert_eq!(v["labels"], expected_labels);
        assert_eq!(v["annotations"]["summary"], "rm deleted /pause");
        assert_eq!(v["annotations"]["count"], "1");
        assert_eq!(v["annotations"]["reason"], "foreign: not containerd");
        assert_eq!(v["annotations"]["process"], "rm -f /pause");
        assert_eq!(v["startsAt"], "2026-11-18T11:06:40.000000000Z");
        // Three re-send intervals ahead of the post...
        assert_eq!(v["endsAt"], "2026-11-18T11:21:50.000000000Z");
        // ...but never past the lifetime's end (last event + 1 h)...
        assert_eq!(ends_at_ns(&b, T0 + 3500 * S, &opts), T0 + 3600 * S);
        // ...and an alert sent two hours late still fires for three intervals.
        assert_eq!(
            ends_at_ns(&b, T0 + 7200 * S, &opts),
            T0 + 7200 * S + 900 * S
        );
        assert!(is_active(&b, T0 + 3599 * S, &opts));
        assert!(!is_active(&b, T0 + 3601 * S, &opts));
        Ok(())
    }

    #[test]
    fn heartbeat_ends_two_intervals_ahead_and_resolved_alerts_end() -> Result<(), serde_json::Error>
    {
        let mut h = Alert::test_alert(Node::default(), T0);
        h.details.insert("interval_seconds".into(), "10".into());
        h.last_seen_ns = T0 + 100 * S;
        let b = body(&h)?;
        let opts = FormatOptions::default();
        assert_eq!(ends_at_ns(&b, T0 + 101 * S, &opts), T0 + 120 * S);
        assert!(is_active(&b, T0 + 119 * S, &opts));
        // A dead daemon's last beat is not kept alive by a re-send.
        assert!(!is_active(&b, T0 + 121 * S, &opts));
        let mut r = foreign();
        r.state = AlertState::Resolved;
        r.last_seen_ns = T0 + 5 * S;
        let b = body(&r)?;
        assert_eq!(ends_at_ns(&b, T0 + 100 * S, &opts), T0 + 5 * S);
        assert!(!is_active(&b, T0 + 6 * S, &opts));
        Ok(())
    }

    #[test]
    fn the_request_posts_an_array_to_the_v2_api() -> Result<(), Box<dyn std::error::Error>> {
        let sink = Sink::new(
            sink_config(
                SinkKind::Alertmanager,
                &["http://127.0.0.1:9093/", "http://127.0.0.1:9094"],
                None,
            ),
            &crate::target_key::TEST_KEY,
        )?;
        let a = foreign();
        let text = a.body_json()?;
        let b = AlertBody::parse(&text)?;
        let req = sink.request(&sink.targets[1], &text, &b, T0, &FormatOptions::default());
        assert_eq!(req.url, "http://127.0.0.1:9094/api/v2/alerts");
        let v: Value = serde_json::from_slice(&req.body)?;
        assert_eq!(v.as_array().map(Vec::len), Some(1));
        assert_eq!(
            alerts_url("http://127.0.0.1:9093/"),
            "http://127.0.0.1:9093/api/v2/alerts"
        );
        assert_eq!(
            alerts_url("http://h/am?x=1"),
            "http://h/am/api/v2/alerts?x=1"
        );
        Ok(())
    }
}
