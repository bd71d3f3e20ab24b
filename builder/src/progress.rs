//! Build progress on standard error, as `--progress` asks:
//!
//! - `plain` (CI logs): BuildKit's numbered blocks. `#5 [build 2/4] RUN make`
//!   when a step starts, each line of its output as `#5 0.512 text` (seconds
//!   since the step began), then `#5 CACHED`, `#5 DONE 1.2s` or
//!   `#5 ERROR: message`. Every line names its step, so steps running at
//!   once interleave readably.
//! - `tty`: a live line per running step with its elapsed time (indicatif),
//!   output and finished steps printed above them.
//! - `quiet`: nothing but errors.
//! - `rawjson`: one JSON object per event and line.
//! - `auto`: `tty` on a terminal, `plain` otherwise. indicatif hides what it
//!   prints when standard error is not a terminal, so `tty` there is `plain`.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Tty,
    Quiet,
    RawJson,
}

impl Mode {
    pub fn parse(text: &str) -> anyhow::Result<Mode> {
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

pub struct Progress {
    mode: Mode,
    started: Instant,
    next_id: AtomicUsize,
    bars: Option<MultiProgress>,
    /// One writer at a time, so lines never mix.
    out: Mutex<()>,
}

/// A step being reported; say how it ended with `cached`, `done` or
/// `error`.
pub struct Step<'a> {
    progress: &'a Progress,
    id: usize,
    name: String,
    started: Instant,
    bar: Option<ProgressBar>,
    /// Bytes moved so far (pulls, pushes, exports).
    bytes: std::sync::atomic::AtomicU64,
}

/// `12.3 MB`.
pub fn human_bytes(bytes: u64) -> String {
    let mut value = bytes as f64;
    for unit in ["B", "kB", "MB", "GB"] {
        if value < 1000.0 {
            return format!("{value:.1} {unit}");
        }
        value /= 1000.0;
    }
    format!("{value:.1} TB")
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

impl Progress {
    pub fn new(mode: Mode) -> Progress {
        Progress {
            mode,
            started: Instant::now(),
            next_id: AtomicUsize::new(1),
            bars: (mode == Mode::Tty).then(MultiProgress::new),
            out: Mutex::new(()),
        }
    }

    /// Writes a line of plain text (or, with bars, above them).
    fn line(&self, text: &str) {
        let _one_at_a_time = self.out.lock();
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(text);
            }
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }

    fn event(&self, id: usize, event: &str, name: &str, text: Option<&str>) {
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

    /// A message that belongs to no step (a pull, an export).
    pub fn note(&self, text: &str) {
        match self.mode {
            Mode::Quiet => {}
            Mode::RawJson => self.event(0, "note", "", Some(text)),
            Mode::Plain | Mode::Tty => self.line(text),
        }
    }

    /// Starts reporting a step named `name` (`[build 2/4] RUN make`).
    pub fn step(&self, name: &str) -> Step<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bar = self.bars.as_ref().map(|bars| {
            // Set up before it is shown, so that it never shows empty.
            let bar = ProgressBar::new_spinner()
                .with_style(
                    ProgressStyle::with_template("{spinner} #{prefix} {msg} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                )
                .with_prefix(id.to_string())
                .with_message(name.to_string());
            let bar = bars.add(bar);
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        match self.mode {
            Mode::Plain => self.line(&format!("#{id} {name}")),
            Mode::RawJson => self.event(id, "start", name, None),
            Mode::Tty | Mode::Quiet => {}
        }
        Step {
            progress: self,
            id,
            name: name.to_string(),
            started: Instant::now(),
            bar,
            bytes: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Step<'_> {
    /// A line the step wrote.
    pub fn log(&self, text: &str) {
        let progress = self.progress;
        match progress.mode {
            Mode::Plain => progress.line(&format!(
                "#{} {:.3} {text}",
                self.id,
                self.started.elapsed().as_secs_f64()
            )),
            Mode::Tty => progress.line(&format!("#{} {text}", self.id)),
            Mode::RawJson => progress.event(self.id, "log", &self.name, Some(text)),
            Mode::Quiet => {}
        }
    }

    fn finish(self, plain: String, event: &str) {
        let progress = self.progress;
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        match progress.mode {
            Mode::Plain => progress.line(&format!("#{} {plain}", self.id)),
            Mode::Tty => progress.line(&format!("#{} {} {plain}", self.id, self.name)),
            Mode::RawJson => progress.event(self.id, event, &self.name, Some(&plain)),
            Mode::Quiet => {}
        }
    }

    /// Ends the step as `result` says, passing the result on.
    pub fn finish_with<T>(self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        match result {
            Ok(value) => {
                self.done();
                Ok(value)
            }
            Err(error) => {
                self.error(&error.root_cause().to_string(), &[]);
                Err(error)
            }
        }
    }

    /// Counts bytes the step moved; the live line shows them.
    pub fn add_bytes(&self, bytes: u64) {
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{} {}", self.name, human_bytes(total)));
        }
    }

    pub fn cached(self) {
        self.finish("CACHED".to_string(), "cached");
    }

    pub fn done(self) {
        let elapsed = seconds(self.started.elapsed());
        let bytes = self.bytes.load(Ordering::Relaxed);
        let text = if bytes > 0 {
            format!("DONE {elapsed} ({})", human_bytes(bytes))
        } else {
            format!("DONE {elapsed}")
        };
        self.finish(text, "done");
    }

    /// The step failed; `tail` holds its last lines of output, which
    /// plain progress repeats as BuildKit does, between `------` lines.
    pub fn error(self, message: &str, tail: &[String]) {
        let progress = self.progress;
        if progress.mode == Mode::Quiet {
            // Errors are reported by kiln's final message.
            if let Some(bar) = &self.bar {
                bar.finish_and_clear();
            }
            return;
        }
        let (id, name) = (self.id, self.name.clone());
        self.finish(format!("ERROR: {message}"), "error");
        if progress.mode == Mode::Plain && !tail.is_empty() {
            let mut block = format!("------\n > {name}:");
            for line in tail {
                block.push_str(&format!("\n#{id} {line}"));
            }
            block.push_str("\n------");
            progress.line(&block);
        }
    }
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
