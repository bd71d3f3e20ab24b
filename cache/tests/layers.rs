//! Layer tars: packing a tree and extracting it again keeps every kind of
//! entry and its metadata; the same tree always gives the same digests; and
//! archives crafted to escape the target directory are refused.
//!
//! These tests create device nodes, change owners and set trusted extended
//! attributes, so they must run as root (as CI does).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_cache::extract::{extract, ExtractMode, ExtractOptions};
use kiln_cache::pack::{pack_dir, PackOptions, PackedLayer};
use kiln_cache::{Compression, Error, Limits};
use rustix::fs::{AtFlags, FileType, Mode};

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests create device nodes and set owners: run them as root (sudo scripts/test)"
    );
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

fn mknod(path: &Path, file_type: FileType, major: u32, minor: u32) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        file_type,
        Mode::from_raw_mode(0o640),
        rustix::fs::makedev(major, minor),
    )
    .expect("mknod");
}

fn chown(path: &Path, uid: u32, gid: u32) {
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .expect("chown");
}

fn set_mtime(path: &Path, seconds: i64) {
    let time = rustix::fs::Timespec {
        tv_sec: seconds,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .expect("utimensat");
}

/// A tree with every kind of entry a layer can hold, in overlayfs form.
fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("etc/app")).expect("mkdir");
    fs::write(root.join("etc/app/config"), "key=value\n").expect("write");
    fs::set_permissions(
        root.join("etc/app/config"),
        fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");
    chown(&root.join("etc/app/config"), 1000, 1001);
    fs::write(root.join("bin-tool"), vec![0xAB; 70_000]).expect("write");
    fs::set_permissions(root.join("bin-tool"), fs::Permissions::from_mode(0o4755)).expect("setuid");
    fs::hard_link(root.join("bin-tool"), root.join("bin-tool-link")).expect("hard link");
    symlink("etc/app/config", root.join("config-link")).expect("symlink");
    symlink("/absolute/target", root.join("dangling")).expect("symlink");
    mknod(&root.join("null"), FileType::CharacterDevice, 1, 3);
    mknod(&root.join("disk"), FileType::BlockDevice, 7, 0);
    mknod(&root.join("pipe"), FileType::Fifo, 0, 0);
    rustix::fs::setxattr(
        root.join("bin-tool").as_path(),
        "security.capability",
        &[
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        rustix::fs::XattrFlags::empty(),
    )
    .expect("security.capability");
    rustix::fs::setxattr(
        root.join("etc/app/config").as_path(),
        "user.origin",
        b"test",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("user xattr");
    // A deleted file and a replaced directory, as overlayfs records them.
    mknod(&root.join("deleted"), FileType::CharacterDevice, 0, 0);
    fs::create_dir(root.join("replaced")).expect("mkdir");
    fs::write(root.join("replaced/new"), "new").expect("write");
    rustix::fs::setxattr(
        root.join("replaced").as_path(),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("opaque");
    let long = "d".repeat(120);
    fs::create_dir_all(root.join(&long).join("e".repeat(90))).expect("long dirs");
    fs::write(
        root.join(&long).join("e".repeat(90)).join("f".repeat(110)),
        "deep",
    )
    .expect("long name");
    for entry in walk(root) {
        if entry != root {
            set_mtime(&entry, 1_600_000_000);
        }
    }
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut index = 0;
    while index < out.len() {
        let path = out[index].clone();
        if fs::symlink_metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            let mut children: Vec<PathBuf> = fs::read_dir(&path)
                .expect("read_dir")
                .map(|e| e.expect("entry").path())
                .collect();
            children.sort();
            out.extend(children);
        }
        index += 1;
    }
    out
}

/// Everything about a tree that a layer must preserve.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for path in walk(root).into_iter().skip(1) {
        let relative = path
            .strip_prefix(root)
            .expect("inside")
            .display()
            .to_string();
        let m = fs::symlink_metadata(&path).expect("stat");
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_symlink() {
            format!(
                "symlink->{}",
                fs::read_link(&path).expect("readlink").display()
            )
        } else if ft.is_char_device() || ft.is_block_device() {
            format!(
                "{}dev {}:{}",
                if ft.is_char_device() { "c" } else { "b" },
                rustix::fs::major(m.rdev()),
                rustix::fs::minor(m.rdev())
            )
        } else if ft.is_fifo() {
            "fifo".to_string()
        } else {
            format!("file {} bytes links={}", m.len(), m.nlink())
        };
        let mut xattrs = Vec::new();
        let mut names = vec![0u8; 4096];
        if let Ok(n) = rustix::fs::llistxattr(path.as_path(), &mut names[..]) {
            for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
                let name = String::from_utf8_lossy(name).into_owned();
                let mut value = vec![0u8; 4096];
                let size = rustix::fs::lgetxattr(path.as_path(), name.as_str(), &mut value[..])
                    .expect("getxattr");
                xattrs.push(format!("{name}={:?}", &value[..size]));
            }
        }
        xattrs.sort();
        if ft.is_char_device() && m.rdev() == 0 {
            // A whiteout carries no metadata of its own.
            map.insert(relative, kind);
            continue;
        }
        let mtime = if ft.is_symlink() {
            String::new()
        } else {
            format!(" mtime={}", m.mtime())
        };
        map.insert(
            relative,
            format!(
                "{kind} mode={:o} owner={}:{}{mtime} xattrs={xattrs:?}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ),
        );
    }
    map
}

fn pack(dir: &Path, options: PackOptions) -> (Vec<u8>, PackedLayer) {
    pack_dir(dir, &options, Vec::new()).expect("pack")
}

fn uncompressed(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(
        &mut kiln_cache::compress::decompressed(bytes).expect("decoder"),
        &mut out,
    )
    .expect("decompress");
    out
}

#[test]
fn packing_then_extracting_keeps_everything() {
    require_root();
    let source = tempdir();
    sample_tree(source.path());
    let (blob, layer) = pack(source.path(), PackOptions::default());
    assert!(!layer.empty);
    assert_eq!(kiln_cache::Digest::of(&blob), layer.digest);
    assert_eq!(kiln_cache::Digest::of(&uncompressed(&blob)), layer.diff_id);
    let target = tempdir();
    extract(
        &uncompressed(&blob)[..],
        target.path(),
        &ExtractOptions::layer(Limits::default()),
    )
    .expect("extract");
    assert_eq!(describe(target.path()), describe(source.path()));
    let hardlinked = fs::metadata(target.path().join("bin-tool"))
        .expect("stat")
        .ino();
    assert_eq!(
        fs::metadata(target.path().join("bin-tool-link"))
            .expect("stat")
            .ino(),
        hardlinked
    );
}

#[test]
fn whiteouts_appear_in_the_tar_as_docker_writes_them() {
    require_root();
    let source = tempdir();
    sample_tree(source.path());
    let (blob, _) = pack(
        source.path(),
        PackOptions {
            compression: Compression::Uncompressed,
            source_date_epoch: None,
        },
    );
    let mut archive = tar::Archive::new(&blob[..]);
    let names: Vec<String> = archive
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    assert!(names.contains(&".wh.deleted".to_string()), "{names:?}");
    let replaced = names
        .iter()
        .position(|n| n == "replaced")
        .expect("dir entry");
    assert_eq!(names[replaced + 1], "replaced/.wh..wh..opq");
    assert!(!names.iter().any(|n| n.contains("trusted.overlay")));
    assert_eq!(names.first().map(String::as_str), Some("bin-tool"));
}

#[test]
fn layers_are_deterministic_and_clamped_to_source_date_epoch() {
    require_root();
    let first = tempdir();
    let second = tempdir();
    sample_tree(first.path());
    sample_tree(second.path());
    set_mtime(&second.path().join("etc/app/config"), 1_700_000_000);
    let options = PackOptions {
        compression: Compression::Gzip { level: 6 },
        source_date_epoch: Some(1_500_000_000),
    };
    let (_, a) = pack(first.path(), options);
    let (_, b) = pack(second.path(), options);
    assert_eq!((a.diff_id, a.digest), (b.diff_id, b.digest));
    let (_, unclamped) = pack(second.path(), PackOptions::default());
    assert_ne!(unclamped.diff_id, a.diff_id);
    let (_, zstd) = pack(
        first.path(),
        PackOptions {
            compression: Compression::Zstd { level: 3 },
            source_date_epoch: Some(1_500_000_000),
        },
    );
    assert_eq!(
        zstd.diff_id, a.diff_id,
        "compression does not change the diff ID"
    );
    assert_ne!(zstd.digest, a.digest);
}

#[test]
fn an_empty_tree_is_an_empty_layer() {
    let source = tempdir();
    let (_, layer) = pack(source.path(), PackOptions::default());
    assert!(layer.empty);
    assert_eq!(layer.tar_size, 1024);
}

/// A tar entry written byte by byte, so that names a well-behaved writer
/// refuses (`../x`, `/etc/x`) can be made.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8]) {
    let mut header = tar::Header::new_ustar();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_mode(if kind == b'5' { 0o755 } else { 0o644 });
    header.set_size(data.len() as u64);
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_mtime(0);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A tar entry to craft: name, type flag, link target, content.
type RawEntry<'a> = (&'a str, u8, &'a str, &'a [u8]);

fn malicious(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        raw_entry(&mut out, name, *kind, link, data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn malicious_archives_are_refused_and_nothing_outside_changes() {
    require_root();
    let cases: &[(&str, &[RawEntry], &str)] = &[
        (
            "dot-dot",
            &[("../escaped", b'0', "", b"x")],
            "\"../escaped\": `..` would leave the target directory",
        ),
        (
            "nested dot-dot",
            &[("a/../../escaped", b'0', "", b"x")],
            "`..` would leave the target directory",
        ),
        (
            "absolute",
            &[("/tmp/escaped", b'0', "", b"x")],
            "absolute paths are not allowed",
        ),
        (
            "file through a symlink",
            &[
                ("link", b'2', "OUTSIDE", b""),
                ("link/escaped", b'0', "", b"x"),
            ],
            "\"link/escaped\": \"link\" leads outside the target directory through a symlink",
        ),
        (
            "file through a relative symlink",
            &[("up", b'2', "../..", b""), ("up/escaped", b'0', "", b"x")],
            "leads outside the target directory",
        ),
        (
            "hard link out",
            &[("hard", b'1', "../../etc/passwd", b"")],
            "hard link target \"../../etc/passwd\" is outside",
        ),
        (
            "hard link through a symlink",
            &[
                ("link", b'2', "OUTSIDE", b""),
                ("hard", b'1', "link/victim", b""),
            ],
            "leads outside the target directory",
        ),
        (
            "directory replaced by a symlink",
            &[
                ("dir/", b'5', "", b""),
                ("dir/ok", b'0', "", b"fine"),
                ("dir", b'2', "OUTSIDE", b""),
                ("dir/escaped", b'0', "", b"x"),
            ],
            "\"dir/escaped\": \"dir\" leads outside",
        ),
    ];
    // Both ways archives are unpacked: base-image layers and ADD.
    let modes = [ExtractMode::Layer, ExtractMode::Archive];
    for ((name, entries, message), mode) in cases
        .iter()
        .flat_map(|case| modes.iter().map(move |mode| (case, *mode)))
    {
        let sandbox = tempdir();
        let outside = sandbox.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        fs::write(outside.join("victim"), "untouched").expect("write");
        let target = sandbox.path().join("a/b/target");
        fs::create_dir_all(&target).expect("mkdir");
        let entries: Vec<(&str, u8, String, &[u8])> = entries
            .iter()
            .map(|(n, k, l, d)| {
                (
                    *n,
                    *k,
                    l.replace("OUTSIDE", outside.to_str().expect("utf-8")),
                    *d,
                )
            })
            .collect();
        let entries: Vec<(&str, u8, &str, &[u8])> = entries
            .iter()
            .map(|(n, k, l, d)| (*n, *k, l.as_str(), *d))
            .collect();
        let archive = malicious(&entries);
        let err = extract(
            &archive[..],
            &target,
            &ExtractOptions {
                mode,
                owner: None,
                limits: Limits::default(),
            },
        )
        .expect_err(name);
        assert!(
            matches!(err, Error::UnsafeEntry { .. }),
            "{name} {mode:?}: {err}"
        );
        assert!(err.to_string().contains(message), "{name} {mode:?}: {err}");
        let outside_entries: Vec<String> = fs::read_dir(&outside)
            .expect("read")
            .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(outside_entries, ["victim"], "{name}");
        assert_eq!(
            fs::read_to_string(outside.join("victim")).expect("read"),
            "untouched",
            "{name}"
        );
        assert!(
            !sandbox.path().join("a/escaped").exists() && !sandbox.path().join("escaped").exists(),
            "{name}"
        );
        assert!(!Path::new("/tmp/escaped").exists(), "{name}");
    }
}

#[test]
fn symlinks_that_stay_inside_are_followed_for_parents() {
    require_root();
    let target = tempdir();
    let archive = malicious(&[
        ("real/", b'5', "", b""),
        ("alias", b'2', "real", b""),
        ("alias/file", b'0', "", b"inside"),
    ]);
    extract(
        &archive[..],
        target.path(),
        &ExtractOptions {
            mode: ExtractMode::Archive,
            owner: None,
            limits: Limits::default(),
        },
    )
    .expect("extract");
    assert_eq!(
        fs::read_to_string(target.path().join("real/file")).expect("read"),
        "inside"
    );
}

#[test]
fn later_entries_replace_earlier_ones_without_writing_through_links() {
    require_root();
    let sandbox = tempdir();
    let target = sandbox.path().join("target");
    fs::create_dir(&target).expect("mkdir");
    fs::write(sandbox.path().join("victim"), "untouched").expect("write");
    let mut archive = Vec::new();
    raw_entry(&mut archive, "original", b'0', "", b"first");
    raw_entry(&mut archive, "linked", b'1', "original", b"");
    raw_entry(&mut archive, "linked", b'0', "", b"second");
    archive.extend_from_slice(&[0u8; 1024]);
    extract(
        &archive[..],
        &target,
        &ExtractOptions {
            mode: ExtractMode::Archive,
            owner: None,
            limits: Limits::default(),
        },
    )
    .expect("extract");
    assert_eq!(
        fs::read_to_string(target.join("original")).expect("read"),
        "first"
    );
    assert_eq!(
        fs::read_to_string(target.join("linked")).expect("read"),
        "second"
    );
}

#[test]
fn layer_whiteouts_become_overlay_whiteouts() {
    require_root();
    let target = tempdir();
    let archive = malicious(&[
        ("gone/", b'5', "", b""),
        (".wh.removed", b'0', "", b""),
        ("gone/.wh..wh..opq", b'0', "", b""),
    ]);
    extract(
        &archive[..],
        target.path(),
        &ExtractOptions::layer(Limits::default()),
    )
    .expect("extract");
    let removed = fs::symlink_metadata(target.path().join("removed")).expect("whiteout");
    assert!(removed.file_type().is_char_device() && removed.rdev() == 0);
    let mut value = [0u8; 8];
    let n = rustix::fs::getxattr(
        target.path().join("gone").as_path(),
        "trusted.overlay.opaque",
        &mut value[..],
    )
    .expect("opaque");
    assert_eq!(&value[..n], b"y");
    let plain = tempdir();
    extract(
        &archive[..],
        plain.path(),
        &ExtractOptions {
            mode: ExtractMode::Archive,
            owner: Some((5, 6)),
            limits: Limits::default(),
        },
    )
    .expect("extract");
    let kept = fs::metadata(plain.path().join(".wh.removed")).expect("kept as a file");
    assert_eq!((kept.uid(), kept.gid()), (5, 6));
}

#[test]
fn truncated_archives_are_errors() {
    let mut archive = malicious(&[("file", b'0', "", b"0123456789")]);
    archive.truncate(520);
    let target = tempdir();
    let err = extract(
        &archive[..],
        target.path(),
        &ExtractOptions::layer(Limits::default()),
    )
    .expect_err("truncated");
    assert!(err.to_string().contains("\"file\""), "{err}");
}
