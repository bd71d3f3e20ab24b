//! Errors of the cache crate.

use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::limits::human_size;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not valid UTF-8, which layer paths must be", .0.display())]
    NonUtf8Path(PathBuf),
    #[error("refusing archive entry {entry:?}: {reason}")]
    UnsafeEntry { entry: String, reason: String },
    #[error("cannot extract archive entry {entry:?}: {source}")]
    Extract {
        entry: String,
        #[source]
        source: crate::tree::TreeError,
    },
    #[error("cannot extract archive entry {entry:?}: {source}")]
    Place {
        entry: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid archive: {0}")]
    InvalidArchive(String),
    #[error("blob {expected} does not match its content, which hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {0} is not in the store")]
    MissingBlob(Digest),
    #[error("layer blob {blob} unpacks to {actual}, not to its diff ID {diff_id}")]
    LayerMismatch {
        blob: Digest,
        diff_id: Digest,
        actual: Digest,
    },
    #[error("the layer {0} has neither a blob nor a snapshot")]
    MissingSnapshot(Digest),
    #[error("the snapshot of layer {diff_id} packs to {packs_to}: it was changed")]
    SnapshotChanged { diff_id: Digest, packs_to: Digest },
    #[error("{} is not a usable kiln store: {reason}", path.display())]
    BadStore { path: PathBuf, reason: String },
    #[error("{} is not an OCI image layout kiln can use: {reason}", path.display())]
    BadLayout { path: PathBuf, reason: String },
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {entry} into the archive: {source}")]
    ArchiveWrite {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {} ({doing}): {source}", path.display())]
    Replace {
        path: PathBuf,
        /// What failed: creating, writing, syncing or renaming the new file.
        doing: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "only {} free on the file system of {}, and {} more would leave less than \
         the {} kiln keeps free: free space (kiln prune) or lower the reserve (--keep-free)",
        human_size(*free), dir.display(), human_size(*needed), human_size(*reserve)
    )]
    NoSpace {
        dir: PathBuf,
        free: u64,
        needed: u64,
        reserve: u64,
    },
    #[error(
        "{entry:?} takes it past {}, kiln's bound on what one layer or archive unpacks to \
         (--max-layer-size raises it)",
        human_size(*limit)
    )]
    TooLarge { entry: String, limit: u64 },
    #[error(
        "{entry:?} takes it past {limit} entries, kiln's bound for one layer or archive \
         (--max-layer-entries raises it)"
    )]
    TooManyEntries { entry: String, limit: u64 },
    #[error("unpacking layer {blob}: {source}")]
    Unpacking {
        blob: Digest,
        #[source]
        source: Box<Error>,
    },
    #[error("{what} {digest} in the store is invalid: {reason}")]
    InvalidContent {
        what: &'static str,
        digest: Digest,
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        // A write the reserve stopped carries the error that says so (see
        // `SpaceWatch`), whatever file was being read or written for it.
        match source.downcast::<Error>() {
            Ok(error) => error,
            Err(source) => Error::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    }
}
