//! The build engine through its sandbox seam: a recording double stands
//! where runc would run each RUN step, so that scheduling, cache lookups
//! and keys, `--no-cache-filter`, `--explain`, materialisation and failure
//! handling are tested without root. What only the real sandbox can show
//! is tested through the `kiln` binary (kiln/tests).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kiln_builder::dockerfile::DockerfileArgs;
use kiln_builder::progress::Progress;
use kiln_builder::remote::{RegistrySettings, Remote};
use kiln_builder::run::Interrupt;
use kiln_builder::{BuildRequest, Built, Engine, Error, StepRunner};
use kiln_cache::{Digest, Store};
use kiln_runtime::{Layers, Network, Outcome, Step};

/// What the double was asked to run.
#[derive(Debug, Clone)]
struct Ran {
    /// The shell command (`RUN <command>`).
    command: String,
    env: Vec<String>,
    uid: u32,
    gid: u32,
    network: Network,
}

/// Stands where the sandbox would: records each step and "runs" it by
/// writing a file named after the step's command into its changes.
/// Commands starting with `fail` exit 2 after one line of output;
/// `wait-for-stop` returns only once the build stops it; `meet NAME` waits
/// (up to a minute) until another step has said `meet NAME` too, which
/// only happens when both run at once; `hold ...` takes a fifth of a second.
#[derive(Default)]
struct Recorder {
    ran: Mutex<Vec<Ran>>,
    meeting: Mutex<Vec<String>>,
    arrived: Condvar,
    /// For each `meet`, whether the other one came.
    met: Mutex<Vec<bool>>,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

impl Recorder {
    fn commands(&self) -> Vec<String> {
        self.ran().into_iter().map(|ran| ran.command).collect()
    }

    fn ran(&self) -> Vec<Ran> {
        self.ran.lock().expect("recorder").clone()
    }

    fn forget(&self) {
        self.ran.lock().expect("recorder").clear();
    }

    /// Whether another step said `meet NAME` while this one waited.
    fn meet(&self, name: &str) -> bool {
        let mut meeting = self.meeting.lock().expect("meeting");
        meeting.push(name.to_string());
        self.arrived.notify_all();
        let (meeting, timeout) = self
            .arrived
            .wait_timeout_while(meeting, Duration::from_secs(60), |meeting| {
                meeting.iter().filter(|m| *m == name).count() < 2
            })
            .expect("meeting");
        drop(meeting);
        !timeout.timed_out()
    }
}

impl StepRunner for Recorder {
    fn run_step(
        &self,
        step: &Step,
        layers: &Layers<'_>,
        output: &mut dyn FnMut(&str),
        stop: &AtomicBool,
    ) -> kiln_builder::Result<Outcome> {
        let command = step.args.last().cloned().unwrap_or_default();
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(running, Ordering::SeqCst);
        let outcome = self.act(&command, step, layers, output, stop);
        self.running.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}

impl Recorder {
    fn act(
        &self,
        command: &str,
        step: &Step,
        layers: &Layers<'_>,
        output: &mut dyn FnMut(&str),
        stop: &AtomicBool,
    ) -> kiln_builder::Result<Outcome> {
        self.ran.lock().expect("recorder").push(Ran {
            command: command.to_string(),
            env: step.env.clone(),
            uid: step.user.uid,
            gid: step.user.gid,
            network: step.network,
        });
        if command.starts_with("fail") {
            output("about to fail");
            return Ok(Outcome {
                code: 2,
                tail: vec!["about to fail".to_string()],
            });
        }
        if command == "wait-for-stop" {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            return Err(Error::Interrupted);
        }
        if command.starts_with("hold") {
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Some(name) = command.strip_prefix("meet ") {
            let met = self.meet(name);
            self.met.lock().expect("met").push(met);
        }
        let name: String = command
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        fs::write(layers.upper.join(name), command).expect("write the step's file");
        Ok(Outcome {
            code: 0,
            tail: Vec::new(),
        })
    }
}

/// A store, a context and the double, as one build agent.
struct Agent {
    store_dir: tempfile::TempDir,
    context: tempfile::TempDir,
    recorder: Recorder,
}

impl Agent {
    fn new(dockerfile: &str) -> Agent {
        let agent = Agent {
            store_dir: tempfile::tempdir().expect("store"),
            context: tempfile::tempdir().expect("context"),
            recorder: Recorder::default(),
        };
        agent.write_dockerfile(dockerfile);
        agent
    }

    fn write_dockerfile(&self, dockerfile: &str) {
        fs::write(self.context.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
    }

    fn request(&self) -> BuildRequest {
        BuildRequest::new(DockerfileArgs {
            context: self.context.path().to_path_buf(),
            ..DockerfileArgs::default()
        })
    }

    fn store(&self) -> Store {
        Store::open(self.store_dir.path()).expect("store")
    }

    fn build_with(&self, request: &BuildRequest) -> kiln_builder::Result<Built> {
        let store = self.store();
        let progress = Arc::new(Progress::silent());
        let remote = Remote::new(
            &RegistrySettings {
                insecure: Vec::new(),
                certs_dir: None,
            },
            Arc::clone(&progress),
        );
        let interrupt = Interrupt::default();
        let engine = Engine {
            store: &store,
            remote: &remote,
            sandbox: &self.recorder,
            interrupt: &interrupt,
            progress: &progress,
        };
        kiln_builder::build(&engine, request)
    }

    fn build(&self) -> Built {
        self.build_with(&self.request()).expect("build")
    }

    /// Builds and returns the commands the double ran.
    fn commands_run_by(&self, request: &BuildRequest) -> Vec<String> {
        self.recorder.forget();
        self.build_with(request).expect("build");
        self.recorder.commands()
    }
}

fn cached(built: &Built) -> Vec<(String, bool)> {
    built
        .steps
        .iter()
        .map(|step| (step.step.clone(), step.cached))
        .collect()
}

#[test]
fn every_step_runs_once_then_comes_from_the_cache() {
    let agent = Agent::new("FROM scratch\nRUN one\nENV A=1\nRUN two\n");
    let first = agent.build();
    assert_eq!(agent.recorder.commands(), ["one", "two"]);
    assert!(cached(&first).iter().all(|(_, cached)| !cached));
    agent.recorder.forget();
    let second = agent.build();
    assert!(agent.recorder.commands().is_empty());
    assert_eq!(
        cached(&second),
        [("RUN one".to_string(), true), ("RUN two".to_string(), true)]
    );
    assert_eq!(first.image, second.image);
    assert!(first.image.is_some());
}

#[test]
fn a_changed_step_runs_again_with_what_follows_it_only() {
    let agent = Agent::new("FROM scratch\nRUN one\nRUN two\nRUN three\n");
    agent.build();
    agent.write_dockerfile("FROM scratch\nRUN one\nRUN TWO\nRUN three\n");
    assert_eq!(agent.commands_run_by(&agent.request()), ["TWO", "three"]);
}

#[test]
fn the_step_gets_its_environment_user_and_network() {
    let agent = Agent::new(
        "FROM scratch\nENV GREETING=hello\nUSER 1000:1001\nARG LEVEL\nRUN --network=none quiet\nRUN loud\n",
    );
    let mut request = agent.request();
    request.dockerfile.build_args.push("LEVEL=3".to_string());
    agent.build_with(&request).expect("build");
    let ran = agent.recorder.ran();
    assert_eq!(ran.len(), 2);
    assert!(ran[0].env.contains(&"GREETING=hello".to_string()));
    assert!(ran[0].env.contains(&"LEVEL=3".to_string()));
    assert_eq!((ran[0].uid, ran[0].gid), (1000, 1001));
    assert_eq!(ran[0].network, Network::None);
    assert_eq!(ran[1].network, Network::Host);
}

#[test]
fn no_cache_filter_runs_only_the_named_stages_again() {
    let agent = Agent::new("FROM scratch AS base\nRUN one\nFROM base AS app\nRUN two\n");
    agent.build();
    let mut request = agent.request();
    request.no_cache_stages = vec!["app".to_string()];
    assert_eq!(agent.commands_run_by(&request), ["two"]);
    request.no_cache_stages = Vec::new();
    request.no_cache = true;
    assert_eq!(agent.commands_run_by(&request), ["one", "two"]);
}

#[test]
fn independent_stages_run_at_once_and_dependants_after_them() {
    let dockerfile = "FROM scratch AS left\nRUN meet middle\n\
                      FROM scratch AS right\nRUN meet middle\n\
                      FROM left\nRUN --mount=from=right,target=/right last\n";
    let agent = Agent::new(dockerfile);
    let mut request = agent.request();
    request.jobs = 2;
    agent.build_with(&request).expect("build");
    let commands = agent.recorder.commands();
    assert_eq!(commands.len(), 3);
    assert_eq!(commands[2], "last", "the final stage waits for both");
    assert_eq!(
        *agent.recorder.met.lock().expect("met"),
        [true, true],
        "the two stages' steps ran at the same time"
    );
}

#[test]
fn one_job_builds_one_stage_at_a_time() {
    let dockerfile = "FROM scratch AS left\nRUN hold left\n\
                      FROM scratch AS right\nRUN hold right\n\
                      FROM left\nRUN --mount=from=right,target=/right last\n";
    let agent = Agent::new(dockerfile);
    let mut request = agent.request();
    request.jobs = 1;
    agent.build_with(&request).expect("build");
    assert_eq!(agent.recorder.commands().len(), 3);
    assert_eq!(agent.recorder.most_at_once.load(Ordering::SeqCst), 1);
}

#[test]
fn a_failed_step_reports_its_output_and_keeps_no_record() {
    let agent = Agent::new("FROM scratch\nRUN one\nRUN fail now\n");
    let error = agent.build_with(&agent.request()).unwrap_err();
    let Error::Step {
        location, cause, ..
    } = &error
    else {
        panic!("not a step's failure: {error:?}");
    };
    assert!(location.ends_with("Dockerfile:3"), "{location}");
    let failed = cause.process_failed().expect("the process failed");
    assert_eq!(failed.outcome, "exit code 2");
    assert_eq!(failed.tail, ["about to fail"]);
    // The failed step left nothing to reuse; the one before it did.
    assert_eq!(agent.commands_run_by_failing(), ["fail now"]);
}

impl Agent {
    fn commands_run_by_failing(&self) -> Vec<String> {
        self.recorder.forget();
        assert!(self.build_with(&self.request()).is_err());
        self.recorder.commands()
    }
}

#[test]
fn a_failed_stage_stops_the_others() {
    let agent = Agent::new(
        "FROM scratch AS slow\nRUN wait-for-stop\n\
         FROM scratch AS broken\nRUN fail fast\n\
         FROM slow\nRUN --mount=from=broken,target=/b never\n",
    );
    let mut request = agent.request();
    request.jobs = 2;
    let error = agent.build_with(&request).unwrap_err();
    assert!(error.process_failed().is_some(), "{error:?}");
    assert!(!error.is_interrupted());
    let commands = agent.recorder.commands();
    assert!(commands.contains(&"wait-for-stop".to_string()));
    assert!(!commands.contains(&"never".to_string()));
}

#[test]
fn explain_names_the_build_argument_that_changed() {
    let agent = Agent::new("FROM scratch\nARG FLAVOUR\nRUN make $FLAVOUR\n");
    let mut request = agent.request();
    request.explain = true;
    request.dockerfile.build_args = vec!["FLAVOUR=plain".to_string()];
    agent.build_with(&request).expect("first build");
    request.dockerfile.build_args = vec!["FLAVOUR=spicy".to_string()];
    let built = agent.build_with(&request).expect("second build");
    let explanation = built.steps[0].explain.join("\n");
    assert!(explanation.contains("FLAVOUR"), "{explanation}");
}

#[test]
fn layers_get_a_blob_only_when_an_image_needs_one() {
    let agent = Agent::new(
        "FROM scratch AS tool\nRUN one\nFROM scratch\nRUN --mount=from=tool,target=/t two\n",
    );
    let built = agent.build();
    assert!(built.image.is_some());
    let store = agent.store();
    let layer_of = |step: &str| {
        let report = built
            .steps
            .iter()
            .find(|report| report.step.ends_with(step))
            .expect("the step's report");
        let key: Digest = report.key.parse().expect("key");
        store
            .cache_record(&key)
            .and_then(|record| record.layer)
            .expect("a layer")
    };
    let tool = layer_of("one");
    assert_eq!(
        tool.blob, tool.diff_id,
        "no image holds the tool stage's layer: it has no compressed blob"
    );
    assert!(!store.has_blob(&tool.diff_id));
    assert!(store.has_snapshot(&tool.diff_id));
    let exported = layer_of("two");
    assert_ne!(exported.blob, exported.diff_id, "compressed for the image");
    assert!(store.has_blob(&exported.blob));
}

#[test]
fn a_copy_is_keyed_by_what_it_reads_not_by_file_times() {
    assert!(
        rustix::process::geteuid().is_root(),
        "COPY gives its files root's ownership: this test must run as root (sudo scripts/test)"
    );
    let agent = Agent::new("FROM scratch\nCOPY app.conf /etc/\nRUN use-it\n");
    let conf = agent.context.path().join("app.conf");
    fs::write(&conf, "one").expect("write");
    agent.build();
    // Touched: the same bytes, a later time.
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&conf)
        .and_then(|file| file.set_modified(later))
        .expect("touch");
    assert!(agent.commands_run_by(&agent.request()).is_empty());
    fs::write(&conf, "two").expect("change");
    assert_eq!(agent.commands_run_by(&agent.request()), ["use-it"]);
}

#[test]
fn a_copy_is_keyed_by_its_chmod_expression() {
    assert!(
        rustix::process::geteuid().is_root(),
        "COPY gives its files root's ownership: this test must run as root (sudo scripts/test)"
    );
    let copy_with =
        |chmod: &str| format!("FROM scratch\nCOPY --chmod={chmod} run.sh /bin/\nRUN use-it\n");
    let agent = Agent::new(&copy_with("u+x"));
    fs::write(agent.context.path().join("run.sh"), "run").expect("write");
    agent.build();
    assert!(agent.commands_run_by(&agent.request()).is_empty());
    // The same file, a symbolic mode that gives it another mode.
    agent.write_dockerfile(&copy_with("a+x"));
    assert_eq!(agent.commands_run_by(&agent.request()), ["use-it"]);
    agent.write_dockerfile(&copy_with("0755"));
    assert_eq!(agent.commands_run_by(&agent.request()), ["use-it"]);
}

#[test]
fn the_context_path_may_be_relative_to_where_kiln_runs() {
    let agent = Agent::new("FROM scratch\nRUN one\n");
    let relative: PathBuf = pathdiff(agent.context.path());
    let mut request = agent.request();
    request.dockerfile.context = relative;
    agent
        .build_with(&request)
        .expect("build with a relative context");
}

/// `path` relative to the current directory, through `..` as needed.
fn pathdiff(path: &Path) -> PathBuf {
    let here = std::env::current_dir().expect("cwd");
    let depth = here.components().count() - 1;
    let mut relative = PathBuf::new();
    for _ in 0..depth {
        relative.push("..");
    }
    relative.join(path.strip_prefix("/").expect("absolute"))
}
