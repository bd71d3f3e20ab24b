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

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::error::{bail, Context};
use kiln_cache::layout::{self, Layout};
use kiln_cache::{AtomicFile, CacheRecord, Digest, LayerRecord, Store};
use kiln_registry::Reference;
use oci_spec::image::{Descriptor, MediaType};

use crate::cache_config::{Bounds, CacheConfig, CacheContents, ExportedRecord};
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

/// What an export may do to the cache already at its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    /// Keep the records the destination holds (`merge=true`, the default)
    /// rather than replace them.
    pub merge: bool,
    /// How much a merged cache may hold (`max-records=`, `max-size=`).
    pub bounds: Bounds,
    /// Export cache mounts no bigger than this (`mounts=true`,
    /// `mounts-max-size=`); none without `mounts=true`.
    pub mounts_max_size: Option<u64>,
}

/// A merged cache keeps at most this many records and cache mounts...
pub const DEFAULT_MAX_ENTRIES: usize = 5_000;
/// ...and this many bytes of layers and cache mounts (10 GiB).
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;
/// A cache mount bigger than this (unpacked, 512 MiB) is left out of an
/// export unless `mounts-max-size=` allows it.
pub const DEFAULT_MOUNTS_MAX_SIZE: u64 = 512 << 20;

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            merge: true,
            bounds: Bounds {
                max_entries: Some(DEFAULT_MAX_ENTRIES),
                max_bytes: Some(DEFAULT_MAX_BYTES),
                max_age: None,
            },
            mounts_max_size: None,
        }
    }
}

/// Where `--cache-to` exports every step of the build. buildx's `mode=min`
/// and `mode=max` are accepted and export the same: a kiln build has only
/// the stages its target needs, and the keys of the target's steps chain on
/// the results of all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheTo {
    Registry {
        reference: Reference,
        options: ExportOptions,
    },
    Local {
        dir: PathBuf,
        options: ExportOptions,
    },
    Inline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheFrom {
    /// `mounts`: seed empty cache mounts from the cache (`mounts=true`).
    Registry {
        reference: Reference,
        mounts: bool,
    },
    Local {
        dir: PathBuf,
        mounts: bool,
    },
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

fn flag(
    fields: &HashMap<String, String>,
    name: &str,
    spec: &str,
    option: &str,
) -> crate::Result<bool> {
    match fields.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => bail!("invalid {option} {spec:?}: {name} is true or false, not {other:?}"),
    }
}

fn export_options(fields: &HashMap<String, String>, spec: &str) -> crate::Result<ExportOptions> {
    let mut options = ExportOptions {
        merge: !fields.contains_key("merge") || flag(fields, "merge", spec, "--cache-to")?,
        ..ExportOptions::default()
    };
    if let Some(max) = fields.get("max-records") {
        options.bounds.max_entries = Some(max.parse().map_err(|_| {
            crate::Error::Invalid(format!(
                "invalid --cache-to {spec:?}: max-records is a number of records, not {max:?}"
            ))
        })?);
    }
    if let Some(max) = fields.get("max-size") {
        options.bounds.max_bytes = Some(
            crate::units::parse_size(max)
                .with_context(|| format!("invalid --cache-to {spec:?}: max-size"))?,
        );
    }
    let mounts = flag(fields, "mounts", spec, "--cache-to")?;
    let max_mount = match fields.get("mounts-max-size") {
        Some(max) => crate::units::parse_size(max)
            .with_context(|| format!("invalid --cache-to {spec:?}: mounts-max-size"))?,
        None => DEFAULT_MOUNTS_MAX_SIZE,
    };
    options.mounts_max_size = mounts.then_some(max_mount);
    Ok(options)
}

/// `--cache-to type=registry,ref=R[,mode=min|max]`, `type=local,dest=DIR[,mode=…]`,
/// `type=inline`; registry and local caches take `mounts=true`,
/// `mounts-max-size=SIZE`, `merge=false`, `max-records=N`, `max-size=SIZE`.
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
            options: export_options(&fields, spec)?,
        }),
        Some("local") => Ok(CacheTo::Local {
            dir: PathBuf::from(
                fields
                    .get("dest")
                    .with_context(|| format!("--cache-to {spec:?} needs dest=DIRECTORY"))?,
            ),
            options: export_options(&fields, spec)?,
        }),
        Some("inline") => Ok(CacheTo::Inline),
        _ => bail!("invalid --cache-to {spec:?}: type is registry, local or inline"),
    }
}

/// `--cache-from type=registry,ref=R` (a cache or an image with an inline
/// cache), `type=local,src=DIR`, either with `mounts=true`; a bare
/// reference means `type=registry`.
pub fn parse_cache_from(spec: &str) -> crate::Result<CacheFrom> {
    if !spec.contains('=') {
        return Ok(CacheFrom::Registry {
            reference: Reference::parse(spec)?,
            mounts: false,
        });
    }
    let fields = fields(spec, "--cache-from")?;
    let mounts = flag(&fields, "mounts", spec, "--cache-from")?;
    match fields.get("type").map(String::as_str) {
        Some("registry") | None => Ok(CacheFrom::Registry {
            reference: Reference::parse(fields.get("ref").with_context(|| {
                format!("--cache-from {spec:?} needs ref=REGISTRY/REPOSITORY:TAG")
            })?)?,
            mounts,
        }),
        Some("local") => Ok(CacheFrom::Local {
            dir: PathBuf::from(
                fields
                    .get("src")
                    .with_context(|| format!("--cache-from {spec:?} needs src=DIRECTORY"))?,
            ),
            mounts,
        }),
        Some(other) => {
            bail!("invalid --cache-from {spec:?}: type is registry or local, not {other:?}")
        }
    }
}

/// Where an imported layer's bytes are.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A cache directory (an OCI layout).
    Local(PathBuf),
    Registry(Reference),
}

impl Origin {
    /// The directory or repository, as a warning names it.
    pub(crate) fn describe(&self) -> String {
        match self {
            Origin::Local(path) => path.display().to_string(),
            Origin::Registry(reference) => reference.familiar(),
        }
    }
}

/// A cache as read from where it is.
#[derive(Debug, Clone)]
pub struct ReadCache {
    /// The digest of its manifest.
    pub manifest: Digest,
    pub contents: CacheContents,
    /// An image's inline cache rather than a cache manifest.
    pub inline: bool,
}

/// Records read by `--cache-from`.
#[derive(Default)]
pub struct Imported {
    /// Each key's record, from the first source that has it.
    records: HashMap<Digest, CacheRecord>,
    /// Where each imported layer's blob is.
    origins: HashMap<Digest, Origin>,
    /// The cache mounts of sources read with `mounts=true`, for this
    /// machine's platform, by id.
    mounts: HashMap<String, (LayerRecord, Origin)>,
    /// What each registry cache held, by reference: an export to the same
    /// reference merges into it without reading it again.
    read: HashMap<String, ReadCache>,
    /// Layers found missing or wrong during the build: the records naming
    /// them are misses.
    unusable: Mutex<HashSet<Digest>>,
}

impl Imported {
    fn unusable(&self) -> std::sync::MutexGuard<'_, HashSet<Digest>> {
        self.unusable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What an imported cache says of `key`, as a record of the store would;
    /// none when its layer turned out unusable.
    pub fn record(&self, key: &Digest) -> Option<CacheRecord> {
        let record = self.records.get(key)?;
        if let Some(layer) = &record.layer {
            if self.unusable().contains(&layer.blob) {
                return None;
            }
        }
        Some(record.clone())
    }

    /// Where an imported layer's blob is.
    pub fn origin(&self, blob: &Digest) -> Option<&Origin> {
        self.origins.get(blob)
    }

    /// The registry an imported layer the store lacks can be mounted or
    /// fetched from.
    pub fn registry_of(&self, store: &Store, blob: &Digest) -> Option<Reference> {
        match self.origins.get(blob) {
            Some(Origin::Registry(reference)) if !store.has_blob(blob) => Some(reference.clone()),
            _ => None,
        }
    }

    /// The cache `reference` held when this build read it.
    pub fn read_from(&self, reference: &Reference) -> Option<&ReadCache> {
        self.read.get(&reference.to_string())
    }

    /// The imported content of cache mount `id`, and where it is.
    pub fn mount(&self, id: &str) -> Option<&(LayerRecord, Origin)> {
        self.mounts.get(id)
    }

    /// Marks `layer` unusable and says why, as an error that makes the
    /// build start over without the records naming it; or, when it was
    /// marked already (so starting over would not change a thing), `cause`.
    pub fn give_up_on(&self, layer: &Layer, cause: crate::Error) -> crate::Error {
        if cause.is_interrupted() || !self.origins.contains_key(&layer.blob) {
            return cause;
        }
        if !self.unusable().insert(layer.blob) {
            return cause;
        }
        let origin = self
            .origins
            .get(&layer.blob)
            .map(Origin::describe)
            .unwrap_or_default();
        crate::Error::UnusableCache(format!(
            "the cached layer {} of {origin} cannot be used: {}",
            layer.blob,
            cause.one_line()
        ))
    }

    /// Copies an imported layer's blob from a local cache directory into the
    /// store, if it is one, and checks it (see [`Imported::check_fetched`]).
    /// Layers of registry caches are fetched in batches instead
    /// ([`Imported::wanted_from_registries`]).
    pub fn import_local(&self, store: &Store, layer: &Layer) -> crate::Result<bool> {
        let Some(Origin::Local(dir)) = self.origins.get(&layer.blob) else {
            return Ok(false);
        };
        let path = Layout::new(dir).blob_path(&layer.blob);
        let copied = fs::File::open(&path)
            .with_context(|| format!("reading {}", path.display()))
            .and_then(|file| Ok(store.import_blob(file, &layer.blob)?));
        if let Err(error) = copied {
            return Err(self.give_up_on(layer, error));
        }
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
        let unusable = self.unusable();
        layers
            .iter()
            .filter(|layer| !store.has_blob(&layer.blob) && !unusable.contains(&layer.blob))
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
        let diff_id = match store.diff_id_of_blob(&layer.blob) {
            Ok(diff_id) => diff_id,
            Err(error) => {
                let _ = store.remove_blob(&layer.blob);
                return Err(self.give_up_on(layer, error.into()));
            }
        };
        if diff_id != layer.diff_id {
            let _ = store.remove_blob(&layer.blob);
            let wrong = crate::Error::msg(format!(
                "it unpacks to {diff_id}, not to the {} its cache says",
                layer.diff_id
            ));
            return Err(self.give_up_on(layer, wrong));
        }
        for (key, record) in &self.records {
            if record.layer.as_ref().is_some_and(|r| r.blob == layer.blob) {
                // A cache: failing to keep a record costs a rerun later.
                let _ = store.put_cache_record(key, record);
            }
        }
        Ok(())
    }

    /// Adds a source's records, after those of the sources read before it,
    /// which win where both have a key.
    fn add(&mut self, contents: &CacheContents, origin: &Origin, mounts: bool) {
        let platform = kiln_frontend::Platform::host().to_string();
        for record in &contents.config.records {
            let layer = match record.layer {
                None => None,
                Some(index) => match contents.layers.get(index) {
                    Some(layer) => Some(layer.clone()),
                    // A record naming a layer the manifest lacks is no record.
                    None => continue,
                },
            };
            if self.records.contains_key(&record.key) {
                continue;
            }
            if let Some(layer) = &layer {
                self.origins
                    .entry(layer.blob)
                    .or_insert_with(|| origin.clone());
            }
            self.records.insert(
                record.key,
                CacheRecord {
                    layer,
                    created: record.created,
                    chain: record.chain,
                },
            );
        }
        if !mounts {
            return;
        }
        for mount in &contents.config.mounts {
            let Some(layer) = contents.layers.get(mount.layer) else {
                continue;
            };
            if mount.platform == platform && !self.mounts.contains_key(&mount.id) {
                self.origins
                    .entry(layer.blob)
                    .or_insert_with(|| origin.clone());
                self.mounts
                    .insert(mount.id.clone(), (layer.clone(), origin.clone()));
            }
        }
    }

    /// Reads the sources, each on a thread of its own (they mostly wait on
    /// registries); where several have a key, the first given wins. One
    /// that does not exist yet (a first build) or cannot be read is a
    /// warning: the build goes on without it.
    pub fn read(
        sources: &[CacheFrom],
        store: &Store,
        remote: &Remote,
        progress: &Progress,
    ) -> Imported {
        let read: Vec<(&CacheFrom, crate::Result<Option<ReadCache>>)> =
            std::thread::scope(|scope| {
                let reading: Vec<_> = sources
                    .iter()
                    .map(|source| scope.spawn(move || (source, read_source(source, store, remote))))
                    .collect();
                reading
                    .into_iter()
                    .map(|thread| {
                        thread
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .collect()
            });
        let mut imported = Imported::default();
        for (source, result) in read {
            let (name, origin, mounts) = match source {
                CacheFrom::Local { dir, mounts } => (
                    dir.display().to_string(),
                    Origin::Local(dir.clone()),
                    *mounts,
                ),
                CacheFrom::Registry { reference, mounts } => (
                    reference.familiar(),
                    Origin::Registry(reference.clone()),
                    *mounts,
                ),
            };
            match result {
                Ok(Some(cache)) => {
                    imported.add(&cache.contents, &origin, mounts);
                    if let Origin::Registry(reference) = &origin {
                        imported.read.insert(reference.to_string(), cache);
                    }
                }
                Ok(None) => progress.warn(&format!("no cache at {name} yet")),
                Err(error) => progress.warn(&format!(
                    "the cache at {name} cannot be used ({}): its steps run as if it were not there",
                    error.one_line()
                )),
            }
        }
        imported
    }
}

/// The cache `source` holds; none when there is none yet (or, for a
/// registry, an image without an inline cache).
fn read_source(
    source: &CacheFrom,
    store: &Store,
    remote: &Remote,
) -> crate::Result<Option<ReadCache>> {
    match source {
        CacheFrom::Local { dir, .. } => read_local(dir),
        CacheFrom::Registry { reference, .. } => read_registry(reference, store, remote, None),
    }
}

/// The cache in the OCI layout `dir`, none when it holds none.
pub fn read_local(dir: &Path) -> crate::Result<Option<ReadCache>> {
    let local = Layout::new(dir);
    if !local.has_index() {
        return Ok(None);
    }
    let manifest: Digest = local
        .read_index()?
        .manifests()
        .iter()
        .find(|entry| layout::ref_name(entry) == Some(LOCAL_TAG))
        .context("index.json names no cache manifest")?
        .digest()
        .to_string()
        .parse()?;
    let manifest_bytes = read_checked(&local.blob_path(&manifest), &manifest)?;
    let (config, layers) = parse_manifest(&manifest_bytes)?;
    let config_bytes = read_checked(&local.blob_path(&config), &config)?;
    let config: CacheConfig =
        serde_json::from_slice(&config_bytes).context("the cache config is not valid")?;
    Ok(Some(ReadCache {
        manifest,
        contents: CacheContents { config, layers },
        inline: false,
    }))
}

/// The cache `reference` names, none when the registry has nothing there
/// or an image without a cache. `known`: a cache read before, reused when
/// the manifest is still the same.
pub fn read_registry(
    reference: &Reference,
    store: &Store,
    remote: &Remote,
    known: Option<&ReadCache>,
) -> crate::Result<Option<ReadCache>> {
    let Some(manifest) = remote.manifest(reference)? else {
        return Ok(None);
    };
    if let Some(known) = known.filter(|known| known.manifest == manifest.digest) {
        return Ok(Some(known.clone()));
    }
    let (config, layers) = parse_manifest(&manifest.bytes)?;
    // Read into memory: the store needs no copy of a cache's list.
    let config_bytes = match store.read_blob(&config) {
        Ok(bytes) => bytes,
        Err(_) => remote.small_blob(reference, &config)?,
    };
    Ok(
        cache_contents(layers, &config_bytes)?.map(|(contents, inline)| ReadCache {
            manifest: manifest.digest,
            contents,
            inline,
        }),
    )
}

/// What a cache manifest and its config (the list of records) hold, or
/// what an image's inline cache holds (then `true`); none for an image
/// without one.
pub fn registry_cache(
    manifest_bytes: &[u8],
    config_bytes: &[u8],
) -> crate::Result<Option<(CacheContents, bool)>> {
    let (_, layers) = parse_manifest(manifest_bytes)?;
    cache_contents(layers, config_bytes)
}

/// [`registry_cache`] once the manifest has given its `layers`.
fn cache_contents(
    mut layers: Vec<LayerRecord>,
    config_bytes: &[u8],
) -> crate::Result<Option<(CacheContents, bool)>> {
    let value: serde_json::Value =
        serde_json::from_slice(config_bytes).context("the cache config is not JSON")?;
    // A cache manifest, or an image with an inline cache (whose layers'
    // diff IDs its configuration lists).
    let inline = value.get("records").is_none();
    let config = if !inline {
        serde_json::from_value::<CacheConfig>(value).context("the cache config is not valid")?
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
        serde_json::from_value::<CacheConfig>(inline.clone())
            .context("the image's inline cache is not valid")?
    } else {
        return Ok(None);
    };
    Ok(Some((CacheContents { config, layers }, inline)))
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
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: Digest,
    pub layer: Option<Layer>,
    pub created: i64,
    pub chain: Option<Digest>,
}

/// The cache of `entries` (a build's results, in order), each layer once.
pub fn exported(entries: &[Entry]) -> CacheContents {
    let mut contents = CacheContents::default();
    for Entry {
        key,
        layer,
        created,
        chain,
    } in entries
    {
        if contents.config.records.iter().any(|r| r.key == *key) {
            continue;
        }
        let index = layer
            .as_ref()
            .map(|layer| contents.place_layer(&layer.record()));
        contents.config.records.push(ExportedRecord {
            key: *key,
            layer: index,
            created: Some(*created),
            chain: *chain,
            exported: None,
        });
    }
    contents
}

/// Writes the manifest of `contents` and its config into the store;
/// returns the manifest's digest and size (its layers are where the
/// export finds them: the store, or the registry it goes to).
pub fn write_cache_manifest(
    store: &Store,
    contents: &CacheContents,
) -> crate::Result<(Digest, u64)> {
    let config = serde_json::to_vec(&contents.config)?;
    let (config_digest, config_size) = store.write_blob(&config)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MediaType::ImageManifest,
        "config": {
            "mediaType": CACHE_CONFIG_MEDIA_TYPE,
            "digest": config_digest.to_string(),
            "size": config_size,
        },
        "layers": contents.layers.iter().map(|layer| serde_json::json!({
            "mediaType": layer.media_type.to_string(),
            "digest": layer.blob.to_string(),
            "size": layer.size,
            "annotations": { DIFF_ID_ANNOTATION: layer.diff_id.to_string() },
        })).collect::<Vec<_>>(),
    });
    let bytes = kiln_cache::layout::canonical_json(&manifest);
    Ok(store.write_blob(&bytes)?)
}

/// The blobs a cache manifest names: its config and its layers.
pub fn manifest_blobs(bytes: &[u8]) -> crate::Result<Vec<Digest>> {
    let (config, layers) = parse_manifest(bytes)?;
    Ok(std::iter::once(config)
        .chain(layers.iter().map(|layer| layer.blob))
        .collect())
}

/// Marks a blob of a local cache as still in use: not one of those the
/// sweep of [`write_local`] takes.
fn touch(blob: &Path) {
    if let Ok(file) = fs::File::options().append(true).open(blob) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Writes a cache manifest and the blobs it names into the OCI layout
/// `dir` (created when missing), in place of the cache it held. Its blobs
/// are those of the store, or already in `dir` (a merged cache's).
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
    let wanted: Vec<Digest> = std::iter::once(*manifest)
        .chain(manifest_blobs(&manifest_bytes)?)
        .collect();
    for digest in &wanted {
        let target = local.blob_path(digest);
        if !store.has_blob(digest) && target.exists() {
            // A layer of the cache merged into, which the store lacks.
            touch(&target);
            continue;
        }
        let size = store
            .open_blob(digest)
            .ok()
            .and_then(|blob| blob.metadata().ok())
            .map_or(0, |metadata| metadata.len());
        let intact = fs::metadata(&target).is_ok_and(|m| m.len() == size);
        if intact {
            touch(&target);
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

    fn local(dir: &str, options: ExportOptions) -> CacheTo {
        CacheTo::Local {
            dir: dir.into(),
            options,
        }
    }

    #[test]
    fn cache_options_read_as_buildx_writes_them() {
        assert_eq!(
            parse_cache_to("type=local,dest=/tmp/c,mode=max").unwrap(),
            local("/tmp/c", ExportOptions::default())
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
            CacheFrom::Registry { mounts: false, .. }
        ));
        assert_eq!(
            parse_cache_from("type=local,src=/tmp/c").unwrap(),
            CacheFrom::Local {
                dir: "/tmp/c".into(),
                mounts: false,
            }
        );
    }

    #[test]
    fn kilns_own_cache_options_are_read_and_checked() {
        let options = ExportOptions {
            merge: false,
            bounds: Bounds {
                max_entries: Some(300),
                max_bytes: Some(2_000_000_000),
                max_age: None,
            },
            mounts_max_size: Some(64 << 20),
        };
        assert_eq!(
            parse_cache_to(
                "type=local,dest=d,merge=false,max-records=300,max-size=2GB,mounts=true,mounts-max-size=64MiB"
            )
            .unwrap(),
            local("d", options)
        );
        let CacheTo::Local { options, .. } =
            parse_cache_to("type=local,dest=d,mounts=true").unwrap()
        else {
            panic!("a local cache");
        };
        assert_eq!(options.mounts_max_size, Some(DEFAULT_MOUNTS_MAX_SIZE));
        assert!(options.merge, "merging is the default");
        assert_eq!(
            parse_cache_from("type=registry,ref=localhost:5000/c:main,mounts=true").unwrap(),
            CacheFrom::Registry {
                reference: Reference::parse("localhost:5000/c:main").unwrap(),
                mounts: true,
            }
        );
        for wrong in [
            "type=local,dest=d,mounts=yes",
            "type=local,dest=d,merge=no",
            "type=local,dest=d,max-records=many",
            "type=local,dest=d,max-size=big",
        ] {
            let error = parse_cache_to(wrong).unwrap_err().one_line();
            assert!(error.contains(wrong), "{error}");
        }
        assert!(parse_cache_from("type=local,src=d,mounts=1").is_err());
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
        let contents = exported(&[
            entry(keys[0], Some(layer(1)), 10),
            entry(keys[1], None, 11),
            entry(keys[2], Some(layer(1)), 12),
            entry(keys[3], Some(layer(2)), 13),
        ]);
        let records = &contents.config.records;
        assert_eq!(contents.layers.len(), 2);
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
