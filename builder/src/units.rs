//! Sizes and durations as users write them, in flags and in the fields of
//! `--cache-to`; and the time by the clock.

use crate::error::Error;
use crate::Result;

/// `SIZE`: bytes, or a number with a unit (`kB`, `MB`, `GB`, `TB`, powers
/// of 1000; `KiB`, `MiB`, `GiB`, `TiB`, powers of 1024), as Docker's flags
/// take them.
pub fn parse_size(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| {
        Error::Invalid(format!(
            "invalid size {text:?}: expected a number and a unit such as 10GB"
        ))
    })?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(Error::Invalid(format!(
            "invalid size {text:?}: unknown unit {other:?} (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )))
        }
    };
    Ok((number * factor) as u64)
}

/// `DURATION`: a sequence of numbers with units (`90s`, `30m`, `24h`, `7d`,
/// `1h30m`), as `--filter until=` takes it.
pub fn parse_duration(text: &str) -> Result<std::time::Duration> {
    let mut total = 0u64;
    let mut number = String::new();
    let invalid = || {
        Error::Invalid(format!(
            "invalid duration {text:?}: expected numbers with units such as 24h, 30m or 7d"
        ))
    };
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let value: u64 = number.parse().map_err(|_| invalid())?;
        number.clear();
        let seconds = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(invalid()),
        };
        total += value * seconds;
    }
    if !number.is_empty() || text.trim().is_empty() {
        return Err(invalid());
    }
    Ok(std::time::Duration::from_secs(total))
}

/// Seconds since 1970 by the clock.
pub fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn sizes_are_read_in_both_kinds_of_units() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("20GB").unwrap(), 20_000_000_000);
        assert_eq!(parse_size("1.5 kB").unwrap(), 1_500);
        assert_eq!(parse_size("2MiB").unwrap(), 2 * 1024 * 1024);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("10PB").is_err());
    }

    #[test]
    fn durations_add_up_their_parts() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("24").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("3y").is_err());
    }
}
