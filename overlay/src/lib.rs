//! Overlay-aware paths: a read-only view of an image's file system, a stack
//! of layer directories merged as overlayfs would merge them, without
//! mounting anything. The store reads layers through it (COPY sources, user
//! lookups, archive placement) and the sandbox resolves mount destinations
//! with it, so that both see the same file system.
//!
//! Upper layers hide lower ones path by path; a whiteout (character device
//! 0/0) removes a path, an opaque directory hides the lower directory's
//! contents, and a non-directory hides everything below its path.
//! Symlinks are resolved inside the view, never on the host.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The extended attribute overlayfs marks an opaque directory with: the
/// directories below it in lower layers are hidden.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Symlinks followed while resolving one path before giving up, as Linux does.
const MAX_SYMLINKS: usize = 40;

/// Layers of an image, bottom first.
#[derive(Debug, Clone, Default)]
pub struct LayerView {
    layers: Vec<PathBuf>,
}

/// A path of the view and where its content lives on the host.
#[derive(Debug, Clone)]
pub struct ViewEntry {
    /// The path in the view, absolute and free of symlinks and `..`.
    pub path: String,
    /// Whether the name has bytes that are not UTF-8, which `path` shows as
    /// U+FFFD: such an entry can be listed but not looked up or written.
    pub lossy_name: bool,
    /// The file holding the content, in one of the snapshots.
    pub host: PathBuf,
    pub metadata: Metadata,
}

fn is_whiteout(metadata: &Metadata) -> bool {
    metadata.file_type().is_char_device() && metadata.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    let mut value = [0u8; 2];
    matches!(rustix::fs::lgetxattr(path, OPAQUE_XATTR, &mut value[..]), Ok(1) if value[0] == b'y')
}

fn lstat(path: &Path) -> io::Result<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(metadata) => Ok(Some(metadata)),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Splits an absolute or relative view path into its components, resolving
/// `.` and `..` lexically (`..` stops at the root), as Go's `path.Clean`
/// does.
pub fn components(path: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts
}

/// Resolves `.` and `..` in `parts` lexically, `..` never taking away any
/// of the first `floor` components.
fn beneath<'p>(parts: &[&'p str], floor: usize) -> Vec<&'p str> {
    let mut resolved = Vec::with_capacity(parts.len());
    for (index, &part) in parts.iter().enumerate() {
        match part {
            "" | "." if index >= floor => {}
            ".." if index >= floor => {
                if resolved.len() > floor {
                    resolved.pop();
                }
            }
            other => resolved.push(other),
        }
    }
    resolved
}

/// Looks `parts` up below `host` within one layer, one component at a time,
/// so that a symlink on the way ends the lookup instead of being followed on
/// the host.
fn lookup_in_layer(mut host: PathBuf, parts: &[&str]) -> io::Result<Option<(PathBuf, Metadata)>> {
    for (depth, part) in parts.iter().enumerate() {
        host.push(part);
        let Some(metadata) = lstat(&host)? else {
            return Ok(None);
        };
        if is_whiteout(&metadata) {
            return Ok(None);
        }
        if depth + 1 == parts.len() {
            return Ok(Some((host, metadata)));
        }
        if !metadata.is_dir() {
            return Ok(None);
        }
    }
    Ok(None)
}

fn join(parts: &[&str]) -> String {
    format!("/{}", parts.join("/"))
}

impl LayerView {
    pub fn new(layers: Vec<PathBuf>) -> Self {
        LayerView { layers }
    }

    pub fn layers(&self) -> &[PathBuf] {
        &self.layers
    }

    /// The entry at a path whose components are all directories or the
    /// final name (no symlinks followed), as the merged view shows it.
    fn lookup(&self, parts: &[&str]) -> io::Result<Option<ViewEntry>> {
        if parts.is_empty() {
            let host = self.layers.last().cloned().unwrap_or_default();
            return match lstat(&host)? {
                Some(metadata) => Ok(Some(ViewEntry {
                    path: "/".into(),
                    lossy_name: false,
                    host,
                    metadata,
                })),
                None => Ok(None),
            };
        }
        for layer in self.layers.iter().rev() {
            let mut host = layer.clone();
            for (depth, part) in parts.iter().enumerate() {
                host.push(part);
                let Some(metadata) = lstat(&host)? else {
                    break;
                };
                if is_whiteout(&metadata) {
                    return Ok(None);
                }
                let last = depth + 1 == parts.len();
                if last {
                    return Ok(Some(ViewEntry {
                        path: join(parts),
                        lossy_name: false,
                        host,
                        metadata,
                    }));
                }
                if !metadata.is_dir() {
                    // A file hides whatever lower layers have below its path.
                    return Ok(None);
                }
                if is_opaque(&host) {
                    // Lower layers cannot contribute below an opaque
                    // directory: the rest must be in this layer.
                    return Ok(lookup_in_layer(host, &parts[depth + 1..])?.map(
                        |(host, metadata)| ViewEntry {
                            path: join(parts),
                            lossy_name: false,
                            host,
                            metadata,
                        },
                    ));
                }
            }
        }
        Ok(None)
    }

    /// Resolves `path` in the view, following symlinks inside the view
    /// (the final one only when `follow_final`). Returns the resolved entry,
    /// or `None` when it does not exist.
    pub fn resolve(&self, path: &str, follow_final: bool) -> io::Result<Option<ViewEntry>> {
        match self.resolve_parent("/", path, follow_final)? {
            Resolved::Found(entry) => Ok(Some(*entry)),
            Resolved::Missing { .. } | Resolved::Broken => Ok(None),
        }
    }

    /// Resolves a path that may not exist yet: the directories leading to it
    /// are resolved (through symlinks) and the canonical path returned.
    pub fn resolve_for_creation(&self, path: &str) -> io::Result<Option<String>> {
        self.resolve_for_creation_beneath("/", path)
    }

    /// Like [`LayerView::resolve_for_creation`], with `path` taken below the
    /// directory `root` (a resolved path of the view) as a process chrooted
    /// there sees it: absolute symlinks start again from `root` and `..`
    /// never climbs above it. This is how BuildKit unpacks an `ADD`
    /// archive, chrooted in its destination.
    pub fn resolve_for_creation_beneath(
        &self,
        root: &str,
        path: &str,
    ) -> io::Result<Option<String>> {
        match self.resolve_parent(root, path, true)? {
            Resolved::Found(entry) => Ok(Some(entry.path)),
            Resolved::Missing { path } => Ok(Some(path)),
            Resolved::Broken => Ok(None),
        }
    }

    /// Resolves `path` below `root` (see `resolve_for_creation_beneath`).
    fn resolve_parent(&self, root: &str, path: &str, follow_final: bool) -> io::Result<Resolved> {
        let floor = components(root).len();
        let mut pending: Vec<String> = components(path)
            .into_iter()
            .rev()
            .map(str::to_string)
            .collect();
        let mut current: Vec<String> = components(root).into_iter().map(str::to_string).collect();
        let mut followed = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                if current.len() > floor {
                    current.pop();
                }
                continue;
            }
            if part == "." || part.is_empty() {
                continue;
            }
            let mut candidate: Vec<&str> = current.iter().map(String::as_str).collect();
            candidate.push(&part);
            let Some(entry) = self.lookup(&candidate)? else {
                // Missing: everything after it would be created new.
                let mut created: Vec<&str> = candidate;
                created.extend(pending.iter().rev().map(String::as_str));
                return Ok(Resolved::Missing {
                    path: join(&beneath(&created, floor)),
                });
            };
            let is_last = pending.is_empty();
            if entry.metadata.file_type().is_symlink() && (!is_last || follow_final) {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Ok(Resolved::Broken);
                }
                let target = fs::read_link(&entry.host)?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    current.truncate(floor);
                }
                pending.extend(
                    target
                        .split('/')
                        .filter(|p| !p.is_empty())
                        .rev()
                        .map(str::to_string),
                );
                continue;
            }
            if !is_last && !entry.metadata.is_dir() {
                return Ok(Resolved::Broken);
            }
            current.push(part);
            if is_last {
                return Ok(Resolved::Found(Box::new(entry)));
            }
        }
        let parts: Vec<&str> = current.iter().map(String::as_str).collect();
        Ok(match self.lookup(&parts)? {
            Some(entry) => Resolved::Found(Box::new(entry)),
            None => Resolved::Missing { path: join(&parts) },
        })
    }

    /// The entries of a directory (given as a resolved path), merged across
    /// layers and sorted by name.
    pub fn read_dir(&self, dir: &str) -> io::Result<Vec<ViewEntry>> {
        let parts = components(dir);
        let mut seen = std::collections::BTreeMap::<String, Option<ViewEntry>>::new();
        for layer in self.layers.iter().rev() {
            let mut host = layer.clone();
            let mut visible = true;
            let mut opaque = false;
            for (depth, part) in parts.iter().enumerate() {
                host.push(part);
                match lstat(&host)? {
                    None => {
                        visible = false;
                        break;
                    }
                    Some(m) if is_whiteout(&m) || !m.is_dir() => return Ok(collect(seen)),
                    Some(_) => {
                        if depth + 1 < parts.len() && is_opaque(&host) {
                            opaque = true;
                        }
                    }
                }
            }
            if visible {
                let listing = match fs::read_dir(&host) {
                    Ok(listing) => listing,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for item in listing {
                    let item = item?;
                    let raw_name = item.file_name();
                    let lossy_name = raw_name.to_str().is_none();
                    let name = raw_name.to_string_lossy().into_owned();
                    if seen.contains_key(&name) {
                        continue;
                    }
                    let child = host.join(&raw_name);
                    // Relative to the open directory (fstatat, not following
                    // a link, as symlink_metadata): no walk of the whole
                    // path again for each entry.
                    let metadata = item.metadata()?;
                    let entry = (!is_whiteout(&metadata)).then(|| ViewEntry {
                        path: if parts.is_empty() {
                            format!("/{name}")
                        } else {
                            format!("{}/{name}", join(&parts))
                        },
                        host: child,
                        metadata,
                        lossy_name,
                    });
                    seen.insert(name, entry);
                }
                if is_opaque(&host) {
                    return Ok(collect(seen));
                }
            }
            if opaque {
                return Ok(collect(seen));
            }
        }
        Ok(collect(seen))
    }

    /// Reads a whole (small) file of the view, such as `/etc/passwd`.
    pub fn read_to_string(&self, path: &str) -> io::Result<Option<String>> {
        match self.resolve(path, true)? {
            Some(entry) if entry.metadata.is_file() => fs::read_to_string(&entry.host).map(Some),
            _ => Ok(None),
        }
    }
}

enum Resolved {
    Found(Box<ViewEntry>),
    Missing {
        path: String,
    },
    /// A loop of symlinks or a file where a directory was needed.
    Broken,
}

fn collect(seen: std::collections::BTreeMap<String, Option<ViewEntry>>) -> Vec<ViewEntry> {
    seen.into_values().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn layer(root: &Path, name: &str) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    fn whiteout(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .expect("whiteout (needs root)");
    }

    fn names(view: &LayerView, dir: &str) -> Vec<String> {
        view.read_dir(dir)
            .expect("read_dir")
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn upper_layers_win_and_whiteouts_and_opaque_directories_hide() {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = layer(tmp.path(), "base");
        fs::create_dir_all(base.join("etc/conf.d")).expect("mkdir");
        fs::write(base.join("etc/hostname"), "base").expect("write");
        fs::write(base.join("etc/removed"), "old").expect("write");
        fs::write(base.join("etc/conf.d/a"), "a").expect("write");
        fs::create_dir_all(base.join("opt/old")).expect("mkdir");
        let upper = layer(tmp.path(), "upper");
        fs::create_dir_all(upper.join("etc/conf.d")).expect("mkdir");
        fs::write(upper.join("etc/hostname"), "upper").expect("write");
        whiteout(&upper.join("etc/removed"));
        rustix::fs::setxattr(
            upper.join("etc/conf.d").as_path(),
            OPAQUE_XATTR,
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .expect("opaque");
        fs::write(upper.join("etc/conf.d/b"), "b").expect("write");
        fs::write(upper.join("opt"), "now a file").expect("write");
        let view = LayerView::new(vec![base, upper]);
        assert_eq!(
            view.read_to_string("/etc/hostname")
                .expect("read")
                .as_deref(),
            Some("upper")
        );
        assert!(view
            .resolve("/etc/removed", false)
            .expect("resolve")
            .is_none());
        assert!(view
            .resolve("/etc/conf.d/a", false)
            .expect("resolve")
            .is_none());
        assert!(view.resolve("/opt/old", false).expect("resolve").is_none());
        assert_eq!(names(&view, "/etc"), ["/etc/conf.d", "/etc/hostname"]);
        assert_eq!(names(&view, "/etc/conf.d"), ["/etc/conf.d/b"]);
        assert_eq!(names(&view, "/"), ["/etc", "/opt"]);
    }

    #[test]
    fn symlinks_resolve_inside_the_view() {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = layer(tmp.path(), "base");
        fs::create_dir_all(base.join("usr/lib")).expect("mkdir");
        fs::write(base.join("usr/lib/libc.so"), "libc").expect("write");
        symlink("usr/lib", base.join("lib")).expect("symlink");
        symlink("/etc/passwd", base.join("abs")).expect("symlink");
        symlink("../../../../..", base.join("climb")).expect("symlink");
        symlink("loop", base.join("loop")).expect("symlink");
        let view = LayerView::new(vec![base]);
        let entry = view
            .resolve("/lib/libc.so", true)
            .expect("resolve")
            .expect("found");
        assert_eq!(entry.path, "/usr/lib/libc.so");
        assert_eq!(
            view.resolve_for_creation("/lib/new/file").expect("resolve"),
            Some("/usr/lib/new/file".into())
        );
        // An absolute symlink means the view's root, never the host's.
        assert!(view.resolve("/abs", true).expect("resolve").is_none());
        assert_eq!(
            view.resolve_for_creation("/climb/x").expect("resolve"),
            Some("/x".into())
        );
        assert!(view.resolve("/loop", true).expect("resolve").is_none());
        let unfollowed = view
            .resolve("/lib", false)
            .expect("resolve")
            .expect("found");
        assert!(unfollowed.metadata.file_type().is_symlink());
    }

    #[test]
    fn resolving_beneath_a_directory_keeps_to_it() {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = layer(tmp.path(), "base");
        fs::create_dir_all(base.join("app/usr/lib")).expect("mkdir");
        fs::create_dir_all(base.join("usr/lib")).expect("mkdir");
        symlink("/usr/lib", base.join("app/abs")).expect("symlink");
        symlink("../../usr/lib", base.join("app/rel")).expect("symlink");
        symlink("../../../../missing/x", base.join("app/dangling")).expect("symlink");
        let view = LayerView::new(vec![base]);
        // An absolute symlink starts from the directory, not the view's root.
        assert_eq!(
            view.resolve_for_creation_beneath("/app", "abs/new")
                .expect("resolve"),
            Some("/app/usr/lib/new".into())
        );
        // `..` stops at the directory.
        assert_eq!(
            view.resolve_for_creation_beneath("/app", "rel/new")
                .expect("resolve"),
            Some("/app/usr/lib/new".into())
        );
        assert_eq!(
            view.resolve_for_creation_beneath("/app", "dangling/y")
                .expect("resolve"),
            Some("/app/missing/x/y".into())
        );
        // From the root, the same links lead out of /app.
        assert_eq!(
            view.resolve_for_creation("/app/abs/new").expect("resolve"),
            Some("/usr/lib/new".into())
        );
        assert_eq!(beneath(&["a", "b", "..", "..", "..", "c"], 1), ["a", "c"]);
    }

    #[test]
    fn a_symlink_below_an_opaque_directory_is_not_followed_on_the_host() {
        let tmp = tempfile::tempdir().expect("tmp");
        let secret = tmp.path().join("host-secret");
        fs::create_dir_all(&secret).expect("mkdir");
        fs::write(secret.join("file"), "host data").expect("write");
        let lower = layer(tmp.path(), "lower");
        fs::create_dir_all(lower.join("a")).expect("mkdir");
        rustix::fs::setxattr(
            lower.join("a").as_path(),
            OPAQUE_XATTR,
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .expect("opaque");
        symlink(&secret, lower.join("a/b")).expect("symlink");
        let upper = layer(tmp.path(), "upper");
        fs::create_dir_all(upper.join("a/b")).expect("mkdir");
        let view = LayerView::new(vec![lower, upper]);
        let found = view.resolve("/a/b/file", true).expect("resolve");
        assert!(
            found.is_none(),
            "reached the host through a layer's symlink: {found:?}"
        );
        assert_eq!(view.read_to_string("/a/b/file").expect("read"), None);
    }
}
