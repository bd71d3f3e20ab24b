//! `kiln`: builds container images from Dockerfiles without a daemon.
//!
//! Exit codes: 0 success; 1 the build could not be done (invalid
//! Dockerfile, bad option value, failure while building); 2 the command line
//! itself is malformed.

mod cli;
mod dockerfile;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, DebugCommand};

// Builds allocate many small strings and buffers; mimalloc handles that
// pattern markedly faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build(args) => {
            let graph = dockerfile::load(&args.dockerfile, &args.labels, &args.allow)?;
            let steps: usize = graph.stages.iter().map(|s| s.steps.len()).sum();
            anyhow::bail!(
                "the Dockerfile is valid ({} stage(s) and {} step(s) to build), but this version of kiln cannot run builds yet",
                graph.stages.len(),
                steps
            )
        }
        Command::Debug(DebugCommand::Graph(args)) => {
            let graph = dockerfile::load(&args, &[], &[])?;
            let mut stdout = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut stdout, &graph)?;
            writeln!(stdout)?;
            Ok(())
        }
    }
}

/// Prints an error with its causes, and the offending Dockerfile line when
/// the error points at one.
fn report(err: &anyhow::Error) {
    let mut message = format!("error: {err}");
    for cause in err.chain().skip(1) {
        message.push_str(&format!("\n  caused by: {cause}"));
    }
    if let Some(snippet) = err
        .chain()
        .find_map(|e| e.downcast_ref::<kiln_frontend::Error>())
        .and_then(kiln_frontend::Error::snippet)
    {
        message.push('\n');
        message.push_str(&snippet);
    }
    eprintln!("{message}");
}
