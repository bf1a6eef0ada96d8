//! velo's integration tests: one binary, the real `velo` against real storage (ZFS, Btrfs,
//! XFS with reflinks, ext4), real servers (Docker containers, the host's PostgreSQL) and
//! PostgreSQL 14 to 18, on the rig `scripts/rig-up.sh` prepares. `scripts/test.sh` runs
//! each module where it holds:
//!
//! - `every`: on every backend (`VELO_TEST_BACKEND`: zfs-docker, btrfs-native,
//!   reflink-native, copy-native), with the suite's major (`VELO_TEST_PG`, default 17);
//! - `zfs_docker`, `native`: only on that stack;
//! - `versions`: a short suite per major and runtime, whatever the suite's;
//! - `once`: whatever the backend, once.

mod every;
mod native;
mod once;
mod util;
mod versions;
mod zfs_docker;
