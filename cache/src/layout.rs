//! OCI image layouts: the `oci-layout` file, `index.json` and the blobs
//! under `blobs/sha256/`. kiln writes them as directories (its store, a
//! local cache export) and inside tar streams (image archives); both take
//! their file names, index entries and index bytes from here, so that every
//! layout kiln writes says the same thing the same way.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, MediaType};

use crate::atomic::write_atomic;
use crate::digest::Digest;
use crate::error::Error;

/// The annotation of an index entry that names its image.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The file that marks a directory as an OCI layout, and its content.
pub const VERSION_FILE: &str = "oci-layout";
pub const VERSION_JSON: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const VERSION: &str = "1.0.0";

pub const INDEX_FILE: &str = "index.json";

/// The directory of the blobs, relative to the layout's root.
pub const BLOBS_DIR: &str = "blobs/sha256";

/// Where the blob `digest` is, relative to the layout's root (as Docker's
/// `manifest.json` names files too).
pub fn blob_path(digest: &Digest) -> String {
    format!("{BLOBS_DIR}/{}", digest.hex())
}

/// The entry of an index for `manifest`: its media type, digest, size and
/// platform, with `annotations` (none when empty); whatever else the
/// descriptor carries is left out.
pub fn index_entry(manifest: &Descriptor, annotations: &[(&str, &str)]) -> Descriptor {
    let mut entry = Descriptor::new(
        manifest.media_type().clone(),
        manifest.size(),
        manifest.digest().clone(),
    );
    entry.set_platform(manifest.platform().clone());
    if !annotations.is_empty() {
        entry.set_annotations(Some(
            annotations
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
        ));
    }
    entry
}

/// The name an index entry gives its image ([`REF_NAME`]).
pub fn ref_name(entry: &Descriptor) -> Option<&str> {
    entry
        .annotations()
        .as_ref()?
        .get(REF_NAME)
        .map(String::as_str)
}

/// `index.json` listing `manifests`, as canonical JSON (sorted keys), so
/// that the same entries always give the same bytes.
pub fn index_json(manifests: &[Descriptor]) -> Result<Vec<u8>, Error> {
    let manifests = serde_json::to_value(manifests).map_err(|source| Error::Encode {
        what: "an image index",
        source,
    })?;
    Ok(canonical_json(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MediaType::ImageIndex,
        "manifests": manifests,
    })))
}

/// An OCI layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout at `root`; nothing is read or written until asked.
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join(BLOBS_DIR)
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub fn index_path(&self) -> PathBuf {
        self.root.join(INDEX_FILE)
    }

    fn version_path(&self) -> PathBuf {
        self.root.join(VERSION_FILE)
    }

    fn invalid(&self, reason: String) -> Error {
        Error::BadLayout {
            path: self.root.clone(),
            reason,
        }
    }

    /// Whether the layout has its `oci-layout` file; an error when the file
    /// is not one of the version kiln reads.
    pub fn has_version_file(&self) -> Result<bool, Error> {
        let path = self.version_path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.invalid(format!("{VERSION_FILE} is not JSON: {e}")))?;
        if value["imageLayoutVersion"] != VERSION {
            return Err(self.invalid(format!(
                "unsupported image layout version {}",
                value["imageLayoutVersion"]
            )));
        }
        Ok(true)
    }

    /// Writes the `oci-layout` file (replacing what was there).
    pub fn write_version_file(&self) -> Result<(), Error> {
        write_atomic(&self.version_path(), VERSION_JSON)
    }

    pub fn has_index(&self) -> bool {
        self.index_path().is_file()
    }

    pub fn read_index(&self) -> Result<ImageIndex, Error> {
        let path = self.index_path();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // Unbuffered, the parser reads it a byte per system call.
        ImageIndex::from_reader(std::io::BufReader::new(file))
            .map_err(|e| self.invalid(format!("{INDEX_FILE} is invalid: {e}")))
    }

    /// Replaces `index.json` with one listing `manifests` ([`index_json`]).
    pub fn write_index(&self, manifests: &[Descriptor]) -> Result<(), Error> {
        write_atomic(&self.index_path(), &index_json(manifests)?)
    }
}

/// An OCI layout written into a tar stream, in the order readers that
/// stream an archive want: `oci-layout` and the blob directories first,
/// then the blobs, then `index.json` (and other files, such as Docker's
/// `manifest.json`). Every entry belongs to root, with the given
/// modification time.
pub struct LayoutTar<W: Write> {
    tar: tar::Builder<W>,
    mtime: u64,
}

impl<W: Write> LayoutTar<W> {
    /// Starts the layout in `out`; `mtime` is in seconds since 1970 (times
    /// before are written as 1970).
    pub fn new(out: W, mtime: i64) -> Result<LayoutTar<W>, Error> {
        let mut layout = LayoutTar {
            tar: tar::Builder::new(out),
            mtime: mtime.max(0) as u64,
        };
        layout.add_file(VERSION_FILE, VERSION_JSON)?;
        layout.add_dir("blobs/")?;
        layout.add_dir(&format!("{BLOBS_DIR}/"))?;
        Ok(layout)
    }

    /// Adds a blob of `size` bytes, read from `content`.
    pub fn add_blob(
        &mut self,
        digest: &Digest,
        size: u64,
        content: impl Read,
    ) -> Result<(), Error> {
        let path = blob_path(digest);
        let header = self.file_header(&path, size)?;
        self.tar
            .append(&header, content)
            .map_err(|source| Error::ArchiveWrite {
                entry: path,
                source,
            })
    }

    /// Adds `index.json` listing `manifests` ([`index_json`]).
    pub fn add_index(&mut self, manifests: &[Descriptor]) -> Result<(), Error> {
        self.add_file(INDEX_FILE, &index_json(manifests)?)
    }

    /// Adds a file at `path` holding `bytes`.
    pub fn add_file(&mut self, path: &str, bytes: &[u8]) -> Result<(), Error> {
        let header = self.file_header(path, bytes.len() as u64)?;
        self.tar
            .append(&header, bytes)
            .map_err(|source| Error::ArchiveWrite {
                entry: path.to_string(),
                source,
            })
    }

    /// Ends the tar stream and returns what it was written to.
    pub fn finish(self) -> Result<W, Error> {
        self.tar.into_inner().map_err(|source| Error::ArchiveWrite {
            entry: "the end of the archive".to_string(),
            source,
        })
    }

    fn file_header(&self, path: &str, size: u64) -> Result<tar::Header, Error> {
        let mut header = tar::Header::new_ustar();
        set_path(&mut header, path)?;
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(self.mtime);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        Ok(header)
    }

    fn add_dir(&mut self, path: &str) -> Result<(), Error> {
        let mut header = tar::Header::new_ustar();
        set_path(&mut header, path)?;
        header.set_size(0);
        header.set_mode(0o755);
        header.set_mtime(self.mtime);
        header.set_entry_type(tar::EntryType::Directory);
        header.set_cksum();
        self.tar
            .append(&header, io::empty())
            .map_err(|source| Error::ArchiveWrite {
                entry: path.to_string(),
                source,
            })
    }
}

fn set_path(header: &mut tar::Header, path: &str) -> Result<(), Error> {
    header.set_path(path).map_err(|source| Error::ArchiveWrite {
        entry: path.to_string(),
        source,
    })
}

/// JSON with object keys in sorted order, so that the same value always
/// gives the same bytes (and digest).
pub fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    fn sorted(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let ordered: BTreeMap<&String, serde_json::Value> =
                    map.iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::Value::Object(
                    ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(sorted).collect())
            }
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sorted(value)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{Arch, Os, PlatformBuilder};

    fn manifest() -> Descriptor {
        let digest: oci_spec::image::Digest = Digest::of(b"manifest")
            .to_string()
            .parse()
            .expect("a sha256 digest");
        let mut descriptor = Descriptor::new(MediaType::ImageManifest, 42, digest);
        descriptor.set_platform(Some(
            PlatformBuilder::default()
                .os(Os::Linux)
                .architecture(Arch::Amd64)
                .build()
                .expect("platform"),
        ));
        descriptor.set_urls(Some(vec!["https://example.com".into()]));
        descriptor
    }

    #[test]
    fn an_index_is_canonical_json_of_its_entries() {
        let named = index_entry(&manifest(), &[(REF_NAME, "app:1")]);
        assert_eq!(ref_name(&named), Some("app:1"));
        let json = String::from_utf8(index_json(&[named, index_entry(&manifest(), &[])]).unwrap())
            .expect("utf-8");
        let digest = Digest::of(b"manifest");
        assert_eq!(
            json,
            format!(
                "{{\"manifests\":[\
                 {{\"annotations\":{{\"{REF_NAME}\":\"app:1\"}},\"digest\":\"{digest}\",\
                 \"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
                 \"platform\":{{\"architecture\":\"amd64\",\"os\":\"linux\"}},\"size\":42}},\
                 {{\"digest\":\"{digest}\",\
                 \"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
                 \"platform\":{{\"architecture\":\"amd64\",\"os\":\"linux\"}},\"size\":42}}],\
                 \"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"schemaVersion\":2}}"
            ),
            "entries keep media type, digest, size and platform only"
        );
    }

    #[test]
    fn a_directory_layout_round_trips_its_index_and_checks_its_version() {
        let dir = tempfile::tempdir().expect("dir");
        let layout = Layout::new(dir.path());
        assert!(!layout.has_version_file().unwrap());
        layout.write_version_file().unwrap();
        assert!(layout.has_version_file().unwrap());
        assert!(!layout.has_index());
        let entry = index_entry(&manifest(), &[(REF_NAME, "cache")]);
        layout.write_index(std::slice::from_ref(&entry)).unwrap();
        assert_eq!(layout.read_index().unwrap().manifests(), &[entry]);
        assert_eq!(
            layout.blob_path(&Digest::of(b"x")),
            dir.path().join(blob_path(&Digest::of(b"x")))
        );

        std::fs::write(
            dir.path().join(VERSION_FILE),
            br#"{"imageLayoutVersion":"9"}"#,
        )
        .unwrap();
        let error = layout.has_version_file().unwrap_err().to_string();
        assert!(
            error.contains("unsupported image layout version"),
            "{error}"
        );
    }

    #[test]
    fn a_tar_layout_has_the_same_files_in_streaming_order() {
        let blob = b"blob bytes";
        let digest = Digest::of(blob);
        let mut layout = LayoutTar::new(Vec::new(), -5).unwrap();
        layout
            .add_blob(&digest, blob.len() as u64, &blob[..])
            .unwrap();
        layout.add_index(&[index_entry(&manifest(), &[])]).unwrap();
        let bytes = layout.finish().unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut entries = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            let header = entry.header();
            assert_eq!(header.mtime().unwrap(), 0, "times before 1970 are 1970");
            entries.push((
                entry.path().unwrap().to_string_lossy().into_owned(),
                header.mode().unwrap(),
                content,
            ));
        }
        let index = index_json(&[index_entry(&manifest(), &[])]).unwrap();
        assert_eq!(
            entries,
            [
                (VERSION_FILE.to_string(), 0o644, VERSION_JSON.to_vec()),
                ("blobs/".to_string(), 0o755, Vec::new()),
                ("blobs/sha256/".to_string(), 0o755, Vec::new()),
                (blob_path(&digest), 0o644, blob.to_vec()),
                (INDEX_FILE.to_string(), 0o644, index),
            ]
        );
    }
}
