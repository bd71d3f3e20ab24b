//! The registry side of kiln's commands: pulling images into the store,
//! pushing them out, logging in. The client and its runtime are made on
//! first use, so that builds that need no registry never start one.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use crate::error::{bail, Context};
use kiln_cache::{Digest, Store};
use kiln_registry::transfer::{self, manifest_blobs, BlobFetch, BlobRef};
use kiln_registry::{Client, ClientOptions, Credential, DockerConfig, Pushed, Reference};

use crate::image::{Layer, StoredImage};
use crate::progress::{human_size, Progress};

/// Blobs moved at once, each way.
const PARALLEL_TRANSFERS: usize = 4;

/// Registry settings from the command line.
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// Registries (`host[:port]`) that may be spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Docker's per-registry certificate directory (default
    /// /etc/docker/certs.d).
    pub certs_dir: Option<PathBuf>,
}

pub struct Remote {
    options: ClientOptions,
    connected: OnceLock<(tokio::runtime::Runtime, Client)>,
    /// Held while connecting: the threads that pull base images and read
    /// caches at once make one client, not one each.
    connecting: Mutex<()>,
    /// Where pulls, pushes and downloads are shown: a build's progress
    /// while one runs.
    progress: RwLock<Arc<Progress>>,
}

fn platform_of(platform: &kiln_frontend::Platform) -> transfer::Platform {
    transfer::Platform {
        os: platform.os.clone(),
        architecture: platform.architecture.clone(),
        variant: platform.variant.clone(),
    }
}

impl Remote {
    pub fn new(settings: &RegistrySettings, progress: Arc<Progress>) -> Remote {
        let mut options = ClientOptions::default();
        options.transport.insecure_registries = settings.insecure.clone();
        if let Some(dir) = &settings.certs_dir {
            options.transport.certs_dir = dir.clone();
        }
        Remote {
            options,
            connected: OnceLock::new(),
            connecting: Mutex::new(()),
            progress: RwLock::new(progress),
        }
    }

    /// Shows transfers on a build's progress from now on.
    pub fn show_progress_on(&self, progress: Arc<Progress>) {
        *self
            .progress
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = progress;
    }

    fn progress(&self) -> Arc<Progress> {
        Arc::clone(
            &self
                .progress
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// A line about a transfer.
    fn say(&self, text: &str) {
        self.progress().note(text);
    }

    fn connect(&self) -> crate::Result<&(tokio::runtime::Runtime, Client)> {
        if let Some(connected) = self.connected.get() {
            return Ok(connected);
        }
        let _one_at_a_time = self
            .connecting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(connected) = self.connected.get() {
            return Ok(connected);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the network runtime")?;
        let client = Client::new(self.options.clone())?;
        let _ = self.connected.set((runtime, client));
        self.connected
            .get()
            .context("the registry client disappeared")
    }

    /// Pulls `reference` for `platform` into the store and names it there
    /// (a reference by digest stays unnamed); returns the manifest digest.
    pub fn pull(
        &self,
        store: &Store,
        reference: &Reference,
        platform: &kiln_frontend::Platform,
    ) -> crate::Result<Digest> {
        let image = self.pull_whole(store, reference, platform)?;
        store.set_name(name_in_store(reference).as_deref(), &image.descriptor()?)?;
        Ok(image.manifest_digest)
    }

    /// Reads `reference`'s manifest and configuration for `platform`,
    /// from the store when it has them, without writing anything there: the
    /// store keeps only whole images, and a build may never need this one's
    /// layers. Its layers come with [`Remote::fetch_layers`].
    pub fn pull_config(
        &self,
        store: &Store,
        reference: &Reference,
        platform: &kiln_frontend::Platform,
    ) -> crate::Result<ConfigOnly> {
        let (runtime, client) = self.connect()?;
        let progress = self.progress();
        let step = progress.step(&format!("pulling {}", reference.familiar()));
        let read = runtime
            .block_on(transfer::read_config(
                client,
                store,
                reference,
                &platform_of(platform),
            ))
            .with_context(|| format!("pulling {}", reference.familiar()));
        let (manifest, config) = step.finish_with(read)?;
        let image = StoredImage::from_bytes(&manifest.digest, &manifest.bytes, &config)?;
        check_platform(&image, reference, platform)?;
        self.say(&format!(
            "pulled {} ({}): its manifest and configuration, its layers when a step or an export needs them",
            reference.familiar(),
            manifest.digest
        ));
        Ok(ConfigOnly {
            image,
            manifest: manifest.bytes.to_vec(),
            config,
        })
    }

    fn pull_whole(
        &self,
        store: &Store,
        reference: &Reference,
        platform: &kiln_frontend::Platform,
    ) -> crate::Result<StoredImage> {
        let (runtime, client) = self.connect()?;
        let progress = self.progress();
        let step = progress.step(&format!("pulling {}", reference.familiar()));
        let pulled = runtime
            .block_on(transfer::pull(
                client,
                store,
                reference,
                &platform_of(platform),
                PARALLEL_TRANSFERS,
                &|_, bytes| step.add_bytes(bytes),
            ))
            .with_context(|| format!("pulling {}", reference.familiar()));
        let pulled = step.finish_with(pulled)?;
        let digest = pulled.manifest.digest;
        let image = StoredImage::read(store, &digest)?;
        check_platform(&image, reference, platform)?;
        self.say(&format!(
            "pulled {} ({digest}): {} blob(s) fetched, {}",
            reference.familiar(),
            pulled.fetched,
            human_size(pulled.fetched_bytes)
        ));
        Ok(image)
    }

    /// Fetches layers into the store, each from the repository paired with
    /// it (base images pulled with [`Remote::pull_config`], imported
    /// caches), several at once; with `unpack`, each is unpacked into its
    /// snapshot as its bytes arrive.
    pub fn fetch_layers(
        &self,
        store: &Store,
        layers: &[(Reference, Layer)],
        unpack: bool,
    ) -> crate::Result<()> {
        self.fetch_layers_shown(store, layers, unpack, true)
    }

    /// [`Remote::fetch_layers`], for layers the build can do without: a
    /// failure ends the fetch's progress step as canceled rather than
    /// failed, and the caller says what went wrong.
    pub fn try_fetch_layers(
        &self,
        store: &Store,
        layers: &[(Reference, Layer)],
        unpack: bool,
    ) -> crate::Result<()> {
        self.fetch_layers_shown(store, layers, unpack, false)
    }

    fn fetch_layers_shown(
        &self,
        store: &Store,
        layers: &[(Reference, Layer)],
        unpack: bool,
        failure_shown: bool,
    ) -> crate::Result<()> {
        if layers.is_empty() {
            return Ok(());
        }
        let (runtime, client) = self.connect()?;
        let blobs: Vec<BlobFetch> = layers
            .iter()
            .map(|(reference, layer)| BlobFetch {
                from: reference.clone(),
                blob: BlobRef {
                    digest: layer.blob,
                    size: layer.size,
                    media_type: String::new(),
                },
                unpack_as: unpack.then_some(layer.diff_id),
            })
            .collect();
        let mut repositories: Vec<String> = layers
            .iter()
            .map(|(reference, _)| reference.familiar())
            .collect();
        repositories.sort();
        repositories.dedup();
        let what = format!("{} layer(s) of {}", layers.len(), repositories.join(", "));
        let progress = self.progress();
        let step = progress.step(&format!("fetching {what}"));
        let fetched = runtime
            .block_on(transfer::fetch_blobs(
                client,
                store,
                &blobs,
                PARALLEL_TRANSFERS,
                &|_, bytes| step.add_bytes(bytes),
            ))
            .with_context(|| format!("fetching {what}"));
        match fetched {
            Err(error) if !failure_shown => {
                step.canceled();
                return Err(error);
            }
            fetched => step.finish_with(fetched)?,
        }
        self.say(&format!(
            "fetched {what}, {}",
            human_size(layers.iter().map(|(_, layer)| layer.size).sum())
        ));
        Ok(())
    }

    /// Pushes the image whose manifest is `manifest` to every destination,
    /// grouped by repository. The blobs the store lacks are those of
    /// `elsewhere`, mounted from their repository (or fetched from it when
    /// that fails), and those of `present`, known to be at the destinations
    /// already. Returns the bytes uploaded.
    pub fn push(
        &self,
        store: &Store,
        manifest: &Digest,
        destinations: &[Reference],
        elsewhere: &HashMap<Digest, Reference>,
        present: &HashSet<Digest>,
    ) -> crate::Result<u64> {
        let (runtime, client) = self.connect()?;
        let mut by_repository: Vec<(String, Vec<Reference>)> = Vec::new();
        for destination in destinations {
            let name = destination.name();
            match by_repository.iter_mut().find(|(n, _)| *n == name) {
                Some((_, group)) => group.push(destination.clone()),
                None => by_repository.push((name, vec![destination.clone()])),
            }
        }
        let mut uploaded_in_all = 0;
        for (name, group) in by_repository {
            let mut mounts = mount_sources(store, &group[0])?;
            for (blob, source) in elsewhere {
                if !store.has_blob(blob) {
                    mounts.insert(*blob, source.clone());
                }
            }
            let progress = self.progress();
            let step = progress.step(&format!("pushing to {name}"));
            let report = runtime
                .block_on(transfer::push_beside(
                    client,
                    store,
                    manifest,
                    &group,
                    (&mounts, present),
                    PARALLEL_TRANSFERS,
                    &|_, bytes| step.add_bytes(bytes),
                ))
                .with_context(|| format!("pushing to {name}"));
            let report = step.finish_with(report)?;
            let count = |kind: Pushed| report.blobs.iter().filter(|(_, _, p)| *p == kind).count();
            let uploaded: u64 = report
                .blobs
                .iter()
                .filter(|(_, _, p)| *p == Pushed::Uploaded)
                .map(|(_, size, _)| size)
                .sum();
            for destination in &group {
                self.say(&format!(
                    "pushed {}",
                    destination.with_digest(&manifest.to_string()).familiar()
                ));
            }
            self.say(&format!(
                "  {} blob(s) uploaded ({}), {} mounted, {} already there",
                count(Pushed::Uploaded),
                human_size(uploaded),
                count(Pushed::Mounted),
                count(Pushed::Existed)
            ));
            uploaded_in_all += uploaded;
        }
        Ok(uploaded_in_all)
    }

    /// The manifest `reference` names (its tag or digest), as the registry
    /// has it; none when the registry does not know it.
    pub fn manifest(
        &self,
        reference: &Reference,
    ) -> crate::Result<Option<kiln_registry::Manifest>> {
        let (runtime, client) = self.connect()?;
        let target = reference
            .digest()
            .map(str::to_string)
            .or_else(|| reference.tag().map(str::to_string))
            .unwrap_or_else(|| "latest".to_string());
        match runtime.block_on(client.get_manifest(reference, &target)) {
            Ok(manifest) => Ok(Some(manifest)),
            Err(kiln_registry::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", reference.familiar())),
        }
    }

    /// A small blob of `reference`'s repository (a configuration), read
    /// into memory and checked against its digest.
    pub fn small_blob(&self, reference: &Reference, digest: &Digest) -> crate::Result<Vec<u8>> {
        let (runtime, client) = self.connect()?;
        runtime
            .block_on(client.get_small_blob(reference, digest))
            .with_context(|| format!("fetching {digest} from {}", reference.familiar()))
    }

    /// Downloads `url` (for `ADD`) into `out`.
    pub fn fetch(
        &self,
        url: &str,
        out: &mut dyn std::io::Write,
    ) -> crate::Result<kiln_registry::fetch::Fetched> {
        let parsed = url::Url::parse(url).with_context(|| format!("invalid URL {url:?}"))?;
        let (runtime, _) = self.connect()?;
        self.say(&format!(
            "downloading {}",
            kiln_registry::client::shown_url(&parsed)
        ));
        Ok(runtime.block_on(kiln_registry::fetch::download(
            &parsed,
            &self.options.transport,
            &self.options.retry,
            out,
        ))?)
    }

    /// Checks the credentials against the registry and saves them in
    /// Docker's config.json.
    pub fn login(&self, registry: &str, username: &str, password: &str) -> crate::Result<()> {
        let (runtime, client) = self.connect()?;
        client.set_credential(
            registry,
            Some(Credential::Basic {
                username: username.to_string(),
                password: password.to_string(),
            }),
        );
        runtime
            .block_on(client.check_login(registry))
            .with_context(|| format!("logging in to {registry}"))?;
        let mut config = docker_config()?;
        config.store(registry, username, password)?;
        Ok(())
    }

    /// Forgets the credentials for `registry`; returns whether there were
    /// any.
    pub fn logout(&self, registry: &str) -> crate::Result<bool> {
        Ok(docker_config()?.erase(registry)?)
    }
}

/// Refuses an image pulled for `platform` that is for another: a registry
/// that ignored the platform asked for, or a single-platform image.
fn check_platform(
    image: &StoredImage,
    reference: &Reference,
    platform: &kiln_frontend::Platform,
) -> crate::Result<()> {
    let found = image.config.platform();
    if found.os != platform.os || found.architecture != platform.architecture {
        bail!(
            "{} is an image for {found}, not {platform}",
            reference.familiar()
        );
    }
    Ok(())
}

/// An image's manifest and configuration, read without its layers and
/// not written to the store.
pub struct ConfigOnly {
    pub image: StoredImage,
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
}

/// The name a pulled image gets in the store: none for a reference by
/// digest, which names one image for good and needs no name to find it.
pub fn name_in_store(reference: &Reference) -> Option<String> {
    reference.digest().is_none().then(|| reference.to_string())
}

fn docker_config() -> crate::Result<DockerConfig> {
    let path = DockerConfig::default_path()
        .context("neither DOCKER_CONFIG nor HOME is set: no place for credentials")?;
    Ok(DockerConfig::load(&path)?)
}

/// Where each blob of the images in the store can be mounted from on
/// `destination`'s registry: other repositories there that the store's
/// images came from or went to.
fn mount_sources(
    store: &Store,
    destination: &Reference,
) -> crate::Result<HashMap<Digest, Reference>> {
    let mut sources = HashMap::new();
    for entry in store.images()? {
        let Some(name) = entry.name else { continue };
        let Ok(reference) = Reference::parse(&name) else {
            continue;
        };
        if reference.registry() != destination.registry()
            || reference.repository() == destination.repository()
        {
            continue;
        }
        let Ok(digest) = entry.manifest.digest().to_string().parse::<Digest>() else {
            continue;
        };
        let Ok(bytes) = store.read_blob(&digest) else {
            continue;
        };
        let manifest = kiln_registry::Manifest {
            bytes: bytes.into(),
            media_type: String::new(),
            digest,
        };
        if let Ok((config, layers)) = manifest_blobs(&manifest) {
            for blob in std::iter::once(config).chain(layers) {
                sources
                    .entry(blob.digest)
                    .or_insert_with(|| reference.clone());
            }
        }
    }
    Ok(sources)
}

/// The registry of a `kiln login`/`logout` argument, which may be written
/// as Docker writes it: `docker.io`, `https://index.docker.io/v1/`,
/// `localhost:5000`.
pub fn registry_of(server: &str) -> crate::Result<String> {
    let host = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .unwrap_or(server);
    let host = host.split('/').next().unwrap_or(host);
    if host.is_empty() {
        bail!("invalid registry {server:?}");
    }
    Ok(match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    })
}
