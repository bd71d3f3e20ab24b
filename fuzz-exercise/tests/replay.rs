//! Every input kept in testdata/fuzz/<target>/ goes through what its fuzz
//! target does: none may panic, and each target has inputs its readers
//! accept, or the replay would test nothing.

use std::path::Path;

use kiln_fuzz_exercise::TARGETS;

#[test]
fn kept_inputs_never_panic_and_valid_ones_reach_the_readers() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the extractor's inputs make device nodes, whiteouts and files of other owners: \
         this test must run as root (sudo scripts/test)"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/fuzz");
    for (target, exercise) in TARGETS {
        let dir = root.join(target);
        let mut inputs = 0;
        let mut accepted = 0;
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("an entry").path())
            .collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).expect("an input");
            let outcome = std::panic::catch_unwind(|| exercise(&data));
            let reached = outcome.unwrap_or_else(|_| panic!("{} panics", path.display()));
            inputs += 1;
            accepted += usize::from(reached > 0);
        }
        assert!(inputs >= 3, "only {inputs} inputs for {target}");
        assert!(accepted > 0, "no input for {target} is accepted");
    }
}

#[test]
fn every_target_has_a_fuzz_target_and_inputs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (target, _) in TARGETS {
        let source = root.join("fuzz/fuzz_targets").join(format!("{target}.rs"));
        assert!(source.is_file(), "{} is missing", source.display());
        assert!(root.join("testdata/fuzz").join(target).is_dir());
    }
}
