//! Ingest and query measurements of the event store on synthetic but realistic events, for
//! docs/store.md; the same events feed the daemon's pipeline benchmark
//! (watcher/tests/pipeline.rs) and the alert latency benchmark (tests' `alert_latency`). A
//! crate of its own: the harness is not in the store's library.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use ctrwatch_event::{
    AncestorView, ContainerdView, Details, Dev, FileEvent, Mode, Notes, Op, OpResult, OpenFlags,
    PathBytes, ProcessView, SnapshotKind, StorageKind, Verdict, Xattr,
};

use ctrwatch_store::{
    COMMIT_BATCH, DeleteOptions, Filter, PathMatch, PathQuery, Store, StoreError, StoreOptions,
    StoreStats,
};

mod auditd_log;
#[cfg(test)]
mod tests;

/// What the synthetic events look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchScenario {
    /// A node's mix: 300 processes (containerd, shims, runc, kubelet, tar, rm, ...), 200
    /// overlayfs snapshots with 2 000 file paths each plus the content store, ops weighted
    /// like image pulls and container churn (create, modify, unlink, rename, mkdir, chmod,
    /// chown, setxattr, truncate, open_write).
    Mixed,
    /// One `rm -rf` deleting `n` distinct files under one snapshot.
    DeleteFlood,
}

/// Figures from [`bench_ingest`].
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub scenario: String,
    pub events: u64,
    /// Time spent in `append_event` + `flush` (a flush every `COMMIT_BATCH` events, as the
    /// daemon's writer does under a flood).
    pub ingest_seconds: f64,
    pub events_per_sec: f64,
    /// Database size after a checkpoint (WAL folded in).
    pub db_bytes: u64,
    pub bytes_per_event: f64,
    /// The same events as JSON lines (what `watch --json` prints), for comparison.
    pub json_bytes_per_event: f64,
    pub distinct_paths: u64,
    pub distinct_processes: u64,
    /// Median of 20 runs, read-only connection, newest 100.
    pub history_host_ms: f64,
    pub history_inner_ms: f64,
    pub who_deleted_host_ms: f64,
    pub who_deleted_inner_ms: f64,
    /// op=unlink + unit=containerd.service, limit 100.
    pub query_filter_ms: f64,
    /// path glob `**/libjq*`, limit 100.
    pub query_glob_ms: f64,
    /// pid filter (a rare process), limit 100.
    pub query_pid_ms: f64,
    /// Peak resident memory of the whole process after ingest (VmHWM, KiB): the writer,
    /// its SQLite page cache and the event generator.
    pub peak_rss_kib: u64,
    /// `ausearch -f` over an audit log holding the same operations (None: not run, see
    /// `ausearch_note`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ausearch: Option<AusearchFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ausearch_note: Option<String>,
}

/// The same questions asked of an auditd log of the same operations with `ausearch`.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, Serialize)]
pub struct AusearchFigures {
    pub log_bytes: u64,
    pub log_bytes_per_event: f64,
    /// Time to synthesise and write the log (not a figure of auditd's).
    pub write_seconds: f64,
    /// `ausearch -if LOG -f HOST_PATH`, one run, log in the page cache.
    pub history_host_ms: f64,
    /// `ausearch -if LOG -f INNER_PATH`: ausearch matches names as substrings, so the inner
    /// path finds the file in every snapshot (and any longer name containing it).
    pub history_inner_ms: f64,
    /// `-f HOST_PATH --success yes -sc unlinkat` plus the same with `-sc rename` (ausearch
    /// takes one syscall per run).
    pub who_deleted_host_ms: f64,
    /// Which of the three questions ausearch did not answer within `limit_seconds` (it was
    /// killed; its time is reported as the limit).
    pub timed_out: Vec<&'static str>,
    pub limit_seconds: f64,
    /// The same three questions on a log of the first 10 000 events plus the host path's
    /// own: (history host, history inner, who-deleted host) ms. ausearch's time grows with
    /// the square of the events per second of log, so this shows its cost at low density.
    pub sample_log_events: usize,
    pub sample_ms: (f64, f64, f64),
    /// Events ausearch printed / events the store returned (no limit) for each question
    /// (on the full log; partial when timed out).
    pub history_host_events: (usize, usize),
    pub history_inner_events: (usize, usize),
    pub who_deleted_host_events: (usize, usize),
    /// The correctness check: what ausearch found in the captured real records and whether
    /// it found the synthesised event it had to.
    pub check: String,
}

/// Seed of the benchmark's events (the store and the audit log get the same ones).
pub const SEED: u64 = 42;

const BASE: &str = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn processes() -> Vec<ProcessView> {
    let kinds: &[(&str, &str, Option<&str>, &[&str])] = &[
        (
            "containerd",
            "/usr/bin/containerd",
            Some("containerd.service"),
            &[],
        ),
        (
            "containerd-shim",
            "/usr/bin/containerd-shim-runc-v2",
            Some("containerd.service"),
            &[
                "-namespace",
                "k8s.io",
                "-address",
                "/run/containerd/containerd.sock",
            ],
        ),
        (
            "runc",
            "/usr/bin/runc",
            Some("containerd.service"),
            &["--root", "/run/containerd/runc/k8s.io", "create"],
        ),
        (
            "kubelet",
            "/usr/bin/kubelet",
            Some("kubelet.service"),
            &["--config=/var/lib/kubelet/config.yaml"],
        ),
        ("tar", "/usr/bin/tar", None, &["-xzf", "/tmp/layer.tar.gz"]),
        (
            "rm",
            "/usr/bin/rm",
            None,
            &["-rf", "/var/lib/containerd/tmpmounts"],
        ),
        ("sh", "/usr/bin/dash", None, &["-c", "cleanup.sh"]),
        (
            "python3",
            "/usr/bin/python3.11",
            Some("node-agent.service"),
            &["/opt/agent/run.py"],
        ),
        ("cp", "/usr/bin/cp", None, &["-a", "src", "dst"]),
        (
            "unpigz",
            "/usr/bin/unpigz",
            Some("containerd.service"),
            &["-d", "-c"],
        ),
    ];
    let systemd = AncestorView {
        pid: 1,
        comm: "systemd".into(),
        exe: Some("/usr/lib/systemd/systemd".into()),
    };
    (0..300u32)
        .map(|i| {
            let (comm, exe, unit, args) = kinds[i as usize % kinds.len()];
            let mut cmdline = vec![exe.to_string()];
            cmdline.extend(args.iter().map(|a| a.to_string()));
            let mut ancestors = vec![];
            if comm != "containerd" && comm != "kubelet" {
                ancestors.push(AncestorView {
                    pid: 900 + i % 7,
                    comm: "containerd-shim".into(),
                    exe: Some("/usr/bin/containerd-shim-runc-v2".into()),
                });
                ancestors.push(AncestorView {
                    pid: 850,
                    comm: "containerd".into(),
                    exe: Some("/usr/bin/containerd".into()),
                });
            }
            ancestors.push(systemd.clone());
            let container = (i % 5 == 4).then(|| format!("{:016x}{:048x}", i as u64 * 7919, i));
            ProcessView {
                pid: 10_000 + i * 13,
                tid: 10_000 + i * 13,
                ppid: ancestors.first().map_or(1, |a| a.pid),
                comm: comm.into(),
                exe: Some(exe.into()),
                cmdline,
                uid: 0,
                gid: 0,
                unit: unit.map(String::from),
                container_id: container,
                cgroup_id: 4000 + i as u64,
                mnt_ns: 4_026_531_841,
                ancestors,
            }
        })
        .collect()
}

fn inner_paths() -> Vec<String> {
    let mut v = vec![
        "/pause".to_string(),
        "/usr/lib/x86_64-linux-gnu/libjq.so.1".to_string(),
    ];
    let dirs = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/share/doc",
        "/etc",
        "/usr/bin",
        "/usr/lib/python3/dist-packages/pkg",
        "/var/lib/dpkg/info",
        "/usr/share/locale/de/LC_MESSAGES",
        "/opt/app/node_modules/lib",
    ];
    let mut i = 0;
    while v.len() < 2000 {
        let d = dirs[i % dirs.len()];
        v.push(format!("{d}/file-{i:05}.so.{}", i % 7));
        i += 1;
    }
    v
}

/// Synthetic events for a scenario, deterministic for a seed. Event `i` is 10 µs after
/// event `i - 1`, starting 2026-01-01.
pub fn synthetic_events(
    scenario: BenchScenario,
    n: u64,
    seed: u64,
) -> impl Iterator<Item = FileEvent> {
    // One `Arc` per process, as the enricher shares a thread's description between events.
    let procs: Vec<Arc<ProcessView>> = processes().into_iter().map(Arc::new).collect();
    let inner = inner_paths();
    // What the daemon's containerd attribution adds to every event under the root; built
    // once per snapshot (the attribution keeps its objects too): the generator must outrun
    // the writer in the pipeline benchmark (watcher/tests/pipeline.rs).
    let snapshot_view = |id: u64| ContainerdView {
        root: PathBytes(b"/var/lib/containerd".to_vec()),
        kind: StorageKind::Snapshot,
        namespace: Some("k8s.io".into()),
        snapshotter: Some("overlayfs".into()),
        snapshot_id: Some(id),
        snapshot_key: Some(format!("sha256:{:064x}", id * 7919)),
        snapshot_kind: Some(SnapshotKind::Committed),
        layer_digest: Some(format!("sha256:{:064x}", id * 104_729)),
        chain_id: Some(format!("sha256:{:064x}", id * 7919)),
        images: vec![format!("registry.example/app-{}:1.{}", id % 17, id % 5)],
        verdict: Verdict::Owner,
        reason: "containerd".into(),
        ..Default::default()
    };
    let snapshot_views: Vec<ContainerdView> = (1..=200).map(snapshot_view).collect();
    let mut rng = Rng(seed | 1);
    let start_ns: i64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z
    let boot_ns: i64 = start_ns - 86_400_000_000_000; // booted a day earlier
    (0..n).map(move |i| {
        let t = start_ns + i as i64 * 10_000 + rng.below(5_000) as i64;
        let mono = (t - boot_ns) as u64;
        let mut d = Details::default();
        let (op, path, new_path, process) = match scenario {
            BenchScenario::DeleteFlood => {
                let path = format!("{BASE}/77/fs/usr/share/dir-{:04}/file-{i:08}.txt", i / 100);
                (Op::Unlink, path, None, procs[5].clone())
            }
            BenchScenario::Mixed => {
                let p = procs[rng.below(procs.len() as u64) as usize].clone();
                let path = if rng.below(20) == 0 {
                    let r = rng.below(5000);
                    d.containerd = Some(Box::new(ContainerdView {
                        root: PathBytes(b"/var/lib/containerd".to_vec()),
                        kind: StorageKind::Ingest,
                        ingest_ref: Some(format!("k8s.io/1/layer-sha256:{r:064x}")),
                        path: Some(PathBytes(b"/data".to_vec())),
                        verdict: Verdict::Owner,
                        reason: "containerd".into(),
                        ..Default::default()
                    }));
                    format!(
                        "/var/lib/containerd/io.containerd.content.v1.content/ingest/{r:064x}/data"
                    )
                } else {
                    let id = 1 + rng.below(200);
                    let file = &inner[rng.below(inner.len() as u64) as usize];
                    let mut view = snapshot_views[(id - 1) as usize].clone();
                    view.path = Some(PathBytes(file.as_bytes().to_vec()));
                    d.containerd = Some(Box::new(view));
                    format!("{BASE}/{id}/fs{file}")
                };
                let roll = rng.below(100);
                let op = match roll {
                    0..25 => Op::Create,
                    25..50 => Op::Modify,
                    50..70 => Op::Unlink,
                    70..75 => Op::Mkdir,
                    75..80 => Op::Rename,
                    80..85 => Op::Chmod,
                    85..88 => Op::Chown,
                    88..90 => Op::Setxattr,
                    90..95 => Op::Truncate,
                    _ => Op::OpenWrite,
                };
                let mut new_path = None;
                match op {
                    Op::Create | Op::OpenWrite | Op::Truncate => {
                        d.mode = Some(Mode(0o644));
                        d.size = Some(if op == Op::Truncate {
                            0
                        } else {
                            rng.below(1 << 20)
                        });
                        d.open_flags = OpenFlags::WRITE | OpenFlags::CREATE;
                        if op == Op::Truncate {
                            d.open_flags.insert(OpenFlags::TRUNCATE);
                        }
                    }
                    Op::Modify => {
                        let w = 1 + rng.below(64);
                        d.bytes = Some(w * 4096);
                        d.writes = Some(w);
                        d.size = Some(w * 4096);
                        d.first_write_ns = Some(t - 1_000_000);
                        d.notes = Notes::BY_FD;
                    }
                    Op::Mkdir | Op::Chmod => d.mode = Some(Mode(0o755)),
                    Op::Chown => {
                        d.owner_uid = Some(65534);
                        d.owner_gid = Some(65534);
                    }
                    Op::Setxattr => {
                        d.xattr = Some(Xattr {
                            name: b"trusted.overlay.opaque".to_vec(),
                            value: Some(b"y".to_vec()),
                        });
                        d.size = Some(1);
                    }
                    Op::Rename => new_path = Some(format!("{path}.tmp{}", rng.below(4))),
                    _ => {}
                }
                (op, path, new_path, p)
            }
        };
        let failed = rng.below(50) == 0;
        FileEvent {
            time_ns: t,
            mono_ns: mono,
            op,
            path: PathBytes(path.into_bytes()),
            new_path: new_path.map(|p| PathBytes(p.into_bytes())),
            result: if failed {
                OpResult::Err(libc::ENOENT)
            } else {
                OpResult::Ok
            },
            inode: matches!(op, Op::Modify | Op::Create).then(|| 1_000_000 + rng.below(1 << 24)),
            dev: matches!(op, Op::Modify | Op::Create).then(|| Dev::new(253, 0)),
            process,
            details: d,
        }
    })
}

fn median_ms(
    reps: usize,
    mut f: impl FnMut() -> Result<(), StoreError>,
) -> Result<f64, StoreError> {
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

/// Removes the store at `db` with its WAL, shared-memory and lock files.
pub fn remove_store_files(db: &Path) {
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// A new store at `db` (any old one removed), without retention, its run begun: where the
/// benchmarks write.
pub fn fresh_store(db: &Path) -> Result<Store, StoreError> {
    remove_store_files(db);
    let opts = StoreOptions {
        retention_age: None,
        retention_bytes: None,
        ..Default::default()
    };
    let mut store = Store::open(db, opts)?;
    store.begin_run(SystemTime::now())?;
    Ok(store)
}

/// Writes `n` synthetic events into a new store `dir/bench.db`; (path, time spent in the
/// store, JSON bytes of the same events, stats).
pub(crate) fn ingest(
    dir: &Path,
    n: u64,
    scenario: BenchScenario,
) -> Result<(std::path::PathBuf, Duration, u64, StoreStats), StoreError> {
    let db = dir.join("bench.db");
    let mut store = fresh_store(&db)?;
    let mut spent = Duration::ZERO;
    let mut json_bytes: u64 = 0;
    for (i, ev) in synthetic_events(scenario, n, SEED).enumerate() {
        if i % 64 == 0 {
            json_bytes += serde_json::to_vec(&ev).map_or(0, |v| v.len() as u64 + 1) * 64;
        }
        let t = Instant::now();
        store.append_event(&ev)?;
        // Committed as the daemon's writer does under a flood (`ctrwatch run`).
        if i % COMMIT_BATCH == COMMIT_BATCH - 1 {
            store.flush()?;
        }
        spent += t.elapsed();
    }
    let t = Instant::now();
    store.flush()?;
    spent += t.elapsed();
    store.end_run(SystemTime::now())?;
    let stats = store.stats()?;
    drop(store);
    Ok((db, spent, json_bytes, stats))
}

/// Writes `n` synthetic events of `scenario` into a new store `dir/bench.db` (removed first),
/// then measures queries on it with a read-only connection. Retention is off. When
/// `ausearch` is installed, also writes the same operations as an auditd log
/// (`dir/audit.log`, removed afterwards) and times `ausearch -f` for the same paths.
pub fn bench_ingest(
    dir: &Path,
    n: u64,
    scenario: BenchScenario,
) -> Result<BenchResult, StoreError> {
    bench_with(dir, n, scenario, 20, true)
}

/// The process's peak resident set (`VmHWM`), in KiB; 0 if unknown.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn bench_io(dir: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other(format!("{what}: {e}")),
    }
}

/// The ausearch side of the benchmark (see [`AusearchFigures`]).
fn compare_ausearch(
    dir: &Path,
    n: u64,
    scenario: BenchScenario,
    reader: &Store,
    host: &str,
    inner: &str,
) -> Result<AusearchFigures, StoreError> {
    // The captured records: what ausearch finds for a real file.
    let captured = dir.join("captured-audit.log");
    std::fs::write(&captured, auditd_log::CAPTURED)
        .map_err(|e| bench_io(dir, "writing the captured records", e))?;
    let limit = Duration::from_secs(
        std::env::var("CTRWATCH_BENCH_AUSEARCH_LIMIT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120),
    );
    let real = auditd_log::ausearch(&captured, auditd_log::CAPTURED_PATH, &[], limit)
        .map_err(|e| bench_io(dir, "ausearch on the captured records", e))?;
    let real_ops = auditd_log::CAPTURED
        .lines()
        .filter(|l| l.starts_with("type=SYSCALL") && l.contains("comm=\"python3\""))
        .count();
    let _ = std::fs::remove_file(&captured);

    let log = dir.join("audit.log");
    let sample = dir.join("audit-sample.log");
    let sample_log_events = 10_000;
    let t = Instant::now();
    let host_bytes = host.as_bytes().to_vec();
    let (log_bytes, watched) = auditd_log::write_log(
        &log,
        &sample,
        sample_log_events,
        synthetic_events(scenario, n, SEED),
        |ev| ev.path.as_bytes() == host_bytes,
    )
    .map_err(|e| bench_io(dir, "writing the audit log", e))?;
    let write_seconds = t.elapsed().as_secs_f64();
    let run = |log: &Path, file: &str, extra: &[&str]| {
        auditd_log::ausearch(log, file, extra, limit).map_err(|e| bench_io(dir, "ausearch", e))
    };
    let questions = |log: &Path| -> Result<_, StoreError> {
        let hh = run(log, host, &[])?;
        let hi = run(log, inner, &[])?;
        let du = run(log, host, &["--success", "yes", "-sc", "unlinkat"])?;
        let dr = run(log, host, &["--success", "yes", "-sc", "rename"])?;
        Ok((hh, hi, du, dr))
    };
    let (shh, shi, sdu, sdr) = questions(&sample)?;
    let (hh, hi, du, dr) = questions(&log)?;
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&sample);

    let all = |p: &str, m: PathMatch| PathQuery {
        path: p.as_bytes().to_vec(),
        matching: m,
        ..Default::default()
    };
    let ours_hh = reader.history(&all(host, PathMatch::Host))?.len();
    let ours_hi = reader.history(&all(inner, PathMatch::Inner))?.len();
    let opts = DeleteOptions {
        ancestors: false,
        ..DeleteOptions::new()
    };
    let ours_d = reader.who_deleted(&all(host, PathMatch::Host), opts)?.len();

    // The check: every synthesised event on the host path must be among what `ausearch -f`
    // printed from the sample log, as the captured real operations are.
    let newest = watched.iter().max().map(|&(_, serial)| serial);
    let found = !watched.is_empty() && watched.iter().all(|(_, s)| shh.serials.contains(s));
    if real.serials.is_empty() || !found {
        return Err(bench_io(
            dir,
            "ausearch check",
            std::io::Error::other(format!(
                "ausearch -f found {} captured events; all synthesised events on the host \
                 path (newest serial {:?}): {}",
                real.serials.len(),
                newest,
                if found { "yes" } else { "no" }
            )),
        ));
    }
    let check = format!(
        "captured: ausearch -f {} found {} of the {} real operations (not the unlink that \
         named the file relative to its cwd); synthesised: found all {} events on the host \
         path in the sample log (newest serial {})",
        auditd_log::CAPTURED_PATH,
        real.serials.len(),
        real_ops,
        watched.len(),
        newest.unwrap_or(0)
    );
    let mut timed_out = Vec::new();
    if hh.timed_out {
        timed_out.push("history_host");
    }
    if hi.timed_out {
        timed_out.push("history_inner");
    }
    if du.timed_out || dr.timed_out {
        timed_out.push("who_deleted_host");
    }
    let mut deleted = du.serials.clone();
    deleted.extend(dr.serials.iter().copied());
    Ok(AusearchFigures {
        log_bytes,
        log_bytes_per_event: log_bytes as f64 / n.max(1) as f64,
        write_seconds,
        history_host_ms: hh.ms,
        history_inner_ms: hi.ms,
        who_deleted_host_ms: du.ms + dr.ms,
        timed_out,
        limit_seconds: limit.as_secs_f64(),
        sample_log_events,
        sample_ms: (shh.ms, shi.ms, sdu.ms + sdr.ms),
        history_host_events: (hh.serials.len(), ours_hh),
        history_inner_events: (hi.serials.len(), ours_hi),
        who_deleted_host_events: (deleted.len(), ours_d),
        check,
    })
}

pub(crate) fn bench_with(
    dir: &Path,
    n: u64,
    scenario: BenchScenario,
    reps: usize,
    with_ausearch: bool,
) -> Result<BenchResult, StoreError> {
    let (db, spent, json_bytes, stats) = ingest(dir, n, scenario)?;
    let peak_rss_kib = peak_rss_kib();
    let db_bytes = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);

    let reader = Store::open_read_only(&db)?;
    let host = format!("{BASE}/5/fs/usr/lib/x86_64-linux-gnu/libjq.so.1");
    let (host, inner) = match scenario {
        BenchScenario::Mixed => (host, "/usr/lib/x86_64-linux-gnu/libjq.so.1".to_string()),
        BenchScenario::DeleteFlood => (
            format!("{BASE}/77/fs/usr/share/dir-0000/file-00000042.txt"),
            "/usr/share/dir-0000/file-00000042.txt".to_string(),
        ),
    };
    let q = |p: &str, m: PathMatch| PathQuery {
        path: p.as_bytes().to_vec(),
        matching: m,
        limit: Some(100),
        ..Default::default()
    };
    let hq = q(&host, PathMatch::Host);
    let iq = q(&inner, PathMatch::Auto);
    let history_host_ms = median_ms(reps, || reader.history(&hq).map(|_| ()))?;
    let history_inner_ms = median_ms(reps, || reader.history(&iq).map(|_| ()))?;
    let who_deleted_host_ms = median_ms(reps, || {
        reader.who_deleted(&hq, DeleteOptions::new()).map(|_| ())
    })?;
    let who_deleted_inner_ms = median_ms(reps, || {
        reader.who_deleted(&iq, DeleteOptions::new()).map(|_| ())
    })?;
    let f = Filter {
        ops: vec!["unlink".into()],
        unit: Some("containerd.service".into()),
        limit: Some(100),
        ..Default::default()
    };
    let query_filter_ms = median_ms(reps, || reader.query(&f).map(|_| ()))?;
    let g = Filter {
        path: Some(b"**/libjq*".to_vec()),
        limit: Some(100),
        ..Default::default()
    };
    let query_glob_ms = median_ms(reps, || reader.query(&g).map(|_| ()))?;
    let p = Filter {
        pid: Some(10_000 + 299 * 13),
        limit: Some(100),
        ..Default::default()
    };
    let query_pid_ms = median_ms(reps, || reader.query(&p).map(|_| ()))?;
    let (ausearch, ausearch_note) = if !with_ausearch {
        (None, Some("not run".to_string()))
    } else if !auditd_log::available() {
        (
            None,
            Some("ausearch is not installed (Debian package auditd)".to_string()),
        )
    } else {
        (
            Some(compare_ausearch(dir, n, scenario, &reader, &host, &inner)?),
            None,
        )
    };
    let secs = spent.as_secs_f64();
    Ok(BenchResult {
        scenario: format!("{scenario:?}"),
        events: n,
        ingest_seconds: secs,
        events_per_sec: n as f64 / secs.max(1e-9),
        db_bytes,
        bytes_per_event: db_bytes as f64 / n.max(1) as f64,
        json_bytes_per_event: json_bytes as f64 / n.max(1) as f64,
        distinct_paths: stats.distinct_paths,
        distinct_processes: stats.distinct_processes,
        history_host_ms,
        history_inner_ms,
        who_deleted_host_ms,
        who_deleted_inner_ms,
        query_filter_ms,
        query_glob_ms,
        query_pid_ms,
        peak_rss_kib,
        ausearch,
        ausearch_note,
    })
}
