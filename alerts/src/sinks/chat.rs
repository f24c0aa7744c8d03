//! Chat robots, in their native formats:
//!
//! * Slack incoming webhook: `{"text": …}` in mrkdwn (`&`, `<`, `>` escaped); the URL is the
//!   secret. 2xx is delivered; 429 carries `Retry-After`.
//! * DingTalk custom robot: `{"msgtype":"markdown","markdown":{"title","text"}}`; signed (when
//!   a secret is configured) by `timestamp` (ms) and `sign` = URL-encoded base64 of
//!   HMAC-SHA256(key = secret, message = `timestamp + "\n" + secret`) added to the URL's
//!   query. Answers HTTP 200 with `errcode` (0 = ok).
//! * Feishu / Lark custom bot: `{"msg_type":"text","content":{"text"}}` with `timestamp`
//!   (seconds, as a string) and `sign` = base64 of HMAC-SHA256(key = `timestamp + "\n" +
//!   secret`, message = empty) in the body. Answers HTTP 200 with `code` (0 = ok).
//! * WeCom group robot: `{"msgtype":"markdown","markdown":{"content"}}`, at most 4096 bytes;
//!   the URL's `key` is the secret. Answers HTTP 200 with `errcode`.
//!
//! A robot's message is short: the title (severity, rule, node, and for a later revision
//! "now N events"), the summary, the process, image and layer, the verdict and its reason,
//! the command that shows the whole story, and the alert id. Text from the node (paths,
//! command lines) is escaped for the robot's markup, so that it shows as written and cannot
//! inject links or formatting.

use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ctrwatch_config::{SinkConfig, SinkKind};
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{Outcome, Request, Response, Target, status_error};
use crate::alert::AlertBody;

/// Robot messages are cut to this many bytes (WeCom's markdown limit is 4096; Feishu's body
/// limit is 20 KB; DingTalk's is larger).
pub const MAX_TEXT_BYTES: usize = 3800;

/// DingTalk's "sending too fast" error code: the robot is throttled for a while.
const DINGTALK_THROTTLED: i64 = 130101;

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        // HMAC takes keys of any length.
        Err(_) => Vec::new(),
    }
}

/// DingTalk's `sign` before URL encoding: base64(HMAC-SHA256(key = secret, message =
/// `timestamp_ms + "\n" + secret`)).
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    let message = format!("{timestamp_ms}\n{secret}");
    BASE64.encode(hmac_sha256(secret.as_bytes(), message.as_bytes()))
}

/// Feishu's `sign`: base64(HMAC-SHA256(key = `timestamp_s + "\n" + secret`, message = "")).
pub fn feishu_sign(secret: &str, timestamp_s: i64) -> String {
    let key = format!("{timestamp_s}\n{secret}");
    BASE64.encode(hmac_sha256(key.as_bytes(), b""))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Which markup the text is written in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Markup {
    Slack,
    Markdown,
    Plain,
}

fn escape(markup: Markup, text: &str) -> String {
    match markup {
        Markup::Slack => text
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;"),
        Markup::Markdown => {
            let mut out = String::with_capacity(text.len());
            for c in text.chars() {
                if "\\`*_[]()#<>!|~".contains(c) {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        }
        Markup::Plain => text.to_owned(),
    }
}

/// Inline code: the command to copy. A backtick inside would end it: replaced.
fn code(markup: Markup, text: &str) -> String {
    match markup {
        Markup::Plain => text.to_owned(),
        Markup::Slack => format!("`{}`", escape(Markup::Slack, &text.replace('`', "'"))),
        Markup::Markdown => format!("`{}`", text.replace('`', "'")),
    }
}

/// The title line: `[CRITICAL] foreign-change on edge-0042`, and for a later revision
/// `… — now N events`.
pub fn title(alert: &AlertBody) -> String {
    let mut t = format!(
        "[{}] {} on {}",
        alert.severity.name().to_uppercase(),
        alert.rule.name(),
        alert.node.hostname
    );
    if alert.rev > 1 {
        let _ = write!(t, " — now {} events", alert.count);
    }
    t
}

fn message(alert: &AlertBody, markup: Markup) -> String {
    let bold = |s: &str| match markup {
        Markup::Slack => format!("*{}*", escape(markup, s)),
        Markup::Markdown => format!("**{}**", escape(markup, s)),
        Markup::Plain => s.to_owned(),
    };
    let mut lines = vec![bold(&title(alert)), escape(markup, &alert.summary)];
    if alert.count > 1 || alert.rev > 1 {
        lines.push(escape(
            markup,
            &format!(
                "{} events from {} to {}",
                alert.count, alert.first_seen, alert.last_seen
            ),
        ));
    } else {
        lines.push(escape(markup, &format!("at {}", alert.first_seen)));
    }
    if let Some(p) = &alert.process {
        let mut who = format!("process: {} (pid {}", p.command_summary(160), p.pid);
        if let Some(unit) = &p.unit {
            let _ = write!(who, ", unit {unit}");
        }
        let _ = write!(who, ", uid {})", p.uid);
        lines.push(escape(markup, &who));
    }
    if let Some(c) = &alert.containerd {
        if let Some(image) = c.images.first() {
            let mut s = format!("image: {image}");
            if let Some(layer) = &c.layer_digest {
                let _ = write!(s, ", layer {layer}");
            }
            lines.push(escape(markup, &s));
        }
        lines.push(escape(
            markup,
            &format!("verdict: {} ({})", c.verdict.name(), c.reason),
        ));
    }
    lines.push(format!("history: {}", code(markup, &alert.command)));
    lines.push(escape(markup, &format!("alert {}", alert.id)));
    let sep = if markup == Markup::Markdown {
        "\n\n"
    } else {
        "\n"
    };
    cut(lines.join(sep), MAX_TEXT_BYTES)
}

/// At most `max` bytes, cut at a character boundary, `…` at the end when cut.
fn cut(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

/// The message for `alert`, signed as the robot wants, at `now_ns`.
pub fn request(config: &SinkConfig, target: &Target, alert: &AlertBody, now_ns: i64) -> Request {
    let secret = config.secret.as_ref().map(|s| s.expose());
    let mut url = target.url().to_owned();
    let body = match config.kind {
        SinkKind::Slack => json!({ "text": message(alert, Markup::Slack) }),
        SinkKind::Dingtalk => {
            if let Some(secret) = secret {
                let ts = now_ns.div_euclid(1_000_000);
                let sign = url_encode(&dingtalk_sign(secret, ts));
                url.push(if url.contains('?') { '&' } else { '?' });
                let _ = write!(url, "timestamp={ts}&sign={sign}");
            }
            json!({
                "msgtype": "markdown",
                "markdown": { "title": title(alert), "text": message(alert, Markup::Markdown) },
            })
        }
        SinkKind::Feishu => {
            let mut b = json!({
                "msg_type": "text",
                "content": { "text": message(alert, Markup::Plain) },
            });
            if let (Some(secret), Some(obj)) = (secret, b.as_object_mut()) {
                let ts = now_ns.div_euclid(1_000_000_000);
                obj.insert("timestamp".into(), Value::String(ts.to_string()));
                obj.insert("sign".into(), Value::String(feishu_sign(secret, ts)));
            }
            b
        }
        // WeCom (and, defensively, any other kind routed here).
        _ => json!({
            "msgtype": "markdown",
            "markdown": { "content": message(alert, Markup::Markdown) },
        }),
    };
    let mut headers = Vec::new();
    for (k, v) in &config.headers {
        headers.push((k.clone(), v.clone()));
    }
    Request {
        url,
        headers,
        body: body.to_string().into_bytes(),
    }
}

/// Robots that answer HTTP 200 with an error code in the body: delivered only when `field`
/// (`errcode`, or Feishu's `code`; Feishu's older `StatusCode` too) is 0.
pub fn judge_errcode(r: &Response, field: &str) -> Outcome {
    if !(200..300).contains(&r.status) {
        return Outcome::Failed {
            error: status_error(r),
            retry_after: r.retry_after,
        };
    }
    let parsed: Option<Value> = serde_json::from_str(&r.body).ok();
    let code = parsed.as_ref().and_then(|v| {
        v.get(field)
            .or_else(|| v.get("StatusCode"))
            .and_then(Value::as_i64)
    });
    match code {
        Some(0) => Outcome::Accepted,
        Some(code) => {
            let msg = parsed
                .as_ref()
                .and_then(|v| {
                    v.get("errmsg")
                        .or_else(|| v.get("msg"))
                        .or_else(|| v.get("StatusMessage"))
                })
                .and_then(Value::as_str)
                .unwrap_or("");
            Outcome::Failed {
                error: format!(
                    "HTTP {} with {field} {code}: {}",
                    r.status,
                    super::excerpt(msg, 200)
                ),
                retry_after: r
                    .retry_after
                    .or((code == DINGTALK_THROTTLED).then_some(Duration::from_secs(60))),
            }
        }
        None => Outcome::Failed {
            error: format!(
                "HTTP {} without an {field} in the answer: {}",
                r.status,
                super::excerpt(&r.body, 200)
            ),
            retry_after: r.retry_after,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Alert, Node};
    use crate::sinks::{Sink, tests::sink_config};
    use ctrwatch_config::RuleId;
    use ctrwatch_event::{ContainerdView, ProcessView, Severity, Verdict};
    use std::sync::Arc;

    const NOW: i64 = 1_700_000_000_123_000_000;

    fn alert() -> Alert {
        let mut a = Alert::new(
            RuleId::ForeignChange,
            Severity::Critical,
            "k",
            Node {
                hostname: "edge-1".into(),
                machine_id: "m".into(),
            },
            NOW,
            "rm deleted /pause <b>[x](http://evil)</b> & more",
            "ctrwatch history /pause --since 1h",
        );
        a.process = Some(Arc::new(ProcessView {
            pid: 42,
            comm: "rm".into(),
            cmdline: vec!["rm".into(), "/pause".into()],
            unit: Some("cleanup.service".into()),
            ..Default::default()
        }));
        a.containerd = Some(ContainerdView {
            images: vec!["docker.io/library/pause:3.6".into()],
            verdict: Verdict::Foreign,
            reason: "not containerd".into(),
            ..Default::default()
        });
        a
    }

    fn built(kind: SinkKind, url: &str, secret: Option<&str>) -> (Request, Value) {
        let sink = Sink::new(
            sink_config(kind, &[url], secret),
            &crate::target_key::TEST_KEY,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let a = alert();
        let text = a.body_json().unwrap_or_default();
        let b = AlertBody::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let req = sink.request(&sink.targets[0], &text, &b, NOW, &Default::default());
        let v: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        (req, v)
    }

    /// Values computed independently, with Python's hmac over the same inputs
    /// (`hmac.new(key, msg, sha256)`, then base64).
    #[test]
    fn dingtalk_and_feishu_signatures() {
        assert_eq!(
            dingtalk_sign("SECxyz", 1_700_000_000_123),
            "xh8ClKxXkGcVcMyoCVaoyF/wqY5Q4Hajbs0xYHUZLa4="
        );
        assert_eq!(
            feishu_sign("secret", 1_700_000_000),
            "fiWS2+gh28DOydAv7hzONH/mDn9+b1Y4Y5ivXWXy8vA="
        );
        assert_eq!(url_encode("a+b/c="), "a%2Bb%2Fc%3D");
    }

    #[test]
    fn slack_text_is_escaped_mrkdwn() {
        let (req, v) = built(
            SinkKind::Slack,
            "https://hooks.slack.com/services/T/B/X",
            None,
        );
        assert_eq!(req.url, "https://hooks.slack.com/services/T/B/X");
        let text = v["text"].as_str().unwrap_or("");
        assert!(
            text.starts_with("*[CRITICAL] foreign-change on edge-1*\n"),
            "{text}"
        );
        assert!(
            text.contains("&lt;b&gt;[x](http://evil)&lt;/b&gt; &amp; more"),
            "{text}"
        );
        assert!(
            text.contains("`ctrwatch history /pause --since 1h`"),
            "{text}"
        );
        assert!(
            text.contains("process: rm /pause (pid 42, unit cleanup.service, uid 0)"),
            "{text}"
        );
        assert!(
            text.contains("image: docker.io/library/pause:3.6"),
            "{text}"
        );
        assert!(text.contains("verdict: foreign (not containerd)"), "{text}");
    }

    #[test]
    fn dingtalk_is_signed_in_the_url_and_markdown_in_the_body() {
        let (req, v) = built(
            SinkKind::Dingtalk,
            "https://oapi.dingtalk.com/robot/send?access_token=T",
            Some("SECxyz"),
        );
        assert_eq!(
            req.url,
            format!(
                "https://oapi.dingtalk.com/robot/send?access_token=T&timestamp=1700000000123&sign={}",
                url_encode(&dingtalk_sign("SECxyz", 1_700_000_000_123))
            )
        );
        assert_eq!(v["msgtype"], "markdown");
        assert_eq!(
            v["markdown"]["title"],
            "[CRITICAL] foreign-change on edge-1"
        );
        let text = v["markdown"]["text"].as_str().unwrap_or("");
        assert!(text.contains("\\[x\\]\\(http://evil\\)"), "{text}");
        // Unsigned robots get no signature.
        let (req, _) = built(
            SinkKind::Dingtalk,
            "https://oapi.dingtalk.com/robot/send?access_token=T",
            None,
        );
        assert!(!req.url.contains("sign="));
    }

    #[test]
    fn feishu_is_signed_in_the_body() {
        let (req, v) = built(
            SinkKind::Feishu,
            "https://open.feishu.cn/open-apis/bot/v2/hook/abc",
            Some("secret"),
        );
        assert_eq!(req.url, "https://open.feishu.cn/open-apis/bot/v2/hook/abc");
        assert_eq!(v["msg_type"], "text");
        assert_eq!(v["timestamp"], "1700000000");
        assert_eq!(v["sign"], feishu_sign("secret", 1_700_000_000));
        assert!(
            v["content"]["text"]
                .as_str()
                .unwrap_or("")
                .starts_with("[CRITICAL] foreign-change on edge-1\n")
        );
    }

    #[test]
    fn wecom_markdown_fits_its_limit() {
        let sink = Sink::new(
            sink_config(
                SinkKind::Wecom,
                &["https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=K"],
                None,
            ),
            &crate::target_key::TEST_KEY,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut a = alert();
        a.summary = "é".repeat(5000);
        let text = a.body_json().unwrap_or_default();
        let b = AlertBody::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let req = sink.request(&sink.targets[0], &text, &b, NOW, &Default::default());
        let v: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        assert_eq!(v["msgtype"], "markdown");
        let content = v["markdown"]["content"].as_str().unwrap_or("");
        assert!(
            content.len() <= 4096 && content.ends_with('…'),
            "{}",
            content.len()
        );
    }

    #[test]
    fn later_revisions_say_how_many_events() {
        let mut a = alert();
        a.rev = 2;
        a.count = 20_000;
        let b =
            AlertBody::parse(&a.body_json().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            title(&b),
            "[CRITICAL] foreign-change on edge-1 — now 20000 events"
        );
    }

    #[test]
    fn errcodes_in_a_200_are_failures() {
        let r = |status: u16, body: &str| Response {
            status,
            retry_after: None,
            body: body.into(),
        };
        assert_eq!(
            judge_errcode(&r(200, r#"{"errcode":0,"errmsg":"ok"}"#), "errcode"),
            Outcome::Accepted
        );
        assert_eq!(
            judge_errcode(
                &r(200, r#"{"errcode":310000,"errmsg":"sign not match"}"#),
                "errcode"
            ),
            Outcome::Failed {
                error: "HTTP 200 with errcode 310000: sign not match".into(),
                retry_after: None
            }
        );
        assert_eq!(
            judge_errcode(&r(200, r#"{"code":0,"msg":"success"}"#), "code"),
            Outcome::Accepted
        );
        assert_eq!(
            judge_errcode(&r(200, r#"{"StatusCode":0}"#), "code"),
            Outcome::Accepted
        );
        assert!(matches!(
            judge_errcode(&r(200, r#"{"code":19021,"msg":"sign match fail"}"#), "code"),
            Outcome::Failed { .. }
        ));
        assert!(matches!(
            judge_errcode(&r(200, "<html>"), "errcode"),
            Outcome::Failed { .. }
        ));
        assert_eq!(
            judge_errcode(
                &r(200, r#"{"errcode":130101,"errmsg":"send too fast"}"#),
                "errcode"
            ),
            Outcome::Failed {
                error: "HTTP 200 with errcode 130101: send too fast".into(),
                retry_after: Some(Duration::from_secs(60))
            }
        );
    }
}
