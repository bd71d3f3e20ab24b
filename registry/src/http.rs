//! Small HTTP helpers the rest of the crate shares: URLs as they may be
//! shown, reqwest errors with their causes, headers, the errors registries
//! put in their bodies, and what a failure says about trying again.

use reqwest::{Method, Response};
use url::Url;

use crate::error::Error;

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
pub(crate) fn same_origin(url: &Url, base: &Url) -> bool {
    url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
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

pub(crate) fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The error a registry reports in its body (`{"errors":[{"message"}]}`).
pub(crate) async fn status_error(method: &Method, url: &Url, response: Response) -> Error {
    let (status, message) = registry_message(response).await;
    Error::Status {
        method: method.to_string(),
        url: shown_url(url),
        status,
        message,
    }
}

/// An error answer's status and what its body says about it.
pub(crate) async fn registry_message(response: Response) -> (u16, String) {
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
pub(crate) fn untrusted_certificate(error: &reqwest::Error) -> bool {
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

/// Whether a request failed because the registry's host name does not
/// resolve. The system resolver has already tried its servers as often as
/// it is configured to, so kiln takes its "no" as the answer.
pub(crate) fn name_not_resolved(error: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        // hyper's connector names the failure only in its message.
        if cause.to_string() == "dns error" {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The error for a request to `host` that failed because the name does not
/// resolve ([`name_not_resolved`]): what the resolver said, without hyper's
/// and reqwest's wrapping (the last cause in the chain).
pub(crate) fn unknown_host(host: &str, error: &reqwest::Error) -> Error {
    let mut answer = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        answer = cause.to_string();
        source = cause.source();
    }
    Error::UnknownHost {
        host: host.to_string(),
        reason: answer,
    }
}

/// Whether a failed request is worth another try: not when it could not be
/// made, was refused, or went to a name that does not resolve.
pub(crate) fn retryable_error(error: &reqwest::Error) -> bool {
    !error.is_builder() && !error.is_redirect() && !error.is_status() && !name_not_resolved(error)
}
