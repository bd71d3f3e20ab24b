//! COPY, ADD and WORKDIR without a sandbox: Docker's source and destination
//! rules applied to a source tree (the build context, another stage or an
//! image), writing what changes into a fresh diff directory that becomes
//! the step's layer.

use std::collections::{HashMap, HashSet};
use std::fs::{self};
use std::path::Path;

use crate::error::{bail, Context};
use kiln_cache::tree::{Attributes, TreeWriter};
use kiln_cache::LayerView;
use kiln_frontend::chmod::Chmod;
use kiln_frontend::graph::{CopySource, CopyStep, MkdirStep};

use crate::users::resolve_owner;

mod hash;
mod select;
mod tree;
mod write;

pub use hash::{sources_digest, tree_digest};
pub use select::{select, Selection};
pub use tree::SourceTree;
use tree::{base_name, is_archive, join, parent_of, Overrides};
use write::Writer;

/// A file `ADD` downloaded, kept as long as a copy of this refers to it.
#[derive(Clone)]
pub struct Downloaded {
    pub path: std::path::PathBuf,
    pub digest: kiln_cache::Digest,
    /// The server's Last-Modified, in seconds since the epoch.
    pub modified: Option<i64>,
    pub _keep: std::sync::Arc<tempfile::TempDir>,
}

/// Where `ADD` gets what is not in a source tree, and how much an archive
/// it unpacks may hold.
pub trait Fetch {
    /// The download of a URL.
    fn download(&self, url: &str) -> crate::Result<Downloaded>;
    /// The checked-out files of a git repository, as `step` asks for them.
    fn git_checkout(&self, url: &str, step: &CopyStep) -> crate::Result<std::path::PathBuf>;
    /// The bounds on what an archive may unpack to (the store's).
    fn limits(&self) -> kiln_cache::Limits {
        kiln_cache::Limits::default()
    }
}

/// For copies that have no remote sources.
pub struct NothingToFetch;

impl Fetch for NothingToFetch {
    fn download(&self, url: &str) -> crate::Result<Downloaded> {
        bail!("copying files downloads nothing ({url})")
    }

    fn git_checkout(&self, url: &str, _: &CopyStep) -> crate::Result<std::path::PathBuf> {
        bail!("copying files fetches no git repository ({url})")
    }
}

/// Runs a COPY or ADD step, writing into the empty directory `diff`.
pub fn copy(
    step: &CopyStep,
    selection: Selection,
    source: &SourceTree<'_>,
    rootfs: &LayerView,
    diff: &Path,
    now: i64,
    fetch: &dyn Fetch,
) -> crate::Result<()> {
    let chown = step
        .chown
        .as_ref()
        .map(|spec| resolve_owner(spec, rootfs))
        .transpose()?;
    let owner = match chown {
        Some(owner) => Some(owner),
        // Files from the build context belong to root; files from another
        // image keep their owners.
        None if source.is_context() => Some((0, 0)),
        None => None,
    };
    let Selection {
        expansions,
        exclude,
        hashed,
    } = selection;
    let mut expansions = expansions.into_iter();
    if step.sources.len() > 1 && !step.dest.ends_with('/') {
        bail!(
            "with more than one source the destination must be a directory ending with / (not {})",
            step.dest
        );
    }
    let mut matches = Vec::new();
    let mut inline = Vec::new();
    let mut downloads = Vec::new();
    let mut repositories = Vec::new();
    // A `--parents` copy from an existing directory makes the destination
    // even when nothing below it matches, as BuildKit does.
    let mut make_dest = false;
    for copy_source in &step.sources {
        match copy_source {
            CopySource::Path(pattern) => {
                let found = expansions
                    .next()
                    .with_context(|| format!("{pattern} was not selected (a bug in kiln)"))?;
                make_dest |= step.parents && found.pivots > 0;
                matches.extend(found.matches);
            }
            CopySource::Inline(file) => inline.push(file),
            CopySource::Url(url) => {
                let downloaded = fetch
                    .download(url)
                    .with_context(|| format!("downloading {url}"))?;
                if let Some(expected) = &step.checksum {
                    if !expected.starts_with("sha256:") {
                        bail!("--checksum={expected}: kiln checks sha256 checksums only");
                    }
                    if *expected != downloaded.digest.to_string() {
                        bail!(
                            "{url} does not match --checksum={expected}: its content is {}",
                            downloaded.digest
                        );
                    }
                }
                downloads.push((url, url_file_name(url), downloaded));
            }
            CopySource::Git(url) => {
                let checkout = fetch.git_checkout(url, step)?;
                repositories.push(checkout);
            }
        }
    }
    let dest = step.dest.as_str();
    let dest_is_dir = dest.ends_with('/')
        || matches.len() + inline.len() + downloads.len() + repositories.len() > 1
        || rootfs
            .resolve(dest, true)?
            .is_some_and(|e| e.metadata.is_dir());
    let mut writer = Writer {
        rootfs,
        diff: TreeWriter::open(diff).with_context(|| format!("opening {}", diff.display()))?,
        diff_path: diff,
        now,
        default_owner: owner.unwrap_or((0, 0)),
        new_directory_mode: step
            .chmod
            .as_ref()
            .map_or(0o755, Chmod::created_directory_mode),
        ensured: HashSet::new(),
        hard_links: HashMap::new(),
        hashed: hashed.as_ref(),
        archive_limits: fetch.limits(),
    };
    if make_dest {
        writer.ensure_directory(dest)?;
    }
    for found in matches {
        // Each source is copied on its own, as BuildKit does: hard links are
        // kept inside one copied directory, not between separate sources.
        writer.hard_links.clear();
        let overrides = Overrides {
            mode: step.chmod.as_ref(),
            owner,
            capabilities_only: source.is_context(),
        };
        if found.entry.metadata.is_dir() {
            let target = if step.parents {
                join(dest, &found.parents_path)
            } else {
                dest.trim_end_matches('/').to_string()
            };
            writer.copy_directory(
                source,
                &found.entry,
                &target,
                &overrides,
                exclude.as_ref(),
                !step.parents,
            )?;
            continue;
        }
        let target = if step.parents {
            join(dest, &found.parents_path)
        } else if dest_is_dir {
            join(dest, base_name(&found.path))
        } else {
            dest.to_string()
        };
        if step.unpack && source.is_context() && is_archive(&found.entry.host, &found.entry.path)? {
            let dir = if step.parents {
                parent_of(&target)
            } else if dest_is_dir {
                dest.trim_end_matches('/').to_string()
            } else {
                dest.to_string()
            };
            // An unpacked archive keeps its own owners unless --chown
            // says otherwise, as in BuildKit.
            writer.unpack(&found.entry, &dir, chown)?;
            continue;
        }
        writer.copy_entry(&found.entry, &target, &overrides)?;
    }
    for file in inline {
        let target = if dest_is_dir {
            join(dest, &file.path)
        } else {
            dest.to_string()
        };
        writer.write_inline(file, &target, step.chmod.as_ref(), owner)?;
    }
    for checkout in repositories {
        // The checkout's content into the destination, as a directory of
        // the context is copied; owned by root or --chown. The checkout
        // never changes once made (its key is the commit), so there is
        // nothing to check against what the key read.
        let tree = SourceTree {
            view: LayerView::new(vec![checkout]),
            ignore: None,
            label: "the git repository".to_string(),
        };
        let root = tree
            .view
            .resolve("/", true)?
            .context("the git checkout has no root directory")?;
        let overrides = Overrides {
            mode: step.chmod.as_ref(),
            owner: Some(owner.unwrap_or((0, 0))),
            capabilities_only: true,
        };
        let hashed = writer.hashed.take();
        writer.hard_links.clear();
        writer.copy_directory(
            &tree,
            &root,
            dest.trim_end_matches('/'),
            &overrides,
            exclude.as_ref(),
            true,
        )?;
        writer.hashed = hashed;
    }
    for (url, name, downloaded) in downloads {
        if step.unpack_downloads && is_archive(&downloaded.path, url)? {
            // Into the destination itself, directory or not, as a local
            // archive unpacks.
            let dir = dest.trim_end_matches('/');
            writer.unpack_file(&downloaded.path, url, dir, chown)?;
            continue;
        }
        let target = if dest_is_dir {
            join(dest, &name)
        } else {
            dest.to_string()
        };
        let (uid, gid) = owner.unwrap_or((0, 0));
        // As BuildKit: downloads are private (0600) unless --chmod says
        // otherwise, and dated by the server.
        const DOWNLOAD_MODE: u32 = 0o600;
        let attributes = Attributes {
            mode: step
                .chmod
                .as_ref()
                .map_or(DOWNLOAD_MODE, |chmod| chmod.apply(DOWNLOAD_MODE, false)),
            uid,
            gid,
            mtime: downloaded.modified.unwrap_or(now),
            xattrs: Vec::new(),
        };
        writer.write_file(&downloaded.path, &target, &attributes)?;
    }
    Ok(())
}

/// The name a download gets in a destination directory: the last part of
/// the URL's path, decoded, as BuildKit names it.
fn url_file_name(url: &str) -> String {
    let last = url::Url::parse(url)
        .ok()
        .and_then(|url| {
            url.path_segments()?
                .rev()
                .find(|segment| !segment.is_empty())
                .map(|segment| {
                    percent_encoding::percent_decode_str(segment)
                        .decode_utf8_lossy()
                        .into_owned()
                })
        })
        .unwrap_or_default();
    if last.is_empty() || last == "." || last == ".." || last.contains('/') {
        "__unnamed__".to_string()
    } else {
        last
    }
}

/// Copies the whole file system `view` into the directory `dest`
/// (`--output type=local`), keeping owners, modes and times.
pub fn export_tree(view: LayerView, dest: &Path, now: i64) -> crate::Result<()> {
    let source = SourceTree {
        view,
        ignore: None,
        label: "the image".to_string(),
    };
    copy_subtree(&source, "/", dest, now)
}

/// `COPY sources... dest` from the context, with no flag.
fn plain_copy(sources: &[&str], dest: &str) -> CopyStep {
    CopyStep::plain(kiln_frontend::graph::Source::Context, sources, dest)
}

/// Copies the directory or file `path` of `source` into the directory
/// `dest` (created when missing), as `COPY path /` would: owners, modes and
/// times kept, what the context's ignore file leaves out left out.
pub fn copy_subtree(
    source: &SourceTree<'_>,
    path: &str,
    dest: &Path,
    now: i64,
) -> crate::Result<()> {
    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    if source.view.layers().is_empty() {
        // An image without layers has an empty file system.
        return Ok(());
    }
    let step = plain_copy(&[path], "/");
    copy(
        &step,
        select(&step, source)?,
        source,
        &LayerView::default(),
        dest,
        now,
        &NothingToFetch,
    )
}

/// Runs WORKDIR's directory creation, into the empty directory `diff`:
/// nothing when the directory exists already.
pub fn mkdir(step: &MkdirStep, rootfs: &LayerView, diff: &Path, now: i64) -> crate::Result<()> {
    match rootfs.resolve(&step.path, true)? {
        Some(existing) if existing.metadata.is_dir() => return Ok(()),
        Some(existing) => bail!(
            "{} exists in the image and is not a directory",
            existing.path
        ),
        None => {}
    }
    let owner = resolve_owner(&step.user, rootfs)
        .with_context(|| format!("creating {} for user {:?}", step.path, step.user))?;
    let mut writer = Writer {
        rootfs,
        diff: TreeWriter::open(diff).with_context(|| format!("opening {}", diff.display()))?,
        diff_path: diff,
        now,
        default_owner: owner,
        new_directory_mode: 0o755,
        ensured: HashSet::new(),
        hard_links: HashMap::new(),
        hashed: None,
        archive_limits: kiln_cache::Limits::default(),
    };
    let path = writer.place(&step.path)?;
    writer.ensure_parents(&path)?;
    writer.diff.create_dir(&path)?;
    let attributes = Attributes {
        mode: step.mode,
        uid: owner.0,
        gid: owner.1,
        mtime: now,
        xattrs: Vec::new(),
    };
    writer.diff.set_directory_attributes(&path, &attributes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::select::{clean, unescape};
    use super::*;
    use kiln_cache::StatCache;
    use kiln_frontend::DockerIgnore;
    use std::path::PathBuf;

    /// Keys a COPY from a context, lets `meanwhile` change the context,
    /// then copies with the same selection.
    fn key_then_copy(
        files: &[(&str, &str)],
        step: &CopyStep,
        meanwhile: impl FnOnce(&Path),
    ) -> crate::Result<(tempfile::TempDir, PathBuf)> {
        let temporary = context_of(files);
        let diff = key_and_copy(temporary.path(), step, meanwhile)?;
        Ok((temporary, diff))
    }

    /// A temporary directory whose `context` holds `files` (path, content).
    fn context_of(files: &[(&str, &str)]) -> tempfile::TempDir {
        let temporary = tempfile::tempdir().expect("temporary directory");
        let context = temporary.path().join("context");
        for (path, content) in files {
            let path = context.join(path);
            fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            fs::write(&path, content).expect("write");
        }
        temporary
    }

    /// Keys a COPY from `dir`'s `context`, lets `meanwhile` change it, then
    /// copies into `dir`'s `diff`, which it returns.
    fn key_and_copy(
        dir: &Path,
        step: &CopyStep,
        meanwhile: impl FnOnce(&Path),
    ) -> crate::Result<PathBuf> {
        let context = dir.join("context");
        let diff = dir.join("diff");
        fs::create_dir(&diff).expect("mkdir");
        let store = kiln_cache::Store::open(&dir.join("store")).expect("store");
        let stat_cache = StatCache::load(&store);
        let ignore = DockerIgnore::parse("", ".dockerignore").expect("no rules");
        let source = SourceTree {
            view: LayerView::new(vec![context.clone()]),
            ignore: Some(&ignore),
            label: "the build context".to_string(),
        };
        let mut selection = select(step, &source).expect("select");
        sources_digest(step, &mut selection, &source, &stat_cache, &mut Vec::new()).expect("key");
        meanwhile(&context);
        copy(
            step,
            selection,
            &source,
            &LayerView::default(),
            &diff,
            0,
            &NothingToFetch,
        )?;
        Ok(diff)
    }

    #[test]
    fn a_copy_of_what_its_key_read_succeeds() {
        let step = plain_copy(&["app.conf", "src"], "/app/");
        let files = [("app.conf", "one"), ("src/main.c", "int main;")];
        let (_dir, diff) = key_then_copy(&files, &step, |_| {}).expect("copy");
        assert_eq!(
            fs::read_to_string(diff.join("app/main.c")).expect("copied"),
            "int main;"
        );
        assert_eq!(
            fs::read_to_string(diff.join("app/app.conf")).expect("copied"),
            "one"
        );
    }

    #[test]
    fn a_file_saved_between_the_key_and_the_copy_fails_the_step() {
        let step = plain_copy(&["app.conf"], "/app.conf");
        let error = key_then_copy(&[("app.conf", "one")], &step, |context| {
            fs::write(context.join("app.conf"), "two").expect("save");
        })
        .expect_err("the copy must not take bytes its key did not read");
        assert!(
            error
                .to_string()
                .contains("app.conf changed while the step was copying it"),
            "{error}"
        );
    }

    #[test]
    fn files_added_or_changed_in_a_copied_directory_fail_the_step() {
        let step = plain_copy(&["src"], "/src/");
        let files = [("src/a.c", "a"), ("src/b.c", "b")];
        let added = key_then_copy(&files, &step, |context| {
            fs::write(context.join("src/c.c"), "new").expect("add");
        })
        .expect_err("a file the key never read");
        assert!(added.to_string().contains("src/c.c changed"), "{added}");
        let chmodded = key_then_copy(&files, &step, |context| {
            fs::set_permissions(
                context.join("src/b.c"),
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )
            .expect("chmod");
        })
        .expect_err("a mode the key never read");
        assert!(
            chmodded.to_string().contains("src/b.c changed"),
            "{chmodded}"
        );
    }

    #[test]
    fn a_symbolic_chmod_changes_each_entrys_own_mode() {
        let files = [
            ("src/run.sh", "run"),
            ("src/notes.txt", "notes"),
            ("src/sub/a", "a"),
        ];
        let temporary = context_of(&files);
        let context = temporary.path().join("context");
        for (path, mode) in [
            ("src/run.sh", 0o700),
            ("src/notes.txt", 0o600),
            ("src/sub", 0o700),
        ] {
            fs::set_permissions(
                context.join(path),
                std::os::unix::fs::PermissionsExt::from_mode(mode),
            )
            .expect("chmod");
        }
        let mut step = plain_copy(&["src"], "/new/app/");
        step.chmod = Some(Chmod::parse("u=rwX,go=X").expect("a symbolic mode"));
        let diff = key_and_copy(temporary.path(), &step, |_| {}).expect("copy");
        let mode = |path: &str| {
            let metadata = fs::symlink_metadata(diff.join(path)).expect("copied");
            std::os::unix::fs::MetadataExt::mode(&metadata) & 0o7777
        };
        assert_eq!(mode("new/app/run.sh"), 0o711, "X: an executable file");
        assert_eq!(mode("new/app/notes.txt"), 0o600, "X: a file that is not");
        assert_eq!(mode("new/app/sub"), 0o711, "X: a directory");
        // Directories the copy makes have no mode of their own to change:
        // 0755, as BuildKit makes them.
        assert_eq!((mode("new"), mode("new/app")), (0o755, 0o755));
    }

    #[test]
    fn path_helpers() {
        assert_eq!(join("/dst/", "a"), "/dst/a");
        assert_eq!(join("/", "a/b"), "/a/b");
        assert_eq!(join("/dst", ""), "/dst");
        assert_eq!(base_name("/a/b/"), "b");
        assert_eq!(parent_of("/a/b"), "/a");
        assert_eq!(parent_of("/a"), "/");
        assert_eq!(unescape("a\\*b"), "a*b");
        assert_eq!(clean("/a/./b/../../../c/"), ["c"]);
    }
}
