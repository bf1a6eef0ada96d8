//! Orphans: servers, volumes and snapshots of this velo home that nothing records.

use std::collections::BTreeSet;

use super::compare::{Comparison, Known, Observed, ours};
use super::findings::{Finding, Problem};
use crate::state::StorageRecord;
use crate::storage::{Entry, Inventory};

const CAUSE: &str = "velo made it but no longer records it (an interrupted command, or a state file restored from a backup)";

pub(super) fn find(home: &str, seen: &Observed, known: &Known, out: &mut Comparison) {
    for s in &seen.servers {
        if !known.owns_server(&s.name) {
            out.findings.push(Finding {
                project: s.project.parse().ok(),
                branch: None,
                problem: Problem::OrphanServer {
                    server: s.name.clone(),
                },
                cause: CAUSE.into(),
            });
        }
    }
    for (rec, inv) in &seen.storages {
        if inv.present {
            in_storage(home, rec, inv, known, out);
        }
    }
}

fn in_storage(
    home: &str,
    rec: &StorageRecord,
    inv: &Inventory,
    known: &Known,
    out: &mut Comparison,
) {
    let volumes: Vec<&Entry> = inv.entries.iter().filter(|e| e.volume.is_some()).collect();
    let mut orphaned: Vec<&Entry> = volumes
        .iter()
        .filter(|e| ours(known, rec, e, home))
        .filter(|e| !known.holds_volume(rec, e.volume.as_ref().expect("filtered")))
        .copied()
        .collect();
    // The volume a clone was made from, through the snapshot entry its origin names.
    let origin_volume = |e: &Entry| -> Option<String> {
        let origin = e.origin.as_deref()?;
        let snap = inv.entries.iter().find(|s| s.name == origin)?;
        let v = &snap.snapshot.as_ref()?.volume;
        volumes
            .iter()
            .find(|x| x.volume.as_ref() == Some(v))
            .map(|x| x.name.clone())
    };
    // A candidate that a kept volume was cloned from is kept too, until nothing changes.
    loop {
        let kept_origins: BTreeSet<String> = volumes
            .iter()
            .filter(|e| !orphaned.iter().any(|o| o.name == e.name))
            .filter_map(|e| origin_volume(e))
            .collect();
        let before = orphaned.len();
        orphaned.retain(|o| !kept_origins.contains(&o.name));
        if orphaned.len() == before {
            break;
        }
    }
    // Clones before the volumes they were cloned from, so each destroy can succeed.
    let depth = |e: &Entry| {
        let mut n = 0;
        let mut at = origin_volume(e);
        while let Some(name) = at.filter(|n| orphaned.iter().any(|o| o.name == *n)) {
            n += 1;
            at = volumes
                .iter()
                .find(|x| x.name == name)
                .and_then(|x| origin_volume(x));
            if n > orphaned.len() {
                break;
            }
        }
        n
    };
    let mut ordered: Vec<(usize, &Entry)> = orphaned.iter().map(|o| (depth(o), *o)).collect();
    ordered.sort_by_key(|(n, e)| (std::cmp::Reverse(*n), e.name.clone()));
    for (_, e) in &ordered {
        let volume = e.volume.clone().expect("filtered");
        out.findings.push(Finding {
            project: Some(volume.project.clone()),
            branch: None,
            problem: Problem::OrphanVolume {
                storage: rec.clone(),
                volume,
                name: e.name.clone(),
            },
            cause: CAUSE.into(),
        });
    }
    snapshots(home, rec, inv, known, &orphaned, out);
}

/// Snapshots on recorded volumes that nothing records and no kept volume was cloned from.
fn snapshots(
    home: &str,
    rec: &StorageRecord,
    inv: &Inventory,
    known: &Known,
    orphaned: &[&Entry],
    out: &mut Comparison,
) {
    let kept_origins: BTreeSet<&str> = inv
        .entries
        .iter()
        .filter(|e| e.volume.is_some() && !orphaned.iter().any(|o| o.name == e.name))
        .filter_map(|e| e.origin.as_deref())
        .collect();
    for e in &inv.entries {
        let Some(s) = &e.snapshot else {
            continue;
        };
        if !known.holds_volume(rec, &s.volume)
            || known.holds_snapshot(rec, s)
            || kept_origins.contains(e.name.as_str())
            || !ours(known, rec, e, home)
        {
            continue;
        }
        out.findings.push(Finding {
            project: Some(s.volume.project.clone()),
            branch: None,
            problem: Problem::OrphanSnapshot {
                storage: rec.clone(),
                snapshot: s.clone(),
                name: e.name.clone(),
            },
            cause: CAUSE.into(),
        });
    }
}
