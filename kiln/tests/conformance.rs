//! BuildKit's Dockerfile integration tests as kiln cases: one directory per
//! BuildKit test under testdata/conformance (the format is in its README),
//! each built with the real sandbox from inside a copy of its context, the
//! way a user runs `kiln build .`.
//!
//! `cargo test -p kiln --test conformance -- FILTER` runs some;
//! `KILN_CONFORMANCE_README=write` rewrites README.md's table from the cases;
//! `KILN_BIN` runs the cases against another kiln binary.

#[path = "it/support.rs"]
mod support;

use support::Kiln;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use serde::Deserialize;

/// Longer than any case needs; a build that hangs fails its case instead of
/// the whole run.
const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
const README_BEGIN: &str = "<!-- conformance table: written by KILN_CONFORMANCE_README=write cargo test -p kiln --test conformance -->";
const README_END: &str = "<!-- end of conformance table -->";

/// Every tag of the base image the cases' Dockerfiles use, all one image.
const BASE_NAMES: &[&str] = &[
    "busybox:1.36",
    "alpine:latest",
    "alpine:3.18",
    "debian:bookworm",
    "debian:bullseye-slim",
    "debian:latest",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    summary: String,
    skip: Option<String>,
    /// Whether the files of `http/` are served with a Last-Modified.
    #[serde(default = "yes")]
    http_last_modified: bool,
    #[serde(default)]
    build: Vec<Build>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Build {
    #[serde(default)]
    args: Vec<String>,
    #[serde(default = "dot")]
    context: String,
    #[serde(default = "dot")]
    dir: String,
    run: Option<String>,
    #[serde(default)]
    fails: bool,
    #[serde(default)]
    stderr: Vec<String>,
    #[serde(default)]
    stderr_not: Vec<String>,
    #[serde(default)]
    stdout: Vec<String>,
    #[serde(default)]
    stdout_not: Vec<String>,
    #[serde(default)]
    file: Vec<FileCheck>,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    config_absent: Option<ConfigAbsent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigAbsent {
    pointers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCheck {
    path: String,
    content: Option<String>,
    contains: Option<String>,
    not_contains: Option<String>,
    kind: Option<String>,
    mode: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
    target: Option<String>,
    same_file_as: Option<String>,
    entries: Option<Vec<String>>,
}

fn dot() -> String {
    ".".to_string()
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/conformance")
}

/// The case directories, as `<file>/<test>` names.
fn case_names() -> Vec<String> {
    let mut names = Vec::new();
    let Ok(files) = fs::read_dir(cases_dir()) else {
        return names;
    };
    for file in files.flatten() {
        if !file.path().is_dir() {
            continue;
        }
        for test in fs::read_dir(file.path()).into_iter().flatten().flatten() {
            if test.path().is_dir() {
                names.push(format!(
                    "{}/{}",
                    file.file_name().to_string_lossy(),
                    test.file_name().to_string_lossy()
                ));
            }
        }
    }
    names.sort();
    names
}

fn load_case(name: &str) -> Result<Case, String> {
    let path = cases_dir().join(name).join("case.toml");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn main() {
    let arguments = Arguments::from_args();
    let template: Arc<Template> = Arc::new(OnceLock::new());
    let mut trials = vec![
        Trial::test("inventory: every BuildKit test has a case", check_inventory),
        Trial::test("readme: the table counts the cases", check_readme_table),
    ];
    for name in case_names() {
        let trial = match load_case(&name) {
            Err(message) => Trial::test(name, move || Err(message.into())),
            Ok(case) => {
                let skipped = case.skip.is_some();
                let template = template.clone();
                let case_name = name.clone();
                Trial::test(name, move || run_case(&case_name, &case, &template))
                    .with_ignored_flag(skipped)
            }
        };
        trials.push(trial);
    }
    let conclusion = libtest_mimic::run(&arguments, trials);
    // The template store goes with the last reference to it.
    drop(template);
    conclusion.exit();
}

/// The store with the base images, made once per run (removed at the end)
/// and copied for each case.
type Template = OnceLock<Kiln>;

fn base_store(template: &Template) -> PathBuf {
    template
        .get_or_init(|| {
            let kiln = Kiln::with_busybox();
            for name in BASE_NAMES {
                kiln.ok(&["tag", "busybox:latest", name]);
            }
            kiln
        })
        .root
        .path()
        .to_path_buf()
}

struct Servers {
    http: Option<kiln_testkit::FileServer>,
    registry: Option<kiln_testkit::Registry>,
}

impl Servers {
    fn substitute(&self, text: &str) -> String {
        let mut text = text.to_string();
        if let Some(http) = &self.http {
            text = text.replace("{{HTTP}}", &format!("http://{}", http.address));
        }
        if let Some(registry) = &self.registry {
            text = text.replace("{{REGISTRY}}", registry.name("").trim_end_matches('/'));
        }
        text
    }
}

fn run_case(name: &str, case: &Case, template: &Template) -> Result<(), Failed> {
    let store_template = base_store(template);
    let source = cases_dir().join(name);
    let work = tempfile::Builder::new()
        .prefix("kiln-case-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let context = work.path().join("context");
    let store = work.path().join("store");
    copy_tree(&source.join("context"), &context)?;
    copy_tree(&store_template, &store)?;

    let case_text = fs::read_to_string(source.join("case.toml")).unwrap_or_default();
    let uses_registry =
        case_text.contains("{{REGISTRY}}") || tree_mentions(&context, "{{REGISTRY}}");
    let servers = Servers {
        http: source
            .join("http")
            .is_dir()
            .then(|| served_files(&source.join("http")))
            .transpose()?
            .map(|files| {
                let last_modified = if case.http_last_modified {
                    LAST_MODIFIED
                } else {
                    ""
                };
                kiln_testkit::FileServer::start(files, last_modified)
            }),
        registry: uses_registry
            .then(|| kiln_testkit::Registry::start(kiln_testkit::Setup::Anonymous)),
    };
    substitute_tree(&context, &servers)?;

    let setup = source.join("setup.sh");
    if setup.is_file() {
        shell(&[setup.as_os_str()], &context, "setup.sh")?;
    }

    for (index, build) in case.build.iter().enumerate() {
        let label = format!("build {}", index + 1);
        if let Some(script) = &build.run {
            let script = servers.substitute(script);
            shell(
                &["-c".as_ref(), script.as_ref()],
                &context,
                &format!("{label}: `run`"),
            )?;
        }
        run_build(&label, build, &context, &store, work.path(), &servers)?;
    }
    Ok(())
}

fn run_build(
    label: &str,
    build: &Build,
    context: &Path,
    store: &Path,
    work: &Path,
    servers: &Servers,
) -> Result<(), Failed> {
    let cwd = context.join(&build.dir);
    let depth = Path::new(&build.dir)
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count();
    let out_arg = format!("{}../out", "../".repeat(depth));
    let out = work.join("out");
    let args: Vec<String> = build.args.iter().map(|a| servers.substitute(a)).collect();
    let context_arg = servers.substitute(&build.context);
    let checks_config = !build.config.is_empty() || build.config_absent.is_some();
    let exports_files = !build.file.is_empty();
    if build.fails && (exports_files || checks_config) {
        return Err(
            format!("{label}: a build that must fail has no files or image to check").into(),
        );
    }

    let mut command_args = vec!["build".to_string()];
    command_args.extend(args.iter().cloned());
    if exports_files {
        let _ = fs::remove_dir_all(&out);
        command_args.push("-o".into());
        command_args.push(format!("type=local,dest={out_arg}"));
    } else if checks_config {
        command_args.push("-t".into());
        command_args.push("conformance:latest".into());
    }
    command_args.push(context_arg.clone());
    if checks_config {
        // What is inspected must be this build's image, never an earlier one.
        kiln(store, &cwd, &["rmi".into(), "conformance:latest".into()])?;
    }
    let result = kiln(store, &cwd, &command_args)?;
    let mut problems = Vec::new();
    if result.stderr.contains("panicked at") {
        problems.push("kiln panicked".to_string());
    }
    match (build.fails, result.code) {
        (true, Some(0)) => problems.push("the build succeeded but should have failed".into()),
        (true, Some(1)) | (false, Some(0)) => {}
        (_, code) => problems.push(format!("kiln exited with {code:?}")),
    }
    for expected in &build.stderr {
        if !result.stderr.contains(expected.as_str()) {
            problems.push(format!("standard error lacks {expected:?}"));
        }
    }
    for unexpected in &build.stderr_not {
        if result.stderr.contains(unexpected.as_str()) {
            problems.push(format!("standard error holds {unexpected:?}"));
        }
    }
    for expected in &build.stdout {
        if !result.stdout.contains(expected.as_str()) {
            problems.push(format!("standard output lacks {expected:?}"));
        }
    }
    for unexpected in &build.stdout_not {
        if result.stdout.contains(unexpected.as_str()) {
            problems.push(format!("standard output holds {unexpected:?}"));
        }
    }
    if problems.is_empty() && exports_files && !build.fails {
        if out.is_dir() {
            for check in &build.file {
                check_file(&out, check, &mut problems);
            }
        } else {
            problems.push("the build exported no files".to_string());
        }
    }
    if problems.is_empty() && checks_config {
        if exports_files {
            let mut again = vec!["build".to_string()];
            again.extend(args.iter().cloned());
            again.extend([
                "-t".to_string(),
                "conformance:latest".to_string(),
                context_arg,
            ]);
            let second = kiln(store, &cwd, &again)?;
            if second.code != Some(0) {
                return Err(
                    format!("{label}: building the image failed:\n{}", second.stderr).into(),
                );
            }
        }
        let inspect = kiln(
            store,
            &cwd,
            &["inspect".into(), "conformance:latest".into()],
        )?;
        let inspected: serde_json::Value = serde_json::from_str(&inspect.stdout)
            .map_err(|e| format!("{label}: kiln inspect: {e}"))?;
        for (pointer, expected) in &build.config {
            let expected = serde_json::to_value(expected).map_err(|e| e.to_string())?;
            match inspected.pointer(pointer) {
                Some(actual) if *actual == expected => {}
                actual => problems.push(format!(
                    "config {pointer}: expected {expected}, found {}",
                    actual
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "nothing".into())
                )),
            }
        }
        for pointer in build.config_absent.iter().flat_map(|a| &a.pointers) {
            if let Some(value) = inspected.pointer(pointer).filter(|v| !v.is_null()) {
                problems.push(format!("config {pointer}: expected nothing, found {value}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{label} (kiln {}):\n  {}\n--- stderr ---\n{}",
            command_args.join(" "),
            problems.join("\n  "),
            result.stderr
        )
        .into())
    }
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `sh -eu ARGS` in `dir`, failing with its standard error.
fn shell(args: &[&std::ffi::OsStr], dir: &Path, what: &str) -> Result<(), Failed> {
    let output = Command::new("sh")
        .arg("-eu")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed: {}", String::from_utf8_lossy(&output.stderr)).into())
    }
}

/// Runs kiln on `store` from `cwd`, killing it after BUILD_TIMEOUT.
fn kiln(store: &Path, cwd: &Path, args: &[String]) -> Result<Outcome, Failed> {
    let mut child = Command::new(support::kiln_binary())
        .env("KILN_ROOT", store)
        .env_remove("SOURCE_DATE_EPOCH")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", support::kiln_binary().display()))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > BUILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "kiln {} did not finish in {BUILD_TIMEOUT:?}",
                args.join(" ")
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Outcome {
        code: status.code(),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

fn check_file(root: &Path, check: &FileCheck, problems: &mut Vec<String>) {
    let path = root.join(check.path.trim_start_matches('/'));
    let name = &check.path;
    let metadata = match fs::symlink_metadata(&path) {
        Ok(metadata) => metadata,
        Err(_) => {
            if check.kind.as_deref() != Some("absent") {
                problems.push(format!("{name}: missing"));
            }
            return;
        }
    };
    let kind = if metadata.file_type().is_symlink() {
        "symlink"
    } else if metadata.is_dir() {
        "dir"
    } else if metadata.is_file() {
        "file"
    } else {
        "special"
    };
    if let Some(expected) = &check.kind {
        if expected != kind {
            problems.push(format!("{name}: expected {expected}, found {kind}"));
            return;
        }
    }
    if let Some(expected) = &check.mode {
        let actual = metadata.permissions().mode() & 0o7777;
        match u32::from_str_radix(expected, 8) {
            Ok(expected) if expected == actual => {}
            Ok(_) => problems.push(format!("{name}: mode {actual:04o}, expected {expected}")),
            Err(_) => problems.push(format!(
                "{name}: the expected mode {expected:?} is not octal"
            )),
        }
    }
    if let Some(uid) = check.uid.filter(|uid| *uid != metadata.uid()) {
        problems.push(format!("{name}: uid {}, expected {uid}", metadata.uid()));
    }
    if let Some(gid) = check.gid.filter(|gid| *gid != metadata.gid()) {
        problems.push(format!("{name}: gid {}, expected {gid}", metadata.gid()));
    }
    if let Some(expected) = &check.target {
        let actual = fs::read_link(&path).map(|t| t.to_string_lossy().into_owned());
        if actual.as_deref().ok() != Some(expected.as_str()) {
            problems.push(format!(
                "{name}: link target {actual:?}, expected {expected:?}"
            ));
        }
    }
    if check.content.is_some() || check.contains.is_some() || check.not_contains.is_some() {
        let content = fs::read(&path).map(|b| String::from_utf8_lossy(&b).into_owned());
        match content {
            Err(e) => problems.push(format!("{name}: cannot read: {e}")),
            Ok(content) => {
                if let Some(expected) = check.content.as_ref().filter(|e| **e != content) {
                    problems.push(format!(
                        "{name}: content {content:?}, expected {expected:?}"
                    ));
                }
                if let Some(part) = check
                    .contains
                    .as_ref()
                    .filter(|p| !content.contains(p.as_str()))
                {
                    problems.push(format!("{name}: content {content:?} lacks {part:?}"));
                }
                if let Some(part) = check
                    .not_contains
                    .as_ref()
                    .filter(|p| content.contains(p.as_str()))
                {
                    problems.push(format!("{name}: content {content:?} holds {part:?}"));
                }
            }
        }
    }
    if let Some(other) = &check.same_file_as {
        match fs::symlink_metadata(root.join(other.trim_start_matches('/'))) {
            Ok(o) if o.ino() == metadata.ino() && o.dev() == metadata.dev() => {}
            Ok(_) => problems.push(format!("{name}: not a hard link of {other}")),
            Err(_) => problems.push(format!("{name}: {other} is missing")),
        }
    }
    if let Some(expected) = &check.entries {
        let listing = match fs::read_dir(&path) {
            Ok(listing) => listing,
            Err(e) => {
                problems.push(format!("{name}: cannot list its entries: {e}"));
                return;
            }
        };
        let mut actual: Vec<String> = listing
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        actual.sort();
        let mut expected = expected.clone();
        expected.sort();
        if actual != expected {
            problems.push(format!("{name}: entries {actual:?}, expected {expected:?}"));
        }
    }
}

/// Copies a tree keeping links, modes and owners (`cp -a`).
fn copy_tree(from: &Path, to: &Path) -> Result<(), Failed> {
    if !from.exists() {
        fs::create_dir_all(to).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cp -a {} {} failed", from.display(), to.display()).into())
    }
}

fn walk_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk_files(&path, found),
            Ok(t) if t.is_file() => found.push(path),
            _ => {}
        }
    }
}

fn tree_mentions(dir: &Path, needle: &str) -> bool {
    let mut files = Vec::new();
    walk_files(dir, &mut files);
    files.iter().any(|f| {
        fs::read(f)
            .map(|b| String::from_utf8_lossy(&b).contains(needle))
            .unwrap_or(false)
    })
}

fn substitute_tree(dir: &Path, servers: &Servers) -> Result<(), Failed> {
    let mut files = Vec::new();
    walk_files(dir, &mut files);
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        if text.contains("{{") {
            fs::write(&file, servers.substitute(&text)).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn served_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, Failed> {
    let mut files = Vec::new();
    walk_files(dir, &mut files);
    files
        .into_iter()
        .map(|file| {
            let name = file
                .strip_prefix(dir)
                .map_err(|e| e.to_string())?
                .to_string_lossy()
                .into_owned();
            let bytes = fs::read(&file).map_err(|e| e.to_string())?;
            Ok((name, bytes))
        })
        .collect()
}

fn check_inventory() -> Result<(), Failed> {
    let inventory = fs::read_to_string(cases_dir().join("inventory.txt"))
        .map_err(|e| format!("testdata/conformance/inventory.txt: {e}"))?;
    let listed: Vec<&str> = inventory.lines().filter(|l| !l.is_empty()).collect();
    let cases = case_names();
    let missing: Vec<&&str> = listed
        .iter()
        .filter(|l| !cases.iter().any(|c| c == *l))
        .collect();
    let unknown: Vec<&String> = cases
        .iter()
        .filter(|c| !listed.contains(&c.as_str()))
        .collect();
    if missing.is_empty() && unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "BuildKit tests without a case: {missing:?}\ncases that mirror no listed test: {unknown:?}"
        )
        .into())
    }
}

/// The README's table: per BuildKit file, the cases, those that run (and so
/// pass, or this suite fails), and those skipped, with every reason.
fn readme_table() -> Result<String, Failed> {
    #[derive(Default)]
    struct Row {
        mirrored: usize,
        missing: usize,
        not_applicable: usize,
        differs: usize,
    }
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in case_names() {
        let case = load_case(&name)?;
        let (file, test) = name.split_once('/').unwrap_or((&name, ""));
        let row = rows.entry(format!("{file}.go")).or_default();
        row.mirrored += 1;
        if let Some(reason) = &case.skip {
            if reason.starts_with("missing: ") {
                row.missing += 1;
            } else if reason.starts_with("n/a: ") {
                row.not_applicable += 1;
            } else if reason.starts_with("differs: ") {
                row.differs += 1;
            } else {
                return Err(format!(
                    "{name}: a skip starts with `missing: `, `n/a: ` or `differs: `"
                )
                .into());
            }
            reasons
                .entry(reason.clone())
                .or_default()
                .push(test.to_string());
        }
        if case.summary.trim().is_empty() {
            return Err(format!("{name}: the summary is empty").into());
        }
    }
    let mut table = String::from(
        "| BuildKit test file | mirrored | passing | skipped: not built yet | skipped: cannot apply | skipped: deliberate difference |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut total = Row::default();
    for (file, row) in &rows {
        table.push_str(&format!(
            "| {file} | {} | {} | {} | {} | {} |\n",
            row.mirrored,
            row.mirrored - row.missing - row.not_applicable - row.differs,
            row.missing,
            row.not_applicable,
            row.differs
        ));
        total.mirrored += row.mirrored;
        total.missing += row.missing;
        total.not_applicable += row.not_applicable;
        total.differs += row.differs;
    }
    table.push_str(&format!(
        "| **all** | **{}** | **{}** | **{}** | **{}** | **{}** |\n\nSkipped, by reason:\n\n",
        total.mirrored,
        total.mirrored - total.missing - total.not_applicable - total.differs,
        total.missing,
        total.not_applicable,
        total.differs
    ));
    for (reason, tests) in &reasons {
        table.push_str(&format!("- {reason}: {}\n", tests.join(", ")));
    }
    Ok(table)
}

fn check_readme_table() -> Result<(), Failed> {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = fs::read_to_string(&readme_path).map_err(|e| e.to_string())?;
    let table = readme_table()?;
    let (before, rest) = readme
        .split_once(README_BEGIN)
        .ok_or("README.md has no conformance table marker")?;
    let (current, after) = rest
        .split_once(README_END)
        .ok_or("README.md's conformance table has no end marker")?;
    let wanted = format!("\n{table}");
    if current == wanted {
        return Ok(());
    }
    if std::env::var("KILN_CONFORMANCE_README").as_deref() == Ok("write") {
        fs::write(
            &readme_path,
            format!("{before}{README_BEGIN}{wanted}{README_END}{after}"),
        )
        .map_err(|e| e.to_string())?;
        return Ok(());
    }
    Err("README.md's conformance table is out of date: run KILN_CONFORMANCE_README=write cargo test -p kiln --test conformance readme".into())
}
