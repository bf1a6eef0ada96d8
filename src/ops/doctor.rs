//! `velo doctor`: is this host ready for velo, and is everything velo made as the state says?
//!
//! Checks come in groups (system, zfs, docker, sudo, state, branches); each is ✓, ! (works, but
//! look) or ✗ (broken), with a one-line fix for anything not ✓. The groups run concurrently, and
//! so do the branches, so a host with a few projects is checked in well under a second. The
//! per-branch checks are one function of their own, [`branch_checks`], so drift detection can
//! share them.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::future::join_all;
use serde_json::json;

use super::Ctx;
use super::choose::dataset_user;
use crate::docker::DockerError;
use crate::names::{self, BranchRef};
use crate::runtime::ServerStatus;
use crate::state::{RunState, RuntimeRecord, State, StorageRecord};
use crate::storage::zfs::user_base;
use crate::ui::human_bytes;
use crate::zfs::{
    DELEGATED_DESCENDENT, DELEGATED_LOCAL, Implementation, ZfsError, ZfsErrorKind, is_root,
};

/// A pool with less free space than this gets a warning.
const LOW_SPACE: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Ok,
    Warn,
    Fail,
}

impl Mark {
    fn shown(self) -> crate::ui::Mark {
        match self {
            Mark::Ok => crate::ui::Mark::Ok,
            Mark::Warn => crate::ui::Mark::Warn,
            Mark::Fail => crate::ui::Mark::Fail,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Mark::Ok => "ok",
            Mark::Warn => "warning",
            Mark::Fail => "fail",
        }
    }
}

/// One finding.
#[derive(Debug, Clone)]
pub struct Check {
    pub group: &'static str,
    pub name: String,
    pub mark: Mark,
    pub detail: String,
    /// What to do, for anything not ✓.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(group: &'static str, name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            group,
            name: name.into(),
            mark: Mark::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(
        group: &'static str,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::ok(group, name, detail).needs(Mark::Warn, fix)
    }

    pub fn fail(
        group: &'static str,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::ok(group, name, detail).needs(Mark::Fail, fix)
    }

    fn needs(self, mark: Mark, fix: impl Into<String>) -> Check {
        Check {
            mark,
            fix: Some(fix.into()),
            ..self
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "group": self.group, "check": self.name, "status": self.mark.word(),
            "detail": self.detail, "fix": self.fix,
        })
    }
}

pub async fn doctor(ctx: &Ctx, as_json: bool, probe_timeout: Duration) -> Result<()> {
    let state = ctx.store.read();
    let known = state.as_ref().ok();
    let (system, zfs, docker, sudo, branches) = tokio::join!(
        system_checks(),
        zfs_checks(ctx, known),
        docker_checks(ctx, known),
        sudo_checks(ctx),
        async {
            match known {
                Some(s) => branch_checks(ctx, s, probe_timeout).await,
                None => Vec::new(),
            }
        },
    );
    let checks: Vec<Check> = [
        system,
        zfs,
        docker,
        sudo,
        state_checks(ctx, &state),
        branches,
    ]
    .into_iter()
    .flatten()
    .collect();
    let failed = checks.iter().filter(|c| c.mark == Mark::Fail).count();
    if as_json {
        ctx.shell.json(&json!({
            "ok": failed == 0,
            "checks": checks.iter().map(Check::to_json).collect::<Vec<_>>(),
        }));
    } else {
        print(ctx, &checks);
    }
    if failed > 0 {
        bail!("velo doctor found {failed} problem(s); each one marked above says how to fix it");
    }
    Ok(())
}

fn print(ctx: &Ctx, checks: &[Check]) {
    let mut group = "";
    for c in checks {
        if c.group != group {
            group = c.group;
            ctx.shell.out(group);
        }
        let mark = ctx.shell.out_glyph(c.mark.shown());
        ctx.shell.out(&format!("  {mark} {}: {}", c.name, c.detail));
        if let Some(fix) = &c.fix {
            ctx.shell.out(&format!("      fix: {fix}"));
        }
    }
}

async fn system_checks() -> Vec<Check> {
    const G: &str = "system";
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let user = if is_root() {
        "root".to_string()
    } else {
        format!(
            "{} (uid {}, not root)",
            current_user(),
            rustix::process::geteuid().as_raw()
        )
    };
    let mut checks = vec![
        Check::ok(G, "os", os),
        Check::ok(G, "kernel", kernel),
        Check::ok(G, "velo", env!("CARGO_PKG_VERSION")),
        Check::ok(G, "user", user),
    ];
    if std::env::consts::OS != "linux" {
        checks.push(Check::fail(
            G,
            "platform",
            std::env::consts::OS,
            "velo runs on Linux only",
        ));
    }
    checks
}

/// The name of the user velo runs as.
pub fn current_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| rustix::process::geteuid().as_raw().to_string())
}

/// The pools velo is meant to use: the configured one and those of existing projects.
fn pools_in_use(ctx: &Ctx, state: Option<&State>) -> BTreeSet<String> {
    ctx.config
        .pool
        .iter()
        .cloned()
        .chain(state.into_iter().flat_map(|s| {
            s.projects.values().filter_map(|p| match &p.storage {
                StorageRecord::Zfs { pool, .. } => Some(pool.clone()),
                _ => None,
            })
        }))
        .collect()
}

async fn zfs_checks(ctx: &Ctx, state: Option<&State>) -> Vec<Check> {
    const G: &str = "zfs";
    let mut checks = Vec::new();
    let zfs = ctx.backends.zfs();
    let implementation = match zfs.implementation().await {
        Ok(i) => i,
        Err(e) => {
            checks.push(zfs_failure(G, "zfs", &e));
            return checks;
        }
    };
    checks.push(Check::ok(
        G,
        "commands",
        format!("{}, {}", zfs.zfs_program(), zfs.zpool_program()),
    ));
    checks.push(match (&implementation, is_root()) {
        (Implementation::OpenZfs(v), _) => Check::ok(G, "implementation", format!("OpenZFS {v}")),
        (Implementation::ZfsFuse, true) => Check::ok(
            G,
            "implementation",
            "zfs-fuse (no `zfs allow`: velo runs as root only on this host)",
        ),
        (Implementation::ZfsFuse, false) => Check::fail(
            G,
            "implementation",
            "zfs-fuse has no `zfs allow`, so velo cannot run without root here",
            "run velo as root (sudo), or install OpenZFS (zfsutils-linux) for non-root use",
        ),
    });
    let pools = pools_in_use(ctx, state);
    if pools.is_empty() {
        checks.push(Check::warn(
            G,
            "pool",
            "no pool chosen yet",
            "run `sudo velo setup` (or pass --pool to `velo project create`)",
        ));
    }
    let per_pool = join_all(
        pools
            .iter()
            .map(|pool| pool_checks(ctx, pool, &implementation)),
    )
    .await;
    checks.extend(per_pool.into_iter().flatten());
    checks
}

fn zfs_failure(group: &'static str, name: &str, e: &ZfsError) -> Check {
    let fix = match e {
        ZfsError::NotInstalled { .. } => {
            "install OpenZFS (apt install zfsutils-linux) or zfs-fuse, then run `sudo velo setup`"
        }
        e if e.kind() == ZfsErrorKind::NotRunning => {
            "start ZFS: `modprobe zfs` (OpenZFS) or start the zfs-fuse daemon"
        }
        e if e.kind() == ZfsErrorKind::NoSuchPool => "import it: `zpool import <pool>`",
        _ => "see the message; `velo setup` prepares the host",
    };
    Check::fail(group, name, first_line(&format!("{e:#}")), fix)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

async fn pool_checks(ctx: &Ctx, pool: &str, implementation: &Implementation) -> Vec<Check> {
    const G: &str = "zfs";
    let zfs = ctx.backends.zfs();
    let base = user_base(pool, &dataset_user());
    let (health, space, base_exists) = tokio::join!(
        zfs.pool_health(pool),
        zfs.pool_space(pool),
        zfs.exists(&base),
    );
    let health = match health {
        Ok(h) => h,
        Err(e) => {
            let mut c = zfs_failure(G, &format!("pool {pool}"), &e);
            if e.kind() == ZfsErrorKind::NoSuchPool {
                c.detail = format!("pool {pool} is not imported");
                c.fix = Some(format!("import it: `zpool import {pool}`"));
            }
            return vec![c];
        }
    };
    let mut checks = vec![if health == "ONLINE" {
        Check::ok(G, format!("pool {pool}"), "ONLINE")
    } else {
        Check::fail(
            G,
            format!("pool {pool}"),
            health,
            format!("see `zpool status {pool}`"),
        )
    }];
    checks.push(match space {
        Ok(s) if s.available < LOW_SPACE => Check::warn(
            G,
            format!("space {pool}"),
            format!("{} free", human_bytes(s.available)),
            "delete branches or snapshots (`velo snapshot cleanup`), or grow the pool",
        ),
        Ok(s) => Check::ok(
            G,
            format!("space {pool}"),
            format!(
                "{} free, {} used",
                human_bytes(s.available),
                human_bytes(s.used)
            ),
        ),
        Err(e) => zfs_failure(G, &format!("space {pool}"), &e),
    });
    checks.push(match base_exists {
        Ok(true) => Check::ok(G, "base dataset", base.clone()),
        Ok(false) => Check::warn(
            G,
            "base dataset",
            format!("{base} does not exist yet"),
            "run `sudo velo setup` (velo project create also makes it, as root)",
        ),
        Err(e) => zfs_failure(G, "base dataset", &e),
    });
    checks.push(delegation_check(ctx, pool, &base, implementation).await);
    checks
}

async fn delegation_check(
    ctx: &Ctx,
    pool: &str,
    base: &str,
    implementation: &Implementation,
) -> Check {
    const G: &str = "zfs";
    let name = "delegation";
    if is_root() {
        return Check::ok(G, name, "running as root: none needed");
    }
    if *implementation == Implementation::ZfsFuse {
        return Check::fail(
            G,
            name,
            "zfs-fuse cannot delegate",
            "run velo as root, or use OpenZFS",
        );
    }
    let user = current_user();
    let fix = format!("run `sudo velo setup --user {user}`");
    match ctx.backends.zfs().pool_property(pool, "delegation").await {
        Ok(v) if v == "on" => {}
        Ok(v) => return Check::fail(G, name, format!("pool {pool} has delegation={v}"), fix),
        Err(e) => return zfs_failure(G, name, &e),
    }
    match ctx.backends.zfs().delegated(base, &user).await {
        Ok(have) => {
            let lacks = |want: &[&str], have: &[String]| -> Vec<String> {
                want.iter()
                    .filter(|p| !have.iter().any(|h| h == *p))
                    .map(|p| p.to_string())
                    .collect()
            };
            let missing: Vec<String> = lacks(DELEGATED_LOCAL, &have.local)
                .into_iter()
                .map(|p| format!("{p} (on the base)"))
                .chain(
                    lacks(DELEGATED_DESCENDENT, &have.descendent)
                        .into_iter()
                        .map(|p| format!("{p} (below it)")),
                )
                .collect();
            if missing.is_empty() {
                Check::ok(
                    G,
                    name,
                    format!(
                        "{user} may {} on {base} and {} below it",
                        DELEGATED_LOCAL.join(","),
                        DELEGATED_DESCENDENT.join(",")
                    ),
                )
            } else {
                Check::fail(
                    G,
                    name,
                    format!("{user} lacks {} on {base}", missing.join(", ")),
                    fix,
                )
            }
        }
        Err(e) => zfs_failure(G, name, &e),
    }
}

async fn docker_checks(ctx: &Ctx, state: Option<&State>) -> Vec<Check> {
    const G: &str = "docker";
    let docker = ctx.backends.docker();
    let version = match docker.version().await {
        Ok(v) => v,
        Err(e) => return vec![docker_failure(G, &e)],
    };
    let mut checks = vec![Check::ok(G, "daemon", format!("Docker {version}"))];
    let images: BTreeSet<&str> = state
        .into_iter()
        .flat_map(|s| {
            s.projects.values().filter_map(|p| match &p.runtime {
                RuntimeRecord::Docker { image } => Some(image.as_str()),
                RuntimeRecord::Native { .. } => None,
            })
        })
        .collect();
    let found = join_all(images.iter().map(|i| docker.image_id(i))).await;
    for (image, found) in images.iter().zip(found) {
        checks.push(match found {
            Ok(Some(_)) => Check::ok(G, format!("image {image}"), "present"),
            Ok(None) => Check::fail(
                G,
                format!("image {image}"),
                "missing",
                format!("`docker pull {image}` (or `docker load` it)"),
            ),
            Err(e) => docker_failure(G, &e),
        });
    }
    checks
}

fn docker_failure(group: &'static str, e: &DockerError) -> Check {
    let socket = std::path::Path::new("/var/run/docker.sock");
    let local = std::env::var_os("DOCKER_HOST").is_none();
    let denied = local
        && socket.exists()
        && rustix::fs::access(socket, rustix::fs::Access::WRITE_OK).is_err();
    if denied {
        return Check::fail(
            group,
            "permission",
            format!("{} may not use {}", current_user(), socket.display()),
            "run `sudo velo setup` (adds you to the docker group), then log out and in again",
        );
    }
    Check::fail(
        group,
        "daemon",
        first_line(&format!("{e}")),
        "start Docker (`systemctl start docker`, or `dockerd &`), or check DOCKER_HOST",
    )
}

/// The sudoers file `velo setup` installs for a user.
pub fn sudoers_path(user: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/etc/sudoers.d/velo-{}", user.replace('.', "_")))
}

async fn sudo_checks(ctx: &Ctx) -> Vec<Check> {
    const G: &str = "sudo";
    if is_root() {
        return vec![Check::ok(G, "sudoers", "running as root: none needed")];
    }
    let user = current_user();
    let fix = format!("run `sudo velo setup --user {user}`");
    let path = sudoers_path(&user);
    if !path.exists() {
        return vec![Check::fail(
            G,
            "sudoers",
            format!("{} is missing", path.display()),
            fix,
        )];
    }
    let Some(pool) = ctx.config.pool.clone() else {
        return vec![Check::fail(G, "sudoers", "no pool in velo's config", fix)];
    };
    // Ask sudo whether velo's mount command is allowed, without running it or prompting.
    let probe = format!("{}/probe.main.0", user_base(&pool, &dataset_user()));
    let zfs = ctx.backends.zfs().zfs_program();
    let out = tokio::process::Command::new("sudo")
        .args(["-n", "-l", zfs, "mount", &probe])
        .output()
        .await;
    vec![match out {
        Ok(o) if o.status.success() => Check::ok(
            G,
            "sudoers",
            format!(
                "{}: mount/unmount under {}",
                path.display(),
                user_base(&pool, &dataset_user())
            ),
        ),
        Ok(o) => Check::fail(
            G,
            "sudoers",
            format!(
                "{} does not let {user} run `{} mount` ({})",
                path.display(),
                zfs,
                first_line(String::from_utf8_lossy(&o.stderr).trim())
            ),
            fix,
        ),
        Err(e) => Check::fail(
            G,
            "sudoers",
            format!("cannot run sudo: {e}"),
            "install sudo",
        ),
    }]
}

fn state_checks(ctx: &Ctx, state: &Result<State, crate::state::StoreError>) -> Vec<Check> {
    const G: &str = "state";
    let path = ctx.store.state_path();
    let shown = path.display().to_string();
    let mut checks = vec![match state {
        Ok(s) => Check::ok(
            G,
            "readable",
            format!("{shown}, {} project(s)", s.projects.len()),
        ),
        Err(e) => Check::fail(
            G,
            "readable",
            format!("{e}"),
            "fix the file, or move it aside (it holds passwords: keep a backup)",
        ),
    }];
    if let Ok(s) = state {
        checks.push(Check::ok(G, "schema", format!("version {}", s.version)));
    }
    match std::fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            checks.push(if mode == 0o600 {
                Check::ok(G, "permissions", "0600")
            } else {
                Check::fail(
                    G,
                    "permissions",
                    format!("{mode:04o}: it holds passwords"),
                    format!("chmod 600 {shown}"),
                )
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            checks.push(Check::ok(G, "permissions", "no state file yet"));
        }
        Err(e) => checks.push(Check::fail(
            G,
            "permissions",
            e.to_string(),
            format!("check {shown}"),
        )),
    }
    checks
}

/// Every branch in the state against what is really there: its volume available, its server
/// present and in the recorded state, and PostgreSQL answering when it should run.
pub async fn branch_checks(ctx: &Ctx, state: &State, probe_timeout: Duration) -> Vec<Check> {
    let per_branch = state.projects.iter().flat_map(|(pname, p)| {
        p.branches.iter().map(move |(bname, b)| async move {
            let r = BranchRef::new(pname.clone(), bname.clone());
            match (ctx.storage(p), ctx.runtime(p)) {
                (Ok(storage), Ok(runtime)) => {
                    one_branch(
                        ctx,
                        p,
                        &r,
                        b,
                        storage.as_ref(),
                        runtime.as_ref(),
                        probe_timeout,
                    )
                    .await
                }
                (Err(e), _) | (_, Err(e)) => vec![Check::fail(
                    "branches",
                    r.to_string(),
                    first_line(&format!("{e:#}")),
                    "see the checks above",
                )],
            }
        })
    });
    join_all(per_branch).await.into_iter().flatten().collect()
}

async fn one_branch(
    ctx: &Ctx,
    p: &crate::state::Project,
    r: &BranchRef,
    b: &crate::state::Branch,
    storage: &dyn crate::storage::Storage,
    runtime: &dyn crate::runtime::Runtime,
    probe_timeout: Duration,
) -> Vec<Check> {
    const G: &str = "branches";
    let volume = storage.name_of(&b.volume(r));
    let server = names::server_name(r);
    let v = b.volume(r);
    let (path, status) = tokio::join!(storage.path(&v), runtime.status(&server));
    let mut checks = vec![match path {
        Ok(Some(at)) => Check::ok(
            G,
            format!("{r} data"),
            format!("{volume} at {}", at.display()),
        ),
        Ok(None) => Check::fail(
            G,
            format!("{r} data"),
            format!("{volume} is not available (not mounted, or gone)"),
            format!("`velo repair` says which; `velo branch start {r}` mounts it"),
        ),
        Err(e) => Check::fail(
            G,
            format!("{r} data"),
            first_line(&format!("{e:#}")),
            "see `velo repair`",
        ),
    }];
    let want = match b.desired {
        RunState::Running => "running",
        RunState::Stopped => "stopped",
    };
    checks.push(match (&status, b.desired) {
        (Ok(ServerStatus::Running), RunState::Running)
        | (Ok(ServerStatus::Stopped { .. }), RunState::Stopped) => {
            Check::ok(G, format!("{r} server"), format!("{server} {want}"))
        }
        (Ok(ServerStatus::Missing), _) => Check::fail(
            G,
            format!("{r} server"),
            format!("{server} is missing"),
            format!("`velo branch start {r}` re-creates it"),
        ),
        (Ok(other), _) => Check::fail(
            G,
            format!("{r} server"),
            format!("{server} is {}, but should be {want}", other.word()),
            format!("`velo branch start {r}` or `velo branch stop {r}`"),
        ),
        (Err(e), _) => Check::fail(
            G,
            format!("{r} server"),
            first_line(&e.to_string()),
            "see the runtime checks above",
        ),
    });
    if b.desired == RunState::Running {
        // Over the branch's private socket: nothing is sent that another program could take.
        let sql = super::server::sql(ctx, p, b);
        let answered = tokio::time::timeout(probe_timeout, sql.probe()).await;
        checks.push(match answered {
            Ok(Ok(true)) => Check::ok(G, format!("{r} server answers"), "PostgreSQL answers"),
            Ok(Ok(false)) => Check::warn(
                G,
                format!("{r} server answers"),
                "PostgreSQL answers, but is still in recovery",
                "wait: a point-in-time branch replays WAL until it reaches its target",
            ),
            Ok(Err(e)) => Check::fail(
                G,
                format!("{r} server answers"),
                format!("no answer: {}", first_line(&format!("{e:#}"))),
                format!("`velo branch restart {r}`; its log says why"),
            ),
            Err(_) => Check::fail(
                G,
                format!("{r} server answers"),
                format!(
                    "no answer within {}",
                    humantime::format_duration(probe_timeout)
                ),
                format!(
                    "a slow host needs `velo doctor --timeout 30s`; else `velo branch restart {r}`"
                ),
            ),
        });
    }
    checks
}
