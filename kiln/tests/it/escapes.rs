//! The sandbox against the escapes that hit runc and BuildKit, one test
//! each, named after its CVE: descriptors that leak into the container
//! (and a working directory through one of them), masked paths turned
//! into writable procfs files, cache mount subpaths swapped for symlinks
//! by a parallel stage, mount stubs whose cleanup follows a symlink out of
//! the root, and insecure steps run without the entitlement. Each plants
//! a host file or directory the step must never reach.

use std::fs;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use crate::support::{Context, Kiln};

fn kiln() -> Kiln {
    Kiln::with_busybox()
}

/// The descriptors `ls -l /proc/self/fd` lists in `listing`, with their
/// targets, leaving out ls's own reading of the directory.
fn descriptors(listing: &str) -> Vec<(u32, String)> {
    listing
        .lines()
        .filter_map(|line| {
            let (left, target) = line.split_once(" -> ")?;
            let fd: u32 = left.split_whitespace().last()?.parse().ok()?;
            Some((fd, target.to_string()))
        })
        .filter(|(fd, target)| {
            !(*fd > 2 && target.starts_with("/proc/") && target.ends_with("/fd"))
        })
        .collect()
}

/// A host file that kiln's own process holds open without close-on-exec,
/// as a careless parent leaves one: its number.
fn inherited_descriptor(path: &Path) -> std::os::fd::OwnedFd {
    rustix::fs::open(path, OFlags::RDONLY, Mode::empty()).expect("open a host file")
}

#[test]
fn cve_2024_21626_no_descriptor_of_kiln_reaches_a_step_or_a_kiln_run_process() {
    let kiln = kiln();
    let host = tempfile::NamedTempFile::new().expect("host file");
    let leaked = inherited_descriptor(host.path());
    let leaked_fd = std::os::fd::AsRawFd::as_raw_fd(&leaked);
    assert!(leaked_fd > 2);

    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\nRUN ls -l /proc/self/fd > /fds\n",
    );
    let files = kiln.files(context.path(), &[]);
    let in_step = descriptors(&fs::read_to_string(files.path().join("fds")).expect("fds"));
    assert_eq!(
        in_step.iter().map(|(fd, _)| *fd).collect::<Vec<_>>(),
        [0, 1, 2],
        "a step sees more than its standard streams: {in_step:?}"
    );

    let listing = kiln.ok(&["run", "busybox", "ls", "-l", "/proc/self/fd"]);
    let in_run = descriptors(&listing);
    assert_eq!(
        in_run.iter().map(|(fd, _)| *fd).collect::<Vec<_>>(),
        [0, 1, 2],
        "kiln run passes more than the standard streams: {in_run:?}"
    );

    // A working directory through a descriptor the runtime might still
    // hold (runc's "Leaky Vessels"): the step fails, or runs in a
    // directory of its own, never on the host.
    fs::write(kiln.root.path().join("host-marker"), "host").expect("marker");
    let marker_dir = kiln.root.path().display().to_string();
    for fd in 3..=9 {
        let context = Context::new();
        context.write(
            "Dockerfile",
            &format!("FROM busybox\nWORKDIR /proc/self/fd/{fd}\nRUN pwd -P; ls -la . .. 2>&1\n"),
        );
        let output = kiln.try_build(context.path(), &["--progress", "plain", "--no-cache"]);
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            !said.contains("host-marker") && !said.contains(&marker_dir),
            "WORKDIR /proc/self/fd/{fd} reached the host:\n{said}"
        );
        let run = kiln.run(&[
            "run",
            "-w",
            &format!("/proc/self/fd/{fd}"),
            "busybox",
            "ls",
            "-la",
            ".",
            "..",
        ]);
        let listed = String::from_utf8_lossy(&run.stdout);
        assert!(
            !listed.contains("host-marker"),
            "kiln run -w /proc/self/fd/{fd} reached the host:\n{listed}"
        );
    }
    drop(leaked);
}

#[test]
fn cve_2025_31133_masked_paths_stay_masked_when_the_image_swaps_dev_null() {
    let kiln = kiln();
    let context = Context::new();
    fs::create_dir_all(context.path().join("dev")).expect("dev");
    std::os::unix::fs::symlink(
        "/proc/sys/kernel/core_pattern",
        context.path().join("dev/null"),
    )
    .expect("symlink");
    std::os::unix::fs::symlink("/proc/sysrq-trigger", context.path().join("dev/full"))
        .expect("symlink");
    let host_core_pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").expect("read");
    context.write(
        "Dockerfile",
        "FROM busybox AS swapped\nCOPY dev/ /dev/\n\
         FROM swapped\n\
         RUN (test -c /dev/null && echo char || echo other) > /null-kind \
         && (echo '|/tmp/pwned' > /proc/sys/kernel/core_pattern && echo written || echo refused) > /core \
         && (echo x > /proc/sysrq-trigger && echo written || echo refused) > /sysrq \
         && (wc -c < /proc/kcore 2>/dev/null || echo unreadable) > /kcore \
         && ((ls -A /proc/acpi; ls -A /sys/firmware; cat /proc/timer_list) 2>/dev/null | wc -l) > /hidden\n",
    );
    let files = kiln.files(context.path(), &[]);
    let read = |name: &str| fs::read_to_string(files.path().join(name)).expect(name);
    assert_eq!(read("null-kind"), "char\n", "/dev/null is the runtime's");
    assert_eq!(read("core"), "refused\n");
    assert_eq!(read("sysrq"), "refused\n");
    let kcore = read("kcore");
    assert!(kcore == "0\n" || kcore == "unreadable\n", "{kcore}");
    assert_eq!(read("hidden"), "0\n");
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/core_pattern").expect("read"),
        host_core_pattern
    );

    // The same image under kiln run.
    kiln.build(context.path(), &["-t", "swapped", "--target", "swapped"]);
    let run = kiln.run(&[
        "run",
        "swapped",
        "sh",
        "-c",
        "test -c /dev/null && echo x > /proc/sys/kernel/core_pattern",
    ]);
    assert!(!run.status.success(), "kiln run wrote core_pattern");
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/core_pattern").expect("read"),
        host_core_pattern
    );
}

#[test]
fn cve_2024_23651_a_cache_mount_subpath_never_leads_to_the_host() {
    let kiln = kiln();
    let host = tempfile::tempdir().expect("host dir");
    fs::write(host.path().join("host-marker"), "host").expect("marker");
    let host_dir = host.path().display().to_string();

    // A subpath that is a symlink out of the cache: the step fails.
    let plant = Context::new();
    plant.write(
        "Dockerfile",
        &format!(
            "FROM busybox\nRUN --mount=type=cache,id=shared,target=/c ln -sfn {host_dir} /c/sub\n"
        ),
    );
    kiln.build(plant.path(), &[]);
    let follow = Context::new();
    follow.write(
        "Dockerfile",
        "FROM busybox\nRUN --mount=type=cache,id=shared,source=sub,target=/m ls -la /m\n",
    );
    let output = kiln.try_build(follow.path(), &["--progress", "plain"]);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the symlinked subpath was mounted:\n{said}"
    );
    assert!(!said.contains("host-marker"), "{said}");
    assert!(said.contains("is not a directory inside"), "{said}");

    // Two stages at once, one swapping the subpath between a directory and
    // that symlink while the other mounts it again and again: whatever the
    // timing, the host directory never shows.
    let race = Context::new();
    let mounts: String = (0..6)
        .map(|n| {
            format!(
                "RUN --mount=type=cache,id=raced,source=sub,target=/m \
                 (ls -la /m; echo {n}) > /listing-{n} || true\n"
            )
        })
        .collect();
    race.write(
        "Dockerfile",
        &format!(
            "FROM busybox AS swapper\n\
             RUN --mount=type=cache,id=raced,target=/c sh -c 'mkdir -p /c/sub; touch /c/ready; \
             end=$(($(date +%s) + 4)); while [ $(date +%s) -lt $end ]; do \
             rm -rf /c/sub; ln -sfn {host_dir} /c/sub; rm -f /c/sub; mkdir /c/sub; done; \
             rm -f /c/ready' > /swapped\n\
             FROM busybox AS mounter\n\
             RUN --mount=type=cache,id=raced,target=/c sh -c 'for i in $(seq 1 100); do \
             test -e /c/ready && break; sleep 0.1; done'\n\
             {mounts}\
             FROM busybox\n\
             COPY --from=swapper /swapped /\n\
             COPY --from=mounter /listing-* /\n"
        ),
    );
    let output = kiln.try_build(race.path(), &["--progress", "plain", "--jobs", "2"]);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!said.contains("host-marker"), "the host showed:\n{said}");
    if output.status.success() {
        let files = kiln.files(race.path(), &["--jobs", "2"]);
        for n in 0..6 {
            let listing =
                fs::read_to_string(files.path().join(format!("listing-{n}"))).unwrap_or_default();
            assert!(!listing.contains("host-marker"), "{listing}");
        }
    } else {
        // Refused: the subpath was a symlink out when resolved, or was
        // gone by the time the runtime mounted what was resolved.
        assert!(
            said.contains("error: ./Dockerfile:")
                && said.contains("RUN --mount=type=cache,id=raced,source=sub"),
            "a mount of the subpath is what failed:\n{said}"
        );
    }
}

#[test]
fn cve_2024_23652_mount_stub_cleanup_never_follows_a_symlink_out() {
    let kiln = kiln();
    let victim = tempfile::tempdir().expect("victim");
    fs::create_dir_all(victim.path().join("b/c")).expect("victim tree");
    fs::write(victim.path().join("b/c/precious"), "keep").expect("precious");
    let context = Context::new();
    context.write(
        "Dockerfile",
        &format!(
            "FROM busybox\n\
             RUN --mount=type=tmpfs,target=/a/b/c mv /a /a-moved && ln -s {} /a\n",
            victim.path().display()
        ),
    );
    kiln.build(context.path(), &[]);
    assert_eq!(
        fs::read_to_string(victim.path().join("b/c/precious")).expect("the victim's file"),
        "keep"
    );
    assert!(victim.path().join("b/c").is_dir());
    kiln.assert_consistent();
}

#[test]
fn cve_2024_23653_an_insecure_step_needs_the_entitlement() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\nRUN --security=insecure grep CapEff /proc/self/status > /caps\n",
    );
    let refused = kiln.try_build(context.path(), &[]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("--security=insecure must be allowed with --allow security.insecure"),
        "{said}"
    );
    assert!(!said.contains("#2"), "a step ran: {said}");
    let files = kiln.files(context.path(), &["--allow", "security.insecure"]);
    let caps = fs::read_to_string(files.path().join("caps")).expect("caps");
    assert!(
        !caps.contains("00000000a80425fb"),
        "the allowed step has more than Docker's defaults: {caps}"
    );
}
