//! The `kiln` commands: each turns its arguments into what the build
//! library needs, runs it, and prints what a user reads.
//!
//! - `build`: `kiln build` (the request its flags make, the build, garbage
//!   collection after it) and `kiln debug graph`;
//! - `store`: what is in the store (`images`, `inspect`, `tag`, `rmi`,
//!   `du`, `prune`, `check`);
//! - `registry`: `pull`, `push`, `login`, `logout`;
//! - `archive`: `save`, `load`;
//! - `container`: `run`;
//! - `docs`: shell completions and man pages, from the command line's
//!   definitions;
//! - `values`: sizes and durations as users write them, names as Docker
//!   prints them.

pub mod archive;
pub mod build;
pub mod container;
pub mod docs;
pub mod registry;
pub mod store;
mod values;
