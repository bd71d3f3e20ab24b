//! Running a build graph: each stage from its base, step by step, every
//! changed file set packed into a layer; the result assembled as an image.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use kiln_cache::digest::HashingReader;
use kiln_cache::extract::{extract, ExtractOptions};
use kiln_cache::pack::PackOptions;
use kiln_cache::{Compression, LayerView, Store};
use kiln_frontend::graph::{Action, Base, BuildGraph, ImageConfig, Source, Stage};
use kiln_frontend::{DockerIgnore, Platform};

use crate::copy::{self, SourceTree};
use crate::image::{rfc3339, History, ImageFile, Layer, LayerEncoding, RootFs, StoredImage};
use crate::remote::Remote;

/// BuildKit marks the history entries it writes with this comment.
const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH`: the image's creation time, and the latest
    /// modification time a layer records.
    pub source_date_epoch: Option<i64>,
}

/// What a stage produced.
#[derive(Debug, Clone)]
pub struct StageOutput {
    pub layers: Vec<Layer>,
    pub history: Vec<History>,
    pub config: ImageConfig,
    pub author: Option<String>,
    pub platform: Platform,
}

impl StageOutput {
    /// The image configuration file of this stage's result.
    pub fn image_file(&self, created: i64) -> ImageFile {
        ImageFile {
            created: Some(rfc3339(created)),
            author: self.author.clone(),
            architecture: self.platform.architecture.clone(),
            os: self.platform.os.clone(),
            variant: Some(self.platform.variant.clone()).filter(|v| !v.is_empty()),
            config: self.config.clone(),
            rootfs: RootFs {
                kind: "layers".to_string(),
                diff_ids: self.layers.iter().map(|l| l.diff_id).collect(),
            },
            history: self.history.clone(),
        }
    }
}

pub struct Executor<'a> {
    pub store: &'a Store,
    /// For `ADD https://...`.
    pub remote: &'a Remote,
    /// For RUN.
    pub sandbox: &'a crate::run::Sandbox,
    pub context: &'a Path,
    pub ignore: &'a DockerIgnore,
    pub dockerfile: &'a str,
    pub settings: Settings,
    /// The time recorded for new files and history entries.
    pub now: i64,
}

impl Executor<'_> {
    /// Builds every stage of the graph (they are in dependency order) and
    /// returns their outputs, the target's at `graph.target`.
    pub fn build(&self, graph: &BuildGraph) -> anyhow::Result<Vec<StageOutput>> {
        let mut outputs: Vec<StageOutput> = Vec::with_capacity(graph.stages.len());
        for stage in &graph.stages {
            let output = self.stage(stage, &outputs, graph)?;
            outputs.push(output);
        }
        Ok(outputs)
    }

    fn stage(
        &self,
        stage: &Stage,
        outputs: &[StageOutput],
        graph: &BuildGraph,
    ) -> anyhow::Result<StageOutput> {
        let (mut layers, mut history) = match &stage.base {
            Base::Scratch => (Vec::new(), Vec::new()),
            Base::Image { reference } => {
                let image = StoredImage::find(self.store, reference)?;
                (image.layers, image.config.history)
            }
            Base::Stage { stage } => (
                outputs[*stage].layers.clone(),
                outputs[*stage].history.clone(),
            ),
        };
        let total = stage.steps.iter().filter(|s| s.makes_layer()).count();
        let mut number = 0;
        for step in &stage.steps {
            let location = format!("{}:{}", self.dockerfile, step.location.line);
            let started = Instant::now();
            let layer = match &step.action {
                Action::Metadata => {
                    if let Some(created_by) = &step.history {
                        history.push(self.history(created_by, true));
                    }
                    continue;
                }
                Action::Run(run) => {
                    number += 1;
                    eprintln!("[{} {number}/{total}] {}", stage.name, step.instruction);
                    self.run_step(run, &layers, outputs, graph)
                        .with_context(|| format!("{location}: {}", step.instruction))?
                }
                Action::Copy(copy_step) => {
                    number += 1;
                    eprintln!("[{} {number}/{total}] {}", stage.name, step.instruction);
                    let source = self.source_tree(&copy_step.from, outputs, graph)?;
                    let view = self.view(&layers)?;
                    let fetch = |url: &str| self.download(url);
                    self.in_diff(|diff| {
                        copy::copy(copy_step, &source, &view, diff, self.now, &fetch)
                    })
                    .with_context(|| format!("{location}: {}", step.instruction))?
                }
                Action::Mkdir(mkdir) => {
                    number += 1;
                    eprintln!("[{} {number}/{total}] {}", stage.name, step.instruction);
                    let view = self.view(&layers)?;
                    self.in_diff(|diff| copy::mkdir(mkdir, &view, diff, self.now))
                        .with_context(|| format!("{location}: {}", step.instruction))?
                }
            };
            let empty = layer.is_none();
            layers.extend(layer);
            if let Some(created_by) = &step.history {
                history.push(self.history(created_by, empty));
            }
            eprintln!(
                "  done in {:.2}s{}",
                started.elapsed().as_secs_f64(),
                if empty { " (no changes)" } else { "" }
            );
        }
        Ok(StageOutput {
            layers,
            history,
            config: stage.config.clone(),
            author: stage.author.clone(),
            platform: stage.platform.clone(),
        })
    }

    fn history(&self, created_by: &str, empty_layer: bool) -> History {
        History {
            created: Some(rfc3339(self.now)),
            created_by: Some(created_by.to_string()),
            comment: Some(HISTORY_COMMENT.to_string()),
            empty_layer,
        }
    }

    pub(crate) fn source_tree(
        &self,
        from: &Source,
        outputs: &[StageOutput],
        graph: &BuildGraph,
    ) -> anyhow::Result<SourceTree<'_>> {
        Ok(match from {
            Source::Context => SourceTree {
                view: LayerView::new(vec![self.context.to_path_buf()]),
                ignore: Some(self.ignore),
                label: "the build context".to_string(),
            },
            Source::Stage { stage } => SourceTree {
                view: self.view(&outputs[*stage].layers)?,
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
    /// layer; no layer when nothing was written.
    pub(crate) fn in_diff(
        &self,
        fill: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Option<Layer>> {
        let work = self.store.temp_dir()?;
        let diff = work.path().join("diff");
        std::fs::create_dir(&diff).with_context(|| format!("creating {}", diff.display()))?;
        fill(&diff)?;
        let options = PackOptions {
            compression: self.settings.compression,
            source_date_epoch: self.settings.source_date_epoch,
        };
        layer_from_diff(self.store, &diff, &options)
    }

    /// Downloads a URL for ADD into the store's scratch space.
    fn download(&self, url: &str) -> anyhow::Result<copy::Downloaded> {
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
            _keep: keep,
        })
    }

    pub fn view(&self, layers: &[Layer]) -> anyhow::Result<LayerView> {
        layer_view(self.store, layers)
    }
}

/// Packs a directory of changes (on the store's file system) into a layer
/// and keeps the directory as its snapshot; no layer when it is empty.
pub fn layer_from_diff(
    store: &Store,
    diff: &Path,
    options: &PackOptions,
) -> anyhow::Result<Option<Layer>> {
    if std::fs::read_dir(diff)
        .with_context(|| format!("reading {}", diff.display()))?
        .next()
        .is_none()
    {
        return Ok(None);
    }
    let packed = store.pack_layer(diff, options)?;
    store.adopt_snapshot(&packed.diff_id, diff)?;
    Ok(Some(Layer {
        diff_id: packed.diff_id,
        blob: packed.digest,
        size: packed.size,
        encoding: LayerEncoding::of_compression(packed.compression),
    }))
}

/// The merged file system of `layers`, unpacking those not unpacked yet.
pub fn layer_view(store: &Store, layers: &[Layer]) -> anyhow::Result<LayerView> {
    let paths = layers
        .iter()
        .map(|layer| snapshot(store, layer))
        .collect::<anyhow::Result<Vec<PathBuf>>>()?;
    Ok(LayerView::new(paths))
}

fn snapshot(store: &Store, layer: &Layer) -> anyhow::Result<PathBuf> {
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
