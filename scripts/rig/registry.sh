# shellcheck shell=bash
# A local registry for tests of `docker pull`: Debian's docker-registry on $RIG_REGISTRY
# (127.0.0.1 only, no auth, storage in $RIG_DIR/registry), started by hand (there is no
# systemd), holding $RIG_PG_REPO:17. Sourced by rig-up.sh (log, die, the rig lock) after
# scripts/rig/env.sh:
#   rig_registry_start  starts it unless it answers
#   rig_registry_push   pushes the image unless the registry has it (and pulls it back once)

RIG_REGISTRY_DIR="$RIG_DIR/registry"
RIG_REGISTRY_CONF="$RIG_REGISTRY_DIR/config.yml"
RIG_REGISTRY_PIDFILE="$RIG_REGISTRY_DIR/registry.pid"
RIG_REGISTRY_LOG="$RIG_REGISTRY_DIR/registry.log"
RIG_REGISTRY_IMAGE="$RIG_PG_REPO:17"

registry_answers() { curl -fsS -o /dev/null --max-time 2 "http://$RIG_REGISTRY/v2/" 2>/dev/null; }

# our_registry: the pid of the registry this rig started, if it runs (a pid file survives a reboot).
our_registry() {
	local pid
	pid="$(cat "$RIG_REGISTRY_PIDFILE" 2>/dev/null || true)"
	[ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/bin/docker-registry ] &&
		tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF " $RIG_REGISTRY_CONF" && echo "$pid"
}

# registry_digest REPO TAG: the digest of the registry's manifest for REPO:TAG, or nothing.
registry_digest() {
	curl -fsS --max-time 5 -o /dev/null -D - \
		-H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
		"http://$RIG_REGISTRY/v2/$1/manifests/$2" 2>/dev/null |
		awk 'tolower($1) == "docker-content-digest:" { sub(/\r$/, "", $2); print $2 }' || true
}

start_registry() {
	local pid
	mkdir -p "$RIG_REGISTRY_DIR/data"
	chown docker-registry:docker-registry "$RIG_REGISTRY_DIR/data"
	cat >"$RIG_REGISTRY_CONF.tmp" <<-EOF
		# written by scripts/rig-up.sh
		version: 0.1
		log:
		  level: warn
		storage:
		  filesystem:
		    rootdirectory: $RIG_REGISTRY_DIR/data
		  delete:
		    enabled: true
		http:
		  addr: $RIG_REGISTRY
	EOF
	mv "$RIG_REGISTRY_CONF.tmp" "$RIG_REGISTRY_CONF"
	# Without a policy-rc.d, installing the package started Debian's own instance (port 5000
	# on every address, htpasswd auth): it goes, ours takes its place.
	pid="$(cat /var/run/docker-registry.pid 2>/dev/null || true)"
	if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/bin/docker-registry ]; then
		log "stopping the docker-registry that Debian's package started ($pid)"
		/etc/init.d/docker-registry stop >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
		for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
	fi
	if ss -Hltn "sport = :${RIG_REGISTRY##*:}" | grep -q .; then
		die "port ${RIG_REGISTRY##*:} is taken ($(ss -Hltnp "sport = :${RIG_REGISTRY##*:}" | head -n 1)), and not by a registry answering on $RIG_REGISTRY"
	fi
	log "starting docker-registry on $RIG_REGISTRY, log $RIG_REGISTRY_LOG"
	touch "$RIG_REGISTRY_LOG"
	chown docker-registry:docker-registry "$RIG_REGISTRY_LOG"
	start-stop-daemon --start --background --make-pidfile --pidfile "$RIG_REGISTRY_PIDFILE" \
		--chuid docker-registry --output "$RIG_REGISTRY_LOG" \
		--exec /usr/bin/docker-registry -- serve "$RIG_REGISTRY_CONF" 9>&-
	for _ in $(seq 1 100); do
		registry_answers && return 0
		sleep 0.1
	done
	tail -n 20 "$RIG_REGISTRY_LOG" >&2 || true
	die "docker-registry does not answer on $RIG_REGISTRY within 10 s"
}

rig_registry_start() {
	local pid
	mkdir -p "$RIG_REGISTRY_DIR"
	if ! registry_answers; then
		if pid="$(our_registry)"; then
			log "docker-registry ($pid) is running but not answering yet; waiting"
			for _ in $(seq 1 50); do registry_answers && break; sleep 0.2; done
			registry_answers || die "docker-registry ($pid) does not answer on $RIG_REGISTRY (log $RIG_REGISTRY_LOG)"
		else
			start_registry
		fi
	fi
	# dockerd talks plain HTTP only to "insecure" registries; 127.0.0.0/8 is one by default
	docker info --format '{{range .RegistryConfig.InsecureRegistryCIDRs}}{{.}} {{end}}' | grep -qw '127.0.0.0/8' ||
		die "dockerd does not treat 127.0.0.0/8 as an insecure registry, so it cannot use $RIG_REGISTRY"
}

rig_registry_push() {
	local t0=$SECONDS id dst="$RIG_REGISTRY/$RIG_REGISTRY_IMAGE" pushed="$RIG_REGISTRY_DIR/pushed" digest
	# Pushed already when the registry has the digest we recorded for this image id.
	id="$(docker image inspect --format '{{.Id}}' "$RIG_REGISTRY_IMAGE")"
	digest="$(registry_digest "${RIG_REGISTRY_IMAGE%:*}" "${RIG_REGISTRY_IMAGE##*:}")"
	if [ -n "$digest" ] && [ "$(cat "$pushed" 2>/dev/null)" = "$dst $id $digest" ]; then
		return 0
	fi
	log "pushing $RIG_REGISTRY_IMAGE as $dst"
	docker tag "$RIG_REGISTRY_IMAGE" "$dst"
	# the local tag goes again, pushed or not, so that a test's `docker pull` really pulls
	local out rc=0
	out="$(docker push "$dst" 2>&1)" || rc=$?
	docker rmi "$dst" >/dev/null 2>&1 || true
	[ "$rc" = 0 ] || die "docker push $dst failed: $(tail -n 3 <<<"$out")"
	digest="$(awk '{ for (i = 1; i < NF; i++) if ($i == "digest:") print $(i + 1) }' <<<"$out" | tail -n 1)"
	[ -n "$digest" ] && [ "$(registry_digest "${RIG_REGISTRY_IMAGE%:*}" "${RIG_REGISTRY_IMAGE##*:}")" = "$digest" ] ||
		die "the registry does not serve $dst ($digest) after the push"
	# and back through dockerd, as a test would (the layers are here: only the manifest moves)
	out="$(docker pull -q "$dst" 2>&1)" || die "docker pull $dst failed: $out"
	docker rmi "$dst" >/dev/null 2>&1 || true
	echo "$dst $id $digest" >"$pushed"
	log "pushed (and pulled) $dst ($digest) in $((SECONDS - t0))s"
}
