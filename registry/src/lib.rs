//! kiln's OCI distribution client: reference parsing, pull, push, blob
//! checks, authentication and retries.
//!
//! It knows nothing of builds.

pub mod reference;

pub use reference::{Reference, ReferenceError};
