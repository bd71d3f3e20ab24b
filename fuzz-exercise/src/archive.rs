//! The archive loader (`kiln load`): a Docker `save` or OCI archive,
//! compressed or not. Whatever it reads, the store stays consistent.

use kiln_builder::archive::load_from;
use kiln_cache::Store;

pub fn exercise(data: &[u8]) -> usize {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let store = Store::open(&dir.path().join("store")).expect("a store");
    let loaded = load_from(&store, data, "fuzz.tar");
    let problems = store.check().expect("the store can be checked");
    assert!(
        problems.is_empty(),
        "the store is inconsistent: {problems:?}"
    );
    usize::from(loaded.is_ok())
}
