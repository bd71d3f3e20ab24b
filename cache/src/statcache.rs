//! The digests of files' contents, remembered by what `stat` says of them
//! (device, inode, size, modification and change times), so that a file's
//! bytes are read once until it changes: a rebuild of a large, unchanged
//! context costs a stat per file. A file whose times say nothing changed
//! but whose bytes did (a tool that restores both times) cannot be told
//! apart; its ctime still changes on any write, which no tool can set.
//!
//! Kept in the store as `stat-cache.bin`: a header (magic and format
//! version), then fixed-size records, each with a checksum of its own.
//! Loaded once per build. At its end a build that read no file writes
//! nothing, and one that did appends the records of what it read in one
//! `O_APPEND` write, so that builds sharing a store add to it side by side
//! without rewriting what the others wrote. A record cut short (a crash in
//! the middle of a write) or damaged is skipped: it costs a read, never a
//! wrong digest. A later record of a file replaces an earlier one; once
//! such dead records outnumber the live ones, or there are more entries
//! than the cap, the file is compacted: written whole again, atomically.
//! A build that compacts drops what other builds appended since it loaded
//! the file (a lost entry costs a read).

use std::collections::HashMap;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest as _, Sha256};

use crate::atomic::write_atomic;
use crate::digest::{Digest, HashingWriter};
use crate::error::Error;
use crate::store::Store;

/// How long ago a file must have changed for its digest to be kept.
const SETTLED_NS: i128 = 2_000_000_000;

/// Entries kept at most; the least recently used go first once there are
/// more.
const MAX_ENTRIES: usize = 1_000_000;

const FILE_NAME: &str = "stat-cache.bin";

/// Where kiln kept the cache before, as JSON rewritten by every build.
const OLD_FILE_NAME: &str = "stat-cache.json";

/// The header: what the file is and the version of its records' layout.
/// Another header (a later version) makes the file an empty cache, which
/// the next build that reads a file replaces.
const HEADER: [u8; 16] = *b"kiln-stat-cache1";

/// A record: device, inode, size (u64 each), modification and change times
/// (i128 nanoseconds each), sha256, generation (u64), all little-endian,
/// then the first 8 bytes of the sha256 of all that.
const RECORD_LEN: usize = 8 * 3 + 16 * 2 + 32 + 8 + CHECKSUM_LEN;
const CHECKSUM_LEN: usize = 8;

/// (device, inode)
type FileId = (u64, u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    digest: Digest,
    /// The last build that used it (counted in builds that wrote the
    /// file): the least recent go first when there are too many.
    generation: u64,
    /// Whether the file holds this record.
    stored: bool,
}

/// What is known, and what the file holds.
#[derive(Debug, Default)]
struct State {
    entries: HashMap<FileId, Seen>,
    /// Records in the file, valid or not: those that are not entries are
    /// dead and wait for a compaction.
    records: usize,
    /// Whether records appended to the file would be read back: not when it
    /// is missing, has another header or ends in a part of a record.
    appendable: bool,
}

/// File digests by `stat`, shared by the threads of a build.
#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    generation: u64,
    /// How long ago a file must have changed for its digest to be kept.
    settled_ns: i128,
    max_entries: usize,
    state: Mutex<State>,
}

fn times(metadata: &Metadata) -> (i128, i128) {
    let mtime = i128::from(metadata.mtime()) * 1_000_000_000 + i128::from(metadata.mtime_nsec());
    let ctime = i128::from(metadata.ctime()) * 1_000_000_000 + i128::from(metadata.ctime_nsec());
    (mtime, ctime)
}

fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut sum = [0u8; CHECKSUM_LEN];
    sum.copy_from_slice(&Sha256::digest(bytes)[..CHECKSUM_LEN]);
    sum
}

fn encode((dev, ino): FileId, seen: &Seen) -> [u8; RECORD_LEN] {
    let mut record = [0u8; RECORD_LEN];
    let fields: [&[u8]; 7] = [
        &dev.to_le_bytes(),
        &ino.to_le_bytes(),
        &seen.size.to_le_bytes(),
        &seen.mtime_ns.to_le_bytes(),
        &seen.ctime_ns.to_le_bytes(),
        seen.digest.as_bytes(),
        &seen.generation.to_le_bytes(),
    ];
    let mut at = 0;
    for field in fields {
        record[at..at + field.len()].copy_from_slice(field);
        at += field.len();
    }
    let sum = checksum(&record[..at]);
    record[at..].copy_from_slice(&sum);
    record
}

/// The entry a record holds; `None` when its checksum says it is damaged.
fn decode(record: &[u8; RECORD_LEN]) -> Option<(FileId, Seen)> {
    let (fields, sum) = record.split_at(RECORD_LEN - CHECKSUM_LEN);
    if checksum(fields) != sum {
        return None;
    }
    let mut rest = fields;
    let mut take = |len: usize| {
        let (field, after) = rest.split_at(len);
        rest = after;
        field
    };
    let u64_at = |field: &[u8]| field.try_into().ok().map(u64::from_le_bytes);
    let i128_at = |field: &[u8]| field.try_into().ok().map(i128::from_le_bytes);
    let dev = u64_at(take(8))?;
    let ino = u64_at(take(8))?;
    let size = u64_at(take(8))?;
    let mtime_ns = i128_at(take(16))?;
    let ctime_ns = i128_at(take(16))?;
    let digest = Digest::from_bytes(take(32).try_into().ok()?);
    let generation = u64_at(take(8))?;
    Some((
        (dev, ino),
        Seen {
            size,
            mtime_ns,
            ctime_ns,
            digest,
            generation,
            stored: true,
        },
    ))
}

/// What the file at `path` holds (nothing, not appendable, when it is
/// missing or unreadable).
fn read_state(path: &Path) -> io::Result<State> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(e),
    };
    let body = file.metadata()?.len().saturating_sub(HEADER.len() as u64);
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut header = [0u8; HEADER.len()];
    if reader.read_exact(&mut header).is_err() || header != HEADER {
        return Ok(State::default());
    }
    let records = usize::try_from(body / RECORD_LEN as u64).unwrap_or(usize::MAX);
    let mut state = State {
        entries: HashMap::with_capacity(records),
        records,
        appendable: body % RECORD_LEN as u64 == 0,
    };
    let mut record = [0u8; RECORD_LEN];
    for _ in 0..records {
        if reader.read_exact(&mut record).is_err() {
            // Cut shorter since its size was read: what follows is unknown.
            state.appendable = false;
            break;
        }
        if let Some((id, seen)) = decode(&record) {
            // Records are appended in the order files were read: a later
            // one is newer.
            state.entries.insert(id, seen);
        }
    }
    Ok(state)
}

impl StatCache {
    /// The store's stat cache (empty when there is none or it is unreadable).
    pub fn load(store: &Store) -> StatCache {
        // Never read again: removed so that it takes no space.
        let _ = fs::remove_file(store.root().join(OLD_FILE_NAME));
        let path = store.root().join(FILE_NAME);
        let state = read_state(&path).unwrap_or_default();
        let last = state.entries.values().map(|seen| seen.generation).max();
        StatCache {
            path,
            generation: last.unwrap_or(0) + 1,
            settled_ns: SETTLED_NS,
            max_entries: MAX_ENTRIES,
            state: Mutex::new(state),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A thread that panicked while holding it left whole entries: the
        // map is only ever changed by single inserts.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The sha256 of the regular file at `path`, whose metadata is
    /// `metadata`.
    pub fn digest(&self, path: &Path, metadata: &Metadata) -> io::Result<Digest> {
        let id = (metadata.dev(), metadata.ino());
        let (mtime_ns, ctime_ns) = times(metadata);
        if let Some(seen) = self.state().entries.get_mut(&id) {
            if seen.size == metadata.len() && seen.mtime_ns == mtime_ns && seen.ctime_ns == ctime_ns
            {
                // Kept in memory only: the file learns of it when this
                // build appends to it or compacts it, so that a build that
                // read nothing writes nothing. Until then a hit counts as
                // older than it is, should the cap be reached.
                seen.generation = self.generation;
                return Ok(seen.digest);
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
            self.state().entries.insert(
                id,
                Seen {
                    size: metadata.len(),
                    mtime_ns,
                    ctime_ns,
                    digest,
                    generation: self.generation,
                    stored: false,
                },
            );
        }
        Ok(digest)
    }

    /// Writes what this build learnt to the store: nothing when it read no
    /// file, else its records appended, or the whole cache compacted.
    pub fn save(&self) -> Result<(), Error> {
        let mut state = self.state();
        let unstored: Vec<(FileId, Seen)> = state
            .entries
            .iter()
            .filter(|(_, seen)| !seen.stored)
            .map(|(id, seen)| (*id, *seen))
            .collect();
        if unstored.is_empty() {
            return Ok(());
        }
        let live = state.entries.len();
        let dead = (state.records + unstored.len()).saturating_sub(live);
        if state.appendable && dead <= live && live <= self.max_entries {
            match self.append(&unstored) {
                Ok(()) => {
                    for (id, _) in &unstored {
                        if let Some(seen) = state.entries.get_mut(id) {
                            seen.stored = true;
                        }
                    }
                    state.records += unstored.len();
                    return Ok(());
                }
                // Removed since it was loaded (a prune): written anew.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&self.path, e)),
            }
        }
        self.compact(&mut state)
    }

    /// Adds records at the end of the file in one write, which `O_APPEND`
    /// keeps whole beside other builds' appends. Not synced: a crash may
    /// cut it short, and a record cut short is skipped.
    fn append(&self, unstored: &[(FileId, Seen)]) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(unstored.len() * RECORD_LEN);
        for (id, seen) in unstored {
            bytes.extend_from_slice(&encode(*id, seen));
        }
        // Never created here: a file without its header would be no cache.
        let mut file = OpenOptions::new().append(true).open(&self.path)?;
        file.write_all(&bytes)
    }

    /// Writes every entry (the most recently used `max_entries`) into a new
    /// file that replaces the old one whole.
    fn compact(&self, state: &mut State) -> Result<(), Error> {
        if state.entries.len() > self.max_entries {
            let mut by_recency: Vec<(FileId, Seen)> = state.entries.drain().collect();
            by_recency.sort_unstable_by_key(|(_, seen)| std::cmp::Reverse(seen.generation));
            by_recency.truncate(self.max_entries);
            state.entries = by_recency.into_iter().collect();
        }
        let mut bytes = Vec::with_capacity(HEADER.len() + state.entries.len() * RECORD_LEN);
        bytes.extend_from_slice(&HEADER);
        for (id, seen) in &state.entries {
            bytes.extend_from_slice(&encode(*id, seen));
        }
        write_atomic(&self.path, &bytes)?;
        for seen in state.entries.values_mut() {
            seen.stored = true;
        }
        state.records = state.entries.len();
        state.appendable = true;
        Ok(())
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

    /// A cache of `store` that keeps what it reads at once, as if every
    /// file had been written long ago.
    fn settled(store: &Store) -> StatCache {
        let mut cache = StatCache::load(store);
        cache.settled_ns = 0;
        cache
    }

    /// A file holding `bytes`, and its metadata.
    fn file(dir: &Path, name: &str, bytes: &[u8]) -> (PathBuf, Metadata) {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        let metadata = fs::metadata(&path).unwrap();
        (path, metadata)
    }

    /// Whether `cache` gives `digest` for a file of `metadata` without
    /// reading it: the bytes it is given instead are others.
    fn remembers(cache: &StatCache, metadata: &Metadata, digest: Digest) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let (other, _) = file(dir.path(), "other", b"other bytes");
        cache.digest(&other, metadata).unwrap() == digest
    }

    fn cache_file(store: &Store) -> PathBuf {
        store.root().join(FILE_NAME)
    }

    /// What identifies one version of the cache file.
    fn version_of(path: &Path) -> (u64, u64, i64, i64, i64, i64) {
        let metadata = fs::metadata(path).unwrap();
        (
            metadata.ino(),
            metadata.len(),
            metadata.mtime(),
            metadata.mtime_nsec(),
            metadata.ctime(),
            metadata.ctime_nsec(),
        )
    }

    fn records_in(path: &Path) -> u64 {
        let len = fs::metadata(path).unwrap().len();
        assert_eq!((len - HEADER.len() as u64) % RECORD_LEN as u64, 0);
        (len - HEADER.len() as u64) / RECORD_LEN as u64
    }

    #[test]
    fn a_build_that_reads_nothing_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let (path, metadata) = file(dir.path(), "file", b"one");
        let cache = settled(&store);
        cache.digest(&path, &metadata).unwrap();
        cache.save().unwrap();
        let before = version_of(&cache_file(&store));

        let again = settled(&store);
        assert_eq!(again.digest(&path, &metadata).unwrap(), Digest::of(b"one"));
        again.save().unwrap();
        assert_eq!(version_of(&cache_file(&store)), before);
        assert!(remembers(&settled(&store), &metadata, Digest::of(b"one")));
    }

    #[test]
    fn new_files_are_appended_to_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let (one, one_metadata) = file(dir.path(), "one", b"one");
        let (two, two_metadata) = file(dir.path(), "two", b"two");
        let cache = settled(&store);
        cache.digest(&one, &one_metadata).unwrap();
        cache.save().unwrap();
        let inode = fs::metadata(cache_file(&store)).unwrap().ino();
        assert_eq!(records_in(&cache_file(&store)), 1);

        let cache = settled(&store);
        cache.digest(&one, &one_metadata).unwrap();
        cache.digest(&two, &two_metadata).unwrap();
        cache.save().unwrap();
        assert_eq!(fs::metadata(cache_file(&store)).unwrap().ino(), inode);
        assert_eq!(records_in(&cache_file(&store)), 2);
        let reloaded = settled(&store);
        assert!(remembers(&reloaded, &one_metadata, Digest::of(b"one")));
        assert!(remembers(&reloaded, &two_metadata, Digest::of(b"two")));
    }

    #[test]
    fn a_record_cut_short_is_skipped_and_the_file_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let (one, one_metadata) = file(dir.path(), "one", b"one");
        let (two, two_metadata) = file(dir.path(), "two", b"two");
        let cache = settled(&store);
        cache.digest(&one, &one_metadata).unwrap();
        cache.save().unwrap();
        let cache = settled(&store);
        cache.digest(&two, &two_metadata).unwrap();
        cache.save().unwrap();
        // A crash in the middle of the second append.
        let path = cache_file(&store);
        let len = fs::metadata(&path).unwrap().len();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 10)
            .unwrap();

        let cache = settled(&store);
        assert!(remembers(&cache, &one_metadata, Digest::of(b"one")));
        assert!(!remembers(&cache, &two_metadata, Digest::of(b"two")));
        // Appending after the stump would misplace every later record.
        cache.digest(&two, &two_metadata).unwrap();
        cache.save().unwrap();
        assert_eq!(records_in(&path), 2);
        let reloaded = settled(&store);
        assert!(remembers(&reloaded, &one_metadata, Digest::of(b"one")));
        assert!(remembers(&reloaded, &two_metadata, Digest::of(b"two")));
    }

    #[test]
    fn a_damaged_record_never_gives_a_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let (one, metadata) = file(dir.path(), "one", b"one");
        let cache = settled(&store);
        cache.digest(&one, &metadata).unwrap();
        cache.save().unwrap();
        let path = cache_file(&store);
        let mut bytes = fs::read(&path).unwrap();
        // A bit of the digest flipped: the record would still match the
        // file's stat.
        let digest_at = HEADER.len() + 8 * 3 + 16 * 2;
        bytes[digest_at] ^= 1;
        fs::write(&path, &bytes).unwrap();

        let cache = settled(&store);
        assert!(!remembers(&cache, &metadata, Digest::of(b"one")));
        assert_eq!(cache.digest(&one, &metadata).unwrap(), Digest::of(b"one"));
    }

    #[test]
    fn another_header_is_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let (one, metadata) = file(dir.path(), "one", b"one");
        let cache = settled(&store);
        cache.digest(&one, &metadata).unwrap();
        cache.save().unwrap();
        let path = cache_file(&store);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER.len() - 1] = b'2';
        fs::write(&path, &bytes).unwrap();

        let cache = settled(&store);
        assert!(!remembers(&cache, &metadata, Digest::of(b"one")));
        cache.digest(&one, &metadata).unwrap();
        cache.save().unwrap();
        assert_eq!(fs::read(&path).unwrap()[..HEADER.len()], HEADER);
        assert!(remembers(&settled(&store), &metadata, Digest::of(b"one")));
    }

    #[test]
    fn dead_records_outweighing_live_ones_are_compacted_away() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let path = cache_file(&store);
        let mut inodes = Vec::new();
        let mut records = Vec::new();
        let mut last = None;
        for content in ["one", "two", "three"] {
            // The same file (inode) with new bytes each time.
            let (file_path, metadata) = file(dir.path(), "file", content.as_bytes());
            let cache = settled(&store);
            cache.digest(&file_path, &metadata).unwrap();
            cache.save().unwrap();
            inodes.push(fs::metadata(&path).unwrap().ino());
            records.push(records_in(&path));
            last = Some(metadata);
        }
        // One dead record beside one live one is appended to; a second
        // dead one makes the file be written again, with only the live one.
        assert_eq!(records, [1, 2, 1]);
        assert_eq!(inodes[0], inodes[1]);
        assert_ne!(inodes[1], inodes[2]);
        let metadata = last.unwrap();
        assert!(remembers(&settled(&store), &metadata, Digest::of(b"three")));
    }

    #[test]
    fn beyond_the_cap_the_least_recently_used_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let (one, one_metadata) = file(dir.path(), "one", b"one");
        let (two, two_metadata) = file(dir.path(), "two", b"two");
        let (three, three_metadata) = file(dir.path(), "three", b"three");
        let capped = || {
            let mut cache = settled(&store);
            cache.max_entries = 2;
            cache
        };
        let cache = capped();
        cache.digest(&one, &one_metadata).unwrap();
        cache.save().unwrap();
        let cache = capped();
        cache.digest(&two, &two_metadata).unwrap();
        cache.save().unwrap();
        // "one" is used again, "two" is not: "two" goes.
        let cache = capped();
        cache.digest(&one, &one_metadata).unwrap();
        cache.digest(&three, &three_metadata).unwrap();
        cache.save().unwrap();

        assert_eq!(records_in(&cache_file(&store)), 2);
        let reloaded = capped();
        assert!(remembers(&reloaded, &one_metadata, Digest::of(b"one")));
        assert!(remembers(&reloaded, &three_metadata, Digest::of(b"three")));
        assert!(!remembers(&reloaded, &two_metadata, Digest::of(b"two")));
    }

    #[test]
    fn the_old_json_cache_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let old = store.root().join(OLD_FILE_NAME);
        fs::write(&old, br#"{"generation":1,"entries":[]}"#).unwrap();
        StatCache::load(&store);
        assert!(!old.exists());
    }
}
