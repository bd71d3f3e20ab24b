//! Layers in the store, both ways: a blob unpacked into a snapshot (checked
//! against its diff ID) and views over several snapshots; a directory of
//! changes made a snapshot, and a snapshot packed into a blob when
//! something needs one.

use std::io;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashingReader};
use crate::error::Error;
use crate::extract::{extract, ExtractOptions};
use crate::pack::{pack_dir, PackOptions, PackedLayer};
use crate::store::Store;
use kiln_overlay::LayerView;

/// The two digests of a layer: of its tar (the diff ID, by which its
/// snapshot is known) and of its blob as stored (compressed or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerDigests {
    pub diff_id: Digest,
    pub blob: Digest,
}

impl Store {
    /// The snapshot of `layer`, unpacked from its blob when there is none
    /// yet. The blob must unpack to the layer's diff ID: a blob that does
    /// not leaves no snapshot.
    pub fn snapshot_of(&self, layer: &LayerDigests) -> Result<PathBuf, Error> {
        if self.has_snapshot(&layer.diff_id) {
            return Ok(self.snapshot_path(&layer.diff_id));
        }
        self.create_snapshot(&layer.diff_id, |dir| {
            let blob_path = self.blob_path(&layer.blob);
            let tar = crate::compress::decompressed(self.open_blob(&layer.blob)?)
                .map_err(|e| Error::io(&blob_path, e))?;
            let mut hashed = HashingReader::new(tar);
            extract(&mut hashed, dir, &ExtractOptions::layer())?;
            // The tar's end (padding, a second zero block) counts in the
            // diff ID too.
            io::copy(&mut hashed, &mut io::sink()).map_err(|e| Error::io(&blob_path, e))?;
            let (actual, _) = hashed.finish();
            if actual != layer.diff_id {
                return Err(Error::LayerMismatch {
                    blob: layer.blob,
                    diff_id: layer.diff_id,
                    actual,
                });
            }
            Ok(())
        })
    }

    /// The merged file system of `layers` (the lowest first), unpacking
    /// those not unpacked yet. Layers are independent of each other, so
    /// those are unpacked at once, a thread each (decompression is
    /// single-threaded), as many at a time as there are cores.
    pub fn view_of(&self, layers: &[LayerDigests]) -> Result<LayerView, Error> {
        let at_once = std::thread::available_parallelism().map_or(1, |n| n.get());
        let missing: Vec<&LayerDigests> = layers
            .iter()
            .filter(|layer| !self.has_snapshot(&layer.diff_id))
            .collect();
        for batch in missing.chunks(at_once) {
            std::thread::scope(|scope| -> Result<(), Error> {
                let threads: Vec<_> = batch
                    .iter()
                    .map(|layer| scope.spawn(move || self.snapshot_of(layer)))
                    .collect();
                for thread in threads {
                    // A panic is a bug, not an error to report: it goes on
                    // to the caller as one.
                    thread
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
                }
                Ok(())
            })?;
        }
        let snapshots = layers
            .iter()
            .map(|layer| self.snapshot_of(layer))
            .collect::<Result<Vec<PathBuf>, Error>>()?;
        Ok(LayerView::new(snapshots))
    }

    /// Makes `diff`, a directory of changes on the store's file system
    /// (such as one in a [`Store::temp_dir`]), the snapshot of the layer it
    /// packs to, and describes that layer as its uncompressed tar, whose
    /// digest is its diff ID: no blob is written until something needs one
    /// ([`Store::blob_from_snapshot`]).
    pub fn snapshot_from_diff(
        &self,
        diff: &Path,
        source_date_epoch: Option<i64>,
    ) -> Result<PackedLayer, Error> {
        let layer = self.hash_layer(
            diff,
            &PackOptions {
                compression: crate::Compression::Uncompressed,
                source_date_epoch,
            },
        )?;
        self.adopt_snapshot(&layer.diff_id, diff)?;
        Ok(layer)
    }

    /// Writes the blob of the layer `diff_id` from its snapshot, compressed
    /// as `options` say. A snapshot that no longer packs to its diff ID (it
    /// was changed) gives no blob.
    pub fn blob_from_snapshot(
        &self,
        diff_id: &Digest,
        options: &PackOptions,
    ) -> Result<PackedLayer, Error> {
        if !self.has_snapshot(diff_id) {
            return Err(Error::MissingSnapshot(*diff_id));
        }
        let (writer, packed) =
            pack_dir(&self.snapshot_path(diff_id), options, self.blob_writer()?)?;
        if packed.diff_id != *diff_id {
            return Err(Error::SnapshotChanged {
                diff_id: *diff_id,
                packs_to: packed.diff_id,
            });
        }
        writer.commit(Some(&packed.digest))?;
        Ok(packed)
    }

    /// Writes `layer`'s tar again compressed as `compression` says (the same
    /// tar, so the same diff ID: what an export with
    /// `force-compression=true` does to layers of another compression).
    pub fn recompress_blob(
        &self,
        layer: &LayerDigests,
        compression: crate::Compression,
    ) -> Result<PackedLayer, Error> {
        let path = self.blob_path(&layer.blob);
        let io = |e| Error::io(&path, e);
        let tar = crate::compress::decompressed(self.open_blob(&layer.blob)?).map_err(io)?;
        let mut hashed = HashingReader::new(tar);
        let mut encoder = compression.encoder(self.blob_writer()?).map_err(io)?;
        std::io::copy(&mut hashed, &mut encoder).map_err(io)?;
        let writer = encoder.finish().map_err(io)?;
        let (diff_id, tar_size) = hashed.finish();
        if diff_id != layer.diff_id {
            return Err(Error::LayerMismatch {
                blob: layer.blob,
                actual: diff_id,
                diff_id: layer.diff_id,
            });
        }
        let (digest, size) = writer.commit(None)?;
        Ok(PackedLayer {
            diff_id,
            digest,
            size,
            tar_size,
            compression,
            empty: false,
        })
    }

    /// The diff ID the layer blob `blob` unpacks to, reading it whole.
    pub fn diff_id_of_blob(&self, blob: &Digest) -> Result<Digest, Error> {
        let path = self.blob_path(blob);
        let tar = crate::compress::decompressed(self.open_blob(blob)?)
            .map_err(|e| Error::io(&path, e))?;
        let mut hashed = HashingReader::new(tar);
        io::copy(&mut hashed, &mut io::sink()).map_err(|e| Error::io(&path, e))?;
        Ok(hashed.finish().0)
    }

    /// Removes a blob, which must be one nothing needs (a blob that failed
    /// a check); one that is not there is no error.
    pub fn remove_blob(&self, blob: &Digest) -> Result<(), Error> {
        let path = self.blob_path(blob);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Compression, PrunePolicy};
    use std::fs;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("store")).expect("store");
        (dir, store)
    }

    /// A snapshot holding `files` (path, content), and its layer's blob.
    fn layer(store: &Store, files: &[(&str, &str)]) -> LayerDigests {
        let work = store.temp_dir().expect("temp");
        let diff = work.path().join("diff");
        for (path, content) in files {
            let path = diff.join(path);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, content).expect("write");
        }
        let hashed = store.snapshot_from_diff(&diff, Some(0)).expect("snapshot");
        assert!(!diff.exists(), "the directory became the snapshot");
        assert_eq!(
            (hashed.digest, hashed.size),
            (hashed.diff_id, hashed.tar_size),
            "described as its tar"
        );
        let gzip = PackOptions {
            compression: Compression::Gzip { level: 6 },
            source_date_epoch: Some(0),
        };
        let packed = store
            .blob_from_snapshot(&hashed.diff_id, &gzip)
            .expect("blob");
        assert_eq!(packed.diff_id, hashed.diff_id);
        assert_ne!(packed.digest, packed.diff_id, "compressed");
        LayerDigests {
            diff_id: packed.diff_id,
            blob: packed.digest,
        }
    }

    /// The blob of `layer` in a store of its own, which has no snapshot.
    fn elsewhere(from: &Store, layer: &LayerDigests) -> (tempfile::TempDir, Store) {
        let (dir, store) = store();
        store
            .import_blob(from.open_blob(&layer.blob).expect("blob"), &layer.blob)
            .expect("import");
        assert!(!store.has_snapshot(&layer.diff_id));
        (dir, store)
    }

    #[test]
    fn blobs_unpack_into_snapshots_and_views_merge_them() {
        let (_dir, first) = store();
        let base = layer(&first, &[("etc/hostname", "base"), ("etc/motd", "hi")]);
        let upper = layer(&first, &[("etc/hostname", "upper")]);
        assert_eq!(first.diff_id_of_blob(&base.blob).unwrap(), base.diff_id);

        let (_other, second) = elsewhere(&first, &base);
        second
            .import_blob(first.open_blob(&upper.blob).unwrap(), &upper.blob)
            .unwrap();
        let view = second.view_of(&[base, upper]).expect("view");
        assert_eq!(
            view.read_to_string("/etc/hostname").unwrap().as_deref(),
            Some("upper")
        );
        assert_eq!(
            view.read_to_string("/etc/motd").unwrap().as_deref(),
            Some("hi")
        );
        assert_eq!(
            second.snapshot_of(&base).unwrap(),
            second.snapshot_path(&base.diff_id)
        );
    }

    #[test]
    fn a_blob_that_is_not_its_layer_leaves_no_snapshot() {
        let (_dir, first) = store();
        let real = layer(&first, &[("file", "content")]);
        let (_other, second) = elsewhere(&first, &real);
        let claimed = LayerDigests {
            diff_id: Digest::of(b"another tar"),
            blob: real.blob,
        };
        match second.snapshot_of(&claimed) {
            Err(Error::LayerMismatch { actual, .. }) => assert_eq!(actual, real.diff_id),
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert!(!second.has_snapshot(&claimed.diff_id));
    }

    #[test]
    fn a_changed_or_missing_snapshot_gives_no_blob() {
        let (_dir, store) = store();
        let layer = layer(&store, &[("file", "content")]);
        let snapshot = store.snapshot_path(&layer.diff_id);
        fs::write(snapshot.join("file"), "changed").unwrap();
        let blobs = fs::read_dir(store.blobs_dir()).unwrap().count();
        let options = PackOptions::default();
        assert!(matches!(
            store.blob_from_snapshot(&layer.diff_id, &options),
            Err(Error::SnapshotChanged { .. })
        ));
        assert_eq!(fs::read_dir(store.blobs_dir()).unwrap().count(), blobs);
        assert!(matches!(
            store.blob_from_snapshot(&Digest::of(b"unknown"), &options),
            Err(Error::MissingSnapshot(_))
        ));

        store.remove_blob(&layer.blob).unwrap();
        assert!(!store.has_blob(&layer.blob));
        store.remove_blob(&layer.blob).expect("removing it again");
    }

    #[test]
    fn explain_records_round_trip_and_go_with_the_whole_cache() {
        let (_dir, store) = store();
        let id = Digest::of(b"a step");
        assert_eq!(store.explain_record(&id), None);
        store.put_explain_record(&id, b"[1]").unwrap();
        store.put_explain_record(&id, b"[2]").unwrap();
        assert_eq!(store.explain_record(&id).as_deref(), Some(&b"[2]"[..]));
        assert_eq!(
            store.explain_record_head(&id, 2).as_deref(),
            Some(&b"[2"[..])
        );
        assert_eq!(
            store.explain_record_head(&id, 9).as_deref(),
            Some(&b"[2]"[..])
        );
        store.prune(&PrunePolicy::default()).unwrap();
        assert!(store.explain_record(&id).is_some(), "not garbage");
        store
            .prune(&PrunePolicy {
                all: true,
                ..PrunePolicy::default()
            })
            .unwrap();
        assert_eq!(store.explain_record(&id), None);
        assert_eq!(store.explain_record_head(&id, 2), None);
    }

    #[test]
    fn a_blob_recompressed_keeps_its_tar() {
        let (_dir, store) = store();
        let gzipped = layer(&store, &[("etc/motd", "hello\n")]);
        let zstd = store
            .recompress_blob(&gzipped, Compression::Zstd { level: 3 })
            .expect("recompress");
        assert_eq!(zstd.diff_id, gzipped.diff_id, "the same tar");
        assert_ne!(zstd.digest, gzipped.blob, "another blob");
        assert!(store.has_blob(&zstd.digest));
        let wrong = LayerDigests {
            diff_id: zstd.digest,
            blob: gzipped.blob,
        };
        assert!(matches!(
            store.recompress_blob(&wrong, Compression::Uncompressed),
            Err(Error::LayerMismatch { .. })
        ));
    }
}
