//! ctrwatch's configuration: one TOML file (`/etc/ctrwatch/ctrwatch.toml` by default) that
//! holds every setting the command-line flags have, plus the alert rules and sinks.
//!
//! [`Config::parse`] reads a file's text into a checked [`Config`]: an unknown key, a value
//! of the wrong type or an impossible value is a [`ConfigError`] that names the file, the
//! line, the column and the key. Nothing is silently ignored. Flags and environment variables
//! override the file (the CLI applies them on top, see docs/operations.md "Configuration").
//! [`EXAMPLE`] is the commented example that ships (`packaging/ctrwatch.toml`).

pub mod files;
mod locate;
mod raw;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use ctrwatch_event::{RuleId, Severity};
use locate::Step;
use raw::{RawConfig, RawRule, RawSink};

/// Where the daemon looks for its configuration when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/ctrwatch/ctrwatch.toml";

/// The example configuration that ships (every key, commented).
pub const EXAMPLE: &str = include_str!("../../packaging/ctrwatch.toml");

/// Where the history store is kept unless configured otherwise.
pub const DEFAULT_STORE: &str = "/var/lib/ctrwatch/events.db";

/// A configuration that cannot be used, and where the problem is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: {message}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
    /// A problem at a place in the file.
    #[error("{file}:{line}:{column}: {key}{sep}{message}", sep = if key.is_empty() { "" } else { ": " })]
    At {
        /// The file (escaped for display).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key, dotted (`sinks[1].url`); empty when the problem is not at a key (a
        /// syntax error).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// And warnings.
    Warn,
    /// And what the daemon does (the default).
    Info,
    /// And details.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    const ALL: [(LogLevel, &'static str); 5] = [
        (LogLevel::Error, "error"),
        (LogLevel::Warn, "warn"),
        (LogLevel::Info, "info"),
        (LogLevel::Debug, "debug"),
        (LogLevel::Trace, "trace"),
    ];
    /// The name (`info`, ...).
    pub fn name(self) -> &'static str {
        LogLevel::ALL
            .iter()
            .find(|(l, _)| *l == self)
            .map_or("info", |(_, n)| n)
    }
    /// The level with this name.
    pub fn from_name(name: &str) -> Option<LogLevel> {
        LogLevel::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(l, _)| *l)
    }
}

/// Which kernel hooks to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The richest the kernel accepts.
    Auto,
    /// Syscall tracepoints.
    Tracepoint,
    /// fentry/fexit on the VFS.
    Fentry,
    /// BPF LSM hooks.
    Lsm,
}

impl Backend {
    const ALL: [(Backend, &'static str); 4] = [
        (Backend::Auto, "auto"),
        (Backend::Tracepoint, "tracepoint"),
        (Backend::Fentry, "fentry"),
        (Backend::Lsm, "lsm"),
    ];
    /// The name.
    pub fn name(self) -> &'static str {
        Backend::ALL
            .iter()
            .find(|(b, _)| *b == self)
            .map_or("auto", |(_, n)| n)
    }
    /// The backend with this name.
    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(b, _)| *b)
    }
}

/// Whether foreign changes are blocked (BPF LSM kernels only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProtectMode {
    /// Watch only.
    #[default]
    Off,
    /// Run the protect programs' checks but block nothing. Nothing of its own is recorded
    /// yet (no would-be denial events, log lines or metrics): it only shows that the
    /// programs load and attach.
    DryRun,
    /// Deny foreign changes with EPERM.
    Enforce,
}

impl ProtectMode {
    const ALL: [(ProtectMode, &'static str); 3] = [
        (ProtectMode::Off, "off"),
        (ProtectMode::DryRun, "dry-run"),
        (ProtectMode::Enforce, "enforce"),
    ];
    /// The name.
    pub fn name(self) -> &'static str {
        ProtectMode::ALL
            .iter()
            .find(|(m, _)| *m == self)
            .map_or("off", |(_, n)| n)
    }
    /// The mode with this name.
    pub fn from_name(name: &str) -> Option<ProtectMode> {
        ProtectMode::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(m, _)| *m)
    }
}

/// `[watch]`: what is watched and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// Directories to watch besides what discovery finds.
    pub roots: Vec<PathBuf>,
    /// Find containerd and k3s instances on the node (and watch the usual locations).
    pub discover: bool,
    /// How often roots are resolved and discovered again.
    pub root_refresh: Duration,
    /// The kernel ring buffer, MiB (a power of two, 1 to 1024).
    pub ring_buffer_mb: u32,
    /// Executables trusted to write under containerd roots.
    pub trust_exes: Vec<PathBuf>,
    /// systemd units trusted to write under containerd roots.
    pub trust_units: Vec<String>,
    /// More patterns of secrets in command lines (regular expressions).
    pub mask_args: Vec<String>,
    /// Whether the built-in secret patterns apply.
    pub default_masks: bool,
    /// Which hooks.
    pub backend: Backend,
    /// Protect mode.
    pub protect: ProtectMode,
}

/// `[store]`: the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// The database file.
    pub path: PathBuf,
    /// Events older than this many days are pruned (0: no limit).
    pub retention_days: u64,
    /// The database is kept under this many MiB (0: no limit).
    pub retention_mb: u64,
    /// A group whose members may read the history (None: root only).
    pub group: Option<String>,
}

/// `[metrics]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served (None: off).
    pub listen: Option<SocketAddr>,
}

/// `[alerts]`: grouping and the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertsConfig {
    /// One rule's events from one process tree within this window fold into one alert.
    pub group_window: Duration,
    /// Alerts kept in the outbox at most (the oldest delivered go first; drops are counted
    /// and reported).
    pub outbox_max: u64,
    /// The node's name in alerts (default: the hostname).
    pub node_name: Option<String>,
}

/// `[rules.<id>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// A fixed severity for every alert of the rule (None: the rule's own, which may
    /// depend on what happened).
    pub severity: Option<Severity>,
    /// heartbeat: how often it fires.
    pub interval: Option<Duration>,
    /// after-crash-verify: how far before the last heartbeat layers are re-verified.
    pub window: Option<Duration>,
}

/// A sink's kind: where and in what format alerts go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SinkKind {
    /// A POST of ctrwatch's JSON body, signed the Standard Webhooks way.
    Webhook,
    /// Prometheus Alertmanager's v2 API.
    Alertmanager,
    /// A Slack incoming webhook.
    Slack,
    /// A DingTalk custom robot.
    Dingtalk,
    /// A Feishu / Lark custom bot.
    Feishu,
    /// A WeCom group robot.
    Wecom,
}

impl SinkKind {
    /// Every kind.
    pub const ALL: [SinkKind; 6] = [
        SinkKind::Webhook,
        SinkKind::Alertmanager,
        SinkKind::Slack,
        SinkKind::Dingtalk,
        SinkKind::Feishu,
        SinkKind::Wecom,
    ];
    /// The name in the config.
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Alertmanager => "alertmanager",
            SinkKind::Slack => "slack",
            SinkKind::Dingtalk => "dingtalk",
            SinkKind::Feishu => "feishu",
            SinkKind::Wecom => "wecom",
        }
    }
    /// The kind with this name.
    pub fn from_name(name: &str) -> Option<SinkKind> {
        SinkKind::ALL.into_iter().find(|k| k.name() == name)
    }
    /// Messages per minute the receiver accepts before it throttles (the chat robots' ~20).
    pub fn default_rate_per_minute(self) -> Option<u32> {
        match self {
            SinkKind::Dingtalk | SinkKind::Feishu | SinkKind::Wecom => Some(20),
            SinkKind::Slack => Some(60),
            SinkKind::Webhook | SinkKind::Alertmanager => None,
        }
    }
}

/// A secret: given inline, or read from a file when the configuration is loaded.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret's text.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// A secret with this text (tests, `alert test`).
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One `[[sinks]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkConfig {
    /// Unique name (in `alerts`, metrics and logs).
    pub name: String,
    /// What kind.
    pub kind: SinkKind,
    /// Where (alertmanager: every instance of an HA pair; others: one).
    pub urls: Vec<String>,
    /// Signing secret (webhook: `whsec_…`; dingtalk, feishu: the robot's secret).
    pub secret: Option<Secret>,
    /// Alerts below this severity are not sent here.
    pub min_severity: Severity,
    /// Only these rules (None: all).
    pub rules: Option<Vec<RuleId>>,
    /// Extra HTTP headers.
    pub headers: BTreeMap<String, String>,
    /// `Authorization: Bearer …`.
    pub bearer_token: Option<Secret>,
    /// A CA bundle trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Time allowed for one request.
    pub timeout: Duration,
    /// At most this many messages a minute (None: no limit).
    pub rate_per_minute: Option<u32>,
}

impl SinkConfig {
    /// Whether an alert of `rule` at `severity` goes to this sink.
    pub fn wants(&self, rule: RuleId, severity: Severity) -> bool {
        severity >= self.min_severity && self.rules.as_ref().is_none_or(|r| r.contains(&rule))
    }
}

/// A checked configuration, with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file it came from (None: built-in defaults).
    pub file: Option<PathBuf>,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// `[watch]`.
    pub watch: WatchConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[alerts]`.
    pub alerts: AlertsConfig,
    /// Every rule, configured or default.
    pub rules: BTreeMap<RuleId, RuleConfig>,
    /// Where alerts go.
    pub sinks: Vec<SinkConfig>,
}

impl Default for Config {
    fn default() -> Self {
        let rules = RuleId::ALL
            .into_iter()
            .map(|r| (r, RuleConfig::default_for(r)))
            .collect();
        Config {
            file: None,
            log_level: LogLevel::Info,
            watch: WatchConfig {
                roots: Vec::new(),
                discover: true,
                root_refresh: Duration::from_secs(5),
                ring_buffer_mb: 16,
                trust_exes: Vec::new(),
                trust_units: Vec::new(),
                mask_args: Vec::new(),
                default_masks: true,
                backend: Backend::Auto,
                protect: ProtectMode::Off,
            },
            store: StoreConfig {
                path: PathBuf::from(DEFAULT_STORE),
                retention_days: 30,
                retention_mb: 256,
                group: None,
            },
            metrics: MetricsConfig { listen: None },
            alerts: AlertsConfig {
                group_window: Duration::from_secs(30),
                outbox_max: 10_000,
                node_name: None,
            },
            rules,
            sinks: Vec::new(),
        }
    }
}

impl RuleConfig {
    /// The rule as it runs when not configured.
    pub fn default_for(rule: RuleId) -> RuleConfig {
        RuleConfig {
            enabled: true,
            severity: None,
            interval: (rule == RuleId::Heartbeat).then_some(Duration::from_secs(300)),
            window: (rule == RuleId::AfterCrashVerify).then_some(Duration::from_secs(600)),
        }
    }
}

/// Builds errors that point into one file.
struct Checker<'a> {
    file: String,
    text: &'a str,
    doc: Option<toml::Spanned<toml::de::DeTable<'a>>>,
    errors: Vec<ConfigError>,
}

impl<'a> Checker<'a> {
    fn at_offset(&self, offset: usize, key: String, message: String) -> ConfigError {
        let (line, column) = locate::line_column(self.text, offset);
        ConfigError::At {
            file: self.file.clone(),
            line,
            column,
            key,
            message,
        }
    }

    /// An error about the value at `path`.
    fn fail(&mut self, path: &[Step], message: impl Into<String>) {
        let span = self
            .doc
            .as_ref()
            .and_then(|d| locate::span_of(d.get_ref(), path));
        let e = self.at_offset(
            span.map_or(0, |s| s.start),
            locate::render(path),
            message.into(),
        );
        self.errors.push(e);
    }
}

fn key(k: &str) -> Step {
    Step::Key(k.to_owned())
}

/// The largest configuration file read: a real one is a few KiB; anything much bigger is not
/// a configuration, and must not make the daemon allocate what it says.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Why [`read_file`] gave no text.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A trusted read (`ctrwatch run`, as root) found a file someone besides root can write:
    /// the caller says why the owner matters.
    #[error("{path} must be root's and writable by root alone (owner uid {uid}, mode {mode:04o})")]
    Untrusted {
        /// The file, escaped for display.
        path: String,
        /// Its owner.
        uid: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// Missing, unreadable, not a regular file, too large or not UTF-8.
    #[error(transparent)]
    Unusable(ConfigError),
}

/// Reads the configuration file at `path` as [`files`] reads what it trusts: never blocking
/// on it (the daemon reads it again on SIGHUP, from a path someone may have replaced: a FIFO
/// there does not wait for a writer), only a regular file of at most [`MAX_FILE_BYTES`]; with
/// `trusted` (`ctrwatch run`), running as root, only a file root alone can write
/// ([`ReadError::Untrusted`]).
pub fn read_file(path: &Path, trusted: bool) -> Result<String, ReadError> {
    let failed = |message: String| {
        ReadError::Unusable(ConfigError::Read {
            file: ctrwatch_event::escape_path(path),
            message,
        })
    };
    let read = if trusted {
        files::read_trusted(path, MAX_FILE_BYTES)
    } else {
        files::read_regular(path, MAX_FILE_BYTES)
    };
    let bytes = read.map_err(|e| match e {
        files::TrustedFileError::Untrusted { path, uid, mode } => {
            ReadError::Untrusted { path, uid, mode }
        }
        files::TrustedFileError::Io { source, .. } => failed(source.to_string()),
        files::TrustedFileError::NotRegular { .. } => {
            failed("not a regular file; a configuration must be one".into())
        }
        files::TrustedFileError::TooLarge { max, .. } => failed(format!(
            "larger than any configuration ({max} bytes at most)"
        )),
    })?;
    String::from_utf8(bytes).map_err(|_| failed("not UTF-8 text".into()))
}

impl Config {
    /// Reads ([`read_file`]) and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = match read_file(path, false) {
            Ok(text) => text,
            Err(ReadError::Unusable(e)) => return Err(vec![e]),
            // Not asked for (no owner check), but said as a reading problem if it were.
            Err(e @ ReadError::Untrusted { .. }) => {
                return Err(vec![ConfigError::Read {
                    file: ctrwatch_event::escape_path(path),
                    message: e.to_string(),
                }]);
            }
        };
        Config::from_text(path, &text)
    }

    /// Checks the text read from the file at `path`.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
        let mut config = Config::parse(&ctrwatch_event::escape_path(path), text)?;
        config.file = Some(path.to_path_buf());
        Ok(config)
    }

    /// Checks a configuration's text; `file` names it in errors. Every problem found is
    /// returned, not only the first.
    pub fn parse(file: &str, text: &str) -> Result<Config, Vec<ConfigError>> {
        let mut c = Checker {
            file: file.to_owned(),
            text,
            doc: None,
            errors: Vec::new(),
        };
        match toml::de::DeTable::parse(text) {
            Ok(doc) => c.doc = Some(doc),
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let err = c.at_offset(offset, String::new(), first_line(e.message()));
                return Err(vec![err]);
            }
        }
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let key = c
                    .doc
                    .as_ref()
                    .map(|d| locate::render(&locate::path_at(d.get_ref(), offset)))
                    .unwrap_or_default();
                let err = c.at_offset(offset, key, without_values(&first_line(e.message())));
                return Err(vec![err]);
            }
        };
        let config = resolve(&mut c, raw);
        if c.errors.is_empty() {
            Ok(config)
        } else {
            Err(c.errors)
        }
    }

    /// The rule's settings (every rule has some).
    pub fn rule(&self, rule: RuleId) -> RuleConfig {
        self.rules
            .get(&rule)
            .cloned()
            .unwrap_or_else(|| RuleConfig::default_for(rule))
    }
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_owned()
}

/// A type error without the value it quotes (`invalid type: string "https://hooks…/SECRET",
/// expected a sequence` → `invalid type: string, expected a sequence`): the value may be a
/// secret put under the wrong key, and errors reach logs, the status snapshot and, on a
/// refused reload, the `config-invalid` alert. Keys (`unknown field `x``) stay.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' => {
                // Skip the quoted value (with its escapes) and the space before it.
                if out.ends_with(' ') {
                    out.pop();
                }
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            _ => out.push(ch),
        }
    }
    // `unknown variant `VALUE`, expected one of …`: the value is the operator's too.
    if let Some(rest) = out.strip_prefix("unknown variant `")
        && let Some((_, tail)) = rest.split_once('`')
    {
        return format!("unknown variant{tail}");
    }
    out
}

fn duration(
    c: &mut Checker<'_>,
    path: &[Step],
    text: &Option<String>,
    min: Duration,
) -> Option<Duration> {
    let text = text.as_ref()?;
    match humantime::parse_duration(text) {
        Ok(d) if d >= min => Some(d),
        Ok(_) => {
            c.fail(
                path,
                format!(
                    "{text:?} is too short: at least {}",
                    humantime::format_duration(min)
                ),
            );
            None
        }
        Err(e) => {
            c.fail(
                path,
                format!("{text:?} is not a duration ({e}); write e.g. \"30s\", \"5m\", \"1h\""),
            );
            None
        }
    }
}

fn named<T>(
    c: &mut Checker<'_>,
    path: &[Step],
    text: &Option<String>,
    parse: impl Fn(&str) -> Option<T>,
    allowed: &str,
) -> Option<T> {
    let text = text.as_ref()?;
    let v = parse(text);
    if v.is_none() {
        c.fail(path, format!("{text:?} is not one of {allowed}"));
    }
    v
}

fn absolute(c: &mut Checker<'_>, path: &[Step], text: &str) -> Option<PathBuf> {
    if text.starts_with('/') {
        Some(PathBuf::from(text))
    } else {
        c.fail(path, format!("{text:?} is not an absolute path"));
        None
    }
}

fn resolve(c: &mut Checker<'_>, raw: RawConfig) -> Config {
    let mut config = Config::default();
    if let Some(l) = named(
        c,
        &[key("log_level")],
        &raw.log_level,
        LogLevel::from_name,
        "error, warn, info, debug, trace",
    ) {
        config.log_level = l;
    }

    let w = &raw.watch;
    let wp = |k: &str| vec![key("watch"), key(k)];
    if let Some(roots) = &w.roots {
        for (i, r) in roots.iter().enumerate() {
            let mut p = wp("roots");
            p.push(Step::Index(i));
            if let Some(r) = absolute(c, &p, r) {
                config.watch.roots.push(r);
            }
        }
    }
    if let Some(d) = w.discover {
        config.watch.discover = d;
    }
    if let Some(d) = duration(
        c,
        &wp("root_refresh"),
        &w.root_refresh,
        Duration::from_secs(1),
    ) {
        config.watch.root_refresh = d;
    }
    if let Some(mb) = w.ring_buffer_mb {
        if mb == 0 || !mb.is_power_of_two() || mb > 1024 {
            c.fail(
                &wp("ring_buffer_mb"),
                format!("{mb} MiB: must be a power of two between 1 and 1024"),
            );
        } else {
            config.watch.ring_buffer_mb = mb;
        }
    }
    if let Some(exes) = &w.trust_exes {
        for (i, e) in exes.iter().enumerate() {
            let mut p = wp("trust_exes");
            p.push(Step::Index(i));
            if let Some(e) = absolute(c, &p, e) {
                config.watch.trust_exes.push(e);
            }
        }
    }
    if let Some(units) = &w.trust_units {
        for (i, u) in units.iter().enumerate() {
            if u.is_empty() || u.contains('/') {
                let mut p = wp("trust_units");
                p.push(Step::Index(i));
                c.fail(
                    &p,
                    format!("{u:?} is not a systemd unit name (e.g. \"cleanup.service\")"),
                );
            } else {
                config.watch.trust_units.push(u.clone());
            }
        }
    }
    if let Some(m) = &w.mask_args {
        // Checked with the engine that masks (regex, on bytes), so that a file that checks
        // is one the daemon starts with.
        for (i, pattern) in m.iter().enumerate() {
            if let Err(e) = regex::bytes::Regex::new(pattern) {
                let mut p = wp("mask_args");
                p.push(Step::Index(i));
                c.fail(
                    &p,
                    format!(
                        "{pattern:?} is not a valid regular expression: {}",
                        first_line(&e.to_string())
                    ),
                );
            }
        }
        config.watch.mask_args = m.clone();
    }
    if let Some(d) = w.default_masks {
        config.watch.default_masks = d;
    }
    if let Some(b) = named(
        c,
        &wp("backend"),
        &w.backend,
        Backend::from_name,
        "auto, tracepoint, fentry, lsm",
    ) {
        config.watch.backend = b;
    }
    if let Some(m) = named(
        c,
        &wp("protect"),
        &w.protect,
        ProtectMode::from_name,
        "off, dry-run, enforce",
    ) {
        config.watch.protect = m;
    }

    let s = &raw.store;
    if let Some(p) = &s.path
        && let Some(p) = absolute(c, &[key("store"), key("path")], p)
    {
        config.store.path = p;
    }
    if let Some(d) = s.retention_days {
        config.store.retention_days = d;
    }
    if let Some(mb) = s.retention_mb {
        if mb != 0 && mb < 16 {
            c.fail(&[key("store"), key("retention_mb")], format!("{mb} MiB is too small to keep any useful history: at least 16, or 0 for no limit"));
        } else {
            config.store.retention_mb = mb;
        }
    }
    if let Some(g) = &s.group {
        if g.is_empty() {
            config.store.group = None;
        } else {
            config.store.group = Some(g.clone());
        }
    }

    if let Some(l) = &raw.metrics.listen {
        if l.is_empty() || l == "off" {
            config.metrics.listen = None;
        } else {
            match l.parse::<SocketAddr>() {
                Ok(a) => config.metrics.listen = Some(a),
                Err(_) => c.fail(
                    &[key("metrics"), key("listen")],
                    format!("{l:?} is not an address:port (e.g. \"127.0.0.1:9847\")"),
                ),
            }
        }
    }

    let a = &raw.alerts;
    if let Some(d) = duration(
        c,
        &[key("alerts"), key("group_window")],
        &a.group_window,
        Duration::from_secs(1),
    ) {
        config.alerts.group_window = d;
    }
    if let Some(n) = a.outbox_max {
        if n < 100 {
            c.fail(
                &[key("alerts"), key("outbox_max")],
                format!("{n}: the outbox must hold at least 100 alerts"),
            );
        } else {
            config.alerts.outbox_max = n;
        }
    }
    if let Some(n) = &a.node_name {
        config.alerts.node_name = (!n.is_empty()).then(|| n.clone());
    }

    for (id, rule) in &raw.rules {
        resolve_rule(c, &mut config, id, rule);
    }

    let mut names = BTreeMap::new();
    for (i, sink) in raw.sinks.iter().enumerate() {
        if let Some(s) = resolve_sink(c, i, sink) {
            if let Some(first) = names.insert(s.name.clone(), i) {
                c.fail(
                    &[key("sinks"), Step::Index(i), key("name")],
                    format!("{:?} is already the name of sinks[{first}]", s.name),
                );
            }
            config.sinks.push(s);
        }
    }
    config
}

fn resolve_rule(c: &mut Checker<'_>, config: &mut Config, id: &str, rule: &RawRule) {
    let base = vec![key("rules"), key(id)];
    let Some(rule_id) = RuleId::from_name(id) else {
        let known: Vec<&str> = RuleId::ALL.iter().map(|r| r.name()).collect();
        c.fail(
            &base,
            format!("no rule {id:?}; the rules are {}", known.join(", ")),
        );
        return;
    };
    let mut r = RuleConfig::default_for(rule_id);
    if let Some(e) = rule.enabled {
        r.enabled = e;
    }
    let p = |k: &str| {
        let mut p = base.clone();
        p.push(key(k));
        p
    };
    if let Some(s) = named(
        c,
        &p("severity"),
        &rule.severity,
        Severity::from_name,
        "info, warning, critical",
    ) {
        r.severity = Some(s);
    }
    if rule.interval.is_some() && rule_id != RuleId::Heartbeat {
        c.fail(&p("interval"), "only the heartbeat rule has an interval");
    } else if let Some(d) = duration(c, &p("interval"), &rule.interval, Duration::from_secs(10)) {
        r.interval = Some(d);
    }
    if rule.window.is_some() && rule_id != RuleId::AfterCrashVerify {
        c.fail(
            &p("window"),
            "only the after-crash-verify rule has a window",
        );
    } else if let Some(d) = duration(c, &p("window"), &rule.window, Duration::from_secs(1)) {
        r.window = Some(d);
    }
    config.rules.insert(rule_id, r);
}

fn read_secret(
    c: &mut Checker<'_>,
    path: &[Step],
    inline: &Option<String>,
    file: &Option<String>,
    file_key: &str,
) -> Option<Secret> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            c.fail(
                path,
                format!("give the secret inline or in {file_key}, not both"),
            );
            None
        }
        (Some(s), None) => Some(Secret(s.clone())),
        (None, Some(f)) => {
            let mut fp = path.to_vec();
            fp.pop();
            fp.push(key(file_key));
            let f = absolute(c, &fp, f)?;
            match files::read_trusted(&f, files::MAX_SECRET_FILE) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(s) => Some(Secret(s.trim_end_matches(['\n', '\r']).to_owned())),
                    Err(_) => {
                        c.fail(
                            &fp,
                            format!("{} is not UTF-8 text", ctrwatch_event::escape_path(&f)),
                        );
                        None
                    }
                },
                Err(e) => {
                    c.fail(&fp, e.to_string());
                    None
                }
            }
        }
        (None, None) => None,
    }
}

/// A sink's CA file must be trusted (see [`files`]) and hold a PEM certificate; the delivery
/// worker reads it again when it starts, the same way.
fn check_ca_file(c: &mut Checker<'_>, path: &[Step], file: &Path) -> bool {
    match files::read_trusted(file, files::MAX_CA_FILE) {
        Ok(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => true,
        Ok(_) => {
            c.fail(
                path,
                format!(
                    "{} holds no PEM certificate",
                    ctrwatch_event::escape_path(file)
                ),
            );
            false
        }
        Err(e) => {
            c.fail(path, e.to_string());
            false
        }
    }
}

fn resolve_sink(c: &mut Checker<'_>, i: usize, raw: &RawSink) -> Option<SinkConfig> {
    let p = |k: &str| vec![key("sinks"), Step::Index(i), key(k)];
    let Some(name) = raw.name.clone().filter(|n| !n.is_empty()) else {
        c.fail(&[key("sinks"), Step::Index(i)], "every sink needs a `name`");
        return None;
    };
    let kinds = "webhook, alertmanager, slack, dingtalk, feishu, wecom";
    let kind = match &raw.kind {
        None => {
            c.fail(
                &[key("sinks"), Step::Index(i)],
                format!("sink {name:?} needs a `kind` ({kinds})"),
            );
            None
        }
        some => named(c, &p("kind"), some, SinkKind::from_name, kinds),
    }?;
    let urls: Vec<String> = match (&raw.url, &raw.urls) {
        (Some(_), Some(_)) => {
            c.fail(&p("urls"), "give `url` or `urls`, not both");
            return None;
        }
        (Some(u), None) => vec![u.clone()],
        (None, Some(us)) if kind == SinkKind::Alertmanager => us.clone(),
        (None, Some(_)) => {
            c.fail(
                &p("urls"),
                format!(
                    "only alertmanager sinks take several urls; {} takes one `url`",
                    kind.name()
                ),
            );
            return None;
        }
        (None, None) => {
            c.fail(
                &[key("sinks"), Step::Index(i)],
                format!("sink {name:?} needs a `url`"),
            );
            return None;
        }
    };
    if urls.is_empty() {
        c.fail(&p("urls"), "no url given");
    }
    for (j, u) in urls.iter().enumerate() {
        let host = u
            .strip_prefix("http://")
            .or_else(|| u.strip_prefix("https://"));
        if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
            let mut up = if raw.urls.is_some() {
                p("urls")
            } else {
                p("url")
            };
            if raw.urls.is_some() {
                up.push(Step::Index(j));
            }
            // The value itself is not shown: a chat robot's URL carries its secret.
            c.fail(
                &up,
                "not an http:// or https:// URL (the value is not shown: it may hold a secret)",
            );
        }
    }
    let secret = read_secret(
        c,
        &p("secret"),
        &raw.secret,
        &raw.secret_file,
        "secret_file",
    );
    if kind == SinkKind::Webhook
        && let Some(s) = &secret
        && !s.expose().starts_with("whsec_")
    {
        c.fail(
            &p("secret"),
            "a webhook secret is a Standard Webhooks secret: \"whsec_\" followed by base64",
        );
    }
    if matches!(
        kind,
        SinkKind::Slack | SinkKind::Wecom | SinkKind::Alertmanager
    ) && secret.is_some()
    {
        c.fail(
            &p("secret"),
            format!(
                "{} sinks are not signed (their URL carries the secret, or none is needed)",
                kind.name()
            ),
        );
    }
    let min_severity = named(
        c,
        &p("min_severity"),
        &raw.min_severity,
        Severity::from_name,
        "info, warning, critical",
    )
    .unwrap_or(Severity::Info);
    let rules = raw.rules.as_ref().map(|rs| {
        rs.iter()
            .enumerate()
            .filter_map(|(j, r)| {
                let id = RuleId::from_name(r);
                if id.is_none() {
                    let mut rp = p("rules");
                    rp.push(Step::Index(j));
                    c.fail(&rp, format!("no rule {r:?}"));
                }
                id
            })
            .collect()
    });
    let bearer_token = read_secret(
        c,
        &p("bearer_token"),
        &raw.bearer_token,
        &raw.bearer_token_file,
        "bearer_token_file",
    );
    let ca_file = raw
        .ca_file
        .as_ref()
        .and_then(|f| absolute(c, &p("ca_file"), f))
        .filter(|f| check_ca_file(c, &p("ca_file"), f));
    let timeout = duration(c, &p("timeout"), &raw.timeout, Duration::from_millis(100))
        .unwrap_or(Duration::from_secs(10));
    let rate_per_minute = match raw.rate_per_minute {
        Some(0) => {
            c.fail(
                &p("rate_per_minute"),
                "0 would never send: leave it out for no limit",
            );
            None
        }
        Some(n) => Some(n),
        None => kind.default_rate_per_minute(),
    };
    Some(SinkConfig {
        name,
        kind,
        urls,
        secret,
        min_severity,
        rules,
        headers: raw.headers.clone().unwrap_or_default(),
        bearer_token,
        ca_file,
        timeout,
        rate_per_minute,
    })
}

#[cfg(test)]
mod tests;
