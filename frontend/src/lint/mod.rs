//! Build checks (`kiln build --call=check`, and the warnings at the start of
//! a build): BuildKit's lint rules over a parsed Dockerfile.
//!
//! What is checked and where follows BuildKit: rules about the file as
//! written (casing, stage names, MAINTAINER, comments, FROM lines) look at
//! every stage; rules about what a step does (variables, WORKDIR, CMD...)
//! look at the stages the target needs in a build, and at every stage in
//! `--call=check`.
//!
//! Which rules run is set by the `# check=` parser directive, or instead by
//! the build argument `BUILDKIT_DOCKERFILE_CHECK`, and per instruction by a
//! `# check=skip=...` comment just above it.
//!
//! - `rules`: the rule set, names and descriptions.
//! - `checks`: the walk over the Dockerfile that finds what breaks them.

mod checks;
mod rules;

use std::collections::BTreeSet;

use serde::Serialize;

use crate::ast::{Dockerfile, Source};
use crate::error::{Error, ErrorKind, Pos};
use crate::ignore::DockerIgnore;
use crate::lower::{BaseImages, LowerOptions};

pub use rules::Rule;

/// The build argument that replaces the `# check=` directive.
pub const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

/// One place where a rule is broken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: Rule,
    /// What is wrong, about this place.
    pub message: String,
    /// The line reported (1-based).
    pub line: usize,
    /// The first line of the instruction it is about, whose comments can
    /// skip the rule.
    #[serde(skip)]
    pub instruction_line: usize,
}

impl Finding {
    /// The one-line form BuildKit prints during a build:
    /// `Rule: message (line N)`.
    pub fn short(&self) -> String {
        format!(
            "{}: {} (line {})",
            self.rule.name(),
            self.message,
            self.line
        )
    }
}

/// Which rules run, and whether a finding fails the build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckConfig {
    pub skip_all: bool,
    pub skip: BTreeSet<String>,
    pub experimental_all: bool,
    pub experimental: BTreeSet<String>,
    /// `error=true`: findings fail the build.
    pub error: bool,
}

impl CheckConfig {
    /// Reads `skip=Rule1,Rule2;error=true;experimental=Rule3` (`all` for
    /// every rule), as the directive and the build argument write it.
    pub fn parse(text: &str) -> Result<CheckConfig, String> {
        let mut config = CheckConfig::default();
        let text = text.trim();
        if text.is_empty() {
            return Ok(config);
        }
        for part in text.split(';') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!(
                    "invalid check option {part:?}: expected skip=, error= or experimental="
                ));
            };
            let value = value.trim();
            let names = || {
                value
                    .split(',')
                    .map(|name| name.trim().to_string())
                    .filter(|name| !name.is_empty())
                    .collect::<BTreeSet<String>>()
            };
            match key.trim() {
                "skip" if value == "all" => config.skip_all = true,
                "skip" => config.skip.extend(names()),
                "experimental" if value == "all" => config.experimental_all = true,
                "experimental" => config.experimental.extend(names()),
                "error" => {
                    config.error = parse_bool(value).ok_or_else(|| {
                        format!("invalid check option {part:?}: error takes true or false")
                    })?
                }
                other => {
                    return Err(format!(
                        "invalid check option {other:?}: expected skip, error or experimental"
                    ))
                }
            }
        }
        Ok(config)
    }

    /// Whether `rule` runs under this configuration. Skipping does not
    /// apply to experimental rules, which only run when asked for.
    pub fn runs(&self, rule: Rule) -> bool {
        if rule.experimental() {
            return self.experimental_all || self.experimental.contains(rule.name());
        }
        !self.skip_all && !self.skip.contains(rule.name())
    }

    /// This configuration with what `other` adds (a comment above one
    /// instruction).
    fn merged(&self, other: &CheckConfig) -> CheckConfig {
        let mut merged = self.clone();
        merged.skip_all |= other.skip_all;
        merged.skip.extend(other.skip.iter().cloned());
        merged.experimental_all |= other.experimental_all;
        merged
            .experimental
            .extend(other.experimental.iter().cloned());
        merged
    }
}

/// Go's strconv.ParseBool, which BuildKit reads `error=` with.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// What a check found, and under which configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub config: CheckConfig,
}

impl Report {
    /// With `error=true` and findings: the error that fails the build,
    /// naming the rules and pointing at the first finding.
    pub fn violation(&self, source: &Source) -> Option<Error> {
        if !self.config.error {
            return None;
        }
        let first = self.findings.first()?;
        let mut rules: Vec<&str> = Vec::new();
        for finding in &self.findings {
            if !rules.contains(&finding.rule.name()) {
                rules.push(finding.rule.name());
            }
        }
        Some(source.error(
            ErrorKind::LintViolation(rules.join(", ")),
            Pos::new(first.line, 1),
        ))
    }
}

/// Which stages are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The target and the stages it needs, as a build checks them.
    Target,
    /// Every stage, as `--call=check` does.
    AllStages,
}

/// Runs the build checks on `dockerfile` for a build with `options`
/// (target, build arguments, platforms). `ignore` is the context's ignore
/// file, for CopyIgnoredFile; `images` gives the environment of base
/// images, for UndefinedVar (a stage on an image it cannot find is not
/// checked for undefined variables).
pub fn check(
    dockerfile: &Dockerfile,
    options: &LowerOptions,
    scope: Scope,
    ignore: &DockerIgnore,
    images: &mut dyn BaseImages,
) -> Result<Report, Error> {
    let config = match options.build_args.get(CHECK_BUILD_ARG) {
        Some(value) => CheckConfig::parse(value).map_err(|reason| {
            Error::new(ErrorKind::InvalidCheckOption {
                source_name: format!("build argument {CHECK_BUILD_ARG}"),
                reason,
            })
        })?,
        None => match &dockerfile.directives.check {
            Some(value) => CheckConfig::parse(value).map_err(|reason| {
                dockerfile.source.error(
                    ErrorKind::InvalidCheckOption {
                        source_name: "check directive".to_string(),
                        reason,
                    },
                    Pos::new(check_directive_line(&dockerfile.source), 1),
                )
            })?,
            None => CheckConfig::default(),
        },
    };
    let mut findings = checks::run(dockerfile, options, scope, ignore, images);
    let source = &dockerfile.source;
    findings.retain(|finding| {
        let local = comment_config(source, finding.instruction_line);
        match local {
            Some(local) => config.merged(&local).runs(finding.rule),
            None => config.runs(finding.rule),
        }
    });
    findings.sort_by_key(|finding| finding.line);
    Ok(Report { findings, config })
}

/// The `# check=` comment among the comments just above line `line`, which
/// applies to the instruction there. Only its first word counts: the rest
/// is commentary (`# check=skip=Rule // why`).
fn comment_config(source: &Source, line: usize) -> Option<CheckConfig> {
    comments_above(source, line).iter().find_map(|comment| {
        let (name, value) = comment.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("check") {
            return None;
        }
        let value = value.trim_start().split(' ').next().unwrap_or_default();
        CheckConfig::parse(value).ok()
    })
}

/// The comments (text after `#`, trimmed) on the lines directly above line
/// `line`, nearest last; a blank line, a bare `#` or an instruction ends
/// them, and the parser directives at the top of the file are not comments.
pub(crate) fn comments_above(source: &Source, line: usize) -> Vec<String> {
    let first_comment_line = directive_lines(source) + 1;
    let mut comments = Vec::new();
    let mut above = line;
    while above > first_comment_line {
        above -= 1;
        let Some(comment) = source.line(above).trim().strip_prefix('#') else {
            break;
        };
        let comment = comment.trim();
        if comment.is_empty() {
            break;
        }
        comments.push(comment.to_string());
    }
    comments.reverse();
    comments
}

/// The name of the parser directive on line `line`, if it is one by its
/// form (`# name=value`).
fn directive_name(source: &Source, line: usize) -> Option<String> {
    let (name, _) = source
        .line(line)
        .trim()
        .strip_prefix('#')?
        .split_once('=')?;
    let name = name.trim().to_ascii_lowercase();
    matches!(name.as_str(), "syntax" | "escape" | "check").then_some(name)
}

/// How many lines at the top of the file are parser directives.
fn directive_lines(source: &Source) -> usize {
    (1..=source.line_count())
        .take_while(|&line| directive_name(source, line).is_some())
        .count()
}

/// The line of the `# check=` directive (the first line when there is none).
fn check_directive_line(source: &Source) -> usize {
    (1..=directive_lines(source))
        .find(|&line| directive_name(source, line).as_deref() == Some("check"))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests;
