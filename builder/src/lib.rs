//! The build engine under the `kiln` command: everything from a lowered
//! Dockerfile to an exported image, with no command line, terminal or exit
//! code in it.
//!
//! Modules, each with one job; dependencies go one way, down this list:
//!
//! - [`request`]: a build as a command asks for it ([`BuildRequest`]), and
//!   [`build()`] running it from Dockerfile to export.
//! - [`dockerfile`]: reading the Dockerfile and lowering it to a graph, with
//!   [`base_images`] resolving the images it names.
//! - [`build`](mod@build): the stage loop: each step's key looked up in the
//!   cache, the step run on a miss, its result recorded.
//! - [`schedule`]: the stage DAG only: stages started as their dependencies
//!   finish, up to `--jobs` at once.
//! - [`keys`]: cache keys from what a step reads; `--explain`.
//! - [`contexts`]: build contexts given by name (`--build-context`), and
//!   main contexts that are a URL, an archive or standard input.
//! - [`sources`]: what steps read from (contexts, stages, images).
//! - [`downloads`]: `ADD URL` downloads, once per build.
//! - [`git`]: git sources (`ADD` of a repository, a git build context),
//!   fetched with the `git` program into the store.
//! - [`run`]: RUN steps and the [`StepRunner`] seam to the sandbox; the
//!   interrupt that stops them. `mounts`: their mounts. [`secrets`]: what
//!   `--secret` and `--ssh` give.
//! - [`copy`]: COPY, ADD and WORKDIR's file work: selection, hashing, writing.
//! - [`layers`]: snapshots, views, and blobs written when an export needs them.
//! - [`outputs`]: what stages and steps produce.
//! - [`users`]: user and group names looked up in the image.
//! - [`image`]: image configurations, manifests and the store's images.
//! - [`archive`]: OCI layout and docker-archive tarballs, written and loaded.
//! - [`cache_io`]: build caches exported to and imported from registries and
//!   directories; [`cache_export`]: exports merged into what the
//!   destination holds; [`cache_config`]: their records' format, merging
//!   and bounds; `cache_mounts`: cache mounts that travel with them.
//! - [`remote`]: registries, as builds use them (pull, push, downloads).
//! - [`container`]: `kiln run`'s containers.
//! - [`progress`]: the events a build reports, and sizes as users read them.
//! - [`error`]: the typed [`Error`] every part returns.

pub mod archive;
pub mod base_images;
pub mod build;
pub mod cache_config;
pub mod cache_export;
pub mod cache_io;
mod cache_mounts;
pub mod container;
pub mod contexts;
pub mod copy;
pub mod dockerfile;
pub mod downloads;
pub mod error;
pub mod git;
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
pub mod units;
pub mod users;

pub use error::{Error, ProcessFailed, Result};
pub use request::{build, BuildRequest, Built, Engine, Output, OutputSpec};
pub use run::StepRunner;
pub use secrets::Secrets;
