#!/usr/bin/env bash
# Per-RUN cost of a step's own network (issue 13: <= 10 ms a RUN).
#
# A Dockerfile of STEPS trivial RUN steps on the busybox base, built with --no-cache:
#   default  RUN echo ...                   (berth: own namespace through slirp4netns)
#   none     RUN --network=none echo ...    (loopback only: the floor)
#   host     RUN --network=host echo ...    (berth with --allow network.host)
# (docker: plain RUNs with `docker build --network=none|host`, see context()).
# by berth and by `DOCKER_BUILDKIT=1 docker build` (Debian docker.io 20.10), the peer.
# Each is timed with `date +%s.%N` around the whole build, REPS times, the minimum
# kept; the tools and modes take turns so other load spreads over them. It prints the
# times, the per-RUN cost of each mode over `none` ((t - t_none) / STEPS) and the
# ratios default/none for both tools.
#
# Usage: bench/step-network.sh      (as root: runc, overlayfs, slirp4netns)
#   BERTH_BIN=path   use this berth instead of `cargo build --release -p berth-cli`
#   STEPS=20 REPS=3  shape of the run
#   TOOLS="berth docker"
# Contacts nothing: the base image is made locally, steps only echo. Temporary roots,
# images and dockerd's build cache it made are removed on exit (note: `docker builder
# prune -af` prunes all of dockerd's build cache).
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
STEPS=${STEPS:-20}
REPS=${REPS:-3}
TOOLS=${TOOLS:-berth docker}
DOCKER=/usr/bin/docker
DNAME=berth-bench/busybox:step-network
MODES=(default none host)

# log, die, now, elapsed, min, has_tool
. "$here/common.sh"

work=
cleanup() {
	local rc=$?
	set +e
	if [[ -n $work && -d $work ]]; then
		findmnt -rn -o TARGET | awk -v w="$work/" 'index($0, w) == 1' | sort -r |
			while read -r m; do umount -l "$m" 2>/dev/null; done
		rm -rf "$work"
	fi
	if [[ -n ${docker_used:-} ]]; then
		"$DOCKER" rmi -f "$DNAME" >/dev/null 2>&1
		"$DOCKER" builder prune -af >/dev/null 2>&1
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $(id -u) == 0 ]] || die "run as root (runc, overlayfs, network namespaces)"
command -v slirp4netns >/dev/null || die "slirp4netns is not installed (scripts/install-test-deps)"
work=$(mktemp -d /var/tmp/berth-bench-net.XXXXXX)

if [[ -n ${BERTH_BIN:-} ]]; then
	cp "$BERTH_BIN" "$work/berth"
else
	(cd "$repo" && cargo build --release -p berth-cli) >"$work/cargo.log" 2>&1 ||
		{ tail -n 30 "$work/cargo.log" >&2; die "cargo build --release -p berth-cli"; }
	cp "${CARGO_TARGET_DIR:-$repo/target}/release/berth" "$work/berth"
fi
BERTH=$work/berth

layout=$work/busybox
"$repo/scripts/make-busybox-layout" "$layout" v1 >/dev/null
if has_tool docker; then
	"$repo/scripts/start-dockerd" >/dev/null || die "no docker daemon"
	docker_used=1
	skopeo copy -q "oci:$layout:v1" "docker-daemon:$DNAME" >/dev/null || die "skopeo copy into dockerd"
fi

# context MODE TOOL: a context whose Dockerfile has STEPS RUNs in MODE. Docker 20.10's
# built-in Dockerfile frontend has no RUN --network (and would fetch a newer one for a
# `# syntax=` line): docker gets plain RUNs and `docker build --network=MODE`.
context() {
	local mode=$1 tool=$2 dir=$work/ctx-$1-$2 flag=
	[[ $mode != default && $tool == berth ]] && flag="--network=$mode "
	mkdir -p "$dir"
	{
		if [[ $tool == berth ]]; then echo "FROM oci-layout://$layout:v1"; else echo "FROM $DNAME"; fi
		for i in $(seq 1 "$STEPS"); do echo "RUN ${flag}echo $mode $i > /step-$i"; done
	} >"$dir/Dockerfile"
	echo "$dir"
}

# build TOOL MODE: one --no-cache build; prints its seconds.
build() {
	local tool=$1 mode=$2 ctx t0 t1 log=$work/$1-$2.log
	ctx=$(context "$mode" "$tool")
	t0=$(now)
	if [[ $tool == berth ]]; then
		local allow=()
		[[ $mode == host ]] && allow=(--allow network.host)
		"$BERTH" --root "$work/root" build --progress plain --no-cache "${allow[@]}" "$ctx" >"$log" 2>&1 ||
			{ tail -n 20 "$log" >&2; die "berth build ($mode)"; }
	else
		local net=()
		[[ $mode != default ]] && net=(--network "$mode")
		DOCKER_BUILDKIT=1 "$DOCKER" build --no-cache --progress plain "${net[@]}" "$ctx" >"$log" 2>&1 ||
			{ tail -n 20 "$log" >&2; die "docker build ($mode)"; }
	fi
	t1=$(now)
	elapsed "$t0" "$t1"
}

declare -A RUNS
log "warm-up (base unpacked, pool made, daemon caches)"
for tool in $TOOLS; do for mode in "${MODES[@]}"; do build "$tool" "$mode" >/dev/null; done; done
for rep in $(seq 1 "$REPS"); do
	log "round $rep/$REPS"
	for mode in "${MODES[@]}"; do
		for tool in $TOOLS; do
			RUNS[$tool/$mode]+="$(build "$tool" "$mode") "
		done
	done
done

echo
echo "$STEPS RUN steps, --no-cache, min of $REPS (load: $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%-8s %-8s %9s %14s\n' tool mode seconds "ms/RUN vs none"
declare -A BEST
for tool in $TOOLS; do
	for mode in "${MODES[@]}"; do
		# shellcheck disable=SC2086
		BEST[$tool/$mode]=$(min ${RUNS[$tool/$mode]})
	done
	for mode in "${MODES[@]}"; do
		per=$(awk -v t="${BEST[$tool/$mode]}" -v n="${BEST[$tool/none]}" -v s="$STEPS" \
			'BEGIN { printf "%.1f", (t - n) * 1000 / s }')
		printf '%-8s %-8s %9s %14s\n' "$tool" "$mode" "${BEST[$tool/$mode]}" "$per"
	done
done
echo
for tool in $TOOLS; do
	awk -v t="$tool" -v d="${BEST[$tool/default]}" -v n="${BEST[$tool/none]}" \
		'BEGIN { printf "%s default/none: %.2fx\n", t, d / n }'
done
if has_tool docker; then
	awk -v b="${BEST[berth/default]}" -v d="${BEST[docker/default]}" \
		'BEGIN { printf "berth/docker, default network: %.2fx\n", b / d }'
fi
