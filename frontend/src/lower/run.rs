//! RUN: the process and its environment, heredoc scripts, `--mount`s with
//! their defaults and sources, `--network` and `--security`.

use crate::error::{Error, ErrorKind, Pos};
use crate::graph::{Action, InlineFile, Mount, Network, RunStep, Security, Sharing, Source, Step};
use crate::instruction::{Command, NetworkMode, RunCommand, SecurityMode};
use crate::mount::{parse_mount, MountSpec, MountType};
use crate::parser::parse_heredoc_word;
use crate::paths;
use crate::shell::EnvList;

use super::expand::Expander;
use super::options::LowerOptions;
use super::state::{LoweredStage, ResolveSource};

/// Lowers a RUN into `step`: its action, and what progress shows for it
/// (secret variables masked, a heredoc script summarised). Returns the
/// history entry.
pub(super) fn lower_run(
    expander: &Expander,
    options: &LowerOptions,
    stage: &mut LoweredStage,
    command: &Command,
    run: &RunCommand,
    resolve_source: &mut ResolveSource,
    step: &mut Step,
) -> Result<String, Error> {
    let (run_step, display_suffix) =
        run_step(expander, options, stage, command, run, resolve_source)?;
    let secret_variables: Vec<&str> = run_step
        .mounts
        .iter()
        .filter_map(|mount| match mount {
            Mount::Secret { env: Some(env), .. } => Some(env.as_str()),
            _ => None,
        })
        .collect();
    if !secret_variables.is_empty() {
        // The step sees the secret there, not the stage's value: show
        // neither, as BuildKit masks it.
        let mut masked = stage.state.env.clone();
        for variable in secret_variables {
            masked.set(variable, "****");
        }
        step.instruction = expander.display_text(&command.text, &masked);
    }
    step.instruction.push_str(&display_suffix);
    let history = format!(
        "RUN {} # buildkit",
        run_history(&run_step.args, &stage.state.args, &stage.state.env)
    );
    step.action = Action::Run(run_step);
    Ok(history)
}

/// The step, and what progress shows after the instruction for a heredoc.
fn run_step(
    expander: &Expander,
    options: &LowerOptions,
    stage: &mut LoweredStage,
    command: &Command,
    run: &RunCommand,
    resolve_source: &mut ResolveSource,
) -> Result<(RunStep, String), Error> {
    let source = expander.source;
    let mut mounts = Vec::with_capacity(run.mounts.len());
    let mut ssh_count = 0;
    for spec_word in &run.mounts {
        let env = &stage.state.env;
        let mut expand_value = |value: &str| {
            expander
                .lexer
                .process_word(value, env)
                .map_err(|e| e.to_string())
        };
        let spec = parse_mount(&spec_word.text, &mut expand_value)
            .map_err(|message| source.error(ErrorKind::InvalidMount(message), spec_word.pos))?;
        mounts.push(mount(
            expander,
            stage,
            spec,
            spec_word.pos,
            &mut ssh_count,
            resolve_source,
        )?);
    }
    let security = match run.security {
        Some(SecurityMode::Insecure) if !options.allow_insecure => {
            return Err(source.error(ErrorKind::InsecureNotAllowed, command.pos))
        }
        Some(SecurityMode::Insecure) => Security::Insecure,
        Some(SecurityMode::Sandbox) | None => Security::Sandbox,
    };
    let network = match run.network {
        Some(NetworkMode::None) => Network::None,
        Some(NetworkMode::Host) => Network::Host,
        // BuildKit's default network for RUN is the host's, unless the
        // build says otherwise.
        Some(NetworkMode::Default) | None => options.default_network,
    };
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
    Ok((
        RunStep {
            args,
            env: state.env.to_key_values(),
            proxy_env: options.proxy_env(),
            user: state.config.user.clone(),
            workdir: state.workdir().to_string(),
            network,
            security,
            mounts,
            inline_files,
        },
        display_suffix,
    ))
}

/// A `--mount` with its defaults filled in, paths resolved and `from`
/// resolved. SSH mounts without a target are numbered by `ssh_count`.
fn mount(
    expander: &Expander,
    stage: &mut LoweredStage,
    spec: MountSpec,
    pos: Pos,
    ssh_count: &mut usize,
    resolve_source: &mut ResolveSource,
) -> Result<Mount, Error> {
    let source = expander.source;
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
                Some(name) => resolve_source(stage, name, pos)?,
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
                Some(name) => Some(resolve_source(stage, name, pos)?),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
