//! kiln's content-addressed store: OCI-layout blobs and index, unpacked layer
//! snapshots, deterministic layer tar packing and safe extraction, locking.
//!
//! It knows nothing of Dockerfiles or registries.

pub mod atomic;
pub mod compress;
pub mod digest;
mod error;
pub mod extract;
pub mod gc;
pub mod keys;
pub mod layers;
pub mod layout;
pub mod mounts;
pub mod pack;
pub mod statcache;
pub mod store;
pub mod tree;
mod unsynced;
pub mod view;

pub use atomic::AtomicFile;
pub use compress::Compression;
pub use digest::Digest;
pub use error::Error;
pub use gc::{DiskUsage, PrunePolicy, Pruned};
pub use keys::{CacheRecord, KeyHasher, LayerRecord};
pub use layers::LayerDigests;
pub use layout::{Layout, LayoutTar};
pub use mounts::{CacheMount, Sharing};
pub use statcache::StatCache;
pub use store::{ImageEntry, Problem, Store};
pub use view::{LayerView, ViewEntry};
