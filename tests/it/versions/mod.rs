//! The short suite on every supported PostgreSQL major besides the suite's own (17, which
//! the whole suite covers): project create, branch create and reset, a snapshot of the
//! running main and a restore, point-in-time recovery, and a kill -9 part-way through a
//! reset; on Docker (`velo-test/postgres:<major>` on ZFS) and on the native runtime (the
//! rig's binaries of that major on Btrfs). PostgreSQL 14 also takes a reflink snapshot of a
//! running server, which goes through its older backup API (`src/pgversion.rs`).

use std::thread::sleep;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};

use crate::util::{Backend, Sandbox};

fn short_suite(backend: Backend, major: u32) {
    let sb = Sandbox::on(backend, major);
    let p = sb.create_project("v");
    let (main, dev) = (format!("{p}/main"), format!("{p}/dev"));
    let version: u32 = sb.sql(&main, "SHOW server_version_num").parse().unwrap();
    assert_eq!(version / 10000, major, "main runs PostgreSQL {version}");
    sb.sql(
        &main,
        "CREATE TABLE users (id serial PRIMARY KEY, name text); \
         INSERT INTO users (name) VALUES ('Alice'), ('Bob')",
    );

    sb.ok(&["branch", "create", &dev]);
    sb.sql(&dev, "INSERT INTO users (name) VALUES ('Dev')");
    assert_eq!(sb.users(&dev), "Alice,Bob,Dev");
    sb.ok(&["branch", "reset", &dev]);
    assert_eq!(sb.users(&dev), "Alice,Bob");

    // A snapshot of the running main (on reflink and copy storage: under the backup API),
    // then a change to undo.
    sb.ok(&["snapshot", "create", &main, "--label", "before"]);
    sleep(Duration::from_millis(1100));
    sb.sql(&main, "INSERT INTO users (name) VALUES ('Carol')");
    sleep(Duration::from_millis(1100));
    let between = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    sleep(Duration::from_millis(1100));
    sb.sql(&main, "DELETE FROM users WHERE name = 'Alice'");
    sb.ok(&["branch", "create", &format!("{p}/pitr"), "--pitr", &between]);
    assert_eq!(sb.users(&format!("{p}/pitr")), "Alice,Bob,Carol");
    sb.ok(&["branch", "restore", &main, "before"]);
    assert_eq!(sb.users(&main), "Alice,Bob");

    // Killed while the reset's new server starts: the next command puts the branch back.
    sb.sql(&dev, "INSERT INTO users (name) VALUES ('Kept')");
    sb.paused("start", &["branch", "reset", &dev]).kill9();
    let out = sb.run(&["branch", "list", &p]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.contains("rolling it back"),
        "{said}"
    );
    let open = sb.state()["journal"].clone();
    assert!(
        open.as_array().is_none_or(Vec::is_empty),
        "the roll-back left {open}; it said:\n{said}"
    );
    sb.assert_consistent(&p);
    sb.ok(&["branch", "start", &dev]);
    assert_eq!(sb.users(&dev), "Alice,Bob,Kept");

    sb.ok(&["project", "delete", &p, "--force"]);
    assert!(sb.volumes(&p).is_empty() && sb.servers(&p).is_empty());
}

/// One module per major: `versions::pg14::zfs_docker`, `versions::pg14::btrfs_native`, ….
macro_rules! majors {
    ($($module:ident = $major:literal;)*) => {$(
        mod $module {
            use super::*;

            #[test]
            fn zfs_docker() {
                short_suite(Backend::ZfsDocker, $major);
            }

            #[test]
            fn btrfs_native() {
                short_suite(Backend::BtrfsNative, $major);
            }
        }
    )*};
}

majors! {
    pg14 = 14;
    pg15 = 15;
    pg16 = 16;
    pg18 = 18;
}

#[test]
fn pg14_reflink_snapshot_of_a_running_server() {
    short_suite(Backend::ReflinkNative, 14);
}
