//! Store tests: schema, round trip, queries, gaps, retention, runs, concurrency, crash
//! safety (a child process killed with SIGKILL) and a full disk (a small tmpfs).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use ctrwatch_event::time::ns_system_time;
use ctrwatch_event::{
    AncestorView, ContainerdView, Details, Dev, FileEvent, Gap, GapKind, LossEvent, LossKind, Mode,
    Notes, Op, OpResult, OpenFlags, Overwritten, PathBytes, ProcessView, SnapshotKind, StorageKind,
    Verdict, Xattr, hex,
};

use super::codec::format_time;
use super::*;

const T0: i64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z
const BOOT: i64 = T0 - 3_600_000_000_000;
const SEC: i64 = 1_000_000_000;
const OV: &str = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ctrwatch-store-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("tempdir");
        TempDir(p)
    }
    fn db(&self) -> PathBuf {
        self.0.join("events.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn at(ns: i64) -> SystemTime {
    ns_system_time(ns)
}

fn process(pid: u32, comm: &str) -> ProcessView {
    ProcessView {
        pid,
        tid: pid,
        ppid: 100,
        comm: comm.into(),
        exe: Some(format!("/usr/bin/{comm}")),
        cmdline: vec![format!("/usr/bin/{comm}"), "-x".into()],
        uid: 0,
        gid: 0,
        unit: Some(if comm == "kubelet" {
            "kubelet.service".into()
        } else {
            "containerd.service".into()
        }),
        container_id: None,
        cgroup_id: 77,
        mnt_ns: 4_026_531_841,
        ancestors: vec![
            AncestorView {
                pid: 100,
                comm: "containerd".into(),
                exe: Some("/usr/bin/containerd".into()),
            },
            AncestorView {
                pid: 1,
                comm: "systemd".into(),
                exe: None,
            },
        ],
    }
}

fn ev(t: i64, op: Op, path: &str) -> FileEvent {
    FileEvent {
        time_ns: t,
        mono_ns: (t - BOOT) as u64,
        op,
        path: PathBytes(path.as_bytes().to_vec()),
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

/// The event of an answer: history and query answers are events, who-deleted answers carry
/// one.
trait Answered {
    fn event(&self) -> &FileEvent;
}

impl Answered for FileEvent {
    fn event(&self) -> &FileEvent {
        self
    }
}

impl Answered for Deletion {
    fn event(&self) -> &FileEvent {
        &self.event
    }
}

fn opts_no_retention() -> StoreOptions {
    StoreOptions {
        retention_age: None,
        retention_bytes: None,
        ..Default::default()
    }
}

fn json(v: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).expect("json")
}

fn paths<T: Answered>(events: &[T]) -> Vec<String> {
    events.iter().map(|e| e.event().path.display()).collect()
}

// ---------------------------------------------------------------------------------------------
// Schema and opening

#[test]
fn creates_schema_and_reopens() {
    let dir = TempDir::new("schema");
    let store = Store::open(dir.db(), StoreOptions::default()).expect("open");
    let st = store.stats().expect("stats");
    assert_eq!(st.schema_version, SCHEMA_VERSION);
    assert_eq!(st.events, 0);
    drop(store);
    let store = Store::open(dir.db(), StoreOptions::default()).expect("reopen");
    assert!(store.is_writer());
    drop(store);
    let r = Store::open_read_only(dir.db()).expect("reader");
    assert!(!r.is_writer());
    let app: i32 = r
        .conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .expect("app id");
    assert_eq!(app, schema::APPLICATION_ID);
    let mode: String = r
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
    let av: i64 = r
        .conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .expect("auto_vacuum");
    assert_eq!(av, 2, "incremental");
}

#[test]
fn newer_schema_is_refused() {
    let dir = TempDir::new("newer");
    drop(Store::open(dir.db(), StoreOptions::default()).expect("open"));
    let c = rusqlite::Connection::open(dir.db()).expect("raw");
    c.execute_batch("PRAGMA user_version = 99").expect("bump");
    drop(c);
    match Store::open(dir.db(), StoreOptions::default()) {
        Err(StoreError::NewerSchema { found: 99, .. }) => {}
        other => panic!("writer: {other:?}"),
    }
    match Store::open_read_only(dir.db()) {
        Err(StoreError::NewerSchema { found: 99, .. }) => {}
        other => panic!("reader: {other:?}"),
    }
}

#[test]
fn older_schema_is_migrated_by_the_writer() {
    let dir = TempDir::new("older");
    // A store at version 0: marked as ctrwatch's, nothing created yet.
    let c = rusqlite::Connection::open(dir.db()).expect("raw");
    c.execute_batch(&format!(
        "PRAGMA application_id = {}; CREATE TABLE scratch (x);",
        schema::APPLICATION_ID
    ))
    .expect("v0");
    drop(c);
    match Store::open_read_only(dir.db()) {
        Err(StoreError::OlderSchema { found: 0, .. }) => {}
        other => panic!("reader: {other:?}"),
    }
    let mut w = Store::open(dir.db(), opts_no_retention()).expect("migrate");
    w.begin_run(at(T0)).expect("run");
    w.append_event(&ev(T0, Op::Unlink, "/a/b")).expect("append");
    w.flush().expect("flush");
    let r = Store::open_read_only(dir.db()).expect("reader after migration");
    assert_eq!(r.stats().expect("stats").schema_version, SCHEMA_VERSION);
}

/// A version-1 store as the previous release wrote it (its schema SQL, rows as its writer
/// stored them), migrated by this writer: old events keep answering, new ones join them.
#[test]
fn version_1_store_is_migrated_with_its_events() {
    let dir = TempDir::new("v1");
    let c = rusqlite::Connection::open(dir.db()).expect("raw");
    c.execute_batch(&format!(
        "PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL; {} \
         PRAGMA application_id = {}; PRAGMA user_version = 1;",
        schema::V1,
        schema::APPLICATION_ID
    ))
    .expect("v1 schema");
    c.execute_batch(&format!(
        "INSERT INTO atoms (id, kind, text) VALUES (2, 0, 'create'), (3, 0, 'unlink'), \
             (4, 0, 'rename');
         INSERT INTO dirs (id, path, inner) VALUES (1, X'{}', NULL);
         INSERT INTO names (id, dir, name) VALUES (1, 1, X'{}'), (2, 1, X'{}');
         INSERT INTO procs (id, hash, pid, tid, ppid, comm, exe, cmdline, uid, gid, unit, \
             container, cgroup_id, mnt_ns, ancestors, clock_off, last_seen) \
             VALUES (1, 7, 4242, 4242, 1, 'rm', '/usr/bin/rm', '[\"rm\",\"f.txt\"]', 0, 0, \
             NULL, NULL, 0, 4026531840, '[]', {BOOT}, {t2});
         INSERT INTO events (id, path, op, proc, result, adj, mono_d, errno, new_path, inode, \
             dev, details) VALUES \
             ({t0}, 1, 2, 1, 1, 0, 0, NULL, NULL, NULL, NULL, NULL), \
             ({t1}, 2, 4, 1, 1, 0, 0, NULL, 1, NULL, NULL, NULL), \
             ({t2}, 1, 3, 1, 1, 0, 0, NULL, NULL, NULL, NULL, NULL);
         UPDATE meta SET value = 3 WHERE key = 'events';",
        hex(b"/var/lib/x"),
        hex(b"f.txt"),
        hex(b"g.txt"),
        t0 = T0,
        t1 = T0 + SEC,
        t2 = T0 + 2 * SEC,
    ))
    .expect("v1 rows");
    drop(c);
    match Store::open_read_only(dir.db()) {
        Err(StoreError::OlderSchema { found: 1, .. }) => {}
        other => panic!("reader of a v1 store: {other:?}"),
    }
    // One event per segment from now on: the old events (segment 0) and each new one are
    // in different segments.
    let opts = StoreOptions {
        segment_events: 1,
        ..opts_no_retention()
    };
    let mut w = Store::open(dir.db(), opts).expect("migrate v1");
    w.begin_run(at(T0 + 10 * SEC)).expect("run");
    let mut e = ev(T0 + 11 * SEC, Op::Create, "/var/lib/x/f.txt");
    e.mono_ns = (T0 + 11 * SEC - BOOT) as u64;
    w.append_event(&e).expect("append");
    w.append_event(&ev(T0 + 12 * SEC, Op::Unlink, "/var/lib/x/f.txt"))
        .expect("append");
    w.flush().expect("flush");
    let r = Store::open_read_only(dir.db()).expect("reader after migration");
    let st = r.stats().expect("stats");
    assert_eq!(st.schema_version, SCHEMA_VERSION);
    assert_eq!(st.events, 5);
    let segs: Vec<(i64, i64)> = {
        let c = rusqlite::Connection::open(dir.db()).expect("raw");
        let mut s = c
            .prepare("SELECT seg, events FROM segments ORDER BY seg")
            .expect("segments");
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("segments")
    };
    assert_eq!(
        segs.first(),
        Some(&(0, 3)),
        "v1 events are segment 0: {segs:?}"
    );
    assert!(segs.len() >= 3, "{segs:?}");
    let h = r
        .history(&PathQuery::new("/var/lib/x/f.txt"))
        .expect("history");
    let got: Vec<(&str, i64)> = h.iter().map(|e| (e.op.name(), e.time_ns)).collect();
    assert_eq!(
        got,
        vec![
            ("unlink", T0 + 12 * SEC),
            ("create", T0 + 11 * SEC),
            ("unlink", T0 + 2 * SEC),
            ("rename", T0 + SEC),
            ("create", T0),
        ]
    );
    // The v1 row reads back whole: process from the old procs row, mono_ns from clock_off.
    let old = &h[4];
    assert_eq!(old.process.comm, "rm");
    assert_eq!(old.process.cmdline, vec!["rm", "f.txt"]);
    assert_eq!(old.mono_ns, (T0 - BOOT) as u64);
    let d = r
        .who_deleted(&PathQuery::new("/var/lib/x/f.txt"), DeleteOptions::new())
        .expect("who-deleted");
    let kinds: Vec<_> = d.iter().map(|e| e.deletion.name()).collect();
    assert_eq!(kinds, vec!["unlink", "unlink", "rename_onto"]);
    assert_eq!(w.integrity_check().expect("check"), vec!["ok"]);
}

#[test]
fn missing_corrupt_foreign_and_locked_are_distinct() {
    let dir = TempDir::new("errors");
    match Store::open_read_only(dir.0.join("nope.db")) {
        Err(StoreError::Missing { .. }) => {}
        other => panic!("missing: {other:?}"),
    }
    let garbage = dir.0.join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 8192]).expect("write");
    match Store::open_read_only(&garbage) {
        Err(StoreError::Corrupt { .. }) => {}
        other => panic!("garbage reader: {other:?}"),
    }
    match Store::open(&garbage, StoreOptions::default()) {
        Err(StoreError::Corrupt { .. }) => {}
        other => panic!("garbage writer: {other:?}"),
    }
    let foreign = dir.0.join("foreign.db");
    let c = rusqlite::Connection::open(&foreign).expect("raw");
    c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .expect("foreign");
    drop(c);
    match Store::open_read_only(&foreign) {
        Err(StoreError::Corrupt { detail, .. }) => assert!(detail.contains("not a ctrwatch")),
        other => panic!("foreign reader: {other:?}"),
    }
    match Store::open(&foreign, StoreOptions::default()) {
        Err(StoreError::Corrupt { .. }) => {}
        other => panic!("foreign writer: {other:?}"),
    }
    let _w = Store::open(dir.db(), StoreOptions::default()).expect("first writer");
    let no_wait = StoreOptions {
        lock_wait: Duration::ZERO,
        ..StoreOptions::default()
    };
    match Store::open(dir.db(), no_wait) {
        Err(StoreError::Locked { .. }) => {}
        other => panic!("second writer: {other:?}"),
    }
    // Readers are fine beside the writer.
    Store::open_read_only(dir.db()).expect("reader beside writer");
    let mut r = Store::open_read_only(dir.db()).expect("reader");
    match r.append_event(&ev(T0, Op::Unlink, "/x")) {
        Err(StoreError::ReadOnly { .. }) => {}
        other => panic!("write on reader: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Round trip

fn full_event() -> FileEvent {
    let path = b"/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/9/fs/bad\xff\xfename".to_vec();
    let new_path = b"/var/lib/containerd/tmp/\x01ctl\xc3".to_vec();
    let t = T0 + 123_456_789;
    let mut p = process(31337, "containerd-shim");
    p.tid = 31340;
    p.uid = 1000;
    p.gid = 1001;
    p.container_id = Some("ab".repeat(32));
    p.cmdline = vec![
        "shim".into(),
        "--id".into(),
        "with space \\ and \\x00".into(),
    ];
    FileEvent {
        time_ns: t,
        mono_ns: (t - BOOT) as u64,
        op: Op::Rename,
        path: PathBytes(path),
        new_path: Some(PathBytes(new_path)),
        result: OpResult::Err(libc::EXDEV),
        inode: Some(u64::MAX - 5),
        dev: Some(Dev::new(253, 1)),
        process: Arc::new(p),
        details: Details {
            mode: Some(Mode(0o640)),
            size: Some(4096),
            offset: Some(512),
            bytes: Some(1 << 33),
            writes: Some(9),
            first_write_ns: Some(t - 5 * SEC),
            xattr: Some(Xattr {
                name: b"trusted.overlay.opaque".to_vec(),
                value: Some(b"y\0".to_vec()),
            }),
            owner_uid: Some(0),
            owner_gid: Some(4_294_967_294),
            rdev: Some(Dev::new(0, 0)),
            whiteout: Some(true),
            overwritten: None,
            open_flags: OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            notes: Notes::BY_FD | Notes::NOT_CLOSED,
            protect: Some(ctrwatch_event::Protect::Denied),
            containerd: Some(Box::new(ContainerdView {
                root: path_bytes("/var/lib/containerd"),
                kind: StorageKind::Snapshot,
                namespace: Some("k8s.io".into()),
                snapshotter: Some("overlayfs".into()),
                snapshot_id: Some(9),
                snapshot_key: Some("sha256:abc".into()),
                snapshot_kind: Some(SnapshotKind::Committed),
                layer_digest: Some(format!("sha256:{}", "1".repeat(64))),
                chain_id: Some(format!("sha256:{}", "2".repeat(64))),
                images: vec!["registry.k8s.io/pause:3.10".into()],
                path: Some(PathBytes(b"/bad\xff\xfename".to_vec())),
                verdict: Verdict::Foreign,
                reason: "not containerd".into(),
                ..Default::default()
            })),
        },
    }
}

/// One event of every op with the details the enricher gives that op, and those that only
/// some of its events have (failed, by fd, truncated paths, a replaced target), each at its
/// own time and path under `root`.
fn every_op_events(root: &str, t0: i64) -> Vec<FileEvent> {
    let mut out = Vec::new();
    for (i, op) in Op::ALL.into_iter().enumerate() {
        let t = t0 + i as i64 * SEC;
        let mut e = ev(t, op, &format!("{root}/{}", op.name()));
        let d = &mut e.details;
        match op {
            Op::OpenWrite | Op::Create | Op::Truncate => {
                e.inode = Some(1000 + i as u64);
                e.dev = Some(Dev::new(254, 1));
                d.size = Some(if op == Op::Truncate { 0 } else { 17 });
                d.open_flags = match op {
                    Op::OpenWrite => OpenFlags::WRITE | OpenFlags::APPEND,
                    Op::Create => OpenFlags::WRITE | OpenFlags::CREATE,
                    _ => OpenFlags::WRITE | OpenFlags::TRUNCATE,
                };
                if op == Op::Create {
                    d.mode = Some(Mode(0o644));
                }
            }
            Op::Modify => {
                e.inode = Some(77);
                e.dev = Some(Dev::new(8, 17));
                d.bytes = Some(5);
                d.writes = Some(2);
                d.size = Some(9);
                d.first_write_ns = Some(t - 3 * SEC);
                d.notes = Notes::BY_FD | Notes::NOT_CLOSED;
            }
            Op::Fallocate => {
                d.size = Some(1 << 20);
                d.offset = Some(4096);
                d.notes = Notes::BY_FD;
            }
            Op::Unlink => e.result = OpResult::Err(libc::ENOENT),
            Op::Rmdir => e.result = OpResult::Err(libc::ENOTEMPTY),
            Op::Rename => {
                e.new_path = Some(path_bytes(&format!("{root}/renamed")));
                d.overwritten = Some(Overwritten {
                    inode: 4242,
                    dev: Dev::new(254, 1),
                });
            }
            Op::Link => {
                e.new_path = Some(path_bytes(&format!("{root}/a/…/linked")));
                d.notes = Notes::NEW_PATH_TRUNCATED;
            }
            Op::Symlink => e.new_path = Some(path_bytes("../relative/target")),
            Op::Mknod => {
                d.mode = Some(Mode(0o000));
                d.rdev = Some(Dev::new(0, 0));
                d.whiteout = Some(true);
            }
            Op::Mkdir => {
                d.mode = Some(Mode(0o1777));
                e.result = OpResult::Err(4095);
            }
            Op::Setxattr => {
                d.size = Some(300);
                d.xattr = Some(Xattr {
                    name: b"user.overlay.redirect".to_vec(),
                    value: Some(vec![b'x'; 256]),
                });
                d.notes = Notes::VALUE_TRUNCATED;
            }
            Op::Removexattr => {
                d.xattr = Some(Xattr {
                    name: b"security.capability".to_vec(),
                    value: None,
                });
                d.notes = Notes::BY_FD;
            }
            Op::Chmod => d.mode = Some(Mode(0o4755)),
            Op::Chown => {
                d.owner_uid = Some(0);
                d.owner_gid = None;
                e.path = path_bytes(&format!("{root}/…/chown"));
                d.notes = Notes::PATH_TRUNCATED;
            }
        }
        out.push(e);
    }
    out
}

/// What is stored is what is read back: every op with its details, every field set,
/// non-UTF-8 paths, a containerd object with a derived, an explicit and no path, two events in
/// one nanosecond.
#[test]
fn events_round_trip_equal() {
    let dir = TempDir::new("roundtrip");
    let mut w = Store::open(dir.db(), opts_no_retention()).expect("open");
    w.begin_run(at(T0)).expect("run");
    let full = full_event();
    let mut plain = ev(T0 + SEC, Op::Unlink, "/var/lib/containerd/plain");
    let mut exe_less = ev(T0 + 2 * SEC, Op::Mkdir, "/r/dir");
    Arc::make_mut(&mut exe_less.process).exe = None;
    Arc::make_mut(&mut exe_less.process).unit = None;
    Arc::make_mut(&mut exe_less.process).cmdline.clear();
    Arc::make_mut(&mut exe_less.process).ancestors.clear();
    exe_less.details.mode = Some(Mode(0o755));
    // Same nanosecond as `plain`: both kept, both exact. A containerd object whose path is
    // not the inner path (stored as is), and one without a path.
    let mut twin = ev(T0 + SEC, Op::Unlink, "/var/lib/containerd/twin");
    twin.details.containerd = Some(Box::new(ContainerdView {
        root: path_bytes("/var/lib/containerd"),
        kind: StorageKind::Ingest,
        ingest_ref: Some("default/1/layer-sha256:x".into()),
        path: Some(path_bytes("/data")),
        stale: true,
        verdict: Verdict::Owner,
        reason: "containerd".into(),
        ..Default::default()
    }));
    plain.details.containerd = Some(Box::new(ContainerdView {
        root: path_bytes("/var/lib/containerd"),
        kind: StorageKind::Other,
        verdict: Verdict::Owner,
        reason: "containerd".into(),
        ..Default::default()
    }));
    let mut written = vec![full, plain, exe_less, twin];
    written.extend(every_op_events("/var/lib/containerd/ops", T0 + 10 * SEC));
    for e in &written {
        w.append_event(e).expect("append");
    }
    assert_eq!(w.flush().expect("flush"), written.len());
    let r = Store::open_read_only(dir.db()).expect("reader");
    let all = r.query(&Filter::default()).expect("query");
    assert_eq!(all.len(), written.len());
    for orig in &written {
        let stored = all
            .iter()
            .find(|e| e.path == orig.path)
            .unwrap_or_else(|| panic!("{} not stored", orig.path.display()));
        assert_eq!(stored, orig, "{}", orig.path.display());
        // And so is its JSON.
        assert_eq!(json(stored), json(orig), "{}", orig.path.display());
    }
    // Events of one process row share its description, as the enricher's do.
    let by_rm: Vec<&FileEvent> = all
        .iter()
        .filter(|e| e.process.pid == 4242 && e.process.exe.is_some())
        .collect();
    assert!(
        by_rm.len() > 2
            && by_rm
                .windows(2)
                .all(|w| Arc::ptr_eq(&w[0].process, &w[1].process))
    );
    // Newest first.
    assert_eq!(all[0].op, Op::ALL[Op::ALL.len() - 1]);
}

// ---------------------------------------------------------------------------------------------
// Damaged rows (schema v3 checksums)

/// A store holding `full_event()` (every field, a containerd object, non-UTF-8 paths) and
/// plain events of two other processes; returns the events appended, oldest first.
fn damage_store(dir: &TempDir) -> Vec<FileEvent> {
    let mut w = Store::open(dir.db(), opts_no_retention()).expect("open");
    w.begin_run(at(T0)).expect("run");
    let full = full_event();
    let mut other = ev(T0 + SEC, Op::Unlink, "/var/lib/containerd/other");
    other.process = Arc::new(process(600, "kubelet"));
    let mut third = ev(T0 + 2 * SEC, Op::Create, "/var/lib/containerd/third");
    third.details.mode = Some(Mode(0o600));
    third.inode = Some(77);
    third.dev = Some(Dev::new(8, 1));
    let events = vec![full, other, third];
    for e in &events {
        w.append_event(e).expect("append");
    }
    w.flush().expect("flush");
    events
}

/// Damages a copy of the store with `damage` (a silent change of stored values, as a flipped
/// bit makes it) and returns a reader of it and its answer to "every event".
fn damaged(
    dir: &TempDir,
    tag: &str,
    damage: &dyn Fn(&rusqlite::Connection) -> rusqlite::Result<()>,
) -> (Store, Answer<FileEvent>) {
    let copy_dir = dir.0.join(tag);
    std::fs::create_dir_all(&copy_dir).expect("mkdir");
    let copy = copy_dir.join("events.db");
    let c = rusqlite::Connection::open(dir.db()).expect("raw");
    c.execute_batch(&format!("VACUUM INTO '{}'", copy.display()))
        .expect("copy");
    drop(c);
    let c = rusqlite::Connection::open(&copy).expect("raw copy");
    damage(&c).unwrap_or_else(|e| panic!("{tag}: {e}"));
    drop(c);
    let r = Store::open_read_only(&copy).expect("reader");
    let answer = r.query_partial(&Filter::default()).expect("query_partial");
    (r, answer)
}

type Damage = Box<dyn Fn(&rusqlite::Connection) -> rusqlite::Result<()>>;

fn sql(s: String) -> Damage {
    Box::new(move |c| c.execute_batch(&s))
}

#[test]
fn every_part_of_an_answer_is_covered_by_the_row_checksum() {
    let dir = TempDir::new("damage");
    let events = damage_store(&dir);
    let full = events[0].path.0.clone();
    let full_id = T0 + 123_456_789;
    let third = b"/var/lib/containerd/third".to_vec();
    // (what is damaged, how, the event that becomes unreadable (its path), whether history
    // of that path still finds the row)
    let cases: Vec<(&str, Damage, &[u8], bool)> =
        vec![
        (
            "process tid",
            sql("UPDATE procs SET tid = (tid | 1) - (tid & 1) WHERE pid = 31337".into()),
            &full,
            true,
        ),
        (
            "process cmdline",
            sql("UPDATE procs SET cmdline = '[\"shim\",\"--id\",\"x\"]' WHERE pid = 31337".into()),
            &full,
            true,
        ),
        (
            "process ancestors",
            sql("UPDATE procs SET ancestors = '[]' WHERE pid = 31337".into()),
            &full,
            true,
        ),
        (
            "process clock offset (mono_ns)",
            sql("UPDATE procs SET clock_off = clock_off + 1 WHERE pid = 31337".into()),
            &full,
            true,
        ),
        (
            "a missing process",
            sql("DELETE FROM procs WHERE pid = 31337".into()),
            &full,
            true,
        ),
        (
            "path name bytes",
            sql("UPDATE names SET name = CAST('thirb' AS BLOB) WHERE name = CAST('third' AS BLOB)"
                .into()),
            &third,
            false,
        ),
        (
            "directory bytes (of the new path)",
            sql("UPDATE dirs SET path = CAST('/var/lib/tmp' AS BLOB) \
                 WHERE path = CAST('/var/lib/containerd/tmp' AS BLOB)"
                .into()),
            &full,
            true,
        ),
        (
            "op atom text",
            sql("UPDATE atoms SET text = 'rmdir' WHERE kind = 0 AND text = 'rename'".into()),
            &full,
            true,
        ),
        (
            "details atom text (open flag)",
            sql("UPDATE atoms SET text = 'append' WHERE kind = 5 AND text = 'create'".into()),
            &full,
            true,
        ),
        (
            "containerd object",
            sql("UPDATE atoms SET text = replace(text, 'foreign', 'owner') WHERE kind = 7".into()),
            &full,
            true,
        ),
        (
            "event inode",
            sql("UPDATE events SET inode = 78 WHERE inode = 77".into()),
            &third,
            true,
        ),
        (
            "event errno",
            sql(format!("UPDATE events SET errno = 19 WHERE id = {full_id}")),
            &full,
            true,
        ),
        (
            "event time (adj)",
            sql(format!("UPDATE events SET adj = 1 WHERE id = {full_id}")),
            &full,
            true,
        ),
        (
            "event mono_d",
            sql(format!("UPDATE events SET mono_d = 1 WHERE id = {full_id}")),
            &full,
            true,
        ),
        (
            "event segment",
            sql(format!("UPDATE events SET seg = seg + 1 WHERE id = {full_id}")),
            &full,
            false,
        ),
        (
            "a column's type",
            sql("UPDATE events SET dev = 'x' WHERE inode = 77".into()),
            &third,
            true,
        ),
        (
            "the checksum",
            sql("UPDATE events SET checksum = checksum + 1 WHERE inode = 77".into()),
            &third,
            true,
        ),
        (
            "the checksum gone",
            sql("UPDATE events SET checksum = NULL WHERE inode = 77".into()),
            &third,
            true,
        ),
        (
            "details truncated",
            sql(format!(
                "UPDATE events SET details = substr(details, 1, length(details) - 1) \
                 WHERE id = {full_id}"
            )),
            &full,
            true,
        ),
    ];
    // And every single bit of the full event's details blob flipped in turn.
    let blob: Vec<u8> = {
        let c = rusqlite::Connection::open(dir.db()).expect("raw");
        c.query_row(
            &format!("SELECT details FROM events WHERE id = {full_id}"),
            [],
            |r| r.get(0),
        )
        .expect("details")
    };
    let mut cases = cases;
    for bit in 0..blob.len() * 8 {
        let mut b = blob.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        cases.push((
            "a details bit",
            Box::new(move |c| {
                c.execute(
                    &format!("UPDATE events SET details = ?1 WHERE id = {full_id}"),
                    [&b],
                )
                .map(|_| ())
            }),
            &full,
            true,
        ));
    }
    for (i, (what, damage, victim, history_finds)) in cases.iter().enumerate() {
        let (r, answer) = damaged(&dir, &format!("case{i}"), damage.as_ref());
        assert_eq!(
            answer.unreadable.count, 1,
            "{what} ({i}): {:?}",
            answer.unreadable
        );
        assert_eq!(answer.found.len(), events.len() - 1, "{what}");
        assert!(
            answer.found.iter().all(|e| e.path.0 != *victim),
            "{what}: the damaged event was answered"
        );
        assert_eq!(answer.unreadable.rows[0].table, "events", "{what}");
        // The other events are exactly as stored.
        for e in &answer.found {
            let orig = events
                .iter()
                .find(|o| o.path.0 == e.path.0)
                .unwrap_or_else(|| panic!("{what}: unknown event"));
            assert_eq!(e, orig, "{what}");
        }
        // The strict API refuses rather than answering part of it.
        match r.query(&Filter::default()) {
            Err(StoreError::Corrupt { detail, .. }) => {
                assert!(
                    detail.contains("1 unreadable row skipped"),
                    "{what}: {detail}"
                )
            }
            other => panic!("{what}: strict query gave {other:?}"),
        }
        if *history_finds {
            // history reads rows by id: the same verdict.
            let h = r
                .history_partial(&PathQuery::new(victim))
                .expect("history_partial");
            assert_eq!(h.unreadable.count, 1, "{what}: history");
            assert!(h.found.is_empty(), "{what}: history answered {:?}", h.found);
        }
        drop(r);
        let _ = std::fs::remove_dir_all(dir.0.join(format!("case{i}")));
    }
}

#[test]
fn a_changed_tid_is_never_answered_by_the_strict_api() {
    let dir = TempDir::new("tid");
    damage_store(&dir);
    let c = rusqlite::Connection::open(dir.db()).expect("raw");
    c.execute_batch("UPDATE procs SET tid = 31341 WHERE tid = 31340")
        .expect("flip");
    drop(c);
    let r = Store::open_read_only(dir.db()).expect("reader");
    match r.query(&Filter::default()) {
        Err(StoreError::Corrupt { .. }) => {}
        Ok(events) => panic!(
            "answered: tids {:?}",
            events.iter().map(|e| e.process.tid).collect::<Vec<_>>()
        ),
        Err(e) => panic!("{e}"),
    }
    match r.history(&PathQuery::new(&full_event().path.0)) {
        Err(StoreError::Corrupt { .. }) => {}
        other => panic!("history: {other:?}"),
    }
}

#[test]
fn an_undecodable_gap_is_skipped_and_counted() {
    let dir = TempDir::new("gaprow");
    let mut w = Store::open(dir.db(), opts_no_retention()).expect("open");
    w.begin_run(at(T0)).expect("run");
    for k in 0..3 {
        w.append_loss(&LossEvent {
            time_ns: T0 + (k + 1) * SEC,
            from_ns: T0 + k * SEC,
            to_ns: T0 + (k + 1) * SEC,
            lost: 5,
            kinds: BTreeMap::from([(LossKind::Op(Op::Unlink), 5)]),
        })
        .expect("loss");
    }
    w.flush().expect("flush");
    drop(w);
    let c = rusqlite::Connection::open(dir.db()).expect("raw");
    c.execute_batch(&format!(
        "UPDATE gaps SET kinds = '{{\"unlink\": 5' WHERE from_ns = {}",
        T0 + SEC
    ))
    .expect("damage");
    drop(c);
    let r = Store::open_read_only(dir.db()).expect("reader");
    let a = r.gaps_partial(None, None).expect("gaps_partial");
    assert_eq!(a.found.len(), 2);
    assert_eq!(a.unreadable.count, 1);
    assert_eq!(a.unreadable.rows[0].table, "gaps");
    match r.gaps(None, None) {
        Err(StoreError::Corrupt { .. }) => {}
        other => panic!("strict gaps: {other:?}"),
    }
}

#[test]
fn new_store_has_16_kib_pages() {
    let dir = TempDir::new("pages");
    drop(Store::open(dir.db(), StoreOptions::default()).expect("open"));
    let c = rusqlite::Connection::open(dir.db()).expect("raw");
    let size: i64 = c
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page_size");
    assert_eq!(size, 16 * 1024);
    let av: i64 = c
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .expect("auto_vacuum");
    assert_eq!(av, 2, "incremental");
}

/// A version-2 store as the previous release wrote it (4 KiB pages, rows without checksums),
/// migrated by this writer: its rows keep answering (not verified), rows written afterwards
/// carry checksums, and a later row that lost its checksum is not mistaken for an old one.
#[test]
fn version_2_store_is_migrated_and_its_rows_read_unverified() {
    let dir = TempDir::new("v2");
    let c = rusqlite::Connection::open(dir.db()).expect("raw");
    c.execute_batch(&format!(
        "PRAGMA page_size = 4096; PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL; \
         {} {} PRAGMA application_id = {}; PRAGMA user_version = 2;",
        schema::V1,
        schema::V2,
        schema::APPLICATION_ID
    ))
    .expect("v2 schema");
    c.execute_batch(&format!(
        "INSERT INTO atoms (id, kind, text) VALUES (2, 0, 'create'), (3, 0, 'unlink');
         INSERT INTO dirs (id, path, inner) VALUES (1, X'{}', NULL);
         INSERT INTO names (id, dir, name) VALUES (1, 1, X'{}');
         INSERT INTO procs (id, hash, pid, tid, ppid, comm, exe, cmdline, uid, gid, unit, \
             container, cgroup_id, mnt_ns, ancestors, clock_off, last_seen) \
             VALUES (1, 7, 4242, 4242, 1, 'rm', '/usr/bin/rm', '[\"rm\",\"f.txt\"]', 0, 0, \
             NULL, NULL, 0, 4026531840, '[]', {BOOT}, {t1});
         INSERT INTO events (id, path, op, proc, result, adj, mono_d, errno, new_path, inode, \
             dev, details, seg) VALUES \
             ({t0}, 1, 2, 1, 1, 0, 0, NULL, NULL, NULL, NULL, NULL, 0), \
             ({t1}, 1, 3, 1, 1, 0, 0, NULL, NULL, NULL, NULL, NULL, 0);
         INSERT INTO segments (seg, lo, hi, events) VALUES (0, {t0}, {t1}, 2);
         UPDATE meta SET value = 2 WHERE key = 'events';",
        hex(b"/var/lib/x"),
        hex(b"f.txt"),
        t0 = T0,
        t1 = T0 + SEC,
    ))
    .expect("v2 rows");
    drop(c);
    match Store::open_read_only(dir.db()) {
        Err(StoreError::OlderSchema { found: 2, .. }) => {}
        other => panic!("reader of a v2 store: {other:?}"),
    }
    let mut w = Store::open(dir.db(), opts_no_retention()).expect("migrate v2");
    w.begin_run(at(T0 + 10 * SEC)).expect("run");
    w.append_event(&ev(T0 + 11 * SEC, Op::Create, "/var/lib/x/f.txt"))
        .expect("append");
    w.append_event(&ev(T0 + 12 * SEC, Op::Unlink, "/var/lib/x/f.txt"))
        .expect("append");
    w.flush().expect("flush");
    drop(w);
    let r = Store::open_read_only(dir.db()).expect("reader after migration");
    assert_eq!(r.stats().expect("stats").schema_version, SCHEMA_VERSION);
    let raw = rusqlite::Connection::open(dir.db()).expect("raw");
    let page_size: i64 = raw
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page_size");
    assert_eq!(page_size, 4096, "an existing store keeps its page size");
    let boundary: i64 = raw
        .query_row(
            "SELECT value FROM meta WHERE key = 'unsummed_max_id'",
            [],
            |r| r.get(0),
        )
        .expect("boundary");
    assert_eq!(boundary, T0 + SEC, "the newest unverified row");
    let sums: Vec<(i64, Option<i64>)> = raw
        .prepare("SELECT id, checksum FROM events ORDER BY id")
        .expect("sums")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(sums.len(), 4);
    assert!(sums[..2].iter().all(|(_, s)| s.is_none()), "{sums:?}");
    assert!(sums[2..].iter().all(|(_, s)| s.is_some()), "{sums:?}");
    let h = r
        .history_partial(&PathQuery::new("/var/lib/x/f.txt"))
        .expect("history");
    assert_eq!(h.unreadable.count, 0);
    let got: Vec<(&str, i64, u32)> = h
        .found
        .iter()
        .map(|e| (e.op.name(), e.time_ns, e.process.pid))
        .collect();
    assert_eq!(
        got,
        vec![
            ("unlink", T0 + 12 * SEC, 4242),
            ("create", T0 + 11 * SEC, 4242),
            ("unlink", T0 + SEC, 4242),
            ("create", T0, 4242),
        ]
    );
    // A row written after the migration whose checksum is gone is damaged, not old.
    raw.execute_batch(&format!(
        "UPDATE events SET checksum = NULL WHERE id = {}",
        T0 + 12 * SEC
    ))
    .expect("damage");
    let h = r
        .history_partial(&PathQuery::new("/var/lib/x/f.txt"))
        .expect("history");
    assert_eq!(h.found.len(), 3);
    assert_eq!(h.unreadable.count, 1);
    assert_eq!(h.unreadable.rows[0].reason, "checksum missing");
    assert_eq!(r.integrity_check().expect("check"), vec!["ok"]);
}

#[test]
fn limits_of_zero_and_beyond_i64_are_no_sqlite_errors() {
    let dir = TempDir::new("limits");
    let w = seeded_store(&dir);
    let all = w.query(&Filter::default()).expect("all").len();
    for limit in [usize::MAX, (i64::MAX as usize) + 1, i64::MAX as usize] {
        let f = Filter {
            limit: Some(limit),
            ..Default::default()
        };
        assert_eq!(w.query(&f).expect("query").len(), all, "{limit}");
        let mut q = PathQuery::new("/pause");
        q.limit = Some(limit);
        assert!(!w.history(&q).expect("history").is_empty(), "{limit}");
        assert!(
            !w.who_deleted(&q, DeleteOptions::new())
                .expect("who_deleted")
                .is_empty(),
            "{limit}"
        );
    }
    let f = Filter {
        limit: Some(0),
        ..Default::default()
    };
    assert!(w.query(&f).expect("query").is_empty());
    let mut q = PathQuery::new("/pause");
    q.limit = Some(0);
    assert!(w.history(&q).expect("history").is_empty());
    assert!(
        w.who_deleted(&q, DeleteOptions::new())
            .expect("who_deleted")
            .is_empty()
    );
}

#[test]
fn bad_globs_in_string_filters_are_invalid_queries() {
    let dir = TempDir::new("sqlglob");
    let w = seeded_store(&dir);
    for f in [
        Filter {
            exe: Some("[".into()),
            ..Default::default()
        },
        Filter {
            comm: Some("rm[".into()),
            ..Default::default()
        },
        Filter {
            unit: Some("[^]".into()),
            ..Default::default()
        },
    ] {
        match w.query(&f) {
            Err(StoreError::InvalidQuery(m)) => assert!(m.contains("unclosed"), "{m}"),
            other => panic!("{f:?}: {other:?}"),
        }
    }
    // `]` first in a set is a member; `[[]` is a literal `[`.
    for ok in ["[]]", "[^]]x", "[[]", "*/r[a-z]", "plain"] {
        let f = Filter {
            exe: Some(ok.into()),
            ..Default::default()
        };
        assert!(w.query(&f).is_ok(), "{ok}");
    }
}

// ---------------------------------------------------------------------------------------------
// Queries

fn seeded_store(dir: &TempDir) -> Store {
    // Four events per segment: every query below runs over many segments.
    let opts = StoreOptions {
        segment_events: 4,
        ..opts_no_retention()
    };
    let mut w = Store::open(dir.db(), opts).expect("open");
    w.begin_run(at(T0)).expect("run");
    let mut t = T0;
    let mut push = |w: &mut Store, mut e: FileEvent| {
        t += SEC;
        e.time_ns = t;
        e.mono_ns = (t - BOOT) as u64;
        w.append_event(&e).expect("append");
    };
    // /pause in snapshots 1 and 2, libjq in snapshot 2, and a host file outside snapshots.
    let mut create = ev(0, Op::Create, &format!("{OV}/1/fs/pause"));
    create.process = Arc::new(process(500, "containerd"));
    create.details.mode = Some(Mode(0o755));
    push(&mut w, create);
    let mut create2 = ev(0, Op::Create, &format!("{OV}/2/fs/pause"));
    create2.process = Arc::new(process(500, "containerd"));
    push(&mut w, create2);
    let mut jq = ev(
        0,
        Op::Modify,
        &format!("{OV}/2/fs/usr/lib/x86_64-linux-gnu/libjq.so.1"),
    );
    jq.process = Arc::new(process(600, "tar"));
    jq.details.bytes = Some(10);
    push(&mut w, jq);
    let mut failed = ev(0, Op::Unlink, &format!("{OV}/2/fs/pause"));
    failed.result = OpResult::Err(libc::EACCES);
    failed.process = Arc::new(process(700, "kubelet"));
    push(&mut w, failed);
    push(&mut w, ev(0, Op::Unlink, &format!("{OV}/2/fs/pause"))); // 5: rm deletes it
    push(&mut w, ev(0, Op::Unlink, "/var/lib/containerd/tmp/pause")); // not in a snapshot
    let mut rename = ev(0, Op::Rename, &format!("{OV}/1/fs/pause"));
    rename.new_path = Some(path_bytes(&format!("{OV}/1/fs/pause.old")));
    push(&mut w, rename); // 7
    let mut onto = ev(0, Op::Rename, &format!("{OV}/1/fs/pause.new"));
    onto.new_path = Some(path_bytes(&format!("{OV}/1/fs/pause")));
    push(&mut w, onto); // 8
    let mut trunc = ev(
        0,
        Op::Truncate,
        &format!("{OV}/2/fs/usr/lib/x86_64-linux-gnu/libjq.so.1"),
    );
    trunc.details.size = Some(0);
    push(&mut w, trunc); // 9
    let mut wh = ev(0, Op::Mknod, &format!("{OV}/3/fs/pause"));
    wh.details.whiteout = Some(true);
    wh.details.rdev = Some(Dev::new(0, 0));
    push(&mut w, wh); // 10
    let mut opaque = ev(0, Op::Setxattr, &format!("{OV}/4/fs/usr/lib"));
    opaque.details.xattr = Some(Xattr {
        name: b"trusted.overlay.opaque".to_vec(),
        value: Some(b"y".to_vec()),
    });
    push(&mut w, opaque); // 11
    let mut snap_rm = ev(0, Op::Rename, &format!("{OV}/2"));
    snap_rm.new_path = Some(path_bytes(&format!("{OV}/rm-2")));
    snap_rm.process = Arc::new(process(500, "containerd"));
    push(&mut w, snap_rm); // 12
    let mut native = ev(
        0,
        Op::Unlink,
        "/var/lib/containerd/io.containerd.snapshotter.v1.native/snapshots/8/pause",
    );
    Arc::make_mut(&mut native.process).container_id = Some("0123456789abcdef".repeat(4));
    push(&mut w, native); // 13
    w.flush().expect("flush");
    w
}

#[test]
fn history_by_host_path_and_by_inner_path_across_snapshots() {
    let dir = TempDir::new("history");
    let _w = seeded_store(&dir);
    let r = Store::open_read_only(dir.db()).expect("reader");
    let p1 = format!("{OV}/1/fs/pause");
    let h = r.history(&PathQuery::new(&p1)).expect("history");
    let ops: Vec<&str> = h.iter().map(|e| e.op.name()).collect();
    assert_eq!(ops, ["rename", "rename", "create"], "{:?}", paths(&h));
    assert_eq!(
        h[0].new_path.as_ref().map(|p| p.display()),
        Some(p1.clone())
    ); // onto
    assert!(h.windows(2).all(|w| w[0].time_ns >= w[1].time_ns));
    let e = &h[2];
    assert_eq!(e.process.comm, "containerd");
    assert_eq!(e.process.unit.as_deref(), Some("containerd.service"));
    assert_eq!(e.process.ancestors.len(), 2);
    assert_eq!(e.process.cmdline, ["/usr/bin/containerd", "-x"]);

    // Inner path: every snapshot (overlayfs 1, 2, 3 and native 8), not the host tmp file.
    let h = r.history(&PathQuery::new("/pause")).expect("inner");
    assert_eq!(h.len(), 8, "{:?}", paths(&h));
    assert!(h.iter().all(|e| !e.path.display().contains("/tmp/")));
    assert!(
        h.iter()
            .any(|e| e.path.display().contains("v1.native/snapshots/8/pause"))
    );
    assert!(h.windows(2).all(|w| w[0].time_ns >= w[1].time_ns));
    // Host only / inner only.
    let mut q = PathQuery::new("/pause");
    q.matching = PathMatch::Host;
    assert!(r.history(&q).expect("host").is_empty());
    let h = r
        .history(&PathQuery::new("/usr/lib/x86_64-linux-gnu//libjq.so.1/"))
        .expect("jq");
    assert_eq!(h.len(), 2);
    // Limit and time window.
    let mut q = PathQuery::new("/pause");
    q.limit = Some(3);
    assert_eq!(r.history(&q).expect("limit").len(), 3);
    q.limit = None;
    q.since = Some(at(T0 + 4 * SEC));
    q.until = Some(at(T0 + 7 * SEC));
    let h = r.history(&q).expect("window");
    assert_eq!(h.len(), 3, "{:?}", paths(&h)); // events 4, 5, 7
    assert!(
        r.history(&PathQuery::new("/nope"))
            .expect("none")
            .is_empty()
    );
}

#[test]
fn who_deleted_finds_every_way_a_file_goes() {
    let dir = TempDir::new("deleted");
    let _w = seeded_store(&dir);
    let r = Store::open_read_only(dir.db()).expect("reader");
    let kinds = |v: &[Deletion]| -> Vec<String> {
        v.iter()
            .map(|e| format!("{}:{}", e.deletion, e.event.path.display()))
            .collect()
    };
    let d = r
        .who_deleted(&PathQuery::new("/pause"), DeleteOptions::new())
        .expect("who");
    let k = kinds(&d);
    assert_eq!(
        d.iter().map(|e| e.deletion.name()).collect::<Vec<_>>(),
        [
            "unlink",           // 13 native
            "ancestor_renamed", // 12 snapshots/2 -> rm-2
            "whiteout",         // 10
            "rename_onto",      // 8
            "rename_away",      // 7
            "unlink",           // 5 (the failed one at 4 is not a deletion)
        ],
        "{k:?}"
    );
    assert_eq!(d[5].event.process.comm, "rm");
    let mut o = DeleteOptions::new();
    o.failed = true;
    let d = r
        .who_deleted(&PathQuery::new("/pause"), o)
        .expect("failed too");
    assert!(
        d.iter()
            .any(|e| e.event.result == OpResult::Err(libc::EACCES))
    );
    // Host path of snapshot 2: its unlink and the snapshot's removal.
    let d = r
        .who_deleted(
            &PathQuery::new(format!("{OV}/2/fs/pause")),
            DeleteOptions::new(),
        )
        .expect("host");
    assert_eq!(
        d.iter().map(|e| e.deletion.name()).collect::<Vec<_>>(),
        ["ancestor_renamed", "unlink"],
        "{:?}",
        kinds(&d)
    );
    // libjq: truncation only on request; opaque marker on /usr/lib in snapshot 4.
    let jq = PathQuery::new("/usr/lib/x86_64-linux-gnu/libjq.so.1");
    let d = r.who_deleted(&jq, DeleteOptions::new()).expect("jq");
    assert_eq!(
        d.iter().map(|e| e.deletion.name()).collect::<Vec<_>>(),
        ["ancestor_renamed", "ancestor_opaque"],
        "{:?}",
        kinds(&d)
    );
    let mut o = DeleteOptions::new();
    o.truncations = true;
    let d = r.who_deleted(&jq, o).expect("jq trunc");
    assert!(d.iter().any(|e| e.deletion == DeletionKind::TruncateToZero));
    let mut o = DeleteOptions::new();
    o.ancestors = false;
    assert!(r.who_deleted(&jq, o).expect("no anc").is_empty());
    // JSON carries `deletion`.
    let d = r
        .who_deleted(&PathQuery::new("/pause"), DeleteOptions::new())
        .expect("who");
    assert_eq!(json(&d[0])["deletion"], "unlink");
    // Exactly the event's own object with `deletion` after its fields.
    let text = serde_json::to_string(&d[0]).expect("json");
    let event = serde_json::to_string(&d[0].event).expect("json");
    assert_eq!(
        text,
        format!(r#"{},"deletion":"unlink"}}"#, &event[..event.len() - 1])
    );
}

#[test]
fn query_filters() {
    let dir = TempDir::new("query");
    let _w = seeded_store(&dir);
    let r = Store::open_read_only(dir.db()).expect("reader");
    let q = |f: Filter| r.query(&f).expect("query");
    assert_eq!(q(Filter::default()).len(), 13);
    let by_op = q(Filter {
        ops: vec!["unlink".into(), "rmdir".into()],
        ..Default::default()
    });
    assert_eq!(by_op.len(), 4);
    assert!(
        q(Filter {
            ops: vec!["nonsense".into()],
            ..Default::default()
        })
        .is_empty()
    );
    // Globs: `*` stays within a component, `**` crosses; inner paths match too.
    let g = |p: &str| {
        q(Filter {
            path: Some(p.as_bytes().to_vec()),
            ..Default::default()
        })
        .len()
    };
    assert_eq!(g(&format!("{OV}/*/fs/pause")), 7); // 1, 2, 4, 5, 7, 8 (onto), 10
    assert_eq!(g("**/libjq*"), 2);
    assert_eq!(g("/usr/lib/*/libjq.so.?"), 2); // inner path
    assert_eq!(g("/usr/lib/*"), 0);
    assert_eq!(g("/usr/lib/**"), 2);
    assert_eq!(g("/var/lib/containerd/tmp/pause"), 1); // literal
    assert!(matches!(
        r.query(&Filter {
            path: Some(b"[oops".to_vec()),
            ..Default::default()
        }),
        Err(StoreError::InvalidQuery(_))
    ));
    assert_eq!(
        q(Filter {
            pid: Some(500),
            ..Default::default()
        })
        .len(),
        3
    );
    assert_eq!(
        q(Filter {
            comm: Some("kubelet".into()),
            ..Default::default()
        })
        .len(),
        1
    );
    assert_eq!(
        q(Filter {
            exe: Some("/usr/bin/t*".into()),
            ..Default::default()
        })
        .len(),
        1
    );
    assert_eq!(
        q(Filter {
            unit: Some("kubelet.service".into()),
            ..Default::default()
        })
        .len(),
        1
    );
    assert_eq!(
        q(Filter {
            container: Some("0123456789ab".into()),
            ..Default::default()
        })
        .len(),
        1
    );
    assert_eq!(
        q(Filter {
            result: Some("EACCES".into()),
            ..Default::default()
        })
        .len(),
        1
    );
    let w = q(Filter {
        since: Some(at(T0 + 3 * SEC)),
        until: Some(at(T0 + 5 * SEC)),
        ..Default::default()
    });
    assert_eq!(w.len(), 3);
    assert_eq!(w[0].time_ns, T0 + 5 * SEC);
    let l = q(Filter {
        ops: vec!["unlink".into()],
        unit: Some("containerd.service".into()),
        limit: Some(2),
        ..Default::default()
    });
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].time_ns, T0 + 13 * SEC);
    let table = render_table(&l);
    assert!(table.starts_with("TIME"), "{table}");
    assert!(table.contains("rm (/usr/bin/rm)"), "{table}");
    assert!(table.contains("containerd(100)<systemd(1)"), "{table}");
}

// ---------------------------------------------------------------------------------------------
// Gaps, runs, retention

#[test]
fn gaps_record_loss_downtime_and_unclean_stops() {
    let dir = TempDir::new("gaps");
    let mut w = Store::open(dir.db(), opts_no_retention()).expect("open");
    assert_eq!(w.begin_run(at(T0)).expect("first run"), None);
    let kinds = BTreeMap::from([(LossKind::Op(Op::Unlink), 40), (LossKind::Exec, 2)]);
    w.append_loss(&LossEvent {
        time_ns: T0 + 11 * SEC,
        from_ns: T0 + 10 * SEC,
        to_ns: T0 + 11 * SEC,
        lost: 42,
        kinds,
    })
    .expect("loss");
    w.append_event(&ev(T0 + 12 * SEC, Op::Unlink, "/a"))
        .expect("ev");
    w.heartbeat(at(T0 + 20 * SEC)).expect("hb");
    w.flush().expect("flush");
    w.end_run(at(T0 + 30 * SEC)).expect("end");
    drop(w);

    // Clean stop, restart 60 s later: a downtime gap from the stop (recorded, not returned).
    let mut w = Store::open(dir.db(), opts_no_retention()).expect("reopen");
    assert_eq!(w.begin_run(at(T0 + 90 * SEC)).expect("second run"), None);
    let g = w
        .gaps(Some(at(T0 + 50 * SEC)), Some(at(T0 + 60 * SEC)))
        .expect("gaps");
    let g = g.into_iter().next().expect("downtime gap");
    assert_eq!(g.kind, GapKind::Downtime);
    assert_eq!(g.reason.as_deref(), Some("stopped"));
    assert_eq!((g.from_ns, g.to_ns), (T0 + 30 * SEC, T0 + 90 * SEC));
    w.append_event(&ev(T0 + 95 * SEC, Op::Unlink, "/b"))
        .expect("ev");
    w.flush().expect("flush");
    w.heartbeat(at(T0 + 100 * SEC)).expect("hb");
    // No end_run: as if killed.
    drop(w);
    let mut w = Store::open(dir.db(), opts_no_retention()).expect("reopen");
    let g = w.begin_run(at(T0 + 200 * SEC)).expect("third run");
    let g = g.expect("unclean gap");
    assert_eq!(g.reason.as_deref(), Some("unclean_stop"));
    assert_eq!((g.from_ns, g.to_ns), (T0 + 100 * SEC, T0 + 200 * SEC));
    // Logged as a sentence, not as a debug struct.
    assert_eq!(
        g.to_string(),
        "no capture from 2026-01-01T00:01:40.000000000Z to 2026-01-01T00:03:20.000000000Z \
         (1m 40s), recorded as a downtime gap"
    );
    w.flush().expect("flush");

    let r = Store::open_read_only(dir.db()).expect("reader");
    let gaps = r.gaps(None, None).expect("gaps");
    assert_eq!(
        gaps.iter().map(|g| g.kind.name()).collect::<Vec<_>>(),
        ["loss", "downtime", "downtime"]
    );
    assert_eq!(gaps[0].lost, Some(42));
    assert_eq!(gaps[0].kinds.get("unlink"), Some(&40));
    assert_eq!(gaps[0].from_ns, T0 + 10 * SEC);
    assert_eq!(
        gaps[0].to_string(),
        "42 records not delivered by the kernel from 2026-01-01T00:00:10.000000000Z to \
         2026-01-01T00:00:11.000000000Z (1.0 s), recorded as a loss gap (exec=2 unlink=40)"
    );
    let v = json(&gaps[0]);
    assert_eq!(v["kind"], "loss");
    assert_eq!(v["kinds"]["exec"], 2);
    // Window filter: overlapping gaps only.
    let some = r
        .gaps(Some(at(T0 + 150 * SEC)), Some(at(T0 + 160 * SEC)))
        .expect("window");
    assert_eq!(some.len(), 1);
    assert!(render_gaps(&gaps).contains("unclean_stop"));
}

#[test]
fn retention_by_age_prunes_oldest_and_records_it() {
    let dir = TempDir::new("age");
    // Ten events per segment: pruning removes whole segments and cuts one.
    let opts = StoreOptions {
        retention_age: Some(Duration::from_secs(50)),
        retention_bytes: None,
        segment_events: 10,
        ..Default::default()
    };
    let mut w = Store::open(dir.db(), opts).expect("open");
    w.begin_run(at(T0)).expect("run");
    for i in 0..100 {
        w.append_event(&ev(T0 + i * SEC, Op::Unlink, &format!("{OV}/1/fs/f{i}")))
            .expect("append");
    }
    w.flush().expect("flush");
    assert_eq!(w.prune(at(T0 + 30 * SEC)).expect("nothing old"), None);
    let rep = w.prune(at(T0 + 99 * SEC)).expect("prune").expect("removed");
    assert_eq!(rep.removed_by_age, 49); // 0..=48 are older than 50 s
    assert_eq!(rep.from, format_time(T0));
    assert_eq!(rep.to, format_time(T0 + 48 * SEC));
    let r = Store::open_read_only(dir.db()).expect("reader");
    let all = r.query(&Filter::default()).expect("all");
    assert_eq!(all.len(), 51);
    assert_eq!(all.last().map(|e| e.time_ns), Some(T0 + 49 * SEC));
    assert_eq!(r.stats().expect("stats").events, 51);
    assert_eq!(r.stats().expect("stats").distinct_paths, 51); // orphans went too
    let gaps = r.gaps(None, None).expect("gaps");
    let pruned: Vec<&Gap> = gaps.iter().filter(|g| g.kind == GapKind::Pruned).collect();
    assert_eq!(pruned.len(), 1);
    assert_eq!(pruned[0].lost, Some(49));
    assert_eq!(pruned[0].kinds.get("age"), Some(&49));
    // A second prune shortly after extends the same record.
    let rep = w.prune(at(T0 + 109 * SEC)).expect("prune").expect("more");
    assert_eq!(rep.removed, 10);
    let gaps = r.gaps(None, None).expect("gaps");
    let pruned: Vec<&Gap> = gaps.iter().filter(|g| g.kind == GapKind::Pruned).collect();
    assert_eq!(pruned.len(), 1);
    assert_eq!(pruned[0].lost, Some(59));
    assert_eq!(pruned[0].to_ns, T0 + 58 * SEC);
    // History of a pruned path is empty; of a kept one, whole.
    assert!(r.history(&PathQuery::new("/f3")).expect("h").is_empty());
    assert_eq!(r.history(&PathQuery::new("/f80")).expect("h").len(), 1);
}

#[test]
fn retention_by_size_keeps_the_database_under_the_limit() {
    let dir = TempDir::new("size");
    // Above the empty schema's own size: with 16 KiB pages, its ~20 tables and indexes take
    // a page each (over 300 KiB) before the first event.
    let limit = 1024 * 1024;
    let opts = StoreOptions {
        retention_age: None,
        retention_bytes: Some(limit),
        segment_events: 500,
        ..Default::default()
    };
    let mut w = Store::open(dir.db(), opts).expect("open");
    w.begin_run(at(T0)).expect("run");
    let n = 20_000;
    for i in 0..n {
        let mut e = ev(
            T0 + i * 1_000_000,
            Op::Unlink,
            &format!("{OV}/{}/fs/usr/share/doc/pkg-{}/file-{i}", i % 7, i % 300),
        );
        e.process = Arc::new(process(1000 + (i % 50) as u32, "rm"));
        w.append_event(&e).expect("append");
    }
    w.flush().expect("flush");
    let before = w.stats().expect("stats");
    assert!(before.used_bytes > limit, "{before:?}");
    let rep = w
        .prune(at(T0 + n * 1_000_000))
        .expect("prune")
        .expect("removed");
    assert!(rep.removed_by_size > 0 && !rep.more, "{rep:?}");
    let after = w.stats().expect("stats");
    assert!(after.used_bytes <= limit, "{after:?}");
    assert!(after.file_bytes <= limit, "{after:?}");
    assert_eq!(after.events, before.events - rep.removed);
    let r = Store::open_read_only(dir.db()).expect("reader");
    let all = r.query(&Filter::default()).expect("all");
    assert_eq!(all.len() as u64, after.events);
    // Oldest first: what is left is a suffix.
    let oldest_left = all.last().map(|e| e.time_ns).unwrap_or(0);
    assert_eq!(oldest_left, T0 + rep.removed as i64 * 1_000_000);
    assert_eq!(all[0].time_ns, T0 + (n - 1) * 1_000_000);
    let gaps = r.gaps(None, None).expect("gaps");
    assert!(
        gaps.iter()
            .any(|g| g.kind == GapKind::Pruned && g.kinds.get("size") == Some(&rep.removed)),
        "{gaps:?}"
    );
    assert_eq!(r.integrity_check().expect("check"), ["ok"]);
}

#[test]
fn readers_run_while_the_writer_commits() {
    let dir = TempDir::new("concurrent");
    let mut w = Store::open(dir.db(), opts_no_retention()).expect("open");
    w.begin_run(at(T0)).expect("run");
    w.flush().expect("flush");
    let writer = std::thread::spawn(move || -> Result<u64, StoreError> {
        let mut acked = 0u64;
        for b in 0..40i64 {
            for i in 0..500i64 {
                let k = b * 500 + i;
                w.append_event(&ev(T0 + k * 1000, Op::Unlink, &format!("{OV}/1/fs/x{k}")))?;
            }
            acked += w.flush()? as u64;
        }
        Ok(acked)
    });
    let r = Store::open_read_only(dir.db()).expect("reader");
    let mut last = 0;
    let mut reads = 0;
    while !writer.is_finished() {
        let n = r.stats().expect("stats while writing").events;
        assert!(n >= last);
        last = n;
        let page = r
            .query(&Filter {
                limit: Some(10),
                ..Default::default()
            })
            .expect("query while writing");
        assert!(page.len() <= 10);
        reads += 1;
    }
    let acked = writer.join().expect("join").expect("writer never failed");
    assert_eq!(acked, 20_000);
    assert_eq!(r.stats().expect("stats").events, 20_000);
    assert!(reads > 0);
}

// ---------------------------------------------------------------------------------------------
// Crash safety: a child writes and acknowledges; SIGKILL; everything acknowledged is there.

const CRASH_ENV: &str = "CTRWATCH_STORE_CRASH_CHILD";

/// The child side of `kill_9_keeps_every_acknowledged_event` (does nothing in a normal run).
#[test]
fn crash_child_writer() {
    let Some(db) = std::env::var_os(CRASH_ENV) else {
        return;
    };
    let mut w = Store::open(PathBuf::from(db), opts_no_retention()).expect("child open");
    w.begin_run(SystemTime::now()).expect("child run");
    let mut k: i64 = 0;
    let mut acked: u64 = 0;
    loop {
        for _ in 0..500 {
            let mut e = ev(
                T0 + k * 1000,
                Op::Unlink,
                &format!("{OV}/{}/fs/f{k}", k % 13),
            );
            e.process = Arc::new(process(2000 + (k % 40) as u32, "rm"));
            w.append_event(&e).expect("child append");
            k += 1;
        }
        acked += w.flush().expect("child flush") as u64;
        w.heartbeat(SystemTime::now()).expect("child hb");
        println!("ACK {acked}");
    }
}

#[test]
fn kill_9_keeps_every_acknowledged_event() {
    let dir = TempDir::new("crash");
    let exe = std::env::current_exe().expect("exe");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "tests::crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_ENV, dir.db())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut last_ack = 0u64;
    let mut lines = BufReader::new(stdout).lines();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while last_ack < 30_000 && std::time::Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(n) = line.strip_prefix("ACK ") {
            last_ack = n.trim().parse().expect("ack count");
        }
    }
    child.kill().expect("SIGKILL"); // mid-flood: the child never stops appending
    let _ = child.wait();
    assert!(last_ack >= 30_000, "child acknowledged only {last_ack}");

    let r = Store::open_read_only(dir.db()).expect("open after kill");
    assert_eq!(r.integrity_check().expect("check"), ["ok"]);
    let stored = r.stats().expect("stats").events;
    assert!(
        stored >= last_ack,
        "stored {stored} < acknowledged {last_ack}"
    );
    // Exactly the first `last_ack` events (by time) are all there.
    let first = r
        .query(&Filter {
            until: Some(at(T0 + (last_ack as i64 - 1) * 1000)),
            ..Default::default()
        })
        .expect("query");
    assert_eq!(first.len() as u64, last_ack);
    drop(r);
    let mut w = Store::open(dir.db(), opts_no_retention()).expect("writer after kill");
    let gap = w.begin_run(SystemTime::now()).expect("run").expect("gap");
    assert_eq!(gap.kind, GapKind::Downtime);
    assert_eq!(gap.reason.as_deref(), Some("unclean_stop"));
}

// ---------------------------------------------------------------------------------------------
// Full disk: a 2 MiB tmpfs.

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Option<Mount> {
    let ok = Command::new("mount")
        // Not tmpfs's default 1777: the writer refuses a directory other users can write.
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
        ])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mount(dir.to_path_buf()))
}

#[test]
fn full_disk_is_survived_and_recorded() {
    let dir = TempDir::new("full");
    let mnt = dir.0.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mnt");
    let Some(mount) = mount_tmpfs(&mnt, "2m") else {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    };
    let db = mnt.join("events.db");
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0u8; 1024 * 1024]).expect("filler");
    {
        let mut w = Store::open(&db, opts_no_retention()).expect("open on tmpfs");
        w.begin_run(at(T0)).expect("run");
        let mut appended = 0u64;
        let mut acked = 0u64;
        let mut full_errors = 0;
        let mut k = 0i64;
        let push = |w: &mut Store, k: &mut i64, full_errors: &mut i32| {
            let e = ev(
                T0 + *k * 1000,
                Op::Unlink,
                &format!("{OV}/1/fs/dir/file-{k}"),
            );
            *k += 1;
            match w.append_event(&e) {
                Ok(()) => {}
                Err(StoreError::Full { .. }) => *full_errors += 1,
                Err(e) => panic!("append: {e}"),
            }
        };
        // Write until the disk is full.
        while full_errors == 0 && k < 200_000 {
            for _ in 0..200 {
                push(&mut w, &mut k, &mut full_errors);
                appended += 1;
            }
            match w.flush() {
                Ok(n) => acked += n as u64,
                Err(StoreError::Full { .. }) => full_errors += 1,
                Err(e) => panic!("flush: {e}"),
            }
        }
        assert!(full_errors > 0, "the tmpfs never filled");
        assert!(w.unstored().is_some());
        // Still full: the writer keeps taking events. What it cannot write is counted; a flush
        // may manage a small commit in space the failed one had allocated, then fail again.
        for _ in 0..5 {
            for _ in 0..300 {
                push(&mut w, &mut k, &mut full_errors);
                appended += 1;
            }
            match w.flush() {
                Ok(n) => acked += n as u64,
                Err(StoreError::Full { .. }) => {}
                Err(e) => panic!("flush while full: {e}"),
            }
        }
        // Space returns: the next flush records the gap and the writer is back.
        std::fs::remove_file(&filler).expect("free space");
        w.heartbeat(at(T0 + k * 1000)).expect("hb");
        acked += w.flush().expect("recovered") as u64;
        assert_eq!(w.unstored(), None);
        for _ in 0..100 {
            push(&mut w, &mut k, &mut full_errors);
            appended += 1;
        }
        acked += w.flush().expect("after recovery") as u64;
        let stats = w.stats().expect("stats");
        assert_eq!(stats.events, acked);
        let gaps = w.gaps(None, None).expect("gaps");
        let full: Vec<&Gap> = gaps
            .iter()
            .filter(|g| g.kind == GapKind::StoreFull)
            .collect();
        assert!(!full.is_empty(), "{gaps:?}");
        let lost: u64 = full.iter().filter_map(|g| g.lost).sum();
        assert_eq!(lost, appended - acked, "{gaps:?}");
        let by_kind: u64 = full.iter().filter_map(|g| g.kinds.get("unlink")).sum();
        assert_eq!(by_kind, lost);
        assert!(
            full.iter()
                .all(|g| g.reason.as_deref().is_some_and(|r| r.contains("full")))
        );
        // What was written after recovery is there.
        let last = w
            .query(&Filter {
                limit: Some(1),
                ..Default::default()
            })
            .expect("query");
        assert_eq!(last[0].time_ns, T0 + (k - 1) * 1000);
        assert_eq!(w.integrity_check().expect("check"), ["ok"]);
    }
    drop(mount);
}

/// A path the kernel could not build completely (a prefix, `…`, a name) is stored with its
/// note and never answers an exact-path question, even when its text is the path of a real
/// file (here a directory really named `…`); a glob finds both.
#[test]
fn truncated_paths_never_answer_exact_questions() {
    let dir = TempDir::new("truncated");
    let mut w = Store::open(dir.db(), opts_no_retention()).expect("open");
    w.begin_run(at(T0)).expect("run");
    let mut t = T0;
    let mut push = |w: &mut Store, mut e: FileEvent, notes: Notes| {
        t += SEC;
        e.time_ns = t;
        e.mono_ns = (t - BOOT) as u64;
        e.details.notes = notes;
        w.append_event(&e).expect("append");
    };
    let cut = Notes::PATH_TRUNCATED;
    let new_cut = Notes::NEW_PATH_TRUNCATED;
    push(&mut w, ev(0, Op::Unlink, "/r/a/…/f"), cut); // 1
    push(&mut w, ev(0, Op::Unlink, "/r/a/…/f"), Notes::default()); // 2: a directory named `…`
    let mut onto = ev(0, Op::Rename, "/r/a/b");
    onto.new_path = Some(path_bytes("/r/a/…/g"));
    push(&mut w, onto, new_cut); // 3
    let mut away = ev(0, Op::Rename, "/r/a/…/x");
    away.new_path = Some(path_bytes("/r/a/y"));
    push(&mut w, away, cut); // 4
    w.flush().expect("flush");
    let r = Store::open_read_only(dir.db()).expect("reader");
    fn times<T: Answered>(v: &[T]) -> Vec<i64> {
        v.iter().map(|e| (e.event().time_ns - T0) / SEC).collect()
    }

    let h = r.history(&PathQuery::new("/r/a/…/f")).expect("history");
    assert_eq!(times(&h), [2], "{:?}", paths(&h));
    let d = r
        .who_deleted(&PathQuery::new("/r/a/…/f"), DeleteOptions::new())
        .expect("who");
    assert_eq!(times(&d), [2]);
    let d = r
        .who_deleted(&PathQuery::new("/r/a/…/g"), DeleteOptions::new())
        .expect("who onto");
    assert!(d.is_empty(), "{:?}", paths(&d));
    // Its other path is complete: found by that one.
    assert_eq!(
        times(&r.history(&PathQuery::new("/r/a/b")).expect("b")),
        [3]
    );
    assert_eq!(
        times(&r.history(&PathQuery::new("/r/a/y")).expect("y")),
        [4]
    );
    // Not an ancestor's rename either.
    let d = r
        .who_deleted(&PathQuery::new("/r/a/…/x/child"), DeleteOptions::new())
        .expect("who child");
    assert!(d.is_empty(), "{:?}", paths(&d));
    // Literal query paths are exact too; globs find what the text matches.
    let q = |p: &str| {
        r.query(&Filter {
            path: Some(p.as_bytes().to_vec()),
            ..Default::default()
        })
        .expect("query")
    };
    assert_eq!(times(&q("/r/a/…/f")), [2]);
    assert_eq!(times(&q("/r/**/f")), [2, 1]);
    assert_eq!(times(&q("/r/**/g")), [3]);
    let glob = q("/r/**/f");
    assert_eq!(glob[1].details.notes, cut);
}

// ---------------------------------------------------------------------------------------------
// A store of the previous release

/// The store in tests/fixtures/store-v3: written by the release before issue 11 (events as
/// strings), with its own store API (see the fixture's README). This one reads it as typed
/// events, equal to what that release was given, and goes on writing it.
#[test]
fn a_store_of_the_previous_release_reads_back_typed() {
    use std::io::Read as _;
    let dir = TempDir::new("v3-fixture");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/store-v3/events.db.gz");
    let gz = std::fs::read(&fixture).expect("fixture");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut bytes)
        .expect("gunzip");
    std::fs::write(dir.db(), bytes).expect("write");

    let r = Store::open_read_only(dir.db()).expect("reader");
    let all = r.query_partial(&Filter::default()).expect("query");
    assert_eq!(all.unreadable.count, 0, "{:?}", all.unreadable);
    assert_eq!(all.found.len(), 29);
    let mut ops: Vec<Op> = all.found.iter().map(|e| e.op).collect();
    ops.sort();
    ops.dedup();
    assert_eq!(ops, Op::ALL, "every op is in the fixture");
    // The event with every field, as that release was given it.
    let mut full = full_event();
    full.time_ns = T0 + 101 * SEC;
    full.mono_ns = (full.time_ns - BOOT) as u64;
    full.details.overwritten = Some(Overwritten {
        inode: 9,
        dev: Dev::new(254, 1),
    });
    // That release had no protect verdicts.
    full.details.protect = None;
    let stored = all
        .found
        .iter()
        .find(|e| e.path == full.path)
        .expect("the full event");
    assert_eq!(*stored, full);
    // Others, field by field.
    let find = |p: &str| {
        all.found
            .iter()
            .find(|e| e.path.as_bytes() == p.as_bytes())
            .unwrap_or_else(|| panic!("{p}"))
    };
    let jq = find(&format!("{OV}/2/fs/usr/lib/x86_64-linux-gnu/libjq.so.1"));
    let jq = if jq.op == Op::Modify {
        jq
    } else {
        all.found
            .iter()
            .find(|e| e.op == Op::Modify && e.path == jq.path)
            .expect("modify")
    };
    assert_eq!(
        (jq.details.bytes, jq.details.first_write_ns, jq.dev),
        (Some(10), Some(T0 + 2 * SEC + 500), Some(Dev::new(0, 45)))
    );
    assert_eq!(jq.details.notes, Notes::BY_FD);
    let mkdir = find("/var/lib/containerd/ops/mkdir");
    assert_eq!(
        (mkdir.result, mkdir.details.mode),
        (OpResult::Err(4095), Some(Mode(0o1777)))
    );
    let sx = find("/var/lib/containerd/ops/setxattr");
    let x = sx.details.xattr.as_ref().expect("xattr");
    assert_eq!(
        (&x.name[..], x.value.as_deref()),
        (&b"user.overlay.redirect"[..], Some(&[b'x'; 256][..]))
    );
    assert_eq!(sx.details.notes, Notes::VALUE_TRUNCATED);
    let state = find("/run/containerd/io.containerd.runtime.v2.task/k8s.io/c1/config.json");
    let c = state.details.containerd.as_ref().expect("containerd");
    assert_eq!(
        (c.kind, c.verdict, c.pod.as_ref().map(|p| p.sandbox)),
        (StorageKind::RuntimeState, Verdict::Container, Some(true))
    );
    let bad = all
        .found
        .iter()
        .find(|e| e.process.pid == 900)
        .expect("non-UTF-8 path");
    assert_eq!(
        bad.path.as_bytes(),
        b"/var/lib/containerd/ops/bad\xff\x1b[31m\nname"
    );
    // Deletions and gaps, typed.
    let d = r
        .who_deleted(&PathQuery::new("/pause"), DeleteOptions::new())
        .expect("who-deleted");
    assert_eq!(
        d.iter().map(|d| d.deletion).collect::<Vec<_>>(),
        [
            DeletionKind::Unlink,
            DeletionKind::AncestorRenamed,
            DeletionKind::Whiteout,
            DeletionKind::Replaced,
            DeletionKind::RenameAway,
            DeletionKind::Unlink,
        ]
    );
    let gaps = r.gaps(None, None).expect("gaps");
    assert_eq!(
        gaps.iter().map(|g| g.kind).collect::<Vec<_>>(),
        [GapKind::Loss, GapKind::Downtime]
    );
    assert_eq!(gaps[0].kinds.get("path_unresolved"), Some(&1));
    drop(r);

    // This release's writer goes on: a new run, a new event beside the old ones.
    let mut w = Store::open(dir.db(), opts_no_retention()).expect("writer");
    assert_eq!(w.begin_run(at(T0 + 200 * SEC)).expect("run"), None);
    let mut e = ev(T0 + 201 * SEC, Op::Unlink, "/var/lib/containerd/ops/open");
    // (A non-UTF-8 `containerd.path` that is not the event path's inner path is kept as its
    // JSON text, the display form: as before, it reads back in that form.)
    let mut c = full.details.containerd.clone().expect("containerd");
    c.path = Some(path_bytes("/ops/open"));
    e.details.containerd = Some(c);
    w.append_event(&e).expect("append");
    w.flush().expect("flush");
    w.end_run(at(T0 + 210 * SEC)).expect("end");
    drop(w);
    let r = Store::open_read_only(dir.db()).expect("reader");
    let all = r.query_partial(&Filter::default()).expect("query");
    assert_eq!(all.unreadable.count, 0, "{:?}", all.unreadable);
    assert_eq!(all.found.len(), 30);
    assert_eq!(all.found[0], e);
    assert!(all.found.contains(&full));
    assert_eq!(
        r.history(&PathQuery::new("/var/lib/containerd/ops/open"))
            .expect("history")
            .iter()
            .map(|e| e.op)
            .collect::<Vec<_>>(),
        [Op::Unlink, Op::OpenWrite]
    );
    assert_eq!(r.integrity_check().expect("check"), ["ok"]);
}

/// The daemon's status snapshot is written with the heartbeat and read back by a reader; the
/// last run says whether it ended cleanly.
#[test]
fn status_snapshot_is_written_with_the_heartbeat() {
    let dir = TempDir::new("status");
    let mut store = Store::open(dir.db(), StoreOptions::default()).expect("open");
    store.begin_run(at(T0)).expect("begin");
    store
        .heartbeat_with_status(at(T0 + SEC), r#"{"pid":1}"#)
        .expect("heartbeat");
    let reader = Store::open_read_only(dir.db()).expect("reader");
    assert_eq!(
        reader.daemon_status().expect("status").as_deref(),
        Some(r#"{"pid":1}"#)
    );
    let run = reader.last_run().expect("run").expect("a run");
    assert_eq!((run.heartbeat_ns, run.ended_ns), (T0 + SEC, None));
    store.end_run(at(T0 + 2 * SEC)).expect("end");
    let run = reader.last_run().expect("run").expect("a run");
    assert_eq!(run.ended_ns, Some(T0 + 2 * SEC));
}

/// The newest alerts of the outbox with each sink's delivery state (all its targets
/// together); a store without an outbox has none.
#[test]
fn recent_alerts_come_from_the_outbox_when_there_is_one() {
    let dir = TempDir::new("alerts");
    drop(Store::open(dir.db(), StoreOptions::default()).expect("open"));
    // As a store of schema 3 (before the outbox, migration 4) has it: no outbox tables.
    let conn = rusqlite::Connection::open(dir.db()).expect("conn");
    conn.execute_batch("DROP TABLE deliveries; DROP TABLE alerts;")
        .expect("drop the outbox");
    drop(conn);
    let reader = Store::open_read_only(dir.db()).expect("reader");
    assert_eq!(reader.recent_alerts(5).expect("no outbox"), Vec::new());
    drop(reader);
    // The outbox's tables as the alerts crate creates them (issue 12's design).
    let conn = rusqlite::Connection::open(dir.db()).expect("conn");
    conn.execute_batch(
        "CREATE TABLE alerts (id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, rule TEXT NOT NULL,
            severity TEXT NOT NULL, rev INTEGER NOT NULL, state TEXT NOT NULL,
            first_ns INTEGER NOT NULL, last_ns INTEGER NOT NULL, count INTEGER NOT NULL,
            body TEXT NOT NULL, created_ns INTEGER NOT NULL, updated_ns INTEGER NOT NULL);
         CREATE TABLE deliveries (alert TEXT NOT NULL, sink TEXT NOT NULL, target TEXT NOT NULL,
            rev INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            next_ns INTEGER, last_error TEXT, last_status INTEGER, delivered_ns INTEGER,
            PRIMARY KEY (alert, sink, target)) WITHOUT ROWID;",
    )
    .expect("outbox");
    for i in 0..7i64 {
        conn.execute(
            "INSERT INTO alerts VALUES (?1, ?2, 'foreign_change', 'high', 1, 'firing', ?3, ?3, 2, '{}', ?3, ?3)",
            rusqlite::params![format!("ctw-{i}"), i, T0 + i * SEC],
        )
        .expect("alert");
    }
    for (target, state, attempts) in [("u1", "delivered", 1), ("u2", "pending", 3)] {
        conn.execute(
            "INSERT INTO deliveries (alert, sink, target, state, attempts) VALUES ('ctw-6', 'am', ?1, ?2, ?3)",
            rusqlite::params![target, state, attempts],
        )
        .expect("delivery");
    }
    conn.execute(
        "INSERT INTO deliveries (alert, sink, target, state, attempts) VALUES ('ctw-6', 'hook', 'https://x/?token=secret', 'delivered', 1)",
        [],
    )
    .expect("delivery");
    drop(conn);
    let reader = Store::open_read_only(dir.db()).expect("reader");
    let alerts = reader.recent_alerts(5).expect("alerts");
    let ids: Vec<&str> = alerts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["ctw-6", "ctw-5", "ctw-4", "ctw-3", "ctw-2"]);
    assert_eq!(alerts[0].last_seen, format_time(T0 + 6 * SEC));
    assert_eq!(
        alerts[0].deliveries,
        vec![
            AlertDelivery {
                sink: "am".into(),
                state: "pending".into(),
                attempts: 4
            },
            AlertDelivery {
                sink: "hook".into(),
                state: "delivered".into(),
                attempts: 1
            },
        ]
    );
    assert!(alerts[1].deliveries.is_empty());
}

/// A daemon that adopted its predecessor's pinned programs continues its capture: after a
/// clean stop there is no downtime; after an unclean one the gap from the last heartbeat is
/// recorded as for any start (what the crashed daemon had read but not committed is gone).
#[test]
fn an_adopted_run_records_no_downtime_after_a_clean_stop_only() {
    let dir = TempDir::new("adopted");
    let mut w = Store::open(dir.db(), opts_no_retention()).expect("open");
    assert_eq!(w.begin_adopted_run(at(T0)).expect("first run"), None);
    w.heartbeat(at(T0 + 10 * SEC)).expect("hb");
    w.end_run(at(T0 + 20 * SEC)).expect("end");
    drop(w);

    let mut w = Store::open(dir.db(), opts_no_retention()).expect("reopen");
    assert_eq!(
        w.begin_adopted_run(at(T0 + 30 * SEC)).expect("adopted"),
        None
    );
    assert_eq!(
        w.gaps(None, None).expect("gaps"),
        vec![],
        "clean stop, adopted"
    );
    // Events the adopted programs captured while no daemon ran are older than the run.
    w.append_event(&ev(T0 + 25 * SEC, Op::Unlink, "/meanwhile"))
        .expect("ev");
    w.flush().expect("flush");
    w.heartbeat(at(T0 + 40 * SEC)).expect("hb");
    // No end_run: as if killed.
    drop(w);

    let mut w = Store::open(dir.db(), opts_no_retention()).expect("reopen");
    let g = w
        .begin_adopted_run(at(T0 + 50 * SEC))
        .expect("adopted after a crash")
        .expect("unclean gap");
    assert_eq!(g.kind, GapKind::Downtime);
    assert_eq!(g.reason.as_deref(), Some("unclean_stop"));
    assert_eq!((g.from_ns, g.to_ns), (T0 + 40 * SEC, T0 + 50 * SEC));
    assert_eq!(w.gaps(None, None).expect("gaps").len(), 1);
}

#[test]
fn the_ring_mark_is_committed_with_the_events_it_covers() {
    let dir = TempDir::new("ring-mark");
    let mut w = Store::open(dir.db(), opts_no_retention()).expect("open");
    w.begin_run(at(1_000)).expect("run");
    assert_eq!(w.ring_mark().expect("mark"), None);
    // Without a ring set, positions are not kept.
    w.note_ring_through(8);
    w.append_event(&ev(2_000, Op::Create, "/r/a"))
        .expect("append");
    w.flush().expect("flush");
    assert_eq!(w.ring_mark().expect("mark"), None);
    w.set_ring("boot/7".into());
    w.note_ring_through(64);
    w.append_event(&ev(3_000, Op::Create, "/r/b"))
        .expect("append");
    // Appended, not committed: the committed mark is not there yet (a crash now replays b,
    // which is not stored either).
    let reader = Store::open_read_only(dir.db()).expect("reader");
    assert_eq!(reader.ring_mark().expect("mark"), None);
    w.flush().expect("flush");
    let mark = Some(crate::RingMark {
        ring: "boot/7".into(),
        through: 64,
    });
    assert_eq!(reader.ring_mark().expect("mark"), mark);
    // Positions only grow.
    w.note_ring_through(32);
    w.append_event(&ev(4_000, Op::Create, "/r/c"))
        .expect("append");
    w.flush().expect("flush");
    assert_eq!(reader.ring_mark().expect("mark"), mark);
}
