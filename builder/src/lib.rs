//! The build engine under the `kiln` command: everything from a lowered
//! Dockerfile to an exported image, with no command line, terminal or exit
//! code in it.
//!
//! - [`request`]: a build as a command asks for it ([`BuildRequest`]), and
//!   [`build`] running it from Dockerfile to export.
//! - [`dockerfile`]: reading the Dockerfile and lowering it to a graph.
//! - [`build`](mod@build): the stage scheduler and the stage loop; cache
//!   lookups, layers and their materialisation.
//! - [`keys`]: cache keys from what a step reads; `--explain`.
//! - [`run`]: RUN steps, their mounts, secrets and SSH agents, and the
//!   interrupt that stops them.
//! - [`copy`]: COPY, ADD and WORKDIR's file work.
//! - [`users`]: user and group names looked up in the image.
//! - [`image`]: image configurations, manifests and the store's images.
//! - [`archive`]: OCI layout and docker-archive tarballs, written and loaded.
//! - [`cache_io`]: build caches exported to and imported from registries
//!   and directories.
//! - [`remote`]: registries, as builds use them (pull, push, downloads).
//! - [`container`]: `kiln run`'s containers.
//! - [`progress`]: the events a build reports.
//! - [`error`]: the typed [`Error`] every part returns.

pub mod archive;
pub mod build;
pub mod cache_io;
pub mod container;
pub mod copy;
pub mod dockerfile;
pub mod downloads;
pub mod error;
pub mod image;
pub mod keys;
pub mod layers;
mod mounts;
pub mod outputs;
pub mod progress;
pub mod remote;
pub mod request;
pub mod run;
pub mod schedule;
pub mod secrets;
pub mod sources;
pub mod users;

pub use error::{Error, ProcessFailed, Result};
pub use request::{build, BuildRequest, Built, Engine, Output};
pub use run::StepRunner;
pub use secrets::Secrets;
