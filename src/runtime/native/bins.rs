//! Finding the host's PostgreSQL programs by major version.
//!
//! A branch's server must be the major its data was made with, and client tools that read or
//! write a server's files (`pg_dump`, `pg_basebackup`, …) must match it too. Distributions put
//! each major somewhere else, so velo looks, in order, at:
//!
//! 1. `VELO_PG_BINDIR`: one bin directory;
//! 2. `VELO_PG_ROOT`: a directory of `<major>/bin`;
//! 3. `pg_config --bindir`, `pg_config` found on `PATH`;
//! 4. the layouts of packaged PostgreSQL: `/usr/lib/postgresql/<N>/bin` (Debian, Ubuntu),
//!    `/usr/pgsql-<N>/bin` (RHEL and Fedora with the PostgreSQL repository),
//!    `/usr/local/pgsql/bin` (built from source), `/usr/lib/postgresql<N>/bin` (openSUSE),
//!    `/usr/lib64/postgresql-<N>/bin` (Gentoo), `/usr/libexec/postgresql<N>` (Alpine),
//!    `/opt/pgsql-<N>/bin` (Arch's old-upgrade package), `/opt/PostgreSQL/<N>/bin` (EDB's
//!    installer), Homebrew's `postgresql@<N>`, and `/usr/bin` (Arch, Fedora's own packages).
//!
//! A directory's major is what its program says (`postgres --version`), never its name. With a
//! major asked for, the first directory of that major wins; without one, the newest major, the
//! first place breaking a tie. Majors below [`MIN_MAJOR`] are refused.
//!
//! This module runs `--version` of the programs it finds, and `pg_config`; it writes nothing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::NativeError;
use crate::runtime::Result;

/// The oldest PostgreSQL velo runs.
pub use crate::pgversion::MIN_MAJOR;

/// A bin directory holding a PostgreSQL server (`postgres` and `initdb`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub bindir: PathBuf,
    pub major: u32,
    /// The full version, `17.2` or `18beta1`.
    pub version: String,
}

/// The server binaries of PostgreSQL `major`, or the newest found.
pub fn find(major: Option<u32>) -> Result<Binaries> {
    Search::from_env().find(major)
}

/// The client program `tool` (`pg_dump`, `pg_restore`, `pg_basebackup`, `psql`, …) of
/// PostgreSQL `major`, from the same places.
pub fn find_client(major: u32, tool: &str) -> Result<PathBuf> {
    Search::from_env().find_client(major, tool)
}

/// Where to look.
#[derive(Debug, Clone)]
struct Search {
    places: Vec<Place>,
    /// `PATH`, where `pg_config` is looked for.
    path: Option<OsString>,
}

#[derive(Debug, Clone)]
enum Place {
    /// One bin directory, named by `source` (an environment variable) or by itself.
    Dir {
        dir: PathBuf,
        source: Option<&'static str>,
    },
    /// The directories `<parent>/<prefix><version>/<sub>`, newest version first.
    Versioned {
        parent: PathBuf,
        prefix: &'static str,
        sub: &'static str,
        source: Option<&'static str>,
    },
    /// `pg_config --bindir`, `pg_config` from `PATH`.
    PgConfig,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Dir { dir, source: None } => write!(f, "{}", dir.display()),
            Place::Dir {
                dir,
                source: Some(var),
            } => write!(f, "{var}={}", dir.display()),
            Place::Versioned {
                parent,
                prefix,
                sub,
                source,
            } => {
                if let Some(var) = source {
                    write!(f, "{var}=")?;
                }
                write!(
                    f,
                    "{}",
                    under(parent, &format!("{prefix}<N>"), sub).display()
                )
            }
            Place::PgConfig => write!(f, "`pg_config --bindir`"),
        }
    }
}

/// The layouts packages use, after the environment's places.
fn standard_places() -> Vec<Place> {
    let versioned = |parent: &str, prefix, sub| Place::Versioned {
        parent: parent.into(),
        prefix,
        sub,
        source: None,
    };
    let dir = |dir: &str| Place::Dir {
        dir: dir.into(),
        source: None,
    };
    vec![
        Place::PgConfig,
        versioned("/usr/lib/postgresql", "", "bin"),
        versioned("/usr", "pgsql-", "bin"),
        dir("/usr/local/pgsql/bin"),
        versioned("/usr/lib", "postgresql", "bin"),
        versioned("/usr/lib64", "postgresql-", "bin"),
        versioned("/usr/libexec", "postgresql", ""),
        versioned("/opt", "pgsql-", "bin"),
        versioned("/opt/PostgreSQL", "", "bin"),
        versioned("/home/linuxbrew/.linuxbrew/opt", "postgresql@", "bin"),
        dir("/usr/bin"),
    ]
}

/// A program's version, from its `--version` line (`postgres (PostgreSQL) 17.2 (Debian …)`):
/// the full version and its major.
pub fn parse_version(line: &str) -> Option<(String, u32)> {
    let version = line
        .split_whitespace()
        .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))?;
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    Some((version.to_string(), digits.parse().ok()?))
}

/// What `<dir>/<program> --version` says; `None` if there is no such program or it fails.
fn probe(dir: &Path, program: &str) -> Option<(String, u32)> {
    let path = dir.join(program);
    if !path.is_file() {
        return None;
    }
    let out = Command::new(&path)
        .arg("--version")
        .env_clear()
        .env("LC_ALL", "C")
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    parse_version(String::from_utf8_lossy(&out.stdout).lines().next()?)
}

impl Search {
    fn from_env() -> Self {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        Self::new(
            var("VELO_PG_BINDIR").map(PathBuf::from),
            var("VELO_PG_ROOT").map(PathBuf::from),
            var("PATH"),
            standard_places(),
        )
    }

    fn new(
        bindir: Option<PathBuf>,
        root: Option<PathBuf>,
        path: Option<OsString>,
        standard: Vec<Place>,
    ) -> Self {
        let mut places = Vec::new();
        if let Some(dir) = bindir {
            places.push(Place::Dir {
                dir,
                source: Some("VELO_PG_BINDIR"),
            });
        }
        if let Some(parent) = root {
            places.push(Place::Versioned {
                parent,
                prefix: "",
                sub: "bin",
                source: Some("VELO_PG_ROOT"),
            });
        }
        places.extend(standard);
        Self { places, path }
    }

    /// Every existing candidate directory, in search order, each once.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut seen = std::collections::HashSet::new();
        self.places
            .iter()
            .flat_map(|place| self.expand(place))
            .filter(|dir| dir.is_dir())
            .filter(|dir| seen.insert(dir.canonicalize().unwrap_or_else(|_| dir.clone())))
            .collect()
    }

    fn expand(&self, place: &Place) -> Vec<PathBuf> {
        match place {
            Place::Dir { dir, .. } => vec![dir.clone()],
            Place::Versioned {
                parent,
                prefix,
                sub,
                ..
            } => versioned_dirs(parent, prefix)
                .into_iter()
                .map(|dir| under(&dir, "", sub))
                .collect(),
            Place::PgConfig => self.pg_config_bindir().into_iter().collect(),
        }
    }

    fn pg_config_bindir(&self) -> Option<PathBuf> {
        let pg_config = std::env::split_paths(self.path.as_ref()?)
            .map(|dir| dir.join("pg_config"))
            .find(|p| p.is_file())?;
        let out = Command::new(pg_config)
            .arg("--bindir")
            .env_clear()
            .env("PATH", self.path.as_ref()?)
            .output()
            .ok()
            .filter(|out| out.status.success())?;
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Some(PathBuf::from(dir)).filter(|dir| dir.is_absolute())
    }

    fn find(&self, major: Option<u32>) -> Result<Binaries> {
        if let Some(major) = major.filter(|m| *m < MIN_MAJOR) {
            return Err(too_old(major));
        }
        let mut found: Vec<Binaries> = Vec::new();
        for bindir in self.dirs() {
            let Some((version, m)) = probe(&bindir, "postgres") else {
                continue;
            };
            if !bindir.join("initdb").is_file() {
                continue;
            }
            let binaries = Binaries {
                bindir,
                major: m,
                version,
            };
            if major == Some(m) {
                return Ok(binaries);
            }
            found.push(binaries);
        }
        let newest = found
            .iter()
            .filter(|b| major.is_none() && b.major >= MIN_MAJOR)
            .fold(None::<&Binaries>, |best, b| match best {
                Some(best) if best.major >= b.major => Some(best),
                _ => Some(b),
            });
        if let Some(newest) = newest {
            return Ok(newest.clone());
        }
        let found: Vec<(u32, PathBuf)> = found.into_iter().map(|b| (b.major, b.bindir)).collect();
        Err(self.not_found(server_wanted(major), &found, server_fix(major)))
    }

    fn find_client(&self, major: u32, tool: &str) -> Result<PathBuf> {
        if tool.is_empty() || tool.contains('/') || tool.starts_with('.') {
            return Err(NativeError::BadTool {
                tool: tool.to_string(),
            }
            .into());
        }
        if major < MIN_MAJOR {
            return Err(too_old(major));
        }
        let mut found = Vec::new();
        for bindir in self.dirs() {
            match probe(&bindir, tool) {
                Some((_, m)) if m == major => return Ok(bindir.join(tool)),
                Some((_, m)) => found.push((m, bindir)),
                None => {}
            }
        }
        let what = format!("`{tool}` of PostgreSQL {major}");
        let fix = format!(
            "Install PostgreSQL {major}'s client programs (`apt install postgresql-client-{major}` on Debian and Ubuntu, `dnf install postgresql{major}` with the PostgreSQL repository on RHEL and Fedora), or set VELO_PG_ROOT (a directory of <major>/bin) or VELO_PG_BINDIR"
        );
        Err(self.not_found(what, &found, fix))
    }

    fn not_found(
        &self,
        what: String,
        found: &[(u32, PathBuf)],
        fix: String,
    ) -> crate::runtime::RuntimeError {
        let searched: Vec<String> = self.places.iter().map(Place::to_string).collect();
        let found: Vec<String> = found
            .iter()
            .map(|(major, dir)| format!("{major} in {}", dir.display()))
            .collect();
        NativeError::NotFound {
            what,
            searched: searched.join(", "),
            found: if found.is_empty() {
                String::new()
            } else {
                format!("; found PostgreSQL {}", found.join(", "))
            },
            fix,
        }
        .into()
    }
}

/// `<parent>/<name>/<sub>`, leaving out empty parts (no trailing `/`).
fn under(parent: &Path, name: &str, sub: &str) -> PathBuf {
    [name, sub]
        .iter()
        .filter(|part| !part.is_empty())
        .fold(parent.to_path_buf(), |path, part| path.join(part))
}

/// The directories `<parent>/<prefix><version>`, version being digits and dots, newest first.
fn versioned_dirs(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix(prefix)?;
            let parts: Option<Vec<u32>> = version.split('.').map(|p| p.parse().ok()).collect();
            Some((parts?, e.path()))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn too_old(major: u32) -> crate::runtime::RuntimeError {
    NativeError::TooOld {
        major,
        min: MIN_MAJOR,
    }
    .into()
}

fn server_wanted(major: Option<u32>) -> String {
    match major {
        Some(major) => format!("PostgreSQL {major} server (postgres and initdb)"),
        None => format!("PostgreSQL {MIN_MAJOR} or newer server (postgres and initdb)"),
    }
}

fn server_fix(major: Option<u32>) -> String {
    let (apt, dnf) = match major {
        Some(major) => (
            format!("postgresql-{major}"),
            format!("postgresql{major}-server"),
        ),
        None => ("postgresql".to_string(), "postgresql-server".to_string()),
    };
    format!(
        "Install it (`apt install {apt}` on Debian and Ubuntu, `dnf install {dnf}` on RHEL and Fedora), or set VELO_PG_ROOT (a directory of <major>/bin) or VELO_PG_BINDIR (one bin directory)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fake bin directory whose programs print `version`.
    fn fake_bindir(dir: &Path, version: &str, programs: &[&str]) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        for program in programs {
            let path = dir.join(program);
            let script = format!("#!/bin/sh\necho '{program} (PostgreSQL) {version}'\n");
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir.to_path_buf()
    }

    fn server(dir: &Path, version: &str) -> PathBuf {
        fake_bindir(dir, version, &["postgres", "initdb", "psql"])
    }

    fn debian_like(root: &Path) -> Place {
        Place::Versioned {
            parent: root.join("usr/lib/postgresql"),
            prefix: "",
            sub: "bin",
            source: None,
        }
    }

    #[test]
    fn parses_versions_of_every_shape() {
        let cases = [
            (
                "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)",
                "15.14",
                15,
            ),
            ("postgres (PostgreSQL) 18beta1", "18beta1", 18),
            ("pg_dump (PostgreSQL) 9.6.24", "9.6.24", 9),
        ];
        for (line, version, major) in cases {
            assert_eq!(parse_version(line), Some((version.to_string(), major)));
        }
        assert_eq!(parse_version("postgres (PostgreSQL)"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn the_newest_wins_without_a_major_and_the_first_place_with_one() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("rig");
        server(&root.join("16/bin"), "16.4");
        server(&root.join("17/bin"), "17.2");
        let debian17 = server(&t.path().join("usr/lib/postgresql/17/bin"), "17.1");
        let debian15 = server(&t.path().join("usr/lib/postgresql/15/bin"), "15.14");
        server(&t.path().join("usr/lib/postgresql/13/bin"), "13.9");
        let search = Search::new(None, Some(root.clone()), None, vec![debian_like(t.path())]);

        let newest = search.find(None).unwrap();
        assert_eq!((newest.major, newest.version.as_str()), (17, "17.2"));
        assert_eq!(newest.bindir, root.join("17/bin"));
        assert_eq!(search.find(Some(15)).unwrap().bindir, debian15);

        let pinned = fake_bindir(&t.path().join("pinned"), "17.0", &["postgres", "initdb"]);
        let search = Search::new(
            Some(pinned.clone()),
            Some(root),
            None,
            vec![debian_like(t.path())],
        );
        assert_eq!(search.find(Some(17)).unwrap().bindir, pinned);
        assert_eq!(search.find(Some(15)).unwrap().bindir, debian15);
        assert_ne!(search.find(Some(17)).unwrap().bindir, debian17);
    }

    #[test]
    fn pg_config_on_path_is_asked_for_its_bindir() {
        let t = tempfile::tempdir().unwrap();
        let bindir = server(&t.path().join("custom/bin"), "16.1");
        let tools = t.path().join("tools");
        std::fs::create_dir(&tools).unwrap();
        let pg_config = tools.join("pg_config");
        std::fs::write(
            &pg_config,
            format!("#!/bin/sh\necho {}\n", bindir.display()),
        )
        .unwrap();
        std::fs::set_permissions(&pg_config, std::fs::Permissions::from_mode(0o755)).unwrap();
        let search = Search::new(
            None,
            None,
            Some(tools.into_os_string()),
            vec![Place::PgConfig],
        );
        assert_eq!(search.find(None).unwrap().bindir, bindir);
    }

    #[test]
    fn a_bindir_without_initdb_or_below_14_is_no_server() {
        let t = tempfile::tempdir().unwrap();
        fake_bindir(
            &t.path().join("usr/lib/postgresql/16/bin"),
            "16.1",
            &["postgres", "psql"],
        );
        server(&t.path().join("usr/lib/postgresql/13/bin"), "13.9");
        let search = Search::new(None, None, None, vec![debian_like(t.path())]);
        let err = search.find(None).unwrap_err().to_string();
        assert!(err.starts_with("no PostgreSQL 14 or newer server"), "{err}");
        assert!(err.contains("found PostgreSQL 13 in "), "{err}");
        assert!(err.contains("apt install postgresql`"), "{err}");
        let err = search.find(Some(12)).unwrap_err().to_string();
        assert_eq!(
            err,
            "PostgreSQL 12 is too old: velo needs PostgreSQL 14 or newer"
        );
    }

    #[test]
    fn a_missing_major_names_what_was_searched_and_how_to_get_it() {
        let t = tempfile::tempdir().unwrap();
        server(&t.path().join("usr/lib/postgresql/15/bin"), "15.14");
        let root = t.path().join("rig");
        let search = Search::new(None, Some(root.clone()), None, vec![debian_like(t.path())]);
        let err = search.find(Some(17)).unwrap_err().to_string();
        let debian = t.path().join("usr/lib/postgresql/<N>/bin");
        let expected = format!(
            "no PostgreSQL 17 server (postgres and initdb) found; searched VELO_PG_ROOT={}, {}; found PostgreSQL 15 in {}. Install it (`apt install postgresql-17` on Debian and Ubuntu, `dnf install postgresql17-server` on RHEL and Fedora), or set VELO_PG_ROOT (a directory of <major>/bin) or VELO_PG_BINDIR (one bin directory)",
            root.join("<N>/bin").display(),
            debian.display(),
            t.path().join("usr/lib/postgresql/15/bin").display(),
        );
        assert_eq!(err, expected);
    }

    #[test]
    fn client_tools_match_the_major_even_without_a_server() {
        let t = tempfile::tempdir().unwrap();
        let client16 = fake_bindir(
            &t.path().join("usr/lib/postgresql/16/bin"),
            "16.1",
            &["psql", "pg_dump"],
        );
        server(&t.path().join("usr/lib/postgresql/15/bin"), "15.14");
        let search = Search::new(None, None, None, vec![debian_like(t.path())]);
        assert_eq!(
            search.find_client(16, "pg_dump").unwrap(),
            client16.join("pg_dump")
        );
        let err = search.find_client(15, "pg_dump").unwrap_err().to_string();
        assert!(
            err.starts_with("no `pg_dump` of PostgreSQL 15 found"),
            "{err}"
        );
        assert!(err.contains("found PostgreSQL 16 in"), "{err}");
        assert!(err.contains("apt install postgresql-client-15"), "{err}");
        assert!(search.find_client(16, "../psql").is_err());
    }

    #[test]
    fn versioned_directories_come_newest_first_and_only_with_versions() {
        let t = tempfile::tempdir().unwrap();
        for name in [
            "pgsql-9.6",
            "pgsql-17",
            "pgsql-14",
            "pgsql-",
            "pgsql-x",
            "other",
        ] {
            std::fs::create_dir(t.path().join(name)).unwrap();
        }
        let names: Vec<String> = versioned_dirs(t.path(), "pgsql-")
            .iter()
            .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["pgsql-17", "pgsql-14", "pgsql-9.6"]);
        let alpine = Place::Versioned {
            parent: "/usr/libexec".into(),
            prefix: "postgresql",
            sub: "",
            source: None,
        };
        assert_eq!(alpine.to_string(), "/usr/libexec/postgresql<N>");
    }
}
