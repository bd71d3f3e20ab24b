//! The Dockerfile frontend of kiln. It owns everything that knows Dockerfile
//! syntax: parsing (directives, continuations, heredocs, every instruction
//! and flag), BuildKit's variable expansion, `.dockerignore` matching, and
//! lowering to a [`graph::BuildGraph`], the crate's output, which no longer
//! mentions Dockerfile syntax. Building that graph is the builder's.
//!
//! The frontend does no I/O beyond what its callers hand it: the Dockerfile
//! and ignore-file text, and the configuration of base images through
//! [`lower::BaseImages`].
//!
//! Modules, from what is read to what is produced:
//!
//! - [`parser`]: Dockerfile text to instructions, as BuildKit's parser does.
//! - [`ast`]: the parsed Dockerfile: instructions, words and their positions.
//! - [`keyword`]: the instruction names.
//! - [`instruction`]: typed instructions, flags and arguments checked.
//! - `mount`: the `RUN --mount` option syntax.
//! - [`shell`]: quote removal and `$VAR` expansion of words.
//! - [`lower`](mod@lower): instructions to the graph: stages, scopes, image configuration.
//! - [`graph`]: the build graph the builder consumes.
//! - [`git_ref`]: git URLs (`ADD` sources and build contexts) as BuildKit reads them.
//! - [`targets`]: the stages a Dockerfile defines, for `--call=targets`.
//! - [`outline`]: the build arguments, secrets and SSH sockets a target uses,
//!   for `--call=outline`.
//! - [`lint`]: the build checks, for `--call=check` and the warnings of a
//!   build.
//! - [`chmod`]: COPY and ADD `--chmod` modes, octal or symbolic.
//! - `history`: the image history text BuildKit writes, in Go's formats.
//! - `paths`: lexical path arithmetic for paths inside images.
//! - [`platform`]: `os/arch[/variant]` platforms, normalised.
//! - [`pattern`]: path patterns (Go's globs and `**`), for COPY sources,
//!   `.dockerignore` and `--exclude` alike.
//! - [`ignore`]: `.dockerignore` files and their rules.
//! - [`error`]: errors, with their place in the Dockerfile, and warnings.
//! - `suggest`: "did you mean" suggestions for misspelt names.

pub mod ast;
pub mod chmod;
pub mod epoch;
pub mod error;
pub mod git_ref;
pub mod graph;
mod history;
pub mod ignore;
pub mod instruction;
pub mod keyword;
pub mod lint;
pub mod lower;
mod mount;
pub mod outline;
pub mod parser;
mod paths;
pub mod pattern;
pub mod platform;
pub mod shell;
mod suggest;
pub mod targets;

pub use error::{Error, ErrorKind, Pos};
pub use graph::BuildGraph;
pub use ignore::DockerIgnore;
pub use lower::{
    lower, BaseImages, ImagesAsked, LowerOptions, NamedContext, ResolvedImage, UnknownImages,
};
pub use parser::{parse, parse_bytes};
pub use platform::Platform;
