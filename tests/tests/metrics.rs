//! The metrics endpoint of the real daemon (`ctrwatch run` with `[metrics] listen` or
//! `--metrics-listen`), scraped directly and by a real Prometheus (Debian's `prometheus`):
//!
//! * after a known number of operations under a plain root, a foreign unlink of a committed
//!   layer's file under a real containerd's root, and that alert's delivery to a real webhook
//!   receiver, every line of the exposition is valid (HELP and TYPE before the samples) and
//!   the counters say exactly what was done; Prometheus, scraping every second, stores the
//!   same values;
//! * hostile clients (an oversized request, slow ones, too many at once, other methods and
//!   paths) are answered or closed within the client timeout, and the daemon keeps capturing;
//! * without `[metrics]`, nothing listens.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::{OsStr, OsString},
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;
use tests::{
    Watcher,
    alertmanager::{free_port, http},
    containerd::{Containerd, Layer},
    ctrwatch, json_lines,
    receiver::{Mode, Receiver},
    temp_dir, wait_history,
};

const FSOP: &str = env!("CARGO_BIN_EXE_fsop");
const NS: &str = "default";
const PROMETHEUS: &str = "/usr/bin/prometheus";
/// Files created under the plain root, and how many of them are then unlinked.
const CREATES: u64 = 25;
const UNLINKS: u64 = 10;

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("ctrwatch.toml");
    std::fs::write(&p, body).expect("config");
    p
}

fn start_daemon(roots: &[&Path], store: &Path, config: &Path, extra: &[&str]) -> Watcher {
    let mut args: Vec<OsString> = vec!["run".into()];
    for r in roots {
        args.push("--root".into());
        args.push(r.as_os_str().to_owned());
    }
    args.extend([
        "--store".into(),
        store.as_os_str().to_owned(),
        "--config".into(),
        config.as_os_str().to_owned(),
        "--ring-buffer-mb".into(),
        "1".into(),
    ]);
    args.extend(extra.iter().map(OsString::from));
    Watcher::start_command(&args)
}

/// The address the daemon listens on, from its log (it was asked for port 0).
fn metrics_addr(daemon: &Watcher) -> SocketAddr {
    let err = daemon.stderr();
    let addr = err
        .lines()
        .find_map(|l| l.split("metrics: serving http://").nth(1))
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics listener in the log:\n{err}"));
    addr.parse().expect("listener address")
}

/// One sample: its name, labels and value.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses a text exposition (format 0.0.4), checking every line: comments are `# HELP` or
/// `# TYPE` of a valid name, a family's HELP and TYPE come before its samples, label values
/// are properly quoted and escaped, values are numbers.
fn parse_exposition(text: &str) -> Vec<Sample> {
    fn valid_name(n: &str) -> bool {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    assert!(
        text.ends_with('\n'),
        "the exposition must end with a newline"
    );
    let mut helped = BTreeSet::new();
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(
                valid_name(name) && !help.is_empty(),
                "bad HELP line {line:?}"
            );
            assert!(helped.insert(name.to_owned()), "second HELP for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(valid_name(name), "bad TYPE line {line:?}");
            assert!(
                ["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind),
                "bad type in {line:?}"
            );
            assert!(
                typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                "second TYPE for {name}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "bad line {line:?}"
        );
        let name_end = line.find(['{', ' ']).expect("sample name");
        let name = &line[..name_end];
        assert!(valid_name(name), "bad sample name in {line:?}");
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let mut end = None;
            loop {
                // label="value" then , or }
                let start = match chars.peek() {
                    Some(&(i, '}')) => {
                        end = Some(i);
                        break;
                    }
                    Some(&(i, _)) => i,
                    None => break,
                };
                let eq = inner[start..].find('=').expect("label =") + start;
                let label = &inner[start..eq];
                assert!(valid_name(label), "bad label name in {line:?}");
                while chars.peek().is_some_and(|&(i, _)| i <= eq) {
                    chars.next();
                }
                assert_eq!(
                    chars.next().map(|c| c.1),
                    Some('"'),
                    "unquoted value: {line:?}"
                );
                let mut value = String::new();
                loop {
                    match chars.next().expect("unterminated label value").1 {
                        '\\' => match chars.next().expect("escape").1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => panic!("bad escape \\{c} in {line:?}"),
                        },
                        '"' => break,
                        '\n' => panic!("raw newline in {line:?}"),
                        c => value.push(c),
                    }
                }
                labels.insert(label.to_owned(), value);
                match chars.next() {
                    Some((_, ',')) => {}
                    Some((i, '}')) => {
                        end = Some(i);
                        break;
                    }
                    other => panic!("after a label value {other:?} in {line:?}"),
                }
            }
            let end = end.unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
            rest = &inner[end + 1..];
        }
        let value_text = rest.strip_prefix(' ').expect("space before the value");
        assert!(
            !value_text.contains(' '),
            "timestamps are not sent: {line:?}"
        );
        let value: f64 = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let family = [name.strip_suffix("_sum"), name.strip_suffix("_count")]
            .into_iter()
            .flatten()
            .find(|f| typed.get(*f).is_some_and(|k| k == "summary"))
            .unwrap_or(name);
        assert!(typed.contains_key(family), "no TYPE before {line:?}");
        assert!(helped.contains(family), "no HELP before {line:?}");
        if typed[family] == "counter" {
            assert!(
                name.ends_with("_total"),
                "a counter without _total: {line:?}"
            );
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// `GET /metrics`: checks the answer's status and content type, parses the body.
fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
    )
    .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("answer");
    let (head, body) = out.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.lines()
            .any(|l| l == "Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.lines()
            .any(|l| l == format!("Content-Length: {}", body.len())),
        "{head}"
    );
    parse_exposition(body)
}

/// A sample's labels, as the test names them.
type Labels<'a> = &'a [(&'a str, &'a str)];

/// The value of the sample `name` with exactly these labels (None: no such sample).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// Scrapes until `pred` holds (the writer counts what it stores, a moment after the
/// operation); returns the last scrape.
fn scrape_until(
    addr: SocketAddr,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let deadline = Instant::now() + timeout;
    loop {
        let samples = scrape(addr);
        if pred(&samples) {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "metrics: {what} not within {timeout:?}; last scrape:\n{samples:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn fsop(args: &[&OsStr]) {
    let out = Command::new(FSOP).args(args).output().expect("fsop");
    assert!(out.status.success(), "fsop {args:?}: {out:?}");
}

/// The events the store's loss records count (`ctrwatch gaps --json`, kind loss).
fn recorded_losses(store: &Path) -> f64 {
    let (code, out, err) = ctrwatch(&[
        OsStr::new("gaps"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ]);
    assert_eq!(code, 0, "ctrwatch gaps: {err}");
    // Without `path_unresolved`: counted for the whole node, it may grow between the scrape
    // and this read on a busy machine; the other kinds are this daemon's roots'.
    json_lines(&out)
        .iter()
        .filter(|g| g["kind"] == "loss")
        .filter_map(|g| g["kinds"].as_object())
        .flat_map(|kinds| kinds.iter())
        .filter(|(kind, _)| *kind != "path_unresolved")
        .map(|(_, n)| n.as_f64().unwrap_or(0.0))
        .sum()
}

/// The version `ctrwatch --version` prints.
fn binary_version() -> String {
    let (code, out, err) = ctrwatch(&[OsStr::new("--version")]);
    assert_eq!(code, 0, "{err}");
    out.trim()
        .strip_prefix("ctrwatch ")
        .unwrap_or_else(|| panic!("--version printed {out:?}"))
        .to_owned()
}

/// A Prometheus server on a loopback port with its own storage; killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second; waits until it serves its API.
    /// A port taken between choosing and binding it is retried with another.
    fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: ctrwatch\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("prometheus.yml");
        for attempt in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let data = dir.join(format!("tsdb-{attempt}"));
            let log = std::fs::File::create(dir.join(format!("prometheus-{attempt}.log")))
                .expect("log file");
            let started = Instant::now();
            let child = Command::new(PROMETHEUS)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {PROMETHEUS}: {e}"));
            let mut p = Prometheus {
                child,
                addr,
                dir: dir.to_owned(),
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(_)) = p.child.try_wait() {
                    break; // exited: the port was taken, most likely; another one
                }
                if http(addr, "GET", "/-/ready", None).0 == 200 {
                    eprintln!(
                        "prometheus ready after {:.2} s",
                        started.elapsed().as_secs_f64()
                    );
                    return p;
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus not ready within 60 s:\n{}",
                    p.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!(
                "prometheus exited at start (attempt {attempt}):\n{}",
                p.log()
            );
        }
        panic!("prometheus could not be started");
    }

    fn log(&self) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("prometheus-") {
                all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        all
    }

    fn api(&self, path: &str) -> Value {
        let (status, body) = http(self.addr, "GET", path, None);
        assert_eq!(status, 200, "prometheus {path}: {body}");
        serde_json::from_str(&body).expect("prometheus JSON")
    }

    /// The instant value of a query, when it has one series.
    fn query(&self, promql: &str) -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                b => format!("%{b:02X}"),
            })
            .collect();
        let v = self.api(&format!("/api/v1/query?query={encoded}"));
        let result = v["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_counters_say_what_was_done_and_prometheus_stores_the_same() {
    tests::require_root();
    let dir = temp_dir("metrics");
    let plain = dir.join("plain");
    std::fs::create_dir_all(&plain).expect("plain root");
    let cd = Containerd::start().expect("containerd");
    let r = Receiver::start(Mode::Accept);
    let config = write_config(
        &dir,
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n\n[rules.heartbeat]\nenabled = false\n\n\
             [[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            r.url("/hook")
        ),
    );
    let store = dir.join("events.db");
    let started = SystemTime::now();
    let daemon = start_daemon(&[cd.root(), cd.state(), &plain], &store, &config, &[]);
    let addr = metrics_addr(&daemon);

    // Committed layers, unpacked by containerd (verdict owner), recorded before anything
    // foreign happens.
    let built = cd
        .build_image_info(
            "test.local/ctrwatch/metrics:1",
            &[
                Layer::base().expect("base"),
                Layer::new().file("marker", "x\n"),
            ],
        )
        .expect("image");
    cd.import(&built.archive, NS).expect("import");
    let pause = cd
        .snapshot_dir(NS, &built.chain_ids[0])
        .expect("base layer dir")
        .join("fs/pause");
    let marker = cd
        .snapshot_dir(NS, &built.chain_ids[1])
        .expect("upper layer dir")
        .join("fs/marker");
    wait_history(&store, &marker, "create");

    // Known operations under the plain root (no containerd there: verdict none).
    for i in 0..CREATES {
        fsop(&[
            OsStr::new("create"),
            plain.join(format!("f{i}")).as_os_str(),
        ]);
    }
    for i in 0..UNLINKS {
        fsop(&[
            OsStr::new("unlink"),
            plain.join(format!("f{i}")).as_os_str(),
        ]);
    }
    // One foreign change: a critical foreign-change alert, delivered to the webhook.
    fsop(&[OsStr::new("unlink"), pause.as_os_str()]);
    r.wait_for("the foreign-change alert", Duration::from_secs(60), |all| {
        all.iter()
            .any(|x| x.path() == "/hook" && x.json()["rule"] == "foreign-change")
    });

    let events = |s: &[Sample], op: &str, verdict: &str| {
        value(
            s,
            "ctrwatch_events_total",
            &[("op", op), ("verdict", verdict)],
        )
        .unwrap_or(0.0)
    };
    let hook_requests = || r.received().iter().filter(|x| x.path() == "/hook").count() as f64;
    let samples = scrape_until(
        addr,
        "the operations counted",
        Duration::from_secs(60),
        |s| {
            events(s, "create", "none") == CREATES as f64
                && events(s, "unlink", "none") == UNLINKS as f64
                && events(s, "unlink", "foreign") == 1.0
                && value(
                    s,
                    "ctrwatch_deliveries_total",
                    &[("sink", "hook"), ("result", "delivered")],
                ) == Some(hook_requests())
                && value(s, "ctrwatch_outbox_pending", &[]) == Some(0.0)
        },
    );
    // Exactly one foreign-change alert; heartbeat is off. (Kernel losses of path_unresolved
    // kind are counted node-wide: other processes on a shared machine can cause them, and a
    // history-gap alert with them.)
    let alerts: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "ctrwatch_alerts_total")
        .collect();
    assert!(
        alerts
            .iter()
            .all(|a| ["foreign-change", "history-gap"].contains(&a.labels["rule"].as_str())),
        "{alerts:#?}"
    );
    assert_eq!(
        value(
            &samples,
            "ctrwatch_alerts_total",
            &[("rule", "foreign-change"), ("severity", "critical")]
        ),
        Some(1.0)
    );
    let foreign: f64 = samples
        .iter()
        .filter(|s| s.name == "ctrwatch_events_total" && s.labels["verdict"] == "foreign")
        .map(|s| s.value)
        .sum();
    assert_eq!(
        value(&samples, "ctrwatch_foreign_events_total", &[]),
        Some(foreign)
    );
    assert!(foreign >= 1.0);
    // containerd's unpack is counted as the owner's.
    assert!(events(&samples, "create", "owner") >= 1.0, "{samples:#?}");
    // No delivery failed; every loss counted is one of the loss records in the store.
    assert!(
        !samples
            .iter()
            .any(|s| s.name == "ctrwatch_deliveries_total" && s.labels["result"] != "delivered"),
        "{samples:#?}"
    );
    // (Polled: a loss record is counted when the writer takes it, and committed within a
    // second.)
    let lost = |s: &[Sample]| -> f64 {
        s.iter()
            .filter(|s| s.name == "ctrwatch_lost_events_total")
            .filter(|s| s.labels.get("kind").is_none_or(|k| k != "path_unresolved"))
            .map(|s| s.value)
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counted = lost(&scrape(addr));
        let recorded = recorded_losses(&store);
        if counted == recorded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lost events: {counted} counted, {recorded} in the store's loss records"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The store: bytes on disk, its oldest event from this run.
    let bytes = value(&samples, "ctrwatch_store_bytes", &[]).expect("store bytes");
    assert!(bytes >= 4096.0, "{bytes}");
    let oldest = value(
        &samples,
        "ctrwatch_store_oldest_event_timestamp_seconds",
        &[],
    )
    .expect("oldest event");
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64()
    };
    assert!(
        oldest >= secs(started) - 1.0 && oldest <= secs(SystemTime::now()),
        "oldest {oldest}, test started {}",
        secs(started)
    );
    // The ring buffer asked for (1 MiB), and a fill within it.
    assert_eq!(
        value(&samples, "ctrwatch_ring_buffer_size_bytes", &[]),
        Some(1_048_576.0)
    );
    let used = value(&samples, "ctrwatch_ring_buffer_used_bytes", &[]).expect("ring fill");
    assert!((0.0..=1_048_576.0).contains(&used), "{used}");
    // containerd's metadata was loaded (at least once, for the import).
    let refreshes =
        value(&samples, "ctrwatch_mapping_refresh_seconds_count", &[]).expect("refresh count");
    let refresh_secs =
        value(&samples, "ctrwatch_mapping_refresh_seconds_sum", &[]).expect("refresh sum");
    assert!(
        refreshes >= 1.0 && refresh_secs > 0.0,
        "{refreshes} {refresh_secs}"
    );
    let programs: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "ctrwatch_programs_attached")
        .collect();
    // One row per hook family: the syscall tracepoints' programs, and fentry's and lsm's
    // (none attached on this kernel, which refuses fentry: ctrwatch_backend_usable says so).
    let attached = |family: &str| {
        programs
            .iter()
            .find(|s| s.labels["backend"] == family)
            .map(|s| s.value)
    };
    assert_eq!(programs.len(), 3, "{programs:#?}");
    assert!(
        attached("syscall-tracepoints").unwrap_or(0.0) >= 1.0,
        "{programs:#?}"
    );
    assert_eq!(attached("fentry"), Some(0.0), "{programs:#?}");
    assert_eq!(attached("lsm"), Some(0.0), "{programs:#?}");
    assert_eq!(
        value(
            &samples,
            "ctrwatch_backend_usable",
            &[("backend", "fentry")]
        ),
        Some(0.0),
        "this kernel refuses fentry"
    );
    // And LSM programs (the LSM probe's test program is refused).
    assert_eq!(
        value(&samples, "ctrwatch_backend_usable", &[("backend", "lsm")]),
        Some(0.0),
        "this kernel refuses LSM programs"
    );
    let version = binary_version();
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.name == "ctrwatch_build_info")
            .map(|s| (s.labels.get("version").cloned(), s.value))
            .collect::<Vec<_>>(),
        vec![(Some(version.clone()), 1.0)]
    );
    // How long a scrape takes here (debug build).
    let t = Instant::now();
    let n = 20;
    for _ in 0..n {
        scrape(addr);
    }
    eprintln!(
        "a scrape (request, render, answer, parse): {:.2} ms on average",
        t.elapsed().as_secs_f64() * 1000.0 / f64::from(n)
    );

    // A real Prometheus scraping every second stores the same values.
    let prom = Prometheus::start(&dir, addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let targets = prom.api("/api/v1/targets");
        let up = targets["data"]["activeTargets"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["health"] == "up"));
        if up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ctrwatch target is not up within 60 s: {targets}\n{}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let build_info = format!("ctrwatch_build_info{{version=\"{version}\"}}");
    let queries: &[(&str, &str, Labels)] = &[
        (
            "ctrwatch_events_total{op=\"create\",verdict=\"none\"}",
            "ctrwatch_events_total",
            &[("op", "create"), ("verdict", "none")],
        ),
        (
            "ctrwatch_events_total{op=\"unlink\",verdict=\"none\"}",
            "ctrwatch_events_total",
            &[("op", "unlink"), ("verdict", "none")],
        ),
        (
            "ctrwatch_events_total{op=\"unlink\",verdict=\"foreign\"}",
            "ctrwatch_events_total",
            &[("op", "unlink"), ("verdict", "foreign")],
        ),
        (
            "ctrwatch_foreign_events_total",
            "ctrwatch_foreign_events_total",
            &[],
        ),
        (
            "ctrwatch_alerts_total{rule=\"foreign-change\",severity=\"critical\"}",
            "ctrwatch_alerts_total",
            &[("rule", "foreign-change"), ("severity", "critical")],
        ),
        (
            "ctrwatch_deliveries_total{sink=\"hook\",result=\"delivered\"}",
            "ctrwatch_deliveries_total",
            &[("sink", "hook"), ("result", "delivered")],
        ),
        ("ctrwatch_outbox_pending", "ctrwatch_outbox_pending", &[]),
        (&build_info, "ctrwatch_build_info", &[("version", &version)]),
    ];
    for (promql, name, labels) in queries {
        // Prometheus has a value once it has scraped; the daemon's own is read right after,
        // so that a late delivery revision cannot make them differ for good.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stored = prom.query(promql);
            let direct = value(&scrape(addr), name, labels);
            if stored.is_some() && stored == direct {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: prometheus has {stored:?}, the daemon says {direct:?}\n{}",
                prom.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    assert_eq!(
        prom.query("ctrwatch_events_total{op=\"create\",verdict=\"none\"}"),
        Some(CREATES as f64)
    );
    drop(prom);
    drop(daemon);
    cd.stop().expect("containerd stop");
    let _ = std::fs::remove_dir_all(dir);
}

/// Sends `request`, then reads until the server closes; returns what it answered and how long
/// that took. A write the server refused (it closed first) is fine.
fn exchange(addr: SocketAddr, request: &[u8]) -> (String, Duration) {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    if let Err(e) = s.write_all(request) {
        assert!(
            matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
            "{e}"
        );
    }
    (read_to_close(&mut s), t.elapsed())
}

/// Everything until the server closes (a reset counts as closed).
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the answer: {e} (after {} bytes)", out.len()),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The listening TCP sockets of process `pid` (from its fds and /proc/net/tcp{,6}).
fn listening_sockets(pid: u32) -> Vec<String> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A: LISTEN), inode
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                found.push(f[1].to_owned());
            }
        }
    }
    found
}

#[test]
fn hostile_clients_are_answered_or_closed_and_capture_goes_on() {
    tests::require_root();
    let dir = temp_dir("metrics-hostile");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("root");
    // The flag, over a file without [metrics].
    let config = write_config(&dir, "[rules.heartbeat]\nenabled = false\n");
    let store = dir.join("events.db");
    let daemon = start_daemon(
        &[&root],
        &store,
        &config,
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let addr = metrics_addr(&daemon);
    assert_eq!(listening_sockets(daemon.pid()).len(), 1);
    // A generous bound: the client timeout is 5 s.
    let quick = Duration::from_secs(20);

    // Other methods, other paths, not HTTP.
    let (a, took) = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(
        a.starts_with("HTTP/1.1 405 ") && a.contains("\r\nAllow: GET\r\n"),
        "{a}"
    );
    assert!(took < quick);
    let (a, _) = exchange(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n");
    assert!(a.starts_with("HTTP/1.1 405 "), "{a}");
    let (a, _) = exchange(addr, b"GET /metrics/../etc/passwd HTTP/1.1\r\n\r\n");
    assert!(a.starts_with("HTTP/1.1 404 "), "{a}");
    let (a, _) = exchange(addr, b"GET / HTTP/1.1\r\n\r\n");
    assert!(a.starts_with("HTTP/1.1 404 "), "{a}");
    let (a, _) = exchange(
        addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    );
    assert!(a.starts_with("HTTP/1.1 400 "), "{a}");

    // An oversized request head (1 MiB, never ending): refused once past the bound.
    let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while big.len() < 1 << 20 {
        big.extend_from_slice(
            b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    let (a, took) = exchange(addr, &big);
    assert!(a.is_empty() || a.starts_with("HTTP/1.1 431 "), "{a}");
    assert!(took < quick, "{took:?}");

    // Slow clients: one that sends nothing, one that trickles a byte a second. Both are
    // closed at the client timeout; meanwhile a scrape is served.
    let mut silent = TcpStream::connect(addr).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut trickle = TcpStream::connect(addr).expect("connect");
    trickle
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let held = Instant::now();
    let samples = scrape(addr);
    assert!(
        value(
            &samples,
            "ctrwatch_build_info",
            &[("version", &binary_version())]
        )
        .is_some()
    );
    let trickler = std::thread::spawn(move || {
        for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\n" {
            if trickle.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        (read_to_close(&mut trickle), held.elapsed())
    });
    assert_eq!(read_to_close(&mut silent), "");
    assert!(held.elapsed() < quick, "{:?}", held.elapsed());
    let (a, took) = trickler.join().expect("trickler");
    assert_eq!(a, "");
    assert!(took < quick, "{took:?}");

    // More clients at once than are served: the extra ones are closed; all are gone within
    // the client timeout, and scrapes are served again.
    let crowd: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let t = Instant::now();
    for mut c in crowd {
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        assert_eq!(read_to_close(&mut c), "");
    }
    assert!(t.elapsed() < quick, "{:?}", t.elapsed());

    // Every slot taken by clients that send nothing: each is closed once its head's time is
    // up, and a scrape is served while they are still open (the slots held 5 s before).
    let squatters: Vec<TcpStream> = (0..watcher::metrics_http::MAX_CLIENTS)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let t = Instant::now();
    // Refused (closed without an answer) while every slot is held; answered once one frees.
    loop {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = write!(c, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        if read_to_close(&mut c).starts_with("HTTP/1.1 200 ") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no scrape answered past the squatters"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "the squatters held every slot for {:?}",
        t.elapsed()
    );
    drop(squatters);

    // The daemon kept capturing: a later operation is stored and counted.
    let after = root.join("after");
    fsop(&[OsStr::new("create"), after.as_os_str()]);
    wait_history(&store, &after, "create");
    scrape_until(addr, "the later create", Duration::from_secs(60), |s| {
        value(
            s,
            "ctrwatch_events_total",
            &[("op", "create"), ("verdict", "none")],
        ) == Some(1.0)
    });
    assert!(!daemon.stderr().contains("panicked"), "{}", daemon.stderr());
    daemon.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn nothing_listens_without_a_metrics_section() {
    tests::require_root();
    let dir = temp_dir("metrics-off");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("root");
    let config = write_config(&dir, "[rules.heartbeat]\nenabled = false\n");
    let store = dir.join("events.db");
    let daemon = start_daemon(&[&root], &store, &config, &[]);
    // Capture is on (the log said so); the daemon is past where it would have bound.
    let after = root.join("f");
    fsop(&[OsStr::new("create"), after.as_os_str()]);
    wait_history(&store, &after, "create");
    assert_eq!(listening_sockets(daemon.pid()), Vec::<String>::new());
    assert!(!daemon.stderr().contains("metrics:"), "{}", daemon.stderr());
    daemon.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_non_loopback_address_is_served_with_a_warning() {
    tests::require_root();
    let dir = temp_dir("metrics-any");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("root");
    let config = write_config(&dir, "[metrics]\nlisten = \"0.0.0.0:0\"\n");
    let store = dir.join("events.db");
    let daemon = start_daemon(&[&root], &store, &config, &[]);
    let any = metrics_addr(&daemon);
    assert!(any.ip().is_unspecified(), "{any}");
    assert!(
        daemon
            .stderr()
            .contains(&format!("metrics: {any} is not a loopback address")),
        "{}",
        daemon.stderr()
    );
    let samples = scrape(SocketAddr::from(([127, 0, 0, 1], any.port())));
    assert!(
        value(
            &samples,
            "ctrwatch_build_info",
            &[("version", &binary_version())]
        )
        .is_some()
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_listener_that_cannot_listen_stops_run_at_start() {
    tests::require_root();
    let dir = temp_dir("metrics-taken");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("root");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let config = write_config(&dir, &format!("[metrics]\nlisten = \"{addr}\"\n"));
    let mut child = Command::new(tests::ctrwatch_bin())
        .arg("run")
        .arg("--root")
        .arg(&root)
        .arg("--store")
        .arg(dir.join("events.db"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctrwatch run");
    // It must stop by itself, at once; a daemon that ran anyway is stopped here.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
            panic!("ctrwatch run went on with its metrics address taken");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!("the metrics listener on {addr} cannot listen"))
            && err.contains("in use"),
        "{err}"
    );
    drop(taken);
    let _ = std::fs::remove_dir_all(dir);
}

/// The ring buffer's fill, read as the metrics read it: the programs' records that nobody has
/// read yet, and less once they are read. Loaded in this process (the daemon reads its ring
/// buffer at once: its fill is near zero unless it falls behind).
#[test]
fn the_ring_buffer_fill_is_what_the_programs_wrote_and_nobody_read() {
    use std::os::fd::AsFd as _;
    use watcher::{
        kernel::{KernelWatch, LoadOptions, RingPositions},
        metrics::RingFillSource as _,
        roots::RootSet,
    };
    tests::require_root();
    let dir = temp_dir("metrics-ring");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("root");
    const SIZE: u32 = 4 << 20;
    let mut kernel = KernelWatch::load(&LoadOptions {
        ring_buffer_bytes: SIZE,
        self_tgid: std::process::id(),
        backend: ctrwatch_config::Backend::Auto,
        protect: ctrwatch_config::ProtectMode::Off,
    })
    .expect("loading the programs");
    kernel
        .set_root_prefixes(&RootSet::resolve(std::slice::from_ref(&root)).kernel_prefixes())
        .expect("roots");
    let mut ring = kernel.take_ring_buffer(SIZE).expect("ring buffer");
    let positions = RingPositions::map(ring.as_fd(), SIZE).expect("mapping the positions");
    kernel.set_capture(true).expect("capture on");

    let before = positions.fill();
    assert_eq!(before.size_bytes, u64::from(SIZE));
    const FILES: u64 = 50;
    for i in 0..FILES {
        fsop(&[OsStr::new("create"), root.join(format!("f{i}")).as_os_str()]);
    }
    // Nobody reads: every record written since is counted (a create record carries its path,
    // well over 32 bytes; other processes on the node only add).
    let written = positions.fill();
    assert!(
        written.used_bytes >= before.used_bytes + FILES * 32,
        "before {before:?}, after {FILES} creates {written:?}"
    );
    assert!(written.used_bytes <= u64::from(SIZE));

    // Read: the fill falls (the node keeps writing process records; the reader catches up).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        while let Some(item) = ring.next_record() {
            drop(item);
        }
        let read = positions.fill();
        if read.used_bytes < written.used_bytes {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fill did not fall after reading: {written:?} then {read:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kernel.set_capture(false);
    drop(positions);
    drop(ring);
    drop(kernel);
    let _ = std::fs::remove_dir_all(dir);
}

/// The store starts failing after the metrics showed it healthy (its disk fills up): the
/// failure shows in the metrics (`ctrwatch_store_errors_total` grows), the store's gauges are
/// never older than `ctrwatch_store_facts_age_seconds` says, and they come back when the
/// store recovers. (Before, the gauges kept their last values and nothing said the store
/// had stopped taking writes.)
#[test]
fn a_store_that_fails_later_shows_in_the_metrics() {
    tests::require_root();
    let dir = temp_dir("metrics-store-fails");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("root");
    let mnt = tests::tmpfs::Tmpfs::mount(&dir.join("mnt"), "4m");
    let store = mnt.0.join("store/events.db");
    std::fs::create_dir_all(mnt.0.join("store")).expect("store dir");
    let config = write_config(&dir, "[rules.heartbeat]\nenabled = false\n");
    let daemon = start_daemon(
        &[&root],
        &store,
        &config,
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let first = root.join("before");
    fsop(&[OsStr::new("create"), first.as_os_str()]);
    wait_history(&store, &first, "create");
    let addr = metrics_addr(&daemon);
    let healthy = scrape_until(addr, "the store's gauges", Duration::from_secs(60), |s| {
        value(s, "ctrwatch_store_bytes", &[]).is_some()
    });
    assert_eq!(
        value(&healthy, "ctrwatch_store_errors_total", &[]),
        Some(0.0),
        "{healthy:#?}"
    );

    // The disk fills; events keep coming; the writer's commits fail.
    let filler = mnt.fill();
    let failing = scrape_until(addr, "store errors counted", Duration::from_secs(60), |s| {
        fsop(&[OsStr::new("create"), root.join("during").as_os_str()]);
        let _ = std::fs::remove_file(root.join("during"));
        value(s, "ctrwatch_store_errors_total", &[]).is_some_and(|n| n > 0.0)
    });
    // What is shown is as old as the age says, and the age is there to say it.
    let age = value(&failing, "ctrwatch_store_facts_age_seconds", &[]);
    assert!(age.is_some(), "{failing:#?}");

    // Space returns: the store's gauges are current again.
    std::fs::remove_file(&filler).expect("free space");
    scrape_until(addr, "fresh store gauges", Duration::from_secs(60), |s| {
        value(s, "ctrwatch_store_bytes", &[]).is_some()
            && value(s, "ctrwatch_store_facts_age_seconds", &[]).is_some_and(|a| a < 5.0)
    });
    daemon.stop();
    drop(mnt);
    let _ = std::fs::remove_dir_all(dir);
}

/// `ctrwatch status --json` of `store` until `done` accepts it (within 60 s).
fn status_until(store: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, err) = ctrwatch(&[
            OsStr::new("status"),
            OsStr::new("--store"),
            store.as_os_str(),
            OsStr::new("--json"),
        ]);
        let v: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
        if code == 0 && done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what}; last (exit {code}):\n{out}\n{err}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether this kernel's BPF LSM is usable, as `ctrwatch probe --json` says.
fn lsm_usable() -> bool {
    let (code, out, err) = ctrwatch(&[OsStr::new("probe"), OsStr::new("--json")]);
    assert_eq!(code, 0, "probe: {err}");
    let v: Value = serde_json::from_str(out.trim()).expect("probe json");
    let state = v
        .pointer("/capabilities/lsm/state")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("probe has no lsm state: {v}"));
    state == "usable"
}

/// Protect mode asked for (`[watch] protect = "enforce"`) on a kernel where BPF LSM is not
/// usable (this host refuses LSM programs): the daemon starts watch-only and says so loudly:
/// an error line, `status` (table and JSON: asked for `enforce`, in force `off`, and why),
/// `ctrwatch_protect_active{mode="enforce"} 0`, and a `protect-unavailable` alert delivered to
/// a real webhook receiver on 127.0.0.1. `--protect dry-run` overrides the file.
#[test]
fn protect_mode_where_bpf_lsm_is_not_usable_is_said_loudly_and_the_daemon_watches() {
    tests::require_root();
    if lsm_usable() {
        eprintln!("BPF LSM is usable on this kernel: the fallback is tested in the QEMU guests");
        return;
    }
    let dir = temp_dir("protect-unavailable");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("root");
    let r = Receiver::start(Mode::Accept);
    let config = write_config(
        &dir,
        &format!(
            "[watch]\nprotect = \"enforce\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n\
             [[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            r.url("/hook")
        ),
    );
    let store = dir.join("events.db");
    let daemon = start_daemon(&[&root], &store, &config, &[]);
    let addr = metrics_addr(&daemon);

    // The log: an error line that says nothing is blocked.
    let log = daemon.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("protect = \"enforce\" asked for"))
        .unwrap_or_else(|| panic!("no protect line in the log:\n{log}"));
    assert!(line.contains(" ERROR "), "not at error level: {line}");
    assert!(line.to_lowercase().contains("nothing is blocked"), "{line}");
    assert!(line.contains("BPF LSM is not usable"), "{line}");

    // It watches: an unlink under the root is stored (and was not blocked).
    let victim = root.join("victim");
    fsop(&[OsStr::new("create"), victim.as_os_str()]);
    fsop(&[OsStr::new("unlink"), victim.as_os_str()]);
    wait_history(&store, &victim, "unlink");

    let v = status_until(&store, "the protect mode", |v| {
        v["daemon"]["protect_requested"].is_string()
    });
    let d = &v["daemon"];
    assert_eq!(d["protect_requested"], "enforce", "{v}");
    assert_eq!(d["protect_in_force"], "off", "{v}");
    assert!(
        d["protect_unavailable"]
            .as_str()
            .is_some_and(|why| why.contains("BPF LSM is not usable")),
        "{v}"
    );
    let (code, table, err) = ctrwatch(&[
        OsStr::new("status"),
        OsStr::new("--store"),
        store.as_os_str(),
    ]);
    assert_eq!(code, 0, "status: {err}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("protect") && l.contains("enforce asked for, NOT IN FORCE")),
        "{table}"
    );

    let samples = scrape_until(
        addr,
        "ctrwatch_protect_active",
        Duration::from_secs(60),
        |s| value(s, "ctrwatch_protect_active", &[("mode", "enforce")]).is_some(),
    );
    assert_eq!(
        value(&samples, "ctrwatch_protect_active", &[("mode", "enforce")]),
        Some(0.0)
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let alert = loop {
        let found = r
            .received()
            .into_iter()
            .filter(|x| x.path() == "/hook")
            .map(|x| x.json())
            .find(|a| a["rule"] == "protect-unavailable");
        if let Some(a) = found {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no protect-unavailable alert; received: {:?}",
            r.received()
                .iter()
                .map(|x| x.json().to_string())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(alert["details"]["requested"], "enforce", "{alert}");
    assert_eq!(alert["details"]["in_force"], "off", "{alert}");
    assert!(
        alert["summary"]
            .as_str()
            .is_some_and(|s| s.contains("blocks nothing")),
        "{alert}"
    );
    daemon.stop();

    // The flag overrides the file; off asked for raises nothing.
    let config = write_config(&dir, "[watch]\nprotect = \"off\"\n");
    let store = dir.join("events-flag.db");
    let daemon = start_daemon(&[&root], &store, &config, &["--protect", "dry-run"]);
    let v = status_until(&store, "the protect mode", |v| {
        v["daemon"]["protect_requested"].is_string()
    });
    assert_eq!(v["daemon"]["protect_requested"], "dry-run", "{v}");
    assert_eq!(v["daemon"]["protect_in_force"], "off", "{v}");
    assert!(
        daemon.stderr().contains("protect = \"dry-run\" asked for"),
        "{}",
        daemon.stderr()
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(dir);
}
