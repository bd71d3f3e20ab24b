//! The command line of `kiln`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about = "Build container images from Dockerfiles, without a daemon"
)]
pub struct Cli {
    /// The store directory (default: /var/lib/kiln for root, $XDG_DATA_HOME/kiln otherwise).
    #[arg(long, global = true, env = "KILN_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// A registry (`host[:port]`) that may be reached over plain HTTP, as
    /// loopback ones may; may be repeated.
    #[arg(long = "insecure-registry", global = true, value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Per-registry certificates: `DIR/HOST[:PORT]/*.crt` (CAs) and
    /// `client.cert` with `client.key` (default: /etc/docker/certs.d).
    #[arg(long = "cert-dir", global = true, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// The most one layer (or archive ADD unpacks) may unpack to (default:
    /// 64GiB); a layer past it is refused.
    #[arg(
        long = "max-layer-size",
        global = true,
        env = "KILN_MAX_LAYER_SIZE",
        value_name = "SIZE"
    )]
    pub max_layer_size: Option<String>,
    /// The most entries one layer (or archive ADD unpacks) may have
    /// (default: 4000000).
    #[arg(
        long = "max-layer-entries",
        global = true,
        env = "KILN_MAX_LAYER_ENTRIES",
        value_name = "N"
    )]
    pub max_layer_entries: Option<u64>,
    /// The space kiln leaves free on the store's file system: unpacking and
    /// writing blobs stop before it is used (default: a twentieth of the
    /// file system, at most 1GiB; 0 turns it off).
    #[arg(
        long = "keep-free",
        global = true,
        env = "KILN_KEEP_FREE",
        value_name = "SIZE"
    )]
    pub keep_free: Option<String>,
    /// The OCI runtime that runs RUN steps (default: runc).
    #[arg(long, global = true, env = "KILN_RUNTIME", value_name = "PATH")]
    pub runtime: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile and a context directory.
    Build(Box<BuildArgs>),
    /// List the images in the store.
    Images,
    /// Show an image's manifest and configuration (with its history) as JSON.
    Inspect {
        /// The image (`name[:tag]` or `name@sha256:...`).
        image: String,
    },
    /// Give an image another name.
    Tag {
        /// The image to name.
        source: String,
        /// The new name.
        target: String,
    },
    /// Remove image names (their blobs stay in the store until garbage collection).
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Write images to a tar archive that `kiln load`, `docker load` and skopeo read.
    Save {
        #[arg(required = true)]
        images: Vec<String>,
        /// The archive to write (`-` for standard output).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// `oci` (an OCI layout) or `docker` (the same plus Docker's manifest.json).
        #[arg(long, default_value = "docker")]
        format: String,
    },
    /// Fetch an image from its registry into the store.
    Pull {
        /// The image (`name[:tag]` or `name@sha256:...`).
        image: String,
        /// The platform to pull from a multi-platform image (`os/arch[/variant]`,
        /// default: this machine's).
        #[arg(long)]
        platform: Option<String>,
    },
    /// Send an image of the store to a registry.
    Push {
        /// The image in the store.
        image: String,
        /// Where to push it (default: the image's own name).
        destination: Option<String>,
    },
    /// Save credentials for a registry in Docker's config.json.
    Login {
        /// The registry (`host[:port]`; default: docker.io).
        #[arg(default_value = "docker.io")]
        server: String,
        #[arg(short = 'u', long = "username")]
        username: Option<String>,
        /// The password (visible in the process list: prefer --password-stdin).
        #[arg(short = 'p', long = "password", conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from standard input.
        #[arg(long = "password-stdin")]
        password_stdin: bool,
    },
    /// Remove the credentials for a registry from Docker's config.json.
    Logout {
        /// The registry (`host[:port]`; default: docker.io).
        #[arg(default_value = "docker.io")]
        server: String,
    },
    /// Import the images of an OCI or Docker archive.
    Load {
        /// The archive to read (`-` for standard input; may be compressed).
        #[arg(short = 'i', long = "input", value_name = "FILE")]
        input: PathBuf,
    },
    /// Run a command in a container made from an image of the store, attached
    /// to this terminal; exits with the command's status (125 when kiln
    /// itself fails).
    Run(Box<RunArgs>),
    /// Show how much disk space the store takes, by kind.
    Du {
        /// Print exact byte counts instead of sizes rounded to kB, MB, GB or TB
        /// (for scripts).
        #[arg(long)]
        bytes: bool,
    },
    /// Remove unused data from the store: blobs and snapshots nothing refers to
    /// and, with --all, the build cache (cache records, their layers, cache
    /// mounts). Images are never removed.
    Prune {
        /// Remove the build cache too, not only what nothing refers to.
        #[arg(short = 'a', long)]
        all: bool,
        /// Remove the least recently used build cache (layers only the cache keeps,
        /// and cache mounts) until it takes at most SIZE.
        #[arg(long = "keep-storage", value_name = "SIZE")]
        keep_storage: Option<String>,
        /// `until=DURATION` (such as 24h): only what no build used for that long.
        #[arg(long = "filter", value_name = "until=DURATION")]
        filters: Vec<String>,
        /// Prune the build cache a `--cache-to type=registry` wrote to REF instead of
        /// the store: records exported longer ago than --filter until=, then the least
        /// recently exported until it names at most --keep-storage of layers.
        #[arg(long = "cache-ref", value_name = "REF")]
        cache_ref: Option<String>,
    },
    /// Verify every blob of the store against its digest and report what is wrong.
    Check,
    /// Print a shell completion script (`kiln completion bash > /etc/bash_completion.d/kiln`).
    Completion {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write man pages for kiln and each of its commands into a directory.
    Man {
        /// Where to write them (`kiln.1`, `kiln-build.1`, ...).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Commands for looking inside kiln.
    #[command(subcommand)]
    Debug(DebugCommand),
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Print the build graph a Dockerfile lowers to, as JSON.
    Graph(DockerfileArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub dockerfile: DockerfileArgs,
    /// Name and optionally tag the image (`name:tag`); may be repeated.
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    pub tags: Vec<String>,
    /// Set metadata on the image (`key=value`); may be repeated.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Another build context, named: a directory, `docker-image://REF`,
    /// `oci-layout://PATH[:TAG|@DIGEST]`, an http(s) URL of a tar archive or a git URL,
    /// which `FROM NAME`, `COPY --from=NAME` and `RUN --mount=from=NAME` read in
    /// place of a stage or image of that name; may be repeated.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_contexts: Vec<String>,
    /// A secret for `RUN --mount=type=secret`: `id=ID,src=FILE` or
    /// `id=ID,env=VARIABLE` (never stored in the image, its history or logs);
    /// may be repeated.
    #[arg(long = "secret", value_name = "id=ID,src=FILE|env=VAR")]
    pub secrets: Vec<String>,
    /// Forward an SSH agent to `RUN --mount=type=ssh`: `default` (the agent of
    /// $SSH_AUTH_SOCK) or `ID=SOCKET`; may be repeated.
    #[arg(long = "ssh", value_name = "ID[=SOCKET]")]
    pub ssh: Vec<String>,
    /// Allow extra privileges: `security.insecure` lets `RUN --security=insecure` run.
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,
    /// Where the result goes: `type=image` (the store, default), `type=registry,name=R`
    /// (the store and R), `type=oci,dest=F.tar`, `type=docker,dest=F.tar`,
    /// `type=local,dest=DIR`, `type=tar,dest=F.tar` (the files as a tar), a directory
    /// (local), or `-` (a tar of the files on standard output). `dest=-` writes an archive
    /// to standard output. Images also take `name=R`, `push=true`, `compression=gzip|zstd|uncompressed`,
    /// `compression-level=N`, `force-compression=true` and `oci-mediatypes=true|false`.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub output: Option<String>,
    /// Media types of the image: `oci` or `docker` (default: docker for
    /// `--output type=docker`, oci otherwise).
    #[arg(long)]
    pub format: Option<String>,
    /// Layer compression: `gzip[:LEVEL]` (default), `zstd[:LEVEL]` or `uncompressed`.
    #[arg(long, default_value = "gzip")]
    pub compression: String,
    /// Push the image to every `-t` name after building it.
    #[arg(long)]
    pub push: bool,
    /// Look up base images in their registries even when the store has them.
    #[arg(long)]
    pub pull: bool,
    /// Write the image's digests, pushed names and each step's cache hit or
    /// miss and duration to this file as JSON.
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Write the image's ID (its manifest digest) to this file.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// After the build, when the build cache (layers only the cache keeps, and
    /// cache mounts) takes more than SIZE (such as 20GB), remove the least
    /// recently used of it until it fits.
    #[arg(
        long = "gc-keep-storage",
        value_name = "SIZE",
        env = "KILN_GC_KEEP_STORAGE"
    )]
    pub gc_keep_storage: Option<String>,
    /// Export the build cache: `type=registry,ref=REF[,mode=min|max]`,
    /// `type=local,dest=DIR[,mode=min|max]` (an OCI layout) or `type=inline`
    /// (in the image); min keeps the final image's steps, max every stage's.
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,
    /// Import a build cache: `type=registry,ref=REF` (a cache or an image with
    /// an inline cache) or `type=local,src=DIR`; may be repeated.
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,
    /// How to show progress: `auto` (tty on a terminal, plain otherwise),
    /// `tty`, `plain` (BuildKit's numbered lines, for CI logs), `quiet` or
    /// `rawjson` (a JSON object per line).
    #[arg(long, default_value = "auto", env = "BUILDKIT_PROGRESS")]
    pub progress: String,
    /// Stages built at once at most (default: the number of cores).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Say, for each step that missed the cache, which part of its key
    /// changed since it was last built (a file, a build argument, the
    /// command, the step before it); also in --metadata-file.
    #[arg(long)]
    pub explain: bool,
    /// Run every step, reusing nothing from earlier builds.
    #[arg(long = "no-cache")]
    pub no_cache: bool,
    /// Run every step of these stages without the cache (names, comma-separated
    /// or repeated).
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    pub no_cache_filter: Vec<String>,
    /// What to do with the Dockerfile: `build` (default); `check` to run the
    /// build checks; `outline` to list the build arguments, secrets and SSH
    /// sockets the target uses; `targets` to list its stages. None but
    /// `build` builds anything; `,format=json` prints JSON.
    #[arg(
        long,
        value_name = "build|check|outline|targets[,format=json]",
        default_value = "build"
    )]
    pub call: String,
    /// Run the build checks and build nothing (`--call=check`).
    #[arg(long)]
    pub check: bool,
    /// The network of RUN steps that name none: `default` (the host's, as
    /// BuildKit gives it), `host` or `none`.
    #[arg(long, value_name = "MODE")]
    pub network: Option<String>,
    /// Add an entry to the steps' /etc/hosts (`HOST:IP`); may be repeated.
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_hosts: Vec<String>,
    /// A resource limit of every RUN step (`nofile=1024:2048`, `nproc=512`);
    /// may be repeated.
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    pub ulimits: Vec<String>,
    /// The size of the steps' /dev/shm: bytes, or with a unit (`128m`, `1g`;
    /// powers of 1024, as Docker reads it). Default 64m.
    #[arg(long = "shm-size", value_name = "SIZE")]
    pub shm_size: Option<String>,
    /// Print nothing but the image ID (progress as `--progress=quiet`).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Accepted for buildx's sake: the image goes to the store, as it does
    /// without an --output.
    #[arg(long)]
    pub load: bool,
    /// Clamp file times in new layers to this time and use it as the image's
    /// creation time, for reproducible images (default: $SOURCE_DATE_EPOCH;
    /// empty means unset).
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
    pub source_date_epoch: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Accepted for Docker's sake: kiln never keeps a stopped container.
    #[arg(long)]
    pub rm: bool,
    /// Keep standard input open for the command (without it, the command reads nothing).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the command a pseudo-terminal (with `-i`, for an interactive shell).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set a variable (`NAME=VALUE`, or `NAME` to pass this environment's value); may be repeated.
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Mount a host directory or file: `SOURCE:TARGET[:ro]`; may be repeated.
    #[arg(short = 'v', long = "volume", value_name = "SOURCE:TARGET[:ro]")]
    pub volumes: Vec<String>,
    /// `host` (default: the host's network) or `none` (only a loopback interface).
    #[arg(long, default_value = "host")]
    pub network: String,
    /// Run as this user (`name|uid[:group|gid]`) instead of the image's USER.
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Run in this directory instead of the image's WORKDIR.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// Replace the image's ENTRYPOINT (and with it its CMD).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Save the container's changes as a new image with this name when it exits.
    #[arg(long, value_name = "NAME")]
    pub commit: Option<String>,
    /// The image (`name[:tag]`, `name@sha256:...` or an image ID).
    pub image: String,
    /// The command and its arguments (default: the image's CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Which Dockerfile to read and how to lower it.
#[derive(Debug, Args)]
pub struct DockerfileArgs {
    /// The build context: a directory, a git URL (`https://HOST/REPO.git#REF:DIR`),
    /// an http(s) URL of a tar archive or of a Dockerfile, a tar archive, or `-`
    /// for one on standard input (`#:DIR` after an archive: a directory of it).
    #[arg(default_value = ".")]
    pub context: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile; `-` reads standard input).
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// The stage to build (default: the last one).
    #[arg(long)]
    pub target: Option<String>,
    /// Set a build argument (`KEY=VALUE`, or `KEY` to take it from the environment); may be repeated.
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,
    /// The platform to build for (`os/arch[/variant]`, default: this machine's).
    #[arg(long)]
    pub platform: Option<String>,
}
