//! `RUN --mount=...` options: a CSV list of `key=value` fields, validated
//! per mount type as BuildKit does.

use crate::suggest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountType {
    fn name(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

/// The fields of one `--mount`, values expanded, before defaults and `from`
/// are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: MountType,
    pub from: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub readonly: bool,
    pub required: bool,
    pub size: Option<u64>,
    pub id: Option<String>,
    pub sharing: Option<String>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub env: Option<String>,
}

const KEYS: &[&str] = &[
    "type",
    "from",
    "source",
    "src",
    "target",
    "dst",
    "destination",
    "readonly",
    "ro",
    "readwrite",
    "rw",
    "required",
    "size",
    "id",
    "sharing",
    "mode",
    "uid",
    "gid",
    "env",
];

/// Parses one `--mount` value. `expand` is applied to every value; `from`
/// must not contain variables (BuildKit rejects them too).
pub fn parse_mount(
    spec: &str,
    expand: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<MountSpec, String> {
    let fields = split_csv(spec)?;
    let mut mount = MountSpec {
        kind: MountType::Bind,
        from: None,
        source: None,
        target: None,
        readonly: false,
        required: false,
        size: None,
        id: None,
        sharing: None,
        mode: None,
        uid: None,
        gid: None,
        env: None,
    };
    let mut readonly: Option<bool> = None;
    for field in &fields {
        let (key, value) = match field.split_once('=') {
            Some((key, value)) => (key.to_ascii_lowercase(), Some(value)),
            None => (field.to_ascii_lowercase(), None),
        };
        let Some(raw) = value else {
            match key.as_str() {
                "readonly" | "ro" => readonly = Some(true),
                "readwrite" | "rw" => readonly = Some(false),
                "required" if matches!(mount.kind, MountType::Secret | MountType::Ssh) => {
                    mount.required = true
                }
                "required" => return Err(unexpected_for_type("required", mount.kind)),
                _ => {
                    return Err(format!(
                        "invalid field {field:?}: it must be a key=value pair"
                    ))
                }
            }
            continue;
        };
        if key == "from" && raw.contains('$') {
            return Err(format!("from={raw} does not expand variables; define a stage `FROM ${{VAR}} AS name` and mount from=name"));
        }
        let value = expand(raw)?;
        match key.as_str() {
            "type" => {
                mount.kind = match value.to_ascii_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    other => {
                        let types = ["bind", "cache", "tmpfs", "secret", "ssh"];
                        let hint = suggest::closest(other, &types)
                            .map(|t| format!(" (did you mean {t}?)"))
                            .unwrap_or_else(|| {
                                " (use bind, cache, tmpfs, secret or ssh)".to_string()
                            });
                        return Err(format!("unsupported mount type {value:?}{hint}"));
                    }
                }
            }
            "from" => mount.from = Some(value),
            "source" | "src" => mount.source = Some(value),
            "target" | "dst" | "destination" => mount.target = Some(value),
            "readonly" | "ro" => readonly = Some(parse_bool(&key, &value)?),
            "readwrite" | "rw" => readonly = Some(!parse_bool(&key, &value)?),
            "required" => {
                if !matches!(mount.kind, MountType::Secret | MountType::Ssh) {
                    return Err(unexpected_for_type("required", mount.kind));
                }
                mount.required = parse_bool(&key, &value)?;
            }
            "size" => {
                if mount.kind != MountType::Tmpfs {
                    return Err(unexpected_for_type("size", mount.kind));
                }
                mount.size = Some(
                    parse_size(&value).ok_or_else(|| format!("invalid value for size: {value}"))?,
                );
            }
            "id" => mount.id = Some(value),
            "sharing" => {
                let sharing = value.to_ascii_lowercase();
                if !matches!(sharing.as_str(), "shared" | "private" | "locked") {
                    return Err(format!(
                        "unsupported sharing value {value:?} (use shared, private or locked)"
                    ));
                }
                mount.sharing = Some(sharing);
            }
            "mode" => {
                mount.mode = Some(
                    u32::from_str_radix(&value, 8)
                        .map_err(|_| format!("invalid value {value} for mode: it must be octal"))?,
                )
            }
            "uid" => {
                mount.uid = Some(
                    value
                        .parse()
                        .map_err(|_| format!("invalid value {value} for uid"))?,
                )
            }
            "gid" => {
                mount.gid = Some(
                    value
                        .parse()
                        .map_err(|_| format!("invalid value {value} for gid"))?,
                )
            }
            "env" => {
                if mount.kind != MountType::Secret {
                    return Err(unexpected_for_type("env", mount.kind));
                }
                mount.env = Some(value);
            }
            _ => {
                let hint = suggest::closest(&key, KEYS)
                    .map(|k| format!(" (did you mean {k}?)"))
                    .unwrap_or_default();
                return Err(format!("unexpected key {key:?} in {field:?}{hint}"));
            }
        }
    }
    validate(&mut mount, readonly)?;
    Ok(mount)
}

/// The `from=` of a `--mount` value when it is written without variables.
pub fn literal_from(spec: &str) -> Option<String> {
    split_csv(spec).ok()?.into_iter().find_map(|field| {
        let (key, value) = field.split_once('=')?;
        (key.eq_ignore_ascii_case("from") && !value.contains('$')).then(|| value.to_string())
    })
}

fn validate(mount: &mut MountSpec, readonly: Option<bool>) -> Result<(), String> {
    let owner_allowed = matches!(
        mount.kind,
        MountType::Secret | MountType::Ssh | MountType::Cache
    );
    if !owner_allowed {
        for (name, set) in [
            ("mode", mount.mode.is_some()),
            ("uid", mount.uid.is_some()),
            ("gid", mount.gid.is_some()),
        ] {
            if set {
                return Err(format!(
                    "{name} is not allowed for {} mounts",
                    mount.kind.name()
                ));
            }
        }
    }
    mount.readonly = readonly.unwrap_or(!matches!(mount.kind, MountType::Cache | MountType::Tmpfs));
    if mount.kind == MountType::Secret {
        if mount.from.is_some() {
            return Err("a secret mount cannot have from".to_string());
        }
        if mount.sharing.is_some() {
            return Err("a secret mount cannot set sharing".to_string());
        }
        if mount.source.is_none()
            && mount.target.is_none()
            && mount.id.is_none()
            && mount.env.is_none()
        {
            return Err("a secret mount needs an id, a target or an env".to_string());
        }
        if mount.source.is_some() && mount.id.is_some() {
            return Err("a secret mount cannot set both source and id".to_string());
        }
    }
    if mount.kind == MountType::Ssh && mount.source.is_some() {
        return Err("an ssh mount does not take a source".to_string());
    }
    if mount.sharing.is_some() && mount.kind != MountType::Cache {
        return Err(format!(
            "sharing is only valid for cache mounts, not {}",
            mount.kind.name()
        ));
    }
    Ok(())
}

fn unexpected_for_type(key: &str, kind: MountType) -> String {
    format!(
        "unexpected key {key:?} for mount type {:?} (put type= first)",
        kind.name()
    )
}

/// Go's strconv.ParseBool.
fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid value for {key}: {value}")),
    }
}

/// A size such as `64m`, `1.5g` or `1024` (binary multiples, as Docker's
/// RAMInBytes).
fn parse_size(text: &str) -> Option<u64> {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let number: f64 = text[..number_end].parse().ok()?;
    let suffix = text[number_end..]
        .trim_start_matches(' ')
        .to_ascii_lowercase();
    let unit = suffix.trim_end_matches('b').trim_end_matches('i');
    let multiplier: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024f64.powi(2),
        "g" => 1024f64.powi(3),
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return None,
    };
    let suffix_ok = matches!(suffix.len() - unit.len(), 0..=2);
    if !suffix_ok || number < 0.0 {
        return None;
    }
    Some((number * multiplier) as u64)
}

/// One CSV record as Go's encoding/csv reads it: comma-separated, a field
/// may be double-quoted with `""` for a quote inside it.
fn split_csv(text: &str) -> Result<Vec<String>, String> {
    if text.is_empty() {
        return Err("the mount has no fields".to_string());
    }
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted field in {text:?}")),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err(format!("extraneous \" in field of {text:?}")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => {
                        fields.push(field);
                        break;
                    }
                    Some('"') => return Err(format!("bare \" in unquoted field of {text:?}")),
                    Some(c) => field.push(c),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Result<MountSpec, String> {
        parse_mount(spec, &mut |v| Ok(v.replace("$DIR", "/from-var")))
    }

    #[test]
    fn defaults_per_type() {
        let bind = parse("target=/src").expect("bind");
        assert_eq!(bind.kind, MountType::Bind);
        assert!(bind.readonly);
        let cache = parse("type=cache,target=/root/.cache,sharing=locked,mode=0700,uid=1000")
            .expect("cache");
        assert!(!cache.readonly);
        assert_eq!(cache.sharing.as_deref(), Some("locked"));
        assert_eq!(cache.mode, Some(0o700));
        assert_eq!(cache.uid, Some(1000));
        let bind_rw = parse("type=bind,source=a,target=b,rw").expect("rw bind");
        assert!(!bind_rw.readonly);
        let tmpfs = parse("type=tmpfs,target=/t,size=64m").expect("tmpfs");
        assert_eq!(tmpfs.size, Some(64 * 1024 * 1024));
        let secret = parse("type=secret,id=npmrc,required,env=NPM_TOKEN").expect("secret");
        assert!(secret.required && secret.readonly);
        assert_eq!(secret.env.as_deref(), Some("NPM_TOKEN"));
    }

    #[test]
    fn values_are_expanded() {
        let mount = parse("type=bind,source=$DIR,target=$DIR/x").expect("bind");
        assert_eq!(mount.source.as_deref(), Some("/from-var"));
        assert_eq!(mount.target.as_deref(), Some("/from-var/x"));
    }

    #[test]
    fn invalid_mounts() {
        let cases = [
            ("type=volume,target=/x", "unsupported mount type"),
            ("type=cahce,target=/x", "did you mean cache?"),
            (
                "type=bind,target=/x,mode=0755",
                "mode is not allowed for bind mounts",
            ),
            (
                "type=bind,target=/x,required",
                "unexpected key \"required\"",
            ),
            ("type=cache,target=/x,size=1", "unexpected key \"size\""),
            ("type=secret", "needs an id, a target or an env"),
            ("type=secret,id=a,source=b", "both source and id"),
            ("type=secret,id=a,from=x", "cannot have from"),
            ("type=bind,target=/x,sharing=shared", "only valid for cache"),
            (
                "type=cache,target=/x,sharing=everyone",
                "unsupported sharing",
            ),
            ("type=ssh,source=x", "does not take a source"),
            ("type=bind,target=/x,taget=y", "did you mean target?"),
            (
                "type=bind,from=$STAGE,target=/x",
                "does not expand variables",
            ),
            ("type=bind,target", "must be a key=value pair"),
            ("", "no fields"),
            ("type=cache,target=/x,mode=9", "must be octal"),
            ("type=tmpfs,target=/x,size=big", "invalid value for size"),
            ("type=bind,target=/x,ro=maybe", "invalid value for ro"),
        ];
        for (spec, message) in cases {
            let err = parse(spec).expect_err(spec);
            assert!(err.contains(message), "{spec}: {err}");
        }
    }

    #[test]
    fn csv_fields() {
        assert_eq!(
            split_csv("a,\"b,c\",\"d\"\"e\""),
            Ok(vec!["a".into(), "b,c".into(), "d\"e".into()])
        );
        assert_eq!(split_csv("a,"), Ok(vec!["a".into(), String::new()]));
        assert!(split_csv("a\"b").is_err());
        assert!(split_csv("\"a").is_err());
        assert!(split_csv("\"a\"b").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("1.5g"), Some(1_610_612_736));
        assert_eq!(parse_size("2MiB"), Some(2 * 1024 * 1024));
        assert_eq!(parse_size("2 mb"), Some(2 * 1024 * 1024));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("1q"), None);
    }
}
