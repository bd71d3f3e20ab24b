//! Packing a 200 MB tree into a layer, gzip and zstd, in MB/s of tar, and
//! `gzip -6` and `zstd -3` compressing the same tar in the same run.
//!
//! Run with `cargo bench -p kiln-cache --bench pack`.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_cache::pack::{pack_dir, PackOptions};
use kiln_cache::Compression;

mod common;
use common::{fill, mb_per_s};

const TREE_BYTES: usize = 200 * 1024 * 1024;

/// 20 files of 8 MB and 9,600 small files, 200 MB in all.
fn make_tree(root: &Path) {
    let mut state = 0x2545_f491_4f6c_dd1d;
    let mut written = 0;
    let mut big = vec![0u8; 8 * 1024 * 1024];
    for i in 0..20 {
        fill(&mut big, &mut state);
        fs::write(root.join(format!("blob-{i:02}.bin")), &big).expect("write");
        written += big.len();
    }
    let mut small = vec![0u8; 4096];
    let mut index = 0;
    while written < TREE_BYTES {
        let dir = root.join(format!("src/module-{:03}", index / 100));
        if index % 100 == 0 {
            fs::create_dir_all(&dir).expect("mkdir");
        }
        fill(&mut small, &mut state);
        fs::write(dir.join(format!("file-{index}.rs")), &small).expect("write");
        written += small.len();
        index += 1;
    }
}

/// Best of a few runs, to keep the noise of a busy machine out.
fn best<T>(runs: usize, mut run: impl FnMut() -> T) -> (Duration, T) {
    let mut best: Option<(Duration, T)> = None;
    for _ in 0..runs {
        let started = Instant::now();
        let value = run();
        let elapsed = started.elapsed();
        if best.as_ref().is_none_or(|(b, _)| elapsed < *b) {
            best = Some((elapsed, value));
        }
    }
    best.expect("at least one run")
}

fn tool(program: &str, args: &[&str], input: &Path) -> Option<Duration> {
    let file = fs::File::open(input).ok()?;
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .stdin(file)
        .stdout(Stdio::null())
        .status()
        .ok()?;
    status.success().then(|| started.elapsed())
}

fn main() {
    let work = tempfile::tempdir().expect("temporary directory");
    let tree = work.path().join("tree");
    fs::create_dir(&tree).expect("mkdir");
    make_tree(&tree);
    let tar = work.path().join("layer.tar");
    let (_, (_, plain)) = best(1, || {
        pack_dir(
            &tree,
            &PackOptions {
                compression: Compression::Uncompressed,
                source_date_epoch: None,
            },
            fs::File::create(&tar).expect("tar"),
        )
        .expect("pack")
    });
    let tar_bytes = plain.tar_size;
    println!(
        "tree: {} MB of files, tar {} MB",
        TREE_BYTES / 1_000_000,
        tar_bytes / 1_000_000
    );
    println!(
        "{:<28} {:>10} {:>12} {:>10}",
        "case", "MB/s", "compressed", "vs tool"
    );
    let cases = [
        (
            "kiln gzip level 6",
            Compression::Gzip { level: 6 },
            "gzip",
            vec!["-6", "-c"],
        ),
        (
            "kiln zstd level 3",
            Compression::Zstd { level: 3 },
            "zstd",
            vec!["-3", "-c", "-q"],
        ),
    ];
    for (name, compression, program, args) in cases {
        let options = PackOptions {
            compression,
            source_date_epoch: None,
        };
        let (elapsed, (_, layer)) = best(2, || {
            pack_dir(&tree, &options, std::io::sink()).expect("pack")
        });
        let ours = mb_per_s(tar_bytes, elapsed);
        let theirs = tool(program, &args, &tar).map(|t| mb_per_s(tar_bytes, t));
        let ratio = theirs.map_or("n/a".to_string(), |t| format!("{:.2}x", ours / t));
        println!(
            "{name:<28} {ours:>10.1} {:>10} MB {ratio:>10}",
            layer.size / 1_000_000
        );
        if let Some(theirs) = theirs {
            println!("{:<28} {theirs:>10.1}", format!("{program} {}", args[0]));
        }
    }
    std::io::stdout().flush().expect("flush");
}
