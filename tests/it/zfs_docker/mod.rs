//! Tests that only mean something on ZFS with Docker (`VELO_TEST_BACKEND=zfs-docker`):
//! the daemons restarting, set-up and doctor of ZFS and Docker, Docker's images and
//! containers, ZFS's own accounting and properties, and state left by velo 0.1, which knew
//! only ZFS and Docker.

mod daemons;
mod docker;
mod host;
mod import;
mod migration;
mod zfs;
