//! Branch lifetimes: when a branch expires (`--ttl`, `--expires-at`, `velo branch set`), how
//! long a project's branches may sit idle (`velo project set --idle-stop`), and whether a branch
//! counts as idle. `velo gc` ([`super::gc`]) acts on them; nothing here deletes or stops.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use chrono::{DateTime, Duration as ChronoDuration, Utc};

use super::wal::{parse_moment, parse_target};
use super::{Ctx, branch_mut, get_branch, get_project, get_project_mut};
use crate::names::{BranchRef, ProjectName};

/// When a branch is to expire, as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// This long from now (`--ttl 8h`).
    Ttl(Duration),
    /// At this moment (`--expires-at 2025-10-07T14:30:00Z`).
    At(String),
    /// Never (`--no-expiry`).
    Never,
}

impl Expiry {
    /// The moment this expiry names, seen at `now`; an error for a moment that is not in the
    /// future or that velo cannot represent.
    pub fn resolve(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let at = match self {
            Expiry::Never => return Ok(None),
            Expiry::Ttl(ttl) => {
                if ttl.is_zero() {
                    bail!(
                        "a TTL of 0 would expire the branch at once: give a duration such as 30m or 8h"
                    );
                }
                ChronoDuration::from_std(*ttl)
                    .ok()
                    .and_then(|d| now.checked_add_signed(d))
                    .ok_or_else(|| {
                        anyhow!(
                            "a TTL of {} ends past the latest time velo can represent: give a shorter one, or no expiry",
                            humantime::format_duration(*ttl)
                        )
                    })?
            }
            Expiry::At(text) => moment(text, now)?,
        };
        if at <= now {
            bail!(
                "{} is in the past: give a later time, or a duration with --ttl",
                at.to_rfc3339()
            );
        }
        Ok(Some(at))
    }
}

/// An `--expires-at` value: a moment written out, as `--pitr` reads one.
fn moment(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if let Some(t) = parse_moment(text) {
        return Ok(t);
    }
    match parse_target(text, now) {
        Ok(_) => bail!(
            "`{text}` reads as a time ago; for a time from now give a duration with --ttl ({text}), or a moment such as 2025-10-07T14:30:00Z"
        ),
        Err(_) => bail!(
            "cannot read `{text}` as a time: use RFC 3339 (2025-10-07T14:30:00Z) or a UTC date and time (2025-10-07 14:30:00)"
        ),
    }
}

/// A project's idle stop: how long a branch may go unused before `velo gc` stops it, if ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleStop(pub Option<Duration>);

/// Reads an `--idle-stop` value: a duration (`30m`), or `off`.
pub fn parse_idle_stop(text: &str) -> Result<IdleStop, String> {
    if matches!(text.trim(), "off" | "never") {
        return Ok(IdleStop(None));
    }
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err(
            "0 would stop branches as soon as they start: give a duration such as 30m, or `off`"
                .into(),
        ),
        Ok(d) => Ok(IdleStop(Some(d))),
        Err(_) => Err(format!(
            "cannot read `{text}` as a duration: give one such as 30m or 2h, or `off`"
        )),
    }
}

/// The expiry is no longer what `velo gc` acted on, or the branch changed meanwhile: the branch
/// is left alone (a skip, not a failure).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoLongerDue(pub String);

/// `velo branch set P/B --ttl … | --expires-at … | --no-expiry`.
pub async fn set_expiry(ctx: &Ctx, r: &BranchRef, expiry: &Expiry) -> Result<()> {
    if r.branch.is_main() {
        bail!(
            "`{r}` is the project's main branch: it lives as long as its project and cannot expire"
        );
    }
    let now = Utc::now();
    let at = expiry.resolve(now)?;
    ctx.store.update(|s| {
        get_branch(get_project(s, &r.project)?, r)?;
        branch_mut(s, r)?.expires_at = at;
        Ok::<_, anyhow::Error>(())
    })?;
    match at {
        Some(t) => ctx.shell.note(&format!(
            "`{r}` expires at {} (in {}); the next `velo gc` after that deletes it.",
            t.format("%Y-%m-%d %H:%M:%S UTC"),
            rounded(t - now)
        )),
        None => ctx.shell.note(&format!("`{r}` no longer expires.")),
    }
    Ok(())
}

/// `velo project set P --idle-stop 30m | off`.
pub async fn set_idle_stop(ctx: &Ctx, name: &ProjectName, IdleStop(limit): IdleStop) -> Result<()> {
    ctx.store.update(|s| {
        get_project_mut(s, name)?.idle_stop_seconds = limit.map(|d| d.as_secs().max(1));
        Ok::<_, anyhow::Error>(())
    })?;
    match limit {
        Some(d) => ctx.shell.note(&format!(
            "`velo gc` now stops a branch of `{name}` (but main and branches with children) that no client has used for {}; run it from cron or a systemd timer.",
            humantime::format_duration(d)
        )),
        None => ctx
            .shell
            .note(&format!("`velo gc` no longer stops idle branches of `{name}`.")),
    }
    Ok(())
}

/// How long ago, or how far ahead, as people say it: to the second under an hour, else to the
/// minute.
pub fn rounded(d: ChronoDuration) -> String {
    let secs = d.num_seconds().unsigned_abs();
    let secs = if secs >= 3600 { secs / 60 * 60 } else { secs };
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// What one look at a running branch says about its use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A client is connected: it is in use now.
    Connected,
    /// No client, and velo has no record of its last use: idle time counts from now.
    FirstSeen,
    /// No client since `since`, for less than the limit.
    Quiet { since: DateTime<Utc> },
    /// No client since `since`, for the limit or longer: due to be stopped.
    Idle { since: DateTime<Utc> },
}

/// Judges one look at a branch: `clients` connected now, last used at `last_used`, with the
/// project's idle limit.
pub fn judge(
    last_used: Option<DateTime<Utc>>,
    clients: u64,
    now: DateTime<Utc>,
    limit: Duration,
) -> Use {
    if clients > 0 {
        return Use::Connected;
    }
    let Some(since) = last_used else {
        return Use::FirstSeen;
    };
    let limit = ChronoDuration::from_std(limit).unwrap_or(ChronoDuration::MAX);
    if now.signed_duration_since(since) >= limit {
        Use::Idle { since }
    } else {
        Use::Quiet { since }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn expiries_from_a_ttl_or_a_moment() {
        let at = |e: Expiry| e.resolve(now()).unwrap().unwrap().to_rfc3339();
        assert_eq!(
            at(Expiry::Ttl(Duration::from_secs(8 * 3600))),
            "2026-03-01T20:00:00+00:00"
        );
        assert_eq!(
            at(Expiry::At("2026-03-02T09:30:00+02:00".into())),
            "2026-03-02T07:30:00+00:00"
        );
        assert_eq!(
            at(Expiry::At("2026-03-02 07:30:00".into())),
            "2026-03-02T07:30:00+00:00"
        );
        assert_eq!(Expiry::Never.resolve(now()).unwrap(), None);
    }

    #[test]
    fn bad_expiries_are_errors_that_say_what_to_do() {
        let err = |e: Expiry| e.resolve(now()).unwrap_err().to_string();
        assert!(
            err(Expiry::At("2026-03-01T11:00:00Z".into())).contains("in the past"),
            "past"
        );
        assert!(err(Expiry::At("2026-03-01T12:00:00Z".into())).contains("in the past"));
        assert!(err(Expiry::At("30m".into())).contains("--ttl"));
        assert!(err(Expiry::At("2 hours ago".into())).contains("time ago"));
        assert!(err(Expiry::At("next tuesday".into())).contains("RFC 3339"));
        assert!(err(Expiry::Ttl(Duration::ZERO)).contains("at once"));
        let huge = err(Expiry::Ttl(Duration::from_secs(u64::MAX)));
        assert!(huge.contains("latest time velo can represent"), "{huge}");
        let big = err(Expiry::Ttl(
            humantime::parse_duration("500000years").unwrap(),
        ));
        assert!(big.contains("latest time"), "{big}");
    }

    #[test]
    fn idle_stop_values() {
        assert_eq!(
            parse_idle_stop("30m"),
            Ok(IdleStop(Some(Duration::from_secs(1800))))
        );
        assert_eq!(parse_idle_stop("off"), Ok(IdleStop(None)));
        assert!(parse_idle_stop("0s").unwrap_err().contains("off"));
        assert!(parse_idle_stop("soon").unwrap_err().contains("30m"));
    }

    #[test]
    fn idleness_counts_from_the_last_use_seen() {
        let limit = Duration::from_secs(1800);
        let ago = |m: i64| now() - ChronoDuration::minutes(m);
        assert_eq!(judge(Some(ago(90)), 1, now(), limit), Use::Connected);
        assert_eq!(judge(None, 0, now(), limit), Use::FirstSeen);
        assert_eq!(
            judge(Some(ago(10)), 0, now(), limit),
            Use::Quiet { since: ago(10) }
        );
        assert_eq!(
            judge(Some(ago(30)), 0, now(), limit),
            Use::Idle { since: ago(30) }
        );
        assert_eq!(
            judge(Some(ago(1)), 0, now(), Duration::from_secs(u64::MAX)),
            Use::Quiet { since: ago(1) }
        );
    }

    #[test]
    fn rounding_for_people() {
        assert_eq!(rounded(ChronoDuration::seconds(90)), "1m 30s");
        assert_eq!(rounded(ChronoDuration::seconds(8 * 3600 - 1)), "7h 59m");
        assert_eq!(rounded(ChronoDuration::seconds(-45)), "45s");
    }
}
