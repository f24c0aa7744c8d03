//! `metadata-mismatch` end to end: the real daemon (`ctrwatch run --config`) watching a real
//! containerd (tests/src/containerd.rs), a real webhook receiver on 127.0.0.1.
//!
//! * a foreign `rm -rf` of a layer's snapshot directory that containerd's metadata still
//!   records gives ONE alert naming the directory, the snapshot, the image, the process and
//!   the history command; containerd removing snapshots itself (`ctr images rm` + GC, and
//!   `ctr snapshots rm` of an active snapshot + GC) gives none (asserted after the daemon
//!   recorded containerd's `rmdir`s and 3× the settle delay);
//! * a foreign write into a committed content blob gives an alert with the expected and the
//!   found digest; containerd's import (blobs renamed in from ingest/) gives none (asserted
//!   after the daemon recorded the rename-ins and 3× the settle delay);
//! * a writer that touches a blob every half second without stopping still gets its check
//!   (and the alert) while it writes;
//! * a stop with many blob checks pending is bounded in time and names what it skipped.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tests::{
    Watcher,
    containerd::{BuiltImage, Containerd, Layer},
    receiver::{Mode, Receiver},
    temp_dir, wait_history,
};

const NS: &str = "default";
const RULE: &str = "metadata-mismatch";
/// The rule's settle delay (`ctrwatch_alerts::detect::mismatch::SETTLE`): an alert that must
/// not come is waited for 3× this long after the positive signal.
const SETTLE: Duration = Duration::from_secs(2);

fn start_daemon(cd: &Containerd, dir: &Path, r: &Receiver) -> (Watcher, PathBuf) {
    let config = dir.join("ctrwatch.toml");
    let body = format!(
        "[rules.heartbeat]\nenabled = false\n\n\
         [[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
        r.url("/hook")
    );
    std::fs::write(&config, body).expect("config");
    let store = dir.join("events.db");
    let args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        cd.root().into(),
        "--root".into(),
        cd.state().into(),
        "--store".into(),
        store.as_os_str().to_owned(),
        "--config".into(),
        config.into(),
    ];
    (Watcher::start_command(&args), store)
}

/// Every `metadata-mismatch` revision the receiver got.
fn mismatches(r: &Receiver) -> Vec<Value> {
    r.received()
        .into_iter()
        .filter(|x| x.path() == "/hook")
        .map(|x| x.json())
        .filter(|b| b["rule"] == RULE)
        .collect()
}

fn wait_mismatch(r: &Receiver, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let timeout = Duration::from_secs(90);
    let deadline = Instant::now() + timeout;
    loop {
        let all = mismatches(r);
        if let Some(b) = all.iter().find(|b| pred(b)) {
            return b.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no such {RULE} alert within {timeout:?}; received:\n{}",
            all.iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn image(cd: &Containerd, name: &str, marker: &str) -> BuiltImage {
    let upper = Layer::new()
        .dir("data")
        .file("data/marker", format!("{marker}\n"));
    cd.build_image_info(name, &[Layer::base().expect("base layer"), upper])
        .expect("image")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// From the foreign act to its alert at the receiver (the settle delay, 2 s, is most of it):
/// printed, not asserted.
fn latency(r: &Receiver, what: &str, since: Instant, path: &Path) {
    if let Some(first) = r
        .received()
        .iter()
        .find(|x| x.path() == "/hook" && about(&x.json(), path))
    {
        eprintln!(
            "latency: {what} to its alert at the receiver: {:.0} ms",
            first.at.saturating_duration_since(since).as_secs_f64() * 1000.0
        );
    }
}

fn about(b: &Value, path: &Path) -> bool {
    b["file"]["path"] == path.to_string_lossy().as_ref()
}

#[test]
fn a_foreign_rm_of_a_recorded_snapshot_alerts_once_and_containerds_own_removal_does_not() {
    tests::require_root();
    let dir = temp_dir("mismatch-snapshot");
    let cd = Containerd::start().expect("containerd");
    let r = Receiver::start(Mode::Accept);
    let (daemon, store) = start_daemon(&cd, &dir, &r);

    let kept = "test.local/ctrwatch/mismatch-kept:1";
    let gone = "test.local/ctrwatch/mismatch-gone:1";
    let kept_img = image(&cd, kept, "kept");
    let gone_img = image(&cd, gone, "gone");
    cd.import(&kept_img.archive, NS).expect("import kept");
    cd.import(&gone_img.archive, NS).expect("import gone");
    let kept_dir = cd
        .snapshot_dir(NS, &kept_img.chain_ids[1])
        .expect("kept upper dir");
    let gone_dir = cd
        .snapshot_dir(NS, &gone_img.chain_ids[1])
        .expect("gone upper dir");

    // 1. containerd removes snapshots itself: an image's layer (the image goes, the GC
    // collects its snapshot), and an active snapshot (`ctr snapshots rm`, then the GC).
    let active_key = "mismatch-active";
    cd.ctr_ns(
        NS,
        &[
            "snapshots",
            "--snapshotter",
            "overlayfs",
            "prepare",
            active_key,
            &kept_img.chain_ids[1],
        ],
    )
    .expect("snapshots prepare");
    let active_dir = cd.snapshot_dir(NS, active_key).expect("active dir");
    cd.remove_image(gone).expect("images rm");
    cd.ctr_ns(
        NS,
        &["snapshots", "--snapshotter", "overlayfs", "rm", active_key],
    )
    .expect("snapshots rm");
    cd.gc().expect("gc");
    for dir in [&gone_dir, &active_dir] {
        assert!(!dir.exists(), "the GC left {}", dir.display());
        // Positive signal: the daemon recorded containerd's rmdir of the directory…
        let removed = wait_history(&store, dir, "rmdir");
        assert_eq!(removed["containerd"]["verdict"], "owner", "{removed}");
    }
    // …then well past the settle delay, no alert about either.
    std::thread::sleep(3 * SETTLE);

    // 2. Someone else removes a layer containerd still records.
    let removed_at = Instant::now();
    run(Command::new("rm").arg("-rf").arg(&kept_dir));
    let a = wait_mismatch(&r, "the foreign rm -rf", |b| about(b, &kept_dir));
    latency(&r, "the rm -rf", removed_at, &kept_dir);
    let rmdir = wait_history(&store, &kept_dir, "rmdir");
    assert_eq!(rmdir["containerd"]["verdict"], "foreign", "{rmdir}");
    // Anything more about either directory would have come by now.
    std::thread::sleep(3 * SETTLE);
    let all = mismatches(&r);
    drop(daemon);

    eprintln!("the alert: {a:#}");
    assert!(
        !all.iter()
            .any(|b| about(b, &gone_dir) || about(b, &active_dir)),
        "containerd's own removal alerted: {all:#?}"
    );
    let ids: std::collections::BTreeSet<&str> = all
        .iter()
        .filter(|b| about(b, &kept_dir))
        .filter_map(|b| b["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 1, "one alert for one removal: {all:#?}");
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(a["severity"], "warning", "{a:#}");
    let d = &a["details"];
    assert_eq!(d["mismatch"], "snapshot_removed", "{a:#}");
    let id = kept_dir
        .file_name()
        .and_then(OsStr::to_str)
        .expect("id")
        .to_owned();
    assert_eq!(d["snapshot_id"], id.as_str(), "{a:#}");
    assert_eq!(d["snapshot_kind"], "committed", "{a:#}");
    assert_eq!(
        d["referenced_by"],
        format!("{NS}/{}", kept_img.chain_ids[1]).as_str(),
        "{a:#}"
    );
    let c = &a["containerd"];
    assert_eq!(c["snapshot_id"], id.parse::<u64>().expect("id"), "{a:#}");
    assert_eq!(
        c["layer_digest"],
        kept_img.layer_digests[1].as_str(),
        "{a:#}"
    );
    assert!(
        c["images"]
            .as_array()
            .is_some_and(|i| i.iter().any(|i| i == kept)),
        "{a:#}"
    );
    assert_eq!(c["verdict"], "foreign", "{a:#}");
    assert_eq!(a["process"]["comm"], "rm", "{a:#}");
    assert!(
        a["command"].as_str().is_some_and(
            |c| c.starts_with(&format!("ctrwatch history {} --since ", kept_dir.display()))
        ),
        "{a:#}"
    );
    assert!(
        a["summary"]
            .as_str()
            .is_some_and(|s| s.contains("still records it") && s.contains(kept)),
        "{a:#}"
    );
    cd.stop().expect("containerd stop");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_foreign_write_into_a_committed_blob_alerts_with_both_digests_and_an_import_does_not() {
    tests::require_root();
    let dir = temp_dir("mismatch-blob");
    let cd = Containerd::start().expect("containerd");
    let r = Receiver::start(Mode::Accept);
    let (daemon, store) = start_daemon(&cd, &dir, &r);

    // 1. containerd's import: every blob renamed in from ingest/.
    let name = "test.local/ctrwatch/mismatch-blob:1";
    let built = image(&cd, name, "blob");
    cd.import(&built.archive, NS).expect("import");
    let blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").expect("sha256");
        cd.content_dir().join("blobs/sha256").join(hex)
    };
    let digests: Vec<&str> = [built.manifest_digest.as_str(), built.config_digest.as_str()]
        .into_iter()
        .chain(built.layer_digests.iter().map(String::as_str))
        .collect();
    // Positive signal: the daemon recorded each rename-in…
    for d in &digests {
        let ev = wait_history(&store, &blob(d), "rename");
        assert_eq!(ev["containerd"]["verdict"], "owner", "{ev}");
    }
    // …then well past the settle delay, no alert.
    std::thread::sleep(3 * SETTLE);
    assert!(
        mismatches(&r).is_empty(),
        "containerd's import alerted: {:#?}",
        mismatches(&r)
    );

    // 2. Someone else overwrites the start of the config blob.
    let target = blob(&built.config_digest);
    let written_at = Instant::now();
    run(Command::new("python3").args([
        OsStr::new("-c"),
        OsStr::new("import sys\nwith open(sys.argv[1], 'r+b') as f: f.write(b'XXXX')"),
        target.as_os_str(),
    ]));
    let content = std::fs::read(&target).expect("blob");
    let found = format!("sha256:{}", hex(&Sha256::digest(&content)));
    let a = wait_mismatch(&r, "the foreign write", |b| about(b, &target));
    latency(&r, "the write", written_at, &target);
    std::thread::sleep(3 * SETTLE);
    let all = mismatches(&r);
    drop(daemon);

    eprintln!("the alert: {a:#}");
    assert_eq!(all.len(), 1, "{all:#?}");
    let d = &a["details"];
    assert_eq!(d["mismatch"], "blob_digest", "{a:#}");
    assert_eq!(d["expected_digest"], built.config_digest.as_str(), "{a:#}");
    assert_eq!(d["found_digest"], found.as_str(), "{a:#}");
    assert_eq!(d["size"], content.len().to_string().as_str(), "{a:#}");
    let c = &a["containerd"];
    assert_eq!(c["blob_digest"], built.config_digest.as_str(), "{a:#}");
    assert_eq!(c["blob_role"], "config", "{a:#}");
    assert!(
        c["images"]
            .as_array()
            .is_some_and(|i| i.iter().any(|i| i == name)),
        "{a:#}"
    );
    assert!(
        a["process"]["exe"]
            .as_str()
            .is_some_and(|e| e.contains("python")),
        "{a:#}"
    );
    assert!(
        a["command"].as_str().is_some_and(
            |c| c.starts_with(&format!("ctrwatch history {} --since ", target.display()))
        ),
        "{a:#}"
    );
    assert!(
        a["summary"]
            .as_str()
            .is_some_and(|s| s.contains(&built.config_digest) && s.contains(&found)),
        "{a:#}"
    );
    cd.stop().expect("containerd stop");
    let _ = std::fs::remove_dir_all(dir);
}

/// A writer that touches a blob every half second and does not stop: its check must still
/// come (the first version postponed it by the settle delay at each write, for as long as the
/// writes went on). The writer runs longer than the wait for the alert.
#[test]
fn a_writer_that_keeps_touching_a_blob_is_still_checked() {
    tests::require_root();
    let dir = temp_dir("mismatch-busy");
    let cd = Containerd::start().expect("containerd");
    let r = Receiver::start(Mode::Accept);
    let (daemon, store) = start_daemon(&cd, &dir, &r);
    let name = "test.local/ctrwatch/mismatch-busy:1";
    let built = image(&cd, name, "busy");
    cd.import(&built.archive, NS).expect("import");
    let hex = built.config_digest.strip_prefix("sha256:").expect("sha256");
    let target = cd.content_dir().join("blobs/sha256").join(hex);
    wait_history(&store, &target, "rename");

    // Writes every 0.5 s for 4 minutes (longer than the 90 s wait below), unless killed.
    let mut writer = KillOnDrop(
        Command::new("python3")
            .args([
                OsStr::new("-c"),
                OsStr::new(
                    "import sys, time\n\
                     for i in range(480):\n    \
                     with open(sys.argv[1], 'r+b') as f: f.write(b'XXXX')\n    \
                     time.sleep(0.5)",
                ),
                target.as_os_str(),
            ])
            .spawn()
            .expect("writer"),
    );
    let started = Instant::now();
    let a = wait_mismatch(&r, "the busy writer's blob", |b| about(b, &target));
    let still_writing = writer.running();
    eprintln!(
        "the alert came {:.1} s after the writer started (still writing: {still_writing})",
        started.elapsed().as_secs_f64()
    );
    drop(writer);
    assert!(still_writing, "the writer ended before the alert came");
    drop(daemon);
    assert_eq!(a["details"]["mismatch"], "blob_digest", "{a:#}");
    assert_eq!(
        a["details"]["expected_digest"],
        built.config_digest.as_str(),
        "{a:#}"
    );
    assert!(a["count"].as_u64().is_some_and(|n| n >= 2), "{a:#}");
    cd.stop().expect("containerd stop");
    let _ = std::fs::remove_dir_all(dir);
}

/// A stop while many blob checks are pending ends within a bound and names in the log what
/// it did not check. 16 sparse 1 GiB files planted in `blobs/sha256` (truncated: each is a
/// pending check, hashing them all takes minutes in a debug build); the first version of the
/// worker hashed every pending blob at the stop, with no limit, longer than the unit's
/// `TimeoutStopSec` (60 s).
#[test]
fn a_stop_with_many_checks_pending_is_bounded_and_names_what_it_skipped() {
    tests::require_root();
    let dir = temp_dir("mismatch-stop");
    let cd = Containerd::start().expect("containerd");
    let r = Receiver::start(Mode::Accept);
    let (mut daemon, store) = start_daemon(&cd, &dir, &r);
    let sha256 = cd.content_dir().join("blobs/sha256");
    std::fs::create_dir_all(&sha256).expect("blobs/sha256");
    let planted: Vec<PathBuf> = (0..16u64)
        .map(|i| sha256.join(format!("{:064x}", 0x00c0_ffee_0000 + i)))
        .collect();
    for p in &planted {
        let f = std::fs::File::create(p).expect("plant");
        f.set_len(1 << 30).expect("truncate");
    }
    for p in &planted {
        wait_history(&store, p, "truncate");
    }
    let stopping = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(60));
    let took = stopping.elapsed();
    if status.is_none() {
        daemon.signal(libc::SIGKILL);
    }
    let _ = daemon.wait_exit(Duration::from_secs(10));
    let stderr = daemon.stderr();
    for p in &planted {
        let _ = std::fs::remove_file(p);
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "no clean stop within 60 s ({status:?}, {took:?}); stderr:\n{stderr}"
    );
    eprintln!("the stop took {took:?}");
    assert!(took < Duration::from_secs(20), "the stop took {took:?}");
    let line = stderr
        .lines()
        .find(|l| l.contains("metadata-mismatch: stopping:"))
        .unwrap_or_else(|| panic!("no line naming what was not checked; stderr:\n{stderr}"));
    assert!(
        line.contains("not checked: metadata-mismatch blob "),
        "{line}"
    );
    drop(daemon);
    cd.stop().expect("containerd stop");
    let _ = std::fs::remove_dir_all(dir);
}

/// A child process (the test's own) killed when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
