//! Cache mounts that travel with a build cache (`mounts=true`): exported
//! as a compressed tar of their files, only when they changed, and seeded
//! from an imported cache the first time a step that runs mounts them on a
//! machine that has none.

use std::path::Path;

use kiln_cache::compress::decompressed;
use kiln_cache::extract::{extract, ExtractOptions};
use kiln_cache::mounts::fingerprint;
use kiln_cache::pack::PackOptions;
use kiln_cache::{Compression, LayerRecord, MountNote, Sharing, Store};

use crate::cache_io::{Imported, Origin};
use crate::error::Context;
use crate::image::Layer;
use crate::progress::{human_size, Progress};
use crate::remote::Remote;

/// Fills new cache mount directories from what the imported caches hold.
pub(crate) struct MountSeeder<'a> {
    pub store: &'a Store,
    pub remote: &'a Remote,
    pub imported: &'a Imported,
    pub progress: &'a Progress,
}

impl MountSeeder<'_> {
    /// Fills `dir`, the new directory of cache mount `id`, with what an
    /// imported cache holds for it. False when none holds it, or when it
    /// cannot be had: then a warning says why, and the mount starts empty
    /// as it would have without the cache.
    pub(crate) fn seed(&self, id: &str, dir: &Path) -> bool {
        let Some((layer, origin)) = self.imported.mount(id) else {
            return false;
        };
        match self.unpack(id, layer, origin, dir) {
            Ok(()) => true,
            Err(error) => {
                self.progress.warn(&format!(
                    "the cache mount {id:?} of {} cannot be used ({}): it starts empty",
                    origin.describe(),
                    error.one_line()
                ));
                empty(dir);
                false
            }
        }
    }

    fn unpack(
        &self,
        id: &str,
        layer: &LayerRecord,
        origin: &Origin,
        dir: &Path,
    ) -> crate::Result<()> {
        if !self.store.has_blob(&layer.blob) {
            match origin {
                Origin::Registry(reference) => {
                    let fetched = Layer::from_record(layer)?;
                    self.remote.try_fetch_layers(
                        self.store,
                        &[(reference.clone(), fetched)],
                        false,
                    )?;
                }
                Origin::Local(cache) => {
                    let path = kiln_cache::Layout::new(cache).blob_path(&layer.blob);
                    let file = std::fs::File::open(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    self.store.import_blob(file, &layer.blob)?;
                }
            }
        }
        let blob = self.store.open_blob(&layer.blob)?;
        let tar = decompressed(std::io::BufReader::new(blob))
            .with_context(|| format!("reading {}", layer.blob))?;
        extract(tar, dir, &ExtractOptions::layer(self.store.limits()))?;
        // Noted at once: until a step changes these files, an export
        // reuses the blob they came from. (Should `dir` become another
        // instance than the shared one, the fingerprint tells them apart.)
        let (fingerprint, _) = fingerprint(dir)?;
        self.store.set_cache_mount_note(
            id,
            &MountNote {
                fingerprint,
                layer: layer.clone(),
            },
        )?;
        Ok(())
    }
}

/// Leaves `dir` empty after a seed that failed halfway.
fn empty(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// The cache mounts `ids` that this machine has, each as the blob of its
/// files: the blob noted for it while its files are unchanged and the
/// blob is `reachable` (in the store, or where the export can mount it
/// from), else packed again. A mount bigger than `max_size` is left out,
/// with a warning that says so.
pub(crate) fn mounts_to_export(
    store: &Store,
    ids: &[&str],
    max_size: u64,
    reachable: &dyn Fn(&kiln_cache::Digest) -> bool,
    progress: &Progress,
) -> crate::Result<Vec<(String, LayerRecord)>> {
    let mut exported = Vec::new();
    for &id in ids {
        if store.cache_mount_content(id).is_none() {
            continue;
        }
        // Shared: steps of other builds that lock it wait, and it is not
        // read while one of them writes.
        let mount = store.cache_mount(id, Sharing::Shared, |_| Ok::<(), kiln_cache::Error>(()))?;
        let (fingerprint, size) = fingerprint(&mount.path)?;
        if size > max_size {
            progress.warn(&format!(
                "the cache mount {id:?} holds {}, more than mounts-max-size ({}): it is left out of the cache",
                human_size(size),
                human_size(max_size)
            ));
            continue;
        }
        let noted = store
            .cache_mount_note(id)
            .filter(|note| note.fingerprint == fingerprint && reachable(&note.layer.blob));
        let layer = match noted {
            Some(note) => note.layer,
            None => {
                let options = PackOptions {
                    compression: Compression::default(),
                    source_date_epoch: None,
                };
                let packed = store
                    .pack_layer(&mount.path, &options)
                    .with_context(|| format!("packing the cache mount {id:?}"))?;
                let layer = Layer::packed(&packed).record();
                store.set_cache_mount_note(
                    id,
                    &MountNote {
                        fingerprint,
                        layer: layer.clone(),
                    },
                )?;
                layer
            }
        };
        exported.push((id.to_string(), layer));
    }
    Ok(exported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_cache::Digest;

    #[test]
    fn a_mount_is_packed_again_only_when_its_files_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let progress = Progress::silent();
        let mount = store
            .cache_mount("pkg", Sharing::Shared, |dir| {
                std::fs::write(dir.join("index"), b"downloaded").map_err(crate::Error::from)
            })
            .unwrap();
        // A blob no pack would make: handed back only while the files are
        // those it was noted for.
        let noted = LayerRecord {
            diff_id: Digest::of(b"tar"),
            blob: Digest::of(b"noted"),
            size: 1,
            media_type: oci_spec::image::MediaType::ImageLayerGzip,
        };
        let (fingerprint, _) = fingerprint(&mount.path).unwrap();
        store
            .set_cache_mount_note(
                "pkg",
                &MountNote {
                    fingerprint,
                    layer: noted.clone(),
                },
            )
            .unwrap();
        let everywhere = |_: &Digest| true;
        let export = |reachable: &dyn Fn(&Digest) -> bool| {
            mounts_to_export(&store, &["pkg", "unused"], 1 << 20, reachable, &progress).unwrap()
        };
        assert_eq!(export(&everywhere), [("pkg".to_string(), noted.clone())]);

        let nowhere = |_: &Digest| false;
        let repacked = export(&nowhere);
        assert_ne!(
            repacked[0].1, noted,
            "a blob that cannot be had is packed again"
        );
        assert!(store.has_blob(&repacked[0].1.blob));

        std::fs::write(mount.path.join("index"), b"updated").unwrap();
        let changed = export(&everywhere);
        assert_ne!(
            changed[0].1, repacked[0].1,
            "changed files make another blob"
        );
        assert_eq!(store.cache_mount_note("pkg").unwrap().layer, changed[0].1);
        drop(mount);

        let too_big = mounts_to_export(&store, &["pkg"], 4, &everywhere, &progress).unwrap();
        assert!(too_big.is_empty(), "a mount over the limit is left out");
    }
}
