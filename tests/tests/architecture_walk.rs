//! docs/architecture.md walks one unlink from the hook to the store through at most eight
//! files, naming the functions it goes through. This keeps that walk true: the numbered
//! stages are at most eight files that exist, and every function the walk names is still
//! there (called in the stage's file, or defined in the workspace). No root needed.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// The walk: the first code block after the section's title.
fn walk(doc: &str) -> Vec<&str> {
    let section = doc
        .split("## One event, hook to output")
        .nth(1)
        .expect("the section");
    let mut blocks = section.split("```");
    blocks.next();
    blocks.next().expect("the walk's block").lines().collect()
}

/// Identifiers the walk names as functions: `a::b` paths' last part, and snake_case words.
fn functions(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        let last = word.rsplit("::").next().unwrap_or(word);
        let named = word.contains("::") || last.contains('_');
        if named
            && last.starts_with(|c: char| c.is_ascii_lowercase())
            && last
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            out.push(last.to_string());
        }
    }
    out
}

/// Every `.rs` file of the workspace's crates (not target/).
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != ".git" {
                sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_unlink_walk_names_at_most_eight_files_and_functions_that_exist() {
    let root = workspace();
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("the doc");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let defined: BTreeSet<String> = files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            text.split("fn ")
                .skip(1)
                .filter_map(|rest| {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    (!name.is_empty()).then_some(name)
                })
                .collect::<Vec<_>>()
        })
        .collect();

    // (stage number, file, its text, the functions its lines name)
    let mut stages: Vec<(u32, String, String, Vec<String>)> = Vec::new();
    for line in walk(&doc) {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or("");
        if let (Ok(n), Some(file)) = (first.parse::<u32>(), parts.next()) {
            let text = std::fs::read_to_string(root.join(file))
                .unwrap_or_else(|e| panic!("stage {n}: {file}: {e}"));
            let rest = line.split_once(file).map_or("", |(_, r)| r);
            stages.push((n, file.to_string(), text, functions(rest)));
        } else if let Some(stage) = stages.last_mut() {
            stage.3.extend(functions(line));
        }
    }
    let numbers: Vec<u32> = stages.iter().map(|s| s.0).collect();
    let expected: Vec<u32> = (1..=u32::try_from(stages.len()).unwrap()).collect();
    assert_eq!(numbers, expected, "the stages are numbered 1, 2, ...");
    assert!(
        (2..=8).contains(&stages.len()),
        "the walk has {} stages: {:?}",
        stages.len(),
        stages.iter().map(|s| &s.1).collect::<Vec<_>>()
    );
    let distinct: BTreeSet<&String> = stages.iter().map(|s| &s.1).collect();
    assert_eq!(distinct.len(), stages.len(), "each stage is its own file");

    let mut missing = Vec::new();
    let mut named = 0;
    for (n, file, text, fns) in &stages {
        for f in fns {
            named += 1;
            if !text.contains(f.as_str()) && !defined.contains(f) {
                missing.push(format!("stage {n} ({file}): {f}"));
            }
        }
    }
    assert!(
        named >= 2 * stages.len(),
        "the walk names its functions ({named})"
    );
    assert!(
        missing.is_empty(),
        "functions the walk names that the code does not have: {missing:#?}"
    );
    // The walk starts at the hook and ends at the store's insert.
    let (_, first, first_text, _) = &stages[0];
    assert!(
        first.starts_with("watcher-ebpf/") && first_text.contains("sys_enter_unlinkat"),
        "the walk starts at the unlink's hook: {first}"
    );
    let (_, last, last_text, last_fns) = &stages[stages.len() - 1];
    assert!(
        last.starts_with("store/")
            && last_fns.iter().any(|f| f == "insert_rows")
            && last_text.contains("INSERT"),
        "the walk ends at the store's insert: {last}"
    );
}
