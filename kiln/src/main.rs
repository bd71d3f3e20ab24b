//! `kiln`: builds container images from Dockerfiles without a daemon.
//!
//! The binary owns the command line (`cli`), the commands that turn flags
//! into what the build library (kiln-builder) needs and print what users
//! read (`commands`), progress display (`progress`), signals (`signals`) and
//! exit codes; everything else is the library's.
//!
//! Exit codes: 0 success; 1 the work could not be done (invalid Dockerfile,
//! bad option value, missing image, failure while building, problems found
//! by `kiln check`, a RUN step that failed); 2 the command line itself is
//! malformed; 130 interrupted by Ctrl-C or SIGTERM. `kiln run` exits with
//! its container's status, or 125 when kiln itself fails.

mod cli;
mod commands;
mod progress;
mod signals;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kiln_builder::error::Context;
use kiln_builder::progress::Progress;
use kiln_builder::run::INTERRUPTED_EXIT_CODE;
use kiln_builder::units::parse_size;
use kiln_builder::{Error, Result};
use kiln_cache::{Limits, Store};

use cli::{Cli, Command, DebugCommand};

// Builds allocate many small strings and buffers; mimalloc handles that
// pattern markedly faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    kiln_runtime::turn_off_for_kiln();
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new(kiln_runtime::SANDBOX_ARG)) {
        // kiln started itself to set up a RUN step's sandbox.
        let bundle = PathBuf::from(args.next().unwrap_or_default());
        let code = kiln_runtime::sandbox_main(&bundle);
        return ExitCode::from(u8::try_from(code).unwrap_or(255));
    }
    let cli = Cli::parse();
    // `kiln run` exits with its container's code, and with 125 when kiln
    // itself fails, as Docker does.
    let failure = if matches!(cli.command, Command::Run(_)) {
        125
    } else {
        1
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) if err.is_interrupted() => {
            eprintln!("kiln: interrupted");
            ExitCode::from(INTERRUPTED_EXIT_CODE)
        }
        Err(err) => {
            report(&err);
            ExitCode::from(failure)
        }
    }
}

/// Returns early with a [`Error::Message`].
#[macro_export]
macro_rules! bail {
    ($($text:tt)*) => {
        return Err(kiln_builder::Error::Message(format!($($text)*)))
    };
}

/// The store directory: `--root`/`KILN_ROOT`, or the default for the user.
fn store_root(root: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(root) = root {
        // Absolute: the sandbox helper works from other directories.
        return std::path::absolute(&root)
            .with_context(|| format!("the store directory {}", root.display()));
    }
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/kiln"));
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(data).join("kiln"));
    }
    let home = std::env::var_os("HOME")
        .context("neither --root, KILN_ROOT, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/kiln"))
}

fn open_store(root: Option<PathBuf>, limits: Limits) -> Result<Store> {
    let root = store_root(root)?;
    let store =
        Store::open(&root).with_context(|| format!("opening the store at {}", root.display()))?;
    Ok(store.with_limits(limits))
}

/// The bounds on one layer and the reserve of free space, as given.
fn store_limits(cli: &Cli) -> Result<Limits> {
    let defaults = Limits::default();
    Ok(Limits {
        max_layer_size: match &cli.max_layer_size {
            Some(size) => parse_size(size).context("--max-layer-size")?,
            None => defaults.max_layer_size,
        },
        max_layer_entries: cli.max_layer_entries.unwrap_or(defaults.max_layer_entries),
        keep_free: cli
            .keep_free
            .as_deref()
            .map(parse_size)
            .transpose()
            .context("--keep-free")?,
    })
}

/// Runs the command; returns the exit code for success.
fn run(cli: Cli) -> Result<u8> {
    let limits = store_limits(&cli)?;
    let remote = kiln_builder::remote::Remote::new(
        &kiln_builder::remote::RegistrySettings {
            insecure: cli.insecure_registries.clone(),
            certs_dir: cli.cert_dir.clone(),
        },
        std::sync::Arc::new(Progress::new(std::sync::Arc::new(progress::Lines))),
    );
    let done = match cli.command {
        Command::Debug(DebugCommand::Graph(args)) => {
            commands::build::graph(&open_store(cli.root, limits)?, &args)
        }
        Command::Build(args) => {
            return commands::build::build(
                &open_store(cli.root, limits)?,
                &remote,
                cli.runtime,
                &args,
            );
        }
        Command::Pull { image, platform } => commands::registry::pull(
            &open_store(cli.root, limits)?,
            &remote,
            &image,
            platform.as_deref(),
        ),
        Command::Push { image, destination } => commands::registry::push(
            &open_store(cli.root, limits)?,
            &remote,
            &image,
            destination.as_deref(),
        ),
        Command::Login {
            server,
            username,
            password,
            password_stdin,
        } => commands::registry::login(&remote, &server, username, password, password_stdin),
        Command::Logout { server } => commands::registry::logout(&remote, &server),
        Command::Images => commands::store::images(&open_store(cli.root, limits)?),
        Command::Inspect { image } => {
            commands::store::inspect(&open_store(cli.root, limits)?, &image)
        }
        Command::Tag { source, target } => {
            commands::store::tag(&open_store(cli.root, limits)?, &source, &target)
        }
        Command::Rmi { images } => commands::store::rmi(&open_store(cli.root, limits)?, &images),
        Command::Save {
            images,
            output,
            format,
        } => commands::archive::save(
            &open_store(cli.root, limits)?,
            &images,
            &output,
            kiln_builder::image::Format::parse(&format)?,
        ),
        Command::Load { input } => commands::archive::load(&open_store(cli.root, limits)?, &input),
        Command::Check => commands::store::check(&open_store(cli.root, limits)?),
        Command::Completion { shell } => {
            commands::docs::completion(shell);
            Ok(())
        }
        Command::Man { dir } => commands::docs::man_pages(&dir),
        Command::Du { bytes } => commands::store::du(&open_store(cli.root, limits)?, bytes),
        Command::Prune {
            all,
            keep_storage,
            filters,
            cache_ref,
        } => {
            let store = open_store(cli.root, limits)?;
            match cache_ref {
                Some(reference) => commands::store::prune_cache_ref(
                    &store,
                    &remote,
                    &reference,
                    all,
                    keep_storage.as_deref(),
                    &filters,
                ),
                None => commands::store::prune(&store, all, keep_storage.as_deref(), &filters),
            }
        }
        Command::Run(args) => {
            return commands::container::run(
                &open_store(cli.root, limits)?,
                &remote,
                cli.runtime,
                &args,
            )
        }
    };
    done.map(|()| 0)
}

/// Prints an error with its causes, and the offending Dockerfile line when
/// the error points at one.
fn report(err: &Error) {
    let mut message = format!("error: {}", err.causes().join("\n  caused by: "));
    if let Some(snippet) = err
        .dockerfile_error()
        .and_then(kiln_frontend::Error::snippet)
    {
        message.push('\n');
        message.push_str(&snippet);
    }
    eprintln!("{message}");
}
