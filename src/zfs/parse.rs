//! Pure parsers of `zfs`/`zpool` `-H` output (tab-separated, `-` for "none").
//!
//! Every parser returns an error for a line of any other shape; none of them panics.

use std::collections::BTreeMap;

/// One `name<TAB>property<TAB>value` row of `zfs get -H -p -o name,property,value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropRow {
    pub name: String,
    pub property: String,
    /// `None` when zfs printed `-`.
    pub value: Option<String>,
}

/// Parses `zfs get -H -p -o name,property,value` output. Returns the first bad line on error.
pub fn prop_rows(out: &str) -> Result<Vec<PropRow>, String> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(
            |line| match line.split('\t').collect::<Vec<_>>().as_slice() {
                [name, property, value] => Ok(PropRow {
                    name: name.to_string(),
                    property: property.to_string(),
                    value: dash_is_none(value),
                }),
                _ => Err(line.to_string()),
            },
        )
        .collect()
}

/// Groups property rows by dataset name.
pub fn props_by_name(rows: Vec<PropRow>) -> BTreeMap<String, BTreeMap<String, Option<String>>> {
    let mut map: BTreeMap<String, BTreeMap<String, Option<String>>> = BTreeMap::new();
    for row in rows {
        map.entry(row.name)
            .or_default()
            .insert(row.property, row.value);
    }
    map
}

/// Parses a byte count printed by `-p` (a plain integer).
pub fn bytes(value: &str) -> Result<u64, String> {
    value.trim().parse().map_err(|_| value.to_string())
}

/// Parses one-column output (`zfs list -H -o name`, `zpool list -H -o name`).
pub fn names(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A filesystem or snapshot as [`entries`] reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub snapshot: bool,
    pub mounted: bool,
    pub mountpoint: Option<String>,
    /// The snapshot a clone was made from.
    pub origin: Option<String>,
    /// The user properties asked for that are set (locally or inherited).
    pub user: BTreeMap<String, String>,
}

impl Entry {
    /// The native properties [`entries`] reads.
    pub const PROPERTIES: [&str; 4] = ["type", "mounted", "mountpoint", "origin"];
}

/// Turns `zfs get -H -p` rows of [`Entry::PROPERTIES`] and user properties into entries.
/// A mountpoint is only kept when it is a path (not `legacy` or `none`).
pub fn entries(
    props: BTreeMap<String, BTreeMap<String, Option<String>>>,
) -> BTreeMap<String, Entry> {
    props
        .into_iter()
        .map(|(name, mut p)| {
            let mut take = |k: &str| p.remove(k).flatten();
            let entry = Entry {
                snapshot: take("type").as_deref() == Some("snapshot"),
                mounted: take("mounted").as_deref() == Some("yes"),
                mountpoint: take("mountpoint").filter(|m| m.starts_with('/')),
                origin: take("origin"),
                user: p.into_iter().filter_map(|(k, v)| Some((k, v?))).collect(),
            };
            (name, entry)
        })
        .collect()
}

/// Mountpoints of zfs-fuse file systems in a mount table (`/proc/self/mounts`), which escapes
/// blanks in paths as octal (`\040`).
pub fn fuse_mountpoints(table: &str) -> Vec<String> {
    table
        .lines()
        .filter_map(
            |line| match line.split(' ').collect::<Vec<_>>().as_slice() {
                [_, path, "fuse.zfs", ..] => Some(unescape_mount_path(path)),
                _ => None,
            },
        )
        .collect()
}

fn unescape_mount_path(path: &str) -> String {
    let mut out = Vec::new();
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What `zfs allow <dataset>` lists for one user in the dataset's own section, by scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delegated {
    /// On the dataset itself ("Local permissions" and "Local+Descendent permissions").
    pub local: Vec<String>,
    /// On everything below it ("Descendent permissions" and "Local+Descendent permissions").
    pub descendent: Vec<String>,
}

/// Parses `zfs allow <dataset>` for `user`'s permissions on `dataset` itself (not those it
/// inherits from a parent, which come in sections of their own).
pub fn delegated_to(out: &str, dataset: &str, user: &str) -> Delegated {
    #[derive(PartialEq)]
    enum Section {
        None,
        Local,
        Descendent,
        Both,
    }
    let mut on_dataset = false;
    let mut section = Section::None;
    let mut d = Delegated::default();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("---- Permissions on ") {
            on_dataset = rest.split_whitespace().next() == Some(dataset);
            section = Section::None;
        } else if !line.starts_with(char::is_whitespace) {
            section = match (on_dataset, line.trim()) {
                (true, "Local permissions:") => Section::Local,
                (true, "Descendent permissions:") => Section::Descendent,
                (true, "Local+Descendent permissions:") => Section::Both,
                _ => Section::None,
            };
        } else if section != Section::None
            && let ["user", who, list] = line.split_whitespace().collect::<Vec<_>>().as_slice()
            && *who == user
        {
            let perms = list.split(',').map(str::to_string);
            match section {
                Section::Local => d.local.extend(perms),
                Section::Descendent => d.descendent.extend(perms),
                _ => {
                    let perms: Vec<String> = perms.collect();
                    d.local.extend(perms.iter().cloned());
                    d.descendent.extend(perms);
                }
            }
        }
    }
    for list in [&mut d.local, &mut d.descendent] {
        list.sort();
        list.dedup();
    }
    d
}

fn dash_is_none(value: &str) -> Option<String> {
    match value {
        "-" | "" => None,
        v => Some(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_get_rows_from_openzfs_and_zfs_fuse() {
        // OpenZFS 2.1 `zfs get -H -p -o name,property,value used,origin,mountpoint`
        let openzfs = "tank/velo/d/main.0\tused\t41234432\ntank/velo/d/main.0\torigin\t-\ntank/velo/d/main.0\tmountpoint\t/tank/velo/d/main.0\n";
        // zfs-fuse 0.7 prints the same shape.
        let fuse = "velotest/velo/d/dev.0\tused\t19456\nvelotest/velo/d/dev.0\torigin\tvelotest/velo/d/main.0@a1b2\n";
        let rows = prop_rows(openzfs).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].value, None);
        let map = props_by_name(prop_rows(fuse).unwrap());
        let dev = &map["velotest/velo/d/dev.0"];
        assert_eq!(bytes(dev["used"].as_deref().unwrap()).unwrap(), 19456);
        assert_eq!(
            dev["origin"].as_deref(),
            Some("velotest/velo/d/main.0@a1b2")
        );
    }

    #[test]
    fn rejects_other_shapes() {
        assert_eq!(prop_rows("a\tb\n").unwrap_err(), "a\tb");
        assert!(prop_rows("NAME  PROPERTY  VALUE  SOURCE\n").is_err());
        assert!(bytes("1.5M").is_err());
    }

    #[test]
    fn entries_from_a_recursive_get() {
        let out = "p/velo/d\ttype\tfilesystem\np/velo/d\tmounted\tyes\np/velo/d\tmountpoint\t/p/velo/d\np/velo/d\torigin\t-\np/velo/d\tdev.velo:home\t/root/.velo\n\
p/velo/d/dev.0\ttype\tfilesystem\np/velo/d/dev.0\tmounted\tno\np/velo/d/dev.0\tmountpoint\t/p/velo/d/dev.0\np/velo/d/dev.0\torigin\tp/velo/d/main.0@ab\np/velo/d/dev.0\tdev.velo:home\t-\n\
p/velo/d/dev.0@cd\ttype\tsnapshot\np/velo/d/dev.0@cd\tmounted\t-\np/velo/d/dev.0@cd\tmountpoint\t-\np/velo/d/dev.0@cd\torigin\t-\n";
        let map = entries(props_by_name(prop_rows(out).unwrap()));
        let d = &map["p/velo/d"];
        assert!(d.mounted && !d.snapshot);
        assert_eq!(d.user["dev.velo:home"], "/root/.velo");
        let dev = &map["p/velo/d/dev.0"];
        assert!(!dev.mounted);
        assert_eq!(dev.mountpoint.as_deref(), Some("/p/velo/d/dev.0"));
        assert_eq!(dev.origin.as_deref(), Some("p/velo/d/main.0@ab"));
        assert!(dev.user.is_empty());
        assert!(map["p/velo/d/dev.0@cd"].snapshot);
    }

    #[test]
    fn fuse_mounts_from_the_mount_table() {
        let table = "proc /proc proc rw 0 0\nvelotest /velotest fuse.zfs rw,allow_other 0 0\n\
velotest/velo/a\\040b /velotest/velo/a\\040b fuse.zfs rw 0 0\ntank/x /tank/x zfs rw 0 0\n";
        assert_eq!(
            fuse_mountpoints(table),
            vec!["/velotest".to_string(), "/velotest/velo/a b".to_string()]
        );
    }

    #[test]
    fn delegated_permissions_by_scope() {
        // OpenZFS 2.1 `zfs allow tank/velo/user.tester`, with an inherited section above it.
        // A permission in both scopes is listed only under "Local+Descendent" (seen in the VM).
        let out = "---- Permissions on tank/velo/user.tester ----------------------------\nLocal permissions:\n\tuser tester create\nDescendent permissions:\n\tuser tester clone,destroy,snapshot,userprop\nLocal+Descendent permissions:\n\tuser tester mount\n\tuser other create\n---- Permissions on tank -----------------------------------------------\nLocal+Descendent permissions:\n\tuser tester promote\n";
        let d = delegated_to(out, "tank/velo/user.tester", "tester");
        assert_eq!(d.local, vec!["create", "mount"]);
        assert_eq!(
            d.descendent,
            vec!["clone", "destroy", "mount", "snapshot", "userprop"]
        );
        let other = delegated_to(out, "tank/velo/user.tester", "other");
        assert_eq!(
            (other.local, other.descendent),
            (vec!["create".to_string()], vec!["create".to_string()])
        );
        assert_eq!(
            delegated_to("", "tank/velo", "tester"),
            Delegated::default()
        );
    }

    #[test]
    fn one_column_lists() {
        assert_eq!(names("tank\nvelotest\n\n"), vec!["tank", "velotest"]);
        assert!(names("").is_empty());
    }
}
