//! `ADD URL`: each URL downloaded once per build, so that the key and the
//! step see the same bytes.

use std::collections::HashMap;
use std::sync::Mutex;

use kiln_cache::{Digest, Store};

use crate::copy::Downloaded;
use crate::error::Context;
use crate::remote::Remote;

/// The URLs a build downloaded, each kept for the step that adds it.
pub struct Downloads<'a> {
    store: &'a Store,
    remote: &'a Remote,
    done: Mutex<HashMap<String, Downloaded>>,
}

impl<'a> Downloads<'a> {
    pub fn new(store: &'a Store, remote: &'a Remote) -> Downloads<'a> {
        Downloads {
            store,
            remote,
            done: Mutex::new(HashMap::new()),
        }
    }

    /// Downloads a URL for ADD (once per build) and returns its digest.
    pub fn digest(&self, url: &str) -> crate::Result<Digest> {
        Ok(self.get(url)?.digest)
    }

    /// The download of `url` its key was made from (one per build: the
    /// lock is held while downloading, so that two stages adding the same
    /// URL cannot see two versions of it).
    pub fn get(&self, url: &str) -> crate::Result<Downloaded> {
        let mut downloads = self
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(downloaded) = downloads.get(url) {
            return Ok(downloaded.clone());
        }
        let downloaded = self
            .download(url)
            .with_context(|| format!("downloading {url}"))?;
        downloads.insert(url.to_string(), downloaded.clone());
        Ok(downloaded)
    }

    /// Downloads a URL for ADD into the store's scratch space.
    fn download(&self, url: &str) -> crate::Result<Downloaded> {
        let keep = self.store.temp_dir()?;
        let path = keep.path().join("download");
        let mut file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let fetched = self.remote.fetch(url, &mut file)?;
        let modified = fetched
            .modified
            .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|since| since.as_secs() as i64);
        Ok(Downloaded {
            path,
            digest: fetched.digest,
            modified,
            _keep: std::sync::Arc::new(keep),
        })
    }
}
