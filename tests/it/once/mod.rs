//! Tests that hold whatever the suite's backend, run once (by the zfs-docker suite): the
//! command line, the storage backends through velo's library on the rig's file systems, and
//! velo's defaults for a new non-root user, who chooses nothing.

mod cli;
mod conventions;
mod default_user;
mod storage;
