//! Credentials as Docker keeps them: `config.json` (`$DOCKER_CONFIG`, or
//! `~/.docker`) with `auths`, `credsStore` and `credHelpers`, the latter two
//! through `docker-credential-*` programs (found in PATH, or in the
//! directories a caller names). `kiln login` and `kiln logout` write the
//! same file, so docker, skopeo and kiln share one login.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::{Map, Value};

use crate::error::Error;

/// Where Docker's client keeps credentials for Docker Hub.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// What a registry is told who we are with.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth refresh token (`identitytoken`), exchanged for access tokens.
    IdentityToken {
        token: String,
    },
}

impl Credential {
    /// The user name, which may be shown; the secret never is.
    pub fn username(&self) -> Option<&str> {
        match self {
            Credential::Basic { username, .. } => Some(username),
            Credential::IdentityToken { .. } => None,
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => {
                write!(f, "Basic {{ username: {username:?}, password: <hidden> }}")
            }
            Credential::IdentityToken { .. } => write!(f, "IdentityToken {{ <hidden> }}"),
        }
    }
}

/// Docker's client configuration file.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    path: PathBuf,
    /// The whole file, so that writing it keeps what kiln does not know.
    json: Map<String, Value>,
    /// Where credential helpers are looked for; none means PATH.
    helper_dirs: Option<Vec<PathBuf>>,
}

/// The key under which Docker files credentials for a registry host.
fn server_key(registry: &str) -> String {
    if registry == crate::reference::DEFAULT_REGISTRY {
        DOCKER_HUB_KEY.to_string()
    } else {
        registry.to_string()
    }
}

/// The host part of a key of `auths`, which may be a URL
/// (`https://host/v1/`) or a bare `host[:port]`.
fn key_host(key: &str) -> &str {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    without_scheme.split('/').next().unwrap_or(without_scheme)
}

fn registry_of_key(key: &str) -> String {
    match key_host(key) {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => {
            crate::reference::DEFAULT_REGISTRY.to_string()
        }
        host => host.to_string(),
    }
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, or `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|home| PathBuf::from(home).join(".docker/config.json"))
    }

    /// Reads the file; a missing one is an empty configuration.
    pub fn load(path: &Path) -> Result<DockerConfig, Error> {
        let json = match std::fs::read(path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Map::new(),
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(Value::Object(map)) => map,
                Ok(_) => {
                    return Err(Error::Config {
                        path: path.to_path_buf(),
                        reason: "it is not a JSON object".to_string(),
                    })
                }
                Err(e) => {
                    return Err(Error::Config {
                        path: path.to_path_buf(),
                        reason: format!("it is not valid JSON: {e}"),
                    })
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        Ok(DockerConfig {
            path: path.to_path_buf(),
            json,
            helper_dirs: None,
        })
    }

    /// Looks for `docker-credential-*` programs in `dirs` only, in order,
    /// instead of in PATH.
    pub fn with_helper_dirs(mut self, dirs: Vec<PathBuf>) -> DockerConfig {
        self.helper_dirs = Some(dirs);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn helper_for(&self, registry: &str) -> Option<String> {
        let helpers = self.json.get("credHelpers").and_then(Value::as_object);
        if let Some(helpers) = helpers {
            for (key, helper) in helpers {
                if registry_of_key(key) == registry {
                    if let Some(helper) = helper.as_str().filter(|h| !h.is_empty()) {
                        return Some(helper.to_string());
                    }
                }
            }
        }
        self.json
            .get("credsStore")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// The credential for `registry` (a host as in a reference, such as
    /// `docker.io` or `localhost:5000`), if any.
    pub fn credential(&self, registry: &str) -> Result<Option<Credential>, Error> {
        if let Some(helper) = self.helper_for(registry) {
            let dirs = self.helper_dirs.as_deref();
            if let Some(credential) = helper_get(&helper, dirs, &server_key(registry))? {
                return Ok(Some(credential));
            }
        }
        let Some(auths) = self.json.get("auths").and_then(Value::as_object) else {
            return Ok(None);
        };
        for (key, entry) in auths {
            if registry_of_key(key) != registry {
                continue;
            }
            return self.parse_auth(key, entry);
        }
        Ok(None)
    }

    fn parse_auth(&self, key: &str, entry: &Value) -> Result<Option<Credential>, Error> {
        let invalid = |reason: &str| Error::Config {
            path: self.path.clone(),
            reason: format!("auths.{key}: {reason}"),
        };
        if let Some(token) = entry
            .get("identitytoken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            return Ok(Some(Credential::IdentityToken {
                token: token.to_string(),
            }));
        }
        if let Some(auth) = entry
            .get("auth")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| invalid("\"auth\" is not base64"))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| invalid("\"auth\" does not decode to text"))?;
            let (username, password) = decoded
                .split_once(':')
                .ok_or_else(|| invalid("\"auth\" does not decode to user:password"))?;
            return Ok(Some(Credential::Basic {
                username: username.to_string(),
                password: password.to_string(),
            }));
        }
        let username = entry.get("username").and_then(Value::as_str);
        let password = entry.get("password").and_then(Value::as_str);
        Ok(match (username, password) {
            (Some(username), Some(password)) => Some(Credential::Basic {
                username: username.to_string(),
                password: password.to_string(),
            }),
            _ => None,
        })
    }

    /// Saves a login for `registry`: in its credential helper when the
    /// configuration names one, in `auths` otherwise.
    pub fn store(&mut self, registry: &str, username: &str, password: &str) -> Result<(), Error> {
        if let Some(helper) = self.helper_for(registry) {
            let request = serde_json::json!({
                "ServerURL": server_key(registry),
                "Username": username,
                "Secret": password,
            });
            let input = request.to_string();
            run_helper(
                &helper,
                self.helper_dirs.as_deref(),
                "store",
                input.as_bytes(),
            )?;
            return Ok(());
        }
        let auths = self
            .json
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(auths) = auths else {
            return Err(Error::Config {
                path: self.path.clone(),
                reason: "\"auths\" is not an object".to_string(),
            });
        };
        auths.retain(|key, _| registry_of_key(key) != registry);
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        auths.insert(server_key(registry), serde_json::json!({ "auth": encoded }));
        self.save()
    }

    /// Forgets the login for `registry`; returns whether there was one.
    pub fn erase(&mut self, registry: &str) -> Result<bool, Error> {
        let mut found = false;
        if let Some(helper) = self.helper_for(registry) {
            let dirs = self.helper_dirs.as_deref();
            found = helper_get(&helper, dirs, &server_key(registry))?.is_some();
            if found {
                run_helper(&helper, dirs, "erase", server_key(registry).as_bytes())?;
            }
        }
        if let Some(Value::Object(auths)) = self.json.get_mut("auths") {
            let before = auths.len();
            auths.retain(|key, _| registry_of_key(key) != registry);
            if auths.len() != before {
                found = true;
                self.save()?;
            }
        }
        Ok(found)
    }

    /// Writes the file atomically, readable by its owner only.
    fn save(&self) -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut bytes = serde_json::to_vec_pretty(&self.json).map_err(|e| Error::Config {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        let mut temp = tempfile::Builder::new()
            .prefix(".config.json.")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        temp.write_all(&bytes)
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|e| Error::io(temp.path(), e))?;
        temp.persist(&self.path)
            .map_err(|e| Error::io(&self.path, e.error))?;
        Ok(())
    }
}

/// Asks a credential helper (looked for in `dirs`, or PATH) for `server`;
/// `None` when it has nothing.
fn helper_get(
    helper: &str,
    dirs: Option<&[PathBuf]>,
    server: &str,
) -> Result<Option<Credential>, Error> {
    let output = match run_helper(helper, dirs, "get", server.as_bytes()) {
        Ok(output) => output,
        // Helpers exit 1 with this text when they have no entry.
        Err(Error::CredentialHelper { reason, .. }) if reason.contains("credentials not found") => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        username: String,
        secret: String,
    }
    let answer: Answer = serde_json::from_slice(&output).map_err(|e| Error::CredentialHelper {
        helper: helper.to_string(),
        reason: format!("its answer is not the expected JSON: {e}"),
    })?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if answer.username == "<token>" {
        Credential::IdentityToken {
            token: answer.secret,
        }
    } else {
        Credential::Basic {
            username: answer.username,
            password: answer.secret,
        }
    }))
}

/// Runs `action` of a credential helper, looked for in `dirs`, or PATH.
fn run_helper(
    helper: &str,
    dirs: Option<&[PathBuf]>,
    action: &str,
    input: &[u8],
) -> Result<Vec<u8>, Error> {
    let program = format!("docker-credential-{helper}");
    let failed = |reason: String| Error::CredentialHelper {
        helper: helper.to_string(),
        reason,
    };
    // A bare name is looked for in PATH by the system.
    let path = match dirs {
        None => PathBuf::from(&program),
        Some(dirs) => dirs
            .iter()
            .map(|dir| dir.join(&program))
            .find(|path| is_executable(path))
            .ok_or_else(|| {
                let searched: Vec<String> =
                    dirs.iter().map(|dir| dir.display().to_string()).collect();
                failed(format!(
                    "cannot run {program}: it is not in {}",
                    searched.join(", ")
                ))
            })?,
    };
    let mut child = Command::new(&path)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| failed(format!("cannot talk to it: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| failed(format!("cannot talk to it: {e}")))?;
    if !output.status.success() {
        // Helpers print their reason on stdout; neither stream holds a secret
        // when they fail.
        let said = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let said = if said.is_empty() {
            String::from_utf8_lossy(&output.stderr).trim().to_string()
        } else {
            said
        };
        return Err(failed(format!("`{action}` failed: {said}")));
    }
    Ok(output.stdout)
}

/// Whether `path` is a file its permissions let someone run, as a shell
/// looking through PATH checks.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> (tempfile::TempDir, DockerConfig) {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).expect("write");
        let config = DockerConfig::load(&path).expect("load");
        (dir, config)
    }

    #[test]
    fn auths_are_found_by_host_in_every_form_docker_writes() {
        let (_dir, config) = config(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
                "registry.example.com:5000": {"username": "u", "password": "p"},
                "http://old.example.com/v1/": {"auth": "b2xkOnB3"},
                "token.example.com": {"identitytoken": "refresh"}
            }}"#,
        );
        assert_eq!(
            config.credential("docker.io").expect("hub"),
            Some(Credential::Basic {
                username: "hub".into(),
                password: "secret".into()
            })
        );
        assert_eq!(
            config
                .credential("registry.example.com:5000")
                .expect("plain"),
            Some(Credential::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(
            config
                .credential("old.example.com")
                .expect("url key")
                .and_then(|c| c.username().map(str::to_string)),
            Some("old".into())
        );
        assert_eq!(
            config.credential("token.example.com").expect("token"),
            Some(Credential::IdentityToken {
                token: "refresh".into()
            })
        );
        assert_eq!(config.credential("elsewhere.io").expect("none"), None);
    }

    #[test]
    fn login_and_logout_keep_the_rest_of_the_file() {
        let (dir, mut config) = config(r#"{"psFormat": "table", "auths": {}}"#);
        config.store("localhost:5000", "me", "pw").expect("store");
        let path = dir.path().join("config.json");
        let written: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(written["psFormat"], "table");
        assert_eq!(written["auths"]["localhost:5000"]["auth"], "bWU6cHc=");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let reloaded = DockerConfig::load(&path).expect("load");
        assert_eq!(
            reloaded
                .credential("localhost:5000")
                .expect("get")
                .and_then(|c| c.username().map(str::to_string)),
            Some("me".into())
        );
        assert!(config.erase("localhost:5000").expect("erase"));
        assert!(!config.erase("localhost:5000").expect("erase again"));
        let reloaded = DockerConfig::load(&path).expect("load");
        assert_eq!(reloaded.credential("localhost:5000").expect("get"), None);
    }

    #[test]
    fn helpers_are_looked_for_only_in_the_directories_given() {
        let (dir, config) = config(r#"{"credsStore": "kiln-nowhere"}"#);
        let empty = dir.path().join("helpers");
        std::fs::create_dir(&empty).expect("mkdir");
        let err = config
            .with_helper_dirs(vec![empty])
            .credential("registry.example.com")
            .expect_err("no helper there");
        let message = err.to_string();
        assert!(
            message.contains("docker-credential-kiln-nowhere: it is not in")
                && message.contains("helpers"),
            "{message}"
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output_and_bad_files_are_named() {
        let credential = Credential::Basic {
            username: "me".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{credential:?}").contains("hunter2"));
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{not json").expect("write");
        let err = DockerConfig::load(&path).expect_err("invalid");
        assert!(err.to_string().contains("config.json"), "{err}");
        std::fs::write(&path, r#"{"auths": {"h": {"auth": "!!"}}}"#).expect("write");
        let err = DockerConfig::load(&path)
            .expect("load")
            .credential("h")
            .expect_err("bad base64");
        assert!(err.to_string().contains("auths.h"), "{err}");
    }
}
