//! Layers as a build makes and uses them: a step's changes kept as a
//! snapshot with its diff ID, blobs written only when an export needs them,
//! and merged views of layers for steps to read.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use kiln_cache::pack::PackOptions;
use kiln_cache::{CacheRecord, Digest, LayerView, Store};

use crate::base_images::PendingLayers;
use crate::cache_io::Imported;
use crate::error::Context;
use crate::image::{Layer, LayerEncoding, StoredImage};
use crate::remote::Remote;

/// A build's layers: made from changes, viewed, and given blobs.
pub struct Layers<'a> {
    store: &'a Store,
    /// Where imported cache hits' blobs come from.
    remote: &'a Remote,
    imported: &'a Imported,
    /// Base images' layers not fetched yet.
    pending: &'a PendingLayers,
    /// How new layers are packed.
    options: PackOptions,
    /// Recompress every exported layer of another compression
    /// (`force-compression=true`), base images' too.
    force_compression: bool,
    /// Blobs written for layers that had none, by diff ID.
    written: Mutex<HashMap<Digest, Layer>>,
    /// Held while fetching, so that two stages needing one layer download
    /// it once.
    fetching: Mutex<()>,
}

impl<'a> Layers<'a> {
    pub fn new(
        store: &'a Store,
        remote: &'a Remote,
        imported: &'a Imported,
        pending: &'a PendingLayers,
        options: PackOptions,
        force_compression: bool,
    ) -> Layers<'a> {
        Layers {
            store,
            remote,
            imported,
            pending,
            options,
            force_compression,
            written: Mutex::new(HashMap::new()),
            fetching: Mutex::new(()),
        }
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Layer>> {
        // A panic elsewhere leaves the map usable.
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `layers` with a blob each in the store, as an export needs them:
    /// imported ones fetched, this build's own written from their snapshot
    /// compressed as it asks when they have no such blob yet (and their
    /// cache records updated, so that later builds reuse the blob).
    /// `ours` maps each layer this build made to the keys of the steps that
    /// made it.
    /// Base image layers not fetched yet that come from `left_in`, when
    /// given, stay in their registry, unless the build recompresses them.
    pub fn materialize(
        &self,
        layers: &[Layer],
        ours: &HashMap<Digest, Vec<Digest>>,
        left_in: Option<&str>,
    ) -> crate::Result<Vec<Layer>> {
        let options = &self.options;
        let wanted = LayerEncoding::of_compression(options.compression);
        let left: Vec<Layer> = match left_in {
            Some(registry) if !self.force_compression => layers
                .iter()
                .filter(|layer| {
                    !self.store.has_blob(&layer.blob)
                        && self
                            .pending
                            .source_of(&layer.blob)
                            .is_some_and(|source| source.registry() == registry)
                })
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        let fetched: Vec<Layer> = layers
            .iter()
            .filter(|layer| !left.contains(layer))
            .cloned()
            .collect();
        self.fetch_at_once(&fetched, false)?;
        let mut materialized = Vec::with_capacity(layers.len());
        for layer in layers {
            if left.contains(layer) {
                materialized.push(layer.clone());
                continue;
            }
            // Base image layers keep their compression; this build's are
            // compressed as it asks, from their snapshot.
            let as_asked = layer.encoding == wanted
                || !ours.contains_key(&layer.diff_id)
                || !self.store.has_snapshot(&layer.diff_id);
            let usable = if self.store.has_blob(&layer.blob) {
                as_asked
            } else {
                self.imported.import_local(self.store, layer)?
            };
            if usable && self.force_compression && layer.encoding != wanted {
                materialized.push(self.recompressed(layer)?);
                continue;
            }
            if usable {
                materialized.push(layer.clone());
                continue;
            }
            let known = self.written().get(&layer.diff_id).cloned();
            let written = match known {
                Some(written) if self.store.has_blob(&written.blob) => written,
                _ => {
                    let written = write_blob(self.store, layer, options)?;
                    self.written().insert(layer.diff_id, written.clone());
                    for key in ours.get(&layer.diff_id).into_iter().flatten() {
                        let record = CacheRecord {
                            layer: Some(written.record()),
                            ..self.store.cache_record(key).unwrap_or_default()
                        };
                        self.store.put_cache_record(key, &record)?;
                    }
                    written
                }
            };
            materialized.push(written);
        }
        Ok(materialized)
    }

    /// `layer`'s tar compressed as this build asks, once per build.
    fn recompressed(&self, layer: &Layer) -> crate::Result<Layer> {
        if let Some(written) = self.written().get(&layer.diff_id) {
            if self.store.has_blob(&written.blob) {
                return Ok(written.clone());
            }
        }
        let packed = self
            .store
            .recompress_blob(&layer.digests(), self.options.compression)
            .with_context(|| format!("recompressing the layer {}", layer.diff_id))?;
        let written = Layer::packed(&packed);
        self.written().insert(layer.diff_id, written.clone());
        Ok(written)
    }

    /// Runs `fill` on an empty directory and turns what it wrote into a
    /// layer, an empty one when nothing was written: every RUN, COPY, ADD
    /// and WORKDIR (but `/`) has a layer in BuildKit's images. A layer the
    /// build will `export` gets its blob at once, from the same reading of
    /// its files as its diff ID.
    pub fn in_diff(
        &self,
        export: bool,
        fill: impl FnOnce(&Path) -> crate::Result<()>,
    ) -> crate::Result<Option<Layer>> {
        let work = self.store.temp_dir()?;
        let diff = work.path().join("diff");
        std::fs::create_dir(&diff).with_context(|| format!("creating {}", diff.display()))?;
        fill(&diff)?;
        if export {
            let packed = self
                .store
                .snapshot_and_blob_from_diff(&diff, &self.options)?;
            return Ok(Some(Layer::packed(&packed)));
        }
        layer_from_diff(self.store, &diff, &self.options, true)
    }

    /// The image `reference` (pinned to a digest, as the lowering gives
    /// base images) names: one pulled without its layers, kept in memory,
    /// or one of the store.
    pub fn image(&self, reference: &str) -> crate::Result<StoredImage> {
        let pinned = kiln_registry::Reference::parse(reference)
            .ok()
            .and_then(|parsed| parsed.digest().and_then(|d| d.parse::<Digest>().ok()));
        if let Some(image) = pinned.and_then(|digest| self.pending.image(&digest)) {
            return Ok(image);
        }
        StoredImage::find(self.store, reference)
    }

    /// The merged file system of `layers`, fetching and unpacking what
    /// needs it.
    pub fn view(&self, layers: &[Layer]) -> crate::Result<LayerView> {
        self.fetch_layers(layers)?;
        layer_view(self.store, layers)
    }

    /// Brings the blobs of base images and imported cache hits among
    /// `layers` into the store, where they are not unpacked already.
    pub fn fetch_layers(&self, layers: &[Layer]) -> crate::Result<()> {
        let packed: Vec<Layer> = layers
            .iter()
            .filter(|layer| !self.store.has_snapshot(&layer.diff_id))
            .cloned()
            .collect();
        self.bring_in(&packed, true)
    }

    /// Brings `layers` into the store: those of registries all at once
    /// ([`Layers::fetch_at_once`]), then those of local cache directories.
    fn bring_in(&self, layers: &[Layer], unpack: bool) -> crate::Result<()> {
        self.fetch_at_once(layers, unpack)?;
        for layer in layers {
            if !self.store.has_blob(&layer.blob) {
                self.imported.import_local(self.store, layer)?;
            }
        }
        Ok(())
    }

    /// Fetches the pending base image layers and the imported cache layers
    /// from registries among `layers` that the store lacks, all at once
    /// (several transfers in flight): a cold build's first step or export
    /// waits for the slowest layer, not for the sum of them. With `unpack`
    /// (for a step that reads them), each is unpacked as its bytes arrive.
    fn fetch_at_once(&self, layers: &[Layer], unpack: bool) -> crate::Result<()> {
        let _one_at_a_time = self
            .fetching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut downloads = self.pending.wanted(self.store, layers);
        let cached = self.imported.wanted_from_registries(self.store, layers);
        for (reference, layer) in &cached {
            if !downloads.iter().any(|(_, known)| known.blob == layer.blob) {
                downloads.push((reference.clone(), layer.clone()));
            }
        }
        if cached.is_empty() {
            self.remote.fetch_layers(self.store, &downloads, unpack)?;
        } else if let Err(error) = self.remote.try_fetch_layers(self.store, &downloads, unpack) {
            if error.is_interrupted() {
                return Err(error);
            }
            self.find_unusable(&downloads, &cached, unpack)?;
        }
        self.pending.settle(self.store)?;
        for (_, layer) in &cached {
            self.imported.check_fetched(self.store, layer)?;
        }
        Ok(())
    }

    /// After a batch with imported cache layers failed: fetches what is
    /// still missing again, base layers together (whose failure is the
    /// build's), then each cached layer alone, so that the one that fails
    /// is known and given up on (see [`Imported::give_up_on`]).
    fn find_unusable(
        &self,
        downloads: &[(kiln_registry::Reference, Layer)],
        cached: &[(kiln_registry::Reference, Layer)],
        unpack: bool,
    ) -> crate::Result<()> {
        let is_cached = |layer: &Layer| cached.iter().any(|(_, c)| c.blob == layer.blob);
        let missing = |layer: &Layer| !self.store.has_blob(&layer.blob);
        let bases: Vec<_> = downloads
            .iter()
            .filter(|(_, layer)| !is_cached(layer) && missing(layer))
            .cloned()
            .collect();
        self.remote.fetch_layers(self.store, &bases, unpack)?;
        for download in cached.iter().filter(|(_, layer)| missing(layer)) {
            self.remote
                .try_fetch_layers(self.store, std::slice::from_ref(download), unpack)
                .map_err(|error| self.imported.give_up_on(&download.1, error))?;
        }
        Ok(())
    }

    /// Brings the imported cache layers among `layers` into the store (not
    /// unpacked), as an export will need them: done while the build can
    /// still start over without those that cannot be fetched.
    pub fn fetch_imported(&self, layers: &[Layer]) -> crate::Result<()> {
        let imported: Vec<Layer> = layers
            .iter()
            .filter(|layer| {
                !self.store.has_blob(&layer.blob) && self.imported.origin(&layer.blob).is_some()
            })
            .cloned()
            .collect();
        self.bring_in(&imported, false)
    }

    /// Where `layer` can be mounted or fetched from by a push, when the
    /// store lacks it: the registry of a base image or of an imported
    /// cache.
    pub fn remote_source(&self, layer: &Layer) -> Option<kiln_registry::Reference> {
        if self.store.has_blob(&layer.blob) {
            return None;
        }
        self.pending
            .source_of(&layer.blob)
            .or_else(|| self.imported.registry_of(self.store, &layer.blob))
    }
}

/// Makes a directory of changes (on the store's file system) a layer:
/// its diff ID is computed and the directory kept as its snapshot, but no
/// blob is written until something needs one (see
/// [`Layers::materialize`]). Until then the layer is described as the
/// uncompressed tar it packs to, whose digest is its diff ID. No layer when
/// the directory is empty, unless `keep_empty`.
pub fn layer_from_diff(
    store: &Store,
    diff: &Path,
    options: &PackOptions,
    keep_empty: bool,
) -> crate::Result<Option<Layer>> {
    if !keep_empty
        && std::fs::read_dir(diff)
            .with_context(|| format!("reading {}", diff.display()))?
            .next()
            .is_none()
    {
        return Ok(None);
    }
    let hashed = store.snapshot_from_diff(diff, options.source_date_epoch)?;
    Ok(Some(Layer::packed(&hashed)))
}

/// Writes the blob of a layer that has none yet, from its snapshot,
/// compressed as `options` say.
pub fn write_blob(store: &Store, layer: &Layer, options: &PackOptions) -> crate::Result<Layer> {
    Ok(Layer::packed(
        &store.blob_from_snapshot(&layer.diff_id, options)?,
    ))
}

/// The merged file system of `layers`, unpacking those not unpacked yet.
/// Layers are independent of each other: those not unpacked yet are
/// unpacked at once, a thread each (decompression is single-threaded), as
/// many at a time as there are cores.
pub fn layer_view(store: &Store, layers: &[Layer]) -> crate::Result<LayerView> {
    let digests: Vec<_> = layers.iter().map(Layer::digests).collect();
    Ok(store.view_of(&digests)?)
}
