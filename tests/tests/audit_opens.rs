//! What `ctrwatch audit` opens under a root (issue 10, item 13): nothing through a symlink that
//! leaves the root, nothing that is not a regular file, and never a blocking open.
//! - `meta.db` symlinked to a file outside the root (a stand-in for /etc/shadow): refused with
//!   a clear error that does not print the file's bytes;
//! - the bolt directory symlinked outside the root: not followed;
//! - a FIFO named `meta.db`: refused at once, no hang;
//! - on a real containerd's root: a snapshotter directory symlinked outside the root is not
//!   followed, and a FIFO `ref` in an ingest directory is reported, without a hang.
//!
//! Every audit runs with a time limit, so a hang fails the test.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::OsStr,
    os::unix::{ffi::OsStrExt, fs::symlink},
    path::Path,
    time::Duration,
};

use tests::{
    bounded::{Bounded, contains_bytes, ctrwatch_bounded},
    containerd::Containerd,
    require_root, temp_dir,
};

/// Longest an audit of these small roots may take before the test calls it a hang.
const LIMIT: Duration = Duration::from_secs(60);

/// One line of the stand-in for /etc/shadow (repeated to a few pages, so that a bolt reader
/// gets as far as the meta page's magic number).
const SHADOW_LINE: &[u8] = b"root:$6$saltsalt$S3CR3THASHxyz:19000:0:99999:7:::\n";

fn shadow() -> Vec<u8> {
    SHADOW_LINE.repeat(8192 / SHADOW_LINE.len() + 1)
}

/// The stand-in's bytes 16..20 (where bbolt's meta page keeps its magic number) as the
/// unfixed audit printed them: "bad magic 0x........".
fn shadow_magic() -> String {
    let b = shadow();
    format!("{:#010x}", u32::from_le_bytes([b[16], b[17], b[18], b[19]]))
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {}",
        p.display()
    );
}

fn audit(root: &Path) -> Bounded {
    let a = ctrwatch_bounded(
        &[
            OsStr::new("audit"),
            OsStr::new("--no-progress"),
            OsStr::new("--root"),
            root.as_os_str(),
        ],
        LIMIT,
    );
    assert!(
        !a.timed_out,
        "ctrwatch audit --root {} hung; stderr:\n{}",
        root.display(),
        a.stderr_text()
    );
    a
}

/// Neither the stand-in's bytes nor its "magic number" appear anywhere in the output.
fn assert_not_leaked(a: &Bounded) {
    let all = [a.stdout.as_slice(), a.stderr.as_slice()].concat();
    assert!(
        !contains_bytes(&all, b"S3CR3T") && !contains_bytes(&all, shadow_magic().as_bytes()),
        "the audit read the file outside the root:\n{}\n{}",
        a.stdout_text(),
        a.stderr_text()
    );
}

/// A root with only its bolt directory, and a stand-in for /etc/shadow outside it.
fn setup(name: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let base = temp_dir(name);
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("shadow"), shadow()).unwrap();
    (base, root, outside)
}

#[test]
fn audit_refuses_a_meta_db_symlinked_out_of_the_root() {
    require_root();
    let (base, root, outside) = setup("meta-link");
    let bolt = root.join("io.containerd.metadata.v1.bolt");
    std::fs::create_dir_all(&bolt).unwrap();
    symlink(outside.join("shadow"), bolt.join("meta.db")).unwrap();
    let a = audit(&root);
    assert_eq!(a.code, Some(2), "{}", a.stderr_text());
    assert_not_leaked(&a);
    assert!(
        a.stderr_text().contains("symbolic link"),
        "the error does not say why: {}",
        a.stderr_text()
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn audit_does_not_follow_a_bolt_directory_symlinked_out_of_the_root() {
    require_root();
    let (base, root, outside) = setup("bolt-link");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(outside.join("shadow"), outside.join("meta.db")).unwrap();
    symlink(&outside, root.join("io.containerd.metadata.v1.bolt")).unwrap();
    let a = audit(&root);
    assert_eq!(a.code, Some(2), "{}", a.stderr_text());
    assert_not_leaked(&a);
    assert!(
        a.stderr_text().contains("symbolic link"),
        "the error does not say why: {}",
        a.stderr_text()
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn audit_does_not_hang_on_a_fifo_meta_db() {
    require_root();
    let (base, root, _) = setup("meta-fifo");
    let bolt = root.join("io.containerd.metadata.v1.bolt");
    std::fs::create_dir_all(&bolt).unwrap();
    mkfifo(&bolt.join("meta.db"));
    let a = audit(&root);
    assert_eq!(a.code, Some(2), "{}", a.stderr_text());
    assert!(
        a.stderr_text().contains("FIFO"),
        "the error does not say what meta.db is: {}",
        a.stderr_text()
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn audit_does_not_follow_a_snapshotter_directory_symlinked_out_of_the_root() {
    require_root();
    let cd = Containerd::start().expect("containerd");
    let base = temp_dir("snapshotter-link");
    std::fs::write(base.join("metadata.db"), shadow()).unwrap();
    // A snapshotter directory that leads out of the root, with a "metadata.db" there.
    let link = cd.root().join("io.containerd.snapshotter.v1.evil");
    symlink(&base, &link).unwrap();
    let a = audit(cd.root());
    let _ = std::fs::remove_file(&link);
    assert_not_leaked(&a);
    let out = a.stdout_text();
    assert!(
        out.contains("io.containerd.snapshotter.v1.evil") && out.contains("symbolic link"),
        "the symlinked snapshotter directory is not reported as not followed:\n{out}\n{}",
        a.stderr_text()
    );
    cd.stop().expect("stopping containerd");
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn audit_does_not_hang_on_a_fifo_ingest_ref() {
    require_root();
    let cd = Containerd::start().expect("containerd");
    // An ingest directory whose `ref` is a FIFO.
    let ingest = cd.content_dir().join("ingest").join("fifo-ref");
    std::fs::create_dir_all(&ingest).unwrap();
    mkfifo(&ingest.join("ref"));
    let a = audit(cd.root());
    let _ = std::fs::remove_dir_all(&ingest);
    let out = a.stdout_text();
    assert!(
        out.contains("fifo-ref") && out.contains("FIFO"),
        "the ingest with a FIFO ref is not reported:\n{out}\n{}",
        a.stderr_text()
    );
    cd.stop().expect("stopping containerd");
}
