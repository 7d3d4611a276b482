#!/usr/bin/env bash
# Benchmark berth's pull-through cache against Debian's docker-registry (distribution 2.8)
# in proxy mode, both in front of the same upstream registry on 127.0.0.1:
#   direct   pull straight from the upstream (the reference for cold pulls)
#   cold     first pull through an empty cache
#   warm     the same pull again (everything cached)
#   16 cold  16 clients pulling the same image through an empty cache at once; the
#            upstream's access log counts how often each blob was fetched from it
#
# Usage: bench/mirror.sh
#   BERTH_BIN=path   use this berth binary instead of `cargo build --release -p berth-cli`
#   DIST_BIN=path    distribution binary (default: docker-registry from PATH)
#   LAYERS=3         layers of the image; LAYER_MB=100 MiB of random data each (~300 MB)
#   REPS=3           attempts per single-client measurement (the median is reported)
#
# A "pull" is what docker and skopeo do: GET the manifest by tag, then the config and the
# layers, 3 at a time, to /dev/null, each checked for status and size. The upstream is a
# berth registry (its access log counts the fetches); the image's layers are random
# bytes, so nothing compresses. Targets (issue 10): warm >= 2x distribution, cold within
# 1.1x of a direct pull, and the 16-client cold case fetching each blob once. The
# ratios are only reported, never enforced; the script fails if any request fails.
# Only 127.0.0.1 is contacted.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
# shellcheck source=bench/common.sh
source "$here/common.sh"

LAYERS=${LAYERS:-3}
LAYER_MB=${LAYER_MB:-100}
REPS=${REPS:-3}
CLIENTS=16
IMAGE=bench/big
TAG=v1
ACCEPT='application/vnd.oci.image.manifest.v1+json'

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY NO_PROXY no_proxy
CURL=(--silent --show-error --noproxy '*' --max-time 600 -H 'Expect:')

declare -A pids res urls
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
sha() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	[[ -n ${work:-} ]] && rm -rf "$work"
}

wait_ready() { # name url
	local i
	for ((i = 0; i < 200; i++)); do
		kill -0 "${pids[$1]}" 2>/dev/null || die "$1 exited during startup (see $work/logs/$1.err)"
		[[ $(curl "${CURL[@]}" -o /dev/null -w '%{http_code}' "$2/v2/" 2>/dev/null) == 200 ]] && return 0
		sleep 0.1
	done
	die "$1 did not answer on $2/v2/"
}

# start_berth NAME CONFIG_TEXT: a berth registry on a fresh root; its URL in urls[NAME].
start_berth() {
	local name=$1 port dir=$work/$1
	port=$(free_port)
	rm -rf "$dir" && mkdir -p "$dir/root"
	printf '%s' "$2" >"$dir/config.toml"
	BERTH_LOG=${BERTH_LOG_LEVEL:-warn} "$work/berth" --root "$dir/root" --config "$dir/config.toml" \
		registry serve --addr "127.0.0.1:$port" >"$work/logs/$name.out" 2>"$work/logs/$name.err" &
	pids[$name]=$!
	urls[$name]=http://127.0.0.1:$port
	wait_ready "$name" "${urls[$name]}"
}

# start_distribution NAME UPSTREAM_URL: docker-registry in proxy mode on a fresh root.
start_distribution() {
	local name=$1 port dir=$work/$1
	port=$(free_port)
	rm -rf "$dir" && mkdir -p "$dir/root"
	cat >"$dir/config.yml" <<-EOF
		version: 0.1
		log:
		  level: warn
		  accesslog:
		    disabled: true
		storage:
		  cache:
		    blobdescriptor: inmemory
		  filesystem:
		    rootdirectory: $dir/root
		http:
		  addr: 127.0.0.1:$port
		proxy:
		  remoteurl: $2
	EOF
	"$dist_bin" serve "$dir/config.yml" >"$work/logs/$name.out" 2>"$work/logs/$name.err" &
	pids[$name]=$!
	urls[$name]=http://127.0.0.1:$port
	wait_ready "$name" "${urls[$name]}"
}

stop() { # name
	kill "${pids[$1]}" 2>/dev/null || true
	wait "${pids[$1]}" 2>/dev/null || true
	unset "pids[$1]"
}

# push_blob URL FILE: monolithic upload of FILE into $IMAGE.
push_blob() {
	local loc code digest
	digest=$(sha "$2")
	loc=$(curl "${CURL[@]}" -o /dev/null -X POST -H 'Content-Length: 0' -w '%header{location}' "$1/v2/$IMAGE/blobs/uploads/")
	[[ $loc == /* ]] && loc=$1$loc
	[[ $loc == *\?* ]] && loc="$loc&digest=$digest" || loc="$loc?digest=$digest"
	code=$(curl "${CURL[@]}" -o /dev/null -w '%{http_code}' -H 'Content-Type: application/octet-stream' -T "$2" "$loc")
	[[ $code == 201 ]] || die "push $2: $code"
}

# make_image URL: LAYERS random layers, a config and a manifest, pushed as $IMAGE:$TAG.
make_image() {
	local i layers=() config manifest
	mkdir -p "$work/image"
	for ((i = 0; i < LAYERS; i++)); do
		head -c $((LAYER_MB << 20)) /dev/urandom >"$work/image/layer$i"
		push_blob "$1" "$work/image/layer$i"
		layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$(sha "$work/image/layer$i")\",\"size\":$((LAYER_MB << 20))}")
	done
	printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$work/image/config"
	push_blob "$1" "$work/image/config"
	config="{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"$(sha "$work/image/config")\",\"size\":$(stat -c %s "$work/image/config")}"
	manifest="{\"schemaVersion\":2,\"mediaType\":\"$ACCEPT\",\"config\":$config,\"layers\":[$(IFS=,; echo "${layers[*]}")]}"
	printf '%s' "$manifest" >"$work/image/manifest"
	[[ $(curl "${CURL[@]}" -o /dev/null -w '%{http_code}' -X PUT -H "Content-Type: $ACCEPT" \
		--data-binary @"$work/image/manifest" "$1/v2/$IMAGE/manifests/$TAG") == 201 ]] || die "push manifest"
	# "digest size" of every blob a pull fetches.
	python3 - "$work/image/manifest" >"$work/image/blobs" <<-'PY'
		import json, sys
		m = json.load(open(sys.argv[1]))
		for d in [m["config"]] + m["layers"]:
		    print(d["digest"], d["size"])
	PY
}

# pull URL REPO: GET the manifest by tag, then every blob (3 at a time) to /dev/null,
# each checked for 200 and its size. Prints seconds.
pull() {
	local t0 code
	t0=$(now)
	code=$(curl "${CURL[@]}" -o /dev/null -w '%{http_code}' -H "Accept: $ACCEPT" "$1/v2/$2/manifests/$TAG")
	[[ $code == 200 ]] || die "GET $1/v2/$2/manifests/$TAG: $code"
	xargs -P 3 -L 1 sh -c 'out=$(curl --silent --noproxy "*" --max-time 600 -o /dev/null -w "%{http_code} %{size_download}" "$0/v2/$1/blobs/$2") && [ "$out" = "200 $3" ] || { echo "GET $2: $out, want 200 $3" >&2; exit 255; }' "$1" "$2" \
		<"$work/image/blobs" || die "pull through $1 failed"
	elapsed "$t0" "$(now)"
}

# Blob GETs the upstream answered 200 so far (its access log).
upstream_fetches() { grep -c 'method=GET path="/v2/[^"]*/blobs/sha256:[^"]*" status=200' "$work/logs/upstream.err" || true; }

start_cache() { # server upstream_url: the cache's URL in urls[cache-SERVER]
	case $1 in
	berth) start_berth cache-berth "$(printf '[[registry.mirror]]\nprefix = "up"\nupstream = "%s"\n' "$2")" ;;
	distribution) start_distribution cache-distribution "$2" ;;
	esac
}
cache_repo() { [[ $1 == berth ]] && echo "up/$IMAGE" || echo "$IMAGE"; }

main() {
	local s r u before url t0 cpids
	for c in curl python3 sha256sum xargs; do
		command -v "$c" >/dev/null || die "$c is not installed"
	done
	dist_bin=${DIST_BIN:-$(command -v docker-registry || true)}
	[[ -n $dist_bin ]] || die "docker-registry is not installed (apt-get install docker-registry)"
	work=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-mirror.XXXXXX")
	mkdir -p "$work/logs"
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	private_berth

	log "upstream: a berth registry with a $LAYERS x $LAYER_MB MiB image"
	BERTH_LOG_LEVEL=info start_berth upstream ""
	u=${urls[upstream]}
	make_image "$u"

	declare -A direct_secs cold_secs warm_secs
	for ((r = 0; r < REPS; r++)); do
		direct_secs[x]+=" $(pull "$u" "$IMAGE")"
		for s in berth distribution; do
			sync
			start_cache "$s" "$u"
			url=${urls[cache-$s]}
			cold_secs[$s]+=" $(pull "$url" "$(cache_repo "$s")")"
			warm_secs[$s]+=" $(pull "$url" "$(cache_repo "$s")")"
			stop "cache-$s"
		done
		log "round $((r + 1)): direct${direct_secs[x]} | cold berth${cold_secs[berth]} distribution${cold_secs[distribution]} | warm berth${warm_secs[berth]} distribution${warm_secs[distribution]}"
	done
	# shellcheck disable=SC2086
	res[direct]=$(median ${direct_secs[x]})
	for s in berth distribution; do
		# shellcheck disable=SC2086
		res[cold|$s]=$(median ${cold_secs[$s]})
		# shellcheck disable=SC2086
		res[warm|$s]=$(median ${warm_secs[$s]})
	done

	log "$CLIENTS clients pulling the same cold image at once"
	for s in berth distribution; do
		sync
		start_cache "$s" "$u"
		url=${urls[cache-$s]}
		before=$(upstream_fetches)
		cpids=()
		t0=$(now)
		for ((r = 0; r < CLIENTS; r++)); do
			pull "$url" "$(cache_repo "$s")" >"$work/logs/client-$s-$r" &
			cpids+=($!)
		done
		for p in "${cpids[@]}"; do wait "$p" || die "a client through $s failed"; done
		res[many|$s]=$(elapsed "$t0" "$(now)")
		res[fetches|$s]=$(($(upstream_fetches) - before))
		stop "cache-$s"
	done

	local blobs=$((LAYERS + 1))
	echo
	printf '%-44s | %10s | %12s | %s\n' "pull of $LAYERS x $LAYER_MB MiB (seconds)" berth distribution "ratio (distribution / berth)"
	printf '%s\n' "---------------------------------------------+------------+--------------+------------------------------"
	for row in "cold|cold, through an empty cache" "warm|warm, everything cached" "many|$CLIENTS clients at once, cold"; do
		IFS='|' read -r key label <<<"$row"
		printf '%-44s | %10s | %12s | %sx\n' "$label" "${res[$key|berth]}" "${res[$key|distribution]}" \
			"$(awk -v b="${res[$key|berth]}" -v d="${res[$key|distribution]}" 'BEGIN { printf "%.2f", d / b }')"
	done
	printf '%-44s | %10s | %12s |\n' "upstream blob fetches, $CLIENTS clients ($blobs blobs)" "${res[fetches|berth]}" "${res[fetches|distribution]}"
	echo
	echo "direct pull from the upstream: ${res[direct]} s; berth cold / direct = $(awk -v b="${res[cold|berth]}" -v d="${res[direct]}" 'BEGIN { printf "%.2f", b / d }')x (target <= 1.1x)"
	echo "targets: warm >= 2x distribution; $CLIENTS-client cold case: $blobs upstream fetches (one per blob)"
	echo "medians of $REPS rounds for direct, cold and warm; a fresh cache each round."
}

main "$@"
