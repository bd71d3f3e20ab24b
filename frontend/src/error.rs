//! Errors and warnings of the frontend. Each error says what is wrong in
//! words a Dockerfile author can act on, and where: file, line and column,
//! with the line itself.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::chmod::ChmodError;
use crate::keyword::Keyword;
use crate::shell::ShellError;

/// A place in a Dockerfile: 1-based line and 1-based character column.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub fn new(line: usize, column: usize) -> Self {
        Pos { line, column }
    }
}

/// The file, position and source line an error points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub pos: Pos,
    pub line_text: String,
}

/// A frontend error, with its location when it comes from the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub location: Option<Box<Location>>,
}

impl Error {
    /// An error that is not tied to a place in the Dockerfile (a bad command
    /// line option, for instance).
    pub fn new(kind: ErrorKind) -> Self {
        Error {
            kind,
            location: None,
        }
    }

    /// Attaches the file name to an error about the file as a whole.
    pub(crate) fn in_file(mut self, name: &str) -> Self {
        if self.location.is_none() {
            self.location = Some(Box::new(Location {
                file: name.to_string(),
                pos: Pos::new(1, 1),
                line_text: String::new(),
            }));
        }
        self
    }

    /// The offending line with a caret under the column, ready to print
    /// below the message.
    pub fn snippet(&self) -> Option<String> {
        let location = self.location.as_ref()?;
        let number = location.pos.line.to_string();
        let gutter = " ".repeat(number.len());
        let text = location.line_text.replace('\t', " ");
        let caret_indent = " ".repeat(location.pos.column.saturating_sub(1));
        Some(format!(
            "{gutter} |\n{number} | {text}\n{gutter} | {caret_indent}^"
        ))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(loc) => write!(
                f,
                "{}:{}:{}: {}",
                loc.file, loc.pos.line, loc.pos.column, self.kind
            ),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Expansion { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("the Dockerfile is empty")]
    Empty,
    /// The stage `ARG SOURCE_DATE_EPOCH` names cannot give the epoch.
    #[error("SOURCE_DATE_EPOCH stage {0}")]
    EpochStage(String),
    #[error("the Dockerfile has no instructions, only comments and blank lines")]
    NoInstructions,
    #[error("the Dockerfile is not valid UTF-8")]
    NotUtf8,
    #[error("only one `{0}` parser directive can be used")]
    DuplicateDirective(String),
    #[error("invalid escape character {0:?}: the escape directive accepts only ` or \\")]
    InvalidEscapeCharacter(String),
    #[error("unterminated heredoc: no line consisting of `{0}` ends it")]
    UnterminatedHeredoc(String),
    #[error("unknown instruction: {name}{}", did_you_mean(suggestion))]
    UnknownInstruction {
        name: String,
        suggestion: Option<String>,
    },
    #[error("a JSON array of arguments must contain only strings")]
    JsonNotStrings,
    #[error("{0} must have two arguments: {0} NAME VALUE, or {0} NAME=VALUE ...")]
    NeedsNameAndValue(Keyword),
    #[error("{instruction}: can't find = in {word:?}; write it as name=value")]
    MissingEquals { instruction: Keyword, word: String },
    #[error("{instruction} names can not be blank")]
    BlankName { instruction: Keyword },
    #[error("unknown flag --{flag} for {instruction}{}", flag_hint(hint))]
    UnknownFlag {
        instruction: Keyword,
        flag: String,
        hint: FlagHint,
    },
    #[error("--{flag} is given more than once to {instruction}")]
    DuplicateFlag { instruction: Keyword, flag: String },
    #[error("--{flag} needs a value: write --{flag}=VALUE")]
    MissingFlagValue { flag: String },
    #[error("--{flag} takes true or false, not {value:?}")]
    InvalidBoolFlag { flag: String, value: String },
    #[error("{0} requires at least one argument")]
    AtLeastOneArgument(Keyword),
    #[error("{0} requires exactly one argument")]
    ExactlyOneArgument(Keyword),
    #[error("{0} requires at least two arguments: one or more sources and a destination")]
    NoDestination(Keyword),
    #[error("{0} cannot take a heredoc as its destination")]
    HeredocAsDestination(Keyword),
    #[error("FROM requires either one or three arguments: FROM IMAGE [AS NAME]")]
    FromArguments,
    #[error("invalid stage name {0:?}: a name starts with a letter and contains only letters, digits, '-', '_' and '.'")]
    InvalidStageName(String),
    #[error("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")]
    OnbuildChain,
    #[error("{0} isn't allowed as an ONBUILD trigger")]
    OnbuildTrigger(Keyword),
    #[error(
        "SHELL requires the arguments in JSON form, for example SHELL [\"/bin/bash\", \"-c\"]"
    )]
    ShellNotJson,
    #[error("HEALTHCHECK NONE takes no arguments")]
    HealthcheckNoneArguments,
    #[error("missing command after HEALTHCHECK CMD")]
    HealthcheckMissingCommand,
    #[error("unknown type {0:?} in HEALTHCHECK (try CMD or NONE)")]
    HealthcheckUnknownType(String),
    #[error("invalid duration {value:?} for --{flag}: {reason}")]
    InvalidDuration {
        flag: String,
        value: String,
        reason: String,
    },
    #[error("invalid value {0:?} for --retries: it must be a whole number of 0 or more")]
    InvalidRetries(String),
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    #[error("invalid --mount: {0}")]
    InvalidMount(String),
    #[error("unsupported network mode {0:?}: use default, none or host")]
    InvalidNetwork(String),
    #[error("unsupported security mode {0:?}: use sandbox or insecure")]
    InvalidSecurity(String),
    #[error("the Dockerfile has no FROM instruction, so there is no stage to build")]
    NoStages,
    #[error("{0} appears before the first FROM; only ARG can come before FROM")]
    InstructionBeforeFrom(Keyword),
    #[error("duplicate stage name {name:?}: it is already used on line {first_line}")]
    DuplicateStageName { name: String, first_line: usize },
    #[error(
        "target stage {name:?} could not be found{}",
        known_stages(name, stages)
    )]
    UnknownTarget { name: String, stages: Vec<String> },
    #[error("invalid stage index {index}: the Dockerfile has stages 0 to {}", count.saturating_sub(1))]
    InvalidStageIndex { index: usize, count: usize },
    #[error("stage {name:?} is defined on line {defined_at}, after this instruction; only stages defined earlier can be used")]
    ForwardStageReference { name: String, defined_at: usize },
    #[error("a stage cannot use itself ({0:?})")]
    SelfReference(String),
    #[error("FROM {0} expands to an empty image name; give the variable a value with --build-arg or a default in its ARG")]
    EmptyBaseName(String),
    #[error("invalid platform {value:?}: {reason}")]
    InvalidPlatform { value: String, reason: String },
    #[error(
        "empty platform value from expression {expression}{} (FROM --platform)",
        did_you_mean(suggestion)
    )]
    EmptyPlatform {
        expression: String,
        suggestion: Option<String>,
    },
    #[error("{error} (while expanding {word:?})")]
    Expansion { word: String, error: ShellError },
    #[error("--from does not expand variables ({0:?}); name the image in a stage, `FROM ${{VAR}} AS src`, and use --from=src")]
    FromWithVariable(String),
    #[error("source {0:?} is outside the build context")]
    SourceOutsideContext(String),
    #[error("{0} cannot copy from a URL; use ADD for remote files")]
    UrlInCopy(Keyword),
    #[error("{0} cannot copy from a git repository; use ADD for git sources")]
    GitInCopy(Keyword),
    #[error("--checksum is only valid for a single http(s) source of ADD, or a single git source")]
    ChecksumNeedsOneUrl,
    #[error("invalid git URL {url:?}: {error}")]
    InvalidGitUrl {
        url: String,
        error: crate::git_ref::GitRefError,
    },
    #[error("invalid checksum {0} for Git URL, expected hex commit hash")]
    InvalidGitChecksum(String),
    #[error("checksum mismatch {flag:?} != {query:?}: --checksum and the URL's commit differ")]
    GitChecksumMismatch { flag: String, query: String },
    #[error(
        "inconsistent keep-git-dir configuration: --keep-git-dir and the URL's keep-git-dir differ"
    )]
    InconsistentKeepGitDir,
    #[error("invalid --checksum {0:?}: expected ALGORITHM:HEX, for example sha256:0123…")]
    InvalidChecksum(String),
    #[error("invalid --chmod {value:?}: {reason}")]
    InvalidChmod { value: String, reason: ChmodError },
    #[error("invalid signal {0:?}: use a name such as SIGTERM or a number")]
    InvalidSignal(String),
    #[error("invalid port {port:?}: {reason}")]
    InvalidPort { port: String, reason: String },
    #[error("invalid pattern {pattern:?}: {reason}")]
    InvalidIgnorePattern { pattern: String, reason: String },
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("WORKDIR {0:?} expands to an empty path")]
    EmptyWorkdir(String),
    #[error("ONBUILD trigger {0:?} must be exactly one instruction")]
    TriggerNotOneInstruction(String),
    #[error("mount target {0:?} is invalid: a mount needs a target other than /")]
    InvalidMountTarget(String),
    #[error("--security=insecure must be allowed with --allow security.insecure")]
    InsecureNotAllowed,
    #[error("cannot use base image {reference}: {message}")]
    BaseImage { reference: String, message: String },
    #[error("cannot use the build context {name} (--build-context): {message}")]
    NamedContext { name: String, message: String },
    #[error("lint violation found for rules: {0} (the check directive or BUILDKIT_DOCKERFILE_CHECK says error=true)")]
    LintViolation(String),
    #[error("invalid {source_name}: {reason}")]
    InvalidCheckOption { source_name: String, reason: String },
    #[error("in ONBUILD trigger `{trigger}` of {image}: {error}")]
    Trigger {
        image: String,
        trigger: String,
        error: Box<ErrorKind>,
    },
}

/// Extra help for a flag that an instruction does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagHint {
    None,
    /// A flag of this instruction with a similar spelling.
    DidYouMean(String),
    /// The flag exists, but on other instructions.
    BelongsTo(Vec<Keyword>),
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean {s}?)"),
        None => String::new(),
    }
}

fn flag_hint(hint: &FlagHint) -> String {
    match hint {
        FlagHint::None => String::new(),
        FlagHint::DidYouMean(flag) => format!(" (did you mean --{flag}?)"),
        FlagHint::BelongsTo(owners) => {
            let owners: Vec<String> = owners.iter().map(ToString::to_string).collect();
            format!(" (it is a flag of {})", owners.join(" and "))
        }
    }
}

fn known_stages(name: &str, stages: &[String]) -> String {
    let names: Vec<&str> = stages.iter().map(String::as_str).collect();
    if let Some(close) = crate::suggest::closest(name, &names) {
        format!(" (did you mean {close}?)")
    } else if stages.is_empty() {
        " (the Dockerfile has no named stages)".to_string()
    } else {
        format!(" (named stages: {})", stages.join(", "))
    }
}

/// Something that parses but is probably a mistake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// The line it concerns, when it concerns one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_points_at_the_column() {
        let error = Error {
            kind: ErrorKind::UnknownInstruction {
                name: "RUNN".into(),
                suggestion: Some("RUN".into()),
            },
            location: Some(Box::new(Location {
                file: "Dockerfile".into(),
                pos: Pos::new(12, 2),
                line_text: "\tRUNN echo".into(),
            })),
        };
        assert_eq!(
            error.to_string(),
            "Dockerfile:12:2: unknown instruction: RUNN (did you mean RUN?)"
        );
        assert_eq!(
            error.snippet().as_deref(),
            Some("   |\n12 |  RUNN echo\n   |  ^")
        );
    }
}
