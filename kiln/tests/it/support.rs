//! What the builder's integration tests share: a store of their own, the
//! `kiln` binary, contexts in temporary directories, and base images made
//! from Debian's busybox-static by kiln itself.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Tests that create images owned by root, device nodes and layers with
/// arbitrary owners need root, as CI runs them.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test builds images with files owned by other users and must run as root (sudo scripts/test)"
    );
}

pub use kiln_testkit::require_tool;

/// Runs a tool (skopeo, umoci, ...), expecting success; returns its
/// standard output.
pub fn run_tool(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `kiln` binary the tests run: this build's, or `KILN_BIN`'s to test
/// another one.
pub fn kiln_binary() -> PathBuf {
    std::env::var_os("KILN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kiln")))
}

/// A store of its own and the `kiln` binary working on it.
pub struct Kiln {
    pub root: tempfile::TempDir,
}

impl Default for Kiln {
    fn default() -> Self {
        Self::new()
    }
}

impl Kiln {
    pub fn new() -> Self {
        Kiln {
            root: tempfile::tempdir().expect("store directory"),
        }
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(kiln_binary());
        command
            .env("KILN_ROOT", self.root.path())
            .env_remove("SOURCE_DATE_EPOCH");
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("kiln runs")
    }

    /// Runs kiln in `dir` with `input` on its standard input.
    pub fn run_with_input(&self, dir: &Path, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command()
            .current_dir(dir)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kiln runs");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), input)
            .expect("writing to kiln's standard input");
        child.wait_with_output().expect("kiln ends")
    }

    /// Runs kiln, expecting success; returns standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "kiln {args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Asserts that `kiln check` finds the store consistent (it lists the
    /// problems it finds on standard output).
    pub fn assert_consistent(&self) {
        let check = self.run(&["check"]);
        assert!(
            check.status.success(),
            "kiln check: {}",
            String::from_utf8_lossy(&check.stdout)
        );
    }

    /// Runs kiln, expecting failure; returns standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            !output.status.success(),
            "kiln {args:?} succeeded but should have failed"
        );
        assert_eq!(output.status.code(), Some(1));
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Builds `context` (a directory with a Dockerfile) the way a user does,
    /// from inside it with `.` as the context, and returns the image digest
    /// kiln prints.
    pub fn build(&self, context: &Path, extra: &[&str]) -> String {
        self.build_from(context, ".", extra)
    }

    /// Builds `context_arg` (relative to `cwd`, as a user types it) from
    /// `cwd` and returns the image digest kiln prints.
    pub fn build_from(&self, cwd: &Path, context_arg: &str, extra: &[&str]) -> String {
        let output = self.try_build_from(cwd, context_arg, extra);
        assert!(
            output.status.success(),
            "kiln build {extra:?} {context_arg} in {} failed:\n{}",
            cwd.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Runs `kiln build` as [`Kiln::build`] does, whatever comes of it.
    pub fn try_build(&self, context: &Path, extra: &[&str]) -> Output {
        self.try_build_from(context, ".", extra)
    }

    fn try_build_from(&self, cwd: &Path, context_arg: &str, extra: &[&str]) -> Output {
        self.command()
            .current_dir(cwd)
            .arg("build")
            .args(extra)
            .arg(context_arg)
            .output()
            .expect("kiln runs")
    }

    /// A store with busybox in it, for tests that run steps (as root, with
    /// runc).
    pub fn with_busybox() -> Self {
        require_root();
        require_tool("runc", "runc");
        let kiln = Kiln::new();
        kiln.busybox();
        kiln
    }

    /// Makes `busybox:latest` in the store: busybox-static's binary, its
    /// applets, a passwd with `root`, `app` (1000:1000) and `nobody`, and a
    /// group file with `staff` (50).
    pub fn busybox(&self) {
        require_tool("busybox", "busybox-static");
        self.base_image("busybox", "busybox:latest", "gzip");
    }

    /// Makes `gcc:12` in the store: busybox's files plus Debian's gcc and
    /// libc6-dev with everything they depend on.
    pub fn gcc(&self) {
        require_tool("busybox", "busybox-static");
        require_tool("gcc", "gcc");
        // zstd: the compiler's 200 MB would take seconds to gzip.
        self.base_image("gcc", "gcc:12", "zstd");
    }

    fn base_image(&self, kind: &str, name: &str, compression: &str) {
        let context = Context::new();
        base_rootfs(kind, &context.path().join("rootfs"));
        context.write("Dockerfile", "FROM scratch\nCOPY rootfs/ /\nCMD [\"sh\"]\n");
        self.build(context.path(), &["-t", name, "--compression", compression]);
    }

    /// Builds with `--metadata-file` and returns the `kiln.steps` it lists
    /// (one JSON object per step: stage, step, cached, explain, times).
    pub fn build_steps(&self, context: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
        let metadata = tempfile::NamedTempFile::new().expect("metadata file");
        let path = metadata.path().to_str().expect("utf-8").to_string();
        let mut args = vec!["--metadata-file", path.as_str()];
        args.extend_from_slice(extra);
        self.build(context, &args);
        let metadata: serde_json::Value =
            serde_json::from_slice(&fs::read(metadata.path()).expect("metadata"))
                .expect("the metadata file is JSON");
        metadata["kiln.steps"]
            .as_array()
            .expect("kiln.steps")
            .clone()
    }

    /// Builds and returns, for each step, its instruction and whether it
    /// came from the cache.
    pub fn step_outcomes(&self, context: &Path, extra: &[&str]) -> Vec<(String, bool)> {
        self.build_steps(context, extra)
            .iter()
            .map(|step| {
                (
                    step["step"].as_str().expect("step").to_string(),
                    step["cached"].as_bool().expect("cached"),
                )
            })
            .collect()
    }

    /// Reads an image's configuration through `kiln inspect`.
    pub fn inspect(&self, image: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["inspect", image])).expect("inspect prints JSON")
    }

    /// Builds and writes the target stage's files to a fresh directory.
    pub fn files(&self, context: &Path, extra: &[&str]) -> tempfile::TempDir {
        let out = tempfile::tempdir().expect("output directory");
        let dest = format!("type=local,dest={}", out.path().display());
        let mut args = vec!["-o", dest.as_str()];
        args.extend_from_slice(extra);
        self.build(context, &args);
        out
    }
}

/// The instructions that ran (missed the cache) of [`Kiln::step_outcomes`].
pub fn ran(steps: &[(String, bool)]) -> Vec<&str> {
    steps
        .iter()
        .filter(|(_, cached)| !cached)
        .map(|(step, _)| step.as_str())
        .collect()
}

/// A build context in a temporary directory.
pub struct Context {
    dir: tempfile::TempDir,
}

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}

impl Context {
    pub fn new() -> Self {
        Context {
            dir: tempfile::tempdir().expect("context directory"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, path: &str, content: &str) -> PathBuf {
        let full = self.dir.path().join(path);
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent).expect("create parent");
        }
        fs::write(&full, content).expect("write file");
        full
    }
}

/// Assembles a base image's root file system with
/// testdata/images/rootfs.sh (`busybox` or `gcc`).
pub fn base_rootfs(kind: &str, root: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/images/rootfs.sh");
    let output = Command::new(&script)
        .arg(kind)
        .arg(root)
        .output()
        .expect("rootfs.sh runs");
    assert!(
        output.status.success(),
        "{} {kind} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `text` as a regular expression that matches exactly it.
pub fn literal(text: &str) -> String {
    let mut pattern = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern
}
