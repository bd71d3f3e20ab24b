//! RUN mounts: cache directories locked as they ask, bind mounts of the
//! context, stages and images, tmpfs, secrets and SSH agents, turned into
//! what the sandbox mounts.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kiln_cache::{CacheMount, Sharing, Store};
use kiln_frontend::graph::{Mount, RunStep, Sharing as MountSharing, Source};
use kiln_runtime::{AgentProxy, Sensitive, StepMount};

use crate::cache_mounts::MountSeeder;
use crate::error::{bail, Context};
use crate::secrets::{Secrets, SSH_AUTH_SOCK};
use crate::sources::Sources;

/// What a step's mounts are made from.
pub(crate) struct StepMounts<'a> {
    pub store: &'a Store,
    pub sources: &'a Sources<'a>,
    pub secrets: &'a Secrets,
    /// The time recorded for files mounts are seeded with.
    pub now: i64,
    /// Seeds new cache mounts from imported caches.
    pub seeder: &'a MountSeeder<'a>,
}

/// What a step's mounts hold on to while it runs.
#[derive(Default)]
pub(crate) struct Prepared {
    pub mounts: Vec<StepMount>,
    pub secret_env: Vec<(String, Sensitive)>,
    pub env: Vec<String>,
    _cache_locks: Vec<CacheMount>,
    _agents: Vec<AgentProxy>,
}

impl StepMounts<'_> {
    /// The cache directories a step mounts, locked as each asks: once per
    /// id (the first mount of an id decides how), and in the order of their
    /// ids, so that steps of concurrent builds never wait for each other in
    /// a circle.
    fn lock_caches(&self, run: &RunStep) -> crate::Result<BTreeMap<String, CacheMount>> {
        let mut first_of_id = BTreeMap::new();
        for mount in &run.mounts {
            if let Mount::Cache { id, .. } = mount {
                first_of_id.entry(id.clone()).or_insert(mount);
            }
        }
        let mut caches = BTreeMap::new();
        for (id, mount) in first_of_id {
            let Mount::Cache {
                sharing,
                from,
                source,
                mode,
                uid,
                gid,
                ..
            } = mount
            else {
                continue;
            };
            let sharing = match sharing {
                MountSharing::Shared => Sharing::Shared,
                MountSharing::Private => Sharing::Private,
                MountSharing::Locked => Sharing::Locked,
            };
            let seed = match from {
                Some(from) => Some(self.sources.tree(from)?),
                None => None,
            };
            let cache = self
                .store
                .cache_mount(&id, sharing, |dir| -> crate::Result<()> {
                    // What the cache mount held where it was used last wins
                    // over `from=`: it started from the same.
                    if !self.seeder.seed(&id, dir) {
                        if let Some(tree) = &seed {
                            crate::copy::copy_subtree(tree, source, dir, self.now)?;
                        }
                    }
                    std::os::unix::fs::chown(dir, Some(*uid), Some(*gid))
                        .and_then(|()| {
                            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode))
                        })
                        .with_context(|| format!("preparing the cache mount {id:?}"))
                })?;
            caches.insert(id, cache);
        }
        Ok(caches)
    }

    /// The mounts of `run`, made from the store, the step's sources,
    /// secrets and SSH agents; what they need on the host goes below
    /// `scratch`.
    pub(crate) fn prepare(&self, run: &RunStep, scratch: &Path) -> crate::Result<Prepared> {
        let mut prepared = Prepared::default();
        let caches = self.lock_caches(run)?;
        let mut ssh_socket_set = run.env.iter().any(|v| v.starts_with("SSH_AUTH_SOCK="));
        for (index, mount) in run.mounts.iter().enumerate() {
            match mount {
                Mount::Bind {
                    target,
                    from,
                    source,
                    readonly,
                } => {
                    let tree = self.sources.tree(from)?;
                    let entry = tree
                        .view
                        .resolve(source, true)
                        .with_context(|| format!("reading {source} in {}", tree.label))?
                        .with_context(|| {
                            format!(
                                "the bind mount at {target} needs {source}, which {} does not have",
                                tree.label
                            )
                        })?;
                    let filtered = matches!(from, Source::Context | Source::NamedContext { .. })
                        && tree.ignore.is_some_and(|ignore| !ignore.is_empty());
                    if filtered {
                        // The context as the build sees it: without what
                        // .dockerignore leaves out.
                        let copy = scratch.join(format!("context-{index}"));
                        crate::copy::copy_subtree(&tree, &entry.path, &copy, self.now)?;
                        prepared.mounts.push(StepMount::Layers {
                            lowers: vec![copy],
                            path: "/".to_string(),
                            target: target.clone(),
                            writable: !readonly,
                        });
                    } else {
                        prepared.mounts.push(StepMount::Layers {
                            lowers: tree.view.layers().to_vec(),
                            path: entry.path,
                            target: target.clone(),
                            writable: !readonly,
                        });
                    }
                }
                Mount::Cache {
                    target,
                    id,
                    readonly,
                    from,
                    source,
                    ..
                } => {
                    let Some(cache) = caches.get(id.as_str()) else {
                        bail!("the cache mount {id:?} was not prepared");
                    };
                    // Without `from`, `source` is a directory of the cache
                    // itself, which steps may have replaced with a link.
                    prepared.mounts.push(if from.is_none() && source != "/" {
                        StepMount::Beneath {
                            root: cache.path.clone(),
                            path: source.clone(),
                            target: target.clone(),
                            readonly: *readonly,
                        }
                    } else {
                        StepMount::Bind {
                            source: cache.path.clone(),
                            target: target.clone(),
                            readonly: *readonly,
                        }
                    });
                }
                Mount::Tmpfs { target, size } => prepared.mounts.push(StepMount::Tmpfs {
                    target: target.clone(),
                    size: *size,
                    mode: 0o1777,
                }),
                Mount::Secret {
                    id,
                    target,
                    env,
                    required,
                    mode,
                    uid,
                    gid,
                } => {
                    let Some(secret) = self.secrets.secret(id)? else {
                        if *required {
                            bail!("secret {id:?} is required: pass it with --secret id={id},src=FILE (or env=VARIABLE)");
                        }
                        continue;
                    };
                    if let Some(env) = env {
                        if std::str::from_utf8(&secret.0).is_err() || secret.0.contains(&0) {
                            bail!("secret {id:?} cannot be the variable {env}: it is not text");
                        }
                        prepared.secret_env.push((env.clone(), secret.clone()));
                    }
                    if let Some(target) = target {
                        prepared.mounts.push(StepMount::File {
                            target: target.clone(),
                            contents: secret,
                            uid: *uid,
                            gid: *gid,
                            mode: *mode,
                        });
                    }
                }
                Mount::Ssh {
                    id,
                    target,
                    required,
                    mode,
                    uid,
                    gid,
                } => {
                    let Some(agent) = self.secrets.ssh.get(id) else {
                        if *required {
                            bail!("the SSH agent {id:?} is required: pass it with --ssh {id} (or --ssh {id}=SOCKET)");
                        }
                        continue;
                    };
                    let proxy = AgentProxy::start(
                        &scratch.join(format!("ssh-{index}.sock")),
                        agent,
                        *uid,
                        *gid,
                        *mode,
                    )?;
                    prepared.mounts.push(StepMount::Bind {
                        source: proxy.socket.clone(),
                        target: target.clone(),
                        readonly: false,
                    });
                    prepared._agents.push(proxy);
                    if !ssh_socket_set {
                        prepared.env.push(format!("{SSH_AUTH_SOCK}={target}"));
                        ssh_socket_set = true;
                    }
                }
            }
        }
        prepared._cache_locks = caches.into_values().collect();
        for file in &run.inline_files {
            prepared.mounts.push(StepMount::File {
                target: file.path.clone(),
                contents: Sensitive(file.content.clone().into_bytes()),
                uid: 0,
                gid: 0,
                mode: file.mode,
            });
        }
        Ok(prepared)
    }
}
