//! An auditd log holding the same operations as the benchmark's synthetic events, in the
//! format Debian's auditd writes, so `ausearch -f PATH` can be timed next to the store on
//! the same history (docs/store.md, "Measurements").
//!
//! Writing millions of real syscalls under auditd is far too slow (~16 000 records/s), so
//! the records are synthesised from the events, field for field in the layout of records
//! captured from auditd for real operations ([`CAPTURED`]); a test checks the layout
//! against those, and the benchmark checks that `ausearch -f` finds a synthesised event as
//! it finds a captured one.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ctrwatch_event::{FileEvent, Op};

/// Records captured from Debian 12's auditd 3.0.9 (ENRICHED log format) with
/// `auditctl -w /tmp/ctrwatch-auditcap -p wa -k ctrwatch-bench`, for a Python script that
/// created, truncated, chmod-ed, setxattr-ed, renamed away and back, made a directory
/// beside, then unlinked [`CAPTURED_PATH`] (the unlink names it relative to the cwd), plus
/// the rule changes themselves. How to capture them again: docs/store.md.
pub(crate) const CAPTURED: &str = include_str!("auditd_sample.log");
/// The file the captured records are about.
pub(crate) const CAPTURED_PATH: &str = "/tmp/ctrwatch-auditcap/snapshots/5/fs/usr/lib/libjq.so.1";
/// The audit rule key of the captured and the synthesised records.
pub(crate) const KEY: &str = "ctrwatch-bench";
/// auditd's separator between the raw fields and the ones it adds (ENRICHED format).
const GS: char = '\u{1d}';
/// First serial number of the synthesised records.
const FIRST_SERIAL: u64 = 1000;

/// A string field as the kernel logs it (`audit_log_untrustedstring`): quoted, or in hex
/// when it holds a quote, a space, a control or a non-ASCII byte.
fn untrusted(out: &mut String, b: &[u8]) {
    if b.iter().any(|&c| c == b'"' || !(0x21..=0x7e).contains(&c)) {
        for c in b {
            let _ = write!(out, "{c:02X}");
        }
    } else {
        out.push('"');
        // Checked above: printable ASCII.
        out.push_str(&String::from_utf8_lossy(b));
        out.push('"');
    }
}

fn user(id: u32) -> String {
    if id == 0 {
        "root".into()
    } else {
        format!("unknown({id})")
    }
}

/// The syscall auditd would have recorded for an op: (x86_64 number, name).
fn syscall_of(op: Op) -> (u32, &'static str) {
    match op {
        Op::Create | Op::OpenWrite | Op::Modify => (257, "openat"),
        Op::Unlink | Op::Rmdir => (263, "unlinkat"),
        Op::Rename => (82, "rename"),
        Op::Mkdir => (83, "mkdir"),
        Op::Chmod => (90, "chmod"),
        Op::Chown => (92, "chown"),
        Op::Setxattr => (188, "setxattr"),
        Op::Truncate => (76, "truncate"),
        Op::Mknod => (133, "mknod"),
        Op::Link => (86, "link"),
        Op::Symlink => (88, "symlink"),
        _ => (257, "openat"),
    }
}

/// A made-up inode number, the same for a path in every run.
fn inode_of(path: &[u8]) -> u64 {
    10_000_000 + xxhash_rust::xxh3::xxh3_64(path) % 50_000_000
}

/// The directory of `path`, with its trailing slash ("/" for a name without one).
fn parent_of(path: &[u8]) -> Vec<u8> {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => path[..=i].to_vec(),
        None => b"/".to_vec(),
    }
}

/// Appends the records auditd writes for one event: SYSCALL, CWD, one PATH per name the
/// syscall resolved (parents included, as the kernel does), PROCTITLE. auditd writes no EOE
/// record to its log (it uses it to close the event), so neither does this.
pub(crate) fn format_event(out: &mut String, ev: &FileEvent, serial: u64) {
    let ns = ev.time_ns;
    let stamp = format!(
        "audit({}.{:03}:{serial})",
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) / 1_000_000
    );
    let (nr, name) = syscall_of(ev.op);
    let path = &ev.path.0;
    let file_mode = if ev.op == Op::Mkdir {
        "040755"
    } else {
        "0100644"
    };
    // (name, nametype, mode, inode)
    let mut items: Vec<(Vec<u8>, &str, &str, u64)> = Vec::new();
    let parent = parent_of(path);
    let pino = inode_of(&parent);
    match ev.op {
        Op::Create | Op::Mkdir | Op::Mknod | Op::Link | Op::Symlink => {
            items.push((parent, "PARENT", "040755", pino));
            items.push((path.clone(), "CREATE", file_mode, inode_of(path)));
        }
        Op::Unlink | Op::Rmdir => {
            items.push((parent, "PARENT", "040755", pino));
            items.push((path.clone(), "DELETE", file_mode, inode_of(path)));
        }
        Op::Rename => {
            let new = ev.new_path.as_ref().map_or_else(Vec::new, |p| p.0.clone());
            let new_parent = parent_of(&new);
            let ino = inode_of(path);
            items.push((parent, "PARENT", "040755", pino));
            items.push((
                new_parent.clone(),
                "PARENT",
                "040755",
                inode_of(&new_parent),
            ));
            items.push((path.clone(), "DELETE", file_mode, ino));
            items.push((new, "CREATE", file_mode, ino));
        }
        _ => items.push((path.clone(), "NORMAL", file_mode, inode_of(path))),
    }
    let ok = ev.result.is_ok();
    let exit = if ok {
        if nr == 257 { 3 } else { 0 }
    } else {
        -i64::from(ev.result.errno().unwrap_or(2))
    };
    let p = &ev.process;
    let (uid, gid) = (user(p.uid), user(p.gid));
    let _ = write!(
        out,
        "type=SYSCALL msg={stamp}: arch=c000003e syscall={nr} success={} exit={exit} \
         a0=ffffff9c a1=7f194418be30 a2={} a3=1a4 items={} ppid={} pid={} auid=4294967295 \
         uid={} gid={} euid={} suid={} fsuid={} egid={} sgid={} fsgid={} tty=(none) \
         ses=4294967295 comm=",
        if ok { "yes" } else { "no" },
        if nr == 257 { "80241" } else { "0" },
        items.len(),
        p.ppid,
        p.pid,
        p.uid,
        p.gid,
        p.uid,
        p.uid,
        p.uid,
        p.gid,
        p.gid,
        p.gid,
    );
    untrusted(out, p.comm.as_bytes());
    out.push_str(" exe=");
    untrusted(out, p.exe.as_deref().unwrap_or("(null)").as_bytes());
    let _ = writeln!(
        out,
        " key=\"{KEY}\"{GS}ARCH=x86_64 SYSCALL={name} AUID=\"unset\" UID=\"{uid}\" \
         GID=\"{gid}\" EUID=\"{uid}\" SUID=\"{uid}\" FSUID=\"{uid}\" EGID=\"{gid}\" \
         SGID=\"{gid}\" FSGID=\"{gid}\""
    );
    let _ = writeln!(out, "type=CWD msg={stamp}: cwd=\"/\"");
    for (i, (name, nametype, mode, inode)) in items.iter().enumerate() {
        let _ = write!(out, "type=PATH msg={stamp}: item={i} name=");
        untrusted(out, name);
        let _ = writeln!(
            out,
            " inode={inode} dev=fe:00 mode={mode} ouid=0 ogid=0 rdev=00:00 nametype={nametype} \
             cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0{GS}OUID=\"root\" OGID=\"root\""
        );
    }
    let _ = write!(out, "type=PROCTITLE msg={stamp}: proctitle=");
    untrusted(out, p.cmdline.join("\0").as_bytes());
    out.push('\n');
}

/// Writes the log for `events` to `path`, and to `sample` the records of the first
/// `sample_events` events plus those of every event `watch` says yes to (a log small enough
/// for ausearch to answer quickly, for the correctness check); (bytes of the full log,
/// serial and time of each watched event).
pub(crate) fn write_log(
    path: &Path,
    sample: &Path,
    sample_events: usize,
    events: impl Iterator<Item = FileEvent>,
    mut watch: impl FnMut(&FileEvent) -> bool,
) -> io::Result<(u64, Vec<(i64, u64)>)> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut s = BufWriter::new(std::fs::File::create(sample)?);
    let mut buf = String::with_capacity(4096);
    let mut bytes = 0u64;
    let mut watched = Vec::new();
    for (i, ev) in events.enumerate() {
        let serial = FIRST_SERIAL + i as u64;
        buf.clear();
        format_event(&mut buf, &ev, serial);
        w.write_all(buf.as_bytes())?;
        bytes += buf.len() as u64;
        let watch = watch(&ev);
        if watch {
            watched.push((ev.time_ns, serial));
        }
        if watch || i < sample_events {
            s.write_all(buf.as_bytes())?;
        }
    }
    w.flush()?;
    s.flush()?;
    Ok((bytes, watched))
}

/// One `ausearch` run: wall time (ms) and the serial numbers of the events it printed.
pub(crate) struct Search {
    pub ms: f64,
    pub serials: HashSet<u64>,
    /// Killed at the time limit: `ms` is the limit, `serials` what it printed until then.
    pub timed_out: bool,
}

/// Runs `ausearch -if LOG -f PATH [EXTRA…]` (the whole output is read, as a user piping
/// it somewhere would). No match is not an error (ausearch exits 1 then).
/// Killed after `limit` (ausearch's time grows with the square of the events per second
/// of log: see docs/store.md).
pub(crate) fn ausearch(
    log: &Path,
    file: &str,
    extra: &[&str],
    limit: Duration,
) -> io::Result<Search> {
    let mut cmd = Command::new("ausearch");
    cmd.arg("-if").arg(log).arg("-f").arg(file).args(extra);
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    // Read on a thread so the limit can be enforced while ausearch prints nothing.
    let reader = child.stdout.take().map(|out| {
        std::thread::spawn(move || {
            let mut serials = HashSet::new();
            for line in BufReader::with_capacity(1 << 20, out).split(b'\n') {
                let Ok(line) = line else { break };
                if line.starts_with(b"type=SYSCALL")
                    && let Some(s) = serial_of(&line)
                {
                    serials.insert(s);
                }
            }
            serials
        })
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if t.elapsed() >= limit {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let serials = reader
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();
    if let Some(st) = status
        && !st.success()
        && !serials.is_empty()
    {
        return Err(io::Error::other(format!("ausearch failed: {st}")));
    }
    Ok(Search {
        ms: if timed_out {
            limit.as_secs_f64() * 1000.0
        } else {
            ms
        },
        serials,
        timed_out,
    })
}

/// The serial number in `msg=audit(SEC.MS:SERIAL):`.
pub(crate) fn serial_of(line: &[u8]) -> Option<u64> {
    let start = line.windows(10).position(|w| w == b"msg=audit(")? + 10;
    let rest = &line[start..];
    let colon = rest.iter().position(|&c| c == b':')?;
    let close = rest.iter().position(|&c| c == b')')?;
    std::str::from_utf8(rest.get(colon + 1..close)?)
        .ok()?
        .parse()
        .ok()
}

/// Whether `ausearch` can be run here.
pub(crate) fn available() -> bool {
    Command::new("ausearch")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}
