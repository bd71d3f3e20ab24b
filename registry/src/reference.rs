//! Image references with Docker's normalisation: `busybox` is
//! `docker.io/library/busybox:latest`.

use std::fmt;

/// The registry of names without a host.
pub const DEFAULT_REGISTRY: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LENGTH: usize = 255;

/// A parsed and normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

impl Reference {
    /// Parses `[host[:port]/]path[:tag][@algorithm:hex]`. A reference with
    /// neither tag nor digest gets the tag `latest`.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        let error = |reason: &str| ReferenceError {
            reference: text.to_string(),
            reason: reason.to_string(),
        };
        if text.is_empty() {
            return Err(error("it is empty"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                validate_digest(digest).map_err(|reason| error(&reason))?;
                (rest, Some(digest.to_string()))
            }
            None => (text, None),
        };
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(colon) => {
                let at = last_slash + colon;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|reason| error(&reason))?;
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, remainder)) if first.contains(['.', ':']) || first == "localhost" => {
                (first, remainder)
            }
            _ => (DEFAULT_REGISTRY, name),
        };
        if registry != DEFAULT_REGISTRY || name.starts_with("docker.io/") {
            validate_registry(registry).map_err(|reason| error(&reason))?;
        }
        let registry = if registry == "index.docker.io" {
            DEFAULT_REGISTRY
        } else {
            registry
        };
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(error("repository names must be lower-case"));
        }
        for component in path.split('/') {
            validate_component(component).map_err(|reason| error(&reason))?;
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LENGTH {
            return Err(error("the name is longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository at `target`, a tag or a digest.
    pub fn with_target(&self, target: &str) -> Reference {
        if validate_digest(target).is_ok() {
            Reference {
                tag: None,
                digest: Some(target.to_string()),
                ..self.clone()
            }
        } else {
            Reference {
                tag: Some(target.to_string()),
                digest: None,
                ..self.clone()
            }
        }
    }

    /// The same reference pinned to a digest (the tag kept for display).
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// The short form Docker prints: `busybox:latest` for
    /// `docker.io/library/busybox:latest`.
    pub fn familiar(&self) -> String {
        // Shortened only as far as it reads back as the same reference:
        // `library/` goes only from a one-component name (`library/a/b` is
        // not `a/b`), and `docker.io/` stays before a first component that
        // would be read as a registry (`docker.io/ar.io/x`).
        let short = match self.repository.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest,
            _ => &self.repository,
        };
        let looks_like_a_registry = match short.split_once('/') {
            Some((first, _)) => first.contains(['.', ':']) || first == "localhost",
            None => false,
        };
        let name = if self.registry == DEFAULT_REGISTRY && !looks_like_a_registry {
            short.to_string()
        } else {
            self.name()
        };
        let mut out = name;
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest);
        }
        out
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok
        || tag.len() > 128
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(format!(
            "tag {tag:?} must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

fn validate_digest(digest: &str) -> Result<(), String> {
    let invalid = || {
        format!("digest {digest:?} must be ALGORITHM:HEX, for example sha256: and 64 hex digits")
    };
    let (algorithm, hex) = digest.split_once(':').ok_or_else(invalid)?;
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        part.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && part.chars().all(|c| c.is_ascii_alphanumeric())
    });
    let hex_ok = hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit());
    if !algorithm_ok || !hex_ok || (algorithm == "sha256" && hex.len() != 64) {
        return Err(invalid());
    }
    Ok(())
}

fn validate_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || registry.starts_with('[') => {
            (host, Some(port))
        }
        _ => (registry, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "port {port:?} of registry {registry:?} is not a number"
            ));
        }
    }
    let host_ok = if host.starts_with('[') && host.ends_with(']') {
        host[1..host.len() - 1]
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':')
    } else {
        !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    };
    if !host_ok {
        return Err(format!("registry host {host:?} is not a valid host name"));
    }
    Ok(())
}

/// A path component: lower-case letters and digits, separated by `.`,
/// `_`, `__` or runs of `-`.
fn validate_component(component: &str) -> Result<(), String> {
    let invalid = || {
        format!("path component {component:?} must be lower-case letters and digits joined by '.', '_', '__' or '-'")
    };
    if component.is_empty() {
        return Err(invalid());
    }
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(invalid());
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let valid = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.chars().all(|c| c == '-');
        if !valid {
            return Err(invalid());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(text: &str) -> String {
        Reference::parse(text)
            .map(|r| r.to_string())
            .unwrap_or_else(|e| format!("error: {}", e.reason))
    }

    #[test]
    fn docker_normalisation() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let cases = [
            ("busybox", "docker.io/library/busybox:latest".to_string()),
            ("busybox:1.36", "docker.io/library/busybox:1.36".to_string()),
            (
                "library/busybox",
                "docker.io/library/busybox:latest".to_string(),
            ),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest".to_string(),
            ),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest".to_string(),
            ),
            ("user/app:v1", "docker.io/user/app:v1".to_string()),
            ("localhost/app", "localhost/app:latest".to_string()),
            (
                "localhost:5000/team/app:dev",
                "localhost:5000/team/app:dev".to_string(),
            ),
            (
                "127.0.0.1:5000/app",
                "127.0.0.1:5000/app:latest".to_string(),
            ),
            (
                "ghcr.io/org/sub/app:1.0.0-rc.1",
                "ghcr.io/org/sub/app:1.0.0-rc.1".to_string(),
            ),
            (
                &format!("busybox@{digest}") as &str,
                format!("docker.io/library/busybox@{digest}"),
            ),
            (
                &format!("busybox:1@{digest}") as &str,
                format!("docker.io/library/busybox:1@{digest}"),
            ),
            (
                "a__b/c-d---e/f.g_h",
                "docker.io/a__b/c-d---e/f.g_h:latest".to_string(),
            ),
            ("[::1]:5000/app", "[::1]:5000/app:latest".to_string()),
        ];
        for (input, expected) in cases {
            assert_eq!(normalized(input), expected, "{input}");
        }
    }

    #[test]
    fn familiar_names() {
        assert_eq!(
            Reference::parse("busybox").expect("valid").familiar(),
            "busybox:latest"
        );
        assert_eq!(
            Reference::parse("user/app:1").expect("valid").familiar(),
            "user/app:1"
        );
        assert_eq!(
            Reference::parse("ghcr.io/o/a").expect("valid").familiar(),
            "ghcr.io/o/a:latest"
        );
        // Found by the image_reference fuzz target: short forms that read
        // back as other references.
        assert_eq!(
            Reference::parse("docker.io/library/alp/ine:1.20")
                .expect("valid")
                .familiar(),
            "library/alp/ine:1.20"
        );
        assert_eq!(
            Reference::parse("docker.io/library/ar.io/x")
                .expect("valid")
                .familiar(),
            "library/ar.io/x:latest"
        );
        assert_eq!(
            Reference::parse("docker.io/ar.io/x")
                .expect("valid")
                .familiar(),
            "docker.io/ar.io/x:latest"
        );
    }

    #[test]
    fn invalid_references_say_why() {
        let cases = [
            ("", "it is empty"),
            ("Busybox", "lower-case"),
            ("busybox:", "tag"),
            ("busybox:-x", "tag"),
            ("busybox@sha256:abc", "digest"),
            ("app//x", "path component"),
            ("app/-x", "path component"),
            ("a.b:port/app", "port"),
            ("app..x", "path component"),
            ("app_-x", "path component"),
        ];
        for (input, reason) in cases {
            let err = Reference::parse(input).expect_err(input);
            assert!(err.reason.contains(reason), "{input}: {}", err.reason);
        }
        let long = format!("example.com/{}", "a".repeat(250));
        assert!(Reference::parse(&long).is_err());
    }
}
