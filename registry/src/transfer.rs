//! Whole images between a registry and the store: pull (resolve, pick the
//! platform, fetch what the store lacks, several blobs at once) and push
//! (blobs first, several at once, then the manifest, then every tag).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use futures_util::stream::{self, TryStreamExt};
use kiln_cache::{Digest, Store};

use crate::client::Client;
use crate::error::Error;
use crate::manifest::{manifest_media_type, Manifest};
use crate::reference::Reference;
use crate::upload::Pushed;

/// The platform an image is wanted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    /// Empty when any variant will do.
    pub variant: String,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// Variants that mean the same thing written differently.
fn normal_variant(architecture: &str, variant: &str) -> String {
    match (architecture, variant) {
        ("arm64", "v8") => String::new(),
        ("arm", "") => "v7".to_string(),
        _ => variant.to_string(),
    }
}

impl Platform {
    fn accepts(&self, os: &str, architecture: &str, variant: &str) -> bool {
        os == self.os
            && architecture == self.architecture
            && (self.variant.is_empty()
                || normal_variant(architecture, variant)
                    == normal_variant(&self.architecture, &self.variant))
    }
}

/// A blob an image manifest names.
#[derive(Debug, Clone)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// The config and layers of an image manifest.
pub fn manifest_blobs(manifest: &Manifest) -> Result<(BlobRef, Vec<BlobRef>), Error> {
    let invalid = |reason: String| Error::InvalidManifest {
        reference: manifest.digest.to_string(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(&manifest.bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let blob = |value: &serde_json::Value| -> Result<BlobRef, Error> {
        let digest = value
            .get("digest")
            .and_then(|d| d.as_str())
            .and_then(|d| d.parse::<Digest>().ok())
            .ok_or_else(|| invalid("a descriptor without a sha256 digest".to_string()))?;
        let size = value
            .get("size")
            .and_then(|s| s.as_u64())
            .ok_or_else(|| invalid(format!("descriptor {digest} has no size")))?;
        let media_type = value
            .get("mediaType")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_string();
        Ok(BlobRef {
            digest,
            size,
            media_type,
        })
    };
    let config = blob(
        value
            .get("config")
            .ok_or_else(|| invalid("no config".to_string()))?,
    )?;
    let layers = value
        .get("layers")
        .and_then(|l| l.as_array())
        .ok_or_else(|| invalid("no layers".to_string()))?
        .iter()
        .map(blob)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((config, layers))
}

/// The image manifest for `platform` that `reference` names: the manifest
/// itself, or the matching one of the index it names.
pub async fn resolve(
    client: &Client,
    reference: &Reference,
    platform: &Platform,
) -> Result<Manifest, Error> {
    Ok(resolve_in(client, None, reference, platform).await?.0)
}

/// A manifest by tag or digest, from the store when it has the digest the
/// registry names (a HEAD instead of a GET, which registries count against
/// pull limits), from the registry otherwise.
async fn manifest(
    client: &Client,
    store: Option<&Store>,
    reference: &Reference,
    target: &str,
) -> Result<Manifest, Error> {
    if let Some(store) = store {
        let known = match target.parse::<Digest>() {
            Ok(digest) => Some(digest),
            // A registry that fails the HEAD may still answer the GET.
            Err(_) => client
                .head_manifest(reference, target)
                .await
                .ok()
                .flatten()
                .map(|(digest, _, _)| digest),
        };
        if let Some(digest) = known.filter(|d| store.has_blob(d)) {
            let bytes = store.read_blob(&digest)?;
            if let Some(media_type) = manifest_media_type(&bytes, "") {
                return Ok(Manifest {
                    bytes: bytes.into(),
                    media_type,
                    digest,
                });
            }
        }
    }
    client.get_manifest(reference, target).await
}

/// The image manifest for `platform`, and the index it came from.
async fn resolve_in(
    client: &Client,
    store: Option<&Store>,
    reference: &Reference,
    platform: &Platform,
) -> Result<(Manifest, Option<Manifest>), Error> {
    let target = reference
        .digest()
        .or(reference.tag())
        .unwrap_or("latest")
        .to_string();
    let top = manifest(client, store, reference, &target).await?;
    if !top.is_index() {
        return Ok((top, None));
    }
    let digest = index_entry_for(&top.bytes, reference, platform)?;
    let chosen = manifest(client, store, reference, &digest).await?;
    if chosen.is_index() {
        return Err(Error::InvalidManifest {
            reference: reference.to_string(),
            reason: format!("its entry for {platform} is an index, not an image"),
        });
    }
    Ok((chosen, Some(top)))
}

/// The digest of the entry for `platform` in the image index `index` (as
/// `reference` named it, for errors). Entries without an OS (attestations)
/// are passed over.
pub fn index_entry_for(
    index: &[u8],
    reference: &Reference,
    platform: &Platform,
) -> Result<String, Error> {
    let index: serde_json::Value =
        serde_json::from_slice(index).map_err(|e| Error::InvalidManifest {
            reference: reference.to_string(),
            reason: format!("its index is not JSON: {e}"),
        })?;
    let entries = index
        .get("manifests")
        .and_then(|m| m.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut available = Vec::new();
    for entry in entries {
        let field = |name: &str| {
            entry
                .get("platform")
                .and_then(|p| p.get(name))
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let (os, architecture, variant) = (field("os"), field("architecture"), field("variant"));
        if os.is_empty() || os == "unknown" {
            // Attestations and other non-images.
            continue;
        }
        if platform.accepts(&os, &architecture, &variant) {
            return entry
                .get("digest")
                .and_then(|d| d.as_str())
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .ok_or_else(|| Error::InvalidManifest {
                    reference: reference.to_string(),
                    reason: format!("its entry for {platform} has no digest"),
                });
        }
        available.push(
            Platform {
                os,
                architecture,
                variant,
            }
            .to_string(),
        );
    }
    Err(Error::NoMatchingPlatform {
        reference: reference.to_string(),
        platform: platform.to_string(),
        available: if available.is_empty() {
            "none".to_string()
        } else {
            available.join(", ")
        },
    })
}

/// Each blob once, in the order first named: an image may hold the same
/// layer twice.
fn distinct(blobs: impl IntoIterator<Item = BlobRef>) -> Vec<BlobRef> {
    let mut seen = std::collections::HashSet::new();
    blobs
        .into_iter()
        .filter(|blob| seen.insert(blob.digest))
        .collect()
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub manifest: Manifest,
    /// Blobs fetched, and how many bytes; the others were in the store.
    pub fetched: usize,
    pub fetched_bytes: u64,
}

/// Pulls the image `reference` names for `platform` into the store: the
/// blobs it lacks (`jobs` at once), then the manifest. Naming it is left to
/// the caller.
pub async fn pull(
    client: &Client,
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    jobs: usize,
    progress: &(dyn Fn(&Digest, u64) + Sync),
) -> Result<Pulled, Error> {
    let (manifest, index) = resolve_in(client, Some(store), reference, platform).await?;
    let (config, layers) = manifest_blobs(&manifest)?;
    let missing: Vec<BlobRef> = distinct(std::iter::once(config).chain(layers))
        .into_iter()
        .filter(|blob| !store.has_blob(&blob.digest))
        .collect();
    let fetched = missing.len();
    let fetched_bytes = missing.iter().map(|b| b.size).sum();
    let sources: Vec<BlobFetch> = missing
        .into_iter()
        .map(|blob| BlobFetch {
            from: reference.clone(),
            blob,
            unpack_as: None,
        })
        .collect();
    fetch_blobs(client, store, &sources, jobs, progress).await?;
    // The manifest comes last, so a store never holds one whose blobs are
    // missing.
    // The index too, so that the next pull of the tag finds both here.
    for document in std::iter::once(&manifest).chain(index.as_ref()) {
        let (digest, _) = store.write_blob(&document.bytes)?;
        if digest != document.digest {
            return Err(Error::Cache(kiln_cache::Error::DigestMismatch {
                expected: document.digest,
                actual: digest,
            }));
        }
    }
    Ok(Pulled {
        manifest,
        fetched,
        fetched_bytes,
    })
}

/// A blob to fetch into the store.
#[derive(Debug, Clone)]
pub struct BlobFetch {
    /// The repository it is fetched from.
    pub from: Reference,
    pub blob: BlobRef,
    /// For a layer to unpack into its snapshot as it arrives: its diff ID.
    pub unpack_as: Option<Digest>,
}

/// An image's manifest and configuration, as [`pull`] would bring them, but
/// in memory, without its layers: for an image
/// whose layers may never be needed, and so nothing the store must keep.
/// Each is read from the store when it has it.
pub async fn read_config(
    client: &Client,
    store: &Store,
    reference: &Reference,
    platform: &Platform,
) -> Result<(Manifest, Vec<u8>), Error> {
    let (manifest, _) = resolve_in(client, Some(store), reference, platform).await?;
    let (config, _) = manifest_blobs(&manifest)?;
    let bytes = match store.read_blob(&config.digest) {
        Ok(bytes) => bytes,
        Err(_) => client.get_small_blob(reference, &config.digest).await?,
    };
    Ok((manifest, bytes))
}

/// Fetches blobs into the store, `jobs` at once.
pub async fn fetch_blobs(
    client: &Client,
    store: &Store,
    blobs: &[BlobFetch],
    jobs: usize,
    progress: &(dyn Fn(&Digest, u64) + Sync),
) -> Result<(), Error> {
    stream::iter(blobs.iter().map(Ok::<_, Error>))
        .try_for_each_concurrent(jobs.max(1), |fetch| async move {
            let blob = &fetch.blob;
            let progress = |bytes| progress(&blob.digest, bytes);
            match &fetch.unpack_as {
                Some(diff_id) => {
                    client
                        .fetch_layer_blob(
                            &fetch.from,
                            (&blob.digest, blob.size),
                            diff_id,
                            store,
                            &progress,
                        )
                        .await
                }
                None => {
                    client
                        .fetch_blob(&fetch.from, &blob.digest, Some(blob.size), store, &progress)
                        .await
                }
            }
        })
        .await
}

/// What a push did with each blob.
#[derive(Debug, Clone)]
pub struct PushReport {
    pub digest: Digest,
    pub blobs: Vec<(Digest, u64, Pushed)>,
}

/// Pushes the image whose manifest is `manifest_digest` in the store to
/// every reference of `destinations` (same registry and repository; each
/// names a tag, or only the digest): blobs first (`jobs` at once, mounted
/// from `mount_sources` where the registry has them in another
/// repository), then the manifest under each tag. A blob the store lacks
/// must have a mount source; when mounting it fails, it is fetched from
/// there first.
pub async fn push(
    client: &Client,
    store: &Store,
    manifest_digest: &Digest,
    destinations: &[Reference],
    mount_sources: &HashMap<Digest, Reference>,
    jobs: usize,
    progress: &(dyn Fn(&Digest, u64) + Sync),
) -> Result<PushReport, Error> {
    push_beside(
        client,
        store,
        manifest_digest,
        destinations,
        (mount_sources, &HashSet::new()),
        jobs,
        progress,
    )
    .await
}

/// [`push`], where the blobs of `present` are known to be in the
/// destination's repository already (those of the manifest it replaces):
/// they are neither checked nor sent.
pub async fn push_beside(
    client: &Client,
    store: &Store,
    manifest_digest: &Digest,
    destinations: &[Reference],
    (mount_sources, present): (&HashMap<Digest, Reference>, &HashSet<Digest>),
    jobs: usize,
    progress: &(dyn Fn(&Digest, u64) + Sync),
) -> Result<PushReport, Error> {
    let Some(first) = destinations.first() else {
        return Err(Error::InvalidManifest {
            reference: manifest_digest.to_string(),
            reason: "nowhere to push it".to_string(),
        });
    };
    let bytes = store.read_blob(manifest_digest)?;
    let media_type = manifest_media_type(&bytes, "").ok_or_else(|| Error::InvalidManifest {
        reference: manifest_digest.to_string(),
        reason: "it is not an image manifest".to_string(),
    })?;
    let manifest = Manifest {
        bytes: bytes.into(),
        media_type,
        digest: *manifest_digest,
    };
    let (config, layers) = manifest_blobs(&manifest)?;
    let blobs = distinct(std::iter::once(config).chain(layers));
    for blob in &blobs {
        if !store.has_blob(&blob.digest)
            && !mount_sources.contains_key(&blob.digest)
            && !present.contains(&blob.digest)
        {
            return Err(Error::Cache(kiln_cache::Error::MissingBlob(blob.digest)));
        }
    }
    let results: Vec<(Digest, u64, Pushed)> = stream::iter(blobs.into_iter().map(Ok::<_, Error>))
        .map_ok(|blob| async move {
            if present.contains(&blob.digest) {
                return Ok((blob.digest, blob.size, Pushed::Existed));
            }
            // A blob the store lacks (a base image's layer never fetched)
            // is mounted from its repository, or else fetched from it first.
            if let (false, Some(source)) = (
                store.has_blob(&blob.digest),
                mount_sources.get(&blob.digest),
            ) {
                let size = (&blob.digest, blob.size);
                let report = |bytes| progress(&blob.digest, bytes);
                if let Some(pushed) = client.mount_blob(first, size, source, &report).await? {
                    return Ok((blob.digest, blob.size, pushed));
                }
                client
                    .fetch_blob(source, &blob.digest, Some(blob.size), store, &|_| {})
                    .await?;
            }
            let path: PathBuf = store.blob_path(&blob.digest);
            let pushed = client
                .push_blob(
                    first,
                    &blob.digest,
                    blob.size,
                    &path,
                    mount_sources.get(&blob.digest),
                    &|bytes| progress(&blob.digest, bytes),
                )
                .await?;
            Ok((blob.digest, blob.size, pushed))
        })
        .try_buffer_unordered(jobs.max(1))
        .try_collect()
        .await?;
    for destination in destinations {
        let target = destination
            .tag()
            .map(str::to_string)
            .unwrap_or_else(|| manifest_digest.to_string());
        client.put_manifest(destination, &target, &manifest).await?;
    }
    Ok(PushReport {
        digest: *manifest_digest,
        blobs: results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_match_as_containerd_normalises_variants() {
        let arm64 = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: "v8".into(),
        };
        assert!(arm64.accepts("linux", "arm64", ""));
        assert!(arm64.accepts("linux", "arm64", "v8"));
        assert!(!arm64.accepts("linux", "amd64", ""));
        let any_amd64 = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: String::new(),
        };
        assert!(any_amd64.accepts("linux", "amd64", "v3"));
        let arm_v6 = Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: "v6".into(),
        };
        assert!(!arm_v6.accepts("linux", "arm", ""), "arm means arm/v7");
        assert!(arm_v6.accepts("linux", "arm", "v6"));
        assert_eq!(arm_v6.to_string(), "linux/arm/v6");
    }
}
