//! `kiln build --call=outline`: what a build of the target can be given,
//! without building it: the build arguments the target's stages use (with
//! their values and the descriptions of the comments above them), and the
//! secrets and SSH sockets their RUN steps mount, as BuildKit outlines them.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::ast::Dockerfile;
use crate::error::{Error, ErrorKind};
use crate::instruction::{commands, ArgDeclaration, Command, CommandKind};
use crate::lower::LowerOptions;
use crate::mount::{literal_from, parse_mount, MountType};
use crate::paths;
use crate::shell::{EnvList, Environment, Lexer};
use crate::targets::doc_comment;

/// The outline of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outline {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<OutlineArg>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<Mounted>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh: Vec<Mounted>,
}

/// A build argument the target uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutlineArg {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Its value in this build: the `--build-arg`, else its default.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
    pub location: Location,
}

/// A secret or SSH socket a RUN step mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mounted {
    pub name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    pub location: Location,
}

/// Where something is defined, in BuildKit's JSON shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub ranges: Vec<Range>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Range {
    pub start: Position,
    pub end: Position,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Position {
    pub line: usize,
}

impl Location {
    fn lines(start: usize, end: usize) -> Location {
        Location {
            ranges: vec![Range {
                start: Position { line: start },
                end: Position { line: end },
            }],
        }
    }

    fn line(&self) -> usize {
        self.ranges.first().map_or(0, |range| range.start.line)
    }
}

/// An environment that notes the names an expansion looks up.
struct Lookups<'e> {
    env: &'e EnvList,
    names: RefCell<BTreeSet<String>>,
}

impl Environment for Lookups<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.names.borrow_mut().insert(name.to_string());
        self.env.get(name)
    }
}

/// What an ARG definition is known by.
struct ArgInfo {
    outline: OutlineArg,
    /// The arguments its value was made from, and theirs.
    deps: BTreeSet<String>,
}

struct Outliner<'a> {
    dockerfile: &'a Dockerfile,
    options: &'a LowerOptions,
    lexer: Lexer,
    args: BTreeMap<String, ArgInfo>,
    used: BTreeSet<String>,
}

impl Outliner<'_> {
    /// Expands `text` with `env`, noting the arguments it refers to.
    fn expand(&self, text: &str, env: &EnvList) -> (String, BTreeSet<String>) {
        let lookups = Lookups {
            env,
            names: RefCell::new(BTreeSet::new()),
        };
        let value = self
            .lexer
            .process_word(text, &lookups)
            .unwrap_or_else(|_| text.to_string());
        (value, lookups.names.into_inner())
    }

    /// Declares `arg` in `env`, recording what it is known by unless it
    /// only takes the global value of its name.
    fn declare(
        &mut self,
        command: &Command,
        arg: &ArgDeclaration,
        env: &mut EnvList,
        global: Option<&EnvList>,
    ) {
        let key = &arg.name.text;
        let mut deps = BTreeSet::new();
        let value = match (self.options.build_args.get(key), &arg.default) {
            (Some(given), _) => Some(given.clone()),
            (None, Some(default)) => {
                let (value, names) = self.expand(&default.text, env);
                for name in names {
                    if let Some(info) = self.args.get(&name) {
                        deps.extend(info.deps.iter().cloned());
                    }
                    deps.insert(name);
                }
                Some(value)
            }
            (None, None) => {
                let inherited = global.and_then(|global| global.get(key));
                if let Some(value) = inherited {
                    env.set(key, value);
                    self.used.insert(key.clone());
                    return;
                }
                None
            }
        };
        if let Some(value) = &value {
            env.set(key, value);
        }
        if global.is_some() {
            self.used.insert(key.clone());
        }
        let text = self.dockerfile.source.text();
        self.args.insert(
            key.clone(),
            ArgInfo {
                outline: OutlineArg {
                    name: key.clone(),
                    description: doc_comment(text, command.start_line, key).unwrap_or_default(),
                    value: value.unwrap_or_default(),
                    location: Location::lines(command.start_line, command.end_line),
                },
                deps,
            },
        );
    }
}

/// The outline of the target `options` names (the last stage by default),
/// with the values `options`' build arguments give.
pub fn outline(dockerfile: &Dockerfile, options: &LowerOptions) -> Result<Outline, Error> {
    let commands = commands(&dockerfile.source, &dockerfile.instructions)?;
    let mut outliner = Outliner {
        dockerfile,
        options,
        lexer: Lexer::new(dockerfile.directives.escape),
        args: BTreeMap::new(),
        used: BTreeSet::new(),
    };
    let mut global_env = EnvList::new();
    let mut stages: Vec<(&Command, Vec<&Command>)> = Vec::new();
    for command in &commands {
        match (&command.kind, stages.last_mut()) {
            (CommandKind::From(_), _) => stages.push((command, Vec::new())),
            (CommandKind::Arg(declarations), None) => {
                for arg in declarations {
                    outliner.declare(command, arg, &mut global_env, None);
                }
            }
            (_, Some((_, stage_commands))) => stage_commands.push(command),
            (_, None) => {}
        }
    }
    let from_of = |command: &Command| match &command.kind {
        CommandKind::From(from) => Some(from.clone()),
        _ => None,
    };
    let stage_index = |reference: &str| {
        let lower = reference.to_lowercase();
        stages
            .iter()
            .position(|(from, _)| {
                from_of(from)
                    .and_then(|f| f.name)
                    .is_some_and(|name| name.text == lower)
            })
            .or_else(|| {
                reference
                    .parse::<usize>()
                    .ok()
                    .filter(|&i| i < stages.len())
            })
    };
    let target = match &options.target {
        Some(name) => stage_index(name).ok_or_else(|| {
            Error::new(ErrorKind::UnknownTarget {
                name: name.clone(),
                stages: stages
                    .iter()
                    .filter_map(|(from, _)| from_of(from).and_then(|f| f.name).map(|n| n.text))
                    .collect(),
            })
        })?,
        None => stages
            .len()
            .checked_sub(1)
            .ok_or_else(|| Error::new(ErrorKind::NoStages))?,
    };
    // The stages the target needs, found from the target back.
    let mut needed = vec![false; stages.len()];
    let mut pending = vec![target];
    while let Some(index) = pending.pop() {
        if std::mem::replace(&mut needed[index], true) {
            continue;
        }
        let (from_command, stage_commands) = &stages[index];
        let mut references = Vec::new();
        if let Some(from) = from_of(from_command) {
            references.push(outliner.expand(&from.image.text, &global_env).0);
        }
        for command in stage_commands {
            match &command.kind {
                CommandKind::Copy(copy) => {
                    if let Some(from) = &copy.from {
                        references.push(outliner.expand(&from.text, &global_env).0);
                    }
                }
                CommandKind::Run(run) => {
                    references.extend(run.mounts.iter().filter_map(|m| literal_from(&m.text)));
                }
                _ => {}
            }
        }
        pending.extend(
            references
                .iter()
                .filter_map(|reference| stage_index(reference))
                .filter(|&dependency| dependency < index),
        );
    }
    let mut secrets: BTreeMap<String, Mounted> = BTreeMap::new();
    let mut ssh: BTreeMap<String, Mounted> = BTreeMap::new();
    let mut stage_envs: Vec<EnvList> = Vec::new();
    for (index, (from_command, stage_commands)) in stages.iter().enumerate() {
        let from = from_of(from_command);
        let base_env = from
            .as_ref()
            .map(|from| outliner.expand(&from.image.text, &global_env))
            .and_then(|(image, _)| stage_index(&image))
            .filter(|&base| base < index)
            .map(|base| stage_envs[base].clone())
            .unwrap_or_default();
        let mut env = base_env;
        if !needed[index] {
            stage_envs.push(env);
            continue;
        }
        if let Some(from) = &from {
            for word in std::iter::once(&from.image).chain(from.platform.as_ref()) {
                let (_, names) = outliner.expand(&word.text, &global_env);
                outliner.used.extend(names);
            }
        }
        for command in stage_commands {
            match &command.kind {
                CommandKind::Arg(declarations) => {
                    for arg in declarations {
                        outliner.declare(command, arg, &mut env, Some(&global_env));
                    }
                }
                CommandKind::Env(pairs) => {
                    let values: Vec<(String, String)> = pairs
                        .iter()
                        .map(|pair| {
                            (
                                outliner.expand(&pair.key.text, &env).0,
                                outliner.expand(&pair.value.text, &env).0,
                            )
                        })
                        .collect();
                    for (key, value) in values {
                        env.set(&key, &value);
                    }
                }
                CommandKind::Run(run) => {
                    for mount in &run.mounts {
                        let mut expand = |value: &str| Ok(outliner.expand(value, &env).0);
                        let Ok(spec) = parse_mount(&mount.text, &mut expand) else {
                            continue;
                        };
                        let location = Location::lines(command.start_line, command.end_line);
                        let (list, name) = match spec.kind {
                            MountType::Secret => {
                                let name = spec
                                    .id
                                    .clone()
                                    .or_else(|| spec.target.as_deref().map(paths::base));
                                (&mut secrets, name)
                            }
                            MountType::Ssh => (
                                &mut ssh,
                                Some(spec.id.clone().unwrap_or_else(|| "default".to_string())),
                            ),
                            _ => continue,
                        };
                        if let Some(name) = name {
                            list.entry(name.clone()).or_insert(Mounted {
                                name,
                                required: spec.required,
                                location,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        stage_envs.push(env);
    }
    // An argument used brings in the arguments its value was made from.
    let mut used = outliner.used.clone();
    for name in &outliner.used {
        if let Some(info) = outliner.args.get(name) {
            used.extend(info.deps.iter().cloned());
        }
    }
    let mut args: Vec<OutlineArg> = outliner
        .args
        .into_iter()
        .filter(|(name, _)| used.contains(name))
        .map(|(_, info)| info.outline)
        .collect();
    args.sort_by_key(|arg| arg.location.line());
    let by_line = |map: BTreeMap<String, Mounted>| {
        let mut list: Vec<Mounted> = map.into_values().collect();
        list.sort_by_key(|mounted| mounted.location.line());
        list
    };
    let (target_from, _) = &stages[target];
    let name = from_of(target_from)
        .and_then(|from| from.name)
        .map(|word| word.text)
        .unwrap_or_default();
    Ok(Outline {
        description: doc_comment(dockerfile.source.text(), target_from.start_line, &name)
            .unwrap_or_default(),
        name,
        args,
        secrets: by_line(secrets),
        ssh: by_line(ssh),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outline_of(text: &str, build_args: &[(&str, &str)], target: Option<&str>) -> Outline {
        let dockerfile = crate::parse(text, "Dockerfile").expect("parses");
        let mut options = LowerOptions {
            target: target.map(str::to_string),
            ..LowerOptions::default()
        };
        for (key, value) in build_args {
            options
                .build_args
                .insert(key.to_string(), value.to_string());
        }
        outline(&dockerfile, &options).expect("outlines")
    }

    #[test]
    fn args_of_the_target_with_values_and_descriptions() {
        let text = "ARG base=busybox\n\
                    ARG unused=x\n\
                    # VERSION is the release\n\
                    FROM ${base} AS build\n\
                    # VERSION is the release\n\
                    ARG VERSION=1.0\n\
                    FROM scratch AS other\n\
                    ARG OTHER\n\
                    # app ships\n\
                    FROM build AS app\n\
                    ARG PORT\n";
        let outline = outline_of(text, &[("PORT", "80")], Some("app"));
        assert_eq!(outline.name, "app");
        assert_eq!(outline.description, "ships");
        let args: Vec<(&str, &str, &str)> = outline
            .args
            .iter()
            .map(|a| (a.name.as_str(), a.value.as_str(), a.description.as_str()))
            .collect();
        assert_eq!(
            args,
            [
                ("base", "busybox", ""),
                ("VERSION", "1.0", "is the release"),
                ("PORT", "80", ""),
            ]
        );
    }

    #[test]
    fn secrets_and_ssh_of_the_stages_needed() {
        let text = "FROM busybox AS tools\n\
                    RUN --mount=type=secret,target=/root/.netrc,required --mount=type=ssh true\n\
                    FROM busybox AS unused\n\
                    RUN --mount=type=secret,id=nope true\n\
                    FROM scratch\n\
                    ARG ENV=prod\n\
                    COPY --from=tools /x /x\n\
                    RUN --mount=type=secret,id=key-${ENV} --mount=type=ssh,id=git,required=true true\n";
        let outline = outline_of(text, &[], None);
        let secrets: Vec<(&str, bool)> = outline
            .secrets
            .iter()
            .map(|s| (s.name.as_str(), s.required))
            .collect();
        assert_eq!(secrets, [(".netrc", true), ("key-prod", false)]);
        let ssh: Vec<(&str, bool)> = outline
            .ssh
            .iter()
            .map(|s| (s.name.as_str(), s.required))
            .collect();
        assert_eq!(ssh, [("default", false), ("git", true)]);
    }
}
