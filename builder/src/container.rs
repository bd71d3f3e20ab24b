//! `kiln run`: a container from an image of the store, run through the same
//! sandbox as RUN steps, attached to kiln's terminal; `--commit` keeps its
//! changes as a new image.

use crate::error::{bail, Context};
use kiln_cache::pack::PackOptions;
use kiln_cache::{Compression, Store};
use kiln_registry::Reference;
use kiln_runtime::{Layers, Network, Step, StepIo, StepMount, User};

use crate::image::{image_id, rfc3339, write_image, Format, History, StoredImage};
use crate::layers::{layer_from_diff, layer_view, write_blob};
use crate::remote::Remote;
use crate::run::{Interrupt, Sandbox};
use crate::users::resolve_exec_user;

/// What `kiln run` runs, and how.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The image (`name[:tag]`, `name@sha256:...` or an image ID).
    pub image: String,
    /// The command and its arguments (default: the image's CMD).
    pub command: Vec<String>,
    /// `NAME=VALUE`, or `NAME` to pass kiln's own value.
    pub env: Vec<String>,
    /// `SOURCE:TARGET[:ro]`.
    pub volumes: Vec<String>,
    /// `host` or `none`.
    pub network: String,
    /// Instead of the image's USER.
    pub user: Option<String>,
    /// Instead of the image's WORKDIR.
    pub workdir: Option<String>,
    /// Instead of the image's ENTRYPOINT (and with it its CMD).
    pub entrypoint: Option<String>,
    /// Keep the container's changes as an image of this name.
    pub commit: Option<String>,
    /// Pass kiln's standard input on (`-i`); without it the process reads
    /// an empty input, as with `docker run`.
    pub interactive: bool,
    /// Give the process a pseudo-terminal (`-t`), for interactive shells.
    pub tty: bool,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    /// Its exit code (128 + the signal that killed it).
    pub code: u8,
    /// The image its changes were saved as (`--commit`).
    pub committed: Option<Reference>,
}

/// Runs the container until it exits.
pub fn run(
    store: &Store,
    remote: &Remote,
    sandbox: &Sandbox,
    interrupt: &Interrupt,
    args: &RunOptions,
) -> crate::Result<Exited> {
    if !rustix::process::geteuid().is_root() {
        bail!("kiln run must run as root: the sandbox needs namespaces and mounts only root may make (run it with sudo)");
    }
    let commit_name = args
        .commit
        .as_deref()
        .map(Reference::parse)
        .transpose()
        .context("--commit")?;
    let _in_use = store.lock_shared()?;
    let image = find_or_pull(store, remote, &args.image)?;
    let config = &image.config.config;
    let view = layer_view(store, &image.layers)?;

    let entrypoint = match &args.entrypoint {
        Some(entrypoint) if entrypoint.is_empty() => Vec::new(),
        Some(entrypoint) => vec![entrypoint.clone()],
        None => config.entrypoint.clone().unwrap_or_default(),
    };
    let command = if !args.command.is_empty() {
        args.command.clone()
    } else if args.entrypoint.is_some() {
        // As Docker: a new entrypoint drops the image's CMD.
        Vec::new()
    } else {
        config.cmd.clone().unwrap_or_default()
    };
    let process: Vec<String> = entrypoint.into_iter().chain(command).collect();
    if process.is_empty() {
        bail!(
            "{} has no command to run: give one after the image name",
            args.image
        );
    }
    let user_spec = args.user.clone().unwrap_or_else(|| config.user.clone());
    let user = resolve_exec_user(&user_spec, &view)
        .with_context(|| format!("finding user {user_spec:?}"))?;
    let mut env = config.env.clone();
    for variable in &args.env {
        let assignment = match variable.split_once('=') {
            Some(_) => variable.clone(),
            // `-e NAME` passes kiln's own value, or nothing when unset.
            None => match std::env::var(variable) {
                Ok(value) => format!("{variable}={value}"),
                Err(_) => continue,
            },
        };
        let name = assignment.split('=').next().unwrap_or_default().to_string();
        env.retain(|existing| existing.split('=').next() != Some(name.as_str()));
        env.push(assignment);
    }
    let mut mounts = Vec::new();
    for volume in &args.volumes {
        mounts.push(parse_volume(volume)?);
    }
    let network = match args.network.as_str() {
        "host" | "default" => Network::Host,
        "none" => Network::None,
        other => bail!("invalid --network {other:?}: kiln runs containers with host or none"),
    };
    let workdir = args
        .workdir
        .clone()
        .or_else(|| Some(config.working_dir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_string());
    let step = Step {
        args: process.clone(),
        env,
        secret_env: Vec::new(),
        cwd: workdir,
        user: User {
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids,
        },
        network,
        insecure: false,
        mounts,
        resources: kiln_runtime::Resources {
            hostname: Some("kiln".to_string()),
            ..kiln_runtime::Resources::default()
        },
    };

    let work = store.temp_dir()?;
    let upper = work.path().join("diff");
    let scratch = work.path().join("scratch");
    for dir in [&upper, &scratch] {
        std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let runtime = sandbox.runtime()?;
    let outcome = {
        let _running = interrupt.step_running();
        runtime.run(
            &step,
            &Layers {
                lowers: view.layers(),
                upper: &upper,
                scratch: &scratch,
            },
            StepIo::Attached {
                stdin: args.interactive,
                terminal: args.tty,
            },
            interrupt.flag(),
        )?
    };

    if let Some(name) = &commit_name {
        let options = PackOptions {
            compression: Compression::parse("gzip").map_err(crate::Error::Invalid)?,
            source_date_epoch: None,
        };
        let layer = layer_from_diff(store, &upper, &options, false)?
            .map(|layer| write_blob(store, &layer, &options))
            .transpose()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_secs() as i64)
            .unwrap_or(0);
        let mut file = image.config.clone();
        file.created = Some(rfc3339(now));
        file.history.push(History {
            created: Some(rfc3339(now)),
            created_by: Some(format!("kiln run {} {}", args.image, process.join(" "))),
            comment: Some("kiln run --commit".to_string()),
            empty_layer: layer.is_none(),
        });
        let mut layers = image.layers.clone();
        if let Some(layer) = layer {
            file.rootfs.diff_ids.push(layer.diff_id);
            layers.push(layer);
        }
        let descriptor = write_image(store, &file, &layers, Format::Oci)?;
        store.set_name(Some(&name.to_string()), &descriptor)?;
    }
    Ok(Exited {
        code: u8::try_from(outcome.code).unwrap_or(255),
        committed: commit_name,
    })
}

/// The image `name` (a name, a name with a digest, or an image ID) from the
/// store, pulled from its registry first when the store lacks it, as
/// `docker run` does.
fn find_or_pull(store: &Store, remote: &Remote, name: &str) -> crate::Result<StoredImage> {
    if image_id(store, name)?.is_some() {
        return StoredImage::find(store, name);
    }
    let reference = Reference::parse(name)?;
    // A build may have left the manifest of a base image without its
    // layers: by digest, that is not the image in the store.
    let in_store = match reference.digest() {
        Some(digest) => StoredImage::read(store, &digest.parse()?).is_ok_and(|i| i.is_whole(store)),
        None => store.resolve(&reference.to_string())?.is_some(),
    };
    if !in_store {
        remote.pull(store, &reference, &kiln_frontend::Platform::host())?;
    }
    StoredImage::find(store, name)
}

/// `-v SOURCE:TARGET[:ro|rw]`: a host directory or file.
fn parse_volume(spec: &str) -> crate::Result<StepMount> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, readonly) = match parts.as_slice() {
        [source, target] => (*source, *target, false),
        [source, target, "ro"] => (*source, *target, true),
        [source, target, "rw"] => (*source, *target, false),
        _ => bail!("invalid -v {spec:?}: expected SOURCE:TARGET[:ro]"),
    };
    if !target.starts_with('/') {
        bail!("invalid -v {spec:?}: the target {target:?} must be an absolute path");
    }
    let source =
        std::fs::canonicalize(source).with_context(|| format!("-v {spec}: cannot use {source}"))?;
    Ok(StepMount::Bind {
        source,
        target: target.to_string(),
        readonly,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_name_a_host_path_and_an_absolute_target() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().display().to_string();
        assert_eq!(
            parse_volume(&format!("{host}:/data:ro")).unwrap(),
            StepMount::Bind {
                source: std::fs::canonicalize(dir.path()).unwrap(),
                target: "/data".to_string(),
                readonly: true
            }
        );
        assert!(parse_volume(&format!("{host}:data")).is_err());
        assert!(parse_volume("/does/not/exist:/data").is_err());
        assert!(parse_volume(&format!("{host}:/data:rx")).is_err());
    }
}
