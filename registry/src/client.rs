//! The OCI distribution API as kiln calls it: a `Client` and its options,
//! with a method for each operation (the login check, manifests, blob
//! checks and downloads, blob pushes), each done by the module that owns it
//! over the client's session.

use std::path::{Path, PathBuf};

use kiln_cache::{Digest, Store};
use reqwest::Method;

use crate::auth::repository_scope;
use crate::blob;
use crate::credentials::{Credential, DockerConfig};
use crate::error::Error;
use crate::http::status_error;
use crate::manifest;
use crate::reference::Reference;
use crate::retry::RetryPolicy;
use crate::session::Session;
use crate::transport::TransportOptions;
use crate::upload::{self, BlobFile};

pub use crate::http::shown_url;
pub use crate::manifest::{
    Manifest, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST,
};
pub use crate::upload::Pushed;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub transport: TransportOptions,
    pub retry: RetryPolicy,
    /// Docker's `config.json`, for credentials; none means anonymous.
    pub docker_config: Option<PathBuf>,
    /// Blobs up to this size go in one PUT, larger ones in PATCH chunks of
    /// this size.
    pub chunk_size: u64,
    /// Where the `docker-credential-*` programs config.json names are
    /// looked for, in order; none means PATH.
    pub credential_helper_dirs: Option<Vec<PathBuf>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            transport: TransportOptions::default(),
            retry: RetryPolicy::default(),
            docker_config: DockerConfig::default_path(),
            chunk_size: 128 << 20,
            credential_helper_dirs: None,
        }
    }
}

pub struct Client {
    options: ClientOptions,
    session: Session,
}

impl Client {
    pub fn new(options: ClientOptions) -> Result<Client, Error> {
        let config = match &options.docker_config {
            Some(path) => {
                let config = DockerConfig::load(path)?;
                Some(match &options.credential_helper_dirs {
                    Some(dirs) => config.with_helper_dirs(dirs.clone()),
                    None => config,
                })
            }
            None => None,
        };
        let session = Session::new(options.transport.clone(), options.retry, config);
        Ok(Client { options, session })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Uses `credential` for `registry` instead of what config.json says
    /// (for `kiln login`, before it is saved).
    pub fn set_credential(&self, registry: &str, credential: Option<Credential>) {
        self.session.set_credential(registry, credential);
    }

    /// Checks that the registry answers and accepts our credentials (for
    /// `kiln login`).
    pub async fn check_login(&self, registry: &str) -> Result<(), Error> {
        let host = self.session.host(registry).await?;
        let url = host.url("v2/")?;
        let response = self
            .session
            .send(&host, "", Method::GET, &url, true, &|r, _| r)
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(status_error(&Method::GET, &url, response).await)
    }

    /// The digest, media type and size of a manifest, without its body;
    /// `None` when the registry does not have it.
    pub async fn head_manifest(
        &self,
        reference: &Reference,
        target: &str,
    ) -> Result<Option<(Digest, String, u64)>, Error> {
        manifest::head(&self.session, reference, target).await
    }

    /// A manifest or index by tag or digest, checked against its digest.
    pub async fn get_manifest(
        &self,
        reference: &Reference,
        target: &str,
    ) -> Result<Manifest, Error> {
        manifest::get(&self.session, reference, target).await
    }

    /// Stores a manifest under `target` (a tag or its digest), checking the
    /// digest the registry gave it.
    pub async fn put_manifest(
        &self,
        reference: &Reference,
        target: &str,
        manifest: &Manifest,
    ) -> Result<(), Error> {
        manifest::put(&self.session, reference, target, manifest).await
    }

    /// The size of a blob the registry has, or `None`.
    pub async fn blob_exists(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<Option<u64>, Error> {
        let scope = repository_scope(reference, "pull");
        blob::size(&self.session, reference, digest, &scope).await
    }

    /// Downloads a blob into the store, checking its digest (and size when
    /// known). A transfer that breaks resumes where it stopped with a Range
    /// request; a registry that cannot resume sends it again from the start.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: Option<u64>,
        store: &Store,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), Error> {
        blob::fetch(
            &self.session,
            reference,
            (digest, size),
            None,
            store,
            progress,
        )
        .await
    }

    /// A small blob (an image configuration) read into memory, checked
    /// against its digest.
    pub async fn get_small_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<Vec<u8>, Error> {
        blob::get_small(&self.session, reference, digest).await
    }

    /// Downloads a layer's blob into the store as [`Client::fetch_blob`]
    /// does, unpacking it into its snapshot (the layer `diff_id`) from the
    /// same bytes as they arrive.
    pub async fn fetch_layer_blob(
        &self,
        reference: &Reference,
        (digest, size): (&Digest, u64),
        diff_id: &Digest,
        store: &Store,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), Error> {
        blob::fetch(
            &self.session,
            reference,
            (digest, Some(size)),
            Some(diff_id),
            store,
            progress,
        )
        .await
    }

    /// Makes the blob present in `reference`'s repository without its
    /// bytes (there already, or mounted from `from`); `None` when that is
    /// not possible.
    pub async fn mount_blob(
        &self,
        reference: &Reference,
        (digest, size): (&Digest, u64),
        from: &Reference,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Option<Pushed>, Error> {
        upload::mount_only(&self.session, reference, (digest, size), from, progress).await
    }

    /// Uploads the blob in `path` unless the registry has it; mounts it from
    /// `mount_from` (a repository of the same registry) when possible.
    pub async fn push_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        path: &Path,
        mount_from: Option<&Reference>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Pushed, Error> {
        let blob = BlobFile { digest, size, path };
        upload::push(
            &self.session,
            self.options.chunk_size,
            reference,
            &blob,
            mount_from,
            progress,
        )
        .await
    }
}
