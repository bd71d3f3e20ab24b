//! `user[:group]` resolved against an image's `/etc/passwd` and `/etc/group`,
//! for `COPY --chown`, `ADD --chown` and the owner of WORKDIR directories.

use anyhow::{bail, Context};
use kiln_cache::LayerView;

/// The numeric owner `spec` names in the image `view`. A user given by name
/// takes its primary group from `/etc/passwd`; a user given by number uses
/// the same number as its group, as BuildKit does.
pub fn resolve_owner(spec: &str, view: &LayerView) -> anyhow::Result<(u32, u32)> {
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
