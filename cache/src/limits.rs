//! What one layer may cost, and the free space kiln leaves on the store's
//! file system. A hostile image is cheap to make: a few kilobytes of zstd
//! can unpack into gigabytes, and a layer can hold millions of empty
//! files. Extraction refuses a layer past the bounds before writing the
//! entry that crosses them, and every write of the store (extraction,
//! blobs) stops while a reserve is still free, so that the store itself
//! (its index, its records, its temporary files' cleanup) can still work
//! and the machine is not left with a full disk.

use std::path::{Path, PathBuf};

use crate::error::Error;

/// The largest layer kiln unpacks by default: 64 GiB.
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 64 << 30;
/// The most entries a layer may have by default.
pub const DEFAULT_MAX_LAYER_ENTRIES: u64 = 4_000_000;
/// The reserve kiln keeps free when not told: a twentieth of the file
/// system, at most 1 GiB.
const AUTO_RESERVE_SHARE: u64 = 20;
const AUTO_RESERVE_MAX: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes of file content one layer (or archive) may unpack to.
    pub max_layer_size: u64,
    /// The most entries one layer (or archive) may have.
    pub max_layer_entries: u64,
    /// The space to leave free on the store's file system; `None`: a
    /// twentieth of its size, at most 1 GiB.
    pub keep_free: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layer_size: DEFAULT_MAX_LAYER_SIZE,
            max_layer_entries: DEFAULT_MAX_LAYER_ENTRIES,
            keep_free: None,
        }
    }
}

/// Watches the free space of the file system of one directory while
/// something writes there: it asks the file system again only once a
/// quarter of the reserve has been written since it last asked, so that a
/// layer of many small files costs few system calls. A reserve of 0 turns
/// it off.
#[derive(Debug)]
pub struct SpaceWatch {
    dir: PathBuf,
    reserve: u64,
    /// Bytes written (or about to be) since the last look.
    unchecked: u64,
    /// How many bytes may go unchecked.
    check_every: u64,
}

impl SpaceWatch {
    pub fn new(dir: &Path, keep_free: Option<u64>) -> Result<SpaceWatch, Error> {
        let reserve = match keep_free {
            Some(bytes) => bytes,
            None => {
                let (_, total) = space(dir)?;
                (total / AUTO_RESERVE_SHARE).min(AUTO_RESERVE_MAX)
            }
        };
        Ok(SpaceWatch {
            dir: dir.to_path_buf(),
            reserve,
            unchecked: 0,
            // A quarter of the reserve: what may be written past a look
            // eats into the reserve by at most that.
            check_every: (reserve / 4).max(64 << 10),
        })
    }

    /// Before `bytes` more are written: fails when they would leave less
    /// than the reserve free.
    pub fn admit(&mut self, bytes: u64) -> Result<(), Error> {
        if self.reserve == 0 {
            return Ok(());
        }
        self.unchecked = self.unchecked.saturating_add(bytes);
        if self.unchecked < self.check_every {
            return Ok(());
        }
        self.unchecked = 0;
        let (free, _) = space(&self.dir)?;
        if free < self.reserve.saturating_add(bytes) {
            return Err(Error::NoSpace {
                dir: self.dir.clone(),
                free,
                needed: bytes,
                reserve: self.reserve,
            });
        }
        Ok(())
    }
}

/// The bytes free to an unprivileged writer and the size of the file
/// system `dir` is on.
fn space(dir: &Path) -> Result<(u64, u64), Error> {
    let stats = rustix::fs::statvfs(dir).map_err(|e| Error::io(dir, e.into()))?;
    Ok((
        stats.f_bavail.saturating_mul(stats.f_frsize),
        stats.f_blocks.saturating_mul(stats.f_frsize),
    ))
}

/// Counts what an extraction has admitted against the bounds of one layer.
#[derive(Debug)]
pub(crate) struct LayerBudget {
    limits: Limits,
    entries: u64,
    bytes: u64,
    space: SpaceWatch,
}

impl LayerBudget {
    pub(crate) fn new(dir: &Path, limits: Limits) -> Result<LayerBudget, Error> {
        Ok(LayerBudget {
            limits,
            entries: 0,
            bytes: 0,
            space: SpaceWatch::new(dir, limits.keep_free)?,
        })
    }

    /// Before the entry `entry` of `size` bytes is written.
    pub(crate) fn admit(&mut self, entry: &str, size: u64) -> Result<(), Error> {
        self.entries += 1;
        if self.entries > self.limits.max_layer_entries {
            return Err(Error::TooManyEntries {
                entry: entry.to_string(),
                limit: self.limits.max_layer_entries,
            });
        }
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_layer_size {
            return Err(Error::TooLarge {
                entry: entry.to_string(),
                limit: self.limits.max_layer_size,
            });
        }
        // A block for the entry's own metadata, whatever its size.
        self.space.admit(size.saturating_add(4096))
    }
}

/// `12.3MB`: sizes as users read them, in progress, listings and errors
/// alike, as Docker and BuildKit write them: powers of 1000, one decimal,
/// and whole bytes below a kilobyte (`512B`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_docker_writes_them() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_500), "1.5kB");
        assert_eq!(human_size(2_000_000), "2.0MB");
        assert_eq!(human_size(12_345_678_901), "12.3GB");
        assert_eq!(human_size(4_200_000_000_000_000), "4200.0TB");
    }

    #[test]
    fn a_layer_past_its_bounds_is_refused_at_the_entry_that_crosses_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let limits = Limits {
            max_layer_size: 1000,
            max_layer_entries: 3,
            keep_free: Some(0),
        };
        let mut budget = LayerBudget::new(dir.path(), limits).expect("budget");
        budget.admit("a", 600).expect("a fits");
        let err = budget.admit("b", 401).expect_err("past the size");
        assert!(matches!(err, Error::TooLarge { ref entry, limit: 1000 } if entry == "b"));
        let mut budget = LayerBudget::new(dir.path(), limits).expect("budget");
        for name in ["a", "b", "c"] {
            budget.admit(name, 0).expect("fits");
        }
        let err = budget.admit("d", 0).expect_err("past the entries");
        assert!(matches!(err, Error::TooManyEntries { limit: 3, .. }));
    }

    #[test]
    fn writes_stop_while_the_reserve_is_still_free() {
        let dir = tempfile::tempdir().expect("tmp");
        let (free, _) = space(dir.path()).expect("space");
        let mut watch = SpaceWatch::new(dir.path(), Some(free / 2)).expect("watch");
        watch.admit(free / 4).expect("a quarter fits");
        let err = watch
            .admit(free / 2 + 1)
            .expect_err("would eat into the reserve");
        assert!(matches!(err, Error::NoSpace { needed, .. } if needed == free / 2 + 1));
    }
}
