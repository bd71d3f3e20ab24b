//! `kiln completion` and `kiln man`: what shells and `man` need, made from
//! the same definitions that parse the command line.

use std::path::Path;

use clap::CommandFactory;
use kiln_builder::error::Context;
use kiln_builder::Result;

use crate::cli::Cli;

/// Prints the completion script of `shell` on standard output.
pub fn completion(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut std::io::stdout());
}

/// Writes `kiln.1` and a page for each command (`kiln-build.1`, ...)
/// into `dir`.
pub fn man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let command = Cli::command();
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    println!("wrote kiln's man pages into {}", dir.display());
    Ok(())
}
