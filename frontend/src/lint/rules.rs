//! The build checks by name: BuildKit's rule set, with what each one is
//! about. The names are BuildKit's, so that `# check=skip=` lines and
//! `BUILDKIT_DOCKERFILE_CHECK` written for BuildKit work unchanged.

use serde::Serialize;

/// One build check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    StageNameCasing,
    FromAsCasing,
    NoEmptyContinuation,
    ConsistentInstructionCasing,
    DuplicateStageName,
    ReservedStageName,
    JsonArgsRecommended,
    MaintainerDeprecated,
    UndefinedArgInFrom,
    WorkdirRelativePath,
    UndefinedVar,
    MultipleInstructionsDisallowed,
    LegacyKeyValueFormat,
    InvalidBaseImagePlatform,
    RedundantTargetPlatform,
    SecretsUsedInArgOrEnv,
    InvalidDefaultArgInFrom,
    FromPlatformFlagConstDisallowed,
    CopyIgnoredFile,
    InvalidDefinitionDescription,
    ExposeProtoCasing,
    ExposeInvalidFormat,
}

impl Rule {
    pub const ALL: [Rule; 22] = [
        Rule::StageNameCasing,
        Rule::FromAsCasing,
        Rule::NoEmptyContinuation,
        Rule::ConsistentInstructionCasing,
        Rule::DuplicateStageName,
        Rule::ReservedStageName,
        Rule::JsonArgsRecommended,
        Rule::MaintainerDeprecated,
        Rule::UndefinedArgInFrom,
        Rule::WorkdirRelativePath,
        Rule::UndefinedVar,
        Rule::MultipleInstructionsDisallowed,
        Rule::LegacyKeyValueFormat,
        Rule::InvalidBaseImagePlatform,
        Rule::RedundantTargetPlatform,
        Rule::SecretsUsedInArgOrEnv,
        Rule::InvalidDefaultArgInFrom,
        Rule::FromPlatformFlagConstDisallowed,
        Rule::CopyIgnoredFile,
        Rule::InvalidDefinitionDescription,
        Rule::ExposeProtoCasing,
        Rule::ExposeInvalidFormat,
    ];

    /// The rule's name, as `# check=skip=` and the output spell it.
    pub fn name(self) -> &'static str {
        match self {
            Rule::StageNameCasing => "StageNameCasing",
            Rule::FromAsCasing => "FromAsCasing",
            Rule::NoEmptyContinuation => "NoEmptyContinuation",
            Rule::ConsistentInstructionCasing => "ConsistentInstructionCasing",
            Rule::DuplicateStageName => "DuplicateStageName",
            Rule::ReservedStageName => "ReservedStageName",
            Rule::JsonArgsRecommended => "JSONArgsRecommended",
            Rule::MaintainerDeprecated => "MaintainerDeprecated",
            Rule::UndefinedArgInFrom => "UndefinedArgInFrom",
            Rule::WorkdirRelativePath => "WorkdirRelativePath",
            Rule::UndefinedVar => "UndefinedVar",
            Rule::MultipleInstructionsDisallowed => "MultipleInstructionsDisallowed",
            Rule::LegacyKeyValueFormat => "LegacyKeyValueFormat",
            Rule::InvalidBaseImagePlatform => "InvalidBaseImagePlatform",
            Rule::RedundantTargetPlatform => "RedundantTargetPlatform",
            Rule::SecretsUsedInArgOrEnv => "SecretsUsedInArgOrEnv",
            Rule::InvalidDefaultArgInFrom => "InvalidDefaultArgInFrom",
            Rule::FromPlatformFlagConstDisallowed => "FromPlatformFlagConstDisallowed",
            Rule::CopyIgnoredFile => "CopyIgnoredFile",
            Rule::InvalidDefinitionDescription => "InvalidDefinitionDescription",
            Rule::ExposeProtoCasing => "ExposeProtoCasing",
            Rule::ExposeInvalidFormat => "ExposeInvalidFormat",
        }
    }

    /// What the rule asks of a Dockerfile, in a sentence.
    pub fn description(self) -> &'static str {
        match self {
            Rule::StageNameCasing => "Stage names should be written in lower case",
            Rule::FromAsCasing => "The AS keyword should be cased like its FROM",
            Rule::NoEmptyContinuation => {
                "An instruction continued over several lines should have no empty line in it"
            }
            Rule::ConsistentInstructionCasing => {
                "Instructions should all be upper case or all lower case"
            }
            Rule::DuplicateStageName => "Each stage should have a name of its own",
            Rule::ReservedStageName => {
                "Stages should not be named after the reserved names scratch and context"
            }
            Rule::JsonArgsRecommended => {
                "CMD and ENTRYPOINT should use the JSON (exec) form, so that the program receives signals"
            }
            Rule::MaintainerDeprecated => {
                "MAINTAINER is deprecated: name the author with a label instead"
            }
            Rule::UndefinedArgInFrom => "FROM should only use ARGs declared before the first stage",
            Rule::WorkdirRelativePath => {
                "A relative WORKDIR depends on the base image's working directory until an absolute one is set"
            }
            Rule::UndefinedVar => "Variables should be defined before they are used",
            Rule::MultipleInstructionsDisallowed => {
                "A stage should not repeat CMD, ENTRYPOINT or HEALTHCHECK: only the last one counts"
            }
            Rule::LegacyKeyValueFormat => {
                "ENV and LABEL should use key=value, not the legacy space-separated form"
            }
            Rule::InvalidBaseImagePlatform => {
                "The base image should have the platform the build is for"
            }
            Rule::RedundantTargetPlatform => {
                "FROM --platform=$TARGETPLATFORM says what FROM does anyway"
            }
            Rule::SecretsUsedInArgOrEnv => {
                "Secrets should not be passed in ARG or ENV, which the image keeps: use secret mounts"
            }
            Rule::InvalidDefaultArgInFrom => {
                "The defaults of global ARGs should make a valid base image name"
            }
            Rule::FromPlatformFlagConstDisallowed => {
                "FROM --platform should not be a constant unless the stage is named for that platform"
            }
            Rule::CopyIgnoredFile => {
                "COPY and ADD should not name files that .dockerignore leaves out of the context"
            }
            Rule::InvalidDefinitionDescription => {
                "A comment just above an ARG or a named FROM should start with the name it describes"
            }
            Rule::ExposeProtoCasing => "EXPOSE protocols should be lower case",
            Rule::ExposeInvalidFormat => {
                "EXPOSE should name container ports only, without an IP address or host port"
            }
        }
    }

    /// Experimental rules only run when `# check=experimental=` names them.
    pub fn experimental(self) -> bool {
        self == Rule::InvalidDefinitionDescription
    }

    /// The rule named `name`, as written in BuildKit's rule set.
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|rule| rule.name() == name)
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for rule in Rule::ALL {
            assert_eq!(Rule::from_name(rule.name()), Some(rule));
            assert!(!rule.description().contains("http"), "no links");
        }
        assert_eq!(
            Rule::from_name("JSONArgsRecommended"),
            Some(Rule::JsonArgsRecommended)
        );
    }
}
