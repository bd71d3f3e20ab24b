//! The Dockerfile frontend of kiln: parsing (directives, continuations,
//! heredocs, every instruction and flag), BuildKit's variable expansion,
//! `.dockerignore` matching, and lowering to a [`graph::BuildGraph`] that no
//! longer mentions Dockerfile syntax.
//!
//! The frontend does no I/O beyond what its callers hand it: the Dockerfile
//! and ignore-file text, and the configuration of base images through
//! [`lower::BaseImages`].

pub mod ast;
pub mod error;
pub mod graph;
mod history;
pub mod ignore;
pub mod instruction;
pub mod keyword;
pub mod lower;
mod mount;
pub mod parser;
mod paths;
pub mod platform;
pub mod shell;
mod suggest;

pub use error::{Error, ErrorKind, Pos};
pub use graph::BuildGraph;
pub use ignore::DockerIgnore;
pub use lower::{lower, BaseImages, LowerOptions, ResolvedImage, UnknownImages};
pub use parser::{parse, parse_bytes};
pub use platform::Platform;
