//! What `--secret` and `--ssh` give a build: secrets by id (from a file or
//! a variable, read only when a step mounts them) and SSH agent sockets.

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use kiln_runtime::Sensitive;

use crate::error::{bail, Context};

/// The variable that points to an SSH agent's socket.
pub(crate) const SSH_AUTH_SOCK: &str = "SSH_AUTH_SOCK";

/// Where a `--secret` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// `--secret id=ID[,src=PATH|,env=VAR][,type=file|env]`, as buildx reads
/// it: with neither source, the variable named ID if it is set, else the
/// file ID.
pub fn parse_secret(spec: &str) -> crate::Result<(String, SecretSource)> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    let mut kind = None;
    for field in spec.split(',') {
        let (key, value) = field
            .split_once('=')
            .with_context(|| format!("invalid --secret {spec:?}: {field:?} is not KEY=VALUE"))?;
        match key.trim().to_ascii_lowercase().as_str() {
            "id" => id = Some(value.to_string()),
            "src" | "source" => src = Some(value.to_string()),
            "env" => env = Some(value.to_string()),
            "type" if value == "file" || value == "env" => kind = Some(value.to_string()),
            "type" => bail!("invalid --secret {spec:?}: type must be file or env"),
            other => bail!(
                "invalid --secret {spec:?}: unknown key {other:?} (expected id, src, env or type)"
            ),
        }
    }
    let id = id
        .or_else(|| src.clone())
        .or_else(|| env.clone())
        .with_context(|| format!("invalid --secret {spec:?}: it needs id=NAME"))?;
    let source = match (src, env, kind.as_deref()) {
        (Some(_), Some(_), _) => {
            bail!("invalid --secret {spec:?}: give either src or env, not both")
        }
        (Some(path), None, Some("env")) | (None, Some(path), Some("env")) => {
            SecretSource::Env(path)
        }
        (Some(path), None, _) => SecretSource::File(PathBuf::from(path)),
        (None, Some(var), _) => SecretSource::Env(var),
        (None, None, Some("env")) => SecretSource::Env(id.clone()),
        (None, None, Some(_)) => SecretSource::File(PathBuf::from(&id)),
        (None, None, None) if std::env::var_os(&id).is_some() => SecretSource::Env(id.clone()),
        (None, None, None) => SecretSource::File(PathBuf::from(&id)),
    };
    Ok((id, source))
}

/// `--ssh ID[=SOCKET]`: `default` without a socket is `$SSH_AUTH_SOCK`.
pub fn parse_ssh(spec: &str) -> crate::Result<(String, PathBuf)> {
    let (id, socket) = match spec.split_once('=') {
        Some((id, socket)) => (id.to_string(), PathBuf::from(socket)),
        None => {
            let socket = std::env::var_os(SSH_AUTH_SOCK)
                .filter(|s| !s.is_empty())
                .with_context(|| {
                    format!("--ssh {spec}: SSH_AUTH_SOCK is not set (start an agent, or give --ssh {spec}=SOCKET)")
                })?;
            (spec.to_string(), PathBuf::from(socket))
        }
    };
    if id.is_empty() {
        bail!("invalid --ssh {spec:?}: the id is empty");
    }
    let metadata = std::fs::metadata(&socket)
        .with_context(|| format!("--ssh {spec}: cannot reach {}", socket.display()))?;
    if !metadata.file_type().is_socket() {
        bail!(
            "--ssh {spec}: {} is not an agent socket (kiln forwards a running ssh-agent; add keys to it with ssh-add)",
            socket.display()
        );
    }
    Ok((id, socket))
}

/// The secrets and SSH agents a build was given, by id.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub secrets: BTreeMap<String, SecretSource>,
    pub ssh: BTreeMap<String, PathBuf>,
}

impl Secrets {
    pub(crate) fn secret(&self, id: &str) -> crate::Result<Option<Sensitive>> {
        match self.secrets.get(id) {
            None => Ok(None),
            Some(SecretSource::File(path)) => std::fs::read(path)
                .map(|bytes| Some(Sensitive(bytes)))
                .with_context(|| format!("reading secret {id:?} from {}", path.display())),
            Some(SecretSource::Env(var)) => match std::env::var_os(var) {
                Some(value) => Ok(Some(Sensitive(value.into_encoded_bytes()))),
                None => bail!("secret {id:?} is to come from ${var}, which is not set"),
            },
        }
    }
}
