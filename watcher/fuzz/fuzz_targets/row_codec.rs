//! The store's row codec on arbitrary bytes: decoding a details record (with a time, a path
//! and an atom table holding valid and invalid containerd JSON) and hashing the row as the
//! reader does must never panic or hang; and details built from the input, encoded as the
//! writer does, must decode to the same details.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    watcher::store::fuzzing::decode_row(data);
    watcher::store::fuzzing::round_trip(data);
});
