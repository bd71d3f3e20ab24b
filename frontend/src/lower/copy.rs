//! COPY and ADD: where the files come from (context, stage, image, URL, git,
//! heredoc), the destination, and the flags that apply to the copy.

use crate::ast::Word;
use crate::chmod::Chmod;
use crate::error::{Error, ErrorKind, Pos};
use crate::git_ref::{is_hex_commit, GitRef};
use crate::graph::{CopySource, CopyStep, InlineFile, Source};
use crate::instruction::{Command, CopyCommand};
use crate::paths;
use crate::shell::{EnvList, Lexer};

use super::expand::Expander;
use super::state::{LoweredStage, ResolveSource};

/// The step and its history entry.
pub(super) fn lower_copy(
    expander: &Expander,
    stage: &mut LoweredStage,
    command: &Command,
    copy: &CopyCommand,
    resolve_source: &mut ResolveSource,
) -> Result<(CopyStep, String), Error> {
    let source = expander.source;
    let keyword = command.keyword;
    let expanded = ExpandedCopy::new(expander, copy, &stage.state.env)?;
    let from = match &copy.from {
        None => Source::Context,
        Some(name) if name.text.contains('$') => {
            return Err(source.error(ErrorKind::FromWithVariable(name.text.clone()), name.pos))
        }
        Some(name) => resolve_source(stage, &name.text, name.pos)?,
    };
    let chmod = match (&copy.chmod, &expanded.chmod) {
        (Some(flag), Some(text)) => Some(Chmod::parse(text).map_err(|reason| {
            source.error(
                ErrorKind::InvalidChmod {
                    value: text.clone(),
                    reason,
                },
                flag.pos,
            )
        })?),
        _ => None,
    };
    let mut history = String::from(keyword.as_str());
    if copy.parents {
        history.push_str(" --parents");
    }
    if let Some(chown) = &expanded.chown {
        history.push_str(&format!(" --chown={chown}"));
    }
    if let Some(chmod) = &expanded.chmod {
        history.push_str(&format!(" --chmod={chmod}"));
    }
    let mut sources = Vec::with_capacity(expanded.sources.len() + expanded.inline.len());
    for (text, pos) in expanded.sources {
        history.push(' ');
        history.push_str(&text);
        let git = GitRef::parse(&text).map_err(|error| {
            source.error(
                ErrorKind::InvalidGitUrl {
                    url: text.clone(),
                    error,
                },
                pos,
            )
        })?;
        if let Some(git) = git {
            if !copy.is_add {
                return Err(source.error(ErrorKind::GitInCopy(keyword), pos));
            }
            check_git_options(&git, copy, expanded.checksum.as_deref())
                .map_err(|kind| source.error(kind, pos))?;
            sources.push(CopySource::Git(text));
        } else if is_http_url(&text) {
            if !copy.is_add {
                return Err(source.error(ErrorKind::UrlInCopy(keyword), pos));
            }
            sources.push(CopySource::Url(text));
        } else {
            if from == Source::Context && paths::escapes_root(&text) {
                return Err(source.error(ErrorKind::SourceOutsideContext(text), pos));
            }
            sources.push(CopySource::Path(text));
        }
    }
    for file in expanded.inline {
        history.push_str(&format!(" <<{}", file.path));
        sources.push(CopySource::Inline(file));
    }
    if let Some(checksum) = &expanded.checksum {
        let flag_pos = copy.checksum.as_ref().map_or(command.pos, |w| w.pos);
        match sources.as_slice() {
            [CopySource::Url(_)] => {}
            [CopySource::Git(_)] if is_hex_commit(checksum) => {}
            [CopySource::Git(_)] => {
                return Err(source.error(ErrorKind::InvalidGitChecksum(checksum.clone()), flag_pos))
            }
            _ => return Err(source.error(ErrorKind::ChecksumNeedsOneUrl, flag_pos)),
        }
        if matches!(sources.as_slice(), [CopySource::Url(_)]) && !valid_digest(checksum) {
            return Err(source.error(ErrorKind::InvalidChecksum(checksum.clone()), flag_pos));
        }
    }
    history.push_str(&format!(" {} # buildkit", expanded.dest));
    let step = CopyStep {
        from,
        sources,
        dest: paths::destination(stage.state.workdir(), &expanded.dest),
        chown: expanded.chown,
        chmod,
        link: copy.link,
        parents: copy.parents,
        exclude: expanded.exclude,
        // As BuildKit: ADD unpacks local archives unless told not to, and
        // downloaded ones only when told to.
        unpack: copy.is_add && copy.unpack != Some(false),
        unpack_downloads: copy.unpack == Some(true),
        checksum: expanded.checksum,
        keep_git_dir: copy.keep_git_dir,
    };
    Ok((step, history))
}

/// The values of a COPY or ADD with the stage's variables expanded.
struct ExpandedCopy {
    sources: Vec<(String, Pos)>,
    inline: Vec<InlineFile>,
    dest: String,
    chown: Option<String>,
    chmod: Option<String>,
    checksum: Option<String>,
    exclude: Vec<String>,
}

impl ExpandedCopy {
    fn new(expander: &Expander, copy: &CopyCommand, env: &EnvList) -> Result<Self, Error> {
        let word = |w: &Word| expander.word(w, env);
        let optional = |w: &Option<Word>| -> Result<Option<String>, Error> {
            match w {
                None => Ok(None),
                Some(w) => Ok(Some(word(w)?).filter(|text| !text.is_empty())),
            }
        };
        let mut inline = Vec::with_capacity(copy.inline_sources.len());
        for heredoc in &copy.inline_sources {
            let mut content = heredoc.effective_content();
            if heredoc.expand {
                // Heredoc content keeps its quotes: only variables expand.
                let mut raw = Lexer::new('\\');
                raw.skip_process_quotes = true;
                content = raw.process_word(&content, env).map_err(|error| {
                    expander.source.error(
                        ErrorKind::Expansion {
                            word: format!("<<{}", heredoc.name),
                            error,
                        },
                        copy.dest.pos,
                    )
                })?;
            }
            inline.push(InlineFile {
                path: heredoc.name.clone(),
                content,
                mode: 0o644,
            });
        }
        Ok(ExpandedCopy {
            sources: copy
                .sources
                .iter()
                .map(|w| Ok((word(w)?, w.pos)))
                .collect::<Result<_, Error>>()?,
            inline,
            dest: word(&copy.dest)?,
            chown: optional(&copy.chown)?,
            chmod: optional(&copy.chmod)?,
            checksum: optional(&copy.checksum)?,
            exclude: copy.exclude.iter().map(&word).collect::<Result<_, _>>()?,
        })
    }
}

fn is_http_url(text: &str) -> bool {
    (text.starts_with("http://") || text.starts_with("https://")) && !GitRef::is_git_url(text)
}

/// What the flags of an ADD of `git` must agree on with its URL's query, as
/// BuildKit checks it.
fn check_git_options(
    git: &GitRef,
    copy: &CopyCommand,
    checksum_flag: Option<&str>,
) -> Result<(), ErrorKind> {
    if let Some(query) = &git.checksum {
        if !is_hex_commit(query) {
            return Err(ErrorKind::InvalidGitChecksum(query.clone()));
        }
        if let Some(flag) = checksum_flag.filter(|flag| flag != query) {
            return Err(ErrorKind::GitChecksumMismatch {
                flag: flag.to_string(),
                query: query.clone(),
            });
        }
    }
    if copy.keep_git_dir && git.keep_git_dir == Some(false) {
        return Err(ErrorKind::InconsistentKeepGitDir);
    }
    Ok(())
}

fn valid_digest(text: &str) -> bool {
    let Some((algorithm, hex)) = text.split_once(':') else {
        return false;
    };
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == length
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_and_http_sources() {
        assert!(is_http_url("https://example.com/file.tar.gz"));
        assert!(!is_http_url("https://example.com/repo.git"));
        assert!(!is_http_url("github.com/moby/buildkit"));
    }

    #[test]
    fn digests() {
        assert!(valid_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!valid_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(!valid_digest("sha256:abc"));
        assert!(!valid_digest("md5:abc"));
    }
}
