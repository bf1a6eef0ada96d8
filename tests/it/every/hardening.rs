//! Security on every backend: private files, no secret in argv or logs, loopback only, a
//! password for TCP.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use crate::util::Sandbox;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn no_secret_in_process_arguments_logs_or_readable_files() {
    let sb = Sandbox::new();
    let p = sb.create_project("sec");
    let main = format!("{p}/main");
    let password = sb.json(&["branch", "password", &main])["password"]
        .as_str()
        .unwrap()
        .to_string();
    // While a create is in flight (its container up), no process on the host shows the password.
    let paused = sb.paused("ready", &["branch", "create", &format!("{p}/dev")]);
    let ps = Command::new("ps")
        .args(["-eww", "-o", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    let (_, said) = paused.signal("INT");
    assert!(ps.contains("velo"), "ps lists velo");
    assert!(
        !ps.contains(&password),
        "the password is in a process's arguments"
    );
    assert!(
        !said.contains(&password),
        "the password is in velo's output"
    );
    let out = sb.run(&["branch", "create", &format!("{p}/dev")]);
    for text in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(text).contains(&password));
    }
    // The branch's server listens on the host's loopback address only...
    let port = sb.port(&format!("{p}/dev"));
    let listening = Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .unwrap();
    let listening = String::from_utf8_lossy(&listening.stdout).into_owned();
    let locals: Vec<&str> = listening
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(locals, [format!("127.0.0.1:{port}")], "{listening}");
    // ...and, though the initdb's pg_hba.conf trusts 127.0.0.1, a TCP connection needs the
    // password (velo's hba_file).
    let no_password = Command::new("psql")
        .args(["-X", "-w", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-c", "SELECT 1"])
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/nonexistent")
        .output()
        .unwrap();
    let refused = String::from_utf8_lossy(&no_password.stderr).into_owned();
    assert!(
        !no_password.status.success(),
        "connected without a password"
    );
    assert!(refused.contains("password"), "{refused}");
    // State and WAL archives are readable by their owner only.
    assert_eq!(mode(sb.home()), 0o700);
    assert_eq!(mode(&sb.home().join("state.json")), 0o600);
    let wal = sb.home().join("wal");
    assert_eq!(mode(&wal) & 0o077, 0, "{} is open to others", wal.display());
    let generation = wal.join(&p).join("main").join("0");
    assert_eq!(mode(&generation) & 0o077, 0);
    // ...and belong to the user the servers run as, who writes them.
    let server_uid = sb.state()["projects"][&p]["pg_uid"].as_u64().unwrap();
    assert_eq!(
        u64::from(std::fs::metadata(&generation).unwrap().uid()),
        server_uid
    );
}
