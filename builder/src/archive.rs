//! Image archives: writing OCI and Docker tarballs (`--output type=oci`,
//! `type=docker`, `kiln save`) and reading them back (`kiln load`).
//!
//! Both formats written here hold an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/…`); the Docker one adds the `manifest.json`
//! that `docker load` reads, so one file serves both kinds of tools.
//! Blobs are copied as stored, so an image saved and loaded again has the
//! same digest.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use crate::error::{bail, Context};
use kiln_cache::layout::{self, LayoutTar};
use kiln_cache::{AtomicFile, Digest, Store};
use kiln_frontend::Platform;
use kiln_registry::Reference;
use oci_spec::image::{ImageIndex, MediaType};

use crate::image::{Format, ImageFile, LayerEncoding, ManifestKind, StoredImage};

/// The annotation containerd and BuildKit put the full image name in.
pub(crate) const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// An image to write into an archive, and the names to give it.
pub struct ArchiveImage<'a> {
    pub image: &'a StoredImage,
    pub names: Vec<Reference>,
}

/// Writes the images into a tar file at `path` (`-` for standard output).
pub fn write_archive(
    store: &Store,
    images: &[ArchiveImage<'_>],
    format: Format,
    path: &Path,
    mtime: i64,
) -> crate::Result<()> {
    write_output(path, |out| write_layout(store, images, format, mtime, out))
}

/// Writes to standard output when `path` is `-`, and otherwise to a file
/// that appears at `path` only once it is complete (an [`AtomicFile`]): an
/// interrupted export leaves no half archive, and an existing file stays
/// until it is replaced.
pub fn write_output(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> crate::Result<()>,
) -> crate::Result<()> {
    if path.as_os_str() == "-" {
        let mut out = BufWriter::new(io::stdout().lock());
        write(&mut out)?;
        return out.flush().context("writing to standard output");
    }
    let mut out = BufWriter::new(AtomicFile::beside(path)?);
    write(&mut out)?;
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", path.display()))?;
    file.commit(path)?;
    Ok(())
}

/// Writes an OCI layout archive (with Docker's manifest.json for
/// `Format::Docker`) to `out`.
fn write_layout(
    store: &Store,
    images: &[ArchiveImage<'_>],
    format: Format,
    mtime: i64,
    out: &mut dyn Write,
) -> crate::Result<()> {
    let mut blobs: BTreeMap<Digest, u64> = BTreeMap::new();
    let mut index_entries = Vec::new();
    let mut docker_entries = Vec::new();
    for entry in images {
        let image = entry.image;
        blobs.insert(image.manifest_digest, image.manifest_size);
        blobs.insert(image.config_digest, image.manifest.config().size());
        for layer in &image.layers {
            blobs.insert(layer.blob, layer.size);
        }
        let descriptor = image.descriptor()?;
        if entry.names.is_empty() {
            index_entries.push(layout::index_entry(&descriptor, &[]));
        }
        for name in &entry.names {
            index_entries.push(layout::index_entry(
                &descriptor,
                &[
                    (CONTAINERD_NAME, &name.to_string()),
                    (layout::REF_NAME, name.tag().unwrap_or("latest")),
                ],
            ));
        }
        docker_entries.push(serde_json::json!({
            "Config": layout::blob_path(&image.config_digest),
            "RepoTags": entry.names.iter().map(Reference::familiar).collect::<Vec<_>>(),
            "Layers": image.layers.iter().map(|l| layout::blob_path(&l.blob)).collect::<Vec<_>>(),
        }));
    }
    let mut tar = LayoutTar::new(out, mtime)?;
    for (digest, size) in &blobs {
        tar.add_blob(digest, *size, store.open_blob(digest)?)?;
    }
    tar.add_index(&index_entries)?;
    if format == Format::Docker {
        tar.add_file("manifest.json", &serde_json::to_vec(&docker_entries)?)?;
    }
    tar.finish()?;
    Ok(())
}

/// An archive entry that must yield all the bytes its header promises: the
/// tar crate ends a truncated entry quietly, which would otherwise surface
/// as a blob that does not match its digest.
struct Complete<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for Complete<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        if read == 0 && self.remaining > 0 && !buffer.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive is truncated",
            ));
        }
        self.remaining = self.remaining.saturating_sub(read as u64);
        Ok(read)
    }
}

/// An image `load` found, with the names it was given.
#[derive(Debug)]
pub struct Loaded {
    pub manifest: Digest,
    pub names: Vec<String>,
}

/// Imports the images of an OCI or Docker archive (optionally compressed)
/// into the store, verifying every blob whose name is its digest.
pub fn load(store: &Store, path: &Path) -> crate::Result<Vec<Loaded>> {
    let reader: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        if path.is_dir() {
            bail!(
                "{} is a directory; kiln load reads an archive file",
                path.display()
            );
        }
        Box::new(File::open(path).with_context(|| format!("opening {}", path.display()))?)
    };
    load_from(store, reader, &path.display().to_string())
}

/// Like [`load`], from `reader`; `shown` names the archive in errors.
pub fn load_from(store: &Store, reader: impl Read, shown: &str) -> crate::Result<Vec<Loaded>> {
    let mut archive = tar::Archive::new(kiln_cache::compress::decompressed(reader)?);
    let mut small: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut files: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
    let unreadable = || format!("{shown} is not a readable tar archive");
    for entry in archive.entries().with_context(unreadable)? {
        let entry = entry.with_context(unreadable)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let size = entry.size();
        let mut entry = Complete {
            inner: entry,
            remaining: size,
        };
        let name = entry
            .inner
            .path()
            .context("reading an entry name")?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if matches!(
            name.as_str(),
            "oci-layout" | "index.json" | "manifest.json" | "repositories"
        ) {
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .with_context(|| format!("reading {name}"))?;
            small.insert(name, bytes);
            continue;
        }
        let stored = match name
            .strip_prefix("blobs/sha256/")
            .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
        {
            Some(expected) => {
                let size = store
                    .import_blob(&mut entry, &expected)
                    .with_context(|| format!("importing {name}"))?;
                (expected, size)
            }
            None => {
                let mut writer = store.blob_writer()?;
                io::copy(&mut entry, &mut writer).with_context(|| format!("importing {name}"))?;
                writer.commit(None)?
            }
        };
        files.insert(name, stored);
    }
    if let Some(index) = small.get("index.json") {
        load_oci(store, index)
    } else if let Some(manifest) = small.get("manifest.json") {
        load_docker(store, manifest, &files)
    } else {
        bail!(
            "{shown} is neither an OCI archive (no index.json) nor a Docker archive (no manifest.json) \
             (is the archive complete?)"
        )
    }
}

fn load_oci(store: &Store, index_bytes: &[u8]) -> crate::Result<Vec<Loaded>> {
    let index = ImageIndex::from_reader(index_bytes).context("index.json is invalid")?;
    let mut loaded = Vec::new();
    let platform = Platform::host();
    for named in index.manifests() {
        let descriptor = select_manifest(store, named, &platform, 0)?;
        let digest: Digest = descriptor.digest().to_string().parse()?;
        let image = StoredImage::read(store, &digest)
            .with_context(|| format!("image {digest} in the archive"))?;
        for layer in &image.layers {
            if !store.has_blob(&layer.blob) {
                bail!("the archive lacks layer {} of image {digest}", layer.blob);
            }
        }
        let annotations = named.annotations().clone().unwrap_or_default();
        let name = annotations
            .get(CONTAINERD_NAME)
            .or_else(|| {
                annotations
                    .get(layout::REF_NAME)
                    .filter(|n| n.contains(['/', ':']))
            })
            .map(|n| Reference::parse(n).map(|r| r.to_string()))
            .transpose()?;
        store.set_name(name.as_deref(), &descriptor)?;
        match loaded
            .iter_mut()
            .find(|l: &&mut Loaded| l.manifest == digest)
        {
            Some(existing) => existing.names.extend(name),
            None => loaded.push(Loaded {
                manifest: digest,
                names: name.into_iter().collect(),
            }),
        }
    }
    Ok(loaded)
}

/// Index levels followed before an archive is taken for a loop.
pub(crate) const MAX_INDEX_DEPTH: usize = 4;

/// The image manifest `descriptor` stands for: itself, or the one for
/// `platform` in the image index it names (nested indexes followed;
/// attestations, which BuildKit lists with an unknown platform, skipped).
pub(crate) fn select_manifest(
    store: &Store,
    descriptor: &oci_spec::image::Descriptor,
    platform: &Platform,
    depth: usize,
) -> crate::Result<oci_spec::image::Descriptor> {
    let digest: Digest = descriptor.digest().to_string().parse()?;
    match ManifestKind::of(descriptor.media_type()) {
        Some(ManifestKind::Image) => return Ok(descriptor.clone()),
        Some(ManifestKind::Index) if depth < MAX_INDEX_DEPTH => {}
        Some(ManifestKind::Index) => bail!("image index {digest} nests too deeply"),
        None => bail!(
            "{digest} is a {}, which is not an image",
            descriptor.media_type()
        ),
    }
    let bytes = store
        .read_blob(&digest)
        .with_context(|| format!("the archive lacks image index {digest}"))?;
    let index = ImageIndex::from_reader(&bytes[..])
        .with_context(|| format!("image index {digest} is invalid"))?;
    let mut offered = Vec::new();
    for candidate in index.manifests() {
        let Some(candidate_platform) = candidate.platform() else {
            // An index inside an index has no platform of its own.
            if *candidate.media_type() == MediaType::ImageIndex {
                if let Ok(found) = select_manifest(store, candidate, platform, depth + 1) {
                    return Ok(found);
                }
            }
            continue;
        };
        let candidate_platform = Platform::new(
            &candidate_platform.os().to_string(),
            &candidate_platform.architecture().to_string(),
            candidate_platform.variant().as_deref().unwrap_or(""),
        );
        if candidate_platform.os == "unknown" {
            continue;
        }
        let matches = candidate_platform.os == platform.os
            && candidate_platform.architecture == platform.architecture
            && (platform.variant.is_empty() || candidate_platform.variant == platform.variant);
        if matches {
            return select_manifest(store, candidate, platform, depth + 1);
        }
        offered.push(candidate_platform.to_string());
    }
    bail!(
        "image index {digest} has no image for {platform} (it has: {})",
        if offered.is_empty() {
            "none".to_string()
        } else {
            offered.join(", ")
        }
    )
}

/// A `docker save` archive: layers are (usually uncompressed) tars named in
/// `manifest.json`; a Docker manifest is made for them.
fn load_docker(
    store: &Store,
    manifest_bytes: &[u8],
    files: &BTreeMap<String, (Digest, u64)>,
) -> crate::Result<Vec<Loaded>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let entries: Vec<Entry> =
        serde_json::from_slice(manifest_bytes).context("manifest.json is invalid")?;
    let mut loaded = Vec::new();
    for entry in entries {
        let file = |name: &str| {
            files
                .get(name)
                .copied()
                .with_context(|| format!("the archive lacks {name}, named in manifest.json"))
        };
        let config_blob = file(&entry.config)?;
        let config_digest = config_blob.0;
        let config: ImageFile = serde_json::from_slice(&store.read_blob(&config_digest)?)
            .context("the image configuration is invalid")?;
        if entry.layers.len() != config.rootfs.diff_ids.len() {
            bail!(
                "manifest.json lists {} layers for {} but its configuration has {}",
                entry.layers.len(),
                entry.config,
                config.rootfs.diff_ids.len()
            );
        }
        let mut layers = Vec::new();
        for (name, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
            let (blob, size) = file(name)?;
            let mut head = [0u8; 8];
            let read = store
                .open_blob(&blob)?
                .read(&mut head)
                .with_context(|| format!("reading {name}"))?;
            let encoding = match kiln_cache::compress::Format::detect(&head[..read]) {
                kiln_cache::compress::Format::Gzip => LayerEncoding::Gzip,
                kiln_cache::compress::Format::Zstd => LayerEncoding::Zstd,
                kiln_cache::compress::Format::Plain => LayerEncoding::Tar,
                other => {
                    bail!("layer {name} is compressed with {other:?}, which images cannot use")
                }
            };
            if encoding == LayerEncoding::Tar && blob != *diff_id {
                bail!("layer {name} does not match the diff ID {diff_id} in the configuration");
            }
            layers.push(crate::image::Layer {
                diff_id: *diff_id,
                blob,
                size,
                encoding,
            });
        }
        // The configuration stays byte for byte as it was: its digest is the
        // image's ID, and it has fields kiln does not know.
        let descriptor =
            crate::image::write_manifest(store, config_blob, &config, &layers, Format::Docker)?;
        let digest: Digest = descriptor.digest().to_string().parse()?;
        let mut names = Vec::new();
        for tag in entry.repo_tags.unwrap_or_default() {
            let name = Reference::parse(&tag)?.to_string();
            store.set_name(Some(&name), &descriptor)?;
            names.push(name);
        }
        if names.is_empty() {
            store.set_name(None, &descriptor)?;
        }
        loaded.push(Loaded {
            manifest: digest,
            names,
        });
    }
    Ok(loaded)
}
