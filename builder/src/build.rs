//! A build of a lowered Dockerfile: the stages scheduled as the DAG allows,
//! each stage's steps in order, every step's key looked up in the cache and
//! the step run (RUN in the sandbox, COPY/ADD/WORKDIR by kiln) when it
//! misses.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use kiln_cache::{CacheRecord, Digest, KeyHasher, StatCache, Store};
use kiln_frontend::graph::{Action, Base, BuildGraph, Stage};
use kiln_frontend::DockerIgnore;

use crate::cache_io::Imported;
use crate::cache_mounts::MountSeeder;
use crate::contexts::NamedFiles;
use crate::copy;
use crate::downloads::Downloads;
use crate::error::Context;
use crate::git::{GitSource, GitSources};
use crate::image::Layer;
use crate::keys::{
    reads_stage_files, remember_parts, Before, Keys, StageFiles, StepKey, StepPlace,
};
use crate::layers::Layers;
use crate::outputs::{self, Outputs, StageOutput, StepReport};
use crate::progress::Progress;
use crate::run::{Interrupt, Runner, StepRunner};
use crate::schedule::build_stages;
use crate::secrets::Secrets;
use crate::sources::Sources;

/// How the cache is used, and what `--explain` compares with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `SOURCE_DATE_EPOCH`: the image's creation time, and the latest
    /// modification time a layer records.
    pub source_date_epoch: Option<i64>,
    /// `--no-cache`: run every step (and still record what they made).
    pub no_cache: bool,
    /// `--no-cache-filter`: the stages (lower case) to run without the cache.
    pub no_cache_stages: Vec<String>,
    /// `--explain`: say why each step that ran missed the cache.
    pub explain: bool,
    /// What makes steps the same across builds for `--explain`: the
    /// Dockerfile's path.
    pub explain_scope: String,
    /// Stages built at once at most (`--jobs`).
    pub jobs: usize,
    /// The stages whose layers the build exports (into an image or a
    /// cache): theirs get blobs as they are made.
    pub exported_stages: HashSet<usize>,
}

/// What a build reads: the context and the Dockerfile's name.
pub struct Inputs<'a> {
    /// The build context, absolute.
    pub context: &'a Path,
    pub ignore: &'a DockerIgnore,
    /// The build contexts given by name that hold files.
    pub named: &'a NamedFiles,
    /// How messages name the Dockerfile.
    pub dockerfile: &'a str,
    pub stat_cache: &'a StatCache,
}

/// Where RUN steps run and what they may be given.
pub struct SandboxAccess<'a> {
    pub sandbox: &'a dyn StepRunner,
    pub interrupt: &'a Interrupt,
    pub secrets: &'a Secrets,
    /// What every RUN step gets (`--add-host`, `--ulimit`, `--shm-size`).
    pub resources: &'a kiln_runtime::Resources,
}

/// Runs the stages of one build and remembers how each step went.
pub struct Build<'a> {
    store: &'a Store,
    remote: &'a crate::remote::Remote,
    inputs: Inputs<'a>,
    run: SandboxAccess<'a>,
    layers: &'a Layers<'a>,
    downloads: Downloads<'a>,
    git: GitSources<'a>,
    imported: &'a Imported,
    settings: Settings,
    /// The time recorded for new files and history entries.
    now: i64,
    progress: &'a Progress,
    /// When the build began, for the times in the metadata file.
    started: Instant,
    journal: Mutex<Journal>,
}

/// What the build's steps did: their results for `--cache-to` and
/// materialisation, their reports for `--metadata-file`.
#[derive(Default)]
struct Journal {
    results: Vec<StepResult>,
    reports: Vec<StepReport>,
}

/// A layer step's result, for `--cache-to`.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub stage: usize,
    /// The step's place in its stage.
    pub step: usize,
    pub key: Digest,
    /// The key later steps chained on, when not `key` (see
    /// `CacheRecord::chain`).
    pub chain: Option<Digest>,
    pub layer: Option<Layer>,
    /// When the layer was first made (a cache hit keeps its record's time).
    pub created: i64,
}

/// How a step that makes a layer went.
struct StepOutcome {
    key: Digest,
    /// The key later steps chain on.
    chain: Digest,
    layer: Option<Layer>,
    cached: bool,
    /// Why it missed the cache (`--explain`).
    explanation: Vec<String>,
    created: i64,
}

impl<'a> Build<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &'a Store,
        remote: &'a crate::remote::Remote,
        inputs: Inputs<'a>,
        run: SandboxAccess<'a>,
        layers: &'a Layers<'a>,
        imported: &'a Imported,
        settings: Settings,
        now: i64,
        progress: &'a Progress,
    ) -> Build<'a> {
        Build {
            store,
            remote,
            inputs,
            git: GitSources::new(store, run.secrets),
            run,
            layers,
            downloads: Downloads::new(store, remote),
            imported,
            settings,
            now,
            progress,
            started: Instant::now(),
            journal: Mutex::new(Journal::default()),
        }
    }

    /// Builds the stages of the graph, each once those it depends on are
    /// built, and returns their outputs (the target's at `graph.target`).
    /// When one fails, the others are stopped and the first failure
    /// returned.
    pub fn build(&self, graph: &BuildGraph) -> crate::Result<Vec<StageOutput>> {
        let dependencies: Vec<Vec<usize>> = graph
            .stages
            .iter()
            .map(|stage| stage.depends_on.clone())
            .collect();
        build_stages(
            &dependencies,
            self.settings.jobs,
            // Their running steps are killed and cleaned up as on Ctrl-C.
            || self.run.interrupt.stop_steps(),
            |index, outputs| self.stage(index, &graph.stages[index], outputs, graph),
        )
    }

    /// The results of the layer steps, in the order of the Dockerfile.
    pub fn results(&self) -> Vec<StepResult> {
        let mut results = self.journal().results.clone();
        // The order stages finished in changes nothing that is exported.
        results.sort_by_key(|result| (result.stage, result.step));
        results
    }

    /// How each step went, in the order they ended.
    pub fn reports(&self) -> Vec<StepReport> {
        self.journal().reports.clone()
    }

    /// `layers` with a blob each in the store, as an export needs them
    /// (see [`Layers::materialize`]); but base image layers of `registry`
    /// not fetched yet, when given, are left there (for a push to it).
    pub fn materialize(
        &self,
        layers: &[Layer],
        registry: Option<&str>,
    ) -> crate::Result<Vec<Layer>> {
        let mut ours: HashMap<Digest, Vec<Digest>> = HashMap::new();
        for result in &self.journal().results {
            if let Some(layer) = &result.layer {
                ours.entry(layer.diff_id).or_default().push(result.key);
            }
        }
        self.layers.materialize(layers, &ours, registry)
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        // A panic elsewhere leaves the journal usable.
        self.journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stage(
        &self,
        index: usize,
        stage: &Stage,
        outputs: &Outputs,
        graph: &BuildGraph,
    ) -> crate::Result<StageOutput> {
        let (mut layers, mut history) = match &stage.base {
            Base::Scratch => (Vec::new(), Vec::new()),
            Base::Image { reference } => {
                let image = self.layers.image(reference)?;
                (image.layers, image.config.history)
            }
            Base::Stage { stage } => (
                outputs.get(*stage)?.layers.clone(),
                outputs.get(*stage)?.history.clone(),
            ),
        };
        let sources = Sources {
            store: self.store,
            context: self.inputs.context,
            ignore: self.inputs.ignore,
            named: self.inputs.named,
            layers: self.layers,
            graph,
            outputs,
        };
        let keys = Keys {
            sources: &sources,
            stat_cache: self.inputs.stat_cache,
            downloads: &self.downloads,
            git: &self.git,
            source_date_epoch: self.settings.source_date_epoch,
            resources: self.run.resources,
        };
        // BuildKit's numbering, which CI logs are read by: the base image is
        // step 1 (scratch and stages are not), then the numbered steps.
        let total = usize::from(matches!(stage.base, Base::Image { .. }))
            + stage.steps.iter().filter(|s| s.numbered).count();
        let width = total.to_string().len();
        let mut key = keys.base_key(&stage.base, &stage.platform)?;
        let use_cache = !self.settings.no_cache
            && !self
                .settings
                .no_cache_stages
                .contains(&stage.name.to_lowercase());
        let export = self.settings.exported_stages.contains(&index);
        let mut number = 0;
        if let Base::Image { reference } = &stage.base {
            number += 1;
            self.progress
                .step(&format!(
                    "[{} {number:>width$}/{total}] FROM {reference}",
                    stage.name
                ))
                .cached();
        }
        for (step_index, step) in stage.steps.iter().enumerate() {
            let location = format!("{}:{}", self.inputs.dockerfile, step.location.line);
            if let Action::Metadata = step.action {
                if let Some(created_by) = &step.history {
                    // Dated when the image is assembled, from the layers
                    // around it (see `outputs::fill_history_times`).
                    history.push(outputs::history(created_by, true, None));
                }
                continue;
            }
            if self
                .run
                .interrupt
                .flag()
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return Err(crate::Error::Interrupted);
            }
            number += 1;
            let started = Instant::now();
            let started_ms = self.started.elapsed().as_millis() as u64;
            let progress = self.progress.step(&format!(
                "[{} {number:>width$}/{total}] {}",
                stage.name, step.instruction
            ));
            let place = StepPlace {
                stage: &stage.name,
                step: step_index,
            };
            let outcome = self
                .step_layer(
                    &keys,
                    &key,
                    &step.action,
                    (&layers, export),
                    use_cache,
                    &place,
                    &progress,
                )
                .map_err(|cause| match cause {
                    crate::Error::Interrupted => cause,
                    cause => crate::Error::Step {
                        location: location.clone(),
                        instruction: step.instruction.clone(),
                        cause: Box::new(cause),
                    },
                });
            let StepOutcome {
                key: step_key,
                chain,
                layer,
                cached: was_cached,
                explanation,
                created,
            } = match outcome {
                Ok(outcome) => outcome,
                Err(error) => {
                    if error.is_interrupted() {
                        progress.error("interrupted", &[]);
                    } else if let Some(failed) = error.process_failed() {
                        progress.error(
                            &format!(
                                "process {:?} did not complete successfully: {}",
                                failed.command, failed.outcome
                            ),
                            &failed.tail,
                        );
                    } else {
                        progress.error(&error.root_cause().to_string(), &[]);
                    }
                    return Err(error);
                }
            };
            if was_cached {
                progress.cached();
            } else {
                progress.done();
            }
            self.journal().results.push(StepResult {
                stage: index,
                step: step_index,
                key: step_key,
                chain: Some(chain).filter(|chain| *chain != step_key),
                layer: layer.clone(),
                created,
            });
            key = result_key(&chain, layer.as_ref());
            let empty = layer.is_none();
            layers.extend(layer);
            if let Some(created_by) = &step.history {
                history.push(outputs::history(created_by, empty, Some(created)));
            }
            let elapsed = started.elapsed();
            self.journal().reports.push(StepReport {
                stage: stage.name.clone(),
                step: step.instruction.clone(),
                line: step.location.line,
                key: step_key.to_string(),
                cached: was_cached,
                explain: explanation,
                started_ms,
                ended_ms: self.started.elapsed().as_millis() as u64,
                duration_ms: elapsed.as_millis() as u64,
            });
        }
        Ok(StageOutput {
            key,
            layers,
            history,
            config: stage.config.clone(),
            author: stage.author.clone(),
            platform: stage.platform.clone(),
        })
    }

    /// The key of a layer step and its layer, from the cache or made by
    /// running it; and whether it came from the cache.
    #[allow(clippy::too_many_arguments)]
    fn step_layer(
        &self,
        keys: &Keys<'_>,
        parent: &Digest,
        action: &Action,
        (layers, export): (&[Layer], bool),
        use_cache: bool,
        place: &StepPlace<'_>,
        progress: &crate::progress::Step<'_>,
    ) -> crate::Result<StepOutcome> {
        let StepKey {
            key: step_key,
            parts,
            mut selection,
        } = keys.step_key(parent, action, StageFiles::ByKey)?;
        let before = remember_parts(
            self.store,
            &self.settings.explain_scope,
            place,
            &step_key,
            &parts,
        );
        let hit = |record: &CacheRecord, layer: Option<Layer>, chain: Digest| StepOutcome {
            key: step_key,
            chain,
            layer,
            cached: true,
            explanation: Vec::new(),
            // A record from before kiln kept times: dated now.
            created: record.created.unwrap_or(self.now),
        };
        if use_cache {
            if let Some((record, layer)) = self.cached_layer(&step_key)? {
                return Ok(hit(&record, layer, record.chain.unwrap_or(step_key)));
            }
        }
        // A step reading another stage's files is also known by their
        // content, and later steps chain on that: a stage rebuilt (its key
        // changed) that made the same files reuses this step and what
        // follows it. The record under the stage's key is added, naming the
        // content key, so that the next build finds both without reading a
        // file.
        let content_key = if reads_stage_files(action) {
            let by_content = keys.step_key(parent, action, StageFiles::ByContent)?;
            selection = selection.or(by_content.selection);
            Some(by_content.key)
        } else {
            None
        };
        if let (true, Some(content_key)) = (use_cache, content_key) {
            if let Some((record, layer)) = self.cached_layer(&content_key)? {
                let alias = CacheRecord {
                    chain: Some(content_key),
                    ..record.clone()
                };
                self.store.put_cache_record(&step_key, &alias)?;
                return Ok(hit(&record, layer, content_key));
            }
        }
        let explanation = if !self.settings.explain {
            Vec::new()
        } else if !use_cache {
            vec!["the cache is off for it (--no-cache or --no-cache-filter)".to_string()]
        } else {
            match before {
                Before::Other(before) if before != parts => crate::keys::explain(&before, &parts),
                Before::Same | Before::Other(_) => {
                    vec!["its result is no longer in the store (pruned?)".to_string()]
                }
                Before::Unknown => vec!["no earlier build of this step is known".to_string()],
            }
        };
        for line in &explanation {
            progress.log(&format!("cache miss: {line}"));
        }
        let layer = self.execute(keys.sources, action, selection, (layers, export), progress)?;
        let record = CacheRecord {
            layer: layer.as_ref().map(Layer::record),
            created: Some(self.now),
            chain: content_key,
        };
        self.store.put_cache_record(&step_key, &record)?;
        if let Some(content_key) = &content_key {
            let own = CacheRecord {
                chain: None,
                ..record
            };
            self.store.put_cache_record(content_key, &own)?;
        }
        Ok(StepOutcome {
            key: step_key,
            chain: content_key.unwrap_or(step_key),
            layer,
            cached: false,
            explanation,
            created: self.now,
        })
    }

    /// Runs a step that makes a layer; none when it changed nothing.
    fn execute(
        &self,
        sources: &Sources<'_>,
        action: &Action,
        selection: Option<copy::Selection>,
        (layers, export): (&[Layer], bool),
        progress: &crate::progress::Step<'_>,
    ) -> crate::Result<Option<Layer>> {
        match action {
            Action::Run(run) => Runner {
                store: self.store,
                sandbox: self.run.sandbox,
                interrupt: self.run.interrupt,
                secrets: self.run.secrets,
                sources,
                now: self.now,
                resources: self.run.resources,
                seeder: MountSeeder {
                    store: self.store,
                    remote: self.remote,
                    imported: self.imported,
                    progress: self.progress,
                },
            }
            .run(run, layers, export, progress),
            Action::Copy(copy_step) => {
                let source = sources.tree(&copy_step.from)?;
                let selection = match selection {
                    Some(selection) => selection,
                    None => copy::select(copy_step, &source)?,
                };
                let view = self.layers.view(layers)?;
                self.layers.in_diff(export, |diff| {
                    copy::copy(copy_step, selection, &source, &view, diff, self.now, self)
                })
            }
            Action::Mkdir(mkdir) => {
                let view = self.layers.view(layers)?;
                self.layers
                    .in_diff(export, |diff| copy::mkdir(mkdir, &view, diff, self.now))
            }
            Action::Metadata => Ok(None),
        }
    }

    /// What an earlier build made for `key`: its record, and no layer when
    /// the step changed nothing, else its layer when it is still in the
    /// store (compressed as this build asks, recompressed from its snapshot
    /// if need be); `None` for a miss.
    fn cached_layer(&self, key: &Digest) -> crate::Result<Option<(CacheRecord, Option<Layer>)>> {
        let Some(record) = self.store.cache_record(key) else {
            return Ok(self.imported_layer(key));
        };
        self.store.mark_record_used(key);
        let Some(found) = &record.layer else {
            return Ok(Some((record, None)));
        };
        let Ok(layer) = Layer::from_record(found) else {
            return Ok(None);
        };
        // Its blob, or its snapshot to make the blob from when needed; or
        // else what an imported cache has for the key.
        if self.store.has_blob(&layer.blob) || self.store.has_snapshot(&layer.diff_id) {
            Ok(Some((record, Some(layer))))
        } else {
            Ok(self.imported_layer(key))
        }
    }

    /// What an imported cache has for `key` (its layer is fetched only
    /// when needed, and its record kept in the store once the layer is
    /// checked: see `Imported::check_fetched`).
    fn imported_layer(&self, key: &Digest) -> Option<(CacheRecord, Option<Layer>)> {
        let record = self.imported.record(key)?;
        let layer = match &record.layer {
            None => {
                // A cache: failing to keep the record costs a rerun later.
                let _ = self.store.put_cache_record(key, &record);
                None
            }
            Some(layer) => Some(Layer::from_record(layer).ok()?),
        };
        Some((record, layer))
    }
}

/// The key the steps after a step chain on: its own key and what it made.
/// A step run again (`--no-cache`, a rebuilt stage) may make other files
/// than the cached ones: what reads them must not reuse results made from
/// the old ones.
fn result_key(step_key: &Digest, layer: Option<&Layer>) -> Digest {
    let mut key = KeyHasher::new("result", Some(step_key));
    key.field(
        "layer",
        layer.map_or_else(|| "none".to_string(), |layer| layer.diff_id.to_string()),
    );
    key.finish()
}

impl copy::Fetch for Build<'_> {
    fn download(&self, url: &str) -> crate::Result<copy::Downloaded> {
        self.downloads.get(url)
    }

    fn git_checkout(
        &self,
        url: &str,
        step: &kiln_frontend::graph::CopyStep,
    ) -> crate::Result<std::path::PathBuf> {
        let source = GitSource::for_add(url, step)?;
        let checkout = self
            .git
            .checkout(&source)
            .with_context(|| format!("fetching {}", source.git.redacted_remote()))?;
        Ok(checkout.dir)
    }

    fn limits(&self) -> kiln_cache::Limits {
        self.store.limits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rerun_that_makes_other_files_gives_its_dependants_another_key() {
        let step = KeyHasher::new("step", None).finish();
        let layer = |name: &str| {
            let digest = KeyHasher::new(name, None).finish();
            Layer {
                diff_id: digest,
                blob: digest,
                size: 1,
                encoding: crate::image::LayerEncoding::Tar,
            }
        };
        let first = result_key(&step, Some(&layer("one")));
        assert_ne!(first, result_key(&step, Some(&layer("two"))));
        assert_ne!(first, result_key(&step, None));
        assert_eq!(first, result_key(&step, Some(&layer("one"))));
    }
}
