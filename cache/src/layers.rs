//! Layers in the store, both ways: a blob unpacked into a snapshot (checked
//! against its diff ID) and views over several snapshots; a directory of
//! changes made a snapshot, and a snapshot packed into a blob when
//! something needs one.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

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
        let blob = self.open_blob(&layer.blob)?;
        self.snapshot_from_reader(layer, blob, &self.blob_path(&layer.blob))
    }

    /// Unpacks the blob `blob` reads (named `source` in errors) into the
    /// snapshot of `layer`, which it must unpack to.
    fn snapshot_from_reader(
        &self,
        layer: &LayerDigests,
        blob: impl Read,
        source: &Path,
    ) -> Result<PathBuf, Error> {
        self.create_snapshot(&layer.diff_id, |dir| {
            let tar = crate::compress::decompressed(blob).map_err(|e| Error::io(source, e))?;
            let mut hashed = HashingReader::new(tar);
            extract(&mut hashed, dir, &ExtractOptions::layer(self.limits())).map_err(|error| {
                match error {
                    // These name no layer of their own.
                    Error::TooLarge { .. }
                    | Error::TooManyEntries { .. }
                    | Error::NoSpace { .. } => Error::Unpacking {
                        blob: layer.blob,
                        source: Box::new(error),
                    },
                    other => other,
                }
            })?;
            // The tar's end (padding, a second zero block) counts in the
            // diff ID too.
            io::copy(&mut hashed, &mut io::sink()).map_err(|e| Error::io(source, e))?;
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

    /// Makes `diff` the snapshot of the layer it packs to, as
    /// [`Store::snapshot_from_diff`] does, and writes its blob compressed as
    /// `options` say in the same pass over its files: for a layer an export
    /// will need, which would otherwise be read a second time then.
    pub fn snapshot_and_blob_from_diff(
        &self,
        diff: &Path,
        options: &PackOptions,
    ) -> Result<PackedLayer, Error> {
        let layer = self.pack_layer(diff, options)?;
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

/// A layer's blob unpacked into its snapshot while it is being written
/// (downloaded), on a thread of its own, so that a pulled layer is ready
/// when its last byte arrives instead of being read back and unpacked
/// after. The snapshot is checked against the diff ID as any other, so
/// bytes that turn out wrong leave none.
pub(crate) struct Unpacking {
    chunks: Option<SyncSender<Vec<u8>>>,
    worker: Option<JoinHandle<Result<PathBuf, Error>>>,
}

/// Chunks queued between the writer and the unpacking thread: enough to
/// ride out a slow moment on either side, little memory.
const QUEUED_CHUNKS: usize = 32;

impl Unpacking {
    pub(crate) fn start(store: Store, layer: LayerDigests) -> Unpacking {
        let (chunks, receiver) = sync_channel(QUEUED_CHUNKS);
        let worker = std::thread::spawn(move || {
            let source = store.tmp_dir().join("incoming blob");
            store.snapshot_from_reader(&layer, ChunkReader::new(receiver), &source)
        });
        Unpacking {
            chunks: Some(chunks),
            worker: Some(worker),
        }
    }

    /// Passes written bytes on. Once the unpacking has stopped (bytes that
    /// are no layer), the rest is dropped: the blob is still written, and
    /// unpacking it from the store later reports what is wrong with it.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        if let Some(chunks) = &self.chunks {
            if chunks.send(bytes.to_vec()).is_err() {
                self.chunks = None;
            }
        }
    }

    /// Ends the input and waits for the snapshot; whether it was made.
    pub(crate) fn finish(mut self) -> bool {
        self.chunks = None;
        self.worker
            .take()
            .is_some_and(|worker| matches!(worker.join(), Ok(Ok(_))))
    }
}

impl Drop for Unpacking {
    /// An abandoned write (a failed download) ends the unpacking early; it
    /// is waited for, so that no thread writes in the store after.
    fn drop(&mut self) {
        self.chunks = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Reads the chunks a channel brings, until its sender is gone.
struct ChunkReader {
    chunks: Receiver<Vec<u8>>,
    current: Vec<u8>,
    offset: usize,
}

impl ChunkReader {
    fn new(chunks: Receiver<Vec<u8>>) -> ChunkReader {
        ChunkReader {
            chunks,
            current: Vec::new(),
            offset: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.current = chunk;
                    self.offset = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
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

    /// Writes `blob` to `store` through a writer of the blob of `layer`, a
    /// few bytes at a time as a download would; whether the store has a
    /// snapshot of the layer's diff ID once the blob is committed.
    fn write_in_pieces(store: &Store, layer: &LayerDigests, blob: &[u8]) -> bool {
        use std::io::Write;
        let mut writer = store.layer_blob_writer(layer).expect("writer");
        for piece in blob.chunks(1000) {
            writer.write_all(piece).expect("write");
        }
        writer.commit(None).expect("commit");
        store.has_snapshot(&layer.diff_id)
    }

    #[test]
    fn a_layer_blob_is_unpacked_as_it_is_written() {
        let (_dir, first) = store();
        let layer = layer(&first, &[("etc/hostname", "streamed"), ("bin/tool", "x")]);
        let blob = fs::read(first.blob_path(&layer.blob)).expect("blob");

        let (_other_dir, other) = store();
        assert!(write_in_pieces(&other, &layer, &blob));
        assert!(other.has_blob(&layer.blob));
        let snapshot = other.snapshot_path(&layer.diff_id);
        assert_eq!(
            fs::read_to_string(snapshot.join("etc/hostname")).expect("file"),
            "streamed"
        );

        // Bytes that are not the layer the diff ID names leave no snapshot,
        // only the blob, which is what was written.
        let (_third_dir, third) = store();
        let wrong = LayerDigests {
            diff_id: Digest::of(b"another layer"),
            ..layer
        };
        assert!(!write_in_pieces(&third, &wrong, &blob));
        assert!(third.has_blob(&layer.blob));
        assert!(!third.has_snapshot(&layer.diff_id));
    }

    #[test]
    fn an_abandoned_layer_blob_leaves_neither_blob_nor_snapshot() {
        use std::io::Write;
        let (_dir, first) = store();
        let layer = layer(&first, &[("etc/hostname", "cut short")]);
        let blob = fs::read(first.blob_path(&layer.blob)).expect("blob");
        let (_other_dir, other) = store();
        let mut writer = other.layer_blob_writer(&layer).expect("writer");
        writer.write_all(&blob[..blob.len() / 2]).expect("write");
        drop(writer);
        assert!(!other.has_blob(&layer.blob));
        assert!(!other.has_snapshot(&layer.diff_id));
        assert_eq!(
            fs::read_dir(other.tmp_dir()).expect("tmp").count(),
            0,
            "no unpacking left behind"
        );
    }

    #[test]
    fn a_layer_made_for_export_gets_its_snapshot_and_blob_at_once() {
        let (_dir, store) = store();
        let make_diff = |name: &str| {
            let work = store.temp_dir().expect("temp");
            let diff = work.path().join(name);
            fs::create_dir_all(diff.join("app")).expect("mkdir");
            fs::write(diff.join("app/main.txt"), "exported").expect("write");
            (work, diff)
        };
        let gzip = PackOptions {
            compression: Compression::Gzip { level: 6 },
            source_date_epoch: Some(0),
        };
        let (_work, diff) = make_diff("diff");
        let packed = store
            .snapshot_and_blob_from_diff(&diff, &gzip)
            .expect("snapshot and blob");
        assert!(store.has_snapshot(&packed.diff_id));
        assert!(store.has_blob(&packed.digest));
        assert_ne!(packed.digest, packed.diff_id, "compressed");
        assert_eq!(
            store.diff_id_of_blob(&packed.digest).unwrap(),
            packed.diff_id
        );

        // The same files made a snapshot alone give the same layer.
        let (_other_dir, other) = super::tests::store();
        let work = other.temp_dir().expect("temp");
        let alone = work.path().join("alone");
        fs::create_dir_all(alone.join("app")).expect("mkdir");
        fs::write(alone.join("app/main.txt"), "exported").expect("write");
        let hashed = other.snapshot_from_diff(&alone, Some(0)).expect("snapshot");
        assert_eq!(hashed.diff_id, packed.diff_id);
        assert_eq!(
            other
                .blob_from_snapshot(&hashed.diff_id, &gzip)
                .expect("blob")
                .digest,
            packed.digest
        );
    }
}
