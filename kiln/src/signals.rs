//! Ctrl-C, SIGTERM and SIGHUP: passed on to the build, which stops its
//! running steps and cleans them up; kiln ends at once on a second signal
//! or when nothing is running.

use std::sync::Arc;

use kiln_builder::error::Context;
use kiln_builder::run::{Interrupt, INTERRUPTED_EXIT_CODE};
use kiln_builder::Result;

/// Handles the signals from now on, for the build that `Interrupt` stops.
pub fn install() -> Result<Arc<Interrupt>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let interrupt = Arc::new(Interrupt::default());
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing the Ctrl-C handler")?;
    let handler = Arc::clone(&interrupt);
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if handler.signal() {
                eprintln!("kiln: interrupted");
                handler.abandon_steps();
                std::process::exit(i32::from(INTERRUPTED_EXIT_CODE));
            }
        }
    });
    Ok(interrupt)
}
