//! A hold on the ZFS pool and the Docker daemon, shared by every test process on the machine:
//! shared for ordinary tests, exclusive for tests that disrupt the daemons themselves (stop or
//! restart dockerd or zfs-fuse, export a pool). Tests of the native backends use neither and
//! take no hold.
//!
//! `flock` grants a shared lock while an exclusive one waits, so a steady stream of ordinary
//! tests (several suites at once) could starve an exclusive test until all of them end. A
//! turnstile makes it fair: every taker passes through an exclusive lock on a second file;
//! an exclusive taker keeps it while it waits, so no new test starts until it has its turn.
//! `flock` locks belong to the open file, so two holds in one process exclude each other like
//! two processes do.

use std::fs::File;

use fs4::FileExt;

const RIG_LOCK: &str = "/run/velo-rig-tests.lock";
const TURNSTILE: &str = "/run/velo-rig-tests.turnstile";

fn open(path: &str) -> File {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path}: {e}"))
}

pub struct RigHold {
    _file: File,
}

impl RigHold {
    pub fn take(exclusive: bool) -> RigHold {
        let turnstile = open(TURNSTILE);
        FileExt::lock(&turnstile).expect("pass the rig's turnstile");
        let file = open(RIG_LOCK);
        if exclusive {
            FileExt::lock(&file).expect("lock the rig exclusively");
        } else {
            FileExt::lock_shared(&file).expect("lock the rig shared");
        }
        // Dropping the turnstile lets the next taker in.
        drop(turnstile);
        RigHold { _file: file }
    }
}
