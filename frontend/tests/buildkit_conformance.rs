//! BuildKit's own parser cases and expansion tables (testdata/buildkit, see
//! its README.md), run against our parser and shell lexer.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use kiln_frontend::ast::{Args, Instruction};
use kiln_frontend::shell::{EnvList, Lexer};

fn testdata(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/buildkit")
        .join(path)
}

fn case_dirs(dir: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(testdata(dir))
        .unwrap_or_else(|err| panic!("reading {dir}: {err}"))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no cases in {dir}");
    dirs
}

/// Go's strconv.Quote, which BuildKit's AST dump uses.
fn go_quote(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c == ' ' || !(c.is_control() || c.is_whitespace()) => out.push(c),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

fn dump_args(args: &Args, out: &mut String) {
    let mut push = |s: &str| {
        out.push(' ');
        out.push_str(&go_quote(s));
    };
    match args {
        Args::Empty => {}
        Args::Json { values, .. } => values.iter().for_each(|v| push(v)),
        Args::Words(words) => words.iter().for_each(|w| push(&w.text)),
        Args::Text(word) => push(&word.text),
        Args::KeyValues(pairs) => {
            for pair in pairs {
                push(&pair.key.text);
                push(&pair.value.text);
                push(if pair.equals { "=" } else { "" });
            }
        }
        Args::Healthcheck { kind, command } => {
            push(&kind.text);
            dump_args(command, out);
        }
        Args::Onbuild(trigger) => {
            out.push_str(" (");
            out.push_str(&dump(trigger));
            out.push(')');
        }
    }
}

/// BuildKit's Node.Dump() of one instruction.
fn dump(instruction: &Instruction) -> String {
    let mut out = instruction.name.text.to_lowercase();
    if !instruction.flags.is_empty() {
        let flags: Vec<String> = instruction
            .flags
            .iter()
            .map(|f| go_quote(&f.text))
            .collect();
        out.push_str(&format!(" [{}]", flags.join(" ")));
    }
    dump_args(&instruction.args, &mut out);
    out
}

#[test]
fn parser_cases_match_buildkit_dumps() {
    let mut failures = Vec::new();
    let dirs = case_dirs("testfiles");
    for dir in &dirs {
        let bytes = fs::read(dir.join("Dockerfile")).expect("Dockerfile");
        let expected = fs::read_to_string(dir.join("result")).expect("result");
        let dockerfile = match kiln_frontend::parse_bytes(&bytes, "Dockerfile") {
            Ok(dockerfile) => dockerfile,
            Err(err) => {
                failures.push(format!("{}: {err}", dir.display()));
                continue;
            }
        };
        let actual: Vec<String> = dockerfile
            .instructions
            .iter()
            .map(|i| format!("({})", dump(i)))
            .collect();
        let expected: Vec<&str> = expected.lines().map(str::trim_end).collect();
        if actual != expected {
            failures.push(format!(
                "{}:\n expected:\n  {}\n actual:\n  {}",
                dir.display(),
                expected.join("\n  "),
                actual.join("\n  ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
}

#[test]
fn negative_parser_cases_are_rejected() {
    for dir in case_dirs("testfiles-negative") {
        let bytes = fs::read(dir.join("Dockerfile")).expect("Dockerfile");
        assert!(
            kiln_frontend::parse_bytes(&bytes, "Dockerfile").is_err(),
            "{} parsed but must fail",
            dir.display()
        );
    }
}

#[test]
fn instruction_lines_match_buildkit() {
    let text = fs::read_to_string(testdata("testfile-line/Dockerfile")).expect("Dockerfile");
    let dockerfile = kiln_frontend::parse(&text, "Dockerfile").expect("parses");
    let lines: Vec<(usize, usize)> = dockerfile
        .instructions
        .iter()
        .map(|i| (i.start_line, i.end_line))
        .collect();
    assert_eq!(lines, [(5, 5), (11, 12), (17, 31)]);
}

#[test]
fn expansion_table_matches_buildkit() {
    let text = fs::read_to_string(testdata("envVarTest")).expect("envVarTest");
    let env: HashMap<String, String> = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let lexer = Lexer::new('\\');
    let mut checked = 0;
    let mut failures = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.trim().split('|').collect();
        assert_eq!(fields.len(), 3, "line {}: {line:?}", number + 1);
        let (tag, input, expected) = (fields[0].trim(), fields[1].trim(), fields[2].trim());
        if tag == "W" {
            continue;
        }
        checked += 1;
        let result = lexer.process_word(input, &env);
        let ok = match (&result, expected) {
            (Err(_), "error") => true,
            (Ok(actual), expected) => actual == expected,
            (Err(_), _) => false,
        };
        if !ok {
            failures.push(format!(
                "line {}: {input:?} gave {result:?}, expected {expected:?}",
                number + 1
            ));
        }
    }
    assert!(checked > 200, "only {checked} cases read");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn word_splitting_table_matches_buildkit() {
    let text = fs::read_to_string(testdata("wordsTest")).expect("wordsTest");
    let lexer = Lexer::new('\\');
    let mut env = EnvList::new();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(assignment) = line.strip_prefix("ENV ") {
            let assignment = assignment.trim_start_matches(' ');
            let (key, value) = assignment.split_once('=').expect("ENV line has =");
            env.set(key, value);
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields.len(), 2, "line {}: {line:?}", number + 1);
        let input = fields[0].trim();
        let expected: Vec<String> = fields[1]
            .trim_start_matches(' ')
            .split(',')
            .map(str::to_string)
            .collect();
        let actual = lexer
            .process_words(input, &env)
            .unwrap_or_else(|_| vec!["error".to_string()]);
        checked += 1;
        if actual != expected {
            failures.push(format!(
                "line {}: {input:?} gave {actual:?}, expected {expected:?}",
                number + 1
            ));
        }
    }
    assert!(checked > 20, "only {checked} cases read");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
