//! The OCI distribution API, request by request: manifests, blobs, uploads,
//! with authentication and retries around each request.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kiln_cache::{Digest, Store};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use crate::auth::{self, Challenge, TokenCache};
use crate::credentials::{Credential, DockerConfig};
use crate::error::{detail, Error};
use crate::reference::Reference;
use crate::retry::{retryable_status, RetryPolicy};
use crate::transport::{self, TransportOptions};

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

/// Redirects followed for one blob before giving up.
const MAX_REDIRECTS: u32 = 5;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub transport: TransportOptions,
    pub retry: RetryPolicy,
    /// Docker's `config.json`, for credentials; none means anonymous.
    pub docker_config: Option<std::path::PathBuf>,
    /// Blobs up to this size go in one PUT, larger ones in PATCH chunks of
    /// this size.
    pub chunk_size: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            transport: TransportOptions::default(),
            retry: RetryPolicy::default(),
            docker_config: DockerConfig::default_path(),
            chunk_size: 128 << 20,
        }
    }
}

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

/// What happened to a blob on push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The registry had it.
    Existed,
    /// Mounted from another repository of the same registry.
    Mounted,
    Uploaded,
}

/// A registry reached over HTTPS or, where allowed, HTTP.
#[derive(Debug)]
struct Host {
    registry: String,
    http: reqwest::Client,
    base: Url,
}

pub struct Client {
    options: ClientOptions,
    config: Option<DockerConfig>,
    hosts: tokio::sync::Mutex<HashMap<String, Arc<Host>>>,
    credentials: Mutex<HashMap<String, Option<Credential>>>,
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: TokenCache,
    token_fetch: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A URL as it may be shown: without user information, and without its
/// query, which for storage behind a registry holds signatures and for
/// uploads the registry's state.
pub fn shown_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.to_string()
}

/// Whether `url` is the registry itself (same scheme, host and port), the
/// only place credentials may go.
fn same_origin(url: &Url, base: &Url) -> bool {
    url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
}

/// When a request last moved: bytes of its body went out, or it began.
/// A request that does not move for the stall timeout is given up on,
/// however long it has taken as a whole.
#[derive(Clone)]
pub(crate) struct Progress {
    started: std::time::Instant,
    last: Arc<std::sync::atomic::AtomicU64>,
    body_sent: Arc<std::sync::atomic::AtomicBool>,
}

/// Once a body is all sent, the answer may wait until the network has
/// carried what the socket buffers still hold: on a slow link that takes a
/// while, with no sign of progress, so the wait may be this many times the
/// stall timeout.
const DRAIN_FACTOR: u32 = 5;

impl Progress {
    fn new() -> Progress {
        Progress {
            started: std::time::Instant::now(),
            last: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            body_sent: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    pub(crate) fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn body_sent(&self) {
        self.touch();
        self.body_sent
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Returns once nothing has moved for `limit` (longer once the body is
    /// sent).
    async fn stalled(&self, limit: Duration) {
        let step = (limit / 4).max(Duration::from_millis(20));
        loop {
            tokio::time::sleep(step).await;
            let last = Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed));
            let allowed = if self.body_sent.load(std::sync::atomic::Ordering::Relaxed) {
                limit * DRAIN_FACTOR
            } else {
                limit
            };
            if self.started.elapsed().saturating_sub(last) >= allowed {
                return;
            }
        }
    }
}

/// How a request ended, before it is judged.
enum Sent {
    Answer(Response),
    Failed(reqwest::Error),
    Stalled,
}

/// A reqwest error with its causes, which it does not print itself.
pub(crate) fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn repository_scope(reference: &Reference, actions: &str) -> String {
    format!("repository:{}:{actions}", reference.repository())
}

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The error a registry reports in its body (`{"errors":[{"message"}]}`).
async fn status_error(method: &Method, url: &Url, response: Response) -> Error {
    let (status, message) = registry_message(response).await;
    Error::Status {
        method: method.to_string(),
        url: shown_url(url),
        status,
        message,
    }
}

/// An error answer's status and what its body says about it.
async fn registry_message(response: Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|value| {
            let errors = value.get("errors")?.as_array()?;
            let messages: Vec<String> = errors
                .iter()
                .filter_map(|e| {
                    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                    let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
                    (!code.is_empty() || !message.is_empty())
                        .then(|| format!("{code} {message}").trim().to_string())
                })
                .collect();
            (!messages.is_empty()).then(|| messages.join("; "))
        })
        .unwrap_or_default();
    (status, message)
}

/// Whether a request failed because the server's certificate is not one we
/// trust: it speaks TLS, so falling back to HTTP would only hide that.
fn untrusted_certificate(error: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        // I/O errors hide the errors they wrap from `source`: unwrap them.
        let mut inner: &(dyn std::error::Error + 'static) = cause;
        loop {
            if let Some(rustls::Error::InvalidCertificate(_)) =
                inner.downcast_ref::<rustls::Error>()
            {
                return true;
            }
            match inner
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(wrapped) => inner = wrapped,
                None => break,
            }
        }
        source = cause.source();
    }
    false
}

fn untrusted(registry: &str, transport: &TransportOptions, error: &reqwest::Error) -> Error {
    Error::Tls {
        registry: registry.to_string(),
        reason: format!(
            "{} (a registry with its own CA needs it in {}/{registry}/ca.crt)",
            describe(error),
            transport.certs_dir.display()
        ),
    }
}

/// Whether a failed request is worth another try.
fn retryable_error(error: &reqwest::Error) -> bool {
    !error.is_builder() && !error.is_redirect() && !error.is_status()
}

impl Client {
    pub fn new(options: ClientOptions) -> Result<Client, Error> {
        let config = match &options.docker_config {
            Some(path) => Some(DockerConfig::load(path)?),
            None => None,
        };
        Ok(Client {
            options,
            config,
            hosts: tokio::sync::Mutex::new(HashMap::new()),
            credentials: Mutex::new(HashMap::new()),
            challenges: Mutex::new(HashMap::new()),
            tokens: TokenCache::default(),
            token_fetch: Mutex::new(HashMap::new()),
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The registry's endpoint, found once: HTTPS, or HTTP where allowed
    /// and HTTPS does not answer. Its answer to `GET /v2/` says how it wants
    /// to be authenticated, so that later requests need no 401 first.
    async fn host(&self, registry: &str) -> Result<Arc<Host>, Error> {
        let mut hosts = self.hosts.lock().await;
        if let Some(host) = hosts.get(registry) {
            return Ok(host.clone());
        }
        let http = transport::http_client(registry, &self.options.transport)?;
        let api = transport::api_host(registry);
        let endpoint = |scheme: &str| {
            Url::parse(&format!("{scheme}://{api}/")).map_err(|e| Error::Unreachable {
                registry: registry.to_string(),
                reason: e.to_string(),
            })
        };
        let https = endpoint("https")?;
        let ping = |base: &Url| http.get(base.join("v2/").unwrap_or(base.clone())).send();
        let (base, answer) = match ping(&https).await {
            Ok(answer) => (https, Some(answer)),
            Err(error) if untrusted_certificate(&error) => {
                return Err(untrusted(registry, &self.options.transport, &error));
            }
            Err(https_error)
                if transport::plain_http_allowed(registry, &self.options.transport) =>
            {
                let plain = endpoint("http")?;
                match ping(&plain).await {
                    Ok(answer) => (plain, Some(answer)),
                    Err(plain_error) => {
                        return Err(Error::Unreachable {
                            registry: registry.to_string(),
                            reason: format!(
                                "HTTPS: {}; HTTP: {}",
                                describe(&https_error),
                                describe(&plain_error)
                            ),
                        })
                    }
                }
            }
            // Requests will fail again, with retries and a full report.
            Err(_) => (https, None),
        };
        if let Some(answer) = answer.filter(|a| a.status() == StatusCode::UNAUTHORIZED) {
            if let Some(challenge) = header(&answer, "www-authenticate")
                .as_deref()
                .and_then(auth::parse_challenge)
            {
                if let Ok(mut challenges) = self.challenges.lock() {
                    challenges.insert(registry.to_string(), challenge);
                }
            }
        }
        let host = Arc::new(Host {
            registry: registry.to_string(),
            http,
            base,
        });
        hosts.insert(registry.to_string(), host.clone());
        Ok(host)
    }

    fn credential(&self, registry: &str) -> Result<Option<Credential>, Error> {
        if let Ok(known) = self.credentials.lock() {
            if let Some(credential) = known.get(registry) {
                return Ok(credential.clone());
            }
        }
        let credential = match &self.config {
            Some(config) => config.credential(registry)?,
            None => None,
        };
        if let Ok(mut known) = self.credentials.lock() {
            known.insert(registry.to_string(), credential.clone());
        }
        Ok(credential)
    }

    /// Uses `credential` for `registry` instead of what config.json says
    /// (for `kiln login`, before it is saved).
    pub fn set_credential(&self, registry: &str, credential: Option<Credential>) {
        if let Ok(mut known) = self.credentials.lock() {
            known.insert(registry.to_string(), credential);
        }
    }

    /// The `Authorization` header for a request of `scope`, as the
    /// registry has said it wants: a token for the scope (fetched now when
    /// there is none), or the Basic credentials.
    async fn authorization(&self, host: &Host, scope: &str) -> Result<Option<String>, Error> {
        let challenge = self
            .challenges
            .lock()
            .ok()
            .and_then(|c| c.get(&host.registry).cloned());
        match challenge {
            Some(Challenge::Bearer { realm, service, .. }) => {
                if let Some(token) = self.tokens.get(&host.registry, scope) {
                    return Ok(Some(format!("Bearer {token}")));
                }
                // One fetch per registry, however many requests want a
                // token at once.
                let lock = self
                    .token_fetch
                    .lock()
                    .map(|mut locks| locks.entry(host.registry.clone()).or_default().clone())
                    .unwrap_or_default();
                let _fetching = lock.lock().await;
                if let Some(token) = self.tokens.get(&host.registry, scope) {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let credential = self.credential(&host.registry)?;
                let mut attempt = 0;
                let (token, lifetime) = loop {
                    attempt += 1;
                    match auth::fetch_token(
                        &host.http,
                        &host.registry,
                        &realm,
                        service.as_deref(),
                        scope,
                        credential.as_ref(),
                    )
                    .await
                    {
                        Ok(token) => break token,
                        // A token service that is down for a moment is
                        // waited for like the registry.
                        Err(Error::Request { .. }) if attempt < self.options.retry.attempts => {
                            tokio::time::sleep(self.options.retry.delay(attempt)).await;
                        }
                        Err(Error::Status { status, .. })
                            if retryable_status(status)
                                && attempt < self.options.retry.attempts =>
                        {
                            tokio::time::sleep(self.options.retry.delay(attempt)).await;
                        }
                        Err(error) => return Err(error),
                    }
                };
                self.tokens
                    .put(&host.registry, scope, token.clone(), lifetime);
                Ok(Some(format!("Bearer {token}")))
            }
            Some(Challenge::Basic) => match self.credential(&host.registry)? {
                Some(Credential::Basic { username, password }) => {
                    Ok(Some(auth::basic_header(&username, &password)))
                }
                _ => Err(Error::Unauthorized {
                    registry: host.registry.clone(),
                    what: auth::refused_what(&host.registry, None),
                    reason: "it wants a user name and password".to_string(),
                }),
            },
            None => Ok(None),
        }
    }

    /// Answers a 401: remembers the challenge, and drops the token that was
    /// refused so that the next try gets another.
    fn challenged(
        &self,
        host: &Host,
        response: &Response,
        scope: &str,
        sent: Option<&str>,
    ) -> Result<(), Error> {
        let header = header(response, "www-authenticate").unwrap_or_default();
        let challenge = auth::parse_challenge(&header).ok_or_else(|| Error::Unauthorized {
            registry: host.registry.clone(),
            what: "the request".to_string(),
            reason: format!("it asks for an authentication kiln does not know: {header:?}"),
        })?;
        if let Some(token) = self.tokens.get(&host.registry, scope) {
            if sent == Some(format!("Bearer {token}").as_str()) {
                self.tokens.forget(&host.registry, scope);
            }
        }
        if let Ok(mut challenges) = self.challenges.lock() {
            challenges.insert(host.registry.clone(), challenge);
        }
        Ok(())
    }

    /// Sends a request, authenticating when asked to, following redirects
    /// (credentials only ever go to the registry itself), and trying again
    /// (up to the policy's attempts) on failures and answers that may pass.
    /// `prepare` adds headers and body, afresh for every try, and touches
    /// the progress as body bytes go out. A request that is not safe to
    /// repeat gets one try.
    async fn send(
        &self,
        host: &Host,
        scope: &str,
        method: Method,
        url: &Url,
        repeatable: bool,
        prepare: &(dyn Fn(reqwest::RequestBuilder, &Progress) -> reqwest::RequestBuilder + Sync),
    ) -> Result<Response, Error> {
        let attempts = if repeatable {
            self.options.retry.attempts.max(1)
        } else {
            1
        };
        let stall = self.options.transport.stall_timeout;
        let mut attempt = 0;
        let mut authenticated = false;
        let mut redirects = 0;
        let mut current = url.clone();
        loop {
            attempt += 1;
            let progress = Progress::new();
            let mut request = prepare(
                host.http.request(method.clone(), current.clone()),
                &progress,
            );
            let sent = if same_origin(&current, &host.base) {
                self.authorization(host, scope).await?
            } else {
                None
            };
            if let Some(value) = &sent {
                request = request.header(AUTHORIZATION, value.as_str());
            }
            let outcome = tokio::select! {
                result = request.send() => match result {
                    Ok(response) => Sent::Answer(response),
                    Err(error) => Sent::Failed(error),
                },
                () = progress.stalled(stall) => Sent::Stalled,
            };
            let failure = match outcome {
                Sent::Answer(response) => {
                    let status = response.status();
                    if status.is_redirection() {
                        if let Some(location) = header(&response, "location") {
                            redirects += 1;
                            if redirects > MAX_REDIRECTS {
                                return Err(Error::Status {
                                    method: method.to_string(),
                                    url: shown_url(url),
                                    status: status.as_u16(),
                                    message: "too many redirects".to_string(),
                                });
                            }
                            current = current.join(&location).map_err(|e| Error::Status {
                                method: method.to_string(),
                                url: shown_url(&current),
                                status: status.as_u16(),
                                message: format!("a redirect to an invalid URL: {e}"),
                            })?;
                            attempt -= 1;
                            continue;
                        }
                    }
                    if status == StatusCode::UNAUTHORIZED && !authenticated {
                        authenticated = true;
                        self.challenged(host, &response, scope, sent.as_deref())?;
                        attempt -= 1;
                        continue;
                    }
                    if status == StatusCode::UNAUTHORIZED {
                        let (_, message) = registry_message(response).await;
                        return Err(self.refused(host, &method, &current, &message));
                    }
                    if !retryable_status(status.as_u16()) {
                        return Ok(response);
                    }
                    if attempt >= attempts {
                        if !repeatable {
                            return Ok(response);
                        }
                        let (status, message) = registry_message(response).await;
                        format!("the registry answered {status}{}", detail(&message))
                    } else {
                        let wait = self
                            .options
                            .retry
                            .requested_delay(header(&response, "retry-after").as_deref())
                            .unwrap_or_else(|| self.options.retry.delay(attempt));
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
                Sent::Failed(error) if untrusted_certificate(&error) => {
                    return Err(untrusted(&host.registry, &self.options.transport, &error));
                }
                Sent::Failed(error) if !retryable_error(&error) => {
                    return Err(Error::Request {
                        method: method.to_string(),
                        url: shown_url(&current),
                        attempts: attempt,
                        reason: describe(&error),
                    })
                }
                Sent::Failed(error) => describe(&error),
                Sent::Stalled => format!("timed out: nothing moved for {} s", stall.as_secs_f32()),
            };
            if attempt < attempts {
                tokio::time::sleep(self.options.retry.delay(attempt)).await;
                continue;
            }
            return Err(Error::Request {
                method: method.to_string(),
                url: shown_url(&current),
                attempts: attempt,
                reason: failure,
            });
        }
    }

    /// The registry said no (401) although it got what it asked for.
    fn refused(&self, host: &Host, method: &Method, url: &Url, message: &str) -> Error {
        let credential = self.credential(&host.registry).ok().flatten();
        let what = auth::refused_what(&host.registry, credential.as_ref());
        Error::Unauthorized {
            registry: host.registry.clone(),
            what,
            reason: format!(
                "{method} {} answered 401{}",
                shown_url(url),
                detail(message)
            ),
        }
    }

    fn url(host: &Host, path: &str) -> Result<Url, Error> {
        host.base.join(path).map_err(|e| Error::InvalidManifest {
            reference: host.registry.clone(),
            reason: format!("cannot make a URL of {path:?}: {e}"),
        })
    }

    /// Checks that the registry answers and accepts our credentials (for
    /// `kiln login`).
    pub async fn check_login(&self, registry: &str) -> Result<(), Error> {
        let host = self.host(registry).await?;
        let url = Self::url(&host, "v2/")?;
        let response = self
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
        let host = self.host(reference.registry()).await?;
        let url = Self::url(
            &host,
            &format!("v2/{}/manifests/{target}", reference.repository()),
        )?;
        let scope = repository_scope(reference, "pull");
        let response = self
            .send(&host, &scope, Method::HEAD, &url, true, &|r, _| {
                r.header(ACCEPT, MANIFEST_TYPES.join(", "))
            })
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => {
                let digest = header(&response, "docker-content-digest")
                    .and_then(|d| d.parse::<Digest>().ok());
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
    pub async fn get_manifest(
        &self,
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
        let host = self.host(reference.registry()).await?;
        let url = Self::url(
            &host,
            &format!("v2/{}/manifests/{target}", reference.repository()),
        )?;
        let scope = repository_scope(reference, "pull");
        let response = self
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
        let bytes = read_limited(
            response,
            MAX_MANIFEST_SIZE,
            &url,
            self.options.transport.stall_timeout,
        )
        .await?;
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
                reason: format!(
                    "it is not an image manifest or index (Content-Type {content_type:?})"
                ),
            })?;
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Stores a manifest under `target` (a tag or its digest); returns the
    /// digest the registry gave it.
    pub async fn put_manifest(
        &self,
        reference: &Reference,
        target: &str,
        manifest: &Manifest,
    ) -> Result<(), Error> {
        let host = self.host(reference.registry()).await?;
        let url = Self::url(
            &host,
            &format!("v2/{}/manifests/{target}", reference.repository()),
        )?;
        let scope = repository_scope(reference, "pull,push");
        let body = manifest.bytes.clone();
        let media_type = manifest.media_type.clone();
        let response = self
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

    /// The size of a blob the registry has, or `None`.
    pub async fn blob_exists(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<Option<u64>, Error> {
        self.blob_size(reference, digest, &repository_scope(reference, "pull"))
            .await
    }

    async fn blob_size(
        &self,
        reference: &Reference,
        digest: &Digest,
        scope: &str,
    ) -> Result<Option<u64>, Error> {
        let host = self.host(reference.registry()).await?;
        let url = Self::url(
            &host,
            &format!("v2/{}/blobs/{digest}", reference.repository()),
        )?;
        let response = self
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
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: Option<u64>,
        store: &Store,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), Error> {
        let host = self.host(reference.registry()).await?;
        let url = Self::url(
            &host,
            &format!("v2/{}/blobs/{digest}", reference.repository()),
        )?;
        let scope = repository_scope(reference, "pull");
        let mut writer = store.blob_writer()?;
        let mut breaks = 0;
        loop {
            match self
                .download(&host, &scope, &url, (digest, size), &mut writer, progress)
                .await
            {
                Ok(Downloaded::Complete) => break,
                Ok(Downloaded::Restart) => {
                    writer = store.blob_writer()?;
                }
                Err(Interrupted::Broken(error)) => {
                    breaks += 1;
                    if breaks >= self.options.retry.attempts {
                        return Err(error);
                    }
                    tokio::time::sleep(self.options.retry.delay(breaks)).await;
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

    /// One try at the rest of a blob (its digest and size, when known),
    /// from what `writer` holds.
    async fn download(
        &self,
        host: &Host,
        scope: &str,
        url: &Url,
        (digest, size): (&Digest, Option<u64>),
        writer: &mut kiln_cache::store::BlobWriter,
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
        let mut response = self
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
        let stall = self.options.transport.stall_timeout;
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
                        reason: format!(
                            "timed out: nothing received for {} s",
                            stall.as_secs_f32()
                        ),
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
        let host = self.host(reference.registry()).await?;
        let mount_from = mount_from.filter(|from| {
            from.registry() == reference.registry() && from.repository() != reference.repository()
        });
        // One scope (so one token) for the whole push, the check included.
        let scope = match mount_from {
            Some(from) => format!(
                "{} {}",
                repository_scope(reference, "pull,push"),
                repository_scope(from, "pull")
            ),
            None => repository_scope(reference, "pull,push"),
        };
        if self.blob_size(reference, digest, &scope).await?.is_some() {
            progress(size);
            return Ok(Pushed::Existed);
        }
        let mut sessions = 0;
        loop {
            let upload = Upload {
                host: &host,
                scope: &scope,
                reference,
                digest,
                size,
                path,
            };
            match self.upload(&upload, mount_from, progress).await {
                Ok(pushed) => return Ok(pushed),
                Err(Interrupted::Broken(error)) => {
                    sessions += 1;
                    if sessions >= self.options.retry.attempts {
                        return Err(error);
                    }
                    tokio::time::sleep(self.options.retry.delay(sessions)).await;
                }
                Err(Interrupted::Fatal(error)) => return Err(error),
            }
        }
    }

    /// One upload session: started (or mounted), fed in chunks or in one
    /// go, closed with the digest. A chunk that fails is followed by asking
    /// the registry how much it has, and the upload goes on from there; a
    /// session the registry no longer knows is `Broken`, for the caller to
    /// start another.
    async fn upload(
        &self,
        upload: &Upload<'_>,
        mount_from: Option<&Reference>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Pushed, Interrupted> {
        let host = upload.host;
        let mut start = Self::url(
            host,
            &format!("v2/{}/blobs/uploads/", upload.reference.repository()),
        )
        .map_err(Interrupted::Fatal)?;
        if let Some(from) = mount_from {
            start
                .query_pairs_mut()
                .append_pair("mount", &upload.digest.to_string())
                .append_pair("from", from.repository());
        }
        let response = self
            .send(host, upload.scope, Method::POST, &start, true, &|r, _| {
                r.header(CONTENT_LENGTH, "0")
            })
            .await
            .map_err(Interrupted::Fatal)?;
        if mount_from.is_some() && response.status() == StatusCode::CREATED {
            progress(upload.size);
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
            let remaining = upload.size - offset;
            let closing = remaining <= self.options.chunk_size;
            let length = if closing {
                remaining
            } else {
                self.options.chunk_size
            };
            let (method, url, expected) = if closing {
                let mut finish = location.clone();
                finish
                    .query_pairs_mut()
                    .append_pair("digest", &upload.digest.to_string());
                (Method::PUT, finish, StatusCode::CREATED)
            } else {
                (Method::PATCH, location.clone(), StatusCode::ACCEPTED)
            };
            let from = offset;
            let path = upload.path;
            let result = self
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
            if failures >= self.options.retry.attempts {
                return Err(Interrupted::Fatal(failure));
            }
            tokio::time::sleep(self.options.retry.delay(failures)).await;
            // Where does the registry stand? Go on from what it has.
            match self.upload_status(host, upload.scope, &location).await {
                Ok((next, received)) => {
                    location = next;
                    offset = received;
                }
                Err(Error::Status { status: 404, .. }) => {
                    // The session is gone: after the closing request, because
                    // it went through and only its answer was lost.
                    return match self
                        .blob_size(upload.reference, upload.digest, upload.scope)
                        .await
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
        &self,
        host: &Host,
        scope: &str,
        location: &Url,
    ) -> Result<(Url, u64), Error> {
        let response = self
            .send(host, scope, Method::GET, location, true, &|r, _| r)
            .await?;
        if response.status() != StatusCode::NO_CONTENT {
            return Err(status_error(&Method::GET, location, response).await);
        }
        let received = uploaded_through(&response).unwrap_or(0);
        let next = location_of(&response, location).unwrap_or_else(|_| location.clone());
        Ok((next, received))
    }
}

/// The blob an upload session sends, and where.
struct Upload<'a> {
    host: &'a Host,
    scope: &'a str,
    reference: &'a Reference,
    digest: &'a Digest,
    size: u64,
    path: &'a Path,
}

/// Why a transfer stopped short.
enum Interrupted {
    /// In the middle, in a way another try (from where it stopped, or a
    /// new session) may get past.
    Broken(Error),
    /// For good, or after the request's own tries.
    Fatal(Error),
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

enum Downloaded {
    Complete,
    /// The registry sent the whole blob again instead of the rest.
    Restart,
}

/// Where downloads are written, for errors that name a path.
fn store_tmp() -> &'static Path {
    Path::new("the store's tmp/ directory")
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

/// A manifest's media type: the registry's Content-Type when it names a
/// manifest kind, else the `mediaType` in the document, else what its shape
/// says.
pub(crate) fn manifest_media_type(bytes: &[u8], content_type: &str) -> Option<String> {
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
async fn read_limited(
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
