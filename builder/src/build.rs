//! Running a build graph: each stage from its base, step by step, every
//! changed file set packed into a layer; the result assembled as an image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::Instant;

use crate::error::{bail, Context};
use kiln_cache::digest::HashingReader;
use kiln_cache::extract::{extract, ExtractOptions};
use kiln_cache::pack::PackOptions;
use kiln_cache::{CacheRecord, Compression, Digest, KeyHasher, LayerView, StatCache, Store};
use kiln_frontend::graph::{Action, Base, BuildGraph, ImageConfig, Source, Stage};
use kiln_frontend::{DockerIgnore, Platform};

use crate::copy::{self, SourceTree};
use crate::image::{rfc3339, History, ImageFile, Layer, LayerEncoding, RootFs, StoredImage};
use crate::keys::{reads_stage_files, StageFiles, StepKey};
use crate::progress::Progress;
use crate::remote::Remote;

/// BuildKit marks the history entries it writes with this comment.
const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

#[derive(Debug, Clone)]
pub struct Settings {
    pub compression: Compression,
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
}

/// How a step went, for `--metadata-file`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    pub stage: String,
    pub step: String,
    /// Line in the Dockerfile.
    pub line: usize,
    pub key: String,
    pub cached: bool,
    /// `--explain`: why the step missed the cache.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub explain: Vec<String>,
    /// Milliseconds from the start of the build to the step's start and end.
    pub started_ms: u64,
    pub ended_ms: u64,
    pub duration_ms: u64,
}

/// What a stage produced.
#[derive(Debug, Clone)]
pub struct StageOutput {
    /// The cache key of the stage's file system.
    pub key: Digest,
    pub layers: Vec<Layer>,
    pub history: Vec<History>,
    pub config: ImageConfig,
    pub author: Option<String>,
    pub platform: Platform,
}

impl StageOutput {
    /// The image configuration file of this stage's result. Its time is
    /// SOURCE_DATE_EPOCH when set; otherwise it and the times of history
    /// entries that made no layer come from the layers' (so that a build
    /// from the cache makes the same image), or else are `now`.
    pub fn image_file(&self, source_date_epoch: Option<i64>, now: i64) -> ImageFile {
        let mut history = self.history.clone();
        fill_history_times(&mut history);
        let created = match source_date_epoch {
            Some(epoch) => rfc3339(epoch),
            None => history
                .iter()
                .rev()
                .find_map(|entry| entry.created.clone())
                .unwrap_or_else(|| rfc3339(now)),
        };
        ImageFile {
            created: Some(created),
            author: self.author.clone(),
            architecture: self.platform.architecture.clone(),
            os: self.platform.os.clone(),
            variant: Some(self.platform.variant.clone()).filter(|v| !v.is_empty()),
            config: self.config.clone(),
            rootfs: RootFs {
                kind: "layers".to_string(),
                diff_ids: self.layers.iter().map(|l| l.diff_id).collect(),
            },
            history,
            inline_cache: None,
        }
    }
}

pub struct Executor<'a> {
    pub store: &'a Store,
    /// For `ADD https://...`.
    pub remote: &'a Remote,
    /// Where RUN steps run.
    pub sandbox: &'a dyn crate::run::StepRunner,
    /// Stops running steps (Ctrl-C, a failed stage).
    pub interrupt: &'a crate::run::Interrupt,
    pub secrets: &'a crate::run::Secrets,
    pub context: &'a Path,
    pub ignore: &'a DockerIgnore,
    pub dockerfile: &'a str,
    pub settings: Settings,
    /// The time recorded for new files and history entries.
    pub now: i64,
    pub stat_cache: &'a StatCache,
    /// Records read by `--cache-from`.
    pub imported: &'a crate::cache_io::Imported,
    /// Each layer step's stage, key and result, for `--cache-to`.
    pub results: Mutex<Vec<StepResult>>,
    pub reports: Mutex<Vec<StepReport>>,
    /// What `ADD URL` steps downloaded to compute their keys, for the step
    /// to use.
    pub downloads: Mutex<HashMap<String, copy::Downloaded>>,
    pub progress: &'a Progress,
    /// Stages built at once at most (`--jobs`).
    pub jobs: usize,
    /// When the build began, for the times in the metadata file.
    pub started: Instant,
    /// Blobs written for layers that had none, by diff ID.
    pub written: Mutex<HashMap<Digest, Layer>>,
}

/// Where a step is, for `--explain`: its stage's name and place in it.
pub struct StepPlace<'a> {
    pub stage: &'a str,
    pub step: usize,
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

/// The outputs of a build's stages, each set once the stage is built.
pub type Outputs = [OnceLock<StageOutput>];

/// The output of a stage that another one needs (the scheduler starts a
/// stage only once those it depends on are built).
pub fn output(outputs: &Outputs, stage: usize) -> crate::Result<&StageOutput> {
    outputs
        .get(stage)
        .and_then(OnceLock::get)
        .with_context(|| format!("stage {stage} is needed before it was built"))
}

impl Executor<'_> {
    /// Builds the stages of the graph, each once those it depends on are
    /// built, up to `jobs` at once, and returns their outputs (the target's
    /// at `graph.target`). When one fails, the others are stopped and the
    /// first failure returned.
    pub fn build(&self, graph: &BuildGraph) -> crate::Result<Vec<StageOutput>> {
        let count = graph.stages.len();
        let outputs: Vec<OnceLock<StageOutput>> = (0..count).map(|_| OnceLock::new()).collect();
        let mut first_error = None;
        std::thread::scope(|scope| {
            let (finished, results) = mpsc::channel::<(usize, crate::Result<StageOutput>)>();
            let mut started = vec![false; count];
            let mut built = vec![false; count];
            let mut running = 0;
            loop {
                if first_error.is_none() {
                    for (index, stage) in graph.stages.iter().enumerate() {
                        let ready = !started[index]
                            && stage.depends_on.iter().all(|&dependency| built[dependency]);
                        if !ready || running >= self.jobs.max(1) {
                            continue;
                        }
                        started[index] = true;
                        running += 1;
                        let finished = finished.clone();
                        let outputs = &outputs;
                        // A thread per stage that lives as long as its steps:
                        // the sandbox ties each step's life to the thread
                        // that started it.
                        scope.spawn(move || {
                            // A stage that panics still reports, or the
                            // build would wait for it forever.
                            let result =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    self.stage(index, stage, outputs, graph)
                                }))
                                .unwrap_or_else(|_| {
                                    Err(crate::Error::msg(format!(
                                        "building stage {} failed unexpectedly (a bug in kiln)",
                                        stage.name
                                    )))
                                });
                            let _ = finished.send((index, result));
                        });
                    }
                }
                if running == 0 {
                    break;
                }
                let Ok((index, result)) = results.recv() else {
                    break;
                };
                running -= 1;
                match result {
                    Ok(output) => {
                        let _ = outputs[index].set(output);
                        built[index] = true;
                    }
                    Err(error) => {
                        if first_error.is_none() {
                            // Stop the others: their running steps are
                            // killed and cleaned up as on Ctrl-C.
                            self.interrupt.stop_steps();
                            first_error = Some(error);
                        }
                    }
                }
            }
        });
        if let Some(error) = first_error {
            return Err(error);
        }
        outputs
            .into_iter()
            .enumerate()
            .map(|(index, output)| {
                output
                    .into_inner()
                    .with_context(|| format!("stage {index} was not built"))
            })
            .collect()
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
                let image = StoredImage::find(self.store, reference)?;
                (image.layers, image.config.history)
            }
            Base::Stage { stage } => (
                output(outputs, *stage)?.layers.clone(),
                output(outputs, *stage)?.history.clone(),
            ),
        };
        // BuildKit's numbering, which CI logs are read by: the base image is
        // step 1 (scratch and stages are not), then the numbered steps.
        let total = usize::from(matches!(stage.base, Base::Image { .. }))
            + stage.steps.iter().filter(|s| s.numbered).count();
        let width = total.to_string().len();
        let mut key = self.base_key(&stage.base, outputs, &stage.platform)?;
        let use_cache = !self.settings.no_cache
            && !self
                .settings
                .no_cache_stages
                .contains(&stage.name.to_lowercase());
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
            let location = format!("{}:{}", self.dockerfile, step.location.line);
            if let Action::Metadata = step.action {
                if let Some(created_by) = &step.history {
                    // Dated when the image is assembled, from the layers
                    // around it (see `fill_history_times`).
                    history.push(self.history(created_by, true, None));
                }
                continue;
            }
            if self
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
                    &key,
                    &step.action,
                    &layers,
                    outputs,
                    graph,
                    use_cache,
                    &place,
                    &progress,
                )
                .map_err(|cause| match cause {
                    crate::Error::Interrupted | crate::Error::Stopped => cause,
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
            self.lock(&self.results).push(StepResult {
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
                history.push(self.history(created_by, empty, Some(created)));
            }
            let elapsed = started.elapsed();
            self.lock(&self.reports).push(StepReport {
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
        parent: &Digest,
        action: &Action,
        layers: &[Layer],
        outputs: &Outputs,
        graph: &BuildGraph,
        use_cache: bool,
        place: &StepPlace<'_>,
        progress: &crate::progress::Step<'_>,
    ) -> crate::Result<StepOutcome> {
        let StepKey {
            key: step_key,
            parts,
            mut selection,
        } = self.step_key(parent, action, outputs, graph, StageFiles::ByKey)?;
        let before = self.remember_parts(place, &parts);
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
            let by_content =
                self.step_key(parent, action, outputs, graph, StageFiles::ByContent)?;
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
                Some(before) if before != parts => crate::keys::explain(&before, &parts),
                Some(_) => vec!["its result is no longer in the store (pruned?)".to_string()],
                None => vec!["no earlier build of this step is known".to_string()],
            }
        };
        for line in &explanation {
            progress.log(&format!("cache miss: {line}"));
        }
        let layer = self.execute(action, selection, layers, outputs, graph, progress)?;
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

    /// Keeps what went into the key of the step at `place` for the next
    /// build's `--explain`, and returns what the last build kept.
    fn remember_parts(
        &self,
        place: &StepPlace<'_>,
        parts: &[(String, String)],
    ) -> Option<Vec<(String, String)>> {
        let mut id = KeyHasher::new("explain", None);
        id.field("scope", &self.settings.explain_scope);
        id.field("stage", place.stage.to_lowercase());
        id.field("step", place.step.to_string());
        let dir = self.store.root().join("explain");
        let path = dir.join(id.finish().hex());
        let before: Option<Vec<(String, String)>> = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        if before.as_deref() != Some(parts) {
            // A cache: a failure to write it costs only an explanation.
            let _ = std::fs::create_dir_all(&dir).and_then(|()| {
                let mut partial = tempfile::NamedTempFile::new_in(&dir)?;
                std::io::Write::write_all(
                    &mut partial,
                    &serde_json::to_vec(parts).unwrap_or_default(),
                )?;
                partial.persist(&path).map(|_| ()).map_err(|e| e.error)
            });
        }
        before
    }

    /// Locks shared build state (a panic elsewhere leaves it usable).
    pub(crate) fn lock<'m, T>(&self, mutex: &'m Mutex<T>) -> std::sync::MutexGuard<'m, T> {
        mutex
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs a step that makes a layer; none when it changed nothing.
    fn execute(
        &self,
        action: &Action,
        selection: Option<copy::Selection>,
        layers: &[Layer],
        outputs: &Outputs,
        graph: &BuildGraph,
        progress: &crate::progress::Step<'_>,
    ) -> crate::Result<Option<Layer>> {
        match action {
            Action::Run(run) => self.run_step(run, layers, outputs, graph, progress),
            Action::Copy(copy_step) => {
                let source = self.source_tree(&copy_step.from, outputs, graph)?;
                let selection = match selection {
                    Some(selection) => selection,
                    None => copy::select(copy_step, &source)?,
                };
                let view = self.view(layers)?;
                let fetch = |url: &str| self.downloaded(url);
                self.in_diff(|diff| {
                    copy::copy(copy_step, selection, &source, &view, diff, self.now, &fetch)
                })
            }
            Action::Mkdir(mkdir) => {
                let view = self.view(layers)?;
                self.in_diff(|diff| copy::mkdir(mkdir, &view, diff, self.now))
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
    /// checked: see `Imported::fetch`).
    fn imported_layer(&self, key: &Digest) -> Option<(CacheRecord, Option<Layer>)> {
        let record = self.imported.record(key)?;
        let layer = match &record.layer {
            None => {
                // A cache: failing to keep the record costs a rerun later.
                let _ = self.store.put_cache_record(key, record);
                None
            }
            Some(layer) => Some(Layer::from_record(layer).ok()?),
        };
        Some((record.clone(), layer))
    }

    /// `layers` with a blob each in the store, as an export needs them:
    /// imported ones fetched, this build's own written from their snapshot
    /// compressed as it asks when they have no such blob yet (and their
    /// cache records updated, so that later builds reuse the blob).
    pub fn materialize(&self, layers: &[Layer]) -> crate::Result<Vec<Layer>> {
        let options = PackOptions {
            compression: self.settings.compression,
            source_date_epoch: self.settings.source_date_epoch,
        };
        let wanted = LayerEncoding::of_compression(self.settings.compression);
        // This build's layers, with the keys of the steps that made them.
        let mut ours: HashMap<Digest, Vec<Digest>> = HashMap::new();
        for result in self.lock(&self.results).iter() {
            if let Some(layer) = &result.layer {
                ours.entry(layer.diff_id).or_default().push(result.key);
            }
        }
        let mut materialized = Vec::with_capacity(layers.len());
        for layer in layers {
            // Base image layers keep their compression; this build's are
            // compressed as it asks, from their snapshot.
            let as_asked = layer.encoding == wanted
                || !ours.contains_key(&layer.diff_id)
                || !self.store.has_snapshot(&layer.diff_id);
            let usable = if self.store.has_blob(&layer.blob) {
                as_asked
            } else {
                self.imported.fetch(self.store, self.remote, layer)?
            };
            if usable {
                materialized.push(layer.clone());
                continue;
            }
            let known = self.lock(&self.written).get(&layer.diff_id).cloned();
            let written = match known {
                Some(written) if self.store.has_blob(&written.blob) => written,
                _ => {
                    let written = write_blob(self.store, layer, &options)?;
                    self.lock(&self.written)
                        .insert(layer.diff_id, written.clone());
                    for key in ours.get(&layer.diff_id).into_iter().flatten() {
                        let record = CacheRecord {
                            layer: Some(written.record()),
                            ..self.store.cache_record(key).unwrap_or_default()
                        };
                        self.store.put_cache_record(key, &record)?;
                    }
                    written
                }
            };
            materialized.push(written);
        }
        Ok(materialized)
    }

    fn history(&self, created_by: &str, empty_layer: bool, created: Option<i64>) -> History {
        History {
            created: created.map(rfc3339),
            created_by: Some(created_by.to_string()),
            comment: Some(HISTORY_COMMENT.to_string()),
            empty_layer,
        }
    }

    pub(crate) fn source_tree(
        &self,
        from: &Source,
        outputs: &Outputs,
        graph: &BuildGraph,
    ) -> crate::Result<SourceTree<'_>> {
        Ok(match from {
            Source::Context => SourceTree {
                view: LayerView::new(vec![self.context.to_path_buf()]),
                ignore: Some(self.ignore),
                label: "the build context".to_string(),
            },
            Source::Stage { stage } => SourceTree {
                view: self.view(&output(outputs, *stage)?.layers)?,
                ignore: None,
                label: format!("stage {}", graph.stages[*stage].name),
            },
            Source::Image { reference } => {
                let image = StoredImage::find(self.store, reference)?;
                SourceTree {
                    view: self.view(&image.layers)?,
                    ignore: None,
                    label: format!("image {reference}"),
                }
            }
        })
    }

    /// Runs `fill` on an empty directory and turns what it wrote into a
    /// layer, an empty one when nothing was written: every RUN, COPY, ADD
    /// and WORKDIR (but `/`) has a layer in BuildKit's images.
    pub(crate) fn in_diff(
        &self,
        fill: impl FnOnce(&Path) -> crate::Result<()>,
    ) -> crate::Result<Option<Layer>> {
        let work = self.store.temp_dir()?;
        let diff = work.path().join("diff");
        std::fs::create_dir(&diff).with_context(|| format!("creating {}", diff.display()))?;
        fill(&diff)?;
        let options = PackOptions {
            compression: self.settings.compression,
            source_date_epoch: self.settings.source_date_epoch,
        };
        layer_from_diff(self.store, &diff, &options, true)
    }

    /// Downloads a URL for ADD (once per build) and returns its digest.
    pub(crate) fn prefetch(&self, url: &str) -> crate::Result<Digest> {
        Ok(self.downloaded(url)?.digest)
    }

    /// The download of `url` its key was made from (one per build: the
    /// lock is held while downloading, so that two stages adding the same
    /// URL cannot see two versions of it).
    fn downloaded(&self, url: &str) -> crate::Result<copy::Downloaded> {
        let mut downloads = self.lock(&self.downloads);
        if let Some(downloaded) = downloads.get(url) {
            return Ok(downloaded.clone());
        }
        let downloaded = self
            .download(url)
            .with_context(|| format!("downloading {url}"))?;
        downloads.insert(url.to_string(), downloaded.clone());
        Ok(downloaded)
    }

    /// Downloads a URL for ADD into the store's scratch space.
    fn download(&self, url: &str) -> crate::Result<copy::Downloaded> {
        let keep = self.store.temp_dir()?;
        let path = keep.path().join("download");
        let mut file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let fetched = self.remote.fetch(url, &mut file)?;
        let modified = fetched
            .modified
            .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|since| since.as_secs() as i64);
        Ok(copy::Downloaded {
            path,
            digest: fetched.digest,
            modified,
            _keep: std::sync::Arc::new(keep),
        })
    }

    pub fn view(&self, layers: &[Layer]) -> crate::Result<LayerView> {
        self.fetch_layers(layers)?;
        layer_view(self.store, layers)
    }

    /// Brings the blobs of imported cache hits among `layers` into the
    /// store, where they are not unpacked already.
    pub fn fetch_layers(&self, layers: &[Layer]) -> crate::Result<()> {
        for layer in layers {
            if !self.store.has_blob(&layer.blob) && !self.store.has_snapshot(&layer.diff_id) {
                self.imported.fetch(self.store, self.remote, layer)?;
            }
        }
        Ok(())
    }
}

/// Dates the history entries that have no time as BuildKit does: those
/// before the first layer this build made take that layer's time, later
/// ones the time of the layer before them.
fn fill_history_times(history: &mut [History]) {
    let mut time = None;
    let mut undated_seen = false;
    for entry in history.iter() {
        match &entry.created {
            Some(created) => {
                time = Some(created.clone());
                if undated_seen {
                    break;
                }
            }
            None => undated_seen = true,
        }
    }
    undated_seen = false;
    for entry in history.iter_mut() {
        match &entry.created {
            Some(created) if undated_seen => time = Some(created.clone()),
            Some(_) => {}
            None => {
                undated_seen = true;
                entry.created = time.clone();
            }
        }
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

/// Makes a directory of changes (on the store's file system) a layer:
/// its diff ID is computed and the directory kept as its snapshot, but no
/// blob is written until something needs one (see
/// [`Executor::materialize`]). Until then the layer is described as the
/// uncompressed tar it packs to, whose digest is its diff ID. No layer when
/// the directory is empty, unless `keep_empty`.
pub fn layer_from_diff(
    store: &Store,
    diff: &Path,
    options: &PackOptions,
    keep_empty: bool,
) -> crate::Result<Option<Layer>> {
    if !keep_empty
        && std::fs::read_dir(diff)
            .with_context(|| format!("reading {}", diff.display()))?
            .next()
            .is_none()
    {
        return Ok(None);
    }
    let hashed = store.hash_layer(diff, options)?;
    store.adopt_snapshot(&hashed.diff_id, diff)?;
    Ok(Some(Layer {
        diff_id: hashed.diff_id,
        blob: hashed.diff_id,
        size: hashed.tar_size,
        encoding: LayerEncoding::Tar,
    }))
}

/// Writes the blob of a layer that has none yet, from its snapshot,
/// compressed as `options` say.
pub fn write_blob(store: &Store, layer: &Layer, options: &PackOptions) -> crate::Result<Layer> {
    if !store.has_snapshot(&layer.diff_id) {
        bail!(
            "the layer {} has neither a blob nor a snapshot",
            layer.diff_id
        );
    }
    let packed = store.pack_layer(&store.snapshot_path(&layer.diff_id), options)?;
    if packed.diff_id != layer.diff_id {
        bail!(
            "the snapshot of layer {} packs to {}: it was changed",
            layer.diff_id,
            packed.diff_id
        );
    }
    Ok(Layer {
        diff_id: packed.diff_id,
        blob: packed.digest,
        size: packed.size,
        encoding: LayerEncoding::of_compression(packed.compression),
    })
}

/// The merged file system of `layers`, unpacking those not unpacked yet.
/// Layers are independent of each other: those not unpacked yet are
/// unpacked at once, a thread each (decompression is single-threaded), as
/// many at a time as there are cores.
pub fn layer_view(store: &Store, layers: &[Layer]) -> crate::Result<LayerView> {
    let at_once = std::thread::available_parallelism().map_or(1, |n| n.get());
    let missing: Vec<&Layer> = layers
        .iter()
        .filter(|layer| !store.has_snapshot(&layer.diff_id))
        .collect();
    for batch in missing.chunks(at_once) {
        std::thread::scope(|scope| -> crate::Result<()> {
            let threads: Vec<_> = batch
                .iter()
                .map(|layer| scope.spawn(move || snapshot(store, layer)))
                .collect();
            for thread in threads {
                thread
                    .join()
                    .map_err(|_| crate::Error::msg("unpacking a layer failed unexpectedly"))??;
            }
            Ok(())
        })?;
    }
    let paths = layers
        .iter()
        .map(|layer| snapshot(store, layer))
        .collect::<crate::Result<Vec<PathBuf>>>()?;
    Ok(LayerView::new(paths))
}

fn snapshot(store: &Store, layer: &Layer) -> crate::Result<PathBuf> {
    if store.has_snapshot(&layer.diff_id) {
        return Ok(store.snapshot_path(&layer.diff_id));
    }
    let path = store.create_snapshot(&layer.diff_id, |dir| {
        let blob = store.open_blob(&layer.blob)?;
        let tar = kiln_cache::compress::decompressed(blob).map_err(|e| kiln_cache::Error::Io {
            path: store.blob_path(&layer.blob),
            source: e,
        })?;
        let mut hashed = HashingReader::new(tar);
        extract(&mut hashed, dir, &ExtractOptions::layer())?;
        std::io::copy(&mut hashed, &mut std::io::sink()).map_err(|e| kiln_cache::Error::Io {
            path: store.blob_path(&layer.blob),
            source: e,
        })?;
        let (actual, _) = hashed.finish();
        if actual != layer.diff_id {
            return Err(kiln_cache::Error::DigestMismatch {
                expected: layer.diff_id,
                actual,
            });
        }
        Ok(())
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(created: Option<&str>) -> History {
        History {
            created: created.map(str::to_string),
            created_by: None,
            comment: None,
            empty_layer: created.is_none(),
        }
    }

    #[test]
    fn undated_history_takes_the_times_of_the_layers_around_it() {
        // Base image, LABEL, COPY, ENV, RUN, EXPOSE.
        let mut history = vec![
            entry(Some("base")),
            entry(None),
            entry(Some("copy")),
            entry(None),
            entry(Some("run")),
            entry(None),
        ];
        fill_history_times(&mut history);
        let times: Vec<_> = history.iter().map(|h| h.created.as_deref()).collect();
        assert_eq!(
            times,
            [
                Some("base"),
                Some("copy"),
                Some("copy"),
                Some("copy"),
                Some("run"),
                Some("run")
            ]
        );
    }

    #[test]
    fn an_image_without_new_layers_is_dated_by_its_base() {
        let mut history = vec![entry(Some("one")), entry(Some("two")), entry(None)];
        fill_history_times(&mut history);
        assert_eq!(history[2].created.as_deref(), Some("two"));
    }
}
