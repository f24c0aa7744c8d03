//! What systemd is about to do with a unit, asked from its `ExecStopPost=` command: the one
//! place where an explicit stop and a restart can be told apart. systemd sends the daemon the
//! same SIGTERM for both; but while the unit's stop commands run, a `systemctl stop` (and a
//! system shutdown) has a job of type `stop` queued on the unit, `systemctl restart` (also
//! `try-restart`, `reload-or-restart`, the package's upgrade restart) one of type `restart`,
//! and `Restart=` after a crash or an exit nobody asked for none at all (systemd queues the
//! start only once `RestartSec=` has passed). `ctrwatch unpin --if-stopping UNIT` removes the
//! pins only for `stop` (docs/operations.md, "Stop, restart, uninstall").
//!
//! The job is read with `systemctl list-jobs`: systemd's manager answers it from its event
//! loop while the stop commands run (it does not wait for them), and the wait is bounded all
//! the same.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `systemctl list-jobs` may take before it is killed (it answers in milliseconds).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where systemctl is looked for, in this order (merged-/usr systems have both). Never on
/// `PATH`: `ExecStopPost=` and a root shell alike must not run whatever a `systemctl` earlier
/// on the search path is.
pub const SYSTEMCTL_PATHS: [&str; 2] = ["/usr/bin/systemctl", "/bin/systemctl"];

/// The first of [`SYSTEMCTL_PATHS`] that is an executable file.
fn systemctl() -> Result<&'static std::path::Path, JobQueryError> {
    use std::os::unix::fs::PermissionsExt as _;
    SYSTEMCTL_PATHS
        .iter()
        .map(std::path::Path::new)
        .find(|path| {
            std::fs::metadata(path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or(JobQueryError::NoSystemctl)
}

/// The job queued on a unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnitJob {
    /// No job: nothing asked for this stop (a crash, an exit, the watchdog; with `Restart=`
    /// a start follows after `RestartSec=`).
    None,
    /// `systemctl stop`, a shutdown, a conflict: the unit is to stay stopped.
    Stop,
    /// `systemctl restart` and its kin: a start follows this stop.
    Restart,
    /// Any other job type (`start`, `reload`, ...), as systemctl printed it.
    Other(String),
}

impl UnitJob {
    /// Whether the unit is to stay stopped: only a `stop` job says so.
    pub fn stays_stopped(&self) -> bool {
        matches!(self, UnitJob::Stop)
    }
}

/// Why the job could not be read.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant's #[error] message says what it is"
)]
pub enum JobQueryError {
    #[error("no systemctl at {} (is systemd installed?)", SYSTEMCTL_PATHS.join(" or "))]
    NoSystemctl,
    #[error("running systemctl: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("systemctl list-jobs did not answer within {0:?} (killed)")]
    Timeout(Duration),
    #[error("systemctl list-jobs failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error("systemctl list-jobs printed a line that is not JOB UNIT TYPE STATE: {0}")]
    Unparsed(String),
    #[error("waiting for systemctl: {0}")]
    Wait(#[source] std::io::Error),
}

/// The job systemd has queued on `unit`, from `systemctl list-jobs UNIT`; waits at most
/// `timeout` for systemctl, then kills it.
pub fn query(unit: &str, timeout: Duration) -> Result<UnitJob, JobQueryError> {
    let mut child = Command::new(systemctl()?)
        .args([
            "list-jobs",
            "--no-legend",
            "--no-pager",
            "--plain",
            "--full",
            "--",
            unit,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(JobQueryError::Spawn)?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(JobQueryError::Wait)? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(JobQueryError::Timeout(timeout));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    // The output is a few lines, far within a pipe's buffer: systemctl has exited having
    // written all of it.
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_end(&mut stdout).map_err(JobQueryError::Wait)?;
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_end(&mut stderr).map_err(JobQueryError::Wait)?;
    }
    if !status.success() {
        return Err(JobQueryError::Failed {
            status: status.to_string(),
            stderr: ctrwatch_event::escape_bytes(&stderr).trim().to_string(),
        });
    }
    parse_list_jobs(&String::from_utf8_lossy(&stdout), unit)
}

/// The job of `unit` in `systemctl list-jobs --no-legend --plain` output: lines of
/// `JOB UNIT TYPE STATE` (a unit has at most one job); "No jobs running." or nothing when
/// there is none.
pub fn parse_list_jobs(output: &str, unit: &str) -> Result<UnitJob, JobQueryError> {
    for line in output.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || line.trim() == "No jobs running." {
            continue;
        }
        let [id, name, kind, _state] = fields[..] else {
            return Err(JobQueryError::Unparsed(ctrwatch_event::escape(line)));
        };
        if id.parse::<u32>().is_err() {
            return Err(JobQueryError::Unparsed(ctrwatch_event::escape(line)));
        }
        if name != unit {
            continue;
        }
        return Ok(match kind {
            "stop" => UnitJob::Stop,
            "restart" | "try-restart" => UnitJob::Restart,
            other => UnitJob::Other(other.to_string()),
        });
    }
    Ok(UnitJob::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_of_the_unit() {
        let unit = "ctrwatch.service";
        let stop = "1234 ctrwatch.service stop running\n";
        assert_eq!(parse_list_jobs(stop, unit).unwrap(), UnitJob::Stop);
        let restart = "88 ctrwatch.service restart running\n";
        assert_eq!(parse_list_jobs(restart, unit).unwrap(), UnitJob::Restart);
        // A shutdown: many stop jobs, ours among them.
        let shutdown = "7 poweroff.target start waiting\n9 containerd.service stop waiting\n\
                        10 ctrwatch.service stop running\n";
        assert_eq!(parse_list_jobs(shutdown, unit).unwrap(), UnitJob::Stop);
        assert_eq!(parse_list_jobs("", unit).unwrap(), UnitJob::None);
        assert_eq!(
            parse_list_jobs("No jobs running.\n", unit).unwrap(),
            UnitJob::None
        );
        assert_eq!(
            parse_list_jobs("3 other.service stop running\n", unit).unwrap(),
            UnitJob::None
        );
        assert_eq!(
            parse_list_jobs("5 ctrwatch.service start waiting\n", unit).unwrap(),
            UnitJob::Other("start".into())
        );
        assert!(!UnitJob::Other("start".into()).stays_stopped());
        assert!(!UnitJob::Restart.stays_stopped());
        assert!(!UnitJob::None.stays_stopped());
        assert!(UnitJob::Stop.stays_stopped());
    }

    #[test]
    fn unexpected_output_is_an_error() {
        assert!(parse_list_jobs("JOB UNIT TYPE STATE extra\n", "ctrwatch.service").is_err());
        assert!(parse_list_jobs("x ctrwatch.service stop running\n", "ctrwatch.service").is_err());
    }
}
