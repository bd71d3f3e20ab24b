//! Reading a Dockerfile and its options from the command line and lowering
//! it to a build graph.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::base_images::{StoreImages, StoreOrUnknownImages};
use crate::error::{bail, Context};
use crate::progress::Progress;
use kiln_cache::Store;
use kiln_frontend::ast::Source;
use kiln_frontend::graph::Network;
use kiln_frontend::lint::{self, Scope};
use kiln_frontend::{BaseImages, BuildGraph, DockerIgnore, LowerOptions, Platform, ResolvedImage};

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
    /// The build checks' findings, as shown before the first step
    /// (`Rule: message (line N)`), to sum up after the build.
    pub findings: Vec<String>,
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
    let ignore = DockerIgnore::load(&path, &args.context)?;
    let options = lower_options(args, labels, allow)?;
    let images = &mut FailuresRemembered {
        images,
        failed: HashMap::new(),
    };
    let show = |report: &lint::Report| {
        for finding in &report.findings {
            progress.note(&format!("WARN: {}", finding.short()));
        }
    };
    let dockerfile = match kiln_frontend::parse_bytes(&bytes, &name) {
        Ok(dockerfile) => dockerfile,
        Err(error) => {
            let partial = checks_before_error(
                &bytes,
                &name,
                &error,
                (&options, Scope::Target),
                &ignore,
                images,
            );
            if let Some(checked) = partial {
                show(&checked.report);
            }
            return Err(error.into());
        }
    };
    // The images the build needs are looked up together: a dry lowering
    // (no lookup, and its errors are the real lowering's to report) says
    // which they are.
    let mut asked = kiln_frontend::ImagesAsked::default();
    let _ = kiln_frontend::lower(&dockerfile, &options, &mut asked);
    if asked.asked.len() > 1 {
        images.prefetch(&asked.asked);
    }
    // The build checks come first, as in BuildKit: their warnings are shown
    // even when the Dockerfile then fails to lower.
    let report = lint::check(&dockerfile, &options, Scope::Target, &ignore, images)?;
    show(&report);
    if let Some(violation) = report.violation(&dockerfile.source) {
        return Err(violation.into());
    }
    let graph = kiln_frontend::lower(&dockerfile, &options, images)?;
    for warning in &graph.warnings {
        progress.warn(&warning.message);
    }
    Ok(Plan {
        graph,
        context,
        ignore,
        name,
        findings: report.findings.iter().map(|f| f.short()).collect(),
    })
}

/// Base images whose lookup is not repeated when it fails: the build checks
/// and the lowering ask for the same images, and a pull that failed once
/// (after its retries) would only fail again, as slowly.
struct FailuresRemembered<'a> {
    images: &'a mut dyn BaseImages,
    failed: HashMap<(String, String), String>,
}

impl BaseImages for FailuresRemembered<'_> {
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        let key = (reference.to_string(), platform.to_string());
        if let Some(reason) = self.failed.get(&key) {
            return Err(reason.clone());
        }
        self.images
            .resolve(reference, platform)
            .inspect_err(|reason| {
                self.failed.insert(key, reason.clone());
            })
    }

    fn named_context(
        &mut self,
        name: &str,
        platform: &Platform,
    ) -> Result<Option<kiln_frontend::NamedContext>, String> {
        self.images.named_context(name, platform)
    }

    fn prefetch(&mut self, wanted: &[(String, Platform)]) {
        self.images.prefetch(wanted);
    }
}

/// The stages of the Dockerfile `args` names, as `--call=targets` lists
/// them: read and parsed, nothing lowered or built.
pub fn targets(args: &DockerfileArgs) -> crate::Result<Vec<kiln_frontend::targets::Target>> {
    let (_, name, bytes) = read_dockerfile(args)?;
    let dockerfile = kiln_frontend::parse_bytes(&bytes, &name)?;
    Ok(kiln_frontend::targets::targets(&dockerfile)?)
}

/// The outline of the target `args` names, as `--call=outline` shows it:
/// read and parsed, nothing lowered or built.
pub fn outline(args: &DockerfileArgs) -> crate::Result<kiln_frontend::outline::Outline> {
    let (_, name, bytes) = read_dockerfile(args)?;
    let dockerfile = kiln_frontend::parse_bytes(&bytes, &name)?;
    let options = lower_options(args, &[], &[])?;
    Ok(kiln_frontend::outline::outline(&dockerfile, &options)?)
}

/// What `--call=check` found in a Dockerfile.
pub struct Checked {
    pub report: lint::Report,
    /// The Dockerfile's text, to show the lines the findings are about.
    pub source: Source,
    /// Why a build of the Dockerfile would fail regardless of the checks
    /// (it does not lower), reported after the findings.
    pub error: Option<crate::Error>,
}

/// Runs the build checks on the stages of the Dockerfile `args` names that
/// `scope` says (every one for `--call=check`), with the base images the
/// store has; nothing is pulled or built.
pub fn check(args: &DockerfileArgs, store: &Store, scope: Scope) -> crate::Result<Checked> {
    let (path, name, bytes) = read_dockerfile(args)?;
    let ignore = DockerIgnore::load(&path, &args.context)?;
    let options = lower_options(args, &[], &[])?;
    let mut local_images = StoreImages::new(store, None, false);
    let dockerfile = match kiln_frontend::parse_bytes(&bytes, &name) {
        Ok(dockerfile) => dockerfile,
        Err(error) => {
            return checks_before_error(
                &bytes,
                &name,
                &error,
                (&options, scope),
                &ignore,
                &mut local_images,
            )
            .map(|checked| Checked {
                error: Some(error.clone().into()),
                ..checked
            })
            .ok_or_else(|| error.into());
        }
    };
    let report = lint::check(&dockerfile, &options, scope, &ignore, &mut local_images)?;
    let mut any_images = StoreOrUnknownImages { store };
    let error = kiln_frontend::lower(&dockerfile, &options, &mut any_images)
        .err()
        .map(crate::Error::from);
    Ok(Checked {
        report,
        source: dockerfile.source,
        error,
    })
}

/// The build checks of the instructions before the line a parse error is
/// on: BuildKit reports them before the error. None when there is nothing
/// before it that parses.
fn checks_before_error(
    bytes: &[u8],
    name: &str,
    error: &kiln_frontend::Error,
    (options, scope): (&LowerOptions, Scope),
    ignore: &DockerIgnore,
    images: &mut dyn BaseImages,
) -> Option<Checked> {
    let line = error.location.as_ref()?.pos.line;
    let text = std::str::from_utf8(bytes).ok()?;
    let before: String = text.split_inclusive('\n').take(line - 1).collect();
    let dockerfile = kiln_frontend::parse(&before, name).ok()?;
    let report = lint::check(&dockerfile, options, scope, ignore, images).ok()?;
    Some(Checked {
        report,
        source: dockerfile.source,
        error: None,
    })
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
/// A Dockerfile given on standard input (`-f -`) saved in the store's
/// temporary space, so that a build can read it more than once (it is
/// lowered again when SOURCE_DATE_EPOCH names a source); `args` then names
/// that file, shown as `<stdin>`. Removed when the value is dropped.
pub fn keep_stdin_dockerfile(
    args: &mut DockerfileArgs,
    store: &Store,
) -> crate::Result<Option<tempfile::TempDir>> {
    if args.file.as_deref() != Some(Path::new("-")) {
        return Ok(None);
    }
    let (_, name, bytes) = read_dockerfile(args)?;
    let kept = store.temp_dir()?;
    let path = kept.path().join("Dockerfile");
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    args.file = Some(path);
    args.shown_as = Some(name);
    Ok(Some(kept))
}

/// The remote source of the stage `ARG SOURCE_DATE_EPOCH` names, or `None`
/// when no stage is called `name`.
pub fn epoch_stage_source(
    args: &DockerfileArgs,
    name: &str,
) -> crate::Result<Option<kiln_frontend::epoch::EpochSource>> {
    let (_, shown, bytes) = read_dockerfile(args)?;
    let dockerfile = kiln_frontend::parse_bytes(&bytes, &shown)?;
    let options = lower_options(args, &[], &[])?;
    Ok(kiln_frontend::epoch::epoch_stage_source(
        &dockerfile,
        &options,
        name,
    )?)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails every lookup, counting them.
    struct Unreachable {
        lookups: usize,
    }

    impl BaseImages for Unreachable {
        fn resolve(&mut self, _: &str, _: &Platform) -> Result<ResolvedImage, String> {
            self.lookups += 1;
            Err("registry unreachable".to_string())
        }
    }

    #[test]
    fn a_failed_lookup_is_not_repeated() {
        let mut unreachable = Unreachable { lookups: 0 };
        let mut images = FailuresRemembered {
            images: &mut unreachable,
            failed: HashMap::new(),
        };
        let amd64 = Platform::new("linux", "amd64", "");
        let arm64 = Platform::new("linux", "arm64", "");
        for _ in 0..2 {
            assert_eq!(
                images.resolve("busybox", &amd64),
                Err("registry unreachable".to_string())
            );
        }
        assert!(images.resolve("busybox", &arm64).is_err());
        assert_eq!(unreachable.lookups, 2, "once per image and platform");
    }
}
