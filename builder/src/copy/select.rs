//! What a COPY reads: its source patterns expanded (Go's path globs,
//! `**` and `--parents` pivots) in the source tree, once per step for both
//! its key and its copy.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use kiln_cache::{Digest, ViewEntry};
use kiln_frontend::graph::{CopySource, CopyStep};
use kiln_frontend::pattern::component_matches;
use kiln_frontend::DockerIgnore;
use kiln_overlay::components;

use super::tree::{base_name, has_wildcard, join, SourceTree, UNSUPPORTED_NAME};
use crate::error::bail;

/// A source path a pattern matched.
pub(super) struct Matched {
    /// The file or directory, symlinks followed.
    pub(super) entry: ViewEntry,
    /// The matched path, as written (symlinks not followed), absolute.
    pub(super) path: String,
    /// Where it goes below the destination with `--parents`.
    pub(super) parents_path: String,
}

/// What a COPY or ADD reads, chosen once for both its cache key and the
/// copy: each source pattern's matches and the parsed `--exclude`. For the
/// build context (files a user may save at any moment) it also keeps what
/// the key hashed of every entry, which the copy checks again as it reads:
/// a file changed in between fails the step instead of giving a cache
/// record whose key describes other bytes than its layer.
pub struct Selection {
    /// One per path source, in the step's order.
    pub(super) expansions: Vec<Expansion>,
    pub(super) exclude: Option<DockerIgnore>,
    /// By host path, what the key read of each entry of the context.
    pub(super) hashed: Option<HashMap<PathBuf, Hashed>>,
}

/// What a key read of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hashed {
    pub(super) mode: u32,
    pub(super) link: Option<PathBuf>,
    pub(super) content: Option<Digest>,
    /// A device's number.
    pub(super) device: u64,
}

/// Matches the step's path sources in `source` and parses its `--exclude`.
/// A source that is not a wildcard and matches nothing is an error.
pub fn select(step: &CopyStep, source: &SourceTree<'_>) -> crate::Result<Selection> {
    let exclude = if step.exclude.is_empty() {
        None
    } else {
        Some(DockerIgnore::parse(&step.exclude.join("\n"), "--exclude")?)
    };
    let mut expansions = Vec::new();
    for copy_source in &step.sources {
        if let CopySource::Path(pattern) = copy_source {
            let found = expand(source, pattern, step.parents)?;
            if found.matches.is_empty() && !has_wildcard(pattern) {
                bail!("{pattern}: not found in {}", source.label);
            }
            expansions.push(found);
        }
    }
    Ok(Selection {
        expansions,
        exclude,
        hashed: None,
    })
}

/// A COPY source pattern as BuildKit reads it. With `--parents`, the part
/// before the first `/./` (the pivot; the root when there is none) names
/// the directories copied from, its wildcards resolved as for a plain COPY,
/// and the part after it is matched below each of them as an include
/// pattern, where a `**` component stands for any number of directories;
/// what it matches keeps its path from the pivot. Without `--parents` the
/// whole pattern is one path whose every component names one component.
pub(super) struct SourcePattern {
    /// The pivot's components, `.` and `..` resolved.
    pub(super) pivot: Vec<String>,
    /// The components after the pivot, `.` and `..` resolved.
    pub(super) below: Vec<String>,
    /// Whether a `**` component matches any number of components.
    pub(super) recursive: bool,
}

impl SourcePattern {
    fn parse(pattern: &str, parents: bool) -> SourcePattern {
        if !parents {
            return SourcePattern {
                pivot: Vec::new(),
                below: clean(pattern),
                recursive: false,
            };
        }
        // BuildKit cuts at the first `/./` and cleans both halves on their
        // own: `..` after the pivot cannot climb above it. A leading `./`
        // only says "in the context" (or the stage's root) and is no pivot.
        match pattern.split_once("/./") {
            Some((pivot, below)) => SourcePattern {
                pivot: clean(pivot),
                below: clean(below),
                recursive: true,
            },
            None => SourcePattern {
                pivot: Vec::new(),
                below: clean(pattern),
                recursive: true,
            },
        }
    }
}

/// The components of a path, cleaned as the layer view cleans them.
pub(super) fn clean(path: &str) -> Vec<String> {
    components(path).into_iter().map(str::to_string).collect()
}

/// What a COPY source pattern matches.
pub(super) struct Expansion {
    /// The matched paths, sorted, none below another (which copies it).
    pub(super) matches: Vec<Matched>,
    /// How many of the pivot's paths are directories: a `--parents` copy
    /// from one makes the destination even when nothing below it matches.
    pub(super) pivots: usize,
}

/// The paths of `source` a COPY pattern matches; symlinks in the matched
/// path are followed (inside the source), not in what is copied.
pub(super) fn expand(
    source: &SourceTree<'_>,
    pattern: &str,
    parents: bool,
) -> crate::Result<Expansion> {
    let pattern = SourcePattern::parse(pattern, parents);
    let mut pivots = vec!["/".to_string()];
    for (index, part) in pattern.pivot.iter().enumerate() {
        let last = index + 1 == pattern.pivot.len() && pattern.below.is_empty();
        pivots = match_component(source, &pivots, part, false, last)?;
    }
    let mut existing_pivots = 0;
    let mut candidates = Vec::new();
    for pivot in pivots {
        if source
            .view
            .resolve(&pivot, true)?
            .is_some_and(|entry| entry.metadata.is_dir())
        {
            existing_pivots += 1;
        }
        let mut paths = vec![pivot.clone()];
        for (index, part) in pattern.below.iter().enumerate() {
            let last = index + 1 == pattern.below.len();
            paths = match_component(source, &paths, part, pattern.recursive, last)?;
        }
        candidates.extend(paths.into_iter().map(|path| (path, pivot.len())));
    }
    candidates.sort();
    candidates.dedup();
    let mut kept = HashSet::new();
    let mut matches = Vec::new();
    for (path, pivot_len) in candidates {
        // With `**`, a directory and what is below it may both match: the
        // directory's copy already holds the rest. Sorted, a directory
        // comes before what is below it.
        if path
            .match_indices('/')
            .any(|(at, _)| at > 0 && kept.contains(&path[..at]))
        {
            continue;
        }
        if source.ignored(&path) {
            continue;
        }
        let Some(entry) = source.view.resolve(&path, true)? else {
            continue;
        };
        let parents_path = path[pivot_len..].trim_start_matches('/').to_string();
        kept.insert(path.clone());
        matches.push(Matched {
            entry,
            path,
            parents_path,
        });
    }
    Ok(Expansion {
        matches,
        pivots: existing_pivots,
    })
}

/// The paths below each of `bases` that one pattern component matches. A
/// name without wildcards is taken as is (whether it exists is checked at
/// the end). With `recursive`, `**` matches the base itself and every
/// directory below it, symlinks not followed (as BuildKit walks the tree).
/// Unless the component is the `last`, directories the ignore file leaves
/// out entirely are dropped, as nothing below them can be copied.
pub(super) fn match_component(
    source: &SourceTree<'_>,
    bases: &[String],
    part: &str,
    recursive: bool,
    last: bool,
) -> crate::Result<Vec<String>> {
    let mut found = Vec::new();
    for base in bases {
        if recursive && part == "**" {
            found.push(base.clone());
            descendant_directories(source, base, &mut found)?;
        } else if has_wildcard(part) {
            let dir = source.view.resolve(base, true)?;
            let Some(dir) = dir.filter(|d| d.metadata.is_dir()) else {
                continue;
            };
            for child in source.view.read_dir(&dir.path)? {
                let name = base_name(&child.path);
                if component_matches(part, name) {
                    if child.lossy_name {
                        bail!("{}: {UNSUPPORTED_NAME}", child.host.display());
                    }
                    found.push(join(base, name));
                }
            }
        } else {
            found.push(join(base, &unescape(part)));
        }
    }
    if !last {
        found.retain(|path| may_hold_matches(source, path));
    }
    Ok(found)
}

/// Adds every directory below `base` (a path as written) to `found`,
/// skipping what the ignore file leaves out entirely.
pub(super) fn descendant_directories(
    source: &SourceTree<'_>,
    base: &str,
    found: &mut Vec<String>,
) -> crate::Result<()> {
    let Some(dir) = source
        .view
        .resolve(base, true)?
        .filter(|d| d.metadata.is_dir())
    else {
        return Ok(());
    };
    let mut pending = vec![(base.to_string(), dir.path)];
    while let Some((written, resolved)) = pending.pop() {
        for child in source.view.read_dir(&resolved)? {
            // `metadata` is the child's own (lstat): a symlink to a
            // directory is not walked into, which also keeps loops out.
            if !child.metadata.is_dir() {
                continue;
            }
            let path = join(&written, base_name(&child.path));
            if !may_hold_matches(source, &path) {
                continue;
            }
            if child.lossy_name {
                bail!("{}: {UNSUPPORTED_NAME}", child.host.display());
            }
            found.push(path.clone());
            pending.push((path, child.path));
        }
    }
    Ok(())
}

/// Whether something at or below `path` may be copied: false for a
/// directory the ignore file leaves out with no exception below it.
pub(super) fn may_hold_matches(source: &SourceTree<'_>, path: &str) -> bool {
    !source.ignored(path)
        || source
            .ignore
            .is_some_and(|rules| !rules.can_skip_dir(path.trim_start_matches('/')))
}

pub(super) fn unescape(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    let mut chars = part.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_cache::LayerView;
    use std::fs;

    /// A source tree holding the empty files `files` (and their parents).
    fn tree(files: &[&str]) -> (tempfile::TempDir, SourceTree<'static>) {
        let dir = tempfile::tempdir().expect("temporary directory");
        for file in files {
            let path = dir.path().join(file);
            fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            fs::write(&path, "").expect("write");
        }
        let source = SourceTree {
            view: LayerView::new(vec![dir.path().to_path_buf()]),
            ignore: None,
            label: "the test tree".to_string(),
        };
        (dir, source)
    }

    /// Each match as (path, where it goes below the destination).
    fn matched(source: &SourceTree<'_>, pattern: &str, parents: bool) -> Vec<(String, String)> {
        expand(source, pattern, parents)
            .expect("expand")
            .matches
            .into_iter()
            .map(|found| (found.path, found.parents_path))
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(path, below)| (path.to_string(), below.to_string()))
            .collect()
    }

    const FILES: &[&str] = &[
        "test/a/b/c/d/foo",
        "test/a/b/c/d/e/bay",
        "test/a/b2/c/d/e/bar",
        "test/a/b/c2/d/e/baz",
        "test/a/b/c2/d/e2/baz",
    ];

    #[test]
    fn parents_patterns_split_at_the_first_pivot() {
        let pattern = SourcePattern::parse("/test/a/b*/./c/**/e", true);
        assert_eq!(pattern.pivot, ["test", "a", "b*"]);
        assert_eq!(pattern.below, ["c", "**", "e"]);
        assert!(pattern.recursive);
        // Later pivots are plain `.`; `..` cannot climb above the pivot.
        let pattern = SourcePattern::parse("/test/a/./b/./c/../../../d", true);
        assert_eq!(pattern.pivot, ["test", "a"]);
        assert_eq!(pattern.below, ["d"]);
        // A leading `./` and a trailing `/.` are no pivot.
        let pattern = SourcePattern::parse("./test/a/.", true);
        assert!(pattern.pivot.is_empty());
        assert_eq!(pattern.below, ["test", "a"]);
        // Without --parents `/./` means nothing and `**` is a plain `*`.
        let pattern = SourcePattern::parse("/test/./a/**", false);
        assert!(pattern.pivot.is_empty());
        assert_eq!(pattern.below, ["test", "a", "**"]);
        assert!(!pattern.recursive);
    }

    #[test]
    fn parents_keep_the_path_from_a_wildcard_pivot() {
        let (_dir, source) = tree(FILES);
        assert_eq!(
            matched(&source, "/test/a/b*/./c/**/e", true),
            pairs(&[("/test/a/b/c/d/e", "c/d/e"), ("/test/a/b2/c/d/e", "c/d/e"),])
        );
        assert_eq!(
            matched(&source, "/test/a/./*/c", true),
            pairs(&[("/test/a/b/c", "b/c"), ("/test/a/b2/c", "b2/c")])
        );
        assert_eq!(
            matched(&source, "/test/a/b/c/d", true),
            pairs(&[("/test/a/b/c/d", "test/a/b/c/d")])
        );
    }

    #[test]
    fn double_star_matches_any_number_of_directories() {
        let (_dir, source) = tree(FILES);
        // Two directories deep, and none at all.
        assert_eq!(
            matched(&source, "/test/a/b2/c/**/bar", true),
            pairs(&[("/test/a/b2/c/d/e/bar", "test/a/b2/c/d/e/bar")])
        );
        assert_eq!(
            matched(&source, "/test/a/b/./c2/**/d", true),
            pairs(&[("/test/a/b/c2/d", "c2/d")])
        );
        assert_eq!(
            matched(&source, "/test/a/b/./c*/**/baz", true),
            pairs(&[
                ("/test/a/b/c2/d/e/baz", "c2/d/e/baz"),
                ("/test/a/b/c2/d/e2/baz", "c2/d/e2/baz"),
            ])
        );
        // What is below a match is copied with it, not again on its own.
        assert_eq!(
            matched(&source, "/test/a/./b2/**", true),
            pairs(&[("/test/a/b2", "b2")])
        );
        // Without --parents, `**` stands for one name, as in Go's
        // filepath.Match.
        assert!(matched(&source, "/test/a/b2/c/**/bar", false).is_empty());
        assert_eq!(
            matched(&source, "/test/a/b2/c/**/e", false),
            pairs(&[("/test/a/b2/c/d/e", "test/a/b2/c/d/e")])
        );
    }

    #[test]
    fn double_star_does_not_follow_symlinks() {
        let (dir, source) = tree(FILES);
        std::os::unix::fs::symlink("/test/a/b2", dir.path().join("test/a/b/loop"))
            .expect("symlink");
        assert!(matched(&source, "/test/a/b/**/bar", true).is_empty());
    }

    #[test]
    fn pivots_are_counted_even_when_nothing_below_matches() {
        let (_dir, source) = tree(FILES);
        let found = expand(&source, "/test/a/b/./c3*", true).expect("expand");
        assert!(found.matches.is_empty());
        assert_eq!(found.pivots, 1);
        let found = expand(&source, "/test/a/b3*/./c", true).expect("expand");
        assert_eq!(found.pivots, 0);
        // Without a pivot the copy is from the root.
        let found = expand(&source, "/test/a/b3*/c", true).expect("expand");
        assert!(found.matches.is_empty());
        assert_eq!(found.pivots, 1);
    }
}
