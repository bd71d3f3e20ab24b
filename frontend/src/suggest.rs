//! "Did you mean ...?" suggestions for misspelt names.

/// The candidate closest to `input` (ignoring case), if it is close enough to
/// be a plausible typo: at most two edits, whatever the length, as BuildKit
/// suggests. A swap of two neighbouring letters is one edit.
pub fn closest<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let input = input.to_lowercase();
    let limit = 2;
    candidates
        .iter()
        .map(|candidate| (edit_distance(&input, &candidate.to_lowercase()), *candidate))
        .filter(|&(distance, _)| distance > 0 && distance <= limit)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and transpositions of adjacent characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["FROM", "RUN", "COPY", "ENTRYPOINT", "HEALTHCHECK", "USER"];

    #[test]
    fn suggests_close_names() {
        assert_eq!(closest("RUNN", NAMES), Some("RUN"));
        assert_eq!(closest("form", NAMES), Some("FROM"));
        assert_eq!(closest("COPPY", NAMES), Some("COPY"));
        assert_eq!(closest("entrypiont", NAMES), Some("ENTRYPOINT"));
        assert_eq!(closest("HEALTCHECK", NAMES), Some("HEALTHCHECK"));
        assert_eq!(closest("usr", NAMES), Some("USER"));
        // Two edits away, however short the word.
        let mount_types = ["bind", "cache", "tmpfs", "secret", "ssh"];
        assert_eq!(closest("tmp", &mount_types), Some("tmpfs"));
    }

    #[test]
    fn no_suggestion_for_distant_or_identical_names() {
        assert_eq!(closest("BANANA", NAMES), None);
        assert_eq!(closest("XY", NAMES), None);
        assert_eq!(closest("RUN", NAMES), None);
    }

    #[test]
    fn distance_counts_transpositions_once() {
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
