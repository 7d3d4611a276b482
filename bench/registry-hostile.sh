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

# shellcheck source=bench/registry-lib.sh
source "$here/registry-lib.sh"

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
	local c s
	for c in curl wrk htpasswd python3 sha256sum base64; do
		command -v "$c" >/dev/null || die "$c is not installed (apt-get install -y curl wrk apache2-utils python3)"
	done
	find_servers
	(($(ulimit -n) > IDLE_CONNS + STORM_CONNS + 100)) || ulimit -n 4096 ||
		die "ulimit -n $(ulimit -n) is too low for $IDLE_CONNS idle connections"

	work=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench.XXXXXX")
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	htpasswd -Bbn -C "$COST" "$USER_NAME" "$PASSWORD" >"$work/htpasswd" 2>/dev/null
	make_manifest
	write_storm_script

	BERTH_SERVE_ARGS=(--htpasswd "$work/htpasswd")
	DIST_EXTRA_CONFIG=$(printf 'auth:\n  htpasswd:\n    realm: bench\n    path: %s' "$work/htpasswd")
	start_servers
	for s in "${SERVERS[@]}"; do push_manifest "$s"; done

	for s in "${SERVERS[@]}"; do
		log "$s: quiet"
		measure "$s" quiet
		log "$s: $IDLE_CONNS idle connections"
		measure_idle "$s"
		# The storm last: a server that queues bcrypt checks is still working through
		# them after the storm's clients have gone.
		log "$s: storm of failed logins"
		measure_storm "$s"
	done
	for s in "${SERVERS[@]}"; do
		kill -0 "${pid[$s]}" 2>/dev/null || die "$s died during the run"
	done
	print_table
}

main "$@"
