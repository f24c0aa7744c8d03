//! `Db::open` against a file that another thread keeps committing to, the way bbolt does:
//! transaction N writes its tree into pages freed by transaction N-1 (those of tree N-2), then
//! its meta page (page N % 2). Every open must give exactly the content of the transaction it
//! reports, or `Unstable` after its retries.
//!
//! The pause between a transaction's pages and its meta page (bbolt fdatasyncs there) is what
//! makes the weaker rule "accept the copy if the txid moved by at most one" fail this test within
//! a few hundred commits: transaction T+2 overwrites T's pages while T+1 is still current.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure is the test's failure"
)]

use bolt::testwriter as common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bolt::{BoltError, Db, Entry};
use common::{Builder, MetaSpec, Tree};

const PS: usize = 4096;
/// Pages per tree region; the file has two regions after the meta pages.
const REGION: usize = 160;
const PAGES: u64 = 2 + 2 * REGION as u64;
/// Transactions the writer commits during the test.
const COMMITS: u64 = 400;

/// The content committed by transaction `n`: its size and every value depend on `n`.
fn tree(n: u64) -> Tree {
    let count = 800 + (n * 37 % 500);
    let mut data = Tree::new().seq(n);
    for i in 0..count {
        data = data.value(
            format!("key-{i:05}"),
            format!("{n:08}-{i:05}-{}", "x".repeat(20)),
        );
    }
    Tree::new()
        .value("txid", n.to_be_bytes())
        .bucket("data", data)
}

/// Transaction `n` as bbolt would write it: its tree pages (and their offset), then its meta page.
struct Commit {
    n: u64,
    pages: Vec<u8>,
    pages_at: u64,
    meta: Vec<u8>,
}

fn prepare(n: u64) -> Commit {
    let base = 2 + (n % 2) as usize * REGION;
    let mut b = Builder::new(PS);
    b.alloc(base - 2);
    let root = b.write_tree(&tree(n));
    let end = b.next_pgid() as usize;
    assert!(end <= base + REGION, "tree too big for its region");
    Commit {
        n,
        pages: b.image[base * PS..end * PS].to_vec(),
        pages_at: (base * PS) as u64,
        meta: b.meta_page(n % 2, &MetaSpec::new(root, n), PAGES),
    }
}

/// Writes a transaction into `file` in place: tree pages first, then (after `sync`, standing for
/// bbolt's fdatasync between the two) the meta page.
fn commit(file: &File, c: &Commit, sync: Duration) {
    file.write_all_at(&c.pages, c.pages_at).unwrap();
    std::thread::sleep(sync);
    file.write_all_at(&c.meta, (c.n % 2) * PS as u64).unwrap();
}

/// Checks that `db` holds exactly `tree(n)` (cheaply: the reader must not spend its time here).
fn check(db: &Db, n: u64) {
    let root = db.root();
    assert_eq!(
        root.get(b"txid").unwrap(),
        Some(&n.to_be_bytes()[..]),
        "txid {n}"
    );
    let data = root.bucket(b"data").unwrap().unwrap();
    assert_eq!(data.sequence(), n);
    let mut count = 0;
    for (i, e) in data.iter().enumerate() {
        let Entry::Value(k, v) = e.unwrap() else {
            panic!("txid {n}: unexpected bucket");
        };
        assert_eq!(k, format!("key-{i:05}").as_bytes(), "txid {n}");
        assert_eq!(
            v,
            format!("{n:08}-{i:05}-{}", "x".repeat(20)).as_bytes(),
            "txid {n}"
        );
        count += 1;
    }
    assert_eq!(count, 800 + (n * 37 % 500), "txid {n}");
    assert_eq!(root.iter().count(), 2);
}

#[test]
fn open_while_a_writer_commits() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bolt-concurrent-{}.db", std::process::id()));
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.set_len(PAGES * PS as u64).unwrap();
    commit(&file, &prepare(1), Duration::ZERO);
    commit(&file, &prepare(2), Duration::ZERO);
    // Prepared up front so that commits follow each other quickly.
    let commits: Vec<Commit> = (3..3 + COMMITS).map(prepare).collect();

    let done = AtomicBool::new(false);
    let last = AtomicU64::new(2);
    let (mut ok, mut unstable, mut distinct) = (0u32, 0u32, std::collections::BTreeSet::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut rng = 0x2545_f491_4f6c_dd1du64;
            for c in &commits {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                commit(&file, c, Duration::from_micros(rng % 1500));
                last.store(c.n, Ordering::Relaxed);
                // Mostly back-to-back commits, sometimes a pause.
                if rng.is_multiple_of(3) {
                    std::thread::sleep(Duration::from_micros(rng % 4000));
                }
            }
            done.store(true, Ordering::Relaxed);
        });
        let started = Instant::now();
        while !done.load(Ordering::Relaxed) {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "test took too long"
            );
            match Db::open(&path) {
                Ok(db) => {
                    let n = db.txid();
                    assert!(n >= 1 && n <= last.load(Ordering::Relaxed) + 1);
                    check(&db, n);
                    ok += 1;
                    distinct.insert(n);
                }
                Err(BoltError::Unstable { attempts }) => {
                    assert_eq!(attempts, bolt::OPEN_ATTEMPTS);
                    unstable += 1;
                }
                Err(e) => panic!("open failed: {e}"),
            }
        }
    });
    eprintln!(
        "{ok} consistent snapshots ({} distinct txids), {unstable} unstable, {COMMITS} commits",
        distinct.len()
    );
    assert!(distinct.len() > 1, "snapshots of several transactions");
    std::fs::remove_file(&path).unwrap();
}
