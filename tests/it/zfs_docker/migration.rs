//! A velo home that velo 0.1 left: its state file (schema 1, `tests/fixtures/state-v1-*.json`,
//! written by velo 0.1 with commands killed part-way), its nested datasets
//! `<pool>/velo/<project>/<branch>.<generation>` and its containers, made here by hand with
//! `zfs` and `docker` as 0.1 made them. velo 0.2 upgrades the state on first use, finishes
//! the killed commands, and then serves the old project like a new one.

use std::path::Path;

use serde_json::Value;

use crate::util::world;
use crate::util::{Backend, Sandbox, sh};

/// The image and uid velo 0.1's projects ran: Debian's PostgreSQL 15.
const IMAGE: &str = "velo-test/postgres:15";
const PG_UID: &str = "999";

/// A velo 0.1 world: `old` (main, dev with a snapshot, a killed create of `killed2`, a
/// killed reset of dev) and `older` (a killed project create).
struct OldWorld<'a> {
    sb: &'a Sandbox,
    pool: String,
    old: String,
    older: String,
    password: String,
    ports: Value,
}

impl OldWorld<'_> {
    fn dataset(&self, rest: &str) -> String {
        format!("{}/velo/{rest}", self.pool)
    }

    fn zfs_create(&self, dataset: &str) {
        let mark = format!("dev.velo:home={}", self.sb.home().display());
        sh("zfs", &["create", "-o", &mark, dataset]);
    }

    fn snapshot_and_clone(&self, from: &str, id: &str, into: &str) {
        let snapshot = format!("{}@{id}", self.dataset(from));
        let mark = format!("dev.velo:home={}", self.sb.home().display());
        sh("zfs", &["snapshot", &snapshot]);
        sh(
            "zfs",
            &["clone", "-o", &mark, &snapshot, &self.dataset(into)],
        );
    }

    /// A cluster made by the image's initdb as its postgres user, with the project's password.
    fn initdb(&self, volume: &str) {
        let root = format!("/{}", self.dataset(volume));
        let pgdata = format!("{root}/pgdata");
        std::fs::create_dir(&pgdata).unwrap();
        sh("chown", &[&format!("{PG_UID}:{PG_UID}"), &pgdata]);
        sh("chmod", &["700", &pgdata]);
        let pwfile = format!("{root}/pw");
        std::fs::write(&pwfile, &self.password).unwrap();
        sh(
            "docker",
            &[
                "run",
                "--rm",
                "--user",
                &format!("{PG_UID}:{PG_UID}"),
                "--mount",
                &format!("type=bind,src={root},dst=/v"),
                "--entrypoint",
                "/usr/lib/postgresql/15/bin/initdb",
                IMAGE,
                "-D",
                "/v/pgdata",
                "-U",
                "postgres",
                "--pwfile=/v/pw",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ],
        );
        std::fs::remove_file(&pwfile).unwrap();
    }

    /// A branch's WAL archive as 0.1 made it: the image's postgres user writes it.
    fn archive(&self, project: &str, branch: &str) {
        let dir = self
            .sb
            .home()
            .join("wal")
            .join(project)
            .join(branch)
            .join("0");
        std::fs::create_dir_all(&dir).unwrap();
        for d in [
            dir.as_path(),
            dir.parent().unwrap(),
            dir.parent().unwrap().parent().unwrap(),
        ] {
            sh(
                "chown",
                &[&format!("{PG_UID}:{PG_UID}"), d.to_str().unwrap()],
            );
            sh("chmod", &["700", d.to_str().unwrap()]);
        }
    }

    /// A branch's container as 0.1 made it (stopped, as after a host reboot): the image's
    /// entrypoint, the password in its environment, its socket inside the container.
    fn container(&self, project: &str, branch: &str, port: u64) {
        let home = self.sb.home().display().to_string();
        let label = |k: &str, v: &str| format!("--label=dev.velo.{k}={v}");
        let bind = |src: String, dst: &str, ro: bool| {
            format!(
                "--mount=type=bind,src={src},dst={dst}{}",
                if ro { ",readonly" } else { "" }
            )
        };
        let archive = "/var/lib/postgresql/wal-archive";
        let archive_command = format!(
            "if [ -f {archive}/%f ]; then cmp -s %p {archive}/%f; else cp %p {archive}/%f.tmp && mv {archive}/%f.tmp {archive}/%f; fi"
        );
        let args = [
            "create".to_string(),
            format!("--name=velo-{project}.{branch}"),
            label("managed", "true"),
            label("project", project),
            label("branch", branch),
            label("home", &home),
            "--network=host".into(),
            "--stop-signal=SIGINT".into(),
            "--env=POSTGRES_USER=postgres".into(),
            format!("--env=POSTGRES_PASSWORD={}", self.password),
            "--env=POSTGRES_DB=postgres".into(),
            "--env=PGDATA=/var/lib/postgresql/data".into(),
            bind(
                format!("/{}/pgdata", self.dataset(&format!("{project}/{branch}.0"))),
                "/var/lib/postgresql/data",
                false,
            ),
            bind(format!("{home}/wal/{project}/{branch}/0"), archive, false),
            bind(
                format!("{home}/wal/{project}"),
                "/var/lib/postgresql/wal-archives",
                true,
            ),
            bind(format!("{home}/pg_hba.conf"), "/etc/velo/pg_hba.conf", true),
            IMAGE.into(),
            "postgres".into(),
        ];
        let settings = [
            "listen_addresses=127.0.0.1".to_string(),
            format!("port={port}"),
            "hba_file=/etc/velo/pg_hba.conf".into(),
            "wal_level=replica".into(),
            "archive_mode=on".into(),
            format!("archive_command={archive_command}"),
            "recovery_init_sync_method=syncfs".into(),
        ];
        let mut all: Vec<String> = args.to_vec();
        all.extend(settings.iter().flat_map(|s| ["-c".to_string(), s.clone()]));
        sh(
            "docker",
            &all.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }

    /// Everything the fixture's state describes or its killed commands left; with `containers`,
    /// main's and dev's containers too (else they are gone, as after `docker rm`).
    fn make(&self, containers: bool) {
        let old = &self.old;
        self.zfs_create(&self.dataset(old));
        self.zfs_create(&self.dataset(&format!("{old}/main.0")));
        self.initdb(&format!("{old}/main.0"));
        self.snapshot_and_clone(
            &format!("{old}/main.0"),
            "de1777cf270f",
            &format!("{old}/dev.0"),
        );
        sh(
            "zfs",
            &[
                "snapshot",
                &format!("{}@db3ffdf800e8", self.dataset(&format!("{old}/dev.0"))),
            ],
        );
        // The killed create of killed2 got as far as its clone.
        self.snapshot_and_clone(
            &format!("{old}/main.0"),
            "5e17ac853b44",
            &format!("{old}/killed2.0"),
        );
        // The killed project create of `older` got as far as its first dataset.
        self.zfs_create(&self.dataset(&self.older));
        self.zfs_create(&self.dataset(&format!("{}/main.0", self.older)));
        std::fs::write(
            self.sb.home().join("pg_hba.conf"),
            "# Written by velo; every branch server reads it (hba_file). Edits are overwritten.\n\
             local all all trust\nhost all all all md5\nhost replication all all md5\n",
        )
        .unwrap();
        for (project, branch) in [(old, "main"), (old, "dev"), (old, "killed2")] {
            self.archive(project, branch);
        }
        self.archive(&self.older, "main");
        for branch in ["main", "dev"].into_iter().filter(|_| containers) {
            let port = self.ports[branch].as_u64().unwrap();
            self.container(old, branch, port);
        }
    }

    /// The fixture rewritten for this world: its names, home, ports and password.
    fn state(&self, fixture: &str) -> String {
        let text = fixture
            .replace("\"fixture2\"", &format!("\"{}\"", self.older))
            .replace("/fixture2", &format!("/{}", self.older))
            .replace("fixture", &self.old)
            .replace("/tmp/v1home", &self.sb.home().display().to_string())
            .replace("velotest", &self.pool);
        let mut state: Value = serde_json::from_str(&text).unwrap();
        for (name, p) in state["projects"].as_object_mut().unwrap() {
            p["password"] = Value::String(self.password.clone());
            for (branch, b) in p["branches"].as_object_mut().unwrap() {
                let key = if *name == self.old {
                    branch.as_str()
                } else {
                    "older"
                };
                b["port"] = self.ports[key].clone();
            }
        }
        state.to_string()
    }
}

/// Free ports of the sandbox's own for the world's branches.
fn free_ports(sb: &Sandbox, names: &[&str]) -> Value {
    let mut free = sb
        .ports()
        .filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok());
    let ports = names
        .iter()
        .map(|name| (name.to_string(), free.next().expect("a free port").into()));
    Value::Object(ports.collect())
}

/// The fixture's world, made on the rig and written to the sandbox's home.
fn old_world<'a>(sb: &'a Sandbox, containers: bool) -> OldWorld<'a> {
    let world = OldWorld {
        sb,
        pool: sb.rig.pool.clone(),
        old: sb.project("old"),
        older: sb.project("older"),
        password: format!("{:024x}", rand::random::<u128>()),
        ports: free_ports(sb, &["main", "dev", "killed2", "older"]),
    };
    let fixture = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/state-v1-branch-create.json"
    ))
    .unwrap();
    world.make(containers);
    let state = sb.home().join("state.json");
    std::fs::write(&state, world.state(&fixture)).unwrap();
    sh("chmod", &["600", state.to_str().unwrap()]);
    world
}

/// The first command upgrades the state and finishes the commands 0.1 left killed.
fn first_use(sb: &Sandbox, world: &OldWorld) {
    let (old, older) = (&world.old, &world.older);
    let out = sb.run(&["branch", "list", old]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(said.contains("rolling it back"), "{said}");
    assert_eq!(sb.state()["version"], 2);
    let p = &sb.state()["projects"][old];
    assert_eq!(p["storage"]["layout"], "nested", "{p}");
    assert_eq!(p["runtime"]["image"], IMAGE);
    assert!(
        sb.state()["projects"].get(older).is_none(),
        "its create was rolled back"
    );
    let names: Vec<String> = sb
        .json(&["project", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, std::slice::from_ref(old));
    let branches = sb.json(&["branch", "list", old]);
    let listed: Vec<&str> = branches
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["branch"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["dev", "main"]);
    assert_eq!(
        old_tree(world),
        [
            format!("{old}/dev.0"),
            format!("{old}/dev.0@db3ffdf800e8"),
            format!("{old}/main.0"),
            format!("{old}/main.0@de1777cf270f"),
        ]
    );
}

/// The old project served like a new one: main starts, a branch is made and reset, a
/// snapshot taken, nothing drifts, and a delete leaves nothing.
fn served(sb: &Sandbox, world: &OldWorld) {
    let old = &world.old;
    let main = format!("{old}/main");
    sb.ok(&["branch", "start", &main]);
    sb.sql(
        &main,
        "CREATE TABLE users (id serial, name text); INSERT INTO users (name) VALUES ('Alice')",
    );
    let feature = format!("{old}/feature");
    sb.ok(&["branch", "create", &feature]);
    sb.sql(&feature, "INSERT INTO users (name) VALUES ('Bob')");
    sb.ok(&["branch", "reset", &feature]);
    assert_eq!(sb.users(&feature), "Alice");
    sb.ok(&["snapshot", "create", &main, "--label", "upgraded"]);
    let snapshots = sb.json(&["snapshot", "list", old]);
    assert_eq!(snapshots.as_array().unwrap().len(), 2, "{snapshots}");
    let (ok, findings) = world::repair(sb, &[]);
    assert!(ok, "{findings:?}");

    sb.ok(&["project", "delete", old, "--force"]);
    assert!(old_tree(world).is_empty(), "{:?}", old_tree(world));
    let home = format!("label=dev.velo.home={}", sb.home().display());
    let containers = sh(
        "docker",
        &["ps", "-a", "--format", "{{.Names}}", "--filter", &home],
    );
    assert_eq!(containers, "", "containers left");
    assert!(
        !sb.home().join("wal").join(old).exists(),
        "WAL archives left"
    );
}

/// 0.1's datasets and state, its containers gone (removed by hand, or a Docker reset): velo
/// re-creates them as 0.2 makes them.
#[test]
fn a_home_velo_0_1_left_is_upgraded_and_served() {
    let sb = Sandbox::only(Backend::ZfsDocker);
    let world = old_world(&sb, false);
    let _cleanup = Cleanup(&world);
    first_use(&sb, &world);
    served(&sb, &world);
}

/// 0.1's containers still there: a 0.1 container has no private socket directory, the only way
/// 0.2 talks to a server, so `branch start` replaces it, and `repair --fix` any other.
#[test]
fn a_home_velo_0_1_left_with_its_containers_is_upgraded_and_served() {
    let sb = Sandbox::only(Backend::ZfsDocker);
    let world = old_world(&sb, true);
    let _cleanup = Cleanup(&world);
    first_use(&sb, &world);
    served(&sb, &world);
}

/// Every dataset and snapshot under the world's projects, relative to `<pool>/velo`.
fn old_tree(world: &OldWorld) -> Vec<String> {
    let base = world.dataset("");
    let out = sh(
        "zfs",
        &[
            "list",
            "-H",
            "-o",
            "name",
            "-t",
            "filesystem,snapshot",
            "-r",
            &format!("{}/velo", world.pool),
        ],
    );
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix(&base))
        .filter(|l| {
            l.starts_with(&format!("{}/", world.old))
                || l.starts_with(&format!("{}/", world.older))
                || *l == world.old
                || *l == world.older
        })
        .filter(|l| l.contains('/'))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// Removes what is left of the world when the test ends, passed or failed.
struct Cleanup<'a, 'b>(&'a OldWorld<'b>);

impl Drop for Cleanup<'_, '_> {
    fn drop(&mut self) {
        let w = self.0;
        let home = w.sb.home().display().to_string();
        let _ = std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "docker ps -aq --filter label=dev.velo.home={home} | xargs -r docker rm -f"
                ),
            ])
            .output();
        // Never panics (it runs while a failed test unwinds); zfs-fuse may be busy a moment.
        for project in [&w.old, &w.older] {
            let dataset = w.dataset(project);
            for _ in 0..20 {
                let gone = std::process::Command::new("zfs")
                    .args(["destroy", "-r", &dataset])
                    .output()
                    .is_ok_and(|o| {
                        o.status.success() || !Path::new(&format!("/{dataset}")).exists()
                    });
                if gone {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
        }
    }
}
