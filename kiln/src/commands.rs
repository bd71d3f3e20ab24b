//! The `kiln` commands: each turns its arguments into what the build
//! library needs, runs it, and prints what a user reads.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_builder::archive::{self, ArchiveImage};
use kiln_builder::error::Context;
use kiln_builder::image::{self, Format, StoredImage};
use kiln_builder::progress::Progress;
use kiln_builder::remote::Remote;
use kiln_builder::run::{Interrupt, Sandbox};
use kiln_builder::{BuildRequest, Engine, Error, Output, Result};
use kiln_cache::{Compression, Digest, ImageEntry, Store};
use kiln_registry::Reference;

use crate::bail;
use crate::cli::{BuildArgs, DockerfileArgs};
use crate::progress::{Display, Mode};

/// The library's view of the Dockerfile options.
pub fn dockerfile_args(args: &DockerfileArgs) -> kiln_builder::dockerfile::DockerfileArgs {
    kiln_builder::dockerfile::DockerfileArgs {
        context: args.context.clone(),
        file: args.file.clone(),
        target: args.target.clone(),
        build_args: args.build_args.clone(),
        platform: args.platform.clone(),
    }
}

/// `kiln build`: the request the flags make, the build, its digest on
/// standard output (standard error when an archive is written there), and
/// garbage collection when asked.
pub fn build(
    store: &Store,
    remote: &Remote,
    runtime: Option<PathBuf>,
    args: &BuildArgs,
) -> Result<()> {
    let limit = args
        .gc_keep_storage
        .as_deref()
        .map(parse_size)
        .transpose()?;
    let request = build_request(args)?;
    let progress = Arc::new(Progress::new(Arc::new(Display::new(Mode::parse(
        &args.progress,
    )?))));
    if !rustix::process::geteuid().is_root() {
        bail!(
            "kiln build must run as root: layers record the owner of every file, and only \
             root can create files owned by others (run it with sudo)"
        );
    }
    let interrupt = Interrupt::install()?;
    let sandbox = Sandbox::new(store, runtime);
    let engine = Engine {
        store,
        remote,
        sandbox: &sandbox,
        interrupt: &interrupt,
        progress: &progress,
    };
    let built = kiln_builder::build(&engine, &request)?;
    if let Some(digest) = built.image {
        if built.on_stdout {
            eprintln!("{digest}");
        } else {
            println!("{digest}");
        }
    }
    if let Some(limit) = limit {
        // After the build has let go of the store: a collection waits for
        // no one and never removes what the build was still naming.
        if let Err(e) = collect_garbage(store, limit) {
            eprintln!("warning: garbage collection failed: {e}");
        }
    }
    Ok(())
}

fn build_request(args: &BuildArgs) -> Result<BuildRequest> {
    let mut request = BuildRequest::new(dockerfile_args(&args.dockerfile));
    request.labels = args.labels.clone();
    request.allow = args.allow.clone();
    request.tags = args
        .tags
        .iter()
        .map(|t| Reference::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    request.output = Output::parse(args.output.as_deref())?;
    request.format = args.format.as_deref().map(Format::parse).transpose()?;
    request.compression = Compression::parse(&args.compression).map_err(Error::Invalid)?;
    request.push = args.push;
    request.pull = args.pull;
    request.metadata_file = args.metadata_file.clone();
    request.iidfile = args.iidfile.clone();
    request.cache_to = args
        .cache_to
        .iter()
        .map(|spec| kiln_builder::cache_io::parse_cache_to(spec))
        .collect::<Result<Vec<_>>>()?;
    request.cache_from = args
        .cache_from
        .iter()
        .map(|spec| kiln_builder::cache_io::parse_cache_from(spec))
        .collect::<Result<Vec<_>>>()?;
    match args.jobs {
        Some(0) => bail!("--jobs must be at least 1"),
        Some(jobs) => request.jobs = jobs,
        None => {}
    }
    request.explain = args.explain;
    request.no_cache = args.no_cache;
    request.no_cache_stages = args
        .no_cache_filter
        .iter()
        .flat_map(|names| names.split(','))
        .map(|name| name.trim().to_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    request.source_date_epoch = args.source_date_epoch.clone();
    for spec in &args.secrets {
        let (id, source) = kiln_builder::secrets::parse_secret(spec)?;
        request.secrets.secrets.insert(id, source);
    }
    for spec in &args.ssh {
        let (id, socket) = kiln_builder::secrets::parse_ssh(spec)?;
        request.secrets.ssh.insert(id, socket);
    }
    Ok(request)
}

pub fn pull(store: &Store, remote: &Remote, image: &str, platform: Option<&str>) -> Result<()> {
    let reference = Reference::parse(image)?;
    let platform = match platform {
        Some(text) => kiln_frontend::Platform::parse(text)
            .map_err(|reason| Error::Invalid(format!("invalid --platform {text:?}: {reason}")))?,
        None => kiln_frontend::Platform::host(),
    };
    let _in_use = store.lock_shared()?;
    let digest = remote.pull(store, &reference, &platform)?;
    println!("{digest}");
    Ok(())
}

pub fn push(store: &Store, remote: &Remote, image: &str, destination: Option<&str>) -> Result<()> {
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
) -> Result<()> {
    let registry = kiln_builder::remote::registry_of(server)?;
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

pub fn logout(remote: &Remote, server: &str) -> Result<()> {
    let registry = kiln_builder::remote::registry_of(server)?;
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

pub fn images(store: &Store) -> Result<()> {
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

pub fn inspect(store: &Store, name: &str) -> Result<()> {
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

pub fn tag(store: &Store, source: &str, target: &str) -> Result<()> {
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

pub fn rmi(store: &Store, images: &[String]) -> Result<()> {
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

pub fn save(store: &Store, names: &[String], output: &Path, format: Format) -> Result<()> {
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

pub fn load(store: &Store, input: &Path) -> Result<()> {
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
pub fn parse_size(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| {
        Error::Invalid(format!(
            "invalid size {text:?}: expected a number and a unit such as 10GB"
        ))
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
pub fn parse_duration(text: &str) -> Result<std::time::Duration> {
    let mut total = 0u64;
    let mut number = String::new();
    let invalid = || {
        Error::Invalid(format!(
            "invalid duration {text:?}: expected numbers with units such as 24h, 30m or 7d"
        ))
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
pub fn du(store: &Store) -> Result<()> {
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
) -> Result<()> {
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
pub fn collect_garbage(store: &Store, limit: u64) -> Result<()> {
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

pub fn check(store: &Store) -> Result<()> {
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
    fn sizes() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1_500), "1.5kB");
        assert_eq!(human_size(2_000_000), "2.0MB");
    }
}
