//! The one place that knows how PostgreSQL majors differ where velo works with them.
//!
//! velo supports PostgreSQL 14 and newer (older majors are past their end of life, and branch
//! servers use `recovery_init_sync_method`, new in 14).

/// The oldest major velo works with.
pub const MIN_MAJOR: u32 = 14;

/// The newest major velo has been tested with (a newer one may well work).
pub const NEWEST_MAJOR: u32 = 18;

/// The SQL that starts a non-exclusive online backup with an immediate checkpoint.
/// PostgreSQL 15 renamed `pg_start_backup` to `pg_backup_start` and dropped exclusive backups.
pub fn backup_start_sql(major: u32) -> &'static str {
    if major >= 15 {
        "SELECT pg_backup_start('velo', true)"
    } else {
        "SELECT pg_start_backup('velo', true, false)"
    }
}

/// The SQL that ends it, returning the backup label as its one column. velo does not wait for
/// the archiver: the copy takes its WAL from `pg_wal` itself.
pub fn backup_stop_sql(major: u32) -> &'static str {
    if major >= 15 {
        "SELECT labelfile FROM pg_backup_stop(false)"
    } else {
        "SELECT labelfile FROM pg_stop_backup(false, false)"
    }
}

/// The major of a version string as PostgreSQL prints it (`17.2`, `15.18 (Debian …)`,
/// `postgres (PostgreSQL) 16.4`).
pub fn major_of(version: &str) -> Option<u32> {
    version
        .split_whitespace()
        .find_map(|word| word.split('.').next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_api_per_major() {
        for major in 14..=18 {
            let (start, stop) = (backup_start_sql(major), backup_stop_sql(major));
            if major == 14 {
                assert!(start.contains("pg_start_backup") && stop.contains("pg_stop_backup"));
            } else {
                assert!(start.contains("pg_backup_start") && stop.contains("pg_backup_stop"));
            }
        }
    }

    #[test]
    fn majors_from_version_strings() {
        assert_eq!(major_of("17.2"), Some(17));
        assert_eq!(major_of("15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(major_of("postgres (PostgreSQL) 16.4"), Some(16));
        assert_eq!(major_of("18beta1"), None);
        assert_eq!(major_of(""), None);
    }
}
