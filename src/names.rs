//! Validated names, and the parts every backend builds its own names from.
//!
//! Every project name, branch name and label a user types is parsed here once into a newtype;
//! volumes, snapshots and servers are named from these parts ([`VolumeId`], [`SnapshotRef`],
//! [`server_name`]), and each backend maps those onto its own names, reading them back with
//! the parsers here. A name is
//! `[a-z][a-z0-9-]*`, at most [`MAX_NAME_LEN`] characters, not ending in `-` and not reserved.
//! Because names never contain `.`, `_` or `/`, those characters can separate the parts of a
//! mapped name, which makes every mapping one-to-one (the original tool's `<project>-<branch>`
//! mapped `a/b-c` and `a-b/c` to the same dataset).

use std::fmt;
use std::str::FromStr;

/// The longest project name, branch name or label velo accepts.
pub const MAX_NAME_LEN: usize = 40;

/// Names that velo refuses because they would read as something else on the command line or in
/// the state file: `all` and `none` are selector words, `head` is Git's name for "the current one".
pub const RESERVED: &[&str] = &["all", "none", "head", PREPARED];

/// The project name velo keeps its prepared clusters under (each new project's main branch is
/// a clone of one): reserved, so it is never a user's project.
pub const PREPARED: &str = "prepared";

/// The branch every project starts with.
pub const MAIN_BRANCH: &str = "main";

/// Why a name was refused; the message says what a valid name looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    #[error("{kind} name `{name}` is longer than {MAX_NAME_LEN} characters")]
    TooLong { kind: &'static str, name: String },
    #[error(
        "{kind} name `{name}` is not allowed: use lowercase letters, digits and `-`, starting with a letter and not ending with `-`"
    )]
    BadChars { kind: &'static str, name: String },
    #[error("{kind} name `{name}` is reserved; pick another name")]
    Reserved { kind: &'static str, name: String },
    #[error("`{0}` is not a branch: write it as <project>/<branch>, for example demo/dev")]
    NotBranchRef(String),
    #[error("`{0}` is not a snapshot id (12 hexadecimal digits)")]
    BadSnapshotId(String),
}

fn validate(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            name: name.to_string(),
        });
    }
    let bytes = name.as_bytes();
    let ok_chars = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if !ok_chars || !bytes[0].is_ascii_lowercase() || bytes[bytes.len() - 1] == b'-' {
        return Err(NameError::BadChars {
            kind,
            name: name.to_string(),
        });
    }
    if RESERVED.contains(&name) {
        return Err(NameError::Reserved {
            kind,
            name: name.to_string(),
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                s.parse()
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }

        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                validate($kind, s)?;
                Ok(Self(s.to_string()))
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A project: one PostgreSQL cluster and its branches.
    ProjectName,
    "project"
);
name_type!(
    /// A branch within a project.
    BranchName,
    "branch"
);

name_type!(
    /// A snapshot's label, validated like a name so it is safe wherever it is shown or typed.
    Label,
    "label"
);

impl ProjectName {
    /// Where velo keeps its prepared clusters ([`PREPARED`]).
    pub fn prepared() -> Self {
        Self(PREPARED.to_string())
    }

    /// A project name as storage holds it: a user's project, or [`PREPARED`].
    pub fn parse_stored(text: &str) -> Option<Self> {
        if text == PREPARED {
            return Some(Self::prepared());
        }
        text.parse().ok()
    }

    pub fn is_prepared(&self) -> bool {
        self.0 == PREPARED
    }
}

impl BranchName {
    pub fn main() -> Self {
        Self(MAIN_BRANCH.to_string())
    }

    pub fn is_main(&self) -> bool {
        self.0 == MAIN_BRANCH
    }
}

/// `<project>/<branch>`, as users write it on the command line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BranchRef {
    pub project: ProjectName,
    pub branch: BranchName,
}

impl BranchRef {
    pub fn new(project: ProjectName, branch: BranchName) -> Self {
        Self { project, branch }
    }
}

impl FromStr for BranchRef {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let Some((project, branch)) = s.split_once('/') else {
            return Err(NameError::NotBranchRef(s.to_string()));
        };
        if branch.contains('/') {
            return Err(NameError::NotBranchRef(s.to_string()));
        }
        Ok(Self {
            project: project.parse()?,
            branch: branch.parse()?,
        })
    }
}

impl fmt::Display for BranchRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.project, self.branch)
    }
}

/// A snapshot's id: 12 lowercase hex digits (48 random bits), unique within a project.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotId(String);

impl SnapshotId {
    /// A new random id.
    pub fn random() -> Self {
        use rand::RngExt;
        let n: u64 = rand::rng().random_range(0..(1u64 << 48));
        Self(format!("{n:012x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SnapshotId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        if s.len() == 12
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_string()))
        } else {
            Err(NameError::BadSnapshotId(s.to_string()))
        }
    }
}

impl TryFrom<String> for SnapshotId {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        s.parse()
    }
}

impl From<SnapshotId> for String {
    fn from(n: SnapshotId) -> String {
        n.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One generation of a branch's data: what a storage backend calls a volume.
///
/// A branch gets a new generation each time it is reset or restored, so the new data can be
/// prepared beside the old and the old kept intact until the new one serves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeId {
    pub project: ProjectName,
    pub branch: BranchName,
    pub generation: u32,
}

impl VolumeId {
    pub fn new(r: &BranchRef, generation: u32) -> Self {
        Self {
            project: r.project.clone(),
            branch: r.branch.clone(),
            generation,
        }
    }

    /// `<project>.<branch>.<generation>`: unique within a storage, and one path component
    /// (names have no `.`, so the parts separate again).
    pub fn leaf(&self) -> String {
        format!("{}.{}.{}", self.project, self.branch, self.generation)
    }

    /// `<branch>.<generation>`: unique within a project.
    pub fn in_project(&self) -> String {
        format!("{}.{}", self.branch, self.generation)
    }

    /// Reads back a [`VolumeId::leaf`].
    pub fn parse_leaf(leaf: &str) -> Option<VolumeId> {
        let mut parts = leaf.split('.');
        let (project, branch, generation) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(VolumeId {
            project: ProjectName::parse_stored(project)?,
            branch: branch.parse().ok()?,
            generation: parse_generation(generation)?,
        })
    }

    /// Reads back a [`VolumeId::in_project`].
    pub fn parse_in_project(project: &ProjectName, name: &str) -> Option<VolumeId> {
        let (branch, generation) = name.split_once('.')?;
        Some(VolumeId {
            project: project.clone(),
            branch: branch.parse().ok()?,
            generation: parse_generation(generation)?,
        })
    }
}

/// A generation number as velo writes it: decimal, no sign, no leading zero.
fn parse_generation(text: &str) -> Option<u32> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}.{}", self.project, self.branch, self.generation)
    }
}

/// A snapshot of a volume.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotRef {
    pub volume: VolumeId,
    pub id: SnapshotId,
}

impl fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.volume, self.id)
    }
}

/// The server that serves a branch (a Docker container, a native server's record):
/// `velo-<project>.<branch>`.
pub fn server_name(branch: &BranchRef) -> String {
    format!("velo-{}.{}", branch.project, branch.branch)
}

/// The name a branch's old server carries while a reset or restore removes it. Names have
/// no dot, so it is never another branch's server name.
pub fn retired_server_name(branch: &BranchRef) -> String {
    format!("{}.old", server_name(branch))
}

/// The temporary server an import restores into, beside the branch's own while a refresh
/// runs. Names have no dot, so it is never another branch's server name.
pub fn import_server_name(branch: &BranchRef) -> String {
    format!("{}.import", server_name(branch))
}

/// The client program (pg_dump, pg_restore, …) an import into a branch runs, where it has a
/// name (a Docker helper).
pub fn import_client_name(branch: &BranchRef) -> String {
    format!("{}.client", server_name(branch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> BranchRef {
        s.parse().unwrap()
    }

    #[test]
    fn accepts_ordinary_names() {
        for n in [
            "demo",
            "a",
            "dev-2",
            "feature-x1",
            &"a".repeat(MAX_NAME_LEN),
        ] {
            assert!(n.parse::<ProjectName>().is_ok(), "{n}");
        }
    }

    #[test]
    fn refuses_hostile_names() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for n in [
            "",
            "-rf",
            "a b",
            "a/b",
            "..",
            ".",
            "a.b",
            "a_b",
            "A",
            "ä",
            "x;rm",
            "$(x)",
            "a`b`",
            "a\n",
            "1abc",
            "abc-",
            "all",
            "head",
            "none",
            &long,
            "../etc",
            "a/../b",
            "--help",
            "-",
            "a\0b",
            "a@b",
            "a:b",
            "a%b",
            "a\\b",
            " a",
            "a\t",
            "ａ",
            "a\u{200b}",
        ] {
            assert!(n.parse::<BranchName>().is_err(), "accepted {n:?}");
        }
    }

    #[test]
    fn branch_ref_needs_exactly_one_slash() {
        assert!("demo".parse::<BranchRef>().is_err());
        assert!("demo/dev/x".parse::<BranchRef>().is_err());
        assert_eq!(r("demo/dev").to_string(), "demo/dev");
    }

    #[test]
    fn mapping_separates_what_the_original_tool_merged() {
        let (a, b) = (r("a/b-c"), r("a-b/c"));
        assert_ne!(VolumeId::new(&a, 0).leaf(), VolumeId::new(&b, 0).leaf());
        assert_ne!(server_name(&a), server_name(&b));
    }

    #[test]
    fn snapshot_ids_are_twelve_hex_digits() {
        assert!("0123456789ab".parse::<SnapshotId>().is_ok());
        assert_eq!(SnapshotId::random().as_str().len(), 12);
        for bad in [
            "",
            "0123456789AB",
            "0123456789a",
            "0123456789abc",
            "../../etc/x",
            "x; rm -rf",
        ] {
            assert!(bad.parse::<SnapshotId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn generations_read_back_only_as_written() {
        assert_eq!(
            VolumeId::parse_leaf("a.b.10"),
            Some(VolumeId::new(&r("a/b"), 10))
        );
        for bad in [
            "a.b.01",
            "a.b.-1",
            "a.b.+1",
            "a.b.",
            "a.b",
            "a.b.1.2",
            "A.b.1",
            "a.b.99999999999",
        ] {
            assert_eq!(VolumeId::parse_leaf(bad), None, "{bad}");
        }
    }

    /// Short names drawn from few letters, so that look-alikes (`a-b` vs `a`, `b`) are common.
    fn name() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy;
        "[ab][ab1-]{0,4}".prop_filter("valid", |s| s.parse::<BranchName>().is_ok())
    }

    proptest::proptest! {
        #[test]
        fn every_accepted_name_is_safe_where_it_goes(s in "[a-z][a-z0-9-]{0,45}|\\PC{0,12}") {
            if let Ok(n) = s.parse::<BranchName>() {
                let n = n.as_str();
                // argv: never read as an option.
                proptest::prop_assert!(!n.starts_with('-'));
                // a path: exactly one ordinary component (no `..`, `/`, `.`).
                let parts: Vec<_> = std::path::Path::new(n).components().collect();
                proptest::prop_assert!(matches!(parts.as_slice(), [std::path::Component::Normal(_)]));
                // ZFS and Docker names: only characters both allow, none of their separators.
                proptest::prop_assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                let r = BranchRef::new(n.parse().unwrap(), n.parse().unwrap());
                let leaf = VolumeId::new(&r, 0).leaf();
                proptest::prop_assert!(!leaf.contains('/'));
                proptest::prop_assert_eq!(leaf.matches('.').count(), 2);
                proptest::prop_assert_eq!(VolumeId::parse_leaf(&leaf), Some(VolumeId::new(&r, 0)));
                proptest::prop_assert_eq!(server_name(&r).matches('.').count(), 1);
            }
        }

        #[test]
        fn the_mapping_is_one_to_one(a in name(), b in name(), c in name(), d in name(), g in 0u32..3, h in 0u32..3) {
            let x = BranchRef::new(a.parse().unwrap(), b.parse().unwrap());
            let y = BranchRef::new(c.parse().unwrap(), d.parse().unwrap());
            if (&x, g) != (&y, h) {
                proptest::prop_assert_ne!(VolumeId::new(&x, g).leaf(), VolumeId::new(&y, h).leaf());
                if x.project == y.project {
                    proptest::prop_assert_ne!(VolumeId::new(&x, g).in_project(), VolumeId::new(&y, h).in_project());
                }
            }
            if x != y {
                proptest::prop_assert_ne!(server_name(&x), server_name(&y));
                let root = std::path::Path::new("/w");
                let path = |r: &BranchRef| root.join(r.project.as_str()).join(r.branch.as_str());
                proptest::prop_assert_ne!(path(&x), path(&y));
            }
        }
    }
}
