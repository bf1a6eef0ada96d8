//! Followers (`project create --from URL --follow`): main is a hot standby of the source,
//! streaming its WAL, and every other branch is a clone of a snapshot of it, promoted.
//!
//! Main reaches the source with a password file velo keeps for as long as the project exists,
//! in a directory of the velo home only main's server reads (mounted into main's container
//! alone, never into a branch's: a branch's superuser cannot read it). A clone of main carries
//! main's `standby.signal`; it is removed before the clone's server first starts, so the clone
//! ends its recovery at the end of the WAL it has and becomes a writable server of its own,
//! whose superuser then gets the project's password (main's roles are the source's, and main,
//! read-only, keeps the source's passwords).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::Ctx;
use super::server;
use crate::archive;
use crate::fsx;
use crate::names::{BranchRef, ProjectName, SnapshotId};
use crate::pg::{Replication, Sql};
use crate::runtime::{ServerPaths, ServerSpec, ServerUser};
use crate::source::SourceUrl;
use crate::state::Project;

/// The file that keeps a server a standby.
pub const STANDBY_SIGNAL: &str = "standby.signal";
/// How long a promoted clone of a follower's main may take to answer: it replays all the WAL
/// since the source's last checkpoint (up to `checkpoint_timeout` of it, under load).
pub const CLONE_READY: Duration = Duration::from_secs(600);
/// Behind by more than this, `branch create` of a follower's main warns.
const WARN_LAG: Duration = Duration::from_secs(30);
/// A snapshot of a follower's main asks the source for a checkpoint when main has replayed
/// more WAL than this since its last restartpoint (replaying this much takes a clone a
/// fraction of a second).
const WORTH_A_CHECKPOINT: u64 = 16 << 20;
/// How long a snapshot of main waits for main to replay the source's checkpoint.
const CHECKPOINT_REPLAY: Duration = Duration::from_secs(10);

/// Where follower `project` keeps the password its main reaches the source with.
pub fn secrets_dir(ctx: &Ctx, project: &ProjectName) -> PathBuf {
    ctx.store.dir().join("follow").join(project.as_str())
}

/// Makes the secrets directory of follower `project`, which only velo's user and the server's
/// user `reader` may enter, and writes its password file there if the source has a password:
/// one line, mode 0600, owned by `reader` (libpq reads only a file no one else may).
pub fn write_secrets(
    ctx: &Ctx,
    project: &ProjectName,
    secret: Option<&str>,
    reader: ServerUser,
) -> Result<()> {
    let dir = secrets_dir(ctx, project);
    super::import::write_passfile(&dir, secret, reader)
        .with_context(|| format!("writing the follower's password file in {}", dir.display()))
}

/// Removes follower `project`'s password file and directory; missing is success.
pub fn remove_secrets(ctx: &Ctx, project: &ProjectName) -> Result<()> {
    super::remove_dir(&secrets_dir(ctx, project))
}

/// Whether `r` is a follower's main, which stays a standby.
pub fn is_standby(project: &Project, r: &BranchRef) -> bool {
    project.followed().is_some() && r.branch.is_main()
}

/// The source's WAL archive a follower's main restores from when it cannot stream, if one was
/// given (`--source-wal`); none for any other branch.
pub fn source_wal(project: &Project, r: &BranchRef) -> Option<PathBuf> {
    project
        .imported
        .as_ref()
        .filter(|_| is_standby(project, r))
        .and_then(|i| i.source_wal.clone())
}

/// Fails for a follower's main, whose passwords are its source's (velo cannot set the
/// project's on a standby): commands that hand out the project's password call this first.
pub fn password_check(project: &Project, r: &BranchRef) -> Result<()> {
    match project.followed().filter(|_| r.branch.is_main()) {
        Some(url) => bail!(
            "`{r}` is a standby of {}: its roles and passwords are the source's, which velo does not keep. Log in as you would to the source, use `velo branch psql {r}` (velo's own socket, no password), or branch from it: a branch gets the project's password",
            url.redacted()
        ),
        None => Ok(()),
    }
}

/// For a follower's main: the settings that make it stream from the source, for a server that
/// sees its directories as `view`. None for any other branch.
pub fn standby_settings(
    project: &Project,
    r: &BranchRef,
    view: &ServerPaths,
) -> Vec<(String, String)> {
    let Some(url) = project.followed().filter(|_| r.branch.is_main()) else {
        return Vec::new();
    };
    let passfile = view
        .secrets_dir
        .as_ref()
        .map(|d| d.join(super::import::PASSFILE).display().to_string())
        .unwrap_or_default();
    let conninfo = primary_conninfo(url, &r.project, &passfile);
    let mut settings = vec![
        ("primary_conninfo".to_string(), conninfo),
        ("hot_standby".to_string(), "on".to_string()),
    ];
    if let Some(imported) = &project.imported {
        // A hot standby refuses to run with less than its source's.
        settings.extend(imported.standby_limits.clone());
    }
    if let Some(slot) = project.imported.as_ref().and_then(|i| i.slot.as_ref()) {
        settings.push(("primary_slot_name".into(), slot.clone()));
    }
    if let Some(wal) = &view.source_wal {
        let dir = wal.display().to_string();
        settings.push(("restore_command".into(), archive::restore_from(&dir)));
    }
    settings
}

/// How a follower's main connects to `url`: its own application name (the source's
/// `pg_stat_replication` shows it), the password from `passfile`.
fn primary_conninfo(url: &SourceUrl, project: &ProjectName, passfile: &str) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    format!(
        "{} application_name={} passfile={}",
        url.conninfo(&url.database),
        quote(&format!("velo-{project}")),
        quote(passfile)
    )
}

/// Before a clone of a follower's main first starts: removes the `standby.signal` it carries
/// (as the server's user), so that it ends recovery and is promoted. Returns whether there was
/// one: the clone's superuser then needs the project's password.
pub async fn promote_clone(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    spec: &ServerSpec,
) -> Result<bool> {
    if project.followed().is_none() || r.branch.is_main() {
        return Ok(false);
    }
    // Removed through a handle on the data directory (opened without following a link):
    // `unlinkat` removes the name itself, whatever it is, and never follows it, so root may do
    // it where the server's superuser can write. A directory velo's user cannot enter (a Docker
    // server's, for a user who is not root) is left to the runtime, as the server's user.
    let data = &spec.paths.data_dir;
    if let Ok(dir) = fsx::open_dir(data) {
        match rustix::fs::unlinkat(dir.as_fd(), STANDBY_SIGNAL, rustix::fs::AtFlags::empty()) {
            Ok(()) => return Ok(replays(ctx, r)),
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(_) => {}
        }
    }
    let runtime = ctx.runtime(project)?;
    ctx.shell
        .step(
            "Promote",
            runtime.remove_file(spec, STANDBY_SIGNAL, server::server_user(project)),
        )
        .await?;
    Ok(replays(ctx, r))
}

/// Before a snapshot of a follower's main, which is running: a server started on the
/// snapshot replays the WAL since main's last restartpoint, and a standby makes one only
/// where its source checkpointed (`checkpoint_timeout` apart, or more). When main has
/// replayed much since then, the source is asked for a CHECKPOINT and main is given the time
/// to replay it, so that the CHECKPOINT velo asks main for next is a restartpoint there.
/// Never fails: what cannot be done is said, and the clone then replays more.
pub async fn shorten_replay(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    main: &dyn Sql,
    tag: &SnapshotId,
) {
    let Some(url) = project.followed() else {
        return;
    };
    let behind = match main.since_restartpoint().await {
        Ok(bytes) if bytes >= WORTH_A_CHECKPOINT => bytes,
        Ok(_) => return,
        Err(e) => {
            let e = anyhow::Error::new(e);
            ctx.shell
                .warn(&format!("cannot tell main's last restartpoint: {e:#}"));
            return;
        }
    };
    let more = format!(
        "a branch of main replays the {} MB of WAL main received since the source's last checkpoint",
        behind >> 20
    );
    let secrets = secrets_dir(ctx, &r.project);
    let tag = format!("checkpoint-{}", tag.as_str());
    let asked = super::import::source_checkpoint(ctx, project, r, url, secrets, &tag);
    let lsn = match ctx.shell.step("Checkpoint the source", asked).await {
        Ok(lsn) => lsn,
        Err(e) => return ctx.shell.warn(&format!("{e:#}; {more}")),
    };
    let replayed = main.replayed_to(&lsn, CHECKPOINT_REPLAY);
    match ctx
        .shell
        .step("Replay the source's checkpoint", replayed)
        .await
    {
        Ok(true) => {}
        Ok(false) => ctx.shell.warn(&format!(
            "main had not replayed the source's checkpoint after {}; {more}",
            humantime::format_duration(CHECKPOINT_REPLAY)
        )),
        Err(e) => ctx
            .shell
            .warn(&format!("{:#}; {more}", anyhow::Error::new(e))),
    }
}

/// Says why the promoted clone `r` may take a while; returns true.
fn replays(ctx: &Ctx, r: &BranchRef) -> bool {
    ctx.shell.note(&format!(
        "`{r}` replays the WAL main received since its last restartpoint before it answers"
    ));
    true
}

/// After a promoted clone answers: its superuser gets the project's password.
pub async fn own_password(
    ctx: &Ctx,
    project: &Project,
    branch: &crate::state::Branch,
) -> Result<()> {
    ctx.shell
        .step(
            "Set password",
            server::sql(ctx, project, branch).set_password(&project.user, &project.password),
        )
        .await?;
    Ok(())
}

/// For `branch get` and `velo status`: how a follower's main stands, as JSON and in words; none
/// for any other branch. A server that cannot be asked (stopped) says why.
pub async fn observed(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
) -> Option<(serde_json::Value, String)> {
    let url = project.followed().filter(|_| r.branch.is_main())?;
    let source = url.redacted();
    Some(match replication(ctx, project).await {
        Ok(rep) => {
            let lag = rep.lag();
            let words = format!(
                "follows {source}: {}, {} behind",
                rep.describe(),
                lag.map_or("an unknown time".into(), |l| humantime::format_duration(
                    round(l)
                )
                .to_string())
            );
            let json = serde_json::json!({
                "source": source,
                "receiver": rep.receiver,
                "streaming": rep.streaming(),
                "replay_bytes": rep.replay_bytes,
                "lag_seconds": lag.map(|l| l.as_secs_f64()),
            });
            (json, words)
        }
        Err(e) => {
            let why = format!("{e:#}");
            let json = serde_json::json!({ "source": source, "error": why });
            (
                json,
                format!("follows {source}; cannot tell how far behind: {why}"),
            )
        }
    })
}

/// How far main of follower `project` is behind, as its server says.
pub async fn replication(ctx: &Ctx, project: &Project) -> Result<Replication> {
    let main = project
        .branch(&crate::names::BranchName::main())
        .context("the project has no main branch")?;
    Ok(server::sql(ctx, project, main).replication().await?)
}

/// Before a branch is cut from a follower's main: refuses if main is further behind than
/// `max_lag`, warns if it is well behind or not streaming.
pub async fn lag_check(ctx: &Ctx, project: &Project, max_lag: Option<Duration>) -> Result<()> {
    let rep = match replication(ctx, project).await {
        Ok(rep) => rep,
        Err(e) if max_lag.is_none() => {
            ctx.shell.warn(&format!(
                "cannot tell how far main is behind its source: {e:#}"
            ));
            return Ok(());
        }
        Err(e) => return Err(e.context("asking main how far behind its source it is")),
    };
    let lag = rep.lag();
    let behind = lag.map_or("an unknown time".to_string(), |l| {
        humantime::format_duration(round(l)).to_string()
    });
    if let Some(max) = max_lag
        && lag.is_none_or(|l| l > max)
    {
        bail!(
            "main is {behind} behind its source ({}), more than --max-lag {}: wait for it to catch up (`velo status`), or raise --max-lag",
            rep.describe(),
            humantime::format_duration(max)
        );
    }
    if !rep.streaming() || lag.is_none_or(|l| l > WARN_LAG) {
        ctx.shell.warn(&format!(
            "main is {behind} behind its source ({}): the branch has the data main has",
            rep.describe()
        ));
    }
    Ok(())
}

/// A duration to the tenth of a second, for messages.
fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 100 * 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primary_conninfo_names_the_project_and_the_password_file() {
        let url = SourceUrl::parse("postgres://rep@db.example:5433/app", "me")
            .unwrap()
            .url;
        let info = primary_conninfo(&url, &"shop".parse().unwrap(), "/etc/velo/secrets/pgpass");
        assert!(
            info.contains("host='db.example'") || info.contains("host=db.example"),
            "{info}"
        );
        assert!(
            info.contains("user='rep'") || info.contains("user=rep"),
            "{info}"
        );
        assert!(
            info.ends_with("application_name='velo-shop' passfile='/etc/velo/secrets/pgpass'"),
            "{info}"
        );
        assert!(!info.contains("password"), "{info}");
    }
}
