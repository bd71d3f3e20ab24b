//! Cache keys and the records that map them to layers.
//!
//! A key is the sha256 of a step's definition chained on its parent's key:
//! every field is written with its name and length, so that no two
//! definitions hash alike by shifting bytes between fields. A record says
//! what the step produced: a layer (by diff ID, with the blob it was stored
//! as) or nothing. Records live in `cache-keys/<hex of key>`, one small
//! JSON file each, renamed into place whole but not synced (the layers they
//! name are): they are a cache, so a missing, empty or unreadable one (what
//! a crash may leave) is a miss. `--explain` keeps what went into each step's
//! key in `explain/<hex of an id>` the same way.

use std::fs;
use std::io::{self, Read};

use oci_spec::image::MediaType;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::atomic::write_atomic_unsynced;
use crate::digest::Digest;
use crate::error::Error;
use crate::store::Store;

/// Changes whenever what goes into keys changes, so that an older kiln's
/// records are never taken for this one's.
const KEY_VERSION: &str = "kiln-cache-key-v1";

/// Field values up to this size are kept as they are for explanations;
/// longer ones by their digest.
const SHOWN_MAX: usize = 4096;

/// Builds a key from named fields, and (when asked) keeps them so that a
/// key that changed can be explained field by field.
pub struct KeyHasher {
    hasher: Sha256,
    parts: Option<Vec<(String, String)>>,
}

impl KeyHasher {
    /// A key of a step of `kind` on top of `parent` (none for a chain's
    /// start).
    pub fn new(kind: &str, parent: Option<&Digest>) -> Self {
        Self::start(kind, parent, None)
    }

    /// The same, keeping each field for [`KeyHasher::finish_with_parts`].
    pub fn explained(kind: &str, parent: Option<&Digest>) -> Self {
        Self::start(kind, parent, Some(Vec::new()))
    }

    fn start(kind: &str, parent: Option<&Digest>, parts: Option<Vec<(String, String)>>) -> Self {
        let mut key = KeyHasher {
            hasher: Sha256::new(),
            parts,
        };
        key.field("version", KEY_VERSION);
        key.field("kind", kind);
        if let Some(parent) = parent {
            key.field("parent", parent.to_string());
        }
        key
    }

    pub fn field(&mut self, name: &str, value: impl AsRef<[u8]>) {
        let value = value.as_ref();
        self.hasher.update((name.len() as u64).to_le_bytes());
        self.hasher.update(name.as_bytes());
        self.hasher.update((value.len() as u64).to_le_bytes());
        self.hasher.update(value);
        if let Some(parts) = &mut self.parts {
            let shown = match std::str::from_utf8(value) {
                Ok(text) if text.len() <= SHOWN_MAX => text.to_string(),
                _ => Digest::of(value).to_string(),
            };
            parts.push((name.to_string(), shown));
        }
    }

    pub fn finish(self) -> Digest {
        let bytes: [u8; 32] = self.hasher.finalize().into();
        Digest::from_bytes(bytes)
    }

    /// The key and its fields (none unless made with `explained`).
    pub fn finish_with_parts(mut self) -> (Digest, Vec<(String, String)>) {
        let parts = self.parts.take().unwrap_or_default();
        (self.finish(), parts)
    }
}

/// What a step with a given key produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// None: the step changed no file.
    pub layer: Option<LayerRecord>,
    /// When the step first made this result (seconds since 1970): the time
    /// its history entry keeps, so that a build from the cache makes the
    /// same image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    /// The key the steps after this one chain on, when it is not this
    /// record's own: the builder keys a step that reads another stage's
    /// files also by their content, and chains on that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Digest>,
}

/// A layer a step produced, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub diff_id: Digest,
    pub blob: Digest,
    pub size: u64,
    pub media_type: MediaType,
}

impl Store {
    fn record_path(&self, key: &Digest) -> std::path::PathBuf {
        self.root().join("cache-keys").join(key.hex())
    }

    /// The record of `key`, if there is a readable one.
    pub fn cache_record(&self, key: &Digest) -> Option<CacheRecord> {
        let bytes = fs::read(self.record_path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Records `record` for `key`. A record that says the same as the
    /// one there is only marked used: every cache hit writes its step's
    /// record, and a synced rewrite of the same bytes costs a disk flush
    /// for nothing.
    pub fn put_cache_record(&self, key: &Digest, record: &CacheRecord) -> Result<(), Error> {
        let path = self.record_path(key);
        let bytes = serde_json::to_vec(record)
            .map_err(|e| Error::io(&path, io::Error::other(e.to_string())))?;
        if fs::read(&path).is_ok_and(|known| known == bytes) {
            self.mark_record_used(key);
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        write_atomic_unsynced(&path, &bytes)
    }

    pub(crate) fn explain_dir(&self) -> std::path::PathBuf {
        self.root().join("explain")
    }

    /// What an earlier build kept under `id` for `--explain` (what went
    /// into a step's key), if there is a readable record.
    pub fn explain_record(&self, id: &Digest) -> Option<Vec<u8>> {
        fs::read(self.explain_dir().join(id.hex())).ok()
    }

    /// The first `len` bytes (fewer if it is shorter) of the record under
    /// `id`: enough to tell whether it is the one a build would write,
    /// without reading what may be megabytes.
    pub fn explain_record_head(&self, id: &Digest, len: usize) -> Option<Vec<u8>> {
        let mut head = Vec::with_capacity(len);
        fs::File::open(self.explain_dir().join(id.hex()))
            .ok()?
            .take(len as u64)
            .read_to_end(&mut head)
            .ok()?;
        Some(head)
    }

    /// Keeps `bytes` under `id` for a later build's `--explain`. A cache,
    /// like the records: `kiln prune --all` removes them, and `kiln du`
    /// counts them with the store's other files.
    pub fn put_explain_record(&self, id: &Digest, bytes: &[u8]) -> Result<(), Error> {
        let dir = self.explain_dir();
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        write_atomic_unsynced(&dir.join(id.hex()), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fields: &[(&str, &str)], parent: Option<&Digest>) -> Digest {
        let mut hasher = KeyHasher::new("run", parent);
        for (name, value) in fields {
            hasher.field(name, value);
        }
        hasher.finish()
    }

    #[test]
    fn keys_depend_on_every_field_its_name_and_the_parent() {
        let base = key(&[("args", "make"), ("env", "A=1")], None);
        assert_eq!(base, key(&[("args", "make"), ("env", "A=1")], None));
        assert_ne!(base, key(&[("args", "make"), ("env", "A=2")], None));
        assert_ne!(base, key(&[("args", "make"), ("user", "A=1")], None));
        assert_ne!(
            key(&[("a", "bc"), ("d", "")], None),
            key(&[("a", "b"), ("d", "c")], None),
            "bytes cannot move between fields"
        );
        let parent = Digest::of(b"parent");
        assert_ne!(
            base,
            key(&[("args", "make"), ("env", "A=1")], Some(&parent))
        );
    }

    #[test]
    fn records_round_trip_and_a_broken_one_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let key = Digest::of(b"step");
        assert_eq!(store.cache_record(&key), None);
        let record = CacheRecord {
            layer: Some(LayerRecord {
                diff_id: Digest::of(b"tar"),
                blob: Digest::of(b"gz"),
                size: 42,
                media_type: MediaType::ImageLayerGzip,
            }),
            created: Some(1_700_000_000),
            chain: Some(Digest::of(b"content")),
        };
        store.put_cache_record(&key, &record).unwrap();
        assert_eq!(store.cache_record(&key), Some(record));
        fs::write(store.record_path(&key), b"{broken").unwrap();
        assert_eq!(store.cache_record(&key), None);
    }

    #[test]
    fn the_same_record_again_is_not_rewritten_but_marked_used() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let key = Digest::of(b"step");
        let record = CacheRecord {
            layer: None,
            created: Some(1_700_000_000),
            chain: None,
        };
        store.put_cache_record(&key, &record).unwrap();
        let path = store.record_path(&key);
        let long_ago = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        fs::File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let inode = fs::metadata(&path).unwrap().ino();
        store.put_cache_record(&key, &record).unwrap();
        let after = fs::metadata(&path).unwrap();
        assert_eq!(after.ino(), inode, "the same file, not a replacement");
        assert!(after.modified().unwrap() > long_ago, "marked used");
        let changed = CacheRecord {
            created: Some(1_800_000_000),
            ..record
        };
        store.put_cache_record(&key, &changed).unwrap();
        assert_eq!(store.cache_record(&key), Some(changed));
    }
}
