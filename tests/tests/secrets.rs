//! Secrets in command lines are masked when the process is captured (issue 10, item 3): real
//! processes with `--password=…`, `--token=…`, `--password VALUE`, `PASSWORD=… cmd` in a
//! script, `mysql -p…`, `curl -u user:pass`, URL user info, an `Authorization: Bearer …`
//! header, a `python3 -c` script assigning `password = "…"`, and patterns added with
//! `--mask-arg`, each write a file under a watched root. Neither `watch --json` nor the
//! history of `ctrwatch run` (`query --json`, `history`, the database file itself) holds the
//! secret, while the arguments around it stay readable. One of the processes was started
//! before ctrwatch (its command line comes from /proc, not from an exec record).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::{OsStr, OsString},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{Watcher, ctrwatch, json_lines, process, require_root, s, temp_dir};

/// Every secret in this test contains it.
const SECRET: &str = "hunter2";

/// Extra patterns given to both ctrwatch instances: a whole match, and a capture group.
const MASK_ARGS: [&str; 4] = ["--mask-arg", "sk-[a-z0-9]+", "--mask-arg", "vault:([^ ]+)"];

/// One process to run: argv[0], the program, its arguments (`{R}` is the root), the file it
/// writes (under the root), and arguments that must appear as they are in the recorded
/// command line.
struct Case {
    arg0: &'static str,
    program: &'static str,
    args: Vec<String>,
    file: &'static str,
    expect: Vec<&'static str>,
}

/// The shell command every bash case runs: writes `$0/<file>` itself (a redirection, so the
/// bash process with the secret-bearing argv is the writer), then `true` so that bash does
/// not replace itself.
fn write_script(file: &str) -> String {
    format!("echo x > \"$0\"/{file}; true")
}

fn cases(root: &Path) -> Vec<Case> {
    let r = root.to_string_lossy().into_owned();
    let bash = |file: &'static str, rest: &[&str], expect: Vec<&'static str>| Case {
        arg0: "bash",
        program: "bash",
        args: [vec!["-c".to_owned(), write_script(file), r.clone()]]
            .into_iter()
            .flatten()
            .chain(rest.iter().map(|a| a.to_string()))
            .collect(),
        file,
        expect,
    };
    vec![
        bash(
            "flags",
            &[
                "--password=hunter2",
                "--token=hunter2-token",
                "--user=alice",
                "--verbose",
            ],
            vec!["--password=***", "--token=***", "--user=alice", "--verbose"],
        ),
        bash(
            "next-arg",
            &["--password", "hunter2", "--db", "main"],
            vec!["--password", "***", "--db", "main"],
        ),
        Case {
            arg0: "bash",
            program: "bash",
            args: vec![
                "-c".into(),
                format!("PASSWORD=hunter2 true; {}", write_script("env-assign")),
                r.clone(),
            ],
            file: "env-assign",
            expect: vec!["-c"],
        },
        Case {
            arg0: "mysql",
            program: "bash",
            args: vec![
                "-c".into(),
                write_script("mysql"),
                r.clone(),
                "-u".into(),
                "root".into(),
                "-phunter2".into(),
                "shop".into(),
            ],
            file: "mysql",
            expect: vec!["-u", "root", "-p***", "shop"],
        },
        Case {
            arg0: "curl",
            program: "bash",
            args: vec![
                "-c".into(),
                write_script("curl"),
                r.clone(),
                "-u".into(),
                "alice:hunter2".into(),
                "https://example.com/x".into(),
            ],
            file: "curl",
            expect: vec!["-u", "alice:***", "https://example.com/x"],
        },
        bash(
            "url",
            &["https://alice:hunter2@example.com/repo.git"],
            vec!["https://alice:***@example.com/repo.git"],
        ),
        bash(
            "header",
            &["-H", "Authorization: Bearer hunter2.jwt.sig", "-H", "Accept: */*"],
            vec!["-H", "Authorization: Bearer ***", "Accept: */*"],
        ),
        Case {
            arg0: "python3",
            program: "/usr/bin/python3",
            args: vec![
                "-c".into(),
                "import sys\npassword = \"hunter2\"\nopen(sys.argv[1] + \"/python\", \"w\").write(\"x\")\n"
                    .into(),
                r.clone(),
            ],
            file: "python",
            expect: vec![
                "-c",
                "import sys\npassword = \"***\"\nopen(sys.argv[1] + \"/python\", \"w\").write(\"x\")\n",
            ],
        },
        bash(
            "custom",
            &["--key", "sk-hunter2abc", "vault:hunter2", "plain"],
            vec!["--key", "***", "vault:***", "plain"],
        ),
    ]
}

/// A child killed if the test fails before it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cmdline(v: &Value) -> Vec<String> {
    process(v, "cmdline")
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Records whose path is the file `name` under the root.
fn records_of<'a>(records: &'a [Value], root: &Path, name: &str) -> Vec<&'a Value> {
    let p = root.join(name);
    let p = p.to_string_lossy();
    records.iter().filter(|v| s(v, "path") == p).collect()
}

fn check_records(what: &str, records: &[Value], root: &Path, all: &[(&str, Vec<&str>)]) {
    for (file, expect) in all {
        let found = records_of(records, root, file);
        assert!(
            !found.is_empty(),
            "{what}: no record for {file}; records:\n{}",
            records
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        for v in found {
            let args = cmdline(v);
            for e in expect {
                assert!(
                    args.iter().any(|a| a == e),
                    "{what}: {file}: the command line {args:?} lacks {e:?}"
                );
            }
        }
    }
    for v in records {
        let text = v.to_string();
        assert!(
            !text.contains(SECRET),
            "{what}: a record holds the secret: {text}"
        );
    }
}

#[test]
fn secrets_in_command_lines_are_masked_at_capture() {
    require_root();
    let base = temp_dir("secrets");
    let root = base.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let store = base.join("store/events.db");

    // Started before ctrwatch: its command line is read from /proc. It writes once `go` exists.
    let go = root.join("go");
    let mut early = KillOnDrop(
        Command::new("bash")
            .args([
                "-c",
                "while [ ! -e \"$0\"/go ]; do sleep 0.05; done; echo x > \"$0\"/early; true",
            ])
            .arg(&root)
            .args(["--client-secret", "hunter2-early", "--name=early"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let mut watch_args: Vec<&str> = Vec::new();
    watch_args.extend(MASK_ARGS);
    let watcher = Watcher::start(&[&root], &watch_args);
    let mut run_args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        root.as_os_str().to_owned(),
        "--store".into(),
        store.as_os_str().to_owned(),
    ];
    run_args.extend(MASK_ARGS.iter().map(OsString::from));
    let daemon = Watcher::start_command(&run_args);

    std::fs::write(&go, b"").unwrap();
    assert!(early.0.wait().unwrap().success());
    let all_cases = cases(&root);
    for c in &all_cases {
        let status = Command::new(c.program)
            .arg0(c.arg0)
            .args(&c.args)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{} {:?}", c.program, c.args);
    }
    let mut expected: Vec<(&str, Vec<&str>)> = all_cases
        .iter()
        .map(|c| (c.file, c.expect.clone()))
        .collect();
    expected.push(("early", vec!["--client-secret", "***", "--name=early"]));

    // `watch --json`.
    for (file, _) in &expected {
        let p = root.join(file).to_string_lossy().into_owned();
        watcher.wait_for(file, |v| s(v, "path") == p);
    }
    let records = watcher.stop();
    check_records("watch --json", &records, &root, &expected);
    // The script of the PASSWORD=… case: the value is masked, the rest of the script kept.
    let env_case = records_of(&records, &root, "env-assign");
    let script = cmdline(env_case[0]).get(2).cloned().unwrap_or_default();
    assert!(
        script.starts_with("PASSWORD=*** true; echo x"),
        "the script is not masked as expected: {script:?}"
    );

    // The history of `ctrwatch run` (committed every second; 60 s allowed for a loaded
    // machine).
    let deadline = Instant::now() + Duration::from_secs(60);
    let stored = loop {
        let (code, out, err) = ctrwatch(&[
            OsStr::new("query"),
            OsStr::new("--store"),
            store.as_os_str(),
            OsStr::new("--json"),
        ]);
        assert_eq!(code, 0, "query: {err}");
        let rows = json_lines(&out);
        let complete = expected
            .iter()
            .all(|(f, _)| !records_of(&rows, &root, f).is_empty());
        if complete {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "the store misses records:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    daemon.stop();
    check_records("query --json", &stored, &root, &expected);
    let flags: PathBuf = root.join("flags");
    for json in [false, true] {
        let mut args = vec![
            OsStr::new("history"),
            flags.as_os_str(),
            OsStr::new("--store"),
            store.as_os_str(),
        ];
        if json {
            args.push(OsStr::new("--json"));
        }
        let (code, out, err) = ctrwatch(&args);
        assert_eq!(code, 0, "history: {err}");
        assert!(!out.contains(SECRET), "history shows the secret:\n{out}");
        if json {
            check_records("history --json", &json_lines(&out), &root, &expected[..1]);
        }
    }

    // The database itself never held it.
    for ext in ["", "-wal", "-shm", "-journal"] {
        let mut p = store.as_os_str().to_owned();
        p.push(ext);
        if let Ok(bytes) = std::fs::read(&p) {
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "{} holds the secret",
                Path::new(&p).display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn a_bad_mask_pattern_is_a_usage_error() {
    for cmd in ["watch", "run"] {
        let (code, _, err) =
            ctrwatch(&[OsStr::new(cmd), OsStr::new("--mask-arg"), OsStr::new("(")]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("--mask-arg") && err.contains("not a valid regular expression"),
            "{err}"
        );
    }
}
