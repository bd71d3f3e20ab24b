//! Cache keys of a build's steps, as ../shared/design.md sets them: each
//! chained on its parent's, made of the step's definition and the content
//! of what it reads, never of where the context lives, the clock or the
//! order steps run in.

use anyhow::Context;
use kiln_cache::{Digest, KeyHasher};
use kiln_frontend::graph::{
    Action, Base, BuildGraph, CopySource, CopyStep, Mount, RunStep, Source,
};
use kiln_frontend::Platform;

use crate::build::{output, Executor, Outputs};
use crate::copy;
use crate::image::StoredImage;

fn json(value: &impl serde::Serialize) -> anyhow::Result<Vec<u8>> {
    serde_json::to_vec(value).context("encoding a step for its cache key")
}

impl Executor<'_> {
    /// The key a stage's chain starts from: its base.
    pub(crate) fn base_key(
        &self,
        base: &Base,
        outputs: &Outputs,
        platform: &Platform,
    ) -> anyhow::Result<Digest> {
        Ok(match base {
            Base::Scratch => {
                let mut key = KeyHasher::new("scratch", None);
                key.field("platform", platform.to_string());
                key.finish()
            }
            Base::Image { reference } => {
                let image = StoredImage::find(self.store, reference)?;
                let mut key = KeyHasher::new("image", None);
                key.field("manifest", image.manifest_digest.to_string());
                key.finish()
            }
            Base::Stage { stage } => output(outputs, *stage)?.key,
        })
    }

    /// What another stage, an image or the context stands for in a key:
    /// a stage by its key, an image by its manifest digest. (The context's
    /// content is hashed where it is read.)
    fn source_identity(&self, from: &Source, outputs: &Outputs) -> anyhow::Result<String> {
        Ok(match from {
            Source::Context => "context".to_string(),
            Source::Stage { stage } => format!("stage {}", output(outputs, *stage)?.key),
            Source::Image { reference } => {
                let image = StoredImage::find(self.store, reference)?;
                format!("image {}", image.manifest_digest)
            }
        })
    }

    /// The key of a step that makes a layer, on top of `parent`.
    pub(crate) fn step_key(
        &self,
        parent: &Digest,
        action: &Action,
        outputs: &Outputs,
        graph: &BuildGraph,
    ) -> anyhow::Result<Digest> {
        match action {
            Action::Copy(step) => self.copy_key(parent, step, outputs, graph),
            Action::Run(run) => self.run_key(parent, run, outputs, graph),
            Action::Mkdir(mkdir) => {
                let mut key = KeyHasher::new("mkdir", Some(parent));
                key.field("definition", json(mkdir)?);
                Ok(key.finish())
            }
            Action::Metadata => Ok(*parent),
        }
    }

    fn copy_key(
        &self,
        parent: &Digest,
        step: &CopyStep,
        outputs: &Outputs,
        graph: &BuildGraph,
    ) -> anyhow::Result<Digest> {
        let mut key = KeyHasher::new("copy", Some(parent));
        key.field("definition", json(step)?);
        key.field("from", self.source_identity(&step.from, outputs)?);
        if step.from == Source::Context {
            let source = self.source_tree(&step.from, outputs, graph)?;
            key.field(
                "sources",
                copy::sources_digest(step, &source, self.stat_cache)?.to_string(),
            );
        }
        for source in &step.sources {
            if let CopySource::Url(url) = source {
                // What the URL serves now: downloaded once, and used by the
                // step itself when the key misses.
                let digest = self.prefetch(url)?;
                key.field("download", format!("{url} {digest}"));
            }
        }
        Ok(key.finish())
    }

    fn run_key(
        &self,
        parent: &Digest,
        run: &RunStep,
        outputs: &Outputs,
        graph: &BuildGraph,
    ) -> anyhow::Result<Digest> {
        let mut key = KeyHasher::new("run", Some(parent));
        // Proxy settings reach the step but not its key, as in BuildKit.
        let definition = RunStep {
            proxy_env: Vec::new(),
            ..run.clone()
        };
        key.field("definition", json(&definition)?);
        for mount in &run.mounts {
            match mount {
                Mount::Bind { from, source, .. } => {
                    key.field("bind", self.source_identity(from, outputs)?);
                    if *from == Source::Context {
                        let tree = self.source_tree(from, outputs, graph)?;
                        key.field(
                            "bind-content",
                            copy::tree_digest(&tree, source, self.stat_cache)?.to_string(),
                        );
                    }
                }
                Mount::Cache {
                    from: Some(from), ..
                } => key.field("cache-from", self.source_identity(from, outputs)?),
                // Their definitions are in the step's: ids, targets and
                // options; never a secret's value.
                Mount::Cache { .. }
                | Mount::Tmpfs { .. }
                | Mount::Secret { .. }
                | Mount::Ssh { .. } => {}
            }
        }
        Ok(key.finish())
    }
}
