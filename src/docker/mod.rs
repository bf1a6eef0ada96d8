//! velo's PostgreSQL runtime, on Docker through bollard.
//!
//! The interface is velo's own ([`ContainerSpec`], [`ContainerStatus`], [`PostgresUser`]); no
//! bollard type leaves this module, so a native runtime (no Docker) can take its place. It knows
//! nothing of ZFS or of velo's state: callers hand it a host directory to mount and a port.

use std::collections::HashMap;
use std::io::Read;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HostConfig, Mount, MountType,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures_util::TryStreamExt;

/// Labels on every container velo makes.
pub const LABEL_MANAGED: &str = "dev.velo.managed";
pub const LABEL_PROJECT: &str = "dev.velo.project";
pub const LABEL_BRANCH: &str = "dev.velo.branch";
/// The velo home (state directory) that owns the container, so two velo homes on one host
/// never mistake each other's containers for orphans.
pub const LABEL_HOME: &str = "dev.velo.home";

/// Where the data directory is mounted inside the container (the official image's PGDATA).
pub const PGDATA: &str = "/var/lib/postgresql/data";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach the Docker daemon: start it (`systemctl start docker`, or `dockerd &`), and check that you may use it (`sudo velo setup` adds you to the docker group)"
    )]
    Unreachable { source: BollardError },
    #[error("image `{image}` is not on this host: `docker pull {image}`, or pass --image")]
    ImageMissing { image: String },
    #[error("container `{name}` does not exist")]
    NoSuchContainer { name: String },
    #[error("docker: {action}")]
    Api {
        action: String,
        source: BollardError,
    },
    #[error("a helper container from `{image}` failed (exit code {code}): {logs}")]
    HelperFailed {
        image: String,
        code: i64,
        logs: String,
    },
    #[error("image `{image}` has no `postgres` user in /etc/passwd")]
    NoPostgresUser { image: String },
}

/// Everything needed to create a branch's container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub labels: Vec<(String, String)>,
    pub env: Vec<(String, String)>,
    /// Host directories to mount. Bind mounts fail if the source does not exist, so an
    /// unmounted dataset can never be initialised as an empty database.
    pub mounts: Vec<BindMount>,
    /// Arguments after `postgres` (`-c name=value` pairs). The container shares the host's
    /// network, so these say where PostgreSQL listens (see `ops::container_spec`).
    pub postgres_args: Vec<String>,
}

/// A host directory mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// What Docker says about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerStatus {
    Missing,
    Running,
    Stopped { exit_code: Option<i64> },
    Other(String),
}

/// A container velo made, as listed by its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedContainer {
    pub name: String,
    pub project: String,
    pub branch: String,
    pub running: bool,
    /// The host directory mounted as PGDATA: the data the container serves.
    pub data_source: Option<String>,
}

/// The uid and gid an image runs PostgreSQL as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresUser {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug)]
pub struct Runtime {
    /// The client, connected and version-negotiated on first use, so commands that never touch
    /// Docker work without it, and older daemons (API 1.41 on Debian 12's docker.io) are spoken
    /// to in their own version.
    docker: tokio::sync::OnceCell<Docker>,
}

fn is_status(e: &BollardError, code: u16) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

fn api(action: impl Into<String>) -> impl FnOnce(BollardError) -> DockerError {
    let action = action.into();
    move |source| match source {
        BollardError::DockerResponseServerError { .. } => DockerError::Api { action, source },
        other => DockerError::Unreachable { source: other },
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Self::new()
    }
}

impl Runtime {
    /// A runtime that connects on first use; honours `DOCKER_HOST`.
    pub fn new() -> Self {
        Self {
            docker: tokio::sync::OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<&Docker, DockerError> {
        self.docker
            .get_or_try_init(|| async {
                Docker::connect_with_local_defaults()
                    .map_err(|source| DockerError::Unreachable { source })?
                    .negotiate_version()
                    .await
                    .map_err(|source| DockerError::Unreachable { source })
            })
            .await
    }

    /// The daemon's version, which also proves it answers.
    pub async fn version(&self) -> Result<String, DockerError> {
        let v = self
            .client()
            .await?
            .version()
            .await
            .map_err(|source| DockerError::Unreachable { source })?;
        Ok(v.version.unwrap_or_default())
    }

    /// Fails with [`DockerError::ImageMissing`] unless the image is on this host.
    pub async fn require_image(&self, image: &str) -> Result<(), DockerError> {
        match self.client().await?.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Err(DockerError::ImageMissing {
                image: image.to_string(),
            }),
            Err(e) => Err(api(format!("inspecting image {image}"))(e)),
        }
    }

    /// Finds the uid/gid of the image's `postgres` user by reading its /etc/passwd from a
    /// created (never started) container. The official alpine images use 70, the Debian ones 999.
    pub async fn postgres_user(&self, image: &str) -> Result<PostgresUser, DockerError> {
        self.require_image(image).await?;
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            labels: Some(HashMap::from([(LABEL_MANAGED.into(), "probe".into())])),
            ..Default::default()
        };
        let created = self
            .client()
            .await?
            .create_container(None, body)
            .await
            .map_err(api(format!("creating a probe container from {image}")))?;
        let opts = DownloadFromContainerOptionsBuilder::new()
            .path("/etc/passwd")
            .build();
        let tar: Result<Vec<u8>, _> = self
            .client()
            .await?
            .download_from_container(&created.id, Some(opts))
            .map_ok(|b| b.to_vec())
            .try_concat()
            .await;
        let rm = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = self
            .client()
            .await?
            .remove_container(&created.id, Some(rm))
            .await;
        let tar = tar.map_err(api(format!("reading /etc/passwd of {image}")))?;
        let passwd = first_file_in_tar(&tar).unwrap_or_default();
        parse_passwd_user(&passwd, "postgres").ok_or_else(|| DockerError::NoPostgresUser {
            image: image.to_string(),
        })
    }

    /// Runs `script` with `/bin/sh` as root in a throw-away container of `image` with `mounts`,
    /// and waits for it. velo uses it to prepare host directories the image's postgres user must
    /// own when velo itself is not root (Docker access is root-equivalent anyway).
    pub async fn run_as_root(
        &self,
        image: &str,
        mounts: &[BindMount],
        script: &str,
    ) -> Result<(), DockerError> {
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            user: Some("0".into()),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec![script.to_string()]),
            labels: Some(HashMap::from([(LABEL_MANAGED.into(), "helper".into())])),
            host_config: Some(HostConfig {
                mounts: Some(mounts.iter().map(bind_mount).collect()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let client = self.client().await?;
        let created = client
            .create_container(None, body)
            .await
            .map_err(api(format!("creating a helper container from {image}")))?;
        let outcome: Result<i64, DockerError> = async {
            client
                .start_container(&created.id, None)
                .await
                .map_err(api("starting a helper container"))?;
            let opts = WaitContainerOptionsBuilder::new()
                .condition("not-running")
                .build();
            match client
                .wait_container(&created.id, Some(opts))
                .try_collect::<Vec<_>>()
                .await
            {
                Ok(r) => Ok(r.last().map(|w| w.status_code).unwrap_or_default()),
                Err(BollardError::DockerContainerWaitError { code, .. }) => Ok(code),
                Err(e) => Err(api("waiting for a helper container")(e)),
            }
        }
        .await;
        let logs = match &outcome {
            Ok(0) => String::new(),
            _ => self.logs_tail(&created.id, 10).await,
        };
        let rm = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = client.remove_container(&created.id, Some(rm)).await;
        match outcome? {
            0 => Ok(()),
            code => Err(DockerError::HelperFailed {
                image: image.to_string(),
                code,
                logs: logs.trim().to_string(),
            }),
        }
    }

    /// True when the image is on this host.
    pub async fn has_image(&self, image: &str) -> Result<bool, DockerError> {
        match self.require_image(image).await {
            Ok(()) => Ok(true),
            Err(DockerError::ImageMissing { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn create(&self, spec: &ContainerSpec) -> Result<(), DockerError> {
        let host_config = HostConfig {
            mounts: Some(spec.mounts.iter().map(bind_mount).collect()),
            network_mode: Some("host".to_string()),
            ..Default::default()
        };
        let mut cmd = vec!["postgres".to_string()];
        cmd.extend(spec.postgres_args.iter().cloned());
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(cmd),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(spec.labels.iter().cloned().collect()),
            stop_signal: Some("SIGINT".to_string()),
            host_config: Some(host_config),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        match self
            .client()
            .await?
            .create_container(Some(opts), body)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Err(DockerError::ImageMissing {
                image: spec.image.clone(),
            }),
            Err(e) => Err(api(format!("creating container {}", spec.name))(e)),
        }
    }

    pub async fn start(&self, name: &str) -> Result<(), DockerError> {
        match self.client().await?.start_container(name, None).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) => Ok(()),
            Err(e) if is_status(&e, 404) => Err(DockerError::NoSuchContainer {
                name: name.to_string(),
            }),
            Err(e) => Err(api(format!("starting container {name}"))(e)),
        }
    }

    /// Stops with SIGINT (PostgreSQL's fast shutdown), killing after `timeout_secs`.
    /// A missing or already stopped container is success.
    pub async fn stop(&self, name: &str, timeout_secs: i32) -> Result<(), DockerError> {
        let opts = StopContainerOptionsBuilder::new()
            .signal("SIGINT")
            .t(timeout_secs)
            .build();
        match self.client().await?.stop_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => Ok(()),
            Err(e) => Err(api(format!("stopping container {name}"))(e)),
        }
    }

    /// Renames a container; `Ok(false)` if there is none called `from`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<bool, DockerError> {
        let opts = RenameContainerOptionsBuilder::new().name(to).build();
        match self.client().await?.rename_container(from, opts).await {
            Ok(()) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(api(format!("renaming container {from} to {to}"))(e)),
        }
    }

    /// SIGKILLs a container's processes; Docker answers once they are gone. Missing or not
    /// running is success.
    pub async fn kill(&self, name: &str) -> Result<(), DockerError> {
        let opts = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        match self.client().await?.kill_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(api(format!("killing container {name}"))(e)),
        }
    }

    /// Removes a container, stopping it first if needed. Missing is success, and so is a
    /// removal already in progress (a killed velo's, say) once it has finished.
    pub async fn remove(&self, name: &str) -> Result<(), DockerError> {
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        match self
            .client()
            .await?
            .remove_container(name, Some(opts))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) if is_status(&e, 409) => {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while self.status(name).await? != ContainerStatus::Missing {
                    if std::time::Instant::now() > deadline {
                        return Err(api(format!("removing container {name}"))(e));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Ok(())
            }
            Err(e) => Err(api(format!("removing container {name}"))(e)),
        }
    }

    pub async fn status(&self, name: &str) -> Result<ContainerStatus, DockerError> {
        let inspect = match self.client().await?.inspect_container(name, None).await {
            Ok(i) => i,
            Err(e) if is_status(&e, 404) => return Ok(ContainerStatus::Missing),
            Err(e) => return Err(api(format!("inspecting container {name}"))(e)),
        };
        let state = inspect.state.unwrap_or_default();
        Ok(match state.status {
            Some(ContainerStateStatusEnum::RUNNING) => ContainerStatus::Running,
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::CREATED) => {
                ContainerStatus::Stopped {
                    exit_code: state.exit_code,
                }
            }
            other => ContainerStatus::Other(format!("{other:?}").to_lowercase()),
        })
    }

    /// The last lines the container printed, for error messages.
    pub async fn logs_tail(&self, name: &str, lines: usize) -> String {
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let Ok(client) = self.client().await else {
            return String::new();
        };
        let chunks: Vec<_> = client
            .logs(name, Some(opts))
            .try_collect()
            .await
            .unwrap_or_default();
        chunks.iter().map(|c| c.to_string()).collect::<String>()
    }

    /// Whether the container's log, since its last start, has a line containing `needle`.
    /// Lines from an earlier run of the same container do not count.
    pub async fn logged_since_start(&self, name: &str, needle: &str) -> Result<bool, DockerError> {
        let inspect = match self.client().await?.inspect_container(name, None).await {
            Ok(i) => i,
            Err(e) if is_status(&e, 404) => return Ok(false),
            Err(e) => return Err(api(format!("inspecting container {name}"))(e)),
        };
        let Some(started) = inspect
            .state
            .and_then(|s| s.started_at)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        else {
            return Ok(false);
        };
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .since(i32::try_from(started.timestamp()).unwrap_or(0))
            .build();
        let chunks: Vec<_> = self
            .client()
            .await?
            .logs(name, Some(opts))
            .try_collect()
            .await
            .map_err(api(format!("reading the log of container {name}")))?;
        let text: String = chunks.iter().map(|c| c.to_string()).collect();
        Ok(text.lines().any(|line| {
            let (stamp, rest) = line.split_once(' ').unwrap_or_default();
            rest.contains(needle)
                && chrono::DateTime::parse_from_rfc3339(stamp).is_ok_and(|t| t >= started)
        }))
    }

    /// Every container carrying velo's labels for the given velo home.
    pub async fn list_managed(&self, home: &str) -> Result<Vec<ManagedContainer>, DockerError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_HOME}={home}")])]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .client()
            .await?
            .list_containers(Some(opts))
            .await
            .map_err(api("listing containers"))?;
        Ok(list
            .into_iter()
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
                ManagedContainer {
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default(),
                    project: label(LABEL_PROJECT),
                    branch: label(LABEL_BRANCH),
                    running: c.state.map(|s| s.to_string()) == Some("running".into()),
                    data_source: c.mounts.and_then(|mounts| {
                        mounts
                            .into_iter()
                            .find(|m| m.destination.as_deref() == Some(PGDATA))
                            .and_then(|m| m.source)
                    }),
                }
            })
            .collect())
    }
}

fn bind_mount(m: &BindMount) -> Mount {
    Mount {
        target: Some(m.target.clone()),
        source: Some(m.source.clone()),
        typ: Some(MountType::BIND),
        read_only: Some(m.read_only),
        ..Default::default()
    }
}

fn first_file_in_tar(tar: &[u8]) -> Option<String> {
    let mut archive = tar::Archive::new(tar);
    let mut entry = archive.entries().ok()?.next()?.ok()?;
    let mut text = String::new();
    entry.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Finds a user's uid and gid in the text of an /etc/passwd.
pub fn parse_passwd_user(passwd: &str, user: &str) -> Option<PostgresUser> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [name, _, uid, gid, ..] if *name == user => Some(PostgresUser {
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
            }),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_postgres_in_alpine_and_debian_passwd() {
        let alpine =
            "root:x:0:0:root:/root:/bin/sh\npostgres:x:70:70::/var/lib/postgresql:/bin/sh\n";
        let debian =
            "root:x:0:0:root:/root:/bin/bash\npostgres:x:999:999::/var/lib/postgresql:/bin/bash\n";
        assert_eq!(
            parse_passwd_user(alpine, "postgres"),
            Some(PostgresUser { uid: 70, gid: 70 })
        );
        assert_eq!(
            parse_passwd_user(debian, "postgres"),
            Some(PostgresUser { uid: 999, gid: 999 })
        );
        assert_eq!(
            parse_passwd_user("postgresx:x:1:1::/:/bin/sh", "postgres"),
            None
        );
        assert_eq!(
            parse_passwd_user("postgres:x:abc:1::/:/bin/sh", "postgres"),
            None
        );
    }
}
