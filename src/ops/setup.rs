//! `velo setup`: the one-time host set-up (as root) that lets a user run every velo command
//! without root, and `velo setup --undo`, which takes back what setup added.
//!
//! Each step looks first and changes only what is not already so, so a second run changes
//! nothing and says so; `--dry-run` prints every change without making it. What setup changed
//! is recorded in velo's config ([`crate::config`]), which is what `--undo` reverses. Why each
//! permission and the sudoers rule are what they are: docs/setup.md.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::process::Command;

use super::Ctx;
use super::doctor::sudoers_path;
use crate::config::{Config, UserSetup};
use crate::names;
use crate::zfs::{BASE_PROPERTIES, DELEGATED_PERMISSIONS, Implementation, is_root};

/// The first sudo release that reads `^…$` command arguments as regular expressions.
const SUDO_WITH_REGEX: (u32, u32, u32) = (1, 9, 10);

pub struct SetupRequest {
    /// The user to prepare (default: `$SUDO_USER`).
    pub user: Option<String>,
    pub pool: Option<String>,
    pub dry_run: bool,
    pub undo: bool,
}

/// Counts changes and prints each step: done already, would be done, or done now.
struct Steps<'a> {
    ctx: &'a Ctx,
    dry_run: bool,
    changed: usize,
}

impl Steps<'_> {
    async fn step(
        &mut self,
        already: bool,
        what: &str,
        work: impl Future<Output = Result<()>>,
    ) -> Result<()> {
        if already {
            self.ctx.shell.note(&format!("✓ {what}: already so"));
            return Ok(());
        }
        self.changed += 1;
        if self.dry_run {
            self.ctx.shell.note(&format!("would: {what}"));
            return Ok(());
        }
        self.ctx.shell.step(what, work).await
    }
}

pub async fn setup(ctx: &Ctx, req: SetupRequest) -> Result<()> {
    if !is_root() {
        bail!(
            "velo setup changes the host (ZFS delegation, sudoers, groups): run it as root, `sudo velo setup`"
        );
    }
    let user = target_user(req.user.as_deref())?;
    let config_path = Config::path();
    let old = Config::load(&config_path)?;
    let mut steps = Steps {
        ctx,
        dry_run: req.dry_run,
        changed: 0,
    };
    if req.undo {
        undo(ctx, &mut steps, &user, &old, &config_path).await?;
    } else {
        apply(ctx, &mut steps, &user, req.pool, &old, &config_path).await?;
    }
    let shell = &ctx.shell;
    match (steps.changed, req.dry_run, req.undo) {
        (0, _, false) => shell.note(&format!("Nothing to change: {user} is already set up.")),
        (0, _, true) => shell.note(&format!("Nothing to undo for {user}.")),
        (n, true, _) => shell.note(&format!(
            "Dry run: {n} change(s) would be made; nothing was changed."
        )),
        (n, false, true) => shell.note(&format!("Undone: {n} change(s).")),
        (n, false, false) => shell.note(&format!(
            "Done: {n} change(s). {user} must log out and in again (for the docker group), then run `velo doctor`."
        )),
    }
    Ok(())
}

/// The user to prepare: `--user`, else the one who ran sudo.
fn target_user(asked: Option<&str>) -> Result<String> {
    let user = match asked {
        Some(u) => u.to_string(),
        None => std::env::var("SUDO_USER").map_err(|_| {
            anyhow!("say which user should run velo: `velo setup --user NAME` (or run `sudo velo setup` as that user)")
        })?,
    };
    let valid = user
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        bail!(
            "`{user}` is not a user name velo can write into a sudoers rule (letters, digits, `_`, `-`, `.`)"
        );
    }
    if user == "root" {
        bail!("root runs velo without any set-up; give the user who should run velo: --user NAME");
    }
    if !std::process::Command::new("id")
        .args(["-u", &user])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        bail!("there is no user `{user}` on this host: create it first (`adduser {user}`)");
    }
    Ok(user)
}

/// The absolute path of a program: on PATH, else in the sbin directories a user's PATH lacks.
fn find_program(name: &str) -> Result<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
        .map(|p| p.display().to_string())
        .ok_or_else(|| {
            anyhow!("`{name}` is not installed: install OpenZFS (zfsutils-linux) or zfs-fuse")
        })
}

async fn apply(
    ctx: &Ctx,
    steps: &mut Steps<'_>,
    user: &str,
    asked_pool: Option<String>,
    old: &Config,
    config_path: &Path,
) -> Result<()> {
    let zfs_path = find_program("zfs")?;
    let zpool_path = find_program("zpool")?;
    let implementation = ctx
        .zfs
        .implementation()
        .await
        .context("asking ZFS which it is")?;
    let pool = super::project::choose_pool(ctx, asked_pool).await?;
    if !pool
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        bail!(
            "pool `{pool}` has characters velo cannot put in a sudoers rule; use a pool named with letters, digits, `_`, `-` and `.`"
        );
    }
    let base = names::base_dataset(&pool);
    let mut next = old.clone();

    let base_exists = ctx.zfs.exists(&base).await?;
    steps
        .step(base_exists, &format!("create dataset {base}"), async {
            let compression = ctx.zfs.best_compression(&pool).await;
            let mut props = BASE_PROPERTIES.to_vec();
            props.push(("compression", compression));
            ctx.zfs.create(&base, &props).await?;
            Ok(())
        })
        .await?;
    next.created_base |= !base_exists;

    match implementation {
        Implementation::ZfsFuse => ctx.shell.warn(&format!(
            "this host runs zfs-fuse, which has no `zfs allow`: {user} cannot run velo without root here (velo runs as root only on zfs-fuse); install OpenZFS for non-root use"
        )),
        Implementation::OpenZfs(_) => {
            let delegation = ctx.zfs.pool_property(&pool, "delegation").await?;
            steps
                .step(
                    delegation == "on",
                    &format!("turn on delegation on pool {pool}"),
                    async {
                        Ok(ctx.zfs.set_pool_property(&pool, "delegation", "on").await?)
                    },
                )
                .await?;
            next.enabled_delegation |= delegation != "on";
            let have = delegated(ctx, &base, user).await?;
            let complete = DELEGATED_PERMISSIONS
                .iter()
                .all(|p| have.iter().any(|h| h == p));
            steps
                .step(
                    complete,
                    &format!(
                        "zfs allow {user} {} on {base}",
                        DELEGATED_PERMISSIONS.join(",")
                    ),
                    async { Ok(ctx.zfs.allow(&base, user, DELEGATED_PERMISSIONS).await?) },
                )
                .await?;
        }
    }

    require_sudo_with_regex().await?;
    let sudoers = sudoers_path(user);
    let rule = sudoers_rule(user, &zfs_path, &pool);
    let current = std::fs::read_to_string(&sudoers).ok();
    steps
        .step(
            current.as_deref() == Some(rule.as_str()),
            &format!(
                "install {} (mount/unmount under {base} only)",
                sudoers.display()
            ),
            install_sudoers(&sudoers, &rule),
        )
        .await?;

    let in_group = docker_group_members()?.iter().any(|m| m == user);
    ctx.shell.warn(&format!(
        "the docker group is root-equivalent: {user} can start a container that mounts / and do anything as root; give it only to users you would give root"
    ));
    steps
        .step(
            in_group,
            &format!("add {user} to the docker group"),
            run("gpasswd", &["-a", user, "docker"]),
        )
        .await?;
    let previous = old.users.get(user).cloned().unwrap_or_default();
    next.pool = Some(pool.clone());
    next.zfs = Some(zfs_path);
    next.zpool = Some(zpool_path);
    next.users.insert(
        user.to_string(),
        UserSetup {
            added_to_docker_group: previous.added_to_docker_group || !in_group,
        },
    );
    steps
        .step(
            next == *old,
            &format!("record pool {pool} in {}", config_path.display()),
            async { Ok(next.save(config_path)?) },
        )
        .await
}

async fn undo(
    ctx: &Ctx,
    steps: &mut Steps<'_>,
    user: &str,
    old: &Config,
    config_path: &Path,
) -> Result<()> {
    let sudoers = sudoers_path(user);
    steps
        .step(
            !sudoers.exists(),
            &format!("remove {}", sudoers.display()),
            async {
                std::fs::remove_file(&sudoers)
                    .with_context(|| format!("removing {}", sudoers.display()))
            },
        )
        .await?;
    let pool = old.pool.clone();
    if let Some(pool) = &pool {
        let base = names::base_dataset(pool);
        if let Implementation::OpenZfs(_) = ctx.zfs.implementation().await? {
            let have = delegated(ctx, &base, user).await?;
            steps
                .step(
                    have.is_empty(),
                    &format!("zfs unallow {user} {} on {base}", have.join(",")),
                    async { Ok(ctx.zfs.unallow(&base, user, DELEGATED_PERMISSIONS).await?) },
                )
                .await?;
        }
    }
    let record = old.users.get(user).cloned().unwrap_or_default();
    let in_group = docker_group_members()?.iter().any(|m| m == user);
    steps
        .step(
            !(record.added_to_docker_group && in_group),
            &format!("remove {user} from the docker group (setup added them)"),
            run("gpasswd", &["-d", user, "docker"]),
        )
        .await?;
    let mut next = old.clone();
    next.users.remove(user);
    if !next.users.is_empty() {
        return steps
            .step(
                next == *old,
                &format!("forget {user} in {}", config_path.display()),
                async { Ok(next.save(config_path)?) },
            )
            .await;
    }
    // The last user setup prepared: take back the host-wide changes too.
    if let Some(pool) = &pool {
        let base = names::base_dataset(pool);
        steps
            .step(
                !old.enabled_delegation,
                &format!("turn delegation on pool {pool} off again"),
                async { Ok(ctx.zfs.set_pool_property(pool, "delegation", "off").await?) },
            )
            .await?;
        let tree = ctx.zfs.list_tree(&base).await?;
        if old.created_base && tree.len() > 1 {
            ctx.shell.note(&format!(
                "{base} still holds projects; it stays (delete them, then run --undo again)"
            ));
        } else {
            steps
                .step(
                    !old.created_base || tree.is_empty(),
                    &format!("destroy the empty dataset {base}"),
                    async { Ok(ctx.zfs.destroy_dataset(&base).await?) },
                )
                .await?;
        }
    }
    steps
        .step(
            !config_path.exists(),
            &format!("remove {}", config_path.display()),
            async { Ok(Config::remove(config_path)?) },
        )
        .await
}

/// Runs a host tool and fails with its stderr.
async fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Members of the docker group (from the group database, like `getent group docker`).
fn docker_group_members() -> Result<Vec<String>> {
    let out = std::process::Command::new("getent")
        .args(["group", "docker"])
        .output()
        .context("running getent")?;
    if !out.status.success() {
        bail!(
            "there is no docker group: install Docker (its package creates the group), then run setup again"
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    Ok(line
        .trim()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .split(',')
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect())
}

/// Fails unless sudo (and visudo) are installed and new enough for regular expressions.
async fn require_sudo_with_regex() -> Result<()> {
    let out = Command::new("sudo")
        .arg("-V")
        .output()
        .await
        .context("running `sudo -V`: install sudo (apt install sudo)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = parse_sudo_version(&text)
        .ok_or_else(|| anyhow!("cannot read sudo's version from `sudo -V`"))?;
    if version < SUDO_WITH_REGEX {
        bail!(
            "sudo {}.{}.{} cannot match command arguments with a regular expression, which velo's sudoers rule needs so that it names only velo's datasets; install sudo 1.9.10 or newer",
            version.0,
            version.1,
            version.2
        );
    }
    Ok(())
}

/// `Sudo version 1.9.13p3` → (1, 9, 13).
fn parse_sudo_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.lines().next()?.strip_prefix("Sudo version ")?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit()).map(str::parse);
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    ))
}

/// The sudoers entry: `user` may run exactly `zfs mount D` and `zfs unmount D` as root, for D a
/// project or branch dataset under `<pool>/velo`. Arguments are matched by anchored regular
/// expressions (sudo ≥ 1.9.10) whose character classes hold no space, `/`, `@` or option
/// letters, so no other dataset, snapshot, option (`-a`, `-o`) or extra argument matches.
pub fn sudoers_rule(user: &str, zfs: &str, pool: &str) -> String {
    let pool_re = pool.replace('.', "[.]");
    let name = "[a-z][a-z0-9-]*";
    let datasets = [
        format!("{pool_re}/velo/{name}"),
        format!("{pool_re}/velo/{name}/{name}[.][0-9]+"),
    ];
    let commands: Vec<String> = ["mount", "unmount"]
        .iter()
        .flat_map(|verb| datasets.iter().map(move |d| format!("{zfs} ^{verb} {d}$")))
        .collect();
    format!(
        "# Written by `velo setup`; `sudo velo setup --undo --user {user}` removes it.\n# {user} may mount and unmount velo's datasets under {pool}/velo, and run nothing else as root.\n{user} ALL=(root) NOPASSWD: {}\n",
        commands.join(", \\\n    ")
    )
}

/// Validates the rule with `visudo -c` in a file sudo ignores (its name has a `.`), then
/// installs it with mode 0440 by renaming it into place.
async fn install_sudoers(path: &Path, rule: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().expect("sudoers.d");
    let tmp = dir.join(format!(
        ".{}.velo-tmp",
        path.file_name().expect("a file").to_string_lossy()
    ));
    std::fs::write(&tmp, rule)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o440)))
        .with_context(|| format!("writing {}", tmp.display()))?;
    let checked = run("visudo", &["-c", "-q", "-f", &tmp.display().to_string()]).await;
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context("the generated sudoers rule did not validate; nothing was installed"));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("installing {}", path.display()))
}

/// The permissions delegated to `user` on `base`; none while `base` does not exist (a dry run
/// before the first setup, or after an undo).
async fn delegated(ctx: &Ctx, base: &str, user: &str) -> Result<Vec<String>> {
    if !ctx.zfs.exists(base).await? {
        return Ok(Vec::new());
    }
    Ok(ctx.zfs.allowed(base, user).await?)
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
    fn rule_names_only_velo_datasets() {
        let rule = sudoers_rule("ann", "/usr/sbin/zfs", "my.pool");
        assert!(rule.contains(
            "/usr/sbin/zfs ^mount my[.]pool/velo/[a-z][a-z0-9-]*/[a-z][a-z0-9-]*[.][0-9]+$"
        ));
        assert!(rule.contains("/usr/sbin/zfs ^unmount my[.]pool/velo/[a-z][a-z0-9-]*$"));
        assert!(!rule.contains(" *"), "no sudoers wildcard: {rule}");
        assert_eq!(rule.matches("/usr/sbin/zfs ^").count(), 4);
    }
}
