//! Exports read by other tools (skopeo, umoci), archives loaded back with
//! the same digest, reproducible builds, and a store that survives a kill.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{require_root, require_tool, run_tool, Context, Kiln};

/// A `security.capability` value (revision 2) granting CAP_NET_BIND_SERVICE.
const NET_BIND_SERVICE: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// A context whose files cover what a layer must carry.
fn rich_context() -> Context {
    let context = Context::new();
    let files = context.path().join("files");
    fs::create_dir_all(files.join("dir/nested")).expect("mkdir");
    fs::write(files.join("dir/nested/data"), "data").expect("write");
    fs::write(files.join("secret"), "0640").expect("write");
    fs::set_permissions(files.join("secret"), fs::Permissions::from_mode(0o640)).expect("chmod");
    fs::write(files.join("setuid"), "suid").expect("write");
    fs::set_permissions(files.join("setuid"), fs::Permissions::from_mode(0o4755)).expect("chmod");
    fs::write(files.join("original"), "linked").expect("write");
    fs::hard_link(files.join("original"), files.join("hardlink")).expect("hard link");
    symlink("dir/nested/data", files.join("symlink")).expect("symlink");
    rustix::fs::setxattr(
        files.join("original").as_path(),
        "security.capability",
        &NET_BIND_SERVICE,
        rustix::fs::XattrFlags::empty(),
    )
    .expect("set capability");
    // The host's own attributes are not image content.
    rustix::fs::setxattr(
        files.join("original").as_path(),
        "user.xdg.origin.url",
        b"https://example.com/download",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("set xattr");
    context.write("Dockerfile", "FROM scratch\nCOPY files/ /\nCOPY --chown=1000:2000 files/secret /owned\nCMD [\"/setuid\"]\n");
    context
}

fn describe(root: &Path, path: &str) -> String {
    let full = root.join(path);
    let metadata = fs::symlink_metadata(&full).unwrap_or_else(|e| panic!("{path}: {e}"));
    let kind = if metadata.file_type().is_symlink() {
        format!("-> {}", fs::read_link(&full).expect("readlink").display())
    } else if metadata.is_dir() {
        "dir".to_string()
    } else {
        format!("{:?}", fs::read_to_string(&full).expect("read"))
    };
    format!(
        "{path} {kind} {}:{} {:o}",
        metadata.uid(),
        metadata.gid(),
        metadata.mode() & 0o7777
    )
}

#[test]
fn skopeo_reads_both_archive_formats() {
    require_root();
    require_tool("skopeo", "skopeo");
    let kiln = Kiln::new();
    let context = rich_context();
    let out = tempfile::tempdir().expect("tmp");
    let oci = out.path().join("image-oci.tar");
    let docker = out.path().join("image-docker.tar");
    let digest = kiln.build(
        context.path(),
        &[
            "-t",
            "rich:1",
            "-o",
            &format!("type=oci,dest={}", oci.display()),
        ],
    );
    let docker_digest = kiln.build(
        context.path(),
        &[
            "-t",
            "rich:1",
            "-o",
            &format!("type=docker,dest={}", docker.display()),
        ],
    );
    let inspected: serde_json::Value = serde_json::from_str(&run_tool(
        "skopeo",
        &["inspect", &format!("oci-archive:{}", oci.display())],
    ))
    .expect("json");
    assert_eq!(inspected["Digest"], digest);
    assert_eq!(inspected["Layers"].as_array().map(Vec::len), Some(2));
    assert_eq!(inspected["Os"], "linux");
    let inspected: serde_json::Value = serde_json::from_str(&run_tool(
        "skopeo",
        &["inspect", &format!("docker-archive:{}", docker.display())],
    ))
    .expect("json");
    assert_eq!(inspected["Layers"].as_array().map(Vec::len), Some(2));
    // What `docker load` reads for the name.
    let unpacked = out.path().join("docker-unpacked");
    untar(&docker, &unpacked);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(unpacked.join("manifest.json")).expect("manifest.json"))
            .expect("json");
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["rich:1"]));
    // The OCI export names the image as BuildKit's does.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(unpacked.join("index.json")).expect("index.json"))
            .expect("json");
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "1"
    );
    // Both exports load back as the image that was built.
    for (archive, built) in [(&oci, &digest), (&docker, &docker_digest)] {
        let other = Kiln::new();
        let loaded = other.ok(&["load", "-i", archive.to_str().expect("utf-8")]);
        assert_eq!(
            loaded.trim(),
            "Loaded image: rich:1",
            "{}",
            archive.display()
        );
        let image = other.inspect("rich:1");
        assert_eq!(&image["Digest"], built, "{}", archive.display());
        if archive == &docker {
            assert_eq!(
                image["Manifest"]["mediaType"],
                "application/vnd.docker.distribution.manifest.v2+json",
                "the docker exporter writes Docker media types, as BuildKit's does"
            );
        }
    }
    let copied = out.path().join("copied");
    run_tool(
        "skopeo",
        &[
            "copy",
            &format!("oci-archive:{}", oci.display()),
            &format!("oci:{}:copy", copied.display()),
        ],
    );
    assert!(copied.join("index.json").is_file());
}

#[test]
fn umoci_unpacks_exactly_the_expected_tree() {
    require_root();
    require_tool("umoci", "umoci");
    let kiln = Kiln::new();
    let context = rich_context();
    let out = tempfile::tempdir().expect("tmp");
    let archive = out.path().join("image.tar");
    kiln.build(
        context.path(),
        &[
            "-t",
            "rich:tree",
            "-o",
            &format!("type=oci,dest={}", archive.display()),
        ],
    );
    let layout = out.path().join("layout");
    fs::create_dir(&layout).expect("mkdir");
    run_tool(
        "tar",
        &[
            "-xf",
            archive.to_str().expect("utf-8"),
            "-C",
            layout.to_str().expect("utf-8"),
        ],
    );
    let bundle = out.path().join("bundle");
    run_tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:tree", layout.display()),
            bundle.to_str().expect("utf-8"),
        ],
    );
    let rootfs = bundle.join("rootfs");
    let mut entries: Vec<String> = Vec::new();
    for path in [
        "dir",
        "dir/nested",
        "dir/nested/data",
        "hardlink",
        "original",
        "owned",
        "secret",
        "setuid",
        "symlink",
    ] {
        entries.push(describe(&rootfs, path));
    }
    assert_eq!(
        entries,
        [
            "dir dir 0:0 755",
            "dir/nested dir 0:0 755",
            "dir/nested/data \"data\" 0:0 644",
            "hardlink \"linked\" 0:0 644",
            "original \"linked\" 0:0 644",
            "owned \"0640\" 1000:2000 640",
            "secret \"0640\" 0:0 640",
            "setuid \"suid\" 0:0 4755",
            "symlink -> dir/nested/data 0:0 777",
        ]
    );
    let names: Vec<String> = fs::read_dir(&rootfs)
        .expect("rootfs")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 7, "nothing else in the tree: {names:?}");
    let original = fs::metadata(rootfs.join("original")).expect("stat");
    assert_eq!(
        fs::metadata(rootfs.join("hardlink")).expect("stat").ino(),
        original.ino(),
        "hard links stay linked"
    );
    let mut value = [0u8; 64];
    let size = rustix::fs::getxattr(
        rootfs.join("original").as_path(),
        "security.capability",
        &mut value[..],
    )
    .expect("capability kept");
    assert_eq!(&value[..size], NET_BIND_SERVICE);
    assert!(
        rustix::fs::getxattr(
            rootfs.join("original").as_path(),
            "user.xdg.origin.url",
            &mut value[..],
        )
        .is_err(),
        "the host's attributes stay out of the image"
    );
}

#[test]
fn saved_images_load_back_with_the_same_digest() {
    require_root();
    require_tool("skopeo", "skopeo");
    let kiln = Kiln::new();
    let context = rich_context();
    let digest = kiln.build(context.path(), &["-t", "rich:2"]);
    let out = tempfile::tempdir().expect("tmp");
    for format in ["oci", "docker"] {
        let archive = out.path().join(format!("{format}.tar"));
        kiln.ok(&[
            "save",
            "rich:2",
            "-o",
            archive.to_str().expect("utf-8"),
            "--format",
            format,
        ]);
        let transport = if format == "oci" {
            "oci-archive"
        } else {
            "docker-archive"
        };
        let inspected: serde_json::Value = serde_json::from_str(&run_tool(
            "skopeo",
            &["inspect", &format!("{transport}:{}", archive.display())],
        ))
        .expect("json");
        assert_eq!(
            inspected["Layers"].as_array().map(Vec::len),
            Some(2),
            "{format}"
        );
        let other = Kiln::new();
        let loaded = other.ok(&["load", "-i", archive.to_str().expect("utf-8")]);
        assert_eq!(loaded.trim(), "Loaded image: rich:2", "{format}");
        assert_eq!(other.inspect("rich:2")["Digest"], digest, "{format}");
        assert!(other.ok(&["check"]).contains("consistent"));
    }
}

#[test]
fn docker_save_archives_load() {
    require_root();
    // The layout `docker save` writes: layers uncompressed under their own
    // directories, named only by manifest.json.
    let kiln = Kiln::new();
    let work = tempfile::tempdir().expect("tmp");
    let dir = work.path().join("archive");
    fs::create_dir_all(dir.join("layer1")).expect("mkdir");
    let layer_dir = work.path().join("layer-content");
    fs::create_dir_all(layer_dir.join("etc")).expect("mkdir");
    fs::write(layer_dir.join("etc/motd"), "welcome\n").expect("write");
    run_tool(
        "tar",
        &[
            "-cf",
            dir.join("layer1/layer.tar").to_str().expect("utf-8"),
            "-C",
            layer_dir.to_str().expect("utf-8"),
            "etc",
        ],
    );
    let layer = fs::read(dir.join("layer1/layer.tar")).expect("layer");
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["cat", "/etc/motd"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "ADD etc /etc"}],
        "docker_version": "27.3.1",
        "container_config": {"Hostname": "builder", "Cmd": ["/bin/sh"]},
    });
    let config_bytes = serde_json::to_vec(&config).expect("json");
    let config_name = format!("{}.json", sha256_hex(&config_bytes));
    fs::write(dir.join(&config_name), &config_bytes).expect("config");
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&serde_json::json!([{"Config": config_name, "RepoTags": ["motd:v1"], "Layers": ["layer1/layer.tar"]}])).expect("json"),
    )
    .expect("manifest");
    let archive = work.path().join("docker-save.tar");
    run_tool(
        "tar",
        &[
            "-cf",
            archive.to_str().expect("utf-8"),
            "-C",
            dir.to_str().expect("utf-8"),
            ".",
        ],
    );
    assert_eq!(
        kiln.ok(&["load", "-i", archive.to_str().expect("utf-8")])
            .trim(),
        "Loaded image: motd:v1"
    );
    let loaded = kiln.inspect("motd:v1");
    assert_eq!(
        loaded["Manifest"]["config"]["digest"],
        format!("sha256:{}", sha256_hex(&config_bytes)),
        "the configuration, and so the image ID, stays as it was"
    );
    assert_eq!(loaded["Config"]["docker_version"], "27.3.1");
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM motd:v1\nCOPY --from=motd:v1 /etc/motd /copy\n",
    );
    let out = kiln.files(context.path(), &[]);
    assert_eq!(
        fs::read_to_string(out.path().join("etc/motd")).expect("motd"),
        "welcome\n"
    );
    assert_eq!(
        fs::read_to_string(out.path().join("copy")).expect("copy"),
        "welcome\n"
    );
}

/// The platform name Go (and so every image index) gives this machine.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Unpacks a tar archive into a directory with the system's tar.
fn untar(archive: &Path, dir: &Path) {
    fs::create_dir_all(dir).expect("mkdir");
    run_tool(
        "tar",
        &[
            "-xf",
            archive.to_str().expect("utf-8"),
            "-C",
            dir.to_str().expect("utf-8"),
        ],
    );
}

fn tar_directory(dir: &Path, archive: &Path) {
    run_tool(
        "tar",
        &[
            "-cf",
            archive.to_str().expect("utf-8"),
            "-C",
            dir.to_str().expect("utf-8"),
            ".",
        ],
    );
}

/// Writes `value` as a blob of the OCI layout `dir`; returns its descriptor
/// fields (digest, size).
fn write_layout_blob(dir: &Path, value: &serde_json::Value) -> (String, usize) {
    let bytes = serde_json::to_vec(value).expect("json");
    let hex = sha256_hex(&bytes);
    fs::write(dir.join("blobs/sha256").join(&hex), &bytes).expect("blob");
    (format!("sha256:{hex}"), bytes.len())
}

#[test]
fn multi_platform_archives_load_the_host_image() {
    require_root();
    // What buildx writes with attestations, and `docker save` with the
    // containerd store: index.json names an index of platform images (and
    // attestations), of which only some are in the archive.
    let kiln = Kiln::new();
    let context = rich_context();
    let digest = kiln.build(context.path(), &["-t", "single:1"]);
    let work = tempfile::tempdir().expect("tmp");
    let saved = work.path().join("single.tar");
    kiln.ok(&[
        "save",
        "single:1",
        "-o",
        saved.to_str().expect("utf-8"),
        "--format",
        "oci",
    ]);
    let layout = work.path().join("layout");
    untar(&saved, &layout);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index")).expect("json");
    let image = index["manifests"][0].clone();
    let inner = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": format!("sha256:{}", "1".repeat(64)), "size": 500,
             "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": image["mediaType"], "digest": image["digest"], "size": image["size"],
             "platform": {"os": "linux", "architecture": host_architecture()}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": format!("sha256:{}", "2".repeat(64)), "size": 600,
             "platform": {"os": "unknown", "architecture": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
        ],
    });
    let (inner_digest, inner_size) = write_layout_blob(&layout, &inner);
    let outer = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": inner_digest, "size": inner_size,
            "annotations": {"io.containerd.image.name": "example.com/multi:2"},
        }],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&outer).expect("json"),
    )
    .expect("index");
    fs::remove_file(layout.join("manifest.json")).ok();
    let multi = work.path().join("multi.tar");
    tar_directory(&layout, &multi);
    let other = Kiln::new();
    assert_eq!(
        other
            .ok(&["load", "-i", multi.to_str().expect("utf-8")])
            .trim(),
        "Loaded image: example.com/multi:2"
    );
    assert_eq!(other.inspect("example.com/multi:2")["Digest"], digest);

    // An index without this machine's platform says what it has.
    let foreign = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [inner["manifests"][0].clone()],
    });
    let (foreign_digest, foreign_size) = write_layout_blob(&layout, &foreign);
    let outer = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                       "digest": foreign_digest, "size": foreign_size}],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&outer).expect("json"),
    )
    .expect("index");
    let foreign_tar = work.path().join("foreign.tar");
    tar_directory(&layout, &foreign_tar);
    let stderr = other.fails(&["load", "-i", foreign_tar.to_str().expect("utf-8")]);
    assert!(
        stderr.contains(&format!(
            "has no image for linux/{} (it has: linux/s390x)",
            host_architecture()
        )),
        "{stderr}"
    );
}

#[test]
fn zstd_layers_make_oci_images_even_with_the_docker_format() {
    require_root();
    require_tool("skopeo", "skopeo");
    let kiln = Kiln::new();
    let context = rich_context();
    let work = tempfile::tempdir().expect("tmp");
    let archive = work.path().join("zstd.tar");
    let output = format!("type=oci,dest={}", archive.display());
    kiln.build(
        context.path(),
        &["--format", "docker", "--compression", "zstd", "-o", &output],
    );
    let raw = run_tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci-archive:{}", archive.display()),
        ],
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw).expect("manifest");
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    for layer in manifest["layers"].as_array().expect("layers") {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    kiln_cache::Digest::of(bytes).hex()
}

#[test]
fn source_date_epoch_makes_builds_reproducible_across_stores_and_checkouts() {
    require_root();
    let first = rich_context();
    let second = tempfile::tempdir().expect("tmp");
    let second_path = second.path().join("another/checkout");
    fs::create_dir_all(&second_path).expect("mkdir");
    run_tool(
        "cp",
        &[
            "-a",
            &format!("{}/.", first.path().display()),
            second_path.to_str().expect("utf-8"),
        ],
    );
    // A fresh checkout: every file gets a new modification time.
    run_tool(
        "sh",
        &[
            "-c",
            &format!("find {} -exec touch -h {{}} +", second_path.display()),
        ],
    );
    let build = |context: &Path| {
        let kiln = Kiln::new();
        let output = kiln
            .command()
            .args(["build", "-t", "repro", context.to_str().expect("utf-8")])
            .env("SOURCE_DATE_EPOCH", "1600000000")
            .output()
            .expect("kiln runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let a = build(first.path());
    let b = build(&second_path);
    assert_eq!(a, b);
    let c = Kiln::new().build(
        first.path(),
        &["-t", "repro", "--source-date-epoch", "1600000001"],
    );
    assert_ne!(a, c, "a different epoch is a different image");
}

#[test]
fn a_killed_build_leaves_a_store_that_checks_clean_and_builds_again() {
    require_root();
    let kiln = Kiln::new();
    let context = Context::new();
    // Incompressible content, so that packing takes a while.
    let mut data = vec![0u8; 160 * 1024 * 1024];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    fs::write(context.path().join("big.bin"), &data).expect("write");
    drop(data);
    // What the store holds before: a base image (with its snapshots) and
    // an earlier `big`, which the killed build was about to replace.
    kiln.busybox();
    context.write("small", "small\n");
    context.write("Dockerfile", "FROM busybox\nCOPY small /small\n");
    let before = kiln.build(context.path(), &["-t", "big"]);
    context.write("Dockerfile", "FROM busybox\nCOPY big.bin /big.bin\n");
    let mut child = kiln
        .command()
        .args([
            "build",
            "-t",
            "big",
            "--compression",
            "gzip:9",
            context.path().to_str().expect("utf-8"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kiln runs");
    let tmp = kiln.root.path().join("tmp");
    let started = Instant::now();
    let writing_blob = || {
        fs::read_dir(&tmp)
            .map(|entries| {
                entries.flatten().any(|e| {
                    e.file_name().to_string_lossy().starts_with("blob-")
                        && e.metadata().map(|m| m.len() > 1_000_000).unwrap_or(false)
                })
            })
            .unwrap_or(false)
    };
    while !writing_blob() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "kiln never started writing the layer"
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the build finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let check = kiln.ok(&["check"]);
    assert!(check.contains("is consistent"), "{check}");
    assert_eq!(
        kiln.inspect("big")["Digest"],
        before,
        "nothing that was there is lost"
    );
    let digest = kiln.build(context.path(), &["-t", "big"]);
    assert_ne!(digest, before);
    assert_eq!(kiln.inspect("big")["Digest"], digest);
    let files = kiln.files(context.path(), &[]);
    assert!(files.path().join("bin/busybox").is_file());
    assert_eq!(
        fs::metadata(files.path().join("big.bin"))
            .expect("big.bin")
            .len(),
        160 * 1024 * 1024
    );
    assert!(kiln.ok(&["check"]).contains("is consistent"));
    let leftovers: Vec<_> = fs::read_dir(&tmp).expect("tmp").collect();
    assert!(
        leftovers.is_empty(),
        "the next kiln removes what the killed one left: {leftovers:?}"
    );
}

#[test]
fn check_reports_a_corrupt_blob() {
    require_root();
    let kiln = Kiln::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/examples/hello");
    kiln.build(&example, &["-t", "hello"]);
    let layer = kiln.inspect("hello")["Manifest"]["layers"][1]["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let path = kiln
        .root
        .path()
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = fs::read(&path).expect("blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, bytes).expect("corrupt");
    let output = kiln.run(&["check"]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("blob {layer} is corrupt")),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 problem(s) found"));
}

/// A tar whose second entry writes through the symlink its first makes,
/// to the directory `outside`.
fn escaping_tar(outside: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut link = tar::Header::new_ustar();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    builder
        .append_link(&mut link, "link", outside)
        .expect("symlink entry");
    let mut file = tar::Header::new_ustar();
    file.set_size(7);
    file.set_mode(0o644);
    builder
        .append_data(&mut file, "link/escaped", &b"escaped"[..])
        .expect("file entry");
    builder.into_inner().expect("tar")
}

#[test]
fn archives_never_write_outside_the_image_through_add_or_base_images() {
    require_root();
    let kiln = Kiln::new();
    let work = tempfile::tempdir().expect("tmp");
    let outside = work.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    let evil = escaping_tar(&outside);

    // ADD unpacks as BuildKit does, as if chrooted in the destination: the
    // absolute link leads below /x, never out to the host.
    let context = Context::new();
    fs::write(context.path().join("evil.tar"), &evil).expect("write");
    context.write("Dockerfile", "FROM scratch\nADD evil.tar /x/\n");
    let out = kiln.files(context.path(), &[]);
    assert_eq!(fs::read_dir(&outside).expect("outside").count(), 0);
    let inside = out
        .path()
        .join("x")
        .join(outside.strip_prefix("/").expect("absolute"))
        .join("escaped");
    assert_eq!(fs::read(&inside).expect("the entry, below /x"), b"escaped");
    assert!(fs::symlink_metadata(out.path().join("x/link"))
        .expect("link")
        .file_type()
        .is_symlink());

    // The same tar as the layer of an image that is loaded and built on.
    let layout = work.path().join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir");
    let layer_hex = sha256_hex(&evil);
    fs::write(layout.join("blobs/sha256").join(&layer_hex), &evil).expect("layer");
    let config = serde_json::json!({
        "architecture": host_architecture(), "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_hex}")]},
    });
    let (config_digest, config_size) = write_layout_blob(&layout, &config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_hex}"), "size": evil.len()}],
    });
    let (manifest_digest, manifest_size) = write_layout_blob(&layout, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"io.containerd.image.name": "docker.io/library/evil:1"}}],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index");
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("layout");
    let archive = work.path().join("evil-image.tar");
    tar_directory(&layout, &archive);
    kiln.ok(&["load", "-i", archive.to_str().expect("utf-8")]);
    context.write("a", "a");
    context.write("Dockerfile", "FROM evil:1\nCOPY a /a\n");
    let stderr = kiln.fails(&["build", context.path().to_str().expect("utf-8")]);
    assert!(
        stderr.contains("refusing archive entry \"link/escaped\""),
        "{stderr}"
    );
    assert_eq!(fs::read_dir(&outside).expect("outside").count(), 0);
    assert!(kiln.ok(&["check"]).contains("is consistent"));
}

#[test]
fn truncated_archives_are_named_as_such() {
    require_root();
    let kiln = Kiln::new();
    let context = rich_context();
    kiln.build(context.path(), &["-t", "whole:1"]);
    let work = tempfile::tempdir().expect("tmp");
    let archive = work.path().join("whole.tar");
    kiln.ok(&["save", "whole:1", "-o", archive.to_str().expect("utf-8")]);
    let bytes = fs::read(&archive).expect("read");
    // Cut in the middle of the largest entry, and at an entry's boundary.
    let mut largest = (0u64, 0u64);
    let mut boundary = 0u64;
    let mut entries = tar::Archive::new(&bytes[..]);
    for entry in entries.entries().expect("entries") {
        let entry = entry.expect("entry");
        let (start, size) = (entry.raw_file_position(), entry.size());
        if size > largest.1 {
            largest = (start, size);
            boundary = entry.raw_header_position();
        }
    }
    let other = Kiln::new();
    for (at, message) in [
        (largest.0 + largest.1 / 2, "the archive is truncated"),
        (boundary, "(is the archive complete?)"),
    ] {
        let cut = work.path().join("cut.tar");
        fs::write(&cut, &bytes[..at as usize]).expect("write");
        let stderr = other.fails(&["load", "-i", cut.to_str().expect("utf-8")]);
        assert!(stderr.contains(message), "cut at {at}: {stderr}");
        assert!(other.ok(&["check"]).contains("is consistent"));
    }
}

#[test]
fn archives_and_file_trees_go_to_standard_output() {
    require_root();
    let kiln = Kiln::new();
    let context = rich_context();
    let path = context.path().to_str().expect("utf-8");
    // `-o -`: the image's files as a tar, as BuildKit writes it.
    let files = kiln.run(&["build", "-o", "-", path]);
    assert!(files.status.success());
    let names = list_tar(&files.stdout);
    assert!(names.contains(&"setuid".to_string()), "{names:?}");
    assert!(names.contains(&"dir/nested/data".to_string()), "{names:?}");
    // `dest=-`: the archive alone on standard output, the digest on stderr.
    let oci = kiln.run(&["build", "-o", "type=oci,dest=-", path]);
    assert!(oci.status.success());
    let names = list_tar(&oci.stdout);
    assert!(names.contains(&"index.json".to_string()), "{names:?}");
    assert!(String::from_utf8_lossy(&oci.stderr).contains("sha256:"));
}

fn list_tar(bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .expect("a tar archive")
        .map(|entry| {
            let entry = entry.expect("a complete tar archive");
            entry
                .path()
                .expect("path")
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}
