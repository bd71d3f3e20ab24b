//! Errors of the sandbox.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the OCI runtime {} is not installed (Debian: apt-get install runc; or name another with --runtime PATH)",
        .0.display()
    )]
    RuntimeMissing(PathBuf),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("the sandbox could not be set up: {0}")]
    Setup(String),

    #[error("the step's configuration is invalid: {0}")]
    Spec(String),

    #[error("the step was interrupted")]
    Interrupted,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
