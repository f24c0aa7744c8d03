//! Who did it: the acting process as the event carries it.

use serde::{Deserialize, Serialize};

/// The acting process and its parent chain, as known when the event happened (the process
/// may be long gone when the event is read).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct ProcessView {
    /// Thread-group id (what `ps` calls the pid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Parent's pid.
    pub ppid: u32,
    /// The thread's name (15 bytes at most; a script's name for scripts).
    pub comm: String,
    /// The executable (`/proc/PID/exe`: an interpreter for scripts).
    pub exe: Option<String>,
    /// The command line, secrets masked at capture (docs/operations.md).
    pub cmdline: Vec<String>,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// The systemd unit of its cgroup.
    pub unit: Option<String>,
    /// The container of its cgroup.
    pub container_id: Option<String>,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// Mount namespace inode.
    pub mnt_ns: u32,
    /// Parent, grandparent, ... up to PID 1.
    pub ancestors: Vec<AncestorView>,
}

/// One process up the parent chain.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct AncestorView {
    /// Its pid.
    pub pid: u32,
    /// Its name.
    pub comm: String,
    /// Its executable.
    pub exe: Option<String>,
}

/// Interpreters whose first non-option argument is the script that really runs.
const INTERPRETERS: &[&str] = &["bash", "sh", "dash", "zsh", "ash", "ksh", "busybox"];

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Whether an executable is a shell or script interpreter.
pub fn is_interpreter(exe: &str) -> bool {
    let base = basename(exe);
    INTERPRETERS.contains(&base)
        || base.starts_with("python")
        || base.starts_with("perl")
        || base.starts_with("ruby")
        || base.starts_with("node")
}

impl ProcessView {
    /// What ran, for people: the command line with its arguments (so a script shows as
    /// `bash /opt/cleanup.sh --all`, not just `bash`), else the exe, else the comm; escaped,
    /// arguments with spaces or quotes quoted (`'a b'`, `"rm -f 'x y'"`, `"say \"hi\" 'x'"`),
    /// cut to about `max_chars` characters with `…`.
    pub fn command_summary(&self, max_chars: usize) -> String {
        let mut out = if !self.cmdline.is_empty() {
            self.cmdline
                .iter()
                .map(|a| {
                    let e = crate::text::escape(a);
                    if e.contains('\'') {
                        // `sh -c "rm -f 'x y'"`: the quotes inside stay readable.
                        format!("\"{}\"", e.replace('"', "\\\""))
                    } else if e.is_empty() || e.contains([' ', '"']) {
                        format!("'{e}'")
                    } else {
                        e
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        } else if let Some(exe) = &self.exe {
            crate::text::escape(exe)
        } else {
            crate::text::escape(&self.comm)
        };
        if out.chars().count() > max_chars {
            out = out.chars().take(max_chars.saturating_sub(1)).collect();
            out.push('…');
        }
        out
    }

    /// The parent chain as `comm(pid)<comm(pid)<...`, escaped; `-` when unknown.
    pub fn parents_summary(&self) -> String {
        if self.ancestors.is_empty() {
            return "-".to_owned();
        }
        self.ancestors
            .iter()
            .map(|a| format!("{}({})", crate::text::escape(&a.comm), a.pid))
            .collect::<Vec<_>>()
            .join("<")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_show_the_script_and_escape() {
        let p = ProcessView {
            comm: "cleanup.sh".into(),
            exe: Some("/usr/bin/bash".into()),
            cmdline: vec![
                "bash".into(),
                "/opt/cleanup.sh".into(),
                "a b".into(),
                "\x1b".into(),
            ],
            ancestors: vec![AncestorView {
                pid: 1,
                comm: "systemd".into(),
                exe: None,
            }],
            ..Default::default()
        };
        assert_eq!(p.command_summary(80), "bash /opt/cleanup.sh 'a b' \\x1b");
        assert_eq!(p.command_summary(8), "bash /o…");
        let quoted = ProcessView {
            cmdline: vec![
                "sh".into(),
                "-c".into(),
                "rm -f 'x y'".into(),
                "say \"hi\"".into(),
                "\"it's\"".into(),
                String::new(),
            ],
            ..Default::default()
        };
        assert_eq!(
            quoted.command_summary(80),
            r#"sh -c "rm -f 'x y'" 'say "hi"' "\"it's\"" ''"#
        );
        assert_eq!(p.parents_summary(), "systemd(1)");
        assert!(is_interpreter("/usr/bin/python3.11"));
        assert!(!is_interpreter("/usr/bin/rm"));
        let bare = ProcessView {
            comm: "kworker".into(),
            ..Default::default()
        };
        assert_eq!(bare.command_summary(80), "kworker");
        assert_eq!(bare.parents_summary(), "-");
    }
}
