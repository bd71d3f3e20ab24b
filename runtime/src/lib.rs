//! kiln's sandbox: overlayfs root filesystems, namespaces, mounts and process
//! supervision for RUN steps, with cleanup that never leaks a mount or a
//! process.
//!
//! It knows nothing of layer tar formats or the cache index.
