//! `ctrwatch config check` and `ctrwatch config example`: what an operator runs before pushing
//! a configuration to a fleet. The file's meaning is `ctrwatch_config`'s; this module only
//! reports it.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use ctrwatch_config::{Config, SinkConfig};
use ctrwatch_event::{RuleId, escape_path};

/// Exit status of `config check` for a file that is readable but wrong (as for bad usage:
/// the operator has to change what they gave).
pub const INVALID: u8 = 2;

/// The outcome of checking one file: the report to print, and whether it is usable.
pub enum Checked {
    /// Usable: a summary of what it sets.
    Valid(String),
    /// Not usable: one line per problem, each naming file:line:column and key.
    Invalid(String),
    /// Not readable at all (missing, permission): one line.
    Unreadable(String),
}

/// Checks the file at `path` as `ctrwatch run --config` would read it.
pub fn check(path: &Path) -> Checked {
    match Config::load(path) {
        Ok(config) => Checked::Valid(summary(&config)),
        Err(errors) => {
            let unreadable = errors
                .iter()
                .all(|e| matches!(e, ctrwatch_config::ConfigError::Read { .. }));
            let mut text = String::new();
            for e in &errors {
                let _ = writeln!(text, "{e}");
            }
            if unreadable {
                Checked::Unreadable(text)
            } else {
                let _ = writeln!(
                    text,
                    "{}: invalid ({} problem{})",
                    escape_path(path),
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                );
                Checked::Invalid(text)
            }
        }
    }
}

/// The rules this ctrwatch raises alerts for; the others are accepted in the file (so that a
/// fleet's file need not change when they come) and shown as not built.
const BUILT_RULES: [RuleId; 11] = [
    RuleId::ForeignChange,
    RuleId::OpaqueLeak,
    RuleId::LayerDamaged,
    RuleId::AfterCrashVerify,
    RuleId::MetadataMismatch,
    RuleId::HistoryGap,
    RuleId::Heartbeat,
    RuleId::ConfigInvalid,
    RuleId::ProtectDenied,
    RuleId::ProtectWouldDeny,
    RuleId::ProtectUnavailable,
];

/// What a valid configuration sets, one section per line, defaults included: the operator
/// sees what the daemon will do, not only that the syntax passed.
fn summary(c: &Config) -> String {
    let mut t = String::new();
    let file = c.file.as_deref().map_or("(defaults)".into(), escape_path);
    let _ = writeln!(t, "{file}: valid");
    let w = &c.watch;
    let roots = if w.roots.is_empty() {
        "none besides discovery".to_string()
    } else {
        w.roots
            .iter()
            .map(|r| escape_path(r))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        t,
        "  watch:   discovery {}, roots: {roots}; ring buffer {} MiB, backend {}, protect {}; \
         trusted: {} exe(s), {} unit(s); secret masks: {}{}",
        on_off(w.discover),
        w.ring_buffer_mb,
        w.backend.name(),
        w.protect.name(),
        w.trust_exes.len(),
        w.trust_units.len(),
        if w.default_masks {
            "built-in"
        } else {
            "no built-in"
        },
        if w.mask_args.is_empty() {
            String::new()
        } else {
            format!(" + {} pattern(s)", w.mask_args.len())
        },
    );
    let s = &c.store;
    let _ = writeln!(
        t,
        "  store:   {}, keep {}, at most {}; readers: {}",
        escape_path(&s.path),
        limit(s.retention_days, "days"),
        limit(s.retention_mb, "MiB"),
        s.group
            .as_deref()
            .map_or("root only".to_string(), |g| format!("root and group {g:?}")),
    );
    let _ = writeln!(
        t,
        "  metrics: {}",
        c.metrics
            .listen
            .map_or("off".to_string(), |a| format!("http://{a}/metrics"))
    );
    let a = &c.alerts;
    let _ = writeln!(
        t,
        "  alerts:  group window {}, outbox at most {} alerts, node name {}",
        seconds(a.group_window),
        a.outbox_max,
        a.node_name
            .as_deref()
            .map_or("the hostname".to_string(), |n| format!("{n:?}")),
    );
    let mut on = Vec::new();
    let mut off = Vec::new();
    for rule in RuleId::ALL {
        let r = c.rule(rule);
        if !r.enabled {
            off.push(rule.name().to_string());
            continue;
        }
        let mut shown = rule.name().to_string();
        if !BUILT_RULES.contains(&rule) {
            shown.push_str(" (not built: raises nothing yet)");
        }
        if let Some(sev) = r.severity {
            let _ = write!(shown, " ({sev})");
        }
        if let Some(i) = r.interval {
            let _ = write!(shown, " every {}", seconds(i));
        }
        if let Some(w) = r.window {
            let _ = write!(shown, " window {}", seconds(w));
        }
        on.push(shown);
    }
    let _ = writeln!(t, "  rules:   on: {}", on.join(", "));
    if !off.is_empty() {
        let _ = writeln!(t, "           off: {}", off.join(", "));
    }
    if c.sinks.is_empty() {
        let _ = writeln!(t, "  sinks:   none (alerts are kept in the store only)");
    }
    for sink in &c.sinks {
        let _ = writeln!(t, "  sink {}", describe_sink(sink));
    }
    t
}

/// One sink, without its secrets: URLs keep only scheme, host and port, as Slack and WeCom
/// carry their secret in the path or query.
fn describe_sink(s: &SinkConfig) -> String {
    let urls: Vec<String> = s.urls.iter().map(|u| url_origin(u)).collect();
    let rules = s.rules.as_ref().map_or("all rules".to_string(), |r| {
        r.iter().map(|r| r.name()).collect::<Vec<_>>().join(", ")
    });
    let mut extra = Vec::new();
    if s.secret.is_some() {
        extra.push("signed".to_string());
    }
    if s.bearer_token.is_some() {
        extra.push("bearer token".to_string());
    }
    if !s.headers.is_empty() {
        extra.push(format!("{} header(s)", s.headers.len()));
    }
    if let Some(ca) = &s.ca_file {
        extra.push(format!("CA {}", escape_path(ca)));
    }
    if let Some(rate) = s.rate_per_minute {
        extra.push(format!("≤ {rate}/min"));
    }
    extra.push(format!("timeout {}", seconds(s.timeout)));
    format!(
        "{:?} ({}): {}; {} and above, {}; {}",
        s.name,
        s.kind.name(),
        urls.join(" "),
        s.min_severity,
        rules,
        extra.join(", ")
    )
}

/// `https://host:port/…`: what a URL reaches, never the path or query that may hold a key.
fn url_origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_string();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Userinfo (user:password@) is a secret too.
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let elided = if rest.len() > authority.len() {
        "/…"
    } else {
        ""
    };
    ctrwatch_event::escape_bytes(format!("{scheme}://{host}{elided}").as_bytes())
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn limit(n: u64, unit: &str) -> String {
    if n == 0 {
        format!("no limit in {unit}")
    } else {
        format!("{n} {unit}")
    }
}

fn seconds(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_origins_never_show_paths_queries_or_userinfo() {
        assert_eq!(
            url_origin("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            url_origin("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc"),
            "https://qyapi.weixin.qq.com/…"
        );
        assert_eq!(
            url_origin("http://user:pw@127.0.0.1:9093"),
            "http://127.0.0.1:9093"
        );
        assert_eq!(url_origin("nonsense"), "(not a URL)");
    }

    #[test]
    fn the_shipped_example_is_valid_and_summarized() {
        let c = Config::parse("example", ctrwatch_config::EXAMPLE).expect("the example parses");
        let s = summary(&c);
        assert!(s.contains("watch:   discovery on"), "{s}");
        assert!(s.contains("rules:   on: foreign-change"), "{s}");
    }
}
