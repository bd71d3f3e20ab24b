//! Sharing the layer cache between machines: `--cache-to` writes cache
//! records and their layers to a registry (`type=registry,ref=R`), an OCI
//! layout directory (`type=local,dest=DIR`) or into the image itself
//! (`type=inline`); `--cache-from` reads them back. Imported records are
//! hits like local ones, but their layers are fetched only when a later
//! step or the export needs their bytes.
//!
//! The format is kiln's own: an OCI image manifest whose config
//! (`application/vnd.kiln.cache.config.v1+json`) lists records, each a key
//! and the index of its layer among the manifest's layers (or none for a
//! step that changed nothing). An inline cache is the same list in the
//! image configuration's `kiln.cache.v1` field, indexing the image's own
//! layers.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{bail, Context};
use kiln_cache::layout::{self, Layout};
use kiln_cache::{AtomicFile, CacheRecord, Digest, LayerRecord, Store};
use kiln_registry::Reference;
use oci_spec::image::{Descriptor, MediaType};

use crate::cache_config::{CacheConfig, ExportedRecord};
use crate::image::Layer;
use crate::progress::Progress;
use crate::remote::Remote;

/// kiln's own: the config of a cache manifest, which lists its records.
pub const CACHE_CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";
/// The field of an image configuration that holds an inline cache.
pub const INLINE_FIELD: &str = "kiln.cache.v1";
/// How long the blobs a local cache no longer names stay, for builds that
/// read the earlier cache and fetch from it later.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The name a local cache directory gives its manifest.
const LOCAL_TAG: &str = "cache";

/// Where `--cache-to` exports every step of the build. buildx's `mode=min`
/// and `mode=max` are accepted and export the same: a kiln build has only
/// the stages its target needs, and the keys of the target's steps chain on
/// the results of all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheTo {
    Registry { reference: Reference },
    Local { dir: PathBuf },
    Inline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheFrom {
    Registry { reference: Reference },
    Local { dir: PathBuf },
}

fn fields(spec: &str, flag: &str) -> crate::Result<HashMap<String, String>> {
    spec.split(',')
        .map(|field| {
            field
                .split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("invalid {flag} {spec:?}: {field:?} is not KEY=VALUE"))
        })
        .collect()
}

fn check_mode(fields: &HashMap<String, String>, spec: &str) -> crate::Result<()> {
    match fields.get("mode").map(String::as_str) {
        None | Some("min" | "max") => Ok(()),
        Some(other) => bail!("invalid --cache-to {spec:?}: mode is min or max, not {other:?}"),
    }
}

/// `--cache-to type=registry,ref=R[,mode=min|max]`, `type=local,dest=DIR[,mode=…]`,
/// `type=inline`.
pub fn parse_cache_to(spec: &str) -> crate::Result<CacheTo> {
    let fields = fields(spec, "--cache-to")?;
    let kind = fields.get("type").map(String::as_str);
    if matches!(kind, Some("registry" | "local")) {
        check_mode(&fields, spec)?;
    }
    match kind {
        Some("registry") => Ok(CacheTo::Registry {
            reference: Reference::parse(fields.get("ref").with_context(|| {
                format!("--cache-to {spec:?} needs ref=REGISTRY/REPOSITORY:TAG")
            })?)?,
        }),
        Some("local") => Ok(CacheTo::Local {
            dir: PathBuf::from(
                fields
                    .get("dest")
                    .with_context(|| format!("--cache-to {spec:?} needs dest=DIRECTORY"))?,
            ),
        }),
        Some("inline") => Ok(CacheTo::Inline),
        _ => bail!("invalid --cache-to {spec:?}: type is registry, local or inline"),
    }
}

/// `--cache-from type=registry,ref=R` (a cache or an image with an inline
/// cache), `type=local,src=DIR`; a bare reference means `type=registry`.
pub fn parse_cache_from(spec: &str) -> crate::Result<CacheFrom> {
    if !spec.contains('=') {
        return Ok(CacheFrom::Registry {
            reference: Reference::parse(spec)?,
        });
    }
    let fields = fields(spec, "--cache-from")?;
    match fields.get("type").map(String::as_str) {
        Some("registry") | None => Ok(CacheFrom::Registry {
            reference: Reference::parse(fields.get("ref").with_context(|| {
                format!("--cache-from {spec:?} needs ref=REGISTRY/REPOSITORY:TAG")
            })?)?,
        }),
        Some("local") => Ok(CacheFrom::Local {
            dir: PathBuf::from(
                fields
                    .get("src")
                    .with_context(|| format!("--cache-from {spec:?} needs src=DIRECTORY"))?,
            ),
        }),
        Some(other) => {
            bail!("invalid --cache-from {spec:?}: type is registry or local, not {other:?}")
        }
    }
}

/// Where an imported layer's bytes are.
#[derive(Debug, Clone)]
enum Origin {
    Local(PathBuf),
    Registry(Reference),
}

/// Records read by `--cache-from`.
#[derive(Default)]
pub struct Imported {
    records: HashMap<Digest, CacheRecord>,
    /// Where each imported layer's blob is.
    origins: HashMap<Digest, Origin>,
}

impl Imported {
    /// What an imported cache says of `key`, as a record of the store would.
    pub fn record(&self, key: &Digest) -> Option<&CacheRecord> {
        self.records.get(key)
    }

    /// Copies an imported layer's blob from a local cache directory into the
    /// store, if it is one, and checks it (see [`Imported::check_fetched`]).
    /// Layers of registry caches are fetched in batches instead
    /// ([`Imported::wanted_from_registries`]).
    pub fn import_local(&self, store: &Store, layer: &Layer) -> crate::Result<bool> {
        let Some(Origin::Local(path)) = self.origins.get(&layer.blob) else {
            return Ok(false);
        };
        let file = fs::File::open(path)
            .with_context(|| format!("reading the cached layer {}", path.display()))?;
        store.import_blob(file, &layer.blob)?;
        self.check_fetched(store, layer)?;
        Ok(true)
    }

    /// Those of `layers` that an imported registry cache has and the store
    /// lacks, each with the repository to fetch it from, for fetching
    /// several at once; each then goes through [`Imported::check_fetched`].
    pub fn wanted_from_registries(
        &self,
        store: &Store,
        layers: &[Layer],
    ) -> Vec<(Reference, Layer)> {
        layers
            .iter()
            .filter(|layer| !store.has_blob(&layer.blob))
            .filter_map(|layer| match self.origins.get(&layer.blob) {
                Some(Origin::Registry(reference)) => Some((reference.clone(), layer.clone())),
                _ => None,
            })
            .collect()
    }

    /// Checks that an imported layer just fetched unpacks to the diff ID
    /// the cache claims before anything relies on it. Once checked, the
    /// store keeps the records that name it, so that later builds without
    /// `--cache-from` reuse them; a blob that fails the check is removed.
    pub fn check_fetched(&self, store: &Store, layer: &Layer) -> crate::Result<()> {
        let diff_id = store
            .diff_id_of_blob(&layer.blob)
            .with_context(|| format!("reading the cached layer {}", layer.blob))?;
        if diff_id != layer.diff_id {
            let _ = store.remove_blob(&layer.blob);
            bail!(
                "the cached layer {} is not what its cache says: it unpacks to {diff_id}, not {}",
                layer.blob,
                layer.diff_id
            );
        }
        for (key, record) in &self.records {
            if record.layer.as_ref().is_some_and(|r| r.blob == layer.blob) {
                // A cache: failing to keep a record costs a rerun later.
                let _ = store.put_cache_record(key, record);
            }
        }
        Ok(())
    }

    fn add(&mut self, records: Vec<ExportedRecord>, layers: &[(LayerRecord, Origin)]) {
        for record in records {
            let layer = record.layer.and_then(|index| layers.get(index)).cloned();
            if record.layer.is_some() && layer.is_none() {
                // A record naming a layer the manifest lacks is no record.
                continue;
            }
            if let Some((layer, origin)) = &layer {
                self.origins.insert(layer.blob, origin.clone());
            }
            self.records.insert(
                record.key,
                CacheRecord {
                    layer: layer.map(|(layer, _)| layer),
                    created: record.created,
                    chain: record.chain,
                },
            );
        }
    }

    /// Reads each source; one that does not exist yet (a first build) is a
    /// warning, not an error.
    pub fn read(
        sources: &[CacheFrom],
        store: &Store,
        remote: &Remote,
        progress: &Progress,
    ) -> crate::Result<Imported> {
        let mut imported = Imported::default();
        for source in sources {
            match source {
                CacheFrom::Local { dir } => {
                    if !Layout::new(dir).has_index() {
                        progress.warn(&format!("no cache at {} yet", dir.display()));
                        continue;
                    }
                    imported
                        .read_local(dir)
                        .with_context(|| format!("reading the cache at {}", dir.display()))?;
                }
                CacheFrom::Registry { reference } => imported
                    .read_registry(reference, store, remote, progress)
                    .with_context(|| format!("reading the cache {}", reference.familiar()))?,
            }
        }
        Ok(imported)
    }

    fn read_local(&mut self, dir: &Path) -> crate::Result<()> {
        let local = Layout::new(dir);
        let manifest_digest: Digest = local
            .read_index()?
            .manifests()
            .iter()
            .find(|entry| layout::ref_name(entry) == Some(LOCAL_TAG))
            .context("index.json names no cache manifest")?
            .digest()
            .to_string()
            .parse()?;
        let manifest = read_checked(&local.blob_path(&manifest_digest), &manifest_digest)?;
        let (config, layers) = parse_manifest(&manifest)?;
        let config_bytes = read_checked(&local.blob_path(&config), &config)?;
        let config: CacheConfig =
            serde_json::from_slice(&config_bytes).context("the cache config is not valid")?;
        let layers: Vec<(LayerRecord, Origin)> = layers
            .into_iter()
            .map(|layer| {
                let origin = Origin::Local(local.blob_path(&layer.blob));
                (layer, origin)
            })
            .collect();
        self.add(config.records, &layers);
        Ok(())
    }

    fn read_registry(
        &mut self,
        reference: &Reference,
        store: &Store,
        remote: &Remote,
        progress: &Progress,
    ) -> crate::Result<()> {
        let Some(manifest) = remote.manifest(reference)? else {
            progress.warn(&format!("no cache at {} yet", reference.familiar()));
            return Ok(());
        };
        let (config, layers) = parse_manifest(&manifest.bytes)?;
        // Read into memory: the store needs no copy of a cache's list.
        let config_bytes = match store.read_blob(&config) {
            Ok(bytes) => bytes,
            Err(_) => remote.small_blob(reference, &config)?,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&config_bytes).context("the cache config is not JSON")?;
        // A cache manifest, or an image with an inline cache (whose layers'
        // diff IDs its configuration lists).
        let mut layers = layers;
        let records = if value.get("records").is_some() {
            serde_json::from_value::<CacheConfig>(value)?.records
        } else if let Some(inline) = value.get(INLINE_FIELD) {
            let diff_ids = value["rootfs"]["diff_ids"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for (layer, diff_id) in layers.iter_mut().zip(diff_ids) {
                if let Some(diff_id) = diff_id.as_str().and_then(|d| d.parse().ok()) {
                    layer.diff_id = diff_id;
                }
            }
            serde_json::from_value::<CacheConfig>(inline.clone())?.records
        } else {
            progress.warn(&format!("{} holds no kiln cache", reference.familiar()));
            return Ok(());
        };
        let layers: Vec<(LayerRecord, Origin)> = layers
            .into_iter()
            .map(|layer| (layer, Origin::Registry(reference.clone())))
            .collect();
        self.add(records, &layers);
        Ok(())
    }
}

fn read_checked(path: &Path, digest: &Digest) -> crate::Result<Vec<u8>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if Digest::of(&bytes) != *digest {
        bail!("{} does not match its digest", path.display());
    }
    Ok(bytes)
}

/// The config digest and the layers (with their diff IDs unknown: a cache
/// manifest's layer annotations carry them) of a manifest.
fn parse_manifest(bytes: &[u8]) -> crate::Result<(Digest, Vec<LayerRecord>)> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).context("the manifest is not JSON")?;
    let config: Digest = value["config"]["digest"]
        .as_str()
        .context("the manifest has no config")?
        .parse()?;
    let layers = value["layers"]
        .as_array()
        .context("the manifest has no layers")?
        .iter()
        .map(|layer| -> crate::Result<LayerRecord> {
            let blob: Digest = layer["digest"]
                .as_str()
                .context("a layer without digest")?
                .parse()?;
            // Image manifests (inline caches) carry no diff IDs: the
            // config's records would not match a layer then, so the blob
            // digest stands in until the layer is fetched.
            let diff_id = layer["annotations"][DIFF_ID_ANNOTATION]
                .as_str()
                .and_then(|d| d.parse().ok())
                .unwrap_or(blob);
            Ok(LayerRecord {
                diff_id,
                blob,
                size: layer["size"].as_u64().context("a layer without size")?,
                media_type: MediaType::from(layer["mediaType"].as_str().unwrap_or_default()),
            })
        })
        .collect::<crate::Result<Vec<_>>>()?;
    Ok((config, layers))
}

/// The annotation of a cache manifest's layer that holds its diff ID.
const DIFF_ID_ANNOTATION: &str = "dev.kiln.diff-id";

/// A step's result as the cache exports it.
pub struct Entry {
    pub key: Digest,
    pub layer: Option<Layer>,
    pub created: i64,
    pub chain: Option<Digest>,
}

/// The records to export and the layers they name, in order.
pub fn exported(entries: &[Entry]) -> (Vec<ExportedRecord>, Vec<Layer>) {
    let mut layers: Vec<Layer> = Vec::new();
    let mut records = Vec::new();
    for Entry {
        key,
        layer,
        created,
        chain,
    } in entries
    {
        let index = layer.as_ref().map(|layer| {
            match layers.iter().position(|known| known.blob == layer.blob) {
                Some(index) => index,
                None => {
                    layers.push(layer.clone());
                    layers.len() - 1
                }
            }
        });
        if !records.iter().any(|r: &ExportedRecord| r.key == *key) {
            records.push(ExportedRecord {
                key: *key,
                layer: index,
                created: Some(*created),
                chain: *chain,
            });
        }
    }
    (records, layers)
}

/// Writes the cache manifest and its config into the store; returns the
/// manifest's digest (its blobs are the layers, which must be there).
pub fn write_cache_manifest(
    store: &Store,
    records: Vec<ExportedRecord>,
    layers: &[Layer],
) -> crate::Result<(Digest, u64)> {
    let config = serde_json::to_vec(&CacheConfig { records })?;
    let (config_digest, config_size) = store.write_blob(&config)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MediaType::ImageManifest,
        "config": {
            "mediaType": CACHE_CONFIG_MEDIA_TYPE,
            "digest": config_digest.to_string(),
            "size": config_size,
        },
        "layers": layers.iter().map(|layer| serde_json::json!({
            "mediaType": layer.encoding.media_type(crate::image::Format::Oci),
            "digest": layer.blob.to_string(),
            "size": layer.size,
            "annotations": { DIFF_ID_ANNOTATION: layer.diff_id.to_string() },
        })).collect::<Vec<_>>(),
    });
    let bytes = kiln_cache::layout::canonical_json(&manifest);
    Ok(store.write_blob(&bytes)?)
}

/// Writes a cache manifest and the blobs it names into the OCI layout
/// `dir` (created when missing), replacing the cache it held.
pub fn write_local(
    store: &Store,
    dir: &Path,
    manifest: &Digest,
    manifest_size: u64,
) -> crate::Result<()> {
    let local = Layout::new(dir);
    let blobs = local.blobs_dir();
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let manifest_bytes = store.read_blob(manifest)?;
    let (config, layers) = parse_manifest(&manifest_bytes)?;
    let wanted: Vec<Digest> = std::iter::once(*manifest)
        .chain(std::iter::once(config))
        .chain(layers.iter().map(|layer| layer.blob))
        .collect();
    for digest in &wanted {
        let target = local.blob_path(digest);
        let size = store
            .open_blob(digest)
            .ok()
            .and_then(|blob| blob.metadata().ok())
            .map_or(0, |metadata| metadata.len());
        let intact = fs::metadata(&target).is_ok_and(|m| m.len() == size);
        if intact {
            // Still in use: not one of the blobs the sweep below takes.
            if let Ok(file) = fs::File::options().append(true).open(&target) {
                let _ = file.set_modified(SystemTime::now());
            }
            continue;
        }
        let mut copy = AtomicFile::beside(&target)?;
        std::io::copy(&mut store.open_blob(digest)?, &mut copy)
            .with_context(|| format!("writing {}", target.display()))?;
        copy.commit(&target)?;
    }
    local.write_version_file()?;
    let descriptor = Descriptor::new(
        MediaType::ImageManifest,
        manifest_size,
        crate::image::oci_digest(manifest)?,
    );
    local.write_index(&[layout::index_entry(
        &descriptor,
        &[(layout::REF_NAME, LOCAL_TAG)],
    )])?;
    // Blobs of caches this one replaced, once no build that read one of
    // them can still be fetching from it (nor an export writing it).
    let now = SystemTime::now();
    for entry in fs::read_dir(&blobs)?.flatten() {
        let name = entry.file_name();
        let unwanted = name
            .to_str()
            .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
            .is_some_and(|digest| !wanted.contains(&digest));
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| now.duration_since(modified).unwrap_or_default() > STALE_AFTER);
        if unwanted && old {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::LayerEncoding;

    #[test]
    fn cache_options_read_as_buildx_writes_them() {
        assert_eq!(
            parse_cache_to("type=local,dest=/tmp/c,mode=max").unwrap(),
            CacheTo::Local {
                dir: "/tmp/c".into(),
            }
        );
        assert_eq!(
            parse_cache_to("type=registry,ref=localhost:5000/app:cache,mode=min").unwrap(),
            parse_cache_to("type=registry,ref=localhost:5000/app:cache").unwrap()
        );
        assert_eq!(parse_cache_to("type=inline").unwrap(), CacheTo::Inline);
        assert!(parse_cache_to("type=s3").is_err());
        assert!(parse_cache_to("type=local,mode=max").is_err());
        assert!(parse_cache_to("type=local,dest=d,mode=all").is_err());
        assert!(matches!(
            parse_cache_from("localhost:5000/app:cache").unwrap(),
            CacheFrom::Registry { .. }
        ));
        assert_eq!(
            parse_cache_from("type=local,src=/tmp/c").unwrap(),
            CacheFrom::Local {
                dir: "/tmp/c".into()
            }
        );
    }

    #[test]
    fn records_share_layers_and_keep_their_order() {
        let layer = |n: u8| Layer {
            diff_id: Digest::of(&[n]),
            blob: Digest::of(&[n, n]),
            size: 1,
            encoding: LayerEncoding::Gzip,
        };
        let keys: Vec<Digest> = (0..4u8).map(|n| Digest::of(&[n, 9])).collect();
        let entry = |key: Digest, layer: Option<Layer>, created: i64| Entry {
            key,
            layer,
            created,
            chain: None,
        };
        let (records, layers) = exported(&[
            entry(keys[0], Some(layer(1)), 10),
            entry(keys[1], None, 11),
            entry(keys[2], Some(layer(1)), 12),
            entry(keys[3], Some(layer(2)), 13),
        ]);
        assert_eq!(layers.len(), 2);
        assert_eq!(
            records.iter().map(|r| r.layer).collect::<Vec<_>>(),
            [Some(0), None, Some(0), Some(1)]
        );
        assert_eq!(
            records.iter().map(|r| r.created).collect::<Vec<_>>(),
            [Some(10), Some(11), Some(12), Some(13)],
            "each record keeps when its result was made"
        );
    }
}
