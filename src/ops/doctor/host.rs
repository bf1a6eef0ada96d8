//! The host itself, what a new project would get, and the prepared clusters.

use super::{Check, Ctx, current_user};
use crate::ops::choose::{self, Wanted};
use crate::state::State;
use crate::zfs::is_root;

pub async fn system_checks() -> Vec<Check> {
    const G: &str = "system";
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let user = if is_root() {
        "root".to_string()
    } else {
        format!(
            "{} (uid {}, not root)",
            current_user(),
            rustix::process::geteuid().as_raw()
        )
    };
    let mut checks = vec![
        Check::ok(G, "os", os),
        Check::ok(G, "kernel", kernel),
        Check::ok(G, "velo", env!("CARGO_PKG_VERSION")),
        Check::ok(G, "user", user),
    ];
    if std::env::consts::OS != "linux" {
        checks.push(Check::fail(
            G,
            "platform",
            std::env::consts::OS,
            "velo runs on Linux only",
        ));
    }
    checks
}

/// What `velo project create` with no flags would choose here, and why.
pub async fn default_checks(ctx: &Ctx) -> Vec<Check> {
    const G: &str = "defaults";
    match choose::choose(ctx, &Wanted::default()).await {
        Ok(choice) => vec![Check::ok(G, "project create", choice.why)],
        Err(e) => vec![Check::warn(
            G,
            "project create",
            super::first_line(&format!("{e:#}")),
            "see the checks below; or name the storage and runtime (--storage, --runtime)",
        )],
    }
}

/// The prepared clusters new projects are cloned from.
pub fn prepared_checks(state: &State) -> Vec<Check> {
    const G: &str = "prepared";
    state
        .prepared
        .iter()
        .map(|p| {
            let users = state
                .projects
                .values()
                .filter(|x| x.prepared_from.as_ref() == Some(&p.name))
                .count();
            Check::ok(
                G,
                p.name.to_string(),
                format!(
                    "{} on {}, {} ({users} project(s) cloned from it)",
                    p.runtime, p.storage, p.software
                ),
            )
        })
        .collect()
}
