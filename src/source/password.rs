//! The source's password, found where libpq would look (the URL, `PGPASSWORD`, a pgpass
//! file), except that velo reads a pgpass file only if it is the invoking user's own: a
//! regular file (never through a link) owned by the effective uid with no group or other
//! access. So root running velo with another user's `HOME` or `PGPASSFILE` (`sudo -E`) does
//! not take a secret from a file that user controls (docs/security.md).
//!
//! velo keeps the password in memory only; [`passfile_line`] is what the client tools get, in
//! a private password file, never on a command line or in the state.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::fsx;

/// The most of a pgpass file velo reads.
const PGPASS_LIMIT: u64 = 1 << 20;

/// `PGPASSWORD` as velo was started with it ([`take_env_password`]).
static ENV_PASSWORD: OnceLock<Option<String>> = OnceLock::new();

/// Takes `PGPASSWORD` out of this process's environment, so that no program velo runs
/// inherits it (`zfs`, `sudo`, a background velo): only the client programs that read the
/// source get the password, in their own password file. [`env_password`] keeps it.
///
/// # Safety
///
/// No other thread may read or write the environment meanwhile: call it before any starts.
pub unsafe fn take_env_password() {
    let _ = ENV_PASSWORD.set(std::env::var("PGPASSWORD").ok());
    // SAFETY: the caller guarantees no other thread touches the environment.
    unsafe { std::env::remove_var("PGPASSWORD") };
}

/// `PGPASSWORD` as velo was started with it.
pub fn env_password() -> Option<String> {
    ENV_PASSWORD
        .get()
        .cloned()
        .unwrap_or_else(|| std::env::var("PGPASSWORD").ok())
}

/// The password for a source and where it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct Password {
    pub secret: String,
    pub from: PasswordFrom,
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Password(from {:?})", self.from)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordFrom {
    Url,
    Env,
    File(PathBuf),
}

/// What [`find`] needs to know about the process.
pub struct Lookup<'a> {
    pub url_password: Option<String>,
    /// `PGPASSWORD`.
    pub env_password: Option<String>,
    /// `PGPASSFILE`, else `$HOME/.pgpass`.
    pub pgpass: Option<PathBuf>,
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
}

impl Lookup<'_> {
    /// The pgpass file libpq would read in this process's environment.
    pub fn pgpass_of_env() -> Option<PathBuf> {
        std::env::var_os("PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")))
    }
}

/// Finds the password: the URL's, else `PGPASSWORD`, else the first matching line of a pgpass
/// file the user owns. `warn` hears why a pgpass file was not read. `None`: none anywhere
/// (the source may not ask for one).
pub fn find(lookup: Lookup<'_>, warn: &dyn Fn(&str)) -> Option<Password> {
    if let Some(secret) = lookup.url_password {
        return Some(Password {
            secret,
            from: PasswordFrom::Url,
        });
    }
    if let Some(secret) = lookup.env_password.filter(|p| !p.is_empty()) {
        return Some(Password {
            secret,
            from: PasswordFrom::Env,
        });
    }
    let path = lookup.pgpass?;
    let text = match read_own(&path) {
        Ok(Some(text)) => text,
        Ok(None) => return None,
        Err(why) => {
            warn(&format!("not reading {}: {why}", path.display()));
            return None;
        }
    };
    let secret = matching(
        &text,
        lookup.host,
        lookup.port,
        lookup.database,
        lookup.user,
    )?;
    Some(Password {
        secret,
        from: PasswordFrom::File(path),
    })
}

/// The contents of a pgpass file the effective user may trust; `None` if there is none.
fn read_own(path: &Path) -> Result<Option<String>, String> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(None);
    };
    let dir = match fsx::open_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let (file, st) = match fsx::open_regular_at(&dir, name).map_err(|e| e.to_string())? {
        fsx::Found::Missing => return Ok(None),
        fsx::Found::Other(_) => {
            return Err("it is not a regular file (a link is never followed)".into());
        }
        fsx::Found::Regular(file, st) => (file, st),
    };
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(format!(
            "it belongs to uid {}, not to you (uid {me}); velo takes secrets only from your own files: pass the password in PGPASSWORD or the URL",
            st.st_uid
        ));
    }
    if st.st_mode & 0o077 != 0 {
        return Err(format!(
            "others may read it (mode {:o}); `chmod 600` it, as libpq also demands",
            st.st_mode & 0o777
        ));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, PGPASS_LIMIT), &mut text)
        .map_err(|e| e.to_string())?;
    Ok(Some(text))
}

/// The password of the first line of a pgpass file that matches, libpq's way: fields
/// `host:port:database:user:password`, `*` matches anything, `\:` and `\\` escape, `#` starts
/// a comment line.
pub fn matching(text: &str, host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(fields)
        .find(|f| {
            let ok = |field: &str, value: &str| field == "*" || field == value;
            ok(&f[0], host) && ok(&f[1], &port) && ok(&f[2], database) && ok(&f[3], user)
        })
        .map(|[.., password]| password)
}

/// The five fields of a pgpass line, unescaped; `None` for a line of another shape.
fn fields(line: &str) -> Option<[String; 5]> {
    let mut out: Vec<String> = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.last_mut()?.push(chars.next().unwrap_or('\\')),
            ':' if out.len() < 5 => out.push(String::new()),
            c => out.last_mut()?.push(c),
        }
    }
    out.try_into().ok()
}

/// The one line of the private password file the client tools get: any server, this password.
pub fn passfile_line(secret: &str) -> String {
    format!(
        "*:*:*:*:{}\n",
        secret.replace('\\', "\\\\").replace(':', "\\:")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn lookup(pgpass: Option<PathBuf>) -> Lookup<'static> {
        Lookup {
            url_password: None,
            env_password: None,
            pgpass,
            host: "db",
            port: 5432,
            database: "shop",
            user: "app",
        }
    }

    #[test]
    fn pgpass_lines_match_like_libpq() {
        let text =
            "# comment\nother:5432:*:app:no\ndb:5432:shop:app:s\\:ecr\\\\et\n*:*:*:*:fallback\n";
        assert_eq!(
            matching(text, "db", 5432, "shop", "app").as_deref(),
            Some("s:ecr\\et")
        );
        assert_eq!(
            matching(text, "db", 5433, "shop", "app").as_deref(),
            Some("fallback")
        );
        assert_eq!(
            matching("db:5432:shop:app\n", "db", 5432, "shop", "app"),
            None
        );
    }

    #[test]
    fn the_passfile_line_round_trips() {
        let secret = "a:b\\c";
        let line = passfile_line(secret);
        assert_eq!(matching(&line, "x", 1, "y", "z").as_deref(), Some(secret));
    }

    #[test]
    fn url_then_env_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "*:*:*:*:from-file\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let none = |_: &str| {};
        let mut l = lookup(Some(file.clone()));
        l.url_password = Some("from-url".into());
        l.env_password = Some("from-env".into());
        assert_eq!(find(l, &none).unwrap().from, PasswordFrom::Url);
        let mut l = lookup(Some(file.clone()));
        l.env_password = Some("from-env".into());
        assert_eq!(find(l, &none).unwrap().secret, "from-env");
        let found = find(lookup(Some(file.clone())), &none).unwrap();
        assert_eq!(
            (found.secret.as_str(), found.from),
            ("from-file", PasswordFrom::File(file))
        );
        assert_eq!(find(lookup(Some(dir.path().join("missing"))), &none), None);
    }

    #[test]
    fn a_pgpass_others_could_change_or_read_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "*:*:*:*:secret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let warnings = std::sync::Mutex::new(Vec::new());
        let warn = |w: &str| warnings.lock().unwrap().push(w.to_string());
        assert_eq!(find(lookup(Some(file.clone())), &warn), None);
        assert_eq!(find(lookup(Some(link)), &warn), None);
        let warnings = warnings.into_inner().unwrap();
        assert!(warnings[0].contains("chmod 600"), "{warnings:?}");
        assert!(warnings[1].contains("not a regular file"), "{warnings:?}");
        if rustix::process::geteuid().is_root() {
            // Root with a user's HOME: a file another uid owns is theirs, not root's.
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&file, Some(1001), Some(1001)).unwrap();
            let told = std::sync::Mutex::new(String::new());
            let warn = |w: &str| *told.lock().unwrap() = w.to_string();
            assert_eq!(find(lookup(Some(file)), &warn), None);
            assert!(told.lock().unwrap().contains("belongs to uid 1001"));
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let p = Password {
            secret: "hunter2".into(),
            from: PasswordFrom::Env,
        };
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
