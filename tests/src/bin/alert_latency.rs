//! `alert_latency [--rate EVENTS_PER_S] [--alerts N] [--every-ms MS]`: how long an alert
//! takes from the daemon's pipeline to a receiver, at idle and under a flood of events.
//!
//! The daemon's own store sink, writer thread and delivery worker run in this process (as
//! the pipeline benchmark, watcher/tests/pipeline.rs, runs them for the store figures):
//! synthetic events are offered at `--rate` per second (0: idle) as the watch loop would, and every `--every-ms` an alert is handed to
//! the sink (`StoreSink::alert`, the entry point of the detections). The writer commits it to
//! the outbox, wakes the webhook worker, which POSTs it to a receiver on 127.0.0.1. Measured:
//! from the hand-over to the receiver having read the request (same process, same clock).
//!
//! The detections are not in this measurement (they come with the detection rules): add the
//! time from the kernel event to the rule's hand-over when they are.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use ctrwatch_alerts::{Alert, Node};
use ctrwatch_config::{Config, RuleId, Severity};
use ctrwatch_store_bench::{BenchScenario, synthetic_events};
use tests::receiver::{Mode, Receiver};
use watcher::{
    alerting::{Alerting, DaemonAlerts},
    daemon::StoreSink,
    store::{DaemonStore, StoreOptions},
    watch::Sink as _,
};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let rate = arg("--rate", 0);
    let alerts = arg("--alerts", 200);
    let every = Duration::from_millis(arg("--every-ms", 100).max(1));
    let dir = std::env::temp_dir().join(format!("ctrwatch-alert-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let receiver = Receiver::start(Mode::Accept);
    let config = Config::parse(
        "alert_latency",
        &format!(
            "[rules.heartbeat]\nenabled = false\n\n[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            receiver.url("/hook")
        ),
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let alerting =
        Alerting::from_config(config, &ctrwatch_alerts::target_key::TargetKey::random()?)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = DaemonStore::open(dir.join("events.db"), StoreOptions::default())
        .context("opening the store")?;
    let mut sink = StoreSink::new(store, None).with_alerts(DaemonAlerts::new(alerting));
    sink.capture_started(SystemTime::now())?;

    let node = Node::detect(Some("latency-bench"));
    let mut events = synthetic_events(BenchScenario::Mixed, u64::MAX, 7);
    let mut injected: Vec<(String, Instant)> = Vec::new();
    let start = Instant::now();
    let mut offered = 0u64;
    let mut next_alert = start;
    while (injected.len() as u64) < alerts {
        let now = Instant::now();
        if now >= next_alert {
            let t = ctrwatch_event::time::now_ns();
            let a = Alert::new(
                RuleId::ForeignChange,
                Severity::Critical,
                format!("latency {}", injected.len()),
                node.clone(),
                t,
                "latency probe",
                "ctrwatch alerts",
            );
            let handed = Instant::now();
            sink.alert(&a)?;
            injected.push((a.id.to_string(), handed));
            next_alert += every;
        }
        if rate == 0 {
            std::thread::sleep(next_alert.saturating_duration_since(Instant::now()));
            continue;
        }
        // Offer events up to where the rate says we should be, 256 at a time.
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if offered >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        for _ in 0..256 {
            if let Some(ev) = events.next() {
                sink.file_event(Box::new(ev))?;
                offered += 1;
            }
        }
        sink.flush()?;
    }
    let offered_rate = offered as f64 / start.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut latencies = Vec::new();
    loop {
        let got = receiver.received();
        latencies.clear();
        for (id, handed) in &injected {
            if let Some(r) = got
                .iter()
                .find(|r| r.json()["id"].as_str() == Some(id.as_str()))
            {
                latencies.push(r.at.saturating_duration_since(*handed));
            }
        }
        if latencies.len() == injected.len() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let lost = sink.queue_lost_total();
    sink.close(Some(SystemTime::now()))?;
    let _ = std::fs::remove_dir_all(&dir);
    latencies.sort();
    println!(
        "{{\"rate\":{rate},\"offered_rate\":{offered_rate:.0},\"alerts\":{},\"delivered\":{},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2},\"events_lost_at_queue\":{lost}}}",
        injected.len(),
        latencies.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
    );
    Ok(())
}
