//! The previous build of ctrwatch, for the upgrade test: the commit named in
//! xtask/previous-build.txt, extracted with `git archive` and built in a target directory of its
//! own (target/previous/), so that it never replaces this build's target/debug/ctrwatch.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, cmd, target_dir, workspace_root};

/// Where the commit is named.
const SPEC: &str = "xtask/previous-build.txt";

/// The commit named in [`SPEC`]: its first line that is not a comment.
fn commit() -> Result<String> {
    let path = workspace_root().join(SPEC);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let commit = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .with_context(|| format!("{} names no commit", path.display()))?;
    if commit.len() < 7 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{}: {commit:?} is not a commit id", path.display());
    }
    Ok(commit.to_string())
}

/// Whether this clone has `commit`.
fn has_commit(commit: &str) -> Result<bool> {
    Ok(Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .stderr(Stdio::null())
        .status()
        .context("running git")?
        .success())
}

/// Whether this clone is shallow (`git clone --depth N`).
fn is_shallow() -> bool {
    Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["rev-parse", "--is-shallow-repository"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
}

/// Builds the previous build's debug `ctrwatch` and returns its path. Fails, saying why, when
/// the commit is neither in this clone nor fetchable from its origin (a shallow clone is
/// deepened: the test needs the repository's history).
pub fn build() -> Result<PathBuf> {
    let commit = commit()?;
    let dir = target_dir().join("previous");
    let src = dir.join("src");
    let stamp = src.join(".ctrwatch-commit");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(commit.as_str()) {
        if !has_commit(&commit)? && is_shallow() {
            // A shallow clone (a CI that clones with --depth): fetch the commit from where the
            // clone came from, then, failing that, the whole history.
            eprintln!("previous build: {commit} is not in this shallow clone; fetching it");
            let fetch = |args: &[&str]| {
                let _ = cmd::run(
                    Command::new("git")
                        .arg("-C")
                        .arg(workspace_root())
                        .args(args),
                );
            };
            fetch(&["fetch", "--quiet", "origin", &commit]);
            if !has_commit(&commit)? {
                fetch(&["fetch", "--quiet", "--unshallow", "origin"]);
            }
        }
        if !has_commit(&commit)? {
            bail!(
                "commit {commit} ({SPEC}) is not in this clone, and could not be fetched: the \
                 upgrade test builds it, so it needs the repository's history (a full clone, or a \
                 shallow one whose origin can be fetched from; not a tarball)"
            );
        }
        if src.exists() {
            fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
        }
        fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
        let tar = dir.join("src.tar");
        cmd::run(
            Command::new("git")
                .arg("-C")
                .arg(workspace_root())
                .args(["archive", "--format=tar", "-o"])
                .arg(&tar)
                .arg(&commit),
        )?;
        cmd::run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&src))?;
        fs::remove_file(&tar).with_context(|| format!("removing {}", tar.display()))?;
        fs::write(&stamp, &commit).with_context(|| format!("writing {}", stamp.display()))?;
    }
    let target = dir.join("target");
    let mut build = cargo(&["build", "-p", "watcher", "--bin", "ctrwatch"]);
    build.current_dir(&src).env("CARGO_TARGET_DIR", &target);
    cmd::run(&mut build).with_context(|| format!("building ctrwatch at {commit} ({SPEC})"))?;
    let bin = target.join("debug/ctrwatch");
    if !bin.exists() {
        bail!("the build of {commit} left no {}", bin.display());
    }
    Ok(bin)
}
