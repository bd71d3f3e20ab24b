//! Building images without a sandbox: COPY and ADD with Docker's rules,
//! WORKDIR, configuration, history, base images from the store.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::support::{require_root, Context, Kiln};

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn owner_and_mode(root: &Path, path: &str) -> (u32, u32, u32) {
    let metadata = fs::symlink_metadata(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    (metadata.uid(), metadata.gid(), metadata.mode() & 0o7777)
}

/// Every path under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            out.push(
                path.strip_prefix(root)
                    .expect("inside")
                    .display()
                    .to_string(),
            );
            if fs::symlink_metadata(&path).expect("stat").is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_example_builds_into_the_store() {
    require_root();
    let kiln = Kiln::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/examples/hello");
    let digest = kiln.build(&example, &["-t", "hello"]);
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    let images = kiln.ok(&["images"]);
    assert!(images.contains("hello:latest"), "{images}");
    let image = kiln.inspect("hello");
    assert_eq!(image["Digest"], digest);
    let config = &image["Config"];
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["/srv/hello.txt"])
    );
    assert_eq!(config["config"]["WorkingDir"], "/srv");
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.description"],
        "hello from kiln"
    );
    let history: Vec<(&str, bool)> = config["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| {
            (
                h["created_by"].as_str().expect("created_by"),
                h["empty_layer"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("ARG GREETING=hello from kiln", true),
            ("LABEL org.opencontainers.image.title=hello org.opencontainers.image.description=hello from kiln", true),
            ("WORKDIR /srv", false),
            ("COPY hello.txt . # buildkit", false),
            ("COPY <<EOF /srv/greeting.txt # buildkit", false),
            ("ENV GREETING_FILE=/srv/greeting.txt", true),
            ("CMD [\"/srv/hello.txt\"]", true),
        ]
    );
    assert_eq!(
        image["Manifest"]["layers"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(
        image["Manifest"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        image["Manifest"]["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
}

#[test]
fn copy_follows_dockers_source_and_destination_rules() {
    require_root();
    let kiln = Kiln::new();
    let context = Context::new();
    context.write("file.txt", "file");
    context.write("dir/a.txt", "a");
    context.write("dir/sub/b.txt", "b");
    context.write("dir/skip.md", "excluded");
    context.write("glob/x1.conf", "x1");
    context.write("glob/x2.conf", "x2");
    context.write("glob/y.conf", "y");
    context.write("ignored/secret", "never copied");
    context.write("keep/in.txt", "in");
    context.write("keep/out.log", "out");
    context.write("tree/a/b/deep.txt", "deep");
    symlink("dir", context.path().join("link-to-dir")).expect("symlink");
    context.write(".dockerignore", "ignored\nkeep/*.log\n");
    context.write(
        "Dockerfile",
        "FROM scratch\n\
         COPY file.txt /as-file\n\
         COPY file.txt /into-dir/\n\
         COPY dir /contents-only\n\
         COPY --exclude=*.md dir/ /excluded/\n\
         COPY glob/x*.conf /globbed/\n\
         COPY keep /keep\n\
         COPY link-to-dir /via-link\n\
         COPY --parents tree/./a/b/deep.txt /parents/\n\
         COPY --parents ./tree/./a/*/deep.txt /dotted/\n\
         COPY --parents tree/a/b/deep.txt /whole/\n\
         COPY --chmod=0600 file.txt /private/\n\
         COPY file.txt dir/a.txt /two/\n\
         WORKDIR /work\n\
         COPY file.txt relative.txt\n",
    );
    let out = kiln.files(context.path(), &[]);
    let root = out.path();
    assert_eq!(read(root, "/as-file"), "file");
    assert_eq!(read(root, "/into-dir/file.txt"), "file");
    assert_eq!(read(root, "/contents-only/a.txt"), "a");
    assert_eq!(read(root, "/contents-only/sub/b.txt"), "b");
    assert!(
        !root.join("contents-only/dir").exists(),
        "COPY dir copies the contents"
    );
    assert!(root.join("excluded/a.txt").exists() && !root.join("excluded/skip.md").exists());
    let globbed = tree(&root.join("globbed"));
    assert_eq!(globbed, ["x1.conf", "x2.conf"]);
    assert_eq!(tree(&root.join("keep")), ["in.txt"]);
    assert!(!root.join("ignored").exists());
    assert_eq!(read(root, "/via-link/a.txt"), "a");
    assert_eq!(read(root, "/parents/a/b/deep.txt"), "deep");
    assert_eq!(read(root, "/dotted/a/b/deep.txt"), "deep");
    assert_eq!(read(root, "/whole/tree/a/b/deep.txt"), "deep");
    assert_eq!(owner_and_mode(root, "/private/file.txt"), (0, 0, 0o600));
    assert_eq!(tree(&root.join("two")), ["a.txt", "file.txt"]);
    assert_eq!(read(root, "/work/relative.txt"), "file");
}

#[test]
fn copy_errors_name_the_problem() {
    require_root();
    let kiln = Kiln::new();
    let cases = [
        (
            "FROM scratch\nCOPY missing.txt /\n",
            "missing.txt: not found in the build context",
        ),
        (
            "FROM scratch\nCOPY ignored /\n",
            "ignored: not found in the build context",
        ),
        (
            "FROM scratch\nCOPY a b /dest\n",
            "with more than one source the destination must be a directory ending with /",
        ),
        (
            "FROM scratch\nCOPY ../outside /\n",
            "source \"../outside\" is outside the build context",
        ),
        (
            "FROM scratch\nRUN echo hi\n",
            "stat /bin/sh: no such file or directory",
        ),
        (
            "FROM scratch\nCOPY --chown=app a /\n",
            "cannot find user \"app\": the image has no /etc/passwd",
        ),
    ];
    for (dockerfile, message) in cases {
        let context = Context::new();
        context.write("a", "a");
        context.write("b", "b");
        context.write("ignored", "x");
        context.write(".dockerignore", "ignored\n");
        context.write("Dockerfile", dockerfile);
        let stderr = kiln.fails(&["build", context.path().to_str().expect("utf-8")]);
        assert!(stderr.contains(message), "{dockerfile:?}: {stderr}");
        if message.contains("RUN") || message.contains("COPY") {
            assert!(
                stderr.contains("/Dockerfile:2"),
                "the error names the line: {stderr}"
            );
        }
    }
}

#[test]
fn chown_and_workdir_use_the_images_users() {
    require_root();
    let kiln = Kiln::new();
    kiln.busybox();
    let context = Context::new();
    context.write("app.conf", "conf");
    context.write("Dockerfile", "FROM busybox\nUSER app\nWORKDIR /home/app/data/cache\nCOPY --chown=app:staff app.conf ./\nCOPY --chown=1234 app.conf /numeric\nCOPY app.conf /root-owned\n");
    let out = kiln.files(context.path(), &[]);
    let root = out.path();
    assert_eq!(
        owner_and_mode(root, "/home/app/data/cache/app.conf"),
        (1000, 50, 0o644)
    );
    assert_eq!(
        owner_and_mode(root, "/home/app/data/cache"),
        (1000, 1000, 0o755)
    );
    assert_eq!(owner_and_mode(root, "/home/app/data"), (1000, 1000, 0o755));
    assert_eq!(owner_and_mode(root, "/numeric"), (1234, 1234, 0o644));
    assert_eq!(owner_and_mode(root, "/root-owned"), (0, 0, 0o644));
    assert_eq!(
        owner_and_mode(root, "/tmp"),
        (0, 0, 0o1777),
        "the base image's files are kept"
    );
    assert!(fs::symlink_metadata(root.join("bin/sh"))
        .expect("applet")
        .file_type()
        .is_symlink());
    let image = kiln.build(context.path(), &["-t", "app"]);
    let config = kiln.inspect(&image.replace("sha256:", "app@sha256:"));
    assert_eq!(config["Config"]["config"]["User"], "app");
    assert_eq!(
        config["Config"]["config"]["Cmd"],
        serde_json::json!(["sh"]),
        "CMD comes from the base image"
    );
    assert_eq!(
        config["Config"]["rootfs"]["diff_ids"]
            .as_array()
            .map(Vec::len),
        Some(5)
    );
}

#[test]
fn copy_from_stages_and_images_keeps_owners() {
    require_root();
    let kiln = Kiln::new();
    kiln.busybox();
    let context = Context::new();
    context.write("tool", "#!/bin/sh\necho tool\n");
    fs::set_permissions(
        context.path().join("tool"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    context.write(
        "Dockerfile",
        "FROM busybox AS build\nCOPY --chown=app:app tool /opt/tool\n\
         FROM scratch\nCOPY --from=build /opt/tool /usr/bin/tool\nCOPY --from=busybox /etc/passwd /etc/passwd\nCOPY --from=0 /bin/busybox /bin/\n",
    );
    let out = kiln.files(context.path(), &[]);
    let root = out.path();
    assert_eq!(owner_and_mode(root, "/usr/bin/tool"), (1000, 1000, 0o755));
    assert!(read(root, "/etc/passwd").contains("app:x:1000"));
    assert!(root.join("bin/busybox").is_file());
    assert_eq!(
        tree(root),
        [
            "bin",
            "bin/busybox",
            "etc",
            "etc/passwd",
            "usr",
            "usr/bin",
            "usr/bin/tool"
        ]
    );
}

#[test]
fn add_unpacks_local_archives_and_copies_other_files() {
    require_root();
    let kiln = Kiln::new();
    let context = Context::new();
    let payload = tempfile::tempdir().expect("payload");
    fs::create_dir_all(payload.path().join("pkg/bin")).expect("mkdir");
    fs::write(payload.path().join("pkg/bin/run"), "run").expect("write");
    fs::set_permissions(
        payload.path().join("pkg/bin/run"),
        fs::Permissions::from_mode(0o750),
    )
    .expect("chmod");
    std::os::unix::fs::lchown(payload.path().join("pkg/bin/run"), Some(1234), Some(4321))
        .expect("chown");
    let status = std::process::Command::new("tar")
        .args([
            "--numeric-owner",
            "-czf",
            context.path().join("pkg.tar.gz").to_str().expect("utf-8"),
            "-C",
        ])
        .arg(payload.path())
        .arg("pkg")
        .status()
        .expect("tar");
    assert!(status.success());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo plain > {0}/notes.txt && gzip -k {0}/notes.txt",
            context.path().display()
        ))
        .status()
        .expect("gzip");
    assert!(status.success());
    context.write(
        "Dockerfile",
        "FROM scratch\nADD pkg.tar.gz /opt/\nADD --chown=7:8 pkg.tar.gz /chowned/\nADD notes.txt.gz /docs/\nCOPY pkg.tar.gz /copied/\nADD --unpack=false pkg.tar.gz /kept/\n",
    );
    let out = kiln.files(context.path(), &[]);
    let root = out.path();
    assert_eq!(read(root, "/opt/pkg/bin/run"), "run");
    assert_eq!(
        owner_and_mode(root, "/opt/pkg/bin/run"),
        (1234, 4321, 0o750),
        "an unpacked archive keeps its owners"
    );
    assert_eq!(owner_and_mode(root, "/chowned/pkg/bin/run"), (7, 8, 0o750));
    assert!(
        root.join("docs/notes.txt.gz").is_file(),
        "a gzip that is not a tar is copied as it is"
    );
    assert!(
        root.join("copied/pkg.tar.gz").is_file(),
        "COPY never unpacks"
    );
    assert_eq!(
        tree(&root.join("kept")),
        ["pkg.tar.gz"],
        "ADD --unpack=false copies the archive as a file"
    );
    assert_eq!(
        fs::read(root.join("kept/pkg.tar.gz")).expect("kept"),
        fs::read(context.path().join("pkg.tar.gz")).expect("archive")
    );
}

#[test]
fn configuration_instructions_reach_the_image() {
    require_root();
    let kiln = Kiln::new();
    kiln.busybox();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\nENV A=1\nEXPOSE 80 53/udp\nVOLUME /data\nSTOPSIGNAL SIGINT\nSHELL [\"/bin/sh\", \"-ec\"]\n\
         HEALTHCHECK --interval=30s CMD true\nONBUILD COPY . /src\nENTRYPOINT [\"/bin/sh\"]\nMAINTAINER someone\n",
    );
    let digest = kiln.build(
        context.path(),
        &[
            "-t",
            "configured",
            "--label",
            "built-by=kiln",
            "--format",
            "docker",
        ],
    );
    let image = kiln.inspect("configured");
    assert_eq!(image["Digest"], digest);
    let config = &image["Config"]["config"];
    assert_eq!(
        config["ExposedPorts"],
        serde_json::json!({"53/udp": {}, "80/tcp": {}})
    );
    assert_eq!(config["Volumes"], serde_json::json!({"/data": {}}));
    assert_eq!(config["StopSignal"], "SIGINT");
    assert_eq!(config["Shell"], serde_json::json!(["/bin/sh", "-ec"]));
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "true"])
    );
    assert_eq!(config["OnBuild"], serde_json::json!(["COPY . /src"]));
    assert_eq!(config["Entrypoint"], serde_json::json!(["/bin/sh"]));
    assert!(
        config.get("Cmd").is_none(),
        "ENTRYPOINT resets the inherited CMD"
    );
    assert_eq!(config["Labels"]["built-by"], "kiln");
    assert!(config["Env"]
        .as_array()
        .expect("env")
        .contains(&serde_json::json!("A=1")));
    assert_eq!(image["Config"]["author"], "someone");
    assert_eq!(
        image["Manifest"]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        image["Manifest"]["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );

    // ONBUILD runs in images built on this one.
    let child = Context::new();
    child.write("hello", "from the child context");
    child.write("Dockerfile", "FROM configured\n");
    let out = kiln.files(child.path(), &[]);
    assert_eq!(read(out.path(), "/src/hello"), "from the child context");
}

#[test]
fn a_workdir_that_exists_adds_an_empty_layer_and_workdir_root_none() {
    require_root();
    let kiln = Kiln::new();
    kiln.busybox();
    let context = Context::new();
    context.write("Dockerfile", "FROM busybox\nWORKDIR /tmp\nWORKDIR /\n");
    kiln.build(context.path(), &["-t", "same"]);
    let image = kiln.inspect("same");
    let base = kiln.inspect("busybox");
    let layers = image["Manifest"]["layers"].as_array().expect("layers");
    let base_layers = base["Manifest"]["layers"].as_array().expect("layers");
    // As BuildKit: WORKDIR makes its directory in a layer of its own, here
    // an empty one; WORKDIR / makes none.
    assert_eq!(layers[..base_layers.len()], base_layers[..]);
    assert_eq!(layers.len(), base_layers.len() + 1);
    let history = image["Config"]["history"].as_array().expect("history");
    let last_two: Vec<bool> = history[history.len() - 2..]
        .iter()
        .map(|h| h["empty_layer"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(last_two, [false, true]);
    // An image without any layer exports as an empty directory.
    context.write("Dockerfile", "FROM scratch\nENV A=1\nCMD []\n");
    let out = kiln.files(context.path(), &[]);
    assert!(tree(out.path()).is_empty());
    // Its configuration is what BuildKit gives an empty image.
    kiln.build(context.path(), &["-t", "empty"]);
    let config = &kiln.inspect("empty")["Config"]["config"];
    assert_eq!(config["WorkingDir"], "/");
    assert!(config.get("Cmd").is_none(), "CMD [] is left out: {config}");
}

#[test]
fn image_commands() {
    require_root();
    let kiln = Kiln::new();
    kiln.busybox();
    kiln.ok(&["tag", "busybox", "example.com/tools/busybox:1.0"]);
    let images = kiln.ok(&["images"]);
    assert!(
        images.contains("busybox:latest") && images.contains("example.com/tools/busybox:1.0"),
        "{images}"
    );
    assert_eq!(
        kiln.ok(&["rmi", "busybox"]).trim(),
        "Untagged: busybox:latest"
    );
    assert!(kiln
        .fails(&["rmi", "busybox"])
        .contains("no such image: busybox"));
    assert!(kiln
        .fails(&["inspect", "busybox"])
        .contains("image busybox:latest is not in the store"));
    assert!(kiln
        .fails(&["tag", "busybox", "x"])
        .contains("is not in the store"));
    assert!(kiln
        .fails(&["inspect", "Upper/Case"])
        .contains("repository names must be lower-case"));
    assert!(kiln.ok(&["check"]).contains("is consistent"));
}

#[test]
fn building_without_root_says_it_needs_root() {
    use std::os::unix::process::CommandExt;
    require_root();
    let kiln = Kiln::new();
    let context = Context::new();
    context.write("Dockerfile", "FROM scratch\nCOPY a /a\n");
    context.write("a", "a\n");
    // The unprivileged user must be able to reach both directories.
    for dir in [kiln.root.path(), context.path()] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    fs::set_permissions(context.path().join("a"), fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let output = kiln
        .command()
        .args(["build", context.path().to_str().expect("utf-8 path")])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("kiln runs");
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("kiln build must run as root"), "{message}");
}

/// A base image with `/lib -> usr/lib`, `/usr/lib` owned by 7:7 with mode
/// 0750, `/etc` with mode 0700 and the file `/etc/passwd`.
fn base_with_links(kiln: &Kiln) {
    let context = Context::new();
    context.write("rootfs/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
    fs::set_permissions(
        context.path().join("rootfs/etc"),
        fs::Permissions::from_mode(0o700),
    )
    .expect("chmod");
    symlink("usr/lib", context.path().join("rootfs/lib")).expect("symlink");
    context.write("libdir/libc.so", "libc");
    fs::set_permissions(
        context.path().join("libdir"),
        fs::Permissions::from_mode(0o750),
    )
    .expect("chmod");
    context.write(
        "Dockerfile",
        "FROM scratch\nCOPY rootfs/ /\nCOPY --chown=7:7 libdir /usr/lib\n",
    );
    kiln.build(context.path(), &["-t", "links:1"]);
}

#[test]
fn copy_never_turns_files_or_symlinks_into_directories_or_back() {
    require_root();
    let kiln = Kiln::new();
    base_with_links(&kiln);
    let cases = [
        (
            "COPY over/ /\n",
            "cannot copy a directory to /lib: it exists and is not a directory",
        ),
        (
            "COPY etc-file/ /\n",
            "cannot replace the directory /etc with a file",
        ),
        (
            "COPY over /etc/passwd\n",
            "cannot copy a directory to /etc/passwd",
        ),
        (
            "WORKDIR /etc/passwd\n",
            "/etc/passwd exists in the image and is not a directory",
        ),
        (
            "COPY mine.so /etc/passwd/x\n",
            "one of its parents is not a directory",
        ),
    ];
    for (step, message) in cases {
        let context = Context::new();
        context.write("over/lib/mine.so", "mine");
        context.write("etc-file/etc", "not a directory");
        context.write("mine.so", "mine");
        context.write("Dockerfile", &format!("FROM links:1\n{step}"));
        let stderr = kiln.fails(&["build", context.path().to_str().expect("utf-8")]);
        assert!(stderr.contains(message), "{step:?}: {stderr}");
    }
}

#[test]
fn copy_into_existing_directories_keeps_them_and_follows_the_destination() {
    require_root();
    let kiln = Kiln::new();
    base_with_links(&kiln);
    let context = Context::new();
    context.write("mine.so", "mine");
    context.write("tree/usr/lib/extra.so", "extra");
    context.write("tree/etc/hosts", "127.0.0.1 localhost\n");
    context.write(
        "passwd",
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
    );
    context.write(
        "Dockerfile",
        "FROM links:1\nCOPY mine.so /lib/\nCOPY tree/ /\nCOPY passwd /etc/passwd\n",
    );
    let out = kiln.files(context.path(), &[]);
    let root = out.path();
    assert!(fs::symlink_metadata(root.join("lib"))
        .expect("lib")
        .file_type()
        .is_symlink());
    assert_eq!(read(root, "/usr/lib/mine.so"), "mine");
    assert_eq!(read(root, "/usr/lib/extra.so"), "extra");
    assert_eq!(read(root, "/usr/lib/libc.so"), "libc");
    // Made by the base's `COPY --chown=7:7 libdir /usr/lib`: a new
    // destination is 0755, whatever the mode of the copied directory.
    assert_eq!(owner_and_mode(root, "/usr/lib"), (7, 7, 0o755));
    assert_eq!(owner_and_mode(root, "/etc"), (0, 0, 0o700));
    assert_eq!(read(root, "/etc/hosts"), "127.0.0.1 localhost\n");
    assert!(read(root, "/etc/passwd").contains("app:x:1000"));
}

#[test]
fn untagged_images_are_found_and_removed_by_id() {
    require_root();
    let kiln = Kiln::new();
    let context = Context::new();
    context.write("a", "a\n");
    context.write("Dockerfile", "FROM scratch\nCOPY a /a\n");
    let digest = kiln.build(context.path(), &[]);
    let short = &digest[..("sha256:".len() + 12)];
    let images = kiln.ok(&["images"]);
    assert!(images.contains("<none>"), "{images}");
    assert!(images.contains(short), "{images}");
    for id in [digest.as_str(), short, &short["sha256:".len()..]] {
        assert_eq!(kiln.inspect(id)["Digest"], digest.as_str(), "{id}");
    }
    // Naming the image takes it off the untagged list.
    kiln.ok(&["tag", short, "named:1"]);
    assert!(!kiln.ok(&["images"]).contains("<none>"));
    let removed = kiln.ok(&["rmi", short]);
    assert_eq!(removed, format!("Untagged: named:1\nDeleted: {digest}\n"));
    assert!(!kiln.ok(&["images"]).contains(short));
    assert!(kiln
        .fails(&["inspect", short])
        .contains("is not in the store"));
    assert!(kiln
        .fails(&["inspect", "sha256:xyz"])
        .contains("invalid image ID"));
}

#[test]
fn an_empty_source_date_epoch_is_unset_and_a_bad_one_is_named() {
    require_root();
    let kiln = Kiln::new();
    let context = Context::new();
    context.write("a", "a\n");
    context.write("Dockerfile", "FROM scratch\nCOPY a /a\n");
    let path = context.path().to_str().expect("utf-8");
    let empty = kiln
        .command()
        .env("SOURCE_DATE_EPOCH", "")
        .args(["build", path])
        .output()
        .expect("kiln runs");
    assert!(
        empty.status.success(),
        "{}",
        String::from_utf8_lossy(&empty.stderr)
    );
    for bad in ["yesterday", "-1"] {
        let output = kiln
            .command()
            .env("SOURCE_DATE_EPOCH", bad)
            .args(["build", path])
            .output()
            .expect("kiln runs");
        assert_eq!(output.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&output.stderr).contains(&format!(
            "invalid --source-date-epoch or SOURCE_DATE_EPOCH \"{bad}\""
        )));
    }
}

#[test]
fn file_names_that_are_not_utf8_are_named_unless_ignored() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    require_root();
    let kiln = Kiln::new();
    let context = Context::new();
    context.write("names/good.txt", "good");
    fs::write(
        context
            .path()
            .join("names")
            .join(OsStr::from_bytes(b"caf\xe9.txt")),
        "latin-1",
    )
    .expect("write");
    context.write("Dockerfile", "FROM scratch\nCOPY names /names\n");
    let stderr = kiln.fails(&["build", context.path().to_str().expect("utf-8")]);
    assert!(
        stderr.contains("caf")
            && stderr.contains("file names that are not UTF-8 are not supported"),
        "{stderr}"
    );
    context.write(".dockerignore", "names/caf*\n");
    let out = kiln.files(context.path(), &[]);
    assert_eq!(tree(&out.path().join("names")), ["good.txt"]);
}

#[test]
fn another_user_can_read_a_store_but_not_reach_its_snapshots() {
    use std::os::unix::process::CommandExt;
    require_root();
    let kiln = Kiln::new();
    let context = Context::new();
    context.write("a", "a\n");
    context.write("Dockerfile", "FROM scratch\nCOPY a /a\n");
    kiln.build(context.path(), &["-t", "shared:1"]);
    fs::set_permissions(kiln.root.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let as_nobody = |args: &[&str]| {
        kiln.command()
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("kiln runs")
    };
    let images = as_nobody(&["images"]);
    assert!(
        images.status.success(),
        "{}",
        String::from_utf8_lossy(&images.stderr)
    );
    assert!(String::from_utf8_lossy(&images.stdout).contains("shared:1"));
    assert!(as_nobody(&["inspect", "shared:1"]).status.success());
    assert!(as_nobody(&["check"]).status.success());
    let listing = std::process::Command::new("ls")
        .arg(kiln.root.path().join("snapshots"))
        .uid(65534)
        .gid(65534)
        .output()
        .expect("ls runs");
    assert!(
        !listing.status.success(),
        "the snapshots directory is closed to other users"
    );
    assert_eq!(
        fs::metadata(kiln.root.path().join("snapshots"))
            .expect("snapshots")
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
}

#[test]
fn several_builds_share_one_store_at_once() {
    require_root();
    let kiln = Kiln::new();
    kiln.busybox();
    let context = Context::new();
    for i in 0..200 {
        context.write(&format!("files/f{i}"), &format!("{i}\n"));
    }
    context.write(
        "Dockerfile",
        "FROM busybox\nCOPY files /files\nWORKDIR /srv\n",
    );
    let builds: Vec<_> = (0..4)
        .map(|i| {
            kiln.command()
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args([
                    "build",
                    "-t",
                    &format!("parallel:{i}"),
                    context.path().to_str().expect("utf-8"),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("kiln runs")
        })
        .collect();
    let readers: Vec<_> = (0..10)
        .map(|_| kiln.command().arg("images").output().expect("kiln runs"))
        .collect();
    assert!(readers.iter().all(|o| o.status.success()));
    let digests: Vec<String> = builds
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().expect("kiln exits");
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).trim().to_string()
        })
        .collect();
    assert!(digests.iter().all(|d| d == &digests[0]), "{digests:?}");
    let images = kiln.ok(&["images"]);
    for i in 0..4 {
        assert!(images.contains(&format!("parallel:{i}")), "{images}");
    }
    assert!(kiln.ok(&["check"]).contains("is consistent"));
}

#[test]
fn add_downloads_urls_as_buildkit_does() {
    require_root();
    // A gzip tar, which ADD unpacks when it comes from a URL only with
    // --unpack=true.
    let payload = tempfile::tempdir().expect("payload");
    fs::write(payload.path().join("inside.txt"), "inside").expect("write");
    let archive = payload.path().join("tool.tar.gz");
    let status = std::process::Command::new("tar")
        .args(["-czf", archive.to_str().expect("utf-8"), "-C"])
        .arg(payload.path())
        .arg("inside.txt")
        .status()
        .expect("tar");
    assert!(status.success());
    let bytes = fs::read(&archive).expect("read");
    let digest = format!("sha256:{}", kiln_cache::Digest::of(&bytes).hex());
    let server = kiln_testkit::FileServer::start(
        vec![
            ("releases/tool.tar.gz".to_string(), bytes),
            ("notes%20v1.txt".to_string(), b"notes".to_vec()),
        ],
        "Wed, 21 Oct 2015 07:28:00 GMT",
    );
    let base = format!("http://{}", server.address);
    let kiln = Kiln::new();
    let context = Context::new();
    context.write(
        "Dockerfile",
        &format!(
            "FROM scratch\n\
             ADD --checksum={digest} {base}/moved/releases/tool.tar.gz /opt/\n\
             ADD --chmod=0644 --chown=7:8 {base}/notes%20v1.txt /docs/\n\
             ADD {base}/releases/tool.tar.gz /renamed.tgz\n\
             ADD --unpack=true {base}/releases/tool.tar.gz /unpacked\n\
             ADD --unpack=true --chmod=go+r {base}/notes%20v1.txt /readable/\n"
        ),
    );
    let out = kiln.files(context.path(), &[]);
    let root = out.path();
    let downloaded = root.join("opt/tool.tar.gz");
    assert_eq!(
        fs::read(&downloaded).expect("downloaded"),
        fs::read(&archive).expect("archive"),
        "a remote archive is not unpacked"
    );
    assert_eq!(owner_and_mode(root, "/opt/tool.tar.gz"), (0, 0, 0o600));
    assert_eq!(
        fs::metadata(&downloaded).expect("stat").mtime(),
        1_445_412_480,
        "dated by the server's Last-Modified"
    );
    assert_eq!(read(root, "/docs/notes v1.txt"), "notes");
    assert_eq!(owner_and_mode(root, "/docs/notes v1.txt"), (7, 8, 0o644));
    assert!(root.join("renamed.tgz").is_file());
    assert_eq!(
        tree(&root.join("unpacked")),
        ["inside.txt"],
        "--unpack=true unpacks a remote archive into the destination"
    );
    assert_eq!(read(root, "/unpacked/inside.txt"), "inside");
    assert_eq!(
        owner_and_mode(root, "/readable/notes v1.txt"),
        (0, 0, 0o644),
        "what is not an archive is downloaded as a file, whose 0600 a symbolic --chmod changes"
    );

    context.write(
        "Dockerfile",
        &format!(
            "FROM scratch\nADD --checksum=sha256:{} {base}/releases/tool.tar.gz /opt/\n",
            "0".repeat(64)
        ),
    );
    let stderr = kiln.fails(&["build", context.path().to_str().expect("utf-8")]);
    assert!(
        stderr.contains("does not match --checksum=sha256:000"),
        "{stderr}"
    );
    context.write(
        "Dockerfile",
        &format!("FROM scratch\nADD {base}/missing /x\n"),
    );
    let stderr = kiln.fails(&["build", context.path().to_str().expect("utf-8")]);
    assert!(stderr.contains("answered 404"), "{stderr}");
}
