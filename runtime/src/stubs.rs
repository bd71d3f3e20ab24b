//! Mount points the runtime creates in the root filesystem for a step's
//! mounts (`/proc`, `/etc/hosts`, a cache mount's target...): those the
//! image did not have are removed from the step's changes afterwards, and so
//! are the image's directories that overlayfs copied up only to hold them,
//! so that none of them end up in the step's layer (as BuildKit does).
//!
//! Paths are resolved the way the runtime resolves them, through the
//! image's symlinks (`/var/run` -> `/run`). The removal happens in the upper
//! directory, which the step could fill with symlinks: every path there is
//! opened beneath it without following any.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_overlay::{LayerView, OPAQUE_XATTR};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// What the image has at a path: directory or not, owner and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    file_type: FileType,
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Entry {
    fn of(stat: &rustix::fs::Stat) -> Entry {
        Entry {
            file_type: FileType::from_raw_mode(stat.st_mode),
            mode: stat.st_mode & 0o7777,
            uid: stat.st_uid,
            gid: stat.st_gid,
        }
    }

    fn of_metadata(metadata: &std::fs::Metadata) -> Entry {
        Entry {
            file_type: FileType::from_raw_mode(metadata.mode()),
            mode: metadata.mode() & 0o7777,
            uid: metadata.uid(),
            gid: metadata.gid(),
        }
    }
}

/// `a/./b//c` as `["a", "b", "c"]`.
fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .map(str::to_string)
        .collect()
}

/// A mount destination resolved as the runtime resolves it, through the
/// image's symlinks (the final one too): its components, and for each
/// directory on the way that the image has, its entry. A destination that
/// cannot be resolved (a symlink loop, a file on the way) is taken as
/// written; the runtime fails on it anyway.
fn resolve(view: &LayerView, destination: &str) -> (Vec<String>, Vec<(Vec<String>, Entry)>) {
    let resolved = match view.resolve_for_creation(destination) {
        Ok(Some(path)) => components(&path),
        _ => components(destination)
            .into_iter()
            .filter(|part| part != "..")
            .collect(),
    };
    let mut existing = Vec::new();
    for depth in 1..resolved.len() {
        let prefix = resolved[..depth].to_vec();
        match view.resolve(&format!("/{}", prefix.join("/")), false) {
            Ok(Some(entry)) if entry.metadata.is_dir() => {
                existing.push((prefix, Entry::of_metadata(&entry.metadata)));
            }
            _ => break,
        }
    }
    (resolved, existing)
}

fn exists(view: &LayerView, path: &[String]) -> bool {
    matches!(
        view.resolve(&format!("/{}", path.join("/")), false),
        Ok(Some(_))
    )
}

pub(crate) struct Stubs {
    /// Paths the image lacks, deepest first, so that emptied parents go
    /// too.
    missing: Vec<Vec<String>>,
    /// Directories of the image that hold a stub, with what the image
    /// gives them; deepest first.
    parents: Vec<(Vec<String>, Entry)>,
}

impl Stubs {
    /// Records what the runtime will create for `destinations` on the
    /// image made of `lowers`.
    pub(crate) fn before<'a>(
        destinations: impl IntoIterator<Item = &'a str>,
        lowers: &[PathBuf],
    ) -> Stubs {
        let view = LayerView::new(lowers.to_vec());
        let mut missing: Vec<Vec<String>> = Vec::new();
        let mut parents: Vec<(Vec<String>, Entry)> = Vec::new();
        for destination in destinations {
            let (resolved, existing) = resolve(&view, destination);
            for depth in 1..=resolved.len() {
                let prefix = resolved[..depth].to_vec();
                if existing.iter().any(|(path, _)| *path == prefix) {
                    continue;
                }
                if !exists(&view, &prefix) && !missing.contains(&prefix) {
                    missing.push(prefix);
                }
            }
            for (path, entry) in existing {
                if !parents.iter().any(|(known, _)| *known == path) {
                    parents.push((path, entry));
                }
            }
        }
        missing.sort_by_key(|path| std::cmp::Reverse(path.len()));
        parents.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        Stubs { missing, parents }
    }

    /// Removes from `upper` the stubs that are still empty (a step that
    /// wrote into one keeps it), then the image's directories that are left
    /// empty and unchanged.
    pub(crate) fn remove(&self, upper: &Path) {
        let Ok(root) = rustix::fs::open(
            upper,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return;
        };
        for path in &self.missing {
            let Some((parent, name)) = beneath(&root, path) else {
                continue;
            };
            let Ok(stat) = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => {
                    let _ = rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR);
                }
                FileType::RegularFile if stat.st_size == 0 => {
                    let _ = rustix::fs::unlinkat(&parent, name, AtFlags::empty());
                }
                _ => {}
            }
        }
        for (path, original) in &self.parents {
            let Some((parent, name)) = beneath(&root, path) else {
                continue;
            };
            let Ok(stat) = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            let unchanged = Entry::of(&stat) == *original;
            let opaque = rustix::fs::openat(
                &parent,
                name,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()
            .is_some_and(|dir| {
                let mut value = [0u8; 4];
                // As the layer view reads it: overlayfs writes `y`.
                matches!(rustix::fs::fgetxattr(&dir, OPAQUE_XATTR, &mut value), Ok(1) if value[0] == b'y')
            });
            if unchanged && !opaque {
                // Fails, as it should, when the step left something in it.
                let _ = rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR);
            }
        }
    }
}

/// Opens the parent directory of `path` beneath `root`, following no
/// symlink, and returns it with the final name.
fn beneath<'a>(root: &OwnedFd, path: &'a [String]) -> Option<(OwnedFd, &'a OsStr)> {
    let (name, parents) = path.split_last()?;
    let parent = if parents.is_empty() {
        ".".to_string()
    } else {
        parents.join("/")
    };
    let fd = rustix::fs::openat2(
        root,
        parent.as_str(),
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    Some((fd, OsStr::new(name.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn layers() -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        for sub in ["etc", "var", "run", "root"] {
            fs::create_dir_all(base.join(sub)).unwrap();
        }
        symlink("../run", base.join("var/run")).unwrap();
        (dir, vec![base])
    }

    #[test]
    fn destinations_are_resolved_through_the_images_symlinks() {
        let (_dir, lowers) = layers();
        let stubs = Stubs::before(["/var/run/agent.sock", "/proc"], &lowers);
        assert!(stubs
            .missing
            .contains(&vec!["run".into(), "agent.sock".into()]));
        assert!(stubs.missing.contains(&vec!["proc".into()]));
        assert!(!stubs.missing.iter().any(|p| p[0] == "var"));
        assert!(stubs
            .parents
            .iter()
            .any(|(p, _)| *p == vec!["run".to_string()]));
    }

    #[test]
    fn only_empty_stubs_and_unchanged_parents_are_removed() {
        let (dir, lowers) = layers();
        let upper = dir.path().join("upper");
        // What a runtime and a step left: stubs, one of them written into.
        fs::create_dir_all(upper.join("proc")).unwrap();
        fs::create_dir_all(upper.join("cache/kept")).unwrap();
        fs::create_dir_all(upper.join("root/.cache")).unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::write(upper.join("etc/hosts"), "").unwrap();
        let stubs = Stubs::before(["/proc", "/cache", "/root/.cache", "/etc/hosts"], &lowers);
        stubs.remove(&upper);
        assert!(!upper.join("proc").exists());
        assert!(upper.join("cache/kept").exists(), "the step wrote into it");
        assert!(!upper.join("root").exists(), "copied up only for the stub");
        assert!(!upper.join("etc").exists());
    }

    #[test]
    fn a_step_cannot_redirect_the_removal_to_the_host() {
        let (dir, lowers) = layers();
        let host = dir.path().join("host");
        fs::create_dir_all(host.join("victim")).unwrap();
        let upper = dir.path().join("upper");
        fs::create_dir_all(&upper).unwrap();
        // The step moved the stub away and put a symlink to the host there.
        symlink(&host, upper.join("scratch")).unwrap();
        let stubs = Stubs::before(["/scratch/victim"], &lowers);
        stubs.remove(&upper);
        assert!(host.join("victim").is_dir(), "a host directory was removed");
    }
}
