//! The Dockerfile parser and lowering: any input parses or fails with an
//! error, and whatever parses lowers or fails with an error.

use kiln_frontend::shell::{EnvList, Lexer};
use kiln_frontend::{DockerIgnore, LowerOptions, UnknownImages};

/// Parses and lowers `data` as a Dockerfile (with and without a target),
/// and feeds it to the ignore-file parser and the shell lexer. Returns how
/// many of those succeeded.
pub fn exercise(data: &[u8]) -> usize {
    let mut outcomes = 0;
    if let Ok(dockerfile) = kiln_frontend::parse_bytes(data, "Dockerfile") {
        let mut options = LowerOptions::default();
        options.build_args.insert("ARG1".into(), "value".into());
        options.allow_insecure = true;
        outcomes +=
            usize::from(kiln_frontend::lower(&dockerfile, &options, &mut UnknownImages).is_ok());
        options.target = Some("build".into());
        outcomes +=
            usize::from(kiln_frontend::lower(&dockerfile, &options, &mut UnknownImages).is_ok());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let rules = DockerIgnore::parse(text, ".dockerignore");
        outcomes += usize::from(rules.map(|r| r.is_excluded(text)).unwrap_or(false));
        let env = EnvList::from_key_values(["A=1", "EMPTY="]);
        outcomes += usize::from(Lexer::new('\\').process_words(text, &env).is_ok());
    }
    outcomes
}
