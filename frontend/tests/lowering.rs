//! Lowering: scoping, stages, references, ONBUILD, image configuration and
//! history, each checked on the graph a Dockerfile lowers to.

use std::collections::BTreeMap;

use kiln_frontend::chmod::{Chmod, ChmodError};
use kiln_frontend::graph::{
    Action, Base, BuildGraph, CopySource, ImageConfig, Mount, Network, RunStep, Security, Sharing,
    Source, Stage,
};
use kiln_frontend::lower::DEFAULT_PATH;
use kiln_frontend::{
    lower, parse, BaseImages, Error, ErrorKind, LowerOptions, NamedContext, Platform, Pos,
    ResolvedImage,
};

/// Base images known to a test, by reference; records what was asked for.
#[derive(Default)]
struct Images {
    configs: BTreeMap<String, ImageConfig>,
    requested: Vec<String>,
}

impl Images {
    fn with(mut self, reference: &str, config: ImageConfig) -> Self {
        self.configs.insert(reference.to_string(), config);
        self
    }
}

impl BaseImages for Images {
    fn resolve(&mut self, reference: &str, _platform: &Platform) -> Result<ResolvedImage, String> {
        self.requested.push(reference.to_string());
        Ok(ResolvedImage {
            reference: format!("{reference}@sha256:{}", "0".repeat(64)),
            config: self.configs.get(reference).cloned().unwrap_or_default(),
        })
    }
}

fn lower_with(
    text: &str,
    options: &LowerOptions,
    images: &mut Images,
) -> Result<BuildGraph, Error> {
    let dockerfile = parse(text, "Dockerfile")?;
    lower(&dockerfile, options, images)
}

fn graph(text: &str) -> BuildGraph {
    lower_with(text, &LowerOptions::default(), &mut Images::default()).expect("lowers")
}

fn graph_with_args(text: &str, args: &[(&str, &str)]) -> BuildGraph {
    let options = LowerOptions {
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..LowerOptions::default()
    };
    lower_with(text, &options, &mut Images::default()).expect("lowers")
}

fn failure(text: &str) -> Error {
    lower_with(text, &LowerOptions::default(), &mut Images::default()).expect_err("should fail")
}

fn failure_at(text: &str) -> (ErrorKind, Pos) {
    let error = failure(text);
    let pos = error.location.as_ref().map(|l| l.pos).expect("located");
    (error.kind, pos)
}

/// A Dockerfile, a check of the error it gives, and where the error points.
type ErrorCase = (&'static str, fn(&ErrorKind) -> bool, Pos);

fn target(graph: &BuildGraph) -> &Stage {
    &graph.stages[graph.target]
}

fn runs(stage: &Stage) -> Vec<&RunStep> {
    stage
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::Run(run) => Some(run),
            _ => None,
        })
        .collect()
}

fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

fn histories(stage: &Stage) -> Vec<&str> {
    stage
        .steps
        .iter()
        .filter_map(|s| s.history.as_deref())
        .collect()
}

#[test]
fn global_args_are_visible_in_from_and_only_when_redeclared_in_a_stage() {
    let text = "ARG VERSION=1.0\nARG BASE=alpine\nFROM ${BASE}:${VERSION}\nRUN echo $VERSION\nARG VERSION\nRUN echo $VERSION\n";
    let g = graph(text);
    let stage = target(&g);
    assert!(
        matches!(&stage.base, Base::Image { reference } if reference.starts_with("alpine:1.0@sha256:"))
    );
    let steps = runs(stage);
    assert_eq!(env_value(&steps[0].env, "VERSION"), None);
    assert_eq!(env_value(&steps[1].env, "VERSION"), Some("1.0"));
    assert_eq!(
        histories(stage),
        [
            "RUN /bin/sh -c echo $VERSION # buildkit",
            "ARG VERSION=1.0",
            "RUN |1 VERSION=1.0 /bin/sh -c echo $VERSION # buildkit",
        ]
    );
    let g = graph_with_args(text, &[("VERSION", "2.0"), ("BASE", "debian")]);
    let stage = target(&g);
    assert!(
        matches!(&stage.base, Base::Image { reference } if reference.starts_with("debian:2.0@"))
    );
    assert_eq!(env_value(&runs(stage)[1].env, "VERSION"), Some("2.0"));
}

#[test]
fn global_arg_defaults_expand_earlier_global_args() {
    let g = graph("ARG A=x\nARG B=${A}y\nFROM img:$B\n");
    assert!(
        matches!(&target(&g).base, Base::Image { reference } if reference.starts_with("img:xy@"))
    );
}

#[test]
fn later_env_or_arg_wins_and_only_env_reaches_the_image() {
    let text = "FROM scratch\nARG A=arg\nENV A=env\nRUN one\nARG A=arg2\nRUN two\n";
    let g = graph(text);
    let stage = target(&g);
    let steps = runs(stage);
    assert_eq!(env_value(&steps[0].env, "A"), Some("env"));
    assert_eq!(env_value(&steps[1].env, "A"), Some("arg2"));
    assert_eq!(
        stage.config.env,
        [format!("PATH={DEFAULT_PATH}"), "A=env".to_string()]
    );
    let g = graph_with_args(text, &[("A", "given")]);
    assert_eq!(env_value(&runs_of(&g)[0].env, "A"), Some("env"));
    assert_eq!(env_value(&runs_of(&g)[1].env, "A"), Some("given"));
}

#[test]
fn a_stage_built_on_another_sees_its_env_over_an_arg_it_declared_later() {
    let text = "FROM scratch AS base\nENV A=env\nARG A\nARG B\nRUN one\n\
                FROM base\nRUN two\nARG A\nRUN three\n";
    let g = graph_with_args(text, &[("A", "given"), ("B", "b")]);
    let base = &g.stages[0];
    assert_eq!(env_value(&runs(base)[0].env, "A"), Some("given"));
    let steps = runs_of(&g);
    assert_eq!(env_value(&steps[0].env, "A"), Some("env"));
    // An ARG of the earlier stage that no ENV shadows stays visible.
    assert_eq!(env_value(&steps[0].env, "B"), Some("b"));
    // Declared again in the new stage, the build arg wins there.
    assert_eq!(env_value(&steps[1].env, "A"), Some("given"));
}

fn runs_of(g: &BuildGraph) -> Vec<&RunStep> {
    runs(target(g))
}

#[test]
fn env_pairs_expand_with_the_values_before_the_instruction() {
    let g = graph("FROM scratch\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n");
    let env = &target(&g).config.env;
    assert_eq!(env_value(env, "def"), Some("hello"));
    assert_eq!(env_value(env, "ghi"), Some("bye"));
    assert_eq!(histories(target(&g))[1], "ENV abc=bye def=hello");
}

#[test]
fn arg_declarations_on_one_line_see_each_other() {
    let g = graph("FROM scratch\nARG A=1 B=${A}2\nRUN x\n");
    assert_eq!(env_value(&runs_of(&g)[0].env, "B"), Some("12"));
}

#[test]
fn platform_args_need_a_declaration_in_the_stage() {
    let options = LowerOptions {
        target_platform: Platform::parse("linux/arm64").expect("platform"),
        build_platform: Platform::parse("linux/amd64").expect("platform"),
        ..LowerOptions::default()
    };
    let text = "FROM --platform=$BUILDPLATFORM img AS build\nRUN a\nARG TARGETARCH TARGETPLATFORM BUILDARCH\nRUN b\nFROM img\nCOPY --from=build /x /x\n";
    let g = lower_with(text, &options, &mut Images::default()).expect("lowers");
    let build = &g.stages[0];
    assert_eq!(build.platform.to_string(), "linux/amd64");
    assert_eq!(target(&g).platform.to_string(), "linux/arm64");
    let steps = runs(build);
    assert_eq!(env_value(&steps[0].env, "TARGETARCH"), None);
    assert_eq!(env_value(&steps[1].env, "TARGETARCH"), Some("arm64"));
    assert_eq!(
        env_value(&steps[1].env, "TARGETPLATFORM"),
        Some("linux/arm64")
    );
    assert_eq!(env_value(&steps[1].env, "BUILDARCH"), Some("amd64"));
}

#[test]
fn unconsumed_build_args_are_reported() {
    let g = graph_with_args(
        "ARG USED\nFROM scratch\nARG ALSO\n",
        &[
            ("USED", "1"),
            ("ALSO", "2"),
            ("TYPO", "3"),
            ("http_proxy", "http://p:3128"),
        ],
    );
    let messages: Vec<&str> = g.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(
        messages,
        ["build arguments not consumed by any ARG instruction: TYPO"]
    );
}

#[test]
fn proxy_args_reach_run_without_being_declared_or_recorded() {
    let g = graph_with_args(
        "FROM scratch\nRUN fetch\n",
        &[("HTTPS_PROXY", "http://p:3128")],
    );
    let run = runs_of(&g)[0];
    assert_eq!(
        run.proxy_env,
        ["HTTPS_PROXY=http://p:3128", "https_proxy=http://p:3128"]
    );
    assert_eq!(env_value(&run.env, "HTTPS_PROXY"), None);
    assert_eq!(histories(target(&g)), ["RUN /bin/sh -c fetch # buildkit"]);
}

#[test]
fn stage_names_are_case_insensitive_and_unreachable_stages_are_pruned() {
    let text = "FROM base-image AS Build\nRUN make\nFROM unused-image AS unused\nRUN nothing\nFROM BUILD AS test\nFROM runtime-image\nCOPY --from=BUILD /out /out\n";
    let mut images = Images::default();
    let g = lower_with(text, &LowerOptions::default(), &mut images).expect("lowers");
    let names: Vec<&str> = g.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["build", "stage-3"]);
    images.requested.sort();
    assert_eq!(images.requested, ["base-image", "runtime-image"]);
    assert_eq!(target(&g).depends_on, [0]);
    let options = LowerOptions {
        target: Some("Test".to_string()),
        ..LowerOptions::default()
    };
    let g = lower_with(text, &options, &mut Images::default()).expect("lowers");
    let names: Vec<&str> = g.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["build", "test"]);
    assert_eq!(target(&g).base, Base::Stage { stage: 0 });
}

#[test]
fn independent_stages_have_no_edges_between_them() {
    let g = graph("FROM a AS one\nRUN x\nFROM b AS two\nRUN y\nFROM c\nCOPY --from=one /1 /\nCOPY --from=two /2 /\nRUN --mount=type=bind,from=0,target=/m z\n");
    assert_eq!(g.stages.len(), 3);
    assert!(g.stages[0].depends_on.is_empty());
    assert!(g.stages[1].depends_on.is_empty());
    assert_eq!(target(&g).depends_on, [0, 1]);
}

#[test]
fn copy_from_index_image_and_stage() {
    let g = graph(
        "FROM a\nFROM b\nCOPY --from=0 /x /x\nCOPY --from=nginx:1.25 /etc/nginx /etc/nginx\n",
    );
    let copies: Vec<&Source> = target(&g)
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::Copy(c) => Some(&c.from),
            _ => None,
        })
        .collect();
    assert_eq!(
        copies,
        [
            &Source::Stage { stage: 0 },
            // Pinned to the digest the image resolved to, as FROM is.
            &Source::Image {
                reference: format!("nginx:1.25@sha256:{}", "0".repeat(64))
            }
        ]
    );
}

#[test]
fn stage_reference_errors() {
    let cases: &[ErrorCase] = &[
        (
            "FROM a\nCOPY --from=later /x /x\nFROM b AS later\n",
            |k| matches!(k, ErrorKind::ForwardStageReference { name, defined_at: 3 } if name == "later"),
            Pos::new(2, 13),
        ),
        (
            "FROM later\nFROM b AS later\n",
            |k| matches!(k, ErrorKind::ForwardStageReference { .. }),
            Pos::new(1, 6),
        ),
        (
            "FROM a AS me\nCOPY --from=me /x /x\n",
            |k| matches!(k, ErrorKind::SelfReference(name) if name == "me"),
            Pos::new(2, 13),
        ),
        (
            "FROM a\nCOPY --from=3 /x /x\n",
            |k| matches!(k, ErrorKind::InvalidStageIndex { index: 3, count: 1 }),
            Pos::new(2, 13),
        ),
        (
            "FROM a\nCOPY --from=$X /x /x\n",
            |k| matches!(k, ErrorKind::FromWithVariable(_)),
            Pos::new(2, 13),
        ),
        (
            "FROM a AS x\nFROM b AS X\n",
            |k| matches!(k, ErrorKind::DuplicateStageName { first_line: 1, .. }),
            Pos::new(2, 11),
        ),
        (
            "ENV A=1\nFROM a\n",
            |k| matches!(k, ErrorKind::InstructionBeforeFrom(_)),
            Pos::new(1, 1),
        ),
        (
            "ARG A=1\n",
            |k| matches!(k, ErrorKind::NoStages),
            Pos::new(1, 1),
        ),
        (
            "FROM $EMPTY\n",
            |k| matches!(k, ErrorKind::EmptyBaseName(_)),
            Pos::new(1, 6),
        ),
        (
            "FROM --platform=linux/nope/x/y a\n",
            |k| matches!(k, ErrorKind::InvalidPlatform { .. }),
            Pos::new(1, 17),
        ),
        (
            "FROM a\nRUN --mount=type=bind,from=later,target=/x x\nFROM b AS later\n",
            |k| matches!(k, ErrorKind::ForwardStageReference { .. }),
            Pos::new(2, 13),
        ),
    ];
    for (text, check, pos) in cases {
        let (kind, at) = failure_at(text);
        assert!(check(&kind), "{text:?} gave {kind:?}");
        assert_eq!(at, *pos, "{text:?}");
    }
    let options = LowerOptions {
        target: Some("nope".into()),
        ..LowerOptions::default()
    };
    let error = lower_with(
        "FROM a AS build\nFROM b AS test\n",
        &options,
        &mut Images::default(),
    )
    .expect_err("unknown");
    assert_eq!(
        error.to_string(),
        "target stage \"nope\" could not be found (named stages: build, test)"
    );
}

#[test]
fn same_name_image_and_stage_is_the_image() {
    let mut images = Images::default();
    let g = lower_with(
        "FROM golang AS golang\nRUN go version\n",
        &LowerOptions::default(),
        &mut images,
    )
    .expect("lowers");
    assert_eq!(images.requested, ["golang"]);
    assert!(matches!(target(&g).base, Base::Image { .. }));
}

#[test]
fn base_image_configuration_feeds_expansion_and_steps() {
    let golang = ImageConfig {
        env: vec!["PATH=/go/bin:/usr/bin".into(), "GOPATH=/go".into()],
        working_dir: "/go".into(),
        user: "gopher".into(),
        cmd: Some(vec!["go".into()]),
        ..ImageConfig::default()
    };
    let mut images = Images::default().with("golang", golang);
    let text = "FROM golang\nWORKDIR $GOPATH/src/app\nCOPY . .\nRUN go build\n";
    let g = lower_with(text, &LowerOptions::default(), &mut images).expect("lowers");
    let stage = target(&g);
    assert_eq!(stage.config.working_dir, "/go/src/app");
    assert_eq!(stage.config.cmd.as_deref(), Some(&["go".to_string()][..]));
    let Action::Mkdir(mkdir) = &stage.steps[0].action else {
        panic!("WORKDIR makes a directory")
    };
    assert_eq!(
        (mkdir.path.as_str(), mkdir.user.as_str(), mkdir.mode),
        ("/go/src/app", "gopher", 0o755)
    );
    let Action::Copy(copy) = &stage.steps[1].action else {
        panic!("copy")
    };
    assert_eq!(copy.dest, "/go/src/app/");
    let run = runs(stage)[0];
    assert_eq!(run.user, "gopher");
    assert_eq!(run.workdir, "/go/src/app");
    assert_eq!(env_value(&run.env, "PATH"), Some("/go/bin:/usr/bin"));
}

#[test]
fn scratch_images_get_a_default_path() {
    let g = graph("FROM scratch\nCOPY a /a\n");
    assert_eq!(target(&g).config.env, [format!("PATH={DEFAULT_PATH}")]);
    assert_eq!(target(&g).base, Base::Scratch);
}

#[test]
fn args_declared_in_a_base_stage_are_inherited() {
    let g = graph("FROM scratch AS base\nARG V=1\nFROM base\nRUN echo $V\n");
    assert_eq!(env_value(&runs_of(&g)[0].env, "V"), Some("1"));
}

#[test]
fn workdir_paths_resolve_against_the_previous_one() {
    let g = graph("FROM scratch\nWORKDIR /a\nWORKDIR b\nWORKDIR ../c\nWORKDIR /\nCOPY x y\n");
    let stage = target(&g);
    assert_eq!(
        histories(stage),
        [
            "WORKDIR /a",
            "WORKDIR /a/b",
            "WORKDIR /a/c",
            "WORKDIR /",
            "COPY x y # buildkit"
        ]
    );
    assert!(matches!(stage.steps[3].action, Action::Metadata));
    let Action::Copy(copy) = &stage.steps[4].action else {
        panic!()
    };
    assert_eq!(copy.dest, "/y");
    assert_eq!(stage.config.working_dir, "/");
    assert_eq!(
        failure_at("FROM a\nWORKDIR $UNSET\n").0,
        ErrorKind::EmptyWorkdir("$UNSET".into())
    );
}

#[test]
fn run_heredocs() {
    let g = graph("FROM scratch\nRUN <<EOF\necho one\necho two\nEOF\nRUN <<-'SCRIPT'\n\t#!/usr/bin/env python3\n\tprint('hi')\n\tSCRIPT\nRUN cat <<A > /a && cat <<B > /b\nalpha\nA\nbeta\nB\n");
    let stage = target(&g);
    let steps = runs(stage);
    assert_eq!(steps[0].args, ["/bin/sh", "-c", "echo one\necho two\n"]);
    assert_eq!(stage.steps[0].instruction, "RUN <<EOF (echo one...)");
    assert_eq!(steps[1].args, ["/bin/sh", "-c", "/dev/pipes/SCRIPT"]);
    assert_eq!(
        steps[1].inline_files[0].content,
        "#!/usr/bin/env python3\nprint('hi')\n"
    );
    assert_eq!(steps[1].inline_files[0].mode, 0o755);
    assert_eq!(
        steps[2].args,
        [
            "/bin/sh",
            "-c",
            "cat <<A > /a && cat <<B > /b\nalpha\nA\nbeta\nB"
        ]
    );
}

#[test]
fn copy_heredocs_expand_unless_quoted() {
    let g = graph("FROM scratch\nARG NAME=world\nCOPY <<greeting <<'raw' /etc/\nhello $NAME \"quoted\"\ngreeting\nhello $NAME\nraw\n");
    let Action::Copy(copy) = &target(&g).steps[1].action else {
        panic!()
    };
    let files: Vec<(&str, &str)> = copy
        .sources
        .iter()
        .filter_map(|s| match s {
            CopySource::Inline(f) => Some((f.path.as_str(), f.content.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        files,
        [
            ("greeting", "hello world \"quoted\"\n"),
            ("raw", "hello $NAME\n")
        ]
    );
    assert_eq!(
        histories(target(&g))[1],
        "COPY <<greeting <<raw /etc/ # buildkit"
    );
}

#[test]
fn copy_sources_and_flags() {
    let g = graph("FROM scratch\nARG OWNER=app\nWORKDIR /srv\nCOPY --chown=$OWNER:$OWNER --chmod=640 --link --exclude=*.md a b ./\nADD https://example.com/x.tgz git@github.com:o/r.git local.tar.gz /opt/\n");
    let stage = target(&g);
    let Action::Copy(copy) = &stage.steps[2].action else {
        panic!()
    };
    assert_eq!(copy.chown.as_deref(), Some("app:app"));
    assert_eq!(copy.chmod, Some(Chmod::Octal(0o640)));
    assert!(copy.link && !copy.unpack);
    assert_eq!(copy.exclude, ["*.md"]);
    assert_eq!(
        copy.sources,
        [CopySource::Path("a".into()), CopySource::Path("b".into())]
    );
    assert_eq!(copy.dest, "/srv/");
    assert_eq!(
        histories(stage)[2],
        "COPY --chown=app:app --chmod=640 a b ./ # buildkit"
    );
    let Action::Copy(add) = &stage.steps[3].action else {
        panic!()
    };
    assert!(add.unpack && !add.unpack_downloads);
    assert_eq!(
        add.sources,
        [
            CopySource::Url("https://example.com/x.tgz".into()),
            CopySource::Git("git@github.com:o/r.git".into()),
            CopySource::Path("local.tar.gz".into())
        ]
    );
}

#[test]
fn symbolic_chmod_reaches_the_graph_as_written() {
    let g = graph("FROM scratch\nARG MODE=rX\nCOPY --chmod=u=rwX,go=$MODE a /a\n");
    let stage = target(&g);
    let Action::Copy(copy) = &stage.steps[1].action else {
        panic!()
    };
    let chmod = copy.chmod.as_ref().expect("--chmod");
    assert_eq!(chmod, &Chmod::parse("u=rwX,go=rX").expect("valid"));
    assert_eq!(
        (chmod.apply(0o600, false), chmod.apply(0o700, true)),
        (0o644, 0o755)
    );
    assert_eq!(
        histories(stage)[1],
        "COPY --chmod=u=rwX,go=rX a /a # buildkit"
    );
}

#[test]
fn add_unpack_says_which_archives_are_unpacked() {
    let unpacks = |flag: &str| {
        let g = graph(&format!(
            "FROM scratch\nADD {flag} https://example.com/x.tgz x.tgz /opt/\n"
        ));
        let Action::Copy(add) = &target(&g).steps[0].action else {
            panic!()
        };
        (add.unpack, add.unpack_downloads)
    };
    // Local archives by default, downloaded ones only when asked for.
    assert_eq!(unpacks(""), (true, false));
    assert_eq!(unpacks("--unpack=true"), (true, true));
    assert_eq!(unpacks("--unpack"), (true, true));
    assert_eq!(unpacks("--unpack=false"), (false, false));
}

#[test]
fn copy_and_add_errors() {
    let cases: &[(&str, ErrorKind, Pos)] = &[
        (
            "FROM a\nCOPY ../secret /x\n",
            ErrorKind::SourceOutsideContext("../secret".into()),
            Pos::new(2, 6),
        ),
        (
            "FROM a\nCOPY https://x/y /y\n",
            ErrorKind::UrlInCopy(kiln_frontend::keyword::Keyword::Copy),
            Pos::new(2, 6),
        ),
        (
            "FROM a\nCOPY --chmod=999 a b\n",
            ErrorKind::InvalidChmod {
                value: "999".into(),
                reason: ChmodError::Octal,
            },
            Pos::new(2, 14),
        ),
        (
            "FROM a\nADD --checksum=sha256:abc https://x/y /y\n",
            ErrorKind::InvalidChecksum("sha256:abc".into()),
            Pos::new(2, 16),
        ),
        (
            "FROM a\nADD --checksum=sha256:abc local /y\n",
            ErrorKind::ChecksumNeedsOneUrl,
            Pos::new(2, 16),
        ),
    ];
    for (text, kind, pos) in cases {
        assert_eq!(failure_at(text), (kind.clone(), *pos), "{text:?}");
    }
    assert!(
        graph("FROM a AS b\nFROM c\nCOPY --from=b ../x /x\n")
            .stages
            .len()
            == 2
    );
}

#[test]
fn run_mounts_with_defaults() {
    let g = graph("FROM scratch AS deps\nFROM scratch\nWORKDIR /src\nRUN --mount=type=cache,target=.cache --mount=type=bind,from=deps,source=/lib,target=/deps --mount=type=secret,id=token --mount=type=ssh --mount=type=tmpfs,target=/tmp,size=1g make\n");
    let stage = target(&g);
    let run = runs(stage)[0];
    assert_eq!(
        run.mounts,
        [
            Mount::Cache {
                target: "/src/.cache".into(),
                id: ".cache".into(),
                sharing: Sharing::Shared,
                from: None,
                source: "/".into(),
                readonly: false,
                mode: 0o755,
                uid: 0,
                gid: 0
            },
            Mount::Bind {
                target: "/deps".into(),
                from: Source::Stage { stage: 0 },
                source: "/lib".into(),
                readonly: true
            },
            Mount::Secret {
                id: "token".into(),
                target: Some("/run/secrets/token".into()),
                env: None,
                required: false,
                mode: 0o400,
                uid: 0,
                gid: 0
            },
            Mount::Ssh {
                id: "default".into(),
                target: "/run/buildkit/ssh_agent.0".into(),
                required: false,
                mode: 0o600,
                uid: 0,
                gid: 0
            },
            Mount::Tmpfs {
                target: "/tmp".into(),
                size: Some(1 << 30)
            },
        ]
    );
    assert_eq!(stage.depends_on, [0]);
    let (kind, pos) = failure_at("FROM a\nRUN --mount=type=cache x\n");
    assert_eq!(
        (kind, pos),
        (
            ErrorKind::InvalidMountTarget(String::new()),
            Pos::new(2, 13)
        )
    );
    let (kind, _) = failure_at("FROM a\nRUN --mount=type=cache,target=/x,colour=red x\n");
    assert!(matches!(kind, ErrorKind::InvalidMount(message) if message.contains("colour")));
}

#[test]
fn insecure_runs_need_permission() {
    let text = "FROM a\nRUN --security=insecure --network=host modprobe x\n";
    assert_eq!(
        failure_at(text),
        (ErrorKind::InsecureNotAllowed, Pos::new(2, 1))
    );
    let options = LowerOptions {
        allow_insecure: true,
        ..LowerOptions::default()
    };
    let g = lower_with(text, &options, &mut Images::default()).expect("allowed");
    let run = runs_of(&g)[0];
    assert_eq!(run.network, Network::Host);
    assert_eq!(run.security, Security::Insecure);
}

#[test]
fn run_gets_the_hosts_network_unless_it_asks_for_none() {
    let g = graph(
        "FROM a\nRUN one\nRUN --network=default two\nRUN --network=host three\n\
         RUN --network=none four\nRUN --security=sandbox five\n",
    );
    let networks: Vec<Network> = runs_of(&g).iter().map(|run| run.network).collect();
    assert_eq!(
        networks,
        [
            Network::Host,
            Network::Host,
            Network::Host,
            Network::None,
            Network::Host
        ]
    );
    assert!(runs_of(&g)
        .iter()
        .all(|run| run.security == Security::Sandbox));
}

#[test]
fn onbuild_triggers_of_a_base_image_run_first() {
    let base = ImageConfig {
        on_build: vec!["COPY . /app".into(), "RUN make -C /app".into()],
        ..ImageConfig::default()
    };
    let mut images = Images::default().with("builder", base);
    let g = lower_with(
        "FROM builder\nRUN ls\n",
        &LowerOptions::default(),
        &mut images,
    )
    .expect("lowers");
    let stage = target(&g);
    let shown: Vec<(&str, bool)> = stage
        .steps
        .iter()
        .map(|s| (s.instruction.as_str(), s.from_onbuild))
        .collect();
    assert_eq!(
        shown,
        [
            ("COPY . /app", true),
            ("RUN make -C /app", true),
            ("RUN ls", false)
        ]
    );
    assert!(stage
        .steps
        .iter()
        .take(2)
        .all(|s| s.location == Pos::new(1, 1)));
    assert!(stage.config.on_build.is_empty());

    let bad = ImageConfig {
        on_build: vec!["COPY --form=x a b".into()],
        ..ImageConfig::default()
    };
    let mut images = Images::default().with("builder", bad);
    let error = lower_with(
        "FROM scratch\nFROM builder\n",
        &LowerOptions::default(),
        &mut images,
    )
    .expect_err("bad trigger");
    assert!(
        error.to_string().starts_with(
            "Dockerfile:2:1: in ONBUILD trigger `COPY --form=x a b` of builder@sha256:"
        ),
        "{error}"
    );
}

#[test]
fn onbuild_in_a_stage_applies_to_stages_built_from_it() {
    let g = graph("FROM scratch AS base\nONBUILD RUN echo triggered\nFROM base\nRUN after\n");
    let base = &g.stages[0];
    assert_eq!(base.config.on_build, ["RUN echo triggered"]);
    let child = target(&g);
    assert!(child.config.on_build.is_empty());
    assert_eq!(runs(child)[0].args, ["/bin/sh", "-c", "echo triggered"]);
    assert!(child.steps[0].from_onbuild);
}

#[test]
fn entrypoint_resets_an_inherited_cmd() {
    let base = ImageConfig {
        cmd: Some(vec!["base-cmd".into()]),
        ..ImageConfig::default()
    };
    let mut images = Images::default().with("base", base);
    let g = lower_with(
        "FROM base\nENTRYPOINT [\"/app\"]\n",
        &LowerOptions::default(),
        &mut images,
    )
    .expect("lowers");
    assert_eq!(target(&g).config.cmd, None);
    let g = graph("FROM scratch\nCMD [\"--help\"]\nENTRYPOINT [\"/app\"]\n");
    assert_eq!(target(&g).config.cmd, Some(vec!["--help".to_string()]));
    assert_eq!(target(&g).config.entrypoint, Some(vec!["/app".to_string()]));
    let g = graph("FROM scratch\nENTRYPOINT [\"/app\"]\nENTRYPOINT []\n");
    assert_eq!(target(&g).config.entrypoint, None);
}

#[test]
fn shell_changes_shell_form_commands() {
    let g = graph("FROM scratch\nSHELL [\"/bin/bash\", \"-eo\", \"pipefail\", \"-c\"]\nRUN a | b\nCMD serve --port 80\nHEALTHCHECK --interval=30s --retries=3 CMD curl -f http://localhost/\n");
    let stage = target(&g);
    assert_eq!(
        runs(stage)[0].args,
        ["/bin/bash", "-eo", "pipefail", "-c", "a | b"]
    );
    assert_eq!(
        stage.config.cmd.as_deref(),
        Some(
            &[
                "/bin/bash".to_string(),
                "-eo".into(),
                "pipefail".into(),
                "-c".into(),
                "serve --port 80".into()
            ][..]
        )
    );
    assert!(stage.config.args_escaped);
    let health = stage.config.healthcheck.as_ref().expect("healthcheck");
    assert_eq!(health.test, ["CMD-SHELL", "curl -f http://localhost/"]);
    assert_eq!(health.interval, 30_000_000_000);
    assert_eq!(
        histories(stage),
        [
            "SHELL [/bin/bash -eo pipefail -c]",
            "RUN /bin/bash -eo pipefail -c a | b # buildkit",
            "CMD [\"/bin/bash\" \"-eo\" \"pipefail\" \"-c\" \"serve --port 80\"]",
            "HEALTHCHECK &{[\"CMD-SHELL\" \"curl -f http://localhost/\"] \"30s\" \"0s\" \"0s\" \"0s\" '\\x03'}",
        ]
    );
}

#[test]
fn configuration_instructions() {
    let text = "FROM scratch\nARG PORTS=\"80 443/tcp\"\nEXPOSE $PORTS 53/udp\nVOLUME /data [\"/not-json\"]\nVOLUME [\"/logs\", \"/cache\"]\nLABEL version=1.0 \"description\"=\"a b\"\nUSER app:app\nSTOPSIGNAL SIGQUIT\nMAINTAINER me@example.com\nHEALTHCHECK NONE\n";
    let options = LowerOptions {
        labels: BTreeMap::from([("from-cli".to_string(), "yes".to_string())]),
        ..LowerOptions::default()
    };
    let g = lower_with(text, &options, &mut Images::default()).expect("lowers");
    let stage = target(&g);
    let config = &stage.config;
    assert_eq!(
        config.exposed_ports.iter().collect::<Vec<_>>(),
        ["443/tcp", "53/udp", "80/tcp"]
    );
    assert_eq!(
        config.volumes.iter().collect::<Vec<_>>(),
        ["/cache", "/data", "/logs", "[/not-json]"]
    );
    assert_eq!(
        config.labels.get("description").map(String::as_str),
        Some("a b")
    );
    assert_eq!(
        config.labels.get("from-cli").map(String::as_str),
        Some("yes")
    );
    assert_eq!(config.user, "app:app");
    assert_eq!(config.stop_signal, "SIGQUIT");
    assert_eq!(stage.author.as_deref(), Some("me@example.com"));
    assert_eq!(
        config.healthcheck.as_ref().map(|h| h.test.clone()),
        Some(vec!["NONE".to_string()])
    );
    assert_eq!(
        histories(stage)[1..5],
        [
            // BuildKit sorts the words as written, then expands them.
            "EXPOSE [80/tcp 443/tcp 53/udp]",
            "VOLUME [/data [/not-json]]",
            "VOLUME [/logs /cache]",
            "LABEL version=1.0 description=a b",
        ]
    );
    assert!(stage.steps.iter().all(|s| !s.makes_layer()));
}

#[test]
fn configuration_errors_point_at_the_value() {
    let cases: &[ErrorCase] = &[
        (
            "FROM a\nENV A=\"unterminated\n",
            |k| matches!(k, ErrorKind::Expansion { .. }),
            Pos::new(2, 7),
        ),
        (
            "FROM a\nEXPOSE 80/icmp\n",
            |k| matches!(k, ErrorKind::InvalidPort { .. }),
            Pos::new(2, 8),
        ),
        (
            "FROM a\nSTOPSIGNAL SIGNOPE\n",
            |k| matches!(k, ErrorKind::InvalidSignal(_)),
            Pos::new(2, 12),
        ),
        (
            "FROM a\nLABEL x=\"${Y:?must be set}\"\n",
            |k| matches!(k, ErrorKind::Expansion { .. }),
            Pos::new(2, 9),
        ),
        (
            "FROM a\nLABEL x=${Y:?must be set}\n",
            |k| matches!(k, ErrorKind::MissingEquals { .. }),
            Pos::new(2, 19),
        ),
        (
            "FROM a\nUSER ${\n",
            |k| matches!(k, ErrorKind::Expansion { .. }),
            Pos::new(2, 6),
        ),
    ];
    for (text, check, pos) in cases {
        let (kind, at) = failure_at(text);
        assert!(check(&kind), "{text:?} gave {kind:?}");
        assert_eq!(at, *pos, "{text:?}");
    }
    let error = failure("FROM a\nLABEL x=\"${Y:?must be set}\"\n");
    assert_eq!(
        error.to_string(),
        "Dockerfile:2:9: Y: must be set (while expanding \"\\\"${Y:?must be set}\\\"\")"
    );
}

#[test]
fn graph_serialises_to_json() {
    let options = LowerOptions {
        allow_insecure: true,
        ..LowerOptions::default()
    };
    let g = lower_with(
        "FROM scratch AS build\nRUN --network=none make\nRUN --security=insecure make install\n\
         FROM scratch\nCOPY --from=build /out /\n",
        &options,
        &mut Images::default(),
    )
    .expect("lowers");
    let json = serde_json::to_value(&g).expect("serialises");
    let sandboxed = &json["stages"][0]["steps"][0]["action"];
    assert_eq!(sandboxed["op"], "run");
    assert_eq!(sandboxed["network"], "none");
    assert_eq!(sandboxed["security"], "sandbox");
    let insecure = &json["stages"][0]["steps"][1]["action"];
    assert_eq!(insecure["network"], "host");
    assert_eq!(insecure["security"], "insecure");
    assert_eq!(
        json["stages"][1]["steps"][0]["action"]["from"]["kind"],
        "stage"
    );
    assert_eq!(json["stages"][1]["depends_on"][0], 0);
    let back: BuildGraph = serde_json::from_value(json).expect("deserialises");
    assert_eq!(back, g);
}

#[test]
fn the_cache_mounts_a_build_uses_are_listed_once_by_id() {
    let g = graph(
        "FROM scratch\nRUN --mount=type=cache,target=/a true\n\
         RUN --mount=type=cache,id=x,target=/b --mount=type=cache,target=/a true\n",
    );
    assert_eq!(
        g.cache_mount_ids().into_iter().collect::<Vec<_>>(),
        ["/a", "x"]
    );
}

#[test]
fn progress_numbers_add_copy_run_and_every_workdir_as_buildkit_does() {
    let g = graph("FROM scratch\nWORKDIR /\nENV A=1\nRUN x\nCOPY a b\nWORKDIR /w\nLABEL l=1\n");
    let numbered: Vec<bool> = target(&g).steps.iter().map(|s| s.numbered).collect();
    assert_eq!(numbered, [true, false, true, true, true, false]);
}

/// Base images plus build contexts given by name: `files` holds files,
/// `img` is an image, each asked for under the name the Dockerfile uses.
#[derive(Default)]
struct WithContexts {
    images: Images,
    asked: Vec<String>,
}

impl BaseImages for WithContexts {
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        self.images.resolve(reference, platform)
    }

    fn named_context(
        &mut self,
        name: &str,
        _platform: &Platform,
    ) -> Result<Option<NamedContext>, String> {
        self.asked.push(name.to_string());
        Ok(match name {
            "files" => Some(NamedContext::Files {
                name: "files".to_string(),
            }),
            "img" => Some(NamedContext::Image(Box::new(ResolvedImage {
                reference: "example/img@sha256:1".to_string(),
                config: ImageConfig {
                    env: vec!["FROM_IMG=yes".to_string()],
                    ..ImageConfig::default()
                },
            }))),
            _ => None,
        })
    }
}

#[test]
fn named_contexts_replace_stages_and_images_wherever_they_are_named() {
    let mut contexts = WithContexts::default();
    let graph = lower(
        &parse(
            "FROM busybox AS unused\n\
             FROM scratch AS img\n\
             RUN never lowered\n\
             FROM img AS built\n\
             COPY --from=files /a /a\n\
             RUN --mount=from=files,target=/m cat /m/b\n\
             FROM files\n\
             COPY --from=built /a /b\n",
            "Dockerfile",
        )
        .expect("parses"),
        &LowerOptions::default(),
        &mut contexts,
    )
    .expect("lowers");
    // The unused stage is never looked at, nor its base image.
    assert!(!contexts.asked.iter().any(|name| name == "unused"));
    assert!(contexts.images.requested.is_empty());
    let built = graph
        .stages
        .iter()
        .find(|stage| stage.name == "built")
        .expect("built");
    let replaced = &graph.stages[built.depends_on[0]];
    assert_eq!(
        replaced.base,
        Base::Image {
            reference: "example/img@sha256:1".to_string()
        }
    );
    assert!(replaced.steps.is_empty(), "the stage's RUN is not lowered");
    assert!(built.config.env.contains(&"FROM_IMG=yes".to_string()));
    let Action::Copy(copy) = &built.steps[0].action else {
        panic!("a COPY");
    };
    assert_eq!(
        copy.from,
        Source::NamedContext {
            name: "files".to_string()
        }
    );
    let run = runs(built)[0];
    assert!(matches!(
        &run.mounts[0],
        Mount::Bind { from: Source::NamedContext { name }, .. } if name == "files"
    ));
    // FROM a files context: scratch, then its files at the root.
    let last = target(&graph);
    assert_eq!(last.base, Base::Scratch);
    assert_eq!(last.steps[0].instruction, "FROM files");
    let Action::Copy(first) = &last.steps[0].action else {
        panic!("a COPY of the context");
    };
    assert_eq!(first.dest, "/");
}

#[test]
fn a_dry_lowering_lists_the_images_the_target_needs_once_each() {
    let dockerfile = parse(
        "ARG BASE=alpine:3\n\
         FROM $BASE AS tools\n\
         FROM busybox AS unused\n\
         FROM debian:12 AS build\n\
         COPY --from=tools /bin/sh /sh\n\
         COPY --from=gcc:12 /usr/bin/gcc /gcc\n\
         FROM build\n\
         COPY --from=tools /etc /etc\n",
        "Dockerfile",
    )
    .expect("parse");
    let mut asked = kiln_frontend::ImagesAsked::default();
    lower(&dockerfile, &LowerOptions::default(), &mut asked).expect("lower");
    let mut names: Vec<&str> = asked.asked.iter().map(|(r, _)| r.as_str()).collect();
    names.sort();
    assert_eq!(names, ["alpine:3", "debian:12", "gcc:12"]);
}
