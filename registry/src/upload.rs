//! Blob uploads: none when the registry has the blob, a mount when another
//! repository of the registry has it, else an upload session fed in one PUT
//! or in PATCH chunks. A chunk that fails goes on from what the registry
//! holds; a session the registry lost starts over.

use std::path::Path;

use kiln_cache::Digest;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use crate::auth::repository_scope;
use crate::blob::{self, Interrupted};
use crate::error::Error;
use crate::http::{header, shown_url, status_error};
use crate::reference::Reference;
use crate::retry::retryable_status;
use crate::session::{Host, Progress, Session};

/// What happened to a blob on push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The registry had it.
    Existed,
    /// Mounted from another repository of the same registry.
    Mounted,
    Uploaded,
}

/// A blob to push: its digest and size, and the file that holds it.
pub(crate) struct BlobFile<'a> {
    pub(crate) digest: &'a Digest,
    pub(crate) size: u64,
    pub(crate) path: &'a Path,
}

/// Uploads `blob` to `reference`'s repository unless the registry has it;
/// mounts it from `mount_from` (a repository of the same registry) when
/// possible. Blobs up to `chunk_size` go in one PUT, larger ones in PATCH
/// chunks of that size.
pub(crate) async fn push(
    session: &Session,
    chunk_size: u64,
    reference: &Reference,
    blob: &BlobFile<'_>,
    mount_from: Option<&Reference>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Pushed, Error> {
    let host = session.host(reference.registry()).await?;
    let mount_from = mount_from.filter(|from| mountable(reference, from));
    let scope = push_scope(reference, mount_from);
    if blob::size(session, reference, blob.digest, &scope)
        .await?
        .is_some()
    {
        progress(blob.size);
        return Ok(Pushed::Existed);
    }
    let upload = Upload {
        host: &host,
        scope: &scope,
        reference,
        blob,
        chunk_size,
    };
    let mut sessions = 0;
    loop {
        match upload_session(session, &upload, mount_from, progress).await {
            Ok(pushed) => return Ok(pushed),
            Err(Interrupted::Broken(error)) => {
                sessions += 1;
                if sessions >= session.retry().attempts {
                    return Err(error);
                }
                tokio::time::sleep(session.retry().delay(sessions)).await;
            }
            Err(Interrupted::Fatal(error)) => return Err(error),
        }
    }
}

/// Whether a blob of `from` can be mounted into `reference`'s repository:
/// another repository of the same registry.
fn mountable(reference: &Reference, from: &Reference) -> bool {
    from.registry() == reference.registry() && from.repository() != reference.repository()
}

/// One scope (so one token) for a whole push to `reference`, the checks
/// included, and pulling from `mount_from`.
fn push_scope(reference: &Reference, mount_from: Option<&Reference>) -> String {
    match mount_from {
        Some(from) => format!(
            "{} {}",
            repository_scope(reference, "pull,push"),
            repository_scope(from, "pull")
        ),
        None => repository_scope(reference, "pull,push"),
    }
}

/// Makes `digest` present in `reference`'s repository without sending its
/// bytes: already there, or mounted from `from` (another repository of the
/// same registry). `None` when neither worked: the caller then needs the
/// bytes. An upload session a refused mount opens is left unused, for the
/// registry to expire.
pub(crate) async fn mount_only(
    session: &Session,
    reference: &Reference,
    (digest, size): (&Digest, u64),
    from: &Reference,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Option<Pushed>, Error> {
    let scope = push_scope(
        reference,
        Some(from).filter(|from| mountable(reference, from)),
    );
    if blob::size(session, reference, digest, &scope)
        .await?
        .is_some()
    {
        progress(size);
        return Ok(Some(Pushed::Existed));
    }
    if !mountable(reference, from) {
        return Ok(None);
    }
    let host = session.host(reference.registry()).await?;
    let mut start = host.url(&format!("v2/{}/blobs/uploads/", reference.repository()))?;
    start
        .query_pairs_mut()
        .append_pair("mount", &digest.to_string())
        .append_pair("from", from.repository());
    let response = session
        .send(&host, &scope, Method::POST, &start, true, &|r, _| {
            r.header(CONTENT_LENGTH, "0")
        })
        .await?;
    if response.status() == StatusCode::CREATED {
        progress(size);
        return Ok(Some(Pushed::Mounted));
    }
    Ok(None)
}

/// The blob an upload session sends, and where.
struct Upload<'a> {
    host: &'a Host,
    scope: &'a str,
    reference: &'a Reference,
    blob: &'a BlobFile<'a>,
    chunk_size: u64,
}

/// One upload session: started (or mounted), fed in chunks or in one
/// go, closed with the digest. A chunk that fails is followed by asking
/// the registry how much it has, and the upload goes on from there; a
/// session the registry no longer knows is `Broken`, for the caller to
/// start another.
async fn upload_session(
    session: &Session,
    upload: &Upload<'_>,
    mount_from: Option<&Reference>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Pushed, Interrupted> {
    let host = upload.host;
    let blob = upload.blob;
    let mut start = host
        .url(&format!(
            "v2/{}/blobs/uploads/",
            upload.reference.repository()
        ))
        .map_err(Interrupted::Fatal)?;
    if let Some(from) = mount_from {
        start
            .query_pairs_mut()
            .append_pair("mount", &blob.digest.to_string())
            .append_pair("from", from.repository());
    }
    let response = session
        .send(host, upload.scope, Method::POST, &start, true, &|r, _| {
            r.header(CONTENT_LENGTH, "0")
        })
        .await
        .map_err(Interrupted::Fatal)?;
    if mount_from.is_some() && response.status() == StatusCode::CREATED {
        progress(blob.size);
        return Ok(Pushed::Mounted);
    }
    if response.status() != StatusCode::ACCEPTED {
        return Err(Interrupted::Fatal(
            status_error(&Method::POST, &start, response).await,
        ));
    }
    let mut location = location_of(&response, &start).map_err(Interrupted::Fatal)?;
    let mut offset = 0u64;
    let mut failures = 0;
    loop {
        let remaining = blob.size - offset;
        let closing = remaining <= upload.chunk_size;
        let length = if closing {
            remaining
        } else {
            upload.chunk_size
        };
        let (method, url, expected) = if closing {
            let mut finish = location.clone();
            finish
                .query_pairs_mut()
                .append_pair("digest", &blob.digest.to_string());
            (Method::PUT, finish, StatusCode::CREATED)
        } else {
            (Method::PATCH, location.clone(), StatusCode::ACCEPTED)
        };
        let from = offset;
        let path = blob.path;
        let result = session
            .send(
                host,
                upload.scope,
                method.clone(),
                &url,
                false,
                &|r, moved| {
                    let r = r
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, length.to_string());
                    if length == 0 {
                        return r;
                    }
                    let r = if closing && from == 0 {
                        r
                    } else {
                        r.header("Content-Range", format!("{from}-{}", from + length - 1))
                    };
                    r.body(file_body(path, from, length, moved.clone()))
                },
            )
            .await;
        let failure = match result {
            Ok(response) if response.status() == expected => {
                progress(length);
                if closing {
                    return Ok(Pushed::Uploaded);
                }
                location = location_of(&response, &location).map_err(Interrupted::Fatal)?;
                offset = uploaded_through(&response).unwrap_or(from + length);
                continue;
            }
            Ok(response) if retryable_status(response.status().as_u16()) => {
                status_error(&method, &url, response).await
            }
            Ok(response) => {
                return Err(Interrupted::Fatal(
                    status_error(&method, &url, response).await,
                ))
            }
            Err(error @ Error::Request { .. }) => error,
            Err(error) => return Err(Interrupted::Fatal(error)),
        };
        failures += 1;
        if failures >= session.retry().attempts {
            return Err(Interrupted::Fatal(failure));
        }
        tokio::time::sleep(session.retry().delay(failures)).await;
        // Where does the registry stand? Go on from what it has.
        match upload_status(session, host, upload.scope, &location).await {
            Ok((next, received)) => {
                location = next;
                offset = received;
            }
            Err(Error::Status { status: 404, .. }) => {
                // The session is gone: after the closing request, because
                // it went through and only its answer was lost.
                return match blob::size(session, upload.reference, blob.digest, upload.scope).await
                {
                    Ok(Some(_)) if closing => {
                        progress(length);
                        Ok(Pushed::Uploaded)
                    }
                    Ok(_) => Err(Interrupted::Broken(failure)),
                    Err(error) => Err(Interrupted::Fatal(error)),
                };
            }
            Err(error) => return Err(Interrupted::Fatal(error)),
        }
    }
}

/// How much of an upload the registry holds, and where it goes on.
async fn upload_status(
    session: &Session,
    host: &Host,
    scope: &str,
    location: &Url,
) -> Result<(Url, u64), Error> {
    let response = session
        .send(host, scope, Method::GET, location, true, &|r, _| r)
        .await?;
    if response.status() != StatusCode::NO_CONTENT {
        return Err(status_error(&Method::GET, location, response).await);
    }
    let received = uploaded_through(&response).unwrap_or(0);
    let next = location_of(&response, location).unwrap_or_else(|_| location.clone());
    Ok((next, received))
}

/// The offset after what a registry says it has received (`Range: 0-N`).
/// A registry that has nothing says `0-0`, as one that has one byte does;
/// taking it as nothing at worst repeats a byte it then refuses, and the
/// upload starts over.
fn uploaded_through(response: &Response) -> Option<u64> {
    let range = header(response, "range")?;
    let end: u64 = range.rsplit_once('-')?.1.trim().parse().ok()?;
    Some(if end == 0 { 0 } else { end + 1 })
}

/// The upload URL in a response's `Location`, which may be relative.
fn location_of(response: &Response, request: &Url) -> Result<Url, Error> {
    let value = header(response, "location").ok_or_else(|| Error::Status {
        method: "upload".to_string(),
        url: shown_url(request),
        status: response.status().as_u16(),
        message: "no Location for the upload".to_string(),
    })?;
    request.join(&value).map_err(|e| Error::Status {
        method: "upload".to_string(),
        url: shown_url(request),
        status: response.status().as_u16(),
        message: format!("an invalid upload Location: {e}"),
    })
}

/// `length` bytes of the file at `path` from `offset`, streamed, each
/// piece marking progress.
fn file_body(path: &Path, offset: u64, length: u64, progress: Progress) -> reqwest::Body {
    use futures_util::{StreamExt, TryStreamExt};
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let path = path.to_path_buf();
    let stream = futures_util::stream::once(async move {
        let mut file = tokio::fs::File::open(&path).await?;
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        Ok::<_, std::io::Error>(tokio_util::io::ReaderStream::with_capacity(
            file.take(length),
            256 * 1024,
        ))
    })
    .try_flatten();
    let touched = progress.clone();
    let stream = stream
        .inspect(move |_| touched.touch())
        .chain(futures_util::stream::poll_fn(move |_| {
            progress.body_sent();
            std::task::Poll::Ready(None)
        }));
    reqwest::Body::wrap_stream(stream)
}
