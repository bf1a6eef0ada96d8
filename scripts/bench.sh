#!/usr/bin/env bash
# velo's benchmark (docs/benchmarks.md): one command that reproduces the tables.
#   1. scripts/rig-up.sh for the test image, and again for a bench pool of its own
#      ($VELO_BENCH_POOL, default velobench: a sparse $VELO_BENCH_POOL_SIZE file, default 40G,
#      compression on), so the 8 GiB test pool `velotest` is never touched;
#   2. file systems of its own for the native backends, set up here if missing: sparse loop
#      images $VELO_RIG_DIR/bench-{btrfs,xfs,ext4}.img ($VELO_BENCH_FS_SIZE, default 40G;
#      btrfs mounted with user_subvol_rm_allowed, xfs made with reflink=1) mounted at
#      $VELO_RIG_DIR/mnt/bench-{btrfs,xfs,ext4}, each with a directory of the test user
#      (velo-ci), whose velo home and data live there; the tests' own images are never used;
#   3. velo in release mode (what `cargo install --path .` builds), copied to the output
#      directory so that a concurrent build cannot change it mid-run;
#   4. benches/bench/ (cargo bench), which prints each figure and writes
#      $VELO_BENCH_OUT/bench.json and bench.md (default target/bench/).
# Arguments go to the bench (docs/benchmarks.md lists them): --quick, --parts, --backends,
# --sizes, --backend-sizes, --import-size, --runs, --before FILE, --keep-data, ...
# Runs as root, like the tests. Not part of scripts/test.sh or CI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"

log() { printf '[bench.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (ZFS, Docker and the loop mounts need it)"

POOL="${VELO_BENCH_POOL:-velobench}"
IMAGE="${VELO_TEST_IMAGE:-velo-test/postgres:15}"
OUT="${VELO_BENCH_OUT:-$ROOT/target/bench}"
HOME_DIR="${VELO_BENCH_HOME:-/var/lib/velo-rig/bench-home}"

[ "$POOL" != "${VELO_TEST_POOL:-velotest}" ] || die "use a pool of its own, not the test pool"

VELO_TEST_POOL="$POOL" VELO_RIG_POOL_SIZE="${VELO_BENCH_POOL_SIZE:-40G}" VELO_TEST_IMAGE="$IMAGE" scripts/rig-up.sh
# zfs-fuse has no lz4; `on` is its default algorithm. pgbench data compresses well, so the
# 5 GB database fits a pool file on a modest disk.
zfs set compression=on "$POOL"

# The bench's own file systems, made with the rig's helpers (scripts/rig/storage.sh) under
# other names. A copy at 5 GB holds the data, its WAL archive, a snapshot and a branch, and a
# reset makes two more copies before the old ones go: about 30 GB at its peak, hence 40G.
# shellcheck source=rig/env.sh
. scripts/rig/env.sh
# shellcheck disable=SC2034 # read by scripts/rig/storage.sh
RIG_FS_SIZE="${VELO_BENCH_FS_SIZE:-40G}"
# shellcheck disable=SC2034
RIG_BTRFS_IMG="$RIG_DIR/bench-btrfs.img" RIG_BTRFS_MNT="$RIG_DIR/mnt/bench-btrfs"
# shellcheck disable=SC2034
RIG_XFS_IMG="$RIG_DIR/bench-xfs.img" RIG_XFS_MNT="$RIG_DIR/mnt/bench-xfs"
# shellcheck disable=SC2034
RIG_EXT4_IMG="$RIG_DIR/bench-ext4.img" RIG_EXT4_MNT="$RIG_DIR/mnt/bench-ext4"
# shellcheck source=rig/storage.sh
. scripts/rig/storage.sh
id -u "$RIG_TEST_USER" >/dev/null 2>&1 || die "user $RIG_TEST_USER is missing (scripts/rig-up.sh makes it)"
ensure_dir "$RIG_DIR/mnt" root root 755
for fs in btrfs xfs ext4; do
	ensure_fs "$fs"
	fs_params "$fs"
	# shellcheck disable=SC2154 # fs_params sets mnt
	ensure_dir "$mnt" root root 755
	ensure_dir "$mnt/$RIG_TEST_USER" "$RIG_TEST_USER" "$(id -gn "$RIG_TEST_USER")" 700
done

cargo build --release --bin velo
mkdir -p "$OUT"
install -m 755 "${CARGO_TARGET_DIR:-$ROOT/target}/release/velo" "$OUT/velo"
# The "before" column: docs/benchmarks.md as of $VELO_BENCH_BEFORE_REV, by default the last
# full run before issue 13's work (a --before of the caller's own comes later and wins).
BEFORE_REV="${VELO_BENCH_BEFORE_REV:-0c421ca}"
git show "$BEFORE_REV:docs/benchmarks.md" >"$OUT/before.md" ||
	die "cannot read docs/benchmarks.md of $BEFORE_REV (set VELO_BENCH_BEFORE_REV)"
start=$SECONDS
cargo bench --bench bench -- \
	--velo "$OUT/velo" --commit "$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo +changes)" \
	--before "$OUT/before.md" \
	--home "$HOME_DIR" --pool "$POOL" --image "$IMAGE" --out "$OUT" \
	--native-user "$RIG_TEST_USER" \
	--btrfs-dir "$RIG_BTRFS_MNT/$RIG_TEST_USER" \
	--reflink-dir "$RIG_XFS_MNT/$RIG_TEST_USER" \
	--copy-dir "$RIG_EXT4_MNT/$RIG_TEST_USER" "$@"
log "the bench took $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s with its build (the run alone: above); the tables are in $OUT/bench.md"
