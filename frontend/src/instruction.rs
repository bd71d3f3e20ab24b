//! Typed instructions: flags checked against what each instruction accepts,
//! arguments counted and validated. Values are still unexpanded here; the
//! lowering expands them in the scope of their stage.

use crate::ast::{Args, Heredoc, Instruction, Source, Word};
use crate::error::{Error, ErrorKind, FlagHint, Pos};
use crate::keyword::Keyword;
use crate::parser::parse_heredoc_word;
use crate::suggest;

/// A typed instruction with the place it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub keyword: Keyword,
    pub pos: Pos,
    pub start_line: usize,
    pub end_line: usize,
    /// The instruction as written (continuations joined, trimmed).
    pub text: String,
    pub kind: CommandKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    From(FromCommand),
    Arg(Vec<ArgDeclaration>),
    Run(RunCommand),
    Cmd(CommandLine),
    Entrypoint(CommandLine),
    Shell(Vec<String>),
    Copy(Box<CopyCommand>),
    Env(Vec<Pair>),
    Label(Vec<Pair>),
    Maintainer(String),
    Expose(Vec<Word>),
    Volume(Vec<Word>),
    User(Word),
    Workdir(Word),
    StopSignal(Word),
    Healthcheck(Option<Box<HealthcheckCommand>>),
    Onbuild(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromCommand {
    pub image: Word,
    /// The stage name, lower-cased.
    pub name: Option<Word>,
    pub platform: Option<Word>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDeclaration {
    pub name: Word,
    pub default: Option<Word>,
}

/// A command in exec form (JSON array) or shell form (one string that the
/// stage's SHELL runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub args: Vec<String>,
    pub shell_form: bool,
    pub heredocs: Vec<Heredoc>,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCommand {
    pub command: CommandLine,
    /// `--mount` values, parsed when the stage's variables are known.
    pub mounts: Vec<Word>,
    /// As written; the lowering decides which network each mode gives.
    pub network: Option<NetworkMode>,
    pub security: Option<SecurityMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    Default,
    None,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityMode {
    Sandbox,
    Insecure,
}

/// COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyCommand {
    pub is_add: bool,
    pub sources: Vec<Word>,
    /// `<<NAME` sources, with their content.
    pub inline_sources: Vec<Heredoc>,
    pub dest: Word,
    pub from: Option<Word>,
    pub chown: Option<Word>,
    pub chmod: Option<Word>,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<Word>,
    pub checksum: Option<Word>,
    pub keep_git_dir: bool,
    /// ADD `--unpack`, when given: whether archives are unpacked, local ones
    /// and downloaded ones alike.
    pub unpack: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub key: Word,
    pub value: Word,
}

/// HEALTHCHECK CMD; `None` in [`CommandKind::Healthcheck`] is HEALTHCHECK NONE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthcheckCommand {
    pub command: CommandLine,
    /// Durations in nanoseconds; zero means "inherit the default".
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub start_interval: i64,
    pub retries: i64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Bool,
    Text,
    List,
}

const FROM_FLAGS: &[(&str, FlagKind)] = &[("platform", FlagKind::Text)];
const RUN_FLAGS: &[(&str, FlagKind)] = &[
    ("mount", FlagKind::List),
    ("network", FlagKind::Text),
    ("security", FlagKind::Text),
];
const COPY_FLAGS: &[(&str, FlagKind)] = &[
    ("from", FlagKind::Text),
    ("chown", FlagKind::Text),
    ("chmod", FlagKind::Text),
    ("link", FlagKind::Bool),
    ("parents", FlagKind::Bool),
    ("exclude", FlagKind::List),
];
const ADD_FLAGS: &[(&str, FlagKind)] = &[
    ("chown", FlagKind::Text),
    ("chmod", FlagKind::Text),
    ("link", FlagKind::Bool),
    ("keep-git-dir", FlagKind::Bool),
    ("checksum", FlagKind::Text),
    ("unpack", FlagKind::Bool),
    ("exclude", FlagKind::List),
];
const HEALTHCHECK_FLAGS: &[(&str, FlagKind)] = &[
    ("interval", FlagKind::Text),
    ("timeout", FlagKind::Text),
    ("start-period", FlagKind::Text),
    ("start-interval", FlagKind::Text),
    ("retries", FlagKind::Text),
];

fn accepted_flags(keyword: Keyword) -> &'static [(&'static str, FlagKind)] {
    match keyword {
        Keyword::From => FROM_FLAGS,
        Keyword::Run => RUN_FLAGS,
        Keyword::Copy => COPY_FLAGS,
        Keyword::Add => ADD_FLAGS,
        Keyword::Healthcheck => HEALTHCHECK_FLAGS,
        _ => &[],
    }
}

/// Flag values of one instruction.
#[derive(Default)]
struct Flags {
    bools: Vec<(&'static str, bool)>,
    texts: Vec<(&'static str, Word)>,
    lists: Vec<(&'static str, Word)>,
}

impl Flags {
    fn parse(source: &Source, keyword: Keyword, words: &[Word]) -> Result<Flags, Error> {
        let accepted = accepted_flags(keyword);
        let mut flags = Flags::default();
        let mut seen: Vec<&str> = Vec::new();
        for word in words {
            let Some(flag) = word.text.strip_prefix("--") else {
                continue;
            };
            if flag.is_empty() {
                break;
            }
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (flag, None),
            };
            let value_pos = Pos::new(word.pos.line, word.pos.column + 3 + name.chars().count());
            let Some(&(name, kind)) = accepted.iter().find(|(n, _)| *n == name) else {
                return Err(source.error(
                    ErrorKind::UnknownFlag {
                        instruction: keyword,
                        flag: name.to_string(),
                        hint: flag_hint(keyword, name),
                    },
                    word.pos,
                ));
            };
            if kind != FlagKind::List && seen.contains(&name) {
                return Err(source.error(
                    ErrorKind::DuplicateFlag {
                        instruction: keyword,
                        flag: name.to_string(),
                    },
                    word.pos,
                ));
            }
            seen.push(name);
            let missing = || {
                source.error(
                    ErrorKind::MissingFlagValue {
                        flag: name.to_string(),
                    },
                    word.pos,
                )
            };
            match kind {
                FlagKind::Bool => {
                    let enabled = match value.map(str::to_ascii_lowercase).as_deref() {
                        None => true,
                        Some("") => return Err(missing()),
                        Some("true") => true,
                        Some("false") => false,
                        Some(_) => {
                            return Err(source.error(
                                ErrorKind::InvalidBoolFlag {
                                    flag: name.to_string(),
                                    value: value.unwrap_or_default().to_string(),
                                },
                                word.pos,
                            ))
                        }
                    };
                    flags.bools.push((name, enabled));
                }
                FlagKind::Text => {
                    let value = value.ok_or_else(missing)?;
                    let word = Word {
                        text: value.to_string(),
                        pos: value_pos,
                    };
                    flags.texts.push((name, word));
                }
                FlagKind::List => {
                    let value = value.ok_or_else(missing)?;
                    let word = Word {
                        text: value.to_string(),
                        pos: value_pos,
                    };
                    flags.lists.push((name, word));
                }
            }
        }
        Ok(flags)
    }

    fn bool(&self, name: &str) -> bool {
        self.given_bool(name).unwrap_or(false)
    }

    /// A boolean flag's value, if the instruction has the flag.
    fn given_bool(&self, name: &str) -> Option<bool> {
        self.bools
            .iter()
            .find(|&&(n, _)| n == name)
            .map(|&(_, enabled)| enabled)
    }

    fn text(&mut self, name: &str) -> Option<Word> {
        let index = self.texts.iter().position(|(n, _)| *n == name)?;
        Some(self.texts.swap_remove(index).1)
    }

    fn list(&mut self, name: &str) -> Vec<Word> {
        let (matching, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.lists)
            .into_iter()
            .partition(|(n, _)| *n == name);
        self.lists = rest;
        matching.into_iter().map(|(_, word)| word).collect()
    }
}

/// A misspelt flag of this instruction, or the instructions the flag belongs to.
fn flag_hint(keyword: Keyword, name: &str) -> FlagHint {
    let own: Vec<&str> = accepted_flags(keyword).iter().map(|(n, _)| *n).collect();
    if let Some(close) = suggest::closest(name, &own) {
        return FlagHint::DidYouMean(close.to_string());
    }
    let owners: Vec<Keyword> = Keyword::ALL
        .into_iter()
        .filter(|&k| k != keyword && accepted_flags(k).iter().any(|(n, _)| *n == name))
        .collect();
    if owners.is_empty() {
        FlagHint::None
    } else {
        FlagHint::BelongsTo(owners)
    }
}

/// Converts every parsed instruction to a typed command.
pub fn commands(source: &Source, instructions: &[Instruction]) -> Result<Vec<Command>, Error> {
    let mut commands = Vec::with_capacity(instructions.len());
    for instruction in instructions {
        commands.push(command(source, instruction)?);
    }
    Ok(commands)
}

/// Converts one parsed instruction to a typed command.
pub fn command(source: &Source, instruction: &Instruction) -> Result<Command, Error> {
    let keyword = instruction.keyword;
    let pos = instruction.name.pos;
    let error = |kind: ErrorKind, at: Pos| source.error(kind, at);
    let mut flags = Flags::parse(source, keyword, &instruction.flags)?;
    let args = &instruction.args;
    let kind = match keyword {
        Keyword::From => {
            let words = words_of(args);
            let name = match words.as_slice() {
                [_] => None,
                [_, as_word, name] if as_word.text.eq_ignore_ascii_case("as") => {
                    let lower = name.text.to_lowercase();
                    if !valid_stage_name(&lower) {
                        return Err(error(
                            ErrorKind::InvalidStageName(name.text.clone()),
                            name.pos,
                        ));
                    }
                    Some(Word {
                        text: lower,
                        pos: name.pos,
                    })
                }
                _ => return Err(error(ErrorKind::FromArguments, pos)),
            };
            CommandKind::From(FromCommand {
                image: words[0].clone(),
                name,
                platform: flags.text("platform"),
            })
        }
        Keyword::Arg => {
            let words = words_of(args);
            if words.is_empty() {
                return Err(error(ErrorKind::AtLeastOneArgument(keyword), pos));
            }
            let mut declarations = Vec::with_capacity(words.len());
            for word in words {
                let declaration = match word.text.split_once('=') {
                    Some(("", _)) => {
                        return Err(error(
                            ErrorKind::BlankName {
                                instruction: keyword,
                            },
                            word.pos,
                        ))
                    }
                    Some((name, default)) => ArgDeclaration {
                        name: Word {
                            text: name.to_string(),
                            pos: word.pos,
                        },
                        default: Some(Word {
                            text: default.to_string(),
                            pos: Pos::new(
                                word.pos.line,
                                word.pos.column + name.chars().count() + 1,
                            ),
                        }),
                    },
                    None => ArgDeclaration {
                        name: word,
                        default: None,
                    },
                };
                declarations.push(declaration);
            }
            CommandKind::Arg(declarations)
        }
        Keyword::Run => {
            let command = command_line(args, &instruction.heredocs, pos);
            if command.args.is_empty() {
                return Err(error(ErrorKind::AtLeastOneArgument(keyword), pos));
            }
            let network = match flags.text("network") {
                None => None,
                Some(word) => Some(match word.text.as_str() {
                    "default" => NetworkMode::Default,
                    "none" => NetworkMode::None,
                    "host" => NetworkMode::Host,
                    _ => return Err(error(ErrorKind::InvalidNetwork(word.text), word.pos)),
                }),
            };
            let security = match flags.text("security") {
                None => None,
                Some(word) => Some(match word.text.as_str() {
                    "sandbox" => SecurityMode::Sandbox,
                    "insecure" => SecurityMode::Insecure,
                    _ => return Err(error(ErrorKind::InvalidSecurity(word.text), word.pos)),
                }),
            };
            CommandKind::Run(RunCommand {
                command,
                mounts: flags.list("mount"),
                network,
                security,
            })
        }
        Keyword::Cmd => CommandKind::Cmd(command_line(args, &instruction.heredocs, pos)),
        Keyword::Entrypoint => {
            CommandKind::Entrypoint(command_line(args, &instruction.heredocs, pos))
        }
        Keyword::Shell => match args {
            Args::Json { values, .. } if values.is_empty() => {
                return Err(error(ErrorKind::AtLeastOneArgument(keyword), pos))
            }
            Args::Json { values, .. } => CommandKind::Shell(values.clone()),
            Args::Empty => return Err(error(ErrorKind::AtLeastOneArgument(keyword), pos)),
            _ => return Err(error(ErrorKind::ShellNotJson, pos)),
        },
        Keyword::Copy | Keyword::Add => {
            let is_add = keyword == Keyword::Add;
            let mut words = match args {
                Args::Json { values, pos } => values
                    .iter()
                    .map(|v| Word {
                        text: v.clone(),
                        pos: *pos,
                    })
                    .collect(),
                _ => words_of(args),
            };
            let dest = match words.pop() {
                Some(dest) if !words.is_empty() => dest,
                _ => return Err(error(ErrorKind::NoDestination(keyword), pos)),
            };
            if parse_heredoc_word(&dest.text).is_some() {
                return Err(error(ErrorKind::HeredocAsDestination(keyword), dest.pos));
            }
            let mut sources = Vec::new();
            let mut inline_sources = Vec::new();
            for word in words {
                match parse_heredoc_word(&word.text) {
                    Some(reference) => {
                        let body = instruction
                            .heredocs
                            .iter()
                            .find(|h| h.name == reference.name);
                        inline_sources.push(Heredoc {
                            content: body.map(|h| h.content.clone()).unwrap_or_default(),
                            ..reference
                        });
                    }
                    None => sources.push(word),
                }
            }
            CommandKind::Copy(Box::new(CopyCommand {
                is_add,
                sources,
                inline_sources,
                dest,
                from: if is_add { None } else { flags.text("from") },
                chown: flags.text("chown"),
                chmod: flags.text("chmod"),
                link: flags.bool("link"),
                parents: flags.bool("parents"),
                exclude: flags.list("exclude"),
                checksum: flags.text("checksum"),
                keep_git_dir: flags.bool("keep-git-dir"),
                unpack: flags.given_bool("unpack"),
            }))
        }
        Keyword::Env | Keyword::Label => {
            let Args::KeyValues(pairs) = args else {
                return Err(error(ErrorKind::AtLeastOneArgument(keyword), pos));
            };
            let mut out = Vec::with_capacity(pairs.len());
            for pair in pairs {
                if pair.key.text.is_empty() {
                    return Err(error(
                        ErrorKind::BlankName {
                            instruction: keyword,
                        },
                        pair.key.pos,
                    ));
                }
                out.push(Pair {
                    key: pair.key.clone(),
                    value: pair.value.clone(),
                });
            }
            if keyword == Keyword::Env {
                CommandKind::Env(out)
            } else {
                CommandKind::Label(out)
            }
        }
        Keyword::Maintainer => CommandKind::Maintainer(
            single(args)
                .ok_or_else(|| error(ErrorKind::ExactlyOneArgument(keyword), pos))?
                .text,
        ),
        Keyword::User => CommandKind::User(
            single(args).ok_or_else(|| error(ErrorKind::ExactlyOneArgument(keyword), pos))?,
        ),
        Keyword::Workdir => CommandKind::Workdir(
            single(args).ok_or_else(|| error(ErrorKind::ExactlyOneArgument(keyword), pos))?,
        ),
        Keyword::Stopsignal => CommandKind::StopSignal(
            single(args).ok_or_else(|| error(ErrorKind::ExactlyOneArgument(keyword), pos))?,
        ),
        Keyword::Expose => {
            let words = words_of(args);
            if words.is_empty() {
                return Err(error(ErrorKind::AtLeastOneArgument(keyword), pos));
            }
            CommandKind::Expose(words)
        }
        Keyword::Volume => {
            let words: Vec<Word> = match args {
                Args::Json { values, pos } => values
                    .iter()
                    .map(|v| Word {
                        text: v.clone(),
                        pos: *pos,
                    })
                    .collect(),
                _ => words_of(args),
            };
            if words.is_empty() {
                return Err(error(ErrorKind::AtLeastOneArgument(keyword), pos));
            }
            let mut volumes = Vec::with_capacity(words.len());
            for word in words {
                let text = word.text.trim();
                if text.is_empty() {
                    return Err(error(ErrorKind::EmptyVolume, word.pos));
                }
                volumes.push(Word {
                    text: text.to_string(),
                    pos: word.pos,
                });
            }
            CommandKind::Volume(volumes)
        }
        Keyword::Healthcheck => healthcheck(source, args, &instruction.heredocs, pos, &mut flags)?,
        Keyword::Onbuild => {
            let Args::Onbuild(trigger) = args else {
                return Err(error(ErrorKind::AtLeastOneArgument(keyword), pos));
            };
            match trigger.keyword {
                Keyword::Onbuild => return Err(error(ErrorKind::OnbuildChain, trigger.name.pos)),
                Keyword::Maintainer | Keyword::From => {
                    return Err(error(
                        ErrorKind::OnbuildTrigger(trigger.keyword),
                        trigger.name.pos,
                    ))
                }
                _ => {}
            }
            // The trigger must itself be valid where it will run.
            command(source, trigger)?;
            let mut expression = trigger.text.trim().to_string();
            for heredoc in &trigger.heredocs {
                expression.push('\n');
                expression.push_str(&heredoc.content);
                expression.push_str(&heredoc.name);
            }
            CommandKind::Onbuild(expression)
        }
    };
    Ok(Command {
        keyword,
        pos,
        start_line: instruction.start_line,
        end_line: instruction.end_line,
        text: instruction.text.trim().to_string(),
        kind,
    })
}

fn healthcheck(
    source: &Source,
    args: &Args,
    heredocs: &[Heredoc],
    pos: Pos,
    flags: &mut Flags,
) -> Result<CommandKind, Error> {
    let Args::Healthcheck { kind, command } = args else {
        return Err(source.error(ErrorKind::AtLeastOneArgument(Keyword::Healthcheck), pos));
    };
    match kind.text.to_ascii_uppercase().as_str() {
        "NONE" => {
            if !matches!(**command, Args::Empty) {
                return Err(source.error(ErrorKind::HealthcheckNoneArguments, kind.pos));
            }
            Ok(CommandKind::Healthcheck(None))
        }
        "CMD" => {
            let command = command_line(command, heredocs, kind.pos);
            if command.args.is_empty() {
                return Err(source.error(ErrorKind::HealthcheckMissingCommand, kind.pos));
            }
            let mut duration = |name: &str| -> Result<i64, Error> {
                let Some(word) = flags.text(name) else {
                    return Ok(0);
                };
                parse_healthcheck_duration(&word.text).map_err(|reason| {
                    source.error(
                        ErrorKind::InvalidDuration {
                            flag: name.to_string(),
                            value: word.text.clone(),
                            reason,
                        },
                        word.pos,
                    )
                })
            };
            let interval = duration("interval")?;
            let timeout = duration("timeout")?;
            let start_period = duration("start-period")?;
            let start_interval = duration("start-interval")?;
            let retries = match flags.text("retries") {
                None => 0,
                Some(word) => match word.text.parse::<i32>() {
                    Ok(n) if n >= 0 => i64::from(n),
                    _ => return Err(source.error(ErrorKind::InvalidRetries(word.text), word.pos)),
                },
            };
            Ok(CommandKind::Healthcheck(Some(Box::new(
                HealthcheckCommand {
                    command,
                    interval,
                    timeout,
                    start_period,
                    start_interval,
                    retries,
                },
            ))))
        }
        _ => Err(source.error(
            ErrorKind::HealthcheckUnknownType(kind.text.clone()),
            kind.pos,
        )),
    }
}

/// A HEALTHCHECK duration: zero, or at least one millisecond.
fn parse_healthcheck_duration(text: &str) -> Result<i64, String> {
    let nanos = parse_go_duration(text)?;
    if nanos != 0 && nanos < 1_000_000 {
        return Err("it must be 0 or at least 1ms".to_string());
    }
    Ok(nanos)
}

/// Parses a duration as Go's time.ParseDuration does ("1m30s", "1.5h",
/// "300ms"), in nanoseconds.
pub fn parse_go_duration(text: &str) -> Result<i64, String> {
    let invalid =
        || format!("expected a number with a unit such as 30s, 1m30s or 500ms, got {text:?}");
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_end];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        let scale: f64 = match unit {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("missing unit in duration {text:?}")),
            _ => return Err(format!("unknown unit {unit:?} in duration {text:?}")),
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    if total > i64::MAX as f64 {
        return Err(format!("duration {text:?} is too long"));
    }
    let nanos = total.round() as i64;
    Ok(if negative { -nanos } else { nanos })
}

fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn words_of(args: &Args) -> Vec<Word> {
    match args {
        Args::Words(words) => words.clone(),
        Args::Text(word) => vec![word.clone()],
        _ => Vec::new(),
    }
}

fn single(args: &Args) -> Option<Word> {
    match args {
        Args::Text(word) => Some(word.clone()),
        Args::Words(words) if words.len() == 1 => Some(words[0].clone()),
        _ => None,
    }
}

fn command_line(args: &Args, heredocs: &[Heredoc], pos: Pos) -> CommandLine {
    match args {
        Args::Json { values, pos } => CommandLine {
            args: values.clone(),
            shell_form: false,
            heredocs: Vec::new(),
            pos: *pos,
        },
        Args::Text(word) => CommandLine {
            args: vec![word.text.clone()],
            shell_form: true,
            heredocs: heredocs.to_vec(),
            pos: word.pos,
        },
        _ => CommandLine {
            args: Vec::new(),
            shell_form: true,
            heredocs: Vec::new(),
            pos,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    fn commands_of(text: &str) -> Result<Vec<Command>, Error> {
        let dockerfile = parse(text, "Dockerfile")?;
        commands(&dockerfile.source, &dockerfile.instructions)
    }

    fn one(text: &str) -> CommandKind {
        let mut commands = commands_of(text).expect("valid");
        commands.remove(0).kind
    }

    fn failure(text: &str) -> Error {
        commands_of(text).expect_err("should be rejected")
    }

    #[test]
    fn from_with_name_and_platform() {
        let CommandKind::From(from) = one("FROM --platform=$BUILDPLATFORM golang:1.22 AS Build")
        else {
            panic!()
        };
        assert_eq!(from.image.text, "golang:1.22");
        assert_eq!(from.name.map(|w| w.text).as_deref(), Some("build"));
        assert_eq!(
            from.platform.map(|w| w.text).as_deref(),
            Some("$BUILDPLATFORM")
        );
        assert_eq!(failure("FROM a AS").kind, ErrorKind::FromArguments);
        assert_eq!(failure("FROM a b c").kind, ErrorKind::FromArguments);
        assert_eq!(
            failure("FROM a AS 1st").kind,
            ErrorKind::InvalidStageName("1st".into())
        );
    }

    #[test]
    fn flags_are_checked_per_instruction() {
        let err = failure("FROM a\nCOPY --chekcsum=sha256:x a b");
        assert_eq!(
            err.to_string(),
            "Dockerfile:2:6: unknown flag --chekcsum for COPY"
        );
        let err = failure("FROM a\nCOPY --checksum=sha256:x a b");
        assert_eq!(
            err.to_string(),
            "Dockerfile:2:6: unknown flag --checksum for COPY (it is a flag of ADD)"
        );
        let err = failure("FROM a\nCOPY --form=x a b");
        assert_eq!(
            err.kind,
            ErrorKind::UnknownFlag {
                instruction: Keyword::Copy,
                flag: "form".into(),
                hint: FlagHint::DidYouMean("from".into())
            }
        );
        let err = failure("FROM a\nCOPY --keep-git-dir a b");
        assert_eq!(
            err.kind,
            ErrorKind::UnknownFlag {
                instruction: Keyword::Copy,
                flag: "keep-git-dir".into(),
                hint: FlagHint::BelongsTo(vec![Keyword::Add])
            }
        );
        let err = failure("FROM a\nRUN --network=none --network=host true");
        assert_eq!(
            err.kind,
            ErrorKind::DuplicateFlag {
                instruction: Keyword::Run,
                flag: "network".into()
            }
        );
        assert_eq!(err.location.map(|l| l.pos), Some(Pos::new(2, 20)));
        assert_eq!(
            failure("FROM a\nCOPY --from a b").kind,
            ErrorKind::MissingFlagValue {
                flag: "from".into()
            }
        );
        assert_eq!(
            failure("FROM a\nCOPY --link= a b").kind,
            ErrorKind::MissingFlagValue {
                flag: "link".into()
            }
        );
        assert_eq!(
            failure("FROM a\nCOPY --link=yes a b").kind,
            ErrorKind::InvalidBoolFlag {
                flag: "link".into(),
                value: "yes".into()
            }
        );
        assert_eq!(
            failure("FROM a\nENV --x=1 a=b").kind,
            ErrorKind::UnknownFlag {
                instruction: Keyword::Env,
                flag: "x".into(),
                hint: FlagHint::None
            }
        );
    }

    #[test]
    fn copy_and_add_flags() {
        let CommandKind::Copy(copy) = one("COPY --from=build --chown=app:app --chmod=755 --link --parents --exclude=*.md --exclude=tmp a b /dst/") else { panic!() };
        assert_eq!(copy.from.map(|w| w.text).as_deref(), Some("build"));
        assert_eq!(copy.chown.map(|w| w.text).as_deref(), Some("app:app"));
        assert_eq!(copy.chmod.map(|w| w.text).as_deref(), Some("755"));
        assert!(copy.link && copy.parents && !copy.is_add);
        let excludes: Vec<_> = copy.exclude.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(excludes, ["*.md", "tmp"]);
        let sources: Vec<_> = copy.sources.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(sources, ["a", "b"]);
        assert_eq!(copy.dest.text, "/dst/");

        let CommandKind::Copy(add) =
            one("ADD --checksum=sha256:abc --keep-git-dir=true --link=false https://x/y.tgz /y")
        else {
            panic!()
        };
        assert!(add.is_add && add.keep_git_dir && !add.link);
        assert_eq!(add.checksum.map(|w| w.text).as_deref(), Some("sha256:abc"));
        assert_eq!(add.unpack, None);
        let CommandKind::Copy(add) = one("ADD --unpack=false a.tar /") else {
            panic!()
        };
        assert_eq!(add.unpack, Some(false));

        let CommandKind::Copy(json) = one("COPY [\"a b\", \"/c d/\"]") else {
            panic!()
        };
        assert_eq!(json.sources[0].text, "a b");
        assert_eq!(json.dest.text, "/c d/");

        assert_eq!(
            failure("COPY onlyone").kind,
            ErrorKind::NoDestination(Keyword::Copy)
        );
        assert_eq!(
            failure("COPY a <<EOF\nx\nEOF").kind,
            ErrorKind::HeredocAsDestination(Keyword::Copy)
        );
    }

    #[test]
    fn heredoc_sources_carry_content() {
        let CommandKind::Copy(copy) =
            one("COPY <<one <<-'two' /dst/\nhello $X\none\n\tworld\n\ttwo\n")
        else {
            panic!()
        };
        assert!(copy.sources.is_empty());
        let inline: Vec<_> = copy
            .inline_sources
            .iter()
            .map(|h| (h.name.as_str(), h.effective_content(), h.expand))
            .collect();
        assert_eq!(
            inline,
            [
                ("one", "hello $X\n".to_string(), true),
                ("two", "world\n".to_string(), false)
            ]
        );
    }

    #[test]
    fn run_flags_and_forms() {
        let CommandKind::Run(run) = one("RUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t --network=none --security=insecure make") else { panic!() };
        assert_eq!(run.mounts.len(), 2);
        assert_eq!(run.mounts[1].text, "type=tmpfs,target=/t");
        assert_eq!(run.network, Some(NetworkMode::None));
        assert_eq!(run.security, Some(SecurityMode::Insecure));
        assert!(run.command.shell_form);
        let CommandKind::Run(run) = one("RUN [\"make\", \"-j2\"]") else {
            panic!()
        };
        assert_eq!(run.command.args, ["make", "-j2"]);
        assert!(!run.command.shell_form);
        assert_eq!(
            failure("RUN --network=bridge x").kind,
            ErrorKind::InvalidNetwork("bridge".into())
        );
        assert_eq!(
            failure("RUN --security=root x").kind,
            ErrorKind::InvalidSecurity("root".into())
        );
        assert_eq!(
            failure("RUN").kind,
            ErrorKind::AtLeastOneArgument(Keyword::Run)
        );
    }

    #[test]
    fn arg_declarations() {
        let CommandKind::Arg(args) = one("ARG A B=2 C=\"x y\" D=") else {
            panic!()
        };
        let decls: Vec<_> = args
            .iter()
            .map(|a| {
                (
                    a.name.text.as_str(),
                    a.default.as_ref().map(|d| d.text.as_str()),
                )
            })
            .collect();
        assert_eq!(
            decls,
            [
                ("A", None),
                ("B", Some("2")),
                ("C", Some("\"x y\"")),
                ("D", Some(""))
            ]
        );
        assert_eq!(
            args[1].default.as_ref().map(|d| d.pos),
            Some(Pos::new(1, 9))
        );
        assert_eq!(
            failure("ARG =x").kind,
            ErrorKind::BlankName {
                instruction: Keyword::Arg
            }
        );
        assert_eq!(
            failure("ARG").kind,
            ErrorKind::AtLeastOneArgument(Keyword::Arg)
        );
    }

    #[test]
    fn healthcheck_forms() {
        let CommandKind::Healthcheck(Some(check)) = one("HEALTHCHECK --interval=1m30s --timeout=3s --start-period=0s --start-interval=500ms --retries=3 CMD curl -f http://localhost/") else { panic!() };
        assert_eq!(check.interval, 90_000_000_000);
        assert_eq!(check.timeout, 3_000_000_000);
        assert_eq!(check.start_period, 0);
        assert_eq!(check.start_interval, 500_000_000);
        assert_eq!(check.retries, 3);
        assert!(check.command.shell_form);
        assert_eq!(one("HEALTHCHECK NONE"), CommandKind::Healthcheck(None));
        assert_eq!(
            failure("HEALTHCHECK NONE x").kind,
            ErrorKind::HealthcheckNoneArguments
        );
        assert_eq!(
            failure("HEALTHCHECK CMD").kind,
            ErrorKind::HealthcheckMissingCommand
        );
        assert_eq!(
            failure("HEALTHCHECK CONNECT TCP 7000").kind,
            ErrorKind::HealthcheckUnknownType("CONNECT".into())
        );
        assert!(matches!(
            failure("HEALTHCHECK --interval=1 CMD x").kind,
            ErrorKind::InvalidDuration { .. }
        ));
        assert!(matches!(
            failure("HEALTHCHECK --interval=10us CMD x").kind,
            ErrorKind::InvalidDuration { .. }
        ));
        assert_eq!(
            failure("HEALTHCHECK --retries=-1 CMD x").kind,
            ErrorKind::InvalidRetries("-1".into())
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration("2h45m"), Ok(9_900_000_000_000));
        assert_eq!(parse_go_duration("-1s"), Ok(-1_000_000_000));
        assert_eq!(parse_go_duration("1µs"), Ok(1_000));
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("5d").is_err());
        assert!(parse_go_duration("..5s").is_err());
    }

    #[test]
    fn shell_requires_json() {
        assert_eq!(
            one("SHELL [\"/bin/bash\", \"-c\"]"),
            CommandKind::Shell(vec!["/bin/bash".into(), "-c".into()])
        );
        assert_eq!(failure("SHELL /bin/bash -c").kind, ErrorKind::ShellNotJson);
        assert_eq!(
            failure("SHELL []").kind,
            ErrorKind::AtLeastOneArgument(Keyword::Shell)
        );
    }

    #[test]
    fn onbuild_triggers() {
        assert_eq!(
            one("ONBUILD RUN echo hi"),
            CommandKind::Onbuild("RUN echo hi".into())
        );
        assert_eq!(
            one("ONBUILD RUN <<EOF\necho hi\nEOF\n"),
            CommandKind::Onbuild("RUN <<EOF\necho hi\nEOF".into())
        );
        assert_eq!(
            failure("ONBUILD ONBUILD RUN x").kind,
            ErrorKind::OnbuildChain
        );
        assert_eq!(
            failure("ONBUILD FROM x").kind,
            ErrorKind::OnbuildTrigger(Keyword::From)
        );
        assert_eq!(
            failure("ONBUILD MAINTAINER x").kind,
            ErrorKind::OnbuildTrigger(Keyword::Maintainer)
        );
        let err = failure("ONBUILD COPY --form=a b c");
        assert_eq!(err.location.map(|l| l.pos), Some(Pos::new(1, 14)));
    }

    #[test]
    fn single_value_instructions() {
        assert!(matches!(one("USER app:app"), CommandKind::User(w) if w.text == "app:app"));
        assert!(matches!(one("WORKDIR /a b"), CommandKind::Workdir(w) if w.text == "/a b"));
        assert_eq!(
            failure("USER").kind,
            ErrorKind::ExactlyOneArgument(Keyword::User)
        );
        assert_eq!(
            failure("WORKDIR").kind,
            ErrorKind::ExactlyOneArgument(Keyword::Workdir)
        );
        assert_eq!(
            failure("EXPOSE").kind,
            ErrorKind::AtLeastOneArgument(Keyword::Expose)
        );
        assert_eq!(failure("VOLUME [\" \"]").kind, ErrorKind::EmptyVolume);
        assert_eq!(
            failure("LABEL").kind,
            ErrorKind::AtLeastOneArgument(Keyword::Label)
        );
        assert_eq!(
            failure("ENV =x").kind,
            ErrorKind::BlankName {
                instruction: Keyword::Env
            }
        );
    }
}
