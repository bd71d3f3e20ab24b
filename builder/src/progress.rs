//! What a build tells whoever shows its progress: steps starting, their
//! output, how they ended, and notes that belong to no step. The library
//! only emits these events; the `kiln` binary draws them (plain lines for
//! CI, live lines on a terminal, JSON), and tests record them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Identifies a step among the events of one build, from 1.
pub type StepId = usize;

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepEnd<'a> {
    /// Its result came from the cache.
    Cached,
    /// It ran; `bytes` were moved (pulled, pushed, exported), if any.
    Done { bytes: u64 },
    /// It failed: a message and its last lines of output.
    Failed {
        message: &'a str,
        tail: &'a [String],
    },
    /// It stopped before its end, and the build went on without it (a
    /// warning says why).
    Canceled,
}

/// Receives a build's progress events, from several stages at once.
pub trait ProgressSink: Send + Sync {
    /// A message that belongs to no step (a pull, an export).
    fn note(&self, text: &str);
    /// Something the user should know even when progress is quiet (an
    /// option ignored, a cache that could not be saved).
    fn warn(&self, text: &str);
    /// A step named `name` (`[build 2/4] RUN make`) started.
    fn started(&self, step: StepId, name: &str);
    /// A line of the step's output.
    fn log(&self, step: StepId, line: &str);
    /// The step has moved `total` bytes so far.
    fn bytes(&self, step: StepId, total: u64);
    fn ended(&self, step: StepId, end: StepEnd<'_>);
}

/// Numbers steps and passes their events on to a sink.
pub struct Progress {
    sink: Arc<dyn ProgressSink>,
    next_id: AtomicUsize,
}

/// A sink that drops every event.
struct Silent;

impl ProgressSink for Silent {
    fn note(&self, _: &str) {}
    fn warn(&self, _: &str) {}
    fn started(&self, _: StepId, _: &str) {}
    fn log(&self, _: StepId, _: &str) {}
    fn bytes(&self, _: StepId, _: u64) {}
    fn ended(&self, _: StepId, _: StepEnd<'_>) {}
}

impl Progress {
    pub fn new(sink: Arc<dyn ProgressSink>) -> Progress {
        Progress {
            sink,
            next_id: AtomicUsize::new(1),
        }
    }

    /// Progress nobody watches.
    pub fn silent() -> Progress {
        Progress::new(Arc::new(Silent))
    }

    pub fn note(&self, text: &str) {
        self.sink.note(text);
    }

    pub fn warn(&self, text: &str) {
        self.sink.warn(text);
    }

    /// Starts reporting a step; say how it ended with `cached`, `done` or
    /// `error`.
    pub fn step(&self, name: &str) -> Step<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.sink.started(id, name);
        Step {
            progress: self,
            id,
            bytes: AtomicU64::new(0),
        }
    }
}

/// A step being reported.
pub struct Step<'a> {
    progress: &'a Progress,
    id: StepId,
    bytes: AtomicU64,
}

impl Step<'_> {
    /// A line the step wrote.
    pub fn log(&self, line: &str) {
        self.progress.sink.log(self.id, line);
    }

    /// Counts bytes the step moved.
    pub fn add_bytes(&self, bytes: u64) {
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.progress.sink.bytes(self.id, total);
    }

    pub fn cached(self) {
        self.progress.sink.ended(self.id, StepEnd::Cached);
    }

    pub fn done(self) {
        let bytes = self.bytes.load(Ordering::Relaxed);
        self.progress.sink.ended(self.id, StepEnd::Done { bytes });
    }

    /// The step stopped, and the build goes on without it.
    pub fn canceled(self) {
        self.progress.sink.ended(self.id, StepEnd::Canceled);
    }

    /// The step failed; `tail` holds its last lines of output.
    pub fn error(self, message: &str, tail: &[String]) {
        self.progress
            .sink
            .ended(self.id, StepEnd::Failed { message, tail });
    }

    /// Ends the step as `result` says, passing the result on.
    pub fn finish_with<T>(self, result: crate::Result<T>) -> crate::Result<T> {
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
}

pub use kiln_cache::limits::human_size;
