//! Plain HTTP(S) downloads, for `ADD https://...`: redirects followed,
//! failures tried again, the content hashed as it streams to its writer.

use std::io::Write;
use std::time::SystemTime;

use kiln_cache::digest::HashingWriter;
use kiln_cache::Digest;
use reqwest::StatusCode;
use url::Url;

use crate::error::Error;
use crate::http::{
    describe, name_not_resolved, retryable_error, shown_url, unknown_host, untrusted_certificate,
};
use crate::retry::{retryable_status, RetryPolicy};
use crate::transport::{self, TransportOptions};

/// Redirects followed for one download.
const MAX_REDIRECTS: u32 = 10;

/// What a download brought.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub size: u64,
    pub digest: Digest,
    /// The server's `Last-Modified`, which becomes the file's time.
    pub modified: Option<SystemTime>,
}

/// Downloads `url` into `out` (which is expected to start empty; a failed
/// try that wrote something is not tried again, as the writer cannot be
/// rewound).
pub async fn download(
    url: &Url,
    transport: &TransportOptions,
    retry: &RetryPolicy,
    out: &mut dyn Write,
) -> Result<Fetched, Error> {
    let mut hashing = HashingWriter::new(out);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_download(url, transport, &mut hashing).await {
            Ok(modified) => {
                let size = hashing.written();
                let (_, digest, _) = hashing.finish();
                return Ok(Fetched {
                    size,
                    digest,
                    modified,
                });
            }
            Err((_, true)) if hashing.written() == 0 && attempt < retry.attempts => {
                tokio::time::sleep(retry.delay(attempt)).await;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// One try; on failure, the error and whether another try may pass.
async fn try_download(
    url: &Url,
    transport: &TransportOptions,
    out: &mut HashingWriter<&mut dyn Write>,
) -> Result<Option<SystemTime>, (Error, bool)> {
    // A name that does not resolve and a certificate kiln does not trust
    // are answers: no other try.
    let failed = |url: &Url, error: &reqwest::Error| {
        if name_not_resolved(error) {
            return (
                unknown_host(url.host_str().unwrap_or_default(), error),
                false,
            );
        }
        (
            Error::Request {
                method: "GET".to_string(),
                url: shown_url(url),
                attempts: 1,
                reason: describe(error),
            },
            retryable_error(error) && !untrusted_certificate(error),
        )
    };
    let mut current = url.clone();
    let mut redirects = 0;
    let mut response = loop {
        let host = match (current.host_str(), current.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => {
                return Err((
                    Error::Request {
                        method: "GET".to_string(),
                        url: shown_url(&current),
                        attempts: 1,
                        reason: "the URL has no host".to_string(),
                    },
                    false,
                ))
            }
        };
        let http = transport::http_client(&host, transport).map_err(|e| (e, false))?;
        let response = http
            .get(current.clone())
            .send()
            .await
            .map_err(|e| failed(&current, &e))?;
        if !response.status().is_redirection() {
            break response;
        }
        redirects += 1;
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .and_then(|l| current.join(l).ok());
        match location {
            Some(next) if redirects <= MAX_REDIRECTS => current = next,
            _ => {
                return Err((
                    Error::Status {
                        method: "GET".to_string(),
                        url: shown_url(&current),
                        status: response.status().as_u16(),
                        message: "a redirect kiln cannot follow".to_string(),
                    },
                    false,
                ))
            }
        }
    };
    let status = response.status();
    if status != StatusCode::OK {
        return Err((
            Error::Status {
                method: "GET".to_string(),
                url: shown_url(&current),
                status: status.as_u16(),
                message: String::new(),
            },
            retryable_status(status.as_u16()),
        ));
    }
    let modified = response
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let stall = transport.stall_timeout;
    loop {
        match tokio::time::timeout(stall, response.chunk()).await {
            Ok(Ok(Some(chunk))) => out
                .write_all(&chunk)
                .map_err(|e| (Error::io("the file being downloaded to", e), false))?,
            Ok(Ok(None)) => return Ok(modified),
            Ok(Err(error)) => return Err(failed(&current, &error)),
            Err(_) => {
                return Err((
                    Error::Request {
                        method: "GET".to_string(),
                        url: shown_url(&current),
                        attempts: 1,
                        reason: format!(
                            "timed out: nothing received for {} s",
                            stall.as_secs_f32()
                        ),
                    },
                    true,
                ))
            }
        }
    }
}
