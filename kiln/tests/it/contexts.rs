//! Build contexts beyond the context directory: `--build-context NAME=VALUE`
//! of each kind in place of a stage or an image, and main contexts that are
//! a URL, a tar archive or standard input.

use std::fs;
use std::path::Path;

use crate::support::{ran, Context, Kiln};

/// A tar archive (gzip) of `dir`'s entries.
fn tar_gz(dir: &Path) -> Vec<u8> {
    let output = std::process::Command::new("tar")
        .args(["-cz", "-C"])
        .arg(dir)
        .arg(".")
        .output()
        .expect("tar runs");
    assert!(output.status.success());
    output.stdout
}

#[test]
fn a_directory_replaces_a_stage_and_an_image_wherever_they_are_named() {
    let kiln = Kiln::with_busybox();
    let context = Context::new();
    context.write("other/a.txt", "from the named context\n");
    context.write("other/left-out.txt", "ignored\n");
    context.write("other/.dockerignore", "left-out.txt\n");
    context.write(
        "main/Dockerfile",
        "FROM scratch AS tools\n\
         RUN this stage never runs\n\
         FROM busybox\n\
         COPY --from=tools /a.txt /copied.txt\n\
         RUN --mount=from=tools,target=/mnt cat /mnt/a.txt > /mounted.txt\n\
         RUN --mount=from=extra,target=/mnt ls /mnt > /listed.txt\n\
         FROM extra AS based\n\
         FROM busybox\n\
         COPY --from=1 /copied.txt /mounted.txt /listed.txt /\n\
         COPY --from=based / /based/\n",
    );
    let out = kiln.files(
        &context.path().join("main"),
        &[
            "--build-context",
            "tools=../other",
            "--build-context",
            "extra=../other",
        ],
    );
    for file in ["copied.txt", "mounted.txt", "based/a.txt"] {
        assert_eq!(
            fs::read_to_string(out.path().join(file)).expect(file),
            "from the named context\n",
            "{file}"
        );
    }
    // The context's own .dockerignore applies, wherever it is read.
    let listed = fs::read_to_string(out.path().join("listed.txt")).expect("listed");
    assert!(!listed.contains("left-out.txt"), "{listed}");
    assert!(!out.path().join("based/left-out.txt").exists());
}

#[test]
fn an_unchanged_named_directory_is_cached_and_a_changed_one_reruns_what_reads_it() {
    let kiln = Kiln::with_busybox();
    let context = Context::new();
    context.write("lib/one.txt", "1\n");
    context.write("lib/two.txt", "2\n");
    context.write(
        "main/Dockerfile",
        "FROM busybox\n\
         RUN echo start > /start\n\
         COPY --from=lib one.txt /one.txt\n\
         RUN --mount=from=lib,target=/lib cat /lib/two.txt > /two.txt\n",
    );
    let main = context.path().join("main");
    let args = ["--build-context", "lib=../lib"];
    assert_eq!(ran(&kiln.step_outcomes(&main, &args)).len(), 3);
    assert_eq!(ran(&kiln.step_outcomes(&main, &args)), Vec::<&str>::new());
    // Touching a file changes nothing; changing one reruns what reads it.
    fs::write(context.path().join("lib/one.txt"), "1\n").expect("touch");
    assert_eq!(ran(&kiln.step_outcomes(&main, &args)), Vec::<&str>::new());
    fs::write(context.path().join("lib/two.txt"), "two\n").expect("change");
    let rerun = kiln.step_outcomes(&main, &args);
    assert_eq!(
        ran(&rerun),
        ["RUN --mount=from=lib,target=/lib cat /lib/two.txt > /two.txt"]
    );
}

#[test]
fn an_image_replaces_an_image_name_with_its_files_and_configuration() {
    let kiln = Kiln::with_busybox();
    let context = Context::new();
    context.write(
        "Dockerfile.base",
        "FROM busybox\nENV GREETING=hello\nWORKDIR /work\nRUN echo replaced > marker\n",
    );
    kiln.build(context.path(), &["-f", "Dockerfile.base", "-t", "other:1"]);
    context.write(
        "Dockerfile",
        "FROM docker.io/library/alpine:latest\n\
         RUN echo \"$GREETING from $(pwd) $(cat marker)\" > /out\n",
    );
    // `alpine` names docker.io/library/alpine:latest, as in BuildKit; the
    // store has no alpine, so only the named context can give it.
    let out = kiln.files(
        context.path(),
        &["--build-context", "alpine=docker-image://other:1"],
    );
    assert_eq!(
        fs::read_to_string(out.path().join("out")).expect("out"),
        "hello from /work replaced\n"
    );
    // Keyed by the image's digest: the same build is cached.
    let again = kiln.step_outcomes(
        context.path(),
        &["--build-context", "alpine=docker-image://other:1"],
    );
    assert_eq!(ran(&again), Vec::<&str>::new());
}

#[test]
fn an_oci_layout_gives_the_image_its_tag_names() {
    let kiln = Kiln::with_busybox();
    let context = Context::new();
    context.write("Dockerfile.base", "FROM busybox\nRUN echo v1 > /version\n");
    kiln.build(
        context.path(),
        &[
            "-f",
            "Dockerfile.base",
            "-t",
            "example/base:v1",
            "-o",
            "type=oci,dest=base.tar",
        ],
    );
    fs::create_dir(context.path().join("layout")).expect("layout");
    let status = std::process::Command::new("tar")
        .args(["-xf", "base.tar", "-C", "layout"])
        .current_dir(context.path())
        .status()
        .expect("tar");
    assert!(status.success());
    context.write(
        "Dockerfile",
        "FROM scratch AS base\nFROM busybox\nCOPY --from=base /version /\n",
    );
    let out = kiln.files(
        context.path(),
        &["--build-context", "base=oci-layout://layout:v1"],
    );
    assert_eq!(
        fs::read_to_string(out.path().join("version")).expect("version"),
        "v1\n"
    );
}

#[test]
fn a_tarball_url_is_a_named_context_and_a_main_context() {
    let kiln = Kiln::with_busybox();
    let files = Context::new();
    files.write("Dockerfile", "FROM busybox\nCOPY data.txt /from-main.txt\n");
    files.write("data.txt", "served\n");
    let server = kiln_testkit::FileServer::start(
        vec![("ctx.tar.gz".to_string(), tar_gz(files.path()))],
        "Wed, 21 Oct 2015 07:28:00 GMT",
    );
    let url = format!("http://{}/ctx.tar.gz", server.address);

    let context = Context::new();
    context.write("Dockerfile", "FROM busybox\nCOPY --from=web data.txt /\n");
    let named = kiln.files(context.path(), &["--build-context", &format!("web={url}")]);
    assert_eq!(
        fs::read_to_string(named.path().join("data.txt")).expect("data"),
        "served\n"
    );

    let out = tempfile::tempdir().expect("out");
    let dest = format!("type=local,dest={}", out.path().display());
    kiln.build_from(context.path(), &url, &["-o", &dest]);
    assert_eq!(
        fs::read_to_string(out.path().join("from-main.txt")).expect("main"),
        "served\n"
    );
}

#[test]
fn calls_and_the_warning_summary_read_the_dockerfile_of_a_url_context() {
    let kiln = Kiln::with_busybox();
    let files = Context::new();
    files.write(
        "Dockerfile",
        "# base holds the files\nFROM busybox as base\nCOPY data.txt /\n",
    );
    files.write("data.txt", "served\n");
    let server = kiln_testkit::FileServer::start(
        vec![("ctx.tar.gz".to_string(), tar_gz(files.path()))],
        "Wed, 21 Oct 2015 07:28:00 GMT",
    );
    let url = format!("http://{}/ctx.tar.gz", server.address);
    let elsewhere = tempfile::tempdir().expect("directory");
    let call = |call: &str| {
        kiln.command()
            .current_dir(elsewhere.path())
            .args(["build", "--call", call, &url])
            .output()
            .expect("kiln runs")
    };

    let targets = call("targets");
    let listed = String::from_utf8_lossy(&targets.stdout);
    assert!(targets.status.success(), "{targets:?}");
    assert!(
        listed.contains("base (default) holds the files"),
        "{listed}"
    );
    let check = call("check");
    let found = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "findings: {found}");
    assert!(found.contains("FromAsCasing"), "{found}");

    let build = kiln
        .command()
        .current_dir(elsewhere.path())
        .args(["build", "--progress=plain", &url])
        .output()
        .expect("kiln runs");
    let progress = String::from_utf8_lossy(&build.stderr);
    assert!(build.status.success(), "{progress}");
    assert!(
        progress.contains("1 warning found:\n - FromAsCasing:"),
        "{progress}"
    );
}

#[test]
fn source_date_epoch_from_a_stage_of_one_download_with_the_dockerfile_on_standard_input() {
    let kiln = Kiln::with_busybox();
    let files = Context::new();
    files.write("data.txt", "served\n");
    let server = kiln_testkit::FileServer::start(
        vec![("src.tar.gz".to_string(), tar_gz(files.path()))],
        "Wed, 21 Oct 2015 07:28:00 GMT",
    );
    let dockerfile = format!(
        "ARG SOURCE_DATE_EPOCH=src\n\
         FROM scratch AS src\n\
         ADD http://{}/src.tar.gz /\n\
         FROM busybox\n\
         ARG SOURCE_DATE_EPOCH\n\
         RUN echo \"$SOURCE_DATE_EPOCH\" > /epoch\n",
        server.address
    );
    let context = Context::new();
    let out = tempfile::tempdir().expect("out");
    let dest = format!("type=local,dest={}", out.path().display());
    let build = |dockerfile: &str| {
        kiln.run_with_input(
            context.path(),
            &["build", "-f", "-", "-o", &dest, "."],
            dockerfile.as_bytes(),
        )
    };
    let built = build(&dockerfile);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    // The download's Last-Modified, read by a second lowering of the same
    // Dockerfile: standard input is read once.
    assert_eq!(
        fs::read_to_string(out.path().join("epoch")).expect("epoch"),
        "1445412480\n"
    );

    let refused =
        build(&dockerfile.replace("ADD http", "COPY --from=busybox /bin/sh /sh\nADD http"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("<stdin>:3:1: SOURCE_DATE_EPOCH stage does not meet source-only requirements: unsupported COPY instruction"),
        "{stderr}"
    );
}

#[test]
fn a_tar_archive_on_standard_input_is_the_context() {
    let kiln = Kiln::with_busybox();
    let files = Context::new();
    files.write("Dockerfile", "FROM busybox\nCOPY data.txt /\n");
    files.write("data.txt", "from stdin\n");
    let archive = tar_gz(files.path());
    let out = tempfile::tempdir().expect("out");
    let dest = format!("type=local,dest={}", out.path().display());
    let output = kiln.run_with_input(files.path(), &["build", "-o", &dest, "-"], &archive);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        fs::read_to_string(out.path().join("data.txt")).expect("data"),
        "from stdin\n"
    );
}

#[test]
fn bad_build_contexts_are_clear_errors() {
    let kiln = Kiln::with_busybox();
    let context = Context::new();
    context.write("Dockerfile", "FROM scratch AS base\nFROM base\n");
    context.write("layout/index.json", r#"{"schemaVersion":2,"manifests":[]}"#);
    let mut report = String::new();
    for value in [
        "base",
        "base=./missing",
        "base=oci-layout://layout:v2",
        "base=ftp://example.com/x",
    ] {
        let output = kiln.try_build(context.path(), &["--build-context", value]);
        assert_eq!(output.status.code(), Some(1), "{value}");
        report.push_str(&format!(
            "$ kiln build --build-context {value} .\n{}\n",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r"\x1b\[[0-9;]*m", "");
    settings.bind(|| insta::assert_snapshot!(report));
}
