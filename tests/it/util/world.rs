//! The world as the backend holds it, read directly (never through velo) in one neutral form
//! for every backend, and drift made by hand the way a user or a crash would make it.
//!
//! Volumes and snapshots are named `<branch>.<generation>` and `<branch>.<generation>@<id>`:
//! from ZFS (`<pool>/velo/user.root/<project>.<name>`) or from the data directory
//! (`<dir>/<project>/<name>` and `<dir>/<project>/.snapshots/<name>`). Servers are named
//! `velo-<project>.<branch>`: Docker containers by their label, or entries of the native
//! runtime's registry (`$VELO_HOME/servers/`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Sandbox;
use super::rig::Backend;

/// Runs a program as root and expects success; returns its stdout.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect("runs");
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits up to `limit` for `done`, polling.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a process runs (a zombie has exited: it does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// Pids of live processes whose working directory is `dir` or below it.
pub fn processes_in(dir: &Path) -> Vec<u32> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// A running `velo __background` process of the velo home `home`, if any: its `VELO_HOME`,
/// or `$HOME/.velo` without one.
pub fn background_of(home: &Path) -> Option<u32> {
    let home = home.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            if !cmdline.split(|b| *b == 0).any(|a| a == b"__background") || !alive(pid) {
                return None;
            }
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let var = |name: &[u8]| {
                environ
                    .split(|b| *b == 0)
                    .find_map(|v| v.strip_prefix(name)?.strip_prefix(b"="))
            };
            let ours = match var(b"VELO_HOME") {
                Some(velo_home) => velo_home == home,
                None => var(b"HOME").is_some_and(|h| [h, b"/.velo"].concat() == home),
            };
            ours.then_some(pid)
        })
}

/// Runs `zfs <args>` until it succeeds: zfs-fuse answers "busy" for a moment after a
/// container let go of a dataset, or after an unmount.
pub fn zfs_retrying(args: &[&str]) {
    for _ in 0..50 {
        if Command::new("zfs").args(args).status().unwrap().success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("zfs {args:?} kept failing");
}

/// `velo repair --json [extra…]`: its exit status and its findings as (where, kind, status).
pub fn repair(sb: &Sandbox, extra: &[&str]) -> (bool, BTreeSet<(String, String, String)>) {
    let mut args = vec!["repair", "--json"];
    args.extend_from_slice(extra);
    let out = sb.run(&args);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "velo {args:?} printed no JSON:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let findings = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap().to_string();
            (s("where"), s("kind"), s("status"))
        })
        .collect();
    assert_eq!(report["clean"].as_bool(), Some(out.status.success()));
    (out.status.success(), findings)
}

pub fn found(place: &str, kind: &str, status: &str) -> (String, String, String) {
    (place.into(), kind.into(), status.into())
}

impl Sandbox {
    /// The base dataset of the user the tests run velo as (root) on ZFS.
    pub fn base(&self) -> String {
        format!("{}/velo/user.root", self.rig.pool)
    }

    /// The ZFS dataset of a branch generation.
    pub fn dataset(&self, project: &str, branch: &str, generation: u64) -> String {
        format!("{}/{project}.{branch}.{generation}", self.base())
    }

    /// The data directory velo keeps a project in (btrfs, reflink and copy).
    fn project_dir(&self, project: &str) -> PathBuf {
        self.data_dir().join(project)
    }

    /// Every volume and snapshot the backend holds for a project, in neutral form, sorted.
    /// Leftovers show as they are named (a half-made `.dev.0.tmp-…` too).
    pub fn volumes(&self, project: &str) -> Vec<String> {
        let mut names = match self.backend() {
            Backend::ZfsDocker => self.zfs_names(project),
            _ => {
                let dir = self.project_dir(project);
                let mut names: Vec<String> = entries(&dir)
                    .into_iter()
                    .filter(|n| n != ".snapshots")
                    .collect();
                names.extend(entries(&dir.join(".snapshots")));
                names
            }
        };
        names.sort();
        names
    }

    fn zfs_names(&self, project: &str) -> Vec<String> {
        let out = Command::new("zfs")
            .args(["list", "-H", "-o", "name", "-t", "filesystem,snapshot"])
            .args(["-r", &self.base()])
            .output()
            .expect("zfs runs");
        let prefix = format!("{}/{project}.", self.base());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    /// The backend's own name of a volume or snapshot (`main.0`, `dev.1@<id>`): what velo
    /// reports (a dataset, a path).
    pub fn storage_name(&self, project: &str, neutral: &str) -> String {
        match self.backend() {
            Backend::ZfsDocker => format!("{}/{project}.{neutral}", self.base()),
            _ if neutral.contains('@') => self
                .project_dir(project)
                .join(".snapshots")
                .join(neutral)
                .display()
                .to_string(),
            _ => self
                .project_dir(project)
                .join(neutral)
                .display()
                .to_string(),
        }
    }

    /// Where the project's storage is, as `project get` shows it: the base dataset, the data
    /// directory.
    pub fn storage_where(&self) -> String {
        match self.backend() {
            Backend::ZfsDocker => self.base(),
            _ => self.data_dir().display().to_string(),
        }
    }

    /// The storage as `velo status --json` names it, and its health when all is well.
    pub fn storage_health(&self) -> (String, &'static str) {
        match self.backend() {
            Backend::ZfsDocker => (self.rig.pool.clone(), "ONLINE"),
            b => (format!("{} at {}", b.storage(), self.storage_where()), "ok"),
        }
    }

    /// Where a volume's files are (its `pgdata` is inside).
    pub fn volume_path(&self, project: &str, branch: &str, generation: u64) -> PathBuf {
        match self.backend() {
            Backend::ZfsDocker => {
                PathBuf::from(format!("/{}", self.dataset(project, branch, generation)))
            }
            _ => self
                .project_dir(project)
                .join(format!("{branch}.{generation}")),
        }
    }

    /// The servers the runtime holds for a project (any state), sorted: `velo-<p>.<b>`.
    pub fn servers(&self, project: &str) -> Vec<String> {
        let mut names = if self.backend().is_native() {
            let prefix = format!("velo-{project}.");
            entries(&self.home().join("servers"))
                .into_iter()
                .filter(|n| n.starts_with(&prefix) || (n.starts_with('.') && n.contains(&prefix)))
                .collect()
        } else {
            let filter = format!("label=dev.velo.project={project}");
            let out = sh(
                "docker",
                &["ps", "-a", "--format", "{{.Names}}", "--filter", &filter],
            );
            out.lines().map(str::to_string).collect::<Vec<_>>()
        };
        names.sort();
        names
    }

    /// The pid of a native server's postmaster, as its registry records it.
    fn postmaster(&self, server: &str) -> Option<u32> {
        let path = self
            .home()
            .join("servers")
            .join(server)
            .join("process.json");
        let text = std::fs::read_to_string(path).ok()?;
        let record: Value = serde_json::from_str(&text).ok()?;
        record["pid"]
            .as_u64()
            .map(|p| p as u32)
            .filter(|p| alive(*p))
    }

    /// Kills a branch's server at once (`docker kill`, SIGKILL to the postmaster) and waits
    /// until nothing of it runs: its port is free.
    pub fn kill_server(&self, project: &str, branch: &str) {
        let name = format!("velo-{project}.{branch}");
        if !self.backend().is_native() {
            sh("docker", &["kill", &name]);
            return;
        }
        let pid = self
            .postmaster(&name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        sh("kill", &["-KILL", &pid.to_string()]);
        let data = self.server_data_dir(&name);
        wait_until(
            &format!("{name}'s processes end"),
            Duration::from_secs(20),
            || !alive(pid) && processes_in(&data).is_empty(),
        );
    }

    /// Stops a branch's server the way its runtime would (`docker stop`, a fast shutdown).
    pub fn stop_server(&self, project: &str, branch: &str) {
        let name = format!("velo-{project}.{branch}");
        if !self.backend().is_native() {
            sh("docker", &["stop", &name]);
            return;
        }
        let pid = self
            .postmaster(&name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        sh("kill", &["-INT", &pid.to_string()]);
        wait_until(&format!("{name} stops"), Duration::from_secs(30), || {
            !alive(pid)
        });
    }

    /// Removes a branch's server behind velo's back (`docker rm -f`; the native runtime's
    /// record, its processes killed first).
    pub fn remove_server(&self, project: &str, branch: &str) {
        let name = format!("velo-{project}.{branch}");
        if !self.backend().is_native() {
            sh("docker", &["rm", "-f", &name]);
            return;
        }
        if self.postmaster(&name).is_some() {
            self.kill_server(project, branch);
        }
        std::fs::remove_dir_all(self.home().join("servers").join(&name)).expect("remove record");
    }

    /// The data directory a native server serves, from its record.
    fn server_data_dir(&self, server: &str) -> PathBuf {
        let path = self.home().join("servers").join(server).join("spec.json");
        let spec: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        PathBuf::from(spec["paths"]["data_dir"].as_str().unwrap())
    }

    /// Destroys a volume and its snapshots behind velo's back (its server must be gone).
    pub fn destroy_volume(&self, project: &str, branch: &str, generation: u64) {
        match self.backend() {
            Backend::ZfsDocker => {
                let dataset = self.dataset(project, branch, generation);
                zfs_retrying(&["unmount", &dataset]);
                zfs_retrying(&["destroy", "-r", &dataset]);
            }
            backend => {
                let leaf = format!("{branch}.{generation}");
                let dir = self.project_dir(project);
                let mut doomed = vec![dir.join(&leaf)];
                doomed.extend(
                    entries(&dir.join(".snapshots"))
                        .into_iter()
                        .filter(|n| n.starts_with(&format!("{leaf}@")))
                        .map(|n| dir.join(".snapshots").join(n)),
                );
                for path in doomed {
                    if backend == Backend::BtrfsNative {
                        let path = path.display().to_string();
                        sh("btrfs", &["property", "set", "-ts", &path, "ro", "false"]);
                        sh("btrfs", &["subvolume", "delete", &path]);
                    } else {
                        std::fs::remove_dir_all(&path).expect("remove a volume");
                    }
                }
            }
        }
    }

    /// Asserts that the state, the storage and the runtime agree about a project: no
    /// operation open, no branch busy, exactly the volumes, snapshots and servers the state
    /// records, and nothing left in the data directory's trash.
    pub fn assert_consistent(&self, project: &str) {
        self.settle();
        let state = self.state();
        let journal = state["journal"].as_array().cloned().unwrap_or_default();
        assert!(journal.is_empty(), "operations left open: {journal:?}");
        let p = &state["projects"][project];
        let mut expected = Vec::new();
        let mut servers = Vec::new();
        let name = |o: &Value| {
            format!(
                "{}.{}",
                o["branch"].as_str().unwrap(),
                o["generation"].as_u64().unwrap()
            )
        };
        for (branch, b) in p["branches"].as_object().expect("branches") {
            assert!(b["busy"].is_null(), "{branch} is still busy: {}", b["busy"]);
            let generations = std::iter::once(b)
                .chain(b["retired"].as_array().into_iter().flatten())
                .collect::<Vec<_>>();
            for g in generations {
                expected.push(format!("{branch}.{}", g["generation"].as_u64().unwrap()));
                let o = &g["origin"];
                if o.is_object() {
                    expected.push(format!("{}@{}", name(o), o["snapshot"].as_str().unwrap()));
                }
            }
            servers.push(format!("velo-{project}.{branch}"));
        }
        for s in p["snapshots"].as_array().cloned().unwrap_or_default() {
            expected.push(format!("{}@{}", name(&s), s["id"].as_str().unwrap()));
        }
        expected.sort();
        expected.dedup();
        assert_eq!(
            self.volumes(project),
            expected,
            "the storage ({}) and the state disagree",
            self.backend().storage()
        );
        servers.sort();
        assert_eq!(
            self.servers(project),
            servers,
            "the runtime and the state disagree"
        );
        if self.backend().is_native() {
            let trash = entries(&self.data_dir().join(".trash"));
            assert!(trash.is_empty(), "left in the trash: {trash:?}");
        }
    }
}

/// The names in a directory (none if it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(list) => list
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}
