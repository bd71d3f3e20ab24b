//! What kiln's tests share: a real registry (Debian's `docker-registry`)
//! on a free loopback port with storage of its own, in three set-ups
//! (anonymous HTTP; Basic auth over TLS with a CA made here; Bearer tokens
//! from an issuer run here), and a proxy that injects faults and says which
//! it injected.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

/// Fails with a message naming the Debian package when a tool is missing.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: scripts/test installs it (apt-get install {package})"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub const USER: &str = "builder";
pub const PASSWORD: &str = "s3cret-Pa55word";
pub const TOKEN_SERVICE: &str = "kiln-test-registry";
/// The identity (refresh) token the test issuer accepts in place of
/// `USER` and `PASSWORD`.
pub const REFRESH_TOKEN: &str = "kiln-test-refresh-token";
const TOKEN_ISSUER: &str = "kiln-test-issuer";

/// How a test registry wants to be spoken to.
pub enum Setup<'a> {
    Anonymous,
    /// htpasswd Basic auth over TLS; the CA is in `Registry::certs_dir`.
    BasicTls,
    /// Bearer tokens from the given issuer.
    Token(&'a TokenIssuer),
}

/// A running `docker-registry`.
pub struct Registry {
    /// `127.0.0.1:PORT`
    pub address: String,
    /// The directory to give as kiln's `certs_dir` (holds the CA for TLS).
    pub certs_dir: PathBuf,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Registry {
    pub fn start(setup: Setup<'_>) -> Registry {
        require_tool("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().expect("registry directory");
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let certs_dir = dir.path().join("certs.d");
        std::fs::create_dir_all(&certs_dir).expect("certs dir");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}\n  secret: kiln-test-secret\n",
            dir.path().join("data").display()
        );
        match &setup {
            Setup::Anonymous => {}
            Setup::BasicTls => {
                let (ca_pem, server_cert, server_key) = make_tls_certificates();
                std::fs::write(dir.path().join("server.crt"), server_cert).expect("cert");
                std::fs::write(dir.path().join("server.key"), server_key).expect("key");
                let host_dir = certs_dir.join(&address);
                std::fs::create_dir_all(&host_dir).expect("host certs dir");
                std::fs::write(host_dir.join("ca.crt"), ca_pem).expect("ca");
                let hash = bcrypt::hash_with_result(PASSWORD, 4)
                    .expect("bcrypt")
                    .format_for_version(bcrypt::Version::TwoA);
                std::fs::write(dir.path().join("htpasswd"), format!("{USER}:{hash}\n"))
                    .expect("htpasswd");
                config.push_str(&format!(
                    "  tls:\n    certificate: {0}/server.crt\n    key: {0}/server.key\nauth:\n  htpasswd:\n    realm: kiln-test\n    path: {0}/htpasswd\n",
                    dir.path().display()
                ));
            }
            Setup::Token(issuer) => {
                std::fs::write(dir.path().join("token.crt"), &issuer.certificate_pem)
                    .expect("token cert");
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}/token.crt\n",
                    issuer.address,
                    dir.path().display()
                ));
            }
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        let mut registry = Registry {
            address,
            certs_dir,
            dir,
            child,
        };
        registry.wait_until_listening();
        registry
    }

    fn wait_until_listening(&mut self) {
        let started = Instant::now();
        let address: SocketAddr = self.address.parse().expect("address");
        while TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "docker-registry exited ({status}): {}",
                    std::fs::read_to_string(self.dir.path().join("registry.log"))
                        .unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "docker-registry did not listen on {} within 20 s",
                self.address
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An image name in this registry.
    pub fn name(&self, name: &str) -> String {
        format!("{}/{name}", self.address)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA, and a server certificate for 127.0.0.1 it signed (all PEM).
fn make_tls_certificates() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kiln test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let mut server_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
    server_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let server = server_params
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    (ca.pem(), server.pem(), server_key.serialize_pem())
}

/// A small multi-threaded runtime for test servers and clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Serves on a loopback port from a thread of its own until dropped.
struct Server {
    address: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

impl Server {
    fn start<F, Fut>(handler: F) -> Server
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("address").to_string();
        let (shutdown, mut stop) = tokio::sync::oneshot::channel();
        let handler = Arc::new(handler);
        let thread = std::thread::spawn(move || {
            let runtime = runtime();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let handler = handler.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |request| {
                                    let handler = handler.clone();
                                    async move { Ok::<_, Infallible>(handler(request).await) }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        Server {
            address,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A token service as Docker's registries use: issues JWTs (ES256, with the
/// certificate in `x5c`) that the registry checks against
/// `certificate_pem`, for the scopes asked, to `USER` with `PASSWORD`, or
/// pull-only to anyone.
pub struct TokenIssuer {
    pub address: String,
    pub certificate_pem: String,
    /// Token requests served, by scope.
    pub requests: Arc<Mutex<HashMap<String, usize>>>,
    /// Answers still to cut short (see [`TokenIssuer::cut_answers`]).
    answers_to_cut: Arc<AtomicUsize>,
    /// Answers cut short so far.
    answers_cut: Arc<AtomicUsize>,
    _server: Server,
}

impl TokenIssuer {
    pub fn start() -> TokenIssuer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, TOKEN_ISSUER);
        let certificate = params.self_signed(&key).expect("certificate");
        let certificate_pem = certificate.pem();
        let x5c = base64::engine::general_purpose::STANDARD.encode(certificate.der());
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .expect("signing key");
        let signer = Arc::new(signer);
        let requests: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counted = requests.clone();
        let answers_to_cut: Arc<AtomicUsize> = Arc::default();
        let answers_cut: Arc<AtomicUsize> = Arc::default();
        let (to_cut, cut) = (answers_to_cut.clone(), answers_cut.clone());
        let server = Server::start(move |request| {
            let signer = signer.clone();
            let x5c = x5c.clone();
            let counted = counted.clone();
            let (to_cut, cut) = (to_cut.clone(), cut.clone());
            async move {
                let answer = issue_token(request, &signer, &x5c, &counted).await;
                let cutting = to_cut
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if !cutting || answer.status() != 200 {
                    return answer;
                }
                cut.fetch_add(1, Ordering::SeqCst);
                cut_short(answer).await
            }
        });
        TokenIssuer {
            address: server.address.clone(),
            certificate_pem,
            requests,
            answers_to_cut,
            answers_cut,
            _server: server,
        }
    }

    /// Cuts the next `count` token answers short: half their body, then
    /// the connection dropped.
    pub fn cut_answers(&self, count: usize) {
        self.answers_to_cut.store(count, Ordering::SeqCst);
    }

    /// How many answers were cut short.
    pub fn answers_cut(&self) -> usize {
        self.answers_cut.load(Ordering::SeqCst)
    }

    pub fn requests_for(&self, scope: &str) -> usize {
        self.requests
            .lock()
            .map(|r| r.get(scope).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

async fn issue_token(
    request: Request<Incoming>,
    signer: &ring::signature::EcdsaKeyPair,
    x5c: &str,
    requests: &Mutex<HashMap<String, usize>>,
) -> Response<Body> {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let basic = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // GET with scopes in the query (Basic credentials), or the OAuth2 POST
    // of a refresh token (an identity token) with scopes in the form.
    let (scopes, refresh_token) = if request.method() == hyper::Method::POST {
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let scopes = field("scope")
            .map(|s| s.split(' ').map(str::to_string).collect())
            .unwrap_or_default();
        (scopes, field("refresh_token"))
    } else {
        let query = request.uri().query().unwrap_or("");
        let scopes: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.into_owned())
            .collect();
        (scopes, None)
    };
    if let Ok(mut counts) = requests.lock() {
        *counts.entry(scopes.join(" ")).or_default() += 1;
    }
    let authorised = match &refresh_token {
        Some(token) => token == REFRESH_TOKEN,
        None => basic.as_deref() == Some(expected.as_str()),
    };
    if (basic.is_some() || refresh_token.is_some()) && !authorised {
        return Response::builder()
            .status(401)
            .body(full("wrong credentials"))
            .expect("response");
    }
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|scope| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let actions: Vec<&str> = actions
                .split(',')
                .filter(|a| authorised || *a == "pull")
                .collect();
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions}))
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": if authorised { USER } else { "" }, "aud": TOKEN_SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", fastrand_like()),
        "access": access,
    });
    let encode = |value: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(value).expect("json"))
    };
    let signing_input = format!("{}.{}", encode(&header), encode(&claims));
    let signature = signer
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        .expect("sign");
    let token = format!(
        "{signing_input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.as_ref())
    );
    Response::builder()
        .header("content-type", "application/json")
        .body(full(
            serde_json::to_vec(&serde_json::json!({"token": token, "expires_in": 300}))
                .expect("json"),
        ))
        .expect("response")
}

/// `answer` with its head whole (its Content-Length the full body's) and
/// half its body, after a pause so that the head reaches the client first.
async fn cut_short(answer: Response<Body>) -> Response<Body> {
    let (parts, body) = answer.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    let stream = futures_util::stream::once(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, std::io::Error>(Frame::data(half))
    });
    let mut cut = Response::from_parts(parts, BodyExt::boxed(StreamBody::new(stream)));
    cut.headers_mut()
        .insert("content-length", bytes.len().into());
    cut
}

fn fastrand_like() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) as u64
}

/// Faults a `Proxy` injects.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Every n-th request (counting from 1) gets a 503 without reaching the
    /// registry.
    pub unavailable_every: Option<usize>,
    /// Blob downloads (whole or resumed) longer than this many bytes are
    /// cut off after it, this many times.
    pub cut_downloads_after: Option<(u64, usize)>,
    /// Upload bodies (PATCH, PUT of a blob) are cut off after this many
    /// bytes, this many times.
    pub cut_uploads_after: Option<(u64, usize)>,
    /// Manifest and index bodies (GET) longer than this many bytes are cut
    /// off after it, this many times.
    pub cut_manifests_after: Option<(u64, usize)>,
    /// Each response waits this long first.
    pub delay: Option<Duration>,
    /// Blob downloads have one byte changed.
    pub corrupt_downloads: bool,
    /// Uploads (PATCH, PUT of a blob) reach the registry whole, but their
    /// answers are lost (the connection drops), this many times.
    pub lose_upload_replies: Option<usize>,
    /// Upload bodies are read at this many bytes a second.
    pub throttle_uploads: Option<u64>,
    /// Every request is redirected (307) to the registry itself, at this
    /// address.
    pub redirect_to: Option<String>,
    /// Every n-th request gets 429 with `Retry-After: 1`.
    pub too_many_every: Option<usize>,
}

/// A request as the proxy saw it: method, path, status, when it came and
/// when it ended (for uploads, once the body was read and answered).
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub started: Instant,
    pub finished: Instant,
}

/// A fault as a `Proxy` injects it, counted when it really happens (a cut
/// once bytes are withheld, a throttle once a body is slowed), so that a
/// test can tell its fault was there to survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A 503 in place of the registry's answer (`unavailable_every`).
    Unavailable,
    /// A 429 in place of the registry's answer (`too_many_every`).
    TooManyRequests,
    /// A 307 to the registry itself (`redirect_to`).
    Redirected,
    /// An answer held back (`delay`).
    Delayed,
    /// A blob download's body cut off before its end (`cut_downloads_after`).
    DownloadCut,
    /// A manifest's body cut off before its end (`cut_manifests_after`).
    ManifestCut,
    /// A blob download with a byte changed (`corrupt_downloads`).
    DownloadCorrupted,
    /// An upload's body cut off, the registry never reached
    /// (`cut_uploads_after`).
    UploadCut,
    /// An upload's answer dropped after the registry took it
    /// (`lose_upload_replies`).
    ReplyLost,
    /// An upload's body read slowly (`throttle_uploads`).
    UploadThrottled,
}

/// A fault a `Proxy` injected, and into which request.
#[derive(Debug, Clone)]
pub struct Injected {
    pub fault: Fault,
    pub method: String,
    pub path: String,
}

type Injections = Arc<Mutex<Vec<Injected>>>;

fn note(injections: &Injections, fault: Fault, method: &str, path: &str) {
    if let Ok(mut injected) = injections.lock() {
        injected.push(Injected {
            fault,
            method: method.to_string(),
            path: path.to_string(),
        });
    }
}

/// A loopback HTTP proxy in front of a registry, injecting `Faults`.
pub struct Proxy {
    pub address: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    injections: Injections,
    _server: Server,
}

impl Proxy {
    pub fn start(upstream: &str, faults: Faults) -> Proxy {
        let upstream = format!("http://{upstream}");
        // The proxy's own client only speaks HTTP, but reqwest wants a TLS
        // provider to build one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("proxy client");
        let state = Arc::new(ProxyState {
            faults,
            requests: AtomicUsize::new(0),
            downloads_cut: AtomicUsize::new(0),
            manifests_cut: AtomicUsize::new(0),
            uploads_cut: AtomicUsize::new(0),
            replies_lost: AtomicUsize::new(0),
            injections: Injections::default(),
        });
        let injections = state.injections.clone();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let recorded = seen.clone();
        let server = Server::start(move |request| {
            let http = http.clone();
            let upstream = upstream.clone();
            let state = state.clone();
            let recorded = recorded.clone();
            async move { forward(request, &http, &upstream, &state, &recorded).await }
        });
        Proxy {
            address: server.address.clone(),
            seen,
            injections,
            _server: server,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Every fault injected so far, in order.
    pub fn injections(&self) -> Vec<Injected> {
        self.injections
            .lock()
            .map(|i| i.clone())
            .unwrap_or_default()
    }

    /// How many times `fault` was injected so far.
    pub fn injected(&self, fault: Fault) -> usize {
        self.injections()
            .iter()
            .filter(|i| i.fault == fault)
            .count()
    }
}

struct ProxyState {
    faults: Faults,
    requests: AtomicUsize,
    downloads_cut: AtomicUsize,
    manifests_cut: AtomicUsize,
    uploads_cut: AtomicUsize,
    replies_lost: AtomicUsize,
    injections: Injections,
}

async fn forward(
    request: Request<Incoming>,
    http: &reqwest::Client,
    upstream: &str,
    state: &ProxyState,
    seen: &Mutex<Vec<Seen>>,
) -> Response<Body> {
    let started = Instant::now();
    let number = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let method = request.method().to_string();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let path = request.uri().path().to_string();
    let record = |status: u16| {
        if let Ok(mut seen) = seen.lock() {
            seen.push(Seen {
                method: method.clone(),
                path: path.clone(),
                status,
                started,
                finished: Instant::now(),
            });
        }
    };
    let injected = |fault: Fault| note(&state.injections, fault, &method, &path);
    if let Some(delay) = state.faults.delay {
        injected(Fault::Delayed);
        tokio::time::sleep(delay).await;
    }
    if state
        .faults
        .unavailable_every
        .is_some_and(|every| number.is_multiple_of(every))
    {
        injected(Fault::Unavailable);
        record(503);
        return Response::builder()
            .status(503)
            .header("content-type", "application/json")
            .body(full(
                r#"{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}"#,
            ))
            .expect("response");
    }
    if state
        .faults
        .too_many_every
        .is_some_and(|every| number.is_multiple_of(every))
    {
        injected(Fault::TooManyRequests);
        record(429);
        return Response::builder()
            .status(429)
            .header("retry-after", "1")
            .body(full(
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
            ))
            .expect("response");
    }
    if let Some(target) = &state.faults.redirect_to {
        injected(Fault::Redirected);
        record(307);
        return Response::builder()
            .status(307)
            .header("location", format!("http://{target}{path_and_query}"))
            .body(full(""))
            .expect("response");
    }
    let is_blob_download = method == "GET" && path.contains("/blobs/sha256:");
    let is_manifest_get = method == "GET" && path.contains("/manifests/");
    let is_upload = (method == "PATCH" || method == "PUT") && path.contains("/blobs/uploads/");
    let mut upstream_request = http.request(
        request.method().clone(),
        format!("{upstream}{path_and_query}"),
    );
    // Host goes along too: the registry builds upload URLs from it, which
    // must lead back through the proxy.
    for (name, value) in request.headers() {
        upstream_request = upstream_request.header(name, value);
    }
    let cut_upload = is_upload
        && state
            .faults
            .cut_uploads_after
            .is_some_and(|(_, times)| state.uploads_cut.fetch_add(1, Ordering::SeqCst) < times);
    let body_stream = request.into_body().into_data_stream();
    if cut_upload {
        let limit = state.faults.cut_uploads_after.map_or(0, |(after, _)| after);
        // Read part of the upload, then drop the connection.
        let mut stream = body_stream;
        let mut received = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            received += chunk.len() as u64;
            if received >= limit {
                break;
            }
        }
        injected(Fault::UploadCut);
        record(0);
        return cut_off();
    }
    let lose_reply = is_upload
        && state
            .faults
            .lose_upload_replies
            .is_some_and(|times| state.replies_lost.fetch_add(1, Ordering::SeqCst) < times);
    let body_stream = match state.faults.throttle_uploads.filter(|_| is_upload) {
        Some(rate) => {
            let injections = state.injections.clone();
            let (method, path) = (method.clone(), path.clone());
            let throttled = Arc::new(std::sync::atomic::AtomicBool::new(false));
            body_stream
                .then(move |chunk| {
                    let slowed = !throttled.swap(true, Ordering::SeqCst);
                    if slowed {
                        note(&injections, Fault::UploadThrottled, &method, &path);
                    }
                    async move {
                        if let Ok(chunk) = &chunk {
                            let seconds = chunk.len() as f64 / rate as f64;
                            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                        }
                        chunk
                    }
                })
                .boxed()
        }
        None => body_stream.boxed(),
    };
    upstream_request = upstream_request.body(reqwest::Body::wrap_stream(body_stream));
    let response = match upstream_request.send().await {
        Ok(response) => response,
        Err(e) => {
            record(502);
            return Response::builder()
                .status(502)
                .body(full(e.to_string()))
                .expect("response");
        }
    };
    let status = response.status().as_u16();
    if lose_reply {
        // The registry did the work; the client never hears of it.
        injected(Fault::ReplyLost);
        record(status);
        return cut_off();
    }
    let mut builder = Response::builder().status(status);
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    let delivered = status == 200 || status == 206;
    // A body no longer than the cut is not cut, and does not count.
    let body_length = response.content_length();
    let cut_download = is_blob_download
        && delivered
        && state
            .faults
            .cut_downloads_after
            .is_some_and(|(after, times)| {
                body_length.is_none_or(|length| length > after)
                    && state.downloads_cut.fetch_add(1, Ordering::SeqCst) < times
            });
    let cut_manifest = is_manifest_get
        && delivered
        && state
            .faults
            .cut_manifests_after
            .is_some_and(|(after, times)| {
                body_length.is_none_or(|length| length > after)
                    && state.manifests_cut.fetch_add(1, Ordering::SeqCst) < times
            });
    let (limit, cut_fault) = if cut_download {
        (
            state.faults.cut_downloads_after.map(|(after, _)| after),
            Fault::DownloadCut,
        )
    } else if cut_manifest {
        (
            state.faults.cut_manifests_after.map(|(after, _)| after),
            Fault::ManifestCut,
        )
    } else {
        (None, Fault::DownloadCut)
    };
    let corrupt = is_blob_download && status == 200 && state.faults.corrupt_downloads;
    record(status);
    let injections = state.injections.clone();
    let mut sent = 0u64;
    let mut withheld = false;
    let mut corrupted = false;
    let stream = response.bytes_stream().map(move |chunk| {
        let mut chunk = chunk.map_err(std::io::Error::other)?;
        if let Some(limit) = limit {
            if sent + chunk.len() as u64 > limit && !withheld {
                withheld = true;
                note(&injections, cut_fault, &method, &path);
            }
            if sent >= limit {
                return Err(std::io::Error::other("injected cut"));
            }
            if sent + chunk.len() as u64 > limit {
                chunk.truncate((limit - sent) as usize);
            }
        }
        if corrupt && !corrupted && !chunk.is_empty() {
            let mut changed = chunk.to_vec();
            changed[0] ^= 0xff;
            chunk = Bytes::from(changed);
            corrupted = true;
            note(&injections, Fault::DownloadCorrupted, &method, &path);
        }
        sent += chunk.len() as u64;
        Ok(Frame::data(chunk))
    });
    // A body to be cut starts after a pause, so that the answer's head has
    // reached the client and the cut fails the body (a small body would
    // otherwise go out with the head, and the cut fail the whole answer).
    let pause = futures_util::stream::once(async move {
        if limit.is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Frame::data(Bytes::new()))
    });
    builder
        .body(BodyExt::boxed(StreamBody::new(pause.chain(stream))))
        .expect("response")
}

/// A response whose body fails at once, so that the connection is dropped.
fn cut_off() -> Response<Body> {
    let stream = futures_util::stream::once(async {
        Err::<Frame<Bytes>, _>(std::io::Error::other("injected reset"))
    });
    Response::builder()
        .status(200)
        .header("content-length", "100")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response")
}

/// Serves fixed files over plain HTTP on a loopback port, each with a
/// `Last-Modified` (none when it is empty); `/moved/NAME` redirects to
/// `/NAME`.
pub struct FileServer {
    pub address: String,
    _server: Server,
}

impl FileServer {
    pub fn start(files: Vec<(String, Vec<u8>)>, last_modified: &str) -> FileServer {
        let files: Arc<HashMap<String, Bytes>> = Arc::new(
            files
                .into_iter()
                .map(|(name, bytes)| (format!("/{name}"), Bytes::from(bytes)))
                .collect(),
        );
        let last_modified = last_modified.to_string();
        let server = Server::start(move |request| {
            let files = files.clone();
            let last_modified = last_modified.clone();
            async move {
                let path = request.uri().path().to_string();
                if let Some(target) = path.strip_prefix("/moved") {
                    return Response::builder()
                        .status(302)
                        .header("location", target)
                        .body(full(""))
                        .expect("response");
                }
                match files.get(&path) {
                    Some(bytes) if last_modified.is_empty() => Response::builder()
                        .body(full(bytes.clone()))
                        .expect("response"),
                    Some(bytes) => Response::builder()
                        .header("last-modified", last_modified.as_str())
                        .body(full(bytes.clone()))
                        .expect("response"),
                    None => Response::builder()
                        .status(404)
                        .body(full("not found"))
                        .expect("response"),
                }
            }
        });
        FileServer {
            address: server.address.clone(),
            _server: server,
        }
    }
}
