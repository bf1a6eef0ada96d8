//! libpq's connection files, `~/.pgpass` and `~/.pg_service.conf`: velo's entries in them,
//! kept in one block per velo home between marker lines, so velo only ever rewrites its own
//! lines and leaves the user's as they were.
//!
//! Files are read and written through [`crate::fsx`]: a link in their place is refused, never
//! followed; the new file takes the name by a rename and has mode 0600 (libpq ignores a
//! `.pgpass` others can read); a file owned by another user is left alone.

use std::io::Read as _;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use crate::fsx;

/// The most velo reads of a connection file.
const LIMIT: u64 = 4 << 20;

/// One branch's connection, as libpq's files name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The service name, `<project>-<branch>`.
    pub service: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
}

/// The marker lines around the block of the velo home `home`.
fn markers(home: &str) -> (String, String) {
    let home: String = home
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    (
        format!("# velo {home}: begin (written by velo; `velo connection-files off` removes it)"),
        format!("# velo {home}: end"),
    )
}

/// A `.pgpass` field: `\` and `:` escaped.
fn pgpass_field(text: &str) -> String {
    text.replace('\\', "\\\\").replace(':', "\\:")
}

/// The `.pgpass` lines of `entries` (any database of the branch's server).
pub fn pgpass_lines(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| {
            format!(
                "{}:{}:*:{}:{}\n",
                pgpass_field(&e.host),
                e.port,
                pgpass_field(&e.user),
                pgpass_field(&e.password)
            )
        })
        .collect()
}

/// The `.pg_service.conf` sections of `entries` (the password stays in `.pgpass`).
pub fn service_lines(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| {
            format!(
                "[{}]\nhost={}\nport={}\ndbname={}\nuser={}\n",
                e.service, e.host, e.port, e.database, e.user
            )
        })
        .collect()
}

/// `existing` with the block of `home` replaced by `lines` (removed when `lines` is empty,
/// appended when there was none). Every other line stays as it was.
pub fn splice(existing: &str, home: &str, lines: &str) -> String {
    let (begin, end) = markers(home);
    let mut kept = String::new();
    let mut inside = false;
    for line in existing.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare == begin {
            inside = true;
        } else if inside && bare == end {
            inside = false;
        } else if !inside {
            kept.push_str(line);
        }
    }
    if lines.is_empty() {
        return kept;
    }
    if !kept.is_empty() && !kept.ends_with('\n') {
        kept.push('\n');
    }
    format!("{kept}{begin}\n{lines}{end}\n")
}

#[derive(Debug, thiserror::Error)]
pub enum PgFileError {
    #[error("cannot update {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a regular file (a link, say): velo does not write through it; make it a plain file or turn connection files off"
    )]
    NotRegular { path: PathBuf },
    #[error("{path} belongs to uid {uid}, not to you: velo leaves it alone")]
    NotYours { path: PathBuf, uid: u32 },
}

/// Rewrites velo's block of `home` in the file at `path` to hold `lines`; returns whether
/// the file changed. A missing file is created only if there is something to write.
pub fn update(path: &Path, home: &str, lines: &str) -> Result<bool, PgFileError> {
    let io = |source| PgFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(io(std::io::ErrorKind::InvalidInput.into()));
    };
    let dir = fsx::open_dir(dir).map_err(io)?;
    let existing = match fsx::open_regular_at(dir.as_fd(), name).map_err(io)? {
        fsx::Found::Missing => String::new(),
        fsx::Found::Other(_) => {
            return Err(PgFileError::NotRegular {
                path: path.to_path_buf(),
            });
        }
        fsx::Found::Regular(file, stat) => {
            let me = rustix::process::geteuid().as_raw();
            if stat.st_uid != me {
                return Err(PgFileError::NotYours {
                    path: path.to_path_buf(),
                    uid: stat.st_uid,
                });
            }
            let mut text = String::new();
            file.take(LIMIT).read_to_string(&mut text).map_err(io)?;
            text
        }
    };
    let next = splice(&existing, home, lines);
    if next == existing {
        return Ok(false);
    }
    fsx::replace_at(dir.as_fd(), name, next.as_bytes(), 0o600, None).map_err(io)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(service: &str, port: u16) -> Entry {
        Entry {
            service: service.into(),
            host: "127.0.0.1".into(),
            port,
            database: "postgres".into(),
            user: "postgres".into(),
            password: "pw:with\\odd".into(),
        }
    }

    #[test]
    fn lines_in_libpqs_formats() {
        assert_eq!(
            pgpass_lines(&[entry("demo-main", 54320)]),
            "127.0.0.1:54320:*:postgres:pw\\:with\\\\odd\n"
        );
        assert_eq!(
            service_lines(&[entry("demo-main", 54320)]),
            "[demo-main]\nhost=127.0.0.1\nport=54320\ndbname=postgres\nuser=postgres\n"
        );
    }

    #[test]
    fn only_velos_block_changes() {
        let mine = "db.example:5432:*:me:secret\n";
        let with = splice(mine, "/h", "a\n");
        assert!(with.starts_with(mine), "{with}");
        assert!(with.contains("# velo /h: begin") && with.ends_with("a\n# velo /h: end\n"));
        // Replaced in place, another home's block and the user's lines kept.
        let both = splice(&format!("{with}# mine after\n"), "/other", "b\n");
        let again = splice(&both, "/h", "c\n");
        assert!(again.contains("c\n") && !again.contains("a\n"), "{again}");
        assert!(
            again.contains("b\n") && again.contains("# mine after\n"),
            "{again}"
        );
        assert!(again.starts_with(mine));
        // Removed, leaving exactly what was there.
        let gone = splice(&splice(&again, "/h", ""), "/other", "");
        assert_eq!(gone, format!("{mine}# mine after\n"));
        // A file without a final newline.
        assert_eq!(splice("x", "/h", "a\n").lines().next(), Some("x"));
        assert_eq!(splice("", "/h", ""), "");
    }

    #[test]
    fn files_are_written_0600_and_links_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".pgpass");
        std::fs::write(&path, "mine:1:*:u:p\n").unwrap();
        assert!(update(&path, "/h", "velo\n").unwrap());
        assert!(
            !update(&path, "/h", "velo\n").unwrap(),
            "unchanged: not rewritten"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("mine:1:*:u:p\n") && text.contains("velo\n"));

        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "theirs\n").unwrap();
        let link = dir.path().join(".pg_service.conf");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = update(&link, "/h", "velo\n").unwrap_err();
        assert!(matches!(err, PgFileError::NotRegular { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "theirs\n");

        let fresh = dir.path().join("none");
        assert!(!update(&fresh, "/h", "").unwrap());
        assert!(!fresh.exists(), "nothing to write: no file made");
    }
}
