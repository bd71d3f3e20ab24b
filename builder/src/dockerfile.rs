//! Reading a Dockerfile and its options from the command line and lowering
//! it to a build graph.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{bail, Context};
use crate::progress::Progress;
use kiln_frontend::graph::Network;
use kiln_frontend::{BaseImages, BuildGraph, DockerIgnore, LowerOptions, Platform};

/// Which Dockerfile to read and how to lower it.
#[derive(Debug, Clone, Default)]
pub struct DockerfileArgs {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile; `-` reads standard input).
    pub file: Option<PathBuf>,
    /// The stage to build (default: the last one).
    pub target: Option<String>,
    /// `KEY=VALUE`, or `KEY` to take it from the environment.
    pub build_args: Vec<String>,
    /// `os/arch[/variant]` (default: this machine's).
    pub platform: Option<String>,
    /// `--network`: the network of RUN steps that name none (default: the
    /// host's, as BuildKit gives them).
    pub network: Option<Network>,
    /// How messages name the Dockerfile when kiln unpacked it from a
    /// context (a URL, an archive) into a place of its own.
    pub shown_as: Option<String>,
}

/// A lowered Dockerfile and what came with it.
pub struct Plan {
    pub graph: BuildGraph,
    /// The build context as an absolute path: steps run with another working
    /// directory, so a relative one (`.`) would name something else there.
    pub context: PathBuf,
    pub ignore: DockerIgnore,
    /// How to name the Dockerfile in messages.
    pub name: String,
}

/// Reads, parses and lowers the Dockerfile the arguments name, with the base
/// images `images` provides.
pub fn load(
    args: &DockerfileArgs,
    labels: &[String],
    allow: &[String],
    images: &mut dyn BaseImages,
    progress: &Progress,
) -> crate::Result<Plan> {
    let context = std::fs::canonicalize(&args.context)
        .with_context(|| format!("cannot use the build context {}", args.context.display()))?;
    if !context.is_dir() {
        bail!(
            "the build context {} is not a directory",
            args.context.display()
        );
    }
    let (path, name, bytes) = read_dockerfile(args)?;
    let dockerfile = kiln_frontend::parse_bytes(&bytes, &name)?;
    for warning in &dockerfile.warnings {
        match warning.line {
            Some(line) => progress.warn(&format!("{name}:{line}: {}", warning.message)),
            None => progress.warn(&warning.message),
        }
    }
    let ignore = DockerIgnore::load(&path, &args.context)?;
    let options = lower_options(args, labels, allow)?;
    let graph = kiln_frontend::lower(&dockerfile, &options, images)?;
    for warning in graph.warnings.iter().filter(|w| w.line.is_none()) {
        progress.warn(&warning.message);
    }
    Ok(Plan {
        graph,
        context,
        ignore,
        name,
    })
}

/// The stages of the Dockerfile `args` names, as `--call=targets` lists
/// them: read and parsed, nothing lowered or built.
pub fn targets(args: &DockerfileArgs) -> crate::Result<Vec<kiln_frontend::targets::Target>> {
    let (_, name, bytes) = read_dockerfile(args)?;
    let dockerfile = kiln_frontend::parse_bytes(&bytes, &name)?;
    Ok(kiln_frontend::targets::targets(&dockerfile)?)
}

/// The Dockerfile of `context` when `-f` names none: `Dockerfile`, or else
/// `dockerfile`, as Docker looks for it.
pub fn default_dockerfile(context: &Path) -> PathBuf {
    let standard = context.join("Dockerfile");
    let lowercase = context.join("dockerfile");
    if !standard.exists() && lowercase.exists() {
        lowercase
    } else {
        standard
    }
}

/// The Dockerfile's path (where its own ignore file is looked for), the name
/// messages give it, and its bytes.
fn read_dockerfile(args: &DockerfileArgs) -> crate::Result<(PathBuf, String, Vec<u8>)> {
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| default_dockerfile(&args.context));
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading the Dockerfile from standard input")?;
        return Ok((
            args.context.join("Dockerfile"),
            "<stdin>".to_string(),
            bytes,
        ));
    }
    let bytes = std::fs::read(&path)
        .with_context(|| format!("reading the Dockerfile {}", path.display()))?;
    let name = args
        .shown_as
        .clone()
        .unwrap_or_else(|| path.display().to_string());
    Ok((path, name, bytes))
}

fn lower_options(
    args: &DockerfileArgs,
    labels: &[String],
    allow: &[String],
) -> crate::Result<LowerOptions> {
    let mut options = LowerOptions {
        target: args.target.clone(),
        default_network: args.network.unwrap_or(Network::Host),
        ..LowerOptions::default()
    };
    if let Some(platform) = &args.platform {
        options.target_platform = Platform::parse(platform).map_err(|reason| {
            crate::Error::Invalid(format!("invalid --platform {platform:?}: {reason}"))
        })?;
    }
    for arg in &args.build_args {
        match arg.split_once('=') {
            Some((key, value)) => {
                options
                    .build_args
                    .insert(key.to_string(), value.to_string());
            }
            // Like docker: a bare name takes its value from the environment,
            // and is ignored when the environment does not have it.
            None => {
                if let Ok(value) = std::env::var(arg) {
                    options.build_args.insert(arg.clone(), value);
                }
            }
        }
    }
    options.labels = parse_labels(labels)?;
    for entitlement in allow {
        match entitlement.as_str() {
            "security.insecure" => options.allow_insecure = true,
            // RUN steps have the host's network already: granting it
            // changes nothing, and command lines copied from buildx name it.
            "network.host" => {}
            other => bail!(
                "unknown --allow entitlement {other:?} (known: security.insecure, network.host)"
            ),
        }
    }
    Ok(options)
}

fn parse_labels(labels: &[String]) -> crate::Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|label| match label.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => bail!("invalid --label {label:?}: expected KEY=VALUE"),
        })
        .collect()
}
