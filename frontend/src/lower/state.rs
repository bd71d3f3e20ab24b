//! A stage while it is lowered: what its steps see (variables, image
//! configuration, ARGs in scope) and the steps lowered so far.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Pos};
use crate::graph::{Action, Base, ImageConfig, Mount, Source, Stage, Step};
use crate::platform::Platform;
use crate::shell::EnvList;

/// The PATH an image gets when its configuration sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// Finds what a `--from` or `from=` of a step of `stage` names: an earlier
/// stage, lowered first and recorded as a dependency, or an image.
pub(super) type ResolveSource<'r> =
    dyn FnMut(&mut LoweredStage, &str, Pos) -> Result<Source, Error> + 'r;

/// What a step sees: the state of its stage at that point.
#[derive(Debug, Clone)]
pub(super) struct StageState {
    /// Variables of the image, ENV and ARG, in assignment order.
    pub(super) env: EnvList,
    /// The image's variables: those of the base and ENV, not ARG.
    pub(super) image_env: EnvList,
    pub(super) config: ImageConfig,
    /// ARGs declared in the stage (and in stages it builds on), with values.
    pub(super) args: Vec<(String, Option<String>)>,
    pub(super) platform: Platform,
    pub(super) author: Option<String>,
}

impl StageState {
    pub(super) fn workdir(&self) -> &str {
        if self.config.working_dir.is_empty() {
            "/"
        } else {
            &self.config.working_dir
        }
    }

    pub(super) fn set_env(&mut self, key: &str, value: &str) {
        self.env.set(key, value);
        self.image_env.set(key, value);
    }

    /// Makes sure PATH is set, as every image built gets one.
    pub(super) fn default_path(&mut self) {
        if !self.image_env.contains("PATH") {
            self.set_env("PATH", DEFAULT_PATH);
        }
    }

    fn shell(&self) -> Vec<String> {
        if self.config.shell.is_empty() {
            DEFAULT_SHELL.iter().map(|s| s.to_string()).collect()
        } else {
            self.config.shell.clone()
        }
    }

    pub(super) fn with_shell(&self, args: &[String]) -> Vec<String> {
        let mut shell = self.shell();
        shell.push(args.join(" "));
        shell
    }
}

/// A stage while it is being lowered, and after.
#[derive(Debug, Clone)]
pub(super) struct LoweredStage {
    pub(super) index: usize,
    pub(super) name: String,
    pub(super) location: Pos,
    pub(super) base: Base,
    pub(super) state: StageState,
    pub(super) steps: Vec<Step>,
    /// Dockerfile indexes of the stages this one reads from.
    pub(super) depends_on: BTreeSet<usize>,
    /// CMD was set in this stage (ENTRYPOINT then keeps it).
    pub(super) cmd_set: bool,
}

impl LoweredStage {
    /// The graph's stage, with stages referred to by their id in the graph
    /// (`ids`, by Dockerfile index) rather than their Dockerfile index.
    pub(super) fn into_graph_stage(self, ids: &BTreeMap<usize, usize>) -> Stage {
        let id_of = |index: usize| ids[&index];
        let remap = |source: &mut Source| {
            if let Source::Stage { stage } = source {
                *stage = id_of(*stage);
            }
        };
        let mut config = self.state.config;
        config.env = self.state.image_env.to_key_values();
        let mut steps = self.steps;
        for step in &mut steps {
            match &mut step.action {
                Action::Copy(copy) => remap(&mut copy.from),
                Action::Run(run) => {
                    for mount in &mut run.mounts {
                        match mount {
                            Mount::Bind { from, .. } => remap(from),
                            Mount::Cache {
                                from: Some(from), ..
                            } => remap(from),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let base = match self.base {
            Base::Stage { stage } => Base::Stage {
                stage: id_of(stage),
            },
            other => other,
        };
        Stage {
            id: id_of(self.index),
            index: self.index,
            name: self.name,
            location: self.location,
            platform: self.state.platform,
            base,
            steps,
            config,
            author: self.state.author,
            depends_on: self.depends_on.into_iter().map(id_of).collect(),
        }
    }
}
