//! What the store holds (`kiln du`) and garbage collection (`kiln prune`).
//!
//! Images in `index.json` (named or not) are never touched: their
//! manifests, configurations, layers and snapshots stay. The build cache is
//! the rest: cache records and the layers and snapshots only they keep,
//! cache mounts, and the repositories and checkouts of git sources (which
//! `keep_storage` leaves alone). A plain prune removes garbage only (blobs and
//! snapshots nothing refers to, broken records, leftovers in `tmp/`);
//! `all` removes the build cache as well, `unused_for` limits that to what
//! no build used for that long, and `keep_storage` removes the least
//! recently used cache until the cache fits. Pruning holds the store's
//! exclusive lock, so it waits for running builds and they wait for it.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use oci_spec::image::{ImageIndex, ImageManifest};

use crate::digest::Digest;
use crate::error::Error;
use crate::keys::CacheRecord;
use crate::store::Store;

/// Blobs up to this size are looked at as possible image indexes kept
/// beside the manifests they list.
const INDEX_MAX_SIZE: u64 = 4 << 20;

/// What a prune may remove beyond garbage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrunePolicy {
    /// The whole build cache (within `unused_for`).
    pub all: bool,
    /// Only what no build used for at least this long.
    pub unused_for: Option<Duration>,
    /// Remove the least recently used cache until it takes at most this many
    /// bytes.
    pub keep_storage: Option<u64>,
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub records: usize,
    pub blobs: usize,
    pub snapshots: usize,
    pub cache_mounts: usize,
    /// Repositories and checkouts of git sources.
    pub git_sources: usize,
    /// Bytes of disk space given back.
    pub freed: u64,
}

/// Disk space the store takes, by kind, in bytes (allocated blocks, each
/// file counted once, as `du` counts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Blobs of the images in the store.
    pub image_blobs: u64,
    /// Blobs only the build cache keeps.
    pub cache_blobs: u64,
    /// Blobs nothing refers to (`kiln prune` removes them).
    pub unused_blobs: u64,
    /// Unpacked layers of the images.
    pub image_snapshots: u64,
    /// Unpacked layers only the build cache keeps (most of its layers are
    /// only that: a layer is compressed when something exports it).
    pub cache_snapshots: u64,
    /// Unpacked layers nothing refers to.
    pub unused_snapshots: u64,
    pub cache_mounts: u64,
    /// Repositories fetched for git sources, and their checkouts.
    pub git_sources: u64,
    pub cache_records: u64,
    pub temporary: u64,
    /// index.json, locks, the stat cache, the runtime's state.
    pub other: u64,
}

impl DiskUsage {
    pub fn total(&self) -> u64 {
        self.image_blobs
            + self.cache_blobs
            + self.unused_blobs
            + self.image_snapshots
            + self.cache_snapshots
            + self.unused_snapshots
            + self.cache_mounts
            + self.git_sources
            + self.cache_records
            + self.temporary
            + self.other
    }
}

/// Allocated bytes of everything at and below `path`, counting each inode
/// once across calls (as `du` does with hard links).
fn allocated(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(metadata) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = 0;
    if seen.insert((metadata.dev(), metadata.ino())) {
        total += metadata.blocks() * 512;
    }
    if metadata.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.flatten() {
                total += allocated(&entry.path(), seen);
            }
        }
    }
    total
}

fn modified(path: &Path) -> SystemTime {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// What the images need, as it is gathered.
#[derive(Default)]
struct Roots {
    blobs: HashSet<Digest>,
    diff_ids: HashSet<Digest>,
    /// Manifests and indexes still to read.
    pending: Vec<Digest>,
}

/// A cache record on disk.
struct RecordFile {
    path: PathBuf,
    record: CacheRecord,
    last_used: SystemTime,
}

/// A cache mount instance directory and its lock file.
struct MountInstance {
    dir: PathBuf,
    lock: PathBuf,
    last_used: SystemTime,
}

impl Store {
    fn records_dir(&self) -> PathBuf {
        self.root().join("cache-keys")
    }

    /// Marks a cache record as used now, for `unused_for` and
    /// `keep_storage`.
    pub fn mark_record_used(&self, key: &Digest) {
        let path = self.records_dir().join(key.hex());
        if let Ok(file) = fs::File::options().append(true).open(path) {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    /// The blobs and layer diff IDs the images in `index.json` need. An
    /// image whose manifest or configuration cannot be read would lose all
    /// its layers to a collection that skipped it: `strict` (prune) fails
    /// then; otherwise (du) it is skipped.
    fn image_roots(&self, strict: bool) -> Result<(HashSet<Digest>, HashSet<Digest>), Error> {
        let mut roots = Roots {
            pending: self
                .images()?
                .iter()
                .filter_map(|entry| entry.manifest.digest().to_string().parse().ok())
                .collect(),
            ..Roots::default()
        };
        while let Some(digest) = roots.pending.pop() {
            if !roots.blobs.insert(digest) {
                continue;
            }
            match self.add_image(&digest, &mut roots) {
                Err(e) if strict => return Err(e),
                Ok(()) | Err(_) => {}
            }
        }
        Ok((roots.blobs, roots.diff_ids))
    }

    /// Adds what the manifest or index `digest` needs to `roots`.
    fn add_image(&self, digest: &Digest, roots: &mut Roots) -> Result<(), Error> {
        let unreadable = |at: &Digest, reason: &str| Error::BadStore {
            path: self.blob_path(at),
            reason: format!(
                "an image's {reason}: nothing is pruned until `kiln check` finds no problem"
            ),
        };
        let sha256 = |descriptor: &oci_spec::image::Descriptor| {
            descriptor
                .digest()
                .to_string()
                .parse::<Digest>()
                .map_err(|_| unreadable(digest, "manifest names a digest that is not sha256"))
        };
        let bytes = self
            .read_blob(digest)
            .map_err(|_| unreadable(digest, "manifest cannot be read"))?;
        if let Ok(manifest) = ImageManifest::from_reader(&bytes[..]) {
            let config = sha256(manifest.config())?;
            roots.blobs.insert(config);
            let config_bytes = self
                .read_blob(&config)
                .map_err(|_| unreadable(&config, "configuration cannot be read"))?;
            roots.diff_ids.extend(config_diff_ids(&config_bytes));
            for layer in manifest.layers() {
                roots.blobs.insert(sha256(layer)?);
            }
        } else if let Ok(index) = ImageIndex::from_reader(&bytes[..]) {
            for manifest in index.manifests() {
                roots.pending.push(sha256(manifest)?);
            }
        } else {
            return Err(unreadable(
                digest,
                "manifest is neither a manifest nor an index",
            ));
        }
        Ok(())
    }

    fn record_files(&self) -> Vec<(PathBuf, Option<CacheRecord>, SystemTime)> {
        let Ok(entries) = fs::read_dir(self.records_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|entry| {
                let path = entry.path();
                let record = fs::read(&path)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<CacheRecord>(&bytes).ok());
                let last_used = modified(&path);
                (path, record, last_used)
            })
            .collect()
    }

    fn mount_instances(&self) -> Vec<MountInstance> {
        let mut instances = Vec::new();
        let Ok(ids) = fs::read_dir(self.root().join("cache-mounts")) else {
            return instances;
        };
        for id in ids.flatten() {
            let Ok(entries) = fs::read_dir(id.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let dir = entry.path();
                let is_instance = entry
                    .file_name()
                    .to_str()
                    .is_some_and(|name| name.parse::<u32>().is_ok());
                if is_instance && dir.is_dir() {
                    let lock = dir.with_extension("lock");
                    let last_used = modified(&lock).max(modified(&dir));
                    instances.push(MountInstance {
                        dir,
                        lock,
                        last_used,
                    });
                }
            }
        }
        instances
    }

    /// How much space the store takes, by kind.
    pub fn disk_usage(&self) -> Result<DiskUsage, Error> {
        let (image_blobs, image_diff_ids) = self.image_roots(false)?;
        let cache_layers: Vec<_> = self
            .record_files()
            .into_iter()
            .filter_map(|(_, record, _)| record?.layer)
            .collect();
        let cache_blobs: HashSet<Digest> = cache_layers.iter().map(|layer| layer.blob).collect();
        let cache_diff_ids: HashSet<Digest> =
            cache_layers.iter().map(|layer| layer.diff_id).collect();
        let mut seen = HashSet::new();
        let mut usage = DiskUsage::default();
        let blobs_dir = self.blobs_dir();
        if let Ok(entries) = fs::read_dir(&blobs_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let size = allocated(&path, &mut seen);
                let digest = digest_named(&entry);
                match digest {
                    Some(d) if image_blobs.contains(&d) => usage.image_blobs += size,
                    Some(d) if cache_blobs.contains(&d) => usage.cache_blobs += size,
                    _ => usage.unused_blobs += size,
                }
            }
        }
        if let Ok(entries) = fs::read_dir(self.root().join("snapshots")) {
            for entry in entries.flatten() {
                let size = allocated(&entry.path(), &mut seen);
                let diff_id = digest_named(&entry);
                match diff_id {
                    Some(d) if image_diff_ids.contains(&d) => usage.image_snapshots += size,
                    Some(d) if cache_diff_ids.contains(&d) => usage.cache_snapshots += size,
                    _ => usage.unused_snapshots += size,
                }
            }
        }
        usage.cache_mounts = allocated(&self.root().join("cache-mounts"), &mut seen);
        usage.git_sources = allocated(&self.git_dir(), &mut seen);
        usage.cache_records = allocated(&self.records_dir(), &mut seen);
        usage.temporary = allocated(&self.root().join("tmp"), &mut seen);
        // Everything else, the directories above included.
        usage.other = allocated(self.root(), &mut seen);
        Ok(usage)
    }

    /// Removes what `policy` allows (see the module's documentation),
    /// once no build uses the store.
    pub fn prune(&self, policy: &PrunePolicy) -> Result<Pruned, Error> {
        let _exclusive = self.lock_exclusive()?;
        self.prune_locked(policy)
    }

    /// The same, but only when no other process uses the store now (none
    /// otherwise).
    pub fn prune_if_idle(&self, policy: &PrunePolicy) -> Result<Option<Pruned>, Error> {
        match self.try_lock_exclusive()? {
            Some(_exclusive) => self.prune_locked(policy).map(Some),
            None => Ok(None),
        }
    }

    fn prune_locked(&self, policy: &PrunePolicy) -> Result<Pruned, Error> {
        let before = self.disk_usage()?.total();
        let mut pruned = Pruned::default();
        self.clean_tmp()?;
        let now = SystemTime::now();
        let old_enough = |last_used: SystemTime| {
            policy
                .unused_for
                .is_none_or(|age| now.duration_since(last_used).unwrap_or_default() >= age)
        };
        let (image_blobs, image_diff_ids) = self.image_roots(true)?;

        let mut records = Vec::new();
        for (path, record, last_used) in self.record_files() {
            // A layer needs its blob, or its snapshot to make one from.
            let usable = record.as_ref().is_some_and(|record| {
                record.layer.as_ref().is_none_or(|layer| {
                    self.has_blob(&layer.blob) || self.has_snapshot(&layer.diff_id)
                })
            });
            match record {
                Some(record) if usable && !(policy.all && old_enough(last_used)) => {
                    records.push(RecordFile {
                        path,
                        record,
                        last_used,
                    })
                }
                _ => {
                    fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                    pruned.records += 1;
                }
            }
        }
        if policy.all {
            // What earlier builds' keys were made of, for --explain: a cache.
            if let Ok(entries) = fs::read_dir(self.explain_dir()) {
                for entry in entries.flatten() {
                    if old_enough(modified(&entry.path())) {
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
        }
        if policy.all {
            for (dir, lock) in self.git_sources() {
                if old_enough(modified(&dir)) {
                    self.discard(&dir)?;
                    if let Some(lock) = lock {
                        let _ = fs::remove_file(lock);
                    }
                    pruned.git_sources += 1;
                }
            }
        }
        let mut mounts = Vec::new();
        for instance in self.mount_instances() {
            if policy.all && old_enough(instance.last_used) && self.remove_mount(&instance)? {
                pruned.cache_mounts += 1;
                continue;
            }
            mounts.push(instance);
        }

        if let Some(limit) = policy.keep_storage {
            self.trim_to(
                limit,
                &image_blobs,
                &image_diff_ids,
                &mut records,
                &mut mounts,
                &mut pruned,
            )?;
        }

        // Blobs and snapshots: what images and the remaining records need
        // stays, with the indexes that list kept manifests.
        let mut live_blobs = image_blobs;
        let mut live_diff_ids = image_diff_ids;
        for record in &records {
            if let Some(layer) = &record.record.layer {
                live_blobs.insert(layer.blob);
                live_diff_ids.insert(layer.diff_id);
            }
        }
        let blobs_dir = self.blobs_dir();
        if let Ok(entries) = fs::read_dir(&blobs_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(digest) = digest_named(&entry) else {
                    continue;
                };
                if live_blobs.contains(&digest) || self.lists_a_kept_manifest(&path, &live_blobs) {
                    continue;
                }
                fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                pruned.blobs += 1;
            }
        }
        let snapshots = self.root().join("snapshots");
        if let Ok(entries) = fs::read_dir(&snapshots) {
            for entry in entries.flatten() {
                let Some(digest) = digest_named(&entry) else {
                    continue;
                };
                if !live_diff_ids.contains(&digest) {
                    self.discard(&entry.path())?;
                    pruned.snapshots += 1;
                }
            }
        }
        self.clean_tmp()?;
        pruned.freed = before.saturating_sub(self.disk_usage()?.total());
        Ok(pruned)
    }

    /// Removes the least recently used records and cache mounts until the
    /// cache takes at most `limit` bytes. A layer costs its blob and its
    /// snapshot (what an image needs costs nothing), counted once however
    /// many records share it, and freed when the last of them goes.
    fn trim_to(
        &self,
        limit: u64,
        image_blobs: &HashSet<Digest>,
        image_diff_ids: &HashSet<Digest>,
        records: &mut Vec<RecordFile>,
        mounts: &mut Vec<MountInstance>,
        pruned: &mut Pruned,
    ) -> Result<(), Error> {
        let snapshots = self.root().join("snapshots");
        let mut costs: HashMap<Digest, u64> = HashMap::new();
        let mut users: HashMap<Digest, usize> = HashMap::new();
        for record in records.iter() {
            let Some(layer) = &record.record.layer else {
                continue;
            };
            *users.entry(layer.diff_id).or_default() += 1;
            costs.entry(layer.diff_id).or_insert_with(|| {
                let blob = if image_blobs.contains(&layer.blob) {
                    0
                } else {
                    fs::metadata(self.blob_path(&layer.blob)).map_or(0, |m| m.blocks() * 512)
                };
                let snapshot = if image_diff_ids.contains(&layer.diff_id) {
                    0
                } else {
                    allocated(&snapshots.join(layer.diff_id.hex()), &mut HashSet::new())
                };
                blob + snapshot
            });
        }
        let mount_sizes: Vec<u64> = mounts
            .iter()
            .map(|m| allocated(&m.dir, &mut HashSet::new()))
            .collect();
        let mut total: u64 = costs.values().sum::<u64>() + mount_sizes.iter().sum::<u64>();
        enum Item {
            Record(usize),
            Mount(usize),
        }
        let mut items: Vec<(SystemTime, Item)> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.last_used, Item::Record(i)))
            .chain(
                mounts
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (m.last_used, Item::Mount(i))),
            )
            .collect();
        items.sort_by_key(|(last_used, _)| *last_used);
        let mut removed_records = HashSet::new();
        let mut removed_mounts = HashSet::new();
        for (_, item) in items {
            if total <= limit {
                break;
            }
            match item {
                Item::Record(i) => {
                    let record = &records[i];
                    fs::remove_file(&record.path).map_err(|e| Error::io(&record.path, e))?;
                    removed_records.insert(i);
                    pruned.records += 1;
                    if let Some(layer) = &record.record.layer {
                        let left = users.entry(layer.diff_id).or_default();
                        *left = left.saturating_sub(1);
                        if *left == 0 {
                            total = total
                                .saturating_sub(costs.get(&layer.diff_id).copied().unwrap_or(0));
                        }
                    }
                }
                Item::Mount(i) => {
                    if self.remove_mount(&mounts[i])? {
                        total = total.saturating_sub(mount_sizes[i]);
                        removed_mounts.insert(i);
                        pruned.cache_mounts += 1;
                    }
                }
            }
        }
        let mut index = 0;
        records.retain(|_| {
            index += 1;
            !removed_records.contains(&(index - 1))
        });
        let mut index = 0;
        mounts.retain(|_| {
            index += 1;
            !removed_mounts.contains(&(index - 1))
        });
        Ok(())
    }

    /// An image index whose manifests include a kept one (pulls keep the
    /// index of a tag beside the manifest they chose).
    fn lists_a_kept_manifest(&self, path: &Path, live: &HashSet<Digest>) -> bool {
        if fs::metadata(path).map_or(true, |m| m.len() > INDEX_MAX_SIZE) {
            return false;
        }
        let Ok(bytes) = fs::read(path) else {
            return false;
        };
        ImageIndex::from_reader(&bytes[..]).is_ok_and(|index| {
            index.manifests().iter().any(|manifest| {
                manifest
                    .digest()
                    .to_string()
                    .parse::<Digest>()
                    .is_ok_and(|digest| live.contains(&digest))
            })
        })
    }

    /// Removes a cache mount instance unless a step is using it.
    fn remove_mount(&self, instance: &MountInstance) -> Result<bool, Error> {
        let Ok(lock) = fs::File::options().write(true).open(&instance.lock) else {
            self.discard(&instance.dir)?;
            return Ok(true);
        };
        match lock.try_lock() {
            Ok(()) => {
                self.discard(&instance.dir)?;
                Ok(true)
            }
            Err(fs::TryLockError::WouldBlock) => Ok(false),
            Err(fs::TryLockError::Error(e)) => Err(Error::io(&instance.lock, e)),
        }
    }
}

/// The digest a directory entry of `blobs/sha256` or `snapshots` is named
/// after (its hex digits).
fn digest_named(entry: &fs::DirEntry) -> Option<Digest> {
    entry
        .file_name()
        .to_str()
        .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
}

/// The layer diff IDs an image configuration lists.
fn config_diff_ids(bytes: &[u8]) -> Vec<Digest> {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|config| {
            config["rootfs"]["diff_ids"].as_array().map(|ids| {
                ids.iter()
                    .filter_map(|id| id.as_str()?.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}
