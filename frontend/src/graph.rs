//! The build graph: what to build, with no Dockerfile syntax left in it.
//!
//! Stages are the nodes; a stage's `depends_on` lists every stage whose
//! result it reads (its base, `COPY --from`, `RUN --mount=from=`), so stages
//! that do not depend on each other can be built at the same time. Every
//! value is expanded and every path resolved.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::chmod::Chmod;
use crate::error::{Pos, Warning};
use crate::platform::Platform;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildGraph {
    /// The stages the target needs, in Dockerfile order.
    pub stages: Vec<Stage>,
    /// Index in `stages` of the stage whose result is the build's result.
    pub target: usize,
    pub build_platform: Platform,
    pub target_platform: Platform,
    /// The value of a global `ARG SOURCE_DATE_EPOCH`: the build's epoch
    /// unless the command line gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

impl BuildGraph {
    /// The ids of the cache mounts the build's RUN steps use.
    pub fn cache_mount_ids(&self) -> BTreeSet<&str> {
        self.stages
            .iter()
            .flat_map(|stage| &stage.steps)
            .filter_map(|step| match &step.action {
                Action::Run(run) => Some(&run.mounts),
                _ => None,
            })
            .flatten()
            .filter_map(|mount| match mount {
                Mount::Cache { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// Index of this stage in [`BuildGraph::stages`].
    pub id: usize,
    /// Position of its FROM among the Dockerfile's FROMs (what `--from=N` counts).
    pub index: usize,
    /// The name given with `AS` (lower-cased), or `stage-N`.
    pub name: String,
    pub location: Pos,
    pub platform: Platform,
    pub base: Base,
    pub steps: Vec<Step>,
    /// The image configuration after the stage's last instruction.
    pub config: ImageConfig,
    /// MAINTAINER, which images record outside their configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Stages this stage reads from, by id, ascending.
    pub depends_on: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Base {
    Scratch,
    Image { reference: String },
    Stage { stage: usize },
}

/// One instruction of a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub location: Pos,
    /// The instruction as progress output shows it, variables expanded.
    pub instruction: String,
    /// True for steps that come from an ONBUILD trigger of the base.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_onbuild: bool,
    /// The image history entry (`created_by`), when the step records one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<String>,
    /// BuildKit numbers it in the progress (`[stage 2/5]`): ADD, COPY, RUN
    /// and WORKDIR, a `WORKDIR /` too though it shows no step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub numbered: bool,
    pub action: Action,
}

impl Step {
    /// Whether the step adds a layer to the image.
    pub fn makes_layer(&self) -> bool {
        !matches!(self.action, Action::Metadata)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Action {
    Run(RunStep),
    Copy(CopyStep),
    /// Creates a directory (WORKDIR).
    Mkdir(MkdirStep),
    /// Changes only the image configuration.
    Metadata,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStep {
    /// The process to run; shell-form commands already have the shell in front.
    pub args: Vec<String>,
    /// `KEY=VALUE`, the image's variables plus ENV and ARG values in scope.
    pub env: Vec<String>,
    /// Proxy variables from `--build-arg`; passed to the process but kept out
    /// of history and cache keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_env: Vec<String>,
    /// `user[:group]`; empty means root.
    pub user: String,
    pub workdir: String,
    pub network: Network,
    pub security: Security,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Files made available read-only to the process (a heredoc script with a
    /// shebang is run from one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inline_files: Vec<InlineFile>,
}

/// The network a RUN step's process is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's.
    Host,
    /// Only a loopback interface of its own.
    None,
}

/// The privileges of a RUN step's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Docker's default capabilities and devices.
    Sandbox,
    /// Every capability and device kiln has (`--security=insecure`, which
    /// the caller must allow).
    Insecure,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineFile {
    pub path: String,
    pub content: String,
    pub mode: u32,
}

/// Where files are read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// The build context.
    Context,
    /// The result of another stage, by id.
    Stage { stage: usize },
    /// An image that is not a stage of this Dockerfile.
    Image { reference: String },
    /// A build context given by name (`--build-context NAME=DIR`).
    NamedContext { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Mount {
    Bind {
        target: String,
        from: Source,
        /// Absolute path inside the source.
        source: String,
        readonly: bool,
    },
    Cache {
        target: String,
        id: String,
        sharing: Sharing,
        /// Initial content; none means an empty directory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<Source>,
        source: String,
        readonly: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Tmpfs {
        target: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    Secret {
        id: String,
        /// Where the secret file appears; none when it is only exposed as a
        /// variable.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        env: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Ssh {
        id: String,
        target: String,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyStep {
    /// Where `Path` sources are read from.
    pub from: Source,
    pub sources: Vec<CopySource>,
    /// Absolute; ends with `/` when the destination was written as a directory.
    pub dest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chown: Option<String>,
    /// Applied to each copied entry; see [`Chmod`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chmod: Option<Chmod>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parents: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// ADD: local archives are unpacked (unless `--unpack=false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unpack: bool,
    /// ADD `--unpack=true`: downloaded archives are unpacked too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unpack_downloads: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_git_dir: bool,
}

impl CopyStep {
    /// A COPY of `sources` (paths of `from`) to `dest` without any flag.
    pub fn plain(from: Source, sources: &[&str], dest: &str) -> CopyStep {
        CopyStep {
            from,
            sources: sources
                .iter()
                .map(|source| CopySource::Path(source.to_string()))
                .collect(),
            dest: dest.to_string(),
            chown: None,
            chmod: None,
            link: false,
            parents: false,
            exclude: Vec::new(),
            unpack: false,
            unpack_downloads: false,
            checksum: None,
            keep_git_dir: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum CopySource {
    /// A path or wildcard pattern, relative to the source's root.
    Path(String),
    /// An http(s) URL (ADD only).
    Url(String),
    /// A git repository (ADD only).
    Git(String),
    /// A heredoc written as a file.
    Inline(InlineFile),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkdirStep {
    pub path: String,
    pub mode: u32,
    /// Owner as `user[:group]`; empty means root.
    pub user: String,
}

/// The runtime configuration of an image, with the field names and shapes of
/// the `config` object of a Docker/OCI image configuration, including the
/// Docker fields the OCI specification leaves out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(
        default,
        skip_serializing_if = "BTreeSet::is_empty",
        serialize_with = "set_as_object",
        deserialize_with = "object_as_set"
    )]
    pub exposed_ports: BTreeSet<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "is_none_or_empty")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "is_none_or_empty")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "BTreeSet::is_empty",
        serialize_with = "set_as_object",
        deserialize_with = "object_as_set"
    )]
    pub volumes: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_escaped: bool,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub shell: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub on_build: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    /// Durations in nanoseconds; zero inherits the default.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// Docker writes sets (ports, volumes) as objects with empty values.
fn set_as_object<S: Serializer>(set: &BTreeSet<String>, serializer: S) -> Result<S::Ok, S::Error> {
    let map: BTreeMap<&str, BTreeMap<(), ()>> =
        set.iter().map(|k| (k.as_str(), BTreeMap::new())).collect();
    map.serialize(serializer)
}

fn object_as_set<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeSet<String>, D::Error> {
    let map: Option<BTreeMap<String, serde::de::IgnoredAny>> = Option::deserialize(deserializer)?;
    Ok(map.map(|m| m.into_keys().collect()).unwrap_or_default())
}

/// Image configurations write absent lists and maps as `null`.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Docker leaves out an empty CMD or ENTRYPOINT (`CMD []`), which means the
/// same as none.
fn is_none_or_empty(value: &Option<Vec<String>>) -> bool {
    value.as_ref().is_none_or(Vec::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_config_reads_and_writes_docker_json() {
        let json = r#"{
            "User": "app",
            "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
            "Env": ["PATH=/bin"],
            "Entrypoint": null,
            "Cmd": ["sh"],
            "Volumes": {"/data": {}},
            "WorkingDir": "/srv",
            "Labels": null,
            "OnBuild": ["RUN x"],
            "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 30000000000},
            "Hostname": "ignored"
        }"#;
        let config: ImageConfig = serde_json::from_str(json).expect("valid config");
        assert_eq!(config.user, "app");
        assert_eq!(
            config.exposed_ports.iter().collect::<Vec<_>>(),
            ["53/udp", "80/tcp"]
        );
        assert_eq!(config.entrypoint, None);
        assert_eq!(config.cmd.as_deref(), Some(&["sh".to_string()][..]));
        assert!(config.labels.is_empty());
        assert_eq!(config.on_build, ["RUN x"]);
        assert_eq!(
            config.healthcheck.as_ref().map(|h| h.interval),
            Some(30_000_000_000)
        );
        let written = serde_json::to_string(&config).expect("serialises");
        assert_eq!(
            written,
            r#"{"User":"app","ExposedPorts":{"53/udp":{},"80/tcp":{}},"Env":["PATH=/bin"],"Cmd":["sh"],"Volumes":{"/data":{}},"WorkingDir":"/srv","Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":30000000000},"OnBuild":["RUN x"]}"#
        );
    }
}
