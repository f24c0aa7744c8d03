//! systemd's service notification protocol (sd_notify(3)), spoken without libsystemd: one
//! datagram per notification, `KEY=VALUE` lines, to the `AF_UNIX` socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//!
//! The daemon says:
//! - `STATUS=starting: ...` while it opens the store and attaches the programs;
//! - `READY=1` once capture is on (every program attached, the roots set) and the store's
//!   run has begun ([`ready`]), with `STATUS=watching N root(s) ...`;
//! - `STATUS=degraded: ...` while the store cannot be written (full disk), and the watching
//!   status again once it can ([`store_degraded`]);
//! - `WATCHDOG=1` every half `$WATCHDOG_USEC`, from the event loop itself, so that a loop
//!   that hangs stops the pings and systemd restarts the service ([`watchdog_period`],
//!   [`watchdog_ping`]);
//! - `STOPPING=1` when SIGTERM or SIGINT ends it ([`stopping`]).
//!
//! Without `$NOTIFY_SOCKET` (not run by systemd, or `Type=` other than notify) every call does
//! nothing. The environment is read once and left as it is: ctrwatch starts no child processes
//! that could mistake the socket for theirs. Notifications never block the daemon (the socket
//! is non-blocking; a notification the manager cannot take is dropped, and that is logged
//! once), and a failure to notify never ends it. Datagrams go from the main process's threads,
//! which share its pid: `NotifyAccess=main` accepts them.

use std::{
    ffi::OsStr,
    os::unix::{
        ffi::OsStrExt as _,
        net::{SocketAddr, UnixDatagram},
    },
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// Why the notification environment is not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotifyError {
    #[error(
        "NOTIFY_SOCKET={0}: not an absolute path nor an abstract socket (@name); \
         not notifying the service manager"
    )]
    /// `$NOTIFY_SOCKET` is neither an absolute path nor an abstract name.
    Address(String),
    #[error("WATCHDOG_USEC={0}: not a positive number of microseconds; no watchdog pings")]
    /// `$WATCHDOG_USEC` is not a positive number.
    WatchdogUsec(String),
    #[error("WATCHDOG_PID={0}: not a process id; no watchdog pings")]
    /// `$WATCHDOG_PID` is not a process id.
    WatchdogPid(String),
}

/// Where notifications go and whether the watchdog is ours to feed, from the environment.
#[derive(Debug, PartialEq, Eq)]
pub struct Environment {
    /// The manager's socket, if any.
    pub socket: Option<Address>,
    /// Ping at this period (half `$WATCHDOG_USEC`), when the watchdog is ours.
    pub watchdog_period: Option<Duration>,
}

/// A `$NOTIFY_SOCKET` value.
#[derive(Debug, PartialEq, Eq)]
pub enum Address {
    /// A socket in the filesystem (an absolute path).
    Path(std::path::PathBuf),
    /// The name after the `@`.
    Abstract(Vec<u8>),
}

impl Environment {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` through `var`. Bad values
    /// are reported and leave that part off.
    pub fn parse(
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
        own_pid: u32,
    ) -> (Environment, Vec<NotifyError>) {
        let mut errors = Vec::new();
        let socket = match var("NOTIFY_SOCKET") {
            None => None,
            Some(v) => match parse_address(&v) {
                Ok(a) => Some(a),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
        };
        let mut watchdog_period = None;
        if let Some(usec) = var("WATCHDOG_USEC") {
            let text = usec.to_string_lossy().into_owned();
            match text.parse::<u64>() {
                Ok(us) if us > 0 => watchdog_period = Some(Duration::from_micros(us) / 2),
                _ => errors.push(NotifyError::WatchdogUsec(text)),
            }
        }
        // The watchdog is set for the service's main process; a child that inherited the
        // variables is not it.
        if let Some(pid) = var("WATCHDOG_PID") {
            let text = pid.to_string_lossy().into_owned();
            match text.parse::<u32>() {
                Ok(p) if p == own_pid => {}
                Ok(_) => watchdog_period = None,
                Err(_) => {
                    errors.push(NotifyError::WatchdogPid(text));
                    watchdog_period = None;
                }
            }
        }
        if socket.is_none() {
            watchdog_period = None;
        }
        (
            Environment {
                socket,
                watchdog_period,
            },
            errors,
        )
    }
}

fn parse_address(value: &OsStr) -> Result<Address, NotifyError> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'/') => Ok(Address::Path(value.into())),
        Some(b'@') if bytes.len() > 1 => Ok(Address::Abstract(bytes[1..].to_vec())),
        _ => Err(NotifyError::Address(ctrwatch_event::escape_bytes(bytes))),
    }
}

/// The process's notifier: the socket, and what the status line says.
struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    watchdog_period: Option<Duration>,
    status: Mutex<Status>,
    /// A send failed (logged once).
    failed: AtomicBool,
}

/// The parts the `STATUS=` line is made of.
#[derive(Default)]
struct Status {
    /// What it watches, once ready.
    watching: Option<String>,
    /// Why the store cannot be written, while it cannot.
    degraded: Option<String>,
    /// The line last sent.
    sent: String,
}

impl Status {
    fn line(&self) -> Option<String> {
        match (&self.degraded, &self.watching) {
            (Some(d), _) => Some(format!("degraded: {d}")),
            (None, Some(w)) => Some(w.clone()),
            (None, None) => None,
        }
    }
}

static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();

/// The notifier, set up from the environment on first use.
fn notifier() -> Option<&'static Notifier> {
    NOTIFIER.get_or_init(from_environment).as_ref()
}

fn from_environment() -> Option<Notifier> {
    let (env, errors) = Environment::parse(|k| std::env::var_os(k), std::process::id());
    for e in errors {
        log::warn!("{e}");
    }
    let address = match env.socket? {
        Address::Path(p) => SocketAddr::from_pathname(&p),
        Address::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name)
        }
    };
    let opened = address.and_then(|address| {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok((socket, address))
    });
    match opened {
        Ok((socket, address)) => Some(Notifier {
            socket,
            address,
            watchdog_period: env.watchdog_period,
            status: Mutex::new(Status::default()),
            failed: AtomicBool::new(false),
        }),
        Err(e) => {
            log::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
            None
        }
    }
}

impl Notifier {
    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.address)
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            log::warn!(
                "notifying the service manager failed ({e}); further failures are not logged"
            );
        }
    }

    /// Sends `extra` (may be empty) and the status line if it changed.
    fn send_with_status(&self, extra: &str, change: impl FnOnce(&mut Status)) {
        let mut message = extra.to_string();
        if let Ok(mut status) = self.status.lock() {
            change(&mut status);
            if let Some(line) = status.line()
                && line != status.sent
            {
                if !message.is_empty() {
                    message.push('\n');
                }
                message.push_str("STATUS=");
                message.push_str(&one_line(&line));
                status.sent = line;
            }
        }
        if !message.is_empty() {
            self.send(&message);
        }
    }
}

/// A status line must stay one line.
fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

/// `STATUS=starting: WHAT` (opening the store, attaching the programs).
pub fn starting(what: &str) {
    if let Some(n) = notifier() {
        n.send(&format!("STATUS=starting: {}", one_line(what)));
    }
}

/// `READY=1`: capture is on and the store's run has begun. `watching` becomes the status line
/// (unless the store is degraded).
pub fn ready(watching: String) {
    if let Some(n) = notifier() {
        n.send_with_status("READY=1", |s| s.watching = Some(watching));
    }
}

/// The store cannot be written (`Some(why)`), or can again (`None`): the status line says so.
/// Sent only when it changes; cheap to call after every commit.
pub fn store_degraded(why: Option<String>) {
    if let Some(n) = notifier() {
        let unchanged = n.status.lock().is_ok_and(|s| s.degraded == why);
        if !unchanged {
            n.send_with_status("", |s| s.degraded = why);
        }
    }
}

/// `STOPPING=1` and why.
pub fn stopping(why: &str) {
    if let Some(n) = notifier() {
        n.send(&format!("STOPPING=1\nSTATUS=stopping: {}", one_line(why)));
    }
}

/// How often the event loop must call [`watchdog_ping`]: half `$WATCHDOG_USEC`. None when
/// systemd runs no watchdog for this process.
pub fn watchdog_period() -> Option<Duration> {
    notifier().and_then(|n| n.watchdog_period)
}

/// `WATCHDOG=1`. Called from the event loop's own tick, never from another thread: a loop
/// that hangs must stop the pings.
pub fn watchdog_ping() {
    if let Some(n) = notifier()
        && n.watchdog_period.is_some()
    {
        n.send("WATCHDOG=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn parse(vars: &[(&str, &str)], pid: u32) -> (Environment, Vec<NotifyError>) {
        let vars: Vec<(String, OsString)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Environment::parse(
            |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            pid,
        )
    }

    #[test]
    fn no_socket_no_notifications_and_no_watchdog() {
        let (env, errors) = parse(&[("WATCHDOG_USEC", "1000000")], 7);
        assert_eq!(env.socket, None);
        assert_eq!(env.watchdog_period, None);
        assert!(errors.is_empty());
    }

    #[test]
    fn paths_and_abstract_names() {
        let (env, _) = parse(&[("NOTIFY_SOCKET", "/run/systemd/notify")], 7);
        assert_eq!(
            env.socket,
            Some(Address::Path("/run/systemd/notify".into()))
        );
        let (env, _) = parse(
            &[("NOTIFY_SOCKET", "@/org/freedesktop/systemd1/notify/1")],
            7,
        );
        assert_eq!(
            env.socket,
            Some(Address::Abstract(
                b"/org/freedesktop/systemd1/notify/1".to_vec()
            ))
        );
        for bad in ["relative/sock", "@", "", "vsock:2:1234"] {
            let (env, errors) = parse(&[("NOTIFY_SOCKET", bad)], 7);
            assert_eq!(env.socket, None, "{bad:?}");
            assert!(matches!(errors[..], [NotifyError::Address(_)]), "{bad:?}");
        }
    }

    #[test]
    fn watchdog_at_half_the_interval_for_its_own_pid_only() {
        let sock = ("NOTIFY_SOCKET", "/run/systemd/notify");
        let (env, _) = parse(&[sock, ("WATCHDOG_USEC", "30000000")], 7);
        assert_eq!(env.watchdog_period, Some(Duration::from_secs(15)));
        let (env, _) = parse(
            &[sock, ("WATCHDOG_USEC", "30000000"), ("WATCHDOG_PID", "7")],
            7,
        );
        assert_eq!(env.watchdog_period, Some(Duration::from_secs(15)));
        let (env, errors) = parse(
            &[sock, ("WATCHDOG_USEC", "30000000"), ("WATCHDOG_PID", "8")],
            7,
        );
        assert_eq!(env.watchdog_period, None, "another process's watchdog");
        assert!(errors.is_empty());
        for bad in ["0", "-1", "30s", ""] {
            let (env, errors) = parse(&[sock, ("WATCHDOG_USEC", bad)], 7);
            assert_eq!(env.watchdog_period, None, "{bad:?}");
            assert!(
                matches!(errors[..], [NotifyError::WatchdogUsec(_)]),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn degraded_status_wins_over_watching() {
        let mut s = Status::default();
        assert_eq!(s.line(), None);
        s.watching = Some("watching 4 root(s)".into());
        assert_eq!(s.line().as_deref(), Some("watching 4 root(s)"));
        s.degraded = Some("disk full".into());
        assert_eq!(s.line().as_deref(), Some("degraded: disk full"));
        s.degraded = None;
        assert_eq!(s.line().as_deref(), Some("watching 4 root(s)"));
    }
}
