//! kiln's OCI distribution client: references, manifests and blobs pulled
//! into and pushed from the store, authentication (Docker's config.json,
//! Basic, Bearer tokens), TLS with Docker's per-registry certificates, and
//! retries with backoff.
//!
//! It knows nothing of builds.

mod auth;
pub mod client;
pub mod credentials;
mod error;
pub mod fetch;
pub mod reference;
mod retry;
pub mod transfer;
pub mod transport;

pub use client::{Client, ClientOptions, Manifest, Pushed};
pub use credentials::{Credential, DockerConfig};
pub use error::Error;
pub use reference::{Reference, ReferenceError};
pub use retry::RetryPolicy;
pub use transfer::{Platform, Pulled, PushReport};
pub use transport::TransportOptions;
