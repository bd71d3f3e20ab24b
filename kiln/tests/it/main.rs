//! The `kiln` binary's integration tests, run as users run it: from inside
//! a context directory, against a store of their own, with the real
//! sandbox, a real registry and real tools reading what it writes.

mod bounds;
mod cache;
mod cache_sharing;
mod checks;
mod cli;
mod contexts;
mod escapes;
mod exports;
mod git;
mod images;
mod output;
mod registry;
mod regression;
mod run;
mod scheduler;
mod support;
mod terminal;
