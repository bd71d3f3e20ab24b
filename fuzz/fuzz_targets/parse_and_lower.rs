//! Any input must parse or fail with an error, and whatever parses must
//! lower or fail with an error: never a panic. The same bytes also go
//! through the .dockerignore parser and, as a word, the shell lexer.

#![no_main]

#[path = "../../frontend/tests/support/exercise.rs"]
mod exercise;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    exercise::exercise(data);
});
