//! Feeds arbitrary bytes to `Db::from_bytes` and walks every bucket. Besides "no panic, no hang",
//! it checks that a file the reader accepted is fully walkable and that every key found by
//! iteration is also found by lookup (the open-time check guarantees both).
//!
//! Each input is tried as it is and with both meta checksums recomputed, so that mutations of the
//! meta fields get past the checksum.

#![no_main]

use bolt::{Bucket, Db, Entry};
use libfuzzer_sys::fuzz_target;

fn walk(b: Bucket<'_>) {
    for e in b.iter() {
        match e.expect("an accepted file walks without errors") {
            Entry::Value(k, v) => {
                assert_eq!(b.get(k).expect("lookup"), Some(v));
                assert!(b.bucket(k).expect("lookup").is_none());
            }
            Entry::Bucket(k, sub) => {
                assert!(b.get(k).expect("lookup").is_none());
                let found = b
                    .bucket(k)
                    .expect("lookup")
                    .expect("bucket found by lookup");
                assert_eq!(found.root_pgid(), sub.root_pgid());
                assert_eq!(found.sequence(), sub.sequence());
                walk(sub);
            }
        }
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Recomputes the checksum of the meta page at `off` (if the input is long enough).
fn reseal(data: &mut [u8], off: usize) {
    let Some(m) = data.get_mut(off + 16..off + 80) else {
        return;
    };
    let sum = fnv1a64(&m[..56]);
    m[56..64].copy_from_slice(&sum.to_le_bytes());
}

fn try_input(data: Vec<u8>) {
    if let Ok(db) = Db::from_bytes(data) {
        walk(db.root());
        let _ = db.bucket_path(&[b"v1", b"default", b"images"]);
    }
}

fuzz_target!(|data: &[u8]| {
    try_input(data.to_vec());
    let mut sealed = data.to_vec();
    reseal(&mut sealed, 0);
    let page_size = sealed
        .get(24..28)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .unwrap_or(0);
    if (512..=1 << 16).contains(&page_size) {
        reseal(&mut sealed, page_size);
    }
    if sealed != data {
        try_input(sealed);
    }
});
