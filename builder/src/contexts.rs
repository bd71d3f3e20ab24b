//! Build contexts beyond a local directory: those given by name
//! (`--build-context NAME=VALUE`), and main contexts that are a URL, a tar
//! archive or standard input.
//!
//! A named context stands in for a stage or an image of its name wherever
//! the Dockerfile names one (`FROM`, `COPY --from`, `RUN --mount=from`,
//! ONBUILD triggers), as in BuildKit: an image context is resolved like a
//! base image (its digest keys what reads it), a directory or archive
//! context is read like the main context (its files' content keys what
//! reads it, through the same stat cache). Only the contexts the target's
//! stages name are looked at.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use kiln_cache::extract::{extract, ExtractMode, ExtractOptions};
use kiln_cache::layout::Layout;
use kiln_cache::{Digest, Limits, Store};
use kiln_frontend::git_ref::GitRef;
use kiln_frontend::{BaseImages, DockerIgnore, NamedContext, Platform, ResolvedImage};
use kiln_registry::Reference;
use oci_spec::image::ImageIndex;

use crate::archive::{select_manifest, CONTAINERD_NAME, MAX_INDEX_DEPTH};
use crate::dockerfile::DockerfileArgs;
use crate::error::{bail, Context};
use crate::git::GitSource;
use crate::image::{ManifestKind, StoredImage};
use crate::remote::Remote;
use crate::secrets::Secrets;

/// What a build context is made of, as `--build-context` or the command's
/// CONTEXT names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSource {
    /// A local directory.
    Directory(PathBuf),
    /// `docker-image://REF`: an image, from the store or its registry.
    Image(String),
    /// `oci-layout://PATH[:TAG|@DIGEST]`: an image of an OCI layout
    /// directory.
    OciLayout {
        path: PathBuf,
        tag: Option<String>,
        digest: Option<String>,
    },
    /// An `http://` or `https://` URL: a tar archive (maybe compressed) or
    /// a single file.
    Url(String),
    /// A git repository.
    Git(String),
}

impl ContextSource {
    /// Reads VALUE as buildx does: a scheme names what it is, anything else
    /// is a local directory.
    pub fn parse(value: &str) -> crate::Result<ContextSource> {
        if value.is_empty() {
            bail!("a build context cannot be empty");
        }
        if let Some(reference) = value.strip_prefix("docker-image://") {
            if reference.is_empty() {
                bail!("docker-image:// needs an image reference (docker-image://alpine:3.20)");
            }
            return Ok(ContextSource::Image(reference.to_string()));
        }
        if let Some(layout) = value.strip_prefix("oci-layout://") {
            return parse_oci_layout(layout);
        }
        match GitRef::parse(value) {
            Ok(Some(_)) => return Ok(ContextSource::Git(value.to_string())),
            Ok(None) => {}
            Err(error) => bail!("invalid git URL {value:?}: {error}"),
        }
        if value.starts_with("http://") || value.starts_with("https://") {
            return Ok(ContextSource::Url(value.to_string()));
        }
        if let Some((scheme, _)) = value.split_once("://") {
            bail!(
                "unknown build context scheme {scheme}:// in {value:?} (known: docker-image://, \
                 oci-layout://, http://, https://, git URLs, or a local directory)"
            );
        }
        Ok(ContextSource::Directory(PathBuf::from(value)))
    }
}

fn parse_oci_layout(layout: &str) -> crate::Result<ContextSource> {
    if layout.is_empty() {
        bail!("oci-layout:// needs a directory (oci-layout://PATH[:TAG|@DIGEST])");
    }
    let (path, tag, digest) = match layout.rsplit_once('@') {
        Some((path, digest)) => {
            digest.parse::<Digest>().map_err(|e| {
                crate::Error::Invalid(format!("invalid digest in oci-layout://{layout}: {e}"))
            })?;
            (path, None, Some(digest.to_string()))
        }
        None => {
            // A tag follows the last colon after the last slash.
            let name_start = layout.rfind('/').map_or(0, |slash| slash + 1);
            match layout[name_start..].rfind(':') {
                Some(colon) => {
                    let colon = name_start + colon;
                    (
                        &layout[..colon],
                        Some(layout[colon + 1..].to_string()),
                        None,
                    )
                }
                None => (layout, None, None),
            }
        }
    };
    if path.is_empty() || tag.as_deref() == Some("") {
        bail!("invalid oci-layout://{layout}: expected oci-layout://PATH[:TAG|@DIGEST]");
    }
    Ok(ContextSource::OciLayout {
        path: PathBuf::from(path),
        tag,
        digest,
    })
}

/// One `--build-context NAME=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedContextSpec {
    /// The name as given, which FROM, `--from` and `from=` match after the
    /// normalisation of image names (`docker.io/library/alpine:latest` is
    /// `alpine`); `NAME::os/arch` applies to stages of that platform only.
    pub name: String,
    pub source: ContextSource,
}

impl NamedContextSpec {
    pub fn parse(spec: &str) -> crate::Result<NamedContextSpec> {
        let Some((name, value)) = spec.split_once('=') else {
            bail!(
                "invalid --build-context {spec:?}: expected NAME=VALUE (a directory, \
                 docker-image://REF, oci-layout://PATH[:TAG], an http(s) URL or a git URL)"
            );
        };
        if name.is_empty() {
            bail!("invalid --build-context {spec:?}: the name is empty");
        }
        let source = ContextSource::parse(value)
            .map_err(|e| crate::Error::Invalid(format!("invalid --build-context {spec:?}: {e}")))?;
        Ok(NamedContextSpec {
            name: name.to_string(),
            source,
        })
    }

    /// The name lookups compare with, and the platform it is limited to.
    fn key(&self) -> crate::Result<(String, Option<String>)> {
        let (name, platform) = match self.name.split_once("::") {
            Some((name, platform)) => {
                let platform = Platform::parse(platform).map_err(|reason| {
                    crate::Error::Invalid(format!(
                        "invalid platform in --build-context {}: {reason}",
                        self.name
                    ))
                })?;
                (name, Some(platform.to_string()))
            }
            None => (self.name.as_str(), None),
        };
        Ok((normalized_name(name), platform))
    }
}

/// A name as BuildKit looks named contexts up: an image reference in its
/// short form without `:latest` (`docker.io/library/alpine:latest` and
/// `alpine` are both `alpine`), anything else lower-cased.
fn normalized_name(name: &str) -> String {
    let lower = name.to_lowercase();
    match Reference::parse(&lower) {
        Ok(reference) => {
            let familiar = reference.familiar();
            familiar
                .strip_suffix(":latest")
                .map_or(familiar.clone(), str::to_string)
        }
        Err(_) => lower,
    }
}

/// A named context's files, as steps read them.
#[derive(Debug)]
pub struct FilesContext {
    /// The directory, absolute.
    pub root: PathBuf,
    /// Its own `.dockerignore`, as BuildKit applies it.
    pub ignore: DockerIgnore,
    /// The time SOURCE_DATE_EPOCH takes from it (a download's
    /// Last-Modified, else its archive's newest file).
    pub epoch: Option<i64>,
}

/// The files contexts a build read, by name, and the downloads they were
/// unpacked from (kept until the build ends).
#[derive(Default)]
pub struct NamedFiles {
    pub contexts: BTreeMap<String, FilesContext>,
    _downloads: Vec<tempfile::TempDir>,
}

/// The base images of a build with its named contexts in front: the
/// frontend asks it for every name FROM, `--from` and `from=` use.
pub struct NamedContexts<'a> {
    specs: Vec<((String, Option<String>), ContextSource)>,
    images: &'a mut dyn BaseImages,
    store: &'a Store,
    remote: Option<&'a Remote>,
    /// What git repositories are fetched with (`--ssh`).
    secrets: &'a Secrets,
    /// Contexts resolved so far, by name and platform.
    resolved: BTreeMap<(String, String), NamedContext>,
    files: NamedFiles,
}

impl<'a> NamedContexts<'a> {
    /// The contexts `specs` gives, in front of `images`. Local directories
    /// are checked now: a mistyped path is an error before anything runs.
    pub fn new(
        specs: &[NamedContextSpec],
        images: &'a mut dyn BaseImages,
        store: &'a Store,
        remote: Option<&'a Remote>,
        secrets: &'a Secrets,
    ) -> crate::Result<NamedContexts<'a>> {
        let mut keyed = Vec::with_capacity(specs.len());
        for spec in specs {
            let source = match &spec.source {
                ContextSource::Directory(path) => {
                    if !path.exists() {
                        bail!(
                            "--build-context {}: there is no directory {} (a local directory, \
                             docker-image://REF, oci-layout://PATH or a URL)",
                            spec.name,
                            path.display()
                        );
                    }
                    let root = std::fs::canonicalize(path).with_context(|| {
                        format!(
                            "--build-context {}: cannot use the directory {}",
                            spec.name,
                            path.display()
                        )
                    })?;
                    if !root.is_dir() {
                        bail!(
                            "--build-context {}: {} is not a directory",
                            spec.name,
                            path.display()
                        );
                    }
                    ContextSource::Directory(root)
                }
                other => other.clone(),
            };
            keyed.push((spec.key()?, source));
        }
        Ok(NamedContexts {
            specs: keyed,
            images,
            store,
            remote,
            secrets,
            resolved: BTreeMap::new(),
            files: NamedFiles::default(),
        })
    }

    /// The files contexts the lowering used.
    pub fn into_files(self) -> NamedFiles {
        self.files
    }

    /// The SOURCE_DATE_EPOCH a files context gives, when `name` is one.
    pub fn epoch_of(&mut self, name: &str) -> crate::Result<Option<Option<i64>>> {
        let platform = Platform::host();
        match self.spec_for(name, &platform) {
            None => return Ok(None),
            // Only a download or a checkout has a time; an image is not even
            // looked up.
            Some((_, source))
                if !matches!(source, ContextSource::Url(_) | ContextSource::Git(_)) =>
            {
                return Ok(Some(None))
            }
            Some(_) => {}
        }
        match self
            .lookup(name, &platform)
            .map_err(crate::Error::Invalid)?
        {
            Some(NamedContext::Files { name }) => {
                Ok(Some(self.files.contexts.get(&name).and_then(|c| c.epoch)))
            }
            Some(_) => Ok(Some(None)),
            None => Ok(None),
        }
    }

    fn spec_for(&self, name: &str, platform: &Platform) -> Option<(String, ContextSource)> {
        if name.eq_ignore_ascii_case("scratch") || name.eq_ignore_ascii_case("context") {
            return None;
        }
        let key = normalized_name(name);
        let platform = platform.to_string();
        let find = |wanted: Option<&str>| {
            self.specs
                .iter()
                .find(|((name, limited), _)| *name == key && limited.as_deref() == wanted)
        };
        find(Some(&platform))
            .or_else(|| find(None))
            .map(|((name, limited), source)| {
                let shown = match limited {
                    Some(platform) => format!("{name}::{platform}"),
                    None => name.clone(),
                };
                (shown, source.clone())
            })
    }

    fn lookup(&mut self, name: &str, platform: &Platform) -> Result<Option<NamedContext>, String> {
        let Some((key, source)) = self.spec_for(name, platform) else {
            return Ok(None);
        };
        let cache_key = (key.clone(), platform.to_string());
        if let Some(done) = self.resolved.get(&cache_key) {
            return Ok(Some(done.clone()));
        }
        let context = self
            .resolve_source(&key, &source, platform)
            .map_err(|e| format!("{e:#}"))?;
        self.resolved.insert(cache_key, context.clone());
        Ok(Some(context))
    }

    fn resolve_source(
        &mut self,
        key: &str,
        source: &ContextSource,
        platform: &Platform,
    ) -> crate::Result<NamedContext> {
        match source {
            ContextSource::Directory(root) => {
                self.add_files(key, root.clone(), None)?;
                Ok(NamedContext::Files {
                    name: key.to_string(),
                })
            }
            ContextSource::Image(reference) if reference == "scratch" => Ok(NamedContext::Scratch),
            ContextSource::Image(reference) => Ok(NamedContext::Image(Box::new(
                self.images
                    .resolve(reference, platform)
                    .map_err(crate::Error::Invalid)?,
            ))),
            ContextSource::OciLayout { path, tag, digest } => {
                let manifest = import_layout_image(
                    self.store,
                    path,
                    tag.as_deref(),
                    digest.as_deref(),
                    platform,
                )?;
                let image = StoredImage::read(self.store, &manifest)?;
                Ok(NamedContext::Image(Box::new(ResolvedImage {
                    reference: manifest.to_string(),
                    config: image.config.config,
                })))
            }
            ContextSource::Url(url) => {
                let Some(remote) = self.remote else {
                    bail!("{url} is not downloaded here");
                };
                let download = self.store.temp_dir()?;
                let unpacked = download_context(remote, url, download.path(), self.store.limits())?;
                self.files._downloads.push(download);
                let epoch = unpacked.last_modified.or(unpacked.newest_file);
                self.add_files(key, unpacked.root, epoch)?;
                Ok(NamedContext::Files {
                    name: key.to_string(),
                })
            }
            ContextSource::Git(url) => {
                let git = GitRef::parse(url)
                    .ok()
                    .flatten()
                    .with_context(|| format!("{url} is not a git URL"))?;
                let checkout = crate::git::checkout(self.store, self.secrets, &GitSource::new(git))
                    .with_context(|| format!("fetching {url}"))?;
                self.add_files(key, checkout.dir, Some(checkout.commit_time))?;
                Ok(NamedContext::Files {
                    name: key.to_string(),
                })
            }
        }
    }

    fn add_files(&mut self, key: &str, root: PathBuf, epoch: Option<i64>) -> crate::Result<()> {
        // Only the context's own `.dockerignore`: BuildKit reads no
        // `<Dockerfile>.dockerignore` for a named context.
        let path = root.join(".dockerignore");
        let ignore = match std::fs::read(&path) {
            Ok(bytes) => DockerIgnore::parse(
                &String::from_utf8_lossy(&bytes),
                &path.display().to_string(),
            )?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DockerIgnore::none(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        self.files.contexts.insert(
            key.to_string(),
            FilesContext {
                root,
                ignore,
                epoch,
            },
        );
        Ok(())
    }
}

impl BaseImages for NamedContexts<'_> {
    /// The image `reference` names; a context given that name stands for
    /// it (an image context is that image, files an empty configuration),
    /// so that nothing looks the replaced image up.
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        match self.lookup(reference, platform)? {
            Some(NamedContext::Image(resolved)) => Ok(*resolved),
            Some(NamedContext::Scratch | NamedContext::Files { .. }) => Ok(ResolvedImage {
                reference: reference.to_string(),
                config: kiln_frontend::graph::ImageConfig::default(),
            }),
            None => self.images.resolve(reference, platform),
        }
    }

    fn named_context(
        &mut self,
        name: &str,
        platform: &Platform,
    ) -> Result<Option<NamedContext>, String> {
        self.lookup(name, platform)
    }

    /// Passed on only without named contexts: a dry lowering does not know
    /// which names they replace, and must not pull an image one stands for.
    fn prefetch(&mut self, wanted: &[(String, Platform)]) {
        if self.specs.is_empty() {
            self.images.prefetch(wanted);
        }
    }
}

/// Copies the image `tag` or `digest` names (or the layout's only image)
/// from the OCI layout directory `dir` into the store, for `platform` when
/// it is an index, and returns its manifest digest.
fn import_layout_image(
    store: &Store,
    dir: &Path,
    tag: Option<&str>,
    digest: Option<&str>,
    platform: &Platform,
) -> crate::Result<Digest> {
    let shown = format!("oci-layout://{}", dir.display());
    let index_path = dir.join("index.json");
    let index_bytes = std::fs::read(&index_path).with_context(|| {
        format!(
            "{shown}: cannot read {} (is it an OCI layout directory?)",
            index_path.display()
        )
    })?;
    let index = ImageIndex::from_reader(&index_bytes[..])
        .with_context(|| format!("{shown}: index.json is invalid"))?;
    let name_of = |descriptor: &oci_spec::image::Descriptor| -> Vec<String> {
        let annotations = descriptor.annotations().clone().unwrap_or_default();
        [kiln_cache::layout::REF_NAME, CONTAINERD_NAME]
            .iter()
            .filter_map(|key| annotations.get(*key).cloned())
            .collect()
    };
    let manifests = index.manifests();
    let chosen = match (tag, digest) {
        (_, Some(digest)) => manifests
            .iter()
            .find(|d| d.digest().to_string() == digest)
            .cloned()
            .or_else(|| {
                // A digest the index does not list may still be a blob of the
                // layout (the image of one platform of an index).
                let blob = Layout::new(dir).blob_path(&digest.parse().ok()?);
                let size = std::fs::metadata(blob).ok()?.len();
                let digest: oci_spec::image::Digest = digest.parse().ok()?;
                Some(oci_spec::image::Descriptor::new(
                    oci_spec::image::MediaType::ImageManifest,
                    size,
                    digest,
                ))
            })
            .with_context(|| format!("{shown} has no image {digest}"))?,
        (Some(tag), None) => manifests
            .iter()
            .find(|d| {
                name_of(d)
                    .iter()
                    .any(|name| name == tag || name.ends_with(&format!(":{tag}")))
            })
            .cloned()
            .with_context(|| {
                let tags: Vec<String> = manifests.iter().flat_map(name_of).collect();
                format!(
                    "{shown} has no image tagged {tag:?} (its index.json names: {})",
                    if tags.is_empty() {
                        "none".to_string()
                    } else {
                        tags.join(", ")
                    }
                )
            })?,
        (None, None) => match manifests.as_slice() {
            [only] => only.clone(),
            _ => manifests
                .iter()
                .find(|d| name_of(d).iter().any(|name| name == "latest"))
                .cloned()
                .with_context(|| {
                    format!(
                        "{shown} holds {} images and none is tagged latest: name one \
                         (oci-layout://PATH:TAG or oci-layout://PATH@sha256:...)",
                        manifests.len()
                    )
                })?,
        },
    };
    import_manifests(store, dir, &chosen, 0)?;
    let selected = select_manifest(store, &chosen, platform, 0)
        .with_context(|| format!("{shown}: choosing the image for {platform}"))?;
    let manifest: Digest = selected.digest().to_string().parse()?;
    let image = StoredImage::read(store, &manifest)?;
    import_blob(store, dir, &image.config_digest)?;
    for layer in &image.layers {
        import_blob(store, dir, &layer.blob)
            .with_context(|| format!("{shown}: layer {} of image {manifest}", layer.blob))?;
    }
    Ok(manifest)
}

/// Imports the manifest `descriptor` names and, for an index, the
/// manifests it lists (not their layers).
fn import_manifests(
    store: &Store,
    dir: &Path,
    descriptor: &oci_spec::image::Descriptor,
    depth: usize,
) -> crate::Result<()> {
    let digest: Digest = descriptor.digest().to_string().parse()?;
    import_blob(store, dir, &digest)?;
    let is_index = matches!(
        ManifestKind::of(descriptor.media_type()),
        Some(ManifestKind::Index)
    );
    if is_index && depth < MAX_INDEX_DEPTH {
        let bytes = store.read_blob(&digest)?;
        let index = ImageIndex::from_reader(&bytes[..])
            .with_context(|| format!("image index {digest} is invalid"))?;
        for child in index.manifests() {
            if ManifestKind::of(child.media_type()).is_some() {
                import_manifests(store, dir, child, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// Copies a blob of the layout into the store, checked against its digest.
fn import_blob(store: &Store, dir: &Path, digest: &Digest) -> crate::Result<()> {
    if store.has_blob(digest) {
        return Ok(());
    }
    let path = Layout::new(dir).blob_path(digest);
    let file = File::open(&path).with_context(|| format!("the layout lacks {}", path.display()))?;
    store
        .import_blob(file, digest)
        .with_context(|| format!("importing {}", path.display()))?;
    Ok(())
}

/// A context downloaded and unpacked.
struct Unpacked {
    /// The directory holding its files.
    root: PathBuf,
    last_modified: Option<i64>,
    /// The newest time of the archive's regular files.
    newest_file: Option<i64>,
    /// It was a single file, not an archive.
    single_file: Option<PathBuf>,
}

/// The time of the remote source a SOURCE_DATE_EPOCH stage adds: a
/// download's Last-Modified, else its archive's newest file; a git
/// commit's time.
pub fn epoch_of_source(
    source: &kiln_frontend::epoch::EpochSource,
    store: &Store,
    remote: &Remote,
    secrets: &Secrets,
) -> crate::Result<Option<i64>> {
    if let Ok(Some(git)) = GitRef::parse(&source.url) {
        let mut git_source = GitSource::new(git);
        if let Some(checksum) = &source.checksum {
            git_source.checksum = Some(checksum.clone());
        }
        let checkout = crate::git::checkout(store, secrets, &git_source)
            .with_context(|| format!("fetching {} for SOURCE_DATE_EPOCH", source.url))?;
        return Ok(Some(checkout.commit_time));
    }
    let work = store.temp_dir()?;
    let unpacked = download_context(remote, &source.url, work.path(), store.limits())
        .context("for SOURCE_DATE_EPOCH")?;
    Ok(unpacked.last_modified.or(unpacked.newest_file))
}

/// `relative` inside `root`, where it exists and its symlinks, if any, lead
/// to somewhere inside `root` too: an archive from elsewhere must not make
/// a directory or file of this machine part of the build.
fn inside(root: &Path, relative: &str) -> Option<PathBuf> {
    let root = std::fs::canonicalize(root).ok()?;
    let path = std::fs::canonicalize(root.join(relative.trim_start_matches('/'))).ok()?;
    path.starts_with(&root).then_some(path)
}

/// Downloads `url` into `work`: a tar archive (any compression kiln reads)
/// is unpacked into `work/context`; any other file is put there as
/// `context`, as BuildKit names it.
fn download_context(
    remote: &Remote,
    url: &str,
    work: &Path,
    limits: Limits,
) -> crate::Result<Unpacked> {
    let download = work.join("download");
    let mut file =
        File::create(&download).with_context(|| format!("creating {}", download.display()))?;
    let fetched = remote
        .fetch(url, &mut file)
        .with_context(|| format!("downloading {url}"))?;
    drop(file);
    let last_modified = fetched
        .modified
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|since| since.as_secs() as i64);
    let mut unpacked = unpack_context(&download, &work.join("context"), url, limits)?;
    unpacked.last_modified = last_modified;
    Ok(unpacked)
}

/// Unpacks the tar archive `archive` into `root`, or when it is no archive
/// puts it there as the file `context`, within `limits`.
fn unpack_context(
    archive: &Path,
    root: &Path,
    shown: &str,
    limits: Limits,
) -> crate::Result<Unpacked> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let open = || File::open(archive).with_context(|| format!("reading {}", archive.display()));
    if !kiln_cache::compress::is_tar_archive(open()?) {
        let file = root.join("context");
        std::fs::rename(archive, &file)
            .with_context(|| format!("moving {} into place", archive.display()))?;
        return Ok(Unpacked {
            root: root.to_path_buf(),
            last_modified: None,
            newest_file: None,
            single_file: Some(file),
        });
    }
    let options = ExtractOptions {
        mode: ExtractMode::Archive,
        owner: None,
        limits,
    };
    extract(kiln_cache::compress::decompressed(open()?)?, root, &options)
        .with_context(|| format!("unpacking {shown}"))?;
    Ok(Unpacked {
        root: root.to_path_buf(),
        last_modified: None,
        newest_file: newest_file_time(open()?)?,
        single_file: None,
    })
}

/// The latest modification time of the regular files of a tar archive,
/// which BuildKit takes for SOURCE_DATE_EPOCH when the server gave no
/// Last-Modified.
fn newest_file_time(archive: File) -> crate::Result<Option<i64>> {
    let mut tar = tar::Archive::new(kiln_cache::compress::decompressed(archive)?);
    let mut newest = None;
    for entry in tar.entries().context("reading the context archive")? {
        let entry = entry.context("reading the context archive")?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        if let Ok(time) = entry.header().mtime() {
            let time = time as i64;
            newest = Some(newest.map_or(time, |n: i64| n.max(time)));
        }
    }
    Ok(newest)
}

/// A main context kiln made from a URL, an archive or standard input: where
/// it is unpacked (removed when this is dropped) and its time.
pub struct MainContext {
    /// SOURCE_DATE_EPOCH's `context`: the download's Last-Modified, else
    /// its archive's newest file; a git checkout's commit time.
    pub epoch: Option<i64>,
    _files: Option<tempfile::TempDir>,
}

impl MainContext {
    /// A context that is somewhere of its own (a git checkout the store
    /// keeps), from a source of that time.
    pub fn with_time(epoch: i64) -> MainContext {
        MainContext {
            epoch: Some(epoch),
            _files: None,
        }
    }
}

/// Makes the build's context a directory when it is not one: a git URL
/// checked out, any other URL, an archive or standard input unpacked (see
/// [`prepare_main_context`]); `args` then names that directory.
pub fn resolve_main_context(
    args: &mut DockerfileArgs,
    store: &Store,
    remote: &Remote,
    secrets: &Secrets,
) -> crate::Result<MainContext> {
    match crate::git::context_checkout(store, secrets, args)? {
        Some((checked_out, commit_time)) => {
            *args = checked_out;
            Ok(MainContext::with_time(commit_time))
        }
        None => prepare_main_context(args, store, remote),
    }
}

/// Makes the build's context a directory when it is not one: an HTTP(S)
/// URL (a tar archive, or a Dockerfile built with an empty context), `-`
/// (a tar archive on standard input, or a Dockerfile) or a local tar
/// archive, with `#:SUBDIR` for a directory of the archive. `args` then
/// names the unpacked directory (and the Dockerfile in it, unless `-f`
/// names a local one: a URL's `-f` is a path inside it).
pub fn prepare_main_context(
    args: &mut DockerfileArgs,
    store: &Store,
    remote: &Remote,
) -> crate::Result<MainContext> {
    let local = MainContext {
        epoch: None,
        _files: None,
    };
    let text = args.context.to_string_lossy().into_owned();
    if args.context.is_dir() {
        return Ok(local);
    }
    let is_url = text.starts_with("http://") || text.starts_with("https://");
    let (location, subdir) = match text.split_once("#:") {
        Some((location, subdir)) if !is_url || !subdir.is_empty() => {
            (location.to_string(), Some(subdir.to_string()))
        }
        _ => (text.clone(), None),
    };
    let from_stdin = location == "-";
    let local_archive = || File::open(&location).is_ok_and(kiln_cache::compress::is_tar_archive);
    if !is_url && !from_stdin && !local_archive() {
        // Not ours: the usual error for a missing directory (or a file that
        // is no archive) follows.
        return Ok(local);
    }
    if from_stdin && args.file.as_deref() == Some(Path::new("-")) {
        bail!("standard input cannot be both the build context and the Dockerfile (-f -)");
    }
    let work = store.temp_dir()?;
    let root = work.path().join("context");
    let unpacked = if is_url {
        download_context(remote, &location, work.path(), store.limits())?
    } else {
        let archive = if from_stdin {
            let path = work.path().join("stdin");
            let mut file =
                File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            std::io::copy(&mut std::io::stdin().lock(), &mut file)
                .context("reading the build context from standard input")?;
            path
        } else {
            let path = work.path().join("archive");
            std::fs::copy(&location, &path)
                .with_context(|| format!("reading the build context {location}"))?;
            path
        };
        unpack_context(&archive, &root, &location, store.limits())?
    };
    let mut context = unpacked.root.clone();
    if let Some(subdir) = &subdir {
        context = match inside(&context, subdir) {
            Some(dir) if dir.is_dir() => dir,
            _ => bail!(
                "the build context {text} has no directory {subdir} (that stays inside the archive)"
            ),
        };
    }
    match &unpacked.single_file {
        // No archive: the file is the Dockerfile, and the context holds it
        // alone, as BuildKit builds a Dockerfile URL (or `docker build - <
        // Dockerfile`); `-f` names nothing then.
        Some(dockerfile) => {
            if from_stdin && args.file.is_some() {
                bail!("standard input holds a Dockerfile, and -f names another: give one of them");
            }
            args.file = Some(dockerfile.clone());
            args.shown_as = Some(location.clone());
        }
        None => {
            if is_url {
                if let Some(file) = &args.file {
                    let named = file.to_string_lossy().into_owned();
                    let Some(found) = inside(&context, &named) else {
                        bail!("-f {named}: a URL context's Dockerfile is a file inside it, and {text} has none there");
                    };
                    args.file = Some(found);
                    args.shown_as = Some(named);
                }
            }
            if args.file.is_none() {
                let dockerfile = crate::dockerfile::default_dockerfile(&context);
                args.shown_as = dockerfile
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned());
                args.file = Some(dockerfile);
            }
        }
    }
    args.context = context;
    let epoch = unpacked.last_modified.or(unpacked.newest_file);
    Ok(MainContext {
        epoch,
        _files: Some(work),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_of_an_archive_never_leads_out_of_it() {
        let root = tempfile::tempdir().expect("root");
        std::fs::create_dir_all(root.path().join("app/src")).expect("dirs");
        std::fs::write(root.path().join("app/Dockerfile"), "FROM scratch\n").expect("file");
        std::os::unix::fs::symlink("app/src", root.path().join("inner")).expect("link");
        std::os::unix::fs::symlink("/", root.path().join("host")).expect("link");
        std::os::unix::fs::symlink("../..", root.path().join("app/up")).expect("link");
        let real = std::fs::canonicalize(root.path()).expect("canonical");
        assert_eq!(inside(root.path(), "/app/"), Some(real.join("app")));
        assert_eq!(inside(root.path(), "inner"), Some(real.join("app/src")));
        assert_eq!(
            inside(root.path(), "app/Dockerfile"),
            Some(real.join("app/Dockerfile"))
        );
        assert_eq!(inside(root.path(), "host"), None);
        assert_eq!(inside(root.path(), "host/etc/passwd"), None);
        assert_eq!(inside(root.path(), "app/up"), None);
        assert_eq!(inside(root.path(), "../"), None);
        assert_eq!(inside(root.path(), "missing"), None);
    }

    #[test]
    fn values_are_read_as_buildx_reads_them() {
        fn parse(value: &str) -> ContextSource {
            ContextSource::parse(value).expect("valid")
        }
        assert_eq!(parse("../dir"), ContextSource::Directory("../dir".into()));
        assert_eq!(
            parse("docker-image://alpine:3.20"),
            ContextSource::Image("alpine:3.20".into())
        );
        assert_eq!(
            parse("oci-layout:///srv/layout:v1"),
            ContextSource::OciLayout {
                path: "/srv/layout".into(),
                tag: Some("v1".into()),
                digest: None
            }
        );
        assert_eq!(
            parse("oci-layout://../my:dir/layout"),
            ContextSource::OciLayout {
                path: "../my:dir/layout".into(),
                tag: None,
                digest: None
            }
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse(&format!("oci-layout://layout@{digest}")),
            ContextSource::OciLayout {
                path: "layout".into(),
                tag: None,
                digest: Some(digest.clone())
            }
        );
        assert_eq!(
            parse("https://example.com/ctx.tar.gz"),
            ContextSource::Url("https://example.com/ctx.tar.gz".into())
        );
        for git in [
            "https://example.com/repo.git#main:sub",
            "git@example.com:repo.git",
            "git://example.com/repo",
        ] {
            assert_eq!(parse(git), ContextSource::Git(git.into()), "{git}");
        }
        assert!(ContextSource::parse("ftp://example.com/x").is_err());
        assert!(ContextSource::parse("oci-layout://").is_err());
        assert!(ContextSource::parse("oci-layout://dir@sha256:short").is_err());
    }

    #[test]
    fn specs_need_a_name_and_a_value() {
        let spec = NamedContextSpec::parse("base=../dir").expect("valid");
        assert_eq!(spec.name, "base");
        assert!(NamedContextSpec::parse("base").is_err());
        assert!(NamedContextSpec::parse("=../dir").is_err());
        assert!(NamedContextSpec::parse("base=").is_err());
    }

    #[test]
    fn names_are_compared_as_buildkit_compares_them() {
        assert_eq!(normalized_name("docker.io/library/alpine:latest"), "alpine");
        assert_eq!(normalized_name("alpine"), "alpine");
        assert_eq!(normalized_name("Alpine:3.20"), "alpine:3.20");
        assert_eq!(
            normalized_name("registry:5000/team/app"),
            "registry:5000/team/app"
        );
        let spec = NamedContextSpec::parse("base::linux/amd64=../dir").expect("valid");
        assert_eq!(
            spec.key().expect("key"),
            ("base".to_string(), Some("linux/amd64".to_string()))
        );
    }
}
