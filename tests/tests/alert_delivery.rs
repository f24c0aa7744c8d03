//! Durable alert delivery through the real daemon (`ctrwatch run --config`), to real
//! receivers on 127.0.0.1: alerts are kept in the store's outbox before any attempt, retried
//! through refusals, errors, timeouts and error codes, delivered in order per rule, survive
//! kill -9 and restarts, and the outbox bound drops (and reports) only what it must.
//!
//! The alerts come from what the daemon raises today from real events: `heartbeat`, and
//! `history-gap` for kernel loss (a flood while the daemon is held back with SIGSTOP, as in
//! loss.rs) and for a restart after kill -9.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    Watcher, ctrwatch, json_lines,
    receiver::{Mode, Received, Receiver, verify_dingtalk, verify_standard_webhook},
    temp_dir,
};

const FSOP: &str = env!("CARGO_BIN_EXE_fsop");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const DING_SECRET: &str = "SECding0123456789abcdef";

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("ctrwatch.toml");
    std::fs::write(&p, body).expect("config");
    p
}

fn start_daemon(root: &Path, store: &Path, config: &Path) -> Watcher {
    let args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        root.into(),
        "--store".into(),
        store.into(),
        "--config".into(),
        config.into(),
        "--ring-buffer-mb".into(),
        "1".into(),
    ];
    Watcher::start_command(&args)
}

/// `ctrwatch alerts --json`: every alert in the outbox with its deliveries.
fn outbox(store: &Path) -> Vec<Value> {
    let (code, out, err) = ctrwatch(&[
        OsStr::new("alerts"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
        OsStr::new("--limit"),
        OsStr::new("100000"),
    ]);
    assert_eq!(code, 0, "ctrwatch alerts: {err}");
    json_lines(&out)
}

fn wait_outbox(
    store: &Path,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = outbox(store);
        if pred(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "outbox: {what} not within {timeout:?}:\n{}",
            rows.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn deliveries(row: &Value) -> Vec<Value> {
    row["deliveries"].as_array().cloned().unwrap_or_default()
}

/// Floods the root with failing unlinks while the daemon is stopped, so that its 1 MiB ring
/// buffer overflows: a real kernel loss, hence a history-gap alert. Returns once the daemon
/// has read the full buffer.
fn kernel_loss(daemon: &Watcher, store: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    daemon.signal(libc::SIGSTOP);
    let out = Command::new(FSOP)
        .args([OsStr::new("flood"), dir.as_os_str(), OsStr::new("40000")])
        .output()
        .expect("flood");
    daemon.signal(libc::SIGCONT);
    assert!(out.status.success(), "{out:?}");
    // Let it drain the full ring buffer before anything else happens (the workload after it
    // must lose nothing). Not a fixed wait, which a daemon held back by a loaded machine can
    // outlast: drained once an unlink made after the flood is stored, the buffer being read
    // in order (and there was room for it). A probe made while the buffer was still full is
    // lost, so a new one is made until one is stored.
    let probes = dir.join("drained-*");
    let deadline = Instant::now() + Duration::from_secs(120);
    for n in 0.. {
        let _ = std::fs::remove_file(dir.join(format!("drained-{n}")));
        std::thread::sleep(Duration::from_millis(500));
        let (code, out, err) = ctrwatch(&[
            OsStr::new("query"),
            OsStr::new("--store"),
            store.as_os_str(),
            OsStr::new("--path"),
            probes.as_os_str(),
            OsStr::new("--json"),
        ]);
        assert_eq!(code, 0, "{err}");
        let stored = json_lines(&out);
        if !stored.is_empty() {
            let names: Vec<&str> = stored
                .iter()
                .filter_map(|v| v["path"].as_str()?.rsplit('/').next())
                .collect();
            eprintln!(
                "{}: drained; stored of {} probes: {names:?}",
                dir.display(),
                n + 1
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not drain its ring buffer within 120 s after the flood"
        );
    }
}

/// A webhook request the sink counts as delivered: any 2xx (the webhook kind does not read
/// the body; an error code in a 200 is only a failure for the robots).
fn hook_delivered(x: &Received) -> bool {
    x.path() == "/hook" && matches!(x.answered, Mode::Accept | Mode::Body200(_))
}

fn webhook_requests(r: &Receiver) -> Vec<Received> {
    r.received()
        .into_iter()
        .filter(|x| x.path() == "/hook")
        .collect()
}

#[test]
fn undelivered_alerts_survive_kill_9_and_are_delivered_by_the_next_daemon() {
    let dir = temp_dir("alerts-restart");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store = dir.join("events.db");
    let r = Receiver::start(Mode::Refuse);
    let config = write_config(
        &dir,
        &format!(
            "[rules.heartbeat]\ninterval = \"10s\"\n\n[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\ntimeout = \"1s\"\n",
            r.url("/hook")
        ),
    );
    let mut a = start_daemon(&root, &store, &config);
    // The first run's heartbeat is in the outbox, and its delivery has failed.
    let rows = wait_outbox(
        &store,
        "a heartbeat tried and pending",
        Duration::from_secs(60),
        |rows| {
            rows.iter().any(|r| {
                r["rule"] == "heartbeat"
                    && deliveries(r)
                        .iter()
                        .any(|d| d["state"] == "pending" && d["attempts"].as_u64() >= Some(1))
            })
        },
    );
    let first_id = rows
        .iter()
        .find(|r| r["rule"] == "heartbeat")
        .and_then(|r| r["id"].as_str())
        .unwrap_or("")
        .to_owned();
    let pending = rows
        .iter()
        .flat_map(deliveries)
        .find(|d| d["state"] == "pending")
        .unwrap_or_default();
    assert!(
        pending["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("connection refused"),
        "{pending}"
    );
    assert!(!pending.to_string().contains(&SECRET[6..]), "{pending}");
    a.signal(libc::SIGKILL);
    // (60 s: a killed daemon takes seconds to go, the kernel detaching its programs.)
    assert!(
        a.wait_exit(Duration::from_secs(60)).is_some(),
        "kill -9 did not end the daemon"
    );

    // The receiver is back, but no daemon: nothing can arrive.
    r.set_mode(Mode::Accept);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        webhook_requests(&r).is_empty(),
        "delivered without a daemon?"
    );

    let b = start_daemon(&root, &store, &config);
    let got = r.wait_for(
        "the first run's heartbeat and the unclean-stop gap",
        Duration::from_secs(60),
        |rs| {
            let bodies: Vec<Value> = rs
                .iter()
                .filter(|x| x.path() == "/hook")
                .map(Received::json)
                .collect();
            bodies.iter().any(|v| v["id"] == first_id.as_str())
                && bodies.iter().any(|v| {
                    v["rule"] == "history-gap"
                        && v["summary"].as_str().unwrap_or("").contains("unclean stop")
                })
        },
    );
    for req in got.iter().filter(|x| x.path() == "/hook") {
        verify_standard_webhook(req, SECRET).expect("signature");
        let v = req.json();
        assert_eq!(
            req.header("webhook-id"),
            Some(format!("{}.{}", v["id"].as_str().unwrap_or(""), v["rev"]).as_str())
        );
    }
    // The outbox says so.
    // (Recorded right after the answer; 60 s for a loaded machine.)
    wait_outbox(
        &store,
        "the first heartbeat delivered",
        Duration::from_secs(60),
        |rows| {
            rows.iter().any(|r| {
                r["id"] == first_id.as_str()
                    && deliveries(r).iter().all(|d| d["state"] == "delivered")
            })
        },
    );
    let table = ctrwatch(&[
        OsStr::new("alerts"),
        OsStr::new("--store"),
        store.as_os_str(),
    ])
    .1;
    assert!(table.contains("-> hook http://127.0.0.1"), "{table}");
    assert!(table.contains("delivered"), "{table}");
    assert!(!table.contains(&SECRET[6..]));
    b.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_outage_of_refusals_errors_timeouts_and_error_codes_loses_no_alert_and_keeps_order() {
    let dir = temp_dir("alerts-outage");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("work")).expect("mkdir");
    let store = dir.join("events.db");
    let r = Receiver::start(Mode::Refuse);
    let config = write_config(
        &dir,
        &format!(
            "[alerts]\ngroup_window = \"1s\"\n\n[rules.heartbeat]\ninterval = \"10s\"\n\n\
             [[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\ntimeout = \"1s\"\n\n\
             [[sinks]]\nname = \"ding\"\nkind = \"dingtalk\"\nurl = \"{}\"\nsecret = \"{DING_SECRET}\"\ntimeout = \"1s\"\nrate_per_minute = 600\n",
            r.url("/hook"),
            r.url("/dingtalk/robot/send?access_token=tok")
        ),
    );
    let daemon = start_daemon(&root, &store, &config);
    let stages = [
        Mode::Refuse,
        Mode::Status(500),
        Mode::Slow(Duration::from_secs(3)),
        Mode::Body200(r#"{"errcode":310000,"errmsg":"sign not match"}"#.into()),
    ];
    let mut work_ops = 0u64;
    for (i, mode) in stages.iter().enumerate() {
        r.set_mode(mode.clone());
        // An alert raised during this stage of the outage...
        kernel_loss(&daemon, &store, &root.join(format!("flood-{i}")));
        // ...while the daemon goes on capturing everything else.
        for _ in 0..5 {
            let out = Command::new(FSOP)
                .args([
                    OsStr::new("flood"),
                    root.join("work").as_os_str(),
                    OsStr::new("200"),
                ])
                .output()
                .expect("work");
            assert!(out.status.success());
            work_ops += 200;
            std::thread::sleep(Duration::from_millis(700));
        }
        // The retries' delay doubles: wait for the webhook's own retry to meet this stage's
        // failure (a refusal leaves no trace at the receiver). Not any request: the robot's
        // sink retries on its own schedule, and the heartbeat's revisions move to the end of
        // the queue. The webhook retries the head of its queue until it is accepted, so the
        // oldest non-heartbeat alert (one revision each here) is the one attempt of every
        // stage: it meets each kind of failure in turn, which the end of the test checks.
        if *mode != Mode::Refuse {
            r.wait_for(
                &format!("a webhook retry of an alert answered {mode:?}"),
                Duration::from_secs(180),
                |rs| {
                    rs.iter().any(|x| {
                        x.path() == "/hook"
                            && x.answered == *mode
                            && x.json()["rule"] != "heartbeat"
                    })
                },
            );
        }
    }
    // Everything raised so far is pending somewhere.
    let during = outbox(&store);
    let gaps_during = during.iter().filter(|r| r["rule"] == "history-gap").count();
    assert!(
        gaps_during >= 3,
        "expected a history-gap alert per stage:\n{during:#?}"
    );
    assert!(
        during
            .iter()
            .flat_map(deliveries)
            .any(|d| d["state"] == "pending" && d["attempts"].as_u64() >= Some(2)),
        "{during:#?}"
    );

    r.set_mode(Mode::Accept);
    // Restored: every alert's latest revision reaches both sinks. The retry delay has doubled
    // through the outage (about a minute by now, ±20 %; the cap is 5 min): wait past the cap.
    let rows = wait_outbox(
        &store,
        "every delivery done",
        Duration::from_secs(330),
        |rows| {
            rows.iter()
                .flat_map(deliveries)
                .all(|d| d["state"] == "delivered")
                && rows.iter().filter(|r| r["rule"] == "history-gap").count() >= gaps_during
        },
    );
    let received = r.received();
    for row in &rows {
        let id = row["id"].as_str().unwrap_or("");
        let rev = row["rev"].as_u64().unwrap_or(0);
        let hook = received
            .iter()
            .any(|x| hook_delivered(x) && x.json()["id"] == id && x.json()["rev"] == rev);
        assert!(hook, "alert {id} rev {rev} never accepted by the webhook");
        let heartbeat_later = row["rule"] == "heartbeat" && rev > 1;
        if !heartbeat_later {
            let ding = received.iter().any(|x| {
                x.path().starts_with("/dingtalk")
                    && x.accepted()
                    && x.json()["markdown"]["text"]
                        .as_str()
                        .unwrap_or("")
                        .contains(id)
            });
            assert!(ding, "alert {id} never accepted by the robot");
        }
    }

    // Order per rule: history-gap alerts (one revision each: the group window is shorter than
    // the settle delay) were accepted in the order they were raised.
    let mut raised: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r["rule"] == "history-gap")
        .map(|r| {
            (
                r["created"].as_str().unwrap_or("").to_owned(),
                r["id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    raised.sort();
    let raised: Vec<String> = raised.into_iter().map(|(_, id)| id).collect();
    let mut accepted_order = Vec::new();
    for x in received.iter().filter(|x| hook_delivered(x)) {
        let v = x.json();
        if v["rule"] == "history-gap" {
            let id = v["id"].as_str().unwrap_or("").to_owned();
            if !accepted_order.contains(&id) {
                accepted_order.push(id);
            }
        }
    }
    assert_eq!(accepted_order, raised, "history-gap alerts out of order");
    // Heartbeat revisions never go backwards.
    let beats: Vec<u64> = received
        .iter()
        .filter(|x| hook_delivered(x) && x.json()["rule"] == "heartbeat")
        .filter_map(|x| x.json()["rev"].as_u64())
        .collect();
    assert!(beats.windows(2).all(|w| w[0] <= w[1]), "{beats:?}");

    // Retries of one revision carry the same webhook-id and the same body; every request is
    // signed; a revision was retried through several kinds of failure.
    let mut by_id: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for x in received.iter().filter(|x| x.path() == "/hook") {
        verify_standard_webhook(x, SECRET).expect("webhook signature");
        by_id
            .entry(x.header("webhook-id").unwrap_or("").to_owned())
            .or_default()
            .push(x);
    }
    for (id, reqs) in &by_id {
        assert!(
            reqs.iter().all(|x| x.body == reqs[0].body),
            "{id}: bodies differ across retries"
        );
        let v = reqs[0].json();
        assert_eq!(
            id,
            &format!("{}.{}", v["id"].as_str().unwrap_or(""), v["rev"])
        );
    }
    let most_tried = by_id
        .values()
        .map(|reqs| {
            reqs.iter()
                .map(|x| format!("{:?}", x.answered))
                .collect::<BTreeSet<_>>()
                .len()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most_tried >= 3,
        "no revision was retried through 500, a timeout and the final 200: {by_id:#?}"
    );
    for x in received
        .iter()
        .filter(|x| x.path().starts_with("/dingtalk"))
    {
        verify_dingtalk(x, DING_SECRET).expect("dingtalk signature");
    }

    // The kernel side lost nothing while delivery failed: every operation of the workload
    // (performed while the daemon ran, between the floods) is in the history.
    let work = format!("{}/work/**", root.display());
    let (code, out, err) = ctrwatch(&[
        OsStr::new("query"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--path"),
        OsStr::new(&work),
        OsStr::new("--op"),
        OsStr::new("unlink"),
        OsStr::new("--json"),
        OsStr::new("--limit"),
        OsStr::new("1000000"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json_lines(&out).len() as u64,
        work_ops,
        "workload operations missing"
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(dir);
}

/// Fills a stopped daemon's outbox with `n` undelivered history-gap alerts for the sink
/// `hook` at `target` (what a long outage leaves behind), oldest first.
fn seed_outbox(store: &Path, n: usize, target: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(store).expect("open store");
    let mut ids = Vec::new();
    for i in 0..n {
        let node = ctrwatch_alerts::Node {
            hostname: "seeded".into(),
            machine_id: "0".repeat(32),
        };
        let t = 1_700_000_000_000_000_000 + i as i64 * 1_000_000_000;
        let a = ctrwatch_alerts::Alert::new(
            ctrwatch_config::RuleId::HistoryGap,
            ctrwatch_config::Severity::Warning,
            format!("seeded {i}"),
            node,
            t,
            format!("seeded alert {i}"),
            "ctrwatch gaps",
        );
        let body = a.body_json().expect("body");
        let seq: i64 = conn
            .query_row(
                "UPDATE meta SET value = value + 1 WHERE key = 'alerts_seq' RETURNING value",
                [],
                |r| r.get(0),
            )
            .expect("seq");
        conn.execute(
            "INSERT INTO alerts (id, seq, rule, severity, rev, state, first_ns, last_ns, count, \
             body, created_ns, updated_ns) VALUES (?1, ?2, 'history-gap', 'warning', 1, \
             'firing', ?3, ?3, 1, ?4, ?3, ?3)",
            rusqlite::params![a.id.as_str(), seq, t, body],
        )
        .expect("insert alert");
        conn.execute(
            "INSERT INTO deliveries (alert, sink, target, rev, state, attempts) \
             VALUES (?1, 'hook', ?2, 0, 'pending', 3)",
            rusqlite::params![a.id.as_str(), target],
        )
        .expect("insert delivery");
        ids.push(a.id.to_string());
    }
    ids
}

#[test]
fn a_full_outbox_drops_the_oldest_undelivered_counts_and_reports_them() {
    let dir = temp_dir("alerts-bound");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store = dir.join("events.db");
    let r = Receiver::start(Mode::Refuse);
    let config = write_config(
        &dir,
        &format!(
            "[alerts]\noutbox_max = 100\n\n[rules.heartbeat]\ninterval = \"10s\"\n\n[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\ntimeout = \"1s\"\n",
            r.url("/hook")
        ),
    );
    // A first run (raising nothing) creates the store and its outbox; then 150 alerts wait in
    // it, undelivered.
    let quiet = dir.join("quiet.toml");
    std::fs::write(&quiet, "[rules.heartbeat]\nenabled = false\n").expect("config");
    start_daemon(&root, &store, &quiet).stop();
    // The target as the outbox names it: a webhook's path is not shown (it may be its secret).
    let target = format!("http://{}/***", r.addr);
    let seeded = seed_outbox(&store, 150, &target);

    let daemon = start_daemon(&root, &store, &config);
    // The new run's first alert makes 152: the oldest undelivered go, are counted, and a
    // history-gap alert says so.
    let rows = wait_outbox(
        &store,
        "the drop reported",
        Duration::from_secs(60),
        |rows| {
            rows.iter().any(|r| {
                r["rule"] == "history-gap"
                    && r["summary"]
                        .as_str()
                        .unwrap_or("")
                        .contains("alerts were dropped from the outbox")
            })
        },
    );
    assert!(rows.len() <= 100, "{} alerts kept", rows.len());
    let kept: BTreeSet<&str> = rows.iter().filter_map(|r| r["id"].as_str()).collect();
    // Oldest first: what was dropped is a prefix of the seeded alerts.
    let dropped_n = seeded
        .iter()
        .take_while(|id| !kept.contains(id.as_str()))
        .count();
    assert!(dropped_n >= 51, "only {dropped_n} dropped");
    assert!(
        seeded[dropped_n..]
            .iter()
            .all(|id| kept.contains(id.as_str())),
        "not the oldest were dropped"
    );
    let table = ctrwatch(&[
        OsStr::new("alerts"),
        OsStr::new("--store"),
        store.as_os_str(),
    ])
    .1;
    assert!(
        table.contains(&format!("{dropped_n} alerts dropped undelivered")),
        "{table}"
    );

    // Restored: everything kept arrives, the report included; nothing dropped does.
    r.set_mode(Mode::Accept);
    let rows = wait_outbox(
        &store,
        "every delivery done",
        Duration::from_secs(90),
        |rows| {
            rows.iter()
                .flat_map(deliveries)
                .all(|d| d["state"] == "delivered")
        },
    );
    let got: BTreeSet<String> = webhook_requests(&r)
        .iter()
        .filter_map(|x| x.json()["id"].as_str().map(str::to_owned))
        .collect();
    for row in &rows {
        assert!(
            got.contains(row["id"].as_str().unwrap_or("")),
            "{row} not delivered"
        );
    }
    for id in &seeded[..dropped_n] {
        assert!(!got.contains(id), "dropped alert {id} was delivered");
    }
    assert!(
        webhook_requests(&r).iter().any(|x| x.json()["summary"]
            .as_str()
            .unwrap_or("")
            .contains("alerts were dropped from the outbox")),
        "the drop report never reached the receiver"
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(dir);
}

/// An alert raised while the store cannot take it (the disk is full: a fresh store cannot even
/// be created) is kept in memory and delivered once space returns. Before the fix the writer
/// logged "could not be kept in the outbox" and the alert was gone for good.
#[test]
fn an_alert_raised_on_a_full_disk_is_delivered_once_space_returns() {
    let dir = temp_dir("alerts-full-disk");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let mnt = tests::tmpfs::Tmpfs::mount(&dir.join("mnt"), "4m");
    let store = mnt.0.join("store/events.db");
    let r = Receiver::start(Mode::Accept);
    // The heartbeat's first beat is raised at the start, the next one an hour later: exactly
    // one alert, raised while nothing can be written.
    let config = write_config(
        &dir,
        &format!(
            "[rules.heartbeat]\ninterval = \"1h\"\n\n[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\ntimeout = \"2s\"\n",
            r.url("/hook")
        ),
    );
    let filler = mnt.fill();
    let daemon = start_daemon(&root, &store, &config);
    // The beat was raised and the store could not take it (not a fixed sleep: on a loaded
    // machine the first beat may come late, and would then be stored normally).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !daemon.stderr().contains("could not be kept in the outbox") {
        assert!(
            Instant::now() < deadline,
            "the heartbeat was not refused by the full store; stderr:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        webhook_requests(&r).is_empty(),
        "delivered although no outbox could exist"
    );
    std::fs::remove_file(&filler).expect("free space");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let beats: Vec<Value> = webhook_requests(&r)
            .iter()
            .map(|x| x.json())
            .filter(|v| v["rule"] == "heartbeat")
            .collect();
        if !beats.is_empty() {
            assert_eq!(beats[0]["count"], 1, "{beats:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the heartbeat raised on the full disk never arrived; stderr:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    daemon.stop();
    drop(mnt);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A flood the daemon cannot keep up with, sustained: its loss is reported while it lasts
/// (a history-gap alert at the receiver, SIGTERM obeyed), not after it. The capture loop used
/// to drain the ring buffer until it was empty, which under a sustained flood it never is:
/// the loss counters, the alert timers, systemd's watchdog and SIGTERM all waited for the
/// flood to end.
#[test]
fn a_sustained_flood_is_reported_while_it_lasts_and_sigterm_is_obeyed() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let dir = temp_dir("alerts-sustained-flood");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("flood")).expect("mkdir");
    let store = dir.join("events.db");
    let r = Receiver::start(Mode::Accept);
    let config = write_config(
        &dir,
        &format!(
            "[rules.heartbeat]\nenabled = false\n\n\
             [[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            r.url("/hook")
        ),
    );
    let mut daemon = start_daemon(&root, &store, &config);

    // Unlinks of missing files (each one a record) from this process, as fast as they go,
    // from two threads: more than the throttled daemon can take. Stopped when the
    // guard goes, also when the test fails (other tests of this binary run meanwhile).
    struct Flood {
        stop: Arc<AtomicBool>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }
    impl Drop for Flood {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flood = Flood {
        threads: (0..2)
            .map(|t| {
                let stop = Arc::clone(&stop);
                let base = root.join("flood");
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let _ =
                            std::fs::remove_file(base.join(format!("missing-{t}-{}", i % 4096)));
                        i += 1;
                    }
                })
            })
            .collect(),
        stop,
    };
    // The daemon held to a quarter of a CPU: the flood outpaces it for as long as it lasts,
    // whatever this machine's speed (without it, a fast daemon catches up now and then and
    // the old drain returned by chance).
    let _throttle = CpuThrottle::new(&dir, daemon.pid(), 25);
    let flooding_since = Instant::now();
    r.wait_for(
        "a history-gap alert while the flood goes on",
        Duration::from_secs(150),
        |rs| {
            rs.iter()
                .any(|x| hook_delivered(x) && x.json()["rule"] == "history-gap")
        },
    );
    let alerted_after = flooding_since.elapsed();
    // Still flooding: SIGTERM is obeyed (the final drain stops capture first, so it ends).
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(60));
    drop(flood);
    assert!(
        status.is_some_and(|s| s.success()),
        "the daemon did not stop cleanly within 60 s of SIGTERM during the flood: {status:?}\n{}",
        daemon.stderr()
    );
    eprintln!("history-gap alert {alerted_after:?} into the flood");
    let _ = std::fs::remove_dir_all(dir);
}

/// A cgroup holding a process to `percent` of one CPU (v1 `cpu` controller, or v2 `cpu.max`);
/// the process goes back to the root cgroup when this goes.
struct CpuThrottle {
    dir: PathBuf,
    procs_root: PathBuf,
    pid: u32,
}

impl CpuThrottle {
    fn new(test_dir: &Path, pid: u32, percent: u32) -> CpuThrottle {
        let name = test_dir.file_name().map_or_else(
            || "ctrwatch-test".into(),
            |n| n.to_string_lossy().into_owned(),
        );
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let base = if v2 {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            PathBuf::from("/sys/fs/cgroup/cpu")
        };
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).expect("cgroup");
        let quota = 100_000 * u64::from(percent) / 100;
        if v2 {
            let _ = std::fs::write(base.join("cgroup.subtree_control"), "+cpu");
            std::fs::write(dir.join("cpu.max"), format!("{quota} 100000")).expect("cpu.max");
        } else {
            std::fs::write(dir.join("cpu.cfs_period_us"), "100000").expect("period");
            std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()).expect("quota");
        }
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("move the daemon");
        CpuThrottle {
            dir,
            procs_root: base.join("cgroup.procs"),
            pid,
        }
    }
}

impl Drop for CpuThrottle {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.procs_root, self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Two Alertmanager URLs on one host that differ only by a token in the query show alike
/// (`…/am?t=***`), so each is named by a hash of its URL. The defect: that hash was a plain
/// SHA-256, stored in the outbox the store's reader group may read, so a reader could confirm a
/// guessed token. Now it is keyed by a root-only key beside the store, made at the first start
/// and kept: the names, and the deliveries pending under them, survive a restart.
#[test]
fn targets_shown_alike_are_named_by_a_keyed_hash_that_survives_restarts() {
    use sha2::{Digest as _, Sha256};
    use std::os::unix::fs::MetadataExt as _;
    let dir = temp_dir("alerts-target-key");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store = dir.join("store").join("events.db");
    let r = Receiver::start(Mode::Refuse);
    let urls = [r.url("/am?t=tok-a"), r.url("/am?t=tok-b")];
    let config = write_config(
        &dir,
        &format!(
            "[rules.heartbeat]\ninterval = \"10s\"\n\n[[sinks]]\nname = \"am\"\nkind = \"alertmanager\"\nurls = [\"{}\", \"{}\"]\ntimeout = \"1s\"\n",
            urls[0], urls[1]
        ),
    );
    let am_targets = |rows: &[Value]| -> BTreeSet<String> {
        rows.iter()
            .flat_map(deliveries)
            .filter(|d| d["sink"] == "am")
            .filter_map(|d| d["target"].as_str().map(str::to_owned))
            .collect()
    };
    let a = start_daemon(&root, &store, &config);
    let rows = wait_outbox(
        &store,
        "a heartbeat tried at both targets",
        Duration::from_secs(60),
        |rows| {
            rows.iter().any(|r| {
                r["rule"] == "heartbeat"
                    && deliveries(r)
                        .iter()
                        .filter(|d| d["sink"] == "am" && d["attempts"].as_u64() >= Some(1))
                        .count()
                        == 2
            })
        },
    );
    let names = am_targets(&rows);
    assert_eq!(names.len(), 2, "{names:?}");
    let shown = urls[0].split("?t=").next().unwrap_or("").to_owned() + "?t=***#";
    for url in &urls {
        let unkeyed: String = Sha256::digest(url.as_bytes())[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            !names.contains(&format!("{shown}{unkeyed}")),
            "a target is named by the plain SHA-256 of its URL: {names:?}"
        );
    }
    for name in &names {
        assert!(name.starts_with(&shown), "{name} (expected {shown}…)");
        assert_eq!(name.len(), shown.len() + 8, "{name}");
        assert!(!name.contains("tok-"), "{name}");
    }
    let key = store.with_file_name("events.db.target-names.key");
    let meta = std::fs::symlink_metadata(&key).expect("the key beside the store");
    assert!(meta.file_type().is_file());
    assert_eq!(meta.mode() & 0o777, 0o600, "{}", key.display());
    assert_eq!(meta.len(), 32);
    a.stop();

    // The next daemon names them alike: the first heartbeat's pending deliveries are
    // delivered under the same names, none dropped.
    r.set_mode(Mode::Accept);
    let b = start_daemon(&root, &store, &config);
    let rows = wait_outbox(
        &store,
        "the first heartbeat delivered at both targets",
        Duration::from_secs(120),
        |rows| {
            rows.iter().filter(|r| r["rule"] == "heartbeat").any(|r| {
                let d = deliveries(r);
                d.iter().filter(|d| d["sink"] == "am").count() == 2
                    && d.iter().all(|d| d["state"] == "delivered")
            })
        },
    );
    assert_eq!(am_targets(&rows), names, "names changed across the restart");
    b.stop();

    // A key that exists but cannot be used (here: 5 bytes) while these targets are named by
    // it: the start fails and says why, rather than renaming the targets and dropping what is
    // pending under their names.
    std::fs::write(&key, b"short").expect("spoil the key");
    let mut c = Command::new(tests::ctrwatch_bin())
        .args([OsStr::new("run"), OsStr::new("--root"), root.as_os_str()])
        .args([OsStr::new("--store"), store.as_os_str()])
        .args([OsStr::new("--config"), config.as_os_str()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ctrwatch run");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = c.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut e) = c.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let status = status.expect("a daemon with an unusable key kept running");
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("target-names.key") && err.contains("5 bytes") && err.contains("\"am\""),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
