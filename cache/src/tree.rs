//! Writing files into a directory tree without ever leaving it.
//!
//! Every path is resolved with `openat2(RESOLVE_BENEATH)` from the tree's
//! root, so symlinks already in the tree (including ones just written) can
//! never make a write land outside it; the final component is never
//! followed. Missing parent directories are created (0755, root).

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::whiteout::OPAQUE_XATTR;

/// Owner, permissions, modification time and extended attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Why a write was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path:?} leads outside the target directory through a symlink")]
    Escapes { path: String },
    #[error("{path:?} is not a directory")]
    NotADirectory { path: String },
    #[error("{path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &str) -> impl Fn(Errno) -> TreeError + '_ {
    move |errno| TreeError::Io {
        path: path.to_string(),
        source: errno.into(),
    }
}

/// Splits a tree path (no leading `/`) into its parent and final name.
pub fn split_parent(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", path),
    }
}

/// A directory to write into.
pub struct TreeWriter {
    root: OwnedFd,
}

impl TreeWriter {
    pub fn open(dir: &Path) -> io::Result<TreeWriter> {
        let root = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(TreeWriter { root })
    }

    /// Opens the directory at `path` (relative to the root), never leaving
    /// the tree; `None` when it does not exist.
    pub fn open_dir(&self, path: &str) -> Result<Option<OwnedFd>, TreeError> {
        let target = if path.is_empty() { "." } else { path };
        match rustix::fs::openat2(
            &self.root,
            target,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) => Ok(None),
            Err(Errno::XDEV) | Err(Errno::LOOP) => Err(TreeError::Escapes {
                path: path.to_string(),
            }),
            Err(Errno::NOTDIR) => Err(TreeError::NotADirectory {
                path: path.to_string(),
            }),
            Err(other) => Err(io_error(path)(other)),
        }
    }

    /// Opens the directory at `path`, creating it and its missing parents.
    pub fn directory(&self, path: &str) -> Result<OwnedFd, TreeError> {
        if let Some(fd) = self.open_dir(path)? {
            return Ok(fd);
        }
        let (parent_path, name) = split_parent(path);
        let parent = self.directory(parent_path)?;
        match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io_error(path)(e)),
        }
        self.open_dir(path)?
            .ok_or_else(|| io_error(path)(Errno::NOENT))
    }

    /// The parent directory of `path` (created when missing) and the name.
    fn parent<'p>(&self, path: &'p str) -> Result<(OwnedFd, &'p str), TreeError> {
        let (parent_path, name) = split_parent(path);
        Ok((self.directory(parent_path)?, name))
    }

    /// Whether something (of any type) exists at `path`.
    pub fn lstat(&self, path: &str) -> Result<Option<rustix::fs::Stat>, TreeError> {
        let (parent_path, name) = split_parent(path);
        let Some(parent) = self.open_dir(parent_path)? else {
            return Ok(None);
        };
        match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(io_error(path)(e)),
        }
    }

    /// Removes whatever is at `path`, recursively for a directory.
    pub fn remove(&self, path: &str) -> Result<(), TreeError> {
        let (parent_path, name) = split_parent(path);
        let Some(parent) = self.open_dir(parent_path)? else {
            return Ok(());
        };
        match remove_all(&parent, name) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io_error(path)(e)),
        }
    }

    /// Makes `path` free for a new entry of the given kind: an existing
    /// directory stays when a directory is wanted, anything else goes.
    fn make_room(&self, path: &str, for_directory: bool) -> Result<bool, TreeError> {
        match self.lstat(path)? {
            Some(stat)
                if for_directory
                    && FileType::from_raw_mode(stat.st_mode) == FileType::Directory =>
            {
                Ok(true)
            }
            Some(_) => {
                self.remove(path)?;
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Creates a regular file with `content`; returns the bytes written.
    pub fn create_file(
        &self,
        path: &str,
        content: &mut dyn Read,
        attributes: &Attributes,
    ) -> Result<u64, TreeError> {
        self.make_room(path, false)?;
        let (parent, name) = self.parent(path)?;
        let fd = rustix::fs::openat(
            &parent,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io_error(path))?;
        let mut file = std::fs::File::from(fd);
        let written = io::copy(content, &mut file).map_err(|source| TreeError::Io {
            path: path.to_string(),
            source,
        })?;
        self.apply(&parent, name, path, attributes, false)?;
        Ok(written)
    }

    /// Creates a directory (or keeps an existing one); its attributes are
    /// set by [`TreeWriter::set_directory_attributes`], once its content is
    /// written.
    pub fn create_dir(&self, path: &str) -> Result<(), TreeError> {
        if path.is_empty() {
            // The root itself always exists.
            return Ok(());
        }
        if !self.make_room(path, true)? {
            let (parent, name) = self.parent(path)?;
            rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755))
                .map_err(io_error(path))?;
        }
        Ok(())
    }

    pub fn create_symlink(
        &self,
        path: &str,
        target: &str,
        attributes: &Attributes,
    ) -> Result<(), TreeError> {
        self.make_room(path, false)?;
        let (parent, name) = self.parent(path)?;
        rustix::fs::symlinkat(target, &parent, name).map_err(io_error(path))?;
        self.apply(&parent, name, path, attributes, true)
    }

    /// Creates `path` as another name of the existing `target` (both
    /// relative to the root).
    pub fn create_hard_link(&self, path: &str, target: &str) -> Result<(), TreeError> {
        self.make_room(path, false)?;
        let (target_parent_path, target_name) = split_parent(target);
        let target_parent = self
            .open_dir(target_parent_path)?
            .ok_or_else(|| io_error(target)(Errno::NOENT))?;
        let (parent, name) = self.parent(path)?;
        rustix::fs::linkat(&target_parent, target_name, &parent, name, AtFlags::empty())
            .map_err(io_error(path))
    }

    /// Creates a device node or fifo.
    pub fn create_node(
        &self,
        path: &str,
        file_type: FileType,
        major: u32,
        minor: u32,
        attributes: &Attributes,
    ) -> Result<(), TreeError> {
        self.make_room(path, false)?;
        let (parent, name) = self.parent(path)?;
        rustix::fs::mknodat(
            &parent,
            name,
            file_type,
            Mode::from_raw_mode(0o600),
            rustix::fs::makedev(major, minor),
        )
        .map_err(io_error(path))?;
        self.apply(&parent, name, path, attributes, false)
    }

    /// Records that `path` was deleted: an overlayfs whiteout.
    pub fn create_whiteout(&self, path: &str) -> Result<(), TreeError> {
        self.make_room(path, false)?;
        let (parent, name) = self.parent(path)?;
        rustix::fs::mknodat(
            &parent,
            name,
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(io_error(path))
    }

    /// Marks a directory as hiding the lower layers' content (overlayfs).
    pub fn set_opaque(&self, dir: &str) -> Result<(), TreeError> {
        let fd = self.directory(dir)?;
        rustix::fs::fsetxattr(&fd, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty())
            .map_err(io_error(dir))
    }

    /// Sets a directory's attributes; a path that is no longer a directory
    /// (a later entry replaced it) is left alone.
    pub fn set_directory_attributes(
        &self,
        path: &str,
        attributes: &Attributes,
    ) -> Result<(), TreeError> {
        let target = if path.is_empty() { "." } else { path };
        let Ok(dir) = rustix::fs::openat2(
            &self.root,
            target,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) else {
            return Ok(());
        };
        let error = io_error(path);
        rustix::fs::fchown(
            &dir,
            Some(rustix::fs::Uid::from_raw(attributes.uid)),
            Some(rustix::fs::Gid::from_raw(attributes.gid)),
        )
        .map_err(&error)?;
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(attributes.mode)).map_err(&error)?;
        for (key, value) in &attributes.xattrs {
            rustix::fs::fsetxattr(&dir, key.as_str(), value, rustix::fs::XattrFlags::empty())
                .map_err(&error)?;
        }
        rustix::fs::futimens(&dir, &timestamps(attributes.mtime)).map_err(&error)
    }

    fn apply(
        &self,
        parent: &OwnedFd,
        name: &str,
        path: &str,
        attributes: &Attributes,
        is_symlink: bool,
    ) -> Result<(), TreeError> {
        let error = io_error(path);
        rustix::fs::chownat(
            parent,
            name,
            Some(rustix::fs::Uid::from_raw(attributes.uid)),
            Some(rustix::fs::Gid::from_raw(attributes.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(&error)?;
        if !is_symlink {
            // After chown, which clears set-user-ID and set-group-ID bits.
            // The entry was just created by us, so it is not a symlink.
            rustix::fs::chmodat(
                parent,
                name,
                Mode::from_raw_mode(attributes.mode),
                AtFlags::empty(),
            )
            .map_err(&error)?;
        }
        if !attributes.xattrs.is_empty() {
            let proc_path = format!("/proc/self/fd/{}/{name}", parent.as_raw_fd());
            for (key, value) in &attributes.xattrs {
                match rustix::fs::lsetxattr(
                    proc_path.as_str(),
                    key.as_str(),
                    value,
                    rustix::fs::XattrFlags::empty(),
                ) {
                    Ok(()) => {}
                    // What the file system cannot hold is left out, as
                    // containerd does: attributes it does not support, and
                    // `user.` ones, which Linux allows only on files and
                    // directories (not on symlinks or device nodes).
                    Err(Errno::NOTSUP) => {}
                    Err(Errno::PERM) if key.starts_with("user.") => {}
                    Err(errno) => {
                        return Err(TreeError::Io {
                            path: format!("{path} (extended attribute {key})"),
                            source: errno.into(),
                        })
                    }
                }
            }
        }
        rustix::fs::utimensat(
            parent,
            name,
            &timestamps(attributes.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(&error)
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
