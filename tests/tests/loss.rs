//! Overload: when the kernel cannot deliver records (the ring buffer is full because the
//! daemon is held back), every lost record is counted and reported in explicit loss records,
//! so that emitted + lost = performed, exactly.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

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

/// The daemon maps the ring buffer's data area once (not twice in a row, as aya's reader did:
/// that counted the buffer twice in its RSS; docs/operations.md, "Footprint"), so a record
/// that runs past the end of the area is put back together from its two parts. Records of
/// many lengths through a 1 MiB buffer, several times its size, at a pace the daemon keeps up
/// with: each arrives whole, with its own path.
#[test]
fn records_that_wrap_around_the_ring_buffer_arrive_whole() {
    const FILES: usize = 12_000;
    let root = temp_dir("wrap");
    let watcher = Watcher::start(&[root.as_path()], &["--ring-buffer-mb", "1"]);
    // Names of 8 to 250 bytes: the records' lengths vary by 8-byte steps and more, so their
    // ends fall everywhere in the buffer, the wrap point included.
    let name = |i: usize| format!("{i:06}-{}", "w".repeat(i * 7 % 243));
    let unlinked = |i: usize| {
        let path = root.join(name(i));
        let path = path.to_str().expect("utf-8 path").to_owned();
        move |v: &Value| s(v, "op") == "unlink" && s(v, "path") == path
    };
    for i in 0..FILES {
        let path = root.join(name(i));
        std::fs::write(&path, b"").expect("create");
        std::fs::remove_file(&path).expect("unlink");
        if i % 50 == 49 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // The pace is kept by the daemon itself: every 500 files (1 000 records, well under
        // 1 MiB even at the longest names) the test waits until it has read them all, so a
        // daemon held back a second by a loaded machine does not lose records. Between two
        // waits the records still go around the 1 MiB buffer's end several times in all.
        if i % 500 == 499 {
            watcher.wait_for(&format!("the unlink of file {i}"), unlinked(i));
        }
    }
    watcher.wait_for("the last unlink", unlinked(FILES - 1));
    let stderr = watcher.stderr();
    let records = watcher.stop();
    // `path_unresolved` is counted for every process of the node (a path deeper than the
    // walk, anywhere): not this test's records.
    let losses: Vec<&Value> = records
        .iter()
        .filter(|v| s(v, "op") == "loss")
        .filter(|v| {
            v["kinds"].as_object().is_none_or(|k| {
                k.iter()
                    .any(|(kind, n)| kind != "path_unresolved" && n.as_u64() != Some(0))
            })
        })
        .collect();
    assert!(
        losses.is_empty(),
        "the daemon fell behind: the test's pace is too fast for this machine: {losses:?}"
    );
    assert!(
        !stderr.contains("undecodable record"),
        "a record came out broken:\n{stderr}"
    );
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    for v in records.iter().filter(|v| s(v, "op") == "unlink") {
        *seen.entry(s(v, "path")).or_default() += 1;
    }
    for i in 0..FILES {
        let path = root.join(name(i));
        let path = path.to_str().expect("utf-8 path");
        assert_eq!(
            seen.get(path).copied(),
            Some(1),
            "the unlink of {path} arrived {} times",
            seen.get(path).copied().unwrap_or(0)
        );
    }
    let _ = std::fs::remove_dir_all(root);
}
