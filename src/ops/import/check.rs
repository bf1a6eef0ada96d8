//! Before an import makes anything: are the client programs there, and can they read the
//! source? The source is asked (over libpq, as pg_dump will reach it: TLS, password file and
//! all) for its version, its databases and how many tables it has; a dump is listed. A source
//! newer than the client programs is refused here, with the fix.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};
use serde::Deserialize;

use super::super::{Ctx, Undo};
use super::jobs::{Jobs, Reach, at, client_user};
use super::{Plan, physical, space};
use crate::names::BranchRef;
use crate::ops::server::server_user;
use crate::runtime::native::bins::parse_version;
use crate::source::SourceError;
use crate::source::messages::read_toc;
use crate::state::{ImportFrom, Project, RuntimeRecord, UndoStep};

/// What [`check`] found out, with the import it checked.
#[derive(Debug, Clone)]
pub struct Checked {
    pub plan: Plan,
    /// The source's version, as it said.
    pub source_version: Option<String>,
    /// The databases to copy, the URL's (or the dump's) first.
    pub databases: Vec<String>,
    /// Tables in the first database, for the progress of its dump.
    pub tables: Option<u64>,
    /// The size of the source's databases, for the progress of a physical copy.
    pub kilobytes: Option<u64>,
    /// The password file's directory, if the source has a password.
    pub secrets: Option<PathBuf>,
}

/// What psql reports about the source.
#[derive(Debug, Deserialize)]
pub(super) struct Facts {
    pub version: String,
    pub num: u32,
    tables: u64,
    databases: Vec<String>,
    /// The URL's user may replicate (or is a superuser).
    pub replication: bool,
    pub wal_senders: u32,
    /// Tablespaces besides the two every cluster has.
    pub tablespaces: u64,
    /// The size of every database, in kB.
    pub kilobytes: u64,
    /// Whether the project's superuser is a superuser role in the source (none: no such role).
    pub superuser: Option<bool>,
    /// The settings a hot standby of the source must match or exceed.
    #[serde(default)]
    pub standby_limits: BTreeMap<String, String>,
}

/// One query, one line of JSON: the source's version, the tables of the URL's database, the
/// databases that take connections, and what a physical copy needs (`superuser` is the
/// project's superuser, quoted).
fn facts_sql(superuser: &str) -> String {
    format!(
        "SELECT json_build_object(\
    'version', current_setting('server_version'), \
    'num', current_setting('server_version_num')::int, \
    'tables', (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
        WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'), \
    'databases', (SELECT json_agg(datname ORDER BY datname) FROM pg_database \
        WHERE datallowconn AND NOT datistemplate), \
    'replication', (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), \
    'wal_senders', current_setting('max_wal_senders')::int, \
    'tablespaces', (SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')), \
    'kilobytes', (SELECT (sum(pg_database_size(oid)) / 1024)::bigint FROM pg_database WHERE datallowconn), \
    'superuser', (SELECT rolsuper FROM pg_roles WHERE rolname = {}), \
    'standby_limits', (SELECT json_object_agg(name, setting) FROM pg_settings WHERE name IN \
        ('max_connections', 'max_worker_processes', 'max_wal_senders', \
         'max_prepared_transactions', 'max_locks_per_transaction')))",
        quote_literal(superuser)
    )
}

/// `s` as an SQL string literal (standard_conforming_strings, as every supported major has).
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Checks the client programs and the source, having recorded first how to undo the import
/// (its password file is written here, for the programs that read the source).
pub async fn check(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    port: u16,
    plan: &Plan,
    undo: &mut Undo,
) -> Result<Checked> {
    undo.intend(
        ctx,
        "import",
        UndoStep::StopImport {
            branch: r.branch.clone(),
        },
    )
    .await?;
    let runtime = ctx.runtime(project)?;
    let rec = &plan.record;
    let mut tools = vec!["pg_restore", "psql"];
    if rec.physical {
        tools = vec!["pg_basebackup", "psql"];
    } else if matches!(rec.from, ImportFrom::Server { .. }) {
        tools.insert(0, "pg_dump");
    }
    if rec.with_roles {
        tools.push("pg_dumpall");
    }
    let version = ctx
        .shell
        .step("Check client programs", runtime.client_version(&tools))
        .await?;
    // pg_basebackup runs as the server's user, which must own what it writes; it reads the
    // password file too.
    let reader = match rec.physical {
        true => server_user(project),
        false => client_user(),
    };
    let secrets = plan
        .password
        .as_ref()
        .map(|p| space::write_password(ctx, r, &p.secret, reader))
        .transpose()?;
    if let Some(dir) = &secrets {
        space::give_passfile(ctx, project, dir, reader).await?;
    }
    let mut jobs = Jobs::new(ctx, project, r, port)?;
    jobs.user = reader;
    jobs.dirs.secrets = secrets.clone();
    let checked = match &rec.from {
        ImportFrom::Server { url } => {
            let place = url.place();
            let args = vec![
                "-X".into(),
                "-A".into(),
                "-t".into(),
                "-q".into(),
                "-v".into(),
                "ON_ERROR_STOP=1".into(),
                "-c".into(),
                facts_sql(&project.user),
                url.conninfo(&url.database),
            ];
            let source = at("psql", url, &place, &url.database, false);
            let out = ctx
                .shell
                .step(
                    "Check source",
                    jobs.run("psql", args, Reach::Source, Some(source), &|_| {}),
                )
                .await?;
            let facts: Facts = serde_json::from_str(out.stdout.trim())
                .with_context(|| format!("reading what the source said: {}", out.stdout.trim()))?;
            let mut plan = plan.clone();
            if rec.physical {
                physical::source_check(&facts, &version, project, url)?;
                if rec.follow {
                    // Numbers only: each goes on main's command line.
                    plan.record.standby_limits = facts
                        .standby_limits
                        .iter()
                        .filter(|(_, v)| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                }
            } else {
                newer_check(facts.num / 10000, &version, project)?;
            }
            let mut databases = vec![url.database.clone()];
            if rec.all_databases {
                databases.extend(facts.databases.into_iter().filter(|d| *d != url.database));
            }
            Checked {
                plan,
                source_version: Some(facts.version),
                databases,
                tables: Some(facts.tables),
                kilobytes: Some(facts.kilobytes),
                secrets,
            }
        }
        ImportFrom::Dump { path } => {
            jobs.dirs.input = Some(path.clone());
            let args = vec!["-l".into(), jobs.input()];
            let out = ctx
                .shell
                .step(
                    "Read dump",
                    jobs.run("pg_restore", args, Reach::Target, None, &|_| {}),
                )
                .await
                .map_err(|e| plain_dump(e, path))?;
            let (tables, database) = read_toc(&out.stdout);
            let dumped_by = dumped_by(&out.stdout);
            if let Some(major) = dumped_by.as_deref().and_then(major_of) {
                newer_check(major, &version, project)?;
            }
            Checked {
                plan: plan.clone(),
                source_version: dumped_from(&out.stdout),
                databases: vec![database.unwrap_or_else(|| project.database.clone())],
                tables: Some(tables),
                kilobytes: None,
                secrets,
            }
        }
    };
    Ok(checked)
}

/// The major of a program's `--version` line (`pg_dump (PostgreSQL) 15.18 (Debian …)`).
pub(super) fn major_of(line: &str) -> Option<u32> {
    parse_version(line).map(|(_, major)| major)
}

/// Fails if PostgreSQL `source_major` is newer than the client programs that said `tools`.
fn newer_check(source_major: u32, tools: &str, project: &Project) -> Result<()> {
    if major_of(tools).is_none_or(|tools_major| source_major <= tools_major) {
        return Ok(());
    }
    let n = source_major;
    let fix = match &project.runtime {
        RuntimeRecord::Docker { image } => format!(
            "an import uses the image's own client programs, and {image}'s cannot read it: use an image whose client programs are PostgreSQL {n} or newer, as the official ones are (--pg-version {n} picks postgres:{n}-alpine)"
        ),
        RuntimeRecord::Native { .. } => format!(
            "create the project with --pg-version {n}: velo then uses the host's PostgreSQL {n} server and client programs (`apt install postgresql-{n} postgresql-client-{n}` on Debian and Ubuntu)"
        ),
    };
    Err(SourceError::TooNew {
        source_major,
        tools: tools.trim().to_string(),
        fix,
    }
    .into())
}

/// Fails if the source's major is newer than the server the import restores into (running on
/// `port`): pg_restore restores into the same major or a newer one.
pub async fn server_check(
    ctx: &Ctx,
    project: &Project,
    port: u16,
    checked: &Checked,
) -> Result<()> {
    let Some(source_major) = checked.source_version.as_deref().and_then(major_of) else {
        return Ok(());
    };
    let said = super::server::sql(ctx, project, port, "postgres")
        .server_version()
        .await?;
    let Some(server_major) = major_of(&said).filter(|m| source_major > *m) else {
        return Ok(());
    };
    let n = source_major;
    let fix = match &project.runtime {
        RuntimeRecord::Docker { .. } => format!(
            "create the project with --pg-version {n} (or an --image of PostgreSQL {n} or newer)"
        ),
        RuntimeRecord::Native { .. } => format!(
            "create the project with --pg-version {n}: velo then uses the host's PostgreSQL {n} (`apt install postgresql-{n}` on Debian and Ubuntu)"
        ),
    };
    Err(SourceError::NewerThanServer {
        source_major,
        server_major,
        fix,
    }
    .into())
}

/// pg_restore's answer to a file that is no archive, as an error that says what velo reads.
fn plain_dump(e: anyhow::Error, path: &std::path::Path) -> anyhow::Error {
    let said = format!("{e:#}");
    let what = if said.contains("text format dump") {
        "a plain SQL dump"
    } else if [
        "not appear to be a valid archive",
        "in file header",
        "unexpected end of file",
    ]
    .iter()
    .any(|m| said.contains(m))
    {
        "no dump pg_dump made, or a damaged one"
    } else {
        return e.context(format!("reading the dump {}", path.display()));
    };
    anyhow!(
        "{} is {what}; velo restores pg_dump's custom (-Fc) and directory (-Fd) formats: make one with `pg_dump -Fc`",
        path.display()
    )
}

/// `Dumped by pg_dump version: …` of a TOC listing.
fn dumped_by(listing: &str) -> Option<String> {
    toc_field(listing, "Dumped by pg_dump version: ")
}

/// `Dumped from database version: …` of a TOC listing.
fn dumped_from(listing: &str) -> Option<String> {
    toc_field(listing, "Dumped from database version: ")
}

fn toc_field(listing: &str, prefix: &str) -> Option<String> {
    listing
        .lines()
        .find_map(|l| l.trim_start_matches(';').trim().strip_prefix(prefix))
        .map(|v| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_newer_than_the_tools_names_the_major_to_use() {
        let mut project: Project = serde_json::from_value(serde_json::json!({
            "storage": {"kind": "copy", "dir": "/d"},
            "runtime": {"kind": "docker", "image": "velo-test/postgres:16"},
            "pg_version": null, "user": "postgres", "password": "x", "database": "postgres",
            "pg_uid": 1, "pg_gid": 1, "created_at": "2025-01-01T00:00:00Z", "branches": {}
        }))
        .unwrap();
        let tools = "pg_dump (PostgreSQL) 15.18";
        let text = newer_check(17, tools, &project).unwrap_err().to_string();
        assert!(
            text.contains("PostgreSQL 17") && text.contains("velo-test/postgres:16's"),
            "{text}"
        );
        assert!(
            text.contains("--pg-version 17 picks postgres:17-alpine"),
            "{text}"
        );
        project.runtime = RuntimeRecord::Native {
            bindir: "/pg/15/bin".into(),
        };
        let text = newer_check(16, tools, &project).unwrap_err().to_string();
        assert!(text.contains("postgresql-client-16"), "{text}");
        assert!(newer_check(14, tools, &project).is_ok());
        assert!(newer_check(15, tools, &project).is_ok());
    }

    #[test]
    fn a_toc_says_who_dumped_it() {
        let listing = ";\n;     Dumped from database version: 15.18 (Debian 15.18-0+deb12u1)\n;     Dumped by pg_dump version: 16.4\n";
        assert_eq!(
            dumped_from(listing).as_deref(),
            Some("15.18 (Debian 15.18-0+deb12u1)")
        );
        assert_eq!(dumped_by(listing).as_deref(), Some("16.4"));
    }
}
