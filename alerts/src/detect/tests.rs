use ctrwatch_event::{
    AncestorView, ContainerdView, Details, PathBytes, Protect, SnapshotKind, StorageKind, Xattr,
};

use super::*;

const S: i64 = 1_000_000_000;
const T0: i64 = 1_790_000_000 * S;

fn node() -> Node {
    Node {
        hostname: "edge".into(),
        machine_id: "0123".into(),
    }
}

fn script(pid: u32) -> Arc<ProcessView> {
    Arc::new(ProcessView {
        pid,
        ppid: 500,
        comm: "rm".into(),
        exe: Some("/usr/bin/rm".into()),
        cmdline: vec!["rm".into(), "-f".into(), "x".into()],
        ancestors: vec![
            AncestorView {
                pid: 500,
                comm: "cleanup.sh".into(),
                exe: Some("/usr/bin/bash".into()),
            },
            AncestorView {
                pid: 400,
                comm: "sshd-session".into(),
                exe: None,
            },
            AncestorView {
                pid: 1,
                comm: "systemd".into(),
                exe: None,
            },
        ],
        ..Default::default()
    })
}

fn view(kind: StorageKind, snap: Option<SnapshotKind>, verdict: Verdict) -> ContainerdView {
    ContainerdView {
        root: PathBytes(b"/var/lib/containerd".to_vec()),
        kind,
        snapshot_id: Some(7),
        snapshot_kind: snap,
        layer_digest: Some("sha256:abc".into()),
        images: vec!["docker.io/library/pause:3.6".into()],
        path: Some(PathBytes(b"/pause".to_vec())),
        verdict,
        reason: "pid 9 comm rm".into(),
        ..Default::default()
    }
}

fn ev(t: i64, op: Op, v: ContainerdView, p: Arc<ProcessView>) -> FileEvent {
    FileEvent {
        time_ns: t,
        mono_ns: 0,
        op,
        path: PathBytes(format!("/var/lib/containerd/snapshots/7/fs/f{t}").into_bytes()),
        new_path: None,
        result: OpResult::Ok,
        inode: None,
        dev: None,
        process: p,
        details: Details {
            containerd: Some(Box::new(v)),
            ..Default::default()
        },
    }
}

fn committed(verdict: Verdict) -> ContainerdView {
    view(
        StorageKind::Snapshot,
        Some(SnapshotKind::Committed),
        verdict,
    )
}

#[test]
fn foreign_change_judges_verdict_place_and_op() {
    let p = script(900);
    let sev = |e: &FileEvent| foreign_change(e).map(|f| f.severity);
    for op in [Op::Unlink, Op::Rmdir, Op::Truncate, Op::Rename] {
        assert_eq!(
            sev(&ev(T0, op, committed(Verdict::Foreign), p.clone())),
            Some(Severity::Critical),
            "{op:?}"
        );
        let meta = view(StorageKind::Metadata, None, Verdict::Foreign);
        assert_eq!(sev(&ev(T0, op, meta, p.clone())), Some(Severity::Critical));
        // Content: warning whatever the op.
        let blob = view(StorageKind::Blob, None, Verdict::Foreign);
        assert_eq!(sev(&ev(T0, op, blob, p.clone())), Some(Severity::Warning));
    }
    for op in [
        Op::OpenWrite,
        Op::Modify,
        Op::Fallocate,
        Op::Chmod,
        Op::Chown,
        Op::Setxattr,
        Op::Removexattr,
    ] {
        assert_eq!(
            sev(&ev(T0, op, committed(Verdict::Foreign), p.clone())),
            Some(Severity::Warning),
            "{op:?}"
        );
        let ingest = view(StorageKind::Ingest, None, Verdict::Foreign);
        assert_eq!(sev(&ev(T0, op, ingest, p.clone())), Some(Severity::Warning));
    }
    // Not its business: other verdicts, active snapshots, other places, creations, failures.
    for v in [Verdict::Owner, Verdict::Container] {
        assert_eq!(sev(&ev(T0, Op::Unlink, committed(v), p.clone())), None);
    }
    for (kind, snap) in [
        (StorageKind::Snapshot, Some(SnapshotKind::Active)),
        (StorageKind::Snapshot, None),
        (StorageKind::SnapshotTemp, None),
        (StorageKind::Tmpmount, None),
        (StorageKind::RuntimeState, None),
        (StorageKind::Other, None),
    ] {
        let e = ev(
            T0,
            Op::Unlink,
            view(kind, snap, Verdict::Foreign),
            p.clone(),
        );
        assert_eq!(sev(&e), None, "{kind:?} {snap:?}");
    }
    for op in [Op::Create, Op::Mkdir, Op::Link, Op::Symlink, Op::Mknod] {
        assert_eq!(
            sev(&ev(T0, op, committed(Verdict::Foreign), p.clone())),
            None
        );
    }
    let mut failed = ev(T0, Op::Unlink, committed(Verdict::Foreign), p.clone());
    failed.result = OpResult::Err(2);
    assert_eq!(sev(&failed), None);
    let mut outside = failed.clone();
    outside.result = OpResult::Ok;
    outside.details.containerd = None;
    assert_eq!(sev(&outside), None);
}

#[test]
fn opaque_leak_is_a_marker_set_on_a_committed_layer_by_anyone_but_containerd() {
    let p = script(900);
    let setx = |v: ContainerdView, name: &[u8], value: &[u8]| {
        let mut e = ev(T0, Op::Setxattr, v, p.clone());
        e.details.xattr = Some(Xattr {
            name: name.to_vec(),
            value: Some(value.to_vec()),
        });
        e
    };
    for name in [&b"trusted.overlay.opaque"[..], b"user.overlay.opaque"] {
        for v in [Verdict::Foreign, Verdict::Container] {
            assert!(opaque_leak(&setx(committed(v), name, b"y")).is_some());
        }
        assert!(opaque_leak(&setx(committed(Verdict::Owner), name, b"y")).is_none());
        let active = view(
            StorageKind::Snapshot,
            Some(SnapshotKind::Active),
            Verdict::Foreign,
        );
        assert!(opaque_leak(&setx(active, name, b"y")).is_none());
    }
    assert!(opaque_leak(&setx(committed(Verdict::Foreign), b"user.other", b"y")).is_none());
    assert!(
        opaque_leak(&setx(
            committed(Verdict::Foreign),
            b"trusted.overlay.opaque",
            b"x"
        ))
        .is_none()
    );
}

#[test]
fn the_tree_is_the_outermost_ancestor_below_the_launchers_or_the_unit() {
    assert_eq!(process_tree(&script(900)), "cleanup.sh(500)");
    let mut p = (*script(900)).clone();
    p.ancestors.clear();
    assert_eq!(process_tree(&p), "rm(900)");
    p.unit = Some("cleanup.service".into());
    assert_eq!(process_tree(&p), "unit cleanup.service");
    p.unit = Some("session-4.scope".into());
    assert_eq!(process_tree(&p), "rm(900)");
    p.ancestors = vec![
        AncestorView {
            pid: 600,
            comm: "containerd-shim-runc-v2".into(),
            exe: None,
        },
        AncestorView {
            pid: 1,
            comm: "systemd".into(),
            exe: None,
        },
    ];
    assert_eq!(process_tree(&p), "rm(900)");
}

fn config(body: &str) -> Config {
    Config::parse("test", body).unwrap_or_else(|e| panic!("{e:?}"))
}

#[test]
fn a_tree_deleting_20000_files_gives_one_alert_whose_last_revision_counts_them_all() {
    let mut d = Detector::new(&config(""), node());
    let now = T0;
    let mut out = Vec::new();
    // Many rm processes of one script, 20 000 deletions over 10 s, judged as they come.
    for i in 0..20_000i64 {
        let t = T0 + i * (10 * S / 20_000);
        let e = ev(
            t,
            Op::Unlink,
            committed(Verdict::Foreign),
            script(1000 + (i / 100) as u32),
        );
        d.event(&e, t);
        if i % 1000 == 0 {
            out.extend(d.tick(t));
        }
    }
    // The window (30 s) is not closed while events of it may still be queued.
    out.extend(d.tick(now + 29 * S));
    d.watermark(now + 29 * S);
    out.extend(d.tick(now + 33 * S));
    assert_eq!(out.len(), 1, "{out:#?}");
    // The capture's watermark passed its end: the final revision.
    d.watermark(now + 30 * S);
    out.extend(d.tick(now + 33 * S));
    assert!(d.tick(now + 40 * S).is_empty());
    let ids: std::collections::BTreeSet<_> = out.iter().map(|a| a.id.clone()).collect();
    assert_eq!(ids.len(), 1, "{out:#?}");
    assert_eq!(out.first().map(|a| a.rev), Some(1));
    let last = out.last().unwrap_or_else(|| panic!("no alert"));
    assert_eq!((last.rev, last.count), (out.len() as u64, 20_000));
    assert!(out.len() <= 3, "{} revisions", out.len());
    assert_eq!(last.severity, Severity::Critical);
    assert_eq!(last.sample_paths.len(), MAX_SAMPLE_PATHS);
    assert_eq!(last.events.len(), MAX_EVENTS);
    assert!(
        last.summary.contains("deleted 20000 files, first /pause in committed layer sha256:abc of docker.io/library/pause:3.6 (foreign: pid 9 comm rm)"),
        "{}",
        last.summary
    );
    assert!(
        last.command
            .starts_with("ctrwatch history /var/lib/containerd/snapshots/7/fs/f")
    );
    assert!(
        last.query_command
            .as_deref()
            .is_some_and(|q| q.starts_with("ctrwatch query --pid 1000 --since "))
    );
    assert_eq!(
        last.file.as_ref().and_then(|f| f.inner_path.clone()),
        Some(PathBytes(b"/pause".to_vec()))
    );
    // Revision 1 waited for the settle delay and had the burst's first 2 s.
    let first = &out[0];
    assert!(first.count >= 4000, "rev 1 count {}", first.count);
}

#[test]
fn trees_severities_rules_and_windows_make_separate_alerts() {
    let mut d = Detector::new(&config("[alerts]\ngroup_window = \"10s\"\n"), node());
    let other_tree = {
        let mut p = (*script(77)).clone();
        p.ancestors[0].pid = 501;
        Arc::new(p)
    };
    d.event(
        &ev(T0, Op::Unlink, committed(Verdict::Foreign), script(1)),
        T0,
    );
    d.event(
        &ev(T0, Op::Chmod, committed(Verdict::Foreign), script(1)),
        T0,
    );
    d.event(
        &ev(T0, Op::Unlink, committed(Verdict::Foreign), other_tree),
        T0,
    );
    // After the window: the same key opens a new alert.
    d.event(
        &ev(
            T0 + 11 * S,
            Op::Unlink,
            committed(Verdict::Foreign),
            script(1),
        ),
        T0 + 11 * S,
    );
    let mut out = d.tick(T0 + 11 * S);
    d.watermark(T0 + 30 * S);
    out.extend(d.tick(T0 + 30 * S));
    let ids: std::collections::BTreeSet<_> = out.iter().map(|a| a.id.clone()).collect();
    assert_eq!(ids.len(), 4, "{out:#?}");
    assert!(out.iter().all(|a| a.rev == 1 && a.count == 1));
}

#[test]
fn rules_obey_enabled_and_severity() {
    let e = ev(T0, Op::Unlink, committed(Verdict::Foreign), script(1));
    let mut off = Detector::new(&config("[rules.foreign-change]\nenabled = false\n"), node());
    off.event(&e, T0);
    assert!(off.flush().is_empty());
    let mut info = Detector::new(
        &config("[rules.foreign-change]\nseverity = \"info\"\n"),
        node(),
    );
    info.event(&e, T0);
    let out = info.flush();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].severity, Severity::Info);
}

/// A reload's rules apply to the events judged after it: a new severity opens a new alert,
/// a disabled rule folds nothing more (the group it had open is still emitted), and enabled
/// again it judges the next event.
#[test]
fn reconfigured_rules_judge_the_events_after_the_reload() {
    let mut d = Detector::new(&config(""), node());
    let e = |t: i64| ev(t, Op::Unlink, committed(Verdict::Foreign), script(1));
    d.event(&e(T0), T0);
    d.reconfigure(&config("[rules.foreign-change]\nseverity = \"info\"\n"));
    d.event(&e(T0 + 1), T0 + 1);
    d.reconfigure(&config("[rules.foreign-change]\nenabled = false\n"));
    d.event(&e(T0 + 2), T0 + 2);
    let out = d.flush();
    let seen: Vec<(Severity, u64)> = out.iter().map(|a| (a.severity, a.count)).collect();
    assert_eq!(seen, vec![(Severity::Critical, 1), (Severity::Info, 1)]);
    d.reconfigure(&config(""));
    d.event(&e(T0 + 3), T0 + 3);
    assert_eq!(d.flush().len(), 1);
}

#[test]
fn nothing_is_emitted_before_the_settle_delay_and_flush_emits_what_is_left() {
    let mut d = Detector::new(&config(""), node());
    d.event(
        &ev(T0, Op::Unlink, committed(Verdict::Foreign), script(1)),
        T0,
    );
    assert!(d.tick(T0 + S).is_empty());
    let out = d.tick(T0 + SETTLE.as_nanos() as i64);
    assert_eq!(out.len(), 1);
    d.event(
        &ev(
            T0 + 3 * S,
            Op::Unlink,
            committed(Verdict::Foreign),
            script(1),
        ),
        T0 + 3 * S,
    );
    // Without a watermark the window closes MAX_LAG after its end at the latest.
    let t = T0 + 30 * S + MAX_LAG.as_nanos() as i64;
    let rest = d.tick(t - 1);
    assert!(rest.is_empty());
    let rest = d.tick(t);
    assert_eq!(rest.len(), 1);
    assert_eq!(
        (rest[0].rev, rest[0].count, &rest[0].id),
        (2, 2, &out[0].id)
    );
    assert!(d.flush().is_empty());
    d.event(
        &ev(t, Op::Unlink, committed(Verdict::Foreign), script(1)),
        t,
    );
    assert_eq!(d.flush().len(), 1);
}

/// Protect's records raise `protect-denied` (critical) and `protect-would-deny` (warning),
/// not `foreign-change` (the syscall's own record is the change); a process looping on a
/// denied operation folds into one alert that counts the attempts.
#[test]
fn protect_verdicts_raise_their_rules_folded_per_tree() {
    let verdict = |t: i64, op: Op, protect: Protect| {
        let mut e = ev(t, op, committed(Verdict::Foreign), script(900));
        e.details.protect = Some(protect);
        if protect == Protect::Denied {
            e.result = OpResult::Err(1);
        }
        e
    };
    let would = verdict(T0, Op::Unlink, Protect::WouldDeny);
    assert!(wants(&would));
    assert_eq!(foreign_change(&would), None);
    assert_eq!(
        protect_verdict(&would),
        Some(Finding {
            rule: RuleId::ProtectWouldDeny,
            severity: Severity::Warning
        })
    );
    // Nor does the metadata check take a would-deny open of a blob for a write.
    let blob = format!(
        "/var/lib/containerd/io.containerd.content.v1.content/blobs/sha256/{}",
        "a".repeat(64)
    );
    let mut open = ev(
        T0,
        Op::OpenWrite,
        view(StorageKind::Blob, None, Verdict::Foreign),
        script(900),
    );
    open.path = PathBytes(blob.into_bytes());
    assert!(mismatch::candidate(&open).is_some());
    open.details.protect = Some(Protect::WouldDeny);
    assert!(mismatch::candidate(&open).is_none());
    let mut d = Detector::new(&config(""), node());
    for i in 0..1000 {
        d.event(&verdict(T0 + i, Op::Unlink, Protect::Denied), T0);
    }
    d.event(&verdict(T0 + 2000, Op::OpenWrite, Protect::Denied), T0);
    d.event(&would, T0);
    let out = d.flush();
    assert_eq!(out.len(), 2, "{out:#?}");
    let denied = out
        .iter()
        .find(|a| a.rule == RuleId::ProtectDenied)
        .unwrap_or_else(|| panic!("no protect-denied: {out:#?}"));
    assert_eq!((denied.severity, denied.count), (Severity::Critical, 1001));
    assert!(
        denied.summary.starts_with(
            "protect mode denied rm -f x (EPERM): it tried to delete/open for writing 1001 times, first /pause in committed layer sha256:abc"
        ),
        "{}",
        denied.summary
    );
    let would = out
        .iter()
        .find(|a| a.rule == RuleId::ProtectWouldDeny)
        .unwrap_or_else(|| panic!("no protect-would-deny: {out:#?}"));
    assert_eq!((would.severity, would.count), (Severity::Warning, 1));
    assert!(
        would.summary.contains("would have denied")
            && would.summary.contains("tried to delete /pause"),
        "{}",
        would.summary
    );
    // Off: nothing.
    let mut off = Detector::new(
        &config(
            "[rules.protect-denied]\nenabled = false\n[rules.protect-would-deny]\nenabled = false\n[rules.foreign-change]\nenabled = false\n[rules.opaque-leak]\nenabled = false\n",
        ),
        node(),
    );
    assert!(!off.any_enabled());
    off.event(&verdict(T0, Op::Unlink, Protect::Denied), T0);
    assert!(off.flush().is_empty());
}

/// A denied create, mkdir, link or setattr is told as what it was, not as a write or a change
/// (the hooks added after the first protect alerts: a reader acts on these words).
#[test]
fn protect_attempts_name_the_operation() {
    for (op, words) in [
        (Op::Create, "create"),
        (Op::Mkdir, "make the directory"),
        (Op::Mknod, "make the device node or FIFO"),
        (Op::Symlink, "make the symlink"),
        (Op::Link, "hard-link"),
        (Op::Chmod, "change the mode of"),
        (Op::Chown, "change the owner of"),
        (Op::Modify, "change the times of"),
        (Op::OpenWrite, "open for writing"),
        (Op::Rmdir, "delete"),
    ] {
        assert_eq!(super::attempt(op), words, "{op:?}");
    }
}
