#!/usr/bin/env bash
# Benchmark a registry under hostile clients: the latency of a normal authenticated
# request (manifest GET with known-good credentials, one keep-alive connection, wrk)
# when quiet, during a storm of failed logins (200 connections, each request with a new
# wrong password), and while 300 idle connections are held open. berth runs beside
# Debian's docker-registry (distribution 2.8), both with an htpasswd file of bcrypt
# entries, in one run.
#
# Usage: bench/registry-hostile.sh
#   BERTH_BIN=path     use this berth binary instead of `cargo build --release -p berth-cli`
#   DIST_BIN=path      distribution binary (default: docker-registry from PATH)
#   COST=10            bcrypt cost of the htpasswd entries (htpasswd -B -C)
#   SECS=5             duration of each latency measurement
#
# Needs: cargo, curl, wrk, htpasswd (apache2-utils), python3, docker-registry.
# Target: p50 latency during the storm and with idle connections within 2x of quiet.
# Ratios are reported, never enforced. Only 127.0.0.1 is contacted; the storm and the
# idle connections are bounded in time (SECS + 2 s) and count (200, 300).
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

COST=${COST:-10}
SECS=${SECS:-5}
STORM_CONNS=200
IDLE_CONNS=300
REPO=bench
USER_NAME=bench
PASSWORD=bench-password
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
SERVERS=(berth distribution)

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
CURL=(--silent --show-error --noproxy '*' --max-time 60 -H 'Expect:' -u "$USER_NAME:$PASSWORD")

declare -A url pid errlog res

log() { echo "== $*" >&2; }

die() {
	echo "registry-hostile.sh: FAILED: $*" >&2
	local s
	for s in "${SERVERS[@]}"; do
		[[ -n ${errlog[$s]:-} && -s ${errlog[$s]} ]] || continue
		echo "--- last lines of $s stderr:" >&2
		tail -n 20 "${errlog[$s]}" >&2
	done
	exit 1
}

cleanup() {
	local s
	for s in "${!pid[@]}"; do kill "${pid[$s]}" 2>/dev/null || true; done
	for s in "${!pid[@]}"; do wait "${pid[$s]}" 2>/dev/null || true; done
	if [[ -n ${work:-} ]]; then rm -rf "$work"; fi
}

sha() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }

free_ports() {
	python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])'
}

wait_ready() { # server
	local s=$1 i code
	for ((i = 0; i < 200; i++)); do
		kill -0 "${pid[$s]}" 2>/dev/null || die "$s exited during startup"
		code=$(curl "${CURL[@]}" -o /dev/null -w '%{http_code}' "${url[$s]}/v2/" 2>/dev/null) || true
		[[ $code == 200 ]] && return 0
		sleep 0.1
	done
	die "$s did not answer 200 on ${url[$s]}/v2/ within 20 s"
}

start_berth() { # port
	local dir=$work/berth
	mkdir -p "$dir/root"
	: >"$dir/config.toml"
	errlog[berth]=$dir/stderr
	BERTH_LOG=warn "$berth_bin" registry serve --addr "127.0.0.1:$1" --root "$dir/root" \
		--config "$dir/config.toml" --htpasswd "$work/htpasswd" >"$dir/stdout" 2>"${errlog[berth]}" &
	pid[berth]=$!
	url[berth]=http://127.0.0.1:$1
	wait_ready berth
}

start_distribution() { # port
	local dir=$work/distribution
	mkdir -p "$dir/root"
	cat >"$dir/config.yml" <<-EOF
		version: 0.1
		log:
		  level: error
		  accesslog:
		    disabled: true
		storage:
		  cache:
		    blobdescriptor: inmemory
		  filesystem:
		    rootdirectory: $dir/root
		auth:
		  htpasswd:
		    realm: bench
		    path: $work/htpasswd
		http:
		  addr: 127.0.0.1:$1
	EOF
	errlog[distribution]=$dir/stderr
	"$dist_bin" serve "$dir/config.yml" >"$dir/stdout" 2>"${errlog[distribution]}" &
	pid[distribution]=$!
	url[distribution]=http://127.0.0.1:$1
	wait_ready distribution
}

# POST, then PUT ?digest= with the whole body (as bench/registry.sh).
push_blob() { # server file
	local s=$1 file=$2 loc out
	loc=$(curl "${CURL[@]}" -o /dev/null -X POST -H 'Content-Length: 0' -w '%header{location}' \
		"${url[$s]}/v2/$REPO/blobs/uploads/") || die "$s: POST upload failed"
	[[ $loc == /* ]] && loc=${url[$s]}$loc
	[[ $loc == "${url[$s]}"/* ]] || die "$s: Location '$loc' is not on ${url[$s]}"
	if [[ $loc == *\?* ]]; then loc="$loc&digest=$(sha "$file")"; else loc="$loc?digest=$(sha "$file")"; fi
	out=$(curl "${CURL[@]}" -o /dev/null -H 'Content-Type: application/octet-stream' -T "$file" \
		-w '%{http_code}' "$loc") || die "$s: PUT blob failed"
	[[ $out == 201 ]] || die "$s: push blob answered $out, want 201"
}

push_manifest() { # server
	local s=$1 out
	push_blob "$s" "$work/config.json"
	push_blob "$s" "$work/layer"
	out=$(curl "${CURL[@]}" -o /dev/null -X PUT -H "Content-Type: $OCI_MANIFEST" \
		--data-binary @"$work/manifest.json" -w '%{http_code}' "${url[$s]}/v2/$REPO/manifests/latest") ||
		die "$s: PUT manifest: curl failed"
	[[ $out == 201 ]] || die "$s: PUT manifest answered $out, want 201"
}

make_manifest() {
	printf '{}' >"$work/config.json"
	head -c 4096 /dev/urandom >"$work/layer"
	cat >"$work/manifest.json" <<-EOF
		{"schemaVersion":2,"mediaType":"$OCI_MANIFEST",
		 "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$(sha "$work/config.json")","size":2},
		 "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$(sha "$work/layer")","size":4096}]}
	EOF
}

# A new wrong password on every request: a guessing attacker, not a retrying client.
write_storm_script() {
	cat >"$work/storm.lua" <<-'EOF'
		local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
		local function b64(s)
		  return ((s:gsub(".", function(x)
		    local r, b = "", x:byte()
		    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
		    return r
		  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
		    if #x < 6 then return "" end
		    local c = 0
		    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
		    return chars:sub(c + 1, c + 1)
		  end) .. ({ "", "==", "=" })[#s % 3 + 1])
		end
		local n = 0
		function setup(thread) thread:set("id", tostring(math.random(1, 1e9))) end
		function request()
		  n = n + 1
		  local cred = "bench:wrong-" .. id .. "-" .. n
		  return wrk.format("GET", "/v2/", { ["Authorization"] = "Basic " .. b64(cred) })
		end
	EOF
}

# p50 and p99 latency (ms) of the normal request, one keep-alive connection.
measure() { # server key
	local s=$1 key=$2 out auth
	auth=$(printf '%s' "$USER_NAME:$PASSWORD" | base64 -w0)
	out=$(wrk -t1 -c1 -d"${SECS}s" --timeout 30s --latency -H "Authorization: Basic $auth" \
		-H "Accept: $OCI_MANIFEST" "${url[$s]}/v2/$REPO/manifests/latest") ||
		die "$s: wrk ($key) failed: $out"
	if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
		die "$s: the normal client saw failures ($key):"$'\n'"$out"
	fi
	res[$key-p50|$s]=$(awk '$1 == "50%" { print ms($2) } function ms(v) { if (v ~ /us$/) return sprintf("%.2f", v / 1000); if (v ~ /ms$/) return sprintf("%.2f", v + 0); return sprintf("%.2f", v * 1000) }' <<<"$out")
	res[$key-p99|$s]=$(awk '$1 == "99%" { print ms($2) } function ms(v) { if (v ~ /us$/) return sprintf("%.2f", v / 1000); if (v ~ /ms$/) return sprintf("%.2f", v + 0); return sprintf("%.2f", v * 1000) }' <<<"$out")
	res[$key-n|$s]=$(awk '/requests in/ { print $1 }' <<<"$out")
}

measure_storm() { # server
	local s=$1 storm out
	wrk -t1 -c"$STORM_CONNS" -d"$((SECS + 2))s" --timeout 10s -s "$work/storm.lua" \
		"${url[$s]}/v2/" >"$work/storm-$s.out" 2>&1 &
	storm=$!
	sleep 1
	measure "$s" storm
	wait "$storm" || die "$s: storm wrk failed: $(cat "$work/storm-$s.out")"
	out=$(cat "$work/storm-$s.out")
	res[storm-rate|$s]=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
	log "$s storm: $(grep -E 'requests in|Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | paste -sd ';')"
}

measure_idle() { # server
	local s=$1 holder
	python3 - "${url[$s]#http://}" "$IDLE_CONNS" "$((SECS + 3))" <<-'PY' &
		import socket, sys, time
		host, port = sys.argv[1].rsplit(":", 1)
		n, hold = int(sys.argv[2]), float(sys.argv[3])
		socks = [socket.create_connection((host, int(port))) for _ in range(n)]
		time.sleep(hold)
	PY
	holder=$!
	sleep 1
	measure "$s" idle
	wait "$holder" || die "$s: could not hold $IDLE_CONNS idle connections"
}

print_table() {
	local s key q v ratio
	printf '\n%-14s | %-12s | %9s | %9s | %8s | %12s | %s\n' server case "p50 ms" "p99 ms" requests "p50 vs quiet" "target <=2x"
	printf '%s\n' "---------------+--------------+-----------+-----------+----------+--------------+------------"
	for s in "${SERVERS[@]}"; do
		for key in quiet storm idle; do
			q=${res[quiet-p50|$s]} v=${res[$key-p50|$s]}
			if [[ ${res[$key-n|$s]} == 0 ]]; then
				# Not one answer within the measurement: latency is at least its length.
				v=">$((SECS * 1000))" res[$key-p99|$s]=">$((SECS * 1000))"
				ratio=$(awk -v a="$((SECS * 1000))" -v b="$q" 'BEGIN { printf ">%.0f", a / b }')
			else
				ratio=$(awk -v a="$v" -v b="$q" 'BEGIN { printf "%.2f", a / b }')
			fi
			printf '%-14s | %-12s | %9s | %9s | %8s | %11sx | %s\n' "$s" "$key" "$v" "${res[$key-p99|$s]}" \
				"${res[$key-n|$s]}" "$ratio" "$(awk -v r="$ratio" 'BEGIN { print (r !~ />/ && r <= 2) ? "ok" : "above target" }')"
		done
	done
	echo
	echo "normal request: GET /v2/$REPO/manifests/latest with known-good Basic credentials,"
	echo "wrk -t1 -c1 for ${SECS} s; storm: wrk -c$STORM_CONNS, a new wrong password per request"
	echo "(berth answered ${res[storm-rate|berth]} req/s of it, distribution ${res[storm-rate|distribution]} req/s);"
	echo "idle: $IDLE_CONNS connections open, silent. htpasswd bcrypt cost $COST; $(nproc) cores."
}

main() {
	local c ports port_berth port_dist
	for c in curl wrk htpasswd python3 sha256sum base64; do
		command -v "$c" >/dev/null || die "$c is not installed (apt-get install -y curl wrk apache2-utils python3)"
	done
	dist_bin=${DIST_BIN:-$(command -v docker-registry || true)}
	[[ -x $dist_bin ]] || die "docker-registry not found (apt-get install -y docker-registry)"
	if [[ -n ${BERTH_BIN:-} ]]; then
		berth_bin=$BERTH_BIN
	else
		log "building berth (release)"
		(cd "$root" && cargo build --release -p berth-cli >&2)
		berth_bin=${CARGO_TARGET_DIR:-$root/target}/release/berth
	fi
	[[ -x $berth_bin ]] || die "no berth binary at $berth_bin"
	(($(ulimit -n) > IDLE_CONNS + STORM_CONNS + 100)) || ulimit -n 4096 ||
		die "ulimit -n $(ulimit -n) is too low for $IDLE_CONNS idle connections"

	work=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench.XXXXXX")
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	htpasswd -Bbn -C "$COST" "$USER_NAME" "$PASSWORD" >"$work/htpasswd" 2>/dev/null
	make_manifest
	write_storm_script

	# Command substitution waits for the helper to exit and release both ports.
	ports=$(free_ports)
	read -r port_berth port_dist <<<"$ports"
	start_berth "$port_berth"
	start_distribution "$port_dist"
	log "berth on ${url[berth]}, distribution on ${url[distribution]} ($($dist_bin --version))"
	for s in "${SERVERS[@]}"; do push_manifest "$s"; done

	for s in "${SERVERS[@]}"; do
		log "$s: quiet"
		measure "$s" quiet
		log "$s: storm of failed logins"
		measure_storm "$s"
		# Let a bcrypt backlog drain before the next case.
		sleep 3
		log "$s: $IDLE_CONNS idle connections"
		measure_idle "$s"
	done
	for s in "${SERVERS[@]}"; do
		kill -0 "${pid[$s]}" 2>/dev/null || die "$s died during the run"
	done
	print_table
}

main "$@"
