//! The CLI's own behaviour as a command in a pipeline.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::process::{Command, Stdio};

use tests::{ctrwatch_bin, require_root};

/// `ctrwatch probe | head -1`, `ctrwatch roots | head -1`: the reader goes away, and the
/// command ends quietly (exit 0), it does not panic on the broken pipe.
#[test]
fn commands_end_quietly_when_their_reader_goes_away() {
    require_root();
    for args in [&["probe"][..], &["roots"][..]] {
        let mut child = Command::new(ctrwatch_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ctrwatch");
        // Close the read end before it writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
    }
}
