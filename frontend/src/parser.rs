//! Turns Dockerfile text into instructions: parser directives, comments,
//! line continuations, heredocs, and the per-instruction argument syntax.
//!
//! The rules follow BuildKit's parser, quirks included, so that a Dockerfile
//! means the same thing here as under `docker build`.

use crate::ast::{Args, Directives, Dockerfile, Heredoc, Instruction, KeyValue, Source, Word};
use crate::error::{Error, ErrorKind, Pos};
use crate::keyword::Keyword;
use crate::shell::{Lexer, NoVariables};
use crate::suggest;

/// Parses a Dockerfile given as bytes. `name` is used in error messages.
pub fn parse_bytes(bytes: &[u8], name: &str) -> Result<Dockerfile, Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text, name),
        Err(err) => {
            let valid = &bytes[..err.valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let prefix = String::from_utf8_lossy(&valid[line_start..]);
            let source = Source::new(name, &String::from_utf8_lossy(bytes));
            Err(source.error(
                ErrorKind::NotUtf8,
                Pos::new(line, prefix.chars().count() + 1),
            ))
        }
    }
}

/// Parses Dockerfile text. `name` is used in error messages.
pub fn parse(text: &str, name: &str) -> Result<Dockerfile, Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let source = Source::new(name, text);
    if text.trim().is_empty() && !text.contains('#') {
        return Err(Error::new(ErrorKind::Empty).in_file(name));
    }
    let mut parser = Parser {
        source: &source,
        next_line: 1,
        directives: DirectiveScanner::default(),
        escape: '\\',
        instructions: Vec::new(),
    };
    parser.run()?;
    if parser.instructions.is_empty() {
        return Err(Error::new(ErrorKind::NoInstructions).in_file(name));
    }
    let Parser {
        instructions,
        escape,
        directives,
        ..
    } = parser;
    Ok(Dockerfile {
        directives: Directives {
            syntax: directives.syntax,
            escape,
            check: directives.check,
        },
        instructions,
        source,
    })
}

/// Recognises `# name=value` lines at the top of the file.
#[derive(Default)]
struct DirectiveScanner {
    done: bool,
    syntax: Option<String>,
    check: Option<String>,
    escape_seen: bool,
}

struct Parser<'s> {
    source: &'s Source,
    /// The next physical line to read (1-based).
    next_line: usize,
    directives: DirectiveScanner,
    escape: char,
    instructions: Vec<Instruction>,
}

/// An instruction's text with its continuation lines joined, and where each
/// piece came from so that positions can be reported on physical lines.
struct LogicalLine {
    text: String,
    segments: Vec<Segment>,
}

struct Segment {
    /// Byte offset of the segment in the joined text.
    start: usize,
    line: usize,
    /// Byte offset of the segment in its physical line.
    column_byte: usize,
}

impl<'s> Parser<'s> {
    fn take_line(&mut self) -> Option<(usize, &'s str)> {
        if self.next_line > self.source.line_count() {
            return None;
        }
        let number = self.next_line;
        self.next_line += 1;
        Some((number, self.source.raw_line(number)))
    }

    fn run(&mut self) -> Result<(), Error> {
        while let Some((number, raw)) = self.take_line() {
            let content = trim_newline(raw);
            let token = content.trim_start();
            let lead = content.len() - token.len();
            self.scan_directive(token, number, lead)?;
            if is_comment(token) {
                continue;
            }
            let (first, mut continues) = self.trim_continuation(token);
            if !continues && first.is_empty() {
                continue;
            }
            let mut logical = LogicalLine {
                text: String::new(),
                segments: Vec::new(),
            };
            logical.push(first, number, lead);
            let mut empty_continuation = false;
            while continues {
                let Some((number, raw)) = self.take_line() else {
                    break;
                };
                let content = trim_newline(raw);
                self.scan_directive(content, number, 0)?;
                if is_comment(content) {
                    continue;
                }
                if content.trim_start().is_empty() {
                    empty_continuation = true;
                    continue;
                }
                let (part, more) = self.trim_continuation(content);
                logical.push(part, number, 0);
                continues = more;
            }
            let start_line = logical.segments[0].line;
            let mut instruction = self.instruction(&logical, 0, &logical.text)?;
            if can_contain_heredoc(&instruction) && logical.text.contains("<<") {
                instruction.heredocs = self.read_heredocs(&logical.text, instruction.name.pos)?;
            }
            instruction.start_line = start_line;
            instruction.end_line = self.next_line - 1;
            instruction.empty_continuation = empty_continuation;
            if let Args::Onbuild(trigger) = &mut instruction.args {
                trigger.start_line = start_line;
                trigger.end_line = self.next_line - 1;
                trigger.heredocs = std::mem::take(&mut instruction.heredocs);
            }
            self.instructions.push(instruction);
        }
        Ok(())
    }

    /// Handles a possible `# directive=value` line. Directives are only
    /// recognised before the first comment, blank line or instruction.
    fn scan_directive(&mut self, line: &str, number: usize, lead: usize) -> Result<(), Error> {
        let scanner = &mut self.directives;
        if scanner.done {
            return Ok(());
        }
        let Some((name, value)) = line.strip_prefix('#').and_then(split_directive) else {
            scanner.done = true;
            return Ok(());
        };
        let name = name.to_ascii_lowercase();
        let pos = Pos::new(number, lead + 1);
        let duplicate = match name.as_str() {
            "syntax" => scanner.syntax.replace(value.clone()).is_some(),
            "check" => scanner.check.replace(value.clone()).is_some(),
            "escape" => std::mem::replace(&mut scanner.escape_seen, true),
            _ => {
                scanner.done = true;
                return Ok(());
            }
        };
        if duplicate {
            return Err(self.source.error(ErrorKind::DuplicateDirective(name), pos));
        }
        if name == "escape" {
            self.escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                _ => {
                    return Err(self
                        .source
                        .error(ErrorKind::InvalidEscapeCharacter(value), pos))
                }
            };
        }
        Ok(())
    }

    /// Removes a trailing escape character that continues the line. An
    /// escape preceded by another escape does not continue it.
    fn trim_continuation<'a>(&self, line: &'a str) -> (&'a str, bool) {
        let trimmed = line.trim_end_matches([' ', '\t']);
        if let Some(before) = trimmed.strip_suffix(self.escape) {
            if before.is_empty() || !before.ends_with(self.escape) {
                return (before, true);
            }
        }
        (line, false)
    }

    fn read_heredocs(&mut self, line: &str, pos: Pos) -> Result<Vec<Heredoc>, Error> {
        let mut heredocs = heredocs_in_line(line);
        for heredoc in &mut heredocs {
            let mut terminated = false;
            while let Some((_, raw)) = self.take_line() {
                let mut candidate = trim_newline(raw);
                if heredoc.chomp {
                    candidate = candidate.trim_start_matches('\t');
                }
                if candidate == heredoc.name {
                    terminated = true;
                    break;
                }
                heredoc.content.push_str(raw);
            }
            if !terminated {
                return Err(self
                    .source
                    .error(ErrorKind::UnterminatedHeredoc(heredoc.name.clone()), pos));
            }
        }
        Ok(heredocs)
    }

    /// Splits one instruction into name, flags and arguments. `offset` is
    /// where `text` starts in `logical` (non-zero for ONBUILD triggers).
    fn instruction(
        &self,
        logical: &LogicalLine,
        offset: usize,
        text: &str,
    ) -> Result<Instruction, Error> {
        let lead = text.len() - text.trim_start().len();
        let trimmed = text.trim();
        let name_end = trimmed.find(is_split_space).unwrap_or(trimmed.len());
        let name_text = &trimmed[..name_end];
        let name_pos = logical.pos(self.source, offset + lead);
        let name = Word {
            text: name_text.to_string(),
            pos: name_pos,
        };
        let Some(keyword) = Keyword::parse(name_text) else {
            let names: Vec<&str> = Keyword::ALL.iter().map(|k| k.as_str()).collect();
            let suggestion = suggest::closest(name_text, &names).map(str::to_string);
            return Err(self.source.error(
                ErrorKind::UnknownInstruction {
                    name: name_text.to_string(),
                    suggestion,
                },
                name_pos,
            ));
        };
        let after_name = trimmed[name_end..].trim_start_matches(is_split_space);
        let rest_offset = offset + lead + (trimmed.len() - after_name.len());
        let (flags, args_text, args_offset) = if name_end < trimmed.len() {
            let (rest_start, flags) = extract_flags(after_name);
            let flags = flags
                .into_iter()
                .map(|(text, at)| Word {
                    text,
                    pos: logical.pos(self.source, rest_offset + at),
                })
                .collect();
            let rest = &after_name[rest_start..];
            let args = rest.trim();
            let args_offset = rest_offset + rest_start + (rest.len() - rest.trim_start().len());
            (flags, args, args_offset)
        } else {
            (Vec::new(), "", rest_offset)
        };
        let at = |delta: usize| logical.pos(self.source, args_offset + delta);
        let args = match keyword {
            Keyword::Add | Keyword::Copy | Keyword::Volume => self.json_or_list(args_text, &at)?,
            Keyword::Cmd | Keyword::Entrypoint | Keyword::Run | Keyword::Shell => {
                self.json_or_text(args_text, &at)?
            }
            Keyword::Arg => words_arg(parse_words(args_text, self.escape), &at),
            Keyword::Env | Keyword::Label => self.key_values(keyword, args_text, &at)?,
            Keyword::Expose | Keyword::From => split_on_spaces(args_text, &at),
            Keyword::Maintainer | Keyword::Stopsignal | Keyword::User | Keyword::Workdir => {
                text_arg(args_text, &at)
            }
            Keyword::Healthcheck => self.healthcheck(args_text, &at)?,
            Keyword::Onbuild => {
                if args_text.is_empty() {
                    Args::Empty
                } else {
                    let trigger = self.instruction(logical, args_offset, args_text)?;
                    Args::Onbuild(Box::new(trigger))
                }
            }
        };
        Ok(Instruction {
            keyword,
            name,
            flags,
            args,
            heredocs: Vec::new(),
            start_line: name_pos.line,
            end_line: name_pos.line,
            text: text.to_string(),
            empty_continuation: false,
        })
    }

    fn json_or_text(&self, text: &str, at: &dyn Fn(usize) -> Pos) -> Result<Args, Error> {
        if text.is_empty() {
            return Ok(Args::Empty);
        }
        match parse_json_array(text) {
            JsonArgs::Strings(values) => Ok(Args::Json { values, pos: at(0) }),
            JsonArgs::NotStrings => Err(self.source.error(ErrorKind::JsonNotStrings, at(0))),
            JsonArgs::NotJson => Ok(text_arg(text, at)),
        }
    }

    fn json_or_list(&self, text: &str, at: &dyn Fn(usize) -> Pos) -> Result<Args, Error> {
        match parse_json_array(text) {
            JsonArgs::Strings(values) => Ok(Args::Json { values, pos: at(0) }),
            JsonArgs::NotStrings => Err(self.source.error(ErrorKind::JsonNotStrings, at(0))),
            JsonArgs::NotJson => Ok(split_on_spaces(text, at)),
        }
    }

    /// ENV and LABEL: either `NAME VALUE` (everything after the name is the
    /// value) or `NAME=VALUE ...`.
    fn key_values(
        &self,
        keyword: Keyword,
        text: &str,
        at: &dyn Fn(usize) -> Pos,
    ) -> Result<Args, Error> {
        let words = parse_words(text, self.escape);
        let Some((first, _)) = words.first() else {
            return Ok(Args::Empty);
        };
        if !first.contains('=') {
            let name_end = text.find(is_split_space).unwrap_or(text.len());
            let value = text[name_end..].trim_start_matches(is_split_space);
            if name_end == text.len() {
                return Err(self
                    .source
                    .error(ErrorKind::NeedsNameAndValue(keyword), at(0)));
            }
            return Ok(Args::KeyValues(vec![KeyValue {
                key: Word {
                    text: text[..name_end].to_string(),
                    pos: at(0),
                },
                value: Word {
                    text: value.to_string(),
                    pos: at(text.len() - value.len()),
                },
                equals: false,
            }]));
        }
        let mut pairs = Vec::with_capacity(words.len());
        for (word, offset) in words {
            let Some((key, value)) = word.split_once('=') else {
                return Err(self.source.error(
                    ErrorKind::MissingEquals {
                        instruction: keyword,
                        word,
                    },
                    at(offset),
                ));
            };
            pairs.push(KeyValue {
                key: Word {
                    text: key.to_string(),
                    pos: at(offset),
                },
                value: Word {
                    text: value.to_string(),
                    pos: at(offset + key.len() + 1),
                },
                equals: true,
            });
        }
        Ok(Args::KeyValues(pairs))
    }

    fn healthcheck(&self, text: &str, at: &dyn Fn(usize) -> Pos) -> Result<Args, Error> {
        let kind_end = text.find(char::is_whitespace).unwrap_or(text.len());
        if kind_end == 0 {
            return Ok(Args::Empty);
        }
        let command_text = text[kind_end..].trim_start();
        let command_offset = text.len() - command_text.len();
        let command = self.json_or_text(command_text, &|delta| at(command_offset + delta))?;
        Ok(Args::Healthcheck {
            kind: Word {
                text: text[..kind_end].to_string(),
                pos: at(0),
            },
            command: Box::new(command),
        })
    }
}

impl LogicalLine {
    fn push(&mut self, part: &str, line: usize, column_byte: usize) {
        self.segments.push(Segment {
            start: self.text.len(),
            line,
            column_byte,
        });
        self.text.push_str(part);
    }

    /// The physical position of a byte offset in the joined text.
    fn pos(&self, source: &Source, offset: usize) -> Pos {
        let index = self
            .segments
            .partition_point(|s| s.start <= offset)
            .saturating_sub(1);
        let segment = &self.segments[index];
        let physical = source.line(segment.line);
        let mut byte = segment.column_byte + (offset - segment.start);
        byte = byte.min(physical.len());
        while !physical.is_char_boundary(byte) {
            byte -= 1;
        }
        let column = if physical.is_ascii() {
            byte
        } else {
            physical[..byte].chars().count()
        };
        Pos::new(segment.line, column + 1)
    }
}

fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// The white space that separates an instruction's name from its arguments.
fn is_split_space(c: char) -> bool {
    matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ')
}

/// White space as Go's regular expressions define `\s`.
fn is_directive_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\x0c' | '\r' | ' ')
}

/// Splits `name=value` after the `#` of a directive line.
fn split_directive(line: &str) -> Option<(String, String)> {
    let line = line.trim_start();
    let name_end = line
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(line.len(), |(i, _)| i);
    if name_end == 0 {
        return None;
    }
    let rest = line[name_end..].trim_start_matches(is_directive_space);
    let rest = rest.strip_prefix('=')?;
    let after_equals = rest.trim_start_matches(is_directive_space);
    let value = after_equals.trim_end_matches(is_directive_space);
    if !value.is_empty() {
        return Some((line[..name_end].to_string(), value.to_string()));
    }
    // Only white space after `=`: the value is one white space character,
    // which is what BuildKit's pattern captures.
    rest.chars()
        .next()
        .map(|c| (line[..name_end].to_string(), c.to_string()))
}

fn can_contain_heredoc(instruction: &Instruction) -> bool {
    let target = match &instruction.args {
        Args::Onbuild(trigger) if instruction.keyword == Keyword::Onbuild => trigger,
        _ => instruction,
    };
    matches!(target.keyword, Keyword::Add | Keyword::Copy | Keyword::Run)
        && !matches!(target.args, Args::Json { .. })
}

/// The heredocs a line opens, in order. Words are split the way a shell would
/// (quotes kept) and each `[n]<<[-]NAME` word opens one.
pub(crate) fn heredocs_in_line(line: &str) -> Vec<Heredoc> {
    let mut lexer = Lexer::new('\\');
    lexer.raw_quotes = true;
    lexer.raw_escapes = true;
    lexer.skip_unset_env = true;
    let words = lexer.process_words(line, &NoVariables).unwrap_or_default();
    words
        .iter()
        .map(String::as_str)
        .filter_map(parse_heredoc_word)
        .collect()
}

/// Recognises a `[n]<<[-]NAME` word. The content is expanded later only if no
/// part of NAME was quoted.
pub(crate) fn parse_heredoc_word(word: &str) -> Option<Heredoc> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let rest = word[digits..].strip_prefix("<<")?;
    let (chomp, name) = match rest.strip_prefix('-') {
        Some(name) => (true, name),
        None => (false, rest),
    };
    if name.is_empty() || name.contains('<') {
        return None;
    }
    let mut lexer = Lexer::new('\\');
    lexer.skip_unset_env = true;
    let words = lexer.process_words(name, &NoVariables).ok()?;
    let [unquoted] = words.as_slice() else {
        return None;
    };
    lexer.raw_quotes = true;
    let raw = lexer.process_words(name, &NoVariables).ok()?;
    let quotes = |s: &str| s.matches(['\'', '"']).count();
    let expand = raw.len() == 1 && quotes(unquoted) == quotes(&raw[0]);
    Some(Heredoc {
        name: unquoted.clone(),
        fd: word[..digits].parse().unwrap_or(0),
        expand,
        chomp,
        content: String::new(),
    })
}

enum JsonArgs {
    Strings(Vec<String>),
    NotStrings,
    NotJson,
}

fn parse_json_array(text: &str) -> JsonArgs {
    let text = text.trim_start();
    if !text.starts_with('[') {
        return JsonArgs::NotJson;
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(text) else {
        return JsonArgs::NotJson;
    };
    let mut strings = Vec::with_capacity(values.len());
    for value in values {
        match value {
            serde_json::Value::String(s) => strings.push(s),
            _ => return JsonArgs::NotStrings,
        }
    }
    JsonArgs::Strings(strings)
}

fn text_arg(text: &str, at: &dyn Fn(usize) -> Pos) -> Args {
    if text.is_empty() {
        Args::Empty
    } else {
        Args::Text(Word {
            text: text.to_string(),
            pos: at(0),
        })
    }
}

fn words_arg(words: Vec<(String, usize)>, at: &dyn Fn(usize) -> Pos) -> Args {
    if words.is_empty() {
        return Args::Empty;
    }
    Args::Words(
        words
            .into_iter()
            .map(|(text, offset)| Word {
                text,
                pos: at(offset),
            })
            .collect(),
    )
}

fn split_on_spaces(text: &str, at: &dyn Fn(usize) -> Pos) -> Args {
    if text.is_empty() {
        return Args::Empty;
    }
    let mut words = Vec::new();
    let mut start = 0;
    for piece in text.split(is_split_space) {
        if !piece.is_empty() {
            words.push(Word {
                text: piece.to_string(),
                pos: at(start),
            });
        }
        start += piece.len() + 1;
    }
    Args::Words(words)
}

/// Takes the `--flag[=value]` words at the start of an instruction's
/// arguments. Returns where the arguments start and the flags with their
/// offsets. A `--` word ends the flags.
fn extract_flags(line: &str) -> (usize, Vec<(String, usize)>) {
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let mut flags = Vec::new();
    if !line.trim_start().starts_with("--") {
        return (line.len() - line.trim_start().len(), flags);
    }
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut start = 0;
    let mut blank_ok = false;
    let mut pos = 0;
    loop {
        let Some(mut ch) = char_at(line, pos) else {
            if !matches!(phase, Phase::Spaces) && word != "--" && (blank_ok || !word.is_empty()) {
                flags.push((word, start));
            }
            break;
        };
        if let Phase::Spaces = phase {
            if ch.is_whitespace() {
                pos += ch.len_utf8();
                continue;
            }
            if ch != '-' || char_at(line, pos + 1) != Some('-') {
                return (pos, flags);
            }
            phase = Phase::Word;
            start = pos;
        }
        match phase {
            Phase::Spaces => {}
            Phase::Word => {
                if ch.is_whitespace() {
                    phase = Phase::Spaces;
                    if word == "--" {
                        return (pos, flags);
                    }
                    if blank_ok || !word.is_empty() {
                        flags.push((std::mem::take(&mut word), start));
                    }
                    blank_ok = false;
                    pos += ch.len_utf8();
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                    pos += 1;
                    continue;
                }
                if ch == '\\' {
                    pos += 1;
                    match char_at(line, pos) {
                        Some(escaped) => ch = escaped,
                        None => continue,
                    }
                }
                word.push(ch);
            }
            Phase::Quote(quote) => {
                if ch == quote {
                    phase = Phase::Word;
                    pos += 1;
                    continue;
                }
                if ch == '\\' {
                    pos += 1;
                    match char_at(line, pos) {
                        Some(escaped) => ch = escaped,
                        None => {
                            phase = Phase::Word;
                            continue;
                        }
                    }
                }
                word.push(ch);
            }
        }
        pos += ch.len_utf8();
    }
    (line.len(), flags)
}

fn char_at(text: &str, pos: usize) -> Option<char> {
    text.get(pos..).and_then(|rest| rest.chars().next())
}

/// Splits at white space outside quotes, keeping quotes and escapes in the
/// words (they are removed when the words are expanded).
fn parse_words(text: &str, escape: char) -> Vec<(String, usize)> {
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut start = 0;
    let mut blank_ok = false;
    let mut pos = 0;
    loop {
        let Some(mut ch) = char_at(text, pos) else {
            if !matches!(phase, Phase::Spaces) && (blank_ok || !word.is_empty()) {
                words.push((word, start));
            }
            break;
        };
        if let Phase::Spaces = phase {
            if ch.is_whitespace() {
                pos += ch.len_utf8();
                continue;
            }
            phase = Phase::Word;
            start = pos;
        }
        match phase {
            Phase::Spaces => {}
            Phase::Word => {
                if ch.is_whitespace() {
                    phase = Phase::Spaces;
                    if blank_ok || !word.is_empty() {
                        words.push((std::mem::take(&mut word), start));
                    }
                    blank_ok = false;
                    pos += ch.len_utf8();
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                }
                if ch == escape {
                    let after = pos + ch.len_utf8();
                    let Some(escaped) = char_at(text, after) else {
                        // An escape at the end of the line is dropped.
                        pos = after;
                        continue;
                    };
                    // Outside quotes the escape and the escaped character are
                    // both kept, even when the character is a quote.
                    word.push(ch);
                    pos = after;
                    ch = escaped;
                }
                word.push(ch);
            }
            Phase::Quote(quote) => {
                if ch == quote {
                    phase = Phase::Word;
                }
                // Nothing can be escaped inside single quotes.
                if ch == escape && quote != '\'' {
                    let after = pos + ch.len_utf8();
                    let Some(escaped) = char_at(text, after) else {
                        phase = Phase::Word;
                        pos = after;
                        continue;
                    };
                    word.push(ch);
                    pos = after;
                    ch = escaped;
                }
                word.push(ch);
            }
        }
        pos += ch.len_utf8();
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(text: &str) -> Instruction {
        let dockerfile = parse(text, "Dockerfile").expect("parses");
        dockerfile
            .instructions
            .into_iter()
            .next()
            .expect("one instruction")
    }

    fn error(text: &str) -> Error {
        parse(text, "Dockerfile").expect_err("should fail")
    }

    #[test]
    fn flags_stop_at_the_first_non_flag_or_double_dash() {
        assert_eq!(
            extract_flags("--a=1 --b x --c"),
            (10, vec![("--a=1".into(), 0), ("--b".into(), 6)])
        );
        assert_eq!(extract_flags("--a -- --b x").0, 6);
        assert_eq!(
            extract_flags("--a=\"x y\" z"),
            (10, vec![("--a=x y".into(), 0)])
        );
        assert_eq!(extract_flags("-- "), (2, vec![]));
        assert_eq!(extract_flags("--x"), (3, vec![("--x".into(), 0)]));
    }

    #[test]
    fn words_keep_quotes_and_escapes() {
        let words: Vec<String> = parse_words(r#"a="b c" d\ e 'f\'"#, '\\')
            .into_iter()
            .map(|w| w.0)
            .collect();
        assert_eq!(words, [r#"a="b c""#, r"d\ e", r"'f\'"]);
    }

    #[test]
    fn positions_point_into_continued_lines() {
        let dockerfile = parse(
            "FROM a\nRUN --mount=type=cache,target=/x \\\n    --network=none \\\n  echo hi\n",
            "Dockerfile",
        )
        .expect("parses");
        let run = &dockerfile.instructions[1];
        assert_eq!(run.name.pos, Pos::new(2, 1));
        assert_eq!(run.flags[0].pos, Pos::new(2, 5));
        assert_eq!(run.flags[1].pos, Pos::new(3, 5));
        let Args::Text(command) = &run.args else {
            panic!("shell form expected")
        };
        assert_eq!(command.pos, Pos::new(4, 3));
        assert_eq!(command.text, "echo hi");
        assert_eq!((run.start_line, run.end_line), (2, 4));
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        let dockerfile = parse("FROM a\nLABEL é=1 ü=2\n", "Dockerfile").expect("parses");
        let Args::KeyValues(pairs) = &dockerfile.instructions[1].args else {
            panic!()
        };
        assert_eq!(pairs[1].key.pos, Pos::new(2, 11));
        assert_eq!(pairs[1].value.pos, Pos::new(2, 13));
    }

    #[test]
    fn directives_only_at_the_top() {
        let dockerfile = parse(
            "# syntax=docker/dockerfile:1\n# escape=`\n# check=skip=all\nFROM a\n",
            "f",
        )
        .expect("parses");
        assert_eq!(
            dockerfile.directives.syntax.as_deref(),
            Some("docker/dockerfile:1")
        );
        assert_eq!(dockerfile.directives.escape, '`');
        assert_eq!(dockerfile.directives.check.as_deref(), Some("skip=all"));
        let dockerfile = parse("# hello\n# escape=`\nFROM a\n", "f").expect("parses");
        assert_eq!(dockerfile.directives.escape, '\\');
        let dockerfile = parse("# unknown=x\n# escape=`\nFROM a\n", "f").expect("parses");
        assert_eq!(dockerfile.directives.escape, '\\');
        let dockerfile = parse("#ESCAPE = ` \nFROM a\n", "f").expect("parses");
        assert_eq!(dockerfile.directives.escape, '`');
    }

    #[test]
    fn directive_errors() {
        let err = error("# escape=`\n# escape=\\\nFROM a\n");
        assert_eq!(err.kind, ErrorKind::DuplicateDirective("escape".into()));
        assert_eq!(err.location.as_ref().map(|l| l.pos), Some(Pos::new(2, 1)));
        let err = error("# escape=x\nFROM a\n");
        assert_eq!(err.kind, ErrorKind::InvalidEscapeCharacter("x".into()));
        assert_eq!(
            err.to_string(),
            "f:1:1: invalid escape character \"x\": the escape directive accepts only ` or \\"
                .replace("f:", "Dockerfile:")
        );
    }

    #[test]
    fn bom_and_crlf() {
        let dockerfile = parse("\u{feff}FROM a\r\nRUN b \\\r\n  c\r\n", "f").expect("parses");
        assert_eq!(dockerfile.instructions.len(), 2);
        let Args::Text(text) = &dockerfile.instructions[1].args else {
            panic!()
        };
        assert_eq!(text.text, "b   c");
    }

    #[test]
    fn comments_and_blank_lines_inside_continuations() {
        let run = parse_one("RUN a \\\n# comment\n\n  b\n");
        let Args::Text(text) = &run.args else {
            panic!()
        };
        assert_eq!(text.text, "a   b");
    }

    #[test]
    fn empty_continuation_lines_are_noted() {
        let dockerfile = parse("FROM a\nRUN a \\\n\n  b\n", "f").expect("parses");
        assert!(dockerfile.instructions[1].empty_continuation);
        assert!(!dockerfile.instructions[0].empty_continuation);
        assert_eq!(dockerfile.instructions[1].end_line, 4);
    }

    #[test]
    fn heredocs() {
        let run = parse_one("RUN <<EOF\necho hi\nEOF\n");
        assert_eq!(run.heredocs.len(), 1);
        assert_eq!(run.heredocs[0].name, "EOF");
        assert_eq!(run.heredocs[0].content, "echo hi\n");
        assert!(run.heredocs[0].expand);
        assert_eq!((run.start_line, run.end_line), (1, 3));

        let run = parse_one("RUN <<-EOF\n\techo hi\n\tEOF\n");
        assert!(run.heredocs[0].chomp);
        assert_eq!(run.heredocs[0].effective_content(), "echo hi\n");

        let copy = parse_one("COPY <<'A' 3<<\"B\" /dest/\none\nA\ntwo\nB\n");
        let names: Vec<_> = copy
            .heredocs
            .iter()
            .map(|h| (h.name.as_str(), h.expand, h.fd, h.content.as_str()))
            .collect();
        assert_eq!(names, [("A", false, 0, "one\n"), ("B", false, 3, "two\n")]);

        let run = parse_one("RUN [\"cat\", \"<<EOF\"]\n");
        assert!(run.heredocs.is_empty());
        let run = parse_one("RUN echo \"<<EOF\"\n");
        assert!(run.heredocs.is_empty());
        let onbuild = parse_one("ONBUILD RUN <<EOF\nx\nEOF\n");
        let Args::Onbuild(trigger) = &onbuild.args else {
            panic!()
        };
        assert_eq!(trigger.heredocs[0].content, "x\n");
    }

    #[test]
    fn unterminated_heredoc() {
        let err = error("FROM a\nRUN <<EOF\necho\n");
        assert_eq!(err.kind, ErrorKind::UnterminatedHeredoc("EOF".into()));
        assert_eq!(err.location.map(|l| l.pos), Some(Pos::new(2, 1)));
    }

    #[test]
    fn heredoc_words() {
        let h = parse_heredoc_word("<<EOF").expect("heredoc");
        assert!(h.expand && !h.chomp);
        let h = parse_heredoc_word("<<-'E O F'").expect("heredoc");
        assert_eq!(h.name, "E O F");
        assert!(!h.expand && h.chomp);
        assert!(parse_heredoc_word("<<").is_none());
        assert!(parse_heredoc_word("a<<EOF").is_none());
        assert!(parse_heredoc_word("<<E<F").is_none());
        assert_eq!(parse_heredoc_word("2<<X").map(|h| h.fd), Some(2));
    }

    #[test]
    fn unknown_instructions_suggest_a_fix() {
        let err = error("FROM a\n  RUNN echo\n");
        assert_eq!(
            err.kind,
            ErrorKind::UnknownInstruction {
                name: "RUNN".into(),
                suggestion: Some("RUN".into())
            }
        );
        assert_eq!(err.location.map(|l| l.pos), Some(Pos::new(2, 3)));
        let err = error("FORM a\n");
        assert_eq!(
            err.to_string(),
            "Dockerfile:1:1: unknown instruction: FORM (did you mean FROM?)"
        );
        let err = error("BANANA a\n");
        assert_eq!(
            err.to_string(),
            "Dockerfile:1:1: unknown instruction: BANANA"
        );
    }

    #[test]
    fn nested_json_is_an_error() {
        let err = error("FROM a\nCMD [\"a\", 1]\n");
        assert_eq!(err.kind, ErrorKind::JsonNotStrings);
        assert_eq!(err.location.map(|l| l.pos), Some(Pos::new(2, 5)));
    }

    #[test]
    fn env_without_value() {
        let err = error("FROM a\nENV PATH\n");
        assert_eq!(err.kind, ErrorKind::NeedsNameAndValue(Keyword::Env));
        let err = error("FROM a\nENV a=b c\n");
        assert_eq!(
            err.kind,
            ErrorKind::MissingEquals {
                instruction: Keyword::Env,
                word: "c".into()
            }
        );
        assert_eq!(err.location.map(|l| l.pos), Some(Pos::new(2, 9)));
    }

    #[test]
    fn empty_and_comment_only_files() {
        assert_eq!(error("").kind, ErrorKind::Empty);
        assert_eq!(error("\n\n  \n").kind, ErrorKind::Empty);
        assert_eq!(
            error("# just a comment\n\n").kind,
            ErrorKind::NoInstructions
        );
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let err = parse_bytes(b"FROM a\nRUN \xff\n", "Dockerfile").expect_err("invalid");
        assert_eq!(err.kind, ErrorKind::NotUtf8);
        assert_eq!(err.location.map(|l| l.pos), Some(Pos::new(2, 5)));
    }
}
