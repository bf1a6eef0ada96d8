//! WAL archives on the host: `$VELO_HOME/wal/<project>/<branch>/<generation>/`.
//!
//! Each branch generation archives into its own directory. A reset or restore starts a new
//! generation whose WAL continues another history under the same segment names, so sharing a
//! directory would make `archive_command` fail on a name clash (the original tool's stops took 3 s
//! after a reset for that reason). A PITR branch reads its source's directory and writes only its
//! own, so a recovered branch never adds a timeline to its source's archive.
//!
//! Directories are private to velo's user; the server's uid may write its own generation's
//! archive and read the others ([`crate::hostdir`]). This module knows nothing of storage or
//! runtimes: commands name directories as the server sees them.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};

use crate::hostdir::{self, Access};
use crate::names::{BranchName, ProjectName};

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

/// A WAL segment file name: `TTTTTTTTXXXXXXXXYYYYYYYY` (timeline, log, segment). Fields in
/// that order, so segments sort as the WAL runs whatever the segment size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Segment {
    pub timeline: u32,
    pub log: u32,
    pub seg: u32,
}

impl Segment {
    pub fn parse(name: &str) -> Option<Segment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let part = |range: std::ops::Range<usize>| u32::from_str_radix(&name[range], 16).ok();
        Some(Segment {
            timeline: part(0..8)?,
            log: part(8..16)?,
            seg: part(16..24)?,
        })
    }

    /// Where it starts in the WAL's history, timeline aside.
    pub fn place(&self) -> (u32, u32) {
        (self.log, self.seg)
    }

    /// Whether `self` is the segment after `prev` on its timeline, for segments of `bytes`
    /// (a log id holds 4 GiB of WAL: 256 segments of 16 MB, 4096 of 1 MB).
    pub fn follows(&self, prev: &Segment, bytes: u64) -> bool {
        let per_log = (1u64 << 32) / bytes.clamp(1 << 20, 1 << 30);
        let index = |s: &Segment| u64::from(s.log) * per_log + u64::from(s.seg);
        self.timeline == prev.timeline && index(self) == index(prev) + 1
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

    /// Creates the directory chain for a generation: the server's uid may write the
    /// generation's own directory and read the rest.
    pub fn create(
        &self,
        project: &ProjectName,
        branch: &BranchName,
        generation: u32,
        uid: u32,
        gid: u32,
    ) -> std::io::Result<PathBuf> {
        hostdir::private_dir(&self.root)?;
        hostdir::server_dir(&self.project_dir(project), uid, gid, Access::Read)?;
        hostdir::server_dir(&self.branch_dir(project, branch), uid, gid, Access::Read)?;
        let dir = self.generation_dir(project, branch, generation);
        // A new generation's archive starts empty: anything there is debris of an earlier
        // branch of the same name, whose segments would clash with this one's.
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        hostdir::server_dir(&dir, uid, gid, Access::ReadWrite)?;
        Ok(dir)
    }

    /// Moves a branch's archive (every generation's) to another branch name, for a rename.
    /// Nothing to move is success. With `replace`, what is under the new name (debris of an
    /// earlier branch of that name, whose segments would clash) is removed first; without it,
    /// an archive already there stays and nothing moves: how a rename is taken back, where
    /// the original name may have never been left.
    pub fn rename_branch(
        &self,
        project: &ProjectName,
        from: &BranchName,
        to: &BranchName,
        replace: bool,
    ) -> std::io::Result<()> {
        let (old, new) = (self.branch_dir(project, from), self.branch_dir(project, to));
        if !exists(&old)? {
            return Ok(());
        }
        if exists(&new)? {
            if !replace {
                return Ok(());
            }
            fs::remove_dir_all(&new)?;
        }
        fs::rename(&old, &new)
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

/// Whether something is at `path` (a link counts; it is not followed).
fn exists(path: &Path) -> std::io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
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

/// Gaps in a run of segments: each (after, before) pair of consecutive segments on one timeline
/// with missing segments between them.
pub fn gaps(files: &[ArchivedFile]) -> Vec<(String, String)> {
    let mut segs: Vec<(Segment, &ArchivedFile)> = files
        .iter()
        .filter_map(|f| f.segment().map(|s| (s, f)))
        .collect();
    segs.sort_by_key(|(s, _)| *s);
    segs.windows(2)
        .filter(|w| w[0].0.timeline == w[1].0.timeline && !w[1].0.follows(&w[0].0, w[0].1.size))
        .map(|w| (w[0].1.name.clone(), w[1].1.name.clone()))
        .collect()
}

/// Quotes a path for a shell command PostgreSQL runs.
fn shell_quote(path: &str) -> String {
    format!("'{}'", path.replace('\'', "'\\''"))
}

/// The `archive_command` for a branch whose server sees its archive at `dir`: copy each
/// finished segment into it atomically (temp name, then rename), succeeding if an identical
/// copy is already there. The copy shares the segment's blocks where the file system can
/// (`cp --reflink=auto` on Btrfs or XFS, when the archive is on the data's file system): each
/// snapshot of a running server on reflink storage ends a segment, and a plain copy of it was
/// 16 MB of every fresh branch's cost. A `cp` without the option (BusyBox, in the
/// official alpine images) fails at once and the plain copy runs.
pub fn archive_command(dir: &str) -> String {
    let f = format!("{}/%f", shell_quote(dir));
    let tmp = format!("{f}.tmp");
    format!(
        "if [ -f {f} ]; then cmp -s %p {f}; else {{ cp --reflink=auto %p {tmp} 2>/dev/null || cp %p {tmp}; }} && mv {tmp} {f}; fi"
    )
}

/// The `restore_command` that reads a source generation's archive, for a server that sees the
/// project's archives at `root`.
pub fn restore_command(root: &str, branch: &BranchName, generation: u32) -> String {
    restore_from(&format!("{root}/{branch}/{generation}"))
}

/// The `restore_command` that reads an archive the server sees at `dir`.
pub fn restore_from(dir: &str) -> String {
    format!("cp {}/%f %p", shell_quote(dir))
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
        assert_eq!((s.timeline, s.place()), (1, (2, 3)));
        let (a, b) = (
            Segment::parse("0000000100000000000000FF").unwrap(),
            Segment::parse("000000010000000100000000").unwrap(),
        );
        assert!(b.follows(&a, 16 << 20));
        // 1 MB segments: a log id holds 4096 of them.
        assert!(!b.follows(&a, 1 << 20));
        let last = Segment::parse("000000010000000000000FFF").unwrap();
        assert!(b.follows(&last, 1 << 20));
        assert!(a < b && last < b);
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
    fn quoting() {
        assert_eq!(
            archive_command("/h/it's"),
            "if [ -f '/h/it'\\''s'/%f ]; then cmp -s %p '/h/it'\\''s'/%f; else { cp --reflink=auto %p '/h/it'\\''s'/%f.tmp 2>/dev/null || cp %p '/h/it'\\''s'/%f.tmp; } && mv '/h/it'\\''s'/%f.tmp '/h/it'\\''s'/%f; fi"
        );
    }
}
