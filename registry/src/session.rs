//! A client's session with registries: each registry's endpoint, found once
//! (HTTPS, or HTTP where allowed), and requests sent to it authenticated,
//! with redirects followed (credentials only ever go to the registry
//! itself) and tries again with backoff. A request that stops moving is
//! given up on, however long it has taken as a whole.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::AUTHORIZATION;
use reqwest::{Method, Response, StatusCode};
use url::Url;

use crate::auth::Authenticator;
use crate::credentials::{Credential, DockerConfig};
use crate::error::{detail, Error};
use crate::http::{
    describe, header, name_not_resolved, registry_message, retryable_error, same_origin, shown_url,
    unknown_host, untrusted_certificate,
};
use crate::retry::{retryable_status, RetryPolicy};
use crate::transport::{self, TransportOptions};

/// Redirects followed for one request before giving up.
const MAX_REDIRECTS: u32 = 5;

/// A registry reached over HTTPS or, where allowed, HTTP.
#[derive(Debug)]
pub(crate) struct Host {
    registry: String,
    http: reqwest::Client,
    base: Url,
}

impl Host {
    /// The URL of `path` (such as `v2/NAME/manifests/TAG`) on this registry.
    pub(crate) fn url(&self, path: &str) -> Result<Url, Error> {
        self.base.join(path).map_err(|e| Error::InvalidManifest {
            reference: self.registry.clone(),
            reason: format!("cannot make a URL of {path:?}: {e}"),
        })
    }
}

/// When a request last moved: bytes of its body went out, or it began.
/// A request that does not move for the stall timeout is given up on,
/// however long it has taken as a whole.
#[derive(Clone)]
pub(crate) struct Progress {
    started: Instant,
    last: Arc<AtomicU64>,
    body_sent: Arc<AtomicBool>,
}

/// Once a body is all sent, the answer may wait until the network has
/// carried what the socket buffers still hold: on a slow link that takes a
/// while, with no sign of progress, so the wait may be this many times the
/// stall timeout.
const DRAIN_FACTOR: u32 = 5;

impl Progress {
    fn new() -> Progress {
        Progress {
            started: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
            body_sent: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(crate) fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    pub(crate) fn body_sent(&self) {
        self.touch();
        self.body_sent.store(true, Ordering::Relaxed);
    }

    /// Returns once nothing has moved for `limit` (longer once the body is
    /// sent).
    async fn stalled(&self, limit: Duration) {
        let step = (limit / 4).max(Duration::from_millis(20));
        loop {
            tokio::time::sleep(step).await;
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let allowed = if self.body_sent.load(Ordering::Relaxed) {
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

/// A certificate failure, with where the registry's CA would go.
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

/// Builds the headers and body of one try of a request, touching the
/// progress as body bytes go out.
pub(crate) type Prepare<'a> =
    dyn Fn(reqwest::RequestBuilder, &Progress) -> reqwest::RequestBuilder + Sync + 'a;

pub(crate) struct Session {
    transport: TransportOptions,
    retry: RetryPolicy,
    auth: Authenticator,
    hosts: tokio::sync::Mutex<HashMap<String, Arc<Host>>>,
}

impl Session {
    /// A session with credentials from `config` (none: anonymous).
    pub(crate) fn new(
        transport: TransportOptions,
        retry: RetryPolicy,
        config: Option<DockerConfig>,
    ) -> Session {
        Session {
            transport,
            auth: Authenticator::new(config, retry),
            retry,
            hosts: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// How often, and after how long, requests and transfers are tried
    /// again.
    pub(crate) fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// How long a transfer may receive nothing before it is given up on.
    pub(crate) fn stall_timeout(&self) -> Duration {
        self.transport.stall_timeout
    }

    /// Uses `credential` for `registry` instead of what config.json says.
    pub(crate) fn set_credential(&self, registry: &str, credential: Option<Credential>) {
        self.auth.set_credential(registry, credential);
    }

    /// The registry's endpoint, found once: HTTPS, or HTTP where allowed
    /// and HTTPS does not answer. Its answer to `GET /v2/` says how it wants
    /// to be authenticated, so that later requests need no 401 first.
    pub(crate) async fn host(&self, registry: &str) -> Result<Arc<Host>, Error> {
        let mut hosts = self.hosts.lock().await;
        if let Some(host) = hosts.get(registry) {
            return Ok(host.clone());
        }
        let http = transport::http_client(registry, &self.transport)?;
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
                return Err(untrusted(registry, &self.transport, &error));
            }
            Err(error) if name_not_resolved(&error) => {
                return Err(unknown_host(registry, &error));
            }
            Err(https_error) if transport::plain_http_allowed(registry, &self.transport) => {
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
            if let Some(challenge) = header(&answer, "www-authenticate") {
                self.auth.expect_challenge(registry, &challenge);
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

    /// Sends a request, authenticating when asked to, following redirects
    /// (credentials only ever go to the registry itself), and trying again
    /// (up to the policy's attempts) on failures and answers that may pass.
    /// `prepare` adds headers and body, afresh for every try, and touches
    /// the progress as body bytes go out. A request that is not safe to
    /// repeat gets one try.
    pub(crate) async fn send(
        &self,
        host: &Host,
        scope: &str,
        method: Method,
        url: &Url,
        repeatable: bool,
        prepare: &Prepare<'_>,
    ) -> Result<Response, Error> {
        let attempts = if repeatable {
            self.retry.attempts.max(1)
        } else {
            1
        };
        let stall = self.transport.stall_timeout;
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
                self.auth
                    .authorization(&host.http, &host.registry, scope)
                    .await?
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
                        let challenge = header(&response, "www-authenticate").unwrap_or_default();
                        self.auth
                            .challenged(&host.registry, &challenge, scope, sent.as_deref())?;
                        attempt -= 1;
                        continue;
                    }
                    if status == StatusCode::UNAUTHORIZED {
                        let (_, message) = registry_message(response).await;
                        return Err(self
                            .auth
                            .refused(&host.registry, &method, &current, &message));
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
                            .retry
                            .requested_delay(header(&response, "retry-after").as_deref())
                            .unwrap_or_else(|| self.retry.delay(attempt));
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
                Sent::Failed(error) if untrusted_certificate(&error) => {
                    return Err(untrusted(&host.registry, &self.transport, &error));
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
                tokio::time::sleep(self.retry.delay(attempt)).await;
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
}
