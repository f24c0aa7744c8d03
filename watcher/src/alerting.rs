//! Alerts in the daemon and the CLI: the configuration's sinks made ready to send
//! ([`Alerting::from_config`]), `ctrwatch alert test` ([`alert_test`]), and what the daemon
//! needs to run them (routing for the store writer, one delivery worker per sink, the
//! daemon's own rules). The alert model, the outbox, the formats and the workers are in the
//! `ctrwatch-alerts` crate.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use ctrwatch_alerts::{
    Alert, Node, Routing,
    deliver::{DeliveryOptions, send_now},
    http::Client,
    sinks::{Outcome, Sink},
};
use ctrwatch_config::Config;

/// A configuration that cannot be used, as one message (every problem, one per line).
pub fn load_config(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// The configuration's alerting, ready: sinks with their HTTP clients, routing, node.
pub struct Alerting {
    /// The configuration it came from.
    pub config: Config,
    /// The sinks, each with its client.
    pub sinks: Vec<(Sink, Client)>,
    /// What the store writer needs to create deliveries.
    pub routing: Routing,
    /// This node.
    pub node: Node,
    /// Settings from the environment (Alertmanager lifetime and re-send).
    pub delivery: DeliveryOptions,
}

impl Alerting {
    /// Checks every sink (secrets, CA files) and prepares its client.
    pub fn from_config(config: Config) -> Result<Alerting, String> {
        let mut sinks = Vec::new();
        let mut problems = Vec::new();
        for sc in &config.sinks {
            let client = match Client::new(sc.timeout, sc.ca_file.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(format!("sink {:?}: {e}", ctrwatch_event::escape(&sc.name)));
                    continue;
                }
            };
            match Sink::new(sc.clone()) {
                Ok(s) => sinks.push((s, client)),
                Err(e) => problems.push(e.to_string()),
            }
        }
        let delivery = DeliveryOptions::from_env().map_err(|e| {
            problems.push(e.clone());
            e
        });
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        let delivery = delivery.unwrap_or_default();
        Ok(Alerting {
            routing: Routing::of(&config),
            node: Node::detect(config.alerts.node_name.as_deref()),
            config,
            sinks,
            delivery,
        })
    }
}

/// `ctrwatch alert test [--config FILE] [SINK]`: a test alert to every sink (or the named
/// one) through the real formatting, signing and HTTP path (not the outbox); prints each
/// receiver's answer. Exit 0 when every receiver accepted it, 1 when one did not, 2 when
/// the configuration or the sink name is wrong.
pub fn alert_test(config_path: &Path, sink: Option<&str>) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ctrwatch: error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(name) = sink
        && !config.sinks.iter().any(|s| s.name == name)
    {
        let known: Vec<String> = config
            .sinks
            .iter()
            .map(|s| format!("{:?}", s.name))
            .collect();
        eprintln!(
            "ctrwatch: error: no sink {:?} in {}; the sinks are: {}",
            ctrwatch_event::escape(name),
            ctrwatch_event::escape_path(config_path),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
        return ExitCode::from(2);
    }
    if config.sinks.is_empty() {
        eprintln!(
            "ctrwatch: error: {} has no [[sinks]]: nothing to test",
            ctrwatch_event::escape_path(config_path)
        );
        return ExitCode::from(2);
    }
    let alerting = match Alerting::from_config(config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ctrwatch: error: {e}");
            return ExitCode::from(2);
        }
    };
    let alert = Alert::test_alert(alerting.node.clone(), ctrwatch_event::time::now_ns());
    let mut all_accepted = true;
    let mut text = format!(
        "test alert {} from {}\n",
        alert.id,
        ctrwatch_event::escape(&alerting.node.hostname)
    );
    for (s, client) in &alerting.sinks {
        if sink.is_some_and(|n| n != s.name()) {
            continue;
        }
        let answers = match send_now(s, client, &alert, &alerting.delivery.format) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("ctrwatch: error: encoding the test alert: {e}");
                return ExitCode::FAILURE;
            }
        };
        for a in answers {
            let head = format!(
                "{} ({}) {}",
                ctrwatch_event::escape(s.name()),
                s.config.kind.name(),
                a.target
            );
            match (&a.outcome, &a.answer) {
                (Outcome::Accepted, Ok(r)) => {
                    let _ = writeln!(text, "{head}: accepted (HTTP {})", r.status);
                }
                (Outcome::Accepted, Err(_)) => {
                    let _ = writeln!(text, "{head}: accepted");
                }
                (Outcome::Failed { error, .. }, _) => {
                    all_accepted = false;
                    let _ = writeln!(text, "{head}: NOT accepted: {error}");
                }
            }
            if let Ok(r) = &a.answer {
                let body = ctrwatch_alerts::sinks::excerpt(&r.body, 300);
                if !body.is_empty() {
                    let _ = writeln!(text, "    answer: {body}");
                }
            }
        }
    }
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    if all_accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
