//! Credentials from `docker-credential-*` helpers and identity tokens, as
//! Docker's config.json names them. The helper is looked for in a
//! directory the client's options name, not in PATH, which tests must not
//! change once threads run.

mod support;

use std::os::unix::fs::PermissionsExt;

use kiln_testkit::{runtime, Registry, Setup, TokenIssuer, PASSWORD, REFRESH_TOKEN, USER};
use support::{client, client_with, reference, store, test_image};

#[test]
fn credential_helpers_and_identity_tokens_authorise_a_push() {
    let issuer = TokenIssuer::start();
    let registry = Registry::start(Setup::Token(&issuer));
    let helpers = tempfile::tempdir().expect("tmp");
    // A helper as Docker's protocol has them: `get` reads the server on
    // stdin and answers JSON; it keeps a log of what it was asked.
    let log = helpers.path().join("asked");
    let script = format!(
        "#!/bin/sh\nread server\necho \"$1 $server\" >> {}\nif [ \"$server\" = \"{}\" ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
        log.display(),
        registry.address
    );
    let helper = helpers.path().join("docker-credential-kilntest");
    std::fs::write(&helper, script).expect("helper");
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let configs = tempfile::tempdir().expect("tmp");
    let with_helper = configs.path().join("helper.json");
    std::fs::write(
        &with_helper,
        serde_json::to_vec(
            &serde_json::json!({"credHelpers": {registry.address.clone(): "kilntest"}}),
        )
        .expect("json"),
    )
    .expect("config");
    let (_a, source) = store();
    let image = test_image(&source, 20_000, 30);
    let runtime = runtime();
    runtime
        .block_on(support::push(
            &client_with(&registry.certs_dir, Some(&with_helper), |options| {
                options.credential_helper_dirs = Some(vec![helpers.path().to_path_buf()]);
            }),
            &source,
            &image,
            &[reference(&registry, "helped/app:1")],
        ))
        .expect("push with the helper's credentials");
    let asked = std::fs::read_to_string(&log).expect("the helper was asked");
    assert!(
        asked.contains(&format!("get {}", registry.address)),
        "{asked}"
    );

    // An identity token (what `docker login` keeps for some registries) is
    // exchanged for access tokens with the OAuth2 refresh-token grant.
    let with_token = configs.path().join("token.json");
    std::fs::write(
        &with_token,
        serde_json::to_vec(
            &serde_json::json!({"auths": {registry.address.clone(): {"identitytoken": REFRESH_TOKEN}}}),
        )
        .expect("json"),
    )
    .expect("config");
    runtime
        .block_on(support::push(
            &client(&registry.certs_dir, Some(&with_token)),
            &source,
            &image,
            &[reference(&registry, "tokened/app:1")],
        ))
        .expect("push with the identity token");
}
