//! The sudoers entry `velo setup` installs: exactly `zfs mount` and `zfs unmount` of the
//! user's own datasets, as root, and nothing else.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// The first sudo release that reads `^…$` command arguments as regular expressions.
pub const SUDO_WITH_REGEX: (u32, u32, u32) = (1, 9, 10);

/// The sudoers file for a user, named by uid: one file per user, whatever their name (sudo
/// skips files whose name holds a `.`, and two names must never map to one file).
pub fn sudoers_path(uid: u32) -> PathBuf {
    PathBuf::from(format!("/etc/sudoers.d/velo-uid{uid}"))
}

/// The sudoers entry: user `uid` may run exactly `zfs mount|unmount D` as root, for D the base
/// `base` or one of its direct children with velo's shape `<project>.<branch>.<generation>`.
/// The user is named by uid (`#1000`): a name in capitals would read as an alias. Arguments
/// are matched by anchored regular expressions (sudo ≥ 1.9.10) whose character classes hold
/// no space, `/`, `@` or option letters, so no other dataset, snapshot, option (`-a`, `-o`) or
/// extra argument matches.
pub fn sudoers_rule(name: &str, uid: u32, zfs: &str, base: &str) -> String {
    let base_re = base.replace('.', "[.]");
    let part = "[a-z][a-z0-9-]*";
    let child = format!("{base_re}/{part}[.]{part}[.][0-9]+");
    let commands = [
        format!("{zfs} ^mount {base_re}$"),
        format!("{zfs} ^mount {child}$"),
        format!("{zfs} ^unmount {child}$"),
    ];
    format!(
        "# Written by `velo setup`; `sudo velo setup --undo --user {name}` removes it.\n# {name} (uid {uid}) may mount and unmount velo's datasets under {base}, and run nothing else as root.\n#{uid} ALL=(root) NOPASSWD: {}\n",
        commands.join(", \\\n    ")
    )
}

/// Validates the rule with `visudo -c` in a file sudo ignores (its name has a `.`), created
/// new (`O_EXCL`, no link followed), then installs it with mode 0440 by renaming it into place.
pub async fn install(path: &Path, rule: &str) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("sudoers.d");
    let name = format!(
        ".{}.velo-tmp",
        path.file_name().expect("a file").to_string_lossy()
    );
    let tmp = dir.join(&name);
    let fd = crate::fsx::open_dir(dir).with_context(|| format!("opening {}", dir.display()))?;
    crate::fsx::remove_at(&fd, &name)?;
    let mut file = crate::fsx::create_new_at(&fd, &name, 0o440)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(rule.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    let checked = super::run("visudo", &["-c", "-q", "-f", &tmp.display().to_string()]).await;
    if let Err(e) = checked {
        let _ = crate::fsx::remove_at(&fd, &name);
        return Err(e.context("the generated sudoers rule did not validate; nothing was installed"));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("installing {}", path.display()))
}

/// `Sudo version 1.9.13p3` → (1, 9, 13).
pub fn parse_sudo_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.lines().next()?.strip_prefix("Sudo version ")?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit()).map(str::parse);
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_versions() {
        assert_eq!(
            parse_sudo_version("Sudo version 1.9.13p3\nSudoers policy plugin version 1.9.13p3\n"),
            Some((1, 9, 13))
        );
        assert_eq!(
            parse_sudo_version("Sudo version 1.8.31\n"),
            Some((1, 8, 31))
        );
        assert!(parse_sudo_version("sudo: unknown").is_none());
        assert!((1, 9, 5) < SUDO_WITH_REGEX);
    }

    #[test]
    fn rule_names_only_the_users_own_datasets_by_uid() {
        let rule = sudoers_rule("ann", 1000, "/usr/sbin/zfs", "my.pool/velo/user.ann");
        assert!(rule.contains("\n#1000 ALL=(root) NOPASSWD: "), "{rule}");
        assert!(rule.contains(
            "/usr/sbin/zfs ^mount my[.]pool/velo/user[.]ann/[a-z][a-z0-9-]*[.][a-z][a-z0-9-]*[.][0-9]+$"
        ));
        assert!(rule.contains("/usr/sbin/zfs ^mount my[.]pool/velo/user[.]ann$"));
        assert!(!rule.contains(" *"), "no sudoers wildcard: {rule}");
        assert_eq!(rule.matches("/usr/sbin/zfs ^").count(), 3);
        assert_ne!(sudoers_path(1000), sudoers_path(1001));
        assert!(
            !sudoers_path(1000)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .contains('.')
        );
    }
}
