//! ctrwatch as a systemd service (issue 13), without systemd: the test plays the service
//! manager. It opens a real notification socket (`NOTIFY_SOCKET`, a path or an abstract
//! `@name`), receives the daemon's datagrams with the kernel's sender credentials (what
//! `NotifyAccess=main` checks), and checks that `READY=1` comes only once capture is on,
//! that `WATCHDOG=1` keeps half the `WATCHDOG_USEC` period and stops when the event loop is
//! held (its thread alone is stopped with ptrace: the other threads run on), and that
//! `STOPPING=1` comes on SIGTERM. Log lines carry sd-daemon `<N>` priorities when stderr is
//! the journal stream named by `JOURNAL_STREAM`. Real daemon, real kernel. Needs root.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::{OsStr, OsString},
    io::{BufRead, BufReader},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tests::{ctrwatch, ctrwatch_bin, json_lines, require_root, s, temp_dir};

/// How long attaching may take on a loaded machine.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// One datagram received on the notification socket.
#[derive(Clone, Debug)]
struct Notice {
    /// When the datagram reached the socket: the kernel's receive timestamp (SO_TIMESTAMPNS),
    /// not when the reader thread got to it, which a loaded machine can delay by a second and
    /// then hand over two pings back to back.
    at: Instant,
    /// When the reader thread read it (as the stderr lines are stamped).
    seen: Instant,
    /// The sender's pid as the kernel saw it (SCM_CREDENTIALS), as systemd reads it.
    pid: Option<u32>,
    text: String,
}

impl Notice {
    fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }
    fn status(&self) -> Option<&str> {
        self.text.lines().find_map(|l| l.strip_prefix("STATUS="))
    }
}

/// The service manager's end: a datagram socket with SO_PASSCRED, read on a thread.
struct NotifySocket {
    /// The value of NOTIFY_SOCKET for the daemon.
    address: OsString,
    notices: Arc<Mutex<Vec<Notice>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    _dir: Option<PathBuf>,
}

impl NotifySocket {
    /// A socket at a path in a fresh directory.
    fn at_path(name: &str) -> NotifySocket {
        let dir = temp_dir(name);
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notification socket");
        NotifySocket::serve(socket, path.into_os_string(), Some(dir))
    }

    /// A socket in the abstract namespace: NOTIFY_SOCKET=@name.
    fn abstract_named(name: &str) -> NotifySocket {
        let name = format!("ctrwatch-test/{name}/{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
        let socket = UnixDatagram::bind_addr(&addr).expect("bind the abstract socket");
        NotifySocket::serve(socket, format!("@{name}").into(), None)
    }

    fn serve(socket: UnixDatagram, address: OsString, dir: Option<PathBuf>) -> NotifySocket {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on our own socket with a c_int option value.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_PASSCRED: {}", std::io::Error::last_os_error());
        // SAFETY: as above.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let notices = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let notices = Arc::clone(&notices);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some((text, pid, at)) = recv_with_pid(&socket) {
                        let notice = Notice {
                            at,
                            seen: Instant::now(),
                            pid,
                            text,
                        };
                        notices.lock().expect("notices").push(notice);
                    }
                }
            })
        };
        NotifySocket {
            address,
            notices,
            stop,
            reader: Some(reader),
            _dir: dir,
        }
    }

    fn notices(&self) -> Vec<Notice> {
        self.notices.lock().expect("notices").clone()
    }

    /// Waits for a datagram holding `line`; returns it.
    fn wait_for(&self, line: &str, timeout: Duration) -> Option<Notice> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(n) = self.notices().into_iter().find(|n| n.has(line)) {
                return Some(n);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a WATCHDOG=1 that arrived after `after`; returns when it arrived.
    fn wait_for_ping_after(&self, after: Instant, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = self.pings().into_iter().find(|&t| t > after) {
                return Some(t);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pings(&self) -> Vec<Instant> {
        self.notices()
            .iter()
            .filter(|n| n.has("WATCHDOG=1"))
            .map(|n| n.at)
            .collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if let Some(d) = &self._dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// One datagram, its sender's pid from SCM_CREDENTIALS and when it arrived (SCM_TIMESTAMPNS,
/// as an Instant); None on timeout.
fn recv_with_pid(socket: &UnixDatagram) -> Option<(String, Option<u32>, Instant)> {
    let mut buf = vec![0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for a ucred and a timespec control message (u64 words keep it aligned for cmsghdr).
    let mut control = [0u64; 16];
    // SAFETY: zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: recvmsg into the buffers above.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return None;
    }
    let mut pid = None;
    let mut arrived = None;
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_CREDENTIALS
            {
                let cred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                pid = Some(cred.pid as u32);
            }
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                arrived = Some(
                    std::time::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                );
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    // The kernel's stamp is wall-clock time: taken back to the monotonic clock by its age now.
    let now = Instant::now();
    let age = arrived
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    let at = now.checked_sub(age).unwrap_or(now);
    buf.truncate(n as usize);
    Some((String::from_utf8_lossy(&buf).into_owned(), pid, at))
}

/// A ctrwatch process whose stderr lines are collected with the time each arrived.
struct Daemon {
    child: Child,
    stderr: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: Option<JoinHandle<()>>,
}

impl Daemon {
    /// `ctrwatch ARGS` with `env` added; its stderr is `stderr` (a pipe of ours) when given.
    fn spawn(
        args: &[&OsStr],
        env: &[(&str, &OsStr)],
        stderr: Option<(OwnedFd, OwnedFd)>,
    ) -> Daemon {
        require_root();
        let mut cmd = Command::new(ctrwatch_bin());
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
        // What a service manager sets for its own services is never inherited from the test
        // runner.
        for var in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "JOURNAL_STREAM",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let read_end = match stderr {
            Some((read, write)) => {
                cmd.stderr(Stdio::from(write));
                std::fs::File::from(read)
            }
            None => {
                cmd.stderr(Stdio::piped());
                std::fs::File::open("/dev/null").expect("/dev/null")
            }
        };
        // SAFETY: prctl in the child before exec; async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn ctrwatch");
        // Our copy of the pipe's write end is gone with `cmd`: EOF comes when ctrwatch exits.
        drop(cmd);
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let source: Box<dyn std::io::Read + Send> = match child.stderr.take() {
            Some(piped) => Box::new(piped),
            None => Box::new(read_end),
        };
        let reader = {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(source).lines().map_while(Result::ok) {
                    stderr.lock().expect("stderr").push((Instant::now(), line));
                }
            })
        };
        Daemon {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        self.stderr.lock().expect("stderr").clone()
    }

    fn stderr(&self) -> String {
        self.lines()
            .into_iter()
            .map(|(_, l)| l + "\n")
            .collect::<String>()
    }

    /// When the first stderr line containing `what` arrived.
    fn wait_line(&self, what: &str, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((at, _)) = self.lines().into_iter().find(|(_, l)| l.contains(what)) {
                return at;
            }
            assert!(
                Instant::now() < deadline,
                "no stderr line with {what:?} within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the exit (at most STOP_TIMEOUT); its status, the stderr complete.
    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                self.signal(libc::SIGKILL);
                panic!(
                    "ctrwatch did not exit in {STOP_TIMEOUT:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.stderr())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGCONT);
            self.signal(libc::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

fn run_args<'a>(root: &'a Path, store: &'a Path) -> Vec<&'a OsStr> {
    vec![
        OsStr::new("run"),
        OsStr::new("--root"),
        root.as_os_str(),
        OsStr::new("--store"),
        store.as_os_str(),
    ]
}

/// Holds one thread of another process stopped (ptrace: PTRACE_SEIZE + PTRACE_INTERRUPT), as
/// a hung event loop would be, while the process's other threads run on. Released on drop.
struct HeldThread {
    tid: libc::pid_t,
}

impl HeldThread {
    fn hold(tid: u32) -> HeldThread {
        let tid = tid as libc::pid_t;
        // SAFETY: ptrace requests on a process of ours; no pointers passed.
        unsafe {
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0),
                0,
                "PTRACE_SEIZE: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(
                libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0),
                0,
                "PTRACE_INTERRUPT: {}",
                std::io::Error::last_os_error()
            );
            let mut status = 0;
            let waited = libc::waitpid(tid, &mut status, libc::__WALL);
            assert_eq!(waited, tid, "waitpid: {}", std::io::Error::last_os_error());
            assert!(
                libc::WIFSTOPPED(status),
                "the thread did not stop: {status:#x}"
            );
        }
        HeldThread { tid }
    }
}

impl Drop for HeldThread {
    fn drop(&mut self) {
        // SAFETY: detaching from our tracee lets it run on.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.tid, 0, 0) };
    }
}

/// The event loop is the main thread (a current-thread runtime in `main`): its tid is the pid.
/// Checks that the process has other threads, which go on running while it is held.
fn main_thread_and_others(pid: u32) -> (u32, usize) {
    let others = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter(|t| t.as_ref().is_ok_and(|t| t.file_name() != *pid.to_string()))
        .count();
    (pid, others)
}

/// READY=1 comes after the "watching" line, when capture is already on (an operation made at
/// once is stored); WATCHDOG=1 comes every half WATCHDOG_USEC, from the event loop (it stops
/// while only that thread is held); STOPPING=1 comes on SIGTERM, before the exit. Every
/// datagram is sent by the main process (NotifyAccess=main).
#[test]
fn notify_ready_watchdog_and_stopping() {
    require_root();
    let base = temp_dir("notify");
    let root = base.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let store = base.join("store/events.db");
    let socket = NotifySocket::at_path("notify-socket");
    const WATCHDOG_USEC: u64 = 2_000_000;
    let usec = WATCHDOG_USEC.to_string();
    let started = Instant::now();
    let daemon = Daemon::spawn(
        &run_args(&root, &store),
        &[
            ("NOTIFY_SOCKET", socket.address.as_os_str()),
            ("WATCHDOG_USEC", OsStr::new(&usec)),
        ],
        None,
    );
    let ready = socket
        .wait_for("READY=1", ATTACH_TIMEOUT)
        .unwrap_or_else(|| {
            panic!(
                "no READY=1 within {ATTACH_TIMEOUT:?}; datagrams: {:?}\nstderr:\n{}",
                socket.notices(),
                daemon.stderr()
            )
        });
    // Capture is on: what happens now is stored.
    let probe = root.join("made-at-ready");
    std::fs::write(&probe, b"x").unwrap();
    // The daemon prints the "watching" line and then sends READY=1, from one thread; the test
    // reads stderr and the socket on two threads, so their arrival order can invert by a
    // scheduling delay (CI saw 36 µs; a loaded machine can stall a thread far longer). What
    // READY=1 promises (capture on) is checked by the probe being stored, below; here only
    // that READY=1 did not come while the programs were still loading (seconds). Both
    // stamped by their reader threads (`seen`), so that the two delays are alike.
    const CHANNEL_SKEW: Duration = Duration::from_secs(2);
    let watching = daemon.wait_line("ctrwatch: watching", ATTACH_TIMEOUT);
    assert!(
        watching <= ready.seen + CHANNEL_SKEW,
        "READY=1 came long before the \"watching\" line (capture on): {:?} early",
        watching - ready.seen
    );
    eprintln!(
        "ready after {:.2} s: {:?}",
        (ready.at - started).as_secs_f64(),
        ready.text
    );
    let status = ready.status().unwrap_or_default().to_string();
    assert!(
        status.starts_with("watching 1 root"),
        "READY=1 comes with a STATUS= line saying what is watched: {:?}",
        ready.text
    );
    let before_ready: Vec<Notice> = socket
        .notices()
        .into_iter()
        .filter(|n| n.at < ready.at)
        .collect();
    assert!(
        before_ready
            .iter()
            .any(|n| n.status().is_some_and(|s| s.starts_with("starting"))),
        "a STATUS=starting... line before READY=1: {before_ready:?}"
    );
    assert!(
        before_ready.iter().all(|n| !n.has("WATCHDOG=1")),
        "watchdog pings only once ready (systemd arms the watchdog then): {before_ready:?}"
    );

    // The watchdog's period: half of WATCHDOG_USEC, never as long as WATCHDOG_USEC. Seven
    // pings (six gaps) at a second each; waited for, not counted after a fixed sleep (a
    // loaded machine may start the ticks late). The gaps are measured between the kernel's
    // arrival stamps, so they are the daemon's, not the reader thread's.
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    let pings = loop {
        let pings = socket.pings();
        if pings.len() >= 7 {
            break pings;
        }
        assert!(
            Instant::now() < deadline,
            "only {} WATCHDOG=1 within {ATTACH_TIMEOUT:?}: {pings:?}",
            pings.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let gaps: Vec<f64> = pings
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    eprintln!("watchdog intervals: {gaps:.3?}");
    let limit = WATCHDOG_USEC as f64 / 1e6;
    assert!(
        gaps.iter().all(|&g| g < limit && g > limit / 4.0),
        "WATCHDOG=1 every ~{} s, never a gap of WATCHDOG_USEC ({limit} s): {gaps:.3?}",
        limit / 2.0
    );

    // A hung event loop: its thread alone is held; the writer thread and the rest run on. The
    // pings stop, and come back once it runs again.
    let (main_tid, others) = main_thread_and_others(daemon.pid());
    assert!(
        others > 0,
        "the daemon has other threads besides its event loop"
    );
    let held_at = Instant::now();
    let held = HeldThread::hold(main_tid);
    std::thread::sleep(Duration::from_secs(5));
    let released_at = Instant::now();
    drop(held);
    let during: Vec<Instant> = socket
        .pings()
        .into_iter()
        // Stamped when they reached the socket, so a ping sent just before the hold is before
        // `held_at`; a second of margin anyway (four of the five held seconds are checked).
        .filter(|&t| t > held_at + Duration::from_secs(1) && t < released_at)
        .collect();
    assert!(
        during.is_empty(),
        "WATCHDOG=1 went on while the event loop was held: {} pings",
        during.len()
    );
    assert!(
        socket
            .wait_for_ping_after(released_at, ATTACH_TIMEOUT)
            .is_some(),
        "the pings did not resume once the event loop ran again"
    );

    // SIGTERM: STOPPING=1 before the exit.
    let term_at = Instant::now();
    daemon.signal(libc::SIGTERM);
    let pid = daemon.pid();
    let (status, stderr) = daemon.wait();
    assert!(
        status.success(),
        "ctrwatch exited with {status:?}:\n{stderr}"
    );
    // Sent before the exit, so queued on the socket already; the reader thread may take a
    // while to get to it on a loaded machine.
    let stopping = socket
        .wait_for("STOPPING=1", STOP_TIMEOUT)
        .unwrap_or_else(|| panic!("no STOPPING=1 after SIGTERM: {:?}", socket.notices()));
    // After the signal; before the exit is proven by its sender (below: the daemon's pid, and
    // a process sends nothing once it has exited), not by when the reader thread read it.
    assert!(stopping.seen >= term_at);
    for n in socket.notices() {
        assert_eq!(
            n.pid,
            Some(pid),
            "a datagram not from the main process (NotifyAccess=main ignores it): {n:?}"
        );
    }

    // The file made right after READY=1 is in the history.
    let (code, out, err) = ctrwatch(&[
        OsStr::new("query"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ]);
    assert_eq!(code, 0, "query: {err}");
    let want = probe.to_string_lossy();
    assert!(
        json_lines(&out)
            .iter()
            .any(|v| s(v, "path") == want && s(v, "op") == "create"),
        "the create made at READY=1 was not captured:\n{out}"
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// An abstract NOTIFY_SOCKET (`@name`) is reached; WATCHDOG_PID naming another process means
/// the watchdog is not ours to feed. `watch` speaks the protocol too.
#[test]
fn notify_abstract_socket_and_someone_elses_watchdog() {
    require_root();
    let base = temp_dir("notify-abstract");
    let socket = NotifySocket::abstract_named("abstract");
    let daemon = Daemon::spawn(
        &[OsStr::new("watch"), OsStr::new("--root"), base.as_os_str()],
        &[
            ("NOTIFY_SOCKET", socket.address.as_os_str()),
            ("WATCHDOG_USEC", OsStr::new("1000000")),
            ("WATCHDOG_PID", OsStr::new("1")),
        ],
        None,
    );
    let ready = socket.wait_for("READY=1", ATTACH_TIMEOUT);
    assert!(
        ready.is_some(),
        "no READY=1 on the abstract socket {:?}; stderr:\n{}",
        socket.address,
        daemon.stderr()
    );
    // Three periods of the watchdog the daemon must not feed; then the pings are looked for
    // over the whole run, once STOPPING=1 (its last datagram, read in order) is in.
    std::thread::sleep(Duration::from_secs(3));
    daemon.signal(libc::SIGTERM);
    let (status, stderr) = daemon.wait();
    assert!(status.success(), "{status:?}:\n{stderr}");
    assert!(
        socket.wait_for("STOPPING=1", STOP_TIMEOUT).is_some(),
        "no STOPPING=1 after SIGTERM: {:?}",
        socket.notices()
    );
    assert!(
        socket.pings().is_empty(),
        "WATCHDOG=1 sent although WATCHDOG_PID names another process"
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// A pipe for stderr and the JOURNAL_STREAM value naming it (st_dev:st_ino, both ends share
/// the inode), as systemd sets it when stderr is connected to the journal.
fn journal_pipe() -> ((OwnedFd, OwnedFd), String) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds, which we own from here on.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds from pipe2.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(write.as_raw_fd(), &mut st) }, 0);
    ((read, write), format!("{}:{}", st.st_dev, st.st_ino))
}

/// With stderr on the journal, every line starts with its sd-daemon priority and carries no
/// timestamp (the journal adds its own): info <6>, warning <4>, error <3>. A JOURNAL_STREAM
/// that names another file (stderr redirected since) keeps the usual format.
#[test]
fn log_lines_carry_journal_priorities() {
    require_root();
    let base = temp_dir("journal");
    let root = base.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let store = base.join("store/events.db");
    let (pipe, stream) = journal_pipe();
    // A configuration whose reload changes a restart-only key: a warning.
    let config = base.join("ctrwatch.toml");
    // (`[watch] ring_buffer_mb` is one; `[store] retention_days` was, until reloads applied it.)
    std::fs::write(&config, "[watch]\nring_buffer_mb = 16\n").unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut args = run_args(&root, &store);
    args.extend([OsStr::new("--config"), config.as_os_str()]);
    let daemon = Daemon::spawn(
        &args,
        &[("JOURNAL_STREAM", OsStr::new(&stream))],
        Some(pipe),
    );
    daemon.wait_line("ctrwatch: watching", ATTACH_TIMEOUT);
    std::fs::write(&config, "[watch]\nring_buffer_mb = 32\n").unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_line("takes effect at the next start", ATTACH_TIMEOUT);
    daemon.signal(libc::SIGTERM);
    let (status, stderr) = daemon.wait();
    assert!(status.success(), "{status:?}:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let prio = l
            .strip_prefix('<')
            .and_then(|r| r.split_once('>'))
            .and_then(|(n, _)| n.parse::<u8>().ok());
        assert!(
            prio.is_some_and(|p| p <= 7),
            "a line without an sd-daemon priority prefix: {l:?}\nall:\n{stderr}"
        );
        assert!(
            !has_timestamp(l),
            "a journal line with its own timestamp: {l:?}"
        );
    }
    let with = |what: &str| {
        lines
            .iter()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line with {what:?}:\n{stderr}"))
            .to_string()
    };
    assert!(with("ctrwatch: watching").starts_with("<6>"), "{stderr}");
    assert!(with("storing history in").starts_with("<6>"), "{stderr}");
    assert!(with("received SIGHUP").starts_with("<6>"), "{stderr}");
    assert!(
        with("takes effect at the next start").starts_with("<4>"),
        "{stderr}"
    );

    // An error that ends it (a store directory others can write) is <3>.
    let open = base.join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let bad_store = open.join("events.db");
    let (pipe, stream) = journal_pipe();
    let failing = Daemon::spawn(
        &run_args(&root, &bad_store),
        &[("JOURNAL_STREAM", OsStr::new(&stream))],
        Some(pipe),
    );
    let (status, stderr) = failing.wait();
    assert!(
        !status.success(),
        "a store directory writable by others is refused"
    );
    let error = stderr
        .lines()
        .find(|l| l.contains("ctrwatch: error"))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(
        error.starts_with("<3>"),
        "the final error is <3>: {error:?}"
    );

    // JOURNAL_STREAM naming another file: the usual format, timestamps and no prefixes.
    let (pipe, _) = journal_pipe();
    let (_, other) = journal_pipe();
    let plain = Daemon::spawn(
        &run_args(&root, &bad_store),
        &[("JOURNAL_STREAM", OsStr::new(&other))],
        Some(pipe),
    );
    let (_, stderr) = plain.wait();
    assert!(
        stderr.lines().all(|l| !l.starts_with('<')),
        "sd-daemon prefixes although stderr is not the journal stream:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// `2026-05-20T10:11:12` somewhere in the line.
fn has_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.windows(19).any(|w| {
        w[..4].iter().all(u8::is_ascii_digit)
            && w[4] == b'-'
            && w[7] == b'-'
            && w[10] == b'T'
            && w[13] == b':'
            && w[16] == b':'
    })
}
