//! `ctrwatch alert test`: a test alert through the real sink code path (formatting, signing,
//! HTTP) to real receivers on 127.0.0.1, which check the native formats and verify the
//! signatures with their own HMAC (tests/src/receiver.rs).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{ffi::OsStr, path::Path, time::Duration};

use tests::{
    bounded::ctrwatch_bounded,
    receiver::{Mode, Receiver, verify_dingtalk, verify_feishu, verify_standard_webhook},
    temp_dir,
};

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const DINGTALK_SECRET: &str = "SECdingtalk0123456789secret";
const FEISHU_SECRET: &str = "feishu-secret-0123456789";
const BEARER: &str = "bearer-0123456789-token";
const DING_TOKEN: &str = "dingtoken0123456789abcdef";
const WECOM_KEY: &str = "wecomkey-0123456789-abcdef";
const SLACK_PATH: &str = "/slack/services/T0000/B0000/slacksecret0123456789";

fn config(dir: &Path, r: &Receiver) -> std::path::PathBuf {
    let text = format!(
        r#"
[alerts]
node_name = "edge-test-7"

[[sinks]]
name = "hook"
kind = "webhook"
url = "{webhook}"
secret = "{WEBHOOK_SECRET}"
bearer_token = "{BEARER}"
headers = {{ "X-Team" = "edge" }}
timeout = "3s"

[[sinks]]
name = "am"
kind = "alertmanager"
urls = ["{am}"]

[[sinks]]
name = "slack"
kind = "slack"
url = "{slack}"

[[sinks]]
name = "ding"
kind = "dingtalk"
url = "{ding}"
secret = "{DINGTALK_SECRET}"

[[sinks]]
name = "feishu"
kind = "feishu"
url = "{feishu}"
secret = "{FEISHU_SECRET}"

[[sinks]]
name = "wecom"
kind = "wecom"
url = "{wecom}"
"#,
        webhook = r.url("/hook"),
        am = r.url("/am"),
        slack = r.url(SLACK_PATH),
        ding = r.url(&format!("/dingtalk/robot/send?access_token={DING_TOKEN}")),
        feishu = r.url("/feishu/open-apis/bot/v2/hook/abc"),
        wecom = r.url(&format!("/wecom/cgi-bin/webhook/send?key={WECOM_KEY}")),
    );
    let path = dir.join("ctrwatch.toml");
    std::fs::write(&path, text).expect("config");
    path
}

fn alert_test(config: &Path, sink: Option<&str>) -> (Option<i32>, String, String) {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("alert"),
        OsStr::new("test"),
        OsStr::new("--config"),
        config.as_os_str(),
    ];
    if let Some(s) = sink {
        args.push(OsStr::new(s));
    }
    let out = ctrwatch_bounded(&args, Duration::from_secs(60));
    assert!(!out.timed_out, "alert test hung");
    (out.code, out.stdout_text(), out.stderr_text())
}

fn assert_no_secret(text: &str) {
    for secret in [
        WEBHOOK_SECRET,
        &WEBHOOK_SECRET[6..],
        DINGTALK_SECRET,
        FEISHU_SECRET,
        BEARER,
        DING_TOKEN,
        WECOM_KEY,
        "slacksecret0123456789",
    ] {
        assert!(
            !text.contains(secret),
            "a secret ({secret}) is shown:\n{text}"
        );
    }
}

#[test]
fn every_sink_kind_gets_its_native_format_correctly_signed() {
    let dir = temp_dir("alert-test");
    let r = Receiver::start(Mode::Accept);
    let config = config(&dir, &r);
    let (code, stdout, stderr) = alert_test(&config, None);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_no_secret(&stdout);
    assert_no_secret(&stderr);
    for sink in ["hook", "am", "slack", "ding", "feishu", "wecom"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(sink) && l.contains("accepted")),
            "{sink} not reported accepted:\n{stdout}"
        );
    }
    let got = r.received();
    assert_eq!(got.len(), 6, "{got:#?}");
    let by = |p: &str| {
        got.iter()
            .find(|x| x.path().starts_with(p))
            .unwrap_or_else(|| panic!("nothing received on {p}"))
    };

    // Webhook: ctrwatch's body, Standard Webhooks headers and signature, custom headers.
    let hook = by("/hook");
    verify_standard_webhook(hook, WEBHOOK_SECRET).expect("webhook signature");
    let body = hook.json();
    assert_eq!(body["version"], 1);
    assert_eq!(body["rule"], "heartbeat");
    assert_eq!(body["summary"], "ctrwatch test alert from edge-test-7");
    assert_eq!(body["node"]["hostname"], "edge-test-7");
    let id = body["id"].as_str().unwrap_or("");
    assert!(id.starts_with("ctw-") && id.len() == 36, "{id}");
    assert_eq!(hook.header("webhook-id"), Some(format!("{id}.1").as_str()));
    for field in [
        "first_seen",
        "last_seen",
        "count",
        "command",
        "events",
        "severity",
    ] {
        assert!(!body[field].is_null(), "{field} missing: {body}");
    }
    assert_eq!(
        hook.header("authorization"),
        Some(format!("Bearer {BEARER}").as_str())
    );
    assert_eq!(hook.header("x-team"), Some("edge"));
    assert_eq!(hook.header("content-type"), Some("application/json"));

    // Alertmanager: a JSON array on /api/v2/alerts with labels and explicit times.
    let am = by("/am");
    assert_eq!(am.path(), "/am/api/v2/alerts");
    let arr = am.json();
    let a = &arr[0];
    assert_eq!(a["labels"]["alertname"], "CtrwatchHeartbeat");
    assert_eq!(a["labels"]["node"], "edge-test-7");
    assert_eq!(a["labels"]["alert_id"], id);
    assert!(
        a["startsAt"].is_string() && a["endsAt"].is_string(),
        "{arr}"
    );

    // Slack: {"text"} with mrkdwn.
    let slack = by("/slack");
    assert!(
        slack.json()["text"]
            .as_str()
            .unwrap_or("")
            .contains("ctrwatch test alert from edge-test-7"),
        "{}",
        slack.json()
    );

    // DingTalk: markdown, signed in the URL.
    let ding = by("/dingtalk");
    verify_dingtalk(ding, DINGTALK_SECRET).expect("dingtalk signature");
    assert_eq!(ding.query("access_token").as_deref(), Some(DING_TOKEN));
    assert_eq!(ding.json()["msgtype"], "markdown");
    assert!(ding.json()["markdown"]["title"].is_string());

    // Feishu: text, signed in the body.
    let feishu = by("/feishu");
    verify_feishu(feishu, FEISHU_SECRET).expect("feishu signature");
    assert_eq!(feishu.json()["msg_type"], "text");
    assert!(
        feishu.json()["content"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("ctrwatch test alert")
    );

    // WeCom: markdown content within 4096 bytes.
    let wecom = by("/wecom");
    assert_eq!(wecom.query("key").as_deref(), Some(WECOM_KEY));
    assert_eq!(wecom.json()["msgtype"], "markdown");
    assert!(
        wecom.json()["markdown"]["content"]
            .as_str()
            .unwrap_or("")
            .len()
            <= 4096
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_error_code_in_a_200_answer_is_a_failure_and_one_sink_can_be_chosen() {
    let dir = temp_dir("alert-test-errcode");
    let r = Receiver::start(Mode::Body200(
        r#"{"errcode":310000,"errmsg":"sign not match"}"#.into(),
    ));
    let config = config(&dir, &r);
    let (code, stdout, stderr) = alert_test(&config, Some("ding"));
    assert_ne!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("errcode 310000"), "{stdout}");
    assert!(stdout.contains("sign not match"), "{stdout}");
    assert_no_secret(&stdout);
    assert_no_secret(&stderr);
    // Only the chosen sink was sent to.
    let got = r.received();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(got[0].path().starts_with("/dingtalk"));

    // A refused connection: reported, exit non-zero, no secret in the error.
    r.set_mode(Mode::Refuse);
    let (code, stdout, stderr) = alert_test(&config, Some("wecom"));
    assert_ne!(code, Some(0));
    assert!(stdout.contains("connection refused"), "{stdout}\n{stderr}");
    assert_no_secret(&stdout);
    assert_no_secret(&stderr);

    // An unknown sink name is a clear error.
    r.set_mode(Mode::Accept);
    let (code, _, stderr) = alert_test(&config, Some("nope"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no sink \"nope\""), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}
