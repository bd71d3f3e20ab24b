//! Blobs in a registry: whether it has one (HEAD), and downloads into the
//! store, checked against digest and size, that resume where a broken
//! transfer stopped.

use std::io::Write;
use std::path::Path;

use kiln_cache::store::BlobWriter;
use kiln_cache::{Digest, Store};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::auth::repository_scope;
use crate::error::Error;
use crate::http::{describe, header, shown_url, status_error};
use crate::reference::Reference;
use crate::session::{Host, Progress, Session};

/// Why a transfer (a download, an upload session) stopped short.
pub(crate) enum Interrupted {
    /// In the middle, in a way another try (from where it stopped, or a
    /// new session) may get past.
    Broken(Error),
    /// For good, or after the request's own tries.
    Fatal(Error),
}

enum Downloaded {
    Complete,
    /// The registry sent the whole blob again instead of the rest.
    Restart,
}

/// Where downloads are written, for errors that name a path.
fn store_tmp() -> &'static Path {
    Path::new("the store's tmp/ directory")
}

fn blob_url(host: &Host, reference: &Reference, digest: &Digest) -> Result<Url, Error> {
    host.url(&format!("v2/{}/blobs/{digest}", reference.repository()))
}

/// The size of a blob the registry has, or `None`; asked with a token for
/// `scope`, so that a push can ask with the token it pushes with.
pub(crate) async fn size(
    session: &Session,
    reference: &Reference,
    digest: &Digest,
    scope: &str,
) -> Result<Option<u64>, Error> {
    let host = session.host(reference.registry()).await?;
    let url = blob_url(&host, reference, digest)?;
    let response = session
        .send(&host, scope, Method::HEAD, &url, true, &|r, _| r)
        .await?;
    match response.status() {
        StatusCode::NOT_FOUND => Ok(None),
        status if status.is_success() => Ok(Some(
            header(&response, "content-length")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        )),
        _ => Err(status_error(&Method::HEAD, &url, response).await),
    }
}

/// Downloads a blob into the store, checking its digest (and size when
/// known). A transfer that breaks resumes where it stopped with a Range
/// request; a registry that cannot resume sends it again from the start.
/// The largest blob [`get_small`] reads into memory: image configurations
/// are a few kilobytes, a cache's list of records a few hundred.
pub(crate) const MAX_SMALL_BLOB: usize = 16 << 20;

/// A small blob (an image configuration) read into memory and checked
/// against its digest, for a caller that may not need it in the store. A
/// body cut short is asked for again, as a manifest's is.
pub(crate) async fn get_small(
    session: &Session,
    reference: &Reference,
    digest: &Digest,
) -> Result<Vec<u8>, Error> {
    let host = session.host(reference.registry()).await?;
    let url = blob_url(&host, reference, digest)?;
    let scope = repository_scope(reference, "pull");
    let retry = session.retry();
    let mut attempt = 0;
    let bytes = loop {
        attempt += 1;
        let response = session
            .send(&host, &scope, Method::GET, &url, true, &|r, _| r)
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(Error::NotFound {
                reference: shown_url(&url),
            });
        }
        if !response.status().is_success() {
            return Err(status_error(&Method::GET, &url, response).await);
        }
        match crate::manifest::read_limited(response, MAX_SMALL_BLOB, &url, session.stall_timeout())
            .await
        {
            Ok(bytes) => break bytes,
            Err(Error::Request { .. }) if attempt < retry.attempts => {
                tokio::time::sleep(retry.delay(attempt)).await;
            }
            Err(error) => return Err(error),
        }
    };
    let actual = Digest::of(&bytes);
    if actual != *digest {
        return Err(Error::DigestMismatch {
            what: "blob",
            url: shown_url(&url),
            expected: *digest,
            actual,
        });
    }
    Ok(bytes.to_vec())
}

pub(crate) async fn fetch(
    session: &Session,
    reference: &Reference,
    (digest, size): (&Digest, Option<u64>),
    unpack_as: Option<&Digest>,
    store: &Store,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), Error> {
    let host = session.host(reference.registry()).await?;
    let url = blob_url(&host, reference, digest)?;
    let scope = repository_scope(reference, "pull");
    let new_writer = || match unpack_as {
        Some(diff_id) => store.layer_blob_writer(&kiln_cache::LayerDigests {
            diff_id: *diff_id,
            blob: *digest,
        }),
        None => store.blob_writer(),
    };
    let mut writer = new_writer()?;
    let mut breaks = 0;
    loop {
        match download(
            session,
            &host,
            &scope,
            &url,
            (digest, size),
            &mut writer,
            progress,
        )
        .await
        {
            Ok(Downloaded::Complete) => break,
            Ok(Downloaded::Restart) => {
                writer = new_writer()?;
            }
            Err(Interrupted::Broken(error)) => {
                breaks += 1;
                if breaks >= session.retry().attempts {
                    return Err(error);
                }
                tokio::time::sleep(session.retry().delay(breaks)).await;
            }
            Err(Interrupted::Fatal(error)) => return Err(error),
        }
    }
    let written = writer.written();
    if let Some(size) = size {
        if written != size {
            return Err(Error::SizeMismatch {
                what: "blob",
                url: shown_url(&url),
                digest: *digest,
                expected: size,
                actual: written,
            });
        }
    }
    writer.commit(Some(digest)).map_err(|e| match e {
        kiln_cache::Error::DigestMismatch { expected, actual } => Error::DigestMismatch {
            what: "blob",
            url: shown_url(&url),
            expected,
            actual,
        },
        other => Error::Cache(other),
    })?;
    Ok(())
}

/// One try at the rest of a blob (its digest and size, when known) from
/// `url` on `host`, with a token for `scope`, from what `writer` holds.
async fn download(
    session: &Session,
    host: &Host,
    scope: &str,
    url: &Url,
    (digest, size): (&Digest, Option<u64>),
    writer: &mut BlobWriter,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Downloaded, Interrupted> {
    let offset = writer.written();
    if size == Some(offset) && offset > 0 {
        return Ok(Downloaded::Complete);
    }
    let range = (offset > 0).then(|| format!("bytes={offset}-"));
    let prepare = |r: reqwest::RequestBuilder, _: &Progress| match &range {
        Some(range) => r.header("Range", range.as_str()),
        None => r,
    };
    let mut response = session
        .send(host, scope, Method::GET, url, true, &prepare)
        .await
        .map_err(Interrupted::Fatal)?;
    let status = response.status();
    if status == StatusCode::NOT_FOUND {
        return Err(Interrupted::Fatal(Error::NotFound {
            reference: shown_url(url),
        }));
    }
    if !status.is_success() {
        return Err(Interrupted::Fatal(
            status_error(&Method::GET, url, response).await,
        ));
    }
    if offset > 0 {
        let resumed = status == StatusCode::PARTIAL_CONTENT
            && header(&response, "content-range")
                .is_some_and(|r| r.starts_with(&format!("bytes {offset}-")));
        if !resumed {
            return Ok(Downloaded::Restart);
        }
    }
    let stall = session.stall_timeout();
    loop {
        let chunk = match tokio::time::timeout(stall, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => return Ok(Downloaded::Complete),
            Ok(Err(error)) => {
                return Err(Interrupted::Broken(Error::Request {
                    method: "GET".to_string(),
                    url: shown_url(url),
                    attempts: 1,
                    reason: describe(&error),
                }))
            }
            Err(_) => {
                return Err(Interrupted::Broken(Error::Request {
                    method: "GET".to_string(),
                    url: shown_url(url),
                    attempts: 1,
                    reason: format!("timed out: nothing received for {} s", stall.as_secs_f32()),
                }))
            }
        };
        if let Some(size) = size {
            // A registry that sends more than the manifest says does not
            // get to fill the disk.
            if writer.written() + chunk.len() as u64 > size {
                return Err(Interrupted::Fatal(Error::SizeMismatch {
                    what: "blob",
                    url: shown_url(url),
                    digest: *digest,
                    expected: size,
                    actual: writer.written() + chunk.len() as u64,
                }));
            }
        }
        writer
            .write_all(&chunk)
            .map_err(|e| Interrupted::Fatal(Error::io(store_tmp(), e)))?;
        progress(chunk.len() as u64);
    }
}
