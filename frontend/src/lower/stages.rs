//! The walk over the Dockerfile's stages: splitting it at FROM, build
//! arguments and their scopes (global ARGs, ARG in a stage), stage
//! references checked and resolved, each stage lowered from its base and
//! its base's ONBUILD triggers, and each instruction sent to what lowers it.

use std::collections::{BTreeMap, BTreeSet};

use crate::ast::Source as DockerfileSource;
use crate::error::{Error, ErrorKind, Pos};
use crate::graph::{Action, Base, CopyStep, ImageConfig, Source, Stage, Step};
use crate::instruction::{self, ArgDeclaration, Command, CommandKind, FromCommand};
use crate::keyword::Keyword;
use crate::mount::literal_from;
use crate::parser;
use crate::platform::Platform;
use crate::shell::{EnvList, Environment, Lexer};
use crate::suggest;

use super::copy::lower_copy;
use super::expand::Expander;
use super::metadata;
use super::options::{is_proxy_arg, BaseImages, LowerOptions, NamedContext};
use super::run::lower_run;
use super::state::{LoweredStage, StageState};

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

/// One Dockerfile being lowered for one set of options. Stages are lowered
/// when a stage that is built needs them, starting with the target.
pub(super) struct Lowering<'a> {
    source: &'a DockerfileSource,
    options: &'a LowerOptions,
    images: &'a mut dyn BaseImages,
    lexer: Lexer,
    stages: Vec<DockerfileStage<'a>>,
    global_args: EnvList,
    /// Build arguments that an ARG declared.
    consumed_args: BTreeSet<String>,
    /// By Dockerfile index, the stages lowered so far.
    lowered: Vec<Option<LoweredStage>>,
    /// By Dockerfile index, the stages being lowered: one that is asked for
    /// again refers to itself.
    in_progress: Vec<bool>,
}

impl<'a> Lowering<'a> {
    /// Splits the Dockerfile into stages, sets the global build arguments
    /// and checks the stage references that are written literally.
    pub(super) fn new(
        source: &'a DockerfileSource,
        lexer: Lexer,
        commands: &'a [Command],
        options: &'a LowerOptions,
        images: &'a mut dyn BaseImages,
    ) -> Result<Self, Error> {
        let (meta_args, stages) = split_stages(source, commands)?;
        let stage_count = stages.len();
        let mut lowering = Lowering {
            source,
            options,
            images,
            lexer,
            stages,
            global_args: EnvList::new(),
            consumed_args: BTreeSet::new(),
            lowered: vec![None; stage_count],
            in_progress: vec![false; stage_count],
        };
        lowering.set_global_args(&meta_args)?;
        lowering.check_forward_references()?;
        Ok(lowering)
    }

    /// The value of a global build argument.
    pub(super) fn global_arg(&self, key: &str) -> Option<&str> {
        self.global_args.get(key)
    }

    /// Build arguments given by the caller that no ARG declares.
    pub(super) fn unused_build_args(&self) -> Vec<&str> {
        self.options
            .build_args
            .keys()
            .filter(|k| {
                !self.consumed_args.contains(k.as_str())
                    && !is_proxy_arg(k)
                    // The builder itself takes these: file times and
                    // dates, and its own options (BUILDKIT_SANDBOX_HOSTNAME).
                    && k.as_str() != "SOURCE_DATE_EPOCH"
                    && !k.starts_with("BUILDKIT_")
            })
            .map(String::as_str)
            .collect()
    }

    /// The stages lowered so far, as the graph holds them, and the graph id
    /// of the stage with Dockerfile index `target`.
    pub(super) fn into_graph_stages(self, target: usize) -> (Vec<Stage>, usize) {
        let lowered: Vec<(usize, LoweredStage)> = self
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
        let stages = lowered
            .into_iter()
            .map(|(_, stage)| stage.into_graph_stage(&ids))
            .collect();
        (stages, ids[&target])
    }

    fn expander<'s>(&self, source: &'s DockerfileSource) -> Expander<'s> {
        Expander {
            lexer: self.lexer,
            source,
        }
    }

    fn set_global_args(&mut self, meta_args: &[&ArgDeclaration]) -> Result<(), Error> {
        let defaults = self
            .options
            .predefined_args(self.stages.last().and_then(|s| s.name()));
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
                (None, Some(default)) => Some(
                    self.expander(self.source)
                        .word(default, &self.global_args)?,
                ),
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
            .find_map(|name| suggest::closest(name, &known))
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

    pub(super) fn target_index(&self) -> Result<usize, Error> {
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

    pub(super) fn lower_stage(&mut self, index: usize) -> Result<(), Error> {
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
        let (mut lowered, triggers, replaced) = self.start_stage(index, &stage)?;
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
        // A stage that a named context replaces is that context, whatever
        // its instructions say (as in BuildKit).
        let commands = if replaced {
            &[][..]
        } else {
            &stage.commands[..]
        };
        for command in commands {
            let step = self.dispatch(&mut lowered, self.source, command, command.pos)?;
            lowered.steps.push(step);
        }
        self.lowered[index] = Some(lowered);
        self.in_progress[index] = false;
        Ok(())
    }

    /// Resolves FROM: the base's state, the ONBUILD triggers to run, and
    /// whether a named context replaces the stage.
    fn start_stage(
        &mut self,
        index: usize,
        stage: &DockerfileStage<'_>,
    ) -> Result<(LoweredStage, Vec<String>, bool), Error> {
        let from = stage.from;
        let reference = self
            .expander(self.source)
            .word(&from.image, &self.global_args)?;
        if reference.is_empty() {
            return Err(self.source.error(
                ErrorKind::EmptyBaseName(from.image.text.clone()),
                from.image.pos,
            ));
        }
        let explicit_platform = match &from.platform {
            None => None,
            Some(word) => {
                let text = self.expander(self.source).word(word, &self.global_args)?;
                if text.is_empty() {
                    return Err(self.source.error(
                        ErrorKind::EmptyPlatform {
                            expression: word.text.clone(),
                            suggestion: self.misspelt_variable(&word.text),
                        },
                        word.pos,
                    ));
                }
                let platform = Platform::parse(&text).map_err(|mut reason| {
                    if text != word.text {
                        reason = format!("{reason}, from the expression {}", word.text);
                        if let Some(variable) = self.misspelt_variable(&word.text) {
                            reason = format!("{reason} (did you mean {variable}?)");
                        }
                    }
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
        let context_platform = explicit_platform
            .clone()
            .unwrap_or_else(|| self.options.target_platform.clone());
        let replacement = match stage.name() {
            Some(name) => self
                .named_context(name, &context_platform, from.image.pos)?
                .map(|context| (name.to_string(), context)),
            None => None,
        };
        let replaced = replacement.is_some();
        let mut first_steps = Vec::new();
        let (base, mut state) = if let Some((name, context)) = replacement {
            let (base, state, steps) =
                self.start_from_context(&name, context, context_platform, stage);
            first_steps = steps;
            (base, state)
        } else {
            match self.stage_by_name(&reference).filter(|&j| j != index) {
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
                    let platform = context_platform.clone();
                    let named = if reference == "scratch" {
                        None
                    } else {
                        self.named_context(&reference, &platform, from.image.pos)?
                    };
                    if let Some(context) = named {
                        let (base, state, steps) =
                            self.start_from_context(&reference, context, platform, stage);
                        first_steps = steps;
                        (base, state)
                    } else {
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
                        (base, image_state(config, platform))
                    }
                }
            }
        };
        if let Some(platform) = explicit_platform {
            state.platform = platform;
        }
        state.default_path();
        let mut triggers = std::mem::take(&mut state.config.on_build);
        if replaced {
            // BuildKit runs no trigger in a stage that a context replaces.
            triggers.clear();
        }
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
                steps: first_steps,
                depends_on,
                cmd_set: false,
            },
            triggers,
            replaced,
        ))
    }

    /// The build context given for `name`, if any.
    fn named_context(
        &mut self,
        name: &str,
        platform: &Platform,
        pos: Pos,
    ) -> Result<Option<NamedContext>, Error> {
        self.images
            .named_context(name, platform)
            .map_err(|message| {
                self.source.error(
                    ErrorKind::NamedContext {
                        name: name.to_string(),
                        message,
                    },
                    pos,
                )
            })
    }

    /// A stage's base, state and first steps when it starts from the build
    /// context given as `name`: an image as FROM would give it, or a
    /// scratch stage holding a context's files, as BuildKit makes one.
    fn start_from_context(
        &self,
        name: &str,
        context: NamedContext,
        platform: Platform,
        stage: &DockerfileStage<'_>,
    ) -> (Base, StageState, Vec<Step>) {
        let scratch = || ImageConfig {
            working_dir: "/".to_string(),
            ..ImageConfig::default()
        };
        match context {
            NamedContext::Image(resolved) => {
                let resolved = *resolved;
                (
                    Base::Image {
                        reference: resolved.reference,
                    },
                    image_state(resolved.config, platform),
                    Vec::new(),
                )
            }
            NamedContext::Scratch => (Base::Scratch, image_state(scratch(), platform), Vec::new()),
            NamedContext::Files { name: context_name } => {
                let copy =
                    CopyStep::plain(Source::NamedContext { name: context_name }, &["/"], "/");
                let step = Step {
                    location: stage.from_command.pos,
                    instruction: format!("FROM {name}"),
                    from_onbuild: false,
                    history: Some(format!("FROM {name} (build context)")),
                    numbered: true,
                    action: Action::Copy(copy),
                };
                (Base::Scratch, image_state(scratch(), platform), vec![step])
            }
        }
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

    /// Lowers one instruction of `stage` into a step. `source` is the text
    /// it comes from (the Dockerfile or an ONBUILD trigger); `location` is
    /// where the step is shown to come from.
    fn dispatch(
        &mut self,
        stage: &mut LoweredStage,
        source: &DockerfileSource,
        command: &Command,
        location: Pos,
    ) -> Result<Step, Error> {
        let expander = self.expander(source);
        let mut step = Step {
            location,
            instruction: expander.display_text(&command.text, &stage.state.env),
            from_onbuild: false,
            history: None,
            numbered: matches!(
                command.keyword,
                Keyword::Add | Keyword::Copy | Keyword::Run | Keyword::Workdir
            ),
            action: Action::Metadata,
        };
        let options = self.options;
        let state = &mut stage.state;
        let history = match &command.kind {
            CommandKind::From(_) => return Err(from_inside_stage(source, command)),
            CommandKind::Arg(declarations) => {
                Some(self.declare_args(state, source, declarations)?)
            }
            CommandKind::Run(run) => Some(lower_run(
                &expander,
                options,
                stage,
                command,
                run,
                &mut |stage: &mut LoweredStage, name: &str, pos: Pos| {
                    self.resolve_source(stage, source, name, pos)
                },
                &mut step,
            )?),
            CommandKind::Copy(copy) => {
                let (copy_step, history) = lower_copy(
                    &expander,
                    stage,
                    command,
                    copy,
                    &mut |stage: &mut LoweredStage, name: &str, pos: Pos| {
                        self.resolve_source(stage, source, name, pos)
                    },
                )?;
                step.action = Action::Copy(copy_step);
                Some(history)
            }
            CommandKind::Env(pairs) => Some(metadata::env(&expander, state, pairs)?),
            CommandKind::Label(pairs) => Some(metadata::label(&expander, state, pairs)?),
            CommandKind::Maintainer(name) => Some(metadata::maintainer(state, name)),
            CommandKind::Workdir(path) => {
                let (history, mkdir) = metadata::workdir(&expander, state, path)?;
                if let Some(mkdir) = mkdir {
                    step.action = Action::Mkdir(mkdir);
                }
                Some(history)
            }
            CommandKind::User(user) => Some(metadata::user(&expander, state, user)?),
            CommandKind::Volume(volumes) => Some(metadata::volume(&expander, state, volumes)?),
            CommandKind::Expose(ports) => Some(metadata::expose(&expander, state, ports)?),
            CommandKind::StopSignal(signal) => {
                Some(metadata::stop_signal(&expander, state, signal)?)
            }
            CommandKind::Shell(shell) => Some(metadata::shell(state, shell)),
            CommandKind::Cmd(line) => Some(metadata::cmd(stage, line)),
            CommandKind::Entrypoint(line) => Some(metadata::entrypoint(stage, line)),
            CommandKind::Healthcheck(check) => Some(metadata::healthcheck(state, check.as_deref())),
            CommandKind::Onbuild(expression) => {
                metadata::onbuild(state, expression);
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
                (None, Some(default)) => Some(self.expander(source).word(default, &state.env)?),
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
        if index.is_none() {
            let platform = stage.state.platform.clone();
            match self.named_context(name, &platform, pos)? {
                Some(NamedContext::Image(resolved)) => {
                    return Ok(Source::Image {
                        reference: resolved.reference,
                    })
                }
                Some(NamedContext::Files { name }) => return Ok(Source::NamedContext { name }),
                Some(NamedContext::Scratch) => {
                    return Err(source.error(
                        ErrorKind::NamedContext {
                            name: name.to_string(),
                            message: "it is an empty image (scratch): there are no files to read"
                                .to_string(),
                        },
                        pos,
                    ))
                }
                None => {}
            }
        }
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
}

/// The state of a stage that starts from an image with `config`.
fn image_state(config: ImageConfig, platform: Platform) -> StageState {
    StageState {
        env: EnvList::from_key_values(&config.env),
        image_env: EnvList::from_key_values(&config.env),
        config,
        args: Vec::new(),
        platform,
        author: None,
    }
}

/// FROM starts a stage, so it only reaches a stage's instructions as an
/// ONBUILD trigger, where it is not allowed.
fn from_inside_stage(source: &DockerfileSource, command: &Command) -> Error {
    source.error(ErrorKind::OnbuildTrigger(Keyword::From), command.pos)
}
