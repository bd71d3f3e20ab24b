//! Platforms (`os/arch[/variant]`) parsed and normalised as containerd does,
//! so that `--platform linux/aarch64` and `linux/arm64` mean the same thing.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "windows",
    "zos",
];

const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: &str) -> Self {
        let (architecture, variant) = normalize_arch(architecture, variant);
        Platform {
            os: normalize_os(os),
            architecture,
            variant,
        }
    }

    /// The platform kiln runs on.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform::new("linux", arch, "")
    }

    /// Parses `os`, `arch`, `os/arch` or `os/arch/variant`. A lone part is
    /// an operating system if it names one, an architecture otherwise; the
    /// missing half comes from the host.
    pub fn parse(spec: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = spec.split('/').collect();
        for part in &parts {
            if part.is_empty()
                || !part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                return Err(format!("{part:?} is not a valid platform component"));
            }
        }
        let host = Platform::host();
        match parts.as_slice() {
            [single] => {
                let lower = single.to_ascii_lowercase();
                if KNOWN_OS.contains(&normalize_os(&lower).as_str()) {
                    Ok(Platform::new(&lower, &host.architecture, &host.variant))
                } else if is_known_arch(&lower) {
                    Ok(Platform::new(&host.os, &lower, ""))
                } else {
                    Err("unknown operating system or architecture".to_string())
                }
            }
            [os, arch] => Ok(Platform::new(os, arch, "")),
            [os, arch, variant] => Ok(Platform::new(os, arch, variant)),
            _ => Err("expected os/arch[/variant]".to_string()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

fn is_known_arch(arch: &str) -> bool {
    let (normalized, _) = normalize_arch(arch, "");
    KNOWN_ARCH.contains(&normalized.as_str())
}

fn normalize_os(os: &str) -> String {
    match os.to_ascii_lowercase().as_str() {
        "macos" => "darwin".to_string(),
        other => other.to_string(),
    }
}

fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    let (arch, variant) = match arch.as_str() {
        "i386" => ("386", String::new()),
        "x86_64" | "x86-64" | "amd64" => (
            "amd64",
            if variant == "v1" {
                String::new()
            } else {
                variant
            },
        ),
        "aarch64" | "arm64" => (
            "arm64",
            if matches!(variant.as_str(), "8" | "v8" | "v8.0") {
                String::new()
            } else {
                variant
            },
        ),
        "armhf" => ("arm", "v7".to_string()),
        "armel" => ("arm", "v6".to_string()),
        "arm" => (
            "arm",
            match variant.as_str() {
                "" | "7" => "v7".to_string(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            },
        ),
        other => return (other.to_string(), variant),
    };
    (arch.to_string(), variant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(spec: &str) -> String {
        Platform::parse(spec)
            .map(|p| p.to_string())
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn normalises_like_containerd() {
        assert_eq!(parsed("linux/amd64"), "linux/amd64");
        assert_eq!(parsed("linux/x86_64"), "linux/amd64");
        assert_eq!(parsed("linux/aarch64"), "linux/arm64");
        assert_eq!(parsed("linux/arm64/v8"), "linux/arm64");
        assert_eq!(parsed("linux/arm"), "linux/arm/v7");
        assert_eq!(parsed("linux/armhf"), "linux/arm/v7");
        assert_eq!(parsed("linux/arm/6"), "linux/arm/v6");
        assert_eq!(parsed("Linux/AMD64"), "linux/amd64");
        assert_eq!(parsed("windows/amd64"), "windows/amd64");
        assert_eq!(parsed("linux/riscv64"), "linux/riscv64");
    }

    #[test]
    fn single_parts_fill_in_from_the_host() {
        let host = Platform::host();
        assert_eq!(
            Platform::parse("linux").map(|p| p.architecture),
            Ok(host.architecture)
        );
        assert_eq!(parsed("arm64"), "linux/arm64");
        assert!(parsed("plan10").starts_with("error"));
    }

    #[test]
    fn malformed_specs() {
        assert!(parsed("").starts_with("error"));
        assert!(parsed("linux//amd64").starts_with("error"));
        assert!(parsed("linux/amd64/v1/x").starts_with("error"));
        assert!(parsed("linux/am d64").starts_with("error"));
    }
}
