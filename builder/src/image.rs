//! Images: the configuration file (with the Docker fields the OCI types
//! drop), manifests in OCI or Docker form, and images read from the store.

use crate::error::{bail, Context};
use kiln_cache::layout::canonical_json;
use kiln_cache::pack::PackedLayer;
use kiln_cache::{Digest, LayerDigests, Store};
use kiln_frontend::graph::ImageConfig;
use kiln_frontend::Platform;
use kiln_registry::Reference;

use oci_spec::image::{Descriptor, ImageManifest, MediaType};
use serde::{Deserialize, Serialize};

// Docker's media types (image manifest v2, schema 2): oci-spec has
// variants for the OCI ones only, so these are `MediaType::Other`.
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn docker(media_type: &str) -> MediaType {
    MediaType::Other(media_type.to_string())
}

/// What a manifest is, as its media type says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest (OCI, or Docker's schema 2).
    Image,
    /// A list of manifests (an OCI image index, or Docker's manifest list).
    Index,
}

impl ManifestKind {
    /// None for a media type that is no manifest.
    pub fn of(media_type: &MediaType) -> Option<ManifestKind> {
        match media_type {
            MediaType::ImageManifest => Some(ManifestKind::Image),
            MediaType::ImageIndex => Some(ManifestKind::Index),
            MediaType::Other(other) if other == DOCKER_MANIFEST => Some(ManifestKind::Image),
            MediaType::Other(other) if other == DOCKER_MANIFEST_LIST => Some(ManifestKind::Index),
            _ => None,
        }
    }
}

/// Which family of media types an image is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

impl Format {
    pub fn parse(text: &str) -> crate::Result<Format> {
        match text {
            "oci" => Ok(Format::Oci),
            "docker" => Ok(Format::Docker),
            other => bail!("unknown image format {other:?}: use oci or docker"),
        }
    }

    /// The format an image with these layers can have: Docker's schema 2
    /// knows no zstd layers, so such an image uses OCI media types, as
    /// BuildKit does.
    pub fn for_layers(self, layers: &[Layer]) -> Format {
        if layers.iter().any(|l| l.encoding == LayerEncoding::Zstd) {
            Format::Oci
        } else {
            self
        }
    }

    fn manifest_type(self) -> MediaType {
        match self {
            Format::Oci => MediaType::ImageManifest,
            Format::Docker => docker(DOCKER_MANIFEST),
        }
    }

    fn config_type(self) -> MediaType {
        match self {
            Format::Oci => MediaType::ImageConfig,
            Format::Docker => docker(DOCKER_CONFIG),
        }
    }
}

/// How a layer blob is compressed, as its media type says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerEncoding {
    Tar,
    Gzip,
    Zstd,
}

impl LayerEncoding {
    pub fn of_media_type(media_type: &MediaType) -> crate::Result<LayerEncoding> {
        Ok(match media_type {
            MediaType::ImageLayer => LayerEncoding::Tar,
            MediaType::ImageLayerGzip => LayerEncoding::Gzip,
            MediaType::ImageLayerZstd => LayerEncoding::Zstd,
            MediaType::Other(other) if other == DOCKER_LAYER => LayerEncoding::Tar,
            MediaType::Other(other) if other == DOCKER_LAYER_GZIP => LayerEncoding::Gzip,
            other => bail!("unsupported layer media type {other}"),
        })
    }

    pub fn of_compression(compression: kiln_cache::Compression) -> LayerEncoding {
        match compression {
            kiln_cache::Compression::Uncompressed => LayerEncoding::Tar,
            kiln_cache::Compression::Gzip { .. } => LayerEncoding::Gzip,
            kiln_cache::Compression::Zstd { .. } => LayerEncoding::Zstd,
        }
    }

    pub fn media_type(self, format: Format) -> MediaType {
        match (format, self) {
            (Format::Oci, LayerEncoding::Tar) => MediaType::ImageLayer,
            (Format::Oci, LayerEncoding::Gzip) => MediaType::ImageLayerGzip,
            (Format::Oci, LayerEncoding::Zstd) => MediaType::ImageLayerZstd,
            (Format::Docker, LayerEncoding::Tar) => docker(DOCKER_LAYER),
            (Format::Docker, LayerEncoding::Gzip) => docker(DOCKER_LAYER_GZIP),
            // Docker's schema has no zstd layers: `Format::for_layers` makes
            // such images OCI ones, so this only names the layer.
            (Format::Docker, LayerEncoding::Zstd) => MediaType::ImageLayerZstd,
        }
    }
}

/// A layer of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub diff_id: Digest,
    pub blob: Digest,
    pub size: u64,
    pub encoding: LayerEncoding,
}

impl Layer {
    /// As a cache record keeps it (OCI media types).
    pub fn record(&self) -> kiln_cache::LayerRecord {
        kiln_cache::LayerRecord {
            diff_id: self.diff_id,
            blob: self.blob,
            size: self.size,
            media_type: self.encoding.media_type(Format::Oci),
        }
    }

    /// A layer the store packed: a blob it wrote, or a snapshot it
    /// describes as its uncompressed tar.
    pub fn packed(packed: &PackedLayer) -> Layer {
        Layer {
            diff_id: packed.diff_id,
            blob: packed.digest,
            size: packed.size,
            encoding: LayerEncoding::of_compression(packed.compression),
        }
    }

    /// Its digests, as the store's layer methods take them.
    pub fn digests(&self) -> LayerDigests {
        LayerDigests {
            diff_id: self.diff_id,
            blob: self.blob,
        }
    }

    pub fn from_record(record: &kiln_cache::LayerRecord) -> crate::Result<Layer> {
        Ok(Layer {
            diff_id: record.diff_id,
            blob: record.blob,
            size: record.size,
            encoding: LayerEncoding::of_media_type(&record.media_type)?,
        })
    }
}

/// An image configuration file (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: ImageConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// `--cache-to type=inline`: cache records of the image's own layers.
    #[serde(
        default,
        rename = "kiln.cache.v1",
        skip_serializing_if = "Option::is_none"
    )]
    pub inline_cache: Option<crate::cache_config::CacheConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

impl ImageFile {
    pub fn platform(&self) -> Platform {
        Platform::new(
            &self.os,
            &self.architecture,
            self.variant.as_deref().unwrap_or(""),
        )
    }

    pub fn to_json(&self) -> crate::Result<Vec<u8>> {
        Ok(canonical_json(&serde_json::to_value(self)?))
    }
}

/// An image of the store, read.
#[derive(Debug, Clone)]
pub struct StoredImage {
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    pub manifest: ImageManifest,
    pub config_digest: Digest,
    pub config: ImageFile,
    pub layers: Vec<Layer>,
}

fn digest_of(descriptor: &Descriptor) -> crate::Result<Digest> {
    descriptor
        .digest()
        .to_string()
        .parse()
        .with_context(|| format!("unsupported digest {}", descriptor.digest()))
}

pub fn oci_digest(digest: &Digest) -> crate::Result<oci_spec::image::Digest> {
    digest.to_string().parse().context("converting a digest")
}

impl StoredImage {
    /// Reads the image whose manifest has `digest`.
    pub fn read(store: &Store, manifest_digest: &Digest) -> crate::Result<StoredImage> {
        let bytes = store.read_blob(manifest_digest)?;
        let manifest = ImageManifest::from_reader(&bytes[..])
            .with_context(|| format!("manifest {manifest_digest} is invalid"))?;
        let config_digest = digest_of(manifest.config())?;
        let config_bytes = store.read_blob(&config_digest)?;
        StoredImage::from_bytes(manifest_digest, &bytes, &config_bytes)
    }

    /// The image a manifest and its configuration describe, read from
    /// bytes (checked against their digests by whoever fetched them).
    pub fn from_bytes(
        manifest_digest: &Digest,
        bytes: &[u8],
        config_bytes: &[u8],
    ) -> crate::Result<StoredImage> {
        let manifest = ImageManifest::from_reader(bytes)
            .with_context(|| format!("manifest {manifest_digest} is invalid"))?;
        let config_digest = digest_of(manifest.config())?;
        let config: ImageFile = serde_json::from_slice(config_bytes)
            .with_context(|| format!("image configuration {config_digest} is invalid"))?;
        if config.rootfs.diff_ids.len() != manifest.layers().len() {
            bail!(
                "image {manifest_digest} is inconsistent: {} layers in the manifest, {} in the configuration",
                manifest.layers().len(),
                config.rootfs.diff_ids.len()
            );
        }
        let layers = manifest
            .layers()
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(descriptor, diff_id)| {
                Ok(Layer {
                    diff_id: *diff_id,
                    blob: digest_of(descriptor)?,
                    size: descriptor.size(),
                    encoding: LayerEncoding::of_media_type(descriptor.media_type())?,
                })
            })
            .collect::<crate::Result<_>>()?;
        Ok(StoredImage {
            manifest_digest: *manifest_digest,
            manifest_size: bytes.len() as u64,
            manifest,
            config_digest,
            config,
            layers,
        })
    }

    /// Whether the store has every layer of the image: an image a build
    /// pulled without its layers (see `base_images`) lacks some.
    pub fn is_whole(&self, store: &Store) -> bool {
        self.layers.iter().all(|layer| store.has_blob(&layer.blob))
    }

    /// Reads the image a name (or `name@digest`) refers to.
    pub fn find(store: &Store, name: &str) -> crate::Result<StoredImage> {
        if let Some(digest) = image_id(store, name)? {
            return StoredImage::read(store, &digest);
        }
        let reference = Reference::parse(name)?;
        let digest = match reference.digest() {
            Some(digest) => digest.parse::<Digest>()?,
            None => {
                let descriptor = store
                    .resolve(&reference.to_string())?
                    .with_context(|| format!("image {} is not in the store (see `kiln images`; `kiln load` imports one from a file)", reference.familiar()))?;
                digest_of(&descriptor)?
            }
        };
        StoredImage::read(store, &digest)
    }

    /// The descriptor of the image's manifest, with its platform, as an
    /// index lists it.
    pub fn descriptor(&self) -> crate::Result<Descriptor> {
        let media_type = self
            .manifest
            .media_type()
            .clone()
            .unwrap_or(MediaType::ImageManifest);
        let mut descriptor = Descriptor::new(
            media_type,
            self.manifest_size,
            oci_digest(&self.manifest_digest)?,
        );
        descriptor.set_platform(Some(platform_of(&self.config)?));
        Ok(descriptor)
    }
}

/// The manifest digest `text` names when it is an image ID as `kiln images`
/// shows it: `sha256:` and 12 to 64 hex digits, or the digits alone when no
/// image has that name.
pub fn image_id(store: &Store, text: &str) -> crate::Result<Option<Digest>> {
    let (hex, explicit) = match text.strip_prefix("sha256:") {
        Some(hex) => (hex, true),
        None => (text, false),
    };
    let is_id = (12..=64).contains(&hex.len())
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !is_id {
        if explicit {
            bail!("invalid image ID {text:?}: expected sha256: and 12 to 64 hex digits");
        }
        return Ok(None);
    }
    if !explicit {
        if let Ok(reference) = Reference::parse(text) {
            if store.resolve(&reference.to_string())?.is_some() {
                return Ok(None);
            }
        }
    }
    let mut found: Vec<Digest> = store
        .images()?
        .iter()
        .filter_map(|entry| entry.manifest.digest().to_string().parse::<Digest>().ok())
        .filter(|digest| digest.hex().starts_with(hex))
        .collect();
    found.sort_by_key(|digest| digest.to_string());
    found.dedup();
    match found.as_slice() {
        [digest] => Ok(Some(*digest)),
        [] if hex.len() == 64 => {
            let digest: Digest = format!("sha256:{hex}").parse()?;
            if store.has_blob(&digest) {
                Ok(Some(digest))
            } else {
                bail!("image {text} is not in the store (see `kiln images`)")
            }
        }
        [] if explicit => bail!("image {text} is not in the store (see `kiln images`)"),
        [] => Ok(None),
        several => bail!(
            "{text} is ambiguous: the digests of {} images start with it",
            several.len()
        ),
    }
}

/// Writes the configuration and manifest of an image to the store and
/// returns the manifest's descriptor.
pub fn write_image(
    store: &Store,
    config: &ImageFile,
    layers: &[Layer],
    format: Format,
) -> crate::Result<Descriptor> {
    let config_bytes = config.to_json()?;
    let (config_digest, config_size) = store.write_blob(&config_bytes)?;
    write_manifest(store, (config_digest, config_size), config, layers, format)
}

/// Writes the manifest of an image whose configuration blob (`config_blob`:
/// digest and size, holding `config`) is in the store already.
pub fn write_manifest(
    store: &Store,
    config_blob: (Digest, u64),
    config: &ImageFile,
    layers: &[Layer],
    format: Format,
) -> crate::Result<Descriptor> {
    let format = format.for_layers(layers);
    let layer_descriptors: Vec<serde_json::Value> = layers
        .iter()
        .map(|layer| {
            serde_json::json!({
                "mediaType": layer.encoding.media_type(format),
                "digest": layer.blob.to_string(),
                "size": layer.size,
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": format.manifest_type(),
        "config": {
            "mediaType": format.config_type(),
            "digest": config_blob.0.to_string(),
            "size": config_blob.1,
        },
        "layers": layer_descriptors,
    });
    let bytes = canonical_json(&manifest);
    let (digest, size) = store.write_blob(&bytes)?;
    let mut descriptor = Descriptor::new(format.manifest_type(), size, oci_digest(&digest)?);
    descriptor.set_platform(Some(platform_of(config)?));
    Ok(descriptor)
}

fn platform_of(config: &ImageFile) -> crate::Result<oci_spec::image::Platform> {
    let mut platform = oci_spec::image::PlatformBuilder::default()
        .os(oci_spec::image::Os::from(config.os.as_str()))
        .architecture(oci_spec::image::Arch::from(config.architecture.as_str()))
        .build()
        .context("describing the platform")?;
    if let Some(variant) = config.variant.as_ref().filter(|v| !v.is_empty()) {
        platform.set_variant(Some(variant.clone()));
    }
    Ok(platform)
}

/// Seconds since the epoch as RFC 3339 in UTC (`2024-01-31T12:00:00Z`).
pub fn rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn layer_media_types_read_back_as_written() {
        for format in [Format::Oci, Format::Docker] {
            for encoding in [LayerEncoding::Tar, LayerEncoding::Gzip, LayerEncoding::Zstd] {
                let media_type = encoding.media_type(format);
                assert_eq!(
                    LayerEncoding::of_media_type(&MediaType::from(media_type.as_ref())).unwrap(),
                    encoding,
                    "{media_type}"
                );
            }
        }
        assert_eq!(
            LayerEncoding::media_type(LayerEncoding::Gzip, Format::Docker).to_string(),
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
        assert!(LayerEncoding::of_media_type(&MediaType::ImageConfig).is_err());
    }

    #[test]
    fn manifest_kinds_of_both_families() {
        for (media_type, kind) in [
            (Format::Oci.manifest_type(), Some(ManifestKind::Image)),
            (Format::Docker.manifest_type(), Some(ManifestKind::Image)),
            (MediaType::ImageIndex, Some(ManifestKind::Index)),
            (
                MediaType::from("application/vnd.docker.distribution.manifest.list.v2+json"),
                Some(ManifestKind::Index),
            ),
            (Format::Docker.config_type(), None),
        ] {
            assert_eq!(ManifestKind::of(&media_type), kind, "{media_type}");
        }
    }

    #[test]
    fn configuration_keeps_docker_fields() {
        let json = r#"{"architecture":"amd64","os":"linux","config":{"Healthcheck":{"Test":["NONE"]},"OnBuild":["RUN x"],"Shell":["/bin/bash","-c"],"ArgsEscaped":true},"rootfs":{"type":"layers","diff_ids":[]},"history":[{"created_by":"x","empty_layer":true}]}"#;
        let file: ImageFile = serde_json::from_str(json).expect("parses");
        assert_eq!(file.config.on_build, ["RUN x"]);
        let written = String::from_utf8(file.to_json().expect("json")).expect("utf-8");
        for field in [
            "\"Healthcheck\"",
            "\"OnBuild\"",
            "\"Shell\"",
            "\"ArgsEscaped\":true",
            "\"empty_layer\":true",
        ] {
            assert!(written.contains(field), "{field} in {written}");
        }
    }
}
