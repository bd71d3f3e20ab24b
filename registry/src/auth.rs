//! Authentication: the challenges registries send (`WWW-Authenticate`),
//! the Bearer token flow (a token per registry and scope, kept until it
//! expires), and Basic. Tokens and passwords never leave this module except
//! in an `Authorization` header.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::credentials::Credential;
use crate::error::Error;

/// What a registry asks for in `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
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
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
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

/// A token is renewed this long before it expires, so that it does not
/// expire in the middle of a request.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// Tokens by registry and scope.
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl TokenCache {
    pub(crate) fn get(&self, registry: &str, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        let (token, expires) = tokens.get(&(registry.to_string(), scope.to_string()))?;
        (Instant::now() + EXPIRY_MARGIN < *expires).then(|| token.clone())
    }

    pub(crate) fn put(&self, registry: &str, scope: &str, token: String, lifetime: Duration) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(
                (registry.to_string(), scope.to_string()),
                (token, Instant::now() + lifetime),
            );
        }
    }

    pub(crate) fn forget(&self, registry: &str, scope: &str) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(&(registry.to_string(), scope.to_string()));
        }
    }
}

pub(crate) fn basic_header(username: &str, password: &str) -> String {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    format!("Basic {encoded}")
}

/// Asks the token service `realm` for a token for `scope`; returns it with
/// its lifetime.
pub(crate) async fn fetch_token(
    http: &reqwest::Client,
    registry: &str,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    credential: Option<&Credential>,
) -> Result<(String, Duration), Error> {
    let scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
    let what = refused_what(registry, credential);
    let realm_url = url::Url::parse(realm).map_err(|e| Error::Unauthorized {
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
    let shown = crate::client::shown_url(&realm_url);
    let response = request.send().await.map_err(|e| Error::Request {
        method: "GET".to_string(),
        url: shown.clone(),
        attempts: 1,
        reason: crate::client::describe(&e),
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
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let body = response.bytes().await.map_err(|e| Error::Request {
        method: "GET".to_string(),
        url: shown.clone(),
        attempts: 1,
        reason: crate::client::describe(&e),
    })?;
    let answer: Answer = serde_json::from_slice(&body).map_err(|e| Error::Unauthorized {
        registry: registry.to_string(),
        what: what.clone(),
        reason: format!("the token service at {shown} sent no token: {e}"),
    })?;
    let token = answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Unauthorized {
            registry: registry.to_string(),
            what: what.clone(),
            reason: format!("the token service at {shown} sent an empty token"),
        })?;
    let lifetime = answer
        .expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
    Ok((token, lifetime))
}

/// What a registry refuses when it refuses `credential`.
pub(crate) fn refused_what(registry: &str, credential: Option<&Credential>) -> String {
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
