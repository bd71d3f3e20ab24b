//! What a hostile image or a greedy step can cost: one layer's bound on
//! what it unpacks to, and the reserve of free space on the store's file
//! system, on a store that lives on a small tmpfs.

use std::path::Path;
use std::process::Command;

use crate::support::{require_root, Context, Kiln};

/// A tmpfs of a few megabytes mounted on a temporary directory, unmounted
/// when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> SmallDisk {
        require_root();
        let dir = tempfile::tempdir().expect("mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={megabytes}m"),
                "kiln-test",
            ])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs on {}",
            dir.path().display()
        );
        SmallDisk { dir }
    }

    /// A store on it, with busybox.
    fn kiln(&self) -> Kiln {
        let kiln = Kiln {
            root: tempfile::tempdir_in(self.dir.path()).expect("store directory"),
        };
        kiln.busybox();
        kiln
    }

    fn free(&self) -> u64 {
        let stats = rustix::fs::statvfs(self.dir.path()).expect("statvfs");
        stats.f_bavail * stats.f_frsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Runs kiln from inside `project`, as users type paths relative to it.
fn in_project(kiln: &Kiln, project: &Path, args: &[&str]) {
    let output = kiln
        .command()
        .current_dir(project)
        .args(args)
        .output()
        .expect("kiln runs");
    assert!(
        output.status.success(),
        "kiln {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn build_failure(kiln: &Kiln, context: &Path, extra: &[&str]) -> String {
    let output = kiln.try_build(context, extra);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
}

#[test]
fn a_layer_past_the_bound_is_refused_and_the_option_raises_it() {
    let first = Kiln::with_busybox();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox\nRUN head -c 8000000 /dev/zero > /zeros && mkdir /many && cd /many && touch $(seq 1 20)\n",
    );
    first.build(context.path(), &["-t", "zeros:1"]);
    in_project(
        &first,
        context.path(),
        &["save", "-o", "zeros.tar", "zeros:1"],
    );

    // Another machine, where the image's layers are not unpacked yet.
    let second = Kiln::new();
    in_project(&second, context.path(), &["load", "-i", "zeros.tar"]);
    let uses = Context::new();
    uses.write("Dockerfile", "FROM zeros:1\nRUN wc -c < /zeros > /count\n");
    let refused = build_failure(&second, uses.path(), &["--max-layer-size", "5MB"]);
    assert!(
        refused.contains("unpacking layer sha256:")
            && refused.contains("\"zeros\" takes it past 5.0MB")
            && refused.contains("(--max-layer-size raises it)"),
        "{refused}"
    );
    let refused = build_failure(&second, uses.path(), &["--max-layer-entries", "10"]);
    assert!(
        refused.contains("takes it past 10 entries")
            && refused.contains("(--max-layer-entries raises it)"),
        "{refused}"
    );
    second.assert_consistent();
    let files = second.files(uses.path(), &["--max-layer-size", "10MB"]);
    assert_eq!(
        std::fs::read_to_string(files.path().join("count")).expect("count"),
        "8000000\n"
    );
}

#[test]
fn a_full_disk_stops_the_build_and_the_store_works_again_after_a_prune() {
    let disk = SmallDisk::mount(64);
    let kiln = disk.kiln();

    // A step's layer that would leave less than the reserve free: its blob
    // is not written, and the error says why.
    let greedy = Context::new();
    let half = disk.free() * 3 / 5;
    greedy.write(
        "Dockerfile",
        &format!("FROM busybox\nRUN head -c {half} /dev/urandom > /random\n"),
    );
    let stopped = build_failure(&kiln, greedy.path(), &["-t", "greedy:1"]);
    assert!(
        stopped.contains("RUN head -c")
            && stopped.contains("caused by: only ")
            && stopped.contains("kiln keeps free: free space (kiln prune) or lower the reserve"),
        "{stopped}"
    );
    kiln.assert_consistent();

    // A step that fills the disk itself fails as it would anywhere (overlayfs
    // on tmpfs says "I/O error"); what it wrote goes with it.
    let filling = Context::new();
    filling.write(
        "Dockerfile",
        "FROM busybox\nRUN head -c 200000000 /dev/zero > /fill\n",
    );
    let full = build_failure(&kiln, filling.path(), &[]);
    assert!(
        full.contains("RUN head -c 200000000") && full.contains("did not complete successfully"),
        "{full}"
    );
    kiln.assert_consistent();

    // Once space is freed, the store builds again.
    kiln.ok(&["prune", "--all"]);
    let small = Context::new();
    small.write("Dockerfile", "FROM busybox\nRUN echo fits > /small\n");
    kiln.build(small.path(), &["-t", "small:1"]);
    kiln.assert_consistent();
    assert!(kiln.ok(&["images"]).contains("small"));
}
