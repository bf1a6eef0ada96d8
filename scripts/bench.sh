#!/usr/bin/env bash
# velo's benchmark (docs/benchmarks.md): one command that reproduces the table.
#   1. scripts/rig-up.sh for the test image, and again for a bench pool of its own
#      ($VELO_BENCH_POOL, default velobench: a sparse $VELO_BENCH_POOL_SIZE file, default 40G,
#      compression on), so the 8 GiB test pool `velotest` is never touched;
#   2. velo in release mode (what `cargo install --path .` builds);
#   3. benches/bench.rs (cargo bench), which prints each figure and writes
#      $VELO_BENCH_OUT/bench.json and bench.md (default target/bench/).
# Arguments go to the bench: --quick (a small run, about a minute), --sizes 100M,1G,5G,
# --runs 5, --alt-runs-large 1, --list 1,10,50, --concurrency 10,20, --pgbench-secs 10,
# --keep-data (keep the pgbench projects for the next run, which then skips pgbench -i).
# Runs as root, like the tests. Not part of scripts/test.sh or CI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

POOL="${VELO_BENCH_POOL:-velobench}"
IMAGE="${VELO_TEST_IMAGE:-velo-test/postgres:15}"
OUT="${VELO_BENCH_OUT:-$ROOT/target/bench}"
HOME_DIR="${VELO_BENCH_HOME:-/var/lib/velo-rig/bench-home}"

[ "$POOL" != "${VELO_TEST_POOL:-velotest}" ] || { echo "bench: use a pool of its own, not the test pool" >&2; exit 1; }

VELO_TEST_POOL="$POOL" VELO_RIG_POOL_SIZE="${VELO_BENCH_POOL_SIZE:-40G}" VELO_TEST_IMAGE="$IMAGE" scripts/rig-up.sh
# zfs-fuse has no lz4; `on` is its default algorithm. pgbench data compresses well, so the
# 5 GB database fits a pool file on a modest disk.
zfs set compression=on "$POOL"

cargo build --release --bin velo
cargo bench --bench bench -- \
	--velo "${CARGO_TARGET_DIR:-$ROOT/target}/release/velo" \
	--home "$HOME_DIR" --pool "$POOL" --image "$IMAGE" --out "$OUT" "$@"
