//! Build progress on standard error, as `--progress` asks:
//!
//! - `plain` (CI logs): BuildKit's numbered blocks. `#5 [build 2/4] RUN make`
//!   when a step starts, each line of its output as `#5 0.512 text` (seconds
//!   since the step began), then `#5 CACHED`, `#5 DONE 1.2s` or
//!   `#5 ERROR: message`. Every line names its step, so steps running at
//!   once interleave readably.
//! - `tty`: BuildKit's live view (`tty.rs`): each running step with a
//!   window of its last lines, finished steps collapsed to one line.
//! - `quiet`: nothing but errors.
//! - `rawjson`: one JSON object per event and line.
//! - `auto`: `tty` on a terminal, `plain` otherwise; `tty` is `plain` too
//!   when standard error is not a terminal, which could not show the view.

mod tty;

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::bail;
use kiln_builder::progress::{human_size, ProgressSink, StepEnd, StepId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Tty,
    Quiet,
    RawJson,
}

impl Mode {
    pub fn parse(text: &str) -> kiln_builder::Result<Mode> {
        let terminal = std::io::stderr().is_terminal();
        Ok(match text {
            "auto" if terminal => Mode::Tty,
            "auto" | "plain" => Mode::Plain,
            "tty" if terminal => Mode::Tty,
            "tty" => Mode::Plain,
            "quiet" => Mode::Quiet,
            "rawjson" => Mode::RawJson,
            other => bail!("invalid --progress {other:?}: auto, tty, plain, quiet or rawjson"),
        })
    }
}

/// Draws a build's progress on standard error as `--progress` asks.
pub struct Display {
    mode: Mode,
    started: Instant,
    view: Option<tty::TtyView>,
    steps: Mutex<HashMap<StepId, Shown>>,
    /// One writer at a time, so lines never mix.
    out: Mutex<()>,
}

/// A step on show (in every mode but tty): its name and when it started.
struct Shown {
    name: String,
    started: Instant,
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

impl Display {
    pub fn new(mode: Mode) -> Display {
        Display {
            mode,
            started: Instant::now(),
            view: (mode == Mode::Tty).then(tty::TtyView::new),
            steps: Mutex::new(HashMap::new()),
            out: Mutex::new(()),
        }
    }

    /// Ends the terminal view, if any: what is printed next (the image
    /// ID, an error) goes below it.
    pub fn finish(&self) {
        if let Some(view) = &self.view {
            view.finish();
        }
    }

    /// Writes a line of plain text (or, in the terminal view, above it).
    fn line(&self, text: &str) {
        let _one_at_a_time = self.out.lock();
        match &self.view {
            Some(view) => view.print_above(text.to_string()),
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }

    fn event(&self, id: StepId, event: &str, name: &str, text: Option<&str>) {
        let mut value = serde_json::json!({
            "id": id,
            "event": event,
            "name": name,
            "time": self.started.elapsed().as_secs_f64(),
        });
        if let Some(text) = text {
            value["text"] = text.into();
        }
        self.line(&value.to_string());
    }

    fn steps(&self) -> std::sync::MutexGuard<'_, HashMap<StepId, Shown>> {
        self.steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The step's name and start, or none for an id never started.
    fn shown(&self, id: StepId) -> Option<(String, Instant)> {
        self.steps()
            .get(&id)
            .map(|shown| (shown.name.clone(), shown.started))
    }

    fn step_ended(&self, id: StepId, plain: &str, event: &str) {
        let Some(shown) = self.steps().remove(&id) else {
            return;
        };
        match self.mode {
            Mode::Plain => self.line(&format!("#{id} {plain}")),
            Mode::RawJson => self.event(id, event, &shown.name, Some(plain)),
            Mode::Tty | Mode::Quiet => {}
        }
    }
}

impl ProgressSink for Display {
    fn warn(&self, text: &str) {
        self.line(&format!("warning: {text}"));
    }

    fn note(&self, text: &str) {
        if let Some(view) = &self.view {
            view.note(text);
            return;
        }
        match self.mode {
            Mode::Quiet => {}
            Mode::RawJson => self.event(0, "note", "", Some(text)),
            Mode::Plain | Mode::Tty => self.line(text),
        }
    }

    fn started(&self, id: StepId, name: &str) {
        if let Some(view) = &self.view {
            view.started(id, name);
            return;
        }
        self.steps().insert(
            id,
            Shown {
                name: name.to_string(),
                started: Instant::now(),
            },
        );
        match self.mode {
            Mode::Plain => self.line(&format!("#{id} {name}")),
            Mode::RawJson => self.event(id, "start", name, None),
            Mode::Tty | Mode::Quiet => {}
        }
    }

    fn log(&self, id: StepId, text: &str) {
        if let Some(view) = &self.view {
            view.log(id, text);
            return;
        }
        // Every line of a step's output comes here: the step's name is
        // copied only for the JSON events that carry it.
        match self.mode {
            Mode::Plain => {
                let Some(started) = self.steps().get(&id).map(|shown| shown.started) else {
                    return;
                };
                self.line(&format!(
                    "#{id} {:.3} {text}",
                    started.elapsed().as_secs_f64()
                ));
            }
            Mode::RawJson => {
                if let Some((name, _)) = self.shown(id) {
                    self.event(id, "log", &name, Some(text));
                }
            }
            Mode::Tty | Mode::Quiet => {}
        }
    }

    fn bytes(&self, id: StepId, total: u64) {
        if let Some(view) = &self.view {
            view.bytes(id, total);
        }
    }

    fn ended(&self, id: StepId, end: StepEnd<'_>) {
        if let Some(view) = &self.view {
            view.ended(id, end);
            return;
        }
        match end {
            StepEnd::Cached => self.step_ended(id, "CACHED", "cached"),
            StepEnd::Canceled => self.step_ended(id, "CANCELED", "canceled"),
            StepEnd::Done { bytes } => {
                let Some((_, started)) = self.shown(id) else {
                    return;
                };
                let elapsed = seconds(started.elapsed());
                let text = if bytes > 0 {
                    format!("DONE {elapsed} ({})", human_size(bytes))
                } else {
                    format!("DONE {elapsed}")
                };
                self.step_ended(id, &text, "done");
            }
            StepEnd::Failed { message, tail } => {
                if self.mode == Mode::Quiet {
                    // Errors are reported by kiln's final message.
                    self.steps().remove(&id);
                    return;
                }
                let name = self.shown(id).map(|(name, _)| name).unwrap_or_default();
                self.step_ended(id, &format!("ERROR: {message}"), "error");
                if self.mode == Mode::Plain && !tail.is_empty() {
                    // BuildKit repeats the failed step's last lines between
                    // `------` lines.
                    let mut block = format!("------\n > {name}:");
                    for line in tail {
                        block.push_str(&format!("\n#{id} {line}"));
                    }
                    block.push_str("\n------");
                    self.line(&block);
                }
            }
        }
    }
}

/// Progress of the commands that are not builds (`pull`, `push`): a line
/// on standard error when a transfer starts and for each note; sizes and
/// endings are left to the command's own report.
pub struct Lines;

impl ProgressSink for Lines {
    fn note(&self, text: &str) {
        eprintln!("{text}");
    }

    fn warn(&self, text: &str) {
        eprintln!("warning: {text}");
    }

    fn started(&self, _: StepId, name: &str) {
        eprintln!("{name}");
    }

    fn log(&self, _: StepId, _: &str) {}

    fn bytes(&self, _: StepId, _: u64) {}

    fn ended(&self, _: StepId, _: StepEnd<'_>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_named_as_buildx_names_them() {
        assert_eq!(Mode::parse("plain").unwrap(), Mode::Plain);
        assert_eq!(Mode::parse("quiet").unwrap(), Mode::Quiet);
        assert_eq!(Mode::parse("rawjson").unwrap(), Mode::RawJson);
        // Tests run without a terminal: tty would hide everything.
        if !std::io::stderr().is_terminal() {
            assert_eq!(Mode::parse("tty").unwrap(), Mode::Plain);
            assert_eq!(Mode::parse("auto").unwrap(), Mode::Plain);
        }
        assert!(Mode::parse("fancy").is_err());
    }
}
