//! The Dockerfile parser and lowering. What the input goes through is in
//! `kiln_fuzz_exercise::dockerfile`, which the workspace's tests replay.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kiln_fuzz_exercise::dockerfile::exercise(data);
});
