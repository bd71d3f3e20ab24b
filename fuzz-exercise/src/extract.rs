//! The layer extractor in both its modes: as a layer unpacks into a
//! snapshot (whiteouts become overlayfs whiteouts) and as `ADD` unpacks an
//! archive into a plain directory (entries written as they are, owned by
//! the given user). Whatever the archive holds, nothing is written outside
//! the directory it is unpacked into.

use std::path::Path;

use kiln_cache::compress::decompressed;
use kiln_cache::extract::{extract, ExtractMode, ExtractOptions};
use kiln_cache::Limits;

/// Small bounds, so that an input that unpacks to much is refused early
/// rather than fill the disk a fuzzer runs on.
const LIMITS: Limits = Limits {
    max_layer_size: 256 << 20,
    max_layer_entries: 100_000,
    keep_free: None,
};

pub fn exercise(data: &[u8]) -> usize {
    let outer = tempfile::tempdir().expect("a scratch directory");
    let snapshot = outer.path().join("snapshot");
    let plain = outer.path().join("plain");
    std::fs::create_dir(&snapshot).expect("snapshot directory");
    std::fs::create_dir(&plain).expect("plain directory");
    let mut accepted = 0;
    if let Ok(tar) = decompressed(data) {
        accepted += usize::from(extract(tar, &snapshot, &ExtractOptions::layer(LIMITS)).is_ok());
    }
    let as_add = ExtractOptions {
        mode: ExtractMode::Archive,
        owner: Some((1000, 1000)),
        limits: LIMITS,
    };
    accepted += usize::from(extract(data, &plain, &as_add).is_ok());
    assert_eq!(
        entries(outer.path()),
        ["plain", "snapshot"],
        "an entry was written beside the target directory"
    );
    accepted
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("the scratch directory")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}
