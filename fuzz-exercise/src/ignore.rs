//! `.dockerignore` and `--exclude` patterns. The input's lines up to the
//! first empty line are the rules, the rest are paths to match.

use kiln_frontend::DockerIgnore;

pub fn exercise(data: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(data) else {
        return 0;
    };
    let (rules, paths) = text.split_once("\n\n").unwrap_or((text, "a/b/c"));
    let Ok(ignore) = DockerIgnore::parse(rules, ".dockerignore") else {
        return 0;
    };
    let mut excluded = 0;
    for path in paths.lines().filter(|path| is_clean(path)) {
        let is_excluded = ignore.is_excluded(path);
        excluded += usize::from(is_excluded);
        // A directory the walk may skip has nothing below it that the rules
        // keep.
        let parts: Vec<&str> = path.split('/').collect();
        for depth in 1..parts.len() {
            let ancestor = parts[..depth].join("/");
            assert!(
                !ignore.can_skip_dir(&ancestor) || is_excluded,
                "{ancestor:?} may be skipped, yet {path:?} below it is kept"
            );
        }
    }
    1 + excluded
}

/// A relative path as a walk of the context gives it: non-empty
/// components, none of them `.` or `..`.
fn is_clean(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}
