//! COPY, ADD and WORKDIR without a sandbox: Docker's source and destination
//! rules applied to a source tree (the build context, another stage or an
//! image), writing what changes into a fresh diff directory that becomes
//! the step's layer.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{bail, Context};
use kiln_cache::digest::HashingReader;
use kiln_cache::extract::{extract_with, ExtractMode, ExtractOptions, Placement, PlacementError};
use kiln_cache::pack::{belongs_in_layer, read_xattrs};
use kiln_cache::tree::{split_parent, Attributes, TreeWriter};
use kiln_cache::{Digest, KeyHasher, LayerView, StatCache, ViewEntry};
use kiln_frontend::graph::{CopySource, CopyStep, InlineFile, MkdirStep};
use kiln_frontend::DockerIgnore;
use rustix::fs::FileType;

use crate::users::resolve_owner;

/// Where COPY reads from.
pub struct SourceTree<'a> {
    pub view: LayerView,
    /// The build context's ignore rules; none for stages and images.
    pub ignore: Option<&'a DockerIgnore>,
    /// How errors name it: "the build context", "stage build", ...
    pub label: String,
}

impl SourceTree<'_> {
    fn is_context(&self) -> bool {
        self.ignore.is_some()
    }

    /// Whether a path (absolute in the view) is left out by the ignore file.
    /// Never the context's root: `*` or `**` (with `!` exceptions) leave out
    /// what is in it, not the directory `COPY . .` copies from.
    fn ignored(&self, path: &str) -> bool {
        let relative = path.trim_matches('/');
        !matches!(relative, "" | ".")
            && self.ignore.is_some_and(|rules| rules.is_excluded(relative))
    }
}

/// A source path a pattern matched.
struct Matched {
    /// The file or directory, symlinks followed.
    entry: ViewEntry,
    /// The matched path, as written (symlinks not followed), absolute.
    path: String,
    /// Where it goes below the destination with `--parents`.
    parents_path: String,
}

/// Writes new files into the diff directory, creating parents as the
/// image already has them or, when it does not, with `default_owner`.
struct Writer<'a> {
    rootfs: &'a LayerView,
    diff: TreeWriter,
    diff_path: &'a Path,
    now: i64,
    default_owner: (u32, u32),
    /// The mode of directories the step creates: `--chmod`'s, as BuildKit
    /// gives them, or 0755.
    new_directory_mode: u32,
    ensured: HashSet<String>,
    hard_links: HashMap<(u64, u64), String>,
    /// What the step's key read of the context's entries, checked again
    /// as they are copied.
    hashed: Option<&'a HashMap<PathBuf, Hashed>>,
}

/// Runs a COPY or ADD step, writing into the empty directory `diff`.
/// A file `ADD` downloaded, kept as long as a copy of this refers to it.
#[derive(Clone)]
pub struct Downloaded {
    pub path: std::path::PathBuf,
    pub digest: kiln_cache::Digest,
    /// The server's Last-Modified, in seconds since the epoch.
    pub modified: Option<i64>,
    pub _keep: std::sync::Arc<tempfile::TempDir>,
}

/// Downloads a URL for `ADD`.
pub type Fetch<'a> = dyn Fn(&str) -> crate::Result<Downloaded> + 'a;

/// What a COPY or ADD reads, chosen once for both its cache key and the
/// copy: each source pattern's matches and the parsed `--exclude`. For the
/// build context (files a user may save at any moment) it also keeps what
/// the key hashed of every entry, which the copy checks again as it reads:
/// a file changed in between fails the step instead of giving a cache
/// record whose key describes other bytes than its layer.
pub struct Selection {
    /// One per path source, in the step's order.
    expansions: Vec<Expansion>,
    exclude: Option<DockerIgnore>,
    /// By host path, what the key read of each entry of the context.
    hashed: Option<HashMap<PathBuf, Hashed>>,
}

/// What a key read of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hashed {
    mode: u32,
    link: Option<PathBuf>,
    content: Option<Digest>,
}

/// Matches the step's path sources in `source` and parses its `--exclude`.
/// A source that is not a wildcard and matches nothing is an error.
pub fn select(step: &CopyStep, source: &SourceTree<'_>) -> crate::Result<Selection> {
    let exclude = if step.exclude.is_empty() {
        None
    } else {
        Some(DockerIgnore::parse(&step.exclude.join("\n"), "--exclude")?)
    };
    let mut expansions = Vec::new();
    for copy_source in &step.sources {
        if let CopySource::Path(pattern) = copy_source {
            let found = expand(source, pattern, step.parents)?;
            if found.matches.is_empty() && !has_wildcard(pattern) {
                bail!("{pattern}: not found in {}", source.label);
            }
            expansions.push(found);
        }
    }
    Ok(Selection {
        expansions,
        exclude,
        hashed: None,
    })
}

pub fn copy(
    step: &CopyStep,
    selection: Selection,
    source: &SourceTree<'_>,
    rootfs: &LayerView,
    diff: &Path,
    now: i64,
    fetch: &Fetch<'_>,
) -> crate::Result<()> {
    let chown = step
        .chown
        .as_ref()
        .map(|spec| resolve_owner(spec, rootfs))
        .transpose()?;
    let owner = match chown {
        Some(owner) => Some(owner),
        // Files from the build context belong to root; files from another
        // image keep their owners.
        None if source.is_context() => Some((0, 0)),
        None => None,
    };
    let Selection {
        expansions,
        exclude,
        hashed,
    } = selection;
    let mut expansions = expansions.into_iter();
    if step.sources.len() > 1 && !step.dest.ends_with('/') {
        bail!(
            "with more than one source the destination must be a directory ending with / (not {})",
            step.dest
        );
    }
    let mut matches = Vec::new();
    let mut inline = Vec::new();
    let mut downloads = Vec::new();
    // A `--parents` copy from an existing directory makes the destination
    // even when nothing below it matches, as BuildKit does.
    let mut make_dest = false;
    for copy_source in &step.sources {
        match copy_source {
            CopySource::Path(pattern) => {
                let found = expansions
                    .next()
                    .with_context(|| format!("{pattern} was not selected (a bug in kiln)"))?;
                make_dest |= step.parents && found.pivots > 0;
                matches.extend(found.matches);
            }
            CopySource::Inline(file) => inline.push(file),
            CopySource::Url(url) => {
                let downloaded = fetch(url).with_context(|| format!("downloading {url}"))?;
                if let Some(expected) = &step.checksum {
                    if !expected.starts_with("sha256:") {
                        bail!("--checksum={expected}: kiln checks sha256 checksums only");
                    }
                    if *expected != downloaded.digest.to_string() {
                        bail!(
                            "{url} does not match --checksum={expected}: its content is {}",
                            downloaded.digest
                        );
                    }
                }
                downloads.push((url_file_name(url), downloaded));
            }
            CopySource::Git(url) => {
                bail!("ADD {url}: git sources are not supported by this version of kiln")
            }
        }
    }
    let dest = step.dest.as_str();
    let dest_is_dir = dest.ends_with('/')
        || matches.len() + inline.len() + downloads.len() > 1
        || rootfs
            .resolve(dest, true)?
            .is_some_and(|e| e.metadata.is_dir());
    let mut writer = Writer {
        rootfs,
        diff: TreeWriter::open(diff).with_context(|| format!("opening {}", diff.display()))?,
        diff_path: diff,
        now,
        default_owner: owner.unwrap_or((0, 0)),
        new_directory_mode: step.chmod.unwrap_or(0o755),
        ensured: HashSet::new(),
        hard_links: HashMap::new(),
        hashed: hashed.as_ref(),
    };
    if make_dest {
        writer.ensure_directory(dest)?;
    }
    for found in matches {
        // Each source is copied on its own, as BuildKit does: hard links are
        // kept inside one copied directory, not between separate sources.
        writer.hard_links.clear();
        let overrides = Overrides {
            mode: step.chmod,
            owner,
            capabilities_only: source.is_context(),
        };
        if found.entry.metadata.is_dir() {
            let target = if step.parents {
                join(dest, &found.parents_path)
            } else {
                dest.trim_end_matches('/').to_string()
            };
            writer.copy_directory(
                source,
                &found.entry,
                &target,
                &overrides,
                exclude.as_ref(),
                !step.parents,
            )?;
            continue;
        }
        let target = if step.parents {
            join(dest, &found.parents_path)
        } else if dest_is_dir {
            join(dest, base_name(&found.path))
        } else {
            dest.to_string()
        };
        if step.unpack && source.is_context() && is_archive(&found.entry)? {
            let dir = if step.parents {
                parent_of(&target)
            } else if dest_is_dir {
                dest.trim_end_matches('/').to_string()
            } else {
                dest.to_string()
            };
            // An unpacked archive keeps its own owners unless --chown
            // says otherwise, as in BuildKit.
            writer.unpack(&found.entry, &dir, chown)?;
            continue;
        }
        writer.copy_entry(&found.entry, &target, &overrides)?;
    }
    for file in inline {
        let target = if dest_is_dir {
            join(dest, &file.path)
        } else {
            dest.to_string()
        };
        writer.write_inline(file, &target, step.chmod, owner)?;
    }
    for (name, downloaded) in downloads {
        let target = if dest_is_dir {
            join(dest, &name)
        } else {
            dest.to_string()
        };
        let (uid, gid) = owner.unwrap_or((0, 0));
        // As BuildKit: downloads are private (0600) unless --chmod says
        // otherwise, and dated by the server; remote archives are not
        // unpacked.
        let attributes = Attributes {
            mode: step.chmod.unwrap_or(0o600),
            uid,
            gid,
            mtime: downloaded.modified.unwrap_or(now),
            xattrs: Vec::new(),
        };
        writer.write_file(&downloaded.path, &target, &attributes)?;
    }
    Ok(())
}

/// The name a download gets in a destination directory: the last part of
/// the URL's path, decoded, as BuildKit names it.
fn url_file_name(url: &str) -> String {
    let last = url::Url::parse(url)
        .ok()
        .and_then(|url| {
            url.path_segments()?
                .rev()
                .find(|segment| !segment.is_empty())
                .map(|segment| {
                    percent_encoding::percent_decode_str(segment)
                        .decode_utf8_lossy()
                        .into_owned()
                })
        })
        .unwrap_or_default();
    if last.is_empty() || last == "." || last == ".." || last.contains('/') {
        "__unnamed__".to_string()
    } else {
        last
    }
}

/// Copies the whole file system `view` into the directory `dest`
/// (`--output type=local`), keeping owners, modes and times.
pub fn export_tree(view: LayerView, dest: &Path, now: i64) -> crate::Result<()> {
    let source = SourceTree {
        view,
        ignore: None,
        label: "the image".to_string(),
    };
    copy_subtree(&source, "/", dest, now)
}

/// Copies the directory or file `path` of `source` into the directory
/// `dest` (created when missing), as `COPY path /` would: owners, modes and
/// times kept, what the context's ignore file leaves out left out.
pub fn copy_subtree(
    source: &SourceTree<'_>,
    path: &str,
    dest: &Path,
    now: i64,
) -> crate::Result<()> {
    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    if source.view.layers().is_empty() {
        // An image without layers has an empty file system.
        return Ok(());
    }
    let step = CopyStep {
        from: kiln_frontend::graph::Source::Context,
        sources: vec![CopySource::Path(path.to_string())],
        dest: "/".to_string(),
        chown: None,
        chmod: None,
        link: false,
        parents: false,
        exclude: Vec::new(),
        unpack: false,
        checksum: None,
        keep_git_dir: false,
    };
    let no_downloads = |url: &str| -> crate::Result<Downloaded> {
        bail!("copying files downloads nothing ({url})")
    };
    copy(
        &step,
        select(&step, source)?,
        source,
        &LayerView::default(),
        dest,
        now,
        &no_downloads,
    )
}

/// Runs WORKDIR's directory creation, into the empty directory `diff`:
/// nothing when the directory exists already.
pub fn mkdir(step: &MkdirStep, rootfs: &LayerView, diff: &Path, now: i64) -> crate::Result<()> {
    match rootfs.resolve(&step.path, true)? {
        Some(existing) if existing.metadata.is_dir() => return Ok(()),
        Some(existing) => bail!(
            "{} exists in the image and is not a directory",
            existing.path
        ),
        None => {}
    }
    let owner = resolve_owner(&step.user, rootfs)
        .with_context(|| format!("creating {} for user {:?}", step.path, step.user))?;
    let mut writer = Writer {
        rootfs,
        diff: TreeWriter::open(diff).with_context(|| format!("opening {}", diff.display()))?,
        diff_path: diff,
        now,
        default_owner: owner,
        new_directory_mode: 0o755,
        ensured: HashSet::new(),
        hard_links: HashMap::new(),
        hashed: None,
    };
    let path = writer.place(&step.path)?;
    writer.ensure_parents(&path)?;
    writer.diff.create_dir(&path)?;
    let attributes = Attributes {
        mode: step.mode,
        uid: owner.0,
        gid: owner.1,
        mtime: now,
        xattrs: Vec::new(),
    };
    writer.diff.set_directory_attributes(&path, &attributes)?;
    Ok(())
}

/// What a copy does with an entry it finds below a directory it copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    Take,
    /// An ignored directory below which an exception may bring something
    /// back.
    OnlyBelow,
    Skip,
}

/// Whether `child`, found below the copied directory `root`, is copied,
/// by the context's ignore rules and `--exclude`.
fn choose(
    source: &SourceTree<'_>,
    root: &str,
    exclude: Option<&DockerIgnore>,
    child: &ViewEntry,
) -> crate::Result<Choice> {
    let is_dir = child.metadata.is_dir();
    let ignored = source.ignored(&child.path);
    let skip_ignored = !is_dir
        || source
            .ignore
            .is_some_and(|rules| rules.can_skip_dir(child.path.trim_start_matches('/')));
    if ignored && skip_ignored {
        return Ok(Choice::Skip);
    }
    let relative = child.path[root.len()..].trim_start_matches('/');
    if exclude.is_some_and(|rules| rules.is_excluded(relative)) {
        return Ok(Choice::Skip);
    }
    if child.lossy_name {
        bail!("{}: {UNSUPPORTED_NAME}", child.host.display());
    }
    Ok(if is_dir && ignored {
        Choice::OnlyBelow
    } else {
        Choice::Take
    })
}

/// A digest of what a COPY or ADD reads from `source`: for every path it
/// matches, the files below it that it would copy, each by its path
/// relative to the match, type, mode, link target and content (through the
/// stat cache). Not times or owners: touching a file changes nothing, and
/// files from the context belong to root (or to `--chown`) anyway.
pub fn sources_digest(
    step: &CopyStep,
    selection: &mut Selection,
    source: &SourceTree<'_>,
    stat_cache: &StatCache,
    files: &mut Vec<(String, String)>,
) -> crate::Result<Digest> {
    let mut hasher = KeyHasher::new("sources", None);
    let mut hashed = source.is_context().then(HashMap::new);
    let patterns = step.sources.iter().filter_map(|source| match source {
        CopySource::Path(pattern) => Some(pattern),
        _ => None,
    });
    for (pattern, expansion) in patterns.zip(&selection.expansions) {
        hasher.field("pattern", pattern);
        for found in &expansion.matches {
            hasher.field("match", &found.path);
            let mut entries = EntryHasher {
                hasher: &mut hasher,
                source,
                root: &found.entry.path,
                exclude: selection.exclude.as_ref(),
                stat_cache,
                files,
                hashed: hashed.as_mut(),
            };
            entries.hash(&found.entry)?;
        }
    }
    selection.hashed = hashed;
    Ok(hasher.finish())
}

/// A digest of the directory or file `path` of `source` and what is below
/// it, as [`sources_digest`] takes it (a bind mount's content).
pub fn tree_digest(
    source: &SourceTree<'_>,
    path: &str,
    stat_cache: &StatCache,
    files: &mut Vec<(String, String)>,
) -> crate::Result<Digest> {
    let mut hasher = KeyHasher::new("tree", None);
    if let Some(entry) = source.view.resolve(path, true)? {
        EntryHasher {
            hasher: &mut hasher,
            source,
            root: &entry.path,
            exclude: None,
            stat_cache,
            files,
            hashed: None,
        }
        .hash(&entry)?;
    }
    Ok(hasher.finish())
}

/// Hashes entries of a source and what is below them for a key.
struct EntryHasher<'h, 's> {
    hasher: &'h mut KeyHasher,
    source: &'h SourceTree<'s>,
    /// The matched directory: `--exclude` patterns are relative to it.
    root: &'h str,
    exclude: Option<&'h DockerIgnore>,
    stat_cache: &'h StatCache,
    /// For each entry, its path in the source and what was hashed of it
    /// (for `--explain`).
    files: &'h mut Vec<(String, String)>,
    /// What was read of each entry, by host path, for the copy to check.
    hashed: Option<&'h mut HashMap<PathBuf, Hashed>>,
}

impl EntryHasher<'_, '_> {
    fn hash(&mut self, entry: &ViewEntry) -> crate::Result<()> {
        let source = self.source;
        let hasher = &mut *self.hasher;
        let metadata = &entry.metadata;
        let relative = entry.path[self.root.len()..].trim_start_matches('/');
        hasher.field("path", relative);
        let mode = format!("{:o}", metadata.mode());
        hasher.field("mode", &mode);
        let file_type = metadata.file_type();
        let mut description = format!("mode {mode}");
        if !source.is_context() {
            // Files of a stage or an image keep their owners and extended
            // attributes (file capabilities among them) when copied; those
            // of the context become root's.
            let owner = format!("{}:{}", metadata.uid(), metadata.gid());
            hasher.field("owner", &owner);
            description.push_str(&format!(" owner {owner}"));
            for (name, value) in attributes_of(entry, &Overrides::NONE)?.xattrs {
                hasher.field("xattr", &name);
                hasher.field("xattr-value", &value);
                description.push_str(&format!(" xattr {name}"));
            }
        }
        let mut read = Hashed {
            mode: metadata.mode(),
            link: None,
            content: None,
        };
        if file_type.is_symlink() {
            let target = fs::read_link(&entry.host)
                .with_context(|| format!("reading the link {}", entry.path))?;
            hasher.field("link", target.as_os_str().as_encoded_bytes());
            description.push_str(&format!(" link {}", target.display()));
            read.link = Some(target);
        } else if file_type.is_file() {
            let digest = self
                .stat_cache
                .digest(&entry.host, metadata)
                .with_context(|| format!("reading {}", entry.path))?;
            hasher.field("content", digest.to_string());
            description.push_str(&format!(" content {digest}"));
            read.content = Some(digest);
        } else if file_type.is_block_device() || file_type.is_char_device() {
            hasher.field("device", metadata.rdev().to_string());
            description.push_str(&format!(" device {}", metadata.rdev()));
        }
        self.files
            .push((entry.path.trim_start_matches('/').to_string(), description));
        if let Some(hashed) = self.hashed.as_deref_mut() {
            hashed.insert(entry.host.clone(), read);
        }
        if file_type.is_dir() {
            for child in source
                .view
                .read_dir(&entry.path)
                .with_context(|| format!("reading {}", entry.path))?
            {
                match choose(source, self.root, self.exclude, &child)? {
                    Choice::Skip => {}
                    Choice::Take | Choice::OnlyBelow => self.hash(&child)?,
                }
            }
        }
        Ok(())
    }
}

/// What a directory copy takes from where, and how it changes it.
struct DirectoryCopy<'a> {
    source: &'a SourceTree<'a>,
    /// The copied directory: `--exclude` patterns are relative to it.
    root: &'a str,
    overrides: &'a Overrides,
    exclude: Option<&'a DockerIgnore>,
}

#[derive(Clone, Copy)]
struct Overrides {
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
    /// Of a file's extended attributes, keep only `security.capability`:
    /// for files of the build context, whose other attributes belong to the
    /// host (SELinux labels, a browser's download URL), as in BuildKit.
    capabilities_only: bool,
}

impl Overrides {
    /// An entry's own attributes, every extended attribute a layer holds.
    const NONE: Overrides = Overrides {
        mode: None,
        owner: None,
        capabilities_only: false,
    };
}

/// What a path of the image holds before a step writes it, counting what the
/// step has written already.
#[derive(PartialEq, Eq)]
enum Existing {
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
    fn place(&self, target: &str) -> crate::Result<String> {
        let resolved = self.rootfs.resolve_for_creation(target)?.with_context(|| {
            format!("cannot create {target}: one of its parents is not a directory in the image")
        })?;
        Ok(resolved.trim_start_matches('/').to_string())
    }

    /// Creates the parents of `path` in the diff, with the attributes the
    /// image gives them, or new ones.
    fn ensure_parents(&mut self, path: &str) -> crate::Result<()> {
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
    fn ensure_directory(&mut self, target: &str) -> crate::Result<()> {
        let path = self.place(target)?;
        if path.is_empty() || self.existing(&path, true)? == Existing::Directory {
            return Ok(());
        }
        self.check_directory_target(&path, true)?;
        self.ensure_parents(&format!("{path}/"))
    }

    fn copy_entry(
        &mut self,
        entry: &ViewEntry,
        target: &str,
        overrides: &Overrides,
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
        overrides: &Overrides,
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
        let now = Hashed {
            mode: entry.metadata.mode(),
            link: link.map(Path::to_path_buf),
            content,
        };
        if hashed.get(&entry.host) != Some(&now) {
            bail!(
                "{} changed while the step was copying it from the build context: build again once it is saved",
                entry.path.trim_start_matches('/')
            );
        }
        Ok(())
    }

    /// A directory the copy creates where the image has none: 0755 or
    /// `--chmod`'s mode, owned by `--chown`'s owner or root.
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
    fn copy_directory(
        &mut self,
        source: &SourceTree<'_>,
        entry: &ViewEntry,
        target: &str,
        overrides: &Overrides,
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

    fn unpack(
        &mut self,
        archive: &ViewEntry,
        dir: &str,
        owner: Option<(u32, u32)>,
    ) -> crate::Result<()> {
        let path = self.place(dir)?;
        self.ensure_parents(&format!("{path}/x"))?;
        let file =
            File::open(&archive.host).with_context(|| format!("reading {}", archive.path))?;
        let reader = kiln_cache::compress::decompressed(file)?;
        let options = ExtractOptions {
            mode: ExtractMode::Archive,
            owner,
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
            .with_context(|| format!("unpacking {}", archive.path))?;
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

    /// Writes the host file `path` at `target` with `attributes`.
    fn write_file(
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

    fn write_inline(
        &mut self,
        file: &InlineFile,
        target: &str,
        mode: Option<u32>,
        owner: Option<(u32, u32)>,
    ) -> crate::Result<()> {
        let path = self.place(target)?;
        self.ensure_parents(&path)?;
        self.check_file_target(&path, true)?;
        let (uid, gid) = owner.unwrap_or((0, 0));
        let attributes = Attributes {
            mode: mode.unwrap_or(file.mode),
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

/// An entry's attributes, with `--chmod` and `--chown` applied.
fn attributes_of(entry: &ViewEntry, overrides: &Overrides) -> crate::Result<Attributes> {
    let metadata = &entry.metadata;
    let (uid, gid) = overrides.owner.unwrap_or((metadata.uid(), metadata.gid()));
    let mut xattrs = read_xattrs(&entry.host)
        .with_context(|| format!("reading the extended attributes of {}", entry.path))?;
    xattrs.retain(|(name, _)| {
        belongs_in_layer(name) && (!overrides.capabilities_only || name == CAPABILITY_XATTR)
    });
    Ok(Attributes {
        mode: overrides.mode.unwrap_or(metadata.mode() & 0o7777),
        uid,
        gid,
        mtime: metadata.mtime(),
        xattrs,
    })
}

const CAPABILITY_XATTR: &str = "security.capability";

const UNSUPPORTED_NAME: &str =
    "file names that are not UTF-8 are not supported (rename it, or leave it out with .dockerignore)";

fn is_archive(entry: &ViewEntry) -> crate::Result<bool> {
    let file = File::open(&entry.host).with_context(|| format!("reading {}", entry.path))?;
    Ok(kiln_cache::compress::is_tar_archive(file))
}

fn has_wildcard(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

fn base_name(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

fn parent_of(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some((parent, _)) if !parent.is_empty() => parent.to_string(),
        _ => "/".to_string(),
    }
}

fn join(dir: &str, name: &str) -> String {
    let dir = dir.trim_end_matches('/');
    let name = name.trim_start_matches('/');
    if name.is_empty() {
        if dir.is_empty() {
            "/".to_string()
        } else {
            dir.to_string()
        }
    } else {
        format!("{dir}/{name}")
    }
}

/// A COPY source pattern as BuildKit reads it. With `--parents`, the part
/// before the first `/./` (the pivot; the root when there is none) names
/// the directories copied from, its wildcards resolved as for a plain COPY,
/// and the part after it is matched below each of them as an include
/// pattern, where a `**` component stands for any number of directories;
/// what it matches keeps its path from the pivot. Without `--parents` the
/// whole pattern is one path whose every component names one component.
struct SourcePattern {
    /// The pivot's components, `.` and `..` resolved.
    pivot: Vec<String>,
    /// The components after the pivot, `.` and `..` resolved.
    below: Vec<String>,
    /// Whether a `**` component matches any number of components.
    recursive: bool,
}

impl SourcePattern {
    fn parse(pattern: &str, parents: bool) -> SourcePattern {
        if !parents {
            return SourcePattern {
                pivot: Vec::new(),
                below: clean(pattern),
                recursive: false,
            };
        }
        // BuildKit cuts at the first `/./` and cleans both halves on their
        // own: `..` after the pivot cannot climb above it. A leading `./`
        // only says "in the context" (or the stage's root) and is no pivot.
        match pattern.split_once("/./") {
            Some((pivot, below)) => SourcePattern {
                pivot: clean(pivot),
                below: clean(below),
                recursive: true,
            },
            None => SourcePattern {
                pivot: Vec::new(),
                below: clean(pattern),
                recursive: true,
            },
        }
    }
}

/// The components of a path, `.` dropped and `..` taking the one before
/// it (never above the root), as Go's `path.Clean` does.
fn clean(path: &str) -> Vec<String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other.to_string()),
        }
    }
    parts
}

/// What a COPY source pattern matches.
struct Expansion {
    /// The matched paths, sorted, none below another (which copies it).
    matches: Vec<Matched>,
    /// How many of the pivot's paths are directories: a `--parents` copy
    /// from one makes the destination even when nothing below it matches.
    pivots: usize,
}

/// The paths of `source` a COPY pattern matches; symlinks in the matched
/// path are followed (inside the source), not in what is copied.
fn expand(source: &SourceTree<'_>, pattern: &str, parents: bool) -> crate::Result<Expansion> {
    let pattern = SourcePattern::parse(pattern, parents);
    let mut pivots = vec!["/".to_string()];
    for (index, part) in pattern.pivot.iter().enumerate() {
        let last = index + 1 == pattern.pivot.len() && pattern.below.is_empty();
        pivots = match_component(source, &pivots, part, false, last)?;
    }
    let mut existing_pivots = 0;
    let mut candidates = Vec::new();
    for pivot in pivots {
        if source
            .view
            .resolve(&pivot, true)?
            .is_some_and(|entry| entry.metadata.is_dir())
        {
            existing_pivots += 1;
        }
        let mut paths = vec![pivot.clone()];
        for (index, part) in pattern.below.iter().enumerate() {
            let last = index + 1 == pattern.below.len();
            paths = match_component(source, &paths, part, pattern.recursive, last)?;
        }
        candidates.extend(paths.into_iter().map(|path| (path, pivot.len())));
    }
    candidates.sort();
    candidates.dedup();
    let mut kept = HashSet::new();
    let mut matches = Vec::new();
    for (path, pivot_len) in candidates {
        // With `**`, a directory and what is below it may both match: the
        // directory's copy already holds the rest. Sorted, a directory
        // comes before what is below it.
        if path
            .match_indices('/')
            .any(|(at, _)| at > 0 && kept.contains(&path[..at]))
        {
            continue;
        }
        if source.ignored(&path) {
            continue;
        }
        let Some(entry) = source.view.resolve(&path, true)? else {
            continue;
        };
        let parents_path = path[pivot_len..].trim_start_matches('/').to_string();
        kept.insert(path.clone());
        matches.push(Matched {
            entry,
            path,
            parents_path,
        });
    }
    Ok(Expansion {
        matches,
        pivots: existing_pivots,
    })
}

/// The paths below each of `bases` that one pattern component matches. A
/// name without wildcards is taken as is (whether it exists is checked at
/// the end). With `recursive`, `**` matches the base itself and every
/// directory below it, symlinks not followed (as BuildKit walks the tree).
/// Unless the component is the `last`, directories the ignore file leaves
/// out entirely are dropped, as nothing below them can be copied.
fn match_component(
    source: &SourceTree<'_>,
    bases: &[String],
    part: &str,
    recursive: bool,
    last: bool,
) -> crate::Result<Vec<String>> {
    let mut found = Vec::new();
    for base in bases {
        if recursive && part == "**" {
            found.push(base.clone());
            descendant_directories(source, base, &mut found)?;
        } else if has_wildcard(part) {
            let dir = source.view.resolve(base, true)?;
            let Some(dir) = dir.filter(|d| d.metadata.is_dir()) else {
                continue;
            };
            for child in source.view.read_dir(&dir.path)? {
                let name = base_name(&child.path);
                if glob_match(part, name) {
                    if child.lossy_name {
                        bail!("{}: {UNSUPPORTED_NAME}", child.host.display());
                    }
                    found.push(join(base, name));
                }
            }
        } else {
            found.push(join(base, &unescape(part)));
        }
    }
    if !last {
        found.retain(|path| may_hold_matches(source, path));
    }
    Ok(found)
}

/// Adds every directory below `base` (a path as written) to `found`,
/// skipping what the ignore file leaves out entirely.
fn descendant_directories(
    source: &SourceTree<'_>,
    base: &str,
    found: &mut Vec<String>,
) -> crate::Result<()> {
    let Some(dir) = source
        .view
        .resolve(base, true)?
        .filter(|d| d.metadata.is_dir())
    else {
        return Ok(());
    };
    let mut pending = vec![(base.to_string(), dir.path)];
    while let Some((written, resolved)) = pending.pop() {
        for child in source.view.read_dir(&resolved)? {
            // `metadata` is the child's own (lstat): a symlink to a
            // directory is not walked into, which also keeps loops out.
            if !child.metadata.is_dir() {
                continue;
            }
            let path = join(&written, base_name(&child.path));
            if !may_hold_matches(source, &path) {
                continue;
            }
            if child.lossy_name {
                bail!("{}: {UNSUPPORTED_NAME}", child.host.display());
            }
            found.push(path.clone());
            pending.push((path, child.path));
        }
    }
    Ok(())
}

/// Whether something at or below `path` may be copied: false for a
/// directory the ignore file leaves out with no exception below it.
fn may_hold_matches(source: &SourceTree<'_>, path: &str) -> bool {
    !source.ignored(path)
        || source
            .ignore
            .is_some_and(|rules| !rules.can_skip_dir(path.trim_start_matches('/')))
}

fn unescape(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    let mut chars = part.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            other => out.push(other),
        }
    }
    out
}

/// Go's `filepath.Match` for one path component: `*`, `?`, `[...]`
/// classes (with `^` negation and ranges) and `\` escapes.
fn glob_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    match_from(&pattern, &name)
}

/// Matches without recursion: each token but `*` matches exactly one
/// character, so on a mismatch only the last `*` needs to take one more
/// character. Time is bounded by the product of the lengths, however many
/// stars the pattern has.
fn match_from(pattern: &[char], name: &[char]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where to resume after the last `*`: the pattern after it, and the
    // name position it has covered up to.
    let mut resume: Option<(usize, usize)> = None;
    while n < name.len() {
        if pattern.get(p) == Some(&'*') {
            p += 1;
            resume = Some((p, n));
            continue;
        }
        if let Some(consumed) = single_match(&pattern[p..], name[n]) {
            p += consumed;
            n += 1;
            continue;
        }
        match resume {
            Some((after_star, covered)) => {
                p = after_star;
                n = covered + 1;
                resume = Some((after_star, n));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Whether the pattern's first token (not `*`) matches `c`; returns how
/// many pattern characters it takes.
fn single_match(pattern: &[char], c: char) -> Option<usize> {
    match pattern.first()? {
        '?' => Some(1),
        '[' => match class_match(&pattern[1..], c) {
            Some((true, after)) => Some(pattern.len() - after.len()),
            _ => None,
        },
        '\\' if pattern.len() > 1 => (pattern[1] == c).then_some(2),
        &literal => (literal == c).then_some(1),
    }
}

/// Matches `c` against the class starting after `[`; returns whether it
/// matched and the pattern after `]`, or `None` for a malformed class.
fn class_match(class: &[char], c: char) -> Option<(bool, &[char])> {
    let (negated, mut rest) = match class.first() {
        Some('^') | Some('!') => (true, &class[1..]),
        _ => (false, class),
    };
    let mut matched = false;
    let mut first = true;
    loop {
        match rest.first()? {
            ']' if !first => return Some((matched != negated, &rest[1..])),
            _ => {}
        }
        first = false;
        let (low, after) = class_char(rest)?;
        let (high, after) =
            if after.first() == Some(&'-') && after.get(1).is_some_and(|&c| c != ']') {
                class_char(&after[1..])?
            } else {
                (low, after)
            };
        if low <= c && c <= high {
            matched = true;
        }
        rest = after;
    }
}

fn class_char(pattern: &[char]) -> Option<(char, &[char])> {
    match pattern {
        ['\\', escaped, rest @ ..] => Some((*escaped, rest)),
        [c, rest @ ..] => Some((*c, rest)),
        [] => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_follow_go_rules() {
        let cases = [
            ("*.txt", "a.txt", true),
            ("*.txt", "a.md", false),
            ("file?", "file1", true),
            ("file?", "file10", false),
            ("[a-c]*", "banana", true),
            ("[^a-c]*", "banana", false),
            ("[!a-c]*", "date", true),
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("[", "[", false),
            ("a*", "a", true),
            ("*b", "ab", true),
            ("a*b*", "ab", true),
            ("*?", "", false),
            ("*x*", "abxab", true),
            ("a*[0-9]", "abc7", true),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(glob_match(pattern, name), expected, "{pattern} vs {name}");
        }
        // Many stars against a long name that never matches: a matcher
        // that backtracks into every star would take years here.
        assert!(!glob_match("*a*a*a*a*a*a*a*a*a*a*a*a*b", &"a".repeat(60)));
    }

    /// A source tree holding the empty files `files` (and their parents).
    fn tree(files: &[&str]) -> (tempfile::TempDir, SourceTree<'static>) {
        let dir = tempfile::tempdir().expect("temporary directory");
        for file in files {
            let path = dir.path().join(file);
            fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            fs::write(&path, "").expect("write");
        }
        let source = SourceTree {
            view: LayerView::new(vec![dir.path().to_path_buf()]),
            ignore: None,
            label: "the test tree".to_string(),
        };
        (dir, source)
    }

    /// Each match as (path, where it goes below the destination).
    fn matched(source: &SourceTree<'_>, pattern: &str, parents: bool) -> Vec<(String, String)> {
        expand(source, pattern, parents)
            .expect("expand")
            .matches
            .into_iter()
            .map(|found| (found.path, found.parents_path))
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(path, below)| (path.to_string(), below.to_string()))
            .collect()
    }

    const FILES: &[&str] = &[
        "test/a/b/c/d/foo",
        "test/a/b/c/d/e/bay",
        "test/a/b2/c/d/e/bar",
        "test/a/b/c2/d/e/baz",
        "test/a/b/c2/d/e2/baz",
    ];

    #[test]
    fn parents_patterns_split_at_the_first_pivot() {
        let pattern = SourcePattern::parse("/test/a/b*/./c/**/e", true);
        assert_eq!(pattern.pivot, ["test", "a", "b*"]);
        assert_eq!(pattern.below, ["c", "**", "e"]);
        assert!(pattern.recursive);
        // Later pivots are plain `.`; `..` cannot climb above the pivot.
        let pattern = SourcePattern::parse("/test/a/./b/./c/../../../d", true);
        assert_eq!(pattern.pivot, ["test", "a"]);
        assert_eq!(pattern.below, ["d"]);
        // A leading `./` and a trailing `/.` are no pivot.
        let pattern = SourcePattern::parse("./test/a/.", true);
        assert!(pattern.pivot.is_empty());
        assert_eq!(pattern.below, ["test", "a"]);
        // Without --parents `/./` means nothing and `**` is a plain `*`.
        let pattern = SourcePattern::parse("/test/./a/**", false);
        assert!(pattern.pivot.is_empty());
        assert_eq!(pattern.below, ["test", "a", "**"]);
        assert!(!pattern.recursive);
    }

    #[test]
    fn parents_keep_the_path_from_a_wildcard_pivot() {
        let (_dir, source) = tree(FILES);
        assert_eq!(
            matched(&source, "/test/a/b*/./c/**/e", true),
            pairs(&[("/test/a/b/c/d/e", "c/d/e"), ("/test/a/b2/c/d/e", "c/d/e"),])
        );
        assert_eq!(
            matched(&source, "/test/a/./*/c", true),
            pairs(&[("/test/a/b/c", "b/c"), ("/test/a/b2/c", "b2/c")])
        );
        assert_eq!(
            matched(&source, "/test/a/b/c/d", true),
            pairs(&[("/test/a/b/c/d", "test/a/b/c/d")])
        );
    }

    #[test]
    fn double_star_matches_any_number_of_directories() {
        let (_dir, source) = tree(FILES);
        // Two directories deep, and none at all.
        assert_eq!(
            matched(&source, "/test/a/b2/c/**/bar", true),
            pairs(&[("/test/a/b2/c/d/e/bar", "test/a/b2/c/d/e/bar")])
        );
        assert_eq!(
            matched(&source, "/test/a/b/./c2/**/d", true),
            pairs(&[("/test/a/b/c2/d", "c2/d")])
        );
        assert_eq!(
            matched(&source, "/test/a/b/./c*/**/baz", true),
            pairs(&[
                ("/test/a/b/c2/d/e/baz", "c2/d/e/baz"),
                ("/test/a/b/c2/d/e2/baz", "c2/d/e2/baz"),
            ])
        );
        // What is below a match is copied with it, not again on its own.
        assert_eq!(
            matched(&source, "/test/a/./b2/**", true),
            pairs(&[("/test/a/b2", "b2")])
        );
        // Without --parents, `**` stands for one name, as in Go's
        // filepath.Match.
        assert!(matched(&source, "/test/a/b2/c/**/bar", false).is_empty());
        assert_eq!(
            matched(&source, "/test/a/b2/c/**/e", false),
            pairs(&[("/test/a/b2/c/d/e", "test/a/b2/c/d/e")])
        );
    }

    #[test]
    fn double_star_does_not_follow_symlinks() {
        let (dir, source) = tree(FILES);
        std::os::unix::fs::symlink("/test/a/b2", dir.path().join("test/a/b/loop"))
            .expect("symlink");
        assert!(matched(&source, "/test/a/b/**/bar", true).is_empty());
    }

    #[test]
    fn pivots_are_counted_even_when_nothing_below_matches() {
        let (_dir, source) = tree(FILES);
        let found = expand(&source, "/test/a/b/./c3*", true).expect("expand");
        assert!(found.matches.is_empty());
        assert_eq!(found.pivots, 1);
        let found = expand(&source, "/test/a/b3*/./c", true).expect("expand");
        assert_eq!(found.pivots, 0);
        // Without a pivot the copy is from the root.
        let found = expand(&source, "/test/a/b3*/c", true).expect("expand");
        assert!(found.matches.is_empty());
        assert_eq!(found.pivots, 1);
    }

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
            from: kiln_frontend::graph::Source::Context,
            sources: vec![CopySource::Path("payload.tar".to_string())],
            dest: dest.to_string(),
            chown: None,
            chmod: None,
            link: false,
            parents: false,
            exclude: Vec::new(),
            unpack: true,
            checksum: None,
            keep_git_dir: false,
        };
        let no_downloads =
            |url: &str| -> crate::Result<Downloaded> { bail!("no download of {url}") };
        let rootfs = LayerView::new(vec![layer]);
        let selection = select(&step, &source).expect("select");
        copy(&step, selection, &source, &rootfs, &diff, 0, &no_downloads).expect("ADD");
        (dir, diff)
    }

    fn copy_step(sources: &[&str], dest: &str) -> CopyStep {
        CopyStep {
            from: kiln_frontend::graph::Source::Context,
            sources: sources
                .iter()
                .map(|source| CopySource::Path(source.to_string()))
                .collect(),
            dest: dest.to_string(),
            chown: None,
            chmod: None,
            link: false,
            parents: false,
            exclude: Vec::new(),
            unpack: false,
            checksum: None,
            keep_git_dir: false,
        }
    }

    /// Keys a COPY from a context, lets `meanwhile` change the context,
    /// then copies with the same selection.
    fn key_then_copy(
        files: &[(&str, &str)],
        step: &CopyStep,
        meanwhile: impl FnOnce(&Path),
    ) -> crate::Result<(tempfile::TempDir, PathBuf)> {
        let temporary = tempfile::tempdir().expect("temporary directory");
        let dir = temporary.path();
        let context = dir.join("context");
        let diff = dir.join("diff");
        for (path, content) in files {
            let path = context.join(path);
            fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            fs::write(&path, content).expect("write");
        }
        fs::create_dir(&diff).expect("mkdir");
        let store = kiln_cache::Store::open(&dir.join("store")).expect("store");
        let stat_cache = StatCache::load(&store);
        let ignore = DockerIgnore::parse("", ".dockerignore").expect("no rules");
        let source = SourceTree {
            view: LayerView::new(vec![context.clone()]),
            ignore: Some(&ignore),
            label: "the build context".to_string(),
        };
        let mut selection = select(step, &source).expect("select");
        sources_digest(step, &mut selection, &source, &stat_cache, &mut Vec::new()).expect("key");
        meanwhile(&context);
        let no_downloads =
            |url: &str| -> crate::Result<Downloaded> { bail!("no download of {url}") };
        copy(
            step,
            selection,
            &source,
            &LayerView::default(),
            &diff,
            0,
            &no_downloads,
        )?;
        Ok((temporary, diff))
    }

    #[test]
    fn a_copy_of_what_its_key_read_succeeds() {
        let step = copy_step(&["app.conf", "src"], "/app/");
        let files = [("app.conf", "one"), ("src/main.c", "int main;")];
        let (_dir, diff) = key_then_copy(&files, &step, |_| {}).expect("copy");
        assert_eq!(
            fs::read_to_string(diff.join("app/main.c")).expect("copied"),
            "int main;"
        );
        assert_eq!(
            fs::read_to_string(diff.join("app/app.conf")).expect("copied"),
            "one"
        );
    }

    #[test]
    fn a_file_saved_between_the_key_and_the_copy_fails_the_step() {
        let step = copy_step(&["app.conf"], "/app.conf");
        let error = key_then_copy(&[("app.conf", "one")], &step, |context| {
            fs::write(context.join("app.conf"), "two").expect("save");
        })
        .expect_err("the copy must not take bytes its key did not read");
        assert!(
            error
                .to_string()
                .contains("app.conf changed while the step was copying it"),
            "{error}"
        );
    }

    #[test]
    fn files_added_or_changed_in_a_copied_directory_fail_the_step() {
        let step = copy_step(&["src"], "/src/");
        let files = [("src/a.c", "a"), ("src/b.c", "b")];
        let added = key_then_copy(&files, &step, |context| {
            fs::write(context.join("src/c.c"), "new").expect("add");
        })
        .expect_err("a file the key never read");
        assert!(added.to_string().contains("src/c.c changed"), "{added}");
        let chmodded = key_then_copy(&files, &step, |context| {
            fs::set_permissions(
                context.join("src/b.c"),
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )
            .expect("chmod");
        })
        .expect_err("a mode the key never read");
        assert!(
            chmodded.to_string().contains("src/b.c changed"),
            "{chmodded}"
        );
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

    #[test]
    fn path_helpers() {
        assert_eq!(join("/dst/", "a"), "/dst/a");
        assert_eq!(join("/", "a/b"), "/a/b");
        assert_eq!(join("/dst", ""), "/dst");
        assert_eq!(base_name("/a/b/"), "b");
        assert_eq!(parent_of("/a/b"), "/a");
        assert_eq!(parent_of("/a"), "/");
        assert_eq!(unescape("a\\*b"), "a*b");
        assert_eq!(clean("/a/./b/../../../c/"), ["c"]);
    }
}
