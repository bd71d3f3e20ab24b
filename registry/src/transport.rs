//! How kiln reaches a registry: HTTPS with the system's roots plus Docker's
//! per-registry certificates (`CERTS_DIR/HOST/*.crt`, and `client.cert` with
//! `client.key` for client authentication), or plain HTTP where that is
//! allowed: loopback hosts and those given as insecure.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;
use crate::http::describe;

/// Docker's directory of per-registry certificates.
pub const DEFAULT_CERTS_DIR: &str = "/etc/docker/certs.d";

#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Registries (`host[:port]`) that may be reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub certs_dir: PathBuf,
    pub connect_timeout: Duration,
    /// A request that moves nothing for this long, in either direction,
    /// is given up (and tried again); a slow transfer that moves is not.
    pub stall_timeout: Duration,
    pub user_agent: String,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            insecure_registries: Vec::new(),
            certs_dir: PathBuf::from(DEFAULT_CERTS_DIR),
            connect_timeout: Duration::from_secs(15),
            stall_timeout: Duration::from_secs(60),
            user_agent: format!("kiln/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// The host that serves a registry's API: Docker Hub's is not `docker.io`.
pub fn api_host(registry: &str) -> &str {
    if registry == crate::reference::DEFAULT_REGISTRY {
        "registry-1.docker.io"
    } else {
        registry
    }
}

/// Whether `registry` (`host[:port]`) may be spoken to over plain HTTP.
pub(crate) fn plain_http_allowed(registry: &str, options: &TransportOptions) -> bool {
    options.insecure_registries.iter().any(|r| r == registry) || is_loopback(registry)
}

/// Whether `registry` is on this machine.
fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry);
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// The host of `host[:port]` (IPv6 addresses in brackets).
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    }
}

/// An HTTP client for one registry (or any `host[:port]`), with its
/// certificates from the certs directory. It follows no redirects: callers
/// follow them, deciding where credentials may go.
pub fn http_client(registry: &str, options: &TransportOptions) -> Result<reqwest::Client, Error> {
    let tls = tls_config(registry, options)?;
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(options.connect_timeout)
        .user_agent(options.user_agent.clone())
        // Redirects (blob downloads go to storage elsewhere) are followed by
        // hand, so that credentials never travel to another host.
        .redirect(reqwest::redirect::Policy::none());
    if is_loopback(registry) {
        // A registry on this machine is never reached through a proxy.
        builder = builder.no_proxy();
    }
    builder.build().map_err(|e| Error::Tls {
        registry: registry.to_string(),
        reason: describe(&e),
    })
}

fn tls_config(registry: &str, options: &TransportOptions) -> Result<rustls::ClientConfig, Error> {
    let tls_error = |reason: String| Error::Tls {
        registry: registry.to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for certificate in native.certs {
        // A system certificate rustls cannot use is skipped, as browsers do.
        let _ = roots.add(certificate);
    }
    let dir = options.certs_dir.join(registry);
    let mut client_pair: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> = None;
    if dir.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in &entries {
            if path.extension().is_some_and(|e| e == "crt") {
                for certificate in read_certificates(path, registry)? {
                    roots
                        .add(certificate)
                        .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
                }
            }
        }
        for path in &entries {
            if path.extension().is_some_and(|e| e == "cert") {
                let key = path.with_extension("key");
                let chain = read_certificates(path, registry)?;
                let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| {
                    tls_error(format!(
                        "{} has no usable private key beside it ({}): {e}",
                        path.display(),
                        key.display()
                    ))
                })?;
                client_pair = Some((chain, key));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?;
    // As Docker does for a registry named insecure: its certificate is not
    // checked (it may be self-signed); the connection is still encrypted.
    let builder = if options.insecure_registries.iter().any(|r| r == registry) {
        versions
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    } else {
        versions.with_root_certificates(roots)
    };
    let config = match client_pair {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_error(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// Takes any certificate, but still checks that the server holds its key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn read_certificates(path: &Path, registry: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls {
            registry: registry.to_string(),
            reason: format!("{}: {e}", path.display()),
        })?;
    if certificates.is_empty() {
        return Err(Error::Tls {
            registry: registry.to_string(),
            reason: format!("{} holds no PEM certificate", path.display()),
        });
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_named_hosts() {
        let options = TransportOptions {
            insecure_registries: vec!["build-cache.internal:5000".into()],
            ..TransportOptions::default()
        };
        for allowed in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.8.9.10",
            "[::1]:5000",
            "build-cache.internal:5000",
        ] {
            assert!(plain_http_allowed(allowed, &options), "{allowed}");
        }
        for refused in [
            "docker.io",
            "192.168.1.2:5000",
            "build-cache.internal",
            "localhost.example.com",
            "[::2]:5000",
        ] {
            assert!(!plain_http_allowed(refused, &options), "{refused}");
        }
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("ghcr.io"), "ghcr.io");
    }

    #[test]
    fn a_certificate_that_is_not_pem_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let host_dir = dir.path().join("registry.test:5000");
        std::fs::create_dir_all(&host_dir).expect("mkdir");
        std::fs::write(host_dir.join("ca.crt"), "not a certificate").expect("write");
        let options = TransportOptions {
            certs_dir: dir.path().to_path_buf(),
            ..TransportOptions::default()
        };
        let err = http_client("registry.test:5000", &options).expect_err("bad CA");
        assert!(err.to_string().contains("ca.crt"), "{err}");
    }
}
