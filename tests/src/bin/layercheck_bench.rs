//! `cargo run -p tests --bin layercheck_bench [-- --mib 500 --files 50 --reps 3]` (root):
//! the daemon's layer check at commit (docs/alerts.md, "The layer check"), measured on a real
//! containerd (tests/src/containerd.rs) and the real `ctrwatch run` (`CTRWATCH_BIN`, default
//! target/debug/ctrwatch). Prints a Markdown report (docs/alerts.md, Figures).
//!
//! Method: one image, a base layer and one layer of `--mib` MiB in `--files` files of
//! pseudo-random bytes (gzip cannot shrink them: the blob is as big as the layer). Per
//! repetition, in an order alternated each time: `ctr images import` (which unpacks) with no
//! ctrwatch running, and with `ctrwatch run` watching the root (capture, attribution and the
//! layer check all on); after each import the image is removed and garbage-collected, so every
//! import ingests and unpacks the same bytes. Measured: the import's wall time (the median of
//! the repetitions is reported) and, from the daemon's log line of the check, the check's CPU
//! time (its own thread's CPU clock), wall time and the tar bytes replayed.

use std::{
    ffi::OsString,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use tests::{
    Watcher,
    containerd::{Containerd, Layer},
    temp_dir,
};

#[derive(Parser, Debug)]
#[command(
    name = "layercheck_bench",
    about = "The layer check's cost per GB and its effect on containerd's unpack time"
)]
struct Args {
    /// Size of the big layer, in MiB.
    #[arg(long, default_value_t = 500)]
    mib: usize,
    /// Files the big layer's bytes are spread over.
    #[arg(long, default_value_t = 50)]
    files: usize,
    /// Repetitions of each variant (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

const NS: &str = "default";

/// xorshift64*: bytes gzip cannot compress, made fast.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

struct Check {
    line: String,
    bytes: u64,
    cpu_s: f64,
    wall_s: f64,
}

/// The numbers of the daemon's "layer check at commit" line naming `chain`.
fn wait_check(w: &Watcher, chain: &str) -> Result<Check> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let err = w.stderr();
        if let Some(line) = err
            .lines()
            .find(|l| l.contains("layer check at commit") && l.contains(chain))
        {
            // "... (E tar entries, B bytes, C s CPU in W s): ..."
            let inner = line
                .split_once("tar entries, ")
                .and_then(|(_, r)| r.split_once("): "))
                .map(|(x, _)| x)
                .with_context(|| format!("unexpected line {line:?}"))?;
            let words: Vec<&str> = inner.split_whitespace().collect();
            ensure!(words.len() >= 7, "unexpected line {line:?}");
            return Ok(Check {
                line: line.to_owned(),
                bytes: words[0].parse()?,
                cpu_s: words[2].parse()?,
                wall_s: words[6].parse()?,
            });
        }
        if Instant::now() > deadline {
            bail!("no layer check of {chain} within 600 s; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn import(cd: &Containerd, archive: &Path) -> Result<Duration> {
    let t = Instant::now();
    cd.import(archive, NS)?;
    Ok(t.elapsed())
}

fn clean(cd: &Containerd, name: &str) -> Result<()> {
    cd.remove_image_ns(NS, name)?;
    cd.gc()?;
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    tests::require_root();
    let dir = temp_dir("layercheck-bench");
    let cd = Containerd::start()?;
    let per_file = args.mib * 1024 * 1024 / args.files.max(1);
    let mut big = Layer::new().dir("big");
    for i in 0..args.files {
        big = big.file(format!("big/f{i:04}"), noise(per_file, i as u64 + 1));
    }
    let name = "test.local/ctrwatch/layercheck-bench:1";
    let img = cd.build_image_info(name, &[Layer::base()?, big])?;
    let config = dir.join("ctrwatch.toml");
    std::fs::write(&config, "[rules.heartbeat]\nenabled = false\n")?;
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
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut checks = Vec::new();
    for rep in 0..args.reps {
        for watched in [rep % 2 == 1, rep % 2 == 0] {
            if watched {
                let w = Watcher::start_command(&run_args);
                with.push(import(&cd, &img.archive)?.as_secs_f64());
                checks.push(wait_check(&w, &img.chain_ids[1])?);
                w.stop();
            } else {
                without.push(import(&cd, &img.archive)?.as_secs_f64());
            }
            clean(&cd, name)?;
        }
    }
    let t_without = median(&mut without);
    let t_with = median(&mut with);
    let mut cpu_per_gb: Vec<f64> = checks
        .iter()
        .map(|c| c.cpu_s / (c.bytes as f64 / 1e9))
        .collect();
    let mut wall: Vec<f64> = checks.iter().map(|c| c.wall_s).collect();
    let bytes = checks.first().map_or(0, |c| c.bytes);
    println!(
        "| layer | import without ctrwatch | import with ctrwatch | slower by | check CPU per GB of layer | check wall time |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} MiB in {} files ({bytes} tar bytes) | {t_without:.2} s | {t_with:.2} s | {:.1} % | {:.2} CPU-s/GB | {:.1} s |",
        args.mib,
        args.files,
        (t_with / t_without - 1.0) * 100.0,
        median(&mut cpu_per_gb),
        median(&mut wall),
    );
    println!(
        "\nmedians of {} repetitions; imports without: {without:?} s, with: {with:?} s",
        args.reps
    );
    println!("\nthe daemon's lines:");
    for c in &checks {
        println!("    {}", c.line);
    }
    cd.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
