//! Pull and push through a loopback proxy that injects 503s, delays and
//! connections dropped in the middle of blobs.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use kiln_registry::transfer;
use kiln_testkit::{runtime, Faults, Proxy, Registry, Setup};
use support::{client, client_with, host_platform, reference, store, test_image};

fn reference_via(proxy: &Proxy, name: &str) -> kiln_registry::Reference {
    kiln_registry::Reference::parse(&format!("{}/{name}", proxy.address)).expect("reference")
}

#[test]
fn pulls_survive_503s_and_resume_broken_downloads() {
    let registry = Registry::start(Setup::Anonymous);
    let (_a, source) = store();
    let image = test_image(&source, 2_000_000, 20);
    let runtime = runtime();
    let direct = client(&registry.certs_dir, None);
    runtime
        .block_on(transfer::push(
            &direct,
            &source,
            &image,
            &[reference(&registry, "faulty/app:1")],
            &HashMap::new(),
            2,
            &|_, _| {},
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
    let seen = proxy.seen();
    assert!(seen.iter().any(|s| s.status == 503), "503s were injected");
    assert!(
        seen.iter()
            .any(|s| s.status == 206 && s.path.contains("/blobs/")),
        "a broken download resumed with a Range request: {seen:?}"
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
        .block_on(transfer::push(
            &chunked,
            &source,
            &image,
            &[reference_via(&proxy, "faulty/up:1")],
            &HashMap::new(),
            2,
            &|_, _| {},
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
    assert!(seen.iter().any(|s| s.status == 0), "uploads were cut");
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
        .block_on(transfer::push(
            &client(&registry.certs_dir, None),
            &source,
            &image,
            &[reference(&registry, "corrupt/app:1")],
            &HashMap::new(),
            2,
            &|_, _| {},
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
}
