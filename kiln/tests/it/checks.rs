//! Build checks and outlines as users meet them: `kiln build --call=check`
//! (and `--check`), the warnings at the start and end of a build, `error=true`, and
//! `kiln build --call=outline`. What they print is pinned as snapshots.

use std::process::Output;

use crate::support::{require_root, Context, Kiln};

/// A Dockerfile that breaks several rules, one of them in a stage the
/// default target does not need. Its stages are on scratch: UndefinedVar
/// is only checked where the base image's environment is known, and
/// `--call=check` looks for base images in the store only.
const UNTIDY: &str = "FROM scratch AS Build\n\
    MAINTAINER me@example.org\n\
    ENV GREETING hello\n\
    COPY $SRC /src\n\
    \n\
    FROM busybox as unused\n\
    WORKDIR app\n\
    \n\
    FROM Build\n\
    CMD echo $GREETING\n";

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn context_with(dockerfile: &str) -> Context {
    let context = Context::new();
    context.write("Dockerfile", dockerfile);
    context
}

#[test]
fn check_lists_every_finding_with_its_line_and_exits_1() {
    let kiln = Kiln::new();
    let context = context_with(UNTIDY);
    let output = kiln.try_build(context.path(), &["--call=check"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(stderr(&output), "", "findings go to standard output");
    let report = stdout(&output);
    assert!(!report.contains("http"), "no links: {report}");
    insta::assert_snapshot!("check_untidy_dockerfile", report);

    let alias = kiln.try_build(context.path(), &["--check"]);
    assert_eq!(stdout(&alias), report, "--check is --call=check");
    assert_eq!(alias.status.code(), Some(1));
}

#[test]
fn check_of_a_tidy_dockerfile_says_so() {
    let kiln = Kiln::new();
    let context = context_with("FROM busybox AS build\nCOPY Dockerfile /\nCMD [\"sh\"]\n");
    let output = kiln.try_build(context.path(), &["--call=check"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "Check complete, no warnings found.\n");
}

#[test]
fn check_as_json() {
    let kiln = Kiln::new();
    let context = context_with("FROM busybox\nMAINTAINER me\n");
    let output = kiln.try_build(context.path(), &["--call=check,format=json"]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["warnings"][0]["ruleName"], "MaintainerDeprecated");
    assert_eq!(
        report["warnings"][0]["location"]["ranges"][0]["start"]["line"],
        2
    );
}

#[test]
fn skip_directive_and_skip_comment() {
    let kiln = Kiln::new();
    let context = context_with(
        "# check=skip=StageNameCasing,MaintainerDeprecated\n\
         FROM scratch AS Build\n\
         MAINTAINER me@example.org\n\
         # check=skip=UndefinedVar // SRC comes from the CI\n\
         COPY $SRC /src\n\
         COPY $DST /dst\n",
    );
    let output = kiln.try_build(context.path(), &["--call=check"]);
    let report = stdout(&output);
    let rules: Vec<&str> = report
        .lines()
        .filter_map(|line| line.strip_prefix("WARNING: "))
        .collect();
    assert_eq!(
        rules,
        ["UndefinedVar - Variables should be defined before they are used"],
        "{report}"
    );
    assert!(
        report.contains("Dockerfile:6: Usage of undefined variable '$DST'"),
        "{report}"
    );
    let all = kiln.try_build(
        context.path(),
        &[
            "--call=check",
            "--build-arg",
            "BUILDKIT_DOCKERFILE_CHECK=skip=all",
        ],
    );
    assert!(all.status.success(), "{}", stderr(&all));
    assert_eq!(stdout(&all), "Check complete, no warnings found.\n");
}

#[test]
fn a_build_warns_before_its_steps_about_the_stages_it_builds() {
    let kiln = Kiln::with_busybox();
    let context = context_with(UNTIDY);
    let output = kiln.try_build(
        context.path(),
        &["--progress", "plain", "-o", "type=local,dest=../out"],
    );
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    let first_step = log.find("#1 ").expect("steps are shown");
    let warnings: Vec<&str> = log[..first_step].lines().collect();
    assert_eq!(
        warnings,
        [
            "WARN: StageNameCasing: Stage name 'Build' should be lowercase (line 1)",
            "WARN: MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label (line 2)",
            "WARN: LegacyKeyValueFormat: \"ENV key=value\" should be used instead of legacy \"ENV key value\" format (line 3)",
            "WARN: UndefinedVar: Usage of undefined variable '$SRC' (line 4)",
            "WARN: FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 6)",
            "WARN: JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 10)",
        ],
        "the unused stage's relative WORKDIR is not the build's concern"
    );
    let summary: Vec<String> = warnings
        .iter()
        .map(|warning| warning.replacen("WARN: ", " - ", 1))
        .collect();
    assert!(
        log.ends_with(&format!("6 warnings found:\n{}\n", summary.join("\n"))),
        "the findings again after the build: {log}"
    );
}

#[test]
fn error_true_fails_the_build_before_any_step() {
    require_root();
    let kiln = Kiln::new();
    let context = context_with("# check=error=true\nFROM scratch as base\nCOPY Dockerfile /\n");
    let output = kiln.try_build(context.path(), &["--progress", "plain"]);
    assert_eq!(output.status.code(), Some(1));
    let log = stderr(&output);
    assert!(!log.contains("#1"), "no step ran: {log}");
    insta::assert_snapshot!("check_error_true_build", log);
}

#[test]
fn outline_of_a_target() {
    let kiln = Kiln::new();
    let context = context_with(
        "# VERSION of the tool\n\
         ARG VERSION=1.2\n\
         ARG UNUSED=x\n\
         FROM busybox:${VERSION} AS tools\n\
         RUN --mount=type=secret,id=netrc,required --mount=type=ssh true\n\
         \n\
         # app is what ships\n\
         FROM scratch AS app\n\
         # PORT the server listens on\n\
         ARG PORT=8080\n\
         COPY --from=tools /bin/busybox /\n\
         RUN --mount=type=secret,id=token true\n",
    );
    let text = kiln.ok(&[
        "build",
        "--call=outline",
        "--build-arg",
        "PORT=80",
        context.path().to_str().expect("UTF-8 path"),
    ]);
    insta::assert_snapshot!("outline_of_a_target", text);

    let output = kiln.try_build(context.path(), &["--call=outline,format=json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let outline: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let names: Vec<&str> = outline["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|arg| arg["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["VERSION", "PORT"]);
    assert_eq!(outline["secrets"][0]["name"], "netrc");
    assert_eq!(outline["secrets"][0]["required"], true);
    assert_eq!(outline["ssh"][0]["name"], "default");
}
