//! What a COPY's key reads of its sources: every selected entry's path,
//! mode, link target and content (through the stat cache), and for the
//! build context a record of it that the copy checks again.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use kiln_cache::{Digest, KeyHasher, StatCache, ViewEntry};
use kiln_frontend::graph::{CopySource, CopyStep};
use kiln_frontend::DockerIgnore;

use super::select::{Hashed, Selection};
use super::tree::{attributes_of, choose, Choice, Overrides, SourceTree};
use crate::error::Context;

/// A digest of what a COPY or ADD reads from `source`: for every path it
/// matches, the files below it that it would copy, each by its path
/// relative to the match, type, mode, link target and content (through the
/// stat cache). Not times or owners: touching a file changes nothing, and
/// files from the context belong to root (or to `--chown`) anyway.
pub fn sources_digest(
    step: &CopyStep,
    selection: &mut Selection,
    source: &SourceTree<'_>,
    stat_cache: &StatCache,
    files: &mut Vec<(String, String)>,
) -> crate::Result<Digest> {
    let mut hasher = KeyHasher::new("sources", None);
    let mut hashed = source.is_context().then(HashMap::new);
    let patterns = step.sources.iter().filter_map(|source| match source {
        CopySource::Path(pattern) => Some(pattern),
        _ => None,
    });
    for (pattern, expansion) in patterns.zip(&selection.expansions) {
        hasher.field("pattern", pattern);
        for found in &expansion.matches {
            hasher.field("match", &found.path);
            let mut entries = EntryHasher {
                hasher: &mut hasher,
                source,
                root: &found.entry.path,
                exclude: selection.exclude.as_ref(),
                stat_cache,
                files,
                hashed: hashed.as_mut(),
            };
            entries.hash(&found.entry)?;
        }
    }
    selection.hashed = hashed;
    Ok(hasher.finish())
}

/// A digest of the directory or file `path` of `source` and what is below
/// it, as [`sources_digest`] takes it (a bind mount's content).
pub fn tree_digest(
    source: &SourceTree<'_>,
    path: &str,
    stat_cache: &StatCache,
    files: &mut Vec<(String, String)>,
) -> crate::Result<Digest> {
    let mut hasher = KeyHasher::new("tree", None);
    if let Some(entry) = source.view.resolve(path, true)? {
        EntryHasher {
            hasher: &mut hasher,
            source,
            root: &entry.path,
            exclude: None,
            stat_cache,
            files,
            hashed: None,
        }
        .hash(&entry)?;
    }
    Ok(hasher.finish())
}

/// Hashes entries of a source and what is below them for a key.
pub(super) struct EntryHasher<'h, 's> {
    hasher: &'h mut KeyHasher,
    source: &'h SourceTree<'s>,
    /// The matched directory: `--exclude` patterns are relative to it.
    root: &'h str,
    exclude: Option<&'h DockerIgnore>,
    stat_cache: &'h StatCache,
    /// For each entry, its path in the source and what was hashed of it
    /// (for `--explain`).
    files: &'h mut Vec<(String, String)>,
    /// What was read of each entry, by host path, for the copy to check.
    hashed: Option<&'h mut HashMap<PathBuf, Hashed>>,
}

impl EntryHasher<'_, '_> {
    fn hash(&mut self, entry: &ViewEntry) -> crate::Result<()> {
        let source = self.source;
        let hasher = &mut *self.hasher;
        let metadata = &entry.metadata;
        let relative = entry.path[self.root.len()..].trim_start_matches('/');
        hasher.field("path", relative);
        let mode = format!("{:o}", metadata.mode());
        hasher.field("mode", &mode);
        let file_type = metadata.file_type();
        // Written piece by piece, with room for a digest: this runs for
        // every file of the context on every build.
        let mut description = String::with_capacity(96);
        description.push_str("mode ");
        description.push_str(&mode);
        if !source.is_context() {
            // Files of a stage or an image keep their owners and extended
            // attributes (file capabilities among them) when copied; those
            // of the context become root's.
            let owner = format!("{}:{}", metadata.uid(), metadata.gid());
            hasher.field("owner", &owner);
            description.push_str(&format!(" owner {owner}"));
            for (name, value) in attributes_of(entry, &Overrides::NONE)?.xattrs {
                hasher.field("xattr", &name);
                hasher.field("xattr-value", &value);
                description.push_str(&format!(" xattr {name}"));
            }
        }
        let mut read = Hashed {
            mode: metadata.mode(),
            link: None,
            content: None,
            device: 0,
        };
        if file_type.is_symlink() {
            let target = fs::read_link(&entry.host)
                .with_context(|| format!("reading the link {}", entry.path))?;
            hasher.field("link", target.as_os_str().as_encoded_bytes());
            description.push_str(&format!(" link {}", target.display()));
            read.link = Some(target);
        } else if file_type.is_file() {
            let digest = self
                .stat_cache
                .digest(&entry.host, metadata)
                .with_context(|| format!("reading {}", entry.path))?;
            let digest_text = digest.to_string();
            hasher.field("content", &digest_text);
            description.push_str(" content ");
            description.push_str(&digest_text);
            read.content = Some(digest);
        } else if file_type.is_block_device() || file_type.is_char_device() {
            hasher.field("device", metadata.rdev().to_string());
            read.device = metadata.rdev();
            description.push_str(&format!(" device {}", metadata.rdev()));
        }
        self.files
            .push((entry.path.trim_start_matches('/').to_string(), description));
        if let Some(hashed) = self.hashed.as_deref_mut() {
            hashed.insert(entry.host.clone(), read);
        }
        if file_type.is_dir() {
            for child in source
                .view
                .read_dir(&entry.path)
                .with_context(|| format!("reading {}", entry.path))?
            {
                match choose(source, self.root, self.exclude, &child)? {
                    Choice::Skip => {}
                    Choice::Take | Choice::OnlyBelow => self.hash(&child)?,
                }
            }
        }
        Ok(())
    }
}
