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

/// Each step's stage, start and end (milliseconds from the build's start)
/// from the metadata file.
fn timeline(kiln: &Kiln, context: &Path, extra: &[&str]) -> Vec<(String, u64, u64)> {
    kiln.build_steps(context, extra)
        .iter()
        .map(|step| {
            (
                step["stage"].as_str().expect("stage").to_string(),
                step["started_ms"].as_u64().expect("start"),
                step["ended_ms"].as_u64().expect("end"),
            )
        })
        .collect()
}

const TWO_INDEPENDENT: &str = "FROM busybox AS one\n\
    RUN sleep 1 && echo one > /one\n\
    FROM busybox AS two\n\
    RUN sleep 1 && echo two > /two\n\
    FROM busybox\n\
    COPY --from=one /one /one\n\
    COPY --from=two /two /two\n";

fn span(steps: &[(String, u64, u64)], stage: &str) -> (u64, u64) {
    let (_, start, end) = steps
        .iter()
        .find(|(name, _, _)| name == stage)
        .unwrap_or_else(|| panic!("no step of {stage}: {steps:?}"));
    (*start, *end)
}

#[test]
fn independent_stages_run_at_once_and_jobs_limits_them() {
    let kiln = kiln();
    let context = Context::new();
    context.write("Dockerfile", TWO_INDEPENDENT);
    let steps = timeline(&kiln, context.path(), &["--jobs", "2"]);
    let (one, two) = (span(&steps, "one"), span(&steps, "two"));
    assert!(
        one.0 < two.1 && two.0 < one.1,
        "the stages overlap: {steps:?}"
    );
    // The final stage waits for both.
    let last = span(&steps, "stage-2");
    assert!(last.0 >= one.1 && last.0 >= two.1, "{steps:?}");

    let steps = timeline(&kiln, context.path(), &["--jobs", "1", "--no-cache"]);
    let (one, two) = (span(&steps, "one"), span(&steps, "two"));
    assert!(
        one.1 <= two.0 || two.1 <= one.0,
        "one stage at a time: {steps:?}"
    );
}

#[test]
fn a_failing_stage_stops_the_others() {
    let kiln = kiln();
    let context = Context::new();
    context.write(
        "Dockerfile",
        "FROM busybox AS slow\n\
         RUN sleep 317\n\
         FROM busybox AS failing\n\
         RUN sleep 0.5 && echo giving up && exit 3\n\
         FROM busybox\n\
         COPY --from=slow /etc/passwd /a\n\
         COPY --from=failing /etc/passwd /b\n",
    );
    let mut child = kiln
        .command()
        .args(["build", "--jobs", "2", "--progress", "plain"])
        .arg(context.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln");
    let deadline = Instant::now() + Duration::from_secs(60);
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
    // The slow step, if it had started, was stopped (on a slow machine the
    // failure may come before it starts; then it never does).
    let started = stderr.contains("RUN sleep 317");
    assert!(
        !started || stderr.contains("ERROR: interrupted"),
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

#[test]
fn plain_progress_numbers_steps_as_buildkit_does() {
    let kiln = kiln();
    let context = Context::new();
    context.write("Dockerfile", "FROM busybox\nRUN echo hello && echo world\n");
    let output = kiln.run(&[
        "build",
        "--progress",
        "plain",
        context.path().to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with('#')).collect();
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
    let output = kiln.run(&[
        "build",
        "--progress",
        "plain",
        context.path().to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.lines().any(|l| l == "#2 CACHED"), "{stderr}");

    let output = kiln.run(&[
        "build",
        "--progress",
        "rawjson",
        "--no-cache",
        context.path().to_str().expect("utf-8"),
    ]);
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stderr)
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

    let output = kiln.run(&[
        "build",
        "--progress",
        "quiet",
        "--no-cache",
        context.path().to_str().expect("utf-8"),
    ]);
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("hello"),
        "quiet shows no step output"
    );
}
