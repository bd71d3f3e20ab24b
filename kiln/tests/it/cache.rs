//! The layer cache: which steps a rebuild runs again, read from the
//! metadata file each build writes (never from the clock).

use std::fs;
use std::path::Path;

use crate::support::{ran, require_root, Context, Kiln};

fn kiln() -> Kiln {
    Kiln::with_busybox()
}

#[test]
fn only_steps_that_read_a_changed_file_run_again() {
    let kiln = kiln();
    let context = Context::new();
    for dir in 0..50 {
        for file in 0..100 {
            context.write(&format!("files/{dir}/{file}.txt"), &format!("{dir}/{file}"));
        }
    }
    context.write("other.txt", "one");
    context.write("ignored.txt", "left out");
    context.write(".dockerignore", "ignored.txt\n");
    context.write(
        "Dockerfile",
        "FROM busybox\n\
         COPY other.txt /other.txt\n\
         RUN cat /other.txt > /other-copy\n\
         COPY files/ /files/\n\
         RUN find /files -type f | wc -l > /count\n",
    );
    let all = [
        "COPY other.txt /other.txt",
        "RUN cat /other.txt > /other-copy",
        "COPY files/ /files/",
        "RUN find /files -type f | wc -l > /count",
    ];
    assert_eq!(
        ran(&kiln.step_outcomes(context.path(), &[])),
        all,
        "a cold build"
    );
    assert_eq!(
        ran(&kiln.step_outcomes(context.path(), &[])),
        Vec::<&str>::new(),
        "nothing changed"
    );

    // New times, same bytes: nothing runs.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    for entry in walk(context.path()) {
        let file = fs::File::options().append(true).open(&entry).expect("open");
        file.set_modified(later).expect("touch");
    }
    fs::write(context.path().join("ignored.txt"), "changed, but ignored").expect("write");
    assert_eq!(
        ran(&kiln.step_outcomes(context.path(), &[])),
        Vec::<&str>::new()
    );

    // One file of the 5,000: the steps from its COPY on.
    fs::write(context.path().join("files/17/42.txt"), "changed").expect("write");
    assert_eq!(ran(&kiln.step_outcomes(context.path(), &[])), &all[2..]);

    // The first file: everything after it.
    fs::write(context.path().join("other.txt"), "two").expect("write");
    assert_eq!(ran(&kiln.step_outcomes(context.path(), &[])), all);

    // --no-cache runs everything; the result is the same.
    assert_eq!(
        ran(&kiln.step_outcomes(context.path(), &["--no-cache"])),
        all
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_build_arg_reruns_exactly_the_steps_that_see_it() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\n\
         ARG EARLY=1\n\
         RUN echo \"$EARLY\" > /early\n\
         ARG LATE=1\n\
         RUN echo \"$LATE\" > /late\n\
         RUN echo after > /after\n",
    );
    // The steps that ran, by their place in the Dockerfile's RUNs.
    let runs = |extra: &[&str]| -> Vec<bool> {
        kiln.step_outcomes(context.path(), extra)
            .iter()
            .map(|(_, cached)| !cached)
            .collect()
    };
    assert_eq!(runs(&[]), [true, true, true]);
    assert_eq!(
        runs(&["--build-arg", "LATE=2"]),
        [false, true, true],
        "the steps with LATE in scope"
    );
    assert_eq!(runs(&["--build-arg", "LATE=2"]), [false, false, false]);
    assert_eq!(
        runs(&["--build-arg", "EARLY=2", "--build-arg", "LATE=2"]),
        [true, true, true]
    );
    // Proxy variables reach steps but not their keys.
    assert_eq!(
        runs(&[
            "--build-arg",
            "EARLY=2",
            "--build-arg",
            "LATE=2",
            "--build-arg",
            "HTTP_PROXY=http://proxy:3128"
        ]),
        [false, false, false]
    );
}

#[test]
fn no_cache_filter_reruns_the_stages_it_names_and_what_reads_them() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox AS build\n\
         RUN cat /proc/sys/kernel/random/uuid > /out\n\
         FROM busybox AS other\n\
         RUN echo other > /other\n\
         FROM busybox\n\
         COPY --from=other /other /other\n\
         COPY --from=build /out /out\n\
         RUN cat /out > /copy\n",
    );
    assert_eq!(ran(&kiln.step_outcomes(context.path(), &[])).len(), 5);
    assert_eq!(ran(&kiln.step_outcomes(context.path(), &[])).len(), 0);
    // The stage runs again and makes another file: what copies it runs
    // again too; the other stage and what only reads it do not.
    assert_eq!(
        ran(&kiln.step_outcomes(context.path(), &["--no-cache-filter", "build"])),
        [
            "RUN cat /proc/sys/kernel/random/uuid > /out",
            "COPY --from=build /out /out",
            "RUN cat /out > /copy"
        ]
    );
}

#[test]
fn a_secrets_value_is_not_part_of_the_key() {
    let kiln = kiln();
    let work = tempfile::tempdir().expect("dir");
    let secret = work.path().join("secret");
    fs::write(&secret, "first").expect("write");
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\nRUN --mount=type=secret,id=s cat /run/secrets/s > /dev/null && echo ok > /ok\n",
    );
    let arg = format!("id=s,src={}", secret.display());
    assert_eq!(
        ran(&kiln.step_outcomes(context.path(), &["--secret", &arg])).len(),
        1
    );
    fs::write(&secret, "second").expect("write");
    assert_eq!(
        ran(&kiln.step_outcomes(context.path(), &["--secret", &arg])),
        Vec::<&str>::new(),
        "a secret's value is not part of the key"
    );
}

#[test]
fn rebuilds_with_source_date_epoch_give_the_same_image() {
    let kiln = kiln();
    let context = Context::new();
    context.write("hello.txt", "hello");
    context.write(
        "Dockerfile",
        "FROM busybox\nCOPY hello.txt /\nRUN cp /hello.txt /copy\n",
    );
    let epoch = ["--source-date-epoch", "1700000000", "-t", "same"];
    kiln.step_outcomes(context.path(), &epoch);
    let first = kiln.inspect("same")["Digest"].clone();
    let steps = kiln.step_outcomes(context.path(), &epoch);
    assert_eq!(ran(&steps), Vec::<&str>::new());
    assert_eq!(kiln.inspect("same")["Digest"], first);
    // Another epoch stamps other times on new files: every step runs.
    let other = kiln.step_outcomes(
        context.path(),
        &["--source-date-epoch", "1700000001", "-t", "other"],
    );
    assert_eq!(ran(&other).len(), 2, "{other:?}");
    let fresh = kiln.step_outcomes(context.path(), &[&epoch[..], &["--no-cache"]].concat());
    assert_eq!(ran(&fresh).len(), 2);
    assert_eq!(
        kiln.inspect("same")["Digest"],
        first,
        "running the steps again makes the same image"
    );
}

#[test]
fn a_layer_gone_from_the_store_is_a_miss() {
    let kiln = kiln();
    let context = Context::new();
    context.write("Dockerfile", "FROM busybox\nRUN echo made > /made\n");
    kiln.step_outcomes(context.path(), &["-t", "made"]);
    let manifest = &kiln.inspect("made")["Manifest"];
    let layers = manifest["layers"].as_array().expect("layers");
    let digest = layers.last().expect("layer")["digest"]
        .as_str()
        .expect("digest");
    fs::remove_file(
        kiln.root
            .path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .expect("remove the blob");
    // Its snapshot too: nothing is left to make the layer from.
    let diff_ids = kiln.inspect("made")["Config"]["rootfs"]["diff_ids"].clone();
    let diff_id = diff_ids
        .as_array()
        .and_then(|ids| ids.last())
        .and_then(|id| id.as_str())
        .expect("diff id");
    fs::remove_dir_all(
        kiln.root
            .path()
            .join("snapshots")
            .join(diff_id.trim_start_matches("sha256:")),
    )
    .expect("remove the snapshot");
    assert_eq!(
        ran(&kiln.step_outcomes(context.path(), &["-t", "made"])).len(),
        1
    );
    kiln.assert_consistent();
}

/// `du` of a directory in bytes of allocated blocks, as `kiln du` counts.
fn du(path: &Path) -> u64 {
    let output = std::process::Command::new("du")
        .args(["-s", "-B1"])
        .arg(path)
        .output()
        .expect("du runs");
    assert!(
        output.status.success(),
        "du {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du prints a size")
}

/// The rows of `kiln du` (its kinds and the total): each label and the
/// size as printed.
fn du_rows(kiln: &Kiln, args: &[&str]) -> Vec<(String, String)> {
    let mut command = vec!["du"];
    command.extend_from_slice(args);
    kiln.ok(&command)
        .lines()
        .map(|line| {
            let (label, size) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a label and a size: {line:?}"));
            (label.trim_end().to_string(), size.to_string())
        })
        .collect()
}

/// `kiln du --bytes`: each label and its byte count.
fn du_bytes(kiln: &Kiln) -> Vec<(String, u64)> {
    du_rows(kiln, &["--bytes"])
        .into_iter()
        .map(|(label, size)| {
            let bytes = size
                .parse()
                .unwrap_or_else(|_| panic!("{label}: {size:?} is not a byte count"));
            (label, bytes)
        })
        .collect()
}

fn row(rows: &[(String, u64)], label: &str) -> u64 {
    rows.iter()
        .find(|(name, _)| name == label)
        .unwrap_or_else(|| panic!("no {label:?} row: {rows:?}"))
        .1
}

/// Whether `size` reads as a human size: bytes below 1 kB (`512B`), else
/// one decimal and a unit in powers of 1000 (`1.5kB`, `20.0MB`).
fn is_human_size(size: &str) -> bool {
    let digits = |text: &str| !text.is_empty() && text.chars().all(|c| c.is_ascii_digit());
    if let Some(bytes) = size.strip_suffix('B').filter(|bytes| digits(bytes)) {
        return bytes.len() <= 3;
    }
    ["kB", "MB", "GB", "TB"].iter().any(|unit| {
        size.strip_suffix(unit)
            .and_then(|number| number.split_once('.'))
            .is_some_and(|(whole, decimal)| digits(whole) && decimal.len() == 1 && digits(decimal))
    })
}

/// The allocated bytes of the blobs the images `names` are made of (their
/// manifest, configuration and layers), measured by `du`.
fn image_blobs_on_disk(kiln: &Kiln, names: &[&str]) -> u64 {
    let mut digests = std::collections::BTreeSet::new();
    for name in names {
        let image = kiln.inspect(name);
        let manifest = &image["Manifest"];
        let layers = manifest["layers"].as_array().expect("layers");
        assert!(!layers.is_empty(), "{name} has no layers: {image}");
        digests.insert(image["Digest"].as_str().expect("digest").to_string());
        digests.insert(
            manifest["config"]["digest"]
                .as_str()
                .expect("config digest")
                .to_string(),
        );
        for layer in layers {
            digests.insert(layer["digest"].as_str().expect("layer digest").to_string());
        }
    }
    let blobs = kiln.root.path().join("blobs/sha256");
    digests
        .iter()
        .map(|digest| du(&blobs.join(digest.trim_start_matches("sha256:"))))
        .sum()
}

#[test]
fn du_counts_what_du_measures_by_kind() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox
         RUN --mount=type=cache,target=/cache head -c 300000 /dev/urandom > /cache/file
         RUN head -c 200000 /dev/urandom > /out
",
    );
    kiln.step_outcomes(context.path(), &["-t", "app"]);
    let root = kiln.root.path();
    let bytes = du_bytes(&kiln);
    let labels: Vec<&str> = bytes.iter().map(|(label, _)| label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "image blobs",
            "build cache blobs",
            "unused blobs",
            "image snapshots (unpacked)",
            "build cache snapshots",
            "unused snapshots",
            "cache mounts",
            "git sources",
            "cache records",
            "temporary files",
            "other",
            "total"
        ]
    );
    assert_eq!(
        row(&bytes, "total"),
        du(root),
        "the total is the store's du"
    );
    let kinds: u64 = bytes[..bytes.len() - 1].iter().map(|(_, n)| n).sum();
    assert_eq!(kinds, row(&bytes, "total"), "the kinds add up: {bytes:?}");
    assert_eq!(
        row(&bytes, "image blobs"),
        image_blobs_on_disk(&kiln, &["busybox", "app"]),
        "{bytes:?}"
    );
    // The cache mount holds the 300 kB file the build wrote into it.
    let cache_mounts = row(&bytes, "cache mounts");
    assert_eq!(cache_mounts, du(&root.join("cache-mounts")));
    assert!(cache_mounts >= 300_000, "{bytes:?}");
    assert_eq!(row(&bytes, "cache records"), du(&root.join("cache-keys")));

    // The human output: the same rows, each size in its short form.
    let human = du_rows(&kiln, &[]);
    let human_labels: Vec<&str> = human.iter().map(|(label, _)| label.as_str()).collect();
    assert_eq!(human_labels, labels);
    for (label, size) in &human {
        assert!(is_human_size(size), "{label}: {size:?}");
    }
}

#[test]
fn prune_removes_what_nothing_needs_and_the_cache_only_when_asked() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox AS build\n\
         RUN --mount=type=cache,target=/cache echo kept > /cache/file && echo built > /out\n\
         FROM busybox\n\
         COPY --from=build /out /out\n",
    );
    kiln.step_outcomes(context.path(), &["-t", "app"]);
    assert_eq!(
        row(&du_bytes(&kiln), "total"),
        du(kiln.root.path()),
        "kiln du matches du"
    );

    // Garbage only: the cache stays.
    kiln.ok(&["prune"]);
    assert!(ran(&kiln.step_outcomes(context.path(), &["-t", "app"])).is_empty());
    kiln.assert_consistent();

    // A filter that spares what was just used.
    kiln.ok(&["prune", "--all", "--filter", "until=1h"]);
    assert!(ran(&kiln.step_outcomes(context.path(), &["-t", "app"])).is_empty());

    // The whole cache: every step runs again, the cache mount is empty.
    let output = kiln.ok(&["prune", "--all"]);
    assert!(output.contains("1 cache mount(s)"), "{output}");
    let cache_mounts = kiln.root.path().join("cache-mounts");
    let left: Vec<_> = walk(&cache_mounts)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "file"))
        .collect();
    assert!(left.is_empty(), "cache mount content left: {left:?}");
    kiln.assert_consistent();
    assert_eq!(
        kiln.ok(&["run", "app", "cat", "/out"]),
        "built\n",
        "images stay"
    );
    assert_eq!(
        ran(&kiln.step_outcomes(context.path(), &["-t", "app"])).len(),
        2
    );

    // --keep-storage 0: no space for the cache mount. (The records of
    // layers the image has take none: they stay.)
    let output = kiln.ok(&["prune", "--keep-storage", "0"]);
    assert!(output.contains("1 cache mount(s)"), "{output}");
    assert!(ran(&kiln.step_outcomes(context.path(), &["-t", "app"])).is_empty());
    assert_eq!(row(&du_bytes(&kiln), "total"), du(kiln.root.path()));
}

#[test]
fn gc_keep_storage_trims_the_cache_after_a_build() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox AS big\n\
         RUN head -c 3000000 /dev/urandom > /big\n\
         FROM busybox\n\
         RUN echo small > /small\n",
    );
    // Files only, no image: the big layer is the cache's alone.
    let files = tempfile::tempdir().expect("dir");
    let big = [
        "--target",
        "big",
        "-o",
        files.path().to_str().expect("utf-8"),
    ];
    kiln.step_outcomes(context.path(), &big);
    assert!(ran(&kiln.step_outcomes(context.path(), &big)).is_empty());
    kiln.step_outcomes(context.path(), &["-t", "small", "--gc-keep-storage", "1MB"]);
    // The big layer is gone; the image is whole.
    assert_eq!(ran(&kiln.step_outcomes(context.path(), &big)).len(), 1);
    kiln.assert_consistent();
}

/// A second machine: an empty store with the same busybox as `first`.
pub(crate) fn second_machine(first: &Kiln) -> Kiln {
    let archive = tempfile::NamedTempFile::new().expect("archive");
    let path = archive.path().to_str().expect("utf-8");
    first.ok(&["save", "busybox", "-o", path]);
    let second = Kiln::new();
    second.ok(&["load", "-i", path]);
    second
}

pub(crate) const EPOCH: [&str; 2] = ["--source-date-epoch", "1700000000"];

/// Builds `dockerfile` on a first machine exporting the cache with
/// `cache_to`, then on a second importing it with `cache_from`; returns
/// the second build's steps, and whether both made the same image.
/// Builds `dockerfile` exporting its cache, then on a second, empty store
/// importing it; returns the second build's steps, whether it made the same
/// image, and the steps of the second store building it again without
/// `--cache-from`.
type Shared = (Vec<(String, bool)>, bool, Vec<(String, bool)>);

fn share(dockerfile: &str, cache_to: &str, cache_from: &str) -> Shared {
    let first = kiln();
    let context = Context::new();
    context.write("input.txt", "input");
    context.write("Dockerfile", dockerfile);
    let mut args = vec!["-t", "app", "--cache-to", cache_to];
    args.extend(EPOCH);
    first.step_outcomes(context.path(), &args);
    let second = second_machine(&first);
    let mut args = vec!["-t", "app", "--cache-from", cache_from];
    args.extend(EPOCH);
    let steps = second.step_outcomes(context.path(), &args);
    let same = first.inspect("app")["Digest"] == second.inspect("app")["Digest"];
    second.assert_consistent();
    let mut args = vec!["-t", "app"];
    args.extend(EPOCH);
    let again = second.step_outcomes(context.path(), &args);
    (steps, same, again)
}

const ONE_STAGE: &str = "FROM busybox\n\
    COPY input.txt /input.txt\n\
    RUN cp /input.txt /copy\n\
    RUN echo done > /done\n";

const TWO_STAGES: &str = "FROM busybox AS build\n\
    COPY input.txt /input.txt\n\
    RUN cp /input.txt /built\n\
    FROM busybox\n\
    COPY --from=build /built /built\n\
    RUN cat /built > /final\n";

pub(crate) fn runs(steps: &[(String, bool)]) -> usize {
    steps
        .iter()
        .filter(|(step, cached)| step.starts_with("RUN") && !cached)
        .count()
}

#[test]
fn a_local_cache_serves_an_empty_store() {
    let dir = tempfile::tempdir().expect("dir");
    let cache = dir.path().join("cache");
    let to = |mode: &str| format!("type=local,dest={},mode={mode}", cache.display());
    let from = format!("type=local,src={}", cache.display());
    serves_an_empty_store(&to, &from);

    // min keeps the steps of the stages the final one copies from too:
    // nothing runs.
    let (steps, same, _) = share(TWO_STAGES, &to("min"), &from);
    assert_eq!(runs(&steps), 0, "{steps:?}");
    assert!(same);
}

#[test]
fn a_registry_cache_serves_an_empty_store() {
    require_root();
    let registry = kiln_testkit::Registry::start(kiln_testkit::Setup::Anonymous);
    let reference = registry.name("team/app:cache");
    let to = |mode: &str| format!("type=registry,ref={reference},mode={mode}");
    serves_an_empty_store(&to, &format!("type=registry,ref={reference}"));
}

/// A cache exported with `to(mode)` and imported with `from` lets a second
/// store run no RUN step and make the same image: mode=min for a single
/// stage, mode=max for two.
fn serves_an_empty_store(to: &dyn Fn(&str) -> String, from: &str) {
    let (steps, same, again) = share(ONE_STAGE, &to("min"), from);
    assert_eq!(runs(&steps), 0, "{steps:?}");
    assert!(same, "the same image");
    assert_eq!(
        runs(&again),
        0,
        "imported records stay in the store: {again:?}"
    );

    let (steps, same, _) = share(TWO_STAGES, &to("max"), from);
    assert_eq!(runs(&steps), 0, "{steps:?}");
    assert!(same, "the same image");
}

#[test]
fn an_inline_cache_travels_with_the_image() {
    require_root();
    let registry = kiln_testkit::Registry::start(kiln_testkit::Setup::Anonymous);
    let first = kiln();
    let context = Context::new();
    context.write("input.txt", "input");
    context.write("Dockerfile", ONE_STAGE);
    let image = registry.name("team/app:1");
    let mut args = vec!["-t", image.as_str(), "--push", "--cache-to", "type=inline"];
    args.extend(EPOCH);
    first.step_outcomes(context.path(), &args);
    let second = second_machine(&first);
    let mut args = vec!["--cache-from", image.as_str()];
    args.extend(EPOCH);
    let steps = second.step_outcomes(context.path(), &args);
    assert_eq!(runs(&steps), 0, "{steps:?}");
}

#[test]
fn a_missing_cache_is_a_warning_and_an_imported_layer_is_fetched_only_when_needed() {
    let first = kiln();
    let dir = tempfile::tempdir().expect("dir");
    let cache = dir.path().join("cache");
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox AS big\n\
         RUN head -c 2000000 /dev/urandom > /big && echo small > /small\n\
         FROM busybox\n\
         COPY --from=big /small /small\n",
    );
    let from = format!("type=local,src={}", cache.display());
    let to = format!("type=local,dest={},mode=max", cache.display());
    // No cache yet: a warning, and the build goes on.
    let output = first.run(&[
        "build",
        "--cache-from",
        &from,
        "--cache-to",
        &to,
        context.path().to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("warning: no cache at"), "{stderr}");
    let second = second_machine(&first);
    let steps = second.step_outcomes(context.path(), &["--cache-from", &from]);
    assert_eq!(steps.iter().filter(|(_, cached)| !cached).count(), 0);
    // The copy was a hit too, so nothing needed the big stage's files: its
    // layer stayed where it was.
    let usage = second.ok(&["du"]);
    let blobs = walk(&second.root.path().join("blobs/sha256"));
    let big = blobs
        .iter()
        .filter(|blob| fs::metadata(blob).map(|m| m.len()).unwrap_or(0) >= 2_000_000)
        .count();
    assert_eq!(big, 0, "the big layer was fetched: {usage}");
}

/// Blob files of at least `size` bytes in `kiln`'s store.
fn big_blobs(kiln: &Kiln, size: u64) -> usize {
    walk(&kiln.root.path().join("blobs/sha256"))
        .iter()
        .filter(|blob| fs::metadata(blob).map(|m| m.len()).unwrap_or(0) >= size)
        .count()
}

#[test]
fn a_build_whose_steps_are_all_cached_downloads_no_layer_of_a_base_they_ran_on() {
    require_root();
    let registry = kiln_testkit::Registry::start(kiln_testkit::Setup::Anonymous);
    let first = kiln();
    // A builder stage's base with a big layer (a toolchain), in the
    // registry only.
    let toolchain = registry.name("tools/builder:1");
    let base = Context::new();
    base.write(
        "Dockerfile",
        "FROM busybox\nRUN head -c 3000000 /dev/urandom > /toolchain\n",
    );
    first.build(base.path(), &["-t", &toolchain, "--push"]);
    first.ok(&["rmi", &toolchain]);
    let context = Context::new();
    context.write("input.txt", "input");
    context.write(
        "Dockerfile",
        &format!(
            "FROM {toolchain} AS build\n\
             COPY input.txt /input.txt\n\
             RUN wc -c < /toolchain > /size && cp /input.txt /built\n\
             FROM busybox\n\
             COPY --from=build /built /size /\n"
        ),
    );
    let cache = registry.name("team/app:cache");
    let mut args = vec!["-t", "app"];
    args.extend(EPOCH);
    let cache_to = format!("type=registry,ref={cache},mode=max");
    let mut first_args = args.clone();
    first_args.extend(["--cache-to", cache_to.as_str()]);
    assert_eq!(runs(&first.step_outcomes(context.path(), &first_args)), 1);

    let second = second_machine(&first);
    let mut second_args = args.clone();
    second_args.extend(["--cache-from", cache.as_str()]);
    let steps = second.step_outcomes(context.path(), &second_args);
    assert_eq!(runs(&steps), 0, "{steps:?}");
    assert_eq!(
        first.inspect("app")["Digest"],
        second.inspect("app")["Digest"]
    );
    assert_eq!(
        big_blobs(&second, 3_000_000),
        0,
        "the builder's base layer was downloaded: {}",
        second.ok(&["du"])
    );
    // Nothing names an image whose layers are not all there.
    assert!(!second.ok(&["images"]).contains("tools/builder"));
    second.assert_consistent();

    // A step that runs on the base fetches its layers, and the store has
    // the whole image from then on.
    let mut no_cache = args.clone();
    no_cache.push("--no-cache");
    assert_eq!(runs(&second.step_outcomes(context.path(), &no_cache)), 1);
    assert_eq!(big_blobs(&second, 3_000_000), 1);
    assert!(second.ok(&["images"]).contains("tools/builder"));
    assert_eq!(
        first.inspect("app")["Digest"],
        second.inspect("app")["Digest"]
    );
    second.assert_consistent();
}

#[test]
fn a_cached_build_pushed_where_its_base_is_mounts_the_base_layers_without_downloading_them() {
    require_root();
    let registry = kiln_testkit::Registry::start(kiln_testkit::Setup::Anonymous);
    let first = kiln();
    let base = registry.name("tools/base:1");
    let base_context = Context::new();
    base_context.write(
        "Dockerfile",
        "FROM busybox\nRUN head -c 3000000 /dev/urandom > /toolchain\n",
    );
    first.build(base_context.path(), &["-t", &base, "--push"]);
    let context = Context::new();
    context.write("input.txt", "input");
    context.write(
        "Dockerfile",
        &format!("FROM {base}\nCOPY input.txt /input.txt\n"),
    );
    let cache = registry.name("team/app:cache");
    let cache_to = format!("type=registry,ref={cache}");
    let pushed_first = registry.name("team/app:1");
    let mut args = vec![
        "-t",
        pushed_first.as_str(),
        "--push",
        "--cache-to",
        &cache_to,
    ];
    args.extend(EPOCH);
    first.build(context.path(), &args);

    // An empty store, not even busybox: every step is a hit, and the push
    // mounts the base's layers from their repository.
    let second = Kiln::new();
    // Another repository, which has none of the blobs yet.
    let pushed_second = registry.name("team/other:2");
    let mut args = vec![
        "-t",
        pushed_second.as_str(),
        "--push",
        "--cache-from",
        &cache,
    ];
    args.extend(EPOCH);
    let output = second.try_build(context.path(), &args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("2 mounted"), "{stderr}");
    assert_eq!(big_blobs(&second, 3_000_000), 0, "{}", second.ok(&["du"]));
    assert!(
        !second.ok(&["images"]).contains("team/other"),
        "not whole here"
    );
    second.assert_consistent();

    // What the registry got is the first machine's image, whole.
    let third = Kiln::new();
    third.ok(&["pull", &pushed_second]);
    assert_eq!(
        third.inspect(&pushed_second)["Digest"],
        first.inspect(&pushed_first)["Digest"]
    );
    third.assert_consistent();
}

#[test]
fn layers_nothing_exports_are_never_compressed() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox AS big\n\
         RUN head -c 2000000 /dev/urandom > /big && echo small > /small\n\
         FROM busybox\n\
         COPY --from=big /small /small\n",
    );
    kiln.step_outcomes(context.path(), &["-t", "app"]);
    let big_blobs = walk(&kiln.root.path().join("blobs/sha256"))
        .into_iter()
        .filter(|blob| fs::metadata(blob).map(|m| m.len()).unwrap_or(0) >= 2_000_000)
        .count();
    assert_eq!(
        big_blobs, 0,
        "the intermediate stage's layer was written as a blob"
    );
    // Still a hit: its snapshot is the cache.
    assert!(ran(&kiln.step_outcomes(context.path(), &["-t", "app"])).is_empty());
    // Exported, it gets a blob.
    let files = tempfile::tempdir().expect("dir");
    let archive = files.path().join("big.tar");
    kiln.step_outcomes(
        context.path(),
        &[
            "--target",
            "big",
            "-o",
            &format!("type=oci,dest={}", archive.display()),
        ],
    );
    assert!(fs::metadata(&archive).expect("archive").len() >= 2_000_000);
}

#[test]
fn explain_says_which_part_of_a_key_changed() {
    let kiln = kiln();
    let context = Context::new();
    context.write("src/main.c", "int main() { return 0; }");
    context.write("src/util.c", "int util;");
    context.write(
        "Dockerfile",
        "FROM busybox\nARG VERSION=1\nCOPY src /src\nRUN ls /src > /listing\n",
    );
    let explained = |extra: &[&str]| -> Vec<Vec<String>> {
        let mut args = vec!["--explain"];
        args.extend_from_slice(extra);
        kiln.build_steps(context.path(), &args)
            .iter()
            .map(|step| {
                step["explain"]
                    .as_array()
                    .map(|lines| {
                        lines
                            .iter()
                            .map(|l| l.as_str().expect("text").to_string())
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect()
    };
    let first = explained(&[]);
    assert_eq!(first[0], ["no earlier build of this step is known"]);
    fs::write(context.path().join("src/util.c"), "int util = 1;").expect("write");
    fs::write(context.path().join("src/new.c"), "").expect("write");
    let second = explained(&[]);
    assert_eq!(
        second[0],
        ["file src/new.c was added", "file src/util.c changed"]
    );
    assert_eq!(
        second[1],
        ["what it builds on changed (the step before it, or the base image)"]
    );
    let third = explained(&["--build-arg", "VERSION=2"]);
    assert!(third[0].is_empty(), "the copy was a hit: {third:?}");
    assert_eq!(third[1], ["the build argument or variable VERSION changed"]);
}

#[test]
fn keys_do_not_depend_on_which_stages_a_target_needs() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox AS x\n\
         RUN echo x > /x\n\
         FROM busybox AS a\n\
         RUN echo a > /a\n\
         FROM busybox AS b\n\
         COPY --from=a /a /a\n\
         RUN --mount=type=bind,from=a,target=/mnt cat /mnt/a > /bound\n\
         FROM busybox\n\
         COPY --from=x /x /x\n\
         COPY --from=b /a /b\n",
    );
    kiln.step_outcomes(context.path(), &[]);
    // Stage a is the first stage this target needs, the second before.
    let steps = kiln.step_outcomes(context.path(), &["--target", "b"]);
    assert!(ran(&steps).is_empty(), "{steps:?}");
}

#[test]
fn prune_refuses_to_guess_when_an_image_cannot_be_read() {
    let kiln = kiln();
    let context = Context::new();
    context.write("Dockerfile", "FROM busybox\nRUN echo made > /made\n");
    kiln.step_outcomes(context.path(), &["-t", "app"]);
    let manifest = kiln.inspect("app")["Digest"]
        .as_str()
        .expect("digest")
        .trim_start_matches("sha256:")
        .to_string();
    let blobs = kiln.root.path().join("blobs/sha256");
    let before = fs::read_dir(&blobs).expect("blobs").count();
    fs::remove_file(blobs.join(&manifest)).expect("remove the manifest");
    let error = kiln.fails(&["prune", "--all"]);
    assert!(error.contains("kiln check"), "{error}");
    assert_eq!(
        fs::read_dir(&blobs).expect("blobs").count(),
        before - 1,
        "nothing else was removed"
    );
}

/// A stage rebuilt (here with another build argument) that makes the same
/// files again: the steps copying or mounting them, and those after them,
/// are hits, as BuildKit's content keys make them.
#[test]
fn a_rebuilt_stage_that_makes_the_same_files_reuses_what_reads_them() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox AS build\n\
         ARG BUST\n\
         RUN echo $BUST > /bust && mkdir /out && echo same > /out/file\n\
         FROM busybox\n\
         COPY --from=build /out /out\n\
         RUN cat /out/file > /final\n\
         RUN --mount=from=build,source=/out,target=/in cat /in/file > /mounted\n\
         RUN echo after > /after\n",
    );
    let first = kiln.step_outcomes(context.path(), &["--build-arg", "BUST=1"]);
    assert_eq!(ran(&first).len(), 5, "{first:?}");
    let second = kiln.step_outcomes(context.path(), &["--build-arg", "BUST=2"]);
    assert_eq!(
        ran(&second),
        ["RUN echo 2 > /bust && mkdir /out && echo same > /out/file"],
        "only the stage's own step runs again"
    );
    // And the third build finds it all under the stage's new key.
    let third = kiln.step_outcomes(context.path(), &["--build-arg", "BUST=2"]);
    assert!(ran(&third).is_empty(), "{third:?}");
}
