//! Git sources (`ADD URL.git`, a git URL as the build context), fetched
//! with the `git` program as BuildKit fetches them: the ref resolved to a
//! commit with `git ls-remote` (once per build, so the key and the step see
//! the same commit), the commit fetched into a repository the store keeps
//! for its remote, and checked out into a directory the store keeps by
//! commit, subdirectory and options. A second build of the same commit
//! fetches nothing.
//!
//! git never prompts (`GIT_TERMINAL_PROMPT=0`) and reads neither the
//! system's nor the user's configuration. HTTPS credentials come from the
//! secrets BuildKit reads them from (`--secret id=GIT_AUTH_TOKEN.HOST` or
//! `GIT_AUTH_HEADER.HOST`, or without the host), SSH keys from the agent
//! `--ssh default` forwards.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use base64::Engine as _;
use kiln_cache::{KeyHasher, Store};
use kiln_frontend::git_ref::{is_full_commit, GitRef, Mtime};
use kiln_frontend::graph::CopyStep;

use crate::error::Context;
use crate::secrets::Secrets;

/// What went wrong with a git source.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git sources need the `git` program, which is not on PATH (install Debian's `git` package: apt-get install git)")]
    Missing,
    #[error("`git {command}` failed: {output}")]
    Failed { command: String, output: String },
    #[error("repository does not contain ref {reference}, output: {output:?}")]
    NoSuchRef { reference: String, output: String },
    #[error("could not find the default branch of {0}")]
    NoDefaultBranch(String),
    #[error("expected checksum to match {expected}, got {got}")]
    ChecksumMismatch { expected: String, got: String },
    #[error("fetched {reference} of {remote}, but the commit {commit} it named is not in what was fetched")]
    CommitNotFetched {
        reference: String,
        remote: String,
        commit: String,
    },
    #[error("invalid subdir {subdir:?} of {remote}: {reason}")]
    InvalidSubdir {
        subdir: String,
        remote: String,
        reason: String,
    },
    #[error("no SSH agent for {0}: BuildKit fetches SSH git URLs with the agent of --ssh default (give --ssh default)")]
    NoSshAgent(String),
}

/// A git URL with the options of the step that reads it.
#[derive(Debug, Clone)]
pub struct GitSource {
    pub git: GitRef,
    pub keep_git_dir: bool,
    pub submodules: bool,
    /// A commit hash or prefix the ref must resolve to.
    pub checksum: Option<String>,
}

impl GitSource {
    /// The source of a git URL on its own (a build context): options from
    /// its query, BuildKit's defaults otherwise.
    pub fn new(git: GitRef) -> GitSource {
        GitSource {
            keep_git_dir: git.keep_git_dir.unwrap_or(false),
            submodules: git.submodules.unwrap_or(true),
            checksum: git.checksum.clone(),
            git,
        }
    }

    /// The source `ADD [--keep-git-dir] [--checksum=C] URL` reads (the
    /// frontend checked that flags and query agree).
    pub fn for_add(url: &str, step: &CopyStep) -> crate::Result<GitSource> {
        let git = GitRef::parse(url)
            .map_err(|error| crate::Error::Invalid(format!("invalid git URL {url:?}: {error}")))?
            .with_context(|| format!("{url} is not a git URL"))?;
        let mut source = GitSource::new(git);
        // BuildKit's ADD dates files by the checkout whatever the URL says.
        source.git.mtime = Mtime::Checkout;
        source.keep_git_dir |= step.keep_git_dir;
        if source.checksum.is_none() {
            source.checksum = step.checksum.clone();
        }
        Ok(source)
    }

    /// `.git` is kept only for the whole repository, as in BuildKit.
    fn keeps_git_dir(&self) -> bool {
        self.keep_git_dir && self.git.subdir.is_empty()
    }
}

/// What a ref names now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The commit.
    pub commit: String,
    /// What the ref points to: the commit, or an annotated tag.
    pub object: String,
    /// The full name of the ref (`refs/heads/main`), or the commit when the
    /// URL named one.
    pub reference: String,
}

impl Resolved {
    fn sha256(&self) -> bool {
        self.commit.len() == 64
    }
}

/// A checked-out source.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// The files (the subdirectory, when one was asked for).
    pub dir: PathBuf,
    pub commit: String,
    /// The commit's time, in seconds since 1970.
    pub commit_time: i64,
}

/// What a key says of a source: its commit and the options that change
/// the files, never the URL it was reached by.
pub fn key_of(source: &GitSource, resolved: &Resolved) -> String {
    let mut key = resolved.commit.clone();
    if source.keeps_git_dir() {
        // `.git` holds the ref and an annotated tag's object.
        key.push_str(&format!(" .git {} {}", resolved.reference, resolved.object));
    }
    if !source.git.subdir.is_empty() {
        key.push_str(&format!(" subdir {}", source.git.subdir));
    }
    if !source.submodules {
        key.push_str(" without-submodules");
    }
    if source.git.mtime == Mtime::Commit {
        key.push_str(" mtime=commit");
    }
    key
}

/// Git sources as one build reads them: each ref resolved once.
pub struct GitSources<'a> {
    store: &'a Store,
    secrets: &'a Secrets,
    resolved: Mutex<HashMap<String, Resolved>>,
}

impl<'a> GitSources<'a> {
    pub fn new(store: &'a Store, secrets: &'a Secrets) -> GitSources<'a> {
        GitSources {
            store,
            secrets,
            resolved: Mutex::new(HashMap::new()),
        }
    }

    /// The commit `source` names, asked of its remote once per build, and
    /// checked against its checksum.
    pub fn resolve(&self, source: &GitSource) -> crate::Result<Resolved> {
        let mut name = format!("{}#{}", source.git.remote, source.git.reference);
        if source.git.fetch_by_commit {
            // Not asked of the remote: what the URL itself says.
            name.push_str(&format!(" fetch-by-commit {:?}", source.checksum));
        }
        let mut resolved = self
            .resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = match resolved.get(&name) {
            Some(found) => found.clone(),
            None => {
                let found = Git::new(&source.git, self.secrets)?.resolve(source)?;
                resolved.insert(name, found.clone());
                found
            }
        };
        if let Some(expected) = &source.checksum {
            if !found.commit.starts_with(expected.as_str())
                && !found.object.starts_with(expected.as_str())
            {
                return Err(GitError::ChecksumMismatch {
                    expected: expected.clone(),
                    got: found.commit,
                }
                .into());
            }
        }
        Ok(found)
    }

    /// The files of `source` at the commit it names now: from the store
    /// when an earlier build checked them out, fetched otherwise.
    pub fn checkout(&self, source: &GitSource) -> crate::Result<Checkout> {
        let resolved = self.resolve(source)?;
        checkout_resolved(self.store, self.secrets, source, &resolved)
    }
}

/// Checks `source` out without a build around it (for a git build
/// context, or `--build-context NAME=URL.git`): resolved, fetched when the
/// store lacks it, and checked out into a directory the store keeps.
pub fn checkout(store: &Store, secrets: &Secrets, source: &GitSource) -> crate::Result<Checkout> {
    GitSources::new(store, secrets).checkout(source)
}

/// The checkout's directory in the store: `tree/` holds the files, `commit`
/// the commit and its time.
fn checkout_resolved(
    store: &Store,
    secrets: &Secrets,
    source: &GitSource,
    resolved: &Resolved,
) -> crate::Result<Checkout> {
    let mut key = KeyHasher::new("git-checkout", None);
    key.field("checkout", key_of(source, resolved));
    let key = key.finish();
    let kept = match store.git_checkout(&key) {
        Some(kept) => kept,
        None => {
            let git = Git::new(&source.git, secrets)?;
            // Named without its password: the name is written in the store.
            let repository = store.git_repository(&source.git.redacted_remote(), |dir| {
                git.run(dir, &init_args(resolved, true))
                    .map(drop)
                    .map_err(crate::Error::from)
            })?;
            git.fetch(&repository.path, source, resolved)?;
            let scratch = store.temp_dir()?;
            let made = scratch.path().join("checkout");
            fs::create_dir(&made).with_context(|| format!("creating {}", made.display()))?;
            git.check_out(&repository.path, &made, source, resolved)?;
            drop(repository);
            store.keep_git_checkout(&key, &made)?
        }
    };
    let info = fs::read_to_string(kept.join("commit"))
        .with_context(|| format!("reading {}", kept.join("commit").display()))?;
    let commit_time = info
        .split_whitespace()
        .nth(1)
        .and_then(|time| time.parse().ok())
        .with_context(|| format!("{} is damaged: remove it", kept.display()))?;
    Ok(Checkout {
        dir: kept.join("tree"),
        commit: resolved.commit.clone(),
        commit_time,
    })
}

fn init_args(resolved: &Resolved, bare: bool) -> Vec<String> {
    let mut args = vec![
        "-c".to_string(),
        "init.defaultBranch=master".to_string(),
        "init".to_string(),
        "-q".to_string(),
    ];
    if bare {
        args.push("--bare".to_string());
    }
    if resolved.sha256() {
        args.push("--object-format=sha256".to_string());
    }
    args.push(".".to_string());
    args
}

/// The `git` program, set up for one remote.
struct Git {
    /// Variables every git command gets beyond a clean environment.
    env: Vec<(String, String)>,
}

/// Variables of kiln's environment git may see: proxies.
const PASSED_VARIABLES: &[&str] = &[
    "PATH",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

impl Git {
    fn new(git: &GitRef, secrets: &Secrets) -> crate::Result<Git> {
        let mut env: Vec<(String, String)> = PASSED_VARIABLES
            .iter()
            .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
            .collect();
        for (name, value) in [
            ("GIT_TERMINAL_PROMPT", "0"),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("LC_ALL", "C"),
            (
                "GIT_SSH_COMMAND",
                "ssh -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes",
            ),
        ] {
            env.push((name.to_string(), value.to_string()));
        }
        if git.ssh {
            let socket = secrets
                .ssh
                .get("default")
                .ok_or_else(|| GitError::NoSshAgent(git.redacted_remote()))?;
            env.push((
                crate::secrets::SSH_AUTH_SOCK.to_string(),
                socket.display().to_string(),
            ));
        } else if let Some(header) = authorization(git, secrets)? {
            // Through the environment, not the command line, which other
            // users can read.
            env.push(("GIT_CONFIG_COUNT".to_string(), "1".to_string()));
            env.push((
                "GIT_CONFIG_KEY_0".to_string(),
                format!("http.{}.extraheader", git.remote),
            ));
            env.push((
                "GIT_CONFIG_VALUE_0".to_string(),
                format!("Authorization: {header}"),
            ));
        }
        Ok(Git { env })
    }

    /// Runs git in `dir` and returns its standard output.
    fn run(&self, dir: &Path, args: &[String]) -> Result<String, GitError> {
        let mut command = Command::new("git");
        command
            .args(args)
            .current_dir(dir)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null());
        // SAFETY: only prctl between fork and exec, and nothing allocated.
        unsafe {
            command.pre_exec(|| {
                // A git that outlived a killed kiln would write to the
                // store's repository while the next kiln, holding the lock
                // the dead one dropped, tidies it up.
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                Ok(())
            });
        }
        let output = command.output().map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => GitError::Missing,
            _ => GitError::Failed {
                command: redact_args(args),
                output: error.to_string(),
            },
        })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(GitError::Failed {
                command: redact_args(args),
                output: stderr.trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn run_str(&self, dir: &Path, args: &[&str]) -> Result<String, GitError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.run(dir, &args)
    }

    /// `git ls-remote`: the commit the ref names, as BuildKit chooses
    /// between a branch, a tag and another ref of that name.
    fn resolve(&self, source: &GitSource) -> crate::Result<Resolved> {
        let git = &source.git;
        if git.fetch_by_commit {
            return resolve_by_commit(git, source.checksum.as_deref());
        }
        if is_full_commit(&git.reference) {
            return Ok(Resolved {
                commit: git.reference.clone(),
                object: git.reference.clone(),
                reference: git.reference.clone(),
            });
        }
        let scratch = std::env::temp_dir();
        let reference = if git.reference.is_empty() {
            let output = self.run_str(
                &scratch,
                &["ls-remote", "--symref", "--", &git.remote, "HEAD"],
            )?;
            output
                .lines()
                .find_map(|line| {
                    let (symref, name) = line.strip_prefix("ref: ")?.split_once('\t')?;
                    (name == "HEAD").then(|| symref.to_string())
                })
                .filter(|branch| !branch.starts_with('-'))
                .ok_or_else(|| GitError::NoDefaultBranch(git.redacted_remote()))?
        } else {
            git.reference.clone()
        };
        let peeled = format!("{reference}^{{}}");
        let output = self.run_str(
            &scratch,
            &["ls-remote", "--", &git.remote, &reference, &peeled],
        )?;
        let resolved = choose_ref(&reference, &output)?;
        if !is_full_commit(&resolved.commit) {
            return Err(crate::Error::msg(format!(
                "{} gave {:?} for {}, which is not a commit hash",
                git.redacted_remote(),
                resolved.commit,
                resolved.reference
            )));
        }
        Ok(resolved)
    }

    /// `git fetch`, shallow where the server allows it (a dumb HTTP
    /// server does not).
    fn fetch_shallow_or_whole(&self, repository: &Path, args: &[&str]) -> Result<(), GitError> {
        let mut shallow = vec!["fetch", "-q", "--depth=1"];
        shallow.extend_from_slice(args);
        if self.run_str(repository, &shallow).is_ok() {
            return Ok(());
        }
        let mut whole = vec!["fetch", "-q"];
        whole.extend_from_slice(args);
        self.run_str(repository, &whole).map(drop)
    }

    fn has_object(&self, repository: &Path, object: &str) -> bool {
        self.run_str(
            repository,
            &["cat-file", "-e", &format!("{object}^{{object}}")],
        )
        .is_ok()
    }

    /// Brings the resolved object into the store's repository (held
    /// locked), and names it with a ref of kiln's so that it stays there.
    fn fetch(
        &self,
        repository: &Path,
        source: &GitSource,
        resolved: &Resolved,
    ) -> crate::Result<()> {
        let remote = source.git.remote.as_str();
        remove_stale_locks(repository)?;
        if !self.has_object(repository, &resolved.object) {
            if is_full_commit(&resolved.reference) || source.git.fetch_by_commit {
                self.fetch_shallow_or_whole(repository, &["--", remote, &resolved.commit])?;
            } else {
                let refspec = format!("+{}:refs/kiln/fetched", resolved.reference);
                self.fetch_shallow_or_whole(repository, &["--no-tags", "--", remote, &refspec])?;
                if !self.has_object(repository, &resolved.object) {
                    // The ref moved since it was resolved: the commit itself.
                    self.fetch_shallow_or_whole(repository, &["--", remote, &resolved.object])
                        .map_err(|_| GitError::CommitNotFetched {
                            reference: resolved.reference.clone(),
                            remote: source.git.redacted_remote(),
                            commit: resolved.commit.clone(),
                        })?;
                }
            }
        }
        self.run_str(
            repository,
            &[
                "update-ref",
                &format!("refs/kiln/objects/{}", resolved.object),
                &resolved.object,
            ],
        )?;
        Ok(())
    }

    /// Checks the resolved commit out of the store's repository into the
    /// empty directory `made`: `made/tree` gets the files (with `.git` when
    /// kept), `made/commit` the commit and its time.
    fn check_out(
        &self,
        repository: &Path,
        made: &Path,
        source: &GitSource,
        resolved: &Resolved,
    ) -> crate::Result<()> {
        let work = made.join("work");
        fs::create_dir(&work).with_context(|| format!("creating {}", work.display()))?;
        self.run(&work, &init_args(resolved, false))?;
        let from = format!("file://{}", repository.display());
        let mut refspec = format!("refs/kiln/objects/{}", resolved.object);
        if resolved.reference.starts_with("refs/") {
            refspec.push_str(&format!(":{}", resolved.reference));
        }
        self.run_str(
            &work,
            &[
                "fetch",
                "-q",
                "-u",
                "--depth=1",
                "--no-tags",
                "--",
                &from,
                &refspec,
            ],
        )?;
        self.run_str(&work, &["checkout", "-q", "--detach", &resolved.commit])?;
        self.run_str(&work, &["remote", "add", "origin", &source.git.remote])?;
        if source.submodules {
            let update = ["submodule", "update", "--init", "--recursive"];
            let mut shallow = update.to_vec();
            shallow.push("--depth=1");
            if self.run_str(&work, &shallow).is_err() {
                self.run_str(&work, &update)?;
            }
        }
        self.run_str(
            &work,
            &["remote", "set-url", "origin", &source.git.redacted_remote()],
        )?;
        self.run_str(&work, &["reflog", "expire", "--all", "--expire=now"])?;
        let _ = fs::remove_file(work.join(".git/FETCH_HEAD"));
        let commit_time = self
            .run_str(&work, &["log", "-1", "--format=%ct", &resolved.commit])?
            .trim()
            .parse::<i64>()
            .map_err(|_| crate::Error::msg(format!("git gave no time for {}", resolved.commit)))?;
        if !source.keeps_git_dir() {
            remove_git_dirs(&work)?;
        }
        let tree = made.join("tree");
        let files = subdir_of(&work, source)?;
        fs::rename(&files, &tree).with_context(|| format!("moving {}", files.display()))?;
        let mtime = (source.git.mtime == Mtime::Commit).then_some(commit_time);
        normalize(&tree, mtime)?;
        fs::write(
            made.join("commit"),
            format!("{} {commit_time}\n", resolved.commit),
        )
        .with_context(|| format!("writing {}", made.join("commit").display()))?;
        Ok(())
    }
}

/// `fetch-by-commit`: the checksum is the commit, and the ref (a branch
/// unless it says otherwise) the name it gets in a kept `.git`.
fn resolve_by_commit(git: &GitRef, checksum: Option<&str>) -> crate::Result<Resolved> {
    let checksum = checksum
        .map(str::to_string)
        .or_else(|| is_full_commit(&git.reference).then(|| git.reference.clone()))
        .ok_or_else(|| {
            crate::Error::Invalid("fetch-by-commit requires a checksum or a commit SHA ref".into())
        })?;
    if !is_full_commit(&checksum) {
        return Err(crate::Error::Invalid(format!(
            "fetch-by-commit requires a full commit SHA checksum, got {checksum:?}"
        )));
    }
    let reference = match git.reference.as_str() {
        "" => checksum.clone(),
        name if name.starts_with("refs/") || is_full_commit(name) => name.to_string(),
        name => format!("refs/heads/{name}"),
    };
    Ok(Resolved {
        commit: checksum.clone(),
        object: checksum,
        reference,
    })
}

/// What `git ls-remote REMOTE REF REF^{}` said `reference` is, chosen as
/// BuildKit chooses: the ref of exactly that name, else the branch, else the
/// tag (an annotated one peeled to its commit).
fn choose_ref(reference: &str, output: &str) -> Result<Resolved, GitError> {
    let full = format!("refs/{}", reference.trim_start_matches("refs/"));
    let head = format!("refs/heads/{}", reference.trim_start_matches("refs/heads/"));
    let tag = format!("refs/tags/{}", reference.trim_start_matches("refs/tags/"));
    let annotated = format!("{tag}^{{}}");
    let (mut exact, mut branch, mut tagged, mut peeled_tag) = (None, None, None, None);
    for line in output.lines() {
        let Some((sha, name)) = line.split_once('\t') else {
            continue;
        };
        let found = Some(sha.to_string());
        if name == head {
            branch = found;
        } else if name == tag {
            tagged = found;
        } else if name == annotated {
            peeled_tag = found;
        } else if name == full {
            exact = found;
        }
    }
    let (object, used, commit) = if let Some(sha) = exact {
        (sha.clone(), full, sha)
    } else if let Some(sha) = branch {
        (sha.clone(), head, sha)
    } else if let Some(sha) = tagged {
        let commit = peeled_tag.unwrap_or_else(|| sha.clone());
        (sha, tag, commit)
    } else {
        return Err(GitError::NoSuchRef {
            reference: reference.to_string(),
            output: output.to_string(),
        });
    };
    Ok(Resolved {
        commit,
        object,
        reference: used,
    })
}

/// The `Authorization` header for an HTTPS remote, from the secrets
/// BuildKit takes it from: the header or a token, for the remote's host or
/// any.
fn authorization(git: &GitRef, secrets: &Secrets) -> crate::Result<Option<String>> {
    // The host as a URL names it, port included, as BuildKit names the
    // secrets.
    let host = &git.host;
    for (name, token) in [
        (format!("GIT_AUTH_HEADER.{host}"), false),
        (format!("GIT_AUTH_TOKEN.{host}"), true),
        ("GIT_AUTH_HEADER".to_string(), false),
        ("GIT_AUTH_TOKEN".to_string(), true),
    ] {
        let Some(secret) = secrets.secret(&name)? else {
            continue;
        };
        let value = String::from_utf8_lossy(&secret.0).trim().to_string();
        return Ok(Some(if token {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{value}"));
            format!("basic {encoded}")
        } else {
            value
        }));
    }
    Ok(None)
}

/// Removes the lock files of git commands that were killed while writing
/// to the store's repository (`shallow.lock`, `packed-refs.lock`,
/// `refs/…/NAME.lock`): git refuses to start while they exist, and no git
/// command can be running in it, since kiln holds the repository's lock.
fn remove_stale_locks(repository: &Path) -> crate::Result<()> {
    remove_locks_in(repository, false)
}

/// Removes the `*.lock` files in `dir`; in every directory below it too
/// with `below`, else only below `refs/`.
fn remove_locks_in(dir: &Path, below: bool) -> crate::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let path = entry.path();
        let file_type = entry
            .file_type()
            .with_context(|| format!("reading {}", path.display()))?;
        if file_type.is_file() && path.extension().is_some_and(|e| e == "lock") {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        } else if file_type.is_dir() && (below || entry.file_name() == "refs") {
            remove_locks_in(&path, true)?;
        }
    }
    Ok(())
}

/// Arguments for a message, with passwords in URLs hidden.
fn redact_args(args: &[String]) -> String {
    args.iter()
        .map(|arg| match GitRef::parse(arg) {
            Ok(Some(git)) if arg.contains("://") => {
                arg.replacen(&git.remote, &git.redacted_remote(), 1)
            }
            _ => arg.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Removes `.git` (the repository, and the files submodules point to their
/// own with): git never tracks a path named `.git`, so nothing else goes.
fn remove_git_dirs(dir: &Path) -> crate::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let path = entry.path();
        let file_type = entry
            .file_type()
            .with_context(|| format!("reading {}", path.display()))?;
        if entry.file_name() == ".git" {
            let removed = if file_type.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.with_context(|| format!("removing {}", path.display()))?;
        } else if file_type.is_dir() {
            remove_git_dirs(&path)?;
        }
    }
    Ok(())
}

/// The directory of the checkout `work` to take: its root, or the subdir,
/// which must be a directory reached through directories only.
fn subdir_of(work: &Path, source: &GitSource) -> crate::Result<PathBuf> {
    let mut dir = work.to_path_buf();
    for part in source.git.subdir.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
        let invalid = |reason: &str| GitError::InvalidSubdir {
            subdir: source.git.subdir.clone(),
            remote: source.git.redacted_remote(),
            reason: reason.to_string(),
        };
        match fs::symlink_metadata(&dir) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => return Err(invalid(&format!("{part} is not a directory")).into()),
            Err(_) => return Err(invalid("no such directory at that commit").into()),
        }
    }
    Ok(dir)
}

/// Gives what git checked out the modes it would have under umask 022
/// (whatever kiln's umask), and with `mtime` that time.
fn normalize(path: &Path, mtime: Option<i64>) -> crate::Result<()> {
    let metadata =
        fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if metadata.is_dir() {
        for entry in fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
            normalize(
                &entry
                    .with_context(|| format!("reading {}", path.display()))?
                    .path(),
                mtime,
            )?;
        }
    }
    if !metadata.file_type().is_symlink() {
        let executable = metadata.is_dir() || metadata.mode() & 0o100 != 0;
        let mode = if executable { 0o755 } else { 0o644 };
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    if let Some(seconds) = mtime {
        let time = rustix::fs::Timespec {
            tv_sec: seconds,
            tv_nsec: 0,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            path,
            &rustix::fs::Timestamps {
                last_access: time,
                last_modification: time,
            },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(std::io::Error::from)
        .with_context(|| format!("setting the time of {}", path.display()))?;
    }
    Ok(())
}

/// A git URL as the build context (`kiln build https://HOST/REPO.git#REF:DIR`):
/// the Dockerfile arguments with the checkout as the context, and `-f`
/// read inside it as BuildKit reads it; `None` for a directory. The second
/// value is the commit's time (`SOURCE_DATE_EPOCH=context`).
pub fn context_checkout(
    store: &Store,
    secrets: &Secrets,
    args: &crate::dockerfile::DockerfileArgs,
) -> crate::Result<Option<(crate::dockerfile::DockerfileArgs, i64)>> {
    let Some(text) = args.context.to_str() else {
        return Ok(None);
    };
    let git = match GitRef::parse(text) {
        Ok(Some(git)) => git,
        Ok(None) => return Ok(None),
        Err(error) => {
            return Err(crate::Error::Invalid(format!(
                "invalid git URL {text:?} as the build context: {error}"
            )))
        }
    };
    let mut source = GitSource::new(git);
    let build_arg = |name: &str| {
        args.build_args
            .iter()
            .rev()
            .find_map(|arg| arg.strip_prefix(name)?.strip_prefix('='))
    };
    // As BuildKit's Dockerfile frontend: a build with an epoch dates the
    // context's files by the commit, and a build argument can keep `.git`.
    if build_arg("SOURCE_DATE_EPOCH").is_some_and(|value| !value.is_empty()) {
        source.git.mtime = Mtime::Commit;
    }
    if build_arg("BUILDKIT_CONTEXT_KEEP_GIT_DIR")
        .is_some_and(|value| value == "1" || value.eq_ignore_ascii_case("true"))
    {
        source.keep_git_dir = true;
    }
    let checkout = checkout(store, secrets, &source).with_context(|| {
        format!(
            "fetching the build context {}",
            source.git.redacted_remote()
        )
    })?;
    let inside = match &args.file {
        Some(file) if file.as_os_str() != "-" => {
            Some(file.strip_prefix("/").unwrap_or(file).to_path_buf())
        }
        _ => None,
    };
    let file_name = inside.as_ref().map_or_else(
        || "Dockerfile".to_string(),
        |file| file.display().to_string(),
    );
    let file = match inside {
        Some(inside) => Some(checkout.dir.join(inside)),
        None => args.file.clone(),
    };
    Ok(Some((
        crate::dockerfile::DockerfileArgs {
            context: checkout.dir.clone(),
            file,
            shown_as: (args.file.as_deref() != Some(Path::new("-"))).then_some(file_name),
            ..args.clone()
        },
        checkout.commit_time,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "1111111111111111111111111111111111111111";
    const TAG_OBJECT: &str = "2222222222222222222222222222222222222222";
    const OTHER: &str = "3333333333333333333333333333333333333333";

    #[test]
    fn refs_are_chosen_as_buildkit_chooses_them() {
        let both = format!(
            "{OTHER}\trefs/heads/v1\n{TAG_OBJECT}\trefs/tags/v1\n{COMMIT}\trefs/tags/v1^{{}}\n"
        );
        let branch = choose_ref("v1", &both).expect("found");
        assert_eq!(
            (branch.commit.as_str(), branch.reference.as_str()),
            (OTHER, "refs/heads/v1")
        );
        let tag = choose_ref("refs/tags/v1", &both).expect("found");
        assert_eq!(
            (
                tag.commit.as_str(),
                tag.object.as_str(),
                tag.reference.as_str()
            ),
            (COMMIT, TAG_OBJECT, "refs/tags/v1"),
            "an annotated tag is peeled to its commit"
        );
        let pull = format!("{OTHER}\trefs/pull/1/head\n");
        assert_eq!(
            choose_ref("pull/1/head", &pull).expect("found").commit,
            OTHER
        );
        let missing = choose_ref("v2", &both).expect_err("no such ref");
        assert!(missing
            .to_string()
            .starts_with("repository does not contain ref v2"));
    }

    fn source(url: &str) -> GitSource {
        GitSource::new(GitRef::parse(url).expect("valid").expect("git"))
    }

    #[test]
    fn keys_name_the_commit_and_what_changes_the_files_never_the_url() {
        let resolved = Resolved {
            commit: COMMIT.to_string(),
            object: TAG_OBJECT.to_string(),
            reference: "refs/tags/v1".to_string(),
        };
        let by_tag = key_of(&source("https://h/r.git#v1"), &resolved);
        assert_eq!(by_tag, COMMIT);
        assert_eq!(key_of(&source("git@h:r.git?ref=v1"), &resolved), by_tag);
        assert_eq!(
            key_of(&source("https://h/r.git#v1:docs"), &resolved),
            format!("{COMMIT} subdir docs")
        );
        assert_eq!(
            key_of(
                &source("https://h/r.git?keep-git-dir=true&submodules=false"),
                &resolved
            ),
            format!("{COMMIT} .git refs/tags/v1 {TAG_OBJECT} without-submodules")
        );
        assert_eq!(
            key_of(
                &source("https://h/r.git?keep-git-dir=true&subdir=docs"),
                &resolved
            ),
            format!("{COMMIT} subdir docs"),
            ".git is not kept for a subdirectory"
        );
    }

    #[test]
    fn locks_left_by_a_killed_git_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("repository");
        let repository = dir.path();
        for path in ["refs/heads", "refs/kiln/objects", "objects/pack"] {
            fs::create_dir_all(repository.join(path)).expect("mkdir");
        }
        for file in [
            "shallow.lock",
            "packed-refs.lock",
            "refs/kiln/objects/abc.lock",
            "HEAD",
            "refs/heads/main",
            "objects/pack/pack-1.pack",
        ] {
            fs::write(repository.join(file), "").expect("write");
        }
        remove_stale_locks(repository).expect("removed");
        for gone in [
            "shallow.lock",
            "packed-refs.lock",
            "refs/kiln/objects/abc.lock",
        ] {
            assert!(!repository.join(gone).exists(), "{gone}");
        }
        for kept in ["HEAD", "refs/heads/main", "objects/pack/pack-1.pack"] {
            assert!(repository.join(kept).exists(), "{kept}");
        }
    }

    #[test]
    fn fetch_by_commit_takes_the_checksum_for_the_commit() {
        let commit = COMMIT;
        let resolve = |url: &str| {
            let source = GitSource::new(GitRef::parse(url).expect("valid").expect("git"));
            resolve_by_commit(&source.git, source.checksum.as_deref())
                .map_err(|error| error.to_string())
        };
        let named = resolve(&format!(
            "https://h/r.git?ref=main&checksum={commit}&fetch-by-commit"
        ))
        .expect("resolved");
        assert_eq!(
            (named.commit.as_str(), named.reference.as_str()),
            (commit, "refs/heads/main")
        );
        assert_eq!(
            resolve(&format!("https://h/r.git?fetch-by-commit#{commit}")).map(|r| r.commit),
            Ok(commit.to_string())
        );
        assert_eq!(
            resolve("https://h/r.git?fetch-by-commit&commit=1111").map(|r| r.commit),
            Err("fetch-by-commit requires a full commit SHA checksum, got \"1111\"".to_string())
        );
        assert!(resolve("https://h/r.git?fetch-by-commit").is_err());
    }

    #[test]
    fn messages_hide_passwords_in_urls() {
        let args = vec!["fetch".to_string(), "https://me:secret@h/r.git".to_string()];
        assert_eq!(redact_args(&args), "fetch https://me:xxxxx@h/r.git");
    }
}
