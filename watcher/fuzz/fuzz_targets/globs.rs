//! Query globs on arbitrary patterns: `--path` globs (compiled and matched) and the SQL globs
//! of `--comm`/`--exe`/`--unit` (checked) must never panic or hang.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    watcher::store::fuzzing::globs(data);
});
