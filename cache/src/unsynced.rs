//! Snapshots reach the disk when the kernel writes them back, not when they
//! are made: syncing each one would cost seconds for a COPY of a few
//! thousand files, and a snapshot can always be made again from its layer
//! blob, which is synced. What a power loss could leave half-written is
//! found instead of prevented:
//!
//! - Before the first unsynced snapshot of a boot, a marker file holding the
//!   boot's ID is written (and synced); snapshots made after it have a later
//!   change time.
//! - Once the kernel has certainly written them back, a process with the
//!   store to itself syncs the file system (cheap by then) and removes the
//!   marker.
//! - A marker from an earlier boot means that boot may have ended before
//!   its snapshots were on disk: they are removed, to be made again from
//!   their blobs when next needed.
//!
//! Without a boot ID to go by, each snapshot is synced as it is made.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::error::Error;

/// The marker, in the snapshots directory (snapshots are named by hex).
const MARKER: &str = ".unsynced";

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// How long after its last write a file is certainly written back: Linux
/// writes dirty pages back after 30 seconds by default.
const WRITTEN_BACK: Duration = Duration::from_secs(120);

/// Change times are compared with this much slack, for file systems whose
/// clocks are coarse.
const CLOCK_SLACK: Duration = Duration::from_secs(2);

fn boot_id() -> Option<String> {
    fs::read_to_string(BOOT_ID)
        .ok()
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
}

/// Prepares for a new snapshot in `snapshots`: returns whether the caller
/// must sync it itself.
pub(crate) fn before_snapshot(snapshots: &Path) -> Result<bool, Error> {
    let Some(boot) = boot_id() else {
        return Ok(true);
    };
    let marker = snapshots.join(MARKER);
    match fs::read_to_string(&marker) {
        Ok(recorded) if recorded.trim() == boot => Ok(false),
        // Left by an earlier boot and not yet recovered (another process is
        // doing it): this snapshot cannot be covered by that marker.
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            crate::atomic::write_atomic(&marker, boot.as_bytes())?;
            Ok(false)
        }
        Err(e) => Err(Error::io(&marker, e)),
    }
}

/// Settles the marker; called by a process that holds the store exclusively.
/// `discard` removes a snapshot directory.
pub(crate) fn recover(
    snapshots: &Path,
    discard: impl Fn(&Path) -> Result<(), Error>,
) -> Result<(), Error> {
    let marker = snapshots.join(MARKER);
    let (recorded, marked_at) = match fs::read_to_string(&marker) {
        Ok(recorded) => {
            let metadata = fs::metadata(&marker).map_err(|e| Error::io(&marker, e))?;
            (
                recorded,
                metadata.modified().map_err(|e| Error::io(&marker, e))?,
            )
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(&marker, e)),
    };
    let same_boot = boot_id().is_some_and(|boot| recorded.trim() == boot);
    if same_boot {
        let age = SystemTime::now()
            .duration_since(marked_at)
            .unwrap_or_default();
        if age < WRITTEN_BACK {
            return Ok(());
        }
        sync_file_system(snapshots)?;
    } else {
        discard_changed_since(snapshots, marked_at - CLOCK_SLACK, discard)?;
    }
    fs::remove_file(&marker).map_err(|e| Error::io(&marker, e))?;
    crate::atomic::sync_dir(snapshots)
}

/// Discards the snapshots made (renamed into place) at or after `since`.
fn discard_changed_since(
    snapshots: &Path,
    since: SystemTime,
    discard: impl Fn(&Path) -> Result<(), Error>,
) -> Result<(), Error> {
    for entry in fs::read_dir(snapshots).map_err(|e| Error::io(snapshots, e))? {
        let entry = entry.map_err(|e| Error::io(snapshots, e))?;
        let path = entry.path();
        if entry.file_name() == MARKER {
            continue;
        }
        let metadata = fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        if changed_at(&metadata) >= since {
            discard(&path)?;
        }
    }
    Ok(())
}

fn changed_at(metadata: &fs::Metadata) -> SystemTime {
    use std::os::unix::fs::MetadataExt;
    let seconds = Duration::from_secs(metadata.ctime().max(0) as u64);
    let nanoseconds = Duration::from_nanos(metadata.ctime_nsec().max(0) as u64);
    SystemTime::UNIX_EPOCH + seconds + nanoseconds
}

/// Flushes the whole file system `path` is on.
pub(crate) fn sync_file_system(path: &Path) -> Result<(), Error> {
    let dir = File::open(path).map_err(|e| Error::io(path, e))?;
    rustix::fs::syncfs(&dir).map_err(|e| Error::io(path, e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(snapshots: &Path, name: &str) {
        fs::create_dir(snapshots.join(name)).expect("snapshot");
    }

    fn names(snapshots: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(snapshots)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn remove(path: &Path) -> Result<(), Error> {
        fs::remove_dir_all(path).map_err(|e| Error::io(path, e))
    }

    fn set_marker_time(snapshots: &Path, time: SystemTime) {
        File::options()
            .write(true)
            .open(snapshots.join(MARKER))
            .expect("marker")
            .set_modified(time)
            .expect("set mtime");
    }

    #[test]
    fn snapshots_made_since_a_marker_of_an_earlier_boot_are_discarded() {
        let dir = tempfile::tempdir().expect("tmp");
        let snapshots = dir.path();
        snapshot(snapshots, "before");
        std::thread::sleep(Duration::from_millis(20));
        let marked_at = SystemTime::now();
        std::thread::sleep(Duration::from_millis(20));
        snapshot(snapshots, "after");
        discard_changed_since(snapshots, marked_at, remove).expect("discard");
        assert_eq!(names(snapshots), ["before"]);

        fs::write(snapshots.join(MARKER), "an-earlier-boot").expect("marker");
        recover(snapshots, remove).expect("recover");
        assert_eq!(
            names(snapshots),
            Vec::<String>::new(),
            "made within the clock slack of the marker: discarded, and the marker settled"
        );
    }

    #[test]
    fn a_marker_of_this_boot_stays_until_its_snapshots_are_written_back() {
        let Some(boot) = boot_id() else {
            panic!("{BOOT_ID} is not readable; kiln's tests need Linux with /proc");
        };
        let dir = tempfile::tempdir().expect("tmp");
        let snapshots = dir.path();
        assert!(!before_snapshot(snapshots).expect("before"));
        assert_eq!(
            fs::read_to_string(snapshots.join(MARKER)).expect("marker"),
            boot
        );
        snapshot(snapshots, "fresh");
        recover(snapshots, remove).expect("recover");
        assert_eq!(names(snapshots), [MARKER, "fresh"], "too young to settle");
        set_marker_time(snapshots, SystemTime::now() - WRITTEN_BACK * 2);
        recover(snapshots, remove).expect("recover");
        assert_eq!(
            names(snapshots),
            ["fresh"],
            "synced and settled, nothing lost"
        );
        fs::write(snapshots.join(MARKER), "an-earlier-boot").expect("marker");
        assert!(
            before_snapshot(snapshots).expect("before"),
            "an unrecovered marker of another boot makes each snapshot sync itself"
        );
    }
}
