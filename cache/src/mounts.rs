//! Cache mounts (`RUN --mount=type=cache`): directories kept in the store
//! across builds and shared between steps by id, never part of a layer.
//!
//! Layout: `cache-mounts/<sha256 of the id>/` holds the id in `id`, and one
//! directory per instance (`0`, `1`, …) each with a lock file beside it
//! (`0.lock`). Steps sharing an instance hold a shared lock on it, a
//! `locked` step an exclusive one; a `private` step takes the first
//! instance nobody holds, so concurrent private steps never see each other.
//! `0.exported` notes the blob the shared instance was last exported as
//! or seeded from, with a fingerprint of the files it held then.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::atomic::write_atomic;
use crate::digest::Digest;
use crate::error::Error;
use crate::keys::LayerRecord;
use crate::store::Store;

/// The blob a cache mount's shared instance was last packed into (or
/// unpacked from), and the fingerprint of its files then: while the
/// fingerprint is the same, so is the blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountNote {
    pub fingerprint: Digest,
    pub layer: LayerRecord,
}

/// A fingerprint of the files below `dir` (not of `dir` itself) and the
/// bytes of its regular files, from their metadata alone: any write to a
/// file changes its change time, so an unchanged fingerprint means
/// unchanged files, without reading them.
pub fn fingerprint(dir: &Path) -> Result<(Digest, u64), Error> {
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let here = dir.join(&relative);
        let mut names: Vec<_> = fs::read_dir(&here)
            .map_err(|e| Error::io(&here, e))?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::io(&here, e))?;
        names.sort();
        for name in names {
            let path = relative.join(&name);
            let full = dir.join(&path);
            let meta = fs::symlink_metadata(&full).map_err(|e| Error::io(&full, e))?;
            hasher.update(path.as_os_str().as_encoded_bytes());
            for field in [
                u64::from(meta.mode()),
                u64::from(meta.uid()),
                u64::from(meta.gid()),
                meta.size(),
                meta.ino(),
                meta.rdev(),
                meta.mtime() as u64,
                meta.mtime_nsec() as u64,
                meta.ctime() as u64,
                meta.ctime_nsec() as u64,
            ] {
                hasher.update(field.to_le_bytes());
            }
            if meta.is_file() {
                bytes += meta.size();
            }
            if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    Ok((Digest::from_bytes(hasher.finalize().into()), bytes))
}

/// How concurrent steps share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Every step uses the same directory at the same time.
    Shared,
    /// Each step has a directory of its own while it runs.
    Private,
    /// Steps wait for each other and use the same directory in turn.
    Locked,
}

/// A cache directory in use; the lock on it is released when dropped.
#[derive(Debug)]
pub struct CacheMount {
    pub path: PathBuf,
    _lock: File,
}

fn open_lock(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

impl Store {
    fn cache_mounts_dir(&self) -> PathBuf {
        self.root().join("cache-mounts")
    }

    fn cache_mount_dir(&self, id: &str) -> PathBuf {
        self.cache_mounts_dir()
            .join(Digest::of(id.as_bytes()).hex())
    }

    /// The shared instance of cache mount `id`, when it exists.
    pub fn cache_mount_content(&self, id: &str) -> Option<PathBuf> {
        let path = self.cache_mount_dir(id).join("0");
        path.is_dir().then_some(path)
    }

    /// What [`Store::set_cache_mount_note`] last noted for `id`.
    pub fn cache_mount_note(&self, id: &str) -> Option<MountNote> {
        let bytes = fs::read(self.cache_mount_dir(id).join("0.exported")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Notes the blob the shared instance of `id` holds the files of.
    pub fn set_cache_mount_note(&self, id: &str, note: &MountNote) -> Result<(), Error> {
        let bytes =
            serde_json::to_vec(note).map_err(|e| Error::io(&self.cache_mount_dir(id), e.into()))?;
        write_atomic(&self.cache_mount_dir(id).join("0.exported"), &bytes)
    }

    /// Starts cache mount `id` over (`--no-cache`, as BuildKit does): each
    /// of its directories is taken exclusively (waiting for the steps using
    /// it) and moved into the store's temporary directory, which the next
    /// kiln that has the store to itself clears. The next use makes a new
    /// one.
    pub fn reset_cache_mount(&self, id: &str) -> Result<(), Error> {
        let parent = self.cache_mount_dir(id);
        let Ok(entries) = fs::read_dir(&parent) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(instance) = name.to_str().filter(|n| n.parse::<u32>().is_ok()) else {
                continue;
            };
            let lock_path = parent.join(format!("{instance}.lock"));
            let lock = open_lock(&lock_path)?;
            lock.lock().map_err(|e| Error::io(&lock_path, e))?;
            let aside = self.temp_dir()?.keep().join("cache");
            fs::rename(entry.path(), &aside).map_err(|e| Error::io(&entry.path(), e))?;
        }
        Ok(())
    }

    /// The directory of cache mount `id`, locked as `sharing` asks (waiting
    /// for other processes when needed). A directory that does not exist
    /// yet is made by `init`, which fills an empty directory, and appears
    /// only once `init` succeeded.
    pub fn cache_mount<E: From<Error>>(
        &self,
        id: &str,
        sharing: Sharing,
        init: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<CacheMount, E> {
        let parent = self.cache_mount_dir(id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(|e| Error::io(&parent, e))?;
        let id_file = parent.join("id");
        if !id_file.exists() {
            write_atomic(&id_file, id.as_bytes())?;
        }
        let (instance, lock) = match sharing {
            Sharing::Shared | Sharing::Locked => {
                let path = parent.join("0.lock");
                let lock = open_lock(&path)?;
                let locked = if sharing == Sharing::Shared {
                    lock.lock_shared()
                } else {
                    lock.lock()
                };
                locked.map_err(|e| Error::io(&path, e))?;
                (0, lock)
            }
            Sharing::Private => {
                let mut instance = 0;
                loop {
                    let path = parent.join(format!("{instance}.lock"));
                    let lock = open_lock(&path)?;
                    match lock.try_lock() {
                        Ok(()) => break (instance, lock),
                        Err(TryLockError::WouldBlock) => instance += 1,
                        Err(TryLockError::Error(e)) => return Err(Error::io(&path, e).into()),
                    }
                }
            }
        };
        // When it was last used, for `kiln prune`.
        let _ = lock.set_modified(std::time::SystemTime::now());
        let path = parent.join(instance.to_string());
        if !path.is_dir() {
            // Shared users may race to create it: the first rename wins.
            let work = self.temp_dir()?;
            let staging = work.path().join("cache");
            fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
            init(&staging)?;
            // Never over a directory another process has just made (a
            // plain rename would replace it while it is in use).
            match rustix::fs::renameat_with(
                rustix::fs::CWD,
                &staging,
                rustix::fs::CWD,
                &path,
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(Error::io(&path, e.into()).into()),
            }
        }
        Ok(CacheMount { path, _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        (dir, store)
    }

    #[test]
    fn content_persists_per_id() {
        let (_dir, store) = store();
        let first = store
            .cache_mount("go-build", Sharing::Shared, |dir| {
                fs::write(dir.join("seed"), b"from init").map_err(|e| Error::io(dir, e))
            })
            .unwrap();
        fs::write(first.path.join("object"), b"compiled").unwrap();
        let path = first.path.clone();
        drop(first);
        let again = store
            .cache_mount("go-build", Sharing::Shared, |_| -> Result<(), Error> {
                panic!("already made")
            })
            .unwrap();
        assert_eq!(again.path, path);
        assert_eq!(fs::read(again.path.join("object")).unwrap(), b"compiled");
        assert_eq!(fs::read(again.path.join("seed")).unwrap(), b"from init");
        let other = store
            .cache_mount("npm", Sharing::Shared, |_| Ok::<(), Error>(()))
            .unwrap();
        assert_ne!(other.path, path);
        assert!(!other.path.join("object").exists());
    }

    #[test]
    fn shared_users_see_one_directory_private_ones_their_own() {
        let (_dir, store) = store();
        let a = store
            .cache_mount("c", Sharing::Shared, |_| Ok::<(), Error>(()))
            .unwrap();
        let b = store
            .cache_mount("c", Sharing::Shared, |_| Ok::<(), Error>(()))
            .unwrap();
        assert_eq!(a.path, b.path);
        let private = store
            .cache_mount("c", Sharing::Private, |_| Ok::<(), Error>(()))
            .unwrap();
        assert_ne!(private.path, a.path, "the shared instance is in use");
        let second_private = store
            .cache_mount("c", Sharing::Private, |_| Ok::<(), Error>(()))
            .unwrap();
        assert_ne!(second_private.path, private.path);
        drop((a, b));
        let third_private = store
            .cache_mount("c", Sharing::Private, |_| Ok::<(), Error>(()))
            .unwrap();
        assert_eq!(
            third_private.path.file_name().unwrap(),
            "0",
            "the first instance is free again"
        );
    }

    #[test]
    fn a_reset_mount_starts_over_and_leaves_the_old_content_aside() {
        let (_dir, store) = store();
        for sharing in [Sharing::Shared, Sharing::Private] {
            let mount = store
                .cache_mount("c", sharing, |dir| {
                    fs::write(dir.join("kept"), b"old").map_err(|e| Error::io(dir, e))
                })
                .unwrap();
            // A second private user gets an instance of its own.
            let _other = store
                .cache_mount("c", Sharing::Private, |dir| {
                    fs::write(dir.join("kept"), b"old").map_err(|e| Error::io(dir, e))
                })
                .unwrap();
            drop(mount);
        }
        store.reset_cache_mount("c").unwrap();
        for sharing in [Sharing::Shared, Sharing::Private] {
            let fresh = store
                .cache_mount("c", sharing, |_| Ok::<(), Error>(()))
                .unwrap();
            assert!(!fresh.path.join("kept").exists(), "{sharing:?}");
        }
        let aside = fs::read_dir(store.root().join("tmp"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().join("cache/kept").exists())
            .count();
        assert_eq!(aside, 2, "every instance waits in tmp/ for its users");
        store.reset_cache_mount("never-used").unwrap();
    }

    #[test]
    fn failed_init_leaves_nothing() {
        let (_dir, store) = store();
        let failed = store.cache_mount("c", Sharing::Locked, |dir| {
            Err(Error::io(dir, std::io::Error::other("no")))
        });
        assert!(failed.is_err());
        let mount = store
            .cache_mount("c", Sharing::Locked, |_| Ok::<(), Error>(()))
            .unwrap();
        assert_eq!(fs::read_dir(&mount.path).unwrap().count(), 0);
    }

    #[test]
    fn the_fingerprint_changes_with_any_write_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("pkgs")).unwrap();
        fs::write(dir.path().join("pkgs/a.deb"), b"12345").unwrap();
        let (first, bytes) = fingerprint(dir.path()).unwrap();
        assert_eq!(bytes, 5);
        assert_eq!(
            fingerprint(dir.path()).unwrap().0,
            first,
            "reading changes nothing"
        );
        fs::write(dir.path().join("pkgs/a.deb"), b"54321").unwrap();
        let (rewritten, _) = fingerprint(dir.path()).unwrap();
        assert_ne!(rewritten, first, "same size, other bytes");
        fs::write(dir.path().join("pkgs/b.deb"), b"").unwrap();
        assert_ne!(fingerprint(dir.path()).unwrap().0, rewritten);
    }

    #[test]
    fn a_note_is_kept_per_id() {
        let (_dir, store) = store();
        assert!(store.cache_mount_content("apt").is_none());
        drop(
            store
                .cache_mount("apt", Sharing::Shared, |_| Ok::<(), Error>(()))
                .unwrap(),
        );
        let path = store.cache_mount_content("apt").unwrap();
        let note = MountNote {
            fingerprint: fingerprint(&path).unwrap().0,
            layer: LayerRecord {
                diff_id: Digest::of(b"tar"),
                blob: Digest::of(b"gz"),
                size: 2,
                media_type: oci_spec::image::MediaType::ImageLayerGzip,
            },
        };
        store.set_cache_mount_note("apt", &note).unwrap();
        assert_eq!(store.cache_mount_note("apt"), Some(note));
        assert_eq!(store.cache_mount_note("npm"), None);
    }
}
