//! kiln's OCI distribution client. It owns everything between the store
//! and a registry: resolving a reference (an index to the image for a
//! platform), pulling manifests and blobs into the store and pushing them
//! from it, checking which blobs a registry has, mounting blobs across
//! repositories, chunked and monolithic uploads, retries with backoff,
//! TLS with Docker's per-registry certificates, and authentication with
//! the credentials in Docker's config.json (Basic, Bearer tokens,
//! credential helpers). It also downloads plain URLs for `ADD`.
//!
//! It knows nothing of builds.
//!
//! Modules, each using only those listed before it:
//!
//! - `reference`: image references, parsed and normalised as Docker does.
//! - `error`: the crate's errors, none of which carries a secret.
//! - `retry`: when and how long to wait before another try.
//! - `http`: small HTTP helpers: URLs as shown, errors described, headers.
//! - `credentials`: Docker's config.json and its credential helpers.
//! - `transport`: HTTP clients per registry: TLS, certificates, plain HTTP.
//! - `auth`: challenges, credentials and Bearer tokens per scope.
//! - `session`: each registry's endpoint, and requests sent to it with
//!   authentication, redirects and retries.
//! - `manifest`: manifest media types, and manifests read and written.
//! - `blob`: blob checks, and downloads into the store that resume.
//! - `upload`: blob pushes: mounts, chunked and monolithic uploads.
//! - `client`: the `Client`, its options, one method per operation.
//! - `transfer`: whole images: resolve, pull and push.
//! - `fetch`: plain HTTP(S) downloads, for `ADD`.

mod auth;
mod blob;
pub mod client;
pub mod credentials;
mod error;
pub mod fetch;
mod http;
mod manifest;
pub mod reference;
mod retry;
mod session;
pub mod transfer;
pub mod transport;
mod upload;

pub use auth::{parse_challenge, parse_token_answer, Challenge, MAX_TOKEN_LIFETIME};
pub use client::{Client, ClientOptions, Manifest, Pushed};
pub use credentials::{Credential, DockerConfig};
pub use error::Error;
pub use manifest::manifest_media_type;
pub use reference::{Reference, ReferenceError};
pub use retry::RetryPolicy;
pub use transfer::{Platform, Pulled, PushReport};
pub use transport::TransportOptions;
