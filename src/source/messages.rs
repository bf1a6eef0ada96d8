//! What the client tools (psql, pg_dump, pg_restore, pg_dumpall) say, read: their failures
//! turned into errors that name the fix, and their verbose lines into progress. They run with
//! `LC_MESSAGES=C`, so the messages are libpq's and PostgreSQL's English ones.

/// An import that failed because of its source, or of where it writes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error(
        "cannot reach the source at {place}: {detail}; check that the server runs and listens there (listen_addresses, a firewall) and that the host name is right"
    )]
    Unreachable { place: String, detail: String },
    #[error(
        "the source at {place} refused the password of user `{user}`: give the right one in the URL (postgres://{user}:PASSWORD@…), in PGPASSWORD, or in ~/.pgpass (host:port:database:user:password, mode 0600)"
    )]
    BadPassword { place: String, user: String },
    #[error(
        "the source at {place} asks for a password and none was given: put it in the URL, in PGPASSWORD, or in ~/.pgpass (host:port:database:user:password, mode 0600)"
    )]
    NoPassword { place: String },
    #[error(
        "the source at {place} does not let this host in ({detail}): add a line for user `{user}` to its pg_hba.conf and reload it"
    )]
    NotAllowed {
        place: String,
        user: String,
        detail: String,
    },
    #[error(
        "the source at {place} has no database `{database}`: check the URL's database (`psql -l` lists them)"
    )]
    NoDatabase { place: String, database: String },
    #[error(
        "the source runs PostgreSQL {source_major}, newer than the client tools here ({tools}); {fix}"
    )]
    TooNew {
        source_major: u32,
        tools: String,
        fix: String,
    },
    #[error(
        "the source runs PostgreSQL {source_major}, newer than the project's server (PostgreSQL {server_major}), and a dump restores only into the same major or a newer one: {fix}"
    )]
    NewerThanServer {
        source_major: u32,
        server_major: u32,
        fix: String,
    },
    #[error("the source at {place} cannot be copied physically: {reason}")]
    NotPhysical { place: String, reason: String },
    #[error(
        "the source at {place} went away during the import ({detail}): keep it running and run the command again"
    )]
    Vanished { place: String, detail: String },
    #[error(
        "the storage is full ({detail}): free space (delete branches or snapshots you no longer need, or grow the pool or file system) and run the command again"
    )]
    StorageFull { detail: String },
    #[error(
        "the source at {place} does not let user `{user}` ask for a CHECKPOINT ({detail}): a superuser may, and from PostgreSQL 15 a member of pg_checkpoint (`GRANT pg_checkpoint TO {user}` there)"
    )]
    NoCheckpoint {
        place: String,
        user: String,
        detail: String,
    },
    #[error("{tool} failed: {detail}")]
    Other { tool: String, detail: String },
}

/// Where the failing tool was connecting, for the messages.
pub struct Context<'a> {
    pub tool: &'a str,
    pub place: &'a str,
    pub user: &'a str,
    pub database: &'a str,
    /// Whether the import had started reading the source (a lost connection is then the
    /// source going away, not an unreachable source).
    pub started: bool,
}

/// The error a tool's failure means, from its stderr.
pub fn classify(stderr: &str, at: &Context<'_>) -> SourceError {
    let detail = first_error(stderr);
    let place = at.place.to_string();
    let has = |needle: &str| stderr.contains(needle);
    if has("No space left on device") || has("could not extend file") {
        return SourceError::StorageFull { detail };
    }
    if has("password authentication failed") || has("authentication failed for user") {
        return SourceError::BadPassword {
            place,
            user: at.user.to_string(),
        };
    }
    if has("no password supplied") {
        return SourceError::NoPassword { place };
    }
    if has("no pg_hba.conf entry") {
        return SourceError::NotAllowed {
            place,
            user: at.user.to_string(),
            detail,
        };
    }
    if has("CHECKPOINT") && (has("permission denied") || has("must be superuser")) {
        return SourceError::NoCheckpoint {
            place,
            user: at.user.to_string(),
            detail,
        };
    }
    if has(&format!("database \"{}\" does not exist", at.database)) {
        return SourceError::NoDatabase {
            place,
            database: at.database.to_string(),
        };
    }
    // Before the import reads anything these mean the source cannot be reached; after, that
    // it went away.
    let gone = [
        "Connection refused",
        "could not translate host name",
        "timeout expired",
        "No route to host",
        "Network is unreachable",
        "server closed the connection unexpectedly",
        "terminating connection",
        "connection to server was lost",
        "could not receive data from server",
        "the database system is starting up",
        "the database system is shutting down",
    ];
    if let Some(word) = gone.iter().find(|g| has(g)) {
        return if at.started {
            SourceError::Vanished { place, detail }
        } else {
            SourceError::Unreachable {
                place,
                detail: word.to_string(),
            }
        };
    }
    SourceError::Other {
        tool: at.tool.to_string(),
        detail,
    }
}

/// The error a failure of a tool that wrote into velo's own server means: the storage filled
/// up, or whatever the tool said.
pub fn classify_target(stderr: &str, tool: &str) -> SourceError {
    let detail = first_error(stderr);
    if stderr.contains("No space left on device") || stderr.contains("could not extend file") {
        return SourceError::StorageFull { detail };
    }
    SourceError::Other {
        tool: tool.to_string(),
        detail,
    }
}

/// The first line that says what went wrong (`error:`, `FATAL:`), with what follows it on
/// indented lines; else the last line.
fn first_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let Some(at) = lines
        .iter()
        .position(|l| l.contains("error:") || l.contains("FATAL:"))
    else {
        return lines
            .last()
            .map_or("no message".into(), |l| l.trim().to_string());
    };
    let mut out = lines[at].trim().to_string();
    for l in &lines[at + 1..] {
        if !l.starts_with([' ', '\t']) || out.len() > 400 {
            break;
        }
        out.push(' ');
        out.push_str(l.trim());
    }
    out
}

/// Counts the tables a verbose pg_dump or pg_restore has done, line by line.
#[derive(Debug, Default)]
pub struct TableCount {
    started: u64,
    finished: u64,
}

impl TableCount {
    /// Reads one line of the tool's stderr; true if the count changed.
    pub fn line(&mut self, line: &str) -> bool {
        // pg_dump: `dumping contents of table "s.t"`; pg_restore: `processing data for table
        // "s.t"`; with parallel jobs both also print `finished item N TABLE DATA t`.
        if line.contains("dumping contents of table") || line.contains("processing data for table")
        {
            self.started += 1;
            return true;
        }
        if line.contains(" TABLE DATA ") && line.contains("finished item") {
            self.finished += 1;
            return true;
        }
        false
    }

    /// Every table it began or finished: once the tool is done, how many it did.
    pub fn all(&self) -> u64 {
        self.started.max(self.finished)
    }

    /// Tables done: those finished when the tool says (parallel jobs), else those begun
    /// before the last one.
    pub fn done(&self) -> u64 {
        if self.finished > 0 {
            self.finished
        } else {
            self.started.saturating_sub(1)
        }
    }
}

/// The `TABLE DATA` entries of a `pg_restore -l` listing, and the database it was dumped from.
pub fn read_toc(listing: &str) -> (u64, Option<String>) {
    let tables = listing
        .lines()
        .filter(|l| !l.starts_with(';') && l.contains(" TABLE DATA "))
        .count() as u64;
    let database = listing
        .lines()
        .find_map(|l| l.trim_start_matches(';').trim().strip_prefix("dbname: "))
        .map(|d| d.trim().to_string());
    (tables, database)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(started: bool) -> Context<'static> {
        Context {
            tool: "pg_dump",
            place: "127.0.0.1:5999",
            user: "app",
            database: "shop",
            started,
        }
    }

    #[test]
    fn libpq_failures_name_their_fix() {
        let refused = "pg_dump: error: connection to server at \"127.0.0.1\", port 5999 failed: Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?\n";
        let e = classify(refused, &at(false));
        assert!(matches!(e, SourceError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().contains("127.0.0.1:5999"));
        let cases = [
            (
                "psql: error: connection to server at \"h\" (1.2.3.4), port 5432 failed: FATAL:  password authentication failed for user \"app\"",
                "refused the password of user `app`",
            ),
            (
                "pg_dump: error: connection to server at \"h\", port 5432 failed: fe_sendauth: no password supplied",
                "asks for a password",
            ),
            (
                "psql: error: connection to server at \"h\", port 5432 failed: FATAL:  database \"shop\" does not exist",
                "no database `shop`",
            ),
            (
                "psql: error: could not translate host name \"nohost\" to address: Name or service not known",
                "cannot reach",
            ),
            (
                "pg_restore: error: could not execute query: ERROR:  could not extend file \"base/16384/16397\": No space left on device",
                "storage is full",
            ),
            (
                "pg_dump: error: could not write to file \"x\": No space left on device",
                "storage is full",
            ),
            (
                "psql: error: connection to server at \"h\", port 5432 failed: FATAL:  no pg_hba.conf entry for host \"1.2.3.4\", user \"app\", database \"shop\", no encryption",
                "pg_hba.conf",
            ),
            (
                "psql:<stdin>:1: ERROR:  permission denied to execute CHECKPOINT command\nDETAIL:  Only roles with privileges of the \"pg_checkpoint\" role may execute this command.",
                "GRANT pg_checkpoint TO app",
            ),
            (
                "ERROR:  must be superuser or have privileges of pg_checkpoint to do CHECKPOINT",
                "ask for a CHECKPOINT",
            ),
        ];
        for (stderr, want) in cases {
            let e = classify(stderr, &at(false)).to_string();
            assert!(e.contains(want), "{stderr}\n=> {e}");
        }
    }

    #[test]
    fn a_connection_lost_mid_import_is_a_source_that_went_away() {
        let stderr = "pg_dump: error: Dumping the contents of table \"t\" failed: PQgetResult() failed.\npg_dump: detail: Error message from server: server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally\n";
        assert!(matches!(
            classify(stderr, &at(true)),
            SourceError::Vanished { .. }
        ));
        let refused =
            "pg_dump: error: connection to server at \"h\", port 1 failed: Connection refused";
        assert!(matches!(
            classify(refused, &at(true)),
            SourceError::Vanished { .. }
        ));
        let other = classify(
            "pg_restore: error: could not execute query: ERROR:  type \"geometry\" does not exist",
            &at(true),
        );
        assert_eq!(
            other.to_string(),
            "pg_dump failed: pg_restore: error: could not execute query: ERROR:  type \"geometry\" does not exist"
        );
    }

    #[test]
    fn tables_are_counted_from_verbose_lines() {
        let mut serial = TableCount::default();
        for l in [
            "pg_dump: reading schemas",
            "pg_dump: dumping contents of table \"public.a\"",
            "pg_dump: dumping contents of table \"public.b\"",
        ] {
            serial.line(l);
        }
        assert_eq!(serial.done(), 1);
        let mut parallel = TableCount::default();
        for l in [
            "pg_restore: processing data for table \"public.a\"",
            "pg_restore: processing data for table \"public.b\"",
            "pg_restore: finished item 3357 TABLE DATA b",
            "pg_restore: finished item 3209 CONSTRAINT b b_pkey",
        ] {
            parallel.line(l);
        }
        assert_eq!(parallel.done(), 1);
    }

    #[test]
    fn a_toc_listing_gives_tables_and_database() {
        let listing = ";\n;     dbname: shop\n;     TOC Entries: 16\n;\n216; 1259 16390 TABLE public a postgres\n3358; 0 16390 TABLE DATA public a postgres\n3359; 0 16393 TABLE DATA public b postgres\n";
        assert_eq!(read_toc(listing), (2, Some("shop".into())));
    }
}
