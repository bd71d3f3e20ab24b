//! Git sources kept across builds: a bare repository per remote that
//! fetches add to, and checkouts by key, so that a second build of the same
//! commit fetches nothing.
//!
//! Layout: `git/repositories/<sha256 of the remote>/` (a bare repository,
//! with `remote` naming it) and `.lock` beside it, held while git writes to
//! it; `git/checkouts/<key>/`, each renamed into place whole, never changed
//! again. `kiln prune --all` removes both (they are a cache).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::Error;
use crate::store::Store;

/// A remote's repository in the store, locked against other processes
/// until dropped.
#[derive(Debug)]
pub struct GitRepository {
    pub path: PathBuf,
    _lock: File,
}

impl Store {
    pub(crate) fn git_dir(&self) -> PathBuf {
        self.root().join("git")
    }

    /// Every repository and checkout, for garbage collection: the
    /// directory and, for a repository, its lock file.
    pub(crate) fn git_sources(&self) -> Vec<(PathBuf, Option<PathBuf>)> {
        let mut found = Vec::new();
        for (kind, locked) in [("repositories", true), ("checkouts", false)] {
            let Ok(entries) = fs::read_dir(self.git_dir().join(kind)) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    let lock = locked.then(|| path.with_extension("lock"));
                    found.push((path, lock));
                }
            }
        }
        found
    }

    fn make_private_dir(path: &Path) -> Result<(), Error> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| Error::io(path, e))
    }

    /// The repository for `remote`, locked. One that does not exist yet is
    /// made by `init`, which gets an empty directory, and appears only once
    /// `init` succeeded.
    pub fn git_repository<E: From<Error>>(
        &self,
        remote: &str,
        init: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<GitRepository, E> {
        let parent = self.git_dir().join("repositories");
        Self::make_private_dir(&parent)?;
        let name = Digest::of(remote.as_bytes()).hex().to_string();
        let lock_path = parent.join(format!("{name}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        lock.lock().map_err(|e| Error::io(&lock_path, e))?;
        let path = parent.join(&name);
        if !path.exists() {
            let scratch = self.temp_dir()?;
            let fresh = scratch.path().join("repository");
            Self::make_private_dir(&fresh)?;
            init(&fresh)?;
            fs::write(fresh.join("remote"), remote).map_err(|e| Error::io(&fresh, e))?;
            fs::rename(&fresh, &path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(GitRepository { path, _lock: lock })
    }

    fn git_checkout_path(&self, key: &Digest) -> PathBuf {
        self.git_dir().join("checkouts").join(key.hex())
    }

    /// The checkout made earlier for `key`, if any, marked as used now (for
    /// `kiln prune --filter until=`).
    pub fn git_checkout(&self, key: &Digest) -> Option<PathBuf> {
        let path = self.git_checkout_path(key);
        if !path.is_dir() {
            return None;
        }
        // Only a cache's age: failing to touch it costs nothing else.
        let _ =
            fs::File::open(&path).and_then(|dir| dir.set_modified(std::time::SystemTime::now()));
        Some(path)
    }

    /// Keeps the finished checkout `dir` (in the store's scratch space) as
    /// the one for `key`, and returns where it is. When another process
    /// kept one first, that one stays and `dir` is left to be removed.
    pub fn keep_git_checkout(&self, key: &Digest, dir: &Path) -> Result<PathBuf, Error> {
        let path = self.git_checkout_path(key);
        if let Some(parent) = path.parent() {
            Self::make_private_dir(parent)?;
        }
        match fs::rename(dir, &path) {
            Ok(()) => Ok(path),
            Err(_) if path.is_dir() => Ok(path),
            Err(e) => Err(Error::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_init_leaves_no_repository_and_checkouts_appear_whole() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("store");
        let failed = store.git_repository("https://h/r.git", |_| -> Result<(), Error> {
            Err(Error::io(
                Path::new("init"),
                std::io::Error::other("interrupted"),
            ))
        });
        assert!(failed.is_err());
        let repository = store
            .git_repository("https://h/r.git", |path| -> Result<(), Error> {
                fs::write(path.join("HEAD"), "ref: refs/heads/master\n")
                    .map_err(|e| Error::io(path, e))
            })
            .expect("made");
        assert!(repository.path.join("HEAD").is_file());
        let made = repository.path.clone();
        drop(repository);
        let again = store
            .git_repository("https://h/r.git", |_| -> Result<(), Error> {
                panic!("made twice")
            })
            .expect("found");
        assert_eq!(again.path, made);

        let key = Digest::of(b"commit");
        assert_eq!(store.git_checkout(&key), None);
        let scratch = store.temp_dir().expect("scratch");
        let checkout = scratch.path().join("checkout");
        fs::create_dir(&checkout).expect("mkdir");
        fs::write(checkout.join("foo"), "foo").expect("write");
        let kept = store.keep_git_checkout(&key, &checkout).expect("kept");
        assert_eq!(store.git_checkout(&key), Some(kept.clone()));
        assert_eq!(fs::read_to_string(kept.join("foo")).expect("read"), "foo");
    }
}
