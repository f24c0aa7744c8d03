//! A store written by the release before issue 11 (the last whose events were strings from the
//! hook to the store) answers the query commands of this one exactly as it answered them then
//! (issue 11: "the JSON and store formats are compatible"). The store and that release's
//! answers are in tests/fixtures/store-v3 (its README says how they were made); the real
//! `ctrwatch` under test asks the same questions of a copy. JSON lines must be the same JSON
//! values as that release gave. Tables must be the same bytes as the pinned `*.txt` answers:
//! that release's for `gaps`, the readable event tables of issue 12 for the event commands
//! (their layout changed on purpose; the README says what changed). Root is not needed,
//! only the binary.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use tests::{ctrwatch_bin, temp_dir};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/store-v3")
}

/// The fixture store, unpacked into a directory of its own (readers may leave `-shm`/`-wal`
/// files beside it).
fn unpack(dir: &Path) -> PathBuf {
    let gz = std::fs::read(fixture_dir().join("events.db.gz")).expect("read events.db.gz");
    let mut db = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut db)
        .expect("gunzip events.db.gz");
    let path = dir.join("events.db");
    std::fs::write(&path, db).expect("write the store");
    path
}

/// (answer file, arguments) of every line of `commands`.
fn commands() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(fixture_dir().join("commands")).expect("commands");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut words = l.split_whitespace().map(str::to_owned);
            let file = words.next().expect("an answer file");
            (file, words.collect())
        })
        .collect()
}

fn json_values(text: &str, what: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn a_store_of_the_previous_release_answers_as_it_did() {
    let dir = temp_dir("store-compat");
    let store = unpack(&dir);
    let cases = commands();
    assert!(cases.len() >= 15, "{cases:?}");
    let mut failures = Vec::new();
    for (file, args) in &cases {
        let out = Command::new(ctrwatch_bin())
            .args(args)
            .arg("--store")
            .arg(&store)
            .output()
            .expect("run ctrwatch");
        let got = String::from_utf8(out.stdout).expect("UTF-8 output");
        let want = std::fs::read_to_string(fixture_dir().join(file)).expect("answer file");
        if !out.status.success() {
            failures.push(format!(
                "{file} ({}): {}, stderr: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        let same = if file.ends_with(".json") {
            json_values(&got, file) == json_values(&want, file)
        } else {
            got == want
        };
        if !same {
            failures.push(format!(
                "{file} ({}): answered\n{got}\ninstead of\n{want}",
                args.join(" ")
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
