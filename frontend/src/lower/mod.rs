//! Lowering: from typed instructions to the [`BuildGraph`]. This is where
//! ARG and ENV scoping, variable expansion, stage references, ONBUILD
//! triggers and the stages' image configurations are worked out.
//!
//! The semantics follow current BuildKit: the environment a step sees is the
//! base image's, then ENV and ARG values in the order they were set, the
//! later one winning; global ARGs (before the first FROM) are only visible
//! in FROM lines and in stages that declare them again.
//!
//! - `options`: what the caller decides (target, build arguments, platforms)
//!   and the base images it resolves.
//! - `stages`: the walk over stages, build arguments and their scopes, FROM,
//!   stage references, ONBUILD triggers; sends each instruction on.
//! - `metadata`: the instructions that only change the image configuration,
//!   and WORKDIR.
//! - `run`: RUN and its mounts.
//! - `copy`: COPY and ADD.
//! - `state`: a stage while it is lowered, what its steps see.
//! - `expand`: variable expansion of instruction words.

mod copy;
mod expand;
mod metadata;
mod options;
mod run;
mod stages;
mod state;

use crate::ast::Dockerfile;
use crate::error::{Error, Warning};
use crate::graph::BuildGraph;
use crate::instruction;
use crate::shell::Lexer;

pub use options::{
    BaseImages, ImagesAsked, LowerOptions, NamedContext, ResolvedImage, UnknownImages,
};
pub use state::DEFAULT_PATH;

use stages::Lowering;

/// Lowers a parsed Dockerfile for `options`, asking `images` for the base
/// images the target needs.
pub fn lower(
    dockerfile: &Dockerfile,
    options: &LowerOptions,
    images: &mut dyn BaseImages,
) -> Result<BuildGraph, Error> {
    let source = &dockerfile.source;
    let commands = instruction::commands(source, &dockerfile.instructions)?;
    let lexer = Lexer::new(dockerfile.directives.escape);
    let mut lowering = Lowering::new(source, lexer, &commands, options, images)?;
    let target = lowering.target_index()?;
    lowering.lower_stage(target)?;

    let mut warnings = Vec::new();
    let unused = lowering.unused_build_args();
    if !unused.is_empty() {
        warnings.push(Warning {
            line: None,
            message: format!(
                "build arguments not consumed by any ARG instruction: {}",
                unused.join(", ")
            ),
        });
    }
    let source_date_epoch = lowering.global_arg("SOURCE_DATE_EPOCH").map(str::to_string);
    let (mut stages, target_id) = lowering.into_graph_stages(target);
    let target_stage = &mut stages[target_id];
    for (key, value) in &options.labels {
        target_stage
            .config
            .labels
            .insert(key.clone(), value.clone());
    }
    Ok(BuildGraph {
        stages,
        target: target_id,
        build_platform: options.build_platform.clone(),
        target_platform: options.target_platform.clone(),
        source_date_epoch,
        warnings,
    })
}
