//! `kiln run`: a command in a container made from an image of the store
//! (pulled into it first when it lacks the image).

use std::io::IsTerminal;
use std::path::PathBuf;

use kiln_builder::container::RunOptions;
use kiln_builder::remote::Remote;
use kiln_builder::run::Sandbox;
use kiln_builder::Result;
use kiln_cache::Store;

use crate::cli::RunArgs;

/// Runs the container attached to this terminal; returns its exit status.
pub fn run(store: &Store, remote: &Remote, runtime: Option<PathBuf>, args: &RunArgs) -> Result<u8> {
    if args.interactive && args.tty && !std::io::stdin().is_terminal() {
        // As Docker: the terminal would join nothing to the command's.
        crate::bail!("the input device is not a terminal: run `kiln run -it` from a terminal, or leave out -t");
    }
    let interrupt = crate::signals::install()?;
    let sandbox = Sandbox::new(store, runtime);
    let options = RunOptions {
        image: args.image.clone(),
        command: args.command.clone(),
        env: args.env.clone(),
        volumes: args.volumes.clone(),
        network: args.network.clone(),
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        entrypoint: args.entrypoint.clone(),
        commit: args.commit.clone(),
        interactive: args.interactive,
        tty: args.tty,
    };
    let exited = kiln_builder::container::run(store, remote, &sandbox, &interrupt, &options)?;
    if let Some(name) = exited.committed {
        eprintln!("committed the container's changes as {name}");
    }
    Ok(exited.code)
}
