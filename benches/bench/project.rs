//! Project create on ZFS + Docker: the first of an image (which initialises a prepared
//! cluster) on its own row, and the usual one (a clone of that cluster).
//!
//! A prepared cluster is made once per velo home, storage and image (docs/design.md), so the
//! first-of-image samples each use a new tag of the image (`docker tag`: a new image name is a
//! new runtime record, hence a new cluster) in a scratch velo home beside the bench's. No velo
//! command removes a prepared cluster whose image tag is gone, so the scratch home is thrown
//! away afterwards: its projects are deleted by velo, its prepared datasets (marked with its
//! home) destroyed with `zfs`, the tags removed, and the directory deleted. A run that was
//! stopped leaves them; the next run removes them before it starts.

use std::path::PathBuf;

use anyhow::Result;

use crate::Bench;
use crate::host::{self, sh};
use crate::opts::Backend;
use crate::steps::Breakdown;
use crate::velo::Velo;

/// The repository of the scratch tags.
const ALIAS_REPO: &str = "velo-bench/first-of-image";
pub const FIRST: &str = "project create (first of its image: initdb)";
pub const PROJECT_CREATE: &str = "project create";
pub const PROJECT_NOTE: &str =
    "a clone of the prepared cluster; includes `velo branch password` to learn the password";
const NOTE: &str = "includes `velo branch password` to learn the password";

impl Bench {
    pub fn project_create(&mut self) -> Result<()> {
        self.first_of_image()?;
        self.ensure_prepared("bench-pc")?;
        let (mut samples, mut steps) = (Vec::new(), Breakdown::default());
        for i in 0..self.o.runs {
            let name = format!("bench-pc{i}");
            self.velo.drop_project(&name)?;
            let t = self.timed_project_create(&self.velo, &name, &self.o.image)?;
            samples.push(t.total);
            steps.add(&t);
            self.velo.run(&["project", "delete", &name, "--force"])?;
        }
        let z = Backend::ZfsDocker;
        self.add(z, PROJECT_CREATE, "empty", "s", samples, PROJECT_NOTE);
        self.add_breakdown(z, PROJECT_CREATE, "empty", steps);
        Ok(())
    }

    /// The image's prepared cluster in the bench's home, made now (by a project `name`, made
    /// and deleted) if an earlier run did not, so that no timed run initialises it.
    pub fn ensure_prepared(&self, name: &str) -> Result<()> {
        self.velo.drop_project(name)?;
        self.create_project(&self.velo, name, &self.o.image)?;
        self.velo.run(&["project", "delete", name, "--force"])?;
        Ok(())
    }

    fn first_of_image(&mut self) -> Result<()> {
        let scratch = Velo::root(&self.o.velo, &self.scratch_home());
        self.drop_scratch(&scratch)?;
        std::fs::create_dir_all(scratch.home())?;
        // The home's own first use (its state, its pg_hba.conf) is not the image's.
        scratch.run(&["status"])?;
        let (mut samples, mut steps) = (Vec::new(), Breakdown::default());
        let result = (|| -> Result<()> {
            for i in 0..self.o.runs {
                let alias = format!("{ALIAS_REPO}:{}-{i}", std::process::id());
                host::run("docker", &["tag", &self.o.image, &alias])?;
                let t = self.timed_project_create(&scratch, "bench-first", &alias)?;
                samples.push(t.total);
                steps.add(&t);
                scratch.run(&["project", "delete", "bench-first", "--force"])?;
                host::run("docker", &["rmi", &alias])?;
            }
            Ok(())
        })();
        let dropped = self.drop_scratch(&scratch);
        result?;
        dropped?;
        let note = format!(
            "a new tag of the image in a scratch velo home, so velo initialises a prepared cluster; {NOTE}"
        );
        self.add(Backend::ZfsDocker, FIRST, "empty", "s", samples, &note);
        self.add_breakdown(Backend::ZfsDocker, FIRST, "empty", steps);
        Ok(())
    }

    fn scratch_home(&self) -> PathBuf {
        let mut name = self.o.home.file_name().unwrap_or_default().to_owned();
        name.push("-first-of-image");
        self.o.home.with_file_name(name)
    }

    pub fn create_project(&self, velo: &Velo, name: &str, image: &str) -> Result<String> {
        let pool = &self.o.pool;
        velo.run(&["project", "create", name, "--pool", pool, "--image", image])
    }

    /// `velo project create` until main answers `SELECT 1`, step by step.
    fn timed_project_create(
        &self,
        velo: &Velo,
        name: &str,
        image: &str,
    ) -> Result<crate::steps::Timeline> {
        let pool = &self.o.pool;
        let args = ["project", "create", name, "--pool", pool, "--image", image];
        self.to_ready(velo, &args, |_| velo.conn(&format!("{name}/main")))
    }

    /// Removes what the scratch home holds: its projects (by velo), its prepared clusters
    /// (by zfs: their datasets carry the home's mark), the scratch tags, and the home.
    fn drop_scratch(&self, scratch: &Velo) -> Result<()> {
        let home = scratch.home();
        if home.join("state.json").exists() {
            let list = scratch.json(&["project", "list", "--json"])?;
            for p in list.as_array().into_iter().flatten() {
                if let Some(name) = p["name"].as_str() {
                    scratch.run(&["project", "delete", name, "--force"])?;
                }
            }
            scratch.settle()?;
        }
        for dataset in prepared_datasets(&self.o.pool, &home.display().to_string())? {
            host::zfs_destroy(&dataset)?;
        }
        let tags = sh(&format!(
            "docker images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' {ALIAS_REPO}"
        ));
        for tag in tags.lines().filter(|t| !t.is_empty()) {
            host::run("docker", &["rmi", tag])?;
        }
        if home.exists() {
            std::fs::remove_dir_all(home)?;
        }
        Ok(())
    }
}

/// The prepared clusters' datasets in `pool` that velo made for the home `home`.
fn prepared_datasets(pool: &str, home: &str) -> Result<Vec<String>> {
    let marks = host::run(
        "zfs",
        &["get", "-H", "-r", "-o", "name,value", "dev.velo:home", pool],
    )?;
    Ok(marks
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(name, mark)| {
            *mark == home
                && !name.contains('@')
                && name
                    .rsplit('/')
                    .next()
                    .is_some_and(|leaf| leaf.starts_with("prepared."))
        })
        .map(|(name, _)| name.to_string())
        .collect())
}
