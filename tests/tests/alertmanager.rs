//! A real Prometheus Alertmanager pair (Debian's `prometheus-alertmanager`, two instances
//! clustered on loopback ports, tests/src/alertmanager.rs), queried through its v2 API:
//! every alert reaches both instances with its labels and an explicit future end; the
//! re-send keeps an active alert active past its first `endsAt`; a fleet of 50 sources
//! gives 50 alerts, each once.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    process::Command,
    time::{Duration, Instant},
};

use ctrwatch_alerts::{
    Alert, Node,
    deliver::send_now,
    http::Client,
    sinks::{FormatOptions, Outcome, Sink},
};
use ctrwatch_config::{RuleId, Severity, SinkConfig, SinkKind};
use serde_json::Value;
use tests::{Watcher, alertmanager::Pair, temp_dir};

const FSOP: &str = env!("CARGO_BIN_EXE_fsop");

fn alert_named<'a>(alerts: &'a [Value], name: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == name)
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !pred() {
        assert!(Instant::now() < deadline, "{what} not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn ends_at(a: &Value) -> i64 {
    ctrwatch_event::parse_rfc3339(a["endsAt"].as_str().unwrap_or("")).unwrap_or(0)
}

#[test]
fn both_instances_get_every_alert_with_its_labels_and_the_resend_keeps_it_active() {
    let dir = temp_dir("alertmanager-pair");
    let pair = Pair::start(&dir.join("am"));
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("flood")).expect("mkdir");
    let store = dir.join("events.db");
    let [a_url, b_url] = pair.urls();
    let config = dir.join("ctrwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[alerts]\nnode_name = \"edge-am-1\"\ngroup_window = \"1s\"\n\n[rules.heartbeat]\ninterval = \"10s\"\n\n\
             [[sinks]]\nname = \"am\"\nkind = \"alertmanager\"\nurls = [\"{a_url}\", \"{b_url}\"]\n"
        ),
    )
    .expect("config");
    let args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        root.clone().into(),
        "--store".into(),
        store.into(),
        "--config".into(),
        config.into(),
        "--ring-buffer-mb".into(),
        "1".into(),
    ];
    // Short lifetimes so that the test sees an end pass: active alerts re-sent every 3 s, each
    // post ending 9 s ahead, alerts active for 60 s after their last event.
    let daemon = Watcher::start_command_env(
        &args,
        &[
            ("CTRWATCH_ALERTMANAGER_RESEND", "3s"),
            ("CTRWATCH_ALERTMANAGER_LIFETIME", "60s"),
        ],
    );
    // A real kernel loss: a history-gap alert.
    daemon.signal(libc::SIGSTOP);
    let out = Command::new(FSOP)
        .args([
            OsStr::new("flood"),
            root.join("flood").as_os_str(),
            OsStr::new("40000"),
        ])
        .output()
        .expect("flood");
    daemon.signal(libc::SIGCONT);
    assert!(out.status.success());

    for inst in [&pair.a, &pair.b] {
        wait_until(
            &format!("both alerts in {}", inst.url()),
            Duration::from_secs(60),
            || {
                let alerts = inst.alerts();
                !alert_named(&alerts, "CtrwatchHistoryGap").is_empty()
                    && !alert_named(&alerts, "CtrwatchHeartbeat").is_empty()
            },
        );
    }
    let now = ctrwatch_event::time::now_ns();
    let mut first_end = BTreeMap::new();
    for inst in [&pair.a, &pair.b] {
        let alerts = inst.alerts();
        for name in ["CtrwatchHistoryGap", "CtrwatchHeartbeat"] {
            let found = alert_named(&alerts, name);
            assert_eq!(found.len(), 1, "{name} in {}: {alerts:#?}", inst.url());
            let a = found[0];
            let l = &a["labels"];
            assert_eq!(l["node"], "edge-am-1", "{a}");
            assert!(
                l["alert_id"].as_str().unwrap_or("").starts_with("ctw-"),
                "{a}"
            );
            assert!(l["severity"].is_string() && l["rule"].is_string(), "{a}");
            assert!(a["annotations"]["summary"].is_string(), "{a}");
            assert!(a["annotations"]["command"].is_string(), "{a}");
            assert_eq!(a["status"]["state"], "active", "{a}");
            assert!(ends_at(a) > now, "endsAt not in the future: {a}");
            first_end.insert((inst.url(), name), ends_at(a));
        }
        let gap = alert_named(&alerts, "CtrwatchHistoryGap")[0];
        assert_eq!(gap["labels"]["rule"], "history-gap");
        assert!(
            gap["annotations"]["summary"]
                .as_str()
                .unwrap_or("")
                .contains("records were not recorded"),
            "{gap}"
        );
    }
    // Past the first end: still active, with a later end (re-sent, and new heartbeats).
    let latest_first_end = first_end.values().copied().max().unwrap_or(0);
    let wait = Duration::from_nanos(
        u64::try_from(latest_first_end - ctrwatch_event::time::now_ns()).unwrap_or(0),
    ) + Duration::from_secs(3);
    std::thread::sleep(wait);
    for inst in [&pair.a, &pair.b] {
        let alerts = inst.alerts();
        for name in ["CtrwatchHistoryGap", "CtrwatchHeartbeat"] {
            let found = alert_named(&alerts, name);
            assert_eq!(found.len(), 1, "{name} in {}: {alerts:#?}", inst.url());
            assert_eq!(found[0]["status"]["state"], "active", "{}", found[0]);
            let end = ends_at(found[0]);
            assert!(
                end > first_end[&(inst.url(), name)] && end > ctrwatch_event::time::now_ns(),
                "{name} was not kept active in {}: {}",
                inst.url(),
                found[0]
            );
        }
    }
    daemon.stop();
    drop(pair);
    let _ = std::fs::remove_dir_all(dir);
}

fn am_sink(urls: &[String]) -> SinkConfig {
    SinkConfig {
        name: "am".into(),
        kind: SinkKind::Alertmanager,
        urls: urls.to_vec(),
        secret: None,
        min_severity: Severity::Info,
        rules: None,
        headers: BTreeMap::new(),
        bearer_token: None,
        ca_file: None,
        timeout: Duration::from_secs(10),
        rate_per_minute: None,
    }
}

/// 50 alert sources (the daemon's sender, once per node name) post to the clustered pair,
/// each its alert's first and final revision, to both instances: 200 requests. Each alert is
/// in both instances' view exactly once, with the final revision's annotations.
#[test]
fn a_fleet_of_50_nodes_gives_50_alerts_each_once() {
    let dir = temp_dir("alertmanager-fleet");
    let pair = Pair::start(&dir.join("am"));
    let urls = pair.urls().to_vec();
    let started = Instant::now();
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let urls = urls.clone();
            std::thread::spawn(move || -> (u32, u32) {
                let sink = Sink::new(
                    am_sink(&urls),
                    &ctrwatch_alerts::target_key::TargetKey::random().expect("key"),
                )
                .expect("sink");
                let client = Client::new(Duration::from_secs(10), None).expect("client");
                let node = Node {
                    hostname: format!("fleet-{i:02}"),
                    machine_id: format!("{i:032x}"),
                };
                let first = ctrwatch_event::time::now_ns();
                let mut alert = Alert::new(
                    RuleId::ForeignChange,
                    Severity::Critical,
                    "rm(4242)",
                    node,
                    first,
                    "rm deleted 20000 files in committed layers",
                    "ctrwatch query --pid 4242",
                );
                let mut requests = 0;
                let mut accepted = 0;
                for (rev, count) in [(1, 1), (2, 20_000)] {
                    alert.rev = rev;
                    alert.count = count;
                    alert.last_seen_ns = ctrwatch_event::time::now_ns();
                    for a in
                        send_now(&sink, &client, &alert, &FormatOptions::default()).expect("send")
                    {
                        requests += 1;
                        if a.outcome == Outcome::Accepted {
                            accepted += 1;
                        }
                    }
                }
                (requests, accepted)
            })
        })
        .collect();
    let mut requests = 0;
    let mut accepted = 0;
    for t in threads {
        let (r, a) = t.join().expect("sender");
        requests += r;
        accepted += a;
    }
    let sent_in = started.elapsed();
    assert_eq!((requests, accepted), (200, 200));
    let mut seen_in = Duration::ZERO;
    for inst in [&pair.a, &pair.b] {
        wait_until(
            &format!("50 fleet alerts in {}", inst.url()),
            // (Accepted already; 60 s for a loaded machine to show them.)
            Duration::from_secs(60),
            || {
                alert_named(&inst.alerts(), "CtrwatchForeignChange")
                    .iter()
                    .filter(|a| a["annotations"]["count"] == "20000")
                    .count()
                    == 50
            },
        );
        seen_in = seen_in.max(started.elapsed());
        let alerts = inst.alerts();
        let fleet = alert_named(&alerts, "CtrwatchForeignChange");
        assert_eq!(fleet.len(), 50, "{}: {fleet:#?}", inst.url());
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for a in &fleet {
            *per_node
                .entry(a["labels"]["node"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
        }
        assert_eq!(per_node.len(), 50);
        assert!(per_node.values().all(|n| *n == 1), "{per_node:?}");
    }
    println!(
        "fleet: 50 sources x 2 revisions x 2 instances = {requests} requests, all accepted in \
         {:.2} s; every alert visible once in both instances after {:.2} s",
        sent_in.as_secs_f64(),
        seen_in.as_secs_f64()
    );
    drop(pair);
    let _ = std::fs::remove_dir_all(dir);
}
