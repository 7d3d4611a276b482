#!/usr/bin/env bash
# Benchmark a pool of satellites: N independent builds started at once with
# `berth build --satellite pool:NAME` on a pool of 2 satellites against a pool of 1
# (issue 14, item 4: the target is <= 0.6x the time on 2).
#
# Both satellites run on this machine, on 127.0.0.1, each with its own root, and each
# limited to one step at a time (`[builder] max_parallel_steps = 1`, a one-core builder):
# the steps sleep STEP_SECS to stand for work, so what this measures is how the client
# spreads builds over the members (probes, ranking, the context sync and the build
# calls), not the hardware, which both share. On real machines each member brings its
# own cores and disks.
#
# Each build has its own context and RUN (nothing is shared, nothing cached): N
# distinct builds, the `berth build` processes started STAGGER seconds apart. A run is
# the wall time from the first start to the last end (`date +%s.%N`); the satellites
# get new roots for every run, so every build is cold. The table gives pool-of-2 /
# pool-of-1 and how many builds each member ran.
#
# Usage: bench/satellite-pool.sh            (as root: runc, overlayfs)
#   BERTH_BIN=path   use this berth instead of `cargo build --release -p berth-cli`
#   N=6              builds per run
#   STEP_SECS=2      how long each build's step works (sleeps)
#   REPS=2           runs per pool size (the minimum is reported)
#   STAGGER=0.3      seconds between starting two builds
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
STAGGER=${STAGGER:-0.3}
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

# N contexts, each its own build.
for i in $(seq "$N"); do
	mkdir -p "$work/ctx/$i"
	echo "input $i" >"$work/ctx/$i/input.txt"
	printf 'FROM %s\nCOPY input.txt /input.txt\nRUN sleep %s && echo %s > /done\n' \
		"$base" "$STEP_SECS" "$i" >"$work/ctx/$i/Dockerfile"
done

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

# run_builds RUN: the N builds, started STAGGER apart; prints the wall time. Fails if
# a build fails.
run_builds() {
	local run=$1 i pids=() start end
	start=$(now)
	for i in $(seq "$N"); do
		SOURCE_DATE_EPOCH=0 "$berth" --root "$client_root" build --progress plain \
			--satellite pool:p "$work/ctx/$i" >"$work/logs/run-$run-build-$i.log" 2>&1 &
		pids+=($!)
		sleep "$STAGGER"
	done
	for i in "${!pids[@]}"; do
		wait "${pids[$i]}" || die "build $((i + 1)) of run $run failed: $(tail -n 5 "$work/logs/run-$run-build-$((i + 1)).log")"
	done
	end=$(now)
	elapsed "$start" "$end"
}

# spread RUN: how many builds each member ran, e.g. "s1:3 s2:3".
spread() {
	grep -ho 'on satellite s[0-9]* of pool' "$work"/logs/run-"$1"-build-*.log |
		awk '{print $3}' | sort | uniq -c | awk '{printf "%s:%s ", $2, $1}'
}

declare -A best where
run=0
for k in 1 2; do
	times=()
	for rep in $(seq "$REPS"); do
		run=$((run + 1))
		log "pool of $k, run $rep: $N builds"
		start_sats "$k" "$run"
		t=$(run_builds "$run")
		times+=("$t")
		where[$k]=$(spread "$run")
		log "pool of $k, run $rep: ${t}s (${where[$k]})"
	done
	best[$k]=$(min "${times[@]}")
done
stop_sats

printf '\n%-12s %10s  %s\n' "pool" "time (s)" "builds per member (last run)"
printf '%-12s %10s  %s\n' "1 satellite" "${best[1]}" "${where[1]}"
printf '%-12s %10s  %s\n' "2 satellites" "${best[2]}" "${where[2]}"
ratio=$(awk -v a="${best[2]}" -v b="${best[1]}" 'BEGIN { printf "%.2f", a / b }')
printf '\n2 / 1 = %sx (target <= 0.6x; N=%s, STEP_SECS=%s, STAGGER=%s, min of %s runs)\n' \
	"$ratio" "$N" "$STEP_SECS" "$STAGGER" "$REPS"
