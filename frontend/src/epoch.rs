//! `ARG SOURCE_DATE_EPOCH=STAGE`: the build's epoch taken from the one
//! remote source a stage adds, as BuildKit takes it. Such a stage is
//! `FROM scratch` with ARGs and a single ADD of a single URL (HTTP(S) or
//! git) and nothing else; the builder fetches that source for its time.

use crate::ast::Dockerfile;
use crate::error::{Error, ErrorKind};
use crate::git_ref::GitRef;
use crate::instruction::{commands, ArgDeclaration, Command, CommandKind};
use crate::lower::LowerOptions;
use crate::shell::{EnvList, Lexer};

/// The remote source of the stage SOURCE_DATE_EPOCH names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochSource {
    /// An `http(s)://` URL or a git URL, expanded.
    pub url: String,
    /// ADD's `--checksum`, expanded.
    pub checksum: Option<String>,
}

/// The source of the stage named `name`, or `None` when no stage has that
/// name; an error names the instruction that makes the stage unfit.
pub fn epoch_stage_source(
    dockerfile: &Dockerfile,
    options: &LowerOptions,
    name: &str,
) -> Result<Option<EpochSource>, Error> {
    let commands = commands(&dockerfile.source, &dockerfile.instructions)?;
    let lexer = Lexer::new(dockerfile.directives.escape);
    let mut env = EnvList::new();
    for (key, value) in options.predefined_args(None) {
        env.set(key, options.build_args.get(key).unwrap_or(&value));
    }
    let first_from = commands
        .iter()
        .position(|command| matches!(command.kind, CommandKind::From(_)))
        .unwrap_or(commands.len());
    let declare = |env: &mut EnvList, declarations: &[ArgDeclaration]| {
        for arg in declarations {
            // The stage's epoch cannot depend on itself.
            if arg.name.text == "SOURCE_DATE_EPOCH" {
                continue;
            }
            let value = match (options.build_args.get(&arg.name.text), &arg.default) {
                (Some(given), _) => Some(given.clone()),
                (None, Some(default)) => Some(expand(&lexer, &default.text, env)?),
                (None, None) => None,
            };
            if let Some(value) = value {
                env.set(&arg.name.text, &value);
            }
        }
        Ok::<(), String>(())
    };
    let unfit = |command: &Command, problem: String| {
        dockerfile
            .source
            .error(ErrorKind::EpochStage(problem), command.pos)
    };
    for command in &commands[..first_from] {
        if let CommandKind::Arg(declarations) = &command.kind {
            declare(&mut env, declarations).map_err(|problem| unfit(command, problem))?;
        }
    }
    let lower = name.to_lowercase();
    let Some(start) = commands.iter().position(|command| {
        matches!(&command.kind, CommandKind::From(from)
            if from.name.as_ref().is_some_and(|stage| stage.text == lower))
    }) else {
        return Ok(None);
    };
    let from = &commands[start];
    if let CommandKind::From(image) = &from.kind {
        let base = expand(&lexer, &image.image.text, &env).map_err(|p| unfit(from, p))?;
        if !base.eq_ignore_ascii_case("scratch") {
            return Err(unfit(from, "must use FROM scratch".to_string()));
        }
    }
    let mut source = None;
    for command in commands[start + 1..]
        .iter()
        .take_while(|command| !matches!(command.kind, CommandKind::From(_)))
    {
        match &command.kind {
            CommandKind::Arg(declarations) => {
                declare(&mut env, declarations).map_err(|problem| unfit(command, problem))?;
            }
            CommandKind::Copy(add) if add.is_add => {
                if source.is_some() {
                    return Err(unfit(
                        command,
                        "must contain exactly one remote ADD".to_string(),
                    ));
                }
                let [url] = add.sources.as_slice() else {
                    return Err(unfit(command, one_source()));
                };
                if !add.inline_sources.is_empty() {
                    return Err(unfit(command, one_source()));
                }
                let url = expand(&lexer, &url.text, &env).map_err(|p| unfit(command, p))?;
                let remote = url.starts_with("http://")
                    || url.starts_with("https://")
                    || matches!(GitRef::parse(&url), Ok(Some(_)));
                if !remote {
                    return Err(unfit(command, one_source()));
                }
                let checksum = add
                    .checksum
                    .as_ref()
                    .map(|checksum| expand(&lexer, &checksum.text, &env))
                    .transpose()
                    .map_err(|p| unfit(command, p))?;
                source = Some(EpochSource { url, checksum });
            }
            _ => {
                return Err(unfit(
                    command,
                    format!(
                        "does not meet source-only requirements: unsupported {} instruction",
                        command.keyword
                    ),
                ))
            }
        }
    }
    match source {
        Some(source) => Ok(Some(source)),
        None => Err(unfit(
            from,
            "must contain exactly one remote ADD".to_string(),
        )),
    }
}

fn one_source() -> String {
    "must contain exactly one remote ADD source (an http(s) or git URL)".to_string()
}

fn expand(lexer: &Lexer, word: &str, env: &EnvList) -> Result<String, String> {
    lexer
        .process_word(word, env)
        .map_err(|error| format!("cannot expand {word:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source_of(text: &str, name: &str) -> Result<Option<EpochSource>, Error> {
        let dockerfile = crate::parse(text, "Dockerfile").expect("parses");
        let mut options = LowerOptions::default();
        options
            .build_args
            .insert("VERSION".to_string(), "2".to_string());
        epoch_stage_source(&dockerfile, &options, name)
    }

    #[test]
    fn a_stage_of_one_remote_add_gives_its_url_expanded() {
        let text = "ARG SOURCE_DATE_EPOCH=src\n\
                    ARG HOST=example.org\n\
                    FROM scratch AS Src\n\
                    ARG VERSION=1\n\
                    ADD --checksum=sha256:${VERSION}0 https://$HOST/v$VERSION.tar /\n\
                    FROM busybox\n\
                    RUN true\n";
        assert_eq!(
            source_of(text, "src").expect("fit"),
            Some(EpochSource {
                url: "https://example.org/v2.tar".to_string(),
                checksum: Some("sha256:20".to_string()),
            })
        );
        assert_eq!(source_of(text, "other").expect("no such stage"), None);
    }

    #[test]
    fn anything_but_args_and_one_remote_add_is_refused_at_its_line() {
        let refused = |text: &str| source_of(text, "src").expect_err("unfit").to_string();
        let copy = refused("FROM scratch AS src\nCOPY a /a\n");
        assert!(copy.starts_with("Dockerfile:2:1: SOURCE_DATE_EPOCH stage does not meet source-only requirements: unsupported COPY instruction"), "{copy}");
        let base = refused("FROM busybox AS src\nADD https://h/a /\n");
        assert!(
            base.contains(":1:1: SOURCE_DATE_EPOCH stage must use FROM scratch"),
            "{base}"
        );
        let two = refused("FROM scratch AS src\nADD https://h/a /\nADD https://h/b /\n");
        assert!(
            two.contains(":3:1: SOURCE_DATE_EPOCH stage must contain exactly one remote ADD"),
            "{two}"
        );
        let local = refused("FROM scratch AS src\nADD a.tar /\n");
        assert!(local.contains("exactly one remote ADD source"), "{local}");
        let none = refused("FROM scratch AS src\nARG X=1\n");
        assert!(
            none.contains(":1:1: SOURCE_DATE_EPOCH stage must contain exactly one remote ADD"),
            "{none}"
        );
    }
}
