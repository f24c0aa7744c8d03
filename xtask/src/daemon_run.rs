//! What the daemon benchmarks (`bench rss`, `bench startup`) share: a temporary directory, a
//! `ctrwatch run` started with `NOTIFY_SOCKET` pointing at a socket of our own and waited for
//! until READY=1, stopped when dropped, and the rewrite of a generated part of a doc.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// Where a start is given up on.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// A temporary directory (or pin directory: bpffs refuses names with a dot), removed when
/// dropped.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `ctrwatch run`, stopped (SIGTERM, then SIGKILL after 60 s) when dropped.
pub struct Daemon {
    child: Child,
    /// Spawn to READY=1.
    pub ready_after: Duration,
}

impl Daemon {
    /// Spawns `cmd` (a `ctrwatch run …`) with its stderr to `log` and `NOTIFY_SOCKET` at a
    /// socket in `dir`, and waits for READY=1. A daemon that ends first, or is not ready
    /// within [`READY_TIMEOUT`], is an error that carries its log.
    pub fn start_ready(mut cmd: Command, dir: &Path, log: &Path) -> Result<Daemon> {
        let notify_path = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path)
            .with_context(|| format!("binding {}", notify_path.display()))?;
        notify.set_read_timeout(Some(Duration::from_millis(20)))?;
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
        let mut daemon = Daemon {
            child,
            ready_after: Duration::ZERO,
        };
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!("ctrwatch ended before it was ready ({status}):\n{text}");
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("ctrwatch not ready after {READY_TIMEOUT:?}");
            }
            if let Ok(n) = notify.recv(&mut buf)
                && buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1")
            {
                break;
            }
        }
        daemon.ready_after = started.elapsed();
        Ok(daemon)
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL if it has not ended within 60 s.
    pub fn stop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Replaces what lies between the markers `begin` and `end` in the doc at `path` by `report`.
pub fn write_generated(path: &Path, begin: &str, end: &str, report: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        bail!("{} lacks the markers {begin} and {end}", path.display());
    };
    if e < b {
        bail!(
            "{}: the markers {begin} and {end} are out of order",
            path.display()
        );
    }
    let mut out = String::with_capacity(text.len() + report.len());
    out.push_str(&text[..b + begin.len()]);
    out.push_str("\n\n");
    out.push_str(report.trim_end());
    out.push_str("\n\n");
    out.push_str(&text[e..]);
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_part_is_replaced_and_the_rest_kept() -> Result<()> {
        let dir = TempDir(std::env::temp_dir().join(format!("xtask-gen-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0)?;
        let doc = dir.0.join("doc.md");
        std::fs::write(&doc, "intro\n<!-- b -->\nold\n<!-- e -->\nafter\n")?;
        write_generated(&doc, "<!-- b -->", "<!-- e -->", "new\n")?;
        assert_eq!(
            std::fs::read_to_string(&doc)?,
            "intro\n<!-- b -->\n\nnew\n\n<!-- e -->\nafter\n"
        );
        std::fs::write(&doc, "<!-- e --> <!-- b -->")?;
        assert!(write_generated(&doc, "<!-- b -->", "<!-- e -->", "x").is_err());
        Ok(())
    }
}
