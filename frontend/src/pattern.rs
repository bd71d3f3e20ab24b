//! Path patterns as Docker reads them, one implementation for COPY
//! sources, `.dockerignore` and `--exclude`: each `/`-separated component
//! matched as Go's `filepath.Match` matches a name (`*`, `?`, `[...]`
//! classes, `\` escapes), and a `**` component standing for any number of
//! directories.

/// A whole-path pattern (`docs/**/*.md`), matched against `/`-separated
/// relative paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// `**`: any number of components (at least one when it ends the
    /// pattern: `logs/**` is what is inside `logs`, not `logs` itself).
    AnyDirs,
    /// One component, a glob.
    Name(String),
}

impl PathPattern {
    /// Reads a cleaned pattern; a malformed character class is an error
    /// naming it.
    pub fn parse(pattern: &str) -> Result<PathPattern, String> {
        let mut parts = Vec::new();
        for component in pattern.split('/') {
            if component == "**" {
                if parts.last() != Some(&Part::AnyDirs) {
                    parts.push(Part::AnyDirs);
                }
                continue;
            }
            check_component(component)?;
            parts.push(Part::Name(component.to_string()));
        }
        Ok(PathPattern { parts })
    }

    /// Whether the whole of `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        let components: Vec<&str> = path.split('/').collect();
        matches_from(&self.parts, &components)
    }

    /// Whether the pattern could match `dir` (given as its components), one
    /// of its ancestors, or something below it: false only when some
    /// component of `dir` rules the pattern out.
    pub fn could_match_inside(&self, dir: &[&str]) -> bool {
        for (part, component) in self.parts.iter().zip(dir) {
            match part {
                Part::AnyDirs => return true,
                Part::Name(glob) if component_matches(glob, component) => {}
                Part::Name(_) => return false,
            }
        }
        true
    }
}

/// Matches parts against components, a table of which suffixes of the
/// parts match which suffixes of the path: time is bounded by the product
/// of their lengths, however many `**` the pattern has.
fn matches_from(parts: &[Part], components: &[&str]) -> bool {
    let (p, c) = (parts.len(), components.len());
    // matched[i][j]: parts[i..] match components[j..].
    let mut matched = vec![vec![false; c + 1]; p + 1];
    matched[p][c] = true;
    for i in (0..p).rev() {
        for j in (0..=c).rev() {
            matched[i][j] = match &parts[i] {
                Part::AnyDirs if i + 1 == p => j < c,
                Part::AnyDirs => matched[i + 1][j] || (j < c && matched[i][j + 1]),
                Part::Name(glob) => {
                    j < c && component_matches(glob, components[j]) && matched[i + 1][j + 1]
                }
            };
        }
    }
    matched[0][0]
}

/// Fails on a component whose character class is not closed.
fn check_component(component: &str) -> Result<(), String> {
    let chars: Vec<char> = component.chars().collect();
    let mut index = 0;
    while index < chars.len() {
        match chars[index] {
            '\\' => index += 2,
            '[' => match class_match(&chars[index + 1..], '\0') {
                Some((_, rest)) => index = chars.len() - rest.len(),
                None => return Err(format!("unterminated character class in {component:?}")),
            },
            _ => index += 1,
        }
    }
    Ok(())
}

/// Go's `filepath.Match` for one path component: `*`, `?`, `[...]`
/// classes (with `^` negation and ranges) and `\` escapes.
pub fn component_matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    match_from(&pattern, &name)
}

/// Matches without recursion: each token but `*` matches exactly one
/// character, so on a mismatch only the last `*` needs to take one more
/// character. Time is bounded by the product of the lengths, however many
/// stars the pattern has.
fn match_from(pattern: &[char], name: &[char]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where to resume after the last `*`: the pattern after it, and the
    // name position it has covered up to.
    let mut resume: Option<(usize, usize)> = None;
    while n < name.len() {
        if pattern.get(p) == Some(&'*') {
            p += 1;
            resume = Some((p, n));
            continue;
        }
        if let Some(consumed) = single_match(&pattern[p..], name[n]) {
            p += consumed;
            n += 1;
            continue;
        }
        match resume {
            Some((after_star, covered)) => {
                p = after_star;
                n = covered + 1;
                resume = Some((after_star, n));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Whether the pattern's first token (not `*`) matches `c`; returns how
/// many pattern characters it takes.
fn single_match(pattern: &[char], c: char) -> Option<usize> {
    match pattern.first()? {
        '?' => Some(1),
        '[' => match class_match(&pattern[1..], c) {
            Some((true, after)) => Some(pattern.len() - after.len()),
            _ => None,
        },
        '\\' if pattern.len() > 1 => (pattern[1] == c).then_some(2),
        &literal => (literal == c).then_some(1),
    }
}

/// Matches `c` against the class starting after `[`; returns whether it
/// matched and the pattern after `]`, or `None` for a malformed class.
fn class_match(class: &[char], c: char) -> Option<(bool, &[char])> {
    let (negated, mut rest) = match class.first() {
        Some('^') | Some('!') => (true, &class[1..]),
        _ => (false, class),
    };
    let mut matched = false;
    let mut first = true;
    loop {
        match rest.first()? {
            ']' if !first => return Some((matched != negated, &rest[1..])),
            _ => {}
        }
        first = false;
        let (low, after) = class_char(rest)?;
        let (high, after) =
            if after.first() == Some(&'-') && after.get(1).is_some_and(|&c| c != ']') {
                class_char(&after[1..])?
            } else {
                (low, after)
            };
        if low <= c && c <= high {
            matched = true;
        }
        rest = after;
    }
}

fn class_char(pattern: &[char]) -> Option<(char, &[char])> {
    match pattern {
        ['\\', escaped, rest @ ..] => Some((*escaped, rest)),
        [c, rest @ ..] => Some((*c, rest)),
        [] => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_follow_go_rules() {
        let cases = [
            ("*.txt", "a.txt", true),
            ("*.txt", "a.md", false),
            ("file?", "file1", true),
            ("file?", "file10", false),
            ("[a-c]*", "banana", true),
            ("[^a-c]*", "banana", false),
            ("[!a-c]*", "date", true),
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("[", "[", false),
            ("a*", "a", true),
            ("*b", "ab", true),
            ("a*b*", "ab", true),
            ("*?", "", false),
            ("*x*", "abxab", true),
            ("a*[0-9]", "abc7", true),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(
                component_matches(pattern, name),
                expected,
                "{pattern} vs {name}"
            );
        }
        // Many stars against a long name that never matches: a matcher
        // that backtracks into every star would take years here.
        assert!(!component_matches(
            "*a*a*a*a*a*a*a*a*a*a*a*a*b",
            &"a".repeat(60)
        ));
    }

    #[test]
    fn double_stars_stand_for_any_number_of_directories() {
        let pattern = PathPattern::parse("a/**/c").expect("valid");
        assert!(pattern.matches("a/c"));
        assert!(pattern.matches("a/b/x/c"));
        assert!(!pattern.matches("a/b/x/d"));
        let inside = PathPattern::parse("logs/**").expect("valid");
        assert!(inside.matches("logs/x/y"));
        assert!(!inside.matches("logs"));
        assert!(!inside.matches("logsx/y"));
        let anywhere = PathPattern::parse("**/*.md").expect("valid");
        assert!(anywhere.matches("README.md"));
        assert!(anywhere.matches("docs/a/README.md"));
        assert!(!anywhere.matches("README.mdx"));
    }

    #[test]
    fn many_double_stars_take_no_time() {
        let pattern = PathPattern::parse(&format!("{}c", "**/a/".repeat(30))).expect("valid");
        assert!(!pattern.matches(&format!("{}b", "a/".repeat(40))));
        assert!(pattern.matches(&format!("{}c", "a/".repeat(40))));
    }

    #[test]
    fn unclosed_classes_are_errors() {
        assert!(PathPattern::parse("[unclosed").is_err());
        assert!(PathPattern::parse("ok/[a-c]").is_ok());
        assert!(PathPattern::parse("\\[literal").is_ok());
    }
}
