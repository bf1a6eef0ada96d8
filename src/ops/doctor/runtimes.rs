//! Runtimes: the Docker engine and the images in use, the host's PostgreSQL binaries.

use futures_util::future::join_all;

use super::{Check, Ctx, Uses, current_user, first_line};
use crate::docker::DockerError;

pub async fn docker_checks(ctx: &Ctx, uses: &Uses) -> Vec<Check> {
    const G: &str = "docker";
    let docker = ctx.backends.docker();
    let version = match docker.version().await {
        Ok(v) => v,
        Err(e) if uses.images.is_empty() => {
            let mut c = docker_failure(G, &e);
            c.mark = super::Mark::Warn;
            c.detail = format!("{} (only `--runtime docker` needs it)", c.detail);
            return vec![c];
        }
        Err(e) => return vec![docker_failure(G, &e)],
    };
    let mut checks = vec![Check::ok(G, "daemon", format!("Docker {version}"))];
    let images = &uses.images;
    let found = join_all(images.iter().map(|i| docker.image_id(i))).await;
    for (image, found) in images.iter().zip(found) {
        checks.push(match found {
            Ok(Some(_)) => Check::ok(G, format!("image {image}"), "present"),
            Ok(None) => Check::fail(
                G,
                format!("image {image}"),
                "missing",
                format!("`docker pull {image}` (or `docker load` it)"),
            ),
            Err(e) => docker_failure(G, &e),
        });
    }
    checks
}

fn docker_failure(group: &'static str, e: &DockerError) -> Check {
    let socket = std::path::Path::new("/var/run/docker.sock");
    let local = std::env::var_os("DOCKER_HOST").is_none();
    let denied = local
        && socket.exists()
        && rustix::fs::access(socket, rustix::fs::Access::WRITE_OK).is_err();
    if denied {
        return Check::fail(
            group,
            "permission",
            format!("{} may not use {}", current_user(), socket.display()),
            "run `sudo velo setup` (adds you to the docker group), then log out and in again",
        );
    }
    Check::fail(
        group,
        "daemon",
        first_line(&format!("{e}")),
        "start Docker (`systemctl start docker`, or `dockerd &`), or check DOCKER_HOST",
    )
}

/// The host's PostgreSQL binaries: each major found, and those the projects use.
pub async fn native_checks(uses: &Uses) -> Vec<Check> {
    const G: &str = "native";
    let mut checks: Vec<Check> = (crate::pgversion::MIN_MAJOR..=crate::pgversion::NEWEST_MAJOR)
        .filter_map(|major| crate::runtime::native::bins::find(Some(major)).ok())
        .map(|b| {
            Check::ok(
                G,
                format!("PostgreSQL {}", b.major),
                format!("{} in {}", b.version, b.bindir.display()),
            )
        })
        .collect();
    if checks.is_empty() {
        checks.push(Check::warn(
            G,
            "binaries",
            "no PostgreSQL 14 or newer found",
            "install PostgreSQL (`apt install postgresql`), or set VELO_PG_ROOT or VELO_PG_BINDIR; only `--runtime native` needs them",
        ));
    }
    for bindir in &uses.bindirs {
        if !bindir.join("postgres").is_file() {
            checks.push(Check::fail(
                G,
                bindir.display().to_string(),
                "a project's PostgreSQL binaries are gone",
                "reinstall that PostgreSQL (its major is in `velo project get`)",
            ));
        }
    }
    checks
}
