//! Running a step. kiln starts a helper process (itself, with
//! `SANDBOX_ARG`) that takes a mount namespace and a pid namespace of its
//! own, mounts the overlay root there and runs the OCI runtime as the first
//! process of that pid namespace. The mount lives only in the helper's
//! namespace, so it goes away with the helper, whatever ends it; the
//! helper and the runtime die with their parent (PR_SET_PDEATHSIG), and the
//! step with the runtime, its pid namespace's first process. A kiln killed
//! with SIGKILL therefore leaves no process and no mount, only the
//! runtime's state directory, which the next kiln removes.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::stubs::Stubs;
use crate::{spec, Step, StepMount};

/// The first argument that makes the `kiln` binary the sandbox helper.
pub const SANDBOX_ARG: &str = "__kiln-sandbox";

/// Where the runtime mounts something into every step.
const STANDARD_MOUNT_POINTS: [&str; 5] =
    ["/proc", "/dev", "/sys", "/etc/hosts", "/etc/resolv.conf"];

/// The file in the bundle where the helper writes the runtime's pid.
const RUNTIME_PID: &str = "runtime-pid";

/// The file in the bundle where the helper leaves why it could not set the
/// sandbox up.
const SETUP_ERROR: &str = "setup-error";

/// How long `kiln run` lets its container end after SIGTERM before it
/// kills it (Docker's default for `docker stop`).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Lines of output kept for the report of a failed step.
const TAIL_LINES: usize = 20;

/// An overlay the helper mounts before it starts the runtime.
#[derive(Debug, Serialize, Deserialize)]
struct Overlay {
    /// Bottom first; may be empty (FROM scratch).
    lowers: Vec<PathBuf>,
    /// Where writes go, with the work directory overlayfs needs beside it;
    /// none for a read-only overlay.
    upper: Option<(PathBuf, PathBuf)>,
    at: PathBuf,
}

/// What the helper needs, written into the bundle by kiln.
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    runtime: PathBuf,
    state_dir: PathBuf,
    id: String,
    /// The root filesystem first, then those of `Layers` mounts.
    overlays: Vec<Overlay>,
    /// Directories resolved inside a root before the runtime binds them.
    beneath: Vec<BeneathBind>,
}

/// A directory below `root`, bound at `at` by the helper.
#[derive(Debug, Serialize, Deserialize)]
struct BeneathBind {
    root: PathBuf,
    path: String,
    at: PathBuf,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The exit code, or 128 + the signal that ended the step.
    pub code: i32,
    /// The last lines it wrote.
    pub tail: Vec<String>,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// "exit code 3" or "killed by signal 9".
    pub fn describe(&self) -> String {
        if self.code > 128 && self.code < 128 + 65 {
            format!("killed by signal {}", self.code - 128)
        } else {
            format!("exit code {}", self.code)
        }
    }
}

/// Where a step's input and output go.
pub enum StepIo<'a> {
    /// Each line it writes (stdout and stderr together) is passed on; it
    /// reads nothing.
    Lines(&'a mut dyn FnMut(&str)),
    /// kiln's own standard output and error (`kiln run`), its standard
    /// input too when `stdin` (`-i`); `terminal` (`-t`) gives the process a
    /// pseudo-terminal of its own, which the runtime joins to kiln's.
    Attached { stdin: bool, terminal: bool },
}

/// The layers a step runs on: `lowers` bottom first (snapshot
/// directories), `upper` an empty directory that receives its changes, and
/// `scratch` an empty directory on the same file system for the overlays'
/// work directories and mount points.
pub struct Layers<'a> {
    pub lowers: &'a [PathBuf],
    pub upper: &'a Path,
    pub scratch: &'a Path,
}

/// `path` made absolute: the runtime and the helper run in the bundle or
/// other directories, where a relative path (a context given as `.`) names
/// something else.
fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(|e| Error::io(path, e))
}

/// The lower directories of an overlay, bottom first, made absolute and
/// each only once: overlayfs refuses a directory that appears twice (two
/// steps that made the same layer, such as two empty ones), and the upper
/// of two copies hides all of the lower one anyway.
fn overlay_lowers(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let absolute_paths = paths
        .iter()
        .map(|p| absolute(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut lowers = Vec::with_capacity(absolute_paths.len());
    for (index, path) in absolute_paths.iter().enumerate() {
        if !absolute_paths[index + 1..].contains(path) {
            lowers.push(path.clone());
        }
    }
    Ok(lowers)
}

/// Where bundles live: in memory, so that secrets and the step's
/// environment never reach a disk.
const BUNDLE_ROOT: &str = "/dev/shm";

/// The bundle directory of a step, removed when dropped.
struct Bundle(PathBuf);

impl Bundle {
    fn create(id: &str) -> Result<Bundle, Error> {
        let path = Path::new(BUNDLE_ROOT).join(id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Bundle(path))
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An OCI runtime and the directory it keeps its state in.
pub struct Runtime {
    program: PathBuf,
    /// Per kiln process: `state_root/PID`.
    state_dir: PathBuf,
    state_root: PathBuf,
}

static STEPS: AtomicU64 = AtomicU64::new(0);

fn find_in_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

impl Runtime {
    /// `program` (default: `runc` from PATH or /usr/sbin), keeping its state
    /// under `state_root`.
    pub fn new(program: Option<&Path>, state_root: &Path) -> Result<Runtime, Error> {
        let program = match program {
            // Absolute: the helper runs it from another directory.
            Some(path) if path.is_file() => {
                std::path::absolute(path).map_err(|e| Error::io(path, e))?
            }
            Some(path) => match path
                .to_str()
                .filter(|p| !p.contains('/'))
                .and_then(find_in_path)
            {
                Some(found) => found,
                None => return Err(Error::RuntimeMissing(path.to_path_buf())),
            },
            None => find_in_path("runc").ok_or_else(|| Error::RuntimeMissing("runc".into()))?,
        };
        let state_dir = state_root.join(std::process::id().to_string());
        Ok(Runtime {
            program,
            state_dir,
            state_root: state_root.to_path_buf(),
        })
    }

    /// Removes what runtimes of kiln processes that no longer run left:
    /// their containers' state and cgroups (their processes and mounts died
    /// with them).
    pub fn clean_leftovers(&self) -> Result<(), Error> {
        remove_bundles(BundleOwners::Dead);
        let entries = match std::fs::read_dir(&self.state_root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&self.state_root, e)),
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<i32>().ok())
            else {
                continue;
            };
            if process_alive(pid) {
                continue;
            }
            let dir = entry.path();
            let mut ids = Vec::new();
            if let Ok(containers) = std::fs::read_dir(&dir) {
                for container in containers.flatten() {
                    if let Some(id) = container.file_name().to_str() {
                        let _ = Command::new(&self.program)
                            .arg("--root")
                            .arg(&dir)
                            .args(["delete", "--force", id])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                        ids.push(id.to_string());
                    }
                }
            }
            remove_empty_cgroups(&ids);
            // Another kiln starting at the same moment may be removing
            // it too: gone is what both want.
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if std::fs::symlink_metadata(&dir).is_ok() {
                    return Err(Error::io(&dir, e));
                }
            }
        }
        Ok(())
    }

    /// Runs `step` on `layers`, its output going where `io` says.
    /// `interrupted` stops it: the step is killed and `Error::Interrupted`
    /// returned.
    pub fn run(
        &self,
        step: &Step,
        layers: &Layers<'_>,
        io: StepIo<'_>,
        interrupted: &AtomicBool,
    ) -> Result<Outcome, Error> {
        let id = format!(
            "kiln-{}-{}",
            std::process::id(),
            STEPS.fetch_add(1, Ordering::Relaxed)
        );
        let bundle = Bundle::create(&id)?;
        let bundle_dir = &bundle.0;
        let rootfs = absolute(&layers.scratch.join("rootfs"))?;
        let etc = bundle_dir.join("etc");
        let files = bundle_dir.join("files");
        for dir in [&rootfs, &etc, &files] {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::create_dir_all(&self.state_dir).map_err(|e| Error::io(&self.state_dir, e))?;
        write_file(
            &etc.join("hosts"),
            &hosts(step.resources.hostname(), &step.resources.extra_hosts),
        )?;
        write_file(&etc.join("resolv.conf"), &resolv_conf())?;
        let mut overlays = vec![Overlay {
            lowers: overlay_lowers(layers.lowers)?,
            upper: Some((
                absolute(layers.upper)?,
                absolute(&layers.scratch.join("work"))?,
            )),
            at: rootfs.clone(),
        }];
        let mut sources = Vec::with_capacity(step.mounts.len());
        let mut beneath = Vec::new();
        for (index, mount) in step.mounts.iter().enumerate() {
            sources.push(match mount {
                StepMount::Bind { source, .. } => Some(absolute(source)?),
                StepMount::Beneath { root, path, .. } => {
                    let at = absolute(&layers.scratch.join(format!("beneath-{index}")))?;
                    std::fs::create_dir_all(&at).map_err(|e| Error::io(&at, e))?;
                    beneath.push(BeneathBind {
                        root: absolute(root)?,
                        path: path.clone(),
                        at: at.clone(),
                    });
                    Some(at)
                }
                StepMount::Tmpfs { .. } => None,
                StepMount::File {
                    contents,
                    uid,
                    gid,
                    mode,
                    ..
                } => {
                    let path = files.join(index.to_string());
                    write_private_file(&path, &contents.0, *uid, *gid, *mode)?;
                    Some(path)
                }
                StepMount::Layers {
                    lowers,
                    path,
                    writable,
                    ..
                } => {
                    let inside = path.trim_start_matches('/');
                    let lowers = overlay_lowers(lowers)?;
                    if let ([only], false) = (lowers.as_slice(), writable) {
                        Some(only.join(inside))
                    } else {
                        let base = absolute(&layers.scratch.join(format!("mount-{index}")))?;
                        let at = base.join("merged");
                        let upper = if *writable || lowers.len() < 2 {
                            // overlayfs needs an upper directory unless it
                            // merges at least two lower ones.
                            Some((base.join("upper"), base.join("work")))
                        } else {
                            None
                        };
                        overlays.push(Overlay {
                            lowers,
                            upper,
                            at: at.clone(),
                        });
                        Some(at.join(inside))
                    }
                }
            });
        }
        for overlay in &overlays {
            let dirs = [Some(&overlay.at)]
                .into_iter()
                .chain(
                    overlay
                        .upper
                        .iter()
                        .flat_map(|(upper, work)| [Some(upper), Some(work)]),
                )
                .flatten();
            for dir in dirs {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
        }
        let terminal = matches!(io, StepIo::Attached { terminal: true, .. });
        let config = spec::config(step, &rootfs, &etc, &sources, terminal)?;
        let config_path = bundle_dir.join("config.json");
        config
            .save(&config_path)
            .map_err(|e| Error::Spec(format!("writing {}: {e}", config_path.display())))?;
        let plan = Plan {
            runtime: self.program.clone(),
            state_dir: self.state_dir.clone(),
            id: id.clone(),
            overlays,
            beneath,
        };
        let plan_json = serde_json::to_vec(&plan).map_err(|e| Error::Spec(e.to_string()))?;
        write_file(&bundle_dir.join("plan.json"), &plan_json)?;
        let stubs = Stubs::before(
            STANDARD_MOUNT_POINTS
                .into_iter()
                .chain(step.mounts.iter().map(|mount| mount.target())),
            layers.lowers,
        );
        make_root_directory(layers.upper)?;

        let result = self.supervise(bundle_dir, io, interrupted);
        // `run` removes its container when it ends; one that was killed, or
        // whose runtime was, has not.
        let _ = Command::new(&self.program)
            .arg("--root")
            .arg(&self.state_dir)
            .args(["delete", "--force", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        stubs.remove(layers.upper);
        let setup_error = std::fs::read_to_string(bundle_dir.join(SETUP_ERROR)).ok();
        drop(bundle);
        let outcome = result?;
        match setup_error {
            Some(message) => Err(Error::Setup(message)),
            None => Ok(outcome),
        }
    }

    /// Starts the helper on the bundle and waits for it, passing on the
    /// step's output; kills it when `interrupted` is set.
    fn supervise(
        &self,
        bundle_dir: &Path,
        io: StepIo<'_>,
        interrupted: &AtomicBool,
    ) -> Result<Outcome, Error> {
        // The running binary itself, even if an upgrade replaced the file
        // since kiln started.
        let helper = PathBuf::from("/proc/self/exe");
        let mut command = Command::new(&helper);
        command.arg(SANDBOX_ARG).arg(bundle_dir);
        // `kiln run` stops its container as `docker stop` does: SIGTERM
        // first, SIGKILL when it has not ended after a grace period. A
        // build step is killed at once, as BuildKit cancels one.
        let terminal = matches!(io, StepIo::Attached { terminal: true, .. });
        let grace = match io {
            StepIo::Lines(_) => None,
            StepIo::Attached { .. } => Some(STOP_GRACE),
        };
        let (reader, mut output) = match io {
            StepIo::Lines(output) => {
                let (reader, writer) = std::io::pipe().map_err(|e| Error::io("a pipe", e))?;
                let writer_for_stderr = writer.try_clone().map_err(|e| Error::io("a pipe", e))?;
                command
                    .stdin(Stdio::null())
                    .stdout(writer)
                    .stderr(writer_for_stderr);
                (Some(reader), Some(output))
            }
            StepIo::Attached { stdin, .. } => {
                if !stdin {
                    command.stdin(Stdio::null());
                }
                (None, None)
            }
        };
        // The terminal tells its foreground process group, kiln, that its
        // size changed; the runtime resizes the step's terminal to match
        // when it gets the signal in turn.
        let resized = Arc::new(AtomicBool::new(false));
        let resize_handler = terminal
            .then(|| signal_hook::flag::register(signal_hook::consts::SIGWINCH, resized.clone()))
            .transpose()
            .map_err(|e| Error::io("a SIGWINCH handler", e))?;
        let kiln = rustix::process::getpid();
        // SAFETY: between fork and exec only async-signal-safe calls are
        // made (prctl, getppid, setsid) and nothing is allocated: errors are
        // raw errnos.
        unsafe {
            command.pre_exec(move || {
                // Die with kiln (and if kiln died before this line, now);
                // and a session of its own, so that a Ctrl-C at the
                // terminal reaches kiln, which stops the step.
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                if rustix::process::getppid() != Some(kiln) {
                    // ESRCH: kiln is gone. Only an errno crosses back to
                    // spawn(), so a message would be allocated here only to
                    // be lost.
                    return Err(rustix::io::Errno::SRCH.into());
                }
                rustix::process::setsid()?;
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| Error::io(&helper, e))?;
        // The write ends now live only in the helper and what it starts, so
        // the pipe ends when the step's pid namespace is gone.
        drop(command);

        let (lines, received) = mpsc::channel::<String>();
        let pump = reader.map(|reader| {
            std::thread::spawn(move || {
                for line in BufReader::new(reader).split(b'\n') {
                    let Ok(line) = line else { break };
                    let text = String::from_utf8_lossy(&line)
                        .trim_end_matches('\r')
                        .to_string();
                    if lines.send(text).is_err() {
                        break;
                    }
                }
            })
        });
        let mut tail = std::collections::VecDeque::with_capacity(TAIL_LINES);
        let mut keep = |line: String| {
            if let Some(output) = output.as_mut() {
                output(&line);
            }
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        };
        let mut interrupted_at: Option<Instant> = None;
        let mut killed = false;
        let status = loop {
            // Also the pause between checks when there is no output to read
            // (the channel of `Inherit` has a sender that never sends).
            if let Ok(line) = received.recv_timeout(Duration::from_millis(50)) {
                keep(line);
            }
            if interrupted.load(Ordering::Relaxed) && interrupted_at.is_none() {
                interrupted_at = Some(Instant::now());
                if grace.is_some() {
                    // `runc run` passes the signals it gets on to the step.
                    if let Some(pid) = runtime_pid(bundle_dir) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                    }
                }
            }
            if resized.swap(false, Ordering::Relaxed) {
                if let Some(pid) = runtime_pid(bundle_dir) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::WINCH);
                }
            }
            let due =
                interrupted_at.is_some_and(|at| grace.is_none_or(|grace| at.elapsed() >= grace));
            if due && !killed {
                killed = true;
                // The whole session: the helper, the runtime, and with
                // the runtime's pid namespace the step.
                if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::io(&helper, e));
                }
            }
        };
        if let Some(handler) = resize_handler {
            signal_hook::low_level::unregister(handler);
        }
        if let Some(pump) = pump {
            // Every process that held the pipe has ended with the helper's
            // pid namespace: read to its end.
            let _ = pump.join();
            for line in received.try_iter() {
                keep(line);
            }
        }
        if interrupted_at.is_some() {
            return Err(Error::Interrupted);
        }
        use std::os::unix::process::ExitStatusExt;
        let code = match (status.code(), status.signal()) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 255,
        };
        Ok(Outcome {
            code,
            tail: tail.into_iter().collect(),
        })
    }
}

/// The runtime's pid, as the helper wrote it, once it has started.
fn runtime_pid(bundle_dir: &Path) -> Option<rustix::process::Pid> {
    std::fs::read_to_string(bundle_dir.join(RUNTIME_PID))
        .ok()
        .and_then(|pid| pid.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
}

/// Whose bundles [`remove_bundles`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleOwners {
    /// kiln processes that no longer run.
    Dead,
    /// This process, as it is about to exit.
    ThisProcess,
}

/// Removes the bundles (and the secrets in them) of `owners`.
pub fn remove_bundles(owners: BundleOwners) {
    let Ok(bundles) = std::fs::read_dir(BUNDLE_ROOT) else {
        return;
    };
    let me = std::process::id() as i32;
    for bundle in bundles.flatten() {
        let name = bundle.file_name();
        let owner = name
            .to_str()
            .and_then(|name| name.strip_prefix("kiln-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok());
        let remove = owner.is_some_and(|pid| match owners {
            BundleOwners::Dead => !process_alive(pid),
            BundleOwners::ThisProcess => pid == me,
        });
        if remove {
            let _ = std::fs::remove_dir_all(bundle.path());
        }
    }
}

impl Drop for Runtime {
    /// This process's state directory goes when it is empty (every step
    /// removed its container).
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.state_dir);
    }
}

/// Makes the upper directory a root directory as images have it (root's,
/// 0755): overlayfs shows the upper directory's owner and mode as the
/// step's `/`, and one made under a restrictive umask would lock other
/// users out. (Layers record no entry for the root itself.)
fn make_root_directory(upper: &Path) -> Result<(), Error> {
    std::os::unix::fs::chown(upper, Some(0), Some(0)).map_err(|e| Error::io(upper, e))?;
    std::fs::set_permissions(upper, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io(upper, e))
}

fn process_alive(pid: i32) -> bool {
    rustix::process::Pid::from_raw(pid)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Writes a file only its owner-to-be can read until `mode` is applied.
fn write_private_file(
    path: &Path,
    bytes: &[u8],
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<(), Error> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))?;
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|e| Error::io(path, e))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path, e))
}

fn hosts(hostname: &str, extra: &[(String, String)]) -> Vec<u8> {
    let mut hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    );
    for (name, address) in extra {
        hosts.push_str(&format!("{address}\t{name}\n"));
    }
    hosts.into_bytes()
}

/// The host's resolver configuration, for steps on the host's network.
fn resolv_conf() -> Vec<u8> {
    std::fs::read("/etc/resolv.conf").unwrap_or_default()
}

/// Binds `bind.path` of `bind.root` at `bind.at`, opened with the kernel
/// keeping the lookup below the root (no `..` out, no absolute or escaping
/// symlink) and bound through that open directory, so that nothing can swap
/// a link in between the check and the mount.
fn bind_beneath(bind: &BeneathBind) -> Result<(), Error> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let root = rustix::fs::open(&bind.root, flags, Mode::empty())
        .map_err(|e| Error::io(&bind.root, e.into()))?;
    let inside = match bind.path.trim_matches('/') {
        "" => ".",
        inside => inside,
    };
    let dir = rustix::fs::openat2(
        &root,
        inside,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| {
        Error::Setup(format!(
            "the mount source {inside:?} is not a directory inside {}: {e}",
            bind.root.display()
        ))
    })?;
    let opened = format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&dir));
    rustix::mount::mount_bind(opened.as_str(), &bind.at)
        .map_err(|e| Error::Setup(format!("cannot bind {inside:?}: {e}")))
}

/// The helper: run from `main` of the kiln binary when its first argument is
/// `SANDBOX_ARG`, with the bundle directory as the second. Returns the exit
/// code to end with: the step's, or 125 when the sandbox could not be set up
/// (as Docker does).
pub fn sandbox_main(bundle: &Path) -> i32 {
    match sandbox(bundle) {
        Ok(code) => code,
        Err(error) => {
            // kiln reports it as the sandbox's failure, not the step's.
            if std::fs::write(bundle.join(SETUP_ERROR), error.to_string()).is_err() {
                let _ = writeln!(std::io::stderr(), "kiln: {error}");
            }
            125
        }
    }
}

fn sandbox(bundle: &Path) -> Result<i32, Error> {
    let plan_path = bundle.join("plan.json");
    let plan: Plan =
        serde_json::from_slice(&std::fs::read(&plan_path).map_err(|e| Error::io(&plan_path, e))?)
            .map_err(|e| Error::Setup(format!("{}: {e}", plan_path.display())))?;
    // SAFETY: the helper has a single thread; no file descriptor table is
    // unshared.
    unsafe {
        rustix::thread::unshare_unsafe(
            rustix::thread::UnshareFlags::NEWNS | rustix::thread::UnshareFlags::NEWPID,
        )
    }
    .map_err(|e| Error::Setup(format!("cannot make namespaces (is kiln root?): {e}")))?;
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::REC | rustix::mount::MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| Error::Setup(format!("cannot make the mounts private: {e}")))?;
    for (index, overlay) in plan.overlays.iter().enumerate() {
        mount_overlay(&bundle.join(format!("lower-{index}")), overlay)?;
    }
    for bind in &plan.beneath {
        bind_beneath(bind)?;
    }
    let mut runtime = Command::new(&plan.runtime);
    runtime
        .arg("--root")
        .arg(&plan.state_dir)
        .arg("run")
        .arg("--bundle")
        .arg(bundle)
        .arg(&plan.id);
    let huge_pages_back = crate::huge_pages::turned_off_by_kiln();
    // SAFETY: only prctl and mount between fork and exec, and nothing is
    // allocated: the mount's strings are C string literals, errors are raw
    // errnos.
    unsafe {
        runtime.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            if huge_pages_back {
                crate::huge_pages::turn_back_on()?;
            }
            // The runtime is the first process of the new pid namespace and
            // reads its children in /proc: a /proc of that namespace.
            rustix::mount::mount(
                c"proc",
                c"/proc",
                c"proc",
                rustix::mount::MountFlags::NOSUID
                    | rustix::mount::MountFlags::NODEV
                    | rustix::mount::MountFlags::NOEXEC,
                None,
            )?;
            Ok(())
        });
    }
    let mut child = runtime.spawn().map_err(|e| Error::io(&plan.runtime, e))?;
    // For kiln, which asks the runtime to stop the step by signalling it
    // (its pid in this namespace; the state the runtime keeps names pids
    // of the step's own namespace).
    let _ = std::fs::write(bundle.join(RUNTIME_PID), child.id().to_string());
    let status = child.wait().map_err(|e| Error::io(&plan.runtime, e))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 255,
    })
}

/// Mounts an overlay at `overlay.at`. The lower directories are named
/// through short symlinks in `links`, so that many layers fit in the mount
/// options (one page).
fn mount_overlay(links: &Path, overlay: &Overlay) -> Result<(), Error> {
    std::fs::create_dir_all(links).map_err(|e| Error::io(links, e))?;
    let mut names = Vec::new();
    if overlay.lowers.is_empty() {
        // Overlay wants a lower directory: an empty one for FROM scratch.
        let empty = links.join("empty");
        std::fs::create_dir_all(&empty).map_err(|e| Error::io(&empty, e))?;
        names.push("empty".to_string());
    }
    for (index, lower) in overlay.lowers.iter().enumerate() {
        let name = index.to_string();
        let link = links.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lower, &link).map_err(|e| Error::io(&link, e))?;
        names.push(name);
    }
    // The topmost layer comes first.
    names.reverse();
    std::env::set_current_dir(links).map_err(|e| Error::io(links, e))?;
    let mut options = format!("lowerdir={}", names.join(":"));
    if let Some((upper, work)) = &overlay.upper {
        options.push_str(&format!(
            ",upperdir={},workdir={}",
            upper.display(),
            work.display()
        ));
    }
    // Whiteouts and opaque directories are the only overlay metadata a
    // layer can carry: no redirects, metadata-only copies or inode index,
    // whatever this kernel defaults to.
    options.push_str(",redirect_dir=off,metacopy=off,index=off");
    let data = std::ffi::CString::new(options.clone())
        .map_err(|_| Error::Setup(format!("a layer path holds a NUL byte: {options}")))?;
    rustix::mount::mount(
        "overlay",
        &overlay.at,
        "overlay",
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )
    .map_err(|e| Error::Setup(format!("cannot mount the overlay ({options}): {e}")))
}

/// The control groups of containers `ids` that a runtime killed while it
/// created them left behind (it had not yet written the state `delete`
/// needs), wherever this machine's hierarchies put them: removed when
/// empty, which they are once their processes died.
fn remove_empty_cgroups(ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let mut dirs = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    let mut found = Vec::new();
    while let Some((dir, depth)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry
                .file_name()
                .to_str()
                .is_some_and(|name| ids.iter().any(|id| id == name))
            {
                found.push(path);
            } else if depth < 4 {
                dirs.push((path, depth + 1));
            }
        }
    }
    for cgroup in found {
        // A cgroup holds only its own control files, which rmdir takes
        // along; one with child groups or processes stays.
        let _ = std::fs::remove_dir(&cgroup);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_cgroups_of_dead_containers_are_removed() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test makes a control group and must run as root (sudo scripts/test)"
        );
        let id = format!("kiln-test-{}-cgroup", std::process::id());
        let cgroup = [
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup",
        ]
        .iter()
        .map(|dir| Path::new(dir).join(&id))
        .find(|cgroup| std::fs::create_dir(cgroup).is_ok())
        .expect("a cgroup hierarchy to make a group in");
        assert!(cgroup.join("cgroup.procs").exists(), "a real control group");
        remove_empty_cgroups(std::slice::from_ref(&id));
        assert!(!cgroup.exists(), "{} is left", cgroup.display());
    }

    #[test]
    fn two_kilns_removing_the_same_leftovers_both_succeed() {
        let state_root = tempfile::tempdir().expect("state root");
        // Process IDs past the kernel's largest belong to no process.
        let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .expect("pid_max")
            .trim()
            .parse()
            .expect("a number");
        for round in 0..3 {
            for dead in 0..20 {
                let container = state_root
                    .path()
                    .join((pid_max + 1 + round * 20 + dead).to_string())
                    .join("kiln-step");
                std::fs::create_dir_all(&container).expect("container state");
                for file in 0..100 {
                    std::fs::write(container.join(file.to_string()), "state").expect("file");
                }
            }
            let cleaners: Vec<_> = (0..2)
                .map(|_| {
                    let runtime = Runtime::new(Some(Path::new("/bin/true")), state_root.path())
                        .expect("runtime");
                    std::thread::spawn(move || runtime.clean_leftovers())
                })
                .collect();
            for cleaner in cleaners {
                cleaner.join().expect("no panic").expect("cleaned");
            }
            assert_eq!(
                std::fs::read_dir(state_root.path()).expect("read").count(),
                0,
                "every dead kiln's state is gone"
            );
        }
    }

    #[test]
    fn a_lower_directory_given_twice_is_kept_where_it_is_uppermost() {
        let paths: Vec<PathBuf> = ["/s/a", "/s/empty", "/s/b", "/s/empty", "/s/c"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(
            overlay_lowers(&paths).expect("absolute"),
            ["/s/a", "/s/b", "/s/empty", "/s/c"]
                .iter()
                .map(PathBuf::from)
                .collect::<Vec<_>>()
        );
    }
}
