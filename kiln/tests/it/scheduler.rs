//! The scheduler: independent stages at once, a failure stopping the rest,
//! and the progress formats CI logs and tools read.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{Context, Kiln};

fn kiln() -> Kiln {
    Kiln::with_busybox()
}

/// A shell loop that waits for `path` to exist, polling every 0.1 s, for at
/// most `tenths` tenths of a second; it succeeds when the file appeared.
fn wait_for(path: &str, tenths: u32) -> String {
    format!(
        "(i=0; until [ -e {path} ]; do [ $i -lt {tenths} ] || exit 1; i=$((i+1)); sleep 0.1; done)"
    )
}

/// Two stages that meet through cache mount `id`: each marks its arrival
/// and waits up to `tenths` tenths of a second for the other's, then
/// writes `met` or `alone` to a file named after it. When the stages run
/// one after the other, the first can never meet the second; when both
/// meet, they ran at the same time.
fn rendezvous(id: &str, tenths: u32) -> String {
    let stage = |name: &str, other: &str| {
        format!(
            "FROM busybox AS {name}\n\
             RUN --mount=type=cache,id={id},target=/sync touch /sync/{name} \
             && if {wait}; then echo met; else echo alone; fi > /{name}\n",
            wait = wait_for(&format!("/sync/{other}"), tenths)
        )
    };
    format!(
        "{}{}FROM busybox\nCOPY --from=one /one /one\nCOPY --from=two /two /two\n",
        stage("one", "two"),
        stage("two", "one")
    )
}

/// What each stage of [`rendezvous`] wrote.
fn met(kiln: &Kiln, context: &Path, extra: &[&str]) -> (String, String) {
    let files = kiln.files(context, extra);
    let read = |name: &str| fs::read_to_string(files.path().join(name)).expect(name);
    (read("one"), read("two"))
}

#[test]
fn independent_stages_run_at_once_and_jobs_limits_them() {
    let kiln = kiln();
    let context = Context::new();
    // A minute for the other stage to come: ample for a scheduler that
    // starts both at once, however loaded the machine; one that runs them
    // in turn makes them miss each other.
    context.write("Dockerfile", &rendezvous("together", 600));
    assert_eq!(
        met(&kiln, context.path(), &["--jobs", "2"]),
        ("met\n".to_string(), "met\n".to_string()),
        "the stages ran at once"
    );
    // (The final stage copied both files: it waited for both stages.)

    // Two seconds for the other stage: a scheduler that ran both would
    // start the second well within them.
    context.write("Dockerfile", &rendezvous("in-turn", 20));
    let (one, two) = met(&kiln, context.path(), &["--jobs", "1"]);
    let mut outcomes = [one.as_str(), two.as_str()];
    outcomes.sort_unstable();
    assert_eq!(
        outcomes,
        ["alone\n", "met\n"],
        "one stage at a time: the first ran alone"
    );
}

#[test]
fn a_failing_stage_stops_the_others() {
    let kiln = kiln();
    let context = Context::new();
    // The failing stage fails only once the slow step runs, so that there
    // always is a running step to stop.
    context.write(
        "Dockerfile",
        &format!(
            "FROM busybox AS slow\n\
             RUN --mount=type=cache,id=signal,target=/sync touch /sync/slow && sleep 317\n\
             FROM busybox AS failing\n\
             RUN --mount=type=cache,id=signal,target=/sync \
             {wait} && echo giving up && exit 3\n\
             FROM busybox\n\
             COPY --from=slow /etc/passwd /a\n\
             COPY --from=failing /etc/passwd /b\n",
            wait = wait_for("/sync/slow", 600)
        ),
    );
    let mut child = kiln
        .command()
        .current_dir(context.path())
        .args(["build", "--jobs", "2", "--progress", "plain", "."])
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kiln kept running after a stage failed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut text)
            .expect("stderr");
        text
    };
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exit code 3"), "{stderr}");
    let slow = stderr
        .lines()
        .find_map(|line| {
            let (step, name) = line.split_once(' ')?;
            name.starts_with("[slow 2/2] RUN").then_some(step)
        })
        .unwrap_or_else(|| panic!("the slow step never started: {stderr}"));
    assert!(
        stderr
            .lines()
            .any(|line| line == format!("{slow} ERROR: interrupted")),
        "the slow step was not stopped: {stderr}"
    );
    let survivors = fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| fs::read(entry.path().join("cmdline")).ok())
        .filter(|cmdline| String::from_utf8_lossy(cmdline).contains("sleep\u{0}317"))
        .count();
    assert_eq!(survivors, 0, "the slow stage's process survived");
}

/// Builds with `--progress MODE` (and `extra`), expecting success; returns
/// standard error.
fn progress(kiln: &Kiln, context: &Path, mode: &str, extra: &[&str]) -> String {
    let mut args = vec!["--progress", mode];
    args.extend_from_slice(extra);
    let output = kiln.try_build(context, &args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "--progress {mode}: {stderr}");
    stderr
}

#[test]
fn plain_progress_numbers_steps_as_buildkit_does() {
    let kiln = kiln();
    let context = Context::new();
    context.write("Dockerfile", "FROM busybox\nRUN echo hello && echo world\n");
    let stderr = progress(&kiln, context.path(), "plain", &[]);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with('#')).collect();
    assert!(lines.len() >= 3, "{stderr}");
    // The base image is step 1, as BuildKit numbers it.
    assert!(
        lines[0].starts_with("#1 [stage-0 1/2] FROM docker.io/library/busybox:latest@sha256:"),
        "{stderr}"
    );
    assert_eq!(lines[1], "#1 CACHED", "{stderr}");
    assert_eq!(
        lines[2], "#2 [stage-0 2/2] RUN echo hello && echo world",
        "{stderr}"
    );
    let log = |text: &str| {
        lines.iter().any(|line| {
            let mut parts = line.splitn(3, ' ');
            parts.next() == Some("#2")
                && parts.next().is_some_and(|t| t.parse::<f64>().is_ok())
                && parts.next() == Some(text)
        })
    };
    assert!(log("hello") && log("world"), "{stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("#2 DONE ") && l.ends_with('s')),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("#3 exporting layers")),
        "{stderr}"
    );
    let stderr = progress(&kiln, context.path(), "plain", &[]);
    assert!(stderr.lines().any(|l| l == "#2 CACHED"), "{stderr}");

    let stderr = progress(&kiln, context.path(), "rawjson", &["--no-cache"]);
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is JSON"))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().expect("event"))
        .collect();
    assert_eq!(kinds.first(), Some(&"start"));
    assert!(
        kinds.contains(&"log") && kinds.contains(&"done"),
        "{kinds:?}"
    );

    // Quiet: the step ran (--no-cache), and nothing of it shows.
    let stderr = progress(&kiln, context.path(), "quiet", &["--no-cache"]);
    assert!(
        !stderr.lines().any(|l| l.starts_with('#')),
        "quiet shows no steps: {stderr}"
    );
    assert!(
        !stderr.contains("hello"),
        "quiet shows no step output: {stderr}"
    );
}
