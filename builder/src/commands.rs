//! The `kiln` commands that work on the store.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context};
use kiln_cache::pack::{pack_dir, PackOptions};
use kiln_cache::{Compression, Digest, ImageEntry, StatCache, Store};
use kiln_registry::Reference;

use crate::archive::{self, ArchiveImage};
use crate::build::{Executor, Settings, StepReport};
use crate::cache_io;
use crate::cli::BuildArgs;
use crate::dockerfile;
use crate::image::{self, write_image, Format, StoreImages, StoredImage};
use crate::progress::Progress;
use crate::remote::Remote;

/// Where `kiln build` puts the result.
#[derive(Debug, PartialEq, Eq)]
enum Output {
    /// The store (`type=image`).
    Store,
    Oci(PathBuf),
    Docker(PathBuf),
    /// The final file system, in a directory.
    Local(PathBuf),
    /// The final file system, as a tar archive.
    Tar(PathBuf),
}

impl Output {
    fn parse(spec: Option<&str>) -> anyhow::Result<Output> {
        let Some(spec) = spec else {
            return Ok(Output::Store);
        };
        if spec == "-" {
            return Ok(Output::Tar(PathBuf::from("-")));
        }
        if !spec.contains('=') {
            return Ok(Output::Local(PathBuf::from(spec)));
        }
        let mut kind = None;
        let mut dest = None;
        for field in spec.split(',') {
            match field.split_once('=') {
                Some(("type", value)) => kind = Some(value),
                Some(("dest", value)) => dest = Some(PathBuf::from(value)),
                _ => bail!("invalid --output field {field:?}: expected type=... and dest=..."),
            }
        }
        let dest = || {
            dest.clone()
                .with_context(|| format!("--output {spec:?} needs dest=PATH"))
        };
        Ok(match kind {
            Some("image") | None => Output::Store,
            Some("oci") => Output::Oci(dest()?),
            Some("docker") => Output::Docker(dest()?),
            Some("local") => Output::Local(dest()?),
            Some("tar") => Output::Tar(dest()?),
            Some(other) => {
                bail!("unknown --output type {other:?}: use image, oci, docker, local or tar")
            }
        })
    }
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The build's epoch: seconds since 1970 from `--build-arg
/// SOURCE_DATE_EPOCH` (as buildx passes it), else `--source-date-epoch` or
/// `SOURCE_DATE_EPOCH`, else the Dockerfile's global ARG. Empty means none
/// (tools export the variable unconditionally), and so does `context` from
/// a build argument or the Dockerfile (the time of a remote context: a local
/// one has none).
fn source_date_epoch(
    args: &BuildArgs,
    dockerfile_default: Option<&str>,
) -> anyhow::Result<Option<i64>> {
    let build_arg = args
        .dockerfile
        .build_args
        .iter()
        .rev()
        .find_map(|arg| arg.strip_prefix("SOURCE_DATE_EPOCH="));
    let (value, origin) = match (build_arg, args.source_date_epoch.as_deref()) {
        (Some(value), _) => (Some(value), "--build-arg SOURCE_DATE_EPOCH"),
        (None, Some(value)) => (Some(value), "--source-date-epoch or SOURCE_DATE_EPOCH"),
        (None, None) => (
            dockerfile_default,
            "SOURCE_DATE_EPOCH (the Dockerfile's ARG default; kiln cannot take it from a stage's sources yet)",
        ),
    };
    let from_flag = build_arg.is_none() && args.source_date_epoch.is_some();
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some("context") if !from_flag => Ok(None),
        Some(text) => match text.parse::<i64>() {
            Ok(seconds) if seconds >= 0 => Ok(Some(seconds)),
            _ => bail!("invalid {origin} {text:?}: expected seconds since 1970"),
        },
    }
}

pub fn build(
    store: &Store,
    remote: &Remote,
    sandbox: &crate::run::Sandbox,
    args: &BuildArgs,
) -> anyhow::Result<()> {
    let limit = args
        .gc_keep_storage
        .as_deref()
        .map(parse_size)
        .transpose()?;
    build_image(store, remote, sandbox, args)?;
    if let Some(limit) = limit {
        // After the build has let go of the store: a collection waits for
        // no one and never removes what the build was still naming.
        if let Err(e) = collect_garbage(store, limit) {
            eprintln!("warning: garbage collection failed: {e:#}");
        }
    }
    Ok(())
}

fn build_image(
    store: &Store,
    remote: &Remote,
    sandbox: &crate::run::Sandbox,
    args: &BuildArgs,
) -> anyhow::Result<()> {
    let output = Output::parse(args.output.as_deref())?;
    if args.push {
        if !matches!(output, Output::Store) {
            bail!("--push sends the image from the store to its registry: leave out --output");
        }
        if args.tags.is_empty() {
            bail!("--push needs a name to push to (-t registry/repository:tag)");
        }
    }
    // BuildKit's docker exporter writes Docker media types unless told not to.
    let format = match (&args.format, &output) {
        (Some(format), _) => Format::parse(format)?,
        (None, Output::Docker(_)) => Format::Docker,
        (None, _) => Format::Oci,
    };
    let compression = Compression::parse(&args.compression).map_err(anyhow::Error::msg)?;
    if format == Format::Docker && matches!(compression, Compression::Zstd { .. }) {
        eprintln!(
            "warning: Docker's image format has no zstd layers: the image gets OCI media types"
        );
    }
    let tags = args
        .tags
        .iter()
        .map(|t| Reference::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let _in_use = store.lock_shared()?;
    let stat_cache = StatCache::load(store);
    let progress =
        std::sync::Arc::new(Progress::new(crate::progress::Mode::parse(&args.progress)?));
    remote.show_progress_on(progress.clone());
    let cache_to = args
        .cache_to
        .iter()
        .map(|spec| cache_io::parse_cache_to(spec))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cache_from = args
        .cache_from
        .iter()
        .map(|spec| cache_io::parse_cache_from(spec))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let imported = cache_io::Imported::read(&cache_from, store, remote)?;
    let mut images = StoreImages::new(store, Some(remote), args.pull);
    let plan = dockerfile::load(&args.dockerfile, &args.labels, &args.allow, &mut images)?;
    if !rustix::process::geteuid().is_root() {
        bail!(
            "kiln build must run as root: layers record the owner of every file, and only \
             root can create files owned by others (run it with sudo)"
        );
    }
    let source_date_epoch = source_date_epoch(args, plan.graph.source_date_epoch.as_deref())?;
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
    let executor = Executor {
        store,
        remote,
        sandbox,
        context: &plan.context,
        ignore: &plan.ignore,
        dockerfile: &plan.name,
        settings: Settings {
            compression,
            source_date_epoch,
            no_cache: args.no_cache,
            no_cache_stages: args
                .no_cache_filter
                .iter()
                .flat_map(|names| names.split(','))
                .map(|name| name.trim().to_lowercase())
                .filter(|name| !name.is_empty())
                .collect(),
            explain: args.explain,
            explain_scope: explain_scope(&args.dockerfile),
        },
        now,
        stat_cache: &stat_cache,
        imported: &imported,
        results: Mutex::new(Vec::new()),
        written: Mutex::new(HashMap::new()),
        reports: Mutex::new(Vec::new()),
        downloads: Mutex::new(HashMap::new()),
        progress: &progress,
        jobs: match args.jobs {
            Some(0) => bail!("--jobs must be at least 1"),
            Some(jobs) => jobs,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        },
        started: std::time::Instant::now(),
    };
    let built = executor.build(&plan.graph);
    // What was learnt of the context's files stays, even when a step failed.
    if let Err(e) = stat_cache.save() {
        eprintln!("warning: could not save the stat cache: {e}");
    }
    let outputs = built?;
    let steps = std::mem::take(&mut *executor.lock(&executor.reports));
    let target = &outputs[plan.graph.target];
    let mut results = executor.lock(&executor.results).clone();
    // The order stages finished in changes nothing that is exported.
    results.sort_by_key(|result| (result.stage, result.step));
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
    for target_cache in &cache_to {
        let destination = match target_cache {
            cache_io::CacheTo::Inline => continue,
            cache_io::CacheTo::Registry { reference } => Ok(reference),
            cache_io::CacheTo::Local { dir } => Err(dir),
        };
        let (records, layers) = cache_io::exported(&entries);
        let layers = executor.materialize(&layers)?;
        let (manifest, size) = cache_io::write_cache_manifest(store, records, &layers)?;
        match destination {
            Ok(reference) => {
                remote.push(store, &manifest, std::slice::from_ref(reference))?;
                progress.note(&format!("exported the cache to {}", reference.familiar()));
            }
            Err(dir) => {
                cache_io::write_local(store, dir, &manifest, size)?;
                progress.note(&format!("exported the cache to {}", dir.display()));
            }
        }
    }
    match &output {
        Output::Local(dir) => {
            crate::copy::export_tree(executor.view(&target.layers)?, dir, now)?;
            progress.note(&format!("wrote the image's files to {}", dir.display()));
            if let Some(file) = &args.metadata_file {
                write_metadata(file, None, &steps)?;
            }
            return Ok(());
        }
        Output::Tar(path) => {
            let files = store.temp_dir()?;
            crate::copy::export_tree(executor.view(&target.layers)?, files.path(), now)?;
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
            return Ok(());
        }
        Output::Store | Output::Oci(_) | Output::Docker(_) => {}
    }
    let exporting = progress.step("exporting layers");
    let materialized = executor.materialize(&target.layers);
    if let Ok(layers) = &materialized {
        exporting.add_bytes(layers.iter().map(|layer| layer.size).sum());
    }
    let image_layers = exporting.finish_with(materialized)?;
    let mut image_file = target.image_file(source_date_epoch, now);
    if cache_to.contains(&cache_io::CacheTo::Inline) {
        // Records of the target's layers, by their place in the image.
        let (exported_records, exported_layers) = cache_io::exported(&entries);
        let records = exported_records
            .into_iter()
            .filter_map(|record| match record.layer {
                None => Some(record),
                Some(index) => {
                    let diff_id = exported_layers[index].diff_id;
                    let position = target.layers.iter().position(|l| l.diff_id == diff_id)?;
                    Some(cache_io::ExportedRecord {
                        layer: Some(position),
                        ..record
                    })
                }
            })
            .collect();
        image_file.inline_cache = Some(cache_io::CacheConfig { records });
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
        if tags.is_empty() {
            store.set_name(None, &descriptor)?;
        }
        for tag in &tags {
            store.set_name(Some(&tag.to_string()), &descriptor)?;
            progress.note(&format!("naming to {tag}"));
        }
        if args.push {
            remote.push(store, &digest, &tags)?;
        }
        if let Some(file) = &args.metadata_file {
            write_metadata(file, Some((store, &descriptor, &tags)), &steps)?;
        }
        println!("{digest}");
        return Ok(());
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
        write_metadata(file, Some((store, &descriptor, &tags)), &steps)?;
    }
    if path.as_os_str() == "-" {
        // Standard output holds the archive.
        eprintln!("{digest}");
    } else {
        println!("{digest}");
    }
    Ok(())
}

/// What identifies a Dockerfile across builds, for `--explain`: its path
/// (the context's for one read from standard input).
fn explain_scope(dockerfile: &crate::cli::DockerfileArgs) -> String {
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
) -> anyhow::Result<()> {
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

pub fn pull(
    store: &Store,
    remote: &Remote,
    image: &str,
    platform: Option<&str>,
) -> anyhow::Result<()> {
    let reference = Reference::parse(image)?;
    let platform = match platform {
        Some(text) => kiln_frontend::Platform::parse(text)
            .map_err(|reason| anyhow::anyhow!("invalid --platform {text:?}: {reason}"))?,
        None => kiln_frontend::Platform::host(),
    };
    let _in_use = store.lock_shared()?;
    let digest = remote.pull(store, &reference, &platform)?;
    println!("{digest}");
    Ok(())
}

pub fn push(
    store: &Store,
    remote: &Remote,
    image: &str,
    destination: Option<&str>,
) -> anyhow::Result<()> {
    let _in_use = store.lock_shared()?;
    let found = StoredImage::find(store, image)?;
    let destination = match destination {
        Some(destination) => Reference::parse(destination)?,
        None => {
            if image::image_id(store, image)?.is_some() {
                bail!("an image given by ID needs a destination: kiln push {image} REGISTRY/REPOSITORY:TAG");
            }
            Reference::parse(image)?
        }
    };
    if let Some(digest) = destination.digest() {
        if digest != found.manifest_digest.to_string() {
            bail!(
                "{image} is {}, not the {digest} the destination names",
                found.manifest_digest
            );
        }
    }
    remote.push(
        store,
        &found.manifest_digest,
        std::slice::from_ref(&destination),
    )?;
    println!("{}", found.manifest_digest);
    Ok(())
}

pub fn login(
    remote: &Remote,
    server: &str,
    username: Option<String>,
    password: Option<String>,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let registry = crate::remote::registry_of(server)?;
    let username = username.context("give the user name with -u")?;
    let password = match (password, password_stdin) {
        (Some(password), _) => password,
        (None, true) => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("reading the password from standard input")?;
            password.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => bail!("give the password with --password-stdin (or -p)"),
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    remote.login(&registry, &username, &password)?;
    println!("Login Succeeded");
    Ok(())
}

pub fn logout(remote: &Remote, server: &str) -> anyhow::Result<()> {
    let registry = crate::remote::registry_of(server)?;
    if remote.logout(&registry)? {
        println!("Removed the login for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(())
}

fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", units[unit])
    }
}

pub fn images(store: &Store) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{:<40} {:<19} {:<21} {:>8}",
        "NAME", "DIGEST", "CREATED", "SIZE"
    )?;
    for entry in store.images()? {
        let name = match &entry.name {
            Some(name) => familiar(name),
            None => "<none>".to_string(),
        };
        let digest: Digest = entry.manifest.digest().to_string().parse()?;
        let (created, size) = match StoredImage::read(store, &digest) {
            Ok(image) => (
                image.config.created.clone().unwrap_or_default(),
                human_size(
                    image.layers.iter().map(|l| l.size).sum::<u64>()
                        + image.manifest.config().size(),
                ),
            ),
            Err(_) => ("(damaged: see kiln check)".to_string(), String::new()),
        };
        let short = format!("sha256:{}", &digest.hex()[..12]);
        writeln!(stdout, "{name:<40} {short:<19} {created:<21} {size:>8}")?;
    }
    Ok(())
}

pub fn inspect(store: &Store, name: &str) -> anyhow::Result<()> {
    let image = StoredImage::find(store, name)?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&store.read_blob(&image.manifest_digest)?)?;
    let config: serde_json::Value =
        serde_json::from_slice(&store.read_blob(&image.config_digest)?)?;
    let named = match image::image_id(store, name)? {
        Some(_) => None,
        None => Some(Reference::parse(name)?.to_string()),
    };
    let report = serde_json::json!({
        "Name": named,
        "Digest": image.manifest_digest.to_string(),
        "Manifest": manifest,
        "Config": config,
    });
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &report)?;
    writeln!(stdout)?;
    Ok(())
}

pub fn tag(store: &Store, source: &str, target: &str) -> anyhow::Result<()> {
    let image = StoredImage::find(store, source)?;
    let target = Reference::parse(target)?;
    let descriptor = store
        .images()?
        .into_iter()
        .find(|e| e.manifest.digest().to_string() == image.manifest_digest.to_string())
        .map(|e| e.manifest)
        .context("the image disappeared from the store")?;
    store.set_name(Some(&target.to_string()), &descriptor)?;
    Ok(())
}

pub fn rmi(store: &Store, images: &[String]) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for name in images {
        if let Some(digest) = image::image_id(store, name)? {
            // By ID: every name of the image goes, and the image with them.
            let removed = store.remove_images(|entry| same_digest(entry, &digest))?;
            for entry in &removed {
                if let Some(name) = &entry.name {
                    println!("Untagged: {}", familiar(name));
                }
            }
            println!("Deleted: {digest}");
            continue;
        }
        let reference = Reference::parse(name)?;
        let removed = match reference.digest() {
            // `name@sha256:...`: the names of that repository on that image.
            Some(digest) => {
                let digest: Digest = digest.parse()?;
                store.remove_images(|entry| {
                    same_digest(entry, &digest)
                        && entry.name.as_deref().is_some_and(|n| {
                            Reference::parse(n).is_ok_and(|r| r.name() == reference.name())
                        })
                })?
            }
            None => store.remove_images(|entry| {
                entry.name.as_deref() == Some(reference.to_string().as_str())
            })?,
        };
        if removed.is_empty() {
            missing.push(name.as_str());
        }
        for entry in &removed {
            if let Some(name) = &entry.name {
                println!("Untagged: {}", familiar(name));
            }
        }
    }
    if !missing.is_empty() {
        bail!("no such image: {}", missing.join(", "));
    }
    Ok(())
}

fn same_digest(entry: &ImageEntry, digest: &Digest) -> bool {
    entry.manifest.digest().to_string() == digest.to_string()
}

/// How Docker prints a stored name: `app:1` for `docker.io/library/app:1`.
fn familiar(name: &str) -> String {
    Reference::parse(name).map_or_else(|_| name.to_string(), |r| r.familiar())
}

pub fn save(store: &Store, names: &[String], output: &Path, format: Format) -> anyhow::Result<()> {
    let mut images = Vec::new();
    for name in names {
        let image = StoredImage::find(store, name)?;
        // Saved by ID or digest, an image goes without a name.
        let names = match image::image_id(store, name)? {
            Some(_) => Vec::new(),
            None => {
                let reference = Reference::parse(name)?;
                if reference.digest().is_none() {
                    vec![reference]
                } else {
                    Vec::new()
                }
            }
        };
        images.push((image, names));
    }
    let entries: Vec<ArchiveImage<'_>> = images
        .iter()
        .map(|(image, names)| ArchiveImage {
            image,
            names: names.clone(),
        })
        .collect();
    archive::write_archive(store, &entries, format, output, 0)
}

pub fn load(store: &Store, input: &Path) -> anyhow::Result<()> {
    let _in_use = store.lock_shared()?;
    for loaded in archive::load(store, input)? {
        if loaded.names.is_empty() {
            println!("Loaded image: {}", loaded.manifest);
        }
        for name in &loaded.names {
            println!("Loaded image: {}", familiar(name));
        }
    }
    Ok(())
}

/// `SIZE`: bytes, or a number with a unit (`kB`, `MB`, `GB`, `TB`, powers
/// of 1000; `KiB`, `MiB`, `GiB`, `TiB`, powers of 1024), as Docker's flags
/// take them.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().with_context(|| {
        format!("invalid size {text:?}: expected a number and a unit such as 10GB")
    })?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => bail!(
            "invalid size {text:?}: unknown unit {other:?} (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        ),
    };
    Ok((number * factor) as u64)
}

/// `DURATION`: a sequence of numbers with units (`90s`, `30m`, `24h`, `7d`,
/// `1h30m`), as `--filter until=` takes it.
pub fn parse_duration(text: &str) -> anyhow::Result<std::time::Duration> {
    let mut total = 0u64;
    let mut number = String::new();
    let invalid = || {
        anyhow::anyhow!(
            "invalid duration {text:?}: expected numbers with units such as 24h, 30m or 7d"
        )
    };
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let value: u64 = number.parse().map_err(|_| invalid())?;
        number.clear();
        let seconds = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(invalid()),
        };
        total += value * seconds;
    }
    if !number.is_empty() || text.trim().is_empty() {
        return Err(invalid());
    }
    Ok(std::time::Duration::from_secs(total))
}

/// `kiln du`.
pub fn du(store: &Store) -> anyhow::Result<()> {
    let _in_use = store.lock_shared()?;
    let usage = store.disk_usage()?;
    let rows = [
        ("image blobs", usage.image_blobs),
        ("build cache blobs", usage.cache_blobs),
        ("unused blobs", usage.unused_blobs),
        ("image snapshots (unpacked)", usage.image_snapshots),
        ("build cache snapshots", usage.cache_snapshots),
        ("unused snapshots", usage.unused_snapshots),
        ("cache mounts", usage.cache_mounts),
        ("cache records", usage.cache_records),
        ("temporary files", usage.temporary),
        ("other", usage.other),
    ];
    let mut stdout = std::io::stdout().lock();
    for (kind, bytes) in rows {
        writeln!(stdout, "{kind:<30} {:>10}", human_size(bytes))?;
    }
    writeln!(stdout, "{:<30} {:>10}", "total", human_size(usage.total()))?;
    Ok(())
}

/// `kiln prune`.
pub fn prune(
    store: &Store,
    all: bool,
    keep_storage: Option<&str>,
    filters: &[String],
) -> anyhow::Result<()> {
    let mut policy = kiln_cache::PrunePolicy {
        all,
        keep_storage: keep_storage.map(parse_size).transpose()?,
        unused_for: None,
    };
    for filter in filters {
        match filter.split_once('=') {
            Some(("until", duration)) => policy.unused_for = Some(parse_duration(duration)?),
            _ => bail!(
                "invalid --filter {filter:?}: kiln filters by until=DURATION (such as until=24h)"
            ),
        }
    }
    let pruned = store.prune(&policy)?;
    println!(
        "removed {} cache record(s), {} blob(s), {} snapshot(s), {} cache mount(s); freed {}",
        pruned.records,
        pruned.blobs,
        pruned.snapshots,
        pruned.cache_mounts,
        human_size(pruned.freed)
    );
    Ok(())
}

/// The automatic policy of `--gc-keep-storage`: after a build, when the
/// build cache (layers only the cache keeps, and cache mounts) has grown past
/// the limit and no other process uses the store, the least recently used
/// of it goes until it fits.
pub fn collect_garbage(store: &Store, limit: u64) -> anyhow::Result<()> {
    let usage = store.disk_usage()?;
    if usage.cache_blobs + usage.cache_snapshots + usage.cache_mounts <= limit {
        return Ok(());
    }
    let pruned = store.prune_if_idle(&kiln_cache::PrunePolicy {
        all: false,
        unused_for: None,
        keep_storage: Some(limit),
    })?;
    report_collected(pruned);
    Ok(())
}

fn report_collected(pruned: Option<kiln_cache::Pruned>) {
    if let Some(pruned) = pruned.filter(|p| p.freed > 0) {
        eprintln!(
            "garbage collection (--gc-keep-storage): freed {}",
            human_size(pruned.freed)
        );
    }
}

pub fn check(store: &Store) -> anyhow::Result<()> {
    let problems = store.check()?;
    if problems.is_empty() {
        println!("the store at {} is consistent", store.root().display());
        return Ok(());
    }
    for problem in &problems {
        println!("{problem}");
    }
    bail!(
        "{} problem(s) found in the store at {}",
        problems.len(),
        store.root().display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_specs() {
        assert_eq!(Output::parse(None).expect("default"), Output::Store);
        assert_eq!(
            Output::parse(Some("type=image")).expect("image"),
            Output::Store
        );
        assert_eq!(
            Output::parse(Some("type=oci,dest=x.tar")).expect("oci"),
            Output::Oci("x.tar".into())
        );
        assert_eq!(
            Output::parse(Some("type=docker,dest=y.tar")).expect("docker"),
            Output::Docker("y.tar".into())
        );
        assert_eq!(
            Output::parse(Some("type=local,dest=out")).expect("local"),
            Output::Local("out".into())
        );
        assert_eq!(
            Output::parse(Some("out")).expect("shorthand"),
            Output::Local("out".into())
        );
        assert!(Output::parse(Some("type=oci")).is_err());
        assert!(Output::parse(Some("type=registry,dest=x")).is_err());
        assert!(Output::parse(Some("type=oci,compression=zstd")).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1_500), "1.5kB");
        assert_eq!(human_size(2_000_000), "2.0MB");
    }
}
