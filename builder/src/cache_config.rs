//! The records of a build cache as kiln writes them, in a cache manifest's
//! configuration and in an image's configuration (an inline cache): each a
//! step's key and its layer by place; and the cache mounts exported with
//! them. How an export merges into the cache already there, and how a cache
//! is kept within bounds, is decided here on the lists alone.

use std::collections::HashSet;

use kiln_cache::{Digest, LayerRecord};
use serde::{Deserialize, Serialize};

/// A record as exported: its layer by index among the exported layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedRecord {
    pub key: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// When the result was first made (see `CacheRecord::created`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    /// See `CacheRecord::chain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Digest>,
    /// When a build last exported it (Unix seconds): what bounds and
    /// `kiln prune --cache-ref` go by. Caches written before merging had
    /// none: their records count as exported when they were made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported: Option<i64>,
}

/// A cache mount's content, exported with `mounts=true`: a layer-like tar of
/// the directory, for the same id on the same platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedMount {
    pub id: String,
    /// `os/arch[/variant]` of the build: what a cache holds (compiled
    /// objects, downloaded packages) is seldom right for another.
    pub platform: String,
    pub layer: usize,
    pub exported: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    pub records: Vec<ExportedRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<ExportedMount>,
}

/// A whole cache: its configuration and the layers it indexes, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheContents {
    pub config: CacheConfig,
    pub layers: Vec<LayerRecord>,
}

/// A record of an export that says what the cache already says is not
/// stamped again for this long, so that exporting a build whose steps all
/// came from the cache changes nothing and writes nothing.
pub const RESTAMP_AFTER: i64 = 3600;

/// What a cache may hold at most; `None` for no bound. The records of the
/// build being exported are kept whatever the bounds say: they are the
/// point of the export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bounds {
    /// Records and cache mounts together.
    pub max_entries: Option<usize>,
    /// The layers and cache mounts' blobs, each counted once.
    pub max_bytes: Option<u64>,
    /// Seconds since an entry was last exported.
    pub max_age: Option<i64>,
}

/// One entry of a cache with its layer itself rather than its place.
#[derive(Debug, Clone)]
enum Entry {
    Record(ExportedRecord, Option<LayerRecord>),
    Mount(ExportedMount, LayerRecord),
}

/// What makes two entries the same entry of a cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryId {
    Key(Digest),
    Mount { id: String, platform: String },
}

impl Entry {
    fn id(&self) -> EntryId {
        match self {
            Entry::Record(record, _) => EntryId::Key(record.key),
            Entry::Mount(mount, _) => EntryId::Mount {
                id: mount.id.clone(),
                platform: mount.platform.clone(),
            },
        }
    }

    fn layer(&self) -> Option<&LayerRecord> {
        match self {
            Entry::Record(_, layer) => layer.as_ref(),
            Entry::Mount(_, layer) => Some(layer),
        }
    }

    fn exported(&self) -> i64 {
        match self {
            Entry::Record(record, _) => record.exported.or(record.created).unwrap_or(0),
            Entry::Mount(mount, _) => mount.exported,
        }
    }

    fn stamp(&mut self, when: i64) {
        match self {
            Entry::Record(record, _) => record.exported = Some(when),
            Entry::Mount(mount, _) => mount.exported = when,
        }
    }
}

impl CacheContents {
    /// The entries, each with its layer; one naming a layer the cache lacks
    /// is no entry.
    fn entries(&self) -> Vec<Entry> {
        let records = self.config.records.iter().filter_map(|record| {
            let layer = match record.layer {
                None => None,
                Some(index) => Some(self.layers.get(index)?.clone()),
            };
            Some(Entry::Record(record.clone(), layer))
        });
        let mounts = self.config.mounts.iter().filter_map(|mount| {
            let layer = self.layers.get(mount.layer)?.clone();
            Some(Entry::Mount(mount.clone(), layer))
        });
        records.chain(mounts).collect()
    }

    /// The cache of `entries`, in their order, each layer listed once.
    fn of_entries(entries: Vec<Entry>) -> CacheContents {
        let mut contents = CacheContents::default();
        for entry in entries {
            match entry {
                Entry::Record(record, layer) => {
                    let index = layer.map(|layer| contents.place_layer(&layer));
                    contents.config.records.push(ExportedRecord {
                        layer: index,
                        ..record
                    });
                }
                Entry::Mount(mount, layer) => {
                    let index = contents.place_layer(&layer);
                    contents.config.mounts.push(ExportedMount {
                        layer: index,
                        ..mount
                    });
                }
            }
        }
        contents
    }

    /// The index of `layer` among the layers, added at the end when it is
    /// not one of them yet.
    pub fn place_layer(&mut self, layer: &LayerRecord) -> usize {
        match self
            .layers
            .iter()
            .position(|known| known.blob == layer.blob)
        {
            Some(index) => index,
            None => {
                self.layers.push(layer.clone());
                self.layers.len() - 1
            }
        }
    }

    /// Adds the content of cache mount `id` for `platform` (stamped when
    /// merged).
    pub fn add_mount(&mut self, id: &str, platform: &str, layer: LayerRecord) {
        let index = self.place_layer(&layer);
        self.config.mounts.push(ExportedMount {
            id: id.to_string(),
            platform: platform.to_string(),
            layer: index,
            exported: 0,
        });
    }

    /// `self` without the entries whose layer `keep` refuses.
    pub fn keeping(&self, keep: impl Fn(&LayerRecord) -> bool) -> CacheContents {
        let entries = self
            .entries()
            .into_iter()
            .filter(|entry| entry.layer().is_none_or(&keep))
            .collect();
        CacheContents::of_entries(entries)
    }

    /// The ids of every entry.
    pub fn entry_ids(&self) -> HashSet<EntryId> {
        self.entries().iter().map(Entry::id).collect()
    }

    /// The bytes of its layers, each counted once.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|layer| layer.size).sum()
    }

    /// `self` (the cache already there) with `new` (an export's entries)
    /// merged in at `now`. An entry of both takes `new`'s place in the
    /// order of `self`, and keeps its stamp if it names the same layer and
    /// was stamped less than [`RESTAMP_AFTER`] ago; new entries come last.
    /// So merging what the cache already holds gives the cache unchanged.
    pub fn merged(&self, new: &CacheContents, now: i64) -> CacheContents {
        let mut entries = self.entries();
        for mut entry in new.entries() {
            let id = entry.id();
            match entries.iter().position(|known| known.id() == id) {
                Some(index) => {
                    let known = &entries[index];
                    let same_layer = known.layer().map(|l| l.blob) == entry.layer().map(|l| l.blob);
                    if same_layer && now - known.exported() < RESTAMP_AFTER {
                        entry.stamp(known.exported());
                    } else {
                        entry.stamp(now);
                    }
                    entries[index] = entry;
                }
                None => {
                    entry.stamp(now);
                    entries.push(entry);
                }
            }
        }
        CacheContents::of_entries(entries)
    }

    /// `self` without the entries `bounds` leave out at `now`: those
    /// exported too long ago, then the least recently exported until the
    /// rest fit. Entries in `kept` stay whatever the bounds say.
    pub fn bounded(&self, bounds: &Bounds, now: i64, kept: &HashSet<EntryId>) -> CacheContents {
        let entries = self.entries();
        let mut by_recency: Vec<usize> = (0..entries.len()).collect();
        // Stable: among entries stamped at once, the earlier in the cache
        // goes first.
        by_recency.sort_by_key(|&index| {
            (
                !kept.contains(&entries[index].id()),
                std::cmp::Reverse(entries[index].exported()),
            )
        });
        let mut keep = vec![false; entries.len()];
        let mut blobs: HashSet<Digest> = HashSet::new();
        let mut bytes = 0u64;
        let mut count = 0usize;
        for index in by_recency {
            let entry = &entries[index];
            let layer = entry.layer().filter(|layer| !blobs.contains(&layer.blob));
            let added = layer.map_or(0, |layer| layer.size);
            if !kept.contains(&entry.id()) {
                let too_old = bounds
                    .max_age
                    .is_some_and(|age| now - entry.exported() > age);
                let too_many = bounds.max_entries.is_some_and(|max| count >= max);
                let too_big = bounds.max_bytes.is_some_and(|max| bytes + added > max);
                if too_old || too_many || too_big {
                    continue;
                }
            }
            if let Some(layer) = layer {
                blobs.insert(layer.blob);
            }
            bytes += added;
            count += 1;
            keep[index] = true;
        }
        let kept_entries = entries
            .into_iter()
            .zip(keep)
            .filter_map(|(entry, keep)| keep.then_some(entry))
            .collect();
        CacheContents::of_entries(kept_entries)
    }
}

#[cfg(test)]
mod tests {
    use oci_spec::image::MediaType;

    use super::*;

    fn layer(n: u8, size: u64) -> LayerRecord {
        LayerRecord {
            diff_id: Digest::of(&[n]),
            blob: Digest::of(&[n, n]),
            size,
            media_type: MediaType::ImageLayerGzip,
        }
    }

    fn key(n: u8) -> Digest {
        Digest::of(&[n, 0xee])
    }

    /// A record of a test cache: its key's number, its layer's number and
    /// size, and when it was exported.
    type TestRecord = (u8, Option<(u8, u64)>, i64);

    fn cache(records: &[TestRecord]) -> CacheContents {
        let entries = records
            .iter()
            .map(|&(k, layer_of, exported)| {
                Entry::Record(
                    ExportedRecord {
                        key: key(k),
                        layer: None,
                        created: Some(1),
                        chain: None,
                        exported: Some(exported),
                    },
                    layer_of.map(|(n, size)| layer(n, size)),
                )
            })
            .collect();
        CacheContents::of_entries(entries)
    }

    fn keys_of(contents: &CacheContents) -> Vec<Digest> {
        contents.config.records.iter().map(|r| r.key).collect()
    }

    #[test]
    fn merging_keeps_the_other_branches_records_and_adds_the_new_ones_last() {
        let main = cache(&[(1, Some((1, 10)), 100), (2, Some((2, 10)), 100)]);
        let branch = cache(&[(1, Some((1, 10)), 0), (3, Some((3, 10)), 0)]);
        let merged = main.merged(&branch, 200);
        assert_eq!(keys_of(&merged), [key(1), key(2), key(3)]);
        assert_eq!(merged.layers.len(), 3, "each layer once");
        let stamps: Vec<_> = merged.config.records.iter().map(|r| r.exported).collect();
        assert_eq!(
            stamps,
            [Some(100), Some(100), Some(200)],
            "a record stamped within the hour keeps its stamp"
        );
        let later = main.merged(&branch, 100 + RESTAMP_AFTER);
        assert_eq!(
            later.config.records[0].exported,
            Some(100 + RESTAMP_AFTER),
            "an older stamp is renewed"
        );
    }

    #[test]
    fn merging_what_the_cache_holds_changes_nothing() {
        let there = cache(&[
            (1, Some((1, 10)), 100),
            (2, None, 100),
            (3, Some((1, 10)), 90),
        ]);
        assert_eq!(there.merged(&there, 150), there);
        let rebuilt = cache(&[(1, Some((4, 10)), 0)]);
        let merged = there.merged(&rebuilt, 150);
        assert_eq!(
            merged.config.records[0].exported,
            Some(150),
            "a record with another layer is stamped anew"
        );
        assert_eq!(merged.layers.len(), 2);
    }

    #[test]
    fn bounds_drop_the_least_recently_exported_first_but_never_the_builds_own() {
        let contents = cache(&[
            (1, Some((1, 100)), 10),
            (2, Some((2, 100)), 30),
            (3, Some((3, 100)), 20),
            (4, None, 5),
        ]);
        let none = HashSet::new();
        let by_bytes = contents.bounded(
            &Bounds {
                max_bytes: Some(250),
                ..Bounds::default()
            },
            40,
            &none,
        );
        assert_eq!(keys_of(&by_bytes), [key(2), key(3), key(4)]);
        assert_eq!(by_bytes.size(), 200);
        let by_count = contents.bounded(
            &Bounds {
                max_entries: Some(2),
                ..Bounds::default()
            },
            40,
            &none,
        );
        assert_eq!(keys_of(&by_count), [key(2), key(3)]);
        let by_age = contents.bounded(
            &Bounds {
                max_age: Some(25),
                ..Bounds::default()
            },
            40,
            &none,
        );
        assert_eq!(keys_of(&by_age), [key(2), key(3)]);
        let own = HashSet::from([EntryId::Key(key(1))]);
        let kept = contents.bounded(
            &Bounds {
                max_entries: Some(1),
                ..Bounds::default()
            },
            40,
            &own,
        );
        assert_eq!(keys_of(&kept), [key(1)], "the build's own records stay");
    }

    #[test]
    fn records_sharing_a_layer_count_its_bytes_once() {
        let contents = cache(&[(1, Some((1, 100)), 10), (2, Some((1, 100)), 9)]);
        let bounded = contents.bounded(
            &Bounds {
                max_bytes: Some(100),
                ..Bounds::default()
            },
            10,
            &HashSet::new(),
        );
        assert_eq!(keys_of(&bounded), [key(1), key(2)]);
    }

    #[test]
    fn caches_written_before_merging_still_read() {
        let config: CacheConfig = serde_json::from_str(
            r#"{"records":[{"key":"sha256:0000000000000000000000000000000000000000000000000000000000000000","layer":0,"created":5}]}"#,
        )
        .unwrap();
        assert!(config.mounts.is_empty());
        let contents = CacheContents {
            config,
            layers: vec![layer(1, 1)],
        };
        assert_eq!(
            contents.entries()[0].exported(),
            5,
            "an unstamped record counts as exported when it was made"
        );
    }
}
