//! What each fuzz target under `fuzz/` does with an input. The targets
//! call these functions, and `tests/replay.rs` runs every input kept in
//! `testdata/fuzz/<target>/` through them on each test run, so that a
//! crash once found stays fixed.
//!
//! Each function must never panic, whatever the input; where a reader
//! promises more than "no panic" (a path never leaves its directory, a
//! store stays consistent, a parse reads back as itself), the function
//! asserts it, so that the fuzzer reports a broken promise as a crash.
//! Each returns how many of the readers it fed accepted the input, which
//! the tests use to check that a valid input reaches them at all.

pub mod archive;
pub mod auth;
pub mod compression;
pub mod dockerfile;
pub mod extract;
pub mod ignore;
pub mod manifests;
pub mod reference;

/// What a target does with one input; how many readers accepted it.
pub type Exercise = fn(&[u8]) -> usize;

/// Every target, by the name of its directory of inputs and of its fuzz
/// target, with the function it runs.
pub const TARGETS: &[(&str, Exercise)] = &[
    ("dockerfile", dockerfile::exercise),
    ("ignore_patterns", ignore::exercise),
    ("extract_layer", extract::exercise),
    ("decompress", compression::exercise),
    ("load_archive", archive::exercise),
    ("image_reference", reference::exercise),
    ("www_authenticate", auth::challenge),
    ("token_answer", auth::token_answer),
    ("manifests", manifests::exercise),
];

/// Splits an input in two at its first NUL byte, for targets that read two
/// documents (a manifest and its configuration).
pub fn split_in_two(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}
