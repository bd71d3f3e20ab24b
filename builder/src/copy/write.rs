//! Writing what a COPY, ADD or WORKDIR makes into the step's diff
//! directory: Docker's destination rules, parents made as the image has
//! them, archives unpacked through the image's symlinks, and each copied
//! entry checked against what the step's key read of it.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use kiln_cache::digest::HashingReader;
use kiln_cache::extract::{extract_with, ExtractMode, ExtractOptions, Placement, PlacementError};
use kiln_cache::tree::{split_parent, Attributes, TreeWriter};
use kiln_cache::{Digest, LayerView, ViewEntry};
use kiln_frontend::chmod::Chmod;
use kiln_frontend::graph::InlineFile;
use kiln_frontend::DockerIgnore;
use rustix::fs::FileType;

use super::select::Hashed;
use super::tree::{attributes_of, base_name, choose, Choice, Overrides, SourceTree};
use crate::error::{bail, Context};

/// Writes new files into the diff directory, creating parents as the
/// image already has them or, when it does not, with `default_owner`.
pub(super) struct Writer<'a> {
    pub(super) rootfs: &'a LayerView,
    pub(super) diff: TreeWriter,
    pub(super) diff_path: &'a Path,
    pub(super) now: i64,
    pub(super) default_owner: (u32, u32),
    /// The mode of directories the step creates: an octal `--chmod`'s, as
    /// BuildKit gives them, or 0755.
    pub(super) new_directory_mode: u32,
    pub(super) ensured: HashSet<String>,
    pub(super) hard_links: HashMap<(u64, u64), String>,
    /// What the step's key read of the context's entries, checked again
    /// as they are copied.
    pub(super) hashed: Option<&'a HashMap<PathBuf, Hashed>>,
    /// What an archive `ADD` unpacks may hold.
    pub(super) archive_limits: kiln_cache::Limits,
}

/// What a directory copy takes from where, and how it changes it.
pub(super) struct DirectoryCopy<'a> {
    pub(super) source: &'a SourceTree<'a>,
    /// The copied directory: `--exclude` patterns are relative to it.
    pub(super) root: &'a str,
    pub(super) overrides: &'a Overrides<'a>,
    pub(super) exclude: Option<&'a DockerIgnore>,
}

/// What a path of the image holds before a step writes it, counting what the
/// step has written already.
#[derive(PartialEq, Eq)]
pub(super) enum Existing {
    Nothing,
    Directory,
    Other,
}

impl Writer<'_> {
    /// What is at `path` (canonical, relative) now: the step's own writes
    /// first, then the image.
    fn existing(&self, path: &str, check_image: bool) -> crate::Result<Existing> {
        if let Some(stat) = self.diff.lstat(path)? {
            return Ok(
                if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                    Existing::Directory
                } else {
                    Existing::Other
                },
            );
        }
        if !check_image {
            return Ok(Existing::Nothing);
        }
        Ok(match self.rootfs.resolve(&format!("/{path}"), false)? {
            Some(entry) if entry.metadata.is_dir() => Existing::Directory,
            Some(_) => Existing::Other,
            None => Existing::Nothing,
        })
    }

    /// Refuses to turn a file or symlink into a directory, as BuildKit does:
    /// copying a directory over `/lib -> usr/lib` would hide all of `usr/lib`.
    fn check_directory_target(&self, path: &str, check_image: bool) -> crate::Result<()> {
        if self.existing(path, check_image)? == Existing::Other {
            bail!("cannot copy a directory to /{path}: it exists and is not a directory");
        }
        Ok(())
    }

    /// Refuses to replace a directory with a file, as BuildKit does.
    fn check_file_target(&self, path: &str, check_image: bool) -> crate::Result<()> {
        if self.existing(path, check_image)? == Existing::Directory {
            bail!("cannot replace the directory /{path} with a file");
        }
        Ok(())
    }

    /// The attributes of the directory the image already has at `path`, which
    /// a copy into it keeps.
    fn existing_directory(&self, path: &str) -> crate::Result<Option<Attributes>> {
        match self.rootfs.resolve(&format!("/{path}"), false)? {
            Some(existing) if existing.metadata.is_dir() => {
                Ok(Some(attributes_of(&existing, &Overrides::NONE)?))
            }
            _ => Ok(None),
        }
    }

    /// The path in the diff where `target` (a path in the image) goes:
    /// through the symlinks the image already has, as Docker resolves it.
    pub(super) fn place(&self, target: &str) -> crate::Result<String> {
        let resolved = self.rootfs.resolve_for_creation(target)?.with_context(|| {
            format!("cannot create {target}: one of its parents is not a directory in the image")
        })?;
        Ok(resolved.trim_start_matches('/').to_string())
    }

    /// Creates the parents of `path` in the diff, with the attributes the
    /// image gives them, or new ones.
    pub(super) fn ensure_parents(&mut self, path: &str) -> crate::Result<()> {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.ensured.contains(&prefix) {
                continue;
            }
            self.check_directory_target(&prefix, false)?;
            if self.diff.lstat(&prefix)?.is_none() {
                self.diff.create_dir(&prefix)?;
                let attributes = match self.existing_directory(&prefix)? {
                    Some(attributes) => attributes,
                    None => self.new_directory_attributes(),
                };
                self.diff.set_directory_attributes(&prefix, &attributes)?;
            }
            self.ensured.insert(prefix.clone());
        }
        Ok(())
    }

    /// Makes the directory `target` (a path in the image) unless the image
    /// or the step has it already.
    pub(super) fn ensure_directory(&mut self, target: &str) -> crate::Result<()> {
        let path = self.place(target)?;
        if path.is_empty() || self.existing(&path, true)? == Existing::Directory {
            return Ok(());
        }
        self.check_directory_target(&path, true)?;
        self.ensure_parents(&format!("{path}/"))
    }

    pub(super) fn copy_entry(
        &mut self,
        entry: &ViewEntry,
        target: &str,
        overrides: &Overrides<'_>,
    ) -> crate::Result<()> {
        let path = self.place(target)?;
        self.ensure_parents(&path)?;
        self.check_file_target(&path, true)?;
        self.write_entry(entry, &path, overrides)
    }

    /// Writes one non-directory entry at `path` in the diff.
    fn write_entry(
        &mut self,
        entry: &ViewEntry,
        path: &str,
        overrides: &Overrides<'_>,
    ) -> crate::Result<()> {
        let metadata = &entry.metadata;
        let file_type = metadata.file_type();
        let attributes = attributes_of(entry, overrides)?;
        if file_type.is_file() {
            if metadata.nlink() > 1 {
                let key = (metadata.dev(), metadata.ino());
                if let Some(first) = self.hard_links.get(&key) {
                    self.diff.create_hard_link(path, first)?;
                    return Ok(());
                }
                self.hard_links.insert(key, path.to_string());
            }
            let file =
                File::open(&entry.host).with_context(|| format!("reading {}", entry.path))?;
            let mut read = HashingReader::new(file);
            self.diff.create_file(path, &mut read, &attributes)?;
            let (content, _) = read.finish();
            self.check_unchanged(entry, None, Some(content))?;
            return Ok(());
        }
        if file_type.is_symlink() {
            let target =
                fs::read_link(&entry.host).with_context(|| format!("reading {}", entry.path))?;
            self.check_unchanged(entry, Some(&target), None)?;
            self.diff
                .create_symlink(path, &target.to_string_lossy(), &attributes)?;
            return Ok(());
        }
        self.check_unchanged(entry, None, None)?;
        if file_type.is_char_device() || file_type.is_block_device() || file_type.is_fifo() {
            let kind = if file_type.is_char_device() {
                FileType::CharacterDevice
            } else if file_type.is_block_device() {
                FileType::BlockDevice
            } else {
                FileType::Fifo
            };
            let rdev = metadata.rdev();
            self.diff.create_node(
                path,
                kind,
                rustix::fs::major(rdev),
                rustix::fs::minor(rdev),
                &attributes,
            )?;
        } else if file_type.is_socket() {
            // A socket cannot be part of an image: BuildKit copies it as an
            // empty file.
            self.diff
                .create_file(path, &mut std::io::empty(), &attributes)?;
        }
        Ok(())
    }

    /// Fails when `entry` of the build context is not what the step's key
    /// read of it (its mode, link target or content), or was not there
    /// when the key was made.
    fn check_unchanged(
        &self,
        entry: &ViewEntry,
        link: Option<&Path>,
        content: Option<Digest>,
    ) -> crate::Result<()> {
        let Some(hashed) = self.hashed else {
            return Ok(());
        };
        let file_type = entry.metadata.file_type();
        let now = Hashed {
            mode: entry.metadata.mode(),
            link: link.map(Path::to_path_buf),
            content,
            device: if file_type.is_block_device() || file_type.is_char_device() {
                entry.metadata.rdev()
            } else {
                0
            },
        };
        if hashed.get(&entry.host) != Some(&now) {
            bail!(
                "{} changed while the step was copying it from the build context: build again once it is saved",
                entry.path.trim_start_matches('/')
            );
        }
        Ok(())
    }

    /// A directory the copy creates where the image has none: 0755 or an
    /// octal `--chmod`'s mode, owned by `--chown`'s owner or root.
    fn new_directory_attributes(&self) -> Attributes {
        Attributes {
            mode: self.new_directory_mode,
            uid: self.default_owner.0,
            gid: self.default_owner.1,
            mtime: self.now,
            xattrs: Vec::new(),
        }
    }

    /// Copies the contents of the directory `entry` into `target`. With
    /// `plain_destination`, a destination the image lacks is made as
    /// BuildKit makes it (see `new_directory_attributes`) rather than with
    /// the source directory's mode and owner: only the contents are copied.
    pub(super) fn copy_directory(
        &mut self,
        source: &SourceTree<'_>,
        entry: &ViewEntry,
        target: &str,
        overrides: &Overrides<'_>,
        exclude: Option<&DockerIgnore>,
        plain_destination: bool,
    ) -> crate::Result<()> {
        let path = self.place(target)?;
        self.ensure_parents(&path)?;
        let selection = DirectoryCopy {
            source,
            root: &entry.path,
            overrides,
            exclude,
        };
        self.write_directory(&selection, entry, &path, true, plain_destination)
    }

    /// Creates the directory `path` in the diff with the contents of `dir`.
    /// A directory the image already has keeps its attributes, as in
    /// BuildKit; a new one gets `dir`'s, or with `plain` those of a
    /// directory the step makes. `in_image` says whether the image may have
    /// `path` at all, which spares looking up what lies below a directory it
    /// does not have.
    fn write_directory(
        &mut self,
        selection: &DirectoryCopy<'_>,
        dir: &ViewEntry,
        path: &str,
        in_image: bool,
        plain: bool,
    ) -> crate::Result<()> {
        self.check_directory_target(path, in_image)?;
        self.check_unchanged(dir, None, None)?;
        let existing = if in_image {
            self.existing_directory(path)?
        } else {
            None
        };
        self.diff.create_dir(path)?;
        self.ensured.insert(path.to_string());
        self.walk(selection, dir, path, existing.is_some())?;
        let attributes = match existing {
            Some(attributes) => attributes,
            None if plain => self.new_directory_attributes(),
            None => attributes_of(dir, selection.overrides)?,
        };
        self.diff.set_directory_attributes(path, &attributes)?;
        Ok(())
    }

    /// Copies the children of `dir` into `path`.
    fn walk(
        &mut self,
        selection: &DirectoryCopy<'_>,
        dir: &ViewEntry,
        path: &str,
        in_image: bool,
    ) -> crate::Result<()> {
        let source = selection.source;
        for child in source
            .view
            .read_dir(&dir.path)
            .with_context(|| format!("reading {}", dir.path))?
        {
            let is_dir = child.metadata.is_dir();
            let choice = choose(source, selection.root, selection.exclude, &child)?;
            if choice == Choice::Skip {
                continue;
            }
            let name = base_name(&child.path);
            let child_path = if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}/{name}")
            };
            if choice == Choice::OnlyBelow {
                // Ignored itself, but an exception may bring back something
                // below it, whose parents are then made on demand.
                self.walk(selection, &child, &child_path, in_image)?;
            } else if is_dir {
                self.write_directory(selection, &child, &child_path, in_image, false)?;
            } else {
                self.ensure_parents(&child_path)?;
                self.check_file_target(&child_path, in_image)?;
                self.write_entry(&child, &child_path, selection.overrides)?;
            }
        }
        Ok(())
    }

    /// Unpacks the archive `archive` of the build context into `dir`.
    pub(super) fn unpack(
        &mut self,
        archive: &ViewEntry,
        dir: &str,
        owner: Option<(u32, u32)>,
    ) -> crate::Result<()> {
        self.unpack_file(&archive.host, &archive.path, dir, owner)?;
        let after = fs::symlink_metadata(&archive.host)
            .with_context(|| format!("reading {}", archive.path))?;
        let (before, after) = (&archive.metadata, &after);
        let same = |m: &fs::Metadata| {
            (
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            )
        };
        if same(before) != same(after) {
            bail!(
                "{} changed while the step was unpacking it from the build context: build again once it is saved",
                archive.path.trim_start_matches('/')
            );
        }
        Ok(())
    }

    /// Unpacks the tar archive at the host path `archive` (`name` in errors)
    /// into `dir`, keeping its owners unless `owner` is given.
    pub(super) fn unpack_file(
        &mut self,
        archive: &Path,
        name: &str,
        dir: &str,
        owner: Option<(u32, u32)>,
    ) -> crate::Result<()> {
        let path = self.place(dir)?;
        self.ensure_parents(&format!("{path}/x"))?;
        let file = File::open(archive).with_context(|| format!("reading {name}"))?;
        let reader = kiln_cache::compress::decompressed(file)?;
        let options = ExtractOptions {
            mode: ExtractMode::Archive,
            owner,
            limits: self.archive_limits,
        };
        let diff_path = self.diff_path;
        let mut layers = self.rootfs.layers().to_vec();
        layers.push(diff_path.to_path_buf());
        let mut placement = ThroughImage {
            writer: self,
            view: LayerView::new(layers),
            root: format!("/{path}"),
            resolved: HashMap::new(),
        };
        extract_with(reader, diff_path, &options, &mut placement)
            .with_context(|| format!("unpacking {name}"))?;
        Ok(())
    }

    /// Writes the host file `path` at `target` with `attributes`.
    pub(super) fn write_file(
        &mut self,
        path: &Path,
        target: &str,
        attributes: &Attributes,
    ) -> crate::Result<()> {
        let place = self.place(target)?;
        self.ensure_parents(&place)?;
        self.check_file_target(&place, true)?;
        let mut file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
        self.diff.create_file(&place, &mut file, attributes)?;
        Ok(())
    }

    pub(super) fn write_inline(
        &mut self,
        file: &InlineFile,
        target: &str,
        chmod: Option<&Chmod>,
        owner: Option<(u32, u32)>,
    ) -> crate::Result<()> {
        let path = self.place(target)?;
        self.ensure_parents(&path)?;
        self.check_file_target(&path, true)?;
        let (uid, gid) = owner.unwrap_or((0, 0));
        let attributes = Attributes {
            mode: chmod.map_or(file.mode, |chmod| chmod.apply(file.mode, false)),
            uid,
            gid,
            mtime: self.now,
            xattrs: Vec::new(),
        };
        self.diff
            .create_file(&path, &mut file.content.as_bytes(), &attributes)?;
        Ok(())
    }
}

/// Places an archive's entries as BuildKit unpacks it, chrooted in the
/// destination directory: the directories on an entry's path are followed
/// through the symlinks the image has there (or the archive made earlier),
/// absolute ones from the destination, so that with the image's
/// `var/run -> /run` the entry `var/run/x` lands in `/run/x` and the link
/// stays (moby/moby#53258). The entry itself replaces whatever is at its own
/// path. Nothing is placed outside the destination.
struct ThroughImage<'w, 'a> {
    writer: &'w mut Writer<'a>,
    /// The image with what the step has written so far on top.
    view: LayerView,
    /// The destination directory, resolved, as a path of the image.
    root: String,
    /// Where each directory of the archive resolved so far leads (as a diff
    /// path), so that an archive of many files resolves each directory once.
    resolved: HashMap<String, String>,
}

impl ThroughImage<'_, '_> {
    /// The diff path of the archive's `path`: its directory resolved, its
    /// name as it is.
    fn locate(&mut self, path: &str) -> crate::Result<String> {
        let (parent, name) = split_parent(path);
        let dir = match self.resolved.get(parent) {
            Some(dir) => dir.clone(),
            None => {
                let dir = self
                    .view
                    .resolve_for_creation_beneath(&self.root, parent)?
                    .with_context(|| {
                        format!("cannot unpack {path}: one of its parents is not a directory")
                    })?
                    .trim_start_matches('/')
                    .to_string();
                self.resolved.insert(parent.to_string(), dir.clone());
                dir
            }
        };
        Ok(if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        })
    }
}

impl Placement for ThroughImage<'_, '_> {
    fn entry(&mut self, path: &str, changes_paths: bool) -> Result<String, PlacementError> {
        if changes_paths {
            // A directory or symlink written here may change where paths
            // resolved before lead.
            self.resolved.clear();
        }
        let target = self.locate(path)?;
        // Directories the image has keep their owner and mode in the diff.
        self.writer.ensure_parents(&target)?;
        Ok(target)
    }

    fn link_target(&mut self, path: &str) -> Result<String, PlacementError> {
        Ok(self.locate(path)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use kiln_frontend::DockerIgnore;
    use std::os::unix::fs::MetadataExt;

    /// A tar archive of directories (a name ending in `/`), files (holding
    /// their own name), symlinks (`name -> target`) and hard links
    /// (`name => target`).
    fn tar_of(entries: &[&str]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in entries {
            let mut header = tar::Header::new_ustar();
            header.set_mode(0o755);
            header.set_size(0);
            if let Some((name, target)) = entry.split_once(" -> ") {
                header.set_entry_type(tar::EntryType::Symlink);
                builder
                    .append_link(&mut header, name, target)
                    .expect("symlink");
            } else if let Some((name, target)) = entry.split_once(" => ") {
                header.set_entry_type(tar::EntryType::Link);
                builder
                    .append_link(&mut header, name, target)
                    .expect("link");
            } else if entry.ends_with('/') {
                header.set_entry_type(tar::EntryType::Directory);
                builder
                    .append_data(&mut header, entry, std::io::empty())
                    .expect("directory");
            } else {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(entry.len() as u64);
                builder
                    .append_data(&mut header, entry, entry.as_bytes())
                    .expect("file");
            }
        }
        builder.into_inner().expect("tar")
    }

    /// Runs `ADD payload.tar dest` over an image of one layer that `image`
    /// fills; returns the diff directory.
    fn add_archive(
        payload: &[u8],
        dest: &str,
        image: impl FnOnce(&Path),
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (context, layer, diff) = (
            dir.path().join("context"),
            dir.path().join("layer"),
            dir.path().join("diff"),
        );
        for path in [&context, &layer, &diff] {
            fs::create_dir(path).expect("mkdir");
        }
        fs::write(context.join("payload.tar"), payload).expect("write");
        image(&layer);
        let ignore = DockerIgnore::parse("", ".dockerignore").expect("no rules");
        let source = SourceTree {
            view: LayerView::new(vec![context]),
            ignore: Some(&ignore),
            label: "the build context".to_string(),
        };
        let step = CopyStep {
            unpack: true,
            ..plain_copy(&["payload.tar"], dest)
        };
        let rootfs = LayerView::new(vec![layer]);
        let selection = select(&step, &source).expect("select");
        copy(
            &step,
            selection,
            &source,
            &rootfs,
            &diff,
            0,
            &NothingToFetch,
        )
        .expect("ADD");
        (dir, diff)
    }

    #[test]
    fn archives_unpack_through_the_images_symlinks() {
        let payload = tar_of(&[
            "var/run/act/",
            "var/run/act/HEAD",
            "var/run/act/HEAD.link => var/run/act/HEAD",
        ]);
        let (_dir, diff) = add_archive(&payload, "/", |layer| {
            fs::create_dir_all(layer.join("run")).expect("mkdir");
            fs::create_dir_all(layer.join("var")).expect("mkdir");
            std::os::unix::fs::symlink("/run", layer.join("var/run")).expect("symlink");
        });
        let head = fs::metadata(diff.join("run/act/HEAD")).expect("HEAD in /run");
        let link = fs::metadata(diff.join("run/act/HEAD.link")).expect("link in /run");
        assert_eq!(head.ino(), link.ino(), "a hard link, through the symlink");
        // The image's var/run stays the symlink it is.
        assert!(fs::symlink_metadata(diff.join("var")).is_err());
    }

    #[test]
    fn archive_symlinks_resolve_inside_the_destination() {
        // As BuildKit, chrooted in the destination: an absolute link and one
        // that climbs lead below /app, not to the image's /usr.
        let payload = tar_of(&["abs/a", "climb/b"]);
        let (_dir, diff) = add_archive(&payload, "/app", |layer| {
            fs::create_dir_all(layer.join("app")).expect("mkdir");
            fs::create_dir_all(layer.join("usr/lib")).expect("mkdir");
            std::os::unix::fs::symlink("/usr/lib", layer.join("app/abs")).expect("symlink");
            std::os::unix::fs::symlink("../../../usr/lib", layer.join("app/climb"))
                .expect("symlink");
        });
        assert!(diff.join("app/usr/lib/a").is_file());
        assert!(diff.join("app/usr/lib/b").is_file());
        assert!(fs::symlink_metadata(diff.join("usr")).is_err());
    }

    #[test]
    fn archive_symlinks_lead_its_later_entries() {
        // lib is first a directory, then a link: what comes after the link
        // goes through it, inside the image.
        let payload = tar_of(&["usr/lib/", "lib/", "lib/x", "lib -> /usr/lib", "lib/y"]);
        let (_dir, diff) = add_archive(&payload, "/", |_| {});
        assert!(diff.join("usr/lib/y").is_file());
        let lib = fs::symlink_metadata(diff.join("lib")).expect("lib");
        assert!(lib.file_type().is_symlink());
    }

    #[test]
    fn archive_entries_replace_a_symlink_at_their_own_path() {
        // A directory entry for var/run itself replaces the link, as
        // BuildKit's unpacking does; what follows goes into it.
        let payload = tar_of(&["var/run/", "var/run/x"]);
        let (_dir, diff) = add_archive(&payload, "/", |layer| {
            fs::create_dir_all(layer.join("run")).expect("mkdir");
            fs::create_dir_all(layer.join("var")).expect("mkdir");
            std::os::unix::fs::symlink("/run", layer.join("var/run")).expect("symlink");
        });
        assert!(diff.join("var/run/x").is_file());
        assert!(fs::symlink_metadata(diff.join("run")).is_err());
    }

    #[test]
    fn implied_parents_keep_the_images_owner_and_mode() {
        let payload = tar_of(&["var/x"]);
        let (_dir, diff) = add_archive(&payload, "/", |layer| {
            fs::create_dir_all(layer.join("var")).expect("mkdir");
            fs::set_permissions(
                layer.join("var"),
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )
            .expect("chmod");
            std::os::unix::fs::chown(layer.join("var"), Some(7), Some(8)).expect("chown");
        });
        let var = fs::metadata(diff.join("var")).expect("var");
        assert_eq!(var.mode() & 0o7777, 0o700);
        assert_eq!((var.uid(), var.gid()), (7, 8));
    }
}
