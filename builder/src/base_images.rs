//! Base images as the frontend asks for them while lowering: from the
//! store, pulled from their registry when the store lacks them (or always
//! looked up there with `--pull`). A build pulls a base image's manifest
//! and configuration only, which give its keys and settings; its layers
//! come when a step that runs, a copy or an export needs their bytes, so
//! that a build whose steps are all cache hits downloads none of a builder
//! stage's base.

use std::collections::HashMap;
use std::sync::Mutex;

use kiln_cache::{Digest, Store};
use kiln_frontend::graph::ImageConfig;
use kiln_frontend::{BaseImages, Platform, ResolvedImage};
use kiln_registry::Reference;
use oci_spec::image::Descriptor;

use crate::image::{Layer, StoredImage};
use crate::remote::{name_in_store, ConfigOnly, Remote};

/// Base images for the frontend: from the store, pulled from their
/// registry when the store lacks them (or with `pull`, always looked up
/// there), each reference once per build.
pub struct StoreImages<'a> {
    pub store: &'a Store,
    /// Where to pull from; none keeps to the store.
    pub remote: Option<&'a Remote>,
    /// Ask the registry even for images the store has (`--pull`).
    pub pull: bool,
    /// Where images are pulled without their layers; none pulls them whole.
    pending: Option<&'a PendingLayers>,
    /// What each reference and platform resolved to (or why it could not
    /// be), once per build.
    resolved: HashMap<(String, String), Result<ResolvedImage, String>>,
}

fn platform_matches(found: &Platform, wanted: &Platform) -> bool {
    let variant_differs =
        !found.variant.is_empty() && !wanted.variant.is_empty() && found.variant != wanted.variant;
    found.os == wanted.os && found.architecture == wanted.architecture && !variant_differs
}

impl<'a> StoreImages<'a> {
    pub fn new(store: &'a Store, remote: Option<&'a Remote>, pull: bool) -> Self {
        StoreImages {
            store,
            remote,
            pull,
            pending: None,
            resolved: HashMap::new(),
        }
    }

    /// Pulls images without their layers, leaving them to `pending`.
    pub fn layers_later(mut self, pending: &'a PendingLayers) -> Self {
        self.pending = Some(pending);
        self
    }

    fn find(&self, reference: &str, platform: &Platform) -> crate::Result<StoredImage> {
        let parsed = Reference::parse(reference)?;
        // A digest names one image for good: no need to ask again.
        let ask_registry = self.pull && parsed.digest().is_none();
        if !ask_registry {
            if let Ok(image) = StoredImage::find(self.store, reference) {
                // A manifest the store has without all its layers (left
                // by a kiln that wrote those of bases pulled without their
                // layers) is looked up again, so that the layers are
                // fetched where they are needed.
                let whole = image.is_whole(self.store);
                let usable =
                    platform_matches(&image.config.platform(), platform) || self.remote.is_none();
                if usable && (whole || self.remote.is_none()) {
                    return Ok(image);
                }
            }
        }
        let Some(remote) = self.remote else {
            return StoredImage::find(self.store, reference);
        };
        match self.pending {
            Some(pending) => {
                let pulled = remote.pull_config(self.store, &parsed, platform)?;
                let image = pulled.image.clone();
                pending.add(self.store, &parsed, pulled)?;
                Ok(image)
            }
            None => {
                let digest = remote.pull(self.store, &parsed, platform)?;
                StoredImage::read(self.store, &digest)
            }
        }
    }
}

/// The layers of base images pulled without them: where each is fetched
/// from, and the images the store names once all their layers are in it.
/// Shared by the lowering, which pulls, and the build, whose steps and
/// export fetch what they read (see `Layers::fetch_layers`).
#[derive(Default)]
pub struct PendingLayers {
    state: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    /// The repository each pending blob is fetched from.
    sources: HashMap<Digest, Reference>,
    images: Vec<PendingImage>,
}

/// An image to write and name in the store once its layers are there;
/// until then its manifest and configuration are kept here only.
struct PendingImage {
    name: Option<String>,
    descriptor: Descriptor,
    pulled: ConfigOnly,
}

impl PendingImage {
    fn is_whole(&self, store: &Store) -> bool {
        self.pulled.image.is_whole(store)
    }
}

impl PendingLayers {
    fn state(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic elsewhere leaves the map usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records where the layers of an image pulled from `reference`
    /// without them come from, and keeps its manifest and configuration.
    fn add(&self, store: &Store, reference: &Reference, pulled: ConfigOnly) -> crate::Result<()> {
        let pending_image = PendingImage {
            name: name_in_store(reference),
            descriptor: pulled.image.descriptor()?,
            pulled,
        };
        let mut state = self.state();
        for layer in &pending_image.pulled.image.layers {
            if !store.has_blob(&layer.blob) {
                state
                    .sources
                    .entry(layer.blob)
                    .or_insert_with(|| reference.clone());
            }
        }
        state.images.push(pending_image);
        name_whole_images(store, &mut state)
    }

    /// Those of `layers` that are pending, each with where it comes from.
    pub fn wanted(&self, store: &Store, layers: &[Layer]) -> Vec<(Reference, Layer)> {
        let state = self.state();
        layers
            .iter()
            .filter(|layer| !store.has_blob(&layer.blob))
            .filter_map(|layer| Some((state.sources.get(&layer.blob)?.clone(), layer.clone())))
            .collect()
    }

    /// The image whose manifest is `manifest`, if it is one of those pulled
    /// without their layers and not written to the store.
    pub fn image(&self, manifest: &Digest) -> Option<StoredImage> {
        self.state()
            .images
            .iter()
            .find(|pending| pending.pulled.image.manifest_digest == *manifest)
            .map(|pending| pending.pulled.image.clone())
    }

    /// The repository a pending layer's blob is fetched from.
    pub fn source_of(&self, blob: &Digest) -> Option<Reference> {
        self.state().sources.get(blob).cloned()
    }

    /// Where each pending blob is fetched from.
    pub fn sources(&self) -> HashMap<Digest, Reference> {
        self.state().sources.clone()
    }

    /// Forgets the layers now in the store and names the images that are
    /// whole.
    pub fn settle(&self, store: &Store) -> crate::Result<()> {
        let mut state = self.state();
        state.sources.retain(|blob, _| !store.has_blob(blob));
        name_whole_images(store, &mut state)
    }
}

/// Writes and names in the store the pending images whose layers are all
/// there: the configuration and the manifest after the layers, so that the
/// store never holds a manifest whose blobs are missing.
fn name_whole_images(store: &Store, state: &mut Pending) -> crate::Result<()> {
    let (whole, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut state.images)
        .into_iter()
        .partition(|image| image.is_whole(store));
    state.images = waiting;
    for image in whole {
        store.write_blob(&image.pulled.config)?;
        store.write_blob(&image.pulled.manifest)?;
        store.set_name(image.name.as_deref(), &image.descriptor)?;
    }
    Ok(())
}

impl StoreImages<'_> {
    /// The image `reference` names for `platform`, pinned to its digest.
    fn look_up(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        let parsed = Reference::parse(reference).map_err(|e| e.to_string())?;
        let image = self
            .find(reference, platform)
            .map_err(|e| format!("{e:#}"))?;
        let found = image.config.platform();
        if !platform_matches(&found, platform) {
            return Err(format!(
                "the image in the store is for {found}, not {platform}"
            ));
        }
        let pinned = parsed.with_digest(&image.manifest_digest.to_string());
        Ok(ResolvedImage {
            reference: pinned.to_string(),
            config: image.config.config,
        })
    }
}

impl BaseImages for StoreImages<'_> {
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        let key = (reference.to_string(), platform.to_string());
        if let Some(resolved) = self.resolved.get(&key) {
            return resolved.clone();
        }
        let resolved = self.look_up(reference, platform);
        if resolved.is_ok() {
            self.resolved.insert(key, resolved.clone());
        }
        resolved
    }

    /// Looks the images up at once, a thread each: a build with several
    /// base images waits for the slowest pull, not for all of them in turn.
    /// What each lookup found, or why it failed, is what `resolve` answers
    /// for it then.
    fn prefetch(&mut self, wanted: &[(String, Platform)]) {
        if self.remote.is_none() {
            return;
        }
        let this = &*self;
        let found: Vec<((String, String), Result<ResolvedImage, String>)> =
            std::thread::scope(|scope| {
                let lookups: Vec<_> = wanted
                    .iter()
                    .filter(|(reference, platform)| {
                        !this
                            .resolved
                            .contains_key(&(reference.clone(), platform.to_string()))
                    })
                    .map(|(reference, platform)| {
                        let key = (reference.clone(), platform.to_string());
                        (key, scope.spawn(move || this.look_up(reference, platform)))
                    })
                    .collect();
                lookups
                    .into_iter()
                    .map(|(key, lookup)| {
                        let result = lookup
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                        (key, result)
                    })
                    .collect()
            });
        self.resolved.extend(found);
    }
}

/// Base images from the store when it has them, and with an empty
/// configuration otherwise: for showing a graph without pulling anything.
pub struct StoreOrUnknownImages<'a> {
    pub store: &'a Store,
}

impl BaseImages for StoreOrUnknownImages<'_> {
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        StoreImages::new(self.store, None, false)
            .resolve(reference, platform)
            .or_else(|_| {
                Ok(ResolvedImage {
                    reference: reference.to_string(),
                    config: ImageConfig::default(),
                })
            })
    }
}
