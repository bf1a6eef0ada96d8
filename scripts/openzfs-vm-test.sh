#!/usr/bin/env bash
# velo without root, on real OpenZFS: boots the Debian 12 VM of ../shared/openzfs-vm (OpenZFS
# 2.1 kernel module, Docker, PostgreSQL 15 clients), copies velo and the test image into it, runs
# `velo setup` as root for the user `tester`, then as `tester` the README walk-through and
# `velo doctor`, and checks that nothing ran as root except velo's sudoers entries. Stops the VM.
#
#   scripts/openzfs-vm-test.sh            # as root on the build host; slow under TCG (see README)
#
# Env: OZVM_SCRIPTS (default ../shared/openzfs-vm beside the repository), OZVM_DIR (default /var/tmp/openzfs-vm),
# VELO_TEST_IMAGE (default velo-test/postgres:15), VELO_BIN (default: build target/debug/velo).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T="${OZVM_SCRIPTS:-$ROOT/../shared/openzfs-vm}"
export OZVM_DIR="${OZVM_DIR:-/var/tmp/openzfs-vm}"
IMAGE="${VELO_TEST_IMAGE:-velo-test/postgres:15}"
SHARE="$OZVM_DIR/share"
start=$(date +%s)
log() { printf '[openzfs-vm-test %s +%ss] %s\n' "$(date -u +%H:%M:%S)" "$(($(date +%s) - start))" "$*" >&2; }

[ -e "$OZVM_DIR/disk.raw" ] || { echo "no VM image in $OZVM_DIR: run $T/build-image.sh first" >&2; exit 1; }

if [ -z "${VELO_BIN:-}" ]; then
	log "building velo"
	(cd "$ROOT" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}" cargo build --quiet)
	VELO_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/velo"
fi
mkdir -p "$SHARE"
strip -o "$SHARE/velo" "$VELO_BIN"
if [ ! -s "$SHARE/velo-image.tar" ] || [ "$(cat "$SHARE/velo-image.id" 2>/dev/null)" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
	log "saving $IMAGE"
	docker save -o "$SHARE/velo-image.tar" "$IMAGE"
	docker image inspect -f '{{.Id}}' "$IMAGE" >"$SHARE/velo-image.id"
fi

if [ -e "$OZVM_DIR/run/ssh_config" ] && "$T/exec.sh" true 2>/dev/null; then
	log "the VM is already up (a previous run's boot outlasted run.sh's timeout): using it"
else
	log "booting the VM"
	OZVM_BOOT_TIMEOUT="${OZVM_BOOT_TIMEOUT:-1800}" "$T/run.sh"
fi
trap 'log "stopping the VM"; "$T/stop.sh" >/dev/null 2>&1 || true' EXIT

log "as root: install velo and the image, take tester's own sudo and docker access away, log sudo"
"$T/exec.sh" bash -s <<EOF
set -euxo pipefail
install -m 0755 /host/velo /usr/local/bin/velo
docker load -q -i /host/velo-image.tar
rm -f /etc/sudoers.d/tester
gpasswd -d tester sudo || true
gpasswd -d tester docker || true
printf 'Defaults logfile=/var/log/sudo-velo.log, loglinelen=0\n' >/etc/sudoers.d/00-log
chmod 0440 /etc/sudoers.d/00-log
visudo -c -q
zpool create tank /dev/vdb
zfs version
EOF

log "tester has no sudo and no docker before setup"
OZVM_USER=tester "$T/exec.sh" bash -s <<'EOF'
set -uxo pipefail
if sudo -n true 2>/dev/null; then echo "FAIL: tester still has sudo"; exit 1; fi
if docker ps >/dev/null 2>&1; then echo "FAIL: tester can still use docker"; exit 1; fi
velo doctor; echo "doctor before setup: exit $? (non-zero expected)"
EOF

log "as root: velo setup --user tester (twice), then its sudo rights"
"$T/exec.sh" bash -s <<'EOF'
set -euxo pipefail
velo setup --user tester --dry-run
velo setup --user tester
velo setup --user tester 2>&1 | tee /tmp/second
grep -q 'Nothing to change: tester is already set up.' /tmp/second
cat /etc/sudoers.d/velo-tester
stat -c '%a %U' /etc/sudoers.d/velo-tester
cat /etc/velo/config.json
zfs allow tank/velo
sudo -l -U tester
sudo -n -l -U tester /usr/sbin/zfs mount tank/velo/demo
! sudo -n -l -U tester /usr/sbin/zfs mount -a
! sudo -n -l -U tester /usr/sbin/zfs mount tank/velo/demo -a
! sudo -n -l -U tester /usr/sbin/zfs mount tank/other
: >/var/log/sudo-velo.log
zpool history tank | wc -l >/tmp/history-lines
EOF

log "as tester: the walk-through and doctor"
OZVM_USER=tester "$T/exec.sh" bash -s <<'EOF'
set -euxo pipefail
export VELO_READY_TIMEOUT=900s
id
url() { velo branch password "$1" --json | sed -n 's/.*"url": "\(.*\)".*/\1/p'; }
velo doctor --timeout 60s
time velo project create demo --image velo-test/postgres:15
psql "$(url demo/main)" -c "CREATE TABLE users (id serial PRIMARY KEY, name text); INSERT INTO users (name) VALUES ('Alice'), ('Bob'), ('Charlie');"
time velo branch create demo/dev
psql "$(url demo/dev)" -c "INSERT INTO users (name) VALUES ('Dave'), ('Eve'); DELETE FROM users WHERE name = 'Bob';"
[ "$(psql -At "$(url demo/dev)" -c 'SELECT string_agg(name, $$,$$ ORDER BY name) FROM users')" = "Alice,Charlie,Dave,Eve" ]
[ "$(psql -At "$(url demo/main)" -c 'SELECT string_agg(name, $$,$$ ORDER BY name) FROM users')" = "Alice,Bob,Charlie" ]
time velo branch reset demo/dev
[ "$(psql -At "$(url demo/dev)" -c 'SELECT string_agg(name, $$,$$ ORDER BY name) FROM users')" = "Alice,Bob,Charlie" ]
time velo snapshot create demo/main --label before-migration
velo snapshot list
velo status
ls -la ~/.velo/wal/demo/main/0 | head -5
getfacl -p ~/.velo/wal/demo/main/0 2>/dev/null || true
time velo doctor --timeout 60s
time velo branch delete demo/dev
time velo project delete demo
[ -z "$(zfs list -H -o name -r tank/velo | grep -v '^tank/velo$')" ]
[ -z "$(docker ps -aq --filter label=dev.velo.managed)" ]
EOF

log "as root: what ran as root through sudo, and who ran the ZFS changes"
"$T/exec.sh" bash -s <<'EOF'
set -euo pipefail
echo "--- sudo log"
cat /var/log/sudo-velo.log
cmds=$(grep -o 'COMMAND=.*' /var/log/sudo-velo.log || true)
echo "--- commands run through sudo: $(printf '%s\n' "$cmds" | grep -c . || true)"
# `sudo -l` (velo doctor asks whether its rule is there) runs nothing and is logged as `list`.
bad=$(printf '%s\n' "$cmds" | grep -Ev '^COMMAND=list( |$)' | grep -Ev '^COMMAND=/usr/sbin/zfs (mount|unmount) tank/velo/[a-z][a-z0-9-]*(/[a-z][a-z0-9-]*\.[0-9]+)?$' | grep . || true)
if [ -n "$bad" ]; then echo "FAIL: sudo ran other commands:"; echo "$bad"; exit 1; fi
if grep -q 'command not allowed\|incorrect password\|a password is required' /var/log/sudo-velo.log; then echo "FAIL: a refused sudo call"; exit 1; fi
# After the audit: this probe is itself a refused sudo call.
if runuser -u tester -- sudo -n true 2>/dev/null; then echo "FAIL: tester has general sudo"; exit 1; fi
echo "--- ZFS changes since setup, with the user that made them"
skip=$(cat /tmp/history-lines)
zpool history -l tank | tail -n +"$skip" | grep -E ' zfs (create|clone|snapshot|destroy)' | tee /tmp/changes
if grep -v 'user 1000 (tester)' /tmp/changes | grep -q .; then echo "FAIL: a ZFS change not made by tester"; exit 1; fi
[ -s /tmp/changes ]
echo "--- undo"
velo setup --undo --user tester
[ ! -e /etc/sudoers.d/velo-tester ] && [ ! -e /etc/velo/config.json ]
EOF
log "PASS: velo ran as tester with ZFS delegation and its sudoers entry only"
