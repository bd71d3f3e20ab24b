//! Every input in testdata/fuzz goes through what the fuzz target does;
//! none may panic.

use std::path::Path;

#[path = "support/exercise.rs"]
mod support;

use support::exercise;

#[test]
fn fuzz_inputs_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/fuzz");
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).expect("testdata/fuzz") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|name| name == "README.md") {
            continue;
        }
        let data = std::fs::read(&path).expect("input");
        let result = std::panic::catch_unwind(|| exercise(&data));
        assert!(result.is_ok(), "{} panics", path.display());
        inputs += 1;
    }
    assert!(inputs >= 5, "only {inputs} inputs in {}", dir.display());
}

#[test]
fn a_valid_input_lowers() {
    // The exercise must reach the lowering, or the replay above would pass
    // without testing anything.
    assert!(exercise(b"FROM scratch AS build\nRUN true\n") >= 2);
}
