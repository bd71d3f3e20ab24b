//! Parsing and lowering 5,000-line Dockerfiles.
//!
//! `real_world`: the real-world Dockerfiles of BuildKit's parser test data
//! (docker's own, nginx, influxdb, nagios, ...), each made a named stage,
//! repeated until the file has 5,000 lines, with a final stage copying from
//! every one of them so that all are lowered.
//!
//! `dense`: a synthetic worst case of short instructions (one per 1.2 lines),
//! 50 stages, variables everywhere, mounts, heredocs, each stage built on
//! the one before.

use criterion::{criterion_group, criterion_main, Criterion};
use kiln_frontend::{lower, parse, LowerOptions, UnknownImages};

// The allocator the kiln binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REAL_WORLD: &[&str] = &[
    "docker",
    "cpuguy83-nagios",
    "brimstone-docker-consul",
    "brimstone-consuldock",
    "influxdb",
    "lk4d4-the-edge-case-generator",
    "mail",
    "nginx",
    "tf2",
    "weechat",
    "znc",
    "mumble",
    "kartar-entrypoint-oddities",
    "ADD-COPY-with-JSON",
    "continueIndent",
    "trailing-backslash",
];

fn lines(text: &str) -> usize {
    text.matches('\n').count()
}

fn real_world_dockerfile() -> String {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/buildkit/testfiles"
    );
    let sources: Vec<String> = REAL_WORLD
        .iter()
        .map(|name| std::fs::read_to_string(format!("{dir}/{name}/Dockerfile")).expect("test data"))
        .collect();
    let mut text = String::new();
    let mut stages = 0;
    while lines(&text) < 4_950 {
        for source in &sources {
            for line in source.lines() {
                let first_word = line.split_whitespace().next().unwrap_or_default();
                if first_word.eq_ignore_ascii_case("FROM") {
                    text.push_str(&format!("{line} AS s{stages}\n"));
                    stages += 1;
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
            text.push('\n');
        }
    }
    text.push_str("FROM scratch\n");
    for stage in 0..stages {
        text.push_str(&format!("COPY --from=s{stage} /etc/hostname /s{stage}\n"));
    }
    text
}

fn dense_dockerfile() -> String {
    let mut text =
        String::from("# syntax=docker/dockerfile:1\nARG BASE=busybox\nARG VERSION=1.0\n");
    for stage in 0..50 {
        text.push_str(&format!("FROM ${{BASE}}:${{VERSION}} AS stage{stage}\n"));
        text.push_str(
            "ARG VERSION\nENV APP_HOME=/srv/app PATH=/srv/app/bin:$PATH\nWORKDIR $APP_HOME\n",
        );
        for step in 0..8 {
            text.push_str(&format!(
                "# step {step}\nRUN --mount=type=cache,target=/root/.cache \\\n    set -e; \\\n    echo building {stage}-{step} $VERSION && \\\n    make -j2 target{step}\n"
            ));
            text.push_str(&format!(
                "COPY --chown=1000:1000 src/{step}/ ./src/{step}/\n"
            ));
            text.push_str(&format!(
                "LABEL step{step}=\"${{VERSION}}-{step}\" stage=\"{stage}\"\n"
            ));
            text.push_str(&format!("ENV STEP{step}=\"value {step}\"\n"));
        }
        if stage > 0 {
            text.push_str(&format!(
                "COPY --from=stage{} /srv/app/out /srv/app/in\n",
                stage - 1
            ));
        }
        text.push_str("RUN <<EOF\nset -e\necho heredoc\nEOF\n");
        text.push_str("COPY <<CONFIG /etc/app.conf\nversion=${VERSION}\nCONFIG\n");
        text.push_str("EXPOSE 8080/tcp 9090\nVOLUME /data\nUSER 1000:1000\n");
        text.push_str("HEALTHCHECK --interval=30s CMD wget -q -O- http://localhost:8080/health\n");
        let filler = ((stage + 1) * 100 + 3usize).saturating_sub(lines(&text));
        text.push_str(&"ENV FILLER=x\n".repeat(filler));
    }
    text.push_str("CMD [\"/srv/app/bin/app\"]\n");
    text
}

fn bench(c: &mut Criterion) {
    for (name, text) in [
        ("real_world", real_world_dockerfile()),
        ("dense", dense_dockerfile()),
    ] {
        assert!(lines(&text) >= 5_000, "{name}: {} lines", lines(&text));
        let stages = parse(&text, "Dockerfile")
            .expect("parses")
            .instructions
            .iter()
            .filter(|i| i.keyword == kiln_frontend::keyword::Keyword::From)
            .count();
        c.bench_function(&format!("parse_and_lower_5000_lines_{name}"), |b| {
            b.iter(|| {
                let dockerfile = parse(&text, "Dockerfile").expect("parses");
                let graph = lower(&dockerfile, &LowerOptions::default(), &mut UnknownImages)
                    .expect("lowers");
                assert_eq!(graph.stages.len(), stages);
                graph
            })
        });
        c.bench_function(&format!("parse_5000_lines_{name}"), |b| {
            b.iter(|| parse(&text, "Dockerfile").expect("parses"))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
