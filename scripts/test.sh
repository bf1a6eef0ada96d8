#!/usr/bin/env bash
# The one "run all tests" command (CI runs it through .ci/run), as root:
#   1. scripts/rig-up.sh   in the background (packages, zfs-fuse + pool, dockerd, postgres
#                           images, btrfs/xfs mounts, the test user velo-ci, PostgreSQL 14-18,
#                           a local registry), while the build, which needs none of it, runs:
#   2. cargo fmt --check; cargo build, then scripts/openzfs-vm-test.sh in the background (velo
#      as a non-root user on real OpenZFS in a VM: the slowest part, so it overlaps all the
#      rest; VELO_TEST_VM=0 skips it); cargo clippy -D warnings, cargo test --lib --bins, and
#      the build of the integration tests (tests/it);
#   3. scripts/rig-down.sh (drop what an earlier run left: velo-*/velo_* containers, the
#                           $VELO_TEST_POOL/velo tree, the contents of velo-ci's directories)
#                           -- only in CI (CI=true) or with VELO_RIG_CLEAN=1, so a developer's
#                           concurrent test run is not wiped;
#   4. the integration suites, all at once: they use other storage, servers and users, so
#      they cannot disturb each other (tests that stop the ZFS or Docker daemons hold the rig
#      alone among ZFS and Docker tests, which the native suites do not use):
#        suite           VELO_TEST_BACKEND  runs                        as
#        zfs-docker      zfs-docker         every:: zfs_docker:: once:: root
#        btrfs-native    btrfs-native       every:: native::            velo-ci
#        reflink-native  reflink-native     every::                     velo-ci
#        copy-native     copy-native        every::{branches,history}   velo-ci
#        versions        (each test's own)  versions::                  root and velo-ci
#      with PostgreSQL $VELO_TEST_PG (default 17); `versions` runs 14, 15, 16 and 18. copy
#      runs only what its copies could get wrong: it shares every other path with reflink.
#      Each suite writes $VELO_TEST_LOGS/<suite>.log (default target/test-logs); a table of
#      results and times closes the run. VELO_TEST_SUITES="zfs-docker versions" runs only
#      those; VELO_TEST_THREADS_<SUITE> (e.g. VELO_TEST_THREADS_COPY_NATIVE=1) sets a
#      suite's test threads.
# With arguments, step 4 is instead one `cargo test --test it <arguments>` on VELO_TEST_BACKEND
# (default zfs-docker): `scripts/test.sh readme_walkthrough`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export VELO_TEST_POOL="${VELO_TEST_POOL:-velotest}"
export VELO_TEST_PG="${VELO_TEST_PG:-17}"
# What rig-up makes besides (scripts/rig/env.sh): the test user's private directories on
# btrfs, xfs and ext4, PostgreSQL 14-18 binaries (<root>/<major>/bin) and the local registry.
# shellcheck source=rig/env.sh
. scripts/rig/env.sh
export VELO_TEST_BTRFS_DIR="$RIG_BTRFS_DIR"
export VELO_TEST_XFS_DIR="$RIG_XFS_DIR"
export VELO_TEST_EXT4_DIR="$RIG_EXT4_DIR"
export VELO_TEST_USER="$RIG_TEST_USER"
export VELO_PG_ROOT="$RIG_PG_ROOT"
export VELO_TEST_REGISTRY="$RIG_REGISTRY"

LOGS="${VELO_TEST_LOGS:-$ROOT/target/test-logs}"
mkdir -p "$LOGS"
RUN_START=$SECONDS
step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - RUN_START))" "$*" >&2; }

# Each part's wall time, for the closing table.
declare -A COST=()
timed() { # name command...
	local name=$1 start=$SECONDS
	shift
	"$@"
	COST[$name]=$((SECONDS - start))
}

step "rig-up (in the background; log: $LOGS/rig-up.log)"
rig_start=$SECONDS
scripts/rig-up.sh >"$LOGS/rig-up.log" 2>&1 &
rig_pid=$!
# Never leave rig-up running behind an early exit (a clippy error, say).
trap 'wait "$rig_pid" 2>/dev/null || true' EXIT

step "cargo fmt --check"
cargo fmt --version >/dev/null 2>&1 || { echo "rustfmt is missing (rustup component add rustfmt)" >&2; exit 1; }
timed fmt cargo fmt --all -- --check

# The non-root run on real OpenZFS, in a VM under software emulation: the slowest part, so it
# starts as soon as velo is built and overlaps everything after (its log: openzfs-vm.log).
# It builds the VM image when it is missing (once per machine). VELO_TEST_VM=0 skips it.
vm_pid=
if [ "${VELO_TEST_VM:-1}" != 0 ] && [ $# -eq 0 ]; then
	step "cargo build (velo, for the OpenZFS VM run)"
	timed build-velo cargo build --quiet
	step "OpenZFS VM run (in the background; log: $LOGS/openzfs-vm.log)"
	vm_start=$SECONDS
	VELO_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/velo" \
		scripts/openzfs-vm-test.sh >"$LOGS/openzfs-vm.log" 2>&1 &
	vm_pid=$!
	trap 'wait "$rig_pid" 2>/dev/null || true; [ -z "$vm_pid" ] || wait "$vm_pid" 2>/dev/null || true' EXIT
fi

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --version >/dev/null 2>&1 || { echo "clippy is missing (rustup component add clippy)" >&2; exit 1; }
timed clippy cargo clippy --all-targets -- -D warnings

unit_tests() {
	cargo test --lib --bins 2>&1 | tee "$LOGS/unit.log"
	return "${PIPESTATUS[0]}"
}
step "cargo test --lib --bins"
timed unit unit_tests

build_it() { # sets IT, the integration test binary
	local out
	out=$(cargo test --test it --no-run 2>&1) || { echo "$out" >&2; return 1; }
	echo "$out" >&2
	IT=$(sed -n 's|^ *Executable tests/it/main.rs (\(.*\))$|\1|p' <<<"$out")
	[ -x "$IT" ] || { echo "no integration test binary was built" >&2; return 1; }
}
step "build the integration tests"
timed build build_it

step "waiting for rig-up"
rig_status=0
wait "$rig_pid" || rig_status=$?
COST[rig-up]=$((SECONDS - rig_start))
cat "$LOGS/rig-up.log" >&2
[ "$rig_status" = 0 ] || { echo "rig-up failed (exit $rig_status)" >&2; exit 1; }

if [ "${VELO_RIG_CLEAN:-}" = 1 ] || { [ "${CI:-}" = true ] && [ "${VELO_RIG_CLEAN:-}" != 0 ]; }; then
	step "rig-down (leftovers of earlier runs)"
	scripts/rig-down.sh
fi

if [ $# -gt 0 ]; then
	step "cargo test --test it $* (VELO_TEST_BACKEND=${VELO_TEST_BACKEND:-zfs-docker})"
	exec cargo test --test it "$@"
fi

# name, backend, default test threads, filters
SUITES=(
	"zfs-docker zfs-docker 3 every:: zfs_docker:: once::"
	"btrfs-native btrfs-native 2 every:: native::"
	"reflink-native reflink-native 2 every::"
	"copy-native copy-native 2 every::branches every::history"
	"versions zfs-docker 2 versions::"
)
wanted="${VELO_TEST_SUITES:-zfs-docker btrfs-native reflink-native copy-native versions}"

run_suite() { # name backend threads filters...
	local name=$1 backend=$2 threads=$3 start=$SECONDS status=0
	shift 3
	local var="VELO_TEST_THREADS_${name//-/_}"
	var="${var^^}"
	VELO_TEST_BACKEND="$backend" RUST_TEST_THREADS="${!var:-$threads}" \
		"$IT" "$@" >"$LOGS/$name.log" 2>&1 || status=$?
	echo "$status $((SECONDS - start))" >"$LOGS/$name.status"
}

step "integration suites: $wanted (logs: $LOGS/<suite>.log)"
declare -A PIDS=() NAMES=()
for suite in "${SUITES[@]}"; do
	read -r name backend threads filters <<<"$suite"
	[[ " $wanted " == *" $name "* ]] || continue
	rm -f "$LOGS/$name.status"
	# shellcheck disable=SC2086 # the filters are words
	run_suite "$name" "$backend" "$threads" $filters &
	PIDS[$name]=$!
	NAMES[$!]=$name
done
for _ in "${!PIDS[@]}"; do
	wait -n -p done_pid "${!NAMES[@]}" || true
	name=${NAMES[$done_pid]}
	# Only the suites still running are waited for next (bash says "no such job" otherwise).
	unset "NAMES[$done_pid]"
	read -r rc secs <"$LOGS/$name.status"
	step "$name: $([ "$rc" = 0 ] && echo ok || echo FAILED) in $secs s"
done

vm_status=
if [ -n "$vm_pid" ]; then
	step "waiting for the OpenZFS VM run"
	vm_status=0
	wait "$vm_pid" || vm_status=$?
	COST[openzfs-vm]=$((SECONDS - vm_start))
	step "openzfs-vm: $([ "$vm_status" = 0 ] && echo ok || echo FAILED) in ${COST[openzfs-vm]} s"
fi

# The closing table: each part's wall time, and the tests of each suite.
tests_in() { # log -> "passed failed ignored", summed over its `test result:` lines
	awk '/^test result:/ { for (i = 1; i <= NF; i++) {
			if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^ignored/) g += $(i-1) } }
		END { printf "%d %d %d\n", p, f, g }' "$1"
}
row() { printf '%-16s %8s %8s %8s %8s %s\n' "$@" >&2; }
status=0
read -r total_p total_f _ <<<"$(tests_in "$LOGS/unit.log")"
row part seconds passed failed ignored ""
for part in rig-up fmt build-velo clippy unit build; do
	[ -n "${COST[$part]:-}" ] || continue
	if [ "$part" = unit ]; then
		read -r p f g <<<"$(tests_in "$LOGS/unit.log")"
		row "$part" "${COST[$part]}" "$p" "$f" "$g" ""
	else
		row "$part" "${COST[$part]}" - - - ""
	fi
done
for suite in "${SUITES[@]}"; do
	read -r name _ <<<"$suite"
	[ -n "${PIDS[$name]:-}" ] || continue
	read -r rc secs <"$LOGS/$name.status"
	read -r p f g <<<"$(tests_in "$LOGS/$name.log")"
	row "$name" "$secs" "$p" "$f" "$g" "$([ "$rc" = 0 ] || echo "FAILED: $LOGS/$name.log")"
	total_p=$((total_p + p))
	total_f=$((total_f + f))
	if [ "$rc" != 0 ]; then
		status=1
		grep -E '^test .* FAILED$|panicked at' "$LOGS/$name.log" >&2 || true
	fi
done
if [ -n "$vm_status" ]; then
	row openzfs-vm "${COST[openzfs-vm]}" - - - "$([ "$vm_status" = 0 ] || echo "FAILED: $LOGS/openzfs-vm.log")"
	if [ "$vm_status" != 0 ]; then
		status=1
		tail -n 30 "$LOGS/openzfs-vm.log" >&2
	fi
fi
row "whole run" "$((SECONDS - RUN_START))" "" "" "" ""
echo "velo: $total_p passed, $total_f failed"
exit "$status"
