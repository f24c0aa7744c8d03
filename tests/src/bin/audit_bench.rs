//! `cargo run --release -p tests --bin audit_bench [-- --total-mib N --reps N --dir DIR]`:
//! blob verification throughput of `ctrwatch audit`'s hashing engine
//! (`watcher::audit::content::hashing::hash_files`, the code the content check runs) against
//! coreutils' `sha256sum` on the same files, in the same run. Prints a Markdown report (the
//! "Measurements: blob verification" section of docs/audit.md).
//!
//! Method:
//! - Blobs of random bytes in a content-store layout (`<dir>/blobs/sha256/<hex>`), named by
//!   their digest, in a mix of sizes (a few of 256 MiB down to many of 16 KiB), about
//!   `--total-mib` in all; made once and reused while their sizes match.
//! - Warm page cache: every repetition first reads all the files (`cat > /dev/null`), so the
//!   figures measure hashing, not the disk; caches are never dropped (that would slow down
//!   everything else on the machine).
//! - Per repetition, in an order rotated each time: `sha256sum` as one process (files given in
//!   batches by `xargs -0 -n 64`, run one after the other), `sha256sum` in parallel
//!   (`xargs -0 -P <cores> -n 16`, largest files first), the engine with 1 thread, the engine
//!   with one thread per core. The median of the repetitions is reported.
//! - Wall time and CPU time (user + system, of this process and of the `xargs`/`sha256sum`
//!   children: `getrusage`) are both measured: per-core efficiency is bytes per CPU-second,
//!   which other load on the machine does not distort; scaling is wall time.
//! - Every digest of both tools is checked against the file's name.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use sha2::{Digest, Sha256};
use watcher::audit::{Progress, content::hashing};

#[derive(Parser, Debug)]
#[command(
    name = "audit_bench",
    about = "Blob hashing throughput: ctrwatch audit vs sha256sum"
)]
struct Args {
    /// Where the generated blobs are kept (reused across runs).
    #[arg(long, default_value = "/tmp/ctrwatch-audit-bench")]
    dir: PathBuf,
    /// About how much data to hash, in MiB.
    #[arg(long, default_value_t = 2048)]
    total_mib: u64,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Threads for the parallel runs (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Only the engine's scaling (1 thread vs all): short enough to run at a high priority
    /// (`nice -n -20`) on a machine busy with other work.
    #[arg(long)]
    scaling_only: bool,
}

/// (size, count) of the blobs per 2048 MiB, scaled to --total-mib.
const MIX: &[(u64, u64)] = &[
    (256 << 20, 2),
    (64 << 20, 8),
    (16 << 20, 32),
    (4 << 20, 64),
    (1 << 20, 128),
    (256 << 10, 256),
    (16 << 10, 1024),
];

fn main() -> Result<()> {
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores);
    let files = generate(&args.dir, args.total_mib)?;
    let total: u64 = files.iter().map(|(_, s, _)| s).sum();
    let mut by_size = files.clone();
    by_size.sort_by_key(|b| std::cmp::Reverse(b.1));
    let paths: Vec<PathBuf> = by_size.iter().map(|(p, _, _)| p.clone()).collect();
    let names: BTreeMap<PathBuf, String> = by_size
        .iter()
        .map(|(p, _, d)| (p.clone(), d.clone()))
        .collect();

    if args.scaling_only {
        return scaling(&paths, &names, threads, args.reps, total);
    }
    type Run<'a> = (&'a str, Box<dyn Fn() -> Result<()> + 'a>);
    let runs: Vec<Run> = vec![
        (
            "sha256sum, 1 process",
            Box::new(|| sha256sum(&paths, &names, 1, 64)),
        ),
        (
            "sha256sum, xargs -P",
            Box::new(|| sha256sum(&paths, &names, threads, 16)),
        ),
        ("engine, 1 thread", Box::new(|| engine(&paths, &names, 1))),
        (
            "engine, all threads",
            Box::new(|| engine(&paths, &names, threads)),
        ),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); runs.len()];
    let mut cpus: Vec<Vec<Duration>> = vec![Vec::new(); runs.len()];
    let pressure_before = cpu_pressure();
    for rep in 0..args.reps {
        for k in 0..runs.len() {
            let i = (k + rep) % runs.len();
            warm(&paths)?;
            let c0 = cpu_time();
            let t0 = Instant::now();
            (runs[i].1)().with_context(|| runs[i].0.to_string())?;
            times[i].push(t0.elapsed());
            cpus[i].push(cpu_time().saturating_sub(c0));
            eprintln!(
                "rep {rep}: {:<22} {:>8.3} s wall {:>8.3} s CPU",
                runs[i].0,
                times[i].last().map_or(0.0, Duration::as_secs_f64),
                cpus[i].last().map_or(0.0, Duration::as_secs_f64)
            );
        }
    }
    let pressure_after = cpu_pressure();
    let median = |v: &mut Vec<Duration>| -> f64 {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let med: Vec<f64> = times.iter_mut().map(median).collect();
    let cpu: Vec<f64> = cpus.iter_mut().map(median).collect();
    let mibs = |s: f64| total as f64 / (1 << 20) as f64 / s;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Command: `cargo run --release -p tests --bin audit_bench -- --total-mib {} --reps {}`\n",
        args.total_mib, args.reps
    );
    let _ = writeln!(
        md,
        "Machine: {} CPU(s) ({}), {}; SHA extensions detected: {}; `{}` ({}).\n",
        cores,
        cpu_model(),
        kernel(),
        sha_ni(),
        first_line(&["sha256sum", "--version"]),
        if links_libcrypto() {
            "linked with libcrypto"
        } else {
            "its own C implementation, no libcrypto"
        }
    );
    let _ = writeln!(
        md,
        "Data: {} files, {:.0} MiB (sizes 16 KiB to 256 MiB), warm page cache; median of {} \
         repetitions; {} thread(s) for the parallel runs. CPU pressure (`/proc/pressure/cpu`, \
         some avg60) {pressure_before} before, {pressure_after} after: other work on the \
         machine competes for the CPUs when it is high, which stretches wall times but not CPU \
         times.\n",
        files.len(),
        total as f64 / (1 << 20) as f64,
        args.reps,
        threads
    );
    let _ = writeln!(
        md,
        "| run | wall time | throughput | CPU time | per CPU-second | per core vs sha256sum |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    for (i, (name, _)) in runs.iter().enumerate() {
        let vs = match i {
            0 => "1.00x".to_string(),
            _ => format!("{:.2}x", cpu[0] / cpu[i]),
        };
        let _ = writeln!(
            md,
            "| {name} | {:.3} s | {:.0} MiB/s | {:.3} s | {:.0} MiB/s | {vs} |",
            med[i],
            mibs(med[i]),
            cpu[i],
            mibs(cpu[i])
        );
    }
    let _ = writeln!(
        md,
        "\nScaling from 1 to {threads} threads (wall time): engine {:.2}x, sha256sum {:.2}x.",
        med[2] / med[3],
        med[0] / med[1]
    );
    println!("{md}");
    Ok(())
}

/// The engine alone, 1 thread then `threads`, alternating; prints the medians.
fn scaling(
    paths: &[PathBuf],
    names: &BTreeMap<PathBuf, String>,
    threads: usize,
    reps: usize,
    total: u64,
) -> Result<()> {
    let mut t1 = Vec::new();
    let mut tn = Vec::new();
    let before = cpu_pressure();
    for _ in 0..reps {
        for (n, out) in [(1, &mut t1), (threads, &mut tn)] {
            warm(paths)?;
            let c0 = cpu_time();
            let t0 = Instant::now();
            engine(paths, names, n)?;
            out.push((t0.elapsed(), cpu_time().saturating_sub(c0)));
        }
    }
    let med = |v: &mut Vec<(Duration, Duration)>| {
        v.sort();
        v[v.len() / 2]
    };
    let (w1, c1) = med(&mut t1);
    let (wn, cn) = med(&mut tn);
    let mib = total as f64 / (1 << 20) as f64;
    println!(
        "Engine scaling, median of {reps} (CPU pressure some avg60 {before} before, {} after):\n\n\
         | threads | wall time | throughput | CPU time |\n|---:|---:|---:|---:|\n\
         | 1 | {:.3} s | {:.0} MiB/s | {:.3} s |\n| {threads} | {:.3} s | {:.0} MiB/s | {:.3} s |\n\n\
         Scaling from 1 to {threads} threads: {:.2}x.",
        cpu_pressure(),
        w1.as_secs_f64(),
        mib / w1.as_secs_f64(),
        c1.as_secs_f64(),
        wn.as_secs_f64(),
        mib / wn.as_secs_f64(),
        cn.as_secs_f64(),
        w1.as_secs_f64() / wn.as_secs_f64()
    );
    Ok(())
}

/// Makes (or reuses) the blobs; returns (path, size, digest).
fn generate(dir: &Path, total_mib: u64) -> Result<Vec<(PathBuf, u64, String)>> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("mkdir {}", blobs.display()))?;
    let mut want: Vec<u64> = Vec::new();
    for &(size, count) in MIX {
        let n = (count * total_mib).div_ceil(2048).max(1);
        want.extend(std::iter::repeat_n(size, n as usize));
    }
    // Reuse what is there if it is the same mix.
    let mut have: Vec<(PathBuf, u64, String)> = Vec::new();
    for e in fs::read_dir(&blobs)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        have.push((e.path(), e.metadata()?.len(), format!("sha256:{name}")));
    }
    let mut have_sizes: Vec<u64> = have.iter().map(|h| h.1).collect();
    have_sizes.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    if have_sizes == want_sorted {
        return Ok(have);
    }
    eprintln!("generating {} blobs in {}", want.len(), blobs.display());
    for (p, _, _) in have {
        fs::remove_file(p)?;
    }
    let mut out = Vec::new();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for (i, size) in want.into_iter().enumerate() {
        let mut data = vec![0u8; size as usize];
        for chunk in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = (x ^ i as u64).to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let digest = format!("{:x}", Sha256::digest(&data));
        let path = blobs.join(&digest);
        fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
        out.push((path, size, format!("sha256:{digest}")));
    }
    Ok(out)
}

/// Reads every file once so that all runs start from a warm page cache.
fn warm(paths: &[PathBuf]) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for p in paths {
        let mut f = fs::File::open(p)?;
        while f.read(&mut buf)? > 0 {}
    }
    Ok(())
}

fn engine(paths: &[PathBuf], names: &BTreeMap<PathBuf, String>, threads: usize) -> Result<()> {
    let out = hashing::hash_files(paths, threads, &Progress::hidden());
    for (p, r) in paths.iter().zip(out) {
        let h = r?;
        ensure!(
            Some(&h.digest) == names.get(p),
            "{}: engine digest {}",
            p.display(),
            h.digest
        );
    }
    Ok(())
}

/// `xargs -0 [-P n] -n batch sha256sum` over `paths` (largest first); checks its output.
fn sha256sum(
    paths: &[PathBuf],
    names: &BTreeMap<PathBuf, String>,
    parallel: usize,
    batch: usize,
) -> Result<()> {
    let mut cmd = Command::new("xargs");
    cmd.arg("-0");
    if parallel > 1 {
        cmd.arg("-P").arg(parallel.to_string());
    }
    cmd.arg("-n")
        .arg(batch.to_string())
        .arg("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().context("running xargs sha256sum")?;
    let mut input = Vec::new();
    for p in paths {
        input.extend_from_slice(p.as_os_str().as_encoded_bytes());
        input.push(0);
    }
    let mut stdin = child.stdin.take().context("stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("stdin writer panicked"))??;
    ensure!(out.status.success(), "sha256sum failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut n = 0;
    for line in text.lines() {
        let Some((hex, path)) = line.split_once("  ") else {
            bail!("sha256sum output {line:?}");
        };
        let want = names.get(Path::new(path)).map(String::as_str);
        ensure!(want == Some(&*format!("sha256:{hex}")), "sha256sum: {line}");
        n += 1;
    }
    ensure!(
        n == paths.len(),
        "sha256sum hashed {n} of {} files",
        paths.len()
    );
    Ok(())
}

/// CPU time (user + system) of this process and its reaped children.
fn cpu_time() -> Duration {
    let get = |who| {
        // SAFETY: rusage is plain data (all-zero is valid); getrusage fills the struct it is
        // given and fails only for an invalid `who`.
        let ru = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(who, &mut ru);
            ru
        };
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    get(libc::RUSAGE_SELF) + get(libc::RUSAGE_CHILDREN)
}

/// `some avg60` of /proc/pressure/cpu: the share of time some task waited for a CPU.
fn cpu_pressure() -> String {
    fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("some"))
                .and_then(|l| l.split_whitespace().find(|w| w.starts_with("avg60=")))
                .map(|w| format!("{}%", w.trim_start_matches("avg60=")))
        })
        .unwrap_or_else(|| "unknown".into())
}

fn sha_ni() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse4.1")
        {
            return "yes (SHA-NI: sha2 uses it)";
        }
        "no (sha2 falls back to its portable code)"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "not checked on this architecture"
    }
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn kernel() -> String {
    format!("Linux {}", first_line(&["uname", "-r"]))
}

fn first_line(cmd: &[&str]) -> String {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

fn links_libcrypto() -> bool {
    let Ok(path) = which_sha256sum() else {
        return false;
    };
    Command::new("ldd")
        .arg(path)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("libcrypto"))
}

fn which_sha256sum() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("sha256sum"))
        .find(|p| p.is_file())
        .context("sha256sum not in PATH")
}
