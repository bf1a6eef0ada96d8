//! A source server's address: `postgres://[user[:password]@]host[:port][/database][?k=v…]`,
//! parsed once, kept and shown without its password, and handed to the client tools as a
//! libpq connection string that holds no secret.

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

/// The port a URL without one means (libpq's default).
pub const DEFAULT_PORT: u16 = 5432;

/// Connection parameters a URL may carry besides its address: what libpq needs to reach a
/// server and nothing that names a file velo would have to trust (`passfile`, `service`).
const PARAMS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "sslcompression",
    "gssencmode",
    "channel_binding",
    "connect_timeout",
    "target_session_attrs",
    "options",
];

/// Where a source server is, without its password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceUrl {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    /// Further libpq parameters from the URL's query, in order.
    #[serde(default)]
    pub params: Vec<(String, String)>,
}

/// A URL that cannot be a source.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error(
        "`{0}` is not a PostgreSQL URL: write it as postgres://USER@HOST:PORT/DATABASE (the password in the URL, PGPASSWORD or ~/.pgpass)"
    )]
    Shape(String),
    #[error(
        "the source URL names no host: velo reaches the source over TCP, write postgres://USER@HOST:PORT/DATABASE"
    )]
    NoHost,
    #[error(
        "the source URL has a parameter velo does not pass on: `{0}` (allowed: {allowed})",
        allowed = PARAMS.join(", ")
    )]
    Param(String),
    #[error("the source URL's {0} is not valid UTF-8 once decoded")]
    Encoding(&'static str),
}

/// A URL taken apart: the address, and the password it carried, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub url: SourceUrl,
    pub password: Option<String>,
}

impl SourceUrl {
    /// Parses a `postgres://` or `postgresql://` URL. A missing user is `default_user` (libpq
    /// takes the login name), a missing database the user's name (libpq's default too).
    pub fn parse(text: &str, default_user: &str) -> Result<Parsed, UrlError> {
        let shape = || UrlError::Shape(redact_raw(text));
        let url = url::Url::parse(text).map_err(|_| shape())?;
        if !matches!(url.scheme(), "postgres" | "postgresql") || url.fragment().is_some() {
            return Err(shape());
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(UrlError::NoHost)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let user = match decode(url.username(), "user")? {
            u if u.is_empty() => default_user.to_string(),
            u => u,
        };
        let mut password = url.password().map(|p| decode(p, "password")).transpose()?;
        let database = match decode(url.path().trim_start_matches('/'), "database")? {
            d if d.is_empty() => user.clone(),
            d => d,
        };
        let mut params = Vec::new();
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "password" => password = Some(value.into_owned()),
                k if PARAMS.contains(&k) => params.push((k.to_string(), value.into_owned())),
                other => return Err(UrlError::Param(other.to_string())),
            }
        }
        Ok(Parsed {
            url: SourceUrl {
                user,
                host,
                port: url.port().unwrap_or(DEFAULT_PORT),
                database,
                params,
            },
            password,
        })
    }

    /// The URL as velo shows and keeps it: never a password.
    pub fn redacted(&self) -> String {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut out = format!(
            "postgres://{}@{host}:{}/{}",
            enc(&self.user),
            self.port,
            enc(&self.database)
        );
        for (i, (k, v)) in self.params.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(&format!("{k}={}", enc(v)));
        }
        out
    }

    /// The libpq connection string of `database` on this server, for a client tool's
    /// `--dbname`: no password, a connect timeout unless the URL sets one.
    pub fn conninfo(&self, database: &str) -> String {
        let port = self.port.to_string();
        let mut pairs = vec![
            ("host", self.host.as_str()),
            ("port", port.as_str()),
            ("user", self.user.as_str()),
            ("dbname", database),
            ("application_name", "velo-import"),
        ];
        if !self.params.iter().any(|(k, _)| k == "connect_timeout") {
            pairs.push(("connect_timeout", "10"));
        }
        pairs.extend(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `host:port`, for messages.
    pub fn place(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn decode(s: &str, what: &'static str) -> Result<String, UrlError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| UrlError::Encoding(what))
}

/// A libpq connection-string value: single-quoted, `\` and `'` escaped.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A URL as the user typed it, with anything between `:` and `@` after the scheme hidden:
/// for an error about a URL that did not parse.
fn redact_raw(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return "…".into();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Parsed {
        SourceUrl::parse(s, "ann").unwrap()
    }

    #[test]
    fn a_full_url_and_its_password() {
        let p = parse("postgres://app:s%3Acr%40t@db.example:6543/shop?sslmode=require");
        assert_eq!(p.password.as_deref(), Some("s:cr@t"));
        assert_eq!(
            p.url,
            SourceUrl {
                user: "app".into(),
                host: "db.example".into(),
                port: 6543,
                database: "shop".into(),
                params: vec![("sslmode".into(), "require".into())],
            }
        );
        let shown = p.url.redacted();
        assert_eq!(shown, "postgres://app@db.example:6543/shop?sslmode=require");
        assert!(!shown.contains("cr"));
    }

    #[test]
    fn defaults_follow_libpq() {
        let p = parse("postgresql://127.0.0.1");
        assert_eq!(p.password, None);
        assert_eq!(
            (p.url.user.as_str(), p.url.port, p.url.database.as_str()),
            ("ann", 5432, "ann")
        );
        let v6 = parse("postgres://u@[::1]:5433/d");
        assert_eq!(v6.url.host, "::1");
        assert_eq!(v6.url.place(), "[::1]:5433");
        assert_eq!(v6.url.redacted(), "postgres://u@[::1]:5433/d");
    }

    #[test]
    fn a_password_parameter_is_taken_out_of_the_url() {
        let p = parse("postgres://u@h/d?password=x&connect_timeout=3");
        assert_eq!(p.password.as_deref(), Some("x"));
        assert_eq!(p.url.params, vec![("connect_timeout".into(), "3".into())]);
        assert!(!p.url.redacted().contains("password"));
    }

    #[test]
    fn bad_urls_are_named_without_their_password() {
        for (bad, want) in [
            ("mysql://u:hunter2@h/d", "not a PostgreSQL URL"),
            ("postgres://u:hunter2@/d", "not a PostgreSQL URL"),
            ("postgres:///d", "names no host"),
            ("postgres://u@h/d?passfile=/etc/shadow", "passfile"),
            ("postgres://u@h/d?service=prod", "service"),
            ("not a url at all", "not a PostgreSQL URL"),
        ] {
            let err = SourceUrl::parse(bad, "ann").unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn the_connection_string_quotes_values_and_holds_no_password() {
        let p = parse("postgres://o%27neil:pw@h:1/my%20db");
        let c = p.url.conninfo(&p.url.database);
        assert_eq!(
            c,
            "host='h' port='1' user='o\\'neil' dbname='my db' application_name='velo-import' connect_timeout='10'"
        );
        assert!(!c.contains("pw"));
        let with_timeout = parse("postgres://u@h/d?connect_timeout=2")
            .url
            .conninfo("d");
        assert_eq!(with_timeout.matches("connect_timeout").count(), 1);
    }
}
