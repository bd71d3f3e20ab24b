//! What is in the store: `kiln images`, `inspect`, `tag`, `rmi`, `du`,
//! `prune` and `check`.

use std::io::Write;

use kiln_builder::error::Context;
use kiln_builder::image::{self, StoredImage};
use kiln_builder::Result;
use kiln_cache::{Digest, ImageEntry, Store};
use kiln_registry::Reference;

use super::values::{familiar, parse_duration, parse_size};
use crate::bail;
use kiln_builder::progress::human_size;
use kiln_builder::remote::Remote;

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

/// `kiln du`: allocated space by kind, in human sizes or, with `bytes`,
/// exact byte counts.
pub fn du(store: &Store, bytes: bool) -> Result<()> {
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
        ("git sources", usage.git_sources),
        ("cache records", usage.cache_records),
        ("temporary files", usage.temporary),
        ("other", usage.other),
    ];
    let size = |count: u64| {
        if bytes {
            count.to_string()
        } else {
            human_size(count)
        }
    };
    let mut stdout = std::io::stdout().lock();
    for (kind, count) in rows {
        writeln!(stdout, "{kind:<30} {:>10}", size(count))?;
    }
    writeln!(stdout, "{:<30} {:>10}", "total", size(usage.total()))?;
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
    policy.unused_for = until(filters)?;
    let pruned = store.prune(&policy)?;
    println!(
        "removed {} cache record(s), {} blob(s), {} snapshot(s), {} cache mount(s), {} git source(s); freed {}",
        pruned.records,
        pruned.blobs,
        pruned.snapshots,
        pruned.cache_mounts,
        pruned.git_sources,
        human_size(pruned.freed)
    );
    Ok(())
}

/// The `until=DURATION` of `--filter`s.
fn until(filters: &[String]) -> Result<Option<std::time::Duration>> {
    let mut until = None;
    for filter in filters {
        match filter.split_once('=') {
            Some(("until", duration)) => until = Some(parse_duration(duration)?),
            _ => bail!(
                "invalid --filter {filter:?}: kiln filters by until=DURATION (such as until=24h)"
            ),
        }
    }
    Ok(until)
}

/// `kiln prune --cache-ref REF`: the registry cache at REF kept within
/// `--filter until=` and `--keep-storage`.
pub fn prune_cache_ref(
    store: &Store,
    remote: &Remote,
    reference: &str,
    all: bool,
    keep_storage: Option<&str>,
    filters: &[String],
) -> Result<()> {
    let parsed = Reference::parse(reference)
        .with_context(|| format!("invalid --cache-ref {reference:?}"))?;
    let max_age = until(filters)?;
    let max_bytes = keep_storage.map(parse_size).transpose()?;
    if !all && max_age.is_none() && max_bytes.is_none() {
        bail!("kiln prune --cache-ref needs --filter until=DURATION, --keep-storage SIZE or --all");
    }
    let bounds = kiln_builder::cache_config::Bounds {
        max_entries: all.then_some(0),
        max_bytes,
        max_age: max_age.map(|age| age.as_secs() as i64),
    };
    let pruned = kiln_builder::cache_export::prune_registry_cache(store, remote, &parsed, &bounds)?;
    let (before, after) = pruned.entries;
    println!(
        "removed {} of the {before} entries of the cache {}; it names {} of layers, {} before",
        before - after,
        parsed.familiar(),
        human_size(pruned.bytes.1),
        human_size(pruned.bytes.0),
    );
    Ok(())
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
