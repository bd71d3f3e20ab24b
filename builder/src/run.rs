//! RUN steps: the step's definition turned into a sandboxed process on the
//! image's layers, its mounts prepared from the store, the context, other
//! stages, secrets and the SSH agent; its changes turned into a layer.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::error::Context;
use kiln_cache::Store;
use kiln_frontend::graph::{self, RunStep};
use kiln_runtime::{BundleOwners, Layers, Network, Outcome, Runtime, Step, StepIo, User};

use crate::cache_mounts::MountSeeder;
use crate::error::ProcessFailed;
use crate::image::Layer;
use crate::mounts::StepMounts;
use crate::secrets::Secrets;
use crate::sources::Sources;
use crate::users::resolve_exec_user;

/// Lines of a failed step's output repeated in its error.
const ERROR_TAIL_LINES: usize = 10;

/// Stops a build's running steps: on Ctrl-C and SIGTERM (the caller
/// passes signals on with [`Interrupt::signal`]) a running step is stopped
/// and cleaned up before kiln exits; with no step running kiln exits at
/// once (the store is consistent at every point). A failed stage stops the
/// others' steps the same way.
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
    /// A signal (Ctrl-C, SIGTERM) came: running steps are stopped.
    /// Returns whether kiln should end at once instead: a second signal,
    /// or nothing running that would stop and clean up. The caller must
    /// then call [`Interrupt::abandon_steps`] before exiting.
    pub fn signal(&self) -> bool {
        let again = self.requested.swap(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        again || self.steps_running.load(Ordering::SeqCst) == 0
    }

    /// Removes what running steps hold that must not outlive kiln (their
    /// bundles hold secrets): for a kiln about to exit without waiting for
    /// them.
    pub fn abandon_steps(&self) {
        kiln_runtime::remove_bundles(BundleOwners::ThisProcess);
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
            state_root: store.runtime_dir(),
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

/// What a RUN step needs beyond its definition: where it runs, what it
/// reads, and what it may be given.
pub(crate) struct Runner<'a> {
    pub store: &'a Store,
    pub sandbox: &'a dyn StepRunner,
    pub interrupt: &'a Interrupt,
    pub secrets: &'a Secrets,
    pub sources: &'a Sources<'a>,
    /// The time recorded for files the step's mounts are seeded with.
    pub now: i64,
    /// What the build gives every step (`--add-host`, `--ulimit`,
    /// `--shm-size`).
    pub resources: &'a kiln_runtime::Resources,
    /// Fills cache mounts this machine does not have from imported caches.
    pub seeder: MountSeeder<'a>,
}

impl Runner<'_> {
    /// Runs a RUN step on `layers`; its changes become a layer (none when
    /// it changed nothing).
    /// `export`: the layer goes into what the build exports (see
    /// `Layers::in_diff`).
    pub(crate) fn run(
        &self,
        run: &RunStep,
        layers: &[Layer],
        export: bool,
        progress: &crate::progress::Step<'_>,
    ) -> crate::Result<Option<Layer>> {
        let built = self.sources.layers;
        let view = built.view(layers)?;
        let user = resolve_exec_user(&run.user, &view)
            .with_context(|| format!("finding user {:?}", run.user))?;
        let scratch = self.store.temp_dir()?;
        let mounts = StepMounts {
            store: self.store,
            sources: self.sources,
            secrets: self.secrets,
            now: self.now,
            seeder: &self.seeder,
        };
        let prepared = mounts.prepare(run, scratch.path())?;
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
            network: match run.network {
                graph::Network::None => Network::None,
                graph::Network::Host => Network::Host,
            },
            insecure: run.security == graph::Security::Insecure,
            mounts: prepared.mounts.clone(),
            resources: self.resources.clone(),
        };
        let lowers = view.layers().to_vec();
        built.in_diff(export, |diff| {
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
}
