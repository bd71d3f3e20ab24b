//! The records of a build cache as kiln writes them, in a cache manifest's
//! configuration and in an image's configuration (an inline cache): each a
//! step's key and its layer by place.

use kiln_cache::Digest;
use serde::{Deserialize, Serialize};

/// A record as exported: its layer by index among the exported layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedRecord {
    pub key: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// When the result was first made (see `CacheRecord::created`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    /// See `CacheRecord::chain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Digest>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    pub records: Vec<ExportedRecord>,
}
