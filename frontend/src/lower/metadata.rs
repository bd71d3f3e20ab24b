//! Instructions that change the image configuration: ENV, LABEL,
//! MAINTAINER, USER, WORKDIR, VOLUME, EXPOSE, STOPSIGNAL, SHELL, CMD,
//! ENTRYPOINT, HEALTHCHECK and ONBUILD. Each applies itself to the stage's
//! state and returns its history entry as BuildKit writes it.

use crate::ast::Word;
use crate::error::{Error, ErrorKind};
use crate::graph::{Healthcheck, MkdirStep};
use crate::history::{go_duration, go_list, go_quote_list, go_quote_rune};
use crate::instruction::{CommandLine, HealthcheckCommand, Pair};
use crate::paths;

use super::expand::Expander;
use super::state::{LoweredStage, StageState};

pub(super) fn env(
    expander: &Expander,
    state: &mut StageState,
    pairs: &[Pair],
) -> Result<String, Error> {
    let expanded = expand_pairs(expander, state, pairs)?;
    for (key, value) in &expanded {
        state.set_env(key, value);
    }
    Ok(pairs_history("ENV", &expanded))
}

pub(super) fn label(
    expander: &Expander,
    state: &mut StageState,
    pairs: &[Pair],
) -> Result<String, Error> {
    let expanded = expand_pairs(expander, state, pairs)?;
    for (key, value) in &expanded {
        state.config.labels.insert(key.clone(), value.clone());
    }
    Ok(pairs_history("LABEL", &expanded))
}

/// ENV and LABEL expand every pair with the variables as they were before
/// the instruction, then apply them.
fn expand_pairs(
    expander: &Expander,
    state: &StageState,
    pairs: &[Pair],
) -> Result<Vec<(String, String)>, Error> {
    pairs
        .iter()
        .map(|pair| {
            Ok((
                expander.word(&pair.key, &state.env)?,
                expander.word(&pair.value, &state.env)?,
            ))
        })
        .collect()
}

fn pairs_history(keyword: &str, pairs: &[(String, String)]) -> String {
    let mut history = String::from(keyword);
    for (key, value) in pairs {
        history.push(' ');
        history.push_str(key);
        history.push('=');
        history.push_str(value);
    }
    history
}

pub(super) fn maintainer(state: &mut StageState, name: &str) -> String {
    state.author = Some(name.to_string());
    format!("MAINTAINER {name}")
}

/// Sets the working directory; returns the history entry and the directory
/// to create, none for `/`.
pub(super) fn workdir(
    expander: &Expander,
    state: &mut StageState,
    path: &Word,
) -> Result<(String, Option<MkdirStep>), Error> {
    let text = expander.word(path, &state.env)?;
    if text.is_empty() {
        return Err(expander
            .source
            .error(ErrorKind::EmptyWorkdir(path.text.clone()), path.pos));
    }
    let workdir = paths::resolve(state.workdir(), &text);
    state.config.working_dir = workdir.clone();
    let mkdir = (workdir != "/").then(|| MkdirStep {
        path: workdir.clone(),
        mode: 0o755,
        user: state.config.user.clone(),
    });
    Ok((format!("WORKDIR {workdir}"), mkdir))
}

pub(super) fn user(
    expander: &Expander,
    state: &mut StageState,
    user: &Word,
) -> Result<String, Error> {
    let user = expander.word(user, &state.env)?;
    state.config.user = user.clone();
    Ok(format!("USER {user}"))
}

pub(super) fn volume(
    expander: &Expander,
    state: &mut StageState,
    volumes: &[Word],
) -> Result<String, Error> {
    let mut expanded = Vec::with_capacity(volumes.len());
    for volume in volumes {
        let text = expander.word(volume, &state.env)?;
        if text.is_empty() {
            return Err(expander.source.error(ErrorKind::EmptyVolume, volume.pos));
        }
        expanded.push(text);
    }
    state.config.volumes.extend(expanded.iter().cloned());
    Ok(format!("VOLUME {}", go_list(&expanded)))
}

pub(super) fn expose(
    expander: &Expander,
    state: &mut StageState,
    ports: &[Word],
) -> Result<String, Error> {
    // BuildKit's order: the words as written, sorted, then expanded and
    // parsed one by one.
    let mut ports: Vec<_> = ports.iter().collect();
    ports.sort_by(|a, b| a.text.cmp(&b.text));
    let mut exposed = Vec::new();
    for port in ports {
        for spec in expander.words(port, &state.env)? {
            let parsed = parse_port(&spec).map_err(|reason| {
                expander.source.error(
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
    state.config.exposed_ports.extend(exposed.iter().cloned());
    Ok(format!("EXPOSE [{}]", exposed.join(" ")))
}

pub(super) fn stop_signal(
    expander: &Expander,
    state: &mut StageState,
    signal: &Word,
) -> Result<String, Error> {
    let text = expander.word(signal, &state.env)?;
    if !valid_signal(&text) {
        return Err(expander
            .source
            .error(ErrorKind::InvalidSignal(text), signal.pos));
    }
    state.config.stop_signal = text.clone();
    Ok(format!("STOPSIGNAL {text}"))
}

pub(super) fn shell(state: &mut StageState, shell: &[String]) -> String {
    state.config.shell = shell.to_vec();
    format!("SHELL {}", go_list(shell))
}

pub(super) fn cmd(stage: &mut LoweredStage, line: &CommandLine) -> String {
    let args = shell_or_exec(&stage.state, line);
    stage.state.config.cmd = Some(args.clone());
    stage.state.config.args_escaped = true;
    stage.cmd_set = true;
    format!("CMD {}", go_quote_list(&args))
}

/// ENTRYPOINT clears a CMD inherited from the base, but not one set earlier
/// in the stage.
pub(super) fn entrypoint(stage: &mut LoweredStage, line: &CommandLine) -> String {
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
    format!("ENTRYPOINT {}", go_quote_list(&args))
}

fn shell_or_exec(state: &StageState, line: &CommandLine) -> Vec<String> {
    if line.shell_form {
        state.with_shell(&line.args)
    } else {
        line.args.clone()
    }
}

pub(super) fn healthcheck(state: &mut StageState, check: Option<&HealthcheckCommand>) -> String {
    let healthcheck = healthcheck_config(check);
    let history = format!(
        "HEALTHCHECK &{{{} {:?} {:?} {:?} {:?} {}}}",
        go_quote_list(&healthcheck.test),
        go_duration(healthcheck.interval),
        go_duration(healthcheck.timeout),
        go_duration(healthcheck.start_period),
        go_duration(healthcheck.start_interval),
        go_quote_rune(healthcheck.retries)
    );
    state.config.healthcheck = Some(healthcheck);
    history
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

/// Records a trigger for images built on this one; it records no history.
pub(super) fn onbuild(state: &mut StageState, expression: &str) {
    state.config.on_build.push(expression.to_string());
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
}
