//! Hiding a password given on velo's own command line (`--from postgres://u:PASSWORD@h/db`)
//! from other users. The process list (`ps`, `/proc/<pid>/cmdline`, readable by everyone)
//! shows a process's arguments as they are in its memory; once velo has parsed them it
//! overwrites every URL password there with `x`, as the MySQL and PostgreSQL clients do. In
//! the first milliseconds, before that, it is visible: `PGPASSWORD` or `~/.pgpass` keep it off
//! the command line entirely (docs/security.md).

use std::ops::Range;
use std::os::unix::fs::FileExt;

/// Overwrites the passwords of URLs in this process's arguments. Best effort: call it after
/// the arguments were parsed (Rust reads them from that same memory).
pub fn hide_passwords() {
    let Some(area) = argument_area() else {
        return;
    };
    let Ok(mem) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")
    else {
        return;
    };
    let mut args = vec![0u8; area.end.saturating_sub(area.start) as usize];
    if mem.read_exact_at(&mut args, area.start).is_err() {
        return;
    }
    let mut changed = false;
    let mut offset = 0;
    for arg in args.clone().split(|b| *b == 0) {
        for span in password_spans(arg) {
            args[offset + span.start..offset + span.end].fill(b'x');
            changed = true;
        }
        offset += arg.len() + 1;
    }
    if changed {
        let _ = mem.write_all_at(&args, area.start);
    }
}

/// Where the kernel keeps this process's arguments: fields 48 and 49 of `/proc/self/stat`.
fn argument_area() -> Option<Range<u64>> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (field 2, in parentheses) start at field 3.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let start = fields.get(48 - 3)?.parse().ok()?;
    let end = fields.get(49 - 3)?.parse().ok()?;
    (start < end).then_some(start..end)
}

/// The byte ranges of passwords in one argument: the `PASSWORD` of `scheme://user:PASSWORD@…`
/// and the value of a `password=` parameter.
fn password_spans(arg: &[u8]) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let text = String::from_utf8_lossy(arg);
    if let Some(scheme_end) = text.find("://") {
        let rest_start = scheme_end + 3;
        let rest = &text[rest_start..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            spans.push(rest_start + colon + 1..rest_start + at);
        }
    }
    let mut from = 0;
    while let Some(found) = text[from..].find("password=") {
        let start = from + found + "password=".len();
        let end = text[start..]
            .find(['&', ' '])
            .map_or(text.len(), |e| start + e);
        spans.push(start..end);
        from = end;
    }
    // Only ranges of the original bytes (lossy decoding never shortens ASCII before them).
    spans.retain(|s| s.start < s.end && s.end <= arg.len());
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hidden(arg: &str) -> String {
        let mut bytes = arg.as_bytes().to_vec();
        for span in password_spans(arg.as_bytes()) {
            bytes[span].fill(b'x');
        }
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn url_passwords_are_found() {
        assert_eq!(
            hidden("postgres://app:s3cr%40t@db:5432/shop"),
            "postgres://app:xxxxxxxx@db:5432/shop"
        );
        assert_eq!(
            hidden("postgres://u@h/d?sslmode=require&password=pw&x=1"),
            "postgres://u@h/d?sslmode=require&password=xx&x=1"
        );
        assert_eq!(hidden("postgres://u@h:1/d"), "postgres://u@h:1/d");
        assert_eq!(hidden("--from"), "--from");
        assert_eq!(hidden("postgres://u:@h/d"), "postgres://u:@h/d");
    }

    #[test]
    fn this_process_has_an_argument_area() {
        let area = argument_area().unwrap();
        assert!(area.end > area.start);
    }
}
