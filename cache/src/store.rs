//! The store: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) holding every blob, the names of images, and the
//! unpacked snapshots of layers.
//!
//! Every file is written as an [`AtomicFile`], so a crash at any point
//! leaves the store readable: at worst a temporary file that the next kiln
//! removes. Several kiln processes can use one store: `index.json` is
//! rewritten under an exclusive lock, builds hold a shared lock that garbage
//! collection must wait for. The layout's files are named and written by
//! [`crate::layout`], as every OCI layout kiln writes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use crate::atomic::{sync_dir, AtomicFile};
use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::error::Error;
use crate::layers::{LayerDigests, Unpacking};
use crate::layout::{index_entry, ref_name, Layout, REF_NAME};
use crate::limits::{Limits, SpaceWatch};
use crate::pack::{pack_dir, PackOptions, PackedLayer};
use crate::unsynced;

/// A kiln store at a root directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    layout: Layout,
    limits: Limits,
}

/// A lock on the store, released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// An image the store knows, by name or (untagged) by digest only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub name: Option<String>,
    pub manifest: Descriptor,
}

/// Something `check` found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    CorruptBlob { digest: Digest, actual: Digest },
    UnreadableBlob { path: PathBuf, reason: String },
    StrayFile { path: PathBuf },
    MissingBlob { digest: Digest, needed_by: String },
    InvalidManifest { digest: Digest, reason: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::CorruptBlob { digest, actual } => {
                write!(
                    f,
                    "blob {digest} is corrupt: its content hashes to {actual}"
                )
            }
            Problem::UnreadableBlob { path, reason } => {
                write!(f, "cannot read {}: {reason}", path.display())
            }
            Problem::StrayFile { path } => write!(f, "{} is not a blob", path.display()),
            Problem::MissingBlob { digest, needed_by } => {
                write!(f, "blob {digest} is missing (needed by {needed_by})")
            }
            Problem::InvalidManifest { digest, reason } => {
                write!(f, "manifest {digest} is invalid: {reason}")
            }
        }
    }
}

impl Store {
    /// Opens the store at `root`, creating its layout when it does not exist
    /// yet, and removes what crashed processes left in its temporary
    /// directory when no other process is using the store.
    pub fn open(root: &Path) -> Result<Store, Error> {
        let store = Store {
            root: root.to_path_buf(),
            layout: Layout::new(root),
            limits: Limits::default(),
        };
        fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let owner = store.check_owner(root, fs::metadata(root))?.uid();
        let writable = rustix::fs::access(root, rustix::fs::Access::WRITE_OK).is_ok();
        let is_owner = owner == rustix::process::geteuid().as_raw();
        // Snapshots hold image files as they are, set-user-ID programs and
        // device nodes included: only the store's owner may reach them.
        for (dir, mode) in [
            (store.blobs_dir(), 0o755),
            (store.snapshots_dir(), 0o700),
            (store.tmp_dir(), 0o700),
        ] {
            if writable {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(mode)
                    .create(&dir)
                    .map_err(|e| Error::io(&dir, e))?;
            }
            let metadata = store.check_owner(&dir, fs::symlink_metadata(&dir))?;
            if is_owner && writable && metadata.mode() & 0o777 != mode {
                fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                    .map_err(|e| Error::io(&dir, e))?;
            }
        }
        if !store.layout.has_version_file().map_err(as_store_error)? {
            store.layout.write_version_file()?;
        }
        if !writable || !is_owner {
            // Someone else's store, or a read-only one: readable, not ours
            // to tidy up.
            return Ok(store);
        }
        if !store.index_path().exists() {
            // Under the index lock, lest a second kiln opening the new store
            // at the same moment overwrite a name the first has just set.
            let lock = store.lock_file("index.lock")?;
            lock.lock()
                .map_err(|e| Error::io(&store.root.join("index.lock"), e))?;
            if !store.index_path().exists() {
                store.layout.write_index(&[])?;
            }
        }
        if let Some(lock) = store.try_lock_exclusive()? {
            store.clean_tmp()?;
            unsynced::recover(&store.snapshots_dir(), |snapshot| store.discard(snapshot))?;
            drop(lock);
        }
        Ok(store)
    }

    /// The same store, with other bounds on what a layer may unpack to and
    /// another reserve of free space.
    pub fn with_limits(mut self, limits: Limits) -> Store {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Checks that `path` is a real directory whose owner may be trusted:
    /// root only uses a store root owns, since whoever owns it could point
    /// its directories at any file root would then write or delete.
    fn check_owner(
        &self,
        path: &Path,
        metadata: io::Result<fs::Metadata>,
    ) -> Result<fs::Metadata, Error> {
        let metadata = metadata.map_err(|e| Error::io(path, e))?;
        if !metadata.is_dir() {
            return Err(Error::BadStore {
                path: self.root.clone(),
                reason: format!("{} is not a directory", path.display()),
            });
        }
        let euid = rustix::process::geteuid();
        if euid.is_root() && metadata.uid() != 0 {
            return Err(Error::BadStore {
                path: self.root.clone(),
                reason: format!(
                    "{} belongs to user {}, and root does not use a store another user controls \
                     (choose another --root, or chown -R root: it)",
                    path.display(),
                    metadata.uid()
                ),
            });
        }
        Ok(metadata)
    }

    /// Removes a directory of the store: renamed into `tmp/` first, so that
    /// it disappears at once even if the removal is interrupted.
    pub(crate) fn discard(&self, path: &Path) -> Result<(), Error> {
        let doomed = self.temp_dir()?;
        let moved = doomed.path().join("discarded");
        fs::rename(path, &moved).map_err(|e| Error::io(path, e))?;
        doomed.close().map_err(|e| Error::io(&moved, e))
    }

    /// Makes a finished snapshot directory safe to rename into place; see
    /// [`unsynced`].
    fn prepare_snapshot(&self, dir: &Path) -> Result<(), Error> {
        if unsynced::before_snapshot(&self.snapshots_dir())? {
            unsynced::sync_file_system(dir)?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the sandbox keeps the state of the steps it runs (their
    /// bundles, and what a killed kiln left behind).
    pub fn runtime_dir(&self) -> PathBuf {
        self.root.join("runtime")
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.layout.blobs_dir()
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn index_path(&self) -> PathBuf {
        self.layout.index_path()
    }

    /// Opens a lock file, read-only when it exists (locks need no write
    /// access, and a read-only store can still be read).
    fn lock_file(&self, name: &str) -> Result<File, Error> {
        let path = self.root.join(name);
        match File::open(&path) {
            Ok(file) => Ok(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e)),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Held by every process that uses the store's content, so that garbage
    /// collection ([`Store::lock_exclusive`]) never removes what is in use.
    pub fn lock_shared(&self) -> Result<StoreLock, Error> {
        let file = self.lock_file("lock")?;
        file.lock_shared()
            .map_err(|e| Error::io(&self.root.join("lock"), e))?;
        Ok(StoreLock { _file: file })
    }

    /// Waits until no other process uses the store, and keeps it that way.
    pub fn lock_exclusive(&self) -> Result<StoreLock, Error> {
        let file = self.lock_file("lock")?;
        file.lock()
            .map_err(|e| Error::io(&self.root.join("lock"), e))?;
        Ok(StoreLock { _file: file })
    }

    pub(crate) fn try_lock_exclusive(&self) -> Result<Option<StoreLock>, Error> {
        let file = self.lock_file("lock")?;
        match file.try_lock() {
            Ok(()) => Ok(Some(StoreLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&self.root.join("lock"), e)),
        }
    }

    pub(crate) fn clean_tmp(&self) -> Result<(), Error> {
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))? {
            let path = entry.map_err(|e| Error::io(&tmp, e))?.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// A scratch directory inside the store, removed when dropped.
    pub fn temp_dir(&self) -> Result<tempfile::TempDir, Error> {
        tempfile::Builder::new()
            .prefix("work-")
            .tempdir_in(self.tmp_dir())
            .map_err(|e| Error::io(&self.tmp_dir(), e))
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.layout.blob_path(digest)
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File, Error> {
        File::open(self.blob_path(digest)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::MissingBlob(*digest),
            _ => Error::io(&self.blob_path(digest), e),
        })
    }

    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        let mut bytes = Vec::new();
        self.open_blob(digest)?
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&self.blob_path(digest), e))?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(Error::DigestMismatch {
                expected: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// A writer for a new blob; [`BlobWriter::commit`] moves it into place.
    pub fn blob_writer(&self) -> Result<BlobWriter, Error> {
        // In `tmp/`, not beside the blobs: the store's cleanup removes what
        // a crash leaves there.
        let tmp = self.tmp_dir();
        let file = AtomicFile::new_in(&tmp, "blob-")?;
        Ok(BlobWriter {
            blobs: self.blobs_dir(),
            writer: HashingWriter::new(BufWriter::with_capacity(256 * 1024, file)),
            unpacking: None,
            space: SpaceWatch::new(&tmp, self.limits.keep_free)?,
        })
    }

    /// A writer of the blob of `layer` that also unpacks the layer into its
    /// snapshot as the bytes come, when the store has no snapshot of it yet
    /// (see [`BlobWriter::commit`]).
    pub fn layer_blob_writer(&self, layer: &LayerDigests) -> Result<BlobWriter, Error> {
        let mut writer = self.blob_writer()?;
        if !self.has_snapshot(&layer.diff_id) {
            writer.unpacking = Some(Unpacking::start(self.clone(), *layer));
        }
        Ok(writer)
    }

    pub fn write_blob(&self, bytes: &[u8]) -> Result<(Digest, u64), Error> {
        let digest = Digest::of(bytes);
        if self.has_blob(&digest) {
            return Ok((digest, bytes.len() as u64));
        }
        let mut writer = self.blob_writer()?;
        writer
            .write_all(bytes)
            .map_err(|e| Error::io(&self.tmp_dir(), e))?;
        writer.commit(Some(&digest))
    }

    /// Copies a blob from `reader`, refusing it unless it matches `expected`.
    pub fn import_blob<R: Read>(&self, reader: R, expected: &Digest) -> Result<u64, Error> {
        let mut writer = self.blob_writer()?;
        let mut reader = reader;
        io::copy(&mut reader, &mut writer).map_err(|e| Error::io(&self.tmp_dir(), e))?;
        let (_, size) = writer.commit(Some(expected))?;
        Ok(size)
    }

    /// Packs the tree at `dir` into a layer blob.
    /// The diff ID and tar size a directory would pack to, writing nothing:
    /// a layer whose blob nothing needs yet.
    pub fn hash_layer(&self, dir: &Path, options: &PackOptions) -> Result<PackedLayer, Error> {
        let uncompressed = PackOptions {
            compression: crate::Compression::Uncompressed,
            source_date_epoch: options.source_date_epoch,
        };
        let (_, layer) = pack_dir(dir, &uncompressed, io::sink())?;
        Ok(layer)
    }

    pub fn pack_layer(&self, dir: &Path, options: &PackOptions) -> Result<PackedLayer, Error> {
        let (writer, layer) = pack_dir(dir, options, self.blob_writer()?)?;
        writer.commit(Some(&layer.digest))?;
        Ok(layer)
    }

    fn read_index(&self) -> Result<ImageIndex, Error> {
        self.layout.read_index().map_err(as_store_error)
    }

    /// Every image of the store, named ones first by name.
    pub fn images(&self) -> Result<Vec<ImageEntry>, Error> {
        let mut entries: Vec<ImageEntry> = self
            .read_index()?
            .manifests()
            .iter()
            .map(|d| ImageEntry {
                name: ref_name(d).map(str::to_string),
                manifest: d.clone(),
            })
            .collect();
        entries.sort_by(|a, b| (a.name.is_none(), &a.name).cmp(&(b.name.is_none(), &b.name)));
        Ok(entries)
    }

    /// The manifest an image name points to.
    pub fn resolve(&self, name: &str) -> Result<Option<Descriptor>, Error> {
        Ok(self
            .images()?
            .into_iter()
            .find(|e| e.name.as_deref() == Some(name))
            .map(|e| e.manifest))
    }

    /// Points `name` at `manifest` (replacing what it pointed at), or keeps
    /// an untagged manifest when `name` is `None`.
    pub fn set_name(&self, name: Option<&str>, manifest: &Descriptor) -> Result<(), Error> {
        self.update_index(|manifests| {
            let entry = match name {
                Some(name) => {
                    // A named image is no longer listed as untagged.
                    manifests.retain(|d| {
                        ref_name(d) != Some(name)
                            && !(ref_name(d).is_none() && d.digest() == manifest.digest())
                    });
                    index_entry(manifest, &[(REF_NAME, name)])
                }
                None => {
                    if manifests.iter().any(|d| d.digest() == manifest.digest()) {
                        return;
                    }
                    index_entry(manifest, &[])
                }
            };
            manifests.push(entry);
        })
    }

    /// Removes a name; returns whether it existed.
    pub fn remove_name(&self, name: &str) -> Result<bool, Error> {
        let removed = self.remove_images(|entry| entry.name.as_deref() == Some(name))?;
        Ok(!removed.is_empty())
    }

    /// Removes the entries (names, or untagged images) `remove` picks and
    /// returns them.
    pub fn remove_images(
        &self,
        remove: impl Fn(&ImageEntry) -> bool,
    ) -> Result<Vec<ImageEntry>, Error> {
        let mut removed = Vec::new();
        self.update_index(|manifests| {
            manifests.retain(|d| {
                let entry = ImageEntry {
                    name: ref_name(d).map(str::to_string),
                    manifest: d.clone(),
                };
                if remove(&entry) {
                    removed.push(entry);
                    false
                } else {
                    true
                }
            });
        })?;
        Ok(removed)
    }

    fn update_index(&self, change: impl FnOnce(&mut Vec<Descriptor>)) -> Result<(), Error> {
        let lock = self.lock_file("index.lock")?;
        lock.lock()
            .map_err(|e| Error::io(&self.root.join("index.lock"), e))?;
        let before = self.read_index()?.manifests().clone();
        let mut manifests = before.clone();
        change(&mut manifests);
        manifests.sort_by(|a, b| {
            (ref_name(a), a.digest().to_string()).cmp(&(ref_name(b), b.digest().to_string()))
        });
        // A rebuild names the image it named before: no write, no syncs.
        if manifests == before {
            return Ok(());
        }
        self.layout.write_index(&manifests)
    }

    pub fn snapshot_path(&self, diff_id: &Digest) -> PathBuf {
        self.snapshots_dir().join(diff_id.hex())
    }

    pub fn has_snapshot(&self, diff_id: &Digest) -> bool {
        self.snapshot_path(diff_id).is_dir()
    }

    /// Makes the snapshot of a layer: `fill` writes its files into an empty
    /// directory, which then becomes the snapshot in one rename.
    pub fn create_snapshot(
        &self,
        diff_id: &Digest,
        fill: impl FnOnce(&Path) -> Result<(), Error>,
    ) -> Result<PathBuf, Error> {
        let target = self.snapshot_path(diff_id);
        if target.is_dir() {
            return Ok(target);
        }
        let work = self.temp_dir()?;
        let dir = work.path().join("snapshot");
        fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        fill(&dir)?;
        self.prepare_snapshot(&dir)?;
        match fs::rename(&dir, &target) {
            Ok(()) => {}
            // Another process made the same snapshot meanwhile.
            Err(_) if target.is_dir() => {}
            Err(e) => return Err(Error::io(&target, e)),
        }
        sync_dir(&self.snapshots_dir())?;
        Ok(target)
    }

    /// Makes an existing directory (on the store's file system, such as a
    /// [`Store::temp_dir`]) the snapshot of a layer, by renaming it.
    pub fn adopt_snapshot(&self, diff_id: &Digest, dir: &Path) -> Result<PathBuf, Error> {
        let target = self.snapshot_path(diff_id);
        if target.is_dir() {
            return Ok(target);
        }
        self.prepare_snapshot(dir)?;
        match fs::rename(dir, &target) {
            Ok(()) => {}
            Err(_) if target.is_dir() => {}
            Err(e) => return Err(Error::io(&target, e)),
        }
        sync_dir(&self.snapshots_dir())?;
        Ok(target)
    }

    /// Checks every blob against its digest and every image's manifest,
    /// configuration and layers for presence.
    pub fn check(&self) -> Result<Vec<Problem>, Error> {
        let mut problems = Vec::new();
        let blobs = self.blobs_dir();
        let mut names: Vec<PathBuf> = fs::read_dir(&blobs)
            .map_err(|e| Error::io(&blobs, e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::io(&blobs, e))?;
        names.sort();
        for path in names {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
                problems.push(Problem::StrayFile { path });
                continue;
            };
            match File::open(&path).and_then(|file| {
                let mut reader = HashingReader::new(file);
                io::copy(&mut reader, &mut io::sink())?;
                Ok(reader.finish().0)
            }) {
                Ok(actual) if actual == digest => {}
                Ok(actual) => problems.push(Problem::CorruptBlob { digest, actual }),
                Err(e) => problems.push(Problem::UnreadableBlob {
                    path,
                    reason: e.to_string(),
                }),
            }
        }
        for entry in self.images()? {
            let label = entry
                .name
                .clone()
                .unwrap_or_else(|| entry.manifest.digest().to_string());
            let Ok(digest) = entry.manifest.digest().to_string().parse::<Digest>() else {
                problems.push(Problem::InvalidManifest {
                    digest: Digest::empty(),
                    reason: format!(
                        "{label} has an unsupported digest {}",
                        entry.manifest.digest()
                    ),
                });
                continue;
            };
            self.check_manifest(&digest, &label, &mut problems);
        }
        Ok(problems)
    }

    fn check_manifest(&self, digest: &Digest, label: &str, problems: &mut Vec<Problem>) {
        let bytes = match self.read_blob(digest) {
            Ok(bytes) => bytes,
            Err(Error::MissingBlob(_)) => {
                problems.push(Problem::MissingBlob {
                    digest: *digest,
                    needed_by: label.to_string(),
                });
                return;
            }
            // A corrupt manifest was reported with the blobs.
            Err(_) => return,
        };
        let manifest = match ImageManifest::from_reader(&bytes[..]) {
            Ok(manifest) => manifest,
            Err(e) => {
                problems.push(Problem::InvalidManifest {
                    digest: *digest,
                    reason: e.to_string(),
                });
                return;
            }
        };
        let referenced = std::iter::once(manifest.config()).chain(manifest.layers());
        for descriptor in referenced {
            match descriptor.digest().to_string().parse::<Digest>() {
                Ok(blob) if !self.has_blob(&blob) => problems.push(Problem::MissingBlob {
                    digest: blob,
                    needed_by: label.to_string(),
                }),
                Ok(_) => {}
                Err(e) => problems.push(Problem::InvalidManifest {
                    digest: *digest,
                    reason: e.to_string(),
                }),
            }
        }
    }
}

/// The store's errors say the store is unusable where the layout's say the
/// directory is not an OCI layout.
fn as_store_error(error: Error) -> Error {
    match error {
        Error::BadLayout { path, reason } => Error::BadStore { path, reason },
        other => other,
    }
}

/// A blob being written; it exists in the store only after `commit`.
pub struct BlobWriter {
    blobs: PathBuf,
    writer: HashingWriter<BufWriter<AtomicFile>>,
    /// The layer unpacked from the same bytes, for a layer's blob.
    unpacking: Option<Unpacking>,
    /// The free space where the blob is written, kept above the reserve.
    space: SpaceWatch,
}

impl BlobWriter {
    /// How many bytes have been written so far.
    pub fn written(&self) -> u64 {
        self.writer.written()
    }

    /// Moves the blob into the store under its digest (see
    /// [`AtomicFile::commit`]), after checking it against `expected` when
    /// given. A layer's blob is committed once its snapshot is made too (or
    /// failed, and it is unpacked from the store when needed).
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64), Error> {
        if let Some(unpacking) = self.unpacking {
            unpacking.finish();
        }
        let (buffered, digest, size) = self.writer.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| Error::io(&self.blobs, e.into_error()))?;
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(Error::DigestMismatch {
                    expected: *expected,
                    actual: digest,
                });
            }
        }
        file.commit(&self.blobs.join(digest.hex()))?;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.space
            .admit(buf.len() as u64)
            .map_err(io::Error::other)?;
        let written = self.writer.write(buf)?;
        if let Some(unpacking) = &mut self.unpacking {
            unpacking.feed(&buf[..written]);
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}
