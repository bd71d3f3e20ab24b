//! The walk over a Dockerfile that finds where BuildKit's rules are broken.
//! Rules about the file as written look at every instruction; rules about
//! what a stage does follow each stage's environment (ARG, ENV, the base
//! image's or base stage's), as the build would see it.

use std::cell::RefCell;
use std::collections::BTreeSet;

use crate::ast::{Args, Dockerfile, Instruction, Source};
use crate::ignore::DockerIgnore;
use crate::instruction::{command, Command, CommandKind, FromCommand};
use crate::keyword::Keyword;
use crate::lower::{BaseImages, LowerOptions, DEFAULT_PATH};
use crate::mount::literal_from;
use crate::paths;
use crate::platform::Platform;
use crate::shell::{EnvList, Environment, Lexer};
use crate::suggest;

use super::{comments_above, Finding, Rule, Scope};

/// Variables that BuildKit uses itself and never puts in a step's
/// environment.
const NON_ENV_ARGS: [&str; 2] = ["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// An environment that notes which variables an expansion found and which
/// it looked for in vain.
struct Recording<'e> {
    env: &'e EnvList,
    found: RefCell<Vec<String>>,
    missing: RefCell<Vec<String>>,
}

impl<'e> Recording<'e> {
    fn new(env: &'e EnvList) -> Self {
        Recording {
            env,
            found: RefCell::new(Vec::new()),
            missing: RefCell::new(Vec::new()),
        }
    }
}

impl Environment for Recording<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        let value = self.env.get(name);
        let list = if value.is_some() {
            &self.found
        } else {
            &self.missing
        };
        let mut list = list.borrow_mut();
        if !list.iter().any(|seen| seen == name) {
            list.push(name.to_string());
        }
        value
    }
}

/// The result of expanding a word: its value (the word itself when it does
/// not expand), and the variables it used and lacked.
struct Expanded {
    value: String,
    found: Vec<String>,
    missing: Vec<String>,
}

fn expand(lexer: &Lexer, word: &str, env: &EnvList) -> Expanded {
    let recording = Recording::new(env);
    let value = lexer
        .process_word(word, &recording)
        .unwrap_or_else(|_| word.to_string());
    Expanded {
        value,
        found: recording.found.into_inner(),
        missing: recording.missing.into_inner(),
    }
}

/// A stage: its FROM and the instructions after it.
struct Stage<'a> {
    from_instruction: &'a Instruction,
    from: FromCommand,
    commands: Vec<(&'a Instruction, Command)>,
}

impl Stage<'_> {
    fn name(&self) -> Option<&str> {
        self.from.name.as_ref().map(|word| word.text.as_str())
    }
}

/// What a stage has set so far, as later instructions and stages built on
/// it see it.
#[derive(Clone)]
struct StageState {
    env: EnvList,
    /// False when the base image could not be looked at: its environment
    /// is unknown, so no variable can be called undefined.
    env_known: bool,
    /// ARGs declared in the stage, with or without a value.
    declared_args: BTreeSet<String>,
    shell_set: bool,
    workdir_set: bool,
}

struct Checker<'a> {
    source: &'a Source,
    lexer: Lexer,
    options: &'a LowerOptions,
    findings: Vec<Finding>,
}

impl Checker<'_> {
    fn report(&mut self, rule: Rule, message: String, line: usize, instruction_line: usize) {
        self.findings.push(Finding {
            rule,
            message,
            line,
            instruction_line,
        });
    }
}

pub(super) fn run(
    dockerfile: &Dockerfile,
    options: &LowerOptions,
    scope: Scope,
    ignore: &DockerIgnore,
    images: &mut dyn BaseImages,
) -> Vec<Finding> {
    let source = &dockerfile.source;
    let mut checker = Checker {
        source,
        lexer: Lexer::new(dockerfile.directives.escape),
        options,
        findings: Vec::new(),
    };
    // An instruction that does not make sense ends the checks there: the
    // build stops at it with its own error, after what was found before.
    let mut typed = Vec::new();
    for instruction in &dockerfile.instructions {
        match command(source, instruction) {
            Ok(command) => typed.push((instruction, command)),
            Err(_) => break,
        }
    }
    for (instruction, command) in &typed {
        checker.written_form(instruction, command);
    }
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for (instruction, command) in typed {
        match (&command.kind, stages.last_mut()) {
            (CommandKind::From(from), _) => stages.push(Stage {
                from_instruction: instruction,
                from: from.clone(),
                commands: Vec::new(),
            }),
            (CommandKind::Arg(declarations), None) => global_args.extend(declarations.clone()),
            (_, Some(stage)) => stage.commands.push((instruction, command)),
            (_, None) => {}
        }
    }
    checker.instruction_casing(&stages);
    checker.stage_names(&stages);
    checker.default_base_names(&stages, &global_args);
    let global_env = checker.global_env(&global_args, &stages, true);
    let declared_globals: BTreeSet<String> = global_env
        .iter()
        .map(|(key, _)| key.to_string())
        .chain(global_args.iter().map(|arg| arg.name.text.clone()))
        .collect();
    for stage in &stages {
        checker.check_from_line(stage, &global_env, &declared_globals);
    }
    let in_scope = match scope {
        Scope::AllStages => vec![true; stages.len()],
        Scope::Target => needed_stages(&checker, &stages, &global_env),
    };
    let mut states: Vec<Option<StageState>> = vec![None; stages.len()];
    for (index, stage) in stages.iter().enumerate() {
        if !in_scope[index] {
            continue;
        }
        let base = stage_index(
            &stages,
            &expand(&checker.lexer, &stage.from.image.text, &global_env).value,
        );
        let state = match base.filter(|&base| base < index) {
            Some(base) => states[base].clone().unwrap_or_else(unknown_state),
            None => checker.image_state(stage, &global_env, images),
        };
        let state = checker.dispatch(stage, state, &global_env, ignore);
        states[index] = Some(state);
    }
    checker.findings
}

fn unknown_state() -> StageState {
    StageState {
        env: EnvList::new(),
        env_known: false,
        declared_args: BTreeSet::new(),
        shell_set: false,
        workdir_set: false,
    }
}

/// The index of the stage a FROM or `--from` value names: its name, or its
/// position.
fn stage_index(stages: &[Stage], reference: &str) -> Option<usize> {
    let lower = reference.to_lowercase();
    stages
        .iter()
        .position(|stage| stage.name() == Some(lower.as_str()))
        .or_else(|| {
            reference
                .parse::<usize>()
                .ok()
                .filter(|&index| index < stages.len())
        })
}

/// Which stages a build of the target needs: the target, and the stages it
/// builds on, copies from or mounts, recursively.
fn needed_stages(checker: &Checker, stages: &[Stage], global_env: &EnvList) -> Vec<bool> {
    let mut needed = vec![false; stages.len()];
    let target = match &checker.options.target {
        Some(name) => stage_index(stages, name),
        None => stages.len().checked_sub(1),
    };
    let mut pending: Vec<usize> = target.into_iter().collect();
    while let Some(index) = pending.pop() {
        if std::mem::replace(&mut needed[index], true) {
            continue;
        }
        let stage = &stages[index];
        let mut references = vec![expand(&checker.lexer, &stage.from.image.text, global_env).value];
        for (_, command) in &stage.commands {
            match &command.kind {
                CommandKind::Copy(copy) => {
                    if let Some(from) = &copy.from {
                        references.push(expand(&checker.lexer, &from.text, global_env).value);
                    }
                }
                CommandKind::Run(run) => {
                    references.extend(run.mounts.iter().filter_map(|m| literal_from(&m.text)));
                }
                _ => {}
            }
        }
        for reference in references {
            if let Some(dependency) = stage_index(stages, &reference).filter(|&d| d < index) {
                pending.push(dependency);
            }
        }
    }
    needed
}

fn is_self_consistent(name: &str) -> bool {
    name == name.to_lowercase() || name == name.to_uppercase()
}

impl Checker<'_> {
    /// Rules about an instruction as written, whatever stage it is in.
    fn written_form(&mut self, instruction: &Instruction, command: &Command) {
        let line = instruction.start_line;
        if instruction.empty_continuation {
            self.report(
                Rule::NoEmptyContinuation,
                "Empty continuation line".to_string(),
                instruction.end_line,
                line,
            );
        }
        match &command.kind {
            CommandKind::Maintainer(_) => self.report(
                Rule::MaintainerDeprecated,
                "Maintainer instruction is deprecated in favor of using label".to_string(),
                line,
                line,
            ),
            CommandKind::From(from) => {
                if let Args::Words(words) = &instruction.args {
                    if let [_, as_word, name] = words.as_slice() {
                        if name.text != name.text.to_lowercase() {
                            self.report(
                                Rule::StageNameCasing,
                                format!("Stage name '{}' should be lowercase", name.text),
                                line,
                                line,
                            );
                        }
                        let from_word = &instruction.name.text;
                        let from_lower = *from_word == from_word.to_lowercase();
                        let from_upper = *from_word == from_word.to_uppercase();
                        let mismatch = (from_lower && as_word.text != as_word.text.to_lowercase())
                            || (!from_lower
                                && from_upper
                                && as_word.text != as_word.text.to_uppercase());
                        if mismatch {
                            self.report(
                                Rule::FromAsCasing,
                                format!(
                                    "'{}' and '{}' keywords' casing do not match",
                                    as_word.text, from_word
                                ),
                                line,
                                line,
                            );
                        }
                    }
                }
                if let Some(name) = &from.name {
                    self.definition_description("FROM", &[name.text.as_str()], line);
                }
            }
            CommandKind::Arg(declarations) => {
                let names: Vec<&str> = declarations
                    .iter()
                    .map(|arg| arg.name.text.as_str())
                    .collect();
                self.definition_description("ARG", &names, line);
            }
            _ => {}
        }
    }

    /// InvalidDefinitionDescription: the comment just above an ARG or a
    /// named FROM should start with the name it describes.
    fn definition_description(&mut self, instruction: &str, names: &[&str], line: usize) {
        let comments = comments_above(self.source, line);
        let Some(last) = comments.last() else {
            return;
        };
        let first_word = last.split(' ').next().unwrap_or_default();
        if names.is_empty() || names.contains(&first_word) {
            return;
        }
        let example = if names.len() > 1 {
            "<arg_key>"
        } else {
            names[0]
        };
        self.report(
            Rule::InvalidDefinitionDescription,
            format!(
                "Comment for {instruction} should follow the format: `# {example} <description>`"
            ),
            line,
            line,
        );
    }

    /// ConsistentInstructionCasing: every instruction of the stages cased
    /// like most of them (global ARGs do not count, as in BuildKit).
    fn instruction_casing(&mut self, stages: &[Stage]) {
        let names: Vec<(&str, usize)> = stages
            .iter()
            .flat_map(|stage| {
                std::iter::once(stage.from_instruction)
                    .chain(stage.commands.iter().map(|(instruction, _)| *instruction))
            })
            .map(|instruction| (instruction.name.text.as_str(), instruction.start_line))
            .collect();
        let (mut lower, mut upper) = (0, 0);
        for (name, _) in &names {
            if is_self_consistent(name) {
                if *name == name.to_lowercase() {
                    lower += 1;
                } else {
                    upper += 1;
                }
            }
        }
        let majority_lower = lower > upper;
        for (name, line) in names {
            let casing = if majority_lower && name != name.to_lowercase() {
                "lowercase"
            } else if !majority_lower && name != name.to_uppercase() {
                "uppercase"
            } else {
                continue;
            };
            self.report(
                Rule::ConsistentInstructionCasing,
                format!(
                    "Command '{name}' should match the case of the command majority ({casing})"
                ),
                line,
                line,
            );
        }
    }

    fn stage_names(&mut self, stages: &[Stage]) {
        let mut seen = BTreeSet::new();
        for stage in stages {
            let Some(name) = stage.name() else {
                continue;
            };
            let line = stage.from_instruction.start_line;
            if name == "scratch" || name == "context" {
                self.report(
                    Rule::ReservedStageName,
                    format!("Stage name should not use the same name as reserved stage {name:?}"),
                    line,
                    line,
                );
            }
            if !seen.insert(name.to_string()) {
                self.report(
                    Rule::DuplicateStageName,
                    format!("Duplicate stage name {name:?}, stage names should be unique"),
                    line,
                    line,
                );
            }
        }
    }

    /// The global build arguments FROM lines see: the platform arguments
    /// and the ARGs before the first FROM, with the build's values when
    /// `with_build_args`, with their defaults only otherwise.
    fn global_env(
        &self,
        global_args: &[crate::instruction::ArgDeclaration],
        stages: &[Stage],
        with_build_args: bool,
    ) -> EnvList {
        let mut env = EnvList::new();
        let defaults = self
            .options
            .predefined_args(stages.last().and_then(|stage| stage.name()));
        for (key, value) in defaults {
            let given = with_build_args
                .then(|| self.options.build_args.get(key))
                .flatten();
            env.set(key, given.unwrap_or(&value));
        }
        for arg in global_args {
            let key = &arg.name.text;
            let given = with_build_args
                .then(|| self.options.build_args.get(key))
                .flatten();
            let value = match (given, &arg.default) {
                (Some(given), _) => Some(given.clone()),
                (None, Some(default)) => Some(expand(&self.lexer, &default.text, &env).value),
                (None, None) => None,
            };
            if let Some(value) = value {
                env.set(key, &value);
            }
        }
        env
    }

    /// InvalidDefaultArgInFrom: with the global ARGs' defaults alone, each
    /// FROM should still name a valid image.
    fn default_base_names(
        &mut self,
        stages: &[Stage],
        global_args: &[crate::instruction::ArgDeclaration],
    ) {
        let env = self.global_env(global_args, stages, false);
        for stage in stages {
            let image = &stage.from.image.text;
            if !image.contains('$') {
                continue;
            }
            let Ok(value) = self.lexer.process_word(image, &env) else {
                return;
            };
            if stage_index(stages, &value).is_none() && !is_valid_reference(&value) {
                let line = stage.from_instruction.start_line;
                self.report(
                    Rule::InvalidDefaultArgInFrom,
                    format!(
                        "Default value for ARG {image} results in empty or invalid base image name"
                    ),
                    line,
                    line,
                );
            }
        }
    }

    /// The rules about a FROM line's variables and platform.
    fn check_from_line(
        &mut self,
        stage: &Stage,
        global_env: &EnvList,
        declared: &BTreeSet<String>,
    ) {
        let line = stage.from_instruction.start_line;
        let known: Vec<&str> = declared.iter().map(String::as_str).collect();
        let undeclared = |checker: &mut Self, missing: &[String]| {
            for name in missing {
                if declared.contains(name) {
                    continue;
                }
                let message = match suggest::closest(name, &known) {
                    Some(close) => {
                        format!("FROM argument '{name}' is not declared (did you mean {close}?)")
                    }
                    None => format!("FROM argument '{name}' is not declared"),
                };
                checker.report(Rule::UndefinedArgInFrom, message, line, line);
            }
        };
        let image = expand(&self.lexer, &stage.from.image.text, global_env);
        undeclared(self, &image.missing);
        let Some(platform) = &stage.from.platform else {
            return;
        };
        let expanded = expand(&self.lexer, &platform.text, global_env);
        undeclared(self, &expanded.missing);
        if expanded.found == ["TARGETPLATFORM"]
            && expanded.missing.is_empty()
            && Some(expanded.value.as_str()) == global_env.get("TARGETPLATFORM")
        {
            self.report(
                Rule::RedundantTargetPlatform,
                format!(
                    "Setting platform to predefined {} in FROM is redundant as this is the default behavior",
                    platform.text
                ),
                line,
                line,
            );
        }
        if expanded.found.is_empty() && expanded.missing.is_empty() {
            if let Ok(constant) = Platform::parse(&expanded.value) {
                let name = stage.name().unwrap_or_default();
                if !name.contains(&constant.os) && !name.contains(&constant.architecture) {
                    self.report(
                        Rule::FromPlatformFlagConstDisallowed,
                        format!(
                            "FROM --platform flag should not use constant value {:?}",
                            expanded.value
                        ),
                        line,
                        line,
                    );
                }
            }
        }
    }

    /// The state a stage on a base image starts with: the image's
    /// environment, when it can be looked at.
    fn image_state(
        &self,
        stage: &Stage,
        global_env: &EnvList,
        images: &mut dyn BaseImages,
    ) -> StageState {
        let mut state = unknown_state();
        let image = expand(&self.lexer, &stage.from.image.text, global_env).value;
        let platform = match &stage.from.platform {
            Some(word) => Platform::parse(&expand(&self.lexer, &word.text, global_env).value).ok(),
            None => Some(self.options.target_platform.clone()),
        };
        let env = if image == "scratch" {
            Some(Vec::new())
        } else {
            platform.and_then(|platform| {
                images
                    .resolve(&image, &platform)
                    .ok()
                    .map(|resolved| resolved.config.env)
            })
        };
        if let Some(env) = env {
            state.env = EnvList::from_key_values(env);
            state.env_known = true;
            if !state.env.contains("PATH") {
                state.env.set("PATH", DEFAULT_PATH);
            }
        }
        state
    }

    /// The rules about what a stage's instructions do, in order, from the
    /// state its base leaves.
    fn dispatch(
        &mut self,
        stage: &Stage,
        mut state: StageState,
        global_env: &EnvList,
        ignore: &DockerIgnore,
    ) -> StageState {
        let mut last_of: Vec<(Keyword, usize)> = Vec::new();
        for (instruction, command) in &stage.commands {
            let line = instruction.start_line;
            let mut missing: Vec<String> = Vec::new();
            let lexer = self.lexer;
            let mut expand_word = |state: &StageState, word: &str| {
                let expanded = expand(&lexer, word, &state.env);
                for name in expanded.missing {
                    if !missing.contains(&name) {
                        missing.push(name);
                    }
                }
                expanded.value
            };
            let keyword = command.keyword;
            match &command.kind {
                CommandKind::Env(pairs) => {
                    let expanded: Vec<(String, String)> = pairs
                        .iter()
                        .map(|pair| {
                            (
                                expand_word(&state, &pair.key.text),
                                expand_word(&state, &pair.value.text),
                            )
                        })
                        .collect();
                    for (key, value) in &expanded {
                        state.env.set(key, value);
                    }
                    self.legacy_key_values(instruction, keyword);
                    for (key, _) in &expanded {
                        self.secret_name("ENV", key, line);
                    }
                }
                CommandKind::Label(pairs) => {
                    for pair in pairs {
                        expand_word(&state, &pair.key.text);
                        expand_word(&state, &pair.value.text);
                    }
                    self.legacy_key_values(instruction, keyword);
                }
                CommandKind::Arg(declarations) => {
                    for arg in declarations {
                        let key = &arg.name.text;
                        let value = match (self.options.build_args.get(key), &arg.default) {
                            (Some(given), _) => Some(given.clone()),
                            (None, Some(default)) => Some(expand_word(&state, &default.text)),
                            (None, None) => global_env.get(key).map(str::to_string),
                        };
                        state.declared_args.insert(key.clone());
                        if let Some(value) = value {
                            if !NON_ENV_ARGS.contains(&key.as_str()) {
                                state.env.set(key, &value);
                            }
                        }
                        self.secret_name("ARG", key, line);
                    }
                }
                CommandKind::Copy(copy) => {
                    let sources: Vec<String> = copy
                        .sources
                        .iter()
                        .map(|source| expand_word(&state, &source.text))
                        .collect();
                    expand_word(&state, &copy.dest.text);
                    for flag in [&copy.chown, &copy.chmod].into_iter().flatten() {
                        expand_word(&state, &flag.text);
                    }
                    if copy.from.is_none() {
                        self.ignored_sources(copy.is_add, &sources, ignore, line);
                    }
                }
                CommandKind::Expose(ports) => {
                    for port in ports {
                        let value = expand_word(&state, &port.text);
                        for raw in value.split_whitespace() {
                            self.expose(raw, line);
                        }
                    }
                }
                CommandKind::Workdir(path) => {
                    let path = expand_word(&state, &path.text);
                    if !state.workdir_set && !path.starts_with('/') {
                        self.report(
                            Rule::WorkdirRelativePath,
                            format!("Relative workdir {path:?} can have unexpected results if the base image changes"),
                            line,
                            line,
                        );
                    }
                    state.workdir_set = true;
                }
                CommandKind::User(word) | CommandKind::StopSignal(word) => {
                    expand_word(&state, &word.text);
                }
                CommandKind::Volume(words) => {
                    for word in words {
                        expand_word(&state, &word.text);
                    }
                }
                CommandKind::Shell(_) => state.shell_set = true,
                CommandKind::Cmd(line_args) | CommandKind::Entrypoint(line_args) => {
                    self.used_once(&mut last_of, keyword, line);
                    if line_args.shell_form && !state.shell_set {
                        self.report(
                            Rule::JsonArgsRecommended,
                            format!("JSON arguments recommended for {} to prevent unintended behavior related to OS signals", keyword.as_str()),
                            line,
                            line,
                        );
                    }
                }
                CommandKind::Healthcheck(_) => self.used_once(&mut last_of, keyword, line),
                _ => {}
            }
            if state.env_known {
                for name in missing {
                    if state.declared_args.contains(&name) || NON_ENV_ARGS.contains(&name.as_str())
                    {
                        continue;
                    }
                    let keys: Vec<&str> = state.env.iter().map(|(key, _)| key).collect();
                    let message = match suggest::closest(&name, &keys) {
                        Some(close) => format!(
                            "Usage of undefined variable '${name}' (did you mean ${close}?)"
                        ),
                        None => format!("Usage of undefined variable '${name}'"),
                    };
                    self.report(Rule::UndefinedVar, message, line, line);
                }
            }
        }
        state
    }

    /// MultipleInstructionsDisallowed: a CMD, ENTRYPOINT or HEALTHCHECK
    /// that a later one in the stage replaces is reported where it is.
    fn used_once(&mut self, last_of: &mut Vec<(Keyword, usize)>, keyword: Keyword, line: usize) {
        if let Some(entry) = last_of.iter_mut().find(|(k, _)| *k == keyword) {
            let earlier = entry.1;
            entry.1 = line;
            self.report(
                Rule::MultipleInstructionsDisallowed,
                format!(
                    "Multiple {} instructions should not be used in the same stage because only the last one will be used",
                    keyword.as_str()
                ),
                earlier,
                earlier,
            );
        } else {
            last_of.push((keyword, line));
        }
    }

    fn legacy_key_values(&mut self, instruction: &Instruction, keyword: Keyword) {
        let Args::KeyValues(pairs) = &instruction.args else {
            return;
        };
        let name = keyword.as_str();
        for _ in pairs.iter().filter(|pair| !pair.equals) {
            self.report(
                Rule::LegacyKeyValueFormat,
                format!("\"{name} key=value\" should be used instead of legacy \"{name} key value\" format"),
                instruction.start_line,
                instruction.start_line,
            );
        }
    }

    /// SecretsUsedInArgOrEnv: a name with a word such as password, token or
    /// key among its underscore-separated parts, unless another part says
    /// it is public, a file or a version.
    fn secret_name(&mut self, instruction: &str, key: &str, line: usize) {
        const SECRET_WORDS: [&str; 10] = [
            "apikey",
            "auth",
            "credential",
            "credentials",
            "key",
            "password",
            "pword",
            "passwd",
            "secret",
            "token",
        ];
        const HARMLESS_WORDS: [&str; 3] = ["public", "file", "version"];
        let lower = key.to_lowercase();
        let parts: Vec<&str> = lower.split('_').collect();
        let has_part = |words: &[&str]| parts.iter().any(|part| words.contains(part));
        if has_part(&SECRET_WORDS) && !has_part(&HARMLESS_WORDS) {
            self.report(
                Rule::SecretsUsedInArgOrEnv,
                format!(
                    "Do not use ARG or ENV instructions for sensitive data ({instruction} {key:?})"
                ),
                line,
                line,
            );
        }
    }

    /// CopyIgnoredFile: a source of the context that .dockerignore leaves
    /// out. With `!` patterns in the file nothing is said: what they bring
    /// back cannot be told without the files.
    fn ignored_sources(
        &mut self,
        is_add: bool,
        sources: &[String],
        ignore: &DockerIgnore,
        line: usize,
    ) {
        let patterns = ignore.patterns();
        if patterns.is_empty() || patterns.iter().any(|p| p.starts_with('!')) {
            return;
        }
        let verb = if is_add { "Add" } else { "Copy" };
        for source in sources {
            if source.contains("://") || source.starts_with("git@") {
                continue;
            }
            let cleaned = if source.starts_with('/') {
                format!("/{}", paths::clean(source.trim_start_matches('/')))
            } else {
                paths::clean(source)
            };
            let cleaned = match cleaned.as_str() {
                "" => ".".to_string(),
                "/" | "/." => "/".to_string(),
                _ => cleaned.trim_end_matches('/').to_string(),
            };
            let excluded = if cleaned == "." || cleaned == "/" {
                patterns
                    .iter()
                    .any(|p| matches!(p.as_str(), "*" | "**" | "**/*"))
            } else {
                ignore.is_excluded(&cleaned)
            };
            if excluded {
                self.report(
                    Rule::CopyIgnoredFile,
                    format!(
                        "Attempting to {verb} file {cleaned:?} that is excluded by .dockerignore"
                    ),
                    line,
                    line,
                );
            }
        }
    }

    /// ExposeProtoCasing and ExposeInvalidFormat for one EXPOSE value
    /// (`[ip:][host-port:]port[/proto]`).
    fn expose(&mut self, raw: &str, line: usize) {
        let parts: Vec<&str> = raw.split(':').collect();
        let container = parts.last().copied().unwrap_or_default();
        let has_host_part = parts.len() > 1;
        let proto = container
            .split_once('/')
            .map(|(_, proto)| proto)
            .unwrap_or_default();
        if proto != proto.to_lowercase() {
            self.report(
                Rule::ExposeProtoCasing,
                format!("Defined protocol '{raw}' in EXPOSE instruction should be lowercase"),
                line,
                line,
            );
        }
        if has_host_part {
            self.report(
                Rule::ExposeInvalidFormat,
                format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'"),
                line,
                line,
            );
        }
    }
}

/// Whether `reference` could name an image: `[host[:port]/]path[:tag][@digest]`
/// with lower-case path components, as the distribution reference grammar
/// has it.
fn is_valid_reference(reference: &str) -> bool {
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        let Some((algorithm, hex)) = digest.split_once(':') else {
            return false;
        };
        if algorithm.is_empty() || hex.is_empty() {
            return false;
        }
    }
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if !rest[colon + 1..].contains('/') => {
            (&rest[..colon], Some(&rest[colon + 1..]))
        }
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        let valid_tag = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid_tag {
            return false;
        }
    }
    if name.is_empty() {
        return false;
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        if first.contains(['.', ':']) || first == "localhost" {
            let host_ok = first
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !host_ok {
                return false;
            }
            components.remove(0);
        }
    }
    components.iter().all(|component| {
        !component.is_empty()
            && component.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            })
            && component.starts_with(|c: char| c.is_ascii_alphanumeric())
            && component.ends_with(|c: char| c.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::is_valid_reference;

    #[test]
    fn references() {
        for valid in [
            "busybox",
            "busybox:1.36",
            "registry:5000/a/b:t",
            "a@sha256:ab",
            "scratch",
        ] {
            assert!(is_valid_reference(valid), "{valid}");
        }
        for invalid in ["", "busybox:", "Busybox", "busy box", ":tag", "a/-b"] {
            assert!(!is_valid_reference(invalid), "{invalid}");
        }
    }
}
