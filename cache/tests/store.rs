//! The store: layout, blobs, names, snapshots, locks and `check`.

use std::fs;
use std::io::Write;

use kiln_cache::layout::canonical_json;
use kiln_cache::layout::REF_NAME;
use kiln_cache::pack::PackOptions;
use kiln_cache::{Digest, Error, Problem, Store};
use oci_spec::image::{Descriptor, MediaType};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(&dir.path().join("store")).expect("open");
    (dir, store)
}

fn descriptor(digest: &Digest, size: u64) -> Descriptor {
    let digest: oci_spec::image::Digest = digest.to_string().parse().expect("digest");
    Descriptor::new(MediaType::ImageManifest, size, digest)
}

/// A manifest with a config and one layer, all written to the store.
fn write_image(store: &Store, content: &str) -> Descriptor {
    let (config, config_size) = store
        .write_blob(format!("{{\"os\":\"linux\",\"c\":\"{content}\"}}").as_bytes())
        .expect("config");
    let (layer, layer_size) = store.write_blob(content.as_bytes()).expect("layer");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": layer_size}],
    });
    let bytes = canonical_json(&manifest);
    let (digest, size) = store.write_blob(&bytes).expect("manifest");
    descriptor(&digest, size)
}

#[test]
fn a_new_store_is_an_oci_layout() {
    let (dir, _store) = store();
    let root = dir.path().join("store");
    assert_eq!(
        fs::read_to_string(root.join("oci-layout")).expect("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("index.json")).expect("index")).expect("json");
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["manifests"], serde_json::json!([]));
    assert!(root.join("blobs/sha256").is_dir());
    assert!(Store::open(&root).is_ok(), "reopening an existing store");
    fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"9"}"#).expect("write");
    let err = Store::open(&root).expect_err("unknown layout version");
    assert!(
        err.to_string().contains("unsupported image layout version"),
        "{err}"
    );
}

#[test]
fn blobs_are_content_addressed_and_verified() {
    let (_dir, store) = store();
    let (digest, size) = store.write_blob(b"hello").expect("write");
    assert_eq!((digest, size), (Digest::of(b"hello"), 5));
    assert_eq!(store.read_blob(&digest).expect("read"), b"hello");
    assert!(store.has_blob(&digest));
    let wrong = Digest::of(b"something else");
    let err = store
        .import_blob(&b"hello"[..], &wrong)
        .expect_err("mismatch");
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(!store.has_blob(&wrong));
    assert!(matches!(
        store.read_blob(&wrong),
        Err(Error::MissingBlob(_))
    ));
    let leftovers = fs::read_dir(store.root().join("tmp")).expect("tmp").count();
    assert_eq!(leftovers, 0, "a refused blob leaves nothing behind");
}

#[test]
fn blobs_and_the_index_are_readable_by_other_users() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, store) = store();
    let manifest = write_image(&store, "readable");
    store
        .set_name(Some("example.com/readable:1"), &manifest)
        .expect("name");
    let digest: Digest = manifest.digest().to_string().parse().expect("digest");
    for path in [
        store.blob_path(&digest),
        store.root().join("index.json"),
        store.root().join("oci-layout"),
    ] {
        let mode = fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "{}", path.display());
    }
}

#[test]
fn naming_an_image_again_leaves_the_index_alone() {
    use std::os::unix::fs::MetadataExt;
    let (_dir, store) = store();
    let image = write_image(&store, "one");
    store
        .set_name(Some("docker.io/library/app:1"), &image)
        .expect("tag");
    let index = store.root().join("index.json");
    let written = fs::metadata(&index).expect("metadata").ino();
    store
        .set_name(Some("docker.io/library/app:1"), &image)
        .expect("tag again");
    assert_eq!(fs::metadata(&index).expect("metadata").ino(), written);
    store
        .set_name(Some("docker.io/library/app:2"), &image)
        .expect("another tag");
    assert_ne!(fs::metadata(&index).expect("metadata").ino(), written);
}

#[test]
fn names_point_at_manifests() {
    let (_dir, store) = store();
    let first = write_image(&store, "one");
    let second = write_image(&store, "two");
    store
        .set_name(Some("docker.io/library/app:1"), &first)
        .expect("tag");
    store
        .set_name(Some("docker.io/library/app:latest"), &first)
        .expect("tag");
    store
        .set_name(Some("docker.io/library/app:latest"), &second)
        .expect("retag");
    // Untagged entries only for images without a name.
    store.set_name(None, &first).expect("untagged, but named");
    let third = write_image(&store, "three");
    store.set_name(None, &third).expect("untagged");
    store.set_name(None, &third).expect("untagged again");
    assert_eq!(
        store
            .resolve("docker.io/library/app:latest")
            .expect("resolve"),
        Some(second_plain(&second, "docker.io/library/app:latest"))
    );
    let names: Vec<Option<String>> = store
        .images()
        .expect("images")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        [
            Some("docker.io/library/app:1".into()),
            Some("docker.io/library/app:latest".into()),
            None
        ]
    );
    assert!(store.remove_name("docker.io/library/app:1").expect("rmi"));
    assert!(!store
        .remove_name("docker.io/library/app:1")
        .expect("rmi again"));
    assert_eq!(
        store.resolve("docker.io/library/app:1").expect("resolve"),
        None
    );
    store
        .set_name(Some("docker.io/library/third:1"), &third)
        .expect("tag");
    let images = store.images().expect("images");
    assert!(
        images.iter().all(|e| e.name.is_some()),
        "a named image is not also listed untagged: {images:?}"
    );
    let removed = store
        .remove_images(|e| e.manifest.digest() == third.digest())
        .expect("remove");
    assert_eq!(removed.len(), 1);
    assert_eq!(
        store.resolve("docker.io/library/third:1").expect("resolve"),
        None
    );
}

fn second_plain(descriptor: &Descriptor, name: &str) -> Descriptor {
    let mut named = descriptor.clone();
    named.set_annotations(Some(
        [(REF_NAME.to_string(), name.to_string())]
            .into_iter()
            .collect(),
    ));
    named
}

#[test]
fn layers_pack_into_blobs_and_snapshots_appear_whole() {
    let (_dir, store) = store();
    let work = store.temp_dir().expect("temp dir");
    fs::write(work.path().join("file"), "content").expect("write");
    let layer = store
        .pack_layer(work.path(), &PackOptions::default())
        .expect("pack");
    assert!(store.has_blob(&layer.digest));
    let snapshot = store
        .create_snapshot(&layer.diff_id, |dir| {
            fs::write(dir.join("file"), "content").map_err(|e| Error::Io {
                path: dir.to_path_buf(),
                source: e,
            })
        })
        .expect("snapshot");
    assert_eq!(
        fs::read_to_string(snapshot.join("file")).expect("read"),
        "content"
    );
    let failed = store.create_snapshot(&Digest::of(b"other"), |dir| {
        fs::write(dir.join("half"), "written").expect("write");
        Err(Error::InvalidArchive("interrupted".into()))
    });
    assert!(failed.is_err());
    assert!(
        !store.has_snapshot(&Digest::of(b"other")),
        "a failed snapshot does not appear"
    );
}

#[test]
fn check_finds_corrupt_and_missing_blobs() {
    let (_dir, store) = store();
    let image = write_image(&store, "data");
    store
        .set_name(Some("example.com/app:1"), &image)
        .expect("tag");
    assert_eq!(store.check().expect("check"), []);
    let layer = Digest::of(b"data");
    fs::OpenOptions::new()
        .append(true)
        .open(store.blob_path(&layer))
        .expect("open")
        .write_all(b"!")
        .expect("corrupt");
    let manifest: serde_json::Value = serde_json::from_slice(
        &store
            .read_blob(&image.digest().to_string().parse().expect("digest"))
            .expect("manifest"),
    )
    .expect("json");
    let config_digest: Digest = manifest["config"]["digest"]
        .as_str()
        .expect("digest")
        .parse()
        .expect("digest");
    fs::remove_file(store.blob_path(&config_digest)).expect("remove config");
    fs::write(store.root().join("blobs/sha256/not-a-digest"), "x").expect("stray");
    let problems = store.check().expect("check");
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(matches!(problems[0], Problem::CorruptBlob { digest, .. } if digest == layer));
    assert!(matches!(&problems[1], Problem::StrayFile { .. }));
    assert!(
        matches!(&problems[2], Problem::MissingBlob { digest, needed_by } if *digest == config_digest && needed_by == "example.com/app:1")
    );
    assert_eq!(
        problems[2].to_string(),
        format!("blob {config_digest} is missing (needed by example.com/app:1)")
    );
}

#[test]
fn the_exclusive_lock_waits_for_shared_holders() {
    let (_dir, store) = store();
    let shared = store.lock_shared().expect("shared");
    let other = Store::open(store.root()).expect("second handle");
    let also_shared = other.lock_shared().expect("shared locks coexist");
    let (sender, receiver) = std::sync::mpsc::channel();
    let root = store.root().to_path_buf();
    let waiter = std::thread::spawn(move || {
        let store = Store::open(&root).expect("third handle");
        let _exclusive = store.lock_exclusive().expect("exclusive");
        sender.send(()).expect("send");
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(receiver.try_recv().is_err(), "the exclusive lock must wait");
    drop(shared);
    drop(also_shared);
    receiver
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("exclusive lock granted after release");
    waiter.join().expect("thread");
}

#[test]
fn leftovers_of_a_crashed_process_are_removed_on_open() {
    let (_dir, store) = store();
    fs::write(store.root().join("tmp/blob-crashed"), "partial").expect("write");
    fs::create_dir_all(store.root().join("tmp/work-crashed/snapshot")).expect("mkdir");
    let reopened = Store::open(store.root()).expect("reopen");
    assert_eq!(
        fs::read_dir(reopened.root().join("tmp"))
            .expect("tmp")
            .count(),
        0
    );
    let _busy = reopened.lock_shared().expect("shared");
    fs::write(store.root().join("tmp/blob-in-use"), "being written").expect("write");
    let _ = Store::open(store.root()).expect("open while in use");
    assert!(
        store.root().join("tmp/blob-in-use").exists(),
        "files of a running process are kept"
    );
}

#[test]
fn only_the_owner_reaches_snapshots() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, _store) = store();
    let root = dir.path().join("store");
    let mode = |name: &str| {
        fs::metadata(root.join(name))
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("snapshots"), 0o700);
    assert_eq!(mode("tmp"), 0o700);
    assert_eq!(mode("blobs/sha256"), 0o755);
    // A store made before this rule is brought in line when opened.
    fs::set_permissions(root.join("snapshots"), fs::Permissions::from_mode(0o755)).expect("chmod");
    Store::open(&root).expect("reopen");
    assert_eq!(mode("snapshots"), 0o700);
}

#[test]
fn root_refuses_a_store_another_user_controls() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test checks what root refuses and must run as root (sudo scripts/test)"
    );
    let (dir, _store) = store();
    let root = dir.path().join("store");
    // A directory replaced by a symlink: following it would let whoever
    // made it choose what kiln deletes.
    let victim = dir.path().join("victim");
    fs::create_dir(&victim).expect("mkdir");
    fs::write(victim.join("precious"), "keep me").expect("write");
    fs::remove_dir_all(root.join("tmp")).expect("rm tmp");
    std::os::unix::fs::symlink(&victim, root.join("tmp")).expect("symlink");
    let err = Store::open(&root).expect_err("symlinked tmp");
    assert!(err.to_string().contains("is not a directory"), "{err}");
    assert!(victim.join("precious").exists(), "nothing was followed");
    fs::remove_file(root.join("tmp")).expect("rm link");

    std::os::unix::fs::chown(&root, Some(65534), Some(65534)).expect("chown");
    let err = Store::open(&root).expect_err("owned by nobody");
    assert!(
        err.to_string()
            .contains("belongs to user 65534, and root does not use a store another user controls"),
        "{err}"
    );
}

#[test]
fn a_layer_past_the_stores_bounds_is_refused_naming_the_layer() {
    let (_dir, store) = store();
    let work = store.temp_dir().expect("temp dir");
    fs::write(work.path().join("big"), vec![7u8; 2_000_000]).expect("write");
    for name in ["a", "b", "c"] {
        fs::write(work.path().join(name), name).expect("write");
    }
    let layer = store
        .pack_layer(work.path(), &PackOptions::default())
        .expect("pack");
    let digests = kiln_cache::LayerDigests {
        diff_id: layer.diff_id,
        blob: layer.digest,
    };
    let bounded = |max_layer_size, max_layer_entries| {
        store.clone().with_limits(kiln_cache::Limits {
            max_layer_size,
            max_layer_entries,
            keep_free: None,
        })
    };

    let err = bounded(1_000_000, 100)
        .snapshot_of(&digests)
        .expect_err("past the size bound");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("unpacking layer {}: ", layer.digest))
            && message.contains("\"big\" takes it past 1.0MB")
            && message.contains("--max-layer-size"),
        "{message}"
    );
    let err = bounded(10_000_000, 3)
        .snapshot_of(&digests)
        .expect_err("past the entries bound");
    assert!(err.to_string().contains("takes it past 3 entries"), "{err}");
    assert!(!store.has_snapshot(&layer.diff_id), "no half snapshot");
    assert!(store.check().expect("check").is_empty());

    // Raised, the same layer unpacks.
    let snapshot = bounded(10_000_000, 5)
        .snapshot_of(&digests)
        .expect("within bounds");
    assert_eq!(
        fs::metadata(snapshot.join("big")).expect("big").len(),
        2_000_000
    );
}
