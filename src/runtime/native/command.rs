//! The command lines the native runtime runs, and how it reads their outcome.
//!
//! Every program gets an empty environment but `PATH` (an `archive_command` runs `cp`): none of
//! velo's user's variables (tokens, `PGPASSWORD`, …) reaches a server, whose superuser could
//! read them. The server's messages are in English, because velo reads its log.
//!
//! This module builds commands and runs `locale -a`; the runtime spawns the rest.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use super::error::NativeError;
use crate::runtime::{Result, ServerSpec};

/// Where programs are looked for when velo's `PATH` is unset.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A command with no environment of velo's but `PATH`.
pub fn quiet(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().env(
        "PATH",
        std::env::var_os("PATH").unwrap_or_else(|| OsString::from(DEFAULT_PATH)),
    );
    cmd
}

/// `postgres -D <data> -c k=v …`, in a session of its own: it leads its own process group, and
/// neither a Ctrl-C to velo's terminal nor velo's exit reaches it.
pub fn server(postgres: &Path, spec: &ServerSpec) -> Command {
    let mut cmd = quiet(postgres);
    cmd.arg("-D")
        .arg(&spec.paths.data_dir)
        .env("LC_MESSAGES", "C");
    for (key, value) in &spec.settings {
        cmd.arg("-c").arg(format!("{key}={value}"));
    }
    // SAFETY: `setsid` is a single system call, async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| rustix::process::setsid().map(drop).map_err(Into::into));
    }
    cmd
}

/// `initdb` for `data_dir`: superuser `superuser` with no password, the Unix socket trusted,
/// TCP with a SCRAM password, UTF-8, in locale `locale`.
pub fn initdb(initdb: &Path, data_dir: &Path, superuser: &str, locale: &str) -> Command {
    let mut cmd = quiet(initdb);
    cmd.arg(format!("--pgdata={}", data_dir.display()))
        .arg(format!("--username={superuser}"))
        .args([
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-instructions",
        ])
        .env("LC_ALL", locale);
    cmd
}

/// The locale new clusters get: `C.UTF-8` where the C library has it (sorting by code point,
/// the same on every host), else `C`.
pub async fn initdb_locale() -> &'static str {
    let listed = tokio::process::Command::new("locale")
        .arg("-a")
        .env_clear()
        .output()
        .await
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    locale_from(listed.as_deref())
}

/// `C.UTF-8` if `locale -a` listed it (glibc spells it `C.utf8`), else `C`.
fn locale_from(locale_a: Option<&str>) -> &'static str {
    let listed = locale_a.is_some_and(|list| {
        list.lines()
            .any(|l| matches!(l.trim().to_ascii_lowercase().as_str(), "c.utf8" | "c.utf-8"))
    });
    if listed { "C.UTF-8" } else { "C" }
}

/// The command line, for messages.
pub fn line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A finished command's output, or an error with its command line, status and stderr.
pub fn checked(line: &str, output: std::io::Result<Output>) -> Result<Output> {
    let out = output.map_err(|source| NativeError::Spawn {
        command: line.to_string(),
        source,
    })?;
    if out.status.success() {
        return Ok(out);
    }
    Err(NativeError::Command {
        command: line.to_string(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
    .into())
}

/// The `port` of `settings` (the last one wins), else PostgreSQL's default.
pub fn port(settings: &[(String, String)]) -> String {
    settings
        .iter()
        .rev()
        .find(|(k, _)| k == "port")
        .map_or_else(|| "5432".to_string(), |(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Labels, ServerPaths};
    use std::ffi::OsStr;
    use std::path::PathBuf;

    fn env(cmd: &Command) -> Vec<(String, Option<String>)> {
        cmd.get_envs()
            .map(|(k, v)| {
                let text = |s: &OsStr| s.to_string_lossy().into_owned();
                (text(k), v.map(text))
            })
            .collect()
    }

    #[test]
    fn the_server_gets_its_settings_and_no_environment_of_velos() {
        let dir = PathBuf::from("/v/demo");
        let spec = ServerSpec {
            name: "velo-demo.main".into(),
            user: crate::runtime::ServerUser {
                uid: 1000,
                gid: 1000,
            },
            labels: Labels {
                project: "demo".into(),
                branch: "main".into(),
                home: "/h".into(),
            },
            paths: ServerPaths {
                data_dir: dir.join("pgdata"),
                socket_dir: dir.join("run"),
                archive_dir: dir.join("wal/1"),
                archives_root: dir.join("wal"),
                hba_file: dir.join("hba"),
                secrets_dir: None,
                source_wal: None,
            },
            settings: vec![
                ("port".into(), "54321".into()),
                ("archive_command".into(), "cp %p /a/%f".into()),
            ],
        };
        let cmd = server(Path::new("/pg/bin/postgres"), &spec);
        assert_eq!(
            line(&cmd),
            "/pg/bin/postgres -D /v/demo/pgdata -c port=54321 -c archive_command=cp %p /a/%f"
        );
        let names: Vec<String> = env(&cmd).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["LC_MESSAGES", "PATH"]);
        assert!(env(&cmd).contains(&("LC_MESSAGES".into(), Some("C".into()))));
    }

    #[test]
    fn initdb_sets_no_password_and_a_stable_locale() {
        let cmd = initdb(
            Path::new("/pg/bin/initdb"),
            Path::new("/d"),
            "app",
            "C.UTF-8",
        );
        assert_eq!(
            line(&cmd),
            "/pg/bin/initdb --pgdata=/d --username=app --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --no-instructions"
        );
        assert!(env(&cmd).contains(&("LC_ALL".into(), Some("C.UTF-8".into()))));
        assert_eq!(locale_from(Some("C\nC.utf8\nPOSIX\n")), "C.UTF-8");
        assert_eq!(locale_from(Some("C\nPOSIX\nen_US.utf8\n")), "C");
        assert_eq!(locale_from(None), "C");
    }

    #[test]
    fn the_port_is_the_last_one_set() {
        let setting = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(port(&[setting("port", "1"), setting("port", "2")]), "2");
        assert_eq!(port(&[setting("listen_addresses", "")]), "5432");
    }

    #[test]
    fn a_command_that_cannot_start_is_an_error_naming_it() {
        let err = checked(
            "/nonexistent --version",
            Command::new("/nonexistent").output(),
        );
        let text = err.unwrap_err().to_string();
        assert_eq!(text, "cannot run `/nonexistent --version`");
    }
}
