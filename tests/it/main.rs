//! velo's integration tests: one binary, the real `velo` against real ZFS, Docker and
//! PostgreSQL, and the storage backends on real Btrfs, XFS and ext4 (prepared by
//! `scripts/rig-up.sh`; run them with `scripts/test.sh`).

mod attacks;
mod branches;
mod cli;
mod concurrency;
mod crash;
mod drift;
mod failures;
mod hardening;
mod history;
mod host;
mod import;
mod lifetimes;
mod source;
mod storage;
mod util;
