//! Writes the seed corpus for the fuzz target (`fuzz/`): small valid files of every shape the
//! writer makes. Without seeds the fuzzer would never get past the meta checksum.
//!
//! `cargo test -p bolt --test fuzz_seeds -- --ignored`, then
//! `cd bolt/fuzz && cargo +nightly fuzz run open_and_walk`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure is the test's failure"
)]

use bolt::testwriter as common;

use common::{Builder, MetaSpec, Tree, single};

fn small_tree() -> Tree {
    Tree::new()
        .bucket(
            "v1",
            Tree::new()
                .bucket(
                    "default",
                    Tree::new()
                        .bucket(
                            "images",
                            Tree::new().bucket(
                                "img",
                                Tree::new().bucket("target", Tree::new().value("digest", "d")),
                            ),
                        )
                        .bucket("leases", Tree::new().seq(2)),
                )
                .value("version", [3u8]),
        )
        .value("k", "v")
}

#[test]
#[ignore = "writes files into fuzz/corpus; run by hand"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/open_and_walk");
    std::fs::create_dir_all(&dir).unwrap();
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();

    seeds.push(("empty-512", single(512, &Tree::new())));
    seeds.push(("small-512", single(512, &small_tree())));
    seeds.push(("small-1024", single(1024, &small_tree())));

    let mut b = Builder::new(512);
    b.inline_buckets = false;
    let r = b.write_tree(&small_tree());
    seeds.push((
        "no-inline-512",
        b.finish(&MetaSpec::new(r, 3), &MetaSpec::new(r, 4)),
    ));

    let mut t = Tree::new();
    for i in 0..40u32 {
        t = t.value(format!("{i:03}"), [i as u8; 3]);
    }
    let mut b = Builder::new(512);
    b.max_per_page = 2;
    let r = b.write_tree(&Tree::new().bucket("deep", t.clone()).value("x", "y"));
    seeds.push((
        "deep-512",
        b.finish(&MetaSpec::new(r, 1), &MetaSpec::new(r, 2)),
    ));

    let t = Tree::new()
        .value("big", vec![7u8; 1500])
        .value("small", "s");
    seeds.push(("overflow-512", single(512, &t)));

    let mut b = Builder::new(512);
    let r = b.write_tree(&small_tree());
    let free = b.alloc(1);
    let fl = b.write_freelist(&[free]);
    let mut m = MetaSpec::new(r, 6);
    m.freelist = Some(fl);
    seeds.push(("freelist-512", b.finish(&MetaSpec::new(r, 5), &m)));

    let mut b = Builder::new(512);
    let r1 = b.write_tree(&Tree::new().value("gen", "1"));
    let r2 = b.write_tree(&small_tree());
    seeds.push((
        "two-trees-512",
        b.finish(&MetaSpec::new(r2, 9), &MetaSpec::new(r1, 8)),
    ));

    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
