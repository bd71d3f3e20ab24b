//! Authentication against real registries: Basic over TLS with a CA the
//! test makes, and Bearer tokens from an issuer the test runs.

mod support;

use std::collections::HashMap;

use kiln_registry::transfer;
use kiln_testkit::{runtime, Registry, Setup, TokenIssuer, PASSWORD, USER};
use support::{client, docker_config_with_login, host_platform, reference, store, test_image};

#[test]
fn basic_auth_over_tls_with_the_registrys_own_ca() {
    let registry = Registry::start(Setup::BasicTls);
    let logins = tempfile::tempdir().expect("tmp");
    let config = docker_config_with_login(logins.path(), &registry.address, USER, PASSWORD);
    let (_a, source) = store();
    let image = test_image(&source, 50_000, 10);
    let runtime = runtime();
    let authorised = client(&registry.certs_dir, Some(&config));
    let reference = reference(&registry, "private/app:1");
    runtime
        .block_on(support::push(
            &authorised,
            &source,
            &image,
            std::slice::from_ref(&reference),
        ))
        .expect("push with the login");
    let (_b, target) = store();
    let pulled = runtime
        .block_on(transfer::pull(
            &authorised,
            &target,
            &reference,
            &host_platform(),
            2,
            &|_, _| {},
        ))
        .expect("pull with the login");
    assert_eq!(pulled.manifest.digest, image);

    // No login: the registry's demand is passed on with what to do.
    let anonymous = client(&registry.certs_dir, None);
    let err = runtime
        .block_on(transfer::resolve(&anonymous, &reference, &host_platform()))
        .expect_err("anonymous");
    assert!(err.to_string().contains("kiln login"), "{err}");

    // A wrong password is refused, and no secret appears in the message.
    let wrong_dir = tempfile::tempdir().expect("tmp");
    let wrong = docker_config_with_login(wrong_dir.path(), &registry.address, USER, "not-it-42");
    let err = runtime
        .block_on(transfer::resolve(
            &client(&registry.certs_dir, Some(&wrong)),
            &reference,
            &host_platform(),
        ))
        .expect_err("wrong password");
    let message = err.to_string();
    assert!(
        message.contains("refused the credentials of builder"),
        "{message}"
    );
    assert!(!message.contains("not-it-42") && !message.contains(PASSWORD));

    // Without its CA the registry's certificate is not trusted, and kiln
    // does not fall back to plain HTTP.
    let no_ca = tempfile::tempdir().expect("tmp");
    let err = runtime
        .block_on(transfer::resolve(
            &client(no_ca.path(), Some(&config)),
            &reference,
            &host_platform(),
        ))
        .expect_err("untrusted");
    assert!(
        err.to_string().contains("ca.crt"),
        "the error says where the CA goes: {err}"
    );
}

#[test]
fn a_token_answer_cut_short_is_asked_for_again() {
    let issuer = TokenIssuer::start();
    let registry = Registry::start(Setup::Token(&issuer));
    let (_a, source) = store();
    let image = test_image(&source, 50_000, 12);
    let runtime = runtime();
    let reference = reference(&registry, "tokens/cut:1");
    let logins = tempfile::tempdir().expect("tmp");
    let config = docker_config_with_login(logins.path(), &registry.address, USER, PASSWORD);
    issuer.cut_answers(2);
    runtime
        .block_on(support::push(
            &client(&registry.certs_dir, Some(&config)),
            &source,
            &image,
            std::slice::from_ref(&reference),
        ))
        .expect("push with token answers cut short");
    assert_eq!(issuer.answers_cut(), 2, "two answers were cut");
    let (_b, target) = store();
    let pulled = runtime
        .block_on(transfer::pull(
            &client(&registry.certs_dir, Some(&config)),
            &target,
            &reference,
            &host_platform(),
            2,
            &|_, _| {},
        ))
        .expect("pull");
    assert_eq!(pulled.manifest.digest, image);
}

#[test]
fn bearer_tokens_per_scope_are_fetched_once_and_push_needs_a_login() {
    let issuer = TokenIssuer::start();
    let registry = Registry::start(Setup::Token(&issuer));
    let (_a, source) = store();
    let image = test_image(&source, 50_000, 11);
    let runtime = runtime();
    let refused = reference(&registry, "tokens/anonymous:1");
    let reference = reference(&registry, "tokens/app:1");

    // Refused in a repository of its own: a token request of the refused
    // push that reaches the issuer after the push gave up (its other blob's)
    // must not count against the push below.
    let anonymous = client(&registry.certs_dir, None);
    let err = runtime
        .block_on(support::push(
            &anonymous,
            &source,
            &image,
            std::slice::from_ref(&refused),
        ))
        .expect_err("anonymous push");
    assert!(err.to_string().contains("401"), "{err}");

    let push_scope = "repository:tokens/app:pull,push";
    let before = issuer.requests_for(push_scope);
    let logins = tempfile::tempdir().expect("tmp");
    let config = docker_config_with_login(logins.path(), &registry.address, USER, PASSWORD);
    let authorised = client(&registry.certs_dir, Some(&config));
    runtime
        .block_on(support::push(
            &authorised,
            &source,
            &image,
            std::slice::from_ref(&reference),
        ))
        .expect("push with the login");
    assert_eq!(
        issuer.requests_for(push_scope) - before,
        1,
        "one token served the whole push (two blobs and the manifest)"
    );

    // Mounting into another repository needs a token for both: push to
    // the target, pull from the source.
    let (config, layers) = transfer::manifest_blobs(&kiln_registry::Manifest {
        bytes: source.read_blob(&image).expect("manifest").into(),
        media_type: String::new(),
        digest: image,
    })
    .expect("blobs");
    let mounts: HashMap<_, _> = std::iter::once(config.digest)
        .chain(layers.iter().map(|l| l.digest))
        .map(|digest| (digest, reference.clone()))
        .collect();
    let report = runtime
        .block_on(transfer::push(
            &authorised,
            &source,
            &image,
            &[support::reference(&registry, "tokens/copy:1")],
            &mounts,
            2,
            &|_, _| {},
        ))
        .expect("push with mounts");
    assert_eq!(report.blobs.len(), 2);
    assert!(
        report
            .blobs
            .iter()
            .all(|(_, _, pushed)| *pushed == kiln_registry::Pushed::Mounted),
        "{:?}",
        report.blobs
    );
    assert_eq!(
        issuer.requests_for("repository:tokens/copy:pull,push repository:tokens/app:pull"),
        1
    );

    // Anyone may pull; the anonymous client gets a pull token of its own.
    let (_b, target) = store();
    let pulled = runtime
        .block_on(transfer::pull(
            &anonymous,
            &target,
            &reference,
            &host_platform(),
            2,
            &|_, _| {},
        ))
        .expect("anonymous pull");
    assert_eq!(pulled.manifest.digest, image);
    assert_eq!(
        issuer.requests_for("repository:tokens/app:pull"),
        1,
        "one pull token for the manifest and every blob"
    );
}
