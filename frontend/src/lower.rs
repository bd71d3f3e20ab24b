//! Lowering: from typed instructions to the [`BuildGraph`]. This is where
//! ARG and ENV scoping, variable expansion, stage references, ONBUILD
//! triggers and the stages' image configurations are worked out.
//!
//! The semantics follow current BuildKit: the environment a step sees is the
//! base image's, then ENV and ARG values in the order they were set, the
//! later one winning; global ARGs (before the first FROM) are only visible
//! in FROM lines and in stages that declare them again.

use std::collections::{BTreeMap, BTreeSet};

use crate::ast::{Dockerfile, Keyword, Source as DockerfileSource, Warning, Word};
use crate::error::{Error, ErrorKind, Pos};
use crate::graph::{
    Action, Base, BuildGraph, CopySource, CopyStep, Healthcheck, ImageConfig, InlineFile,
    MkdirStep, Mount, RunStep, Sharing, Source, Stage, Step,
};
use crate::history::{go_duration, go_list, go_quote_list, go_quote_rune};
use crate::instruction::{
    self, ArgDeclaration, Command, CommandKind, CommandLine, CopyCommand, FromCommand,
    HealthcheckCommand, NetworkMode, Pair, RunCommand, SecurityMode,
};
use crate::mount::{literal_from, parse_mount, MountSpec, MountType};
use crate::parser::{self, parse_heredoc_word};
use crate::paths;
use crate::platform::Platform;
use crate::shell::{EnvList, Environment, Lexer};

/// The PATH an image gets when its configuration sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// Build arguments that are passed to RUN without an ARG declaration, and
/// never recorded in history or cache keys.
const PROXY_ARGS: [&str; 5] = [
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "no_proxy",
    "all_proxy",
];

/// What the caller decides about a build.
#[derive(Debug, Clone)]
pub struct LowerOptions {
    /// The stage to build; the last stage when absent.
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub build_platform: Platform,
    pub target_platform: Platform,
    /// Labels added to the target stage's image.
    pub labels: BTreeMap<String, String>,
    /// Whether `RUN --security=insecure` is allowed.
    pub allow_insecure: bool,
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions {
            target: None,
            build_args: BTreeMap::new(),
            build_platform: Platform::host(),
            target_platform: Platform::host(),
            labels: BTreeMap::new(),
            allow_insecure: false,
        }
    }
}

/// A base image as the builder found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The reference to build from, pinned to a digest when the builder knows it.
    pub reference: String,
    pub config: ImageConfig,
}

/// Looks up the configuration of base images. Only the images of stages the
/// target needs are asked for.
pub trait BaseImages {
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String>;
}

/// Treats every base image as having an empty configuration, for looking at
/// a graph without a store or registry at hand.
pub struct UnknownImages;

impl BaseImages for UnknownImages {
    fn resolve(&mut self, reference: &str, _platform: &Platform) -> Result<ResolvedImage, String> {
        Ok(ResolvedImage {
            reference: reference.to_string(),
            config: ImageConfig::default(),
        })
    }
}

/// Lowers a parsed Dockerfile for `options`, asking `images` for the base
/// images the target needs.
pub fn lower(
    dockerfile: &Dockerfile,
    options: &LowerOptions,
    images: &mut dyn BaseImages,
) -> Result<BuildGraph, Error> {
    let source = &dockerfile.source;
    let commands = instruction::commands(source, &dockerfile.instructions)?;
    let (meta_args, stages) = split_stages(source, &commands)?;
    let mut lowering = Lowering {
        source,
        options,
        images,
        lexer: Lexer::new(dockerfile.directives.escape),
        stages,
        global_args: EnvList::new(),
        consumed_args: BTreeSet::new(),
        lowered: Vec::new(),
        in_progress: Vec::new(),
    };
    lowering.lowered = vec![None; lowering.stages.len()];
    lowering.in_progress = vec![false; lowering.stages.len()];
    lowering.set_global_args(&meta_args)?;
    lowering.check_forward_references()?;
    let target = lowering.target_index()?;
    lowering.lower_stage(target)?;

    let mut warnings = dockerfile.warnings.clone();
    let unused: Vec<&str> = options
        .build_args
        .keys()
        .filter(|k| {
            !lowering.consumed_args.contains(k.as_str())
                && !is_proxy_arg(k)
                // The builder itself takes this one (file times, dates).
                && k.as_str() != "SOURCE_DATE_EPOCH"
        })
        .map(String::as_str)
        .collect();
    if !unused.is_empty() {
        warnings.push(Warning {
            line: None,
            message: format!(
                "build arguments not consumed by any ARG instruction: {}",
                unused.join(", ")
            ),
        });
    }
    let source_date_epoch = lowering
        .global_args
        .get("SOURCE_DATE_EPOCH")
        .map(str::to_string);
    let lowered: Vec<(usize, LoweredStage)> = lowering
        .lowered
        .into_iter()
        .enumerate()
        .filter_map(|(index, stage)| stage.map(|s| (index, s)))
        .collect();
    let ids: BTreeMap<usize, usize> = lowered
        .iter()
        .enumerate()
        .map(|(id, (index, _))| (*index, id))
        .collect();
    let mut graph_stages: Vec<Stage> = lowered
        .into_iter()
        .map(|(_, stage)| stage.into_graph_stage(&ids))
        .collect();
    let target_id = ids[&target];
    let target_stage = &mut graph_stages[target_id];
    for (key, value) in &options.labels {
        target_stage
            .config
            .labels
            .insert(key.clone(), value.clone());
    }
    Ok(BuildGraph {
        stages: graph_stages,
        target: target_id,
        build_platform: options.build_platform.clone(),
        target_platform: options.target_platform.clone(),
        source_date_epoch,
        warnings,
    })
}

/// An environment that notes the variables looked up in it that it lacks.
struct UnsetVariables<'e> {
    env: &'e EnvList,
    names: std::cell::RefCell<Vec<String>>,
}

impl Environment for UnsetVariables<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        let value = self.env.get(name);
        if value.is_none() {
            self.names.borrow_mut().push(name.to_string());
        }
        value
    }
}

fn is_proxy_arg(name: &str) -> bool {
    PROXY_ARGS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// A stage of the Dockerfile: its FROM and the instructions after it.
#[derive(Clone)]
struct DockerfileStage<'a> {
    from_command: &'a Command,
    from: &'a FromCommand,
    commands: Vec<&'a Command>,
}

impl DockerfileStage<'_> {
    fn name(&self) -> Option<&str> {
        self.from.name.as_ref().map(|w| w.text.as_str())
    }
}

type MetaArgs<'a> = Vec<&'a ArgDeclaration>;

fn split_stages<'a>(
    source: &DockerfileSource,
    commands: &'a [Command],
) -> Result<(MetaArgs<'a>, Vec<DockerfileStage<'a>>), Error> {
    let mut meta_args = Vec::new();
    let mut stages: Vec<DockerfileStage<'a>> = Vec::new();
    for command in commands {
        match (&command.kind, stages.last_mut()) {
            (CommandKind::From(from), _) => {
                if let Some(name) = &from.name {
                    if let Some(earlier) =
                        stages.iter().find(|s| s.name() == Some(name.text.as_str()))
                    {
                        return Err(source.error(
                            ErrorKind::DuplicateStageName {
                                name: name.text.clone(),
                                first_line: earlier.from_command.start_line,
                            },
                            name.pos,
                        ));
                    }
                }
                stages.push(DockerfileStage {
                    from_command: command,
                    from,
                    commands: Vec::new(),
                });
            }
            (CommandKind::Arg(declarations), None) => meta_args.extend(declarations),
            (_, None) => {
                return Err(source.error(
                    ErrorKind::InstructionBeforeFrom(command.keyword),
                    command.pos,
                ))
            }
            (_, Some(stage)) => stage.commands.push(command),
        }
    }
    if stages.is_empty() {
        let pos = commands.first().map_or(Pos::new(1, 1), |c| c.pos);
        return Err(source.error(ErrorKind::NoStages, pos));
    }
    Ok((meta_args, stages))
}

/// What a step sees: the state of its stage at that point.
#[derive(Debug, Clone)]
struct StageState {
    /// Variables of the image, ENV and ARG, in assignment order.
    env: EnvList,
    /// The image's variables: those of the base and ENV, not ARG.
    image_env: EnvList,
    config: ImageConfig,
    /// ARGs declared in the stage (and in stages it builds on), with values.
    args: Vec<(String, Option<String>)>,
    platform: Platform,
    author: Option<String>,
}

impl StageState {
    fn workdir(&self) -> &str {
        if self.config.working_dir.is_empty() {
            "/"
        } else {
            &self.config.working_dir
        }
    }

    fn set_env(&mut self, key: &str, value: &str) {
        self.env.set(key, value);
        self.image_env.set(key, value);
    }

    /// Makes sure PATH is set, as every image built gets one.
    fn default_path(&mut self) {
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

    fn with_shell(&self, args: &[String]) -> Vec<String> {
        let mut shell = self.shell();
        shell.push(args.join(" "));
        shell
    }
}

/// A stage while it is being lowered, and after.
#[derive(Debug, Clone)]
struct LoweredStage {
    index: usize,
    name: String,
    location: Pos,
    base: Base,
    state: StageState,
    steps: Vec<Step>,
    /// Dockerfile indexes of the stages this one reads from.
    depends_on: BTreeSet<usize>,
    /// CMD was set in this stage (ENTRYPOINT then keeps it).
    cmd_set: bool,
}

impl LoweredStage {
    fn into_graph_stage(self, ids: &BTreeMap<usize, usize>) -> Stage {
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

struct Lowering<'a> {
    source: &'a DockerfileSource,
    options: &'a LowerOptions,
    images: &'a mut dyn BaseImages,
    lexer: Lexer,
    stages: Vec<DockerfileStage<'a>>,
    global_args: EnvList,
    consumed_args: BTreeSet<String>,
    lowered: Vec<Option<LoweredStage>>,
    in_progress: Vec<bool>,
}

impl Lowering<'_> {
    fn set_global_args(&mut self, meta_args: &[&ArgDeclaration]) -> Result<(), Error> {
        let build = &self.options.build_platform;
        let target = &self.options.target_platform;
        let target_stage = match &self.options.target {
            Some(name) => name.to_lowercase(),
            None => self
                .stages
                .last()
                .and_then(|s| s.name())
                // BuildKit's name for an unnamed last stage.
                .unwrap_or("default")
                .to_string(),
        };
        let defaults = [
            ("BUILDPLATFORM", build.to_string()),
            ("BUILDOS", build.os.clone()),
            ("BUILDOSVERSION", String::new()),
            ("BUILDARCH", build.architecture.clone()),
            ("BUILDVARIANT", build.variant.clone()),
            ("TARGETPLATFORM", target.to_string()),
            ("TARGETOS", target.os.clone()),
            ("TARGETOSVERSION", String::new()),
            ("TARGETARCH", target.architecture.clone()),
            ("TARGETVARIANT", target.variant.clone()),
            ("TARGETSTAGE", target_stage),
        ];
        for (key, value) in defaults {
            let value = match self.options.build_args.get(key) {
                Some(overridden) => {
                    self.consumed_args.insert(key.to_string());
                    overridden.clone()
                }
                None => value,
            };
            self.global_args.set(key, &value);
        }
        for declaration in meta_args {
            let key = &declaration.name.text;
            self.consumed_args.insert(key.clone());
            let value = match (self.options.build_args.get(key), &declaration.default) {
                (Some(given), _) => Some(given.clone()),
                (None, Some(default)) => Some(expand(
                    &self.lexer,
                    self.source,
                    default,
                    &self.global_args,
                )?),
                (None, None) => None,
            };
            if let Some(value) = value {
                self.global_args.set(key, &value);
            }
        }
        Ok(())
    }

    /// A global build argument that an unset variable of `text` is probably
    /// a typo of (`$BULIDPLATFORM`).
    fn misspelt_variable(&self, text: &str) -> Option<String> {
        let unset = UnsetVariables {
            env: &self.global_args,
            names: std::cell::RefCell::new(Vec::new()),
        };
        // Only the names it looks up are wanted, not what it expands to.
        let _ = self.lexer.process_word(text, &unset);
        let known: Vec<&str> = self.global_args.iter().map(|(key, _)| key).collect();
        unset
            .names
            .into_inner()
            .iter()
            .find_map(|name| crate::suggest::closest(name, &known))
            .map(str::to_string)
    }

    /// A stage can only use stages defined before it. This is checked for
    /// every stage, built or not, wherever the reference is literal.
    fn check_forward_references(&self) -> Result<(), Error> {
        for (index, stage) in self.stages.iter().enumerate() {
            let image = &stage.from.image;
            if let Ok(name) = self.lexer.process_word(&image.text, &self.global_args) {
                self.check_reference(index, &name, image.pos, false)?;
            }
            for command in &stage.commands {
                match &command.kind {
                    CommandKind::Copy(copy) => {
                        if let Some(from) = copy.from.as_ref().filter(|f| !f.text.contains('$')) {
                            self.check_reference(index, &from.text, from.pos, true)?;
                        }
                    }
                    CommandKind::Run(run) => {
                        for mount in &run.mounts {
                            if let Some(from) = literal_from(&mount.text) {
                                self.check_reference(index, &from, mount.pos, true)?;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn check_reference(
        &self,
        current: usize,
        name: &str,
        pos: Pos,
        self_is_error: bool,
    ) -> Result<(), Error> {
        let Some(index) = self.stage_by_name(name) else {
            return Ok(());
        };
        if index == current && self_is_error {
            return Err(self
                .source
                .error(ErrorKind::SelfReference(name.to_string()), pos));
        }
        if index > current {
            return Err(self.source.error(
                ErrorKind::ForwardStageReference {
                    name: name.to_string(),
                    defined_at: self.stages[index].from_command.start_line,
                },
                pos,
            ));
        }
        Ok(())
    }

    fn target_index(&self) -> Result<usize, Error> {
        let Some(target) = &self.options.target else {
            return Ok(self.stages.len() - 1);
        };
        self.stage_by_name(target).ok_or_else(|| {
            Error::new(ErrorKind::UnknownTarget {
                name: target.clone(),
                stages: self
                    .stages
                    .iter()
                    .filter_map(|s| s.name().map(str::to_string))
                    .collect(),
            })
        })
    }

    fn stage_by_name(&self, name: &str) -> Option<usize> {
        let name = name.to_lowercase();
        self.stages
            .iter()
            .position(|s| s.name() == Some(name.as_str()))
    }

    fn lower_stage(&mut self, index: usize) -> Result<(), Error> {
        if self.lowered[index].is_some() {
            return Ok(());
        }
        let stage = self.stages[index].clone();
        if self.in_progress[index] {
            let name = stage.name().unwrap_or_default().to_string();
            return Err(self
                .source
                .error(ErrorKind::SelfReference(name), stage.from_command.pos));
        }
        self.in_progress[index] = true;
        let (mut lowered, triggers) = self.start_stage(index, &stage)?;
        let image_name = match &lowered.base {
            Base::Image { reference } => reference.clone(),
            Base::Stage { stage } => {
                format!("stage {}", self.stages[*stage].name().unwrap_or_default())
            }
            Base::Scratch => "scratch".to_string(),
        };
        for expression in triggers {
            self.dispatch_trigger(
                &mut lowered,
                &image_name,
                &expression,
                stage.from_command.pos,
            )?;
        }
        for command in &stage.commands {
            let step = self.dispatch(&mut lowered, self.source, command, command.pos)?;
            lowered.steps.push(step);
        }
        self.lowered[index] = Some(lowered);
        self.in_progress[index] = false;
        Ok(())
    }

    /// Resolves FROM: the base's state and the ONBUILD triggers to run.
    fn start_stage(
        &mut self,
        index: usize,
        stage: &DockerfileStage<'_>,
    ) -> Result<(LoweredStage, Vec<String>), Error> {
        let from = stage.from;
        let reference = expand(&self.lexer, self.source, &from.image, &self.global_args)?;
        if reference.is_empty() {
            return Err(self.source.error(
                ErrorKind::EmptyBaseName(from.image.text.clone()),
                from.image.pos,
            ));
        }
        let explicit_platform = match &from.platform {
            None => None,
            Some(word) => {
                let text = expand(&self.lexer, self.source, word, &self.global_args)?;
                if text.is_empty() {
                    return Err(self.source.error(
                        ErrorKind::EmptyPlatform {
                            expression: word.text.clone(),
                            suggestion: self.misspelt_variable(&word.text),
                        },
                        word.pos,
                    ));
                }
                let platform = Platform::parse(&text).map_err(|reason| {
                    self.source.error(
                        ErrorKind::InvalidPlatform {
                            value: text.clone(),
                            reason,
                        },
                        word.pos,
                    )
                })?;
                Some(platform)
            }
        };
        let mut depends_on = BTreeSet::new();
        let (base, mut state) = match self.stage_by_name(&reference).filter(|&j| j != index) {
            Some(j) if j > index => {
                return Err(self.source.error(
                    ErrorKind::ForwardStageReference {
                        name: reference,
                        defined_at: self.stages[j].from_command.start_line,
                    },
                    from.image.pos,
                ))
            }
            Some(j) => {
                self.lower_stage(j)?;
                depends_on.insert(j);
                let mut base_state = self.lowered[j]
                    .as_ref()
                    .map(|s| s.state.clone())
                    .ok_or_else(|| {
                        self.source
                            .error(ErrorKind::SelfReference(reference.clone()), from.image.pos)
                    })?;
                // The new stage starts from the earlier stage's image: its
                // ENV values win over a same-named ARG that the earlier
                // stage declared after them (BuildKit re-applies the
                // image's variables when a stage starts).
                let image_env = base_state.image_env.clone();
                for (key, value) in image_env.iter() {
                    base_state.env.set(key, value);
                }
                (Base::Stage { stage: j }, base_state)
            }
            None => {
                let platform = explicit_platform
                    .clone()
                    .unwrap_or_else(|| self.options.target_platform.clone());
                let (base, config) = if reference == "scratch" {
                    // What BuildKit starts an empty image with.
                    let config = ImageConfig {
                        working_dir: "/".to_string(),
                        ..ImageConfig::default()
                    };
                    (Base::Scratch, config)
                } else {
                    let resolved =
                        self.images
                            .resolve(&reference, &platform)
                            .map_err(|message| {
                                self.source.error(
                                    ErrorKind::BaseImage {
                                        reference: reference.clone(),
                                        message,
                                    },
                                    from.image.pos,
                                )
                            })?;
                    (
                        Base::Image {
                            reference: resolved.reference,
                        },
                        resolved.config,
                    )
                };
                let state = StageState {
                    env: EnvList::from_key_values(&config.env),
                    image_env: EnvList::from_key_values(&config.env),
                    config,
                    args: Vec::new(),
                    platform,
                    author: None,
                };
                (base, state)
            }
        };
        if let Some(platform) = explicit_platform {
            state.platform = platform;
        }
        state.default_path();
        let triggers = std::mem::take(&mut state.config.on_build);
        let name = match stage.name() {
            Some(name) => name.to_string(),
            None => format!("stage-{index}"),
        };
        Ok((
            LoweredStage {
                index,
                name,
                location: stage.from_command.pos,
                base,
                state,
                steps: Vec::with_capacity(stage.commands.len()),
                depends_on,
                cmd_set: false,
            },
            triggers,
        ))
    }

    fn dispatch_trigger(
        &mut self,
        stage: &mut LoweredStage,
        image: &str,
        expression: &str,
        from_pos: Pos,
    ) -> Result<(), Error> {
        let wrap = |error: Error| Error {
            kind: ErrorKind::Trigger {
                image: image.to_string(),
                trigger: expression.lines().next().unwrap_or_default().to_string(),
                error: Box::new(error.kind),
            },
            location: Some(Box::new(self.source.location(from_pos))),
        };
        let dockerfile = parser::parse(expression, "ONBUILD").map_err(wrap)?;
        let [instruction] = dockerfile.instructions.as_slice() else {
            return Err(wrap(Error::new(ErrorKind::TriggerNotOneInstruction(
                expression.to_string(),
            ))));
        };
        let command = instruction::command(&dockerfile.source, instruction).map_err(wrap)?;
        if matches!(
            command.keyword,
            Keyword::Onbuild | Keyword::From | Keyword::Maintainer
        ) {
            return Err(wrap(Error::new(match command.keyword {
                Keyword::Onbuild => ErrorKind::OnbuildChain,
                keyword => ErrorKind::OnbuildTrigger(keyword),
            })));
        }
        let mut step = self
            .dispatch(stage, &dockerfile.source, &command, from_pos)
            .map_err(|e| {
                if matches!(e.kind, ErrorKind::Trigger { .. }) {
                    e
                } else {
                    wrap(e)
                }
            })?;
        step.from_onbuild = true;
        stage.steps.push(step);
        Ok(())
    }

    fn dispatch(
        &mut self,
        stage: &mut LoweredStage,
        source: &DockerfileSource,
        command: &Command,
        location: Pos,
    ) -> Result<Step, Error> {
        let lexer = self.lexer;
        let word = |w: &Word, env: &EnvList| expand(&lexer, source, w, env);
        let mut step = Step {
            location,
            instruction: display_text(&lexer, &command.text, &stage.state.env),
            from_onbuild: false,
            history: None,
            numbered: matches!(
                command.keyword,
                Keyword::Add | Keyword::Copy | Keyword::Run | Keyword::Workdir
            ),
            action: Action::Metadata,
        };
        let history = match &command.kind {
            CommandKind::From(_) => return Err(from_inside_stage(source, command)),
            CommandKind::Env(pairs) | CommandKind::Label(pairs) => {
                let expanded = expand_pairs(&|w| word(w, &stage.state.env), pairs)?;
                let is_env = command.keyword == Keyword::Env;
                let mut history = String::from(if is_env { "ENV" } else { "LABEL" });
                for (key, value) in &expanded {
                    history.push(' ');
                    history.push_str(key);
                    history.push('=');
                    history.push_str(value);
                    if is_env {
                        stage.state.set_env(key, value);
                    } else {
                        stage.state.config.labels.insert(key.clone(), value.clone());
                    }
                }
                Some(history)
            }
            CommandKind::Maintainer(name) => {
                stage.state.author = Some(name.clone());
                Some(format!("MAINTAINER {name}"))
            }
            CommandKind::Arg(declarations) => {
                Some(self.declare_args(&mut stage.state, source, declarations)?)
            }
            CommandKind::Run(run) => {
                let (run_step, display_suffix) = self.run_step(stage, source, command, run)?;
                let secret_variables: Vec<&str> = run_step
                    .mounts
                    .iter()
                    .filter_map(|mount| match mount {
                        Mount::Secret { env: Some(env), .. } => Some(env.as_str()),
                        _ => None,
                    })
                    .collect();
                if !secret_variables.is_empty() {
                    // The step sees the secret there, not the stage's value:
                    // show neither, as BuildKit masks it.
                    let mut masked = stage.state.env.clone();
                    for variable in secret_variables {
                        masked.set(variable, "****");
                    }
                    step.instruction = display_text(&lexer, &command.text, &masked);
                }
                step.instruction.push_str(&display_suffix);
                let history = format!(
                    "RUN {} # buildkit",
                    run_history(&run_step.args, &stage.state.args, &stage.state.env)
                );
                step.action = Action::Run(run_step);
                Some(history)
            }
            CommandKind::Copy(copy) => {
                let (copy_step, history) = self.copy_step(stage, source, command, copy)?;
                step.action = Action::Copy(copy_step);
                Some(history)
            }
            CommandKind::Workdir(path) => {
                let text = word(path, &stage.state.env)?;
                if text.is_empty() {
                    return Err(source.error(ErrorKind::EmptyWorkdir(path.text.clone()), path.pos));
                }
                let state = &mut stage.state;
                let workdir = paths::resolve(state.workdir(), &text);
                state.config.working_dir = workdir.clone();
                if workdir != "/" {
                    step.action = Action::Mkdir(MkdirStep {
                        path: workdir.clone(),
                        mode: 0o755,
                        user: state.config.user.clone(),
                    });
                }
                Some(format!("WORKDIR {workdir}"))
            }
            CommandKind::User(user) => {
                let user = word(user, &stage.state.env)?;
                stage.state.config.user = user.clone();
                Some(format!("USER {user}"))
            }
            CommandKind::Volume(volumes) => {
                let mut expanded = Vec::with_capacity(volumes.len());
                for volume in volumes {
                    let text = word(volume, &stage.state.env)?;
                    if text.is_empty() {
                        return Err(source.error(ErrorKind::EmptyVolume, volume.pos));
                    }
                    expanded.push(text);
                }
                stage.state.config.volumes.extend(expanded.iter().cloned());
                Some(format!("VOLUME {}", go_list(&expanded)))
            }
            CommandKind::Expose(ports) => {
                // BuildKit's order: the words as written, sorted, then
                // expanded and parsed one by one.
                let mut ports: Vec<_> = ports.iter().collect();
                ports.sort_by(|a, b| a.text.cmp(&b.text));
                let mut exposed = Vec::new();
                for port in ports {
                    let words =
                        lexer
                            .process_words(&port.text, &stage.state.env)
                            .map_err(|error| {
                                source.error(
                                    ErrorKind::Expansion {
                                        word: port.text.clone(),
                                        error,
                                    },
                                    port.pos,
                                )
                            })?;
                    for spec in words {
                        let parsed = parse_port(&spec).map_err(|reason| {
                            source.error(
                                ErrorKind::InvalidPort {
                                    port: spec.clone(),
                                    reason,
                                },
                                port.pos,
                            )
                        })?;
                        exposed.extend(parsed);
                    }
                }
                stage
                    .state
                    .config
                    .exposed_ports
                    .extend(exposed.iter().cloned());
                Some(format!("EXPOSE [{}]", exposed.join(" ")))
            }
            CommandKind::StopSignal(signal) => {
                let text = word(signal, &stage.state.env)?;
                if !valid_signal(&text) {
                    return Err(source.error(ErrorKind::InvalidSignal(text), signal.pos));
                }
                stage.state.config.stop_signal = text.clone();
                Some(format!("STOPSIGNAL {text}"))
            }
            CommandKind::Shell(shell) => {
                stage.state.config.shell = shell.clone();
                Some(format!("SHELL {}", go_list(shell)))
            }
            CommandKind::Cmd(line) => {
                let args = shell_or_exec(&stage.state, line);
                stage.state.config.cmd = Some(args.clone());
                stage.state.config.args_escaped = true;
                stage.cmd_set = true;
                Some(format!("CMD {}", go_quote_list(&args)))
            }
            CommandKind::Entrypoint(line) => {
                let args = shell_or_exec(&stage.state, line);
                let config = &mut stage.state.config;
                config.entrypoint = if args.is_empty() {
                    None
                } else {
                    Some(args.clone())
                };
                if !stage.cmd_set {
                    config.cmd = None;
                }
                Some(format!("ENTRYPOINT {}", go_quote_list(&args)))
            }
            CommandKind::Healthcheck(check) => {
                let healthcheck = healthcheck_config(check.as_deref());
                let history = format!(
                    "HEALTHCHECK &{{{} {:?} {:?} {:?} {:?} {}}}",
                    go_quote_list(&healthcheck.test),
                    go_duration(healthcheck.interval),
                    go_duration(healthcheck.timeout),
                    go_duration(healthcheck.start_period),
                    go_duration(healthcheck.start_interval),
                    go_quote_rune(healthcheck.retries)
                );
                stage.state.config.healthcheck = Some(healthcheck);
                Some(history)
            }
            CommandKind::Onbuild(expression) => {
                stage.state.config.on_build.push(expression.clone());
                None
            }
        };
        step.history = history;
        Ok(step)
    }

    fn declare_args(
        &mut self,
        state: &mut StageState,
        source: &DockerfileSource,
        declarations: &[ArgDeclaration],
    ) -> Result<String, Error> {
        let mut history = Vec::with_capacity(declarations.len());
        for declaration in declarations {
            let key = declaration.name.text.clone();
            self.consumed_args.insert(key.clone());
            let value = match (self.options.build_args.get(&key), &declaration.default) {
                (Some(given), _) => Some(given.clone()),
                (None, Some(default)) => Some(expand(&self.lexer, source, default, &state.env)?),
                (None, None) => self.global_args.get(&key).map(str::to_string),
            };
            if let Some(value) = &value {
                state.env.set(&key, value);
            }
            history.push(match &value {
                Some(value) => format!("{key}={value}"),
                None => key.clone(),
            });
            state.args.push((key, value));
        }
        Ok(format!("ARG {}", history.join(" ")))
    }

    /// Finds what `--from` or `from=` names: an earlier stage (by name or
    /// index) or an image.
    fn resolve_source(
        &mut self,
        stage: &mut LoweredStage,
        source: &DockerfileSource,
        name: &str,
        pos: Pos,
    ) -> Result<Source, Error> {
        let current = stage.index;
        let index = match name.parse::<i64>() {
            Ok(number) => {
                let count = self.stages.len();
                match usize::try_from(number).ok().filter(|&i| i < count) {
                    Some(i) => Some(i),
                    None => {
                        return Err(source.error(
                            ErrorKind::InvalidStageIndex {
                                index: number.max(0) as usize,
                                count,
                            },
                            pos,
                        ))
                    }
                }
            }
            Err(_) => self.stage_by_name(name),
        };
        let Some(index) = index else {
            // Pinned like a base image, so that the whole build reads one
            // version of it.
            let resolved = self
                .images
                .resolve(name, &stage.state.platform)
                .map_err(|message| {
                    source.error(
                        ErrorKind::BaseImage {
                            reference: name.to_string(),
                            message,
                        },
                        pos,
                    )
                })?;
            return Ok(Source::Image {
                reference: resolved.reference,
            });
        };
        if index == current {
            return Err(source.error(ErrorKind::SelfReference(name.to_string()), pos));
        }
        if index > current {
            return Err(source.error(
                ErrorKind::ForwardStageReference {
                    name: name.to_string(),
                    defined_at: self.stages[index].from_command.start_line,
                },
                pos,
            ));
        }
        self.lower_stage(index)?;
        stage.depends_on.insert(index);
        Ok(Source::Stage { stage: index })
    }

    fn run_step(
        &mut self,
        stage: &mut LoweredStage,
        source: &DockerfileSource,
        command: &Command,
        run: &RunCommand,
    ) -> Result<(RunStep, String), Error> {
        let mut mounts = Vec::with_capacity(run.mounts.len());
        let mut ssh_count = 0;
        let lexer = self.lexer;
        for spec_word in &run.mounts {
            let env = &stage.state.env;
            let mut expand_value =
                |value: &str| lexer.process_word(value, env).map_err(|e| e.to_string());
            let spec = parse_mount(&spec_word.text, &mut expand_value)
                .map_err(|message| source.error(ErrorKind::InvalidMount(message), spec_word.pos))?;
            mounts.push(self.mount(stage, source, spec, spec_word.pos, &mut ssh_count)?);
        }
        let security = run.security.unwrap_or(SecurityMode::Sandbox);
        if security == SecurityMode::Insecure && !self.options.allow_insecure {
            return Err(source.error(ErrorKind::InsecureNotAllowed, command.pos));
        }
        let state = &stage.state;
        let line = &run.command;
        let mut args = line.args.clone();
        let mut inline_files = Vec::new();
        let mut display_suffix = String::new();
        if let (true, Some(first)) = (line.shell_form, line.heredocs.first()) {
            if parse_heredoc_word(&args.join(" ")).is_some() {
                let content = first.effective_content();
                if content.starts_with("#!") {
                    // A script with an interpreter line runs as a file.
                    let path = format!("/dev/pipes/{}", first.name);
                    inline_files.push(InlineFile {
                        path: path.clone(),
                        content,
                        mode: 0o755,
                    });
                    args = vec![path];
                } else {
                    args = vec![content];
                }
                display_suffix = format!(" ({})", summarize_heredoc(&first.content));
            } else {
                let mut full = args.join(" ");
                for heredoc in &line.heredocs {
                    full.push('\n');
                    full.push_str(&heredoc.content);
                    full.push_str(&heredoc.name);
                }
                args = vec![full];
            }
        }
        if line.shell_form {
            args = state.with_shell(&args);
        }
        let proxy_env = self
            .options
            .build_args
            .iter()
            .filter(|(k, _)| is_proxy_arg(k))
            .flat_map(|(k, v)| {
                [
                    format!("{}={v}", k.to_ascii_uppercase()),
                    format!("{}={v}", k.to_ascii_lowercase()),
                ]
            })
            .collect();
        Ok((
            RunStep {
                args,
                env: state.env.to_key_values(),
                proxy_env,
                user: state.config.user.clone(),
                workdir: state.workdir().to_string(),
                network: run.network.unwrap_or(NetworkMode::Default),
                security,
                mounts,
                inline_files,
            },
            display_suffix,
        ))
    }

    fn mount(
        &mut self,
        stage: &mut LoweredStage,
        source: &DockerfileSource,
        spec: MountSpec,
        pos: Pos,
        ssh_count: &mut usize,
    ) -> Result<Mount, Error> {
        let workdir = stage.state.workdir().to_string();
        let target_of = |target: &Option<String>| -> Result<String, Error> {
            let written = target.clone().unwrap_or_default();
            let resolved = paths::resolve(&workdir, &written);
            if resolved == "/" {
                return Err(source.error(ErrorKind::InvalidMountTarget(written), pos));
            }
            Ok(resolved)
        };
        let inner_path = |path: &Option<String>| paths::resolve("/", path.as_deref().unwrap_or(""));
        Ok(match spec.kind {
            MountType::Bind => {
                let target = target_of(&spec.target)?;
                let from = match &spec.from {
                    None => Source::Context,
                    Some(name) => self.resolve_source(stage, source, name, pos)?,
                };
                Mount::Bind {
                    target,
                    from,
                    source: inner_path(&spec.source),
                    readonly: spec.readonly,
                }
            }
            MountType::Cache => {
                let target = target_of(&spec.target)?;
                let from = match &spec.from {
                    None => None,
                    Some(name) => Some(self.resolve_source(stage, source, name, pos)?),
                };
                let id = spec
                    .id
                    .clone()
                    .unwrap_or_else(|| paths::clean(spec.target.as_deref().unwrap_or_default()));
                Mount::Cache {
                    target,
                    id,
                    sharing: match spec.sharing.as_deref() {
                        Some("private") => Sharing::Private,
                        Some("locked") => Sharing::Locked,
                        _ => Sharing::Shared,
                    },
                    from,
                    source: inner_path(&spec.source),
                    readonly: spec.readonly,
                    mode: spec.mode.unwrap_or(0o755),
                    uid: spec.uid.unwrap_or(0),
                    gid: spec.gid.unwrap_or(0),
                }
            }
            MountType::Tmpfs => Mount::Tmpfs {
                target: target_of(&spec.target)?,
                size: spec.size,
            },
            MountType::Secret => {
                let id = match (spec.source.clone().or(spec.id.clone()), &spec.target) {
                    (Some(id), _) => id,
                    (None, Some(target)) => paths::base(target),
                    (None, None) => {
                        return Err(source.error(
                            ErrorKind::InvalidMount(
                                "a secret mount needs an id or a target".to_string(),
                            ),
                            pos,
                        ))
                    }
                };
                let target = match (&spec.target, &spec.env) {
                    (Some(_), _) => Some(target_of(&spec.target)?),
                    (None, None) => Some(format!("/run/secrets/{}", paths::base(&id))),
                    (None, Some(_)) => None,
                };
                Mount::Secret {
                    id,
                    target,
                    env: spec.env,
                    required: spec.required,
                    mode: spec.mode.unwrap_or(0o400),
                    uid: spec.uid.unwrap_or(0),
                    gid: spec.gid.unwrap_or(0),
                }
            }
            MountType::Ssh => {
                let target = match &spec.target {
                    Some(_) => target_of(&spec.target)?,
                    None => format!("/run/buildkit/ssh_agent.{ssh_count}"),
                };
                *ssh_count += 1;
                Mount::Ssh {
                    id: spec.id.unwrap_or_else(|| "default".to_string()),
                    target,
                    required: spec.required,
                    mode: spec.mode.unwrap_or(0o600),
                    uid: spec.uid.unwrap_or(0),
                    gid: spec.gid.unwrap_or(0),
                }
            }
        })
    }

    fn copy_step(
        &mut self,
        stage: &mut LoweredStage,
        source: &DockerfileSource,
        command: &Command,
        copy: &CopyCommand,
    ) -> Result<(CopyStep, String), Error> {
        let keyword = command.keyword;
        let expanded = ExpandedCopy::new(&self.lexer, source, copy, &stage.state.env)?;
        let from = match &copy.from {
            None => Source::Context,
            Some(name) if name.text.contains('$') => {
                return Err(source.error(ErrorKind::FromWithVariable(name.text.clone()), name.pos))
            }
            Some(name) => self.resolve_source(stage, source, &name.text, name.pos)?,
        };
        let chmod = match (&copy.chmod, &expanded.chmod) {
            (Some(flag), Some(text)) => Some(
                u32::from_str_radix(text, 8)
                    .ok()
                    .filter(|&mode| mode <= 0o7777)
                    .ok_or_else(|| source.error(ErrorKind::InvalidChmod(text.clone()), flag.pos))?,
            ),
            _ => None,
        };
        let mut history = String::from(keyword.as_str());
        if copy.parents {
            history.push_str(" --parents");
        }
        if let Some(chown) = &expanded.chown {
            history.push_str(&format!(" --chown={chown}"));
        }
        if let Some(chmod) = &expanded.chmod {
            history.push_str(&format!(" --chmod={chmod}"));
        }
        let mut sources = Vec::with_capacity(expanded.sources.len() + expanded.inline.len());
        for (text, pos) in expanded.sources {
            history.push(' ');
            history.push_str(&text);
            if is_http_url(&text) {
                if !copy.is_add {
                    return Err(source.error(ErrorKind::UrlInCopy(keyword), pos));
                }
                sources.push(CopySource::Url(text));
            } else if is_git_url(&text) {
                if !copy.is_add {
                    return Err(source.error(ErrorKind::GitInCopy(keyword), pos));
                }
                sources.push(CopySource::Git(text));
            } else {
                if from == Source::Context && paths::escapes_root(&text) {
                    return Err(source.error(ErrorKind::SourceOutsideContext(text), pos));
                }
                sources.push(CopySource::Path(text));
            }
        }
        for file in expanded.inline {
            history.push_str(&format!(" <<{}", file.path));
            sources.push(CopySource::Inline(file));
        }
        if let Some(checksum) = &expanded.checksum {
            let flag_pos = copy.checksum.as_ref().map_or(command.pos, |w| w.pos);
            if !matches!(sources.as_slice(), [CopySource::Url(_)]) {
                return Err(source.error(ErrorKind::ChecksumNeedsOneUrl, flag_pos));
            }
            if !valid_digest(checksum) {
                return Err(source.error(ErrorKind::InvalidChecksum(checksum.clone()), flag_pos));
            }
        }
        history.push_str(&format!(" {} # buildkit", expanded.dest));
        let step = CopyStep {
            from,
            sources,
            dest: paths::destination(stage.state.workdir(), &expanded.dest),
            chown: expanded.chown,
            chmod,
            link: copy.link,
            parents: copy.parents,
            exclude: expanded.exclude,
            unpack: copy.is_add,
            checksum: expanded.checksum,
            keep_git_dir: copy.keep_git_dir,
        };
        Ok((step, history))
    }
}

/// The values of a COPY or ADD with the stage's variables expanded.
struct ExpandedCopy {
    sources: Vec<(String, Pos)>,
    inline: Vec<InlineFile>,
    dest: String,
    chown: Option<String>,
    chmod: Option<String>,
    checksum: Option<String>,
    exclude: Vec<String>,
}

impl ExpandedCopy {
    fn new(
        lexer: &Lexer,
        source: &DockerfileSource,
        copy: &CopyCommand,
        env: &EnvList,
    ) -> Result<Self, Error> {
        let word = |w: &Word| expand(lexer, source, w, env);
        let optional = |w: &Option<Word>| -> Result<Option<String>, Error> {
            match w {
                None => Ok(None),
                Some(w) => Ok(Some(word(w)?).filter(|text| !text.is_empty())),
            }
        };
        let mut inline = Vec::with_capacity(copy.inline_sources.len());
        for heredoc in &copy.inline_sources {
            let mut content = heredoc.effective_content();
            if heredoc.expand {
                // Heredoc content keeps its quotes: only variables expand.
                let mut raw = Lexer::new('\\');
                raw.skip_process_quotes = true;
                content = raw.process_word(&content, env).map_err(|error| {
                    source.error(
                        ErrorKind::Expansion {
                            word: format!("<<{}", heredoc.name),
                            error,
                        },
                        copy.dest.pos,
                    )
                })?;
            }
            inline.push(InlineFile {
                path: heredoc.name.clone(),
                content,
                mode: 0o644,
            });
        }
        Ok(ExpandedCopy {
            sources: copy
                .sources
                .iter()
                .map(|w| Ok((word(w)?, w.pos)))
                .collect::<Result<_, Error>>()?,
            inline,
            dest: word(&copy.dest)?,
            chown: optional(&copy.chown)?,
            chmod: optional(&copy.chmod)?,
            checksum: optional(&copy.checksum)?,
            exclude: copy.exclude.iter().map(&word).collect::<Result<_, _>>()?,
        })
    }
}

/// FROM starts a stage, so it only reaches a stage's instructions as an
/// ONBUILD trigger, where it is not allowed.
fn from_inside_stage(source: &DockerfileSource, command: &Command) -> Error {
    source.error(ErrorKind::OnbuildTrigger(Keyword::From), command.pos)
}

fn expand(
    lexer: &Lexer,
    source: &DockerfileSource,
    word: &Word,
    env: &EnvList,
) -> Result<String, Error> {
    lexer.process_word(&word.text, env).map_err(|error| {
        source.error(
            ErrorKind::Expansion {
                word: word.text.clone(),
                error,
            },
            word.pos,
        )
    })
}

/// ENV and LABEL expand every pair with the variables as they were before
/// the instruction, then apply them.
fn expand_pairs(
    word: &dyn Fn(&Word) -> Result<String, Error>,
    pairs: &[Pair],
) -> Result<Vec<(String, String)>, Error> {
    pairs
        .iter()
        .map(|pair| Ok((word(&pair.key)?, word(&pair.value)?)))
        .collect()
}

fn shell_or_exec(state: &StageState, line: &CommandLine) -> Vec<String> {
    if line.shell_form {
        state.with_shell(&line.args)
    } else {
        line.args.clone()
    }
}

fn healthcheck_config(check: Option<&HealthcheckCommand>) -> Healthcheck {
    let Some(check) = check else {
        return Healthcheck {
            test: vec!["NONE".to_string()],
            ..Healthcheck::default()
        };
    };
    let mut test = vec![if check.command.shell_form {
        "CMD-SHELL"
    } else {
        "CMD"
    }
    .to_string()];
    if check.command.shell_form {
        test.push(check.command.args.join(" "));
    } else {
        test.extend(check.command.args.iter().cloned());
    }
    Healthcheck {
        test,
        interval: check.interval,
        timeout: check.timeout,
        start_period: check.start_period,
        start_interval: check.start_interval,
        retries: check.retries,
    }
}

/// The instruction as progress output shows it: variables that are set are
/// expanded, everything else is left as written.
fn display_text(lexer: &Lexer, text: &str, env: &EnvList) -> String {
    let mut shown = if text.contains('$') {
        let mut display = *lexer;
        display.raw_quotes = true;
        display.raw_escapes = true;
        display.skip_unset_env = true;
        display
            .process_word(text, env)
            .unwrap_or_else(|_| text.to_string())
    } else {
        text.to_string()
    };
    let name_end = shown.find(' ').unwrap_or(shown.len());
    shown[..name_end].make_ascii_uppercase();
    shown
}

fn summarize_heredoc(content: &str) -> String {
    let trimmed = content.trim();
    let mut lines = trimmed.lines();
    let first = lines.next().unwrap_or_default().to_string();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first
    }
}

/// BuildKit's history text for RUN: the ARGs in scope with their values,
/// counted, then the command.
fn run_history(args: &[String], declared: &[(String, Option<String>)], env: &EnvList) -> String {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (key, value) in declared {
        let value = env
            .get(key)
            .map(str::to_string)
            .unwrap_or_else(|| value.clone().unwrap_or_default());
        match pairs.iter_mut().find(|(k, _)| k == key) {
            Some(existing) => existing.1 = value,
            None => pairs.push((key.clone(), value)),
        }
    }
    let mut parts = Vec::new();
    if !pairs.is_empty() {
        parts.push(format!("|{}", pairs.len()));
        parts.extend(pairs.into_iter().map(|(k, v)| format!("{k}={v}")));
    }
    parts.extend(args.iter().cloned());
    parts.join(" ")
}

fn is_http_url(text: &str) -> bool {
    (text.starts_with("http://") || text.starts_with("https://")) && !is_git_url(text)
}

/// Git sources as BuildKit recognises them: git://, ssh://, git@host:path,
/// and http(s) URLs whose path ends in `.git`.
fn is_git_url(text: &str) -> bool {
    if text.starts_with("git://") || text.starts_with("ssh://") || text.starts_with("git@") {
        return true;
    }
    let Some(rest) = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
    else {
        return false;
    };
    let path = rest.split(['#', '?']).next().unwrap_or_default();
    path.contains('/') && path.ends_with(".git")
}

fn valid_digest(text: &str) -> bool {
    let Some((algorithm, hex)) = text.split_once(':') else {
        return false;
    };
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == length
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses one EXPOSE value: `port[/proto]` or `start-end[/proto]`, with
/// an optional `[ip:]host:` prefix that EXPOSE ignores.
fn parse_port(spec: &str) -> Result<Vec<String>, String> {
    let container = spec.rsplit_once(':').map_or(spec, |(_, c)| c);
    let (range, proto) = match container.split_once('/') {
        Some((range, "")) => (range, "tcp".to_string()),
        Some((range, proto)) => (range, proto.to_ascii_lowercase()),
        None => (container, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid protocol {proto:?}: use tcp, udp or sctp"));
    }
    let number = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| format!("{s:?} is not a port number (0-65535)"))
    };
    let (start, end) = match range.split_once('-') {
        Some((start, end)) => (number(start)?, number(end)?),
        None => {
            let port = number(range)?;
            (port, port)
        }
    };
    if end < start {
        return Err(format!("the range {range} ends before it starts"));
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// Signal names (with or without SIG) and numbers a container can be
/// stopped with.
fn valid_signal(signal: &str) -> bool {
    if let Ok(number) = signal.parse::<u32>() {
        return number > 0;
    }
    let upper = signal.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
        "RTMIN", "RTMAX",
    ];
    if NAMES.contains(&name) {
        return true;
    }
    let realtime = |prefix: &str, sign: char| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(sign))
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| (1..=15).contains(&n))
    };
    realtime("RTMIN", '+') || realtime("RTMAX", '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_port("80"), Ok(vec!["80/tcp".to_string()]));
        assert_eq!(parse_port("53/UDP"), Ok(vec!["53/udp".to_string()]));
        assert_eq!(parse_port("8000-8002/tcp").map(|p| p.len()), Ok(3));
        assert_eq!(
            parse_port("127.0.0.1:8080:80"),
            Ok(vec!["80/tcp".to_string()])
        );
        assert!(parse_port("80/icmp").is_err());
        assert!(parse_port("http").is_err());
        assert!(parse_port("70000").is_err());
        assert!(parse_port("90-80").is_err());
    }

    #[test]
    fn signals() {
        for ok in ["SIGTERM", "term", "9", "SIGRTMIN+3", "RTMAX-1", "sigusr1"] {
            assert!(valid_signal(ok), "{ok}");
        }
        for bad in ["SIGFOO", "0", "-1", "RTMIN+16", ""] {
            assert!(!valid_signal(bad), "{bad}");
        }
    }

    #[test]
    fn git_and_http_sources() {
        assert!(is_git_url("https://github.com/moby/buildkit.git#v0.12"));
        assert!(is_git_url("git@github.com:moby/buildkit.git"));
        assert!(is_git_url("git://host/repo"));
        assert!(!is_git_url("https://example.com/file.tar.gz"));
        assert!(is_http_url("https://example.com/file.tar.gz"));
        assert!(!is_http_url("https://example.com/repo.git"));
        assert!(!is_http_url("github.com/moby/buildkit"));
    }

    #[test]
    fn digests() {
        assert!(valid_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!valid_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(!valid_digest("sha256:abc"));
        assert!(!valid_digest("md5:abc"));
    }

    #[test]
    fn run_history_lists_args_in_scope() {
        let env = EnvList::from_key_values(["A=from-env"]);
        let declared = vec![
            ("A".to_string(), Some("x".to_string())),
            ("B".to_string(), None),
            ("A".to_string(), Some("y".to_string())),
        ];
        let args = vec!["/bin/sh".to_string(), "-c".to_string(), "make".to_string()];
        assert_eq!(
            run_history(&args, &declared, &env),
            "|2 A=from-env B= /bin/sh -c make"
        );
        assert_eq!(run_history(&args, &[], &env), "/bin/sh -c make");
    }

    #[test]
    fn display_expands_known_variables_only() {
        let lexer = Lexer::new('\\');
        let env = EnvList::from_key_values(["V=1.2"]);
        assert_eq!(
            display_text(&lexer, "run echo $V $UNSET \"q\"", &env),
            "RUN echo 1.2 $UNSET \"q\""
        );
    }
}
