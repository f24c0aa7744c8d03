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

/// `ctrwatch probe` reports the LSM family as it reports fentry: a test LSM program loaded and
/// attached on `bpf_lsm_inode_setxattr`, combined with whether `bpf` is an active LSM. This
/// project's CI kernel refuses LSM programs: `refused`, with what the kernel said and the
/// hook it was tried on, the same in the text and in `--json`. (Before the LSM probe existed
/// it said `not-probed` on every kernel; the guests, `cargo xtask vm-test`, check `usable`
/// and `inactive`.)
#[test]
fn probe_reports_the_lsm_family_from_a_test_program() {
    require_root();
    let text = Command::new(ctrwatch_bin())
        .arg("probe")
        .output()
        .expect("ctrwatch probe");
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8(text.stdout).expect("utf-8");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("hook family lsm: "))
        .unwrap_or_else(|| panic!("no `hook family lsm:` line in\n{text}"));
    let json = Command::new(ctrwatch_bin())
        .args(["probe", "--json"])
        .output()
        .expect("ctrwatch probe --json");
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("probe's JSON");
    let lsm = &json["capabilities"]["lsm"];
    let state = lsm["state"].as_str().expect("the lsm probe's state");
    let detail = lsm["detail"].as_str().expect("the lsm probe's detail");
    assert_eq!(line, format!("{state} ({detail})"), "{json}");
    assert!(detail.contains("bpf_lsm_inode_setxattr"), "{detail}");
    let bpf_active = json["capabilities"]["bpf_lsm_active"].as_bool();
    match state {
        "refused" => assert!(
            detail.starts_with("loading a test program on bpf_lsm_inode_setxattr: ")
                || detail.contains("not a function in the kernel's BTF"),
            "{detail}"
        ),
        "usable" => assert_eq!(bpf_active, Some(true), "{json}"),
        "inactive" => assert_eq!(bpf_active, Some(false), "{json}"),
        other => panic!("lsm state {other}: {json}"),
    }
}
