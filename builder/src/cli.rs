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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile and a context directory.
    Build(BuildArgs),
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
    /// Allow extra privileges: `security.insecure` lets `RUN --security=insecure` run.
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,
}

/// Which Dockerfile to read and how to lower it.
#[derive(Debug, Args)]
pub struct DockerfileArgs {
    /// The build context directory.
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
