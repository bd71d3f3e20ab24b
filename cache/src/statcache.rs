//! The digests of files' contents, remembered by what `stat` says of them
//! (device, inode, size, modification and change times), so that a file's
//! bytes are read once until it changes: a rebuild of a large, unchanged
//! context costs a stat per file. A file whose times say nothing changed
//! but whose bytes did (a tool that restores both times) cannot be told
//! apart; its ctime still changes on any write, which no tool can set.
//!
//! Kept in the store as `stat-cache.json`, loaded once per build and saved
//! at its end; several builds may save it, the last one wins (it is a
//! cache: a lost entry costs a read).

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::digest::{Digest, HashingWriter};
use crate::error::Error;
use crate::store::Store;

/// How long ago a file must have changed for its digest to be kept.
const SETTLED_NS: i128 = 2_000_000_000;

/// Entries kept at most; the oldest go first once there are more.
const MAX_ENTRIES: usize = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    digest: Digest,
    /// When it was last used, in builds: for trimming.
    generation: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    generation: u64,
    /// (device, inode, what was seen).
    entries: Vec<(u64, u64, Seen)>,
}

/// File digests by `stat`, shared by the threads of a build.
#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    generation: u64,
    /// How long ago a file must have changed for its digest to be kept.
    settled_ns: i128,
    entries: Mutex<HashMap<(u64, u64), Seen>>,
}

fn times(metadata: &Metadata) -> (i128, i128) {
    let mtime = i128::from(metadata.mtime()) * 1_000_000_000 + i128::from(metadata.mtime_nsec());
    let ctime = i128::from(metadata.ctime()) * 1_000_000_000 + i128::from(metadata.ctime_nsec());
    (mtime, ctime)
}

impl StatCache {
    /// The store's stat cache (empty when there is none or it is unreadable).
    pub fn load(store: &Store) -> StatCache {
        let path = store.root().join("stat-cache.json");
        let saved: Saved = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        StatCache {
            path,
            generation: saved.generation + 1,
            settled_ns: SETTLED_NS,
            entries: Mutex::new(
                saved
                    .entries
                    .into_iter()
                    .map(|(dev, ino, seen)| ((dev, ino), seen))
                    .collect(),
            ),
        }
    }

    /// The sha256 of the regular file at `path`, whose metadata is
    /// `metadata`.
    pub fn digest(&self, path: &Path, metadata: &Metadata) -> io::Result<Digest> {
        let id = (metadata.dev(), metadata.ino());
        let (mtime_ns, ctime_ns) = times(metadata);
        if let Ok(mut entries) = self.entries.lock() {
            if let Some(seen) = entries.get_mut(&id) {
                if seen.size == metadata.len()
                    && seen.mtime_ns == mtime_ns
                    && seen.ctime_ns == ctime_ns
                {
                    seen.generation = self.generation;
                    return Ok(seen.digest);
                }
            }
        }
        let mut file = File::open(path)?;
        let mut hashing = HashingWriter::new(io::sink());
        io::copy(&mut file, &mut hashing)?;
        let (_, digest, _) = hashing.finish();
        // What the file was when it was read: a file that changed while
        // being read is not remembered with the old times; nor is one
        // changed just now, which a write within the same clock tick could
        // change again without changing its times (git's "racy clean").
        let after = file.metadata()?;
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as i128);
        let settled = now_ns - ctime_ns > self.settled_ns;
        if settled && times(&after) == (mtime_ns, ctime_ns) && after.len() == metadata.len() {
            if let Ok(mut entries) = self.entries.lock() {
                entries.insert(
                    id,
                    Seen {
                        size: metadata.len(),
                        mtime_ns,
                        ctime_ns,
                        digest,
                        generation: self.generation,
                    },
                );
            }
        }
        Ok(digest)
    }

    /// Writes the cache back to the store.
    pub fn save(&self) -> Result<(), Error> {
        let entries = match self.entries.lock() {
            Ok(entries) => entries.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let mut entries: Vec<(u64, u64, Seen)> = entries
            .into_iter()
            .map(|((dev, ino), seen)| (dev, ino, seen))
            .collect();
        if entries.len() > MAX_ENTRIES {
            entries.sort_by_key(|(_, _, seen)| std::cmp::Reverse(seen.generation));
            entries.truncate(MAX_ENTRIES);
        }
        let saved = Saved {
            generation: self.generation,
            entries,
        };
        let bytes = serde_json::to_vec(&saved)
            .map_err(|e| Error::io(&self.path, io::Error::other(e.to_string())))?;
        write_atomic(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_file_changed_just_now_is_read_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"one").unwrap();
        let metadata = fs::metadata(&file).unwrap();
        let cache = StatCache::load(&store);
        cache.digest(&file, &metadata).unwrap();
        // Same times, other bytes (a rewrite within the clock's tick): read.
        let fake = dir.path().join("fake");
        fs::write(&fake, b"two").unwrap();
        assert_eq!(cache.digest(&fake, &metadata).unwrap(), Digest::of(b"two"));
    }

    #[test]
    fn a_file_is_read_again_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"one").unwrap();
        // As if the file had been written long ago.
        let mut cache = StatCache::load(&store);
        cache.settled_ns = 0;
        let metadata = fs::metadata(&file).unwrap();
        assert_eq!(cache.digest(&file, &metadata).unwrap(), Digest::of(b"one"));
        cache.save().unwrap();

        let reloaded = StatCache::load(&store);
        // Same stat, other bytes behind the cache's back: the cached digest
        // proves the bytes were not read again.
        let fake = dir.path().join("fake");
        fs::write(&fake, b"two").unwrap();
        assert_eq!(
            reloaded.digest(&fake, &metadata).unwrap(),
            Digest::of(b"one")
        );
        // A real change moves ctime (and size): read again.
        fs::write(&file, b"three").unwrap();
        let changed = fs::metadata(&file).unwrap();
        assert_eq!(
            reloaded.digest(&file, &changed).unwrap(),
            Digest::of(b"three")
        );
    }
}
