//! kiln's content-addressed store: OCI-layout blobs and index, unpacked layer
//! snapshots, cache-key records, deterministic layer tar packing and safe
//! extraction, locking and garbage collection.
//!
//! It knows nothing of Dockerfiles or registries.
