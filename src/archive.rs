//! WAL archives on the host: `$VELO_HOME/wal/<project>/<branch>/<generation>/`.
//!
//! Each branch generation archives into its own directory. A reset or restore starts a new
//! generation whose WAL continues another history under the same segment names, so sharing a
//! directory would make `archive_command` fail on a name clash (the original tool's stops took 3 s
//! after a reset for that reason). A PITR branch reads its source's directory and writes only its
//! own, so a recovered branch never adds a timeline to its source's archive.
//!
//! Directories have mode 0700 and only the image's postgres uid may write them: run as root,
//! velo gives them to that uid (`chown`); run as a user, it cannot, so it keeps them and grants
//! the uid `rwx` with a POSIX ACL (access and default), which an owner may set without any
//! privilege (see docs/setup.md). Either way no other user has access. This module knows nothing
//! of ZFS or Docker.

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};

use crate::names::{BranchName, ProjectName};

/// Where containers see the archives: their own (read-write) and the project's (read-only).
pub const OWN_ARCHIVE_IN_CONTAINER: &str = "/var/lib/postgresql/wal-archive";
pub const PROJECT_ARCHIVES_IN_CONTAINER: &str = "/var/lib/postgresql/wal-archives";

/// The archive layout under one velo home.
#[derive(Debug, Clone)]
pub struct Archives {
    root: PathBuf,
}

/// One file in an archive directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedFile {
    pub name: String,
    pub size: u64,
    pub modified: DateTime<Utc>,
}

impl ArchivedFile {
    /// The segment's position (log and segment number) if it is a WAL segment file.
    pub fn segment(&self) -> Option<Segment> {
        Segment::parse(&self.name)
    }
}

/// A WAL segment file name: `TTTTTTTTXXXXXXXXYYYYYYYY` (timeline, log, segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Segment {
    pub timeline: u32,
    /// log * 2^32/segment size + segment: a number that grows by one per segment.
    pub position: u64,
}

impl Segment {
    pub fn parse(name: &str) -> Option<Segment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        // With 16 MiB segments there are 256 segments per log id; PostgreSQL's default.
        Some(Segment {
            timeline,
            position: log * 256 + seg,
        })
    }
}

impl Archives {
    pub fn new(velo_home: &Path) -> Self {
        Self {
            root: velo_home.join("wal"),
        }
    }

    pub fn project_dir(&self, project: &ProjectName) -> PathBuf {
        self.root.join(project.as_str())
    }

    pub fn branch_dir(&self, project: &ProjectName, branch: &BranchName) -> PathBuf {
        self.project_dir(project).join(branch.as_str())
    }

    pub fn generation_dir(
        &self,
        project: &ProjectName,
        branch: &BranchName,
        generation: u32,
    ) -> PathBuf {
        self.branch_dir(project, branch)
            .join(generation.to_string())
    }

    /// Creates the directory chain for a generation, each owned by `uid:gid`, mode 0700.
    pub fn create(
        &self,
        project: &ProjectName,
        branch: &BranchName,
        generation: u32,
        uid: u32,
        gid: u32,
    ) -> std::io::Result<PathBuf> {
        make_private_dir(&self.root, None)?;
        let owner = Some((uid, gid));
        make_private_dir(&self.project_dir(project), owner)?;
        make_private_dir(&self.branch_dir(project, branch), owner)?;
        let dir = self.generation_dir(project, branch, generation);
        // A new generation's archive starts empty: anything there is debris of an earlier
        // branch of the same name, whose segments would clash with this one's.
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        make_private_dir(&dir, owner)?;
        Ok(dir)
    }

    /// Files in a generation's archive, oldest name first; empty if the directory is missing.
    pub fn list(
        &self,
        project: &ProjectName,
        branch: &BranchName,
        generation: u32,
    ) -> std::io::Result<Vec<ArchivedFile>> {
        list_dir(&self.generation_dir(project, branch, generation))
    }
}

fn make_private_dir(dir: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    match owner {
        Some((uid, gid)) if rustix::process::geteuid().is_root() => {
            chown(dir, Some(uid), Some(gid))
        }
        Some((uid, _)) => grant_dir_to(dir, uid),
        None => Ok(()),
    }
}

/// Gives `uid` full access to a directory its owner keeps (mode 0700), and to everything
/// created in it, with POSIX ACLs: `user:<uid>:rwx` and `mask::rwx` as the access ACL; the
/// same plus `user:<owner>:rwx` as the default ACL. Group and others keep no access.
fn grant_dir_to(dir: &Path, uid: u32) -> std::io::Result<()> {
    let me = rustix::process::geteuid().as_raw();
    let named = |uids: &[u32]| {
        let mut uids = uids.to_vec();
        uids.sort_unstable();
        uids.dedup();
        uids
    };
    let set = |name: &str, users: Vec<u32>| {
        rustix::fs::setxattr(
            dir,
            name,
            &posix_acl_xattr(&users),
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(|e| {
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!(
                    "cannot give uid {uid} access to {} with a POSIX ACL ({e}); velo's home must be on a file system with ACLs (ext4, xfs, btrfs do)",
                    dir.display()
                ),
            )
        })
    };
    set("system.posix_acl_access", named(&[uid]))?;
    set("system.posix_acl_default", named(&[uid, me]))
}

/// The Linux `system.posix_acl_*` xattr value: version 2, then (tag, perm, id) entries in tag
/// order: the owner, the named users, the owning group (no access), the mask, others (none).
fn posix_acl_xattr(users: &[u32]) -> Vec<u8> {
    const USER_OBJ: u16 = 0x01;
    const USER: u16 = 0x02;
    const GROUP_OBJ: u16 = 0x04;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    const RWX: u16 = 7;
    const UNDEFINED_ID: u32 = u32::MAX;
    let entries = std::iter::once((USER_OBJ, RWX, UNDEFINED_ID))
        .chain(users.iter().map(|&u| (USER, RWX, u)))
        .chain([
            (GROUP_OBJ, 0, UNDEFINED_ID),
            (MASK, RWX, UNDEFINED_ID),
            (OTHER, 0, UNDEFINED_ID),
        ]);
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

fn list_dir(dir: &Path) -> std::io::Result<Vec<ArchivedFile>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !meta.is_file() || name.ends_with(".tmp") {
            continue;
        }
        let modified: DateTime<Utc> = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH).into();
        files.push(ArchivedFile {
            name,
            size: meta.len(),
            modified,
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// The oldest WAL segment in a data directory's pg_wal: PITR from a snapshot taken now needs
/// archived WAL from this segment on (a safe lower bound: PostgreSQL only ever removes older ones).
pub fn oldest_segment_in(pgdata: &Path) -> Option<String> {
    list_dir(&pgdata.join("pg_wal"))
        .ok()?
        .into_iter()
        .filter(|f| f.segment().is_some())
        .map(|f| f.name)
        .min()
}

/// Gaps in a run of segments: each (after, before) pair of consecutive segments on one timeline
/// with missing segments between them.
pub fn gaps(files: &[ArchivedFile]) -> Vec<(String, String)> {
    let mut segs: Vec<(Segment, &str)> = files
        .iter()
        .filter_map(|f| f.segment().map(|s| (s, f.name.as_str())))
        .collect();
    segs.sort();
    segs.windows(2)
        .filter(|w| w[0].0.timeline == w[1].0.timeline && w[1].0.position > w[0].0.position + 1)
        .map(|w| (w[0].1.to_string(), w[1].1.to_string()))
        .collect()
}

/// Quotes a value for a postgresql.conf line.
pub fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The `archive_command` for a branch: copy each finished segment into its own archive,
/// atomically (temp name, then rename), succeeding if an identical copy is already there.
pub fn archive_command() -> String {
    let f = format!("{OWN_ARCHIVE_IN_CONTAINER}/%f");
    format!("if [ -f {f} ]; then cmp -s %p {f}; else cp %p {f}.tmp && mv {f}.tmp {f}; fi")
}

/// The `restore_command` that reads a source generation's archive.
pub fn restore_command(branch: &BranchName, generation: u32) -> String {
    format!("cp {PROJECT_ARCHIVES_IN_CONTAINER}/{branch}/{generation}/%f %p")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> ArchivedFile {
        ArchivedFile {
            name: name.into(),
            size: 16 << 20,
            modified: Utc::now(),
        }
    }

    #[test]
    fn segment_names() {
        let s = Segment::parse("000000010000000200000003").unwrap();
        assert_eq!((s.timeline, s.position), (1, 2 * 256 + 3));
        assert!(Segment::parse("00000002.history").is_none());
        assert!(Segment::parse("000000010000000000000003.partial").is_none());
        assert!(Segment::parse("zz0000010000000000000003").is_none());
    }

    #[test]
    fn finds_gaps_per_timeline() {
        let files = [
            file("000000010000000000000001"),
            file("000000010000000000000002"),
            file("000000010000000000000005"),
            file("00000002.history"),
            file("000000020000000000000007"),
            file("0000000100000000000000FF"),
            file("000000010000000100000000"),
        ];
        assert_eq!(
            gaps(&files),
            vec![
                (
                    "000000010000000000000002".to_string(),
                    "000000010000000000000005".to_string()
                ),
                (
                    "000000010000000000000005".to_string(),
                    "0000000100000000000000FF".to_string()
                )
            ]
        );
    }

    #[test]
    fn acl_grants_one_uid_and_nobody_else() {
        let dir = tempfile::tempdir().unwrap();
        grant_dir_to(dir.path(), 4242).unwrap();
        // getfacl (package `acl`, installed by scripts/rig-up.sh) reads it back.
        let out = std::process::Command::new("getfacl")
            .args(["-cp", &dir.path().display().to_string()])
            .output()
            .expect("getfacl runs");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in [
            "user::rwx",
            "user:4242:rwx",
            "group::---",
            "mask::rwx",
            "other::---",
            "default:user:4242:rwx",
            "default:other::---",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(conf_quote("it's"), "'it''s'");
    }
}
