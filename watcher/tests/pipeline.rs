//! The daemon's path from the ring buffer to disk under a flood, for docs/store.md: a test
//! target of its own, so that the harness is not in the daemon's library.
//!
//! Synthetic events (the store benchmark's scenarios, `store::synthetic_events`) are offered
//! to [`StoreSink`] at a fixed rate from the calling thread, as the watch loop offers what it
//! drains from the ring buffer; the daemon's own writer thread stores them, committing as it
//! does in `ctrwatch run`. The sink never blocks: when its queue is full it drops and counts,
//! exactly as in the daemon. The run holds up when nothing was dropped and the store holds
//! every event offered.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use ctrwatch_store_bench::{
    BenchScenario, SEED, fresh_store, peak_rss_kib, remove_store_files, synthetic_events,
};
use watcher::daemon::StoreSink;
use watcher::store::Store;
use watcher::watch::Sink as _;

/// Figures from [`bench_pipeline`].
#[derive(Clone, Debug, Serialize)]
struct PipelineResult {
    /// `Mixed` or `DeleteFlood`.
    scenario: String,
    /// Events offered.
    events: u64,
    /// The rate the events were offered at (events/s).
    target_rate: u64,
    /// The rate they were offered at, measured (the generator must keep up with the target).
    offered_rate: f64,
    /// From the first offer until the writer had committed the last event and stopped.
    seconds_to_last_commit: f64,
    /// How long the writer needed after the last offer (its queue's backlog and the final
    /// checkpoint).
    drain_seconds: f64,
    /// Events dropped because the writer's queue was full.
    queue_lost: u64,
    /// Events in the store afterwards.
    stored: u64,
    /// The database's size afterwards.
    db_bytes: u64,
    /// Peak resident memory of the process (VmHWM, KiB): the writer's caches and SQLite's,
    /// the queue's events, the generator.
    peak_rss_kib: u64,
}

/// Offers `n` events at `rate` per second to the daemon's store sink and writer thread, on a
/// new store in `dir` (removed afterwards).
fn bench_pipeline(
    dir: &Path,
    n: u64,
    scenario: BenchScenario,
    rate: u64,
) -> anyhow::Result<PipelineResult> {
    let rate = rate.max(1);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = dir.join("pipeline.db");
    let store = fresh_store(&db).context("opening the bench store")?;
    let mut sink = StoreSink::start(store.into(), None)?;
    let start = Instant::now();
    for (i, ev) in synthetic_events(scenario, n, SEED).enumerate() {
        if i % 256 == 0 {
            // Hold back to the target rate; the watch loop reports queue losses after each
            // drain of the ring buffer, so does this every 256 events.
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            sink.flush()?;
        }
        sink.file_event(Box::new(ev))?;
    }
    sink.flush()?;
    let offered = start.elapsed();
    let queue_lost = sink.queue_lost_total();
    sink.close(Some(std::time::SystemTime::now()))?;
    let total = start.elapsed();
    let reader = Store::open_read_only(&db)?;
    let stats = reader.stats()?;
    drop(reader);
    remove_store_files(&db);
    Ok(PipelineResult {
        scenario: format!("{scenario:?}"),
        events: n,
        target_rate: rate,
        offered_rate: n as f64 / offered.as_secs_f64(),
        seconds_to_last_commit: total.as_secs_f64(),
        drain_seconds: (total - offered).as_secs_f64(),
        queue_lost,
        stored: stats.events,
        db_bytes: stats.file_bytes,
        peak_rss_kib: peak_rss_kib(),
    })
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A short run at a rate any build keeps up with: every event offered reaches the store.
#[test]
fn pipeline_stores_every_event_offered() {
    let dir = std::env::temp_dir().join(format!("ctrwatch-pipeline-{}", std::process::id()));
    let r = bench_pipeline(&dir, 20_000, BenchScenario::Mixed, 20_000).expect("pipeline");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!((r.stored, r.queue_lost), (20_000, 0), "{r:?}");
}

/// `CTRWATCH_BENCH_N` events (default 10 M) at `CTRWATCH_BENCH_RATE`/s (default 100 000),
/// scenario `CTRWATCH_BENCH_SCENARIO` (mixed|deleteflood), store under `CTRWATCH_BENCH_DIR`.
#[test]
#[ignore]
fn bench_pipeline_report() {
    let n = env_u64("CTRWATCH_BENCH_N", 10_000_000);
    let rate = env_u64("CTRWATCH_BENCH_RATE", 100_000);
    let scenario = match std::env::var("CTRWATCH_BENCH_SCENARIO").as_deref() {
        Ok("deleteflood") => BenchScenario::DeleteFlood,
        _ => BenchScenario::Mixed,
    };
    let base = std::env::var_os("CTRWATCH_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("ctrwatch-pipeline-{}", std::process::id()));
    let r = bench_pipeline(&dir, n, scenario, rate).expect("pipeline");
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
}
