//! `cargo run -p tests --bin alert_e2e_latency [-- --samples 30 --every-ms 2500 --flooders 2]`
//! (root): the time from a kernel event to its alert at a receiver, end to end, at idle and
//! during a flood (docs/alerts.md, "Alert latency"). Prints a Markdown report.
//!
//! Method: a real containerd (tests/src/containerd.rs) with one imported image whose top layer
//! holds `2 × --samples` files; the real `ctrwatch run` (`CTRWATCH_BIN`, default
//! target/debug/ctrwatch) watching its root and state, with a webhook sink to a receiver on
//! 127.0.0.1. Every `--every-ms`, one of those files is deleted by `rm` started with
//! `setsid -f` (reparented away from this process: each deletion is its own process tree, so
//! its own `foreign-change` alert, not a revision of one group). The group window is 1 s,
//! shorter than the time between deletions: every deletion is its own alert even when the
//! daemon sees the deletions as one process tree (`rm` may run before `setsid`'s parent has
//! gone), and revision 1 goes out when the window closes (the next watermark after 1 s) or
//! after the settle delay (2 s), whichever comes first. Measured per alert: the
//! receiver's wall-clock time of the request minus the alert's `first_seen` (the unlink's
//! kernel time), so everything after the kernel event is in it: the ring buffer, enrichment
//! and attribution, the detection queue, the group's delay before revision 1 (above), the
//! outbox commit, the delivery worker and the HTTP request. The flood variant runs `--flooders` threads of unlinks of missing files
//! under the watched root as fast as they go (each one a record the daemon captures, enriches
//! and stores) and reports the rate they reached.

use std::{
    ffi::{CString, OsString},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use tests::{
    Watcher,
    containerd::{Containerd, Layer},
    receiver::{Mode, Receiver},
    temp_dir,
};

#[derive(Parser, Debug)]
#[command(
    name = "alert_e2e_latency",
    about = "From a kernel event to its alert at a receiver, at idle and during a flood"
)]
struct Args {
    /// Alerts measured per variant.
    #[arg(long, default_value_t = 30)]
    samples: usize,
    /// Time between two deletions, in ms (more than the group's settle delay keeps the
    /// alerts apart in the report; they are separate alerts anyway).
    #[arg(long, default_value_t = 2500)]
    every_ms: u64,
    /// Threads flooding the daemon during the flood variant (0: skip it).
    #[arg(long, default_value_t = 2)]
    flooders: usize,
    /// Keep the daemon's store (its path is printed) for `ctrwatch alerts` / `gaps`.
    #[arg(long)]
    keep: bool,
}

const NS: &str = "default";

struct Variant {
    name: &'static str,
    latencies: Vec<Duration>,
    missing: usize,
    flood_rate: Option<f64>,
    /// `history-gap` alerts received during the variant (kernel or store loss: a deletion
    /// lost in a full ring buffer has no alert of its own, and this says so).
    gap_alerts: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.samples > 0, "--samples must be at least 1");
    tests::require_root();
    let dir = temp_dir("alert-e2e-latency");
    let result = measure(&args, &dir);
    if args.keep {
        eprintln!("kept: {}", dir.join("events.db").display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let variants = result?;
    report(&args, &variants);
    Ok(())
}

fn measure(args: &Args, dir: &Path) -> Result<Vec<Variant>> {
    let cd = Containerd::start().context("containerd")?;
    let mut layer = Layer::new().dir("lat");
    for i in 0..2 * args.samples {
        layer = layer.file(format!("lat/f{i:04}"), "x\n");
    }
    let built = cd
        .build_image_info(
            "test.local/ctrwatch/latency:1",
            &[Layer::base().context("base layer")?, layer],
        )
        .context("image")?;
    cd.import(&built.archive, NS).context("import")?;
    let top = built.chain_ids.last().context("no layer")?;
    let fs = cd.snapshot_dir(NS, top)?.join("fs/lat");
    let flood_dir = cd.root().join("latency-flood");
    std::fs::create_dir_all(&flood_dir)?;

    let r = Receiver::start(Mode::Accept);
    let config = dir.join("ctrwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[alerts]\ngroup_window = \"1s\"\n\n[rules.heartbeat]\nenabled = false\n\n\
             [[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            r.url("/hook")
        ),
    )?;
    let run_args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        cd.root().into(),
        "--root".into(),
        cd.state().into(),
        "--store".into(),
        dir.join("events.db").into(),
        "--config".into(),
        config.into(),
    ];
    let daemon = Watcher::start_command(&run_args);
    // One reference pair maps the receiver's Instants to the wall clock of first_seen.
    let (ref_instant, ref_wall) = (Instant::now(), SystemTime::now());
    let wall_ns = |at: Instant| -> i64 {
        let wall = if at >= ref_instant {
            ref_wall + (at - ref_instant)
        } else {
            ref_wall - (ref_instant - at)
        };
        wall.duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    };

    let mut variants = Vec::new();
    for (v, name) in ["idle", "flood"].into_iter().enumerate() {
        if name == "flood" && args.flooders == 0 {
            continue;
        }
        let files: Vec<PathBuf> = (v * args.samples..(v + 1) * args.samples)
            .map(|i| fs.join(format!("f{i:04}")))
            .collect();
        let gaps_before = gap_alert_ids(&r);
        let flood = (name == "flood").then(|| Flood::start(&flood_dir, args.flooders));
        for f in &files {
            let status = Command::new("setsid")
                .arg("-f")
                .arg("rm")
                .arg("-f")
                .arg("--")
                .arg(f)
                .status()
                .context("setsid rm")?;
            ensure!(status.success(), "setsid rm {}: {status}", f.display());
            std::thread::sleep(Duration::from_millis(args.every_ms));
        }
        // Every alert arrives within the settle delay plus a generous bound.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut latencies = Vec::new();
        let mut missing;
        loop {
            latencies.clear();
            missing = 0;
            let received = r.received();
            for f in &files {
                let text = f.to_string_lossy();
                let first = received.iter().find(|x| {
                    let b = x.json();
                    x.path() == "/hook"
                        && b["rule"] == "foreign-change"
                        && b["file"]["path"].as_str() == Some(text.as_ref())
                });
                match first.and_then(|x| {
                    let seen = x.json()["first_seen"].as_str()?.to_owned();
                    let seen_ns = ctrwatch_event::time::parse_rfc3339(&seen)?;
                    Some(Duration::from_nanos(
                        u64::try_from(wall_ns(x.at) - seen_ns).unwrap_or(0),
                    ))
                }) {
                    Some(d) => latencies.push(d),
                    None => missing += 1,
                }
            }
            if missing == 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let flood_rate = flood.map(Flood::stop).transpose()?;
        variants.push(Variant {
            name,
            latencies,
            missing,
            flood_rate,
            gap_alerts: gap_alert_ids(&r).difference(&gaps_before).count(),
        });
    }
    daemon.stop();
    Ok(variants)
}

fn gap_alert_ids(r: &Receiver) -> std::collections::BTreeSet<String> {
    r.received()
        .iter()
        .map(|x| x.json())
        .filter(|b| b["rule"] == "history-gap")
        .filter_map(|b| b["id"].as_str().map(str::to_owned))
        .collect()
}

/// Threads unlinking missing files under the root as fast as they go (each attempt a record
/// the daemon captures, enriches and stores; none is a containerd file, so none alerts).
struct Flood {
    threads: Vec<std::thread::JoinHandle<u64>>,
    stop: Arc<AtomicBool>,
    started: Instant,
}

impl Flood {
    fn start(dir: &Path, n: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|t| {
                let stop = Arc::clone(&stop);
                let base = dir.as_os_str().as_bytes().to_vec();
                std::thread::spawn(move || {
                    let mut done = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let mut p = base.clone();
                        p.extend_from_slice(format!("/missing-{t}-{}", done % 1000).as_bytes());
                        if let Ok(c) = CString::new(p) {
                            // SAFETY: a valid NUL-terminated path; unlink(2) only reads it.
                            unsafe {
                                libc::unlink(c.as_ptr());
                            }
                        }
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        Flood {
            threads,
            stop,
            started: Instant::now(),
        }
    }

    /// Stops the flood; returns the unlinks per second it reached.
    fn stop(self) -> Result<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64();
        let total: u64 = self.threads.into_iter().filter_map(|t| t.join().ok()).sum();
        if total == 0 {
            bail!("the flood made no unlinks");
        }
        Ok(total as f64 / elapsed)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn report(args: &Args, variants: &[Variant]) {
    println!(
        "`alert_e2e_latency --samples {} --every-ms {} --flooders {}` ({}):\n",
        args.samples,
        args.every_ms,
        args.flooders,
        ctrwatch_event::time::format_rfc3339(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(0))
        )
    );
    println!("| variant | flood (unlinks/s) | alerts | history-gap alerts | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|");
    for v in variants {
        let mut sorted = v.latencies.clone();
        sorted.sort();
        let p50 = percentile(&sorted, 50.0);
        let p99 = percentile(&sorted, 99.0);
        let max = sorted.last().copied().unwrap_or_default();
        println!(
            "| {} | {} | {} / {} | {} | {} | {} | {} |",
            v.name,
            v.flood_rate.map_or("–".to_owned(), |r| format!("{r:.0}")),
            v.latencies.len(),
            v.latencies.len() + v.missing,
            v.gap_alerts,
            ms(p50),
            ms(p99),
            ms(max),
        );
    }
}
