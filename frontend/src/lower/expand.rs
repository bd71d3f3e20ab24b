//! Variable expansion of instruction words, with errors that point at the
//! word, and the instruction text progress output shows.

use crate::ast::{Source as DockerfileSource, Word};
use crate::error::{Error, ErrorKind};
use crate::shell::{EnvList, Lexer};

/// Expands the words of instructions that come from `source`: the
/// Dockerfile, or the text of an ONBUILD trigger.
#[derive(Clone, Copy)]
pub(super) struct Expander<'s> {
    pub(super) lexer: Lexer,
    pub(super) source: &'s DockerfileSource,
}

impl Expander<'_> {
    pub(super) fn word(&self, word: &Word, env: &EnvList) -> Result<String, Error> {
        self.lexer.process_word(&word.text, env).map_err(|error| {
            self.source.error(
                ErrorKind::Expansion {
                    word: word.text.clone(),
                    error,
                },
                word.pos,
            )
        })
    }

    /// The word expanded and split into words, as EXPOSE reads its values.
    pub(super) fn words(&self, word: &Word, env: &EnvList) -> Result<Vec<String>, Error> {
        self.lexer.process_words(&word.text, env).map_err(|error| {
            self.source.error(
                ErrorKind::Expansion {
                    word: word.text.clone(),
                    error,
                },
                word.pos,
            )
        })
    }

    /// The instruction as progress output shows it: variables that are set
    /// are expanded, everything else is left as written.
    pub(super) fn display_text(&self, text: &str, env: &EnvList) -> String {
        let mut shown = if text.contains('$') {
            let mut display = self.lexer;
            display.raw_quotes = true;
            display.raw_escapes = true;
            display.skip_unset_env = true;
            display
                .process_word(text, env)
                .unwrap_or_else(|_| text.to_string())
        } else {
            text.to_string()
        };
        let name_end = shown.find(' ').unwrap_or(shown.len());
        shown[..name_end].make_ascii_uppercase();
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_expands_known_variables_only() {
        let source = DockerfileSource::new("Dockerfile", "");
        let expander = Expander {
            lexer: Lexer::new('\\'),
            source: &source,
        };
        let env = EnvList::from_key_values(["V=1.2"]);
        assert_eq!(
            expander.display_text("run echo $V $UNSET \"q\"", &env),
            "RUN echo 1.2 $UNSET \"q\""
        );
    }
}
