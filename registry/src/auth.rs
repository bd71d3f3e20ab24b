//! Authentication: the challenges registries send (`WWW-Authenticate`),
//! the credentials kiln answers them with, the Bearer token flow (a token
//! per registry and scope, kept until it expires), and Basic. Tokens and
//! passwords never leave this module except in an `Authorization` header.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::Method;
use url::Url;

use crate::credentials::{Credential, DockerConfig};
use crate::error::{detail, Error};
use crate::http::{describe, name_not_resolved, shown_url, unknown_host};
use crate::reference::Reference;
use crate::retry::{retryable_status, RetryPolicy};

/// What a registry asks for in `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        /// The scope the registry says the request needs.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value: a scheme and `key=value` parameters,
/// values quoted (with `\` escapes) or bare. Unknown schemes give `None`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    let params = parse_params(rest);
    let param = |name: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: param("realm")?,
            service: param("service"),
            scope: param("scope"),
        })
    } else {
        None
    }
}

fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ',') {
            key.push(c);
        }
        if chars.next_if_eq(&'=').is_none() {
            if key.trim().is_empty() && chars.peek().is_none() {
                return params;
            }
            continue;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    other => value.push(other),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
            value = value.trim().to_string();
        }
        params.push((key.trim().to_string(), value));
    }
}

/// How long a token lives when its issuer does not say (the token
/// specification's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// The longest kiln keeps a token, whatever its service says.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A token is renewed this long before it expires, so that it does not
/// expire in the middle of a request.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// Tokens by registry and scope.
#[derive(Debug, Default)]
struct TokenCache {
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl TokenCache {
    fn get(&self, registry: &str, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        let (token, expires) = tokens.get(&(registry.to_string(), scope.to_string()))?;
        (Instant::now() + EXPIRY_MARGIN < *expires).then(|| token.clone())
    }

    fn put(&self, registry: &str, scope: &str, token: String, lifetime: Duration) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(
                (registry.to_string(), scope.to_string()),
                (token, Instant::now() + lifetime),
            );
        }
    }

    fn forget(&self, registry: &str, scope: &str) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(&(registry.to_string(), scope.to_string()));
        }
    }
}

/// The scope of a token for `actions` (`pull`, `pull,push`) on the
/// repository `reference` names.
pub(crate) fn repository_scope(reference: &Reference, actions: &str) -> String {
    format!("repository:{}:{actions}", reference.repository())
}

/// What a client tells each registry about who it is: the credentials
/// (from config.json, or set for a login), the challenge the registry
/// sent, and Bearer tokens by scope, each fetched once however many
/// requests want it.
pub(crate) struct Authenticator {
    config: Option<DockerConfig>,
    /// For the token service, which may be down for a moment like the
    /// registry.
    retry: RetryPolicy,
    credentials: Mutex<HashMap<String, Option<Credential>>>,
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: TokenCache,
    token_fetch: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Authenticator {
    pub(crate) fn new(config: Option<DockerConfig>, retry: RetryPolicy) -> Authenticator {
        Authenticator {
            config,
            retry,
            credentials: Mutex::new(HashMap::new()),
            challenges: Mutex::new(HashMap::new()),
            tokens: TokenCache::default(),
            token_fetch: Mutex::new(HashMap::new()),
        }
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

    /// Uses `credential` for `registry` instead of what config.json says.
    pub(crate) fn set_credential(&self, registry: &str, credential: Option<Credential>) {
        if let Ok(mut known) = self.credentials.lock() {
            known.insert(registry.to_string(), credential);
        }
    }

    /// Remembers the challenge `registry` sent before any request needed
    /// it (in its answer to `GET /v2/`), so that later requests need no 401
    /// first. One kiln does not know is left for the request that meets it.
    pub(crate) fn expect_challenge(&self, registry: &str, www_authenticate: &str) {
        if let Some(challenge) = parse_challenge(www_authenticate) {
            if let Ok(mut challenges) = self.challenges.lock() {
                challenges.insert(registry.to_string(), challenge);
            }
        }
    }

    /// The `Authorization` header for a request of `scope`, as the
    /// registry has said it wants: a token for the scope (fetched now when
    /// there is none, through `http`), or the Basic credentials.
    pub(crate) async fn authorization(
        &self,
        http: &reqwest::Client,
        registry: &str,
        scope: &str,
    ) -> Result<Option<String>, Error> {
        let challenge = self
            .challenges
            .lock()
            .ok()
            .and_then(|c| c.get(registry).cloned());
        match challenge {
            Some(Challenge::Bearer { realm, service, .. }) => {
                if let Some(token) = self.tokens.get(registry, scope) {
                    return Ok(Some(format!("Bearer {token}")));
                }
                // One fetch per registry, however many requests want a
                // token at once.
                let lock = self
                    .token_fetch
                    .lock()
                    .map(|mut locks| locks.entry(registry.to_string()).or_default().clone())
                    .unwrap_or_default();
                let _fetching = lock.lock().await;
                if let Some(token) = self.tokens.get(registry, scope) {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let credential = self.credential(registry)?;
                let mut attempt = 0;
                let (token, lifetime) = loop {
                    attempt += 1;
                    match fetch_token(
                        http,
                        registry,
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
                        Err(Error::Request { .. }) if attempt < self.retry.attempts => {
                            tokio::time::sleep(self.retry.delay(attempt)).await;
                        }
                        Err(Error::Status { status, .. })
                            if retryable_status(status) && attempt < self.retry.attempts =>
                        {
                            tokio::time::sleep(self.retry.delay(attempt)).await;
                        }
                        Err(error) => return Err(error),
                    }
                };
                self.tokens.put(registry, scope, token.clone(), lifetime);
                Ok(Some(format!("Bearer {token}")))
            }
            Some(Challenge::Basic) => match self.credential(registry)? {
                Some(Credential::Basic { username, password }) => {
                    Ok(Some(basic_header(&username, &password)))
                }
                _ => Err(Error::Unauthorized {
                    registry: registry.to_string(),
                    what: refused_what(registry, None),
                    reason: "it wants a user name and password".to_string(),
                }),
            },
            None => Ok(None),
        }
    }

    /// Answers a 401 (its `WWW-Authenticate` value): remembers the
    /// challenge, and drops the token that was refused (`sent`) so that the
    /// next try gets another.
    pub(crate) fn challenged(
        &self,
        registry: &str,
        www_authenticate: &str,
        scope: &str,
        sent: Option<&str>,
    ) -> Result<(), Error> {
        let challenge = parse_challenge(www_authenticate).ok_or_else(|| Error::Unauthorized {
            registry: registry.to_string(),
            what: "the request".to_string(),
            reason: format!(
                "it asks for an authentication kiln does not know: {www_authenticate:?}"
            ),
        })?;
        if let Some(token) = self.tokens.get(registry, scope) {
            if sent == Some(format!("Bearer {token}").as_str()) {
                self.tokens.forget(registry, scope);
            }
        }
        if let Ok(mut challenges) = self.challenges.lock() {
            challenges.insert(registry.to_string(), challenge);
        }
        Ok(())
    }

    /// The registry said no (401) although it got what it asked for.
    pub(crate) fn refused(
        &self,
        registry: &str,
        method: &Method,
        url: &Url,
        message: &str,
    ) -> Error {
        let credential = self.credential(registry).ok().flatten();
        Error::Unauthorized {
            registry: registry.to_string(),
            what: refused_what(registry, credential.as_ref()),
            reason: format!(
                "{method} {} answered 401{}",
                shown_url(url),
                detail(message)
            ),
        }
    }
}

fn basic_header(username: &str, password: &str) -> String {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    format!("Basic {encoded}")
}

/// Asks the token service `realm` for a token for `scope`; returns it with
/// its lifetime.
async fn fetch_token(
    http: &reqwest::Client,
    registry: &str,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    credential: Option<&Credential>,
) -> Result<(String, Duration), Error> {
    let scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
    let what = refused_what(registry, credential);
    let realm_url = Url::parse(realm).map_err(|e| Error::Unauthorized {
        registry: registry.to_string(),
        what: what.clone(),
        reason: format!("its token service {realm:?} is not a URL: {e}"),
    })?;
    let request = match credential {
        Some(Credential::IdentityToken { token }) => {
            // The OAuth2 refresh-token grant Docker uses for identity tokens.
            let mut form = vec![
                ("grant_type", "refresh_token".to_string()),
                ("refresh_token", token.clone()),
                ("client_id", "kiln".to_string()),
            ];
            if let Some(service) = service {
                form.push(("service", service.to_string()));
            }
            if !scopes.is_empty() {
                form.push(("scope", scopes.join(" ")));
            }
            let body = form
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect::<Vec<_>>()
                .join("&");
            http.post(realm_url.clone())
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body)
        }
        _ => {
            let mut url = realm_url.clone();
            {
                let mut query = url.query_pairs_mut();
                if let Some(service) = service {
                    query.append_pair("service", service);
                }
                for scope in &scopes {
                    query.append_pair("scope", scope);
                }
                if let Some(Credential::Basic { username, .. }) = credential {
                    query.append_pair("account", username);
                }
            }
            let request = http.get(url);
            match credential {
                Some(Credential::Basic { username, password }) => {
                    request.header("Authorization", basic_header(username, password))
                }
                _ => request,
            }
        }
    };
    let shown = shown_url(&realm_url);
    let response = request.send().await.map_err(|e| {
        if name_not_resolved(&e) {
            // Not worth another try: see `name_not_resolved`.
            unknown_host(realm_url.host_str().unwrap_or_default(), &e)
        } else {
            Error::Request {
                method: "GET".to_string(),
                url: shown.clone(),
                attempts: 1,
                reason: describe(&e),
            }
        }
    })?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(Error::Unauthorized {
            registry: registry.to_string(),
            what: what.clone(),
            reason: format!("the token service at {shown} answered {status}"),
        });
    }
    if !status.is_success() {
        return Err(Error::Status {
            method: "GET".to_string(),
            url: shown,
            status: status.as_u16(),
            message: "while asking for a token".to_string(),
        });
    }
    let body = response.bytes().await.map_err(|e| Error::Request {
        method: "GET".to_string(),
        url: shown.clone(),
        attempts: 1,
        reason: describe(&e),
    })?;
    parse_token_answer(&body).map_err(|reason| Error::Unauthorized {
        registry: registry.to_string(),
        what: what.clone(),
        reason: format!("the token service at {shown} {reason}"),
    })
}

/// A token service's answer: the token (`token`, or OAuth2's
/// `access_token`) and how long it lasts (`expires_in`, at most
/// [`MAX_TOKEN_LIFETIME`], else Docker's default). The error completes "the token service …".
pub fn parse_token_answer(body: &[u8]) -> Result<(String, Duration), String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|e| format!("sent no token: {e}"))?;
    let token = answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "sent an empty token".to_string())?;
    // A lifetime past the longest kiln keeps a token is cut to it: a huge
    // one would overflow the clock.
    let lifetime = answer
        .expires_in
        .map(|seconds| Duration::from_secs(seconds).min(MAX_TOKEN_LIFETIME))
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
    Ok((token, lifetime))
}

/// What a registry refuses when it refuses `credential`.
fn refused_what(registry: &str, credential: Option<&Credential>) -> String {
    match credential {
        Some(Credential::Basic { username, .. }) => format!("the credentials of {username}"),
        Some(Credential::IdentityToken { .. }) => "the identity token".to_string(),
        None => format!("access without credentials (kiln login {registry})"),
    }
}

fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_as_registries_send_them() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(
                r#"bearer realm="https://r/t?x=1", service=svc , error="insufficient_scope""#
            ),
            Some(Challenge::Bearer {
                realm: "https://r/t?x=1".into(),
                service: Some("svc".into()),
                scope: None,
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(r#"Bearer realm="a\"b""#),
            Some(Challenge::Bearer {
                realm: "a\"b".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None, "no realm");
    }

    #[test]
    fn tokens_are_kept_per_scope_until_shortly_before_they_expire() {
        let cache = TokenCache::default();
        cache.put(
            "r",
            "repository:a:pull",
            "t1".into(),
            Duration::from_secs(300),
        );
        cache.put(
            "r",
            "repository:b:pull",
            "t2".into(),
            Duration::from_secs(5),
        );
        assert_eq!(cache.get("r", "repository:a:pull").as_deref(), Some("t1"));
        assert_eq!(cache.get("r", "repository:a:push"), None);
        assert_eq!(cache.get("other", "repository:a:pull"), None);
        assert_eq!(cache.get("r", "repository:b:pull"), None, "about to expire");
        cache.forget("r", "repository:a:pull");
        assert_eq!(cache.get("r", "repository:a:pull"), None);
    }
}
