//! What can go wrong in a build, typed so that callers decide by matching
//! (an interrupt, a failed RUN, a Dockerfile error with its snippet) and
//! users read every cause from the outermost in.

use std::fmt;

/// A build failure and the chain of what caused it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Dockerfile (or its ignore file) cannot be read as one.
    #[error(transparent)]
    Dockerfile(#[from] kiln_frontend::Error),
    /// A step of the Dockerfile failed: where it is, and why.
    #[error("{location}: {instruction}")]
    Step {
        /// `Dockerfile:12`.
        location: String,
        instruction: String,
        #[source]
        cause: Box<Error>,
    },
    /// A RUN step's process exited with a failure or was killed.
    #[error(transparent)]
    ProcessFailed(#[from] ProcessFailed),
    /// Ctrl-C or SIGTERM stopped the build (never wrapped in context).
    #[error("interrupted")]
    Interrupted,
    /// A value given by the user (an option, a build argument) is invalid.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] kiln_cache::Error),
    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),
    /// An image reference that cannot be one.
    #[error(transparent)]
    Reference(#[from] kiln_registry::ReferenceError),
    /// Writing files into a layer's directory.
    #[error(transparent)]
    Tree(#[from] kiln_cache::tree::TreeError),
    #[error(transparent)]
    Sandbox(kiln_runtime::Error),
    /// Fetching or checking out a git source.
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Image(#[from] oci_spec::OciSpecError),
    /// Something kiln checked and found wrong, said in a sentence.
    #[error("{0}")]
    Message(String),
    /// A layer an imported cache offered is missing or not what the cache
    /// says (the sentence says which and why). The build starts over with
    /// the records that name it as misses.
    #[error("{0}")]
    UnusableCache(String),
    /// What kiln was doing when `cause` happened.
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        cause: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<kiln_runtime::Error> for Error {
    fn from(error: kiln_runtime::Error) -> Self {
        match error {
            kiln_runtime::Error::Interrupted => Error::Interrupted,
            other => Error::Sandbox(other),
        }
    }
}

impl From<tempfile::PersistError> for Error {
    fn from(error: tempfile::PersistError) -> Self {
        Error::Io(error.error)
    }
}

impl From<url::ParseError> for Error {
    fn from(error: url::ParseError) -> Self {
        Error::Invalid(error.to_string())
    }
}

impl From<std::num::ParseIntError> for Error {
    fn from(error: std::num::ParseIntError) -> Self {
        Error::Invalid(error.to_string())
    }
}

impl From<kiln_cache::digest::InvalidDigest> for Error {
    fn from(error: kiln_cache::digest::InvalidDigest) -> Self {
        Error::Message(error.to_string())
    }
}

impl Error {
    /// A sentence, for what has no error type of its own.
    pub fn msg(text: impl fmt::Display) -> Error {
        Error::Message(text.to_string())
    }

    /// The innermost cause: what a failed step's progress line shows.
    pub fn root_cause(&self) -> &(dyn std::error::Error + 'static) {
        let mut cause: &(dyn std::error::Error + 'static) = self;
        while let Some(next) = cause.source() {
            cause = next;
        }
        cause
    }

    /// Whether the build ended because it was told to stop (Ctrl-C,
    /// SIGTERM), not because something failed.
    pub fn is_interrupted(&self) -> bool {
        match self {
            Error::Interrupted => true,
            Error::Step { cause, .. } | Error::Context { cause, .. } => cause.is_interrupted(),
            _ => false,
        }
    }

    /// The Dockerfile error among the causes, whose snippet shows the line.
    pub fn dockerfile_error(&self) -> Option<&kiln_frontend::Error> {
        match self {
            Error::Dockerfile(error) => Some(error),
            Error::Step { cause, .. } | Error::Context { cause, .. } => cause.dockerfile_error(),
            _ => None,
        }
    }

    /// What an imported cache turned out unable to give, when that is
    /// what ended the build: the sentence that says so.
    pub fn unusable_cache(&self) -> Option<&str> {
        match self {
            Error::UnusableCache(what) => Some(what),
            Error::Step { cause, .. } | Error::Context { cause, .. } => cause.unusable_cache(),
            _ => None,
        }
    }

    /// What the error and each of its causes say, outermost first,
    /// leaving out a cause its error's message already ends with (errors
    /// that quote their cause, `path: reason`, and transparent wrappers).
    pub fn causes(&self) -> Vec<String> {
        let mut said = vec![self.to_string()];
        let mut cause = std::error::Error::source(self);
        while let Some(next) = cause {
            let text = next.to_string();
            if !said
                .last()
                .is_some_and(|previous| previous.ends_with(&text))
            {
                said.push(text);
            }
            cause = next.source();
        }
        said
    }

    /// The error and its causes in one line, for a warning.
    pub fn one_line(&self) -> String {
        self.causes().join(": ")
    }

    /// The failed RUN process among the causes.
    pub fn process_failed(&self) -> Option<&ProcessFailed> {
        match self {
            Error::ProcessFailed(failed) => Some(failed),
            Error::Step { cause, .. } | Error::Context { cause, .. } => cause.process_failed(),
            _ => None,
        }
    }
}

/// A RUN step whose process failed: the command, how it ended and its
/// last lines of output.
#[derive(Debug)]
pub struct ProcessFailed {
    pub command: String,
    /// `exit code: 2`, `killed by signal 9`.
    pub outcome: String,
    pub tail: Vec<String>,
}

impl fmt::Display for ProcessFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "process {:?} did not complete successfully: {}",
            self.command, self.outcome
        )?;
        if !self.tail.is_empty() {
            write!(f, "\nits last lines of output:")?;
            for line in &self.tail {
                write!(f, "\n  {line}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ProcessFailed {}

/// Says what kiln was doing when an error happened, as `anyhow::Context`
/// does, but keeping the error typed. An interrupt passes through
/// unwrapped: it is an answer, not a failure to explain.
pub trait Context<T> {
    fn context(self, context: impl fmt::Display) -> Result<T>;
    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|error| wrap(error.into(), context.to_string()))
    }

    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|error| wrap(error.into(), context().to_string()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error::Message(context.to_string()))
    }

    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| Error::Message(context().to_string()))
    }
}

fn wrap(error: Error, context: String) -> Error {
    match error {
        Error::Interrupted => error,
        cause => Error::Context {
            context,
            cause: Box::new(cause),
        },
    }
}

/// Returns early with an [`Error::Message`].
macro_rules! bail {
    ($($text:tt)*) => {
        return Err($crate::Error::Message(format!($($text)*)))
    };
}
pub(crate) use bail;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupts_are_never_wrapped() {
        let interrupted: Result<()> = Err(Error::Interrupted);
        let wrapped = interrupted.context("running a step").unwrap_err();
        assert!(matches!(wrapped, Error::Interrupted));
    }

    #[test]
    fn context_keeps_the_cause_and_its_dockerfile_error() {
        let failed: Result<(), std::io::Error> = Err(std::io::Error::other("disk full"));
        let error = failed.context("writing the layer").unwrap_err();
        assert_eq!(error.to_string(), "writing the layer");
        assert_eq!(error.root_cause().to_string(), "disk full");
        assert!(error.dockerfile_error().is_none());
        assert!(!error.is_interrupted());
        assert_eq!(error.one_line(), "writing the layer: disk full");
    }

    #[test]
    fn an_unusable_cache_is_found_under_the_step_it_ended() {
        let error = Error::Step {
            location: "Dockerfile:3".to_string(),
            instruction: "RUN make".to_string(),
            cause: Box::new(Error::Context {
                context: "fetching 1 layer(s)".to_string(),
                cause: Box::new(Error::UnusableCache("the layer is gone".to_string())),
            }),
        };
        assert_eq!(error.unusable_cache(), Some("the layer is gone"));
        assert_eq!(Error::msg("other").unusable_cache(), None);
    }
}
