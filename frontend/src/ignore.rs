//! `.dockerignore` files with Docker's semantics: patterns are matched
//! against the whole path relative to the context (`*` does not cross `/`,
//! `**` does), a path is also excluded when one of its parent directories
//! is, `!` re-includes, and the last matching line wins.

use std::path::{Path, PathBuf};

use crate::ast::Source;
use crate::error::{Error, ErrorKind, Pos};
use crate::paths;
use crate::pattern::PathPattern;

/// The parsed ignore rules of a build context.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    file: Option<PathBuf>,
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern, without its `!`.
    text: String,
    exclusion: bool,
    matcher: PathPattern,
}

impl DockerIgnore {
    /// Rules that exclude nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Finds and reads the ignore file of a build: `<Dockerfile>.dockerignore`
    /// next to the Dockerfile when it exists, `.dockerignore` at the root of
    /// the context otherwise. No file means no rules.
    pub fn load(dockerfile: &Path, context: &Path) -> Result<Self, Error> {
        let mut beside_dockerfile = dockerfile.as_os_str().to_owned();
        beside_dockerfile.push(".dockerignore");
        for candidate in [
            PathBuf::from(beside_dockerfile),
            context.join(".dockerignore"),
        ] {
            match std::fs::read(&candidate) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    let mut rules = Self::parse(&text, &candidate.display().to_string())?;
                    rules.file = Some(candidate);
                    return Ok(rules);
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(Error::new(ErrorKind::Read {
                        path: candidate.display().to_string(),
                        message: err.to_string(),
                    }))
                }
            }
        }
        Ok(Self::none())
    }

    /// Parses ignore-file text; `name` is used in error messages.
    pub fn parse(text: &str, name: &str) -> Result<Self, Error> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let source = Source::new(name, text);
        let mut patterns = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            let column = line.len() - line.trim_start().len() + 1;
            let pos = Pos::new(index + 1, column);
            let exclusion = pattern.starts_with('!');
            if exclusion {
                pattern = pattern[1..].trim();
                if pattern.is_empty() {
                    return Err(source.error(
                        ErrorKind::InvalidIgnorePattern {
                            pattern: line.trim().to_string(),
                            reason: "`!` must be followed by a pattern".to_string(),
                        },
                        pos,
                    ));
                }
            }
            let mut cleaned = paths::clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let matcher = PathPattern::parse(&cleaned).map_err(|reason| {
                source.error(
                    ErrorKind::InvalidIgnorePattern {
                        pattern: pattern.to_string(),
                        reason,
                    },
                    pos,
                )
            })?;
            patterns.push(Pattern {
                text: cleaned,
                exclusion,
                matcher,
            });
        }
        Ok(DockerIgnore {
            file: None,
            patterns,
        })
    }

    /// The file the rules were read from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns as they are matched, `!` included, in order.
    pub fn patterns(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| {
                if p.exclusion {
                    format!("!{}", p.text)
                } else {
                    p.text.clone()
                }
            })
            .collect()
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out
    /// of the build context.
    pub fn is_excluded(&self, path: &str) -> bool {
        let path = paths::clean(path.trim_start_matches('/'));
        let parents: Vec<&str> = match path.rsplit_once('/') {
            Some((parent, _)) => parent.split('/').collect(),
            None => Vec::new(),
        };
        let mut excluded = false;
        for pattern in &self.patterns {
            // Only a pattern that could change the outcome is evaluated.
            if pattern.exclusion != excluded {
                continue;
            }
            let mut matched = pattern.matcher.matches(&path);
            if !matched {
                let mut ancestor = String::new();
                for part in &parents {
                    if !ancestor.is_empty() {
                        ancestor.push('/');
                    }
                    ancestor.push_str(part);
                    if pattern.matcher.matches(&ancestor) {
                        matched = true;
                        break;
                    }
                }
            }
            if matched {
                excluded = !pattern.exclusion;
            }
        }
        excluded
    }

    /// Whether the directory `dir` and everything below it are excluded, so
    /// that a walk of the context need not enter it: it is excluded and no
    /// `!` pattern could bring back anything inside it.
    pub fn can_skip_dir(&self, dir: &str) -> bool {
        if !self.is_excluded(dir) {
            return false;
        }
        let dir = paths::clean(dir.trim_start_matches('/'));
        let dir_parts: Vec<&str> = dir.split('/').collect();
        !self
            .patterns
            .iter()
            .filter(|p| p.exclusion)
            .any(|p| p.matcher.could_match_inside(&dir_parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text, ".dockerignore").expect("valid")
    }

    #[test]
    fn docker_matching_rules() {
        let cases: &[(&str, &[(&str, bool)])] = &[
            (
                "*.md",
                &[
                    ("README.md", true),
                    ("docs/README.md", false),
                    ("md", false),
                ],
            ),
            (
                "**/*.md",
                &[
                    ("README.md", true),
                    ("docs/a/README.md", true),
                    ("README.mdx", false),
                ],
            ),
            (
                "docs",
                &[("docs", true), ("docs/a/b.txt", true), ("docsx", false)],
            ),
            ("docs/", &[("docs/a", true)]),
            ("/build", &[("build/x", true), ("src/build", false)]),
            ("./tmp", &[("tmp/a", true)]),
            (
                "a/*/c",
                &[("a/b/c", true), ("a/b/x/c", false), ("a/b/c/d", true)],
            ),
            ("a/**/c", &[("a/c", true), ("a/b/x/c", true)]),
            (
                "file?.txt",
                &[
                    ("file1.txt", true),
                    ("file10.txt", false),
                    ("file/.txt", false),
                ],
            ),
            ("[a-c]*", &[("apple", true), ("dog", false)]),
            ("**", &[("anything/at/all", true)]),
            ("logs/**", &[("logs/x/y", true), ("logsx", false)]),
            ("\\*literal", &[("*literal", true), ("xliteral", false)]),
            ("*\n!keep.md", &[("keep.md", false), ("other.md", true)]),
            ("!keep.md\n*", &[("keep.md", true)]),
            (
                "dir\n!dir/keep",
                &[
                    ("dir/keep", false),
                    ("dir/keep/inner", false),
                    ("dir/other", true),
                ],
            ),
            (
                "# comment\n\n  spaced  ",
                &[("spaced", true), ("# comment", false)],
            ),
        ];
        for (text, checks) in cases {
            let rules = rules(text);
            for (path, excluded) in *checks {
                assert_eq!(rules.is_excluded(path), *excluded, "{text:?} on {path:?}");
            }
        }
    }

    #[test]
    fn whole_directories_can_be_skipped_unless_an_exception_reaches_inside() {
        let r = rules("node_modules\n.git\n");
        assert!(r.can_skip_dir("node_modules"));
        assert!(!r.can_skip_dir("src"));
        let r = rules("build\n!build/keep.txt\n");
        assert!(!r.can_skip_dir("build"));
        let r = rules("build\n!src/keep.txt\n");
        assert!(r.can_skip_dir("build"));
        let r = rules("build\n!**/keep.txt\n");
        assert!(!r.can_skip_dir("build"));
        let r = rules("*\n!*/keep\n");
        assert!(!r.can_skip_dir("anything"));
        let r = rules("a/b\n!a\n");
        assert!(!r.can_skip_dir("a/b"));
    }

    #[test]
    fn patterns_are_cleaned() {
        assert_eq!(rules("./a/../b/\n!/c\n/\n").patterns(), ["b", "!c", "/"]);
    }

    #[test]
    fn bad_patterns_name_the_line() {
        let err = DockerIgnore::parse("ok\n  [unclosed\n", ".dockerignore").expect_err("bad");
        assert!(
            matches!(err.kind, ErrorKind::InvalidIgnorePattern { .. }),
            "{err:?}"
        );
        assert_eq!(err.location.as_ref().map(|l| l.pos), Some(Pos::new(2, 3)));
        assert!(
            err.to_string()
                .starts_with(".dockerignore:2:3: invalid pattern \"[unclosed\""),
            "{err}"
        );
        let err = DockerIgnore::parse("!\n", ".dockerignore").expect_err("bare !");
        assert!(err.to_string().contains("must be followed by a pattern"));
    }

    #[test]
    fn dockerfile_specific_ignore_file_wins() {
        let dir = std::env::temp_dir().join(format!("kiln-ignore-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("ctx")).expect("mkdir");
        std::fs::write(dir.join("ctx/.dockerignore"), "from-context\n").expect("write");
        let dockerfile = dir.join("app.Dockerfile");
        let rules = DockerIgnore::load(&dockerfile, &dir.join("ctx")).expect("load");
        assert_eq!(rules.patterns(), ["from-context"]);
        std::fs::write(
            dir.join("app.Dockerfile.dockerignore"),
            "beside-dockerfile\n",
        )
        .expect("write");
        let rules = DockerIgnore::load(&dockerfile, &dir.join("ctx")).expect("load");
        assert_eq!(rules.patterns(), ["beside-dockerfile"]);
        assert_eq!(
            rules.file(),
            Some(dir.join("app.Dockerfile.dockerignore").as_path())
        );
        let none = DockerIgnore::load(&dir.join("nothing"), &dir.join("nowhere")).expect("load");
        assert!(none.is_empty());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
