//! Log lines on stderr, for a terminal or for the journal.
//!
//! Under systemd, stderr is usually a stream to the journal, and systemd says so with
//! `$JOURNAL_STREAM=DEV:INODE` (of that stream). When stderr is still that stream (not
//! redirected since), every line starts with its sd-daemon(3) priority, `<3>` error, `<4>`
//! warning, `<6>` info, `<7>` debug and trace, so that `journalctl -p warning` and the
//! journal's colours work, and carries no timestamp (the journal has its own). Otherwise lines
//! are env_logger's usual `[TIME LEVEL target] message`.
//!
//! A line is written in one write and a failed write is ignored (env_logger's behaviour): the
//! daemon's stderr may be a terminal that hung up or a closed pipe, and losing a log line must
//! not end capture.

use std::io::Write as _;

/// The default filter of the daemon commands (`run`, `watch`): ctrwatch's own info lines
/// (what it stores where, what it watches), only warnings and errors from its libraries.
pub const DAEMON_FILTER: &str = "warn,watcher=info,ctrwatch=info";
/// The default filter of the other commands: warnings and errors.
pub const COMMAND_FILTER: &str = "warn";

/// The logger in use: env_logger's, behind a lock so that a reload can replace its filter
/// ([`set_filter`]). Each line takes the read side only.
struct Swappable(std::sync::RwLock<Option<env_logger::Logger>>);

static LOGGER: Swappable = Swappable(std::sync::RwLock::new(None));

impl log::Log for Swappable {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0
            .read()
            .ok()
            .and_then(|l| l.as_ref().map(|l| l.enabled(metadata)))
            .unwrap_or(false)
    }

    fn log(&self, record: &log::Record<'_>) {
        if let Ok(l) = self.0.read()
            && let Some(l) = l.as_ref()
        {
            l.log(record);
        }
    }

    fn flush(&self) {
        if let Ok(l) = self.0.read()
            && let Some(l) = l.as_ref()
        {
            l.flush();
        }
    }
}

/// env_logger with `RUST_LOG` if set, else `default_filter`; journal priorities when stderr
/// is the journal.
fn build(default_filter: &str) -> env_logger::Logger {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter));
    if stderr_is_journal() {
        builder
            .write_style(env_logger::WriteStyle::Never)
            .format(|buf, record| {
                let text =
                    journal_lines(record.level(), record.target(), &record.args().to_string());
                buf.write_all(text.as_bytes())
            });
    }
    builder.build()
}

/// Sets up the logger: `RUST_LOG` if set, else `default_filter`; journal priorities when
/// stderr is the journal. Call once, first thing.
pub fn init(default_filter: &str) {
    // A second init (tests) keeps the first logger.
    if log::set_logger(&LOGGER).is_ok() {
        set_filter(default_filter);
    }
}

/// Replaces the filter of the logger [`init`] set up: `RUST_LOG` if set (it always wins),
/// else `default_filter`. Nothing when another logger is in use.
pub fn set_filter(default_filter: &str) {
    let logger = build(default_filter);
    let max = logger.filter();
    if let Ok(mut current) = LOGGER.0.write() {
        *current = Some(logger);
        log::set_max_level(max);
    }
}

/// The daemon's filter for the configuration's `log_level`: that level for ctrwatch's own
/// lines, and warnings from its libraries, as [`DAEMON_FILTER`] does for the default level.
pub fn daemon_filter(level: ctrwatch_config::LogLevel) -> String {
    use ctrwatch_config::LogLevel;
    match level {
        LogLevel::Error | LogLevel::Warn => level.name().to_string(),
        level => {
            let level = level.name();
            format!("warn,watcher={level},ctrwatch={level}")
        }
    }
}

/// A reload's `log_level`, applied at once (unless `RUST_LOG` is set).
pub fn set_daemon_level(level: ctrwatch_config::LogLevel) {
    set_filter(&daemon_filter(level));
}

/// sd-daemon(3) priority of a log level.
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// A record for the journal: each line of the message with the priority prefix (a line
/// without one would be logged at the unit's default priority), no timestamp.
fn journal_lines(level: log::Level, target: &str, message: &str) -> String {
    let prio = priority(level);
    let mut text = String::with_capacity(message.len() + 32);
    for (i, line) in message.split('\n').enumerate() {
        if i == 0 {
            text.push_str(&format!("<{prio}>[{level:<5} {target}] {line}\n"));
        } else {
            text.push_str(&format!("<{prio}>  {line}\n"));
        }
    }
    text
}

/// An error and its causes on one line, `outer: cause: cause`, like anyhow's `{:#}`, except
/// that a cause whose text the line already ends with is not said again: the library errors
/// put their source in their own message (`"{path}: {source}"`, readable when printed alone)
/// and also return it as their source, so `{:#}` said every I/O error twice.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if text.is_empty() {
            text = said;
        } else if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
    }
    text
}

/// Prints the error that ends a command, `ctrwatch: error: ...`, with priority `<3>` when
/// stderr is the journal. Never panics (see the module's doc).
pub fn print_error(message: &str) {
    let mut text = String::with_capacity(message.len() + 24);
    let journal = stderr_is_journal();
    for line in format!("ctrwatch: error: {message}").split('\n') {
        if journal {
            text.push_str("<3>");
        }
        text.push_str(line);
        text.push('\n');
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Reports every panic as an error line (`ctrwatch: error: thread 'NAME' panicked at
/// FILE:LINE: MESSAGE`, priority `<3>` in the journal) in place of Rust's default message,
/// whichever thread it happens on: also the ones whose panic is caught and handled (the
/// kernel's workers, `kernel::workers`) or that end only their own thread, which would
/// otherwise go unnoticed in the journal. Call once, first thing.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = crate::kernel::workers::panic_message(info.payload());
        let message = message.strip_prefix("panicked").unwrap_or(&message);
        print_error(&format!("thread '{name}' panicked{location}{message}"));
    }));
}

/// Whether stderr is the stream `$JOURNAL_STREAM` names.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = parse_journal_stream(&value.to_string_lossy()) else {
        return false;
    };
    // SAFETY: fstat on fd 2 into a zeroed struct; fails cleanly when fd 2 is closed.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev == dev && st.st_ino == ino
}

/// `DEV:INODE`, both decimal (systemd.exec(5)).
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_values() {
        assert_eq!(parse_journal_stream("8:123456"), Some((8, 123456)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("8:x"), None);
        assert_eq!(parse_journal_stream(":1"), None);
    }

    #[test]
    fn every_line_has_the_priority_and_no_time() {
        assert_eq!(
            journal_lines(log::Level::Warn, "watcher::daemon", "a\nb"),
            "<4>[WARN  watcher::daemon] a\n<4>  b\n"
        );
        assert_eq!(
            journal_lines(log::Level::Info, "watcher::watch", "ctrwatch: watching"),
            "<6>[INFO  watcher::watch] ctrwatch: watching\n"
        );
        assert_eq!(priority(log::Level::Error), 3);
        assert_eq!(priority(log::Level::Trace), 7);
    }

    #[test]
    fn a_cause_already_said_is_not_repeated_and_others_are_kept() {
        #[derive(Debug, thiserror::Error)]
        #[error("/x: {source}")]
        struct Wrapping {
            source: std::io::Error,
        }
        let io = std::io::Error::from_raw_os_error(libc::ENOTDIR);
        let said = io.to_string();
        let e = anyhow::Error::new(Wrapping { source: io }).context("not removing the pins");
        assert_eq!(error_text(&e), format!("not removing the pins: /x: {said}"));
        let plain = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(error_text(&plain), "outer: middle: inner");
    }
}
