//! SIGHUP applies the alert rules and the sinks without a restart: the real daemon
//! (`ctrwatch run --config`), real signals, real webhook receivers on 127.0.0.1, and for the
//! detections a real containerd (tests/src/containerd.rs) and real foreign writers.
//!
//! * a reload that replaces a sink: the next alert reaches the new one, and none the removed
//!   one; the removed sink put back takes up what was pending for it when it left;
//! * a reload that changes a rule's severity: the next alert carries it (the daemon's own
//!   `config-invalid`, and the detections' `foreign-change`);
//! * a reload that disables a rule: its alerts stop, while another rule's still arrive.
//!
//! Alerts on demand: a refused reload raises `config-invalid` (to the sinks in effect; an
//! edited file is a new alert), so the tests need no timer. Needs root.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::{OsStr, OsString},
    path::Path,
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tests::{
    Watcher,
    containerd::{Containerd, Layer},
    receiver::{Mode, Receiver},
    temp_dir, wait_history, write_config,
};

const FSOP: &str = env!("CARGO_BIN_EXE_fsop");
/// Generous: the machine running the tests may be loaded.
const DEADLINE: Duration = Duration::from_secs(90);

/// A webhook sink `name` for the receiver's `/NAME`.
fn sink(name: &str, r: &Receiver) -> String {
    format!(
        "[[sinks]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"{}\"\ntimeout = \"2s\"\n",
        r.url(&format!("/{name}"))
    )
}

/// No heartbeat (its first beat would be one more alert to tell apart).
const QUIET: &str = "[rules.heartbeat]\nenabled = false\n\n";

/// The alert bodies of `rule` the receiver got.
fn bodies(r: &Receiver, rule: &str) -> Vec<Value> {
    r.received()
        .into_iter()
        .map(|x| x.json())
        .filter(|b| b["rule"] == rule)
        .collect()
}

/// `config-invalid` revisions at `r` about a refused file holding `marker`.
fn refusals_of(r: &Receiver, marker: &str) -> Vec<Value> {
    bodies(r, "config-invalid")
        .into_iter()
        .filter(|b| {
            b["details"]["error"]
                .as_str()
                .unwrap_or("")
                .contains(marker)
        })
        .collect()
}

/// Waits until `done` holds, within [`DEADLINE`]; fails showing `seen()`.
fn until(what: &str, done: impl Fn() -> bool, seen: impl Fn() -> String) {
    tests::wait_until(what, DEADLINE, done, seen);
}

fn shown(r: &Receiver) -> String {
    r.received()
        .iter()
        .map(|x| format!("{} {}", x.path(), x.json()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The daemon's log until `text` appears `n` times.
fn log_count(daemon: &Watcher, text: &str, n: usize) {
    until(
        &format!("{n} × {text:?} in the log"),
        || daemon.stderr().matches(text).count() >= n,
        || daemon.stderr(),
    );
}

/// Reloads a good file and waits until the daemon applied it (its `n`th good reload).
fn reload_good(daemon: &Watcher, config: &Path, text: &str, n: usize) {
    write_config(config, text);
    daemon.signal(libc::SIGHUP);
    log_count(daemon, "reloaded the configuration", n);
}

/// Reloads a file refused for an unknown key named `marker` (a `config-invalid` alert about
/// it goes to the sinks in effect), and waits for the `n`th refusal.
fn reload_bad(daemon: &Watcher, config: &Path, good: &str, marker: &str, n: usize) {
    write_config(config, &format!("[watch]\n{marker} = 1\n\n{good}"));
    daemon.signal(libc::SIGHUP);
    log_count(daemon, "reloading the configuration failed", n);
}

/// `ctrwatch run --root ROOT --store STORE --config CONFIG`.
fn start_daemon(roots: &[&Path], store: &Path, config: &Path) -> Watcher {
    let mut args: Vec<OsString> = vec!["run".into()];
    for root in roots {
        args.extend(["--root".into(), root.as_os_str().to_owned()]);
    }
    args.extend([
        "--store".into(),
        store.into(),
        "--config".into(),
        config.into(),
    ]);
    Watcher::start_command(&args)
}

/// A reload replaces sink `a` by sink `b`: the next alert reaches `b` and not `a`. Then `a`,
/// failing, is removed while an alert is pending for it, and put back once its receiver
/// works: it gets that alert. On a daemon whose sinks are set once per run, `b` never gets
/// anything.
#[test]
fn a_reload_adds_removes_and_puts_back_sinks() {
    tests::require_root();
    let base = temp_dir("reload-sinks");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let store = base.join("store/events.db");
    let config = base.join("ctrwatch.toml");
    let ra = Receiver::start(Mode::Accept);
    let rb = Receiver::start(Mode::Accept);
    let only_a = format!("{QUIET}{}", sink("a", &ra));
    write_config(&config, &only_a);
    let mut daemon = start_daemon(&[&root], &store, &config);
    // `a` works.
    reload_bad(&daemon, &config, &only_a, "marker_one", 1);
    until(
        "a gets the first refusal",
        || !refusals_of(&ra, "marker_one").is_empty(),
        || shown(&ra),
    );

    // Replaced by `b`: the next alert goes to `b` only.
    let only_b = format!("{QUIET}{}", sink("b", &rb));
    reload_good(&daemon, &config, &only_b, 1);
    reload_bad(&daemon, &config, &only_b, "marker_two", 2);
    until(
        "the added sink b gets the alert raised after the reload",
        || !refusals_of(&rb, "marker_two").is_empty(),
        || format!("b:\n{}\na:\n{}", shown(&rb), shown(&ra)),
    );
    // `b` got it; `a`'s worker ended at the reload, and the alert was never `a`'s.
    assert!(
        refusals_of(&ra, "marker_two").is_empty(),
        "the removed sink a still got an alert: {}",
        shown(&ra)
    );
    assert!(
        refusals_of(&rb, "marker_one").is_empty(),
        "b got an alert raised before it was added"
    );

    // `a` back, failing: an alert pending for it (delivered to `b`), then `a` removed...
    ra.set_mode(Mode::Status(503));
    let both = format!("{QUIET}{}\n{}", sink("a", &ra), sink("b", &rb));
    reload_good(&daemon, &config, &both, 2);
    reload_bad(&daemon, &config, &both, "marker_three", 3);
    until(
        "b gets the third refusal",
        || !refusals_of(&rb, "marker_three").is_empty(),
        || shown(&rb),
    );
    until(
        "a refuses the third refusal at least once",
        || {
            ra.received().iter().any(|x| {
                x.json()["details"]["error"]
                    .to_string()
                    .contains("marker_three")
            })
        },
        || shown(&ra),
    );
    reload_good(&daemon, &config, &only_b, 3);
    // ... and put back, working: what was pending for it when it left reaches it.
    ra.set_mode(Mode::Accept);
    reload_good(&daemon, &config, &both, 4);
    until(
        "the sink put back gets the alert that was pending for it",
        || {
            ra.received().iter().any(|x| {
                x.accepted()
                    && x.json()["details"]["error"]
                        .to_string()
                        .contains("marker_three")
            })
        },
        || shown(&ra),
    );
    assert!(
        daemon.wait_exit(Duration::ZERO).is_none(),
        "the daemon exited"
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}

/// A reload while an alert is being delivered (the receiver holds the request unanswered)
/// does not send it again: the new worker of the sink waits for the old one to finish its
/// request and goes on after it. Twice: a reload that leaves the sink as it was, and one that
/// changes it (its timeout). Each alert arrives exactly once; the next alert, raised after
/// the held one was answered, comes behind any repeat (one target's deliveries go out in
/// outbox order), so counting once it arrived is conclusive. On a daemon whose new workers
/// start on the outbox as it is, the held alert is sent a second time.
#[test]
fn a_reload_during_a_delivery_does_not_send_it_twice() {
    tests::require_root();
    let base = temp_dir("reload-inflight");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let store = base.join("store/events.db");
    let config = base.join("ctrwatch.toml");
    let r = Receiver::start(Mode::Hold);
    // Longer than the receiver holds a request: the held delivery succeeds.
    let with_timeout = |t: &str| {
        format!(
            "{QUIET}[[sinks]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"{}\"\ntimeout = \"{t}\"\n",
            r.url("/a")
        )
    };
    let first = with_timeout("150s");
    write_config(&config, &first);
    let mut daemon = start_daemon(&[&root], &store, &config);
    let arrived = |marker: &str| {
        r.received()
            .iter()
            .filter(|x| {
                x.accepted()
                    && x.json()["details"]["error"]
                        .as_str()
                        .unwrap_or("")
                        .contains(marker)
            })
            .count()
    };
    let held = |n: usize| {
        until(
            &format!("{n} request(s) held by the receiver"),
            || r.held() >= n,
            || format!("held {}; answered:\n{}", r.held(), shown(&r)),
        );
    };
    let mut good_reloads = 0;
    for (n, (held_marker, next_marker, reloaded)) in [
        ("marker_held_one", "marker_next_one", first.clone()),
        ("marker_held_two", "marker_next_two", with_timeout("140s")),
    ]
    .into_iter()
    .enumerate()
    {
        r.set_mode(Mode::Hold);
        // An alert whose delivery the receiver holds...
        reload_bad(&daemon, &config, &first, held_marker, 2 * n + 1);
        held(1);
        // ... a good reload while it is held, then the receiver answers.
        good_reloads += 1;
        reload_good(&daemon, &config, &reloaded, good_reloads);
        r.set_mode(Mode::Accept);
        // The next alert arrives behind any repeat of the held one.
        reload_bad(&daemon, &config, &first, next_marker, 2 * n + 2);
        until(
            &format!("the alert about {next_marker} arrives"),
            || arrived(next_marker) >= 1,
            || shown(&r),
        );
        assert_eq!(
            arrived(held_marker),
            1,
            "the alert in flight at the reload arrived {} times (reload {}):\n{}",
            arrived(held_marker),
            n + 1,
            shown(&r)
        );
        assert_eq!(arrived(next_marker), 1, "{}", shown(&r));
    }
    assert_eq!(r.held(), 0, "a request still held:\n{}", shown(&r));
    assert!(
        daemon.wait_exit(Duration::ZERO).is_none(),
        "the daemon exited"
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}

/// `[alerts] node_name` follows a reload: the daemon's own rules' alerts raised after it name
/// the new node (`config-invalid` here; the detections' in
/// `a_reload_changes_and_disables_the_detections`), and no restart is asked for when the
/// checks that keep their node (metadata and layer checks) are off. On a daemon that names
/// its node once per run, the second alert still carries the first name.
#[test]
fn a_reload_renames_the_node() {
    tests::require_root();
    let base = temp_dir("reload-node");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let store = base.join("store/events.db");
    let config = base.join("ctrwatch.toml");
    let r = Receiver::start(Mode::Accept);
    let text = |node: &str| {
        format!(
            "[alerts]\nnode_name = \"{node}\"\n\n{QUIET}[rules.metadata-mismatch]\nenabled = false\n\n\
             [rules.layer-damaged]\nenabled = false\n\n[rules.after-crash-verify]\nenabled = false\n\n\
             [rules.opaque-leak]\nenabled = false\n\n{}",
            sink("a", &r)
        )
    };
    write_config(&config, &text("edge-before"));
    let mut daemon = start_daemon(&[&root], &store, &config);
    let node_of = |marker: &str| -> Vec<Value> {
        refusals_of(&r, marker)
            .into_iter()
            .map(|b| b["node"]["hostname"].clone())
            .collect()
    };
    reload_bad(&daemon, &config, &text("edge-before"), "marker_one", 1);
    until(
        "the first refusal",
        || !node_of("marker_one").is_empty(),
        || shown(&r),
    );
    assert_eq!(node_of("marker_one"), ["edge-before"], "{}", shown(&r));
    reload_good(&daemon, &config, &text("edge-after"), 1);
    reload_bad(&daemon, &config, &text("edge-after"), "marker_two", 2);
    until(
        "the second refusal",
        || !node_of("marker_two").is_empty(),
        || shown(&r),
    );
    assert_eq!(node_of("marker_two"), ["edge-after"], "{}", shown(&r));
    assert!(
        !daemon.stderr().contains("node_name"),
        "node_name waits for a restart:\n{}",
        daemon.stderr()
    );
    assert!(
        daemon.wait_exit(Duration::ZERO).is_none(),
        "the daemon exited"
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}

/// The daemon's own rules: a reload that changes `config-invalid`'s severity makes the next
/// one carry it; a reload that disables it silences it while another rule (the heartbeat,
/// enabled by the same reload) still arrives.
#[test]
fn a_reload_changes_and_disables_the_daemons_own_rules() {
    tests::require_root();
    let base = temp_dir("reload-own-rules");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let store = base.join("store/events.db");
    let config = base.join("ctrwatch.toml");
    let r = Receiver::start(Mode::Accept);
    let default = format!("{QUIET}{}", sink("hook", &r));
    write_config(&config, &default);
    let daemon = start_daemon(&[&root], &store, &config);
    reload_bad(&daemon, &config, &default, "marker_one", 1);
    until(
        "the first refusal, at the default severity",
        || !refusals_of(&r, "marker_one").is_empty(),
        || shown(&r),
    );
    assert_eq!(refusals_of(&r, "marker_one")[0]["severity"], "warning");

    // A new severity: the next alert carries it.
    let critical = format!(
        "{QUIET}[rules.config-invalid]\nseverity = \"critical\"\n\n{}",
        sink("hook", &r)
    );
    reload_good(&daemon, &config, &critical, 1);
    reload_bad(&daemon, &config, &critical, "marker_two", 2);
    until(
        "the refusal after the reload",
        || !refusals_of(&r, "marker_two").is_empty(),
        || shown(&r),
    );
    let after = refusals_of(&r, "marker_two");
    assert!(
        after.iter().all(|b| b["severity"] == "critical"),
        "the reloaded severity is not carried: {after:#?}"
    );

    // Disabled, and the heartbeat enabled: a beat comes, the refusal's alert does not.
    let disabled = format!(
        "[rules.config-invalid]\nenabled = false\n\n[rules.heartbeat]\nenabled = true\n\
         interval = \"10s\"\n\n{}",
        sink("hook", &r)
    );
    reload_good(&daemon, &config, &disabled, 2);
    reload_bad(&daemon, &config, &disabled, "marker_three", 3);
    let beats_before = bodies(&r, "heartbeat").len();
    // Two beats after the refusal: the refusal's alert, had it been raised, was written to
    // the outbox before them and delivered first (one target delivers in outbox order).
    until(
        "two heartbeats after the refusal",
        || bodies(&r, "heartbeat").len() >= beats_before + 2,
        || shown(&r),
    );
    assert!(
        refusals_of(&r, "marker_three").is_empty(),
        "the disabled rule still alerted: {}",
        shown(&r)
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}

/// The detections: a foreign unlink in a committed layer after a reload that sets
/// `foreign-change`'s severity to `info` alerts at `info`; after a reload that disables it, a
/// foreign unlink raises nothing while `opaque-leak` (the same events' other rule) still
/// alerts; enabled again, the next unlink alerts, alone.
#[test]
fn a_reload_changes_and_disables_the_detections() {
    tests::require_root();
    const NS: &str = "default";
    let dir = temp_dir("reload-detect");
    let cd = Containerd::start().expect("containerd");
    let r = Receiver::start(Mode::Accept);
    let config = dir.join("ctrwatch.toml");
    let store = dir.join("events.db");
    let named = |node: &str, rules: &str| {
        format!(
            "[alerts]\ngroup_window = \"2s\"\nnode_name = \"{node}\"\n\n{QUIET}{rules}\n{}",
            sink("hook", &r)
        )
    };
    let text = |rules: &str| named("edge-renamed", rules);
    write_config(&config, &named("edge-started", ""));
    let daemon = start_daemon(&[cd.root(), cd.state()], &store, &config);
    let built = cd
        .build_image_info(
            "test.local/ctrwatch/reload-detect:1",
            &[
                Layer::base().expect("base"),
                Layer::new()
                    .dir("opq")
                    .file("one", "1\n")
                    .file("two", "2\n")
                    .file("three", "3\n"),
            ],
        )
        .expect("image");
    cd.import(&built.archive, NS).expect("import");
    let upper = cd.snapshot_dir(NS, &built.chain_ids[1]).expect("upper dir");
    // The unpack is recorded (and the layer known committed) before anything foreign.
    wait_history(&store, &upper.join("fs/three"), "create");
    let unlink = |name: &str| {
        let path = upper.join("fs").join(name);
        let out = Command::new(FSOP)
            .args([OsStr::new("unlink"), path.as_os_str()])
            .output()
            .expect("fsop");
        assert!(out.status.success(), "unlink {name}: {out:?}");
    };
    let of_file = |name: &str| -> Vec<Value> {
        bodies(&r, "foreign-change")
            .into_iter()
            .filter(|b| b["file"]["inner_path"] == format!("/{name}"))
            .collect()
    };
    let mentions = |name: &str| -> Vec<Value> {
        bodies(&r, "foreign-change")
            .into_iter()
            .filter(|b| b.to_string().contains(&format!("/fs/{name}")))
            .collect()
    };

    // The severity and the node's name reloaded: the next alert carries them (the rule's
    // own severity is critical here).
    reload_good(
        &daemon,
        &config,
        &text("[rules.foreign-change]\nseverity = \"info\"\n"),
        1,
    );
    unlink("one");
    until(
        "foreign-change for /one",
        || !of_file("one").is_empty(),
        || shown(&r),
    );
    let one = of_file("one");
    assert!(
        one.iter().all(|b| b["severity"] == "info"),
        "the reloaded severity is not carried: {one:#?}"
    );
    assert!(
        one.iter().all(|b| b["node"]["hostname"] == "edge-renamed"),
        "the reloaded node name is not carried: {one:#?}"
    );

    // Disabled: the unlink of /two raises nothing; the opaque marker set after it does.
    reload_good(
        &daemon,
        &config,
        &text("[rules.foreign-change]\nenabled = false\n"),
        2,
    );
    unlink("two");
    let opq = upper.join("fs/opq");
    let out = Command::new(FSOP)
        .args([
            OsStr::new("setxattr"),
            opq.as_os_str(),
            OsStr::new("trusted.overlay.opaque"),
            OsStr::new("y"),
        ])
        .output()
        .expect("fsop");
    assert!(out.status.success(), "setxattr: {out:?}");
    until(
        "opaque-leak, the other rule, still alerts",
        || !bodies(&r, "opaque-leak").is_empty(),
        || shown(&r),
    );

    // Enabled again: /three alerts. Had /two been judged, its alert (earlier in the outbox)
    // would have come first, or /three would have joined its group.
    reload_good(&daemon, &config, &text(""), 3);
    unlink("three");
    until(
        "foreign-change for /three",
        || !of_file("three").is_empty(),
        || shown(&r),
    );
    assert!(
        mentions("two").is_empty(),
        "the disabled rule judged /two: {:#?}",
        mentions("two")
    );
    daemon.stop();
    cd.stop().expect("containerd stop");
    let _ = std::fs::remove_dir_all(dir);
}

/// Every detection off at the start (no detection thread runs), turned on by a reload: the
/// change made after the reload raises `foreign-change`; the one made before it, while the
/// rules were off, is never judged (it would be in the same alert or an earlier one).
#[test]
fn detections_off_at_the_start_are_turned_on_by_a_reload() {
    tests::require_root();
    const NS: &str = "default";
    let dir = temp_dir("reload-detect-on");
    let cd = Containerd::start().expect("containerd");
    let r = Receiver::start(Mode::Accept);
    let config = dir.join("ctrwatch.toml");
    let store = dir.join("events.db");
    let text = |enabled: bool| {
        format!(
            "[alerts]\ngroup_window = \"2s\"\n\n{QUIET}[rules.foreign-change]\nenabled = {enabled}\n\n\
             [rules.opaque-leak]\nenabled = {enabled}\n\n{}",
            sink("hook", &r)
        )
    };
    write_config(&config, &text(false));
    let daemon = start_daemon(&[cd.root(), cd.state()], &store, &config);
    let built = cd
        .build_image_info(
            "test.local/ctrwatch/reload-detect-on:1",
            &[
                Layer::base().expect("base"),
                Layer::new().file("before", "1\n").file("after", "2\n"),
            ],
        )
        .expect("image");
    cd.import(&built.archive, NS).expect("import");
    let upper = cd.snapshot_dir(NS, &built.chain_ids[1]).expect("upper dir");
    wait_history(&store, &upper.join("fs/after"), "create");
    let unlink = |name: &str| {
        let path = upper.join("fs").join(name);
        let out = Command::new(FSOP)
            .args([OsStr::new("unlink"), path.as_os_str()])
            .output()
            .expect("fsop");
        assert!(out.status.success(), "unlink {name}: {out:?}");
    };
    let mentions = |name: &str| -> Vec<Value> {
        bodies(&r, "foreign-change")
            .into_iter()
            .filter(|b| b.to_string().contains(&format!("/fs/{name}")))
            .collect()
    };
    // Off: stored, not judged.
    unlink("before");
    wait_history(&store, &upper.join("fs/before"), "unlink");
    reload_good(&daemon, &config, &text(true), 1);
    unlink("after");
    until(
        "foreign-change for /after",
        || !mentions("after").is_empty(),
        || shown(&r),
    );
    assert!(
        mentions("before").is_empty(),
        "a change made while the rule was off was judged: {:#?}",
        mentions("before")
    );
    daemon.stop();
    cd.stop().expect("containerd stop");
    let _ = std::fs::remove_dir_all(dir);
}
