//! One test per reported bug, named after what broke, each run the way the
//! user who found it ran kiln: from inside the context directory, with `.`
//! (or another relative path) as the context.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::support::{Context, Kiln};

/// Builds `context_arg` from `cwd`, exporting the result to `out_arg`
/// (both relative to `cwd`).
fn build_from(kiln: &Kiln, cwd: &Path, extra: &[&str], context_arg: &str, out_arg: &str) {
    let output = format!("type=local,dest={out_arg}");
    let mut args = extra.to_vec();
    args.extend(["-o", output.as_str()]);
    kiln.build_from(cwd, context_arg, &args);
}

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Issue 10: `kiln build .` of a Dockerfile that bind-mounts part of the
/// context failed (runc was handed the relative context path from the
/// bundle directory). Files and directories of the context, and single files
/// of a stage and of an image, read-only and rw, onto paths whose parents
/// the image lacks; none of the mount points stay in the layer.
#[test]
fn bind_mounts_work_with_a_relative_context() {
    let kiln = Kiln::with_busybox();
    let work = Context::new();
    work.write("app/go.mod", "module example.com/app\n");
    work.write("app/deps/one.txt", "one\n");
    work.write(
        "app/Dockerfile",
        "FROM busybox AS files\n\
         RUN mkdir -p /data && echo from-stage > /data/file.txt\n\
         FROM busybox\n\
         WORKDIR /src\n\
         RUN --mount=type=bind,source=go.mod,target=go.mod cat go.mod > /ctx-file\n\
         RUN --mount=type=bind,source=deps,target=/src/deps ls deps > /ctx-dir\n\
         RUN --mount=type=bind,from=files,source=/data/file.txt,target=/new/parent/file.txt \
             cat /new/parent/file.txt > /stage-file\n\
         RUN --mount=type=bind,from=files,source=/data/file.txt,target=/new2/file.txt,rw \
             echo changed > /new2/file.txt && cat /new2/file.txt > /stage-file-rw\n\
         RUN --mount=type=bind,from=busybox,source=/etc/group,target=/img/group \
             head -n 1 /img/group > /image-file\n",
    );
    let app = work.path().join("app");
    for (cwd, context_arg, out_arg) in [
        (app.clone(), ".", "../out-dot"),
        (work.path().join("app/deps"), "..", "../../out-parent"),
    ] {
        build_from(&kiln, &cwd, &[], context_arg, out_arg);
        let out = cwd.join(out_arg);
        assert_eq!(read(&out, "/ctx-file"), "module example.com/app\n");
        assert_eq!(read(&out, "/ctx-dir"), "one.txt\n");
        assert_eq!(read(&out, "/stage-file"), "from-stage\n");
        assert_eq!(read(&out, "/stage-file-rw"), "changed\n");
        assert_eq!(read(&out, "/image-file"), "root:x:0:\n");
        for mount_point in ["/src/go.mod", "/src/deps", "/new", "/new2", "/img"] {
            assert!(
                fs::symlink_metadata(out.join(mount_point.trim_start_matches('/'))).is_err(),
                "{mount_point} stayed in the image"
            );
        }
        assert!(out.join("src").is_dir(), "WORKDIR /src is kept");
    }
}

/// Issue 10: a stage built FROM an earlier one saw the build arg that the
/// earlier stage declared after a same-named ENV, instead of the ENV value
/// its image carries.
#[test]
fn env_of_an_earlier_stage_wins_over_its_later_arg() {
    let kiln = Kiln::with_busybox();
    let work = Context::new();
    work.write(
        "ctx/Dockerfile",
        "FROM busybox AS base\n\
         ENV MODE=from-env\n\
         ARG MODE\n\
         RUN echo $MODE > /in-base\n\
         FROM base\n\
         RUN echo $MODE > /in-child\n",
    );
    let ctx = work.path().join("ctx");
    let arg = ["--build-arg", "MODE=from-arg"];
    build_from(
        &kiln,
        &ctx,
        &[&arg[..], &["--target", "base"]].concat(),
        ".",
        "../base",
    );
    assert_eq!(read(&work.path().join("base"), "/in-base"), "from-arg\n");
    build_from(&kiln, &ctx, &arg, ".", "../child");
    assert_eq!(read(&work.path().join("child"), "/in-child"), "from-env\n");
}

/// Issue 10: `COPY dir/ /new/` made /new with the mode and owner of the
/// context's (or the stage's) `dir`; BuildKit makes it 0755, root's or
/// `--chown`'s, and only the contents keep theirs.
#[test]
fn a_new_copy_destination_is_a_plain_directory() {
    let kiln = Kiln::with_busybox();
    let context = Context::new();
    context.write("dir/file", "x\n");
    context.write("dir/sub/inner", "y\n");
    fs::set_permissions(
        context.path().join("dir"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    fs::set_permissions(
        context.path().join("dir/sub"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .expect("chmod");
    context.write(
        "Dockerfile",
        "FROM busybox AS stage\n\
         RUN mkdir -m 0711 /src && echo z > /src/file && chown -R 1000:1000 /src\n\
         FROM busybox\n\
         COPY dir/ /from-context/\n\
         COPY --chown=1000:50 dir /owned/deeper/\n\
         COPY --from=stage /src /from-stage\n",
    );
    let out = kiln.files(context.path(), &[]);
    let meta = |path: &str| {
        fs::symlink_metadata(out.path().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let mode = |path: &str| meta(path).mode() & 0o7777;
    let owner = |path: &str| (meta(path).uid(), meta(path).gid());
    assert_eq!(
        (mode("from-context"), owner("from-context")),
        (0o755, (0, 0))
    );
    assert_eq!(
        mode("from-context/sub"),
        0o750,
        "the contents keep their modes"
    );
    assert_eq!((mode("owned"), owner("owned")), (0o755, (1000, 50)));
    assert_eq!(
        (mode("owned/deeper"), owner("owned/deeper")),
        (0o755, (1000, 50))
    );
    assert_eq!((mode("from-stage"), owner("from-stage")), (0o755, (0, 0)));
    assert_eq!(owner("from-stage/file"), (1000, 1000));
}

/// Issue 10: `COPY a b /dst/` with a and b hard links of one file linked
/// them in the image; BuildKit copies each source on its own. Links inside
/// one copied directory stay links.
#[test]
fn separate_sources_are_not_hard_linked() {
    let kiln = Kiln::with_busybox();
    let context = Context::new();
    context.write("a", "same\n");
    fs::hard_link(context.path().join("a"), context.path().join("b")).expect("link");
    context.write("dir/x", "inner\n");
    fs::hard_link(context.path().join("dir/x"), context.path().join("dir/y")).expect("link");
    context.write(
        "Dockerfile",
        "FROM scratch\nCOPY a b /dst/\nCOPY dir /dir/\n",
    );
    let out = kiln.files(context.path(), &[]);
    let inode = |path: &str| fs::metadata(out.path().join(path)).expect(path).ino();
    assert_ne!(inode("dst/a"), inode("dst/b"));
    assert_eq!(read(out.path(), "dst/b"), "same\n");
    assert_eq!(inode("dir/x"), inode("dir/y"));
}

/// Found by the conformance suite (BuildKit's testCopyIgnoredFiles): with a
/// .dockerignore that leaves out everything at the top (`*`, `.*`, `**`)
/// but some exceptions, `COPY . .` failed with "not found in the build
/// context": the context's root itself counted as ignored.
#[test]
fn copy_of_the_context_root_when_the_ignore_file_leaves_out_everything_at_the_top() {
    crate::support::require_root();
    let kiln = Kiln::new();
    let context = Context::new();
    context.write("a", "a\n");
    context.write("b", "b\n");
    context.write(".hidden", "hidden\n");
    context.write("Dockerfile", "FROM scratch\nCOPY . /out/\n");
    let listing = |ignore: &str| {
        context.write(".dockerignore", ignore);
        let out = kiln.files(context.path(), &[]);
        let mut names: Vec<String> = fs::read_dir(out.path().join("out"))
            .expect("the destination is made")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    };
    assert_eq!(listing("*\n!a\n"), ["a"]);
    assert_eq!(listing("**\n!b\n"), ["b"]);
    assert_eq!(listing(".*\n"), ["Dockerfile", "a", "b"]);
    assert!(listing("*\n").is_empty());
}
