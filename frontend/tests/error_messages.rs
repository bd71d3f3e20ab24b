//! Every error a Dockerfile can cause, with the exact message a user sees:
//! file, line, column and words.

use kiln_frontend::graph::ImageConfig;
use kiln_frontend::{lower, parse, parse_bytes, BaseImages, LowerOptions, Platform, ResolvedImage};

/// Base images for the cases that need one: `broken` cannot be found,
/// `triggers` carries ONBUILD triggers.
struct Images;

impl BaseImages for Images {
    fn resolve(&mut self, reference: &str, _platform: &Platform) -> Result<ResolvedImage, String> {
        let on_build = match reference {
            "broken" => return Err("manifest unknown".to_string()),
            "triggers" => vec!["RUN one\nRUN two".to_string()],
            "bad-trigger" => vec!["FROM x".to_string()],
            _ => Vec::new(),
        };
        Ok(ResolvedImage {
            reference: reference.to_string(),
            config: ImageConfig {
                on_build,
                ..ImageConfig::default()
            },
        })
    }
}

fn message(text: &str, options: &LowerOptions) -> String {
    let result = parse(text, "Dockerfile").and_then(|d| lower(&d, options, &mut Images));
    match result {
        Ok(_) => panic!("{text:?} was accepted"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn messages() {
    let cases: &[(&str, &str)] = &[
        ("", "Dockerfile:1:1: the Dockerfile is empty"),
        ("# only a comment\n", "Dockerfile:1:1: the Dockerfile has no instructions, only comments and blank lines"),
        ("# escape=`\n# escape=`\nFROM a\n", "Dockerfile:2:1: only one `escape` parser directive can be used"),
        ("# escape=$\nFROM a\n", "Dockerfile:1:1: invalid escape character \"$\": the escape directive accepts only ` or \\"),
        ("FROM a\nRUN <<EOF\nx\n", "Dockerfile:2:1: unterminated heredoc: no line consisting of `EOF` ends it"),
        ("FROM a\nRUNN x\n", "Dockerfile:2:1: unknown instruction: RUNN (did you mean RUN?)"),
        ("FROM a\nCMD [\"a\", [\"b\"]]\n", "Dockerfile:2:5: a JSON array of arguments must contain only strings"),
        ("FROM a\nENV PATH\n", "Dockerfile:2:5: ENV must have two arguments: ENV NAME VALUE, or ENV NAME=VALUE ..."),
        ("FROM a\nLABEL a=1 b\n", "Dockerfile:2:11: LABEL: can't find = in \"b\"; write it as name=value"),
        ("FROM a\nARG =1\n", "Dockerfile:2:5: ARG names can not be blank"),
        ("FROM a\nCOPY --chmode=7 a b\n", "Dockerfile:2:6: unknown flag --chmode for COPY (did you mean --chmod?)"),
        ("FROM a\nCOPY --checksum=x a b\n", "Dockerfile:2:6: unknown flag --checksum for COPY (it is a flag of ADD)"),
        ("FROM a\nRUN --mount=type=tmpfs,target=/t --mount=type=tmpfs,target=/u --network=none --network=host x\n", "Dockerfile:2:78: --network is given more than once to RUN"),
        ("FROM a\nCOPY --from a b\n", "Dockerfile:2:6: --from needs a value: write --from=VALUE"),
        ("FROM a\nADD --link=maybe a b\n", "Dockerfile:2:5: --link takes true or false, not \"maybe\""),
        ("FROM a\nEXPOSE\n", "Dockerfile:2:1: EXPOSE requires at least one argument"),
        ("FROM a\nUSER\n", "Dockerfile:2:1: USER requires exactly one argument"),
        ("FROM a\nCOPY a\n", "Dockerfile:2:1: COPY requires at least two arguments: one or more sources and a destination"),
        ("FROM a\nCOPY a <<EOF\nx\nEOF\n", "Dockerfile:2:8: COPY cannot take a heredoc as its destination"),
        ("FROM a AS\n", "Dockerfile:1:1: FROM requires either one or three arguments: FROM IMAGE [AS NAME]"),
        ("FROM a AS 2fast\n", "Dockerfile:1:11: invalid stage name \"2fast\": a name starts with a letter and contains only letters, digits, '-', '_' and '.'"),
        ("FROM a\nONBUILD ONBUILD RUN x\n", "Dockerfile:2:9: chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("FROM a\nONBUILD FROM b\n", "Dockerfile:2:9: FROM isn't allowed as an ONBUILD trigger"),
        ("FROM a\nSHELL /bin/bash -c\n", "Dockerfile:2:1: SHELL requires the arguments in JSON form, for example SHELL [\"/bin/bash\", \"-c\"]"),
        ("FROM a\nHEALTHCHECK NONE --x\n", "Dockerfile:2:13: HEALTHCHECK NONE takes no arguments"),
        ("FROM a\nHEALTHCHECK CMD\n", "Dockerfile:2:13: missing command after HEALTHCHECK CMD"),
        ("FROM a\nHEALTHCHECK PING x\n", "Dockerfile:2:13: unknown type \"PING\" in HEALTHCHECK (try CMD or NONE)"),
        ("FROM a\nHEALTHCHECK --timeout=5 CMD x\n", "Dockerfile:2:23: invalid duration \"5\" for --timeout: missing unit in duration \"5\""),
        ("FROM a\nHEALTHCHECK --interval=1ns CMD x\n", "Dockerfile:2:24: invalid duration \"1ns\" for --interval: it must be 0 or at least 1ms"),
        ("FROM a\nHEALTHCHECK --retries=many CMD x\n", "Dockerfile:2:23: invalid value \"many\" for --retries: it must be a whole number of 0 or more"),
        ("FROM a\nVOLUME [\"\"]\n", "Dockerfile:2:8: VOLUME specified can not be an empty string"),
        ("FROM a\nRUN --mount=type=nfs x\n", "Dockerfile:2:13: invalid --mount: unsupported mount type \"nfs\" (use bind, cache, tmpfs, secret or ssh)"),
        ("FROM a\nRUN --network=bridge x\n", "Dockerfile:2:15: unsupported network mode \"bridge\": use default, none or host"),
        ("FROM a\nRUN --security=privileged x\n", "Dockerfile:2:16: unsupported security mode \"privileged\": use sandbox or insecure"),
        ("ARG A\n", "Dockerfile:1:1: the Dockerfile has no FROM instruction, so there is no stage to build"),
        ("RUN x\nFROM a\n", "Dockerfile:1:1: RUN appears before the first FROM; only ARG can come before FROM"),
        ("FROM a AS x\nFROM b AS x\n", "Dockerfile:2:11: duplicate stage name \"x\": it is already used on line 1"),
        ("FROM a\nCOPY --from=7 x y\n", "Dockerfile:2:13: invalid stage index 7: the Dockerfile has stages 0 to 0"),
        ("FROM a\nCOPY --from=next x y\nFROM b AS next\n", "Dockerfile:2:13: stage \"next\" is defined on line 3, after this instruction; only stages defined earlier can be used"),
        ("FROM a AS me\nCOPY --from=me x y\n", "Dockerfile:2:13: a stage cannot use itself (\"me\")"),
        ("ARG IMAGE\nFROM $IMAGE\n", "Dockerfile:2:6: FROM $IMAGE expands to an empty image name; give the variable a value with --build-arg or a default in its ARG"),
        ("FROM --platform=linux/amd64/v3/x a\n", "Dockerfile:1:17: invalid platform \"linux/amd64/v3/x\": expected os/arch[/variant]"),
        ("FROM --platform=$BULIDPLATFORM a\n", "Dockerfile:1:17: empty platform value from expression $BULIDPLATFORM (did you mean BUILDPLATFORM?) (FROM --platform)"),
        ("FROM --platform=${NOPE} a\n", "Dockerfile:1:17: empty platform value from expression ${NOPE} (FROM --platform)"),
        ("FROM a\nWORKDIR \"/unterminated\n", "Dockerfile:2:9: unterminated double quote (while expanding \"\\\"/unterminated\")"),
        ("FROM a\nCOPY --from=${SRC} x y\n", "Dockerfile:2:13: --from does not expand variables (\"${SRC}\"); name the image in a stage, `FROM ${VAR} AS src`, and use --from=src"),
        ("FROM a\nCOPY ../../etc/passwd /x\n", "Dockerfile:2:6: source \"../../etc/passwd\" is outside the build context"),
        ("FROM a\nCOPY https://example.com/f /f\n", "Dockerfile:2:6: COPY cannot copy from a URL; use ADD for remote files"),
        ("FROM a\nCOPY git@github.com:o/r.git /r\n", "Dockerfile:2:6: COPY cannot copy from a git repository; use ADD for git sources"),
        ("FROM a\nADD --checksum=sha256:00 f /f\n", "Dockerfile:2:16: --checksum is only valid for a single http(s) source of ADD, or a single git source"),
        ("FROM a\nADD --checksum=sha256:00 https://h/r.git /r\n", "Dockerfile:2:16: invalid checksum sha256:00 for Git URL, expected hex commit hash"),
        ("FROM a\nADD --checksum=abc https://h/r.git?commit=def /r\n", "Dockerfile:2:20: checksum mismatch \"abc\" != \"def\": --checksum and the URL's commit differ"),
        ("FROM a\nADD --keep-git-dir https://h/r.git?keep-git-dir=false /r\n", "Dockerfile:2:20: inconsistent keep-git-dir configuration: --keep-git-dir and the URL's keep-git-dir differ"),
        ("FROM a\nADD https://h/r.git?tag=v1#refs/heads/main /r\n", "Dockerfile:2:5: invalid git URL \"https://h/r.git?tag=v1#refs/heads/main\": ref conflicts: \"refs/heads/main\" vs \"refs/tags/v1\""),
        ("FROM a\nCOPY https://h/r.git /r\n", "Dockerfile:2:6: COPY cannot copy from a git repository; use ADD for git sources"),
        ("FROM a\nADD --checksum=md5:00 https://example.com/f /f\n", "Dockerfile:2:16: invalid --checksum \"md5:00\": expected ALGORITHM:HEX, for example sha256:0123…"),
        ("FROM a\nCOPY --chmod=64a a b\n", "Dockerfile:2:14: invalid --chmod \"64a\": it must be an octal mode between 0 and 7777"),
        ("FROM a\nADD --chmod=u+q a b\n", "Dockerfile:2:13: invalid --chmod \"u+q\": 'q' is not a permission (r, w, x, X, s, t) or a class to copy (u, g, o); a symbolic mode is chmod's clauses, such as u+x, go-w or u=rwX,go=rX"),
        ("FROM a\nCOPY --chmod=u a b\n", "Dockerfile:2:14: invalid --chmod \"u\": a clause ends before its operator (+, - or =); a symbolic mode is chmod's clauses, such as u+x, go-w or u=rwX,go=rX"),
        ("FROM a\nSTOPSIGNAL SIGWHATEVER\n", "Dockerfile:2:12: invalid signal \"SIGWHATEVER\": use a name such as SIGTERM or a number"),
        ("FROM a\nEXPOSE 80/icmp\n", "Dockerfile:2:8: invalid port \"80/icmp\": invalid protocol \"icmp\": use tcp, udp or sctp"),
        ("FROM a\nWORKDIR $NOTHING\n", "Dockerfile:2:9: WORKDIR \"$NOTHING\" expands to an empty path"),
        ("FROM a\nRUN --mount=type=cache,target=/ x\n", "Dockerfile:2:13: mount target \"/\" is invalid: a mount needs a target other than /"),
        ("FROM a\nRUN --security=insecure x\n", "Dockerfile:2:1: --security=insecure must be allowed with --allow security.insecure"),
        ("FROM broken\n", "Dockerfile:1:6: cannot use base image broken: manifest unknown"),
        ("FROM triggers\n", "Dockerfile:1:1: in ONBUILD trigger `RUN one` of triggers: ONBUILD trigger \"RUN one\\nRUN two\" must be exactly one instruction"),
        ("FROM bad-trigger\n", "Dockerfile:1:1: in ONBUILD trigger `FROM x` of bad-trigger: FROM isn't allowed as an ONBUILD trigger"),
    ];
    let options = LowerOptions::default();
    let mut failures = Vec::new();
    for (text, expected) in cases {
        let actual = message(text, &options);
        if actual != *expected {
            failures.push(format!(
                "{text:?}\n  expected: {expected}\n  actual:   {actual}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn messages_about_options() {
    let options = LowerOptions {
        target: Some("tset".into()),
        ..LowerOptions::default()
    };
    assert_eq!(
        message("FROM a AS test\n", &options),
        "target stage \"tset\" could not be found (did you mean test?)"
    );
    assert_eq!(
        message(
            "FROM a AS test\nFROM a AS build\n",
            &LowerOptions {
                target: Some("release".into()),
                ..LowerOptions::default()
            }
        ),
        "target stage \"release\" could not be found (named stages: test, build)"
    );
    assert_eq!(
        message("FROM a\n", &options),
        "target stage \"tset\" could not be found (the Dockerfile has no named stages)"
    );
}

#[test]
fn invalid_utf8() {
    let err = parse_bytes(b"FROM a\nLABEL x=\xff\n", "Dockerfile").expect_err("not UTF-8");
    assert_eq!(
        err.to_string(),
        "Dockerfile:2:9: the Dockerfile is not valid UTF-8"
    );
}

#[test]
fn snippets_underline_the_position() {
    let err = parse("FROM a\n\tCOPY --form=x a b\n", "Dockerfile")
        .and_then(|d| lower(&d, &LowerOptions::default(), &mut Images));
    let err = err.expect_err("bad flag");
    assert_eq!(
        err.snippet().as_deref(),
        Some("  |\n2 |  COPY --form=x a b\n  |       ^")
    );
}
