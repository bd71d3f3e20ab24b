//! Files that appear whole or not at all.
//!
//! Whatever kiln writes for a later reader (blobs, `index.json`, cache
//! records, archives, a local cache's files) is written into a temporary
//! file that is synced and then renamed over its path, and the directory is
//! synced after the rename. A crash or an interrupt leaves either the old
//! file or the new one, never a part: at worst a temporary file, which the
//! store's next cleanup (or nobody, outside a store) removes. Syncing
//! before the rename matters: without it a crash can leave the new name
//! pointing at a file whose data never reached the disk.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::Error;

/// Files written here are readable by everyone, as in the OCI layouts other
/// tools write, so that skopeo or umoci run by another user can read them;
/// the directory they are in decides who may see them at all.
pub const FILE_MODE: u32 = 0o644;

/// A file being written; it appears at its path only on
/// [`AtomicFile::commit`], and is removed if dropped before.
#[derive(Debug)]
pub struct AtomicFile {
    temp: tempfile::NamedTempFile,
}

impl AtomicFile {
    /// A new file in `dir`, which must be on the file system of the path it
    /// will be committed to (a rename cannot cross file systems). Its name
    /// is `prefix` and random characters, so that what a crash leaves in a
    /// scratch directory says what it was.
    pub fn new_in(dir: &Path, prefix: &str) -> Result<AtomicFile, Error> {
        AtomicFile::create(dir, prefix).map_err(|e| Error::io(dir, e))
    }

    /// A new file beside `path`, for [`AtomicFile::commit`] to `path`; a
    /// hidden one, since it may sit among the user's files for a while.
    pub fn beside(path: &Path) -> Result<AtomicFile, Error> {
        AtomicFile::create(parent_of(path), ".kiln-").map_err(|source| Error::Replace {
            path: path.to_path_buf(),
            doing: "creating a temporary file beside it",
            source,
        })
    }

    fn create(dir: &Path, prefix: &str) -> io::Result<AtomicFile> {
        let temp = tempfile::Builder::new()
            .prefix(prefix)
            .permissions(fs::Permissions::from_mode(FILE_MODE))
            .tempfile_in(dir)?;
        Ok(AtomicFile { temp })
    }

    /// Syncs the file, renames it to `path` (replacing what was there) and
    /// syncs `path`'s directory.
    pub fn commit(self, path: &Path) -> Result<(), Error> {
        self.temp
            .as_file()
            .sync_all()
            .map_err(replacing(path, "syncing its new content"))?;
        self.rename_to(path)?;
        sync_dir(parent_of(path))
    }

    fn rename_to(self, path: &Path) -> Result<(), Error> {
        self.temp
            .persist(path)
            .map_err(|e| replacing(path, "renaming its new content into place")(e.error))?;
        Ok(())
    }
}

/// The error of replacing `path` that failed while `doing`.
fn replacing(path: &Path, doing: &'static str) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Replace {
        path,
        doing,
        source,
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.temp.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.temp.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.temp.flush()
    }
}

/// Replaces `path` with `bytes` as an [`AtomicFile`] does.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = AtomicFile::beside(path)?;
    file.write_all(bytes)
        .map_err(replacing(path, "writing its new content"))?;
    file.commit(path)
}

/// Replaces `path` with `bytes` whole, as [`write_atomic`] does but without
/// syncing: for the store's cache files (records, explanations), where a
/// crash that leaves one empty or missing costs a cache miss, and two disk
/// flushes per file on every build would cost more than the misses.
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = AtomicFile::beside(path)?;
    file.write_all(bytes)
        .map_err(replacing(path, "writing its new content"))?;
    file.rename_to(path)
}

/// Makes the entries of `dir` (a rename into it) survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_file_is_replaced_whole_and_readable_by_everyone() {
        for write in [write_atomic, write_atomic_unsynced] {
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("index.json");
            fs::write(&path, b"old").expect("old");
            let old_inode = fs::metadata(&path).expect("metadata").ino();
            write(&path, b"new").expect("write");
            assert_eq!(fs::read(&path).expect("read"), b"new");
            let metadata = fs::metadata(&path).expect("metadata");
            assert_ne!(metadata.ino(), old_inode, "renamed into place");
            assert_eq!(metadata.mode() & 0o777, FILE_MODE);
            assert_eq!(names(dir.path()), ["index.json"], "no temporary file left");
        }
    }

    #[test]
    fn an_uncommitted_file_leaves_nothing_and_the_old_one_stays() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("out.tar");
        fs::write(&path, b"old").expect("old");
        let mut file = AtomicFile::beside(&path).expect("file");
        file.write_all(b"half of it").expect("write");
        drop(file);
        assert_eq!(fs::read(&path).expect("read"), b"old");
        assert_eq!(names(dir.path()), ["out.tar"]);
    }

    #[test]
    fn a_file_written_elsewhere_is_committed_to_its_path() {
        let dir = tempfile::tempdir().expect("dir");
        fs::create_dir(dir.path().join("tmp")).expect("tmp");
        fs::create_dir(dir.path().join("blobs")).expect("blobs");
        let mut file = AtomicFile::new_in(&dir.path().join("tmp"), "blob-").expect("file");
        file.write_all(b"blob").expect("write");
        file.commit(&dir.path().join("blobs/b")).expect("commit");
        assert_eq!(fs::read(dir.path().join("blobs/b")).expect("read"), b"blob");
        assert!(names(&dir.path().join("tmp")).is_empty());
    }

    #[test]
    fn a_missing_directory_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("missing/index.json");
        let error = write_atomic(&path, b"x").expect_err("no directory");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "cannot write {} (creating a temporary file beside it)",
                path.display()
            )),
            "{message}"
        );
    }
}
