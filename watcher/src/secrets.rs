//! Secrets in command lines, masked when a process is captured.
//!
//! Command lines carry passwords and tokens (`--password=…`, `mysql -p…`, `curl -u user:pass`,
//! a URL with credentials, a `python3 -c` script that assigns one). ctrwatch keeps command
//! lines for 30 days and prints them, so the process table ([`crate::process`]) masks them the
//! moment it captures them (from an exec record or from `/proc`): the watch output, the
//! history store and everything after only ever see the masked form. Only the secret value is
//! replaced, by `***`; the key or flag stays, so an operator still sees what was there.
//!
//! Built-in rules ([`Masker::builtin`]), per argument:
//! - **A flag naming a secret with its value**: `--password=V`, `-token=V`, `--db-password V`
//!   (the value as the next argument, unless that one starts with `-`). A name names a secret
//!   when, with `-`, `_`, `.` removed and lowercased, it contains `password`, `passwd`,
//!   `passphrase`, `secret`, `token`, `apikey`, `accesskey`, `privatekey` or `credential`,
//!   and its last word is not one that names where a secret is rather than the secret:
//!   `file`, `path`, `dir`, `stdin`, `env`, `prompt`, `name`, `type`, `ttl`, `length`
//!   (`--password-file=/run/x`, `--password-stdin`, `--token-ttl=1h` stay readable). A flag
//!   starting with `no` (`--no-password`) takes no value.
//! - **`KEY=VALUE` anywhere in an argument** (environment assignments, `env K=V`, scripts
//!   given inline to `sh -c`, `python3 -c`, `perl -e`, ...), also `KEY: VALUE`, quoted keys
//!   and values (`password = "…"`, `{"token": "…"}`, `os.environ["API_KEY"]="…"`): the same
//!   key rule.
//! - **URL user info**: `scheme://user:PASS@host` keeps the user.
//! - **HTTP credentials**: `Authorization: <scheme> VALUE` (also `Proxy-Authorization`) and
//!   `Bearer VALUE` anywhere.
//! - **`-pPASS` of MySQL/MariaDB clients** (argv[0] `mysql*`, `mariadb*`; also after such a
//!   command inside a script): only for those programs, since `-p` means something else to
//!   nearly every other command (`mkdir -p`, `ssh -p 22`).
//! - **`-u user:PASS` of curl** (`--user`, `-U`/`--proxy-user`, attached `-uuser:PASS`; also
//!   after `curl` inside a script): only for curl, since `-u 1000:1000` is a uid:gid
//!   elsewhere.
//! - **OpenSSL's `pass:PASS`** password arguments.
//!
//! Extra patterns ([`Masker::new`], `--mask-arg REGEX`) are regular expressions matched
//! against each argument: every match is replaced by `***`, or only its first capture group
//! when it has one. `--no-default-masks` drops the built-in rules (then only the extra
//! patterns apply). All rules live here so that a config file can feed them later.
//!
//! Cost: masking runs once per exec (and per process read from `/proc`), not per event. One
//! literal scan of the whole command line ([`Masker::may_mask`]) rules out most command lines
//! (no `pass`, `token`, `secret`, `key`, `://`, `curl`, ... in them); only the others, and
//! within them only the arguments holding such a word, go through the rules.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::bytes::{Captures, Regex, RegexSet};

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Words that, inside a key or flag name, say it holds a secret (lowercase, without
/// separators).
const SECRET_WORDS: [&str; 10] = [
    "password",
    "mysqlpwd",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "privatekey",
    "credential",
];

/// Last words of a name that say where a secret is, or something about it, not the secret.
const NOT_A_SECRET_LAST: [&str; 10] = [
    "file", "path", "dir", "stdin", "env", "prompt", "name", "type", "ttl", "length",
];

/// Why an extra pattern was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("--mask-arg {pattern:?}: not a valid regular expression: {source}")]
    /// A `--mask-arg` pattern that does not compile.
    BadPattern {
        /// The pattern as given.
        pattern: String,
        #[source]
        /// Why it does not compile.
        source: regex::Error,
    },
}

/// An extra pattern (`--mask-arg`): a regular expression over an argument's bytes.
pub type Pattern = Regex;

/// Checks and compiles an extra pattern.
pub fn pattern(p: &str) -> Result<Pattern, MaskError> {
    Regex::new(p).map_err(|source| MaskError::BadPattern {
        pattern: p.to_owned(),
        source,
    })
}

/// The rules that mask command lines: the built-in ones and extra patterns. See the module
/// docs.
#[derive(Clone, Debug)]
pub struct Masker {
    builtin: bool,
    extra: Vec<Regex>,
}

impl Default for Masker {
    /// The built-in rules.
    fn default() -> Masker {
        Masker::builtin()
    }
}

impl Masker {
    /// The built-in rules only.
    pub fn builtin() -> Masker {
        Masker {
            builtin: true,
            extra: Vec::new(),
        }
    }

    /// Masks nothing (for replays of recorded data).
    pub fn none() -> Masker {
        Masker {
            builtin: false,
            extra: Vec::new(),
        }
    }

    /// The built-in rules (unless `builtin` is false) plus `extra` patterns.
    pub fn new(extra: &[String], builtin: bool) -> Result<Masker, MaskError> {
        let extra = extra
            .iter()
            .map(|p| pattern(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Masker::with_patterns(extra, builtin))
    }

    /// The built-in rules (unless `builtin` is false) plus `extra` patterns already checked
    /// with [`pattern`].
    pub fn with_patterns(extra: Vec<Pattern>, builtin: bool) -> Masker {
        Masker { builtin, extra }
    }

    /// Whether some rule may apply to a command line (`text`: its arguments, in any form:
    /// NUL-separated as the kernel gives them, or one argument). `false` means [`Self::mask`]
    /// would change nothing.
    pub fn may_mask(&self, text: &[u8]) -> bool {
        !self.extra.is_empty() || (self.builtin && CANDIDATE.is_match(text))
    }

    /// Masks the secrets of `argv` in place; whether anything changed.
    pub fn mask(&self, argv: &mut [Vec<u8>]) -> bool {
        let mut changed = false;
        if self.builtin && argv.iter().any(|a| CANDIDATE.is_match(a)) {
            changed |= mask_arguments(argv);
            for arg in argv.iter_mut() {
                if CANDIDATE.is_match(arg.as_slice()) {
                    changed |= replace(arg, mask_text);
                }
            }
        }
        for re in &self.extra {
            for arg in argv.iter_mut() {
                changed |= replace(arg, |a| {
                    re.replace_all(a, |c: &Captures<'_>| match c.get(1) {
                        Some(g) => splice(c, g.start(), g.end(), MASK.as_bytes()),
                        None => MASK.as_bytes().to_vec(),
                    })
                });
            }
        }
        changed
    }
}

/// Applies `f` to `arg`, storing its result if it made a change.
fn replace(arg: &mut Vec<u8>, f: impl FnOnce(&[u8]) -> Cow<'_, [u8]>) -> bool {
    match f(arg) {
        Cow::Borrowed(_) => false,
        Cow::Owned(new) => {
            let changed = new != *arg;
            *arg = new;
            changed
        }
    }
}

/// The text of match `c` with the part `start..end` (absolute offsets inside `c`'s haystack)
/// replaced by `with`.
fn splice(c: &Captures<'_>, start: usize, end: usize, with: &[u8]) -> Vec<u8> {
    let Some(m) = c.get(0) else {
        return Vec::new();
    };
    let whole = m.as_bytes();
    let (s, e) = (start - m.start(), end - m.start());
    let mut out = Vec::with_capacity(whole.len());
    out.extend_from_slice(&whole[..s]);
    out.extend_from_slice(with);
    out.extend_from_slice(&whole[e..]);
    out
}

/// The words of a key or flag name, lowercased: split at `-`, `_`, `.`, spaces and lower-to-
/// upper case changes (`apiKey` is `api`, `key`).
fn words(name: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for &b in name {
        if matches!(b, b'-' | b'_' | b'.' | b' ') || !b.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if b.is_ascii_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = b.is_ascii_lowercase() || b.is_ascii_digit();
        cur.push(b.to_ascii_lowercase() as char);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Whether a key or flag name (dashes included or not) names a secret. See the module docs.
pub fn names_secret(name: &[u8]) -> bool {
    if !CANDIDATE.is_match(name) {
        return false;
    }
    let w = words(name);
    let joined: String = w.concat();
    if !SECRET_WORDS.iter().any(|s| joined.contains(s)) {
        return false;
    }
    !w.last()
        .is_some_and(|last| NOT_A_SECRET_LAST.contains(&last.as_str()))
}

/// The name of a flag argument (`--x`, `-x`), without its dashes or `=value`.
fn flag_name(arg: &[u8]) -> Option<&[u8]> {
    let rest = arg.strip_prefix(b"--").or_else(|| arg.strip_prefix(b"-"))?;
    let name = rest.split(|&b| b == b'=').next().unwrap_or(rest);
    (!name.is_empty()).then_some(name)
}

fn basename(arg0: &[u8]) -> &[u8] {
    arg0.rsplit(|&b| b == b'/').next().unwrap_or(arg0)
}

fn is_mysql_client(prog: &[u8]) -> bool {
    prog.starts_with(b"mysql") || prog.starts_with(b"mariadb")
}

/// `prefix` + `***`.
fn masked(prefix: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(MASK.as_bytes());
    v
}

/// `user:PASS` with the part after the first colon masked (unchanged without a colon).
fn mask_after_colon(arg: &mut Vec<u8>) -> bool {
    match arg.iter().position(|&b| b == b':') {
        Some(i) if i + 1 < arg.len() && &arg[i + 1..] != MASK.as_bytes() => {
            *arg = masked(&arg[..=i]);
            true
        }
        _ => false,
    }
}

/// The rules that look at arguments and their neighbours (flags with values, `-p`, `-u`).
fn mask_arguments(argv: &mut [Vec<u8>]) -> bool {
    let prog = argv
        .first()
        .map(|a| basename(a).to_vec())
        .unwrap_or_default();
    let mysql = is_mysql_client(&prog);
    let curl = prog == b"curl";
    let mut changed = false;
    let mut i = 1;
    while i < argv.len() {
        let arg = &argv[i];
        let mut next_is_value = false;
        let mut next_is_userinfo = false;
        if let Some(name) = flag_name(arg) {
            let long = arg.starts_with(b"--");
            let eq = arg.iter().position(|&b| b == b'=');
            if curl && !long && arg.len() > 2 && (arg[1] == b'u' || arg[1] == b'U') {
                // `-uuser:pass`
                changed |= mask_after_colon(&mut argv[i]);
            } else if curl && matches!(name, b"u" | b"U" | b"user" | b"proxy-user") {
                match eq {
                    Some(_) => changed |= mask_after_colon(&mut argv[i]),
                    None => next_is_userinfo = true,
                }
            } else if mysql && !long && name.len() > 1 && name[0] == b'p' && eq.is_none() {
                // `-pPASS` (a bare `-p` prompts; the next argument is not a password)
                if argv[i] != masked(b"-p") {
                    argv[i] = masked(b"-p");
                    changed = true;
                }
            } else if names_secret(name) {
                match eq {
                    Some(at) => {
                        if &argv[i][at + 1..] != MASK.as_bytes() {
                            argv[i] = masked(&argv[i][..=at]);
                            changed = true;
                        }
                    }
                    None => {
                        let negated = words(name).first().is_some_and(|w| w == "no");
                        next_is_value = !negated;
                    }
                }
            }
        } else if let Some(rest) = arg.strip_prefix(b"pass:")
            && !rest.is_empty()
            && rest != MASK.as_bytes()
        {
            // OpenSSL's `-passin pass:SECRET`.
            argv[i] = masked(b"pass:");
            changed = true;
        }
        if let Some(next) = argv.get_mut(i + 1)
            && !next.starts_with(b"-")
        {
            if next_is_value && next.as_slice() != MASK.as_bytes() {
                *next = MASK.as_bytes().to_vec();
                changed = true;
                i += 1;
            } else if next_is_userinfo {
                changed |= mask_after_colon(next);
                i += 1;
            }
        }
        i += 1;
    }
    changed
}

/// Words without which no built-in rule applies (each rule needs one of them), matched
/// ignoring ASCII case.
const CANDIDATE_WORDS: [&str; 22] = [
    "pass",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "api.key",
    "accesskey",
    "access_key",
    "access-key",
    "access.key",
    "privatekey",
    "private_key",
    "private-key",
    "private.key",
    "credential",
    "mysql",
    "mariadb",
    "curl",
    "authorization",
    "bearer",
    "://",
];

/// A scan for [`CANDIDATE_WORDS`], ignoring ASCII case.
static CANDIDATE: LazyLock<aho_corasick::AhoCorasick> = LazyLock::new(|| {
    // Constant patterns, checked by the tests below.
    #[allow(clippy::expect_used)]
    aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(CANDIDATE_WORDS)
        .expect("built-in candidate words")
});

/// `KEY=VALUE`, `KEY: VALUE` (quoted or not) where the key may name a secret.
const KEY_VALUE: &str = r#"(?i)([a-z0-9_.\-]*(?:pass(?:wo?r?d|phrase)|secret|token|api[_.\-]*key|access[_.\-]*key|private[_.\-]*key|credential|mysql_pwd)[a-z0-9_.\-]*)(["']?\]?[ \t]*)(=[ \t]*|:[ \t]*)("[^"]*"|'[^']*'|[^\s"';&|,)}\]]+)"#;
/// `--flag VALUE` inside a script, where the flag may name a secret.
const FLAG_THEN_VALUE: &str = r#"(?i)(?:^|[\s'"])(--?[a-z0-9_.\-]*(?:pass(?:wo?r?d|phrase)|secret|token|api[_.\-]*key|access[_.\-]*key|private[_.\-]*key|credential)[a-z0-9_.\-]*)([ \t]+)([^\s'"\-;&|][^\s'";&|]*|"[^"]*"|'[^']*')"#;
/// `scheme://user:PASS@`.
const URL_USERINFO: &str = r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*:)([^\s/@]+)@";
/// `Authorization: [scheme] VALUE`.
const AUTHORIZATION: &str = r#"(?i)\b((?:proxy-)?authorization["']?[ \t]*[:=][ \t]*(?:(?:basic|bearer|token|digest|negotiate|ntlm)[ \t]+)?)([^\s"',]+)"#;
/// `Bearer VALUE`.
const BEARER: &str = r"(?i)\b(bearer[ \t]+)([A-Za-z0-9\-._~+/]+=*)";
/// `mysql … -pPASS` inside a script.
const MYSQL_IN_TEXT: &str = r#"\b((?:mysql|mariadb)[a-z\-]*\b[^\n;&|]*?[ \t]-p)([^\s'";&|]+)"#;
/// `curl … -u user:PASS` inside a script.
const CURL_IN_TEXT: &str = r#"\b(curl\b[^\n;&|]*?[ \t](?:-[uU][ \t]*|--(?:proxy-)?user[= \t][ \t]*)['"]?[^\s'":]*:)([^\s'";&|]+)"#;

/// How a text rule's match is masked.
#[derive(Clone, Copy)]
enum Masking {
    /// Its second capture group.
    SecondGroup,
    /// `KEY=VALUE` (see [`mask_key_value`]).
    KeyValue,
    /// `--flag VALUE` (see [`mask_flag_value`]).
    FlagValue,
}

/// The rules that look inside an argument's text, in the order they apply, and a set of all
/// of them: one scan says which rules match at all.
struct TextRules {
    set: RegexSet,
    rules: Vec<(Regex, Masking)>,
}

static TEXT_RULES: LazyLock<TextRules> = LazyLock::new(|| {
    let rules = [
        (URL_USERINFO, Masking::SecondGroup),
        (AUTHORIZATION, Masking::SecondGroup),
        (BEARER, Masking::SecondGroup),
        (MYSQL_IN_TEXT, Masking::SecondGroup),
        (CURL_IN_TEXT, Masking::SecondGroup),
        (FLAG_THEN_VALUE, Masking::FlagValue),
        (KEY_VALUE, Masking::KeyValue),
    ];
    // The built-in patterns are constants, checked by the tests below; a failure here is a
    // bug in this file, not bad input.
    #[allow(clippy::expect_used)]
    let set = RegexSet::new(rules.iter().map(|(p, _)| p)).expect("built-in mask patterns");
    TextRules {
        set,
        rules: rules.iter().map(|&(p, m)| (regex(p), m)).collect(),
    }
});

fn regex(p: &str) -> Regex {
    // The built-in patterns are constants, checked by the tests below; a failure here is a
    // bug in this file, not bad input.
    #[allow(clippy::expect_used)]
    Regex::new(p).expect("built-in mask pattern")
}

/// The rules that look inside an argument's text.
fn mask_text(arg: &[u8]) -> Cow<'_, [u8]> {
    let rules = &*TEXT_RULES;
    let hits = rules.set.matches(arg);
    if !hits.matched_any() {
        return Cow::Borrowed(arg);
    }
    let mut cur: Cow<'_, [u8]> = Cow::Borrowed(arg);
    for (i, (re, how)) in rules.rules.iter().enumerate() {
        if !hits.matched(i) {
            continue;
        }
        let replaced = re.replace_all(&cur, |c: &Captures<'_>| match how {
            Masking::SecondGroup => mask_group(c, 2),
            Masking::KeyValue => mask_key_value(c),
            Masking::FlagValue => mask_flag_value(c),
        });
        if let Cow::Owned(new) = replaced {
            cur = Cow::Owned(new);
        }
    }
    cur
}

/// The match with capture group `n` masked.
fn mask_group(c: &Captures<'_>, n: usize) -> Vec<u8> {
    match (c.get(0), c.get(n)) {
        (Some(_), Some(g)) => splice(c, g.start(), g.end(), MASK.as_bytes()),
        (Some(m), None) => m.as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

/// A [`KEY_VALUE`] match with the value masked if the key names a secret.
fn mask_key_value(c: &Captures<'_>) -> Vec<u8> {
    let (Some(m), Some(key), Some(sep), Some(value)) = (c.get(0), c.get(1), c.get(3), c.get(4))
    else {
        return c.get(0).map(|m| m.as_bytes().to_vec()).unwrap_or_default();
    };
    let v = value.as_bytes();
    let quoted = v.first().is_some_and(|&q| q == b'"' || q == b'\'');
    // `key:value` without a space or quote is too often something else (`token:abc` in a
    // URL, `host:port`); `key: value` (YAML, headers) and `"key":"value"` (JSON) are not.
    let colon_tight = sep.as_bytes() == b":" && !quoted;
    if !names_secret(key.as_bytes()) || colon_tight {
        return m.as_bytes().to_vec();
    }
    let (start, end) = if quoted && v.len() >= 2 {
        (value.start() + 1, value.end() - 1)
    } else {
        (value.start(), value.end())
    };
    if m.as_bytes()[start - m.start()..end - m.start()] == *MASK.as_bytes() {
        return m.as_bytes().to_vec();
    }
    splice(c, start, end, MASK.as_bytes())
}

/// A [`FLAG_THEN_VALUE`] match with the value masked if the flag names a secret.
fn mask_flag_value(c: &Captures<'_>) -> Vec<u8> {
    let (Some(m), Some(flag), Some(value)) = (c.get(0), c.get(1), c.get(3)) else {
        return c.get(0).map(|m| m.as_bytes().to_vec()).unwrap_or_default();
    };
    let name = flag.as_bytes().trim_ascii_start();
    let name = name
        .strip_prefix(b"--")
        .or_else(|| name.strip_prefix(b"-"))
        .unwrap_or(name);
    let negated = words(name).first().is_some_and(|w| w == "no");
    if !names_secret(name) || negated || value.as_bytes() == MASK.as_bytes() {
        return m.as_bytes().to_vec();
    }
    splice(c, value.start(), value.end(), MASK.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    fn masked_with(m: &Masker, args: &[&str]) -> Vec<String> {
        let mut v = argv(args);
        m.mask(&mut v);
        v.iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    fn masked(args: &[&str]) -> Vec<String> {
        masked_with(&Masker::builtin(), args)
    }

    #[test]
    fn builtin_patterns_compile() {
        LazyLock::force(&CANDIDATE);
        assert_eq!(LazyLock::force(&TEXT_RULES).rules.len(), 7);
    }

    #[test]
    fn flags_with_secret_values() {
        assert_eq!(
            masked(&[
                "app",
                "--password=hunter2",
                "--token=abc",
                "--user=alice",
                "--verbose",
                "-secret=x",
                "--api-key=k",
                "--apikey=k",
                "--client-secret=c",
                "--db-password=p",
                "--accessKey=a",
                "--AWS_SECRET_ACCESS_KEY=s",
            ]),
            [
                "app",
                "--password=***",
                "--token=***",
                "--user=alice",
                "--verbose",
                "-secret=***",
                "--api-key=***",
                "--apikey=***",
                "--client-secret=***",
                "--db-password=***",
                "--accessKey=***",
                "--AWS_SECRET_ACCESS_KEY=***",
            ]
        );
        // The value as the next argument.
        assert_eq!(
            masked(&[
                "app",
                "--password",
                "hunter2",
                "--db",
                "main",
                "-token",
                "t",
                "x"
            ]),
            [
                "app",
                "--password",
                "***",
                "--db",
                "main",
                "-token",
                "***",
                "x"
            ]
        );
        // k3s: the cluster token.
        assert_eq!(
            masked(&[
                "k3s",
                "server",
                "--token",
                "K10abc::server:xyz",
                "--data-dir",
                "/d"
            ]),
            ["k3s", "server", "--token", "***", "--data-dir", "/d"]
        );
    }

    #[test]
    fn what_is_not_a_secret_stays() {
        let args = [
            "docker",
            "login",
            "--username",
            "alice",
            "--password-stdin",
            "registry.example.com",
            "--password-file=/run/secrets/db",
            "--token-ttl=1h",
            "--secret-name",
            "my-secret",
            "--no-password",
            "db",
            "--tokens-dir",
            "/var/t",
            "mkdir",
            "-p",
            "/a/b",
            "-u",
            "1000:1000",
            "pg_dump",
            "https://example.com/path?x=1",
            "--port=22",
        ];
        assert_eq!(masked(&args), args);
        // -p and -u mean other things outside mysql and curl.
        let args = ["ssh", "-p22", "host"];
        assert_eq!(masked(&args), args);
        let args = ["docker", "run", "-u", "1000:1000", "img"];
        assert_eq!(masked(&args), args);
    }

    #[test]
    fn mysql_and_curl() {
        assert_eq!(
            masked(&["mysql", "-u", "root", "-phunter2", "shop"]),
            ["mysql", "-u", "root", "-p***", "shop"]
        );
        assert_eq!(
            masked(&["/usr/bin/mysqldump", "-p", "shop"]),
            ["/usr/bin/mysqldump", "-p", "shop"],
            "a bare -p prompts: the next argument is the database"
        );
        assert_eq!(
            masked(&["mariadb", "--password=x", "db"]),
            ["mariadb", "--password=***", "db"]
        );
        assert_eq!(
            masked(&[
                "curl",
                "-u",
                "alice:hunter2",
                "https://x",
                "-ualice:pw",
                "--user=bob:pw"
            ]),
            [
                "curl",
                "-u",
                "alice:***",
                "https://x",
                "-ualice:***",
                "--user=bob:***"
            ]
        );
        assert_eq!(
            masked(&["curl", "-u", "alice", "https://x"]),
            ["curl", "-u", "alice", "https://x"]
        );
    }

    #[test]
    fn urls_headers_and_openssl() {
        assert_eq!(
            masked(&[
                "git",
                "clone",
                "https://alice:hunter2@example.com/r.git",
                "-H",
                "Authorization: Bearer eyJhbGciOi.x.y",
                "-H",
                "authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l",
                "--header=Proxy-Authorization: abc",
                "Bearer tok123",
                "-H",
                "Accept: */*",
                "-passin",
                "pass:hunter2",
                "https://example.com/x",
                "ssh://git@host/r",
            ]),
            [
                "git",
                "clone",
                "https://alice:***@example.com/r.git",
                "-H",
                "Authorization: Bearer ***",
                "-H",
                "authorization: Basic ***",
                "--header=Proxy-Authorization: ***",
                "Bearer ***",
                "-H",
                "Accept: */*",
                "-passin",
                "pass:***",
                "https://example.com/x",
                "ssh://git@host/r",
            ]
        );
    }

    #[test]
    fn scripts_given_inline() {
        assert_eq!(
            masked(&[
                "python3",
                "-c",
                "import os\npassword = \"hunter2\"\napi_key='k'\nx = {\"token\": \"t\", \"n\": 1}\nos.environ[\"DB_PASSWORD\"]=\"p\"\nprint(password)",
            ]),
            [
                "python3",
                "-c",
                "import os\npassword = \"***\"\napi_key='***'\nx = {\"token\": \"***\", \"n\": 1}\nos.environ[\"DB_PASSWORD\"]=\"***\"\nprint(password)",
            ]
        );
        assert_eq!(
            masked(&[
                "sh",
                "-c",
                "PASSWORD=hunter2 MYSQL_PWD=x ./run --token abc; export GITHUB_TOKEN=ghp_1; mysql -u r -phunter2 db; curl -u a:hunter2 https://x",
            ]),
            [
                "sh",
                "-c",
                "PASSWORD=*** MYSQL_PWD=*** ./run --token ***; export GITHUB_TOKEN=***; mysql -u r -p*** db; curl -u a:*** https://x",
            ]
        );
        assert_eq!(
            masked(&[
                "env",
                "AWS_SECRET_ACCESS_KEY=abc",
                "PATH=/bin",
                "PWD=/x",
                "cmd"
            ]),
            [
                "env",
                "AWS_SECRET_ACCESS_KEY=***",
                "PATH=/bin",
                "PWD=/x",
                "cmd"
            ]
        );
        assert_eq!(
            masked(&[
                "sh",
                "-c",
                "app --no-password db --token-ttl 5 --password-file /f"
            ]),
            [
                "sh",
                "-c",
                "app --no-password db --token-ttl 5 --password-file /f"
            ]
        );
        // YAML-ish `key: value`, and `key:value` left alone (often not a secret).
        assert_eq!(
            masked(&["x", "password: hunter2", "token:abc"]),
            ["x", "password: ***", "token:abc"]
        );
    }

    #[test]
    fn the_literal_scan_rules_out_only_what_no_rule_touches() {
        let m = Masker::builtin();
        assert!(!m.may_mask(b"runc\0--root\0/run/containerd/runc/k8s.io\0create\0id\0"));
        assert!(!m.may_mask(b"ls\0-la\0/var/lib/containerd\0"));
        for line in [
            "app\0--password=x\0",
            "app\0--apiKey\0k\0",
            "mysql\0-px\0",
            "curl\0-u\0a:b\0",
            "git\0clone\0https://a:b@h/r\0",
            "x\0Authorization: Basic x\0",
            "openssl\0-passin\0pass:x\0",
            "sh\0-c\0MYSQL_PWD=x mysql\0",
        ] {
            assert!(m.may_mask(line.as_bytes()), "{line:?}");
        }
        assert!(
            Masker::new(&["x".to_owned()], false)
                .unwrap()
                .may_mask(b"ls\0")
        );
        assert!(m.may_mask(b"x\0AUTHORIZATION: x\0"));
        assert!(!Masker::none().may_mask(b"app\0--password=x\0"));
    }

    #[test]
    fn masking_twice_changes_nothing() {
        let mut v = argv(&[
            "mysql",
            "--password=hunter2",
            "--token",
            "x",
            "-phunter2",
            "https://a:b@h/",
            "PASSWORD=\"x\"",
        ]);
        assert!(Masker::builtin().mask(&mut v));
        let once = v.clone();
        assert!(!Masker::builtin().mask(&mut v));
        assert_eq!(v, once);
    }

    #[test]
    fn extra_patterns() {
        let m = Masker::new(
            &["sk-[a-z0-9]+".to_owned(), "vault:([^ ]+)".to_owned()],
            true,
        )
        .unwrap();
        assert_eq!(
            masked_with(
                &m,
                &["app", "--key", "sk-abc123", "vault:hunter2", "--password=x"]
            ),
            ["app", "--key", "***", "vault:***", "--password=***"]
        );
        let only = Masker::new(&["sk-[a-z0-9]+".to_owned()], false).unwrap();
        assert_eq!(
            masked_with(&only, &["app", "sk-abc", "--password=x"]),
            ["app", "***", "--password=x"]
        );
        let e = Masker::new(&["(".to_owned()], true).unwrap_err();
        assert!(
            e.to_string().starts_with("--mask-arg \"(\": not a valid"),
            "{e}"
        );
        assert_eq!(
            masked_with(&Masker::none(), &["a", "--password=x"]),
            ["a", "--password=x"]
        );
    }

    #[test]
    fn name_rule() {
        for n in [
            "password",
            "--db-password",
            "DB_PASSWORD",
            "apiKey",
            "X-Auth-Token",
            "client_secret",
            "privateKey",
            "aws-credentials",
        ] {
            assert!(names_secret(n.as_bytes()), "{n}");
        }
        for n in [
            "--password-file",
            "PASSWORD_FILE",
            "tokenTtl",
            "user",
            "port",
            "secret-name",
            "credentials-dir",
        ] {
            assert!(!names_secret(n.as_bytes()), "{n}");
        }
    }
}
