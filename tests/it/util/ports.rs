//! Each sandbox's own block of ports, given to velo as `VELO_PORTS`. Tests of several suites
//! run side by side, each in its own velo home; from one shared range, a branch whose server
//! is down for a moment (a rollback, a restart) could find its port taken by another test's
//! new branch. A block is held by an `flock` on a file named by its first port, so it is free
//! again when its holder ends, however it ends.

use std::fs::File;
use std::ops::RangeInclusive;

use fs4::FileExt;

const DIR: &str = "/run/velo-rig-ports";
/// Below the kernel's ephemeral ports (32768 on), which clients' connections use.
const FIRST: u16 = 20000;
const LAST: u16 = 32767;
/// More than any test's branches in one home.
const BLOCK: u16 = 40;

pub struct PortBlock {
    range: RangeInclusive<u16>,
    _lock: File,
}

impl PortBlock {
    pub fn take() -> PortBlock {
        use std::os::unix::fs::PermissionsExt;
        // Root's alone: another user who could open the files could hold every block.
        std::fs::create_dir_all(DIR).unwrap_or_else(|e| panic!("create {DIR}: {e}"));
        std::fs::set_permissions(DIR, std::fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("chmod {DIR}: {e}"));
        let blocks = (LAST - FIRST + 1) / BLOCK;
        let start = rand::random_range(0..blocks);
        for i in 0..blocks {
            let lo = FIRST + (start + i) % blocks * BLOCK;
            let path = format!("{DIR}/{lo}");
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {path}: {e}"));
            if FileExt::try_lock(&file).is_ok() {
                return PortBlock {
                    range: lo..=lo + BLOCK - 1,
                    _lock: file,
                };
            }
        }
        panic!("every block of test ports in {FIRST}-{LAST} is held");
    }

    pub fn range(&self) -> RangeInclusive<u16> {
        self.range.clone()
    }

    /// The block as `VELO_PORTS` takes it.
    pub fn env(&self) -> String {
        format!("{}-{}", self.range.start(), self.range.end())
    }
}
