//! Base images as the frontend asks for them while lowering: from the
//! store, pulled from their registry when the store lacks them (or always
//! looked up there with `--pull`).

use std::collections::HashMap;

use kiln_cache::Store;
use kiln_frontend::graph::ImageConfig;
use kiln_frontend::{BaseImages, Platform, ResolvedImage};
use kiln_registry::Reference;

use crate::image::StoredImage;
use crate::remote::Remote;

/// Base images for the frontend: from the store, pulled from their
/// registry when the store lacks them (or with `pull`, always looked up
/// there), each reference once per build.
pub struct StoreImages<'a> {
    pub store: &'a Store,
    /// Where to pull from; none keeps to the store.
    pub remote: Option<&'a Remote>,
    /// Ask the registry even for images the store has (`--pull`).
    pub pull: bool,
    resolved: HashMap<(String, String), ResolvedImage>,
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
            resolved: HashMap::new(),
        }
    }

    fn find(&self, reference: &str, platform: &Platform) -> crate::Result<StoredImage> {
        let parsed = Reference::parse(reference)?;
        // A digest names one image for good: no need to ask again.
        let ask_registry = self.pull && parsed.digest().is_none();
        if !ask_registry {
            if let Ok(image) = StoredImage::find(self.store, reference) {
                if platform_matches(&image.config.platform(), platform) || self.remote.is_none() {
                    return Ok(image);
                }
            }
        }
        let Some(remote) = self.remote else {
            return StoredImage::find(self.store, reference);
        };
        let digest = remote.pull(self.store, &parsed, platform)?;
        StoredImage::read(self.store, &digest)
    }
}

impl BaseImages for StoreImages<'_> {
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        let key = (reference.to_string(), platform.to_string());
        if let Some(resolved) = self.resolved.get(&key) {
            return Ok(resolved.clone());
        }
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
        let resolved = ResolvedImage {
            reference: pinned.to_string(),
            config: image.config.config,
        };
        self.resolved.insert(key, resolved.clone());
        Ok(resolved)
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
