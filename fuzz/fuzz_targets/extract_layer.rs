//! The layer extractor, as a snapshot and as a plain directory. What the input goes through is in
//! `kiln_fuzz_exercise::extract`, which the workspace's tests replay.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kiln_fuzz_exercise::extract::exercise(data);
});
