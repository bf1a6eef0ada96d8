//! Parsers for option values: each error names the forms velo accepts, and no input panics
//! (the property tests below feed them anything).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::names::{BranchRef, ProjectName};
use crate::pgversion::MIN_MAJOR;

/// The longest duration velo waits for anything (`--wait`, `--timeout`, `VELO_READY_TIMEOUT`).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The most days a retention (`--days`) may reach back: 100 years.
pub const MAX_DAYS: u32 = 36_500;

/// What a duration may look like, for error messages and help.
pub const DURATION_FORMS: &str = "a number and a unit, such as 30s, 10m, 1h or 1h30m (0 for none)";

/// A PostgreSQL major version velo supports (`17`).
pub fn pg_major(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if n >= MIN_MAJOR => Ok(n),
        Ok(_) => Err(format!(
            "velo needs PostgreSQL {MIN_MAJOR} or newer (older majors are past their end of life); give a major version number such as 17"
        )),
        Err(_) => Err(format!(
            "`{text}` is not a major version number: give one such as 17 ({MIN_MAJOR} or newer)"
        )),
    }
}

/// A duration such as `30s`, `10m`, `1h30m` or `0`, at most [`MAX_DURATION`].
pub fn duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let parsed = if trimmed == "0" {
        Ok(Duration::ZERO)
    } else {
        humantime::parse_duration(trimmed)
    };
    match parsed {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) | Err(humantime::DurationError::NumberOverflow) => Err(format!(
            "`{text}` is too long: velo waits at most 7 days (1w); give {DURATION_FORMS}"
        )),
        Err(_) => Err(format!("`{text}` is not a duration: give {DURATION_FORMS}")),
    }
}

/// A whole number of days, 0 to [`MAX_DAYS`], without a unit.
pub fn days(text: &str) -> Result<u32, String> {
    let trimmed = text.trim();
    let digits = !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit());
    if !digits {
        let hint = if trimmed.starts_with('-') {
            "days count back from now, so give 0 or more"
        } else {
            "give a whole number of days such as 7, without a unit"
        };
        return Err(format!("`{text}` is not a number of days: {hint}"));
    }
    match trimmed.parse::<u32>() {
        Ok(n) if n <= MAX_DAYS => Ok(n),
        _ => Err(format!(
            "`{text}` days is too far back: give at most {MAX_DAYS} (100 years)"
        )),
    }
}

/// A moment in the past (`--pitr`), in any of the forms [`crate::ops::wal::parse_target`]
/// reads, relative to now.
pub fn point_in_time(text: &str) -> Result<DateTime<Utc>, String> {
    crate::ops::wal::parse_target(text, Utc::now()).map_err(|e| e.to_string())
}

/// A project or a `<project>/<branch>`, as `snapshot list` and `wal info` take them.
pub fn scope(text: &str) -> Result<String, String> {
    let checked = if text.contains('/') {
        text.parse::<BranchRef>().map(drop)
    } else {
        text.parse::<ProjectName>().map(drop)
    };
    checked
        .map(|()| text.to_string())
        .map_err(|e| format!("{e}; give a project (demo) or a branch (demo/dev)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn majors() {
        assert_eq!(pg_major("17"), Ok(17));
        assert!(pg_major("13").unwrap_err().contains("14 or newer"));
        assert!(
            pg_major("fifteen")
                .unwrap_err()
                .contains("major version number")
        );
        assert!(pg_major("-1").is_err());
        assert!(pg_major("99999999999").is_err());
    }

    #[test]
    fn durations_name_the_forms() {
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("1w"), Ok(MAX_DURATION));
        for bad in ["forever", "abc", "", "-1s", "10"] {
            let err = duration(bad).unwrap_err();
            assert!(err.contains("30s, 10m, 1h or 1h30m"), "{bad}: {err}");
            assert!(!err.contains("expected number"), "{bad}: {err}");
        }
        for long in ["8d", "99999999 years", "999999999999999999999999s"] {
            assert!(
                duration(long).unwrap_err().contains("at most 7 days"),
                "{long}"
            );
        }
    }

    #[test]
    fn days_name_the_forms() {
        assert_eq!(days("7"), Ok(7));
        assert_eq!(days("0"), Ok(0));
        assert_eq!(days(" 30 "), Ok(30));
        assert!(
            days("7d")
                .unwrap_err()
                .contains("whole number of days such as 7")
        );
        assert!(days("-1").unwrap_err().contains("0 or more"));
        assert!(days("").unwrap_err().contains("whole number"));
        assert!(days("99999999").unwrap_err().contains("at most 36500"));
        assert!(
            days("99999999999999999999999")
                .unwrap_err()
                .contains("at most")
        );
    }

    #[test]
    fn scopes_are_projects_or_branches() {
        assert_eq!(scope("demo"), Ok("demo".into()));
        assert_eq!(scope("demo/dev"), Ok("demo/dev".into()));
        for bad in ["Bad", "Bad/x", "a/b/c", "demo/"] {
            let err = scope(bad).unwrap_err();
            assert!(err.contains("give a project (demo)"), "{bad}: {err}");
        }
    }

    #[test]
    fn points_in_time_name_every_form() {
        let err = point_in_time("yesterday-ish").unwrap_err();
        for form in ["2025-10-07T14:30:00Z", "2025-10-07 14:30:00", "2 hours ago"] {
            assert!(err.contains(form), "{form}: {err}");
        }
        assert!(point_in_time("5m").is_ok());
    }

    proptest! {
        #[test]
        fn no_text_panics(text in "\\PC{0,40}") {
            let _ = duration(&text);
            let _ = days(&text);
            let _ = pg_major(&text);
            let _ = point_in_time(&text);
            let _ = scope(&text);
        }

        #[test]
        fn no_number_with_a_unit_panics(n in any::<u64>(), unit in "(ns|us|ms|s|m|h|d|w|M|y|years|days)( ago)?") {
            let text = format!("{n}{unit}");
            let _ = duration(&text);
            let _ = point_in_time(&text);
            let _ = point_in_time(&format!("-{text}"));
        }

        #[test]
        fn every_accepted_number_of_days_reaches_back(n in any::<u64>()) {
            if let Ok(d) = days(&n.to_string()) {
                prop_assert!(crate::ops::snapshot::days_ago(d).is_ok());
            }
        }

        #[test]
        fn accepted_durations_fit_the_bound(n in any::<u64>(), unit in "(s|m|h|d)") {
            if let Ok(d) = duration(&format!("{n}{unit}")) {
                prop_assert!(d <= MAX_DURATION);
                prop_assert!(std::time::Instant::now().checked_add(d).is_some());
            }
        }
    }
}
