//! Connection files: with `velo connection-files on`, every branch of this velo home has a
//! line in `~/.pgpass` and a service `<project>-<branch>` in `~/.pg_service.conf`, so
//! `psql service=demo-dev` connects without a password typed or shown.
//!
//! [`sync`] writes the entries from the state as it is, so it is right after any change:
//! create, reset, restore, a port moved by `repair`, a rename, a delete, the recovery of an
//! interrupted command. The command line calls it after every command that reads the state
//! (see [`crate::cli::Cli::run`]); an operation that wants the files right before it returns
//! (a rename, say) may call it too. libpq's `PGPASSFILE` and `PGSERVICEFILE` name other files,
//! except when root runs velo: then they are refused, and `$HOME` must be a directory only
//! root controls (docs/security.md).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow, bail};

use super::Ctx;
use super::server::HOST_IP;
use crate::pgfiles::{self, Entry};
use crate::state::State;

/// The two files, as libpq finds them; as root, only `$HOME/.pgpass` and
/// `$HOME/.pg_service.conf` in a home only root controls ([`root_paths`]).
fn paths() -> Result<[PathBuf; 2]> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let home = var("HOME").map(PathBuf::from);
    if rustix::process::geteuid().is_root() {
        return root_paths(home, var("PGPASSFILE").or(var("PGSERVICEFILE")));
    }
    let or_home = |name, file| {
        var(name)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(file)))
            .ok_or_else(|| anyhow!("HOME is not set: velo cannot find {file}"))
    };
    Ok([
        or_home("PGPASSFILE", ".pgpass")?,
        or_home("PGSERVICEFILE", ".pg_service.conf")?,
    ])
}

/// The files when root runs velo, whose environment may be someone else's (`sudo -E`): a file
/// the environment names (`named`, from PGPASSFILE or PGSERVICEFILE) is refused, since root
/// would rewrite any root-owned file there (and make it 0600); and the home must be one only
/// root controls, like velo's own.
fn root_paths(home: Option<PathBuf>, named: Option<std::ffi::OsString>) -> Result<[PathBuf; 2]> {
    if let Some(named) = named {
        bail!(
            "velo runs as root and writes connection files only as $HOME/.pgpass and $HOME/.pg_service.conf, not where PGPASSFILE or PGSERVICEFILE say ({}); unset them",
            PathBuf::from(named).display()
        );
    }
    let home = home.ok_or_else(|| anyhow!("HOME is not set: velo cannot find .pgpass"))?;
    let files = [home.join(".pgpass"), home.join(".pg_service.conf")];
    crate::state::only_root_controls(&files[0]).map_err(|why| {
        anyhow!(
            "velo runs as root, but {why}, so another user could choose where root's passwords go; run velo with root's own HOME (`sudo -H`), or turn connection files off"
        )
    })?;
    Ok(files)
}

/// Every branch's entry; two branches whose service names would be the same (`a-b/c` and
/// `a/b-c`) get none, and are named in the second value.
pub fn entries(state: &State) -> (Vec<Entry>, Vec<String>) {
    let mut by_service: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for (name, p) in &state.projects {
        for (branch, b) in &p.branches {
            let service = format!("{name}-{branch}");
            by_service.entry(service.clone()).or_default().push(Entry {
                service,
                host: HOST_IP.to_string(),
                port: b.port,
                database: p.database.clone(),
                user: p.user.clone(),
                password: p.password.clone(),
            });
        }
    }
    let clashes = by_service
        .iter()
        .filter(|(_, e)| e.len() > 1)
        .map(|(s, _)| s.clone())
        .collect();
    let unique = by_service
        .into_values()
        .filter(|e| e.len() == 1)
        .flatten()
        .collect();
    (unique, clashes)
}

/// Whether an entry can be written as it is: a line break in a field (from a state file
/// edited by hand) would add lines of its own, another service or a `*` password line.
fn fits(e: &Entry) -> bool {
    [&e.service, &e.host, &e.database, &e.user, &e.password]
        .iter()
        .all(|field| !field.chars().any(char::is_control))
}

/// Writes this home's entries into both files (or, with `entries` empty, removes them).
fn write(ctx: &Ctx, entries: &[Entry]) -> Result<()> {
    let [pgpass, service] = paths()?;
    let home = ctx.home_label();
    pgfiles::update(&pgpass, &home, &pgfiles::pgpass_lines(entries))
        .with_context(|| format!("keeping {} up to date", pgpass.display()))?;
    pgfiles::update(&service, &home, &pgfiles::service_lines(entries))
        .with_context(|| format!("keeping {} up to date", service.display()))?;
    Ok(())
}

/// Brings the files in line with the state, if connection files are on; a problem is a
/// warning (the command itself worked).
pub fn sync(ctx: &Ctx) {
    if let Err(e) = try_sync(ctx) {
        ctx.shell.warn(&format!("{e:#}"));
    }
}

fn try_sync(ctx: &Ctx) -> Result<()> {
    // An unreadable state is reported by the command itself, once.
    let Ok(state) = ctx.store.read() else {
        return Ok(());
    };
    if !state.connection_files {
        return Ok(());
    }
    let (entries, clashes) = self::entries(&state);
    if !clashes.is_empty() {
        ctx.shell.warn(&format!(
            "branches share the service name(s) {}; they have no connection-file entries (rename one)",
            clashes.join(", ")
        ));
    }
    let (entries, odd): (Vec<Entry>, Vec<Entry>) = entries.into_iter().partition(fits);
    if !odd.is_empty() {
        let names: Vec<&str> = odd.iter().map(|e| e.service.as_str()).collect();
        ctx.shell.warn(&format!(
            "the state gives {} a user, database or password with a line break or another control character; they have no connection-file entries (was the state file edited?)",
            names.join(", ")
        ));
    }
    write(ctx, &entries)
}

/// `velo connection-files [on|off]`: turns them on (writing every entry), off (removing
/// velo's lines), or says whether they are on.
pub fn set(ctx: &Ctx, on: Option<bool>) -> Result<()> {
    let [pgpass, service] = paths()?;
    let files = format!("{} and {}", pgpass.display(), service.display());
    let Some(on) = on else {
        let state = ctx.store.read()?;
        let word = if state.connection_files { "on" } else { "off" };
        ctx.shell.out(word);
        ctx.shell.note(&format!("(velo's entries in {files})"));
        return Ok(());
    };
    ctx.store.update(|s| {
        s.connection_files = on;
        Ok::<_, anyhow::Error>(())
    })?;
    if on {
        try_sync(ctx)?;
        ctx.shell.note(&format!(
            "Connection files on: every branch is in {files}; connect with `psql service=<project>-<branch>`."
        ));
    } else {
        write(ctx, &[])?;
        ctx.shell.note(&format!(
            "Connection files off: velo's lines are gone from {files}."
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::ProjectName;

    /// The state of velo 0.1's fixture (project `fixture`), as the store reads it.
    fn fixture() -> State {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/state-v1-branch-create.json"
        );
        let home = tempfile::tempdir().unwrap();
        std::fs::copy(path, home.path().join("state.json")).unwrap();
        crate::state::Store::new(home.path()).read().unwrap()
    }

    #[test]
    fn root_takes_no_file_the_environment_names() {
        let home = Some(PathBuf::from("/root"));
        let named = Some(std::ffi::OsString::from("/etc/passwd"));
        let err = root_paths(home, named).unwrap_err().to_string();
        assert!(
            err.contains("PGPASSFILE") && err.contains("/etc/passwd"),
            "{err}"
        );
        assert!(root_paths(None, None).is_err(), "no HOME: no files");
    }

    #[test]
    fn a_field_with_a_line_break_is_not_written() {
        let (mut all, _) = entries(&fixture());
        let mut e = all.pop().unwrap();
        assert!(fits(&e));
        e.password = "x\n*:*:*:*:y".into();
        assert!(!fits(&e));
        e.password = "x".into();
        e.database = "db\rhost=elsewhere".into();
        assert!(!fits(&e));
    }

    #[test]
    fn one_entry_per_branch_none_for_clashing_names() {
        let mut state = fixture();
        let name: ProjectName = "fixture".parse().unwrap();
        let (all, clashes) = entries(&state);
        assert!(clashes.is_empty());
        let branches: usize = state.projects.values().map(|p| p.branches.len()).sum();
        assert_eq!(all.len(), branches);
        assert!(all.iter().any(|e| e.service == "fixture-main"));

        // `fixture/main-x` and `fixture-main/x` would both be `fixture-main-x`.
        let p = state.projects[&name].clone();
        let b = p.branches.values().next().unwrap().clone();
        let mut twin = p;
        twin.branches = BTreeMap::from([("x".parse().unwrap(), b.clone())]);
        state.projects.insert("fixture-main".parse().unwrap(), twin);
        let fixture = state.projects.get_mut(&name).unwrap();
        fixture.branches.insert("main-x".parse().unwrap(), b);
        let (some, clashes) = entries(&state);
        assert_eq!(clashes, vec!["fixture-main-x".to_string()]);
        assert!(some.iter().all(|e| e.service != "fixture-main-x"));
    }
}
