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
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// Symlinks followed at most while resolving one path, as Linux does.
const MAX_SYMLINKS: usize = 40;

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
}

fn lstat(path: &Path) -> Option<rustix::fs::Stat> {
    rustix::fs::lstat(path).ok()
}

fn is_whiteout(stat: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::CharacterDevice && stat.st_rdev == 0
}

fn is_opaque(dir: &Path) -> bool {
    rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut [0u8; 4]).is_ok_and(|len| len > 0)
}

/// The merged view of the lower layers (bottom first), as overlayfs shows
/// it, looked up component by component so that no host symlink is ever
/// followed.
struct Lowers<'a>(&'a [PathBuf]);

impl Lowers<'_> {
    /// The entry at `parts` (no symlinks among its parents), and its host
    /// path in the topmost layer that has it.
    fn lookup(&self, parts: &[String]) -> Option<(Entry, PathBuf)> {
        'layers: for layer in self.0.iter().rev() {
            let mut host = layer.clone();
            for (depth, part) in parts.iter().enumerate() {
                host.push(part);
                let Some(stat) = lstat(&host) else {
                    continue 'layers;
                };
                if is_whiteout(&stat) {
                    return None;
                }
                if depth + 1 == parts.len() {
                    return Some((Entry::of(&stat), host));
                }
                if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
                    // A file hides whatever lower layers have below it.
                    return None;
                }
                if is_opaque(&host) {
                    // Lower layers have nothing below this directory.
                    return self.lookup_in(&host, &parts[depth + 1..]);
                }
            }
        }
        None
    }

    fn lookup_in(&self, dir: &Path, parts: &[String]) -> Option<(Entry, PathBuf)> {
        let mut host = dir.to_path_buf();
        for (depth, part) in parts.iter().enumerate() {
            host.push(part);
            let stat = lstat(&host).filter(|stat| !is_whiteout(stat))?;
            if depth + 1 == parts.len() {
                return Some((Entry::of(&stat), host));
            }
            if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
                return None;
            }
        }
        None
    }

    /// Resolves an absolute path through the image's symlinks (the final
    /// one too), as the runtime does for a mount's destination. Returns the
    /// resolved components, and for each directory on the way that the
    /// image has, its entry.
    fn resolve(&self, path: &str) -> (Vec<String>, Vec<(Vec<String>, Entry)>) {
        let mut pending: Vec<String> = components(path).into_iter().rev().collect();
        let mut current: Vec<String> = Vec::new();
        let mut existing = Vec::new();
        let mut followed = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                current.pop();
                continue;
            }
            current.push(part);
            let Some((entry, host)) = self.lookup(&current) else {
                // Missing: the rest is created as written.
                current.extend(pending.into_iter().rev().filter(|p| p != ".."));
                return (current, existing);
            };
            if entry.file_type == FileType::Symlink && followed < MAX_SYMLINKS {
                followed += 1;
                let Ok(target) = std::fs::read_link(&host) else {
                    return (current, existing);
                };
                current.pop();
                let target = target.as_os_str().as_bytes();
                if target.starts_with(b"/") {
                    current.clear();
                }
                let target = String::from_utf8_lossy(target);
                pending.extend(components(&target).into_iter().rev());
                continue;
            }
            if entry.file_type == FileType::Directory && !pending.is_empty() {
                existing.push((current.clone(), entry));
            }
        }
        (current, existing)
    }
}

/// `a/./b//c/../d` as `["a", "b", "c", "..", "d"]`: `..` is kept, to be
/// applied after the symlinks before it are resolved.
fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .map(str::to_string)
        .collect()
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
        let lowers = Lowers(lowers);
        let mut missing: Vec<Vec<String>> = Vec::new();
        let mut parents: Vec<(Vec<String>, Entry)> = Vec::new();
        for destination in destinations {
            let (resolved, existing) = lowers.resolve(destination);
            for depth in 1..=resolved.len() {
                let prefix = resolved[..depth].to_vec();
                if existing.iter().any(|(path, _)| *path == prefix) {
                    continue;
                }
                if lowers.lookup(&prefix).is_none() && !missing.contains(&prefix) {
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
                rustix::fs::fgetxattr(&dir, "trusted.overlay.opaque", &mut [0u8; 4])
                    .is_ok_and(|len| len > 0)
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
