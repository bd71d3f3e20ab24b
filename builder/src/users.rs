//! `user[:group]` resolved against an image's `/etc/passwd` and `/etc/group`,
//! for `COPY --chown`, `ADD --chown`, the owner of WORKDIR directories and
//! the user RUN steps run as.

use crate::error::{bail, Context};
use kiln_cache::LayerView;

/// The numeric owner `spec` names in the image `view`. A user given by name
/// takes its primary group from `/etc/passwd`; a user given by number uses
/// the same number as its group, as BuildKit does.
pub fn resolve_owner(spec: &str, view: &LayerView) -> crate::Result<(u32, u32)> {
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => {
            let passwd = view
                .read_to_string("/etc/passwd")
                .context("reading /etc/passwd")?
                .with_context(|| {
                    format!("cannot find user {user:?}: the image has no /etc/passwd")
                })?;
            find(&passwd, user, |fields| {
                Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
            })
            .with_context(|| format!("cannot find user {user:?} in the image's /etc/passwd"))?
        }
    };
    let gid = match group {
        None => primary_gid,
        Some("") => bail!("invalid owner {spec:?}: the group after ':' is empty"),
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = view
                    .read_to_string("/etc/group")
                    .context("reading /etc/group")?
                    .with_context(|| {
                        format!("cannot find group {group:?}: the image has no /etc/group")
                    })?;
                find(&groups, group, |fields| fields.get(2)?.parse().ok()).with_context(|| {
                    format!("cannot find group {group:?} in the image's /etc/group")
                })?
            }
        },
    };
    Ok((uid, gid))
}

/// Who a RUN step runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// The process's groups: its primary group, then those `/etc/group`
    /// lists the user in (only the primary one when a group is given).
    pub additional_gids: Vec<u32>,
}

/// The user a process runs as for `USER spec`, as container runtimes
/// resolve it: a name or number from `/etc/passwd` (a number it does not
/// list runs with group 0), the group given or else the user's, and the
/// supplementary groups `/etc/group` names the user in when no group is
/// given.
pub fn resolve_exec_user(spec: &str, view: &LayerView) -> crate::Result<ExecUser> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let passwd = view
        .read_to_string("/etc/passwd")
        .context("reading /etc/passwd")?
        .unwrap_or_default();
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .filter(|fields| fields.len() >= 4)
        .collect();
    let (name, uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => match entries.iter().find(|f| f[2].parse() == Ok(uid)) {
            Some(fields) => (Some(fields[0]), uid, fields[3].parse().unwrap_or(0)),
            None => (None, uid, 0),
        },
        Err(_) => {
            let fields = entries
                .iter()
                .find(|f| f[0] == user)
                .with_context(|| format!("cannot find user {user:?} in the image's /etc/passwd"))?;
            let uid = fields[2].parse().with_context(|| {
                format!("the image's /etc/passwd has no valid uid for {user:?}")
            })?;
            (Some(fields[0]), uid, fields[3].parse().unwrap_or(0))
        }
    };
    let groups = view
        .read_to_string("/etc/group")
        .context("reading /etc/group")?
        .unwrap_or_default();
    let gid =
        match group {
            Some("") => bail!("invalid user {spec:?}: the group after ':' is empty"),
            Some(group) => match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => find(&groups, group, |fields| fields.get(2)?.parse().ok()).with_context(
                    || format!("cannot find group {group:?} in the image's /etc/group"),
                )?,
            },
            None => primary_gid,
        };
    let mut additional_gids = Vec::new();
    if let (None, Some(name)) = (group, name) {
        for line in groups.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            let members = fields.get(3).copied().unwrap_or("");
            if members.split(',').any(|member| member.trim() == name) {
                if let Some(member_gid) = fields.get(2).and_then(|g| g.parse().ok()) {
                    if !additional_gids.contains(&member_gid) {
                        additional_gids.push(member_gid);
                    }
                }
            }
        }
    }
    // The process keeps its primary group among its groups, as BuildKit
    // and Docker give it.
    if !additional_gids.contains(&gid) {
        additional_gids.insert(0, gid);
    }
    Ok(ExecUser {
        uid,
        gid,
        additional_gids,
    })
}

/// The value `extract` takes from the first line of a colon-separated
/// database whose first field is `name`.
fn find<T>(database: &str, name: &str, extract: impl Fn(&[&str]) -> Option<T>) -> Option<T> {
    database
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&name))
        .and_then(|fields| extract(&fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> (tempfile::TempDir, LayerView) {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nstaff:x:50:app\napp:x:1001:\n",
        )
        .expect("group");
        let view = LayerView::new(vec![dir.path().to_path_buf()]);
        (dir, view)
    }

    #[test]
    fn names_and_numbers() {
        let (_dir, view) = image();
        let cases = [
            ("", (0, 0)),
            ("app", (1000, 1001)),
            ("app:staff", (1000, 50)),
            ("app:7", (1000, 7)),
            ("55", (55, 55)),
            ("55:staff", (55, 50)),
            ("0:0", (0, 0)),
        ];
        for (spec, expected) in cases {
            assert_eq!(resolve_owner(spec, &view).expect(spec), expected, "{spec}");
        }
    }

    #[test]
    fn run_users_as_runtimes_resolve_them() {
        let (_dir, view) = image();
        let user = |spec: &str| resolve_exec_user(spec, &view).expect(spec);
        assert_eq!(
            user(""),
            ExecUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![0]
            }
        );
        assert_eq!(
            user("app"),
            ExecUser {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![1001, 50]
            }
        );
        assert_eq!(
            user("1000"),
            ExecUser {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![1001, 50]
            },
            "a number the image knows is its user"
        );
        assert_eq!(
            user("app:root"),
            ExecUser {
                uid: 1000,
                gid: 0,
                additional_gids: vec![0]
            },
            "a group given replaces the supplementary ones"
        );
        assert_eq!(
            user("4242"),
            ExecUser {
                uid: 4242,
                gid: 0,
                additional_gids: vec![0]
            }
        );
        assert!(resolve_exec_user("ghost", &view).is_err());
    }

    #[test]
    fn unknown_names_are_errors() {
        let (_dir, view) = image();
        let err = resolve_owner("nobody", &view).expect_err("unknown user");
        assert_eq!(
            err.to_string(),
            "cannot find user \"nobody\" in the image's /etc/passwd"
        );
        let err = resolve_owner("app:wheel", &view).expect_err("unknown group");
        assert_eq!(
            err.to_string(),
            "cannot find group \"wheel\" in the image's /etc/group"
        );
        let empty = LayerView::new(vec![tempfile::tempdir().expect("tmp").path().to_path_buf()]);
        let err = resolve_owner("app", &empty).expect_err("no passwd");
        assert!(
            err.to_string().contains("the image has no /etc/passwd"),
            "{err}"
        );
    }
}
