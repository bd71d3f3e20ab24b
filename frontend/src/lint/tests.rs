//! One test per rule: a Dockerfile that breaks it, one that does not, and
//! the skip comment that silences it.

use super::*;
use crate::lower::UnknownImages;

fn findings_with(
    text: &str,
    options: &LowerOptions,
    scope: Scope,
    ignore: &DockerIgnore,
) -> Vec<String> {
    let dockerfile = crate::parse(text, "Dockerfile").expect("parses");
    check(&dockerfile, options, scope, ignore, &mut UnknownImages)
        .expect("checks")
        .findings
        .iter()
        .map(Finding::short)
        .collect()
}

fn findings(text: &str) -> Vec<String> {
    findings_with(
        text,
        &LowerOptions::default(),
        Scope::AllStages,
        &DockerIgnore::none(),
    )
}

/// For each rule: a Dockerfile that breaks it and what is reported, and
/// one like it that does not.
const CASES: &[(Rule, &str, &str, &str)] = &[
    (
        Rule::StageNameCasing,
        "FROM scratch AS Build\n",
        "StageNameCasing: Stage name 'Build' should be lowercase (line 1)",
        "FROM scratch AS build\n",
    ),
    (
        Rule::FromAsCasing,
        "FROM scratch as build\n",
        "FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)",
        "from scratch as build\n",
    ),
    (
        Rule::NoEmptyContinuation,
        "FROM scratch\nCOPY a \\\n\n  b\n",
        "NoEmptyContinuation: Empty continuation line (line 4)",
        "FROM scratch\nCOPY a \\\n  b\n",
    ),
    (
        Rule::ConsistentInstructionCasing,
        "FROM scratch\nCOPY a b\ncopy c d\n",
        "ConsistentInstructionCasing: Command 'copy' should match the case of the command majority (uppercase) (line 3)",
        "from scratch\ncopy a b\n",
    ),
    (
        Rule::DuplicateStageName,
        "FROM scratch AS a\nFROM scratch AS a\n",
        "DuplicateStageName: Duplicate stage name \"a\", stage names should be unique (line 2)",
        "FROM scratch AS a\nFROM scratch AS b\n",
    ),
    (
        Rule::ReservedStageName,
        "FROM scratch AS context\n",
        "ReservedStageName: Stage name should not use the same name as reserved stage \"context\" (line 1)",
        "FROM scratch AS ctx\n",
    ),
    (
        Rule::JsonArgsRecommended,
        "FROM scratch\nCMD run me\n",
        "JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 2)",
        "FROM scratch AS base\nSHELL [\"/bin/ash\", \"-c\"]\nFROM base\nCMD run me\n",
    ),
    (
        Rule::MaintainerDeprecated,
        "FROM scratch\nMAINTAINER me\n",
        "MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label (line 2)",
        "FROM scratch\nLABEL org.opencontainers.image.authors=me\n",
    ),
    (
        Rule::UndefinedArgInFrom,
        "ARG MY_TAG=1\nFROM busybox:${MYTAG}\n",
        "UndefinedArgInFrom: FROM argument 'MYTAG' is not declared (did you mean MY_TAG?) (line 2)",
        "ARG MY_TAG=1\nFROM --platform=$BUILDPLATFORM busybox:${MY_TAG}\n",
    ),
    (
        Rule::WorkdirRelativePath,
        "FROM scratch\nWORKDIR app\n",
        "WorkdirRelativePath: Relative workdir \"app\" can have unexpected results if the base image changes (line 2)",
        "FROM scratch AS a\nWORKDIR /app\nFROM a\nWORKDIR sub\n",
    ),
    (
        Rule::UndefinedVar,
        "FROM scratch\nARG DIR_ASSETS=a\nCOPY $DIR_ASSET .\n",
        "UndefinedVar: Usage of undefined variable '$DIR_ASSET' (did you mean $DIR_ASSETS?) (line 3)",
        "FROM scratch AS a\nARG foo=x\nFROM a\nCOPY $foo .\nRUN echo $undefined_in_run_is_fine\n",
    ),
    (
        Rule::MultipleInstructionsDisallowed,
        "FROM scratch\nCMD [\"a\"]\nCMD [\"b\"]\n",
        "MultipleInstructionsDisallowed: Multiple CMD instructions should not be used in the same stage because only the last one will be used (line 2)",
        "FROM scratch AS a\nCMD [\"a\"]\nFROM a\nCMD [\"b\"]\n",
    ),
    (
        Rule::LegacyKeyValueFormat,
        "FROM scratch\nENV key value\n",
        "LegacyKeyValueFormat: \"ENV key=value\" should be used instead of legacy \"ENV key value\" format (line 2)",
        "FROM scratch\nENV key=value\n",
    ),
    (
        Rule::RedundantTargetPlatform,
        "FROM --platform=${TARGETPLATFORM} scratch\n",
        "RedundantTargetPlatform: Setting platform to predefined ${TARGETPLATFORM} in FROM is redundant as this is the default behavior (line 1)",
        "FROM --platform=$BUILDPLATFORM scratch\n",
    ),
    (
        Rule::SecretsUsedInArgOrEnv,
        "FROM scratch\nARG GITHUB_TOKEN\n",
        "SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ARG \"GITHUB_TOKEN\") (line 2)",
        "FROM scratch\nARG PUBLIC_KEY\nARG PASSWORD_FILE\nARG TOKENIZER\n",
    ),
    (
        Rule::InvalidDefaultArgInFrom,
        "ARG TAG\nFROM busybox:$TAG\n",
        "InvalidDefaultArgInFrom: Default value for ARG busybox:$TAG results in empty or invalid base image name (line 2)",
        "ARG TAG=latest\nFROM busybox:$TAG\n",
    ),
    (
        Rule::FromPlatformFlagConstDisallowed,
        "FROM --platform=linux/arm64 scratch AS build\n",
        "FromPlatformFlagConstDisallowed: FROM --platform flag should not use constant value \"linux/arm64\" (line 1)",
        "FROM --platform=linux/arm64 scratch AS build_arm64\n",
    ),
    (
        Rule::ExposeProtoCasing,
        "FROM scratch\nEXPOSE 80/UDP\n",
        "ExposeProtoCasing: Defined protocol '80/UDP' in EXPOSE instruction should be lowercase (line 2)",
        "FROM scratch\nEXPOSE 80/udp\n",
    ),
    (
        Rule::ExposeInvalidFormat,
        "FROM scratch\nEXPOSE 8080:80\n",
        "ExposeInvalidFormat: EXPOSE instruction should not define an IP address or host-port mapping, found '8080:80' (line 2)",
        "FROM scratch\nEXPOSE 80\n",
    ),
];

#[test]
fn each_rule_reports_what_breaks_it_and_only_that() {
    for (rule, broken, expected, fine) in CASES {
        let found = findings(broken);
        assert!(
            found.iter().any(|f| f == expected),
            "{}: expected {expected:?}, found {found:?}",
            rule.name()
        );
        let found = findings(fine);
        assert!(
            !found
                .iter()
                .any(|f| f.starts_with(&format!("{}:", rule.name()))),
            "{}: nothing expected in {fine:?}, found {found:?}",
            rule.name()
        );
    }
}

#[test]
fn each_rule_is_skipped_by_the_directive_and_by_a_comment() {
    for (rule, broken, _, _) in CASES {
        let name = rule.name();
        let directive = format!("# check=skip={name}\n{broken}");
        let found = findings(&directive);
        assert!(
            !found.iter().any(|f| f.starts_with(&format!("{name}:"))),
            "{name} skipped by the directive, found {found:?}"
        );
        let skip_all = format!("# check=skip=all\n{broken}");
        assert_eq!(findings(&skip_all), Vec::<String>::new());
    }
}

#[test]
fn a_comment_skips_a_rule_for_its_instruction_only() {
    let text = "FROM scratch\n\
                # check=skip=LegacyKeyValueFormat // wanted here\n\
                ENV a b\n\
                ENV c d\n";
    assert_eq!(
        findings(text),
        ["LegacyKeyValueFormat: \"ENV key=value\" should be used instead of legacy \"ENV key value\" format (line 4)"]
    );
}

#[test]
fn the_build_argument_replaces_the_directive() {
    let text = "# check=skip=all\nFROM scratch as base\n";
    let mut options = LowerOptions::default();
    options
        .build_args
        .insert(CHECK_BUILD_ARG.to_string(), "error=true".to_string());
    let dockerfile = crate::parse(text, "Dockerfile").expect("parses");
    let report = check(
        &dockerfile,
        &options,
        Scope::AllStages,
        &DockerIgnore::none(),
        &mut UnknownImages,
    )
    .expect("checks");
    assert_eq!(report.findings.len(), 1);
    let error = report
        .violation(&dockerfile.source)
        .expect("error=true fails");
    assert_eq!(
        error.to_string(),
        "Dockerfile:2:1: lint violation found for rules: FromAsCasing (the check directive or BUILDKIT_DOCKERFILE_CHECK says error=true)"
    );
}

#[test]
fn a_build_checks_only_the_stages_its_target_needs() {
    let text = "FROM scratch AS first\nCOPY $foo .\nFROM scratch AS second\nCOPY $bar .\n";
    let build = findings_with(
        text,
        &LowerOptions::default(),
        Scope::Target,
        &DockerIgnore::none(),
    );
    assert_eq!(
        build,
        ["UndefinedVar: Usage of undefined variable '$bar' (line 4)"]
    );
    assert_eq!(findings(text).len(), 2);
}

#[test]
fn copy_of_an_ignored_file() {
    let ignore = DockerIgnore::parse("secret.txt\n*\n", ".dockerignore").expect("valid");
    let text = "FROM scratch\nCOPY ./secret.txt .\nADD . /all\nCOPY --from=busybox /secret.txt /\n";
    let found = findings_with(text, &LowerOptions::default(), Scope::AllStages, &ignore);
    assert_eq!(
        found,
        [
            "CopyIgnoredFile: Attempting to Copy file \"secret.txt\" that is excluded by .dockerignore (line 2)",
            "CopyIgnoredFile: Attempting to Add file \".\" that is excluded by .dockerignore (line 3)",
        ]
    );
    let skipped = format!("# check=skip=CopyIgnoredFile\n{text}");
    assert!(findings_with(
        &skipped,
        &LowerOptions::default(),
        Scope::AllStages,
        &ignore
    )
    .is_empty());
    let with_exception = DockerIgnore::parse("*\n!keep\n", ".dockerignore").expect("valid");
    assert!(findings_with(
        text,
        &LowerOptions::default(),
        Scope::AllStages,
        &with_exception
    )
    .is_empty());
}

#[test]
fn definition_descriptions_are_experimental() {
    let text = "# bar is something else\nARG foo=1\nFROM scratch\n";
    assert!(findings(text).is_empty());
    let experimental = format!("# check=experimental=InvalidDefinitionDescription\n{text}");
    assert_eq!(
        findings(&experimental),
        ["InvalidDefinitionDescription: Comment for ARG should follow the format: `# foo <description>` (line 3)"]
    );
}

#[test]
fn skipping_does_not_apply_to_experimental_rules_asked_for() {
    let text = "# check=skip=all;experimental=InvalidDefinitionDescription\n\
                # bar is something else\n\
                ARG foo=1\n\
                FROM scratch AS Base\n";
    assert_eq!(
        findings(text),
        ["InvalidDefinitionDescription: Comment for ARG should follow the format: `# foo <description>` (line 3)"],
        "as in BuildKit, skip= is for the other rules"
    );
}

#[test]
fn invalid_check_options_are_errors() {
    assert!(CheckConfig::parse("skip=all;error=maybe").is_err());
    assert!(CheckConfig::parse("bogus=1").is_err());
    let config = CheckConfig::parse(" skip = A, B ; error=true").expect("valid");
    assert!(config.error);
    assert_eq!(config.skip.len(), 2);
}

#[test]
fn an_invalid_directive_points_at_its_line() {
    let dockerfile = crate::parse(
        "# syntax=docker/dockerfile:1\n# check=skip\nFROM scratch\n",
        "Dockerfile",
    )
    .expect("parses");
    let error = check(
        &dockerfile,
        &LowerOptions::default(),
        Scope::AllStages,
        &DockerIgnore::none(),
        &mut UnknownImages,
    )
    .expect_err("invalid");
    assert_eq!(
        error.to_string(),
        "Dockerfile:2:1: invalid check directive: invalid check option \"skip\": expected skip=, error= or experimental="
    );
}
