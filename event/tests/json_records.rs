//! The JSON records are an interface (docs/operations.md, "JSON records"): scripts match on
//! their field names, their order of appearance and their presence rules. This pins the exact
//! JSON of a representative event of each op, written by hand from that table (not produced by
//! the serializers under test), and of a loss record and a gap.

use std::collections::BTreeMap;
use std::sync::Arc;

use ctrwatch_event::{
    AncestorView, BlobRole, ContainerdView, Details, Dev, FileEvent, Gap, GapKind, LossEvent,
    LossKind, Mode, Notes, Op, OpResult, OpenFlags, Overwritten, PathBytes, PodInfo, ProcessView,
    SnapshotKind, StorageKind, Verdict, Xattr,
};

/// 2026-01-01T00:00:00.123456789Z
const T: i64 = 1_767_225_600_123_456_789;
const TIME: &str = "2026-01-01T00:00:00.123456789Z";

/// `process` as the table lists it: pid, tid, ppid, comm, exe, cmdline, uid, gid, unit,
/// container_id, cgroup_id, mnt_ns, ancestors (`{pid, comm, exe}`, parent first).
const PROCESS: &str = r#"{"pid":4242,"tid":4243,"ppid":1,"comm":"rm","exe":"/usr/bin/rm","cmdline":["rm","-f","x"],"uid":0,"gid":0,"unit":"cleanup.service","container_id":null,"cgroup_id":77,"mnt_ns":4026531840,"ancestors":[{"pid":1,"comm":"systemd","exe":"/usr/lib/systemd/systemd"}]}"#;

fn process() -> Arc<ProcessView> {
    Arc::new(ProcessView {
        pid: 4242,
        tid: 4243,
        ppid: 1,
        comm: "rm".into(),
        exe: Some("/usr/bin/rm".into()),
        cmdline: vec!["rm".into(), "-f".into(), "x".into()],
        uid: 0,
        gid: 0,
        unit: Some("cleanup.service".into()),
        container_id: None,
        cgroup_id: 77,
        mnt_ns: 4_026_531_840,
        ancestors: vec![AncestorView {
            pid: 1,
            comm: "systemd".into(),
            exe: Some("/usr/lib/systemd/systemd".into()),
        }],
    })
}

fn path(p: &str) -> PathBytes {
    PathBytes(p.as_bytes().to_vec())
}

fn event(op: Op, p: &str) -> FileEvent {
    FileEvent {
        time_ns: T,
        mono_ns: 5_000_000_000,
        op,
        path: path(p),
        new_path: None,
        result: OpResult::Ok,
        inode: None,
        dev: None,
        process: process(),
        details: Details::default(),
    }
}

/// `{"time":TIME,"mono_ns":5000000000,"op":OP,"path":PATH` (the head every record starts with).
fn head(op: &str, path: &str) -> String {
    format!(r#"{{"time":"{TIME}","mono_ns":5000000000,"op":"{op}","path":"{path}""#)
}

/// Every op, its event and the JSON the table says it is.
fn cases() -> Vec<(FileEvent, String)> {
    let mut out = Vec::new();

    let mut e = event(Op::OpenWrite, "/var/lib/containerd/f");
    e.inode = Some(12);
    e.dev = Some(Dev::new(254, 1));
    e.details.size = Some(17);
    e.details.open_flags = OpenFlags::WRITE | OpenFlags::APPEND;
    out.push((
        e,
        head("open_write", "/var/lib/containerd/f")
            + r#","result":"ok","inode":12,"dev":"254:1","process":"#
            + PROCESS
            + r#","size":17,"open_flags":["write","append"]}"#,
    ));

    let mut e = event(Op::Create, "/var/lib/containerd/new");
    e.inode = Some(13);
    e.dev = Some(Dev::new(254, 1));
    e.details.mode = Some(Mode(0o644));
    e.details.size = Some(0);
    e.details.open_flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    out.push((
        e,
        head("create", "/var/lib/containerd/new")
            + r#","result":"ok","inode":13,"dev":"254:1","process":"#
            + PROCESS
            + r#","mode":"0644","size":0,"open_flags":["write","create","truncate"]}"#,
    ));

    let mut e = event(Op::Truncate, "/var/lib/containerd/t");
    e.inode = Some(14);
    e.dev = Some(Dev::new(254, 1));
    e.details.size = Some(0);
    e.details.notes = Notes::BY_FD;
    out.push((
        e,
        head("truncate", "/var/lib/containerd/t")
            + r#","result":"ok","inode":14,"dev":"254:1","process":"#
            + PROCESS
            + r#","size":0,"notes":["by_fd"]}"#,
    ));

    let mut e = event(
        Op::Modify,
        "/run/containerd/io.containerd.runtime.v2.task/k8s.io/c1/config.json",
    );
    e.inode = Some(4_000_000_000_123);
    e.dev = Some(Dev::new(0, 45));
    e.details.size = Some(10);
    e.details.bytes = Some(10);
    e.details.writes = Some(2);
    e.details.first_write_ns = Some(T - 1_000_000_000);
    e.details.notes = Notes::BY_FD | Notes::NOT_CLOSED;
    e.details.containerd = Some(Box::new(ContainerdView {
        root: path("/run/containerd"),
        kind: StorageKind::RuntimeState,
        namespace: Some("k8s.io".into()),
        images: vec!["registry.k8s.io/pause:3.10".into()],
        container_id: Some("c1".into()),
        pod: Some(PodInfo {
            name: "web-0".into(),
            namespace: Some("default".into()),
            uid: Some("u-1".into()),
            container_name: None,
            sandbox: true,
        }),
        path: Some(path("/config.json")),
        verdict: Verdict::Container,
        reason: "container c1 writing its own layer".into(),
        ..ContainerdView::default()
    }));
    out.push((
        e,
        head("modify", "/run/containerd/io.containerd.runtime.v2.task/k8s.io/c1/config.json")
            + r#","result":"ok","inode":4000000000123,"dev":"0:45","process":"#
            + PROCESS
            + r#","size":10,"bytes":10,"writes":2,"first_write":"2025-12-31T23:59:59.123456789Z","notes":["by_fd","not_closed"],"containerd":{"root":"/run/containerd","kind":"runtime_state","namespace":"k8s.io","images":["registry.k8s.io/pause:3.10"],"container_id":"c1","pod":{"name":"web-0","namespace":"default","uid":"u-1","container_name":null,"sandbox":true},"path":"/config.json","verdict":"container","reason":"container c1 writing its own layer"}}"#,
    ));

    let mut e = event(Op::Fallocate, "/var/lib/containerd/fa");
    e.details.size = Some(1_048_576);
    e.details.offset = Some(4096);
    e.details.notes = Notes::BY_FD;
    out.push((
        e,
        head("fallocate", "/var/lib/containerd/fa")
            + r#","result":"ok","process":"#
            + PROCESS
            + r#","size":1048576,"offset":4096,"notes":["by_fd"]}"#,
    ));

    let digest = format!("sha256:{}", "b".repeat(64));
    let blob = format!("/var/lib/containerd/io.containerd.content.v1.content/blobs/{digest}")
        .replace("sha256:", "sha256/");
    let mut e = event(Op::Unlink, &blob);
    e.result = OpResult::Err(2);
    e.details.containerd = Some(Box::new(ContainerdView {
        root: path("/var/lib/containerd"),
        kind: StorageKind::Blob,
        namespace: Some("k8s.io".into()),
        layer_digest: Some(digest.clone()),
        images: vec!["registry.k8s.io/pause:3.10".into()],
        blob_digest: Some(digest.clone()),
        blob_role: Some(BlobRole::Layer),
        stale: true,
        verdict: Verdict::Foreign,
        reason: "pid 4242 comm rm (/usr/bin/rm)".into(),
        ..ContainerdView::default()
    }));
    out.push((
        e,
        head("unlink", &blob)
            + r#","result":"ENOENT","errno":2,"process":"#
            + PROCESS
            + &format!(
                r#","containerd":{{"root":"/var/lib/containerd","kind":"blob","namespace":"k8s.io","layer_digest":"{digest}","images":["registry.k8s.io/pause:3.10"],"blob_digest":"{digest}","blob_role":"layer","stale":true,"verdict":"foreign","reason":"pid 4242 comm rm (/usr/bin/rm)"}}}}"#
            ),
    ));

    out.push((
        event(Op::Rmdir, "/var/lib/containerd/d"),
        head("rmdir", "/var/lib/containerd/d") + r#","result":"ok","process":"# + PROCESS + "}",
    ));

    // A path that is not UTF-8: its display form, and its bytes in hex.
    let mut e = event(Op::Rename, "");
    e.path = PathBytes(b"/var/lib/containerd/a\xff".to_vec());
    e.new_path = Some(path("/var/lib/containerd/b"));
    e.details.overwritten = Some(Overwritten {
        inode: 9,
        dev: Dev::new(254, 1),
    });
    out.push((
        e,
        head("rename", r"/var/lib/containerd/a\\xff")
            + r#","new_path":"/var/lib/containerd/b","result":"ok","process":"#
            + PROCESS
            + r#","path_hex":"2f7661722f6c69622f636f6e7461696e6572642f61ff","overwritten":{"inode":9,"dev":"254:1"}}"#,
    ));

    let mut e = event(Op::Link, "/var/lib/containerd/l");
    e.new_path = Some(path("/var/lib/containerd/a/…/linked"));
    e.details.notes = Notes::NEW_PATH_TRUNCATED;
    out.push((
        e,
        head("link", "/var/lib/containerd/l")
            + r#","new_path":"/var/lib/containerd/a/…/linked","result":"ok","process":"#
            + PROCESS
            + r#","notes":["new_path_truncated"]}"#,
    ));

    let mut e = event(Op::Symlink, "/var/lib/containerd/s");
    e.new_path = Some(path("../target"));
    out.push((
        e,
        head("symlink", "/var/lib/containerd/s")
            + r#","new_path":"../target","result":"ok","process":"#
            + PROCESS
            + "}",
    ));

    let mut e = event(Op::Mknod, "/var/lib/containerd/wh");
    e.details.mode = Some(Mode(0));
    e.details.rdev = Some(Dev::new(0, 0));
    e.details.whiteout = Some(true);
    out.push((
        e,
        head("mknod", "/var/lib/containerd/wh")
            + r#","result":"ok","process":"#
            + PROCESS
            + r#","mode":"0000","rdev":"0:0","whiteout":true}"#,
    ));

    let mut e = event(Op::Mkdir, "/var/lib/containerd/m");
    e.result = OpResult::Err(17);
    e.details.mode = Some(Mode(0o755));
    out.push((
        e,
        head("mkdir", "/var/lib/containerd/m")
            + r#","result":"EEXIST","errno":17,"process":"#
            + PROCESS
            + r#","mode":"0755"}"#,
    ));

    let layer =
        "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/12/fs/usr/lib";
    let mut e = event(Op::Setxattr, layer);
    e.details.size = Some(1);
    e.details.xattr = Some(Xattr {
        name: b"trusted.overlay.opaque".to_vec(),
        value: Some(b"y".to_vec()),
    });
    e.details.containerd = Some(Box::new(ContainerdView {
        root: path("/var/lib/containerd"),
        kind: StorageKind::Snapshot,
        namespace: Some("k8s.io".into()),
        snapshotter: Some("overlayfs".into()),
        snapshot_id: Some(12),
        snapshot_key: Some(format!("sha256:{}", "c".repeat(64))),
        snapshot_kind: Some(SnapshotKind::Committed),
        layer_digest: Some(format!("sha256:{}", "d".repeat(64))),
        chain_id: Some(format!("sha256:{}", "c".repeat(64))),
        images: vec!["docker.io/library/pause:3.10".into()],
        path: Some(path("/usr/lib")),
        verdict: Verdict::Foreign,
        reason: "pid 4242 comm rm (/usr/bin/rm)".into(),
        ..ContainerdView::default()
    }));
    out.push((
        e,
        head("setxattr", layer)
            + r#","result":"ok","process":"#
            + PROCESS
            + &format!(
                r#","size":1,"xattr":{{"name":"trusted.overlay.opaque","value":"y","value_hex":"79"}},"containerd":{{"root":"/var/lib/containerd","kind":"snapshot","namespace":"k8s.io","snapshotter":"overlayfs","snapshot_id":12,"snapshot_key":"sha256:{c}","snapshot_kind":"committed","layer_digest":"sha256:{d}","chain_id":"sha256:{c}","images":["docker.io/library/pause:3.10"],"path":"/usr/lib","verdict":"foreign","reason":"pid 4242 comm rm (/usr/bin/rm)"}}}}"#,
                c = "c".repeat(64),
                d = "d".repeat(64)
            ),
    ));

    let mut e = event(Op::Removexattr, "/var/lib/containerd/rx");
    e.details.xattr = Some(Xattr {
        name: b"user.overlay.origin".to_vec(),
        value: None,
    });
    e.details.notes = Notes::BY_FD;
    out.push((
        e,
        head("removexattr", "/var/lib/containerd/rx")
            + r#","result":"ok","process":"#
            + PROCESS
            + r#","xattr":{"name":"user.overlay.origin"},"notes":["by_fd"]}"#,
    ));

    let mut e = event(Op::Chmod, "/var/lib/containerd/x");
    e.details.mode = Some(Mode(0o4755));
    out.push((
        e,
        head("chmod", "/var/lib/containerd/x")
            + r#","result":"ok","process":"#
            + PROCESS
            + r#","mode":"4755"}"#,
    ));

    // A truncated path; the owner unchanged (absent), the group changed.
    let mut e = event(Op::Chown, "/var/lib/containerd/a/…/victim");
    e.details.owner_gid = Some(1000);
    e.details.notes = Notes::PATH_TRUNCATED;
    out.push((
        e,
        head("chown", "/var/lib/containerd/a/…/victim")
            + r#","result":"ok","process":"#
            + PROCESS
            + r#","owner_gid":1000,"notes":["path_truncated"]}"#,
    ));
    out
}

#[test]
fn every_op_serializes_to_its_documented_record() {
    let cases = cases();
    let mut ops: Vec<Op> = cases.iter().map(|(e, _)| e.op).collect();
    ops.sort();
    assert_eq!(ops, Op::ALL, "one case per op");
    for (event, want) in cases {
        let got = serde_json::to_string(&event).expect("serializes");
        assert_eq!(got, want, "{}", event.op);
    }
}

#[test]
fn loss_records_and_gaps_serialize_to_their_documented_records() {
    let loss = LossEvent {
        time_ns: T,
        from_ns: T - 1_000_000_000,
        to_ns: T,
        lost: 41_234,
        kinds: BTreeMap::from([
            (LossKind::Op(Op::Unlink), 41_200),
            (LossKind::Exec, 33),
            (LossKind::PathUnresolved, 1),
        ]),
    };
    assert_eq!(
        serde_json::to_string(&loss).expect("loss"),
        r#"{"time":"2026-01-01T00:00:00.123456789Z","op":"loss","from":"2025-12-31T23:59:59.123456789Z","to":"2026-01-01T00:00:00.123456789Z","lost":41234,"kinds":{"exec":33,"path_unresolved":1,"unlink":41200}}"#
    );
    let gap = Gap {
        kind: GapKind::Downtime,
        from_ns: T - 1_000_000_000,
        to_ns: T,
        lost: None,
        kinds: BTreeMap::new(),
        reason: Some("unclean_stop".into()),
        recorded_ns: T,
    };
    assert_eq!(
        serde_json::to_string(&gap).expect("gap"),
        r#"{"kind":"downtime","from":"2025-12-31T23:59:59.123456789Z","to":"2026-01-01T00:00:00.123456789Z","reason":"unclean_stop","recorded":"2026-01-01T00:00:00.123456789Z"}"#
    );
    let gap = Gap {
        kind: GapKind::StoreFull,
        lost: Some(50),
        kinds: BTreeMap::from([("unlink".into(), 50)]),
        reason: Some("event store /var/lib/ctrwatch/events.db: disk full".into()),
        ..gap
    };
    assert_eq!(
        serde_json::to_string(&gap).expect("gap"),
        r#"{"kind":"store_full","from":"2025-12-31T23:59:59.123456789Z","to":"2026-01-01T00:00:00.123456789Z","lost":50,"kinds":{"unlink":50},"reason":"event store /var/lib/ctrwatch/events.db: disk full","recorded":"2026-01-01T00:00:00.123456789Z"}"#
    );
}
