//! A physical import (`--physical`): `pg_basebackup` with its WAL streamed, run as the server's
//! own user into the new volume's empty data directory, so main becomes an exact copy of the
//! source (every database and role, the source's own settings files) that PostgreSQL recovers
//! to a consistent state when the import server first starts. Only a source of the project's
//! own major can be copied this way; [`source_check`] says what else it needs, before any
//! volume is made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::super::server;
use super::super::{Ctx, follow};
use super::check::{Checked, Facts, major_of};
use super::jobs::{Jobs, Reach, at};
use super::space;
use crate::names::{BranchRef, VolumeId};
use crate::runtime::ClientOutput;
use crate::source::{SourceError, SourceUrl};
use crate::state::{Branch, Project};

/// Fails, naming the fix, if the source cannot be copied physically into `project`, whose
/// client programs said `tools`.
pub fn source_check(facts: &Facts, tools: &str, project: &Project, url: &SourceUrl) -> Result<()> {
    let user = &url.user;
    let place = |reason: String| {
        Err(SourceError::NotPhysical {
            place: url.place(),
            reason,
        }
        .into())
    };
    let source_major = facts.num / 10000;
    if let Some(ours) = major_of(tools).filter(|m| *m != source_major) {
        return place(format!(
            "it runs PostgreSQL {source_major} and the project's server software is PostgreSQL {ours}, and a physical copy needs the same major: create the project with --pg-version {source_major}, or import logically (without --physical)"
        ));
    }
    if !facts.replication {
        return place(format!(
            "user `{user}` may not replicate: `ALTER ROLE {user} REPLICATION` on the source, and allow it a `host replication {user} …` line in the source's pg_hba.conf"
        ));
    }
    if facts.wal_senders == 0 {
        return place(
            "its max_wal_senders is 0: set it to 2 or more (a restart of the source)".into(),
        );
    }
    if facts.tablespaces > 0 {
        return place(
            "it has tablespaces outside its data directory, which a copy on this host cannot place: import logically (without --physical)".into(),
        );
    }
    if facts.superuser != Some(true) {
        let u = &project.user;
        return place(format!(
            "it has no superuser role `{u}`, the role velo manages its projects as: `CREATE ROLE {u} SUPERUSER` on the source, or import logically (without --physical)"
        ));
    }
    Ok(())
}

/// Copies the source into the empty data directory of the volume at `root`, where the import
/// server of `branch` will find it.
pub async fn copy(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    branch: &Branch,
    root: &Path,
    checked: &Checked,
) -> Result<()> {
    let url = checked
        .plan
        .url()
        .expect("a physical import reads a server");
    let mut jobs = Jobs::new(ctx, project, r, branch.port)?;
    jobs.user = server::server_user(project);
    // The data directory itself: the volume's root may be closed to the server's user.
    jobs.dirs.work = Some(root.join("pgdata"));
    jobs.dirs.secrets = checked.secrets.clone();
    let mut args = vec![
        format!("--pgdata={}", jobs.in_work("")),
        "--wal-method=stream".into(),
        "--checkpoint=fast".into(),
        "--no-password".into(),
        "--progress".into(),
        "--verbose".into(),
        format!("--dbname={}", url.conninfo(&url.database)),
    ];
    if let Some(slot) = &checked.plan.record.slot {
        args.extend(["--create-slot".into(), format!("--slot={slot}")]);
    }
    let place = url.place();
    let source = at("pg_basebackup", url, &place, &url.database, true);
    let progress = ctx.shell.progress("Copy", "kB", checked.kilobytes);
    let out = jobs
        .run(
            "pg_basebackup",
            args,
            Reach::Source,
            Some(source),
            &|line| {
                if let Some(kb) = copied_kb(line) {
                    progress.set(kb);
                }
            },
        )
        .await;
    progress.finish(out.is_ok());
    out?;
    own_settings(ctx, project, r, branch, root).await
}

/// pg_basebackup's progress line (`12345/67890 kB (18%), 0/1 tablespace`): kB copied.
fn copied_kb(line: &str) -> Option<u64> {
    let (done, rest) = line.trim().split_once('/')?;
    rest.split_whitespace()
        .nth(1)
        .filter(|unit| *unit == "kB")?;
    done.parse().ok()
}

/// Makes the copy a standby of its source: main's password file for the source, and
/// `standby.signal` (as the server's user).
pub async fn make_standby(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    branch: &Branch,
    root: &Path,
    checked: &Checked,
) -> Result<()> {
    let user = server::server_user(project);
    let secret = checked.plan.password.as_ref().map(|p| p.secret.as_str());
    follow::write_secrets(ctx, &r.project, secret, user)?;
    space::give_passfile(ctx, project, &follow::secrets_dir(ctx, &r.project), user).await?;
    let runtime = ctx.runtime(project)?;
    let spec = server::spec(ctx, project, r, branch, root, runtime.as_ref(), None)?;
    ctx.shell
        .step(
            "Standby",
            runtime.signal_file(&spec, follow::STANDBY_SIGNAL, user),
        )
        .await?;
    Ok(())
}

/// The source's own settings files are not kept: a copy runs with PostgreSQL's defaults and
/// velo's settings (on its command line), as every branch does. The source's may not suit this
/// host (a production `shared_buffers`, `huge_pages`, SSL key files that were not copied), may
/// load libraries or run commands (`shared_preload_libraries`, `ssl_passphrase_command`) as the
/// server's user, and `postgresql.auto.conf` may hold the source's own `primary_conninfo`, with
/// a password, which every branch would carry. Each is replaced by an empty file (Debian's
/// `postgresql.conf` lives in /etc, and the copy has none: PostgreSQL will not start without
/// one), and a copied `standby.signal` or `recovery.signal` (the source was itself a standby)
/// is removed: a follower gets its own. All as the server's user, never following a link.
async fn own_settings(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    branch: &Branch,
    root: &Path,
) -> Result<()> {
    let runtime = ctx.runtime(project)?;
    let spec = server::spec(ctx, project, r, branch, root, runtime.as_ref(), None)?;
    let user = server::server_user(project);
    let data = &spec.paths.data_dir;
    ctx.shell
        .step("Settings", async {
            for conf in ["postgresql.conf", "postgresql.auto.conf"] {
                runtime
                    .signal_file(&spec, conf, user)
                    .await
                    .with_context(|| format!("emptying {}", data.join(conf).display()))?;
            }
            for signal in ["standby.signal", "recovery.signal"] {
                runtime
                    .remove_file(&spec, signal, user)
                    .await
                    .with_context(|| format!("removing {}", data.join(signal).display()))?;
            }
            Ok::<_, anyhow::Error>(())
        })
        .await
}

/// Drops replication slot `slot` on the source `url` if it is there, reading the source's
/// password from the pgpass file in `secrets` (as the server's user, who owns it). A source
/// that cannot be reached is a warning naming the SQL to run there: the slot keeps the
/// source's WAL until it is dropped.
pub async fn drop_slot(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    url: &SourceUrl,
    slot: &str,
    secrets: PathBuf,
) {
    if !slot
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        ctx.shell.warn(&format!(
            "not dropping `{slot}` on {}: not a slot name velo makes",
            url.redacted()
        ));
        return;
    }
    // The walsender of a main just removed may hold the slot for a moment yet.
    let sql = format!(
        "DO $$ BEGIN FOR i IN 1..100 LOOP \
           EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}' AND active); \
           PERFORM pg_sleep(0.1); END LOOP; END $$; \
         SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}'"
    );
    let sqls = [sql.as_str()];
    let dropped = source_psql(ctx, project, r, url, secrets, SourceJob::default(), &sqls);
    let dropped = ctx.shell.step("Drop replication slot", dropped).await;
    if let Err(e) = dropped {
        ctx.shell.warn(&format!(
            "could not drop the replication slot `{slot}` on {} ({e:#}): it keeps the source's WAL until you run there `{sql}`",
            url.redacted()
        ));
    }
}

/// Makes the volume `volume` of a physical import: an empty data directory of the server's
/// user, for pg_basebackup to fill. Returns the volume's root.
pub async fn empty_volume(ctx: &Ctx, project: &Project, volume: &VolumeId) -> Result<PathBuf> {
    let (storage, runtime) = (ctx.storage(project)?, ctx.runtime(project)?);
    let root = ctx
        .shell
        .step("Create volume", storage.create_volume(volume))
        .await?;
    ctx.shell
        .step(
            "Prepare data directory",
            runtime.make_data_dir(&root, server::server_user(project)),
        )
        .await?;
    Ok(root)
}

/// Asks the source `url` for a CHECKPOINT, as a follower's main does (the source's password
/// from the pgpass file in `secrets`); returns the source's WAL position after it (`X/Y`).
/// `tag` names the helper, so that several may run at once.
pub async fn source_checkpoint(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    url: &SourceUrl,
    secrets: PathBuf,
    tag: &str,
) -> Result<String> {
    let sqls = [
        "SET statement_timeout = '30s'",
        "CHECKPOINT",
        "SELECT pg_current_wal_lsn()",
    ];
    let job = SourceJob {
        tag: Some(tag),
        limit: Some(SOURCE_CHECKPOINT_LIMIT),
    };
    let out = source_psql(ctx, project, r, url, secrets, job, &sqls).await?;
    let lsn = out.stdout.trim();
    let hex = |s: &str| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match lsn.split_once('/') {
        Some((hi, lo)) if hex(hi) && hex(lo) => Ok(lsn.to_string()),
        _ => bail!("the source answered {lsn:?} to `SELECT pg_current_wal_lsn()`"),
    }
}

/// How long asking the source for a checkpoint may take, connection included, before velo
/// gives up on it (a source that hangs must not hang a branch create).
const SOURCE_CHECKPOINT_LIMIT: Duration = Duration::from_secs(45);

/// How a psql on the source runs: the helper called after `tag` if there is one, stopped
/// after `limit` if there is one.
#[derive(Default)]
struct SourceJob<'a> {
    tag: Option<&'a str>,
    limit: Option<Duration>,
}

/// Runs each of `sqls` with psql on the source `url` as the server's user, who owns the
/// password file in `secrets`.
async fn source_psql(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    url: &SourceUrl,
    secrets: PathBuf,
    job: SourceJob<'_>,
    sqls: &[&str],
) -> Result<ClientOutput> {
    let port = project.branch(&r.branch).map_or(0, |b| b.port);
    let mut jobs = Jobs::new(ctx, project, r, port)?;
    jobs.user = server::server_user(project);
    jobs.dirs.secrets = Some(secrets);
    jobs.limit = job.limit;
    if let Some(tag) = job.tag {
        jobs.name = format!("{}.{tag}", crate::names::server_name(r));
    }
    let mut args: Vec<String> = ["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"]
        .map(String::from)
        .into();
    for sql in sqls {
        args.extend(["-c".to_string(), sql.to_string()]);
    }
    args.push(url.conninfo(&url.database));
    let place = url.place();
    let source = at("psql", url, &place, &url.database, false);
    jobs.run("psql", args, Reach::Source, Some(source), &|_| {})
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_say_the_kilobytes_copied() {
        assert_eq!(
            copied_kb("12345/67890 kB (18%), 0/1 tablespace"),
            Some(12345)
        );
        assert_eq!(copied_kb("    0/23456 kB (0%), 0/1 tablespace"), Some(0));
        assert_eq!(
            copied_kb("pg_basebackup: write-ahead log end point: 0/2000100"),
            None
        );
        assert_eq!(copied_kb("pg_basebackup: base backup completed"), None);
    }
}
