//! What COPY reads from and the rules every part of it shares: which
//! entries a copy takes (the context's ignore file, `--exclude`), the
//! attributes it gives them, and path arithmetic.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use kiln_cache::pack::{belongs_in_layer, read_xattrs};
use kiln_cache::tree::Attributes;
use kiln_cache::{LayerView, ViewEntry};
use kiln_frontend::chmod::Chmod;
use kiln_frontend::DockerIgnore;

use crate::error::{bail, Context};

/// Where COPY reads from.
pub struct SourceTree<'a> {
    pub view: LayerView,
    /// The build context's ignore rules; none for stages and images.
    pub ignore: Option<&'a DockerIgnore>,
    /// How errors name it: "the build context", "stage build", ...
    pub label: String,
}

impl SourceTree<'_> {
    pub(super) fn is_context(&self) -> bool {
        self.ignore.is_some()
    }

    /// Whether a path (absolute in the view) is left out by the ignore file.
    /// Never the context's root: `*` or `**` (with `!` exceptions) leave out
    /// what is in it, not the directory `COPY . .` copies from.
    pub(super) fn ignored(&self, path: &str) -> bool {
        let relative = path.trim_matches('/');
        !matches!(relative, "" | ".")
            && self.ignore.is_some_and(|rules| rules.is_excluded(relative))
    }
}

/// What a copy does with an entry it finds below a directory it copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Choice {
    Take,
    /// An ignored directory below which an exception may bring something
    /// back.
    OnlyBelow,
    Skip,
}

/// Whether `child`, found below the copied directory `root`, is copied,
/// by the context's ignore rules and `--exclude`.
pub(super) fn choose(
    source: &SourceTree<'_>,
    root: &str,
    exclude: Option<&DockerIgnore>,
    child: &ViewEntry,
) -> crate::Result<Choice> {
    let is_dir = child.metadata.is_dir();
    let ignored = source.ignored(&child.path);
    let skip_ignored = !is_dir
        || source
            .ignore
            .is_some_and(|rules| rules.can_skip_dir(child.path.trim_start_matches('/')));
    if ignored && skip_ignored {
        return Ok(Choice::Skip);
    }
    let relative = child.path[root.len()..].trim_start_matches('/');
    if exclude.is_some_and(|rules| rules.is_excluded(relative)) {
        return Ok(Choice::Skip);
    }
    if child.lossy_name {
        bail!("{}: {UNSUPPORTED_NAME}", child.host.display());
    }
    Ok(if is_dir && ignored {
        Choice::OnlyBelow
    } else {
        Choice::Take
    })
}

#[derive(Clone, Copy)]
pub(super) struct Overrides<'a> {
    pub(super) mode: Option<&'a Chmod>,
    pub(super) owner: Option<(u32, u32)>,
    /// Of a file's extended attributes, keep only `security.capability`:
    /// for files of the build context, whose other attributes belong to the
    /// host (SELinux labels, a browser's download URL), as in BuildKit.
    pub(super) capabilities_only: bool,
}

impl Overrides<'_> {
    /// An entry's own attributes, every extended attribute a layer holds.
    pub(super) const NONE: Overrides<'static> = Overrides {
        mode: None,
        owner: None,
        capabilities_only: false,
    };
}

/// An entry's attributes, with `--chmod` and `--chown` applied.
pub(super) fn attributes_of(
    entry: &ViewEntry,
    overrides: &Overrides<'_>,
) -> crate::Result<Attributes> {
    let metadata = &entry.metadata;
    let (uid, gid) = overrides.owner.unwrap_or((metadata.uid(), metadata.gid()));
    let mut xattrs = read_xattrs(&entry.host)
        .with_context(|| format!("reading the extended attributes of {}", entry.path))?;
    xattrs.retain(|(name, _)| {
        belongs_in_layer(name) && (!overrides.capabilities_only || name == CAPABILITY_XATTR)
    });
    let own_mode = metadata.mode() & 0o7777;
    Ok(Attributes {
        mode: overrides
            .mode
            .map_or(own_mode, |chmod| chmod.apply(own_mode, metadata.is_dir())),
        uid,
        gid,
        mtime: metadata.mtime(),
        xattrs,
    })
}

pub(super) const CAPABILITY_XATTR: &str = "security.capability";

pub(super) const UNSUPPORTED_NAME: &str =
    "file names that are not UTF-8 are not supported (rename it, or leave it out with .dockerignore)";

/// Whether the host file `path` (`name` in errors) is a tar archive,
/// compressed or not.
pub(super) fn is_archive(path: &Path, name: &str) -> crate::Result<bool> {
    let file = File::open(path).with_context(|| format!("reading {name}"))?;
    Ok(kiln_cache::compress::is_tar_archive(file))
}

pub(super) fn has_wildcard(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

pub(super) fn base_name(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

pub(super) fn parent_of(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some((parent, _)) if !parent.is_empty() => parent.to_string(),
        _ => "/".to_string(),
    }
}

pub(super) fn join(dir: &str, name: &str) -> String {
    let dir = dir.trim_end_matches('/');
    let name = name.trim_start_matches('/');
    if name.is_empty() {
        if dir.is_empty() {
            "/".to_string()
        } else {
            dir.to_string()
        }
    } else {
        format!("{dir}/{name}")
    }
}
