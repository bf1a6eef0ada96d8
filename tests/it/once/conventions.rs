//! The command line's conventions as a user and cron see them: exit codes, completions and the man page, the default project, `--json` after changes, and
//! plain output off a terminal (once, as root, on ZFS and Docker; cron's PATH:
//! `zfs_docker::zfs`; the first pull: `zfs_docker::docker`).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::util::{Backend, Sandbox, velo_exe};

/// Runs velo in a throw-away home, for what needs no rig: parsing, usage, generated files.
fn velo_alone(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(velo_exe())
        .args(args)
        .env("VELO_HOME", home.path())
        .env("VELO_CONFIG", home.path().join("config.json"))
        .env_remove("VELO_PROJECT")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn usage_errors_exit_2_and_failures_1() {
    let usage: &[&[&str]] = &[
        &["no-such-command"],
        &["status", "--verbose"],
        &["snapshot", "create", "a/b", "--wait", "forever"],
        &["doctor", "--timeout", "abc"],
        &["snapshot", "cleanup", "--all", "--days", "7d"],
        &["snapshot", "cleanup", "--all", "--days", "-1"],
        &["wal", "cleanup", "a/b", "--days", "99999999"],
        &["snapshot", "list", "Bad/x"],
        &["wal", "info", "Bad"],
        &["project", "create", "x", "--pg-version", "abc"],
        &[
            "project",
            "create",
            "x",
            "--storage",
            "btrfs",
            "--pool",
            "p",
        ],
        &[
            "project",
            "create",
            "x",
            "--runtime",
            "native",
            "--image",
            "i",
        ],
        &["branch", "create", "dev"],
        &["branch", "create", "a/b", "--parent", "c/d"],
    ];
    for args in usage {
        let out = velo_alone(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(!err.contains("expected number at"), "{args:?}: {err}");
        assert!(!err.contains("invalid digit"), "{args:?}: {err}");
    }
    let err = text(&velo_alone(&["branch", "create", "dev"]).stderr);
    assert!(err.contains("velo use <project>"), "{err}");

    let out = velo_alone(&["project", "get", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("does not exist"));
    let out = velo_alone(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
}

/// The generated file against its committed copy; `VELO_UPDATE_FIXTURES=1` rewrites the copy.
fn matches_fixture(name: &str, generated: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    if std::env::var_os("VELO_UPDATE_FIXTURES").is_some() {
        std::fs::write(&path, generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{name} differs from {}: if the change is intended, run `VELO_UPDATE_FIXTURES=1 cargo test --test it completion` and commit it",
        path.display()
    );
}

#[test]
fn completion_and_man_page_match_their_fixtures() {
    let bash = velo_alone(&["completion", "bash"]);
    assert!(bash.status.success());
    matches_fixture("completion.bash", &text(&bash.stdout));
    let man = velo_alone(&["man"]);
    assert!(man.status.success());
    matches_fixture("velo.1", &text(&man.stdout));
    for shell in ["zsh", "fish"] {
        let out = velo_alone(&["completion", shell]);
        assert!(out.status.success() && text(&out.stdout).contains("snapshot"));
    }
    let dir = tempfile::tempdir().unwrap();
    let out = velo_alone(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = std::fs::read_to_string(dir.path().join("velo-branch-create.1")).unwrap();
    assert!(page.contains("pitr"), "{page}");
}

/// A branch's record without what changes from one moment to the next.
fn record(v: &Value) -> Value {
    let mut v = v.clone();
    v["used_bytes"] = Value::Null;
    v
}

#[test]
fn default_project_json_records_and_quiet() {
    let mut sb = Sandbox::only(Backend::ZfsDocker);
    let p = sb.project("dflt");
    let created = sb.json(&[
        "project",
        "create",
        &p,
        "--pool",
        &sb.rig.pool,
        "--image",
        &sb.rig.image,
    ]);
    let main = format!("{p}/main");
    assert_eq!(
        record(&created),
        record(&sb.json(&["branch", "get", &main]))
    );

    let out = sb.run(&["branch", "create", "dev"]);
    assert_eq!(out.status.code(), Some(2));
    sb.ok(&["use", &p]);
    assert_eq!(sb.ok(&["use"]).trim(), p);
    let dev = sb.json(&["branch", "create", "dev"]);
    assert_eq!(dev["project"], p.as_str());
    assert_eq!(record(&dev), record(&sb.json(&["branch", "get", "dev"])));
    let feat = sb.json(&["branch", "create", "feat", "--parent", "dev"]);
    assert_eq!(feat["parent"], "dev");

    let id = sb.ok(&["snapshot", "create", "dev"]).trim().to_string();
    let reset = sb.json(&["branch", "reset", "feat"]);
    assert_eq!(record(&reset), record(&sb.json(&["branch", "get", "feat"])));
    let restored = sb.json(&["branch", "restore", "dev", &id]);
    assert_eq!(restored["branch"], "dev");
    sb.ok(&["branch", "stop", "dev"]);
    let started = sb.json(&["branch", "start", "dev"]);
    assert_eq!(started["container"], "running");

    // --quiet: the URL on stdout, nothing on stderr.
    let out = sb.run(&["branch", "create", "quiet", "--quiet"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("postgresql://"));
    assert_eq!(text(&out.stderr), "");

    // VELO_PROJECT wins over `velo use`.
    sb.set_env("VELO_PROJECT", "elsewhere");
    assert!(
        sb.fails(&["branch", "get", "dev"])
            .contains("`elsewhere` does not exist")
    );
    sb.clear_env();
    sb.ok(&["use", "--clear"]);
    assert_eq!(sb.run(&["branch", "get", "dev"]).status.code(), Some(2));
}

/// Runs velo under a pseudo-terminal (`script`), with extra environment; returns what it
/// printed.
fn on_a_terminal(sb: &Sandbox, env: &[(&str, &str)], args: &str) -> String {
    let velo = velo_exe().display();
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &format!("{velo} {args}"), "/dev/null"])
        .env("VELO_HOME", sb.home())
        .env("VELO_CONFIG", sb.home().join("config.json"))
        .env("TERM", "xterm")
        .env_remove("NO_COLOR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn marks_and_tables_are_plain_off_a_terminal() {
    let sb = Sandbox::only(Backend::ZfsDocker);
    let p = sb.create_project("plain");
    let table = sb.ok(&["branch", "list", &p]);
    assert!(table.is_ascii() && table.contains("BRANCH"), "{table}");
    let fancy = on_a_terminal(&sb, &[], &format!("branch list {p}"));
    assert!(fancy.contains('─'), "{fancy}");
    for env in [("NO_COLOR", "1"), ("TERM", "dumb")] {
        let plain = on_a_terminal(&sb, &[env], &format!("branch list {p}"));
        assert!(
            plain.is_ascii() && plain.contains("BRANCH"),
            "{env:?}: {plain}"
        );
    }
    let out = sb.run(&["branch", "create", &format!("{p}/dev")]);
    let steps = text(&out.stderr);
    assert!(
        steps.is_ascii() && steps.contains("- Checkpoint"),
        "{steps}"
    );
}

/// psql through a service of `~/.pg_service.conf` (and the password from `~/.pgpass`).
fn psql_service(home: &Path, service: &str) -> Output {
    Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT 1",
            &format!("service={service}"),
        ])
        .env("HOME", home)
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICEFILE")
        .env_remove("PGPASSFILE")
        .output()
        .unwrap()
}

#[test]
fn connection_files_follow_the_branches() {
    let mut sb = Sandbox::only(Backend::ZfsDocker);
    let user_home = tempfile::tempdir().unwrap();
    let (pgpass, services) = (
        user_home.path().join(".pgpass"),
        user_home.path().join(".pg_service.conf"),
    );
    let theirs = "db.example:5432:*:me:secret\n";
    std::fs::write(&pgpass, theirs).unwrap();
    sb.set_env("HOME", user_home.path().to_str().unwrap());
    let p = sb.create_project("conn");
    let dev = format!("{p}/dev");
    sb.ok(&["branch", "create", &dev]);
    assert_eq!(
        std::fs::read_to_string(&pgpass).unwrap(),
        theirs,
        "off: untouched"
    );

    sb.ok(&["connection-files", "on"]);
    assert_eq!(sb.ok(&["connection-files"]).trim(), "on");
    let out = psql_service(user_home.path(), &format!("{p}-dev"));
    assert_eq!(text(&out.stdout).trim(), "1", "{}", text(&out.stderr));
    let text_now = std::fs::read_to_string(&pgpass).unwrap();
    assert!(text_now.starts_with(theirs), "{text_now}");
    use std::os::unix::fs::PermissionsExt;
    for file in [&pgpass, &services] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }

    // Create, reset and delete keep the files true.
    let feat = format!("{p}/feat");
    sb.ok(&["branch", "create", &feat]);
    let out = psql_service(user_home.path(), &format!("{p}-feat"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    sb.ok(&["branch", "reset", &feat]);
    assert!(
        psql_service(user_home.path(), &format!("{p}-feat"))
            .status
            .success()
    );
    sb.ok(&["branch", "delete", &feat]);
    let listed = std::fs::read_to_string(&services).unwrap();
    assert!(!listed.contains(&format!("[{p}-feat]")), "{listed}");
    assert!(listed.contains(&format!("[{p}-dev]")), "{listed}");

    // A link in place of a file is refused, not followed.
    let target = user_home.path().join("elsewhere");
    std::fs::write(&target, "[mine]\n").unwrap();
    std::fs::remove_file(&services).unwrap();
    std::os::unix::fs::symlink(&target, &services).unwrap();
    let out = sb.run(&["branch", "list"]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("not a regular file"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "[mine]\n");
    std::fs::remove_file(&services).unwrap();

    sb.ok(&["connection-files", "off"]);
    assert_eq!(std::fs::read_to_string(&pgpass).unwrap(), theirs);
}
