//! What the caller of the lowering decides and provides: the target, build
//! arguments, platforms, entitlements, and the base images.

use std::collections::BTreeMap;

use crate::graph::{ImageConfig, Network};
use crate::platform::Platform;

/// Build arguments that are passed to RUN without an ARG declaration, and
/// never recorded in history or cache keys.
const PROXY_ARGS: [&str; 5] = [
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "no_proxy",
    "all_proxy",
];

/// What the caller decides about a build.
#[derive(Debug, Clone)]
pub struct LowerOptions {
    /// The stage to build; the last stage when absent.
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub build_platform: Platform,
    pub target_platform: Platform,
    /// Labels added to the target stage's image.
    pub labels: BTreeMap<String, String>,
    /// Whether `RUN --security=insecure` is allowed.
    pub allow_insecure: bool,
    /// The network of RUN steps without `--network` (or with
    /// `--network=default`): the build's `--network`.
    pub default_network: Network,
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions {
            target: None,
            build_args: BTreeMap::new(),
            build_platform: Platform::host(),
            target_platform: Platform::host(),
            labels: BTreeMap::new(),
            allow_insecure: false,
            default_network: Network::Host,
        }
    }
}

impl LowerOptions {
    /// The proxy build arguments as RUN passes them, each under its upper-
    /// and lower-case name.
    pub(super) fn proxy_env(&self) -> Vec<String> {
        self.build_args
            .iter()
            .filter(|(k, _)| is_proxy_arg(k))
            .flat_map(|(k, v)| {
                [
                    format!("{}={v}", k.to_ascii_uppercase()),
                    format!("{}={v}", k.to_ascii_lowercase()),
                ]
            })
            .collect()
    }

    /// The build arguments every Dockerfile has, with their values before
    /// `--build-arg`: the platforms and TARGETSTAGE, the target or else
    /// the last stage (`last_stage`, BuildKit's `default` when unnamed).
    pub(crate) fn predefined_args(&self, last_stage: Option<&str>) -> [(&'static str, String); 11] {
        let build = &self.build_platform;
        let target = &self.target_platform;
        let target_stage = match &self.target {
            Some(name) => name.to_lowercase(),
            None => last_stage.unwrap_or("default").to_string(),
        };
        [
            ("BUILDPLATFORM", build.to_string()),
            ("BUILDOS", build.os.clone()),
            ("BUILDOSVERSION", String::new()),
            ("BUILDARCH", build.architecture.clone()),
            ("BUILDVARIANT", build.variant.clone()),
            ("TARGETPLATFORM", target.to_string()),
            ("TARGETOS", target.os.clone()),
            ("TARGETOSVERSION", String::new()),
            ("TARGETARCH", target.architecture.clone()),
            ("TARGETVARIANT", target.variant.clone()),
            ("TARGETSTAGE", target_stage),
        ]
    }
}

pub(super) fn is_proxy_arg(name: &str) -> bool {
    PROXY_ARGS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// A base image as the builder found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The reference to build from, pinned to a digest when the builder knows it.
    pub reference: String,
    pub config: ImageConfig,
}

/// What a build context given by name (`--build-context NAME=VALUE`) gives
/// a stage or a step in place of a stage or image of that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// An image (`docker-image://`, `oci-layout://`), resolved like a base
    /// image: its files and its configuration.
    Image(Box<ResolvedImage>),
    /// `docker-image://scratch`: nothing.
    Scratch,
    /// Files (a directory, a downloaded archive): steps read them as
    /// [`Source::NamedContext`](crate::graph::Source::NamedContext) of this
    /// name, and a stage built on them starts with them at its root.
    Files { name: String },
}

/// Looks up the configuration of base images, and the build contexts given
/// by name. Only the images and contexts of stages the target needs are
/// asked for.
pub trait BaseImages {
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String>;

    /// The build context given for `name` (a stage name, or an image
    /// reference as written), if any, for a stage of `platform`.
    fn named_context(
        &mut self,
        _name: &str,
        _platform: &Platform,
    ) -> Result<Option<NamedContext>, String> {
        Ok(None)
    }

    /// Told, before any `resolve`, the images a lowering will ask for, so
    /// that an implementation may look them all up at once.
    fn prefetch(&mut self, _wanted: &[(String, Platform)]) {}
}

/// Answers every image with an empty configuration and remembers what was
/// asked: the images a lowering needs, found without any lookup (but those
/// a base image's ONBUILD would name).
#[derive(Default)]
pub struct ImagesAsked {
    pub asked: Vec<(String, Platform)>,
}

impl BaseImages for ImagesAsked {
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        let wanted = (reference.to_string(), platform.clone());
        if !self.asked.contains(&wanted) {
            self.asked.push(wanted);
        }
        UnknownImages.resolve(reference, platform)
    }
}

/// Treats every base image as having an empty configuration, for looking at
/// a graph without a store or registry at hand.
pub struct UnknownImages;

impl BaseImages for UnknownImages {
    fn resolve(&mut self, reference: &str, _platform: &Platform) -> Result<ResolvedImage, String> {
        Ok(ResolvedImage {
            reference: reference.to_string(),
            config: ImageConfig::default(),
        })
    }
}
