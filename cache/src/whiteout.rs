//! How layers mark what they remove: OCI's whiteout files in tar streams,
//! overlayfs's opaque directories on disk.

pub use kiln_overlay::OPAQUE_XATTR;
/// Prefix of a whiteout entry in a layer tar.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the entry that marks its directory opaque in a layer tar.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
