//! kiln's sandbox, for RUN steps and `kiln run`. It owns running one process
//! on a stack of layer directories: the overlayfs root filesystem and the
//! step's mounts, its namespaces, the OCI runtime configuration (Docker's
//! default capabilities, masked and read-only paths), the helper process and
//! the OCI runtime it starts, the process's output and how it ended, the
//! proxy to the SSH agent, and cleanup that never leaks a mount or a
//! process. What the step changes is left in an upper directory the caller
//! gives, without the mount points the runtime made.
//!
//! It knows nothing of Dockerfiles, layer tar formats or the cache index:
//! the builder turns a RUN step into a [`Step`], and the upper directory
//! into a layer.
//!
//! - `sandbox`: the helper process, the overlays, the runtime's start,
//!   supervision and cleanup.
//! - `spec`: the OCI runtime configuration of a step.
//! - `stubs`: mount points the runtime creates, removed from the changes.
//! - `agent`: the SSH agent socket of `RUN --mount=type=ssh`.
//! - `huge_pages`: transparent huge pages off for kiln, not for steps.
//! - `error`: errors of the sandbox.

mod agent;
mod error;
mod huge_pages;
mod sandbox;
mod spec;
mod stubs;

use std::path::PathBuf;

pub use agent::AgentProxy;
pub use error::Error;
pub use huge_pages::turn_off_for_kiln;
pub use sandbox::{
    remove_bundles, sandbox_main, BundleOwners, Layers, Outcome, Runtime, StepIo, SANDBOX_ARG,
};

/// Who a step runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// The network a step sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The host's (what BuildKit gives by default).
    Host,
    /// Only a loopback interface of its own.
    None,
}

/// Bytes that must not reach a log, an error or a file on disk: secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(pub Vec<u8>);

impl std::fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A mount a step asks for, from the host's side. Targets are absolute
/// paths in the step's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepMount {
    /// A host directory or socket (a cache directory, an SSH agent).
    Bind {
        source: PathBuf,
        target: String,
        readonly: bool,
    },
    /// The merged file system of layer directories (bottom first): a stage,
    /// an image or the build context. `path` is the directory or file in it
    /// to mount, already resolved so that it crosses no symlink. Writes,
    /// when `writable`, go to a directory thrown away after the step.
    Layers {
        lowers: Vec<PathBuf>,
        path: String,
        target: String,
        writable: bool,
    },
    /// The directory `path` below the host directory `root` (a cache
    /// mount's `source=`), resolved by the sandbox helper without leaving
    /// `root`: a symlink that points outside fails the step instead of
    /// handing it the host directory it names.
    Beneath {
        root: PathBuf,
        path: String,
        target: String,
        readonly: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
        mode: u32,
    },
    /// A file kiln writes for the step (a secret, a heredoc script), kept
    /// in memory (tmpfs) and removed after the step; read-only.
    File {
        target: String,
        contents: Sensitive,
        uid: u32,
        gid: u32,
        mode: u32,
    },
}

impl StepMount {
    pub fn target(&self) -> &str {
        match self {
            StepMount::Bind { target, .. }
            | StepMount::Beneath { target, .. }
            | StepMount::Layers { target, .. }
            | StepMount::Tmpfs { target, .. }
            | StepMount::File { target, .. } => target,
        }
    }
}

/// One process to run in a sandbox.
#[derive(Debug, Clone)]
pub struct Step {
    pub args: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    /// Variables holding secrets: given to the process, never written to
    /// disk.
    pub secret_env: Vec<(String, Sensitive)>,
    /// Absolute.
    pub cwd: String,
    pub user: User,
    pub network: Network,
    /// `--security=insecure`: every capability, nothing masked.
    pub insecure: bool,
    pub mounts: Vec<StepMount>,
    /// What the whole build gives its steps (the host name, `--add-host`,
    /// `--ulimit`, `--shm-size`).
    pub resources: Resources,
}

/// The host name a step sees unless told otherwise: BuildKit's, which
/// build scripts may look for.
pub const DEFAULT_HOSTNAME: &str = "buildkitsandbox";

impl Resources {
    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(DEFAULT_HOSTNAME)
    }
}

/// What a build gives every step beyond its own definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Resources {
    /// The host name the step sees instead of [`DEFAULT_HOSTNAME`]
    /// (BuildKit's `BUILDKIT_SANDBOX_HOSTNAME`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Extra `/etc/hosts` entries: host name and address.
    pub extra_hosts: Vec<(String, String)>,
    /// Resource limits, each replacing the default of its kind.
    pub ulimits: Vec<Ulimit>,
    /// The size of `/dev/shm` in bytes (default 64 MiB).
    pub shm_size: Option<u64>,
}

/// One resource limit, as `docker build --ulimit nofile=1024:2048` gives it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ulimit {
    /// The resource without `RLIMIT_`, lower case: `nofile`, `nproc`, ...
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// The resources `--ulimit` may name, as Docker accepts them.
pub const ULIMIT_NAMES: [&str; 16] = [
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];
