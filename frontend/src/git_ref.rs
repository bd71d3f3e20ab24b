//! Git URLs as BuildKit reads them in `ADD` and as a build context:
//! `https://HOST/REPO.git#REF:SUBDIR`, `git@HOST:REPO.git#REF`, `ssh://`,
//! `git://`, and the query form (`?ref=…&tag=…&branch=…&commit=…&subdir=…
//! &keep-git-dir=…&submodules=…&mtime=…`). Only parsing: fetching is the
//! builder's.

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

/// What in a git URL is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitRefError {
    #[error("query {0:?} has no value")]
    NoValue(String),
    #[error("query {0:?} has multiple values")]
    MultipleValues(String),
    #[error("ref conflicts: {0:?} vs {1:?}")]
    RefConflict(String, String),
    #[error("subdir conflicts: {0:?} vs {1:?}")]
    SubdirConflict(String, String),
    #[error("branch conflicts with tag")]
    BranchWithTag,
    #[error("invalid {name} value: {value:?} (expected true or false)")]
    InvalidBool { name: String, value: String },
    #[error("invalid mtime value: {0:?} (must be \"checkout\" or \"commit\")")]
    InvalidMtime(String),
    #[error("unexpected query {0:?} (expected ref, tag, branch, commit, checksum, subdir, keep-git-dir, submodules, mtime or fetch-by-commit)")]
    UnknownQuery(String),
    #[error("invalid git ref {0:?}: a ref cannot start with '-'")]
    DashRef(String),
}

/// How the files of a checkout are dated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Mtime {
    /// When they were checked out (BuildKit's default).
    #[default]
    Checkout,
    /// The commit's time (`?mtime=commit`).
    Commit,
}

/// A git repository and what to take of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitRef {
    /// The URL git is given: without the fragment and the query.
    pub remote: String,
    /// The host, for credentials (`GIT_AUTH_TOKEN.HOST`); empty for none.
    pub host: String,
    /// Reached over SSH (`ssh://` or `user@host:path`).
    pub ssh: bool,
    /// A branch, tag, full ref name or commit; empty for the default branch.
    pub reference: String,
    /// A commit hash, or a prefix of it, the ref must resolve to.
    pub checksum: Option<String>,
    /// A directory of the repository to take instead of its root.
    pub subdir: String,
    /// Whether the query said to keep `.git`.
    pub keep_git_dir: Option<bool>,
    /// Whether the query said to check submodules out (the default).
    pub submodules: Option<bool>,
    pub mtime: Mtime,
    /// `fetch-by-commit`: the checksum is taken for the commit without
    /// asking the remote what the ref names, and fetched by its hash.
    pub fetch_by_commit: bool,
}

/// `scheme://` at the start of a URL, as BuildKit recognises one.
fn scheme_of(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    (!scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(scheme)
}

/// `user@host:path[?query][#fragment]`, as git's scp-like syntax (and
/// BuildKit) reads it: user, host, and what follows the colon.
fn scp_like(text: &str) -> Option<(&str, &str, &str)> {
    let (user, rest) = text.split_once('@')?;
    let (host, path) = rest.split_once(':')?;
    let user_ok = !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    (user_ok && host_ok).then_some((user, host, path))
}

/// Splits `rest` into what comes before `?query#fragment`, the query and
/// the fragment.
fn split_options(rest: &str) -> (&str, Option<&str>, &str) {
    let (before_fragment, fragment) = rest.split_once('#').unwrap_or((rest, ""));
    match before_fragment.split_once('?') {
        Some((base, query)) => (base, Some(query), fragment),
        None => (before_fragment, None, fragment),
    }
}

fn decode(text: &str) -> String {
    percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// `REF:SUBDIR` of a fragment, the subdir cleaned as a relative path.
fn fragment_options(fragment: &str) -> (String, String) {
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    (reference.to_string(), clean_subdir(subdir))
}

/// A subdirectory as a relative path without `.`, `..` or empty parts
/// (`..` never climbs above the repository's root).
fn clean_subdir(subdir: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in subdir.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

impl GitRef {
    /// Whether BuildKit takes `text` for a git repository rather than a
    /// path or a plain URL.
    pub fn is_git_url(text: &str) -> bool {
        !matches!(GitRef::parse(text), Ok(None))
    }

    /// Reads a git URL: `Ok(None)` when `text` is not one (a path, a URL of
    /// another scheme, an http(s) URL whose path does not end in `.git`),
    /// an error when it is one with options that make no sense.
    pub fn parse(text: &str) -> Result<Option<GitRef>, GitRefError> {
        if text.starts_with("./") || text.starts_with("../") || text.starts_with("github.com/") {
            return Ok(None);
        }
        let (remote, host, ssh, query, fragment) = if let Some(scheme) = scheme_of(text) {
            let scheme = scheme.to_ascii_lowercase();
            if !matches!(scheme.as_str(), "http" | "https" | "ssh" | "git") {
                return Ok(None);
            }
            let rest = &text[scheme.len() + 3..];
            let (base, query, fragment) = split_options(rest);
            let (authority, path) = match base.find('/') {
                Some(slash) => (&base[..slash], &base[slash..]),
                None => (base, ""),
            };
            if matches!(scheme.as_str(), "http" | "https") && !path.ends_with(".git") {
                return Ok(None);
            }
            let host_and_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let host = host_and_port.to_string();
            let remote = format!("{}://{base}", &text[..scheme.len()]);
            (remote, host, scheme == "ssh", query, fragment)
        } else if let Some((_, host, path)) = scp_like(text) {
            let (path, query, fragment) = split_options(path);
            let prefix_length = text.len() - text.split_once(':').map_or("", |(_, p)| p).len();
            let remote = format!("{}{path}", &text[..prefix_length]);
            (remote, host.to_string(), true, query, fragment)
        } else {
            return Ok(None);
        };
        let (reference, subdir) = fragment_options(fragment);
        let mut git_ref = GitRef {
            remote,
            host,
            ssh,
            reference,
            checksum: None,
            subdir,
            keep_git_dir: None,
            submodules: None,
            mtime: Mtime::Checkout,
            fetch_by_commit: false,
        };
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            git_ref.load_query(query)?;
        }
        if git_ref.reference.starts_with('-') {
            return Err(GitRefError::DashRef(git_ref.reference));
        }
        Ok(Some(git_ref))
    }

    fn load_query(&mut self, query: &str) -> Result<(), GitRefError> {
        let mut values: Vec<(String, Option<String>)> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key, value) = (decode(key), decode(value));
            if values.iter().any(|(k, _)| *k == key) {
                return Err(GitRefError::MultipleValues(key));
            }
            let value = if value.is_empty() {
                if !matches!(
                    key.as_str(),
                    "submodules" | "keep-git-dir" | "fetch-by-commit"
                ) {
                    return Err(GitRefError::NoValue(key));
                }
                None
            } else {
                Some(value)
            };
            values.push((key, value));
        }
        let flag = |name: &str, value: Option<String>| -> Result<bool, GitRefError> {
            match value.as_deref() {
                None => Ok(true),
                Some(text) => parse_bool(text).ok_or_else(|| GitRefError::InvalidBool {
                    name: name.to_string(),
                    value: text.to_string(),
                }),
            }
        };
        let (mut tag, mut branch) = (None, None);
        for (key, value) in values {
            let text = value.clone().unwrap_or_default();
            match key.as_str() {
                "ref" => {
                    if !self.reference.is_empty() && self.reference != text {
                        return Err(GitRefError::RefConflict(self.reference.clone(), text));
                    }
                    self.reference = text;
                }
                "tag" => tag = Some(text),
                "branch" => branch = Some(text),
                "subdir" => {
                    let subdir = clean_subdir(&text);
                    if !self.subdir.is_empty() && self.subdir != subdir {
                        return Err(GitRefError::SubdirConflict(self.subdir.clone(), subdir));
                    }
                    self.subdir = subdir;
                }
                "checksum" | "commit" => self.checksum = Some(text),
                "keep-git-dir" => self.keep_git_dir = Some(flag(&key, value)?),
                "submodules" => self.submodules = Some(flag(&key, value)?),
                "fetch-by-commit" => self.fetch_by_commit = flag(&key, value)?,
                "mtime" => {
                    self.mtime = match text.as_str() {
                        "checkout" => Mtime::Checkout,
                        "commit" => Mtime::Commit,
                        _ => return Err(GitRefError::InvalidMtime(text)),
                    }
                }
                _ => return Err(GitRefError::UnknownQuery(key)),
            }
        }
        if let Some(tag) = tag {
            if branch.is_some() {
                return Err(GitRefError::BranchWithTag);
            }
            self.narrow_reference(qualified("refs/tags/", &tag))?;
        }
        if let Some(branch) = branch {
            self.narrow_reference(qualified("refs/heads/", &branch))?;
        }
        Ok(())
    }

    fn narrow_reference(&mut self, full: String) -> Result<(), GitRefError> {
        if !self.reference.is_empty() && self.reference != full {
            return Err(GitRefError::RefConflict(self.reference.clone(), full));
        }
        self.reference = full;
        Ok(())
    }

    /// The URL without credentials, for messages and `.git/config`.
    pub fn redacted_remote(&self) -> String {
        let Some((scheme, rest)) = self.remote.split_once("://") else {
            return self.remote.clone();
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rsplit_once('@') {
            Some((user_info, host)) if user_info.contains(':') => {
                let user = user_info.split_once(':').map_or(user_info, |(u, _)| u);
                format!("{scheme}://{user}:xxxxx@{host}{}", &rest[authority_end..])
            }
            _ => self.remote.clone(),
        }
    }
}

fn qualified(prefix: &str, name: &str) -> String {
    if name.starts_with(prefix) {
        name.to_string()
    } else {
        format!("{prefix}{name}")
    }
}

/// Go's `strconv.ParseBool`, which BuildKit reads these flags with.
fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Whether `text` is a commit hash or a prefix of one, as `--checksum` and
/// `?commit=` take them.
pub fn is_hex_commit(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `text` is a whole commit hash (sha1 or sha256).
pub fn is_full_commit(text: &str) -> bool {
    (text.len() == 40 || text.len() == 64)
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> GitRef {
        GitRef::parse(text)
            .expect("a valid git URL")
            .expect("a git URL")
    }

    #[test]
    fn what_counts_as_a_git_url() {
        for git in [
            "https://github.com/moby/buildkit.git",
            "https://github.com/moby/buildkit.git#v0.12:docs",
            "http://127.0.0.1:8000/repo.git?ref=main",
            "git@github.com:moby/buildkit.git",
            "deploy_user@host.example:repo",
            "ssh://git@host/repo",
            "git://host/repo",
        ] {
            assert!(GitRef::is_git_url(git), "{git}");
        }
        for other in [
            "https://example.com/file.tar.gz",
            "https://example.com/repo.git/file",
            "github.com/moby/buildkit",
            "./git@host:x",
            "ftp://host/repo.git",
            "src/",
            "dir:with:colons",
        ] {
            assert!(!GitRef::is_git_url(other), "{other}");
        }
    }

    #[test]
    fn fragments_give_the_ref_and_subdir() {
        let git = parsed("https://user:secret@host/r.git#v1.0:./a/../b/");
        assert_eq!(git.remote, "https://user:secret@host/r.git");
        assert_eq!(git.host, "host");
        assert_eq!((git.reference.as_str(), git.subdir.as_str()), ("v1.0", "b"));
        assert_eq!(git.redacted_remote(), "https://user:xxxxx@host/r.git");
        let scp = parsed("git@github.com:moby/buildkit.git#main");
        assert_eq!(scp.remote, "git@github.com:moby/buildkit.git");
        assert!(scp.ssh);
        assert_eq!(scp.reference, "main");
    }

    #[test]
    fn queries_as_buildkit_reads_them() {
        let git = parsed(
            "https://h/r.git?tag=v0.0.2&keep-git-dir&submodules=false&commit=abc&fetch-by-commit",
        );
        assert!(git.fetch_by_commit);
        assert_eq!(git.reference, "refs/tags/v0.0.2");
        assert_eq!(git.keep_git_dir, Some(true));
        assert_eq!(git.submodules, Some(false));
        assert_eq!(git.checksum.as_deref(), Some("abc"));
        assert_eq!(
            parsed("https://h/r.git?tag=v0.0.2#refs/tags/v0.0.2").reference,
            "refs/tags/v0.0.2"
        );
        assert_eq!(
            parsed("https://h/r.git?subdir=sub&ref=feature").subdir,
            "sub"
        );
        let error = |text: &str| GitRef::parse(text).expect_err(text).to_string();
        assert_eq!(
            error("https://h/r.git?tag=v0.0.2#refs/heads/master"),
            "ref conflicts: \"refs/heads/master\" vs \"refs/tags/v0.0.2\""
        );
        assert_eq!(error("https://h/r.git?ref"), "query \"ref\" has no value");
        assert_eq!(
            error("https://h/r.git?ref=a&ref=b"),
            "query \"ref\" has multiple values"
        );
        assert!(error("https://h/r.git?depth=1").starts_with("unexpected query \"depth\""));
        assert!(error("https://h/r.git?submodules=maybe").contains("invalid submodules value"));
        assert_eq!(
            error("https://h/r.git?tag=a&branch=b"),
            "branch conflicts with tag"
        );
    }

    #[test]
    fn commit_hashes() {
        assert!(is_hex_commit("b559badd"));
        assert!(!is_hex_commit("foobar"));
        assert!(is_full_commit(&"a".repeat(40)));
        assert!(is_full_commit(&"0".repeat(64)));
        assert!(!is_full_commit("b559badd"));
    }
}
