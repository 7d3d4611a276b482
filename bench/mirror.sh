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
#   UPSTREAM_RATE=800mbit  the upstream sits in a network namespace of its own behind a
#                    veth pair sending at this rate (tc tbf), as a registry across a WAN;
#                    0: on 127.0.0.1 like the caches (then every pull is CPU-bound here)
#
# A "pull" is what docker and skopeo do: GET the manifest by tag, then the config and the
# layers, 3 at a time, to /dev/null, each checked for status and size. The upstream is a
# berth registry (its access log counts the fetches); the image's layers are random
# bytes, so nothing compresses. The caches and the clients are on 127.0.0.1. Targets (issue 10): warm >= 2x distribution, cold within
# 1.1x of a direct pull, and the 16-client cold case fetching each blob once. The
# ratios are only reported, never enforced; the script fails if any request fails.
# Runs as root (the network namespace); only 127.0.0.1 and the veth pair 10.79.0.0/24 are used.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
repo=$root
# shellcheck source=bench/common.sh
source "$here/common.sh"

LAYERS=${LAYERS:-3}
LAYER_MB=${LAYER_MB:-100}
REPS=${REPS:-3}
UPSTREAM_RATE=${UPSTREAM_RATE:-800mbit}
NS=berth-bench-mirror-up
CLIENTS=16
REPO=bench/big
TAG=v1
OCI_MANIFEST='application/vnd.oci.image.manifest.v1+json'
# The servers: the upstream (berth, access log on), and the two caches.
SERVERS=(upstream berth distribution)

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY NO_PROXY no_proxy
CURL=(--silent --show-error --noproxy '*' --max-time 600 -H 'Expect:')

declare -A url pid errlog res
# shellcheck source=bench/registry-lib.sh
source "$here/registry-lib.sh"
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# start_berth_with NAME CONFIG_TEXT LOG [HOST [CMD...]]: a berth registry on a fresh root
# and a free port of HOST (127.0.0.1), run under CMD (a command that execs the rest, such
# as nsenter, so that $! is the registry).
start_berth_with() {
	local name=$1 config=$2 level=$3 host=${4:-127.0.0.1} port dir=$work/$1
	shift 4 || shift $#
	read -r port _ <<<"$(free_ports)"
	rm -rf "$dir" && mkdir -p "$dir/root"
	printf '%s' "$config" >"$dir/config.toml"
	errlog[$name]=$dir/stderr
	BERTH_LOG=$level "$@" "$berth_bin" --root "$dir/root" --config "$dir/config.toml" \
		registry serve --addr "$host:$port" >"$dir/stdout" 2>"${errlog[$name]}" &
	pid[$name]=$!
	url[$name]=http://$host:$port
	wait_ready "$name"
}

# start_cache SERVER: an empty cache in front of the upstream, at url[SERVER].
start_cache() {
	local port
	case $1 in
	berth) start_berth_with berth "$(printf '[[registry.mirror]]\nprefix = "up"\nupstream = "%s"\n' "${url[upstream]}")" warn ;;
	distribution)
		rm -rf "$work/distribution"
		read -r port _ <<<"$(free_ports)"
		DIST_EXTRA_CONFIG=$(printf 'proxy:\n  remoteurl: %s' "${url[upstream]}") start_distribution "$port"
		;;
	esac
}

stop() { # server
	kill "${pid[$1]}" 2>/dev/null || true
	wait "${pid[$1]}" 2>/dev/null || true
	unset "pid[$1]"
}

# make_image: LAYERS random layers, a config and a manifest, pushed to the upstream as
# $REPO:$TAG; $work/image/blobs lists "digest size" of every blob a pull fetches.
make_image() {
	local i layers=() config manifest
	mkdir -p "$work/image"
	for ((i = 0; i < LAYERS; i++)); do
		head -c $((LAYER_MB << 20)) /dev/urandom >"$work/image/layer$i"
		push_blob upstream "$work/image/layer$i" "$(sha "$work/image/layer$i")"
		layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$(sha "$work/image/layer$i")\",\"size\":$((LAYER_MB << 20))}")
	done
	printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$work/image/config"
	push_blob upstream "$work/image/config" "$(sha "$work/image/config")"
	config="{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"$(sha "$work/image/config")\",\"size\":$(stat -c %s "$work/image/config")}"
	manifest="{\"schemaVersion\":2,\"mediaType\":\"$OCI_MANIFEST\",\"config\":$config,\"layers\":[$(IFS=,; echo "${layers[*]}")]}"
	printf '%s' "$manifest" >"$work/image/manifest"
	[[ $(curl "${CURL[@]}" -o /dev/null -w '%{http_code}' -X PUT -H "Content-Type: $OCI_MANIFEST" \
		--data-binary @"$work/image/manifest" "${url[upstream]}/v2/$REPO/manifests/$TAG") == 201 ]] || die "push manifest"
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
	code=$(curl "${CURL[@]}" -o /dev/null -w '%{http_code}' -H "Accept: $OCI_MANIFEST" "$1/v2/$2/manifests/$TAG")
	[[ $code == 200 ]] || die "GET $1/v2/$2/manifests/$TAG: $code"
	xargs -P 3 -L 1 sh -c 'out=$(curl --silent --noproxy "*" --max-time 600 -o /dev/null -w "%{http_code} %{size_download}" "$0/v2/$1/blobs/$2") && [ "$out" = "200 $3" ] || { echo "GET $2: $out, want 200 $3" >&2; exit 255; }' "$1" "$2" \
		<"$work/image/blobs" || die "pull through $1 failed"
	elapsed "$t0" "$(now)"
}

# Blob GETs the upstream answered 200 so far (its access log).
upstream_fetches() { grep -c 'method=GET path="/v2/[^"]*/blobs/sha256:[^"]*" status=200' "${errlog[upstream]}" || true; }

cache_repo() { [[ $1 == berth ]] && echo "up/$REPO" || echo "$REPO"; }

main() {
	local s r p before t0 cpids
	for c in curl python3 sha256sum xargs; do
		command -v "$c" >/dev/null || die "$c is not installed"
	done
	work=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-mirror.XXXXXX")
	mkdir -p "$work/logs"
	trap 'cleanup; ip netns delete "$NS" 2>/dev/null || true' EXIT
	trap 'exit 130' INT TERM
	find_servers

	log "upstream: a berth registry with a $LAYERS x $LAYER_MB MiB image"
	if [[ $UPSTREAM_RATE == 0 ]]; then
		start_berth_with upstream "" info
	else
		# The upstream behind a veth pair whose upstream side sends at UPSTREAM_RATE.
		netns_add "$NS"
		ip link add bbmirror0 type veth peer name bbmirror1 || die "ip link add"
		ip link set bbmirror1 netns "$NS"
		ip addr add 10.79.0.1/24 dev bbmirror0 && ip link set bbmirror0 up
		ip -n "$NS" addr add 10.79.0.2/24 dev bbmirror1 && ip -n "$NS" link set bbmirror1 up
		in_ns "$NS" tc qdisc add dev bbmirror1 root tbf rate "$UPSTREAM_RATE" burst 1mb latency 100ms ||
			die "tc tbf on the upstream's link"
		start_berth_with upstream "$(printf "[registry]\nallow_anonymous_push = true\n")" info 10.79.0.2 nsenter --net="/run/netns/$NS" --
	fi
	make_image

	declare -A direct_secs cold_secs warm_secs
	for ((r = 0; r < REPS; r++)); do
		direct_secs[x]+=" $(pull "${url[upstream]}" "$REPO")"
		for s in berth distribution; do
			sync
			start_cache "$s"
			cold_secs[$s]+=" $(pull "${url[$s]}" "$(cache_repo "$s")")"
			warm_secs[$s]+=" $(pull "${url[$s]}" "$(cache_repo "$s")")"
			stop "$s"
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
		start_cache "$s"
		before=$(upstream_fetches)
		cpids=()
		t0=$(now)
		for ((r = 0; r < CLIENTS; r++)); do
			pull "${url[$s]}" "$(cache_repo "$s")" >"$work/logs/client-$s-$r" &
			cpids+=($!)
		done
		for p in "${cpids[@]}"; do wait "$p" || die "a client through $s failed"; done
		res[many|$s]=$(elapsed "$t0" "$(now)")
		res[fetches|$s]=$(($(upstream_fetches) - before))
		stop "$s"
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
	echo "medians of $REPS rounds for direct, cold and warm; a fresh cache each round;"
	echo "upstream link: ${UPSTREAM_RATE/#0/loopback (no limit)}."
}

main "$@"
