//! Prepared clusters: initdb once per storage and server software, keep the result as a
//! snapshot, and make every new project's main branch a clone of it, so a project is ready in
//! the time a branch is (docs/design.md, "Prepared clusters").
//!
//! A prepared cluster is the volume `prepared/<name>.0` (the project name is reserved) and one
//! snapshot of it. Its name is a stable hash of what it was made for, so a changed image (a
//! new id) or new binaries make a new one; the newest of each storage and runtime is kept for
//! future projects, older ones go once no project was cloned from them. The superuser has no
//! password in it: each project sets its own over its socket.

use anyhow::Result;
use chrono::Utc;

use super::{Ctx, Undo};
use crate::names::{BranchName, SnapshotId, SnapshotRef};
use crate::runtime::{InitOptions, ServerUser};
use crate::state::{
    Finish, Prepared, Project, Recovery, RuntimeRecord, State, StorageRecord, UndoStep,
    prepared_volume,
};
use crate::storage::Capabilities;

/// Bumped when velo initialises clusters differently (initdb's flags): old ones are then
/// prepared again.
const INIT_FORMAT: &str = "initdb-2";

/// The name of the prepared cluster of a velo home for a storage, a runtime and its software:
/// `p` and 11 hex digits of a hash that does not change between velo builds (FNV-1a). Homes
/// sharing a storage (one user's, or root's and a user's on one pool) never share a name.
pub fn name_for(
    home: &str,
    storage: &StorageRecord,
    runtime: &RuntimeRecord,
    software: &str,
) -> BranchName {
    // The records as the state file spells them: a format velo keeps stable.
    let key = format!(
        "{home}|{}|{}|{software}|{INIT_FORMAT}",
        serde_json::to_string(storage).expect("records serialize"),
        serde_json::to_string(runtime).expect("records serialize")
    );
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("p{:011x}", hash >> 20)
        .parse()
        .expect("a letter and hex digits make a valid name")
}

/// The prepared cluster recorded under `name`, if any.
pub fn find<'a>(state: &'a State, name: &BranchName) -> Option<&'a Prepared> {
    state.prepared.iter().find(|p| p.name == *name)
}

/// Makes the prepared cluster `name` for a project being created, within that project's
/// operation, and records it. If another command made it meanwhile, uses theirs.
pub async fn make(
    ctx: &Ctx,
    project: &Project,
    name: &BranchName,
    software: &str,
    user: ServerUser,
    undo: &mut Undo,
) -> Result<Prepared> {
    let made = async {
        let (storage, runtime) = (ctx.storage(project)?, ctx.runtime(project)?);
        let volume = prepared_volume(name);
        undo.intend(
            ctx,
            "prepare",
            UndoStep::DestroyPrepared { name: name.clone() },
        )
        .await?;
        let root = ctx
            .shell
            .step("Create volume", storage.create_volume(&volume))
            .await?;
        let pgdata = ctx
            .shell
            .step("Prepare data directory", runtime.make_data_dir(&root, user))
            .await?;
        let options = init_options(storage.capabilities());
        ctx.shell
            .step(
                "Initialise",
                runtime.init(&pgdata, &project.user, user, options),
            )
            .await?;
        let snapshot = SnapshotRef {
            volume,
            id: SnapshotId::random(),
        };
        ctx.shell
            .step("Snapshot", storage.snapshot(&snapshot))
            .await?;
        let prepared = Prepared {
            name: name.clone(),
            storage: project.storage.clone(),
            runtime: project.runtime.clone(),
            software: software.to_string(),
            snapshot: snapshot.id,
            pg_uid: user.uid,
            pg_gid: user.gid,
            created_at: Utc::now(),
        };
        ctx.store.update(|s| {
            s.prepared.push(prepared.clone());
            Ok::<_, anyhow::Error>(())
        })?;
        Ok::<_, anyhow::Error>(prepared)
    }
    .await;
    match made {
        Ok(p) => Ok(p),
        // Two first projects of one image at once: the other made it.
        Err(e) => match find(&ctx.store.read()?, name) {
            Some(theirs) => Ok(theirs.clone()),
            None => Err(e),
        },
    }
}

/// How clusters on a storage with `caps` are initialised. Where a snapshot of a running server
/// holds it in backup mode (reflink, copy), each snapshot ends a WAL segment, which PostgreSQL
/// writes out in full: 1 MB segments make that 1 MB, not 16, of every branch, reset and
/// snapshot (docs/design.md, "WAL segments").
pub fn init_options(caps: Capabilities) -> InitOptions {
    InitOptions {
        wal_segment_mb: (!caps.atomic_snapshot).then_some(1),
    }
}

/// Destroys the prepared clusters that no project was cloned from and that a newer one of the
/// same storage and runtime replaced. A failure is a warning: the next command tries again.
pub async fn tidy(ctx: &Ctx) {
    let Ok(state) = ctx.store.read() else {
        return;
    };
    for old in stale(&state) {
        let destroyed = async {
            let storage = ctx.backends.storage(&old.storage)?;
            storage.destroy_volume(&old.volume()).await?;
            ctx.store.update(|s| {
                s.prepared.retain(|p| p.name != old.name);
                Ok::<_, anyhow::Error>(())
            })
        }
        .await;
        if let Err(e) = destroyed {
            ctx.shell.warn(&format!(
                "could not remove the old prepared cluster {} yet: {e:#}",
                old.name
            ));
        }
    }
}

/// Prepared clusters nothing needs any more. None while a project delete is being finished:
/// its volumes may still be clones of one.
fn stale(state: &State) -> Vec<Prepared> {
    let deleting = state.journal.iter().any(|op| {
        matches!(
            op.recovery,
            Recovery::RollForward {
                finish: Finish::DeleteProject { .. }
            }
        )
    });
    if deleting {
        return Vec::new();
    }
    state
        .prepared
        .iter()
        .filter(|p| {
            let used = state
                .projects
                .values()
                .any(|project| project.prepared_from.as_ref() == Some(&p.name));
            let replaced = state.prepared.iter().any(|newer| {
                newer.storage == p.storage
                    && newer.runtime == p.runtime
                    && newer.created_at > p.created_at
            });
            !used && replaced
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_differ_by_what_they_were_made_for() {
        let copy = StorageRecord::Copy { dir: "/d".into() };
        let docker = RuntimeRecord::Docker {
            image: "postgres:17".into(),
        };
        let a = name_for("/h", &copy, &docker, "sha256:1");
        assert_eq!(a, name_for("/h", &copy, &docker, "sha256:1"));
        assert_ne!(a, name_for("/h", &copy, &docker, "sha256:2"));
        assert_ne!(a, name_for("/other", &copy, &docker, "sha256:1"));
        // FNV-1a over the home and the records' JSON: the same name in every build of velo.
        assert_eq!(a.as_str(), "p7cb3bda8ede");
    }
}
