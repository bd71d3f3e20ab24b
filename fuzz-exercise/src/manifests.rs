//! Manifests, indexes and image configurations as a registry or an archive
//! sends them. The input is a manifest (or index), a NUL, and a
//! configuration.

use kiln_builder::cache_io::registry_cache;
use kiln_builder::image::StoredImage;
use kiln_cache::Digest;
use kiln_registry::transfer::{index_entry_for, manifest_blobs, Platform};
use kiln_registry::{manifest_media_type, Manifest, Reference};

use crate::split_in_two;

pub fn exercise(data: &[u8]) -> usize {
    let (manifest_bytes, config_bytes) = split_in_two(data);
    let digest = Digest::of(manifest_bytes);
    let media_type = manifest_media_type(manifest_bytes, "").unwrap_or_default();
    let manifest = Manifest {
        bytes: bytes::Bytes::copy_from_slice(manifest_bytes),
        media_type,
        digest,
    };
    let mut accepted = 0;
    if let Ok((_, layers)) = manifest_blobs(&manifest) {
        accepted += 1;
        assert!(
            layers.len() * 2 <= manifest_bytes.len(),
            "layers from nothing"
        );
    }
    let reference = Reference::parse("registry.test/fuzz:1").expect("a valid reference");
    let platform = Platform {
        os: "linux".to_string(),
        architecture: "amd64".to_string(),
        variant: String::new(),
    };
    if let Ok(entry) = index_entry_for(manifest_bytes, &reference, &platform) {
        assert!(!entry.is_empty(), "an entry without a digest chosen");
        accepted += 1;
    }
    accepted += usize::from(StoredImage::from_bytes(&digest, manifest_bytes, config_bytes).is_ok());
    accepted += usize::from(matches!(
        registry_cache(manifest_bytes, config_bytes),
        Ok(Some(_))
    ));
    accepted
}
