//! A build as a command asks for it: what to read, how to build and where
//! the result goes; and the build itself, from lowering the Dockerfile to
//! the exported image.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_cache::pack::{pack_dir, PackOptions};
use kiln_cache::{Compression, Digest, StatCache, Store};
use kiln_frontend::graph::{Base, BuildGraph};
use kiln_registry::Reference;

use crate::archive::{self, ArchiveImage};
use crate::base_images::{PendingLayers, StoreImages};
use crate::build::{Build, Inputs, SandboxAccess, Settings};
use crate::cache_config;
use crate::cache_export::CacheExport;
use crate::cache_io;
use crate::contexts::{self, NamedContextSpec, NamedContexts};
use crate::dockerfile::{self, DockerfileArgs};
use crate::error::{bail, Context};
use crate::image::{write_image, Format, StoredImage};
use crate::layers::Layers;
use crate::outputs::StepReport;
use crate::progress::Progress;
use crate::remote::Remote;
use crate::run::{Interrupt, StepRunner};
use crate::secrets::Secrets;
use crate::units::now_seconds;

/// Where `kiln build` puts the result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Output {
    /// The store (`type=image`).
    #[default]
    Store,
    Oci(PathBuf),
    Docker(PathBuf),
    /// The final file system, in a directory.
    Local(PathBuf),
    /// The final file system, as a tar archive.
    Tar(PathBuf),
}

/// An `--output` as buildx writes it: where the result goes, and how the
/// image is exported (`type=image,name=R,push=true`, `type=registry,name=R`,
/// `compression=zstd`, `compression-level=N`, `force-compression=true`,
/// `oci-mediatypes=false`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputSpec {
    pub output: Output,
    /// `name=`: names for the image, as `-t` gives them.
    pub names: Vec<String>,
    /// `push=true`, or `type=registry`.
    pub push: bool,
    /// `compression=`: `gzip`, `zstd` or `uncompressed`.
    pub compression: Option<String>,
    /// `compression-level=`.
    pub compression_level: Option<String>,
    /// `force-compression=true`.
    pub force_compression: bool,
    /// `oci-mediatypes=true|false`: OCI's media types or Docker's.
    pub oci_mediatypes: Option<bool>,
}

impl OutputSpec {
    pub fn parse(spec: Option<&str>) -> crate::Result<OutputSpec> {
        let Some(spec) = spec else {
            return Ok(OutputSpec::default());
        };
        let of = |output| {
            Ok(OutputSpec {
                output,
                ..OutputSpec::default()
            })
        };
        if spec == "-" {
            return of(Output::Tar(PathBuf::from("-")));
        }
        if !spec.contains('=') {
            return of(Output::Local(PathBuf::from(spec)));
        }
        let mut parsed = OutputSpec::default();
        let mut kind = None;
        let mut dest = None;
        let flag = |key: &str, value: &str| match value {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(crate::Error::Invalid(format!(
                "invalid --output {key}={value:?}: true or false"
            ))),
        };
        for field in spec.split(',') {
            let Some((key, value)) = field.split_once('=') else {
                bail!("invalid --output field {field:?}: expected KEY=VALUE");
            };
            match key {
                "type" => kind = Some(value),
                "dest" => dest = Some(PathBuf::from(value)),
                "name" => parsed.names.push(value.to_string()),
                "push" => parsed.push = flag(key, value)?,
                "compression" => parsed.compression = Some(value.to_string()),
                "compression-level" => parsed.compression_level = Some(value.to_string()),
                "force-compression" => parsed.force_compression = flag(key, value)?,
                "oci-mediatypes" => parsed.oci_mediatypes = Some(flag(key, value)?),
                other => bail!(
                    "unknown --output field {other:?} (known: type, dest, name, push, compression, \
                     compression-level, force-compression, oci-mediatypes)"
                ),
            }
        }
        let dest = || {
            dest.clone()
                .with_context(|| format!("--output {spec:?} needs dest=PATH"))
        };
        parsed.output = match kind {
            Some("image") | None => Output::Store,
            Some("registry") => {
                parsed.push = true;
                Output::Store
            }
            Some("oci") => Output::Oci(dest()?),
            Some("docker") => Output::Docker(dest()?),
            Some("local") => Output::Local(dest()?),
            Some("tar") => Output::Tar(dest()?),
            Some(other) => bail!(
                "unknown --output type {other:?}: use image, registry, oci, docker, local or tar"
            ),
        };
        if parsed.push && parsed.output != Output::Store {
            bail!("--output {spec:?}: only type=image and type=registry push");
        }
        Ok(parsed)
    }
}

/// Everything a build needs to know, assembled by the command.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub dockerfile: DockerfileArgs,
    /// `key=value` labels set on the image.
    pub labels: Vec<String>,
    /// Entitlements (`security.insecure`).
    pub allow: Vec<String>,
    pub tags: Vec<Reference>,
    pub output: Output,
    /// Media types of the image; by default Docker's for a docker archive,
    /// OCI's otherwise.
    pub format: Option<Format>,
    pub compression: Compression,
    /// Recompress exported layers of another compression too (base
    /// images' layers keep theirs otherwise): `force-compression=true`.
    pub force_compression: bool,
    /// Push the image to every tag after building it.
    pub push: bool,
    /// Look base images up in their registries even when the store has them.
    pub pull: bool,
    pub metadata_file: Option<PathBuf>,
    pub iidfile: Option<PathBuf>,
    pub cache_to: Vec<cache_io::CacheTo>,
    pub cache_from: Vec<cache_io::CacheFrom>,
    /// Stages built at once at most.
    pub jobs: usize,
    /// Say why each step that ran missed the cache.
    pub explain: bool,
    /// Run every step, reusing nothing.
    pub no_cache: bool,
    /// Stages (lower case) to run without the cache.
    pub no_cache_stages: Vec<String>,
    /// `--source-date-epoch` or `SOURCE_DATE_EPOCH`, as given.
    pub source_date_epoch: Option<String>,
    /// `--secret` and `--ssh`.
    pub secrets: Secrets,
    /// `--add-host`, `--ulimit`, `--shm-size`: what every RUN step gets.
    pub resources: kiln_runtime::Resources,
    /// `--build-context NAME=VALUE`.
    pub named_contexts: Vec<NamedContextSpec>,
}

impl BuildRequest {
    /// A request to build `dockerfile` into the store with the defaults of
    /// `kiln build`.
    pub fn new(dockerfile: DockerfileArgs) -> BuildRequest {
        BuildRequest {
            dockerfile,
            labels: Vec::new(),
            allow: Vec::new(),
            tags: Vec::new(),
            output: Output::Store,
            format: None,
            compression: Compression::Gzip { level: 6 },
            force_compression: false,
            push: false,
            pull: false,
            metadata_file: None,
            iidfile: None,
            cache_to: Vec::new(),
            cache_from: Vec::new(),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            explain: false,
            no_cache: false,
            no_cache_stages: Vec::new(),
            source_date_epoch: None,
            secrets: Secrets::default(),
            resources: kiln_runtime::Resources::default(),
            named_contexts: Vec::new(),
        }
    }
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image's manifest digest, when the output was an image.
    pub image: Option<Digest>,
    /// The output was written to standard output (so the digest must not).
    pub on_stdout: bool,
    /// How each step went, in the order they ended.
    pub steps: Vec<StepReport>,
    /// The build checks' findings (`Rule: message (line N)`), shown before
    /// the first step, for a summary at the end as buildx prints one.
    pub warnings: Vec<String>,
}

/// The build's epoch: seconds since 1970 from `--build-arg
/// SOURCE_DATE_EPOCH` (as buildx passes it), else `--source-date-epoch` or
/// `SOURCE_DATE_EPOCH`, else the Dockerfile's global ARG, when it is a
/// number. Empty means none (tools export the variable unconditionally); a
/// name (`context`, a build context, a stage) is [`epoch_source`]'s.
fn source_date_epoch(
    args: &BuildRequest,
    dockerfile_default: Option<&str>,
) -> crate::Result<Option<i64>> {
    let build_arg = epoch_build_arg(args);
    let (value, origin) = match (build_arg, args.source_date_epoch.as_deref()) {
        (Some(value), _) => (Some(value), "--build-arg SOURCE_DATE_EPOCH"),
        (None, Some(value)) => (Some(value), "--source-date-epoch or SOURCE_DATE_EPOCH"),
        (None, None) => (
            dockerfile_default,
            "SOURCE_DATE_EPOCH (the Dockerfile's ARG default, which names no stage or build context)",
        ),
    };
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => match text.parse::<i64>() {
            Ok(seconds) if seconds >= 0 => Ok(Some(seconds)),
            _ => bail!("invalid {origin} {text:?}: expected seconds since 1970"),
        },
    }
}

/// What SOURCE_DATE_EPOCH names when it is no number: `context` (the main
/// context's time) or a build context given by name, from a build argument
/// or the Dockerfile's global ARG (not `--source-date-epoch`).
fn epoch_source(args: &BuildRequest, dockerfile_default: Option<&str>) -> Option<String> {
    let build_arg = epoch_build_arg(args);
    let value = match (build_arg, args.source_date_epoch.as_deref()) {
        (Some(value), _) => value,
        (None, Some(_)) => return None,
        (None, None) => dockerfile_default?,
    }
    .trim();
    let is_name = !value.is_empty() && value.parse::<i64>().is_err();
    is_name.then(|| value.to_string())
}

/// The last `--build-arg SOURCE_DATE_EPOCH=VALUE`'s value.
fn epoch_build_arg(args: &BuildRequest) -> Option<&str> {
    args.dockerfile
        .build_args
        .iter()
        .rev()
        .find_map(|arg| arg.strip_prefix("SOURCE_DATE_EPOCH="))
}

/// The host name `--build-arg BUILDKIT_SANDBOX_HOSTNAME` gives the steps,
/// as BuildKit takes it.
fn sandbox_hostname(build_args: &[String]) -> crate::Result<Option<String>> {
    let Some(name) = build_args
        .iter()
        .rev()
        .find_map(|arg| arg.strip_prefix("BUILDKIT_SANDBOX_HOSTNAME="))
    else {
        return Ok(None);
    };
    // A host name is letters, digits, hyphens and dots (RFC 1123), at
    // most 64 bytes in the kernel's uname.
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !valid {
        bail!(
            "invalid --build-arg BUILDKIT_SANDBOX_HOSTNAME={name:?}: a host name is up to 64 \
             letters, digits, hyphens and dots"
        );
    }
    Ok(Some(name.to_string()))
}

/// What a build works with beyond its request.
pub struct Engine<'a> {
    pub store: &'a Store,
    /// Registries: base images, `ADD URL`, pushes and caches.
    pub remote: &'a Remote,
    /// Where RUN steps run.
    pub sandbox: &'a dyn StepRunner,
    /// Stops the build's running steps when set (Ctrl-C).
    pub interrupt: &'a Interrupt,
    pub progress: &'a Arc<Progress>,
}

/// Builds what `request` asks for and exports it: Dockerfile to image,
/// RUN steps in the engine's sandbox, events to its progress.
pub fn build(engine: &Engine<'_>, request: &BuildRequest) -> crate::Result<Built> {
    let Engine {
        store,
        remote,
        sandbox,
        interrupt,
        progress,
    } = *engine;
    let args = request;
    let output = &request.output;
    if args.push {
        if !matches!(output, Output::Store) {
            bail!("--push sends the image from the store to its registry: leave out --output");
        }
        if args.tags.is_empty() {
            bail!("--push needs a name to push to (-t registry/repository:tag)");
        }
    }
    // BuildKit's docker exporter writes Docker media types unless told not to.
    let format = match (args.format, output) {
        (Some(format), _) => format,
        (None, Output::Docker(_)) => Format::Docker,
        (None, _) => Format::Oci,
    };
    let compression = args.compression;
    if format == Format::Docker && matches!(compression, Compression::Zstd { .. }) {
        progress.warn("Docker's image format has no zstd layers: the image gets OCI media types");
    }
    let tags = &args.tags;
    let _in_use = store.lock_shared()?;
    let stat_cache = StatCache::load(store);
    remote.show_progress_on(Arc::clone(progress));
    let cache_to = &args.cache_to;
    let pending_layers = PendingLayers::default();
    // The imported cache's records are read while the Dockerfile is lowered
    // and its base images pulled: both mostly wait on registries.
    let (imported, lowered) = std::thread::scope(|scope| {
        let importing =
            scope.spawn(|| cache_io::Imported::read(&args.cache_from, store, remote, progress));
        let lowered = lower_for_build(args, store, remote, &pending_layers, progress);
        let imported = importing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (imported, lowered)
    });
    let Lowered {
        plan,
        named_files,
        source_date_epoch,
        _main_context,
        _stdin_dockerfile,
    } = lowered?;
    let now = source_date_epoch.unwrap_or_else(now_seconds);
    if args.no_cache {
        // BuildKit starts cache mounts over with --no-cache: done before
        // any step runs, so that every step of this build sees the same.
        for id in plan.graph.cache_mount_ids() {
            store
                .reset_cache_mount(id)
                .with_context(|| format!("starting the cache mount {id:?} over"))?;
        }
    }
    let layers = Layers::new(
        store,
        remote,
        &imported,
        &pending_layers,
        PackOptions {
            compression,
            source_date_epoch,
        },
        args.force_compression,
    );
    let resources = kiln_runtime::Resources {
        hostname: sandbox_hostname(&args.dockerfile.build_args)?
            .or_else(|| args.resources.hostname.clone()),
        ..args.resources.clone()
    };
    let exports_to_directories = cache_to
        .iter()
        .any(|to| matches!(to, cache_io::CacheTo::Local { .. }));
    // A layer an imported cache offered that turns out missing or wrong
    // makes the build start over, with the records naming it as misses:
    // what the first attempt built is in the store's cache by then.
    let (build, built) = loop {
        let build = Build::new(
            store,
            remote,
            Inputs {
                context: &plan.context,
                ignore: &plan.ignore,
                named: &named_files,
                dockerfile: &plan.name,
                stat_cache: &stat_cache,
            },
            SandboxAccess {
                sandbox,
                interrupt,
                secrets: &args.secrets,
                resources: &resources,
            },
            &layers,
            &imported,
            Settings {
                source_date_epoch,
                no_cache: args.no_cache,
                no_cache_stages: args.no_cache_stages.clone(),
                explain: args.explain,
                explain_scope: explain_scope(&args.dockerfile),
                jobs: args.jobs.max(1),
                exported_stages: exported_stages(
                    &plan.graph,
                    output,
                    cache_to.iter().any(|to| *to != cache_io::CacheTo::Inline),
                ),
            },
            now,
            progress,
        );
        // The imported layers the exports will read are fetched now, while
        // the build can still do without them.
        let built = build.build(&plan.graph).and_then(|outputs| {
            let mut needed = outputs[plan.graph.target].layers.clone();
            if exports_to_directories {
                needed.extend(build.results().into_iter().filter_map(|r| r.layer));
            }
            layers.fetch_imported(&needed)?;
            Ok(outputs)
        });
        match built.as_ref().err().and_then(crate::Error::unusable_cache) {
            Some(what) => progress.warn(&format!("{what}: the steps it stood for run again")),
            None => break (build, built),
        }
    };
    // What was learnt of the context's files stays, even when a step failed.
    if let Err(e) = stat_cache.save() {
        progress.warn(&format!("could not save the stat cache: {e}"));
    }
    let outputs = built?;
    let steps = build.reports();
    let target = &outputs[plan.graph.target];
    let results = build.results();
    // Every step of the build, whatever `mode=` says: the build has only
    // the stages the target needs, and its keys chain on their results.
    let entries: Vec<cache_io::Entry> = results
        .iter()
        .map(|result| cache_io::Entry {
            key: result.key,
            layer: result.layer.clone(),
            created: result.created,
            chain: result.chain,
        })
        .collect();
    let cache_export = CacheExport {
        store,
        remote,
        imported: &imported,
        layers: &layers,
        build: &build,
        progress,
        entries: &entries,
        mount_ids: plan.graph.cache_mount_ids().into_iter().collect(),
    };
    for target_cache in cache_to {
        cache_export.export(target_cache)?;
    }
    match &output {
        Output::Local(dir) => {
            crate::copy::export_tree(layers.view(&target.layers)?, dir, now)?;
            progress.note(&format!("wrote the image's files to {}", dir.display()));
            if let Some(file) = &args.metadata_file {
                write_metadata(file, None, &steps)?;
            }
            return Ok(Built {
                image: None,
                on_stdout: false,
                steps,
                warnings: plan.findings.clone(),
            });
        }
        Output::Tar(path) => {
            let files = store.temp_dir()?;
            crate::copy::export_tree(layers.view(&target.layers)?, files.path(), now)?;
            let options = PackOptions {
                compression: Compression::Uncompressed,
                source_date_epoch,
            };
            archive::write_output(path, |out| {
                pack_dir(files.path(), &options, out)?;
                Ok(())
            })?;
            progress.note(&format!("wrote the image's files to {}", path.display()));
            if let Some(file) = &args.metadata_file {
                write_metadata(file, None, &steps)?;
            }
            return Ok(Built {
                image: None,
                on_stdout: path.as_os_str() == "-",
                steps,
                warnings: plan.findings.clone(),
            });
        }
        Output::Store | Output::Oci(_) | Output::Docker(_) => {}
    }
    // An image only pushed to the registry its base came from needs none
    // of the base's layers here: they are mounted there instead.
    let push_only_to = match tags.first() {
        Some(first)
            if args.push
                && matches!(output, Output::Store)
                && tags.iter().all(|tag| tag.registry() == first.registry()) =>
        {
            Some(first.registry())
        }
        _ => None,
    };
    let exporting = progress.step("exporting layers");
    let materialized = build.materialize(&target.layers, push_only_to);
    if let Ok(layers) = &materialized {
        exporting.add_bytes(layers.iter().map(|layer| layer.size).sum());
    }
    let image_layers = exporting.finish_with(materialized)?;
    let mut image_file = target.image_file(source_date_epoch, now);
    if cache_to.contains(&cache_io::CacheTo::Inline) {
        // Records of the target's layers, by their place in the image.
        let exported = cache_io::exported(&entries);
        let exported_layers = &exported.layers;
        let records = exported
            .config
            .records
            .into_iter()
            .filter_map(|record| match record.layer {
                None => Some(record),
                Some(index) => {
                    let diff_id = exported_layers[index].diff_id;
                    let position = target.layers.iter().position(|l| l.diff_id == diff_id)?;
                    Some(cache_config::ExportedRecord {
                        layer: Some(position),
                        ..record
                    })
                }
            })
            .collect();
        image_file.inline_cache = Some(cache_config::CacheConfig {
            records,
            mounts: Vec::new(),
        });
    }
    let descriptor = write_image(store, &image_file, &image_layers, format)?;
    let digest: Digest = descriptor.digest().to_string().parse()?;
    if let Some(file) = &args.iidfile {
        archive::write_output(file, |out| {
            out.write_all(digest.to_string().as_bytes())
                .with_context(|| format!("writing {}", file.display()))
        })?;
    }
    let archive = match &output {
        Output::Oci(path) => Some((path, Format::Oci)),
        Output::Docker(path) => Some((path, Format::Docker)),
        Output::Store | Output::Local(_) | Output::Tar(_) => None,
    };
    let Some((path, archive_format)) = archive else {
        // The store names only whole images: one whose base layers stayed
        // in their registry is pushed, and found there by name.
        let whole = image_layers.iter().all(|layer| store.has_blob(&layer.blob));
        if whole && tags.is_empty() {
            store.set_name(None, &descriptor)?;
        }
        for tag in tags.iter().filter(|_| whole) {
            store.set_name(Some(&tag.to_string()), &descriptor)?;
            progress.note(&format!("naming to {tag}"));
        }
        if !whole {
            progress.note(
                "not named in the store: its base image's layers were not downloaded (kiln pull gets the whole image)",
            );
        }
        if args.push {
            remote.push(
                store,
                &digest,
                tags,
                &pending_layers.sources(),
                &HashSet::new(),
            )?;
        }
        if let Some(file) = &args.metadata_file {
            write_metadata(file, Some((store, &descriptor, tags)), &steps)?;
        }
        return Ok(Built {
            image: Some(digest),
            on_stdout: false,
            steps,
            warnings: plan.findings.clone(),
        });
    };
    let image = StoredImage::read(store, &digest)?;
    archive::write_archive(
        store,
        &[ArchiveImage {
            image: &image,
            names: tags.clone(),
        }],
        archive_format,
        path,
        source_date_epoch.unwrap_or(0),
    )?;
    progress.note(&format!("wrote {}", path.display()));
    if let Some(file) = &args.metadata_file {
        write_metadata(file, Some((store, &descriptor, tags)), &steps)?;
    }
    Ok(Built {
        image: Some(digest),
        on_stdout: path.as_os_str() == "-",
        steps,
        warnings: plan.findings,
    })
}

/// What identifies a Dockerfile across builds, for `--explain`: its path
/// (the context's for one read from standard input).
fn explain_scope(dockerfile: &DockerfileArgs) -> String {
    let canonical = |path: &Path| {
        std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string()
    };
    match &dockerfile.file {
        Some(file) if file.as_os_str() == "-" => {
            format!("stdin in {}", canonical(&dockerfile.context))
        }
        Some(file) => canonical(file),
        None => canonical(&crate::dockerfile::default_dockerfile(&dockerfile.context)),
    }
}

/// `--metadata-file`: what BuildKit writes there for the image built (when
/// the build made one), and how each step went (`kiln.steps`: cache hit or
/// miss, duration).
fn write_metadata(
    file: &Path,
    image: Option<(&Store, &oci_spec::image::Descriptor, &[Reference])>,
    steps: &[StepReport],
) -> crate::Result<()> {
    let mut metadata = serde_json::Map::new();
    if let Some((store, descriptor, names)) = image {
        let digest: Digest = descriptor.digest().to_string().parse()?;
        let image = StoredImage::read(store, &digest)?;
        metadata.insert("containerimage.digest".into(), digest.to_string().into());
        metadata.insert(
            "containerimage.config.digest".into(),
            image.config_digest.to_string().into(),
        );
        metadata.insert(
            "containerimage.descriptor".into(),
            serde_json::json!({
                "mediaType": descriptor.media_type().to_string(),
                "digest": digest.to_string(),
                "size": descriptor.size(),
            }),
        );
        metadata.insert(
            "image.name".into(),
            names
                .iter()
                .map(Reference::to_string)
                .collect::<Vec<_>>()
                .join(",")
                .into(),
        );
    }
    metadata.insert("kiln.steps".into(), serde_json::to_value(steps)?);
    let mut bytes = serde_json::to_vec_pretty(&metadata)?;
    bytes.push(b'\n');
    archive::write_output(file, |out| {
        out.write_all(&bytes)
            .with_context(|| format!("writing {}", file.display()))
    })
}

/// A build's Dockerfile lowered, with what the build reads kept at hand.
struct Lowered {
    plan: dockerfile::Plan,
    named_files: contexts::NamedFiles,
    source_date_epoch: Option<i64>,
    /// Where a URL, archive or git main context was unpacked, kept until
    /// the build ends.
    _main_context: contexts::MainContext,
    /// A Dockerfile read from standard input, kept for lowering it twice.
    _stdin_dockerfile: Option<tempfile::TempDir>,
}

/// Resolves the main and named contexts of `args`, lowers its Dockerfile
/// (pulling base images without their layers, left to `pending_layers`)
/// and settles SOURCE_DATE_EPOCH.
fn lower_for_build(
    args: &BuildRequest,
    store: &Store,
    remote: &Remote,
    pending_layers: &PendingLayers,
    progress: &Arc<Progress>,
) -> crate::Result<Lowered> {
    let mut images = StoreImages::new(store, Some(remote), args.pull).layers_later(pending_layers);
    let mut dockerfile_args = args.dockerfile.clone();
    let main_context =
        contexts::resolve_main_context(&mut dockerfile_args, store, remote, &args.secrets)?;
    let _stdin_dockerfile = dockerfile::keep_stdin_dockerfile(&mut dockerfile_args, store)?;
    let mut contexts = NamedContexts::new(
        &args.named_contexts,
        &mut images,
        store,
        Some(remote),
        &args.secrets,
    )?;
    let mut plan = dockerfile::load(
        &dockerfile_args,
        &args.labels,
        &args.allow,
        &mut contexts,
        progress,
    )?;
    // `None` when SOURCE_DATE_EPOCH names no context; the time of the one
    // it names otherwise (none for a local directory, as in BuildKit).
    let context_epoch = match epoch_source(args, plan.graph.source_date_epoch.as_deref()) {
        Some(name) if name == "context" => Some(main_context.epoch),
        Some(name) => match contexts.epoch_of(&name)? {
            Some(epoch) => Some(epoch),
            None => dockerfile::epoch_stage_source(&dockerfile_args, &name)?
                .map(|source| contexts::epoch_of_source(&source, store, remote, &args.secrets))
                .transpose()?,
        },
        None => None,
    };
    if let Some(Some(epoch)) = context_epoch {
        // The epoch a context gives is what the Dockerfile's
        // SOURCE_DATE_EPOCH holds, as BuildKit passes it: lowered again with
        // the number in place of the name.
        dockerfile_args
            .build_args
            .push(format!("SOURCE_DATE_EPOCH={epoch}"));
        // Its warnings were shown by the first lowering.
        plan = dockerfile::load(
            &dockerfile_args,
            &args.labels,
            &args.allow,
            &mut contexts,
            &Progress::silent(),
        )?;
    }
    let named_files = contexts.into_files();
    let source_date_epoch = match context_epoch {
        Some(epoch) => epoch,
        None => source_date_epoch(args, plan.graph.source_date_epoch.as_deref())?,
    };
    Ok(Lowered {
        plan,
        named_files,
        source_date_epoch,
        _main_context: main_context,
        _stdin_dockerfile,
    })
}

/// The stages whose layers the build exports: every one for a cache
/// export (but an inline one, which has the image's layers only), else
/// those the target's image is made of (the target and the stages it is
/// based on), none for an export of files.
fn exported_stages(graph: &BuildGraph, output: &Output, caching: bool) -> HashSet<usize> {
    if caching {
        return (0..graph.stages.len()).collect();
    }
    let mut exported = HashSet::new();
    if matches!(output, Output::Local(_) | Output::Tar(_)) {
        return exported;
    }
    let mut stage = Some(graph.target);
    while let Some(index) = stage.filter(|index| exported.insert(*index)) {
        stage = match graph.stages.get(index).map(|stage| &stage.base) {
            Some(Base::Stage { stage }) => Some(*stage),
            _ => None,
        };
    }
    exported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_specs() {
        let output = |spec| OutputSpec::parse(spec).expect("valid").output;
        assert_eq!(output(None), Output::Store);
        assert_eq!(output(Some("type=image")), Output::Store);
        assert_eq!(
            output(Some("type=oci,dest=x.tar")),
            Output::Oci("x.tar".into())
        );
        assert_eq!(
            output(Some("type=docker,dest=y.tar")),
            Output::Docker("y.tar".into())
        );
        assert_eq!(
            output(Some("type=local,dest=out")),
            Output::Local("out".into())
        );
        assert_eq!(output(Some("out")), Output::Local("out".into()));
        assert!(OutputSpec::parse(Some("type=oci")).is_err());
        assert!(OutputSpec::parse(Some("type=oci,colour=blue")).is_err());
        assert!(OutputSpec::parse(Some("type=oci,dest=x.tar,push=true")).is_err());
    }

    #[test]
    fn buildx_exporter_options() {
        let registry = OutputSpec::parse(Some("type=registry,name=r/app:1")).expect("registry");
        assert_eq!(registry.output, Output::Store);
        assert!(registry.push);
        assert_eq!(registry.names, ["r/app:1"]);
        let image = OutputSpec::parse(Some(
            "type=image,name=a,name=b,push=true,compression=zstd,compression-level=3,\
             force-compression=true,oci-mediatypes=false",
        ))
        .expect("image");
        assert_eq!(image.names, ["a", "b"]);
        assert!(image.push && image.force_compression);
        assert_eq!(image.compression.as_deref(), Some("zstd"));
        assert_eq!(image.compression_level.as_deref(), Some("3"));
        assert_eq!(image.oci_mediatypes, Some(false));
        assert!(OutputSpec::parse(Some("type=image,push=maybe")).is_err());
    }
}
