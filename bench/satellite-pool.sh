#!/usr/bin/env bash
# Benchmark a pool of satellites: one build of N independent targets (an Earthfile's
# `+all` that only BUILDs them), `berth --satellite pool:p +all` on a pool of 2
# satellites against `berth --satellite s1 +all` on one (issue 14, item 4: the target
# is <= 0.6x the time on 2). On the pool the client splits `+all` into its N builds and
# sends each to a member (by cache, then spread); on one satellite `+all` is one build.
#
# Both satellites run on this machine, on 127.0.0.1, each with its own root, and each
# limited to one step at a time (`[builder] max_parallel_steps = 1`, a one-core builder):
# the steps sleep STEP_SECS to stand for work, so what this measures is how the client
# spreads the targets over the members (probes, ranking, the context sync and the build
# calls), not the hardware, which both share. On real machines each member brings its
# own cores and disks.
#
# Each target COPYs its own input and RUNs its own step (nothing is shared, nothing
# cached). A run is the wall time of the one command (`date +%s.%N`); the satellites get
# new roots for every run, so every build is cold. The table gives 2 / 1 and which
# member ran which target.
#
# Usage: bench/satellite-pool.sh            (as root: runc, overlayfs)
#   BERTH_BIN=path   use this berth instead of `cargo build --release -p berth-cli`
#   N=6              independent targets of the build
#   STEP_SECS=2      how long each target's step works (sleeps)
#   REPS=2           runs per pool size (the minimum is reported)
#   PORTS="18472 18473"   the satellites' ports on 127.0.0.1
#   KEEP_LOGS=dir    copy every build log there
# Needs: busybox-static, runc.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
# shellcheck source=bench/common.sh
source "$here/common.sh"

N=${N:-6}
STEP_SECS=${STEP_SECS:-2}
REPS=${REPS:-2}
read -r -a ports <<<"${PORTS:-18472 18473}"

[[ $(id -u) == 0 ]] || die "run as root (runc, overlayfs)"
command -v busybox >/dev/null || die "busybox (busybox-static) is needed for the base image"

work=$(mktemp -d /tmp/berth-poolbench.XXXXXX)
mkdir -p "$work/logs"
sat_pids=()
cleanup() {
	local p
	for p in "${sat_pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${sat_pids[@]}"; do wait "$p" 2>/dev/null || true; done
	if [[ -n ${KEEP_LOGS:-} ]]; then mkdir -p "$KEEP_LOGS" && cp -r "$work/logs/." "$KEEP_LOGS/"; fi
	rm -rf "$work"
}
trap cleanup EXIT

private_berth
berth=$work/berth

# The base: busybox-static as a one-layer OCI layout.
rootfs=$work/busybox-rootfs
mkdir -p "$rootfs/bin"
cp "$(command -v busybox)" "$rootfs/bin/busybox"
for t in sh sleep echo cat; do ln -s busybox "$rootfs/bin/$t"; done
oci_layout "$rootfs" "$work/base" base /bin/sh
base="oci-layout://$work/base:base"

# One folder: an Earthfile whose +all BUILDs N targets, each with its own input.
mkdir -p "$work/proj"
{
	printf 'VERSION 0.8\nall:\n'
	for i in $(seq "$N"); do printf '    BUILD +t%s\n' "$i"; done
	for i in $(seq "$N"); do
		echo "input $i" >"$work/proj/input$i.txt"
		printf 't%s:\n    FROM %s\n    COPY input%s.txt /input.txt\n    RUN sleep %s && echo %s > /done\n' \
			"$i" "$base" "$i" "$STEP_SECS" "$i"
	done
} >"$work/proj/Earthfile"

# start_sats K RUN: K satellites on new roots; the client (new config and root) enrolls
# with each and makes pool p of them.
start_sats() {
	local k=$1 run=$2 i root token members=()
	stop_sats
	export XDG_CONFIG_HOME=$work/run-$run/cfg
	client_root=$work/run-$run/client
	for i in $(seq "$k"); do
		root=$work/run-$run/sat$i
		mkdir -p "$root"
		BERTH_SATELLITE_CONFIG=$'[builder]\nmax_parallel_steps = 1' \
			"$berth" --root "$root" satellite serve --addr "127.0.0.1:${ports[$((i - 1))]}" \
			--advertise 127.0.0.1 --name "sat$i" >"$work/logs/run-$run-sat$i.log" 2>&1 &
		sat_pids+=($!)
		local tries=0
		until grep -q 'listening on' "$work/logs/run-$run-sat$i.log"; do
			tries=$((tries + 1))
			[[ $tries -lt 300 ]] || die "satellite $i did not start: $(cat "$work/logs/run-$run-sat$i.log")"
			sleep 0.1
		done
		token=$("$berth" --root "$root" satellite token create)
		"$berth" --root "$client_root" satellite add "s$i" --token "$token" --client-name bench >/dev/null
		members+=("s$i")
	done
	"$berth" --root "$client_root" satellite pool add p "${members[@]}" 2>/dev/null
}

stop_sats() {
	local p
	for p in "${sat_pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${sat_pids[@]}"; do wait "$p" 2>/dev/null || true; done
	sat_pids=()
}

# run_build RUN SATELLITE: the one build of +all on SATELLITE (s1, or pool:p); prints
# the wall time. Fails if the build fails.
run_build() {
	local run=$1 sat=$2 start end
	start=$(now)
	(cd "$work/proj" && SOURCE_DATE_EPOCH=0 "$berth" --root "$client_root" --satellite "$sat" \
		--no-output --progress plain +all) >"$work/logs/run-$run-build.log" 2>&1 ||
		die "the build of run $run failed: $(tail -n 5 "$work/logs/run-$run-build.log")"
	end=$(now)
	elapsed "$start" "$end"
}

# spread RUN: which member ran which target, e.g. "+t1 on s1, +t2 on s2" (from the
# closing line of a build on a pool), or "all on s1".
spread() {
	local line
	line=$(grep '^built .* on pool p (' "$work/logs/run-$1-build.log" || true)
	if [[ -n $line ]]; then
		line=${line#*(}
		echo "${line%%):*}"
	else
		echo "+all on s1"
	fi
}

declare -A best where
run=0
for k in 1 2; do
	times=()
	for rep in $(seq "$REPS"); do
		run=$((run + 1))
		log "pool of $k, run $rep: one build of $N targets"
		start_sats "$k" "$run"
		if [[ $k == 1 ]]; then sat=s1; else sat=pool:p; fi
		t=$(run_build "$run" "$sat")
		times+=("$t")
		where[$k]=$(spread "$run")
		log "pool of $k, run $rep: ${t}s (${where[$k]})"
	done
	best[$k]=$(min "${times[@]}")
done
stop_sats

printf '\n%-12s %10s  %s\n' "satellites" "time (s)" "targets per member (last run)"
printf '%-12s %10s  %s\n' "1 satellite" "${best[1]}" "${where[1]}"
printf '%-12s %10s  %s\n' "2 satellites" "${best[2]}" "${where[2]}"
ratio=$(awk -v a="${best[2]}" -v b="${best[1]}" 'BEGIN { printf "%.2f", a / b }')
printf '\n2 / 1 = %sx (target <= 0.6x; N=%s targets, STEP_SECS=%s, min of %s runs)\n' \
	"$ratio" "$N" "$STEP_SECS" "$REPS"
