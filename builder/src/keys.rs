//! Cache keys of a build's steps, as ../shared/design.md sets them: each
//! chained on its parent's, made of the step's definition and the content
//! of what it reads, never of where the context lives, the clock or the
//! order steps run in.

use crate::error::Context;
use kiln_cache::{Digest, KeyHasher, StatCache, Store};
use kiln_frontend::graph::{Action, Base, CopySource, CopyStep, Mount, RunStep, Source};
use kiln_frontend::Platform;

use crate::copy;
use crate::downloads::Downloads;
use crate::git::{GitSource, GitSources};
use crate::sources::Sources;

fn json(value: &impl serde::Serialize) -> crate::Result<Vec<u8>> {
    serde_json::to_vec(value).context("encoding a step for its cache key")
}

/// A mount with its stage numbers left out (see `without_stage_number`).
fn without_stage_numbers(mount: &Mount) -> Mount {
    let mut mount = mount.clone();
    match &mut mount {
        Mount::Bind { from, .. }
        | Mount::Cache {
            from: Some(from), ..
        } => {
            *from = without_stage_number(from);
        }
        _ => {}
    }
    mount
}

/// A stage as a definition names it: by its number among the stages this
/// build needs, which another `--target` changes. Keys take the stage's own
/// key instead (`Sources::identity`), so the number is left out.
fn without_stage_number(source: &Source) -> Source {
    match source {
        Source::Stage { .. } => Source::Stage { stage: 0 },
        other => other.clone(),
    }
}

/// How a step's key names the files it reads from another stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StageFiles {
    /// By the stage's key: known without reading a file, and the same on
    /// every machine that has the stage's cache records.
    ByKey,
    /// By the files' content (paths, modes, owners, bytes): the same when a
    /// stage is rebuilt and makes the same files, as BuildKit's content
    /// keys are.
    ByContent,
}

impl StageFiles {
    /// Whether a key names the files `from` gives by their content instead
    /// of by what `from` is. The context's files always count by content,
    /// and are keyed so in both ways; an image's never (its digest names
    /// them).
    fn by_content(self, from: &Source) -> bool {
        match from {
            Source::Context | Source::NamedContext { .. } => true,
            Source::Stage { .. } => self == StageFiles::ByContent,
            Source::Image { .. } => false,
        }
    }

    /// Whether the key leaves out what `from` is: a stage named by its
    /// files.
    fn omits_identity(self, from: &Source) -> bool {
        matches!(from, Source::Stage { .. }) && self == StageFiles::ByContent
    }
}

/// A step's key, what went into it (the key's fields, and `file PATH` for
/// each file read) for `--explain`, and for a COPY whose key read its
/// sources, the selection the copy must use.
pub(crate) struct StepKey {
    pub key: Digest,
    pub parts: Vec<(String, String)>,
    pub selection: Option<copy::Selection>,
}

/// Whether `action` reads files of another stage, which its key can name
/// two ways (see `StageFiles`).
pub(crate) fn reads_stage_files(action: &Action) -> bool {
    match action {
        Action::Copy(step) => matches!(step.from, Source::Stage { .. }),
        Action::Run(run) => run.mounts.iter().any(|mount| {
            matches!(
                mount,
                Mount::Bind {
                    from: Source::Stage { .. },
                    ..
                }
            )
        }),
        Action::Mkdir(_) | Action::Metadata => false,
    }
}

/// Computes keys from what steps read: their sources, the context's files
/// (through the stat cache) and what `ADD` downloads.
pub(crate) struct Keys<'a> {
    pub sources: &'a Sources<'a>,
    pub stat_cache: &'a StatCache,
    pub downloads: &'a Downloads<'a>,
    pub git: &'a GitSources<'a>,
    /// SOURCE_DATE_EPOCH changes the times every new layer records.
    pub source_date_epoch: Option<i64>,
    /// What every RUN step gets from the build (`--add-host`, `--ulimit`,
    /// `--shm-size`), which its result may depend on.
    pub resources: &'a kiln_runtime::Resources,
}

impl Keys<'_> {
    /// The key a stage's chain starts from: its base.
    pub(crate) fn base_key(&self, base: &Base, platform: &Platform) -> crate::Result<Digest> {
        let epoch = self
            .source_date_epoch
            .map_or_else(|| "none".to_string(), |epoch| epoch.to_string());
        Ok(match base {
            Base::Scratch => {
                let mut key = KeyHasher::new("scratch", None);
                key.field("platform", platform.to_string());
                key.field("source-date-epoch", &epoch);
                key.finish()
            }
            Base::Image { reference } => {
                let image = self.sources.layers.image(reference)?;
                let mut key = KeyHasher::new("image", None);
                key.field("manifest", image.manifest_digest.to_string());
                key.field("source-date-epoch", &epoch);
                key.finish()
            }
            Base::Stage { stage } => self.sources.outputs.get(*stage)?.key,
        })
    }

    /// The key of a step that makes a layer, on top of `parent`, with what
    /// went into it (the key's fields, and `file PATH` for each file read),
    /// for `--explain`.
    pub(crate) fn step_key(
        &self,
        parent: &Digest,
        action: &Action,
        stage_files: StageFiles,
    ) -> crate::Result<StepKey> {
        let keyed = |(key, parts)| StepKey {
            key,
            parts,
            selection: None,
        };
        match action {
            Action::Copy(step) => self.copy_key(parent, step, stage_files),
            Action::Run(run) => self.run_key(parent, run, stage_files).map(keyed),
            Action::Mkdir(mkdir) => {
                let mut key = KeyHasher::explained("mkdir", Some(parent));
                key.field("definition", json(mkdir)?);
                Ok(keyed(key.finish_with_parts()))
            }
            Action::Metadata => Ok(keyed((*parent, Vec::new()))),
        }
    }

    fn copy_key(
        &self,
        parent: &Digest,
        step: &CopyStep,
        stage_files: StageFiles,
    ) -> crate::Result<StepKey> {
        let omits_identity = stage_files.omits_identity(&step.from);
        let mut key = KeyHasher::explained(
            if omits_identity {
                "copy-content"
            } else {
                "copy"
            },
            Some(parent),
        );
        let mut definition = CopyStep {
            from: without_stage_number(&step.from),
            ..step.clone()
        };
        let mut git_sources = Vec::new();
        for source in &mut definition.sources {
            if let CopySource::Git(url) = source {
                // By the commit it names now, never by the URL: the same
                // commit reached another way is the same files. What the
                // flags say of it is in what `key_of` says.
                let git = GitSource::for_add(url, step)?;
                let resolved = self
                    .git
                    .resolve(&git)
                    .with_context(|| format!("resolving {}", git.git.redacted_remote()))?;
                git_sources.push(crate::git::key_of(&git, &resolved));
                *url = String::new();
            }
        }
        if !git_sources.is_empty() {
            definition.checksum = None;
            definition.keep_git_dir = false;
        }
        key.field("definition", json(&definition)?);
        if !omits_identity {
            key.field("from", self.sources.identity(&step.from)?);
        }
        let mut files = Vec::new();
        let mut selection = None;
        if stage_files.by_content(&step.from) {
            let source = self.sources.tree(&step.from)?;
            let mut selected = copy::select(step, &source)?;
            key.field(
                "sources",
                copy::sources_digest(step, &mut selected, &source, self.stat_cache, &mut files)?
                    .to_string(),
            );
            selection = Some(selected);
        }
        for commit in git_sources {
            key.field("git", commit);
        }
        for source in &step.sources {
            if let CopySource::Url(url) = source {
                // What the URL serves now: downloaded once, and used by the
                // step itself when the key misses.
                let digest = self.downloads.digest(url)?;
                key.field("download", format!("{url} {digest}"));
            }
        }
        let (key, parts) = with_files(key, files);
        Ok(StepKey {
            key,
            parts,
            selection,
        })
    }

    fn run_key(
        &self,
        parent: &Digest,
        run: &RunStep,
        stage_files: StageFiles,
    ) -> crate::Result<(Digest, Vec<(String, String)>)> {
        let mut key = KeyHasher::explained(
            match stage_files {
                StageFiles::ByKey => "run",
                StageFiles::ByContent => "run-content",
            },
            Some(parent),
        );
        // Proxy settings reach the step but not its key, as in BuildKit.
        let definition = RunStep {
            proxy_env: Vec::new(),
            mounts: run.mounts.iter().map(without_stage_numbers).collect(),
            ..run.clone()
        };
        key.field("definition", json(&definition)?);
        // Only when given, so that keys of builds without them stay as
        // they were.
        if *self.resources != kiln_runtime::Resources::default() {
            key.field("resources", json(self.resources)?);
        }
        let mut files = Vec::new();
        for mount in &run.mounts {
            match mount {
                Mount::Bind { from, source, .. } => {
                    if !stage_files.omits_identity(from) {
                        key.field("bind", self.sources.identity(from)?);
                    }
                    if stage_files.by_content(from) {
                        let tree = self.sources.tree(from)?;
                        key.field(
                            "bind-content",
                            copy::tree_digest(&tree, source, self.stat_cache, &mut files)?
                                .to_string(),
                        );
                    }
                }
                Mount::Cache {
                    from: Some(from), ..
                } => key.field("cache-from", self.sources.identity(from)?),
                // Their definitions are in the step's: ids, targets and
                // options; never a secret's value.
                Mount::Cache { .. }
                | Mount::Tmpfs { .. }
                | Mount::Secret { .. }
                | Mount::Ssh { .. } => {}
            }
        }
        Ok(with_files(key, files))
    }
}

fn with_files(key: KeyHasher, files: Vec<(String, String)>) -> (Digest, Vec<(String, String)>) {
    let (digest, mut parts) = key.finish_with_parts();
    parts.extend(
        files
            .into_iter()
            .map(|(path, description)| (format!("file {path}"), description)),
    );
    (digest, parts)
}

/// Where a step is, for `--explain`: its stage's name and place in it.
pub struct StepPlace<'a> {
    pub stage: &'a str,
    pub step: usize,
}

/// What the last build of a step put into its key.
#[derive(Debug)]
pub(crate) enum Before {
    /// No build of it is known.
    Unknown,
    /// The same key, so the same parts.
    Same,
    /// Another key, made of these parts.
    Other(Vec<(String, String)>),
}

/// Keeps what went into `key`, the key of the step at `place`, for the
/// next build's `--explain`, and returns what the last build kept. The
/// record starts with the key on a line of its own: a rebuild that finds
/// the same key there reads no further and writes nothing (for a COPY of a
/// large context the parts are megabytes).
pub(crate) fn remember_parts(
    store: &Store,
    scope: &str,
    place: &StepPlace<'_>,
    key: &Digest,
    parts: &[(String, String)],
) -> Before {
    let mut id = KeyHasher::new("explain", None);
    id.field("scope", scope);
    id.field("stage", place.stage.to_lowercase());
    id.field("step", place.step.to_string());
    let id = id.finish();
    let first_line = format!("{key}\n");
    if store.explain_record_head(&id, first_line.len()).as_deref() == Some(first_line.as_bytes()) {
        return Before::Same;
    }
    let before = store
        .explain_record(&id)
        .and_then(|bytes| {
            // Records of kiln before the key line hold the parts alone.
            let parts = match bytes.iter().position(|&byte| byte == b'\n') {
                Some(end) => &bytes[end + 1..],
                None => &bytes[..],
            };
            serde_json::from_slice(parts).ok()
        })
        .map_or(Before::Unknown, Before::Other);
    // A cache: a failure to write it costs only an explanation.
    if let Ok(json) = serde_json::to_vec(parts) {
        let mut bytes = first_line.into_bytes();
        bytes.extend_from_slice(&json);
        let _ = store.put_explain_record(&id, &bytes);
    }
    before
}

/// Why a step's key is not what it was the last time this step was built:
/// a line for each part that changed, from `before` to `now` (each a
/// step's key parts).
pub fn explain(before: &[(String, String)], now: &[(String, String)]) -> Vec<String> {
    let mut lines = Vec::new();
    let get = |parts: &[(String, String)], name: &str| {
        parts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    if get(before, "parent") != get(now, "parent") {
        lines.push("what it builds on changed (the step before it, or the base image)".to_string());
    }
    if let (Some(old), Some(new)) = (get(before, "definition"), get(now, "definition")) {
        if old != new {
            lines.extend(definition_changes(&old, &new));
        }
    }
    let files = |parts: &[(String, String)]| -> std::collections::BTreeMap<String, String> {
        parts
            .iter()
            .filter_map(|(name, value)| {
                Some((name.strip_prefix("file ")?.to_string(), value.clone()))
            })
            .collect()
    };
    let (old_files, new_files) = (files(before), files(now));
    let mut file_lines = Vec::new();
    for (path, value) in &new_files {
        match old_files.get(path) {
            None => file_lines.push(format!("file {path} was added")),
            Some(old) if old != value => file_lines.push(format!("file {path} changed")),
            Some(_) => {}
        }
    }
    for path in old_files
        .keys()
        .filter(|path| !new_files.contains_key(*path))
    {
        file_lines.push(format!("file {path} was removed"));
    }
    const SHOWN_FILES: usize = 10;
    if file_lines.len() > SHOWN_FILES {
        let more = file_lines.len() - SHOWN_FILES;
        file_lines.truncate(SHOWN_FILES);
        file_lines.push(format!("... and {more} more file(s)"));
    }
    lines.extend(file_lines);
    for (name, value) in now {
        let plain = !matches!(
            name.as_str(),
            "parent" | "definition" | "sources" | "bind-content"
        ) && !name.starts_with("file ");
        if plain && get(before, name).as_ref() != Some(value) {
            lines.push(match name.as_str() {
                "from" => "the stage or image it copies from changed".to_string(),
                "bind" => "the stage or image a bind mount shows changed".to_string(),
                "cache-from" => "what a cache mount starts from changed".to_string(),
                "download" => "the file the URL serves changed".to_string(),
                "git" => "the commit the git URL names changed".to_string(),
                other => format!("{other} changed"),
            });
        }
    }
    if lines.is_empty() {
        lines.push("its key changed, but no part of it did (a newer kiln?)".to_string());
    }
    lines
}

/// What changed between two step definitions (JSON), field by field;
/// variables by name only (their values may be private).
fn definition_changes(old: &str, new: &str) -> Vec<String> {
    let (Ok(old), Ok(new)) = (
        serde_json::from_str::<serde_json::Value>(old),
        serde_json::from_str::<serde_json::Value>(new),
    ) else {
        return vec!["the instruction changed".to_string()];
    };
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return vec!["the instruction changed".to_string()];
    };
    let mut lines = Vec::new();
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let (before, after) = (old.get(name), new.get(name));
        if before == after {
            continue;
        }
        if name == "env" {
            let variables =
                |value: Option<&serde_json::Value>| -> std::collections::BTreeMap<String, String> {
                    value
                        .and_then(|v| v.as_array())
                        .map(|entries| {
                            entries
                                .iter()
                                .filter_map(|e| {
                                    e.as_str()?
                                        .split_once('=')
                                        .map(|(k, v)| (k.to_string(), v.to_string()))
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                };
            let (before, after) = (variables(before), variables(after));
            for key in before
                .keys()
                .chain(after.keys())
                .collect::<std::collections::BTreeSet<_>>()
            {
                if before.get(key) != after.get(key) {
                    lines.push(format!("the build argument or variable {key} changed"));
                }
            }
        } else if name == "args" {
            lines.push("the command changed".to_string());
        } else {
            lines.push(format!("its {name} changed"));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_step_built_again_with_the_same_key_leaves_its_record_alone() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(&dir.path().join("store")).expect("store");
        let place = StepPlace {
            stage: "build",
            step: 1,
        };
        let (first_key, second_key) = (Digest::of(b"first"), Digest::of(b"second"));
        let first = parts(&[("parent", "sha256:a"), ("file a", "mode 644 content x")]);
        let second = parts(&[("parent", "sha256:a"), ("file a", "mode 644 content y")]);
        let remember = |key: &Digest, parts: &[(String, String)]| {
            remember_parts(&store, "scope", &place, key, parts)
        };
        let record = || {
            let explain = dir.path().join("store/explain");
            let mut files = std::fs::read_dir(&explain).expect("explain records");
            let path = files.next().expect("a record").expect("entry").path();
            std::fs::metadata(path).expect("metadata")
        };

        assert!(matches!(remember(&first_key, &first), Before::Unknown));
        let written = record();
        assert!(matches!(remember(&first_key, &first), Before::Same));
        let again = record();
        assert_eq!(
            (again.ino(), again.mtime(), again.mtime_nsec()),
            (written.ino(), written.mtime(), written.mtime_nsec())
        );
        match remember(&second_key, &second) {
            Before::Other(before) => assert_eq!(before, first),
            other => panic!("expected the first build's parts, got {other:?}"),
        }
        match remember(&first_key, &first) {
            Before::Other(before) => assert_eq!(before, second),
            other => panic!("expected the second build's parts, got {other:?}"),
        }
    }

    #[test]
    fn explanations_name_what_changed() {
        let before = parts(&[
            ("parent", "sha256:a"),
            (
                "definition",
                r#"{"args":["make"],"env":["A=1","B=2"],"user":""}"#,
            ),
            ("file src/a.c", "mode 644 content x"),
            ("file src/b.c", "mode 644 content y"),
        ]);
        let now = parts(&[
            ("parent", "sha256:a"),
            (
                "definition",
                r#"{"args":["make"],"env":["A=1","B=3"],"user":"app"}"#,
            ),
            ("file src/a.c", "mode 644 content z"),
            ("file src/c.c", "mode 644 content y"),
        ]);
        assert_eq!(
            explain(&before, &now),
            [
                "the build argument or variable B changed",
                "its user changed",
                "file src/a.c changed",
                "file src/c.c was added",
                "file src/b.c was removed",
            ]
        );
        let moved = parts(&[("parent", "sha256:b")]);
        assert_eq!(
            explain(&parts(&[("parent", "sha256:a")]), &moved),
            ["what it builds on changed (the step before it, or the base image)"]
        );
    }
}
