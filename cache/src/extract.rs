//! Safe extraction of tar archives into a directory.
//!
//! Writes go through a [`TreeWriter`], so no entry can be written outside
//! the target directory, whatever symlinks the archive (or an earlier entry
//! of it) creates: an entry whose path climbs out (`..`), is absolute, or
//! passes through a link that leaves the target is refused and named in the
//! error. Device nodes, fifos, hard links, symlinks, owners, modes,
//! modification times and extended attributes are kept. In
//! [`ExtractMode::Layer`], whiteouts become overlayfs whiteouts.

use std::io::Read;
use std::path::Path;

use rustix::fs::FileType;

use crate::error::Error;
use crate::limits::{LayerBudget, Limits};
use crate::tree::{split_parent, Attributes, TreeError, TreeWriter};
use crate::whiteout::{OPAQUE_WHITEOUT, WHITEOUT_PREFIX};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractMode {
    /// An image layer: `.wh.NAME` entries become overlayfs whiteouts and
    /// `.wh..wh..opq` marks its directory opaque.
    Layer,
    /// A plain archive (`ADD`): entries are written as they are.
    Archive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractOptions {
    pub mode: ExtractMode,
    /// Owner for every entry instead of the one recorded in the archive.
    pub owner: Option<(u32, u32)>,
    /// What the archive may unpack to, and the space to leave free.
    pub limits: Limits,
}

impl ExtractOptions {
    /// An image layer, within `limits` (the store's).
    pub fn layer(limits: Limits) -> Self {
        ExtractOptions {
            mode: ExtractMode::Layer,
            owner: None,
            limits,
        }
    }
}

/// An error a [`Placement`] gives for an entry it cannot place.
pub type PlacementError = Box<dyn std::error::Error + Send + Sync>;

/// Where the entries of an archive go in the target directory.
pub trait Placement {
    /// The path in the target where the entry at `path` (relative, free of
    /// `..`) is written, with the directories leading to it made. Called
    /// once per entry, in the archive's order, before it is written;
    /// `changes_paths` says that it is a directory or symlink, which may
    /// change where later paths through it lead.
    fn entry(&mut self, path: &str, changes_paths: bool) -> Result<String, PlacementError>;

    /// The path in the target of `path` (relative, free of `..`), an entry
    /// that a hard link names.
    fn link_target(&mut self, path: &str) -> Result<String, PlacementError>;
}

/// Entries go where their paths say, below the target's root.
struct AsWritten;

impl Placement for AsWritten {
    fn entry(&mut self, path: &str, _changes_paths: bool) -> Result<String, PlacementError> {
        Ok(path.to_string())
    }

    fn link_target(&mut self, path: &str) -> Result<String, PlacementError> {
        Ok(path.to_string())
    }
}

/// Extracts the (uncompressed) tar stream `reader` into the directory
/// `dest`. Returns the number of entries written.
pub fn extract<R: Read>(reader: R, dest: &Path, options: &ExtractOptions) -> Result<u64, Error> {
    extract_with(reader, dest, options, &mut AsWritten)
}

/// Like [`extract`], with each entry written where `placement` says. The
/// writes stay inside `dest` whatever it says.
pub fn extract_with<R: Read>(
    reader: R,
    dest: &Path,
    options: &ExtractOptions,
    placement: &mut dyn Placement,
) -> Result<u64, Error> {
    let tree = TreeWriter::open(dest).map_err(|e| Error::io(dest, e))?;
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| Error::InvalidArchive(e.to_string()))?;
    let mut directories: Vec<(String, Attributes)> = Vec::new();
    let mut written = 0;
    let mut last = String::from("(start of the archive)");
    let mut budget = LayerBudget::new(dest, options.limits)?;
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::InvalidArchive(format!("{e} after entry {last:?}")))?;
        last = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let size = if entry.header().entry_type().is_file() {
            entry.size()
        } else {
            0
        };
        budget.admit(&last, size)?;
        written += extract_entry(&tree, placement, entry, options, &mut directories)?;
    }
    // Deepest first: adding entries changes a directory's time.
    for (path, attributes) in directories.iter().rev() {
        tree.set_directory_attributes(path, attributes)
            .map_err(|e| refuse(path, e))?;
    }
    Ok(written)
}

fn refuse(entry: &str, reason: impl ToString) -> Error {
    Error::UnsafeEntry {
        entry: entry.to_string(),
        reason: reason.to_string(),
    }
}

/// Checks an entry path and returns it relative to the root, without `./`
/// and trailing `/`. Absolute paths and `..` components are refused.
fn relative_path(raw: &str) -> Result<String, Error> {
    if raw.starts_with('/') {
        return Err(refuse(raw, "absolute paths are not allowed"));
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(refuse(raw, "`..` would leave the target directory")),
            other => parts.push(other),
        }
    }
    Ok(parts.join("/"))
}

fn under(prefix: &str, path: &str) -> String {
    if prefix.is_empty() {
        path.to_string()
    } else {
        format!("{prefix}/{path}")
    }
}

fn attributes_of<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    options: &ExtractOptions,
) -> Result<Attributes, Error> {
    let header = entry.header();
    let mut attributes = Attributes {
        mode: header.mode().unwrap_or(0o644) & 0o7777,
        uid: header.uid().unwrap_or(0) as u32,
        gid: header.gid().unwrap_or(0) as u32,
        mtime: header.mtime().unwrap_or(0) as i64,
        xattrs: Vec::new(),
    };
    if let Some(extensions) = entry
        .pax_extensions()
        .map_err(|e| Error::InvalidArchive(e.to_string()))?
    {
        for extension in extensions {
            let extension = extension.map_err(|e| Error::InvalidArchive(e.to_string()))?;
            let Ok(key) = extension.key() else { continue };
            let value = extension.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.split('.').next()?.parse::<i64>().ok())
                    .unwrap_or(0)
            };
            match key {
                "uid" => attributes.uid = number() as u32,
                "gid" => attributes.gid = number() as u32,
                "mtime" => attributes.mtime = number(),
                _ => {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                        attributes.xattrs.push((name.to_string(), value.to_vec()));
                    }
                }
            }
        }
    }
    if let Some((uid, gid)) = options.owner {
        attributes.uid = uid;
        attributes.gid = gid;
    }
    Ok(attributes)
}

fn extract_entry<R: Read>(
    tree: &TreeWriter,
    placement: &mut dyn Placement,
    mut entry: tar::Entry<'_, R>,
    options: &ExtractOptions,
    directories: &mut Vec<(String, Attributes)>,
) -> Result<u64, Error> {
    let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let relative = relative_path(&raw_path)?;
    let kind = entry.header().entry_type();
    let attributes = attributes_of(&mut entry, options)?;
    if relative.is_empty() {
        // The root itself: its metadata belongs to whoever made it.
        return if kind.is_dir() {
            Ok(0)
        } else {
            Err(refuse(&raw_path, "only a directory can replace the root"))
        };
    }
    let changes_paths = matches!(kind, tar::EntryType::Directory | tar::EntryType::Symlink);
    let path = placement
        .entry(&relative, changes_paths)
        .map_err(|source| Error::Place {
            entry: raw_path.clone(),
            source,
        })?;
    let failed = |e: TreeError| match e {
        TreeError::Io { .. } => Error::Extract {
            entry: raw_path.clone(),
            source: e,
        },
        unsafe_entry => refuse(&raw_path, unsafe_entry),
    };
    let (parent, name) = split_parent(&path);
    if options.mode == ExtractMode::Layer && name.starts_with(WHITEOUT_PREFIX) {
        if name == OPAQUE_WHITEOUT {
            tree.set_opaque(parent).map_err(failed)?;
        } else {
            let hidden = &name[WHITEOUT_PREFIX.len()..];
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(refuse(&raw_path, "whiteout without a valid name"));
            }
            tree.create_whiteout(&under(parent, hidden))
                .map_err(failed)?;
        }
        return Ok(1);
    }
    let link_target = || {
        entry
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .ok_or_else(|| refuse(&raw_path, "link without a target"))
    };
    match kind {
        tar::EntryType::Directory => {
            tree.create_dir(&path).map_err(failed)?;
            directories.push((path, attributes));
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            tree.create_file(&path, &mut entry, &attributes)
                .map_err(failed)?;
        }
        tar::EntryType::Link => {
            let target_raw = link_target()?;
            let target = relative_path(&target_raw).map_err(|_| {
                refuse(
                    &raw_path,
                    format!("hard link target {target_raw:?} is outside the target directory"),
                )
            })?;
            let target = placement
                .link_target(&target)
                .map_err(|source| Error::Place {
                    entry: raw_path.clone(),
                    source,
                })?;
            tree.create_hard_link(&path, &target).map_err(failed)?;
        }
        tar::EntryType::Symlink => {
            let target = link_target()?;
            tree.create_symlink(&path, &target, &attributes)
                .map_err(failed)?;
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            let file_type = match kind {
                tar::EntryType::Char => FileType::CharacterDevice,
                tar::EntryType::Block => FileType::BlockDevice,
                _ => FileType::Fifo,
            };
            let header = entry.header();
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            tree.create_node(&path, file_type, major, minor, &attributes)
                .map_err(failed)?;
        }
        tar::EntryType::XGlobalHeader => return Ok(0),
        other => {
            return Err(refuse(
                &raw_path,
                format!("unsupported entry type {other:?}"),
            ))
        }
    }
    Ok(1)
}
