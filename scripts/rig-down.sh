#!/usr/bin/env bash
# Cleans up what velo's tests leave behind, leaving the rig itself (daemons,
# pool, images, mounts, registry) up:
#   * removes containers whose name starts with velo_ or velo- (running or not)
#   * empties the test user's directories on btrfs, xfs and ext4 (scripts/rig/env.sh),
#     stopping a postgres still running from one of them; the mounts stay
#   * destroys the dataset tree $VELO_TEST_POOL/velo (default velotest/velo)
# Idempotent; does nothing for parts of the rig that are not running.
#
# zfs-fuse cannot destroy (or rename) a mounted dataset: it answers "dataset is
# busy" even when nothing uses it. So every dataset of the tree is unmounted,
# deepest first, before `zfs destroy -r`.
set -euo pipefail

POOL="${VELO_TEST_POOL:-velotest}"
DATASET="${VELO_TEST_DATASET:-$POOL/velo}"
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"

log() { printf '[rig-down] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=rig/env.sh
. "$HERE/rig/env.sh"
# shellcheck source=rig/storage.sh
. "$HERE/rig/storage.sh"

[ "$(id -u)" = 0 ] || { log "error: must run as root"; exit 1; }

# --- containers ------------------------------------------------------------
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
	mapfile -t ids < <(docker ps -a --filter 'name=^/?velo[-_]' --format '{{.ID}} {{.Names}}' |
		awk '$2 ~ /^velo[-_]/ { print $1 }')
	if [ "${#ids[@]}" -gt 0 ]; then
		log "removing ${#ids[@]} velo-*/velo_* container(s)"
		docker rm -f -v "${ids[@]}" >/dev/null
	fi
else
	log "docker is not answering; no containers to remove"
fi

# --- the test user's directories (btrfs, xfs, ext4) --------------------------
rig_clean_test_dirs

# --- datasets --------------------------------------------------------------
if ! command -v zfs >/dev/null || ! zpool list -H -o name "$POOL" >/dev/null 2>&1; then
	log "pool $POOL is not available; no datasets to destroy"
	exit 0
fi
if zfs list -H -o name "$DATASET" >/dev/null 2>&1; then
	log "destroying $DATASET"
	for attempt in 1 2 3 4 5; do
		zfs list -H -o name -r -t filesystem "$DATASET" | sort -r | while read -r ds; do
			if [ "$(zfs get -H -o value mounted "$ds" 2>/dev/null)" = yes ]; then
				zfs unmount "$ds" 2>/dev/null || zfs unmount -f "$ds" 2>/dev/null || true
			fi
		done
		# -r: descendants and their snapshots (clones inside the tree included)
		if zfs destroy -r "$DATASET" 2>/dev/null; then break; fi
		if [ "$attempt" = 5 ]; then
			# last resort: also clones that live outside the tree
			zfs destroy -R "$DATASET"
		fi
		sleep 0.5
	done
fi
log "clean"
