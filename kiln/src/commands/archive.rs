//! `kiln save` and `kiln load`: images to and from tar archives.

use std::path::Path;

use super::values::familiar;
use kiln_builder::archive::{self, ArchiveImage};
use kiln_builder::image::{self, Format, StoredImage};
use kiln_builder::Result;
use kiln_cache::Store;
use kiln_registry::Reference;

pub fn save(store: &Store, names: &[String], output: &Path, format: Format) -> Result<()> {
    let mut images = Vec::new();
    for name in names {
        let image = StoredImage::find(store, name)?;
        // Saved by ID or digest, an image goes without a name.
        let names = match image::image_id(store, name)? {
            Some(_) => Vec::new(),
            None => {
                let reference = Reference::parse(name)?;
                if reference.digest().is_none() {
                    vec![reference]
                } else {
                    Vec::new()
                }
            }
        };
        images.push((image, names));
    }
    let entries: Vec<ArchiveImage<'_>> = images
        .iter()
        .map(|(image, names)| ArchiveImage {
            image,
            names: names.clone(),
        })
        .collect();
    archive::write_archive(store, &entries, format, output, 0)
}

pub fn load(store: &Store, input: &Path) -> Result<()> {
    let _in_use = store.lock_shared()?;
    for loaded in archive::load(store, input)? {
        if loaded.names.is_empty() {
            println!("Loaded image: {}", loaded.manifest);
        }
        for name in &loaded.names {
            println!("Loaded image: {}", familiar(name));
        }
    }
    Ok(())
}
