//! A build cache shared by agents through a registry, as CI fleets use it:
//! cache mounts that travel with it, one reference merged by every branch,
//! imports that fail turned into misses, exports that move only what
//! changed, and pruning the reference. Each agent is a store of its own.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_testkit::{Fault, Faults, Proxy, Registry, Setup};

use crate::cache::{runs, second_machine, EPOCH};
use crate::support::{ran, Context, Kiln};

/// Builds `context` with `args` (and `--source-date-epoch`), whatever comes
/// of it: each step with whether it was cached (empty when the build
/// failed), and what kiln printed on standard error.
fn build_logged(kiln: &Kiln, context: &Path, args: &[&str]) -> (Vec<(String, bool)>, String) {
    let metadata = tempfile::NamedTempFile::new().expect("metadata file");
    let path = metadata.path().to_str().expect("utf-8").to_string();
    let mut all = vec!["--metadata-file", path.as_str()];
    all.extend(EPOCH);
    all.extend_from_slice(args);
    let output = kiln.try_build(context, &all);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "kiln build {args:?}:\n{stderr}");
    let metadata: serde_json::Value =
        serde_json::from_slice(&fs::read(metadata.path()).expect("metadata")).expect("JSON");
    let steps = metadata["kiln.steps"]
        .as_array()
        .expect("kiln.steps")
        .iter()
        .map(|step| {
            (
                step["step"].as_str().expect("step").to_string(),
                step["cached"].as_bool().expect("cached"),
            )
        })
        .collect();
    (steps, stderr)
}

/// The registry's storage, read from its directory.
fn storage(registry: &Registry) -> PathBuf {
    registry.dir.path().join("data/docker/registry/v2")
}

fn blob_path(registry: &Registry, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    storage(registry).join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]))
}

/// The manifest and configuration the registry holds under
/// `repository:tag`.
fn cache_in(
    registry: &Registry,
    repository: &str,
    tag: &str,
) -> (serde_json::Value, serde_json::Value) {
    let link = storage(registry).join(format!(
        "repositories/{repository}/_manifests/tags/{tag}/current/link"
    ));
    let digest = fs::read_to_string(&link).expect("the tag exists");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob_path(registry, digest.trim())).expect("manifest"))
            .expect("JSON");
    let config_digest = manifest["config"]["digest"].as_str().expect("config");
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(blob_path(registry, config_digest)).expect("config"))
            .expect("JSON");
    (manifest, config)
}

/// A package manager's cache: the first step downloads into it when it is
/// empty and says which it was; the second checks the download is there.
const PACKAGES: &str = "FROM busybox\n\
    COPY version.txt /version.txt\n\
    RUN --mount=type=cache,target=/var/cache/pkg,id=pkg \\\n\
        if test -f /var/cache/pkg/index; then echo package cache warm; \\\n\
        else echo package cache cold; echo downloaded > /var/cache/pkg/index; fi; \\\n\
        cat /version.txt > /installed\n\
    RUN --mount=type=cache,target=/var/cache/pkg,id=pkg,readonly \\\n\
        grep -q downloaded /var/cache/pkg/index && cp /installed /checked\n";

#[test]
fn a_cache_mount_filled_on_one_agent_is_warm_on_the_next() {
    let registry = Registry::start(Setup::Anonymous);
    let cache = registry.name("ci/app:cache");
    let to = format!("type=registry,ref={cache},mounts=true");
    let from = format!("type=registry,ref={cache},mounts=true");
    let context = Context::new();
    context.write("Dockerfile", PACKAGES);
    context.write("version.txt", "1");
    let first = Kiln::with_busybox();
    let (_, stderr) = build_logged(&first, context.path(), &["--cache-to", &to]);
    assert!(stderr.contains("package cache cold"), "{stderr}");
    let (manifest, config) = cache_in(&registry, "ci/app", "cache");
    let mounts = config["mounts"].as_array().expect("the cache lists mounts");
    assert_eq!(mounts.len(), 1, "{config}");
    assert_eq!(mounts[0]["id"], "pkg");
    let first_blob = mount_blob(&manifest, &mounts[0]);

    // A fresh agent, a changed input: the steps run, and find the cache
    // mount as the first agent left it.
    context.write("version.txt", "2");
    let second = second_machine(&first);
    let (steps, stderr) = build_logged(
        &second,
        context.path(),
        &["--cache-from", &from, "--cache-to", &to],
    );
    assert_eq!(runs(&steps), 2, "{steps:?}");
    assert!(stderr.contains("package cache warm"), "{stderr}");
    // Its steps read the mount and wrote nothing there: the export names
    // the same blob, and uploads no copy of it.
    let (manifest, config) = cache_in(&registry, "ci/app", "cache");
    let mounts = config["mounts"].as_array().expect("mounts");
    assert_eq!(mounts.len(), 1, "{config}");
    assert_eq!(mount_blob(&manifest, &mounts[0]), first_blob);

    // Without mounts=true an import leaves cache mounts alone.
    context.write("version.txt", "3");
    let third = second_machine(&first);
    let (_, stderr) = build_logged(&third, context.path(), &["--cache-from", &cache]);
    assert!(stderr.contains("package cache cold"), "{stderr}");
}

/// The digest of the blob a cache's mount entry names.
fn mount_blob(manifest: &serde_json::Value, mount: &serde_json::Value) -> String {
    let index = mount["layer"].as_u64().expect("a layer index") as usize;
    manifest["layers"][index]["digest"]
        .as_str()
        .expect("a digest")
        .to_string()
}

const MAIN: &str = "FROM busybox\n\
    COPY shared.txt /shared.txt\n\
    RUN cp /shared.txt /dependencies\n\
    RUN head -c 300000 /dev/urandom > /main-only\n";

const BRANCH: &str = "FROM busybox\n\
    COPY shared.txt /shared.txt\n\
    RUN cp /shared.txt /dependencies\n\
    RUN head -c 300000 /dev/urandom > /branch-only\n";

fn context_with(dockerfile: &str) -> Context {
    let context = Context::new();
    context.write("shared.txt", "shared");
    context.write("Dockerfile", dockerfile);
    context
}

#[test]
fn one_cache_reference_serves_every_branch_and_prunes_by_size() {
    let registry = Registry::start(Setup::Anonymous);
    let cache = registry.name("ci/app:cache");
    let to = format!("type=registry,ref={cache}");
    let main = context_with(MAIN);
    let branch = context_with(BRANCH);
    let first = Kiln::with_busybox();
    build_logged(&first, main.path(), &["--cache-to", &to]);
    // Stamps are in seconds: the branch's export comes later.
    std::thread::sleep(std::time::Duration::from_millis(1100));

    // A branch agent reuses main's layers and adds its own to the same
    // reference.
    let branch_agent = second_machine(&first);
    let (steps, _) = build_logged(
        &branch_agent,
        branch.path(),
        &["--cache-from", &cache, "--cache-to", &to],
    );
    assert_eq!(
        steps.iter().filter(|(_, cached)| *cached).count(),
        2,
        "the COPY and the first RUN come from main's cache: {steps:?}"
    );
    assert_eq!(runs(&steps), 1);

    // Main's records are still there for main, the branch's for the branch.
    for context in [&main, &branch] {
        let agent = second_machine(&first);
        let (steps, _) = build_logged(&agent, context.path(), &["--cache-from", &cache]);
        assert_eq!(runs(&steps), 0, "{steps:?}");
    }

    // Pruned to 400 kB, the reference drops what was exported longest
    // ago first: main's own 300 kB layer.
    let pruned = first.ok(&["prune", "--cache-ref", &cache, "--keep-storage", "400kB"]);
    assert!(pruned.starts_with("removed 1 of the 4 entries"), "{pruned}");
    let agent = second_machine(&first);
    let (steps, _) = build_logged(&agent, main.path(), &["--cache-from", &cache]);
    assert_eq!(runs(&steps), 1, "{steps:?}");
    let agent = second_machine(&first);
    let (steps, _) = build_logged(&agent, branch.path(), &["--cache-from", &cache]);
    assert_eq!(runs(&steps), 0, "{steps:?}");
    let refused = first.fails(&["prune", "--cache-ref", &cache]);
    assert!(
        refused.contains("needs --filter until=DURATION"),
        "{refused}"
    );
}

#[test]
fn several_caches_are_tried_in_the_order_given() {
    let registry = Registry::start(Setup::Anonymous);
    // The same step makes other bytes each time it runs.
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\nRUN head -c 16 /dev/urandom > /stamp\n",
    );
    let one = registry.name("ci/app:one");
    let two = registry.name("ci/app:two");
    let first = Kiln::with_busybox();
    let second = second_machine(&first);
    build_logged(
        &first,
        context.path(),
        &[
            "-t",
            "app",
            "--cache-to",
            &format!("type=registry,ref={one}"),
        ],
    );
    build_logged(
        &second,
        context.path(),
        &[
            "-t",
            "app",
            "--cache-to",
            &format!("type=registry,ref={two}"),
        ],
    );
    let digest = |kiln: &Kiln| kiln.inspect("app")["Digest"].clone();
    assert_ne!(digest(&first), digest(&second));
    for (order, made_by) in [([&one, &two], &first), ([&two, &one], &second)] {
        let agent = second_machine(&first);
        let (steps, _) = build_logged(
            &agent,
            context.path(),
            &[
                "-t",
                "app",
                "--cache-from",
                order[0],
                "--cache-from",
                order[1],
            ],
        );
        assert_eq!(runs(&steps), 0);
        assert_eq!(digest(&agent), digest(made_by), "{order:?}");
    }
}

const TWO_STEPS: &str = "FROM busybox\n\
    COPY input.txt /input.txt\n\
    RUN cp /input.txt /copy\n";

/// A first agent that built [`TWO_STEPS`] as `app` and exported its cache
/// to `ci/app:cache` in `registry`; the context.
fn exported_two_steps(registry: &Registry) -> (Kiln, Context) {
    let context = Context::new();
    context.write("input.txt", "input");
    context.write("Dockerfile", TWO_STEPS);
    let first = Kiln::with_busybox();
    let to = format!("type=registry,ref={}", registry.name("ci/app:cache"));
    build_logged(&first, context.path(), &["-t", "app", "--cache-to", &to]);
    (first, context)
}

#[test]
fn a_cached_layer_gone_from_the_registry_is_a_miss_with_one_warning() {
    let registry = Registry::start(Setup::Anonymous);
    let cache = registry.name("ci/app:cache");
    let (first, context) = exported_two_steps(&registry);
    // The RUN step's layer, the last of the cache's, is deleted.
    let (manifest, _) = cache_in(&registry, "ci/app", "cache");
    let layers = manifest["layers"].as_array().expect("layers");
    let gone = layers.last().expect("a layer")["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    fs::remove_dir_all(blob_path(&registry, &gone).parent().expect("blob dir")).expect("deleted");

    let second = second_machine(&first);
    let (steps, stderr) = build_logged(
        &second,
        context.path(),
        &["-t", "app", "--cache-from", &cache],
    );
    assert_eq!(ran(&steps), ["RUN cp /input.txt /copy"], "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains(&gone)).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("cannot be used"), "{stderr}");
    assert_eq!(
        first.inspect("app")["Digest"],
        second.inspect("app")["Digest"],
        "the step ran again and made the same layer"
    );
    second.assert_consistent();
}

#[test]
fn corrupt_layers_and_broken_caches_are_misses_and_the_build_goes_on() {
    let registry = Registry::start(Setup::Anonymous);
    let (first, context) = exported_two_steps(&registry);

    // Every blob download arrives with a byte changed.
    let corrupting = Proxy::start(
        &registry.address,
        Faults {
            corrupt_downloads: true,
            ..Faults::default()
        },
    );
    let second = second_machine(&first);
    let through = format!("{}/ci/app:cache", corrupting.address);
    let (steps, stderr) = build_logged(&second, context.path(), &["--cache-from", &through]);
    assert!(corrupting.injected(Fault::DownloadCorrupted) > 0);
    assert_eq!(runs(&steps), 1, "{stderr}");
    assert!(stderr.contains("cannot be used"), "{stderr}");
    second.assert_consistent();

    // A cache directory whose list of records is damaged, and a registry
    // that answers nothing but errors: each a warning, every step runs.
    // Kept in the project, as users type it: `dest=cache`.
    build_logged(
        &first,
        context.path(),
        &["--cache-to", "type=local,dest=cache"],
    );
    let local = context.path().join("cache");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(local.join("index.json")).expect("index")).expect("JSON");
    let manifest_digest = index["manifests"][0]["digest"].as_str().expect("digest");
    let manifest_file = local
        .join("blobs/sha256")
        .join(manifest_digest.trim_start_matches("sha256:"));
    fs::write(&manifest_file, b"{ not a manifest").expect("damaged");
    let failing = Proxy::start(
        &registry.address,
        Faults {
            unavailable_every: Some(1),
            ..Faults::default()
        },
    );
    let third = second_machine(&first);
    let (steps, stderr) = build_logged(
        &third,
        context.path(),
        &[
            "--cache-from",
            "type=local,src=cache",
            "--cache-from",
            &format!("{}/ci/app:cache", failing.address),
        ],
    );
    assert!(failing.injected(Fault::Unavailable) > 0);
    assert_eq!(runs(&steps), 1, "{stderr}");
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("cannot be used"))
        .count();
    assert_eq!(warnings, 2, "{stderr}");
}

#[test]
fn an_export_with_nothing_new_moves_no_blob() {
    let registry = Registry::start(Setup::Anonymous);
    let proxy = Proxy::start(&registry.address, Faults::default());
    let cache = format!("{}/ci/app:cache", proxy.address);
    let to = format!("type=registry,ref={cache}");
    let context = Context::new();
    context.write("input.txt", "input");
    context.write("Dockerfile", TWO_STEPS);
    let agent = Kiln::with_busybox();
    let args = ["--cache-from", cache.as_str(), "--cache-to", to.as_str()];
    build_logged(&agent, context.path(), &args);

    let before = proxy.seen().len();
    let fresh = second_machine(&agent);
    let (steps, stderr) = build_logged(&fresh, context.path(), &args);
    assert_eq!(runs(&steps), 0);
    assert!(stderr.contains("is up to date"), "{stderr}");
    let writes: Vec<_> = proxy.seen()[before..]
        .iter()
        .filter(|seen| !matches!(seen.method.as_str(), "GET" | "HEAD"))
        .map(|seen| format!("{} {}", seen.method, seen.path))
        .collect();
    assert!(writes.is_empty(), "{writes:?}");

    // One step changed: its layer and the new list go up, nothing else.
    context.write("input.txt", "changed");
    let before = proxy.seen().len();
    let (steps, _) = build_logged(&fresh, context.path(), &args);
    assert_eq!(runs(&steps), 1);
    let uploads = proxy.seen()[before..]
        .iter()
        .filter(|seen| seen.method == "POST" && seen.path.ends_with("/blobs/uploads/"))
        .count();
    assert_eq!(
        uploads, 3,
        "the COPY's layer, the RUN's and the cache's list"
    );
}
