# shellcheck shell=bash
# File systems for velo's storage backends and the non-root test user. Sourced by rig-up.sh
# (which defines log and die and holds the rig lock) after scripts/rig/env.sh:
#   rig_filesystems  loop-mounted btrfs and xfs images, made (or re-made) when needed
#   rig_test_user    the user $RIG_TEST_USER and its private directory on btrfs, xfs and ext4
#   rig_fs_checks    reflinks and btrfs subvolumes work for that user (once per mount)
# and by rig-down.sh for rig_clean_test_dirs.

# The postgres uids of the rig's images (Debian's velo-test/postgres:15 has 999, the npm-based
# ones 70, like the official Debian and alpine images). The test user must have neither, or it
# would own the files of every container by accident.
RIG_IMAGE_UIDS=(70 999)

# fs_params FS: sets img, mnt and opts for btrfs, xfs or ext4 (RIG_EXT4_IMG and RIG_EXT4_MNT
# are set only by scripts/bench.sh: the rig's ext4 directory is on the root file system).
fs_params() {
	case "$1" in
	btrfs) img="$RIG_BTRFS_IMG" mnt="$RIG_BTRFS_MNT" opts=loop,user_subvol_rm_allowed ;;
	xfs) img="$RIG_XFS_IMG" mnt="$RIG_XFS_MNT" opts=loop ;;
	ext4) img="${RIG_EXT4_IMG:?}" mnt="${RIG_EXT4_MNT:?}" opts=loop ;;
	*) die "unknown file system $1" ;;
	esac
}

# fs_uuid IMG: the UUID of the file system in the image (new when the image is made anew).
fs_uuid() { blkid -o value -s UUID "$1" 2>/dev/null || true; }

# ensure_fs FS: the image exists and is mounted at its place with its options. A mounted file
# system is checked, not touched; an image that does not mount is made anew (it only ever
# holds test leftovers).
ensure_fs() {
	local fs="$1" img mnt opts t0=$SECONDS t src back out
	fs_params "$fs"
	mkdir -p "$mnt"
	if mountpoint -q "$mnt"; then
		read -r t src < <(findmnt -n -o FSTYPE,SOURCE --mountpoint "$mnt" | tail -n 1)
		back="$(losetup -n -O BACK-FILE "$src" 2>/dev/null | sed 's/ *$//' || true)"
		[ "$t" = "$fs" ] && [ "$back" = "$(realpath "$img")" ] ||
			die "$mnt is mounted from $src ($t${back:+, $back}), not from $img ($fs): unmount it"
		if [ "$fs" = btrfs ] && ! findmnt -n -o OPTIONS --mountpoint "$mnt" | grep -qw user_subvol_rm_allowed; then
			log "btrfs: remounting $mnt with user_subvol_rm_allowed"
			mount -o remount,user_subvol_rm_allowed "$mnt"
		fi
		return 0
	fi
	if [ -e "$img" ]; then
		if out="$(mount -t "$fs" -o "$opts" "$img" "$mnt" 2>&1)"; then
			log "$fs: mounted $img at $mnt ($opts) in $((SECONDS - t0))s"
			return 0
		fi
		log "$fs: $img does not mount ($out); making it anew"
		rm -f "$img"
	fi
	log "$fs: making $img ($RIG_FS_SIZE, sparse)"
	rm -f "$img.tmp"
	truncate -s "$RIG_FS_SIZE" "$img.tmp"
	case "$fs" in
	btrfs) out="$(mkfs.btrfs -q -L velo-rig "$img.tmp" 2>&1)" ;;
	xfs) out="$(mkfs.xfs -q -m reflink=1 -L velo-rig "$img.tmp" 2>&1)" ;;
	ext4) out="$(mkfs.ext4 -q -L velo-rig "$img.tmp" 2>&1)" ;;
	esac || die "mkfs.$fs $img failed: $out"
	mv "$img.tmp" "$img"
	out="$(mount -t "$fs" -o "$opts" "$img" "$mnt" 2>&1)" || die "cannot mount the new $img at $mnt: $out"
	log "$fs: mounted $img at $mnt ($opts) in $((SECONDS - t0))s"
}

rig_filesystems() {
	[ -c /dev/loop-control ] || modprobe loop 2>/dev/null || true
	ensure_fs btrfs
	ensure_fs xfs
	# mount roots and the ext4 parent: root's, traversable by the test user
	local d
	for d in "$RIG_DIR/mnt" "$RIG_BTRFS_MNT" "$RIG_XFS_MNT" "$(dirname "$RIG_EXT4_DIR")"; do
		ensure_dir "$d" root root 755
	done
	local ext4_type
	ext4_type="$(stat -f -c %T "$(dirname "$RIG_EXT4_DIR")")"
	[ "$ext4_type" = ext2/ext3 ] || # (stat's name for the ext2/3/4 family)
		die "$(dirname "$RIG_EXT4_DIR") is on $ext4_type, not ext4: VELO_TEST_EXT4_DIR would lie"
}

# ensure_dir DIR OWNER GROUP MODE: creates DIR, or fixes its owner and mode; logs changes only.
ensure_dir() {
	local dir="$1" owner="$2" group="$3" mode="$4"
	if [ ! -d "$dir" ]; then
		mkdir -p "$dir"
		log "created $dir"
	fi
	if [ "$(stat -c '%U:%G %a' "$dir")" != "$owner:$group $mode" ]; then
		chown "$owner:$group" "$dir"
		chmod "$mode" "$dir"
		log "$dir: now $owner:$group $mode"
	fi
}

rig_test_user() {
	local u="$RIG_TEST_USER" g dir
	if ! id -u "$u" >/dev/null 2>&1; then
		# A regular user: `useradd --system` would take 999, the Debian image's postgres uid.
		useradd --create-home --home-dir "/home/$u" --shell /bin/sh --user-group \
			--comment 'velo test rig, non-root' "$u"
		log "created user $u (uid $(id -u "$u"))"
	fi
	# A user made earlier by other means (useradd --system gives 999) may share its uid with the
	# postgres of the rig's images. Renumbering it is not the rig's call: say so, and carry on.
	for g in "${RIG_IMAGE_UIDS[@]}"; do
		if [ "$(id -u "$u")" = "$g" ] || [ "$(id -g "$u")" = "$g" ]; then
			log "warning: user $u has uid/gid $(id -u "$u")/$(id -g "$u"), and $g is the postgres uid of the rig's images: on this host, files and processes of those containers are $u's. To fix: userdel -r $u, when nothing runs as $g, and run rig-up again"
		fi
	done
	[ "$(getent passwd "$u" | cut -d: -f7)" = /bin/sh ] || { usermod -s /bin/sh "$u"; log "user $u: shell now /bin/sh"; }
	# no root-equivalent groups: the tests are about running velo without them
	for g in docker sudo; do
		if id -nG "$u" | tr ' ' '\n' | grep -qx "$g"; then
			gpasswd -d "$u" "$g" >/dev/null
			log "user $u: removed from group $g"
		fi
	done
	for dir in "$RIG_BTRFS_DIR" "$RIG_XFS_DIR" "$RIG_EXT4_DIR"; do
		ensure_dir "$dir" "$u" "$(id -gn "$u")" 700
	done
}

# rig_fs_checks: as the test user, in a scratch directory beside its own (never inside it, where
# tests may be looking): reflink copies (FICLONE) on btrfs and xfs, and on btrfs subvolumes and
# snapshots made, and deleted, without root. Done once per file system and user.
rig_fs_checks() {
	local key ok="$RIG_DIR/fs-checks.ok" probe out
	key="btrfs=$(fs_uuid "$RIG_BTRFS_IMG") xfs=$(fs_uuid "$RIG_XFS_IMG") user=$(id -u "$RIG_TEST_USER")"
	[ "$(cat "$ok" 2>/dev/null)" = "$key" ] && return 0
	local img mnt opts fs
	for fs in xfs btrfs; do
		fs_params "$fs"
		probe="$mnt/.rig-probe"
		rm -rf "$probe"
		install -d -o "$RIG_TEST_USER" -m 700 "$probe"
		# shellcheck disable=SC2016 # expanded by the inner shell
		out="$(runuser -u "$RIG_TEST_USER" -- sh -euc '
			cd "$1"
			echo probe >a
			cp --reflink=always a b || { echo "cp --reflink=always (FICLONE) fails"; exit 1; }
			rm a b
			if [ "$2" = btrfs ]; then
				btrfs -q subvolume create s
				echo probe >s/f
				btrfs -q subvolume snapshot -r s r
				btrfs -q subvolume delete s
				# a read-only snapshot must be made writable before its owner may delete it
				btrfs property set -ts r ro false
				btrfs -q subvolume delete r
			fi' sh "$probe" "$fs" 2>&1)" || {
			rm -rf "$probe"
			die "$fs at $mnt fails for $RIG_TEST_USER: $out"
		}
		rm -rf "$probe"
	done
	log "checked as $RIG_TEST_USER: reflink copies on xfs and btrfs, btrfs subvolumes without root"
	echo "$key" >"$ok"
}

# rig_clean_test_dirs: empties the test user's directories (velo's leftovers), leaving the
# directories and the mounts. A postmaster still running from a data directory in there is
# stopped first (immediate shutdown, by the pid in its postmaster.pid, if that process is the
# test user's postgres working in that directory); btrfs subvolumes are
# deleted with `btrfs subvolume delete`, since rm cannot empty a read-only snapshot.
rig_clean_test_dirs() {
	local dir mnt pidfile pid uid n sub
	uid="$(id -u "$RIG_TEST_USER" 2>/dev/null || echo none)"
	for dir in "$RIG_BTRFS_DIR" "$RIG_XFS_DIR" "$RIG_EXT4_DIR"; do
		mnt="$(dirname "$dir")"
		if [ "$dir" != "$RIG_EXT4_DIR" ] && ! mountpoint -q "$mnt"; then
			log "$mnt is not mounted; nothing to clean there"
			continue
		fi
		[ -d "$dir" ] || continue
		[ -n "$(find "$dir" -mindepth 1 -maxdepth 1 -print -quit)" ] || continue
		while IFS= read -r -d '' pidfile; do
			pid="$(head -n 1 "$pidfile" 2>/dev/null || true)"
			[[ "$pid" =~ ^[0-9]+$ ]] && [ -d "/proc/$pid" ] || continue
			# the postmaster of that very directory (it runs in it), not a process that got its pid since
			[ "$(stat -c %u "/proc/$pid")" = "$uid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] &&
				[ "$(readlink "/proc/$pid/cwd")" = "$(dirname "$pidfile")" ] || continue
			log "stopping postgres $pid (data $(dirname "$pidfile"))"
			kill -QUIT "$pid" 2>/dev/null || true
			for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
			[ ! -d "/proc/$pid" ] || kill -KILL "$pid" 2>/dev/null || true
		done < <(find "$dir" -name postmaster.pid -type f -print0 2>/dev/null)
		if [ "$dir" = "$RIG_BTRFS_DIR" ] && command -v btrfs >/dev/null; then
			# deepest first; `list` prints paths relative to the top of the file system (the mount)
			n=0
			while IFS= read -r sub; do
				btrfs -q subvolume delete "$mnt/$sub" >/dev/null && n=$((n + 1))
			done < <(btrfs subvolume list "$mnt" |
				sed -n 's/^ID [0-9]* gen [0-9]* top level [0-9]* path //p' |
				awk -v d="$(basename "$dir")/" 'index($0, d) == 1' | sort -r)
			[ "$n" = 0 ] || log "deleted $n btrfs subvolume(s) under $dir"
		fi
		log "emptying $dir"
		find "$dir" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
	done
}
