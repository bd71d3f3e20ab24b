//! Manifests and indexes: the media types kiln reads, and their HEAD, GET
//! (of bounded size, checked against the digest asked for or announced)
//! and PUT.

use std::time::Duration;

use bytes::Bytes;
use kiln_cache::Digest;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use crate::auth::repository_scope;
use crate::error::Error;
use crate::http::{describe, header, shown_url, status_error};
use crate::reference::Reference;
use crate::session::{Host, Session};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Every manifest kind kiln reads, for `Accept`.
const MANIFEST_TYPES: [&str; 4] = [
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
];

/// Manifests are small; a larger answer is not one.
const MAX_MANIFEST_SIZE: usize = 4 << 20;

/// A manifest or index as the registry sent it.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

impl Manifest {
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_MANIFEST_LIST
    }
}

/// The URL of `reference`'s manifest `target` (a tag or digest).
fn manifest_url(host: &Host, reference: &Reference, target: &str) -> Result<Url, Error> {
    host.url(&format!("v2/{}/manifests/{target}", reference.repository()))
}

/// The digest, media type and size of a manifest, without its body;
/// `None` when the registry does not have it.
pub(crate) async fn head(
    session: &Session,
    reference: &Reference,
    target: &str,
) -> Result<Option<(Digest, String, u64)>, Error> {
    let host = session.host(reference.registry()).await?;
    let url = manifest_url(&host, reference, target)?;
    let scope = repository_scope(reference, "pull");
    let response = session
        .send(&host, &scope, Method::HEAD, &url, true, &|r, _| {
            r.header(ACCEPT, MANIFEST_TYPES.join(", "))
        })
        .await?;
    match response.status() {
        StatusCode::NOT_FOUND => Ok(None),
        status if status.is_success() => {
            let digest =
                header(&response, "docker-content-digest").and_then(|d| d.parse::<Digest>().ok());
            let media_type = header(&response, "content-type").unwrap_or_default();
            let size = header(&response, "content-length")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Ok(digest.map(|digest| (digest, media_type, size)))
        }
        _ => Err(status_error(&Method::HEAD, &url, response).await),
    }
}

/// A manifest or index by tag or digest, checked against its digest.
pub(crate) async fn get(
    session: &Session,
    reference: &Reference,
    target: &str,
) -> Result<Manifest, Error> {
    // A digest kiln cannot compute is one it cannot check.
    let pinned = match target.split_once(':') {
        Some(_) => Some(
            target
                .parse::<Digest>()
                .map_err(|_| Error::InvalidManifest {
                    reference: reference.with_target(target).to_string(),
                    reason: "kiln checks sha256 digests only".to_string(),
                })?,
        ),
        None => None,
    };
    let host = session.host(reference.registry()).await?;
    let url = manifest_url(&host, reference, target)?;
    let scope = repository_scope(reference, "pull");
    let retry = session.retry();
    let mut attempt = 0;
    let (bytes, header_digest, content_type) = loop {
        attempt += 1;
        let response = session
            .send(&host, &scope, Method::GET, &url, true, &|r, _| {
                r.header(ACCEPT, MANIFEST_TYPES.join(", "))
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(Error::NotFound {
                reference: format!("{}", reference.with_target(target)),
            });
        }
        if !response.status().is_success() {
            return Err(status_error(&Method::GET, &url, response).await);
        }
        let header_digest =
            header(&response, "docker-content-digest").and_then(|d| d.parse::<Digest>().ok());
        let content_type = header(&response, "content-type").unwrap_or_default();
        match read_limited(response, MAX_MANIFEST_SIZE, &url, session.stall_timeout()).await {
            Ok(bytes) => break (bytes, header_digest, content_type),
            // A body cut short or stalled is a fault of the way, which the
            // next try may not meet.
            Err(Error::Request { .. }) if attempt < retry.attempts => {
                tokio::time::sleep(retry.delay(attempt)).await;
            }
            Err(Error::Request {
                method,
                url,
                reason,
                ..
            }) => {
                return Err(Error::Request {
                    method,
                    url,
                    attempts: attempt,
                    reason,
                })
            }
            Err(error) => return Err(error),
        }
    };
    let digest = Digest::of(&bytes);
    let expected = pinned.or(header_digest);
    if let Some(expected) = expected {
        if expected != digest {
            return Err(Error::DigestMismatch {
                what: "manifest",
                url: shown_url(&url),
                expected,
                actual: digest,
            });
        }
    }
    let media_type =
        manifest_media_type(&bytes, &content_type).ok_or_else(|| Error::InvalidManifest {
            reference: reference.with_target(target).to_string(),
            reason: format!("it is not an image manifest or index (Content-Type {content_type:?})"),
        })?;
    Ok(Manifest {
        bytes,
        media_type,
        digest,
    })
}

/// Stores a manifest under `target` (a tag or its digest), checking the
/// digest the registry gave it.
pub(crate) async fn put(
    session: &Session,
    reference: &Reference,
    target: &str,
    manifest: &Manifest,
) -> Result<(), Error> {
    let host = session.host(reference.registry()).await?;
    let url = manifest_url(&host, reference, target)?;
    let scope = repository_scope(reference, "pull,push");
    let body = manifest.bytes.clone();
    let media_type = manifest.media_type.clone();
    let response = session
        .send(&host, &scope, Method::PUT, &url, true, &|r, _| {
            r.header(CONTENT_TYPE, media_type.as_str())
                .body(body.clone())
        })
        .await?;
    if !response.status().is_success() {
        return Err(status_error(&Method::PUT, &url, response).await);
    }
    if let Some(digest) =
        header(&response, "docker-content-digest").and_then(|d| d.parse::<Digest>().ok())
    {
        if digest != manifest.digest {
            return Err(Error::DigestMismatch {
                what: "pushed manifest",
                url: shown_url(&url),
                expected: manifest.digest,
                actual: digest,
            });
        }
    }
    Ok(())
}

/// A manifest's media type: the registry's Content-Type when it names a
/// manifest kind, else the `mediaType` in the document, else what its shape
/// says.
pub fn manifest_media_type(bytes: &[u8], content_type: &str) -> Option<String> {
    let content_type = content_type.split(';').next().unwrap_or("").trim();
    if MANIFEST_TYPES.contains(&content_type) {
        return Some(content_type.to_string());
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(media_type) = value.get("mediaType").and_then(|m| m.as_str()) {
        return MANIFEST_TYPES
            .contains(&media_type)
            .then(|| media_type.to_string());
    }
    if value.get("manifests").is_some() {
        Some(OCI_INDEX.to_string())
    } else if value.get("config").is_some() && value.get("layers").is_some() {
        Some(OCI_MANIFEST.to_string())
    } else {
        None
    }
}

/// A small body, read whole, of at most `limit` bytes.
pub(crate) async fn read_limited(
    mut response: Response,
    limit: usize,
    url: &Url,
    stall: Duration,
) -> Result<Bytes, Error> {
    let mut body = Vec::new();
    loop {
        let Ok(next) = tokio::time::timeout(stall, response.chunk()).await else {
            return Err(Error::Request {
                method: "GET".to_string(),
                url: shown_url(url),
                attempts: 1,
                reason: format!("timed out: nothing received for {} s", stall.as_secs_f32()),
            });
        };
        match next {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(Error::InvalidManifest {
                        reference: shown_url(url),
                        reason: format!("it is larger than {limit} bytes"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Bytes::from(body)),
            Err(error) => {
                return Err(Error::Request {
                    method: "GET".to_string(),
                    url: shown_url(url),
                    attempts: 1,
                    reason: describe(&error),
                })
            }
        }
    }
}
