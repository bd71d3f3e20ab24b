//! The text BuildKit writes into an image's history (`created_by`). BuildKit
//! formats it with Go's `fmt` verbs; these helpers reproduce their output so
//! that `docker history` reads the same for images from either builder.

use std::fmt::Write;

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        push_escaped(&mut out, c, '"');
    }
    out.push('"');
    out
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `%v` of a `[]string`: `[a b]`.
pub fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// Go's `%q` of an integer: a quoted character literal.
pub fn go_quote_rune(value: i64) -> String {
    let mut out = String::from('\'');
    match u32::try_from(value).ok().and_then(char::from_u32) {
        Some(c) => push_escaped(&mut out, c, '\''),
        None => out.push('\u{fffd}'),
    }
    out.push('\'');
    out
}

fn push_escaped(out: &mut String, c: char, quote: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        c if c == quote => {
            out.push('\\');
            out.push(c);
        }
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        c if (c as u32) < 0x20 || c == '\u{7f}' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if c == ' ' || !(c.is_control() || c.is_whitespace()) => out.push(c),
        c if (c as u32) < 0x10000 => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\U{:08x}", c as u32);
        }
    }
}

/// Go's `time.Duration.String()` of a number of nanoseconds: `1m30s`,
/// `1.5s`, `300ms`, `0s`.
pub fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_string();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    if u < 1_000_000_000 {
        let (unit, precision) = if u < 1_000 {
            ("ns", 0)
        } else if u < 1_000_000 {
            ("\u{b5}s", 3)
        } else {
            ("ms", 6)
        };
        return format!("{sign}{}{unit}", fraction(u, precision));
    }
    let seconds = fraction(u % 60_000_000_000, 9);
    let minutes = u / 60_000_000_000;
    let hours = minutes / 60;
    match (hours, minutes % 60) {
        (0, 0) => format!("{sign}{seconds}s"),
        (0, m) => format!("{sign}{m}m{seconds}s"),
        (h, m) => format!("{sign}{h}h{m}m{seconds}s"),
    }
}

/// `value / 10^precision` with trailing zeros of the fraction removed.
fn fraction(value: u64, precision: u32) -> String {
    let scale = 10u64.pow(precision);
    let whole = value / scale;
    let mut frac = format!("{:0width$}", value % scale, width = precision as usize);
    while frac.ends_with('0') {
        frac.pop();
    }
    if frac.is_empty() {
        whole.to_string()
    } else {
        format!("{whole}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_matches_go() {
        assert_eq!(
            go_quote("a \"b\" \\ \n\t\u{0}é☃"),
            "\"a \\\"b\\\" \\\\ \\n\\t\\x00é☃\""
        );
        assert_eq!(go_quote("\u{a0}"), "\"\\u00a0\"");
        assert_eq!(
            go_quote_list(&["/bin/sh".into(), "-c".into(), "echo \"hi\"".into()]),
            "[\"/bin/sh\" \"-c\" \"echo \\\"hi\\\"\"]"
        );
        assert_eq!(go_list(&["/a".into(), "/b".into()]), "[/a /b]");
        assert_eq!(go_quote_rune(3), "'\\x03'");
        assert_eq!(go_quote_rune(0), "'\\x00'");
        assert_eq!(go_quote_rune(65), "'A'");
        assert_eq!(go_quote_rune(39), "'\\''");
    }

    #[test]
    fn durations_match_go() {
        let cases = [
            (0, "0s"),
            (1, "1ns"),
            (1_100, "1.1\u{b5}s"),
            (2_200_000, "2.2ms"),
            (1_000_000_000, "1s"),
            (1_500_000_000, "1.5s"),
            (90_000_000_000, "1m30s"),
            (300_000_000_000, "5m0s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_723_000_000_000, "1h2m3s"),
            (-1_000_000_000, "-1s"),
        ];
        for (nanos, expected) in cases {
            assert_eq!(go_duration(nanos), expected, "{nanos}");
        }
    }
}
