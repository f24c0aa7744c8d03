//! Overload: when the kernel cannot deliver records (the ring buffer is full because the
//! daemon is held back), every lost record is counted and reported in explicit loss records,
//! so that emitted + lost = performed, exactly.

use std::{ffi::OsStr, process::Command};

use serde_json::Value;
use tests::{Watcher, process, s, temp_dir};

const FSOP: &str = env!("CARGO_BIN_EXE_fsop");
const FLOOD: u64 = 50_000;

#[test]
fn a_flood_beyond_the_ring_buffer_is_fully_accounted_for() {
    let root = temp_dir("loss");
    // 1 MiB holds a few thousand records; the flood is ten times that.
    let watcher = Watcher::start(&[root.as_path()], &["--ring-buffer-mb", "1"]);
    // Hold the daemon back so the ring buffer fills.
    watcher.signal(libc::SIGSTOP);
    let out = Command::new(FSOP)
        .args([
            OsStr::new("flood"),
            root.as_os_str(),
            OsStr::new(&FLOOD.to_string()),
        ])
        .output()
        .expect("flood");
    watcher.signal(libc::SIGCONT);
    assert!(out.status.success(), "flood failed: {out:?}");
    // The flood's pid is not known before it runs: take it from its records.
    watcher.wait_for("a loss record", |v| s(v, "op") == "loss");
    let records = watcher.stop();

    let delivered = records
        .iter()
        .filter(|v| s(v, "op") == "unlink" && process(v, "comm").as_str() == Some("fsop"))
        .count() as u64;
    let lost: u64 = records
        .iter()
        .filter(|v| s(v, "op") == "loss")
        .map(|v| {
            v.get("kinds")
                .and_then(|k| k.get("unlink"))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        })
        .sum();
    let loss_total: u64 = records
        .iter()
        .filter(|v| s(v, "op") == "loss")
        .filter_map(|v| v.get("lost").and_then(Value::as_u64))
        .sum();
    assert!(
        lost > 0,
        "the flood should have overflowed a 1 MiB ring buffer"
    );
    assert!(delivered > 0, "some records should have been delivered");
    assert_eq!(
        delivered + lost,
        FLOOD,
        "delivered {delivered} + lost {lost} must equal the {FLOOD} unlinks performed"
    );
    assert!(
        loss_total >= lost,
        "per-kind counts add up to at most the total"
    );
    for v in records.iter().filter(|v| s(v, "op") == "loss") {
        assert!(s(v, "from") <= s(v, "to"), "loss window is ordered: {v}");
    }
    let _ = std::fs::remove_dir_all(root);
}
