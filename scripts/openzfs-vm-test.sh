#!/usr/bin/env bash
# velo without root, on real OpenZFS: the only place `zfs allow`, sudo mounts and kernel ZFS
# behave as on users' machines. Builds the VM image of ../shared/openzfs-vm when it is missing
# (once per machine, 8-13 min) and reuses it when present, boots it, installs velo, runs
# `velo setup` as root for the user `tester`, then as tester:
#   * the walk-through on ZFS with the native runtime (the guest's PostgreSQL 15): branches,
#     snapshots, restore, point-in-time recovery, WAL, repair, doctor, status, delete;
#   * the same on Docker, with an image the guest builds from its own PostgreSQL (no 366 MB
#     image to copy and load under emulation);
#   * the attacks of docs/security.md that need a non-root user: datasets nested in one's own,
#     links planted where sudo mounts, every argument shape of the sudo rule, a setuid program;
# and finally checks, as root, that only velo's sudo rule ran as root and that tester made
# every ZFS change. Stops the VM.
#
#   scripts/openzfs-vm-test.sh            # as root; slow under software emulation (README)
#
# Env: OZVM_SCRIPTS (default ../shared/openzfs-vm beside the repository or its origin), OZVM_DIR (default
# /var/tmp/openzfs-vm), VELO_BIN (default: build target/debug/velo).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The VM scripts: OZVM_SCRIPTS, else shared/openzfs-vm beside this repository or a directory
# above it, or beside the repository it was cloned from (CI runs a fresh clone of a local one).
vm_scripts() {
	local origin dir
	[ -z "${OZVM_SCRIPTS:-}" ] || { echo "$OZVM_SCRIPTS"; return; }
	origin=$(git -C "$ROOT" config --get remote.origin.url 2>/dev/null || true)
	origin=${origin#file://}
	for dir in "$ROOT/.." "$ROOT/../.." "$ROOT/../../.." ${origin:+"$origin/.."}; do
		[ ! -d "$dir/shared/openzfs-vm" ] || { echo "$dir/shared/openzfs-vm"; return; }
	done
	echo "$ROOT/../shared/openzfs-vm"
}
T="$(vm_scripts)"
export OZVM_DIR="${OZVM_DIR:-/var/tmp/openzfs-vm}"
SHARE="$OZVM_DIR/share"
start=$(date +%s)
log() { printf '[openzfs-vm-test %s +%ss] %s\n' "$(date -u +%H:%M:%S)" "$(($(date +%s) - start))" "$*" >&2; }
# A shell in the guest, as root or tester. The VM's ssh settings give a connection 5 s, but under
# emulation on a loaded host (CI runs the other suites meanwhile) the guest's sshd can take
# longer to answer; a timed-out banner exchange failed a CI run.
in_guest() {
	local user=$1
	shift
	ssh -F "$OZVM_DIR/run/ssh_config" -o ConnectTimeout=180 -o ServerAliveCountMax=12 -l "$user" ozvm -- "$@"
}
guest() { in_guest root bash -s; }
tester() { in_guest tester bash -s; }

[ -d "$T" ] || { echo "no VM scripts at $T (set OZVM_SCRIPTS)" >&2; exit 1; }
if [ ! -e "$OZVM_DIR/disk.raw" ]; then
	log "building the VM image (once per machine)"
	"$T/build-image.sh"
fi

if [ -z "${VELO_BIN:-}" ]; then
	log "building velo"
	(cd "$ROOT" && cargo build --quiet)
	VELO_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/velo"
fi
mkdir -p "$SHARE"
strip -o "$SHARE/velo" "$VELO_BIN"

if [ -e "$OZVM_DIR/run/ssh_config" ] && "$T/exec.sh" true 2>/dev/null; then
	log "the VM is already up: using it"
else
	log "booting the VM"
	OZVM_BOOT_TIMEOUT="${OZVM_BOOT_TIMEOUT:-1800}" "$T/run.sh"
fi
trap 'log "stopping the VM"; "$T/stop.sh" >/dev/null 2>&1 || true' EXIT

log "as root: velo, a pool, a second user, sudo logged, tester without sudo or docker, a small image"
guest <<'EOF'
set -euxo pipefail
install -m 0755 /host/velo /usr/local/bin/velo
rm -f /etc/sudoers.d/tester
gpasswd -d tester sudo || true
gpasswd -d tester docker || true
id other >/dev/null 2>&1 || useradd -m -s /bin/bash other
printf 'Defaults logfile=/var/log/sudo-velo.log, loglinelen=0\n' >/etc/sudoers.d/00-log
chmod 0440 /etc/sudoers.d/00-log
visudo -c -q
zpool list tank >/dev/null 2>&1 || zpool create tank /dev/vdb
zfs version
# An image of the guest's own PostgreSQL 15: its files and the libraries they load, a
# passwd with postgres as uid 70 (as the official alpine images), imported in seconds.
if ! docker image inspect velo-mini/postgres:15 >/dev/null 2>&1; then
	root=/tmp/mini; rm -rf $root; mkdir -p $root/etc $root/tmp $root/run
	chmod 1777 $root/tmp
	bins="/bin/sh /bin/cp /bin/mv /bin/rm /bin/mkdir /bin/chown /bin/cat /usr/bin/cmp /usr/bin/id"
	pg=/usr/lib/postgresql/15
	files=$(printf '%s\n' $bins $pg/bin/postgres $pg/bin/initdb $pg/bin/pg_ctl)
	libs=$(for f in $files; do ldd "$f" | grep -o '/[^ ]*'; done | sort -u)
	tar -cf /tmp/mini.tar --dereference $files $libs $pg/lib /usr/share/postgresql/15 /usr/lib/locale/C.utf8 2>/dev/null
	tar -xf /tmp/mini.tar -C $root
	printf 'root:x:0:0::/root:/bin/sh\npostgres:x:70:70::/var/lib/postgresql:/bin/sh\n' >$root/etc/passwd
	printf 'root:x:0:\npostgres:x:70:\n' >$root/etc/group
	tar -C $root -c . | docker import \
		--change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/bin:/bin' --change 'ENV LANG=C.UTF-8' \
		--change 'VOLUME /var/lib/postgresql/data' - velo-mini/postgres:15
fi
EOF

log "tester has no sudo and no docker before setup"
tester <<'EOF'
set -uxo pipefail
if sudo -n true 2>/dev/null; then echo "FAIL: tester still has sudo"; exit 1; fi
if docker ps >/dev/null 2>&1; then echo "FAIL: tester can still use docker"; exit 1; fi
# Nothing is broken before setup: the default (copy storage, native runtime) needs none.
velo doctor || { echo "FAIL: doctor before setup"; exit 1; }
velo doctor | grep -q 'project create: copy' || { echo "FAIL: the default is not copy+native"; exit 1; }
EOF

log "as root: velo setup --user tester (twice), then its sudo rights and delegation"
guest <<'EOF'
set -euxo pipefail
VELO_ZFS=/tmp/evil velo setup --user tester --dry-run
velo setup --user tester
velo setup --user tester 2>&1 | tee /tmp/second
grep -q 'Nothing to change: tester is already set up.' /tmp/second
rule=/etc/sudoers.d/velo-uid1000
cat $rule
grep -q '^#1000 ALL=(root) NOPASSWD: /usr/sbin/zfs \^mount tank/velo/user\[.\]tester\$' $rule
[ "$(stat -c '%a %U' $rule)" = "440 root" ]
[ "$(stat -c '%a %U %G' /tank/velo/user.tester)" = "750 root tester" ]
[ "$(zfs get -H -o value setuid,devices,exec tank/velo/user.tester | tr '\n' ' ')" = "off off off " ]
zfs allow tank/velo/user.tester
sudo -n -l -U tester /usr/sbin/zfs mount tank/velo/user.tester/demo.main.0
! sudo -n -l -U tester /usr/sbin/zfs mount -a
! sudo -n -l -U tester /usr/sbin/zfs mount tank/velo/user.tester/demo.main.0/x.y.1
! sudo -n -l -U tester /usr/sbin/zfs mount tank/velo/user.other/demo.main.0
: >/var/log/sudo-velo.log
zpool history tank | wc -l >/tmp/history-lines
EOF

log "as tester: the walk-through on ZFS with the native runtime"
tester <<'EOF'
set -euxo pipefail
export VELO_READY_TIMEOUT=900s
url() { velo branch url "$1" --with-password; }
users() { psql -At "$(url "$1")" -c 'SELECT string_agg(name, $$,$$ ORDER BY name) FROM users'; }
velo doctor --timeout 60s
time velo project create demo --runtime native
velo project get demo | grep -q 'zfs'
psql "$(url demo/main)" -c "CREATE TABLE users (id serial PRIMARY KEY, name text); INSERT INTO users (name) VALUES ('Alice'), ('Bob'), ('Charlie');"
time velo branch create demo/dev
psql "$(url demo/dev)" -c "INSERT INTO users (name) VALUES ('Dave'), ('Eve'); DELETE FROM users WHERE name = 'Bob';"
[ "$(users demo/dev)" = "Alice,Charlie,Dave,Eve" ]
[ "$(users demo/main)" = "Alice,Bob,Charlie" ]
time velo branch reset demo/dev
[ "$(users demo/dev)" = "Alice,Bob,Charlie" ]
time velo branch rename demo/dev feature
[ "$(users demo/feature)" = "Alice,Bob,Charlie" ]
zfs list -H -o name tank/velo/user.tester/demo.feature.1
velo branch rename demo/feature dev
time velo snapshot create demo/main --label before-migration
velo snapshot list --json | grep -q '"wal_from": "0000'
psql "$(url demo/main)" -c "INSERT INTO users (name) VALUES ('Frank');"
sleep 2
moment=$(date -u +%Y-%m-%dT%H:%M:%SZ)
sleep 2
psql "$(url demo/main)" -c "DROP TABLE users;"
time velo branch create demo/before-drop --pitr "$moment"
[ "$(users demo/before-drop)" = "Alice,Bob,Charlie,Frank" ]
time velo branch restore demo/main before-migration
[ "$(users demo/main)" = "Alice,Bob,Charlie" ]
velo wal info demo
velo status
time velo repair
time velo doctor --timeout 60s
time velo branch delete demo/dev
time velo project delete demo --force
# Deletes answer first; their data goes in the background (`velo status` lists it meanwhile).
for _ in $(seq 600); do velo status --json | grep -q '"pending": \[\]' && break; sleep 1; done
velo status --json | grep -q '"pending": \[\]'
# Only the prepared cluster stays, for the next project (setup --undo takes it).
[ -z "$(zfs list -H -o name -r tank/velo/user.tester | grep -v -e '^tank/velo/user.tester$' -e '/prepared[.]')" ]
EOF

log "as tester: Docker (tester is in the docker group now)"
tester <<'EOF'
set -euxo pipefail
export VELO_READY_TIMEOUT=900s
url() { velo branch url "$1" --with-password; }
time velo project create dock --runtime docker --image velo-mini/postgres:15
psql "$(url dock/main)" -c "CREATE TABLE t (x int); INSERT INTO t VALUES (1);"
time velo branch create dock/dev
time velo snapshot create dock/main
psql "$(url dock/main)" -c "INSERT INTO t VALUES (2);"
sleep 2; moment=$(date -u +%Y-%m-%dT%H:%M:%SZ); sleep 2
psql "$(url dock/main)" -c "INSERT INTO t VALUES (3);"
time velo branch create dock/then --pitr "$moment"
[ "$(psql -At "$(url dock/then)" -c 'SELECT count(*) FROM t')" = 2 ]
# The archive ACLs, by what uid 70 (the image's postgres) can do (the guest has no getfacl):
# write in its generation's archive, enter but not write above it; others nothing.
as70() { docker run --rm --user 70:70 -v "$1:/d" velo-mini/postgres:15 sh -c "$2"; }
as70 ~/.velo/wal/dock/main/0 ': > /d/.probe && rm /d/.probe'
as70 ~/.velo/wal/dock 'cd /d && ! (: > /d/.probe) 2>/dev/null'
ls -ld ~/.velo/wal/dock/main/0 | grep -q '^d......---+'
time velo project delete dock --force
[ -z "$(docker ps -aq --filter label=dev.velo.managed)" ]
[ -z "$(docker volume ls -q)" ]
EOF

log "as root: what ran as root through sudo, and who made the ZFS changes"
guest <<'EOF'
set -euo pipefail
echo "--- sudo log"
cat /var/log/sudo-velo.log
cmds=$(grep -o 'COMMAND=.*' /var/log/sudo-velo.log || true)
echo "--- commands run through sudo: $(printf '%s\n' "$cmds" | grep -c . || true)"
# `sudo -l` (velo doctor asks whether its rule is there) runs nothing and is logged as `list`.
ok='^COMMAND=/usr/sbin/zfs (mount|unmount) tank/velo/user\.tester(/[a-z][a-z0-9-]*\.[a-z][a-z0-9-]*\.[0-9]+)?$'
bad=$(printf '%s\n' "$cmds" | grep -Ev '^COMMAND=list( |$)' | grep -Ev "$ok" | grep . || true)
if [ -n "$bad" ]; then echo "FAIL: sudo ran other commands:"; echo "$bad"; exit 1; fi
echo "--- ZFS changes since setup, with the user that made them"
skip=$(cat /tmp/history-lines)
zpool history -l tank | tail -n +"$skip" | grep -E ' zfs (create|clone|snapshot|destroy|rename)' | tee /tmp/changes
if grep -v 'user 1000 (tester)' /tmp/changes | grep -q .; then echo "FAIL: a ZFS change not made by tester"; exit 1; fi
[ -s /tmp/changes ]
EOF

log "as tester: the attacks must fail"
tester <<'EOF'
set -uxo pipefail
fail() { echo "FAIL: $*"; exit 1; }
base=tank/velo/user.tester
velo project create atk --runtime native >/dev/null || fail "project create"
main=$base/atk.main.0
mp=/tank/velo/user.tester/atk.main.0
# Nested datasets, by every route: refused.
zfs create $main/x.y.1 && fail "created a dataset inside its own"
zfs clone $main@nope $main/x.y.1 2>/dev/null && fail "cloned into its own dataset"
zfs snapshot $main@s && zfs clone $main@s $main/x.y.1 && fail "cloned into its own dataset"
zfs destroy $main@s
zfs set mountpoint=/etc $main && fail "set a mountpoint"
zfs set setuid=on $main && fail "turned setuid on"
zfs destroy tank/velo/user.tester && fail "destroyed the base"
zfs create tank/velo/user.other.x.1 && fail "created outside its base"
# Renames (delegated for `branch rename`) stay direct children of the base.
zfs rename $main $main/x.y.1 2>/dev/null && fail "renamed into its own dataset"
zfs create $base/atk.side.0 2>/dev/null
zfs rename $main $base/atk.side.0/x.y.1 && fail "renamed into its own dataset"
zfs destroy $base/atk.side.0
zfs rename $main tank/velo/user.other.x.1 && fail "renamed out of its base"
zfs rename $base tank/velo/user.t2 && fail "renamed the base"
# Links where sudo mounts: the base's directory is root's.
ln -s /etc /tank/velo/user.tester/evil.a.1 && fail "planted a link in the base"
# The sudo rule's other shapes.
for args in "mount -a" "mount $main -a" "mount -o remount,exec $main" "mount $main@x" \
	"unmount $base" "mount tank/velo" "mount $main/x.y.1" "set setuid=on $main"; do
	sudo -n /usr/sbin/zfs $args 2>/dev/null && fail "sudo zfs $args"
done
# A setuid program in its own data is nobody else's to run.
cp /bin/sh $mp/velo-sh && chmod 4755 $mp/velo-sh
echo "attacks refused"
EOF
guest <<'EOF'
set -uxo pipefail
runuser -u other -- /tank/velo/user.tester/atk.main.0/velo-sh -c 'id -u' && { echo "FAIL: other ran it"; exit 1; }
runuser -u other -- ls /tank/velo/user.tester && { echo "FAIL: other lists the base"; exit 1; }
# The boot-time mount of everything puts nothing anywhere else (tester's branch server still
# runs, so what is mounted stays; `mount -a` mounts the rest as a boot would).
zfs mount -a
findmnt -l -n -o TARGET -t zfs | grep -v '^/tank' && { echo "FAIL: a dataset mounted elsewhere"; exit 1; }
runuser -u tester -- velo project delete atk --force
for _ in $(seq 600); do runuser -u tester -- velo status --json | grep -q '"pending": \[\]' && break; sleep 1; done
EOF

log "as root: setup --undo takes back what setup added"
guest <<'EOF'
set -euxo pipefail
velo setup --undo --user tester
[ ! -e /etc/sudoers.d/velo-uid1000 ] && [ ! -e /etc/velo/config.json ]
! zfs list tank/velo/user.tester
EOF
log "PASS: velo ran as tester with ZFS delegation and its sudo rule only; the attacks failed"
