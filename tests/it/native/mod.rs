//! Tests that only mean something on the native runtime (a `btrfs-native`, `reflink-native`
//! or `copy-native` suite): servers as processes of velo's user, which outlive velo, die
//! with the host, and carry nothing of velo's privileges or secrets.

mod import;
mod processes;
