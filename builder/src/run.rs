//! RUN steps: the step's definition turned into a sandboxed process on the
//! image's layers, its mounts prepared from the store, the context, other
//! stages, secrets and the SSH agent; its changes turned into a layer.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{bail, Context};
use kiln_cache::{CacheMount, Sharing, Store};
use kiln_frontend::graph::{self, BuildGraph, Mount, RunStep, Sharing as MountSharing, Source};
use kiln_runtime::{
    AgentProxy, BundleOwners, Layers, Network, Outcome, Runtime, Sensitive, Step, StepIo,
    StepMount, User,
};

use crate::build::Outputs;
use crate::error::ProcessFailed;
use crate::image::Layer;
use crate::users::resolve_exec_user;

/// The host name steps see.
const HOSTNAME: &str = "kiln";

/// Where `--mount=type=ssh` puts the agent socket when no target is given
/// is decided by the frontend; this is the variable that points to it.
const SSH_AUTH_SOCK: &str = "SSH_AUTH_SOCK";

/// Lines of a failed step's output repeated in its error.
const ERROR_TAIL_LINES: usize = 10;

/// Ctrl-C and SIGTERM: a running step is stopped and cleaned up before
/// kiln exits; with no step running kiln exits at once (the store is
/// consistent at every point).
#[derive(Debug, Default)]
pub struct Interrupt {
    /// A signal came.
    requested: AtomicBool,
    /// Running steps must stop: a signal came, or a stage failed.
    stop: AtomicBool,
    steps_running: AtomicUsize,
}

/// The exit code of a kiln stopped by a signal, as shells report Ctrl-C.
pub const INTERRUPTED_EXIT_CODE: u8 = 130;

impl Interrupt {
    /// Handles SIGINT and SIGTERM from now on. A second signal ends kiln
    /// at once.
    pub fn install() -> crate::Result<Arc<Interrupt>> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let interrupt = Arc::new(Interrupt::default());
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            .context("installing the Ctrl-C handler")?;
        let handler = Arc::clone(&interrupt);
        std::thread::spawn(move || {
            for _ in signals.forever() {
                let again = handler.requested.swap(true, Ordering::SeqCst);
                handler.stop.store(true, Ordering::SeqCst);
                if again || handler.steps_running.load(Ordering::SeqCst) == 0 {
                    eprintln!("kiln: interrupted");
                    // The step dies with kiln; its secrets must not stay.
                    kiln_runtime::remove_bundles(BundleOwners::ThisProcess);
                    std::process::exit(i32::from(INTERRUPTED_EXIT_CODE));
                }
            }
        });
        Ok(interrupt)
    }

    /// Stops the running steps (another stage failed), as a signal would,
    /// but without ending kiln or counting as a first Ctrl-C.
    pub fn stop_steps(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Set once running steps must stop.
    pub fn flag(&self) -> &AtomicBool {
        &self.stop
    }

    /// Marks a step as running while the result lives: a signal then stops
    /// the step instead of ending kiln at once.
    pub fn step_running(&self) -> RunningStep<'_> {
        self.steps_running.fetch_add(1, Ordering::SeqCst);
        RunningStep(self)
    }
}

/// Counts a running step while it lives.
pub struct RunningStep<'a>(&'a Interrupt);

impl Drop for RunningStep<'_> {
    fn drop(&mut self) {
        self.0.steps_running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a `--secret` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// `--secret id=ID[,src=PATH|,env=VAR][,type=file|env]`, as buildx reads
/// it: with neither source, the variable named ID if it is set, else the
/// file ID.
pub fn parse_secret(spec: &str) -> crate::Result<(String, SecretSource)> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    let mut kind = None;
    for field in spec.split(',') {
        let (key, value) = field
            .split_once('=')
            .with_context(|| format!("invalid --secret {spec:?}: {field:?} is not KEY=VALUE"))?;
        match key.trim().to_ascii_lowercase().as_str() {
            "id" => id = Some(value.to_string()),
            "src" | "source" => src = Some(value.to_string()),
            "env" => env = Some(value.to_string()),
            "type" if value == "file" || value == "env" => kind = Some(value.to_string()),
            "type" => bail!("invalid --secret {spec:?}: type must be file or env"),
            other => bail!(
                "invalid --secret {spec:?}: unknown key {other:?} (expected id, src, env or type)"
            ),
        }
    }
    let id = id
        .or_else(|| src.clone())
        .or_else(|| env.clone())
        .with_context(|| format!("invalid --secret {spec:?}: it needs id=NAME"))?;
    let source = match (src, env, kind.as_deref()) {
        (Some(_), Some(_), _) => {
            bail!("invalid --secret {spec:?}: give either src or env, not both")
        }
        (Some(path), None, Some("env")) | (None, Some(path), Some("env")) => {
            SecretSource::Env(path)
        }
        (Some(path), None, _) => SecretSource::File(PathBuf::from(path)),
        (None, Some(var), _) => SecretSource::Env(var),
        (None, None, Some("env")) => SecretSource::Env(id.clone()),
        (None, None, Some(_)) => SecretSource::File(PathBuf::from(&id)),
        (None, None, None) if std::env::var_os(&id).is_some() => SecretSource::Env(id.clone()),
        (None, None, None) => SecretSource::File(PathBuf::from(&id)),
    };
    Ok((id, source))
}

/// `--ssh ID[=SOCKET]`: `default` without a socket is `$SSH_AUTH_SOCK`.
pub fn parse_ssh(spec: &str) -> crate::Result<(String, PathBuf)> {
    let (id, socket) = match spec.split_once('=') {
        Some((id, socket)) => (id.to_string(), PathBuf::from(socket)),
        None => {
            let socket = std::env::var_os(SSH_AUTH_SOCK)
                .filter(|s| !s.is_empty())
                .with_context(|| {
                    format!("--ssh {spec}: SSH_AUTH_SOCK is not set (start an agent, or give --ssh {spec}=SOCKET)")
                })?;
            (spec.to_string(), PathBuf::from(socket))
        }
    };
    if id.is_empty() {
        bail!("invalid --ssh {spec:?}: the id is empty");
    }
    let metadata = std::fs::metadata(&socket)
        .with_context(|| format!("--ssh {spec}: cannot reach {}", socket.display()))?;
    if !metadata.file_type().is_socket() {
        bail!(
            "--ssh {spec}: {} is not an agent socket (kiln forwards a running ssh-agent; add keys to it with ssh-add)",
            socket.display()
        );
    }
    Ok((id, socket))
}

/// The seam between a build and the sandbox its RUN steps run in: the
/// build prepares the step (its process, user, mounts, the layers below
/// it and a directory for its changes) and the sandbox runs it. Tests put
/// a double here that records what would have run.
pub trait StepRunner: Sync {
    /// Runs `step` on `layers` (its changes go to `layers.upper`), passing
    /// each line it writes to `output`; a step still running when `stop`
    /// is set is killed and reported as [`crate::Error::Interrupted`].
    fn run_step(
        &self,
        step: &Step,
        layers: &Layers<'_>,
        output: &mut dyn FnMut(&str),
        stop: &AtomicBool,
    ) -> crate::Result<Outcome>;
}

/// The real sandbox: an OCI runtime (runc) through kiln's helper.
pub struct Sandbox {
    runtime_program: Option<PathBuf>,
    state_root: PathBuf,
    runtime: OnceLock<Runtime>,
}

impl Sandbox {
    pub fn new(store: &Store, runtime_program: Option<PathBuf>) -> Self {
        // Secrets of a kiln that was killed go first, whatever this one
        // builds.
        kiln_runtime::remove_bundles(BundleOwners::Dead);
        Sandbox {
            runtime_program,
            state_root: store.root().join("runtime"),
            runtime: OnceLock::new(),
        }
    }

    /// The OCI runtime, found (and what dead kiln processes left cleaned
    /// up) the first time a step needs it.
    pub fn runtime(&self) -> crate::Result<&Runtime> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime);
        }
        let runtime = Runtime::new(self.runtime_program.as_deref(), &self.state_root)?;
        runtime
            .clean_leftovers()
            .context("removing what earlier kiln processes left")?;
        Ok(self.runtime.get_or_init(|| runtime))
    }
}

impl StepRunner for Sandbox {
    fn run_step(
        &self,
        step: &Step,
        layers: &Layers<'_>,
        output: &mut dyn FnMut(&str),
        stop: &AtomicBool,
    ) -> crate::Result<Outcome> {
        Ok(self
            .runtime()?
            .run(step, layers, StepIo::Lines(output), stop)?)
    }
}

/// The secrets and SSH agents a build was given, by id.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub secrets: BTreeMap<String, SecretSource>,
    pub ssh: BTreeMap<String, PathBuf>,
}

impl Secrets {
    fn secret(&self, id: &str) -> crate::Result<Option<Sensitive>> {
        match self.secrets.get(id) {
            None => Ok(None),
            Some(SecretSource::File(path)) => std::fs::read(path)
                .map(|bytes| Some(Sensitive(bytes)))
                .with_context(|| format!("reading secret {id:?} from {}", path.display())),
            Some(SecretSource::Env(var)) => match std::env::var_os(var) {
                Some(value) => Ok(Some(Sensitive(value.into_encoded_bytes()))),
                None => bail!("secret {id:?} is to come from ${var}, which is not set"),
            },
        }
    }
}

/// What a step's mounts hold on to while it runs.
#[derive(Default)]
struct Prepared {
    mounts: Vec<StepMount>,
    secret_env: Vec<(String, Sensitive)>,
    env: Vec<String>,
    _cache_locks: Vec<CacheMount>,
    _agents: Vec<AgentProxy>,
}

impl crate::build::Executor<'_> {
    /// Runs a RUN step on `layers`; its changes become a layer (none when
    /// it changed nothing).
    pub(crate) fn run_step(
        &self,
        run: &RunStep,
        layers: &[Layer],
        outputs: &Outputs,
        graph: &BuildGraph,
        progress: &crate::progress::Step<'_>,
    ) -> crate::Result<Option<Layer>> {
        let view = self.view(layers)?;
        let user = resolve_exec_user(&run.user, &view)
            .with_context(|| format!("finding user {:?}", run.user))?;
        let scratch = self.store.temp_dir()?;
        let prepared = self.prepare_mounts(run, outputs, graph, scratch.path())?;
        let mut env = run.env.clone();
        env.extend(run.proxy_env.iter().cloned());
        env.extend(prepared.env.iter().cloned());
        let step = Step {
            args: run.args.clone(),
            env,
            secret_env: prepared.secret_env.clone(),
            cwd: if run.workdir.is_empty() {
                "/".to_string()
            } else {
                run.workdir.clone()
            },
            user: User {
                uid: user.uid,
                gid: user.gid,
                additional_gids: user.additional_gids,
            },
            hostname: HOSTNAME.to_string(),
            network: match run.network {
                graph::Network::None => Network::None,
                graph::Network::Host => Network::Host,
            },
            insecure: run.security == graph::Security::Insecure,
            mounts: prepared.mounts.clone(),
        };
        let lowers = view.layers().to_vec();
        self.in_diff(|diff| {
            let _running = self.interrupt.step_running();
            let layers = Layers {
                lowers: &lowers,
                upper: diff,
                scratch: scratch.path(),
            };
            let mut print = |line: &str| progress.log(line);
            let outcome =
                self.sandbox
                    .run_step(&step, &layers, &mut print, self.interrupt.flag())?;
            if outcome.success() {
                return Ok(());
            }
            let first = outcome.tail.len().saturating_sub(ERROR_TAIL_LINES);
            Err(ProcessFailed {
                command: run.args.join(" "),
                outcome: outcome.describe(),
                tail: outcome.tail[first..].to_vec(),
            }
            .into())
        })
    }

    /// The cache directories a step mounts, locked as each asks: once per
    /// id (the first mount of an id decides how), and in the order of their
    /// ids, so that steps of concurrent builds never wait for each other in
    /// a circle.
    fn lock_caches(
        &self,
        run: &RunStep,
        outputs: &Outputs,
        graph: &BuildGraph,
    ) -> crate::Result<BTreeMap<String, CacheMount>> {
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
                Some(from) => Some(self.source_tree(from, outputs, graph)?),
                None => None,
            };
            let cache = self
                .store
                .cache_mount(&id, sharing, |dir| -> crate::Result<()> {
                    if let Some(tree) = &seed {
                        crate::copy::copy_subtree(tree, source, dir, self.now)?;
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

    fn prepare_mounts(
        &self,
        run: &RunStep,
        outputs: &Outputs,
        graph: &BuildGraph,
        scratch: &Path,
    ) -> crate::Result<Prepared> {
        let mut prepared = Prepared::default();
        let caches = self.lock_caches(run, outputs, graph)?;
        let mut ssh_socket_set = run.env.iter().any(|v| v.starts_with("SSH_AUTH_SOCK="));
        for (index, mount) in run.mounts.iter().enumerate() {
            match mount {
                Mount::Bind {
                    target,
                    from,
                    source,
                    readonly,
                } => {
                    let tree = self.source_tree(from, outputs, graph)?;
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
                    let filtered = matches!(from, Source::Context)
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
