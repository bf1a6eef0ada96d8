//! Upgrades a `state.json` written by an older velo, on first use.
//!
//! Schema 1 (velo 0.1, ZFS and Docker only) named a project's `pool` and `image`, and its
//! journal's undo steps named datasets, containers and directories as strings. Schema 2
//! records a storage and a runtime per project, and undo steps name only velo's own parts (a
//! branch, a generation, a snapshot id). A 0.1 project keeps its datasets where they are: it
//! becomes a ZFS project with the `nested` layout.

use serde_json::{Map, Value, json};

/// Why a state file could not be upgraded.
#[derive(Debug, thiserror::Error)]
#[error("cannot upgrade this state from schema {from}: {why}")]
pub struct MigrateError {
    pub from: u64,
    pub why: String,
}

/// Upgrades `state` (any schema this velo knows) to the current one, in place. Returns
/// whether anything changed.
pub fn upgrade(state: &mut Value) -> Result<bool, MigrateError> {
    let from = state.get("version").and_then(Value::as_u64).unwrap_or(0);
    match from {
        1 => {
            v1_to_v2(state).map_err(|why| MigrateError { from, why })?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn v1_to_v2(state: &mut Value) -> Result<(), String> {
    let obj = state
        .as_object_mut()
        .ok_or("the state is not a JSON object")?;
    let mut pools = Map::new();
    if let Some(projects) = obj.get_mut("projects").and_then(Value::as_object_mut) {
        for (name, project) in projects.iter_mut() {
            let p = project
                .as_object_mut()
                .ok_or_else(|| format!("project `{name}` is not an object"))?;
            let pool =
                take_string(p, "pool").ok_or_else(|| format!("project `{name}` has no pool"))?;
            let image =
                take_string(p, "image").ok_or_else(|| format!("project `{name}` has no image"))?;
            p.insert(
                "storage".into(),
                json!({ "kind": "zfs", "pool": pool, "base": format!("{pool}/velo"), "layout": "nested" }),
            );
            p.insert(
                "runtime".into(),
                json!({ "kind": "docker", "image": image }),
            );
            pools.insert(name.clone(), Value::String(pool));
        }
    }
    if let Some(journal) = obj.get_mut("journal").and_then(Value::as_array_mut) {
        for op in journal.iter_mut() {
            let project = op
                .get("project")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let Some(steps) = op.get_mut("undo").and_then(Value::as_array_mut) else {
                continue;
            };
            for step in steps.iter_mut() {
                *step = undo_step_v2(step, &project)?;
            }
        }
    }
    obj.insert("version".into(), json!(2));
    Ok(())
}

fn take_string(obj: &mut Map<String, Value>, key: &str) -> Option<String> {
    match obj.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// One schema 1 undo step in schema 2's terms.
fn undo_step_v2(step: &Value, project: &str) -> Result<Value, String> {
    let kind = step.get("kind").and_then(Value::as_str).unwrap_or_default();
    let text = |key: &str| step.get(key).and_then(Value::as_str).unwrap_or_default();
    let unreadable = || {
        format!(
            "the journal holds a `{kind}` step velo 0.2 cannot read ({step}); finish the interrupted command with the velo that started it"
        )
    };
    Ok(match kind {
        "destroy_snapshot" => {
            let (dataset, id) = text("name").split_once('@').ok_or_else(unreadable)?;
            let (branch, generation) = branch_generation(dataset).ok_or_else(unreadable)?;
            json!({ "kind": "destroy_snapshot", "branch": branch, "generation": generation, "id": id })
        }
        "destroy_dataset" => {
            let name = text("name");
            if name.ends_with(&format!("/velo/{project}")) {
                json!({ "kind": "destroy_project" })
            } else {
                let (branch, generation) = branch_generation(name).ok_or_else(unreadable)?;
                json!({ "kind": "destroy_volume", "branch": branch, "generation": generation })
            }
        }
        "remove_container" => {
            let branch = text("name")
                .strip_prefix(&format!("velo-{project}."))
                .ok_or_else(unreadable)?;
            json!({ "kind": "remove_server", "branch": branch })
        }
        "remove_dir" => {
            let path = text("path");
            let (_, rest) = path
                .rsplit_once(&format!("/wal/{project}"))
                .ok_or_else(unreadable)?;
            match rest
                .trim_matches('/')
                .split('/')
                .collect::<Vec<_>>()
                .as_slice()
            {
                [""] => json!({ "kind": "remove_archive", "branch": null, "generation": null }),
                [branch, generation] => json!({
                    "kind": "remove_archive",
                    "branch": branch,
                    "generation": generation.parse::<u32>().map_err(|_| unreadable())?,
                }),
                _ => return Err(unreadable()),
            }
        }
        "restore_container" => {
            json!({ "kind": "restore_server", "branch": step.get("branch"), "start": step.get("start") })
        }
        _ => return Err(unreadable()),
    })
}

/// `<…>/<branch>.<generation>` → (branch, generation).
fn branch_generation(dataset: &str) -> Option<(&str, u32)> {
    let last = dataset.rsplit('/').next()?;
    let (branch, generation) = last.split_once('.')?;
    Some((branch, generation.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{RuntimeRecord, State, StorageRecord, UndoStep, ZfsLayout};

    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn a_state_written_by_velo_0_1_reads_after_the_upgrade() {
        for name in [
            "state-v1-branch-create.json",
            "state-v1-reset-and-create.json",
        ] {
            let mut v = fixture(name);
            assert!(upgrade(&mut v).unwrap());
            let state: State = serde_json::from_value(v.clone()).unwrap();
            let p = &state.projects[&"fixture".parse().unwrap()];
            assert_eq!(
                p.storage,
                StorageRecord::Zfs {
                    pool: "velotest".into(),
                    base: "velotest/velo".into(),
                    layout: ZfsLayout::Nested
                }
            );
            assert_eq!(
                p.runtime,
                RuntimeRecord::Docker {
                    image: "velo-test/postgres:15".into()
                }
            );
            assert!(
                !upgrade(&mut v).unwrap(),
                "a second upgrade changes nothing"
            );
        }
    }

    #[test]
    fn every_kind_of_undo_step_is_carried_over() {
        let mut v = fixture("state-v1-branch-create.json");
        upgrade(&mut v).unwrap();
        let state: State = serde_json::from_value(v).unwrap();
        let steps: Vec<&UndoStep> = state.journal.iter().flat_map(|op| op.undo.iter()).collect();
        let main = crate::names::BranchName::main();
        assert!(steps.contains(&&UndoStep::RestoreServer {
            branch: "dev".parse().unwrap(),
            start: true
        }));
        assert!(steps.contains(&&UndoStep::DestroyProject));
        assert!(steps.contains(&&UndoStep::RemoveArchive {
            branch: None,
            generation: None
        }));
        assert!(steps.contains(&&UndoStep::DestroySnapshot {
            branch: main,
            generation: 0,
            id: "5e17ac853b44".parse().unwrap()
        }));
        assert!(steps.contains(&&UndoStep::DestroyVolume {
            branch: "killed2".parse().unwrap(),
            generation: 0
        }));
        assert!(steps.contains(&&UndoStep::RemoveArchive {
            branch: Some("killed2".parse().unwrap()),
            generation: Some(0)
        }));
        assert!(steps.contains(&&UndoStep::RemoveServer {
            branch: "killed2".parse().unwrap()
        }));
    }

    #[test]
    fn a_step_it_cannot_read_is_an_error_that_says_what_to_do() {
        let mut v = json!({
            "version": 1,
            "projects": {},
            "journal": [{ "project": "p", "undo": [{ "kind": "destroy_dataset", "name": "rpool/ROOT" }] }]
        });
        let err = upgrade(&mut v).unwrap_err().to_string();
        assert!(err.contains("finish the interrupted command"), "{err}");
    }
}
