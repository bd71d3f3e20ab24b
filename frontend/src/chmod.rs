//! `--chmod` values of COPY and ADD: an octal mode, or chmod(1)'s symbolic
//! clauses (`u+x`, `go-w`, `u=rwX,go=rX`, `g=u`), read and applied as
//! BuildKit does (it uses a Go port of BSD's `setmode`, whose rules this
//! follows, quirks included). A symbolic mode changes each copied entry's own
//! mode, so a file and a directory, or two files, can end up with different
//! modes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SET_UID: u32 = 0o4000;
const SET_GID: u32 = 0o2000;
const STICKY: u32 = 0o1000;
const USER: u32 = 0o700;
const GROUP: u32 = 0o070;
const OTHER: u32 = 0o007;
const READ: u32 = 0o444;
const WRITE: u32 = 0o222;
const EXECUTE: u32 = 0o111;
/// What `a` and a clause without `u`, `g` or `o` reach with `=`: not the
/// sticky bit, as in BSD.
const STANDARD: u32 = SET_UID | SET_GID | USER | GROUP | OTHER;
const ALL_PERMISSIONS: u32 = 0o7777;

/// A `--chmod` value, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// Every copied entry gets this mode.
    Octal(u32),
    /// Changes to each copied entry's own mode.
    Symbolic(SymbolicMode),
}

/// chmod(1)'s symbolic clauses, as written and as the changes they make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolicMode {
    text: String,
    changes: Vec<Change>,
}

/// One change of a symbolic mode, applied in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Clear(u32),
    Set(u32),
    /// `X`: sets these bits on a directory, or on an entry that had an
    /// execute bit before any change.
    SetIfExecutable(u32),
    /// `g=u` and the like: the permissions `class` has at this point, given
    /// to the classes `to` reaches (user, group, other): added, removed, or
    /// with `=` both, the classes' permissions cleared, then set.
    CopyClass {
        class: Class,
        to: [bool; 3],
        clear: bool,
        set: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    User,
    Group,
    Other,
}

impl Class {
    const ALL: [Class; 3] = [Class::User, Class::Group, Class::Other];

    /// Where the class's rwx bits sit in a mode.
    fn shift(self) -> u32 {
        match self {
            Class::User => 6,
            Class::Group => 3,
            Class::Other => 0,
        }
    }
}

/// Why a `--chmod` value is not a mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChmodError {
    /// A value that starts with a digit is read as octal, as BuildKit does.
    #[error("it must be an octal mode between 0 and 7777")]
    Octal,
    #[error("{0}; a symbolic mode is chmod's clauses, such as u+x, go-w or u=rwX,go=rX")]
    Symbolic(String),
}

impl Chmod {
    /// Reads an octal mode (the value starts with a digit) or symbolic
    /// clauses separated by commas.
    pub fn parse(text: &str) -> Result<Chmod, ChmodError> {
        if text.starts_with(|c: char| c.is_ascii_digit()) {
            return u32::from_str_radix(text, 8)
                .ok()
                .filter(|&mode| mode <= ALL_PERMISSIONS)
                .map(Chmod::Octal)
                .ok_or(ChmodError::Octal);
        }
        Ok(Chmod::Symbolic(SymbolicMode {
            text: text.to_string(),
            changes: parse_symbolic(text).map_err(ChmodError::Symbolic)?,
        }))
    }

    /// The permission bits (with set-user-ID, set-group-ID and sticky) of an
    /// entry whose own are `mode`, after the change.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(octal) => *octal,
            Chmod::Symbolic(symbolic) => symbolic.apply(mode & ALL_PERMISSIONS, is_dir),
        }
    }

    /// The mode of a directory the copy creates on the way to its
    /// destination: an octal mode's, but 0755 with a symbolic one, which has
    /// no mode of its own to change (BuildKit's copy makes such directories
    /// with its default mode when the mode is symbolic).
    pub fn created_directory_mode(&self) -> u32 {
        match self {
            Chmod::Octal(octal) => *octal,
            Chmod::Symbolic(_) => 0o755,
        }
    }
}

impl SymbolicMode {
    fn apply(&self, original: u32, is_dir: bool) -> u32 {
        let mut mode = original;
        for change in &self.changes {
            match *change {
                Change::Clear(bits) => mode &= !bits,
                Change::Set(bits) => mode |= bits,
                Change::SetIfExecutable(bits) => {
                    if is_dir || original & EXECUTE != 0 {
                        mode |= bits;
                    }
                }
                Change::CopyClass {
                    class,
                    to,
                    clear,
                    set,
                } => {
                    let value = (mode >> class.shift()) & 0o7;
                    // `=` clears all of a class's permissions before it sets
                    // the copied ones; `-` clears just the copied ones.
                    let cleared = if set { 0o7 } else { value };
                    for (target, reached) in Class::ALL.into_iter().zip(to) {
                        if !reached {
                            continue;
                        }
                        if clear {
                            mode &= !(cleared << target.shift());
                        }
                        if set {
                            mode |= value << target.shift();
                        }
                    }
                }
            }
        }
        mode & ALL_PERMISSIONS
    }
}

/// BSD's `setmode` for symbolic modes (with no umask, as BuildKit reads
/// them): each clause is who (`ugoa`, none meaning all), then one or more
/// operators (`+-=`) each followed by permissions (`rwxXst`) or a class to
/// copy (`ugo`).
fn parse_symbolic(written: &str) -> Result<Vec<Change>, String> {
    let text = written.as_bytes();
    let mut changes = Vec::new();
    let mut at = 0;
    // Whether an `=` has cleared what it sets already, so that `u=` alone
    // still clears and `u=rw` does not clear twice.
    let mut equal_done = false;
    loop {
        let mut who = 0;
        loop {
            match text.get(at) {
                None => return Err("a clause ends before its operator (+, - or =)".to_string()),
                Some(b'a') => who |= STANDARD,
                Some(b'u') => who |= SET_UID | USER,
                Some(b'g') => who |= SET_GID | GROUP,
                Some(b'o') => who |= OTHER,
                Some(_) => break,
            }
            at += 1;
        }
        let mut first_operator = true;
        loop {
            // The loops before stop only on a character.
            let Some(&operator) = text.get(at) else {
                return Err("a clause ends before its operator (+, - or =)".to_string());
            };
            match operator {
                b'+' | b'-' => {}
                b'=' => equal_done = false,
                other => {
                    let what = if first_operator {
                        "an operator (+, - or =)"
                    } else {
                        "a permission (r, w, x, X, s, t) or a class to copy (u, g, o)"
                    };
                    // Only ASCII has been read before it: `at` starts a
                    // character.
                    let unexpected = written
                        .get(at..)
                        .and_then(|rest| rest.chars().next())
                        .unwrap_or(char::from(other));
                    return Err(format!("{unexpected:?} is not {what}"));
                }
            }
            first_operator = false;
            at += 1;
            who &= !STICKY;
            let mut permissions = 0;
            let mut if_executable = 0;
            loop {
                match text.get(at).copied() {
                    Some(b'r') => permissions |= READ,
                    Some(b'w') => permissions |= WRITE,
                    Some(b'x') => permissions |= EXECUTE,
                    Some(b'X') if operator == b'-' => permissions |= EXECUTE,
                    Some(b'X') => if_executable = EXECUTE,
                    // Set-ID and sticky bits mean nothing for "other" alone.
                    Some(b's') if who == 0 || who & !OTHER != 0 => permissions |= SET_UID | SET_GID,
                    Some(b't') if who == 0 || who & !OTHER != 0 => {
                        who |= STICKY;
                        permissions |= STICKY;
                    }
                    Some(b's' | b't') => {}
                    Some(class @ (b'u' | b'g' | b'o')) => {
                        if permissions != 0 {
                            push_change(&mut changes, operator, who, permissions);
                            permissions = 0;
                        }
                        if operator == b'=' {
                            equal_done = true;
                        }
                        if if_executable != 0 {
                            changes.push(Change::SetIfExecutable(masked(who, if_executable)));
                            if_executable = 0;
                        }
                        changes.push(copy_class(class, who, operator));
                    }
                    _ => {
                        if permissions != 0 || (operator == b'=' && !equal_done) {
                            if operator == b'=' {
                                equal_done = true;
                            }
                            push_change(&mut changes, operator, who, permissions);
                        }
                        if if_executable != 0 {
                            changes.push(Change::SetIfExecutable(masked(who, if_executable)));
                        }
                        break;
                    }
                }
                at += 1;
            }
            match text.get(at) {
                None => return Ok(changes),
                Some(b',') => {
                    at += 1;
                    break;
                }
                Some(_) => {}
            }
        }
    }
}

/// The bits of `permissions` that the clause's who reaches (all of them
/// when it names none).
fn masked(who: u32, permissions: u32) -> u32 {
    if who == 0 {
        permissions
    } else {
        who & permissions
    }
}

fn push_change(changes: &mut Vec<Change>, operator: u8, who: u32, permissions: u32) {
    match operator {
        b'+' => changes.push(Change::Set(masked(who, permissions))),
        b'-' => changes.push(Change::Clear(masked(who, permissions))),
        _ => {
            changes.push(Change::Clear(if who == 0 { STANDARD } else { who }));
            changes.push(Change::Set(masked(who, permissions)));
        }
    }
}

fn copy_class(class: u8, who: u32, operator: u8) -> Change {
    let class = match class {
        b'u' => Class::User,
        b'g' => Class::Group,
        _ => Class::Other,
    };
    let to = if who == 0 {
        [true; 3]
    } else {
        [who & 0o400 != 0, who & 0o040 != 0, who & 0o004 != 0]
    };
    Change::CopyClass {
        class,
        to,
        clear: operator != b'+',
        set: operator != b'-',
    }
}

/// An octal mode as the number it is (so that the keys of steps with one
/// stay what they were before symbolic modes), a symbolic one as its text.
impl Serialize for Chmod {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Chmod::Octal(octal) => serializer.serialize_u32(*octal),
            Chmod::Symbolic(symbolic) => serializer.serialize_str(&symbolic.text),
        }
    }
}

impl<'de> Deserialize<'de> for Chmod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Octal(u32),
            Symbolic(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Octal(octal) if octal <= ALL_PERMISSIONS => Ok(Chmod::Octal(octal)),
            Written::Octal(octal) => Err(serde::de::Error::custom(format!(
                "the mode {octal:o} is above 7777"
            ))),
            Written::Symbolic(text) => Chmod::parse(&text)
                .map_err(|error| serde::de::Error::custom(format!("--chmod {text:?}: {error}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(text: &str, mode: u32, is_dir: bool) -> u32 {
        Chmod::parse(text)
            .unwrap_or_else(|error| panic!("{text}: {error}"))
            .apply(mode, is_dir)
    }

    #[test]
    fn octal_modes_replace_the_mode() {
        assert_eq!(Chmod::parse("755"), Ok(Chmod::Octal(0o755)));
        assert_eq!(Chmod::parse("0644"), Ok(Chmod::Octal(0o644)));
        assert_eq!(Chmod::parse("4755"), Ok(Chmod::Octal(0o4755)));
        assert_eq!(mode_of("0640", 0o777, true), 0o640);
        assert_eq!(Chmod::Octal(0o640).created_directory_mode(), 0o640);
    }

    #[test]
    fn values_starting_with_a_digit_must_be_octal() {
        for text in ["999", "64a", "10000", "8", "7_77", "99999999999999"] {
            assert_eq!(Chmod::parse(text), Err(ChmodError::Octal), "{text}");
        }
    }

    #[test]
    fn symbolic_modes_change_the_entrys_own_mode() {
        let cases: &[(&str, u32, bool, u32)] = &[
            ("u+x", 0o644, false, 0o744),
            ("g-w", 0o664, false, 0o644),
            ("go-w", 0o666, false, 0o644),
            ("o-rwx,g+x", 0o666, false, 0o670),
            ("u=rwx,g=,o=", 0o666, false, 0o700),
            ("u=rw,g=r,o=r", 0o666, false, 0o644),
            ("u+rw,g+r,o-x,o+w", 0o124, true, 0o766),
            ("u=rwx,go=rx", 0o600, false, 0o755),
            ("+x", 0o644, false, 0o755),
            ("a-w", 0o777, false, 0o555),
            ("=", 0o4755, false, 0),
            ("u+s", 0o755, false, 0o4755),
            ("g+s", 0o755, true, 0o2755),
            ("+t", 0o755, true, 0o1755),
            ("o+t", 0o755, true, 0o755),
            // Several operators in one clause.
            ("u+x-w", 0o644, false, 0o544),
            ("go=u-w", 0o750, false, 0o755),
            // Copying a class's permissions.
            ("g=u", 0o640, false, 0o660),
            ("o+g", 0o650, false, 0o655),
            ("u-o", 0o777, false, 0o077),
            ("a=u", 0o700, false, 0o777),
        ];
        for &(text, before, is_dir, after) in cases {
            assert_eq!(
                mode_of(text, before, is_dir),
                after,
                "{text} on {before:o} (directory: {is_dir})"
            );
        }
    }

    #[test]
    fn capital_x_sets_execute_on_directories_and_executables_only() {
        assert_eq!(mode_of("a+X", 0o666, false), 0o666);
        assert_eq!(mode_of("a+X", 0o744, false), 0o755);
        assert_eq!(mode_of("a+X", 0o124, true), 0o135);
        assert_eq!(mode_of("u=rwX,go=rX", 0o600, false), 0o644);
        assert_eq!(mode_of("u=rwX,go=rX", 0o700, false), 0o755);
        assert_eq!(mode_of("u=rwX,go=rX", 0o500, true), 0o755);
        assert_eq!(mode_of("a=rX", 0o640, false), 0o444);
        assert_eq!(mode_of("a=rX", 0o100, false), 0o555);
        // X looks at the mode before the change, as BSD's setmode does.
        assert_eq!(mode_of("a-x,a+X", 0o755, false), 0o755);
        // With `-`, X is x.
        assert_eq!(mode_of("a-X", 0o755, false), 0o644);
    }

    #[test]
    fn a_symbolic_mode_creates_directories_with_0755() {
        let chmod = Chmod::parse("go-rwx").expect("valid");
        assert_eq!(chmod.created_directory_mode(), 0o755);
    }

    #[test]
    fn malformed_symbolic_modes_say_what_is_wrong() {
        let cases = [
            ("u", "a clause ends before its operator"),
            ("u+x,", "a clause ends before its operator"),
            ("q+x", "'q' is not an operator"),
            (",", "',' is not an operator"),
            ("u+q", "'q' is not a permission"),
            ("u+x,+a", "'a' is not a permission"),
            ("u*x", "'*' is not an operator"),
            ("+755", "'7' is not a permission"),
            ("u+é", "'é' is not a permission"),
        ];
        for (text, reason) in cases {
            match Chmod::parse(text) {
                Err(error @ ChmodError::Symbolic(_)) => {
                    assert!(error.to_string().contains(reason), "{text}: {error}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn keys_and_graphs_keep_octal_modes_as_numbers() {
        let octal = Chmod::parse("0755").expect("valid");
        assert_eq!(serde_json::to_string(&octal).expect("json"), "493");
        let symbolic = Chmod::parse("u=rwX,go=rX").expect("valid");
        assert_eq!(
            serde_json::to_string(&symbolic).expect("json"),
            "\"u=rwX,go=rX\""
        );
        for chmod in [octal, symbolic] {
            let json = serde_json::to_string(&chmod).expect("json");
            assert_eq!(
                serde_json::from_str::<Chmod>(&json).expect("read back"),
                chmod
            );
        }
        assert!(serde_json::from_str::<Chmod>("\"u+q\"").is_err());
        assert!(serde_json::from_str::<Chmod>("4096").is_err());
    }
}
