//! The parsed Dockerfile: instructions split into flags and arguments the way
//! BuildKit's parser splits them, with the position of every piece. Nothing is
//! unquoted or expanded yet.

use crate::error::{Error, ErrorKind, Location, Pos};
use crate::keyword::Keyword;

/// A piece of an instruction and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub pos: Pos,
}

/// An instruction's arguments, split as the instruction's syntax requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// Nothing after the instruction name and flags.
    Empty,
    /// The exec form: a JSON array of strings.
    Json { values: Vec<String>, pos: Pos },
    /// Words separated by white space (quotes kept, for ARG).
    Words(Vec<Word>),
    /// The rest of the line as one string (shell form and single-value
    /// instructions).
    Text(Word),
    /// ENV and LABEL pairs.
    KeyValues(Vec<KeyValue>),
    /// HEALTHCHECK: its type (CMD, NONE, ...) and the command.
    Healthcheck { kind: Word, command: Box<Args> },
    /// ONBUILD: the trigger instruction.
    Onbuild(Box<Instruction>),
}

/// One `NAME=VALUE` (or legacy `NAME VALUE`) pair of ENV or LABEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Word,
    pub value: Word,
    /// False for the legacy `ENV NAME VALUE` form.
    pub equals: bool,
}

/// A here-document attached to RUN, COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub name: String,
    /// The file descriptor written before `<<` (`3<<EOF`), 0 when absent.
    pub fd: u64,
    /// False when the delimiter was quoted: the content is taken literally.
    pub expand: bool,
    /// `<<-`: leading tabs are removed from the content.
    pub chomp: bool,
    /// Every line up to the delimiter, with its line ending.
    pub content: String,
}

impl Heredoc {
    /// The content as the instruction sees it: with leading tabs removed for
    /// `<<-`.
    pub fn effective_content(&self) -> String {
        if self.chomp {
            strip_leading_tabs(&self.content)
        } else {
            self.content.clone()
        }
    }
}

/// Removes the tabs at the start of every line.
pub fn strip_leading_tabs(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|line| line.trim_start_matches('\t'))
        .collect()
}

/// One instruction with its flags, arguments and heredocs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub keyword: Keyword,
    /// The instruction name as written.
    pub name: Word,
    /// `--name[=value]` flags, unparsed.
    pub flags: Vec<Word>,
    pub args: Args,
    pub heredocs: Vec<Heredoc>,
    pub start_line: usize,
    pub end_line: usize,
    /// The instruction as written, continuation lines joined.
    pub text: String,
    /// Whether an empty line sits among its continuation lines.
    pub empty_continuation: bool,
}

/// Parser directives from the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    pub syntax: Option<String>,
    pub escape: char,
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            syntax: None,
            escape: '\\',
            check: None,
        }
    }
}

/// The text of a Dockerfile, kept to point at lines in errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    name: String,
    text: String,
    line_starts: Vec<usize>,
}

impl Source {
    pub fn new(name: &str, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        if line_starts.last() == Some(&text.len()) && !text.is_empty() {
            line_starts.pop();
        }
        Source {
            name: name.to_string(),
            text: text.to_string(),
            line_starts,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn line_count(&self) -> usize {
        if self.text.is_empty() {
            0
        } else {
            self.line_starts.len()
        }
    }

    /// Line `line` (1-based) with its line ending.
    pub fn raw_line(&self, line: usize) -> &str {
        let Some(&start) = self.line_starts.get(line.wrapping_sub(1)) else {
            return "";
        };
        let end = self
            .line_starts
            .get(line)
            .copied()
            .unwrap_or(self.text.len());
        &self.text[start..end]
    }

    /// Line `line` (1-based) without its line ending.
    pub fn line(&self, line: usize) -> &str {
        self.raw_line(line).trim_end_matches(['\r', '\n'])
    }

    pub fn location(&self, pos: Pos) -> Location {
        Location {
            file: self.name.clone(),
            pos,
            line_text: self.line(pos.line).to_string(),
        }
    }

    pub fn error(&self, kind: ErrorKind, pos: Pos) -> Error {
        Error {
            kind,
            location: Some(Box::new(self.location(pos))),
        }
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub source: Source,
    pub directives: Directives,
    pub instructions: Vec<Instruction>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_lines_without_endings() {
        let source = Source::new("Dockerfile", "FROM a\r\nRUN b\n\nCMD c");
        assert_eq!(source.line_count(), 4);
        assert_eq!(source.line(1), "FROM a");
        assert_eq!(source.line(2), "RUN b");
        assert_eq!(source.line(3), "");
        assert_eq!(source.line(4), "CMD c");
        assert_eq!(source.line(5), "");
        assert_eq!(source.raw_line(1), "FROM a\r\n");
        assert_eq!(Source::new("f", "a\n").line_count(), 1);
        assert_eq!(Source::new("f", "").line_count(), 0);
    }

    #[test]
    fn chomping_strips_tabs_of_every_line() {
        assert_eq!(
            strip_leading_tabs("\t\tone\n\ttwo\n  three\n"),
            "one\ntwo\n  three\n"
        );
    }
}
