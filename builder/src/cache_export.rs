//! `--cache-to` for registries and directories: the build's records (and,
//! with `mounts=true`, its cache mounts) merged into the cache already at
//! the destination, kept within bounds, and written only when that changes
//! it. Layers the destination has are neither checked nor sent; layers the
//! store lacks are mounted from the registry they were found in.

use std::collections::{HashMap, HashSet};

use kiln_cache::{Digest, Layout, Store};
use kiln_registry::Reference;

use crate::build::Build;
use crate::cache_config::CacheContents;
use crate::cache_io::{
    exported, read_local, read_registry, write_cache_manifest, write_local, CacheTo, Entry,
    ExportOptions, Imported, ReadCache,
};
use crate::cache_mounts::mounts_to_export;
use crate::error::{bail, Context};
use crate::image::Layer;
use crate::layers::Layers;
use crate::progress::{human_size, Progress};
use crate::remote::Remote;
use crate::units::now_seconds;

/// What the cache exports of a build read from.
pub struct CacheExport<'a> {
    pub store: &'a Store,
    pub remote: &'a Remote,
    pub imported: &'a Imported,
    pub layers: &'a Layers<'a>,
    pub build: &'a Build<'a>,
    pub progress: &'a Progress,
    /// The build's results, in the order of the Dockerfile.
    pub entries: &'a [Entry],
    /// The ids of the cache mounts its steps use.
    pub mount_ids: Vec<&'a str>,
}

impl CacheExport<'_> {
    /// Exports the cache to `to` (a registry or a directory; an inline
    /// cache goes with the image instead).
    pub fn export(&self, to: &CacheTo) -> crate::Result<()> {
        let (name, exported) = match to {
            CacheTo::Registry { reference, .. } => (reference.familiar(), "registry"),
            CacheTo::Local { dir, .. } => (dir.display().to_string(), "directory"),
            CacheTo::Inline => return Ok(()),
        };
        let step = self
            .progress
            .step(&format!("exporting cache to {exported} {name}"));
        step.finish_with(match to {
            CacheTo::Registry { reference, options } => self.to_registry(reference, options),
            CacheTo::Local { dir, options } => self.to_local(dir, options),
            CacheTo::Inline => Ok(()),
        })
    }

    fn to_registry(&self, reference: &Reference, options: &ExportOptions) -> crate::Result<()> {
        let name = reference.familiar();
        let old = if options.merge {
            self.readable(
                read_registry(
                    reference,
                    self.store,
                    self.remote,
                    self.imported.read_from(reference),
                ),
                &name,
            )
        } else {
            None
        };
        // Blobs of the cache merged into are in the repository already.
        let present: HashSet<Digest> = old
            .iter()
            .flat_map(|old| old.contents.layers.iter().map(|layer| layer.blob))
            .collect();
        let mut elsewhere: HashMap<Digest, Reference> = HashMap::new();
        let entries = self.with_blobs(|layer| {
            if present.contains(&layer.blob) {
                return true;
            }
            match self.layers.remote_source(layer) {
                Some(source) => {
                    elsewhere.insert(layer.blob, source);
                    true
                }
                None => false,
            }
        })?;
        let mut new = exported(&entries);
        if let Some(max_size) = options.mounts_max_size {
            let reachable = |blob: &Digest| {
                self.store.has_blob(blob)
                    || present.contains(blob)
                    || self.imported.registry_of(self.store, blob).is_some()
            };
            for (id, layer) in self.mounts(max_size, &reachable)? {
                if !self.store.has_blob(&layer.blob) && !present.contains(&layer.blob) {
                    if let Some(source) = self.imported.registry_of(self.store, &layer.blob) {
                        elsewhere.insert(layer.blob, source);
                    }
                }
                new.add_mount(&id, &host_platform(), layer);
            }
        }
        let Some(merged) = self.merge(old.as_ref(), &new, options, &name) else {
            return Ok(());
        };
        let (manifest, _) = write_cache_manifest(self.store, &merged)?;
        let uploaded = self.remote.push(
            self.store,
            &manifest,
            std::slice::from_ref(reference),
            &elsewhere,
            &present,
        )?;
        self.progress.note(&format!(
            "exported the cache to {name}: {} record(s), {} uploaded",
            merged.config.records.len(),
            human_size(uploaded)
        ));
        Ok(())
    }

    fn to_local(&self, dir: &std::path::Path, options: &ExportOptions) -> crate::Result<()> {
        let name = dir.display().to_string();
        let layout = Layout::new(dir);
        let in_dir = |blob: &Digest| layout.blob_path(blob).is_file();
        let old = if options.merge {
            self.readable(read_local(dir), &name).map(|old| ReadCache {
                // Blobs someone removed from the directory are no cache.
                contents: old.contents.keeping(|layer| in_dir(&layer.blob)),
                ..old
            })
        } else {
            None
        };
        let entries = self.with_blobs(|_| false)?;
        let mut new = exported(&entries);
        if let Some(max_size) = options.mounts_max_size {
            let reachable = |blob: &Digest| self.store.has_blob(blob) || in_dir(blob);
            for (id, layer) in self.mounts(max_size, &reachable)? {
                new.add_mount(&id, &host_platform(), layer);
            }
        }
        let Some(merged) = self.merge(old.as_ref(), &new, options, &name) else {
            return Ok(());
        };
        let (manifest, size) = write_cache_manifest(self.store, &merged)?;
        write_local(self.store, dir, &manifest, size)?;
        self.progress.note(&format!(
            "exported the cache to {name}: {} record(s)",
            merged.config.records.len()
        ));
        Ok(())
    }

    /// The cache `read` found, or none (with a warning) when it could not
    /// be read: the export then replaces it.
    fn readable(&self, read: crate::Result<Option<ReadCache>>, name: &str) -> Option<ReadCache> {
        match read {
            Ok(Some(cache)) if !cache.inline => Some(cache),
            Ok(_) => None,
            Err(error) => {
                self.progress.warn(&format!(
                    "the cache at {name} cannot be read to merge into ({}): it is replaced",
                    error.one_line()
                ));
                None
            }
        }
    }

    /// The build's entries with a blob for each layer: those `left` says
    /// the destination will get elsewhere stay as they are, the rest are
    /// brought into the store (see [`Build::materialize`]).
    fn with_blobs(&self, mut left: impl FnMut(&Layer) -> bool) -> crate::Result<Vec<Entry>> {
        let mut wanted: Vec<Layer> = Vec::new();
        for layer in self.entries.iter().filter_map(|entry| entry.layer.as_ref()) {
            if !left(layer) && !wanted.contains(layer) {
                wanted.push(layer.clone());
            }
        }
        let materialized = self.build.materialize(&wanted, None)?;
        let blob_of: HashMap<Digest, Layer> = wanted
            .iter()
            .zip(materialized)
            .map(|(layer, written)| (layer.blob, written))
            .collect();
        Ok(self
            .entries
            .iter()
            .map(|entry| Entry {
                layer: entry
                    .layer
                    .as_ref()
                    .map(|layer| blob_of.get(&layer.blob).unwrap_or(layer).clone()),
                ..entry.clone()
            })
            .collect())
    }

    fn mounts(
        &self,
        max_size: u64,
        reachable: &dyn Fn(&Digest) -> bool,
    ) -> crate::Result<Vec<(String, kiln_cache::LayerRecord)>> {
        mounts_to_export(
            self.store,
            &self.mount_ids,
            max_size,
            reachable,
            self.progress,
        )
    }

    /// `new` merged into `old` (when there is one to merge into) and kept
    /// within bounds; none when that is what `old` holds already, so there
    /// is nothing to write.
    fn merge(
        &self,
        old: Option<&ReadCache>,
        new: &CacheContents,
        options: &ExportOptions,
        name: &str,
    ) -> Option<CacheContents> {
        // The clock, never `SOURCE_DATE_EPOCH`: that would make every
        // export look as old.
        let now = now_seconds();
        let base = old.map(|old| old.contents.clone()).unwrap_or_default();
        let merged = base
            .merged(new, now)
            .bounded(&options.bounds, now, &new.entry_ids());
        if old.is_some_and(|old| old.contents == merged) {
            self.progress
                .note(&format!("the cache at {name} is up to date"));
            return None;
        }
        Some(merged)
    }
}

fn host_platform() -> String {
    kiln_frontend::Platform::host().to_string()
}

/// What [`prune_registry_cache`] did to a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePruned {
    /// Records and cache mounts, before and after.
    pub entries: (usize, usize),
    /// Bytes of layers and cache mounts it names, before and after.
    pub bytes: (u64, u64),
}

/// Removes from the registry cache `reference` the entries `bounds` leave
/// out (those exported longest ago first), writing it back only when that
/// changes it. The layers no entry names any more stay in the registry's
/// storage until its own garbage collection.
pub fn prune_registry_cache(
    store: &Store,
    remote: &Remote,
    reference: &Reference,
    bounds: &crate::cache_config::Bounds,
) -> crate::Result<CachePruned> {
    let name = reference.familiar();
    let cache = read_registry(reference, store, remote, None)
        .with_context(|| format!("reading the cache {name}"))?
        .with_context(|| format!("{name} holds no kiln cache"))?;
    if cache.inline {
        bail!(
            "{name} is an image with an inline cache: prune a cache written by --cache-to type=registry"
        );
    }
    let count =
        |contents: &CacheContents| contents.config.records.len() + contents.config.mounts.len();
    let pruned = cache
        .contents
        .bounded(bounds, now_seconds(), &HashSet::new());
    if pruned != cache.contents {
        let present: HashSet<Digest> = cache.contents.layers.iter().map(|l| l.blob).collect();
        let (manifest, _) = write_cache_manifest(store, &pruned)?;
        remote.push(
            store,
            &manifest,
            std::slice::from_ref(reference),
            &HashMap::new(),
            &present,
        )?;
    }
    Ok(CachePruned {
        entries: (count(&cache.contents), count(&pruned)),
        bytes: (cache.contents.size(), pruned.size()),
    })
}
