//! Sinks: for each kind of receiver, the HTTP request an alert becomes ([`Sink::request`])
//! and how the receiver's answer is judged ([`Sink::judge`]). Pure functions of the alert,
//! the sink's configuration and the time: the delivery workers ([`crate::deliver`]) and
//! `ctrwatch alert test` send what they build through [`crate::http`].
//!
//! The formats (docs/alerts.md):
//! * `webhook`: ctrwatch's JSON body, as the outbox keeps it, signed the Standard Webhooks
//!   way ([`webhook`]);
//! * `alertmanager`: the v2 API's JSON array ([`alertmanager`]);
//! * `slack`, `dingtalk`, `feishu`, `wecom`: each robot's native message ([`chat`]).
//!
//! Secrets: a sink's signing secret and bearer token, and the URLs of robots (whose path or
//! query is the secret), are known only here and to the HTTP client. What is shown or stored
//! names a target by [`Target::shown`], and every error text passes the sink's [`Scrubber`].

pub mod alertmanager;
pub mod chat;
pub mod webhook;

use std::time::Duration;

use ctrwatch_config::{RuleId, SinkConfig, SinkKind};

use crate::alert::AlertBody;
use crate::target_key::TargetKey;

/// A sink that cannot be used as configured.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The signing secret is not what the kind needs.
    #[error("sink {sink:?}: {message}")]
    BadSecret {
        /// The sink's name.
        sink: String,
        /// What is wrong (never the secret).
        message: String,
    },
    /// The CA file or the system roots could not be read.
    #[error("sink {sink:?}: {message}")]
    Tls {
        /// The sink's name.
        sink: String,
        /// What is wrong.
        message: String,
    },
}

/// One URL of a sink: every alert goes to every target (an Alertmanager HA pair has two).
#[derive(Clone)]
pub struct Target {
    /// Its position in the sink's `urls`.
    pub index: usize,
    /// The URL as configured: it may carry the secret (robots). Never shown.
    url: String,
    /// The URL as it may be shown and stored: without user info, query values, and for the
    /// robots without the path (see [`redact_url`]). Unique within the sink.
    pub shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("index", &self.index)
            .field("shown", &self.shown)
            .finish()
    }
}

impl Target {
    /// The configured URL (secret-bearing for robots): for the HTTP client only.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// An HTTP POST to make.
#[derive(Clone)]
pub struct Request {
    /// Where (secret-bearing: never shown).
    pub url: String,
    /// Headers besides `Content-Type: application/json` and the user agent.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// A receiver's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// `Retry-After`, when given (seconds or an HTTP date).
    pub retry_after: Option<Duration>,
    /// The body's start (at most [`crate::http::MAX_BODY`] bytes), lossily decoded.
    pub body: String,
}

/// What an answer means for the delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered.
    Accepted,
    /// Not delivered: try again (after `retry_after` at the earliest, when the receiver said
    /// so). `error` is for people (status and body excerpt, scrubbed).
    Failed {
        /// Why.
        error: String,
        /// The receiver's `Retry-After`, or its throttling code's known wait.
        retry_after: Option<Duration>,
    },
}

/// Options of the formats that are not in the configuration file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatOptions {
    /// Alertmanager: how long an event alert stays active after its last event.
    pub alert_lifetime: Duration,
    /// Alertmanager: active alerts are posted again this often (each post's `endsAt` is three
    /// of these ahead).
    pub resend_every: Duration,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            alert_lifetime: alertmanager::DEFAULT_LIFETIME,
            resend_every: alertmanager::RESEND_EVERY,
        }
    }
}

/// A configured sink, ready to format and judge.
pub struct Sink {
    /// Its configuration (secrets inside [`ctrwatch_config::Secret`], which never prints
    /// them).
    pub config: SinkConfig,
    /// Its URLs.
    pub targets: Vec<Target>,
    /// The webhook's HMAC key (the base64-decoded part of `whsec_…`).
    webhook_key: Option<Vec<u8>>,
    scrubber: Scrubber,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("name", &self.config.name)
            .field("kind", &self.config.kind)
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl Sink {
    /// Checks what the configuration crate could not (the webhook secret's base64) and
    /// prepares the targets.
    /// `key` names the targets whose shown URLs coincide ([`shown_targets`]).
    pub fn new(config: SinkConfig, key: &TargetKey) -> Result<Sink, SinkError> {
        let webhook_key = match (&config.kind, &config.secret) {
            (SinkKind::Webhook, Some(s)) => {
                Some(webhook::decode_secret(s.expose()).map_err(|message| {
                    SinkError::BadSecret {
                        sink: config.name.clone(),
                        message,
                    }
                })?)
            }
            _ => None,
        };
        let targets: Vec<Target> = shown_targets(config.kind, &config.urls, key)
            .into_iter()
            .zip(&config.urls)
            .enumerate()
            .map(|(index, (shown, url))| Target {
                index,
                url: url.clone(),
                shown,
            })
            .collect();
        let scrubber = Scrubber::for_sink(&config);
        Ok(Sink {
            config,
            targets,
            webhook_key,
            scrubber,
        })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether an alert of this rule and severity goes here.
    pub fn wants(&self, rule: RuleId, severity: ctrwatch_config::Severity) -> bool {
        self.config.wants(rule, severity)
    }

    /// Whether this revision is worth a message here. Chat robots get a heartbeat's first
    /// revision only (a message every interval would drown the channel; Alertmanager and
    /// webhooks get every one: that is what a dead man's switch feeds on).
    pub fn sends_revision(&self, body: &AlertBody) -> bool {
        match self.config.kind {
            SinkKind::Webhook | SinkKind::Alertmanager => true,
            _ => body.rule != RuleId::Heartbeat || body.rev <= 1,
        }
    }

    /// The request that delivers `alert` (whose stored JSON is `body_text`) to `target` at
    /// `now_ns`.
    pub fn request(
        &self,
        target: &Target,
        body_text: &str,
        alert: &AlertBody,
        now_ns: i64,
        opts: &FormatOptions,
    ) -> Request {
        match self.config.kind {
            SinkKind::Webhook => webhook::request(
                &self.config,
                self.webhook_key.as_deref(),
                target,
                body_text,
                alert,
                now_ns,
            ),
            SinkKind::Alertmanager => alertmanager::request(
                &self.config,
                target,
                std::slice::from_ref(alert),
                now_ns,
                opts,
            ),
            SinkKind::Slack | SinkKind::Dingtalk | SinkKind::Feishu | SinkKind::Wecom => {
                chat::request(&self.config, target, alert, now_ns)
            }
        }
    }

    /// What the receiver's answer means.
    pub fn judge(&self, response: &Response) -> Outcome {
        let outcome = match self.config.kind {
            SinkKind::Webhook | SinkKind::Alertmanager => judge_status(response),
            SinkKind::Slack => judge_status(response),
            SinkKind::Dingtalk | SinkKind::Wecom => chat::judge_errcode(response, "errcode"),
            SinkKind::Feishu => chat::judge_errcode(response, "code"),
        };
        match outcome {
            Outcome::Failed { error, retry_after } => Outcome::Failed {
                error: self.scrub(&error),
                retry_after,
            },
            ok => ok,
        }
    }

    /// `text` without any of the sink's secrets (URLs, their query values and paths,
    /// signing secret, bearer token, header values).
    pub fn scrub(&self, text: &str) -> String {
        self.scrubber.scrub(text)
    }
}

/// 2xx: delivered; anything else: failed, with the receiver's `Retry-After` if any.
pub fn judge_status(r: &Response) -> Outcome {
    if (200..300).contains(&r.status) {
        Outcome::Accepted
    } else {
        Outcome::Failed {
            error: status_error(r),
            retry_after: r.retry_after,
        }
    }
}

/// "HTTP 500: <body excerpt>".
pub(crate) fn status_error(r: &Response) -> String {
    let excerpt = excerpt(&r.body, 200);
    if excerpt.is_empty() {
        format!("HTTP {}", r.status)
    } else {
        format!("HTTP {}: {excerpt}", r.status)
    }
}

/// The start of a receiver's text, escaped (no control characters reach a terminal or a log),
/// on one line, at most `max` characters.
pub fn excerpt(text: &str, max: usize) -> String {
    let one_line = text.trim();
    let escaped = ctrwatch_event::escape(one_line);
    if escaped.chars().count() > max {
        let mut s: String = escaped.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    } else {
        escaped
    }
}

/// A URL as it may be shown (in `alerts`, `status`, logs and the outbox's `deliveries.target`):
/// scheme, host and port; for Alertmanager also the path (an API prefix) and the query's keys
/// (values masked); for webhooks and the robots, whose URL path or query may be their secret
/// (Mattermost, Teams, Slack-compatible hooks carry a token in the path), nothing more. User
/// info is always dropped.
pub fn redact_url(kind: SinkKind, url: &str) -> String {
    match kind {
        SinkKind::Alertmanager => shown_with_path(url),
        _ => shown_without_path(url),
    }
}

/// The names a sink's targets are shown and stored by ([`redact_url`]): URLs whose redacted
/// forms coincide (two webhooks on one host) are told apart by `#` and 8 hex digits of a
/// hash of the whole URL keyed by `key` ([`TargetKey::tag`]), so that a target keeps its
/// name, and its pending deliveries, when the list is reordered; keyed, so that a reader of
/// the outbox cannot test guesses of a token in the URL against it. The same URL listed
/// twice gets `-2`, `-3` after the hash. Only Alertmanager sinks take several URLs today;
/// the rule is the same for every kind.
pub fn shown_targets(kind: SinkKind, urls: &[String], key: &TargetKey) -> Vec<String> {
    let redacted: Vec<String> = urls.iter().map(|u| redact_url(kind, u)).collect();
    let mut out: Vec<String> = Vec::with_capacity(urls.len());
    for (url, r) in urls.iter().zip(&redacted) {
        let shared = redacted.iter().filter(|x| *x == r).count() > 1;
        let mut shown = if shared {
            format!("{r}#{}", key.tag(url))
        } else {
            r.clone()
        };
        let base = shown.clone();
        let mut n = 1;
        while out.contains(&shown) {
            n += 1;
            shown = format!("{base}-{n}");
        }
        out.push(shown);
    }
    out
}

/// Whether two of `urls` show alike ([`redact_url`]): then their names carry the keyed hash
/// ([`shown_targets`]), and the key is needed to keep them.
pub fn targets_shown_alike(kind: SinkKind, urls: &[String]) -> bool {
    let shown: Vec<String> = urls.iter().map(|u| redact_url(kind, u)).collect();
    shown
        .iter()
        .enumerate()
        .any(|(i, s)| shown[..i].contains(s))
}

/// The names earlier builds gave a sink's targets, `shown` of each URL with `#N` (its place
/// in the list) after the second and later of equal ones: pending deliveries stored under
/// them are renamed to [`shown_targets`]' at start (by the current order of the list).
pub fn positional_shown(urls: &[String], shown: impl Fn(&str) -> String) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(urls.len());
    for u in urls {
        let mut one = shown(u);
        if out.contains(&one) {
            one = format!("{one}#{}", out.len() + 1);
        }
        out.push(one);
    }
    out
}

/// How earlier builds showed a webhook's URL (path and query keys): pending deliveries
/// stored under that name are renamed to [`redact_url`]'s at start, not dropped.
pub fn legacy_webhook_shown(url: &str) -> String {
    shown_with_path(url)
}

/// Scheme, host and port, and the rest of the URL after the authority.
fn authority(url: &str) -> Option<(&str, String, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let host = authority.rsplit('@').next().unwrap_or(authority);
    Some((scheme, ctrwatch_event::escape(host), tail))
}

fn shown_without_path(url: &str) -> String {
    match authority(url) {
        None => "***".into(),
        Some((scheme, host, tail)) if tail.is_empty() || tail == "/" => {
            format!("{scheme}://{host}")
        }
        Some((scheme, host, _)) => format!("{scheme}://{host}/***"),
    }
}

fn shown_with_path(url: &str) -> String {
    let Some((scheme, host, tail)) = authority(url) else {
        return "***".into();
    };
    let tail = tail.split('#').next().unwrap_or("");
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let mut shown = format!("{scheme}://{host}{}", ctrwatch_event::escape(path));
    if let Some(q) = query {
        let keys: Vec<String> = q
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let k = kv.split('=').next().unwrap_or("");
                format!("{}=***", ctrwatch_event::escape(k))
            })
            .collect();
        shown.push('?');
        shown.push_str(&keys.join("&"));
    }
    shown
}

/// Removes a sink's secrets from text (errors from the HTTP stack may quote the URL).
#[derive(Clone, Default)]
pub struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    /// Every secret of the sink: its URLs, their user info, path segments and query values
    /// (robots), the signing secret and the bearer token, custom header values.
    pub fn for_sink(config: &SinkConfig) -> Scrubber {
        let mut secrets = Vec::new();
        for url in &config.urls {
            secrets.push(url.clone());
            if let Some((_, rest)) = url.split_once("://") {
                let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                let (authority, tail) = rest.split_at(split);
                if let Some((userinfo, _)) = authority.rsplit_once('@') {
                    secrets.push(userinfo.to_owned());
                }
                if let Some((_, query)) = tail.split_once('?') {
                    for kv in query.split('&') {
                        if let Some((_, v)) = kv.split_once('=') {
                            secrets.push(v.to_owned());
                        }
                    }
                }
                let path = tail.split(['?', '#']).next().unwrap_or("");
                // A webhook's path may be its token (Mattermost, Teams): only Alertmanager's
                // path is an API prefix.
                if config.kind != SinkKind::Alertmanager {
                    secrets.push(path.to_owned());
                    secrets.extend(path.split('/').map(str::to_owned));
                }
            }
        }
        // Short URL pieces ("services", "v2", "hook") are not secrets and would mangle the
        // text; what is configured as a secret is one, however short.
        secrets.retain(|s| s.len() >= 8);
        if let Some(s) = &config.secret {
            secrets.push(s.expose().to_owned());
        }
        if let Some(t) = &config.bearer_token {
            secrets.push(t.expose().to_owned());
        }
        secrets.extend(config.headers.values().cloned());
        secrets.retain(|s| !s.is_empty());
        // Longest first: a URL is removed whole before its parts.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Scrubber { secrets }
    }

    /// `text` with every secret replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctrwatch_config::{Secret, Severity};
    use std::collections::BTreeMap;

    pub(crate) fn sink_config(kind: SinkKind, urls: &[&str], secret: Option<&str>) -> SinkConfig {
        SinkConfig {
            name: format!("test-{}", kind.name()),
            kind,
            urls: urls.iter().map(|u| u.to_string()).collect(),
            secret: secret.map(Secret::new),
            min_severity: Severity::Info,
            rules: None,
            headers: BTreeMap::new(),
            bearer_token: None,
            ca_file: None,
            timeout: Duration::from_secs(5),
            rate_per_minute: None,
        }
    }

    #[test]
    fn urls_are_shown_without_their_secrets() {
        assert_eq!(
            redact_url(
                SinkKind::Webhook,
                "https://user:pw@hooks.example.com:8443/ctrwatch?token=abc&x=1#frag"
            ),
            "https://hooks.example.com:8443/***"
        );
        // A Mattermost-style hook: the path is the secret.
        assert_eq!(
            redact_url(
                SinkKind::Webhook,
                "https://chat.example.com/hooks/xoxb8f3kq9d7s6a5"
            ),
            "https://chat.example.com/***"
        );
        assert_eq!(
            legacy_webhook_shown(
                "https://user:pw@hooks.example.com:8443/ctrwatch?token=abc&x=1#frag"
            ),
            "https://hooks.example.com:8443/ctrwatch?token=***&x=***"
        );
        assert_eq!(
            redact_url(SinkKind::Alertmanager, "http://10.0.0.5:9093"),
            "http://10.0.0.5:9093"
        );
        assert_eq!(
            redact_url(SinkKind::Alertmanager, "http://am:9093/prefix/?k=v"),
            "http://am:9093/prefix/?k=***"
        );
        assert_eq!(
            redact_url(
                SinkKind::Slack,
                "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX"
            ),
            "https://hooks.slack.com/***"
        );
        assert_eq!(
            redact_url(
                SinkKind::Dingtalk,
                "https://oapi.dingtalk.com/robot/send?access_token=SECRETTOKEN"
            ),
            "https://oapi.dingtalk.com/***"
        );
        assert_eq!(redact_url(SinkKind::Webhook, "no scheme"), "***");
    }

    #[test]
    fn scrubbing_removes_urls_tokens_and_secrets() {
        let mut c = sink_config(
            SinkKind::Dingtalk,
            &["https://oapi.dingtalk.com/robot/send?access_token=0123456789abcdef"],
            Some("SECabcdef0123456789"),
        );
        c.bearer_token = Some(Secret::new("bearer-token-value"));
        let s = Scrubber::for_sink(&c);
        let text = "connect to https://oapi.dingtalk.com/robot/send?access_token=0123456789abcdef \
                    failed; token 0123456789abcdef secret SECabcdef0123456789 bearer-token-value";
        let out = s.scrub(text);
        for secret in [
            "0123456789abcdef",
            "SECabcdef0123456789",
            "bearer-token-value",
        ] {
            assert!(!out.contains(secret), "{out}");
        }
        assert!(out.contains("failed"), "{out}");
        // A configured secret is scrubbed however short (only URL pieces need 8 characters).
        let mut c = sink_config(SinkKind::Webhook, &["https://hooks.example.com/x"], None);
        c.bearer_token = Some(Secret::new("t0k3n"));
        let out = Scrubber::for_sink(&c).scrub("401 for token t0k3n");
        assert!(!out.contains("t0k3n"), "{out}");
    }

    #[test]
    fn targets_are_unique_and_debug_hides_the_url() -> Result<(), SinkError> {
        let c = sink_config(
            SinkKind::Alertmanager,
            &["http://a:9093?t=1", "http://a:9093?t=2"],
            None,
        );
        let sink = Sink::new(c, &crate::target_key::TEST_KEY)?;
        // Equal redactions: each told apart by its URL's hash.
        assert!(sink.targets[0].shown.starts_with("http://a:9093?t=***#"));
        assert!(sink.targets[1].shown.starts_with("http://a:9093?t=***#"));
        assert_ne!(sink.targets[0].shown, sink.targets[1].shown);
        assert_eq!(
            sink.targets[0].shown.len(),
            "http://a:9093?t=***#".len() + 8
        );
        let c = sink_config(
            SinkKind::Alertmanager,
            &["http://a:9093", "http://a:9093"],
            None,
        );
        let sink = Sink::new(c, &crate::target_key::TEST_KEY)?;
        assert_eq!(
            sink.targets[1].shown,
            format!("{}-2", sink.targets[0].shown)
        );
        let c = sink_config(
            SinkKind::Slack,
            &["https://hooks.slack.com/services/T/B/SECRETSECRET"],
            None,
        );
        let sink = Sink::new(c, &crate::target_key::TEST_KEY)?;
        let shown = format!("{sink:?} {:?}", sink.targets[0]);
        assert!(!shown.contains("SECRETSECRET"), "{shown}");
        Ok(())
    }

    /// Two targets on one host show the same redacted URL (an Alertmanager pair behind one
    /// proxy, told apart by user or query; a webhook or robot URL's path is never shown):
    /// each is told apart by its own URL, not by its place in the list, so reordering the
    /// configuration keeps every target's name (and its pending deliveries with it).
    #[test]
    fn targets_on_one_host_keep_their_names_when_the_list_is_reordered() -> Result<(), SinkError> {
        let a = "https://user-a:SECRETA@am.example.com/?tenant=SECRETA";
        let b = "https://user-b:SECRETB@am.example.com/?tenant=SECRETB";
        let ab = Sink::new(
            sink_config(SinkKind::Alertmanager, &[a, b], None),
            &crate::target_key::TEST_KEY,
        )?;
        let ba = Sink::new(
            sink_config(SinkKind::Alertmanager, &[b, a], None),
            &crate::target_key::TEST_KEY,
        )?;
        let name = |s: &Sink, url: &str| {
            s.targets
                .iter()
                .find(|t| t.url == url)
                .map(|t| t.shown.clone())
        };
        assert_eq!(name(&ab, a), name(&ba, a), "{ab:?} {ba:?}");
        assert_eq!(name(&ab, b), name(&ba, b), "{ab:?} {ba:?}");
        assert_ne!(name(&ab, a), name(&ab, b));
        for t in ab.targets.iter().chain(&ba.targets) {
            assert!(
                t.shown.starts_with("https://am.example.com/?tenant=***#"),
                "{t:?}"
            );
            assert!(!t.shown.contains("SECRET"), "{t:?}");
        }
        Ok(())
    }

    #[test]
    fn status_judgement() {
        let r = |status, body: &str| Response {
            status,
            retry_after: None,
            body: body.into(),
        };
        assert_eq!(judge_status(&r(200, "")), Outcome::Accepted);
        assert_eq!(judge_status(&r(204, "")), Outcome::Accepted);
        assert_eq!(
            judge_status(&r(500, "boom\n\x1b[31m")),
            Outcome::Failed {
                error: "HTTP 500: boom\\x0a\\x1b[31m".into(),
                retry_after: None
            }
        );
        let mut limited = r(429, "slow down");
        limited.retry_after = Some(Duration::from_secs(7));
        assert_eq!(
            judge_status(&limited),
            Outcome::Failed {
                error: "HTTP 429: slow down".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }
}
