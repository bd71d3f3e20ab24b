//! What users read, pinned as insta snapshots (in `snapshots/` beside this
//! file): Dockerfile errors, plain progress, a failed step's report,
//! `kiln images`, `kiln du`, `kiln debug graph` and the help.
//!
//! Filters replace what differs between machines and runs (digests, image
//! IDs, temporary paths, times, durations, sizes and dates) with
//! placeholders; those that stand in a table column keep its width, so that
//! the snapshot shows the layout users see.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::{kiln_binary, literal, require_root, Context, Kiln};

/// The filters every snapshot needs: the store's and the context's
/// directories, digests, image IDs, dates, and progress times and sizes.
fn filtered(kiln: &Kiln, context: &Path) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(&literal(&kiln.root.path().display().to_string()), "[STORE]");
    settings.add_filter(&literal(&context.display().to_string()), "[CONTEXT]");
    settings.add_filter(r"sha256:[0-9a-f]{64}", "sha256:[DIGEST]");
    // `kiln images` shows 12 digits of the digest.
    settings.add_filter(r"sha256:[0-9a-f]{12}\b", "sha256:[SHORT-ID..]");
    settings.add_filter(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z",
        "YYYY-MM-DDTHH:MM:SSZ",
    );
    // Plain progress: `#3 0.064 text` and `#3 DONE 1.5s (1.1 MB)`.
    settings.add_filter(r"(?m)^(#\d+) \d+\.\d{3} ", "$1 [TIME] ");
    settings.add_filter(r"DONE \d+\.\ds", "DONE [DURATION]");
    settings.add_filter(r"\(\d+(\.\d)? ?[kMGT]?B\)", "([SIZE])");
    settings
}

/// Adds a filter for a column of sizes that ends lines, right-aligned in
/// `width` characters after the first `start` ones.
fn size_column(settings: &mut insta::Settings, start: usize, width: usize) {
    settings.add_filter(
        &format!(r"(?m)^(.{{{start}}}) *\d+(\.\d)?[kMGT]?B$"),
        format!("${{1}}{:>width$}", "[SIZE]"),
    );
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs kiln in `dir`, expecting success; returns standard output.
fn ok_in(kiln: &Kiln, dir: &Path, args: &[&str]) -> String {
    let output = kiln
        .command()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("kiln runs");
    assert!(
        output.status.success(),
        "kiln {args:?} failed:\n{}",
        stderr(&output)
    );
    stdout(&output)
}

/// Builds with plain progress from inside `context`, expecting failure;
/// returns standard error.
fn failed_build(kiln: &Kiln, context: &Path, extra: &[&str]) -> String {
    let mut args = vec!["--progress", "plain"];
    args.extend_from_slice(extra);
    let output = kiln.try_build(context, &args);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    stderr(&output)
}

#[test]
fn dockerfile_errors() {
    // kiln build reads no Dockerfile without root; the store needs no image.
    require_root();
    let kiln = Kiln::new();
    let cases = [
        (
            "dockerfile_error_unknown_instruction",
            "FROM scratch\nCOPY hello.txt /\nCOPPY . /src\n",
            &[][..],
        ),
        (
            "dockerfile_error_unknown_flag",
            "FROM scratch\nCOPY --chmown=1000 hello.txt /\n",
            &[],
        ),
        (
            "dockerfile_error_stage_index_out_of_range",
            "FROM scratch AS build\nCOPY hello.txt /\nFROM scratch\nCOPY --from=3 /hello.txt /\n",
            &[],
        ),
        (
            "dockerfile_error_undefined_target_stage",
            "FROM scratch AS build\nCOPY hello.txt /\nFROM scratch\nCOPY --from=build /hello.txt /\n",
            &["--target", "biuld"],
        ),
    ];
    for (name, dockerfile, extra) in cases {
        let context = Context::new();
        context.write("hello.txt", "hello\n");
        context.write("Dockerfile", dockerfile);
        let report = failed_build(&kiln, context.path(), extra);
        let mut settings = filtered(&kiln, context.path());
        settings.set_description(format!(
            "kiln build --progress plain {} with this Dockerfile:\n{dockerfile}",
            [extra, &["."]].concat().join(" ")
        ));
        settings.bind(|| insta::assert_snapshot!(name, report));
    }
}

/// A small build: a COPY, a RUN that prints two lines, a COPY with flags.
const SMALL_BUILD: &str = "FROM busybox\n\
    COPY hello.txt /hello.txt\n\
    RUN cat /hello.txt && echo second line\n\
    COPY --chmod=600 hello.txt /again.txt\n";

#[test]
fn plain_progress_of_a_small_build() {
    let kiln = Kiln::with_busybox();
    let context = Context::new();
    context.write("hello.txt", "hello\n");
    context.write("Dockerfile", SMALL_BUILD);
    let output = kiln.try_build(context.path(), &["--progress", "plain", "-t", "app"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let mut settings = filtered(&kiln, context.path());
    settings.set_description(format!(
        "kiln build --progress plain -t app . with this Dockerfile:\n{SMALL_BUILD}"
    ));
    settings.bind(|| insta::assert_snapshot!(stderr(&output)));
}

#[test]
fn a_failed_run_step() {
    let kiln = Kiln::with_busybox();
    let context = Context::new();
    // Its lines all on standard output: the order of lines from two pipes
    // is not the same from one run to the next.
    let dockerfile = "FROM busybox\n\
        RUN echo preparing && echo almost there && exit 3\n";
    context.write("Dockerfile", dockerfile);
    let report = failed_build(&kiln, context.path(), &[]);
    let mut settings = filtered(&kiln, context.path());
    settings.set_description(format!(
        "kiln build --progress plain . with this Dockerfile:\n{dockerfile}"
    ));
    settings.bind(|| insta::assert_snapshot!(report));
}

#[test]
fn images_and_du() {
    let kiln = Kiln::with_busybox();
    let context = Context::new();
    context.write("hello.txt", "hello\n");
    context.write("Dockerfile", SMALL_BUILD);
    kiln.build(context.path(), &["--progress", "quiet", "-t", "app"]);
    ok_in(
        &kiln,
        context.path(),
        &["tag", "app", "registry.example:5000/team/app:1.0"],
    );
    // And an image without a name.
    context.write("Dockerfile", "FROM busybox\nRUN echo other > /other\n");
    kiln.build(context.path(), &["--progress", "quiet"]);

    let mut settings = filtered(&kiln, context.path());
    // NAME (40), DIGEST (19), CREATED (21), then SIZE (8).
    size_column(&mut settings, 83, 8);
    let images = ok_in(&kiln, context.path(), &["images"]);
    settings.set_description("kiln images: app (also tagged registry.example:5000/team/app:1.0), busybox and an image without a name");
    settings.bind(|| insta::assert_snapshot!("images", images));

    let mut settings = filtered(&kiln, context.path());
    // The kind (30), then the size (10).
    size_column(&mut settings, 31, 10);
    let du = ok_in(&kiln, context.path(), &["du"]);
    settings.set_description("kiln du after the builds of kiln images' snapshot");
    settings.bind(|| insta::assert_snapshot!("du", du));
}

#[test]
fn debug_graph_of_a_small_dockerfile() {
    // An empty store: the base image stays a name, as it is when no build
    // has pulled it, and the graph needs no root.
    let kiln = Kiln::new();
    let context = Context::new();
    let dockerfile = "ARG VERSION=1.0\n\
        FROM busybox AS build\n\
        ARG VERSION\n\
        ENV GREETING=hello\n\
        WORKDIR /src\n\
        COPY hello.txt .\n\
        RUN echo \"$GREETING $VERSION\" > /out\n\
        FROM scratch\n\
        COPY --from=build /out /out\n\
        CMD [\"/out\"]\n";
    context.write("hello.txt", "hello\n");
    context.write("Dockerfile", dockerfile);
    // The target platform is given: the host's differs between machines.
    let graph = ok_in(
        &kiln,
        context.path(),
        &["debug", "graph", "--platform", "linux/amd64", "."],
    );
    let mut settings = filtered(&kiln, context.path());
    settings.add_filter(
        r#"(?s)"build_platform": \{[^}]*\}"#,
        r#""build_platform": "[THIS MACHINE'S]""#,
    );
    settings.set_description(format!(
        "kiln debug graph --platform linux/amd64 . with this Dockerfile:\n{dockerfile}"
    ));
    settings.bind(|| insta::assert_snapshot!(graph));
}

/// The help a user reads: without the variables whose values clap would
/// show in it.
fn help(args: &[&str]) -> String {
    let output = Command::new(kiln_binary())
        .args(args)
        .env_remove("KILN_ROOT")
        .env_remove("KILN_RUNTIME")
        .env_remove("KILN_GC_KEEP_STORAGE")
        .env_remove("BUILDKIT_PROGRESS")
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("CLICOLOR_FORCE")
        .output()
        .expect("kiln runs");
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
}

#[test]
fn help_texts() {
    insta::assert_snapshot!("help", help(&["--help"]));
    insta::assert_snapshot!("build_help", help(&["build", "--help"]));
}
