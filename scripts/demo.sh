#!/usr/bin/env bash
# The README walk-through on a throwaway rig: a project with a users table, a branch that
# diverges, and a reset that brings it back. Run as root on a Debian 12 host:
#   scripts/demo.sh
# It sets up ZFS (zfs-fuse on a file-backed pool), Docker and a local PostgreSQL image first
# (scripts/rig-up.sh), builds velo, and uses a private VELO_HOME that it deletes at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/rig-up.sh
cargo build --release --quiet
velo() { target/release/velo "$@"; }

export VELO_HOME
VELO_HOME=$(mktemp -d)
pool=${VELO_TEST_POOL:-velotest}
image=${VELO_TEST_IMAGE:-velo-test/postgres:15}
project=demo$$
cleanup() { velo project delete "$project" --force >/dev/null 2>&1 || true; rm -rf "$VELO_HOME"; }
trap cleanup EXIT

sql() { # sql BRANCH QUERY: psql over the branch's private socket, no password
	velo branch psql "$1" -- -X -q -A -t -v ON_ERROR_STOP=1 -c "$2"
}

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

say velo project create "$project"
velo project create "$project" --pool "$pool" --image "$image"
sql "$project/main" "CREATE TABLE users (id serial PRIMARY KEY, name text);
                     INSERT INTO users (name) VALUES ('Alice'), ('Bob'), ('Charlie');"

say velo branch create "$project/dev"
velo branch create "$project/dev"
sql "$project/dev" "INSERT INTO users (name) VALUES ('Dave'), ('Eve'); DELETE FROM users WHERE name = 'Bob';"
echo "main: $(sql "$project/main" "SELECT string_agg(name, ', ' ORDER BY id) FROM users")"
echo "dev:  $(sql "$project/dev" "SELECT string_agg(name, ', ' ORDER BY id) FROM users")"

say velo branch reset "$project/dev"
velo branch reset "$project/dev"
echo "dev:  $(sql "$project/dev" "SELECT string_agg(name, ', ' ORDER BY id) FROM users")"

say velo status
velo status

say velo branch delete "$project/dev"
velo branch delete "$project/dev"
