//! Sizes and durations as users write them in flags, and stored names as
//! Docker prints them.

use kiln_builder::{Error, Result};
use kiln_frontend::graph::Network;
use kiln_registry::Reference;
use kiln_runtime::{Ulimit, ULIMIT_NAMES};

pub use kiln_builder::units::{parse_duration, parse_size};

/// `--network`: `default` and `host` give RUN steps the host's network
/// (BuildKit's default here), `none` a loopback interface of their own.
pub fn parse_network(text: &str) -> Result<Network> {
    match text {
        "default" | "host" => Ok(Network::Host),
        "none" => Ok(Network::None),
        other => Err(Error::Invalid(format!(
            "invalid --network {other:?}: default, host or none"
        ))),
    }
}

/// `--add-host HOST:IP` (or `HOST=IP`, as buildx also reads it); an IPv6
/// address keeps its colons.
pub fn parse_host(spec: &str) -> Result<(String, String)> {
    let (host, address) = spec
        .split_once('=')
        .or_else(|| spec.split_once(':'))
        .ok_or_else(|| Error::Invalid(format!("invalid --add-host {spec:?}: expected HOST:IP")))?;
    let address = address.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || address.parse::<std::net::IpAddr>().is_err() {
        return Err(Error::Invalid(format!(
            "invalid --add-host {spec:?}: expected HOST:IP with an IPv4 or IPv6 address"
        )));
    }
    Ok((host.to_string(), address.to_string()))
}

/// `--ulimit NAME=SOFT[:HARD]`, as Docker reads it (one number is both).
pub fn parse_ulimit(spec: &str) -> Result<Ulimit> {
    let invalid = |why: &str| Error::Invalid(format!("invalid --ulimit {spec:?}: {why}"));
    let (name, limits) = spec
        .split_once('=')
        .ok_or_else(|| invalid("expected NAME=SOFT[:HARD]"))?;
    if !ULIMIT_NAMES.contains(&name) {
        return Err(invalid(&format!(
            "known names: {}",
            ULIMIT_NAMES.join(", ")
        )));
    }
    let number = |text: &str| {
        text.parse::<u64>()
            .map_err(|_| invalid("limits are whole numbers"))
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((soft, hard)) => (number(soft)?, number(hard)?),
        None => (number(limits)?, number(limits)?),
    };
    if soft > hard {
        return Err(invalid("the soft limit is above the hard one"));
    }
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

/// A memory size as Docker's flags read it (`--shm-size`): bytes, or a
/// number with `b`, `k`, `m`, `g`, `t` (powers of 1024, an optional `b`
/// after them, any case).
pub fn parse_memory(text: &str) -> Result<u64> {
    let invalid = || {
        Error::Invalid(format!(
            "invalid size {text:?}: expected bytes or a number with k, m, g or t (such as 128m)"
        ))
    };
    let lower = text.trim().to_ascii_lowercase();
    let unit_start = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(unit_start);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let factor: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(invalid()),
    };
    Ok((number * factor as f64) as u64)
}

/// How Docker prints a stored name: `app:1` for `docker.io/library/app:1`.
pub fn familiar(name: &str) -> String {
    Reference::parse(name).map_or_else(|_| name.to_string(), |r| r.familiar())
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn run_settings_read_as_docker_reads_them() {
        assert_eq!(parse_network("none").expect("none"), Network::None);
        assert_eq!(parse_network("default").expect("default"), Network::Host);
        assert!(parse_network("bridge").is_err());
        assert_eq!(
            parse_host("db:10.0.0.2").expect("host"),
            ("db".to_string(), "10.0.0.2".to_string())
        );
        assert_eq!(
            parse_host("v6=::1").expect("v6").1,
            "::1",
            "an IPv6 address keeps its colons"
        );
        assert!(parse_host("db:not-an-address").is_err());
        let limit = parse_ulimit("nofile=1024:2048").expect("ulimit");
        assert_eq!(
            (limit.name.as_str(), limit.soft, limit.hard),
            ("nofile", 1024, 2048)
        );
        assert_eq!(parse_ulimit("nproc=512").expect("one number").hard, 512);
        assert!(parse_ulimit("nofile=2048:1024").is_err());
        assert!(parse_ulimit("files=1").is_err());
        assert_eq!(parse_memory("134217728").expect("bytes"), 134_217_728);
        assert_eq!(parse_memory("128m").expect("128m"), 134_217_728);
        assert_eq!(parse_memory("1GB").expect("1GB"), 1 << 30);
        assert!(parse_memory("lots").is_err());
    }
}
