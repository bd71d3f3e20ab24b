//! What stages and steps produce: a stage's layers, history and
//! configuration (and the image file they make), and how each step went.

use kiln_cache::Digest;
use kiln_frontend::graph::ImageConfig;
use kiln_frontend::Platform;

use crate::image::{rfc3339, History, ImageFile, Layer, RootFs};
use crate::schedule::Finished;

/// BuildKit marks the history entries it writes with this comment.
const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// The outputs of a build's stages, each set once the stage is built.
pub type Outputs = Finished<StageOutput>;

/// How a step went, for `--metadata-file`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    pub stage: String,
    pub step: String,
    /// Line in the Dockerfile.
    pub line: usize,
    pub key: String,
    pub cached: bool,
    /// `--explain`: why the step missed the cache.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub explain: Vec<String>,
    /// Milliseconds from the start of the build to the step's start and end.
    pub started_ms: u64,
    pub ended_ms: u64,
    pub duration_ms: u64,
}

/// What a stage produced.
#[derive(Debug, Clone)]
pub struct StageOutput {
    /// The cache key of the stage's file system.
    pub key: Digest,
    pub layers: Vec<Layer>,
    pub history: Vec<History>,
    pub config: ImageConfig,
    pub author: Option<String>,
    pub platform: Platform,
}

impl StageOutput {
    /// The image configuration file of this stage's result. Its time is
    /// SOURCE_DATE_EPOCH when set; otherwise it and the times of history
    /// entries that made no layer come from the layers' (so that a build
    /// from the cache makes the same image), or else are `now`.
    pub fn image_file(&self, source_date_epoch: Option<i64>, now: i64) -> ImageFile {
        let mut history = self.history.clone();
        fill_history_times(&mut history);
        let created = match source_date_epoch {
            Some(epoch) => rfc3339(epoch),
            None => history
                .iter()
                .rev()
                .find_map(|entry| entry.created.clone())
                .unwrap_or_else(|| rfc3339(now)),
        };
        ImageFile {
            created: Some(created),
            author: self.author.clone(),
            architecture: self.platform.architecture.clone(),
            os: self.platform.os.clone(),
            variant: Some(self.platform.variant.clone()).filter(|v| !v.is_empty()),
            config: self.config.clone(),
            rootfs: RootFs {
                kind: "layers".to_string(),
                diff_ids: self.layers.iter().map(|l| l.diff_id).collect(),
            },
            history,
            inline_cache: None,
        }
    }
}

/// A history entry of a Dockerfile instruction, dated when it made a
/// layer (the others are dated when the image is assembled).
pub(crate) fn history(created_by: &str, empty_layer: bool, created: Option<i64>) -> History {
    History {
        created: created.map(rfc3339),
        created_by: Some(created_by.to_string()),
        comment: Some(HISTORY_COMMENT.to_string()),
        empty_layer,
    }
}

/// Dates the history entries that have no time as BuildKit does: those
/// before the first layer this build made take that layer's time, later
/// ones the time of the layer before them.
fn fill_history_times(history: &mut [History]) {
    let mut time = None;
    let mut undated_seen = false;
    for entry in history.iter() {
        match &entry.created {
            Some(created) => {
                time = Some(created.clone());
                if undated_seen {
                    break;
                }
            }
            None => undated_seen = true,
        }
    }
    undated_seen = false;
    for entry in history.iter_mut() {
        match &entry.created {
            Some(created) if undated_seen => time = Some(created.clone()),
            Some(_) => {}
            None => {
                undated_seen = true;
                entry.created = time.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(created: Option<&str>) -> History {
        History {
            created: created.map(str::to_string),
            created_by: None,
            comment: None,
            empty_layer: created.is_none(),
        }
    }

    #[test]
    fn undated_history_takes_the_times_of_the_layers_around_it() {
        // Base image, LABEL, COPY, ENV, RUN, EXPOSE.
        let mut history = vec![
            entry(Some("base")),
            entry(None),
            entry(Some("copy")),
            entry(None),
            entry(Some("run")),
            entry(None),
        ];
        fill_history_times(&mut history);
        let times: Vec<_> = history.iter().map(|h| h.created.as_deref()).collect();
        assert_eq!(
            times,
            [
                Some("base"),
                Some("copy"),
                Some("copy"),
                Some("copy"),
                Some("run"),
                Some("run")
            ]
        );
    }

    #[test]
    fn an_image_without_new_layers_is_dated_by_its_base() {
        let mut history = vec![entry(Some("one")), entry(Some("two")), entry(None)];
        fill_history_times(&mut history);
        assert_eq!(history[2].created.as_deref(), Some("two"));
    }
}
