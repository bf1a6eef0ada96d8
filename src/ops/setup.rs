//! `velo setup`: the one-time host set-up (as root) that lets a user run every velo command on
//! ZFS without root, and `velo setup --undo`, which takes back what setup added.
//!
//! Each step looks first and changes only what is not already so, so a second run changes
//! nothing and says so; `--dry-run` prints every change without making it. What setup changed
//! is recorded in velo's config ([`crate::config`]), which is what `--undo` reverses. Why each
//! permission and the sudoers rule are what they are: docs/setup.md and docs/security.md.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::process::Command;

use super::Ctx;
use super::choose::{pick_pool, plain_user_name};
use crate::config::{Config, UserSetup};
use crate::storage::zfs::user_base;
use crate::zfs::{
    BASE_PROPERTIES, DELEGATED_DESCENDENT, DELEGATED_LOCAL, Implementation, SECURITY_PROPERTIES,
    Scope, Zfs, is_root,
};

mod sudoers;

pub use sudoers::{sudoers_path, sudoers_rule};

/// Where setup looks for `zfs` and `zpool`: system directories only, never `$PATH`, the
/// environment or a config a user could have written, since the path goes into a sudoers rule.
const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

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
            self.ctx
                .shell
                .note_marked(crate::ui::Mark::Ok, &format!("{what}: already so"));
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

/// The user setup prepares.
struct Target {
    name: String,
    uid: u32,
    gid: u32,
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
    let zfs = Zfs::at(
        system_program("zfs")?.display().to_string(),
        system_program("zpool")?.display().to_string(),
    );
    let mut steps = Steps {
        ctx,
        dry_run: req.dry_run,
        changed: 0,
    };
    if req.undo {
        undo(&zfs, &mut steps, &user, &old, &config_path).await?;
    } else {
        apply(ctx, &zfs, &mut steps, &user, req.pool, &old, &config_path).await?;
    }
    let (shell, name) = (&ctx.shell, &user.name);
    match (steps.changed, req.dry_run, req.undo) {
        (0, _, false) => shell.note(&format!("Nothing to change: {name} is already set up.")),
        (0, _, true) => shell.note(&format!("Nothing to undo for {name}.")),
        (n, true, _) => shell.note(&format!(
            "Dry run: {n} change(s) would be made; nothing was changed."
        )),
        (n, false, true) => shell.note(&format!("Undone: {n} change(s).")),
        (n, false, false) => shell.note(&format!(
            "Done: {n} change(s). {name} must log out and in again (for the docker group), then run `velo doctor`."
        )),
    }
    Ok(())
}

/// The user to prepare: `--user`, else the one who ran sudo.
fn target_user(asked: Option<&str>) -> Result<Target> {
    let name = match asked {
        Some(u) => u.to_string(),
        None => std::env::var("SUDO_USER").map_err(|_| {
            anyhow!("say which user should run velo: `velo setup --user NAME` (or run `sudo velo setup` as that user)")
        })?,
    };
    if !plain_user_name(&name) {
        bail!(
            "`{name}` is not a user name velo can name a dataset after (lowercase letters, digits, `_`, `-`, starting with a letter or `_`)"
        );
    }
    if name == "root" {
        bail!("root runs velo without any set-up; give the user who should run velo: --user NAME");
    }
    let id = |flag: &str| -> Result<u32> {
        let out = std::process::Command::new("id")
            .args([flag, &name])
            .output()
            .context("running `id`")?;
        if !out.status.success() {
            bail!("there is no user `{name}` on this host: create it first (`adduser {name}`)");
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| anyhow!("`id {flag} {name}` printed no number"))
    };
    Ok(Target {
        uid: id("-u")?,
        gid: id("-g")?,
        name,
    })
}

/// The path of a root-owned program in a system directory, every directory above it root's and
/// writable by no one else: the only kind of program setup names in a sudoers rule.
fn system_program(name: &str) -> Result<PathBuf> {
    for dir in SYSTEM_DIRS {
        let Ok(path) = Path::new(dir).join(name).canonicalize() else {
            continue;
        };
        if let Err(why) = root_owned_chain(&path) {
            bail!(
                "{} is not safe to name in a sudoers rule: {why}",
                path.display()
            );
        }
        return Ok(path);
    }
    bail!(
        "`{name}` is not installed in {}: install OpenZFS (zfsutils-linux) or zfs-fuse",
        SYSTEM_DIRS.join(", ")
    )
}

fn root_owned_chain(path: &Path) -> Result<(), String> {
    for p in path.ancestors() {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "{} belongs to uid {} or others may write it",
                p.display(),
                meta.uid()
            ));
        }
    }
    Ok(())
}

async fn apply(
    ctx: &Ctx,
    zfs: &Zfs,
    steps: &mut Steps<'_>,
    user: &Target,
    asked_pool: Option<String>,
    old: &Config,
    config_path: &Path,
) -> Result<()> {
    let implementation = zfs
        .implementation()
        .await
        .context("asking ZFS which it is")?;
    let (pool, _) = pick_pool(zfs, old.pool.as_ref(), asked_pool).await?;
    if !pool
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        bail!(
            "pool `{pool}` has characters velo cannot put in a sudoers rule; use a pool named with letters, digits, `_`, `-` and `.`"
        );
    }
    let root = format!("{pool}/velo");
    let base = user_base(&pool, &user.name);
    let mut next = old.clone();
    let compression = zfs.best_compression(&pool).await;
    let mut props = BASE_PROPERTIES.to_vec();
    props.extend_from_slice(SECURITY_PROPERTIES);
    props.push(("compression", compression));

    let root_exists = zfs.exists(&root).await?;
    steps
        .step(root_exists, &format!("create dataset {root}"), async {
            Ok(zfs.create(&root, &props).await?)
        })
        .await?;
    next.created_base |= !root_exists;
    // A root made just now (or, in a dry run, to be made) has them from its creation.
    let security = !root_exists || security_set(zfs, &root).await?;
    steps
        .step(
            security,
            &format!("set setuid, devices and exec off on {root}"),
            async {
                for (k, v) in SECURITY_PROPERTIES {
                    zfs.set(&root, k, v).await?;
                }
                Ok(())
            },
        )
        .await?;
    let base_exists = zfs.exists(&base).await?;
    steps
        .step(base_exists, &format!("create dataset {base}"), async {
            Ok(zfs.create(&base, &[]).await?)
        })
        .await?;
    private_base(zfs, steps, &base, user).await?;

    match implementation {
        Implementation::ZfsFuse => ctx.shell.warn(&format!(
            "this host runs zfs-fuse, which has no `zfs allow`: {} cannot run velo without root here (velo runs as root only on zfs-fuse); install OpenZFS for non-root use",
            user.name
        )),
        Implementation::OpenZfs(_) => {
            delegate(zfs, steps, &pool, &root, &base, user, &mut next).await?;
        }
    }

    require_sudo_with_regex().await?;
    let sudoers = sudoers_path(user.uid);
    let rule = sudoers_rule(&user.name, user.uid, zfs.zfs_program(), &base);
    let current = std::fs::read_to_string(&sudoers).ok();
    steps
        .step(
            current.as_deref() == Some(rule.as_str()),
            &format!(
                "install {} (mount/unmount under {base} only)",
                sudoers.display()
            ),
            sudoers::install(&sudoers, &rule),
        )
        .await?;

    let in_group = docker_group_members()?.contains(&user.name);
    ctx.shell.warn(&format!(
        "the docker group is root-equivalent: {} can start a container that mounts / and do anything as root; give it only to users you would give root (the native runtime needs no Docker)",
        user.name
    ));
    steps
        .step(
            in_group,
            &format!("add {} to the docker group", user.name),
            run("gpasswd", &["-a", &user.name, "docker"]),
        )
        .await?;
    let previous = old.users.get(&user.name).cloned().unwrap_or_default();
    next.pool = Some(pool.clone());
    next.zfs = Some(zfs.zfs_program().to_string());
    next.zpool = Some(zfs.zpool_program().to_string());
    next.users.insert(
        user.name.clone(),
        UserSetup {
            added_to_docker_group: previous.added_to_docker_group || !in_group,
            uid: Some(user.uid),
            base: Some(base.clone()),
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

async fn security_set(zfs: &Zfs, dataset: &str) -> Result<bool> {
    let names: Vec<&str> = SECURITY_PROPERTIES.iter().map(|(k, _)| *k).collect();
    let props = zfs.get(&[dataset], &names).await?;
    Ok(SECURITY_PROPERTIES.iter().all(|(k, v)| {
        props
            .get(dataset)
            .and_then(|p| p.get(*k))
            .cloned()
            .flatten()
            .as_deref()
            == Some(*v)
    }))
}

/// The base's root directory: root's, entered only by the user (whose volumes are below it).
async fn private_base(zfs: &Zfs, steps: &mut Steps<'_>, base: &str, user: &Target) -> Result<()> {
    let mountpoint = match zfs.mountpoint(base).await {
        Ok(Some(m)) => PathBuf::from(m),
        // A dry run before the base exists: it would be made private once made.
        _ if steps.dry_run => PathBuf::from(format!("/{base}")),
        _ => {
            zfs.mount(base).await?;
            zfs.mountpoint(base)
                .await?
                .map(PathBuf::from)
                .ok_or_else(|| anyhow!("{base} is not mounted"))?
        }
    };
    let meta = std::fs::metadata(&mountpoint).ok();
    let done =
        meta.is_some_and(|m| m.uid() == 0 && m.gid() == user.gid && m.mode() & 0o777 == 0o750);
    steps
        .step(
            done,
            &format!(
                "make {} root's, entered only by {}",
                mountpoint.display(),
                user.name
            ),
            async {
                let fd = crate::fsx::open_dir(&mountpoint)?;
                rustix::fs::fchown(
                    &fd,
                    Some(rustix::fs::Uid::ROOT),
                    Some(rustix::fs::Gid::from_raw(user.gid)),
                )?;
                rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(0o750))?;
                Ok(())
            },
        )
        .await
}

/// Delegates velo's permissions on the user's base, by scope; takes back what an older velo
/// delegated on `<pool>/velo` itself.
async fn delegate(
    zfs: &Zfs,
    steps: &mut Steps<'_>,
    pool: &str,
    root: &str,
    base: &str,
    user: &Target,
    next: &mut Config,
) -> Result<()> {
    let delegation = zfs.pool_property(pool, "delegation").await?;
    steps
        .step(
            delegation == "on",
            &format!("turn on delegation on pool {pool}"),
            async { Ok(zfs.set_pool_property(pool, "delegation", "on").await?) },
        )
        .await?;
    next.enabled_delegation |= delegation != "on";
    let name = &user.name;
    let on_root = if zfs.exists(root).await? {
        zfs.delegated(root, name).await?
    } else {
        Default::default()
    };
    let stale: Vec<&str> = on_root
        .local
        .iter()
        .chain(&on_root.descendent)
        .map(String::as_str)
        .collect();
    steps
        .step(
            stale.is_empty(),
            &format!("zfs unallow {name} on {root} (an older velo's delegation)"),
            async { Ok(zfs.unallow(root, name, &stale).await?) },
        )
        .await?;
    let have = if zfs.exists(base).await? {
        zfs.delegated(base, name).await?
    } else {
        Default::default()
    };
    let has_all = |want: &[&str], have: &[String]| want.iter().all(|p| have.iter().any(|h| h == p));
    steps
        .step(
            has_all(DELEGATED_LOCAL, &have.local),
            &format!(
                "zfs allow -l {name} {} on {base}",
                DELEGATED_LOCAL.join(",")
            ),
            async { Ok(zfs.allow(base, name, Scope::Local, DELEGATED_LOCAL).await?) },
        )
        .await?;
    steps
        .step(
            has_all(DELEGATED_DESCENDENT, &have.descendent),
            &format!(
                "zfs allow -d {name} {} on {base}",
                DELEGATED_DESCENDENT.join(",")
            ),
            async {
                Ok(zfs
                    .allow(base, name, Scope::Descendent, DELEGATED_DESCENDENT)
                    .await?)
            },
        )
        .await
}

async fn undo(
    zfs: &Zfs,
    steps: &mut Steps<'_>,
    user: &Target,
    old: &Config,
    config_path: &Path,
) -> Result<()> {
    let sudoers = sudoers_path(user.uid);
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
    let record = old.users.get(&user.name).cloned().unwrap_or_default();
    if let (Some(base), Implementation::OpenZfs(_)) = (&record.base, zfs.implementation().await?)
        && zfs.exists(base).await?
    {
        let have = zfs.delegated(base, &user.name).await?;
        let all: Vec<&str> = have
            .local
            .iter()
            .chain(&have.descendent)
            .map(String::as_str)
            .collect();
        steps
            .step(
                all.is_empty(),
                &format!("zfs unallow {} on {base}", user.name),
                async { Ok(zfs.unallow(base, &user.name, &all).await?) },
            )
            .await?;
    }
    let in_group = docker_group_members()?.contains(&user.name);
    steps
        .step(
            !(record.added_to_docker_group && in_group),
            &format!(
                "remove {} from the docker group (setup added them)",
                user.name
            ),
            run("gpasswd", &["-d", &user.name, "docker"]),
        )
        .await?;
    if let Some(base) = &record.base {
        // Prepared clusters are velo's own, not the user's projects: they go with the base.
        let prepared = format!("{base}/{}.", crate::names::PREPARED);
        let tree = zfs.list_tree(base).await?;
        let held = tree
            .iter()
            .filter(|name| *name != base && !name.starts_with(&prepared))
            .count();
        if held > 0 {
            steps.ctx.shell.note(&format!(
                "{base} still holds {}'s projects; it stays (they delete them, then run --undo again)",
                user.name
            ));
        } else {
            steps
                .step(
                    tree.is_empty(),
                    &format!("destroy the empty dataset {base}"),
                    async { Ok(zfs.destroy_dataset(base).await?) },
                )
                .await?;
        }
    }
    let mut next = old.clone();
    next.users.remove(&user.name);
    if !next.users.is_empty() {
        return steps
            .step(
                next == *old,
                &format!("forget {} in {}", user.name, config_path.display()),
                async { Ok(next.save(config_path)?) },
            )
            .await;
    }
    // The last user setup prepared: take back the host-wide changes too.
    if let Some(pool) = &old.pool {
        let root = format!("{pool}/velo");
        steps
            .step(
                !old.enabled_delegation,
                &format!("turn delegation on pool {pool} off again"),
                async { Ok(zfs.set_pool_property(pool, "delegation", "off").await?) },
            )
            .await?;
        let tree = zfs.list_tree(&root).await?;
        if old.created_base && tree.len() > 1 {
            steps.ctx.shell.note(&format!(
                "{root} still holds datasets; it stays (delete their projects, then run --undo again)"
            ));
        } else {
            steps
                .step(
                    !old.created_base || tree.is_empty(),
                    &format!("destroy the empty dataset {root}"),
                    async { Ok(zfs.destroy_dataset(&root).await?) },
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
    let version = sudoers::parse_sudo_version(&text)
        .ok_or_else(|| anyhow!("cannot read sudo's version from `sudo -V`"))?;
    if version < sudoers::SUDO_WITH_REGEX {
        bail!(
            "sudo {}.{}.{} cannot match command arguments with a regular expression, which velo's sudoers rule needs so that it names only velo's datasets; install sudo 1.9.10 or newer",
            version.0,
            version.1,
            version.2
        );
    }
    Ok(())
}
