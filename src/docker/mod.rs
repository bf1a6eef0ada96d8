//! The Docker engine, through bollard: containers, images (pulled when missing), logs.
//!
//! The interface is velo's own ([`ContainerSpec`], [`ContainerStatus`], [`PostgresUser`]); no
//! bollard type leaves this module. It knows nothing of PostgreSQL settings, storage or velo's
//! state: [`crate::runtime::docker`] turns a server into a container here.
//!
//! Every container velo makes is hardened the same way: all capabilities dropped (a helper
//! may add back exactly what it needs), `no-new-privileges`, a process limit, and a tmpfs over
//! each `VOLUME` its image declares that the container does not mount itself, so that no
//! container leaves an anonymous Docker volume behind. Removals take anonymous volumes too.

mod engine;
pub mod pull;

pub use engine::Engine;
pub use pull::PullProgress;

/// Labels on every container velo makes.
pub const LABEL_MANAGED: &str = "dev.velo.managed";
pub const LABEL_PROJECT: &str = "dev.velo.project";
pub const LABEL_BRANCH: &str = "dev.velo.branch";
/// The velo home (state directory) that owns the container, so two velo homes on one host
/// never mistake each other's containers for orphans.
pub const LABEL_HOME: &str = "dev.velo.home";

/// At most this many processes in one container: PostgreSQL's backends and helpers (100
/// connections by default) fit easily; a fork bomb started with `COPY … TO PROGRAM` does not.
pub const PIDS_LIMIT: i64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach the Docker daemon: start it (`systemctl start docker`, or `dockerd &`), and check that you may use it (`sudo velo setup` adds you to the docker group)"
    )]
    Unreachable { source: bollard::errors::Error },
    #[error(
        "image `{image}` is not on this host and could not be pulled: `docker pull {image}` or `docker load` it, or pass another --image"
    )]
    ImageMissing { image: String },
    #[error(
        "image `{image}` is not on this host and its registry {registry} does not answer: pass an image this host has (--image), or `docker load` one saved elsewhere with `docker save`"
    )]
    RegistryUnreachable {
        image: String,
        registry: String,
        source: bollard::errors::Error,
    },
    #[error(
        "image `{image}` is not on this host and {registry} could not supply it: check the name (--image), `docker login {registry}` if it is private, or `docker load` the image"
    )]
    PullFailed {
        image: String,
        registry: String,
        source: bollard::errors::Error,
    },
    #[error("container `{name}` does not exist")]
    NoSuchContainer { name: String },
    #[error("docker: {action}")]
    Api {
        action: String,
        source: bollard::errors::Error,
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

/// Everything needed to create a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: Option<String>,
    pub image: String,
    /// `uid:gid` to run as; the image's default user when `None`.
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
    /// Host directories to mount. Bind mounts fail if the source does not exist, so an
    /// unmounted volume can never be initialised as an empty database.
    pub mounts: Vec<BindMount>,
    /// Capabilities added back after all are dropped (helpers only).
    pub cap_add: Vec<String>,
    /// Share the host's network (servers); no network at all otherwise (helpers).
    pub host_network: bool,
    pub stop_signal: Option<String>,
}

/// A host directory mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// How a helper container ended: its exit code, its stdout, and the last lines of its stderr.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelperOutput {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
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
    /// Where each host directory is mounted: target → source.
    pub mounts: Vec<(String, String)>,
    /// Docker volumes it mounts (anonymous ones are left behind unless removed with it).
    pub volumes: Vec<String>,
}

/// The uid and gid an image runs PostgreSQL as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresUser {
    pub uid: u32,
    pub gid: u32,
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

/// The declared volumes of an image that `mounts` do not cover with a mount at the same
/// path: each gets a tmpfs, or Docker would make an anonymous volume for it.
pub fn uncovered_volumes(declared: &[String], mounts: &[BindMount]) -> Vec<String> {
    declared
        .iter()
        .filter(|v| {
            let v = v.trim_end_matches('/');
            !mounts.iter().any(|m| m.target.trim_end_matches('/') == v)
        })
        .cloned()
        .collect()
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

    #[test]
    fn every_declared_volume_not_mounted_gets_a_tmpfs() {
        let bind = |t: &str| BindMount {
            source: "/x".into(),
            target: t.into(),
            read_only: false,
        };
        // Up to 17: the data directory is the volume, and velo mounts it.
        assert!(
            uncovered_volumes(
                &["/var/lib/postgresql/data".into()],
                &[bind("/var/lib/postgresql/data/")]
            )
            .is_empty()
        );
        // 18: the volume is the parent; velo mounts inside it.
        assert_eq!(
            uncovered_volumes(
                &["/var/lib/postgresql".into()],
                &[bind("/var/lib/postgresql/data")]
            ),
            vec!["/var/lib/postgresql".to_string()]
        );
    }
}
