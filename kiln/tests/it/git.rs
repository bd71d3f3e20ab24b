//! Git sources: `ADD` of a repository and a git URL as the build context,
//! against repositories the tests make and serve with `git daemon` on a
//! loopback port (git's smart protocol: shallow fetches, fetches by commit).

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{literal, require_root, require_tool, Context, Kiln};

/// A repository the test commits to, in a directory `git daemon` serves.
struct Repository {
    dir: PathBuf,
}

impl Repository {
    fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .args(args)
            .current_dir(&self.dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com")
            .output()
            .expect("git runs");
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Writes `files` (path, content) and commits them; returns the commit.
    fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, content) in files {
            let path = self.dir.join(path);
            fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            fs::write(path, content).expect("write");
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// `git daemon` serving the repositories under a temporary directory.
struct GitServer {
    base: tempfile::TempDir,
    port: u16,
    daemon: Child,
}

impl GitServer {
    fn start() -> GitServer {
        require_tool("git", "git");
        let base = tempfile::tempdir().expect("repositories");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let daemon = Command::new("git")
            .arg("daemon")
            .arg("--reuseaddr")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg("--export-all")
            .arg("--informative-errors")
            .arg(format!("--base-path={}", base.path().display()))
            .arg(base.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "git daemon does not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        GitServer { base, port, daemon }
    }

    /// A new repository `NAME.git` with its first commit on `main`.
    fn repository(&self, name: &str, files: &[(&str, &str)]) -> (Repository, String) {
        let dir = self.base.path().join(format!("{name}.git"));
        fs::create_dir(&dir).expect("mkdir");
        let repository = Repository { dir };
        repository.git(&["init", "-q", "-b", "main"]);
        let commit = repository.commit(files, "first");
        (repository, commit)
    }

    fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}.git", self.port)
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn read(dir: &Path, path: &str) -> String {
    fs::read_to_string(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn add_takes_a_tag_a_branch_a_commit_or_a_subdirectory() {
    require_root();
    let server = GitServer::start();
    let (repository, first) = server.repository(
        "app",
        &[("VERSION", "1\n"), ("docs/guide.md", "guide 1\n")],
    );
    repository.git(&["tag", "v1"]);
    repository.git(&["checkout", "-q", "-b", "next"]);
    repository.commit(&[("VERSION", "2\n")], "second");
    let url = server.url("app");
    let kiln = Kiln::new();
    let context = Context::new();
    context.write(
        "Dockerfile",
        &format!(
            "FROM scratch\n\
             ADD {url}#v1 /tag\n\
             ADD {url}?branch=next /branch/\n\
             ADD {url}#{first} /commit\n\
             ADD {url}#main:docs /docs\n\
             ADD --keep-git-dir {url}#v1 /kept\n\
             ADD --chown=1000:1000 --chmod=0600 {url}?ref=main&subdir=docs /owned\n"
        ),
    );
    let out = kiln.files(context.path(), &[]);
    let out = out.path();
    assert_eq!(read(out, "tag/VERSION"), "1\n");
    assert!(!out.join("tag/.git").exists(), ".git is left out by default");
    assert_eq!(read(out, "branch/VERSION"), "2\n");
    assert_eq!(read(out, "commit/VERSION"), "1\n");
    assert_eq!(read(out, "docs/guide.md"), "guide 1\n");
    assert!(!out.join("docs/VERSION").exists(), "only the subdirectory");
    assert_eq!(read(out, "kept/.git/HEAD").trim(), first, "a detached HEAD");
    let owned = fs::metadata(out.join("owned/guide.md")).expect("copied");
    use std::os::unix::fs::MetadataExt;
    assert_eq!((owned.uid(), owned.gid(), owned.mode() & 0o777), (1000, 1000, 0o600));
    kiln.assert_consistent();
}

/// The plain progress lines of a build's steps that were reused.
fn cached_steps(output: &std::process::Output) -> Vec<String> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    lines
        .windows(2)
        .filter(|pair| pair[1].ends_with(" CACHED"))
        .map(|pair| pair[0].to_string())
        .collect()
}

#[test]
fn the_key_is_the_commit_not_the_url() {
    require_root();
    let server = GitServer::start();
    let (repository, first) = server.repository("app", &[("VERSION", "1\n")]);
    let url = server.url("app");
    let kiln = Kiln::new();
    let context = Context::new();
    let build_in = |kiln: &Kiln, source: &str| {
        context.write("Dockerfile", &format!("FROM scratch\nADD {source} /src\n"));
        let out = tempfile::tempdir().expect("output");
        let dest = format!("type=local,dest={}", out.path().display());
        let output = kiln.try_build(context.path(), &["--progress", "plain", "-o", &dest]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        (cached_steps(&output).len(), read(out.path(), "src/VERSION"))
    };
    let build = |source: &str| build_in(&kiln, source);
    assert_eq!(build(&format!("{url}#main")), (0, "1\n".to_string()));
    assert_eq!(build(&format!("{url}#main")), (1, "1\n".to_string()));
    let second = repository.commit(&[("VERSION", "2\n")], "second");
    assert_eq!(
        build(&format!("{url}#main")),
        (0, "2\n".to_string()),
        "a new commit on the branch runs the step again"
    );
    assert_eq!(
        build(&format!("{url}?commit={second}")),
        (1, "2\n".to_string()),
        "the same commit named another way is the same step"
    );
    assert_eq!(
        build(&format!("{url}#{first}")),
        (1, "1\n".to_string()),
        "the first commit's step is still in the cache"
    );
    assert_eq!(
        build_in(&Kiln::new(), &format!("{url}#{first}")),
        (0, "1\n".to_string()),
        "a commit that is no branch's tip is fetched by its hash"
    );
}

#[test]
fn a_checksum_that_is_not_the_commit_fails_the_step() {
    require_root();
    let server = GitServer::start();
    let (_repository, commit) = server.repository("app", &[("VERSION", "1\n")]);
    let url = server.url("app");
    let kiln = Kiln::new();
    let context = Context::new();
    let wrong = "0123456789abcdef0123456789abcdef01234567";
    let dockerfile = format!("FROM scratch\nADD --checksum={wrong} {url}#main /src\n");
    context.write("Dockerfile", &dockerfile);
    let output = kiln.try_build(context.path(), &["--progress", "plain"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(&literal(&url), "[REPOSITORY]");
    settings.add_filter(&literal(&commit), "[COMMIT]");
    settings.add_filter(r"DONE \d+\.\ds", "DONE [DURATION]");
    settings.set_description(format!(
        "kiln build --progress plain . with:\n{}",
        dockerfile.replace(&url, "[REPOSITORY]")
    ));
    settings.bind(|| insta::assert_snapshot!(stderr));

    context.write(
        "Dockerfile",
        &format!("FROM scratch\nADD --checksum={} {url}#main /src\n", &commit[..8]),
    );
    kiln.build(context.path(), &[]);
}

#[test]
fn a_git_url_is_a_build_context_with_its_dockerfile_inside() {
    require_root();
    let server = GitServer::start();
    let (_repository, commit) = server.repository(
        "site",
        &[
            ("Dockerfile", "FROM scratch\nCOPY index.html /root.html\n"),
            ("index.html", "root\n"),
            ("web/Dockerfile.web", "FROM scratch\nCOPY index.html /web.html\n"),
            ("web/index.html", "web\n"),
        ],
    );
    let kiln = Kiln::new();
    let cwd = Context::new();
    let out = tempfile::tempdir().expect("output");
    let dest = format!("type=local,dest={}", out.path().display());
    let url = server.url("site");
    kiln.build_from(cwd.path(), &url, &["-o", &dest]);
    assert_eq!(read(out.path(), "root.html"), "root\n");
    kiln.build_from(
        cwd.path(),
        &format!("{url}#main:web"),
        &["-o", &dest, "-f", "Dockerfile.web"],
    );
    assert_eq!(read(out.path(), "web.html"), "web\n");
    let failed = kiln
        .command()
        .current_dir(cwd.path())
        .args(["build", "-f", "missing/Dockerfile", &format!("{url}#{commit}")])
        .output()
        .expect("kiln runs");
    assert!(!failed.status.success());
}

#[test]
fn without_git_the_error_names_the_package() {
    require_root();
    let kiln = Kiln::new();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM scratch\nADD https://127.0.0.1:9/repo.git#main /src\n",
    );
    let empty = tempfile::tempdir().expect("a PATH without git");
    let output = kiln
        .command()
        .current_dir(context.path())
        .env("PATH", empty.path())
        .args(["build", "--progress", "plain", "."])
        .output()
        .expect("kiln runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    insta::assert_snapshot!(stderr);
}
