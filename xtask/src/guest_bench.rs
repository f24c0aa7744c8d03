//! `cargo xtask vm-test --scenario bench`: what each backend costs per operation, measured in
//! the guests (issue 15) and written as ratios to docs/benchmarks-guests.md.
//!
//! The guest (xtask/vm/vm-test-bench.sh) runs blocks of passes of operation loops (the static
//! `bench --worker`, tests/src/bin/bench.rs) under no watcher and under three daemons:
//! `--backend tracepoint`, `--backend fentry`, `--backend tracepoint --protect dry-run` (the
//! LSM hooks; they never run without the tracepoints). Every daemon block is bracketed by
//! blocks with no watcher, and its fastest pass is compared with theirs: TCG makes absolute
//! times meaningless, and a host shared with other work drifts, so only ratios of blocks
//! close together in time are reported, one per round.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use ctrwatch_stats::median_ci95;

use crate::{cargo, cmd, target_dir, vm, workspace_root};

/// Where the figures go: one generated block per kernel (vm.rs's markers).
const DOC: &str = "docs/benchmarks-guests.md";

/// The daemon configurations in the order of the table; `none` is the baseline.
const CONFIGS: [(&str, &str); 3] = [
    ("tracepoint", "tracepoint"),
    ("fentry", "fentry"),
    ("lsm", "LSM dry-run"),
];

/// The loops in the order of the table (as the guest names them: place, workload).
const LOOPS: [(&str, &str); 9] = [
    ("outside", "getppid"),
    ("outside", "stat"),
    ("outside", "write1"),
    ("outside", "write4k"),
    ("outside", "create-unlink"),
    ("outside", "setxattr"),
    ("inside", "write1"),
    ("inside", "create-unlink"),
    ("inside", "setxattr"),
];

/// Builds the loop program the guest runs: tests/src/bin/bench.rs, static for `target`;
/// returns its path.
pub fn build_loops(target: &str) -> Result<PathBuf> {
    cmd::run(&mut cargo(&[
        "build",
        "--release",
        "-p",
        "tests",
        "--bin",
        "bench",
        "--target",
        target,
    ]))
    .context("building the static loop program (tests' bench)")?;
    Ok(target_dir().join(target).join("release").join("bench"))
}

/// One pass: `SAMPLE block round config place workload iters ns`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    block: u32,
    round: u32,
    config: String,
    place: String,
    workload: String,
    /// ns per iteration.
    per_op: f64,
}

fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let ["SAMPLE", block, round, config, place, workload, iters, ns] = f.as_slice() else {
                return None;
            };
            let iters: f64 = iters.parse().ok()?;
            let ns: f64 = ns.parse().ok()?;
            let (block, round) = (block.parse().ok()?, round.parse().ok()?);
            (iters > 0.0).then(|| Sample {
                block,
                round,
                config: config.to_string(),
                place: place.to_string(),
                workload: workload.to_string(),
                per_op: ns / iters,
            })
        })
        .collect()
}

/// The median of `v`; None when it is empty.
fn median(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| ctrwatch_stats::median(v))
}

/// One comparison's ratios, one per round (or per pair of baseline blocks, for the noise).
#[derive(Debug, Default)]
struct Ratios(Vec<f64>);

impl Ratios {
    /// `1.23 (1.20..1.27)`: the median over rounds and their range (with its 95 % CI in
    /// brackets from 6 rounds on).
    fn cell(&self) -> String {
        let Some(m) = median(&self.0) else {
            return "-".to_string();
        };
        let mut s = format!("**{m:.2}**");
        if let Some((lo, hi)) = median_ci95(&self.0) {
            let _ = write!(s, " [{lo:.2}-{hi:.2}]");
        }
        let lo = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = write!(s, " ({lo:.2}..{hi:.2})");
        s
    }
}

/// What the samples say, per loop.
#[derive(Debug, Default)]
struct Figures {
    /// (loop, config) -> the config's block ÷ the bracketing baseline blocks, per round.
    vs_none: BTreeMap<(usize, &'static str), Ratios>,
    /// (loop, config) -> that ratio ÷ the tracepoint daemon's of the same round.
    vs_tracepoint: BTreeMap<(usize, &'static str), Ratios>,
    /// loop -> a baseline block ÷ the baseline block before it: the noise.
    noise: BTreeMap<usize, Ratios>,
    rounds: u32,
}

/// A block's time per operation: its fastest pass. The host's other work only ever slows a
/// pass down (the guest sees no steal time), so the fastest pass is the least disturbed one.
fn fastest(ops: &[f64]) -> Option<f64> {
    ops.iter().copied().reduce(f64::min)
}

fn figures(samples: &[Sample]) -> Figures {
    let mut fig = Figures {
        rounds: samples
            .iter()
            .filter(|s| s.config != "none")
            .map(|s| s.round + 1)
            .max()
            .unwrap_or(0),
        ..Figures::default()
    };
    for (i, (place, workload)) in LOOPS.iter().enumerate() {
        let of_loop: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.place == *place && s.workload == *workload)
            .collect();
        let block_time = |block: u32| -> Option<f64> {
            let ops: Vec<f64> = of_loop
                .iter()
                .filter(|s| s.block == block)
                .map(|s| s.per_op)
                .collect();
            fastest(&ops)
        };
        let mut none_blocks: Vec<u32> = of_loop
            .iter()
            .filter(|s| s.config == "none")
            .map(|s| s.block)
            .collect();
        none_blocks.dedup();
        for pair in none_blocks.windows(2) {
            if let (Some(before), Some(later)) = (block_time(pair[0]), block_time(pair[1])) {
                fig.noise.entry(i).or_default().0.push(later / before);
            }
        }
        // Per round, each configuration's ratio, for the backend comparison.
        let mut round_ratio: BTreeMap<(u32, &str), f64> = BTreeMap::new();
        for (config, _) in CONFIGS {
            let mut blocks: Vec<(u32, u32)> = of_loop
                .iter()
                .filter(|s| s.config == config)
                .map(|s| (s.block, s.round))
                .collect();
            blocks.dedup();
            for (block, round) in blocks {
                // The mean of the baseline blocks just before and after (a missing one is
                // left out): a drift linear in time cancels.
                let sides: Vec<f64> = [block.wrapping_sub(1), block + 1]
                    .into_iter()
                    .filter_map(block_time)
                    .collect();
                let Some(time) = block_time(block) else {
                    continue;
                };
                if sides.is_empty() {
                    continue;
                }
                let ratio = time / (sides.iter().sum::<f64>() / sides.len() as f64);
                fig.vs_none.entry((i, config)).or_default().0.push(ratio);
                round_ratio.insert((round, config), ratio);
            }
        }
        for (&(round, config), ratio) in &round_ratio {
            let Some(tp) = round_ratio.get(&(round, "tracepoint")) else {
                continue;
            };
            let Some(&(config, _)) = CONFIGS.iter().find(|(c, _)| *c == config) else {
                continue;
            };
            if config != "tracepoint" {
                fig.vs_tracepoint
                    .entry((i, config))
                    .or_default()
                    .0
                    .push(ratio / tp);
            }
        }
    }
    fig
}

fn loop_title(place: &str, workload: &str) -> String {
    let what = match workload {
        "getppid" => "getppid",
        "stat" => "stat",
        "write1" => "1-byte write",
        "write4k" => "4 KiB write",
        "create-unlink" => "create+close+unlink",
        "setxattr" => "setxattr (`user.*`)",
        other => other,
    };
    let where_ = if place == "inside" {
        "inside the root (protected blobs dir)"
    } else {
        "outside the root"
    };
    format!("{what}, {where_}")
}

/// The host's load: `/proc/loadavg`'s first three fields.
pub fn host_load() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_string())
}

/// What one guest run left, for the doc.
pub struct GuestRun<'a> {
    pub kernel: vm::Kernel,
    pub kernel_package: &'a str,
    /// The guest's out/ directory (bench.txt).
    pub out_dir: &'a Path,
    /// The guest's `INFO` lines.
    pub info: &'a BTreeMap<String, String>,
    pub passed: bool,
    pub qemu_seconds: f64,
    /// The host's load average before the boot and after power-off.
    pub load_before: &'a str,
    pub load_after: &'a str,
}

/// Rewrites `run.kernel`'s block of docs/benchmarks-guests.md.
pub fn write_docs(run: &GuestRun<'_>) -> Result<()> {
    let bench = run.out_dir.join("bench.txt");
    let text =
        fs::read_to_string(&bench).with_context(|| format!("reading {}", bench.display()))?;
    let block = docs_block(run, &figures(&parse_samples(&text)));
    let path = workspace_root().join(DOC);
    let doc = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc = vm::replace_block(&doc, run.kernel, &block)
        .with_context(|| format!("{} lacks the generated section's markers", path.display()))?;
    fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("vm-test {}: wrote {}", run.kernel.label(), path.display());
    Ok(())
}

fn docs_block(run: &GuestRun<'_>, fig: &Figures) -> String {
    let (open, close) = vm::block_markers(run.kernel);
    let info = |k: &str| run.info.get(k).map_or("?", String::as_str);
    let per_config = |prefix: &str, config: &str| -> String {
        let v: Vec<String> = (0..fig.rounds)
            .filter_map(|r| run.info.get(&format!("{prefix}_{config}_{r}")).cloned())
            .collect();
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    let mut b = String::new();
    let _ = writeln!(b, "{open}");
    let _ = writeln!(b, "### {} ({})\n", info("release"), run.kernel_package);
    let _ = writeln!(
        b,
        "Run {} with `cargo xtask vm-test --scenario bench --kernel {}`: {} rounds, {} s of \
         loops and daemon starts, QEMU in all {:.0} s{}; the host's load average (1, 5, 15 \
         min) {} before the boot, {} after.\n",
        vm::utc_date(std::time::SystemTime::now()),
        run.kernel.label(),
        fig.rounds,
        info("bench_seconds"),
        run.qemu_seconds,
        if run.passed {
            ""
        } else {
            " (**a check failed**: see the run's results.txt)"
        },
        run.load_before,
        run.load_after
    );
    let _ = writeln!(
        b,
        "| loop | tracepoint ÷ none | fentry ÷ none | LSM dry-run ÷ none | fentry ÷ tracepoint \
         | LSM dry-run ÷ tracepoint | none ÷ none (noise) |\n|---|---|---|---|---|---|---|"
    );
    for (i, (place, workload)) in LOOPS.iter().enumerate() {
        let vs = |config| {
            fig.vs_none
                .get(&(i, config))
                .map_or("-".into(), Ratios::cell)
        };
        let vt = |config| {
            fig.vs_tracepoint
                .get(&(i, config))
                .map_or("-".into(), Ratios::cell)
        };
        let _ = writeln!(
            b,
            "| {} | {} | {} | {} | {} | {} | {} |",
            loop_title(place, workload),
            vs("tracepoint"),
            vs("fentry"),
            vs("lsm"),
            vt("fentry"),
            vt("lsm"),
            fig.noise.get(&i).map_or("-".into(), Ratios::cell)
        );
    }
    let _ = writeln!(b);
    for (config, title) in CONFIGS {
        let _ = writeln!(
            b,
            "- {title}: `run` until watching {} s; the daemon's CPU during its block {} % of \
             one CPU (per round).",
            per_config("start_seconds", config),
            per_config("daemon_cpu_pct", config)
        );
    }
    let _ = writeln!(b, "{close}");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(block: u32, round: u32, config: &str, ns: u64) -> String {
        format!("SAMPLE {block} {round} {config} outside getppid 1000 {ns}\n")
    }

    #[test]
    fn ratios_against_the_bracketing_baselines() {
        // none fastest 1000 (of 1000, 1200), tracepoint 1500 (÷ (1000 + 1000) / 2), none
        // 1000, fentry 2000 and 2400 (÷ (1000 + 1000) / 2), none 1000.
        let mut text = String::new();
        for ns in [1200, 1000] {
            text.push_str(&line(0, 0, "none", ns));
        }
        text.push_str(&line(1, 0, "tracepoint", 1500));
        text.push_str(&line(2, 0, "none", 1000));
        text.push_str(&line(3, 0, "fentry", 2400));
        text.push_str(&line(3, 0, "fentry", 2000));
        text.push_str(&line(4, 0, "none", 1250));
        text.push_str(&line(4, 0, "none", 1000));
        text.push_str("junk\nSAMPLE 1 2 3\n");
        let samples = parse_samples(&text);
        assert_eq!(samples.len(), 8);
        let fig = figures(&samples);
        assert_eq!(fig.rounds, 1);
        assert_eq!(fig.vs_none[&(0, "tracepoint")].0, vec![1.5]);
        assert_eq!(fig.vs_none[&(0, "fentry")].0, vec![2.0]);
        let vt = &fig.vs_tracepoint[&(0, "fentry")];
        assert!((vt.0[0] - 2.0 / 1.5).abs() < 1e-9);
        assert!(!fig.vs_tracepoint.contains_key(&(0, "tracepoint")));
        assert!(!fig.vs_none.contains_key(&(0, "lsm")));
        assert!(
            !fig.vs_none.contains_key(&(1, "tracepoint")),
            "another loop"
        );
        assert_eq!(fig.noise[&0].0, vec![1.0, 1.0]);
        assert_eq!(
            fig.vs_none[&(0, "tracepoint")].cell(),
            "**1.50** (1.50..1.50)"
        );
        let many = Ratios((1..=9).map(f64::from).collect());
        assert_eq!(many.cell(), "**5.00** [2.00-9.00] (1.00..9.00)");
    }

    #[test]
    fn no_median_of_nothing() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
    }
}
