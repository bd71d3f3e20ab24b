//! Errors of the registry client. None of them carries a credential: URLs
//! are shown without user information and tokens never leave `auth`.

use std::path::PathBuf;

use kiln_cache::Digest;

use crate::reference::ReferenceError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Reference(#[from] ReferenceError),

    /// A request that failed on the network, after its last try.
    #[error("{method} {url} failed after {attempts} attempt(s): {reason}")]
    Request {
        method: String,
        url: String,
        attempts: u32,
        reason: String,
    },

    /// The registry answered with an error status.
    #[error("{method} {url}: the registry answered {status}{}", detail(.message))]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
    },

    /// `what` says what was refused: "the credentials of NAME", "the
    /// identity token", "access without credentials (kiln login HOST)".
    #[error("{registry} refused {what}: {reason}")]
    Unauthorized {
        registry: String,
        what: String,
        reason: String,
    },

    #[error("{what} {expected} from {url} does not match its content, which hashes to {actual}")]
    DigestMismatch {
        what: &'static str,
        url: String,
        expected: Digest,
        actual: Digest,
    },

    #[error(
        "{what} {digest} from {url} has {actual} bytes, not the {expected} its descriptor says"
    )]
    SizeMismatch {
        what: &'static str,
        url: String,
        digest: Digest,
        expected: u64,
        actual: u64,
    },

    #[error("{reference} has no image for {platform} (it has: {available})")]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: String,
    },

    #[error("{reference}: {reason}")]
    InvalidManifest { reference: String, reason: String },

    #[error("{reference} is not in the registry")]
    NotFound { reference: String },

    #[error("{registry} speaks neither HTTPS nor, as a registry it may, plain HTTP: {reason}")]
    Unreachable { registry: String, reason: String },

    /// A host name (a registry's, a token service's, an ADD URL's) that
    /// does not resolve.
    #[error("{host} does not resolve to an address ({reason}): check the name")]
    UnknownHost { host: String, reason: String },

    #[error("TLS set-up for {registry}: {reason}")]
    Tls { registry: String, reason: String },

    #[error("credentials in {}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },

    #[error("credential helper docker-credential-{helper}: {reason}")]
    CredentialHelper { helper: String, reason: String },

    #[error(transparent)]
    Cache(#[from] kiln_cache::Error),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(crate) fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
