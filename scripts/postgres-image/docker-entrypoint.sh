#!/usr/bin/env bash
# Entrypoint of the local test images velo-test/postgres:<major> (built by
# scripts/rig-up.sh: 15 from Debian's postgresql-15 package, the others from npm's
# @embedded-postgres binaries; no registry needed).
#
# It follows the contract of the official `postgres` image:
#   POSTGRES_PASSWORD          required unless POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER              superuser name (default: postgres)
#   POSTGRES_DB                database created at init (default: $POSTGRES_USER)
#   POSTGRES_INITDB_ARGS       extra initdb arguments
#   POSTGRES_HOST_AUTH_METHOD  auth for `host all all all` (default: scram-sha-256)
#   PGDATA                     data directory (the image's; /var/lib/postgresql/data up to 17,
#                              /var/lib/postgresql/18/docker from 18)
#   *_FILE variants of POSTGRES_PASSWORD/USER/DB/INITDB_ARGS are honoured.
# /docker-entrypoint-initdb.d/*.sh, *.sql and *.sql.gz run once, at init.
# From 18 (PG_MAJOR, set by the image), like upstream: with the default PGDATA, an empty data
# directory is not initialised while old data (or a mount) sits at /var/lib/postgresql/data.
#
# When $PGDATA already holds a cluster (PG_VERSION exists) nothing is done
# besides the ownership check: the script goes straight to `exec postgres`.
# That fast path is what velo's branch containers (ZFS clones) take.
set -Eeuo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$*" >&2; }

# file_env VAR [DEFAULT]: VAR or VAR_FILE (contents of the file), not both.
file_env() {
	local var="$1" fileVar="${1}_FILE" def="${2:-}"
	if [ "${!var:-}" ] && [ "${!fileVar:-}" ]; then
		log "error: both $var and $fileVar are set (but are exclusive)"
		exit 1
	fi
	local val="$def"
	if [ "${!var:-}" ]; then
		val="${!var}"
	elif [ "${!fileVar:-}" ]; then
		val="$(<"${!fileVar}")"
	fi
	export "$var"="$val"
	unset "$fileVar"
}

# `docker run IMAGE -c foo=bar` means `postgres -c foo=bar`.
if [ "$#" -eq 0 ] || [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi

# Anything other than the server is run as given (psql, bash, id, ...).
if [ "$1" != 'postgres' ]; then
	exec "$@"
fi

if [ "$(id -u)" = '0' ]; then
	# Running as root: prepare the directories, then drop to postgres.
	mkdir -p "$PGDATA" /var/run/postgresql
	# Only walk the tree when the top directory is not ours (first start on a
	# fresh volume); a clone of an existing cluster is already owned by postgres.
	if [ "$(stat -c %U "$PGDATA")" != 'postgres' ]; then
		chown -R postgres:postgres "$PGDATA"
	fi
	chmod 700 "$PGDATA"
	if [ "$(stat -c %U /var/run/postgresql)" != 'postgres' ]; then
		chown postgres:postgres /var/run/postgresql
	fi
	chmod 3777 /var/run/postgresql
	export HOME=/var/lib/postgresql USER=postgres LOGNAME=postgres
	exec setpriv --reuid=postgres --regid=postgres --init-groups -- "${BASH_SOURCE[0]}" "$@"
fi

# --- from here on we are the postgres user (or whatever --user was given) ---

if [ -s "$PGDATA/PG_VERSION" ]; then
	# Fast path: existing cluster (e.g. a ZFS clone). Nothing else to do.
	exec "$@"
fi

# --- first start: initialise the cluster ---------------------------------
file_env POSTGRES_PASSWORD
file_env POSTGRES_USER postgres
file_env POSTGRES_DB "$POSTGRES_USER"
file_env POSTGRES_INITDB_ARGS
: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"

if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != 'trust' ]; then
	cat >&2 <<-'EOM'
		Error: Database is uninitialized and superuser password is not specified.
		       You must specify POSTGRES_PASSWORD to a non-empty value for the
		       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

		       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all
		       connections without a password. This is *not* recommended.
	EOM
	exit 1
fi

# Upstream's check for data at the pre-18 place (docker-library/postgres#1259): only with the
# image's own PGDATA, so PGDATA=/var/lib/postgresql/data (what velo sets) works on any major.
old_databases=()
if [ -n "${PG_MAJOR:-}" ] && [ "$PGDATA" = "/var/lib/postgresql/$PG_MAJOR/docker" ]; then
	for d in /var/lib/postgresql /var/lib/postgresql/data /var/lib/postgresql/*/docker; do
		if [ -s "$d/PG_VERSION" ]; then
			old_databases+=("$d")
		fi
	done
	if [ "${#old_databases[@]}" -eq 0 ] && [ "$PG_MAJOR" -ge 18 ] && {
		mountpoint -q /var/lib/postgresql/data ||
			awk '$5 == "/var/lib/postgresql/data" { found = 1 } END { exit !found }' /proc/self/mountinfo
	}; then
		old_databases+=('/var/lib/postgresql/data (unused mount/volume)')
	fi
fi
if [ "${#old_databases[@]}" -gt 0 ]; then
	cat >&2 <<-EOE
		Error: in 18+, this image keeps its data in $PGDATA (a directory per major,
		       as pg_ctlcluster does; the volume is /var/lib/postgresql), and will not
		       initialise it while there is data from an older image at:
		         ${old_databases[*]}
		       Upgrade that data with pg_upgrade, or point PGDATA at it
		       (-e PGDATA=/var/lib/postgresql/data) if it is data of this major.
		       See https://github.com/docker-library/postgres/pull/1259
	EOE
	exit 1
fi

# As root, the directory was made above; as another user, make it now (from 18, PGDATA is a
# new directory inside the volume).
mkdir -p "$PGDATA" 2>/dev/null || true
if [ ! -w "$PGDATA" ]; then
	log "error: $PGDATA is not writable by uid $(id -u)"
	exit 1
fi
chmod 700 "$PGDATA" 2>/dev/null || true

log "initialising database cluster in $PGDATA"
pwfile=''
initdb_args=(--username="$POSTGRES_USER")
if [ -n "$POSTGRES_PASSWORD" ]; then
	# The password goes through a private temp file, never argv.
	pwfile="$(mktemp)"
	chmod 600 "$pwfile"
	printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
	initdb_args+=(--pwfile="$pwfile")
fi
# shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is word-split on purpose
if ! initdb "${initdb_args[@]}" $POSTGRES_INITDB_ARGS >&2; then
	[ -z "$pwfile" ] || rm -f "$pwfile"
	exit 1
fi
[ -z "$pwfile" ] || rm -f "$pwfile"

# Debian's sample config listens on localhost only.
printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"

# Temporary server on the unix socket only. Like the official image, it gets the container's
# own server arguments too (`postgres -c …`), with the listen address and port overridden.
temp_args=("${@:2}" -c "listen_addresses=" -p 5432)
pg_ctl -D "$PGDATA" -o "$(printf '%q ' "${temp_args[@]}")" -w start >&2

psql_cmd=(psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER")
export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"

if [ "$POSTGRES_DB" != 'postgres' ]; then
	exists="$("${psql_cmd[@]}" --dbname postgres -tA --set db="$POSTGRES_DB" <<-'EOSQL'
		SELECT 1 FROM pg_database WHERE datname = :'db';
	EOSQL
	)"
	if [ -z "$exists" ]; then
		"${psql_cmd[@]}" --dbname postgres --set db="$POSTGRES_DB" >&2 <<-'EOSQL'
			CREATE DATABASE :"db";
		EOSQL
	fi
fi

if [ -d /docker-entrypoint-initdb.d ]; then
	for f in /docker-entrypoint-initdb.d/*; do
		[ -e "$f" ] || continue
		case "$f" in
		*.sh)
			if [ -x "$f" ]; then
				log "running $f"
				"$f"
			else
				log "sourcing $f"
				# shellcheck disable=SC1090
				. "$f"
			fi
			;;
		*.sql)
			log "running $f"
			"${psql_cmd[@]}" --dbname "$POSTGRES_DB" -f "$f" >&2
			;;
		*.sql.gz)
			log "running $f"
			gunzip -c "$f" | "${psql_cmd[@]}" --dbname "$POSTGRES_DB" >&2
			;;
		*) log "ignoring $f" ;;
		esac
	done
fi
unset PGPASSWORD

pg_ctl -D "$PGDATA" -m fast -w stop >&2
log "init complete; starting postgres"

exec "$@"
