//! `kiln pull`, `push`, `login` and `logout`: the store and the
//! credentials against registries.

use kiln_builder::error::Context;
use kiln_builder::image::{self, StoredImage};
use kiln_builder::remote::Remote;
use kiln_builder::{Error, Result};
use kiln_cache::Store;
use kiln_registry::Reference;

use crate::bail;

pub fn pull(store: &Store, remote: &Remote, image: &str, platform: Option<&str>) -> Result<()> {
    let reference = Reference::parse(image)?;
    let platform = match platform {
        Some(text) => kiln_frontend::Platform::parse(text)
            .map_err(|reason| Error::Invalid(format!("invalid --platform {text:?}: {reason}")))?,
        None => kiln_frontend::Platform::host(),
    };
    let _in_use = store.lock_shared()?;
    let digest = remote.pull(store, &reference, &platform)?;
    println!("{digest}");
    Ok(())
}

pub fn push(store: &Store, remote: &Remote, image: &str, destination: Option<&str>) -> Result<()> {
    let _in_use = store.lock_shared()?;
    let found = StoredImage::find(store, image)?;
    let destination = match destination {
        Some(destination) => Reference::parse(destination)?,
        None => {
            if image::image_id(store, image)?.is_some() {
                bail!("an image given by ID needs a destination: kiln push {image} REGISTRY/REPOSITORY:TAG");
            }
            Reference::parse(image)?
        }
    };
    if let Some(digest) = destination.digest() {
        if digest != found.manifest_digest.to_string() {
            bail!(
                "{image} is {}, not the {digest} the destination names",
                found.manifest_digest
            );
        }
    }
    remote.push(
        store,
        &found.manifest_digest,
        std::slice::from_ref(&destination),
        &std::collections::HashMap::new(),
        &std::collections::HashSet::new(),
    )?;
    println!("{}", found.manifest_digest);
    Ok(())
}

pub fn login(
    remote: &Remote,
    server: &str,
    username: Option<String>,
    password: Option<String>,
    password_stdin: bool,
) -> Result<()> {
    let registry = kiln_builder::remote::registry_of(server)?;
    let username = username.context("give the user name with -u")?;
    let password = match (password, password_stdin) {
        (Some(password), _) => password,
        (None, true) => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("reading the password from standard input")?;
            password.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => bail!("give the password with --password-stdin (or -p)"),
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    remote.login(&registry, &username, &password)?;
    println!("Login Succeeded");
    Ok(())
}

pub fn logout(remote: &Remote, server: &str) -> Result<()> {
    let registry = kiln_builder::remote::registry_of(server)?;
    if remote.logout(&registry)? {
        println!("Removed the login for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(())
}
