use super::*;

fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    Config::parse("test.toml", text)
}

fn only_error(text: &str) -> ConfigError {
    match parse(text) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(mut e) => {
            assert_eq!(e.len(), 1, "{e:?}");
            e.remove(0)
        }
    }
}

fn at(e: &ConfigError) -> (usize, usize, &str) {
    match e {
        ConfigError::At {
            line, column, key, ..
        } => (*line, *column, key.as_str()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(parse("").ok(), Some(Config::default()));
}

#[test]
fn the_example_is_valid_as_shipped() {
    let c = parse(EXAMPLE).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.sinks.len(), 0);
    assert_eq!(
        c.rule(RuleId::Heartbeat).interval,
        Some(Duration::from_secs(300))
    );
}

/// Every `#key = value` line of the example, uncommented: the example must then parse, and
/// set every key the file format has (an exhaustive destructuring: a new key fails to
/// compile here until it is documented).
#[test]
fn the_example_documents_every_key() {
    let uncommented: String = EXAMPLE
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.starts_with(' ') && !rest.is_empty() => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    // Only the first of each sink kind's examples is needed for the keys.
    let raw: raw::RawConfig = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}"));
    let full = parse(&uncommented);
    // secret files do not exist here: only those errors are allowed.
    if let Err(errors) = &full {
        for e in errors {
            assert!(e.to_string().contains("cannot read"), "{e}");
        }
    }
    let raw::RawConfig {
        log_level,
        watch,
        store,
        metrics,
        alerts,
        rules,
        sinks,
    } = raw;
    assert!(log_level.is_some());
    let raw::RawWatch {
        roots,
        discover,
        root_refresh,
        ring_buffer_mb,
        trust_exes,
        trust_units,
        mask_args,
        default_masks,
        backend,
        protect,
    } = watch;
    assert!(roots.is_some() && discover.is_some() && root_refresh.is_some());
    assert!(ring_buffer_mb.is_some() && trust_exes.is_some() && trust_units.is_some());
    assert!(mask_args.is_some() && default_masks.is_some() && backend.is_some());
    assert!(protect.is_some());
    let raw::RawStore {
        path,
        retention_days,
        retention_mb,
        group,
    } = store;
    assert!(
        path.is_some() && retention_days.is_some() && retention_mb.is_some() && group.is_some()
    );
    let raw::RawMetrics { listen } = metrics;
    assert!(listen.is_some());
    let raw::RawAlerts {
        group_window,
        outbox_max,
        node_name,
    } = alerts;
    assert!(group_window.is_some() && outbox_max.is_some() && node_name.is_some());
    let mut seen = [false; 4];
    for r in rules.values() {
        let raw::RawRule {
            enabled,
            severity,
            interval,
            window,
        } = r;
        for (s, v) in seen.iter_mut().zip([
            enabled.is_some(),
            severity.is_some(),
            interval.is_some(),
            window.is_some(),
        ]) {
            *s |= v;
        }
    }
    assert_eq!(seen, [true; 4], "every rule key is shown");
    let mut seen = [false; 14];
    let mut kinds = std::collections::BTreeSet::new();
    for s in &sinks {
        let raw::RawSink {
            name,
            kind,
            url,
            urls,
            secret,
            secret_file,
            min_severity,
            rules,
            headers,
            bearer_token,
            bearer_token_file,
            ca_file,
            timeout,
            rate_per_minute,
        } = s;
        kinds.extend(kind.clone());
        for (s, v) in seen.iter_mut().zip([
            name.is_some(),
            kind.is_some(),
            url.is_some(),
            urls.is_some(),
            secret.is_some(),
            secret_file.is_some(),
            min_severity.is_some(),
            rules.is_some(),
            headers.is_some(),
            bearer_token.is_some() || bearer_token_file.is_some(),
            bearer_token_file.is_some(),
            ca_file.is_some(),
            timeout.is_some(),
            rate_per_minute.is_some(),
        ]) {
            *s |= v;
        }
    }
    assert_eq!(seen, [true; 14], "every sink key is shown");
    // bearer_token (inline) is documented in words: the file form is the one to use.
    assert!(EXAMPLE.contains("bearer_token_file"));
    for id in RuleId::ALL {
        assert!(
            EXAMPLE.contains(id.name()),
            "rule {id} is not named in the example"
        );
    }
    for k in SinkKind::ALL {
        assert!(
            EXAMPLE.contains(k.name()),
            "sink kind {} is not in the example",
            k.name()
        );
    }
}

#[test]
fn unknown_keys_name_the_line_column_and_key() {
    let e = only_error("[watch]\nroot_refresh = \"5s\"\nrootz = []\n");
    assert_eq!(at(&e), (3, 1, "watch.rootz"));
    assert!(
        e.to_string()
            .starts_with("test.toml:3:1: watch.rootz: unknown field `rootz`"),
        "{e}"
    );
    let e = only_error(
        "[[sinks]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"http://x\"\nsecrt = \"s\"\n",
    );
    assert_eq!(at(&e), (5, 1, "sinks[0].secrt"));
    let e = only_error("[nope]\n");
    assert_eq!(at(&e).2, "nope");
}

#[test]
fn wrong_types_name_the_key() {
    let e = only_error("[watch]\nring_buffer_mb = \"lots\"\n");
    assert_eq!(at(&e), (2, 18, "watch.ring_buffer_mb"));
    assert!(e.to_string().contains("invalid type"), "{e}");
    let e = only_error("[store]\nretention_days = -1\n");
    assert_eq!(at(&e).2, "store.retention_days");
}

#[test]
fn syntax_errors_have_a_position() {
    let e = only_error("[watch\n");
    assert_eq!(at(&e).0, 1);
}

#[test]
fn impossible_values_are_errors_at_their_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[watch]\nring_buffer_mb = 3\n",
            "watch.ring_buffer_mb",
            "power of two",
        ),
        (
            "[watch]\nroot_refresh = \"0s\"\n",
            "watch.root_refresh",
            "too short",
        ),
        (
            "[watch]\nroot_refresh = \"soon\"\n",
            "watch.root_refresh",
            "not a duration",
        ),
        (
            "[watch]\nroots = [\"relative\"]\n",
            "watch.roots[0]",
            "absolute",
        ),
        (
            "[watch]\nbackend = \"kprobe\"\n",
            "watch.backend",
            "not one of",
        ),
        (
            "[watch]\nprotect = \"yes\"\n",
            "watch.protect",
            "not one of",
        ),
        (
            "[watch]\ntrust_units = [\"a/b\"]\n",
            "watch.trust_units[0]",
            "unit",
        ),
        ("log_level = \"loud\"\n", "log_level", "not one of"),
        (
            "[metrics]\nlisten = \"9847\"\n",
            "metrics.listen",
            "address:port",
        ),
        (
            "[store]\nretention_mb = 1\n",
            "store.retention_mb",
            "too small",
        ),
        (
            "[alerts]\noutbox_max = 5\n",
            "alerts.outbox_max",
            "at least 100",
        ),
        (
            "[rules.foreign-chnage]\nenabled = false\n",
            "rules.foreign-chnage",
            "no rule",
        ),
        (
            "[rules.heartbeat]\nseverity = \"high\"\n",
            "rules.heartbeat.severity",
            "not one of",
        ),
        (
            "[rules.opaque-leak]\ninterval = \"1m\"\n",
            "rules.opaque-leak.interval",
            "heartbeat",
        ),
        (
            "[[sinks]]\nkind = \"webhook\"\nurl = \"http://x\"\n",
            "sinks[0]",
            "name",
        ),
        (
            "[[sinks]]\nname = \"a\"\nurl = \"http://x\"\n",
            "sinks[0]",
            "kind",
        ),
        (
            "[[sinks]]\nname = \"a\"\nkind = \"pager\"\nurl = \"http://x\"\n",
            "sinks[0].kind",
            "not one of",
        ),
        (
            "[[sinks]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"ftp://x\"\n",
            "sinks[0].url",
            "http",
        ),
        (
            "[[sinks]]\nname = \"a\"\nkind = \"webhook\"\n",
            "sinks[0]",
            "url",
        ),
        (
            "[[sinks]]\nname = \"a\"\nkind = \"slack\"\nurls = [\"http://x\"]\n",
            "sinks[0].urls",
            "only alertmanager",
        ),
        (
            "[[sinks]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"http://x\"\nsecret = \"plain\"\n",
            "sinks[0].secret",
            "whsec_",
        ),
        (
            "[[sinks]]\nname = \"a\"\nkind = \"slack\"\nurl = \"http://x\"\nsecret = \"s\"\n",
            "sinks[0].secret",
            "not signed",
        ),
        (
            "[[sinks]]\nname = \"a\"\nkind = \"dingtalk\"\nurl = \"http://x\"\nsecret = \"s\"\nsecret_file = \"/s\"\n",
            "sinks[0].secret",
            "not both",
        ),
        (
            "[[sinks]]\nname = \"a\"\nkind = \"feishu\"\nurl = \"http://x\"\nsecret_file = \"/nonexistent/s\"\n",
            "sinks[0].secret_file",
            "cannot read",
        ),
        (
            "[[sinks]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"http://x\"\nrules = [\"nope\"]\n",
            "sinks[0].rules[0]",
            "no rule",
        ),
        (
            "[[sinks]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"http://x\"\nrate_per_minute = 0\n",
            "sinks[0].rate_per_minute",
            "never send",
        ),
        (
            "[[sinks]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"http://x\"\n[[sinks]]\nname = \"a\"\nkind = \"slack\"\nurl = \"http://y\"\n",
            "sinks[1].name",
            "already",
        ),
    ];
    for (text, key, words) in cases {
        let e = only_error(text);
        let (line, _, k) = at(&e);
        assert_eq!(k, *key, "{text}: {e}");
        assert!(line >= 1);
        assert!(e.to_string().contains(words), "{text}: {e} lacks {words:?}");
    }
}

#[test]
fn several_problems_are_all_reported() {
    let Err(errors) = parse("[watch]\nring_buffer_mb = 3\nroot_refresh = \"x\"\n") else {
        panic!("accepted")
    };
    assert_eq!(errors.len(), 2);
}

#[test]
fn sinks_resolve_with_defaults_and_filters() {
    let dir = std::env::temp_dir().join(format!("ctrwatch-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let secret = dir.join("s");
    std::fs::write(&secret, "SECabc\n").unwrap_or_else(|e| panic!("{e}"));
    let text = format!(
        "[[sinks]]\nname = \"d\"\nkind = \"dingtalk\"\nurl = \"https://oapi.dingtalk.com/robot/send?access_token=T\"\nsecret_file = \"{}\"\nmin_severity = \"warning\"\nrules = [\"foreign-change\"]\n[[sinks]]\nname = \"am\"\nkind = \"alertmanager\"\nurls = [\"http://127.0.0.1:9093\", \"http://127.0.0.1:9094\"]\n",
        secret.display()
    );
    let c = parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
    let d = &c.sinks[0];
    assert_eq!(d.secret.as_ref().map(Secret::expose), Some("SECabc"));
    assert_eq!(format!("{:?}", d.secret), "Some(Secret(***))");
    assert_eq!(d.rate_per_minute, Some(20));
    assert_eq!(d.timeout, Duration::from_secs(10));
    assert!(d.wants(RuleId::ForeignChange, Severity::Critical));
    assert!(!d.wants(RuleId::ForeignChange, Severity::Info));
    assert!(!d.wants(RuleId::Heartbeat, Severity::Critical));
    assert_eq!(c.sinks[1].urls.len(), 2);
    assert!(c.sinks[1].wants(RuleId::Heartbeat, Severity::Info));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn load_names_the_file() {
    let Err(e) = Config::load(Path::new("/nonexistent/ctrwatch.toml")) else {
        panic!("loaded")
    };
    assert!(
        e[0].to_string().starts_with("/nonexistent/ctrwatch.toml: "),
        "{}",
        e[0]
    );
}

#[test]
fn a_mask_pattern_that_is_not_a_regular_expression_names_its_index() {
    let e = only_error("[watch]\nmask_args = [\"ok-[0-9]+\", \"bad[\"]\n");
    assert_eq!(at(&e), (2, 27, "watch.mask_args[1]"), "{e}");
    assert!(
        e.to_string().contains("not a valid regular expression"),
        "{e}"
    );
}

#[test]
fn a_wrong_sink_url_is_not_echoed_as_it_may_hold_a_secret() {
    let e = only_error(
        "[[sinks]]\nname = \"chat\"\nkind = \"slack\"\nurl = \"hooks.slack.com/services/T0/B0/SLACKSECRET\"\n",
    );
    assert_eq!(at(&e).2, "sinks[0].url", "{e}");
    assert!(!e.to_string().contains("SLACKSECRET"), "{e}");
}

#[test]
fn a_fifo_or_a_directory_is_refused_without_blocking() {
    let dir = std::env::temp_dir().join(format!("ctrwatch-config-fifo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("ctrwatch.toml");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Without O_NONBLOCK this open would wait for a writer forever.
    let e = Config::load(&fifo).unwrap_err();
    assert!(e[0].to_string().contains("not a regular file"), "{e:?}");
    let e = Config::load(&dir).unwrap_err();
    assert!(e[0].to_string().contains("not a regular file"), "{e:?}");
    let big = dir.join("big.toml");
    std::fs::write(&big, vec![b'#'; (crate::MAX_FILE_BYTES + 1) as usize]).unwrap();
    let e = Config::load(&big).unwrap_err();
    assert!(
        e[0].to_string().contains("larger than any configuration"),
        "{e:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A sink's secret, token and CA files are read as trusted files: a FIFO in their place does
/// not hang `config check` or the daemon, a file others can write is refused when running as
/// root, and a CA file must hold a certificate. The error names the key.
#[test]
fn referenced_files_must_be_trustworthy() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("ctrwatch-config-refs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let writable = dir.join("writable");
    std::fs::write(&writable, "SEC\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o666))
        .unwrap_or_else(|e| panic!("{e}"));
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap_or_else(|e| panic!("{e}"));
    let sink = |extra: String| {
        format!("[[sinks]]\nname = \"a\"\nkind = \"dingtalk\"\nurl = \"https://x\"\n{extra}")
    };
    let mut cases = vec![
        (
            sink(format!("secret_file = \"{}\"\n", fifo.display())),
            "sinks[0].secret_file",
            "not a regular file",
        ),
        (
            sink(format!("ca_file = \"{}\"\n", fifo.display())),
            "sinks[0].ca_file",
            "not a regular file",
        ),
        (
            sink(format!("ca_file = \"{}\"\n", not_pem.display())),
            "sinks[0].ca_file",
            "no PEM certificate",
        ),
    ];
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        cases.push((
            sink(format!("secret_file = \"{}\"\n", writable.display())),
            "sinks[0].secret_file",
            "writable by root alone",
        ));
    }
    for (text, key, words) in &cases {
        let e = only_error(text);
        let (_, _, k) = at(&e);
        assert_eq!(k, *key, "{text}: {e}");
        assert!(e.to_string().contains(words), "{text}: {e} lacks {words:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
