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
    let (repository, first) =
        server.repository("app", &[("VERSION", "1\n"), ("docs/guide.md", "guide 1\n")]);
    repository.git(&["tag", "v1"]);
    repository.git(&["checkout", "-q", "-b", "next"]);
    let second = repository.commit(&[("VERSION", "2\n")], "second");
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
             ADD --chown=1000:1000 --chmod=0600 {url}?ref=main&subdir=docs /owned\n\
             ADD --keep-git-dir {url}?branch=next&commit={second}&fetch-by-commit /trusted\n\
             ADD --exclude=**/*.md {url}#v1 /excluded\n"
        ),
    );
    let out = kiln.files(context.path(), &[]);
    let out = out.path();
    assert_eq!(read(out, "tag/VERSION"), "1\n");
    assert!(
        !out.join("tag/.git").exists(),
        ".git is left out by default"
    );
    assert_eq!(read(out, "branch/VERSION"), "2\n");
    assert_eq!(read(out, "commit/VERSION"), "1\n");
    assert_eq!(read(out, "docs/guide.md"), "guide 1\n");
    assert!(!out.join("docs/VERSION").exists(), "only the subdirectory");
    assert_eq!(read(out, "kept/.git/HEAD").trim(), first, "a detached HEAD");
    assert_eq!(read(out, "trusted/VERSION"), "2\n");
    assert_eq!(read(out, "excluded/VERSION"), "1\n");
    assert!(
        !out.join("excluded/docs/guide.md").exists(),
        "--exclude applies"
    );
    assert_eq!(read(out, "trusted/.git/HEAD").trim(), second);
    let owned = fs::metadata(out.join("owned/guide.md")).expect("copied");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o777),
        (1000, 1000, 0o600)
    );
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
        &format!(
            "FROM scratch\nADD --checksum={} {url}#main /src\n",
            &commit[..8]
        ),
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
            (
                "web/Dockerfile.web",
                "FROM scratch\nCOPY index.html /web.html\n",
            ),
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
        .args([
            "build",
            "-f",
            "missing/Dockerfile",
            &format!("{url}#{commit}"),
        ])
        .output()
        .expect("kiln runs");
    assert!(!failed.status.success());
}

#[test]
fn a_git_url_is_a_named_build_context() {
    require_root();
    let server = GitServer::start();
    server.repository(
        "lib",
        &[("lib.txt", "from git\n"), ("docs/readme", "docs\n")],
    );
    let kiln = Kiln::new();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM scratch AS lib\nFROM scratch\nCOPY --from=lib lib.txt /\nCOPY --from=docs readme /\n",
    );
    let lib = format!("lib={}", server.url("lib"));
    let docs = format!("docs={}#main:docs", server.url("lib"));
    let out = kiln.files(
        context.path(),
        &["--build-context", &lib, "--build-context", &docs],
    );
    assert_eq!(read(out.path(), "lib.txt"), "from git\n");
    assert_eq!(read(out.path(), "readme"), "docs\n");
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

/// `git http-backend` (git's smart HTTP) behind a small HTTP server on a
/// loopback port, which answers 401 to requests without `authorization`
/// when one is required.
struct SmartHttpServer {
    port: u16,
}

impl SmartHttpServer {
    fn start(root: &Path, authorization: Option<&str>) -> SmartHttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        let root = root.to_path_buf();
        let authorization = authorization.map(str::to_string);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let root = root.clone();
                let authorization = authorization.clone();
                std::thread::spawn(move || serve_cgi(stream, &root, authorization.as_deref()));
            }
        });
        SmartHttpServer { port }
    }
}

/// Answers one request with `git http-backend`, as a web server runs a CGI
/// program (the connection closes after it).
fn serve_cgi(stream: TcpStream, root: &Path, authorization: Option<&str>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = vec![
        0;
        header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0)
    ];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut stream = reader.into_inner();
    if authorization.is_some() && header("authorization").as_deref() != authorization {
        let _ = stream.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
              Content-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut backend = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("GIT_PROTOCOL", header("git-protocol").unwrap_or_default())
        .env(
            "HTTP_CONTENT_ENCODING",
            header("content-encoding").unwrap_or_default(),
        )
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("git http-backend starts");
    if let Some(mut stdin) = backend.stdin.take() {
        let _ = stdin.write_all(&body);
    }
    let output = backend.wait_with_output().expect("git http-backend ends");
    let split = output
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| (at, 4))
        .or_else(|| {
            output
                .stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|at| (at, 2))
        });
    let Some((at, separator)) = split else {
        return;
    };
    let cgi_headers = String::from_utf8_lossy(&output.stdout[..at]).into_owned();
    let content = &output.stdout[at + separator..];
    let mut status = "200 OK".to_string();
    let mut response = String::new();
    for line in cgi_headers.lines() {
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("status") => {
                status = value.trim().to_string();
            }
            Some(_) => response.push_str(&format!("{line}\r\n")),
            None => {}
        }
    }
    let head = format!(
        "HTTP/1.1 {status}\r\n{response}Content-Length: {}\r\nConnection: close\r\n\r\n",
        content.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(content);
}

#[test]
fn https_credentials_come_from_the_git_auth_token_secret() {
    require_root();
    let server = GitServer::start();
    let (_repository, _commit) = server.repository("private", &[("VERSION", "1\n")]);
    // What git sends for the token `s3cret`: Basic x-access-token:s3cret.
    let expected = "basic eC1hY2Nlc3MtdG9rZW46czNjcmV0";
    let http = SmartHttpServer::start(server.base.path(), Some(expected));
    let host = format!("127.0.0.1:{}", http.port);
    let url = format!("http://{host}/private.git");
    let kiln = Kiln::new();
    let context = Context::new();
    context.write(
        "Dockerfile",
        &format!("FROM scratch\nADD {url}#main /src\n"),
    );
    let refused = kiln.try_build(context.path(), &[]);
    assert!(!refused.status.success(), "no credentials, no repository");
    let refused = String::from_utf8_lossy(&refused.stderr);
    assert!(
        refused.contains("terminal prompts disabled"),
        "git must not prompt: {refused}"
    );
    let secret = format!("id=GIT_AUTH_TOKEN.{host},env=KILN_TEST_TOKEN");
    let out = tempfile::tempdir().expect("output");
    let dest = format!("type=local,dest={}", out.path().display());
    let output = kiln
        .command()
        .current_dir(context.path())
        .env("KILN_TEST_TOKEN", "s3cret")
        .args(["build", "--secret", &secret, "-o", &dest, "."])
        .output()
        .expect("kiln runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(read(out.path(), "src/VERSION"), "1\n");
}

#[test]
fn git_sources_are_a_cache_that_du_counts_and_prune_all_removes() {
    require_root();
    let server = GitServer::start();
    server.repository("app", &[("VERSION", "1\n")]);
    let kiln = Kiln::new();
    let context = Context::new();
    let dockerfile = format!("FROM scratch\nADD {}#main /src\n", server.url("app"));
    context.write("Dockerfile", &dockerfile);
    kiln.build(context.path(), &[]);
    let git_bytes = |kiln: &Kiln| -> u64 {
        let du = kiln.ok(&["du", "--bytes"]);
        du.lines()
            .find_map(|line| line.strip_prefix("git sources"))
            .and_then(|size| size.trim().parse().ok())
            .unwrap_or_else(|| panic!("no git sources in:\n{du}"))
    };
    let before = git_bytes(&kiln);
    let pruned = kiln.ok(&["prune", "--all"]);
    assert!(
        pruned.contains("2 git source(s)"),
        "a repository and a checkout: {pruned}"
    );
    assert!(
        git_bytes(&kiln) < before,
        "only the empty directories are left"
    );
    kiln.build(context.path(), &["--no-cache"]);
    kiln.assert_consistent();
}

#[test]
fn ssh_urls_reach_git_through_the_agent_of_ssh_default() {
    require_root();
    let server = GitServer::start();
    let (repository, _commit) = server.repository("app", &[("VERSION", "1\n")]);
    // No SSH server here: an `ssh` first on PATH stands for one. It
    // records the agent socket it was given and runs the remote command
    // (git-upload-pack PATH) itself, as sshd would on the far side.
    let bin = tempfile::tempdir().expect("bin");
    let seen = bin.path().join("seen");
    let ssh = bin.path().join("ssh");
    fs::write(
        &ssh,
        format!(
            "#!/bin/sh\n[ -S \"$SSH_AUTH_SOCK\" ] || exit 255\n\
             echo \"$SSH_AUTH_SOCK $*\" > {}\n\
             for last; do :; done\nexec sh -c \"$last\"\n",
            seen.display()
        ),
    )
    .expect("write ssh");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&ssh, fs::Permissions::from_mode(0o755)).expect("chmod");
    let agent_dir = tempfile::tempdir().expect("agent");
    let socket = agent_dir.path().join("agent.sock");
    let _agent = std::os::unix::net::UnixListener::bind(&socket).expect("a socket");
    let url = format!("ssh://git@git.example{}", repository.dir.display());
    let kiln = Kiln::new();
    let context = Context::new();
    context.write(
        "Dockerfile",
        &format!("FROM scratch\nADD {url}#main /src\n"),
    );
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tempfile::tempdir().expect("output");
    let dest = format!("type=local,dest={}", out.path().display());
    let build = |extra: &[&str]| {
        kiln.command()
            .current_dir(context.path())
            .env("PATH", &path)
            .arg("build")
            .args(extra)
            .args(["-o", &dest, "."])
            .output()
            .expect("kiln runs")
    };
    let without_agent = build(&[]);
    assert!(!without_agent.status.success());
    assert!(
        String::from_utf8_lossy(&without_agent.stderr).contains("give --ssh default"),
        "{}",
        String::from_utf8_lossy(&without_agent.stderr)
    );
    let ssh_default = format!("default={}", socket.display());
    let output = build(&["--ssh", &ssh_default]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(read(out.path(), "src/VERSION"), "1\n");
    let seen = fs::read_to_string(&seen).expect("ssh ran");
    assert!(
        seen.starts_with(&format!("{} ", socket.display())),
        "the agent socket: {seen}"
    );
    assert!(seen.contains("-F /dev/null"), "no user ssh config: {seen}");
    assert!(seen.contains("git@git.example"), "{seen}");
}

/// A TCP proxy to `upstream` that holds every connection without a word
/// while `stalled` is set.
fn stalling_proxy(upstream: u16, stalled: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for client in listener.incoming().flatten() {
            if stalled.load(Ordering::SeqCst) {
                held.push(client);
                continue;
            }
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            for (mut from, mut to) in [
                (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                ),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    port
}

#[test]
fn a_fetch_killed_halfway_leaves_a_store_the_next_build_uses() {
    use std::sync::atomic::{AtomicBool, Ordering};
    require_root();
    let server = GitServer::start();
    let (_repository, commit) = server.repository("app", &[("VERSION", "1\n")]);
    let stalled = std::sync::Arc::new(AtomicBool::new(true));
    let port = stalling_proxy(server.port, stalled.clone());
    let kiln = Kiln::new();
    let context = Context::new();
    context.write(
        "Dockerfile",
        &format!("FROM scratch\nADD git://127.0.0.1:{port}/app.git#{commit} /src\n"),
    );
    let mut build = kiln
        .command()
        .current_dir(context.path())
        .args(["build", "."])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kiln starts");
    // The repository appears once made; the fetch into it then waits on
    // the proxy.
    let repositories = kiln.root.path().join("git/repositories");
    let started = Instant::now();
    while !fs::read_dir(&repositories)
        .is_ok_and(|mut entries| entries.any(|e| e.is_ok_and(|e| e.path().is_dir())))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no fetch began"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    build.kill().expect("killed");
    build.wait().expect("reaped");
    assert!(
        fs::read_dir(kiln.root.path().join("git/checkouts"))
            .map_or(true, |mut e| e.next().is_none()),
        "no checkout of a fetch that never finished"
    );
    stalled.store(false, Ordering::SeqCst);
    let out = kiln.files(context.path(), &[]);
    assert_eq!(read(out.path(), "src/VERSION"), "1\n");
    kiln.assert_consistent();
}
