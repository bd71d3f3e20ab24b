//! Slash-separated path arithmetic for paths inside images, as Go's `path`
//! package does it (lexically, never touching a file system).

/// Go's `path.Clean`: the shortest lexically equivalent path.
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Joins `path` to `dir` unless it is absolute, then cleans the result.
pub fn resolve(dir: &str, path: &str) -> String {
    if path.starts_with('/') {
        clean(path)
    } else {
        clean(&format!("/{dir}/{path}"))
    }
}

/// Go's `path.Base`: the last element.
pub fn base(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return if path.is_empty() {
            ".".to_string()
        } else {
            "/".to_string()
        };
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed).to_string()
}

/// Resolves a COPY/ADD destination against the working directory, keeping a
/// trailing `/` (or `/.`) that says the destination is a directory.
pub fn destination(workdir: &str, dest: &str) -> String {
    let dest = if dest.is_empty() || dest == "." {
        "./"
    } else {
        dest
    };
    let mut resolved = resolve(workdir, dest);
    if (dest.ends_with('/') || dest.ends_with("/.")) && !resolved.ends_with('/') {
        resolved.push('/');
    }
    resolved
}

/// Whether a path, read from its root, climbs above it at any point
/// (`../x`, `a/../../x`, `/../x`).
pub fn escapes_root(path: &str) -> bool {
    let mut depth = 0usize;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return true,
            },
            _ => depth += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_matches_go() {
        let cases = [
            ("", "."),
            ("abc", "abc"),
            ("abc/def/", "abc/def"),
            ("a/b/c/..", "a/b"),
            ("/../a", "/a"),
            ("../../a", "../../a"),
            ("a/../..", ".."),
            ("//a//b/./c/", "/a/b/c"),
            ("/", "/"),
            ("./", "."),
        ];
        for (input, expected) in cases {
            assert_eq!(clean(input), expected, "{input}");
        }
    }

    #[test]
    fn resolve_and_destination() {
        assert_eq!(resolve("/app", "src"), "/app/src");
        assert_eq!(resolve("/app", "/etc/x/"), "/etc/x");
        assert_eq!(resolve("/app", "../../x"), "/x");
        assert_eq!(destination("/app", "."), "/app/");
        assert_eq!(destination("/app", ""), "/app/");
        assert_eq!(destination("/", "."), "/");
        assert_eq!(destination("/app", "bin/"), "/app/bin/");
        assert_eq!(destination("/app", "bin/."), "/app/bin/");
        assert_eq!(destination("/app", "/usr/bin/tool"), "/usr/bin/tool");
    }

    #[test]
    fn base_and_escapes() {
        assert_eq!(base("/run/secrets/x"), "x");
        assert_eq!(base("a/"), "a");
        assert_eq!(base("/"), "/");
        assert!(escapes_root("../x"));
        assert!(escapes_root("a/../../x"));
        assert!(!escapes_root("a/../x"));
        assert!(escapes_root("/../x"));
        assert!(!escapes_root("./a/b/../c"));
    }
}
