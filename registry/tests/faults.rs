//! Pull and push through a loopback proxy that injects 503s, delays and
//! connections dropped in the middle of blobs. Each test checks that the
//! proxy did inject the faults it is about: one that never came would let
//! it pass with nothing survived.

mod support;

use std::time::Duration;

use kiln_registry::transfer;
use kiln_testkit::{runtime, Fault, Faults, Proxy, Registry, Seen, Setup};
use support::{client, client_with, host_platform, reference, store, test_image};

fn reference_via(proxy: &Proxy, name: &str) -> kiln_registry::Reference {
    kiln_registry::Reference::parse(&format!("{}/{name}", proxy.address)).expect("reference")
}

/// Whether `seen` is a request that sends blob data (a chunk or the
/// closing request of an upload).
fn is_upload(seen: &Seen) -> bool {
    (seen.method == "PATCH" || seen.method == "PUT") && seen.path.contains("/blobs/uploads/")
}

/// Whether `seen` is a request that starts an upload session.
fn starts_upload(seen: &Seen) -> bool {
    seen.method == "POST" && seen.path.ends_with("/blobs/uploads/")
}

#[test]
fn pulls_survive_503s_and_resume_broken_downloads() {
    let registry = Registry::start(Setup::Anonymous);
    let (_a, source) = store();
    let image = test_image(&source, 2_000_000, 20);
    let runtime = runtime();
    let direct = client(&registry.certs_dir, None);
    runtime
        .block_on(support::push(
            &direct,
            &source,
            &image,
            &[reference(&registry, "faulty/app:1")],
        ))
        .expect("push");
    let proxy = Proxy::start(
        &registry.address,
        Faults {
            unavailable_every: Some(3),
            cut_downloads_after: Some((300_000, 2)),
            delay: Some(Duration::from_millis(5)),
            ..Faults::default()
        },
    );
    let (_b, target) = store();
    let pulled = runtime
        .block_on(transfer::pull(
            &client(&registry.certs_dir, None),
            &target,
            &reference_via(&proxy, "faulty/app:1"),
            &host_platform(),
            2,
            &|_, _| {},
        ))
        .expect("pull through faults");
    assert_eq!(pulled.manifest.digest, image);
    assert!(target.check().expect("check").is_empty());
    assert!(proxy.injected(Fault::Unavailable) > 0, "503s were injected");
    // The layer is cut twice: its first download, and the first resumption.
    assert_eq!(
        proxy.injected(Fault::DownloadCut),
        2,
        "{:?}",
        proxy.injections()
    );
    let seen = proxy.seen();
    let resumed = seen
        .iter()
        .filter(|s| s.status == 206 && s.path.contains("/blobs/"))
        .count();
    assert_eq!(
        resumed, 2,
        "each broken download resumed with a Range request: {seen:?}"
    );
}

#[test]
fn a_manifest_cut_short_is_fetched_again() {
    let registry = Registry::start(Setup::Anonymous);
    let (_a, source) = store();
    let image = test_image(&source, 100_000, 22);
    let runtime = runtime();
    runtime
        .block_on(support::push(
            &client(&registry.certs_dir, None),
            &source,
            &image,
            &[reference(&registry, "cut/app:1")],
        ))
        .expect("push");
    let proxy = Proxy::start(
        &registry.address,
        Faults {
            cut_manifests_after: Some((100, 2)),
            ..Faults::default()
        },
    );
    let (_b, target) = store();
    let pulled = runtime
        .block_on(transfer::pull(
            &client(&registry.certs_dir, None),
            &target,
            &reference_via(&proxy, "cut/app:1"),
            &host_platform(),
            2,
            &|_, _| {},
        ))
        .expect("pull through cut manifests");
    assert_eq!(pulled.manifest.digest, image);
    assert!(target.check().expect("check").is_empty());
    assert_eq!(
        proxy.injected(Fault::ManifestCut),
        2,
        "{:?}",
        proxy.injections()
    );
}

#[test]
fn pushes_survive_faults_and_the_manifest_comes_after_every_blob() {
    let registry = Registry::start(Setup::Anonymous);
    let (_a, source) = store();
    let image = test_image(&source, 3_000_000, 21);
    let proxy = Proxy::start(
        &registry.address,
        Faults {
            unavailable_every: Some(4),
            cut_uploads_after: Some((200_000, 2)),
            ..Faults::default()
        },
    );
    let runtime = runtime();
    let chunked = client_with(&registry.certs_dir, None, |options| {
        options.chunk_size = 1 << 20;
    });
    runtime
        .block_on(support::push(
            &chunked,
            &source,
            &image,
            &[reference_via(&proxy, "faulty/up:1")],
        ))
        .expect("push through faults");
    let seen = proxy.seen();
    let manifest_put = seen
        .iter()
        .filter(|s| s.method == "PUT" && s.path.contains("/manifests/") && s.status == 201)
        .map(|s| s.finished)
        .min()
        .expect("the manifest was put");
    let blobs_done: Vec<_> = seen
        .iter()
        .filter(|s| s.method == "PUT" && s.path.contains("/blobs/uploads/") && s.status == 201)
        .collect();
    assert_eq!(blobs_done.len(), 2, "config and layer: {seen:?}");
    assert!(
        blobs_done.iter().all(|s| s.finished < manifest_put),
        "the manifest went up before a blob: {seen:?}"
    );
    assert_eq!(
        proxy.injected(Fault::UploadCut),
        2,
        "{:?}",
        proxy.injections()
    );
    assert!(proxy.injected(Fault::Unavailable) > 0, "503s were injected");
    let (_b, target) = store();
    let pulled = runtime
        .block_on(transfer::pull(
            &client(&registry.certs_dir, None),
            &target,
            &reference(&registry, "faulty/up:1"),
            &host_platform(),
            2,
            &|_, _| {},
        ))
        .expect("pull what was pushed");
    assert_eq!(pulled.manifest.digest, image);
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_rejected() {
    let registry = Registry::start(Setup::Anonymous);
    let (_a, source) = store();
    let image = test_image(&source, 100_000, 22);
    let runtime = runtime();
    runtime
        .block_on(support::push(
            &client(&registry.certs_dir, None),
            &source,
            &image,
            &[reference(&registry, "corrupt/app:1")],
        ))
        .expect("push");
    let proxy = Proxy::start(
        &registry.address,
        Faults {
            corrupt_downloads: true,
            ..Faults::default()
        },
    );
    let (_b, target) = store();
    let err = runtime
        .block_on(transfer::pull(
            &client(&registry.certs_dir, None),
            &target,
            &reference_via(&proxy, "corrupt/app:1"),
            &host_platform(),
            2,
            &|_, _| {},
        ))
        .expect_err("corrupt blob");
    assert!(
        err.to_string().contains("does not match its content"),
        "{err}"
    );
    assert!(
        proxy.injected(Fault::DownloadCorrupted) > 0,
        "a download was corrupted"
    );
    assert!(!target.has_blob(&image), "no manifest without its blobs");
    assert!(target.check().expect("check").is_empty());
}

#[test]
fn the_last_try_says_which_request_failed_and_why() {
    let registry = Registry::start(Setup::Anonymous);
    let unavailable = Proxy::start(
        &registry.address,
        Faults {
            unavailable_every: Some(1),
            ..Faults::default()
        },
    );
    let runtime = runtime();
    let err = runtime
        .block_on(transfer::resolve(
            &client(&registry.certs_dir, None),
            &reference_via(&unavailable, "down/app:1"),
            &host_platform(),
        ))
        .expect_err("always 503");
    let message = err.to_string();
    assert!(
        message.contains("/v2/down/app/manifests/1 failed after 6 attempt(s): the registry answered 503: UNAVAILABLE injected"),
        "{message}"
    );
    assert!(unavailable.injected(Fault::Unavailable) >= 6);

    // A registry that stops answering is given up on after the stall
    // timeout, not waited for forever.
    let stalled = Proxy::start(
        &registry.address,
        Faults {
            delay: Some(Duration::from_secs(3)),
            ..Faults::default()
        },
    );
    let impatient = client_with(&registry.certs_dir, None, |options| {
        options.transport.stall_timeout = Duration::from_millis(300);
        options.retry.attempts = 2;
    });
    let err = runtime
        .block_on(transfer::resolve(
            &impatient,
            &reference_via(&stalled, "slow/app:1"),
            &host_platform(),
        ))
        .expect_err("stalled");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(stalled.injected(Fault::Delayed) > 0);
}

/// Pushes `image` from `source` through `proxy` to `repository`, then
/// pulls it straight from the registry and checks it came through whole.
fn push_through_and_check(
    registry: &Registry,
    proxy: &Proxy,
    source: &kiln_cache::Store,
    image: &kiln_cache::Digest,
    repository: &str,
    adjust: impl FnOnce(&mut kiln_registry::ClientOptions),
) {
    let runtime = runtime();
    let pushing = client_with(&registry.certs_dir, None, adjust);
    runtime
        .block_on(support::push(
            &pushing,
            source,
            image,
            &[reference_via(proxy, repository)],
        ))
        .unwrap_or_else(|e| panic!("push to {repository}: {e}"));
    let (_dir, target) = store();
    let pulled = runtime
        .block_on(transfer::pull(
            &client(&registry.certs_dir, None),
            &target,
            &reference(registry, repository),
            &host_platform(),
            2,
            &|_, _| {},
        ))
        .expect("pull what was pushed");
    assert_eq!(pulled.manifest.digest, *image);
}

#[test]
fn an_upload_whose_answer_is_lost_is_finished_or_started_again() {
    let registry = Registry::start(Setup::Anonymous);
    let (_a, source) = store();
    let image = test_image(&source, 3_000_000, 23);
    // The answers lost are those of the first two requests with blob data:
    // the config's closing PUT and, pushed in chunks, the layer's first
    // PATCH. After a lost PATCH the registry no longer knows the session by
    // its old address, and a new one starts; after a lost closing PUT the
    // blob is there, and the push goes on without another session.
    for (repository, chunk_size, lost, sessions) in [
        ("lost/chunked:1", 1 << 20, ["PATCH", "PUT"], 3),
        ("lost/whole:1", 32 << 20, ["PUT", "PUT"], 2),
    ] {
        let proxy = Proxy::start(
            &registry.address,
            Faults {
                lose_upload_replies: Some(2),
                ..Faults::default()
            },
        );
        push_through_and_check(&registry, &proxy, &source, &image, repository, |options| {
            options.chunk_size = chunk_size;
        });
        let mut lost_methods: Vec<String> = proxy
            .injections()
            .into_iter()
            .filter(|i| i.fault == Fault::ReplyLost)
            .map(|i| i.method)
            .collect();
        lost_methods.sort();
        assert_eq!(lost_methods, lost, "{repository}");
        let started = proxy.seen().iter().filter(|s| starts_upload(s)).count();
        assert_eq!(started, sessions, "{repository}: {:?}", proxy.seen());
    }
}

#[test]
fn a_slow_upload_that_keeps_moving_is_not_timed_out() {
    let registry = Registry::start(Setup::Anonymous);
    let (_a, source) = store();
    // About 3 s at the proxy's pace, three times the stall timeout, and far
    // more than the socket buffers between them hold.
    let image = test_image(&source, 36_000_000, 24);
    let proxy = Proxy::start(
        &registry.address,
        Faults {
            throttle_uploads: Some(12_000_000),
            ..Faults::default()
        },
    );
    let stall_timeout = Duration::from_secs(1);
    push_through_and_check(
        &registry,
        &proxy,
        &source,
        &image,
        "slow/app:1",
        |options| {
            options.transport.stall_timeout = stall_timeout;
        },
    );
    assert!(
        proxy.injected(Fault::UploadThrottled) > 0,
        "uploads were slowed"
    );
    let seen = proxy.seen();
    assert!(
        seen.iter().any(|s| is_upload(s)
            && (s.status == 201 || s.status == 202)
            && s.finished - s.started > stall_timeout),
        "an upload request that took longer than the stall timeout went through: {seen:?}"
    );
}

#[test]
fn redirects_and_429s_are_followed() {
    let registry = Registry::start(Setup::Anonymous);
    let (_a, source) = store();
    let image = test_image(&source, 200_000, 25);
    let redirecting = Proxy::start(
        &registry.address,
        Faults {
            redirect_to: Some(registry.address.clone()),
            ..Faults::default()
        },
    );
    push_through_and_check(
        &registry,
        &redirecting,
        &source,
        &image,
        "moved/app:1",
        |_| {},
    );
    let (_b, target) = store();
    let runtime = runtime();
    runtime
        .block_on(transfer::pull(
            &client(&registry.certs_dir, None),
            &target,
            &reference_via(&redirecting, "moved/app:1"),
            &host_platform(),
            2,
            &|_, _| {},
        ))
        .expect("pull through redirects");
    let seen = redirecting.seen();
    assert!(!seen.is_empty() && seen.iter().all(|s| s.status == 307));
    assert_eq!(redirecting.injected(Fault::Redirected), seen.len());

    let busy = Proxy::start(
        &registry.address,
        Faults {
            too_many_every: Some(2),
            ..Faults::default()
        },
    );
    let (_c, target) = store();
    runtime
        .block_on(transfer::pull(
            &client(&registry.certs_dir, None),
            &target,
            &reference_via(&busy, "moved/app:1"),
            &host_platform(),
            2,
            &|_, _| {},
        ))
        .expect("pull through 429s");
    assert!(busy.injected(Fault::TooManyRequests) > 0);
}

/// A TCP relay to `upstream` that counts the connections made through it.
struct CountingRelay {
    address: String,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingRelay {
    fn start(upstream: &str) -> CountingRelay {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay listens");
        let address = listener.local_addr().expect("relay address").to_string();
        let connections = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                counted.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                };
                if let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone())
                {
                    pipe(client_copy, server);
                    pipe(server_copy, client);
                }
            }
        });
        CountingRelay {
            address,
            connections,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn a_no_gets_one_try_and_a_clear_error() {
    let runtime = runtime();
    let certs = tempfile::tempdir().expect("tmp");

    // A host name that does not resolve (.invalid never does) is an answer.
    let unknown = kiln_registry::Reference::parse("no-such-registry.invalid/app:1").expect("ref");
    let err = runtime
        .block_on(transfer::resolve(
            &client(certs.path(), None),
            &unknown,
            &host_platform(),
        ))
        .expect_err("unknown host");
    assert!(
        matches!(err, kiln_registry::Error::UnknownHost { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("no-such-registry.invalid does not resolve to an address"),
        "{err}"
    );

    // The same for a file ADD downloads.
    let mut sink = Vec::new();
    let err = runtime
        .block_on(kiln_registry::fetch::download(
            &"https://no-such-host.invalid/tool.tar.gz"
                .parse()
                .expect("url"),
            &kiln_registry::TransportOptions::default(),
            &kiln_registry::RetryPolicy::default(),
            &mut sink,
        ))
        .expect_err("unknown host");
    assert!(
        matches!(err, kiln_registry::Error::UnknownHost { ref host, .. } if host == "no-such-host.invalid"),
        "{err:?}"
    );

    // A certificate kiln does not trust: one connection, no retry, no
    // fallback to plain HTTP.
    let tls = Registry::start(Setup::BasicTls);
    let relay = CountingRelay::start(&tls.address);
    let err = runtime
        .block_on(transfer::resolve(
            &client(certs.path(), None),
            &kiln_registry::Reference::parse(&format!("{}/app:1", relay.address)).expect("ref"),
            &host_platform(),
        ))
        .expect_err("untrusted certificate");
    assert!(matches!(err, kiln_registry::Error::Tls { .. }), "{err:?}");
    assert_eq!(relay.connections(), 1, "one try: {err}");

    // A 401 once fresh credentials were sent is the registry's answer: the
    // request is sent once, and once more with a new token, then refused.
    let issuer = kiln_testkit::TokenIssuer::start();
    let registry = Registry::start(Setup::Token(&issuer));
    let proxy = Proxy::start(&registry.address, Faults::default());
    let (_a, source) = store();
    let image = test_image(&source, 50_000, 30);
    let err = runtime
        .block_on(support::push(
            &client(&registry.certs_dir, None),
            &source,
            &image,
            &[reference_via(&proxy, "refused/app:1")],
        ))
        .expect_err("anonymous push");
    assert!(err.to_string().contains("401"), "{err}");
    let refusals: Vec<Seen> = proxy
        .seen()
        .into_iter()
        .filter(|seen| seen.status == 401 && seen.path != "/v2/")
        .collect();
    assert!(!refusals.is_empty(), "the registry refused the push");
    // Two blobs (the configuration and one layer) go up at once, each
    // refused at most twice.
    assert!(
        refusals.len() <= 4
            && refusals
                .iter()
                .all(|seen| seen.method == "POST" && seen.path.ends_with("/blobs/uploads/")),
        "{refusals:?}"
    );

    // Credentials the token service refuses: asked once.
    let logins = tempfile::tempdir().expect("tmp");
    let wrong = support::docker_config_with_login(
        logins.path(),
        &proxy.address,
        kiln_testkit::USER,
        "not-the-password",
    );
    let err = runtime
        .block_on(transfer::resolve(
            &client(&registry.certs_dir, Some(&wrong)),
            &reference_via(&proxy, "refused/app:1"),
            &host_platform(),
        ))
        .expect_err("wrong password");
    assert!(err.to_string().contains("refused the credentials"), "{err}");
    assert_eq!(issuer.requests_for("repository:refused/app:pull"), 1);
}
