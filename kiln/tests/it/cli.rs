//! The `kiln` command line: exit codes, error reports and `debug graph`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A store of its own for each test process, never the machine's.
fn store_root() -> PathBuf {
    std::env::temp_dir().join(format!("kiln-cli-store-{}", std::process::id()))
}

fn kiln_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.env("KILN_ROOT", store_root());
    command
}

fn kiln(args: &[&str]) -> Output {
    kiln_command().args(args).output().expect("kiln runs")
}

fn kiln_with_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = kiln_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("kiln exits")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn testdata(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(path)
        .display()
        .to_string()
}

/// A context directory of its own for one test.
struct Context(PathBuf);

impl Context {
    fn new(name: &str, dockerfile: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kiln-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create context");
        std::fs::write(dir.join("Dockerfile"), dockerfile).expect("write Dockerfile");
        Context(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn graph(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "kiln failed: {}", stderr(output));
    serde_json::from_slice(&output.stdout).expect("debug graph prints JSON")
}

#[test]
fn dockerfile_errors_name_file_line_and_column_and_show_the_line() {
    let context = Context::new("typo", "FROM scratch\n  RUUN echo hi\n");
    let output = kiln(&["build", context.path()]);
    assert_eq!(output.status.code(), Some(1));
    let dockerfile = format!("{}/Dockerfile", context.path());
    assert_eq!(
        stderr(&output),
        format!("error: {dockerfile}:2:3: unknown instruction: RUUN (did you mean RUN?)\n  |\n2 |   RUUN echo hi\n  |   ^\n")
    );
}

#[test]
fn a_missing_dockerfile_or_context_is_named() {
    let context = Context::new("no-dockerfile", "FROM scratch\n");
    std::fs::remove_file(context.0.join("Dockerfile")).expect("remove");
    let output = kiln(&["build", context.path()]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.starts_with(&format!(
            "error: reading the Dockerfile {}/Dockerfile",
            context.path()
        )),
        "{message}"
    );
    assert!(
        message.contains("caused by: No such file or directory"),
        "{message}"
    );
    let output = kiln(&["build", "/nonexistent/context"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: cannot use the build context /nonexistent/context\n  caused by: No such file or directory (os error 2)\n"
    );
    let file = Context::new("context-is-a-file", "FROM scratch\n");
    let dockerfile = format!("{}/Dockerfile", file.path());
    let output = kiln(&["build", &dockerfile]);
    assert_eq!(
        stderr(&output),
        format!("error: the build context {dockerfile} is not a directory\n")
    );
}

#[test]
fn malformed_command_lines_exit_with_2() {
    assert_eq!(kiln(&["build", "--no-such-flag"]).status.code(), Some(2));
    assert_eq!(kiln(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn bad_option_values_are_explained() {
    let context = Context::new("options", "FROM scratch\n");
    let output = kiln(&["build", "--platform", "linux/", context.path()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("invalid --platform \"linux/\""),
        "{}",
        stderr(&output)
    );
    let output = kiln(&["build", "--label", "novalue", context.path()]);
    assert!(
        stderr(&output).contains("invalid --label \"novalue\": expected KEY=VALUE"),
        "{}",
        stderr(&output)
    );
    let output = kiln(&["build", "--allow", "device", context.path()]);
    assert!(
        stderr(&output).contains("unknown --allow entitlement"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn debug_graph_shows_independent_stages() {
    let output = kiln(&["debug", "graph", &testdata("examples/multistage")]);
    let graph = graph(&output);
    let stages: Vec<(String, Vec<u64>)> = graph["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            let deps = s["depends_on"]
                .as_array()
                .expect("deps")
                .iter()
                .filter_map(|d| d.as_u64())
                .collect();
            (s["name"].as_str().expect("name").to_string(), deps)
        })
        .collect();
    assert_eq!(
        stages,
        [
            ("app".to_string(), vec![]),
            ("docs".to_string(), vec![]),
            ("stage-2".to_string(), vec![0, 1])
        ]
    );
    assert_eq!(graph["stages"][0]["base"]["reference"], "busybox:latest");
}

#[test]
fn debug_graph_applies_target_build_args_and_platform() {
    let output = kiln(&[
        "debug",
        "graph",
        "--target",
        "docs",
        "--build-arg",
        "BASE=alpine:3.20",
        "--platform",
        "linux/arm64",
        &testdata("examples/multistage"),
    ]);
    let graph = graph(&output);
    assert_eq!(graph["stages"].as_array().map(Vec::len), Some(1));
    assert_eq!(graph["stages"][0]["base"]["reference"], "alpine:3.20");
    assert_eq!(graph["target_platform"]["architecture"], "arm64");
}

#[test]
fn build_args_can_come_from_the_environment() {
    let context = Context::new("envarg", "FROM scratch\nARG FROM_ENV\nRUN echo $FROM_ENV\n");
    let output = kiln_command()
        .args(["debug", "graph", "--build-arg", "FROM_ENV", context.path()])
        .env("FROM_ENV", "from the environment")
        .output()
        .expect("kiln runs");
    let graph = graph(&output);
    let env = graph["stages"][0]["steps"][1]["action"]["env"]
        .as_array()
        .expect("env")
        .clone();
    assert!(
        env.contains(&serde_json::json!("FROM_ENV=from the environment")),
        "{env:?}"
    );
}

#[test]
fn the_dockerfile_can_come_from_standard_input() {
    let context = Context::new("stdin", "FROM scratch\n");
    let output = kiln_with_stdin(
        &["debug", "graph", "-f", "-", context.path()],
        "FROM busybox\nRUN true\n",
    );
    let graph = graph(&output);
    assert_eq!(graph["stages"][0]["base"]["reference"], "busybox");
}

#[test]
fn errors_in_a_dockerfile_from_standard_input_name_it() {
    let context = Context::new("stdin-error", "FROM scratch\n");
    let output = kiln_with_stdin(
        &["debug", "graph", "-f", "-", context.path()],
        "FROM scratch\nRUUN true\n",
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with("error: <stdin>:2:1: unknown instruction: RUUN"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unused_build_args_warn() {
    let context = Context::new("unused", "FROM scratch\n");
    let output = kiln(&["debug", "graph", "--build-arg", "NOPE=1", context.path()]);
    assert!(output.status.success());
    assert_eq!(
        stderr(&output),
        "warning: build arguments not consumed by any ARG instruction: NOPE\n"
    );
}

#[test]
fn ignore_file_errors_point_at_the_pattern() {
    let context = Context::new("ignore", "FROM scratch\n");
    std::fs::write(context.0.join(".dockerignore"), "ok\n[broken\n").expect("write ignore file");
    let output = kiln(&["build", context.path()]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("/.dockerignore:2:1: invalid pattern \"[broken\""),
        "{message}"
    );
}

#[test]
fn shell_completions_and_man_pages_come_from_the_command_line() {
    let output = kiln(&["completion", "bash"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let script = String::from_utf8_lossy(&output.stdout);
    assert!(
        script.contains("--no-cache-filter"),
        "build's flags complete"
    );
    // The script is valid bash.
    let check = Command::new("bash")
        .args(["-n", "-c", &script])
        .output()
        .expect("bash runs");
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(kiln(&["completion", "tcsh"]).status.code() == Some(2));

    let dir = tempfile::tempdir().expect("temporary directory");
    let pages = dir.path().join("man1");
    let output = kiln(&["man", pages.to_str().expect("utf-8")]);
    assert!(output.status.success(), "{}", stderr(&output));
    let build = std::fs::read_to_string(pages.join("kiln-build.1")).expect("kiln-build.1");
    assert!(
        build.starts_with(".ie") || build.contains(".TH kiln-build"),
        "{build}"
    );
    assert!(
        build.contains("no\\-cache\\-filter"),
        "the page lists build's flags"
    );
    assert!(pages.join("kiln.1").is_file());
    assert!(pages.join("kiln-debug-graph.1").is_file());
}
