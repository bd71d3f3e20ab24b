//! RUN steps in the sandbox: exit codes, isolation, users, the layer a step
//! makes, every kind of RUN mount, and cleanup after an interrupt or a
//! SIGKILL of kiln.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Context, Kiln};

/// A store with busybox, and runc at hand.
fn kiln() -> Kiln {
    Kiln::with_busybox()
}

fn sha256_hex(bytes: &[u8]) -> String {
    kiln_cache::Digest::of(bytes).hex()
}

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The entries of an image's last layer (built uncompressed): path, and
/// for whiteouts their own name.
fn last_layer_entries(kiln: &Kiln, image: &str) -> Vec<String> {
    let manifest = &kiln.inspect(image)["Manifest"];
    let layers = manifest["layers"].as_array().expect("layers");
    let digest = layers.last().expect("a layer")["digest"]
        .as_str()
        .expect("digest");
    let blob = kiln
        .root
        .path()
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let mut archive = tar::Archive::new(fs::File::open(blob).expect("layer blob"));
    let mut entries: Vec<String> = archive
        .entries()
        .expect("tar")
        .map(|entry| {
            let entry = entry.expect("entry");
            entry.path().expect("path").display().to_string()
        })
        .collect();
    entries.sort();
    entries
}

#[test]
fn a_failing_step_reports_its_exit_code_command_and_output() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\nRUN echo preparing && echo about to fail >&2 && exit 3\n",
    );
    let error = kiln.fails(&["build", context.path().to_str().expect("utf-8")]);
    assert!(error.contains("Dockerfile:2"), "{error}");
    assert!(error.contains("exit code 3"), "{error}");
    assert!(
        error.contains("/bin/sh -c echo preparing && echo about to fail >&2 && exit 3"),
        "{error}"
    );
    assert!(error.contains("about to fail"), "{error}");
    // BuildKit's summary of the failed step, which CI users look for.
    assert!(
        error.contains("------\n > [stage-0 2/2] RUN echo preparing"),
        "{error}"
    );

    // A child shell: the step's first process ignores signals it has no
    // handler for, as the first process of every pid namespace does.
    context.write(
        "Dockerfile",
        "FROM busybox\nRUN sh -c 'kill -9 $$'; exit $?\n",
    );
    let error = kiln.fails(&["build", context.path().to_str().expect("utf-8")]);
    assert!(error.contains("killed by signal 9"), "{error}");

    let output = kiln.run(&[
        "--runtime",
        "/nonexistent/runc",
        "build",
        context.path().to_str().expect("utf-8"),
    ]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(error.contains("apt-get install runc"), "{error}");
}

#[test]
fn a_step_sees_its_own_processes_and_files_only() {
    let kiln = kiln();
    let marker = tempfile::NamedTempFile::new().expect("host file");
    let context = Context::new();
    context.write(
        "Dockerfile",
        &format!(
            "FROM busybox\n\
             RUN echo $$ > /pid && ls /proc | grep -E '^[0-9]+$' | sort -n > /pids \
             && for p in /proc/[0-9]*; do cat $p/comm 2>/dev/null; done | sort -u > /programs \
             && (test -e {host} && echo visible || echo hidden) > /host-file \
             && hostname > /hostname && echo \"$PATH\" > /path \
             && cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs)' > /status \
             && mknod /tmp/disk b 8 0 && (head -c 1 /tmp/disk 2>&1 || true) > /disk \
             && rm /tmp/disk && (unshare -U true 2>&1 || true) > /unshare\n",
            host = marker.path().display()
        ),
    );
    let files = kiln.files(context.path(), &[]);
    let root = files.path();
    assert_eq!(read(root, "/pid"), "1\n", "the step is PID 1");
    let pids: Vec<u32> = read(root, "/pids")
        .lines()
        .map(|l| l.parse().expect("pid"))
        .collect();
    // The step sees its own processes (from PID 1), and only those.
    assert!(
        pids.contains(&1),
        "/proc shows not the step's processes: {pids:?}"
    );
    // Which PIDs its processes get depends on what the runtime forked
    // first; what they run does not.
    assert!(pids.len() <= 4, "host processes are visible: {pids:?}");
    let programs = read(root, "/programs");
    assert!(
        programs.lines().any(|program| program == "sh"),
        "the step's shell is among them: {programs}"
    );
    assert!(
        programs
            .lines()
            .all(|program| ["sh", "cat", "sort"].contains(&program)),
        "host processes are visible: {programs}"
    );
    assert_eq!(read(root, "/host-file"), "hidden\n");
    assert_eq!(read(root, "/hostname"), "buildkitsandbox\n");
    assert_eq!(
        read(root, "/path"),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    let status = read(root, "/status");
    // Docker's 14 default capabilities, and no way to gain more.
    assert!(status.contains("CapEff:\t00000000a80425fb"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let unshare = read(root, "/unshare");
    assert!(
        unshare.contains("Operation not permitted"),
        "a step made a user namespace: {unshare}"
    );
    let disk = read(root, "/disk");
    assert!(
        disk.contains("Operation not permitted"),
        "a device node the step made opens: {disk}"
    );
    for stub in ["proc", "sys", "dev", "etc/hosts", "etc/resolv.conf"] {
        assert!(
            !root.join(stub).exists()
                || fs::symlink_metadata(root.join(stub))
                    .expect("stat")
                    .is_dir()
                    && fs::read_dir(root.join(stub)).expect("dir").next().is_none(),
            "{stub} was left in the image"
        );
    }
}

/// The `THP_enabled` line of a process's status (none on kernels that do
/// not show it).
fn huge_pages_line(status: &str) -> String {
    status
        .lines()
        .find(|line| line.starts_with("THP_enabled"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_step_keeps_the_hosts_transparent_huge_pages_that_kiln_turns_off_for_itself() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\nRUN cat /proc/self/status > /status\n",
    );
    let files = kiln.files(context.path(), &[]);
    let ours = fs::read_to_string("/proc/self/status").expect("status");
    assert_eq!(
        huge_pages_line(&read(files.path(), "/status")),
        huge_pages_line(&ours)
    );
}

#[test]
fn network_none_has_only_loopback_and_the_default_is_the_hosts() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN --network=none cat /proc/net/dev > /isolated\n\
         RUN cat /proc/net/dev > /host\n",
    );
    let files = kiln.files(context.path(), &[]);
    let interfaces = |text: &str| -> Vec<String> {
        let mut names: Vec<String> = text
            .lines()
            .skip(2)
            .filter_map(|line| line.split(':').next())
            .map(|name| name.trim().to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(interfaces(&read(files.path(), "/isolated")), vec!["lo"]);
    let host = fs::read_to_string("/proc/net/dev").expect("host interfaces");
    assert_eq!(
        interfaces(&read(files.path(), "/host")),
        interfaces(&host),
        "the default network is the host's"
    );
}

#[test]
fn build_wide_network_hosts_and_limits_reach_every_step() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN cat /proc/net/dev > /default\n\
         RUN --network=host cat /proc/net/dev > /host\n\
         RUN grep -w db /etc/hosts > /hosts && ulimit -u > /nproc\n",
    );
    let files = kiln.files(
        context.path(),
        &[
            "--network",
            "none",
            "--add-host",
            "db:10.1.2.3",
            "--ulimit",
            "nproc=321",
        ],
    );
    let lines = |name: &str| read(files.path(), name).lines().count();
    assert_eq!(lines("/default"), 3, "--network none: a loopback only");
    assert!(
        lines("/host") > 3,
        "RUN --network=host still has the host's"
    );
    assert_eq!(read(files.path(), "/hosts"), "10.1.2.3\tdb\n");
    assert_eq!(read(files.path(), "/nproc"), "321\n");
}

#[test]
fn the_sandbox_host_name_build_arg_names_the_steps_host_and_is_part_of_their_key() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox
RUN hostname > /name && grep -c \"$(hostname)\" /etc/hosts > /in-hosts\n",
    );
    let named = |name: &str| {
        let arg = format!("BUILDKIT_SANDBOX_HOSTNAME={name}");
        let files = kiln.files(context.path(), &["--build-arg", &arg]);
        (read(files.path(), "/name"), read(files.path(), "/in-hosts"))
    };
    assert_eq!(
        named("db-1.example"),
        ("db-1.example\n".into(), "1\n".into())
    );
    // Another name is another step, not the cached one.
    assert_eq!(named("web"), ("web\n".into(), "1\n".into()));

    let refused = kiln.try_build(
        context.path(),
        &["--build-arg", "BUILDKIT_SANDBOX_HOSTNAME=not a name"],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("invalid --build-arg BUILDKIT_SANDBOX_HOSTNAME=\"not a name\""),
        "{stderr}"
    );
}

#[test]
fn quiet_builds_print_only_the_image_id() {
    let kiln = kiln();
    let context = Context::new();
    context.write("Dockerfile", "FROM busybox\nRUN echo hello\n");
    let output = kiln.try_build(context.path(), &["-q", "--load", "-t", "quiet:1"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.trim().starts_with("sha256:"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "", "no progress");
    let refused = kiln.try_build(context.path(), &["--load", "-o", "type=tar,dest=x.tar"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--load puts the image in the store"),
        "{stderr}"
    );
}

#[test]
fn steps_run_as_the_user_and_their_files_belong_to_it() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\n\
         USER app\n\
         RUN id > /tmp/id && touch /tmp/by-app && grep CapEff /proc/self/status > /tmp/caps\n\
         USER nobody:staff\n\
         RUN id > /tmp/id-nobody\n\
         USER 4242\n\
         RUN id -u > /tmp/id-number\n\
         USER 5678:5678\n\
         RUN id > /tmp/id-pair\n\
         USER root\n\
         RUN chown 7:8 /tmp/by-app && touch /tmp/by-root\n",
    );
    let files = kiln.files(context.path(), &[]);
    let root = files.path();
    let id = read(root, "/tmp/id");
    // The primary group and the memberships of /etc/group, as BuildKit
    // gives them (the kernel keeps the list sorted).
    assert_eq!(
        id,
        "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)\n"
    );
    let nobody = read(root, "/tmp/id-nobody");
    assert_eq!(nobody, "uid=65534(nobody) gid=50(staff) groups=50(staff)\n");
    assert_eq!(
        read(root, "/tmp/id-pair"),
        "uid=5678 gid=5678 groups=5678\n"
    );
    assert_eq!(read(root, "/tmp/id-number"), "4242\n");
    assert_eq!(
        read(root, "/tmp/caps"),
        "CapEff:\t0000000000000000\n",
        "a user other than root has no capability in effect"
    );
    let owner = |path: &str| {
        let metadata = fs::metadata(root.join(path)).expect(path);
        (metadata.uid(), metadata.gid())
    };
    assert_eq!(owner("tmp/by-app"), (7, 8));
    assert_eq!(owner("tmp/by-root"), (0, 0));
    assert_eq!(owner("tmp/id-nobody"), (65534, 50));

    context.write("Dockerfile", "FROM busybox\nUSER ghost\nRUN true\n");
    let error = kiln.fails(&["build", context.path().to_str().expect("utf-8")]);
    assert!(error.contains("ghost"), "{error}");
}

#[test]
fn deletions_and_replaced_directories_become_whiteouts() {
    let kiln = kiln();
    let context = Context::new();
    context.write("data/a", "a");
    context.write("data/b", "b");
    context.write("dir/old", "old");
    context.write(
        "Dockerfile",
        "FROM busybox\n\
         COPY data /data\n\
         COPY dir /dir\n\
         RUN rm /data/a && rm -r /dir && mkdir /dir && echo new > /dir/new && rm /bin/vi\n",
    );
    kiln.build(
        context.path(),
        &["-t", "whiteouts", "--compression", "uncompressed"],
    );
    assert_eq!(
        last_layer_entries(&kiln, "whiteouts"),
        vec![
            "bin/",
            "bin/.wh.vi",
            "data/",
            "data/.wh.a",
            "dir/",
            "dir/.wh..wh..opq",
            "dir/new",
        ]
    );
    let files = kiln.files(context.path(), &[]);
    assert!(!files.path().join("data/a").exists());
    assert_eq!(read(files.path(), "/data/b"), "b");
    assert!(!files.path().join("dir/old").exists());
    assert_eq!(read(files.path(), "/dir/new"), "new\n");
    assert!(!files.path().join("bin/vi").exists());
    assert!(files.path().join("bin/ls").exists());
}

#[test]
fn a_step_that_changes_nothing_makes_an_empty_layer() {
    let kiln = kiln();
    let context = Context::new();
    context.write("Dockerfile", "FROM busybox\nRUN true\n");
    kiln.build(context.path(), &["-t", "unchanged"]);
    let image = kiln.inspect("unchanged");
    let base = kiln.inspect("busybox");
    let layers = image["Manifest"]["layers"].as_array().expect("layers");
    let base_layers = base["Manifest"]["layers"].as_array().expect("layers");
    // As in BuildKit's images: every RUN has a layer, here the empty tar's.
    assert_eq!(layers.len(), base_layers.len() + 1);
    assert_eq!(
        image["Config"]["rootfs"]["diff_ids"]
            .as_array()
            .expect("diff IDs")
            .last(),
        Some(&serde_json::json!(
            "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
        ))
    );
    let history = image["Config"]["history"].as_array().expect("history");
    let last = history.last().expect("entry");
    assert_eq!(last["created_by"], "RUN /bin/sh -c true # buildkit");
    assert!(last.get("empty_layer").is_none_or(|empty| empty == false));
}

#[test]
fn heredoc_scripts_run_with_their_interpreter() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN <<EOF\n\
         #!/bin/sh\n\
         echo \"script $0\" > /from-script\n\
         EOF\n\
         RUN <<EOF\n\
         echo one > /lines\n\
         echo two >> /lines\n\
         EOF\n",
    );
    let files = kiln.files(context.path(), &[]);
    assert!(read(files.path(), "/from-script").starts_with("script /dev/pipes/"));
    assert_eq!(read(files.path(), "/lines"), "one\ntwo\n");
    assert!(!files.path().join("dev/pipes").exists());
}

#[test]
fn a_cache_mount_persists_across_builds_and_stays_out_of_the_image() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\n\
         ARG ATTEMPT\n\
         RUN --mount=type=cache,target=/var/cache/app echo run >> /var/cache/app/log \
         && cp /var/cache/app/log /seen\n\
         RUN --mount=type=cache,target=/root/.cache,id=shared,uid=1000,mode=0700 \
         stat -c '%u %a' /root/.cache > /cache-owner\n\
         RUN --mount=type=cache,id=twice,target=/a,sharing=locked \
         --mount=type=cache,id=twice,target=/b,sharing=locked \
         touch /a/file && test -e /b/file\n",
    );
    kiln.build(context.path(), &[]);
    // Another build argument: the step runs again, with what the first left.
    let files = kiln.files(context.path(), &["--build-arg", "ATTEMPT=2"]);
    assert_eq!(
        read(files.path(), "/seen"),
        "run\nrun\n",
        "the second build saw the first's"
    );
    // --no-cache starts cache mounts over, as BuildKit does.
    let fresh = kiln.files(context.path(), &["--no-cache", "--build-arg", "ATTEMPT=2"]);
    assert_eq!(read(fresh.path(), "/seen"), "run\n");
    assert_eq!(read(files.path(), "/cache-owner"), "1000 700\n");
    assert!(!files.path().join("var/cache").exists());
    assert!(
        fs::read_dir(files.path().join("root"))
            .expect("root")
            .next()
            .is_none(),
        "no mount point left in /root"
    );
}

#[test]
fn bind_mounts_read_the_context_and_stages_and_discard_writes() {
    let kiln = kiln();
    let context = Context::new();
    context.write("src/hello.txt", "hello");
    context.write("src/private.key", "do not bind");
    context.write(".dockerignore", "src/private.key\n");
    context.write(
        "Dockerfile",
        "FROM busybox AS build\n\
         RUN mkdir /out && echo built > /out/artifact\n\
         FROM busybox\n\
         RUN --mount=type=bind,from=build,source=/out,target=/in cp /in/artifact /artifact\n\
         RUN --mount=type=bind,source=src,target=/src cat /src/hello.txt > /hello \
         && (test -e /src/private.key && echo bound || echo ignored) > /ignored \
         && (touch /src/new 2>/dev/null && echo writable || echo read-only) > /ro\n\
         RUN --mount=type=bind,target=/ctx,rw echo changed > /ctx/src/hello.txt \
         && cat /ctx/src/hello.txt > /rw\n\
         RUN --mount=type=tmpfs,target=/scratch grep ' /scratch tmpfs' /proc/mounts > /tmpfs \
         && echo x > /scratch/file\n",
    );
    let files = kiln.files(context.path(), &[]);
    let root = files.path();
    assert_eq!(read(root, "/artifact"), "built\n");
    assert_eq!(read(root, "/hello"), "hello");
    assert_eq!(read(root, "/ignored"), "ignored\n");
    assert_eq!(read(root, "/ro"), "read-only\n");
    assert_eq!(read(root, "/rw"), "changed\n");
    assert_eq!(
        fs::read_to_string(context.path().join("src/hello.txt")).expect("context"),
        "hello",
        "a writable bind mount writes to a copy"
    );
    assert!(read(root, "/tmpfs").contains("/scratch tmpfs"));
    for stub in ["in", "src", "ctx", "scratch"] {
        assert!(!root.join(stub).exists(), "/{stub} was left in the image");
    }
}

#[test]
fn secrets_reach_the_step_and_nothing_else() {
    let kiln = kiln();
    let secret_value = "s3cr3t-7f1e9c2a";
    let secret_sum = format!("{}  -\n", sha256_hex(secret_value.as_bytes()));
    let work = tempfile::tempdir().expect("dir");
    let secret_file = work.path().join("token");
    fs::write(&secret_file, secret_value).expect("secret");
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=secret,id=token sha256sum < /run/secrets/token > /file-sum \
         && stat -c '%a %u' /run/secrets/token > /secret-mode\n\
         RUN --mount=type=secret,id=token,env=TOKEN,uid=1000 printf %s \"$TOKEN\" | sha256sum > /env-sum \
         && (test -e /run/secrets/token && echo file || echo no file) > /listing\n\
         RUN --mount=type=secret,id=absent echo optional secrets may be missing > /optional\n",
    );
    let secret_arg = format!("id=token,src={}", secret_file.display());
    let output = kiln.run(&[
        "build",
        "-t",
        "with-secret",
        "--secret",
        &secret_arg,
        context.path().to_str().expect("utf-8"),
    ]);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{log}");
    assert!(
        !log.contains(secret_value),
        "the log shows the secret: {log}"
    );
    let files = kiln.files(context.path(), &["--secret", &secret_arg]);
    assert_eq!(read(files.path(), "/file-sum"), secret_sum);
    assert_eq!(read(files.path(), "/env-sum"), secret_sum);
    assert_eq!(read(files.path(), "/secret-mode"), "400 0\n");
    assert_eq!(
        read(files.path(), "/listing"),
        "no file\n",
        "a secret given as a variable is not also a file"
    );
    assert!(files.path().join("optional").exists());
    assert!(!files.path().join("run/secrets").exists());
    // Not in any blob (layers, configuration with its history, manifests),
    // nor anywhere else in the store.
    let mut stack = vec![kiln.root.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let metadata = fs::symlink_metadata(&path).expect("stat");
            if metadata.is_dir() {
                stack.push(path);
            } else if metadata.is_file() {
                let mut bytes = Vec::new();
                fs::File::open(&path)
                    .and_then(|mut f| f.read_to_end(&mut bytes))
                    .expect("read");
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(secret_value),
                    "{} holds the secret",
                    path.display()
                );
            }
        }
    }

    context.write(
        "Dockerfile",
        "FROM busybox\nRUN --mount=type=secret,id=needed,required cat /run/secrets/needed\n",
    );
    let error = kiln.fails(&["build", context.path().to_str().expect("utf-8")]);
    assert!(error.contains("secret \"needed\" is required"), "{error}");
}

#[test]
fn the_ssh_agent_socket_is_forwarded() {
    let kiln = kiln();
    let work = tempfile::tempdir().expect("dir");
    let socket = work.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("socket");
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /agent \
         && stat -c '%u %a' \"$SSH_AUTH_SOCK\" > /default-owner\n\
         USER app\n\
         RUN --mount=type=ssh,uid=1000,mode=0660 stat -c '%u %a' \"$SSH_AUTH_SOCK\" > /tmp/owner\n",
    );
    let ssh = format!("default={}", socket.display());
    let files = kiln.files(context.path(), &["--ssh", &ssh]);
    assert_eq!(read(files.path(), "/agent"), "/run/buildkit/ssh_agent.0\n");
    // A socket of the step's own, owned and permitted as the mount says.
    assert_eq!(read(files.path(), "/default-owner"), "0 600\n");
    assert_eq!(read(files.path(), "/tmp/owner"), "1000 660\n");
    context.write(
        "Dockerfile",
        "FROM busybox\nRUN --mount=type=ssh,required true\n",
    );
    let error = kiln.fails(&["build", context.path().to_str().expect("utf-8")]);
    assert!(error.contains("--ssh default"), "{error}");
}

/// Starts a build whose RUN step prints `step-is-running` and then sleeps for
/// `marker` seconds (a number no other process uses), and returns once the
/// step runs.
fn start_long_step(kiln: &Kiln, context: &Context, marker: u32) -> Child {
    context.write(
        "Dockerfile",
        &format!("FROM busybox\nRUN echo step-is-running && sleep {marker}\n"),
    );
    let mut child = kiln
        .command()
        .args(["build", "--progress", "plain"])
        .arg(context.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln starts");
    let stderr = child.stderr.take().expect("stderr");
    // Read on a thread of its own, which also keeps draining the pipe so
    // that kiln never blocks on it.
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    loop {
        match received.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.ends_with(" step-is-running") => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("kiln did not print the step's output");
            }
        }
    }
    wait_until("the step's start", || {
        processes_with(&format!("sleep {marker}")) > 0
    });
    child
}

/// How many processes run with `needle` in their command line.
fn processes_with(needle: &str) -> usize {
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        })
        .filter_map(|entry| fs::read(entry.path().join("cmdline")).ok())
        .filter(|cmdline| {
            String::from_utf8_lossy(cmdline)
                .replace('\0', " ")
                .contains(needle)
        })
        .count()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a kiln process left behind: runtime state, bundles, control
/// groups, mounts.
fn leftovers(kiln: &Kiln, pid: u32) -> Vec<String> {
    let mut found = Vec::new();
    let state = kiln.root.path().join("runtime").join(pid.to_string());
    if state.exists() {
        found.push(format!("runtime state {}", state.display()));
    }
    for entry in fs::read_dir("/dev/shm").expect("/dev/shm").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("kiln-{pid}-")) {
            found.push(format!("bundle /dev/shm/{name}"));
        }
    }
    // Control groups the runtime made for the step, wherever this
    // machine's hierarchy puts them.
    let mut dirs = vec![(std::path::PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(&format!("kiln-{pid}-")) {
                found.push(format!("cgroup {}", path.display()));
            } else if depth < 4 && entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push((path, depth + 1));
            }
        }
    }
    let root = kiln.root.path().display().to_string();
    for line in fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
    {
        if line.contains(&root) || line.contains(&format!("kiln-{pid}-")) {
            found.push(format!("mount {line}"));
        }
    }
    found
}

#[test]
fn an_interrupted_build_stops_its_step_and_leaves_nothing() {
    let kiln = kiln();
    let context = Context::new();
    let marker = 31337;
    let mut child = start_long_step(&kiln, &context, marker);
    let pid = child.id();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        rustix::process::Signal::INT,
    )
    .expect("SIGINT");
    let status = child.wait().expect("kiln ends");
    assert_eq!(status.code(), Some(130), "Ctrl-C's exit code");
    assert_eq!(processes_with(&format!("sleep {marker}")), 0);
    assert_eq!(leftovers(&kiln, pid), Vec::<String>::new());
    let tmp = kiln.root.path().join("tmp");
    assert_eq!(
        fs::read_dir(&tmp).expect("tmp").count(),
        0,
        "scratch directories were removed"
    );
}

#[test]
fn a_killed_kiln_takes_its_step_along_and_the_next_cleans_up() {
    let kiln = kiln();
    let context = Context::new();
    let marker = 31338;
    let mut child = start_long_step(&kiln, &context, marker);
    let pid = child.id();
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    wait_until("the step's end", || {
        processes_with(&format!("sleep {marker}")) == 0
    });
    context.write("Dockerfile", "FROM busybox\nRUN echo next\n");
    kiln.build(context.path(), &[]);
    assert_eq!(leftovers(&kiln, pid), Vec::<String>::new());
}

#[test]
fn the_gcc_example_compiles_in_one_stage_and_runs_from_another() {
    let kiln = kiln();
    kiln.gcc();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/examples/gcc");
    kiln.build(&example, &["-t", "hello-c"]);
    let image = kiln.inspect("hello-c");
    let base = kiln.inspect("busybox");
    let layers = image["Manifest"]["layers"].as_array().expect("layers");
    assert_eq!(
        layers.len(),
        base["Manifest"]["layers"].as_array().expect("layers").len() + 1,
        "only the binary is added to busybox"
    );
    let output = kiln.run(&["run", "--rm", "hello-c", "first", "second"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hello from a C program built by kiln, running on Linux\n\
         argument 1: first\nargument 2: second\n"
    );
}

#[test]
fn kiln_run_runs_a_command_of_an_image_with_its_settings() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\nENV GREETING=hello\nWORKDIR /work\nUSER app\nCMD [\"sh\", \"-c\", \"echo $GREETING from $(pwd) as $(id -un)\"]\n",
    );
    kiln.build(context.path(), &["-t", "settings"]);
    assert_eq!(kiln.ok(&["run", "settings"]), "hello from /work as app\n");
    assert_eq!(
        kiln.ok(&["run", "-e", "GREETING=hi", "-u", "root", "settings"]),
        "hi from /work as root\n"
    );

    let status = kiln.run(&["run", "busybox", "sh", "-c", "exit 7"]);
    assert_eq!(status.status.code(), Some(7), "the command's exit code");

    let output = kiln.run_with_input(
        &std::env::temp_dir(),
        &["run", "-i", "busybox", "tr", "a-z", "A-Z"],
        b"from stdin\n",
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "FROM STDIN\n");

    let host = tempfile::tempdir().expect("dir");
    fs::write(host.path().join("input"), "shared").expect("write");
    let volume = format!("{}:/data", host.path().display());
    assert_eq!(
        kiln.ok(&[
            "run",
            "-v",
            &volume,
            "busybox",
            "sh",
            "-c",
            "cat /data/input && echo back > /data/output"
        ]),
        "shared"
    );
    assert_eq!(
        fs::read_to_string(host.path().join("output")).expect("written"),
        "back\n"
    );
    let read_only = format!("{}:/data:ro", host.path().display());
    let denied = kiln.run(&["run", "-v", &read_only, "busybox", "touch", "/data/x"]);
    assert_eq!(denied.status.code(), Some(1));

    let missing = kiln.run(&["run", "no-such-image"]);
    assert_eq!(missing.status.code(), Some(125), "kiln's own failure");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-image"));
}

#[test]
fn kiln_run_commit_saves_the_changes_as_an_image() {
    let kiln = kiln();
    kiln.ok(&[
        "run",
        "--commit",
        "changed:1",
        "busybox",
        "sh",
        "-c",
        "echo made > /made && rm /bin/vi",
    ]);
    assert_eq!(kiln.ok(&["run", "changed:1", "cat", "/made"]), "made\n");
    let gone = kiln.run(&["run", "changed:1", "test", "-e", "/bin/vi"]);
    assert_eq!(gone.status.code(), Some(1));
    let image = kiln.inspect("changed:1");
    let history = image["Config"]["history"].as_array().expect("history");
    assert!(history.last().expect("entry")["created_by"]
        .as_str()
        .expect("created_by")
        .starts_with("kiln run busybox sh -c"));
    kiln.assert_consistent();
}

#[test]
fn the_run_examples_build_and_run() {
    let kiln = kiln();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/examples");
    kiln.build(&examples.join("run-steps"), &["-t", "run-steps"]);
    assert_eq!(
        kiln.ok(&["run", "run-steps"]),
        "written by app in /home/app/work\n"
    );
    let owner = kiln.ok(&[
        "run",
        "run-steps",
        "stat",
        "-c",
        "%U:%G %a",
        "/home/app/work",
        "/srv/data",
        "/srv/data/copied",
    ]);
    assert_eq!(owner, "app:app 755\napp:app 750\napp:staff 644\n");

    kiln.build(&examples.join("multistage"), &["-t", "multistage"]);
    let output = kiln.ok(&["run", "multistage"]);
    assert_eq!(output, "app built at stage app\n");
}

#[test]
fn a_store_named_by_a_relative_path_runs_steps() {
    let kiln = kiln();
    let work = tempfile::tempdir().expect("dir");
    let archive = work.path().join("busybox.tar");
    kiln.ok(&["save", "busybox", "-o", archive.to_str().expect("utf-8")]);
    let context = Context::new();
    context.write("Dockerfile", "FROM busybox\nRUN echo relative > /made\n");
    let in_work = |args: &[&str]| {
        let output = kiln
            .command()
            .env_remove("KILN_ROOT")
            .current_dir(work.path())
            .args(["--root", "store"])
            .args(args)
            .output()
            .expect("kiln");
        assert!(
            output.status.success(),
            "kiln {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    in_work(&["load", "-i", "busybox.tar"]);
    in_work(&[
        "build",
        "-o",
        "files",
        context.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(read(&work.path().join("files"), "/made"), "relative\n");
}

#[test]
fn an_interrupted_kiln_run_lets_its_container_stop() {
    let kiln = kiln();
    let mut child = kiln
        .command()
        .args([
            "run",
            "busybox",
            "sh",
            "-c",
            "trap 'echo stopping; exit 3' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kiln run");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("a line").expect("text"), "ready");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).expect("pid"),
        rustix::process::Signal::INT,
    )
    .expect("SIGINT");
    assert_eq!(
        lines.next().expect("a line").expect("text"),
        "stopping",
        "the container got SIGTERM"
    );
    let status = child.wait().expect("kiln ends");
    assert_eq!(status.code(), Some(130));
}
