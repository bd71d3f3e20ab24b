//! Transparent huge pages: off for kiln, the host's setting for what runs
//! in the sandbox.
//!
//! kiln's allocator (mimalloc) asks for huge pages for its arenas, so the
//! first allocations of each of kiln's threads fault in and zero whole
//! 2 MiB pages: measured, 40 % of the CPU time of a small pull. kiln turns
//! them off for itself at start; a RUN step or `kiln run` container must
//! not inherit that (a JVM or a database may count on them), so the
//! sandbox turns them back on for the OCI runtime it starts, which the
//! step's processes descend from.

/// Set by [`turn_off_for_kiln`] when it turned huge pages off, so that
/// the sandbox helper (kiln started again) knows to turn them back on.
const TURNED_OFF: &str = "KILN_TURNED_HUGE_PAGES_OFF";

/// Turns transparent huge pages off for this process and its children,
/// unless they are off already. To be called first thing in `main`, while
/// kiln has one thread (it sets an environment variable).
pub fn turn_off_for_kiln() {
    if std::env::var_os(TURNED_OFF).is_some() {
        return;
    }
    if rustix::thread::transparent_huge_pages_are_disabled() == Ok(false)
        && rustix::thread::disable_transparent_huge_pages(true).is_ok()
    {
        std::env::set_var(TURNED_OFF, "1");
    }
}

/// Whether the processes kiln starts for steps should get huge pages back.
pub(crate) fn turned_off_by_kiln() -> bool {
    std::env::var_os(TURNED_OFF).is_some()
}

/// Turns transparent huge pages back on; async-signal-safe, for a
/// `pre_exec` hook.
pub(crate) fn turn_back_on() -> std::io::Result<()> {
    rustix::thread::disable_transparent_huge_pages(false)?;
    Ok(())
}
