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
use crate::pack::{OPAQUE_WHITEOUT, WHITEOUT_PREFIX};
use crate::tree::{split_parent, Attributes, TreeError, TreeWriter};

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
}

impl ExtractOptions {
    pub fn layer() -> Self {
        ExtractOptions {
            mode: ExtractMode::Layer,
            owner: None,
        }
    }
}

/// Extracts the (uncompressed) tar stream `reader` into the directory
/// `dest`, below `prefix` (a relative path, empty for `dest` itself).
/// Returns the number of entries written.
pub fn extract<R: Read>(reader: R, dest: &Path, options: &ExtractOptions) -> Result<u64, Error> {
    extract_into(reader, dest, "", options)
}

/// Like [`extract`], with the entries placed below `prefix` inside `dest`.
pub fn extract_into<R: Read>(
    reader: R,
    dest: &Path,
    prefix: &str,
    options: &ExtractOptions,
) -> Result<u64, Error> {
    let tree = TreeWriter::open(dest).map_err(|e| Error::io(dest, e))?;
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| Error::InvalidArchive(e.to_string()))?;
    let mut directories: Vec<(String, Attributes)> = Vec::new();
    let mut written = 0;
    let mut last = String::from("(start of the archive)");
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::InvalidArchive(format!("{e} after entry {last:?}")))?;
        last = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        written += extract_entry(&tree, prefix, entry, options, &mut directories)?;
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
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}/{path}"),
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
    prefix: &str,
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
    let path = under(prefix, &relative);
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
            tree.create_hard_link(&path, &under(prefix, &target))
                .map_err(failed)?;
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
