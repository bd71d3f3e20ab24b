//! Safe extraction of tar archives into a directory.
//!
//! Every path is resolved with `openat2(RESOLVE_BENEATH)` from the target
//! directory, so no entry can be written outside it, whatever symlinks the
//! archive (or an earlier entry of it) creates: an entry whose path climbs
//! out (`..`), is absolute, or passes through a link that leaves the target
//! is refused and named in the error. Device nodes, fifos, hard links,
//! symlinks, owners, modes, modification times and extended attributes are
//! kept. In [`ExtractMode::Layer`], whiteouts become overlayfs whiteouts.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::error::Error;
use crate::pack::{OPAQUE_WHITEOUT, OPAQUE_XATTR, WHITEOUT_PREFIX};

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

/// Extracts the (uncompressed) tar stream `reader` into the directory `dest`.
/// Returns the number of entries written.
pub fn extract<R: Read>(reader: R, dest: &Path, options: &ExtractOptions) -> Result<u64, Error> {
    let root: OwnedFd = rustix::fs::open(
        dest,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(dest, e.into()))?;
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| Error::InvalidArchive(e.to_string()))?;
    let mut extractor = Extractor {
        root,
        options: *options,
        directories: Vec::new(),
        written: 0,
    };
    let mut last = String::from("(start of the archive)");
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::InvalidArchive(format!("{e} after entry {last:?}")))?;
        last = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        extractor.entry(entry)?;
    }
    extractor.finish_directories()?;
    Ok(extractor.written)
}

struct Extractor {
    root: OwnedFd,
    options: ExtractOptions,
    /// Directory metadata is applied last: adding entries changes a
    /// directory's modification time.
    directories: Vec<(String, Metadata)>,
    written: u64,
}

#[derive(Debug, Clone)]
struct Metadata {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn refuse(entry: &str, reason: impl Into<String>) -> Error {
    Error::UnsafeEntry {
        entry: entry.to_string(),
        reason: reason.into(),
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

fn split_parent(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", path),
    }
}

fn timestamps(mtime: i64) -> Timestamps {
    let time = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: time,
        last_modification: time,
    }
}

impl Extractor {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), Error> {
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = relative_path(&raw_path)?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mut metadata = Metadata {
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
                };
                match key {
                    "uid" => metadata.uid = number().unwrap_or(0) as u32,
                    "gid" => metadata.gid = number().unwrap_or(0) as u32,
                    "mtime" => metadata.mtime = number().unwrap_or(0),
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                            metadata.xattrs.push((name.to_string(), value.to_vec()));
                        }
                    }
                }
            }
        }
        if let Some((uid, gid)) = self.options.owner {
            metadata.uid = uid;
            metadata.gid = gid;
        }
        if path.is_empty() {
            // The root itself: only directories make sense, and the root's
            // own metadata belongs to whoever made it.
            return if kind.is_dir() {
                Ok(())
            } else {
                Err(refuse(&raw_path, "only a directory can replace the root"))
            };
        }
        let (parent_path, name) = split_parent(&path);
        if self.options.mode == ExtractMode::Layer && name.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(&raw_path, parent_path, name);
        }
        let parent = self.directory(&raw_path, parent_path)?;
        let existing = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW).ok();
        let existing_is_dir = existing
            .as_ref()
            .is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory);
        if existing.is_some() && !(kind.is_dir() && existing_is_dir) {
            remove_all(&parent, name).map_err(|e| {
                refuse(&raw_path, format!("cannot replace the existing entry: {e}"))
            })?;
        }
        let io_error = |e: Errno| refuse(&raw_path, io::Error::from(e).to_string());
        match kind {
            tar::EntryType::Directory => {
                if !existing_is_dir {
                    rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700))
                        .map_err(io_error)?;
                }
                self.directories.push((path.clone(), metadata));
                self.written += 1;
                return Ok(());
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let fd = rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(io_error)?;
                let mut file = std::fs::File::from(fd);
                io::copy(&mut entry, &mut file).map_err(|e| refuse(&raw_path, e.to_string()))?;
            }
            tar::EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| refuse(&raw_path, "hard link without a target"))?;
                let target = relative_path(&target_raw).map_err(|_| {
                    refuse(
                        &raw_path,
                        format!("hard link target {target_raw:?} is outside the target directory"),
                    )
                })?;
                let (target_parent_path, target_name) = split_parent(&target);
                let target_parent = self.open_beneath(&raw_path, target_parent_path)?;
                rustix::fs::linkat(&target_parent, target_name, &parent, name, AtFlags::empty())
                    .map_err(io_error)?;
                self.written += 1;
                return Ok(());
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| refuse(&raw_path, "symlink without a target"))?;
                rustix::fs::symlinkat(target.as_str(), &parent, name).map_err(io_error)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let file_type = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                rustix::fs::mknodat(
                    &parent,
                    name,
                    file_type,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(io_error)?;
            }
            tar::EntryType::XGlobalHeader => return Ok(()),
            other => {
                return Err(refuse(
                    &raw_path,
                    format!("unsupported entry type {other:?}"),
                ))
            }
        }
        self.apply_metadata(
            &raw_path,
            &parent,
            name,
            &metadata,
            kind == tar::EntryType::Symlink,
        )?;
        self.written += 1;
        Ok(())
    }

    /// A `.wh.` entry: delete the named file of a lower layer, or (for
    /// `.wh..wh..opq`) hide the whole lower directory.
    fn whiteout(&mut self, raw_path: &str, parent_path: &str, name: &str) -> Result<(), Error> {
        let parent = self.directory(raw_path, parent_path)?;
        let io_error = |e: Errno| refuse(raw_path, io::Error::from(e).to_string());
        if name == OPAQUE_WHITEOUT {
            rustix::fs::fsetxattr(&parent, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty())
                .map_err(io_error)?;
        } else {
            let hidden = &name[WHITEOUT_PREFIX.len()..];
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(refuse(raw_path, "whiteout without a valid name"));
            }
            if rustix::fs::statat(&parent, hidden, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
                remove_all(&parent, hidden).map_err(io_error)?;
            }
            rustix::fs::mknodat(
                &parent,
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(io_error)?;
        }
        self.written += 1;
        Ok(())
    }

    /// Opens a directory below the root, never leaving it.
    fn open_beneath(&self, raw_path: &str, path: &str) -> Result<OwnedFd, Error> {
        let target = if path.is_empty() { "." } else { path };
        rustix::fs::openat2(
            &self.root,
            target,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| match e {
            Errno::XDEV => refuse(
                raw_path,
                format!("{path:?} leads outside the target directory through a symlink"),
            ),
            Errno::NOTDIR => refuse(raw_path, format!("{path:?} is not a directory")),
            Errno::LOOP => refuse(
                raw_path,
                format!("{path:?} has too many levels of symlinks"),
            ),
            other => refuse(raw_path, io::Error::from(other).to_string()),
        })
    }

    /// Opens the directory `path`, creating missing directories (0755,
    /// owned by root) on the way, never leaving the root.
    fn directory(&self, raw_path: &str, path: &str) -> Result<OwnedFd, Error> {
        match self.open_beneath(raw_path, path) {
            Ok(fd) => Ok(fd),
            Err(first_error) => {
                let target = if path.is_empty() { "." } else { path };
                match rustix::fs::openat2(
                    &self.root,
                    target,
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
                ) {
                    Err(Errno::NOENT) => {}
                    _ => return Err(first_error),
                }
                let (parent_path, name) = split_parent(path);
                let parent = self.directory(raw_path, parent_path)?;
                match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(refuse(raw_path, io::Error::from(e).to_string())),
                }
                self.open_beneath(raw_path, path)
            }
        }
    }

    fn apply_metadata(
        &self,
        raw_path: &str,
        parent: &OwnedFd,
        name: &str,
        metadata: &Metadata,
        is_symlink: bool,
    ) -> Result<(), Error> {
        let io_error = |e: Errno| refuse(raw_path, io::Error::from(e).to_string());
        rustix::fs::chownat(
            parent,
            name,
            Some(rustix::fs::Uid::from_raw(metadata.uid)),
            Some(rustix::fs::Gid::from_raw(metadata.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_error)?;
        if !is_symlink {
            // After chown, which clears set-user-ID and set-group-ID bits.
            rustix::fs::chmodat(
                parent,
                name,
                Mode::from_raw_mode(metadata.mode),
                AtFlags::empty(),
            )
            .map_err(io_error)?;
        }
        if !metadata.xattrs.is_empty() {
            let proc_path = format!(
                "/proc/self/fd/{}/{name}",
                std::os::fd::AsRawFd::as_raw_fd(parent)
            );
            for (key, value) in &metadata.xattrs {
                rustix::fs::lsetxattr(
                    proc_path.as_str(),
                    key.as_str(),
                    value,
                    rustix::fs::XattrFlags::empty(),
                )
                .map_err(io_error)?;
            }
        }
        rustix::fs::utimensat(
            parent,
            name,
            &timestamps(metadata.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_error)?;
        Ok(())
    }

    fn finish_directories(&mut self) -> Result<(), Error> {
        let directories = std::mem::take(&mut self.directories);
        // Deepest first, so a parent's time is set after its children.
        for (path, metadata) in directories.iter().rev() {
            // A later entry may have replaced the directory; its metadata
            // then no longer applies.
            let Ok(dir) = rustix::fs::openat2(
                &self.root,
                path.as_str(),
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
            ) else {
                continue;
            };
            let io_error = |e: Errno| refuse(path, io::Error::from(e).to_string());
            rustix::fs::fchown(
                &dir,
                Some(rustix::fs::Uid::from_raw(metadata.uid)),
                Some(rustix::fs::Gid::from_raw(metadata.gid)),
            )
            .map_err(io_error)?;
            rustix::fs::fchmod(&dir, Mode::from_raw_mode(metadata.mode)).map_err(io_error)?;
            for (key, value) in &metadata.xattrs {
                rustix::fs::fsetxattr(&dir, key.as_str(), value, rustix::fs::XattrFlags::empty())
                    .map_err(io_error)?;
            }
            rustix::fs::futimens(&dir, &timestamps(metadata.mtime)).map_err(io_error)?;
        }
        Ok(())
    }
}

/// Removes `name` in `parent`, recursively when it is a directory, without
/// following symlinks.
fn remove_all(parent: &impl AsFd, name: &str) -> Result<(), Errno> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e),
    }
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let child = entry.file_name().to_string_lossy().into_owned();
        if child != "." && child != ".." {
            children.push(child);
        }
    }
    for child in children {
        remove_all(&dir, &child)?;
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}
