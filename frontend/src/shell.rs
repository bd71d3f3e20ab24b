//! Shell-word processing as BuildKit does it: quote removal, escapes and
//! `$VAR` / `${VAR...}` expansion, either into one word or split into words.
//!
//! Only the subset of POSIX parameter expansion that Dockerfiles support is
//! implemented; anything else is an error rather than a guess.

use std::collections::{BTreeMap, HashMap};

use regex::Regex;

/// Why a word could not be processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    #[error("unterminated single quote")]
    UnterminatedSingleQuote,
    #[error("unterminated double quote")]
    UnterminatedDoubleQuote,
    #[error("missing '{0}' before the end of the word")]
    Unterminated(char),
    #[error("missing '}}' in variable substitution")]
    MissingBrace,
    #[error("missing '/' in ${{VAR/pattern/replacement}}")]
    MissingSlash,
    #[error("bad substitution (a variable name must follow '${{')")]
    BadSubstitution,
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    #[error("invalid pattern ({pattern}) in substitution: invalid escape '\\{escaped}'")]
    InvalidPatternEscape { pattern: String, escaped: String },
    #[error("invalid pattern ({pattern}) in substitution: {message}")]
    InvalidPattern { pattern: String, message: String },
}

/// Variables visible to an expansion.
pub trait Environment {
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl Environment for HashMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Environment for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// An environment with no variables.
pub struct NoVariables;

impl Environment for NoVariables {
    fn lookup(&self, _name: &str) -> Option<&str> {
        None
    }
}

/// An ordered list of variables where assigning an existing name replaces its
/// value in place, as BuildKit's environment lists do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvList {
    entries: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl EnvList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a list from `KEY=VALUE` strings; a string without `=` sets an
    /// empty value.
    pub fn from_key_values<I, S>(items: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Self::new();
        for item in items {
            let item = item.as_ref();
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            list.set(key, value);
        }
        list
    }

    pub fn set(&mut self, key: &str, value: &str) {
        match self.index.get(key) {
            Some(&i) => {
                let existing = &mut self.entries[i].1;
                existing.clear();
                existing.push_str(value);
            }
            None => {
                self.index.insert(key.to_string(), self.entries.len());
                self.entries.push((key.to_string(), value.to_string()));
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.index.get(key).map(|&i| self.entries[i].1.as_str())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The variables as `KEY=VALUE` strings, in assignment order.
    pub fn to_key_values(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }
}

impl Environment for EnvList {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

/// How words are processed. The defaults are those BuildKit uses to expand
/// instruction arguments.
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    escape: char,
    /// Keep quote characters in the output instead of removing them.
    pub raw_quotes: bool,
    /// Keep escape characters in the output instead of removing them.
    pub raw_escapes: bool,
    /// Treat quotes as ordinary characters.
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as written.
    pub skip_unset_env: bool,
}

impl Lexer {
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    /// Expands `word` into a single string, keeping white space.
    pub fn process_word(&self, word: &str, env: &dyn Environment) -> Result<String, ShellError> {
        if self.is_literal(word) {
            return Ok(word.to_string());
        }
        self.run(word, env, false).map(|(result, _)| result)
    }

    /// Expands `word` and splits the result into words at unquoted white space.
    pub fn process_words(
        &self,
        word: &str,
        env: &dyn Environment,
    ) -> Result<Vec<String>, ShellError> {
        self.run(word, env, true).map(|(_, words)| words)
    }

    /// A word with no variable, quote or escape expands to itself.
    fn is_literal(&self, word: &str) -> bool {
        !word.contains(['$', '\'', '"', self.escape])
    }

    fn run(
        &self,
        word: &str,
        env: &dyn Environment,
        split: bool,
    ) -> Result<(String, Vec<String>), ShellError> {
        let mut state = WordState {
            lexer: *self,
            env,
            text: word,
            pos: 0,
            raw_escapes: self.raw_escapes,
            split,
        };
        state.process_until(None, self.raw_escapes)
    }
}

struct WordState<'a> {
    lexer: Lexer,
    env: &'a dyn Environment,
    text: &'a str,
    /// Byte offset of the next character.
    pos: usize,
    raw_escapes: bool,
    /// Whether the caller wants the result split into words.
    split: bool,
}

#[derive(Default)]
struct Words {
    enabled: bool,
    current: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn new(enabled: bool) -> Self {
        Words {
            enabled,
            ..Words::default()
        }
    }

    fn add_char(&mut self, ch: char) {
        if !self.enabled {
            return;
        }
        if ch.is_whitespace() {
            if self.in_word && !self.current.is_empty() {
                self.words.push(std::mem::take(&mut self.current));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        if self.enabled {
            self.current.push(ch);
            self.in_word = true;
        }
    }

    fn add_string(&mut self, s: &str) {
        if self.enabled {
            for ch in s.chars() {
                self.add_char(ch);
            }
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        if self.enabled {
            self.current.push_str(s);
            self.in_word = true;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.words.push(self.current);
        }
        self.words
    }
}

impl WordState<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if let Some(ch) = ch {
            self.pos += ch.len_utf8();
        }
        ch
    }

    /// Where the characters from the current position that need no
    /// processing end.
    fn ordinary_run_end(&self, stop: Option<char>) -> usize {
        let quotes = !self.lexer.skip_process_quotes;
        let escape = self.lexer.escape;
        self.text[self.pos..]
            .find(|c: char| {
                c == '$' || c == escape || Some(c) == stop || (quotes && (c == '\'' || c == '"'))
            })
            .map_or(self.text.len(), |offset| self.pos + offset)
    }

    /// Moves past a character returned by `peek`.
    fn skip(&mut self, ch: char) {
        self.pos += ch.len_utf8();
    }

    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ShellError> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let outcome = self.process_until_inner(stop);
        self.raw_escapes = saved;
        outcome
    }

    fn process_until_inner(
        &mut self,
        stop: Option<char>,
    ) -> Result<(String, Vec<String>), ShellError> {
        let mut result = String::new();
        let mut words = Words::new(self.split);
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.skip(ch);
                return Ok((result, words.finish()));
            }
            let quotes = !self.lexer.skip_process_quotes;
            if ch == '$' {
                let value = self.process_dollar()?;
                result.push_str(&value);
                words.add_string(&value);
            } else if quotes && ch == '\'' {
                let value = self.process_single_quote()?;
                result.push_str(&value);
                words.add_raw_string(&value);
            } else if quotes && ch == '"' {
                let value = self.process_double_quote()?;
                result.push_str(&value);
                words.add_raw_string(&value);
            } else {
                self.skip(ch);
                if ch == self.lexer.escape {
                    if self.raw_escapes {
                        words.add_raw_char(ch);
                        result.push(ch);
                    }
                    // An escape at the very end of the word is dropped.
                    let Some(escaped) = self.next() else { break };
                    words.add_raw_char(escaped);
                    result.push(escaped);
                } else if self.split {
                    words.add_char(ch);
                    result.push(ch);
                } else {
                    // Copy the run of ordinary characters in one go.
                    let start = self.pos - ch.len_utf8();
                    let end = self.ordinary_run_end(stop);
                    result.push_str(&self.text[start..end]);
                    self.pos = end;
                }
            }
        }
        match stop {
            Some(stop) => Err(ShellError::Unterminated(stop)),
            None => Ok((result, words.finish())),
        }
    }

    fn process_single_quote(&mut self) -> Result<String, ShellError> {
        let mut result = String::new();
        let open = self.next();
        if self.lexer.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => return Err(ShellError::UnterminatedSingleQuote),
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, ShellError> {
        let mut result = String::new();
        let open = self.next();
        if self.lexer.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => return Err(ShellError::UnterminatedDoubleQuote),
                Some('"') => {
                    self.skip('"');
                    if self.lexer.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                }
                Some(mut ch) => {
                    self.skip(ch);
                    if ch == self.lexer.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            // Inside double quotes only these can be escaped;
                            // any other escape character stays literal.
                            Some(next)
                                if next == '"' || next == '$' || next == self.lexer.escape =>
                            {
                                ch = next;
                                self.skip(next);
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.env.lookup(name).map(str::to_string)
    }

    fn process_dollar(&mut self) -> Result<String, ShellError> {
        self.skip('$');
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.skip('{');
        match self.peek() {
            None => return Err(ShellError::MissingBrace),
            Some('{' | '}' | ':') => return Err(ShellError::BadSubstitution),
            Some(_) => {}
        }
        let name = self.process_name();
        let first = self.next();
        let mut modifier: String = first.map(String::from).unwrap_or_default();
        match first {
            Some('}') => Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(':') => {
                let op = self.next();
                modifier.extend(op);
                self.apply_modifier(&name, op, true, &modifier)
            }
            Some(op @ ('+' | '-' | '?' | '#' | '%')) => {
                self.apply_modifier(&name, Some(op), false, &modifier)
            }
            Some('/') => self.substitute(&name),
            None => Err(ShellError::MissingBrace),
            Some(_) => Err(ShellError::UnsupportedModifier(modifier)),
        }
    }

    fn apply_modifier(
        &mut self,
        name: &str,
        op: Option<char>,
        null_is_unset: bool,
        modifier: &str,
    ) -> Result<String, ShellError> {
        let raw_escapes = matches!(op, Some('#' | '%'));
        let (mut word, _) = self
            .process_until(Some('}'), raw_escapes)
            .map_err(|err| self.missing_at_end(err, ShellError::MissingBrace))?;
        let value = self.lookup(name);
        if self.lexer.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}{modifier}{word}}}"));
        }
        let empty = value
            .as_deref()
            .is_none_or(|v| null_is_unset && v.is_empty());
        match op {
            Some('-') => Ok(if empty {
                word
            } else {
                value.unwrap_or_default()
            }),
            Some('+') => Ok(if empty { String::new() } else { word }),
            Some('?') => {
                let default_message = match &value {
                    None => "is not allowed to be unset",
                    Some(v) if null_is_unset && v.is_empty() => "is not allowed to be empty",
                    Some(v) => return Ok(v.clone()),
                };
                let message = if word.is_empty() {
                    default_message.to_string()
                } else {
                    word
                };
                Err(ShellError::Required {
                    name: name.to_string(),
                    message,
                })
            }
            Some(op @ ('#' | '%')) if !null_is_unset => {
                let greedy = word.starts_with(op);
                if greedy {
                    word.remove(0);
                }
                let value = value.unwrap_or_default();
                if op == '%' {
                    trim_suffix(&word, &value, greedy)
                } else {
                    trim_prefix(&word, &value, greedy)
                }
            }
            _ => Err(ShellError::UnsupportedModifier(modifier.to_string())),
        }
    }

    fn substitute(&mut self, name: &str) -> Result<String, ShellError> {
        let replace_all = self.peek() == Some('/');
        if replace_all {
            self.skip('/');
        }
        let (pattern, _) = self
            .process_until(Some('/'), true)
            .map_err(|err| self.missing_at_end(err, ShellError::MissingSlash))?;
        let (replacement, _) = self
            .process_until(Some('}'), true)
            .map_err(|err| self.missing_at_end(err, ShellError::MissingBrace))?;
        let Some(value) = self.lookup(name) else {
            if self.lexer.skip_unset_env {
                return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
            }
            return Ok(String::new());
        };
        let re = shell_pattern_to_regex(&pattern, true, false)?;
        if replace_all {
            return Ok(re.replace_all(&value, replacement.as_str()).into_owned());
        }
        Ok(match re.find(&value) {
            Some(m) => format!(
                "{}{}{}",
                &value[..m.start()],
                replacement,
                &value[m.end()..]
            ),
            None => value,
        })
    }

    /// Reaching the end of the word while looking for a closing character is
    /// reported as that character missing.
    fn missing_at_end(&self, err: ShellError, missing: ShellError) -> ShellError {
        if self.peek().is_none() {
            missing
        } else {
            err
        }
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_numeric() {
                // Positional parameters: every digit belongs to the name.
                while let Some(digit) = self.peek().filter(|c| c.is_numeric()) {
                    name.push(digit);
                    self.skip(digit);
                }
                return name;
            }
            if name.is_empty() && is_special_parameter(ch) {
                self.skip(ch);
                return ch.to_string();
            }
            if !(ch.is_alphanumeric() || ch == '_') {
                break;
            }
            name.push(ch);
            self.skip(ch);
        }
        name
    }
}

fn is_special_parameter(ch: char) -> bool {
    matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// Converts a shell wildcard pattern (`*`, `?`, `\` escapes; no brackets) to a
/// regular expression. `greedy` picks the longest match for `*`.
fn shell_pattern_to_regex(
    pattern: &str,
    greedy: bool,
    anchored: bool,
) -> Result<Regex, ShellError> {
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let mut chars = pattern.chars().peekable();
    while let Some(tok) = chars.next() {
        match tok {
            '*' => out.push_str(star),
            '?' => out.push('.'),
            '\\' => {
                // `}` and `/` are escaped only to get them past the `${...}`
                // syntax; the escape is not part of the pattern.
                if matches!(chars.peek(), Some('}' | '/')) {
                    continue;
                }
                match chars.next() {
                    Some(escaped @ ('*' | '?' | '\\')) => {
                        out.push('\\');
                        out.push(escaped);
                    }
                    other => {
                        return Err(ShellError::InvalidPatternEscape {
                            pattern: pattern.to_string(),
                            escaped: other.map(String::from).unwrap_or_default(),
                        })
                    }
                }
            }
            literal => out.push_str(&regex::escape(literal.encode_utf8(&mut [0; 4]))),
        }
    }
    Regex::new(&out).map_err(|err| ShellError::InvalidPattern {
        pattern: pattern.to_string(),
        message: err.to_string(),
    })
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellError> {
    let re = shell_pattern_to_regex(pattern, greedy, true)?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_string(),
        None => value.to_string(),
    })
}

/// Finding the shortest match at the end of a string is done by reversing
/// both the pattern and the string and removing a prefix instead.
fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellError> {
    let reversed: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

/// Reverses a pattern while keeping each escape in front of the character it
/// escapes: `a\*c` becomes `c\*a`.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = vec!['\0'; chars.len()];
    let Some(last) = chars.len().checked_sub(1) else {
        return String::new();
    };
    let mut i = 0;
    while i <= last {
        let out_index = last - i;
        if chars[i] == '\\' && i != last {
            out[out_index - 1] = '\\';
            out[out_index] = chars[i + 1];
            i += 2;
        } else {
            out[out_index] = chars[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expand(word: &str, pairs: &[(&str, &str)]) -> Result<String, ShellError> {
        Lexer::new('\\').process_word(word, &env(pairs))
    }

    #[test]
    fn pattern_conversion_escapes_regex_syntax() {
        let cases = [
            ("*", "^.*"),
            ("?", "^."),
            ("\\*", "^\\*"),
            (
                "(()[]{\\}^$.\\*\\?|\\\\",
                "^\\(\\(\\)\\[\\]\\{\\}\\^\\$\\.\\*\\?\\|\\\\",
            ),
        ];
        for (pattern, expected) in cases {
            let re = shell_pattern_to_regex(pattern, true, true).expect(pattern);
            assert_eq!(re.as_str(), expected, "pattern {pattern}");
        }
        for invalid in ["\\", "\\x", "\\\\\\"] {
            assert!(
                shell_pattern_to_regex(invalid, true, true).is_err(),
                "{invalid}"
            );
        }
    }

    #[test]
    fn patterns_reverse_with_their_escapes() {
        let cases = [
            ("a\\*c", "c\\*a"),
            ("\\\\\\ab", "b\\a\\\\"),
            ("ab\\", "\\ba"),
            ("👽\\🚀🖖", "🖖\\🚀👽"),
            ("\\\\b", "b\\\\"),
            ("", ""),
        ];
        for (pattern, expected) in cases {
            assert_eq!(reverse_pattern(pattern), expected, "pattern {pattern}");
        }
    }

    #[test]
    fn required_variables_report_their_message() {
        let set = [("VAR", "plain"), ("ARG", "x")];
        let empty = [("VAR", ""), ("ARG", "x")];
        let unset = [("ARG", "x")];
        let no_empty = "${VAR:?message here$ARG}";
        let no_unset = "${VAR?message here$ARG}";
        assert_eq!(expand(no_empty, &set).as_deref(), Ok("plain"));
        assert!(expand(no_empty, &empty)
            .unwrap_err()
            .to_string()
            .contains("message herex"));
        assert!(expand(no_empty, &unset)
            .unwrap_err()
            .to_string()
            .contains("message herex"));
        assert_eq!(expand(no_unset, &set).as_deref(), Ok("plain"));
        assert_eq!(expand(no_unset, &empty).as_deref(), Ok(""));
        assert!(expand(no_unset, &unset)
            .unwrap_err()
            .to_string()
            .contains("message herex"));
        assert_eq!(
            expand("${X?}", &[]).unwrap_err().to_string(),
            "X: is not allowed to be unset"
        );
        assert_eq!(
            expand("${X:?}", &[("X", "")]).unwrap_err().to_string(),
            "X: is not allowed to be empty"
        );
    }

    #[test]
    fn modifiers_follow_posix_rules() {
        let vars = [("FOO", "xxx"), ("BAR", "")];
        let cases = [
            ("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", "xxx  ccc"),
            ("${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}", "xxx bbb ccc"),
            ("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", "aaa bbb "),
            ("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", "aaa  "),
            ("${FOO:-}", "xxx"),
            ("${BAR?bbb}", ""),
        ];
        for (word, expected) in cases {
            assert_eq!(expand(word, &vars).as_deref(), Ok(expected), "{word}");
        }
        for word in [
            "${FOO=aaa}",
            "${FOO=:aaa}",
            "${BAZ?ccc}",
            "${BAR:?bbb}",
            "${FOO:#x}",
        ] {
            assert!(expand(word, &vars).is_err(), "{word} should fail");
        }
    }

    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

    #[test]
    fn prefix_and_suffix_removal() {
        let cases: &[Case] = &[
            (
                "${FOO#()[]{\\}^$.\\*\\?|\\\\}",
                &[("FOO", "()[]{}^$.*?|\\x")],
                "x",
            ),
            ("${FOO%%\\**}", &[("FOO", "xx**")], "xx"),
            ("${FOO#*x*y}", &[("FOO", "xxyy")], "y"),
            ("${FOO#*}", &[("FOO", "xxyy")], "xxyy"),
            ("${FOO#$BAR}", &[("FOO", "xxyy"), ("BAR", "x")], "xyy"),
            ("${FOO#$BAR}", &[("FOO", "xxyy"), ("BAR", "")], "xxyy"),
            ("${FOO#}", &[("FOO", "xxyy")], "xxyy"),
            ("${FOO##*x}", &[("FOO", "xxyy")], "yy"),
            ("${FOO##}", &[("FOO", "xxyy")], "xxyy"),
            ("${FOO#?\\?}", &[("FOO", "???y")], "?y"),
            ("${ABC:-.}${FOO%x}${ABC:-.}", &[("FOO", "xxyy")], ".xxyy."),
            ("${FOO%%\\**\\*}", &[("FOO", "a***yy*")], "a"),
            ("${FOO%}", &[("FOO", "xxyy")], "xxyy"),
            ("${FOO%%$BAR}", &[("FOO", "xxyy"), ("BAR", "")], "xxyy"),
            ("${FOO%.*}", &[("FOO", "app.tar.gz")], "app.tar"),
            ("${FOO%%.*}", &[("FOO", "app.tar.gz")], "app"),
        ];
        for (word, vars, expected) in cases {
            assert_eq!(expand(word, vars).as_deref(), Ok(*expected), "{word}");
        }
    }

    #[test]
    fn substitution_replaces_first_or_all_matches() {
        let cases: &[Case] = &[
            (
                "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
                &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", "\\*/")],
                "/foo.*/*.txt - /foo..*.txt",
            ),
            (
                "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
                &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
                "/tmp/bar.txt - /bar.txt",
            ),
            (
                "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
                &[
                    ("FOO", "/a/foo/b/c.txt"),
                    ("NEEDLE", "/?/"),
                    ("REPLACEMENT", "/"),
                ],
                "/foo/b/c.txt - /foo/c.txt",
            ),
            (
                "${FOO/$NEEDLE/$REPLACEMENT}",
                &[
                    ("FOO", "http://google.de"),
                    ("NEEDLE", "http://"),
                    ("REPLACEMENT", "https://"),
                ],
                "https://google.de",
            ),
            (
                "${FOO//\\//\\/}",
                &[("FOO", "/tmp/foo.txt")],
                "\\/tmp\\/foo.txt",
            ),
            ("${FOO/$BAR/ww}", &[("FOO", "xxyy"), ("BAR", "")], "wwxxyy"),
            ("${FOO///}", &[("FOO", "xxyy")], "xxyy"),
            ("${FOO///}", &[], ""),
        ];
        for (word, vars, expected) in cases {
            assert_eq!(expand(word, vars).as_deref(), Ok(*expected), "{word}");
        }
        assert_eq!(
            expand("${FOO//ww}", &[("FOO", "xxyy")]),
            Err(ShellError::MissingSlash)
        );
        assert_eq!(
            expand("${FOO//}", &[("FOO", "xxyy")]),
            Err(ShellError::MissingSlash)
        );
    }

    #[test]
    fn platform_style_names_expand() {
        let word = "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz";
        let vars = [
            ("VERSION", "v1.2.3"),
            ("TARGETOS", "linux"),
            ("TARGETARCH", "arm"),
            ("TARGETVARIANT", "v7"),
        ];
        assert_eq!(
            expand(word, &vars).as_deref(),
            Ok("something-v1.2.3.linux-arm-v7.tar.gz")
        );
        let vars = [
            ("VERSION", "v1.2.3"),
            ("TARGETOS", "linux"),
            ("TARGETARCH", "amd64"),
        ];
        assert_eq!(
            expand(word, &vars).as_deref(),
            Ok("something-v1.2.3.linux-amd64.tar.gz")
        );
    }

    #[test]
    fn skip_unset_env_keeps_references() {
        let mut lexer = Lexer::new('\\');
        lexer.skip_unset_env = true;
        let vars = env(&[("SET", "v")]);
        assert_eq!(
            lexer
                .process_word("$SET $UNSET ${UNSET} ${UNSET:-x}", &vars)
                .as_deref(),
            Ok("v $UNSET ${UNSET} ${UNSET:-x}")
        );
    }

    #[test]
    fn backtick_escape_character() {
        let lexer = Lexer::new('`');
        assert_eq!(
            lexer.process_word("a`$b c:\\d", &NoVariables).as_deref(),
            Ok("a$b c:\\d")
        );
    }

    #[test]
    fn env_list_replaces_in_place() {
        let mut list = EnvList::from_key_values(["A=1", "B=2", "C"]);
        list.set("A", "3");
        assert_eq!(list.to_key_values(), ["A=3", "B=2", "C="]);
        assert_eq!(list.lookup("C"), Some(""));
        assert_eq!(list.lookup("D"), None);
    }
}
