//! `ctrwatch config check` and `ctrwatch config example`, as an operator runs them before
//! pushing a file to a fleet: the real binary, real files.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::process::Command;

use tests::ctrwatch_bin;

fn config(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(ctrwatch_bin())
        .arg("config")
        .args(args)
        .output()
        .expect("ctrwatch config");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn scratch(name: &str, text: &str) -> std::path::PathBuf {
    // Cargo's scratch directory for integration tests (target/tmp), not /tmp: nothing of
    // these files is left behind on the machine.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("config-cli.{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// The example that `config example` prints is the shipped file, and it checks as valid:
/// a node's file can start from it.
#[test]
fn the_printed_example_is_the_shipped_file_and_is_valid() {
    let (code, example, err) = config(&["example"]);
    assert_eq!(code, 0, "{err}");
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/ctrwatch.toml"),
    )
    .expect("packaging/ctrwatch.toml");
    assert_eq!(example, shipped);
    let path = scratch("example.toml", &example);
    let (code, out, err) = config(&["check", path.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": valid"), "{out}");
    // What it sets is shown, defaults included.
    for section in [
        "watch:", "store:", "metrics:", "alerts:", "rules:", "sinks:",
    ] {
        assert!(out.contains(section), "{section} missing from\n{out}");
    }
}

/// A wrong file: exit 2, each problem as FILE:LINE:COLUMN: KEY: what, on stderr.
#[test]
fn a_wrong_file_names_file_line_column_and_key() {
    let path = scratch(
        "wrong.toml",
        "[store]\nretention_days = 30\n\n[[sinks]]\nname = \"ops\"\nkind = \"webhok\"\nurl = \"https://example.test/hook\"\n",
    );
    let (code, out, err) = config(&["check", path.to_str().expect("utf-8")]);
    assert_eq!(code, 2, "{out}{err}");
    let shown = format!("{}:6:", path.display());
    assert!(err.contains(&shown), "no {shown} in\n{err}");
    assert!(
        err.contains("sinks[0].kind") || err.contains("sinks[1].kind"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
}

/// A missing file is not "invalid": exit 1, one line naming it.
#[test]
fn a_missing_file_is_exit_1() {
    let (code, _out, err) = config(&["check", "/nonexistent/ctrwatch.toml"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/ctrwatch.toml"), "{err}");
}

/// Sinks are listed without the secrets some receivers keep in their URL (Slack's path,
/// WeCom's key, userinfo) or in the file (signing secrets, bearer tokens).
#[test]
fn the_summary_never_prints_secrets() {
    let path = scratch(
        "sinks.toml",
        r#"
[[sinks]]
name = "chat"
kind = "slack"
url = "https://hooks.slack.com/services/T000/B000/SLACKSECRET"

[[sinks]]
name = "robot"
kind = "wecom"
url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=WECOMSECRET"

[[sinks]]
name = "hook"
kind = "webhook"
url = "https://user:USERSECRET@example.test/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
bearer_token = "BEARERSECRET"
"#,
    );
    let (code, out, err) = config(&["check", path.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}{err}");
    for secret in [
        "SLACKSECRET",
        "WECOMSECRET",
        "USERSECRET",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "BEARERSECRET",
    ] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
        assert!(!err.contains(secret), "{secret} printed:\n{err}");
    }
    assert!(
        out.contains("\"chat\" (slack): https://hooks.slack.com/…"),
        "{out}"
    );
    assert!(out.contains("https://example.test/…"), "{out}");
}

/// `config check` says valid only when `ctrwatch run` would start with the file: a file others
/// can write (run, as root, refuses it), a backend this build does not have, and a store group
/// that does not exist were reported valid (exit 0) although `run` refused each of them.
#[test]
fn what_run_refuses_is_invalid() {
    use std::os::unix::fs::PermissionsExt as _;
    // SAFETY: geteuid cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    let writable = scratch("writable.toml", "[store]\nretention_days = 30\n");
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let mut cases = vec![
        (
            scratch("lsm.toml", "[watch]\nbackend = \"lsm\"\n"),
            "no LSM programs yet",
        ),
        (
            scratch(
                "group.toml",
                "[store]\ngroup = \"no-such-group-ctrwatch-test\"\n",
            ),
            "[store] group",
        ),
    ];
    if as_root {
        cases.push((writable.clone(), "writable by root alone"));
    }
    for (path, words) in &cases {
        let (code, out, err) = config(&["check", path.to_str().expect("utf-8")]);
        assert_eq!(code, 2, "{}: {out}{err}", path.display());
        assert!(
            err.contains(words),
            "{}: {err} lacks {words:?}",
            path.display()
        );
        assert!(
            err.contains("`ctrwatch run` would refuse it"),
            "{}: {err}",
            path.display()
        );
    }
    let ok = scratch("ok.toml", "[store]\nretention_days = 30\n");
    let (code, out, err) = config(&["check", ok.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}{err}");
}

/// `backend = "fentry"` is checked against the kernel as `run` checks it at the start: invalid,
/// with the kernel's answer, where the kernel refuses fentry programs (this project's CI
/// kernel), valid where it accepts them (`ctrwatch probe` tells which). It was refused on
/// every kernel when no fentry backend existed.
#[test]
fn fentry_is_checked_against_the_kernel() {
    let probe = Command::new(ctrwatch_bin())
        .args(["probe", "--json"])
        .output()
        .expect("ctrwatch probe");
    let probe: serde_json::Value = serde_json::from_slice(&probe.stdout).expect("probe's JSON");
    let state = probe["capabilities"]["fentry"]["state"]
        .as_str()
        .expect("the fentry probe's state")
        .to_string();
    let path = scratch("fentry.toml", "[watch]\nbackend = \"fentry\"\n");
    let (code, out, err) = config(&["check", path.to_str().expect("utf-8")]);
    if state == "usable" {
        assert_eq!(code, 0, "{out}{err}");
    } else {
        assert_eq!(state, "refused", "{probe}");
        assert_eq!(code, 2, "{out}{err}");
        assert!(
            err.contains("backend fentry was asked for") && err.contains("this kernel refused it"),
            "{err}"
        );
    }
}
