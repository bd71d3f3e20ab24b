//! kiln's content-addressed store: OCI-layout blobs and index, unpacked layer
//! snapshots, deterministic layer tar packing and safe extraction, cache
//! keys and records, the stat cache, cache mounts, locking and garbage
//! collection. It knows nothing of Dockerfiles or registries, and no other
//! crate joins paths inside the store: they ask [`Store`].
//!
//! Modules, leaves first:
//!
//! - [`digest`]: sha256 digests, and readers and writers that compute them.
//! - [`atomic`]: files written whole or not at all.
//! - [`parallel_gzip`]: gzip compressed on every core, the same bytes
//!   whatever their number.
//! - [`compress`]: gzip and zstd, detected and applied.
//! - [`whiteout`]: how layers mark what they remove.
//! - [`pack`]: a directory to a deterministic layer tar, compressed, with
//!   both digests in one pass.
//! - [`tree`]: writing files beneath a directory without following symlinks.
//! - [`extract`]: safe extraction of layers and archives.
//! - [`layout`]: OCI layouts (index.json, oci-layout, blobs), to a directory
//!   or a tar stream.
//! - [`store`]: the store itself: blobs, names, snapshots, locks; `unsynced`
//!   keeps track of what still needs an fsync.
//! - [`layers`]: snapshots made from blobs and diffs, blobs from snapshots.
//! - [`keys`]: cache keys and the records they name.
//! - [`statcache`]: content digests of context files remembered by inode.
//! - [`mounts`]: `RUN --mount=type=cache` directories and their locks.
//! - [`git`]: repositories fetched for git sources, and their checkouts.
//! - [`gc`]: disk usage and pruning.

pub mod atomic;
pub mod compress;
pub mod digest;
mod error;
pub mod extract;
pub mod gc;
pub mod git;
pub mod keys;
pub mod layers;
pub mod layout;
pub mod limits;
pub mod mounts;
pub mod pack;
pub mod parallel_gzip;
pub mod statcache;
pub mod store;
pub mod tree;
mod unsynced;
pub mod whiteout;

pub use atomic::AtomicFile;
pub use compress::Compression;
pub use digest::Digest;
pub use error::Error;
pub use gc::{DiskUsage, PrunePolicy, Pruned};
pub use git::GitRepository;
pub use keys::{CacheRecord, KeyHasher, LayerRecord};
pub use kiln_overlay::{LayerView, ViewEntry};
pub use layers::LayerDigests;
pub use layout::{Layout, LayoutTar};
pub use limits::Limits;
pub use mounts::{CacheMount, MountNote, Sharing};
pub use statcache::StatCache;
pub use store::{ImageEntry, Problem, Store};
