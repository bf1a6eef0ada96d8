#!/usr/bin/env bash
# The one "run all tests" command (CI runs it through .ci/run):
#   1. scripts/rig-up.sh   (packages, zfs-fuse + pool, dockerd, postgres image)
#   2. scripts/rig-down.sh (drop what an earlier run left: velo-*/velo_* containers,
#                           the $VELO_TEST_POOL/velo tree) -- only in CI (CI=true) or with
#                           VELO_RIG_CLEAN=1, so a developer's concurrent test run is not wiped
#   3. cargo fmt --check, cargo clippy -D warnings, cargo test
# Runs as root (zfs and docker need it). Extra arguments go to `cargo test`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export VELO_TEST_POOL="${VELO_TEST_POOL:-velotest}"
export VELO_TEST_IMAGE="${VELO_TEST_IMAGE:-velo-test/postgres:15}"
# The file systems the storage backends are tested on (tests/it/storage.rs).
export VELO_TEST_BTRFS_DIR="${VELO_TEST_BTRFS_DIR:-/var/lib/velo-rig/mnt/btrfs}"
export VELO_TEST_XFS_DIR="${VELO_TEST_XFS_DIR:-/var/lib/velo-rig/mnt/xfs}"
export VELO_TEST_EXT4_DIR="${VELO_TEST_EXT4_DIR:-/var/lib/velo-rig/ext4}"

step() { printf '\n==> %s\n' "$*" >&2; }

step "rig-up"
scripts/rig-up.sh

if [ "${VELO_RIG_CLEAN:-}" = 1 ] || { [ "${CI:-}" = true ] && [ "${VELO_RIG_CLEAN:-}" != 0 ]; }; then
	step "rig-down (leftovers of earlier runs)"
	scripts/rig-down.sh
fi

step "cargo fmt --check"
cargo fmt --version >/dev/null 2>&1 || { echo "rustfmt is missing (rustup component add rustfmt)" >&2; exit 1; }
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --version >/dev/null 2>&1 || { echo "clippy is missing (rustup component add clippy)" >&2; exit 1; }
cargo clippy --all-targets -- -D warnings

step "cargo test (VELO_TEST_POOL=$VELO_TEST_POOL VELO_TEST_IMAGE=$VELO_TEST_IMAGE)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
	END { printf "velo: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
