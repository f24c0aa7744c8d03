//! The harness's own tests: a smoke run of the benchmark, the reports (ignored: run by hand,
//! docs/store.md), and the synthesised auditd records against captured ones.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use ctrwatch_event::{AncestorView, Details, FileEvent, Op, OpResult, PathBytes, ProcessView};

use super::*;

const T0: i64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z
const BOOT: i64 = T0 - 3_600_000_000_000;

/// A directory of its own under the temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ctrwatch-store-bench-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("tempdir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn process(pid: u32, comm: &str) -> ProcessView {
    ProcessView {
        pid,
        tid: pid,
        ppid: 100,
        comm: comm.into(),
        exe: Some(format!("/usr/bin/{comm}")),
        cmdline: vec![format!("/usr/bin/{comm}"), "-x".into()],
        unit: Some("containerd.service".into()),
        cgroup_id: 77,
        mnt_ns: 4_026_531_841,
        ancestors: vec![AncestorView {
            pid: 1,
            comm: "systemd".into(),
            exe: None,
        }],
        ..ProcessView::default()
    }
}

fn ev(t: i64, op: Op, path: &str) -> FileEvent {
    FileEvent {
        time_ns: t,
        mono_ns: (t - BOOT) as u64,
        op,
        path: path_bytes(path),
        new_path: None,
        result: OpResult::Ok,
        inode: None,
        dev: None,
        process: Arc::new(process(4242, "rm")),
        details: Details::default(),
    }
}

fn path_bytes(p: &str) -> PathBytes {
    PathBytes(p.as_bytes().to_vec())
}

#[test]
fn bench_smoke() {
    let dir = TempDir::new("bench");
    let r = bench_with(&dir.0, 10_000, BenchScenario::Mixed, 1, false).expect("bench");
    assert_eq!(r.events, 10_000);
    assert!(r.bytes_per_event > 0.0 && r.bytes_per_event < r.json_bytes_per_event);
    let r = bench_with(&dir.0, 3_000, BenchScenario::DeleteFlood, 1, false).expect("flood");
    assert_eq!(r.distinct_paths, 3_000);
}

/// `CTRWATCH_BENCH_N=1000000 cargo test --release -p ctrwatch-store-bench --lib tests::bench_report
/// -- --ignored --nocapture` (CTRWATCH_BENCH_DIR: where to write; default the temp dir).
#[test]
#[ignore]
fn bench_report() {
    let n: u64 = std::env::var("CTRWATCH_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let base = std::env::var_os("CTRWATCH_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("ctrwatch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let only = std::env::var("CTRWATCH_BENCH_SCENARIO").unwrap_or_default();
    for scenario in [BenchScenario::Mixed, BenchScenario::DeleteFlood] {
        if !only.is_empty() && !format!("{scenario:?}").eq_ignore_ascii_case(&only) {
            continue;
        }
        let n = if scenario == BenchScenario::DeleteFlood {
            n.min(1_000_000)
        } else {
            n
        };
        let r = bench_ingest(&dir, n, scenario).expect("bench");
        println!("{}", serde_json::to_string_pretty(&r).expect("json"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ingest only, for profiling: `CTRWATCH_BENCH_N=… CTRWATCH_BENCH_SCENARIO=mixed|deleteflood`.
#[test]
#[ignore]
fn bench_ingest_only() {
    let n: u64 = std::env::var("CTRWATCH_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let scenario = match std::env::var("CTRWATCH_BENCH_SCENARIO").as_deref() {
        Ok("deleteflood") => BenchScenario::DeleteFlood,
        _ => BenchScenario::Mixed,
    };
    let dir = TempDir::new("ingest");
    let (db, spent, _, stats) = ingest(&dir.0, n, scenario).expect("ingest");
    let bytes = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    println!(
        "{scenario:?} {n} events: {:.0} events/s, {:.1} bytes/event, {} paths",
        n as f64 / spent.as_secs_f64(),
        bytes as f64 / n as f64,
        stats.distinct_paths
    );
}

/// The layout of one audit record: its field names, with the values that shape an event
/// (record type, item count, name types) kept.
fn audit_layout(line: &str) -> Vec<String> {
    line.split([' ', '\u{1d}'])
        .filter_map(|tok| tok.split_once('='))
        .map(|(k, v)| match k {
            "type" | "items" | "nametype" | "success" => format!("{k}={v}"),
            _ => k.to_string(),
        })
        .collect()
}

#[test]
fn synthesised_audit_records_have_the_captured_layout() {
    let mut real: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for line in auditd_log::CAPTURED.lines() {
        let serial = auditd_log::serial_of(line.as_bytes()).expect("serial");
        real.entry(serial).or_default().push(line);
    }
    let mut compared = 0;
    for records in real.values() {
        let Some(syscall) = records
            .iter()
            .find(|l| l.starts_with("type=SYSCALL") && l.contains("comm=\"python3\""))
        else {
            continue; // auditctl's own rule changes
        };
        let name = syscall
            .split([' ', '\u{1d}'])
            .find_map(|t| t.strip_prefix("SYSCALL="))
            .expect("syscall name");
        let op = match name {
            "openat" => Op::Create,
            other => Op::from_name(other).expect("an op"),
        };
        let mut e = ev(T0, op, auditd_log::CAPTURED_PATH);
        e.process = Arc::new(process(21222, "python3"));
        if op == Op::Rename {
            e.new_path = Some(path_bytes(&format!("{}.tmp0", auditd_log::CAPTURED_PATH)));
        }
        let mut out = String::new();
        auditd_log::format_event(&mut out, &e, 7);
        let synth: Vec<Vec<String>> = out.lines().map(audit_layout).collect();
        let mut want: Vec<Vec<String>> = records.iter().map(|l| audit_layout(l)).collect();
        if op == Op::Unlink {
            // Captured: unlink(2) (Python); synthesised: unlinkat(2), what rm and containerd
            // call. Same records; the syscall number and name differ only in value.
            want = want
                .into_iter()
                .map(|r| {
                    r.into_iter()
                        .map(|k| k.replace("=unlink", "=unlinkat"))
                        .collect()
                })
                .collect();
        }
        assert_eq!(synth, want, "{op}:\n{out}\nvs\n{}", records.join("\n"));
        compared += 1;
    }
    assert_eq!(compared, 8, "every captured operation compared");
    assert_eq!(
        auditd_log::serial_of(b"type=CWD msg=audit(1.002:77): cwd=\"/\""),
        Some(77)
    );
}
