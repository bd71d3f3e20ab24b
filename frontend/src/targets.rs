//! `kiln build --call=targets`: the stages a Dockerfile defines, with the
//! description a comment above each FROM gives it, as BuildKit lists them
//! without building anything.

use serde::Serialize;

use crate::ast::Dockerfile;
use crate::error::Error;
use crate::instruction::{command, CommandKind};
use crate::keyword::Keyword;

/// A stage as `--call=targets` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// The stage's name (lower case); empty for an unnamed stage.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The last stage: what a build without `--target` makes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    /// From a comment above its FROM that starts with its name
    /// (`# build compiles the binary`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The image or stage it starts from, as written.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub base: String,
    /// `FROM --platform=`, as written.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub platform: String,
    /// The line of its FROM.
    #[serde(skip)]
    pub line: usize,
}

/// The stages of `dockerfile`, in order.
pub fn targets(dockerfile: &Dockerfile) -> Result<Vec<Target>, Error> {
    let mut targets = Vec::new();
    for instruction in &dockerfile.instructions {
        if instruction.keyword != Keyword::From {
            continue;
        }
        let CommandKind::From(from) = command(&dockerfile.source, instruction)?.kind else {
            continue;
        };
        let name = from.name.map(|word| word.text).unwrap_or_default();
        targets.push(Target {
            description: doc_comment(dockerfile.source.text(), instruction.start_line, &name)
                .unwrap_or_default(),
            name,
            default: false,
            base: from.image.text,
            platform: from.platform.map(|word| word.text).unwrap_or_default(),
            line: instruction.start_line,
        });
    }
    if let Some(last) = targets.last_mut() {
        last.default = true;
    }
    Ok(targets)
}

/// The description the comments just above line `line` (1-based) give
/// `name`: the rest of the first comment that starts with `name `, as
/// BuildKit reads doc comments. A bare `#` line ends the comments that
/// belong to the instruction; blank lines do not.
pub fn doc_comment(text: &str, line: usize, name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut comments = Vec::new();
    for above in lines[..line.saturating_sub(1).min(lines.len())]
        .iter()
        .rev()
    {
        let trimmed = above.trim();
        if trimmed.is_empty() {
            continue;
        }
        let Some(comment) = trimmed.strip_prefix('#') else {
            break;
        };
        let comment = comment.trim();
        if comment.is_empty() {
            break;
        }
        comments.push(comment);
    }
    comments
        .into_iter()
        .rev()
        .find_map(|comment| comment.strip_prefix(name)?.strip_prefix(' '))
        .map(|description| description.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_listed_with_their_descriptions_and_the_default() {
        let text = "# syntax=docker/dockerfile:1\n\
                    # build compiles the binary\n\
                    FROM alpine AS build\n\
                    RUN true\n\
                    \n\
                    FROM --platform=$BUILDPLATFORM busybox AS second\n\
                    # not about anything\n\
                    FROM alpine\n\
                    # binary is what ships\n\
                    #\n\
                    FROM second AS binary\n";
        let dockerfile = crate::parse(text, "Dockerfile").expect("parses");
        let targets = targets(&dockerfile).expect("targets");
        let listed: Vec<(&str, bool, &str, &str)> = targets
            .iter()
            .map(|t| {
                (
                    t.name.as_str(),
                    t.default,
                    t.description.as_str(),
                    t.base.as_str(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("build", false, "compiles the binary", "alpine"),
                ("second", false, "", "busybox"),
                ("", false, "", "alpine"),
                ("binary", true, "", "second"),
            ],
            "a bare # ends the comments that describe an instruction"
        );
        assert_eq!(targets[1].platform, "$BUILDPLATFORM");
    }
}
