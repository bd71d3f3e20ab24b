//! What the registry tests share beyond kiln-testkit: clients set up for
//! a test registry, and test images written straight into a store.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use kiln_cache::layout::canonical_json;
use kiln_cache::{Digest, Store};
use kiln_registry::{Client, ClientOptions, Reference, RetryPolicy, TransportOptions};
use kiln_testkit::Registry;

/// Pushes `image` from `store` to `destinations` as a plain `kiln push`
/// does: no blob mounted from elsewhere, two transfers at once.
pub async fn push(
    client: &Client,
    store: &Store,
    image: &Digest,
    destinations: &[Reference],
) -> Result<kiln_registry::transfer::PushReport, kiln_registry::Error> {
    kiln_registry::transfer::push(
        client,
        store,
        image,
        destinations,
        &std::collections::HashMap::new(),
        2,
        &|_, _| {},
    )
    .await
}

/// A reference to `name` in `registry`.
pub fn reference(registry: &Registry, name: &str) -> Reference {
    Reference::parse(&registry.name(name)).expect("reference")
}

/// A kiln client for tests: certificates from `certs_dir`, credentials from
/// `docker_config` (if any), quick retries.
pub fn client(certs_dir: &Path, docker_config: Option<&Path>) -> Client {
    client_with(certs_dir, docker_config, |_| {})
}

pub fn client_with(
    certs_dir: &Path,
    docker_config: Option<&Path>,
    adjust: impl FnOnce(&mut ClientOptions),
) -> Client {
    let mut options = ClientOptions {
        transport: TransportOptions {
            certs_dir: certs_dir.to_path_buf(),
            stall_timeout: Duration::from_secs(5),
            ..TransportOptions::default()
        },
        retry: RetryPolicy {
            attempts: 6,
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
        docker_config: docker_config.map(Path::to_path_buf),
        chunk_size: 32 << 20,
        ..ClientOptions::default()
    };
    adjust(&mut options);
    Client::new(options).expect("client")
}

/// A docker config.json with a login for `registry`.
pub fn docker_config_with_login(dir: &Path, registry: &str, user: &str, password: &str) -> PathBuf {
    let path = dir.join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(
        &path,
        serde_json::to_vec(&serde_json::json!({"auths": {registry: {"auth": auth}}}))
            .expect("json"),
    )
    .expect("config.json");
    path
}

/// Bytes that do not compress, from a seed.
pub fn noise(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut data = Vec::with_capacity(size + 8);
    while data.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(size);
    data
}

/// Writes an image with one layer of `layer_size` incompressible bytes (a
/// gzip layer holding one file) into `store`; returns the manifest digest.
pub fn test_image(store: &Store, layer_size: usize, seed: u64) -> Digest {
    let work = tempfile::tempdir().expect("tmp");
    std::fs::write(work.path().join("data.bin"), noise(layer_size, seed)).expect("write");
    let layer = store
        .pack_layer(work.path(), &kiln_cache::pack::PackOptions::default())
        .expect("pack");
    let config = serde_json::json!({
        "architecture": host_architecture(),
        "os": "linux",
        "config": {"Env": [format!("SEED={seed}")]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.to_string()]},
    });
    let (config_digest, config_size) = store.write_blob(&canonical_json(&config)).expect("config");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.to_string(), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer.digest.to_string(), "size": layer.size}],
    });
    store
        .write_blob(&canonical_json(&manifest))
        .expect("manifest")
        .0
}

pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn host_platform() -> kiln_registry::Platform {
    kiln_registry::Platform {
        os: "linux".into(),
        architecture: host_architecture().into(),
        variant: String::new(),
    }
}

pub fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("store dir");
    let store = Store::open(&dir.path().join("store")).expect("store");
    (dir, store)
}

/// Writes `bytes` to a file in `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(bytes).expect("write");
    path
}
