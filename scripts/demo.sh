#!/usr/bin/env bash
# The README's first branch, on a throwaway rig: a project with a users table, a branch that
# diverges, a reset that brings it back, a snapshot and a restore. Run as root on a Debian 12
# host:
#   scripts/demo.sh               # the embedded default: as the unprivileged user velo-ci, no
#                                 # sudo, no docker; storage and server picked by velo (Btrfs
#                                 # here, the host's PostgreSQL binaries)
#   scripts/demo.sh --zfs-docker  # as root, on ZFS (zfs-fuse) and Docker
# It installs what it needs first (scripts/rig-up.sh: PostgreSQL binaries, file systems, the
# user, zfs-fuse, dockerd, images), builds velo, and uses a private VELO_HOME that it deletes at
# the end. VELO_BIN names a velo binary to use instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/rig/env.sh
. scripts/rig/env.sh

mode=embedded
case "${1:-}" in
"") ;;
--zfs-docker) mode=zfs-docker ;;
*)
	echo "usage: scripts/demo.sh [--zfs-docker]" >&2
	exit 2
	;;
esac

scripts/rig-up.sh >/dev/null
if [ -z "${VELO_BIN:-}" ]; then
	cargo build --release --quiet
	VELO_BIN="${CARGO_TARGET_DIR:-target}/release/velo"
fi
bin=$(mktemp -d)
install -m 0755 "$VELO_BIN" "$bin/velo"
chmod 0755 "$bin"

# The walk-through, run by the demo's user with `velo` on its PATH and VELO_HOME set.
walkthrough() {
	cat <<'EOF'
set -euo pipefail
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$@"; "$@"; }
names() { velo branch psql "$1" -- -X -q -A -t -v ON_ERROR_STOP=1 -c "SELECT string_agg(name, ', ' ORDER BY id) FROM users"; }
trap 'velo project delete demo --force >/dev/null 2>&1 || true' EXIT
run velo project create demo $CREATE_ARGS
run velo use demo
run velo branch psql main -- -X -q -c "CREATE TABLE users (id serial PRIMARY KEY, name text);
    INSERT INTO users (name) VALUES ('Alice'), ('Bob'), ('Charlie');"
run velo branch create dev --ttl 8h
run velo branch psql dev -- -X -q -c "INSERT INTO users (name) VALUES ('Dave'), ('Eve');
    DELETE FROM users WHERE name = 'Bob';"
echo "main: $(names main)"
echo "dev:  $(names dev)"
run velo branch reset dev
echo "dev:  $(names dev)"
run velo snapshot create main --label before-drop
run velo branch psql main -- -X -q -c 'DROP TABLE users'
run velo branch restore main before-drop
echo "main: $(names main)"
run velo status
run velo branch delete dev
run velo project delete demo
EOF
}

if [ "$mode" = embedded ]; then
	home="$RIG_BTRFS_DIR/demo.$$"
	# The home keeps velo's prepared cluster, a read-only Btrfs snapshot (inode 256): made
	# writable, it goes with the rest.
	trap 'find "$home" -xdev -type d -inum 256 -exec btrfs property set -ts {} ro false \; 2>/dev/null
		rm -rf "$bin" "$home"' EXIT
	walkthrough | runuser -u "$RIG_TEST_USER" -- env -i HOME="$RIG_BTRFS_DIR" \
		PATH="$bin:/usr/bin:/bin" VELO_HOME="$home" VELO_PG_ROOT="$RIG_PG_ROOT" \
		CREATE_ARGS="" TERM="${TERM:-dumb}" bash -s
else
	home=$(mktemp -d)
	trap 'rm -rf "$bin" "$home"' EXIT
	walkthrough | env PATH="$bin:$PATH" VELO_HOME="$home" \
		CREATE_ARGS="--pool ${VELO_TEST_POOL:-velotest} --image velo-test/postgres:17" bash -s
fi
