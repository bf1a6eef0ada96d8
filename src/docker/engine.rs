//! The bollard client and every call velo makes to the Docker engine.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HostConfig, Mount, MountType,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures_util::{StreamExt, TryStreamExt};

use crate::lines::Lines;

use super::{
    BindMount, ContainerSpec, ContainerStatus, DockerError, HelperOutput, LABEL_BRANCH, LABEL_HOME,
    LABEL_MANAGED, LABEL_PROJECT, ManagedContainer, PIDS_LIMIT, PostgresUser, PullProgress,
    parse_passwd_user, pull, uncovered_volumes,
};

/// A connection to the local Docker engine.
#[derive(Debug, Default)]
pub struct Engine {
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

impl Engine {
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

    /// The image's id, or `None` if it is not on this host.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>, DockerError> {
        match self.client().await?.inspect_image(image).await {
            Ok(i) => Ok(Some(i.id.unwrap_or_default())),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(api(format!("inspecting image {image}"))(e)),
        }
    }

    /// Fails with [`DockerError::ImageMissing`] unless the image is on this host.
    pub async fn require_image(&self, image: &str) -> Result<(), DockerError> {
        match self.image_id(image).await? {
            Some(_) => Ok(()),
            None => Err(DockerError::ImageMissing {
                image: image.to_string(),
            }),
        }
    }

    /// Pulls an image from its registry, telling `progress` how far it got after each of the
    /// daemon's messages.
    pub async fn pull(
        &self,
        image: &str,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<(), DockerError> {
        let (name, tag) = pull::split_reference(image);
        let opts = CreateImageOptionsBuilder::new()
            .from_image(name)
            .tag(tag)
            .build();
        let mut stream = self.client().await?.create_image(Some(opts), None, None);
        let mut tracker = pull::PullTracker::default();
        while let Some(message) = stream.next().await {
            let info = message.map_err(|source| pull_failed(image, source))?;
            let detail = info.progress_detail.unwrap_or_default();
            progress(tracker.apply(
                info.id.as_deref(),
                info.status.as_deref().unwrap_or_default(),
                detail.current,
                detail.total,
            ));
        }
        Ok(())
    }

    /// The paths an image declares as `VOLUME`s.
    pub async fn image_volumes(&self, image: &str) -> Result<Vec<String>, DockerError> {
        let inspect = match self.client().await?.inspect_image(image).await {
            Ok(i) => i,
            Err(e) if is_status(&e, 404) => {
                return Err(DockerError::ImageMissing {
                    image: image.to_string(),
                });
            }
            Err(e) => return Err(api(format!("inspecting image {image}"))(e)),
        };
        let mut volumes: Vec<String> = inspect
            .config
            .and_then(|c| c.volumes)
            .map(|v| v.into_iter().collect())
            .unwrap_or_default();
        volumes.sort();
        Ok(volumes)
    }

    /// Finds the uid/gid of the image's `postgres` user by reading its /etc/passwd from a
    /// created (never started) container. The official alpine images use 70, the Debian ones 999.
    pub async fn postgres_user(&self, image: &str) -> Result<PostgresUser, DockerError> {
        let probe = ContainerSpec {
            image: image.to_string(),
            labels: vec![(LABEL_MANAGED.into(), "probe".into())],
            // Never run, but Docker refuses to create a container of an image without a CMD
            // (one made with `docker import`) unless it is given one.
            entrypoint: vec!["postgres".into()],
            ..ContainerSpec::default()
        };
        let id = self.create(&probe).await?;
        let opts = DownloadFromContainerOptionsBuilder::new()
            .path("/etc/passwd")
            .build();
        let tar: Result<Vec<u8>, _> = self
            .client()
            .await?
            .download_from_container(&id, Some(opts))
            .map_ok(|b| b.to_vec())
            .try_concat()
            .await;
        self.remove(&id).await?;
        let tar = tar.map_err(api(format!("reading /etc/passwd of {image}")))?;
        let passwd = first_file_in_tar(&tar).unwrap_or_default();
        parse_passwd_user(&passwd, "postgres").ok_or_else(|| DockerError::NoPostgresUser {
            image: image.to_string(),
        })
    }

    /// Runs a throw-away container to its end and removes it; fails with its last log lines
    /// unless it exits 0.
    pub async fn run_helper(&self, spec: &ContainerSpec) -> Result<(), DockerError> {
        let id = self.create(spec).await?;
        let client = self.client().await?;
        let outcome: Result<i64, DockerError> = async {
            client
                .start_container(&id, None)
                .await
                .map_err(api("starting a helper container"))?;
            let opts = WaitContainerOptionsBuilder::new()
                .condition("not-running")
                .build();
            match client
                .wait_container(&id, Some(opts))
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
            _ => self.logs_tail(&id, 10).await,
        };
        self.remove(&id).await?;
        match outcome? {
            0 => Ok(()),
            code => Err(DockerError::HelperFailed {
                image: spec.image.clone(),
                code,
                logs: logs.trim().to_string(),
            }),
        }
    }

    /// Runs a throw-away container to its end, handing each line it writes to stderr to
    /// `line` as it comes, and removes it; returns its exit code and output, whatever the
    /// code. If this future is dropped before, the container is left for the caller to remove
    /// by its name.
    pub async fn run_streaming(
        &self,
        spec: &ContainerSpec,
        line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<HelperOutput, DockerError> {
        let id = self.create(spec).await?;
        let client = self.client().await?;
        let outcome: Result<HelperOutput, DockerError> = async {
            client
                .start_container(&id, None)
                .await
                .map_err(api("starting a helper container"))?;
            let opts = LogsOptionsBuilder::new()
                .follow(true)
                .stdout(true)
                .stderr(true)
                .build();
            let mut logs = client.logs(&id, Some(opts));
            let (mut stdout, mut stderr) = (Vec::new(), Lines::default());
            while let Some(chunk) = logs.next().await {
                match chunk.map_err(api("reading a helper container's output"))? {
                    LogOutput::StdOut { message } => stdout.extend_from_slice(&message),
                    LogOutput::StdErr { message } => stderr.push(&message, line),
                    _ => {}
                }
            }
            let opts = WaitContainerOptionsBuilder::new()
                .condition("not-running")
                .build();
            let code = match client
                .wait_container(&id, Some(opts))
                .try_collect::<Vec<_>>()
                .await
            {
                Ok(r) => r.last().map(|w| w.status_code).unwrap_or_default(),
                Err(BollardError::DockerContainerWaitError { code, .. }) => code,
                Err(e) => return Err(api("waiting for a helper container")(e)),
            };
            Ok(HelperOutput {
                code,
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: stderr.finish(line),
            })
        }
        .await;
        self.remove(&id).await?;
        outcome
    }

    /// Creates a container, hardened (see the module docs); returns its id.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        let declared = self.image_volumes(&spec.image).await?;
        let tmpfs: HashMap<String, String> = uncovered_volumes(&declared, &spec.mounts)
            .into_iter()
            .map(|path| (path, "rw,nosuid,nodev,noexec,size=64m".to_string()))
            .collect();
        let host_config = HostConfig {
            mounts: Some(spec.mounts.iter().map(bind_mount).collect()),
            tmpfs: Some(tmpfs),
            network_mode: Some(if spec.host_network { "host" } else { "none" }.to_string()),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(spec.cap_add.clone()),
            security_opt: Some(vec!["no-new-privileges".into()]),
            pids_limit: Some(PIDS_LIMIT),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            user: spec.user.clone(),
            entrypoint: (!spec.entrypoint.is_empty()).then(|| spec.entrypoint.clone()),
            cmd: (!spec.cmd.is_empty()).then(|| spec.cmd.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(spec.labels.iter().cloned().collect()),
            stop_signal: spec.stop_signal.clone(),
            host_config: Some(host_config),
            ..Default::default()
        };
        let opts = spec
            .name
            .as_deref()
            .map(|n| CreateContainerOptionsBuilder::new().name(n).build());
        let what = spec.name.as_deref().unwrap_or("a helper");
        match self.client().await?.create_container(opts, body).await {
            Ok(created) => Ok(created.id),
            Err(e) if is_status(&e, 404) => Err(DockerError::ImageMissing {
                image: spec.image.clone(),
            }),
            Err(e) => Err(api(format!(
                "creating container {what} from {}",
                spec.image
            ))(e)),
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

    /// Stops with the container's stop signal (SIGINT: PostgreSQL's fast shutdown), killing
    /// after `timeout`. A missing or already stopped container is success.
    pub async fn stop(&self, name: &str, timeout: Duration) -> Result<(), DockerError> {
        let secs = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let opts = StopContainerOptionsBuilder::new().t(secs).build();
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

    /// Removes a container and its anonymous volumes, stopping it first if needed. Missing is
    /// success, and so is a removal already in progress (a killed velo's, say) once it ended.
    pub async fn remove(&self, name: &str) -> Result<(), DockerError> {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self
            .client()
            .await?
            .remove_container(name, Some(opts))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) if is_status(&e, 409) => {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while self.status(name).await? != ContainerStatus::Missing {
                    if std::time::Instant::now() > deadline {
                        return Err(api(format!("removing container {name}"))(e));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
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
                let mounts = c.mounts.unwrap_or_default();
                ManagedContainer {
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default(),
                    project: label(LABEL_PROJECT),
                    branch: label(LABEL_BRANCH),
                    running: c.state.map(|s| s.to_string()) == Some("running".into()),
                    volumes: mounts
                        .iter()
                        .filter(|m| m.typ.as_ref().map(|t| t.to_string()) == Some("volume".into()))
                        .filter_map(|m| m.name.clone())
                        .collect(),
                    mounts: mounts
                        .into_iter()
                        .filter_map(|m| Some((m.destination?, m.source?)))
                        .collect(),
                }
            })
            .collect())
    }
}

/// Why a pull failed: the registry did not answer, or it answered no; a daemon that cannot
/// be reached at all is [`DockerError::Unreachable`].
fn pull_failed(image: &str, source: BollardError) -> DockerError {
    let message = match &source {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        BollardError::DockerStreamError { error } => error.clone(),
        _ => return DockerError::Unreachable { source },
    };
    let (image, registry) = (image.to_string(), pull::registry(image).to_string());
    if pull::unreachable_registry(&message) {
        DockerError::RegistryUnreachable {
            image,
            registry,
            source,
        }
    } else {
        DockerError::PullFailed {
            image,
            registry,
            source,
        }
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
