//! Pulling base images from and pushing results to a real registry
//! (`docker-registry` on a loopback port), and skopeo reading what kiln
//! pushed and kiln building on what skopeo pushed.

use std::fs;

use crate::support::{require_root, require_tool, run_tool, Context, Kiln};
use kiln_testkit::{Registry, Setup, PASSWORD, USER};

/// Pushes busybox (made by `Kiln::busybox`) to `name` in the registry.
fn publish_busybox(registry: &Registry, name: &str) -> String {
    let kiln = Kiln::new();
    kiln.busybox();
    let destination = registry.name(name);
    kiln.ok(&["push", "busybox", &destination])
        .trim()
        .to_string()
}

#[test]
fn built_images_are_pushed_and_skopeo_reads_and_copies_them() {
    require_root();
    require_tool("skopeo", "skopeo");
    let registry = Registry::start(Setup::Anonymous);
    let base = publish_busybox(&registry, "library/busybox:1");
    let kiln = Kiln::new();
    let context = Context::new();
    context.write("app.txt", "app\n");
    context.write(
        "Dockerfile",
        &format!(
            "FROM {}\nCOPY app.txt /app.txt\nCMD [\"cat\", \"/app.txt\"]\n",
            registry.name("library/busybox:1")
        ),
    );
    let metadata = context.path().join("metadata.json");
    let name = registry.name("team/app:1");
    let latest = registry.name("team/app:latest");
    let output = kiln.run(&[
        "build",
        "-t",
        &name,
        "-t",
        &latest,
        "--push",
        "--metadata-file",
        metadata.to_str().expect("utf-8"),
        context.path().to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let digest = String::from_utf8_lossy(&output.stdout).trim().to_string();
    // The base image's layer went up with busybox: it is mounted from
    // there, not uploaded again.
    assert!(
        stderr.contains("blob(s) uploaded") && !stderr.contains(" 0 mounted"),
        "{stderr}"
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&fs::read(&metadata).expect("metadata")).expect("json");
    assert_eq!(metadata["containerimage.digest"], digest);
    assert_eq!(metadata["image.name"], format!("{name},{latest}"));
    for reference in [&name, &latest] {
        let inspected: serde_json::Value = serde_json::from_str(&run_tool(
            "skopeo",
            &[
                "inspect",
                "--tls-verify=false",
                &format!("docker://{reference}"),
            ],
        ))
        .expect("json");
        assert_eq!(inspected["Digest"], digest, "{reference}");
    }
    let copied = tempfile::tempdir().expect("tmp");
    run_tool(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{name}"),
            &format!("oci:{}:app", copied.path().display()),
        ],
    );
    assert!(copied.path().join("index.json").is_file());
    assert_ne!(base, digest);
}

#[test]
fn buildx_exporter_options_push_and_recompress() {
    require_root();
    require_tool("skopeo", "skopeo");
    let registry = Registry::start(Setup::Anonymous);
    let kiln = Kiln::with_busybox();
    let context = Context::new();
    context.write("Dockerfile", "FROM busybox\nRUN echo built > /built\n");
    // `type=registry`: built and pushed, with busybox's gzip layer kept.
    let plain = registry.name("team/plain:1");
    kiln.build(
        context.path(),
        &["-o", &format!("type=registry,name={plain}")],
    );
    // `type=image,push=true` with zstd for every layer, the base's too, and
    // Docker's media types refused in favour of OCI's.
    let zstd = registry.name("team/zstd:1");
    kiln.build(
        context.path(),
        &[
            "-o",
            &format!(
                "type=image,name={zstd},push=true,compression=zstd,compression-level=3,\
                 force-compression=true,oci-mediatypes=true"
            ),
        ],
    );
    let layers = |reference: &str| -> Vec<String> {
        let manifest: serde_json::Value = serde_json::from_str(&run_tool(
            "skopeo",
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{reference}"),
            ],
        ))
        .expect("json");
        manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|layer| layer["mediaType"].as_str().expect("media type").to_string())
            .collect()
    };
    let plain_layers = layers(&plain);
    assert_eq!(plain_layers.len(), 2, "{plain_layers:?}");
    assert!(
        plain_layers.iter().all(|t| t.ends_with("tar+gzip")),
        "{plain_layers:?}"
    );
    let zstd_layers = layers(&zstd);
    assert_eq!(zstd_layers.len(), 2, "{zstd_layers:?}");
    assert!(
        zstd_layers
            .iter()
            .all(|t| t == "application/vnd.oci.image.layer.v1.tar+zstd"),
        "{zstd_layers:?}"
    );
    // The recompressed image unpacks to the same files as the other.
    let diff_ids = |reference: &str| -> serde_json::Value {
        let config: serde_json::Value = serde_json::from_str(&run_tool(
            "skopeo",
            &[
                "inspect",
                "--config",
                "--tls-verify=false",
                &format!("docker://{reference}"),
            ],
        ))
        .expect("json");
        config["rootfs"]["diff_ids"].clone()
    };
    assert_eq!(diff_ids(&plain), diff_ids(&zstd));
}

#[test]
fn kiln_run_pulls_an_image_the_store_lacks() {
    require_root();
    require_tool("runc", "runc");
    let registry = Registry::start(Setup::Anonymous);
    publish_busybox(&registry, "tools/busybox:1");
    let kiln = Kiln::new();
    let name = registry.name("tools/busybox:1");
    let output = kiln.run(&["run", "--rm", &name, "echo", "pulled and ran"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "pulled and ran\n");
    assert!(String::from_utf8_lossy(&output.stderr).contains("pulling "));
    // Now in the store, named as it was asked for.
    assert!(kiln.ok(&["images"]).contains("tools/busybox"));
}

#[test]
fn kiln_builds_on_an_image_skopeo_pushed_and_pulls_each_base_once() {
    require_root();
    require_tool("skopeo", "skopeo");
    let registry = Registry::start(Setup::Anonymous);
    // An image skopeo pushes, from an archive kiln wrote.
    let maker = Kiln::new();
    maker.busybox();
    let work = tempfile::tempdir().expect("tmp");
    let archive = work.path().join("busybox.tar");
    maker.ok(&[
        "save",
        "busybox",
        "-o",
        archive.to_str().expect("utf-8"),
        "--format",
        "oci",
    ]);
    let base = registry.name("skopeo/busybox:1");
    run_tool(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci-archive:{}", archive.display()),
            &format!("docker://{base}"),
        ],
    );
    let kiln = Kiln::new();
    let context = Context::new();
    context.write("hello.txt", "hello\n");
    context.write(
        "Dockerfile",
        &format!(
            "FROM {base} AS first\nCOPY hello.txt /hello.txt\n\
             FROM {base}\nCOPY --from=first /hello.txt /copied.txt\nCOPY --from={base} /bin/busybox /busybox-copy\n"
        ),
    );
    let output = kiln.run(&[
        "build",
        "-t",
        "built",
        context.path().to_str().expect("utf-8"),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("pulling ").count(),
        1,
        "one reference, pulled once per build: {stderr}"
    );
    let files = kiln.files(context.path(), &[]);
    assert!(files.path().join("bin/busybox").is_file());
    assert_eq!(
        fs::read_to_string(files.path().join("copied.txt")).expect("copied"),
        "hello\n"
    );
    assert!(files.path().join("busybox-copy").is_file());

    // The store has it now: the registry is not needed again, unless
    // --pull asks it.
    drop(registry);
    let again = kiln.run(&["build", context.path().to_str().expect("utf-8")]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(!String::from_utf8_lossy(&again.stderr).contains("pulling"));
    let stderr = kiln.fails(&["build", "--pull", context.path().to_str().expect("utf-8")]);
    assert!(stderr.contains(&format!("pulling {base}")), "{stderr}");
}

#[test]
fn login_push_and_pull_with_basic_auth_over_tls() {
    require_root();
    let registry = Registry::start(Setup::BasicTls);
    let logins = tempfile::tempdir().expect("tmp");
    let certs = registry.certs_dir.to_str().expect("utf-8").to_string();
    let kiln = Kiln::new();
    kiln.busybox();
    let with_config = |args: &[&str], stdin: Option<&str>| {
        let mut command = kiln.command();
        command
            .env("DOCKER_CONFIG", logins.path())
            .arg("--cert-dir")
            .arg(&certs)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("kiln runs");
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write");
        }
        child.wait_with_output().expect("kiln exits")
    };
    let destination = registry.name("private/busybox:1");
    let denied = with_config(&["push", "busybox", &destination], None);
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("kiln login"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let wrong = with_config(
        &["login", "-u", USER, "--password-stdin", &registry.address],
        Some("wrong-password-123\n"),
    );
    assert_eq!(wrong.status.code(), Some(1));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&wrong.stdout),
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(said.contains("refused the credentials"), "{said}");
    assert!(
        !said.contains("wrong-password-123"),
        "no secret in output: {said}"
    );
    let login = with_config(
        &["login", "-u", USER, "--password-stdin", &registry.address],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let config = fs::read_to_string(logins.path().join("config.json")).expect("config.json");
    assert!(config.contains(&registry.address));
    let pushed = with_config(&["push", "busybox", &destination], None);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&pushed.stdout),
        String::from_utf8_lossy(&pushed.stderr)
    );
    assert!(!output.contains(PASSWORD), "no secret in output: {output}");
    let other = Kiln::new();
    let pulled = other
        .command()
        .env("DOCKER_CONFIG", logins.path())
        .args(["--cert-dir", &certs, "pull", &destination])
        .output()
        .expect("kiln runs");
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    assert_eq!(
        other.inspect(&destination)["Digest"],
        kiln.inspect("busybox")["Digest"]
    );
    let logout = with_config(&["logout", &registry.address], None);
    assert!(logout.status.success());
    assert!(!fs::read_to_string(logins.path().join("config.json"))
        .expect("config.json")
        .contains(&registry.address));
}

#[test]
fn a_base_image_the_registry_does_not_have_is_named() {
    require_root();
    let registry = Registry::start(Setup::Anonymous);
    let kiln = Kiln::new();
    let context = Context::new();
    let missing = registry.name("nobody/here:1");
    context.write(
        "Dockerfile",
        &format!("FROM {missing}\nCOPY Dockerfile /\n"),
    );
    let stderr = kiln.fails(&["build", context.path().to_str().expect("utf-8")]);
    assert!(
        stderr.contains(&format!("cannot use base image {missing}"))
            && stderr.contains("is not in the registry"),
        "{stderr}"
    );
    assert!(stderr.contains("/Dockerfile:1:6"), "{stderr}");
}

#[test]
fn an_insecure_registry_is_reached_without_its_ca() {
    require_root();
    let registry = Registry::start(Setup::BasicTls);
    let logins = tempfile::tempdir().expect("tmp");
    let no_certs = tempfile::tempdir().expect("tmp");
    let kiln = Kiln::new();
    let login = |extra: &[&str]| {
        let mut command = kiln.command();
        command
            .env("DOCKER_CONFIG", logins.path())
            .args(["--cert-dir", no_certs.path().to_str().expect("utf-8")])
            .args(extra)
            .args(["login", "-u", USER, "-p", PASSWORD, &registry.address]);
        command.output().expect("kiln runs")
    };
    let refused = login(&[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("ca.crt"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let accepted = login(&["--insecure-registry", &registry.address]);
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
}

#[test]
fn pushing_to_a_digest_checks_it() {
    require_root();
    let registry = Registry::start(Setup::Anonymous);
    let kiln = Kiln::new();
    kiln.busybox();
    let wrong = format!(
        "{}@sha256:{}",
        registry.name("pinned/busybox"),
        "0".repeat(64)
    );
    let stderr = kiln.fails(&["push", "busybox", &wrong]);
    assert!(stderr.contains("not the sha256:000"), "{stderr}");
}
