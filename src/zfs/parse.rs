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
    fn one_column_lists() {
        assert_eq!(names("tank\nvelotest\n\n"), vec!["tank", "velotest"]);
        assert!(names("").is_empty());
    }
}
