//! Running child commands with useful errors.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// The command line as a person would type it, for messages.
pub fn display(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .filter(|kv| !kv.starts_with("PATH="))
        .collect();
    parts.push(program_name(cmd.get_program()));
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// `cargo` rather than `/root/.rustup/toolchains/…/bin/cargo`.
fn program_name(program: &OsStr) -> String {
    let path = Path::new(program);
    match path.file_name() {
        Some(name) if path.is_absolute() && name == "cargo" => "cargo".into(),
        _ => program.to_string_lossy().into_owned(),
    }
}

/// Announces and runs `cmd` with inherited stdio; fails unless it exits with 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    eprintln!("+ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Announces and runs `cmd` like [`run`], but gives it at most `limit`: a command that talks
/// to the network (mmdebstrap, `apt-get update`) can stall on a mirror that stops answering,
/// and would hang the whole run (CI's included) forever. At the limit the command and
/// everything it started (its own process group) are killed, and the error says so.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Result<()> {
    let line = display(cmd);
    eprintln!("+ {line}");
    // Its own process group: killed with its children (apt's methods, dpkg).
    let mut child = cmd
        .process_group(0)
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{line}`"))?
        {
            if !status.success() {
                bail!("`{line}` failed ({status})");
            }
            return Ok(());
        }
        if start.elapsed() >= limit {
            let pgid = libc::pid_t::try_from(child.id()).unwrap_or(0);
            if pgid > 0 {
                // SAFETY: kill(2) with a negative pid signals the process group the child
                // leads (process_group(0) above); no memory is involved.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{line}` did not finish within {} (a stalled mirror or network?): killed",
                humantime::format_duration(limit)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `cmd` quietly and returns its stdout; fails, with its stderr, unless it exits with 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` quietly and returns its stdout as bytes; fails, with its stderr, unless it exits
/// with 0.
pub fn output_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let line = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_limit_is_killed_with_its_children() {
        let pid_file = std::env::temp_dir().join(format!("xtask-timeout-{}", std::process::id()));
        let start = Instant::now();
        // The shell's child (the sleep) is in its process group: both go.
        let err = run_with_timeout(
            Command::new("sh")
                .arg("-c")
                .arg("sleep 300 & echo $! > \"$0\"; wait")
                .arg(&pid_file),
            Duration::from_millis(500),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("did not finish within 500ms"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
        let sleep_pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
        let _ = std::fs::remove_file(&pid_file);
        let stat = format!("/proc/{}/stat", sleep_pid.trim());
        // Gone, or a zombie until its new parent reaps it.
        let alive = || {
            std::fs::read_to_string(&stat)
                .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.starts_with(" Z")))
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !sleep_pid.trim().is_empty() && !alive(),
            "the sleep ({sleep_pid:?}) still runs"
        );
    }

    #[test]
    fn a_command_within_its_limit_reports_its_status() {
        assert!(run_with_timeout(&mut Command::new("true"), Duration::from_secs(60)).is_ok());
        let err = run_with_timeout(&mut Command::new("false"), Duration::from_secs(60))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("failed"), "{err}");
    }
}
