//! What steps read from: the build context (or one given by name), another
//! stage's file system or an image's, and what each stands for in a cache key.

use std::path::Path;

use kiln_frontend::graph::{BuildGraph, Source};
use kiln_frontend::DockerIgnore;

use crate::contexts::NamedFiles;
use crate::copy::SourceTree;
use crate::error::Context;
use crate::layers::Layers;
use crate::outputs::Outputs;
use kiln_cache::Store;

/// The sources a stage's steps can read, once the stages it needs are
/// built.
pub struct Sources<'a> {
    pub store: &'a Store,
    /// The build context, absolute.
    pub context: &'a Path,
    pub ignore: &'a DockerIgnore,
    /// The build contexts given by name that hold files.
    pub named: &'a NamedFiles,
    pub layers: &'a Layers<'a>,
    pub graph: &'a BuildGraph,
    pub outputs: &'a Outputs,
}

impl Sources<'_> {
    /// The files `from` gives, with the context's ignore rules.
    pub fn tree(&self, from: &Source) -> crate::Result<SourceTree<'_>> {
        Ok(match from {
            Source::Context => SourceTree {
                view: kiln_cache::LayerView::new(vec![self.context.to_path_buf()]),
                ignore: Some(self.ignore),
                label: "the build context".to_string(),
            },
            Source::Stage { stage } => SourceTree {
                view: self.layers.view(&self.outputs.get(*stage)?.layers)?,
                ignore: None,
                label: format!("stage {}", self.graph.stages[*stage].name),
            },
            Source::Image { reference } => {
                let image = self.layers.image(reference)?;
                SourceTree {
                    view: self.layers.view(&image.layers)?,
                    ignore: None,
                    label: format!("image {reference}"),
                }
            }
            Source::NamedContext { name } => {
                let context = self.named.contexts.get(name).with_context(|| {
                    format!("the build context {name} was not prepared (a bug in kiln)")
                })?;
                SourceTree {
                    view: kiln_cache::LayerView::new(vec![context.root.clone()]),
                    ignore: Some(&context.ignore),
                    label: format!("the build context {name}"),
                }
            }
        })
    }

    /// What another stage, an image or the context stands for in a key:
    /// a stage by its key, an image by its manifest digest. (The context's
    /// content is hashed where it is read.)
    pub fn identity(&self, from: &Source) -> crate::Result<String> {
        Ok(match from {
            Source::Context => "context".to_string(),
            Source::Stage { stage } => format!("stage {}", self.outputs.get(*stage)?.key),
            Source::Image { reference } => {
                let image = self.layers.image(reference)?;
                format!("image {}", image.manifest_digest)
            }
            Source::NamedContext { name } => format!("context {name}"),
        })
    }
}
