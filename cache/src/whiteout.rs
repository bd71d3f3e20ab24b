//! How layers mark what they remove: OCI's whiteout files in tar streams,
//! overlayfs's opaque directories on disk.

/// Overlayfs marks a directory that hides the lower one with this attribute.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Prefix of a whiteout entry in a layer tar.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the entry that marks its directory opaque in a layer tar.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
