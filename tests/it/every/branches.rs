//! Projects and branches end to end, on every backend.

use std::process::Command;

use crate::util::Sandbox;

/// The original tool's README walk-through, word for word.
#[test]
fn readme_walkthrough() {
    let sb = Sandbox::new();
    let demo = sb.create_project("demo");
    let main = format!("{demo}/main");
    let dev = format!("{demo}/dev");
    sb.sql(
        &main,
        "CREATE TABLE users (id serial PRIMARY KEY, name text); \
         INSERT INTO users (name) VALUES ('Alice'), ('Bob'), ('Charlie')",
    );
    let url = sb.ok(&["branch", "create", &dev]);
    assert!(url.starts_with("postgresql://postgres@127.0.0.1:"), "{url}");
    assert!(
        !url.contains(
            &sb.json(&["branch", "password", &dev])["password"]
                .as_str()
                .unwrap()
                .to_string()
        )
    );

    sb.sql(
        &dev,
        "INSERT INTO users (name) VALUES ('Dave'), ('Eve'); DELETE FROM users WHERE name = 'Bob'",
    );
    assert_eq!(sb.users(&main), "Alice,Bob,Charlie");
    assert_eq!(sb.users(&dev), "Alice,Charlie,Dave,Eve");

    let port = sb.port(&dev);
    sb.ok(&["branch", "reset", &dev]);
    assert_eq!(sb.users(&dev), "Alice,Bob,Charlie");
    assert_eq!(sb.port(&dev), port, "reset keeps the port");

    // Reset leaves exactly one generation and one base snapshot behind.
    let tree = sb.volumes(&demo);
    assert_eq!(
        tree.iter().filter(|n| n.starts_with("dev.")).count(),
        1,
        "{tree:?}"
    );
    assert_eq!(
        tree.iter().filter(|n| n.contains('@')).count(),
        1,
        "{tree:?}"
    );
}

#[test]
fn isolation_both_ways_and_data_survives_restarts() {
    let sb = Sandbox::new();
    let p = sb.create_project("iso");
    let (main, dev) = (format!("{p}/main"), format!("{p}/dev"));
    sb.sql(
        &main,
        "CREATE TABLE users (id serial, name text); INSERT INTO users (name) VALUES ('a')",
    );
    sb.ok(&["branch", "create", &dev]);
    sb.sql(&main, "INSERT INTO users (name) VALUES ('main-only')");
    sb.sql(&dev, "INSERT INTO users (name) VALUES ('dev-only')");
    assert_eq!(sb.users(&main), "a,main-only");
    assert_eq!(sb.users(&dev), "a,dev-only");
    // WAL segments are made new and unfilled where blocks are shared, PostgreSQL's defaults
    // elsewhere.
    let shared = sb.backend() != crate::util::rig::Backend::CopyNative;
    let want = if shared { "off" } else { "on" };
    for setting in ["wal_init_zero", "wal_recycle"] {
        assert_eq!(sb.sql(&dev, &format!("SHOW {setting}")), want, "{setting}");
    }

    let port = sb.port(&dev);
    sb.ok(&["branch", "stop", &dev]);
    assert_eq!(sb.json(&["branch", "get", &dev])["container"], "stopped");
    sb.ok(&["branch", "start", &dev]);
    assert_eq!(sb.users(&dev), "a,dev-only");
    sb.ok(&["branch", "restart", &dev]);
    assert_eq!(sb.users(&dev), "a,dev-only");
    assert_eq!(sb.port(&dev), port, "stop/start/restart keep the port");

    // A branch made from a stopped parent needs no checkpoint and still has its data.
    sb.ok(&["branch", "stop", &dev]);
    sb.ok(&[
        "branch",
        "create",
        &format!("{p}/from-stopped"),
        "--parent",
        &dev,
    ]);
    assert_eq!(sb.users(&format!("{p}/from-stopped")), "a,dev-only");
}

#[test]
fn branch_of_a_branch_reset_and_delete_rules() {
    let sb = Sandbox::new();
    let p = sb.create_project("tree");
    let (main, dev, feat) = (format!("{p}/main"), format!("{p}/dev"), format!("{p}/feat"));
    sb.sql(
        &main,
        "CREATE TABLE users (id serial, name text); INSERT INTO users (name) VALUES ('m')",
    );
    sb.ok(&["branch", "create", &dev]);
    sb.sql(&dev, "INSERT INTO users (name) VALUES ('d')");
    sb.ok(&["br", "create", &feat, "--parent", &dev]);
    assert_eq!(sb.users(&feat), "m,d");
    assert_eq!(sb.json(&["branch", "get", &feat])["parent"], "dev");

    // Resetting dev keeps feat working: feat's origin lives on dev's old generation.
    sb.ok(&["branch", "reset", &dev]);
    assert_eq!(sb.users(&dev), "m");
    assert_eq!(sb.users(&feat), "m,d");
    sb.ok(&["branch", "reset", &feat]);
    assert_eq!(sb.users(&feat), "m");

    // Deleting a branch with children needs --force, and the error names them.
    let err = sb.fails(&["branch", "delete", &dev]);
    assert!(err.contains(&feat) && err.contains("--force"), "{err}");
    let err = sb.fails(&["branch", "delete", &main]);
    assert!(err.contains("project delete"), "{err}");
    let err = sb.fails(&["project", "delete", &p]);
    assert!(err.contains("--force"), "{err}");

    sb.ok(&["branch", "rm", &dev, "--force"]);
    let state = sb.state();
    let branches = state["projects"][&p]["branches"].as_object().unwrap();
    assert_eq!(branches.keys().collect::<Vec<_>>(), vec!["main"]);
    // Everything of dev and feat is gone: only main's volume, no snapshot, one server.
    assert_eq!(sb.volumes(&p), ["main.0"]);
    assert_eq!(sb.servers(&p), [format!("velo-{p}.main")]);

    sb.ok(&["project", "delete", &p]);
    assert!(sb.volumes(&p).is_empty());
    assert!(sb.servers(&p).is_empty());
}

#[test]
fn listing_status_and_password() {
    let sb = Sandbox::new();
    let p = sb.create_project("list");
    sb.ok(&["branch", "create", &format!("{p}/dev")]);

    let projects = sb.json(&["project", "list"]);
    assert_eq!(projects[0]["name"], p.as_str());
    assert_eq!(projects[0]["branches"], serde_json::json!(["dev", "main"]));
    assert!(sb.ok(&["proj", "ls"]).contains(&p));
    assert!(sb.ok(&["project", "get", &p]).contains(&sb.storage_where()));

    let branches = sb.json(&["branch", "list", &p]);
    assert_eq!(branches.as_array().unwrap().len(), 2);
    assert!(
        branches
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["container"] == "running")
    );

    let status = sb.json(&["status"]);
    let (storage, health) = sb.storage_health();
    assert_eq!(status["pools"][0]["storage"], storage.as_str());
    assert_eq!(status["pools"][0]["health"], health);
    assert_eq!(status["branches"].as_array().unwrap().len(), 2);
    let table = sb.ok(&["ls"]);
    assert!(
        table.contains(&format!("{p}/dev")) && table.contains("running"),
        "{table}"
    );

    // The password appears only in `branch password`.
    let creds = sb.json(&["branch", "pass", &format!("{p}/dev")]);
    let password = creds["password"].as_str().unwrap();
    assert!(password.len() >= 20 && password.chars().all(|c| c.is_ascii_alphanumeric()));
    assert!(creds["url"].as_str().unwrap().contains(password));
    for args in [
        vec!["status"],
        vec!["branch", "list"],
        vec!["project", "get", &p],
    ] {
        assert!(
            !sb.ok(&args).contains(password),
            "{args:?} shows the password"
        );
    }
}

/// Connecting in one step: `branch psql` (over the private socket, psql's exit status
/// passed on), `eval "$(velo branch env …)"` and `branch url --with-password`, each enough for
/// a plain libpq client with no other password source.
#[test]
fn psql_env_and_url_connect_in_one_step() {
    let sb = Sandbox::new();
    let p = sb.create_project("connect");
    let main = format!("{p}/main");
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();

    let out = sb.run(&[
        "branch",
        "psql",
        &main,
        "--",
        "-X",
        "-A",
        "-t",
        "-c",
        "SELECT 40 + 2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "42");
    let out = sb.run(&[
        "branch",
        "psql",
        &main,
        "--",
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "SELECT nope",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "psql's status: {}",
        text(&out.stderr)
    );

    // A plain client, with none of the user's own password sources.
    let nowhere = tempfile::tempdir().unwrap();
    let client = |script: &str| {
        Command::new("bash")
            .args(["-c", script])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", nowhere.path())
            .output()
            .unwrap()
    };
    let password = sb.json(&["branch", "password", &main])["password"]
        .as_str()
        .unwrap()
        .to_string();
    let env = sb.ok(&["branch", "env", &main]);
    for var in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "DATABASE_URL",
    ] {
        assert!(env.contains(&format!("export {var}=")), "{env}");
    }
    let out = client(&format!("{env}\npsql -X -A -t -c 'SELECT current_user'"));
    assert_eq!(text(&out.stdout), "postgres", "{}", text(&out.stderr));
    let out = client(&format!(
        "{env}\npsql \"$DATABASE_URL\" -X -A -t -c 'SELECT 7'"
    ));
    assert_eq!(text(&out.stdout), "7", "{}", text(&out.stderr));

    let url = sb.ok(&["branch", "url", &main]);
    assert!(!url.contains(&password), "{url}");
    let with = sb.ok(&["branch", "connection-string", &main, "--with-password"]);
    assert!(with.trim().contains(&password), "{with}");
    let out = client(&format!("psql '{}' -X -A -t -c 'SELECT 8'", with.trim()));
    assert_eq!(text(&out.stdout), "8", "{}", text(&out.stderr));
}
