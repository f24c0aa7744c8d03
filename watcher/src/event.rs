//! Enriched events: what an operator reads (one line) and what machines read (one JSON object
//! per line, stable field names).

use std::{
    fmt::Write as _,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

/// One file operation with everything known about who did it.
#[derive(Clone, Debug, Serialize)]
pub struct FileEvent {
    /// Wall-clock time, RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// CLOCK_MONOTONIC nanoseconds (orders events exactly; survives clock steps).
    pub mono_ns: u64,
    pub op: &'static str,
    pub path: PathText,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_path: Option<PathText>,
    /// "ok", or the errno name (e.g. "ENOENT").
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
    /// "major:minor" of the filesystem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// Shared by the events of one thread while its description holds (see `enrich`).
    pub process: Arc<ProcessView>,
    #[serde(flatten)]
    pub details: Details,
}

/// A path as text: the UTF-8 string when it is valid UTF-8; otherwise a display form with
/// `\xNN` escapes and, alongside, the exact bytes in hex, so nothing is lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathText(pub Vec<u8>);

impl PathText {
    pub fn display(&self) -> String {
        escape_bytes(&self.0)
    }
    pub fn is_utf8(&self) -> bool {
        std::str::from_utf8(&self.0).is_ok()
    }
}

impl Serialize for PathText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_str(&escape_bytes(&self.0)),
        }
    }
}

/// Op-specific fields; absent when they do not apply.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Details {
    /// Exact bytes of `path`, hex, only when it is not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_path_hex: Option<String>,
    /// Octal mode requested (create/mkdir/mknod/chmod) or of the inode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Modify: bytes written and write calls, first write time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_write: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xattr: Option<XattrView>,
    /// chown: new owner (absent part = unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_gid: Option<u32>,
    /// mknod: device "major:minor" (0:0 character device = overlay whiteout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rdev: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whiteout: Option<bool>,
    /// Rename: the target name existed and this rename deleted that file (its last link).
    /// Absent when nothing was replaced, and also where it cannot be seen (see
    /// docs/architecture.md: filesystems without a rename-target hook, targets with other
    /// hard links).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overwritten: Option<Overwritten>,
    /// Open flags, e.g. ["write", "create", "truncate"].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub open_flags: Vec<&'static str>,
    /// Notes: "by_fd", "path_truncated", "not_closed", ...
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<&'static str>,
    /// What the path is in containerd's storage, and whether the writer owns it (events under
    /// a containerd root only). Serialized as the top-level `containerd` object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containerd: Option<Box<ContainerdView>>,
}

/// An event's place in containerd's storage (see `containerd::attribution`). Unknown fields
/// are absent.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ContainerdView {
    /// The instance's root.
    pub root: String,
    /// `snapshot`, `snapshot_temp`, `blob`, `ingest`, `metadata`, `tmpmount`, `runtime_state`
    /// or `other`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshotter: Option<String>,
    /// The snapshot directory's id (`snapshots/<id>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<u64>,
    /// The client's key (a chainID for a layer, the container id for a rootfs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_key: Option<String>,
    /// `committed`, `active`, `view`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::containerd::PodInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob_digest: Option<String>,
    /// `layer`, `manifest`, `config`, `index`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob_role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest_ref: Option<String>,
    /// The path inside the layer or container filesystem (`/pause`), or inside the
    /// directory the kind names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathText>,
    /// The mapping comes from metadata that has since changed (e.g. the snapshot was removed).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// `owner`, `foreign` or `container`.
    pub verdict: &'static str,
    pub reason: String,
}

/// The file a rename overwrote.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Overwritten {
    pub inode: u64,
    /// "major:minor" of its filesystem, like the event's `dev`.
    pub dev: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct XattrView {
    pub name: String,
    /// Value as text when it is printable UTF-8 (overlay xattrs only; others are not captured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_hex: Option<String>,
}

/// The acting process.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, Hash)]
pub struct ProcessView {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub unit: Option<String>,
    pub container_id: Option<String>,
    pub cgroup_id: u64,
    pub mnt_ns: u32,
    pub ancestors: Vec<AncestorView>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, Hash)]
pub struct AncestorView {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
}

/// Records the kernel could not deliver in a time window: the history has a gap here.
#[derive(Clone, Debug, Serialize)]
pub struct LossEvent {
    pub time: String,
    pub op: &'static str,
    /// Window start and end (RFC 3339).
    pub from: String,
    pub to: String,
    pub lost: u64,
    /// Per kind: op names, and "exec"/"fork"/"exit".
    pub kinds: std::collections::BTreeMap<&'static str, u64>,
}

/// Bytes as text: printable UTF-8 kept, `\` doubled, control characters and invalid bytes as
/// `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// A path for logs and error messages: [`escape_bytes`] of its bytes, so a name with a
/// newline, an escape sequence or invalid UTF-8 cannot forge or garble output.
pub fn escape_path(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    escape_bytes(path.as_os_str().as_bytes())
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Text of possibly non-UTF-8 bytes for fields that are display-only (exe, argv).
pub fn lossless_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => escape_bytes(bytes),
    }
}

/// Maps CLOCK_MONOTONIC to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime - monotonic, in ns.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Clock {
        let mono = monotonic_ns() as i128;
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Clock {
            offset_ns: real - mono,
        }
    }
    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = (mono_ns as i128 + self.offset_ns).max(0) as u128;
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        humantime::format_rfc3339_nanos(self.wall(mono_ns)).to_string()
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// errno name for the result field.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EDQUOT => "EDQUOT",
        libc::ERANGE => "ERANGE",
        libc::E2BIG => "E2BIG",
        libc::EINTR => "EINTR",
        libc::ENOSYS => "ENOSYS",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

/// `notes` entry of an event whose path the kernel could not build completely (too long,
/// too deep): the path holds [`watcher_common::PATH_GAP`] where parts are missing and is not
/// the path of the file.
pub const NOTE_PATH_TRUNCATED: &str = "path_truncated";
/// The same for `new_path`.
pub const NOTE_NEW_PATH_TRUNCATED: &str = "new_path_truncated";

/// What readable output writes after a path that is truncated (`note` among `notes`): the `…`
/// inside it could be taken for a directory's name.
pub fn truncation_marker<S: AsRef<str>>(notes: &[S], note: &str) -> &'static str {
    if !notes.iter().any(|n| n.as_ref() == note) {
        ""
    } else if note == NOTE_NEW_PATH_TRUNCATED {
        " (new path truncated)"
    } else {
        " (path truncated)"
    }
}

impl FileEvent {
    /// One readable line.
    pub fn human_line(&self) -> String {
        let mut line = format!(
            "{} {:<11} {:<7} {}",
            self.time,
            self.op,
            self.result,
            self.path.display()
        );
        let notes = &self.details.notes;
        line.push_str(truncation_marker(notes, NOTE_PATH_TRUNCATED));
        if let Some(new) = &self.new_path {
            let _ = write!(line, " -> {}", new.display());
            line.push_str(truncation_marker(notes, NOTE_NEW_PATH_TRUNCATED));
        }
        if let Some(o) = &self.details.overwritten {
            let _ = write!(
                line,
                " (replaced the target: inode {} on {})",
                o.inode, o.dev
            );
        }
        if let Some(x) = &self.details.xattr {
            let _ = write!(line, " [{}", escape_bytes(x.name.as_bytes()));
            if let Some(v) = &x.value {
                let _ = write!(line, "={}", escape_bytes(v.as_bytes()));
            }
            line.push(']');
        }
        if let Some(bytes) = self.details.bytes {
            let _ = write!(line, " bytes={bytes}");
        }
        if let Some(size) = self.details.size {
            let _ = write!(line, " size={size}");
        }
        let p = &self.process;
        let _ = write!(
            line,
            " pid={} comm={} exe={} uid={}",
            p.pid,
            escape_bytes(p.comm.as_bytes()),
            p.exe.as_deref().unwrap_or("?"),
            p.uid
        );
        if let Some(unit) = &p.unit {
            let _ = write!(line, " unit={unit}");
        }
        if let Some(c) = &p.container_id {
            let _ = write!(line, " container={}", &c[..c.len().min(12)]);
        }
        if !p.ancestors.is_empty() {
            let chain: Vec<String> = p
                .ancestors
                .iter()
                .map(|a| format!("{}({})", escape_bytes(a.comm.as_bytes()), a.pid))
                .collect();
            let _ = write!(line, " parents={}", chain.join("<"));
        }
        if let Some(c) = &self.details.containerd {
            let _ = write!(line, " containerd={}", c.kind);
            if let Some(p) = &c.path {
                let _ = write!(line, ":{}", p.display());
            }
            if let Some(image) = c.images.first() {
                let _ = write!(line, " image={image}");
            }
            let _ = write!(line, " verdict={} ({})", c.verdict, c.reason);
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_and_invalid_bytes() {
        assert_eq!(escape_bytes(b"a b"), "a b");
        assert_eq!(escape_bytes(b"a\nb"), "a\\x0ab");
        assert_eq!(escape_bytes(b"a\xffb"), "a\\xffb");
        assert_eq!(escape_bytes(b"a\\b"), "a\\\\b");
        assert_eq!(escape_bytes("é".as_bytes()), "é");
    }

    #[test]
    fn non_utf8_paths_serialize_with_exact_hex() {
        let p = PathText(b"/r/\xff".to_vec());
        assert_eq!(
            serde_json::to_string(&p).ok().as_deref(),
            Some("\"/r/\\\\xff\"")
        );
        assert_eq!(hex(&p.0), "2f722fff");
    }

    #[test]
    fn overwritten_is_a_top_level_object_only_when_known() {
        let mut d = Details::default();
        let json = |d: &Details| serde_json::to_value(d).unwrap_or_default();
        assert!(json(&d).get("overwritten").is_none());
        d.overwritten = Some(Overwritten {
            inode: 42,
            dev: "254:0".into(),
        });
        assert_eq!(
            json(&d)["overwritten"],
            serde_json::json!({"inode": 42, "dev": "254:0"})
        );
    }

    fn event(path: &str, new_path: Option<&str>, notes: Vec<&'static str>) -> FileEvent {
        FileEvent {
            time: "2026-01-01T00:00:00Z".into(),
            mono_ns: 1,
            op: "rename",
            path: PathText(path.as_bytes().to_vec()),
            new_path: new_path.map(|p| PathText(p.as_bytes().to_vec())),
            result: "ok".into(),
            errno: None,
            inode: None,
            dev: None,
            process: Arc::new(ProcessView::default()),
            details: Details {
                notes,
                ..Details::default()
            },
        }
    }

    /// A truncated path is marked on the readable line right after it, a complete one not.
    #[test]
    fn the_readable_line_marks_truncated_paths() {
        let line = event("/r/a/…/f", Some("/r/a/…/g"), vec![NOTE_PATH_TRUNCATED]).human_line();
        assert!(
            line.contains(" /r/a/…/f (path truncated) -> /r/a/…/g pid="),
            "{line}"
        );
        let line = event(
            "/r/a/…/f",
            Some("/r/a/…/g"),
            vec![NOTE_PATH_TRUNCATED, NOTE_NEW_PATH_TRUNCATED],
        )
        .human_line();
        assert!(
            line.contains(" /r/a/…/f (path truncated) -> /r/a/…/g (new path truncated) pid="),
            "{line}"
        );
        let line = event("/r/a/f", Some("/r/a/g"), vec!["by_fd"]).human_line();
        assert!(!line.contains("truncated"), "{line}");
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(4095), "E4095");
    }
}
