//! Pull and push against a real registry (`docker-registry`, anonymous,
//! over HTTP on a loopback port).

mod support;

use std::collections::HashMap;

use kiln_registry::{transfer, Pushed};
use kiln_testkit::{runtime, Faults, Proxy, Registry, Setup};
use support::{client, client_with, host_platform, reference, store, test_image};

#[test]
fn an_image_pushed_pulls_back_whole_and_only_missing_blobs_move() {
    let registry = Registry::start(Setup::Anonymous);
    let (_a, source) = store();
    let image = test_image(&source, 300_000, 1);
    let client = client(&registry.certs_dir, None);
    let destination = reference(&registry, "team/app:1");
    let runtime = runtime();
    let report = runtime
        .block_on(transfer::push(
            &client,
            &source,
            &image,
            &[destination.clone(), reference(&registry, "team/app:latest")],
            &HashMap::new(),
            4,
            &|_, _| {},
        ))
        .expect("push");
    assert_eq!(report.blobs.len(), 2);
    assert!(report.blobs.iter().all(|(_, _, p)| *p == Pushed::Uploaded));

    let (_b, target) = store();
    // The second tag names the same image: its blobs are in the store.
    for (tag, fetched) in [("team/app:1", 2), ("team/app:latest", 0)] {
        let pulled = runtime
            .block_on(transfer::pull(
                &client,
                &target,
                &reference(&registry, tag),
                &host_platform(),
                3,
                &|_, _| {},
            ))
            .expect("pull");
        assert_eq!(pulled.manifest.digest, image, "{tag}");
        assert_eq!(pulled.fetched, fetched, "{tag}");
    }
    let manifest = target.read_blob(&image).expect("manifest in the store");
    assert_eq!(manifest, source.read_blob(&image).expect("source manifest"));
    assert!(target.check().expect("check").is_empty());

    // Everything is there now: nothing moves the second time, nor on a push
    // of what the registry has.
    let again = runtime
        .block_on(transfer::pull(
            &client,
            &target,
            &destination,
            &host_platform(),
            3,
            &|_, _| {},
        ))
        .expect("pull again");
    assert_eq!(again.fetched, 0);
    let report = runtime
        .block_on(transfer::push(
            &client,
            &source,
            &image,
            &[destination],
            &HashMap::new(),
            4,
            &|_, _| {},
        ))
        .expect("push again");
    assert_eq!(report.blobs.len(), 2);
    assert!(report.blobs.iter().all(|(_, _, p)| *p == Pushed::Existed));
}

#[test]
fn a_configuration_read_alone_leaves_the_layers_for_later() {
    let registry = Registry::start(Setup::Anonymous);
    let (_a, source) = store();
    let image = test_image(&source, 300_000, 2);
    let client = client(&registry.certs_dir, None);
    let destination = reference(&registry, "team/lazy:1");
    let runtime = runtime();
    runtime
        .block_on(transfer::push(
            &client,
            &source,
            &image,
            std::slice::from_ref(&destination),
            &HashMap::new(),
            4,
            &|_, _| {},
        ))
        .expect("push");

    let (_b, target) = store();
    let (manifest, config_bytes) = runtime
        .block_on(transfer::read_config(
            &client,
            &target,
            &destination,
            &host_platform(),
        ))
        .expect("read the configuration");
    assert_eq!(manifest.digest, image);
    let (config, layers) = transfer::manifest_blobs(&manifest).expect("blobs");
    assert_eq!(kiln_cache::Digest::of(&config_bytes), config.digest);
    assert!(
        !target.has_blob(&image) && !target.has_blob(&config.digest),
        "nothing written to the store"
    );
    assert_eq!(layers.len(), 1);
    assert!(layers.iter().all(|layer| !target.has_blob(&layer.digest)));

    // The layer is unpacked as it arrives, into the snapshot its diff ID
    // names.
    let config_json: serde_json::Value = serde_json::from_slice(&config_bytes).expect("json");
    let diff_id: kiln_cache::Digest = config_json["rootfs"]["diff_ids"][0]
        .as_str()
        .expect("diff id")
        .parse()
        .expect("digest");
    let sources: Vec<_> = layers
        .into_iter()
        .map(|blob| transfer::BlobFetch {
            from: destination.clone(),
            blob,
            unpack_as: Some(diff_id),
        })
        .collect();
    let moved = std::sync::atomic::AtomicU64::new(0);
    runtime
        .block_on(transfer::fetch_blobs(
            &client,
            &target,
            &sources,
            2,
            &|_, bytes| {
                moved.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            },
        ))
        .expect("fetch the layers");
    assert!(sources.iter().all(|s| target.has_blob(&s.blob.digest)));
    assert!(target.has_snapshot(&diff_id), "unpacked as it came");
    assert_eq!(
        moved.into_inner(),
        sources.iter().map(|s| s.blob.size).sum::<u64>()
    );
    assert!(target.check().expect("check").is_empty());
}
#[test]
fn large_blobs_go_up_in_chunks_and_blobs_mount_across_repositories() {
    let registry = Registry::start(Setup::Anonymous);
    let (_a, source) = store();
    let image = test_image(&source, 1_500_000, 2);
    let chunk_size = 256 * 1024;
    let chunked = client_with(&registry.certs_dir, None, |options| {
        options.chunk_size = chunk_size;
    });
    let runtime = runtime();
    // Through a proxy that injects nothing, which shows the requests.
    let watching = Proxy::start(&registry.address, Faults::default());
    let through = |name: &str| {
        kiln_registry::Reference::parse(&format!("{}/{name}", watching.address)).expect("reference")
    };
    let first = through("one/app:1");
    runtime
        .block_on(support::push(
            &chunked,
            &source,
            &image,
            std::slice::from_ref(&first),
        ))
        .expect("chunked push");
    let (config, layers) = transfer::manifest_blobs(&kiln_registry::Manifest {
        bytes: source.read_blob(&image).expect("manifest").into(),
        media_type: kiln_registry::client::OCI_MANIFEST.into(),
        digest: image,
    })
    .expect("blobs");
    let chunks = watching
        .seen()
        .iter()
        .filter(|s| s.method == "PATCH" && s.status == 202)
        .count();
    assert_eq!(
        chunks as u64,
        layers[0].size.div_ceil(chunk_size) - 1,
        "all of the layer but its last piece went up in PATCH chunks"
    );
    let mounts: HashMap<_, _> = std::iter::once(config.digest)
        .chain(layers.iter().map(|l| l.digest))
        .map(|digest| (digest, first.clone()))
        .collect();
    let report = runtime
        .block_on(transfer::push(
            &chunked,
            &source,
            &image,
            &[through("two/app:1")],
            &mounts,
            2,
            &|_, _| {},
        ))
        .expect("push with mounts");
    assert_eq!(report.blobs.len(), 2);
    assert!(
        report.blobs.iter().all(|(_, _, p)| *p == Pushed::Mounted),
        "{:?}",
        report.blobs
    );
    let (_b, target) = store();
    let pulled = runtime
        .block_on(transfer::pull(
            &chunked,
            &target,
            &reference(&registry, "two/app:1"),
            &host_platform(),
            2,
            &|_, _| {},
        ))
        .expect("pull");
    assert_eq!(pulled.manifest.digest, image);
    assert!(target.check().expect("check").is_empty());
}

#[test]
fn a_missing_image_is_named() {
    let registry = Registry::start(Setup::Anonymous);
    let client = client(&registry.certs_dir, None);
    let (_a, target) = store();
    let runtime = runtime();
    let err = runtime
        .block_on(transfer::pull(
            &client,
            &target,
            &reference(&registry, "nothing/here:1"),
            &host_platform(),
            2,
            &|_, _| {},
        ))
        .expect_err("no such image");
    assert!(err.to_string().contains("is not in the registry"), "{err}");
}

#[test]
fn an_index_gives_the_image_for_the_platform_asked() {
    let registry = Registry::start(Setup::Anonymous);
    let (_a, source) = store();
    let host_image = test_image(&source, 10_000, 3);
    let other_image = test_image(&source, 10_000, 4);
    let client = client(&registry.certs_dir, None);
    let runtime = runtime();
    for (image, tag) in [(host_image, "host"), (other_image, "other")] {
        runtime
            .block_on(support::push(
                &client,
                &source,
                &image,
                &[reference(&registry, &format!("multi/app:{tag}"))],
            ))
            .expect("push");
    }
    let size = |digest| source.read_blob(digest).expect("manifest").len();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": other_image.to_string(), "size": size(&other_image),
             "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": other_image.to_string(), "size": size(&other_image),
             "platform": {"os": "unknown", "architecture": "unknown"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": host_image.to_string(), "size": size(&host_image),
             "platform": {"os": "linux", "architecture": support::host_architecture()}},
        ],
    });
    let bytes = kiln_cache::layout::canonical_json(&index);
    let manifest = kiln_registry::Manifest {
        digest: kiln_cache::Digest::of(&bytes),
        bytes: bytes.into(),
        media_type: kiln_registry::client::OCI_INDEX.into(),
    };
    let reference = reference(&registry, "multi/app:all");
    runtime
        .block_on(client.put_manifest(&reference, "all", &manifest))
        .expect("push index");
    let resolved = runtime
        .block_on(transfer::resolve(&client, &reference, &host_platform()))
        .expect("resolve");
    assert_eq!(resolved.digest, host_image);
    let arm = kiln_registry::Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: String::new(),
    };
    let err = runtime
        .block_on(transfer::resolve(&client, &reference, &arm))
        .expect_err("no arm64 image");
    assert!(
        err.to_string().contains(&format!(
            "has no image for linux/arm64 (it has: linux/s390x, linux/{})",
            support::host_architecture()
        )),
        "{err}"
    );
}

#[test]
fn a_tag_the_store_has_costs_a_head_not_a_get() {
    let registry = Registry::start(Setup::Anonymous);
    let (_a, source) = store();
    let image = test_image(&source, 10_000, 5);
    let client = client(&registry.certs_dir, None);
    let runtime = runtime();
    runtime
        .block_on(support::push(
            &client,
            &source,
            &image,
            &[reference(&registry, "cheap/app:1")],
        ))
        .expect("push");
    let watching = kiln_testkit::Proxy::start(&registry.address, kiln_testkit::Faults::default());
    let through = kiln_registry::Reference::parse(&format!("{}/cheap/app:1", watching.address))
        .expect("reference");
    let (_b, target) = store();
    for _ in 0..2 {
        runtime
            .block_on(transfer::pull(
                &client,
                &target,
                &through,
                &host_platform(),
                2,
                &|_, _| {},
            ))
            .expect("pull");
    }
    let seen = watching.seen();
    let manifest_requests = |method: &str| {
        seen.iter()
            .filter(|s| s.method == method && s.path.contains("/manifests/"))
            .count()
    };
    assert_eq!(manifest_requests("GET"), 1, "{seen:?}");
    assert_eq!(
        manifest_requests("HEAD"),
        2,
        "each pull asked which digest the tag names: {seen:?}"
    );
}

#[test]
fn a_blob_the_store_lacks_is_mounted_or_else_fetched_from_where_it_is() {
    let source_registry = Registry::start(Setup::Anonymous);
    let other_registry = Registry::start(Setup::Anonymous);
    let (_a, source) = store();
    let image = test_image(&source, 300_000, 3);
    let runtime = runtime();
    let to_source = client(&source_registry.certs_dir, None);
    let base = reference(&source_registry, "base/image:1");
    runtime
        .block_on(support::push(
            &to_source,
            &source,
            &image,
            std::slice::from_ref(&base),
        ))
        .expect("push the base");

    // A store with the image's manifest and configuration only.
    let (_b, lazy) = store();
    let (manifest, config_bytes) = runtime
        .block_on(transfer::read_config(
            &to_source,
            &lazy,
            &base,
            &host_platform(),
        ))
        .expect("read the configuration");
    lazy.write_blob(&config_bytes).expect("config");
    lazy.write_blob(&manifest.bytes).expect("manifest");
    let (_, layers) = transfer::manifest_blobs(&manifest).expect("blobs");
    let layer = layers[0].digest;
    assert!(!lazy.has_blob(&layer));
    let sources: HashMap<_, _> = [(layer, base.clone())].into_iter().collect();

    // Same registry: mounted, nothing downloaded.
    let same = reference(&source_registry, "team/app:1");
    let report = runtime
        .block_on(transfer::push(
            &to_source,
            &lazy,
            &image,
            std::slice::from_ref(&same),
            &sources,
            2,
            &|_, _| {},
        ))
        .expect("push within the registry");
    assert!(report
        .blobs
        .iter()
        .any(|(digest, _, pushed)| *digest == layer && *pushed == Pushed::Mounted));
    assert!(!lazy.has_blob(&layer), "mounted, not downloaded");

    // Another registry: fetched from the base's repository, then uploaded.
    let elsewhere = reference(&other_registry, "team/app:1");
    let report = runtime
        .block_on(transfer::push(
            &client(&other_registry.certs_dir, None),
            &lazy,
            &image,
            std::slice::from_ref(&elsewhere),
            &sources,
            2,
            &|_, _| {},
        ))
        .expect("push to another registry");
    assert!(report
        .blobs
        .iter()
        .any(|(digest, _, pushed)| *digest == layer && *pushed == Pushed::Uploaded));
    assert!(lazy.has_blob(&layer));
}
