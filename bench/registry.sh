#!/usr/bin/env bash
# Benchmark berth's registry against Debian's docker-registry (distribution 2.8) on
# loopback: blob push/pull throughput, chunked push, and manifest HEAD/GET rates.
#
# Usage: bench/registry.sh
#   BERTH_BIN=path     use this berth binary instead of `cargo build --release -p berth-cli`
#   DIST_BIN=path      distribution binary (default: docker-registry from PATH)
#   BIG_REPS=3         attempts per 256 MiB measurement (the median is reported)
#   WRK_SECS=5         duration of each manifest load run (wrk for GET, ab for HEAD)
#   DISK_MIB=1024      size of the blob pushed against `dd conv=fsync` (0: skip that part)
#   DISK_REPS=3        attempts of that comparison (the median is reported)
#
# Needs: cargo, curl, wrk, ab (apache2-utils), python3, docker-registry.
# It fails (non-zero) if any request fails; the ratios are only reported, never enforced.
# Only 127.0.0.1 is contacted.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

WRK_SECS=${WRK_SECS:-5}
SMALL_PUSH_REPS=50      # 1 MiB blobs pushed (each a different blob)
SMALL_PULL_REPS=200     # 1 MiB pulls (cycling over the pushed blobs)
BIG_REPS=${BIG_REPS:-5} # 256 MiB attempts; the median is reported (this VM is noisy)
DISK_MIB=${DISK_MIB:-1024}
DISK_REPS=${DISK_REPS:-3}
MIB=$((1024 * 1024))
SMALL=$MIB
BIG=$((256 * MIB))
CHUNK=$((16 * MIB))
REPO=bench
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
SERVERS=(berth distribution)

# Never go through a proxy: everything here is on 127.0.0.1.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
# Options for every curl transfer. `Expect:` stops curl from waiting for
# `100 Continue` on large bodies, so both servers see the same request shape.
CURL=(--silent --show-error --noproxy '*' --max-time 300 -H 'Expect:')

declare -A url pid errlog res
BERTH_SERVE_ARGS=()

# shellcheck source=bench/registry-lib.sh
source "$here/registry-lib.sh"






# --- servers -----------------------------------------------------------------





# --- protocol helpers ----------------------------------------------------------





# GET one blob to /dev/null; prints seconds (curl's time_total).
pull_blob() { # server digest size
	local out
	out=$(curl "${CURL[@]}" -o /dev/null -w '%{http_code} %{size_download} %{time_total}' \
		"${url[$1]}/v2/$REPO/blobs/$2") || die "$1: GET blob $2: curl failed"
	[[ ${out% *} == "200 $3" ]] || die "$1: GET blob $2: got '${out% *}', want '200 $3'"
	echo "${out##* }"
}

# Check a curl batch's per-transfer "code size" lines against "$want".
check_batch() { # server what want output
	local bad
	bad=$(grep -vcx -- "$3" <<<"$4") || true
	[[ $bad == 0 && -n $4 ]] || die "$1: $2: $bad transfer(s) not '$3':"$'\n'"$(grep -vx -- "$3" <<<"$4" | head -5)"
}

# --- measurements ---------------------------------------------------------------

# N different 1 MiB blobs: one curl for all POSTs, one for all PUTs (keep-alive), so
# curl's start-up cost does not dominate 1 MiB transfers. Whole loop is timed.
measure_push_small() { # server
	local s=$1 i t0 out locs=() post=() put=()
	for ((i = 0; i < SMALL_PUSH_REPS; i++)); do
		((i)) && post+=(--next)
		post+=("${CURL[@]}" -o /dev/null -X POST -H 'Content-Length: 0'
			-w '%{http_code} %header{location}\n' "${url[$s]}/v2/$REPO/blobs/uploads/")
	done
	t0=$(now)
	out=$(curl "${post[@]}") || die "$s: POST batch: curl failed"
	mapfile -t locs <<<"$out"
	((${#locs[@]} == SMALL_PUSH_REPS)) || die "$s: POST batch: ${#locs[@]} answers, want $SMALL_PUSH_REPS"
	for ((i = 0; i < SMALL_PUSH_REPS; i++)); do
		[[ ${locs[i]%% *} == 202 ]] || die "$s: POST upload answered '${locs[i]%% *}', want 202"
		((i)) && put+=(--next)
		put+=("${CURL[@]}" -o /dev/null -H 'Content-Type: application/octet-stream'
			-w '%{http_code} %{size_upload}\n' -T "$work/small/$i"
			"$(with_digest "$(abs_url "$s" "${locs[i]#* }")" "${small_digest[i]}")")
	done
	out=$(curl "${put[@]}") || die "$s: PUT batch: curl failed"
	res[push1|$s]=$(mbps $((SMALL_PUSH_REPS * SMALL)) "$(elapsed "$t0" "$(now)")")
	check_batch "$s" "PUT 1 MiB blobs" "201 $SMALL" "$out"
}

# Pull the 1 MiB blobs SMALL_PULL_REPS times in one keep-alive curl; whole loop timed.
measure_pull_small() { # server
	local s=$1 i t0 out get=()
	for ((i = 0; i < SMALL_PULL_REPS; i++)); do
		((i)) && get+=(--next)
		get+=("${CURL[@]}" -o /dev/null -w '%{http_code} %{size_download}\n'
			"${url[$s]}/v2/$REPO/blobs/${small_digest[i % SMALL_PUSH_REPS]}")
	done
	t0=$(now)
	out=$(curl "${get[@]}") || die "$s: GET batch: curl failed"
	res[pull1|$s]=$(mbps $((SMALL_PULL_REPS * SMALL)) "$(elapsed "$t0" "$(now)")")
	check_batch "$s" "GET 1 MiB blobs" "200 $SMALL" "$out"
}

# 256 MiB monolithic push, a fresh blob per attempt (the same one for both servers).
measure_push_big() {
	local r s t0 digest
	declare -A secs
	for ((r = 0; r < BIG_REPS; r++)); do
		refresh_blob "$work/big"
		digest=$(sha "$work/big")
		for s in "${SERVERS[@]}"; do
			sync
			t0=$(now)
			push_blob "$s" "$work/big" "$digest"
			secs[$s]+=" $(elapsed "$t0" "$(now)")"
		done
	done
	big_digest=$digest # the last one is pulled below
	for s in "${SERVERS[@]}"; do
		# shellcheck disable=SC2086 # word-split the list of times
		res[push256|$s]=$(mbps "$BIG" "$(median ${secs[$s]})")
		log "push 256 MiB $s: seconds${secs[$s]}"
	done
}

measure_pull_big() {
	local r s
	declare -A secs
	for ((r = 0; r < BIG_REPS; r++)); do
		for s in "${SERVERS[@]}"; do
			secs[$s]+=" $(pull_blob "$s" "$big_digest" "$BIG")"
		done
	done
	for s in "${SERVERS[@]}"; do
		# shellcheck disable=SC2086
		res[pull256|$s]=$(mbps "$BIG" "$(median ${secs[$s]})")
		log "pull 256 MiB $s: seconds${secs[$s]}"
	done
}

# POST, 16 MiB PATCHes with Content-Range (following Location each time), PUT ?digest=,
# all on one keep-alive connection from one process, as docker and skopeo push: a curl
# process per chunk would time process start-ups and new connections, not the server.
# The blob is read and cut into chunks in memory first (no chunk files: deleting and
# re-creating 256 MiB of files between attempts makes this VM's disk stall for seconds,
# which times the disk, not the server); prints the seconds from POST to the 201.
push_chunked() { # server digest file
	local s=$1 digest=$2 file=$3
	python3 - "${url[$s]#http://}" "$digest" "$file" "$CHUNK" <<'PY' || die "$s: chunked push of $digest failed"
import http.client, sys, time
addr, digest, path, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
blob = open(path, "rb").read()
chunks = [blob[i:i + size] for i in range(0, len(blob), size)]
host, port = addr.rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port))
def call(method, url, body=None, headers={}, want=202):
    c.request(method, url, body=body, headers=headers)
    r = c.getresponse()
    r.read()
    if r.status != want:
        sys.exit(f"{method} {url}: {r.status}, want {want}")
    loc = r.getheader("location") or ""
    return loc.split(addr, 1)[1] if loc.startswith("http") else loc
start = time.monotonic()
loc = call("POST", "/v2/bench/blobs/uploads/")
off = 0
for data in chunks:
    loc = call("PATCH", loc, data, {"Content-Type": "application/octet-stream",
                                     "Content-Range": f"{off}-{off + len(data) - 1}"})
    off += len(data)
call("PUT", loc + ("&" if "?" in loc else "?") + "digest=" + digest, b"", want=201)
print(f"{time.monotonic() - start:.6f}")
PY
}

measure_push_chunked() {
	local r s t0 digest
	declare -A secs
	for ((r = 0; r < BIG_REPS; r++)); do
		refresh_blob "$work/big"
		digest=$(sha "$work/big")
		for s in "${SERVERS[@]}"; do
			sync
			secs[$s]+=" $(push_chunked "$s" "$digest" "$work/big")"
		done
		# Check the assembled blob really is the whole thing.
		for s in "${SERVERS[@]}"; do pull_blob "$s" "$digest" "$BIG" >/dev/null; done
	done
	for s in "${SERVERS[@]}"; do
		# shellcheck disable=SC2086
		res[chunked|$s]=$(mbps "$BIG" "$(median ${secs[$s]})")
		log "chunked push 256 MiB $s: seconds${secs[$s]}"
	done
}



# A big monolithic push against the disk's own fsync'd write speed (issue 16, item 6): dd
# writes the same bytes with conv=fsync into the directory the servers' roots are in (one
# file system), then each server takes a push of them (its commit fsyncs the blob). The
# blob is in the page cache for both, so each times the write to the disk, not a read.
measure_disk() {
	local r s t0 digest bytes=$((DISK_MIB * MIB))
	declare -A secs
	head -c "$bytes" /dev/urandom >"$work/disk"
	for ((r = 0; r < DISK_REPS; r++)); do
		refresh_blob "$work/disk"
		digest=$(sha "$work/disk")
		sync
		t0=$(now)
		dd if="$work/disk" of="$work/dd-probe" bs=4M conv=fsync status=none
		secs[dd]+=" $(elapsed "$t0" "$(now)")"
		rm -f "$work/dd-probe"
		for s in "${SERVERS[@]}"; do
			sync
			t0=$(now)
			push_blob "$s" "$work/disk" "$digest"
			secs[$s]+=" $(elapsed "$t0" "$(now)")"
		done
	done
	for s in dd "${SERVERS[@]}"; do
		# shellcheck disable=SC2086
		res[disk|$s]=$(mbps "$bytes" "$(median ${secs[$s]})")
		log "disk $DISK_MIB MiB $s: seconds${secs[$s]}"
	done
	rm -f "$work/disk"
}

print_disk() {
	local s
	[[ -n ${res[disk|dd]:-} ]] || return 0
	echo
	echo "blob push $DISK_MIB MiB, monolithic, against dd conv=fsync on the same file system (median of $DISK_REPS):"
	printf '  %-14s %8s MB/s\n' "dd conv=fsync" "${res[disk|dd]}"
	for s in "${SERVERS[@]}"; do
		printf '  %-14s %8s MB/s  %sx of dd%s\n' "$s" "${res[disk|$s]}" \
			"$(awk -v b="${res[disk|$s]}" -v d="${res[disk|dd]}" 'BEGIN { printf "%.2f", b / d }')" \
			"$([[ $s == berth ]] && echo ' (target >= 0.9x)')"
	done
}

# Manifest GET rate with wrk; fails on any non-2xx answer or socket error.
measure_manifest_get() { # server threads conns
	local s=$1 t=$2 c=$3 out
	out=$(wrk -t"$t" -c"$c" -d"${WRK_SECS}s" -H "Accept: $OCI_MANIFEST" \
		"${url[$s]}/v2/$REPO/manifests/latest") || die "$s: wrk GET -c$c failed: $out"
	if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
		die "$s: wrk GET -c$c saw failures:"$'\n'"$out"
	fi
	res[GET$c|$s]=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
	[[ ${res[GET$c|$s]:-0} != 0 ]] || die "$s: wrk GET -c$c completed no request:"$'\n'"$out"
}

# Manifest HEAD rate with ab (-i = HEAD, -k = keep-alive). Not wrk: wrk 4.1 does not
# know a HEAD response has no body, waits for Content-Length bytes and counts 0 requests.
measure_manifest_head() { # server conns
	local s=$1 c=$2 out
	out=$(ab -i -k -q -c "$c" -t "$WRK_SECS" -n 1000000 -H "Accept: $OCI_MANIFEST" \
		"${url[$s]}/v2/$REPO/manifests/latest" 2>&1) || die "$s: ab HEAD -c$c failed: $out"
	if ! grep -qE '^Failed requests: +0$' <<<"$out" || grep -q 'Non-2xx' <<<"$out"; then
		die "$s: ab HEAD -c$c saw failures:"$'\n'"$out"
	fi
	res[HEAD$c|$s]=$(awk '/^Requests per second:/ { printf "%.0f", $4 }' <<<"$out")
	[[ ${res[HEAD$c|$s]:-0} != 0 ]] || die "$s: ab HEAD -c$c completed no request:"$'\n'"$out"
}

# --- report ---------------------------------------------------------------------

print_table() {
	# key | label | target ratio
	local rows=(
		"push1|blob push 1 MiB, monolithic (MB/s)|2"
		"push256|blob push 256 MiB, monolithic (MB/s)|2"
		"chunked|blob push 256 MiB, 16 MiB PATCHes (MB/s)|2"
		"pull1|blob pull 1 MiB (MB/s)|2"
		"pull256|blob pull 256 MiB (MB/s)|1"
		"HEAD1|manifest HEAD, 1 conn, ab (req/s)|2"
		"HEAD32|manifest HEAD, 32 conns, ab (req/s)|2"
		"GET1|manifest GET, 1 conn, wrk (req/s)|2"
		"GET32|manifest GET, 32 conns, wrk (req/s)|2"
	)
	local row key label target b d ratio verdict
	printf '\n%-42s | %10s | %12s | %6s | %6s | %s\n' metric berth distribution ratio target verdict
	printf '%s\n' "-------------------------------------------+------------+--------------+--------+--------+------------"
	for row in "${rows[@]}"; do
		IFS='|' read -r key label target <<<"$row"
		b=${res[$key|berth]} d=${res[$key|distribution]}
		ratio=$(awk -v b="$b" -v d="$d" 'BEGIN { printf "%.2f", b / d }')
		verdict=$(awk -v r="$ratio" -v t="$target" 'BEGIN { print (r >= t) ? "ok" : "below target" }')
		printf '%-42s | %10s | %12s | %6s | %6s | %s\n' "$label" "$b" "$d" "${ratio}x" ">=${target}x" "$verdict"
	done
	echo
	echo "ratio = berth / distribution (higher is better); 1 MB = 10^6 bytes."
	echo "1 MiB: $SMALL_PUSH_REPS pushes / $SMALL_PULL_REPS pulls, whole loop timed (one keep-alive curl per batch);"
	echo "256 MiB: median of $BIG_REPS, a fresh blob per push; manifest runs ${WRK_SECS} s each:"
	echo "GET with wrk (-t1 -c1, -t2 -c32), HEAD with ab -i -k (-c1, -c32; wrk 4.1 cannot do HEAD)."
	echo "Logging: berth BERTH_LOG=warn; distribution log level warn, accesslog disabled;"
	echo "distribution storage cache: blobdescriptor inmemory (Debian default)."
}

# Anything the servers logged at warn or above is worth seeing.
print_server_logs() {
	local s
	for s in "${SERVERS[@]}"; do
		if [[ -s ${errlog[$s]} ]]; then
			echo
			echo "$s stderr ($(wc -l <"${errlog[$s]}") lines, last 20):"
			tail -n 20 "${errlog[$s]}"
		fi
	done
}

# --- main -----------------------------------------------------------------------

main() {
	local s c

	for c in curl wrk ab python3 sha256sum; do
		command -v "$c" >/dev/null || die "$c is not installed (apt-get install -y curl wrk apache2-utils python3)"
	done
	find_servers

	work=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench.XXXXXX")
	trap cleanup EXIT
	trap 'exit 130' INT TERM

	start_servers

	log "generating test data"
	mkdir "$work/small"
	small_digest=()
	for ((i = 0; i < SMALL_PUSH_REPS; i++)); do
		head -c "$SMALL" /dev/urandom >"$work/small/$i"
		small_digest[i]=$(sha "$work/small/$i")
	done
	head -c "$BIG" /dev/urandom >"$work/big"
	make_manifest

	log "blob push/pull 1 MiB"
	for s in "${SERVERS[@]}"; do measure_push_small "$s"; done
	for s in "${SERVERS[@]}"; do measure_pull_small "$s"; done
	log "blob push/pull 256 MiB"
	measure_push_big
	measure_pull_big
	log "chunked push 256 MiB"
	measure_push_chunked
	if ((DISK_MIB > 0)); then
		log "push $DISK_MIB MiB against dd conv=fsync"
		measure_disk
	fi

	log "manifest HEAD (ab) / GET (wrk), ${WRK_SECS} s each"
	for s in "${SERVERS[@]}"; do push_manifest "$s"; done
	for s in "${SERVERS[@]}"; do
		measure_manifest_head "$s" 1
		measure_manifest_head "$s" 32
		measure_manifest_get "$s" 1 1
		measure_manifest_get "$s" 2 32
	done

	for s in "${SERVERS[@]}"; do
		kill -0 "${pid[$s]}" 2>/dev/null || die "$s died during the run"
	done
	print_table
	print_disk
	print_server_logs
}

main "$@"
