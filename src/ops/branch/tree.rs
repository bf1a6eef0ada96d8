//! A project's branches as a tree, like `git log --graph`: each branch under its parent,
//! siblings in name order, drawn with box-drawing characters on a terminal and plain ASCII
//! otherwise.

use crate::names::BranchName;
use crate::state::Project;

/// The pieces a tree is drawn with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Glyphs {
    /// Before a child that has siblings after it.
    pub child: &'static str,
    /// Before the last child.
    pub last: &'static str,
    /// Below a child that has siblings after it, in front of its own children.
    pub through: &'static str,
    /// Below the last child.
    pub blank: &'static str,
}

pub const BOX: Glyphs = Glyphs {
    child: "├── ",
    last: "└── ",
    through: "│   ",
    blank: "    ",
};

pub const ASCII: Glyphs = Glyphs {
    child: "|-- ",
    last: "`-- ",
    through: "|   ",
    blank: "    ",
};

/// The project's branches in tree order (a parent, then its children's subtrees), each with
/// the prefix that draws its place. Roots are main and any branch whose parent is gone.
pub fn lines(p: &Project, glyphs: &Glyphs) -> Vec<(BranchName, String)> {
    let mut out = Vec::new();
    for root in roots(p) {
        out.push((root.clone(), String::new()));
        below(p, &root, "", glyphs, &mut out);
    }
    out
}

/// Branches with no parent in the project, main first.
pub fn roots(p: &Project) -> Vec<BranchName> {
    let mut roots: Vec<BranchName> = p
        .branches
        .iter()
        .filter(|(_, b)| {
            b.parent
                .as_ref()
                .is_none_or(|x| !p.branches.contains_key(x))
        })
        .map(|(n, _)| n.clone())
        .collect();
    roots.sort_by_key(|n| !n.is_main());
    roots
}

fn below(
    p: &Project,
    parent: &BranchName,
    indent: &str,
    glyphs: &Glyphs,
    out: &mut Vec<(BranchName, String)>,
) {
    let children = p.children_of(parent);
    for (i, child) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        let (here, next) = if last {
            (glyphs.last, glyphs.blank)
        } else {
            (glyphs.child, glyphs.through)
        };
        out.push((child.clone(), format!("{indent}{here}")));
        below(p, child, &format!("{indent}{next}"), glyphs, out);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::state::{Branch, Busy, RuntimeRecord, StorageRecord};

    fn project(branches: &[(&str, &str)]) -> Project {
        let busy = Busy {
            operation: "x".into(),
            pid: 1,
            since: chrono::Utc::now(),
        };
        let record = |parent: Option<&str>| {
            Branch::new(parent.map(|x| x.parse().unwrap()), 1, None, busy.clone())
        };
        let mut all = BTreeMap::from([(BranchName::main(), record(None))]);
        for (b, parent) in branches {
            all.insert(b.parse().unwrap(), record(Some(parent)));
        }
        Project {
            storage: StorageRecord::Copy { dir: "/d".into() },
            runtime: RuntimeRecord::Docker { image: "i".into() },
            chosen: None,
            prepared_from: None,
            pg_version: None,
            user: "postgres".into(),
            password: "x".into(),
            database: "postgres".into(),
            pg_uid: 70,
            pg_gid: 70,
            created_at: chrono::Utc::now(),
            branches: all,
            snapshots: Vec::new(),
            idle_stop_seconds: None,
            imported: None,
        }
    }

    fn drawn(p: &Project, glyphs: &Glyphs) -> String {
        lines(p, glyphs)
            .into_iter()
            .map(|(name, prefix)| format!("{prefix}{name}\n"))
            .collect()
    }

    #[test]
    fn children_under_their_parents() {
        let p = project(&[
            ("dev", "main"),
            ("feature", "dev"),
            ("fix", "dev"),
            ("deep", "feature"),
            ("staging", "main"),
            ("stray", "gone"),
        ]);
        assert_eq!(
            drawn(&p, &BOX),
            "main\n\
             ├── dev\n\
             │   ├── feature\n\
             │   │   └── deep\n\
             │   └── fix\n\
             └── staging\n\
             stray\n"
        );
        assert_eq!(
            drawn(&p, &ASCII),
            "main\n\
             |-- dev\n\
             |   |-- feature\n\
             |   |   `-- deep\n\
             |   `-- fix\n\
             `-- staging\n\
             stray\n"
        );
    }

    #[test]
    fn a_lone_main_is_one_line() {
        assert_eq!(drawn(&project(&[]), &ASCII), "main\n");
    }
}
